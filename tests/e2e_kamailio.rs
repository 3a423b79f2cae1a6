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
