//! The requests this proxy writes itself for an INVITE it sent, as a
//! stateful element does (RFC 3261 9.1, 17.1.1.3): its CANCEL, and the ACK
//! of a non-2xx final response to it. Both copy the INVITE's Request-URI,
//! Call-ID, From and CSeq number byte for byte, tags included; its top Via
//! value alone (the next hop matches them to the INVITE's transaction by
//! it, RFC 3261 17.2.3, and answers the CANCEL to this proxy only); its
//! Route header fields; a Max-Forwards of 70 and no body. The CANCEL
//! copies the INVITE's To, the ACK the response's (with the tag the
//! response added).

use bytes::{Bytes, BytesMut};

use super::header::HeaderName;
use super::view::{Method, SipView};

/// The CANCEL of `invite`, a request as this proxy wrote it (its own Via
/// on top). `None` when it is not an INVITE or lacks what a CANCEL copies.
pub fn cancel(invite: &SipView) -> Option<Bytes> {
    of_invite(invite, "CANCEL", None)
}

/// The ACK of `response`, a non-2xx final response to `invite`, a request
/// as this proxy wrote it (RFC 3261 17.1.1.3: the ACK of a 2xx is the
/// caller's, end to end). `None` when `response` is not a final non-2xx
/// with a To, or `invite` lacks what an ACK copies.
pub fn ack(invite: &SipView, response: &SipView) -> Option<Bytes> {
    if response.status().is_none_or(|s| s < 300) {
        return None;
    }
    let to = response
        .header_fields()
        .iter()
        .find(|h| h.name == HeaderName::To)
        .map(|h| response.slice(h.line_span))?;
    of_invite(invite, "ACK", Some(to))
}

/// A request of `method` for `invite`: its To header field line is
/// `to_line` when given (with its CRLF), else the INVITE's.
fn of_invite(invite: &SipView, method: &str, to_line: Option<&[u8]>) -> Option<Bytes> {
    let (Some(Method::Invite), Some(uri)) = (invite.method(), invite.request_uri()) else {
        return None;
    };
    let top_via = invite.values(HeaderName::Via).next()?;
    let number = invite.cseq().ok()?.number;
    invite.call_id()?;
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(uri);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(top_via);
    out.extend_from_slice(b"\r\n");
    let mut copied = [false; 3];
    for h in invite.header_fields() {
        let (slot, line) = match h.name {
            HeaderName::From => (Some(0), invite.slice(h.line_span)),
            HeaderName::To => (Some(1), to_line.unwrap_or(invite.slice(h.line_span))),
            HeaderName::CallId => (Some(2), invite.slice(h.line_span)),
            HeaderName::Route => (None, invite.slice(h.line_span)),
            _ => continue,
        };
        if let Some(slot) = slot {
            if std::mem::replace(&mut copied[slot], true) {
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    if copied != [true; 3] {
        return None;
    }
    out.extend_from_slice(
        format!("CSeq: {number} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> SipView {
        SipView::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    #[test]
    fn a_cancel_copies_what_rfc_3261_9_1_names_and_only_the_top_via() {
        let invite = view(
            "INVITE sip:bob@contoso.com;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-sa-1;flow=x, SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK-c\r\n\
             Via: SIP/2.0/UDP 10.0.0.8\r\n\
             Record-Route: <sip:192.0.2.1;lr>\r\n\
             Route: <sip:edge.contoso.com;lr>\r\n\
             Max-Forwards: 69\r\n\
             f: \"Alice\" <sip:alice@contoso.com>;tag=a1\r\n\
             To: <sip:bob@contoso.com>\r\n\
             i: call-1@host\r\n\
             CSeq: 7 INVITE\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: 4\r\n\r\nv=0\n",
        );
        let cancel = cancel(&invite).unwrap();
        assert_eq!(
            std::str::from_utf8(&cancel).unwrap(),
            "CANCEL sip:bob@contoso.com;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-sa-1;flow=x\r\n\
             Route: <sip:edge.contoso.com;lr>\r\n\
             f: \"Alice\" <sip:alice@contoso.com>;tag=a1\r\n\
             To: <sip:bob@contoso.com>\r\n\
             i: call-1@host\r\n\
             CSeq: 7 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let parsed = SipView::parse(cancel).unwrap();
        parsed.check().unwrap();
        assert_eq!(parsed.method(), Some(Method::Cancel));
        assert_eq!(
            parsed.top_via().unwrap().branch(),
            invite.top_via().unwrap().branch()
        );
    }

    #[test]
    fn only_an_invite_with_its_dialog_fields_has_a_cancel() {
        let register = view(
            "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
             From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:a@contoso.com>\r\nCall-ID: c\r\n\
             CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(cancel(&register).is_none());
        let no_to = view(
            "INVITE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
             From: <sip:a@contoso.com>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
        );
        assert!(cancel(&no_to).is_none());
    }

    #[test]
    fn the_ack_of_a_non_2xx_takes_the_responses_to_and_the_rest_from_the_invite() {
        let invite = view(
            "INVITE sip:rg@contoso.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-sa-2;flow=y\r\n\
             Via: SIP/2.0/TCP 10.0.0.9:5062;branch=z9hG4bK-c\r\n\
             Route: <sip:pool.contoso.com;lr>\r\n\
             Max-Forwards: 69\r\n\
             From: <sip:alice@contoso.com>;tag=a1\r\n\
             To: <sip:rg@contoso.com>\r\n\
             Call-ID: call-2@host\r\n\
             CSeq: 9 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
        );
        let terminated = view(
            "SIP/2.0 487 Request Terminated\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-sa-2;flow=y\r\n\
             Via: SIP/2.0/TCP 10.0.0.9:5062;branch=z9hG4bK-c\r\n\
             From: <sip:alice@contoso.com>;tag=a1\r\n\
             t: <sip:rg@contoso.com>;tag=uas-7\r\n\
             Call-ID: call-2@host\r\n\
             CSeq: 9 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
        );
        let ack = ack(&invite, &terminated).unwrap();
        assert_eq!(
            std::str::from_utf8(&ack).unwrap(),
            "ACK sip:rg@contoso.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-sa-2;flow=y\r\n\
             Route: <sip:pool.contoso.com;lr>\r\n\
             From: <sip:alice@contoso.com>;tag=a1\r\n\
             t: <sip:rg@contoso.com>;tag=uas-7\r\n\
             Call-ID: call-2@host\r\n\
             CSeq: 9 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let parsed = SipView::parse(ack).unwrap();
        parsed.check().unwrap();
        assert_eq!(parsed.method(), Some(Method::Ack));
    }

    #[test]
    fn only_a_final_non_2xx_has_an_ack_of_this_proxys() {
        let invite = view(
            "INVITE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:b@contoso.com>\r\nCall-ID: c\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        );
        let answer = |status: &str| {
            view(&format!(
                "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                 From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:b@contoso.com>;tag=2\r\n\
                 Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        assert!(ack(&invite, &answer("180 Ringing")).is_none());
        assert!(ack(&invite, &answer("200 OK")).is_none());
        assert!(ack(&invite, &answer("486 Busy Here")).is_some());
        assert!(ack(&invite, &answer("603 Decline")).is_some());
    }
}
