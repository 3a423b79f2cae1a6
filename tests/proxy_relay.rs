//! The running proxy on ephemeral loopback ports, with plain sockets as
//! client and upstream: Via, branch and rport; Max-Forwards and 483; 420;
//! response routing and foreign responses; local rejects, retransmissions
//! and ACK absorption; CANCEL; flow tokens across instances; IPv6; TCP
//! framing and keep-alives; an unreachable upstream.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::sip_stream::header;
use common::TestProxy;

const WAIT: Duration = Duration::from_millis(1500);
const QUIET: Duration = Duration::from_millis(300);

const CONFIG: &str = r#"
[proxy]
flow_secret = "shared-secret-for-tests-0123456789"
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
agents = ["sip:agent-*@contoso.com"]
"#;

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
const MOBILE: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)";
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";

fn udp(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0").replace("::1:0", "[::1]:0")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// The next message, skipping sipadmit's own OPTIONS probes of the
/// registrar (they have their own test).
fn recv(s: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = s.recv_from(&mut buf).expect("a message within the wait");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !is_probe(&text) {
            return (text, from);
        }
    }
}

/// Whether this is one of sipadmit's OPTIONS probes of the registrar.
fn is_probe(message: &str) -> bool {
    message.contains("\r\nCall-ID: sipadmit-probe-")
}

/// Nothing but probes arrives within the quiet wait.
fn quiet(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(QUIET)).unwrap();
    let mut buf = [0u8; 65536];
    let quiet = loop {
        match s.recv_from(&mut buf) {
            Ok((n, _)) if is_probe(&String::from_utf8_lossy(&buf[..n])) => continue,
            got => break got.is_err(),
        }
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    quiet
}

struct Msg {
    method: &'static str,
    ruri: String,
    user: String,
    ua: String,
    branch: String,
    call_id: String,
    to_tag: Option<String>,
    extra: String,
    cseq: u32,
}

impl Msg {
    fn new(method: &'static str, ruri: &str, user: &str, ua: &str) -> Self {
        Self {
            method,
            ruri: ruri.into(),
            user: user.into(),
            ua: ua.into(),
            branch: format!("z9hG4bK-{user}-{method}"),
            call_id: format!("{user}-{method}@test"),
            to_tag: None,
            extra: String::new(),
            cseq: 1,
        }
    }

    fn render(&self, from: SocketAddr) -> String {
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let cseq_method = self.method;
        format!(
            "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={b};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{u}@contoso.com>;tag=f-{u}\r\nTo: <{to}>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cseq_method}\r\nContact: <sip:{u}@{from}>\r\nUser-Agent: {ua}\r\n{extra}Content-Length: 0\r\n\r\n",
            m = self.method,
            ruri = self.ruri,
            b = self.branch,
            u = self.user,
            to = if self.method == "REGISTER" { format!("sip:{}@contoso.com", self.user) } else { self.ruri.clone() },
            cid = self.call_id,
            cseq = self.cseq,
            ua = self.ua,
            extra = self.extra,
        )
    }
}

/// Answer a relayed request as the registrar would (a response through the proxy).
fn answer(upstream: &UdpSocket, request: &str, proxy: SocketAddr, status: &str, extra: &str) {
    let out = common::sip_stream::uas_response(request, status, "reg", extra);
    upstream.send_to(out.as_bytes(), proxy).unwrap();
}

fn start(upstream: &UdpSocket, extra: &str) -> TestProxy {
    let ip = upstream.local_addr().unwrap();
    TestProxy::start(
        &format!("{extra}\n{CONFIG}"),
        &ip.ip().to_string(),
        &format!("udp:{ip}"),
    )
}

#[test]
fn register_gets_via_rport_path_and_response_routing() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let register = Msg::new("REGISTER", "sip:contoso.com", "alice", LYNC).render(me);
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let (relayed, from) = recv(&upstream);
    assert_eq!(from, proxy.udp, "relayed from the listener socket");
    let vias = header(&relayed, "Via");
    assert_eq!(vias.len(), 2, "{relayed}");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {};branch=z9hG4bKsa", proxy.udp)),
        "{relayed}"
    );
    assert!(
        vias[1].ends_with(&format!(";rport={};received=127.0.0.1", me.port())),
        "rport filled, received added (RFC 3581): {}",
        vias[1]
    );
    assert_eq!(header(&relayed, "Max-Forwards"), ["69"]);
    let path = header(&relayed, "Path");
    assert_eq!(path.len(), 1);
    assert!(
        path[0].starts_with("<sip:")
            && path[0].ends_with(&format!("@{};transport=udp;lr>", proxy.udp)),
        "{relayed}"
    );
    // Everything else is byte for byte.
    for h in ["From", "To", "Call-ID", "CSeq", "Contact", "User-Agent"] {
        assert_eq!(header(&relayed, h), header(&register, h), "{h}");
    }

    // A retransmission maps to the same branch (RFC 3261 16.11).
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let (again, _) = recv(&upstream);
    assert_eq!(header(&again, "Via")[0], vias[0]);

    // The 200 comes back with the proxy's Via popped, to the client's port.
    answer(
        &upstream,
        &relayed,
        proxy.udp,
        "200 OK",
        &format!("Contact: <sip:alice@{me}>;expires=300\r\n"),
    );
    let (resp, from) = recv(&client);
    assert_eq!(from, proxy.udp);
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(header(&resp, "Via").len(), 1);
    assert!(header(&resp, "Via")[0].contains("branch=z9hG4bK-alice-REGISTER"));

    // The record of the REGISTER.
    let r = &proxy.records()[0];
    assert_eq!(r["method"], "REGISTER");
    assert_eq!(r["client"], "lync-2013");
    assert_eq!(r["role"], "none");
    assert_eq!(r["action"], "allow");
}

#[test]
fn max_forwards_zero_gets_483_and_proxy_require_gets_420() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let msg = Msg::new("OPTIONS", "sip:bob@contoso.com", "mf", LYNC)
        .render(me)
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    client.send_to(msg.as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 483 "), "{resp}");
    let mut m = Msg::new("OPTIONS", "sip:bob@contoso.com", "pr", LYNC);
    m.extra = "Proxy-Require: foo, bar\r\n".into();
    client.send_to(m.render(me).as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 420 "), "{resp}");
    assert_eq!(header(&resp, "Unsupported"), ["foo, bar"]);
    assert!(quiet(&upstream), "nothing relayed");
}

#[test]
fn foreign_responses_are_discarded_and_serving_goes_on() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let foreign = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: f\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    upstream.send_to(foreign.as_bytes(), proxy.udp).unwrap();
    client.send_to(foreign.as_bytes(), proxy.udp).unwrap();
    assert!(quiet(&client) && quiet(&upstream));
    let m = Msg::new("OPTIONS", "sip:bob@contoso.com", "next", LYNC).render(me);
    client.send_to(m.as_bytes(), proxy.udp).unwrap();
    let (relayed, _) = recv(&upstream);
    assert!(relayed.starts_with("OPTIONS sip:bob@contoso.com SIP/2.0"));
}

