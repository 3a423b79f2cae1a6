//! Why a message was refused: precise enough for a 400 reason phrase and a log line.

use super::header::HeaderName;

/// A reason to refuse a SIP message. Small and `Copy`: it is built on the hot path.
///
/// The `Display` text is used as the reason phrase of the 400 (or 505) response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The first line is neither a Request-Line nor a Status-Line.
    #[error("Malformed start line")]
    MalformedStartLine,
    /// The Request-URI holds whitespace or angle brackets, or no scheme.
    #[error("Malformed Request-URI")]
    MalformedRequestUri,
    /// The version is `SIP/x.y` other than `SIP/2.0`.
    #[error("SIP version not supported")]
    VersionNotSupported,
    /// The status code is not three digits between 100 and 699.
    #[error("Malformed status code")]
    MalformedStatusCode,
    /// A header line has no name, a non-token name or no colon.
    #[error("Malformed header line")]
    MalformedHeaderLine,
    /// The empty line that ends the header section is missing.
    #[error("Header section not terminated")]
    UnterminatedHeaders,
    /// A mandatory header is missing.
    #[error("Missing {0} header")]
    MissingHeader(HeaderName),
    /// A single-valued header appears more than once.
    #[error("Several {0} headers")]
    DuplicateHeader(HeaderName),
    /// A header value does not follow its grammar.
    #[error("Malformed {0} header")]
    MalformedHeader(HeaderName),
    /// A numeric header value is out of its range (Max-Forwards > 255, CSeq >= 2^31, ...).
    #[error("{0} value out of range")]
    ValueOutOfRange(HeaderName),
    /// Content-Length is not a non-negative decimal number.
    #[error("Malformed Content-Length")]
    MalformedContentLength,
    /// Several Content-Length headers or values.
    #[error("Several Content-Length values")]
    SeveralContentLengths,
    /// The body is shorter than Content-Length says (RFC 3261 18.3).
    #[error("Body shorter than Content-Length")]
    BodyTruncated,
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
    /// A control character (other than HT, or CR in a CRLF) in the start
    /// line or a header field, outside a quoted-pair (RFC 3261 25.1); the
    /// header is named, `None` for the start line.
    #[error("Control character in {}", control_character_place(*.0))]
    ControlCharacter(Option<HeaderName>),
    /// A line of the start line or header section ends in a bare LF
    /// (RFC 3261 7: lines end in CRLF).
    #[error("Line not ended by CRLF")]
    BareLineFeed,
}

/// Where [`SipError::ControlCharacter`] found its byte, for the reason phrase.
fn control_character_place(header: Option<HeaderName>) -> String {
    match header {
        None => "the start line".to_owned(),
        Some(HeaderName::Other) => "a header".to_owned(),
        Some(name) => format!("{name} header"),
    }
}

impl SipError {
    /// A fixed snake_case name for the reason (a metrics label: the header
    /// of `MissingHeader` and the like is left out).
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedStartLine => "malformed_start_line",
            Self::MalformedRequestUri => "malformed_request_uri",
            Self::VersionNotSupported => "version_not_supported",
            Self::MalformedStatusCode => "malformed_status_code",
            Self::MalformedHeaderLine => "malformed_header_line",
            Self::UnterminatedHeaders => "unterminated_headers",
            Self::MissingHeader(_) => "missing_header",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::MalformedHeader(_) => "malformed_header",
            Self::ValueOutOfRange(_) => "value_out_of_range",
            Self::MalformedContentLength => "malformed_content_length",
            Self::SeveralContentLengths => "several_content_lengths",
            Self::BodyTruncated => "body_truncated",
            Self::CSeqMethodMismatch => "cseq_method_mismatch",
            Self::ControlCharacter(_) => "control_character",
            Self::BareLineFeed => "bare_line_feed",
        }
    }

    /// Whether an answer to the message would carry the fault back: a
    /// response copies the Via, From, To, Call-ID and CSeq lines byte for
    /// byte (RFC 3261 8.2.6), so one with a control character in those, or
    /// a line ended by a bare LF anywhere, is dropped rather than answered
    /// with the bytes it was refused for.
    pub fn taints_an_answer(self) -> bool {
        match self {
            Self::BareLineFeed => true,
            Self::ControlCharacter(Some(header)) => matches!(
                header,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            ),
            _ => false,
        }
    }

    /// The status code a request refused for this reason is answered with.
    pub fn status_code(self) -> u16 {
        match self {
            Self::VersionNotSupported => 505,
            _ => 400,
        }
    }
}
