//! Requests that arrive over TCP and leave over UDP: sipadmit keeps their
//! client transaction (RFC 3261 17.1), because a client on a stream never
//! retransmits. A registrar that loses every first datagram still answers
//! every request; one that never answers gets the client a `408` after
//! 64*T1, recorded; requests between UDP peers stay stateless.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::udp_registrar::{Behaviour, Registrar};
use common::TestProxy;

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

fn register(transport: &str, from: SocketAddr, user: &str, n: usize) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/{transport} {from};branch=z9hG4bK-{user}-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@contoso.com>;tag=f{n}\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: {user}-{n}@test\r\nCSeq: {n} REGISTER\r\nContact: <sip:{user}@{from}>\r\n\
         User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Read one response from a stream: its status line and headers (no body:
/// every response here has Content-Length 0).
fn read_response(reader: &mut BufReader<TcpStream>) -> String {
    let mut message = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("a response line");
        assert!(n > 0, "connection closed after {message:?}");
        if line == "\r\n" && !message.is_empty() {
            return message;
        }
        if line != "\r\n" {
            message.push_str(&line);
        }
    }
}

fn tcp_client(proxy: &TestProxy, wait: Duration) -> (TcpStream, BufReader<TcpStream>) {
    let conn = TcpStream::connect(proxy.tcp).unwrap();
    conn.set_read_timeout(Some(wait)).unwrap();
    let reader = BufReader::new(conn.try_clone().unwrap());
    (conn, reader)
}

#[test]
fn every_tcp_request_is_answered_when_the_udp_registrar_loses_each_first_copy() {
    let registrar = Registrar::start_with(Behaviour::IgnoreFirstCopy);
    let proxy = TestProxy::start("", "127.0.0.1", &format!("udp:{}", registrar.addr));
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(10));
    let from = conn.local_addr().unwrap();
    const REQUESTS: usize = 20;
    let burst: String = (1..=REQUESTS)
        .map(|n| register("TCP", from, "alice", n))
        .collect();
    conn.write_all(burst.as_bytes()).unwrap();
    let statuses: Vec<String> = (0..REQUESTS)
        .map(|_| {
            read_response(&mut reader)
                .lines()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        statuses.iter().all(|s| s.starts_with("SIP/2.0 200")),
        "{statuses:?}"
    );
    let copies = registrar.copies.lock().unwrap().clone();
    assert_eq!(copies.len(), REQUESTS);
    assert!(
        copies.values().all(|&n| n == 2),
        "each request once lost, once retransmitted and answered: {copies:?}"
    );
    let records = proxy.records();
    assert_eq!(
        records.len(),
        REQUESTS,
        "one record per REGISTER: a retransmission by sipadmit is not a second decision"
    );
    let metrics = proxy.stop();
    assert_eq!(
        metrics.client_retransmissions.load(Ordering::Relaxed),
        REQUESTS as u64
    );
    assert_eq!(
        metrics.client_transaction_timeouts.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn copies_of_a_final_response_reach_the_tcp_client_once() {
    let registrar = Registrar::start_with(Behaviour::AnswerThrice);
    let proxy = TestProxy::start("", "127.0.0.1", &format!("udp:{}", registrar.addr));
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(10));
    let from = conn.local_addr().unwrap();
    const REQUESTS: usize = 3;
    for n in 1..=REQUESTS {
        conn.write_all(register("TCP", from, "carol", n).as_bytes())
            .unwrap();
        let answer = read_response(&mut reader);
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    }
    // The copies came right behind each answer: none follows.
    conn.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "copies of a final response relayed to a TCP client: {}",
        String::from_utf8_lossy(&rest)
    );
    let metrics = proxy.stop();
    assert_eq!(
        metrics.drops(sipadmit::observe::metrics::DropReason::AfterFinal),
        2 * REQUESTS as u64
    );
}

