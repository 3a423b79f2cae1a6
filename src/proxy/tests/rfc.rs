//! RFC details of the relay: Max-Forwards added where there is none, `ftag`
//! for a caller without a From-tag or with a tag a URI must escape, and
//! `sips:` URIs for a `sips:` request.

use super::*;

#[test]
fn a_request_without_max_forwards_leaves_with_70() {
    // RFC 3261 16.6 step 3: the proxy adds one, which SHOULD be 70.
    let core = Core::detached(CONFIG).unwrap();
    let invite = request("INVITE", "sip:bob@contoso.com", client(), LYNC, "")
        .replace("Max-Forwards: 70\r\n", "");
    let (_, relayed) = sent(&handle(&core, &udp(invite, client())));
    assert_eq!(header_values(&relayed, "Max-Forwards"), ["70"], "{relayed}");
}

/// The Record-Route of an INVITE from `caller` whose From carries
/// `from_params` (`;tag=...`, or nothing), then where a BYE along it goes
/// from each side: the callee's (from the registrar) and the caller's own,
/// sent from a new port (a NAT rebinding).
fn dialog_directions(from_params: &str) -> (String, Destination, Destination) {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:42100".parse().unwrap();
    let invite = request("INVITE", "sip:bob@contoso.com", caller, LYNC, "").replace(
        "From: <sip:alice@contoso.com>;tag=f1",
        &format!("From: <sip:alice@contoso.com>{from_params}"),
    );
    let (_, relayed) = sent(&handle(&core, &udp(invite, caller)));
    let rr = header_values(&relayed, "Record-Route")[0].to_owned();
    let bye = |from: &str, to: &str, via: SocketAddr| {
        format!(
            "BYE sip:x@contoso.com SIP/2.0\r\nRoute: {rr}\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-bye-{}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: dialog@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            via.port()
        )
    };
    let alice = format!("<sip:alice@contoso.com>{from_params}");
    let callee_bye = bye("<sip:bob@contoso.com>;tag=callee", &alice, upstream());
    let (toward_callee_side, _) = sent(&handle(&core, &udp(callee_bye, upstream())));
    let rebound: SocketAddr = "127.0.0.1:42101".parse().unwrap();
    let caller_bye = bye(&alice, "<sip:bob@contoso.com>;tag=callee", rebound);
    let (toward_caller_side, _) = sent(&handle(&core, &udp(caller_bye, rebound)));
    (rr, toward_callee_side, toward_caller_side)
}

#[test]
fn a_caller_without_a_from_tag_gets_no_empty_ftag_and_its_own_bye_goes_upstream() {
    // An RFC 2543 client (the RFC 4475 `inv2543` message) has no From-tag:
    // `ftag=` with nothing after it is no URI parameter.
    let (rr, callee_bye, caller_bye) = dialog_directions("");
    assert!(
        rr.contains(";lr;sipadmit-dlg=") && !rr.contains("ftag"),
        "{rr}"
    );
    assert!(
        matches!(callee_bye, Destination::Flow(ref f) if f.peer.port() == 42100),
        "{callee_bye:?}"
    );
    assert_eq!(caller_bye, Destination::Upstream);
}

#[test]
fn a_from_tag_with_characters_a_uri_escapes_is_escaped_in_ftag_and_still_matched() {
    // `%` and `` ` `` are token characters (a tag) but not a URI
    // parameter's (RFC 3261 25.1).
    let (rr, callee_bye, caller_bye) = dialog_directions(";tag=50%off`x");
    assert!(rr.contains(";lr;ftag=50%25off%60x;sipadmit-dlg="), "{rr}");
    assert!(
        matches!(callee_bye, Destination::Flow(ref f) if f.peer.port() == 42100),
        "{callee_bye:?}"
    );
    assert_eq!(caller_bye, Destination::Upstream);
}

