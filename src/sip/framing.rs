//! Framing: where one SIP message ends on a stream, and what a datagram is.
//!
//! Pure functions over buffers, no I/O. Stream framing follows RFC 3261
//! 18.3 (Content-Length, compact form `l`), skips CRLFs between messages and
//! reports RFC 5626 3.5.1 keep-alive pings so the transport can answer them.
//!
//! [`StreamFramer`] is the incremental framer; [`SipCodec`] wraps it as a
//! `tokio_util::codec::Decoder`, which the stream server
//! (`transport::stream`) calls on its own read buffer (charged to the read
//! buffer budget) for every connection: TCP, and TLS after its handshake.

use bytes::{Bytes, BytesMut};
/// The trait [`SipCodec`] implements (re-exported for its users: the
/// fuzz targets call it directly).
pub use tokio_util::codec::Decoder;

use super::fields::{is_token_char, parse_decimal, trim_lws};

/// What a UDP datagram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Only CR and LF octets (or nothing): a NAT keep-alive, not an error.
    KeepAlive,
    /// A STUN message (RFC 5389 magic cookie), e.g. RFC 5626 keep-alives.
    Stun,
    /// Anything else: parse it as SIP.
    Sip,
}

/// STUN magic cookie (RFC 5389 section 6).
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// Classify a datagram by its first bytes.
pub fn classify_datagram(data: &[u8]) -> Datagram {
    if data.iter().all(|&b| b == b'\r' || b == b'\n') {
        Datagram::KeepAlive
    } else if data.len() >= 20 && data[0] & 0xC0 == 0 && data[4..8] == STUN_MAGIC_COOKIE {
        Datagram::Stun
    } else {
        Datagram::Sip
    }
}

/// Longest start line [`has_sip_start_line`] looks for, bytes.
const MAX_START_LINE_BYTES: usize = 8192;

/// Whether `bytes` begin with a SIP start line: a status line
/// (`SIP/2.0 ...`) or a request line ending in ` SIP/2.0` (RFC 3261 7.1,
/// 7.2), after any CRLFs before it (RFC 3261 7.5). Says what a peer is
/// speaking before anything is parsed (another service at a registrar's
/// address does not speak SIP); it does not say the message is valid.
pub fn has_sip_start_line(bytes: &[u8]) -> bool {
    // The CRLFs the parser skips, as it skips them.
    let bytes = &bytes[super::view::skip_leading_crlfs(bytes)..];
    let head = &bytes[..bytes.len().min(MAX_START_LINE_BYTES)];
    let Some(end) = memchr::memchr(b'\n', head) else {
        return false;
    };
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let is_version = |v: &[u8]| v.eq_ignore_ascii_case(b"SIP/2.0");
    line.get(..8)
        .is_some_and(|start| is_version(&start[..7]) && start[7] == b' ')
        || line
            .len()
            .checked_sub(8)
            .is_some_and(|at| line[at] == b' ' && is_version(&line[at + 1..]))
}

/// One item cut from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A CRLFCRLF keep-alive ping: answer with a single CRLF (RFC 5626 3.5.1).
    Ping,
    /// One complete message (headers plus Content-Length bytes of body).
    Message(Bytes),
}

/// Why a stream cannot be framed any further; the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The message (or its unterminated header section) exceeds the size cap.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The configured cap in bytes.
        limit: usize,
    },
    /// Content-Length is missing a number, negative or overflowing.
    #[error("malformed Content-Length")]
    MalformedContentLength,
    /// Several Content-Length values: the message boundary is ambiguous.
    #[error("several Content-Length values")]
    SeveralContentLengths,
    /// The stream ended in the middle of a message.
    #[error("stream ended {buffered} bytes into a message")]
    Truncated {
        /// Bytes of the unfinished message that were buffered.
        buffered: usize,
    },
}

/// The length of the HEPv3 packet `bytes` start with, if they start as
/// one does: `HEP3`, then binary (its 16-bit total length, and the vendor
/// id of its first chunk, 0 for the generic chunks agents write first),
/// where a SIP request of a method named `HEP3` would go on in text. A
/// capture agent whose collector is a SIP port sends those; over a stream
/// they are framed by that length, so that each reaches the core whole (to
/// be dropped as what it is) and the stream stays in step.
pub fn hep_packet_length(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..8).filter(|h| h.starts_with(b"HEP3"))?;
    header[4..]
        .iter()
        .any(u8::is_ascii_control)
        .then(|| usize::from(u16::from_be_bytes([header[4], header[5]])))
}

