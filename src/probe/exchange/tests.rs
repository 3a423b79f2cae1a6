//! The exchange against in-process loopback fakes (std threads, ephemeral
//! ports): what comes back that is not SIP is named, and a 2xx without a
//! usable Contact is still acknowledged and ended, at the Request-URI.

use super::*;
use std::net::TcpListener;
use std::thread;

/// An INVITE (or REGISTER) probe of `sip:helpdesk@contoso.com`.
fn request(method: ProbeMethod) -> ProbeRequest {
    ProbeRequest::new(
        method,
        "127.0.0.1:5060",
        Some("sip:helpdesk@contoso.com"),
        None,
        None,
        0,
        0x1234,
    )
    .unwrap()
}

/// The request's line `name: value` (CRLF not included).
fn line<'a>(request: &'a [u8], name: &str) -> &'a [u8] {
    let prefix = format!("{name}:");
    request
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| l.starts_with(prefix.as_bytes()))
        .unwrap()
}

/// A response to `request` with `status` (`SIP/2.0 200 OK`) and `extra`
/// header lines.
fn reply(request: &[u8], status: &str, extra: &str) -> Vec<u8> {
    let mut out = format!("{status}\r\n").into_bytes();
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        out.extend_from_slice(line(request, name));
        if name == "To" {
            out.extend_from_slice(b";tag=fake");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("{extra}Content-Length: 0\r\n\r\n").as_bytes());
    out
}

fn udp_fake() -> (UdpSocket, Endpoint) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let target = Endpoint {
        transport: Transport::Udp,
        addr: socket.local_addr().unwrap(),
    };
    (socket, target)
}

fn tcp_fake() -> (TcpListener, Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = Endpoint {
        transport: Transport::Tcp,
        addr: listener.local_addr().unwrap(),
    };
    (listener, target)
}

/// Reads one request's header section from `stream`.
fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
        request.push(byte[0]);
    }
    request
}

/// A callee on UDP that answers an INVITE `200 OK` with `contact` (a
/// header line, or nothing) and the BYE `200 OK`; returns the first line of
/// each of the three requests it got (INVITE, ACK, BYE).
fn udp_callee(contact: &'static str) -> (thread::JoinHandle<Vec<String>>, Endpoint) {
    let (fake, target) = udp_fake();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut lines = Vec::new();
        for _ in 0..3 {
            let (n, from) = fake.recv_from(&mut buf).unwrap();
            let message = buf[..n].to_vec();
            match &message[..3] {
                b"INV" => fake.send_to(&reply(&message, "SIP/2.0 200 OK", contact), from),
                b"BYE" => fake.send_to(&reply(&message, "SIP/2.0 200 OK", ""), from),
                _ => Ok(0),
            }
            .unwrap();
            lines.push(
                String::from_utf8_lossy(message.split(|&b| b == b'\r').next().unwrap())
                    .into_owned(),
            );
        }
        lines
    });
    (server, target)
}

/// The answer to an INVITE probe of `target` (5 s at most).
fn invite(target: Endpoint) -> Answer {
    exchange(
        target,
        None,
        &request(ProbeMethod::Invite),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[test]
fn udp_answers_that_are_not_sip_are_counted_and_the_first_shown_escaped() {
    let (fake, target) = udp_fake();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let (n, from) = fake.recv_from(&mut buf).unwrap();
        let invalid_status =
            String::from_utf8(reply(&buf[..n], "SIP/2.0 700 Too High", "")).unwrap();
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"\x00\x1b[2J\xff binary",
            b"\r\n\r\n",
            invalid_status.as_bytes(),
        ] {
            fake.send_to(answer, from).unwrap();
        }
    });
    let error = exchange(
        target,
        None,
        &request(ProbeMethod::Register),
        Duration::from_millis(300),
    )
    .unwrap_err();
    server.join().unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "{target}: no final answer to the REGISTER within 300 ms (sent 1 time(s), \
             received 3 messages that are not SIP responses \
             (first: 38 bytes \"HTTP/1.1 200 OK\\r\\nContent-Length:...\"))"
        )
    );
}

