//! Harness for end-to-end tests with real external components: Kamailio 5.6 as the
//! upstream registrar and SIPp 3.6 as clients and agents, all on loopback. Kamailio can
//! also listen for TLS ([`KamailioOptions::tls`], Debian `kamailio-tls-modules`), with
//! certificates from `tests/common/tls.rs`, optionally requiring client certificates.
//!
//! Include it from an integration test either through `tests/common/mod.rs`
//! (`pub mod external;`) and `mod common;`, or without a `mod.rs`:
//!
//! ```ignore
//! mod common {
//!     pub mod external;
//! }
//! use common::external::{Kamailio, KamailioOptions, Sipp};
//!
//! #[test]
//! fn lync_registers() {
//!     let Some(kam) = Kamailio::try_start(KamailioOptions::default()) else { return };
//!     let out = Sipp::new("register.xml")
//!         .remote(kam.udp_addr())
//!         .user("alice")
//!         .expect_status(200)
//!         .run_with_timeout(Duration::from_secs(10));
//!     out.assert_success();
//! }
//! ```
//!
//! Rules kept here: every address is 127.0.0.1 or ::1; every process is started in its own
//! process group and killed (group-wide, by its id) on drop; every wait has a deadline.
//! Set `SIPADMIT_E2E_KEEP=1` to keep the temporary directories (configs, logs, SIPp
//! traces) for debugging; their paths are printed to stderr.
//!
//! Binaries are looked up on `PATH`, then in `/usr/sbin` and `/sbin`; override with
//! `SIPADMIT_KAMAILIO_BIN` / `SIPADMIT_SIPP_BIN`. When a binary is missing the test is
//! skipped, except with `CI=true` where it fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Loopback IPv4, the address every component of these tests uses by default.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// User-Agent of a Lync 2013 desktop client (supported by Response Group).
pub const UA_LYNC_2013: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
/// User-Agent of a Lync 2013 mobile client through UCWA (not supported by Response Group).
pub const UA_LYNC_MOBILE: &str =
    "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)";
/// User-Agent of the Response Group application itself.
pub const UA_RESPONSE_GROUP: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";
/// Request-URI user of the workflow Kamailio answers itself (`486 Workflow Reached`).
pub const WORKFLOW_USER: &str = "helpdesk";
/// Reason phrase of the workflow's distinctive final response.
pub const WORKFLOW_REASON: &str = "Workflow Reached";

/// `tests/e2e` in the source tree.
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// `tests/e2e/scenarios/<name>`, or `name` itself when it is an absolute path.
pub fn scenario_path(name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        e2e_dir().join("scenarios").join(name)
    }
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

fn keep_dirs() -> bool {
    std::env::var("SIPADMIT_E2E_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Finds an external binary. Missing: panics when `CI=true` (the test must fail in CI),
/// otherwise prints `skipping: <tool> not installed` and returns `None`.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = find_tool(name) {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "{name} is required by this test but is not installed (CI=true); \
             install it (Debian: kamailio / sip-tester) or set SIPADMIT_{}_BIN",
            name.to_ascii_uppercase()
        );
    }
    eprintln!("skipping: {name} not installed");
    None
}

/// Looks `name` up in `SIPADMIT_<NAME>_BIN`, `PATH`, `/usr/sbin`, `/sbin`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let var = format!(
        "SIPADMIT_{}_BIN",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Some(p) = std::env::var_os(&var).map(PathBuf::from) {
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, drop).
pub fn free_udp_port() -> u16 {
    free_udp_port_on(LOOPBACK)
}

/// A UDP port on `ip` (127.0.0.1 or ::1) that was free a moment ago.
pub fn free_udp_port_on(ip: IpAddr) -> u16 {
    assert!(ip.is_loopback(), "e2e tests use loopback only, not {ip}");
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port on loopback")
        .port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((LOOPBACK, 0))
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral TCP port on loopback")
        .port()
}

/// A port free for both UDP and TCP on 127.0.0.1 (what Kamailio listens on).
pub fn free_udp_tcp_port() -> u16 {
    free_udp_tcp_port_on(LOOPBACK)
}

/// A port free for both UDP and TCP on the loopback address `ip`.
pub fn free_udp_tcp_port_on(ip: IpAddr) -> u16 {
    assert!(ip.is_loopback(), "e2e tests use loopback only, not {ip}");
    for _ in 0..50 {
        let tcp = TcpListener::bind((ip, 0)).expect("bind TCP port 0 on loopback");
        let port = tcp.local_addr().expect("local_addr").port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip} after 50 tries");
}