#[test]
fn mobile_caller_rejected_retransmission_same_answer_ack_absorbed() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let invite = Msg::new("INVITE", "sip:helpdesk@contoso.com", "mob", MOBILE);
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (first, _) = recv(&client);
    assert!(first.starts_with("SIP/2.0 403 Forbidden\r\n"), "{first}");
    assert!(header(&first, "Warning")[0].starts_with("399 sipadmit \""));
    assert!(
        header(&first, "Warning")[0].contains("Lync"),
        "names the client: {first}"
    );
    let to = header(&first, "To")[0];
    let tag = to.split("tag=").nth(1).expect("To-tag added").to_owned();
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (second, _) = recv(&client);
    assert_eq!(first, second, "a retransmission gets the same answer");
    let mut ack = Msg::new("ACK", "sip:helpdesk@contoso.com", "mob", MOBILE);
    ack.branch = invite.branch.clone();
    ack.call_id = invite.call_id.clone();
    ack.to_tag = Some(tag);
    client
        .send_to(ack.render(me).as_bytes(), proxy.udp)
        .unwrap();
    assert!(
        quiet(&upstream),
        "neither the INVITE nor its ACK reached the registrar"
    );
    assert!(quiet(&client));
    let records = proxy.records();
    assert_eq!(
        records.len(),
        1,
        "one record per transaction (the retransmission is answered again, not recorded again), none for the absorbed ACK"
    );
    assert_eq!(records[0]["status"], 403);
}

#[test]
fn monitor_mode_relays_with_the_flag_header() {
    let upstream = udp("127.0.0.1");
    let ip = upstream.local_addr().unwrap();
    let config = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"")
        + "[policy]\nflag_header = \"X-Admission\"\n";
    let proxy = TestProxy::start(&config, "127.0.0.1", &format!("udp:{ip}"));
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let invite = Msg::new("INVITE", "sip:helpdesk@contoso.com", "mob", MOBILE);
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert_eq!(
        header(&relayed, "X-Admission"),
        ["flagged; client=lync-mobile; reason=caller.unsupported; would-reject"]
    );
    assert_eq!(header(&relayed, "Record-Route").len(), 1);
    let r = &proxy.records()[0];
    assert_eq!(
        (r["action"].as_str(), r["would_reject"].as_bool()),
        (Some("flag"), Some(true))
    );
    assert_eq!(r["mode"], "monitor");
}

#[test]
fn cancel_of_a_relayed_invite_is_relayed_with_the_same_branch() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let invite = Msg::new("INVITE", "sip:helpdesk@contoso.com", "desk", LYNC);
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed_invite, _) = recv(&upstream);
    let mut cancel = Msg::new("CANCEL", "sip:helpdesk@contoso.com", "desk", LYNC);
    cancel.branch = invite.branch.clone();
    cancel.call_id = invite.call_id.clone();
    client
        .send_to(cancel.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed_cancel, _) = recv(&upstream);
    // The ACK of a non-2xx final response (To tag from the response) gets the
    // INVITE's branch too (RFC 3261 17.1.1.3).
    let mut ack = Msg::new("ACK", "sip:helpdesk@contoso.com", "desk", LYNC);
    ack.branch = invite.branch.clone();
    ack.call_id = invite.call_id.clone();
    ack.to_tag = Some("upstream-486".into());
    client
        .send_to(ack.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed_ack, _) = recv(&upstream);
    assert!(relayed_ack.starts_with("ACK "));
    let branch_of = |m: &str| {
        header(m, "Via")[0]
            .split(";sipadmit-flow")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(branch_of(&relayed_ack), branch_of(&relayed_invite));
    assert!(relayed_cancel.starts_with("CANCEL "));
    assert_eq!(
        header(&relayed_cancel, "Via")[0]
            .split(";sipadmit-flow")
            .next(),
        header(&relayed_invite, "Via")[0]
            .split(";sipadmit-flow")
            .next()
    );
}

/// REGISTER an agent through `proxy`, answered 200 by `upstream`; returns its Path URI.
fn register_agent(
    proxy: &TestProxy,
    upstream: &UdpSocket,
    agent: &UdpSocket,
    user: &str,
    ua: &str,
) -> String {
    let me = agent.local_addr().unwrap();
    agent
        .send_to(
            Msg::new("REGISTER", "sip:contoso.com", user, ua)
                .render(me)
                .as_bytes(),
            proxy.udp,
        )
        .unwrap();
    let (relayed, _) = recv(upstream);
    answer(
        upstream,
        &relayed,
        proxy.udp,
        "200 OK",
        &format!("Contact: <sip:{user}@{me}>;expires=300\r\n"),
    );
    let (ok, _) = recv(agent);
    assert!(ok.starts_with("SIP/2.0 200"));
    header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned()
}

/// The registrar offers a Response Group call to `user` along `route`.
fn offer(
    upstream: &UdpSocket,
    to: SocketAddr,
    user: &str,
    contact: SocketAddr,
    route: Option<&str>,
) {
    let route = route
        .map(|r| format!("Route: <{r}>\r\n"))
        .unwrap_or_default();
    let me = upstream.local_addr().unwrap();
    // Routed by Path or by registration: two transactions.
    let by = if route.is_empty() { "reg" } else { "path" };
    let invite = format!(
        "INVITE sip:{user}@{contact} SIP/2.0\r\n{route}Via: SIP/2.0/UDP {me};branch=z9hG4bK-kam-{user}-{by}\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-rgs\r\nMax-Forwards: 69\r\nFrom: <sip:helpdesk@contoso.com>;tag=rgs\r\nTo: <sip:{user}@contoso.com>\r\nCall-ID: offer-{user}\r\nCSeq: 1 INVITE\r\nContact: <sip:rgs@127.0.0.1:5071>\r\nUser-Agent: {RGS}\r\nContent-Length: 0\r\n\r\n"
    );
    upstream.send_to(invite.as_bytes(), to).unwrap();
}

#[test]
fn agent_offers_follow_the_flow_token_and_mobile_forks_get_480() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let desk = udp("127.0.0.1");
    let mobile = udp("127.0.0.1");
    let desk_path = register_agent(&proxy, &upstream, &desk, "agent-desk", LYNC);
    let mobile_path = register_agent(&proxy, &upstream, &mobile, "agent-mob", MOBILE);

    offer(
        &upstream,
        proxy.udp,
        "agent-desk",
        desk.local_addr().unwrap(),
        Some(&desk_path),
    );
    let (invite, _) = recv(&desk);
    assert!(invite.starts_with("INVITE sip:agent-desk@"), "{invite}");
    assert!(header(&invite, "Route").is_empty(), "own Route consumed");
    assert_eq!(header(&invite, "Record-Route").len(), 1);
    assert_eq!(header(&invite, "Via").len(), 3);

    offer(
        &upstream,
        proxy.udp,
        "agent-mob",
        mobile.local_addr().unwrap(),
        Some(&mobile_path),
    );
    let (resp, _) = recv(&upstream);
    assert!(
        resp.starts_with("SIP/2.0 480 Temporarily Unavailable\r\n"),
        "{resp}"
    );
    assert!(quiet(&mobile), "the offer never reached the mobile agent");

    // Without the Path route, the registration table answers the same.
    offer(
        &upstream,
        proxy.udp,
        "agent-mob",
        mobile.local_addr().unwrap(),
        None,
    );
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 480 "), "{resp}");
    let records = proxy.records();
    let rules: Vec<&str> = records
        .iter()
        .filter_map(|r| r["client_rule"].as_str())
        .collect();
    assert!(rules.contains(&"registered:lync-mobile"), "{rules:?}");
}

