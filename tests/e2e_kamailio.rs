//! End to end with real components: SIPp clients register and call through
//! sipadmit to Kamailio (usrloc in memory, Path support); the Response Group
//! application (SIPp) offers calls to agents through Kamailio, which routes
//! them back through sipadmit along the Path.
//!
//! Needs `kamailio` and `sipp` (Debian `kamailio`, `sip-tester`); fails
//! under CI=true when they are missing, skips with a message otherwise.

mod common;

use std::time::Duration;

use common::external::{
    Kamailio, KamailioOptions, Sipp, UA_LYNC_2013, UA_LYNC_MOBILE, UA_RESPONSE_GROUP,
};
use common::TestProxy;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
application_user_agents = ["Response_Group_Service"]
agents = ["sip:agent-*@contoso.com"]
"#;

fn record<'a>(
    records: &'a [Value],
    method: &str,
    request_uri_part: &str,
    client: &str,
) -> &'a Value {
    records
        .iter()
        .find(|r| {
            r["method"] == method
                && r["request_uri"]
                    .as_str()
                    .unwrap_or("")
                    .contains(request_uri_part)
                && r["client"] == client
        })
        .unwrap_or_else(|| {
            panic!("no {method} record for {request_uri_part} / {client} in {records:#?}")
        })
}

