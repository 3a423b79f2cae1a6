//! The core without sockets: runtime snapshots, refusals and their records,
//! flows of other instances, RFC 5658 Record-Route pairs, the flag header;
//! the pool features (advertised names, the health answer, rotated flow
//! secrets) in `tests/pool.rs`.

mod pool;
mod rfc;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::config::{Config, Overrides};
use crate::observe::decision_log::{DecisionKind, Leg};
use crate::policy::Action;
use crate::sip::{SipError, SipView, StartLine};

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
const MOBILE: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)";
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";

const CONFIG: &str = "[proxy]\nflow_secret = \"core-unit-tests-secret\"\n[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn upstream() -> SocketAddr {
    "127.0.0.1:5070".parse().unwrap()
}

fn udp(bytes: String, source: SocketAddr) -> Inbound {
    Inbound {
        bytes: Bytes::from(bytes),
        transport: Transport::Udp,
        source: PeerAddr(source),
        local: DETACHED_ADDRESS,
        connection: None,
        leg: if source == upstream() {
            Leg::FromRegistrar
        } else {
            Leg::FromClient
        },
    }
}

fn tcp(bytes: String, source: SocketAddr, connection: u64) -> Inbound {
    Inbound {
        transport: Transport::Tcp,
        connection: ConnectionId::new(connection),
        ..udp(bytes, source)
    }
}

/// A request from `via` (the sender's address) with `extra` header lines.
fn request(method: &str, ruri: &str, via: SocketAddr, ua: &str, extra: &str) -> String {
    let to = if method == "REGISTER" {
        "sip:agent-a@contoso.com"
    } else {
        ruri
    };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-{method}-{port};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=f1\r\nTo: <{to}>\r\nCall-ID: {method}-{port}@test\r\nCSeq: 1 {method}\r\nContact: <sip:alice@{via}>\r\nUser-Agent: {ua}\r\n{extra}Content-Length: 0\r\n\r\n",
        port = via.port()
    )
}

fn handle(core: &Core, inbound: &Inbound) -> Outcome {
    core.handle(inbound, Instant::now(), &|_, _| true)
}

fn sent(outcome: &Outcome) -> (Destination, String) {
    let out = outcome.outbound().expect("something sent");
    (
        out.to.clone(),
        String::from_utf8_lossy(&out.bytes).into_owned(),
    )
}

fn status(outcome: &Outcome) -> Option<u16> {
    let out = outcome.outbound()?;
    match SipView::parse(out.bytes.clone()).ok()?.start_line() {
        StartLine::Response { code, .. } => Some(code),
        StartLine::Request { .. } => None,
    }
}

fn header_values<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A core of the unit tests' config relaying to `upstream`, listening at
/// [`DETACHED_ADDRESS`] on `transports`, with boot id `boot`.
fn core_on(upstream: &str, transports: &[Transport], boot: BootId) -> Core {
    let config = Config::from_toml_str(
        CONFIG,
        Path::new("t.toml"),
        &Overrides {
            upstream: Some(upstream.into()),
            ..Overrides::default()
        },
    )
    .unwrap();
    Core::new(
        config,
        flow::FlowSigner::new(b"core-unit-tests-secret"),
        boot,
        transports
            .iter()
            .map(|&t| listening::Listening::at(t, DETACHED_ADDRESS.0))
            .collect(),
        Arc::new(Metrics::default()),
    )
}

fn runtime_from(toml: &str) -> RuntimeConfig {
    Config::from_toml_str(toml, Path::new("t.toml"), &Overrides::default())
        .unwrap()
        .runtime
}

#[test]
fn a_published_runtime_decides_the_next_message_and_names_its_generation() {
    let core = Core::detached(CONFIG).unwrap();
    assert_eq!(core.generation(), 1);
    // Each call a new transaction (another branch and Call-ID): the same
    // INVITE again would be a retransmission, handled but not recorded.
    let invite = |port: u16| {
        let caller = SocketAddr::new(client().ip(), port);
        udp(
            request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, ""),
            caller,
        )
    };
    let first = handle(&core, &invite(40000));
    assert_eq!(status(&first), Some(403));
    let record = first.into_record().unwrap();
    assert_eq!((record.action, record.generation), (Action::Reject, 1));

    let generation = core.publish(runtime_from(
        &(CONFIG.to_owned() + "[policy.caller]\nunsupported = \"allow\"\n"),
    ));
    assert_eq!(generation, 2);
    assert_eq!(core.generation(), 2);
    let second = handle(&core, &invite(40001));
    let (to, bytes) = sent(&second);
    assert_eq!(to, Destination::Upstream, "{bytes}");
    let record = second.into_record().unwrap();
    assert_eq!(
        (record.action, record.rule.as_ref(), record.generation),
        (Action::Allow, "caller.unsupported", 2)
    );
    assert_eq!(core.publish(runtime_from(CONFIG)), 3);
}

/// A source's rate limit refuses a request under one configuration and a
/// reload publishes another before the core writes the record (trial 42):
/// the record names the snapshot that decided, its generation and mode,
/// not the one in use by then; two reloads on, the one in use.
#[test]
fn a_rate_limit_refusal_is_recorded_with_the_snapshot_that_decided() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45015".parse().unwrap();
    let monitor = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    assert_eq!(core.publish(runtime_from(&monitor)), 2);
    let refused_under = |generation, port: u16| {
        let register = udp(
            request("REGISTER", "sip:contoso.com", caller, LYNC, "")
                .replace("45015", &port.to_string()),
            caller,
        );
        let over = SourceRefusal::OverLimit {
            retry_after_secs: 1,
            generation,
        };
        let record = core
            .refuse_source(&register, Instant::now(), over)
            .into_record()
            .unwrap();
        (record.generation, record.mode)
    };
    assert_eq!(refused_under(1, 45016), (1, crate::policy::Mode::Enforce));
    assert_eq!(refused_under(2, 45017), (2, crate::policy::Mode::Monitor));
    assert_eq!(core.publish(runtime_from(CONFIG)), 3);
    assert_eq!(
        refused_under(1, 45018),
        (3, crate::policy::Mode::Enforce),
        "no longer held"
    );
}

#[test]
fn a_copy_decided_otherwise_after_a_reload_keeps_the_first_copys_fate() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45010".parse().unwrap();
    let mobile = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, ""),
        caller,
    );
    let first = handle(&core, &mobile);
    assert_eq!(status(&first), Some(403));
    assert!(first.record().is_some());
    let monitor = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    core.publish(runtime_from(&monitor));

    // Its 403 was lost: the copy is not relayed into the Response Group
    // because monitor mode would relay a new one (RFC 3261 16.11); it gets
    // the 403 again, Warning and all (RFC 3261 17.2.1), not recorded again.
    let copy = handle(&core, &mobile);
    assert_eq!(status(&copy), Some(403));
    assert!(copy.record().is_none());
    assert_eq!(sent(&copy), sent(&first));
    assert_eq!(core.metrics().drops(DropReason::DecidedBefore), 0);
    // Its ACK is absorbed, as the first 403's would be.
    let invite = String::from_utf8_lossy(&mobile.bytes).into_owned();
    let ack = invite
        .replacen("INVITE ", "ACK ", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            "To: <sip:helpdesk@contoso.com>",
            &format!("To: {}", header_values(&sent(&copy).1, "To")[0]),
        );
    let ack = handle(&core, &udp(ack, caller));
    assert_eq!(ack.drop_reason(), Some(DropReason::AbsorbedAck));
    // A new transaction is decided by the new configuration.
    let next = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, "")
            .replace("z9hG4bK-INVITE", "z9hG4bK-next"),
        caller,
    );
    let next = handle(&core, &next);
    assert_eq!(sent(&next).0, Destination::Upstream);
    assert_eq!(next.record().unwrap().generation, 2);

    // And the other way: relayed (flagged) under monitor, rejected after
    // the switch back to enforce: the copy is dropped, not answered 403.
    core.publish(runtime_from(CONFIG));
    let flagged = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, "")
            .replace("z9hG4bK-INVITE", "z9hG4bK-next"),
        caller,
    );
    let copy = handle(&core, &flagged);
    assert_eq!(copy.drop_reason(), Some(DropReason::DecidedBefore));
    assert_eq!(core.metrics().drops(DropReason::DecidedBefore), 1);
    // A copy that a later configuration decides as the first was is
    // handled again, not recorded again.
    let again = handle(&core, &mobile);
    assert_eq!(
        (status(&again), again.record().is_none()),
        (Some(403), true)
    );
}

#[test]
fn a_copy_of_a_relayed_request_over_its_sources_limit_is_dropped_not_answered_503() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45020".parse().unwrap();
    let register = udp(
        request("REGISTER", "sip:contoso.com", caller, LYNC, ""),
        caller,
    );
    assert_eq!(sent(&handle(&core, &register)).0, Destination::Upstream);
    let over = SourceRefusal::OverLimit {
        retry_after_secs: 1,
        generation: 1,
    };
    let copy = core.refuse_source(&register, Instant::now(), over);
    assert_eq!(copy.drop_reason(), Some(DropReason::RateLimited));
    assert!(copy.record().is_none() && copy.outbound().is_none());
    // A new request over the limit is answered 503.
    let other = udp(
        request("REGISTER", "sip:contoso.com", caller, LYNC, "")
            .replace("z9hG4bK-REGISTER", "z9hG4bK-other"),
        caller,
    );
    let refused = core.refuse_source(&other, Instant::now(), over);
    assert_eq!(status(&refused), Some(503));
    assert!(refused.record().is_some());
}

#[test]
fn a_copy_of_a_request_answered_503_over_its_limit_gets_the_503_again_within_it() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45030".parse().unwrap();
    let over = SourceRefusal::OverLimit {
        retry_after_secs: 7,
        generation: 1,
    };
    let retry_after = |outcome: &Outcome| header_values(&sent(outcome).1, "Retry-After").concat();
    for method in ["REGISTER", "OPTIONS"] {
        let request = udp(request(method, "sip:contoso.com", caller, LYNC, ""), caller);
        let refused = core.refuse_source(&request, Instant::now(), over);
        assert_eq!(
            (status(&refused), retry_after(&refused)),
            (Some(503), "7".into())
        );
        assert!(refused.record().is_some());
        // The 503 was lost and the source is within its limit again: the
        // copy is not relayed to the registrar after that 503.
        let copy = handle(&core, &request);
        assert_eq!(
            (status(&copy), retry_after(&copy)),
            (Some(503), "7".into()),
            "{method}"
        );
        assert!(copy.record().is_none());
        // Over the limit again: the same 503, unrecorded.
        let again = core.refuse_source(&request, Instant::now(), over);
        assert_eq!(status(&again), Some(503));
        assert!(again.record().is_none());
        // Never relayed, so not awaited (a drain would wait for it).
        assert_eq!(core.registrations().pending(), 0, "{method}");
    }
    assert_eq!(count(&core.metrics().retransmissions), 4);
}

