use super::plan::{check_known, Check};
use super::*;
use crate::classify::{Catalog, Role, Support};
use crate::client_version_policy::read_rules;

/// The shared test rule, at `priority` (its origin names it).
fn rule(priority: i32, ua: &str, op: CompareOp, version: &str, action: PolicyAction) -> PolicyRule {
    PolicyRule {
        origin: format!("[{priority}]"),
        priority,
        ..crate::client_version_policy::tests::rule(ua, op, version, action)
    }
}

/// The shipped catalog, compiled once for every test.
fn shipped() -> &'static Catalog {
    static SHIPPED: std::sync::LazyLock<Catalog> = std::sync::LazyLock::new(|| {
        Catalog::from_toml_str(crate::config::SHIPPED_CATALOG).unwrap()
    });
    &SHIPPED
}

fn imported(rules: Vec<PolicyRule>) -> (ClientVersionPolicy, CatalogImport, Catalog) {
    let policy = ClientVersionPolicy::new(rules, None).unwrap();
    let import = translate(&policy, "test.json", shipped());
    let catalog =
        Catalog::from_toml_str(&import.toml).unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
    (policy, import, catalog)
}

/// What the import should say of a User-Agent: blocked (false) when the
/// policy blocks it; when the policy allows it, supported (true) unless the
/// shipped catalog knows it as a client the Response Group application does
/// not support, and in the shipped roles when the shipped catalog supports
/// it (Lync 2010: caller and informal agent); no answer when no rule holds.
fn want(policy: &ClientVersionPolicy, shipped: &Catalog, ua: &[u8]) -> Option<(bool, Vec<Role>)> {
    policy.first_match(ua).map(|r| {
        let c = shipped.classify(Some(ua));
        if !r.action.allows() || c.client.support == Support::Unsupported {
            (false, Vec::new())
        } else if c.client.support == Support::Supported {
            (true, c.client.roles.clone())
        } else {
            (true, ALL.to_vec())
        }
    })
}

/// Every role: what an allow of a code sipadmit does not know gives.
const ALL: [Role; 3] = [Role::Caller, Role::InformalAgent, Role::FormalAgent];

/// The policy's answer and the catalog's agree (see [`want`]).
fn assert_same(policy: &ClientVersionPolicy, catalog: &Catalog, user_agents: &[&str]) {
    let shipped = shipped();
    for ua in user_agents {
        let want = want(policy, shipped, ua.as_bytes());
        let c = catalog.classify(Some(ua.as_bytes()));
        let got = match c.client.support {
            Support::Supported => Some((true, c.client.roles.clone())),
            Support::Unsupported => Some((false, c.client.roles.clone())),
            _ => None,
        };
        assert_eq!(got, want, "{ua}");
    }
}

const OC: [&str; 9] = [
    "OC/3.5.6907.0",
    "OC/4.0.0.0",
    "OC/4.0.7577.314",
    "OC/4.9",
    "OC/5",
    "OC/14.65535.1.1",
    "OC/15",
    "OC/15.0.4420.1017",
    "UCCAPI/16.0.1 OC/16.0.4417.1000",
];

#[test]
fn four_part_versions_keep_their_operator() {
    for op in CompareOp::ALL {
        let (policy, import, catalog) = imported(vec![rule(
            0,
            "OC",
            op,
            "15.0.4420.1017",
            PolicyAction::Block,
        )]);
        assert!(
            import
                .toml
                .contains(&format!("op = \"{op}\"\nversion = \"15.0.4420.1017\"")),
            "{}",
            import.toml
        );
        assert_same(&policy, &catalog, &OC);
    }
}

#[test]
fn wildcards_become_one_or_two_comparisons() {
    for (op, expected) in [
        (CompareOp::Geq, vec![("GEQ", "15")]),
        (CompareOp::Gtr, vec![("GEQ", "16")]),
        (CompareOp::Lss, vec![("LSS", "15")]),
        (CompareOp::Leq, vec![("LSS", "16")]),
        (CompareOp::Neq, vec![("LSS", "15"), ("GEQ", "16")]),
    ] {
        let (policy, import, catalog) =
            imported(vec![rule(0, "OC", op, "15.*", PolicyAction::Block)]);
        for (op, version) in expected {
            let text = format!("op = \"{op}\"\nversion = \"{version}\"");
            assert!(import.toml.contains(&text), "{op}: {}", import.toml);
        }
        assert_same(&policy, &catalog, &OC);
        assert!(import.notes.is_empty());
    }
}

