//! The TLS building blocks on loopback: `ServerTls` against clients
//! configured like Lync-era and current clients (versions, ciphers, mutual
//! TLS), `ClientTls` against `ServerTls` and against Kamailio's TLS port
//! (name verification, client certificate), certificate reload, plain text
//! and silent clients. Certificates come from a PKI generated at test time.
//!
//! Needs Kamailio with its TLS module (Debian `kamailio`,
//! `kamailio-tls-modules`) for the Kamailio test; with `CI=true` a missing one
//! fails that test.

mod common {
    pub mod external;
    pub mod tls;
}

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::external::{Kamailio, KamailioOptions, KamailioTls};
use common::tls::{common_name, Pki, PkiFiles, TestClient};
use sipadmit::config::{Identity, TlsSettings, TlsVersion};
use sipadmit::transport::tls::{
    check, ClientTls, HandshakeError, HandshakeReason, ServerTls, TlsProblem,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_openssl::SslStream;

/// Deadline of server handshakes in tests that expect them to finish.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Bound of every test body.
const TEST_BOUND: Duration = Duration::from_secs(30);

fn pki() -> (tempfile::TempDir, PkiFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    (dir, files)
}

fn identity(pair: &(std::path::PathBuf, std::path::PathBuf)) -> Identity {
    Identity {
        certificate: pair.0.clone(),
        private_key: pair.1.clone(),
    }
}

/// Defaults, presenting `server` (a certificate and key pair).
fn server_settings(server: &(std::path::PathBuf, std::path::PathBuf)) -> TlsSettings {
    TlsSettings {
        identity: Some(identity(server)),
        ..TlsSettings::default()
    }
}

/// The Lync-compatible setting of `config/sipadmit.toml`.
fn lync_compatible(settings: TlsSettings) -> TlsSettings {
    TlsSettings {
        min_version: TlsVersion::Tls1_0,
        ciphers: "DEFAULT:@SECLEVEL=0".into(),
        ..settings
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn accept_one(
    listener: &TcpListener,
    server: &ServerTls,
    deadline: Duration,
) -> Result<SslStream<TcpStream>, HandshakeError> {
    let (tcp, _) = listener.accept().await.unwrap();
    server.accept(tcp, Instant::now() + deadline).await
}

type ServerSide = Result<SslStream<TcpStream>, HandshakeError>;
type ClientSide = Result<SslStream<TcpStream>, String>;

/// One handshake between `server` and `client`, both sides' results.
async fn handshake(server: &ServerTls, client: &TestClient) -> (ServerSide, ClientSide) {
    let (listener, addr) = listener().await;
    let both = async {
        tokio::join!(
            accept_one(&listener, server, HANDSHAKE),
            client.connect(addr)
        )
    };
    tokio::time::timeout(TEST_BOUND, both)
        .await
        .expect("handshake bounded")
}

/// `client` writes `payload`; `server` echoes it back.
async fn echo(
    client: &mut SslStream<TcpStream>,
    server: &mut SslStream<TcpStream>,
    payload: &[u8],
) {
    let round = async {
        client.write_all(payload).await.unwrap();
        let mut got = vec![0; payload.len()];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&got).await.unwrap();
        let mut back = vec![0; payload.len()];
        client.read_exact(&mut back).await.unwrap();
        back
    };
    let back = tokio::time::timeout(TEST_BOUND, round)
        .await
        .expect("echo bounded");
    assert_eq!(back, payload);
}

fn refused(server: ServerSide) -> HandshakeError {
    match server {
        Ok(s) => panic!(
            "handshake completed ({:?}, {:?}) but should have been refused",
            s.ssl().version_str(),
            s.ssl().current_cipher().map(|c| c.name())
        ),
        Err(e) => e,
    }
}

fn peer_name(stream: &SslStream<TcpStream>) -> String {
    common_name(&stream.ssl().peer_certificate().expect("a peer certificate"))
}

// === versions and ciphers ===

#[tokio::test]
async fn by_default_a_lync_phone_edition_client_is_refused_for_its_protocol_version() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (server, client) = handshake(&server, &TestClient::lync_phone_edition(&files.ca)).await;
    let e = refused(server);
    assert_eq!(e.reason(), HandshakeReason::ProtocolVersion, "{e}");
    assert!(client.is_err());
}

#[tokio::test]
async fn by_default_a_windows7_schannel_client_is_refused_for_lack_of_a_shared_cipher() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (server, client) = handshake(&server, &TestClient::windows7_schannel(&files.ca)).await;
    let e = refused(server);
    assert_eq!(e.reason(), HandshakeReason::NoSharedCipher, "{e}");
    assert!(client.is_err());
}

