//! Draining (`limits.drain_secs`): the first SIGTERM takes the instance
//! out of the pool without costing a request. New requests from clients get
//! `503` with Retry-After (recorded, rule `proxy.draining`), OPTIONS to
//! sipadmit itself `503`; requests in dialogs and what was already relayed
//! keep flowing; the process stops once nothing is pending, or at once on
//! a second SIGTERM.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{field, Sipadmit, BOUND};
use common::sip_stream::read_status;
use common::udp_registrar::{Behaviour, Registrar};
use common::TestProxy;

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

/// A request from `from` over `transport`; `to_tag` makes it one inside a
/// dialog.
fn request(method: &str, transport: &str, from: SocketAddr, n: u32, to_tag: &str) -> String {
    format!(
        "{method} sip:alice@contoso.com SIP/2.0\r\nVia: SIP/2.0/{transport} {from};branch=z9hG4bK-drain-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=f{n}\r\nTo: <sip:alice@contoso.com>{to_tag}\r\n\
         Call-ID: drain-{n}@test\r\nCSeq: {n} {method}\r\nContact: <sip:alice@{from}>\r\n\
         User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn answer(client: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65536];
    let (n, _) = client.recv_from(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A proxy (`drain_secs = 20`) in front of a stub registrar that treats
/// requests as `behaviour` says, and a UDP client of the proxy.
fn draining_setup(behaviour: Behaviour) -> (Registrar, TestProxy, UdpSocket) {
    let registrar = Registrar::start_with(behaviour);
    let proxy = TestProxy::start(
        "[limits]\ndrain_secs = 20\n",
        "127.0.0.1",
        &format!("udp:{}", registrar.addr),
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    (registrar, proxy, client)
}

#[test]
fn a_draining_instance_sends_new_requests_elsewhere_and_lets_dialogs_finish() {
    let (_registrar, proxy, client) = draining_setup(Behaviour::AnswerAll);
    let me = client.local_addr().unwrap();
    let send = |message: &str| client.send_to(message.as_bytes(), proxy.udp).unwrap();
    send(&request("REGISTER", "UDP", me, 1, ""));
    assert!(answer(&client).starts_with("SIP/2.0 200"));

    proxy.start_drain();
    // A load balancer's OPTIONS to sipadmit itself: 503 once the drain has
    // begun (the signal is taken up by a task of the instance).
    let ping = |n: u32| {
        format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ping-{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:lb@{me}>;tag=lb\r\nTo: <sip:{addr}>\r\n\
             Call-ID: ping-{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            addr = proxy.udp
        )
    };
    let until = Instant::now() + BOUND;
    for n in 0.. {
        send(&ping(n));
        let health = answer(&client);
        if health.starts_with("SIP/2.0 503") {
            assert!(health.contains("draining"), "{health}");
            break;
        }
        assert!(health.starts_with("SIP/2.0 200"), "{health}");
        assert!(Instant::now() < until, "the drain did not begin");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new request: 503, Retry-After (this instance is gone by then) and
    // a Warning saying why.
    send(&request("REGISTER", "UDP", me, 2, ""));
    let refused = answer(&client);
    assert!(
        refused.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{refused}"
    );
    assert!(refused.contains("\r\nRetry-After: 20\r\n"), "{refused}");
    assert!(refused.contains("draining"), "{refused}");
    // Inside a dialog: relayed, and answered by the registrar.
    send(&request("BYE", "UDP", me, 3, ";tag=callee"));
    let relayed = answer(&client);
    assert!(relayed.starts_with("SIP/2.0 200"), "{relayed}");

    // Nothing pending: it stops by itself, a quiet second later.
    assert!(
        proxy.stopped_within(Duration::from_secs(10)),
        "the drained instance did not stop"
    );
    // Stopped: the writer has written every record.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&proxy.decision_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let metrics = proxy.stop();
    assert_eq!(metrics.protocol_answers("proxy.draining", Some(503)), 1);
    let draining: Vec<_> = records
        .iter()
        .filter(|r| r["rule"] == "proxy.draining")
        .collect();
    assert_eq!(draining.len(), 1, "{records:#?}");
    assert_eq!(draining[0]["kind"], "protocol");
    assert_eq!(draining[0]["call_id"], "drain-2@test");
}

/// Wait (bounded) until `proxy` answers an OPTIONS to itself 503
/// "draining": the drain has begun.
fn wait_until_draining(proxy: &TestProxy) {
    let prober = UdpSocket::bind("127.0.0.1:0").unwrap();
    prober.set_read_timeout(Some(BOUND)).unwrap();
    let me = prober.local_addr().unwrap();
    let until = Instant::now() + BOUND;
    for n in 0.. {
        let ping = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-probe-{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:lb@{me}>;tag=lb\r\nTo: <sip:{addr}>\r\n\
             Call-ID: probe-{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            addr = proxy.udp
        );
        prober.send_to(ping.as_bytes(), proxy.udp).unwrap();
        if answer(&prober).starts_with("SIP/2.0 503") {
            return;
        }
        assert!(Instant::now() < until, "the drain did not begin");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A UDP client's REGISTER relayed before the drain and not answered yet
/// is under way: its retransmission is relayed again (and the registrar's
/// answer reaches the client), not refused like a new request, which a
/// client or a dispatcher in front would take for a failure of a
/// registration the registrar makes anyway.
#[test]
fn a_register_retransmitted_while_under_way_is_relayed_during_the_drain() {
    // The registrar loses the first copy of each request: the REGISTER is
    // pending when the drain begins.
    let (registrar, proxy, client) = draining_setup(Behaviour::IgnoreFirstCopy);
    let me = client.local_addr().unwrap();
    let register = request("REGISTER", "UDP", me, 1, "");
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let until = Instant::now() + BOUND;
    while registrar
        .received
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < until, "the REGISTER was not relayed");
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.start_drain();
    wait_until_draining(&proxy);

    // The client's retransmission (the same request).
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let answered = answer(&client);
    assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
    // A new REGISTER is refused.
    client
        .send_to(request("REGISTER", "UDP", me, 2, "").as_bytes(), proxy.udp)
        .unwrap();
    let refused = answer(&client);
    assert!(refused.starts_with("SIP/2.0 503"), "{refused}");
    assert!(
        proxy.stopped_within(Duration::from_secs(10)),
        "the drained instance did not stop"
    );
    let metrics = proxy.stop();
    assert_eq!(metrics.protocol_answers("proxy.draining", Some(503)), 1);
}

/// `sipadmit run` with a `tcp:` and a `udp:` listener on free ports of
/// 127.0.0.1, relaying to `registrar`; the TCP listener's address.
fn start(dir: &std::path::Path, registrar: &Registrar, drain_secs: u64) -> (Sipadmit, SocketAddr) {
    let (sipadmit, listeners) = start_toward(dir, &format!("udp:{}", registrar.addr), drain_secs);
    (sipadmit, listeners.tcp)
}

/// The addresses of sipadmit's two listeners and its admin listener.
struct Listeners {
    tcp: SocketAddr,
    udp: SocketAddr,
    admin: SocketAddr,
}

/// [`start`], relaying to `upstream` (`udp:` or `tcp:` and an address);
/// the listeners' addresses.
fn start_toward(dir: &std::path::Path, upstream: &str, drain_secs: u64) -> (Sipadmit, Listeners) {
    let config = dir.join("drain.toml");
    std::fs::write(
        &config,
        format!("[limits]\ndrain_secs = {drain_secs}\ntimer_t1_ms = 200\n"),
    )
    .unwrap();
    let mut sipadmit = Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"])
            .args(["--upstream", upstream])
            .args(["--admin", "127.0.0.1:0"])
            .args([
                "--decision-log",
                dir.join("decisions.log").to_str().unwrap(),
            ])
            .env("RUST_LOG", "info"),
    );
    let (mut tcp, mut udp, mut admin) = (None, None, None);
    while tcp.is_none() || udp.is_none() || admin.is_none() {
        let line = sipadmit.wait_for("listening");
        let addr: SocketAddr = field(&line, "addr").parse().unwrap();
        if line.contains("admin listening") {
            admin = Some(addr);
        } else if field(&line, "transport") == "tcp" {
            tcp = Some(addr);
        } else {
            udp = Some(addr);
        }
        sipadmit.lines.retain(|l| l != &line);
    }
    let (tcp, udp, admin) = (tcp.unwrap(), udp.unwrap(), admin.unwrap());
    (sipadmit, Listeners { tcp, udp, admin })
}

/// A REGISTER sent over a new TCP connection to `tcp`, once `registrar`
/// has received it (relayed over UDP): the connection, for its answers.
fn register_over_tcp(tcp: SocketAddr, registrar: &Registrar) -> BufReader<TcpStream> {
    let mut conn = TcpStream::connect(tcp).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let reader = BufReader::new(conn.try_clone().unwrap());
    let me = conn.local_addr().unwrap();
    conn.write_all(request("REGISTER", "TCP", me, 1, "").as_bytes())
        .unwrap();
    while registrar
        .received
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    reader
}

#[test]
fn sigterm_waits_for_a_request_under_way_then_stops_and_a_second_stops_at_once() {
    // The registrar loses the first copy of each request: the REGISTER is
    // still pending (its client transaction retransmits after T1) when
    // SIGTERM comes.
    let registrar = Registrar::start_with(Behaviour::IgnoreFirstCopy);
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, tcp) = start(dir.path(), &registrar, 20);
    let mut reader = register_over_tcp(tcp, &registrar);
    let signalled = Instant::now();
    sipadmit.signal("TERM");
    sipadmit.wait_for("draining");
    // The retransmission is answered, and its 200 reaches the client.
    let status = read_status(&mut reader);
    assert!(status.starts_with("SIP/2.0 200"), "{status}");
    let stderr = sipadmit.exited();
    let took = signalled.elapsed();
    assert!(stderr.contains("drained: nothing pending"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}\n{stderr}");
    assert!(stderr.contains("decision log closed"), "{stderr}");

    // A registrar that never answers: the drain would last drain_secs; a
    // second SIGTERM stops at once.
    let silent = Registrar::start_with(Behaviour::Silent);
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, tcp) = start(dir.path(), &silent, 60);
    let mut conn = TcpStream::connect(tcp).unwrap();
    let me = conn.local_addr().unwrap();
    conn.write_all(request("REGISTER", "TCP", me, 1, "").as_bytes())
        .unwrap();
    while silent.received.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    sipadmit.signal("TERM");
    sipadmit.wait_for("draining");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sipadmit.child.try_wait().unwrap().is_none(),
        "a REGISTER is pending: the drain goes on"
    );
    let second = Instant::now();
    sipadmit.signal("TERM");
    sipadmit.wait_for("shutting down");
    while sipadmit.child.try_wait().unwrap().is_none() {
        assert!(second.elapsed() < Duration::from_secs(5), "no stop at once");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_drain_that_runs_out_answers_408_to_the_stream_clients_still_waiting() {
    // A registrar that never answers, and a drain of 1 s: the TCP client's
    // REGISTER (relayed over UDP, its client transaction kept) gets a final
    // answer and a record before the connection closes, not just the close.
    let silent = Registrar::start_with(Behaviour::Silent);
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, tcp) = start(dir.path(), &silent, 1);
    let mut reader = register_over_tcp(tcp, &silent);
    sipadmit.signal("TERM");
    let status = read_status(&mut reader);
    assert!(status.starts_with("SIP/2.0 408"), "{status}");
    let stderr = sipadmit.exited();
    assert!(stderr.contains("limits.drain_secs ran out"), "{stderr}");
    // The drain's 408, not a timeout's: 1 s is no 64*T1.
    assert!(
        stderr.contains("no final response from the registrar when limits.drain_secs ran out"),
        "{stderr}"
    );
    assert!(!stderr.contains("within 64*T1"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    assert!(log.contains("\"rule\":\"proxy.request-timeout\""), "{log}");
    assert!(!log.contains("undelivered"), "{log}");
}

/// A TCP client's call ringing at a UDP registrar is pending: the drain
/// waits for it, and when `limits.drain_secs` runs out the registrar gets
/// its CANCEL and the caller a `408` before its connection closes (not
/// just the close, with the callee left ringing). The registrar's `200` to
/// the CANCEL and its `487` are consumed (the 487 acknowledged).
#[test]
fn a_drain_that_runs_out_cancels_a_stream_clients_call_ringing_at_a_udp_registrar() {
    let registrar = Registrar::start_with(Behaviour::RingThenAnswerCancel);
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, tcp) = start(dir.path(), &registrar, 2);
    let mut conn = TcpStream::connect(tcp).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let me = conn.local_addr().unwrap();
    conn.write_all(request("INVITE", "TCP", me, 1, "").as_bytes())
        .unwrap();
    let ringing = read_status(&mut reader);
    assert!(ringing.starts_with("SIP/2.0 180"), "{ringing}");
    let signalled = Instant::now();
    sipadmit.signal("TERM");
    let draining = sipadmit.wait_for("draining: new requests");
    assert_eq!(field(&draining, "client_transactions"), "1", "{draining}");
    let status = read_status(&mut reader);
    let took = signalled.elapsed();
    assert!(status.starts_with("SIP/2.0 408"), "{status}");
    assert!(took >= Duration::from_secs(2), "waited for: {took:?}");
    let stderr = sipadmit.exited();
    assert!(
        stderr.contains("a call still rang when limits.drain_secs ran out"),
        "{stderr}"
    );
    let requests = registrar.requests.lock().unwrap().clone();
    let cancels = requests.iter().filter(|r| r.starts_with("CANCEL ")).count();
    assert_eq!(cancels, 1, "{requests:#?}");
    // The 487 comes back within the drain's last 200 ms on loopback, but
    // a loaded machine may stop first: at most one ACK, never a second.
    let acks = requests.iter().filter(|r| r.starts_with("ACK ")).count();
    assert!(acks <= 1, "{requests:#?}");
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    assert!(log.contains("\"rule\":\"proxy.request-timeout\""), "{log}");
}

/// An agent registered over TCP through a sipadmit (`drain_secs = 20`)
/// relaying to a UDP registrar stub, ringing with a call a caller
/// elsewhere (another node of the pool) sent along its Path; then SIGTERM.
struct RingingAgent {
    sipadmit: Sipadmit,
    agent: TcpStream,
    caller: UdpSocket,
    /// The INVITE as the agent read it.
    offered: String,
    _registrar: Registrar,
    _dir: tempfile::TempDir,
}

impl RingingAgent {
    fn start() -> Self {
        use common::sip_stream::{header_values, take_message, uas_response};
        use std::io::Read;
        let registrar = Registrar::start();
        let dir = tempfile::tempdir().unwrap();
        let (mut sipadmit, listeners) =
            start_toward(dir.path(), &format!("udp:{}", registrar.addr), 20);
        // The agent registers over TCP; the registrar stub saw its Path.
        let mut agent = TcpStream::connect(listeners.tcp).unwrap();
        agent.set_read_timeout(Some(BOUND)).unwrap();
        let mut reader = BufReader::new(agent.try_clone().unwrap());
        let me = agent.local_addr().unwrap();
        agent
            .write_all(request("REGISTER", "TCP", me, 1, "").as_bytes())
            .unwrap();
        assert!(read_status(&mut reader).starts_with("SIP/2.0 200"));
        let path = {
            let requests = registrar.requests.lock().unwrap();
            let register = requests
                .iter()
                .find(|r| r.starts_with("REGISTER "))
                .unwrap();
            header_values(register, "Path")[0].to_owned()
        };
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        caller.set_read_timeout(Some(BOUND)).unwrap();
        let from = caller.local_addr().unwrap();
        let invite = request("INVITE", "UDP", from, 7, "")
            .replacen(
                "sip:alice@contoso.com",
                &format!("sip:alice@{me};transport=tcp"),
                1,
            )
            .replace(
                "Max-Forwards: 70\r\n",
                &format!("Max-Forwards: 70\r\nRoute: {path}\r\n"),
            );
        caller.send_to(invite.as_bytes(), listeners.udp).unwrap();
        let mut buffer = Vec::new();
        let offered = loop {
            if let Some(message) = take_message(&mut buffer) {
                break message;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = reader
                .read(&mut chunk)
                .expect("the INVITE toward the agent");
            assert!(n > 0, "closed before the INVITE");
            buffer.extend_from_slice(&chunk[..n]);
        };
        assert!(offered.starts_with("INVITE "), "{offered}");
        agent
            .write_all(uas_response(&offered, "180 Ringing", "agent", "").as_bytes())
            .unwrap();
        assert!(answer(&caller).starts_with("SIP/2.0 180"));
        let (status, metrics) =
            common::admin_client::http(listeners.admin, "GET", "/metrics", BOUND);
        assert_eq!(status, 200, "{metrics}");
        assert_eq!(
            common::admin_client::sample(&metrics, "sipadmit_invites_toward_clients"),
            Some(1.0),
            "the call ringing at the agent"
        );
        sipadmit.signal("TERM");
        let draining = sipadmit.wait_for("draining: new requests");
        assert_eq!(field(&draining, "toward_clients"), "1", "{draining}");
        Self {
            sipadmit,
            agent,
            caller,
            offered,
            _registrar: registrar,
            _dir: dir,
        }
    }
}

/// The callee side: a call relayed toward an agent connected over TCP is
/// pending while the agent rings, so a drain does not close its
/// connection under it; the agent's final answer, sent after SIGTERM, goes
/// back to the caller, and then the drain ends.
#[test]
fn a_drain_waits_for_the_answer_of_a_call_ringing_at_one_of_its_clients() {
    use common::sip_stream::uas_response;
    let mut ringing = RingingAgent::start();
    // Well past the quiet second a drain with nothing pending ends after.
    std::thread::sleep(Duration::from_millis(1800));
    assert!(
        ringing.sipadmit.child.try_wait().unwrap().is_none(),
        "the drain ended with the agent ringing"
    );
    let busy = uas_response(&ringing.offered, "486 Busy Here", "agent", "");
    ringing.agent.write_all(busy.as_bytes()).unwrap();
    let busy = answer(&ringing.caller);
    assert!(busy.starts_with("SIP/2.0 486"), "{busy}");
    let stderr = ringing.sipadmit.exited();
    assert!(stderr.contains("drained: nothing pending"), "{stderr}");
}

/// A ringing agent whose connection closes cannot answer on it: the drain
/// stops waiting for it (trial 33: it waited out `drain_secs`).
#[test]
fn a_drain_does_not_wait_for_an_agent_whose_connection_closed() {
    let ringing = RingingAgent::start();
    let closed = Instant::now();
    drop(ringing.agent);
    let mut sipadmit = ringing.sipadmit;
    let stderr = sipadmit.exited();
    assert!(stderr.contains("drained: nothing pending"), "{stderr}");
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "{:?}",
        closed.elapsed()
    );
}

#[test]
fn a_408_for_a_stream_client_that_has_gone_is_recorded_as_undelivered() {
    // As above, but the TCP client closes its connection while its
    // REGISTER waits: the drain's 408 has nowhere to go, and its record
    // says so rather than that the client was answered.
    let silent = Registrar::start_with(Behaviour::Silent);
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, tcp) = start(dir.path(), &silent, 1);
    drop(register_over_tcp(tcp, &silent));
    sipadmit.signal("TERM");
    let stderr = sipadmit.exited();
    assert!(stderr.contains("limits.drain_secs ran out"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    let timeout = log
        .lines()
        .find(|l| l.contains("\"rule\":\"proxy.request-timeout\""))
        .unwrap_or_else(|| panic!("no 408 record:\n{log}"));
    assert!(timeout.contains("\"status\":408"), "{timeout}");
    assert!(timeout.contains("\"undelivered\":true"), "{timeout}");
    // Counted as a message not sent.
    let stopped = stderr
        .lines()
        .find(|l| l.contains("stopped") && l.contains("counters="))
        .unwrap_or_else(|| panic!("no stop line:\n{stderr}"));
    assert!(stopped.contains("dropped 1,"), "{stopped}");
    // The REGISTER's own record (relayed) was delivered.
    let relayed = log.lines().find(|l| l.contains("\"rule\":\"supported\""));
    assert!(relayed.is_some_and(|l| !l.contains("undelivered")), "{log}");
}

/// A TCP registrar that accepts one connection and reads everything sent
/// on it without ever answering (a stalled registrar); the bytes read so
/// far.
fn silent_tcp_registrar() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = read.clone();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (addr, read)
}

#[test]
fn a_drain_that_runs_out_answers_408_to_what_a_stalled_tcp_registrar_left_unanswered() {
    // A registrar over TCP that reads and never answers: a TCP client's
    // MESSAGE and REGISTER and a UDP client's REGISTER are written to it
    // and wait. The drain waits for them (not "nothing pending"), and when
    // it runs out each client gets a 408, recorded, before sipadmit exits.
    let (registrar, read) = silent_tcp_registrar();
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, Listeners { tcp, udp, .. }) =
        start_toward(dir.path(), &format!("tcp:{registrar}"), 2);
    let mut conn = TcpStream::connect(tcp).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let me = conn.local_addr().unwrap();
    let message = request("MESSAGE", "TCP", me, 1, "");
    let register = request("REGISTER", "TCP", me, 2, "");
    conn.write_all(format!("{message}{register}").as_bytes())
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let from_udp = request("REGISTER", "UDP", client.local_addr().unwrap(), 3, "");
    client.send_to(from_udp.as_bytes(), udp).unwrap();
    let until = Instant::now() + BOUND;
    let written = message.len() + register.len() + from_udp.len();
    while read.load(std::sync::atomic::Ordering::Relaxed) < written {
        assert!(
            Instant::now() < until,
            "the requests did not reach the registrar"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    sipadmit.signal("TERM");
    for _ in 0..2 {
        let status = read_status(&mut reader);
        assert!(status.starts_with("SIP/2.0 408"), "{status}");
    }
    let answered = answer(&client);
    assert!(answered.starts_with("SIP/2.0 408"), "{answered}");
    let stderr = sipadmit.exited();
    assert!(!stderr.contains("nothing pending"), "{stderr}");
    assert!(stderr.contains("limits.drain_secs ran out"), "{stderr}");
    assert!(
        stderr.contains("the registrar had not answered: they are answered 408"),
        "{stderr}"
    );
    assert!(!stderr.contains("answered 503"), "{stderr}");
    assert!(
        stderr.contains("no final response from the registrar when limits.drain_secs ran out"),
        "{stderr}"
    );
    assert!(!stderr.contains("within 64*T1"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    assert_eq!(
        log.matches("\"rule\":\"proxy.request-timeout\"").count(),
        3,
        "{log}"
    );
}

/// A TCP registrar whose callee rings: it answers an INVITE `180`, and
/// when `answers_cancel` a CANCEL `200` and then the INVITE `487` (RFC
/// 3261 9.2). Every message it reads (but sipadmit's OPTIONS probes) is
/// sent on the channel.
fn ringing_tcp_registrar(answers_cancel: bool) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    use common::sip_stream::{take_message, uas_response};
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let (mut buffer, mut chunk, mut invite) = (Vec::new(), [0u8; 16 * 1024], None);
        loop {
            while let Some(message) = take_message(&mut buffer) {
                let mut answer = |request: &str, status: &str| {
                    let response = uas_response(request, status, "callee", "");
                    let _ = conn.write_all(response.as_bytes());
                };
                if message.starts_with("INVITE ") {
                    answer(&message, "180 Ringing");
                    invite = Some(message.clone());
                } else if message.starts_with("CANCEL ") && answers_cancel {
                    answer(&message, "200 OK");
                    if let Some(invite) = &invite {
                        answer(invite, "487 Request Terminated");
                    }
                }
                if !message.starts_with("OPTIONS ") {
                    let _ = seen.send(message);
                }
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    });
    (addr, received)
}

/// A UDP client's INVITE relayed to a ringing TCP registrar, then SIGTERM
/// (`drain_secs = 1`): the process, the INVITE as the registrar read it
/// and the client.
fn a_call_ringing_at_a_drain(
    dir: &std::path::Path,
    answers_cancel: bool,
) -> (
    Sipadmit,
    String,
    std::sync::mpsc::Receiver<String>,
    UdpSocket,
) {
    let (registrar, seen) = ringing_tcp_registrar(answers_cancel);
    let (mut sipadmit, Listeners { udp, .. }) = start_toward(dir, &format!("tcp:{registrar}"), 1);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let me = client.local_addr().unwrap();
    client
        .send_to(request("INVITE", "UDP", me, 1, "").as_bytes(), udp)
        .unwrap();
    let ringing = answer(&client);
    assert!(ringing.starts_with("SIP/2.0 180"), "{ringing}");
    let invite = seen.recv_timeout(BOUND).unwrap();
    assert!(invite.starts_with("INVITE "), "{invite}");
    sipadmit.signal("TERM");
    sipadmit.wait_for("draining:");
    (sipadmit, invite, seen, client)
}

#[test]
fn a_drain_waits_for_a_call_ringing_at_a_tcp_registrar_then_cancels_it_and_relays_the_487() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, invite, seen, client) = a_call_ringing_at_a_drain(dir.path(), true);
    let started = Instant::now();
    // The call is pending: the drain waits its second, then cancels it.
    let cancel = seen.recv_timeout(BOUND).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // RFC 3261 9.1: what the INVITE had, with its top Via alone.
    use common::sip_stream::header;
    assert!(
        cancel.starts_with("CANCEL sip:alice@contoso.com SIP/2.0\r\n"),
        "{cancel}"
    );
    let top_via = header(&invite, "Via")[0].split(',').next().unwrap().trim();
    assert_eq!(header(&cancel, "Via"), [top_via], "{cancel}");
    for name in ["From", "To", "Call-ID"] {
        assert_eq!(header(&cancel, name), header(&invite, name), "{name}");
    }
    assert_eq!(header(&cancel, "CSeq"), ["1 CANCEL"]);
    // The callee's 487 reaches the caller; the 200 to the CANCEL does not.
    let terminated = answer(&client);
    assert!(terminated.starts_with("SIP/2.0 487"), "{terminated}");
    let stderr = sipadmit.exited();
    assert!(stderr.contains("limits.drain_secs ran out"), "{stderr}");
    assert!(stderr.contains("CANCEL sent to the registrar"), "{stderr}");
    assert!(!stderr.contains("answered 408"), "{stderr}");
    let mut buf = [0u8; 2048];
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(client.recv_from(&mut buf).is_err(), "nothing after the 487");
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    assert!(!log.contains("proxy.request-timeout"), "{log}");
}

#[test]
fn a_call_cancelled_at_a_drain_whose_487_does_not_come_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sipadmit, _invite, seen, client) = a_call_ringing_at_a_drain(dir.path(), false);
    let cancel = seen.recv_timeout(BOUND).unwrap();
    assert!(cancel.starts_with("CANCEL "), "{cancel}");
    let sent = Instant::now();
    let timeout = answer(&client);
    assert!(timeout.starts_with("SIP/2.0 408"), "{timeout}");
    assert!(
        sent.elapsed() >= Duration::from_millis(800),
        "{:?}",
        sent.elapsed()
    );
    let stderr = sipadmit.exited();
    assert!(
        stderr.contains("no final answer from the registrar in time"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("decisions.log")).unwrap();
    assert_eq!(
        log.matches("\"rule\":\"proxy.request-timeout\"").count(),
        1,
        "{log}"
    );
}

#[test]
fn refusals_in_the_seconds_before_a_stop_are_summarised_at_the_stop() {
    // A source over its rate limit: the first refusals are logged one by
    // one, the rest only in the 10-s summary, which a stop within those
    // 10 s must still write.
    let registrar = Registrar::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        "[limits]\ndrain_secs = 0\n\n[rate_limit]\ntrusted = []\nrequests_per_second = 1\nburst = 2\nban_secs = 0\n",
    )
    .unwrap();
    let (mut sipadmit, udp) =
        common::binary::sipadmit_on_udp(&config, &format!("udp:{}", registrar.addr), &[]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let me = client.local_addr().unwrap();
    let mut refused = 0;
    for n in 1..=30 {
        client
            .send_to(request("REGISTER", "UDP", me, n, "").as_bytes(), udp)
            .unwrap();
        if answer(&client).starts_with("SIP/2.0 503") {
            refused += 1;
        }
    }
    assert!(refused >= 20, "{refused} refused");
    sipadmit.signal("TERM");
    let stderr = sipadmit.exited();
    let summary = stderr
        .lines()
        .find(|l| l.contains("requests refused in the last 10 s"))
        .unwrap_or_else(|| panic!("no summary at the stop:\n{stderr}"));
    assert_eq!(field(summary, "refused"), refused.to_string(), "{summary}");
}
