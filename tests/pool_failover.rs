//! A sipadmit pool failing over, with the engines admins run:
//!
//! - Kamailio's dispatcher (tests/e2e/kamailio-dispatcher.cfg: stateful,
//!   probing every second, failing over on sipadmit's own 503 and on
//!   timeouts without any answer) in front of
//!   two `sipadmit run` processes in front of the Kamailio registrar, SIPp
//!   registering 200 users a second for 30 s through the dispatcher, while
//!   one instance is drained (SIGTERM) and started again on its port, then
//!   the other is killed (SIGKILL) and started again. The drain costs no
//!   registration; what the kill costs is measured, bounded and printed
//!   (`RESULT` lines: `cargo test --test pool_failover -- --nocapture`).
//! - A TCP client of a killed instance: the survivor answers the
//!   registrar's request for it `430 Flow Failed` until the client has
//!   registered again through the survivor.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::binary::{field, Sipadmit, BOUND};
use common::external::{
    e2e_dir, free_udp_tcp_port, require_kamailio_module, require_tool, sip_options_ping, Kamailio,
    KamailioOptions, Sipp, UA_LYNC_2013, UA_RESPONSE_GROUP,
};
use common::sip_stream::{header, status, take_message, Agent};

const SECRET: &str = "pool-failover-secret-0123456789abcdef";

