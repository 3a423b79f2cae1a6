//! The `[tls]` settings compiled into OpenSSL contexts: every file read
//! (PEM parse, key matching its certificate), the versions, the cipher
//! list and the security level the legacy versions need. Validation
//! ([`check`], through `config::tls`) and the running acceptor and
//! connector (`transport::tls`) build them the same way, so `check-config`
//! finds what `run` would trip over; TLS checking goes one way only, from
//! the transport down to the config.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslAcceptor, SslConnector, SslContextBuilder, SslContextRef, SslMethod, SslOptions,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509StoreContextRef, X509VerifyResult, X509};

use super::{Identity, TlsSettings, TlsVersion};
use crate::problem::Problem;

/// Sessions a listener remembers for session-ID resumption (TLS 1.2 and
/// below without tickets, e.g. Windows 7 SChannel). A cached session costs
/// about 1-2 KB (more with a client certificate), so this bounds the cache
/// near 40 MB; OpenSSL evicts the oldest when it is full.
pub const SESSION_CACHE_ENTRIES: i32 = 20_480;

/// TLS 1.3 session tickets sent after each full handshake (OpenSSL's
/// default is 2; one is enough for a client that reconnects, and halves
/// the post-handshake work).
pub const TLS13_TICKETS: usize = 1;

/// Session ID context of listener sessions: OpenSSL refuses to resume a
/// session of a context that verifies client certificates without one.
pub(crate) const SESSION_ID_CONTEXT: &[u8] = b"sipadmit";

// OpenSSL's `SSL_R_*` reason codes (include/openssl/sslerr.h; stable across
// releases) of a handshake that found no cipher, for the errors of library
// `ERR_LIB_SSL`; the transport tells handshake failures by them too.
pub(crate) const ERR_LIB_SSL: i32 = 20;
pub(crate) const SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM: i32 = 118;
pub(crate) const SSL_R_NO_CIPHERS_AVAILABLE: i32 = 181;
pub(crate) const SSL_R_NO_SHARED_CIPHER: i32 = 193;

/// OpenSSL's `X509_V_ERR_HOSTNAME_MISMATCH` (include/openssl/x509_vfy.h;
/// stable across releases): the certificate carries the name asked for
/// neither as a DNS subjectAltName nor, without those, as its common name.
const X509_V_ERR_HOSTNAME_MISMATCH: i32 = 62;

/// How long the handshake [`check`] runs against itself may take.
const SELF_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

// === errors ===

/// The config keys of a certificate chain and of its private key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentityKeys {
    certificate: &'static str,
    private_key: &'static str,
}

/// `tls.certificate` / `tls.private_key`.
pub(crate) const SERVER_IDENTITY: IdentityKeys = IdentityKeys {
    certificate: "tls.certificate",
    private_key: "tls.private_key",
};

/// `tls.upstream_certificate` / `tls.upstream_private_key`.
pub(crate) const UPSTREAM_IDENTITY: IdentityKeys = IdentityKeys {
    certificate: "tls.upstream_certificate",
    private_key: "tls.upstream_private_key",
};

/// A `[tls]` setting or file OpenSSL cannot use: names the config key and
/// the file at fault. Displayed as `tls.certificate (/etc/x.pem): cannot read`.
#[derive(Debug)]
pub struct TlsError {
    key: &'static str,
    path: Option<PathBuf>,
    problem: TlsProblem,
}

