//! Typed views of single header values: Via, CSeq, name-addr (From, To,
//! Contact, Route), SIP URI host parts and `;param` lists. All borrow from
//! the message bytes; nothing is copied.

use std::net::{IpAddr, Ipv6Addr};

use super::error::SipError;
use super::header::HeaderName;

/// `true` for SP, HTAB, CR and LF: linear white space once lines are folded.
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trim linear white space on both ends.
pub fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_lws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_lws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Whether `needle` occurs in `haystack`, ASCII case-insensitively (an
/// empty needle always does). Finds candidate positions of the needle's
/// first byte, in either case, with `memchr2`, then compares the window.
pub fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut start = 0;
    while let Some(offset) = memchr::memchr2(lower, upper, &haystack[start..]) {
        let at = start + offset;
        match haystack.get(at..at + needle.len()) {
            Some(window) if window.eq_ignore_ascii_case(needle) => return true,
            Some(_) => start = at + 1,
            None => return false,
        }
    }
    false
}

/// RFC 3261 `token` characters, as a lookup table (hot: every header name).
const TOKEN_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    table
};

/// RFC 3261 `token` characters.
pub(crate) fn is_token_char(b: u8) -> bool {
    TOKEN_CHARS[usize::from(b)]
}

/// Whether `s` is a non-empty RFC 3261 token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_char(b))
}

/// Index of the closing quote of a quoted string starting at `s[0] == '"'`.
fn quoted_end(s: &[u8]) -> Option<usize> {
    // Jump from one quote or backslash to the next; a backslash escapes
    // the byte after it.
    let mut i = 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
        if s[i] == b'"' {
            return Some(i);
        }
        i += 2;
    }
}

/// Position of the first `delim` outside quoted strings and `<...>`.
fn find_unquoted(s: &[u8], delim: u8) -> Option<usize> {
    // Jump between the bytes that matter (SIMD scans), not byte by byte:
    // outside brackets the delimiter, a quote or `<`; inside them a quote
    // or `>`. Quoted strings are skipped whole, wherever they are.
    let mut i = 0;
    let mut in_angle = false;
    loop {
        let rest = s.get(i..)?;
        i += if in_angle {
            memchr::memchr2(b'"', b'>', rest)?
        } else {
            memchr::memchr3(b'"', b'<', delim, rest)?
        };
        match s[i] {
            b'"' => i += quoted_end(&s[i..])? + 1,
            b'<' => {
                in_angle = true;
                i += 1;
            }
            b'>' => {
                in_angle = false;
                i += 1;
            }
            _ => return Some(i),
        }
    }
}

/// Split a header value into its comma-separated elements (commas inside
/// quoted strings and `<...>` do not split). Elements are trimmed.
pub fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        match find_unquoted(s, b',') {
            Some(i) => {
                rest = Some(&s[i + 1..]);
                Some(trim_lws(&s[..i]))
            }
            None => {
                rest = None;
                Some(trim_lws(s))
            }
        }
    })
}

/// A `;name[=value]` parameter list, e.g. the tail of a Via or name-addr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a>(&'a [u8]);

impl<'a> Params<'a> {
    /// Wrap raw parameter bytes (starting at the first `;`, or empty).
    pub fn new(raw: &'a [u8]) -> Self {
        Self(raw)
    }

