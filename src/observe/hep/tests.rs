//! The handle and the exporter over real loopback sockets: what a UDP and
//! a TCP collector receive, a queue that fills, a collector that is down,
//! comes back, or stops reading. Nothing here asserts a duration: each
//! wait is bounded only so that a broken exporter fails instead of hanging.

use std::borrow::Cow;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use jiff::Timestamp;

use super::encode::chunks;
use super::*;
use crate::classify::{Category, Support};
use crate::config::Endpoint;
use crate::observe::decision_log::{DecisionKind, Leg};
use crate::observe::metrics::HepPayload;
use crate::policy::{Action, Mode, SessionRole};

/// The longest any test waits for a packet or a counter.
const BOUND: Duration = Duration::from_secs(10);

const REGISTER: &str =
    "REGISTER sip:contoso.com SIP/2.0\r\nCall-ID: reg-1@test\r\nContent-Length: 0\r\n\r\n";

fn settings(collector: &str, mirror: Mirror) -> HepSettings {
    HepSettings {
        collector: Some(collector.parse::<Endpoint>().unwrap()),
        capture_id: 2001,
        auth_key: Some("s3cret".into()),
        mirror,
    }
}

/// sipadmit's advertised listeners in these tests.
fn locals() -> Vec<(Transport, SocketAddr)> {
    vec![
        (Transport::Udp, "127.0.0.1:5060".parse().unwrap()),
        (Transport::Tcp, "127.0.0.1:5060".parse().unwrap()),
        (Transport::Tcp, "[::1]:5060".parse().unwrap()),
    ]
}

fn inbound(text: &str) -> Inbound {
    Inbound {
        bytes: Bytes::copy_from_slice(text.as_bytes()),
        transport: Transport::Udp,
        source: "192.0.2.7:5062".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        connection: None,
        leg: Leg::FromClient,
    }
}

fn record(call_id: &str) -> DecisionRecord {
    DecisionRecord {
        ts: Timestamp::from_millisecond(1_795_740_000_000).unwrap(),
        transport: Transport::Udp,
        source: "192.0.2.7:5062".parse().unwrap(),
        local: None,
        leg: Some(Leg::FromClient),
        method: "INVITE".into(),
        call_id: call_id.into(),
        from: "sip:bob@contoso.com".into(),
        to: "sip:helpdesk@contoso.com".into(),
        request_uri: "sip:helpdesk@contoso.com".into(),
        user_agent: Some("RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27".into()),
        client: "lync-mobile".into(),
        sender_client: "lync-mobile".into(),
        category: Category::Mobile,
        support: Support::Unsupported,
        role: SessionRole::Caller,
        kind: Some(DecisionKind::Policy),
        action: Action::Reject,
        rule: Cow::Borrowed("caller.unsupported"),
        client_rule: "lync-mobile#1".into(),
        status: Some(403),
        mode: Mode::Enforce,
        would_reject: false,
        generation: 1,
        spiral: false,
        after_challenge: false,
        unregister: false,
        undelivered: false,
    }
}

/// The value of the first chunk of type `kind`.
fn value(chunks: &[(u16, u16, Vec<u8>)], kind: u16) -> Vec<u8> {
    chunks
        .iter()
        .find(|c| c.1 == kind)
        .unwrap_or_else(|| panic!("no chunk {kind}"))
        .2
        .clone()
}

fn ipv4(chunks: &[(u16, u16, Vec<u8>)], address: u16, port: u16) -> SocketAddr {
    let a: [u8; 4] = value(chunks, address).try_into().unwrap();
    let p: [u8; 2] = value(chunks, port).try_into().unwrap();
    SocketAddr::from((a, u16::from_be_bytes(p)))
}

/// The next datagram on `socket` (a collector), within [`BOUND`].
async fn next_datagram(socket: &tokio::net::UdpSocket) -> Vec<u8> {
    let mut buffer = vec![0; 65_536];
    let n = tokio::time::timeout(BOUND, socket.recv(&mut buffer))
        .await
        .expect("a HEP datagram")
        .unwrap();
    buffer.truncate(n);
    buffer
}

/// An export to the UDP collector at `at`, counted in `metrics`.
fn start_udp(at: SocketAddr, mirror: Mirror, metrics: &Arc<Metrics>) -> (Hep, Exporter) {
    Hep::start(
        &settings(&format!("udp:{at}"), mirror),
        locals(),
        metrics.clone(),
    )
    .unwrap()
}

