//! The running proxy with `tls:` listeners and a `tls:` upstream, on
//! loopback: TLS clients written with openssl/tokio-openssl (configured like
//! Lync-era and current clients) in front, a UDP registrar or a TLS
//! registrar (the library's own `ServerTls`) behind. Covers: registration
//! over TLS and `"transport": "tls"` records; the Lync-compatible setting;
//! mutual TLS; plain text, silence and a TLS client on the TCP port costing
//! one connection each, counted by reason; an upstream whose certificate
//! does not carry the configured name (503, nothing delivered, counted as
//! not delivered over TLS; `/readyz` probes it with a TLS handshake); `sips:`
//! Request-URIs relayed only over TLS; RFC 4475 torture messages over TLS
//! behaving as over TCP; issue 8's per-source cap, bans and message deadline
//! on a `tls:` listener, before any handshake. Certificates come from a PKI
//! generated at test time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::admin_client::http_get;
use common::sip_stream::{header, header_values, status, Agent, Received, SipStream};
use common::tls::{Pki, PkiFiles, TestClient};
use common::TestProxy;
use sipadmit::config::{Identity, TlsSettings};
use sipadmit::observe::metrics::{Metrics, TlsSide};
use sipadmit::transport::tls::{HandshakeReason, ServerTls};
use sipadmit::transport::{Fault, Transport};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(500);

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
const PHONE_EDITION: &str =
    "CPE/4.0.7577.4100 OCPhone/4.0.7577.4100 (Microsoft Lync 2010 Phone Edition)";

fn pki() -> (tempfile::TempDir, PkiFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    (dir, files)
}

/// `[tls]` presenting the test server certificate, plus `extra` lines.
fn tls_config(files: &PkiFiles, extra: &str) -> String {
    format!(
        // No OPTIONS probes: each test counts what reaches its registrar.
        "[proxy]\nflow_secret = \"tls-proxy-tests-0123456789abcdef\"\nupstream_probe_secs = 0\n\
         [response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{extra}\n",
        files.server.0.display(),
        files.server.1.display()
    )
}

/// `[tls]` keys then the admin listener on an ephemeral port (for `extra`
/// in [`tls_config`]).
fn with_admin(tls_keys: &str) -> String {
    format!("{tls_keys}\n[admin]\nlisten = \"127.0.0.1:0\"")
}

/// `GET /readyz` on the admin listener: the status and the body.
async fn readyz(proxy: &TestProxy) -> (u16, String) {
    http_get(proxy.admin.expect("an admin listener"), "/readyz", WAIT).await
}

const LYNC_COMPATIBLE: &str = "min_version = \"1.0\"\nciphers = \"DEFAULT:@SECLEVEL=0\"";

/// A UDP registrar that answers every request `200 OK` (echoing Path) and
/// hands each request to the test.
async fn udp_registrar() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let registrar = Agent::new("registrar", "registrar", addr, "UDP");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if request.starts_with("SIP/2.0") {
                continue;
            }
            // Folded header lines (wsinv.dat's CSeq) unfolded, so that the
            // answer copies whole values (RFC 3261 7.3.1).
            let unfolded = request.replace("\r\n ", " ").replace("\r\n\t", " ");
            let mut answer = registrar.answer(&unfolded, "200 OK");
            for path in header(&request, "Path") {
                answer = answer.replacen("\r\n", &format!("\r\nPath: {path}\r\n"), 1);
            }
            if !request.starts_with("ACK ") {
                let _ = socket.send_to(answer.as_bytes(), from).await;
            }
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

async fn tls_client(
    client: &TestClient,
    proxy: &TestProxy,
) -> Result<SipStream<tokio_openssl::SslStream<TcpStream>>, String> {
    client
        .connect(proxy.tls.expect("a tls: listener"))
        .await
        .map(SipStream::new)
}

fn agent_on(stream: &tokio_openssl::SslStream<TcpStream>, user: &str, ua: &str) -> Agent {
    Agent::new(user, ua, stream.get_ref().local_addr().unwrap(), "TLS")
}

/// Register `user` on `conn`; returns the final response.
async fn register(
    conn: &mut SipStream<tokio_openssl::SslStream<TcpStream>>,
    user: &str,
    ua: &str,
) -> Received {
    let agent = agent_on(&conn.stream, user, ua);
    if conn
        .send(&agent.register(&format!("{user}-reg"), 1))
        .await
        .is_err()
    {
        return Received::Closed;
    }
    conn.recv_starting("SIP/2.0", WAIT).await
}

