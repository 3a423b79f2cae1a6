//! This proxy's own addresses: where each listener is, what it advertises
//! (`proxy.advertise`), and whether a URI or a Via names this proxy. Pure:
//! the core asks it when it writes its Via, Path and Record-Route and when
//! it reads Route, Request-URI and Via.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::AdvertisedHost;
use crate::sip::fields::{host_ip, parse_hostport, trim_lws};
use crate::vocabulary::Transport;

/// A listener of this proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// Its transport.
    pub transport: Transport,
    /// Its address (for an unspecified bind address, the local address
    /// facing the registrar).
    pub addr: SocketAddr,
    /// What it advertises instead of `addr`, if anything.
    pub advertise: Option<AdvertisedHost>,
    /// The address its socket is bound to: `addr`, or the unspecified
    /// address (`0.0.0.0`, `[::]`) on its port.
    pub bound: SocketAddr,
    /// For a listener bound to an unspecified address (`0.0.0.0`, `[::]`),
    /// the other addresses of this host it receives at: the host's
    /// addresses of the families it takes, as they were at start (IPv4
    /// ones as IPv4). Empty for a listener bound to one address.
    pub receives_at: Vec<IpAddr>,
}

impl Listening {
    /// A listener advertising its own address.
    pub fn at(transport: Transport, addr: SocketAddr) -> Self {
        Self {
            transport,
            addr,
            advertise: None,
            bound: addr,
            receives_at: Vec::new(),
        }
    }

    /// The `host[:port]` of its URIs in Path and Record-Route: the
    /// advertised host (with its port, if it has one), else its address.
    pub fn uri_host(&self) -> UriHost<'_> {
        UriHost(self)
    }

    /// The sent-by of its Via: the advertised host with the listener's own
    /// port (RFC 3261 18.2.2: a response over UDP goes to the `received`
    /// address the next hop adds and the sent-by port, which must be this
    /// instance's), else its address.
    pub fn sent_by(&self) -> SentBy<'_> {
        SentBy(self)
    }

    /// Whether `host[:port]` (as written; no port means 5060) names this
    /// listener: its address (or, bound to an unspecified one, another
    /// address of this host it receives at), or what it advertises (see
    /// [`AdvertisedHost::names`]).
    pub fn names(&self, host: &[u8], port: Option<u16>) -> bool {
        let at_an_address_of_ours = || {
            // An IPv4 address in any spelling, `[::ffff:a.b.c.d]` included.
            host_ip(host).map(|ip| ip.to_canonical()).is_some_and(|ip| {
                ip == self.addr.ip().to_canonical() || self.receives_at.contains(&ip)
            })
        };
        (port.unwrap_or(5060) == self.addr.port() && at_an_address_of_ours())
            || self
                .advertise
                .as_ref()
                .is_some_and(|a| a.names(host, port, self.addr.port()))
    }
}

/// [`Listening::uri_host`].
#[derive(Debug, Clone, Copy)]
pub struct UriHost<'a>(&'a Listening);

impl fmt::Display for UriHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.advertise {
            Some(advertised) => advertised.fmt(f),
            None => self.0.addr.fmt(f),
        }
    }
}

/// [`Listening::sent_by`].
#[derive(Debug, Clone, Copy)]
pub struct SentBy<'a>(&'a Listening);

impl fmt::Display for SentBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.advertise {
            Some(advertised) => write!(f, "{}:{}", advertised.host(), self.0.addr.port()),
            None => self.0.addr.fmt(f),
        }
    }
}

/// (user, host, port) of a URI.
pub type UriParts<'a> = (Option<&'a [u8]>, &'a [u8], Option<u16>);