/// Incremental framer for stream transports (TCP, TLS).
///
/// Keeps how far it already searched for the end of the header section, so
/// a message arriving in many reads is scanned once.
#[derive(Debug)]
pub struct StreamFramer {
    max_message_bytes: usize,
    /// Bytes at the buffer start already searched for CRLFCRLF.
    scanned: usize,
    /// Total length of the pending message once its header section is complete.
    pending_total: Option<usize>,
}

/// Whether `buf` holds no more than the start of a keep-alive (`\r`,
/// `\r\n`, `\r\n\r`): what [`StreamFramer::decode`] keeps while it waits
/// to tell a ping from a lone CRLF. No message has begun (RFC 3261 7.5:
/// CRLFs before a start line are ignored; RFC 5626 4.4.1: keep-alives).
pub fn is_keep_alive_start(buf: &[u8]) -> bool {
    !buf.is_empty() && buf.len() < 4 && b"\r\n\r\n".starts_with(buf)
}

impl StreamFramer {
    /// A framer refusing messages larger than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            scanned: 0,
            pending_total: None,
        }
    }

    /// Cut the next frame off `buf`: `Ok(None)` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        if let Some(total) = self.pending_total {
            return Ok(self.take(buf, total));
        }
        loop {
            if buf.starts_with(b"\r\n\r\n") {
                let _ = buf.split_to(4);
                self.scanned = 0;
                return Ok(Some(Frame::Ping));
            }
            // A lone CRLF (a pong, or padding between messages) is skipped;
            // wait if it may be the first half of a ping.
            if buf.starts_with(b"\r\n") {
                if is_keep_alive_start(buf) {
                    return Ok(None);
                }
                let _ = buf.split_to(2);
                self.scanned = 0;
                continue;
            }
            if buf.starts_with(b"\n") {
                let _ = buf.split_to(1);
                continue;
            }
            break;
        }
        if let Some(total) = hep_packet_length(buf).filter(|&total| total >= 8) {
            return Ok(self.take(buf, total));
        }
        let from = self.scanned.min(buf.len()).saturating_sub(3);
        let Some(end) = header_end(buf, from) else {
            self.scanned = buf.len();
            if buf.len() > self.max_message_bytes {
                return Err(FramingError::TooLarge {
                    limit: self.max_message_bytes,
                });
            }
            return Ok(None);
        };
        let body_len = content_length(&buf[..end])?;
        let total = end + body_len;
        if total > self.max_message_bytes {
            return Err(FramingError::TooLarge {
                limit: self.max_message_bytes,
            });
        }
        Ok(self.take(buf, total))
    }

    /// Split off a message of `total` bytes once it is all buffered.
    fn take(&mut self, buf: &mut BytesMut, total: usize) -> Option<Frame> {
        if buf.len() < total {
            self.pending_total = Some(total);
            return None;
        }
        self.pending_total = None;
        self.scanned = 0;
        Some(Frame::Message(buf.split_to(total).freeze()))
    }
}

/// Why a stream stopped yielding frames: it cannot be framed, or reading
/// it failed. Either way the connection closes.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bytes cannot be framed.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// Reading the stream failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The SIP stream decoder (`tokio_util::codec::Decoder`): a
/// [`StreamFramer`], plus what happens at the end of the stream (CRLFs left
/// over are fine, part of a message is [`FramingError::Truncated`]).
#[derive(Debug)]
pub struct SipCodec {
    framer: StreamFramer,
}

impl SipCodec {
    /// A codec refusing messages larger than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            framer: StreamFramer::new(max_message_bytes),
        }
    }
}

impl Decoder for SipCodec {
    type Item = Frame;
    type Error = StreamError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, StreamError> {
        Ok(self.framer.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, StreamError> {
        if let Some(frame) = self.framer.decode(src)? {
            return Ok(Some(frame));
        }
        if src.iter().all(|&b| b == b'\r' || b == b'\n') {
            src.clear();
            return Ok(None);
        }
        let buffered = src.len();
        src.clear();
        Err(FramingError::Truncated { buffered }.into())
    }
}

/// End of the header section: after the first empty line, ending in CRLF
/// or bare LF exactly as the message view reads lines (so framing and view
/// always agree on where a message's headers end).
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|p| from + p)
        .find_map(|nl| match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => Some(nl + 3),
            _ => None,
        })
}

