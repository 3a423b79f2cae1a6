//! Packaging for operators: `config/sipadmit.service` and
//! `config/sipadmit.logrotate` checked by the tools that read them, a real
//! logrotate run against a running sipadmit, and the documented Kamailio
//! snippet checked against the config the end-to-end tests run.
//!
//! Needs `systemd-analyze` (Debian `systemd`; it reads unit files offline,
//! systemd need not be PID 1) and `logrotate` (Debian `logrotate`). Under
//! `CI=true` a missing tool fails the test; elsewhere the test prints why it
//! skips. Loopback only; every wait is bounded; no test asserts how long
//! anything took.

mod common {
    pub mod binary;
    pub mod udp_registrar;
}

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::binary::{Sipadmit, BOUND};
use common::udp_registrar::Registrar;
use sipadmit::config::{Config, Overrides};

/// Where the unit expects the binary; tests point it at the one Cargo built.
const INSTALLED_BINARY: &str = "/usr/local/bin/sipadmit";

/// The directory of the decision log in the shipped logrotate file.
const INSTALLED_LOG_DIR: &str = "/var/log/sipadmit/";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `tool` from PATH (or /usr/sbin, /sbin). Missing: panics under CI=true,
/// else prints why the test skips and returns `None`.
fn require(tool: &str, debian_package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{tool} is required by this test but is not installed (CI=true); \
             install the Debian package {debian_package} (.ci/run does)"
        );
        eprintln!("skipping: {tool} not installed (Debian package {debian_package})");
    }
    found
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// === the systemd unit ===

fn shipped_unit() -> String {
    read(&repo("config/sipadmit.service"))
}

/// The unit with its binary path pointing at the binary Cargo built
/// (`systemd-analyze verify` checks that ExecStart's program exists).
fn render_unit(text: &str, dir: &Path) -> PathBuf {
    assert!(
        text.contains(INSTALLED_BINARY),
        "ExecStart names {INSTALLED_BINARY}"
    );
    let rendered = text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_sipadmit"));
    let path = dir.join("sipadmit.service");
    write_file(&path, &rendered, 0o644);
    path
}

/// `(section, key, value)` of every setting, in order.
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line:?}"));
        settings.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    settings
}

/// What `systemd-analyze verify` says about the unit at `path`: its exit
/// status and every line naming the unit (unknown keys are only warnings,
/// exit 0, so the lines count as problems too).
fn verify_problems(analyze: &Path, path: &Path) -> Vec<String> {
    let out = Command::new(analyze)
        .arg("verify")
        .arg(path)
        .output()
        .unwrap();
    let text = output_text(&out);
    let mut problems: Vec<String> = text
        .lines()
        .filter(|l| l.contains("sipadmit.service"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        problems.push(format!("exit {:?}: {text}", out.status.code()));
    }
    problems
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = require("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = render_unit(&shipped_unit(), dir.path());
    let problems = verify_problems(&analyze, &unit);
    assert!(problems.is_empty(), "{problems:#?}");

    // The check sees a misplaced key (systemd only warns about it).
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let misplaced = shipped_unit().replace("[Service]\n", "[Service]\nNoSuchSetting=yes\n");
    let problems = verify_problems(&analyze, &render_unit(&misplaced, &broken));
    assert!(
        problems.iter().any(|p| p.contains("NoSuchSetting")),
        "{problems:#?}"
    );
}

/// systemd waits for a drain: the unit's stop timeout is longer than the
/// shipped `limits.drain_secs`, the answers given after it and the decision
/// log's closing deadline.
#[test]
fn the_units_stop_timeout_outlasts_a_drain() {
    let timeout = unit_settings(&shipped_unit())
        .into_iter()
        .find(|(_, k, _)| k == "TimeoutStopSec")
        .expect("TimeoutStopSec")
        .2;
    let timeout: u64 = timeout
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("TimeoutStopSec={timeout}: seconds expected"));
    let config = Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sipadmit.toml"),
        &Overrides::default(),
    )
    .unwrap();
    let drain = config.settings.limits.drain.as_secs();
    let closing = sipadmit::observe::decision_log::SHUTDOWN_DEADLINE.as_secs_f64();
    let beyond = sipadmit::drain::BEYOND_THE_LIMIT.as_secs_f64();
    assert!(drain > 0, "the shipped config drains");
    assert!(
        timeout as f64 > drain as f64 + beyond + closing,
        "TimeoutStopSec={timeout}s, drain_secs={drain}, answers after it {beyond}s, log closing {closing}s"
    );
}

