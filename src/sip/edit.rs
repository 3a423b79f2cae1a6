//! Byte-splice edits: the proxy's changes to a message, applied in one pass
//! over the original bytes. Everything not named by an edit is copied
//! unchanged, so signatures over other headers and the body survive.

use std::net::SocketAddr;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::fields::{host_is_ip, split_list, NameAddr, Via};
use super::header::HeaderName;
use super::view::SipView;

/// A set of non-overlapping splices over one message. What they insert is
/// written into one buffer (`insert_fmt` formats straight into it), so a
/// relayed message's edits usually cost two allocations (more only past
/// [`USUAL_EDITS`] edits or [`USUAL_TEXT_BYTES`] of text).
#[derive(Debug, Default)]
pub struct Edits {
    /// (range of the message replaced, range of `text` put in its place);
    /// an empty first range inserts, an empty second one removes.
    ops: Vec<(Range<usize>, Range<usize>)>,
    /// Every inserted byte, edit after edit.
    text: Vec<u8>,
}

/// Edits a relayed message usually has (Via, received, Max-Forwards, Path
/// or Record-Route, ...): the list is sized for them at the first edit.
const USUAL_EDITS: usize = 8;
/// Bytes those edits usually insert (a Via and a Path with their flow
/// tokens are about 400 for a UDP client; up to about 600 for an IPv6
/// stream flow with the longest client id, which grows the buffer once).
const USUAL_TEXT_BYTES: usize = 512;

impl Edits {
    /// No edits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert `bytes` at offset `at`.
    pub fn insert(&mut self, at: usize, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.replace(at..at, bytes)
    }

    /// Insert the formatted `args` at offset `at` (`format_args!`), without
    /// an intermediate `String`.
    pub fn insert_fmt(&mut self, at: usize, args: std::fmt::Arguments<'_>) -> &mut Self {
        self.replace_fmt(at..at, args)
    }

    /// Replace `range` with `bytes`.
    pub fn replace(&mut self, range: Range<usize>, bytes: impl AsRef<[u8]>) -> &mut Self {
        let start = self.reserve_text();
        self.text.extend_from_slice(bytes.as_ref());
        self.push(range, start)
    }

    /// Replace `range` with the formatted `args`.
    pub fn replace_fmt(&mut self, range: Range<usize>, args: std::fmt::Arguments<'_>) -> &mut Self {
        let start = self.reserve_text();
        // Writing into a Vec fails only when a `Display` does, which none
        // of the proxy's do: nothing half written is spliced in.
        let written = std::io::Write::write_fmt(&mut self.text, args);
        debug_assert!(written.is_ok(), "a Display of an edit failed");
        if written.is_err() {
            self.text.truncate(start);
            return self;
        }
        self.push(range, start)
    }

    /// Remove `range`.
    pub fn remove(&mut self, range: Range<usize>) -> &mut Self {
        let start = self.text.len();
        self.push(range, start)
    }

    /// Room for the usual text at the first insert; where the next starts.
    fn reserve_text(&mut self) -> usize {
        if self.text.capacity() == 0 {
            self.text.reserve(USUAL_TEXT_BYTES);
        }
        self.text.len()
    }

    /// Note an edit: `range` of the message becomes `text[text_start..]`.
    fn push(&mut self, range: Range<usize>, text_start: usize) -> &mut Self {
        if self.ops.capacity() == 0 {
            self.ops.reserve(USUAL_EDITS);
        }
        self.ops.push((range, text_start..self.text.len()));
        self
    }

    /// Apply to `raw`. Inserts at the same offset keep their order.
    pub fn apply(mut self, raw: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(raw.len() + self.text.len());
        self.apply_within(raw, 0..raw.len(), &mut out);
        out.freeze()
    }