#[test]
fn a_copy_of_a_relayed_request_in_a_dialog_over_its_sources_limit_is_dropped() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45040".parse().unwrap();
    let bye = request("BYE", "sip:bob@contoso.com", caller, LYNC, "").replace(
        "To: <sip:bob@contoso.com>",
        "To: <sip:bob@contoso.com>;tag=t1",
    );
    let bye = udp(bye, caller);
    assert_eq!(sent(&handle(&core, &bye)).0, Destination::Upstream);
    let over = SourceRefusal::OverLimit {
        retry_after_secs: 1,
        generation: 1,
    };
    let copy = core.refuse_source(&bye, Instant::now(), over);
    assert_eq!(copy.drop_reason(), Some(DropReason::RateLimited));
    assert!(copy.outbound().is_none());
    // Within the limit the copy is relayed again, as the first was.
    assert_eq!(sent(&handle(&core, &bye)).0, Destination::Upstream);
}

#[test]
fn an_unrecorded_relay_keeps_its_first_copys_fate_after_a_reload() {
    let core = Core::detached(CONFIG).unwrap();
    let scanner: SocketAddr = "127.0.0.1:45050".parse().unwrap();
    let allow = CONFIG.replace(
        "[response_group]",
        "[policy]\nscanner = \"allow\"\n[response_group]",
    );
    let reject = allow.replace("scanner = \"allow\"", "scanner = \"reject\"");
    let options = |branch: &str| {
        let options = request(
            "OPTIONS",
            "sip:contoso.com",
            scanner,
            "friendly-scanner",
            "",
        );
        udp(options.replace("z9hG4bK-OPTIONS", branch), scanner)
    };
    core.publish(runtime_from(&allow));
    let first = options("z9hG4bK-a");
    assert_eq!(sent(&handle(&core, &first)).0, Destination::Upstream);
    core.publish(runtime_from(&reject));
    // Relayed by the policy, then rejected by it: the copy is dropped.
    let copy = handle(&core, &first);
    assert_eq!(copy.drop_reason(), Some(DropReason::DecidedBefore));
    // Rejected, then allowed: the copy is not relayed after the reject.
    let second = options("z9hG4bK-b");
    assert_eq!(status(&handle(&core, &second)), Some(403));
    core.publish(runtime_from(&allow));
    let copy = handle(&core, &second);
    assert_eq!(copy.drop_reason(), Some(DropReason::DecidedBefore));
    assert!(copy.outbound().is_none() && copy.record().is_none());
    assert_eq!(core.metrics().drops(DropReason::DecidedBefore), 2);
    // A new transaction is decided afresh.
    assert_eq!(
        sent(&handle(&core, &options("z9hG4bK-c"))).0,
        Destination::Upstream
    );
}

#[test]
fn every_refusal_has_its_status_and_rule() {
    let reply = crate::policy::Reply {
        status: 480,
        reason: "Temporarily Unavailable".into(),
        warning: None,
        headers: Vec::new(),
    };
    let all = [
        Refusal::Malformed(SipError::MissingHeader(HeaderName::CallId)),
        Refusal::TooLarge,
        Refusal::TooManyHeaders,
        Refusal::TooManyHops,
        Refusal::BadExtension,
        Refusal::InvalidFlowToken(flow::TokenError::BadSignature),
        Refusal::LoopDetected,
        Refusal::NotFound,
        Refusal::FlowFailed(FlowFailure::OtherInstance),
        Refusal::NoListener(Transport::Tcp),
        Refusal::Policy {
            reply: &reply,
            rule: "agent-offer.unsupported",
        },
        Refusal::UpstreamUnavailable,
        Refusal::UpstreamBusy,
        Refusal::RequestTimeout,
        Refusal::RangOut,
        Refusal::DrainRanOut,
        Refusal::NotReady {
            detail: "draining",
            upstream: false,
        },
    ];
    let got: Vec<(u16, &str)> = all.iter().map(|r| (r.status(), r.rule())).collect();
    assert_eq!(
        got,
        [
            (400, "proxy.malformed"),
            (513, "proxy.too-large"),
            (400, "proxy.too-many-headers"),
            (483, "proxy.too-many-hops"),
            (420, "proxy.bad-extension"),
            (403, "proxy.invalid-flow-token"),
            (482, "proxy.loop-detected"),
            (404, "proxy.not-found"),
            (430, "proxy.flow-failed"),
            (500, "proxy.no-listener"),
            (480, "agent-offer.unsupported"),
            (503, "proxy.upstream-unavailable"),
            (503, "proxy.upstream-busy"),
            (408, "proxy.request-timeout"),
            (408, "proxy.request-timeout"),
            (408, "proxy.request-timeout"),
            (503, "proxy.health"),
        ]
    );
    assert_eq!(
        Refusal::Malformed(SipError::VersionNotSupported).status(),
        505
    );
}

/// Control characters and bare LFs are refused, never relayed; the 400
/// goes out only when it would not carry them back (a response copies Via,
/// From, To, Call-ID and CSeq byte for byte): otherwise a counted drop.
#[test]
fn control_characters_are_answered_400_only_where_the_answer_stays_clean() {
    let core = Core::detached(CONFIG).unwrap();
    let client = client();
    let register = request("REGISTER", "sip:contoso.com", client, LYNC, "");
    let in_user_agent = register.replace("(Microsoft Lync)", "(Microsoft\x1b[31m Lync)");
    let outcome = handle(&core, &udp(in_user_agent, client));
    assert_eq!(status(&outcome), Some(400));
    let (_, answer) = sent(&outcome);
    assert!(
        answer.starts_with("SIP/2.0 400 Control character in User-Agent header\r\n"),
        "{answer}"
    );
    assert!(!answer.bytes().any(|b| b == 0x1b), "{answer:?}");
    // Each a transaction of its own (no copy of the first).
    let register = register.replace("Call-ID: ", "Call-ID: tainted-");
    for tainted in [
        register.replace("Call-ID: ", "Call-ID: \0"),
        register.replace("\r\n", "\n"),
    ] {
        let outcome = handle(&core, &udp(tainted, client));
        assert_eq!(outcome.drop_reason(), Some(DropReason::Malformed));
        assert_eq!(
            outcome.record().map(|r| (r.action, r.status)),
            Some((Action::Drop, None))
        );
    }
    assert_eq!(core.metrics().parse_errors("control_character"), 2);
    assert_eq!(core.metrics().parse_errors("bare_line_feed"), 1);
}

