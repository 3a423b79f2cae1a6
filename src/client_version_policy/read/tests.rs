use super::*;
use crate::classify::CompareOp;

const CSV: &[u8] = include_bytes!("../../../tests/fixtures/cvp/redmond.csv");
const JSON: &[u8] = include_bytes!("../../../tests/fixtures/cvp/redmond.json");

fn sorted(mut rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    rules.sort_by_key(|r| r.priority);
    rules
}

#[test]
fn the_csv_export_reads_every_field() {
    let rules = read_rules(CSV).unwrap();
    assert_eq!(rules.len(), 11);
    let rtm = &rules[0];
    assert_eq!(rtm.origin, "line 3");
    assert_eq!(rtm.priority, 0);
    assert_eq!(rtm.user_agent, "OC");
    assert_eq!(rtm.user_agent_full_name.as_deref(), Some("Lync 2013 RTM"));
    assert_eq!(rtm.version.to_string(), "15.0.4420.1017");
    assert_eq!(rtm.op, CompareOp::Eql);
    assert_eq!(rtm.action, PolicyAction::BlockWithUrl);
    assert_eq!(
        rtm.action_url.as_deref(),
        Some("https://intranet.contoso.com/lync/update")
    );
    assert_eq!(rtm.scope(), Some("site:Redmond"));
    assert!(rtm.enabled);
    assert_eq!(rules[1].version.to_string(), "15.*");
    assert_eq!(rules[1].description, None, "an empty field is absent");
    assert!(!rules[8].enabled, "Enabled \"False\"");
}

#[test]
fn json_and_csv_exports_of_one_policy_read_alike() {
    let strip = |rules: Vec<PolicyRule>| {
        sorted(rules)
            .into_iter()
            .map(|r| PolicyRule {
                origin: String::new(),
                ..r
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(read_rules(JSON).unwrap()),
        strip(read_rules(CSV).unwrap())
    );
    assert_eq!(read_rules(JSON).unwrap()[0].origin, "[0]");
}

#[test]
fn utf16_with_bom_and_utf8_with_bom_decode() {
    let text = std::str::from_utf8(CSV).unwrap();
    let mut le = vec![0xFF, 0xFE];
    le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let mut be = vec![0xFE, 0xFF];
    be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut utf8 = b"\xEF\xBB\xBF".to_vec();
    utf8.extend_from_slice(JSON);
    assert_eq!(read_rules(&le).unwrap(), read_rules(CSV).unwrap());
    assert_eq!(read_rules(&be).unwrap(), read_rules(CSV).unwrap());
    assert_eq!(read_rules(&utf8).unwrap(), read_rules(JSON).unwrap());
    let err = read_rules(b"\"Priority\"\n\"\xFF\"").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("line 2, Priority: invalid UTF-8: byte 0xFF (file offset 12)"),
        "{err}"
    );
}

#[test]
fn utf16_that_does_not_decode_is_named_with_where() {
    // "[{" then a lone high surrogate, little-endian, after the BOM.
    let lone = [0xFF, 0xFE, b'[', 0, b'{', 0, 0x00, 0xD8, b'}', 0];
    assert_eq!(
        read_rules(&lone).unwrap_err().to_string(),
        "UTF-16 text (it starts with a byte order mark) that does not decode: a lone \
         surrogate 0xD800 at byte offset 6: save the export again as UTF-8"
    );
    assert_eq!(
        read_rules(&[0xFE, 0xFF, 0, b'[', 0])
            .unwrap_err()
            .to_string(),
        "UTF-16 text (it starts with a byte order mark) that does not decode: an odd number \
         of bytes (5)"
    );
}

#[test]
fn utf16_without_a_byte_order_mark_is_named_not_read_as_garbage() {
    let text = std::str::from_utf8(CSV).unwrap();
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    for bytes in [le, be] {
        let err = read_rules(&bytes).unwrap_err();
        assert_eq!(err, ReadError::Utf16WithoutBom);
        assert_eq!(
            err.to_string(),
            "UTF-16 without a byte order mark: save as UTF-8 or UTF-16 with BOM"
        );
    }
    // Short or plain text is not taken for UTF-16.
    assert!(!utf16_without_bom(b"[{}]"));
    assert!(!utf16_without_bom(b"\"Priority\",\"UserAgent\""));
    assert!(!utf16_without_bom(&[0, 0, 0, 0]));
}

#[test]
fn a_byte_that_is_not_utf8_is_named_with_its_record_and_field() {
    // A cp1252 export: "caf\xE9" in the Description of the rule on line 5.
    let text = std::str::from_utf8(CSV).unwrap();
    let line5 = text.split("\r\n").nth(4).unwrap();
    assert!(line5.contains("\"Office Communicator"), "{line5}");
    let mut bytes = Vec::new();
    let at = text.find("\"Office Communicator").unwrap() + 1;
    bytes.extend_from_slice(&CSV[..at]);
    bytes.extend_from_slice(b"caf\xE9 ");
    bytes.extend_from_slice(&CSV[at..]);
    let err = read_rules(&bytes).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "line 5, UserAgentFullName: invalid UTF-8: byte 0xE9 (file offset {}); save the \
             export as UTF-8 or UTF-16 with BOM (a Windows code page such as cp1252 is not read)",
            at + 3
        )
    );
    // With a BOM the offset counts it; a U+FFFD written as UTF-8 before
    // the bad byte is not taken for it.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice("\"Priority\",\"Description\"\r\n\"0\",\"\u{FFFD}\"\r\n".as_bytes());
    bom.extend_from_slice(b"\"1\",\"\x96\"\r\n");
    let err = read_rules(&bom).unwrap_err().to_string();
    assert!(
        err.starts_with("line 3, Description: invalid UTF-8: byte 0x96 (file offset 45)"),
        "{err}"
    );
    // JSON: line and column.
    let err = read_rules(b"[\n  {\"Description\": \"caf\xE9\"}]")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("line 2, column 23: invalid UTF-8: byte 0xE9"),
        "{err}"
    );
    // In the header row.
    let err = read_rules(b"\"Prio\xE9rity\"\n\"0\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("line 1 (the header row): invalid UTF-8"),
        "{err}"
    );
}