#[tokio::test]
async fn a_tls_client_registers_with_a_tls_path_flow_and_tls_records() {
    let (_dir, files) = pki();
    let (registrar, mut at_registrar) = udp_registrar().await;
    let proxy = TestProxy::start_with_tls(&tls_config(&files, ""), &format!("udp:{registrar}"));
    let (_conn, answer) = alice_registers(&files, &proxy).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let relayed = at_registrar.recv().await.unwrap();
    // sipadmit's Via names its UDP side toward the UDP registrar; the
    // client's Via says TLS and gets received/rport.
    let vias = header_values(&relayed, "Via");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {}", proxy.udp)),
        "{relayed}"
    );
    assert!(
        vias[1].starts_with("SIP/2.0/TLS ") && vias[1].contains("received=127.0.0.1"),
        "{relayed}"
    );
    let path = header(&relayed, "Path");
    assert_eq!(path.len(), 1, "{relayed}");
    assert!(
        path[0].contains(&format!("@{};transport=udp;lr", proxy.udp)),
        "{relayed}"
    );
    let records = proxy.records();
    let record = records
        .iter()
        .find(|r| r["method"] == "REGISTER")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(record["transport"], "tls");
    assert_eq!(record["action"], "allow");
    let metrics = proxy.stop();
    assert_eq!(metrics.tls_handshakes(TlsSide::Listener), 1);
}

fn failures(metrics: &Metrics, reason: HandshakeReason) -> u64 {
    metrics.tls_handshake_failures(TlsSide::Listener, reason)
}

#[tokio::test]
async fn legacy_clients_are_refused_by_default_and_register_with_the_lync_compatible_setting() {
    let (_dir, files) = pki();
    let (registrar, _at_registrar) = udp_registrar().await;
    let upstream = format!("udp:{registrar}");
    let legacy = [
        (
            TestClient::lync_phone_edition(&files.ca),
            HandshakeReason::ProtocolVersion,
            PHONE_EDITION,
        ),
        (
            TestClient::windows7_schannel(&files.ca),
            HandshakeReason::NoSharedCipher,
            LYNC,
        ),
    ];
    // Secure defaults: refused during the handshake, counted by reason.
    let proxy = TestProxy::start_with_tls(&tls_config(&files, ""), &upstream);
    for (client, _, _) in &legacy {
        let refused = tls_client(client, &proxy).await;
        assert!(refused.is_err(), "a legacy client got through by default");
    }
    let metrics = proxy.stop();
    for (_, reason, _) in &legacy {
        assert_eq!(failures(&metrics, *reason), 1, "{reason}");
    }
    assert_eq!(metrics.faults(Fault::TlsHandshake), 2);
    // The Lync-compatible setting: both register.
    let proxy = TestProxy::start_with_tls(&tls_config(&files, LYNC_COMPATIBLE), &upstream);
    for (i, (client, _, ua)) in legacy.iter().enumerate() {
        let mut conn = tls_client(client, &proxy).await.unwrap();
        let answer = register(&mut conn, &format!("legacy{i}"), ua)
            .await
            .message("REGISTER answer");
        assert_eq!(status(&answer), 200, "{answer}");
    }
    let metrics = proxy.stop();
    assert_eq!(metrics.tls_handshakes(TlsSide::Listener), 2);
}

#[tokio::test]
async fn with_client_ca_a_client_without_certificate_is_refused_and_one_with_registers() {
    let (_dir, files) = pki();
    let (registrar, _at_registrar) = udp_registrar().await;
    let client_ca = format!("client_ca = \"{}\"", files.ca.display());
    let proxy =
        TestProxy::start_with_tls(&tls_config(&files, &client_ca), &format!("udp:{registrar}"));
    // Without a certificate: the handshake fails, or (TLS 1.3, where the
    // client finishes first) the server's alert closes the connection
    // before any answer.
    let anonymous = TestClient::modern(&files.ca);
    if let Ok(mut conn) = tls_client(&anonymous, &proxy).await {
        let got = register(&mut conn, "anonymous", LYNC).await;
        assert!(matches!(got, Received::Closed), "{got:?}");
    }
    let mut conn = tls_client(&anonymous.with_certificate(&files.client), &proxy)
        .await
        .unwrap();
    let answer = register(&mut conn, "alice", LYNC)
        .await
        .message("REGISTER answer");
    assert_eq!(status(&answer), 200, "{answer}");
    let metrics = proxy.stop();
    assert_eq!(failures(&metrics, HandshakeReason::NoClientCertificate), 1);
    assert_eq!(metrics.tls_handshakes(TlsSide::Listener), 1);
}