    /// Append `raw[within]` to `out` with the edits that lie inside
    /// `within` applied (offsets are into `raw`); edits outside it are
    /// ignored. Inserts at the same offset keep their order.
    pub fn apply_within(&mut self, raw: &[u8], within: Range<usize>, out: &mut BytesMut) {
        // A stable sort: inserts at one offset stay in the order given.
        self.ops.sort_by_key(|(r, _)| (r.start, r.end));
        let mut pos = within.start;
        for (range, text) in &self.ops {
            if range.start < within.start || range.end > within.end {
                continue;
            }
            let start = range.start.max(pos);
            out.extend_from_slice(&raw[pos..start]);
            out.extend_from_slice(&self.text[text.clone()]);
            pos = range.end.max(start);
        }
        out.extend_from_slice(&raw[pos..within.end]);
    }
}

/// RFC 3261 18.2.1 `received` and RFC 3581 `rport` on the top Via (`via`,
/// parsed from `view`) of a request that came from `source`: `rport` gets
/// the source port, and `received` the source IP when the sent-by host is
/// not the source IP, or whenever `rport` is present (RFC 3581 4). Values
/// the request brought (stale or forged: only the hop that receives a
/// request sets them) are set to the source's. The relay path and the
/// proxy's own responses (RFC 3581 section 4) both use this.
pub fn mark_received(view: &SipView, via: &Via<'_>, source: SocketAddr, edits: &mut Edits) {
    let Some((range, _)) = first_value(view, HeaderName::Via) else {
        return;
    };
    // Every occurrence is set (a next hop may read the last of a repeated
    // parameter). The rport values go in first: when `rport` ends the
    // value, both edits insert at the same offset and keep this order.
    let named = |wanted: &'static [u8]| {
        via.params
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
    };
    let port = source.port();
    for (name, value) in named(b"rport") {
        let current = value
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .is_some_and(|v| v == port);
        if !current {
            set_param(view, &range, name, value, &port, edits);
        }
    }
    // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`:
    // it sent, and is told, its IPv4 address.
    let ip = source.ip().to_canonical();
    let mut received = false;
    for (name, value) in named(b"received") {
        received = true;
        if !value.is_some_and(|v| host_is_ip(v, ip)) {
            set_param(view, &range, name, value, &ip, edits);
        }
    }
    if !received && (via.rport().is_some() || !host_is_ip(via.host, ip)) {
        edits.insert_fmt(
            params_end(view, via, &range),
            format_args!(";received={ip}"),
        );
    }
}

/// Give a parameter of the top Via (`name`, with `value`; `None`: a flag)
/// the value `to`: its value replaced, or `=to` after a flag's name. Both
/// are slices of the message, so their offsets are the message's;
/// `value_range` is the Via value's (nothing outside it is edited).
fn set_param(
    view: &SipView,
    value_range: &Range<usize>,
    name: &[u8],
    value: Option<&[u8]>,
    to: &dyn std::fmt::Display,
    edits: &mut Edits,
) {
    let base = view.raw().as_ptr() as usize;
    let at = |slice: &[u8]| (slice.as_ptr() as usize).checked_sub(base);
    let inside = |r: &Range<usize>| value_range.start <= r.start && r.end <= value_range.end;
    match value {
        Some(value) => {
            let replaced = at(value).map(|start| start..start + value.len());
            if let Some(r) = replaced.filter(inside) {
                edits.replace_fmt(r, format_args!("{to}"));
            }
        }
        None => {
            let flag_end = at(name).map(|start| start + name.len());
            if let Some(end) = flag_end.filter(|end| inside(&(*end..*end))) {
                edits.insert_fmt(end, format_args!("={to}"));
            }
        }
    }
}