const RESPONSE_GROUP: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n\
                              agents = [\"sip:agent-*@contoso.com\"]\n";

/// Registrations a second SIPp starts.
const RATE: u64 = 200;
/// How long SIPp keeps that rate.
const LOAD_SECS: u64 = 30;
/// The dispatcher's `fr_timer`: how long it waits for a final answer
/// before it tries the next destination (tests/e2e/kamailio-dispatcher.cfg).
const FR_TIMER_SECS: u64 = 1;
/// The dispatcher's `ds_ping_interval`.
const DS_PING_INTERVAL_SECS: u64 = 1;
/// The most registrations a SIGKILL may cost. Only a request sent to the
/// dead instance can fail, and only if the dispatcher cannot fail it over.
/// The dispatcher stops sending to it once it is marked inactive: at the
/// latest when the first request sent to it after the kill has waited
/// `fr_timer` (the failure route marks it), or when a probe, sent at most
/// `ds_ping_interval` after the kill, has waited `fr_timer`. Every
/// registration started in the window `fr_timer + ds_ping_interval` after
/// the kill, at 200/s (half of them to the dead instance, all counted),
/// bounds what can be lost: 200 * (1 + 1) = 400.
const KILL_BOUND: u64 = RATE * (FR_TIMER_SECS + DS_PING_INTERVAL_SECS);

/// When (after SIPp starts) the first instance is drained.
const DRAIN_AT: Duration = Duration::from_secs(3);
/// When (after SIPp starts) the second instance is killed.
const KILL_AT: Duration = Duration::from_secs(15);
/// How long the killed instance stays down: the shipped systemd unit's
/// `RestartSec` (config/sipadmit.service).
const KILLED_FOR: Duration = Duration::from_secs(2);

/// One sipadmit of the pool: `sipadmit run` on its own UDP and TCP port of
/// 127.0.0.1, kept across restarts.
struct Instance {
    name: &'static str,
    port: u16,
    dir: PathBuf,
    registrar: SocketAddr,
    starts: u32,
    process: Option<Sipadmit>,
}

impl Instance {
    /// An instance named `name` with `config` (a sipadmit config file),
    /// relaying to `registrar`, on a free port; not started.
    fn new(name: &'static str, dir: &Path, registrar: SocketAddr, config: &str) -> Self {
        std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
        Self {
            name,
            port: free_udp_tcp_port(),
            dir: dir.to_owned(),
            registrar,
            starts: 0,
            process: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The dispatcher list's URI of this instance.
    fn uri(&self) -> String {
        format!("sip:{}", self.addr())
    }

    /// The decision log of start `n` (1 is the first).
    fn decision_log(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}-{n}.decisions", self.name))
    }

    /// Start the process and wait (bounded) until it answers an OPTIONS
    /// to itself 200: listening, and its registrar answering its probes.
    fn start(&mut self) {
        assert!(self.process.is_none(), "{} runs already", self.name);
        self.starts += 1;
        let config = self.dir.join(format!("{}.toml", self.name));
        let mut process = Sipadmit::spawn(
            Command::new(env!("CARGO_BIN_EXE_sipadmit"))
                .args(["run", "--config", config.to_str().unwrap()])
                .args(["--listen", &format!("udp:{}", self.addr())])
                .args(["--listen", &format!("tcp:{}", self.addr())])
                .args(["--upstream", &format!("udp:{}", self.registrar)])
                .args([
                    "--decision-log",
                    self.decision_log(self.starts).to_str().unwrap(),
                ])
                .env("RUST_LOG", "info"),
        );
        let deadline = Instant::now() + BOUND;
        while !sip_options_ping(self.addr(), Duration::from_millis(300)) {
            assert!(
                process.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "{} did not become ready:\n{}",
                self.name,
                process.stderr_so_far()
            );
        }
        self.process = Some(process);
    }

    fn process(&mut self) -> &mut Sipadmit {
        self.process.as_mut().expect("running")
    }
}

/// Wait (bounded) until the dispatcher's log holds `count` lines with
/// `needle`.
fn wait_for_lines(dispatcher: &Kamailio, needle: &str, count: usize) {
    let deadline = Instant::now() + BOUND;
    while dispatcher.log_lines(needle).len() < count {
        assert!(
            Instant::now() < deadline,
            "no {count} lines {needle:?} from the dispatcher"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What the drained instance did.
struct Drain {
    /// From SIGTERM to the process's exit, as the test saw it.
    exit_after: Duration,
    /// The `elapsed_ms` of its `drained: ... shutting down` line.
    logged_ms: u64,
}

/// SIGTERM, then wait (bounded) for the exit; the drain must have ended
/// with nothing pending and the exit must be clean.
fn drain(instance: &mut Instance) -> Drain {
    let process = instance.process();
    let signalled = Instant::now();
    process.signal("TERM");
    let deadline = signalled + BOUND;
    while process.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the drained instance did not exit:\n{}",
            process.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let exit_after = signalled.elapsed();
    let stderr = process.exited();
    let drained = stderr
        .lines()
        .find(|l| l.contains("drained: nothing pending; shutting down"))
        .unwrap_or_else(|| panic!("the drain did not settle:\n{stderr}"));
    instance.process = None;
    Drain {
        exit_after,
        logged_ms: field(drained, "elapsed_ms").parse().unwrap(),
    }
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One row of SIPp's `-trace_stat` file (cumulative counters).
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    /// When SIPp wrote it (seconds since the epoch).
    at: f64,
    created: u64,
    successful: u64,
    failed: u64,
    retransmissions: u64,
}

/// The rows of a `-trace_stat` file: `;`-separated, a header row, the
/// times as `date<TAB>time<TAB>epoch`.
fn read_stats(path: &Path) -> Vec<Stat> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header row").split(';').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name} in {}", path.display()))
    };
    let (at, created, successful, failed, retransmissions) = (
        column("CurrentTime"),
        column("TotalCallCreated"),
        column("SuccessfulCall(C)"),
        column("FailedCall(C)"),
        column("Retransmissions(C)"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split(';').collect();
            let count = |i: usize| cells[i].trim().parse::<u64>().unwrap();
            Stat {
                at: cells[at]
                    .split_whitespace()
                    .last()
                    .unwrap()
                    .parse()
                    .unwrap(),
                created: count(created),
                successful: count(successful),
                failed: count(failed),
                retransmissions: count(retransmissions),
            }
        })
        .collect()
}

/// Sleep until `offset` after `start` (at once when that has passed).
fn sleep_until(start: Instant, offset: Duration) {
    if let Some(left) = (start + offset).checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

#[test]
fn a_drained_instance_costs_no_registration_and_a_killed_one_only_what_the_dispatcher_cannot_fail_over(
) {
    if require_tool("sipp").is_none() || require_kamailio_module("dispatcher").is_none() {
        return;
    }
    let cfg = std::fs::read_to_string(e2e_dir().join("kamailio-dispatcher.cfg")).unwrap();
    for line in [
        format!("modparam(\"tm\", \"fr_timer\", {})", FR_TIMER_SECS * 1000),
        format!("modparam(\"dispatcher\", \"ds_ping_interval\", {DS_PING_INTERVAL_SECS})"),
    ] {
        assert!(cfg.contains(&line), "the bound assumes {line}");
    }
    let Some(registrar) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[proxy]\nflow_secret = \"{SECRET}\"\nupstream_probe_secs = 1\n\n[limits]\ndrain_secs = 10\n\n{RESPONSE_GROUP}"
    );
    let mut a = Instance::new("a", dir.path(), registrar.udp_addr(), &config);
    let mut b = Instance::new("b", dir.path(), registrar.udp_addr(), &config);
    a.start();
    b.start();
    let list = dir.path().join("dispatcher.list");
    std::fs::write(&list, format!("1 {} 0 0\n1 {} 0 0\n", a.uri(), b.uri())).unwrap();
    let dispatcher = Kamailio::try_start(KamailioOptions {
        template: "kamailio-dispatcher.cfg",
        substitutions: vec![("DISPATCHER_LIST".into(), list.display().to_string())],
        ..KamailioOptions::default()
    })
    .expect("Kamailio was found for the registrar");

    // A client behind the dispatcher is reached too: the registrar's offer
    // goes along its Path to an instance, which sends it to the client's
    // flow (the dispatcher), which relays it to the client.
    let agent = Sipp::agent("agent-d", UA_LYNC_2013)
        .remote(dispatcher.udp_addr())
        .wait(Duration::from_secs(10))
        .label("agent-behind-dispatcher")
        .spawn();
    assert!(registrar.wait_for_log("REQ REGISTER sip:contoso.com", BOUND));
    Sipp::call("sip:agent-d@contoso.com", UA_RESPONSE_GROUP, 200)
        .remote(registrar.udp_addr())
        .label("offer-through-dispatcher")
        .run_with_timeout(BOUND)
        .assert_success();
    agent.join_timeout(BOUND).assert_success();

    let stats = dir.path().join("sipp-stats.csv");
    let sipp = Sipp::new("register_load.xml")
        .remote(dispatcher.udp_addr())
        .calls((RATE * LOAD_SECS) as u32)
        .arg("-r")
        .arg(RATE.to_string())
        .arg("-rp")
        .arg("1000")
        .arg("-trace_stat")
        .arg("-stf")
        .arg(stats.display().to_string())
        .arg("-fd")
        .arg("1")
        .trace_messages(false)
        .sipp_timeout(Duration::from_secs(LOAD_SECS + 20))
        .label("pool-failover")
        .spawn();
    let started = Instant::now();

    // The drain, under load, and a restart on the same port.
    sleep_until(started, DRAIN_AT);
    let up_a = format!("DS-UP {}", a.uri());
    let ups = dispatcher.log_lines(&up_a).len();
    let drained = drain(&mut a);
    a.start();
    wait_for_lines(&dispatcher, &up_a, ups + 1);

    // SIGKILL, under load, and a restart on the same port.
    sleep_until(started, KILL_AT);
    let killed_at = SystemTime::now();
    b.process().signal("KILL");
    let deadline = Instant::now() + BOUND;
    while b.process().child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "SIGKILL did not end b");
        std::thread::sleep(Duration::from_millis(5));
    }
    b.process = None;
    let up_b = format!("DS-UP {}", b.uri());
    let ups = dispatcher.log_lines(&up_b).len();
    std::thread::sleep(KILLED_FOR);
    b.start();
    wait_for_lines(&dispatcher, &up_b, ups + 1);

    let outcome = sipp.join_timeout(Duration::from_secs(LOAD_SECS + 30));
    let rows = read_stats(&stats);
    let end = *rows.last().expect("SIPp wrote its statistics");
    let before_kill = rows
        .iter()
        .rev()
        .find(|r| r.at < epoch_secs(killed_at))
        .copied()
        .unwrap_or_default();
    let failovers = |code: &str| dispatcher.log_lines(&format!("DS-FAILOVER {code} ")).len();
    let drain_failed = before_kill.failed;
    let kill_failed = end.failed - before_kill.failed;
    eprintln!(
        "RESULT pool failover: {} registrations at {RATE}/s for {LOAD_SECS} s through Kamailio's dispatcher \
         (fr_timer {FR_TIMER_SECS} s, ds_ping_interval {DS_PING_INTERVAL_SECS} s) to 2 sipadmit instances: \
         {} succeeded, {} failed",
        end.created, end.successful, end.failed
    );
    eprintln!(
        "RESULT drain (SIGTERM at {DRAIN_AT:?}): failed {drain_failed}; the dispatcher failed over {} requests \
         answered 503; the drained instance exited {} ms after SIGTERM (drain logged elapsed_ms={}); \
         SIPp retransmissions so far {}",
        failovers("503"),
        drained.exit_after.as_millis(),
        drained.logged_ms,
        before_kill.retransmissions
    );
    eprintln!(
        "RESULT SIGKILL (at {KILL_AT:?}, down {KILLED_FOR:?}): failed {kill_failed} (bound {KILL_BOUND}); \
         the dispatcher failed over {} requests unanswered within fr_timer; SIPp retransmissions since {}",
        failovers("408"),
        end.retransmissions - before_kill.retransmissions
    );

    assert_eq!(
        end.created,
        RATE * LOAD_SECS,
        "SIPp started every registration\n{}",
        outcome.report()
    );
    assert_eq!(
        end.successful + end.failed,
        end.created,
        "every registration ended\n{}",
        outcome.report()
    );
    assert_eq!(
        drain_failed,
        0,
        "the drain cost registrations\n{}",
        outcome.report()
    );
    assert!(
        kill_failed <= KILL_BOUND,
        "SIGKILL cost {kill_failed} registrations, more than {KILL_BOUND}\n{}",
        outcome.report()
    );
    // Both instances carried registrations before and after their restarts.
    for (instance, start) in [(&a, 1), (&a, 2), (&b, 1), (&b, 2)] {
        let allowed = std::fs::read_to_string(instance.decision_log(start))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["method"] == "REGISTER" && r["action"] == "allow")
            .count();
        assert!(
            allowed > 0,
            "{} (start {start}) relayed no REGISTER",
            instance.name
        );
    }
}