#[tokio::test]
async fn plain_text_silence_and_a_tls_client_on_the_tcp_port_cost_one_connection_each() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, files) = pki();
    let (registrar, _at_registrar) = udp_registrar().await;
    let proxy = TestProxy::start_with_tls(
        &tls_config(&files, "handshake_timeout_secs = 1"),
        &format!("udp:{registrar}"),
    );
    let tls_port = proxy.tls.unwrap();
    // A silent client holds its own connection until the deadline ...
    let mut silent = TcpStream::connect(tls_port).await.unwrap();
    // ... while SIP in plain text on the TLS port is closed ...
    let mut plain = TcpStream::connect(tls_port).await.unwrap();
    let agent = Agent::new("plain", LYNC, plain.local_addr().unwrap(), "TCP");
    plain
        .write_all(agent.register("plain", 1).as_bytes())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, plain.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "plain text answered: {read:?}"
    );
    // ... a TLS client on the plain TCP port is closed at once ...
    let wrong_port = TestClient::modern(&files.ca).connect(proxy.tcp).await;
    assert!(wrong_port.is_err());
    // ... and a TLS client registers meanwhile.
    let (_conn, answer) = alice_registers(&files, &proxy).await;
    assert_eq!(status(&answer), 200, "{answer}");
    // The silent one is closed at its deadline (bounded wait).
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "silent client kept: {read:?}"
    );
    // A TCP client still registers over TCP.
    let mut tcp = SipStream::new(TcpStream::connect(proxy.tcp).await.unwrap());
    let agent = Agent::new("bob", LYNC, tcp.stream.local_addr().unwrap(), "TCP");
    tcp.send(&agent.register("bob-tcp", 1)).await.unwrap();
    let answer = tcp
        .recv_starting("SIP/2.0", WAIT)
        .await
        .message("TCP REGISTER");
    assert_eq!(status(&answer), 200, "{answer}");
    let metrics = proxy.stop();
    assert_eq!(failures(&metrics, HandshakeReason::PlainText), 1);
    assert_eq!(failures(&metrics, HandshakeReason::Timeout), 1);
    assert_eq!(metrics.faults(Fault::TlsHandshake), 2);
    assert_eq!(metrics.faults(Fault::TlsOnTcpPort), 1);
    assert_eq!(metrics.tls_handshakes(TlsSide::Listener), 1);
}