#[test]
fn flow_tokens_work_across_instances_and_tampering_is_refused() {
    let upstream = udp("127.0.0.1");
    let a = start(&upstream, "");
    let b = start(&upstream, "");
    let mobile = udp("127.0.0.1");
    let desk = udp("127.0.0.1");
    let mobile_path = register_agent(&a, &upstream, &mobile, "agent-mob", MOBILE);
    let desk_path = register_agent(&a, &upstream, &desk, "agent-desk", LYNC);
    // Instance B, sharing the secret, decides from A's token alone.
    offer(
        &upstream,
        b.udp,
        "agent-mob",
        mobile.local_addr().unwrap(),
        Some(&mobile_path),
    );
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 480 "), "{resp}");
    offer(
        &upstream,
        b.udp,
        "agent-desk",
        desk.local_addr().unwrap(),
        Some(&desk_path),
    );
    let (invite, _) = recv(&desk);
    assert!(invite.starts_with("INVITE "));
    // A tampered token in a Route addressed to this proxy is refused
    // (RFC 5626 5.3), and the agent never sees the offer.
    let tampered = mobile_path
        .replacen("sip:", "sip:00", 1)
        .replace(&a.udp.to_string(), &b.udp.to_string());
    offer(
        &upstream,
        b.udp,
        "agent-mob",
        mobile.local_addr().unwrap(),
        Some(&tampered),
    );
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 403 Invalid Flow Token"), "{resp}");
    assert!(quiet(&mobile));
}

#[test]
fn ipv6_loopback_relays() {
    let Ok(upstream) = UdpSocket::bind("[::1]:0") else {
        eprintln!("skipping: no IPv6 loopback");
        return;
    };
    upstream.set_read_timeout(Some(WAIT)).unwrap();
    let proxy = start(&upstream, "");
    let client = udp("::1");
    let me = client.local_addr().unwrap();
    client
        .send_to(
            Msg::new("REGISTER", "sip:contoso.com", "v6", LYNC)
                .render(me)
                .as_bytes(),
            proxy.udp,
        )
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert!(
        header(&relayed, "Via")[0].starts_with(&format!("SIP/2.0/UDP {}", proxy.udp)),
        "{relayed}"
    );
    assert!(proxy.udp.is_ipv6());
    answer(&upstream, &relayed, proxy.udp, "200 OK", "");
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 200"));
}

#[test]
fn tcp_framing_keepalives_and_responses_on_the_same_connection() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let mut conn = TcpStream::connect(proxy.tcp).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let me = conn.local_addr().unwrap();
    // CRLFCRLF ping → CRLF pong (RFC 5626 3.5.1).
    conn.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    conn.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // Two messages in one write, the second split across two writes.
    let one = Msg::new("OPTIONS", "sip:one@contoso.com", "t1", LYNC)
        .render(me)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let two = Msg::new("REGISTER", "sip:contoso.com", "t2", LYNC)
        .render(me)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let three = Msg::new("OPTIONS", "sip:three@contoso.com", "t3", LYNC)
        .render(me)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    conn.write_all(format!("{one}{two}").as_bytes()).unwrap();
    conn.write_all(&three.as_bytes()[..40]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    conn.write_all(&three.as_bytes()[40..]).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv(&upstream).0);
    }
    assert!(got[0].starts_with("OPTIONS sip:one@"));
    assert!(got[1].starts_with("REGISTER "));
    assert!(got[2].starts_with("OPTIONS sip:three@"));
    assert!(header(&got[1], "Path")[0].contains(";transport=udp;lr>"));
    // The response goes back on the client's connection.
    answer(&upstream, &got[1], proxy.udp, "200 OK", "");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("SIP/2.0 200 OK"), "{resp}");
    assert_eq!(header(&resp, "Via").len(), 1);
}

#[test]
fn unreachable_tcp_upstream_gets_503_with_retry_after() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &format!("tcp:{closed}"));
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    client
        .send_to(
            Msg::new("REGISTER", "sip:contoso.com", "u", LYNC)
                .render(me)
                .as_bytes(),
            proxy.udp,
        )
        .unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 503 "), "{resp}");
    assert_eq!(header(&resp, "Retry-After"), ["30"]);
    // Nothing reached the registrar, so nothing counts as relayed.
    let metrics = proxy.stop();
    use sipadmit::observe::metrics::MessageKind;
    use sipadmit::transport::Transport;
    assert_eq!(metrics.relayed(Transport::Tcp, MessageKind::Request), 0);
}

#[test]
fn in_dialog_requests_follow_the_record_route_direction() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let caller = udp("127.0.0.1");
    let me = caller.local_addr().unwrap();
    let invite = Msg::new("INVITE", "sip:bob@contoso.com", "caller", LYNC);
    caller
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed, _) = recv(&upstream);
    let rr = header(&relayed, "Record-Route")[0].to_owned();
    assert!(rr.contains(";ftag=f-caller;sipadmit-dlg="), "{rr}");
    // Record-Route sits after the Via lines, not between them.
    let lines: Vec<&str> = relayed.split("\r\n").collect();
    let rr_at = lines
        .iter()
        .position(|l| l.starts_with("Record-Route"))
        .unwrap();
    let last_via = lines.iter().rposition(|l| l.starts_with("Via")).unwrap();
    assert!(rr_at > last_via, "{relayed}");
    let route = rr.trim_matches(|c| c == '<' || c == '>');

    // The callee hangs up: its BYE (From = callee) comes from the registrar
    // side with the route set and goes to the caller's flow.
    let bye_from_callee = format!(
        "BYE sip:caller@{me} SIP/2.0\r\nRoute: <{route}>\r\nVia: SIP/2.0/UDP {up};branch=z9hG4bK-bye1\r\nMax-Forwards: 70\r\nFrom: <sip:bob@contoso.com>;tag=callee\r\nTo: <sip:caller@contoso.com>;tag=f-caller\r\nCall-ID: {cid}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        up = upstream.local_addr().unwrap(),
        cid = invite.call_id
    );
    upstream
        .send_to(bye_from_callee.as_bytes(), proxy.udp)
        .unwrap();
    let (bye, _) = recv(&caller);
    assert!(bye.starts_with("BYE sip:caller@"), "{bye}");

    // The caller hangs up from a new port (NAT rebinding): From = initiator,
    // so it goes upstream, not back to the old flow.
    let moved = udp("127.0.0.1");
    let bye_from_caller = format!(
        "BYE sip:bob@contoso.com SIP/2.0\r\nRoute: <{route}>\r\nVia: SIP/2.0/UDP {m};branch=z9hG4bK-bye2\r\nMax-Forwards: 70\r\nFrom: <sip:caller@contoso.com>;tag=f-caller\r\nTo: <sip:bob@contoso.com>;tag=callee\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        m = moved.local_addr().unwrap(),
        cid = invite.call_id
    );
    moved
        .send_to(bye_from_caller.as_bytes(), proxy.udp)
        .unwrap();
    let (up_bye, _) = recv(&upstream);
    assert!(up_bye.starts_with("BYE sip:bob@contoso.com"), "{up_bye}");
    assert!(header(&up_bye, "Route").is_empty(), "own Route consumed");
    assert!(quiet(&caller));
}

