//! The CANCEL of an INVITE this proxy sent (RFC 3261 9.1): the same
//! Request-URI, Call-ID, From, To and CSeq number, byte for byte, tags
//! included; the INVITE's top Via value alone (the registrar matches the
//! CANCEL to the INVITE by it, RFC 3261 17.2.3, and answers it to this
//! proxy only); its Route header fields; a Max-Forwards of 70 and no body.

use bytes::{Bytes, BytesMut};

use super::header::HeaderName;
use super::view::{Method, SipView};

/// The CANCEL of `invite`, a request as this proxy wrote it (its own Via
/// on top). `None` when it is not an INVITE or lacks what a CANCEL copies.
pub fn of_invite(invite: &SipView) -> Option<Bytes> {
    let (Some(Method::Invite), Some(uri)) = (invite.method(), invite.request_uri()) else {
        return None;
    };
    let top_via = invite.values(HeaderName::Via).next()?;
    let number = invite.cseq().ok()?.number;
    invite.call_id()?;
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(b"CANCEL ");
    out.extend_from_slice(uri);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(top_via);
    out.extend_from_slice(b"\r\n");
    let mut copied = [false; 3];
    for h in invite.header_fields() {
        let slot = match h.name {
            HeaderName::From => Some(0),
            HeaderName::To => Some(1),
            HeaderName::CallId => Some(2),
            HeaderName::Route => None,
            _ => continue,
        };
        if let Some(slot) = slot {
            if std::mem::replace(&mut copied[slot], true) {
                continue;
            }
        }
        out.extend_from_slice(invite.slice(h.line_span));
    }
    if copied != [true; 3] {
        return None;
    }
    out.extend_from_slice(
        format!("CSeq: {number} CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
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
        let cancel = of_invite(&invite).unwrap();
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
        assert!(of_invite(&register).is_none());
        let no_to = view(
            "INVITE sip:b@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
             From: <sip:a@contoso.com>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
        );
        assert!(of_invite(&no_to).is_none());
    }
}
