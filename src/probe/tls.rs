//! The TLS client context of a `tls:` probe (`--ca`, `--cert`, `--key`,
//! `--tls-name`): its files are read and checked before anything is sent,
//! so a file that cannot be used is reported as that file's fault, by
//! option and path, never as a failure of the target.

use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

/// TLS settings of a `tls:` probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM roots the server's certificate must chain to (`--ca`); `None`:
    /// the system's roots.
    pub ca: Option<PathBuf>,
    /// The name the certificate must carry (`--tls-name`, also sent as
    /// SNI); `None`: the target's IP address.
    pub server_name: Option<String>,
    /// PEM certificate chain and key presented to a listener that asks for
    /// one (`--cert`, `--key`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why the TLS client context cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// A `--ca`, `--cert` or `--key` file cannot be used.
    #[error("{option} {}: {reason}", path.display())]
    File {
        /// `--ca`, `--cert` or `--key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// OpenSSL could not make a client context at all.
    #[error("cannot set up TLS: {0}")]
    Context(String),
}

/// A client context ready to connect: peer verification on, `--ca` as the
/// only roots when given, `--cert`/`--key` presented when given.
#[derive(Clone)]
pub struct TlsClient {
    pub(super) connector: SslConnector,
    pub(super) server_name: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads and checks the files `options` name (no network I/O).
    pub fn new(options: &TlsOptions) -> Result<Self, TlsSetupError> {
        let context = |e: ErrorStack| TlsSetupError::Context(reasons(&e));
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(context)?;
        if let Some(path) = &options.ca {
            let mut store = X509StoreBuilder::new().map_err(context)?;
            for certificate in certificates("--ca", path)? {
                store
                    .add_cert(certificate)
                    .map_err(|e| file_error("--ca", path, reasons(&e)))?;
            }
            builder.set_cert_store(store.build());
        }
        if let Some((certificate_path, key_path)) = &options.identity {
            identity(&mut builder, certificate_path, key_path)?;
        }
        Ok(Self {
            connector: builder.build(),
            server_name: options.server_name.clone(),
        })
    }
}

/// `--cert` and `--key` into `builder`, the key checked against the
/// certificate (the first of `--cert`; the others are its chain).
fn identity(
    builder: &mut SslConnectorBuilder,
    certificate_path: &Path,
    key_path: &Path,
) -> Result<(), TlsSetupError> {
    let cert_error = |e: ErrorStack| file_error("--cert", certificate_path, reasons(&e));
    let key_error = |e: ErrorStack| file_error("--key", key_path, reasons(&e));
    let mut chain = certificates("--cert", certificate_path)?.into_iter();
    let key = private_key(key_path)?;
    if let Some(leaf) = chain.next() {
        let matches = leaf.public_key().map_err(cert_error)?.public_eq(&key);
        if !matches {
            return Err(file_error(
                "--key",
                key_path,
                format!(
                    "not the key of the certificate in --cert {}",
                    certificate_path.display()
                ),
            ));
        }
        builder.set_certificate(&leaf).map_err(cert_error)?;
    }
    for extra in chain {
        builder.add_extra_chain_cert(extra).map_err(cert_error)?;
    }
    builder.set_private_key(&key).map_err(key_error)?;
    builder.check_private_key().map_err(key_error)
}

fn file_error(option: &'static str, path: &Path, reason: String) -> TlsSetupError {
    TlsSetupError::File {
        option,
        path: path.to_owned(),
        reason,
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|e| file_error(option, path, format!("cannot read it: {e}")))
}

/// The PEM certificates of a file (at least one).
fn certificates(option: &'static str, path: &Path) -> Result<Vec<X509>, TlsSetupError> {
    let pem = read(option, path)?;
    match X509::stack_from_pem(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(file_error(
            option,
            path,
            format!("no PEM certificate in it ({})", what_it_holds(&pem)),
        )),
        Err(e) => Err(file_error(
            option,
            path,
            format!("a PEM certificate in it cannot be read ({})", reasons(&e)),
        )),
    }
}

/// The header of a key encrypted in the traditional (pre-PKCS #8) form.
const PROC_TYPE: &[u8] = b"Proc-Type: 4,ENCRYPTED";

/// The PEM private key of `--key`, never asking for a passphrase.
fn private_key(path: &Path) -> Result<PKey<Private>, TlsSetupError> {
    let pem = read("--key", path)?;
    // Without this callback OpenSSL would prompt on the terminal for the
    // passphrase of an encrypted key.
    PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|_| {
        let encrypted = pem_labels(&pem).any(|l| l.contains("ENCRYPTED"))
            || pem.windows(PROC_TYPE.len()).any(|w| w == PROC_TYPE);
        let reason = if encrypted {
            "the private key in it is encrypted (a passphrase-protected key cannot be used)".into()
        } else {
            format!("no PEM private key in it ({})", what_it_holds(&pem))
        };
        file_error("--key", path, reason)
    })
}

