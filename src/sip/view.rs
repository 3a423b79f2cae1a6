//! The message view: a zero-copy index over the bytes of one SIP message.
//!
//! Parsing records where the start line, each header and the body sit in
//! the buffer; the bytes themselves are never copied or rewritten, so what
//! the filter does not own is relayed exactly as received. No I/O here.

use std::ops::Range;

use bytes::Bytes;
use memchr::memchr;

use super::error::SipError;
use super::fields::{
    check_request_uri, is_lws, is_token, is_token_char, parse_decimal, split_list, CSeq, NameAddr,
    Params, Via,
};
use super::header::HeaderName;

/// A byte range inside the message buffer (u32 keeps the index small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// As a `usize` range for slicing.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The request methods the filter treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE.
    Invite,
    /// ACK.
    Ack,
    /// BYE.
    Bye,
    /// CANCEL.
    Cancel,
    /// REGISTER.
    Register,
    /// OPTIONS.
    Options,
    /// Any other (extension) method; its bytes are in the view.
    Other,
}

impl Method {
    /// Recognise a method token (methods are case-sensitive, RFC 3261 7.1).
    pub fn from_bytes(token: &[u8]) -> Self {
        match token {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"REGISTER" => Self::Register,
            b"OPTIONS" => Self::Options,
            _ => Self::Other,
        }
    }
}

/// One header line of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField {
    /// The recognised name.
    pub name: HeaderName,
    /// The name as sent.
    pub name_span: Span,
    /// The value, trimmed; folded continuation lines stay inside it.
    pub value_span: Span,
    /// The whole line(s) including the final line break, for splicing.
    pub line_span: Span,
}

/// Request-Line or Status-Line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// A request.
    Request {
        /// Recognised method.
        method: Method,
        /// Method token as sent.
        method_span: Span,
        /// Request-URI.
        uri_span: Span,
    },
    /// A response.
    Response {
        /// Status code, 100 to 699.
        code: u16,
        /// Reason phrase (may be empty).
        reason_span: Span,
    },
}

/// Where `part`, a slice of `buf`, sits in it.
fn span_within(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    Span::new(start, start + part.len())
}

/// Where the parts of a parsed name-addr sit in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AddrSpans {
    display: Option<Span>,
    uri: Span,
    params: Span,
}

impl AddrSpans {
    fn of(buf: &[u8], addr: &NameAddr<'_>) -> Self {
        let span = |part: &[u8]| span_within(buf, part);
        Self {
            display: addr.display.map(span),
            uri: span(addr.uri),
            params: span(addr.params.as_bytes()),
        }
    }
}

/// Where the parts of the top Via value sit.
#[derive(Debug, Clone, Copy)]
struct ViaSpans {
    transport: Span,
    host: Span,
    port: Option<u16>,
    params: Span,
}

impl ViaSpans {
    fn of(buf: &[u8], via: &Via<'_>) -> Self {
        let span = |part: &[u8]| span_within(buf, part);
        Self {
            transport: span(via.transport),
            host: span(via.host),
            port: via.port,
            params: span(via.params.as_bytes()),
        }
    }
}

/// A parsed SIP message: the raw bytes plus an index into them.
#[derive(Debug, Clone)]
pub struct SipView {
    raw: Bytes,
    start_line: StartLine,
    /// A problem with the Request-URI, version, a header line or
    /// Content-Length, reported by `check`.
    problem: Option<SipError>,
    /// Where the start line ends (after its line break).
    start_line_end: u32,
    headers: Vec<HeaderField>,
    /// Bit `name as u32` set for every known header present.
    seen: u64,
    /// The first single-valued header that appears twice.
    duplicate: Option<HeaderName>,
    /// From and To, parsed once (the filter reads them several times).
    from: Result<AddrSpans, SipError>,
    to: Result<AddrSpans, SipError>,
    /// The top Via value, parsed once (the proxy reads it for the branch,
    /// the transaction, `received`, and a response's way back).
    top_via: Result<ViaSpans, SipError>,
    /// Where the blank line that ends the header section starts.
    headers_end: u32,
    body: Span,
}

/// Room for the headers of a Lync INVITE (about 26) without regrowing the index.
const HEADER_CAPACITY: usize = 32;