#[test]
fn an_eql_range_is_widened_only_into_versions_earlier_rules_take() {
    // 4.x after a rule taking everything below 4: "LSS 5".
    let rules = vec![
        rule(0, "OC", CompareOp::Lss, "4.*", PolicyAction::Block),
        rule(1, "OC", CompareOp::Eql, "4.*", PolicyAction::Allow),
    ];
    let (policy, import, catalog) = imported(rules);
    assert!(
        import.toml.contains("EQL 4.* written LSS 5"),
        "{}",
        import.toml
    );
    assert_same(&policy, &catalog, &OC);
    // 4.x after rules taking everything from 5: "GEQ 4".
    let rules = vec![
        rule(0, "oc", CompareOp::Geq, "5.*", PolicyAction::Allow),
        rule(1, "OC", CompareOp::Eql, "4.*", PolicyAction::Block),
    ];
    let (policy, import, catalog) = imported(rules);
    assert!(
        import.toml.contains("EQL 4.* written GEQ 4"),
        "{}",
        import.toml
    );
    assert_same(&policy, &catalog, &OC);
    // Versions left on both sides: named, not imported; the rest still matches.
    let rules = vec![
        rule(0, "OC", CompareOp::Geq, "16.*", PolicyAction::Allow),
        rule(1, "OC", CompareOp::Eql, "4.*", PolicyAction::Block),
        rule(2, "UCCAPI", CompareOp::Eql, "4.*", PolicyAction::Block),
    ];
    let (_, import, catalog) = imported(rules);
    assert_eq!((import.imported, import.not_imported), (1, 2));
    assert_eq!(import.notes[0].kind, NoteKind::NotImported);
    assert_eq!(
        import.notes[0].to_string(),
        "priority 1 ([1]: OC EQL 4.* -> Block): not imported: EQL 4.* is the range 4 <= version \
         < 5: a catalog rule makes one comparison, and earlier rules on OC leave versions on both \
         sides of the range"
    );
    assert!(import
        .toml
        .contains("\n# NOT IMPORTED: priority 1 ([1]: OC EQL 4.* -> Block): EQL"));
    // Earlier rules on another token do not count.
    assert!(import.notes[1].message.contains("on UCCAPI leave versions"));
    assert_eq!(
        catalog.classify(Some(b"OC/16")).client.support.as_str(),
        "supported"
    );
}

#[test]
fn what_the_catalog_cannot_say_is_named() {
    let mut disabled = rule(0, "WPLync", CompareOp::Eql, "*", PolicyAction::Block);
    disabled.enabled = false;
    let mut url = rule(1, "OC", CompareOp::Geq, "4.*", PolicyAction::BlockWithUrl);
    url.action_url = Some("https://example.com/update".into());
    let mut after_wildcard = rule(3, "CPE", CompareOp::Eql, "4", PolicyAction::Block);
    after_wildcard.version.parts[2] = Some(7577);
    let rules = vec![
        disabled,
        url,
        rule(
            2,
            "AOC",
            CompareOp::Eql,
            "4.0.7577.0",
            PolicyAction::AllowAndUpgrade,
        ),
        after_wildcard,
        rule(4, "LMC", CompareOp::Gtr, "*", PolicyAction::Block),
        rule(5, "Acme Phone", CompareOp::Geq, "1", PolicyAction::Block),
        rule(6, "OC", CompareOp::Lss, "0.0.0.0", PolicyAction::Block),
    ];
    let (_, import, _) = imported(rules);
    let notes: Vec<String> = import.notes.iter().map(ToString::to_string).collect();
    let expected = [
        "priority 0 ([0]: WPLync EQL * -> Block): not imported: disabled (Enabled is False)",
        "priority 1 ([1]: OC GEQ 4.* -> BlockWithUrl): imported in part: the ActionUrl \"https://example.com/update\"",
        "priority 2 ([2]: AOC EQL 4.0.7577.0 -> AllowAndUpgrade): imported in part: the upgrade through Windows Update",
        "priority 2 ([2]: AOC EQL 4.0.7577.0 -> AllowAndUpgrade): not supported for Response Group: AllowAndUpgrade lets these clients sign in, and the Response Group application does not support clients that are not on its client list",
        "priority 3 ([3]: CPE EQL 4.*.7577.* -> Block): not imported: version 4.*.7577.*: a part after a wildcard",
        "priority 4 ([4]: LMC GTR * -> Block): not imported: GTR with every version part a wildcard matches no client",
        "priority 5 ([5]: Acme Phone GEQ 1.* -> Block): not imported: UserAgent \"Acme Phone\" holds ' '",
        "priority 6 ([6]: OC LSS 0.0.0.0 -> Block): not imported: LSS 0.0.0.0 matches no client",
    ];
    assert_eq!(notes.len(), expected.len(), "{notes:#?}");
    for (note, expected) in notes.iter().zip(expected) {
        assert!(
            note.starts_with(expected),
            "{note}\n  does not start with\n{expected}"
        );
    }
    assert!(
        import.toml.contains("# NOT CARRIED OVER: the ActionUrl"),
        "{}",
        import.toml
    );
}