#[test]
fn local_answers_are_recorded_and_an_unanswerable_ack_is_recorded_as_a_drop() {
    let core = Core::detached(CONFIG).unwrap();
    // A registrar request for nobody: 404, recorded.
    let out = handle(
        &core,
        &udp(
            request("INVITE", "sip:nobody@contoso.com", upstream(), RGS, ""),
            upstream(),
        ),
    );
    assert_eq!(status(&out), Some(404));
    let r = out.into_record().unwrap();
    assert_eq!(
        (r.action, r.rule.as_ref(), r.status, r.role),
        (
            Action::Reject,
            "proxy.not-found",
            Some(404),
            SessionRole::None
        )
    );
    assert_eq!(
        r.client, "response-group-service",
        "the sender's classification"
    );
    // Max-Forwards 0: 483, recorded.
    let out = handle(
        &core,
        &udp(
            request("OPTIONS", "sip:bob@contoso.com", client(), LYNC, "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            client(),
        ),
    );
    assert_eq!(status(&out), Some(483));
    assert_eq!(out.into_record().unwrap().rule, "proxy.too-many-hops");
    // An ACK is never answered: dropped, counted and recorded as a drop.
    let out = handle(
        &core,
        &udp(
            request("ACK", "sip:bob@contoso.com", client(), LYNC, "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
            client(),
        ),
    );
    assert!(out.outbound().is_none());
    assert_eq!(out.drop_reason(), Some(DropReason::Unanswerable));
    let r = out.into_record().unwrap();
    assert_eq!((r.action, r.status), (Action::Drop, None));
}

/// Register a Lync 2013 client over TCP connection 1 from `peer` through `core`;
/// returns the Path URI the registrar would use.
fn register_over_tcp(core: &Core, peer: SocketAddr) -> String {
    register_over_tcp_as(core, peer, LYNC)
}

/// [`register_over_tcp`] with User-Agent `ua`.
fn register_over_tcp_as(core: &Core, peer: SocketAddr, ua: &str) -> String {
    let register =
        request("REGISTER", "sip:contoso.com", peer, ua, "").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let (_, relayed) = sent(&handle(core, &tcp(register, peer, 1)));
    header_values(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned()
}

#[test]
fn the_path_of_an_outbound_clients_first_hop_carries_ob() {
    let core = Core::detached(CONFIG).unwrap();
    let peer: SocketAddr = "127.0.0.1:41500".parse().unwrap();
    let outbound = "Contact: <sip:alice@127.0.0.1:41500;transport=tcp;ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000000000001>\"";
    let path_of = |register: String| {
        let (_, relayed) = sent(&handle(&core, &tcp(register, peer, 1)));
        header_values(&relayed, "Path")[0].to_owned()
    };
    let register = request("REGISTER", "sip:contoso.com", peer, LYNC, "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace("Contact: <sip:alice@127.0.0.1:41500>", outbound);
    // RFC 5626 5.1: a reg-id, and this proxy the first hop.
    assert!(path_of(register.clone()).ends_with(";lr;ob>"));
    // Behind another proxy, or without a reg-id: no promise made.
    let behind = register.replacen(
        "Via: ",
        "Via: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK-edge\r\nVia: ",
        1,
    );
    assert!(path_of(behind.replace("CSeq: 1 ", "CSeq: 2 ")).ends_with(";lr>"));
    let plain = register
        .replace(";reg-id=1", "")
        .replace("CSeq: 1 ", "CSeq: 3 ");
    assert!(path_of(plain).ends_with(";lr>"));
}

fn offer_along(route: &str, user: &str, contact: SocketAddr) -> Inbound {
    let invite = request(
        "INVITE",
        &format!("sip:{user}@{contact};transport=tcp"),
        upstream(),
        RGS,
        &format!("Route: <{route}>\r\n"),
    );
    udp(invite, upstream())
}

#[test]
fn a_token_naming_another_instances_connection_gets_430_and_nothing_is_written() {
    let x: SocketAddr = "127.0.0.1:41000".parse().unwrap();
    let a = Core::detached(CONFIG).unwrap();
    let path = register_over_tcp(&a, x);
    // Instance B shares the secret but not the boot id; its connection 1
    // (another client) is open.
    let b = core_on(
        DETACHED_UPSTREAM,
        &[Transport::Udp, Transport::Tcp],
        BootId::from_u64(2),
    );
    let out = b.handle(
        &offer_along(&path, "agent-a", x),
        Instant::now(),
        &|_, _| true,
    );
    assert_eq!(status(&out), Some(430));
    assert_eq!(
        out.outbound().unwrap().to,
        Destination::Source,
        "answered to the registrar, written to no connection"
    );
    assert_eq!(out.into_record().unwrap().rule, "proxy.flow-failed");
    // On A itself: the connection open to X delivers; gone, or reused by
    // another peer, it is 430 too.
    let deliver = a.handle(
        &offer_along(&path, "agent-a", x),
        Instant::now(),
        &|id, peer| id == ConnectionId::FIRST && peer == x,
    );
    let (to, _) = sent(&deliver);
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == x),
        "{to:?}"
    );
    let other_peer = a.handle(
        &offer_along(&path, "agent-a", x),
        Instant::now(),
        &|_, peer| peer != x,
    );
    assert_eq!(status(&other_peer), Some(430));
}

/// In monitor mode an offer to a mobile agent whose connection is gone is
/// flagged (enforce would reject it, 480), then answered `430`: its record
/// is the 430's, and still says `would_reject`, so that `report`'s "what
/// enforcing would change" counts it (it used to lose that).
#[test]
fn a_would_reject_offer_to_a_closed_flow_keeps_would_reject_on_its_430_record() {
    let monitor = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    let core = Core::detached(&monitor).unwrap();
    let agent: SocketAddr = "127.0.0.1:41600".parse().unwrap();
    let path = register_over_tcp_as(&core, agent, MOBILE);
    let offer = offer_along(&path, "agent-a", agent);
    let out = core.handle(&offer, Instant::now(), &|_, _| false);
    assert_eq!(status(&out), Some(430));
    let record = out.into_record().unwrap();
    assert_eq!(record.rule, "proxy.flow-failed");
    assert!(record.would_reject, "{record:?}");
    // A Lync 2013 agent's offer to a closed flow: nothing enforce would
    // have rejected.
    let core = Core::detached(&monitor).unwrap();
    let lync = "127.0.0.1:41601".parse().unwrap();
    let path = register_over_tcp(&core, lync);
    let offer = offer_along(&path, "agent-b", lync);
    let out = core.handle(&offer, Instant::now(), &|_, _| false);
    assert_eq!(status(&out), Some(430));
    assert!(!out.into_record().unwrap().would_reject);
}

/// A Lync caller's INVITE over TCP connection 1 from `caller`, relayed
/// upstream over UDP: the relayed text (two Record-Route values, RFC 5658).
fn invite_over_tcp(core: &Core, caller: SocketAddr) -> String {
    let invite = request("INVITE", "sip:bob@contoso.com", caller, LYNC, "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let (to, relayed) = sent(&handle(core, &tcp(invite, caller, 1)));
    assert_eq!(to, Destination::Upstream);
    assert_eq!(
        header_values(&relayed, "Record-Route").len(),
        2,
        "{relayed}"
    );
    relayed
}

#[test]
fn a_dialog_changing_transport_gets_two_record_routes_and_both_are_consumed() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:42000".parse().unwrap();
    let relayed = invite_over_tcp(&core, caller);
    let rr = header_values(&relayed, "Record-Route");
    assert!(rr[0].contains(&format!(
        "@{DETACHED_ADDRESS};transport=udp;lr;ftag=f1;sipadmit-dlg="
    )));
    assert!(rr[1].contains(&format!(
        "@{DETACHED_ADDRESS};transport=tcp;lr;ftag=f1;sipadmit-dlg="
    )));
    let token = |v: &str| v.split('@').next().unwrap().to_owned();
    assert_eq!(token(rr[0]), token(rr[1]), "one token, two sides");

    // The callee's BYE comes back along the route set, top first (the UDP
    // side): both values are this proxy's, both go, and it reaches the
    // caller's connection.
    let bye = format!(
        "BYE sip:alice@{caller};transport=tcp SIP/2.0\r\nRoute: {}, {}\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-bye\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=callee\r\nTo: <sip:alice@contoso.com>;tag=f1\r\nCall-ID: dialog@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        rr[0],
        rr[1],
        upstream()
    );
    let (to, delivered) = sent(&handle(&core, &udp(bye, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == caller && f.transport == Transport::Tcp),
        "{to:?}"
    );
    assert!(header_values(&delivered, "Route").is_empty(), "{delivered}");

    // The same request over one transport and address gets one value.
    let invite = request("INVITE", "sip:bob@contoso.com", caller, LYNC, "");
    let (_, relayed) = sent(&handle(&core, &udp(invite, caller)));
    assert_eq!(header_values(&relayed, "Record-Route").len(), 1);
}

#[test]
fn a_strict_routed_request_in_a_dialog_is_routed_as_a_loose_one() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:42100".parse().unwrap();
    let relayed = invite_over_tcp(&core, caller);
    let rr = header_values(&relayed, "Record-Route");
    // The callee's side routes strictly (RFC 2543): the Request-URI is the
    // route set's first value, the remote target the last Route value.
    let target = format!("sip:alice@{caller};transport=tcp");
    let bye = format!(
        "BYE {} SIP/2.0\r\nRoute: {}, <{target}>\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-strict\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=callee\r\nTo: <sip:alice@contoso.com>;tag=f1\r\nCall-ID: INVITE-42100@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        rr[0].trim_matches(|c| c == '<' || c == '>'),
        rr[1],
        upstream()
    );
    let (to, delivered) = sent(&handle(&core, &udp(bye, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == caller && f.transport == Transport::Tcp),
        "{to:?}"
    );
    // RFC 3261 16.4: the remote target is the Request-URI again, and
    // nothing of this proxy's is left.
    assert!(
        delivered.starts_with(&format!("BYE {target} SIP/2.0\r\n")),
        "{delivered}"
    );
    assert!(header_values(&delivered, "Route").is_empty(), "{delivered}");
}

#[test]
fn the_flag_header_is_sipadmits_alone() {
    let monitor = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    let core = Core::detached(&monitor).unwrap();
    // Forged by a client: removed, whatever its case.
    let forged = request(
        "OPTIONS",
        "sip:bob@contoso.com",
        client(),
        LYNC,
        "X-Sipadmit: flagged; client=lync-2013\r\nx-sipadmit: again\r\n",
    );
    let (_, relayed) = sent(&handle(&core, &udp(forged, client())));
    assert!(
        header_values(&relayed, "X-Sipadmit").is_empty(),
        "{relayed}"
    );
    // A flagged caller carries exactly one, sipadmit's.
    let flagged = request(
        "INVITE",
        "sip:helpdesk@contoso.com",
        client(),
        MOBILE,
        "X-Sipadmit: forged\r\n",
    );
    let (_, relayed) = sent(&handle(&core, &udp(flagged, client())));
    assert_eq!(
        header_values(&relayed, "X-Sipadmit"),
        ["flagged; client=lync-mobile; reason=caller.unsupported; would-reject"]
    );
}

#[test]
fn an_agent_offer_is_decided_on_the_leg_toward_the_agent_only() {
    let core = Core::detached(CONFIG).unwrap();
    // The application's INVITE to the registrar: no session role there,
    // the sender's classification, no flag.
    let rgs: SocketAddr = "127.0.0.1:43000".parse().unwrap();
    let out = handle(
        &core,
        &udp(
            request("INVITE", "sip:agent-a@contoso.com", rgs, RGS, ""),
            rgs,
        ),
    );
    let (to, relayed) = sent(&out);
    assert_eq!(to, Destination::Upstream);
    assert!(
        header_values(&relayed, "X-Sipadmit").is_empty(),
        "{relayed}"
    );
    let r = out.into_record().unwrap();
    assert_eq!(
        (r.role, r.client.as_str(), r.action),
        (SessionRole::None, "response-group-service", Action::Allow)
    );
}

// === registration tables and retransmissions ===

/// The registrar's answer to a request it received from the proxy:
/// every Via, From, To (tagged), Call-ID and CSeq copied, `extra` added.
fn registrar_answer(relayed: &str, status_line: &str, extra: &str) -> String {
    let mut answer = format!("SIP/2.0 {status_line}\r\n");
    for line in relayed.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
            answer.push_str(line);
            answer.push_str("\r\n");
        } else if name == "To" {
            answer.push_str(line);
            answer.push_str(";tag=registrar\r\n");
        }
    }
    answer.push_str(extra);
    answer.push_str("Content-Length: 0\r\n\r\n");
    answer
}

/// The registrar's offer relayed toward a TCP agent awaits the agent's
/// final answer (what a drain waits for on the callee side): its 180 keeps
/// it pending, its 486 ends it; an offer that could not be sent is not
/// awaited.
#[test]
fn an_offer_relayed_toward_an_agent_is_pending_until_its_final_answer() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:41700".parse().unwrap();
    let path = register_over_tcp(&core, agent);
    let now = Instant::now();
    let (to, offered) =
        sent(&core.handle(&offer_along(&path, "agent-a", agent), now, &|_, _| true));
    assert!(matches!(to, Destination::Flow(_)), "{to:?}");
    assert_eq!(core.toward_clients().pending(now, &|_, _| true), 1);
    for (status, pending) in [("180 Ringing", 1), ("486 Busy Here", 0)] {
        let answer = tcp(registrar_answer(&offered, status, ""), agent, 1);
        let (to, relayed) = sent(&core.handle(&answer, now, &|_, _| true));
        assert_eq!(to, Destination::Upstream, "{relayed}");
        assert_eq!(
            core.toward_clients().pending(now, &|_, _| true),
            pending,
            "after {status}"
        );
    }
    let offer = offer_along(&path, "agent-a", agent);
    let again = offer.bytes.clone();
    let offer = Inbound {
        bytes: bytes::Bytes::from(
            String::from_utf8_lossy(&again).replace("z9hG4bK-INVITE-", "z9hG4bK-second-"),
        ),
        ..offer
    };
    let _ = core.handle(&offer, now, &|_, _| true);
    assert_eq!(core.toward_clients().pending(now, &|_, _| true), 1);
    core.not_sent_toward_client(&offer, now);
    assert_eq!(core.toward_clients().pending(now, &|_, _| true), 0);
}

/// A response from the registrar whose top Via is this proxy's but has no
/// flow token answers nothing sipadmit sent upstream: dropped, not sent
/// back to the registrar (trial 47). The same from a client (a callee's
/// answer to a request the registrar sent it) still goes upstream.
#[test]
fn a_registrar_response_on_our_via_without_a_token_is_dropped() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:41710".parse().unwrap();
    let relayed = relay_register(&core, agent, 1);
    let via = header_values(&relayed, "Via")[0];
    let start = via.find(";sipadmit-flow=").expect("a flow token");
    let end = via[start + 1..]
        .find(';')
        .map_or(via.len(), |i| start + 1 + i);
    let untokened = relayed.replace(via, &format!("{}{}", &via[..start], &via[end..]));
    assert_ne!(untokened, relayed);
    let answer = registrar_answer(&untokened, "200 OK", "");
    let from_registrar = handle(&core, &udp(answer.clone(), upstream()));
    assert!(
        matches!(
            from_registrar,
            Outcome::Drop {
                reason: DropReason::ForeignResponse,
                ..
            }
        ),
        "{from_registrar:?}"
    );
    let from_client = handle(&core, &udp(answer, agent));
    assert_eq!(sent(&from_client).0, Destination::Upstream);
}

