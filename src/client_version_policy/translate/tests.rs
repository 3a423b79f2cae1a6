use super::*;
use crate::classify::Catalog;
use crate::client_version_policy::read_rules;

/// The shared test rule, at `priority` (its origin names it).
fn rule(priority: i32, ua: &str, op: CompareOp, version: &str, action: PolicyAction) -> PolicyRule {
    PolicyRule {
        origin: format!("[{priority}]"),
        priority,
        ..crate::client_version_policy::tests::rule(ua, op, version, action)
    }
}

fn imported(rules: Vec<PolicyRule>) -> (ClientVersionPolicy, CatalogImport, Catalog) {
    let policy = ClientVersionPolicy::new(rules, None).unwrap();
    let import = translate(&policy, "test.json");
    let catalog =
        Catalog::from_toml_str(&import.toml).unwrap_or_else(|e| panic!("{e}\n{}", import.toml));
    (policy, import, catalog)
}

/// The policy's answer and the catalog's agree: allowed, blocked, or no rule.
fn assert_same(policy: &ClientVersionPolicy, catalog: &Catalog, user_agents: &[&str]) {
    for ua in user_agents {
        let want = policy.first_match(ua.as_bytes()).map(|r| r.action.allows());
        let got = catalog.classify(Some(ua.as_bytes()));
        let got = match got.client.support.as_str() {
            "supported" => Some(true),
            "unsupported" => Some(false),
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
        toml.contains("id = \"cvp-1-oc.1\"") && toml.contains("id = \"cvp-1-oc.2\""),
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
            "priority 5 ([5]: OC GEQ * -> Block): not imported: never decides: every OC version \
             it matches is taken by an earlier rule (priority 0 ([0]: OC GEQ 4.* -> Allow); \
             priority 3 ([3]: OC LSS 5.* -> Block); priority 4 ([4]: OC EQL * -> Allow))",
        ]
    );
    assert_eq!((import.imported, import.not_imported), (4, 3));
    assert_same(&policy, &catalog, &OC);
    assert_same(&policy, &catalog, &["OC", "UCCAPI/4.0.7577.0"]);
}
