//! Stage 1, TLS: the handshakes of `tls:` listeners and of a `tls:`
//! upstream, over any `AsyncRead + AsyncWrite` stream (OpenSSL through
//! `tokio-openssl`). No SIP here: a finished handshake hands back an
//! [`SslStream`] that the stream server reads and writes like TCP.
//!
//! - [`ServerTls`]: the acceptor, built from [`TlsSettings`] and swapped
//!   whole by [`ServerTls::reload`] (new connections get the new
//!   certificate, open ones keep theirs);
//! - [`ClientTls`]: the connector towards the registrar, whose certificate is
//!   always verified against `tls.upstream_server_name` (a DNS or IP name,
//!   or, under `tls.upstream_ca`, the SIP domain of a `sip:` URI, RFC 5922
//!   7.1);
//! - [`HandshakeError`]: why a handshake failed, as a bounded
//!   [`HandshakeReason`] for metrics plus OpenSSL's detail for the log;
//! - [`TlsListener`] and [`refuse_tls_client_hello`]: the open steps of
//!   `tls:` and `tcp:` listeners (handshake with a deadline; a TLS client on
//!   a plain TCP port closed at once), each counted and logged;
//! - [`TlsContexts`]: what `SIGHUP` rebuilds (files re-read, `[tls]`
//!   settings of the reloaded config applied);
//! - [`looks_like_tls_client_hello`]: spots a TLS client on a plain TCP port;
//! - [`check`] (built in [`crate::config::tls_contexts`], which compiles
//!   the `[tls]` settings into the contexts used here): what `check-config`
//!   asks of the `[tls]` files and settings.
//!
//! OpenSSL rather than rustls: Lync-era clients need TLS 1.0/1.1 and
//! static-RSA or CBC suites, which only a configuration asking for them
//! turns on (secure defaults otherwise).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use openssl::error::ErrorStack;
use openssl::ssl::{self, ErrorCode, Ssl, SslAcceptor, SslRef};
use openssl::x509::X509VerifyResult;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_openssl::SslStream;

use super::admission::FREEZE_THRESHOLD;
use super::Fault;
use crate::config::tls_contexts::{
    build_acceptor, build_upstream, names_of, suites_for_key, verify_reason, Upstream, ERR_LIB_SSL,
    SSL_R_NO_CIPHERS_AVAILABLE, SSL_R_NO_SHARED_CIPHER, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM,
};
pub use crate::config::tls_contexts::{
    check, TlsError, TlsProblem, SESSION_CACHE_ENTRIES, TLS13_TICKETS,
};
use crate::config::AdvertisedHost;
use crate::config::TlsSettings;
use crate::observe::metrics::{Metrics, ReloadResult, TlsSide};
pub use crate::vocabulary::HandshakeReason;

/// A failed TLS handshake: a bounded [`HandshakeReason`] for metrics, and
/// OpenSSL's own words (error stack, certificate verification result) for
/// the log.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({reason}): {detail}")]
pub struct HandshakeError {
    reason: HandshakeReason,
    detail: String,
}

impl HandshakeError {
    /// The bounded reason (a metric label).
    pub fn reason(&self) -> HandshakeReason {
        self.reason
    }

    /// OpenSSL's detail, for the log.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    fn timeout() -> Self {
        Self {
            reason: HandshakeReason::Timeout,
            detail: "no complete handshake before the deadline".into(),
        }
    }

    fn setup(e: ErrorStack) -> Self {
        Self {
            reason: HandshakeReason::Other,
            detail: format!("setting up the TLS session: {e}"),
        }
    }

    /// From what OpenSSL said, and the session for its verification result.
    fn from_ssl(error: &ssl::Error, session: &SslRef) -> Self {
        let mut detail = error.to_string();
        let verify = session.verify_result();
        if verify != X509VerifyResult::OK {
            detail = format!("{detail} (certificate: {})", verify_reason(verify));
        }
        Self {
            reason: reason_of(error),
            detail,
        }
    }
}

// OpenSSL's `SSL_R_*` reason codes (include/openssl/sslerr.h; stable across
// releases), for the errors of library `ERR_LIB_SSL` (those of a handshake
// that found no cipher are in `config::tls_contexts`).
const SSL_R_CERTIFICATE_VERIFY_FAILED: i32 = 134;
const SSL_R_HTTPS_PROXY_REQUEST: i32 = 155;
const SSL_R_HTTP_REQUEST: i32 = 156;
const SSL_R_NO_PROTOCOLS_AVAILABLE: i32 = 191;
const SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: i32 = 199;
const SSL_R_UNKNOWN_PROTOCOL: i32 = 252;
const SSL_R_UNSUPPORTED_PROTOCOL: i32 = 258;
const SSL_R_UNSUPPORTED_SSL_VERSION: i32 = 259;
const SSL_R_WRONG_SSL_VERSION: i32 = 266;
const SSL_R_WRONG_VERSION_NUMBER: i32 = 267;
const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;
const SSL_R_VERSION_TOO_LOW: i32 = 396;
const SSL_R_SSLV3_ALERT_BAD_CERTIFICATE: i32 = 1042;
const SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE: i32 = 1043;
const SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED: i32 = 1044;
const SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED: i32 = 1045;
const SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN: i32 = 1046;
const SSL_R_TLSV1_ALERT_UNKNOWN_CA: i32 = 1048;
const SSL_R_TLSV1_ALERT_PROTOCOL_VERSION: i32 = 1070;
const SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY: i32 = 1071;
const SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: i32 = 1116;