/// What is wrong with a `[tls]` setting or file.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    /// A `tls:` listener needs a certificate and key, and none is configured.
    #[error("not set; required for a tls: listener")]
    Missing,
    /// The file cannot be read.
    #[error("cannot read")]
    Read(#[source] io::Error),
    /// The file is not valid PEM of the expected kind.
    #[error("not a PEM {what}")]
    NotPem {
        /// `certificate`, `private key` or `CA certificate`.
        what: &'static str,
        /// OpenSSL's reason.
        #[source]
        source: ErrorStack,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("no PEM {what} in the file")]
    NoPem {
        /// `certificate` or `CA certificate`.
        what: &'static str,
    },
    /// The private key is encrypted (sipadmit asks for no passphrase).
    #[error(
        "the private key is encrypted; store it unencrypted, readable only by sipadmit's user"
    )]
    EncryptedKey,
    /// The certificate does not name a host `proxy.advertise` gives the
    /// `tls:` listeners (refused by a reload, as a start refuses it).
    #[error(
        "does not name {host}, which proxy.advertise gives the tls: listeners (it names \
         {names}): the registrar and clients reaching sipadmit by it would refuse it"
    )]
    NotNamed {
        /// The advertised host.
        host: String,
        /// The names the certificate has.
        names: String,
    },
    /// The certificate is outside its validity period (refused by a
    /// reload: the running one is kept).
    #[error("is not valid now (valid from {not_before} until {not_after}): clients that check it refuse it")]
    NotValidNow {
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
    },
    /// The private key is not the key of the certificate.
    #[error("does not belong to the certificate in {certificate_key} ({})", certificate.display())]
    KeyMismatch {
        /// The key of the certificate (`tls.certificate`).
        certificate_key: &'static str,
        /// The certificate file.
        certificate: PathBuf,
    },
    /// OpenSSL knows no cipher in the list.
    #[error("OpenSSL accepts no cipher in {list:?}")]
    Ciphers {
        /// The list as configured.
        list: String,
        /// OpenSSL's reason.
        #[source]
        source: ErrorStack,
    },
    /// No cipher of the list goes with the certificate's key, so no client
    /// of TLS 1.2 or older can connect (TLS 1.3 suites do not depend on it).
    #[error(
        "no cipher in {list:?} can be used with the {key_type} key of tls.certificate: \
         clients of TLS 1.2 and older (Lync 2010/2013, Windows 7) would be refused; add \
         suites for that key (e.g. {example}) or use a certificate of a key the list has \
         suites for"
    )]
    NoSuiteForKey {
        /// The list as configured.
        list: String,
        /// The certificate key's type (`RSA`, `EC`, `Ed25519`, ...).
        key_type: &'static str,
        /// A suite for that key type.
        example: &'static str,
    },
    /// TLS 1.0/1.1 asked for at a security level that refuses them.
    #[error(
        "{version} needs OpenSSL security level 0, and tls.ciphers leaves level {level}, \
         where OpenSSL 3 refuses the SHA-1 signatures of TLS 1.0/1.1 handshakes; \
         end tls.ciphers with \":@SECLEVEL=0\" (e.g. \"DEFAULT:@SECLEVEL=0\")"
    )]
    LegacyNeedsLevel0 {
        /// The configured `tls.min_version`.
        version: TlsVersion,
        /// The security level the cipher list leaves.
        level: u32,
    },
    /// OpenSSL refused another setting.
    #[error("OpenSSL refused the setting")]
    OpenSsl(#[source] ErrorStack),
}

impl TlsError {
    pub(crate) fn new(key: &'static str, path: Option<&Path>, problem: TlsProblem) -> Self {
        Self {
            key,
            path: path.map(Path::to_owned),
            problem,
        }
    }

    /// The config key at fault (`tls.private_key`).
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The file at fault, if a file is.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What is wrong.
    pub fn problem(&self) -> &TlsProblem {
        &self.problem
    }

    /// As a config [`Problem`]: the key, then the file and every cause.
    pub fn to_problem(&self) -> Problem {
        let mut problem = Problem::from_error(self.key, &self.problem);
        if let Some(path) = &self.path {
            problem.message = format!("{}: {}", path.display(), problem.message);
        }
        problem
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key)?;
        if let Some(path) = &self.path {
            write!(f, " ({})", path.display())?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The problem's own message is part of this one; its cause is next.
        std::error::Error::source(&self.problem)
    }
}

// === files ===

pub(crate) fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(key, Some(path), TlsProblem::Read(e)))
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn certificates(
    key: &'static str,
    path: &Path,
    what: &'static str,
) -> Result<Vec<X509>, TlsError> {
    let pem = read(key, path)?;
    let certificates = X509::stack_from_pem(&pem)
        .map_err(|source| TlsError::new(key, Some(path), TlsProblem::NotPem { what, source }))?;
    if certificates.is_empty() {
        return Err(TlsError::new(key, Some(path), TlsProblem::NoPem { what }));
    }
    Ok(certificates)
}

/// The names the first certificate of a PEM file is valid for (for the
/// `proxy.advertise` check): its subjectAltName DNS names and addresses,
/// or its subject common name when it has no DNS name.
pub(crate) fn certificate_names(
    key: &'static str,
    path: &Path,
) -> Result<super::advertise::CertificateNames, TlsError> {
    let chain = certificates(key, path, "certificate")?;
    Ok(names_of(&chain[0]))
}

