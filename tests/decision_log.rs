//! The decision log of the real binary under the conditions that used to
//! stall or kill it: a stdout pipe nobody reads, logrotate's rename and
//! SIGHUP, SIGTERM while the writer is stuck, a FIFO with no reader.
//!
//! Each test runs `sipadmit run` on an ephemeral loopback port in front of
//! an in-test UDP registrar stub that answers 200 to every request, and
//! reads the binary's console log (stderr) line by line. Every wait is
//! bounded; no test asserts how long anything took.

mod common {
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
    const REGISTERS: usize = 3000;
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