/// The [`HandshakeReason`] of an OpenSSL handshake error.
fn reason_of(error: &ssl::Error) -> HandshakeReason {
    if let Some(io) = error.io_error() {
        return match io.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeReason::Closed,
            _ => HandshakeReason::Other,
        };
    }
    match error.code() {
        ErrorCode::ZERO_RETURN => return HandshakeReason::Closed,
        // A system call failed without an I/O error: the peer closed.
        ErrorCode::SYSCALL => return HandshakeReason::Closed,
        _ => {}
    }
    let Some(stack) = error.ssl_error() else {
        return HandshakeReason::Other;
    };
    stack
        .errors()
        .iter()
        .filter(|e| e.library_code() == ERR_LIB_SSL)
        .find_map(|e| reason_of_code(e.reason_code()))
        .unwrap_or(HandshakeReason::Other)
}

fn reason_of_code(code: i32) -> Option<HandshakeReason> {
    Some(match code {
        SSL_R_WRONG_VERSION_NUMBER
        | SSL_R_HTTP_REQUEST
        | SSL_R_HTTPS_PROXY_REQUEST
        | SSL_R_UNKNOWN_PROTOCOL => HandshakeReason::PlainText,
        SSL_R_UNSUPPORTED_PROTOCOL
        | SSL_R_UNSUPPORTED_SSL_VERSION
        | SSL_R_WRONG_SSL_VERSION
        | SSL_R_VERSION_TOO_LOW
        | SSL_R_NO_PROTOCOLS_AVAILABLE
        | SSL_R_TLSV1_ALERT_PROTOCOL_VERSION => HandshakeReason::ProtocolVersion,
        SSL_R_NO_SHARED_CIPHER
        | SSL_R_NO_CIPHERS_AVAILABLE
        | SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM
        | SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY => HandshakeReason::NoSharedCipher,
        SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE | SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED => {
            HandshakeReason::NoClientCertificate
        }
        SSL_R_CERTIFICATE_VERIFY_FAILED => HandshakeReason::BadCertificate,
        SSL_R_SSLV3_ALERT_BAD_CERTIFICATE
        | SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE
        | SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED
        | SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED
        | SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN
        | SSL_R_TLSV1_ALERT_UNKNOWN_CA => HandshakeReason::CertificateRefused,
        SSL_R_UNEXPECTED_EOF_WHILE_READING => HandshakeReason::Closed,
        _ => return None,
    })
}

// === detection ===

/// Whether the first bytes read from a connection look like the start of a
/// TLS ClientHello: a handshake record (type `0x16`), record version
/// `0x03 0x00`..=`0x03 0x04`, and (when that far) handshake type 1. A short
/// prefix is judged by the bytes it has; no bytes is `false`. SIP never
/// starts with `0x16`, so a plain TCP listener can close such a connection
/// at once ("a TLS client on a TCP port"). SSL 2.0-style hellos are not
/// recognised (no client of interest sends them).
pub fn looks_like_tls_client_hello(first_bytes: &[u8]) -> bool {
    /// Record type of handshake messages.
    const HANDSHAKE: u8 = 0x16;
    /// Handshake type of ClientHello.
    const CLIENT_HELLO: u8 = 0x01;
    match first_bytes {
        [] => false,
        [record, rest @ ..] => {
            *record == HANDSHAKE
                && rest.first().is_none_or(|&major| major == 0x03)
                && rest.get(1).is_none_or(|&minor| minor <= 0x04)
                && rest.get(4).is_none_or(|&kind| kind == CLIENT_HELLO)
        }
    }
}

/// Whether the certificate `acceptor` presents is within its validity
/// period now.
fn valid_now(acceptor: &SslAcceptor, settings: &TlsSettings) -> Result<(), TlsError> {
    let Some(certificate) = acceptor.context().certificate() else {
        return Ok(());
    };
    let Ok(now) = openssl::asn1::Asn1Time::days_from_now(0) else {
        return Ok(());
    };
    let (not_before, not_after) = (certificate.not_before(), certificate.not_after());
    if not_before <= now && not_after >= now {
        return Ok(());
    }
    Err(TlsError::new(
        "tls.certificate",
        certificate_path(settings),
        TlsProblem::NotValidNow {
            not_before: not_before.to_string(),
            not_after: not_after.to_string(),
        },
    ))
}

/// The `tls.certificate` file of `settings`.
fn certificate_path(settings: &TlsSettings) -> Option<&std::path::Path> {
    settings.identity.as_ref().map(|i| i.certificate.as_path())
}

// === impl ServerTls ===