/// Sends `kill -<sig> -- -<pgid>` to a process group this harness started.
fn kill_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), "--".into(), format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// Stops a process group started by this harness: SIGTERM, a grace period, SIGKILL.
fn stop_group(child: &mut Child, grace: Duration) {
    let pgid = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        // the leader is gone; make sure nothing of its group survives
        kill_group(pgid, "KILL");
        return;
    }
    kill_group(pgid, "TERM");
    if wait_until(child, Instant::now() + grace).is_none() {
        kill_group(pgid, "KILL");
        let _ = child.kill();
        let _ = wait_until(child, Instant::now() + Duration::from_secs(5));
    }
    // children that ignored SIGTERM after their parent left
    kill_group(pgid, "KILL");
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory")
}

fn finish_dir(dir: tempfile::TempDir) {
    if keep_dirs() {
        let p = dir.keep();
        eprintln!("kept e2e directory {}", p.display());
    }
}

// ---------------------------------------------------------------------------------------
// Kamailio
// ---------------------------------------------------------------------------------------

/// How to start Kamailio from `tests/e2e/kamailio.cfg` (or another
/// template there, [`KamailioOptions::template`]).
#[derive(Clone, Debug)]
pub struct KamailioOptions {
    /// The configuration template under `tests/e2e/`; `kamailio.cfg` (the
    /// registrar) by default.
    pub template: &'static str,
    /// More `@NAME@` placeholders of the template and their values.
    pub substitutions: Vec<(String, String)>,
    /// Port for UDP and TCP on 127.0.0.1; `None` picks a free one (retried on a bind race).
    pub port: Option<u16>,
    /// Request-URI user of the Response Group workflow (answered with 486 by Kamailio).
    pub workflow: String,
    /// UDP receivers and TCP workers.
    pub children: u32,
    /// Log one line per request and reply (`-A WITH_TRACE`); on by default.
    pub trace: bool,
    /// Run `sanity_check()` on every request (`-A WITH_SANITY`); off by default.
    pub sanity: bool,
    /// Also listen on `[::1]` (same port, UDP and TCP).
    pub ipv6: bool,
    /// How long to wait for the OPTIONS readiness probe to be answered.
    pub startup_timeout: Duration,
    /// Also listen for TLS (module `tls`, `-A WITH_TLS`); `None` by default.
    pub tls: Option<KamailioTls>,
    /// Require RFC 5626 outbound support of the first hop for clients that
    /// ask for it (registrar `outbound_mode = 1`, `-A WITH_OUTBOUND`: 439
    /// without `ob` in the Path); off by default.
    pub outbound: bool,
}

/// Kamailio's TLS listener on 127.0.0.1 (Debian `kamailio-tls-modules`), written into its
/// `tls.cfg` as the `[server:default]` profile. Outgoing TLS (`[client:default]`) does not
/// verify the server, as in Kamailio's stock config.
#[derive(Clone, Debug)]
pub struct KamailioTls {
    /// TLS port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// PEM certificate chain Kamailio presents (certificate first).
    pub certificate: PathBuf,
    /// Its PEM private key.
    pub private_key: PathBuf,
    /// PEM roots client certificates are verified against (`ca_list`).
    pub ca_list: PathBuf,
    /// Require a client certificate chaining to `ca_list` (`verify_certificate` and
    /// `require_certificate` = yes).
    pub require_client_certificate: bool,
    /// Certificate and key the TLS readiness probe presents; required with
    /// `require_client_certificate`.
    pub probe_identity: Option<(PathBuf, PathBuf)>,
    /// Kamailio's `method` (e.g. `TLSv1.2+`, `TLSv1+`).
    pub method: String,
}

impl KamailioTls {
    /// A TLS listener presenting `certificate`/`private_key`, verifying client
    /// certificates against `ca_list` only when [`KamailioTls::require_client_certificate`]
    /// is set; TLS 1.2 and later.
    pub fn new(certificate: &Path, private_key: &Path, ca_list: &Path) -> Self {
        Self {
            port: None,
            certificate: certificate.to_owned(),
            private_key: private_key.to_owned(),
            ca_list: ca_list.to_owned(),
            require_client_certificate: false,
            probe_identity: None,
            method: "TLSv1.2+".into(),
        }
    }

    /// Require a client certificate; the readiness probe presents `probe_identity`.
    pub fn require_client_certificate(mut self, probe_identity: &(PathBuf, PathBuf)) -> Self {
        self.require_client_certificate = true;
        self.probe_identity = Some(probe_identity.clone());
        self
    }

    /// Renders Kamailio's `tls.cfg`.
    pub fn render_cfg(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        format!(
            "[server:default]\nmethod = {method}\nverify_certificate = {verify}\n\
             require_certificate = {verify}\ncertificate = {cert}\nprivate_key = {key}\n\
             ca_list = {ca}\n\n[client:default]\nmethod = {method}\n\
             verify_certificate = no\nrequire_certificate = no\n",
            method = self.method,
            verify = yes_no(self.require_client_certificate),
            cert = self.certificate.display(),
            key = self.private_key.display(),
            ca = self.ca_list.display(),
        )
    }
}

