//! The decision log of the real binary under the conditions that used to
//! stall or kill it: a stdout pipe nobody reads, logrotate's rename and
//! SIGHUP, SIGTERM while the writer is stuck, a FIFO with no reader.
//!
//! Each test runs `sipadmit run` on an ephemeral loopback port in front of
//! an in-test UDP registrar stub that answers 200 to every request, and
//! reads the binary's console log (stderr) line by line. Every wait is
//! bounded; no test asserts how long anything took.

mod common {
    pub mod admin_client;
    pub mod binary;
    pub mod udp_registrar;
}

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use common::binary::{field, Sipadmit, BOUND};
use common::udp_registrar::Registrar;

const CONFIG: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\napplication_user_agents = [\"Response_Group_Service\"]\n";
const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

// === the binary ===

/// `sipadmit run` on UDP port 0 of 127.0.0.1 with `decision_log` as
/// `--decision-log` and stdout as given; its UDP listener's address.
fn start(
    dir: &Path,
    registrar: &Registrar,
    decision_log: &str,
    stdout: Stdio,
) -> (Sipadmit, SocketAddr) {
    let config = dir.join("min.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut sipadmit = Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(["--upstream", &format!("udp:{}", registrar.addr)])
            .args(["--decision-log", decision_log])
            .env("RUST_LOG", "info")
            .stdout(stdout),
    );
    let listening = sipadmit.wait_for("listening");
    let udp = field(&listening, "addr").parse().unwrap();
    (sipadmit, udp)
}

fn count(line: &str, name: &str) -> u64 {
    field(line, name)
        .parse()
        .unwrap_or_else(|e| panic!("{name} in {line:?}: {e}"))
}

// === the client ===

fn register(n: usize, client: SocketAddr) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {client};branch=z9hG4bK-reg-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:user{n}@contoso.com>;tag=f{n}\r\nTo: <sip:user{n}@contoso.com>\r\nCall-ID: reg-{n}@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{n}@{client}>\r\nExpires: 60\r\nUser-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Send REGISTERs `range` through the proxy in bursts of `burst`, each
/// burst answered before the next is sent; panics unless every one gets
/// its `200 OK`.
fn register_all(proxy: SocketAddr, range: std::ops::Range<usize>, burst: usize) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let me = client.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    let mut start = range.start;
    while start < range.end {
        let end = (start + burst).min(range.end);
        let mut waiting: std::collections::HashSet<usize> = (start..end).collect();
        for n in start..end {
            client.send_to(register(n, me).as_bytes(), proxy).unwrap();
        }
        while !waiting.is_empty() {
            let (len, _) = client.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "{} of REGISTERs {start}..{end} unanswered ({e})",
                    waiting.len()
                )
            });
            let response = String::from_utf8_lossy(&buf[..len]);
            assert!(response.starts_with("SIP/2.0 200 "), "{response}");
            let n = response
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Call-ID: reg-"))
                .and_then(|v| v.strip_suffix("@test"))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no Call-ID in {response}"));
            waiting.remove(&n);
        }
        start = end;
    }
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(made.success());
}

/// Parse and count the decision records in `text`, checking each is whole.
fn records(text: &str) -> usize {
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert_eq!(v["method"], "REGISTER");
        })
        .count()
}

// === the scenarios ===

