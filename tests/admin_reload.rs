//! The operator's view of a running `sipadmit run` (the binary, on
//! ephemeral loopback ports, with `--admin 127.0.0.1:0`):
//! - `/metrics` after SIPp traffic through sipadmit to Kamailio is accepted
//!   by `promtool check metrics`, and the counters moved as the traffic says;
//! - `/healthz`, `/readyz` (including an unreachable TCP upstream), 404, 405;
//! - live reload: SIGHUP 20 times under steady SIPp traffic, switching a
//!   policy back and forth; every transaction completes, every decision
//!   record's action is the one of its config generation, and a broken file
//!   changes nothing but the failure counter.
//!
//! Needs `kamailio`, `sipp` and `promtool` (Debian `kamailio`, `sip-tester`,
//! `prometheus`) for the traffic tests; they fail under CI=true when a tool
//! is missing and skip with a message otherwise.

mod common {
    pub mod admin_client;
    pub mod binary;
    pub mod external;
    pub mod sip_stream;
}

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin_client::{self, assert_promtool_accepts};
use common::binary::{field, Sipadmit, BOUND};
use common::external::{
    require_tool, Kamailio, KamailioOptions, Sipp, UA_LYNC_2013, UA_LYNC_MOBILE,
};
use serde_json::Value;

const CONFIG: &str = r#"
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
agents = ["sip:agent-*@contoso.com"]
"#;

// === the binary ===

/// `sipadmit run` with `--admin 127.0.0.1:0`, its stderr read line by line.
struct Running {
    process: Sipadmit,
    udp: SocketAddr,
    admin: SocketAddr,
    decision_log: PathBuf,
}