#[test]
fn a_sips_request_gets_sips_uris_on_its_tls_side() {
    // RFC 3261 16.6 step 4: for a `sips:` request the Record-Route URI
    // MUST be `sips:`; RFC 5630: no `transport=tls` on it. The agent is
    // registered over TLS; the registrar offers it a `sips:` call over UDP.
    let core = core_on(
        DETACHED_UPSTREAM,
        &[Transport::Udp, Transport::Tcp, Transport::Tls],
        BootId::from_u64(1),
    );
    let agent: SocketAddr = "127.0.0.1:43000".parse().unwrap();
    let register = request("REGISTER", "sips:contoso.com", agent, LYNC, "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TLS");
    let tls = |bytes: String| Inbound {
        transport: Transport::Tls,
        connection: ConnectionId::new(1),
        ..udp(bytes, agent)
    };
    // Toward the UDP registrar a `sips:` REGISTER cannot leave (26.2.2).
    assert_eq!(status(&handle(&core, &tls(register.clone()))), Some(480));
    let (_, relayed) = sent(&handle(
        &core,
        &tls(register.replace("sips:contoso.com", "sip:contoso.com")),
    ));
    // The Path names the registrar's side: UDP.
    let path = header_values(&relayed, "Path")[0].to_owned();
    assert!(
        path.starts_with("<sip:") && path.ends_with(";transport=udp;lr>"),
        "{path}"
    );

    let offer = request(
        "INVITE",
        &format!("sips:agent-a@{agent}"),
        upstream(),
        RGS,
        &format!("Route: {path}\r\n"),
    );
    let (to, delivered) = sent(&handle(&core, &udp(offer, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.transport == Transport::Tls),
        "{to:?}"
    );
    let rr = header_values(&delivered, "Record-Route");
    assert_eq!(rr.len(), 2, "{delivered}");
    assert!(
        rr[0].starts_with("<sips:") && rr[0].contains(";lr;ftag=f1;sipadmit-dlg="),
        "{}",
        rr[0]
    );
    assert!(!rr[0].contains("transport="), "{}", rr[0]);
    assert!(
        rr[1].starts_with("<sip:") && rr[1].contains(";transport=udp;lr;ftag=f1;sipadmit-dlg="),
        "{}",
        rr[1]
    );
}

#[test]
fn a_mobile_caller_cannot_reach_the_workflow_by_another_spelling_of_its_address() {
    // The registrar reads all of these as the workflow's address.
    let core = Core::detached(CONFIG).unwrap();
    for (port, ruri) in [
        (44000, "sip:helpdesk:pw@contoso.com"),
        (44001, "sip:help%64esk@contoso.com"),
        (44002, "sip:%68%65%6c%70%64%65%73%6b@contoso.com"),
        (44003, "sip:helpdesk@contoso.com."),
    ] {
        let caller = SocketAddr::new(client().ip(), port);
        let invite = udp(request("INVITE", ruri, caller, MOBILE, ""), caller);
        assert_eq!(status(&handle(&core, &invite)), Some(403), "{ruri}");
    }
}

#[test]
fn a_folded_user_agent_is_recorded_on_one_line() {
    // RFC 3261 7.3.1: a line fold is one space.
    let core = Core::detached(CONFIG).unwrap();
    let folded = "RTCC/7.0.0.0 UCWA/7.0.0.0 \r\n\t AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)";
    let invite = request("INVITE", "sip:helpdesk@contoso.com", client(), folded, "");
    let outcome = handle(&core, &udp(invite, client()));
    assert_eq!(
        status(&outcome),
        Some(403),
        "classified as the mobile client"
    );
    assert_eq!(
        outcome.into_record().unwrap().user_agent.as_deref(),
        Some(MOBILE)
    );
}

#[test]
fn a_request_with_a_line_that_is_no_header_is_answered_400_and_recorded() {
    // RFC 3261 16.3: a request that fails validation is answered with an
    // error, not dropped, so the client stops retransmitting it.
    let core = Core::detached(CONFIG).unwrap();
    let register = request(
        "REGISTER",
        "sip:contoso.com",
        client(),
        LYNC,
        "This is not a header\r\n",
    );
    let outcome = handle(&core, &udp(register, client()));
    assert_eq!(status(&outcome), Some(400));
    let (to, answer) = sent(&outcome);
    assert_eq!(to, Destination::Source);
    assert_eq!(
        header_values(&answer, "Call-ID"),
        [format!("REGISTER-{}@test", client().port())]
    );
    assert_eq!(outcome.into_record().unwrap().rule, "proxy.malformed");
}

#[test]
fn a_registrar_request_addressed_to_sipadmit_itself_is_answered_not_sent_to_itself() {
    // Sent to its own address, the request would come back as a loop (482,
    // answered to itself and relayed to the registrar).
    let core = Core::detached(CONFIG).unwrap();
    let notify = request(
        "NOTIFY",
        &format!("sip:{DETACHED_ADDRESS}"),
        upstream(),
        RGS,
        "Event: x\r\n",
    );
    let outcome = handle(&core, &udp(notify, upstream()));
    assert_eq!(status(&outcome), Some(404));
    assert_eq!(sent(&outcome).0, Destination::Source);
    // Another literal address is still a UDP flow.
    let other = request(
        "NOTIFY",
        "sip:127.0.0.9:5090",
        upstream(),
        RGS,
        "Event: x\r\n",
    );
    let (to, _) = sent(&handle(&core, &udp(other, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer.to_string() == "127.0.0.9:5090"),
        "{to:?}"
    );
}

#[test]
fn the_ack_of_an_answer_to_a_re_invite_is_absorbed_though_it_keeps_the_dialogs_tag() {
    // RFC 3261 17.2.1: the element that answered a non-2xx absorbs its ACK.
    // Answering an INVITE inside a dialog, sipadmit keeps the dialog's To
    // tag, so the ACK carries that tag, not sipadmit's.
    let core = Core::detached(CONFIG).unwrap();
    let in_dialog = |method: &str, branch: &str| {
        request(method, "sip:bob@contoso.com", client(), LYNC, "")
            .replace(
                "To: <sip:bob@contoso.com>",
                "To: <sip:bob@contoso.com>;tag=abc",
            )
            .replace(&format!("z9hG4bK-{method}-40000"), branch)
            .replace(&format!("CSeq: 1 {method}"), &format!("CSeq: 7 {method}"))
            .replace(
                &format!("Call-ID: {method}-40000@test"),
                "Call-ID: dialog@test",
            )
    };
    let reinvite = in_dialog("INVITE", "z9hG4bK-re").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(status(&handle(&core, &udp(reinvite, client()))), Some(483));
    let ack = in_dialog("ACK", "z9hG4bK-re");
    let absorbed = handle(&core, &udp(ack, client()));
    assert!(absorbed.outbound().is_none(), "absorbed, not relayed");
    assert!(absorbed.into_record().is_none());
    // The ACK of another transaction in the dialog (a 2xx's, with a new
    // branch) is relayed.
    let other = in_dialog("ACK", "z9hG4bK-other");
    assert_eq!(
        sent(&handle(&core, &udp(other, client()))).0,
        Destination::Upstream
    );
}

#[test]
fn a_request_for_a_registrar_known_to_be_down_gets_one_record_the_503() {
    // Not a policy allow and then a 503 from the I/O layer: the 503 alone.
    let register = |core: &Core, port: u16| {
        let agent = SocketAddr::new(client().ip(), port);
        handle(
            core,
            &udp(
                request("REGISTER", "sip:contoso.com", agent, LYNC, ""),
                agent,
            ),
        )
    };
    let core = Core::detached(CONFIG).unwrap();
    core.metrics()
        .note_udp_upstream_unreachable("ICMP port unreachable".into());
    let outcome = register(&core, 45000);
    assert_eq!(status(&outcome), Some(503));
    let record = outcome.into_record().unwrap();
    assert_eq!(
        (record.action, &*record.rule),
        (Action::Reject, "proxy.upstream-unavailable")
    );
    core.metrics().note_udp_upstream_heard();
    assert_eq!(sent(&register(&core, 45001)).0, Destination::Upstream);

    // A stream registrar: while its link fails fast after a failed connect.
    let tcp_upstream = core_on(
        "tcp:127.0.0.1:5070",
        &[Transport::Udp, Transport::Tcp],
        BootId::from_u64(1),
    );
    let metrics = tcp_upstream.metrics();
    metrics.note_stream_upstream_down(Instant::now() + std::time::Duration::from_secs(60));
    assert_eq!(status(&register(&tcp_upstream, 45002)), Some(503));
    metrics.note_stream_upstream_connected();
    assert_eq!(
        sent(&register(&tcp_upstream, 45003)).0,
        Destination::Upstream
    );
    // The window over, the next request tries again.
    metrics.note_stream_upstream_down(Instant::now());
    assert_eq!(
        sent(&register(&tcp_upstream, 45004)).0,
        Destination::Upstream
    );
}

#[test]
fn a_resend_answered_503_after_its_first_copy_was_relayed_has_the_503_recorded() {
    // A UDP client's REGISTER relayed (its allow record), then its
    // retransmission while the registrar is known to be down: the 503 is
    // a second thing that happened to the transaction, recorded once.
    let core = Core::detached(CONFIG).unwrap();
    let register = udp(
        request("REGISTER", "sip:contoso.com", client(), LYNC, ""),
        client(),
    );
    let relayed = handle(&core, &register);
    assert_eq!(sent(&relayed).0, Destination::Upstream);
    assert_eq!(relayed.into_record().unwrap().action, Action::Allow);
    assert_eq!(core.registrations().pending(), 1);
    core.metrics()
        .note_udp_upstream_unreachable("ICMP port unreachable".into());
    let answered = handle(&core, &register);
    assert_eq!(status(&answered), Some(503));
    let record = answered.into_record().expect("the 503 is recorded");
    assert_eq!(&*record.rule, "proxy.upstream-unavailable");
    // Answered here, it awaits nothing more: a drain does not wait for it
    // (trial 34: a stop after a registrar outage waited out drain_secs).
    assert_eq!(core.registrations().pending(), 0);
    // A further copy is a retransmission of both: not recorded again.
    let again = handle(&core, &register);
    assert_eq!(status(&again), Some(503));
    assert!(again.into_record().is_none());
}

#[test]
fn a_register_copy_dropped_after_a_reload_leaves_its_first_copy_pending() {
    // Relayed, then a reload turns the policy's verdict: the copy is
    // dropped (its first copy's fate stands), not answered, so the first
    // copy still awaits the registrar's answer (review of stop 44).
    let allow = CONFIG.replace(
        "[response_group]",
        "[policy]\nscanner = \"allow\"\n[response_group]",
    );
    let reject = allow.replace("scanner = \"allow\"", "scanner = \"reject\"");
    let core = Core::detached(&allow).unwrap();
    let register = udp(
        request(
            "REGISTER",
            "sip:contoso.com",
            client(),
            "friendly-scanner",
            "",
        ),
        client(),
    );
    assert_eq!(sent(&handle(&core, &register)).0, Destination::Upstream);
    assert_eq!(core.registrations().pending(), 1);
    core.publish(runtime_from(&reject));
    let copy = handle(&core, &register);
    assert_eq!(copy.drop_reason(), Some(DropReason::DecidedBefore));
    assert_eq!(core.registrations().pending(), 1);
}
