//! `sipadmit report` end to end: the real binary over a fixture log written
//! by the library's `DecisionRecord` (what `run` writes), checked against
//! counts computed here from the same records.
//!
//! `tests/fixtures/decisions.jsonl` is `fixture_records()` serialized;
//! `fixture_log_is_what_run_writes` keeps the two equal (regenerate with
//! `SIPADMIT_WRITE_FIXTURES=1 cargo test --test report fixture_log`).
//!
//! The HTML test needs headless Chromium (Debian `chromium`, or
//! `SIPADMIT_CHROMIUM_BIN`): it fails under `CI=true` when Chromium is
//! missing, and is skipped with a message otherwise.

mod common {
    pub mod external;
}

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::external::find_tool;
use serde_json::Value;
use sipadmit::classify::Catalog;
use sipadmit::config::SHIPPED_CATALOG;
use sipadmit::observe::decision_log::{DecisionKind, Leg, CONTRACT_FIELDS};
use sipadmit::observe::DecisionRecord;
use sipadmit::policy::{Action, Mode, SessionRole};
use sipadmit::transport::Transport;

/// The longest the binary or Chromium may run in one test step.
const BOUND: Duration = Duration::from_secs(60);

const LYNC_2013: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
const LYNC_2013_NEWER: &str = "UCCAPI/15.0.5023.1000 OC/15.0.5023.1000 (Microsoft Lync)";
const SFB_2016: &str = "UCCAPI/16.0.4678.1000 OC/16.0.4678.1000 (Skype for Business)";
const LYNC_2010: &str = "UCCAPI/4.0.7577.4356 OC/4.0.7577.4356 (Microsoft Lync 2010)";
const LPE: &str = "CPE/4.0.7577.4455 OCPhone/4.0.7577.4455 (Microsoft Lync 2010 (Phone Edition))";
const ANDROID: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)";
const IPHONE: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 iPhoneLync/6.26.0.11 (iPhone iOS 12.1)";
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";
const ZOIPER: &str = "Zoiper rv2.10.2.0";
/// Markup in a User-Agent: must come out escaped in the HTML page.
const HOSTILE: &str = "<script>alert(\"x\")</script> Evil/1 & <img src=x>";
/// A terminal escape sequence: must come out escaped in plain output.
const TERMINAL: &str = "Esc\u{1b}[31mRed/1";

const BARESIP: &str = "baresip v1.0.0 (x86_64/linux)";
/// The registrar's address: the source of every registrar-leg record.
const REGISTRAR: &str = "192.0.2.1:5060";

const HELPDESK: &str = "sip:helpdesk@contoso.com";
const SALES: &str = "sip:sales@contoso.com";

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decisions.jsonl")
}