#[test]
fn entries_say_support_roles_category_and_ids() {
    let rules = vec![
        rule(0, "iPhoneLync", CompareOp::Eql, "*", PolicyAction::Block),
        rule(1, "OC", CompareOp::Neq, "15.*", PolicyAction::Allow),
        rule(2, "OC", CompareOp::Geq, "2.*", PolicyAction::Allow),
    ];
    let (_, import, catalog) = imported(rules);
    let toml = &import.toml;
    assert!(toml.contains(
        "[[clients]]\nid = \"cvp-0-iphonelync\"\nname = \"iPhoneLync (client version policy, priority 0: \
         iPhoneLync EQL * -> Block)\"\ncategory = \"mobile\"\nsupport = \"unsupported\"\nroles = []\n\
         version_token = \"iPhoneLync\"\n[[clients.match]]\nid = \"cvp-0-iphonelync\"\ntoken = \"iPhoneLync\"\n"
    ), "{toml}");
    assert!(
        toml.contains("id = \"cvp-1-oc-lync-2013.1\"")
            && toml.contains("id = \"cvp-1-oc-lync-2013.2\""),
        "{toml}"
    );
    assert!(toml.contains("id = \"cvp-2-oc\""), "{toml}");
    assert!(toml.contains("roles = [\"caller\", \"informal-agent\", \"formal-agent\"]"));
    let mobile = catalog.classify(Some(
        b"RTCC/5.0.0.0 UCWA/5.0.0.0 iPhoneLync/5.0.0.0 (iPhone iOS 7.0)",
    ));
    assert_eq!(
        (mobile.client.id.as_str(), mobile.rule),
        ("cvp-0-iphonelync", "cvp-0-iphonelync")
    );
    assert_eq!(
        mobile.version.map(|v| v.to_string()).as_deref(),
        Some("5.0.0.0")
    );
    assert!(
        toml.starts_with("# sipadmit client catalog entries made from"),
        "{toml}"
    );
}

/// A full name with line breaks and control characters (an export's
/// `UserAgentFullName` is free text) becomes a one-line catalog name: the
/// catalog refuses control characters, which would break the Warning of a
/// reject that names the client.
#[test]
fn a_full_name_with_line_breaks_becomes_one_line() {
    let mut blocked = rule(0, "OC", CompareOp::Geq, "15.*", PolicyAction::Block);
    blocked.user_agent_full_name = Some("Evil\r\nX-Injected: yes\r\n\u{1}".into());
    let (_, import, catalog) = imported(vec![blocked]);
    assert!(
        import
            .toml
            .contains("name = \"Evil  X-Injected: yes    (client version policy, priority 0:"),
        "{}",
        import.toml
    );
    let c = catalog.classify(Some(
        b"UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)",
    ));
    assert!(
        !c.client.name.contains(|c: char| c.is_control()),
        "{}",
        c.client.name
    );
}

#[test]
fn the_fixture_policy_imports_whole_but_for_the_named_parts() {
    let rules = read_rules(include_bytes!("../../../tests/fixtures/cvp/redmond.csv")).unwrap();
    let (policy, import, catalog) = imported(rules);
    assert_eq!((import.imported, import.not_imported), (10, 1));
    assert_eq!(
        import
            .notes
            .iter()
            .filter(|n| n.kind == NoteKind::PartLost)
            .count(),
        3,
        "two URLs and one upgrade: {:#?}",
        import.notes
    );
    assert_same(&policy, &catalog, &OC);
    assert_same(
        &policy,
        &catalog,
        &[
            "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)",
            "RTCC/5.0.0.0 UCWA/5.0.0.0 AndroidLync/5.0.0.0 (Android 4.4)",
            "CPE/4.0.7577.4363 OCPhone/4.0.7577.4363 (Microsoft Lync 2010 Phone Edition)",
            "CPE/4.0.7423.1 OCPhone/4.0.7423.1 (Microsoft Lync 2010 (Beta) Phone Edition)",
            "RTCC/5.0.0.0 UCWA/5.0.0.0 WPLync/5.0.0.0 (Windows Phone 8.0)",
        ],
    );
}

#[test]
fn user_agents_outside_the_token_grammar_are_not_imported() {
    // `Lync\2013"` is what a lenient reading of a malformed quoted CSV
    // field gives; none of these can be a product name of a User-Agent.
    let refused = [
        "Lync\\2013\"",
        "Lync\"2013",
        "\u{D6}C",
        "OC;1",
        "OC@x",
        "OC,",
        "OC[1]",
        "O*C",
    ];
    let mut rules: Vec<PolicyRule> = refused
        .iter()
        .zip(0..)
        .map(|(ua, p)| rule(p, ua, CompareOp::Geq, "1", PolicyAction::Block))
        .collect();
    let accepted = ["Call_Park_Service_1.0", "a-b.c!d%e+f`g'h~i"];
    rules.extend(
        accepted
            .iter()
            .zip(20..)
            .map(|(ua, p)| rule(p, ua, CompareOp::Geq, "1", PolicyAction::Block)),
    );
    let (_, import, _) = imported(rules);
    assert_eq!((import.imported, import.not_imported), (2, refused.len()));
    for (note, ua) in import.notes.iter().zip(refused) {
        assert_eq!(note.kind, NoteKind::NotImported);
        assert!(
            note.message
                .starts_with(&format!("UserAgent {ua:?} holds ")),
            "{note}"
        );
    }
}