/// A REGISTER from `agent` with CSeq `cseq` (and a branch of its own),
/// relayed upstream by `core`; returns the relayed text.
fn relay_register(core: &Core, agent: SocketAddr, cseq: u32) -> String {
    let register = request("REGISTER", "sip:contoso.com", agent, LYNC, "")
        .replace("CSeq: 1 ", &format!("CSeq: {cseq} "))
        .replace(";branch=z9hG4bK-", &format!(";branch=z9hG4bK-{cseq}-"));
    let (to, relayed) = sent(&handle(core, &udp(register, agent)));
    assert_eq!(to, Destination::Upstream);
    relayed
}

#[test]
fn any_final_response_clears_a_pending_register_and_a_2xx_after_a_401_binds() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:44000".parse().unwrap();
    let table = core.registrations();

    // The digest dance: 401 first (clears), then the authorised REGISTER's 200 (binds).
    let relayed = relay_register(&core, agent, 1);
    assert_eq!(table.pending(), 1);
    let trying = registrar_answer(&relayed, "100 Trying", "");
    handle(&core, &udp(trying, upstream()));
    assert_eq!(table.pending(), 1, "a provisional response settles nothing");
    let challenge = registrar_answer(
        &relayed,
        "401 Unauthorized",
        "WWW-Authenticate: Digest realm=\"contoso.com\", nonce=\"n\"\r\n",
    );
    let (to, _) = sent(&handle(&core, &udp(challenge, upstream())));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == agent),
        "{to:?}"
    );
    assert_eq!((table.pending(), table.len()), (0, 0));

    let relayed = relay_register(&core, agent, 2);
    assert_eq!(table.pending(), 1);
    let ok = registrar_answer(
        &relayed,
        "200 OK",
        &format!("Contact: <sip:alice@{agent}>;expires=600\r\n"),
    );
    handle(&core, &udp(ok, upstream()));
    assert_eq!((table.pending(), table.len()), (0, 1));
    let bound = table
        .lookup(format!("sip:alice@{agent}").as_bytes(), Instant::now())
        .unwrap();
    assert_eq!(
        (bound.flow.peer, bound.flow.client.as_str()),
        (agent, "lync-2013")
    );

    // Every other final status clears its REGISTER too, and binds nothing.
    for (cseq, status) in [
        (3, "407 Proxy Authentication Required"),
        (4, "403 Forbidden"),
        (5, "500 Server Internal Error"),
        (6, "603 Decline"),
    ] {
        let relayed = relay_register(&core, agent, cseq);
        assert_eq!(table.pending(), 1, "{status}");
        handle(
            &core,
            &udp(registrar_answer(&relayed, status, ""), upstream()),
        );
        assert_eq!(table.pending(), 0, "{status}");
    }
    assert_eq!(table.len(), 1);
}

#[test]
fn a_sign_in_through_a_challenge_counts_once_and_its_retries_are_marked() {
    let core = Core::detached(CONFIG).unwrap();
    let metrics = core.metrics();
    let client: SocketAddr = "127.0.0.1:44100".parse().unwrap();
    let other: SocketAddr = "127.0.0.1:44101".parse().unwrap();
    let attempt = |source: SocketAddr, cseq: u32, credentials: &str| {
        let register = request("REGISTER", "sip:contoso.com", source, LYNC, credentials)
            .replace("CSeq: 1 ", &format!("CSeq: {cseq} "))
            .replace(";branch=z9hG4bK-", &format!(";branch=z9hG4bK-{cseq}-"))
            .replace("REGISTER-44101@test", "REGISTER-44100@test");
        let outcome = handle(&core, &udp(register, source));
        let record = outcome.record().cloned().unwrap();
        (sent(&outcome).1, record)
    };
    const NTLM: &str = "Authorization: NTLM qop=\"auth\", realm=\"SIP Communications Service\", targetname=\"pool.contoso.com\", gssapi-data=\"\"\r\n";
    let challenge = |relayed: &str| {
        let answer = registrar_answer(
            relayed,
            "401 Unauthorized",
            "WWW-Authenticate: NTLM realm=\"SIP Communications Service\"\r\n",
        );
        handle(&core, &udp(answer, upstream()));
    };
    // Lync's NTLM sign-in: no credentials, 401; a first Authorization,
    // 401 again; a second, 200.
    let (relayed, first) = attempt(client, 1, "");
    challenge(&relayed);
    let (relayed, second) = attempt(client, 2, NTLM);
    challenge(&relayed);
    let (relayed, third) = attempt(client, 3, NTLM);
    handle(
        &core,
        &udp(registrar_answer(&relayed, "200 OK", ""), upstream()),
    );
    assert_eq!(
        [
            first.after_challenge,
            second.after_challenge,
            third.after_challenge
        ],
        [false, true, true]
    );
    assert!(first.counted_once() && !second.counted_once() && !third.counted_once());
    assert_eq!(
        metrics.decisions("allow", "agent-registration", "supported"),
        1
    );
    assert_eq!(
        metrics.repeated_decisions("allow", "agent-registration", "supported"),
        2
    );
    // The same Call-ID with credentials from another source, or without
    // credentials from the client, is no retry.
    let (_, elsewhere) = attempt(other, 4, NTLM);
    let (_, bare) = attempt(client, 5, "");
    assert!(!elsewhere.after_challenge && !bare.after_challenge);
    // A written record says so; one that is no retry does not mention it.
    let line = serde_json::to_string(&second).unwrap();
    assert!(line.contains("\"after_challenge\":true"), "{line}");
    assert!(!serde_json::to_string(&first)
        .unwrap()
        .contains("after_challenge"));
}

/// A REGISTER from `agent` naming `contacts` contacts (in one Contact
/// header line), and nothing else.
fn register_with_contacts(agent: SocketAddr, contacts: usize) -> Inbound {
    let uris: Vec<String> = (0..contacts)
        .map(|i| format!("<sip:u{i}@10.0.0.1:5060>"))
        .collect();
    let contact_line = format!("Contact: {}\r\n", uris.join(", "));
    let register = request("REGISTER", "sip:contoso.com", agent, LYNC, &contact_line)
        .replace(&format!("Contact: <sip:alice@{agent}>\r\n"), "");
    udp(register, agent)
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// A REGISTER relayed, then answered 503 here because the link could not
/// deliver it (or its connection closed), awaits nothing more: a draining
/// instance would otherwise wait for it until it is overdue.
#[test]
fn a_register_answered_503_as_undelivered_is_no_longer_pending() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:47100".parse().unwrap();
    let register = register_with_contacts(agent, 1);
    assert_eq!(sent(&handle(&core, &register)).0, Destination::Upstream);
    assert_eq!(core.registrations().pending(), 1);
    let outcome = core.upstream_unavailable(&register, Instant::now(), false);
    assert!(sent(&outcome).1.starts_with("SIP/2.0 503 "));
    assert_eq!(core.registrations().pending(), 0);
}

/// The same for a REGISTER a draining instance answers `408` because its
/// stream registrar left it unanswered when the drain ran out: recorded
/// as the timeout it is, and pending no more.
#[test]
fn a_register_answered_408_when_a_drain_ran_out_is_no_longer_pending() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:47150".parse().unwrap();
    let register = register_with_contacts(agent, 1);
    assert_eq!(sent(&handle(&core, &register)).0, Destination::Upstream);
    assert_eq!(core.registrations().pending(), 1);
    let outcome = core.drain_ran_out(&register, Instant::now());
    let (to, answer) = sent(&outcome);
    assert_eq!(to, Destination::Source);
    assert!(answer.starts_with("SIP/2.0 408 "), "{answer}");
    let record = outcome.into_record().expect("recorded");
    assert_eq!(
        (record.rule.as_ref(), record.status),
        ("proxy.request-timeout", Some(408))
    );
    assert_eq!(core.registrations().pending(), 0);
}

#[test]
fn a_register_over_the_contact_cap_is_answered_403_counted_and_recorded() {
    let config = format!("{CONFIG}[limits]\nmax_contacts_per_register = 16\n");
    let core = Core::detached(&config).unwrap();
    let agent: SocketAddr = "127.0.0.1:47000".parse().unwrap();

    // At the cap: relayed, noted.
    let at_cap = handle(&core, &register_with_contacts(agent, 16));
    assert_eq!(sent(&at_cap).0, Destination::Upstream);
    assert_eq!(core.registrations().pending(), 1);

    // Over it (the 600): answered here, nothing noted.
    let over = SocketAddr::new(agent.ip(), agent.port() + 1);
    let outcome = handle(&core, &register_with_contacts(over, 600));
    let (to, answer) = sent(&outcome);
    assert_eq!(to, Destination::Source);
    assert!(
        answer.starts_with("SIP/2.0 403 Too Many Contacts\r\n"),
        "{answer}"
    );
    let record = outcome.into_record().expect("recorded");
    assert_eq!(
        (record.action, record.rule.as_ref(), record.status),
        (Action::Reject, "proxy.too-many-contacts", Some(403))
    );
    assert_eq!(core.registrations().pending(), 1);
    let metrics = core.metrics();
    assert_eq!(count(&metrics.too_many_contacts), 1);
    assert_eq!(count(&metrics.contacts_not_learned), 0);
    assert!(metrics
        .render(&crate::observe::metrics::Gauges::default())
        .contains("sipadmit_registers_too_many_contacts_total 1\n"));

    // `*` (remove all bindings) is not a contact to learn.
    let star = SocketAddr::new(agent.ip(), agent.port() + 2);
    let mut unregister = register_with_contacts(star, 16);
    let text = String::from_utf8(unregister.bytes.to_vec()).unwrap();
    unregister.bytes = Bytes::from(text.replace("Contact: ", "Contact: *\r\nContact: "));
    assert_eq!(sent(&handle(&core, &unregister)).0, Destination::Upstream);
}