fn response_group_session(monitor: bool) {
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let mode = if monitor { "monitor" } else { "enforce" };
    let proxy = TestProxy::start(
        &format!("[proxy]\nmode = \"{mode}\"\n{CONFIG}"),
        "127.0.0.1",
        &kam.upstream_udp(),
    );

    // A Lync 2013 desktop agent and a Lync mobile agent register through sipadmit.
    let desktop = Sipp::agent("agent-desk", UA_LYNC_2013)
        .remote(proxy.udp)
        .wait(Duration::from_secs(12))
        .label("desktop-agent")
        .spawn();
    let mobile = Sipp::agent("agent-mob", UA_LYNC_MOBILE)
        .remote(proxy.udp)
        .expect_invite(monitor)
        .wait(Duration::from_secs(if monitor { 12 } else { 6 }))
        .label("mobile-agent")
        .spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while kam.log_lines("REQ REGISTER").len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    // Callers: the desktop's INVITE reaches Kamailio (486 Workflow Reached);
    // the mobile's is answered 403 by sipadmit (monitor: relayed too).
    Sipp::call("sip:helpdesk@contoso.com", UA_LYNC_2013, 486)
        .remote(proxy.udp)
        .label("desktop-caller")
        .run_with_timeout(RUN)
        .assert_success();
    // Its ACK, relayed by sipadmit, matched Kamailio's INVITE transaction
    // (same branch, RFC 3261 17.1.1.3 / 16.11), so tm absorbed it.
    assert!(
        kam.wait_for_log("ACK-CHECK", Duration::from_secs(3)),
        "{}",
        kam.log()
    );
    assert!(kam.log_lines("ACK-NO-TRANS").is_empty(), "{}", kam.log());
    let mobile_caller = Sipp::call(
        "sip:helpdesk@contoso.com",
        UA_LYNC_MOBILE,
        if monitor { 486 } else { 403 },
    )
    .remote(proxy.udp)
    .label("mobile-caller")
    .run_with_timeout(RUN);
    mobile_caller.assert_success();
    if !monitor {
        let replies = mobile_caller.received("SIP/2.0 403");
        assert!(
            replies[0].contains("Warning: 399 sipadmit"),
            "{}",
            mobile_caller.report()
        );
    }

    // The Response Group application offers the call to each agent via Kamailio.
    Sipp::call("sip:agent-desk@contoso.com", UA_RESPONSE_GROUP, 200)
        .remote(kam.udp_addr())
        .label("rg-to-desktop")
        .run_with_timeout(RUN)
        .assert_success();
    Sipp::call(
        "sip:agent-mob@contoso.com",
        UA_RESPONSE_GROUP,
        if monitor { 200 } else { 480 },
    )
    .remote(kam.udp_addr())
    .label("rg-to-mobile")
    .run_with_timeout(RUN)
    .assert_success();

    let desktop = desktop.join_timeout(RUN);
    desktop.assert_success();
    let mobile = mobile.join_timeout(RUN);
    mobile.assert_success();
    // The offer reached the desktop agent through sipadmit, its Route consumed.
    let offers = desktop.received("INVITE ");
    assert_eq!(offers.len(), 1, "{}", desktop.report());
    assert!(
        !offers[0].contains("\nRoute:"),
        "sipadmit removes its own Route: {}",
        offers[0]
    );
    assert!(
        offers[0].contains("Via: SIP/2.0/UDP 127.0.0.1:"),
        "{}",
        offers[0]
    );
    assert_eq!(
        mobile.received("INVITE ").len(),
        usize::from(monitor),
        "{}",
        mobile.report()
    );

    // Decision records, field by field.
    let records = proxy.records();
    let would = |r: &Value| r["would_reject"].as_bool().unwrap();
    let caller = record(&records, "INVITE", "helpdesk", "lync-mobile");
    assert_eq!(caller["transport"], "udp");
    assert!(caller["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!caller["call_id"].as_str().unwrap().is_empty());
    assert_eq!(caller["from"], "sip:alice@contoso.com");
    assert_eq!(caller["to"], "sip:helpdesk@contoso.com");
    assert_eq!(caller["request_uri"], "sip:helpdesk@contoso.com");
    assert_eq!(caller["user_agent"], UA_LYNC_MOBILE);
    assert_eq!(caller["category"], "mobile");
    assert_eq!(caller["support"], "unsupported");
    assert_eq!(caller["role"], "caller");
    assert_eq!(caller["rule"], "caller.unsupported");
    assert_eq!(caller["mode"], mode);
    if monitor {
        assert_eq!(caller["action"], "flag");
        assert!(caller["status"].is_null());
        assert!(would(caller));
    } else {
        assert_eq!(caller["action"], "reject");
        assert_eq!(caller["status"], 403);
        assert!(!would(caller));
    }
    let desk_caller = record(&records, "INVITE", "helpdesk", "lync-2013");
    assert_eq!(
        (
            desk_caller["action"].as_str(),
            desk_caller["support"].as_str()
        ),
        (Some("allow"), Some("supported"))
    );

    let offer = record(&records, "INVITE", "agent-mob", "lync-mobile");
    assert_eq!(offer["role"], "agent-offer");
    assert_eq!(offer["user_agent"], UA_RESPONSE_GROUP);
    assert_eq!(offer["rule"], "agent-offer.unsupported");
    assert_eq!(offer["client_rule"], "registered:lync-mobile");
    assert_eq!(offer["action"], if monitor { "flag" } else { "reject" });
    assert_eq!(
        offer["status"],
        if monitor {
            Value::Null
        } else {
            Value::from(480)
        }
    );
    let desk_offer = record(&records, "INVITE", "agent-desk", "lync-2013");
    assert_eq!(
        (desk_offer["role"].as_str(), desk_offer["action"].as_str()),
        (Some("agent-offer"), Some("allow"))
    );

    let registration = record(&records, "REGISTER", "contoso.com", "lync-mobile");
    assert_eq!(registration["role"], "agent-registration");
    assert_eq!(registration["action"], "flag");
}

#[test]
fn response_group_session_enforced() {
    response_group_session(false);
}

#[test]
fn response_group_session_monitored() {
    response_group_session(true);
}

#[test]
fn tcp_agent_gets_its_offer_on_its_own_connection() {
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &kam.upstream_udp());
    // A Lync 2013 agent registers over TCP through sipadmit (UDP to Kamailio).
    let agent = Sipp::agent("agent-tcp", UA_LYNC_2013)
        .tcp()
        .remote(proxy.tcp)
        .wait(Duration::from_secs(10))
        .label("tcp-agent")
        .spawn();
    assert!(
        kam.wait_for_log("REQ REGISTER", Duration::from_secs(8)),
        "{}",
        kam.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    // The Response Group application's offer comes back along the Path
    // token and is written to the agent's TCP connection.
    Sipp::call("sip:agent-tcp@contoso.com", UA_RESPONSE_GROUP, 200)
        .remote(kam.udp_addr())
        .label("rg-to-tcp-agent")
        .run_with_timeout(RUN)
        .assert_success();
    let agent = agent.join_timeout(RUN);
    agent.assert_success();
    let offers = agent.received("INVITE ");
    assert_eq!(offers.len(), 1, "{}", agent.report());
    let records = proxy.records();
    let offer = record(&records, "INVITE", "agent-tcp", "lync-2013");
    assert_eq!(offer["role"], "agent-offer");
    assert_eq!(offer["action"], "allow");
    let registration = record(&records, "REGISTER", "contoso.com", "lync-2013");
    assert_eq!(registration["transport"], "tcp");
}

/// The values of a header in a SIPp trace message (lines, any case).
fn trace_header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The first URI of a Route or Record-Route value list.
fn first_uri(values: &str) -> &str {
    values
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(|c| c == '<' || c == '>')
}

/// Waits (bounded) until Kamailio has logged `n` REGISTERs.
fn wait_for_registers(kam: &Kamailio, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while kam.log_lines("REQ REGISTER").len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kam.log_lines("REQ REGISTER").len() >= n, "{}", kam.log());
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_tcp_caller_and_a_tcp_callee_finish_a_call_through_a_udp_registrar() {
    // RFC 5658: sipadmit faces the clients over TCP and the registrar over
    // UDP, so it record-routes twice per pass, and the route sets the
    // clients learn begin with its TCP side.
    if common::external::require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &kam.upstream_udp());
    let callee = Sipp::agent("agent-callee", UA_LYNC_2013)
        .tcp()
        .remote(proxy.tcp)
        .wait(Duration::from_secs(12))
        .label("tcp-callee")
        .spawn();
    wait_for_registers(&kam, 1);
    let caller = Sipp::call("sip:agent-callee@contoso.com", UA_LYNC_2013, 200)
        .tcp()
        .remote(proxy.tcp)
        .user("caller")
        .label("tcp-caller")
        .run_with_timeout(RUN);
    caller.assert_success();
    let callee = callee.join_timeout(RUN);
    callee.assert_success();

    // INVITE, ACK and BYE all reached the callee; 200 (INVITE) and 200
    // (BYE) reached the caller.
    for method in ["INVITE ", "ACK ", "BYE "] {
        assert_eq!(
            callee.received(method).len(),
            1,
            "{method}\n{}",
            callee.report()
        );
    }
    assert_eq!(
        caller.received("SIP/2.0 200").len(),
        2,
        "{}",
        caller.report()
    );

    let tcp_side = format!("@{};transport=tcp;lr", proxy.tcp);
    let udp_side = format!("@{};transport=udp;lr", proxy.udp);
    // The callee's route set: sipadmit's TCP side first, then its UDP side
    // (the registrar's leg), then the caller's pass: UDP, TCP.
    let invite = &callee.received("INVITE ")[0];
    let record_routes: Vec<&str> = trace_header(invite, "Record-Route")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim())
        .collect();
    assert_eq!(record_routes.len(), 4, "{invite}");
    for (value, side) in record_routes
        .iter()
        .zip([&tcp_side, &udp_side, &udp_side, &tcp_side])
    {
        assert!(
            value.contains(side.as_str()),
            "{value} should name {side}\n{invite}"
        );
    }
    // The caller's in-dialog requests start their route at sipadmit's TCP
    // side: a client that honours its route set sends them over TCP.
    for method in ["ACK ", "BYE "] {
        let sent = caller
            .messages_matching("message sent")
            .into_iter()
            .find(|m| m.starts_with(method))
            .unwrap_or_else(|| panic!("no {method}sent\n{}", caller.report()));
        let route = trace_header(&sent, "Route");
        assert!(
            route
                .first()
                .is_some_and(|r| first_uri(r).contains(&tcp_side)),
            "{method}route should start at {tcp_side}: {sent}"
        );
    }
}