/// End of the line starting at `from`: (content end, next line start).
/// Accepts CRLF and bare LF.
fn line_end(raw: &[u8], from: usize) -> Option<(usize, usize)> {
    let nl = from + memchr(b'\n', &raw[from..])?;
    let end = if nl > from && raw[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

/// Whether the line whose content ends at `stop`, with the next line at
/// `next` (from [`line_end`]), ends in a bare LF instead of CRLF.
#[inline]
fn ends_in_bare_lf(stop: usize, next: usize) -> bool {
    next - stop == 1
}

/// A control character in the start line or header section (from `start`
/// to the section's blank line), as the problem that names where it is.
#[inline]
fn control_character(buf: &[u8], start: usize, section: &HeaderSection) -> Option<SipError> {
    let at = start + first_control_character(&buf[start..section.end])?;
    let header = section
        .headers
        .iter()
        .find(|h| h.line_span.range().contains(&at))
        .map(|h| h.name);
    Some(SipError::ControlCharacter(header))
}

/// Bytes [`first_control_character`] checks at a time (its per-block
/// counters are bytes).
const CONTROL_BLOCK: usize = 128;
const _: () = assert!(CONTROL_BLOCK <= u8::MAX as usize);

/// A control character of a header field: %x00-1F but HT (and LF and CR,
/// which end lines), and DEL. Without a branch (`&`, `|`), so that a block
/// of them is checked with vector compares.
#[inline(always)]
fn is_control(b: u8) -> bool {
    (b < 0x20) & (b != b'\t') & (b != b'\r') & (b != b'\n') | (b == 0x7f)
}

/// What one pass over a message's lines counts: whether a control
/// character ([`is_control`]) is among them, and how many CRs and LFs.
#[derive(Default)]
struct LineBytes {
    controls: bool,
    crs: usize,
    lfs: usize,
}

impl LineBytes {
    /// Count `text` a block at a time (each block without a branch per
    /// byte, with vector compares).
    fn of(text: &[u8]) -> Self {
        let mut counted = Self::default();
        let mut blocks = text.chunks_exact(CONTROL_BLOCK);
        for block in blocks.by_ref() {
            counted.add(block);
        }
        counted.add(blocks.remainder());
        counted
    }

    #[inline(always)]
    fn add(&mut self, block: &[u8]) {
        let (mut controls, mut crs, mut lfs) = (0u8, 0u8, 0u8);
        for &b in block {
            controls |= u8::from(is_control(b));
            crs += u8::from(b == b'\r');
            lfs += u8::from(b == b'\n');
        }
        self.controls |= controls != 0;
        self.crs += usize::from(crs);
        self.lfs += usize::from(lfs);
    }
}

/// Where the first control character of `text` (the start line, then
/// header lines, each ended by a line break) sits, if any: a byte of
/// %x00-1F other than HT, or DEL (RFC 3261 25.1 admits none in a header
/// field), and a CR not followed by LF. One escaped by a backslash inside
/// a quoted string or a comment of a header field (a quoted-pair, 25.1) is
/// allowed, other than CR and LF; so is LF itself, which ends the lines.
fn first_control_character(text: &[u8]) -> Option<usize> {
    // Almost every message has none: one pass that counts, before looking
    // closer. Without a bare LF (refused apart), a CR that ends no line
    // makes more CRs than LFs.
    let counted = LineBytes::of(text);
    if !counted.controls && counted.crs <= counted.lfs {
        return None;
    }
    let mut quoted = QuotedPairs::default();
    let mut start_line = true;
    for (i, &b) in text.iter().enumerate() {
        let escapable = !start_line && quoted.escapes_next();
        quoted.step(b);
        match b {
            b'\r' if text.get(i + 1) != Some(&b'\n') => return Some(i),
            b'\n' => {
                start_line = false;
                quoted = QuotedPairs::default();
            }
            _ if is_control(b) && !escapable => return Some(i),
            _ => {}
        }
    }
    None
}

/// Where a header line stands for quoted-pairs (RFC 3261 25.1): inside a
/// quoted string or a comment, a backslash escapes the byte after it.
#[derive(Default)]
struct QuotedPairs {
    in_quotes: bool,
    /// Comments nest.
    comments: u32,
    /// The byte before was an escaping backslash.
    backslash: bool,
}

impl QuotedPairs {
    /// Whether the next byte is escaped.
    fn escapes_next(&self) -> bool {
        self.backslash
    }

    fn step(&mut self, b: u8) {
        if self.backslash {
            self.backslash = false;
            return;
        }
        match b {
            b'\\' if self.in_quotes || self.comments > 0 => self.backslash = true,
            b'"' if self.comments == 0 => self.in_quotes = !self.in_quotes,
            b'(' if !self.in_quotes => self.comments += 1,
            b')' if !self.in_quotes => self.comments = self.comments.saturating_sub(1),
            _ => {}
        }
    }
}

/// The header section of a message, indexed by [`index_headers`].
struct HeaderSection {
    headers: Vec<HeaderField>,
    /// Bit `name as u32` set for every known header present.
    seen: u64,
    /// The first single-valued header that appears twice.
    duplicate: Option<HeaderName>,
    /// Where the blank line that ends the section starts.
    end: usize,
    /// Where the body starts (after that blank line).
    body_start: usize,
    /// A line that is no header field (skipped, so that a 400 can still
    /// copy the others; `check` reports it).
    bad_line: Option<SipError>,
}

/// Where the start line begins: after the CRLFs stream transports may
/// carry before it (RFC 3261 7.5).
#[inline]
pub(super) fn skip_leading_crlfs(buf: &[u8]) -> usize {
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    pos
}

/// Index the header lines from `pos` up to the blank line that ends them,
/// joining folded continuation lines to their header and noting which
/// known headers are present and the first single-valued one repeated.
#[inline]
fn index_headers(buf: &[u8], mut pos: usize) -> Result<HeaderSection, SipError> {
    let mut headers: Vec<HeaderField> = Vec::with_capacity(HEADER_CAPACITY);
    let mut seen = 0u64;
    let mut duplicate = None;
    let mut bad_line = None;
    // Inside a skipped line: its continuation lines go with it.
    let mut skipping = false;
    loop {
        let (stop, next) = line_end(buf, pos).ok_or(SipError::UnterminatedHeaders)?;
        if ends_in_bare_lf(stop, next) && bad_line.is_none() {
            bad_line = Some(SipError::BareLineFeed);
        }
        if stop == pos {
            return Ok(HeaderSection {
                headers,
                seen,
                duplicate,
                end: pos,
                body_start: next,
                bad_line,
            });
        }
        if matches!(buf[pos], b' ' | b'\t') {
            match headers.last_mut() {
                Some(last) if !skipping => extend_folded(last, buf, pos, stop, next),
                _ => bad_line = Some(SipError::MalformedHeaderLine),
            }
        } else {
            skipping = false;
            match parse_header_line(buf, pos, stop, next) {
                Ok(field) => {
                    let bit = name_bit(field.name);
                    if seen & bit != 0 && field.name.is_single() && duplicate.is_none() {
                        duplicate = Some(field.name);
                    }
                    seen |= bit;
                    headers.push(field);
                }
                Err(e) => {
                    bad_line = Some(e);
                    skipping = true;
                }
            }
        }
        pos = next;
    }
}

/// Join the folded continuation line `pos..stop` (next line at `next`) to
/// the header `last`: its value grows to the line's trimmed end (starting
/// there if it was empty) and its line to the next line.
#[inline]
fn extend_folded(last: &mut HeaderField, buf: &[u8], pos: usize, stop: usize, next: usize) {
    let value_end = pos + trim_end(&buf[pos..stop]);
    if value_end > pos {
        if last.value_span.start == last.value_span.end {
            last.value_span.start = (pos + leading_ws(&buf[pos..stop])) as u32;
        }
        last.value_span.end = value_end as u32;
    }
    last.line_span.end = next as u32;
}

/// From or To (`name`), parsed from its first header: where its parts sit.
#[inline]
fn addr_spans(
    buf: &[u8],
    headers: &[HeaderField],
    name: HeaderName,
) -> Result<AddrSpans, SipError> {
    let h = headers
        .iter()
        .find(|h| h.name == name)
        .ok_or(SipError::MissingHeader(name))?;
    NameAddr::parse(&buf[h.value_span.range()], name).map(|a| AddrSpans::of(buf, &a))
}

/// The length of the body starting at `body_start`: Content-Length's, or
/// what is available when it is absent, invalid or too long. A problem
/// with it is added to `problem` (the first problem wins).
#[inline]
fn body_length(
    buf: &[u8],
    headers: &[HeaderField],
    body_start: usize,
    mut problem: Option<SipError>,
) -> (usize, Option<SipError>) {
    let available = buf.len() - body_start;
    let len = match content_length(buf, headers) {
        Ok(Some(n)) if n > available => {
            problem = problem.or(Some(SipError::BodyTruncated));
            available
        }
        Ok(Some(n)) => n,
        Ok(None) => available,
        Err(e) => {
            problem = problem.or(Some(e));
            available
        }
    };
    (len, problem)
}

impl SipView {
    /// Index a message. `raw` may hold trailing octets after the body
    /// (a datagram with extra data): they are cut off (RFC 3261 18.3).
    ///
    /// This checks structure and framing only; [`SipView::check`] checks the
    /// header values a proxy relies on.
    pub fn parse(raw: Bytes) -> Result<Self, SipError> {
        let buf = &raw[..];
        let pos = skip_leading_crlfs(buf);
        let (line_stop, next) = line_end(buf, pos).ok_or(SipError::UnterminatedHeaders)?;
        let (start_line, start_line_problem) = parse_start_line(buf, pos, line_stop)?;
        let start_line_problem = start_line_problem
            .or(ends_in_bare_lf(line_stop, next).then_some(SipError::BareLineFeed));
        let section = index_headers(buf, next)?;
        let from = addr_spans(buf, &section.headers, HeaderName::From);
        let to = addr_spans(buf, &section.headers, HeaderName::To);
        let body_start = section.body_start;
        // Problems with a header line or Content-Length keep the view (so
        // a 400 can copy its headers); `check` reports them.
        let (body_len, problem) = body_length(
            buf,
            &section.headers,
            body_start,
            start_line_problem
                .or(section.bad_line)
                .or_else(|| control_character(buf, pos, &section)),
        );
        let end = body_start + body_len;
        let start_line_end = next_after_start(buf);
        let mut view = Self {
            raw: if end == raw.len() {
                raw
            } else {
                raw.slice(..end)
            },
            start_line,
            problem,
            start_line_end,
            headers: section.headers,
            seen: section.seen,
            duplicate: section.duplicate,
            from,
            to,
            top_via: Err(SipError::MissingHeader(HeaderName::Via)),
            headers_end: section.end as u32,
            body: Span::new(body_start, end),
        };
        let top_via = view
            .values(HeaderName::Via)
            .next()
            .map(|value| Via::parse(value).map(|via| ViaSpans::of(&view.raw, &via)));
        if let Some(top_via) = top_via {
            view.top_via = top_via;
        }
        Ok(view)
    }

    /// Check the values a stateless proxy relies on: mandatory headers,
    /// single-valued headers, CSeq, Max-Forwards, Expires, every Via, From
    /// and To, and the Request-URI.
    pub fn check(&self) -> Result<(), SipError> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            if self.seen & name_bit(name) == 0 {
                return Err(SipError::MissingHeader(name));
            }
        }
        if let Some(name) = self.duplicate {
            return Err(SipError::DuplicateHeader(name));
        }
        let cseq = self.cseq()?;
        if let StartLine::Request {
            method_span,
            uri_span,
            ..
        } = self.start_line
        {
            if cseq.method != &self.raw[method_span.range()] {
                return Err(SipError::CSeqMethodMismatch);
            }
            check_request_uri(&self.raw[uri_span.range()])?;
            self.max_forwards()?;
            self.expires()?;
        }
        // callid = word ["@" word] (RFC 3261 25.1): not empty, no white
        // space, no comma.
        if self
            .call_id()
            .is_none_or(|id| id.is_empty() || id.iter().any(|&b| is_lws(b) || b == b','))
        {
            return Err(SipError::MalformedHeader(HeaderName::CallId));
        }
        // The top one was parsed with the view.
        self.top_via?;
        for value in self.values(HeaderName::Via).skip(1) {
            Via::parse(value)?;
        }
        // Tags are tokens (RFC 3261 25.1); the proxy copies them into Record-Route.
        for (name, addr) in [
            (HeaderName::From, self.from()?),
            (HeaderName::To, self.to()?),
        ] {
            if addr.tag().is_some_and(|t| !is_token(t)) {
                return Err(SipError::MalformedHeader(name));
            }
        }
        // The proxy routes by the Route values and removes its own: a value
        // it cannot read is refused, never relayed as it is.
        for route in self.routes() {
            route?;
        }
        Ok(())
    }

    /// [`check`](Self::check), and for a message that came over a stream
    /// transport (TCP, TLS, `stream`) the Content-Length that frames it
    /// there, which it must carry (RFC 3261 18.3, 20.14).
    pub fn check_for_transport(&self, stream: bool) -> Result<(), SipError> {
        self.check()?;
        if stream && self.seen & name_bit(HeaderName::ContentLength) == 0 {
            return Err(SipError::MissingHeader(HeaderName::ContentLength));
        }
        Ok(())
    }

    // === raw access ===

    /// The message bytes (trailing octets beyond the body already cut off).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The bytes of a span.
    pub fn slice(&self, span: Span) -> &[u8] {
        &self.raw[span.range()]
    }

    /// The start line.
    pub fn start_line(&self) -> StartLine {
        self.start_line
    }

    /// Offset just past the start line's line break (where headers begin).
    pub fn start_line_end(&self) -> usize {
        self.start_line_end as usize
    }

    /// Offset of the blank line ending the header section.
    pub fn headers_end(&self) -> usize {
        self.headers_end as usize
    }

    /// Every header line in order.
    pub fn header_fields(&self) -> &[HeaderField] {
        &self.headers
    }

    /// The body bytes, bounded by Content-Length.
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body.range()]
    }

    // === start line ===

    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<Method> {
        match self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as sent (for requests).
    pub fn method_bytes(&self) -> Option<&[u8]> {
        match self.start_line {
            StartLine::Request { method_span, .. } => Some(&self.raw[method_span.range()]),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (for requests).
    pub fn request_uri(&self) -> Option<&[u8]> {
        match self.start_line {
            StartLine::Request { uri_span, .. } => Some(&self.raw[uri_span.range()]),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (for responses).
    pub fn status(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    // === headers ===

    /// The first value of a known header.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        if self.seen & name_bit(name) == 0 {
            return None;
        }
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| &self.raw[h.value_span.range()])
    }

    /// The first value of any header by its name as written (full form,
    /// case-insensitive); works for extension headers too.
    pub fn header_named(&self, name: &str) -> Option<&[u8]> {
        self.fields_named(name)
            .next()
            .map(|h| &self.raw[h.value_span.range()])
    }

    /// Every header line with this name as written (full form,
    /// case-insensitive; a known header also matches its compact form),
    /// in order; works for extension headers too.
    pub fn fields_named<'v>(&'v self, name: &'v str) -> impl Iterator<Item = &'v HeaderField> {
        let known = HeaderName::from_bytes(name.as_bytes());
        self.headers.iter().filter(move |h| {
            if known == HeaderName::Other {
                h.name == HeaderName::Other
                    && self.raw[h.name_span.range()].eq_ignore_ascii_case(name.as_bytes())
            } else {
                h.name == known
            }
        })
    }

    /// Every header line value of a known header, in order.
    pub fn headers(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| &self.raw[h.value_span.range()])
    }

    /// Every comma-separated value of a list header across all its lines.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.headers(name).flat_map(split_list)
    }

    /// The top Via, parsed.
    pub fn top_via(&self) -> Result<Via<'_>, SipError> {
        let spans = self.top_via?;
        Ok(Via {
            transport: self.slice(spans.transport),
            host: self.slice(spans.host),
            port: spans.port,
            params: Params::new(self.slice(spans.params)),
        })
    }

    /// Call-ID.
    pub fn call_id(&self) -> Option<&[u8]> {
        self.header(HeaderName::CallId)
    }

    /// CSeq, parsed.
    pub fn cseq(&self) -> Result<CSeq<'_>, SipError> {
        CSeq::parse(
            self.header(HeaderName::CSeq)
                .ok_or(SipError::MissingHeader(HeaderName::CSeq))?,
        )
    }

    /// From, parsed.
    pub fn from(&self) -> Result<NameAddr<'_>, SipError> {
        self.name_addr(HeaderName::From)
    }

    /// To, parsed.
    pub fn to(&self) -> Result<NameAddr<'_>, SipError> {
        self.name_addr(HeaderName::To)
    }

    fn name_addr(&self, name: HeaderName) -> Result<NameAddr<'_>, SipError> {
        let spans = if name == HeaderName::From {
            self.from
        } else {
            self.to
        }?;
        Ok(NameAddr {
            display: spans.display.map(|s| self.slice(s)),
            uri: self.slice(spans.uri),
            params: Params::new(self.slice(spans.params)),
        })
    }

    /// Every Contact value, parsed (`*` is a valid URI here).
    pub fn contacts(&self) -> impl Iterator<Item = Result<NameAddr<'_>, SipError>> {
        self.values(HeaderName::Contact)
            .map(|v| NameAddr::parse(v, HeaderName::Contact))
    }

    /// Every Route value, parsed, top first.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, SipError>> {
        self.values(HeaderName::Route)
            .map(|v| NameAddr::parse(v, HeaderName::Route))
    }

    /// Expires in seconds (0 to 2^32-1), if present.
    pub fn expires(&self) -> Result<Option<u32>, SipError> {
        self.header(HeaderName::Expires)
            .map(|v| {
                parse_decimal(v)
                    .ok_or(SipError::MalformedHeader(HeaderName::Expires))
                    .and_then(|n| {
                        u32::try_from(n).map_err(|_| SipError::ValueOutOfRange(HeaderName::Expires))
                    })
            })
            .transpose()
            .map_err(|e| match (e, self.header(HeaderName::Expires)) {
                // An all-digit value too long for u64 is out of range, not malformed.
                (_, Some(v)) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => {
                    SipError::ValueOutOfRange(HeaderName::Expires)
                }
                (e, _) => e,
            })
    }

    /// Max-Forwards (0 to 255), if present.
    pub fn max_forwards(&self) -> Result<Option<u8>, SipError> {
        let Some(v) = self.header(HeaderName::MaxForwards) else {
            return Ok(None);
        };
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(SipError::MalformedHeader(HeaderName::MaxForwards));
        }
        parse_decimal(v)
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or(SipError::ValueOutOfRange(HeaderName::MaxForwards))
    }

    /// Content-Length as sent (already checked by [`SipView::parse`]).
    pub fn content_length(&self) -> Option<usize> {
        self.header(HeaderName::ContentLength)
            .and_then(parse_decimal)
            .map(|n| n as usize)
    }

    /// User-Agent, if present.
    pub fn user_agent(&self) -> Option<&[u8]> {
        self.header(HeaderName::UserAgent)
    }

    /// Every Proxy-Require option tag.
    pub fn proxy_require(&self) -> impl Iterator<Item = &[u8]> {
        self.values(HeaderName::ProxyRequire)
            .filter(|v| !v.is_empty())
    }
}