/// Poll `done` every 20 ms for at most [`BOUND`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_udp_collector_gets_messages_and_decisions_with_their_addresses() {
    let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = collector.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    let arrived = inbound(REGISTER);
    hep.received(&arrived);
    let registrar: SocketAddr = "198.51.100.1:5070".parse().unwrap();
    hep.sent(Transport::Tcp, None, registrar, &arrived.bytes);
    hep.decision(&record("call-9@test"), arrived.local);
    drop(hep);
    exporter.finish(BOUND).await;

    let received = chunks(&next_datagram(&collector).await);
    assert_eq!(value(&received, 2), [17]);
    assert_eq!(ipv4(&received, 3, 7), arrived.source.0);
    assert_eq!(ipv4(&received, 4, 8), arrived.local.0);
    assert_eq!(value(&received, 11), [1]);
    assert_eq!(value(&received, 12), 2001u32.to_be_bytes());
    assert_eq!(value(&received, 14), b"s3cret");
    assert_eq!(value(&received, 15), REGISTER.as_bytes());
    let sent = chunks(&next_datagram(&collector).await);
    assert_eq!(value(&sent, 2), [6], "over TCP");
    assert_eq!(
        ipv4(&sent, 3, 7),
        "127.0.0.1:5060".parse().unwrap(),
        "from the advertised TCP listener of the registrar's family"
    );
    assert_eq!(ipv4(&sent, 4, 8), registrar);
    let decision = chunks(&next_datagram(&collector).await);
    assert_eq!(value(&decision, 11), [100], "a log");
    assert_eq!(
        value(&decision, 17),
        b"call-9@test",
        "correlated by Call-ID"
    );
    assert_eq!(ipv4(&decision, 3, 7), arrived.source.0);
    let json: DecisionRecord = serde_json::from_slice(&value(&decision, 15)).unwrap();
    assert_eq!(json, record("call-9@test"));
    assert_eq!(metrics.hep_exported(HepPayload::Sip), 2);
    assert_eq!(metrics.hep_exported(HepPayload::Decision), 1);
    assert_eq!(metrics.hep_send_failures(), 0);
}

#[tokio::test]
async fn mirror_decisions_sends_no_messages_and_none_sends_nothing() {
    let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = collector.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::Decisions, &metrics);
    assert!(!hep.mirrors_messages());
    hep.received(&inbound(REGISTER));
    hep.decision(&record("only-this@test"), "127.0.0.1:5060".parse().unwrap());
    drop(hep);
    exporter.finish(BOUND).await;
    let only = chunks(&next_datagram(&collector).await);
    assert_eq!(value(&only, 17), b"only-this@test");
    assert_eq!(metrics.hep_exported(HepPayload::Sip), 0);

    let (hep, exporter) = start_udp(at, Mirror::None, &metrics);
    assert!(format!("{hep:?}").contains("off"));
    hep.decision(&record("never@test"), "127.0.0.1:5060".parse().unwrap());
    exporter.finish(BOUND).await;
    assert_eq!(metrics.hep_exported(HepPayload::Decision), 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_what_does_not_fit() {
    let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = collector.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    // The exporter task cannot run before this test awaits: everything
    // offered here meets the queue as the dispatcher would when the
    // exporter is behind.
    let small = inbound("OPTIONS sip:x SIP/2.0\r\n\r\n");
    for _ in 0..QUEUE_PACKETS + 10 {
        hep.received(&small);
    }
    assert_eq!(metrics.hep_dropped(HepDrop::QueueFull), 10);
    drop(hep);
    exporter.finish(BOUND).await;

    // The byte bound: 16 messages of 1 MiB fill it, the 17th is dropped.
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    let large = inbound(&"x".repeat(1 << 20));
    for _ in 0..(QUEUE_BYTES >> 20) + 1 {
        hep.received(&large);
    }
    assert_eq!(metrics.hep_dropped(HepDrop::QueueFull), 11);
    drop(hep);
    exporter.finish(BOUND).await;
    // Those could not be encoded (over 65535 bytes): dropped as too large.
    assert_eq!(
        metrics.hep_dropped(HepDrop::TooLarge),
        QUEUE_BYTES as u64 >> 20
    );
}

#[tokio::test]
async fn a_udp_collector_that_is_down_costs_a_counter() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = closed.local_addr().unwrap();
    drop(closed);
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    // In five batches: the ICMP error one batch brings back fails the
    // next send (a batch goes out in one system call), which is counted
    // and tried again: every packet goes out.
    for round in 1..=5u64 {
        for _ in 0..10 {
            hep.received(&inbound(REGISTER));
        }
        eventually("each packet sent, none lost to an earlier refusal", || {
            metrics.hep_exported(HepPayload::Sip) == round * 10
        })
        .await;
    }
    drop(hep);
    exporter.finish(BOUND).await;
    assert!(
        metrics.hep_collector_refusals() > 0,
        "the refusals are counted"
    );
    assert_eq!(metrics.hep_send_failures(), 0, "no packet given up");
}