impl Default for KamailioOptions {
    fn default() -> Self {
        Self {
            template: "kamailio.cfg",
            substitutions: Vec::new(),
            port: None,
            workflow: WORKFLOW_USER.to_string(),
            children: 2,
            trace: true,
            sanity: false,
            ipv6: false,
            startup_timeout: Duration::from_secs(10),
            tls: None,
            outbound: false,
        }
    }
}

impl KamailioOptions {
    /// Default options on a given port.
    pub fn on_port(port: u16) -> Self {
        Self {
            port: Some(port),
            ..Self::default()
        }
    }
}

/// Kamailio's module directory (`SIPADMIT_KAMAILIO_MODULES`, else Debian's).
pub fn kamailio_module_dir() -> PathBuf {
    std::env::var_os("SIPADMIT_KAMAILIO_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/kamailio/modules"))
}

/// Checks that Kamailio module `<name>.so` is installed, like [`require_tool`]: missing, it
/// panics when `CI=true` and otherwise prints `skipping: ...` and returns `None`.
pub fn require_kamailio_module(name: &str) -> Option<PathBuf> {
    let path = kamailio_module_dir().join(format!("{name}.so"));
    if path.is_file() {
        return Some(path);
    }
    if in_ci() {
        panic!(
            "Kamailio module {} is required by this test but is not installed (CI=true); \
             install it (Debian: kamailio-{name}-modules) or set SIPADMIT_KAMAILIO_MODULES",
            path.display()
        );
    }
    eprintln!("skipping: Kamailio module {name} not installed");
    None
}

/// Renders `tests/e2e/kamailio.cfg` (or `opts.template`) for a port (public so the load
/// script's logic and tests can share it). With `opts.tls`, its port must be set.
pub fn render_kamailio_cfg(opts: &KamailioOptions, port: u16) -> String {
    let template = fs::read_to_string(e2e_dir().join(opts.template))
        .unwrap_or_else(|e| panic!("read tests/e2e/{}: {e}", opts.template));
    let mpath = kamailio_module_dir().display().to_string();
    let mut extra = if opts.ipv6 {
        format!("listen=udp:[::1]:{port}\nlisten=tcp:[::1]:{port}")
    } else {
        String::new()
    };
    if let Some(tls) = &opts.tls {
        let tls_port = tls.port.expect("KamailioTls::port is set before rendering");
        extra.push_str(&format!("\nlisten=tls:127.0.0.1:{tls_port}"));
    }
    let rendered = template
        .replace("@LISTEN_UDP@", &format!("udp:127.0.0.1:{port}"))
        .replace("@LISTEN_TCP@", &format!("tcp:127.0.0.1:{port}"))
        .replace("@LISTEN_EXTRA@", &extra)
        .replace("@WORKFLOW@", &opts.workflow)
        .replace("@MPATH@", &mpath)
        .replace("@CHILDREN@", &opts.children.to_string());
    opts.substitutions
        .iter()
        .fold(rendered, |text, (name, value)| {
            text.replace(&format!("@{name}@"), value)
        })
}

/// A running Kamailio (foreground, own process group, own runtime dir), killed on drop.
pub struct Kamailio {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    ipv6: bool,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    cfg_path: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio if it is installed (see [`require_tool`]); `None` means "skip".
    pub fn try_start(opts: KamailioOptions) -> Option<Kamailio> {
        let bin = require_tool("kamailio")?;
        if opts.tls.is_some() {
            require_kamailio_module("tls")?;
        }
        Some(Self::start_with(&bin, opts))
    }

    /// Starts Kamailio; panics (with its log) when it does not come up in time.
    /// Callers that must skip when Kamailio is missing use [`Kamailio::try_start`].
    pub fn start(opts: KamailioOptions) -> Kamailio {
        let bin = find_tool("kamailio").expect("kamailio not installed");
        Self::start_with(&bin, opts)
    }

    fn start_with(bin: &Path, opts: KamailioOptions) -> Kamailio {
        let attempts = if opts.port.is_some() { 1 } else { 3 };
        let mut last_err = String::new();
        for _ in 0..attempts {
            let port = opts.port.unwrap_or_else(free_udp_tcp_port);
            match Self::spawn_once(bin, &opts, port) {
                Ok(k) => return k,
                Err(e) => last_err = e,
            }
        }
        panic!("Kamailio did not start: {last_err}");
    }

