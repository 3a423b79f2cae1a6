//! `proxy.advertise`: the name (or address) a listener is known by, written
//! in Path, Record-Route and the proxy's own Via instead of the listener's
//! address, so that a pool of instances shares one name (DNS or a load
//! balancer picks the instance; the flow token in the URI does the rest).
//!
//! The value is `HOST` or `HOST:PORT` (IPv6 in brackets), for every
//! listener (a string) or per listener (a table keyed by the listener as
//! written in `proxy.listen`). No DNS lookup is made: the name is only
//! written, and recognised in what comes back.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::Endpoint;
use crate::sip::fields::host_is_ip;

/// Longest host name (RFC 1035), bytes, without a trailing dot.
const MAX_NAME_BYTES: usize = 253;
/// Longest label of a host name (RFC 1035), bytes.
const MAX_LABEL_BYTES: usize = 63;
/// The port a URI or sent-by without one means (RFC 3261 19.1.2).
const DEFAULT_SIP_PORT: u16 = 5060;

/// An advertised host and optional port, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedHost {
    /// The host as written in URIs: a name (lowercase), an IPv4 address,
    /// or an IPv6 address in brackets.
    host: String,
    /// The address, when the host is one.
    ip: Option<IpAddr>,
    /// The port, when given: written in Path and Record-Route. Without
    /// one, they carry no port (the next hop resolves the name with DNS
    /// SRV, RFC 3263).
    port: Option<u16>,
}

impl AdvertisedHost {
    /// The host as written in URIs.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether `host[:port]` of a URI or a Via names this advertised host
    /// of a listener on `listener_port`: the same host (names compared
    /// without case and trailing dot, addresses as addresses), and a port
    /// that is the advertised one (both absent, or equal), the listener's
    /// own, or one that means the same once 5060 stands for an absent one.
    pub fn names(&self, host: &[u8], port: Option<u16>, listener_port: u16) -> bool {
        let same_host = match self.ip {
            Some(ip) => host_is_ip(host, ip),
            None => {
                let host = host.strip_suffix(b".").unwrap_or(host);
                host.eq_ignore_ascii_case(self.host.as_bytes())
            }
        };
        if !same_host {
            return false;
        }
        let effective = port.unwrap_or(DEFAULT_SIP_PORT);
        port == self.port
            || effective == listener_port
            || self.port.is_some_and(|advertised| advertised == effective)
    }
}

/// The names a certificate is valid for: its subjectAltName DNS names (or,
/// without any, its subject common name) and IP addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// DNS names, as written (a leading `*.` is a wildcard).
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl fmt::Display for CertificateNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(ToString::to_string))
            .collect();
        if names.is_empty() {
            f.write_str("no name")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

impl AdvertisedHost {
    /// Whether a certificate valid for `names` is valid for this host: an
    /// address among its IP addresses, a name equal to one of its DNS
    /// names (without case), or under a wildcard one, which stands for the
    /// whole leftmost label (RFC 6125 6.4.3: `*.contoso.com` covers
    /// `sip.contoso.com`, not `contoso.com` nor `a.sip.contoso.com`).
    pub fn is_in(&self, names: &CertificateNames) -> bool {
        if let Some(ip) = self.ip {
            return names.ips.contains(&ip);
        }
        names.dns.iter().any(|name| {
            let name = name.strip_suffix('.').unwrap_or(name);
            match name.strip_prefix("*.") {
                Some(parent) => self
                    .host
                    .split_once('.')
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(parent)),
                None => name.eq_ignore_ascii_case(&self.host),
            }
        })
    }
}

impl fmt::Display for AdvertisedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl FromStr for AdvertisedHost {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let problem = |why: &str| format!("{text:?}: {why}");
        if text.trim().is_empty() {
            return Err("empty; give a host name or address, e.g. \"sip.contoso.com\" or \"sip.contoso.com:5060\"".into());
        }
        if has_scheme(text) {
            return Err(problem("give the host only, without a scheme (\"sip:\")"));
        }
        if text.contains('@') {
            return Err(problem("give the host only, without a user part"));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, ';' | '?' | '<' | '>' | '/'))
        {
            return Err(problem(&format!(
                "{c:?} is not allowed: give HOST or HOST:PORT only"
            )));
        }
        let (host, port) = split_port(text).map_err(|why| problem(&why))?;
        let (host, ip) = check_host(host).map_err(|why| problem(&why))?;
        if ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(problem(
                "the unspecified address cannot be reached: give the name or address \
                 clients and the registrar reach this instance (or the pool) at",
            ));
        }
        Ok(Self { host, ip, port })
    }
}