/// The TLS side of `tls:` listeners: an OpenSSL acceptor built from
/// [`TlsSettings`], replaced whole by [`ServerTls::reload`].
pub struct ServerTls {
    acceptor: ArcSwap<SslAcceptor>,
    /// The hosts `proxy.advertise` gives the `tls:` listeners (fixed until
    /// a restart): a reloaded certificate must name each.
    advertised: Vec<AdvertisedHost>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Build the acceptor: `tls.certificate` + `tls.private_key` (required),
    /// `tls.min_version`, `tls.ciphers`, and client certificate verification
    /// when `tls.client_ca` is set.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let acceptor = build_acceptor(settings)?;
        if let Err(e) = valid_now(&acceptor, settings) {
            tracing::warn!(key = e.key(), problem = %e.to_problem().message, "the TLS listener's certificate is not valid now: clients that check it will refuse it");
        }
        Ok(Self {
            acceptor: ArcSwap::from_pointee(acceptor),
            advertised: Vec::new(),
        })
    }

    /// The same, with the hosts a reloaded certificate must name (those
    /// `proxy.advertise` gives the `tls:` listeners; the configuration
    /// checks the certificate of the start).
    pub fn naming(mut self, advertised: Vec<AdvertisedHost>) -> Self {
        self.advertised = advertised;
        self
    }

    /// Re-read the files and rebuild the acceptor; swap it in only when the
    /// new one is complete, names every advertised host, is valid now and
    /// has a cipher for clients of TLS 1.2 and older when `tls.min_version`
    /// admits them (a renewal that fails any would lock clients out). Handshakes
    /// after the swap use the new certificate; open connections keep theirs.
    /// On error nothing changes.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        let acceptor = build_acceptor(settings)?;
        self.names_every_advertised_host(&acceptor, settings)?;
        valid_now(&acceptor, settings)?;
        suites_for_key(&acceptor, settings)?;
        self.acceptor.store(Arc::new(acceptor));
        Ok(())
    }

    fn names_every_advertised_host(
        &self,
        acceptor: &SslAcceptor,
        settings: &TlsSettings,
    ) -> Result<(), TlsError> {
        let Some(certificate) = acceptor.context().certificate() else {
            return Ok(());
        };
        let names = names_of(certificate);
        match self.advertised.iter().find(|host| !host.is_in(&names)) {
            None => Ok(()),
            Some(host) => Err(TlsError::new(
                "tls.certificate",
                certificate_path(settings),
                TlsProblem::NotNamed {
                    host: host.host().to_owned(),
                    names: names.to_string(),
                },
            )),
        }
    }

    /// Run the server side of a handshake on `stream`, giving up at
    /// `deadline` ([`HandshakeReason::Timeout`]). A deadline seen
    /// [`FREEZE_THRESHOLD`] or more after it passed (this process was
    /// frozen: a paused VM, SIGSTOP; a busy one is not that late) is put
    /// off once, by as long as it gave at first: the time sipadmit ran
    /// nothing is not the client's.
    pub async fn accept<S>(
        &self,
        stream: S,
        deadline: Instant,
    ) -> Result<SslStream<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let session = Ssl::new(self.acceptor.load().context()).map_err(HandshakeError::setup)?;
        let mut tls = SslStream::new(session, stream).map_err(HandshakeError::setup)?;
        let allowed = deadline.saturating_duration_since(Instant::now());
        let mut deadline = deadline;
        let mut put_off = false;
        loop {
            return match tokio::time::timeout_at(deadline, Pin::new(&mut tls).accept()).await {
                Err(_elapsed) => {
                    let now = Instant::now();
                    if !put_off && now.saturating_duration_since(deadline) >= FREEZE_THRESHOLD {
                        put_off = true;
                        deadline = now + allowed;
                        continue;
                    }
                    Err(HandshakeError::timeout())
                }
                Ok(Err(e)) => Err(HandshakeError::from_ssl(&e, tls.ssl())),
                Ok(Ok(())) => Ok(tls),
            };
        }
    }
}

// === impl ClientTls ===

/// The TLS side of the link to a `tls:` upstream: an OpenSSL connector that
/// always verifies the registrar's certificate (chain to `tls.upstream_ca`
/// or the system's roots, name `tls.upstream_server_name` or the upstream's
/// IP, carried as a DNS or IP subjectAltName or, under `tls.upstream_ca`, as
/// a `sip:` URI one), sends SNI for a name, and presents
/// `tls.upstream_certificate` when set.
pub struct ClientTls {
    upstream: ArcSwap<Upstream>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.upstream.load().server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Build the connector for the upstream at `upstream` (its IP is the
    /// name to verify unless `tls.upstream_server_name` is set).
    pub fn new(settings: &TlsSettings, upstream: std::net::IpAddr) -> Result<Self, TlsError> {
        Ok(Self {
            upstream: ArcSwap::from_pointee(build_upstream(settings, upstream)?),
        })
    }

    /// Re-read the files and rebuild the connector; swap only on success,
    /// and not when it would lock the registrar at `upstream` out: a
    /// handshake with it fails with the new connector and succeeds with
    /// the one in use (a CA or server name that does not match its
    /// certificate). A registrar that cannot be reached, or fails both,
    /// tells nothing: the new connector is taken, and the result says so.
    /// Connects and reads: call it off the event loop.
    pub fn reload(
        &self,
        settings: &TlsSettings,
        upstream: SocketAddr,
    ) -> Result<UpstreamCheck, UpstreamReloadError> {
        let built = build_upstream(settings, upstream.ip()).map_err(UpstreamReloadError::Files)?;
        let check = match handshake_with(&built, upstream) {
            Handshake::Done => UpstreamCheck::Passed,
            Handshake::Unreached => UpstreamCheck::Unreached,
            Handshake::Failed(detail) => match handshake_with(&self.upstream.load(), upstream) {
                Handshake::Done => return Err(UpstreamReloadError::LocksOut { detail }),
                Handshake::Failed(_) => UpstreamCheck::FailsAsBefore { detail },
                Handshake::Unreached => UpstreamCheck::FailsUncompared { detail },
            },
        };
        self.upstream.store(Arc::new(built));
        Ok(check)
    }

    /// The name the registrar's certificate must carry.
    pub fn server_name(&self) -> String {
        self.upstream.load().server_name.clone()
    }

    /// Run the client side of a handshake on `stream` (a connected TCP
    /// stream to the registrar), giving up at `deadline`. A certificate that
    /// does not verify fails with [`HandshakeReason::BadCertificate`].
    pub async fn connect<S>(
        &self,
        stream: S,
        deadline: Instant,
    ) -> Result<SslStream<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let session = {
            let upstream = self.upstream.load();
            upstream
                .connector
                .configure()
                .and_then(|c| c.into_ssl(&upstream.server_name))
                .map_err(HandshakeError::setup)?
        };
        let mut tls = SslStream::new(session, stream).map_err(HandshakeError::setup)?;
        match tokio::time::timeout_at(deadline, Pin::new(&mut tls).connect()).await {
            Err(_elapsed) => Err(HandshakeError::timeout()),
            Ok(Err(e)) => Err(HandshakeError::from_ssl(&e, tls.ssl())),
            Ok(Ok(())) => Ok(tls),
        }
    }
}