#[tokio::test]
async fn by_default_a_current_client_gets_tls_1_3() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (server, client) = handshake(&server, &TestClient::modern(&files.ca)).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    assert_eq!(client.ssl().version_str(), "TLSv1.3");
    // The client verified the chain (certificate + intermediate) to the root.
    assert_eq!(peer_name(&client), Pki::get().server.common_name);
    echo(&mut client, &mut server, b"OPTIONS sip:x SIP/2.0\r\n\r\n").await;
}

#[tokio::test]
async fn the_lync_compatible_setting_admits_both_legacy_clients() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&lync_compatible(server_settings(&files.server))).unwrap();

    let (s, c) = handshake(&server, &TestClient::lync_phone_edition(&files.ca)).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert_eq!(c.ssl().version_str(), "TLSv1");
    assert_eq!(c.ssl().current_cipher().unwrap().name(), "AES128-SHA");
    echo(&mut c, &mut s, b"REGISTER").await;

    let (s, c) = handshake(&server, &TestClient::windows7_schannel(&files.ca)).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert_eq!(c.ssl().version_str(), "TLSv1.2");
    let cipher = c.ssl().current_cipher().unwrap().name();
    assert!(
        [
            "AES128-GCM-SHA256",
            "AES256-GCM-SHA384",
            "AES128-SHA256",
            "AES128-SHA"
        ]
        .contains(&cipher),
        "{cipher}"
    );
    echo(&mut c, &mut s, b"REGISTER").await;

    // Current clients still get TLS 1.3: the setting only widens what is accepted.
    let (s, c) = handshake(&server, &TestClient::modern(&files.ca)).await;
    s.unwrap();
    assert_eq!(c.unwrap().ssl().version_str(), "TLSv1.3");
}

// === mutual TLS towards clients ===

fn mutual(files: &PkiFiles) -> TlsSettings {
    TlsSettings {
        client_ca: Some(files.ca.clone()),
        ..server_settings(&files.server)
    }
}

#[tokio::test]
async fn with_client_ca_a_client_without_certificate_is_refused() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&mutual(&files)).unwrap();
    // TLS 1.3 (the client learns of it after its side completes) and TLS 1.2.
    let tls12 = TestClient {
        max_version: Some(openssl::ssl::SslVersion::TLS1_2),
        ..TestClient::modern(&files.ca)
    };
    for client in [TestClient::modern(&files.ca), tls12] {
        let (server, _client) = handshake(&server, &client).await;
        let e = refused(server);
        assert_eq!(e.reason(), HandshakeReason::NoClientCertificate, "{e}");
    }
}

#[tokio::test]
async fn with_client_ca_a_certificate_from_it_passes_and_one_from_another_root_is_bad() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&mutual(&files)).unwrap();

    let alice = TestClient::modern(&files.ca).with_certificate(&files.client);
    let (s, c) = handshake(&server, &alice).await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert_eq!(peer_name(&s), "alice@contoso.com");
    echo(&mut c, &mut s, b"REGISTER").await;

    let mallory = TestClient::modern(&files.ca).with_certificate(&files.other_client);
    let (s, _) = handshake(&server, &mallory).await;
    let e = refused(s);
    assert_eq!(e.reason(), HandshakeReason::BadCertificate, "{e}");
    assert!(e.detail().contains("certificate"), "{e}");
}