    fn spawn_once(bin: &Path, opts: &KamailioOptions, port: u16) -> Result<Kamailio, String> {
        let dir = tempdir("sipadmit-kamailio-");
        let cfg_path = dir.path().join("kamailio.cfg");
        let log_path = dir.path().join("kamailio.log");
        let run_dir = dir.path().join("run");
        fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let mut opts = opts.clone();
        if let Some(tls) = &mut opts.tls {
            assert!(
                !tls.require_client_certificate || tls.probe_identity.is_some(),
                "KamailioTls: a required client certificate needs a probe_identity"
            );
            if tls.port.is_none() {
                tls.port = Some(free_tcp_port());
            }
            fs::write(dir.path().join("tls.cfg"), tls.render_cfg()).map_err(|e| e.to_string())?;
        }
        let opts = &opts;
        let tls_port = opts.tls.as_ref().and_then(|t| t.port);
        fs::write(&cfg_path, render_kamailio_cfg(opts, port)).map_err(|e| e.to_string())?;
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;

        let mut cmd = Command::new(bin);
        cmd.arg("-DD") // no daemon, children still forked
            .arg("-E") // log to stderr
            .arg("-f")
            .arg(&cfg_path)
            .arg("-Y")
            .arg(&run_dir)
            .arg("-w")
            .arg(dir.path())
            .args(["-m", "32", "-M", "4"]);
        if opts.trace {
            cmd.args(["-A", "WITH_TRACE"]);
        }
        if opts.sanity {
            cmd.args(["-A", "WITH_SANITY"]);
        }
        if opts.outbound {
            cmd.args(["-A", "WITH_OUTBOUND"]);
        }
        if opts.tls.is_some() {
            cmd.args(["-A", "WITH_TLS"]);
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut k = Kamailio {
            child,
            port,
            tls_port,
            ipv6: opts.ipv6,
            dir: Some(dir),
            log_path,
            cfg_path,
        };

        let deadline = Instant::now() + opts.startup_timeout;
        loop {
            if let Ok(Some(st)) = k.child.try_wait() {
                return Err(format!(
                    "kamailio exited early ({st}) on port {port}; log:\n{}",
                    k.log()
                ));
            }
            let tls_ready = || match (&opts.tls, k.tls_addr()) {
                (Some(tls), Some(addr)) => sip_options_ping_tls(
                    addr,
                    tls.probe_identity.as_ref(),
                    Duration::from_millis(500),
                ),
                _ => true,
            };
            if k.options_ping(Duration::from_millis(200)) && tls_ready() {
                return Ok(k);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "kamailio on port {port} did not answer OPTIONS within {:?}; log:\n{}",
                    opts.startup_timeout,
                    k.log()
                ));
            }
        }
    }

    /// The UDP/TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` (UDP and TCP).
    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::new(LOOPBACK, self.port)
    }

    /// Same as [`Kamailio::udp_addr`]: Kamailio listens on both on one port.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.udp_addr()
    }

    /// `127.0.0.1:<tls port>` when started with `tls`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_port.map(|p| SocketAddr::new(LOOPBACK, p))
    }

    /// For `--upstream`: `tls:127.0.0.1:<tls port>` when started with `tls`.
    pub fn upstream_tls(&self) -> Option<String> {
        self.tls_port.map(|p| format!("tls:127.0.0.1:{p}"))
    }

    /// `[::1]:<port>` when started with `ipv6: true`.
    pub fn udp6_addr(&self) -> Option<SocketAddr> {
        self.ipv6
            .then(|| SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), self.port))
    }

    /// For `--upstream`: `udp:127.0.0.1:<port>`.
    pub fn upstream_udp(&self) -> String {
        format!("udp:127.0.0.1:{}", self.port)
    }

    /// For `--upstream`: `tcp:127.0.0.1:<port>`.
    pub fn upstream_tcp(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    /// Process id of the main Kamailio process (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the rendered configuration.
    pub fn cfg_path(&self) -> &Path {
        &self.cfg_path
    }

    /// Everything Kamailio logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded) until the log contains `needle`; Kamailio workers log asynchronously.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends `OPTIONS sip:127.0.0.1:<port>` over UDP; true on a 200 within `timeout`.
    pub fn options_ping(&self, timeout: Duration) -> bool {
        sip_options_ping(self.udp_addr(), timeout)
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(3));
        if thread::panicking() {
            eprintln!(
                "---- kamailio log (port {}) ----\n{}\n---- end of kamailio log ----",
                self.port,
                self.log()
            );
        }
        if let Some(d) = self.dir.take() {
            finish_dir(d);
        }
    }
}

/// Sends one OPTIONS without a user part to `target` over UDP and waits for a 200.
pub fn sip_options_ping(target: SocketAddr, timeout: Duration) -> bool {
    assert!(target.ip().is_loopback(), "loopback only, not {target}");
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(target.ip(), 0)) else {
        return false;
    };
    let Ok(local) = sock.local_addr() else {
        return false;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let branch = format!(
        "z9hG4bK-probe-{}-{}-{nanos}",
        std::process::id(),
        local.port()
    );
    let host = match target {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let lhost = match local {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let msg = format!(
        "OPTIONS sip:{host} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {lhost};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{lhost}>;tag=probe{port}\r\n\
         To: <sip:{host}>\r\n\
         Call-ID: probe-{branch}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port()
    );
    if sock.send_to(msg.as_bytes(), target).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("SIP/2.0 200") && text.contains(&branch) {
                    return true;
                }
            }
            Err(_) => break,
        }
    }
    false
}

