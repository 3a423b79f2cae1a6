//! `[tls]`: the certificates, protocol versions and ciphers of `tls:`
//! listeners and of a `tls:` upstream, validated into [`TlsSettings`].
//!
//! Validation reads every file the section names (PEM parse, key matches
//! certificate) and asks OpenSSL whether it accepts the cipher list, through
//! [`super::tls_contexts::check`], so `check-config` finds what `run`
//! would trip over. `config/sipadmit.toml` documents every key.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::bounds::{Bounds, Unit};
use super::raw::RawTls;
use crate::problem::Problem;

/// Default `tls.ciphers`: ECDHE key exchange with AEAD ciphers only (the
/// ECDHE part of Mozilla's "intermediate" list). It applies to TLS 1.2 and
/// below; TLS 1.3 always uses OpenSSL's TLS 1.3 suites.
pub const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// Default `tls.handshake_timeout_secs`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Largest `tls.handshake_timeout_secs` accepted.
pub const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 300;

/// A TLS protocol version, as written in `tls.min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// TLS 1.0 (RFC 2246): Lync 2010, Lync Phone Edition, Lync 2013 mobile.
    Tls1_0,
    /// TLS 1.1 (RFC 4346).
    Tls1_1,
    /// TLS 1.2 (RFC 5246): the default minimum.
    Tls1_2,
    /// TLS 1.3 (RFC 8446).
    Tls1_3,
}

impl TlsVersion {
    /// Every version, oldest first.
    pub const ALL: [Self; 4] = [Self::Tls1_0, Self::Tls1_1, Self::Tls1_2, Self::Tls1_3];

    /// As written in the config: `"1.0"` .. `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls1_0 => "1.0",
            Self::Tls1_1 => "1.1",
            Self::Tls1_2 => "1.2",
            Self::Tls1_3 => "1.3",
        }
    }

    /// Whether this is TLS 1.0 or 1.1, which OpenSSL 3 only speaks at
    /// security level 0 (their handshakes sign with SHA-1 / MD5+SHA-1).
    pub fn is_legacy(self) -> bool {
        self < Self::Tls1_2
    }
}

impl FromStr for TlsVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!("unknown TLS version {s:?} (\"1.0\", \"1.1\", \"1.2\" or \"1.3\")")
            })
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS {}", self.as_str())
    }
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate first, then the intermediates that chain it to a root.
    pub certificate: PathBuf,
    /// The private key of the first certificate (unencrypted PEM).
    pub private_key: PathBuf,
}