/// How [`ClientTls::reload`] checked the settings it took against the
/// registrar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCheck {
    /// The registrar's handshake succeeds with them.
    Passed,
    /// The registrar could not be reached (nothing to judge by).
    Unreached,
    /// The registrar's handshake fails with them, and with those in use
    /// too (taken: they lock out nobody the old ones let in).
    FailsAsBefore {
        /// How the handshake with the new settings failed.
        detail: String,
    },
    /// The registrar's handshake fails with them, and it could not be
    /// reached again to try those in use (taken: nothing to judge by).
    FailsUncompared {
        /// How the handshake with the new settings failed.
        detail: String,
    },
}

/// Why [`ClientTls::reload`] kept the connector in use.
#[derive(Debug)]
pub enum UpstreamReloadError {
    /// A file or setting is wrong (named by the error).
    Files(TlsError),
    /// The registrar's handshake fails with the new settings, and succeeds
    /// with those in use: `detail` says how it failed.
    LocksOut {
        /// The handshake's failure, with the certificate's verify error.
        detail: String,
    },
}

/// How long the check of a reload's upstream settings waits for the
/// registrar (each of its connect and handshake).
const RELOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How a check's handshake with the registrar went.
#[derive(Debug)]
enum Handshake {
    /// Completed.
    Done,
    /// Connected, and the handshake failed: how.
    Failed(String),
    /// No connection (it tells nothing of the settings).
    Unreached,
}

/// A blocking handshake with the registrar at `addr` through `upstream`
/// (closed at once).
fn handshake_with(upstream: &crate::config::tls_contexts::Upstream, addr: SocketAddr) -> Handshake {
    let Ok(tcp) = std::net::TcpStream::connect_timeout(&addr, RELOAD_CHECK_TIMEOUT) else {
        return Handshake::Unreached;
    };
    if tcp.set_read_timeout(Some(RELOAD_CHECK_TIMEOUT)).is_err()
        || tcp.set_write_timeout(Some(RELOAD_CHECK_TIMEOUT)).is_err()
    {
        return Handshake::Unreached;
    }
    let configured = match upstream.connector.configure() {
        Ok(configured) => configured,
        Err(e) => return Handshake::Failed(e.to_string()),
    };
    match configured.connect(&upstream.server_name, tcp) {
        Ok(mut tls) => {
            let _ = tls.shutdown();
            Handshake::Done
        }
        Err(openssl::ssl::HandshakeError::Failure(mid)) => {
            let failed = HandshakeError::from_ssl(mid.error(), mid.ssl());
            Handshake::Failed(failed.to_string())
        }
        Err(e) => Handshake::Failed(e.to_string()),
    }
}

// === the open steps of stream listeners ===

/// The open step of a `tls:` listener (see [`crate::transport::stream::accept`]):
/// the server handshake, run in the connection's own task and slot, bounded
/// by `tls.handshake_timeout_secs`. A failure costs that one connection: it
/// is counted by reason (`sipadmit_tls_handshake_failures_total`) and logged
/// as a rate-limited [`Fault::TlsHandshake`].
#[derive(Debug, Clone)]
pub struct TlsListener {
    server: Arc<ServerTls>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl TlsListener {
    /// The open step of listeners presenting `server`'s certificate.
    pub fn new(server: Arc<ServerTls>, handshake_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            server,
            handshake_timeout,
            metrics,
        }
    }

    /// Run the handshake on an accepted connection: the TLS stream, or
    /// `None` (closed, counted and logged).
    pub async fn open(&self, tcp: TcpStream) -> Option<SslStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        let deadline = Instant::now() + self.handshake_timeout;
        match self.server.accept(tcp, deadline).await {
            Ok(tls) => {
                self.metrics.count_tls_handshake(TlsSide::Listener);
                tracing::debug!(
                    version = tls.ssl().version_str(),
                    cipher = tls.ssl().current_cipher().map_or("none", |c| c.name()),
                    "TLS handshake done"
                );
                Some(tls)
            }
            Err(e) => {
                self.metrics
                    .count_tls_handshake_failure(TlsSide::Listener, e.reason());
                Fault::TlsHandshake.report(&self.metrics, peer, &e);
                None
            }
        }
    }
}

