//! Shared test support: an in-process sipadmit on ephemeral loopback
//! ports, and (in `external`) the Kamailio and SIPp harness.
#![allow(dead_code)]

pub mod admin_client;
pub mod binary;
pub mod external;
pub mod hep;
pub mod sip_stream;
pub mod tls;
pub mod udp_registrar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sipadmit::app;
use std::sync::Arc;

use sipadmit::config::{Config, Overrides};
use sipadmit::observe::metrics::Metrics;
use sipadmit::observe::DecisionLog;
use sipadmit::transport::Transport;
use tokio_util::sync::CancellationToken;

/// A running in-process sipadmit. Stops on drop.
pub struct TestProxy {
    /// UDP listener address (the first).
    pub udp: SocketAddr,
    /// TCP listener address (the first).
    pub tcp: SocketAddr,
    /// TLS listener address (the first), if any.
    pub tls: Option<SocketAddr>,
    /// Every listener: the UDP ones, then the TCP ones, each in `--listen` order.
    pub addresses: Vec<(Transport, SocketAddr)>,
    /// The admin listener's address, when the config has `[admin] listen`.
    pub admin: Option<SocketAddr>,
    /// Decision log file.
    pub decision_log: PathBuf,
    /// Asks for a reload of the config file ([`TestProxy::start_reloading`]).
    reloads: Option<tokio::sync::mpsc::Sender<()>>,
    log: DecisionLog,
    shutdown: CancellationToken,
    drain: CancellationToken,
    thread: Option<std::thread::JoinHandle<Arc<Metrics>>>,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Start with `toml` (a sipadmit config), listening on `ip` port 0 (UDP
    /// and TCP), relaying to `upstream` (`udp:IP:PORT` / `tcp:IP:PORT`).
    pub fn start(toml: &str, ip: &str, upstream: &str) -> Self {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        Self::start_listening(
            toml,
            vec![format!("udp:{host}:0"), format!("tcp:{host}:0")],
            upstream,
        )
    }

    /// Start on exactly these UDP and TCP addresses (a restart on the ports
    /// of an instance that has stopped).
    pub fn start_on(toml: &str, udp: SocketAddr, tcp: SocketAddr, upstream: &str) -> Self {
        // Another test's process may hold a port for a moment (a harness
        // probing for a free port): wait, bounded, until both are free.
        let free =
            || std::net::UdpSocket::bind(udp).is_ok() && std::net::TcpListener::bind(tcp).is_ok();
        let until = Instant::now() + Duration::from_secs(5);
        while !free() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        Self::start_listening(
            toml,
            vec![format!("udp:{udp}"), format!("tcp:{tcp}")],
            upstream,
        )
    }

    /// Start listening on UDP, TCP and TLS (port 0 each) of 127.0.0.1,
    /// relaying to `upstream`; `toml` must configure `[tls]`.
    pub fn start_with_tls(toml: &str, upstream: &str) -> Self {
        Self::start_listening(
            toml,
            vec![
                "udp:127.0.0.1:0".into(),
                "tcp:127.0.0.1:0".into(),
                "tls:127.0.0.1:0".into(),
            ],
            upstream,
        )
    }

    /// Start listening on `listen` (`--listen` values, at least one UDP
    /// and one TCP).
    pub fn start_listening(toml: &str, listen: Vec<String>, upstream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let overrides = test_overrides(&dir, listen, upstream, None);
        let config = Config::from_toml_str(toml, &config_dir().join("test.toml"), &overrides)
            .unwrap_or_else(|e| panic!("{e}"));
        Self::spawn(config, dir, None)
    }

    /// Start from the config file at `path`, loaded as `sipadmit run`
    /// loads it (files it names are relative to it), listening on `listen`
    /// (`--listen` values, at least one UDP and one TCP), relaying to
    /// `upstream`, with an admin listener on 127.0.0.1 (port 0):
    /// [`TestProxy::reload`] reloads the file as SIGHUP does.
    pub fn start_reloading(path: &Path, listen: Vec<String>, upstream: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let overrides = test_overrides(&dir, listen, upstream, Some("127.0.0.1:0"));
        let config = Config::load(path, &overrides).unwrap_or_else(|e| panic!("{e}"));
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let mut proxy = Self::spawn(config, dir, Some(reloads));
        proxy.reloads = Some(reload_tx);
        proxy
    }

    /// Serve `config` on a thread of its own; `dir` holds the decision log.
    fn spawn(
        config: Config,
        dir: tempfile::TempDir,
        reloads: Option<tokio::sync::mpsc::Receiver<()>>,
    ) -> Self {
        // Console logs in the test output (shown for failing tests); RUST_LOG filters.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_test_writer()
            .try_init();
        let decision_log = dir.path().join("decisions.jsonl");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let drain = CancellationToken::new();
        let control = app::Control {
            reloads,
            drain: Some(drain.clone()),
            notifier: None,
        };
        let (log, writer) = DecisionLog::open(&decision_log.display().to_string()).unwrap();
        let serve_log = log.clone();
        let thread = std::thread::spawn(move || {
            // The same single-threaded runtime as `sipadmit run`.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let metrics = rt.block_on(async move {
                let bound = app::bind(&config).await.unwrap();
                addr_tx
                    .send((bound.addresses(), bound.admin_address()))
                    .unwrap();
                app::serve_reloading(config, bound, serve_log, stop, control)
                    .await
                    .unwrap()
            });
            let report = writer.shutdown(Duration::from_secs(10));
            assert!(report.finished, "decision log writer stopped: {report:?}");
            metrics
        });
        let (addrs, admin) = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy started");
        let find = |t: Transport| addrs.iter().find(|(tt, _)| *tt == t).map(|(_, a)| *a);
        Self {
            udp: find(Transport::Udp).expect("a UDP listener"),
            tcp: find(Transport::Tcp).expect("a TCP listener"),
            tls: find(Transport::Tls),
            addresses: addrs,
            admin,
            decision_log,
            reloads: None,
            log,
            shutdown,
            drain,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The value of a sample of the admin listener's `/metrics` (0 when
    /// absent); needs an admin listener.
    pub fn metric(&self, series: &str) -> f64 {
        let admin = self.admin.expect("an admin listener");
        let (status, text) = admin_client::http(admin, "GET", "/metrics", Duration::from_secs(5));
        assert_eq!(status, 200, "{text}");
        admin_client::sample(&text, series).unwrap_or(0.0)
    }

    /// Reload the config file as SIGHUP does, and wait (bounded) until the
    /// reload has finished: whether it was applied (`false`: refused, the
    /// running configuration kept). Only for [`TestProxy::start_reloading`].
    pub fn reload(&self) -> bool {
        const SUCCESS: &str = "sipadmit_config_reloads_total{result=\"success\"}";
        const FAILURE: &str = "sipadmit_config_reloads_total{result=\"failure\"}";
        let (success, failure) = (self.metric(SUCCESS), self.metric(FAILURE));
        self.reloads
            .as_ref()
            .expect("started with start_reloading")
            .blocking_send(())
            .expect("the reloader runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, f) = (self.metric(SUCCESS), self.metric(FAILURE));
            if s > success || f > failure {
                return s > success;
            }
            assert!(Instant::now() < deadline, "the reload did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every decision record submitted so far (the writer is asked to
    /// write them first).
    pub fn records(&self) -> Vec<serde_json::Value> {
        let mut flushed = self.log.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while flushed.try_recv().is_err() {
            assert!(
                Instant::now() < deadline,
                "decision log writer did not flush"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::read_to_string(&self.decision_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl TestProxy {
    /// Start a drain, as the first SIGTERM does.
    pub fn start_drain(&self) {
        self.drain.cancel();
    }

    /// Whether the instance stopped serving by itself within `bound`.
    pub fn stopped_within(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let finished = || self.thread.as_ref().is_some_and(|t| t.is_finished());
        while !finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        finished()
    }

    /// Stop serving and return the counters of the run.
    pub fn stop(mut self) -> Arc<Metrics> {
        self.shutdown.cancel();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the proxy thread ended normally")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The repository's `config/` directory.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The command-line overrides a test proxy runs with: its listeners, its
/// upstream, its decision log in `dir`, and an admin listener if `admin`.
fn test_overrides(
    dir: &tempfile::TempDir,
    listen: Vec<String>,
    upstream: &str,
    admin: Option<&str>,
) -> Overrides {
    Overrides {
        listen,
        upstream: Some(upstream.to_owned()),
        mode: None,
        decision_log: Some(dir.path().join("decisions.jsonl").display().to_string()),
        admin: admin.map(str::to_owned),
    }
}