impl Running {
    /// Start with the config file `config`, listening on UDP and TCP port
    /// 0 of 127.0.0.1, relaying to `upstream` (`udp:IP:PORT`, `tcp:IP:PORT`).
    fn start(config: &Path, upstream: &str) -> Self {
        let decision_log = config.with_file_name("decisions.jsonl");
        let mut process = Sipadmit::spawn(
            Command::new(env!("CARGO_BIN_EXE_sipadmit"))
                .args(["run", "--config", config.to_str().unwrap()])
                .args(["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"])
                .args(["--upstream", upstream])
                .args(["--admin", "127.0.0.1:0"])
                .args(["--decision-log", decision_log.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null()),
        );
        let udp = process.wait_for("transport=udp");
        let udp = field(&udp, "addr").parse().unwrap();
        let admin = process.wait_for("admin listening");
        let admin = field(&admin, "addr").parse().unwrap();
        Self {
            process,
            udp,
            admin,
            decision_log,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path)
    }

    /// Wait (bounded) until `/readyz` answers `status`; its body then.
    fn wait_for_readyz(&mut self, status: u16) -> String {
        self.wait_for_readyz_within(status, BOUND)
    }

    fn wait_for_readyz_within(&mut self, status: u16, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let (got, body) = self.get("/readyz");
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {got} ({body}), not {status}\n{}",
                self.process.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one sample of `/metrics` (the line starting with
    /// `series`, labels written in order), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        sample(&text, series)
    }

    /// Wait (bounded) until a sample reaches `at_least`.
    fn wait_for_metric(&mut self, series: &str, at_least: f64) {
        let deadline = Instant::now() + BOUND;
        while self.metric(series) < at_least {
            assert!(
                Instant::now() < deadline,
                "{series} stayed below {at_least}\n{}",
                self.process.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the exit (the decision log is then complete), and
    /// return the decision records.
    fn stop(mut self) -> (Vec<Value>, String) {
        self.process.stop();
        let stderr = self.process.stderr_so_far();
        let records = std::fs::read_to_string(&self.decision_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (records, stderr)
    }
}

/// One HTTP/1.1 request with `Connection: close`: status and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    admin_client::http(addr, method, path, BOUND)
}

/// The value of the sample line starting with `series ` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    admin_client::sample(text, series).unwrap_or(0.0)
}

/// The sum of every sample of a family (any labels).
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sipadmit.toml");
    replace_file(&path, text);
    path
}

/// Write a file whole (rename), as an editor or a deployment tool does.
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("toml.next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

// === metrics and health ===

#[test]
fn metrics_after_sipp_traffic_through_kamailio_pass_promtool_and_count_it() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    if require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sipadmit = Running::start(&config_file(dir.path(), CONFIG), &kam.upstream_udp());
    assert_eq!(sipadmit.get("/healthz"), (200, "ok\n".into()));
    // Ready once Kamailio has answered the first OPTIONS probe.
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");

    // A registration (relayed, 200), a supported caller (relayed, 486 from
    // the workflow), an unsupported caller (403 from sipadmit), garbage.
    Sipp::register("alice", UA_LYNC_2013, 200)
        .remote(sipadmit.udp)
        .run_with_timeout(BOUND)
        .assert_success();
    Sipp::call("sip:helpdesk@contoso.com", UA_LYNC_2013, 486)
        .remote(sipadmit.udp)
        .label("desktop-caller")
        .run_with_timeout(BOUND)
        .assert_success();
    Sipp::call("sip:helpdesk@contoso.com", UA_LYNC_MOBILE, 403)
        .remote(sipadmit.udp)
        .label("mobile-caller")
        .run_with_timeout(BOUND)
        .assert_success();
    let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
    garbage
        .send_to(b"HELLO sipadmit\r\n\r\n", sipadmit.udp)
        .unwrap();
    let mut sipadmit = sipadmit;
    // (Logged as a summary per 10 s, the first few at debug level: waited
    // for in the counter.)
    sipadmit.wait_for_metric(r#"sipadmit_dropped_total{reason="malformed"}"#, 1.0);

    let (status, text) = sipadmit.get("/metrics");
    assert_eq!(status, 200);
    assert_promtool_accepts(&promtool, dir.path(), &text);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("sipadmit_"), "{line}");
    }
    let value = |series: &str| sample(&text, series);
    // Decisions, by what decided them.
    assert_eq!(
        value(r#"sipadmit_decisions_total{action="reject",role="caller",support="unsupported"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"sipadmit_decisions_total{action="allow",role="caller",support="supported"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"sipadmit_decisions_total{action="allow",role="none",support="supported"}"#),
        1.0,
        "the REGISTER of a non-agent\n{text}"
    );
    assert_eq!(
        value(r#"sipadmit_local_responses_total{status="403"}"#),
        1.0
    );
    // REGISTER, INVITE + ACK (486), INVITE + ACK (403) from SIPp, and the garbage.
    assert!(
        value(r#"sipadmit_received_total{transport="udp",kind="request"}"#) >= 6.0,
        "{text}"
    );
    // Kamailio's 200 and 486 came back through sipadmit.
    assert!(
        value(r#"sipadmit_received_total{transport="udp",kind="response"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        value(r#"sipadmit_relayed_total{transport="udp",kind="response"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        value(r#"sipadmit_relayed_total{transport="udp",kind="request"}"#) >= 3.0,
        "{text}"
    );
    assert_eq!(
        value(r#"sipadmit_dropped_total{reason="malformed"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        family_sum(&text, "sipadmit_parse_errors_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"sipadmit_upstream_send_failures_total{transport="udp"}"#),
        0.0
    );
    assert!(
        value("sipadmit_message_handling_seconds_count") >= 8.0,
        "{text}"
    );
    assert_eq!(
        value(r#"sipadmit_message_handling_seconds_bucket{le="+Inf"}"#),
        value("sipadmit_message_handling_seconds_count")
    );
    assert_eq!(value("sipadmit_config_generation"), 1.0);
    assert_eq!(
        value(r#"sipadmit_config_reloads_total{result="success"}"#),
        0.0
    );
    assert_eq!(value("sipadmit_decision_records_dropped_total"), 0.0);
    assert_eq!(value(r#"sipadmit_open_connections{transport="tcp"}"#), 0.0);
    assert!(text.contains(&format!(
        "sipadmit_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("# TYPE sipadmit_registrations gauge"));
    // No label holds an address, a Call-ID, a URI or a User-Agent.
    for forbidden in ["127.0.0.1", "contoso", "Lync", "@"] {
        assert!(!text.contains(forbidden), "{forbidden} in\n{text}");
    }
}

#[test]
fn the_admin_listener_serves_only_get_on_its_three_paths() {
    // A TCP upstream that listens: ready.
    let registrar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("tcp:{}", registrar.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sipadmit = Running::start(&config_file(dir.path(), CONFIG), &upstream);
    assert_eq!(sipadmit.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(sipadmit.get("/readyz"), (200, "ready\n".into()));
    assert_eq!(sipadmit.get("/").0, 404);
    assert_eq!(sipadmit.get("/metrics/extra").0, 404);
    assert_eq!(http(sipadmit.admin, "POST", "/metrics").0, 405);
    assert_eq!(http(sipadmit.admin, "HEAD", "/healthz").0, 405);
    assert_eq!(http(sipadmit.admin, "DELETE", "/nothing").0, 404);
    // The registrar goes away: not ready, and why.
    drop(registrar);
    let (status, reason) = sipadmit.get("/readyz");
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.starts_with(&format!("upstream {upstream} not reachable: ")),
        "{reason}"
    );
    assert_eq!(sipadmit.get("/healthz").0, 200, "still serving");
}

// === live reload ===

/// The config of generation `generation` (1 is the file started with):
/// odd generations flag unsupported agents' REGISTERs, even ones allow them
/// and also change a restart-only limit.
fn policy_config(generation: u64) -> String {
    if generation % 2 == 1 {
        format!("{CONFIG}\n[policy.agent_registration]\nunsupported = \"flag\"\n")
    } else {
        format!("{CONFIG}\n[policy.agent_registration]\nunsupported = \"allow\"\n[limits]\nmax_headers = 200\n")
    }
}

fn action_of(generation: u64) -> &'static str {
    if generation % 2 == 1 {
        "flag"
    } else {
        "allow"
    }
}

const BROKEN: &str = r#"
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
agents = ["sip:agent-*@contoso.com", "agent-without-scheme"]

[policy.agent_registration]
unsupported = "allw"
"#;

#[test]
fn sighup_reloads_twenty_times_under_steady_traffic_and_a_broken_file_changes_nothing() {
    const REGISTERS: u32 = 300;
    const RELOADS: u64 = 20;
    if require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &policy_config(1));
    let mut sipadmit = Running::start(&config, &kam.upstream_udp());

    // An unsupported (mobile) agent registers 300 times at 50 a second.
    let load = Sipp::register("agent-load", UA_LYNC_MOBILE, 200)
        .remote(sipadmit.udp)
        .calls(REGISTERS)
        .arg("-r")
        .arg("50")
        .sipp_timeout(Duration::from_secs(60))
        .label("steady-registers")
        .spawn();
    sipadmit.wait_for_metric(
        r#"sipadmit_received_total{transport="udp",kind="request"}"#,
        10.0,
    );

    let mut generation = 1;
    for reload in 1..=RELOADS {
        if reload == RELOADS / 2 {
            // A broken file: nothing but the failure counter changes.
            replace_file(&config, BROKEN);
            let before = sipadmit.get("/metrics").1;
            sipadmit.process.signal("HUP");
            sipadmit.wait_for_metric(r#"sipadmit_config_reloads_total{result="failure"}"#, 1.0);
            let after = sipadmit.get("/metrics").1;
            for series in [
                "sipadmit_config_generation",
                r#"sipadmit_config_reloads_total{result="success"}"#,
            ] {
                assert_eq!(sample(&before, series), sample(&after, series), "{series}");
            }
            assert_eq!(
                sample(&after, "sipadmit_config_generation"),
                generation as f64
            );
            // Every problem, each with its key path.
            for key in [
                "key=policy.agent_registration.unsupported",
                "key=response_group.agents[1]",
            ] {
                let problem = sipadmit.process.wait_for(key);
                assert!(problem.contains("config reload: problem"), "{problem}");
            }
            sipadmit
                .process
                .wait_for("config reload failed; running configuration kept");
            std::thread::sleep(Duration::from_millis(100));
        }
        replace_file(&config, &policy_config(generation + 1));
        sipadmit.process.signal("HUP");
        sipadmit.wait_for_metric(
            r#"sipadmit_config_reloads_total{result="success"}"#,
            reload as f64,
        );
        generation += 1;
        assert_eq!(
            sipadmit.metric("sipadmit_config_generation"),
            generation as f64
        );
        // Let some REGISTERs through under this generation.
        std::thread::sleep(Duration::from_millis(120));
    }
    let load = load.join_timeout(Duration::from_secs(90));
    // Every transaction completed: SIPp saw 200 for each REGISTER.
    load.assert_success();
    assert_eq!(
        sipadmit.metric(r#"sipadmit_config_reloads_total{result="failure"}"#),
        1.0
    );
    let restart = sipadmit.process.wait_for("needs restart");
    assert!(restart.contains("limits"), "{restart}");

    let (records, stderr) = sipadmit.stop();
    let registers: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "REGISTER")
        .collect();
    assert!(
        registers.len() >= REGISTERS as usize,
        "{} records for {REGISTERS} REGISTERs",
        registers.len()
    );
    let mut generations = std::collections::BTreeSet::new();
    for record in &registers {
        let g = record["generation"].as_u64().unwrap();
        generations.insert(g);
        assert_eq!(record["role"], "agent-registration", "{record}");
        assert_eq!(
            record["action"],
            action_of(g),
            "generation {g} decided by another config: {record}"
        );
    }
    // Traffic ran across the reloads: most generations decided something.
    assert!(generations.len() >= 10, "{generations:?}");
    assert!(generations.iter().any(|g| g % 2 == 0) && generations.iter().any(|g| g % 2 == 1));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A REGISTER from `from` (a Lync client), numbered `n`.
fn register(from: SocketAddr, n: u32) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-rl-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=f{n}\r\nTo: <sip:alice@contoso.com>\r\n\
         Call-ID: rl-{n}@test\r\nCSeq: {n} REGISTER\r\nContact: <sip:alice@{from}>\r\n\
         User-Agent: {UA_LYNC_2013}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// `[rate_limit]` is policy: a SIGHUP applies it at once (no restart), and
/// the refusals it then makes are counted in `/metrics`.
#[test]
fn a_reload_applies_rate_limit_and_metrics_count_what_it_refuses() {
    const SENT: u32 = 20;
    // A registrar that receives and never answers: every request relayed.
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = format!("udp:{}", registrar.local_addr().unwrap());
    let generous =
        "[rate_limit]\ntrusted = []\nrequests_per_second = 1000\nburst = 1000\nban_secs = 0\n";
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &format!("{CONFIG}\n{generous}"));
    let mut sipadmit = Running::start(&config, &upstream);
    let client = UdpSocket::bind("127.0.0.6:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let from = client.local_addr().unwrap();
    let received = r#"sipadmit_received_total{transport="udp",kind="request"}"#;
    let over_rate = r#"sipadmit_rate_limit_refused_messages_total{reason="over_rate"}"#;

    for n in 1..=SENT {
        client
            .send_to(register(from, n).as_bytes(), sipadmit.udp)
            .unwrap();
    }
    sipadmit.wait_for_metric(received, f64::from(SENT));
    assert_eq!(sipadmit.metric(over_rate), 0.0, "within 1000/s");

    let strict = "[rate_limit]\ntrusted = []\nrequests_per_second = 1\nburst = 2\nban_secs = 0\n";
    replace_file(&config, &format!("{CONFIG}\n{strict}"));
    sipadmit.process.signal("HUP");
    let reloaded = sipadmit.process.wait_for("config reloaded");
    assert!(reloaded.contains("rate_limit_applied=true"), "{reloaded}");
    assert!(
        reloaded.contains("changed=rate_limit"),
        "the line says what changed: {reloaded}"
    );
    assert!(reloaded.contains("needs_restart=0"), "{reloaded}");

    for n in SENT + 1..=2 * SENT {
        client
            .send_to(register(from, n).as_bytes(), sipadmit.udp)
            .unwrap();
    }
    sipadmit.wait_for_metric(received, f64::from(2 * SENT));
    // A burst of 2 (and what refilled meanwhile) passes; the rest is 503.
    assert!(sipadmit.metric(over_rate) >= 1.0);
    assert!(sipadmit.metric(r#"sipadmit_local_responses_total{status="503"}"#) >= 1.0);
    let mut buf = vec![0u8; 65536];
    let (n, _) = client.recv_from(&mut buf).expect("a 503");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 503"), "{answer}");
    assert!(answer.contains("Retry-After: 2\r\n"), "{answer}");
    let (_, stderr) = sipadmit.stop();
    assert!(!stderr.contains("needs restart"), "{stderr}");
}

/// A log rotation that went wrong (a directory left where the decision log
/// was) keeps no reload from applying the rest: the log is not reopened,
/// which the journal says, and the new `[rate_limit]` applies (trial 36:
/// the whole reload failed on `proxy.decision_log`, a restart-only key).
#[test]
fn a_directory_where_the_decision_log_was_does_not_fail_a_reload() {
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = format!("udp:{}", registrar.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), CONFIG);
    let mut sipadmit = Running::start(&config, &upstream);
    std::fs::rename(&sipadmit.decision_log, dir.path().join("rotated.jsonl")).unwrap();
    std::fs::create_dir(&sipadmit.decision_log).unwrap();
    replace_file(
        &config,
        &format!("{CONFIG}\n[rate_limit]\nrequests_per_second = 7\n"),
    );
    sipadmit.process.signal("HUP");
    let reloaded = sipadmit.process.wait_for("config reload");
    assert!(
        reloaded.contains("config reloaded") && reloaded.contains("changed=rate_limit"),
        "{reloaded}"
    );
    let (_, stderr) = sipadmit.stop();
    assert!(stderr.contains("decision log not reopened"), "{stderr}");
}

// === a UDP registrar that is down (issue 8 item 9) ===

/// A 200 OK for `request` as the registrar sends it (the proxy's Via and
/// the dialog headers copied).
fn registrar_ok(request: &str) -> String {
    common::sip_stream::uas_response(request, "200 OK", "reg", "")
}

/// The registrar's UDP port is closed: the ICMP port unreachable for the
/// relayed REGISTER is counted (`upstream_unreachable`), warned about, and
/// makes `/readyz` fail with the reason; when the registrar is back on its
/// port, its answer reaches the client (nothing lost to the error) and
/// `/readyz` is ready again. An ICMP error for a response to a client that
/// went away counts as `client_unreachable` and leaves readiness alone.
#[test]
fn icmp_errors_from_a_down_udp_registrar_are_counted_and_make_readyz_fail_until_it_answers() {
    // The registrar's port stays taken until just before the REGISTER is
    // sent, so that no other socket on the machine (parallel tests, the
    // proxy's own listeners) is handed it in between.
    let port_holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let registrar_addr = port_holder.local_addr().unwrap();
    let upstream = format!("udp:{registrar_addr}");
    let dir = tempfile::tempdir().unwrap();
    // No OPTIONS probes: readiness here is learned from relayed traffic
    // alone (the probes have their own test).
    let config = format!("{CONFIG}[proxy]\nupstream_probe_secs = 0\n");
    let mut sipadmit = Running::start(&config_file(dir.path(), &config), &upstream);
    assert_eq!(sipadmit.get("/readyz"), (200, "ready\n".into()));
    let upstream_unreachable = r#"sipadmit_transport_faults_total{kind="upstream_unreachable"}"#;
    let client_unreachable = r#"sipadmit_transport_faults_total{kind="client_unreachable"}"#;

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let from = client.local_addr().unwrap();
    drop(port_holder);
    client
        .send_to(register(from, 1).as_bytes(), sipadmit.udp)
        .unwrap();
    let warning = sipadmit.process.wait_for("fault=\"upstream_unreachable\"");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("peer={registrar_addr}")),
        "{warning}"
    );
    sipadmit.wait_for_metric(upstream_unreachable, 1.0);
    assert_eq!(sipadmit.metric(client_unreachable), 0.0);
    assert_eq!(
        sipadmit.metric(r#"sipadmit_transport_faults_total{kind="udp_receive"}"#),
        0.0,
        "the error the kernel hands the next receive is not a receive fault"
    );
    let (status, reason) = sipadmit.get("/readyz");
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.starts_with(&format!("upstream {upstream} not reachable: ICMP error")),
        "{reason}"
    );

    // The registrar is back and answers: the client gets its 200, ready.
    let registrar = UdpSocket::bind(registrar_addr).unwrap();
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 65_536];
    client
        .send_to(register(from, 2).as_bytes(), sipadmit.udp)
        .unwrap();
    let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
    let relayed = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(relayed.contains("Call-ID: rl-2@test"), "{relayed}");
    registrar
        .send_to(registrar_ok(&relayed).as_bytes(), proxy)
        .unwrap();
    let n = client.recv(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Call-ID: rl-2@test"), "{answer}");
    assert_eq!(sipadmit.get("/readyz"), (200, "ready\n".into()));

    // A client that went away before its answer: client_unreachable.
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    gone.send_to(register(gone_addr, 3).as_bytes(), sipadmit.udp)
        .unwrap();
    drop(gone);
    let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
    let relayed = String::from_utf8_lossy(&buf[..n]).into_owned();
    registrar
        .send_to(registrar_ok(&relayed).as_bytes(), proxy)
        .unwrap();
    sipadmit.wait_for_metric(client_unreachable, 1.0);
    assert_eq!(sipadmit.metric(upstream_unreachable), 1.0);
    assert_eq!(sipadmit.get("/readyz"), (200, "ready\n".into()));
    // The warning is written after the count: wait for it (bounded).
    sipadmit.process.wait_for("fault=\"client_unreachable\"");
}

/// A TCP client's REGISTER relayed over UDP to a registrar that dies
/// before answering: once an ICMP error tells the registrar is gone, the
/// retransmission that cannot be sent ends the client transaction with a
/// `503` and Retry-After at once (RFC 3261 17.1.4), as a new request
/// would get, not a `408` after 64*T1 = 32 s (trial 17).
#[test]
fn a_stream_clients_request_ends_503_when_the_udp_registrar_dies_under_it() {
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let registrar_addr = registrar.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}[proxy]\nupstream_probe_secs = 1\n");
    let mut sipadmit = Running::start(
        &config_file(dir.path(), &config),
        &format!("udp:{registrar_addr}"),
    );
    let tcp: SocketAddr = field(&sipadmit.process.wait_for("transport=tcp"), "addr")
        .parse()
        .unwrap();
    let mut buf = [0u8; 65_536];
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    // Up: it answers a probe.
    let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
    let probe = String::from_utf8_lossy(&buf[..n]).into_owned();
    registrar
        .send_to(registrar_ok(&probe).as_bytes(), proxy)
        .unwrap();
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    // The REGISTER reaches it, unanswered; then it is gone.
    let mut client = std::net::TcpStream::connect(tcp).unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let from = client.local_addr().unwrap();
    let request = register(from, 7).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    std::io::Write::write_all(&mut client, request.as_bytes()).unwrap();
    let (relayed, proxy) = loop {
        let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
        if buf[..n].starts_with(b"REGISTER ") {
            break (String::from_utf8_lossy(&buf[..n]).into_owned(), proxy);
        }
    };
    drop(registrar);
    let sent = Instant::now();
    let n = std::io::Read::read(&mut client, &mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert!(answer.contains("Retry-After: "), "{answer}");
    assert!(answer.contains("Call-ID: rl-7@test"), "{answer}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        sipadmit.metric("sipadmit_client_transaction_timeouts_total"),
        0.0
    );
    // A registrar that was slow, not dead: its late 200 is discarded, as
    // after a 408 (review: the client got a second final answer).
    let late = UdpSocket::bind(registrar_addr).unwrap();
    late.send_to(registrar_ok(&relayed).as_bytes(), proxy)
        .unwrap();
    sipadmit.wait_for_metric(r#"sipadmit_dropped_total{reason="after_timeout"}"#, 1.0);
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let second = std::io::Read::read(&mut client, &mut buf);
    assert!(second.is_err(), "a second final answer: {second:?}");
}

/// `/readyz` and a UDP registrar, with OPTIONS probes every second: unknown
/// (503) until the registrar answers one; ready at its first answer; not
/// ready once it is down (the probes' ICMP errors); ready again within one
/// probe of its return, with no client traffic at all.
#[test]
fn readyz_follows_a_udp_registrar_through_its_options_probes() {
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let registrar_addr = registrar.local_addr().unwrap();
    let upstream = format!("udp:{registrar_addr}");
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}[proxy]\nupstream_probe_secs = 1\n");
    let mut sipadmit = Running::start(&config_file(dir.path(), &config), &upstream);
    // The registrar reads but does not answer yet: unknown.
    let mut buf = [0u8; 65_536];
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    let (n, _) = registrar.recv_from(&mut buf).unwrap();
    let probe = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(probe.starts_with("OPTIONS sip:"), "{probe}");
    assert!(probe.contains("Max-Forwards: 70\r\n"), "{probe}");
    let (status, body) = sipadmit.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unknown"), "{body}");
    // It answers the next probe: ready, without any client traffic.
    let answer_one = |registrar: &UdpSocket, buf: &mut [u8]| {
        let (n, proxy) = registrar.recv_from(buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(request.starts_with("OPTIONS "), "{request}");
        registrar
            .send_to(registrar_ok(&request).as_bytes(), proxy)
            .unwrap();
    };
    answer_one(&registrar, &mut buf);
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    // Down: the next probe's ICMP error makes it not ready ...
    drop(registrar);
    let reason = sipadmit.wait_for_readyz(503);
    assert!(reason.contains("not reachable: ICMP error"), "{reason}");
    // ... and a client is answered 503 at once, not left waiting.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let from = client.local_addr().unwrap();
    client
        .send_to(register(from, 1).as_bytes(), sipadmit.udp)
        .unwrap();
    let n = client.recv(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert!(answer.contains("Retry-After: "), "{answer}");
    // Back on its port: ready again within a probe or two, and relayed to.
    let registrar = UdpSocket::bind(registrar_addr).unwrap();
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    answer_one(&registrar, &mut buf);
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    client
        .send_to(register(from, 2).as_bytes(), sipadmit.udp)
        .unwrap();
    let relayed = loop {
        let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        if request.starts_with("REGISTER ") {
            registrar
                .send_to(registrar_ok(&request).as_bytes(), proxy)
                .unwrap();
            break request;
        }
    };
    assert!(relayed.contains("Call-ID: rl-2@test"), "{relayed}");
    let n = client.recv(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(sipadmit.metric("sipadmit_upstream_probe_answers_total") >= 2.0);
    let (records, _) = sipadmit.stop();
    let rules: Vec<&str> = records
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["proxy.upstream-unavailable", "supported"],
        "the first REGISTER's 503 alone (the registrar was known to be down: one record), \
         then the second's decision; probes are not decisions"
    );
}

/// `/readyz` and a UDP "registrar" that answers with bytes that are not
/// SIP (another service at its address): what it sends does not make the
/// instance ready; its first SIP answer does.
#[test]
fn a_udp_registrar_answering_what_is_not_sip_does_not_make_it_ready() {
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = format!("udp:{}", registrar.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}[proxy]\nupstream_probe_secs = 1\n");
    let mut sipadmit = Running::start(&config_file(dir.path(), &config), &upstream);
    let mut buf = [0u8; 65_536];
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    let mut next_probe = |registrar: &UdpSocket| loop {
        let (n, proxy) = registrar.recv_from(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        if request.starts_with("OPTIONS ") {
            break (request, proxy);
        }
    };
    for _ in 0..3 {
        let (_, proxy) = next_probe(&registrar);
        registrar
            .send_to(b"HTTP/1.1 400 Bad Request\r\n\r\n", proxy)
            .unwrap();
    }
    let (status, body) = sipadmit.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unknown"), "{body}");
    assert_eq!(
        sipadmit.metric("sipadmit_upstream_probe_answers_total"),
        0.0
    );
    let (probe, proxy) = next_probe(&registrar);
    registrar
        .send_to(registrar_ok(&probe).as_bytes(), proxy)
        .unwrap();
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    sipadmit.stop();
}

/// A TCP registrar on 127.0.0.1 that reads requests and answers each
/// `200 OK` while `answering` is set, and nothing while it is not (a
/// stalled registrar: connected, silent).
fn tcp_registrar(answering: Arc<AtomicBool>) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let answering = answering.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" && head.is_empty() => continue,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => head.push_str(&line),
                        }
                    }
                    if answering.load(Ordering::Relaxed) {
                        let answer = common::sip_stream::uas_response(&head, "200 OK", "reg", "");
                        let _ = writer.write_all(answer.as_bytes());
                    }
                }
            });
        }
    });
    addr
}

/// `/readyz` and a TCP registrar that stalls: its connection stays up and
/// takes a client's REGISTER, but nothing comes back. After 10 to 20 s of
/// silence (`SILENCE`, checked every 10 s) the instance is not ready, with
/// the reason; the registrar's next answer makes it ready again. Its
/// unanswered probes alone do not count: a stream registrar need not
/// answer them.
#[test]
fn readyz_fails_while_a_connected_tcp_registrar_answers_nothing() {
    let answering = Arc::new(AtomicBool::new(false));
    let registrar = tcp_registrar(answering.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}[proxy]\nupstream_probe_secs = 1\n");
    let mut sipadmit = Running::start(
        &config_file(dir.path(), &config),
        &format!("tcp:{registrar}"),
    );
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = client.local_addr().unwrap();
    client
        .send_to(register(from, 1).as_bytes(), sipadmit.udp)
        .unwrap();
    let reason = sipadmit.wait_for_readyz_within(503, Duration::from_secs(35));
    assert!(
        reason.contains("no message from it for"),
        "{reason}\n{}",
        sipadmit.process.stderr_so_far()
    );
    answering.store(true, Ordering::Relaxed);
    assert_eq!(sipadmit.wait_for_readyz(200), "ready\n");
    // Said once at start: the registrar's own connections count as a
    // client's unless its IP is in upstream_sources.
    let stderr = sipadmit.process.stderr_so_far();
    assert!(
        stderr.contains("proxy.upstream_sources is only the upstream's IP:PORT: requests the registrar sends on connections it opens itself (from other ports) count as a client's; list its IP (\"127.0.0.1\")"),
        "{stderr}"
    );
}

// === rate-limited warnings ===

/// In monitor mode every request of an unsupported agent is flagged: its
/// warning is logged for the first 10 of a 10 s window only, then one
/// summary line says how many there were (each is still recorded).
#[test]
fn flagged_warnings_are_limited_per_window_and_summarised() {
    const SENT: u32 = 40;
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = format!("udp:{}", registrar.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}\n[proxy]\nmode = \"monitor\"\n", policy_config(1));
    let mut sipadmit = Running::start(&config_file(dir.path(), &config), &upstream);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = client.local_addr().unwrap();
    for n in 1..=SENT {
        let register = register(from, n)
            .replace("alice@", "agent-7@")
            .replace(UA_LYNC_2013, UA_LYNC_MOBILE);
        client.send_to(register.as_bytes(), sipadmit.udp).unwrap();
    }
    sipadmit.wait_for_metric(
        r#"sipadmit_received_total{transport="udp",kind="request"}"#,
        f64::from(SENT),
    );
    // The window closes 10 s after its first event (housekeeping, 1 s).
    let summary = sipadmit
        .process
        .wait_for("requests flagged in the last 10 s");
    assert!(summary.contains("WARN"), "{summary}");
    let stderr = sipadmit.process.stderr_so_far();
    let one_by_one = stderr.lines().filter(|l| l.contains(": flagged ")).count();
    // All 40 normally fall in one window (10 logged); a very slow run may
    // spread them over two.
    assert!((1..=20).contains(&one_by_one), "{one_by_one} in\n{stderr}");
    assert!(summary.contains("logged=10"), "{summary}");
    let flagged: u32 = field(&summary, "flagged").parse().unwrap();
    assert!(flagged > 10 && flagged <= SENT, "{summary}");
}

/// A cgroup of the pids controller holding one process, for as long as it
/// lives: v1 (`/sys/fs/cgroup/pids`) or v2 with the controller enabled.
struct PidsCgroup {
    dir: PathBuf,
    parent_procs: PathBuf,
    pid: u32,
}

impl PidsCgroup {
    /// Move `pid` into a new one; the reason where this machine offers none.
    fn around(pid: u32) -> Result<Self, String> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let v2 = Path::new("/sys/fs/cgroup");
        let root = if v1.join("cgroup.procs").exists() {
            v1
        } else if std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
        {
            v2
        } else {
            return Err("no cgroup with the pids controller".into());
        };
        let dir = root.join(format!("sipadmit-test-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = Self {
            dir,
            parent_procs: root.join("cgroup.procs"),
            pid,
        };
        std::fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid}: {e}"))?;
        Ok(cgroup)
    }

    /// No new thread or process beyond those it has now (`pids.max`).
    fn freeze_thread_count(&self) {
        let current = std::fs::read_to_string(self.dir.join("pids.current")).unwrap();
        std::fs::write(self.dir.join("pids.max"), current.trim()).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("pids.max"), "max");
        let _ = std::fs::write(&self.parent_procs, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `sipadmit run --config config` (the binary) on UDP port 0, relaying to
/// a registrar port nothing listens on, `RUST_LOG=info`.
fn on_udp(config: &Path) -> Sipadmit {
    Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(["--upstream", "udp:127.0.0.1:5070"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    )
}

/// Trial 18: while no thread can be created (a cgroup's `pids.max`,
/// systemd's `TasksMax=`), a SIGHUP used to make tokio panic in
/// `spawn_blocking` and kill the reload task: no reload ever again. Now
/// the event loop keeps a thread for blocking work, and the reload runs on
/// it, limited or not.
#[test]
fn a_reload_while_no_thread_can_be_created_still_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sipadmit.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut sipadmit = on_udp(&config);
    sipadmit.wait_for("listening");
    let cgroup = match PidsCgroup::around(sipadmit.child.id()) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs a pids cgroup for this test: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
    };
    cgroup.freeze_thread_count();
    std::fs::write(&config, format!("{CONFIG}[proxy]\nmode = \"monitor\"\n")).unwrap();
    sipadmit.signal("HUP");
    let reloaded = sipadmit.wait_for("config reloaded");
    assert!(reloaded.contains("generation=2"), "{reloaded}");
    drop(cgroup);
    let stderr = sipadmit.terminate();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Trial 22: a SIGHUP that races the start (logrotate's postrotate reload
/// of a unit just restarted) is a reload once sipadmit runs, not the
/// default action that ends the process: it waits, blocked, from the first
/// thing `run` does.
#[test]
fn a_sighup_during_the_start_is_a_reload_not_the_end() {
    let dir = tempfile::tempdir().unwrap();
    // The configuration is a FIFO: the start waits in reading it, with
    // the SIGHUP delivered meanwhile, until it is written.
    let config = dir.path().join("sipadmit.toml");
    let made = Command::new("mkfifo").arg(&config).status().unwrap();
    assert!(made.success());
    let mut sipadmit = on_udp(&config);
    // Written once sipadmit opens it to read (an open for writing fails
    // at once while no one reads: tried again, for a bounded time).
    let feed = || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let deadline = Instant::now() + BOUND;
        let mut fifo = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&config)
            {
                Ok(fifo) => break fifo,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.raw_os_error(), Some(nix::libc::ENXIO), "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("sipadmit never read its configuration: {e}"),
            }
        };
        fifo.write_all(CONFIG.as_bytes()).unwrap();
    };
    sipadmit.wait_for("sipadmit starting");
    sipadmit.signal("HUP");
    std::thread::sleep(Duration::from_millis(100));
    feed();
    sipadmit.wait_for("listening");
    // The reload reads the FIFO again.
    feed();
    let reloaded = sipadmit.wait_for("config reloaded");
    assert!(reloaded.contains("generation=2"), "{reloaded}");
    let stderr = sipadmit.terminate();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Under a systemd unit of `Type=notify` (`config/sipadmit.service`),
/// sipadmit tells systemd through `$NOTIFY_SOCKET` that it serves (once its
/// listener is bound: a REGISTER sent then is relayed), that a reload
/// begins and ends (with what it did in `STATUS=`), and that it stops.
#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), CONFIG);
    let notify = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(BOUND)).unwrap();
    let next = || {
        let mut buf = [0u8; 1024];
        let n = systemd.recv(&mut buf).expect("a notification in time");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let registrar = UdpSocket::bind("127.0.0.1:0").unwrap();
    registrar.set_read_timeout(Some(BOUND)).unwrap();
    let upstream = format!("udp:{}", registrar.local_addr().unwrap());
    let mut sipadmit = Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0", "--upstream", &upstream])
            .env("NOTIFY_SOCKET", &notify)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    );
    let ready = next();
    let listening = sipadmit.wait_for("listening");
    let udp: SocketAddr = field(&listening, "addr").parse().unwrap();
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=serving udp:{udp} relaying to {upstream}\n")
    );
    // Ready means serving: a REGISTER sent now reaches the registrar.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .send_to(register(client.local_addr().unwrap(), 1).as_bytes(), udp)
        .unwrap();
    let mut buf = [0u8; 4096];
    // (The registrar's OPTIONS probes come too.)
    while !{
        let (n, _) = registrar.recv_from(&mut buf).expect("relayed");
        buf[..n].starts_with(b"REGISTER ")
    } {}

    sipadmit.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let serving = format!("serving udp:{udp} relaying to {upstream}");
    assert!(
        reloading.ends_with(&format!(
            "\nSTATUS={serving}; reloading the configuration\n"
        )),
        "{reloading}"
    );
    assert_eq!(
        next(),
        format!("READY=1\nSTATUS={serving}; configuration generation 2\n")
    );

    replace_file(&config, "[response_group\n");
    sipadmit.signal("HUP");
    assert!(next().starts_with("RELOADING=1\n"));
    assert_eq!(
        next(),
        format!("READY=1\nSTATUS={serving}; the last reload failed and the running configuration is kept (see the journal)\n")
    );

    // SIGTERM drains (the REGISTER is still unanswered); a second stops.
    sipadmit.stop();
    assert_eq!(next(), "STOPPING=1\nSTATUS=draining\n");
}