struct Entry {
    at: &'static str,
    ua: Option<&'static str>,
    role: SessionRole,
    action: Action,
    source: &'static str,
    from: &'static str,
    request_uri: &'static str,
    /// For agent offers: the client that registered the agent.
    registered: Option<&'static str>,
    mode: Mode,
    /// Which leg; agent offers come from the registrar.
    leg: Leg,
    /// A registrar-leg repeat of a request relayed from a client.
    spiral: bool,
    /// The Call-ID's distinct part, shared by both legs of one call.
    call: Option<&'static str>,
    /// A protocol or capacity answer: its rule and status.
    protocol: Option<(&'static str, Option<u16>)>,
    /// A de-REGISTER.
    unregister: bool,
}

const fn e(
    at: &'static str,
    ua: Option<&'static str>,
    role: SessionRole,
    action: Action,
    source: &'static str,
    from: &'static str,
    request_uri: &'static str,
) -> Entry {
    Entry {
        at,
        ua,
        role,
        action,
        source,
        from,
        request_uri,
        registered: None,
        mode: Mode::Enforce,
        leg: Leg::FromClient,
        spiral: false,
        call: None,
        protocol: None,
        unregister: false,
    }
}

/// The registrar's leg of the INVITE `client_leg`: the registrar relays
/// it (same Call-ID and User-Agent) toward the callee `at` a moment later;
/// sipadmit's own Via is in it.
fn registrar_leg(client_leg: &Entry, at: &'static str, request_uri: &'static str) -> Entry {
    Entry {
        at,
        source: REGISTRAR,
        request_uri,
        leg: Leg::FromRegistrar,
        spiral: true,
        ..*client_leg
    }
}

/// A protocol or capacity answer to a request from `ua`.
fn protocol(
    at: &'static str,
    ua: Option<&'static str>,
    source: &'static str,
    rule: &'static str,
    status: Option<u16>,
) -> Entry {
    Entry {
        protocol: Some((rule, status)),
        ..e(
            at,
            ua,
            SessionRole::None,
            if status.is_some() {
                Action::Reject
            } else {
                Action::Drop
            },
            source,
            "sip:nobody@contoso.com",
            "sip:erin@contoso.com",
        )
    }
}

/// The fixture: two hours in enforce mode, then half an hour in monitor
/// mode; every action, role and support class; versions; ties; unknown
/// User-Agents (one with markup, one with a terminal escape); a missing
/// User-Agent; IPv6 sources; agent offers (from the registrar); two calls
/// between clients recorded on both legs (baresip and Lync mobile
/// callers); protocol answers (a 400 for baresip's malformed request, a
/// 404 on the registrar's leg, a rate limit's 503); a de-REGISTER.
fn fixture_records() -> Vec<DecisionRecord> {
    use Action::{Allow, Drop, Flag, Reject};
    use SessionRole::{AgentOffer, AgentRegistration, Caller, None as NoRole};
    const REG: &str = "sip:contoso.com";
    let mut entries = vec![
        e(
            "2026-11-27T09:00:00.000Z",
            Some(LYNC_2013),
            NoRole,
            Allow,
            "192.0.2.10:50001",
            "sip:alice@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:05:00.000Z",
            Some(LYNC_2013),
            Caller,
            Allow,
            "192.0.2.10:50001",
            "sip:alice@contoso.com",
            HELPDESK,
        ),
        e(
            "2026-11-27T09:10:00.000Z",
            Some(SFB_2016),
            AgentRegistration,
            Allow,
            "192.0.2.11:50002",
            "sip:agent1@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:15:00.000Z",
            Some(LYNC_2013_NEWER),
            NoRole,
            Allow,
            "192.0.2.12:50003",
            "sip:erin@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:20:00.000Z",
            Some(ANDROID),
            Caller,
            Reject,
            "198.51.100.7:40001",
            "sip:bob@contoso.com",
            HELPDESK,
        ),
        e(
            "2026-11-27T09:21:00.000Z",
            Some(ANDROID),
            Caller,
            Reject,
            "198.51.100.7:40002",
            "sip:bob@contoso.com",
            SALES,
        ),
        e(
            "2026-11-27T09:25:00.000Z",
            Some(IPHONE),
            AgentRegistration,
            Reject,
            "[2001:db8::5]:5060",
            "sip:carol@contoso.com",
            REG,
        ),
        Entry {
            registered: Some(IPHONE),
            leg: Leg::FromRegistrar,
            ..e(
                "2026-11-27T09:30:00.000Z",
                Some(RGS),
                AgentOffer,
                Reject,
                "192.0.2.2:5061",
                HELPDESK,
                "sip:carol@contoso.com",
            )
        },
        e(
            "2026-11-27T09:35:00.000Z",
            Some("friendly-scanner"),
            NoRole,
            Drop,
            "203.0.113.66:5060",
            "sip:100@203.0.113.66",
            REG,
        ),
        e(
            "2026-11-27T09:36:00.000Z",
            Some("sipvicious"),
            NoRole,
            Drop,
            "203.0.113.66:5070",
            "sip:101@203.0.113.66",
            REG,
        ),
        e(
            "2026-11-27T09:40:00.000Z",
            Some(ZOIPER),
            Caller,
            Flag,
            "192.0.2.44:5060",
            "sip:dave@contoso.com",
            HELPDESK,
        ),
        e(
            "2026-11-27T09:45:00.000Z",
            Some("Acme-Phone/2.1 (build 4)"),
            NoRole,
            Allow,
            "192.0.2.50:5060",
            "sip:frank@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:46:00.000Z",
            Some("Acme-Phone/2.1 (build 4)"),
            NoRole,
            Allow,
            "192.0.2.50:5060",
            "sip:frank@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:47:00.000Z",
            Some("Acme-Phone/2.2"),
            NoRole,
            Allow,
            "192.0.2.51:5060",
            "sip:grace@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:50:00.000Z",
            Some("Zorblax/7"),
            Caller,
            Flag,
            "192.0.2.60:5060",
            "sip:heidi@contoso.com",
            HELPDESK,
        ),
        e(
            "2026-11-27T09:51:00.000Z",
            Some("Zorblax/7"),
            Caller,
            Flag,
            "192.0.2.60:5060",
            "sip:heidi@contoso.com",
            SALES,
        ),
        e(
            "2026-11-27T09:52:00.000Z",
            Some(HOSTILE),
            NoRole,
            Allow,
            "192.0.2.66:5060",
            "sip:mallory@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:53:00.000Z",
            Some(TERMINAL),
            NoRole,
            Allow,
            "192.0.2.67:5060",
            "sip:mallory@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T09:55:00.000Z",
            None,
            NoRole,
            Allow,
            "192.0.2.70:5060",
            "sip:ivan@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T10:00:00.000Z",
            Some("Beta/1"),
            NoRole,
            Allow,
            "192.0.2.71:5060",
            "sip:judy@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T10:01:00.000Z",
            Some("Beta/1"),
            NoRole,
            Allow,
            "192.0.2.71:5060",
            "sip:judy@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T10:10:00.000Z",
            Some(LYNC_2010),
            NoRole,
            Allow,
            "192.0.2.13:50004",
            "sip:ken@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T10:20:00.000Z",
            Some(LPE),
            AgentRegistration,
            Allow,
            "192.0.2.14:50005",
            "sip:agent2@contoso.com",
            REG,
        ),
        e(
            "2026-11-27T10:30:00.000Z",
            Some(LYNC_2013),
            Caller,
            Allow,
            "192.0.2.10:50001",
            "sip:alice@contoso.com",
            SALES,
        ),
        e(
            "2026-11-27T10:59:59.999Z",
            Some(LYNC_2013),
            NoRole,
            Allow,
            "192.0.2.10:50001",
            "sip:alice@contoso.com",
            REG,
        ),
        Entry {
            call: Some("baresip-call"),
            ..e(
                "2026-11-27T10:40:00.000Z",
                Some(BARESIP),
                NoRole,
                Allow,
                "192.0.2.80:5060",
                "sip:oscar@contoso.com",
                "sip:erin@contoso.com",
            )
        },
        Entry {
            call: Some("mobile-call"),
            ..e(
                "2026-11-27T10:41:00.000Z",
                Some(ANDROID),
                NoRole,
                Allow,
                "198.51.100.7:40004",
                "sip:bob@contoso.com",
                "sip:alice@contoso.com",
            )
        },
        protocol(
            "2026-11-27T10:42:00.000Z",
            Some(BARESIP),
            "192.0.2.80:5060",
            "proxy.malformed",
            Some(400),
        ),
        Entry {
            leg: Leg::FromRegistrar,
            ..protocol(
                "2026-11-27T10:43:00.000Z",
                Some(LYNC_2013),
                REGISTRAR,
                "proxy.not-found",
                Some(404),
            )
        },
        protocol(
            "2026-11-27T10:44:00.000Z",
            Some("friendly-scanner"),
            "203.0.113.66:5060",
            "rate_limit.requests",
            Some(503),
        ),
    ];
    // The registrar's legs of the two calls.
    let baresip_leg = registrar_leg(
        &entries[entries.len() - 5],
        "2026-11-27T10:40:00.020Z",
        "sip:erin@192.0.2.12:50003",
    );
    let mobile_leg = registrar_leg(
        &entries[entries.len() - 4],
        "2026-11-27T10:41:00.020Z",
        "sip:alice@192.0.2.10:50001",
    );
    entries.extend([baresip_leg, mobile_leg]);
    entries.sort_by_key(|e| e.at);
    let monitor = [
        e(
            "2026-11-27T11:00:00.000Z",
            Some(ANDROID),
            Caller,
            Reject,
            "198.51.100.7:40003",
            "sip:bob@contoso.com",
            HELPDESK,
        ),
        e(
            "2026-11-27T11:10:00.000Z",
            Some(IPHONE),
            AgentRegistration,
            Reject,
            "[2001:db8::5]:5060",
            "sip:carol@contoso.com",
            REG,
        ),
        Entry {
            registered: Some(ANDROID),
            leg: Leg::FromRegistrar,
            ..e(
                "2026-11-27T11:15:00.000Z",
                Some(RGS),
                AgentOffer,
                Reject,
                "192.0.2.2:5061",
                HELPDESK,
                "sip:bob@contoso.com",
            )
        },
        e(
            "2026-11-27T11:20:00.000Z",
            Some(LYNC_2013),
            NoRole,
            Allow,
            "192.0.2.10:50001",
            "sip:alice@contoso.com",
            REG,
        ),
        Entry {
            unregister: true,
            ..e(
                "2026-11-27T11:25:00.000Z",
                Some(LYNC_2013),
                NoRole,
                Allow,
                "192.0.2.10:50001",
                "sip:alice@contoso.com",
                REG,
            )
        },
        e(
            "2026-11-27T11:30:00.000Z",
            Some(ZOIPER),
            Caller,
            Flag,
            "192.0.2.44:5060",
            "sip:dave@contoso.com",
            HELPDESK,
        ),
    ];
    entries.extend(monitor.into_iter().map(|m| Entry {
        mode: Mode::Monitor,
        ..m
    }));
    let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let own = catalog.classify(e.ua.map(str::as_bytes));
            let client = match e.registered {
                Some(ua) => catalog.classify(Some(ua.as_bytes())).client,
                None => own.client,
            };
            let (action, would_reject) = match (e.action, e.mode) {
                (Action::Reject, Mode::Monitor) => (Action::Flag, true),
                (a, _) => (a, false),
            };
            let rule = match (client.support.as_str(), e.role, e.protocol) {
                (_, _, Some((rule, _))) => rule.to_owned(),
                ("scanner", _, _) => "scanner".to_owned(),
                ("supported", _, _) => "supported".to_owned(),
                ("service", _, _) => "service".to_owned(),
                (_, SessionRole::None, _) => "no-session".to_owned(),
                (support, role, _) => format!("{}.{support}", role.as_str()),
            };
            DecisionRecord {
                ts: e.at.parse().unwrap(),
                transport: if i % 3 == 0 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                },
                source: e.source.parse().unwrap(),
                local: None,
                leg: Some(e.leg),
                method: if e.request_uri == REG {
                    "REGISTER".into()
                } else {
                    "INVITE".into()
                },
                call_id: match e.call {
                    Some(call) => format!("{call}-a84b4c76e66710@contoso.com"),
                    None => format!("{i:04}-a84b4c76e66710@contoso.com"),
                },
                from: e.from.into(),
                // A REGISTER is addressed to the user's own address of record.
                to: if e.request_uri == REG {
                    e.from.into()
                } else {
                    e.request_uri.into()
                },
                request_uri: e.request_uri.into(),
                user_agent: e.ua.map(str::to_owned),
                client: client.id.clone(),
                sender_client: own.client.id.clone(),
                category: client.category,
                support: client.support,
                role: e.role,
                kind: Some(if e.protocol.is_some() {
                    DecisionKind::Protocol
                } else {
                    DecisionKind::Policy
                }),
                action,
                rule: Cow::Owned(rule),
                client_rule: own.rule.to_owned(),
                status: match e.protocol {
                    Some((_, status)) => status,
                    None => {
                        (action == Action::Reject).then_some(if e.role == SessionRole::AgentOffer {
                            480
                        } else {
                            403
                        })
                    }
                },
                mode: e.mode,
                would_reject,
                generation: 1,
                spiral: e.spiral,
                after_challenge: false,
                unregister: e.unregister,
                undelivered: false,
            }
        })
        .collect()
}

