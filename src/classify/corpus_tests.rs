//! The shipped catalog (`config/clients.toml`) against the User-Agent corpus
//! (`tests/corpus/user-agents.tsv`, copied from upstream), the repository's
//! own table (`tests/corpus/user-agents-extra.tsv`: softphones, desk phones
//! and PBXs with the exact client, support and version each must get) and the
//! Response Group expectations.

use std::path::PathBuf;

use super::{Catalog, Category, Role, Support, CLIENT_UNKNOWN};

/// Rows where the shipped catalog deliberately differs from `rg_support`:
/// (user agent, support the catalog gives, why).
const DEVIATIONS: &[(&str, Support, &str)] = &[(
    "CSipSimple_mako-22/r2457",
    Support::Unsupported,
    "CSipSimple is an Android softphone: the catalog puts third-party mobile softphones in \
     category mobile, support unsupported (like Lync mobile), so a policy on mobile clients \
     covers it; the TSV files it under third-party",
)];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> Catalog {
    let path = manifest_dir().join("config/clients.toml");
    Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A tab-separated table of `tests/corpus`: its header and rows, as bytes.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Vec<u8>>>,
}

impl Table {
    /// Reads `tests/corpus/<name>`. Panics if the file is missing.
    fn read(name: &str) -> Self {
        let path = manifest_dir().join("tests/corpus").join(name);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("User-Agent table {} is required: {e}", path.display()));
        let mut lines = bytes
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let header = lines
            .next()
            .map(|h| {
                h.split(|&b| b == b'\t')
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|line| line.split(|&b| b == b'\t').map(<[u8]>::to_vec).collect())
            .collect();
        Self { header, rows }
    }

    /// The index of the column `name`. Panics if there is none.
    fn column(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("table has no {name} column"))
    }

    /// Field `column` of `row` ("" when the row is short).
    fn field(row: &[Vec<u8>], column: usize) -> &[u8] {
        row.get(column).map(Vec::as_slice).unwrap_or_default()
    }
}

/// (user_agent, rg_support) of every upstream corpus row.
fn corpus() -> Vec<(Vec<u8>, String)> {
    let table = Table::read("user-agents.tsv");
    let (ua, support) = (table.column("user_agent"), table.column("rg_support"));
    table
        .rows
        .iter()
        .map(|row| {
            (
                Table::field(row, ua).to_vec(),
                String::from_utf8_lossy(Table::field(row, support)).into_owned(),
            )
        })
        .collect()
}

/// One row of the repository's own table `user-agents-extra.tsv`.
struct ExtraRow {
    user_agent: Vec<u8>,
    /// The version `classify` must report (`None` for an empty field).
    version: Option<String>,
    /// The support the shipped catalog must give.
    support: String,
    evidence: String,
    source: String,
    /// The client id the shipped catalog must give.
    client: String,
}

fn extra() -> Vec<ExtraRow> {
    let table = Table::read("user-agents-extra.tsv");
    let text = |row: &[Vec<u8>], name: &str| {
        String::from_utf8_lossy(Table::field(row, table.column(name))).into_owned()
    };
    table
        .rows
        .iter()
        .map(|row| ExtraRow {
            user_agent: Table::field(row, table.column("user_agent")).to_vec(),
            version: Some(text(row, "version")).filter(|v| !v.is_empty()),
            support: text(row, "rg_support"),
            evidence: text(row, "evidence"),
            source: text(row, "source"),
            client: text(row, "client"),
        })
        .collect()
}