/// A UDP collector that comes back gets every packet: the refusal of the
/// last packet sent while it was down, still pending on the socket, fails
/// the first send after it is back; that packet is sent again, not lost.
#[tokio::test]
async fn a_udp_collector_back_after_being_down_loses_no_packet() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = closed.local_addr().unwrap();
    drop(closed);
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    for _ in 0..3 {
        hep.received(&inbound(REGISTER));
    }
    eventually("the packets sent while the collector is down", || {
        metrics.hep_exported(HepPayload::Sip) == 3
    })
    .await;
    let refusals_while_down = metrics.hep_collector_refusals();

    let collector = tokio::net::UdpSocket::bind(at).await.unwrap();
    let marked =
        |n: usize| format!("OPTIONS sip:back-{n}@test SIP/2.0\r\nContent-Length: 0\r\n\r\n");
    for n in 0..5 {
        hep.received(&inbound(&marked(n)));
    }
    for n in 0..5 {
        let packet = chunks(&next_datagram(&collector).await);
        assert_eq!(value(&packet, 15), marked(n).as_bytes(), "packet {n}");
    }
    assert_eq!(metrics.hep_exported(HepPayload::Sip), 8);
    assert!(
        metrics.hep_collector_refusals() > refusals_while_down,
        "the refusal of the last packet sent while it was down is counted"
    );
    assert_eq!(metrics.hep_send_failures(), 0, "no packet given up");
    drop(hep);
    exporter.finish(BOUND).await;
}

/// A HEP packet that arrives at a SIP listener (another agent's
/// collector is that port) is not mirrored: mirrored, it could come back
/// to be mirrored again, for ever.
#[tokio::test]
async fn a_hep_packet_received_on_a_sip_listener_is_not_mirrored() {
    let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = collector.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (hep, exporter) = start_udp(at, Mirror::All, &metrics);
    hep.received(&inbound(REGISTER));
    let packet = next_datagram(&collector).await;
    assert!(is_hep_packet(&packet));

    // That packet back at the SIP listener, then a SIP message.
    let mut echoed = inbound(REGISTER);
    echoed.bytes = Bytes::from(packet);
    hep.received(&echoed);
    hep.received(&inbound("OPTIONS sip:after@test SIP/2.0\r\n\r\n"));
    drop(hep);
    exporter.finish(BOUND).await;
    let next = chunks(&next_datagram(&collector).await);
    assert_eq!(
        value(&next, 15),
        b"OPTIONS sip:after@test SIP/2.0\r\n\r\n",
        "the HEP packet was skipped"
    );
    assert_eq!(metrics.hep_exported(HepPayload::Sip), 2);
}

#[test]
fn a_hep_packet_is_told_from_a_sip_request_of_a_method_named_hep3() {
    let mut packet = Vec::new();
    let header = encode::Header {
        payload_type: encode::PayloadType::Sip,
        transport: Transport::Udp,
        source: "192.0.2.7:5062".parse().unwrap(),
        destination: "127.0.0.1:5060".parse().unwrap(),
        seconds: 1,
        microseconds: 2,
        capture_id: 2001,
        auth_key: None,
        correlation_id: None,
    };
    encode::encode(&header, REGISTER.as_bytes(), &mut packet).unwrap();
    assert!(is_hep_packet(&packet));
    assert!(!is_hep_packet(b"HEP3 sip:x@test SIP/2.0\r\n\r\n"));
    assert!(!is_hep_packet(b"HEP3X sip:x@test SIP/2.0\r\n\r\n"));
    assert!(!is_hep_packet(REGISTER.as_bytes()));
    assert!(!is_hep_packet(b"HEP3"));
}