/// The labels of a file's PEM blocks (`CERTIFICATE`, `PRIVATE KEY`, ...).
fn pem_labels(pem: &[u8]) -> impl Iterator<Item = &str> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    pem.windows(BEGIN.len())
        .enumerate()
        .filter(|(_, w)| *w == BEGIN)
        .filter_map(move |(at, _)| {
            let rest = &pem[at + BEGIN.len()..];
            let end = rest.windows(5).position(|w| w == b"-----")?;
            std::str::from_utf8(&rest[..end]).ok()
        })
}

/// What a file that lacks the PEM block it should hold holds instead.
fn what_it_holds(pem: &[u8]) -> String {
    let labels: Vec<&str> = pem_labels(pem).collect();
    if pem.is_empty() {
        "the file is empty".into()
    } else if labels.is_empty() {
        "it is not a PEM file".into()
    } else {
        format!("it holds: {}", labels.join(", "))
    }
}

/// OpenSSL's error stack as its reasons only (`bad base64 decode`), without
/// the codes, functions and source files.
pub(super) fn reasons(stack: &ErrorStack) -> String {
    let mut reasons: Vec<&str> = Vec::new();
    for reason in stack
        .errors()
        .iter()
        .filter_map(openssl::error::Error::reason)
    {
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }
    if reasons.is_empty() {
        "unknown OpenSSL error".into()
    } else {
        reasons.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    fn self_signed() -> (Vec<u8>, Vec<u8>) {
        crate::test_certificates::self_signed("probe-test")
    }

    fn error(options: &TlsOptions) -> String {
        TlsClient::new(options).unwrap_err().to_string()
    }

    #[test]
    fn each_bad_file_is_named_by_its_option_and_path_with_a_plain_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        std::fs::write(path("cert.pem"), &cert).unwrap();
        std::fs::write(path("key.pem"), &key).unwrap();
        std::fs::write(path("other.key"), &other_key).unwrap();
        std::fs::write(path("junk.pem"), "not a pem\n").unwrap();
        let ca = |name: &str| TlsOptions {
            ca: Some(path(name)),
            ..TlsOptions::default()
        };
        let missing = path("missing.pem");
        assert_eq!(
            error(&ca("missing.pem")),
            format!(
                "--ca {}: cannot read it: No such file or directory (os error 2)",
                missing.display()
            )
        );
        assert_eq!(
            error(&ca("junk.pem")),
            format!(
                "--ca {}: no PEM certificate in it (it is not a PEM file)",
                path("junk.pem").display()
            )
        );
        assert_eq!(
            error(&ca("key.pem")),
            format!(
                "--ca {}: no PEM certificate in it (it holds: PRIVATE KEY)",
                path("key.pem").display()
            )
        );
        TlsClient::new(&ca("cert.pem")).unwrap();

        let identity = |cert: &str, key: &str| TlsOptions {
            identity: Some((path(cert), path(key))),
            ..TlsOptions::default()
        };
        assert_eq!(
            error(&identity("junk.pem", "key.pem")),
            format!(
                "--cert {}: no PEM certificate in it (it is not a PEM file)",
                path("junk.pem").display()
            )
        );
        assert_eq!(
            error(&identity("cert.pem", "cert.pem")),
            format!(
                "--key {}: no PEM private key in it (it holds: CERTIFICATE)",
                path("cert.pem").display()
            )
        );
        assert_eq!(
            error(&identity("cert.pem", "other.key")),
            format!(
                "--key {}: not the key of the certificate in --cert {}",
                path("other.key").display(),
                path("cert.pem").display()
            )
        );
        TlsClient::new(&identity("cert.pem", "key.pem")).unwrap();
    }

    #[test]
    fn an_encrypted_key_is_named_as_such_never_prompted_for() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let cipher = openssl::symm::Cipher::aes_256_cbc();
        let pkcs8 = PKey::from_ec_key(ec.clone())
            .unwrap()
            .private_key_to_pem_pkcs8_passphrase(cipher, b"secret")
            .unwrap();
        // The traditional form: "EC PRIVATE KEY" with a Proc-Type header.
        let traditional = ec.private_key_to_pem_passphrase(cipher, b"secret").unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        for (name, pem) in [("pkcs8.key", pkcs8), ("traditional.key", traditional)] {
            let key = dir.path().join(name);
            std::fs::write(&key, pem).unwrap();
            assert_eq!(
                error(&TlsOptions {
                    identity: Some((dir.path().join("cert.pem"), key.clone())),
                    ..TlsOptions::default()
                }),
                format!(
                    "--key {}: the private key in it is encrypted (a passphrase-protected key \
                     cannot be used)",
                    key.display()
                )
            );
        }
    }

    #[test]
    fn a_broken_pem_certificate_gives_openssls_reason_not_its_error_stack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let message = error(&TlsOptions {
            ca: Some(path.clone()),
            ..TlsOptions::default()
        });
        let prefix = format!(
            "--ca {}: a PEM certificate in it cannot be read (",
            path.display()
        );
        assert!(message.starts_with(&prefix), "{message}");
        assert!(!message.contains("error:"), "{message}");
        assert!(!message.contains(".c:"), "{message}");
    }
}