#[test]
fn hostile_responses_and_oversized_datagrams_do_not_hurt() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "[limits]\nmax_message_bytes = 2048\n");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    // A registrar answer granting an absurd expiry must not crash the table.
    let register = Msg::new("REGISTER", "sip:contoso.com", "huge", LYNC).render(me);
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    let (relayed, _) = recv(&upstream);
    answer(
        &upstream,
        &relayed,
        proxy.udp,
        "200 OK",
        &format!("Contact: <sip:huge@{me}>;expires=18446744073709551615\r\n"),
    );
    let (ok, _) = recv(&client);
    assert!(ok.starts_with("SIP/2.0 200"));
    // A response whose only Via is ours has nowhere to go.
    let only_ours = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKsa0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        proxy.udp
    );
    client.send_to(only_ours.as_bytes(), proxy.udp).unwrap();
    assert!(quiet(&upstream));
    // Over limits.max_message_bytes: 513.
    let mut big = Msg::new("OPTIONS", "sip:bob@contoso.com", "big", LYNC);
    big.extra = format!("X-Pad: {}\r\n", "a".repeat(3000));
    client
        .send_to(big.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 513 "), "{resp}");
    assert!(quiet(&upstream));
    // Still serving.
    client.send_to(register.as_bytes(), proxy.udp).unwrap();
    assert!(recv(&upstream).0.starts_with("REGISTER "));
}

#[test]
fn a_request_coming_round_again_is_a_loop() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let invite = Msg::new("INVITE", "sip:bob@contoso.com", "looper", LYNC);
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed, _) = recv(&upstream);
    // The registrar routes it straight back: its own Via on top of ours.
    let back = relayed.replacen(
        "Via: ",
        &format!(
            "Via: SIP/2.0/UDP {};branch=z9hG4bK-reg-1\r\nVia: ",
            upstream.local_addr().unwrap()
        ),
        1,
    );
    upstream.send_to(back.as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 482 Loop Detected"), "{resp}");
}

/// Read one SIP message (headers + Content-Length body) from a stream,
/// skipping sipadmit's own OPTIONS probes of a TCP registrar.
fn read_message(conn: &mut TcpStream) -> String {
    loop {
        let message = read_any_message(conn);
        if !is_probe(&message) {
            return message;
        }
    }
}

/// Read one SIP message (headers + Content-Length body) from a stream.
fn read_any_message(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte)
            .expect("a message within the wait");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = header(&head, "Content-Length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[test]
fn tcp_upstream_carries_requests_responses_and_registrar_requests() {
    let registrar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reg_addr = registrar.local_addr().unwrap();
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &format!("tcp:{reg_addr}"));
    let agent = udp("127.0.0.1");
    let me = agent.local_addr().unwrap();
    agent
        .send_to(
            Msg::new("REGISTER", "sip:contoso.com", "agent-mob", MOBILE)
                .render(me)
                .as_bytes(),
            proxy.udp,
        )
        .unwrap();
    let (mut up, _) = registrar.accept().unwrap();
    up.set_read_timeout(Some(WAIT)).unwrap();
    let relayed = read_message(&mut up);
    assert!(relayed.starts_with("REGISTER "), "{relayed}");
    assert!(
        header(&relayed, "Via")[0].starts_with("SIP/2.0/TCP "),
        "{relayed}"
    );
    let path = header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    assert!(path.contains(";transport=tcp;lr"), "{path}");
    // The 200 comes back on the same connection and reaches the agent over UDP.
    let mut ok = String::from("SIP/2.0 200 OK\r\n");
    for line in relayed.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
            ok.push_str(line);
            ok.push_str("\r\n");
        }
    }
    ok.push_str(&format!(
        "Contact: <sip:agent-mob@{me}>;expires=300\r\nContent-Length: 0\r\n\r\n"
    ));
    up.write_all(ok.as_bytes()).unwrap();
    assert!(recv(&agent).0.starts_with("SIP/2.0 200"));
    // A Response Group offer from the registrar on that connection is decided
    // from the Path token: the mobile agent's fork is answered 480.
    let offer = format!(
        "INVITE sip:agent-mob@{me} SIP/2.0\r\nRoute: <{path}>\r\nVia: SIP/2.0/TCP {reg_addr};branch=z9hG4bK-tcp-offer\r\nMax-Forwards: 69\r\nFrom: <sip:helpdesk@contoso.com>;tag=rgs\r\nTo: <sip:agent-mob@contoso.com>\r\nCall-ID: tcp-offer\r\nCSeq: 1 INVITE\r\nUser-Agent: {RGS}\r\nContent-Length: 0\r\n\r\n"
    );
    up.write_all(offer.as_bytes()).unwrap();
    let resp = read_message(&mut up);
    assert!(resp.starts_with("SIP/2.0 480 "), "{resp}");
    assert!(quiet(&agent));
}

/// A TCP or TLS registrar sends its own requests on connections it opens
/// from ports it picks, which count as a client's: its host is still never
/// rate-limited or banned, even with tight limits and nothing trusted (a
/// trial saw Kamailio's requests answered 503, then its IP banned).
#[test]
fn a_tcp_registrars_own_connections_are_never_limited_or_banned() {
    let registrar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reg_addr = registrar.local_addr().unwrap();
    let config = format!(
        "{CONFIG}[rate_limit]\ntrusted = []\nrequests_per_second = 5\nburst = 10\nban_secs = 60\n"
    );
    let proxy = TestProxy::start(&config, "127.0.0.1", &format!("tcp:{reg_addr}"));
    let mut own = TcpStream::connect(proxy.tcp).unwrap();
    let from = own.local_addr().unwrap();
    for n in 0..40 {
        let message = format!(
            "MESSAGE sip:alice@contoso.com SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch=z9hG4bK-own-{n}\r\nMax-Forwards: 70\r\nFrom: <sip:helpdesk@contoso.com>;tag=reg\r\nTo: <sip:alice@contoso.com>\r\nCall-ID: own-{n}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        own.write_all(message.as_bytes()).unwrap();
    }
    let (mut link, _) = registrar.accept().unwrap();
    link.set_read_timeout(Some(WAIT)).unwrap();
    for n in 0..40 {
        let relayed = read_message(&mut link);
        assert_eq!(
            header(&relayed, "Call-ID"),
            [format!("own-{n}")],
            "{relayed}"
        );
    }
    own.set_read_timeout(Some(QUIET)).unwrap();
    assert_eq!(
        try_read_message(&mut own),
        None,
        "nothing answered on the registrar's own connection"
    );
}

#[test]
fn a_gone_tcp_flow_gets_430() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let mut conn = TcpStream::connect(proxy.tcp).unwrap();
    let me = conn.local_addr().unwrap();
    let register = Msg::new("REGISTER", "sip:contoso.com", "agent-desk", LYNC)
        .render(me)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    conn.write_all(register.as_bytes()).unwrap();
    let (relayed, _) = recv(&upstream);
    let path = header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    drop(conn);
    std::thread::sleep(Duration::from_millis(200));
    offer(&upstream, proxy.udp, "agent-desk", me, Some(&path));
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 430 Flow Failed"), "{resp}");
}

