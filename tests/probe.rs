//! `sipadmit probe`, the binary, against a running sipadmit (in process, on
//! ephemeral loopback ports, UDP, TCP and TLS listeners) in front of a real
//! Kamailio registrar: a Lync 2013 desktop REGISTER gets Kamailio's 200, a
//! Lync mobile INVITE to the Response Group workflow gets sipadmit's 403
//! with its Warning, over each transport; `--expect`, `--json`, the
//! ms-diagnostics of a Lync-style agent registration reject, and the clear
//! failures (no answer in time, nothing listening, an untrusted
//! certificate).
//!
//! Needs `kamailio` (Debian `kamailio`); fails under CI=true when it is
//! missing, skips with a message otherwise.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::external::{Kamailio, KamailioOptions, UA_LYNC_2013, UA_LYNC_MOBILE};
use common::tls::{Pki, PkiFiles};
use common::TestProxy;
use serde_json::Value;

const WORKFLOW: &str = "sip:helpdesk@contoso.com";

fn config(files: &PkiFiles) -> String {
    format!(
        "[response_group]\nworkflows = [\"{WORKFLOW}\"]\n\
         application_user_agents = [\"Response_Group_Service\"]\n\
         agents = [\"sip:agent-*@contoso.com\"]\n\
         [policy.agent_registration]\nunsupported = \"reject\"\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        files.server.0.display(),
        files.server.1.display(),
    )
}

/// Kamailio and, in front of it, sipadmit listening on UDP, TCP and TLS.
fn setup() -> Option<(Kamailio, TestProxy, tempfile::TempDir, PkiFiles)> {
    let kam = Kamailio::try_start(KamailioOptions::default())?;
    let dir = tempfile::tempdir().unwrap();
    let files = Pki::get().write(dir.path());
    let proxy = TestProxy::start_with_tls(&config(&files), &kam.upstream_udp());
    Some((kam, proxy, dir, files))
}

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The three targets, with the flags each needs.
fn targets(proxy: &TestProxy, files: &PkiFiles) -> Vec<(String, Vec<String>)> {
    vec![
        (format!("udp:{}", proxy.udp), vec![]),
        (format!("tcp:{}", proxy.tcp), vec![]),
        (
            format!("tls:{}", proxy.tls.unwrap()),
            vec!["--ca".into(), files.ca.display().to_string()],
        ),
    ]
}

#[test]
fn lync_2013_registers_and_lync_mobile_is_refused_over_udp_tcp_and_tls() {
    let Some((kam, proxy, _dir, files)) = setup() else {
        return;
    };
    for (target, extra) in targets(&proxy, &files) {
        // `sipadmit probe ARGS <target's flags> TARGET`, which must exit 0
        // (the answer was the one `--expect` names).
        let expect = |args: &[&str]| {
            let mut args = args.to_vec();
            args.extend(extra.iter().map(String::as_str));
            args.push(&target);
            let out = probe(&args);
            assert!(out.status.success(), "{target}: {}", show(&out));
            out
        };
        let out = expect(&["--ua", UA_LYNC_2013, "--expect", "200"]);
        assert!(
            text(&out.stdout).starts_with("200 OK (REGISTER as \"UCCAPI/15.0.4481.1000"),
            "{}",
            show(&out)
        );

        let out = expect(&[
            "--method",
            "INVITE",
            "--to",
            WORKFLOW,
            "--ua",
            UA_LYNC_MOBILE,
            "--expect",
            "403",
        ]);
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("403 Forbidden (INVITE as \"RTCC/7.0.0.0"),
            "{}",
            show(&out)
        );
        assert!(
            stdout.contains(
                "\nWarning: 399 sipadmit \"The Response Group does not support this client: \
                 Lync / Skype for Business mobile\"\n"
            ),
            "{}",
            show(&out)
        );

        // The desktop client reaches the workflow (Kamailio's 486), and the
        // probe's ACK ends Kamailio's INVITE transaction.
        let out = expect(&[
            "--method",
            "INVITE",
            "--to",
            WORKFLOW,
            "--ua",
            UA_LYNC_2013,
            "--expect",
            "486",
        ]);
        assert!(
            text(&out.stdout).starts_with("486 Workflow Reached"),
            "{}",
            show(&out)
        );
    }
    assert!(
        kam.wait_for_log("ACK-CHECK", Duration::from_secs(3)),
        "{}",
        kam.log()
    );
    assert!(kam.log_lines("ACK-NO-TRANS").is_empty(), "{}", kam.log());
    assert_eq!(kam.log_lines("WORKFLOW-REACHED").len(), 3, "{}", kam.log());
    // Every probe was decided and recorded by sipadmit.
    let records = proxy.records();
    let refused = records
        .iter()
        .filter(|r| r["method"] == "INVITE" && r["client"] == "lync-mobile" && r["status"] == 403)
        .count();
    assert_eq!(refused, 3, "{records:#?}");
}