/// Trial 26: a Contact with an IPv6 zone id was registered (`200`), and
/// then every request the registrar sent to it was refused here `400
/// Malformed Request-URI`. A contact this proxy could never route to is
/// refused when it is registered; the forms it routes pass.
#[test]
fn a_register_with_a_contact_no_request_could_reach_is_refused() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "[::1]:47200".parse().unwrap();
    // Each its own transaction (a copy would be answered as the first).
    let sent_so_far = std::cell::Cell::new(0);
    let register = |contact: &str| {
        sent_so_far.set(sent_so_far.get() + 1);
        let n = sent_so_far.get();
        let text = request("REGISTER", "sip:contoso.com", agent, LYNC, "")
            .replace(&format!("<sip:alice@{agent}>"), contact)
            .replace("z9hG4bK-REGISTER", &format!("z9hG4bK-{n}-REGISTER"))
            .replace("Call-ID: ", &format!("Call-ID: {n}"));
        handle(&core, &udp(text, agent))
    };
    for zone in [
        "<sip:u@[fe80::1%25eth0]:5060>",
        "<sip:u@[fe80::1%eth0]:5060>",
        "<sip:u@[::1%25lo]:5060;transport=udp>",
    ] {
        let outcome = register(zone);
        let (to, answer) = sent(&outcome);
        assert_eq!(to, Destination::Source, "{zone}");
        assert!(
            answer.starts_with("SIP/2.0 400 Malformed Contact header\r\n"),
            "{zone}: {answer}"
        );
        let record = outcome.into_record().expect("recorded");
        assert_eq!(record.rule.as_ref(), "proxy.malformed");
    }
    for routable in [
        "<sip:u@[::ffff:127.0.0.1]:5060>",
        "<sip:u@[0:0:0:0:0:0:0:1]:5060>",
        "<sip:u@host.example;transport=tcp>",
        "<tel:+15551234>",
        "*",
    ] {
        assert_eq!(
            sent(&register(routable)).0,
            Destination::Upstream,
            "{routable}"
        );
    }
}

#[test]
fn unanswered_registers_with_600_contacts_stay_within_the_byte_bound() {
    // The cap raised to let 600 through: the byte bound alone holds them.
    let bound = 1 << 20;
    let config = format!(
        "{CONFIG}[limits]\nregistration_table_bytes = {bound}\nmax_registrations = 100000\nmax_contacts_per_register = 1024\n"
    );
    let core = Core::detached(&config).unwrap();
    for i in 0..300u16 {
        let agent = SocketAddr::new(client().ip(), 20_000 + i);
        let out = handle(&core, &register_with_contacts(agent, 600));
        assert_eq!(sent(&out).0, Destination::Upstream);
        assert!(core.registrations().accounted_bytes() <= bound);
    }
    let pending = core.registrations().pending();
    // A quarter of the bound for pending REGISTERs, about 4.9 KB each.
    let per_entry = registrations::EntryBytes::with_contacts(600).pending;
    assert!(
        (bound / 4 / per_entry / 2..=bound / 4 / per_entry).contains(&pending),
        "{pending} of {per_entry} B"
    );
    let metrics = core.metrics();
    assert_eq!(
        count(&metrics.registrations_evicted),
        300 - pending as u64,
        "the oldest went"
    );
    assert_eq!(count(&metrics.contacts_not_learned), 0);

    // The entry bound holds too.
    let config = format!("{CONFIG}[limits]\nmax_registrations = 100\n");
    let core = Core::detached(&config).unwrap();
    for i in 0..300u16 {
        let agent = SocketAddr::new(client().ip(), 20_000 + i);
        handle(&core, &register_with_contacts(agent, 1));
    }
    assert_eq!(core.registrations().pending(), 100, "max_registrations");
    assert_eq!(count(&core.metrics().registrations_evicted), 200);
}

#[test]
fn a_retransmitted_request_is_handled_again_but_recorded_once() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45000".parse().unwrap();
    let count = || {
        core.metrics()
            .retransmissions
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    // A rejected INVITE, three times: three identical 403s, one record.
    let rejected = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, ""),
        caller,
    );
    let outcomes: Vec<Outcome> = (0..3).map(|_| handle(&core, &rejected)).collect();
    assert_eq!(status(&outcomes[0]), Some(403));
    assert!(
        outcomes
            .iter()
            .all(|o| o.outbound() == outcomes[0].outbound()),
        "the same answer"
    );
    let records: Vec<_> = outcomes.iter().map(|o| o.record().is_some()).collect();
    assert_eq!(records, [true, false, false]);
    assert_eq!(count(), 2);

    // A relayed INVITE, three times: relayed identically, one record.
    let relayed = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, LYNC, "")
            .replace("z9hG4bK-INVITE", "z9hG4bK-allowed")
            .replace("Call-ID: INVITE", "Call-ID: allowed"),
        caller,
    );
    let outcomes: Vec<Outcome> = (0..3).map(|_| handle(&core, &relayed)).collect();
    assert_eq!(sent(&outcomes[0]).0, Destination::Upstream);
    assert!(
        outcomes
            .iter()
            .all(|o| o.outbound() == outcomes[0].outbound()),
        "relayed the same"
    );
    let records: Vec<_> = outcomes.iter().map(|o| o.record().is_some()).collect();
    assert_eq!(records, [true, false, false]);

    // A new transaction (new branch) is recorded again.
    let next = udp(
        request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, "")
            .replace("z9hG4bK-INVITE", "z9hG4bK-second"),
        caller,
    );
    assert!(handle(&core, &next).record().is_some());
    // So is the same transaction once its lifetime is over.
    let later = Instant::now() + transactions::TRANSACTION_LIFETIME;
    assert!(core
        .handle(&rejected, later, &|_, _| true)
        .record()
        .is_some());
    assert_eq!(count(), 4);
}

#[test]
fn both_legs_of_an_agent_offer_are_recorded_and_the_registrars_retransmissions_are_not() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:46000".parse().unwrap();
    let relayed = relay_register(&core, agent, 1);
    let path = header_values(&relayed, "Path")[0].to_owned();

    // Leg 1: the application's INVITE to the agent's address of record.
    let rgs: SocketAddr = "127.0.0.1:43000".parse().unwrap();
    let leg1 = handle(
        &core,
        &udp(
            request("INVITE", "sip:agent-a@contoso.com", rgs, RGS, ""),
            rgs,
        ),
    );
    let (to, toward_registrar) = sent(&leg1);
    assert_eq!(to, Destination::Upstream);
    assert_eq!(leg1.into_record().unwrap().role, SessionRole::None);

    // Leg 2: the registrar forwards it (same Call-ID, its own Via on top)
    // along the agent's Path, and retransmits it four times (Timer A).
    let (_, rest) = toward_registrar.split_once("\r\n").unwrap();
    let leg2 = udp(
        format!(
            "INVITE sip:alice@{agent} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-registrar-1\r\nRoute: {path}\r\n{rest}",
            upstream()
        ),
        upstream(),
    );
    let outcomes: Vec<Outcome> = (0..5).map(|_| handle(&core, &leg2)).collect();
    let (to, _) = sent(&outcomes[0]);
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == agent),
        "{to:?}"
    );
    assert!(outcomes
        .iter()
        .all(|o| o.outbound() == outcomes[0].outbound()));
    let roles: Vec<_> = outcomes
        .iter()
        .map(|o| o.record().map(|r| r.role))
        .collect();
    assert_eq!(
        roles,
        [Some(SessionRole::AgentOffer), None, None, None, None]
    );
    assert_eq!(count(&core.metrics().retransmissions), 4);
}

#[test]
fn an_invite_to_a_dead_tcp_contact_retransmitted_five_times_gives_one_record() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:48000".parse().unwrap();
    let path = register_over_tcp(&core, agent);
    // The agent's connection is gone; the registrar's INVITE along its
    // Path (Timer A: the first and four retransmissions) gets 430 each time.
    let offer = offer_along(&path, "agent-a", agent);
    let outcomes: Vec<Outcome> = (0..5)
        .map(|_| core.handle(&offer, Instant::now(), &|_, _| false))
        .collect();
    assert!(outcomes.iter().all(|o| status(o) == Some(430)));
    assert!(outcomes
        .iter()
        .all(|o| o.outbound() == outcomes[0].outbound()));
    let rules: Vec<_> = outcomes
        .iter()
        .map(|o| o.record().map(|r| r.rule.to_string()))
        .collect();
    assert_eq!(
        rules,
        [Some("proxy.flow-failed".to_owned()), None, None, None, None]
    );
    assert_eq!(count(&core.metrics().retransmissions), 4);
}

#[test]
fn a_rejected_unknown_client_is_told_sipadmit_does_not_recognise_it() {
    let config = format!("{CONFIG}[policy.caller]\nunknown = \"reject\"\n");
    let core = Core::detached(&config).unwrap();
    let invite = |ua: &str, port: u16| {
        let source = SocketAddr::new(client().ip(), port);
        let answer = handle(
            &core,
            &udp(
                request("INVITE", "sip:helpdesk@contoso.com", source, ua, ""),
                source,
            ),
        );
        let (_, text) = sent(&answer);
        header_values(&text, "Warning")
            .first()
            .map(|w| (*w).to_owned())
            .unwrap_or_default()
    };
    let unknown = invite("Acme-Softphone/1.0", 40001);
    assert_eq!(
        unknown,
        "399 sipadmit \"sipadmit does not recognise this client (Unknown client)\""
    );
    assert!(!unknown.contains("does not support"), "{unknown}");
    // An unsupported client is still told the Response Group does not support it.
    assert!(invite(MOBILE, 40002).contains("The Response Group does not support this client"));
}

#[test]
fn a_clients_request_goes_upstream_whatever_client_flow_its_route_names() {
    // The registrar's INVITE to agent B is record-routed with a token
    // naming B's flow (ftag f1). A client keeps that value and sends a new
    // request along it, From tag f1: it goes to the registrar, not
    // straight to B, and is decided there like any new INVITE. (From the
    // registrar's host, on any port, it would go to B: a TCP registrar's
    // own connections.)
    let core = Core::detached(CONFIG).unwrap();
    let elsewhere: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    let agent: SocketAddr = "127.0.0.1:48200".parse().unwrap();
    let register = request("REGISTER", "sip:contoso.com", agent, LYNC, "");
    let (_, relayed) = sent(&handle(&core, &udp(register, agent)));
    let path = header_values(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    let (to, offered) = sent(&handle(&core, &offer_along(&path, "agent-a", agent)));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == agent),
        "{to:?}"
    );
    let toward_b = header_values(&offered, "Record-Route")[0].to_owned();
    for (method, route) in [
        ("INVITE", &toward_b),
        ("MESSAGE", &toward_b),
        ("MESSAGE", &format!("<{path}>")),
    ] {
        let forged = request(
            method,
            "sip:agent-a@contoso.com",
            elsewhere,
            MOBILE,
            &format!("Route: {route}\r\n"),
        );
        let out = handle(&core, &udp(forged, elsewhere));
        let (to, relayed) = sent(&out);
        assert_eq!(to, Destination::Upstream, "{method} along {route}");
        assert!(header_values(&relayed, "Route").is_empty(), "{relayed}");
    }
    let registrar_host: SocketAddr = "127.0.0.1:45999".parse().unwrap();
    let along = request(
        "BYE",
        "sip:agent-a@contoso.com",
        registrar_host,
        RGS,
        &format!("Route: {toward_b}\r\n"),
    );
    let (to, _) = sent(&handle(&core, &udp(along, registrar_host)));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == agent),
        "{to:?}"
    );
}

