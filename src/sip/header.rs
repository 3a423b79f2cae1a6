//! Header names: the ones the filter reads or edits, with their RFC 3261
//! compact forms, matched case-insensitively without allocating.

use std::fmt;

/// A SIP header name. Known names are recognised in full and compact form;
/// every other name is [`HeaderName::Other`] and its bytes stay in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Via` / `v`.
    Via,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq`.
    CSeq,
    /// `Contact` / `m`.
    Contact,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Content-Type` / `c`.
    ContentType,
    /// `Content-Encoding` / `e`.
    ContentEncoding,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Expires`.
    Expires,
    /// `User-Agent`.
    UserAgent,
    /// `Server`.
    Server,
    /// `Route`.
    Route,
    /// `Record-Route`.
    RecordRoute,
    /// `Path` (RFC 3327).
    Path,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `Require`.
    Require,
    /// `Supported` / `k`.
    Supported,
    /// `Subject` / `s`.
    Subject,
    /// `Event` / `o` (RFC 6665).
    Event,
    /// `Refer-To` / `r` (RFC 3515).
    ReferTo,
    /// `Referred-By` / `b` (RFC 3892).
    ReferredBy,
    /// `Allow-Events` / `u` (RFC 6665).
    AllowEvents,
    /// `Session-Expires` / `x` (RFC 4028).
    SessionExpires,
    /// `Accept-Contact` / `a` (RFC 3841).
    AcceptContact,
    /// `Reject-Contact` / `j` (RFC 3841).
    RejectContact,
    /// `Request-Disposition` / `d` (RFC 3841).
    RequestDisposition,
    /// `Identity` / `y` (RFC 8224).
    Identity,
    /// Any other header; compare its bytes through the view.
    Other,
}

impl HeaderName {
    /// Recognise a header name (full or compact form, any case).
    pub fn from_bytes(name: &[u8]) -> Self {
        if name.len() == 1 {
            return Self::from_compact(name[0]);
        }
        // Senders nearly always use the canonical spelling: try it as is first.
        if let Some(known) = Self::from_canonical(name) {
            return known;
        }
        Self::from_any_case(name)
    }

    /// A compact form (RFC 3261 7.3.3 and the extensions'), any case.
    #[inline]
    fn from_compact(letter: u8) -> Self {
        match letter.to_ascii_lowercase() {
            b'v' => Self::Via,
            b'f' => Self::From,
            b't' => Self::To,
            b'i' => Self::CallId,
            b'm' => Self::Contact,
            b'l' => Self::ContentLength,
            b'c' => Self::ContentType,
            b'e' => Self::ContentEncoding,
            b'k' => Self::Supported,
            b's' => Self::Subject,
            b'o' => Self::Event,
            b'r' => Self::ReferTo,
            b'b' => Self::ReferredBy,
            b'u' => Self::AllowEvents,
            b'x' => Self::SessionExpires,
            b'a' => Self::AcceptContact,
            b'j' => Self::RejectContact,
            b'd' => Self::RequestDisposition,
            b'y' => Self::Identity,
            _ => Self::Other,
        }
    }

    /// The common names in their canonical spelling, byte for byte (the
    /// fast path); `None` for anything else.
    #[inline]
    fn from_canonical(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"Via" => Self::Via,
            b"From" => Self::From,
            b"To" => Self::To,
            b"Call-ID" => Self::CallId,
            b"CSeq" => Self::CSeq,
            b"Contact" => Self::Contact,
            b"Content-Length" => Self::ContentLength,
            b"Content-Type" => Self::ContentType,
            b"Max-Forwards" => Self::MaxForwards,
            b"Expires" => Self::Expires,
            b"User-Agent" => Self::UserAgent,
            b"Route" => Self::Route,
            b"Record-Route" => Self::RecordRoute,
            b"Supported" => Self::Supported,
            _ => return None,
        })
    }

    /// Any full name, in any case.
    #[inline]
    fn from_any_case(name: &[u8]) -> Self {
        // Lowercase once into a stack buffer, then one match: the compiler
        // turns byte-string arms into a length switch plus a compare. This
        // runs for every header line of every message.
        const LONGEST: usize = "request-disposition".len();
        if name.len() > LONGEST {
            return Self::Other;
        }
        let mut lower = [0u8; LONGEST];
        for (l, b) in lower.iter_mut().zip(name) {
            *l = b.to_ascii_lowercase();
        }
        match &lower[..name.len()] {
            b"via" => Self::Via,
            b"from" => Self::From,
            b"to" => Self::To,
            b"call-id" => Self::CallId,
            b"cseq" => Self::CSeq,
            b"contact" => Self::Contact,
            b"content-length" => Self::ContentLength,
            b"content-type" => Self::ContentType,
            b"content-encoding" => Self::ContentEncoding,
            b"max-forwards" => Self::MaxForwards,
            b"expires" => Self::Expires,
            b"user-agent" => Self::UserAgent,
            b"server" => Self::Server,
            b"route" => Self::Route,
            b"record-route" => Self::RecordRoute,
            b"path" => Self::Path,
            b"proxy-require" => Self::ProxyRequire,
            b"require" => Self::Require,
            b"supported" => Self::Supported,
            b"subject" => Self::Subject,
            b"event" => Self::Event,
            b"refer-to" => Self::ReferTo,
            b"referred-by" => Self::ReferredBy,
            b"allow-events" => Self::AllowEvents,
            b"session-expires" => Self::SessionExpires,
            b"accept-contact" => Self::AcceptContact,
            b"reject-contact" => Self::RejectContact,
            b"request-disposition" => Self::RequestDisposition,
            b"identity" => Self::Identity,
            _ => Self::Other,
        }
    }

    /// The canonical (full) spelling, or `"(other)"` for [`HeaderName::Other`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Via => "Via",
            Self::From => "From",
            Self::To => "To",
            Self::CallId => "Call-ID",
            Self::CSeq => "CSeq",
            Self::Contact => "Contact",
            Self::ContentLength => "Content-Length",
            Self::ContentType => "Content-Type",
            Self::ContentEncoding => "Content-Encoding",
            Self::MaxForwards => "Max-Forwards",
            Self::Expires => "Expires",
            Self::UserAgent => "User-Agent",
            Self::Server => "Server",
            Self::Route => "Route",
            Self::RecordRoute => "Record-Route",
            Self::Path => "Path",
            Self::ProxyRequire => "Proxy-Require",
            Self::Require => "Require",
            Self::Supported => "Supported",
            Self::Subject => "Subject",
            Self::Event => "Event",
            Self::ReferTo => "Refer-To",
            Self::ReferredBy => "Referred-By",
            Self::AllowEvents => "Allow-Events",
            Self::SessionExpires => "Session-Expires",
            Self::AcceptContact => "Accept-Contact",
            Self::RejectContact => "Reject-Contact",
            Self::RequestDisposition => "Request-Disposition",
            Self::Identity => "Identity",
            Self::Other => "(other)",
        }
    }

    /// Headers whose grammar allows several comma-separated values in one line
    /// (among the ones the filter splits).
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Self::Via
                | Self::Contact
                | Self::Route
                | Self::RecordRoute
                | Self::Path
                | Self::ProxyRequire
                | Self::Require
                | Self::Supported
                | Self::AllowEvents
                | Self::AcceptContact
                | Self::RejectContact
                | Self::RequestDisposition
        )
    }

    /// Headers that may appear only once (RFC 3261 section 7.3.1 and 20).
    pub fn is_single(self) -> bool {
        matches!(
            self,
            Self::From
                | Self::To
                | Self::CallId
                | Self::CSeq
                | Self::MaxForwards
                | Self::ContentLength
                | Self::Expires
                | Self::ContentType
        )
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_compact_forms_in_any_case() {
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"L"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"k"), HeaderName::Supported);
        assert_eq!(
            HeaderName::from_bytes(b"Record-Route"),
            HeaderName::RecordRoute
        );
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"q"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
    }
}
