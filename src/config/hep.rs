//! `[hep]`: where sipadmit sends HEPv3 copies of the SIP messages it
//! receives and sends and of its decision records (a Homer collector such
//! as heplify-server), validated into [`HepSettings`]. Off unless
//! `hep.collector` is set. `config/sipadmit.toml` documents every key.

use std::fmt;

use super::endpoint::Endpoint;
use super::raw::RawHep;
use crate::problem::Problem;
use crate::vocabulary::Transport;

/// Default `hep.capture_id`: the capture agent id Homer shows as the node
/// (Kamailio's siptrace uses the same default).
pub const DEFAULT_CAPTURE_ID: u32 = 1;

/// Longest `hep.auth_key` accepted, bytes.
pub const MAX_AUTH_KEY_BYTES: usize = 256;

/// What is mirrored to the collector (`hep.mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirror {
    /// Nothing (export off, even with a collector).
    None,
    /// Decision records only, as HEP logs (type 100) correlated by Call-ID.
    Decisions,
    /// Every SIP message received and sent (type 1) and every decision
    /// record (type 100).
    All,
}

impl Mirror {
    /// Every value, as written in the config.
    pub const ALL: [Self; 3] = [Self::None, Self::Decisions, Self::All];

    /// As written in the config: `none`, `decisions`, `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Decisions => "decisions",
            Self::All => "all",
        }
    }

    /// Whether SIP messages are mirrored.
    pub fn messages(self) -> bool {
        self == Self::All
    }

    /// Whether decision records are mirrored.
    pub fn decisions(self) -> bool {
        self != Self::None
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validated `[hep]` settings. Only a restart applies a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepSettings {
    /// `hep.collector`: the collector, `udp:IP:PORT` or `tcp:IP:PORT`.
    /// Default: none, nothing exported.
    pub collector: Option<Endpoint>,
    /// `hep.capture_id`: the capture agent id in every packet (chunk 12).
    /// Default [`DEFAULT_CAPTURE_ID`].
    pub capture_id: u32,
    /// `hep.auth_key`: the password in every packet (chunk 14), checked by
    /// collectors that are given one. Default: none, no chunk.
    pub auth_key: Option<String>,
    /// `hep.mirror`: what is sent. Default [`Mirror::All`].
    pub mirror: Mirror,
}

impl Default for HepSettings {
    fn default() -> Self {
        Self {
            collector: None,
            capture_id: DEFAULT_CAPTURE_ID,
            auth_key: None,
            mirror: Mirror::All,
        }
    }
}

impl HepSettings {
    /// The collector, when anything is to be sent to it.
    pub fn exporting_to(&self) -> Option<Endpoint> {
        self.collector.filter(|_| self.mirror != Mirror::None)
    }
}

/// Validate `[hep]`: the collector, the auth key and the mirror, in that
/// order; every problem names its key and value.
pub fn validate(raw: &RawHep, problems: &mut Vec<Problem>) -> HepSettings {
    let collector = raw
        .collector
        .as_deref()
        .and_then(|value| match parse_collector(value) {
            Ok(endpoint) => Some(endpoint),
            Err(message) => {
                problems.push(Problem::new("hep.collector", message));
                None
            }
        });
    let auth_key = raw.auth_key.clone().filter(|key| {
        let message = if key.is_empty() {
            "an empty key: leave hep.auth_key out to send none".to_owned()
        } else if key.len() > MAX_AUTH_KEY_BYTES {
            format!(
                "{} bytes is above the maximum {MAX_AUTH_KEY_BYTES} bytes",
                key.len()
            )
        } else if key.chars().any(char::is_control) {
            format!("{key:?} holds a control character")
        } else {
            return true;
        };
        problems.push(Problem::new("hep.auth_key", message));
        false
    });
    let mirror = match raw.mirror.as_deref() {
        None => Mirror::All,
        Some(value) => match Mirror::ALL.into_iter().find(|m| m.as_str() == value) {
            Some(mirror) => mirror,
            None => {
                problems.push(Problem::new(
                    "hep.mirror",
                    format!("{value:?}: expected \"none\", \"decisions\" or \"all\""),
                ));
                Mirror::All
            }
        },
    };
    if mirror != Mirror::None && raw.mirror.is_some() && raw.collector.is_none() {
        problems.push(Problem::new(
            "hep.mirror",
            format!(
                "{:?} has nowhere to go: set hep.collector (udp:IP:PORT or tcp:IP:PORT) too",
                mirror.as_str()
            ),
        ));
    }
    HepSettings {
        collector,
        capture_id: raw.capture_id,
        auth_key,
        mirror,
    }
}

/// The collector `value` names, or why it cannot be one.
fn parse_collector(value: &str) -> Result<Endpoint, String> {
    let endpoint: Endpoint = value.parse().map_err(|_| {
        format!("{value:?} is not udp:IP:PORT or tcp:IP:PORT (IPv6 as udp:[2001:db8::9]:9060)")
    })?;
    if endpoint.transport == Transport::Tls {
        return Err(format!(
            "{value:?}: HEP over TLS is not supported: use udp:IP:PORT or tcp:IP:PORT"
        ));
    }
    if endpoint.addr.ip().is_unspecified() {
        return Err(format!(
            "{value:?}: {} is not an address to send to (name the collector's IP)",
            endpoint.addr.ip()
        ));
    }
    if endpoint.addr.port() == 0 {
        return Err(format!(
            "{value:?}: port 0 is not a port to send to (heplify-server listens on 9060)"
        ));
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        collector: Option<&str>,
        auth_key: Option<&str>,
        mirror: Option<&str>,
    ) -> (HepSettings, Vec<String>) {
        let raw = RawHep {
            collector: collector.map(Into::into),
            capture_id: 2001,
            auth_key: auth_key.map(Into::into),
            mirror: mirror.map(Into::into),
        };
        let mut problems = Vec::new();
        let settings = validate(&raw, &mut problems);
        (settings, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn off_without_a_collector_and_all_by_default_with_one() {
        let (settings, problems) = check(None, None, None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.exporting_to(), None);
        let (settings, problems) = check(Some("udp:192.0.2.9:9060"), Some("s3cret"), None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.mirror, Mirror::All);
        assert_eq!(
            settings.exporting_to().map(|e| e.to_string()).as_deref(),
            Some("udp:192.0.2.9:9060")
        );
        assert_eq!(settings.capture_id, 2001);
        assert_eq!(settings.auth_key.as_deref(), Some("s3cret"));
        let (settings, problems) = check(Some("tcp:[2001:db8::9]:9061"), None, Some("none"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.exporting_to(), None, "mirror none sends nothing");
        let (settings, _) = check(Some("tcp:[2001:db8::9]:9061"), None, Some("decisions"));
        assert!(settings.mirror.decisions() && !settings.mirror.messages());
    }

    #[test]
    fn every_bad_value_is_named_with_its_key() {
        let (_, problems) = check(Some("tls:192.0.2.9:9060"), Some(""), Some("everything"));
        assert_eq!(
            problems,
            [
                "hep.collector: \"tls:192.0.2.9:9060\": HEP over TLS is not supported: use udp:IP:PORT or tcp:IP:PORT",
                "hep.auth_key: an empty key: leave hep.auth_key out to send none",
                "hep.mirror: \"everything\": expected \"none\", \"decisions\" or \"all\"",
            ]
        );
        let (_, problems) = check(Some("udp:0.0.0.0:9060"), Some("a\nb"), None);
        assert_eq!(
            problems,
            [
                "hep.collector: \"udp:0.0.0.0:9060\": 0.0.0.0 is not an address to send to (name the collector's IP)",
                "hep.auth_key: \"a\\nb\" holds a control character",
            ]
        );
        let (_, problems) = check(Some("udp:192.0.2.9:0"), Some(&"k".repeat(257)), None);
        assert_eq!(
            problems,
            [
                "hep.collector: \"udp:192.0.2.9:0\": port 0 is not a port to send to (heplify-server listens on 9060)",
                "hep.auth_key: 257 bytes is above the maximum 256 bytes",
            ]
        );
        let (_, problems) = check(Some("192.0.2.9:9060"), None, None);
        assert_eq!(
            problems,
            ["hep.collector: \"192.0.2.9:9060\" is not udp:IP:PORT or tcp:IP:PORT (IPv6 as udp:[2001:db8::9]:9060)"]
        );
    }

    #[test]
    fn a_mirror_without_a_collector_is_refused_unless_none() {
        let (_, problems) = check(None, None, Some("decisions"));
        assert_eq!(
            problems,
            ["hep.mirror: \"decisions\" has nowhere to go: set hep.collector (udp:IP:PORT or tcp:IP:PORT) too"]
        );
        let (_, problems) = check(None, None, Some("none"));
        assert!(problems.is_empty(), "{problems:?}");
    }
}