/// A TLS registrar: the library's `ServerTls` presenting `certificate`;
/// each request it reads is answered `200 OK` and handed to the test.
async fn tls_registrar(
    certificate: &(std::path::PathBuf, std::path::PathBuf),
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<String>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let settings = TlsSettings {
        identity: Some(Identity {
            certificate: certificate.0.clone(),
            private_key: certificate.1.clone(),
        }),
        ..TlsSettings::default()
    };
    let server = Arc::new(ServerTls::new(&settings).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let handshake_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = handshake_failures.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let deadline = tokio::time::Instant::now() + WAIT;
            let Ok(tls) = server.accept(tcp, deadline).await else {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let registrar = Agent::new("registrar", "registrar", addr, "TLS");
                let mut conn = SipStream::new(tls);
                while let Received::Message(request) = conn.recv(Duration::from_secs(30)).await {
                    if !request.starts_with("SIP/2.0") && !request.starts_with("ACK ") {
                        let _ = conn.send(&registrar.answer(&request, "200 OK")).await;
                    }
                    if tx.send(request).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx, handshake_failures)
}

#[tokio::test]
async fn an_upstream_whose_certificate_lacks_the_configured_name_gets_nothing_and_the_client_503() {
    let (_dir, files) = pki();
    let (registrar, mut at_registrar, registrar_failures) = tls_registrar(&files.server).await;
    let extra = with_admin(&format!(
        "upstream_ca = \"{}\"\nupstream_server_name = \"pool01.contoso.com\"",
        files.ca.display()
    ));
    let proxy = TestProxy::start_with_tls(&tls_config(&files, &extra), &format!("tls:{registrar}"));
    // Before any traffic, /readyz probes with a TLS handshake, which the
    // registrar's certificate fails (a TCP connect alone would succeed).
    let (code, body) = readyz(&proxy).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("TLS handshake failed (bad_certificate)") && !body.contains(" s ago"),
        "{body}"
    );
    let (_conn, answer) = alice_registers(&files, &proxy).await;
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(!header(&answer, "Retry-After").is_empty(), "{answer}");
    assert!(
        tokio::time::timeout(QUIET, at_registrar.recv())
            .await
            .is_err(),
        "nothing reaches a registrar that fails verification"
    );
    let records = proxy.records();
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 503 && r["rule"] == "proxy.upstream-unavailable"),
        "{records:#?}"
    );
    // The link's failed handshake is remembered for /readyz like a failed
    // TCP connect.
    let (code, body) = readyz(&proxy).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("bad_certificate") && body.contains("nothing delivered since"),
        "{body}"
    );
    let metrics = proxy.stop();
    assert_eq!(
        metrics.tls_handshake_failures(TlsSide::Upstream, HandshakeReason::BadCertificate),
        1,
        "the link's handshake is counted, the probe's is not"
    );
    assert_eq!(metrics.faults(Fault::UpstreamConnect), 1);
    assert_eq!(metrics.upstream_send_failures(Transport::Tls), 1);
    assert!(metrics.upstream_failure().is_some());
    assert_eq!(
        registrar_failures.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the probe's handshake and the link's"
    );
}

/// A modern TLS client (trusting the test CA) connects and registers
/// Alice; the connection and the final answer.
async fn alice_registers(
    files: &PkiFiles,
    proxy: &TestProxy,
) -> (SipStream<tokio_openssl::SslStream<TcpStream>>, String) {
    let mut conn = tls_client(&TestClient::modern(&files.ca), proxy)
        .await
        .unwrap();
    let answer = register(&mut conn, "alice", LYNC)
        .await
        .message("REGISTER answer");
    (conn, answer)
}

/// Alice sends `INVITE sips:bob@contoso.com` (Call-ID `call_id`) on
/// `conn`; the final answer.
async fn invite_sips_bob(
    conn: &mut SipStream<tokio_openssl::SslStream<TcpStream>>,
    call_id: &str,
) -> String {
    let agent = agent_on(&conn.stream, "alice", LYNC);
    conn.send(&agent.invite("sips:bob@contoso.com", call_id))
        .await
        .unwrap();
    conn.recv_starting("SIP/2.0", WAIT)
        .await
        .message("INVITE answer")
}

#[tokio::test]
async fn a_tls_upstream_carries_registers_and_sips_requests_relay_only_over_tls() {
    let (_dir, files) = pki();
    let (registrar, mut at_registrar, _) = tls_registrar(&files.server).await;
    let extra = with_admin(&format!("upstream_ca = \"{}\"", files.ca.display()));
    let proxy = TestProxy::start_with_tls(&tls_config(&files, &extra), &format!("tls:{registrar}"));
    assert_eq!(readyz(&proxy).await, (200, "ready\n".into()));
    let (mut conn, answer) = alice_registers(&files, &proxy).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let relayed = at_registrar.recv().await.unwrap();
    let tls_side = proxy.tls.unwrap();
    assert!(
        header_values(&relayed, "Via")[0].starts_with(&format!("SIP/2.0/TLS {tls_side}")),
        "{relayed}"
    );
    assert!(
        header(&relayed, "Path")[0].contains(&format!("@{tls_side};transport=tls;lr")),
        "{relayed}"
    );
    // A sips: INVITE leaves over TLS to a TLS upstream.
    let answer = invite_sips_bob(&mut conn, "sips-over-tls").await;
    assert_eq!(status(&answer), 200, "{answer}");
    let invite = at_registrar.recv().await.unwrap();
    assert!(
        invite.starts_with("INVITE sips:bob@contoso.com "),
        "{invite}"
    );
    drop(proxy);

    // With a UDP registrar, the same sips: INVITE is answered 480 with
    // RFC 5630's warning, and nothing is relayed.
    let (udp_registrar, mut at_udp_registrar) = udp_registrar().await;
    let proxy = TestProxy::start_with_tls(&tls_config(&files, ""), &format!("udp:{udp_registrar}"));
    let mut conn = tls_client(&TestClient::modern(&files.ca), &proxy)
        .await
        .unwrap();
    let answer = invite_sips_bob(&mut conn, "sips-over-udp").await;
    assert_eq!(status(&answer), 480, "{answer}");
    assert_eq!(
        header(&answer, "Warning"),
        ["380 sipadmit \"SIPS Not Allowed\""],
        "{answer}"
    );
    assert!(tokio::time::timeout(QUIET, at_udp_registrar.recv())
        .await
        .is_err());
    let records = proxy.records();
    let refused = records
        .iter()
        .find(|r| r["rule"] == "proxy.sips-without-tls")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(
        (refused["status"].as_u64(), refused["transport"].as_str()),
        (Some(480), Some("tls"))
    );
}

