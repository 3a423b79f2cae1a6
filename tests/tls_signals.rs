//! `sipadmit run` as a process with `tls:` and `tcp:` listeners and the
//! admin listener: `SIGHUP` reloads the config and re-reads the certificate
//! files (new connections get the new certificate, an open connection keeps
//! working, a broken file keeps the old one and the log says why), a TLS
//! ClientHello on the plain TCP port closes that connection at once with a
//! log line saying so, and `/metrics` counts all of it (TLS handshakes and
//! their failures by reason, open TLS connections, TLS reloads) in a text
//! `promtool check metrics` accepts.
//!
//! Needs `promtool` (Debian `prometheus`) for the format check: skipped
//! without it, a failure under `CI=true`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::admin_client::{assert_promtool_accepts, http_get, sample};
use common::binary::free_port;
use common::external::require_tool;
use common::sip_stream::{status, Agent, SipStream};
use common::tls::{common_name, Pki, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_openssl::SslStream;

const WAIT: Duration = Duration::from_secs(10);
const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

/// The process, killed (by its own pid) if the test ends early.
struct Running {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait (bounded) until the log contains `needle` `count` times.
    fn wait_for_log(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGHUP with a `tls.certificate` (`live.pem`) the listener must
    /// refuse: the `nth` (from 1) line saying it kept the old one, which
    /// names the key and the file.
    fn refused_certificate_reload(&self, nth: usize) -> String {
        self.signal("-HUP");
        let log = self.wait_for_log("not reloaded; keeping the old one", nth);
        let line = log
            .lines()
            .filter(|l| l.contains("not reloaded"))
            .nth(nth - 1)
            .unwrap()
            .to_owned();
        assert!(
            line.contains("tls.certificate") && line.contains("live.pem"),
            "{line}"
        );
        line
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Scrape `/metrics` until `series` is at least `at_least` (bounded).
async fn wait_for_metric(admin: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, text) = http_get(admin, "/metrics", WAIT).await;
        assert_eq!(code, 200);
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP registrar answering every request 200.
async fn udp_registrar() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let registrar = Agent::new("registrar", "registrar", addr, "UDP");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !request.starts_with("SIP/2.0") && !request.starts_with("ACK ") {
                let answer = registrar.answer(&request, "200 OK");
                let _ = socket.send_to(answer.as_bytes(), from).await;
            }
        }
    });
    addr
}

async fn connect(ca: &Path, addr: SocketAddr) -> SipStream<SslStream<TcpStream>> {
    SipStream::new(TestClient::modern(ca).connect(addr).await.unwrap())
}

fn certificate_name(conn: &SipStream<SslStream<TcpStream>>) -> String {
    common_name(
        &conn
            .stream
            .ssl()
            .peer_certificate()
            .expect("a server certificate"),
    )
}

