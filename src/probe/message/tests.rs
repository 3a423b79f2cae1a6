use super::*;
use bytes::Bytes;

const LOCAL: &str = "127.0.0.1:40000";

fn local() -> SocketAddr {
    LOCAL.parse().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn a_register_with_defaults_leaves_no_binding() {
    let r = ProbeRequest::new(
        ProbeMethod::Register,
        "127.0.0.1:5060",
        None,
        None,
        None,
        0,
        0xabcdef0123456789,
    )
    .unwrap();
    let sent = text(&r.render(Transport::Udp, local()));
    assert_eq!(
        sent,
        format!(
            "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-probe-abcdef0123456789;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:sipadmit-probe@127.0.0.1:5060>;tag=abcdef01\r\n\
             To: <sip:sipadmit-probe@127.0.0.1:5060>\r\n\
             Call-ID: abcdef0123456789@sipadmit-probe\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:sipadmit-probe@127.0.0.1:40000>\r\n\
             Expires: 0\r\n\
             User-Agent: sipadmit-probe/{}\r\n\
             Content-Length: 0\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    // What sipadmit's own parser makes of it.
    let view = SipView::parse(Bytes::from(sent.into_bytes())).unwrap();
    view.check().unwrap();
    assert_eq!(view.expires().unwrap(), Some(0));
}

#[test]
fn an_invite_to_a_workflow_over_tls() {
    let ua = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)";
    let r = ProbeRequest::new(
        ProbeMethod::Invite,
        "127.0.0.1:5061",
        Some("sip:helpdesk@contoso.com"),
        None,
        Some(ua),
        0,
        1,
    )
    .unwrap();
    let sent = text(&r.render(Transport::Tls, local()));
    assert!(
        sent.starts_with(
            "INVITE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;"
        ),
        "{sent}"
    );
    assert!(
        sent.contains("\r\nFrom: <sip:sipadmit-probe@contoso.com>;tag="),
        "{sent}"
    );
    assert!(
        sent.contains("\r\nContact: <sip:sipadmit-probe@127.0.0.1:40000;transport=tls>\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains(&format!("\r\nUser-Agent: {ua}\r\n")),
        "{sent}"
    );
    assert!(!sent.contains("Expires"), "{sent}");
}

#[test]
fn options_without_user_agent_and_bad_values() {
    let r = ProbeRequest::new(
        ProbeMethod::Options,
        "[::1]:5060",
        None,
        Some("sips:alice@contoso.com"),
        Some(""),
        0,
        1,
    )
    .unwrap();
    let sent = text(&r.render(Transport::Tcp, "[::1]:40000".parse().unwrap()));
    assert!(
        sent.starts_with(
            "OPTIONS sip:sipadmit-probe@[::1]:5060 SIP/2.0\r\nVia: SIP/2.0/TCP [::1]:40000;"
        ),
        "{sent}"
    );
    assert!(
        !sent.contains("User-Agent") && !sent.contains("Contact"),
        "{sent}"
    );
    assert!(
        sent.contains("From: <sips:alice@contoso.com>;tag="),
        "{sent}"
    );
    let err = |to, from, ua| {
        ProbeRequest::new(ProbeMethod::Invite, "127.0.0.1:5060", to, from, ua, 0, 1)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(Some("helpdesk@contoso.com"), None, None),
        "--to \"helpdesk@contoso.com\": expected a sip: or sips: URI, e.g. sip:helpdesk@contoso.com"
    );
    // The scheme is case-insensitive (RFC 3261 19.1.4).
    assert!(ProbeRequest::new(
        ProbeMethod::Invite,
        "127.0.0.1:5060",
        Some("SIP:helpdesk@contoso.com"),
        Some("Sips:alice@contoso.com"),
        None,
        0,
        1
    )
    .is_ok());
    assert!(err(None, Some("sip:a b@c"), None)
        .starts_with("--from \"sip:a b@c\": not a well-formed SIP URI"));
    assert!(err(None, None, Some("OC/15\r\nX: y"))
        .starts_with("--ua \"OC/15\\r\\nX: y\": a header value cannot hold"));
}

/// A response to `request` as a server would send it.
fn response(request: &[u8], status: &str, extra: &str) -> SipView {
    let req = SipView::parse(Bytes::copy_from_slice(request)).unwrap();
    let h = |name| text(req.header(name).unwrap());
    let raw = format!(
        "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=srv1\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        h(HeaderName::Via),
        h(HeaderName::From),
        h(HeaderName::To),
        h(HeaderName::CallId),
        h(HeaderName::CSeq),
    );
    SipView::parse(Bytes::from(raw.into_bytes())).unwrap()
}

#[test]
fn answers_are_matched_by_branch_and_method_and_read() {
    let r = ProbeRequest::new(
        ProbeMethod::Invite,
        "127.0.0.1:5060",
        Some("sip:helpdesk@contoso.com"),
        None,
        None,
        0,
        7,
    )
    .unwrap();
    let sent = r.render(Transport::Udp, local());
    let forbidden = response(
        &sent,
        "403 Forbidden",
        "Warning: 399 sipadmit \"not supported\"\r\nms-diagnostics: 17002;reason=\"x\"\r\nWarning: 399 other \"second\"\r\n",
    );
    assert!(r.is_answer(&forbidden, "INVITE", &r.branch));
    assert!(!r.is_answer(&forbidden, "BYE", &r.branch));
    assert!(!r.is_answer(&forbidden, "INVITE", "z9hG4bK-other"));
    let a = Answer::read(&forbidden, vec![100], Duration::from_millis(2)).unwrap();
    assert_eq!((a.status, a.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        a.warnings,
        ["399 sipadmit \"not supported\"", "399 other \"second\""]
    );
    assert_eq!(a.ms_diagnostics, ["17002;reason=\"x\""]);
    assert_eq!(
        Answer::read(&response(&sent, "180 Ringing", ""), vec![], Duration::ZERO),
        None
    );
    // The ACK of a non-2xx: same branch and Request-URI, the answer's To tag.
    let ack = text(&r.ack(&forbidden, Transport::Udp, local()));
    assert!(
        ack.starts_with("ACK sip:helpdesk@contoso.com SIP/2.0\r\n"),
        "{ack}"
    );
    assert!(
        ack.contains(&format!(";branch={};rport", r.branch)),
        "{ack}"
    );
    assert!(
        ack.contains("\r\nTo: <sip:helpdesk@contoso.com>;tag=srv1\r\n")
            && ack.contains("\r\nCSeq: 1 ACK\r\n"),
        "{ack}"
    );
}

#[test]
fn a_2xx_is_acknowledged_and_the_call_ended_along_the_record_route() {
    let r = ProbeRequest::new(
        ProbeMethod::Invite,
        "127.0.0.1:5060",
        Some("sip:agent@contoso.com"),
        None,
        None,
        0,
        7,
    )
    .unwrap();
    let sent = r.render(Transport::Tcp, local());
    let ok = response(
        &sent,
        "200 OK",
        "Record-Route: <sip:10.0.0.9;lr>, <sip:127.0.0.1:5060;transport=tcp;lr>\r\nContact: <sip:agent@127.0.0.1:41000;transport=tcp>\r\n",
    );
    let (ack, bye) = r.ack_and_bye(&ok, Transport::Tcp, local());
    let (ack, bye) = (text(&ack), text(&bye));
    assert!(
        ack.starts_with("ACK sip:agent@127.0.0.1:41000;transport=tcp SIP/2.0\r\n"),
        "{ack}"
    );
    assert!(
        ack.contains("\r\nRoute: <sip:127.0.0.1:5060;transport=tcp;lr>, <sip:10.0.0.9;lr>\r\n"),
        "{ack}"
    );
    assert!(
        ack.contains("-ack;rport") && ack.contains("\r\nCSeq: 1 ACK\r\n"),
        "{ack}"
    );
    assert!(
        bye.starts_with("BYE sip:agent@127.0.0.1:41000;transport=tcp SIP/2.0\r\n"),
        "{bye}"
    );
    assert!(
        bye.contains("-bye;rport") && bye.contains("\r\nCSeq: 2 BYE\r\n"),
        "{bye}"
    );
    assert!(bye.contains(";tag=srv1\r\n"), "{bye}");
}

#[test]
fn a_2xx_without_a_usable_contact_is_acknowledged_and_ended_at_the_request_uri() {
    let r = ProbeRequest::new(
        ProbeMethod::Invite,
        "127.0.0.1:5060",
        Some("sip:helpdesk@contoso.com"),
        None,
        None,
        0,
        7,
    )
    .unwrap();
    let sent = r.render(Transport::Udp, local());
    for (contact, bad) in [
        ("Contact: *\r\n", BadContact::NotSipUri("*".into())),
        ("", BadContact::Missing),
        (
            "Contact: <notauri>\r\n",
            BadContact::NotSipUri("<notauri>".into()),
        ),
        (
            "Contact: <mailto:agent@contoso.com>\r\n",
            BadContact::NotSipUri("<mailto:agent@contoso.com>".into()),
        ),
        (
            "Contact: <sip:agent@>\r\n",
            BadContact::NotSipUri("<sip:agent@>".into()),
        ),
    ] {
        let ok = response(&sent, "200 OK", contact);
        assert_eq!(remote_target(&ok), Err(bad), "{contact}");
        let (ack, bye) = r.ack_and_bye(&ok, Transport::Udp, local());
        let (ack, bye) = (text(&ack), text(&bye));
        assert!(
            ack.starts_with("ACK sip:helpdesk@contoso.com SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(
            bye.starts_with("BYE sip:helpdesk@contoso.com SIP/2.0\r\n"),
            "{bye}"
        );
    }
    assert_eq!(
        BadContact::NotSipUri("*".into()).to_string(),
        "its `Contact: *` is not a SIP or SIPS URI"
    );
    // A SIPS Contact is a usable remote target.
    let ok = response(&sent, "200 OK", "Contact: <sips:agent@127.0.0.1:41001>\r\n");
    assert_eq!(
        remote_target(&ok).as_deref(),
        Ok("sips:agent@127.0.0.1:41001")
    );
}
