//! TLS test support: a throwaway PKI generated at test time (with the
//! `openssl` crate, nothing read from outside the repository) and test TLS
//! clients that can be configured like Lync-era clients.
//!
//! Self-contained (only `openssl`, `tokio`, `tokio-openssl`), so a test or
//! an example can include it on its own:
//!
//! ```ignore
//! mod common {
//!     pub mod tls;
//! }
//! use common::tls::{Pki, TestClient};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let files = Pki::get().write(dir.path());
//! let client = TestClient::lync_phone_edition(&files.ca);
//! ```
//!
//! The PKI (RSA-2048 unless noted; every name is loopback):
//!
//! | name             | issuer        | for                                                  |
//! |------------------|---------------|------------------------------------------------------|
//! | `ca`             | itself        | the test root                                        |
//! | `intermediate`   | `ca`          | issues the server certificates                       |
//! | `server`         | `intermediate`| `localhost`, `127.0.0.1`, `::1`; file has the chain  |
//! | `server_renewed` | `intermediate`| the same names, new key (certificate reload)         |
//! | `server_ecdsa`   | `intermediate`| the same names, ECDSA P-256 key                      |
//! | `wrong_name`     | `intermediate`| `wrong.example` only                                 |
//! | `sip_domain`     | `intermediate`| the SIP domain `sip:contoso.com` only (a URI; ECDSA), common name `contoso.com` |
//! | `expired`        | `intermediate`| the right names, expired a year ago                  |
//! | `client`         | `ca`          | a client certificate (`alice@contoso.com`)           |
//! | `other_ca`       | itself        | a second root nobody trusts                          |
//! | `other_client`   | `other_ca`    | a client certificate from the wrong root             |
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{self, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509Ref, X509};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// One certificate and its key, in memory.
pub struct Issued {
    /// Subject common name.
    pub common_name: String,
    /// The certificate.
    pub certificate: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

impl Issued {
    /// The certificate as PEM.
    pub fn certificate_pem(&self) -> Vec<u8> {
        self.certificate.to_pem().expect("PEM-encode a certificate")
    }

    /// The private key as unencrypted PKCS#8 PEM.
    pub fn key_pem(&self) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8()
            .expect("PEM-encode a private key")
    }
}

/// The whole test PKI (see the module documentation).
pub struct Pki {
    /// Test root.
    pub ca: Issued,
    /// Issues the server certificates.
    pub intermediate: Issued,
    /// Server certificate for localhost / 127.0.0.1 / ::1.
    pub server: Issued,
    /// Same names, new key and common name.
    pub server_renewed: Issued,
    /// Same names, ECDSA P-256.
    pub server_ecdsa: Issued,
    /// Only `wrong.example`.
    pub wrong_name: Issued,
    /// Only the URI `sip:contoso.com` (RFC 5922), ECDSA P-256.
    pub sip_domain: Issued,
    /// The right names, expired.
    pub expired: Issued,
    /// Client certificate from `ca`.
    pub client: Issued,
    /// A second, untrusted root.
    pub other_ca: Issued,
    /// Client certificate from `other_ca`.
    pub other_client: Issued,
}

/// Paths of the PKI written to a directory by [`Pki::write`]. Server
/// certificate files hold the chain: the certificate, then `intermediate`.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.pem`: the test root.
    pub ca: PathBuf,
    /// `other-ca.pem`: the untrusted root.
    pub other_ca: PathBuf,
    /// `server.pem` (chain) / `server.key`.
    pub server: (PathBuf, PathBuf),
    /// `server-renewed.pem` (chain) / `server-renewed.key`.
    pub server_renewed: (PathBuf, PathBuf),
    /// `server-ecdsa.pem` (chain) / `server-ecdsa.key`.
    pub server_ecdsa: (PathBuf, PathBuf),
    /// `wrong-name.pem` (chain) / `wrong-name.key`.
    pub wrong_name: (PathBuf, PathBuf),
    /// `sip-domain.pem` (chain) / `sip-domain.key`.
    pub sip_domain: (PathBuf, PathBuf),
    /// `expired.pem` (chain) / `expired.key`.
    pub expired: (PathBuf, PathBuf),
    /// `client.pem` / `client.key`.
    pub client: (PathBuf, PathBuf),
    /// `other-client.pem` / `other-client.key`.
    pub other_client: (PathBuf, PathBuf),
}

/// What a certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Ca,
    Server,
    Client,
}

/// The loopback names every server certificate carries.
const SERVER_NAMES: Names<'static> = Names {
    dns: &["localhost"],
    ips: &[
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ],
    uris: &[],
};

struct Names<'a> {
    dns: &'a [&'a str],
    ips: &'a [IpAddr],
    uris: &'a [&'a str],
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("RSA PKey")
}