/// Where the top Via's parameters end: the end of its value, or before an
/// RFC 2543 comment that follows them (a parameter after the comment would
/// not be read as one).
fn params_end(view: &SipView, via: &Via<'_>, value: &Range<usize>) -> usize {
    let params = via.params.as_bytes();
    let Some(mut end) = (params.as_ptr() as usize)
        .checked_sub(view.raw().as_ptr() as usize)
        .map(|at| at + params.len())
        .filter(|end| value.contains(end))
    else {
        return value.end;
    };
    // No parameters: their empty slice stands at the comment, after the
    // white space (a fold too) that ends sent-by.
    let raw = view.raw();
    while end > value.start && matches!(raw[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        end -= 1;
    }
    end
}

/// Remove the first `n` comma-separated values of the `name` headers (in
/// order, across lines): a line all of whose values go is removed whole.
/// Returns how many values were removed (fewer when there are fewer).
pub fn remove_leading_values(
    view: &SipView,
    name: HeaderName,
    n: usize,
    edits: &mut Edits,
) -> usize {
    let base = view.raw().as_ptr() as usize;
    let mut left = n;
    for h in view.header_fields().iter().filter(|h| h.name == name) {
        if left == 0 {
            break;
        }
        let mut values = split_list(view.slice(h.value_span));
        let mut taken = 0;
        let rest = loop {
            match values.next() {
                Some(_) if taken < left => taken += 1,
                other => break other,
            }
        };
        match rest {
            // Values remain on this line: remove up to the first of them.
            Some(next) if taken > 0 => {
                let end = next.as_ptr() as usize - base;
                edits.remove(h.value_span.start as usize..end);
            }
            Some(_) => {}
            None if taken > 0 => {
                edits.remove(h.line_span.range());
            }
            None => {}
        }
        left -= taken;
    }
    n - left
}

/// Remove every header line named `name` (as [`SipView::fields_named`]
/// matches it). Returns how many lines were removed.
pub fn remove_named(view: &SipView, name: &str, edits: &mut Edits) -> usize {
    let mut removed = 0;
    for h in view.fields_named(name) {
        edits.remove(h.line_span.range());
        removed += 1;
    }
    removed
}

/// Offset where a new header line placed before all Via headers goes.
pub fn before_first(view: &SipView, name: HeaderName) -> usize {
    view.header_fields()
        .iter()
        .find(|h| h.name == name)
        .map_or(view.start_line_end(), |h| h.line_span.start as usize)
}

/// RFC 3261 16.4 for a request a strict router sent (its Request-URI is a
/// value this proxy put in a Record-Route; the caller knows): the last Route
/// value becomes the Request-URI and leaves the Route, and the old
/// Request-URI becomes the top Route, so that the request reads as a loose
/// router's would. `None` without a Route value to take.
pub fn loosen_strict_route(view: &SipView) -> Option<Bytes> {
    let ruri = view.request_uri()?;
    let ruri_start = ruri.as_ptr() as usize - view.raw().as_ptr() as usize;
    let (last, removal) = last_value(view, HeaderName::Route)?;
    let target = NameAddr::parse(&view.raw()[last], HeaderName::Route)
        .ok()?
        .uri;
    let mut edits = Edits::new();
    edits.replace(ruri_start..ruri_start + ruri.len(), target);
    edits.insert(
        before_first(view, HeaderName::Route),
        [&b"Route: <"[..], ruri, b">\r\n"].concat(),
    );
    edits.remove(removal);
    Some(edits.apply(view.raw()))
}

/// The byte range of the last comma-separated value of the last `name`
/// header, and the range to remove to drop just that value (from the comma
/// before it; the whole line when it is the only value).
pub fn last_value(view: &SipView, name: HeaderName) -> Option<(Range<usize>, Range<usize>)> {
    let h = view.header_fields().iter().rfind(|h| h.name == name)?;
    let base = view.raw().as_ptr() as usize;
    let mut values = split_list(view.slice(h.value_span));
    let first = values.next()?;
    let last = values.last();
    let value = last.unwrap_or(first);
    let start = value.as_ptr() as usize - base;
    let range = start..start + value.len();
    let removal = match last {
        None => h.line_span.range(),
        Some(_) => {
            let before = &view.raw()[h.value_span.start as usize..start];
            let comma = before.iter().rposition(|&b| b == b',')?;
            h.value_span.start as usize + comma..range.end
        }
    };
    Some((range, removal))
}

/// The byte range of the first comma-separated value of the first `name`
/// header, and the range to remove to drop just that value (the whole line
/// when it is the only value).
pub fn first_value(view: &SipView, name: HeaderName) -> Option<(Range<usize>, Range<usize>)> {
    let h = view.header_fields().iter().find(|h| h.name == name)?;
    let value = view.slice(h.value_span);
    let first = split_list(value).next()?;
    let start = first.as_ptr() as usize - view.raw().as_ptr() as usize;
    let range = start..start + first.len();
    let rest = &view.raw()[range.end..h.value_span.end as usize];
    let removal = match rest.iter().position(|&b| b == b',') {
        // Drop the value, the comma and the white space after it.
        Some(comma) => {
            let after = &view.raw()[range.end + comma + 1..h.value_span.end as usize];
            let ws = after
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(after.len());
            range.start..range.end + comma + 1 + ws
        }
        None => h.line_span.range(),
    };
    Some((range, removal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &[u8]) -> SipView {
        SipView::parse(Bytes::copy_from_slice(s)).unwrap()
    }

    #[test]
    fn a_strict_routed_request_reads_as_a_loose_routers() {
        let head = "Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK-s\r\nMax-Forwards: 70\r\nFrom: <sip:b@x>;tag=b\r\nTo: <sip:a@x>;tag=a\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n";
        // The remote target last, after another proxy's value on one line.
        let strict = format!(
            "BYE sip:tok@192.0.2.1;lr SIP/2.0\r\n{head}Route: <sip:192.0.2.7;lr>, <sip:alice@192.0.2.9:5062>\r\nContent-Length: 0\r\n\r\n"
        );
        let loose = loosen_strict_route(&view(strict.as_bytes())).unwrap();
        assert_eq!(
            std::str::from_utf8(&loose).unwrap(),
            format!(
                "BYE sip:alice@192.0.2.9:5062 SIP/2.0\r\n{head}Route: <sip:tok@192.0.2.1;lr>\r\nRoute: <sip:192.0.2.7;lr>\r\nContent-Length: 0\r\n\r\n"
            )
        );
        // The remote target the only value, on a line of its own.
        let strict = format!(
            "BYE sip:tok@192.0.2.1;lr SIP/2.0\r\n{head}Route: <sip:alice@192.0.2.9>\r\nContent-Length: 0\r\n\r\n"
        );
        let loose = loosen_strict_route(&view(strict.as_bytes())).unwrap();
        assert_eq!(
            std::str::from_utf8(&loose).unwrap(),
            format!(
                "BYE sip:alice@192.0.2.9 SIP/2.0\r\n{head}Route: <sip:tok@192.0.2.1;lr>\r\nContent-Length: 0\r\n\r\n"
            )
        );
        // No Route: nothing to take the Request-URI from.
        let bare = format!("BYE sip:tok@192.0.2.1;lr SIP/2.0\r\n{head}Content-Length: 0\r\n\r\n");
        assert!(loosen_strict_route(&view(bare.as_bytes())).is_none());
    }

    /// What `edit` returns on the view of `raw`, and `raw` with its edits applied.
    fn edited<T>(raw: &[u8], edit: impl FnOnce(&SipView, &mut Edits) -> T) -> (T, Bytes) {
        let v = view(raw);
        let mut e = Edits::new();
        let result = edit(&v, &mut e);
        (result, e.apply(raw))
    }

    #[test]
    fn splices_keep_everything_else() {
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b\r\nMax-Forwards: 7\r\n\r\n";
        let v = view(raw);
        let (first, removal) = first_value(&v, HeaderName::Via).unwrap();
        assert_eq!(&raw[first.clone()], b"SIP/2.0/UDP a;branch=z9hG4bK1");
        let mut e = Edits::new();
        e.insert(
            before_first(&v, HeaderName::Via),
            "Via: SIP/2.0/UDP p;branch=z9hG4bKp\r\n",
        );
        e.insert(first.end, ";received=1.2.3.4");
        let out = e.apply(raw);
        assert_eq!(
            &out[..],
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bKp\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1;received=1.2.3.4, SIP/2.0/UDP b\r\nMax-Forwards: 7\r\n\r\n"
        );
        let mut e = Edits::new();
        e.remove(removal);
        assert_eq!(
            &e.apply(raw)[..],
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP b\r\nMax-Forwards: 7\r\n\r\n"
        );
    }

    #[test]
    fn formatted_and_plain_edits_share_one_buffer_and_keep_their_order() {
        let raw = b"A sip:x SIP/2.0\r\nMax-Forwards: 70\r\nX: gone\r\n\r\n";
        let mf = 31..33;
        assert_eq!(&raw[mf.clone()], b"70");
        let end = raw.len() - 2;
        let mut e = Edits::new();
        // Given out of order; two inserts at the end keep theirs.
        e.insert_fmt(end, format_args!("Content-Length: {}\r\n", 0));
        e.remove(35..44);
        e.replace_fmt(mf, format_args!("{}", 70 - 1));
        e.insert(end, "Y: last\r\n");
        e.insert_fmt(0, format_args!(""));
        assert_eq!(
            &e.apply(raw)[..],
            b"A sip:x SIP/2.0\r\nMax-Forwards: 69\r\nContent-Length: 0\r\nY: last\r\n\r\n"
        );
    }

    #[test]
    fn leading_values_go_across_lines_and_within_one() {
        let raw = b"A sip:x SIP/2.0\r\nRoute: <sip:a;lr>\r\nRoute: <sip:b;lr>, <sip:c;lr>\r\nVia: SIP/2.0/UDP a\r\n\r\n";
        let (removed, out) = edited(raw, |v, e| {
            remove_leading_values(v, HeaderName::Route, 2, e)
        });
        assert_eq!(removed, 2);
        assert_eq!(
            &out[..],
            b"A sip:x SIP/2.0\r\nRoute: <sip:c;lr>\r\nVia: SIP/2.0/UDP a\r\n\r\n"
        );
        let raw = b"A sip:x SIP/2.0\r\nRoute: <sip:a;lr> ,<sip:b;lr>,<sip:c;lr>\r\n\r\n";
        let (removed, out) = edited(raw, |v, e| {
            remove_leading_values(v, HeaderName::Route, 2, e)
        });
        assert_eq!(removed, 2);
        assert_eq!(&out[..], b"A sip:x SIP/2.0\r\nRoute: <sip:c;lr>\r\n\r\n");
        let (removed, out) = edited(raw, |v, e| {
            remove_leading_values(v, HeaderName::Route, 5, e)
        });
        assert_eq!(removed, 3);
        assert_eq!(&out[..], b"A sip:x SIP/2.0\r\n\r\n");
    }

    #[test]
    fn named_headers_go_whatever_their_case() {
        let raw =
            b"A sip:x SIP/2.0\r\nX-Flag: a\r\nVia: SIP/2.0/UDP a\r\nx-flag: b\r\nX-FLAG:c\r\n\r\n";
        let (removed, out) = edited(raw, |v, e| remove_named(v, "X-Flag", e));
        assert_eq!(removed, 3);
        assert_eq!(&out[..], b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\r\n");
    }

    /// `raw` as `mark_received` leaves it for a request from 192.0.2.7:5062.
    fn marked_from_192_0_2_7_port_5062(raw: &[u8]) -> Bytes {
        let ((), out) = edited(raw, |v, e| {
            let source = "192.0.2.7:5062".parse().unwrap();
            mark_received(v, &v.top_via().unwrap(), source, e);
        });
        out
    }

    #[test]
    fn received_and_rport_on_the_top_via_only() {
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;RPORT;branch=z9hG4bK1, SIP/2.0/UDP b;rport\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;RPORT=5062;branch=z9hG4bK1;received=192.0.2.7, SIP/2.0/UDP b;rport\r\n\r\n"[..]
        );
        // Same host, no rport: nothing to say.
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062\r\n\r\n";
        assert_eq!(&marked_from_192_0_2_7_port_5062(raw)[..], &raw[..]);
    }

    #[test]
    fn a_received_or_rport_the_request_brought_is_set_to_the_source() {
        // RFC 3261 18.2.1: `received` MUST hold the source address; RFC 3581
        // 4: `rport` the source port. Only the receiving hop sets them, so a
        // value already there is stale or forged (RFC 5118 4.5's IPv6 ones too).
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9];received=[2001:db8::9];rport=5;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9];received=192.0.2.7;rport=5062;branch=z9hG4bK1\r\n\r\n"[..]
        );
        // A forged `received` beside a valueless rport; a valueless `received`.
        let raw =
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.99;rport\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.7;rport=5062\r\n\r\n"
                [..]
        );
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.7;branch=z9hG4bK1\r\n\r\n"[..]
        );
        // Every copy of a repeated one (a next hop may read the last).
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.7;received=203.0.113.66;rport=5062;rport=9\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.7;received=192.0.2.7;rport=5062;rport=5062\r\n\r\n"[..]
        );
        // Values that are the source's already are left as they are.
        let raw =
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a.example;received=192.0.2.7;rport=5062\r\n\r\n";
        assert_eq!(&marked_from_192_0_2_7_port_5062(raw)[..], &raw[..]);
    }

    #[test]
    fn received_goes_before_an_rfc_2543_comment() {
        let raw =
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;branch=z9hG4bK1 (old phone)\r\n\r\n";
        let out = marked_from_192_0_2_7_port_5062(raw);
        assert_eq!(
            &out[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;branch=z9hG4bK1;received=192.0.2.7 (old phone)\r\n\r\n"[..]
        );
        let view = SipView::parse(out).unwrap();
        assert_eq!(view.top_via().unwrap().received(), Some(&b"192.0.2.7"[..]));
        // Folded before the comment: on the first line, not the fold's.
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example\r\n (folded)\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;received=192.0.2.7\r\n (folded)\r\n\r\n"[..]
        );
        // With no parameter at all, right after sent-by.
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example (old)\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP host.example;received=192.0.2.7 (old)\r\n\r\n"[..]
        );
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_told_its_ipv4_address() {
        let mark = |raw: &[u8]| {
            edited(raw, |v, e| {
                let source = "[::ffff:192.0.2.7]:5062".parse().unwrap();
                mark_received(v, &v.top_via().unwrap(), source, e);
            })
            .1
        };
        // Its own address in the Via: nothing to say.
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(&mark(raw)[..], &raw[..]);
        let raw =
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK1;rport\r\n\r\n";
        assert_eq!(
            &mark(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK1;rport=5062;received=192.0.2.7\r\n\r\n"[..]
        );
    }

    #[test]
    fn a_spaced_rport_gets_its_port_and_a_quoted_one_is_left_alone() {
        // RFC 3261 allows white space around the `;` (RFC 3581 4: the
        // proxy fills in the flag's value wherever it stands).
        let raw =
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK1; rport\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK1; rport=5062;received=192.0.2.7\r\n\r\n"[..]
        );
        // `;rport` inside a quoted value is the client's text, not the flag.
        let raw = b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;x=\";rport \";rport;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(
            &marked_from_192_0_2_7_port_5062(raw)[..],
            &b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;x=\";rport \";rport=5062;branch=z9hG4bK1;received=192.0.2.7\r\n\r\n"[..]
        );
    }

    #[test]
    fn removing_an_only_value_drops_the_line() {
        let raw = b"A sip:x SIP/2.0\r\nRoute: <sip:p;lr>\r\nVia: SIP/2.0/UDP a\r\n\r\n";
        let ((), out) = edited(raw, |v, e| {
            let (_, removal) = first_value(v, HeaderName::Route).unwrap();
            e.remove(removal);
        });
        assert_eq!(&out[..], b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\r\n");
    }
}
