//! `sipadmit catalog import-cvp`, the binary, on client version policy
//! exports (`tests/fixtures/cvp`): the entries it prints give every
//! User-Agent of the corpus (`tests/corpus/*.tsv`) the same allow / block
//! answer as the policy itself (the reference evaluation,
//! `ClientVersionPolicy::first_match`), on their own and placed above the
//! shipped catalog; whatever they cannot express is named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sipadmit::classify::{Catalog, Role, Support};
use sipadmit::client_version_policy::{read_rules, ClientVersionPolicy};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/cvp").join(name)
}

fn import_cvp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["catalog", "import-cvp"])
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Every User-Agent of the corpus tables (first column, header skipped).
fn corpus() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for table in ["user-agents.tsv", "user-agents-extra.tsv"] {
        let bytes = std::fs::read(root().join("tests/corpus").join(table)).unwrap();
        all.extend(
            bytes
                .split(|&b| b == b'\n')
                .skip(1)
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty())
                .map(|l| l.split(|&b| b == b'\t').next().unwrap_or_default().to_vec()),
        );
    }
    assert!(all.len() > 150, "the corpus has {} User-Agents", all.len());
    all
}

/// User-Agents at the edges of every rule's version: for each rule's
/// token, its version (wildcards as 0) with each part one lower and one
/// higher, and the token without a version. They test the wildcard and
/// operator translations where the corpus has no client.
fn boundaries(policy: &ClientVersionPolicy) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for rule in &policy.rules {
        let base = rule.version.parts.map(|p| i64::from(p.unwrap_or(0)));
        all.push(rule.user_agent.clone().into_bytes());
        for part in 0..4 {
            for delta in [-1, 0, 1] {
                let mut v = base;
                v[part] += delta;
                if v[part] < 0 {
                    continue;
                }
                let version = v.map(|n| n.to_string()).join(".");
                all.push(format!("Probe/1 {}/{version} (boundary)", rule.user_agent).into_bytes());
            }
        }
    }
    all
}

/// What the import should say: block (false, no role) when the policy
/// blocks; when it allows (the client may sign in), supported (true)
/// unless the shipped catalog knows the client as one the Response Group
/// application does not support (a mobile client, Communicator 2007 R2,
/// ...), in the roles the shipped catalog gives a client it supports
/// (Lync 2010: caller and informal agent) and every role otherwise; no
/// rule: no answer.
fn policy_answer(
    policy: &ClientVersionPolicy,
    shipped: &Catalog,
    ua: &[u8],
) -> Option<(bool, Vec<Role>)> {
    policy.first_match(ua).map(|rule| {
        let c = shipped.classify(Some(ua));
        match c.client.support {
            _ if !rule.action.allows() => (false, Vec::new()),
            Support::Unsupported => (false, Vec::new()),
            Support::Supported => (true, c.client.roles.clone()),
            _ => (
                true,
                vec![Role::Caller, Role::InformalAgent, Role::FormalAgent],
            ),
        }
    })
}

/// What an imported entry says, if the client is one of them.
fn catalog_answer(catalog: &Catalog, ua: &[u8]) -> Option<(bool, Vec<Role>)> {
    let c = catalog.classify(Some(ua));
    c.client.id.starts_with("cvp-").then(|| {
        let supported = match c.client.support {
            Support::Supported => true,
            Support::Unsupported => false,
            other => panic!("an imported entry of support {other}"),
        };
        (supported, c.client.roles.clone())
    })
}