fn ecdsa_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("EC PKey")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Issue a certificate for `key`, signed by `issuer` (self-signed when `None`).
/// `valid` is (not before, not after) in seconds relative to now.
fn issue(
    common_name: &str,
    key: PKey<Private>,
    issuer: Option<&Issued>,
    role: Role,
    names: &Names<'_>,
    valid: (i64, i64),
) -> Issued {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "sipadmit tests")
        .unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |i| i.certificate.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    let now = unix_now();
    b.set_not_before(&Asn1Time::from_unix(now + valid.0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + valid.1).unwrap())
        .unwrap();
    match role {
        Role::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        }
        Role::Server | Role::Client => {
            b.append_extension(BasicConstraints::new().build().unwrap())
                .unwrap();
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()
                    .unwrap(),
            )
            .unwrap();
            let mut eku = ExtendedKeyUsage::new();
            match role {
                Role::Server => eku.server_auth(),
                _ => eku.client_auth(),
            };
            b.append_extension(eku.build().unwrap()).unwrap();
        }
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| i.certificate.as_ref()), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some(issuer) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&issuer.certificate), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !names.dns.is_empty() || !names.ips.is_empty() || !names.uris.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for dns in names.dns {
            san.dns(dns);
        }
        for ip in names.ips {
            san.ip(&ip.to_string());
        }
        for uri in names.uris {
            san.uri(uri);
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|i| i.certificate.as_ref()), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    let signer = issuer.map_or(&key, |i| &i.key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    Issued {
        common_name: common_name.to_owned(),
        certificate: b.build(),
        key,
    }
}

const DAY_SECS: i64 = 86_400;
const NO_NAMES: Names<'static> = Names {
    dns: &[],
    ips: &[],
    uris: &[],
};

impl Pki {
    /// The PKI of this test process, generated on first use (about a second
    /// of RSA key generation).
    pub fn get() -> &'static Self {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Self::generate)
    }

    fn generate() -> Self {
        let valid = (-DAY_SECS, 30 * DAY_SECS);
        let ca = issue(
            "sipadmit test CA",
            rsa_key(),
            None,
            Role::Ca,
            &NO_NAMES,
            valid,
        );
        let intermediate = issue(
            "sipadmit test intermediate CA",
            rsa_key(),
            Some(&ca),
            Role::Ca,
            &NO_NAMES,
            valid,
        );
        let server_cert = |cn: &str, key, names: &Names<'_>, valid| {
            issue(cn, key, Some(&intermediate), Role::Server, names, valid)
        };
        let server = server_cert("sipadmit test server", rsa_key(), &SERVER_NAMES, valid);
        let server_renewed = server_cert(
            "sipadmit test server (renewed)",
            rsa_key(),
            &SERVER_NAMES,
            valid,
        );
        let server_ecdsa = server_cert(
            "sipadmit test server (ECDSA)",
            ecdsa_key(),
            &SERVER_NAMES,
            valid,
        );
        let wrong_name = server_cert(
            "wrong.example",
            rsa_key(),
            &Names {
                dns: &["wrong.example"],
                ips: &[],
                uris: &[],
            },
            valid,
        );
        // Its common name is the domain too: under the system's roots, where
        // the URI does not count, the common name must not either (RFC 5922
        // 7.1: not in a certificate with subjectAltNames).
        let sip_domain = server_cert(
            "contoso.com",
            ecdsa_key(),
            &Names {
                dns: &[],
                ips: &[],
                uris: &["sip:contoso.com"],
            },
            valid,
        );
        let expired = server_cert(
            "sipadmit test server (expired)",
            rsa_key(),
            &SERVER_NAMES,
            (-400 * DAY_SECS, -365 * DAY_SECS),
        );
        let client = issue(
            "alice@contoso.com",
            rsa_key(),
            Some(&ca),
            Role::Client,
            &NO_NAMES,
            valid,
        );
        let other_ca = issue(
            "sipadmit untrusted CA",
            rsa_key(),
            None,
            Role::Ca,
            &NO_NAMES,
            valid,
        );
        let other_client = issue(
            "mallory@contoso.com",
            rsa_key(),
            Some(&other_ca),
            Role::Client,
            &NO_NAMES,
            valid,
        );
        Self {
            ca,
            intermediate,
            server,
            server_renewed,
            server_ecdsa,
            wrong_name,
            sip_domain,
            expired,
            client,
            other_ca,
            other_client,
        }
    }

    /// Write every certificate and key to `dir` (see [`PkiFiles`]).
    pub fn write(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        let chain = |issued: &Issued| {
            let mut pem = issued.certificate_pem();
            pem.extend(self.intermediate.certificate_pem());
            pem
        };
        let server_pair = |name: &str, issued: &Issued| {
            (
                write(&format!("{name}.pem"), &chain(issued)),
                write(&format!("{name}.key"), &issued.key_pem()),
            )
        };
        let client_pair = |name: &str, issued: &Issued| {
            (
                write(&format!("{name}.pem"), &issued.certificate_pem()),
                write(&format!("{name}.key"), &issued.key_pem()),
            )
        };
        PkiFiles {
            dir: dir.to_owned(),
            ca: write("ca.pem", &self.ca.certificate_pem()),
            other_ca: write("other-ca.pem", &self.other_ca.certificate_pem()),
            server: server_pair("server", &self.server),
            server_renewed: server_pair("server-renewed", &self.server_renewed),
            server_ecdsa: server_pair("server-ecdsa", &self.server_ecdsa),
            wrong_name: server_pair("wrong-name", &self.wrong_name),
            sip_domain: server_pair("sip-domain", &self.sip_domain),
            expired: server_pair("expired", &self.expired),
            client: client_pair("client", &self.client),
            other_client: client_pair("other-client", &self.other_client),
        }
    }
}

