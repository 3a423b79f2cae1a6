//! Proves the end-to-end harness and the Kamailio registrar configuration without the proxy:
//! SIPp talks to Kamailio directly. Each test starts its own Kamailio on a free loopback port,
//! so they run in parallel. Skipped when kamailio or sipp is missing (failed when `CI=true`).

mod common {
    pub mod external;
}

use std::time::{Duration, Instant};

use common::external::{
    require_tool, Kamailio, KamailioOptions, Sipp, SippOutcome, UA_LYNC_2013, UA_LYNC_MOBILE,
    UA_RESPONSE_GROUP, WORKFLOW_REASON,
};

const RUN: Duration = Duration::from_secs(12);

/// Kamailio, if both tools are installed.
fn setup() -> Option<Kamailio> {
    require_tool("sipp")?;
    Kamailio::try_start(KamailioOptions::default())
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn call_id_of_first_sent(out: &SippOutcome) -> String {
    let sent = out.messages_matching("message sent");
    let first = sent
        .first()
        .unwrap_or_else(|| panic!("nothing sent\n{}", out.report()));
    header(first, "Call-ID")
        .unwrap_or_else(|| panic!("no Call-ID in\n{first}"))
        .to_string()
}

#[test]
fn lync_2013_registers_directly() {
    let Some(kam) = setup() else { return };
    let started = Instant::now();
    let out = Sipp::register("alice", UA_LYNC_2013, 200)
        .remote(kam.udp_addr())
        .run_with_timeout(RUN);
    out.assert_success();

    let ok = out.received("SIP/2.0 200");
    assert_eq!(ok.len(), 1, "{}", out.report());
    let contact = header(&ok[0], "Contact").expect("Contact in the 200");
    assert!(contact.contains("expires=300"), "{contact}");
    assert!(
        kam.wait_for_log("REQ REGISTER sip:contoso.com", Duration::from_secs(2)),
        "{}",
        kam.log()
    );
    assert!(kam.log().contains(UA_LYNC_2013));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn register_expecting_another_status_fails() {
    // The status check in register.xml works both ways: Kamailio answers 200, a run that
    // expects 403 must fail (exit code 1), quickly.
    let Some(kam) = setup() else { return };
    let out = Sipp::register("bob", UA_LYNC_MOBILE, 403)
        .remote(kam.udp_addr())
        .run_with_timeout(RUN);
    assert!(!out.success, "{}", out.report());
    assert_eq!(out.exit_code, Some(1), "{}", out.report());
    assert!(
        out.error_log
            .contains("FAIL: final status 200, expected 403"),
        "{}",
        out.report()
    );
}

#[test]
fn register_over_tcp() {
    let Some(kam) = setup() else { return };
    let out = Sipp::register("carol", UA_LYNC_2013, 200)
        .remote(kam.tcp_addr())
        .tcp()
        .run_with_timeout(RUN);
    out.assert_success();
    assert!(kam.wait_for_log("src=tcp:127.0.0.1:", Duration::from_secs(2)));
}

#[test]
fn workflow_invite_reaches_kamailio_and_its_ack_is_absorbed() {
    let Some(kam) = setup() else { return };
    let out = Sipp::call("sip:helpdesk@contoso.com", UA_LYNC_2013, 486)
        .remote(kam.udp_addr())
        // stay past T1 (500 ms): an unabsorbed ACK would show as a retransmitted 486
        .linger(Duration::from_millis(900))
        .run_with_timeout(RUN);
    out.assert_success();

    let finals = out.received("SIP/2.0 486");
    assert_eq!(
        finals.len(),
        1,
        "486 retransmitted: ACK not absorbed\n{}",
        out.report()
    );
    assert!(finals[0].starts_with(&format!("SIP/2.0 486 {WORKFLOW_REASON}")));
    assert_eq!(header(&finals[0], "X-Kamailio"), Some("workflow-reached"));

    let ci = call_id_of_first_sent(&out);
    assert!(
        kam.wait_for_log(&format!("ACK-CHECK ci={ci}"), Duration::from_secs(2)),
        "the ACK never reached Kamailio\n{}",
        kam.log()
    );
    let log = kam.log();
    assert!(log.contains(&format!("WORKFLOW-REACHED ci={ci}")), "{log}");
    assert!(
        !log.contains(&format!("ACK-NO-TRANS ci={ci}")),
        "ACK not matched\n{log}"
    );
    assert!(!log.contains(&format!("STRAY-ACK ci={ci}")), "{log}");
}

#[test]
fn invite_to_unregistered_user_gets_404() {
    let Some(kam) = setup() else { return };
    let out = Sipp::call("sip:nobody@contoso.com", UA_RESPONSE_GROUP, 404)
        .remote(kam.udp_addr())
        .run_with_timeout(RUN);
    out.assert_success();
}

#[test]
fn response_group_call_follows_the_path_to_the_agent() {
    let Some(kam) = setup() else { return };

    // The agent registers with a Path pointing at itself, as the proxy would add.
    let mut agent = Sipp::agent("agent1", UA_LYNC_2013)
        .remote(kam.udp_addr())
        .wait(Duration::from_secs(8))
        .label("agent1");
    let agent_port = agent.port();
    let path = format!("sip:127.0.0.1:{agent_port};lr");
    let agent = agent.extra_header(&format!("Path: <{path}>")).spawn();
    assert!(
        kam.wait_for_log("REQ REGISTER", Duration::from_secs(5)),
        "agent did not register\n{}",
        kam.log()
    );
    // save() runs after the REQ line; give the 200 a moment to leave
    std::thread::sleep(Duration::from_millis(200));

    // The Response Group application offers the call to the agent's AOR via Kamailio.
    let rg = Sipp::call("sip:agent1@contoso.com", UA_RESPONSE_GROUP, 200)
        .remote(kam.udp_addr())
        .label("rgapp")
        .run_with_timeout(RUN);
    let agent = agent.join_timeout(RUN);
    agent.assert_success();
    rg.assert_success();

    // Kamailio turned the stored Path into the next hop and a Route header.
    let invites = agent.received("INVITE ");
    assert_eq!(invites.len(), 1, "{}", agent.report());
    assert_eq!(
        header(&invites[0], "Route"),
        Some(format!("<{path}>").as_str())
    );
    assert!(invites[0].starts_with(&format!("INVITE sip:agent1@127.0.0.1:{agent_port}")));
    assert_eq!(header(&invites[0], "User-Agent"), Some(UA_RESPONSE_GROUP));
    assert!(kam.log().contains(&format!("du={path}")), "{}", kam.log());
    // ...and the dialog completed: ACK and BYE reached the agent
    assert_eq!(agent.received("ACK ").len(), 1, "{}", agent.report());
    assert_eq!(agent.received("BYE ").len(), 1, "{}", agent.report());
}

#[test]
fn agent_expecting_no_invite_fails_when_one_arrives() {
    // agent.xml with expect_invite=0 is how a test proves the proxy kept an offer away from
    // a mobile agent; here nothing keeps it away, so the agent run must fail.
    let Some(kam) = setup() else { return };
    let agent = Sipp::agent("mobile1", UA_LYNC_MOBILE)
        .expect_invite(false)
        .wait(Duration::from_secs(3))
        .remote(kam.udp_addr())
        .spawn();
    assert!(kam.wait_for_log("REQ REGISTER", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    let rg = Sipp::call("sip:mobile1@contoso.com", UA_RESPONSE_GROUP, 200)
        .remote(kam.udp_addr())
        .run_with_timeout(RUN);
    rg.assert_success();
    let agent = agent.join_timeout(RUN);
    assert!(!agent.success, "{}", agent.report());
    assert!(
        agent.error_log.contains("FAIL: agent mobile1"),
        "{}",
        agent.report()
    );
}

#[test]
fn agent_expecting_no_invite_passes_when_none_arrives() {
    let Some(kam) = setup() else { return };
    let out = Sipp::agent("mobile2", UA_LYNC_MOBILE)
        .expect_invite(false)
        .wait(Duration::from_millis(1500))
        .remote(kam.udp_addr())
        .run_with_timeout(RUN);
    out.assert_success();
}

#[test]
fn two_kamailio_instances_side_by_side() {
    let Some(a) = setup() else { return };
    let b = Kamailio::start(KamailioOptions::default());
    assert_ne!(a.port(), b.port());
    assert!(a.options_ping(Duration::from_secs(2)));
    assert!(b.options_ping(Duration::from_secs(2)));
    let pid_b = b.pid();
    drop(b);
    // the whole process group is gone, the other instance still answers
    assert!(!std::path::Path::new(&format!("/proc/{pid_b}")).exists());
    assert!(a.options_ping(Duration::from_secs(2)));
}

#[test]
fn register_over_ipv6_loopback() {
    let Some(kam) = (|| {
        require_tool("sipp")?;
        Kamailio::try_start(KamailioOptions {
            ipv6: true,
            ..KamailioOptions::default()
        })
    })() else {
        return;
    };
    let v6 = kam.udp6_addr().expect("listening on [::1]");
    let out = Sipp::register("dave", UA_LYNC_2013, 200)
        .local_ip(v6.ip())
        .remote(v6)
        .run_with_timeout(RUN);
    out.assert_success();
    let ok = out.received("SIP/2.0 200");
    assert!(ok[0].contains("[::1]"), "{}", out.report());
}