#[test]
fn csv_without_type_line_with_semicolons_and_unquoted_fields() {
    let csv =
        "Priority;UserAgent;MajorVersion;MinorVersion;BuildNumber;QfeNumber;CompareOp;Action\n\
               0;OC;15;*;;;geq;allow\n";
    let rules = read_rules(csv.as_bytes()).unwrap();
    assert_eq!(rules[0].version.to_string(), "15.*");
    assert_eq!(
        (rules[0].op, rules[0].action),
        (CompareOp::Geq, PolicyAction::Allow)
    );
    assert_eq!(rules[0].origin, "line 2");
    assert!(rules[0].enabled, "Enabled defaults to true");
}

#[test]
fn single_objects_and_the_value_wrapper_are_rule_lists() {
    let one = r#"{"Priority": 0, "UserAgent": "OC", "MajorVersion": 4, "MinorVersion": null,
        "BuildNumber": null, "QfeNumber": null, "CompareOp": "LSS", "Action": "Block",
        "Identity": {"ScopeClass": "Global"}}"#;
    let rules = read_rules(one.as_bytes()).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].identity, None, "an Identity object is not a scope");
    let wrapped = format!(r#"{{"value": [{one}, {one}], "Count": 2}}"#);
    assert_eq!(read_rules(wrapped.as_bytes()).unwrap().len(), 2);
}