#[test]
fn a_dialog_between_two_local_clients_spirals_without_a_false_loop() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let alice = udp("127.0.0.1");
    let bob = udp("127.0.0.1");
    let bob_path = register_agent(&proxy, &upstream, &bob, "bob", LYNC);
    let a = alice.local_addr().unwrap();
    let b = bob.local_addr().unwrap();
    let up = upstream.local_addr().unwrap();
    // Alice calls Bob: client -> proxy -> registrar ...
    let invite = Msg::new("INVITE", "sip:bob@contoso.com", "alice", LYNC);
    alice
        .send_to(invite.render(a).as_bytes(), proxy.udp)
        .unwrap();
    let (first, _) = recv(&upstream);
    let rr1 = header(&first, "Record-Route")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    // ... -> proxy -> Bob along Bob's Path.
    let second = first
        .replacen(
            "INVITE sip:bob@contoso.com",
            &format!("INVITE sip:bob@{b}"),
            1,
        )
        .replacen(
            "Via: ",
            &format!(
                "Route: <{bob_path}>\r\nVia: SIP/2.0/UDP {up};branch=z9hG4bK-reg-inv\r\nVia: "
            ),
            1,
        );
    upstream.send_to(second.as_bytes(), proxy.udp).unwrap();
    let (at_bob, _) = recv(&bob);
    assert!(at_bob.starts_with("INVITE "), "{at_bob}");
    let rrs = header(&at_bob, "Record-Route");
    assert_eq!(rrs.len(), 2, "{at_bob}");
    let rr2 = rrs[0].trim_matches(|c| c == '<' || c == '>').to_owned();
    // Alice hangs up with the whole route set: RR1 (hers), then RR2 (Bob's).
    let bye = format!(
        "BYE sip:bob@{b} SIP/2.0\r\nRoute: <{rr1}>, <{rr2}>\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-alice-bye\r\nMax-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=f-alice\r\nTo: <sip:bob@contoso.com>;tag=bob-tag\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        cid = invite.call_id
    );
    alice.send_to(bye.as_bytes(), proxy.udp).unwrap();
    let (bye1, _) = recv(&upstream);
    assert!(bye1.starts_with("BYE "), "{bye1}");
    // The registrar sends it back along the remaining route: a spiral, not a loop.
    let bye2 = bye1.replacen(
        "Via: ",
        &format!("Via: SIP/2.0/UDP {up};branch=z9hG4bK-reg-bye\r\nVia: "),
        1,
    );
    upstream.send_to(bye2.as_bytes(), proxy.udp).unwrap();
    let (at_bob, _) = recv(&bob);
    assert!(at_bob.starts_with("BYE "), "{at_bob}");
}

#[test]
fn a_plain_outbound_proxy_route_is_consumed_and_2xx_acks_get_a_new_branch() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let mut invite = Msg::new("INVITE", "sip:bob@contoso.com", "preload", LYNC);
    invite.extra = format!("Route: <sip:{};lr>\r\n", proxy.udp);
    client
        .send_to(invite.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert!(relayed.starts_with("INVITE "), "{relayed}");
    assert!(header(&relayed, "Route").is_empty(), "{relayed}");
    // The ACK of a 2xx is a new transaction (new client branch): new branch.
    let mut ack = Msg::new("ACK", "sip:bob@contoso.com", "preload", LYNC);
    ack.branch = "z9hG4bK-new-ack-branch".into();
    ack.call_id = invite.call_id.clone();
    ack.to_tag = Some("callee".into());
    client
        .send_to(ack.render(me).as_bytes(), proxy.udp)
        .unwrap();
    let (relayed_ack, _) = recv(&upstream);
    assert_ne!(header(&relayed_ack, "Via")[0], header(&relayed, "Via")[0]);
    // Tags are tokens: one that would break our Record-Route is refused.
    let mut bad = Msg::new("INVITE", "sip:bob@contoso.com", "badtag", LYNC);
    bad.branch = "z9hG4bK-bad".into();
    let text = bad.render(me).replace(";tag=f-badtag", ";tag=x>,<sip:evil");
    client.send_to(text.as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 400 "), "{resp}");
}

/// Read one message from a stream, or `None` when nothing comes within `QUIET`.
fn try_read_message(conn: &mut TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(QUIET)).unwrap();
    let mut first = [0u8; 1];
    let got = conn.read(&mut first);
    conn.set_read_timeout(Some(WAIT)).unwrap();
    match got {
        Ok(1) => {
            let mut rest = read_any_message(conn);
            rest.insert(0, first[0] as char);
            if is_probe(&rest) {
                return try_read_message(conn);
            }
            Some(rest)
        }
        _ => None,
    }
}

#[test]
fn a_tcp_flow_of_another_instance_gets_430_and_reaches_no_other_client() {
    // Two instances sharing flow_secret, as a pool runs them.
    let upstream = udp("127.0.0.1");
    let a = start(&upstream, "");
    let b = start(&upstream, "");
    // X registers over TCP through A: A's first connection.
    let mut x = TcpStream::connect(a.tcp).unwrap();
    x.set_read_timeout(Some(WAIT)).unwrap();
    let x_addr = x.local_addr().unwrap();
    let register = Msg::new("REGISTER", "sip:contoso.com", "agent-x", LYNC)
        .render(x_addr)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    x.write_all(register.as_bytes()).unwrap();
    let (relayed, _) = recv(&upstream);
    let path = header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    // Y opens B's first TCP connection (a keep-alive round trip proves B
    // has it).
    let mut y = TcpStream::connect(b.tcp).unwrap();
    y.set_read_timeout(Some(WAIT)).unwrap();
    y.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    y.read_exact(&mut pong).unwrap();
    // The registrar offers a call to X along X's Path, through B.
    offer(&upstream, b.udp, "agent-x", x_addr, Some(&path));
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 430 Flow Failed\r\n"), "{resp}");
    assert_eq!(try_read_message(&mut y), None, "nothing written to Y");
    let records = b.records();
    let r = records
        .iter()
        .find(|r| r["status"] == 430)
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(
        (r["action"].as_str(), r["rule"].as_str()),
        (Some("reject"), Some("proxy.flow-failed"))
    );
    // Through A, the instance holding X's connection, the offer reaches X.
    offer(&upstream, a.udp, "agent-x", x_addr, Some(&path));
    let invite = read_message(&mut x);
    assert!(invite.starts_with("INVITE sip:agent-x@"), "{invite}");
}

#[test]
fn every_local_answer_is_recorded() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    // A registrar request for a target nobody registered: 404.
    let not_found = "INVITE sip:nobody@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-nf\r\nMax-Forwards: 69\r\nFrom: <sip:helpdesk@contoso.com>;tag=rgs\r\nTo: <sip:nobody@contoso.com>\r\nCall-ID: not-found\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    upstream.send_to(not_found.as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&upstream);
    assert!(resp.starts_with("SIP/2.0 404 Not Found\r\n"), "{resp}");
    // Max-Forwards 0 and Proxy-Require from a client: 483, 420.
    let msg = Msg::new("OPTIONS", "sip:bob@contoso.com", "mf", LYNC)
        .render(me)
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    client.send_to(msg.as_bytes(), proxy.udp).unwrap();
    assert!(recv(&client).0.starts_with("SIP/2.0 483 "));
    let mut m = Msg::new("OPTIONS", "sip:bob@contoso.com", "pr", LYNC);
    m.extra = "Proxy-Require: foo\r\n".into();
    client.send_to(m.render(me).as_bytes(), proxy.udp).unwrap();
    assert!(recv(&client).0.starts_with("SIP/2.0 420 "));

    let records = proxy.records();
    let by_status = |status: u16| {
        records
            .iter()
            .find(|r| r["status"] == status)
            .unwrap_or_else(|| panic!("no record with status {status}: {records:#?}"))
    };
    for (status, rule, call_id) in [
        (404, "proxy.not-found", "not-found"),
        (483, "proxy.too-many-hops", "mf-OPTIONS@test"),
        (420, "proxy.bad-extension", "pr-OPTIONS@test"),
    ] {
        let r = by_status(status);
        assert_eq!(r["action"], "reject", "{r}");
        assert_eq!(r["rule"], rule, "{r}");
        assert_eq!(r["call_id"], call_id, "{r}");
        assert_eq!(r["generation"], 1, "{r}");
    }
}