/// The open step of a plain `tcp:` listener: wait (at most
/// `first_byte_deadline`, `limits.message_deadline_secs`) for the first
/// bytes without consuming them; a TLS ClientHello (a client configured for
/// TLS on the wrong port, which would otherwise wait in silence for an
/// answer that never comes) closes the connection at once, counted and
/// logged as [`Fault::TlsOnTcpPort`]. A connection silent until the
/// deadline is closed, counted as [`Fault::MessageDeadline`] (a silent
/// connection holds its slot no longer than a trickling one); anything
/// else is served as SIP.
pub async fn refuse_tls_client_hello(
    tcp: TcpStream,
    first_byte_deadline: Duration,
    metrics: Arc<Metrics>,
) -> Option<TcpStream> {
    let mut first = [0u8; 6];
    match tokio::time::timeout(first_byte_deadline, tcp.peek(&mut first)).await {
        Err(_elapsed) => {
            Fault::MessageDeadline.report(
                &metrics,
                tcp.peer_addr().ok(),
                &format_args!(
                    "no byte within limits.message_deadline_secs = {} of the connection opening",
                    first_byte_deadline.as_secs()
                ),
            );
            None
        }
        Ok(Ok(n)) if looks_like_tls_client_hello(&first[..n]) => {
            let peer = tcp.peer_addr().ok();
            Fault::TlsOnTcpPort.report(
                &metrics,
                peer,
                &format_args!("first bytes {:02x?}", &first[..n]),
            );
            None
        }
        // SIP, or an error or EOF the stream server meets and handles.
        Ok(_) => Some(tcp),
    }
}

// === reload ===

/// The TLS contexts of a running instance, with the `[tls]` settings each
/// was last built from, so that `SIGHUP` can rebuild them
/// ([`TlsContexts::reload`]).
#[derive(Debug, Clone, Default)]
pub struct TlsContexts {
    /// The settings each side was last built from (a side whose reload
    /// failed keeps its own).
    applied: Arc<Mutex<Applied>>,
    /// The listeners' acceptor, when there is a `tls:` listener.
    pub server: Option<Arc<ServerTls>>,
    /// The upstream's connector and address, when the upstream is `tls:`.
    pub upstream: Option<(Arc<ClientTls>, SocketAddr)>,
}

/// The `[tls]` settings in use, per side.
#[derive(Debug, Default)]
struct Applied {
    server: TlsSettings,
    upstream: TlsSettings,
}

impl TlsContexts {
    /// Build what is needed: an acceptor when `listeners` is true (whose
    /// reloaded certificates must name `advertised`, the hosts
    /// `proxy.advertise` gives the `tls:` listeners), a connector when
    /// `upstream` (a `tls:` upstream's address) is given.
    pub fn new(
        settings: &TlsSettings,
        listeners: bool,
        advertised: Vec<AdvertisedHost>,
        upstream: Option<SocketAddr>,
    ) -> Result<Self, TlsError> {
        let server = listeners
            .then(|| ServerTls::new(settings).map(|s| Arc::new(s.naming(advertised))))
            .transpose()?;
        let upstream = upstream
            .map(|addr| ClientTls::new(settings, addr.ip()).map(|c| (Arc::new(c), addr)))
            .transpose()?;
        Ok(Self {
            applied: Arc::new(Mutex::new(Applied {
                server: settings.clone(),
                upstream: settings.clone(),
            })),
            server,
            upstream,
        })
    }

    /// Whether TLS is in use (a `tls:` listener or a TLS upstream): its files
    /// are then read again on every reload.
    pub fn is_used(&self) -> bool {
        self.server.is_some() || self.upstream.is_some()
    }

