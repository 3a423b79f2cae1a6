//! HEPv3 export (`[hep]`) end to end, on loopback: SIPp and a TLS client
//! go through sipadmit to Kamailio while sipadmit mirrors what it receives
//! and sends, and its decisions, to a collector. Decoded by two
//! independent readers:
//!
//! - `tshark` (with the HEPv3 dissector of `tests/e2e/hep3.lua`: Debian
//!   12's Wireshark has none) from a pcap of what a test collector
//!   received: every chunk checked, SIP payloads handed to Wireshark's SIP
//!   dissector;
//! - `sngrep -L` (Debian `sngrep`), a HEP collector of its own, which
//!   checks the auth key and writes what it accepts as a pcap read back
//!   with `tshark`.
//!
//! Also: a TLS client's messages are exported decrypted (IP protocol 22,
//! as Kamailio does) to a TCP collector; relaying goes on while a TCP
//! collector is down (counted, `promtool` accepts the metrics) and the
//! export resumes when it is back.
//!
//! Needs `kamailio`, `sipp`, `tshark`, `sngrep` and `promtool` (Debian
//! `kamailio`, `sip-tester`, `tshark`, `sngrep`, `prometheus`); fails under
//! CI=true when one is missing, skips with a message otherwise.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::admin_client::{http, sample};
use common::external::{
    free_tcp_port, free_udp_port, require_tool, Kamailio, KamailioOptions, Sipp, UA_LYNC_2013,
    UA_LYNC_MOBILE,
};
use common::hep::{tshark_decode, Collector, Decoded};
use common::TestProxy;
use serde_json::Value;

/// The longest a SIPp run, or a wait for packets, may take.
const BOUND: Duration = Duration::from_secs(20);
/// A collector is done once nothing has arrived for this long.
const QUIET: Duration = Duration::from_millis(700);

/// A config exporting everything to `collector` (probes off: only the
/// test's traffic is exported).
fn config(collector: &str, auth_key: &str) -> String {
    format!(
        "[proxy]\nupstream_probe_secs = 0\n\
         [response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n\
         [hep]\ncollector = \"{collector}\"\ncapture_id = 2001\nauth_key = \"{auth_key}\"\nmirror = \"all\"\n"
    )
}

/// Microseconds since the epoch of a decoded packet's HEP timestamp.
fn micros(p: &Decoded) -> u64 {
    let seconds: u64 = p.field("hep3.ts_sec").parse().unwrap();
    let micros: u64 = p.field("hep3.ts_usec").parse().unwrap();
    seconds * 1_000_000 + micros
}

fn epoch_micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The one SIP packet from `source` to `destination` that `matches`.
fn sip(
    packets: &[Decoded],
    source: SocketAddr,
    destination: SocketAddr,
    matches: impl Fn(&Decoded) -> bool,
) -> &Decoded {
    let found: Vec<&Decoded> = packets
        .iter()
        .filter(|p| p.get("hep3.proto_type") == Some("1"))
        .filter(|p| p.source() == source && p.destination() == destination && matches(p))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{source} -> {destination}: {found:#?}\nin {packets:#?}"
    );
    found[0]
}

fn method(name: &'static str) -> impl Fn(&Decoded) -> bool {
    move |p| p.get("sip.Method") == Some(name)
}

fn status(code: &'static str, of: &'static str) -> impl Fn(&Decoded) -> bool {
    move |p| p.get("sip.Status-Code") == Some(code) && p.get("sip.CSeq.method") == Some(of)
}

/// The decision logs (type 100) correlated with `call_id`, as JSON.
fn logs(packets: &[Decoded], call_id: &str) -> Vec<Value> {
    packets
        .iter()
        .filter(|p| p.get("hep3.proto_type") == Some("100"))
        .filter(|p| p.get("hep3.correlation_id") == Some(call_id))
        .map(|p| serde_json::from_str(p.field("hep3.log")).unwrap())
        .collect()
}

