//! The pool features of the core: advertised names in Via, Path and
//! Record-Route and recognised in Route, Request-URI and Via; the answer to
//! an OPTIONS addressed to sipadmit itself; flow tokens across a rotation
//! of the secrets.

use super::*;

/// The unit tests' config, advertising `advertise` for every listener.
fn advertising(advertise: &str) -> Core {
    Core::detached(&CONFIG.replace(
        "[proxy]\n",
        &format!("[proxy]\nadvertise = \"{advertise}\"\n"),
    ))
    .unwrap()
}

fn view(text: &str) -> SipView {
    SipView::parse(Bytes::from(text.to_owned())).unwrap()
}

/// An OPTIONS from the client to `ruri` with `extra` header lines.
fn options(ruri: &str, extra: &str) -> String {
    request("OPTIONS", ruri, client(), LYNC, extra)
}

#[test]
fn a_request_uri_without_user_naming_a_listener_or_the_advertised_name_is_addressed_to_itself() {
    let core = advertising("pool.example.com");
    for (ruri, extra, to_self) in [
        ("sip:127.0.0.1:5060", "", true),
        ("sip:127.0.0.1", "", true),
        ("sip:127.0.0.1:5060;transport=tcp", "", true),
        ("sips:127.0.0.1:5060", "", true),
        ("sip:pool.example.com", "", true),
        ("sip:POOL.example.com.:5060;transport=udp", "", true),
        // Loose routing: Route values naming it are popped.
        (
            "sip:pool.example.com",
            "Route: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:pool.example.com;lr>\r\n",
            true,
        ),
        // A user part: for someone else behind it.
        ("sip:alice@127.0.0.1:5060", "", false),
        ("sip:alice@pool.example.com", "", false),
        // Other hosts and ports: the registrar, anyone.
        ("sip:127.0.0.1:5070", "", false),
        ("sip:registrar.example.com", "", false),
        ("sip:pool.example.com:5099", "", false),
        ("tel:+15551234", "", false),
        // A Route onward: not the end of the path.
        (
            "sip:pool.example.com",
            "Route: <sip:registrar.example.com;lr>\r\n",
            false,
        ),
        // A Route with a flow token is a dialog's, not a probe's.
        (
            "sip:pool.example.com",
            "Route: <sip:0123abcd@pool.example.com;lr>\r\n",
            false,
        ),
    ] {
        assert_eq!(
            core.addressed_to_self(&view(&options(ruri, extra))),
            to_self,
            "{ruri} {extra:?}"
        );
    }
    // Without `advertise`, the name is nobody's.
    let plain = Core::detached(CONFIG).unwrap();
    assert!(!plain.addressed_to_self(&view(&options("sip:pool.example.com", ""))));
    assert!(plain.addressed_to_self(&view(&options("sip:127.0.0.1:5060", ""))));
}

#[test]
fn options_to_itself_get_200_when_ready_counted_not_recorded() {
    let core = advertising("pool.example.com");
    core.metrics().note_udp_upstream_heard();
    assert!(core.not_ready().is_none());
    for ruri in ["sip:127.0.0.1:5060", "sip:pool.example.com"] {
        let probe = options(ruri, "");
        let out = handle(&core, &udp(probe.clone(), client()));
        let (to, answer) = sent(&out);
        assert_eq!(to, Destination::Source);
        assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
        for name in ["From", "Call-ID", "CSeq"] {
            assert_eq!(
                header_values(&answer, name),
                header_values(&probe, name),
                "{name}"
            );
        }
        let to_header = header_values(&answer, "To")[0];
        assert!(
            to_header.starts_with(&format!("<{ruri}>;tag=sa")),
            "{to_header}"
        );
        assert!(
            header_values(&answer, "Via")[0].ends_with(";rport=40000;received=127.0.0.1"),
            "{answer}"
        );
        // RFC 3261 11.2: a proxy leaves Allow out.
        assert!(header_values(&answer, "Allow").is_empty(), "{answer}");
        assert!(out.record().is_none(), "a 200 is counted, not recorded");
    }
    assert_eq!(
        core.metrics().protocol_answers("proxy.health", Some(200)),
        2
    );
}