/// A client that does not trust sipadmit's certificate (a renewal from a
/// CA its clients lack) refuses it with an alert: counted apart from a
/// client certificate that fails here, so an admin without mutual TLS
/// reads it for what it is.
#[tokio::test]
async fn a_client_refusing_the_listeners_certificate_is_told_apart() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let distrustful = TestClient::modern(&files.other_ca);
    let (s, c) = handshake(&server, &distrustful).await;
    assert!(c.is_err(), "the client refused the certificate");
    let e = refused(s);
    assert_eq!(e.reason(), HandshakeReason::CertificateRefused, "{e}");
}

// === ClientTls ===

/// Roots `ca`; other settings from `extra`.
fn upstream_settings(files: &PkiFiles, extra: TlsSettings) -> TlsSettings {
    TlsSettings {
        upstream_ca: Some(files.ca.clone()),
        ..extra
    }
}

/// `client` connects to `server` (accepting one connection); both results.
async fn upstream_handshake(
    server: &ServerTls,
    client: &ClientTls,
) -> (ServerSide, Result<SslStream<TcpStream>, HandshakeError>) {
    let (listener, addr) = listener().await;
    let both = async {
        tokio::join!(accept_one(&listener, server, HANDSHAKE), async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            client.connect(tcp, Instant::now() + HANDSHAKE).await
        })
    };
    tokio::time::timeout(TEST_BOUND, both)
        .await
        .expect("handshake bounded")
}

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn client_tls_refuses_a_registrar_whose_certificate_does_not_carry_the_name() {
    let (_dir, files) = pki();
    let registrar = ServerTls::new(&server_settings(&files.wrong_name)).unwrap();

    // Default name: the upstream's IP, which the certificate does not carry.
    let by_ip = ClientTls::new(
        &upstream_settings(&files, TlsSettings::default()),
        LOCALHOST,
    )
    .unwrap();
    assert_eq!(by_ip.server_name(), "127.0.0.1");
    let (_, client) = upstream_handshake(&registrar, &by_ip).await;
    let e = client.expect_err("a certificate for wrong.example only");
    assert_eq!(e.reason(), HandshakeReason::BadCertificate, "{e}");
    assert!(e.detail().contains("mismatch"), "{e}");

    // A configured name the certificate does not carry.
    let pool = upstream_settings(
        &files,
        TlsSettings {
            upstream_server_name: Some("pool01.contoso.com".into()),
            ..TlsSettings::default()
        },
    );
    let (_, client) =
        upstream_handshake(&registrar, &ClientTls::new(&pool, LOCALHOST).unwrap()).await;
    assert_eq!(
        client.unwrap_err().reason(),
        HandshakeReason::BadCertificate
    );

    // The name it does carry.
    let wrong_example = TlsSettings {
        upstream_server_name: Some("wrong.example".into()),
        ..pool
    };
    let client = ClientTls::new(&wrong_example, LOCALHOST).unwrap();
    let (server, client) = upstream_handshake(&registrar, &client).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    // SNI carried the name.
    assert_eq!(
        server.ssl().servername(openssl::ssl::NameType::HOST_NAME),
        Some("wrong.example")
    );
    echo(&mut client, &mut server, b"REGISTER").await;
}

#[tokio::test]
async fn client_tls_accepts_a_registrar_certificate_for_its_address_or_name() {
    let (_dir, files) = pki();
    let registrar = ServerTls::new(&server_settings(&files.server)).unwrap();
    for name in [None, Some("localhost"), Some("127.0.0.1")] {
        let settings = upstream_settings(
            &files,
            TlsSettings {
                upstream_server_name: name.map(str::to_owned),
                ..TlsSettings::default()
            },
        );
        let client = ClientTls::new(&settings, LOCALHOST).unwrap();
        let (server, client) = upstream_handshake(&registrar, &client).await;
        server.unwrap();
        let client = client.unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(peer_name(&client), Pki::get().server.common_name);
    }
}