#[test]
fn a_register_and_a_rejected_call_are_exported_and_decode_in_tshark() {
    let Some(tshark) = require_tool("tshark") else {
        return;
    };
    if require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let collector = Collector::udp();
    let at = collector.addr;
    let started = SystemTime::now();
    let proxy = TestProxy::start(
        &config(&format!("udp:{at}"), "s3cret"),
        "127.0.0.1",
        &kam.upstream_udp(),
    );
    let mut register = Sipp::register("hep-alice", UA_LYNC_2013, 200)
        .remote(proxy.udp)
        .label("hep-register");
    let alice: SocketAddr = ([127, 0, 0, 1], register.port()).into();
    register.run_with_timeout(BOUND).assert_success();
    let mut call = Sipp::call("sip:helpdesk@contoso.com", UA_LYNC_MOBILE, 403)
        .remote(proxy.udp)
        .label("hep-mobile-caller");
    let mobile: SocketAddr = ([127, 0, 0, 1], call.port()).into();
    call.run_with_timeout(BOUND).assert_success();
    let records = proxy.records();
    let (sipadmit, registrar) = (proxy.udp, kam.udp_addr());
    let metrics = proxy.stop();
    let packets = collector.finish(QUIET, BOUND);
    let ended = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let decoded = tshark_decode(&tshark, dir.path(), at, &packets);

    assert_eq!(decoded.len(), packets.len());
    for p in &decoded {
        p.assert_well_formed();
        assert_eq!(
            (p.field("hep3.capture_id"), p.field("hep3.auth_key")),
            ("2001", "s3cret")
        );
        assert_eq!(p.field("hep3.ip_family"), "2");
        assert!(
            (epoch_micros(started)..=epoch_micros(ended)).contains(&micros(p)),
            "{p:#?}"
        );
    }
    // The registration, hop by hop: in from SIPp, out to Kamailio, its
    // 200 in from Kamailio, out to SIPp; one Call-ID, in time order.
    let register_in = sip(&decoded, alice, sipadmit, method("REGISTER"));
    let call_id = register_in.field("sip.Call-ID");
    let same_call = |p: &Decoded| p.get("sip.Call-ID") == Some(call_id);
    let register_out = sip(&decoded, sipadmit, registrar, |p| {
        method("REGISTER")(p) && same_call(p)
    });
    let ok_in = sip(&decoded, registrar, sipadmit, |p| {
        status("200", "REGISTER")(p) && same_call(p)
    });
    let ok_out = sip(&decoded, sipadmit, alice, |p| {
        status("200", "REGISTER")(p) && same_call(p)
    });
    let hops = [register_in, register_out, ok_in, ok_out];
    assert!(hops.iter().all(|p| p.field("hep3.ip_proto") == "17"));
    assert!(
        hops.windows(2).all(|w| micros(w[0]) <= micros(w[1])),
        "{hops:#?}"
    );
    let allowed = logs(&decoded, call_id);
    assert_eq!(allowed.len(), 1, "{allowed:#?}");
    assert_eq!(allowed[0]["action"], "allow");

    // The mobile caller: its INVITE in, the 403 out, nothing to Kamailio,
    // and the verdict correlated with the call.
    let invite = sip(&decoded, mobile, sipadmit, method("INVITE"));
    let invite_id = invite.field("sip.Call-ID");
    sip(&decoded, sipadmit, mobile, status("403", "INVITE"));
    sip(&decoded, mobile, sipadmit, method("ACK"));
    assert!(!decoded
        .iter()
        .any(|p| p.get("sip.Call-ID") == Some(invite_id) && p.destination() == registrar));
    let verdict = logs(&decoded, invite_id);
    assert_eq!(verdict.len(), 1, "{verdict:#?}");
    let record = records
        .iter()
        .find(|r| r["call_id"] == invite_id)
        .expect("the INVITE's record");
    assert_eq!(&verdict[0], record, "the log carries the decision record");
    assert_eq!(
        (verdict[0]["action"].as_str(), verdict[0]["rule"].as_str()),
        (Some("reject"), Some("caller.unsupported"))
    );
    let log = decoded
        .iter()
        .find(|p| p.get("hep3.correlation_id") == Some(invite_id))
        .unwrap();
    assert_eq!((log.source(), log.destination()), (mobile, sipadmit));

    // Every record and every message went out, and was counted.
    let all_logs = decoded
        .iter()
        .filter(|p| p.get("hep3.proto_type") == Some("100"))
        .count();
    assert_eq!(all_logs, records.len());
    use sipadmit::observe::metrics::HepPayload;
    assert_eq!(
        metrics.hep_exported(HepPayload::Decision),
        records.len() as u64
    );
    assert_eq!(
        metrics.hep_exported(HepPayload::Sip) as usize,
        decoded.len() - all_logs
    );
    assert_eq!(metrics.hep_send_failures(), 0);
}