#[test]
fn a_copy_of_an_options_to_itself_keeps_its_answer_where_it_meets_the_rate_limit() {
    let core = advertising("pool.example.com");
    core.metrics().note_udp_upstream_heard();
    let over = SourceRefusal::OverLimit {
        retry_after_secs: 2,
        generation: 1,
    };
    let status_of = |outcome: &Outcome| sent(outcome).1[..11].to_owned();
    // Answered 200, then a copy over the limit: dropped, not answered 503.
    let first = udp(options("sip:127.0.0.1:5060", ""), client());
    assert_eq!(status_of(&handle(&core, &first)), "SIP/2.0 200");
    let copy = core.refuse_source(&first, Instant::now(), over);
    assert_eq!(copy.drop_reason(), Some(DropReason::RateLimited));
    // Answered 503 over the limit, then a copy within it: the 503 again.
    let second = options("sip:127.0.0.1:5060", "").replace("z9hG4bK-OPTIONS", "z9hG4bK-two");
    let second = udp(second, client());
    assert_eq!(
        status_of(&core.refuse_source(&second, Instant::now(), over)),
        "SIP/2.0 503"
    );
    let copy = handle(&core, &second);
    assert_eq!(status_of(&copy), "SIP/2.0 503");
    assert!(copy.record().is_none());
    assert_eq!(
        core.metrics().protocol_answers("proxy.health", Some(200)),
        1
    );
}