/// The records as the decision log writer writes them.
fn fixture_text() -> String {
    let mut text = String::new();
    for r in fixture_records() {
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
    }
    text
}

// === running the binary ===

fn sipadmit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sipadmit"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// Run `command` with `stdin` (or nothing); after [`BOUND`] kill it (by
/// its own id, nothing else) and fail the test.
fn run(mut command: Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Read;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        rx
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran longer than {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A process the command left behind could hold the pipes open.
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("{command:?}: output still open after it exited"))
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn report_json(args: &[&str], stdin: Option<&[u8]>) -> Value {
    let mut c = sipadmit();
    c.arg("report").arg("--json").args(args);
    let out = run(c, stdin);
    assert!(
        out.status.success(),
        "report {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn fixture_arg() -> String {
    fixture_path().display().to_string()
}

// === what the report should say, computed from the records ===

/// (key, count) sorted by count descending, then key ascending.
fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
    v
}

fn pairs(list: &Value, key: &str) -> Vec<(String, u64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o[key].as_str().unwrap().to_owned(),
                o["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether the report counts `record` in its decision tables by default:
/// a policy decision, on the client's leg, or on the registrar's leg when
/// it is no repeat of a request relayed from a client (an agent offer).
fn counted(record: &DecisionRecord) -> bool {
    record.kind() == DecisionKind::Policy && record.counted_once()
}

// === tests ===

#[test]
fn fixture_log_is_what_run_writes() {
    let text = fixture_text();
    if std::env::var_os("SIPADMIT_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture_path(), &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(fixture_path()).unwrap();
    assert_eq!(
        on_disk, text,
        "tests/fixtures/decisions.jsonl differs from fixture_records(); \
         regenerate: SIPADMIT_WRITE_FIXTURES=1 cargo test --test report fixture_log"
    );
    // And each line reads back as the record written.
    for (line, record) in on_disk.lines().zip(fixture_records()) {
        assert_eq!(
            serde_json::from_str::<DecisionRecord>(line).unwrap(),
            record
        );
    }
}

#[test]
fn json_has_the_keys_scripts_rely_on_with_the_right_counts() {
    let all = fixture_records();
    let r = report_json(&[&fixture_arg()], None);
    let records: Vec<&DecisionRecord> = all.iter().filter(|r| counted(r)).collect();
    assert_eq!(
        records.len(),
        all.len() - 5,
        "2 repeats, 3 protocol answers"
    );
    assert_eq!(r["records"], records.len() as u64);
    assert_eq!(r["records_read"], all.len() as u64);
    assert_eq!(r["legs"], "once");
    assert_eq!(r["malformed_lines"], 0);
    assert_eq!(r["outside_time_range"], 0);

    let mut by_action: HashMap<String, u64> = HashMap::new();
    let mut by_client: HashMap<String, u64> = HashMap::new();
    let mut unknown: HashMap<String, (u64, String, String)> = HashMap::new();
    for rec in records.iter().copied() {
        *by_action.entry(rec.action.as_str().into()).or_default() += 1;
        *by_client.entry(rec.client.clone()).or_default() += 1;
        if rec.client == "unknown" && rec.role != SessionRole::AgentOffer {
            let ts = format!("{:.3}", rec.ts);
            let e = unknown.entry(rec.user_agent.clone().unwrap()).or_insert((
                0,
                ts.clone(),
                ts.clone(),
            ));
            e.0 += 1;
            e.1 = e.1.clone().min(ts.clone());
            e.2 = e.2.clone().max(ts);
        }
    }
    let actions = r["by_action"].as_object().unwrap();
    assert_eq!(actions.len(), 4, "{actions:?}");
    for (action, count) in actions {
        assert_eq!(
            count.as_u64().unwrap(),
            by_action.get(action).copied().unwrap_or(0),
            "{action}"
        );
    }
    assert_eq!(r["by_action"]["drop"], 2);
    assert_eq!(r["by_action"]["reject"], 4);

    // by_client: sorted by count, descending; ties by client id.
    let clients = pairs(&r["by_client"], "client");
    assert_eq!(clients, ranked(by_client));
    let position = |id: &str| clients.iter().position(|(c, _)| c == id).unwrap();
    assert!(
        position("sip-scanner") < position("zoiper"),
        "tie: {clients:?}"
    );

    // unknown_user_agents: sorted by count, descending; ties by value.
    let uas = r["unknown_user_agents"].as_array().unwrap();
    let mut expected: Vec<_> = unknown.into_iter().collect();
    expected.sort_by(|(a, x), (b, y)| y.0.cmp(&x.0).then_with(|| a.cmp(b)));
    assert_eq!(uas.len(), expected.len());
    for (got, (ua, (count, first, last))) in uas.iter().zip(&expected) {
        assert_eq!(got["user_agent"], ua.as_str());
        assert_eq!(got["count"], *count);
        assert_eq!(got["first_seen"], first.as_str());
        assert_eq!(got["last_seen"], last.as_str());
    }
    let top: Vec<&str> = uas
        .iter()
        .take(3)
        .map(|u| u["user_agent"].as_str().unwrap())
        .collect();
    assert_eq!(top, ["Acme-Phone/2.1 (build 4)", "Beta/1", "Zorblax/7"]);

    // Versions read from the User-Agents with the shipped catalog.
    let lync = r["by_client"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "lync-2013")
        .unwrap();
    assert_eq!(lync["count"], 7);
    assert_eq!(lync["support"], "supported");
    assert_eq!(
        lync["versions"],
        serde_json::json!([
            {"version": "15.0.4481.1000", "count": 6},
            {"version": "15.0.5023.1000", "count": 1}
        ])
    );

    // baresip: one call (its registrar-leg repeat not counted), allowed;
    // the 400 for its malformed request is no policy reject.
    let client = |id: &str| -> &Value {
        r["by_client"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == id)
            .unwrap()
    };
    let baresip = client("baresip");
    assert_eq!(baresip["count"], 1);
    assert_eq!(
        baresip["by_action"],
        serde_json::json!({"allow": 1, "flag": 0, "reject": 0, "drop": 0})
    );
    assert_eq!(
        baresip["by_leg"],
        serde_json::json!({"from_client": 1, "from_registrar": 0})
    );
    // Lync mobile: its call once, and the two agent offers (the
    // registrar's leg only) to agents it registered.
    assert_eq!(client("lync-mobile")["count"], 8);
    assert_eq!(
        client("lync-mobile")["by_leg"],
        serde_json::json!({"from_client": 6, "from_registrar": 2})
    );
    assert_eq!(
        r["by_leg"],
        serde_json::json!({
            "from_client": {"records": 33, "policy": 31, "protocol": 2, "counted": 31},
            "from_registrar": {"records": 5, "policy": 4, "protocol": 1, "counted": 2}
        })
    );
    assert_eq!(
        r["protocol_answers"]["by_rule"],
        serde_json::json!([
            {"rule": "proxy.malformed", "status": 400, "count": 1},
            {"rule": "proxy.not-found", "status": 404, "count": 1},
            {"rule": "rate_limit.requests", "status": 503, "count": 1}
        ])
    );
    assert_eq!(r["protocol_answers"]["total"], 3);
    assert_eq!(
        r["protocol_answers"]["by_leg"],
        serde_json::json!({"from_client": 2, "from_registrar": 1})
    );
    let rules = pairs(&r["by_rule"], "rule");
    assert!(
        rules
            .iter()
            .all(|(rule, _)| !rule.starts_with("proxy.") && !rule.starts_with("rate_limit.")),
        "{rules:?}"
    );
    assert_eq!(
        r["registers"],
        serde_json::json!({"register": 19, "unregister": 1})
    );

    // Monitor mode, and where the rejects came from.
    assert_eq!(r["would_reject"]["total"], 3);
    assert_eq!(r["by_mode"]["monitor"], 6);
    let refused = &r["rejected_and_flagged"];
    assert_eq!(refused["reject"], 4);
    assert_eq!(refused["flag"], 7);
    assert_eq!(
        pairs(&refused["sources"], "source")[0],
        ("198.51.100.7".to_owned(), 3)
    );
    assert_eq!(
        pairs(&refused["workflows"], "workflow")[0],
        (HELPDESK.to_owned(), 5)
    );
    assert_eq!(
        pairs(&refused["users"], "user")[0],
        ("sip:bob@contoso.com".to_owned(), 3)
    );
    assert_eq!(r["over_time"]["bucket"], "hour");
    let buckets = r["over_time"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    let protocol: Vec<u64> = buckets
        .iter()
        .map(|b| b["protocol"].as_u64().unwrap())
        .collect();
    assert_eq!(protocol, [0, 3, 0]);
}

/// `--legs both` counts the registrar's legs of the two calls too, and the
/// per-client and per-leg counts say which leg each record came from;
/// protocol answers stay apart either way.
#[test]
fn legs_both_counts_the_registrar_leg_of_each_call() {
    let all = fixture_records();
    let once = report_json(&[&fixture_arg()], None);
    let both = report_json(&["--legs", "both", &fixture_arg()], None);
    assert_eq!(both["legs"], "both");
    let policy = all
        .iter()
        .filter(|r| r.kind() == DecisionKind::Policy)
        .count() as u64;
    assert_eq!(both["records"], policy);
    assert_eq!(
        both["records"].as_u64().unwrap(),
        once["records"].as_u64().unwrap() + 2
    );
    let client = |r: &Value, id: &str| -> Value {
        r["by_client"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(client(&both, "baresip")["count"], 2);
    assert_eq!(
        client(&both, "baresip")["by_leg"],
        serde_json::json!({"from_client": 1, "from_registrar": 1})
    );
    assert_eq!(client(&both, "lync-mobile")["count"], 9);
    assert_eq!(
        both["by_action"]["allow"].as_u64(),
        Some(once["by_action"]["allow"].as_u64().unwrap() + 2)
    );
    assert_eq!(both["protocol_answers"], once["protocol_answers"]);
    assert_eq!(both["by_leg"]["from_registrar"]["counted"], 4);

    let mut c = sipadmit();
    c.args(["report", "--legs", "both", &fixture_arg()]);
    let text = String::from_utf8(run(c, None).stdout).unwrap();
    assert!(
        text.contains("both legs of each call (--legs both)"),
        "{text}"
    );
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("CLIENT "))
        .unwrap();
    assert!(header.contains("FROM CLIENT  FROM REGISTRAR"), "{header}");
}

#[test]
fn since_is_inclusive_and_until_exclusive() {
    let records = fixture_records();
    let (since, until) = ("2026-11-27T10:59:59.999Z", "2026-11-27T11:10:00Z");
    let r = report_json(&["--since", since, "--until", until, &fixture_arg()], None);
    let (s, u): (jiff::Timestamp, jiff::Timestamp) =
        (since.parse().unwrap(), until.parse().unwrap());
    let inside = records.iter().filter(|r| r.ts >= s && r.ts < u).count() as u64;
    assert_eq!(inside, 2, "the fixture has a record on each bound");
    assert_eq!(r["records"], inside);
    assert_eq!(r["outside_time_range"], records.len() as u64 - inside);
    assert_eq!(r["first_record"], "2026-11-27T10:59:59.999Z");
    assert_eq!(r["last_record"], "2026-11-27T11:00:00.000Z");
    assert_eq!(r["since"], "2026-11-27T10:59:59.999Z");

    // Only --since, with an offset: the same instant.
    let r = report_json(
        &["--since", "2026-11-27T12:00:00+01:00", &fixture_arg()],
        None,
    );
    assert_eq!(r["records"], 6);

    // An empty range is refused.
    let mut c = sipadmit();
    c.args(["report", "--since", until, "--until", since, &fixture_arg()]);
    let out = run(c, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not after --since"));

    // A time that is not RFC 3339 is refused with the form it should take.
    let mut c = sipadmit();
    c.args(["report", "--since", "yesterday", &fixture_arg()]);
    let out = run(c, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "\"yesterday\": expected an RFC 3339 time with an offset, e.g. 2026-11-27T00:00:00Z"
        ),
        "{stderr}"
    );
}

#[test]
fn gzip_logs_and_plain_logs_add_up() {
    use flate2::write::GzEncoder;
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("decisions.log.1.gz");
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(fixture_text().as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let n = fixture_records().len() as u64;

    let r = report_json(&[gz.to_str().unwrap()], None);
    assert_eq!(
        (r["records_read"].as_u64(), r["malformed_lines"].as_u64()),
        (Some(n), Some(0))
    );

    let both = report_json(&[gz.to_str().unwrap(), &fixture_arg()], None);
    assert_eq!(both["records_read"], 2 * n);
    assert_eq!(both["records"], 2 * r["records"].as_u64().unwrap());
    assert_eq!(
        both["by_action"]["reject"],
        2 * r["by_action"]["reject"].as_u64().unwrap()
    );
    assert_eq!(both["logs"].as_array().unwrap().len(), 2);
    // Compressed input on stdin too.
    let piped = report_json(&[], Some(&std::fs::read(&gz).unwrap()));
    assert_eq!(piped["records_read"], n);

    // One rotated file cut short (`head -c`) among the others: read up to
    // the cut with a warning naming it, as zcat does, and the rest reported.
    let whole = std::fs::read(&gz).unwrap();
    let cut = dir.path().join("decisions.log.2.gz");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let mut c = sipadmit();
    c.args(["report", "--json", &fixture_arg(), cut.to_str().unwrap()]);
    let out = run(c, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "sipadmit: report: warning: {}: damaged gzip stream (",
            cut.display()
        )),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = r["records_read"].as_u64().unwrap();
    assert!((n..2 * n).contains(&read), "{read} of {n} + a part");
}

/// Trial 25: a gzip member's CRC is checked only at its end, so a flipped
/// bit inside the compressed data decodes into altered lines that are
/// counted before the damage shows; and a log cut short was named only on
/// stderr. The JSON, the HTML page (which gets mailed) and the text name
/// each damaged log and how many of its lines were counted before the
/// damage was detected.
#[test]
fn a_damaged_gzip_log_is_named_in_the_json_html_and_text_reports() {
    use flate2::write::GzEncoder;
    use std::io::Read;
    let text = fixture_text().repeat(5);
    let lines = text.lines().count() as u64;
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    let whole = enc.finish().unwrap();
    // A flipped bit that still decodes to the end, into other lines.
    let flipped = (10..whole.len() - 8)
        .flat_map(|at| (0..8).map(move |bit| (at, 1u8 << bit)))
        .map(|(at, mask)| {
            let mut bytes = whole.clone();
            bytes[at] ^= mask;
            bytes
        })
        .find(|bytes| {
            let mut out = Vec::new();
            let result = flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out);
            result.is_err()
                && out.len() == text.len()
                && out != text.as_bytes()
                && out.iter().filter(|&&b| b == b'\n').count() as u64 == lines
        })
        .expect("a flip the CRC alone catches");
    let dir = tempfile::tempdir().unwrap();
    let flipped_path = dir.path().join("decisions.log.2.gz");
    std::fs::write(&flipped_path, flipped).unwrap();
    let cut_path = dir.path().join("decisions.log.3.gz");
    std::fs::write(&cut_path, &whole[..whole.len() / 2]).unwrap();
    let (flipped_arg, cut_arg) = (flipped_path.to_str().unwrap(), cut_path.to_str().unwrap());
    let args = [fixture_arg(), flipped_arg.to_owned(), cut_arg.to_owned()];

    let r = report_json(&[&args[0], &args[1], &args[2]], None);
    let damaged = r["damaged_logs"].as_array().expect("damaged_logs");
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert_eq!(damaged[0]["log"], flipped_arg);
    assert_eq!(damaged[0]["gzip_member"], 1);
    assert_eq!(
        damaged[0]["lines_counted"], lines,
        "every altered line counted"
    );
    assert_eq!(damaged[1]["log"], cut_arg);
    let cut_lines = damaged[1]["lines_counted"].as_u64().unwrap();
    assert!((1..lines).contains(&cut_lines), "{cut_lines}");
    // Only the checksum at the member's end caught the flip.
    let flip_error = damaged[0]["error"].as_str().unwrap();
    assert!(flip_error.contains("checksum"), "{flip_error}");
    assert!(
        damaged[1]["error"].as_str().unwrap().len() > 3,
        "{damaged:?}"
    );
    let whole_log = report_json(&[&args[0]], None);
    assert!(whole_log["damaged_logs"].as_array().unwrap().is_empty());

    // The HTML page says it at the top, before the figures.
    let mut c = sipadmit();
    c.args(["report", "--html", "-"]).args(&args);
    let out = run(c, None);
    assert!(out.status.success());
    let html = String::from_utf8(out.stdout).unwrap();
    let note = html
        .find("id=\"damaged-logs\"")
        .expect("a note on the damaged logs");
    assert!(note < html.find("<h2>Figures</h2>").unwrap());
    let note = &html[note..html[note..].find("</div>").unwrap() + note];
    assert!(note.contains("may be altered"), "{note}");
    assert!(
        note.contains(&format!(
            "{flipped_arg}: damaged gzip stream ({flip_error}): {lines} lines of its gzip member 1 counted before the damage was detected"
        )),
        "{note}"
    );
    assert!(note.contains(cut_arg), "{note}");

    // The text, under Logs, and the warning.
    let mut c = sipadmit();
    c.arg("report").args(&args);
    let out = run(c, None);
    assert!(out.status.success());
    let plain = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "Damaged:      {flipped_arg}: damaged gzip stream ({flip_error}): {lines} lines of its gzip member 1 were read before the damage was detected; they were counted and may be altered; the rest of the file was skipped\n"
    );
    assert!(plain.contains(&expected), "{plain}");
    assert!(
        plain.contains(&format!("Damaged:      {cut_arg}: damaged gzip stream (")),
        "{plain}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "sipadmit: report: warning: {flipped_arg}: damaged gzip stream ({flip_error}): {lines} lines of its gzip member 1 were read before the damage was detected; they were counted and may be altered"
        )),
        "{stderr}"
    );
}

/// Trial 25: a log with 10,000 one-off User-Agents (a scan), then the real
/// unknown client 50,000 times. A table that kept the first 10,000 keys
/// seen listed only the scan, and proposed catalog entries for it.
#[test]
fn a_flood_of_one_off_user_agents_does_not_hide_the_most_frequent_one() {
    let base = fixture_records()
        .into_iter()
        .find(|r| r.client == "unknown" && r.role == SessionRole::None && counted(r))
        .unwrap();
    let line = |ua: &str| {
        let mut r = base.clone();
        r.user_agent = Some(ua.to_owned());
        serde_json::to_string(&r).unwrap() + "\n"
    };
    let mut text: String = (0..10_000).map(|i| line(&format!("Junk{i}/1.0"))).collect();
    text.push_str(&line("RealTopPhone/3.1").repeat(50_000));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ua.log");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();

    let r = report_json(&[path], None);
    let top = &r["unknown_user_agents"][0];
    assert_eq!(
        (&top["user_agent"], &top["count"]),
        (&Value::from("RealTopPhone/3.1"), &Value::from(50_000))
    );
    assert_eq!(top["catalog_entry"], "realtopphone");
    assert_eq!(r["catalog_snippets"][0]["user_agent"], "RealTopPhone/3.1");
    assert_eq!(r["catalog_snippets"][0]["records"], 50_000);
    assert_eq!(r["unknown_user_agents"].as_array().unwrap().len(), 10_000);
    // One one-off User-Agent made room for it: its one record is not
    // itemised, and no User-Agent left out had more than 1.
    assert_eq!(r["not_itemised"]["unknown_user_agents"], 1);
    assert_eq!(r["not_itemised_per_key_max"]["unknown_user_agents"], 1);
    assert_eq!(r["records"], 60_000);

    let mut c = sipadmit();
    c.args(["report", path]);
    let out = run(c, None);
    let plain = String::from_utf8(out.stdout).unwrap();
    let section = &plain[plain
        .find("User-Agents the catalog did not recognise")
        .unwrap()..];
    let rows: Vec<&str> = section.lines().skip(2).take(4).collect();
    assert_eq!(
        rows[0], "  10000 listed, 59999 records, and 1 records not itemised (the table was full:",
        "{section}"
    );
    assert!(rows[3].starts_with("  RECORDS"), "{rows:?}");
    assert!(
        section
            .lines()
            .nth(6)
            .unwrap()
            .ends_with("  RealTopPhone/3.1"),
        "{section}"
    );
    assert!(plain.contains("id = \"realtopphone\""), "{plain}");
    let not_itemised = &plain[plain.find("\nNot itemised\n").expect("the section")..];
    assert!(
        not_itemised.contains("  unknown_user_agents        1                1\n"),
        "{not_itemised}"
    );
}

#[test]
fn stdin_when_no_log_is_named_or_dash() {
    let text = fixture_text();
    let from_file = report_json(&[&fixture_arg()], None);
    for args in [&[][..], &["-"][..]] {
        let mut r = report_json(args, Some(text.as_bytes()));
        assert_eq!(r["logs"], serde_json::json!(["stdin"]));
        r["logs"] = from_file["logs"].clone();
        assert_eq!(r, from_file, "{args:?}");
    }
}

#[test]
fn malformed_lines_are_counted_and_skipped() {
    let text = fixture_text();
    let lines: Vec<&str> = text.lines().collect();
    let mut mixed = String::new();
    let junk = [
        String::new(),
        "not json at all".to_owned(),
        lines[0][..lines[0].len() / 2].to_owned(),
        r#"{"ts":"2026-11-27T10:00:00Z","action":"allow"}"#.to_owned(),
        lines[1].replace("\"action\":\"allow\"", "\"action\":\"maybe\""),
        "\u{0}\u{1}binary\u{fffd}".to_owned(),
    ];
    for (i, line) in lines.iter().enumerate() {
        mixed.push_str(line);
        mixed.push('\n');
        if let Some(j) = junk.get(i) {
            mixed.push_str(j);
            mixed.push('\n');
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.log");
    std::fs::write(&path, mixed).unwrap();
    let r = report_json(&[path.to_str().unwrap()], None);
    assert_eq!(r["records_read"], lines.len() as u64);
    assert_eq!(r["malformed_lines"], junk.len() as u64);
}

/// `record`'s line with only the fields the interface contract names
/// (an older version's log, or one a log shipper trimmed), plus `extra`.
fn contract_line(record: &DecisionRecord, extra: &[(&str, Value)]) -> String {
    let mut object: serde_json::Map<String, Value> =
        serde_json::from_str(&serde_json::to_string(record).unwrap()).unwrap();
    object.retain(|key, _| CONTRACT_FIELDS.contains(&key.as_str()));
    assert_eq!(object.len(), 17);
    for (key, value) in extra {
        object.insert((*key).to_owned(), value.clone());
    }
    Value::Object(object).to_string()
}

/// Lines with exactly the contract's fields (no `client_rule`,
/// `would_reject`, `generation`, nor `leg`, `kind`, `sender_client`,
/// `spiral`, `unregister`) are records; fields a log shipper adds are
/// ignored; a line missing a contract field is still malformed. Without
/// `kind`, the rule tells protocol answers apart (counted apart as in the
/// full log); without `leg`, an agent offer is the registrar's leg and
/// anything else the client's, so an old log counts every policy record:
/// as the full log does with `--legs both`.
#[test]
fn contract_only_lines_are_records_counted_like_full_ones() {
    let records = fixture_records();
    let policy: Vec<&DecisionRecord> = records
        .iter()
        .filter(|r| r.kind() == DecisionKind::Policy)
        .collect();
    let mut by_action: HashMap<String, u64> = HashMap::new();
    for r in &policy {
        *by_action.entry(r.action.as_str().into()).or_default() += 1;
    }
    let full = report_json(&["--legs", "both", &fixture_arg()], None);
    let shipped = [
        ("@timestamp", serde_json::json!("2026-11-28T00:00:00Z")),
        ("host", serde_json::json!({"name": "edge-1"})),
    ];
    let dir = tempfile::tempdir().unwrap();
    for extra in [&[][..], &shipped[..]] {
        let mut text = String::new();
        for r in &records {
            text.push_str(&contract_line(r, extra));
            text.push('\n');
        }
        // Without `rule` (a contract field): malformed.
        let broken = contract_line(&records[0], extra).replace("\"rule\":", "\"rules\":");
        assert_ne!(broken, contract_line(&records[0], extra));
        text.push_str(&broken);
        text.push('\n');
        let path = dir.path().join("contract.log");
        std::fs::write(&path, text).unwrap();
        let r = report_json(&[path.to_str().unwrap()], None);
        assert_eq!(r["records"], policy.len() as u64, "{extra:?}");
        assert_eq!(r["records_read"], records.len() as u64, "{extra:?}");
        assert_eq!(r["malformed_lines"], 1, "{extra:?}");
        let actions = r["by_action"].as_object().unwrap();
        assert_eq!(actions.len(), 4, "{actions:?}");
        for (action, count) in actions {
            assert_eq!(
                count.as_u64(),
                Some(by_action.get(action).copied().unwrap_or(0)),
                "{action}"
            );
        }
        // No `would_reject` reads as false: no record counts as one, and
        // every action count is the full log's.
        assert_eq!(r["would_reject"]["total"], 0);
        assert_eq!(full["would_reject"]["total"], 3, "the full log has some");
        for key in ["by_action", "by_role_and_action", "by_mode", "by_rule"] {
            assert_eq!(r[key], full[key], "{key}");
        }
        let clients = |report: &Value| -> Vec<Value> {
            report["by_client"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| serde_json::json!([c["client"], c["count"], c["by_action"]]))
                .collect()
        };
        assert_eq!(clients(&r), clients(&full));
        for key in ["total", "by_rule"] {
            assert_eq!(
                r["protocol_answers"][key], full["protocol_answers"][key],
                "{key}"
            );
        }
        // Legs read from the roles: the two agent offers are the
        // registrar's, the rest (registrar-leg repeats included) clients'.
        assert_eq!(r["by_leg"]["from_registrar"]["records"], 2);
        assert_eq!(
            r["by_leg"]["from_client"]["records"],
            records.len() as u64 - 2
        );
        for key in ["reject", "flag"] {
            assert_eq!(
                r["rejected_and_flagged"][key], full["rejected_and_flagged"][key],
                "{key}"
            );
        }
        let buckets = |report: &Value| -> Vec<Value> {
            report["over_time"]["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    serde_json::json!([
                        b["start"],
                        b["allow"],
                        b["flag"],
                        b["reject"],
                        b["drop"],
                        b["protocol"]
                    ])
                })
                .collect()
        };
        assert_eq!(buckets(&r), buckets(&full));
    }
}

#[test]
fn a_missing_log_is_an_error_naming_it() {
    let missing = "/nonexistent/sipadmit/decisions.log";
    let mut c = sipadmit();
    c.args(["report", &fixture_arg(), missing]);
    let out = run(c, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing is printed before every log is open"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot open decision log {missing}")),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
}

