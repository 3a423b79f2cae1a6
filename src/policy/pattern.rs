//! Address patterns used to recognise Response Group sessions: SIP URI
//! globs (`sip:*@rgs.contoso.com`) and IP networks (`10.0.0.0/8`).
//! Compiled once from config; matching allocates nothing, except once
//! per URI spelled with a password, %-escapes or a trailing dot
//! ([`comparable`]).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use crate::sip::fields::percent_decoded;

/// A SIP URI pattern. Only `user@host` is compared (scheme, port,
/// parameters and headers are ignored), ASCII case-insensitively, as the
/// registrar reads it: without a password and with %-escapes decoded (see
/// [`comparable`]); `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPattern {
    text: String,
    /// `user@host`, lowercased.
    key: Vec<u8>,
}

/// The `user@host` part of a `sip:`/`sips:` URI (also accepts `<...>`
/// around it): what patterns are compared against.
pub fn uri_key(uri: &[u8]) -> Option<&[u8]> {
    let uri = uri.strip_prefix(b"<").unwrap_or(uri);
    let colon = uri.iter().position(|&b| b == b':')?;
    let scheme = &uri[..colon];
    if !(scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
        return None;
    }
    let rest = &uri[colon + 1..];
    let host_start = rest.iter().position(|&b| b == b'@').map_or(0, |at| at + 1);
    let host = &rest[host_start..];
    let host_len = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').map(|p| p + 1)?
    } else {
        host.iter()
            .position(|&b| matches!(b, b';' | b'?' | b':' | b'>'))
            .unwrap_or(host.len())
    };
    (host_len > 0).then(|| &rest[..host_start + host_len])
}

/// A `user@host` key as the registrar reads it, so that no other spelling
/// of an address slips past a pattern: the password after the user's `:`
/// left out (RFC 3261 19.1.1: `sip:helpdesk:pw@contoso.com` is
/// helpdesk's), %-escapes decoded (19.1.4: `help%64esk` is `helpdesk`),
/// and a host's trailing dot dropped (`contoso.com.` is `contoso.com`).
/// Borrowed, with no work, when there is nothing to change.
pub fn comparable(key: &[u8]) -> Cow<'_, [u8]> {
    let at = key.iter().position(|&b| b == b'@');
    let (user, host) = match at {
        Some(at) => (&key[..at], &key[at + 1..]),
        None => (&b""[..], key),
    };
    let user = user
        .iter()
        .position(|&b| b == b':')
        .map_or(user, |colon| &user[..colon]);
    let host = host.strip_suffix(b".").unwrap_or(host);
    let shortened = user.len() + usize::from(at.is_some()) + host.len() != key.len();
    if !shortened && memchr::memchr(b'%', key).is_none() {
        return Cow::Borrowed(key);
    }
    let mut out = Vec::with_capacity(key.len());
    out.extend(percent_decoded(user));
    if at.is_some() {
        out.push(b'@');
    }
    out.extend(percent_decoded(host));
    Cow::Owned(out)
}

impl UriPattern {
    /// Compile a pattern; `None` if it is not a `sip:`/`sips:` URI with a host.
    pub fn new(text: &str) -> Option<Self> {
        let key = uri_key(text.as_bytes())?;
        if key.iter().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        Some(Self {
            text: text.to_owned(),
            key: comparable(key).to_ascii_lowercase(),
        })
    }

    /// Whether a URI matches.
    pub fn matches(&self, uri: &[u8]) -> bool {
        self.matches_key(&MatchKey::of(uri))
    }

    /// Whether a URI, read once for several patterns, matches.
    pub fn matches_key(&self, key: &MatchKey<'_>) -> bool {
        key.0
            .as_deref()
            .is_some_and(|key| glob_match(&self.key, key))
    }

