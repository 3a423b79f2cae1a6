//! CPU time HEP export (`mirror = "all"`) adds per relayed REGISTER, on its
//! own: no SIP is parsed or relayed, only what the dispatcher hands the
//! export for one REGISTER (the REGISTER received and sent, its 200
//! received and sent, its decision record) and what the exporter task then
//! does (encode, `sendmmsg` to a UDP collector on loopback). The runtime
//! is single-threaded, as in `sipadmit run`; its thread's CPU time (user +
//! system, `getrusage(RUSAGE_THREAD)`) is measured over REGISTERs paced
//! at a given rate, with export on and then off (the same loop with an off
//! handle), and the difference divided by the REGISTERs. The collector is
//! a thread that drains its socket every 10 ms (a collector on another
//! host costs the sender no wake-up).
//!
//! Run with: `cargo run --release --example hep_export_cost [-- RATE
//! SECONDS udp|tcp]` (default 1,000 REGISTERs per second for 10 s, to a
//! UDP collector; `tcp`: to a TCP collector, a thread reading its
//! connection).

use std::borrow::Cow;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use nix::sys::resource::{getrusage, UsageWho};
use sipadmit::classify::{Category, Support};
use sipadmit::config::{Endpoint, HepSettings, Mirror};
use sipadmit::observe::decision_log::{DecisionKind, Leg};
use sipadmit::observe::metrics::{HepPayload, Metrics};
use sipadmit::observe::{DecisionRecord, Hep};
use sipadmit::policy::{Action, Mode, SessionRole};
use sipadmit::transport::Transport;
use sipadmit::vocabulary::{Inbound, LocalAddr, PeerAddr};

const REGISTER: &[u8] = include_bytes!("../tests/fixtures/lync2013-register-tls.sip");

fn ok_for(register: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(register);
    let headers: String = text
        .split("\r\n")
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    Bytes::from(format!(
        "SIP/2.0 200 OK\r\n{headers}Contact: <sip:alice@192.0.2.7:5061;transport=tls>;expires=3600\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn record(n: u64) -> DecisionRecord {
    DecisionRecord {
        ts: Timestamp::now(),
        transport: Transport::Udp,
        source: "192.0.2.7:5062".parse().unwrap(),
        local: Some("192.0.2.1:5060".parse().unwrap()),
        leg: Some(Leg::FromClient),
        method: "REGISTER".into(),
        call_id: format!("{n}-a84b4c76e66710@192.0.2.7"),
        from: "sip:alice@contoso.com".into(),
        to: "sip:alice@contoso.com".into(),
        request_uri: "sip:contoso.com".into(),
        user_agent: Some("UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)".into()),
        client: "lync-2013".into(),
        sender_client: "lync-2013".into(),
        category: Category::Desktop,
        support: Support::Supported,
        role: SessionRole::None,
        kind: Some(DecisionKind::Policy),
        action: Action::Allow,
        rule: Cow::Borrowed("supported"),
        client_rule: "lync-2013#1".into(),
        status: None,
        mode: Mode::Enforce,
        would_reject: false,
        generation: 1,
        spiral: false,
        after_challenge: false,
        unregister: false,
        undelivered: false,
    }
}

/// A TCP collector: a thread reading its one connection; counts bytes.
fn tcp_collector(got: Arc<AtomicU64>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut buffer = vec![0u8; 1 << 20];
        while let Ok(n) = std::io::Read::read(&mut stream, &mut buffer) {
            if n == 0 {
                return;
            }
            got.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    addr
}

/// A UDP collector that drains its socket every 10 ms; counts packets.
fn collector(stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            while socket.recv(&mut buffer).is_ok() {
                got.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    addr
}

fn thread_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// Hand `hep` what one REGISTER's relay hands it, `registers` times at
/// `rate` per second; the runtime thread's CPU time.
async fn run(hep: &Hep, rate: u64, registers: u64) -> Duration {
    let client: SocketAddr = "192.0.2.7:5062".parse().unwrap();
    let local: LocalAddr = "127.0.0.1:5060".parse().unwrap();
    let registrar: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let register = Bytes::from_static(REGISTER);
    let ok = ok_for(REGISTER);
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let started = thread_cpu();
    for n in 0..registers {
        ticks.tick().await;
        // As the transports make them: a fresh buffer per message.
        let inbound = Inbound {
            bytes: Bytes::copy_from_slice(&register),
            transport: Transport::Udp,
            source: PeerAddr(client),
            local,
            connection: None,
            leg: Leg::FromClient,
        };
        hep.received(&inbound);
        hep.decision(&record(n), local);
        hep.sent(
            Transport::Udp,
            None,
            registrar,
            &Bytes::copy_from_slice(&register),
        );
        let answer = Inbound {
            bytes: Bytes::copy_from_slice(&ok),
            source: PeerAddr(registrar),
            leg: Leg::FromRegistrar,
            ..inbound
        };
        hep.received(&answer);
        hep.sent(Transport::Udp, Some(local), client, &answer.bytes);
    }
    thread_cpu() - started
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(1000, |a| a.parse().expect("RATE"));
    let seconds: u64 = args.next().map_or(10, |a| a.parse().expect("SECONDS"));
    let transport = match args.next().as_deref() {
        None | Some("udp") => Transport::Udp,
        Some("tcp") => Transport::Tcp,
        Some(other) => panic!("{other}: udp or tcp"),
    };
    let registers = rate * seconds;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop, got) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let at = match transport {
        Transport::Udp => collector(stop.clone(), got.clone()),
        _ => tcp_collector(got.clone()),
    };
    runtime.block_on(async {
        let metrics = Arc::new(Metrics::default());
        let settings = HepSettings {
            collector: Some(Endpoint {
                transport,
                addr: at,
            }),
            mirror: Mirror::All,
            ..HepSettings::default()
        };
        let locals = vec![(Transport::Udp, "127.0.0.1:5060".parse().unwrap())];
        let off = run(&Hep::off(), rate, registers).await;
        let (hep, exporter) = Hep::start(&settings, locals, metrics.clone()).unwrap();
        let on = run(&hep, rate, registers).await;
        drop(hep);
        exporter.finish(Duration::from_secs(5)).await;
        let per = |d: Duration| d.as_secs_f64() * 1e6 / registers as f64;
        println!(
            "{registers} REGISTERs at {rate}/s: runtime thread CPU per REGISTER: export off {:.2} us, on {:.2} us, export {:.2} us",
            per(off),
            per(on),
            per(on) - per(off)
        );
        println!(
            "exported: sip {}, decision {}; send failures {}",
            metrics.hep_exported(HepPayload::Sip),
            metrics.hep_exported(HepPayload::Decision),
            metrics.hep_send_failures()
        );
    });
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let unit = if transport == Transport::Udp {
        "packets"
    } else {
        "bytes"
    };
    println!("collector received {} {unit}", got.load(Ordering::Relaxed));
}