/// `systemd-analyze security --offline` rates the sandbox; 2.0 and below
/// is the best band systemd shows ("OK"), and the unit must stay there.
#[test]
fn the_unit_sandbox_keeps_its_exposure_low() {
    let Some(analyze) = require("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = render_unit(&shipped_unit(), dir.path());
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = output_text(&out);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(out.status.success(), "{overall}\n{text}");
    eprintln!("{overall}");
}

#[test]
fn the_unit_holds_the_operators_settings() {
    let text = shipped_unit();
    let settings = unit_settings(&text);
    let value = |section: &str, key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    for (key, expected) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/local/bin/sipadmit run --config /etc/sipadmit/sipadmit.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        // The static group of the install that may read the flow secret
        // file: the transient user cannot own it.
        ("SupplementaryGroups", "sipadmit"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LogsDirectory", "sipadmit"),
        ("ConfigurationDirectory", "sipadmit"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(value("Service", key), [expected], "[Service] {key}");
    }
    assert!(value("Service", "SystemCallFilter").contains(&"@system-service"));
    assert_eq!(value("Install", "WantedBy"), ["multi-user.target"]);

    // The config it starts with is in ConfigurationDirectory, and the log
    // logrotate rotates is in LogsDirectory.
    let exec_start = value("Service", "ExecStart")[0];
    assert!(
        exec_start.contains(" --config /etc/sipadmit/"),
        "{exec_start}"
    );
    assert!(
        shipped_logrotate()
            .lines()
            .any(|l| l.starts_with(INSTALLED_LOG_DIR) && l.ends_with('{')),
        "the logrotate file rotates a log in {INSTALLED_LOG_DIR}"
    );

    // One descriptor per connection: room for twice the shipped limit.
    let shipped = Config::load(&repo("config/sipadmit.toml"), &Overrides::default()).unwrap();
    let max_connections = shipped.settings.limits.max_connections;
    let nofile: usize = value("Service", "LimitNOFILE")[0].parse().unwrap();
    assert!(
        nofile >= 2 * max_connections,
        "LimitNOFILE={nofile} for max_connections = {max_connections}"
    );

    // Every setting is explained: each run of settings follows a comment.
    let mut commented = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            commented = true;
        } else if line.is_empty() || line.starts_with('[') {
            commented = false;
        } else {
            assert!(commented, "no comment explains {line:?}");
        }
    }
}

// === the logrotate file ===

fn shipped_logrotate() -> String {
    read(&repo("config/sipadmit.logrotate"))
}

/// The logrotate file with its log directory moved to `logs`, written to
/// `dir/logrotate.conf` (mode 0644: logrotate ignores writable configs).
fn render_logrotate(text: &str, logs: &Path, dir: &Path) -> PathBuf {
    let rendered = text.replace(INSTALLED_LOG_DIR, &format!("{}/", logs.display()));
    let path = dir.join("logrotate.conf");
    write_file(&path, &rendered, 0o644);
    path
}

/// `logrotate --debug -f`: what it would do, and every `error:` line.
fn logrotate_plan(logrotate: &Path, conf: &Path, state: &Path) -> (String, Vec<String>) {
    let out = Command::new(logrotate)
        .args(["--debug", "-f", "-s"])
        .arg(state)
        .arg(conf)
        .output()
        .unwrap();
    let text = output_text(&out);
    let mut errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("error:"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        errors.push(format!("exit {:?}", out.status.code()));
    }
    (text, errors)
}