    /// Whether a URI matches any of `patterns` (it is read once).
    pub fn any_matches(patterns: &[Self], uri: &[u8]) -> bool {
        if patterns.is_empty() {
            return false;
        }
        let key = MatchKey::of(uri);
        patterns.iter().any(|p| p.matches_key(&key))
    }
}

/// A URI as patterns compare it: its [`comparable`] `user@host`; `None`
/// when it is no `sip:`/`sips:` URI with a host.
#[derive(Debug)]
pub struct MatchKey<'a>(Option<Cow<'a, [u8]>>);

impl<'a> MatchKey<'a> {
    /// Read `uri` for matching.
    pub fn of(uri: &'a [u8]) -> Self {
        Self(uri_key(uri).map(comparable))
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Glob match with `*`, ASCII case-insensitive (`pattern` is lowercase).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t].to_ascii_lowercase() {
            p += 1;
            t += 1;
        } else if let Some((bp, bt)) = backtrack {
            p = bp + 1;
            t = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Why a text is not an IP network ([`Network::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not an address or CIDR network at all, or a prefix too long.
    #[error("not an IP network: {0:?} (expected e.g. 10.0.0.0/8, 192.0.2.7 or ::1)")]
    Invalid(String),
    /// An IPv4-mapped address with a prefix below /96: a network of IPv6
    /// addresses (`::ffff:127.0.0.0/8` is `::/8`), surely not what was meant.
    #[error(
        "{text:?} is an IPv4-mapped address with a prefix below /96, a network of IPv6 \
         addresses: write the IPv4 network ({}) or a mapped prefix of /96 or more ({})",
        suggested_ipv4(*v4, *prefix),
        suggested_mapped(*v4, *prefix)
    )]
    MappedBelow96 {
        /// The text as written.
        text: String,
        /// The IPv4 address it maps.
        v4: std::net::Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
}

/// The IPv4 network an IPv4-mapped network below /96 likely meant.
fn suggested_ipv4(v4: std::net::Ipv4Addr, prefix: u8) -> String {
    if prefix <= 32 {
        format!("{v4}/{prefix} for IPv4 clients")
    } else {
        format!("such as {v4}/24")
    }
}

/// The same as a mapped network of /96 or more.
fn suggested_mapped(v4: std::net::Ipv4Addr, prefix: u8) -> String {
    if prefix <= 32 {
        format!("::ffff:{v4}/{}", u16::from(prefix) + 96)
    } else {
        format!("such as ::ffff:{v4}/120")
    }
}

/// An IP network in CIDR notation (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// The one address `ip` (a /32 or /128; IPv4-mapped IPv6 as IPv4).
    pub fn host(ip: IpAddr) -> Self {
        let addr = ip.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Parse `10.0.0.0/8`, `::1`, `2001:db8::/32`; what is wrong if
    /// invalid. An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4
    /// network it maps (`10.0.0.0/8`), as [`Self::contains`] reads a mapped
    /// address as IPv4; one with a prefix below /96 (`::ffff:10.0.0.0/8`)
    /// would cover IPv6 addresses instead and is refused.
    pub fn parse(text: &str) -> Result<Self, NetworkError> {
        let invalid = || NetworkError::Invalid(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| invalid())?,
                Some(p.parse::<u8>().map_err(|_| invalid())?),
            ),
            None => (text.parse::<IpAddr>().map_err(|_| invalid())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(invalid());
        }
        let mapped = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            IpAddr::V4(_) => None,
        };
        match mapped {
            Some(v4) if prefix >= 96 => Ok(Self {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            }),
            Some(v4) => Err(NetworkError::MappedBelow96 {
                text: text.to_owned(),
                v4,
                prefix,
            }),
            None => Ok(Self { addr, prefix }),
        }
    }

    /// Whether every address of the network `addr`/`prefix_len` is inside
    /// this one (`addr` an IPv4 address or an IPv6 one that is not
    /// IPv4-mapped, `prefix_len` up to its family's length).
    pub fn covers(&self, addr: IpAddr, prefix_len: u8) -> bool {
        self.prefix <= prefix_len && self.addr.is_ipv4() == addr.is_ipv4() && self.contains(addr)
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_network_is_the_ipv4_network_it_maps() {
        let mapped = Network::parse("::ffff:127.0.0.2/128").unwrap();
        assert_eq!(mapped.to_string(), "127.0.0.2/32");
        assert!(mapped.contains("127.0.0.2".parse().unwrap()));
        assert!(mapped.contains("::ffff:127.0.0.2".parse().unwrap()));
        let wide = Network::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(wide.contains("10.9.8.7".parse().unwrap()));
        assert!(!wide.contains("11.0.0.1".parse().unwrap()));
        assert!(Network::parse("::ffff:10.0.0.0/129").is_err());
        // Below /96 it would be a network of IPv6 addresses (::/8): refused.
        let e = Network::parse("::ffff:127.0.0.0/8")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.0/8") && e.contains("::ffff:127.0.0.0/104"),
            "{e}"
        );
        // Above /32 no IPv4 prefix is meant as written: an example instead.
        let e = Network::parse("::ffff:10.0.0.0/64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("such as 10.0.0.0/24") && !e.contains("/64 for"),
            "{e}"
        );
    }

    #[test]
    fn uri_patterns_ignore_scheme_port_params_and_case() {
        let p = UriPattern::new("sip:helpdesk@contoso.com").unwrap();
        assert!(p.matches(b"sip:helpdesk@contoso.com"));
        assert!(p.matches(b"sips:HelpDesk@Contoso.COM:5061;transport=tls"));
        assert!(p.matches(b"<sip:helpdesk@contoso.com>"));
        assert!(!p.matches(b"sip:helpdesk2@contoso.com"));
        assert!(!p.matches(b"tel:+15550100"));
        let w = UriPattern::new("sip:*-rg@contoso.com").unwrap();
        assert!(w.matches(b"sip:sales-rg@contoso.com"));
        assert!(!w.matches(b"sip:sales@contoso.com"));
        assert!(UriPattern::new("sip:*@*").unwrap().matches(b"sip:a@b"));
        assert!(UriPattern::new("helpdesk").is_none());
        assert!(UriPattern::new("mailto:x@y").is_none());
    }

    #[test]
    fn other_spellings_of_the_same_address_match() {
        // What the registrar reads as helpdesk's address must not pass as
        // another: a password, escaped characters, a trailing dot.
        let p = UriPattern::new("sip:helpdesk@contoso.com").unwrap();
        for other in [
            &b"sip:helpdesk:pw@contoso.com"[..],
            b"sip:help%64esk@contoso.com",
            b"sip:%68%65%6C%70%64%65%73%6b@contoso.com",
            b"sip:helpdesk@contoso.com.",
            b"sip:helpdesk@contoso.com.:5060;transport=udp",
        ] {
            assert!(p.matches(other), "{}", String::from_utf8_lossy(other));
        }
        assert!(!p.matches(b"sip:help%65esk@contoso.com"));
        assert!(!p.matches(b"sip:helpdesk%@contoso.com"));
        // Patterns are read the same way.
        let escaped = UriPattern::new("sip:help%64esk@contoso.com").unwrap();
        assert!(escaped.matches(b"sip:helpdesk@contoso.com"));
        assert!(UriPattern::new("sip:*-rg@contoso.com")
            .unwrap()
            .matches(b"sip:sales%2Drg:secret@contoso.com"));
        // Nothing to change: the key itself, unallocated.
        assert!(matches!(
            comparable(b"helpdesk@contoso.com"),
            Cow::Borrowed(_)
        ));
        assert_eq!(&*comparable(b"50%@x"), b"50%@x");
    }

    #[test]
    fn networks() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(Network::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert_eq!(
            Network::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert!(Network::parse("nonsense").is_err());
    }
}