#[tokio::test]
async fn client_tls_verifies_an_ipv6_registrar_by_its_address() {
    let (_dir, files) = pki();
    let registrar = ServerTls::new(&server_settings(&files.server)).unwrap();
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = ClientTls::new(
        &upstream_settings(&files, TlsSettings::default()),
        addr.ip(),
    )
    .unwrap();
    assert_eq!(client.server_name(), "::1");
    let (server, client) = tokio::time::timeout(TEST_BOUND, async {
        tokio::join!(accept_one(&listener, &registrar, HANDSHAKE), async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            client.connect(tcp, Instant::now() + HANDSHAKE).await
        })
    })
    .await
    .expect("bounded");
    server.unwrap();
    assert_eq!(peer_name(&client.unwrap()), Pki::get().server.common_name);
}

#[tokio::test]
async fn client_tls_refuses_an_expired_certificate_and_an_unknown_root() {
    let (_dir, files) = pki();
    let expired = ServerTls::new(&server_settings(&files.expired)).unwrap();
    let client = ClientTls::new(
        &upstream_settings(&files, TlsSettings::default()),
        LOCALHOST,
    )
    .unwrap();
    let (_, c) = upstream_handshake(&expired, &client).await;
    let e = c.expect_err("an expired certificate");
    assert_eq!(e.reason(), HandshakeReason::BadCertificate, "{e}");
    assert!(e.detail().contains("expired"), "{e}");

    let registrar = ServerTls::new(&server_settings(&files.server)).unwrap();
    let other_roots = TlsSettings {
        upstream_ca: Some(files.other_ca.clone()),
        ..TlsSettings::default()
    };
    let client = ClientTls::new(&other_roots, LOCALHOST).unwrap();
    let (_, c) = upstream_handshake(&registrar, &client).await;
    assert_eq!(c.unwrap_err().reason(), HandshakeReason::BadCertificate);

    // Without upstream_ca the system's roots apply, which do not know the test root.
    let client = ClientTls::new(&TlsSettings::default(), LOCALHOST).unwrap();
    let (_, c) = upstream_handshake(&registrar, &client).await;
    assert_eq!(c.unwrap_err().reason(), HandshakeReason::BadCertificate);
}

#[tokio::test]
async fn client_tls_presents_its_certificate_to_a_server_that_requires_one() {
    let (_dir, files) = pki();
    let registrar = ServerTls::new(&mutual(&files)).unwrap();
    let with_certificate = upstream_settings(
        &files,
        TlsSettings {
            upstream_identity: Some(identity(&files.client)),
            ..TlsSettings::default()
        },
    );
    let client = ClientTls::new(&with_certificate, LOCALHOST).unwrap();
    let (server, client) = upstream_handshake(&registrar, &client).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    assert_eq!(peer_name(&server), "alice@contoso.com");
    echo(&mut client, &mut server, b"REGISTER").await;

    let without = ClientTls::new(
        &upstream_settings(&files, TlsSettings::default()),
        LOCALHOST,
    )
    .unwrap();
    let (server, _) = upstream_handshake(&registrar, &without).await;
    assert_eq!(
        refused(server).reason(),
        HandshakeReason::NoClientCertificate
    );
}

