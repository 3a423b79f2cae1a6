//! Byte-splice edits: the proxy's changes to a message, applied in one pass
//! over the original bytes. Everything not named by an edit is copied
//! unchanged, so signatures over other headers and the body survive.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::fields::split_list;
use super::header::HeaderName;
use super::view::SipView;

/// A set of non-overlapping splices over one message.
#[derive(Debug, Default)]
pub struct Edits {
    /// (range replaced, bytes inserted); an empty range inserts.
    ops: Vec<(Range<usize>, Vec<u8>)>,
}

impl Edits {
    /// No edits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert `bytes` at offset `at`.
    pub fn insert(&mut self, at: usize, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((at..at, bytes.into()));
        self
    }

    /// Replace `range` with `bytes`.
    pub fn replace(&mut self, range: Range<usize>, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push((range, bytes.into()));
        self
    }

    /// Remove `range`.
    pub fn remove(&mut self, range: Range<usize>) -> &mut Self {
        self.ops.push((range, Vec::new()));
        self
    }

    /// Apply to `raw`. Inserts at the same offset keep their order.
    pub fn apply(mut self, raw: &[u8]) -> Bytes {
        self.ops.sort_by_key(|(r, _)| (r.start, r.end));
        let extra: usize = self.ops.iter().map(|(_, b)| b.len()).sum();
        let mut out = BytesMut::with_capacity(raw.len() + extra);
        let mut pos = 0;
        for (range, bytes) in &self.ops {
            let start = range.start.max(pos);
            out.extend_from_slice(&raw[pos..start]);
            out.extend_from_slice(bytes);
            pos = range.end.max(start);
        }
        out.extend_from_slice(&raw[pos..]);
        out.freeze()
    }
}

/// Offset where a new header line placed before all Via headers goes.
pub fn before_first(view: &SipView, name: HeaderName) -> usize {
    view.header_fields()
        .iter()
        .find(|h| h.name == name)
        .map_or(view.start_line_end(), |h| h.line_span.start as usize)
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
    fn removing_an_only_value_drops_the_line() {
        let raw = b"A sip:x SIP/2.0\r\nRoute: <sip:p;lr>\r\nVia: SIP/2.0/UDP a\r\n\r\n";
        let v = view(raw);
        let (_, removal) = first_value(&v, HeaderName::Route).unwrap();
        let mut e = Edits::new();
        e.remove(removal);
        assert_eq!(
            &e.apply(raw)[..],
            b"A sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\r\n"
        );
    }
}