/// The registrar's `200 OK` to a REGISTER: its Vias, From, To (tagged),
/// Call-ID and CSeq, and its Contact bound for 300 s.
fn registered(register: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for via in header(register, "Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    out.push_str(&format!(
        "From: {}\r\nTo: {};tag=registrar\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: {};expires=300\r\n\
         Content-Length: 0\r\n\r\n",
        header(register, "From")[0],
        header(register, "To")[0],
        header(register, "Call-ID")[0],
        header(register, "CSeq")[0],
        header(register, "Contact")[0],
    ));
    out
}

/// The next message on `conn`: `None` when the connection is closed (or
/// reset) before one is whole.
fn read_message(conn: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(message) = take_message(buffer) {
            return Some(message);
        }
        match conn.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading the client's connection: {e}"),
        }
    }
}

/// The client registers over `conn` through the instance it is connected
/// to; the registrar (`upstream`) answers 200. The Path the instance added.
fn register_over(conn: &mut TcpStream, agent: &Agent, cseq: u32, upstream: &UdpSocket) -> String {
    conn.write_all(agent.register("tcp-client@test", cseq).as_bytes())
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = upstream.recv_from(&mut buf).expect("the relayed REGISTER");
    let relayed = String::from_utf8_lossy(&buf[..n]).into_owned();
    upstream
        .send_to(registered(&relayed).as_bytes(), from)
        .unwrap();
    let answer = read_message(conn, &mut Vec::new()).expect("the 200 to the REGISTER");
    assert_eq!(status(&answer), 200, "{answer}");
    header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned()
}