#[test]
fn a_tcp_peer_that_answers_http_and_closes_is_named_with_what_it_sent() {
    let (listener, target) = tcp_fake();
    let server = thread::spawn(move || {
        for answer in [
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            b"SIP/2.0 2\x1b",
        ] {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
            stream.write_all(answer).unwrap();
        }
    });
    let probe = || {
        exchange(
            target,
            None,
            &request(ProbeMethod::Register),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        probe(),
        format!(
            "{target}: the connection was closed before a final answer to the REGISTER \
             (received 1 message that is not a SIP response \
             (47 bytes \"HTTP/1.1 400 Bad Request\\r\\nConten...\"))"
        )
    );
    assert_eq!(
        probe(),
        format!(
            "{target}: the connection was closed before a final answer to the REGISTER \
             (received an unfinished message (10 bytes \"SIP/2.0 2\\x1b\"))"
        )
    );
    server.join().unwrap();
}

#[test]
fn a_tcp_peer_that_resets_after_the_request_closed_the_connection() {
    // As a banned or over-limit prober sees it: the request is read, then
    // the connection is reset (RST, not FIN).
    let (listener, target) = tcp_fake();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        read_request(&mut stream);
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let error = exchange(
        target,
        None,
        &request(ProbeMethod::Register),
        Duration::from_secs(5),
    )
    .unwrap_err()
    .to_string();
    server.join().unwrap();
    assert_eq!(
        error,
        format!("{target}: the connection was closed before a final answer to the REGISTER")
    );
}

#[test]
fn a_2xx_with_contact_star_is_acknowledged_and_ended_at_the_request_uri() {
    for (contact, described) in [
        (
            "Contact: *\r\n",
            "its `Contact: *` is not a SIP or SIPS URI",
        ),
        ("", "it has no Contact"),
        (
            "Contact: <notauri>\r\n",
            "its `Contact: <notauri>` is not a SIP or SIPS URI",
        ),
    ] {
        let (server, target) = udp_callee(contact);
        let answer = invite(target);
        assert_eq!(
            server.join().unwrap(),
            [
                "INVITE sip:helpdesk@contoso.com SIP/2.0",
                "ACK sip:helpdesk@contoso.com SIP/2.0",
                "BYE sip:helpdesk@contoso.com SIP/2.0",
            ]
        );
        assert_eq!((answer.status, answer.note.as_deref()), (200, None));
        assert_eq!(
            answer.fault.unwrap(),
            format!(
                "{described} (RFC 3261 12.1.2: the ACK and BYE go to the Contact's URI); \
                 they went to the INVITE's Request-URI sip:helpdesk@contoso.com instead"
            )
        );
    }
}

#[test]
fn a_2xx_with_a_sip_contact_has_no_fault() {
    let (server, target) = udp_callee("Contact: <sip:agent@127.0.0.1:41000>\r\n");
    let answer = invite(target);
    assert_eq!(
        server.join().unwrap()[1..],
        [
            "ACK sip:agent@127.0.0.1:41000 SIP/2.0",
            "BYE sip:agent@127.0.0.1:41000 SIP/2.0"
        ]
    );
    assert_eq!((answer.fault, answer.note), (None, None));
}

/// Receives the INVITE on `fake` and answers it `200 OK` with a SIP
/// Contact: the answer and where it went.
fn answer_the_invite_200(fake: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    let (n, from) = fake.recv_from(&mut buf).unwrap();
    let contact = "Contact: <sip:agent@127.0.0.1:41000>\r\n";
    let ok = reply(&buf[..n], "SIP/2.0 200 OK", contact);
    fake.send_to(&ok, from).unwrap();
    (ok, from)
}

#[test]
fn a_2xx_sent_again_gets_the_ack_again_before_the_bye() {
    let (fake, target) = udp_fake();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let (ok, from) = answer_the_invite_200(&fake);
        // The first ACK "is lost": the 200 goes again, as a callee resends
        // it until its ACK arrives (RFC 3261 13.3.1.4). The BYE is answered
        // once the second ACK has come.
        let (mut lines, mut bye) = (Vec::<String>::new(), None);
        while lines.iter().filter(|l| l.starts_with("ACK ")).count() < 2 || bye.is_none() {
            let (n, _) = fake.recv_from(&mut buf).unwrap();
            let message = buf[..n].to_vec();
            let first = message.split(|&b| b == b'\r').next().unwrap();
            lines.push(String::from_utf8_lossy(first).into_owned());
            if lines.len() == 1 {
                fake.send_to(&ok, from).unwrap();
            }
            if message.starts_with(b"BYE") {
                bye = Some(message);
            }
        }
        let answer = reply(&bye.unwrap(), "SIP/2.0 200 OK", "");
        fake.send_to(&answer, from).unwrap();
        lines
    });
    let answer = invite(target);
    let lines = server.join().unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ACK ")).count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        (answer.status, answer.fault, answer.note),
        (200, None, None)
    );
}