    /// The raw bytes, starting at the first `;`.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Every parameter as (name, optional value), trimmed. Empty names are
    /// yielded as empty slices so that [`Params::check`] can refuse them.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let mut rest = self.0;
        // Without quoted strings a plain scan for ';' splits correctly.
        let quoted = memchr::memchr(b'"', self.0).is_some();
        std::iter::from_fn(move || {
            let s = trim_lws(rest);
            let s = s.strip_prefix(b";")?;
            let end = if quoted {
                find_unquoted(s, b';')
            } else {
                memchr::memchr(b';', s)
            }
            .unwrap_or(s.len());
            let item = &s[..end];
            rest = &s[end..];
            Some(match item.iter().position(|&b| b == b'=') {
                Some(eq) => (trim_lws(&item[..eq]), Some(trim_lws(&item[eq + 1..]))),
                None => (trim_lws(item), None),
            })
        })
    }

    /// Look up a parameter by case-insensitive name: `None` if absent,
    /// `Some(None)` for a flag such as `;lr` or `;rport`.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Refuse empty names, non-token names, empty values and junk between
    /// parameters (`;;`, `;=x`, `;a=`, `;a b`). One pass, no allocation.
    pub fn check(&self) -> bool {
        let s = self.0;
        let skip_lws = |mut i: usize| {
            while i < s.len() && is_lws(s[i]) {
                i += 1;
            }
            i
        };
        let mut i = skip_lws(0);
        while i < s.len() {
            if s[i] != b';' {
                return false;
            }
            i = skip_lws(i + 1);
            let name_start = i;
            while i < s.len() && is_token_char(s[i]) {
                i += 1;
            }
            if i == name_start {
                return false;
            }
            i = skip_lws(i);
            if s.get(i) == Some(&b'=') {
                i = skip_lws(i + 1);
                if s.get(i) == Some(&b'"') {
                    let Some(close) = quoted_end(&s[i..]) else {
                        return false;
                    };
                    i += close + 1;
                } else {
                    let value_start = i;
                    while i < s.len() && !matches!(s[i], b';' | b',') && !is_lws(s[i]) {
                        i += 1;
                    }
                    if i == value_start {
                        return false;
                    }
                }
                i = skip_lws(i);
            }
        }
        true
    }
}

/// The parsed top (or any) Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport token as sent: `UDP`, `TCP`, `TLS`, ...
    pub transport: &'a [u8],
    /// sent-by host, IPv6 references keep their brackets.
    pub host: &'a [u8],
    /// sent-by port, if given.
    pub port: Option<u16>,
    /// The parameters after sent-by.
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parse one Via value (`SIP/2.0/UDP host:port;params`).
    pub fn parse(value: &'a [u8]) -> Result<Self, SipError> {
        const BAD: SipError = SipError::MalformedHeader(HeaderName::Via);
        let mut s = trim_lws(value);
        // sent-protocol: name / version / transport, LWS allowed around '/'.
        // Nearly every Via starts with a plain "SIP/2.0/": skip the general parse.
        let transport = if s.len() > 8 && s[..8].eq_ignore_ascii_case(b"SIP/2.0/") {
            let end = 8 + s[8..]
                .iter()
                .position(|&b| !is_token_char(b))
                .unwrap_or(s.len() - 8);
            let transport = &s[8..end];
            if transport.is_empty() {
                return Err(BAD);
            }
            s = trim_lws(&s[end..]);
            transport
        } else {
            let mut parts = [&b""[..]; 3];
            for (i, part) in parts.iter_mut().enumerate() {
                let end = s.iter().position(|&b| !is_token_char(b)).unwrap_or(s.len());
                if end == 0 {
                    return Err(BAD);
                }
                *part = &s[..end];
                s = trim_lws(&s[end..]);
                if i < 2 {
                    s = trim_lws(s.strip_prefix(b"/").ok_or(BAD)?);
                }
            }
            if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[1] != b"2.0" {
                return Err(BAD);
            }
            parts[2]
        };
        let (host, port, rest) = parse_hostport(s).ok_or(BAD)?;
        let mut rest = trim_lws(rest);
        // RFC 2543 allowed a trailing comment; tolerate it.
        if let Some(p) = rest.iter().position(|&b| b == b'(') {
            rest = trim_lws(&rest[..p]);
        }
        let params = Params::new(rest);
        if !params.check() {
            return Err(BAD);
        }
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.get(b"branch").flatten()
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.get(b"received").flatten()
    }

    /// The `rport` parameter: `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get(b"rport")
            .map(|v| v.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()))
    }
}