#[test]
fn local_answers_fill_rport_and_add_received() {
    let upstream = udp("127.0.0.1");
    let proxy = start(&upstream, "");
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let msg = Msg::new("OPTIONS", "sip:bob@contoso.com", "rp", LYNC)
        .render(me)
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    client.send_to(msg.as_bytes(), proxy.udp).unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 483 "), "{resp}");
    assert_eq!(
        header(&resp, "Via"),
        [format!(
            "SIP/2.0/UDP {me};branch=z9hG4bK-rp-OPTIONS;rport={};received=127.0.0.1",
            me.port()
        )],
        "RFC 3581 section 4"
    );
}

/// A proxy in monitor mode (flags instead of rejects) relaying to `upstream`.
fn start_monitoring(upstream: &UdpSocket) -> TestProxy {
    let ip = upstream.local_addr().unwrap();
    let config = CONFIG.replace("[proxy]", "[proxy]\nmode = \"monitor\"");
    TestProxy::start(&config, "127.0.0.1", &format!("udp:{ip}"))
}

#[test]
fn a_forged_flag_header_is_removed() {
    let upstream = udp("127.0.0.1");
    let proxy = start_monitoring(&upstream);
    let client = udp("127.0.0.1");
    let mut forged = Msg::new("OPTIONS", "sip:bob@contoso.com", "forger", LYNC);
    forged.extra = "X-Sipadmit: flagged; client=lync-2013; reason=supported\r\n".into();
    client
        .send_to(
            forged.render(client.local_addr().unwrap()).as_bytes(),
            proxy.udp,
        )
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert!(header(&relayed, "X-Sipadmit").is_empty(), "{relayed}");
}

#[test]
fn an_agent_offer_is_flagged_once_and_only_on_the_leg_toward_the_agent() {
    let upstream = udp("127.0.0.1");
    let proxy = start_monitoring(&upstream);
    let desk = udp("127.0.0.1");
    let mobile = udp("127.0.0.1");
    let desk_path = register_agent(&proxy, &upstream, &desk, "agent-desk", LYNC);
    let mobile_path = register_agent(&proxy, &upstream, &mobile, "agent-mob", MOBILE);
    // The application's offer on its way to the registrar: the target is
    // not known there, so no role and no flag.
    let rgs = udp("127.0.0.1");
    for (user, agent, path) in [
        ("agent-desk", &desk, &desk_path),
        ("agent-mob", &mobile, &mobile_path),
    ] {
        let mut invite = Msg::new("INVITE", &format!("sip:{user}@contoso.com"), "rgs", RGS);
        invite.call_id = format!("rg-offer-{user}");
        invite.branch = format!("z9hG4bK-rg-{user}");
        rgs.send_to(
            invite.render(rgs.local_addr().unwrap()).as_bytes(),
            proxy.udp,
        )
        .unwrap();
        let (leg1, _) = recv(&upstream);
        assert!(header(&leg1, "X-Sipadmit").is_empty(), "{leg1}");
        // The registrar sends it back along the agent's Path.
        let up = upstream.local_addr().unwrap();
        let leg2 = leg1
            .replacen(
                &format!("INVITE sip:{user}@contoso.com"),
                &format!("INVITE sip:{user}@{}", agent.local_addr().unwrap()),
                1,
            )
            .replacen(
                "Via: ",
                &format!(
                    "Route: <{path}>\r\nVia: SIP/2.0/UDP {up};branch=z9hG4bK-reg-{user}\r\nVia: "
                ),
                1,
            );
        upstream.send_to(leg2.as_bytes(), proxy.udp).unwrap();
        let (at_agent, _) = recv(agent);
        let flags = header(&at_agent, "X-Sipadmit");
        if user == "agent-desk" {
            assert!(
                flags.is_empty(),
                "an allowed offer carries no flag: {at_agent}"
            );
        } else {
            assert_eq!(
                flags,
                ["flagged; client=lync-mobile; reason=agent-offer.unsupported; would-reject"],
                "exactly one flag: {at_agent}"
            );
        }
    }
    let records = proxy.records();
    let leg1 = records
        .iter()
        .find(|r| r["call_id"] == "rg-offer-agent-mob" && r["role"] == "none")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(leg1["client"], "response-group-service");
    assert_eq!(leg1["action"], "allow");
}

/// A TCP listener on 127.0.0.1 that connects hang on: its accept queue
/// (backlog 0) is full with one connection that is never accepted, so the
/// kernel drops further SYNs. Returns it with the connection filling it;
/// checks that a connect to it really hangs.
fn stalled_listener() -> (std::net::TcpListener, TcpStream) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let listener = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("127.0.0.1:0".parse().unwrap())?;
            socket.listen(0)?.into_std()
        })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(
        probe
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        "precondition: a connect to a full accept queue hangs on this machine ({probe:?})"
    );
    (listener, filler)
}

#[test]
fn a_stalled_upstream_connect_blocks_no_one() {
    // The TCP registrar takes no connections: the link's connect hangs
    // until its timeout (2 s) ...
    let (registrar, _filler) = stalled_listener();
    let reg_addr = registrar.local_addr().unwrap();
    let proxy = TestProxy::start(CONFIG, "127.0.0.1", &format!("tcp:{reg_addr}"));
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let register = Msg::new("REGISTER", "sip:contoso.com", "stalled", LYNC);
    client
        .send_to(register.render(me).as_bytes(), proxy.udp)
        .unwrap();
    // ... and meanwhile the dispatcher goes on: every request it answers
    // itself is answered before the REGISTER's 503 (on main, dispatch
    // awaited the connect: the 503 came first).
    for i in 0..20 {
        let mut options = Msg::new("OPTIONS", "sip:bob@contoso.com", "busy", LYNC);
        options.branch = format!("z9hG4bK-busy-{i}");
        options.call_id = format!("busy-{i}@test");
        let text = options
            .render(me)
            .replace("Max-Forwards: 70", "Max-Forwards: 0");
        client.send_to(text.as_bytes(), proxy.udp).unwrap();
        let (resp, _) = recv(&client);
        assert!(
            resp.starts_with("SIP/2.0 483 "),
            "answered while the upstream connect hangs: {resp}"
        );
        assert_eq!(header(&resp, "Call-ID"), [options.call_id.as_str()]);
    }
    // The connect times out: the REGISTER is answered 503 with Retry-After.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (resp, _) = recv(&client);
    assert!(resp.starts_with("SIP/2.0 503 "), "{resp}");
    assert_eq!(header(&resp, "Call-ID"), [register.call_id.as_str()]);
    assert_eq!(header(&resp, "Retry-After"), ["30"]);
    let records = proxy.records();
    let r = records
        .iter()
        .find(|r| r["status"] == 503)
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(r["rule"], "proxy.upstream-unavailable");
    assert_eq!(r["method"], "REGISTER");
    // Not delivered, and answered: a send failure, not a drop.
    let metrics = proxy.stop();
    use sipadmit::observe::metrics::DropReason;
    assert_eq!(metrics.drops(DropReason::SendFailed), 0);
    // The REGISTER, and the registrar's OPTIONS probes queued beside it.
    assert!(metrics.upstream_send_failures(sipadmit::transport::Transport::Tcp) >= 1);
}