#[test]
fn a_sips_contact_reached_over_udp_is_noted() {
    let (server, target) = udp_callee("Contact: <sips:agent@127.0.0.1:41001>\r\n");
    let answer = invite(target);
    server.join().unwrap();
    assert_eq!(answer.fault, None);
    assert_eq!(
        answer.note.unwrap(),
        format!(
            "the 2xx's Contact sips:agent@127.0.0.1:41001 is a sips: URI, to be reached over \
             TLS (RFC 3261 26.2); the ACK and BYE went to {target}, as every request of the \
             probe does"
        )
    );
}

#[test]
fn a_2xx_of_another_fork_gets_no_second_ack() {
    let (fake, target) = udp_fake();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let (ok, from) = answer_the_invite_200(&fake);
        let mut lines = Vec::<String>::new();
        loop {
            let (n, _) = fake.recv_from(&mut buf).unwrap();
            let message = buf[..n].to_vec();
            let first = message.split(|&b| b == b'\r').next().unwrap();
            lines.push(String::from_utf8_lossy(first).into_owned());
            if lines.len() == 1 {
                // Another fork's 2xx: another dialog.
                let fork = String::from_utf8(ok.clone()).unwrap();
                fake.send_to(fork.replace(";tag=fake", ";tag=fork2").as_bytes(), from)
                    .unwrap();
            }
            if message.starts_with(b"BYE") {
                // Answered once the fork's 2xx has had time to draw an ACK.
                thread::sleep(Duration::from_millis(200));
                let answer = reply(&message, "SIP/2.0 200 OK", "");
                fake.send_to(&answer, from).unwrap();
                fake.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                while let Ok((n, _)) = fake.recv_from(&mut buf) {
                    let first = buf[..n].split(|&b| b == b'\r').next().unwrap();
                    lines.push(String::from_utf8_lossy(first).into_owned());
                }
                return lines;
            }
        }
    });
    let answer = invite(target);
    let lines = server.join().unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ACK ")).count(),
        1,
        "{lines:?}"
    );
    assert_eq!(answer.status, 200);
}

/// RFC 3261 17.1.2.2: a REGISTER answered `100 Trying` over UDP is still
/// sent again (Timer E in Proceeding), so a final answer that was lost is
/// sent again by the registrar; the probe does not report a false failure.
#[test]
fn a_register_answered_100_over_udp_is_sent_again_until_its_final_answer() {
    let (fake, target) = udp_fake();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let (n, from) = fake.recv_from(&mut buf).unwrap();
        fake.send_to(&reply(&buf[..n], "SIP/2.0 100 Trying", ""), from)
            .unwrap();
        // Its 200 lost: only the copy Timer E sends gets one.
        let (n, from) = fake.recv_from(&mut buf).unwrap();
        fake.send_to(&reply(&buf[..n], "SIP/2.0 200 OK", ""), from)
            .unwrap();
    });
    let answer = exchange(
        target,
        None,
        &request(ProbeMethod::Register),
        Duration::from_secs(3),
    )
    .unwrap();
    server.join().unwrap();
    assert_eq!(
        (answer.status, answer.provisional.as_slice()),
        (200, &[100][..])
    );
}

/// `--timeout` bounds a `tls:` probe whose peer sends its handshake a byte
/// at a time: OpenSSL's many socket reads share the one deadline.
#[test]
fn a_tls_peer_trickling_its_handshake_is_given_up_at_the_deadline() {
    let (listener, mut target) = tcp_fake();
    target.transport = Transport::Tls;
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // A TLS 1.2 handshake record of 16 KiB announced, then a byte every
        // 100 ms for at most 5 s.
        let _ = stream.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
        for _ in 0..50 {
            if stream.write_all(&[0x02]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let started = Instant::now();
    let error = exchange(
        target,
        None,
        &request(ProbeMethod::Options),
        Duration::from_millis(700),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
    assert!(error.to_string().contains("no answer in time"), "{error}");
    server.join().unwrap();
}

/// A request longer than a UDP datagram carries is refused before it is
/// sent, naming what to shorten (the OS said only "Message too long").
#[test]
fn a_request_too_long_for_a_datagram_names_what_to_shorten() {
    let (_fake, target) = udp_fake();
    let ua = "x".repeat(70_000);
    let request = ProbeRequest::new(
        ProbeMethod::Register,
        "127.0.0.1:5060",
        None,
        None,
        Some(&ua),
        0,
        1,
    )
    .unwrap();
    let error = exchange(target, None, &request, Duration::from_secs(1)).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("more than one UDP datagram carries (65507): shorten --ua"),
        "{text}"
    );
}