/// issue 6, defect 2: `--decision-log -` into a pipe nobody reads used to
/// answer 128 of 3,000 REGISTERs. Now every one is answered, the drops are
/// counted and reported, and SIGTERM stops the process although the
/// writer is stuck; what the pipe holds is exactly what was reported written.
#[test]
fn an_unread_stdout_pipe_stalls_nothing_but_the_log() {
    // More than the queue (QUEUE_CAPACITY, 4,096) and the writer's batch
    // (as many) hold, with the pipe unread.
    const REGISTERS: usize = 9000;
    let dir = tempfile::tempdir().unwrap();
    let registrar = Registrar::start();
    let (mut sipadmit, udp) = start(dir.path(), &registrar, "-", Stdio::piped());
    let mut stdout = sipadmit.child.stdout.take().unwrap();

    register_all(udp, 0..REGISTERS, 50);
    assert_eq!(registrar.received.load(Ordering::Relaxed), REGISTERS);
    let warning = sipadmit.wait_for("decision log queue full");
    assert!(count(&warning, "dropped") > 0, "{warning}");

    let stderr = sipadmit.terminate();
    assert!(!stderr.contains('\u{1b}'), "no ANSI codes off a terminal");
    let stopped = stderr.lines().find(|l| l.contains(" stopped")).unwrap();
    let unfinished = stderr
        .lines()
        .find(|l| l.contains("decision log writer did not finish"))
        .unwrap_or_else(|| panic!("no report of unwritten records:\n{stderr}"));
    let (written, dropped, lost, unwritten) = (
        count(unfinished, "written"),
        count(unfinished, "dropped"),
        count(unfinished, "lost"),
        count(unfinished, "unwritten"),
    );
    assert_eq!(count(stopped, "decision_records_dropped"), dropped);
    assert!(dropped > 0 && unwritten > 0, "{unfinished}");
    assert_eq!(lost, 0, "{unfinished}");
    assert_eq!(
        written + dropped + unwritten,
        REGISTERS as u64,
        "every record is accounted for: {unfinished}"
    );
    // The pipe holds exactly the records reported written, each whole.
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert_eq!(records(&text) as u64, written);
}