/// `inbound` as a request inside the dialog its first copy started: CSeq
/// 2, a branch of its own, a To tag, and `route` (the dialog's route set)
/// instead of its Route.
fn in_dialog(inbound: &Inbound, route: &[&str]) -> Inbound {
    let mut text = String::new();
    for line in String::from_utf8_lossy(&inbound.bytes).split_inclusive("\r\n") {
        if line.starts_with("Route:") {
            continue;
        }
        if line.starts_with("To:") {
            text.push_str(&line.replace("\r\n", ";tag=callee\r\n"));
            for value in route {
                text.push_str(&format!("Route: {value}\r\n"));
            }
            continue;
        }
        text.push_str(
            &line
                .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
                .replace(";branch=z9hG4bK-", ";branch=z9hG4bK-reinvite-"),
        );
    }
    Inbound {
        bytes: bytes::Bytes::from(text),
        ..inbound.clone()
    }
}

#[test]
fn an_invite_inside_a_dialog_is_relayed_undecided_and_unrecorded() {
    // Monitor mode: a mobile agent's offer and a mobile caller's INVITE to
    // the workflow are relayed, flagged, and record-routed. Then a reload
    // to enforce. A re-INVITE inside either dialog (a To tag, and the
    // dialog's route set through sipadmit) is no new session: relayed, no
    // decision, no record, no flag. A To tag without that route is no
    // dialog: decided as a new request, 480 and 403.
    let monitor = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    let core = Core::detached(&monitor).unwrap();
    let agent: SocketAddr = "127.0.0.1:48100".parse().unwrap();
    let path = register_over_tcp_as(&core, agent, MOBILE);
    let offer = offer_along(&path, "agent-a", agent);
    let (_, offered) = sent(&handle(&core, &offer));
    let offer_route = header_values(&offered, "Record-Route");
    let caller = udp(
        request("INVITE", "sip:helpdesk@contoso.com", client(), MOBILE, ""),
        client(),
    );
    let (_, called) = sent(&handle(&core, &caller));
    let caller_route = header_values(&called, "Record-Route");
    assert!(!offer_route.is_empty() && !caller_route.is_empty());
    // The same client's call to someone else: a dialog of its own.
    let to_bob = request("INVITE", "sip:bob@contoso.com", client(), MOBILE, "")
        .replace("Call-ID: INVITE-", "Call-ID: bob-")
        .replace("z9hG4bK-INVITE-", "z9hG4bK-bob-");
    let (_, to_bob) = sent(&handle(&core, &udp(to_bob, client())));
    let bob_route = header_values(&to_bob, "Record-Route");
    core.publish(runtime_from(CONFIG));

    let reinvite = handle(&core, &in_dialog(&offer, &offer_route));
    let (to, relayed) = sent(&reinvite);
    assert!(matches!(to, Destination::Flow(_)), "{to:?}");
    assert!(relayed.starts_with("INVITE "), "{relayed}");
    assert!(
        header_values(&relayed, "X-Sipadmit").is_empty(),
        "{relayed}"
    );
    assert!(reinvite.record().is_none());
    let reinvite = handle(&core, &in_dialog(&caller, &caller_route));
    let (to, relayed) = sent(&reinvite);
    assert_eq!(to, Destination::Upstream);
    assert!(
        header_values(&relayed, "X-Sipadmit").is_empty(),
        "{relayed}"
    );
    assert!(reinvite.record().is_none());
    // Behind the client's outbound-proxy Route (a plain value of this
    // proxy) the dialog's route set is followed all the same: both values
    // go, no new decision (it used to be decided again: 403).
    let outbound_proxy = format!("<sip:{DETACHED_ADDRESS};lr>");
    let preloaded: Vec<&str> = std::iter::once(outbound_proxy.as_str())
        .chain(caller_route.iter().copied())
        .collect();
    let preloaded = in_dialog(&caller, &preloaded);
    let text = String::from_utf8_lossy(&preloaded.bytes)
        .replace("reinvite-", "preloaded-")
        .replace("CSeq: 2 INVITE", "CSeq: 3 INVITE");
    let reinvite = handle(
        &core,
        &Inbound {
            bytes: bytes::Bytes::from(text),
            ..preloaded
        },
    );
    let (to, relayed) = sent(&reinvite);
    assert_eq!(to, Destination::Upstream);
    assert!(header_values(&relayed, "Route").is_empty(), "{relayed}");
    assert!(reinvite.record().is_none());

    // A forged To tag (a transaction of its own): the offer along its
    // Path, the caller without a route.
    let forge = |inbound: &Inbound, route: &[&str]| {
        let request = in_dialog(inbound, route);
        let text = String::from_utf8_lossy(&request.bytes).replace("reinvite-", "forged-");
        Inbound {
            bytes: bytes::Bytes::from(text),
            ..request
        }
    };
    let forged = handle(&core, &forge(&offer, &[&format!("<{path}>")]));
    assert_eq!(status(&forged), Some(480));
    assert_eq!(forged.record().unwrap().rule, "agent-offer.unsupported");
    let forged = handle(&core, &forge(&caller, &[]));
    assert_eq!(status(&forged), Some(403));
    assert_eq!(forged.record().unwrap().rule, "caller.unsupported");
    // Nor does the route of the client's other dialog make this one: its
    // token is bound to that dialog's Call-ID. (The token itself is valid:
    // the request is routed, and decided.)
    let reused = forge(&caller, &bob_route);
    let reused = Inbound {
        bytes: bytes::Bytes::from(
            String::from_utf8_lossy(&reused.bytes).replace("forged-", "reused-"),
        ),
        ..reused
    };
    let reused = handle(&core, &reused);
    assert_eq!(status(&reused), Some(403));
    assert_eq!(reused.record().unwrap().rule, "caller.unsupported");
    // Only an INVITE continues a session: a REGISTER with a To tag and a
    // dialog's route is an agent registration like any other.
    core.publish(runtime_from(
        &(CONFIG.to_owned() + "[policy.agent_registration]\nunsupported = \"reject\"\n"),
    ));
    let register = udp(
        request("REGISTER", "sip:contoso.com", agent, MOBILE, ""),
        agent,
    );
    let tagged = handle(&core, &forge(&register, &caller_route));
    assert_eq!(status(&tagged), Some(403));
    assert_eq!(
        tagged.record().unwrap().rule,
        "agent-registration.unsupported"
    );
}

// === legs, protocol answers, de-REGISTERs: what records and metrics say ===

const BARESIP: &str = "baresip v1.0.0 (x86_64/linux)";

/// A baresip call to a Lync user behind sipadmit, decided on both legs:
/// the client's leg is counted in `sipadmit_decisions_total`, the
/// registrar's leg (sipadmit's own Via in it: a spiral) is recorded, names
/// baresip too, and is counted as a repeat; a 400 for baresip's malformed
/// Request-URI is a protocol answer, never a policy reject.
#[test]
fn both_legs_of_a_call_count_once_and_a_protocol_answer_is_no_policy_reject() {
    let core = Core::detached(CONFIG).unwrap();
    let metrics = core.metrics();
    let callee: SocketAddr = "127.0.0.1:47100".parse().unwrap();
    let path = header_values(&relay_register(&core, callee, 1), "Path")[0].to_owned();
    assert_eq!(
        metrics.decisions("allow", "agent-registration", "supported"),
        1
    );

    let caller: SocketAddr = "127.0.0.1:47000".parse().unwrap();
    let leg1 = handle(
        &core,
        &udp(
            request("INVITE", "sip:bob@contoso.com", caller, BARESIP, ""),
            caller,
        ),
    );
    let (to, toward_registrar) = sent(&leg1);
    assert_eq!(to, Destination::Upstream);
    let r = leg1.into_record().unwrap();
    assert_eq!(
        (
            r.leg,
            r.spiral,
            r.client.as_str(),
            r.sender_client.as_str(),
            r.kind
        ),
        (
            Some(Leg::FromClient),
            false,
            "baresip",
            "baresip",
            Some(DecisionKind::Policy)
        )
    );

    // The registrar relays it to the callee's contact, along its Path.
    let (_, rest) = toward_registrar.split_once("\r\n").unwrap();
    let leg2 = udp(
        format!(
            "INVITE sip:alice@{callee} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-registrar-call\r\nRoute: {path}\r\n{rest}",
            upstream()
        ),
        upstream(),
    );
    let leg2 = handle(&core, &leg2);
    assert!(matches!(sent(&leg2).0, Destination::Flow(ref f) if f.peer == callee));
    let r = leg2.into_record().unwrap();
    assert_eq!(
        (r.leg, r.spiral, r.client.as_str(), r.source),
        (Some(Leg::FromRegistrar), true, "baresip", upstream())
    );
    assert!(!r.counted_once());
    assert_eq!(metrics.decisions("allow", "none", "third-party"), 1);
    assert_eq!(
        metrics.repeated_decisions("allow", "none", "third-party"),
        1
    );

    // A request from the registrar that never came through sipadmit (a
    // caller registered at the registrar directly) is no spiral: counted.
    let direct = request(
        "INVITE",
        &format!("sip:alice@{callee}"),
        upstream(),
        BARESIP,
        &format!("Route: {path}\r\n"),
    )
    .replace("z9hG4bK-INVITE", "z9hG4bK-direct");
    let r = handle(&core, &udp(direct, upstream()))
        .into_record()
        .unwrap();
    assert_eq!((r.leg, r.spiral), (Some(Leg::FromRegistrar), false));
    assert_eq!(metrics.decisions("allow", "none", "third-party"), 2);

    // A forged Via naming sipadmit, with a token it did not sign: no spiral.
    let forged = request(
        "INVITE",
        &format!("sip:alice@{callee}"),
        upstream(),
        BARESIP,
        &format!("Route: {path}\r\nVia: SIP/2.0/UDP {DETACHED_ADDRESS};branch=z9hG4bKsa-forged;sipadmit-flow=00ff\r\n"),
    )
    .replace("z9hG4bK-INVITE", "z9hG4bK-forged");
    let r = handle(&core, &udp(forged, upstream()))
        .into_record()
        .unwrap();
    assert!(!r.spiral);
    assert_eq!(metrics.decisions("allow", "none", "third-party"), 3);

    // baresip's malformed Request-URI: 400, a protocol answer.
    let malformed = request("INVITE", "sip:bob@contoso.com", caller, BARESIP, "")
        .replace(
            "INVITE sip:bob@contoso.com SIP/2.0",
            "INVITE bob-at-contoso SIP/2.0",
        )
        .replace("z9hG4bK-INVITE", "z9hG4bK-malformed");
    let out = handle(&core, &udp(malformed, caller));
    assert_eq!(status(&out), Some(400));
    let r = out.into_record().unwrap();
    assert_eq!(
        (r.kind, r.rule.as_ref(), r.action, r.status),
        (
            Some(DecisionKind::Protocol),
            "proxy.malformed",
            Action::Reject,
            Some(400)
        )
    );
    assert_eq!(metrics.protocol_answers("proxy.malformed", Some(400)), 1);
    assert_eq!(metrics.decisions("reject", "none", "third-party"), 0);
    // The answer is counted once sent (by the dispatcher), not here.
    assert_eq!(metrics.local_responses(400), 0);
    let text = metrics.render(&crate::observe::metrics::Gauges::default());
    for wanted in [
        "sipadmit_decisions_total{action=\"allow\",role=\"none\",support=\"third-party\"} 3",
        "sipadmit_decisions_repeated_total{action=\"allow\",role=\"none\",support=\"third-party\"} 1",
        "sipadmit_protocol_answers_total{rule=\"proxy.malformed\",status=\"400\"} 1",
    ] {
        assert!(text.contains(wanted), "{wanted} missing from\n{text}");
    }
    assert!(
        !text.contains("sipadmit_decisions_total{action=\"reject\""),
        "{text}"
    );
}

