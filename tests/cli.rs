//! The `sipadmit` binary as operators' scripts use it: exit codes, output
//! formats, and `run` stopping cleanly on SIGTERM and SIGINT.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sipadmit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipadmit"))
}

/// Run `sipadmit args` expecting it to stop by itself (a `run` refused at
/// start): its output, or a panic (the process killed) if it still runs
/// after 10 s, so that a refusal that regressed fails the test instead of
/// hanging it.
fn refused_within_10_s(args: &[&str]) -> std::process::Output {
    let mut child = sipadmit()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipadmit {args:?} still ran after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_config_exit_codes_and_key_paths() {
    let ok = sipadmit()
        .args(["check-config", "--config", "config/sipadmit.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[response_group]\nworkflows = [\"helpdesk\"]\n[limits]\nmax_connections = 0\n",
    )
    .unwrap();
    let out = sipadmit()
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("response_group.workflows[0]"), "{err}");
    assert!(err.contains("limits.max_connections"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

/// The shipped config works wherever an admin copies it (as to
/// /etc/sipadmit/): it names no file relative to itself.
#[test]
fn the_shipped_config_copied_alone_elsewhere_checks_and_classifies() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sipadmit.toml");
    std::fs::copy("config/sipadmit.toml", &copy).unwrap();
    let out = sipadmit()
        .args(["check-config", "--config", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sipadmit()
        .args(["classify", "--config", copy.to_str().unwrap()])
        .arg("UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lync-2013"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn classify_json_from_arguments_and_stdin() {
    let out = sipadmit()
        .args([
            "classify",
            "--json",
            "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "user_agent",
        "client",
        "product",
        "version",
        "category",
        "support",
        "roles",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["client"], "response-group-service");
    assert_eq!(v["support"], "service");

    let mut child = sipadmit()
        .args(["classify", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)\nfriendly-scanner\n\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["client"], "lync-2010");
    assert_eq!(lines[0]["version"], "4.0.7577.314");
    assert_eq!(lines[1]["support"], "scanner");
    assert_eq!(lines[2]["client"], "missing");

    let table = sipadmit()
        .args([
            "classify",
            "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("CLIENT"), "{text}");
    assert!(text.contains("lync-2013"), "{text}");

    // A User-Agent's control characters are shown, not acted on.
    let table = sipadmit()
        .args(["classify", "Odd\tPhone\x1b[31m/1.0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("Odd\\u{9}Phone\\u{1b}[31m/1.0"), "{text}");
    assert!(!text.contains(['\t', '\x1b']), "{text}");
}

fn run_and_signal(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("min.toml");
    // Only the two keys that are enough to run (docs/configuration.md); the rest on the command line.
    std::fs::write(
        &config,
        "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\napplication_user_agents = [\"Response_Group_Service\"]\n",
    )
    .unwrap();
    // Free for TCP too: run listens on both (a CI run once found the TCP
    // side of a free UDP port taken).
    let port = common::external::free_udp_tcp_port_on([127, 0, 0, 1].into());
    let log = dir.path().join("decisions.jsonl");
    let mut child = sipadmit()
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("udp:127.0.0.1:{port}")])
        .args(["--listen", &format!("tcp:127.0.0.1:{port}")])
        .args(["--upstream", "udp:127.0.0.1:9", "--mode", "monitor"])
        .args(["--decision-log", log.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it accepts TCP connections, then signal it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sipadmit did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "sipadmit did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "exit {exit:?}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(log.exists(), "decision log opened");
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    run_and_signal("-TERM");
}

#[test]
fn run_stops_cleanly_on_sigint() {
    run_and_signal("-INT");
}

#[test]
fn run_without_upstream_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("min.toml");
    std::fs::write(&config, "[proxy]\nlisten = [\"udp:127.0.0.1:0\"]\n").unwrap();
    let out = sipadmit()
        .args(["run", "--config", config.to_str().unwrap()])
        .args([
            "--decision-log",
            dir.path().join("d.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set proxy.upstream or pass --upstream"),
        "{err}"
    );
}

#[test]
fn a_bad_command_line_value_is_named_by_its_flag() {
    let out = sipadmit()
        .args(["run", "--config", "config/sipadmit.toml"])
        .args([
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tls:127.0.0.1:5061",
        ])
        .args(["--upstream", "udp:nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // A tls: listener is valid, and needs the [tls] certificate.
    assert!(
        err.contains("tls.certificate: required: --listen[1] is a tls: listener"),
        "{err}"
    );
    assert!(err.contains("--upstream: \"nowhere\""), "{err}");
    assert!(!err.contains("proxy.listen"), "{err}");
    assert!(!err.contains("proxy.upstream"), "{err}");
}

/// How many OS error messages (`... (os error N)`) `stderr` holds.
fn os_error_count(stderr: &str) -> usize {
    stderr.matches("(os error").count()
}

#[test]
fn a_missing_config_file_gives_the_os_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", missing],
        vec!["classify", "--config", missing, "x"],
        vec!["run", "--config", missing],
    ] {
        let out = refused_within_10_s(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing.toml: cannot read"), "{args:?}: {err}");
        assert!(err.contains("(os error 2)"), "{args:?}: {err}");
        assert_eq!(os_error_count(&err), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_missing_catalog_gives_the_os_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[catalog]\npath = \"nowhere.toml\"\n").unwrap();
    let out = sipadmit()
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("catalog.path: "), "{err}");
    assert!(err.contains("nowhere.toml"), "{err}");
    assert_eq!(os_error_count(&err), 1, "{err}");
}

#[test]
fn a_busy_listen_port_gives_the_os_message_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = sipadmit()
        .args(["run", "--config", "config/sipadmit.toml"])
        .args(["--listen", &format!("tcp:127.0.0.1:{port}")])
        .args(["--upstream", "tcp:127.0.0.1:9"])
        .args([
            "--decision-log",
            dir.path().join("d.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on tcp:127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(os_error_count(&err), 1, "{err}");
}

/// The product count the README states: "(`config/clients.toml`, N products".
fn readme_product_count() -> usize {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let marker = "(`config/clients.toml`, ";
    let start = readme
        .find(marker)
        .expect("the README states the catalog size")
        + marker.len();
    let rest = &readme[start..];
    let digits = rest.split(' ').next().unwrap();
    assert!(
        rest[digits.len()..].starts_with(" products"),
        "README: {marker}{}",
        &rest[..rest.len().min(30)]
    );
    digits.parse().unwrap()
}

#[test]
fn readme_catalog_count_matches_check_config() {
    let catalog = sipadmit::classify::Catalog::load("config/clients.toml".as_ref()).unwrap();
    let products = catalog.products().count();
    assert_eq!(
        readme_product_count(),
        products,
        "README.md states a different number of products than config/clients.toml holds"
    );
    let out = sipadmit()
        .args(["check-config", "--config", "config/sipadmit.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("({products} products in catalog ")),
        "{stdout}"
    );
}

/// `check-config` and `run` of `config` both exit 1, saying `expected`.
fn check_config_and_run_refuse(config: &std::path::Path, expected: &str) {
    let config = config.to_str().unwrap();
    for command in ["check-config", "run"] {
        let out = refused_within_10_s(&[command, "--config", config]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains(expected), "{command}: {err}");
    }
}

/// An address of this host other than a loopback one, or none when the
/// host has no route out (found without sending anything: a UDP socket's
/// connect only picks the source address).
fn a_non_loopback_address_of_this_host() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// An upstream at this host's own (non-loopback) address, on the port of
/// a `0.0.0.0` listener, is sipadmit itself: `check-config` and `run`
/// refuse it and say why, instead of looping every request back to
/// itself while its probes call the registrar healthy.
#[test]
fn an_upstream_at_this_hosts_own_address_is_refused_by_check_config_and_run() {
    let Some(ip) = a_non_loopback_address_of_this_host() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let port = common::external::free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("self.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nlisten = [\"udp:0.0.0.0:{port}\"]\nupstream = \"udp:{ip}:{port}\"\n"),
    )
    .unwrap();
    check_config_and_run_refuse(
        &config,
        &format!(
            "self.toml: 1 problem(s):\n  proxy.upstream: udp:{ip}:{port} is an address of this host, and the listener udp:0.0.0.0:{port} takes it"
        ),
    );
    // The same port on an address this host does not have is a registrar.
    std::fs::write(
        dir.path().join("other.toml"),
        format!(
            "[proxy]\nlisten = [\"udp:0.0.0.0:{port}\"]\nupstream = \"udp:203.0.113.254:{port}\"\n"
        ),
    )
    .unwrap();
    let out = sipadmit()
        .args(["check-config", "--config"])
        .arg(dir.path().join("other.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A HEP collector at this host's own (non-loopback) address, on the port
/// of a `0.0.0.0` SIP listener, is sipadmit itself: `check-config` and
/// `run` refuse it and say why, instead of mirroring the copies that come
/// back as SIP messages again and again.
#[test]
fn a_hep_collector_at_this_hosts_own_address_is_refused_by_check_config_and_run() {
    let Some(ip) = a_non_loopback_address_of_this_host() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let port = common::external::free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, collector_port: u16| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = [\"udp:0.0.0.0:{port}\"]\nupstream = \"udp:203.0.113.254:5060\"\n\
                 [hep]\ncollector = \"udp:{ip}:{collector_port}\"\n"
            ),
        )
        .unwrap();
        path
    };
    check_config_and_run_refuse(
        &write("self.toml", port),
        &format!(
            "self.toml: 1 problem(s):\n  hep.collector: udp:{ip}:{port} is an address of this host, and the SIP listener udp:0.0.0.0:{port} takes it"
        ),
    );
    // With the upstream there too, both are listed, each with its key.
    let both = dir.path().join("both.toml");
    let second = common::external::free_udp_port();
    std::fs::write(
        &both,
        format!(
            "[proxy]\nlisten = [\"udp:0.0.0.0:{port}\", \"udp:0.0.0.0:{second}\"]\n\
             upstream = \"udp:{ip}:{second}\"\n[hep]\ncollector = \"udp:{ip}:{port}\"\n"
        ),
    )
    .unwrap();
    let out = refused_within_10_s(&["check-config", "--config", both.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("both.toml: 2 problem(s):\n  proxy.upstream: "),
        "{err}"
    );
    assert!(err.contains("\n  hep.collector: "), "{err}");
    // Another port of this host is a collector.
    let other = write("other.toml", 9060);
    let out = sipadmit()
        .args(["check-config", "--config"])
        .arg(other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
