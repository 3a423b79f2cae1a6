//! Stateless responses built from a request (RFC 3261 8.2.6): Via, From,
//! To, Call-ID and CSeq copied byte for byte, a To-tag added when missing,
//! and `received` / `rport` on the top Via (RFC 3581 section 4).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::edit::{mark_received, Edits};
use super::header::HeaderName;
use super::view::SipView;

/// The default reason phrase of a status code.
pub fn default_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        430 => "Flow Failed",
        480 => "Temporarily Unavailable",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => match status / 100 {
            4 => "Request Failed",
            5 => "Server Error",
            6 => "Global Failure",
            _ => "Unknown",
        },
    }
}

/// Build a response to `request`, which came from `source`. `to_tag` is
/// added to To when it has no tag (it must be stable for the request so
/// retransmissions match). The top Via gets `received` and its `rport`
/// value as on a relayed request ([`mark_received`]). `extra` lines (name,
/// value) follow the copied headers.
pub fn build(
    request: &SipView,
    status: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
    source: SocketAddr,
) -> Bytes {
    let reason = if reason.is_empty() {
        default_reason(status)
    } else {
        reason
    };
    let mut top_via = Edits::new();
    if let Ok(via) = request.top_via() {
        mark_received(request, &via, source, &mut top_via);
    }
    let mut top_via_line = request
        .header_fields()
        .iter()
        .position(|h| h.name == HeaderName::Via);
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
    for (i, h) in request.header_fields().iter().enumerate() {
        match h.name {
            HeaderName::Via if top_via_line == Some(i) => {
                top_via.apply_within(request.raw(), h.line_span.range(), &mut out);
                top_via_line = None;
            }
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.extend_from_slice(request.slice(h.line_span));
            }
            HeaderName::To => {
                // Tag a To we can read and that has none; copy anything else as is.
                let add_tag = request.to().is_ok_and(|t| t.tag().is_none());
                if !add_tag {
                    out.extend_from_slice(request.slice(h.line_span));
                } else {
                    let end = h.value_span.end as usize;
                    out.extend_from_slice(&request.raw()[h.line_span.start as usize..end]);
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(to_tag.as_bytes());
                    out.extend_from_slice(&request.raw()[end..h.line_span.end as usize]);
                }
            }
            _ => {}
        }
    }
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Server: sipadmit/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_headers_and_adds_to_tag() {
        let req = b"INVITE sip:helpdesk@contoso.com SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\nf: <sip:m@contoso.com>;tag=9\r\nt: <sip:helpdesk@contoso.com>\r\ni: c1\r\nCSeq: 5 INVITE\r\nUser-Agent: x\r\nl: 0\r\n\r\n";
        let v = SipView::parse(Bytes::copy_from_slice(req)).unwrap();
        let source = "192.0.2.1:5062".parse().unwrap();
        let r = build(
            &v,
            403,
            "",
            "sa1",
            &[("Warning", "399 sipadmit \"no\"")],
            source,
        );
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("SIP/2.0 403 Forbidden\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1;received=192.0.2.1\r\nVia: SIP/2.0/UDP b\r\nf: <sip:m@contoso.com>;tag=9\r\nt: <sip:helpdesk@contoso.com>;tag=sa1\r\ni: c1\r\nCSeq: 5 INVITE\r\nWarning: 399 sipadmit \"no\"\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let parsed = SipView::parse(r).unwrap();
        parsed.check().unwrap();
        assert_eq!(parsed.status(), Some(403));
    }

    #[test]
    fn the_top_via_gets_rport_and_received_rfc3581_section_4() {
        let req = b"OPTIONS sip:x@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;rport;branch=z9hG4bK1, SIP/2.0/UDP b;rport\r\nFrom: <sip:m@contoso.com>;tag=9\r\nTo: <sip:x@contoso.com>\r\nCall-ID: c1\r\nCSeq: 5 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let v = SipView::parse(Bytes::copy_from_slice(req)).unwrap();
        let r = build(&v, 483, "", "sa1", &[], "192.0.2.1:40000".parse().unwrap());
        let text = std::str::from_utf8(&r).unwrap();
        assert!(
            text.contains("\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;rport=40000;branch=z9hG4bK1;received=192.0.2.1, SIP/2.0/UDP b;rport\r\n"),
            "{text}"
        );
    }
}