/// The names a certificate is for: its DNS and IP subjectAltNames, or,
/// without DNS ones, its common names.
pub(crate) fn names_of(first: &openssl::x509::X509Ref) -> super::advertise::CertificateNames {
    let mut names = super::advertise::CertificateNames::default();
    for name in first.subject_alt_names().iter().flatten() {
        if let Some(dns) = name.dnsname() {
            names.dns.push(dns.to_owned());
        }
        match name.ipaddress() {
            Some(&[a, b, c, d]) => names.ips.push(std::net::IpAddr::from([a, b, c, d])),
            Some(v6) => {
                if let Ok(octets) = <[u8; 16]>::try_from(v6) {
                    names.ips.push(std::net::IpAddr::from(octets));
                }
            }
            None => {}
        }
    }
    if names.dns.is_empty() {
        let common_names = first
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME);
        names
            .dns
            .extend(common_names.filter_map(|e| e.data().to_string().ok()));
    }
    names
}

/// A trust store of every certificate in a PEM file.
pub(crate) fn trust_store(
    key: &'static str,
    path: &Path,
) -> Result<(X509Store, Vec<X509>), TlsError> {
    let roots = certificates(key, path, "CA certificate")?;
    let openssl = |e| TlsError::new(key, Some(path), TlsProblem::OpenSsl(e));
    let mut store = X509StoreBuilder::new().map_err(openssl)?;
    for root in &roots {
        store.add_cert(root.clone()).map_err(openssl)?;
    }
    Ok((store.build(), roots))
}

pub(crate) fn private_key(key: &'static str, path: &Path) -> Result<PKey<Private>, TlsError> {
    let pem = read(key, path)?;
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(TlsError::new(key, Some(path), TlsProblem::EncryptedKey));
    }
    // An empty passphrase: OpenSSL must never prompt on a terminal.
    PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|source| {
        TlsError::new(
            key,
            Some(path),
            TlsProblem::NotPem {
                what: "private key",
                source,
            },
        )
    })
}

/// A certificate chain and its key, read and matched.
pub(crate) struct LoadedIdentity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl LoadedIdentity {
    /// Read both files; every problem found (both files can be at fault).
    fn load(identity: &Identity, keys: IdentityKeys) -> Result<Self, Vec<TlsError>> {
        let chain = certificates(keys.certificate, &identity.certificate, "certificate");
        let key = private_key(keys.private_key, &identity.private_key);
        match (chain, key) {
            (Ok(chain), Ok(key)) => {
                let matches = chain[0]
                    .public_key()
                    .is_ok_and(|public| public.public_eq(&key));
                if matches {
                    Ok(Self { chain, key })
                } else {
                    Err(vec![TlsError::new(
                        keys.private_key,
                        Some(&identity.private_key),
                        TlsProblem::KeyMismatch {
                            certificate_key: keys.certificate,
                            certificate: identity.certificate.clone(),
                        },
                    )])
                }
            }
            (chain, key) => Err(chain.err().into_iter().chain(key.err()).collect()),
        }
    }

    /// Install on a context.
    fn install(self, builder: &mut SslContextBuilder, keys: IdentityKeys) -> Result<(), TlsError> {
        let openssl = |e| TlsError::new(keys.certificate, None, TlsProblem::OpenSsl(e));
        let mut chain = self.chain.into_iter();
        let leaf = chain.next().expect("load() keeps at least one certificate");
        builder.set_certificate(&leaf).map_err(openssl)?;
        for intermediate in chain {
            builder
                .add_extra_chain_cert(intermediate)
                .map_err(openssl)?;
        }
        builder.set_private_key(&self.key).map_err(openssl)?;
        builder.check_private_key().map_err(openssl)
    }
}

pub(crate) fn first_error(errors: Vec<TlsError>) -> TlsError {
    errors
        .into_iter()
        .next()
        .expect("a failed load reports at least one error")
}

// === settings shared by both directions ===

pub(crate) fn ssl_version(version: TlsVersion) -> SslVersion {
    match version {
        TlsVersion::Tls1_0 => SslVersion::TLS1,
        TlsVersion::Tls1_1 => SslVersion::TLS1_1,
        TlsVersion::Tls1_2 => SslVersion::TLS1_2,
        TlsVersion::Tls1_3 => SslVersion::TLS1_3,
    }
}