/// Sends one OPTIONS without a user part to `target` over TLS (the server's certificate is
/// not verified: this only checks readiness), presenting `identity` (certificate and key
/// files) when given; true on a 200 within `timeout`.
pub fn sip_options_ping_tls(
    target: SocketAddr,
    identity: Option<&(PathBuf, PathBuf)>,
    timeout: Duration,
) -> bool {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    use std::io::Write as _;
    assert!(target.ip().is_loopback(), "loopback only, not {target}");
    let Ok(tcp) = std::net::TcpStream::connect_timeout(&target, timeout) else {
        return false;
    };
    if tcp.set_read_timeout(Some(timeout)).is_err() || tcp.set_write_timeout(Some(timeout)).is_err()
    {
        return false;
    }
    let Ok(local) = tcp.local_addr() else {
        return false;
    };
    let Ok(mut builder) = SslConnector::builder(SslMethod::tls_client()) else {
        return false;
    };
    builder.set_verify(SslVerifyMode::NONE);
    if let Some((certificate, key)) = identity {
        if builder.set_certificate_chain_file(certificate).is_err()
            || builder.set_private_key_file(key, SslFiletype::PEM).is_err()
        {
            return false;
        }
    }
    let Ok(mut config) = builder.build().configure() else {
        return false;
    };
    config.set_verify_hostname(false);
    let Ok(mut tls) = config.connect(&target.ip().to_string(), tcp) else {
        return false;
    };
    let branch = format!("z9hG4bK-tlsprobe-{}-{}", std::process::id(), local.port());
    let msg = format!(
        "OPTIONS sip:{target};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=tlsprobe\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: tlsprobe-{branch}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    if tls.write_all(msg.as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&received);
                if text.contains("\r\n\r\n") {
                    return text.starts_with("SIP/2.0 200") && text.contains(&branch);
                }
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------------------

/// SIPp transport: `-t u1` or `-t t1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP, one socket.
    Udp,
    /// TCP, one connection.
    Tcp,
}

/// Default `-key` values; every scenario in `tests/e2e/scenarios` uses a subset of them.
fn default_keys() -> BTreeMap<String, String> {
    [
        ("user", "alice"),
        ("domain", "contoso.com"),
        ("ua", UA_LYNC_2013),
        ("expires", "300"),
        ("extra", "X-E2E: sipadmit"),
        ("ruri", "sip:helpdesk@contoso.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Default `-set` values for `<Global>` variables; only those a scenario declares are passed
/// (SIPp refuses to set an undeclared global).
fn default_globals() -> BTreeMap<String, String> {
    [
        ("expect", "200"),
        ("linger_ms", "0"),
        ("wait_ms", "10000"),
        ("expect_invite", "1"),
        ("answered", "0"),
        ("invites", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The `<Global variables="a,b">` names a scenario declares.
fn declared_globals(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<Global") {
        rest = &rest[i..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if let Some(j) = tag.find("variables=\"") {
            let v = &tag[j + 11..];
            let v = &v[..v.find('"').unwrap_or(v.len())];
            out.extend(
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        }
        rest = &rest[end..];
    }
    out
}

/// Builder for one SIPp run (`-m 1`, loopback, bounded).
#[derive(Clone, Debug)]
pub struct Sipp {
    scenario: PathBuf,
    ooc_scenario: Option<PathBuf>,
    remote: Option<SocketAddr>,
    local_ip: IpAddr,
    local_port: Option<u16>,
    transport: Transport,
    keys: BTreeMap<String, String>,
    globals: BTreeMap<String, String>,
    calls: u32,
    extra_args: Vec<String>,
    sipp_timeout: Duration,
    trace_messages: bool,
    label: String,
}

impl Sipp {
    /// A run of `tests/e2e/scenarios/<scenario>` (or an absolute path).
    pub fn new(scenario: &str) -> Self {
        let scenario = scenario_path(scenario);
        let label = scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sipp".into());
        Self {
            scenario,
            ooc_scenario: None,
            remote: None,
            local_ip: LOOPBACK,
            local_port: None,
            transport: Transport::Udp,
            keys: default_keys(),
            globals: default_globals(),
            calls: 1,
            extra_args: Vec::new(),
            sipp_timeout: Duration::from_secs(15),
            trace_messages: true,
            label,
        }
    }

    /// `register.xml` registering `user` with `ua`, expecting `status`.
    pub fn register(user: &str, ua: &str, status: u16) -> Self {
        Self::new("register.xml")
            .user(user)
            .ua(ua)
            .expect_status(status)
    }

    /// `agent.xml` + `agent_answer.xml`: registers `user` with `ua` (expects 200), then
    /// answers one call (180, 200 + SDP, ACK, BYE) within `wait_ms`.
    pub fn agent(user: &str, ua: &str) -> Self {
        Self::new("agent.xml")
            .ooc("agent_answer.xml")
            .user(user)
            .ua(ua)
            .expect_invite(true)
    }

    /// `call.xml`: INVITE to `ruri` with `ua`, expecting `status`.
    pub fn call(ruri: &str, ua: &str, status: u16) -> Self {
        Self::new("call.xml")
            .key("ruri", ruri)
            .ua(ua)
            .expect_status(status)
    }

    /// Where SIPp sends (the proxy, or Kamailio directly). Loopback only.
    pub fn remote(mut self, addr: SocketAddr) -> Self {
        assert!(addr.ip().is_loopback(), "loopback only, not {addr}");
        self.remote = Some(addr);
        self
    }

    /// Local SIP port (`-p`); by default a free one is picked.
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// Local IP (`-i`): 127.0.0.1 (default) or ::1.
    pub fn local_ip(mut self, ip: IpAddr) -> Self {
        assert!(ip.is_loopback(), "loopback only, not {ip}");
        self.local_ip = ip;
        self
    }

    /// Transport (`-t u1` / `-t t1`).
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Shorthand for `.transport(Transport::Tcp)`.
    pub fn tcp(self) -> Self {
        self.transport(Transport::Tcp)
    }

    /// `-key name value` (`[name]` in the scenario).
    pub fn key(mut self, name: &str, value: impl Into<String>) -> Self {
        self.keys.insert(name.to_string(), value.into());
        self
    }

    /// `-set name value` for a `<Global>` variable of the scenario.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.globals.insert(name.to_string(), value.into());
        self
    }

    /// AOR / From user (`[user]`).
    pub fn user(self, user: &str) -> Self {
        self.key("user", user)
    }

    /// Domain (`[domain]`).
    pub fn domain(self, domain: &str) -> Self {
        self.key("domain", domain)
    }

    /// User-Agent (`[ua]`).
    pub fn ua(self, ua: &str) -> Self {
        self.key("ua", ua)
    }

    /// One extra header line (`[extra]`), e.g. `Path: <sip:127.0.0.1:5070;lr>`. Never empty.
    pub fn extra_header(self, line: &str) -> Self {
        assert!(
            !line.trim().is_empty(),
            "an empty [extra] line would end the headers"
        );
        self.key("extra", line)
    }

    /// Expected final status (`-set expect`).
    pub fn expect_status(self, status: u16) -> Self {
        self.set("expect", status.to_string())
    }

    /// agent.xml: whether an INVITE must arrive (true) or must not (false).
    pub fn expect_invite(self, yes: bool) -> Self {
        self.set("expect_invite", if yes { "1" } else { "0" })
    }

    /// agent.xml: how long to wait for (or watch for the absence of) the INVITE.
    pub fn wait(self, d: Duration) -> Self {
        self.set("wait_ms", d.as_millis().to_string())
    }

    /// call.xml: stay this long after a non-2xx ACK (to catch final-response retransmissions).
    pub fn linger(self, d: Duration) -> Self {
        self.set("linger_ms", d.as_millis().to_string())
    }

    /// Out-of-call scenario (`-oocsf`), for requests with a Call-ID the main call does not know.
    pub fn ooc(mut self, scenario: &str) -> Self {
        self.ooc_scenario = Some(scenario_path(scenario));
        self
    }

    /// Number of calls (`-m`); 1 by default.
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }

    /// Any other SIPp argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// SIPp's own global timeout (`-timeout`, with `-timeout_error`); 15 s by default.
    pub fn sipp_timeout(mut self, d: Duration) -> Self {
        self.sipp_timeout = d;
        self
    }

    /// Whether every message is written to the trace (`-trace_msg`, read
    /// into [`SippOutcome::messages`]); on by default. Load runs turn it off:
    /// thousands of calls would write megabytes.
    pub fn trace_messages(mut self, on: bool) -> Self {
        self.trace_messages = on;
        self
    }

    /// Label used in temp dir names and messages.
    pub fn label(mut self, l: &str) -> Self {
        self.label = l.to_string();
        self
    }

    /// The local port this run will use (picks one now if none was set).
    pub fn port(&mut self) -> u16 {
        if self.local_port.is_none() {
            // Over TCP SIPp binds its main socket on TCP: the port must be
            // free there too (a UDP-free port once collided, errno 98).
            self.local_port = Some(match self.transport {
                Transport::Udp => free_udp_port_on(self.local_ip),
                Transport::Tcp => free_udp_tcp_port_on(self.local_ip),
            });
        }
        self.local_port.unwrap_or_default()
    }

    /// Runs SIPp to completion, killing it after `timeout`.
    pub fn run_with_timeout(self, timeout: Duration) -> SippOutcome {
        self.spawn().join_timeout(timeout)
    }

    /// Starts SIPp in the background (e.g. an agent that must wait for an INVITE);
    /// [`SippRunning::join`] waits for it. Panics when SIPp is not installed: check with
    /// [`require_tool`] first.
    pub fn spawn(mut self) -> SippRunning {
        let bin = find_tool("sipp").expect("sipp not installed (check require_tool first)");
        let remote = self.remote.expect("Sipp::remote(addr) is required");
        let port = self.port();
        if !self.keys.contains_key("instance") {
            let user = self.keys.get("user").cloned().unwrap_or_default();
            self.keys.insert("instance".into(), instance_uuid(&user));
        }
        let dir = tempdir(&format!("sipadmit-sipp-{}-", self.label));
        let d = dir.path();
        let xml = fs::read_to_string(&self.scenario)
            .unwrap_or_else(|e| panic!("read scenario {}: {e}", self.scenario.display()));
        let mut declared = declared_globals(&xml);
        if let Some(ooc) = &self.ooc_scenario {
            if let Ok(x) = fs::read_to_string(ooc) {
                declared.extend(declared_globals(&x));
            }
        }

        let mut args: Vec<String> = vec![
            remote.to_string(),
            "-sf".into(),
            self.scenario.display().to_string(),
            "-m".into(),
            self.calls.to_string(),
            "-i".into(),
            self.local_ip.to_string(),
            "-mi".into(),
            self.local_ip.to_string(),
            "-ci".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-t".into(),
            match self.transport {
                Transport::Udp => "u1".into(),
                Transport::Tcp => "t1".into(),
            },
            "-nostdin".into(),
            "-timeout".into(),
            format!("{}s", self.sipp_timeout.as_secs().max(1)),
            "-timeout_error".into(),
            "-recv_timeout".into(),
            format!("{}", self.sipp_timeout.as_millis()),
            // on abort, do not send BYE/CANCEL into the system under test
            "-default_behaviors".into(),
            "all,-bye".into(),
            "-trace_err".into(),
            "-error_file".into(),
            d.join("errors.log").display().to_string(),
            "-trace_logs".into(),
            "-log_file".into(),
            d.join("actions.log").display().to_string(),
        ];
        if self.trace_messages {
            args.extend([
                "-trace_msg".into(),
                "-message_file".into(),
                d.join("messages.log").display().to_string(),
            ]);
        }
        if let Some(ooc) = &self.ooc_scenario {
            args.push("-oocsf".into());
            args.push(ooc.display().to_string());
        }
        for (k, v) in &self.keys {
            args.extend(["-key".into(), k.clone(), v.clone()]);
        }
        for name in &declared {
            if let Some(v) = self.globals.get(name) {
                args.extend(["-set".into(), name.clone(), v.clone()]);
            }
        }
        args.extend(self.extra_args.iter().cloned());

        let stdout = fs::File::create(d.join("stdout.txt")).expect("create stdout file");
        let stderr = fs::File::create(d.join("stderr.txt")).expect("create stderr file");
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        SippRunning {
            child: Some(child),
            dir: Some(dir),
            command: format!("{} {}", bin.display(), shell_words(&args)),
            label: self.label.clone(),
            port,
            default_timeout: self.sipp_timeout + Duration::from_secs(5),
        }
    }
}

/// A stable `+sip.instance` UUID for a user (FNV-1a of the name, UUID-shaped).
pub fn instance_uuid(user: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

fn shell_words(args: &[String]) -> String {
    let mut s = String::new();
    for a in args {
        if !s.is_empty() {
            s.push(' ');
        }
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@[]".contains(c))
        {
            s.push_str(a);
        } else {
            let _ = write!(s, "'{}'", a.replace('\'', "'\\''"));
        }
    }
    s
}

/// A SIPp process running in the background; killed on drop if not joined.
pub struct SippRunning {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    command: String,
    label: String,
    port: u16,
    default_timeout: Duration,
}

impl SippRunning {
    /// The local SIP port of this SIPp.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for SIPp (SIPp's own timeout + 5 s at most).
    pub fn join(self) -> SippOutcome {
        let t = self.default_timeout;
        self.join_timeout(t)
    }

    /// Waits for SIPp at most `timeout`, then kills it (the outcome says `timed_out`).
    pub fn join_timeout(mut self, timeout: Duration) -> SippOutcome {
        let mut child = self.child.take().expect("child present until joined");
        let status = wait_until(&mut child, Instant::now() + timeout);
        let timed_out = status.is_none();
        if timed_out {
            stop_group(&mut child, Duration::from_millis(500));
        } else {
            // nothing of its group may outlive it
            kill_group(child.id(), "KILL");
        }
        let status = status.or_else(|| child.try_wait().ok().flatten());
        let dir = self.dir.take().expect("dir present until joined");
        let d = dir.path();
        let mut stdout = String::new();
        if let Ok(mut f) = fs::File::open(d.join("stdout.txt")) {
            let _ = f.read_to_string(&mut stdout);
        }
        let outcome = SippOutcome {
            label: self.label.clone(),
            command: self.command.clone(),
            exit_code: status.and_then(|s| s.code()),
            success: !timed_out && status.is_some_and(|s| s.success()),
            timed_out,
            stdout,
            stderr: read_lossy(&d.join("stderr.txt")),
            error_log: read_lossy(&d.join("errors.log")),
            messages: read_lossy(&d.join("messages.log")),
            actions_log: read_lossy(&d.join("actions.log")),
        };
        finish_dir(dir);
        outcome
    }
}

impl Drop for SippRunning {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_group(&mut c, Duration::from_millis(500));
        }
        if let Some(d) = self.dir.take() {
            finish_dir(d);
        }
    }
}

/// What a SIPp run produced.
#[derive(Clone, Debug)]
pub struct SippOutcome {
    /// Label (scenario name by default).
    pub label: String,
    /// The command line, for reproducing by hand.
    pub command: String,
    /// Exit code: 0 all calls passed, 1 some failed, 255 global timeout (`-timeout_error`),
    /// 97 killed externally, 99 no call processed, 254/253 fatal errors.
    pub exit_code: Option<i32>,
    /// Exit code 0 within the time allowed.
    pub success: bool,
    /// Killed by the harness after the join timeout.
    pub timed_out: bool,
    /// SIPp's final screens.
    pub stdout: String,
    /// SIPp's stderr (fatal errors).
    pub stderr: String,
    /// `-trace_err` file: unexpected messages, `<warning>` actions, aborts.
    pub error_log: String,
    /// `-trace_msg` file: every message sent and received.
    pub messages: String,
    /// `-trace_logs` file: `<log>` actions.
    pub actions_log: String,
}

impl SippOutcome {
    /// Start lines of the messages SIPp received (`SIP/2.0 200 OK`, `INVITE sip:... SIP/2.0`).
    pub fn received_start_lines(&self) -> Vec<String> {
        self.trace_start_lines("message received")
    }

    /// Start lines of the messages SIPp sent.
    pub fn sent_start_lines(&self) -> Vec<String> {
        self.trace_start_lines("message sent")
    }

    fn trace_start_lines(&self, marker: &str) -> Vec<String> {
        self.messages_matching(marker)
            .iter()
            .filter_map(|m| m.lines().next().map(str::to_owned))
            .collect()
    }

    /// Full messages received (`direction` "received") or sent ("sent") from the trace.
    pub fn messages_matching(&self, marker: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut blocks = self
            .messages
            .split("----------------------------------------------- ");
        blocks.next();
        for b in blocks {
            let mut lines = b.lines();
            let _timestamp = lines.next();
            let Some(header) = lines.next() else { continue };
            if !header.contains(marker) {
                continue;
            }
            let body: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
            out.push(body.join("\n"));
        }
        out
    }

    /// Received messages whose start line begins with `start` (e.g. `"INVITE "`, `"SIP/2.0 486"`).
    pub fn received(&self, start: &str) -> Vec<String> {
        self.messages_matching("message received")
            .into_iter()
            .filter(|m| m.starts_with(start))
            .collect()
    }

    /// A report for assertion messages.
    pub fn report(&self) -> String {
        let tail: String = {
            let lines: Vec<&str> = self
                .stdout
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        format!(
            "SIPp {label}: exit {code:?}, timed_out {to}\ncommand: {cmd}\n\
             --- errors ---\n{err}\n--- actions ---\n{act}\n--- stderr ---\n{se}\n\
             --- messages ---\n{msgs}\n--- screen (tail) ---\n{tail}",
            label = self.label,
            code = self.exit_code,
            to = self.timed_out,
            cmd = self.command,
            err = self.error_log,
            act = self.actions_log,
            se = self.stderr,
            msgs = self.messages,
        )
    }

    /// Panics with the SIPp report unless the run passed. (A [`Kamailio`] prints its own
    /// log when it is dropped during a panic.)
    pub fn assert_success(&self) {
        assert!(self.success, "{}", self.report());
    }
}

#[cfg(test)]
mod tests {
    use super::declared_globals;

    #[test]
    fn globals_are_read_from_the_scenario() {
        let xml = r#"<scenario><Global variables="expect, linger_ms" /><Global variables="x"/>"#;
        assert_eq!(declared_globals(xml), ["expect", "linger_ms", "x"]);
    }
}