/// The Content-Length of a header section (0 when absent). Its value may
/// go on in folded lines (RFC 3261 7.3.1), as the message view reads it.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let mut found: Option<u64> = None;
    let mut lines = head
        .split(|&b| b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .peekable();
    while let Some(line) = lines.next() {
        let name_len = line.iter().position(|&b| !is_token_char(b)).unwrap_or(0);
        let name = &line[..name_len];
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let Some(first) = trim_lws(&line[name_len..]).strip_prefix(b":") else {
            continue;
        };
        let mut value = std::borrow::Cow::Borrowed(first);
        while let Some(folded) =
            lines.next_if(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
        {
            let joined = value.to_mut();
            joined.push(b' ');
            joined.extend_from_slice(folded);
        }
        let n = parse_decimal(trim_lws(&value)).ok_or(FramingError::MalformedContentLength)?;
        if found.replace(n).is_some() {
            return Err(FramingError::SeveralContentLengths);
        }
    }
    usize::try_from(found.unwrap_or(0)).map_err(|_| FramingError::MalformedContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sip_start_line_is_told_from_another_protocol() {
        for sip in [
            &b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n"[..],
            b"sip/2.0 503 Busy\r\n",
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: x\r\n",
            b"REGISTER sip:example.com SIP/2.0\n",
            b"\r\n\r\nSIP/2.0 200 OK\r\n",
        ] {
            assert!(
                has_sip_start_line(sip),
                "{:?}",
                String::from_utf8_lossy(sip)
            );
        }
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"SIP/2.0 200 OK",
            b"SIP/2.0\r\n",
            b"\x16\x03\x01\x02\x00\x01",
            b"",
        ] {
            assert!(
                !has_sip_start_line(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\nCall-ID: x\r\n\r\nhello";

    fn framer() -> StreamFramer {
        StreamFramer::new(65_535)
    }

    /// A HEPv3 packet carrying `payload` in one chunk (vendor 0, type 15).
    fn hep_packet(payload: &[u8]) -> Vec<u8> {
        let chunk_len = u16::try_from(6 + payload.len()).unwrap();
        let total = u16::try_from(6 + 6 + payload.len()).unwrap();
        let mut packet = b"HEP3".to_vec();
        packet.extend_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 15]);
        packet.extend_from_slice(&chunk_len.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    /// HEP packets sent to a SIP stream listener (a capture agent's
    /// collector set to it) are framed by their length, each whole, though
    /// the SIP message inside holds a blank line; the stream stays in step
    /// for what follows. A request of a method named `HEP3` is SIP.
    #[test]
    fn hep_packets_on_a_stream_are_framed_by_their_length() {
        let first = hep_packet(MSG);
        let second = hep_packet(b"{\"action\":\"allow\"}");
        let mut stream = [first.as_slice(), &second, MSG].concat();
        let mut framer = framer();
        // Arriving a byte at a time, then whole.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in stream.drain(..) {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = framer.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            [
                Frame::Message(Bytes::from(first)),
                Frame::Message(Bytes::from(second)),
                Frame::Message(Bytes::from_static(MSG)),
            ]
        );
        assert_eq!(hep_packet_length(b"HEP3 sip:x@b SIP/2.0\r\n\r\n"), None);
        assert_eq!(hep_packet_length(b"HEP3"), None);
    }

    #[test]
    fn decode_returns_none_when_headers_incomplete() {
        let mut buf = BytesMut::from(&MSG[..20]);
        assert_eq!(framer().decode(&mut buf), Ok(None));
    }

    #[test]
    fn decode_returns_none_when_body_incomplete() {
        let mut f = framer();
        let mut buf = BytesMut::from(&MSG[..MSG.len() - 2]);
        assert_eq!(f.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&MSG[MSG.len() - 2..]);
        assert_eq!(
            f.decode(&mut buf),
            Ok(Some(Frame::Message(Bytes::from_static(MSG))))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_byte_by_byte() {
        let mut f = framer();
        let mut buf = BytesMut::new();
        for (i, b) in MSG.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = f.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == MSG.len() - 1, "at byte {i}");
        }
    }

    #[test]
    fn decode_two_back_to_back_messages_and_keepalives() {
        let mut f = framer();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\r\n\r\n");
        buf.extend_from_slice(MSG);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(MSG);
        assert_eq!(f.decode(&mut buf), Ok(Some(Frame::Ping)));
        assert!(matches!(f.decode(&mut buf), Ok(Some(Frame::Message(_)))));
        assert!(matches!(f.decode(&mut buf), Ok(Some(Frame::Message(_)))));
        assert_eq!(f.decode(&mut buf), Ok(None));
    }

    #[test]
    fn decode_short_content_length_header() {
        let mut buf =
            BytesMut::from(&b"BYE sip:a@b SIP/2.0\r\nContent-Length : 2\r\n\r\nhiNEXT"[..]);
        let Ok(Some(Frame::Message(m))) = framer().decode(&mut buf) else {
            panic!("no frame")
        };
        assert!(m.ends_with(b"\r\n\r\nhi"));
        assert_eq!(&buf[..], b"NEXT");
    }

    /// A folded Content-Length (RFC 3261 7.3.1) frames its body as the
    /// message view reads it over UDP (trial 47: the stream was closed).
    #[test]
    fn decode_folded_content_length_header() {
        for head in [
            &b"Content-Length:\r\n 4\r\n"[..],
            b"l:\r\n\t 4 \r\n",
            b"Content-Length: 4\r\n \r\n",
        ] {
            let mut buf = BytesMut::from(&b"BYE sip:a@b SIP/2.0\r\n"[..]);
            buf.extend_from_slice(head);
            buf.extend_from_slice(b"Via: x\r\n\r\nabcdNEXT");
            let Ok(Some(Frame::Message(m))) = framer().decode(&mut buf) else {
                panic!("no frame: {head:?}")
            };
            assert!(m.ends_with(b"\r\n\r\nabcd"), "{head:?}");
            assert_eq!(&buf[..], b"NEXT");
        }
        let mut buf = BytesMut::from(&b"BYE sip:a@b SIP/2.0\r\nl: 1\r\n 2\r\n\r\n"[..]);
        assert_eq!(
            framer().decode(&mut buf),
            Err(FramingError::MalformedContentLength)
        );
    }

    #[test]
    fn decode_rejects_oversized_buffer() {
        let mut f = StreamFramer::new(64);
        let mut buf = BytesMut::from(&[b'a'; 100][..]);
        assert_eq!(
            f.decode(&mut buf),
            Err(FramingError::TooLarge { limit: 64 })
        );
        let mut buf = BytesMut::from(&b"INVITE sip:a@b SIP/2.0\r\nl: 1000\r\n\r\n"[..]);
        assert_eq!(
            StreamFramer::new(64).decode(&mut buf),
            Err(FramingError::TooLarge { limit: 64 })
        );
    }

    #[test]
    fn decode_rejects_ambiguous_lengths() {
        let mut buf =
            BytesMut::from(&b"A sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nxx"[..]);
        assert_eq!(
            framer().decode(&mut buf),
            Err(FramingError::SeveralContentLengths)
        );
        let mut buf = BytesMut::from(&b"A sip:a SIP/2.0\r\nl: -1\r\n\r\n"[..]);
        assert_eq!(
            framer().decode(&mut buf),
            Err(FramingError::MalformedContentLength)
        );
    }

    #[test]
    fn bare_lf_header_end_is_seen_like_the_view_sees_it() {
        // A REGISTER ending its headers with LF LF must not swallow the next message.
        let mut buf = BytesMut::from(
            &b"REGISTER sip:a SIP/2.0\nCall-ID: 1\n\nINVITE sip:b SIP/2.0\r\nl: 0\r\n\r\n"[..],
        );
        let mut f = framer();
        let Ok(Some(Frame::Message(first))) = f.decode(&mut buf) else {
            panic!("no frame")
        };
        assert_eq!(&first[..], b"REGISTER sip:a SIP/2.0\nCall-ID: 1\n\n");
        assert!(
            matches!(f.decode(&mut buf), Ok(Some(Frame::Message(m))) if m.starts_with(b"INVITE"))
        );
    }

    #[test]
    fn codec_yields_the_framers_frames_and_ends_cleanly() {
        let mut codec = SipCodec::new(65_535);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"\r\n\r\n");
        buf.extend_from_slice(MSG);
        buf.extend_from_slice(&MSG[..10]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Ping));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Message(Bytes::from_static(MSG)))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        // At the end of the stream, part of a message is an error ...
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(StreamError::Framing(FramingError::Truncated {
                buffered: 10
            }))
        ));
        // ... and trailing CRLFs are not.
        let mut codec = SipCodec::new(65_535);
        let mut buf = BytesMut::from(&b"\r\n\r"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(MSG);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Ok(Some(Frame::Message(_)))
        ));
    }

    #[test]
    fn codec_errors_close_the_stream() {
        let mut buf = BytesMut::from(&b"A sip:a SIP/2.0\r\nl: x\r\n\r\n"[..]);
        assert!(matches!(
            SipCodec::new(65_535).decode(&mut buf),
            Err(StreamError::Framing(FramingError::MalformedContentLength))
        ));
    }

    #[test]
    fn datagram_kinds() {
        assert_eq!(classify_datagram(b"\r\n\r\n"), Datagram::KeepAlive);
        assert_eq!(classify_datagram(b""), Datagram::KeepAlive);
        let mut stun = [0u8; 20];
        stun[1] = 1;
        stun[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
        assert_eq!(classify_datagram(&stun), Datagram::Stun);
        assert_eq!(classify_datagram(MSG), Datagram::Sip);
    }
}
