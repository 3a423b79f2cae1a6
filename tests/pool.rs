//! A pool of sipadmit instances on loopback, with plain sockets as clients
//! and registrar: a flow secret rotated across two instances (prepend,
//! reload both, drop, reload both) with a registered client reachable
//! throughout; calls through the pool's advertised name taken by either
//! instance and decided the same way; OPTIONS to sipadmit itself answered
//! by its readiness.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sip_stream::{header, take_message, uas_response};
use common::udp_registrar::Registrar;
use common::TestProxy;

const WAIT: Duration = Duration::from_millis(2000);
const QUIET: Duration = Duration::from_millis(300);

const LYNC: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
const MOBILE: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)";
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";

const RESPONSE_GROUP: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";

const OLD_SECRET: &str = "old-flow-secret-0123456789abcdef";
const NEW_SECRET: &str = "new-flow-secret-fedcba9876543210";

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// The next message on `s` that is not one of sipadmit's OPTIONS probes
/// of the registrar.
fn recv(s: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) = s.recv_from(&mut buf).expect("a message within the wait");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.contains("\r\nCall-ID: sipadmit-probe-") {
            return (text, from);
        }
    }
}

/// Nothing but probes arrives on `s` within the quiet wait.
fn quiet(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(QUIET)).unwrap();
    let mut buf = [0u8; 65536];
    let quiet = loop {
        match s.recv_from(&mut buf) {
            Ok((n, _)) if String::from_utf8_lossy(&buf[..n]).contains("sipadmit-probe-") => {}
            got => break got.is_err(),
        }
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    quiet
}

/// A response to `request` as a UAS writes it: its Vias, From, To (tagged),
/// Call-ID and CSeq.
fn response(request: &str, status: &str) -> String {
    uas_response(request, status, "uas", "")
}