/// Sends an OPTIONS over `stream`; the status line of the answer, or why there is none.
async fn options_over(stream: &mut SslStream<TcpStream>) -> Result<String, String> {
    let local = stream.get_ref().local_addr().unwrap();
    let peer = stream.get_ref().peer_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:{peer};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-tls-blocks-{port};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=blocks\r\n\
         To: <sip:{peer}>\r\n\
         Call-ID: tls-blocks-{port}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port()
    );
    let exchange = async {
        stream
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed without an answer".to_owned());
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((line, _)) = text.split_once("\r\n") {
                return Ok(line.to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

#[test]
fn client_tls_presents_its_certificate_to_kamailio_requiring_one() {
    let (_dir, files) = pki();
    let Some(kamailio) = Kamailio::try_start(KamailioOptions {
        tls: Some(
            KamailioTls::new(&files.server.0, &files.server.1, &files.ca)
                .require_client_certificate(&files.client),
        ),
        ..KamailioOptions::default()
    }) else {
        return;
    };
    let addr = kamailio.tls_addr().expect("a TLS listener");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let with_certificate = upstream_settings(
            &files,
            TlsSettings {
                upstream_identity: Some(identity(&files.client)),
                ..TlsSettings::default()
            },
        );
        let client = ClientTls::new(&with_certificate, LOCALHOST).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = client
            .connect(tcp, Instant::now() + HANDSHAKE)
            .await
            .unwrap_or_else(|e| panic!("Kamailio's certificate verified, ours accepted: {e}"));
        assert_eq!(
            options_over(&mut tls).await.as_deref(),
            Ok("SIP/2.0 200 OK")
        );

        // Without a client certificate Kamailio refuses: with TLS 1.3 during the
        // handshake or on the first read, never with an answer.
        let without = ClientTls::new(
            &upstream_settings(&files, TlsSettings::default()),
            LOCALHOST,
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        match without.connect(tcp, Instant::now() + HANDSHAKE).await {
            Err(e) => assert!(
                matches!(
                    e.reason(),
                    HandshakeReason::NoClientCertificate
                        | HandshakeReason::Other
                        | HandshakeReason::Closed
                ),
                "{e}"
            ),
            Ok(mut tls) => {
                let answer = options_over(&mut tls).await;
                assert!(
                    answer.is_err(),
                    "Kamailio answered {answer:?} without a client certificate"
                );
            }
        }

        // Kamailio's certificate does not carry this name: nothing is sent.
        let wrong = upstream_settings(
            &files,
            TlsSettings {
                upstream_server_name: Some("pool01.contoso.com".into()),
                upstream_identity: Some(identity(&files.client)),
                ..TlsSettings::default()
            },
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = ClientTls::new(&wrong, LOCALHOST)
            .unwrap()
            .connect(tcp, Instant::now() + HANDSHAKE)
            .await
            .expect_err("name mismatch");
        assert_eq!(e.reason(), HandshakeReason::BadCertificate, "{e}");
    });
}

// === reload ===

/// The server certificate and key copied to `live.pem` / `live.key`, which
/// the settings name and the test replaces.
fn live_files(files: &PkiFiles, from: &(std::path::PathBuf, std::path::PathBuf)) -> TlsSettings {
    let live = (files.dir.join("live.pem"), files.dir.join("live.key"));
    std::fs::copy(&from.0, &live.0).unwrap();
    std::fs::copy(&from.1, &live.1).unwrap();
    server_settings(&live)
}

fn replace_live(settings: &TlsSettings, from: &(std::path::PathBuf, std::path::PathBuf)) {
    let live = settings.identity.as_ref().unwrap();
    std::fs::copy(&from.0, &live.certificate).unwrap();
    std::fs::copy(&from.1, &live.private_key).unwrap();
}

#[tokio::test]
async fn reload_gives_new_connections_the_new_certificate_and_keeps_open_ones() {
    let (_dir, files) = pki();
    let settings = live_files(&files, &files.server);
    let server = ServerTls::new(&settings).unwrap();
    let client = TestClient::modern(&files.ca);

    let (s, c) = handshake(&server, &client).await;
    let (mut old_server, mut old_client) = (s.unwrap(), c.unwrap());
    assert_eq!(peer_name(&old_client), Pki::get().server.common_name);

    replace_live(&settings, &files.server_renewed);
    server.reload(&settings).unwrap();

    let (s, c) = handshake(&server, &client).await;
    let (mut new_server, mut new_client) = (s.unwrap(), c.unwrap());
    assert_eq!(
        peer_name(&new_client),
        Pki::get().server_renewed.common_name
    );
    echo(&mut new_client, &mut new_server, b"new").await;
    // The connection opened before the reload still carries messages.
    echo(
        &mut old_client,
        &mut old_server,
        b"REGISTER over the old session",
    )
    .await;
    assert_eq!(peer_name(&old_client), Pki::get().server.common_name);
}

#[tokio::test]
async fn reload_with_a_broken_file_keeps_the_old_certificate_and_names_the_file() {
    let (_dir, files) = pki();
    let settings = live_files(&files, &files.server);
    let server = ServerTls::new(&settings).unwrap();
    let live = settings.identity.clone().unwrap();

    // A key file that is not PEM.
    std::fs::write(&live.private_key, "not a key\n").unwrap();
    let e = server.reload(&settings).unwrap_err();
    assert_eq!(e.key(), "tls.private_key");
    assert_eq!(e.path(), Some(live.private_key.as_path()));
    assert!(
        e.to_string()
            .contains(&live.private_key.display().to_string()),
        "{e}"
    );

    // A renewed certificate copied without its key: the old key does not match it.
    replace_live(&settings, &files.server);
    std::fs::copy(&files.server_renewed.0, &live.certificate).unwrap();
    let e = server.reload(&settings).unwrap_err();
    assert_eq!(e.key(), "tls.private_key");
    assert!(matches!(e.problem(), TlsProblem::KeyMismatch { .. }), "{e}");

    // A missing certificate file.
    std::fs::remove_file(&live.certificate).unwrap();
    let e = server.reload(&settings).unwrap_err();
    assert_eq!(
        (e.key(), e.path()),
        ("tls.certificate", Some(live.certificate.as_path()))
    );

    // New handshakes still get the certificate loaded first.
    let (s, c) = handshake(&server, &TestClient::modern(&files.ca)).await;
    s.unwrap();
    assert_eq!(peer_name(&c.unwrap()), Pki::get().server.common_name);
}

/// A renewal that changes the key type (RSA to EC) under a cipher list of
/// RSA suites only is refused by the reload, naming `tls.ciphers`: TLS 1.2
/// clients keep the RSA certificate they can use.
#[tokio::test]
async fn a_reload_to_a_key_the_cipher_list_has_no_suite_for_keeps_the_old_certificate() {
    let (_dir, files) = pki();
    let settings = TlsSettings {
        // RSA key exchange only, as Windows 7 SChannel offers it.
        ciphers: "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:@SECLEVEL=0".into(),
        ..live_files(&files, &files.server)
    };
    let server = ServerTls::new(&settings).unwrap();
    replace_live(&settings, &files.server_ecdsa);
    let e = server.reload(&settings).unwrap_err();
    assert_eq!(e.key(), "tls.ciphers");
    assert!(
        e.to_string().contains("with the EC key of tls.certificate"),
        "{e}"
    );
    let (s, c) = handshake(&server, &TestClient::windows7_schannel(&files.ca)).await;
    s.unwrap();
    let c = c.unwrap();
    assert_eq!(c.ssl().version_str(), "TLSv1.2");
    assert_eq!(peer_name(&c), Pki::get().server.common_name);
    // Back to an RSA certificate: reloaded.
    replace_live(&settings, &files.server_renewed);
    server.reload(&settings).unwrap();
}

// === what is not a TLS client ===

#[tokio::test]
async fn plain_text_sip_on_a_tls_port_fails_as_plain_text() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (listener, addr) = listener().await;
    let client = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        // Keep the connection until the server is done with it.
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    };
    let (server, ()) = tokio::time::timeout(TEST_BOUND, async {
        tokio::join!(accept_one(&listener, &server, HANDSHAKE), client)
    })
    .await
    .expect("bounded");
    let e = refused(server);
    assert_eq!(e.reason(), HandshakeReason::PlainText, "{e}");
}

#[tokio::test]
async fn a_silent_client_hits_the_handshake_deadline() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (listener, addr) = listener().await;
    let silent = TcpStream::connect(addr).await.unwrap();
    let e = tokio::time::timeout(
        TEST_BOUND,
        accept_one(&listener, &server, Duration::from_millis(200)),
    )
    .await
    .expect("bounded")
    .expect_err("nothing was sent");
    assert_eq!(e.reason(), HandshakeReason::Timeout, "{e}");
    drop(silent);
}