/// Validated `[tls]` settings. File paths are resolved against the config
/// file's directory; the files are read again by every
/// [`crate::transport::tls::ServerTls::reload`], so new certificates take
/// effect without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `tls.certificate` + `tls.private_key`: what `tls:` listeners present.
    /// Required when a `tls:` listener is configured (see
    /// [`TlsSettings::listener_problems`]). Default: none.
    pub identity: Option<Identity>,
    /// `tls.client_ca`: when set, listeners require a client certificate
    /// that chains to one of these roots (mutual TLS). Default: none.
    pub client_ca: Option<PathBuf>,
    /// `tls.min_version`: the oldest TLS version spoken, both towards
    /// clients and towards the upstream. Default TLS 1.2.
    pub min_version: TlsVersion,
    /// `tls.ciphers`: the OpenSSL cipher list for TLS 1.2 and below, both
    /// directions. Default [`DEFAULT_CIPHERS`].
    pub ciphers: String,
    /// `tls.upstream_ca`: roots the registrar's certificate must chain to.
    /// Default: none, the system's roots.
    pub upstream_ca: Option<PathBuf>,
    /// `tls.upstream_server_name`: the name (or IP) the registrar's
    /// certificate must carry, also sent as SNI when it is a name. Default:
    /// none, the upstream's IP address.
    pub upstream_server_name: Option<String>,
    /// `tls.upstream_certificate` + `tls.upstream_private_key`: the client
    /// certificate presented to the registrar. Default: none.
    pub upstream_identity: Option<Identity>,
    /// `tls.handshake_timeout_secs`: a TLS handshake not finished within
    /// this time closes its connection. Default 10 s.
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// The `[tls]` keys a reload applies whose value differs in `new`
    /// (`handshake_timeout_secs` needs a restart: not listed). The files
    /// named are read again on every reload whether or not their paths
    /// changed.
    pub fn changed_keys(&self, new: &Self) -> Vec<&'static str> {
        fn cert(i: &Identity) -> &PathBuf {
            &i.certificate
        }
        fn key(i: &Identity) -> &PathBuf {
            &i.private_key
        }
        let path = |i: &Option<Identity>, f: fn(&Identity) -> &PathBuf| i.as_ref().map(f).cloned();
        [
            (
                "tls.certificate",
                path(&self.identity, cert) != path(&new.identity, cert),
            ),
            (
                "tls.private_key",
                path(&self.identity, key) != path(&new.identity, key),
            ),
            ("tls.client_ca", self.client_ca != new.client_ca),
            ("tls.min_version", self.min_version != new.min_version),
            ("tls.ciphers", self.ciphers != new.ciphers),
            ("tls.upstream_ca", self.upstream_ca != new.upstream_ca),
            (
                "tls.upstream_server_name",
                self.upstream_server_name != new.upstream_server_name,
            ),
            (
                "tls.upstream_certificate",
                path(&self.upstream_identity, cert) != path(&new.upstream_identity, cert),
            ),
            (
                "tls.upstream_private_key",
                path(&self.upstream_identity, key) != path(&new.upstream_identity, key),
            ),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            identity: None,
            client_ca: None,
            min_version: TlsVersion::Tls1_2,
            ciphers: DEFAULT_CIPHERS.to_owned(),
            upstream_ca: None,
            upstream_server_name: None,
            upstream_identity: None,
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

impl TlsSettings {
    /// What is missing for a `tls:` listener: `tls_listener` names the key
    /// of the first `tls:` listener (`proxy.listen[2]`, `--listen[0]`), or
    /// is `None` when there is no `tls:` listener (then nothing is missing).
    pub fn listener_problems(&self, tls_listener: Option<&str>) -> Vec<Problem> {
        match (tls_listener, &self.identity) {
            (Some(listener), None) => ["tls.certificate", "tls.private_key"]
                .into_iter()
                .map(|key| {
                    Problem::new(
                        key,
                        format!("required: {listener} is a tls: listener (PEM file, relative to the config file)"),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The name the registrar's certificate must carry: `upstream_server_name`,
    /// or else the upstream's IP address.
    pub fn upstream_name(&self, upstream: IpAddr) -> String {
        self.upstream_server_name
            .clone()
            .unwrap_or_else(|| upstream.to_string())
    }
}

/// Validate `[tls]`; every problem is added to `problems` with its key path.
/// Relative paths are taken from `base` (the config file's directory).
pub(super) fn validate(raw: &RawTls, base: &Path, problems: &mut Vec<Problem>) -> TlsSettings {
    let start = problems.len();
    let server = identity(
        base,
        ("tls.certificate", &raw.certificate),
        ("tls.private_key", &raw.private_key),
        problems,
    );
    let upstream = identity(
        base,
        ("tls.upstream_certificate", &raw.upstream_certificate),
        ("tls.upstream_private_key", &raw.upstream_private_key),
        problems,
    );
    let min_version = raw.min_version.parse().unwrap_or_else(|message| {
        problems.push(Problem::new("tls.min_version", message));
        TlsVersion::Tls1_2
    });
    check_values(raw, problems);
    let settings = TlsSettings {
        identity: server,
        client_ca: resolve(base, &raw.client_ca),
        min_version,
        ciphers: raw.ciphers.clone(),
        upstream_ca: resolve(base, &raw.upstream_ca),
        upstream_server_name: raw.upstream_server_name.clone(),
        upstream_identity: upstream,
        handshake_timeout: Duration::from_secs(raw.handshake_timeout_secs),
    };
    check_files_and_ciphers(&settings, start, problems);
    settings
}

/// A path from the config, taken from `base` when relative.
fn resolve(base: &Path, rel: &Option<String>) -> Option<PathBuf> {
    rel.as_ref().map(|p| base.join(p))
}

/// A certificate and its private key, given as `(key, value)` pairs: both
/// or neither must be set (the one missing is reported under its key).
fn identity(
    base: &Path,
    (certificate_key, certificate): (&str, &Option<String>),
    (key_key, private_key): (&str, &Option<String>),
    problems: &mut Vec<Problem>,
) -> Option<Identity> {
    match (resolve(base, certificate), resolve(base, private_key)) {
        (Some(certificate), Some(private_key)) => Some(Identity {
            certificate,
            private_key,
        }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(Problem::new(
                key_key,
                format!("missing: {certificate_key} is set, and its private key goes here"),
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::new(
                certificate_key,
                format!("missing: {key_key} is set, and the certificate it belongs to goes here"),
            ));
            None
        }
    }
}

/// The values that need no file: a cipher list that is not empty, a
/// certificate name that can be one, a handshake timeout in range.
fn check_values(raw: &RawTls, problems: &mut Vec<Problem>) {
    if raw.ciphers.trim().is_empty() {
        problems.push(Problem::new(
            "tls.ciphers",
            format!("empty; leave the key out for the default {DEFAULT_CIPHERS:?}"),
        ));
    }
    if let Some(name) = &raw.upstream_server_name {
        if let Err(message) = check_server_name(name) {
            problems.push(Problem::new("tls.upstream_server_name", message));
        }
    }
    let timeout = raw.handshake_timeout_secs;
    let bounds = Bounds::new(1, MAX_HANDSHAKE_TIMEOUT_SECS, Unit::Seconds)
        .defaulting_to(RawTls::default().handshake_timeout_secs);
    if let Some(message) = bounds.check(timeout) {
        problems.push(Problem::new("tls.handshake_timeout_secs", message));
    }
}

/// The files and the cipher list, as OpenSSL sees them; a key whose value
/// is already refused since `start` in `problems` (an empty cipher list) is
/// not reported twice.
fn check_files_and_ciphers(settings: &TlsSettings, start: usize, problems: &mut Vec<Problem>) {
    for error in super::tls_contexts::check(settings) {
        let reported = problems[start..].iter().any(|p| p.key == error.key());
        if !reported {
            problems.push(error.to_problem());
        }
    }
}

/// Whether `name` can be a certificate name: an IP address, or a DNS name
/// (letters, digits, `-`, dots between labels).
fn check_server_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is neither an IP address nor a DNS name (e.g. pool01.contoso.com)"
        ))
    }
}

#[cfg(test)]
mod tests {

    /// The reload line names the `[tls]` keys it applies (trial 17: a
    /// change of `min_version` and `ciphers` was logged as `changed=nothing`).
    #[test]
    fn changed_tls_keys_are_named() {
        let running = TlsSettings::default();
        assert!(running.changed_keys(&running.clone()).is_empty());
        let new = TlsSettings {
            min_version: TlsVersion::Tls1_0,
            ciphers: "DEFAULT:@SECLEVEL=0".into(),
            identity: Some(Identity {
                certificate: "a.pem".into(),
                private_key: "a.key".into(),
            }),
            handshake_timeout: Duration::from_secs(3),
            ..running.clone()
        };
        assert_eq!(
            running.changed_keys(&new),
            [
                "tls.certificate",
                "tls.private_key",
                "tls.min_version",
                "tls.ciphers"
            ]
        );
    }

    use super::*;

    #[test]
    fn versions_parse_as_written_and_order_oldest_first() {
        for v in TlsVersion::ALL {
            assert_eq!(v.as_str().parse::<TlsVersion>(), Ok(v));
        }
        assert!(TlsVersion::Tls1_0 < TlsVersion::Tls1_3);
        assert!(TlsVersion::Tls1_1.is_legacy() && !TlsVersion::Tls1_2.is_legacy());
        let err = "1.4".parse::<TlsVersion>().unwrap_err();
        assert!(err.contains("\"1.4\""), "{err}");
        assert!("TLSv1.2".parse::<TlsVersion>().is_err());
    }

    #[test]
    fn a_tls_listener_needs_certificate_and_key() {
        let none = TlsSettings::default();
        assert!(none.listener_problems(None).is_empty());
        let problems = none.listener_problems(Some("proxy.listen[2]"));
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["tls.certificate", "tls.private_key"]);
        assert!(
            problems[0].message.contains("proxy.listen[2]"),
            "{}",
            problems[0]
        );
        let with = TlsSettings {
            identity: Some(Identity {
                certificate: "c.pem".into(),
                private_key: "k.pem".into(),
            }),
            ..TlsSettings::default()
        };
        assert!(with.listener_problems(Some("--listen[0]")).is_empty());
    }

    #[test]
    fn the_upstream_name_defaults_to_its_address() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(TlsSettings::default().upstream_name(ip), "192.0.2.10");
        let named = TlsSettings {
            upstream_server_name: Some("pool01.contoso.com".into()),
            ..TlsSettings::default()
        };
        assert_eq!(named.upstream_name(ip), "pool01.contoso.com");
    }

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        for ok in [
            "pool01.contoso.com",
            "localhost",
            "::1",
            "192.0.2.1",
            "a-b.c",
        ] {
            assert_eq!(check_server_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "pool 01",
            "-x.com",
            "x..com",
            "*.contoso.com",
            "sip:pool",
        ] {
            assert!(check_server_name(bad).is_err(), "{bad}");
        }
    }
}