/// An INVITE from a registrar node at `from`, for the client at `target`,
/// without a Route: where it goes depends on whether `from` is the registrar.
fn registrar_invite(from: SocketAddr, target: SocketAddr, via: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:agent-x@{target} SIP/2.0\r\nVia: SIP/2.0/{via} {from};branch=z9hG4bK-{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:helpdesk@contoso.com>;tag=node\r\nTo: <sip:agent-x@contoso.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nUser-Agent: {RGS}\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn upstream_sources_networks_make_their_requests_registrar_requests() {
    let upstream = udp("127.0.0.1");
    let agent = udp("127.0.0.1");
    let target = agent.local_addr().unwrap();
    // Another node of the registrar's pool, on another port.
    let node = udp("127.0.0.1");
    let from = node.local_addr().unwrap();

    // By default only the upstream's IP:PORT is the registrar: the node is
    // a client, and its request goes to the registrar.
    let plain = start(&upstream, "");
    let invite = registrar_invite(from, target, "UDP", "as-client");
    node.send_to(invite.as_bytes(), plain.udp).unwrap();
    assert!(recv(&upstream).0.starts_with("INVITE sip:agent-x@"));
    assert!(quiet(&agent));

    // With the node's network in proxy.upstream_sources its requests are
    // the registrar's: routed by their Request-URI, to the agent.
    let up = upstream.local_addr().unwrap();
    let pooled = TestProxy::start(
        &CONFIG.replace(
            "[proxy]\n",
            "[proxy]\nupstream_sources = [\"127.0.0.0/8\"]\n",
        ),
        "127.0.0.1",
        &format!("udp:{up}"),
    );
    let invite = registrar_invite(from, target, "UDP", "as-registrar-udp");
    node.send_to(invite.as_bytes(), pooled.udp).unwrap();
    let (at_agent, _) = recv(&agent);
    assert!(at_agent.starts_with("INVITE sip:agent-x@"), "{at_agent}");
    assert_eq!(header(&at_agent, "Call-ID"), ["as-registrar-udp"]);
    // The agent's answers go back to the node that sent the INVITE, not to
    // `upstream` (RFC 3261 18.2.2): a Lync pool's Front Ends each send.
    for status in ["180 Ringing", "486 Busy Here"] {
        let answer = common::sip_stream::uas_response(&at_agent, status, "agent", "");
        agent.send_to(answer.as_bytes(), pooled.udp).unwrap();
        let (at_node, _) = recv(&node);
        assert!(
            at_node.starts_with(&format!("SIP/2.0 {status}\r\n")),
            "{at_node}"
        );
        assert_eq!(header(&at_node, "Via").len(), 1, "sipadmit's Via removed");
    }
    // The same over a TCP connection from that network: the answers come
    // back on that connection.
    let mut conn = TcpStream::connect(pooled.tcp).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let from_tcp = conn.local_addr().unwrap();
    let invite = registrar_invite(from_tcp, target, "TCP", "as-registrar-tcp");
    conn.write_all(invite.as_bytes()).unwrap();
    let (at_agent, _) = recv(&agent);
    assert_eq!(header(&at_agent, "Call-ID"), ["as-registrar-tcp"]);
    let answer = common::sip_stream::uas_response(&at_agent, "486 Busy Here", "agent", "");
    agent.send_to(answer.as_bytes(), pooled.udp).unwrap();
    let on_conn = read_message(&mut conn);
    assert!(on_conn.starts_with("SIP/2.0 486 "), "{on_conn}");
    assert!(quiet(&upstream), "nothing went to the registrar");
    // Once that connection is gone, an answer goes upstream as before.
    let invite = registrar_invite(from_tcp, target, "TCP", "as-registrar-gone");
    conn.write_all(invite.as_bytes()).unwrap();
    let (at_agent, _) = recv(&agent);
    drop(conn);
    std::thread::sleep(QUIET);
    let answer = common::sip_stream::uas_response(&at_agent, "486 Busy Here", "agent", "");
    agent.send_to(answer.as_bytes(), pooled.udp).unwrap();
    let (upstream_got, _) = recv(&upstream);
    assert!(upstream_got.starts_with("SIP/2.0 486 "), "{upstream_got}");
    assert_eq!(header(&upstream_got, "Call-ID"), ["as-registrar-gone"]);
}

/// A proxy in front of `upstream` with two UDP listeners on 127.0.0.1 (and
/// a TCP one).
fn start_with_two_udp_listeners(upstream: &UdpSocket) -> TestProxy {
    let up = upstream.local_addr().unwrap();
    TestProxy::start_listening(
        CONFIG,
        vec![
            "udp:127.0.0.1:0".into(),
            "udp:127.0.0.1:0".into(),
            "tcp:127.0.0.1:0".into(),
        ],
        &format!("udp:{up}"),
    )
}

#[test]
fn local_answers_leave_from_the_udp_socket_the_request_arrived_on() {
    let upstream = udp("127.0.0.1");
    let proxy = start_with_two_udp_listeners(&upstream);
    let listeners: Vec<SocketAddr> = proxy
        .addresses
        .iter()
        .filter(|(t, _)| *t == sipadmit::transport::Transport::Udp)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(listeners.len(), 2);
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    // A client behind NAT only accepts answers from the address it sent to.
    for (i, listener) in listeners.iter().enumerate() {
        let mut m = Msg::new("OPTIONS", "sip:bob@contoso.com", "nat", LYNC);
        m.branch = format!("z9hG4bK-nat-{i}");
        let text = m.render(me).replace("Max-Forwards: 70", "Max-Forwards: 0");
        client.send_to(text.as_bytes(), listener).unwrap();
        let (resp, from) = recv(&client);
        assert!(resp.starts_with("SIP/2.0 483 "), "{resp}");
        assert_eq!(from, *listener, "answered from the socket it was sent to");
    }
}

/// RFC 3581 4: what is relayed to a UDP client (the registrar's answer to
/// its REGISTER, the registrar's requests along its Path or found by its
/// registration) leaves from the listener the client sent to, not from the
/// first listener: a client behind NAT takes nothing else. The Via and
/// Record-Route toward it name that listener (RFC 3261 18.2.2, RFC 5658).
#[test]
fn relayed_messages_leave_from_the_udp_listener_the_client_sent_to() {
    let upstream = udp("127.0.0.1");
    let proxy = start_with_two_udp_listeners(&upstream);
    let listeners: Vec<SocketAddr> = proxy.addresses.iter().map(|(_, a)| *a).collect();
    let (first, second) = (listeners[0], listeners[1]);
    assert_eq!(proxy.udp, first);
    let agent = udp("127.0.0.1");
    let me = agent.local_addr().unwrap();
    let register = Msg::new("REGISTER", "sip:contoso.com", "agent-nat", LYNC).render(me);
    agent.send_to(register.as_bytes(), second).unwrap();
    let (relayed, _) = recv(&upstream);
    answer(
        &upstream,
        &relayed,
        first,
        "200 OK",
        &format!("Contact: <sip:agent-nat@{me}>;expires=300\r\n"),
    );
    let (ok, from) = recv(&agent);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(
        from, second,
        "the 200 left from the listener the REGISTER came in on"
    );
    // Its record names that listener too.
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["local"], second.to_string(), "{records:?}");

    let path = header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    // Along the Path, and found by the registration (no Path route).
    for (route, how) in [
        (Some(path.as_str()), "along the Path"),
        (None, "by registration"),
    ] {
        offer(&upstream, first, "agent-nat", me, route);
        let (invite, from) = recv(&agent);
        assert!(invite.starts_with("INVITE sip:agent-nat@"), "{invite}");
        assert_eq!(
            from, second,
            "the offer {how} left from the client's listener"
        );
        // Its Via and Record-Route name that listener too (the client's
        // answers and later requests go there), and, since it came in on
        // another listener, Record-Route is doubled (RFC 5658): the
        // client's side on top.
        assert!(
            header(&invite, "Via")[0].starts_with(&format!("SIP/2.0/UDP {second};")),
            "{invite}"
        );
        let record_route = header(&invite, "Record-Route");
        assert_eq!(record_route.len(), 2, "{invite}");
        assert!(record_route[0].contains(&format!("@{second};")), "{invite}");
        assert!(record_route[1].contains(&format!("@{first};")), "{invite}");
        let busy = common::sip_stream::uas_response(&invite, "486 Busy Here", "agent", "");
        agent.send_to(busy.as_bytes(), second).unwrap();
        let (busy, _) = recv(&upstream);
        assert!(busy.starts_with("SIP/2.0 486 "), "{busy}");
    }
}

/// Issue 18, item 4: with the IPv6 listener listed first and an IPv4
/// registrar, the Via and Path sipadmit adds name its IPv4 listener (the
/// family facing the registrar), so the registrar's requests come back.
#[test]
fn dual_stack_names_the_listener_of_the_family_facing_the_registrar() {
    let upstream = udp("127.0.0.1");
    let registrar = upstream.local_addr().unwrap();
    let proxy = TestProxy::start_listening(
        CONFIG,
        vec![
            "udp:[::1]:0".into(),
            "udp:127.0.0.1:0".into(),
            "tcp:[::1]:0".into(),
            "tcp:127.0.0.1:0".into(),
        ],
        &format!("udp:{registrar}"),
    );
    let v4 = proxy
        .addresses
        .iter()
        .find(|(t, a)| *t == sipadmit::transport::Transport::Udp && a.is_ipv4())
        .map(|(_, a)| *a)
        .unwrap();
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    client
        .send_to(
            format!(
                "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ds-1;rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:ds@contoso.com>;tag=1\r\nTo: <sip:ds@contoso.com>\r\n\
                 Call-ID: ds-1@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:ds@{me}>\r\n\
                 User-Agent: {LYNC}\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
            v4,
        )
        .unwrap();
    let (relayed, _) = recv(&upstream);
    let via = header(&relayed, "Via")[0];
    assert!(via.contains(&v4.to_string()), "{via}");
    let path = header(&relayed, "Path")[0];
    assert!(path.contains(&format!("@{v4};")), "{path}");
    assert!(!relayed.contains("[::1]"), "{relayed}");
}

/// A dual-stack `[::]` listener beside an IPv4 one, in front of an IPv4
/// registrar: it advertises the IPv4 address facing the registrar, and
/// still answers its IPv6 clients and its IPv4 ones (which reach it
/// IPv4-mapped). Before, neither got anything back ("no udp socket").
#[test]
fn a_dual_stack_listener_answers_clients_of_both_families() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback");
        return;
    }
    let upstream = udp("127.0.0.1");
    let registrar = upstream.local_addr().unwrap();
    let proxy = TestProxy::start_listening(
        CONFIG,
        vec![
            "udp:127.0.0.1:0".into(),
            "udp:[::]:0".into(),
            "tcp:127.0.0.1:0".into(),
        ],
        &format!("udp:{registrar}"),
    );
    let wildcard_port = proxy
        .addresses
        .iter()
        .filter(|(t, _)| *t == sipadmit::transport::Transport::Udp)
        .nth(1)
        .map(|(_, a)| a.port())
        .unwrap();
    for (ip, listener) in [
        (
            "127.0.0.1",
            SocketAddr::from(([127, 0, 0, 1], wildcard_port)),
        ),
        (
            "::1",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, wildcard_port)),
        ),
    ] {
        let client = udp(ip);
        let me = client.local_addr().unwrap();
        // A mobile caller to the workflow: answered 403 here.
        client
            .send_to(
                format!(
                    "INVITE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-dual-{p};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:m@contoso.com>;tag=1\r\nTo: <sip:helpdesk@contoso.com>\r\n\
                     Call-ID: dual-{p}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:m@{me}>\r\n\
                     User-Agent: {MOBILE}\r\nContent-Length: 0\r\n\r\n",
                    p = me.port()
                )
                .as_bytes(),
                listener,
            )
            .unwrap();
        let (answer, from) = recv(&client);
        assert!(answer.starts_with("SIP/2.0 403"), "{ip}: {answer}");
        assert_eq!(
            from.port(),
            wildcard_port,
            "{ip}: from the socket it was sent to"
        );
    }
}