#[test]
fn shipped_catalog_matches_every_corpus_row() {
    let catalog = shipped();
    let rows = corpus();
    assert!(rows.len() >= 100, "corpus has only {} rows", rows.len());
    let mut failures = Vec::new();
    for (ua, expected) in &rows {
        let got = catalog.classify(Some(ua));
        let text = String::from_utf8_lossy(ua);
        let deviation = DEVIATIONS.iter().find(|(d, _, _)| *d == text);
        let ok = match deviation {
            Some((_, support, _)) => got.client.support == *support,
            None if expected == "third-party" => {
                matches!(got.client.support, Support::ThirdParty | Support::Unknown)
            }
            None => got.client.support.as_str() == expected,
        };
        if !ok {
            failures.push(format!(
                "{text:?}: expected {expected}, got {} ({} via {})",
                got.client.support, got.client.id, got.rule
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (ua, _, why) in DEVIATIONS {
        assert!(
            rows.iter().any(|(row, _)| row == ua.as_bytes()),
            "deviation {ua:?} ({why}) is not in the corpus any more"
        );
    }
}

#[test]
fn corpus_rows_are_not_left_unknown() {
    // Third-party rows may be unknown by the contract; the shipped catalog
    // still knows every one of them.
    let catalog = shipped();
    let unknown: Vec<String> = corpus()
        .iter()
        .filter(|(ua, _)| catalog.classify(Some(ua)).client.id == CLIENT_UNKNOWN)
        .map(|(ua, _)| String::from_utf8_lossy(ua).into_owned())
        .collect();
    assert!(unknown.is_empty(), "unknown: {unknown:#?}");
}

#[test]
fn extra_table_has_the_corpus_columns_and_sources() {
    let upstream = Table::read("user-agents.tsv").header;
    let own = Table::read("user-agents-extra.tsv").header;
    assert_eq!(own[..upstream.len()], upstream[..], "same columns first");
    assert_eq!(own[upstream.len()..], ["client"]);
    let rows = extra();
    assert!(rows.len() >= 70, "extra table has only {} rows", rows.len());
    let corpus: Vec<Vec<u8>> = corpus().into_iter().map(|(ua, _)| ua).collect();
    for row in &rows {
        let ua = String::from_utf8_lossy(&row.user_agent);
        assert!(
            ["exact", "reconstructed"].contains(&row.evidence.as_str()),
            "{ua:?}: evidence {:?}",
            row.evidence
        );
        assert!(!row.source.trim().is_empty(), "{ua:?}: no source");
        assert!(
            !corpus.contains(&row.user_agent),
            "{ua:?} repeats a corpus row"
        );
    }
    for (i, row) in rows.iter().enumerate() {
        assert!(
            !rows[..i].iter().any(|r| r.user_agent == row.user_agent),
            "{:?} twice",
            String::from_utf8_lossy(&row.user_agent)
        );
    }
}

#[test]
fn extra_rows_classify_to_their_client_support_and_version() {
    let catalog = shipped();
    let failures: Vec<String> = extra()
        .iter()
        .filter_map(|row| {
            let got = catalog.classify(Some(&row.user_agent));
            let got = (
                got.client.id.as_str(),
                got.client.support.as_str(),
                got.version.map(|v| v.to_string()),
                got.rule,
            );
            let want = (
                row.client.as_str(),
                row.support.as_str(),
                row.version.clone(),
            );
            ((got.0, got.1, got.2.clone()) != want).then(|| {
                format!(
                    "{:?}: expected {want:?}, got {got:?}",
                    String::from_utf8_lossy(&row.user_agent)
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn linphone_default_user_agent_and_the_bare_word_unknown() {
    // liblinphone's default (product `Unknown` + its stack comment) is the
    // Linphone SDK; the bare word is not, and stays unknown explicitly.
    let catalog = shipped();
    let sdk = catalog.classify(Some(b"Unknown (belle-sip/4.4.0)"));
    assert_eq!(
        (sdk.client.id.as_str(), sdk.rule),
        ("linphone-sdk", "linphone-sdk-default-ua")
    );
    assert_eq!(
        (sdk.client.category, sdk.client.support),
        (Category::ThirdParty, Support::ThirdParty)
    );
    for bare in ["Unknown", "unknown", " Unknown "] {
        let got = catalog.classify(Some(bare.as_bytes()));
        assert_eq!(
            (got.client.id.as_str(), got.rule),
            (CLIENT_UNKNOWN, "builtin:unknown"),
            "{bare:?}"
        );
    }
    // A PJSIP stack that sends no User-Agent: nothing to match.
    assert_eq!(catalog.classify(None).rule, "builtin:missing");
    // Linphone products that name themselves keep their own entries.
    let linphonec = catalog.classify(Some(b"Linphonec/5.1.65"));
    assert_eq!(
        (
            linphonec.client.id.as_str(),
            linphonec.rule,
            linphonec.version.map(|v| v.to_string())
        ),
        ("linphone", "linphonec", Some("5.1.65".to_owned()))
    );
}

#[test]
fn desk_phones_pbxs_and_mobile_softphones_are_categorised() {
    let catalog = shipped();
    let category = |ua: &str| {
        let got = catalog.classify(Some(ua.as_bytes()));
        (got.client.category, got.client.support)
    };
    for phone in [
        "Yealink SIP-T54W 96.85.0.5",
        "PolycomVVX-VVX_450-UA/5.9.0.9373",
        "Cisco-CP8841/12.6.1",
        "Cisco/SPA303-7.5.6a",
        "Grandstream GXP2170 1.0.9.135",
        "snomD785/10.1.84.12",
    ] {
        assert_eq!(
            category(phone),
            (Category::Phone, Support::ThirdParty),
            "{phone}"
        );
    }
    for pbx in [
        "Asterisk PBX 18.12.1",
        "FreeSWITCH-mod_sofia/1.10.12-release~a88d069d6f~64bit",
    ] {
        assert_eq!(
            category(pbx),
            (Category::Gateway, Support::ThirdParty),
            "{pbx}"
        );
    }
    for softphone in [
        "baresip v1.0.0 (x86_64/linux)",
        "PJSUA v2.10 Linux-5.14.4.18/x86_64/glibc-2.31",
        "Linphonec/5.1.65",
        "MicroSIP/3.21.4",
        "Z 5.6.6 v2.10.20.5",
        "Bria 3 release 3.5.5 stamp 71243",
        "Jitsi2.10.5550Windows 10",
    ] {
        assert_eq!(
            category(softphone),
            (Category::ThirdParty, Support::ThirdParty),
            "{softphone}"
        );
    }
    for mobile in [
        "Bria iOS release 3.9.5 stamp 38501.38502",
        "LinphoneiOS/4.3.0 (Bob's iPhone) LinphoneSDK/4.4.0",
        "demo_simulator.64bits_iOS11.2/3.16.5-46-324141 (belle-sip/1.6.3)",
    ] {
        assert_eq!(
            category(mobile),
            (Category::Mobile, Support::Unsupported),
            "{mobile}"
        );
    }
}

/// (user agent, client id, reported version).
const EXAMPLES: &[(&str, &str, Option<&str>)] = &[
    (
        "UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)",
        "lync-2013",
        Some("15.0.4420.1017"),
    ),
    (
        "UCCAPI/15.0.4971.1000 OC/15.0.4971.1000 (Skype for Business)",
        "lync-2013",
        Some("15.0.4971.1000"),
    ),
    (
        "UCCAPI/4.0.7400.0 OC/4.0.7400.0 (Microsoft Lync 2013)",
        "lync-2010",
        Some("4.0.7400.0"),
    ),
    (
        "UCCAPI/16.0.4591.1000 OC/16.0.4600.1000 (Skype for Business)",
        "skype-for-business-2016",
        Some("16.0.4600.1000"),
    ),
    (
        "UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010 Attendant)",
        "lync-2010-attendant",
        Some("4.0.7577.0"),
    ),
    (
        "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communications Server 2007 R2 Attendant)",
        "ocs-2007r2-attendant",
        Some("3.5.6907.0"),
    ),
    (
        "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 R2)",
        "communicator-2007r2",
        Some("3.5.6907.0"),
    ),
    (
        "UCCP/2.0.6362.111 OC/2.0.6362.111 (Microsoft Office Communicator)",
        "communicator-2007",
        Some("2.0.6362.111"),
    ),
    ("OC/1.0.559.0 (Microsoft Office Communicator 2005)", "communicator-2005", Some("1.0.559.0")),
    (
        "CPE/4.0.7577.4363 OCPhone/4.0.7577.4363 (Microsoft Lync 2010 Phone Edition)",
        "lync-phone-edition",
        Some("4.0.7577.4363"),
    ),
    ("AOC/4.0.7577.0", "lync-attendee", Some("4.0.7577.0")),
    ("MC/14.0.0 (Microsoft Lync for Mac 2011)", "lync-mac", Some("14.0.0")),
    ("MC/13.0.0 (Microsoft Communicator for Mac 2011)", "lync-mac", Some("13.0.0")),
    ("RTCC/5.0.0.0 LWA/5.0.0.0", "lync-web-app", Some("5.0.0.0")),
    ("RTCC/4.0.0.0 CWA/4.0.0.0", "lync-web-app", Some("4.0.0.0")),
    ("RTCC/7.0.0.0 UCWA/7.0.0.0", "ucwa-client", Some("7.0.0.0")),
    (
        "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)",
        "lync-mobile",
        Some("6.25.0.27"),
    ),
    ("RTCC/4.0.0.0 McxService/4.0.0.0 iPhoneLync/4.0.0.0", "lync-mobile", Some("4.0.0.0")),
    ("RTCC/5.0.0.0 UCWA/5.0.0.0 iPadLync/5.0.0.0 (iPad iOS 7.0)", "lync-mobile", Some("5.0.0.0")),
    ("RTCC/5.0.0.0 UCWA/5.0.0.0 WPLync/5.0.0.0 (Windows Phone 8.0)", "lync-mobile", Some("5.0.0.0")),
    ("RTCC/4.0.0.0 McxService/4.0.0.0 NokiaLync/4.0.0.0", "lync-mobile", Some("4.0.0.0")),
    (
        "RTCC/3.5.0.0 MCXService/3.5.0.0 communicator.NOKIAS60R2.JVP.EN_US/1.0.6875.0",
        "lync-mobile",
        Some("1.0.6875.0"),
    ),
    ("RTCC/4.0.0.0 McxService/4.0.0.0", "lync-mobile", Some("4.0.0.0")),
    (
        "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0",
        "response-group-service",
        Some("5.0.0.0"),
    ),
    (
        "RTCC/5.0.0.0 Response_Group_Service Announcement_Service",
        "response-group-service",
        Some("5.0.0.0"),
    ),
    ("RTCC/5.0.0.0 MediationServer", "microsoft-server", Some("5.0.0.0")),
    ("RTCC/5.0.0.0 MSExchangeUM/15.01.0231.021", "microsoft-server", Some("5.0.0.0")),
    ("RTC/5.0", "microsoft-server", Some("5.0")),
    ("RTC/1.3.5470 (Messenger 5.1.0701)", "windows-messenger", Some("1.3.5470")),
    ("friendly-scanner", "sip-scanner", None),
    ("sipcli/v1.8", "sip-scanner", Some("1.8")),
    ("sipvicious/0.3.4", "sip-scanner", Some("0.3.4")),
    ("Mozilla/5.0 (sipvicious)", "sip-scanner", None),
    ("Z 3.14.38765 rv2.8.3", "sip-scanner", None),
    ("Bria iOS release 5.1.1 stamp 88946", "bria-mobile", Some("5.1.1")),
    ("Bria Android release 5.4.2 stamp 100135", "bria-mobile", Some("5.4.2")),
    ("Bria 5 release 5.6.1 stamp 96218", "bria", Some("5.6.1")),
    ("X-Lite release 5.8.3 stamp 102651", "bria", Some("5.8.3")),
    ("Zoiper for iPhone rev.10862", "zoiper-mobile", None),
    ("Zoiper rv2.8.20", "zoiper", None),
    ("Z 5.3.8 rv2.10.11.1", "zoiper", Some("5.3.8")),
    ("LinphoneiOS/4.4.0 (iPhone) LinphoneSDK/4.5.0", "linphone-mobile", Some("4.4.0")),
    ("LinphoneAndroid/4.5.2 (Pixel 4) LinphoneSDK/4.5.0", "linphone-mobile", Some("4.5.2")),
    ("Linphone Desktop/4.2.5 (Debian GNU/Linux 11) LinphoneCore/4.4.10", "linphone", Some("4.2.5")),
    ("CSipSimple_mako-22/r2457", "csipsimple", None),
    ("Groundwire/5.3.1 (build 890; Acrobits)", "groundwire", None),
    ("Acrobits Softphone/6.4 (build 1234)", "acrobits", None),
    ("Purple/2.10.12 Sipe/1.20.1 (linux-x86_64)", "pidgin-sipe", Some("1.20.1")),
    ("MicroSIP/3.19.10", "microsip", Some("3.19.10")),
    ("PolycomVVX-VVX_500-UA/5.0.0.6874", "polycom-phone", Some("5.0.0.6874")),
    ("Polycom/5.5.0.20556 PolycomVVX-VVX_500-UA/5.5.0.20556", "polycom-phone", Some("5.5.0.20556")),
    ("PolycomRealPresenceGroup500/4.1.5", "polycom-video", Some("4.1.5")),
    ("Polycom HDX 8000 HD (Release - 2.5.0.8_ne-4035)", "polycom-video", None),
    ("Yealink VC400 30.10.0.27", "yealink-video", Some("30.10.0.27")),
    ("Yealink SIP-T27G 69.86.0.15", "yealink-phone", Some("69.86.0.15")),
    ("Mediant 2000/v.6.60A.228.011", "audiocodes-gateway", None),
    ("AUDC-IPPhone/2.2.8.61 (420HD-Rev1; 00908F4867AF)", "audiocodes-phone", Some("2.2.8.61")),
    ("Cisco-CUCM10.5", "cisco-gateway", None),
    ("Cisco-CP8845/12.8.1", "cisco-phone", Some("12.8.1")),
    ("Linksys/SPA2102-5.2.10", "cisco-phone", Some("5.2.10")),
    ("TANDBERG/81 (F9.1 PAL)", "tandberg", Some("81")),
    ("Grandstream GVC3200 1.0.3.8", "grandstream", Some("1.0.3.8")),
    ("snom320/8.7.3.25", "snom", Some("8.7.3.25")),
    ("Avaya one-X Deskphone", "avaya", None),
    ("Mitel-6869i-SIP-Phone 5.1.1.2024", "mitel", None),
    ("Aastra 6757i/3.3.1.4053", "mitel", None),
    ("Huawei eSpace 7910", "huawei-phone", None),
    ("Huawei-MC850/V100R001C02B120", "huawei-video", None),
    ("C610A IP/42.076.00.000.000", "gigaset", None),
    ("AVer, EVC130 00.01.12.81", "aver", None),
    ("Asterisk PBX 11.13.1~dfsg-2+deb8u2", "pbx", Some("11.13.1")),
    ("FreeSWITCH-mod_sofia/1.10.7-release", "pbx", Some("1.10.7")),
    ("OmniPCX Enterprise R11.2 l2.300.20.e", "pbx", None),
];

#[test]
fn shipped_examples_and_every_client_is_reachable() {
    let catalog = shipped();
    for (ua, id, version) in EXAMPLES {
        let got = catalog.classify(Some(ua.as_bytes()));
        assert_eq!(
            (got.client.id.as_str(), got.version.map(|v| v.to_string())),
            (*id, version.map(str::to_owned)),
            "{ua:?} via {}",
            got.rule
        );
    }
    // Every catalog entry is reached by an example or a corpus row (an entry
    // shadowed by an earlier rule would fail here).
    let mut uas: Vec<Vec<u8>> = corpus().into_iter().map(|(ua, _)| ua).collect();
    uas.extend(extra().into_iter().map(|row| row.user_agent));
    let mut reached: Vec<String> = EXAMPLES.iter().map(|(_, id, _)| (*id).to_owned()).collect();
    reached.extend(
        uas.iter()
            .map(|ua| catalog.classify(Some(ua)).client.id.clone()),
    );
    let unreached: Vec<&str> = catalog
        .clients()
        .map(|c| c.id.as_str())
        .filter(|id| !["missing", "unknown"].contains(id) && !reached.iter().any(|r| r == id))
        .collect();
    assert!(unreached.is_empty(), "never reached: {unreached:?}");
}

#[test]
fn response_group_expectations() {
    let catalog = shipped();
    let check = |ua: &str, id: &str, support: Support| {
        let got = catalog.classify(Some(ua.as_bytes()));
        assert_eq!(
            (got.client.id.as_str(), got.client.support),
            (id, support),
            "{ua:?}"
        );
        got
    };
    let lync = check(
        "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)",
        "lync-2013",
        Support::Supported,
    );
    assert_eq!(lync.rule, "lync-2013-oc15");
    assert!(lync.client.has_role(Role::FormalAgent));
    let lync2010 = check(
        "UCCAPI/4.0.7400.0 OC/4.0.7400.0 (Microsoft Lync 2013)",
        "lync-2010",
        Support::Supported,
    );
    assert_eq!(lync2010.client.roles, [Role::Caller, Role::InformalAgent]);
    let rgs = check(
        "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0",
        "response-group-service",
        Support::Service,
    );
    assert_eq!(rgs.client.category, Category::Service);
    let mobile = check(
        "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)",
        "lync-mobile",
        Support::Unsupported,
    );
    assert_eq!(mobile.client.category, Category::Mobile);
    assert!(mobile.client.roles.is_empty());
    let scanner = check("friendly-scanner", "sip-scanner", Support::Scanner);
    assert_eq!(scanner.client.category, Category::Scanner);
    let attendant = check(
        "UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010 Attendant)",
        "lync-2010-attendant",
        Support::Supported,
    );
    assert_eq!(attendant.client.category, Category::Attendant);
    assert!(attendant.client.has_role(Role::FormalAgent));
    let phone = check(
        "CPE/4.0.7423.1 OCPhone/4.0.7423.1 (Microsoft Lync 2010 (Beta) Phone Edition)",
        "lync-phone-edition",
        Support::Supported,
    );
    assert!(
        phone.client.has_role(Role::InformalAgent) && !phone.client.has_role(Role::FormalAgent)
    );
    check(
        "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 R2)",
        "communicator-2007r2",
        Support::Unsupported,
    );
    assert_eq!(catalog.classify(None).rule, "builtin:missing");
    assert_eq!(
        catalog.classify(Some(b"Totally/1.0 (new)")).rule,
        "builtin:unknown"
    );
}

#[test]
fn shipped_catalog_roles_follow_support() {
    // Only supported clients take Response Group roles; every supported
    // client can at least call a workflow.
    for client in shipped().clients() {
        match client.support {
            Support::Supported => assert!(client.has_role(Role::Caller), "{}", client.id),
            _ => assert!(client.roles.is_empty(), "{}", client.id),
        }
    }
}

#[test]
fn garbage_and_truncated_values_never_panic() {
    let catalog = shipped();
    // Every prefix of every row of both tables.
    let extra_uas = extra().into_iter().map(|row| row.user_agent);
    for ua in corpus().into_iter().map(|(ua, _)| ua).chain(extra_uas) {
        for end in 0..=ua.len() {
            let got = catalog.classify(Some(&ua[..end]));
            assert!(!got.rule.is_empty());
        }
    }
    // Pseudo-random bytes biased towards the tokenizer's special characters.
    let special = b"()/\\ \t\r\n\"abcOC15.0\xff\x00";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut value = Vec::new();
    for _ in 0..5_000 {
        value.clear();
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let len = (state >> 58) as usize;
        for _ in 0..len {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let pick = (state >> 33) as usize;
            value.push(if pick % 4 == 0 {
                (pick >> 8) as u8
            } else {
                special[(pick >> 8) % special.len()]
            });
        }
        let got = catalog.classify(Some(&value));
        assert!(!got.rule.is_empty());
    }
}

#[test]
fn the_memo_answers_as_the_rules_do() {
    let catalog = shipped();
    let mut values: Vec<Vec<u8>> = corpus().into_iter().map(|(ua, _)| ua).collect();
    values.extend(extra().into_iter().map(|row| row.user_agent));
    values.extend([
        b"NoSuchClient/1.0".to_vec(),
        b"  UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)\t".to_vec(),
        [
            b"UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 ".as_slice(),
            &[b'x'; 300],
        ]
        .concat(),
    ]);
    assert!(values.len() > 128, "more values than the memo has slots");
    // Twice over: the first pass fills the memo (and replaces slots), the
    // second answers from it where a value kept its slot.
    for pass in 0..2 {
        for value in &values {
            let trimmed = crate::sip::fields::trim_lws(value);
            if trimmed.is_empty() {
                continue; // `missing`, before the memo and the rules
            }
            let got = catalog.classify(Some(value));
            let rules = catalog.classification(catalog.run_rules(trimmed));
            assert_eq!(
                (
                    got.client.id.as_str(),
                    got.rule,
                    got.version.map(|v| v.to_string())
                ),
                (
                    rules.client.id.as_str(),
                    rules.rule,
                    rules.version.map(|v| v.to_string())
                ),
                "pass {pass}: {:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
    // A value asked for again at once comes from the memo, the same.
    let lync = b"UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)";
    let first = catalog.classify(Some(lync));
    let again = catalog.classify(Some(lync));
    assert_eq!(
        (first.client.id.as_str(), first.rule),
        (again.client.id.as_str(), again.rule)
    );
}