/// sipadmit frozen (SIGSTOP, a paused VM) while the registrar's answer to a
/// TCP client's request comes back in time, and resumed after 64*T1
/// (trial 20): the answer is relayed, not a `408`. On resume the timers
/// are due at once, and the event loop's wait fails with EINTR before it
/// reports the answer's socket ready.
#[test]
fn an_answer_that_came_during_a_freeze_of_sipadmit_beats_its_timeout() {
    let registrar = Registrar::start_with(Behaviour::AnswerFirstAfter(Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    // 64*T1 = 3.2 s; sent again at 50, 150, 350 ms... (no second answer).
    let (mut sipadmit, port) = common::binary::sipadmit_on_tcp(
        dir.path(),
        "timer_t1_ms = 50\ntimer_t2_ms = 400\n",
        &format!("udp:{}", registrar.addr),
    );
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let from = conn.local_addr().unwrap();
    conn.write_all(register("TCP", from, "frozen", 1).as_bytes())
        .unwrap();
    // Relayed (the registrar has it), then frozen before its answer comes.
    let relayed = std::time::Instant::now();
    while registrar.received.load(Ordering::Relaxed) == 0 {
        assert!(relayed.elapsed() < Duration::from_secs(5), "not relayed");
        std::thread::sleep(Duration::from_millis(5));
    }
    sipadmit.signal("STOP");
    std::thread::sleep(Duration::from_secs(4));
    sipadmit.signal("CONT");
    let answer = read_response(&mut reader);
    let stderr = sipadmit.terminate();
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}\n{stderr}");
    assert!(!stderr.contains("proxy.request-timeout"), "{stderr}");
}

#[test]
fn a_registrar_that_never_answers_gets_the_tcp_client_a_recorded_408_after_64_t1() {
    let registrar = Registrar::start_with(Behaviour::Silent);
    // T1 = 50 ms: 64*T1 = 3.2 s; retransmissions at 50, 150, 350, 750,
    // 1550 and 3150 ms (doubling; T2 = 4 s is not reached).
    let proxy = TestProxy::start(
        "[limits]\ntimer_t1_ms = 50\n",
        "127.0.0.1",
        &format!("udp:{}", registrar.addr),
    );
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(20));
    let from = conn.local_addr().unwrap();
    conn.write_all(register("TCP", from, "bob", 1).as_bytes())
        .unwrap();
    let response = read_response(&mut reader);
    assert!(
        response.starts_with("SIP/2.0 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(response.contains("Call-ID: bob-1@test"), "{response}");
    let copies = registrar.copies.lock().unwrap().clone();
    assert_eq!(
        copies.values().copied().collect::<Vec<_>>(),
        [7],
        "the request and six retransmissions"
    );
    let records = proxy.records();
    let timeout = records
        .iter()
        .find(|r| r["status"] == 408)
        .unwrap_or_else(|| panic!("no 408 record in {records:#?}"));
    assert_eq!(timeout["rule"], "proxy.request-timeout");
    assert_eq!(timeout["action"], "reject");
    assert_eq!(timeout["transport"], "tcp");
    assert_eq!(timeout["call_id"], "bob-1@test");
    assert_eq!(
        records.len(),
        2,
        "the relay, then the timeout: {records:#?}"
    );
    // Nothing more comes on the connection (no second answer).
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut more = [0u8; 1];
    assert!(reader.read(&mut more).is_err(), "a second answer");
    let metrics = proxy.stop();
    assert_eq!(metrics.client_retransmissions.load(Ordering::Relaxed), 6);
    assert_eq!(
        metrics.client_transaction_timeouts.load(Ordering::Relaxed),
        1
    );
}

#[test]
fn requests_between_udp_peers_stay_stateless() {
    let registrar = Registrar::start_with(Behaviour::Silent);
    let proxy = TestProxy::start(
        "[limits]\ntimer_t1_ms = 50\n",
        "127.0.0.1",
        &format!("udp:{}", registrar.addr),
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let from = client.local_addr().unwrap();
    client
        .send_to(register("UDP", from, "carol", 1).as_bytes(), proxy.udp)
        .unwrap();
    // Long enough for several of sipadmit's retransmissions, were it to make any.
    let mut buf = [0u8; 2048];
    assert!(client.recv_from(&mut buf).is_err(), "no answer expected");
    assert_eq!(registrar.received.load(Ordering::Relaxed), 1);
    let metrics = proxy.stop();
    assert_eq!(metrics.client_retransmissions.load(Ordering::Relaxed), 0);
}

/// A TCP client's call refused `486` by a UDP registrar that did not get
/// the ACK (RFC 3261 17.1.1.2): the copy of the 486 it sends for that gets
/// the ACK sent again by sipadmit, not relayed to the client (who sent its
/// ACK once, over its stream, and would not send it again).
#[test]
fn a_copy_of_a_486_that_says_its_ack_was_lost_gets_the_ack_sent_again() {
    let registrar = Registrar::start_with(Behaviour::BusyAndLoseFirstAck);
    let proxy = TestProxy::start("", "127.0.0.1", &format!("udp:{}", registrar.addr));
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(10));
    let from = conn.local_addr().unwrap();
    let dialog = |method: &str, to_tag: &str| {
        format!(
            "{method} sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch=z9hG4bK-busy-1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a1\r\nTo: <sip:bob@contoso.com>{to_tag}\r\n\
             Call-ID: busy-1@test\r\nCSeq: 1 {method}\r\nContact: <sip:alice@{from};transport=tcp>\r\n\
             User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    conn.write_all(dialog("INVITE", "").as_bytes()).unwrap();
    let answer = read_response(&mut reader);
    assert!(answer.starts_with("SIP/2.0 486"), "{answer}");
    conn.write_all(dialog("ACK", ";tag=reg").as_bytes())
        .unwrap();
    let acks = |registrar: &Registrar| {
        registrar
            .copies
            .lock()
            .unwrap()
            .get("Call-ID: busy-1@test|CSeq: 1 ACK")
            .copied()
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while acks(&registrar) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        acks(&registrar),
        2,
        "the ACK, then again for the 486's copy"
    );
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the 486's copy relayed to the TCP client: {}",
        String::from_utf8_lossy(&rest)
    );
    let metrics = proxy.stop();
    assert_eq!(metrics.client_retransmissions.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.drops(sipadmit::observe::metrics::DropReason::AfterFinal),
        0
    );
    // Relayed over UDP: the INVITE and the client's ACK; the ACK sent again
    // is sipadmit's own retransmission, counted apart.
    assert_eq!(
        metrics.relayed(
            sipadmit::transport::Transport::Udp,
            sipadmit::observe::metrics::MessageKind::Request
        ),
        2
    );
}

/// A call from a TCP client relayed over UDP to `registrar`, which rings
/// it: once Timer C (`limits.timer_c_secs = 2`) runs out with no further
/// word, its caller reads the `408` of it, recorded. Returns the proxy,
/// the caller's connection and reader (nothing read after the 408).
fn ring_through_timer_c(
    registrar: &Registrar,
    call_id: &str,
) -> (TestProxy, TcpStream, BufReader<TcpStream>) {
    let proxy = TestProxy::start(
        "[limits]\ntimer_c_secs = 2\n",
        "127.0.0.1",
        &format!("udp:{}", registrar.addr),
    );
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(10));
    let from = conn.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:bob@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=a1\r\nTo: <sip:bob@contoso.com>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{from};transport=tcp>\r\n\
         User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
    );
    let sent = std::time::Instant::now();
    conn.write_all(invite.as_bytes()).unwrap();
    let ringing = read_response(&mut reader);
    assert!(ringing.starts_with("SIP/2.0 180 Ringing\r\n"), "{ringing}");
    let timeout = read_response(&mut reader);
    let waited = sent.elapsed();
    assert!(
        timeout.starts_with("SIP/2.0 408 Request Timeout\r\n"),
        "{timeout}"
    );
    assert!(
        timeout.contains(&format!("Call-ID: {call_id}")),
        "{timeout}"
    );
    assert!(timeout.contains("CSeq: 1 INVITE"), "{timeout}");
    assert!(
        waited >= Duration::from_secs(2),
        "Timer C runs from the 180: {waited:?}"
    );
    let records = proxy.records();
    let timed_out = records
        .iter()
        .find(|r| r["status"] == 408)
        .unwrap_or_else(|| panic!("no 408 record in {records:#?}"));
    assert_eq!(timed_out["rule"], "proxy.request-timeout");
    assert_eq!(timed_out["method"], "INVITE");
    assert_eq!(timed_out["call_id"], call_id);
    (proxy, conn, reader)
}

/// How many copies of `transaction` (its Call-ID and CSeq lines, as the
/// stub keys them) the registrar got, once there are `enough` or 5 s
/// passed, and `settle` later.
fn copies_of(registrar: &Registrar, transaction: &str, enough: usize, settle: Duration) -> usize {
    let copies = || {
        registrar
            .copies
            .lock()
            .unwrap()
            .get(transaction)
            .copied()
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while copies() < enough && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(settle);
    copies()
}

/// A TCP client's call relayed over UDP rings, and the registrar dies:
/// once Timer C (`limits.timer_c_secs`) runs out with no further word,
/// sipadmit sends the registrar the call's CANCEL, again after T1 as a
/// CANCEL client transaction does while unanswered, and answers the caller
/// `408`, recorded (RFC 3261 16.6 step 11, 16.8, 9.1), instead of leaving
/// the caller waiting on a call nobody will answer.
#[test]
fn a_call_that_rings_through_timer_c_is_cancelled_and_its_caller_answered_408() {
    let registrar = Registrar::start_with(Behaviour::RingThenDie);
    let (proxy, conn, mut reader) = ring_through_timer_c(&registrar, "ring-1@test");
    // The CANCEL went out before the 408, and again T1 (500 ms) later.
    let cancels = copies_of(
        &registrar,
        "Call-ID: ring-1@test|CSeq: 1 CANCEL",
        2,
        Duration::ZERO,
    );
    assert!(cancels >= 2, "the unanswered CANCEL is resent: {cancels}");
    // Nothing more comes on the connection (no second answer).
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut more = [0u8; 1];
    assert!(reader.read(&mut more).is_err(), "a second answer");
    let metrics = proxy.stop();
    assert_eq!(
        metrics.client_transaction_timeouts.load(Ordering::Relaxed),
        1
    );
    assert_eq!(metrics.upstream_cancels.load(Ordering::Relaxed), 1);
    assert!(metrics.client_retransmissions.load(Ordering::Relaxed) >= 1);
}

/// The registrar of a call that rang through Timer C answers its CANCEL
/// after all, with `200` to it and `487` to the INVITE: sipadmit consumes
/// both (its caller had the 408), stops resending the CANCEL, and
/// acknowledges the 487 as the INVITE's client transaction does (RFC 3261
/// 17.1.1.3: the INVITE's Request-URI, From, Call-ID and top Via, the
/// 487's To with its tag, CSeq ACK), so the registrar stops resending it.
#[test]
fn the_487_of_a_call_rung_out_by_timer_c_is_acknowledged_by_sipadmit() {
    let registrar = Registrar::start_with(Behaviour::RingThenAnswerCancel);
    let (proxy, conn, mut reader) = ring_through_timer_c(&registrar, "ring-2@test");
    let acks = copies_of(
        &registrar,
        "Call-ID: ring-2@test|CSeq: 1 ACK",
        1,
        Duration::from_millis(1200),
    );
    assert_eq!(acks, 1, "the 487 is acknowledged once");
    let cancels = copies_of(
        &registrar,
        "Call-ID: ring-2@test|CSeq: 1 CANCEL",
        1,
        Duration::ZERO,
    );
    assert_eq!(cancels, 1, "an answered CANCEL is not resent");
    let requests = registrar.requests.lock().unwrap().clone();
    let invite = requests.iter().find(|r| r.starts_with("INVITE ")).unwrap();
    let ack = requests.iter().find(|r| r.starts_with("ACK ")).unwrap();
    let top_via = |r: &str| {
        r.lines()
            .find(|l| l.starts_with("Via: "))
            .unwrap()
            .to_owned()
    };
    assert!(
        ack.starts_with("ACK sip:bob@contoso.com SIP/2.0\r\n"),
        "{ack}"
    );
    assert_eq!(top_via(ack), top_via(invite), "{ack}");
    assert_eq!(ack.matches("Via: ").count(), 1, "{ack}");
    assert!(
        ack.contains("To: <sip:bob@contoso.com>;tag=reg\r\n"),
        "{ack}"
    );
    assert!(
        ack.contains("From: <sip:alice@contoso.com>;tag=a1\r\n"),
        "{ack}"
    );
    // Neither answer reaches the caller.
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut more = [0u8; 1];
    assert!(reader.read(&mut more).is_err(), "an answer after the 408");
    let metrics = proxy.stop();
    assert_eq!(metrics.upstream_cancels.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.upstream_cancel_answers.load(Ordering::Relaxed), 2);
    assert_eq!(
        metrics.drops(sipadmit::observe::metrics::DropReason::AfterTimeout),
        0
    );
}

/// Lync's BENOTIFY is never answered ([MS-SIP] 3.5, Best Effort NOTIFY):
/// from a TCP client to a UDP registrar it is relayed once, without a
/// client transaction, so it is not resent and its sender gets no `408`.
#[test]
fn a_benotify_from_a_tcp_client_to_a_udp_registrar_is_sent_once_and_not_timed_out() {
    let registrar = Registrar::start_with(Behaviour::Silent);
    // T1 = 50 ms: a client transaction would resend at 50, 150, 350 ms
    // and answer 408 at 3.2 s.
    let proxy = TestProxy::start(
        "[limits]\ntimer_t1_ms = 50\n",
        "127.0.0.1",
        &format!("udp:{}", registrar.addr),
    );
    let (mut conn, mut reader) = tcp_client(&proxy, Duration::from_secs(4));
    let from = conn.local_addr().unwrap();
    let benotify = format!(
        "BENOTIFY sip:alice@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch=z9hG4bK-be-1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=b1\r\nTo: <sip:alice@contoso.com>;tag=a1\r\n\
         Call-ID: benotify-1@test\r\nCSeq: 2 BENOTIFY\r\nEvent: presence\r\n\
         User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(benotify.as_bytes()).unwrap();
    // Past 64*T1: nothing comes back on the connection.
    let mut more = [0u8; 1];
    assert!(reader.read(&mut more).is_err(), "an answer to a BENOTIFY");
    assert_eq!(
        registrar
            .copies
            .lock()
            .unwrap()
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [1],
        "relayed once"
    );
    let metrics = proxy.stop();
    assert_eq!(metrics.client_retransmissions.load(Ordering::Relaxed), 0);
    assert_eq!(
        metrics.client_transaction_timeouts.load(Ordering::Relaxed),
        0
    );
}