/// A `[::]` listener in front of an IPv6 registrar advertises `[::1]`, the
/// address facing it; an IPv4 client that reached it at 127.0.0.1 and sets
/// sipadmit as its outbound proxy (a Route naming that address: pjsua,
/// baresip) has that Route taken as sipadmit's and removed (RFC 3261 16.4),
/// not relayed for the registrar to send back as a loop (trial 15: 482).
#[test]
fn an_outbound_proxy_route_of_the_other_family_on_a_wildcard_listener_is_consumed() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback");
        return;
    }
    let upstream = udp("::1");
    let registrar = upstream.local_addr().unwrap();
    let proxy = TestProxy::start_listening(
        CONFIG,
        vec!["udp:[::]:0".into(), "tcp:[::]:0".into()],
        &format!("udp:{registrar}"),
    );
    let port = proxy.udp.port();
    let client = udp("127.0.0.1");
    let me = client.local_addr().unwrap();
    let route = format!("Route: <sip:127.0.0.1:{port};transport=udp;lr>\r\n");
    let mut request = Msg::new("REGISTER", "sip:contoso.com", "ob-v4", LYNC);
    request.extra = route;
    let request = request.render(me);
    client
        .send_to(request.as_bytes(), SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert!(relayed.starts_with("REGISTER "), "{relayed}");
    assert!(header(&relayed, "Route").is_empty(), "{relayed}");
    // Another host's address on that port is someone else's Route.
    let other = format!("Route: <sip:192.0.2.1:{port};lr>\r\n");
    let mut request = Msg::new("REGISTER", "sip:contoso.com", "ob-other", LYNC);
    request.extra = other;
    let request = request.render(me);
    client
        .send_to(request.as_bytes(), SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let (relayed, _) = recv(&upstream);
    assert_eq!(
        header(&relayed, "Route"),
        [format!("<sip:192.0.2.1:{port};lr>")]
    );
}