/// The presence bit of a header name.
fn name_bit(name: HeaderName) -> u64 {
    1 << (name as u32)
}

/// The Content-Length value: `None` when absent.
fn content_length(buf: &[u8], headers: &[HeaderField]) -> Result<Option<usize>, SipError> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
    {
        let value = &buf[h.value_span.range()];
        if found.is_some() || value.contains(&b',') {
            return Err(SipError::SeveralContentLengths);
        }
        let n = parse_decimal(value)
            .filter(|&n| n <= u64::from(u32::MAX))
            .ok_or(SipError::MalformedContentLength)?;
        found = Some(n as usize);
    }
    Ok(found)
}

/// Offset just past the start line.
fn next_after_start(buf: &[u8]) -> u32 {
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    line_end(buf, pos).map_or(0, |(_, next)| next as u32)
}

fn leading_ws(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len())
}

/// Length of `s` without trailing white space.
fn trim_end(s: &[u8]) -> usize {
    s.iter().rposition(|&b| !is_lws(b)).map_or(0, |p| p + 1)
}

/// Parse the start line. A request line whose method is readable but whose
/// URI or version is wrong still yields a view (so a 400 or 505 can copy its
/// headers); the problem is returned beside it and reported by `check`.
fn parse_start_line(
    buf: &[u8],
    start: usize,
    stop: usize,
) -> Result<(StartLine, Option<SipError>), SipError> {
    let line = &buf[start..stop];
    let sp1 = memchr(b' ', line).ok_or(SipError::MalformedStartLine)?;
    if crate::vocabulary::starts_as_response(line) {
        check_version(&line[..sp1])?;
        let rest = &line[sp1 + 1..];
        let code_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if code_len != 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return Err(SipError::MalformedStatusCode);
        }
        let code = parse_decimal(&rest[..3]).unwrap_or(0) as u16;
        if !(100..=699).contains(&code) {
            return Err(SipError::MalformedStatusCode);
        }
        let reason_start = start + sp1 + 1 + (3 + 1).min(rest.len());
        let response = StartLine::Response {
            code,
            reason_span: Span::new(reason_start, stop),
        };
        return Ok((response, None));
    }
    let method = &line[..sp1];
    if !is_token(method) {
        return Err(SipError::MalformedStartLine);
    }
    let last_sp = memchr::memrchr(b' ', line).ok_or(SipError::MalformedStartLine)?;
    if last_sp == sp1 {
        return Err(SipError::MalformedStartLine);
    }
    let uri = &line[sp1 + 1..last_sp];
    let version = &line[last_sp + 1..];
    let problem = if uri.first() == Some(&b' ') || uri.last() == Some(&b' ') || version.is_empty() {
        Some(SipError::MalformedStartLine)
    } else if uri.iter().any(|&b| is_lws(b)) {
        Some(SipError::MalformedRequestUri)
    } else if !version
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/"))
    {
        Some(SipError::MalformedStartLine)
    } else {
        check_version(version).err()
    };
    let request = StartLine::Request {
        method: Method::from_bytes(method),
        method_span: Span::new(start, start + sp1),
        uri_span: Span::new(start + sp1 + 1, start + last_sp),
    };
    Ok((request, problem))
}