    /// The `[tls]` keys whose value in `settings` differs from what the
    /// contexts were last built from (either side's; none without TLS). A
    /// key a refused reload did not apply is named again by the next.
    pub fn changed_keys(&self, settings: &TlsSettings) -> Vec<&'static str> {
        let applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut keys = Vec::new();
        let sides = [
            self.server.as_ref().map(|_| &applied.server),
            self.upstream.as_ref().map(|_| &applied.upstream),
        ];
        for key in sides
            .into_iter()
            .flatten()
            .flat_map(|a| a.changed_keys(settings))
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// Rebuild each context from `settings` (the `[tls]` section of a
    /// config that loaded), or, when `None` (the config did not load),
    /// from the settings it was last built from: either way every
    /// certificate, key and CA file is read again. New connections get the
    /// new context, open ones keep theirs. A side that fails keeps its old
    /// context (and its settings); why is logged, naming the key and the
    /// file. Each side's outcome is counted in
    /// `sipadmit_tls_reloads_total{side,result}`. Reads files: call it off
    /// the event loop. Returns whether every side was reloaded.
    pub fn reload(&self, settings: Option<&TlsSettings>, metrics: &Metrics) -> bool {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut reloaded = true;
        let mut count = |side, ok: bool| {
            reloaded &= ok;
            let result = if ok {
                ReloadResult::Success
            } else {
                ReloadResult::Failure
            };
            metrics.count_tls_reload(side, result);
        };
        if let Some(server) = &self.server {
            let wanted = settings.unwrap_or(&applied.server).clone();
            match server.reload(&wanted) {
                Ok(()) => {
                    tracing::info!(
                        min_version = %wanted.min_version,
                        mutual = wanted.client_ca.is_some(),
                        "TLS listener certificate and settings reloaded"
                    );
                    applied.server = wanted;
                    count(TlsSide::Listener, true);
                }
                Err(e) => {
                    tracing::warn!(key = e.key(), problem = %e.to_problem().message, "TLS listener certificate not reloaded; keeping the old one");
                    count(TlsSide::Listener, false);
                }
            }
        }
        if let Some((client, addr)) = &self.upstream {
            let wanted = settings.unwrap_or(&applied.upstream).clone();
            match client.reload(&wanted, *addr) {
                Ok(check) => {
                    let server_name = wanted.upstream_name(addr.ip());
                    match check {
                        UpstreamCheck::Passed => {
                            tracing::info!(upstream = %addr, server_name = %server_name, min_version = %wanted.min_version, "TLS upstream files and settings reloaded; the registrar's handshake succeeds with them")
                        }
                        UpstreamCheck::Unreached => {
                            tracing::info!(upstream = %addr, server_name = %server_name, min_version = %wanted.min_version, "TLS upstream files and settings reloaded, unchecked: the registrar could not be reached")
                        }
                        UpstreamCheck::FailsAsBefore { detail } => {
                            tracing::warn!(upstream = %addr, server_name = %server_name, problem = %detail, "TLS upstream files and settings reloaded, but the registrar's handshake fails with them, as with the ones before")
                        }
                        UpstreamCheck::FailsUncompared { detail } => {
                            tracing::warn!(upstream = %addr, server_name = %server_name, problem = %detail, "TLS upstream files and settings reloaded, but the registrar's handshake fails with them (the ones before could not be tried: the registrar was not reached again)")
                        }
                    }
                    applied.upstream = wanted;
                    count(TlsSide::Upstream, true);
                }
                Err(UpstreamReloadError::Files(e)) => {
                    tracing::warn!(key = e.key(), problem = %e.to_problem().message, "TLS upstream files not reloaded; keeping the old ones");
                    count(TlsSide::Upstream, false);
                }
                Err(UpstreamReloadError::LocksOut { detail }) => {
                    tracing::warn!(upstream = %addr, server_name = %wanted.upstream_name(addr.ip()), problem = %detail, "TLS upstream settings not reloaded: the registrar's handshake fails with them and succeeds with the ones in use (its next connection would fail); keeping the old ones");
                    count(TlsSide::Upstream, false);
                }
            }
        }
        reloaded
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Identity, TlsVersion};