/// Whether `text` starts with a scheme: `x://`, or `sip:` / `sips:` not
/// followed by a port number (a host named `sip` may have a port).
fn has_scheme(text: &str) -> bool {
    if text.contains("://") {
        return true;
    }
    text.split_once(':').is_some_and(|(scheme, rest)| {
        (scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips"))
            && !rest.chars().all(|c| c.is_ascii_digit())
    })
}

/// Split `HOST[:PORT]` (IPv6 in brackets).
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or("an IPv6 address in brackets needs its closing \"]\"")?;
        let after = &rest[close + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(format!(
                "{after:?} after the IPv6 address: expected \":PORT\""
            ))?),
        };
        (&text[..close + 2], port)
    } else {
        match text.matches(':').count() {
            0 => (text, None),
            1 => {
                let (host, port) = text.split_once(':').expect("one colon");
                (host, Some(port))
            }
            _ => {
                return Err(
                    "an IPv6 address goes in brackets: [2001:db8::1] or [2001:db8::1]:5060".into(),
                )
            }
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or(format!("port {p:?} is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host, port))
}

/// Check a host: a bracketed IPv6 address, an IPv4 address, or a host name
/// (RFC 3261 `hostname`: labels of letters, digits and inner hyphens, the
/// last one starting with a letter). Returns it as written in URIs and its
/// address when it is one.
fn check_host(host: &str) -> Result<(String, Option<IpAddr>), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let v6: std::net::Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("[{inner}] is not an IPv6 address"))?;
        return Ok((format!("[{v6}]"), Some(IpAddr::V6(v6))));
    }
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return Ok((v4.to_string(), Some(IpAddr::V4(v4))));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("no host before the port".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a host name of {} bytes; at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        check_label(label)?;
    }
    let top = labels.last().expect("split yields one at least");
    if !top.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{host:?} is neither an IPv4 address nor a host name (the last label of a name starts with a letter)"
        ));
    }
    Ok((name.to_ascii_lowercase(), None))
}

/// One label of a host name: 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("an empty label (\"..\", or a leading dot) in the host name".into());
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(format!(
            "label {label:?} is {} bytes; at most {MAX_LABEL_BYTES}",
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{c:?} in label {label:?}: a host name has letters, digits, hyphens and dots only"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with a hyphen"));
    }
    Ok(())
}

/// `proxy.advertise` resolved: the advertised host of each listener that
/// has one (listeners not named keep their own address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertise(Vec<(Endpoint, AdvertisedHost)>);

impl Advertise {
    /// One advertised host per listener, as given.
    pub fn new(per_listener: Vec<(Endpoint, AdvertisedHost)>) -> Self {
        Self(per_listener)
    }

    /// What listener `endpoint` (as configured) advertises, if anything.
    pub fn for_listener(&self, endpoint: &Endpoint) -> Option<&AdvertisedHost> {
        self.0.iter().find(|(e, _)| e == endpoint).map(|(_, h)| h)
    }

    /// What the first listener of `transport` advertises, if anything.
    pub fn for_transport(
        &self,
        transport: crate::vocabulary::Transport,
    ) -> Option<&AdvertisedHost> {
        self.0
            .iter()
            .find(|(e, _)| e.transport == transport)
            .map(|(_, h)| h)
    }

    /// Whether no listener advertises anything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each listener that advertises something, with what.
    pub fn iter(&self) -> impl Iterator<Item = &(Endpoint, AdvertisedHost)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdvertisedHost, String> {
        text.parse()
    }