#[test]
fn rules_that_never_decide_are_named_not_imported() {
    let rules = vec![
        rule(0, "OC", CompareOp::Geq, "4.*", PolicyAction::Allow),
        // An exact duplicate (but for the action), and a rule inside it.
        rule(1, "oc", CompareOp::Geq, "4.*", PolicyAction::Block),
        rule(
            2,
            "OC",
            CompareOp::Eql,
            "15.0.4420.1017",
            PolicyAction::Block,
        ),
        // Not inside: versions below 4 are left.
        rule(3, "OC", CompareOp::Lss, "5.*", PolicyAction::Block),
        // Every version is taken now, but not the token without one.
        rule(4, "OC", CompareOp::Eql, "*", PolicyAction::Allow),
        rule(5, "OC", CompareOp::Geq, "*", PolicyAction::Block),
        // Another token is another story.
        rule(6, "UCCAPI", CompareOp::Geq, "4.*", PolicyAction::Block),
    ];
    let (policy, import, catalog) = imported(rules);
    let notes: Vec<String> = import.notes.iter().map(ToString::to_string).collect();
    assert_eq!(
        notes,
        [
            "priority 1 ([1]: oc GEQ 4.* -> Block): not imported: never decides: every oc version \
             it matches is taken by an earlier rule (priority 0 ([0]: OC GEQ 4.* -> Allow))",
            "priority 2 ([2]: OC EQL 15.0.4420.1017 -> Block): not imported: never decides: every \
             OC version it matches is taken by an earlier rule (priority 0 ([0]: OC GEQ 4.* -> \
             Allow))",
            // Every version is taken: the token without a version is what
            // it takes, below 4 as far as Response Group goes.
            "priority 4 ([4]: OC EQL * -> Allow): not supported for Response Group: OC below 4 \
             (Office Communicator 2007 R2 and earlier) gets support \"unsupported\": Allow lets \
             them sign in; the Response Group application supports OC clients from 4 on (Lync \
             2010 and later) and, below 4, only the OCS 2007 R2 Attendant (3.x, comment \
             \"Attendant\")",
            "priority 5 ([5]: OC GEQ * -> Block): not imported: never decides: every OC version \
             it matches is taken by an earlier rule (priority 0 ([0]: OC GEQ 4.* -> Allow); \
             priority 3 ([3]: OC LSS 5.* -> Block); priority 4 ([4]: OC EQL * -> Allow))",
        ]
    );
    assert_eq!((import.imported, import.not_imported), (4, 3));
    assert_same(&policy, &catalog, &OC);
    assert_same(&policy, &catalog, &["OC", "UCCAPI/4.0.7577.0"]);
}

/// The client, support and roles `catalog` gives a User-Agent.
fn says(catalog: &Catalog, ua: &str) -> (String, String, usize) {
    let c = catalog.classify(Some(ua.as_bytes()));
    (
        c.client.id.clone(),
        c.client.support.as_str().to_owned(),
        c.client.roles.len(),
    )
}

const ANDROID: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)";
const IPHONE: &str = "RTCC/5.0.0.0 UCWA/5.0.0.0 iPhoneLync/5.0.0.0 (iPhone iOS 7.0)";
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";

#[test]
fn an_allow_of_mobile_or_web_clients_is_no_response_group_support() {
    let rules = vec![
        rule(0, "AndroidLync", CompareOp::Geq, "5.*", PolicyAction::Allow),
        rule(1, "LWA", CompareOp::Eql, "*", PolicyAction::AllowWithUrl),
        rule(2, "iPhoneLync", CompareOp::Eql, "*", PolicyAction::Block),
    ];
    let (policy, import, catalog) = imported(rules);
    assert!(
        import.toml.contains(
            "# Allow lets these clients sign in, and the Response Group application does not support\n\
             # mobile clients: support \"unsupported\"\n[[clients]]\n\
             id = \"cvp-0-androidlync\"\nname = \"AndroidLync (client version policy, priority 0: \
             AndroidLync GEQ 5.* -> Allow)\"\ncategory = \"mobile\"\nsupport = \"unsupported\"\n\
             roles = []\n"
        ),
        "{}",
        import.toml
    );
    assert_eq!(
        says(&catalog, ANDROID),
        ("cvp-0-androidlync".into(), "unsupported".into(), 0)
    );
    assert_eq!(says(&catalog, "RTCC/5.0.0.0 LWA/5.0.0.0").1, "unsupported");
    let warnings: Vec<String> = import
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::NotSupported)
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "priority 0 ([0]: AndroidLync GEQ 5.* -> Allow): not supported for Response Group: \
             Allow lets these clients sign in"
        ),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("support web clients"),
        "{}",
        warnings[1]
    );
    assert_same(&policy, &catalog, &[ANDROID, IPHONE]);
}

const OCS_ATTENDANT: &str = "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office \
                             Communications Server 2007 R2 Attendant)";
const COMMUNICATOR_R2: &str =
    "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 R2)";
const LYNC_2010: &str = "UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)";
const LYNC_2013: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

const LYNC_2010_ATTENDANT: &str = "UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010 Attendant)";

