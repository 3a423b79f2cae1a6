//! `[hep]`: where sipadmit sends HEPv3 copies of the SIP messages it
//! receives and sends and of its decision records (a Homer collector such
//! as heplify-server), validated into [`HepSettings`]. Off unless
//! `hep.collector` is set. `config/sipadmit.toml` documents every key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

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

/// Validate `[hep]`: the collector (which must be neither one of
/// sipadmit's SIP listeners `listen` nor the `upstream` registrar), the
/// auth key and the mirror, in that order; every problem names its key and
/// value.
pub fn validate(
    raw: &RawHep,
    listen: &[Endpoint],
    upstream: Option<&Endpoint>,
    problems: &mut Vec<Problem>,
) -> HepSettings {
    let collector = raw.collector.as_deref().and_then(|value| {
        let checked = parse_collector(value)
            .and_then(|endpoint| collector_elsewhere(value, endpoint, listen, upstream));
        match checked {
            Ok(endpoint) => Some(endpoint),
            Err(message) => {
                problems.push(Problem::new("hep.collector", message));
                None
            }
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
    if let Some(kind) = not_unicast(endpoint.addr.ip()) {
        return Err(format!(
            "{value:?}: {} is a {kind} address: a HEP collector is one host, \
             name its unicast IP",
            endpoint.addr.ip()
        ));
    }
    Ok(endpoint)
}

/// What kind of address `ip` is when it is not one host's: `"broadcast"`
/// (the limited broadcast 255.255.255.255; a directed broadcast cannot be
/// told from a host's address without the network's mask) or
/// `"multicast"`.
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_multicast() {
        Some("multicast")
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("broadcast")
    } else {
        None
    }
}

/// The collector, unless it is sipadmit itself or its registrar: one of
/// the SIP `listen`ers of its kind of socket (a `tcp:` collector reaches a
/// `tls:` listener too; the rule that refuses such an
/// upstream: the same port, and the same address or a `0.0.0.0`/`[::]`
/// listener and a loopback destination), or the `upstream`'s address.
/// Either way the copies would not reach a collector; sent to a listener
/// they would come back as SIP messages to be mirrored again, a loop.
fn collector_elsewhere(
    value: &str,
    collector: Endpoint,
    listen: &[Endpoint],
    upstream: Option<&Endpoint>,
) -> Result<Endpoint, String> {
    // A `tcp:` collector connects to a `tls:` listener's port as well.
    let own = listen
        .iter()
        .filter(|l| l.transport.is_stream() == collector.transport.is_stream())
        .find(|l| super::is_listener_address(l, &collector));
    if let Some(own) = own {
        let fate = match own.transport == collector.transport {
            true => {
                "the HEP copies would come back to it as SIP messages and be mirrored \
                     again, a loop"
            }
            false => {
                "the HEP copies would reach sipadmit, not a collector, and fail its TLS \
                      handshake"
            }
        };
        return Err(format!(
            "{value:?} is sipadmit's own SIP listener {own}: {fate}; name the collector's \
             address (heplify-server listens on 9060)"
        ));
    }
    let same_address = |up: &&Endpoint| {
        up.addr.port() == collector.addr.port()
            && up.addr.ip().to_canonical() == collector.addr.ip().to_canonical()
    };
    if let Some(up) = upstream.filter(same_address) {
        return Err(format!(
            "{value:?} is the upstream registrar's address ({up}): the HEP copies would go \
             to the registrar, not to a collector; name the collector's address"
        ));
    }
    Ok(collector)
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
        let settings = validate(&raw, &[], None, &mut problems);
        (settings, problems.iter().map(ToString::to_string).collect())
    }

    /// The problems of `hep.collector = collector` with these SIP
    /// listeners and upstream (none: accepted).
    fn collector_problems(collector: &str, listen: &[&str], upstream: &str) -> Vec<String> {
        let raw = RawHep {
            collector: Some(collector.into()),
            capture_id: DEFAULT_CAPTURE_ID,
            auth_key: None,
            mirror: None,
        };
        let endpoint = |text: &&str| text.parse::<Endpoint>().unwrap();
        let listen: Vec<Endpoint> = listen.iter().map(endpoint).collect();
        let mut problems = Vec::new();
        validate(&raw, &listen, Some(&endpoint(&upstream)), &mut problems);
        problems.iter().map(ToString::to_string).collect()
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

    /// A collector that is one of sipadmit's own SIP listeners (the rule
    /// that refuses such an upstream) would get the copies back as SIP
    /// messages, mirrored again: a loop (or, at a `tls:` listener, fail
    /// its handshake). The registrar is no collector either.
    #[test]
    fn a_collector_at_an_own_listener_or_at_the_registrar_is_refused() {
        let listen = ["udp:127.0.0.1:5060", "tcp:0.0.0.0:5061", "udp:[::]:5062"];
        let up = "udp:192.0.2.10:5070";
        let own = |collector: &str, listener: &str| {
            vec![format!(
                "hep.collector: \"{collector}\" is sipadmit's own SIP listener {listener}: the HEP \
                 copies would come back to it as SIP messages and be mirrored again, a loop; \
                 name the collector's address (heplify-server listens on 9060)"
            )]
        };
        for (collector, listener) in [
            ("udp:127.0.0.1:5060", "udp:127.0.0.1:5060"),
            ("tcp:127.0.0.1:5061", "tcp:0.0.0.0:5061"),
            ("tcp:127.0.0.9:5061", "tcp:0.0.0.0:5061"),
            ("udp:[::1]:5062", "udp:[::]:5062"),
            ("udp:127.0.0.1:5062", "udp:[::]:5062"),
        ] {
            assert_eq!(
                collector_problems(collector, &listen, up),
                own(collector, listener)
            );
        }
        // A `tcp:` collector at a `tls:` listener reaches sipadmit too.
        let with_tls = ["tls:0.0.0.0:5063"];
        assert_eq!(
            collector_problems("tcp:127.0.0.1:5063", &with_tls, up),
            [
                "hep.collector: \"tcp:127.0.0.1:5063\" is sipadmit's own SIP listener \
              tls:0.0.0.0:5063: the HEP copies would reach sipadmit, not a collector, and fail \
              its TLS handshake; name the collector's address (heplify-server listens on 9060)"
            ]
        );
        for collector in ["udp:192.0.2.10:5070", "tcp:[::ffff:192.0.2.10]:5070"] {
            assert_eq!(
                collector_problems(collector, &listen, up),
                [format!(
                    "hep.collector: \"{collector}\" is the upstream registrar's address \
                     (udp:192.0.2.10:5070): the HEP copies would go to the registrar, not to a \
                     collector; name the collector's address"
                )]
            );
        }
        // Another transport, another port or another host is a collector.
        for collector in [
            "tcp:127.0.0.1:5060",
            "udp:127.0.0.1:5061",
            "udp:192.0.2.9:5060",
            "udp:192.0.2.10:9060",
            "udp:127.0.0.1:9060",
        ] {
            let problems = collector_problems(collector, &listen, up);
            assert!(problems.is_empty(), "{collector}: {problems:?}");
        }
    }

    /// HEP collectors are unicast: a broadcast or multicast collector is
    /// refused (a directed broadcast cannot be told without the mask).
    #[test]
    fn a_broadcast_or_multicast_collector_is_refused() {
        for (collector, ip, kind) in [
            ("udp:255.255.255.255:9060", "255.255.255.255", "broadcast"),
            ("udp:224.0.0.1:9060", "224.0.0.1", "multicast"),
            ("udp:239.1.2.3:9060", "239.1.2.3", "multicast"),
            ("tcp:[ff02::1]:9061", "ff02::1", "multicast"),
            // Named as the IPv4 address it maps.
            ("udp:[::ffff:224.0.0.1]:9060", "224.0.0.1", "multicast"),
        ] {
            let (settings, problems) = check(Some(collector), None, None);
            assert_eq!(
                problems,
                [format!(
                    "hep.collector: \"{collector}\": {ip} is a {kind} address: a HEP collector \
                     is one host, name its unicast IP"
                )]
            );
            assert_eq!(settings.collector, None);
        }
        let (_, problems) = check(Some("udp:192.0.2.255:9060"), None, None);
        assert!(problems.is_empty(), "{problems:?}");
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
