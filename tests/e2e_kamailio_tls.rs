//! End to end over TLS with real components: Kamailio with its TLS module as
//! the registrar (usrloc in memory, Path support), TLS clients written with
//! openssl/tokio-openssl (Debian's SIPp has no TLS) in front of sipadmit,
//! SIPp over UDP as the Response Group application talking to Kamailio.
//!
//! - the Response Group flow of `e2e_kamailio.rs`, over TLS on both sides;
//! - a TLS caller and a TLS callee in front of a UDP registrar finish a
//!   dialog (INVITE/200/ACK/BYE) through the RFC 5658 double Record-Route;
//! - mutual TLS toward the registrar: sipadmit presents its client
//!   certificate to a Kamailio that requires one.
//!
//! Needs `kamailio` with the TLS module and `sipp` (Debian `kamailio`,
//! `kamailio-tls-modules`, `sip-tester`); fails under CI=true when they are
//! missing, skips with a message otherwise.

mod common;

use std::time::Duration;

use common::external::{
    require_tool, Kamailio, KamailioOptions, KamailioTls, Sipp, UA_LYNC_2013, UA_LYNC_MOBILE,
    UA_RESPONSE_GROUP,
};
use common::sip_stream::{header, header_values, status, Agent, Received, SipStream};
use common::tls::{Pki, PkiFiles, TestClient};
use common::TestProxy;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

const RUN: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(8);

type TlsConn = SipStream<SslStream<TcpStream>>;

fn pki() -> (tempfile::TempDir, PkiFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    (dir, files)
}

fn config(files: &PkiFiles, extra_tls: &str) -> String {
    format!(
        "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n\
         application_user_agents = [\"Response_Group_Service\"]\n\
         agents = [\"sip:agent-*@contoso.com\"]\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nupstream_ca = \"{}\"\n{extra_tls}\n",
        files.server.0.display(),
        files.server.1.display(),
        files.ca.display(),
    )
}

fn kamailio_tls(files: &PkiFiles) -> KamailioTls {
    KamailioTls::new(&files.server.0, &files.server.1, &files.ca)
}

fn kamailio(tls: KamailioTls) -> Option<Kamailio> {
    require_tool("sipp")?;
    Kamailio::try_start(KamailioOptions {
        tls: Some(tls),
        ..KamailioOptions::default()
    })
}

async fn connect(files: &PkiFiles, proxy: &TestProxy) -> TlsConn {
    let tls = TestClient::modern(&files.ca)
        .connect(proxy.tls.unwrap())
        .await
        .unwrap();
    SipStream::new(tls)
}

fn agent(conn: &TlsConn, user: &str, ua: &str) -> Agent {
    Agent::new(user, ua, conn.stream.get_ref().local_addr().unwrap(), "TLS")
}

/// REGISTER `agent` on `conn`; the final response.
async fn register(conn: &mut TlsConn, agent: &Agent) -> String {
    conn.send(&agent.register(&format!("{}-reg", agent.user), 1))
        .await
        .unwrap();
    conn.recv_starting("SIP/2.0", WAIT)
        .await
        .message("REGISTER answer")
}

/// INVITE `ruri` on `conn` and take the final answer (ACKed when not 2xx,
/// hop by hop with the INVITE's branch).
async fn call(conn: &mut TlsConn, caller: &Agent, ruri: &str, call_id: &str) -> String {
    let invite = caller.invite(ruri, call_id);
    conn.send(&invite).await.unwrap();
    loop {
        let answer = conn
            .recv_starting("SIP/2.0", RUN)
            .await
            .message("INVITE answer");
        let code = status(&answer);
        if code < 200 {
            continue;
        }
        if code >= 300 {
            let ack = format!(
                "ACK {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                header(&invite, "Via")[0],
                header(&answer, "From")[0],
                header(&answer, "To")[0],
            );
            conn.send(&ack).await.unwrap();
        }
        return answer;
    }
}

/// Answer one call on `conn` as `agent` (200, then the ACK, then 200 to
/// the BYE); the requests it received, in order.
async fn answer_one_call(mut conn: TlsConn, agent: Agent) -> Vec<String> {
    let mut received = Vec::new();
    while let Received::Message(m) = conn.recv(RUN).await {
        if m.starts_with("SIP/2.0") {
            continue;
        }
        received.push(m.clone());
        if m.starts_with("INVITE ") {
            conn.send(&agent.answer(&m, "200 OK")).await.unwrap();
        } else if m.starts_with("BYE ") {
            conn.send(&agent.answer(&m, "200 OK")).await.unwrap();
            break;
        }
    }
    received
}