/// (user, host, port) of a `sip:`/`sips:` URI (a Route value's or a
/// Request-URI); `None` for another scheme or a malformed host.
pub fn uri_parts(uri: &[u8]) -> Option<UriParts<'_>> {
    let rest = uri
        .strip_prefix(b"sip:")
        .or_else(|| uri.strip_prefix(b"sips:"))
        .or_else(|| {
            // Schemes are case-insensitive (RFC 3261 19.1.4).
            let colon = uri.iter().position(|&b| b == b':')?;
            let scheme = &uri[..colon];
            (scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips"))
                .then(|| &uri[colon + 1..])
        })?;
    let (user, hostport) = match rest.iter().position(|&b| b == b'@') {
        Some(at) => (Some(trim_lws(&rest[..at])), &rest[at + 1..]),
        None => (None, rest),
    };
    let (host, port, _) = parse_hostport(hostport)?;
    Some((user, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(transport: Transport, addr: &str, advertise: Option<&str>) -> Listening {
        Listening {
            transport,
            addr: addr.parse().unwrap(),
            advertise: advertise.map(|a| a.parse().unwrap()),
            bound: addr.parse().unwrap(),
            receives_at: Vec::new(),
        }
    }

    /// A `[::]` listener advertised at the address facing an IPv6
    /// registrar is named by the host's other addresses on its port too,
    /// IPv4 ones in any spelling (trial 15: an IPv4 client's outbound-proxy
    /// Route was kept, and the registrar's loop came back as 482).
    #[test]
    fn a_wildcard_listener_is_named_by_the_addresses_it_receives_at() {
        let mut wildcard = listening(Transport::Udp, "[::1]:5062", None);
        wildcard.receives_at = vec!["127.0.0.1".parse().unwrap(), "2001:db8::5".parse().unwrap()];
        assert!(wildcard.names(b"[::1]", Some(5062)));
        assert!(wildcard.names(b"127.0.0.1", Some(5062)));
        assert!(wildcard.names(b"[::ffff:127.0.0.1]", Some(5062)));
        assert!(wildcard.names(b"[2001:DB8::5]", Some(5062)));
        assert!(!wildcard.names(b"127.0.0.1", None), "5060 is not its port");
        assert!(!wildcard.names(b"127.0.0.2", Some(5062)));
        assert!(!wildcard.names(b"host.example", Some(5062)));
    }

    /// Trial 26: a Route to `[::ffff:127.0.0.1]:P`, the IPv4 listener's
    /// address mapped, was not popped (and an OPTIONS to it went to the
    /// registrar).
    #[test]
    fn an_ipv4_listener_is_named_by_its_address_mapped_to_ipv6() {
        let own = listening(Transport::Udp, "127.0.0.1:5062", None);
        assert!(own.names(b"[::ffff:127.0.0.1]", Some(5062)));
        assert!(own.names(b"[::FFFF:7f00:1]", Some(5062)));
        assert!(!own.names(b"[::ffff:127.0.0.2]", Some(5062)));
        assert!(!own.names(b"[::1]", Some(5062)));
    }

    #[test]
    fn uris_and_vias_carry_the_advertised_name_or_the_address() {
        let own = listening(Transport::Udp, "192.0.2.5:5080", None);
        assert_eq!(own.uri_host().to_string(), "192.0.2.5:5080");
        assert_eq!(own.sent_by().to_string(), "192.0.2.5:5080");
        let v6 = listening(Transport::Tcp, "[2001:db8::5]:5060", None);
        assert_eq!(v6.uri_host().to_string(), "[2001:db8::5]:5060");
        let pool = listening(Transport::Udp, "192.0.2.5:5080", Some("pool.example.com"));
        // No port: the next hop resolves the name (DNS SRV); the Via keeps
        // the instance's port for UDP responses.
        assert_eq!(pool.uri_host().to_string(), "pool.example.com");
        assert_eq!(pool.sent_by().to_string(), "pool.example.com:5080");
        let balanced = listening(
            Transport::Tls,
            "10.0.0.5:5081",
            Some("sip.example.com:5061"),
        );
        assert_eq!(balanced.uri_host().to_string(), "sip.example.com:5061");
        assert_eq!(balanced.sent_by().to_string(), "sip.example.com:5081");
    }

    #[test]
    fn a_listener_is_named_by_its_address_or_its_advertised_host() {
        let pool = listening(Transport::Udp, "192.0.2.5:5080", Some("pool.example.com"));
        assert!(pool.names(b"192.0.2.5", Some(5080)));
        assert!(!pool.names(b"192.0.2.5", None), "5060 is not its port");
        assert!(pool.names(b"pool.example.com", None));
        assert!(pool.names(b"Pool.Example.Com", Some(5080)));
        assert!(!pool.names(b"pool.example.com", Some(5090)));
        assert!(!pool.names(b"registrar.example.com", None));
        let plain = listening(Transport::Udp, "127.0.0.1:5060", None);
        assert!(plain.names(b"127.0.0.1", None));
        assert!(
            !plain.names(b"localhost", None),
            "names only when advertised"
        );
    }

    #[test]
    fn uri_parts_split_user_host_and_port() {
        assert_eq!(
            uri_parts(b"sip:alice@pool.example.com:5060;transport=udp"),
            Some((Some(&b"alice"[..]), &b"pool.example.com"[..], Some(5060)))
        );
        assert_eq!(
            uri_parts(b"SIPS:[2001:db8::1];lr"),
            Some((None, &b"[2001:db8::1]"[..], None))
        );
        assert_eq!(
            uri_parts(b"sip:127.0.0.1:5070"),
            Some((None, &b"127.0.0.1"[..], Some(5070)))
        );
        assert_eq!(uri_parts(b"tel:+15551234"), None);
        assert_eq!(uri_parts(b"sip:@"), None);
    }
}