#[test]
fn after_a_restart_an_offer_to_an_old_tcp_flow_gets_430_and_reaches_no_one_else() {
    // A fixed flow_secret, as a pool runs it: tokens outlive the process.
    if common::external::require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let config = format!("[proxy]\nflow_secret = \"restart-test-secret-0123456789\"\n{CONFIG}");
    let before = TestProxy::start(&config, "127.0.0.1", &kam.upstream_udp());
    // Agent X registers over TCP: the first TCP connection of this process.
    Sipp::register("agent-x", UA_LYNC_2013, 200)
        .tcp()
        .remote(before.tcp)
        .label("agent-x")
        .run_with_timeout(RUN)
        .assert_success();
    wait_for_registers(&kam, 1);
    // sipadmit restarts on the same ports.
    let (udp, tcp) = (before.udp, before.tcp);
    drop(before);
    let after = TestProxy::start_on(&config, udp, tcp, &kam.upstream_udp());
    // Agent Y opens the first TCP connection of the new process; it must
    // not be offered X's call.
    let y = Sipp::agent("agent-y", UA_LYNC_2013)
        .tcp()
        .remote(after.tcp)
        .expect_invite(false)
        .wait(Duration::from_secs(6))
        .label("agent-y")
        .spawn();
    wait_for_registers(&kam, 2);
    // The Response Group application offers a call to X; Kamailio routes it
    // along X's Path (a token of the old process): 430 Flow Failed.
    let offer = Sipp::call("sip:agent-x@contoso.com", UA_RESPONSE_GROUP, 430)
        .remote(kam.udp_addr())
        .label("rg-to-x")
        .run_with_timeout(RUN);
    offer.assert_success();
    let y = y.join_timeout(RUN);
    y.assert_success();
    assert!(y.received("INVITE ").is_empty(), "{}", y.report());
    let records = after.records();
    let refused = records
        .iter()
        .find(|r| r["status"] == 430)
        .unwrap_or_else(|| panic!("no 430 record: {records:#?}"));
    assert_eq!(refused["rule"], "proxy.flow-failed");
    assert_eq!(refused["action"], "reject");
}