/// Packets read from a TCP collector's connection until one whose payload
/// holds `marker` has arrived (within [`BOUND`]).
fn read_until(stream: &mut std::net::TcpStream, marker: &[u8]) -> Vec<Vec<(u16, u16, Vec<u8>)>> {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut buffer = Vec::new();
    let mut packets = Vec::new();
    loop {
        while buffer.len() >= 6 {
            let len = u16::from_be_bytes([buffer[4], buffer[5]]) as usize;
            if buffer.len() < len {
                break;
            }
            let packet: Vec<u8> = buffer.drain(..len).collect();
            let chunks = chunks(&packet);
            let found = value(&chunks, 15)
                .windows(marker.len())
                .any(|w| w == marker);
            packets.push(chunks);
            if found {
                return packets;
            }
        }
        let mut more = [0u8; 65_536];
        let n = stream
            .read(&mut more)
            .expect("HEP packets on the connection");
        assert!(n > 0, "the exporter closed the connection");
        buffer.extend_from_slice(&more[..n]);
    }
}

/// A TCP listener with a small receive buffer (inherited by what it
/// accepts), so that a collector that stops reading fills up quickly.
fn small_listener(at: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&at.into()).unwrap();
    socket.listen(8).unwrap();
    socket.into()
}

/// Accept one connection within [`BOUND`], offering `hep` a message every
/// 20 ms meanwhile (the exporter connects when it has something to send).
async fn accept_while_offering(
    listener: &TcpListener,
    hep: &Hep,
    text: &str,
) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exporter never connected"
        );
        hep.received(&inbound(text));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_collector_down_comes_back_and_one_that_stalls_is_replaced() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = free.local_addr().unwrap();
    drop(free);
    let metrics = Arc::new(Metrics::default());
    let timing = TcpTiming {
        connect_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_millis(300),
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let tcp = settings(&format!("tcp:{at}"), Mirror::All);
    let (hep, exporter) = Hep::start_with(&tcp, locals(), metrics.clone(), timing).unwrap();
    // Down: each packet is counted as not sent; offering never waits.
    for _ in 0..5 {
        hep.received(&inbound(REGISTER));
    }
    eventually("failures counted while the collector is down", || {
        metrics.hep_send_failures() >= 5
    })
    .await;

    // Back: the link connects again after its backoff.
    let listener = small_listener(at);
    let mut first =
        accept_while_offering(&listener, &hep, "OPTIONS sip:first SIP/2.0\r\n\r\n").await;
    hep.received(&inbound("OPTIONS sip:marker-1 SIP/2.0\r\n\r\n"));
    let packets = tokio::task::spawn_blocking(move || {
        let packets = read_until(&mut first, b"marker-1");
        (packets, first)
    });
    let (packets, first) = packets.await.unwrap();
    assert!(packets.iter().all(|p| value(p, 14) == b"s3cret"));
    let before_stall = metrics.hep_send_failures();

    // Stalled: `first` is no longer read; the exporter's writes fill the
    // buffers, time out, and the link connects again.
    let large = "x".repeat(60_000);
    let mut second = None;
    let deadline = tokio::time::Instant::now() + BOUND;
    while second.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled collector was never replaced"
        );
        for _ in 0..20 {
            hep.received(&inbound(&large));
        }
        listener.set_nonblocking(true).unwrap();
        if let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            second = Some(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.hep_send_failures() > before_stall,
        "the stalled batch counted as not sent"
    );
    hep.received(&inbound("OPTIONS sip:marker-2 SIP/2.0\r\n\r\n"));
    let mut second = second.unwrap();
    tokio::task::spawn_blocking(move || read_until(&mut second, b"marker-2"))
        .await
        .unwrap();
    drop(first);
    drop(hep);
    exporter.finish(BOUND).await;
}

#[test]
fn a_send_failed_by_an_earlier_datagrams_icmp_error_is_tried_again_others_are_not() {
    use super::export::may_report_an_earlier_datagram;
    use nix::errno::Errno;
    let error = |errno: Errno| std::io::Error::from_raw_os_error(errno as i32);
    for errno in [Errno::ECONNREFUSED, Errno::EHOSTUNREACH, Errno::ENETUNREACH] {
        assert!(may_report_an_earlier_datagram(&error(errno)), "{errno}");
    }
    for errno in [Errno::EMSGSIZE, Errno::EACCES, Errno::EPERM] {
        assert!(!may_report_an_earlier_datagram(&error(errno)), "{errno}");
    }
}