// === RFC 4475 over TLS ===

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/rfc4475")
}

/// What became of one message sent on a fresh connection: relayed to the
/// registrar, answered (with the status), or neither within the wait.
async fn outcome<S>(
    mut conn: SipStream<S>,
    bytes: &[u8],
    at_registrar: &mut mpsc::UnboundedReceiver<String>,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    while at_registrar.try_recv().is_ok() {}
    conn.stream.write_all(bytes).await.unwrap();
    // Relayed wins: the registrar's answer to a relayed request comes back
    // to the client too.
    let answer = tokio::select! {
        biased;
        relayed = at_registrar.recv() => {
            let _ = relayed.expect("registrar running");
            return "forward".into();
        }
        answer = conn.recv(QUIET) => answer,
    };
    if at_registrar.try_recv().is_ok() {
        return "forward".into();
    }
    match answer {
        Received::Message(m) => format!("reply:{}", status(&m)),
        Received::Closed => "closed".into(),
        Received::Timeout => "discard".into(),
    }
}

#[tokio::test]
async fn rfc4475_torture_messages_over_tls_behave_as_over_tcp_and_must_rows_hold() {
    let (_dir, files) = pki();
    let (registrar, mut at_registrar) = udp_registrar().await;
    // Each case watches what one message makes reach the registrar, and
    // sipadmit retransmits what came over a stream until it is answered: the
    // stub answers every request, and T1 at its maximum (10 s) keeps an
    // answer lost on a loaded machine from landing in a later case.
    let limits = "[limits]\ntimer_t1_ms = 10000\ntimer_t2_ms = 10000";
    let proxy = TestProxy::start_with_tls(&tls_config(&files, limits), &format!("udp:{registrar}"));
    let client = TestClient::modern(&files.ca);
    let manifest = std::fs::read_to_string(corpus().join("MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    let mut broken = Vec::new();
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, level, expected) = (cols[0], cols[3], cols[4]);
        let bytes = std::fs::read(corpus().join(file)).unwrap();
        let tcp = SipStream::new(TcpStream::connect(proxy.tcp).await.unwrap());
        let over_tcp = outcome(tcp, &bytes, &mut at_registrar).await;
        let tls = tls_client(&client, &proxy).await.unwrap();
        let over_tls = outcome(tls, &bytes, &mut at_registrar).await;
        assert_eq!(over_tls, over_tcp, "{file}: TLS and TCP differ");
        // What differs on any stream (TCP alike): a body shorter than its
        // Content-Length is waited for (RFC 3261 18.3), so clerr.dat is
        // not answered at once; a negative or doubled Content-Length leaves
        // no way to find the next message, so the connection is closed
        // (never relayed, as the manifest requires); an RFC 2543 request
        // without Content-Length cannot be framed on a stream, where it must
        // carry one (RFC 3261 18.3, 20.14: its body would be read as the
        // next message), so it is answered 400.
        let expected_here = match file {
            "clerr.dat" => "discard",
            "ncl.dat" | "mcl01.dat" => "closed",
            "inv2543.dat" => "reply:400",
            _ => expected,
        };
        if level == "must" && !expected_here.split('|').any(|e| e == over_tls) {
            broken.push(format!("{file}: expected {expected_here}, got {over_tls}"));
        }
        checked += 1;
    }
    assert!(
        broken.is_empty(),
        "must rows broken over TLS:\n{}",
        broken.join("\n")
    );
    assert_eq!(checked, 49);
    // Still serving TLS.
    let mut conn = tls_client(&client, &proxy).await.unwrap();
    let answer = register(&mut conn, "alive", LYNC)
        .await
        .message("REGISTER answer");
    assert_eq!(status(&answer), 200);
}