fn wait_for_registers(kam: &Kamailio, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while kam.log_lines("REQ REGISTER").len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kam.log_lines("REQ REGISTER").len() >= n, "{}", kam.log());
}

fn record<'a>(records: &'a [Value], method: &str, ruri_part: &str, client: &str) -> &'a Value {
    records
        .iter()
        .find(|r| {
            r["method"] == method
                && r["request_uri"].as_str().unwrap_or("").contains(ruri_part)
                && r["client"] == client
        })
        .unwrap_or_else(|| panic!("no {method} record for {ruri_part} / {client}: {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_group_session_over_tls_on_both_sides() {
    let (_dir, files) = pki();
    let Some(kam) = kamailio(kamailio_tls(&files)) else {
        return;
    };
    let proxy = TestProxy::start_with_tls(&config(&files, ""), &kam.upstream_tls().unwrap());
    let tls_side = proxy.tls.unwrap();

    // The agents register over TLS; Kamailio receives the REGISTERs over
    // TLS, with a transport=tls Path to sipadmit's TLS side.
    let mut desk = connect(&files, &proxy).await;
    let desk_agent = agent(&desk, "agent-desk", UA_LYNC_2013);
    let answer = register(&mut desk, &desk_agent).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let path = header(&answer, "Path");
    assert!(
        path.iter()
            .any(|p| p.contains(&format!("@{tls_side};transport=tls;lr"))),
        "{answer}"
    );
    let mut mobile = connect(&files, &proxy).await;
    let mobile_agent = agent(&mobile, "agent-mob", UA_LYNC_MOBILE);
    let answer = register(&mut mobile, &mobile_agent).await;
    assert_eq!(status(&answer), 200, "{answer}");
    wait_for_registers(&kam, 2);
    let registers = kam.log_lines("REQ REGISTER");
    assert!(
        registers.iter().all(|l| l.contains("src=tls:127.0.0.1:")),
        "{registers:#?}"
    );

    // Callers over TLS: the desktop's INVITE reaches the workflow (486 from
    // Kamailio); the mobile's is answered 403 by sipadmit.
    let mut desk_caller = connect(&files, &proxy).await;
    let caller = agent(&desk_caller, "alice", UA_LYNC_2013);
    let answer = call(
        &mut desk_caller,
        &caller,
        "sip:helpdesk@contoso.com",
        "tls-desk-caller",
    )
    .await;
    assert_eq!(status(&answer), 486, "{answer}");
    let mut mobile_caller = connect(&files, &proxy).await;
    let caller = agent(&mobile_caller, "bob", UA_LYNC_MOBILE);
    let answer = call(
        &mut mobile_caller,
        &caller,
        "sip:helpdesk@contoso.com",
        "tls-mob-caller",
    )
    .await;
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(
        header(&answer, "Warning")
            .first()
            .is_some_and(|w| w.starts_with("399 sipadmit")),
        "{answer}"
    );

    // The Response Group application (SIPp, UDP to Kamailio) offers the
    // call to each agent; Kamailio routes along the Path over TLS to
    // sipadmit, which writes the offer on the agent's own TLS connection.
    let desk_calls = tokio::spawn(answer_one_call(desk, desk_agent));
    let kam_udp = kam.udp_addr();
    tokio::task::spawn_blocking(move || {
        Sipp::call("sip:agent-desk@contoso.com", UA_RESPONSE_GROUP, 200)
            .remote(kam_udp)
            .label("rg-to-tls-desktop")
            .run_with_timeout(RUN)
            .assert_success();
        Sipp::call("sip:agent-mob@contoso.com", UA_RESPONSE_GROUP, 480)
            .remote(kam_udp)
            .label("rg-to-tls-mobile")
            .run_with_timeout(RUN)
            .assert_success();
    })
    .await
    .unwrap();
    let desk_received = desk_calls.await.unwrap();
    let methods: Vec<&str> = desk_received
        .iter()
        .map(|m| m.split(' ').next().unwrap())
        .collect();
    assert_eq!(methods, ["INVITE", "ACK", "BYE"], "{desk_received:#?}");
    let offer = &desk_received[0];
    assert!(
        !offer.contains("\r\nRoute:"),
        "sipadmit removes its own Route: {offer}"
    );
    assert!(
        header_values(offer, "Via")[0].starts_with(&format!("SIP/2.0/TLS {tls_side}")),
        "{offer}"
    );
    // The mobile agent's fork got 480 from sipadmit: nothing reached it.
    let nothing = mobile.recv(Duration::from_millis(500)).await;
    assert!(matches!(nothing, Received::Timeout), "{nothing:?}");

    let records = proxy.records();
    let registration = record(&records, "REGISTER", "contoso.com", "lync-mobile");
    assert_eq!(registration["transport"], "tls");
    assert_eq!(registration["role"], "agent-registration");
    let rejected = record(&records, "INVITE", "helpdesk", "lync-mobile");
    assert_eq!(
        (rejected["action"].as_str(), rejected["status"].as_u64()),
        (Some("reject"), Some(403))
    );
    assert_eq!(rejected["transport"], "tls");
    let allowed = record(&records, "INVITE", "helpdesk", "lync-2013");
    assert_eq!(allowed["action"], "allow");
    let offer = record(&records, "INVITE", "agent-mob", "lync-mobile");
    assert_eq!(
        (offer["role"].as_str(), offer["status"].as_u64()),
        (Some("agent-offer"), Some(480))
    );
    assert_eq!(
        offer["transport"], "tls",
        "the offer arrived from Kamailio over TLS"
    );
    let offer = record(&records, "INVITE", "agent-desk", "lync-2013");
    assert_eq!(
        (offer["role"].as_str(), offer["action"].as_str()),
        (Some("agent-offer"), Some("allow"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_caller_and_a_tls_callee_finish_a_call_through_a_udp_registrar() {
    let (_dir, files) = pki();
    let Some(kam) = kamailio(kamailio_tls(&files)) else {
        return;
    };
    let proxy = TestProxy::start_with_tls(&config(&files, ""), &kam.upstream_udp());
    let (tls_side, udp_side) = (proxy.tls.unwrap(), proxy.udp);
    let mut callee_conn = connect(&files, &proxy).await;
    let callee = agent(&callee_conn, "agent-callee", UA_LYNC_2013);
    let answer = register(&mut callee_conn, &callee).await;
    assert_eq!(status(&answer), 200, "{answer}");
    wait_for_registers(&kam, 1);
    let callee_task = tokio::spawn(answer_one_call(callee_conn, callee));

    let mut caller_conn = connect(&files, &proxy).await;
    let caller = agent(&caller_conn, "caller", UA_LYNC_2013);
    let ok = call(
        &mut caller_conn,
        &caller,
        "sip:agent-callee@contoso.com",
        "tls-dialog",
    )
    .await;
    assert_eq!(status(&ok), 200, "{ok}");
    // The caller's route set starts at sipadmit's TLS side.
    let ack = caller.in_dialog("ACK", &ok, 1, "z9hG4bK-tls-dialog-ack");
    assert!(
        header(&ack, "Route")[0].contains(&format!("@{tls_side};transport=tls;lr")),
        "{ack}"
    );
    caller_conn.send(&ack).await.unwrap();
    let bye = caller.in_dialog("BYE", &ok, 2, "z9hG4bK-tls-dialog-bye");
    caller_conn.send(&bye).await.unwrap();
    // A late provisional answer of the INVITE may come first: sipadmit
    // relays the TLS caller's INVITE over UDP with retransmissions, and on
    // a slow machine Kamailio answers a retransmission 100 after the call
    // was answered (a stateless proxy forwards it, RFC 3261 16.11).
    let bye_answer = loop {
        let answer = caller_conn
            .recv_starting("SIP/2.0", RUN)
            .await
            .message("BYE answer");
        if !(status(&answer) == 100 && header(&answer, "CSeq")[0].ends_with("INVITE")) {
            break answer;
        }
    };
    assert_eq!(status(&bye_answer), 200, "{bye_answer}");
    assert!(
        header(&bye_answer, "CSeq")[0].ends_with("BYE"),
        "{bye_answer}"
    );

    let received = callee_task.await.unwrap();
    let methods: Vec<&str> = received
        .iter()
        .map(|m| m.split(' ').next().unwrap())
        .collect();
    assert_eq!(methods, ["INVITE", "ACK", "BYE"], "{received:#?}");
    // RFC 5658: the callee's route set: sipadmit's TLS side, its UDP side
    // (the registrar's leg), then the caller's pass: UDP, TLS.
    let tls = format!("@{tls_side};transport=tls;lr");
    let udp = format!("@{udp_side};transport=udp;lr");
    let record_routes = header_values(&received[0], "Record-Route");
    assert_eq!(record_routes.len(), 4, "{}", received[0]);
    for (value, side) in record_routes.iter().zip([&tls, &udp, &udp, &tls]) {
        assert!(
            value.contains(side.as_str()),
            "{value} should name {side}\n{}",
            received[0]
        );
    }
}

/// Alice registers over TLS through `proxy`: `200`, and Kamailio got her
/// REGISTER over TLS.
async fn alice_registers_over_tls(files: &PkiFiles, proxy: &TestProxy, kam: &Kamailio) {
    let mut conn = connect(files, proxy).await;
    let alice = agent(&conn, "alice", UA_LYNC_2013);
    let answer = register(&mut conn, &alice).await;
    assert_eq!(status(&answer), 200, "{answer}");
    wait_for_registers(kam, 1);
    let registers = kam.log_lines("REQ REGISTER");
    assert!(registers[0].contains("src=tls:"), "{registers:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipadmit_presents_its_client_certificate_to_a_registrar_that_requires_one() {
    let (_dir, files) = pki();
    let Some(kam) = kamailio(kamailio_tls(&files).require_client_certificate(&files.client)) else {
        return;
    };
    let upstream = kam.upstream_tls().unwrap();
    let with_certificate = format!(
        "upstream_certificate = \"{}\"\nupstream_private_key = \"{}\"",
        files.client.0.display(),
        files.client.1.display()
    );
    let proxy = TestProxy::start_with_tls(&config(&files, &with_certificate), &upstream);
    alice_registers_over_tls(&files, &proxy, &kam).await;
}

/// A registrar whose certificate names its SIP domain only as a `sip:` URI
/// subjectAltName (RFC 5922 7.1) is verified against that domain: the
/// REGISTER goes through to Kamailio over TLS and is answered `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_certificate_naming_its_sip_domain_as_a_uri_is_taken() {
    let (_dir, files) = pki();
    let registrar_tls = KamailioTls::new(&files.sip_domain.0, &files.sip_domain.1, &files.ca);
    let Some(kam) = kamailio(registrar_tls) else {
        return;
    };
    let upstream = kam.upstream_tls().unwrap();
    let proxy = TestProxy::start_with_tls(
        &config(&files, "upstream_server_name = \"contoso.com\""),
        &upstream,
    );
    alice_registers_over_tls(&files, &proxy, &kam).await;
}

/// Under the system's roots (here `SSL_CERT_FILE` names the test root, and
/// `tls.upstream_ca` is not set), a `sip:` URI subjectAltName does not name
/// the registrar: public CAs certify DNS names, and name constraints that
/// limit a CA to DNS names do not limit its URIs. The chain verifies, the
/// name does not: the REGISTER is answered `503` and the log says why.
#[test]
fn a_sip_uri_names_the_registrar_only_under_the_configured_ca() {
    let (dir, files) = pki();
    let registrar_tls = KamailioTls::new(&files.sip_domain.0, &files.sip_domain.1, &files.ca);
    let Some(kam) = kamailio(registrar_tls) else {
        return;
    };
    let config = dir.path().join("system-roots.toml");
    std::fs::write(
        &config,
        format!(
            "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n\
             [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
             upstream_server_name = \"contoso.com\"\n",
            files.server.0.display(),
            files.server.1.display(),
        ),
    )
    .unwrap();
    let mut sipadmit = common::binary::Sipadmit::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0", "--listen", "tls:127.0.0.1:0"])
            .args(["--upstream", &kam.upstream_tls().unwrap()])
            .env("RUST_LOG", "info")
            .env("SSL_CERT_FILE", &files.ca)
            .env("SSL_CERT_DIR", dir.path())
            .stdout(std::process::Stdio::null()),
    );
    let listening = sipadmit.wait_for("listening");
    let udp: std::net::SocketAddr = common::binary::field(&listening, "addr").parse().unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let me = client.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-roots-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=r1\r\nTo: <sip:alice@contoso.com>\r\n\
         Call-ID: system-roots@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{me}>\r\n\
         User-Agent: {UA_LYNC_2013}\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(register.as_bytes(), udp).unwrap();
    let mut answer = [0u8; 4096];
    let (n, _) = client.recv_from(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    // Neither the URI (not under the system's roots) nor the common name
    // (a certificate with subjectAltNames) names it.
    sipadmit.wait_for("hostname mismatch: no DNS subjectAltName");
    sipadmit.stop();
    assert!(kam.log_lines("REQ REGISTER").is_empty());
}