#[test]
fn a_tcp_client_on_the_registrars_host_registers_through_a_tcp_upstream() {
    // Kamailio is a TCP upstream on 127.0.0.1; SIPp registers over TCP from
    // 127.0.0.1 too, on another port: it is a client (on main, any TCP peer
    // with the upstream's IP was the registrar, and the REGISTER got 404).
    if common::external::require_tool("sipp").is_none() {
        return;
    }
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &kam.upstream_tcp());
    Sipp::register("alice", UA_LYNC_2013, 200)
        .tcp()
        .remote(proxy.tcp)
        .label("tcp-client-on-the-registrar-host")
        .run_with_timeout(RUN)
        .assert_success();
    // Kamailio got it from sipadmit, over sipadmit's own TCP connection.
    let registers = kam.log_lines("REQ REGISTER");
    assert_eq!(registers.len(), 1, "{}", kam.log());
    assert!(
        registers[0].contains("src=tcp:127.0.0.1:"),
        "{}",
        registers[0]
    );
    let records = proxy.records();
    let r = record(&records, "REGISTER", "contoso.com", "lync-2013");
    assert_eq!(r["action"], "allow", "{r}");
    assert_eq!(r["transport"], "tcp", "{r}");
    assert!(r["status"].is_null(), "relayed, not answered: {r}");
}

