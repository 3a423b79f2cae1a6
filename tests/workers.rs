//! `proxy.workers`: every worker has its own socket on every listener and
//! its own dispatcher; they share the tables. Datagrams from one source
//! (the registrar sends everything from one address) still spread over
//! the workers; a response arriving on one worker's socket goes out for a
//! request another relayed; TCP clients of a TCP registrar (whose link
//! runs on the first worker) are answered whichever worker took their
//! connection.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::external::{Kamailio, KamailioOptions, UA_LYNC_2013};
use common::sip_stream::read_status;
use common::udp_registrar::Registrar;
use common::TestProxy;

const WORKERS: &str = "[proxy]\nworkers = 2\n";

fn register(transport: &str, from: SocketAddr, user: &str, n: usize) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/{transport} {from};branch=z9hG4bK-{user}-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@contoso.com>;tag=f{n}\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: {user}-{n}@workers\r\nCSeq: {n} REGISTER\r\nContact: <sip:{user}@{from}>\r\n\
         User-Agent: {UA_LYNC_2013}\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The share of events worker `i` handled, from the counters of a run.
fn shares(metrics: &sipadmit::observe::metrics::Metrics) -> Vec<u64> {
    metrics
        .worker_events
        .started()
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect()
}

#[test]
fn datagrams_from_one_source_spread_over_both_workers_and_every_request_is_answered() {
    let registrar = Registrar::start();
    let proxy = TestProxy::start(WORKERS, "127.0.0.1", &format!("udp:{}", registrar.addr));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let from = client.local_addr().unwrap();
    const REQUESTS: usize = 400;
    let mut answered = std::collections::HashSet::new();
    let mut buf = vec![0u8; 65536];
    // Bursts of 50, each read back before the next: bounded, no loss to a
    // full socket buffer.
    for burst in 0..REQUESTS / 50 {
        for n in burst * 50..(burst + 1) * 50 {
            let message = register("UDP", from, "alice", n + 1);
            client.send_to(message.as_bytes(), proxy.udp).unwrap();
        }
        while answered.len() < (burst + 1) * 50 {
            let (len, _) = client.recv_from(&mut buf).expect("an answer within 5 s");
            let response = String::from_utf8_lossy(&buf[..len]).into_owned();
            assert!(response.starts_with("SIP/2.0 200"), "{response}");
            let cseq = response
                .lines()
                .find_map(|l| l.strip_prefix("CSeq: "))
                .expect("a CSeq")
                .to_owned();
            answered.insert(cseq);
        }
    }
    assert_eq!(answered.len(), REQUESTS);
    assert_eq!(registrar.received.load(Ordering::Relaxed), REQUESTS);
    let metrics = proxy.stop();
    let shares = shares(&metrics);
    assert_eq!(shares.len(), 2, "{shares:?}");
    // 400 requests and 400 responses, each from one source address: spread
    // at random, not by a hash of the source (which gives one worker all).
    let total: u64 = shares.iter().sum();
    assert!(total >= 2 * REQUESTS as u64, "{shares:?}");
    assert!(shares.iter().all(|&s| s > total / 5), "{shares:?}");
}

#[test]
fn tcp_clients_of_a_tcp_registrar_are_answered_whichever_worker_took_their_connection() {
    let Some(kamailio) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let proxy = TestProxy::start(WORKERS, "127.0.0.1", &kamailio.upstream_tcp());
    const CLIENTS: usize = 40;
    let clients: Vec<(TcpStream, BufReader<TcpStream>)> = (0..CLIENTS)
        .map(|_| {
            let conn = TcpStream::connect(proxy.tcp).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let reader = BufReader::new(conn.try_clone().unwrap());
            (conn, reader)
        })
        .collect();
    for (i, (mut conn, mut reader)) in clients.into_iter().enumerate() {
        let from = conn.local_addr().unwrap();
        conn.write_all(register("TCP", from, &format!("user{i}"), 1).as_bytes())
            .unwrap();
        let status = read_status(&mut reader);
        assert!(status.starts_with("SIP/2.0 200"), "client {i}: {status}");
    }
    let metrics = proxy.stop();
    let shares = shares(&metrics);
    assert_eq!(shares.len(), 2, "{shares:?}");
    // The connections spread by the kernel's hash of their addresses: 40
    // of them all on one worker would be a broken group.
    assert!(shares.iter().all(|&s| s > 0), "{shares:?}");
}
