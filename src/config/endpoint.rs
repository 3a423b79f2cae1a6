//! Addresses in the config: `udp:IP:PORT` / `tcp:IP:PORT` / `tls:IP:PORT` endpoints of
//! listeners and the upstream, and the `proxy.upstream_sources` patterns.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::policy::pattern::{Network, NetworkError};
use crate::vocabulary::Leg;
use crate::vocabulary::Transport;

/// A transport plus socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Transport.
    pub transport: Transport,
    /// Address and port.
    pub addr: SocketAddr,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            format!("expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT, got {s:?}")
        })?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => {
                return Err(format!(
                    "unknown transport {scheme:?} in {s:?} (udp, tcp or tls)"
                ))
            }
        };
        let addr: SocketAddr = rest
            .parse()
            .map_err(|_| format!("{rest:?} is not IP:PORT (IPv6 as [::1]:5060) in {s:?}"))?;
        // An IPv4-mapped IPv6 address (`[::ffff:192.0.2.7]`) is its IPv4
        // address: the one sockets use and Via and Path must name.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        Ok(Self { transport, addr })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// The source addresses whose messages count as coming from the registrar
/// (`proxy.upstream_sources`). Default: exactly the upstream's address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamSources(Vec<SourcePattern>);

impl UpstreamSources {
    /// Sources matching any of `patterns`.
    pub fn new(patterns: Vec<SourcePattern>) -> Self {
        Self(patterns)
    }

    /// Only `addr`, port included: the default, with the upstream's address.
    pub fn exactly(addr: SocketAddr) -> Self {
        Self(vec![SourcePattern::Address(addr)])
    }

    /// Whether a message from `source` comes from the registrar.
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn matches(&self, source: SocketAddr) -> bool {
        self.0.iter().any(|p| p.matches(source))
    }

    /// The same sources, each `IP:PORT` widened to its IP on any port: the
    /// registrar's hosts. A registrar reached over TCP or TLS sends its own
    /// requests on connections it opens from ports it picks; they count as
    /// a client's (only `IP:PORT` is the registrar for the leg), but its
    /// host is never rate-limited or banned.
    pub fn hosts(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|p| match *p {
                    SourcePattern::Address(addr) => {
                        SourcePattern::Network(Network::host(addr.ip()))
                    }
                    network => network,
                })
                .collect(),
        )
    }

    /// The leg of a message from `source`: the registrar's when it
    /// [`matches`](Self::matches), else a client's.
    pub fn leg_of(&self, source: SocketAddr) -> Leg {
        if self.matches(source) {
            Leg::FromRegistrar
        } else {
            Leg::FromClient
        }
    }

    /// The patterns, in configuration order.
    pub fn patterns(&self) -> &[SourcePattern] {
        &self.0
    }
}

/// One entry of `proxy.upstream_sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePattern {
    /// Any address of a network, any port: `192.0.2.7`, `10.0.0.0/24`,
    /// `2001:db8::/32` (a bare IP is a /32 or /128).
    Network(Network),
    /// Exactly one address and port: `192.0.2.7:5060`, `[2001:db8::7]:5060`.
    Address(SocketAddr),
}

impl SourcePattern {
    /// Whether `source` is matched (IPv4-mapped IPv6 counts as IPv4).
    pub fn matches(&self, source: SocketAddr) -> bool {
        match self {
            Self::Network(network) => network.contains(source.ip()),
            Self::Address(addr) => unmapped(*addr) == unmapped(source),
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into IPv4.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(IpAddr::V4(v4), addr.port())),
        IpAddr::V4(_) => addr,
    }
}

impl FromStr for SourcePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return if addr.port() == 0 {
                Err(format!("{s:?}: port 0 never sends; give the port messages come from, or the IP alone for any port"))
            } else {
                Ok(Self::Address(addr))
            };
        }
        match Network::parse(s) {
            Ok(network) => Ok(Self::Network(network)),
            Err(e @ NetworkError::MappedBelow96 { .. }) => Err(e.to_string()),
            Err(_) => Err(format!(
                "not an address or network: {s:?} (expected an IP such as 192.0.2.7, \
                 a network such as 10.0.0.0/24, or IP:PORT such as 192.0.2.7:5060 \
                 or [2001:db8::7]:5060)"
            )),
        }
    }
}