#[test]
fn logrotate_debug_accepts_the_file() {
    let Some(logrotate) = require("logrotate", "logrotate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    std::fs::write(&log, "{}\n").unwrap();
    let conf = render_logrotate(&shipped_logrotate(), dir.path(), dir.path());
    let state = dir.path().join("state");
    let (plan, errors) = logrotate_plan(&logrotate, &conf, &state);
    assert!(errors.is_empty(), "{errors:#?}\n{plan}");
    let log = log.display();
    for step in [
        format!("rotating pattern: {log}"),
        format!("renaming {log} to {log}.1"),
        "running postrotate script".to_owned(),
        "systemctl reload sipadmit.service".to_owned(),
    ] {
        assert!(plan.contains(&step), "no {step:?} in:\n{plan}");
    }

    // The check sees an option logrotate does not know.
    let bad = shipped_logrotate().replace("    daily\n", "    daily\n    dayly\n");
    let conf = render_logrotate(&bad, dir.path(), dir.path());
    let (plan, errors) = logrotate_plan(&logrotate, &conf, &state);
    assert!(errors.iter().any(|e| e.contains("dayly")), "{plan}");
}

// === the binary ===

/// `sipadmit run` on UDP port 0 of 127.0.0.1 relaying to `registrar`,
/// with `decision_log`; its UDP listener's address.
fn start(dir: &Path, registrar: &Registrar, decision_log: &Path) -> (Sipadmit, SocketAddr) {
    let config = dir.join("sipadmit.toml");
    std::fs::write(
        &config,
        "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n",
    )
    .unwrap();
    common::binary::sipadmit_on_udp(
        &config,
        &format!("udp:{}", registrar.addr),
        &["--decision-log", decision_log.to_str().unwrap()],
    )
}

fn register(n: usize, client: SocketAddr) -> String {
    format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {client};branch=z9hG4bK-rot-{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:user{n}@contoso.com>;tag=f{n}\r\nTo: <sip:user{n}@contoso.com>\r\nCall-ID: rot-{n}@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{n}@{client}>\r\nExpires: 60\r\nUser-Agent: UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Send REGISTERs `range` through the proxy; panics unless each gets its 200.
fn register_all(proxy: SocketAddr, range: std::ops::Range<usize>) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    let me = client.local_addr().unwrap();
    let mut waiting: std::collections::BTreeSet<usize> = range.clone().collect();
    for n in range {
        client.send_to(register(n, me).as_bytes(), proxy).unwrap();
    }
    let mut buf = vec![0u8; 65536];
    while !waiting.is_empty() {
        let (len, _) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("REGISTERs {waiting:?} unanswered ({e})"));
        let response = String::from_utf8_lossy(&buf[..len]);
        assert!(response.starts_with("SIP/2.0 200 "), "{response}");
        let n = response
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Call-ID: rot-"))
            .and_then(|v| v.strip_suffix("@test"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no Call-ID in {response}"));
        waiting.remove(&n);
    }
}

/// The REGISTER numbers of the records in `text`, each a whole JSON record.
/// The numbers of the REGISTERs a log holds, in ascending order (several
/// workers write their records in the order they finish them).
fn register_numbers(text: &str) -> Vec<usize> {
    let mut numbers: Vec<usize> = text
        .lines()
        .map(|line| {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            let call_id = record["call_id"].as_str().unwrap();
            call_id
                .strip_prefix("rot-")
                .and_then(|v| v.strip_suffix("@test"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{call_id}"))
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Wait (bounded) until `check` holds.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn records_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// The shipped logrotate file moves the decision log of a running sipadmit
/// away twice; its postrotate (run with a stand-in `systemctl` whose
/// `reload` is the unit's ExecReload, aimed at the test's child) makes
/// sipadmit open a new file at the configured path. The rotated files, the
/// older one gzipped, and the new file hold every record once, in order,
/// and `sipadmit report` reads them all.
#[test]
fn logrotate_moves_the_log_and_sipadmit_writes_a_new_one() {
    let Some(logrotate) = require("logrotate", "logrotate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // LogsDirectory= with DynamicUser=: /var/log/sipadmit is a link to
    // /var/log/private/sipadmit, a 0700 directory.
    let private = dir.path().join("private");
    std::fs::create_dir_all(private.join("sipadmit")).unwrap();
    for d in [&private, &private.join("sipadmit")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let logs = dir.path().join("sipadmit");
    std::os::unix::fs::symlink(private.join("sipadmit"), &logs).unwrap();
    let log = logs.join("decisions.log");

    let registrar = Registrar::start();
    let (mut sipadmit, udp) = start(dir.path(), &registrar, &log);

    // systemctl as the postrotate script calls it: is-active says yes,
    // reload runs the unit's ExecReload with $MAINPID = the child's pid.
    let pid = sipadmit.child.id();
    assert!(pid > 0);
    let exec_reload = unit_settings(&shipped_unit())
        .into_iter()
        .find(|(_, k, _)| k == "ExecReload")
        .unwrap()
        .2
        .replace("$MAINPID", &pid.to_string());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("systemctl.calls");
    write_file(
        &bin.join("systemctl"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\ncase \"$*\" in\n  \"--quiet is-active sipadmit.service\") exit 0 ;;\n  \"reload sipadmit.service\") exec {exec_reload} ;;\nesac\nexit 1\n",
            calls = calls.display()
        ),
        0o755,
    );
    let conf = render_logrotate(&shipped_logrotate(), &logs, dir.path());
    let state = dir.path().join("logrotate.state");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let rotate = || {
        let out = Command::new(&logrotate)
            .args(["-f", "-s"])
            .arg(&state)
            .arg(&conf)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "logrotate: {}", output_text(&out));
        // Nothing is at the path until sipadmit has reopened it (nocreate).
        wait_until("sipadmit reopened the decision log", || log.exists());
    };

    register_all(udp, 0..20);
    // notifempty: the writer flushes at least every 100 ms.
    wait_until("20 records written", || records_in(&log) == 20);
    rotate();
    register_all(udp, 20..35);
    wait_until("15 records written", || records_in(&log) == 15);
    rotate();
    register_all(udp, 35..45);
    let stderr = sipadmit.terminate();
    let closed = stderr
        .lines()
        .find(|l| l.contains("decision log closed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        closed.split_whitespace().any(|w| w == "written=45"),
        "{closed}"
    );

    // decisions.log.2.gz (compressed at the second rotation), .1 (left
    // plain by delaycompress) and the new decisions.log.
    let oldest = logs.join("decisions.log.2.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&oldest).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(register_numbers(&text), (0..20).collect::<Vec<_>>());
    let previous = logs.join("decisions.log.1");
    assert_eq!(
        register_numbers(&read(&previous)),
        (20..35).collect::<Vec<_>>()
    );
    assert_eq!(register_numbers(&read(&log)), (35..45).collect::<Vec<_>>());
    assert!(!logs.join("decisions.log.1.gz").exists());
    assert_eq!(
        read(&calls),
        "--quiet is-active sipadmit.service\nreload sipadmit.service\n".repeat(2)
    );

    let report = Command::new(env!("CARGO_BIN_EXE_sipadmit"))
        .args(["report", "--json"])
        .args([&oldest, &previous, &log])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", output_text(&report));
    let summary: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(summary["records"], 45, "{summary}");
    assert_eq!(summary["malformed_lines"], 0, "{summary}");
}

// === the registrar documentation ===

/// The Kamailio snippet of docs/registrars/kamailio.md (the code block after
/// the marker comment)
/// is the configuration the end-to-end tests run: every line of it is a
/// line of tests/e2e/kamailio.cfg, in the same order (`...` marks lines left
/// out; indentation is not compared).
#[test]
fn the_documented_kamailio_snippet_is_the_tested_config() {
    let snippet = documented_snippet(
        "docs/registrars/kamailio.md",
        "<!-- snippet: every line is in tests/e2e/kamailio.cfg -->",
    );
    for needed in [
        "modparam(\"registrar\", \"use_path\", 1)",
        "modparam(\"registrar\", \"path_mode\", 1)",
        "modparam(\"registrar\", \"path_check_local\", 0)",
        "if (loose_route()) {",
        "if (!save(\"location\")) {",
        "if (!lookup(\"location\")) {",
    ] {
        assert!(
            snippet.iter().any(|l| l == needed),
            "the snippet shows {needed}"
        );
    }
    let cfg = read(&repo("tests/e2e/kamailio.cfg"));
    assert_lines_in_order(
        &snippet,
        &cfg,
        "docs/registrars/kamailio.md",
        "tests/e2e/kamailio.cfg",
    );
}

/// docs/pool.md's Kamailio dispatcher snippet (the code block after the
/// marker comment) is the configuration tests/pool_failover.rs and
/// tests/pool.rs run: every line of it is a line of
/// tests/e2e/kamailio-dispatcher.cfg, in the same order (`...` marks lines
/// left out; indentation is not compared; the list file's placeholder reads
/// as /etc/kamailio/dispatcher.list).
#[test]
fn the_documented_dispatcher_snippet_is_the_tested_config() {
    let snippet = documented_snippet(
        "docs/pool.md",
        "<!-- snippet: every line is in tests/e2e/kamailio-dispatcher.cfg -->",
    );
    for needed in [
        "modparam(\"tm\", \"fr_timer\", 1000)",
        "modparam(\"dispatcher\", \"flags\", 2)",
        "modparam(\"dispatcher\", \"ds_ping_interval\", 1)",
        "modparam(\"dispatcher\", \"ds_probing_mode\", 1)",
        "modparam(\"dispatcher\", \"ds_probing_threshold\", 1)",
        "if (!ds_select_dst(\"1\", \"4\")) {",
        "t_on_failure(\"POOL_FAILOVER\");",
        "failure_route[POOL_FAILOVER] {",
        "if ((t_branch_timeout() && !t_branch_replied())",
        "|| (t_check_status(\"503\") && $T_rpl($hdr(Server)) =~ \"^sipadmit/\")) {",
        "ds_mark_dst(\"ip\");",
        "if (ds_next_dst()) {",
    ] {
        assert!(
            snippet.iter().any(|l| l.starts_with(needed)),
            "the snippet shows {needed}"
        );
    }
    let cfg = read(&repo("tests/e2e/kamailio-dispatcher.cfg"))
        .replace("@DISPATCHER_LIST@", "/etc/kamailio/dispatcher.list");
    assert_lines_in_order(
        &snippet,
        &cfg,
        "docs/pool.md",
        "tests/e2e/kamailio-dispatcher.cfg",
    );
}

/// The lines (trimmed, blank and `...` lines left out) of the first code
/// block after `marker` in the page at `page`.
fn documented_snippet(page: &str, marker: &str) -> Vec<String> {
    let text = read(&repo(page));
    let after = text
        .split_once(marker)
        .unwrap_or_else(|| panic!("no {marker} in {page}"))
        .1;
    let block = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.split_once("```"))
        .unwrap_or_else(|| panic!("a code block after the marker in {page}"))
        .0;
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "...")
        .map(str::to_owned)
        .collect()
}

/// Every line of `snippet` is a line of `cfg` (trimmed), in the same order.
fn assert_lines_in_order(snippet: &[String], cfg: &str, page: &str, cfg_name: &str) {
    let mut cfg_lines = cfg.lines().map(str::trim);
    for line in snippet {
        assert!(
            cfg_lines.any(|l| l == line),
            "{page} line {line:?} is not in {cfg_name} (in this order)"
        );
    }
}