/// `sngrep` listening for HEP on `port`, writing what it accepts to
/// `pcap`, with `eep.listen.pass` set to `key`. Stopped with SIGTERM (so
/// the pcap is complete) by [`stop_sngrep`].
fn start_sngrep(sngrep: &std::path::Path, dir: &std::path::Path, port: u16, key: &str) -> Child {
    let rc = dir.join("sngreprc");
    std::fs::write(&rc, format!("set eep.listen.pass {key}\n")).unwrap();
    let child = Command::new(sngrep)
        .args(["-F", "-f"])
        .arg(&rc)
        .args(["-N", "-q", "-L", &format!("udp:127.0.0.1:{port}"), "-O"])
        .arg(dir.join("sngrep.pcap"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sngrep runs");
    // Listening once the port is taken.
    let deadline = Instant::now() + BOUND;
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "sngrep never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop_sngrep(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + BOUND;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sngrep did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Register `user` through a sipadmit exporting to `collector` with
/// `auth_key`; the proxy is stopped (its export sent) before returning.
/// Returns SIPp's address, sipadmit's and the registrar's.
fn register_through(
    kam: &Kamailio,
    collector: &str,
    auth_key: &str,
    user: &str,
) -> [SocketAddr; 3] {
    let proxy = TestProxy::start(
        &config(collector, auth_key),
        "127.0.0.1",
        &kam.upstream_udp(),
    );
    let mut register = Sipp::register(user, UA_LYNC_2013, 200)
        .remote(proxy.udp)
        .label(user);
    let sipp: SocketAddr = ([127, 0, 0, 1], register.port()).into();
    register.run_with_timeout(BOUND).assert_success();
    let sipadmit = proxy.udp;
    proxy.stop();
    [sipp, sipadmit, kam.udp_addr()]
}

#[test]
fn sngrep_receives_the_export_and_refuses_a_wrong_auth_key() {
    let (Some(sngrep), Some(tshark)) = (require_tool("sngrep"), require_tool("tshark")) else {
        return;
    };
    if require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let sngrep = start_sngrep(&sngrep, dir.path(), port, "s3cret");
    let started = SystemTime::now();
    let collector = format!("udp:127.0.0.1:{port}");
    let [alice, sipadmit, registrar] = register_through(&kam, &collector, "s3cret", "hep-sngrep");
    let [mallory, ..] = register_through(&kam, &collector, "not-the-key", "hep-wrong-key");
    std::thread::sleep(QUIET);
    stop_sngrep(sngrep);
    let ended = SystemTime::now();

    let output = Command::new(&tshark)
        .args(["-n", "-r"])
        .arg(dir.path().join("sngrep.pcap"))
        .args(["-Y", "sip", "-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
        ])
        .args([
            "-e",
            "udp.dstport",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.from.user",
        ])
        .output()
        .expect("tshark runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    // (sender, receiver, method or status, From user) of each SIP message.
    let mut seen = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let at: f64 = f[0].parse().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at);
        assert!(
            at >= started - Duration::from_secs(1) && at <= ended,
            "{line}"
        );
        let address =
            |ip: &str, port: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
        let what = if f[5].is_empty() { f[6] } else { f[5] };
        seen.push((
            address(f[1], f[2]),
            address(f[3], f[4]),
            what.to_owned(),
            f[7].to_owned(),
        ));
    }
    let user = "hep-sngrep".to_owned();
    for hop in [
        (alice, sipadmit, "REGISTER"),
        (sipadmit, registrar, "REGISTER"),
        (registrar, sipadmit, "200"),
        (sipadmit, alice, "200"),
    ] {
        let wanted = (hop.0, hop.1, hop.2.to_owned(), user.clone());
        assert!(seen.contains(&wanted), "{wanted:?} not in {seen:#?}");
    }
    assert!(
        !seen
            .iter()
            .any(|s| s.3 == "hep-wrong-key" || s.0 == mallory || s.1 == mallory),
        "sngrep accepted packets with the wrong auth key: {seen:#?}"
    );
}

#[tokio::test]
async fn a_tls_clients_messages_are_exported_decrypted_to_a_tcp_collector() {
    let Some(tshark) = require_tool("tshark") else {
        return;
    };
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = common::tls::Pki::get().write(dir.path());
    let collector = Collector::tcp_on("127.0.0.1:0".parse().unwrap());
    let at = collector.addr;
    let toml = format!(
        "{}[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        config(&format!("tcp:{at}"), "s3cret"),
        files.server.0.display(),
        files.server.1.display()
    );
    let proxy = TestProxy::start_with_tls(&toml, &kam.upstream_udp());
    let tls_at = proxy.tls.expect("a tls: listener");
    let stream = common::tls::TestClient::modern(&files.ca)
        .connect(tls_at)
        .await
        .unwrap();
    let client = stream.get_ref().local_addr().unwrap();
    let agent = common::sip_stream::Agent::new("hep-tls", UA_LYNC_2013, client, "TLS");
    let mut conn = common::sip_stream::SipStream::new(stream);
    conn.send(&agent.register("hep-tls-reg", 1)).await.unwrap();
    let answer = conn
        .recv_starting("SIP/2.0", BOUND)
        .await
        .message("the 200");
    assert_eq!(common::sip_stream::status(&answer), 200, "{answer}");
    let (sipadmit_udp, registrar) = (proxy.udp, kam.udp_addr());
    drop(conn);
    proxy.stop();
    let packets = collector.finish(QUIET, BOUND);
    let decoded = tshark_decode(&tshark, dir.path(), at, &packets);

    for p in &decoded {
        p.assert_well_formed();
    }
    // Decrypted: Wireshark's SIP dissector reads the REGISTER and its 200
    // on the TLS leg (IP protocol 22), and the REGISTER relayed over UDP.
    let tls_in = sip(&decoded, client, tls_at, method("REGISTER"));
    assert_eq!(tls_in.field("hep3.ip_proto"), "22");
    assert_eq!(tls_in.field("sip.Call-ID"), "hep-tls-reg");
    let tls_out = sip(&decoded, tls_at, client, status("200", "REGISTER"));
    assert_eq!(tls_out.field("hep3.ip_proto"), "22");
    let relayed = sip(&decoded, sipadmit_udp, registrar, method("REGISTER"));
    assert_eq!(relayed.field("hep3.ip_proto"), "17");
    let verdict = logs(&decoded, "hep-tls-reg");
    assert_eq!(verdict.len(), 1, "{verdict:#?}");
    assert_eq!(verdict[0]["transport"], "tls");
}

#[test]
fn relaying_goes_on_while_a_tcp_collector_is_down_and_export_resumes_when_it_is_back() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    if require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let down: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        config(&format!("tcp:{down}"), "s3cret")
    );
    let proxy = TestProxy::start(&toml, "127.0.0.1", &kam.upstream_udp());
    // Down: every REGISTER still gets its 200.
    Sipp::register("hep-down", UA_LYNC_2013, 200)
        .remote(proxy.udp)
        .calls(10)
        .label("hep-down")
        .run_with_timeout(BOUND)
        .assert_success();
    let admin = proxy.admin.expect("an admin listener");
    let metrics = |series: &str| {
        let (code, text) = http(admin, "GET", "/metrics", BOUND);
        assert_eq!(code, 200);
        (
            sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}")),
            text,
        )
    };
    let (failures, text) = metrics("sipadmit_hep_send_failures_total");
    assert!(failures > 0.0, "{text}");
    assert_eq!(
        sample(&text, r#"sipadmit_hep_exported_total{type="sip"}"#),
        Some(0.0)
    );
    let dir = tempfile::tempdir().unwrap();
    common::admin_client::assert_promtool_accepts(&promtool, dir.path(), &text);

    // Back: after the link's backoff, what comes next reaches it.
    let collector = Collector::tcp_on(down);
    let deadline = Instant::now() + Duration::from_secs(45);
    while collector.count() == 0 {
        assert!(Instant::now() < deadline, "the export never resumed");
        Sipp::register("hep-back", UA_LYNC_2013, 200)
            .remote(proxy.udp)
            .label("hep-back")
            .run_with_timeout(BOUND)
            .assert_success();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (exported, _) = metrics(r#"sipadmit_hep_exported_total{type="sip"}"#);
    assert!(exported > 0.0);
    proxy.stop();
    assert!(!collector.finish(QUIET, BOUND).is_empty());
}