#[test]
fn expect_json_and_ms_diagnostics() {
    let Some((_kam, proxy, _dir, _files)) = setup() else {
        return;
    };
    let target = format!("udp:{}", proxy.udp);
    // A mobile agent's REGISTER: the Lync-style reject of [policy.agent_registration].
    let out = probe(&[
        "--to",
        "sip:agent-7@contoso.com",
        "--ua",
        UA_LYNC_MOBILE,
        "--expect",
        "403",
        "--json",
        &target,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one object: {stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["status"], 403);
    assert_eq!(json["matched"], true);
    assert_eq!(json["method"], "REGISTER");
    assert_eq!(json["target"], target);
    assert_eq!(
        json["warning"][0],
        "310 lcs.microsoft.com \"You are currently not using the recommended version of the client\""
    );
    assert!(
        json["ms_diagnostics"][0]
            .as_str()
            .unwrap()
            .starts_with("17002;reason="),
        "{json}"
    );

    // The wrong status: exit 1, and stderr says what came instead.
    let out = probe(&[
        "--ua",
        UA_LYNC_MOBILE,
        "--to",
        "sip:agent-7@contoso.com",
        "--expect",
        "200",
        &target,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        text(&out.stderr),
        format!("sipadmit: probe: expected 200, {target} answered 403 Forbidden\n")
    );
    assert!(
        text(&out.stdout).starts_with("403 Forbidden"),
        "{}",
        show(&out)
    );

    // OPTIONS without a User-Agent, relayed to Kamailio (no user part: 200).
    let host = proxy.udp.to_string();
    let out = probe(&[
        "--method",
        "OPTIONS",
        "--ua",
        "",
        "--to",
        &format!("sip:{host}"),
        &target,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text(&out.stdout).starts_with("200 OK (OPTIONS without User-Agent"),
        "{}",
        show(&out)
    );
}

#[test]
fn no_answer_nothing_listening_and_untrusted_certificates_fail_clearly() {
    // A UDP socket that never answers: the probe retransmits, then gives up.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("udp:{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = probe(&["--timeout", "1.2", "--json", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the probe gave up"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "sipadmit: probe: {target}: no final answer to the REGISTER within 1200 ms (sent 2 time(s), nothing came back)"
        )),
        "{stderr}"
    );
    let json: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(
        (json["status"].clone(), json["matched"].clone()),
        (Value::Null, false.into())
    );
    let mut buf = [0u8; 2048];
    let (n, _) = silent.recv_from(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"REGISTER sip:"),
        "the request arrived"
    );

    // Nothing listening on a TCP port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = probe(&[&format!("tcp:127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains(": cannot connect: Connection refused"),
        "{}",
        show(&out)
    );

    // Nothing listening on a UDP port: each datagram draws an ICMP port
    // unreachable, and the probe still resends on RFC 3261 timers only (at
    // 0, 0.5 and 1.5 s within 2 s), never once per report (a flood).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("udp:127.0.0.1:{port}");
    let out = probe(&["--timeout", "2", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "sipadmit: probe: {target}: no final answer to the REGISTER within 2000 ms (sent 3 time(s), 3 answered by ICMP port unreachable: nothing listens there)"
        )),
        "{}",
        show(&out)
    );

    // A TLS listener whose certificate does not chain to --ca.
    let Some((_kam, proxy, _dir, files)) = setup() else {
        return;
    };
    let target = format!("tls:{}", proxy.tls.unwrap());
    let out = probe(&["--ca", files.other_ca.to_str().unwrap(), &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains(": TLS handshake failed: certificate not accepted: unable to get local issuer certificate"),
        "{}",
        show(&out)
    );
    // The right root, the wrong name.
    let out = probe(&[
        "--ca",
        files.ca.to_str().unwrap(),
        "--tls-name",
        "wrong.example",
        &target,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("certificate not accepted: hostname mismatch"),
        "{}",
        show(&out)
    );
    // A bad command line is named by its flag.
    let out = probe(&["--to", "helpdesk", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("--to \"helpdesk\": expected a sip: or sips: URI"),
        "{}",
        show(&out)
    );
}

/// A UDP fake target (no Kamailio needed): each request it receives is
/// answered with the next of `answers`, built from the request's
/// Via/From/To/Call-ID/CSeq by `answer(request, n)`.
fn udp_fake(
    answers: usize,
    answer: impl Fn(&[u8], usize) -> Vec<Vec<u8>> + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let target = format!("udp:{}", socket.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        for n in 0..answers {
            let (len, from) = socket.recv_from(&mut buf).unwrap();
            for datagram in answer(&buf[..len], n) {
                socket.send_to(&datagram, from).unwrap();
            }
        }
    });
    (target, server)
}

/// `SIP/2.0 <status>` answering `request`, with `extra` header lines.
fn sip_reply(request: &[u8], status: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = [b"SIP/2.0 ", status, b"\r\n"].concat();
    for line in request.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|name| line.starts_with(name.as_bytes()))
        {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    [&out[..], extra, b"Content-Length: 0\r\n\r\n"].concat()
}

#[test]
fn the_targets_control_characters_and_non_sip_answers_are_shown_escaped() {
    let (target, server) = udp_fake(2, |request, n| match n {
        0 => vec![sip_reply(
            request,
            b"403 Forb\0idden\x1b[31m",
            b"Warning: 399 fake \"\x1b]0;pwned\x07\x1b[2J\"\r\n",
        )],
        _ => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()],
    });
    let terminal_safe = |bytes: &[u8]| !bytes.iter().any(|&b| b < 0x20 && b != b'\n');
    let out = probe(&["--expect", "200", "--timeout", "3", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        terminal_safe(&out.stdout) && terminal_safe(&out.stderr),
        "{}",
        show(&out)
    );
    assert!(
        text(&out.stdout).starts_with("403 Forb\\u{0}idden\\u{1b}[31m (REGISTER")
            && text(&out.stdout)
                .contains("\nWarning: 399 fake \"\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\"\n"),
        "{}",
        show(&out)
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "sipadmit: probe: expected 200, {target} answered 403 Forb\\u{{0}}idden\\u{{1b}}[31m\n"
        )
    );
    // An HTTP answer is named, not "nothing came back".
    let out = probe(&["--timeout", "0.3", &target]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        text(&out.stderr),
        format!(
            "sipadmit: probe: {target}: no final answer to the REGISTER within 300 ms (sent 1 \
             time(s), received 1 message that is not a SIP response (38 bytes \
             \"HTTP/1.1 200 OK\\r\\nContent-Length:...\"))\n"
        )
    );
    server.join().unwrap();
}