    /// A TLS registrar on 127.0.0.1 that completes every handshake with
    /// the certificate `cert` (and `key`): its address.
    fn tls_registrar(cert: &[u8], key: &[u8]) -> SocketAddr {
        use openssl::pkey::PKey;
        use openssl::ssl::{SslAcceptor, SslMethod};
        use openssl::x509::X509;
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acceptor
            .set_certificate(&X509::from_pem(cert).unwrap())
            .unwrap();
        acceptor
            .set_private_key(&PKey::private_key_from_pem(key).unwrap())
            .unwrap();
        let acceptor = acceptor.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                if let Ok(mut tls) = acceptor.accept(tcp) {
                    let _ = tls.shutdown();
                }
            }
        });
        addr
    }

    /// A reload whose upstream CA the registrar's certificate does not
    /// chain to, while the one in use does, would fail the link's next
    /// connection: refused, the old connector kept. The right CA again is
    /// taken; so is any CA while the registrar cannot be reached (nothing
    /// to judge by).
    #[test]
    fn an_upstream_reload_that_would_lock_the_registrar_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::test_certificates::self_signed("reg.test");
        let (other_ca, _) = crate::test_certificates::self_signed("reg.test");
        let (right, wrong) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
        std::fs::write(&right, &cert).unwrap();
        std::fs::write(&wrong, &other_ca).unwrap();
        let settings = |ca: &Path| TlsSettings {
            upstream_ca: Some(ca.to_path_buf()),
            upstream_server_name: Some("reg.test".into()),
            ..TlsSettings::default()
        };
        let registrar = tls_registrar(&cert, &key);
        let client = ClientTls::new(&settings(&right), registrar.ip()).unwrap();
        match client.reload(&settings(&wrong), registrar) {
            Err(UpstreamReloadError::LocksOut { detail }) => {
                assert!(detail.contains("certificate"), "{detail}");
            }
            other => panic!("a CA the registrar does not chain to was taken: {other:?}"),
        }
        assert!(
            matches!(
                handshake_with(&client.upstream.load(), registrar),
                Handshake::Done
            ),
            "the connector in use is kept"
        );
        let taken = client.reload(&settings(&right), registrar);
        assert_eq!(
            taken.unwrap(),
            UpstreamCheck::Passed,
            "the right CA is taken"
        );
        // Nothing listens here: the reload is taken (no judge).
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let unchecked = client.reload(&settings(&wrong), gone);
        assert_eq!(unchecked.unwrap(), UpstreamCheck::Unreached);
        assert!(matches!(
            handshake_with(&client.upstream.load(), registrar),
            Handshake::Failed(_)
        ));
        // Wrong before and after: taken, and said so.
        match client.reload(&settings(&wrong), registrar) {
            Ok(UpstreamCheck::FailsAsBefore { detail }) => {
                assert!(detail.contains("certificate"), "{detail}");
            }
            other => panic!("not told as failing as before: {other:?}"),
        }
    }

    /// A handshake with a registrar whose self-signed certificate has the
    /// common name `Contoso registrar` (no name, so OpenSSL's fallback to
    /// it does not pass) and the subjectAltNames `names` (`dns:` a DNS
    /// name, else a URI), verified against the name `contoso.com` and, as
    /// its CA, that certificate (`trusted`) or another one.
    fn handshake_naming(names: &[&str], trusted: bool) -> Handshake {
        handshake_presenting("Contoso registrar", Some(names), trusted)
    }

    /// A handshake with a registrar presenting a certificate of
    /// `common_name` and, when given, the subjectAltNames `names` (`dns:`,
    /// `ip:` and `email:` names, URIs otherwise), trusted as
    /// `tls.upstream_ca` or not, expecting `contoso.com`.
    fn handshake_presenting(common_name: &str, names: Option<&[&str]>, trusted: bool) -> Handshake {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = match names {
            None => crate::test_certificates::self_signed_without_alt_names(common_name),
            Some(names) => crate::test_certificates::self_signed_with(common_name, |alt_names| {
                for name in names {
                    match name.split_once(':') {
                        Some(("dns", dns)) => alt_names.dns(dns),
                        Some(("ip", ip)) => alt_names.ip(ip),
                        Some(("email", email)) => alt_names.email(email),
                        _ => alt_names.uri(name),
                    };
                }
            }),
        };
        let ca = dir.path().join("ca.pem");
        if trusted {
            std::fs::write(&ca, &cert).unwrap();
        } else {
            std::fs::write(&ca, crate::test_certificates::self_signed("contoso.com").0).unwrap();
        }
        let settings = TlsSettings {
            upstream_ca: Some(ca),
            upstream_server_name: Some("contoso.com".into()),
            ..TlsSettings::default()
        };
        let registrar = tls_registrar(&cert, &key);
        handshake_with(
            &build_upstream(&settings, registrar.ip()).unwrap(),
            registrar,
        )
    }

    /// RFC 5922 7.1: a registrar certificate that names its SIP domain
    /// only as a `sip:` URI subjectAltName without a user part carries it
    /// (scheme and host in any case, a port or parameters after it); a URI
    /// naming a user, of another scheme or of another domain does not, and
    /// the chain is still checked. A DNS name still passes.
    #[test]
    fn a_sip_uri_subject_alt_name_names_the_registrar() {
        let passes = |names: &[&str], trusted: bool| match handshake_naming(names, trusted) {
            Handshake::Done => true,
            Handshake::Failed(detail) => {
                assert!(detail.contains("certificate"), "{detail}");
                false
            }
            Handshake::Unreached => panic!("the registrar was not reached"),
        };
        assert!(passes(&["sip:contoso.com"], true));
        assert!(passes(&["SIP:Contoso.COM:5061;transport=tls"], true));
        assert!(passes(&["sip:fabrikam.com", "sip:contoso.com"], true));
        assert!(passes(&["dns:contoso.com"], true));
        assert!(passes(&["dns:fabrikam.com", "sip:contoso.com"], true));
        for refused in [
            "sip:alice@contoso.com",
            "sips:contoso.com",
            "sip:fabrikam.com",
            "sip:contoso.com.evil.example",
            "dns:fabrikam.com",
        ] {
            assert!(!passes(&[refused], true), "{refused}");
        }
        assert!(!passes(&["sip:contoso.com"], false), "an untrusted chain");
    }

    /// RFC 5922 7.1: the common name names the registrar only in a
    /// certificate without subjectAltNames. OpenSSL alone takes it whenever
    /// no DNS name is among them (beside a URI, an IP address, an e-mail
    /// address); such a certificate is refused, in words that say why.
    #[test]
    fn the_common_name_counts_only_without_subject_alt_names() {
        let outcome =
            |names: Option<&[&str]>| match handshake_presenting("contoso.com", names, true) {
                Handshake::Done => None,
                Handshake::Failed(detail) => Some(detail),
                Handshake::Unreached => panic!("the registrar was not reached"),
            };
        assert_eq!(outcome(None), None, "no subjectAltName: the common name");
        assert_eq!(outcome(Some(&["dns:contoso.com"])), None);
        assert_eq!(outcome(Some(&["sip:contoso.com"])), None);
        for beside in [
            "sip:fabrikam.com",
            "ip:192.0.2.1",
            "email:admin@contoso.com",
        ] {
            let detail = outcome(Some(&[beside])).unwrap_or_else(|| panic!("{beside}: taken"));
            assert!(
                detail.contains("the common name counts only in a certificate without"),
                "{beside}: {detail}"
            );
        }
        assert!(
            outcome(Some(&["dns:fabrikam.com"])).is_some_and(|d| d.contains("hostname mismatch")),
            "a DNS name of another domain: OpenSSL's own refusal"
        );
    }

    /// The link's own handshake ([`ClientTls::connect`]) takes such a
    /// certificate too, and leaves no verify error behind.
    #[tokio::test]
    async fn the_link_connects_to_a_registrar_named_by_a_sip_uri() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) =
            crate::test_certificates::self_signed_with("Contoso registrar", |alt_names| {
                alt_names.uri("sip:contoso.com");
            });
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &cert).unwrap();
        let settings = TlsSettings {
            upstream_ca: Some(ca),
            upstream_server_name: Some("contoso.com".into()),
            ..TlsSettings::default()
        };
        let registrar = tls_registrar(&cert, &key);
        let client = ClientTls::new(&settings, registrar.ip()).unwrap();
        let tcp = TcpStream::connect(registrar).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let tls = client.connect(tcp, deadline).await.unwrap();
        assert_eq!(tls.ssl().verify_result(), X509VerifyResult::OK);
    }

    #[test]
    fn client_hellos_are_recognised() {
        // TLS 1.2 ClientHello record header + handshake header.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        assert!(looks_like_tls_client_hello(&hello));
        // TLS 1.0 record version (Lync Phone Edition), SSL 3.0, TLS 1.3's
        // legacy record version.
        for minor in [0x00, 0x01, 0x03] {
            assert!(looks_like_tls_client_hello(&[
                0x16, 0x03, minor, 0x00, 0x2f, 0x01
            ]));
        }
        // A prefix is judged by what it has.
        assert!(looks_like_tls_client_hello(&[0x16]));
        assert!(looks_like_tls_client_hello(&[0x16, 0x03]));
    }

    #[test]
    fn sip_and_other_bytes_are_not_client_hellos() {
        assert!(!looks_like_tls_client_hello(b""));
        assert!(!looks_like_tls_client_hello(
            b"REGISTER sip:contoso.com SIP/2.0\r\n"
        ));
        assert!(!looks_like_tls_client_hello(b"\r\n\r\n"));
        assert!(!looks_like_tls_client_hello(b"GET / HTTP/1.1\r\n"));
        // Not a handshake record (application data), a wrong major version,
        // an unknown minor version, a handshake that is not a ClientHello.
        assert!(!looks_like_tls_client_hello(&[
            0x17, 0x03, 0x03, 0x00, 0x10
        ]));
        assert!(!looks_like_tls_client_hello(&[0x16, 0x02, 0x00]));
        assert!(!looks_like_tls_client_hello(&[0x16, 0x03, 0x05]));
        assert!(!looks_like_tls_client_hello(&[
            0x16, 0x03, 0x03, 0x00, 0x40, 0x02
        ]));
    }

    #[test]
    fn reasons_are_bounded_snake_case_labels() {
        let labels: Vec<&str> = HandshakeReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "timeout",
                "plain_text",
                "closed",
                "no_client_certificate",
                "bad_certificate",
                "certificate_refused",
                "protocol_version",
                "no_shared_cipher",
                "other"
            ]
        );
    }

    #[test]
    fn openssl_reason_codes_map_to_reasons() {
        assert_eq!(
            reason_of_code(SSL_R_WRONG_VERSION_NUMBER),
            Some(HandshakeReason::PlainText)
        );
        assert_eq!(
            reason_of_code(SSL_R_UNSUPPORTED_PROTOCOL),
            Some(HandshakeReason::ProtocolVersion)
        );
        assert_eq!(
            reason_of_code(SSL_R_NO_SHARED_CIPHER),
            Some(HandshakeReason::NoSharedCipher)
        );
        assert_eq!(
            reason_of_code(SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE),
            Some(HandshakeReason::NoClientCertificate)
        );
        assert_eq!(
            reason_of_code(SSL_R_CERTIFICATE_VERIFY_FAILED),
            Some(HandshakeReason::BadCertificate)
        );
        assert_eq!(
            reason_of_code(SSL_R_TLSV1_ALERT_UNKNOWN_CA),
            Some(HandshakeReason::CertificateRefused)
        );
        assert_eq!(reason_of_code(1), None);
    }

    #[test]
    fn a_missing_file_names_key_and_path() {
        let settings = TlsSettings {
            identity: Some(Identity {
                certificate: "/nonexistent/sipadmit/cert.pem".into(),
                private_key: "/nonexistent/sipadmit/key.pem".into(),
            }),
            ..TlsSettings::default()
        };
        let errors = check(&settings);
        let keys: Vec<&str> = errors.iter().map(TlsError::key).collect();
        assert_eq!(keys, ["tls.certificate", "tls.private_key"]);
        let text = errors[0].to_string();
        assert!(
            text.starts_with("tls.certificate (/nonexistent/sipadmit/cert.pem): cannot read"),
            "{text}"
        );
        let problem = errors[0].to_problem();
        assert_eq!(problem.key, "tls.certificate");
        assert!(
            problem
                .message
                .starts_with("/nonexistent/sipadmit/cert.pem: cannot read: "),
            "{problem}"
        );
        let err = ServerTls::new(&settings).unwrap_err();
        assert_eq!(err.key(), "tls.certificate");
        assert_eq!(
            err.path(),
            Some(Path::new("/nonexistent/sipadmit/cert.pem"))
        );
    }

    #[test]
    fn cipher_lists_are_checked_by_openssl() {
        assert!(check(&TlsSettings::default()).is_empty());
        let bad = TlsSettings {
            ciphers: "NO-SUCH-CIPHER".into(),
            ..TlsSettings::default()
        };
        let errors = check(&bad);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key(), "tls.ciphers");
        assert!(
            errors[0].to_string().contains("\"NO-SUCH-CIPHER\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn legacy_versions_need_security_level_0() {
        let legacy = TlsSettings {
            min_version: TlsVersion::Tls1_0,
            ciphers: "DEFAULT".into(),
            ..TlsSettings::default()
        };
        let errors = check(&legacy);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key(), "tls.min_version");
        assert!(
            errors[0].to_string().contains("@SECLEVEL=0"),
            "{}",
            errors[0]
        );
        let compatible = TlsSettings {
            ciphers: "DEFAULT:@SECLEVEL=0".into(),
            ..legacy
        };
        assert!(check(&compatible).is_empty());
    }

    #[test]
    fn a_listener_without_certificate_cannot_be_built() {
        let err = ServerTls::new(&TlsSettings::default()).unwrap_err();
        assert_eq!(err.key(), "tls.certificate");
        assert!(matches!(err.problem(), TlsProblem::Missing));
    }
}