fn check_version(v: &[u8]) -> Result<(), SipError> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let number = v.get(4..).unwrap_or_default();
    if number.iter().all(|&b| b.is_ascii_digit() || b == b'.') && !number.is_empty() {
        Err(SipError::VersionNotSupported)
    } else {
        Err(SipError::MalformedStartLine)
    }
}

fn parse_header_line(
    buf: &[u8],
    start: usize,
    stop: usize,
    next: usize,
) -> Result<HeaderField, SipError> {
    let line = &buf[start..stop];
    let name_len = line
        .iter()
        .position(|&b| !is_token_char(b))
        .unwrap_or(line.len());
    // Only white space may sit between the name and the colon.
    let colon = name_len
        + line[name_len..]
            .iter()
            .position(|&b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(line.len() - name_len);
    if name_len == 0 || line.get(colon) != Some(&b':') {
        return Err(SipError::MalformedHeaderLine);
    }
    let name = &line[..name_len];
    let value_start = start + colon + 1 + leading_ws(&line[colon + 1..]);
    let value_end = (start + trim_end(line)).max(value_start);
    Ok(HeaderField {
        name: HeaderName::from_bytes(name),
        name_span: Span::new(start, start + name_len),
        value_span: Span::new(value_start, value_end),
        line_span: Span::new(start, next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &str) -> Result<SipView, SipError> {
        let v = SipView::parse(Bytes::copy_from_slice(s.as_bytes()))?;
        v.check()?;
        Ok(v)
    }

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
        v: SIP/2.0/TLS 10.0.0.5:51234;branch=z9hG4bKabc;ms-received-port=51234\r\n\
        Max-Forwards: 70\r\n\
        f: <sip:alice@example.com>;tag=1\r\n\
        t: <sip:alice@example.com>\r\n\
        i: abc@10.0.0.5\r\n\
        CSeq: 1 REGISTER\r\n\
        m: <sip:10.0.0.5:51234;transport=tls>;+sip.instance=\"<urn:uuid:1>\"\r\n\
        User-Agent: UCCAPI/15.0.4481.1000\r\n OC/15.0.4481.1000 (Microsoft Lync)\r\n\
        Supported : gruu-10, adhoclist\r\n\
        Expires: 3600\r\n\
        l: 4\r\n\
        \r\n\
        bodyEXTRA";

    #[test]
    fn indexes_compact_folded_and_spaced_headers() {
        let v = view(REGISTER).unwrap();
        assert_eq!(v.method(), Some(Method::Register));
        assert_eq!(v.request_uri(), Some(&b"sip:example.com"[..]));
        assert_eq!(v.call_id(), Some(&b"abc@10.0.0.5"[..]));
        assert_eq!(
            v.user_agent(),
            Some(&b"UCCAPI/15.0.4481.1000\r\n OC/15.0.4481.1000 (Microsoft Lync)"[..])
        );
        let sup: Vec<_> = v.values(HeaderName::Supported).collect();
        assert_eq!(sup, [&b"gruu-10"[..], b"adhoclist"]);
        let via = v.top_via().unwrap();
        assert_eq!(via.transport, b"TLS");
        assert_eq!(via.port, Some(51234));
        assert_eq!(v.expires(), Ok(Some(3600)));
        assert_eq!(v.max_forwards(), Ok(Some(70)));
        assert_eq!(v.body(), b"body");
        assert!(v.raw().ends_with(b"\r\n\r\nbody"), "trailing octets cut");
        assert_eq!(
            v.header_named("supported"),
            Some(&b"gruu-10, adhoclist"[..])
        );
        assert_eq!(v.contacts().count(), 1);
    }

    #[test]
    fn refusals_name_the_problem() {
        let base = REGISTER.replace("bodyEXTRA", "body");
        let cases: &[(&str, &str, SipError)] = &[
            ("SIP/2.0\r\n", "SIP/7.0\r\n", SipError::VersionNotSupported),
            (
                "CSeq: 1 REGISTER",
                "CSeq: 1 INVITE",
                SipError::CSeqMethodMismatch,
            ),
            (
                "i: abc@10.0.0.5\r\n",
                "",
                SipError::MissingHeader(HeaderName::CallId),
            ),
            ("l: 4", "l: 40", SipError::BodyTruncated),
            ("l: 4", "l: -4", SipError::MalformedContentLength),
            ("l: 4", "l: 4, 4", SipError::SeveralContentLengths),
            (
                "l: 4\r\n",
                "l: 4\r\nContent-Length: 4\r\n",
                SipError::SeveralContentLengths,
            ),
            (
                "Max-Forwards: 70",
                "Max-Forwards: 300",
                SipError::ValueOutOfRange(HeaderName::MaxForwards),
            ),
            (
                "Expires: 3600",
                "Expires: 99999999999",
                SipError::ValueOutOfRange(HeaderName::Expires),
            ),
            (
                "t: <sip:alice@example.com>",
                "t: \"Alice <sip:alice@example.com>",
                SipError::MalformedHeader(HeaderName::To),
            ),
            (
                "i: abc@10.0.0.5\r\n",
                "i: abc@10.0.0.5\r\ni: other\r\n",
                SipError::DuplicateHeader(HeaderName::CallId),
            ),
            (
                "i: abc@10.0.0.5\r\n",
                "i: \r\n",
                SipError::MalformedHeader(HeaderName::CallId),
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nBad Header: x\r\n",
                SipError::MalformedHeaderLine,
            ),
            (
                "REGISTER sip:example.com SIP",
                "REGISTER  sip:example.com SIP",
                SipError::MalformedStartLine,
            ),
            (
                "REGISTER sip:example.com SIP",
                "REGISTER <sip:example.com> SIP",
                SipError::MalformedRequestUri,
            ),
            // Two values in a header that takes one (RFC 3261 20.10: a URI
            // with a comma must be in `<>`; 25.1: no comma in a Call-ID).
            (
                "t: <sip:alice@example.com>",
                "t: sip:alice@example.com, sip:bob@example.net",
                SipError::MalformedHeader(HeaderName::To),
            ),
            (
                "f: <sip:alice@example.com>;tag=1",
                "f: sip:alice@example.com, sip:bob@example.net;tag=1",
                SipError::MalformedHeader(HeaderName::From),
            ),
            (
                "t: <sip:alice@example.com>",
                "t: <sip:alice@example.com>;x=1, <sip:bob@example.net>",
                SipError::MalformedHeader(HeaderName::To),
            ),
            (
                "t: <sip:alice@example.com>",
                "t: sip:alice@example.com;x=1, sip:bob@example.net",
                SipError::MalformedHeader(HeaderName::To),
            ),
            (
                "f: <sip:alice@example.com>;tag=1",
                "f: <sip:alice@example.com>;tag=1;x=1, <sip:bob@example.net>",
                SipError::MalformedHeader(HeaderName::From),
            ),
            (
                "i: abc@10.0.0.5",
                "i: abc@10.0.0.5,def",
                SipError::MalformedHeader(HeaderName::CallId),
            ),
            // A Route the proxy cannot read is not relayed as it is.
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nRoute: <sip:10.0.0.1;lr\r\n",
                SipError::MalformedHeader(HeaderName::Route),
            ),
        ];
        for (from, to, want) in cases {
            let msg = base.replacen(from, to, 1);
            assert_ne!(msg, base, "case {to:?} did not apply");
            assert_eq!(view(&msg).unwrap_err(), *want, "case {to:?}");
        }
    }

    #[test]
    fn control_characters_and_bare_line_feeds_are_refused_where_they_are() {
        let base = REGISTER.replace("bodyEXTRA", "body");
        let cases: &[(&str, &str, SipError)] = &[
            (
                "i: abc@10.0.0.5",
                "i: abc\0@10.0.0.5",
                SipError::ControlCharacter(Some(HeaderName::CallId)),
            ),
            (
                "(Microsoft Lync)",
                "(Microsoft\x1b[31m Lync)",
                SipError::ControlCharacter(Some(HeaderName::UserAgent)),
            ),
            (
                "Supported : gruu-10",
                "Supported : gruu-10\x7f",
                SipError::ControlCharacter(Some(HeaderName::Supported)),
            ),
            (
                "Expires: 3600\r\n",
                "Expires: 3600\r\nX-Lync: a\x01b\r\n",
                SipError::ControlCharacter(Some(HeaderName::Other)),
            ),
            // A CR that ends no line, with or without a byte after it.
            (
                "Expires: 3600\r\n",
                "Expires: 3600\r\nX-Injected: 1\rX-Other: 2\r\n",
                SipError::ControlCharacter(Some(HeaderName::Other)),
            ),
            (
                "i: abc@10.0.0.5\r\n",
                "i: abc@10.0.0.5\r\0\r\n",
                SipError::ControlCharacter(Some(HeaderName::CallId)),
            ),
            (
                "REGISTER sip:example.com",
                "REGISTER sip:exam\x07ple.com",
                SipError::ControlCharacter(None),
            ),
            // An escaped backslash escapes no control character after it.
            (
                "Supported : gruu-10",
                "Supported : \"gruu\\\\\0\"",
                SipError::ControlCharacter(Some(HeaderName::Supported)),
            ),
            // A backslash escapes only inside a quoted string or a comment,
            // and never in the start line.
            (
                "i: abc@10.0.0.5",
                "i: abc\\\0@10.0.0.5",
                SipError::ControlCharacter(Some(HeaderName::CallId)),
            ),
            (
                "REGISTER sip:example.com",
                "REGISTER sip:exam\\\x07ple.com",
                SipError::ControlCharacter(None),
            ),
            (
                "Expires: 3600\r\n",
                "Expires: 3600\n",
                SipError::BareLineFeed,
            ),
            ("SIP/2.0\r\n", "SIP/2.0\n", SipError::BareLineFeed),
            ("l: 4\r\n\r\n", "l: 4\r\n\n", SipError::BareLineFeed),
        ];
        for (from, to, want) in cases {
            let msg = base.replacen(from, to, 1);
            assert_ne!(msg, base, "case {to:?} did not apply");
            assert_eq!(view(&msg).unwrap_err(), *want, "case {to:?}");
        }
        assert_eq!(
            SipError::ControlCharacter(Some(HeaderName::CallId)).to_string(),
            "Control character in Call-ID header"
        );
        assert_eq!(
            SipError::ControlCharacter(None).to_string(),
            "Control character in the start line"
        );
        // A quoted-pair may escape one, in a quoted string (RFC 3261 25.1;
        // RFC 4475 3.1.1.2) or a comment, and the body is no header field.
        let quoted = base
            .replacen("t: <sip:", "t: \"BEL:\\\x07 NUL:\\\0 DEL:\\\x7f\" <sip:", 1)
            .replacen("(Microsoft Lync)", "(Microsoft \\\x1b Lync)", 1)
            .replacen("l: 4\r\n\r\nbody", "l: 4\r\n\r\nb\0\ny", 1);
        assert!(view(&quoted).is_ok());
        // Everything in one LF-only message is refused, not just its first line.
        assert_eq!(
            view(&base.replace("\r\n", "\n")).unwrap_err(),
            SipError::BareLineFeed
        );
    }

    #[test]
    fn a_message_over_a_stream_must_carry_content_length() {
        let base = REGISTER.replace("bodyEXTRA", "");
        let without = base.replacen("l: 4\r\n", "", 1);
        let with = base.replacen("l: 4\r\n", "l: 0\r\n", 1);
        for (text, stream, want) in [
            (
                &without,
                true,
                Err(SipError::MissingHeader(HeaderName::ContentLength)),
            ),
            (&without, false, Ok(())),
            (&with, true, Ok(())),
        ] {
            let v = SipView::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap();
            assert_eq!(v.check_for_transport(stream), want, "stream {stream}");
        }
    }

    #[test]
    fn responses_and_bad_status_codes() {
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        let v = view(ok).unwrap();
        assert_eq!(v.status(), Some(200));
        assert!(view(&ok.replace("200", "4294967301")).is_err());
        assert!(view(&ok.replace("200", "099")).is_err());
        assert!(view("SIP/2.0 100\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n").is_ok());
    }

    #[test]
    fn a_line_that_is_no_header_goes_with_its_continuation_and_spoils_no_other() {
        let text = REGISTER.replace("bodyEXTRA", "body").replacen(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nThis is no header\r\n continued\r\n",
            1,
        );
        let v = SipView::parse(Bytes::from(text)).unwrap();
        assert_eq!(v.max_forwards(), Ok(Some(70)), "the line before is whole");
        assert_eq!(v.check(), Err(SipError::MalformedHeaderLine));
    }

    #[test]
    fn the_version_is_read_in_any_case() {
        // RFC 3261 7.1: the version string is case-insensitive.
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        for version in ["sip/2.0", "Sip/2.0"] {
            let v = view(&ok.replacen("SIP/2.0", version, 1)).unwrap();
            assert_eq!(v.status(), Some(200), "{version}");
            let request = REGISTER.replace("bodyEXTRA", "body").replacen(
                "SIP/2.0\r\n",
                &format!("{version}\r\n"),
                1,
            );
            assert_eq!(view(&request).unwrap().method(), Some(Method::Register));
        }
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b""[..],
            b"\r\n",
            b"\r\n\r\n",
            b"INVITE",
            b"INVITE \r\n",
            b"SIP/",
            b"SIP/2.0 \r\n\r\n",
            b" :\r\n\r\n",
            b"A B SIP/\r\n\r\n",
            b"\xff\xfe \x00 SIP/2.0\r\n \r\n\r\n",
        ] {
            let _ = SipView::parse(Bytes::copy_from_slice(input)).map(|v| v.check());
        }
    }
}