async fn registers(conn: &mut SipStream<SslStream<TcpStream>>, user: &str, cseq: u32) -> bool {
    let local = conn.stream.get_ref().local_addr().unwrap();
    let agent = Agent::new(user, LYNC, local, "TLS");
    conn.send(&agent.register(&format!("{user}-reg"), cseq))
        .await
        .unwrap();
    let answer = conn
        .recv_starting("SIP/2.0", WAIT)
        .await
        .message("REGISTER answer");
    status(&answer) == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_a_client_hello_on_the_tcp_port_is_closed_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    let live = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&files.server.0, &live.0).unwrap();
    std::fs::copy(&files.server.1, &live.1).unwrap();
    let config = dir.path().join("sipadmit.toml");
    std::fs::write(
        &config,
        "[tls]\ncertificate = \"live.pem\"\nprivate_key = \"live.key\"\n",
    )
    .unwrap();
    let registrar = udp_registrar().await;
    let (udp, tcp, tls, admin) = (free_port(), free_port(), free_port(), free_port());
    let stderr = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("udp:127.0.0.1:{udp}")])
        .args(["--listen", &format!("tcp:127.0.0.1:{tcp}")])
        .args(["--listen", &format!("tls:127.0.0.1:{tls}")])
        .args(["--upstream", &format!("udp:{registrar}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args([
            "--decision-log",
            dir.path().join("d.jsonl").to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .spawn()
        .unwrap();
    let running = Running { child, stderr };
    running.wait_for_log("listening", 3);
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    // Before the reload: the first certificate.
    let mut old = connect(&files.ca, tls_addr).await;
    assert_eq!(certificate_name(&old), "sipadmit test server");
    assert!(registers(&mut old, "old", 1).await);

    // Renewed files, SIGHUP: a new connection gets the new certificate,
    // the open one keeps working.
    std::fs::copy(&files.server_renewed.0, &live.0).unwrap();
    std::fs::copy(&files.server_renewed.1, &live.1).unwrap();
    running.signal("-HUP");
    running.wait_for_log("TLS listener certificate and settings reloaded", 1);
    // Its paths did not change: the reload line does not say "nothing".
    running.wait_for_log(
        "tls_changed=no key (the files are read again: the TLS lines say what took)",
        1,
    );
    let mut new = connect(&files.ca, tls_addr).await;
    assert_eq!(certificate_name(&new), "sipadmit test server (renewed)");
    assert!(registers(&mut new, "new", 1).await);
    assert!(
        registers(&mut old, "old", 2).await,
        "the open connection keeps working"
    );

    // A broken file: the renewed certificate stays, the log says why.
    std::fs::write(&live.0, "not a certificate\n").unwrap();
    running.refused_certificate_reload(1);
    let after = connect(&files.ca, tls_addr).await;
    assert_eq!(certificate_name(&after), "sipadmit test server (renewed)");

    // SIP in clear text on the TLS port: that connection closed, counted by
    // reason.
    let mut plain = TcpStream::connect(tls_addr).await.unwrap();
    plain
        .write_all(b"OPTIONS sip:sipadmit SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the plain-text connection is closed");

    // A TLS client on the plain TCP port: closed at once, logged.
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let wrong_port = TestClient::modern(&files.ca).connect(tcp_addr).await;
    assert!(wrong_port.is_err());
    running.wait_for_log("TLS ClientHello on a plain TCP listener", 1);

    // Counted, in /metrics: the handshakes (old, new, after), the
    // plain-text one that failed, the TLS client on the TCP port, the open
    // TLS connections (old, new, after), the TLS messages, and the two
    // reloads of each kind (the broken certificate fails the config reload
    // too: check-config reads the files).
    let text = wait_for_metric(
        admin,
        r#"sipadmit_tls_handshake_failures_total{side="listener",reason="plain_text"}"#,
        1.0,
    )
    .await;
    let text = if sample(
        &text,
        r#"sipadmit_transport_faults_total{kind="tls_on_tcp_port"}"#,
    ) == Some(1.0)
    {
        text
    } else {
        wait_for_metric(
            admin,
            r#"sipadmit_transport_faults_total{kind="tls_on_tcp_port"}"#,
            1.0,
        )
        .await
    };
    for (series, expected) in [
        (r#"sipadmit_tls_handshakes_total{side="listener"}"#, 3.0),
        (r#"sipadmit_tls_handshakes_total{side="upstream"}"#, 0.0),
        (
            r#"sipadmit_tls_handshake_failures_total{side="listener",reason="plain_text"}"#,
            1.0,
        ),
        (
            r#"sipadmit_tls_handshake_failures_total{side="listener",reason="timeout"}"#,
            0.0,
        ),
        (
            r#"sipadmit_transport_faults_total{kind="tls_handshake"}"#,
            1.0,
        ),
        (
            r#"sipadmit_transport_faults_total{kind="tls_on_tcp_port"}"#,
            1.0,
        ),
        (r#"sipadmit_open_connections{transport="tls"}"#, 3.0),
        (
            r#"sipadmit_received_total{transport="tls",kind="request"}"#,
            3.0,
        ),
        (
            r#"sipadmit_relayed_total{transport="tls",kind="response"}"#,
            3.0,
        ),
        (
            r#"sipadmit_tls_reloads_total{side="listener",result="success"}"#,
            1.0,
        ),
        (
            r#"sipadmit_tls_reloads_total{side="listener",result="failure"}"#,
            1.0,
        ),
        (
            r#"sipadmit_tls_reloads_total{side="upstream",result="success"}"#,
            0.0,
        ),
        (r#"sipadmit_config_reloads_total{result="success"}"#, 1.0),
        (r#"sipadmit_config_reloads_total{result="failure"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
    }
    for family in [
        "sipadmit_tls_handshakes_total",
        "sipadmit_tls_handshake_failures_total",
        "sipadmit_tls_reloads_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} "))
                && text.contains(&format!("# TYPE {family} counter")),
            "{family} has HELP and TYPE:\n{text}"
        );
    }
    if let Some(promtool) = require_tool("promtool") {
        assert_promtool_accepts(&promtool, dir.path(), &text);
    }

    running.signal("-TERM");
    running.wait_for_log("stopped", 1);
}

/// A renewal sipadmit would refuse at start is refused by a reload too,
/// and the running certificate stays (trial 17): one that does not name
/// the advertised host (the config reload fails on it, and the listener
/// used to take it all the same), and one that has expired. A start with
/// an expired certificate warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_would_lock_clients_out_is_refused_and_the_old_certificate_stays() {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    let live = (dir.path().join("live.pem"), dir.path().join("live.key"));
    let renew = |(pem, key): &(std::path::PathBuf, std::path::PathBuf)| {
        std::fs::copy(pem, &live.0).unwrap();
        std::fs::copy(key, &live.1).unwrap();
    };
    renew(&files.server);
    let (udp, tls) = (free_port(), free_port());
    let config = dir.path().join("sipadmit.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nadvertise = {{ \"tls:127.0.0.1:{tls}\" = \"localhost\" }}\n\
             [tls]\ncertificate = \"live.pem\"\nprivate_key = \"live.key\"\n"
        ),
    )
    .unwrap();
    let registrar = udp_registrar().await;
    let stderr = dir.path().join("stderr.log");
    let start = |stderr: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("udp:127.0.0.1:{udp}")])
            .args(["--listen", &format!("tls:127.0.0.1:{tls}")])
            .args(["--upstream", &format!("udp:{registrar}")])
            .args(["--decision-log", "-"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(stderr).unwrap()))
            .spawn()
            .unwrap()
    };
    let running = Running {
        child: start(&stderr),
        stderr,
    };
    running.wait_for_log("listening", 2);
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();

    // Not a name of the advertised host: refused, named, the old one kept.
    renew(&files.wrong_name);
    let line = running.refused_certificate_reload(1);
    assert!(line.contains("does not name localhost"), "{line}");
    let after = connect(&files.ca, tls_addr).await;
    assert_eq!(certificate_name(&after), "sipadmit test server");

    // Expired: refused with its dates, the old one kept.
    renew(&files.expired);
    let line = running.refused_certificate_reload(2);
    assert!(line.contains("is not valid now"), "{line}");
    let after = connect(&files.ca, tls_addr).await;
    assert_eq!(certificate_name(&after), "sipadmit test server");
    let log = running.log();
    assert!(
        !log.contains("TLS listener certificate and settings reloaded"),
        "{log}"
    );
    drop(running);

    // Started with the expired one: it serves, and says so.
    let stderr = dir.path().join("stderr-expired.log");
    let expired = Running {
        child: start(&stderr),
        stderr,
    };
    let log = expired.wait_for_log("listening", 2);
    assert!(
        log.contains("the TLS listener's certificate is not valid now"),
        "{log}"
    );
}