/// A call the registrar (`upstream`) offers the agent along `path`, sent to
/// `instance` (where the pool's name resolves now).
fn offer(upstream: &UdpSocket, instance: SocketAddr, agent: &Agent, path: &str, n: u32) {
    let me = upstream.local_addr().unwrap();
    let invite = format!(
        "INVITE {contact} SIP/2.0\r\nRoute: <{path}>\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-offer-{n}\r\n\
         Max-Forwards: 69\r\nFrom: <sip:helpdesk@contoso.com>;tag=rgs\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: offer-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:rgs@{me}>\r\nUser-Agent: {UA_RESPONSE_GROUP}\r\n\
         Content-Length: 0\r\n\r\n",
        contact = agent.contact(),
        user = agent.user,
    );
    upstream.send_to(invite.as_bytes(), instance).unwrap();
}

/// A TCP client registered through instance A, which is then killed: its
/// connection closes; the registrar's next request for it, sent to B (the
/// pool's name now leads there), is answered `430 Flow Failed` by B (RFC
/// 5626: the flow is gone); the client registers again through B, and the
/// registrar's request reaches it over its new connection.
#[test]
fn a_tcp_client_of_a_killed_instance_gets_430_from_the_survivor_until_it_registers_again() {
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    upstream.set_read_timeout(Some(BOUND)).unwrap();
    let registrar = upstream.local_addr().unwrap();
    let config = format!(
        "[proxy]\nflow_secret = \"{SECRET}\"\nadvertise = \"pool.test\"\nupstream_probe_secs = 0\n\n{RESPONSE_GROUP}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut a = Instance::new("a", dir.path(), registrar, &config);
    let mut b = Instance::new("b", dir.path(), registrar, &config);
    a.start();
    b.start();

    let mut conn = TcpStream::connect(a.addr()).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let agent = Agent::new("agent-x", UA_LYNC_2013, conn.local_addr().unwrap(), "TCP");
    let path = register_over(&mut conn, &agent, 1, &upstream);
    assert!(path.contains("@pool.test;"), "{path}");

    a.process().signal("KILL");
    assert_eq!(
        read_message(&mut conn, &mut Vec::new()),
        None,
        "the killed instance's connection closes"
    );
    offer(&upstream, b.addr(), &agent, &path, 1);
    let mut buf = vec![0u8; 65536];
    let (n, from) = upstream.recv_from(&mut buf).expect("B's answer");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(from, b.addr());
    assert!(
        answer.starts_with("SIP/2.0 430 Flow Failed\r\n"),
        "{answer}"
    );

    let mut conn = TcpStream::connect(b.addr()).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let agent = Agent::new("agent-x", UA_LYNC_2013, conn.local_addr().unwrap(), "TCP");
    let path = register_over(&mut conn, &agent, 2, &upstream);
    offer(&upstream, b.addr(), &agent, &path, 2);
    let invite = read_message(&mut conn, &mut Vec::new()).expect("the offer over the new flow");
    assert!(invite.starts_with("INVITE sip:agent-x@"), "{invite}");
}