/// Parse `host[:port]` at the start of `s`; returns host, port and the rest.
/// Hosts are hostnames, IPv4 addresses or bracketed IPv6 references.
pub(crate) fn parse_hostport(s: &[u8]) -> Option<(&[u8], Option<u16>, &[u8])> {
    let host_end = if s.first() == Some(&b'[') {
        let close = s.iter().position(|&b| b == b']')?;
        let inner = std::str::from_utf8(&s[1..close]).ok()?;
        inner.parse::<Ipv6Addr>().ok()?;
        close + 1
    } else {
        let end = s
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
            .unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        end
    };
    let host = &s[..host_end];
    let after = trim_lws(&s[host_end..]);
    let Some(port_part) = after.strip_prefix(b":") else {
        return Some((host, None, &s[host_end..]));
    };
    let port_part = trim_lws(port_part);
    let digits = port_part
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(port_part.len());
    if digits == 0 || digits > 5 {
        return None;
    }
    let port: u16 = std::str::from_utf8(&port_part[..digits])
        .ok()?
        .parse()
        .ok()?;
    Some((host, Some(port), &port_part[digits..]))
}

/// Check a Request-URI: no whitespace or `<>`, a scheme, and for `sip:` and
/// `sips:` a well-formed host (bracketed IPv6, numeric port).
pub fn check_request_uri(uri: &[u8]) -> Result<(), SipError> {
    const BAD: SipError = SipError::MalformedRequestUri;
    if uri.iter().any(|&b| is_lws(b) || b == b'<' || b == b'>') {
        return Err(BAD);
    }
    let colon = uri.iter().position(|&b| b == b':').ok_or(BAD)?;
    let scheme = &uri[..colon];
    if scheme.is_empty()
        || !scheme[0].is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(BAD);
    }
    if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        sip_uri_host(uri).ok_or(BAD)?;
    }
    Ok(())
}

/// The `host[:port]` part of a `sip:`/`sips:` URI, checked.
pub fn sip_uri_host(uri: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let colon = uri.iter().position(|&b| b == b':')?;
    let mut rest = &uri[colon + 1..];
    // '@' is not allowed unescaped in URI parameters or headers, so the
    // first one ends the userinfo (which may itself hold ';' and '?').
    if let Some(at) = rest.iter().position(|&b| b == b'@') {
        rest = &rest[at + 1..];
    }
    let (host, port, tail) = parse_hostport(rest)?;
    (tail.is_empty() || tail[0] == b';' || tail[0] == b'?').then_some((host, port))
}

/// Whether a host as written (a sent-by, a URI host; IPv6 in brackets or
/// not) is the IP address `ip`. Hostnames never are.
pub fn host_is_ip(host: &[u8], ip: IpAddr) -> bool {
    host_ip(host).is_some_and(|h| h == ip)
}

/// The IP address a URI or Via host is (IPv6 bracketed or not); `None`
/// for a name.
pub fn host_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// The parsed CSeq value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number, below 2^31 (RFC 3261 8.1.1.5).
    pub number: u32,
    /// Method token.
    pub method: &'a [u8],
}

impl<'a> CSeq<'a> {
    /// Parse `number LWS method`.
    pub fn parse(value: &'a [u8]) -> Result<Self, SipError> {
        const BAD: SipError = SipError::MalformedHeader(HeaderName::CSeq);
        let s = trim_lws(value);
        let digits = s.iter().position(|b| !b.is_ascii_digit()).ok_or(BAD)?;
        if digits == 0 {
            return Err(BAD);
        }
        let number = parse_decimal(&s[..digits])
            .filter(|&n| n < 1 << 31)
            .ok_or(SipError::ValueOutOfRange(HeaderName::CSeq))?;
        let method = trim_lws(&s[digits..]);
        if digits == s.len() || !is_lws(s[digits]) || !is_token(method) {
            return Err(BAD);
        }
        Ok(Self {
            number: number as u32,
            method,
        })
    }
}

/// Parse an unsigned decimal of at most 19 digits.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// The bytes `text` stands for, `%XX` escapes decoded (RFC 3261 19.1.4:
/// an escaped character is that character); a `%` not followed by two hex
/// digits stands for itself.
pub fn percent_decoded(text: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *text.get(i)?;
        let escaped = (b == b'%')
            .then(|| Some((hex(text.get(i + 1))?, hex(text.get(i + 2))?)))
            .flatten();
        Some(match escaped {
            Some((high, low)) => {
                i += 3;
                // Two hex digits make at most 0xFF.
                u8::try_from(high * 16 + low).unwrap_or(b'%')
            }
            None => {
                i += 1;
                b
            }
        })
    })
}