/// REGISTER `user` from `client` through `through` (CSeq `cseq`); the
/// registrar (`upstream`) answers 200; returns the Path URI it got.
fn register(
    client: &UdpSocket,
    through: SocketAddr,
    upstream: &UdpSocket,
    user: &str,
    ua: &str,
    cseq: u32,
) -> String {
    let me = client.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-reg-{user}-{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@contoso.com>;tag=r-{user}\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: reg-{user}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{me}>\r\n\
         Expires: 3600\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(register.as_bytes(), through).unwrap();
    let (relayed, _) = recv(upstream);
    assert!(relayed.starts_with("REGISTER "), "{relayed}");
    upstream
        .send_to(response(&relayed, "200 OK").as_bytes(), through)
        .unwrap();
    let (answer, _) = recv(client);
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    header(&relayed, "Path")[0]
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned()
}

/// The registrar (`upstream`) offers call `call` to `user` at `contact`
/// along `path`, through instance `through`, as the Response Group
/// application.
fn offer(
    upstream: &UdpSocket,
    through: SocketAddr,
    user: &str,
    contact: SocketAddr,
    path: &str,
    call: &str,
) {
    let me = upstream.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:{user}@{contact} SIP/2.0\r\nRoute: <{path}>\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 69\r\nFrom: <sip:helpdesk@contoso.com>;tag=rgs-{call}\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:rgs@{me}>\r\nUser-Agent: {RGS}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    upstream.send_to(invite.as_bytes(), through).unwrap();
}

/// The client gets the offer `call` from instance `through`.
fn rings(client: &UdpSocket, through: SocketAddr, call: &str) -> String {
    let (invite, from) = recv(client);
    assert!(invite.starts_with("INVITE sip:"), "{invite}");
    assert_eq!(header(&invite, "Call-ID"), [call], "{invite}");
    assert_eq!(from, through, "sent from the instance the registrar chose");
    assert!(
        header(&invite, "Route").is_empty(),
        "Route popped: {invite}"
    );
    invite
}

/// A config file and a flow secret file (0600) in a directory of their own.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(config: &str, secrets: &str) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(files.config(), config).unwrap();
        files.write_secrets(secrets, 0o600);
        files
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sipadmit.toml")
    }

    fn write_secrets(&self, secrets: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("flow-secrets");
        std::fs::write(&path, secrets).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn start_reloading(config: &Path, upstream: &UdpSocket) -> TestProxy {
    TestProxy::start_reloading(
        config,
        vec!["udp:127.0.0.1:0".into(), "tcp:127.0.0.1:0".into()],
        &format!("udp:{}", upstream.local_addr().unwrap()),
    )
}

#[test]
fn a_secret_rotation_across_two_instances_keeps_a_registered_client_reachable() {
    let files = Files::new(
        &format!("[proxy]\nflow_secret_file = \"flow-secrets\"\n{RESPONSE_GROUP}"),
        &format!("{OLD_SECRET}\n"),
    );
    let upstream = udp();
    let a = start_reloading(&files.config(), &upstream);
    let b = start_reloading(&files.config(), &upstream);
    let client = udp();
    let contact = client.local_addr().unwrap();
    let old_path = register(&client, a.udp, &upstream, "agent-x", LYNC, 1);
    let mut calls = 0;
    let mut call_through = |proxy: &TestProxy, path: &str| {
        calls += 1;
        let call = format!("rotation-call-{calls}");
        offer(&upstream, proxy.udp, "agent-x", contact, path, &call);
        rings(&client, proxy.udp, &call);
    };
    // Before: either instance routes the Path of the old secret.
    call_through(&a, &old_path);
    call_through(&b, &old_path);

    // Prepend the new secret, reload both: the old tokens still verify.
    files.write_secrets(&format!("# rotation\n{NEW_SECRET}\n{OLD_SECRET}\n"), 0o640);
    assert!(a.reload() && b.reload());
    call_through(&a, &old_path);
    call_through(&b, &old_path);
    let older = "sipadmit_flow_tokens_older_secret_total";
    assert!(a.metric(older) >= 1.0 && b.metric(older) >= 1.0);
    // The client registers again (through B this time): a token of the
    // new secret, routed by both.
    let new_path = register(&client, b.udp, &upstream, "agent-x", LYNC, 2);
    assert_ne!(new_path, old_path);
    call_through(&a, &new_path);
    call_through(&b, &new_path);
    let older_before_drop = a.metric(older);

    // Drop the old secret, reload both: the new tokens keep working.
    files.write_secrets(&format!("{NEW_SECRET}\n"), 0o600);
    assert!(a.reload() && b.reload());
    call_through(&a, &new_path);
    call_through(&b, &new_path);
    assert_eq!(
        a.metric(older),
        older_before_drop,
        "nothing verified by an old secret"
    );
    // A token of the dropped secret is refused (403), and rings nobody.
    offer(
        &upstream,
        a.udp,
        "agent-x",
        contact,
        &old_path,
        "stale-token",
    );
    let (refused, _) = recv(&upstream);
    assert!(
        refused.starts_with("SIP/2.0 403 Invalid Flow Token\r\n"),
        "{refused}"
    );
    assert!(quiet(&client));

    // A secret file every user may read, or with a short secret, is
    // refused at reload: the running secrets stay.
    files.write_secrets(&format!("{OLD_SECRET}\n"), 0o644);
    assert!(!a.reload(), "a world-readable secret file is refused");
    files.write_secrets("too-short\n", 0o600);
    assert!(!b.reload(), "a short secret is refused");
    call_through(&a, &new_path);
    call_through(&b, &new_path);
}

#[test]
fn the_first_secret_brought_by_a_reload_keeps_the_tokens_of_the_random_one() {
    // Started without a secret (a random one, warned about), then given
    // one by a reload, as an admin joining an instance to a pool does:
    // the registrations made before keep routing until they refresh.
    let files = Files::new(RESPONSE_GROUP, "");
    let upstream = udp();
    let proxy = start_reloading(&files.config(), &upstream);
    let client = udp();
    let contact = client.local_addr().unwrap();
    let random_path = register(&client, proxy.udp, &upstream, "agent-x", LYNC, 1);
    std::fs::write(
        files.config(),
        format!("[proxy]\nflow_secret = \"{OLD_SECRET}\"\n{RESPONSE_GROUP}"),
    )
    .unwrap();
    assert!(proxy.reload());
    let call = |through: &TestProxy, path: &str, call: &str| {
        offer(&upstream, through.udp, "agent-x", contact, path, call);
        rings(&client, through.udp, call);
    };
    call(&proxy, &random_path, "after-reload");
    // New registrations get tokens of the configured secret, which a
    // second instance of the pool routes.
    let configured_path = register(&client, proxy.udp, &upstream, "agent-x", LYNC, 2);
    assert_ne!(configured_path, random_path);
    let other = TestProxy::start(
        &format!("[proxy]\nflow_secret = \"{OLD_SECRET}\"\n{RESPONSE_GROUP}"),
        "127.0.0.1",
        &format!("udp:{}", upstream.local_addr().unwrap()),
    );
    call(&other, &configured_path, "other");
    // A reload of the same file changes nothing: the old tokens still route.
    assert!(proxy.reload());
    call(&proxy, &random_path, "reloaded-again");
}

#[test]
fn a_secret_replaced_outright_keeps_the_tokens_in_use_and_a_rotated_one_is_retired() {
    // Trial 26: one flow_secret replaced by another in the file and
    // reloaded refused every registration and call under way (403 Invalid
    // Flow Token) until each client registered again.
    let files = Files::new(
        &format!("[proxy]\nflow_secret = \"{OLD_SECRET}\"\n{RESPONSE_GROUP}"),
        "",
    );
    let upstream = udp();
    let proxy = start_reloading(&files.config(), &upstream);
    let client = udp();
    let contact = client.local_addr().unwrap();
    let old_path = register(&client, proxy.udp, &upstream, "agent-x", LYNC, 1);
    std::fs::write(
        files.config(),
        format!("[proxy]\nflow_secret = \"{NEW_SECRET}\"\n{RESPONSE_GROUP}"),
    )
    .unwrap();
    assert!(proxy.reload());
    let call = |path: &str, call: &str| {
        offer(&upstream, proxy.udp, "agent-x", contact, path, call);
        rings(&client, proxy.udp, call);
    };
    call(&old_path, "after-replacement");
    let new_path = register(&client, proxy.udp, &upstream, "agent-x", LYNC, 2);
    assert_ne!(new_path, old_path);
    call(&new_path, "new-token");
    // Rotated through the file (the new first, the old second, then the
    // old dropped), the old secret is retired at once.
    let files = Files::new(
        &format!("[proxy]\nflow_secret_file = \"flow-secrets\"\n{RESPONSE_GROUP}"),
        &format!("{OLD_SECRET}\n"),
    );
    let proxy = start_reloading(&files.config(), &upstream);
    let old_path = register(&client, proxy.udp, &upstream, "agent-x", LYNC, 3);
    files.write_secrets(&format!("{NEW_SECRET}\n{OLD_SECRET}\n"), 0o600);
    assert!(proxy.reload());
    offer(
        &upstream, proxy.udp, "agent-x", contact, &old_path, "rotating",
    );
    rings(&client, proxy.udp, "rotating");
    files.write_secrets(&format!("{NEW_SECRET}\n"), 0o600);
    assert!(proxy.reload());
    offer(
        &upstream, proxy.udp, "agent-x", contact, &old_path, "retired",
    );
    let (refused, _) = recv(&upstream);
    assert!(
        refused.starts_with("SIP/2.0 403 Invalid Flow Token\r\n"),
        "{refused}"
    );
}

#[test]
fn a_call_through_the_advertised_name_is_taken_by_either_instance_and_decided_the_same() {
    let upstream = udp();
    let config = format!(
        "[proxy]\nflow_secret = \"{OLD_SECRET}\"\nadvertise = \"pool.sipadmit.test\"\n{RESPONSE_GROUP}"
    );
    let up = format!("udp:{}", upstream.local_addr().unwrap());
    let a = TestProxy::start(&config, "127.0.0.1", &up);
    let b = TestProxy::start(&config, "127.0.0.1", &up);
    let desk = udp();
    let mobile = udp();
    // Both register through A: their Paths name the pool, not A.
    let desk_path = register(&desk, a.udp, &upstream, "agent-desk", LYNC, 1);
    let mobile_path = register(&mobile, a.udp, &upstream, "agent-mob", MOBILE, 1);
    for path in [&desk_path, &mobile_path] {
        assert!(
            path.ends_with("@pool.sipadmit.test;transport=udp;lr"),
            "{path}"
        );
    }
    // The registrar resolves the pool's name to B (as DNS or a balancer
    // may): B takes the call, pops the Route, names itself by the pool
    // name in its Via, and rings the desk client.
    let desk_addr = desk.local_addr().unwrap();
    offer(
        &upstream,
        b.udp,
        "agent-desk",
        desk_addr,
        &desk_path,
        "pool-call-desk",
    );
    let invite = rings(&desk, b.udp, "pool-call-desk");
    let via = header(&invite, "Via")[0];
    assert!(
        via.starts_with(&format!(
            "SIP/2.0/UDP pool.sipadmit.test:{};branch=z9hG4bKsa",
            b.udp.port()
        )),
        "{via}"
    );
    // The client's answer goes back through B to the registrar.
    desk.send_to(response(&invite, "180 Ringing").as_bytes(), b.udp)
        .unwrap();
    let (ringing, from) = recv(&upstream);
    assert!(ringing.starts_with("SIP/2.0 180 Ringing\r\n"), "{ringing}");
    assert_eq!(from, b.udp);
    assert_eq!(
        header(&ringing, "Via").len(),
        1,
        "B popped its own Via: {ringing}"
    );

    // The mobile agent's offer: 480 from either instance, decided on the
    // client in the token, with the same record.
    let mobile_addr = mobile.local_addr().unwrap();
    for (proxy, call) in [(&b, "pool-call-mob-b"), (&a, "pool-call-mob-a")] {
        offer(
            &upstream,
            proxy.udp,
            "agent-mob",
            mobile_addr,
            &mobile_path,
            call,
        );
        let (refused, _) = recv(&upstream);
        assert!(refused.starts_with("SIP/2.0 480 "), "{refused}");
    }
    assert!(quiet(&mobile), "the mobile client is never rung");
    let decision = |proxy: &TestProxy, call: &str| {
        let records = proxy.records();
        let r = records
            .iter()
            .find(|r| r["call_id"] == call)
            .unwrap_or_else(|| panic!("no record of {call}: {records:#?}"))
            .clone();
        (
            r["action"].clone(),
            r["rule"].clone(),
            r["client"].clone(),
            r["role"].clone(),
        )
    };
    let on_b = decision(&b, "pool-call-mob-b");
    assert_eq!(on_b, decision(&a, "pool-call-mob-a"));
    assert_eq!(
        (on_b.0.as_str(), on_b.3.as_str()),
        (Some("reject"), Some("agent-offer"))
    );
}

/// An OPTIONS to `target`'s address (Request-URI `ruri`) over UDP from
/// `client`; the answer.
fn ping(client: &UdpSocket, target: SocketAddr, ruri: &str, n: u32) -> String {
    let me = client.local_addr().unwrap();
    let options = format!(
        "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ping-{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:balancer@{me}>;tag=lb{n}\r\nTo: <{ruri}>\r\nCall-ID: ping-{n}@balancer\r\n\
         CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    client.send_to(options.as_bytes(), target).unwrap();
    recv(client).0
}

/// One whole message from a stream (Content-Length framing).
fn read_message(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(message) = take_message(&mut buffer) {
            return message;
        }
        let n = stream.read(&mut chunk).expect("a message within the wait");
        assert!(n > 0, "closed before a whole message");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Ping until the answer's status line starts with `status` (bounded).
fn ping_until(client: &UdpSocket, proxy: &TestProxy, status: &str, n: &mut u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        *n += 1;
        let answer = ping(client, proxy.udp, &format!("sip:{}", proxy.udp), *n);
        if answer.starts_with(status) {
            return answer;
        }
        assert!(Instant::now() < deadline, "never {status}: last {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn options_to_sipadmit_itself_are_answered_by_its_readiness() {
    // A registrar address nobody answers on yet: "unknown" until a probe
    // is answered.
    let silent = udp();
    let registrar_addr = silent.local_addr().unwrap();
    let proxy = TestProxy::start(
        &format!(
            "[proxy]\nupstream_probe_secs = 1\nflow_secret = \"{OLD_SECRET}\"\n{RESPONSE_GROUP}"
        ),
        "127.0.0.1",
        &format!("udp:{registrar_addr}"),
    );
    let balancer = udp();
    let mut n = 0;
    let answer = ping_until(&balancer, &proxy, "SIP/2.0 503 ", &mut n);
    assert_eq!(
        header(&answer, "Warning"),
        [format!("399 sipadmit \"upstream udp:{registrar_addr} unknown: it has not answered sipadmit's OPTIONS probe yet\"")]
    );
    assert_eq!(header(&answer, "Retry-After"), ["30"]);
    // The registrar comes up on that address and answers the probes: 200.
    drop(silent);
    let registrar = Registrar::start_on(registrar_addr);
    let answer = ping_until(&balancer, &proxy, "SIP/2.0 200 OK\r\n", &mut n);
    assert_eq!(header(&answer, "CSeq"), [format!("{n} OPTIONS")]);
    assert!(header(&answer, "To")[0].contains(";tag="), "{answer}");
    assert_eq!(
        header(&answer, "Via"),
        [format!(
            "SIP/2.0/UDP {};branch=z9hG4bK-ping-{n}",
            balancer.local_addr().unwrap()
        )],
        "copied (the sent-by is the source: no received)"
    );
    let relayed_before = registrar
        .received
        .load(std::sync::atomic::Ordering::Relaxed);
    // Over TCP too, on the same connection.
    let mut tcp = TcpStream::connect(proxy.tcp).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let me = tcp.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-tcp-ping\r\nMax-Forwards: 70\r\n\
         From: <sip:balancer@{me}>;tag=tcp\r\nTo: <sip:{}>\r\nCall-ID: tcp-ping@balancer\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        proxy.tcp, proxy.tcp
    );
    tcp.write_all(options.as_bytes()).unwrap();
    let answer = read_message(&mut tcp);
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    // An OPTIONS to a user is the registrar's business: relayed.
    let user_ping = ping(
        &balancer,
        proxy.udp,
        &format!("sip:alice@{}", proxy.udp),
        900,
    );
    assert!(user_ping.starts_with("SIP/2.0 200 OK\r\n"), "{user_ping}");
    assert_eq!(
        registrar
            .received
            .load(std::sync::atomic::Ordering::Relaxed),
        relayed_before + 1,
        "only the OPTIONS with a user part reached the registrar"
    );
    // The registrar goes away: ICMP errors for the probes, 503 again.
    drop(registrar);
    let answer = ping_until(&balancer, &proxy, "SIP/2.0 503 ", &mut n);
    let warning = header(&answer, "Warning")[0];
    assert!(
        warning.contains(&format!("upstream udp:{registrar_addr} not reachable")),
        "{warning}"
    );
    // Every answer was counted; only the 503s were recorded.
    let records = proxy.records();
    let metrics = proxy.stop();
    assert!(metrics.protocol_answers("proxy.health", Some(200)) >= 2);
    assert!(metrics.protocol_answers("proxy.health", Some(503)) >= 2);
    let health: Vec<_> = records
        .iter()
        .filter(|r| r["rule"] == "proxy.health")
        .collect();
    assert!(health.len() >= 2, "{health:#?}");
    assert!(health
        .iter()
        .all(|r| r["status"] == 503 && r["action"] == "reject"));
}

/// Kamailio with `tests/e2e/kamailio-dispatcher.cfg`, `proxy`'s UDP
/// listener its one destination: the dispatcher, the destination's URI
/// and the directory of the list file (kept while it runs). `None`: skip
/// (Kamailio or its dispatcher module missing, outside CI).
fn dispatcher_in_front_of(
    proxy: &TestProxy,
) -> Option<(common::external::Kamailio, String, tempfile::TempDir)> {
    use common::external::{require_kamailio_module, Kamailio, KamailioOptions};
    require_kamailio_module("dispatcher")?;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dispatcher.list");
    let destination = format!("sip:{}", proxy.udp);
    std::fs::write(&list, format!("1 {destination} 0 0\n")).unwrap();
    let kamailio = Kamailio::try_start(KamailioOptions {
        template: "kamailio-dispatcher.cfg",
        substitutions: vec![("DISPATCHER_LIST".into(), list.display().to_string())],
        ..KamailioOptions::default()
    })?;
    Some((kamailio, destination, dir))
}

/// Kamailio's dispatcher module, as the load balancer in front of
/// sipadmit, probes it with OPTIONS every second (`ds_ping_interval`): it
/// marks sipadmit inactive while sipadmit answers 503 (its registrar
/// unknown, then gone) and active again once it answers 200.
#[test]
fn kamailios_dispatcher_follows_sipadmit_in_and_out_of_the_pool() {
    let silent = udp();
    let registrar_addr = silent.local_addr().unwrap();
    let proxy = TestProxy::start(
        &format!(
            "[proxy]\nupstream_probe_secs = 1\nflow_secret = \"{OLD_SECRET}\"\n{RESPONSE_GROUP}"
        ),
        "127.0.0.1",
        &format!("udp:{registrar_addr}"),
    );
    let Some((kamailio, destination, _dir)) = dispatcher_in_front_of(&proxy) else {
        return;
    };
    let bound = Duration::from_secs(15);
    let down = format!("DS-DOWN {destination}");
    let up = format!("DS-UP {destination}");
    assert!(
        kamailio.wait_for_log(&down, bound),
        "registrar unknown: out\n{}",
        kamailio.log()
    );
    drop(silent);
    let registrar = Registrar::start_on(registrar_addr);
    assert!(
        kamailio.wait_for_log(&up, bound),
        "registrar answering: in\n{}",
        kamailio.log()
    );
    drop(registrar);
    let deadline = Instant::now() + bound;
    while kamailio.log_lines(&down).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "registrar gone: out again\n{}",
            kamailio.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = proxy.stop();
    assert!(metrics.protocol_answers("proxy.health", Some(200)) >= 1);
    assert!(metrics.protocol_answers("proxy.health", Some(503)) >= 2);
}

/// A `408` or `503` that sipadmit relays from the registrar (or from a
/// callee behind it) says nothing about sipadmit (RFC 3261 16.7): the
/// dispatcher's failure route in docs/pool.md takes an instance out only
/// when it answered nothing, or answered `503` itself (its `Server:
/// sipadmit/...`), so it neither marks a healthy instance inactive nor
/// rings the callee again through another one (trial 35).
#[test]
fn kamailios_dispatcher_keeps_an_instance_that_relays_the_registrars_408_or_503() {
    let registrar = udp();
    let proxy = TestProxy::start(
        &format!("[proxy]\nupstream_probe_secs = 0\n{RESPONSE_GROUP}"),
        "127.0.0.1",
        &format!("udp:{}", registrar.local_addr().unwrap()),
    );
    let Some((kamailio, _, _dir)) = dispatcher_in_front_of(&proxy) else {
        return;
    };
    let caller = udp();
    let me = caller.local_addr().unwrap();
    for (n, status) in [(1, "408 Request Timeout"), (2, "503 Service Unavailable")] {
        let invite = format!(
            "INVITE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-ds-{n};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@contoso.com>;tag=ds-{n}\r\nTo: <sip:helpdesk@contoso.com>\r\n\
             Call-ID: ds-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\nUser-Agent: {LYNC}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        caller
            .send_to(invite.as_bytes(), kamailio.udp_addr())
            .unwrap();
        let (relayed, from) = recv(&registrar);
        assert!(relayed.starts_with("INVITE "), "{relayed}");
        registrar
            .send_to(response(&relayed, status).as_bytes(), from)
            .unwrap();
        let answer = loop {
            let (answer, _) = recv(&caller);
            if !answer.starts_with("SIP/2.0 1") {
                break answer;
            }
        };
        // Kamailio's tm turns a 503 it relays into a 500 (RFC 3261 16.7 step 6).
        let code = &status[..3];
        assert!(
            answer.starts_with(&format!("SIP/2.0 {code}"))
                || code == "503" && answer.starts_with("SIP/2.0 500"),
            "{answer}"
        );
        // Not tried again through the (only) instance: the registrar got
        // the INVITE once, and its ACK.
        let (ack, _) = recv(&registrar);
        assert!(ack.starts_with("ACK "), "{ack}");
        assert!(quiet(&registrar), "the INVITE came again");
    }
    let log = kamailio.log();
    assert!(
        !log.contains("DS-DOWN") && !log.contains("DS-EXHAUSTED") && !log.contains("DS-FAILOVER"),
        "the instance was taken out for an answer it relayed\n{log}"
    );
}

/// Two instances whose HEP collectors are each other's SIP port (a slip
/// in a pool's configs, which neither `check-config` can see: the other's
/// port is not its own): each drops what the other mirrors to it as the
/// HEP packets they are, and mirrors none back, instead of the two passing
/// them to and fro for ever.
#[test]
fn instances_whose_hep_collectors_are_each_others_sip_ports_mirror_nothing_back() {
    use common::external::{free_tcp_port, free_udp_port};
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let udp_a = free_udp_port();
    let udp_b = std::iter::repeat_with(free_udp_port)
        .find(|&p| p != udp_a)
        .unwrap();
    let config = |collector: u16| {
        format!(
            "[proxy]\nupstream_probe_secs = 0\n{RESPONSE_GROUP}\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [hep]\ncollector = \"udp:127.0.0.1:{collector}\"\n"
        )
    };
    let upstream = udp();
    let registrar = format!("udp:{}", upstream.local_addr().unwrap());
    let a = TestProxy::start_on(
        &config(udp_b),
        loopback(udp_a),
        loopback(free_tcp_port()),
        &registrar,
    );
    let b = TestProxy::start_on(
        &config(udp_a),
        loopback(udp_b),
        loopback(free_tcp_port()),
        &registrar,
    );
    let client = udp();
    register(&client, a.udp, &upstream, "agent-h", LYNC, 1);

    const MALFORMED: &str = "sipadmit_dropped_total{reason=\"malformed\"}";
    const SIP: &str = "sipadmit_hep_exported_total{type=\"sip\"}";
    const DECISIONS: &str = "sipadmit_hep_exported_total{type=\"decision\"}";
    // A mirrors the REGISTER, its relay, the 200 and its relay, and the
    // decision: five HEP packets to B's SIP port.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.metric(SIP) + a.metric(DECISIONS) < 5.0 || b.metric(MALFORMED) < 5.0 {
        assert!(Instant::now() < deadline, "A's HEP packets did not reach B");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(QUIET);
    assert_eq!(b.metric(MALFORMED), 5.0, "B dropped A's five packets");
    assert_eq!(b.metric(SIP), 0.0, "B mirrored none of them");
    assert_eq!(a.metric(MALFORMED), 0.0, "nothing came back to A");
    assert_eq!(a.metric(SIP) + a.metric(DECISIONS), 5.0);
}