/// Issue 8's per-source limits on a `tls:` listener: they are checked at
/// accept, before any handshake. A source with
/// `rate_limit.max_connections_per_source` TLS connections open gets its
/// next one closed unhandshaken (the open ones keep working, and a close
/// frees the place); a banned source (here for a scanner User-Agent over
/// UDP) gets its TLS connections closed the same way.
/// A TLS connection, admitted once the proxy has seen the close that
/// freed its place (bounded retries: a close reaches it a moment later).
async fn admitted_after_a_close(
    client: &TestClient,
    proxy: &TestProxy,
) -> SipStream<tokio_openssl::SslStream<TcpStream>> {
    for _ in 0..50 {
        if let Ok(conn) = tls_client(client, proxy).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection admitted after a close");
}

#[tokio::test]
async fn a_tls_listener_caps_connections_per_source_and_refuses_banned_sources_before_the_handshake(
) {
    let (_dir, files) = pki();
    let (registrar, _at_registrar) = udp_registrar().await;
    // Loopback untrusted; the connection rate out of the way (a token per
    // microsecond), so the cap is what refuses.
    let config = format!(
        "{}\n[rate_limit]\ntrusted = []\nconnections_per_second = 1000000\n\
         max_connections_per_source = 2\n",
        tls_config(&files, "")
    );
    let proxy = TestProxy::start_with_tls(&config, &format!("udp:{registrar}"));
    let client = TestClient::modern(&files.ca);
    let mut first = tls_client(&client, &proxy).await.unwrap();
    let second = tls_client(&client, &proxy).await.unwrap();
    let third = tls_client(&client, &proxy).await;
    assert!(
        third.is_err(),
        "a third connection from the source admitted"
    );
    let answer = register(&mut first, "alice", LYNC)
        .await
        .message("REGISTER answer");
    assert_eq!(status(&answer), 200, "{answer}");
    // A close frees a place (once the proxy has seen it).
    drop(second);
    let mut again = admitted_after_a_close(&client, &proxy).await;
    let answer = register(&mut again, "bob", LYNC)
        .await
        .message("REGISTER answer");
    assert_eq!(status(&answer), 200, "{answer}");

    // A scanner from the same address, over TLS (the handshake proves the
    // address; a UDP datagram alone would not, and a ban earned over UDP
    // blocks only UDP): banned, then its TLS connections are closed at
    // accept (the ban is checked before the cap).
    drop((first, again));
    let mut scanner = admitted_after_a_close(&client, &proxy).await;
    let probe = agent_on(&scanner.stream, "100", "friendly-scanner").register("scan-1", 1);
    scanner.send(&probe).await.unwrap();
    // The ban is in force before its record is written.
    let mut banned = false;
    for _ in 0..50 {
        if proxy.records().iter().any(|r| r["rule"] == "ban.scanner") {
            banned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(banned, "the scanner was not banned");
    let refused = tls_client(&client, &proxy).await;
    assert!(
        refused.is_err(),
        "a banned source's TLS connection admitted"
    );
    let metrics = proxy.stop();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(count(&metrics.connections_per_source_refused) >= 1);
    assert!(count(&metrics.banned_connections) >= 1);
    assert_eq!(count(&metrics.bans), 1);
    // Refused connections never started a handshake (the three clients'
    // and the scanner's completed).
    assert_eq!(metrics.tls_handshakes(TlsSide::Listener), 4);
    let failed: u64 = HandshakeReason::ALL
        .iter()
        .map(|&r| failures(&metrics, r))
        .sum();
    assert_eq!(failed, 0);
}

/// A TLS handshake is bounded by `limits.message_deadline_secs` too (the
/// shorter of it and `tls.handshake_timeout_secs`): a silent client on the
/// TLS port is closed by the message deadline, counted as a handshake
/// timeout.
#[tokio::test]
async fn the_message_deadline_bounds_a_tls_handshake() {
    use tokio::io::AsyncReadExt;
    let (_dir, files) = pki();
    let (registrar, _at_registrar) = udp_registrar().await;
    let config = format!(
        "{}\n[limits]\nmessage_deadline_secs = 1\n",
        tls_config(&files, "handshake_timeout_secs = 300")
    );
    let proxy = TestProxy::start_with_tls(&config, &format!("udp:{registrar}"));
    let mut silent = TcpStream::connect(proxy.tls.unwrap()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "silent client kept: {read:?}"
    );
    let metrics = proxy.stop();
    assert_eq!(failures(&metrics, HandshakeReason::Timeout), 1);
}

/// A TLS 1.3 registrar that requires a client certificate sipadmit does not
/// have: under TLS 1.3 the client's handshake completes before the server
/// checks the (missing) certificate, so the refusal (an alert, then the
/// close) comes after sipadmit has written the first request on the link.
/// The client gets `503` at once, not a 32 s wait; the next request opens a
/// new link (and is refused the same way).
#[tokio::test]
async fn a_registrar_refusing_our_certificate_after_a_tls13_handshake_gets_the_client_a_503_at_once(
) {
    let (_dir, files) = pki();
    let settings = TlsSettings {
        identity: Some(Identity {
            certificate: files.server.0.clone(),
            private_key: files.server.1.clone(),
        }),
        client_ca: Some(files.ca.clone()),
        min_version: sipadmit::config::TlsVersion::Tls1_3,
        ..TlsSettings::default()
    };
    let server = Arc::new(ServerTls::new(&settings).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registrar = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = refused.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let deadline = tokio::time::Instant::now() + WAIT;
            if server.accept(tcp, deadline).await.is_err() {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let extra = format!("upstream_ca = \"{}\"", files.ca.display());
    let proxy = TestProxy::start_with_tls(&tls_config(&files, &extra), &format!("tls:{registrar}"));
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let (_conn, answer) = alice_registers(&files, &proxy).await;
        assert_eq!(status(&answer), 503, "{answer}");
        assert!(!header(&answer, "Retry-After").is_empty(), "{answer}");
        assert!(
            started.elapsed() < WAIT,
            "answered at once, not after the client's own timeout"
        );
    }
    assert_eq!(
        refused.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "each request opened a new link, refused after the handshake"
    );
    let records = proxy.records();
    let refusals = records
        .iter()
        .filter(|r| r["status"] == 503 && r["rule"] == "proxy.upstream-unavailable")
        .count();
    assert_eq!(refusals, 2, "{records:#?}");
}

/// sipadmit frozen (SIGSTOP, a paused VM) while a TLS client's handshake is
/// under way, past `tls.handshake_timeout_secs`: the ClientHello reached
/// its socket in time, so on resume the handshake completes. The deadline
/// is seen late and put off once (after SIGCONT the event loop's wait fails
/// with EINTR and finds the timer before the bytes).
#[test]
fn a_tls_handshake_under_way_survives_a_freeze_of_sipadmit_past_its_deadline() {
    use common::binary::{free_port, Sipadmit};
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let (dir, files) = pki();
    let registrar = common::udp_registrar::Registrar::start();
    let config = dir.path().join("sipadmit.toml");
    std::fs::write(&config, tls_config(&files, "handshake_timeout_secs = 1")).unwrap();
    let port = free_port();
    let mut sipadmit = Sipadmit::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("tls:127.0.0.1:{port}")])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(["--upstream", &format!("udp:{}", registrar.addr)])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null()),
    );
    sipadmit.wait_for("listening");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Accepted, its handshake deadline running; then frozen past it.
    std::thread::sleep(Duration::from_millis(300));
    sipadmit.signal("STOP");
    let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
    connector.set_ca_file(&files.ca).unwrap();
    connector.set_verify(SslVerifyMode::PEER);
    let connector = connector.build();
    let handshake = std::thread::spawn(move || {
        connector
            .connect("127.0.0.1", tcp)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    // Frozen for 5 s: the 1 s deadline is seen 4 s late, a freeze's mark.
    std::thread::sleep(Duration::from_millis(5000));
    sipadmit.signal("CONT");
    let done = handshake.join().unwrap();
    let stderr = sipadmit.terminate();
    assert!(done.is_ok(), "{done:?}\n{stderr}");
    assert!(!stderr.contains("handshake failed"), "{stderr}");
}