/// logrotate: rename the file, SIGHUP; records before go to the moved
/// file, records after to a new file at the configured path, none lost.
#[test]
fn sighup_after_rename_reopens_the_log_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let rotated = dir.path().join("decisions.jsonl.1");
    let registrar = Registrar::start();
    let (mut sipadmit, udp) = start(dir.path(), &registrar, log.to_str().unwrap(), Stdio::null());
    register_all(udp, 0..40, 20);
    std::fs::rename(&log, &rotated).unwrap();
    sipadmit.signal("HUP");
    sipadmit.wait_for("SIGHUP: decision log reopened");
    register_all(udp, 40..65, 20);
    let stderr = sipadmit.terminate();
    let closed = stderr
        .lines()
        .find(|l| l.contains("decision log closed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(count(closed, "written"), 65, "{closed}");
    assert_eq!(count(closed, "dropped"), 0, "{closed}");
    assert_eq!(records(&std::fs::read_to_string(&rotated).unwrap()), 40);
    assert_eq!(records(&std::fs::read_to_string(&log).unwrap()), 25);
}

/// The decision log reaches the file size limit (`ulimit -f`, systemd's
/// `LimitFSIZE=`): SIGXFSZ used to end the process on that write, with every
/// transport. Now the write fails, every REGISTER is still answered, the
/// records past the limit are counted lost, and the file ends with a whole
/// record.
#[test]
fn the_file_size_limit_loses_records_not_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let config = dir.path().join("min.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let registrar = Registrar::start();
    // `ulimit -f` counts blocks of 512 bytes in sh: 16 KiB, some 30 records.
    let mut sipadmit = Sipadmit::spawn(
        Command::new("sh")
            .args(["-c", "ulimit -f 32 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(["--upstream", &format!("udp:{}", registrar.addr)])
            .args(["--decision-log", log.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    );
    let listening = sipadmit.wait_for("listening");
    let udp = field(&listening, "addr").parse().unwrap();
    register_all(udp, 0..60, 10);
    register_all(udp, 60..100, 10);
    let stderr = sipadmit.terminate();
    let closed = stderr
        .lines()
        .find(|l| l.contains("decision log closed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let written = count(closed, "written");
    assert!(count(closed, "lost") > 0, "{closed}");
    assert_eq!(written + count(closed, "lost"), 100, "{closed}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() <= 16 * 1024, "{} bytes", text.len());
    assert!(text.ends_with('\n'), "a torn record at the end");
    assert_eq!(records(&text) as u64, written);
}

/// A FIFO whose reader opened it and stopped reading: the writer blocks in
/// a write; SIGTERM still stops the process, and says what was unwritten.
#[test]
fn sigterm_stops_the_process_while_the_writer_is_stuck() {
    const REGISTERS: usize = 600; // well over the 64 KiB a pipe holds
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("decisions.fifo");
    mkfifo(&fifo);
    // The reader: opens the FIFO (once sipadmit opens it too), reads nothing
    // until told to, then reads to the end.
    let (read_tx, read_rx) = mpsc::channel::<()>();
    let (text_tx, text_rx) = mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let mut reader = std::fs::File::open(reader_path).unwrap();
        let _ = read_rx.recv();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        text_tx.send(text).unwrap();
    });
    let registrar = Registrar::start();
    let (mut sipadmit, udp) = start(
        dir.path(),
        &registrar,
        fifo.to_str().unwrap(),
        Stdio::null(),
    );
    register_all(udp, 0..REGISTERS, 50);
    let stderr = sipadmit.terminate();
    let unfinished = stderr
        .lines()
        .find(|l| l.contains("decision log writer did not finish"))
        .unwrap_or_else(|| panic!("no report of unwritten records:\n{stderr}"));
    let (written, dropped, unwritten) = (
        count(unfinished, "written"),
        count(unfinished, "dropped"),
        count(unfinished, "unwritten"),
    );
    assert!(unwritten > 0, "{unfinished}");
    assert_eq!(written + dropped + unwritten, REGISTERS as u64);
    read_tx.send(()).unwrap();
    let text = text_rx.recv_timeout(BOUND).unwrap();
    assert_eq!(records(&text) as u64, written);
}

/// A FIFO nobody opens for reading: opening it would block, so `run` opens
/// it in the writer thread; start-up, answers and SIGTERM are unaffected.
#[test]
fn a_fifo_without_reader_does_not_hang_run() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("decisions.fifo");
    mkfifo(&fifo);
    let registrar = Registrar::start();
    let (mut sipadmit, udp) = start(
        dir.path(),
        &registrar,
        fifo.to_str().unwrap(),
        Stdio::null(),
    );
    register_all(udp, 0..20, 20);
    let stderr = sipadmit.terminate();
    let unfinished = stderr
        .lines()
        .find(|l| l.contains("decision log writer did not finish"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(count(unfinished, "written"), 0, "{unfinished}");
    assert_eq!(count(unfinished, "unwritten"), 20, "{unfinished}");
}

/// Permission problems still fail start-up, naming the path.
#[test]
fn an_unwritable_decision_log_fails_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("no-such-dir").join("decisions.jsonl");
    let registrar = Registrar::start();
    let config = dir.path().join("min.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", "udp:127.0.0.1:0"])
        .args(["--upstream", &format!("udp:{}", registrar.addr)])
        .args(["--decision-log", log.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open decision log") && err.contains("no-such-dir/decisions.jsonl"),
        "{err}"
    );
}

// === both legs of a call, a protocol answer: the log, the metrics, the report ===

/// A baresip call to a Lync user behind sipadmit passes it twice: from the
/// caller to the registrar, and from the registrar (which relays it, its
/// own Via on top, to the callee's contact) toward the callee. Both legs
/// are recorded, the second marked `from_registrar` and `spiral`; a
/// malformed request from baresip is answered 400. What an admin reads:
/// `sipadmit_decisions_total` and `sipadmit report` count the call once
/// for baresip, no policy reject; the 400 is a protocol answer, in
/// `sipadmit_protocol_answers_total` and the report's section of its own.
#[test]
fn both_legs_of_a_call_and_a_protocol_error_are_counted_as_an_admin_reads_them() {
    use common::admin_client::{http, sample};
    const BARESIP: &str = "baresip v1.0.0 (x86_64/linux)";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let config = dir.path().join("min.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // The registrar: a socket this test speaks for.
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    let mut sipadmit = Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args([
                "--upstream",
                &format!("udp:{}", registrar.local_addr().unwrap()),
            ])
            .args(["--decision-log", log.to_str().unwrap()])
            .args(["--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null()),
    );
    let proxy: SocketAddr = field(&sipadmit.wait_for("transport=udp"), "addr")
        .parse()
        .unwrap();
    let admin: SocketAddr = field(&sipadmit.wait_for("admin listening"), "addr")
        .parse()
        .unwrap();
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    callee.set_read_timeout(Some(BOUND)).unwrap();
    caller.set_read_timeout(Some(BOUND)).unwrap();
    let me = caller.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:erin@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-call-1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:oscar@contoso.com>;tag=c1\r\nTo: <sip:erin@contoso.com>\r\nCall-ID: baresip-call@test\r\nCSeq: 1 INVITE\r\nContact: <sip:oscar@{me}>\r\nUser-Agent: {BARESIP}\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(invite.as_bytes(), proxy).unwrap();
    let mut buf = vec![0u8; 65536];
    // sipadmit's own OPTIONS probes of the registrar are skipped.
    let (relayed, from) = loop {
        let (n, from) = registrar.recv_from(&mut buf).unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !message.contains("\r\nCall-ID: sipadmit-probe-") {
            break (message, from);
        }
    };
    assert!(
        relayed.starts_with("INVITE sip:erin@contoso.com"),
        "{relayed}"
    );
    // The registrar's leg: to the callee's contact (a literal address),
    // the registrar's Via on top of sipadmit's.
    let (_, rest) = relayed.split_once("\r\n").unwrap();
    let callee_addr = callee.local_addr().unwrap();
    let registrar_leg = format!(
        "INVITE sip:erin@{callee_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-registrar-1\r\n{rest}",
        registrar.local_addr().unwrap()
    );
    registrar.send_to(registrar_leg.as_bytes(), from).unwrap();
    let (n, _) = callee.recv_from(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("INVITE sip:erin@"));
    // A malformed Request-URI from baresip: 400.
    let malformed = invite
        .replace(
            "INVITE sip:erin@contoso.com SIP/2.0",
            "INVITE erin-at-contoso SIP/2.0",
        )
        .replace("z9hG4bK-call-1", "z9hG4bK-bad-1")
        .replace("baresip-call@test", "baresip-bad@test");
    caller.send_to(malformed.as_bytes(), proxy).unwrap();
    let (n, _) = caller.recv_from(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // The metrics, as scraped.
    let (status, metrics) = http(admin, "GET", "/metrics", BOUND);
    assert_eq!(status, 200);
    let value = |series: &str| sample(&metrics, series).unwrap_or(0.0);
    assert_eq!(
        value(r#"sipadmit_decisions_total{action="allow",role="none",support="third-party"}"#),
        1.0,
        "the call, once\n{metrics}"
    );
    assert_eq!(
        value(
            r#"sipadmit_decisions_repeated_total{action="allow",role="none",support="third-party"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value(r#"sipadmit_protocol_answers_total{rule="proxy.malformed",status="400"}"#),
        1.0,
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sipadmit_decisions_total{action=\"reject\"")),
        "no policy reject\n{metrics}"
    );
    sipadmit.stop();

    // The log: three records, two legs of one call and the 400.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let legs: Vec<(&str, &str, bool)> = lines
        .iter()
        .map(|r| {
            (
                r["leg"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
                r["spiral"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        legs,
        [
            ("from_client", "policy", false),
            ("from_registrar", "policy", true),
            ("from_client", "protocol", false)
        ]
    );
    assert!(lines
        .iter()
        .all(|r| r["client"] == "baresip" && r["sender_client"] == "baresip"));

    // The report of that log.
    let out = Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["report", "--json", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["records"].as_u64(), report["records_read"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(
        report["by_client"],
        serde_json::json!([{
            "client": "baresip", "count": 1, "category": "third-party", "support": "third-party",
            "by_action": {"allow": 1, "flag": 0, "reject": 0, "drop": 0},
            "by_leg": {"from_client": 1, "from_registrar": 0},
            "versions": [{"version": "1.0.0", "count": 1}], "without_version": 0, "reclassified": 0
        }])
    );
    assert_eq!(report["by_action"]["reject"], 0);
    assert_eq!(
        report["protocol_answers"]["by_rule"],
        serde_json::json!([{"rule": "proxy.malformed", "status": 400, "count": 1}])
    );
}