/// `tls.min_version` and `tls.ciphers` on a context (TLS 1.3 suites stay
/// OpenSSL's defaults).
pub(crate) fn apply_versions_and_ciphers(
    builder: &mut SslContextBuilder,
    settings: &TlsSettings,
) -> Result<(), TlsError> {
    builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
    builder
        .set_min_proto_version(Some(ssl_version(settings.min_version)))
        .map_err(|e| TlsError::new("tls.min_version", None, TlsProblem::OpenSsl(e)))?;
    builder
        .set_max_proto_version(None)
        .map_err(|e| TlsError::new("tls.min_version", None, TlsProblem::OpenSsl(e)))?;
    builder
        .set_cipher_list(&settings.ciphers)
        .map_err(|source| {
            TlsError::new(
                "tls.ciphers",
                None,
                TlsProblem::Ciphers {
                    list: settings.ciphers.clone(),
                    source,
                },
            )
        })
}

/// TLS 1.0/1.1 only work at security level 0 with OpenSSL 3 (verified with
/// Debian's 3.0: "no suitable signature algorithm" at level 1).
pub(crate) fn check_security_level(
    context: &SslContextRef,
    settings: &TlsSettings,
) -> Result<(), TlsError> {
    let level = context.security_level();
    if settings.min_version.is_legacy() && level > 0 && openssl::version::number() >= 0x3000_0000 {
        return Err(TlsError::new(
            "tls.min_version",
            None,
            TlsProblem::LegacyNeedsLevel0 {
                version: settings.min_version,
                level,
            },
        ));
    }
    Ok(())
}

/// Every problem `run` would meet in `settings`: the cipher list, the
/// security level legacy versions need, and every file (readable, PEM, key
/// matching its certificate). Used by config validation.
pub fn check(settings: &TlsSettings) -> Vec<TlsError> {
    let mut errors = Vec::new();
    let protocol = SslContextBuilder::new(SslMethod::tls())
        .map_err(|e| TlsError::new("tls", None, TlsProblem::OpenSsl(e)))
        .and_then(|mut builder| {
            apply_versions_and_ciphers(&mut builder, settings)?;
            check_security_level(&builder.build(), settings)
        });
    errors.extend(protocol.err());
    if errors.is_empty() && settings.identity.is_some() {
        // Files that cannot be loaded are told below.
        if let Ok(acceptor) = build_acceptor(settings) {
            errors.extend(suites_for_key(&acceptor, settings).err());
        }
    }
    for (identity, keys) in [
        (&settings.identity, SERVER_IDENTITY),
        (&settings.upstream_identity, UPSTREAM_IDENTITY),
    ] {
        if let Some(identity) = identity {
            errors.extend(
                LoadedIdentity::load(identity, keys)
                    .err()
                    .into_iter()
                    .flatten(),
            );
        }
    }
    for (key, roots) in [
        ("tls.client_ca", &settings.client_ca),
        ("tls.upstream_ca", &settings.upstream_ca),
    ] {
        if let Some(path) = roots {
            errors.extend(trust_store(key, path).err());
        }
    }
    errors
}