#[test]
fn options_to_itself_get_503_saying_why_while_not_ready() {
    let core = Core::detached(CONFIG).unwrap();
    let probe = |n: u16| {
        let source = SocketAddr::new(client().ip(), n);
        let out = handle(
            &core,
            &udp(
                request("OPTIONS", "sip:127.0.0.1", source, LYNC, ""),
                source,
            ),
        );
        let (_, answer) = sent(&out);
        (answer, out.into_record())
    };
    // Probes on and a UDP registrar never heard from: unknown.
    let (answer, record) = probe(41000);
    assert!(
        answer.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert_eq!(
        header_values(&answer, "Warning"),
        ["399 sipadmit \"upstream udp:127.0.0.1:5070 unknown: it has not answered sipadmit's OPTIONS probe yet\""]
    );
    assert_eq!(header_values(&answer, "Retry-After"), ["30"]);
    let record = record.expect("a 503 is recorded");
    assert_eq!(
        (
            record.action,
            record.rule.as_ref(),
            record.status,
            record.kind
        ),
        (
            Action::Reject,
            "proxy.health",
            Some(503),
            Some(DecisionKind::Protocol)
        )
    );
    // Heard, then a send failed: not reachable, for the failure window.
    core.metrics().note_udp_upstream_heard();
    core.metrics()
        .count_upstream_send_failure(Transport::Udp, "Connection refused (os error 111)".into());
    let (answer, _) = probe(41001);
    let warning = header_values(&answer, "Warning")[0];
    assert!(
        warning.starts_with("399 sipadmit \"upstream udp:127.0.0.1:5070 not reachable: Connection refused (os error 111) ("),
        "{warning}"
    );
    core.metrics().note_upstream_sent();
    assert!(
        sent(&handle(&core, &udp(options("sip:127.0.0.1", ""), client())))
            .1
            .starts_with("SIP/2.0 200 ")
    );
    // Draining: 503 for good, no Retry-After (act as for a 500).
    core.start_draining();
    assert!(core.is_draining());
    let (answer, _) = probe(41002);
    assert!(answer.starts_with("SIP/2.0 503 "), "{answer}");
    assert_eq!(
        header_values(&answer, "Warning"),
        ["399 sipadmit \"draining\""]
    );
    assert!(header_values(&answer, "Retry-After").is_empty(), "{answer}");
    assert_eq!(
        core.metrics().protocol_answers("proxy.health", Some(503)),
        3
    );
    assert_eq!(
        core.metrics().protocol_answers("proxy.health", Some(200)),
        1
    );
}

/// A registrar found unreachable (an ICMP error, a silence) is held so
/// until it sends a message while probes can tell that it is back; with
/// the probes off, nothing would, so it is held for the failure window
/// after the last evidence (a balancer then sends traffic that tests it).
#[test]
fn with_the_probes_off_an_unreachable_registrar_is_held_for_the_failure_window_only() {
    let probes_off = CONFIG.replacen("[proxy]\n", "[proxy]\nupstream_probe_secs = 0\n", 1);
    for (config, held_later) in [(CONFIG, true), (probes_off.as_str(), false)] {
        let core = Core::detached(config).unwrap();
        core.metrics().note_udp_upstream_heard();
        core.metrics()
            .note_udp_upstream_unreachable("no message from it for 10 s".into());
        let now = Instant::now();
        assert!(core.not_ready_at(now).is_some(), "{config}");
        let later = now + crate::proxy::health::UPSTREAM_FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(core.not_ready_at(later).is_some(), held_later, "{config}");
        core.metrics().note_udp_upstream_heard();
        assert!(core.not_ready_at(now).is_none(), "{config}");
    }
}

#[test]
fn other_options_are_relayed_and_a_scanners_is_not_answered() {
    let core = advertising("pool.example.com");
    core.metrics().note_udp_upstream_heard();
    for ruri in [
        "sip:alice@127.0.0.1:5060",
        "sip:alice@pool.example.com",
        "sip:127.0.0.1:5070",
    ] {
        let out = handle(&core, &udp(options(ruri, ""), client()));
        assert_eq!(sent(&out).0, Destination::Upstream, "{ruri}");
    }
    // A scanner's OPTIONS to sipadmit goes through the policy (dropped by
    // default), never a 200 that tells it something answers here.
    let out = handle(
        &core,
        &udp(
            request("OPTIONS", "sip:127.0.0.1", client(), "friendly-scanner", ""),
            client(),
        ),
    );
    assert!(out.outbound().is_none(), "{:?}", out.outbound());
    assert_eq!(out.drop_reason(), Some(DropReason::Policy));
}

#[test]
fn the_advertised_name_goes_in_path_record_route_and_via() {
    let core = advertising("pool.example.com");
    let out = handle(
        &core,
        &udp(
            request("REGISTER", "sip:contoso.com", client(), LYNC, ""),
            client(),
        ),
    );
    let (_, register) = sent(&out);
    let path = header_values(&register, "Path")[0];
    assert!(
        path.starts_with("<sip:") && path.ends_with("@pool.example.com;transport=udp;lr>"),
        "{path}"
    );
    assert!(
        header_values(&register, "Via")[0]
            .starts_with("SIP/2.0/UDP pool.example.com:5060;branch=z9hG4bKsa"),
        "the listener's port for UDP responses: {register}"
    );
    // Over TCP in, UDP out: both Record-Route values name the pool.
    let invite = tcp(
        request("INVITE", "sip:bob@contoso.com", client(), LYNC, "")
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP"),
        client(),
        1,
    );
    let (_, relayed) = sent(&handle(&core, &invite));
    let rr = header_values(&relayed, "Record-Route");
    assert_eq!(rr.len(), 2, "{relayed}");
    assert!(
        rr[0].contains("@pool.example.com;transport=udp;lr;ftag=f1;sipadmit-dlg="),
        "{}",
        rr[0]
    );
    assert!(
        rr[1].contains("@pool.example.com;transport=tcp;lr;ftag=f1;sipadmit-dlg="),
        "{}",
        rr[1]
    );

    // Per listener: only the UDP listener advertises; TCP keeps its address.
    let per_listener = Core::detached(&CONFIG.replace(
        "[proxy]\n",
        "[proxy]\nadvertise = { \"udp:0.0.0.0:5060\" = \"sip.example.com:5062\" }\n",
    ))
    .unwrap();
    let (_, relayed) = sent(&handle(&per_listener, &invite));
    let rr = header_values(&relayed, "Record-Route");
    assert!(
        rr[0].contains("@sip.example.com:5062;transport=udp;lr;"),
        "{}",
        rr[0]
    );
    assert!(
        rr[1].contains("@127.0.0.1:5060;transport=tcp;lr;"),
        "{}",
        rr[1]
    );
}

#[test]
fn route_and_via_naming_the_advertised_name_are_its_own() {
    let core = advertising("pool.example.com");
    let (_, register) = sent(&handle(
        &core,
        &udp(
            request("REGISTER", "sip:contoso.com", client(), LYNC, ""),
            client(),
        ),
    ));
    let path = header_values(&register, "Path")[0].trim_matches(|c| c == '<' || c == '>');
    // The registrar offers a call along the Path: the Route naming the pool
    // is popped and the offer goes to the client's flow.
    let offer = request(
        "INVITE",
        &format!("sip:agent-a@{}", client()),
        upstream(),
        RGS,
        &format!("Route: <{path}>\r\n"),
    );
    let (to, relayed) = sent(&handle(&core, &udp(offer, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == client()),
        "{to:?}"
    );
    assert!(header_values(&relayed, "Route").is_empty(), "{relayed}");
    // A client naming the pool as its outbound proxy: the plain Route goes.
    let routed = request(
        "MESSAGE",
        "sip:bob@contoso.com",
        client(),
        LYNC,
        "Route: <sip:pool.example.com;lr>\r\n",
    );
    let (to, relayed) = sent(&handle(&core, &udp(routed, client())));
    assert_eq!(to, Destination::Upstream);
    assert!(header_values(&relayed, "Route").is_empty(), "{relayed}");
    // The registrar's answer to the REGISTER: the top Via names the pool,
    // so it is this proxy's, popped and relayed to the client.
    let answer = register.replacen("REGISTER sip:contoso.com SIP/2.0", "SIP/2.0 200 OK", 1);
    let (to, relayed) = sent(&handle(&core, &udp(answer, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == client()),
        "{to:?}"
    );
    assert_eq!(header_values(&relayed, "Via").len(), 1, "{relayed}");
}

#[test]
fn a_rotated_signer_verifies_old_tokens_until_the_old_secret_goes() {
    let core = Core::detached(CONFIG).unwrap();
    let (_, register) = sent(&handle(
        &core,
        &udp(
            request("REGISTER", "sip:contoso.com", client(), LYNC, ""),
            client(),
        ),
    ));
    let old_path = header_values(&register, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    let offer = |path: &str, n: u32| {
        let invite = request(
            "INVITE",
            &format!("sip:agent-a@{}", client()),
            upstream(),
            RGS,
            &format!("Route: <{path}>\r\n"),
        )
        .replace("Call-ID: INVITE-", &format!("Call-ID: {n}-INVITE-"));
        handle(&core, &udp(invite, upstream()))
    };
    assert!(matches!(sent(&offer(&old_path, 1)).0, Destination::Flow(_)));
    assert_eq!(
        core.metrics()
            .flow_tokens_older_secret
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Rotation: the new secret first, the old one kept for verifying.
    let rotated = flow::FlowSigner::with_secrets(&[
        &b"the-new-secret-0123456789"[..],
        b"core-unit-tests-secret",
    ])
    .unwrap();
    assert!(core.set_flow_signer(rotated.clone()));
    assert!(!core.set_flow_signer(rotated), "same secrets: kept");
    assert!(matches!(sent(&offer(&old_path, 2)).0, Destination::Flow(_)));
    assert_eq!(
        core.metrics()
            .flow_tokens_older_secret
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // New registrations get tokens of the new secret.
    let (_, register) = sent(&handle(
        &core,
        &udp(
            request("REGISTER", "sip:contoso.com", client(), LYNC, "")
                .replace("CSeq: 1 ", "CSeq: 2 "),
            client(),
        ),
    ));
    let new_path = header_values(&register, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    assert_ne!(new_path, old_path);
    // The old secret dropped: its tokens are refused (403), the new work.
    assert!(core.set_flow_signer(flow::FlowSigner::new(b"the-new-secret-0123456789")));
    assert_eq!(status(&offer(&old_path, 3)), Some(403));
    assert!(matches!(sent(&offer(&new_path, 4)).0, Destination::Flow(_)));
}

#[test]
fn a_cancel_after_a_rotation_or_through_another_instance_gets_its_invites_branch() {
    // The next hop matches a CANCEL to its INVITE by the branch of the top
    // Via (RFC 3261 9.2): this proxy's, the same whatever secret signs.
    let branch_of = |core: &Core, method: &str| {
        let text = request(method, "sip:bob@contoso.com", client(), LYNC, "")
            .replace(&format!("z9hG4bK-{method}-"), "z9hG4bK-call-")
            .replace(&format!("Call-ID: {method}-"), "Call-ID: call-");
        let (_, relayed) = sent(&handle(core, &udp(text, client())));
        header_values(&relayed, "Via")[0]
            .split(";branch=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let core = Core::detached(CONFIG).unwrap();
    let invite = branch_of(&core, "INVITE");
    assert!(core.set_flow_signer(flow::FlowSigner::new(b"the-new-secret-0123456789")));
    assert_eq!(branch_of(&core, "CANCEL"), invite, "after a rotation");
    let other_instance =
        Core::detached(&CONFIG.replace("core-unit-tests-secret", "another-instances-secret"))
            .unwrap();
    assert_eq!(
        branch_of(&other_instance, "CANCEL"),
        invite,
        "on another instance"
    );
}

#[test]
fn a_draining_instance_relays_a_copy_of_a_request_it_relayed_and_refuses_a_new_one() {
    // A UDP client's MESSAGE relayed before the drain, then retransmitted
    // during it: handled as the first copy was (its first copy may wait at a
    // stream registrar, which the drain waits for), not answered 503 as new.
    let core = Core::detached(CONFIG).unwrap();
    let message = |branch: &str| {
        udp(
            request("MESSAGE", "sip:bob@contoso.com", client(), LYNC, "")
                .replace("z9hG4bK", &format!("z9hG4bK{branch}")),
            client(),
        )
    };
    let first = message("first");
    assert_eq!(sent(&handle(&core, &first)).0, Destination::Upstream);
    core.start_draining();
    let copy = handle(&core, &first);
    assert_eq!(
        sent(&copy).0,
        Destination::Upstream,
        "the copy is relayed: {}",
        sent(&copy).1
    );
    assert!(copy.into_record().is_none(), "and not recorded again");
    let new = handle(
        &core,
        &udp(
            request("MESSAGE", "sip:carol@contoso.com", client(), LYNC, ""),
            client(),
        ),
    );
    assert_eq!(status(&new), Some(503));
}

#[test]
fn a_copy_of_a_request_answered_408_when_the_drain_ran_out_gets_the_408_again() {
    // A UDP client's REGISTER relayed to a stream registrar that left it
    // unanswered; the drain ran out and answered it 408. A copy of it that
    // crossed that answer is answered the same, not relayed a second time
    // (which would leave it unanswered at the stop).
    let core = Core::detached(CONFIG).unwrap();
    let register = udp(
        request("REGISTER", "sip:contoso.com", client(), LYNC, ""),
        client(),
    );
    assert_eq!(sent(&handle(&core, &register)).0, Destination::Upstream);
    core.start_draining();
    let timeout = core.drain_ran_out(&register, Instant::now());
    assert_eq!(status(&timeout), Some(408));
    assert!(timeout.into_record().is_some(), "the 408 is recorded");
    let copy = handle(&core, &register);
    assert_eq!(sent(&copy).0, Destination::Source);
    assert_eq!(status(&copy), Some(408), "{}", sent(&copy).1);
    assert!(copy.into_record().is_none(), "and not recorded again");
}