/// The ids of the `[[clients]]` entries and their match rules.
fn ids(toml: &str) -> Vec<String> {
    toml.lines()
        .filter(|l| l.starts_with("id = ") && !l.contains('.'))
        .map(|l| l[6..l.len() - 1].to_owned())
        .collect()
}

/// `Allow OC GEQ 2.*`, then `Block OC LSS 2.*`: versions from 2 are
/// written `GEQ 15`, `GEQ 4` (the Attendant first), `GEQ 3` (the
/// Attendant), then the rest.
fn oc_from_2() -> (ClientVersionPolicy, CatalogImport, Catalog) {
    imported(vec![
        rule(0, "OC", CompareOp::Geq, "2.*", PolicyAction::Allow),
        rule(1, "OC", CompareOp::Lss, "2.*", PolicyAction::Block),
    ])
}

#[test]
fn an_allow_of_oc_is_supported_from_lync_2010_and_for_the_attendants_only() {
    let (policy, import, catalog) = oc_from_2();
    let twice = |ids: &[&str]| -> Vec<String> {
        ids.iter()
            .flat_map(|id| [id.to_string(), id.to_string()])
            .collect()
    };
    assert_eq!(
        ids(&import.toml),
        twice(&[
            "cvp-0-oc-lync-2013",
            "cvp-0-oc-lync-2010-attendant",
            "cvp-0-oc-lync-2010",
            "cvp-0-oc-ocs-2007r2-attendant",
            "cvp-0-oc-before-4",
            "cvp-1-oc",
        ])
    );
    assert_eq!(
        says(&catalog, LYNC_2013),
        ("cvp-0-oc-lync-2013".into(), "supported".into(), 3)
    );
    // Lync 2010: caller and informal agent, not formal agent.
    assert_eq!(
        says(&catalog, LYNC_2010),
        ("cvp-0-oc-lync-2010".into(), "supported".into(), 2)
    );
    assert_eq!(
        catalog.classify(Some(LYNC_2010.as_bytes())).client.roles,
        [Role::Caller, Role::InformalAgent]
    );
    assert_eq!(
        says(&catalog, LYNC_2010_ATTENDANT),
        ("cvp-0-oc-lync-2010-attendant".into(), "supported".into(), 3)
    );
    assert_eq!(
        says(&catalog, OCS_ATTENDANT),
        (
            "cvp-0-oc-ocs-2007r2-attendant".into(),
            "supported".into(),
            3
        )
    );
    assert_eq!(
        says(&catalog, COMMUNICATOR_R2),
        ("cvp-0-oc-before-4".into(), "unsupported".into(), 0)
    );
    assert_eq!(
        says(&catalog, "UCCP/2.0.6362.111 OC/2.0.6362.111").0,
        "cvp-0-oc-before-4"
    );
    assert_eq!(
        says(&catalog, "OC/2.0 (Attendant)").0,
        "cvp-0-oc-before-4",
        "an Attendant comment below 3 is no Attendant the shipped catalog knows"
    );
    assert_eq!(
        says(&catalog, "OC/1.9").0,
        "cvp-1-oc",
        "below 2: the next rule"
    );
    let mut all = OC.to_vec();
    all.extend([
        OCS_ATTENDANT,
        COMMUNICATOR_R2,
        LYNC_2010,
        LYNC_2010_ATTENDANT,
        LYNC_2013,
        "OC/1",
        "OC/2.0 (Attendant)",
    ]);
    assert_same(&policy, &catalog, &all);
}

#[test]
fn an_allow_of_oc_says_why_in_comments_and_notes() {
    let (_, import, _) = oc_from_2();
    assert!(
        import.toml.contains(
            "# OC 4 to 14.x: Lync 2010: Lync 2010 takes Response Group calls as a caller or an\n\
             # informal agent; formal agents need Lync 2013 or an Attendant\n"
        ),
        "{}",
        import.toml
    );
    let note = import
        .notes
        .iter()
        .find(|n| n.kind == NoteKind::NotSupported)
        .unwrap();
    assert!(
        note.to_string().starts_with(
            "priority 0 ([0]: OC GEQ 2.* -> Allow): not supported for Response Group: OC below 4 \
             (Office Communicator 2007 R2 and earlier) gets support \"unsupported\""
        ),
        "{note}"
    );
}