/// A `name-addr` or `addr-spec` with its header parameters (From, To,
/// Contact, Route, Record-Route, Path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as sent (quotes kept), if any.
    pub display: Option<&'a [u8]>,
    /// The URI, without `<>`.
    pub uri: &'a [u8],
    /// Header parameters after the URI.
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parse one name-addr / addr-spec value; `header` names the error.
    pub fn parse(value: &'a [u8], header: HeaderName) -> Result<Self, SipError> {
        let bad = SipError::MalformedHeader(header);
        let s = trim_lws(value);
        // One value: a comma outside quotes and `<>` starts another (a list
        // is split before its values get here; From and To take one).
        if find_unquoted(s, b',').is_some() {
            return Err(bad);
        }
        let (display, rest) = if s.first() == Some(&b'"') {
            let mut escaped = false;
            let close = s[1..]
                .iter()
                .position(|&b| {
                    let end = !escaped && b == b'"';
                    escaped = !escaped && b == b'\\';
                    end
                })
                .ok_or(bad)?
                + 1;
            let rest = trim_lws(&s[close + 1..]);
            if rest.first() != Some(&b'<') {
                return Err(bad);
            }
            (Some(&s[..=close]), rest)
        } else if let Some(lt) = s.iter().position(|&b| b == b'<') {
            let display = trim_lws(&s[..lt]);
            ((!display.is_empty()).then_some(display), &s[lt..])
        } else {
            // addr-spec: the URI runs to the first ';', the rest are header
            // params. A URI with `?` must be in `<>` (RFC 3261 20.10).
            let end = s.iter().position(|&b| b == b';').unwrap_or(s.len());
            let uri = trim_lws(&s[..end]);
            if uri.is_empty()
                || (uri != b"*" && !uri.contains(&b':'))
                || uri.iter().any(|&b| b == b'?' || is_lws(b))
            {
                return Err(bad);
            }
            return Ok(Self {
                display: None,
                uri,
                params: Params::new(&s[end..]),
            });
        };
        let close = rest.iter().position(|&b| b == b'>').ok_or(bad)?;
        let uri = trim_lws(&rest[1..close]);
        if uri.is_empty() || !uri.contains(&b':') {
            return Err(bad);
        }
        let params = Params::new(&rest[close + 1..]);
        let tail = trim_lws(params.as_bytes());
        if !tail.is_empty() && tail[0] != b';' {
            return Err(bad);
        }
        Ok(Self {
            display,
            uri,
            params,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get(b"tag").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte reading `find_unquoted` and `quoted_end` jump
    /// through: both must agree on every string of the bytes that matter.
    fn find_unquoted_bytewise(s: &[u8], delim: u8) -> Option<usize> {
        let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
        for (i, &b) in s.iter().enumerate() {
            if in_quotes {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_quotes = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_quotes = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                _ if b == delim && !in_angle => return Some(i),
                _ => {}
            }
        }
        None
    }

    #[test]
    fn find_unquoted_agrees_with_a_bytewise_scan() {
        let alphabet = b"\";<>\\a,";
        // Every string of up to 6 of these 7 bytes, and a pseudo-random
        // sample of longer ones.
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..6 {
            let longer: Vec<Vec<u8>> = strings
                .iter()
                .filter(|s| s.len() == strings.last().map_or(0, Vec::len))
                .flat_map(|s| alphabet.iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            strings.extend(longer);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let len = 7 + (seed % 40) as usize;
            let s = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            strings.push(s);
        }
        assert_eq!(strings.len(), 137_257 + 20_000);
        for s in &strings {
            for delim in [b';', b','] {
                assert_eq!(
                    find_unquoted(s, delim),
                    find_unquoted_bytewise(s, delim),
                    "{:?}",
                    String::from_utf8_lossy(s)
                );
            }
        }
    }

    #[test]
    fn case_insensitive_substring() {
        assert!(contains_ignore_case(
            b"Microsoft Lync 2010 ATTENDANT",
            b"attendant"
        ));
        // Needle case does not matter either, nor does a non-letter first byte.
        assert!(contains_ignore_case(
            b"RTCC/5.0 response_group_service/5.0",
            b"Response_Group_Service"
        ));
        assert!(contains_ignore_case(b"x (OC/4.0)", b"(oc/"));
        // A failed candidate does not hide a later match that overlaps it.
        assert!(contains_ignore_case(b"aaab", b"ab"));
        assert!(contains_ignore_case(b"Attendant", b""));
        assert!(contains_ignore_case(b"", b""));
        assert!(!contains_ignore_case(b"attendan", b"attendant"));
        assert!(!contains_ignore_case(b"", b"a"));
        assert!(!contains_ignore_case(b"lync", b"lyncx"));
    }

    #[test]
    fn via_with_lws_ipv6_and_params() {
        let via = Via::parse(b"SIP / 2.0 / UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3;rport;received=2001:db8::9:255").unwrap();
        assert_eq!(via.transport, b"UDP");
        assert_eq!(via.host, b"[2001:db8::9:1]");
        assert_eq!(via.port, Some(6050));
        assert_eq!(via.branch(), Some(&b"z9hG4bKas3"[..]));
        assert_eq!(via.rport(), Some(None));
        assert_eq!(via.received(), Some(&b"2001:db8::9:255"[..]));
    }

    #[test]
    fn via_refuses_empty_params_and_bad_ports() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0 host").is_err());
        assert!(Via::parse(b"").is_err());
    }

    #[test]
    fn cseq_range_and_shape() {
        let c = CSeq::parse(b"8 INVITE").unwrap();
        assert_eq!((c.number, c.method), (8, &b"INVITE"[..]));
        assert_eq!(
            CSeq::parse(b"36893488147419103232 REGISTER"),
            Err(SipError::ValueOutOfRange(HeaderName::CSeq))
        );
        assert!(CSeq::parse(b"2147483648 INVITE").is_err());
        assert!(CSeq::parse(b"INVITE").is_err());
        assert!(CSeq::parse(b"12").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            br#""Joe \"J\" User" <sip:j@example.com>;tag=abc"#,
            HeaderName::From,
        )
        .unwrap();
        assert_eq!(n.uri, b"sip:j@example.com");
        assert_eq!(n.tag(), Some(&b"abc"[..]));
        let n =
            NameAddr::parse(b"sip:caller@example.net;tag=134161461246", HeaderName::From).unwrap();
        assert_eq!(n.uri, b"sip:caller@example.net");
        assert_eq!(n.tag(), Some(&b"134161461246"[..]));
        let n =
            NameAddr::parse(b"caller<sip:caller@example.com>;tag=323", HeaderName::From).unwrap();
        assert_eq!(n.display, Some(&b"caller"[..]));
        assert!(
            NameAddr::parse(br#""Mr. J. User <sip:j.user@example.com>"#, HeaderName::To).is_err()
        );
        assert!(NameAddr::parse(b"<sip:x@y", HeaderName::To).is_err());
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let v: Vec<_> = split_list(br#""a,b" <sip:x@y;p=1,2>, <sip:z@w>"#).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1], b"<sip:z@w>");
    }

    #[test]
    fn request_uri_checks() {
        assert!(check_request_uri(b"sip:user@example.com").is_ok());
        assert!(check_request_uri(b"sip:user;par=u%40example.net@example.com").is_ok());
        assert!(check_request_uri(b"sip:[2001:db8::10]:5070").is_ok());
        assert!(check_request_uri(b"tel:+1-201-555-0123").is_ok());
        assert!(check_request_uri(b"sip:2001:db8::10").is_err());
        assert!(check_request_uri(b"sip:user@[2001:db8:::192.0.2.1]").is_err());
        assert!(check_request_uri(b"<sip:user@example.com>").is_err());
        assert!(check_request_uri(b"nocolon").is_err());
    }
}