/// A drain that runs out with a call ringing at a TCP Kamailio (the callee
/// registered through sipadmit, rings and never answers): sipadmit sends
/// Kamailio a CANCEL for the call (RFC 3261 16.8, as Timer C would),
/// Kamailio cancels the callee's branch, and the callee's `487` reaches the
/// caller through sipadmit before it stops. Nothing is left ringing.
#[test]
fn a_call_ringing_at_a_tcp_kamailio_is_cancelled_when_the_drain_runs_out() {
    let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else {
        return;
    };
    let config = format!("{CONFIG}\n[limits]\ndrain_secs = 1\n");
    let proxy = TestProxy::start(&config, "127.0.0.1", &kam.upstream_tcp());
    let callee = Sipp::agent("bob", UA_LYNC_2013)
        .ooc("agent_ring.xml")
        .remote(proxy.udp)
        .wait(Duration::from_secs(15))
        .label("ringing-callee")
        .spawn();
    wait_for_registers(&kam, 1);
    let caller = Sipp::call("sip:bob@contoso.com", UA_LYNC_2013, 487)
        .remote(proxy.udp)
        .label("cancelled-caller")
        .spawn();
    assert!(
        kam.wait_for_log("REQ INVITE", Duration::from_secs(8)),
        "{}",
        kam.log()
    );
    // The callee rings (its 180 went back through sipadmit and Kamailio).
    std::thread::sleep(Duration::from_millis(500));
    proxy.start_drain();
    let caller = caller.join_timeout(RUN);
    caller.assert_success();
    let callee = callee.join_timeout(RUN);
    callee.assert_success();
    assert_eq!(callee.received("CANCEL ").len(), 1, "{}", callee.report());
    assert!(proxy.stopped_within(Duration::from_secs(10)));
    // Stopped: the writer wrote every record out at its stop.
    let records = std::fs::read_to_string(&proxy.decision_log).unwrap();
    assert!(!records.contains("proxy.request-timeout"), "{records}");
    assert_eq!(
        records.lines().count(),
        3,
        "REGISTER, INVITE, its offer: {records}"
    );
    let metrics = proxy.stop();
    assert_eq!(
        metrics
            .upstream_cancels
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        metrics
            .upstream_cancel_answers
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "Kamailio's 200 to the CANCEL, consumed"
    );
}

/// An RFC 5626 outbound client over UDP (reg-id, +sip.instance, `ob`)
/// through sipadmit to a registrar that requires outbound support of the
/// first hop (trial 19: it answered 439, sipadmit's Path had no `ob`):
/// registered, the registrar's `Require: outbound` reaches the client, and
/// the STUN keep-alive it then sends on the flow (RFC 5626 8) is answered
/// with its address.
#[test]
fn an_outbound_client_registers_and_its_stun_keep_alives_are_answered() {
    let Some(kam) = Kamailio::try_start(KamailioOptions {
        outbound: true,
        ..KamailioOptions::default()
    }) else {
        return;
    };
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &kam.upstream_udp());
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = client.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-ob-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:obuser@contoso.com>;tag=ob1\r\n\
         To: <sip:obuser@contoso.com>\r\nCall-ID: outbound-1@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:obuser@{me};ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-0000000000b1>\"\r\n\
         Supported: outbound, path\r\nExpires: 60\r\n\
         User-Agent: {UA_LYNC_2013}\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let mut buf = [0u8; 65536];
    let answer = loop {
        let (n, _) = client
            .recv_from(&mut buf)
            .expect("an answer to the REGISTER");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            break text;
        }
    };
    assert!(
        answer.starts_with("SIP/2.0 200 "),
        "{answer}\n{}",
        kam.log()
    );
    assert!(
        answer
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("require:") && l.contains("outbound")),
        "{answer}"
    );
    let stun = [
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2,
    ];
    client.send_to(&stun, proxy.udp).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("a STUN answer");
    assert_eq!(from, proxy.udp);
    assert_eq!(
        &buf[..n],
        &sipadmit::transport::stun::binding_response(&stun, me)
            .unwrap()
            .bytes[..]
    );
}