    #[test]
    fn names_addresses_and_ports_parse_and_print_as_written_in_uris() {
        for (given, shown, port) in [
            ("sip.contoso.com", "sip.contoso.com", None),
            ("SIP.Contoso.COM:5061", "sip.contoso.com:5061", Some(5061)),
            ("pool-1.example.", "pool-1.example", None),
            ("localhost", "localhost", None),
            ("192.0.2.10", "192.0.2.10", None),
            ("192.0.2.10:5080", "192.0.2.10:5080", Some(5080)),
            ("[2001:db8::10]", "[2001:db8::10]", None),
            ("[2001:DB8:0::10]:5060", "[2001:db8::10]:5060", Some(5060)),
        ] {
            let host = parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(
                (host.to_string(), host.port()),
                (shown.to_owned(), port),
                "{given}"
            );
        }
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (given, expected) in [
            ("", "empty; give a host name or address, e.g. \"sip.contoso.com\" or \"sip.contoso.com:5060\""),
            ("sip:pool.example.com", "\"sip:pool.example.com\": give the host only, without a scheme (\"sip:\")"),
            ("sips:pool.example.com:5061", "\"sips:pool.example.com:5061\": give the host only, without a scheme (\"sip:\")"),
            ("udp://pool.example.com", "\"udp://pool.example.com\": give the host only, without a scheme (\"sip:\")"),
            ("proxy@pool.example.com", "\"proxy@pool.example.com\": give the host only, without a user part"),
            ("pool.example.com;transport=tcp", "\"pool.example.com;transport=tcp\": ';' is not allowed: give HOST or HOST:PORT only"),
            ("pool example", "\"pool example\": ' ' is not allowed: give HOST or HOST:PORT only"),
            ("pool.example.com:0", "\"pool.example.com:0\": port \"0\" is not a number from 1 to 65535"),
            ("pool.example.com:70000", "\"pool.example.com:70000\": port \"70000\" is not a number from 1 to 65535"),
            ("pool.example.com:", "\"pool.example.com:\": port \"\" is not a number from 1 to 65535"),
            ("2001:db8::1", "\"2001:db8::1\": an IPv6 address goes in brackets: [2001:db8::1] or [2001:db8::1]:5060"),
            ("[2001:db8::1", "\"[2001:db8::1\": an IPv6 address in brackets needs its closing \"]\""),
            ("[2001:db8::1]5060", "\"[2001:db8::1]5060\": \"5060\" after the IPv6 address: expected \":PORT\""),
            ("[pool]", "\"[pool]\": [pool] is not an IPv6 address"),
            ("0.0.0.0", "\"0.0.0.0\": the unspecified address cannot be reached: give the name or address clients and the registrar reach this instance (or the pool) at"),
            ("[::]:5060", "\"[::]:5060\": the unspecified address cannot be reached: give the name or address clients and the registrar reach this instance (or the pool) at"),
            ("192.0.2.300", "\"192.0.2.300\": \"192.0.2.300\" is neither an IPv4 address nor a host name (the last label of a name starts with a letter)"),
            ("pool..example", "\"pool..example\": an empty label (\"..\", or a leading dot) in the host name"),
            ("-pool.example", "\"-pool.example\": label \"-pool\" starts or ends with a hyphen"),
            ("pool_1.example", "\"pool_1.example\": '_' in label \"pool_1\": a host name has letters, digits, hyphens and dots only"),
            (":5060", "\":5060\": no host before the port"),
        ] {
            assert_eq!(parse(given).unwrap_err(), expected, "{given}");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(parse(&long_label).unwrap_err().contains("at most 63"));
        let long_name = vec!["abcdefgh"; 30].join(".");
        assert!(parse(&long_name).unwrap_err().contains("at most 253"));
    }

    #[test]
    fn a_uri_names_the_advertised_host_on_its_port_or_the_listeners() {
        let no_port = parse("pool.example.com").unwrap();
        let with_port = parse("pool.example.com:5080").unwrap();
        let ip = parse("[2001:db8::10]:5061").unwrap();
        // (advertised, host, port, listener port) → names it?
        for (advertised, host, port, listener, names) in [
            (&no_port, "pool.example.com", None, 5070, true),
            (&no_port, "POOL.example.com.", None, 5070, true),
            (&no_port, "pool.example.com", Some(5070), 5070, true),
            (&no_port, "pool.example.com", Some(5071), 5070, false),
            (&no_port, "pool.example.com", None, 5060, true),
            (&no_port, "pool.example.com", Some(5060), 5060, true),
            (&no_port, "other.example.com", None, 5070, false),
            (&with_port, "pool.example.com", Some(5080), 5070, true),
            (&with_port, "pool.example.com", Some(5070), 5070, true),
            (&with_port, "pool.example.com", None, 5070, false),
            (&with_port, "pool.example.com", Some(5060), 5070, false),
            (&ip, "[2001:db8:0::10]", Some(5061), 5062, true),
            (&ip, "2001:db8::10", Some(5062), 5062, true),
            (&ip, "[2001:db8::11]", Some(5061), 5062, false),
        ] {
            assert_eq!(
                advertised.names(host.as_bytes(), port, listener),
                names,
                "{advertised} vs {host}:{port:?} (listener port {listener})"
            );
        }
    }

    #[test]
    fn a_certificate_covers_its_names_its_addresses_and_one_label_under_a_wildcard() {
        let names = CertificateNames {
            dns: vec!["SIP.contoso.com".into(), "*.pool.contoso.com".into()],
            ips: vec!["192.0.2.10".parse().unwrap()],
        };
        for (host, covered) in [
            ("sip.contoso.com", true),
            ("sip.contoso.com:5061", true),
            ("a.pool.contoso.com", true),
            ("pool.contoso.com", false),
            ("a.b.pool.contoso.com", false),
            ("other.contoso.com", false),
            ("192.0.2.10", true),
            ("192.0.2.11", false),
            ("[2001:db8::10]", false),
        ] {
            assert_eq!(parse(host).unwrap().is_in(&names), covered, "{host}");
        }
        assert_eq!(
            names.to_string(),
            "SIP.contoso.com, *.pool.contoso.com, 192.0.2.10"
        );
        assert_eq!(CertificateNames::default().to_string(), "no name");
    }

    #[test]
    fn advertise_is_found_by_listener_and_by_transport() {
        let udp: Endpoint = "udp:0.0.0.0:5060".parse().unwrap();
        let tls: Endpoint = "tls:0.0.0.0:5061".parse().unwrap();
        let tcp: Endpoint = "tcp:0.0.0.0:5060".parse().unwrap();
        let advertise = Advertise::new(vec![
            (udp, parse("pool.example.com").unwrap()),
            (tls, parse("sip.example.com:5061").unwrap()),
        ]);
        assert_eq!(
            advertise.for_listener(&tls).unwrap().to_string(),
            "sip.example.com:5061"
        );
        assert!(advertise.for_listener(&tcp).is_none());
        assert_eq!(
            advertise
                .for_transport(crate::vocabulary::Transport::Udp)
                .unwrap()
                .host(),
            "pool.example.com"
        );
        assert!(!advertise.is_empty() && Advertise::default().is_empty());
    }
}