/// The subject common name of a certificate.
pub fn common_name(certificate: &X509Ref) -> String {
    certificate
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

// === test clients ===

/// How long a test client waits for its handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS client for tests, configured like a given kind of SIP client.
/// It verifies the server against `ca` and the IP it connects to.
#[derive(Clone, Debug)]
pub struct TestClient {
    /// Oldest version offered.
    pub min_version: SslVersion,
    /// Newest version offered (`None`: the newest OpenSSL speaks).
    pub max_version: Option<SslVersion>,
    /// OpenSSL cipher list offered for TLS 1.2 and below.
    pub ciphers: String,
    /// Roots the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate and key, if any.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TestClient {
    /// A current client: TLS 1.2 and 1.3, OpenSSL's default ciphers.
    pub fn modern(ca: &Path) -> Self {
        Self {
            min_version: SslVersion::TLS1_2,
            max_version: None,
            ciphers: "DEFAULT".into(),
            ca: ca.to_owned(),
            identity: None,
        }
    }

    /// Like Lync Phone Edition: TLS 1.0 only, `AES128-SHA` (static RSA, CBC)
    /// only. (`@SECLEVEL=0` so that the client itself may speak TLS 1.0 with
    /// OpenSSL 3; the server decides.)
    pub fn lync_phone_edition(ca: &Path) -> Self {
        Self {
            min_version: SslVersion::TLS1,
            max_version: Some(SslVersion::TLS1),
            ciphers: "AES128-SHA:@SECLEVEL=0".into(),
            ca: ca.to_owned(),
            identity: None,
        }
    }

    /// Like Windows 7 / Server 2008 R2 SChannel with an RSA certificate:
    /// TLS 1.2 at most, static-RSA GCM and CBC suites only (no ECDHE).
    pub fn windows7_schannel(ca: &Path) -> Self {
        Self {
            min_version: SslVersion::TLS1_2,
            max_version: Some(SslVersion::TLS1_2),
            ciphers: "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES128-SHA:@SECLEVEL=0"
                .into(),
            ca: ca.to_owned(),
            identity: None,
        }
    }

    /// Present this client certificate when asked.
    pub fn with_certificate(mut self, identity: &(PathBuf, PathBuf)) -> Self {
        self.identity = Some(identity.clone());
        self
    }

    /// Connect over TCP to `addr` and run the handshake (bounded by
    /// [`CLIENT_HANDSHAKE_TIMEOUT`]).
    pub async fn connect(&self, addr: SocketAddr) -> Result<SslStream<TcpStream>, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        b.set_min_proto_version(Some(self.min_version))
            .map_err(|e| e.to_string())?;
        b.set_max_proto_version(self.max_version)
            .map_err(|e| e.to_string())?;
        b.set_cipher_list(&self.ciphers)
            .map_err(|e| e.to_string())?;
        b.set_ca_file(&self.ca).map_err(|e| e.to_string())?;
        if let Some((cert, key)) = &self.identity {
            b.set_certificate_chain_file(cert)
                .map_err(|e| e.to_string())?;
            b.set_private_key_file(key, ssl::SslFiletype::PEM)
                .map_err(|e| e.to_string())?;
        }
        b.set_verify(SslVerifyMode::PEER);
        let session = b
            .build()
            .configure()
            .and_then(|c| c.into_ssl(&addr.ip().to_string()))
            .map_err(|e| e.to_string())?;
        let mut tls = SslStream::new(session, tcp).map_err(|e| e.to_string())?;
        match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, Pin::new(&mut tls).connect()).await {
            Err(_) => Err("client handshake timed out".into()),
            Ok(Err(e)) => Err(format!(
                "client handshake: {e} (verify: {})",
                tls.ssl().verify_result().error_string()
            )),
            Ok(Ok(())) => Ok(tls),
        }
    }
}