#[tokio::test]
async fn a_client_that_hangs_up_during_the_handshake_is_counted_as_closed() {
    let (_dir, files) = pki();
    let server = ServerTls::new(&server_settings(&files.server)).unwrap();
    let (listener, addr) = listener().await;
    drop(TcpStream::connect(addr).await.unwrap());
    let e = tokio::time::timeout(TEST_BOUND, accept_one(&listener, &server, HANDSHAKE))
        .await
        .expect("bounded")
        .expect_err("the client left");
    assert_eq!(e.reason(), HandshakeReason::Closed, "{e}");
}

#[test]
fn every_server_certificate_file_loads() {
    let (_dir, files) = pki();
    for pair in [
        &files.server,
        &files.server_renewed,
        &files.server_ecdsa,
        &files.wrong_name,
        &files.expired,
    ] {
        ServerTls::new(&server_settings(pair)).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(Path::new(&files.ca).is_file());
}

/// A cipher list with no suite for the certificate's key type leaves TLS
/// 1.2 (and older) clients nothing to agree on: the check refuses it,
/// naming `tls.ciphers` and the key type, and a list that has suites for
/// the key passes. A TLS 1.3-only listener does not depend on the list.
#[tokio::test]
async fn a_cipher_list_without_a_suite_for_the_key_type_is_refused() {
    let (_dir, files) = pki();
    let ecdsa_only = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384";
    let rsa_with_ecdsa_list = TlsSettings {
        ciphers: ecdsa_only.into(),
        ..server_settings(&files.server)
    };
    let errors = check(&rsa_with_ecdsa_list);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key(), "tls.ciphers");
    let text = errors[0].to_string();
    assert!(
        text.contains(&format!(
            "no cipher in {ecdsa_only:?} can be used with the RSA key of tls.certificate"
        )) && text.contains("ECDHE-RSA-AES256-GCM-SHA384"),
        "{text}"
    );
    // What the check refuses, a client of TLS 1.2 meets: no shared cipher.
    let server = ServerTls::new(&rsa_with_ecdsa_list).unwrap();
    let (server, _) = handshake(&server, &TestClient::windows7_schannel(&files.ca)).await;
    assert_eq!(refused(server).reason(), HandshakeReason::NoSharedCipher);
    // The same list with an EC key, the defaults with either, pass.
    let ec = TlsSettings {
        ciphers: ecdsa_only.into(),
        ..server_settings(&files.server_ecdsa)
    };
    assert!(check(&ec).is_empty(), "{:?}", check(&ec));
    for pair in [&files.server, &files.server_ecdsa] {
        let defaults = server_settings(pair);
        assert!(check(&defaults).is_empty(), "{:?}", check(&defaults));
        let lync = lync_compatible(server_settings(pair));
        assert!(check(&lync).is_empty(), "{:?}", check(&lync));
    }
    // An RSA list with an EC key is named too, with the suites to add.
    let errors = check(&TlsSettings {
        ciphers: "ECDHE-RSA-AES128-GCM-SHA256".into(),
        ..server_settings(&files.server_ecdsa)
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .contains("with the EC key of tls.certificate")
            && errors[0]
                .to_string()
                .contains("ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{}",
        errors[0]
    );
    let tls13_only = TlsSettings {
        min_version: TlsVersion::Tls1_3,
        ..rsa_with_ecdsa_list
    };
    assert!(check(&tls13_only).is_empty());
    // Trial 27: suites without encryption are suites too (the listener
    // negotiates them): not refused.
    let null = TlsSettings {
        ciphers: "NULL-SHA256:@SECLEVEL=0".into(),
        ..server_settings(&files.server)
    };
    assert!(check(&null).is_empty(), "{:?}", check(&null));
}