#[test]
fn numeric_enumerations_are_refused_with_the_way_out() {
    let json = r#"[{"Priority": 0, "UserAgent": "OC", "MajorVersion": 4, "MinorVersion": 0,
        "BuildNumber": 0, "QfeNumber": 0, "CompareOp": 4, "Action": 3}]"#;
    let err = read_rules(json.as_bytes()).unwrap_err().to_string();
    assert!(err.starts_with("2 problem(s) in the rules:"), "{err}");
    assert!(
        err.contains("[0].CompareOp: the number 4, not a name (EQL, NEQ, GTR, GEQ, LSS, LEQ)"),
        "{err}"
    );
    assert!(err.contains("[0].Action: the number 3"), "{err}");
    assert!(err.contains("Export-Csv"), "{err}");
}

#[test]
fn every_problem_is_named_with_its_record_and_field() {
    let csv = "\"Priority\",\"UserAgent\",\"MajorVersion\",\"MinorVersion\",\"BuildNumber\",\
               \"QfeNumber\",\"CompareOp\",\"Action\",\"Enabled\"\r\n\
               \"x\",\"\",\"70000\",\"0\",\"0\",\"0\",\"GE\",\"Deny\",\"maybe\"\r\n\
               \"1\",\"OC\"\r\n";
    let err = read_rules(csv.as_bytes()).unwrap_err().to_string();
    for expected in [
        "line 2, Priority: expected an integer from -2147483648 to 2147483647, found \"x\"",
        "line 2, UserAgent: expected a product name such as \"OC\", found \"\"",
        "line 2, MajorVersion: expected an integer from 0 to 65535, found \"70000\"",
        "line 2, CompareOp: unknown CompareOp \"GE\": expected EQL, NEQ, GTR, GEQ, LSS, LEQ",
        "line 2, Action: unknown Action \"Deny\": expected Allow, AllowAndUpgrade",
        "line 2, Enabled: expected True or False, found \"maybe\"",
        "line 3: 2 fields, the header row has 9",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
    let missing = read_rules(b"[{\"Priority\": 0, \"UserAgent\": \"OC\"}]").unwrap_err();
    assert!(
        missing.to_string().contains("[0].MajorVersion: missing"),
        "{missing}"
    );
    let header = read_rules(b"\"Priority\",\"UserAgent\"\n\"0\",\"OC\"\n").unwrap_err();
    assert!(
        header
            .to_string()
            .starts_with("CSV line 1: the header row has no column MajorVersion"),
        "{header}"
    );
}

#[test]
fn other_shapes_are_named() {
    let policy = br#"[{"Identity": "Global", "Rules": []}]"#;
    let err = read_rules(policy).unwrap_err().to_string();
    assert!(
        err.contains("is a client version policy (it has Rules)"),
        "{err}"
    );
    assert!(read_rules(b"42").is_err());
    assert!(matches!(read_rules(b"[]"), Err(ReadError::Empty)));
    assert!(matches!(
        read_rules(b"[1,"),
        Err(ReadError::Json { line: 1, .. })
    ));
    assert!(matches!(
        read_rules(b"\"Priority\",\"x\n"),
        Err(ReadError::Csv { line: 1, .. })
    ));
}

/// A JSON rule of the repro, its properties after `OC GEQ 15.*`.
fn json_rule(tail: &str) -> String {
    format!(
        r#"[{{"Priority": 0, "UserAgent": "OC", "MajorVersion": "15", "MinorVersion": "*",
            "BuildNumber": "*", "QfeNumber": "*", "CompareOp": "GEQ", {tail}}}]"#
    )
}