#[test]
fn an_allow_of_oc_below_a_version_is_parted_with_lss_first() {
    let mut all = OC.to_vec();
    all.extend([
        OCS_ATTENDANT,
        COMMUNICATOR_R2,
        LYNC_2010,
        LYNC_2010_ATTENDANT,
        LYNC_2013,
    ]);
    // Versions below 16: `LSS 3`, `LSS 4`, `LSS 15` first, and Skype for
    // Business 2016 is left to the next rule.
    let rules = vec![
        rule(0, "UCCAPI", CompareOp::Lss, "16.*", PolicyAction::Allow),
        rule(1, "UCCAPI", CompareOp::Geq, "*", PolicyAction::Block),
    ];
    let (policy, import, catalog) = imported(rules);
    assert_eq!(
        says(&catalog, COMMUNICATOR_R2),
        (
            "cvp-0-uccapi-communicator-2007r2".into(),
            "unsupported".into(),
            0
        )
    );
    assert_eq!(
        says(&catalog, OCS_ATTENDANT).0,
        "cvp-0-uccapi-ocs-2007r2-attendant"
    );
    assert_eq!(
        says(&catalog, LYNC_2010),
        ("cvp-0-uccapi-lync-2010".into(), "supported".into(), 2)
    );
    assert_eq!(says(&catalog, LYNC_2013).0, "cvp-0-uccapi-lync-2013");
    assert_eq!(
        says(&catalog, "UCCAPI/16.0.4417.1000 OC/16.0.4417.1000").0,
        "cvp-1-uccapi"
    );
    assert!(import
        .toml
        .contains("op = \"LSS\"\nversion = \"4\"\ncomment = \"Attendant\""));
    assert_same(&policy, &catalog, &all);
}

#[test]
fn an_allow_of_oc_on_one_side_of_a_band_takes_only_its_clients() {
    // From 4 only: Lync 2013, the Lync 2010 Attendant, Lync 2010, and no
    // note; below 4 only: no supported entry but the Attendant's.
    let (_, import, catalog) = imported(vec![rule(
        0,
        "OC",
        CompareOp::Geq,
        "4.*",
        PolicyAction::Allow,
    )]);
    assert_eq!(
        ids(&import.toml),
        [
            "cvp-0-oc-lync-2013",
            "cvp-0-oc-lync-2013",
            "cvp-0-oc-lync-2010-attendant",
            "cvp-0-oc-lync-2010-attendant",
            "cvp-0-oc-lync-2010",
            "cvp-0-oc-lync-2010"
        ]
    );
    assert!(import.notes.is_empty());
    assert_eq!(says(&catalog, LYNC_2010).2, 2);
    let (_, import, catalog) = imported(vec![rule(
        0,
        "OC",
        CompareOp::Lss,
        "4.*",
        PolicyAction::Allow,
    )]);
    assert_eq!(import.toml.matches("[[clients]]").count(), 3);
    assert_eq!(says(&catalog, COMMUNICATOR_R2).1, "unsupported");
    assert_eq!(says(&catalog, OCS_ATTENDANT).1, "supported");
    // Lync 2013 and later only: one entry, every role.
    let (_, import, catalog) = imported(vec![rule(
        0,
        "OC",
        CompareOp::Geq,
        "15.*",
        PolicyAction::Allow,
    )]);
    assert_eq!(ids(&import.toml), ["cvp-0-oc", "cvp-0-oc"]);
    assert_eq!(says(&catalog, LYNC_2013).2, 3);
}

/// `OC` (alone and after `UCCAPI`) at every version a policy's comparisons
/// part, with and without the Attendant's comment, and the known
/// User-Agents.
fn oc_user_agents() -> Vec<String> {
    let mut all: Vec<String> = crate::client_version_policy::known::known_user_agents()
        .map(str::to_owned)
        .collect();
    for v in [
        "1",
        "2.0",
        "2.9",
        "3",
        "3.5.6907.0",
        "3.9",
        "4",
        "4.0.7577.314",
        "4.9",
        "5",
        "14.9",
        "15",
        "15.0.4420.1017",
        "15.1",
        "16",
        "16.0.4417.1000",
    ] {
        // Clients send UCCAPI with OC, which the shipped catalog reads.
        for ua in [format!("OC/{v}"), format!("UCCAPI/{v} OC/{v}")] {
            all.push(format!("{ua} (Microsoft Attendant)"));
            all.push(ua);
        }
    }
    all.extend(["OC".into(), "OC (Attendant)".into(), "UCCAPI OC".into()]);
    all
}

#[test]
fn an_allow_of_oc_or_uccapi_gives_every_client_the_shipped_support_and_roles() {
    use CompareOp::{Eql, Geq, Gtr, Leq, Lss, Neq};
    let rules: [&[(CompareOp, &str)]; 13] = [
        &[(Geq, "*")],
        &[(Geq, "2.*")],
        &[(Geq, "3.*")],
        &[(Geq, "4.*")],
        &[(Gtr, "4.0.7577.314")],
        &[(Lss, "16.*")],
        &[(Leq, "15.*")],
        &[(Neq, "4.*")],
        &[(Neq, "15.*")],
        &[(Neq, "3.*")],
        &[(Neq, "4.0.7577.314")],
        // EQL 4.* after a rule taking everything below 4: `LSS 5`.
        &[(Lss, "4.*"), (Eql, "4.*")],
        // An allow after a block of one Lync 2013 build.
        &[(Eql, "15.0.4420.1017"), (Geq, "2.*")],
    ];
    let uas = oc_user_agents();
    let uas: Vec<&str> = uas.iter().map(String::as_str).collect();
    for token in ["OC", "UCCAPI"] {
        for comparisons in rules {
            let n = comparisons.len();
            let policy: Vec<PolicyRule> = comparisons
                .iter()
                .enumerate()
                .map(|(i, &(op, version))| {
                    let action = if i + 1 == n {
                        PolicyAction::Allow
                    } else {
                        PolicyAction::Block
                    };
                    rule(i as i32, token, op, version, action)
                })
                .collect();
            let (policy, import, catalog) = imported(policy);
            assert_eq!(
                import.not_imported, 0,
                "{token} {comparisons:?}: {:#?}",
                import.notes
            );
            assert_same(&policy, &catalog, &uas);
        }
    }
}