/// An agent offer is decided on the registrar's leg only, about the
/// client that registered the agent: counted, though the application's
/// INVITE came through sipadmit first; the sender is the application.
#[test]
fn an_agent_offer_on_the_registrars_leg_is_counted_and_names_its_sender() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:46100".parse().unwrap();
    let relayed = relay_register(&core, agent, 1);
    let path = header_values(&relayed, "Path")[0].to_owned();
    let rgs: SocketAddr = "127.0.0.1:43100".parse().unwrap();
    let leg1 = handle(
        &core,
        &udp(
            request("INVITE", "sip:agent-a@contoso.com", rgs, RGS, ""),
            rgs,
        ),
    );
    let (_, toward_registrar) = sent(&leg1);
    let (_, rest) = toward_registrar.split_once("\r\n").unwrap();
    let leg2 = udp(
        format!(
            "INVITE sip:alice@{agent} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-registrar-offer\r\nRoute: {path}\r\n{rest}",
            upstream()
        ),
        upstream(),
    );
    let r = handle(&core, &leg2).into_record().unwrap();
    assert_eq!(
        (
            r.role,
            r.leg,
            r.spiral,
            r.client.as_str(),
            r.sender_client.as_str()
        ),
        (
            SessionRole::AgentOffer,
            Some(Leg::FromRegistrar),
            true,
            "lync-2013",
            "response-group-service"
        )
    );
    assert!(r.counted_once());
    assert_eq!(
        core.metrics()
            .decisions("allow", "agent-offer", "supported"),
        1
    );
}

#[test]
fn a_de_register_is_marked_unregister() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:44100".parse().unwrap();
    let register = |n: u32, edit: &dyn Fn(String) -> String| {
        let text = edit(
            request("REGISTER", "sip:contoso.com", agent, LYNC, "")
                .replace("z9hG4bK-", &format!("z9hG4bK-{n}-"))
                .replace("CSeq: 1 ", &format!("CSeq: {n} ")),
        );
        handle(&core, &udp(text, agent))
            .into_record()
            .unwrap()
            .unregister
    };
    type Edit<'a> = &'a dyn Fn(String) -> String;
    let cases: [(&str, Edit<'_>, bool); 12] = [
        ("no expiry", &|t| t, false),
        (
            "Expires: 0",
            &|t: String| t.replace("Content-Length", "Expires: 0\r\nContent-Length"),
            true,
        ),
        (
            "Contact: *",
            &|t: String| {
                t.replace(&format!("Contact: <sip:alice@{agent}>"), "Contact: *")
                    .replace("Content-Length", "Expires: 0\r\nContent-Length")
            },
            true,
        ),
        (
            "expires=0 on every contact",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!(
                        "Contact: <sip:alice@{agent}>;expires=0, <sip:alice2@{agent}>;expires=0"
                    ),
                )
                .replace("Content-Length", "Expires: 3600\r\nContent-Length")
            },
            true,
        ),
        (
            "one contact stays",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!("Contact: <sip:alice@{agent}>;expires=0, <sip:alice2@{agent}>"),
                )
                .replace("Content-Length", "Expires: 3600\r\nContent-Length")
            },
            false,
        ),
        (
            "Contact: * with Expires: 300 (the registrar answers 400)",
            &|t: String| {
                t.replace(&format!("Contact: <sip:alice@{agent}>"), "Contact: *")
                    .replace("Content-Length", "Expires: 300\r\nContent-Length")
            },
            false,
        ),
        (
            "Contact: * beside another Contact",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!("Contact: *, <sip:alice@{agent}>;expires=0"),
                )
                .replace("Content-Length", "Expires: 0\r\nContent-Length")
            },
            false,
        ),
        (
            "a query (no Contact)",
            &|t: String| t.replace(&format!("Contact: <sip:alice@{agent}>\r\n"), ""),
            false,
        ),
        // What a registrar may read as a binding is none: a repeated
        // `expires` (Kamailio takes the last), `+0` (not digits: the
        // default expiry), a second Expires header (review: each passed
        // the agent policy as a de-registration and bound).
        (
            "expires=0;expires=3600",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!("Contact: <sip:alice@{agent}>;expires=0;expires=3600"),
                )
            },
            false,
        ),
        (
            "expires=+0",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!("Contact: <sip:alice@{agent}>;expires=+0"),
                )
            },
            false,
        ),
        (
            "Expires: 0 twice over",
            &|t: String| {
                t.replace(
                    "Content-Length",
                    "Expires: 0\r\nExpires: 3600\r\nContent-Length",
                )
            },
            false,
        ),
        (
            "expires=00",
            &|t: String| {
                t.replace(
                    &format!("Contact: <sip:alice@{agent}>"),
                    &format!("Contact: <sip:alice@{agent}>;expires=00"),
                )
            },
            true,
        ),
    ];
    for (n, (name, edit, unregister)) in cases.into_iter().enumerate() {
        assert_eq!(register(n as u32 + 1, edit), unregister, "{name}");
    }
}

/// A scanner whose message gets its source banned: dropped, recorded as
/// `ban.scanner`, a protocol record, and counted as one (not as the
/// policy's scanner decision, nor also as a policy drop).
#[test]
fn a_scanner_banned_by_its_message_is_a_protocol_record() {
    let core = Core::detached(CONFIG).unwrap();
    let scanner: SocketAddr = "203.0.113.66:5060".parse().unwrap();
    let out = core.handle_banning(
        &udp(
            request(
                "INVITE",
                "sip:100@contoso.com",
                scanner,
                "friendly-scanner",
                "",
            ),
            scanner,
        ),
        Instant::now(),
        &|_, _| true,
        &mut |source| source == scanner,
    );
    assert_eq!(out.drop_reason(), Some(DropReason::Banned));
    let r = out.into_record().unwrap();
    assert_eq!(
        (r.action, r.rule.as_ref(), r.kind, r.status),
        (
            Action::Drop,
            "ban.scanner",
            Some(DecisionKind::Protocol),
            None
        )
    );
    let metrics = core.metrics();
    assert_eq!(metrics.protocol_answers("ban.scanner", None), 1);
    assert_eq!(metrics.decisions("drop", "none", "scanner"), 0);
    assert_eq!(metrics.drops(DropReason::Banned), 1);
    assert_eq!(metrics.drops(DropReason::Policy), 0);
}

/// A UDP scanner is banned once its traffic has gone on for a while, often
/// by a retransmission of a request already decided: the ban is recorded
/// all the same (not taken for the retransmission's repeated record).
#[test]
fn a_scanner_banned_by_a_retransmission_gets_its_ban_record() {
    let core = Core::detached(CONFIG).unwrap();
    let scanner: SocketAddr = "203.0.113.67:5060".parse().unwrap();
    let scan = request(
        "REGISTER",
        "sip:contoso.com",
        scanner,
        "friendly-scanner",
        "",
    );
    let send = |proven: bool| {
        core.handle_banning(
            &udp(scan.clone(), scanner),
            Instant::now(),
            &|_, _| true,
            &mut |_| proven,
        )
    };
    let first = send(false).into_record().unwrap();
    assert_eq!(first.action, Action::Drop, "dropped by the policy");
    assert!(send(false).into_record().is_none(), "a retransmission");
    let banned = send(true).into_record().expect("the ban's record");
    assert_eq!(banned.rule.as_ref(), "ban.scanner");
    assert_eq!(core.metrics().protocol_answers("ban.scanner", None), 1);
}

/// A TCP client's request leaving over UDP keeps a client transaction
/// (retransmitted until answered); a scanner's, relayed because the policy
/// lets scanners through, does not take a place in that table.
#[test]
fn a_relayed_scanner_request_gets_no_client_transaction() {
    let core = Core::detached(&format!("{CONFIG}[policy]\nscanner = \"allow\"\n")).unwrap();
    let relay = |ua: &str, connection: u64| {
        let text = request("OPTIONS", "sip:bob@contoso.com", client(), ua, "");
        match core.handle(&tcp(text, client(), connection), Instant::now(), &|_, _| {
            true
        }) {
            Outcome::Relay {
                send, retransmit, ..
            } => (send.to, retransmit.is_some()),
            other => panic!("{ua}: not relayed: {other:?}"),
        }
    };
    assert_eq!(relay(LYNC, 1), (Destination::Upstream, true));
    assert_eq!(relay("friendly-scanner", 2), (Destination::Upstream, false));
}

/// A HEP packet sent to a SIP listener (a capture agent whose collector
/// is this SIP port) is dropped and counted as any malformed message is,
/// and told for what it is: the first of every 10 s as a warning naming
/// its source and the listener, then a summary, instead of the malformed
/// messages' debug lines.
#[test]
fn a_hep_packet_at_a_sip_listener_is_dropped_as_malformed_and_told_as_hep() {
    let mut packet = Vec::new();
    let header = crate::observe::hep::encode::Header {
        payload_type: crate::observe::hep::encode::PayloadType::Sip,
        transport: Transport::Udp,
        source: client(),
        destination: upstream(),
        seconds: 1,
        microseconds: 0,
        capture_id: 2001,
        auth_key: None,
        correlation_id: None,
    };
    let register = request("REGISTER", "sip:contoso.com", client(), LYNC, "");
    crate::observe::hep::encode::encode(&header, register.as_bytes(), &mut packet).unwrap();
    let core = Core::detached(CONFIG).unwrap();
    let t0 = Instant::now();
    let ((), text) = crate::captured_log::captured_log(tracing::Level::DEBUG, || {
        for _ in 0..3 {
            let hep = Inbound {
                bytes: Bytes::from(packet.clone()),
                ..udp(String::new(), client())
            };
            let outcome = core.handle(&hep, t0, &|_, _| true);
            assert!(matches!(
                outcome,
                Outcome::Drop {
                    reason: DropReason::Malformed,
                    record: None
                }
            ));
        }
        core.close_summaries(t0 + SUMMARY_WINDOW);
    });
    let metrics = core.metrics();
    assert_eq!(metrics.drops(DropReason::Malformed), 3);
    assert_eq!(metrics.parse_errors("malformed_start_line"), 3);
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("HEP packet sent to a SIP listener"))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].contains(&format!("source={}", client())),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.contains("HEP packets sent to a SIP listener in the last 10 s")
                && l.contains("hep_packets=3")
        ),
        "{text}"
    );
    assert!(!text.contains("unparsable message dropped"), "{text}");
    assert!(!text.contains("malformed messages dropped"), "{text}");
}