#[test]
fn tls_files_are_checked_before_connecting_and_tls_flags_need_a_tls_target() {
    // A listener the probe must not connect to when a file is bad.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = format!("tls:{addr}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a pem\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (args, stderr) in [
        (
            vec!["--ca", missing.to_str().unwrap()],
            format!(
                "sipadmit: --ca {}: cannot read it: No such file or directory (os error 2)\n",
                missing.display()
            ),
        ),
        (
            vec!["--ca", junk.to_str().unwrap()],
            format!(
                "sipadmit: --ca {}: no PEM certificate in it (it is not a PEM file)\n",
                junk.display()
            ),
        ),
        (
            vec![
                "--cert",
                junk.to_str().unwrap(),
                "--key",
                missing.to_str().unwrap(),
            ],
            format!(
                "sipadmit: --cert {}: no PEM certificate in it (it is not a PEM file)\n",
                junk.display()
            ),
        ),
    ] {
        let mut args = args;
        args.extend(["--json", &tls]);
        let out = probe(&args);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert_eq!(text(&out.stderr), stderr, "{}", show(&out));
        assert!(out.stdout.is_empty(), "{}", show(&out));
    }
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the probe connected before reading its files"
    );

    // TLS flags with a udp: or tcp: target: ignored (their files not
    // read), never silently: the probe goes on and says so.
    for (flag, value, target) in [
        ("--ca", junk.to_str().unwrap(), format!("udp:{addr}")),
        ("--tls-name", "sip.contoso.com", format!("tcp:{addr}")),
    ] {
        let out = probe(&["--timeout", "1", flag, value, &target]);
        assert!(
            text(&out.stderr).starts_with(&format!(
                "sipadmit: warning: {flag} applies to tls: targets only: ignored for {target}\n"
            )),
            "{}",
            show(&out)
        );
        assert!(
            !text(&out.stderr).contains("cannot read it"),
            "{}",
            show(&out)
        );
    }
}