#[test]
fn a_rule_that_would_take_the_response_group_application_is_not_imported() {
    // The trial's export: `Allow RTCC GEQ *` took the Response Group
    // application, the servers and the mobile clients, as supported.
    let rules = vec![
        rule(0, "RTCC", CompareOp::Geq, "*", PolicyAction::Allow),
        rule(
            1,
            "Response_Group_Service",
            CompareOp::Eql,
            "*",
            PolicyAction::Block,
        ),
        rule(
            2,
            "MediationServer",
            CompareOp::Eql,
            "*",
            PolicyAction::Block,
        ),
        rule(3, "AndroidLync", CompareOp::Eql, "*", PolicyAction::Allow),
    ];
    let (_, import, catalog) = imported(rules);
    assert_eq!((import.imported, import.not_imported), (1, 3));
    let refused = &import.notes[0];
    assert_eq!(refused.kind, NoteKind::NotImported);
    assert!(
        refused.message.starts_with(
            "it would take Lync Response Group application (\"RTCC/5.0.0.0 \
             Response_Group_Service/5.0.0.0\", support service)"
        ),
        "{refused}"
    );
    assert!(
        refused.message.contains("Microsoft server component"),
        "{refused}"
    );
    assert!(import.notes[1].message.contains("Response_Group_Service"));
    assert!(import.notes[2].message.contains("MediationServer"));
    // Above the shipped catalog, the known clients keep what it says.
    let combined = Catalog::from_toml_str(&format!(
        "{}\n{}",
        import.toml,
        crate::config::SHIPPED_CATALOG
    ))
    .unwrap();
    assert_eq!(says(&combined, RGS).0, "response-group-service");
    assert_eq!(
        says(&combined, IPHONE),
        ("lync-mobile".into(), "unsupported".into(), 0)
    );
    assert_eq!(says(&combined, ANDROID).1, "unsupported");
    assert_eq!(says(&catalog, ANDROID).0, "cvp-3-androidlync");
}

#[test]
fn an_allow_on_another_token_that_takes_only_unsupported_known_clients_is_unsupported() {
    let (_, import, catalog) = imported(vec![rule(
        0,
        "UCWA",
        CompareOp::Geq,
        "*",
        PolicyAction::Allow,
    )]);
    assert_eq!(
        says(&catalog, IPHONE),
        ("cvp-0-ucwa".into(), "unsupported".into(), 0)
    );
    assert_eq!(import.notes.len(), 1, "{:#?}", import.notes);
    let note = import.notes[0].to_string();
    assert!(
        note.starts_with(
            "priority 0 ([0]: UCWA GEQ * -> Allow): not supported for Response Group: Allow lets \
             them sign in, and the Response Group application does not support the known clients \
             it takes: Lync / Skype for Business mobile (\"RTCC/5.0.0.0 UCWA/5.0.0.0 iPhoneLync"
        ),
        "{note}"
    );
    // A code sipadmit does not know, and no known client: the Allow stands.
    let (_, import, catalog) = imported(vec![rule(
        0,
        "InHouse",
        CompareOp::Geq,
        "1",
        PolicyAction::Allow,
    )]);
    assert!(import.notes.is_empty());
    assert_eq!(says(&catalog, "InHouse/2.0").1, "supported");
}

#[test]
fn known_supported_and_unsupported_clients_in_one_allow_are_refused() {
    let known = |user_agent, support| Known {
        user_agent,
        name: format!("{user_agent} client"),
        support,
        roles: if support == Support::Supported {
            vec![Role::Caller]
        } else {
            Vec::new()
        },
        taken: false,
    };
    let a = known("Probe/1 (a)", Support::Supported);
    let b = known("Probe/2 (b)", Support::Unsupported);
    let r = rule(0, "Probe", CompareOp::Geq, "1", PolicyAction::Allow);
    let entries = "[[clients]]\nid = \"p\"\nname = \"p\"\ncategory = \"third-party\"\n\
                   support = \"supported\"\nroles = [\"caller\"]\n[[clients.match]]\ntoken = \"Probe\"\n";
    let Check::Refuse(why) = check_known(&r, entries, &[&a, &b]) else {
        panic!("not refused");
    };
    assert!(
        why.starts_with(
            "it would make supported Probe/2 (b) client (\"Probe/2 (b)\", support unsupported)"
        ),
        "{why}"
    );
    assert!(matches!(check_known(&r, entries, &[&a]), Check::Keep));
    assert!(matches!(
        check_known(&r, entries, &[&b]),
        Check::Unsupported(_)
    ));
}