impl fmt::Display for SourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(network) => network.fmt(f),
            Self::Address(addr) => addr.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_and_refuses_junk() {
        let e: Endpoint = "udp:127.0.0.1:5060".parse().unwrap();
        assert_eq!((e.transport, e.addr.port()), (Transport::Udp, 5060));
        let e: Endpoint = "TCP:[::1]:5070".parse().unwrap();
        assert!(e.addr.is_ipv6());
        assert_eq!(e.to_string(), "tcp:[::1]:5070");
        assert!("sctp:1.2.3.4:5".parse::<Endpoint>().is_err());
        assert!("udp:localhost:5060".parse::<Endpoint>().is_err());
        let e: Endpoint = "tls:[::1]:5061".parse().unwrap();
        assert_eq!((e.transport, e.addr.port()), (Transport::Tls, 5061));
        assert_eq!(e.to_string(), "tls:[::1]:5061");
        assert!("tls:pool.contoso.com:5061".parse::<Endpoint>().is_err());
        assert!("nonsense".parse::<Endpoint>().is_err());
    }

    fn sources(patterns: &[&str]) -> UpstreamSources {
        UpstreamSources::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv4_mapped_endpoint_is_its_ipv4_address() {
        // What sockets use and Via and Path name: never `[::ffff:...]`.
        let e: Endpoint = "udp:[::ffff:127.0.0.1]:5070".parse().unwrap();
        assert_eq!(e.to_string(), "udp:127.0.0.1:5070");
        // A mapped network below /96 is refused as a source, with the fix.
        let e = "::ffff:10.0.0.0/8".parse::<SourcePattern>().unwrap_err();
        assert!(e.contains("10.0.0.0/8 for IPv4 clients"), "{e}");
    }

    #[test]
    fn an_exact_address_matches_its_port_only() {
        let s = UpstreamSources::exactly(addr("192.0.2.7:5070"));
        assert!(s.matches(addr("192.0.2.7:5070")));
        assert!(s.matches(addr("[::ffff:192.0.2.7]:5070")));
        assert!(!s.matches(addr("192.0.2.7:5071")));
        assert!(!s.matches(addr("192.0.2.8:5070")));
        let s = sources(&["[2001:db8::7]:5060"]);
        assert!(s.matches(addr("[2001:db8::7]:5060")));
        assert!(!s.matches(addr("[2001:db8::7]:40000")));
    }

    #[test]
    fn an_ip_or_network_matches_any_port() {
        let s = sources(&["192.0.2.7", "10.0.0.0/24", "2001:db8::/32"]);
        assert!(s.matches(addr("192.0.2.7:40000")));
        assert!(s.matches(addr("10.0.0.200:5060")));
        assert!(s.matches(addr("[::ffff:10.0.0.1]:1")));
        assert!(s.matches(addr("[2001:db8:1::9]:5060")));
        assert!(!s.matches(addr("10.0.1.1:5060")));
        assert!(!s.matches(addr("192.0.2.8:5060")));
        assert!(!UpstreamSources::default().matches(addr("192.0.2.7:5060")));
    }

    #[test]
    fn source_patterns_parse_and_display() {
        for (text, shown) in [
            ("192.0.2.7", "192.0.2.7/32"),
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("::1", "::1/128"),
            ("192.0.2.7:5060", "192.0.2.7:5060"),
            ("[2001:db8::7]:5060", "[2001:db8::7]:5060"),
        ] {
            let p: SourcePattern = text.parse().unwrap();
            assert_eq!(p.to_string(), shown);
        }
        for bad in [
            "registrar.example.com",
            "10.0.0.0/33",
            "192.0.2.7:0",
            "[::1]",
            "",
        ] {
            assert!(bad.parse::<SourcePattern>().is_err(), "{bad}");
        }
    }
}