/// `--html -` prints the page, as `-` means stdin for the logs.
#[test]
fn html_to_stdout_with_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sipadmit();
    c.current_dir(dir.path())
        .args(["report", "--html", "-", &fixture_arg()]);
    let out = run(c, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"<!DOCTYPE html>"));
    assert!(!dir.path().join("-").exists(), "no file named -");
}

#[test]
fn json_and_html_exclude_each_other() {
    let mut c = sipadmit();
    c.args([
        "report",
        "--json",
        "--html",
        "/tmp/never-written.html",
        &fixture_arg(),
    ]);
    let out = run(c, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// Each proposed entry parses as a catalog on its own and appended to the
/// shipped catalog, where it recognises the User-Agents it was made for.
#[test]
fn catalog_snippets_for_unknown_user_agents_parse_and_match() {
    let r = report_json(&[&fixture_arg()], None);
    let snippets = r["catalog_snippets"].as_array().unwrap();
    let products = ["acme-phone", "beta", "zorblax"];
    for p in products {
        assert!(
            snippets.iter().any(|s| s["client"] == p),
            "{p}: {snippets:?}"
        );
    }
    let mut all = String::from(SHIPPED_CATALOG);
    for s in snippets {
        let toml = s["toml"].as_str().unwrap();
        let alone = Catalog::from_toml_str(toml).unwrap_or_else(|e| panic!("{toml}\n{e}"));
        assert_eq!(alone.products().count(), 1);
        all.push('\n');
        all.push_str(toml);
    }
    let extended = Catalog::from_toml_str(&all).unwrap_or_else(|e| panic!("{all}\n{e}"));
    for ua in r["unknown_user_agents"].as_array().unwrap() {
        let entry = ua["catalog_entry"]
            .as_str()
            .expect("every product has an entry here");
        let value = ua["user_agent"].as_str().unwrap();
        assert_eq!(
            extended.classify(Some(value.as_bytes())).client.id,
            entry,
            "{value}"
        );
    }
    // Both Acme-Phone versions share one entry, which reports the version.
    let acme = extended.classify(Some(b"Acme-Phone/2.2"));
    assert_eq!(
        (acme.client.id.as_str(), acme.version.map(|v| v.to_string())),
        ("acme-phone", Some("2.2".into()))
    );
    let acme_snippet = snippets
        .iter()
        .find(|s| s["client"] == "acme-phone")
        .unwrap();
    assert_eq!(
        (
            acme_snippet["records"].as_u64(),
            acme_snippet["user_agents"].as_u64()
        ),
        (Some(3), Some(2))
    );
}

#[test]
fn plain_output_is_aligned_text_without_terminal_controls() {
    let mut c = sipadmit();
    c.args(["report", "tests/fixtures/decisions.jsonl"]);
    let out = run(c, None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "an escape sequence from the log reached the terminal"
    );
    assert!(text.contains("Esc\\u{1b}[31mRed/1"), "{text}");
    for line in text.lines() {
        assert_eq!(line, line.trim_end(), "trailing spaces: {line:?}");
    }
    for section in [
        "Policy decisions by role and action",
        "Protocol and capacity answers (not policy decisions)",
        "Clients",
        "Monitor mode: what enforcing would change",
        "Rejected and flagged",
        "User-Agents the catalog did not recognise (client \"unknown\")",
        "Catalog entries for the top unknown User-Agents",
        "Decisions over time (per hour, UTC)",
    ] {
        assert!(text.lines().any(|l| l == section), "{section}\n{text}");
    }
    // Columns line up: in the clients table every RECORDS value ends where
    // the header does.
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("CLIENT "))
        .unwrap();
    let end = lines[header].find("RECORDS").unwrap() + "RECORDS".len();
    let rows: Vec<&&str> = lines[header + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(rows.len() >= 8, "{rows:?}");
    for row in rows {
        assert!(
            row.as_bytes()[end - 1].is_ascii_digit() && row.as_bytes()[end] == b' ',
            "{row}"
        );
    }
}

/// The sample report in docs/report.md is output of this fixture: each line of the
/// sample appears in the real output, in order (the sample may leave lines
/// out, marked `[...]`).
#[test]
fn the_documented_sample_report_is_real_output() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.md"))
            .unwrap();
    let start = page
        .find("<!-- report-sample:start -->")
        .expect("sample start marker");
    let end = page
        .find("<!-- report-sample:end -->")
        .expect("sample end marker");
    let block = &page[start..end];
    let body = block
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .expect("a ```text block in the sample");
    let mut lines = body.lines();
    let command = lines.next().unwrap();
    assert_eq!(command, "$ sipadmit report tests/fixtures/decisions.jsonl");
    let mut c = sipadmit();
    c.args(["report", "tests/fixtures/decisions.jsonl"]);
    let out = run(c, None);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut real = text.lines();
    let mut shown = 0;
    for line in lines.filter(|l| l.trim() != "[...]") {
        assert!(
            real.any(|r| r == line),
            "docs/report.md sample line not in the output (in order): {line:?}\n{text}"
        );
        shown += 1;
    }
    assert!(shown > 40, "the sample shows most of the report");
}

// === HTML in headless Chromium ===

/// Chromium, or `None` (skip) outside CI; under `CI=true` a missing
/// Chromium fails the test (as `common::external::require_tool` does).
fn require_chromium() -> Option<PathBuf> {
    if let Some(p) = find_tool("chromium") {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !ci,
        "chromium is required by this test but is not installed (CI=true); \
         install it (Debian: chromium) or set SIPADMIT_CHROMIUM_BIN"
    );
    eprintln!("skipping: chromium not installed (Debian: chromium)");
    None
}

fn chromium(bin: &Path, profile: &Path, args: &[String]) -> Output {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    let out = run(c, None);
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The pixels of a PNG as RGB rows (8-bit RGB or RGBA, not interlaced:
/// what Chromium writes), decoded with the zlib `flate2` already reads.
fn png_pixels(png: &[u8]) -> (usize, usize, Vec<[u8; 3]>) {
    use std::io::Read;
    let (width, height) = png_size(png);
    let (width, height) = (width as usize, height as usize);
    let (depth, colour, interlace) = (png[24], png[25], png[28]);
    assert_eq!((depth, interlace), (8, 0), "8-bit, not interlaced");
    let bpp = match colour {
        2 => 3,
        6 => 4,
        other => panic!("PNG colour type {other}"),
    };
    let mut at = 8;
    let mut idat = Vec::new();
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        if kind == b"IDAT" {
            idat.extend_from_slice(&png[at + 8..at + 8 + len]);
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width * bpp;
    let mut prev = vec![0u8; stride];
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        let line = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
        let (filter, data) = (line[0], &line[1..]);
        let mut row = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= bpp { row[i - bpp] } else { 0 };
            let b = prev[i];
            let c = if i >= bpp { prev[i - bpp] } else { 0 };
            let predictor = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            row[i] = data[i].wrapping_add(predictor);
        }
        for px in row.chunks(bpp) {
            pixels.push([px[0], px[1], px[2]]);
        }
        prev = row;
    }
    (width, height, pixels)
}

/// `#rrggbb` as bytes.
fn rgb(hex: &str) -> [u8; 3] {
    let byte = |i: usize| u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap();
    [byte(0), byte(1), byte(2)]
}

/// Hue (degrees) and saturation (0..1) of an `#rrggbb` colour.
fn hue_saturation(hex: &str) -> (f64, f64) {
    let [r, g, b] = rgb(hex).map(|c| f64::from(c) / 255.0);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let delta = max - min;
    let saturation = if max == 0.0 { 0.0 } else { delta / max };
    let hue = if delta == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    (hue, saturation)
}

/// Every `#rrggbb` after `attribute="` in `text`.
fn colours(text: &str, attribute: &str) -> std::collections::BTreeSet<String> {
    let needle = format!("{attribute}=\"#");
    text.match_indices(&needle)
        .map(|(at, _)| text[at + needle.len() - 1..at + needle.len() + 6].to_lowercase())
        .collect()
}

/// The time chart labels its axes: the count axis in several steps, the
/// time axis every few buckets (clock-aligned, at most 12 labels), and
/// the page has the per-bucket table the plain report has. Two hours of
/// records by the minute: 120 buckets, labelled every 10 minutes.
#[test]
fn html_time_chart_labels_both_axes_and_has_the_time_table() {
    let base = fixture_records();
    let start: jiff::Timestamp = "2026-11-27T09:00:00Z".parse().unwrap();
    let mut text = String::new();
    for minute in 0..120i64 {
        for k in 0..=(minute % 7) {
            let mut r = base[(minute + k) as usize % base.len()].clone();
            r.ts = start + jiff::SignedDuration::from_secs(minute * 60 + k);
            text.push_str(&serde_json::to_string(&r).unwrap());
            text.push('\n');
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("two-hours.log");
    std::fs::write(&log, text).unwrap();
    let html = dir.path().join("two-hours.html");
    let mut c = sipadmit();
    c.args([
        "report",
        "--html",
        html.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert!(run(c, None).status.success());
    // Created like the decision log: it names users and addresses.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&html).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077 & !0o040,
        0,
        "{mode:o}: only the group may read"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    let json = report_json(&[log.to_str().unwrap()], None);
    assert_eq!(json["over_time"]["bucket"], "minute");
    let buckets = json["over_time"]["buckets"].as_array().unwrap();
    assert!(buckets.len() >= 119, "{}", buckets.len());

    let figure = &page[page.find("<figure id=\"decisions-over-time\"").unwrap()..];
    let figure = &figure[..figure.find("</figure>").unwrap()];
    let labels = |class: &str| -> Vec<String> {
        let needle = format!("class=\"{class}\"");
        figure
            .match_indices(&needle)
            .map(|(at, _)| {
                let rest = &figure[at..];
                let text = &rest[rest.find('>').unwrap() + 1..];
                text[..text.find('<').unwrap()].to_owned()
            })
            .collect()
    };
    let x = labels("x-tick");
    assert_eq!(
        x,
        [
            "09:00", "09:10", "09:20", "09:30", "09:40", "09:50", "10:00", "10:10", "10:20",
            "10:30", "10:40", "10:50"
        ]
    );
    assert_eq!(labels("x-date"), ["2026-11-27"], "the date once");
    let y: Vec<u64> = labels("y-tick")
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let peak = buckets
        .iter()
        .map(|b| {
            ["allow", "flag", "reject", "drop"]
                .iter()
                .map(|a| b[*a].as_u64().unwrap())
                .sum::<u64>()
        })
        .max()
        .unwrap();
    assert!(y.len() >= 3, "several count labels: {y:?}");
    assert_eq!(y[0], 0);
    assert!(*y.last().unwrap() >= peak, "{y:?} peak {peak}");
    assert!(
        y.windows(2).all(|w| w[1] - w[0] == y[1] - y[0]),
        "even steps: {y:?}"
    );

    // The per-bucket table: one row per bucket, as in the plain report.
    let table = &page[page
        .find("<table id=\"over-time\"")
        .expect("the time table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(
        table.matches("<tr>").count(),
        buckets.len() + 1,
        "header + rows"
    );
    let first = &buckets[0];
    assert!(table.contains(&format!("<td>{}</td>", first["start"].as_str().unwrap())));
}

#[test]
fn html_report_renders_in_headless_chromium_with_its_figures() {
    let Some(bin) = require_chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let mut c = sipadmit();
    c.args(["report", "--html", html.to_str().unwrap(), &fixture_arg()]);
    let out = run(c, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let page = std::fs::read_to_string(&html).unwrap();

    // Self-contained: nothing to fetch.
    for needle in ["src=\"", "href=", "@import", "url("] {
        assert!(!page.contains(needle), "{needle} in the page");
    }
    for (at, _) in page.match_indices("://") {
        assert!(
            page[..at].ends_with("http") && page[at..].starts_with("://www.w3.org/2000/svg\""),
            "an address other than the SVG namespace: {}",
            &page[at.saturating_sub(10)..]
        );
    }

    let json = report_json(&[&fixture_arg()], None);
    let profile = dir.path().join("profile");
    let url = format!("file://{}", html.display());
    let dom =
        String::from_utf8(chromium(&bin, &profile, &["--dump-dom".into(), url.clone()]).stdout)
            .unwrap();

    // The three figures, each with its marks.
    let figure = |id: &str| -> &str {
        let start = dom
            .find(&format!("<figure id=\"{id}\""))
            .unwrap_or_else(|| panic!("figure {id} not in the DOM:\n{dom}"));
        let end = start + dom[start..].find("</figure>").unwrap();
        &dom[start..end]
    };
    let segments: usize = json["over_time"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            ["allow", "flag", "reject", "drop"]
                .iter()
                .filter(|a| b[**a].as_u64().unwrap() > 0)
                .count()
        })
        .sum();
    let over_time = figure("decisions-over-time");
    assert!(over_time.contains("<svg"));
    assert_eq!(over_time.matches("class=\"segment\"").count(), segments);
    let clients = json["by_client"].as_array().unwrap().len();
    let slices = clients.min(8) + usize::from(clients > 8);
    assert_eq!(
        figure("share-by-client").matches("class=\"slice\"").count(),
        slices
    );
    let uas = json["unknown_user_agents"].as_array().unwrap().len();
    assert_eq!(
        figure("top-unknown-user-agents")
            .matches("class=\"ua-bar\"")
            .count(),
        uas.min(10)
    );

    // Protocol answers: a table of their own, by rule and status.
    let protocol = &dom[dom
        .find("<table id=\"protocol-answers\"")
        .expect("protocol table")..];
    let protocol = &protocol[..protocol.find("</table>").unwrap()];
    for rule in json["protocol_answers"]["by_rule"].as_array().unwrap() {
        assert!(
            protocol.contains(rule["rule"].as_str().unwrap()),
            "{protocol}"
        );
    }
    let by_rule = &dom[dom.find("<table id=\"by-client\"").unwrap()..];
    assert!(!by_rule[..by_rule.find("</table>").unwrap()].contains("proxy."));
    // The time table, one row per bucket.
    let table = &dom[dom.find("<table id=\"over-time\"").expect("time table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(
        table.matches("<tr>").count(),
        json["over_time"]["buckets"].as_array().unwrap().len() + 1
    );

    // One palette for actions, another for clients: no colour, nor a hue
    // within 25 degrees of an action's (greys aside), in both.
    let actions = colours(over_time, "fill");
    assert_eq!(actions.len(), 4, "{actions:?}");
    let mut clients = colours(figure("share-by-client"), "stroke");
    clients.extend(colours(figure("top-unknown-user-agents"), "fill"));
    assert!(clients.len() >= 5, "{clients:?}");
    for c in &clients {
        assert!(!actions.contains(c), "{c} is an action colour too");
        let (hue, saturation) = hue_saturation(c);
        if saturation < 0.25 {
            continue;
        }
        for a in &actions {
            let (action_hue, _) = hue_saturation(a);
            let distance = (hue - action_hue)
                .abs()
                .min(360.0 - (hue - action_hue).abs());
            assert!(
                distance >= 25.0,
                "client {c} ({hue:.0}) near action {a} ({action_hue:.0})"
            );
        }
    }
    // No text below 12 px: every font size the page sets (em: of the
    // body's 15 px, the only base; no size is relative to a smaller one).
    let body_px = 15.0;
    assert!(
        page.contains("body{font:15px/"),
        "the base the em sizes use"
    );
    let mut sizes = 0;
    for (at, _) in page.match_indices("font") {
        let rest = &page[at..];
        let Some(value) = rest
            .strip_prefix("font:")
            .or_else(|| rest.strip_prefix("font-size:"))
        else {
            continue;
        };
        let value = &value[..value.find([';', '}', '"']).unwrap_or(value.len())];
        let number: String = value
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let size: f64 = number
            .parse()
            .unwrap_or_else(|_| panic!("font size in {value}"));
        let unit = &value[number.len()..];
        let px = if unit.starts_with("px") {
            size
        } else if unit.starts_with("em") {
            size * body_px
        } else {
            panic!("font size unit in {value}")
        };
        assert!(px >= 12.0, "{px} px: {value}");
        sizes += 1;
    }
    assert!(sizes >= 4, "{sizes} font sizes checked");

    // Values from the log are text, never markup.
    assert!(
        !dom.contains("<script"),
        "markup from a User-Agent became an element"
    );
    assert!(
        !dom.contains("<img"),
        "markup from a User-Agent became an element"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt; Evil/1 &amp; &lt;img src=x&gt;")
    );

    // A screenshot: the page draws far more than a blank page does.
    let shot = dir.path().join("report.png");
    chromium(
        &bin,
        &profile,
        &[
            "--window-size=1200,2400".into(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(png_size(&png), (1200, 2400));
    // The time chart uses the width: its allow bars (the action green)
    // span most of the window, not a column of it.
    let (width, _, pixels) = png_pixels(&png);
    let green = rgb("#4e9a06");
    let xs: Vec<usize> = pixels
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == green)
        .map(|(i, _)| i % width)
        .collect();
    let (left, right) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
    assert!(
        right - left > width * 4 / 5,
        "the time chart spans {left}..{right} of {width} px"
    );
    let blank_html = dir.path().join("blank.html");
    std::fs::write(&blank_html, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_shot = dir.path().join("blank.png");
    chromium(
        &bin,
        &profile,
        &[
            "--window-size=1200,2400".into(),
            format!("--screenshot={}", blank_shot.display()),
            format!("file://{}", blank_html.display()),
        ],
    );
    let blank = std::fs::read(&blank_shot).unwrap();
    assert!(
        png.len() > 5 * blank.len(),
        "report screenshot {} bytes, blank page {} bytes",
        png.len(),
        blank.len()
    );
}

/// Malformed lines are counted and their place told: which log, how many,
/// the first one's line, in the JSON, the text (and its warning) and the
/// HTML; a log without any is not listed.
#[test]
fn malformed_lines_are_told_with_their_log_and_first_line() {
    use flate2::write::GzEncoder;
    let text = fixture_text();
    let lines = text.lines().count();
    let dir = tempfile::tempdir().unwrap();
    // A plain log cut by an editor at lines 3 and 5; a rotated one whose
    // third line lost its end.
    let mut damaged: Vec<&str> = text.lines().collect();
    damaged[2] = "{\"ts\":\"2026-11-27T00:57:40.653Z\",\"transp";
    damaged[4] = "garbage";
    let plain_path = dir.path().join("decisions.log");
    std::fs::write(&plain_path, damaged.join("\n") + "\n").unwrap();
    let mut rotated: Vec<&str> = text.lines().collect();
    rotated[2] = "not json";
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all((rotated.join("\n") + "\n").as_bytes())
        .unwrap();
    let gz_path = dir.path().join("decisions.log.2.gz");
    std::fs::write(&gz_path, enc.finish().unwrap()).unwrap();
    let (plain_arg, gz_arg) = (plain_path.to_str().unwrap(), gz_path.to_str().unwrap());
    let args = [fixture_arg(), plain_arg.to_owned(), gz_arg.to_owned()];

    let r = report_json(&[&args[0], &args[1], &args[2]], None);
    assert_eq!(r["malformed_lines"], 3);
    assert_eq!(
        r["malformed_logs"],
        serde_json::json!([
            {"log": plain_arg, "lines": 2, "first_line": 3},
            {"log": gz_arg, "lines": 1, "first_line": 3},
        ])
    );
    assert_eq!(r["records_read"].as_u64().unwrap(), 3 * lines as u64 - 3);
    // A log named twice is read, and told, once (with a warning).
    let twice = report_json(&[plain_arg, plain_arg], None);
    let entry = serde_json::json!({"log": plain_arg, "lines": 2, "first_line": 3});
    assert_eq!(twice["malformed_logs"], serde_json::json!([entry]));
    assert_eq!(twice["records_read"].as_u64().unwrap(), lines as u64 - 2);

    let mut c = sipadmit();
    c.arg("report").args(&args);
    let out = run(c, None);
    assert!(out.status.success());
    let plain = String::from_utf8(out.stdout).unwrap();
    assert!(
        plain.contains(&format!(
            "Malformed:    {plain_arg}: 2 skipped, the first at line 3\nMalformed:    {gz_arg}: 1 skipped, the first at line 3\n"
        )),
        "{plain}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "sipadmit: report: warning: {plain_arg}: 2 malformed line(s) skipped (not decision records), the first at line 3\n"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("{}:", args[0])), "{stderr}");

    let mut c = sipadmit();
    c.args(["report", "--html", "-"]).args(&args);
    let out = run(c, None);
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(
        html.contains(&format!(
            "id=\"malformed-lines\">Lines that are not decision records, skipped:<br>{plain_arg}: 2, the first at line 3<br>{gz_arg}: 1, the first at line 3</p>"
        )),
        "{html}"
    );
}