/// A TCP client's request relayed over UDP that timed out was answered
/// `408` by sipadmit: a late response to it is not relayed after that
/// final answer (RFC 3261 16.7 step 5), except a 2xx to an INVITE.
#[test]
fn a_late_answer_after_the_408_of_a_timeout_is_discarded_unless_a_2xx_to_an_invite() {
    let core = Core::detached(CONFIG).unwrap();
    let t0 = Instant::now();
    let relay = |method: &str, connection: u64| {
        let text = request(method, "sip:bob@contoso.com", client(), LYNC, "")
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        let inbound = tcp(text, client(), connection);
        match core.handle(&inbound, t0, &|_, _| true) {
            Outcome::Relay {
                send,
                retransmit: Some(key),
                ..
            } => {
                let relayed = String::from_utf8_lossy(&send.bytes).into_owned();
                assert!(core.keep_transaction(key, send, inbound, t0));
                relayed
            }
            other => panic!("{method}: not relayed with a client transaction: {other:?}"),
        }
    };
    let options = relay("OPTIONS", 1);
    let invite = relay("INVITE", 2);
    let timeout = core.client_transactions().timers().timeout();
    let timed_out: Vec<Option<u16>> = core
        .client_transactions_due(t0 + timeout)
        .iter()
        .map(|(_, outcome, _)| status(outcome))
        .collect();
    assert_eq!(timed_out, [Some(408), Some(408)]);

    let late = t0 + timeout + Duration::from_secs(1);
    let answer = |relayed: &str, status_line: &str| {
        core.handle(
            &udp(registrar_answer(relayed, status_line, ""), upstream()),
            late,
            &|_, _| true,
        )
    };
    let discarded = answer(&options, "200 OK");
    assert_eq!(discarded.drop_reason(), Some(DropReason::AfterTimeout));
    assert_eq!(
        answer(&invite, "486 Busy Here").drop_reason(),
        Some(DropReason::AfterTimeout)
    );
    let ok = answer(&invite, "200 OK");
    assert!(matches!(ok, Outcome::Relay { .. }), "{ok:?}");
    assert_eq!(core.metrics().drops(DropReason::AfterTimeout), 2);
}

/// An INVITE the registrar's side sent over its own TCP connection
/// (`node`, connection 7), relayed by `core` toward the UDP client
/// `agent`; returns the relayed text, whose Via carries the back token.
fn relay_offer_from_node(core: &Core, node: SocketAddr, agent: SocketAddr) -> String {
    let invite = request("INVITE", &format!("sip:agent-a@{agent}"), node, RGS, "")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let from_node = Inbound {
        leg: Leg::FromRegistrar,
        ..tcp(invite, node, 7)
    };
    let (to, relayed) = sent(&handle(core, &from_node));
    assert!(
        matches!(to, Destination::Flow(ref f) if f.peer == agent),
        "{to:?}"
    );
    assert!(relayed.contains(";sipadmit-back="), "{relayed}");
    relayed
}

/// A client's answer to a request relayed toward it goes back where the
/// request came from (RFC 3261 18.2.2): over the registrar's connection
/// (or another node's) while it is open, upstream once it is gone. The
/// back token serves its own transaction alone: forged, or replayed with
/// another branch, it sends the answer upstream, counted, and the warnings
/// it sets off are rate-limited apart from those of bad flow tokens.
#[test]
fn a_clients_answer_goes_back_over_the_connection_the_request_came_on() {
    let core = Core::detached(CONFIG).unwrap();
    let agent: SocketAddr = "127.0.0.1:41000".parse().unwrap();
    let open_7 = |node: SocketAddr| {
        move |id: ConnectionId, peer: SocketAddr| {
            id == ConnectionId::new(7).unwrap() && peer == node
        }
    };
    for node in ["127.0.0.1:45000", "127.0.0.2:45000"] {
        let node: SocketAddr = node.parse().unwrap();
        let relayed = relay_offer_from_node(&core, node, agent);
        let ringing = udp(registrar_answer(&relayed, "180 Ringing", ""), agent);
        let (to, answer) = sent(&core.handle(&ringing, Instant::now(), &open_7(node)));
        assert!(
            matches!(to, Destination::Flow(ref f) if f.peer == node && f.transport == Transport::Tcp),
            "{to:?}"
        );
        assert_eq!(header_values(&answer, "Via").len(), 1, "{answer}");
        let gone = core.handle(&ringing, Instant::now(), &|_, _| false);
        assert_eq!(sent(&gone).0, Destination::Upstream);
    }
    assert_eq!(count(&core.metrics().bad_back_tokens), 0);

    let node: SocketAddr = "127.0.0.2:45000".parse().unwrap();
    let relayed = relay_offer_from_node(&core, node, agent);
    let forged = relayed.replace(";sipadmit-back=", ";sipadmit-back=00");
    let flow_token = relayed.replace(";sipadmit-back=", ";sipadmit-flow=");
    // The token of this transaction with the branch of another.
    let other_branch = relay_offer_from_node(&core, node, "127.0.0.1:41001".parse().unwrap());
    let branch_of = |text: &str| {
        let via = header_values(text, "Via")[0];
        let start = via.find(";branch=").unwrap() + ";branch=".len();
        via[start..start + via[start..].find(';').unwrap()].to_owned()
    };
    let replayed = relayed.replace(&branch_of(&relayed), &branch_of(&other_branch));
    assert_ne!(replayed, relayed);
    let t0 = Instant::now();
    let ((), text) = crate::captured_log::captured_log(tracing::Level::WARN, || {
        for _ in 0..5 {
            for bad in [&forged, &replayed] {
                let out = core.handle(
                    &udp(registrar_answer(bad, "200 OK", ""), agent),
                    t0,
                    &open_7(node),
                );
                assert_eq!(sent(&out).0, Destination::Upstream);
            }
            let out = core.handle(
                &udp(registrar_answer(&flow_token, "200 OK", ""), agent),
                t0,
                &open_7(node),
            );
            assert!(matches!(
                out,
                Outcome::Drop {
                    reason: DropReason::ForeignResponse,
                    ..
                }
            ));
        }
    });
    assert_eq!(count(&core.metrics().bad_back_tokens), 10);
    let warned = |what: &str| {
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    assert_eq!(
        warned("response with a bad back token sent upstream"),
        1,
        "{text}"
    );
    assert_eq!(
        warned("flow-token response not from the registrar"),
        1,
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("WARN")).count(),
        2,
        "{text}"
    );
}

/// A flow names the listener its client reached only where the instance
/// has several of its transport: with one, the tokens keep the form every
/// earlier version reads (a pool's rolling upgrade).
#[test]
fn a_token_names_the_listener_only_where_there_are_several_of_its_transport() {
    let agent: SocketAddr = "127.0.0.1:44000".parse().unwrap();
    for (transports, named) in [
        (&[Transport::Udp, Transport::Tcp][..], None),
        (
            &[Transport::Udp, Transport::Udp, Transport::Tcp][..],
            Some(DETACHED_ADDRESS),
        ),
    ] {
        let core = core_on(DETACHED_UPSTREAM, transports, BootId::from_u64(1));
        let relayed = relay_register(&core, agent, 1);
        let path = header_values(&relayed, "Path")[0];
        let token = &path[path.find("sip:").unwrap() + 4..path.find('@').unwrap()];
        let (purpose, flow) = core.decode_token(token.as_bytes()).unwrap();
        assert_eq!((purpose, flow.local), (Purpose::Path, named), "{relayed}");
    }
}

#[test]
fn a_peers_text_in_a_log_line_cannot_write_fields_of_its_own() {
    let shown = |bytes: &[u8]| Text(Some(bytes)).to_string();
    assert_eq!(shown(b"a1b2@host"), "a1b2@host");
    assert_eq!(
        shown(b"x: source banned source=192.0.2.77 x blocks=\"all\""),
        "x: source banned source=192.0.2.77 x blocks=\\\"all\\\""
    );
    assert_eq!(shown(b"back\\slash"), "back\\\\slash");
    assert_eq!(shown(b"esc\x1b[2Jbell\x07"), "esc\\u{1b}[2Jbell\\u{7}");
    assert_eq!(shown("rtl\u{202e}".as_bytes()), "rtl\\u{202e}");
    assert_eq!(shown(b"bad\xffutf8"), "bad\u{fffd}utf8");
}

/// A CANCEL of an INVITE this proxy answered itself (a policy reject that
/// crossed it, or whose answer was lost) is answered `200` here (RFC 3261
/// 9.2: the CANCEL has no effect on a completed INVITE), unrecorded, and
/// goes nowhere; a CANCEL of a relayed INVITE goes on.
#[test]
fn a_cancel_of_an_invite_answered_here_is_answered_200_and_not_sent_on() {
    let core = Core::detached(CONFIG).unwrap();
    let caller: SocketAddr = "127.0.0.1:45100".parse().unwrap();
    let cancel_of = |invite: &str| {
        udp(
            invite
                .replacen("INVITE sip:", "CANCEL sip:", 1)
                .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"),
            caller,
        )
    };
    let rejected = request("INVITE", "sip:helpdesk@contoso.com", caller, MOBILE, "");
    assert_eq!(
        status(&handle(&core, &udp(rejected.clone(), caller))),
        Some(403)
    );
    let cancel = handle(&core, &cancel_of(&rejected));
    let (to, answer) = sent(&cancel);
    assert_eq!(to, Destination::Source);
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(answer.contains("CSeq: 1 CANCEL\r\n"), "{answer}");
    assert!(cancel.record().is_none());
    assert_eq!(
        core.metrics()
            .protocol_answers(super::request::CANCEL_ANSWERED_RULE, Some(200)),
        1
    );

    let relayed = rejected
        .replace("z9hG4bK-INVITE", "z9hG4bK-allowed")
        .replace(MOBILE, LYNC);
    assert_eq!(
        sent(&handle(&core, &udp(relayed.clone(), caller))).0,
        Destination::Upstream
    );
    let cancel = handle(&core, &cancel_of(&relayed));
    let (to, cancel) = sent(&cancel);
    assert_eq!(to, Destination::Upstream);
    assert!(
        cancel.starts_with("CANCEL sip:helpdesk@contoso.com"),
        "{cancel}"
    );

    // Answered 503 when its send failed, that answer lost, and a copy sent
    // on once the registrar is back: its CANCEL goes on too.
    let resent = relayed.replace("z9hG4bK-allowed", "z9hG4bK-resent");
    let first = udp(resent.clone(), caller);
    assert_eq!(
        status(&core.upstream_unavailable(&first, Instant::now(), false)),
        Some(503)
    );
    assert_eq!(
        sent(&handle(&core, &cancel_of(&resent))).0,
        Destination::Source
    );
    assert_eq!(sent(&handle(&core, &first)).0, Destination::Upstream);
    assert_eq!(
        sent(&handle(&core, &cancel_of(&resent))).0,
        Destination::Upstream
    );
}