/// Imports `file` and checks the entries against the policy for every
/// User-Agent of the corpus. The reference is the policy less the rules
/// stderr names as not imported: a rule left out without being named would
/// show as a difference. Returns (User-Agents the policy decides, others).
fn round_trip(file: &str) -> (usize, usize) {
    let out = import_cvp(&[&format!("tests/fixtures/cvp/{file}")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entries = text(&out.stdout);
    let named: Vec<i32> = text(&out.stderr)
        .lines()
        .filter(|l| l.contains("): not imported: "))
        .map(|l| {
            let rest = l.split_once(": priority ").expect("a rule note").1;
            rest.split_once(' ').unwrap().0.parse().unwrap()
        })
        .collect();
    let mut policy = ClientVersionPolicy::new(
        read_rules(&std::fs::read(fixture(file)).unwrap()).unwrap(),
        None,
    )
    .unwrap();
    for rule in &mut policy.rules {
        if named.contains(&rule.priority) {
            rule.enabled = false;
        }
    }
    // On their own, and above the shipped catalog (as the output says to
    // place them): the same answer as the policy for every User-Agent.
    let alone = Catalog::from_toml_str(&entries).unwrap_or_else(|e| panic!("{e}\n{entries}"));
    let shipped_text = std::fs::read_to_string(root().join("config/clients.toml")).unwrap();
    let combined = Catalog::from_toml_str(&format!("{entries}\n{shipped_text}")).unwrap();
    let shipped = Catalog::from_toml_str(&shipped_text).unwrap();
    let (mut decided, mut undecided) = (0, 0);
    for ua in corpus().into_iter().chain(boundaries(&policy)) {
        let shown = String::from_utf8_lossy(&ua);
        let want = policy_answer(&policy, &shipped, &ua);
        assert_eq!(catalog_answer(&alone, &ua), want, "{file}: {shown}");
        assert_eq!(
            catalog_answer(&combined, &ua),
            want,
            "{file}: {shown} (above the shipped catalog)"
        );
        if want.is_none() {
            // Untouched by the policy: the shipped catalog decides as before.
            assert_eq!(
                combined.classify(Some(&ua)).client.id,
                shipped.classify(Some(&ua)).client.id,
                "{shown}"
            );
            undecided += 1;
        } else {
            decided += 1;
        }
    }
    (decided, undecided)
}

#[test]
fn csv_export_round_trips_over_the_corpus() {
    let (decided, undecided) = round_trip("redmond.csv");
    // The policy decides for the Microsoft clients of the corpus (OC,
    // OCPhone, iPhoneLync, AndroidLync, McxService, UCCAPI), not for the rest.
    assert!(
        decided >= 30 && undecided >= 80,
        "{decided} decided, {undecided} not"
    );
}

#[test]
fn json_export_round_trips_over_the_corpus() {
    assert_eq!(round_trip("redmond.json"), round_trip("redmond.csv"));
    // Four of its seven rules are not imported (and named): the others
    // still answer as the policy does.
    let (decided, _) = round_trip("global-gaps.json");
    assert!(decided >= 10, "{decided}");
}

#[test]
fn csv_and_json_exports_of_one_policy_give_the_same_entries() {
    let csv = import_cvp(&["tests/fixtures/cvp/redmond.csv"]);
    let json = import_cvp(&["tests/fixtures/cvp/redmond.json"]);
    let strip = |out: &Output| {
        // The source file is named in the header; rules are located by
        // CSV line or JSON index.
        text(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&csv), strip(&json));
    assert!(text(&csv.stdout).contains("# Priority 3 (line 6): OC EQL 4.* -> AllowWithUrl"));
    assert!(text(&json.stdout).contains("# Priority 3 ([0]): OC EQL 4.* -> AllowWithUrl"));
}

#[test]
fn what_cannot_be_expressed_is_named_in_the_output_and_on_stderr() {
    let out = import_cvp(&["tests/fixtures/cvp/global-gaps.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for (priority, what) in [
        (1, "not imported: EQL 4.* is the range 4 <= version < 5"),
        (
            2,
            "not imported: version 4.*.7577.*: a part after a wildcard",
        ),
        (
            3,
            "not imported: GTR with every version part a wildcard matches no client",
        ),
        (4, "not imported: UserAgent \"In House\" holds ' '"),
        (
            5,
            "imported in part: the upgrade through Windows Update or WSUS",
        ),
        (
            6,
            "imported in part: the ActionUrl \"https://intranet.contoso.com/im\"",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!(": priority {priority} (")))
            .unwrap_or_else(|| panic!("priority {priority} not named:\n{stderr}"));
        assert!(
            line.starts_with("sipadmit: tests/fixtures/cvp/global-gaps.json: priority"),
            "{line}"
        );
        assert!(line.contains(what), "{line}");
    }
    assert!(
        stderr.contains("not at every sign-in as Lync does"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("7 rules, 3 imported, 4 not imported\n"),
        "{stderr}"
    );
    assert_eq!(
        stdout.matches("# NOT IMPORTED: priority").count(),
        4,
        "{stdout}"
    );
    assert_eq!(stdout.matches("# NOT CARRIED OVER:").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("[[clients]]").count(), 3, "{stdout}");
}

#[test]
fn several_policies_need_a_scope_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("both.json");
    let mut rules: Vec<serde_json::Value> = [fixture("redmond.json"), fixture("global-gaps.json")]
        .iter()
        .flat_map(|f| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            v.as_array().unwrap().clone()
        })
        .collect();
    rules.rotate_left(3);
    std::fs::write(&both, serde_json::to_vec(&rules).unwrap()).unwrap();
    let path = both.to_str().unwrap();
    let out = import_cvp(&[path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("both.json: the export holds the rules of 2 policies (site:Redmond, Global)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = import_cvp(&["--scope", "global", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("scope Global): 7 rules"));

    let out = import_cvp(&["tests/fixtures/cvp/missing.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing.csv: No such file"),
        "{}",
        text(&out.stderr)
    );
    let bad = dir.path().join("numbers.json");
    std::fs::write(
        &bad,
        r#"[{"Priority":0,"UserAgent":"OC","MajorVersion":4,"MinorVersion":0,"BuildNumber":0,
            "QfeNumber":0,"CompareOp":2,"Action":"Block"}]"#,
    )
    .unwrap();
    let out = import_cvp(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("numbers.json: 1 problem(s) in the rules:\n  [0].CompareOp: the number 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_and_utf16_exports_are_read() {
    use std::io::Write as _;
    let csv = std::fs::read_to_string(fixture("redmond.csv")).unwrap();
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(csv.encode_utf16().flat_map(u16::to_le_bytes));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["catalog", "import-cvp", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&utf16).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let from_file = import_cvp(&["tests/fixtures/cvp/redmond.csv"]);
    let body = |o: &Output| {
        text(&o.stdout)
            .split_once("\n\n")
            .map(|(_, b)| b.to_owned())
    };
    assert_eq!(body(&out), body(&from_file));
    assert!(Path::new(&fixture("redmond.csv")).exists());
}

#[test]
fn encoding_problems_name_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let csv = std::fs::read_to_string(fixture("redmond.csv")).unwrap();
    let nobom = dir.path().join("nobom.csv");
    std::fs::write(
        &nobom,
        csv.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = import_cvp(&[nobom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).ends_with(
            "nobom.csv: UTF-16 without a byte order mark: save as UTF-8 or UTF-16 with BOM\n"
        ),
        "{}",
        text(&out.stderr)
    );
    assert!(!out.stderr.contains(&0), "no NUL byte echoed");
    let cp1252 = dir.path().join("cp1252.csv");
    let bytes = csv.replacen("Lync 2013 and later", "Lync 2013 \u{2013} caf\u{E9}", 1);
    let at = bytes.find('\u{2013}').unwrap();
    let mut raw = bytes.as_bytes()[..at].to_vec();
    raw.push(0x96); // cp1252's en dash
    raw.extend_from_slice(bytes[at..].replacen('\u{2013}', "", 1).as_bytes());
    std::fs::write(&cp1252, raw).unwrap();
    let out = import_cvp(&[cp1252.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cp1252.csv: line 4, UserAgentFullName: invalid UTF-8: byte 0x96 (file offset {at})"
        )),
        "{stderr}"
    );
}

#[test]
fn a_priority_given_twice_is_refused_naming_both_lines() {
    // What the trial's dup_priority.csv holds: the rule of line 4 again,
    // Block instead of Allow, appended by hand.
    let dir = tempfile::tempdir().unwrap();
    let csv = std::fs::read_to_string(fixture("redmond.csv")).unwrap();
    let line4 = csv.split("\r\n").nth(3).unwrap();
    let path = dir.path().join("dup.csv");
    std::fs::write(
        &path,
        format!("{csv}{}\r\n", line4.replace("\"Allow\"", "\"Block\"")),
    )
    .unwrap();
    let out = import_cvp(&[path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dup.csv: 1 rule(s) with the priority of an earlier rule"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("\n  line 14, Priority: 1, as on line 4\n"),
        "{stderr}"
    );
}

#[test]
fn a_property_given_twice_is_refused_naming_the_file_rule_field_and_values() {
    // The trial's four files: an Allow rule that also says Block, a
    // Priority given twice; in JSON and in CSV.
    let dir = tempfile::tempdir().unwrap();
    let rule = r#""UserAgent":"OC","MajorVersion":"15","MinorVersion":"*","BuildNumber":"*","QfeNumber":"*","CompareOp":"GEQ""#;
    let header =
        "Priority,UserAgent,MajorVersion,MinorVersion,BuildNumber,QfeNumber,CompareOp,Action";
    let cases = [
        (
            "case.json",
            format!(r#"[{{"Priority":0,{rule},"Action":"Allow","action":"Block"}}]"#),
            "case.json: 1 problem(s) in the rules:\n  [0].Action: given twice (\"Action\": \
             \"Allow\", \"action\": \"Block\"): which value the rule has is unknown; give the \
             property once\n",
        ),
        (
            "dupkey.json",
            format!(r#"[{{"Priority":0,"Priority":5,{rule},"Action":"Allow"}}]"#),
            "dupkey.json: 1 problem(s) in the rules:\n  [0].Priority: given twice (\"Priority\": \
             0, \"Priority\": 5): which value the rule has is unknown; give the property once\n",
        ),
        (
            "dupcol.csv",
            format!("{header},Action\n1,OC,15,*,*,*,GEQ,Allow,Block\n"),
            "dupcol.csv: CSV line 1: the header row has the column Action twice (columns 8 \
             (\"Action\"), 9 (\"Action\")): which of them holds a rule's value is unknown; keep \
             one\n",
        ),
        (
            "duppri.csv",
            format!("{header},Priority\n1,OC,15,*,*,*,GEQ,Allow,7\n"),
            "duppri.csv: CSV line 1: the header row has the column Priority twice (columns 1 \
             (\"Priority\"), 9 (\"Priority\")): which of them holds a rule's value is unknown; \
             keep one\n",
        ),
    ];
    for (name, content, error) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = import_cvp(&[path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        assert!(stderr.ends_with(error), "{name}: {stderr}");
    }
}

/// What `mobile-allow.csv`'s entries placed above the shipped catalog say
/// of some clients: (User-Agent, client id, support).
const MOBILE_ALLOW_ABOVE_SHIPPED: [(&str, &str, Support); 9] = [
    (
        "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)",
        "cvp-0-androidlync",
        Support::Unsupported,
    ),
    (
        "RTCC/5.0.0.0 UCWA/5.0.0.0 iPhoneLync/5.0.0.0 (iPhone iOS 7.0)",
        "cvp-3-iphonelync",
        Support::Unsupported,
    ),
    (
        "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0",
        "response-group-service",
        Support::Service,
    ),
    (
        "RTCC/5.0.0.0 MediationServer",
        "microsoft-server",
        Support::Service,
    ),
    (
        "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 R2)",
        "cvp-2-oc-before-4",
        Support::Unsupported,
    ),
    (
        "UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)",
        "cvp-2-oc-lync-2010",
        Support::Supported,
    ),
    (
        "LinphoneiOS/4.3.0 (Bob's iPhone) LinphoneSDK/4.4.0",
        "cvp-4-linphoneios",
        Support::Unsupported,
    ),
    (
        "Bria iOS release 3.9.5 stamp 38501.38502",
        "bria-mobile",
        Support::Unsupported,
    ),
    (
        "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)",
        "cvp-2-oc-lync-2013",
        Support::Supported,
    ),
];

#[test]
fn an_allow_makes_no_client_supported_that_the_response_group_application_does_not_support() {
    let out = import_cvp(&["tests/fixtures/cvp/mobile-allow.csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (entries, stderr) = (text(&out.stdout), text(&out.stderr));
    let file = "sipadmit: tests/fixtures/cvp/mobile-allow.csv: ";
    for expected in [
        "warning: priority 0 (line 3: AndroidLync GEQ 5.* -> Allow): not supported for Response \
         Group: Allow lets these clients sign in, and the Response Group application does not \
         support mobile clients",
        "priority 1 (line 4: RTCC GEQ * -> Allow): not imported: it would take Lync Response \
         Group application",
        "warning: priority 2 (line 5: OC GEQ 2.* -> Allow): not supported for Response Group: OC \
         below 4 (Office Communicator 2007 R2 and earlier) gets support \"unsupported\"",
        "warning: priority 4 (line 7: LinphoneiOS GEQ * -> Allow): not supported for Response \
         Group: Allow lets them sign in, and the Response Group application does not support the \
         known clients it takes: Linphone for iOS / Android",
        "priority 5 (line 8: Bria EQL * -> Allow): not imported: it would make supported Bria \
         (CounterPath) for iOS / Android",
    ] {
        assert!(
            stderr.contains(&format!("{file}{expected}")),
            "{expected}\nnot in:\n{stderr}"
        );
    }
    // Above the shipped catalog, as the output says to place the entries.
    let shipped_text = std::fs::read_to_string(root().join("config/clients.toml")).unwrap();
    let combined = Catalog::from_toml_str(&format!("{entries}\n{shipped_text}")).unwrap();
    let said = |ua: &str| {
        let c = combined.classify(Some(ua.as_bytes()));
        (c.client.id.clone(), c.client.support)
    };
    for (ua, id, support) in MOBILE_ALLOW_ABOVE_SHIPPED {
        assert_eq!(said(ua), (id.to_owned(), support), "{ua}");
    }
    let (decided, _) = round_trip("mobile-allow.csv");
    assert!(decided >= 30, "{decided}");
}