/// Lync 2010 as the shipped catalog has it: supported, caller and
/// informal agent.
fn shipped_lync_2010() -> Known {
    Known {
        user_agent: LYNC_2010,
        name: "Lync 2010".into(),
        support: Support::Supported,
        roles: vec![Role::Caller, Role::InformalAgent],
        taken: false,
    }
}

#[test]
fn entries_the_guard_cannot_compile_are_refused_not_kept() {
    let known = shipped_lync_2010();
    let r = rule(0, "OC", CompareOp::Geq, "4", PolicyAction::Allow);
    // What a bug of write_rule could give: no `name`.
    let broken = "[[clients]]\nid = \"p\"\ncategory = \"desktop\"\nsupport = \"supported\"\n\
                  [[clients.match]]\ntoken = \"OC\"\n";
    let Check::Refuse(why) = check_known(&r, broken, &[&known]) else {
        panic!("an entry the guard could not read was kept");
    };
    assert!(
        why.starts_with("its entries do not compile, so what they would make of the known clients cannot be checked"),
        "{why}"
    );
    assert!(why.contains("name"), "the error is named: {why}");
}

#[test]
fn entries_giving_a_known_client_other_roles_than_the_shipped_ones_are_refused() {
    let lync_2010 = shipped_lync_2010();
    let r = rule(0, "OC", CompareOp::Geq, "4", PolicyAction::Allow);
    let entry = |roles: &str| {
        format!(
            "[[clients]]\nid = \"p\"\nname = \"p\"\ncategory = \"desktop\"\n\
             support = \"supported\"\nroles = {roles}\n[[clients.match]]\ntoken = \"OC\"\n"
        )
    };
    // What the import wrote before: every role for OC from 4.
    let all = entry(r#"["caller", "informal-agent", "formal-agent"]"#);
    let Check::Refuse(why) = check_known(&r, &all, &[&lync_2010]) else {
        panic!("formal-agent for Lync 2010 was kept");
    };
    assert!(
        why.starts_with(
            "its entries would give Lync 2010 (\"UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft \
             Lync 2010)\") support supported, roles [\"caller\", \"informal-agent\", \
             \"formal-agent\"], where the shipped catalog says support supported, roles \
             [\"caller\", \"informal-agent\"]"
        ),
        "{why}"
    );
    let same = entry(r#"["caller", "informal-agent"]"#);
    assert!(matches!(check_known(&r, &same, &[&lync_2010]), Check::Keep));
    // A block takes the client out of every role: nothing to compare.
    let block = rule(0, "OC", CompareOp::Geq, "4", PolicyAction::Block);
    assert!(matches!(
        check_known(&block, &all, &[&lync_2010]),
        Check::Keep
    ));
}

const LINPHONE_IOS: &str = "LinphoneiOS/4.3.0 (Bob's iPhone) LinphoneSDK/4.4.0";

#[test]
fn an_allow_of_a_third_party_mobile_softphone_is_not_made_supported() {
    // A code sipadmit does not know, whose only known client is Linphone
    // for iOS (the shipped `linphone-mobile`: unsupported).
    let (policy, import, catalog) = imported(vec![rule(
        0,
        "LinphoneiOS",
        CompareOp::Geq,
        "*",
        PolicyAction::Allow,
    )]);
    assert_eq!(
        says(&catalog, LINPHONE_IOS),
        ("cvp-0-linphoneios".into(), "unsupported".into(), 0)
    );
    assert_eq!(import.notes.len(), 1, "{:#?}", import.notes);
    assert_eq!(import.notes[0].kind, NoteKind::NotSupported);
    assert!(
        import.notes[0]
            .message
            .contains("Linphone for iOS / Android (\"LinphoneiOS/4.3.0"),
        "{}",
        import.notes[0]
    );
    assert_same(&policy, &catalog, &[LINPHONE_IOS, "LinphoneiOS/5.0"]);

    // `Bria` is the token of Bria for iOS (unsupported) and of Bria desktop
    // (third-party): one entry cannot say both.
    let (_, import, _) = imported(vec![rule(
        0,
        "Bria",
        CompareOp::Eql,
        "*",
        PolicyAction::Allow,
    )]);
    assert_eq!((import.imported, import.not_imported), (0, 1));
    let why = &import.notes[0].message;
    assert!(
        why.starts_with(
            "it would make supported Bria (CounterPath) for iOS / Android (\"Bria iOS release"
        ) && why.contains("and takes Bria / X-Lite (CounterPath, desktop) (\"Bria 3 release"),
        "{why}"
    );

    // A third-party desktop product alone: the allow stands (support
    // third-party is no Response Group verdict to keep).
    let (_, import, catalog) = imported(vec![rule(
        0,
        "X-Lite",
        CompareOp::Eql,
        "*",
        PolicyAction::Allow,
    )]);
    assert!(import.notes.is_empty(), "{:#?}", import.notes);
    assert_eq!(
        says(&catalog, "X-Lite release 5.7.1 stamp 100933").1,
        "supported"
    );
}