#[test]
fn a_json_property_given_in_two_cases_is_refused_naming_both_values() {
    let err =
        read_rules(json_rule(r#""Action": "Allow", "action": "Block""#).as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 problem(s) in the rules:\n  [0].Action: given twice (\"Action\": \"Allow\", \
         \"action\": \"Block\"): which value the rule has is unknown; give the property once"
    );
    // Optional properties too, in any case; a property read only once is
    // still read, and every problem is listed.
    let err = read_rules(
        json_rule(
            r#""Action": "Allow", "ENABLED": true, "enabled": "False", "Enabled": null,
               "CompareOp": "LSS""#,
        )
        .as_bytes(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("2 problem(s) in the rules:\n  [0].CompareOp: given twice"),
        "{err}"
    );
    assert!(
        err.contains(
            "[0].Enabled: given 3 times (\"ENABLED\": true, \"enabled\": \"False\", \
             \"Enabled\": null)"
        ),
        "{err}"
    );
}

#[test]
fn a_json_key_given_twice_is_refused_naming_both_values() {
    let json = r#"[{"Priority": 0, "Priority": 5, "UserAgent": "OC", "MajorVersion": "15",
        "MinorVersion": "*", "BuildNumber": "*", "QfeNumber": "*", "CompareOp": "GEQ",
        "Action": "Allow"}]"#;
    let err = read_rules(json.as_bytes()).unwrap_err().to_string();
    assert_eq!(
        err,
        "1 problem(s) in the rules:\n  [0].Priority: given twice (\"Priority\": 0, \
         \"Priority\": 5): which value the rule has is unknown; give the property once"
    );
    // Equal values are refused as well: the file was edited, and the
    // rule is named wherever it is, in the value wrapper too.
    let same = json.replace(r#""Priority": 5"#, r#""Priority": 0"#);
    let wrapped = format!(r#"{{"value": {same}, "Count": 1}}"#);
    let err = read_rules(wrapped.as_bytes()).unwrap_err().to_string();
    assert!(
        err.contains("[0].Priority: given twice (\"Priority\": 0, \"Priority\": 0)"),
        "{err}"
    );
    let twice = format!(
        r#"{{"value": [], "Value": {}, "Count": 1}}"#,
        json_rule(r#""Action": "Allow""#)
    );
    let err = read_rules(twice.as_bytes()).unwrap_err();
    assert!(matches!(err, ReadError::Shape(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the object has the property \"value\" twice (\"value\": an array, \"Value\": an \
         array): which of them holds the rules is unknown; give it once"
    );
}

#[test]
fn other_properties_may_repeat() {
    let rules = read_rules(
        json_rule(r#""Action": "Block", "RuleId": "a", "ruleid": "b", "RuleId": 3"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(rules[0].action, PolicyAction::Block);
    let csv = "Priority,UserAgent,MajorVersion,MinorVersion,BuildNumber,QfeNumber,CompareOp,\
               Action,RuleId,ruleid\n1,OC,15,*,*,*,GEQ,Block,a,b\n";
    assert_eq!(
        read_rules(csv.as_bytes()).unwrap()[0].action,
        PolicyAction::Block
    );
}

#[test]
fn a_csv_column_given_twice_is_refused_naming_it() {
    let header = "Priority,UserAgent,MajorVersion,MinorVersion,BuildNumber,QfeNumber,CompareOp,\
                  Action";
    let action = format!("{header},Action\n1,OC,15,*,*,*,GEQ,Allow,Block\n");
    let err = read_rules(action.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        ReadError::Csv {
            line: 1,
            message: "the header row has the column Action twice (columns 8 (\"Action\"), 9 \
                  (\"Action\")): which of them holds a rule's value is unknown; keep one"
                .into(),
        }
    );
    let priority = format!("#TYPE x\n{header},priority\n1,OC,15,*,*,*,GEQ,Allow,7\n");
    let err = read_rules(priority.as_bytes()).unwrap_err().to_string();
    assert_eq!(
        err,
        "CSV line 2: the header row has the column Priority twice (columns 1 (\"Priority\"), 9 \
         (\"priority\")): which of them holds a rule's value is unknown; keep one"
    );
    // Every repeated column is named, optional ones too.
    let both = format!("{header},ACTION,Description,description\n");
    let err = read_rules(both.as_bytes()).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "the column Action twice (columns 8 (\"Action\"), 9 (\"ACTION\")), the column \
             Description twice (columns 10 (\"Description\"), 11 (\"description\")): which of \
             them holds a rule's value is unknown; keep one"
        ),
        "{err}"
    );
}