/// Whether a client of TLS 1.2 or older can agree on a cipher with
/// `acceptor` (when `settings` admit one): a handshake over a socket pair,
/// against a client that offers every cipher OpenSSL has (NULL ones too). A list with no
/// suite for the certificate's key type (ECDSA suites only, an RSA
/// certificate) fails it. Run by the configuration check and by every
/// reload of the listener's certificate (a renewal may change its key type).
pub(crate) fn suites_for_key(
    acceptor: &SslAcceptor,
    settings: &TlsSettings,
) -> Result<(), TlsError> {
    if settings.min_version >= TlsVersion::Tls1_3 {
        return Ok(());
    }
    let Some(refused) = self_handshake(acceptor.clone(), settings) else {
        return Ok(());
    };
    let no_cipher = refused.errors().iter().any(|e| {
        e.library_code() == ERR_LIB_SSL
            && matches!(
                e.reason_code(),
                SSL_R_NO_SHARED_CIPHER
                    | SSL_R_NO_CIPHERS_AVAILABLE
                    | SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM
            )
    });
    if !no_cipher {
        return Ok(());
    }
    use openssl::pkey::Id;
    let key = acceptor
        .context()
        .certificate()
        .and_then(|c| c.public_key().ok())
        .map(|k| k.id());
    let (key_type, example) = match key {
        Some(Id::RSA | Id::RSA_PSS) => ("RSA", "ECDHE-RSA-AES256-GCM-SHA384"),
        Some(Id::EC) => ("EC", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        Some(Id::ED25519) => ("Ed25519", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        Some(Id::ED448) => ("Ed448", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        Some(Id::DSA) => ("DSA", "DHE-DSS-AES256-GCM-SHA384"),
        _ => ("certificate's", "one whose authentication is the key's"),
    };
    Err(TlsError::new(
        "tls.ciphers",
        None,
        TlsProblem::NoSuiteForKey {
            list: settings.ciphers.clone(),
            key_type,
            example,
        },
    ))
}

/// Run a TLS 1.2-or-older handshake against `acceptor` over a socket pair;
/// the listener's errors if it refused the client. `None` when it went
/// through, or failed for a reason of the pair itself.
fn self_handshake(acceptor: SslAcceptor, settings: &TlsSettings) -> Option<ErrorStack> {
    use std::os::unix::net::UnixStream;
    let (server, client) = UnixStream::pair().ok()?;
    for end in [&server, &client] {
        end.set_read_timeout(Some(SELF_HANDSHAKE_TIMEOUT)).ok()?;
        end.set_write_timeout(Some(SELF_HANDSHAKE_TIMEOUT)).ok()?;
    }
    // No thread to spare (a cgroup's pids.max): the check is skipped.
    let listener = std::thread::Builder::new()
        .name("tls-check".into())
        .spawn(move || match acceptor.accept(server) {
            Err(openssl::ssl::HandshakeError::Failure(mid)) => mid.error().ssl_error().cloned(),
            _ => None,
        })
        .ok()?;
    let mut connector = SslConnector::builder(SslMethod::tls_client()).ok()?;
    connector.set_verify(SslVerifyMode::NONE);
    connector
        .set_min_proto_version(Some(ssl_version(settings.min_version)))
        .ok()?;
    connector
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .ok()?;
    // Every cipher OpenSSL has, those without encryption too (`ALL`
    // leaves them out): a list of NULL suites is odd, but it works.
    connector
        .set_cipher_list("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
        .ok()?;
    let connecting = connector
        .build()
        .configure()
        .ok()?
        .verify_hostname(false)
        .use_server_name_indication(false)
        .connect("sipadmit", client);
    // The client's end closes here, so the listener is not left waiting.
    drop(connecting);
    listener.join().ok().flatten()
}

/// A connector and the name it verifies.
pub(crate) struct Upstream {
    /// The connector.
    pub(crate) connector: SslConnector,
    /// The name the registrar's certificate must carry.
    pub(crate) server_name: String,
}

pub(crate) fn build_acceptor(settings: &TlsSettings) -> Result<SslAcceptor, TlsError> {
    let identity = settings
        .identity
        .as_ref()
        .ok_or_else(|| TlsError::new("tls.certificate", None, TlsProblem::Missing))?;
    let identity = LoadedIdentity::load(identity, SERVER_IDENTITY).map_err(first_error)?;
    let openssl = |key| move |e| TlsError::new(key, None, TlsProblem::OpenSsl(e));
    // Mozilla's intermediate profile: curves, DH parameters, TLS 1.3 suites,
    // no compression, server cipher preference; then our versions and list.
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(openssl("tls"))?;
    apply_versions_and_ciphers(&mut builder, settings)?;
    // Client-initiated renegotiation costs a full handshake each: refused.
    builder.set_options(SslOptions::NO_RENEGOTIATION);
    identity.install(&mut builder, SERVER_IDENTITY)?;
    if let Some(path) = &settings.client_ca {
        let (store, roots) = trust_store("tls.client_ca", path)?;
        builder.set_cert_store(store);
        for root in &roots {
            // Named in the CertificateRequest, so clients pick a matching certificate.
            builder
                .add_client_ca(root)
                .map_err(openssl("tls.client_ca"))?;
        }
        builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    builder
        .set_session_id_context(SESSION_ID_CONTEXT)
        .map_err(openssl("tls"))?;
    builder.set_session_cache_mode(SslSessionCacheMode::SERVER);
    builder.set_session_cache_size(SESSION_CACHE_ENTRIES);
    builder
        .set_num_tickets(TLS13_TICKETS)
        .map_err(openssl("tls"))?;
    let acceptor = builder.build();
    check_security_level(acceptor.context(), settings)?;
    Ok(acceptor)
}

pub(crate) fn build_upstream(
    settings: &TlsSettings,
    upstream: std::net::IpAddr,
) -> Result<Upstream, TlsError> {
    let identity = settings
        .upstream_identity
        .as_ref()
        .map(|identity| LoadedIdentity::load(identity, UPSTREAM_IDENTITY).map_err(first_error))
        .transpose()?;
    let server_name = settings.upstream_name(upstream);
    // Verification on (peer), the system's roots, SNI and name checks per
    // session, with the names RFC 5922 7.1 takes ([`names_the_registrar`]).
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| TlsError::new("tls", None, TlsProblem::OpenSsl(e)))?;
    let names = RegistrarNames {
        domain: server_name.clone(),
        // Only under a CA the admin chose: the system's public CAs certify
        // DNS names, and a CA that name constraints limit to DNS names is
        // not limited in URIs (OpenSSL checks each kind of name on its own).
        sip_uri: settings.upstream_ca.is_some(),
    };
    builder.set_verify_callback(SslVerifyMode::PEER, move |verified, ctx| {
        names_the_registrar(verified, ctx, &names)
    });
    apply_versions_and_ciphers(&mut builder, settings)?;
    if let Some(path) = &settings.upstream_ca {
        let (store, _) = trust_store("tls.upstream_ca", path)?;
        builder.set_cert_store(store);
    }
    if let Some(identity) = identity {
        identity.install(&mut builder, UPSTREAM_IDENTITY)?;
    }
    let connector = builder.build();
    check_security_level(connector.context(), settings)?;
    Ok(Upstream {
        connector,
        server_name,
    })
}

/// The name the registrar's certificate must carry, and how.
struct RegistrarNames {
    /// `tls.upstream_server_name`, or the upstream's address.
    domain: String,
    /// Whether a `sip:` URI subjectAltName carries it (under `tls.upstream_ca`).
    sip_uri: bool,
}

/// OpenSSL's verdict on a certificate of the registrar's chain, held to the
/// names RFC 5922 7.1 takes for a SIP domain:
///
/// - A subjectAltName URI `sip:domain` without a user part carries it,
///   when `names.sip_uri`: OpenSSL's hostname mismatch of the registrar's own
///   certificate is then forgiven (and cleared); its chain, signatures and
///   dates are checked as before.
/// - The common name counts only in a certificate with no subjectAltName at
///   all. OpenSSL takes it whenever no DNS subjectAltName is present (one
///   with only a URI, an IP address or an e-mail address too): such a
///   match is refused, with OpenSSL's error for a refusal of the
///   application's ([`verify_reason`] words it).
///
/// An IP address is checked by OpenSSL as an IP subjectAltName only.
fn names_the_registrar(
    verified: bool,
    ctx: &mut X509StoreContextRef,
    names: &RegistrarNames,
) -> bool {
    if ctx.error_depth() != 0 {
        return verified;
    }
    if !verified && ctx.error().as_raw() != X509_V_ERR_HOSTNAME_MISMATCH {
        return false;
    }
    let Some(alt_names) = ctx.current_cert().and_then(|cert| cert.subject_alt_names()) else {
        // No subjectAltName: OpenSSL's verdict (the common name) stands.
        return verified;
    };
    let carried_as_uri = names.sip_uri
        && alt_names
            .iter()
            .filter_map(|name| name.uri())
            .filter_map(sip_domain_of)
            .any(|host| host.eq_ignore_ascii_case(&names.domain));
    let common_name_alone = verified
        && names.domain.parse::<std::net::IpAddr>().is_err()
        && alt_names.iter().all(|name| name.dnsname().is_none());
    if carried_as_uri {
        ctx.set_error(X509VerifyResult::OK);
        true
    } else if common_name_alone {
        ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
        false
    } else {
        verified
    }
}

/// Why the registrar's certificate was refused, in OpenSSL's words except
/// for the refusal of [`names_the_registrar`]'s own.
pub(crate) fn verify_reason(result: X509VerifyResult) -> &'static str {
    if result == X509VerifyResult::APPLICATION_VERIFICATION {
        "hostname mismatch: no DNS subjectAltName (nor, under tls.upstream_ca, sip: URI \
         subjectAltName) carries it, and the common name counts only in a certificate \
         without subjectAltNames (RFC 5922 7.1)"
    } else {
        result.error_string()
    }
}

/// The SIP domain identity a subjectAltName URI carries (RFC 5922 7.1): the
/// host of a `sip:` URI (the scheme in any case) without a user part. None
/// for another scheme (`sips:` too) or a URI with an `@` (it names a user).
fn sip_domain_of(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") || rest.contains('@') {
        return None;
    }
    let host = rest.split([':', ';', '?']).next().unwrap_or_default();
    (!host.is_empty()).then_some(host)
}
