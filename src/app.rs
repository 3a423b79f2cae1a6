//! The one place that wires the stages: bind sockets, start the transport
//! tasks (UDP loops, the stream accept loops, the upstream link), start the
//! admin listener ([`crate::admin`]) and the chores, run the
//! [`crate::dispatch`]er (view → classify → decide → act) over the
//! transports' events, handle signals (SIGHUP
//! reloads the config and the TLS certificates, see [`crate::reload`], and
//! reopens the decision log; SIGTERM and SIGINT stop, within a bounded
//! time), stop on shutdown.
//!
//! Each stream listener's open step is chosen here: `tcp:` refuses a TLS
//! ClientHello, `tls:` runs the handshake (`transport::tls`); both then go
//! to the one generic stream server.
//!
//! The dispatcher never waits for a connection: the stream upstream is a
//! link task with a queue, and what it cannot deliver comes back as an
//! event, answered `503`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, Endpoint, Settings, UpstreamSources};
use crate::dispatch::{self, Dispatcher};
use crate::drain;
use crate::observe::decision_log::{DecisionLogError, SHUTDOWN_DEADLINE};
use crate::observe::hep::{ExportError, Exporter, Hep};
use crate::observe::metrics::Metrics;
use crate::observe::{DecisionLog, LogWriter};
use crate::proxy::flow::FlowSigner;
use crate::proxy::listening::Listening;
use crate::proxy::Core;
use crate::reload::Reloader;
use crate::systemd::Notifier;
use crate::transport::admission::Admission;
use crate::transport::tls::{TlsContexts, TlsError};
use crate::transport::upstream::{LinkSettings, UpstreamBacklog, UpstreamLink};
use crate::transport::{udp, BootId, Connections, Senders, TransportContext, UdpListener};
use crate::transport::{Event, Transport, UpstreamSender};
use crate::vocabulary::LocalAddr;
use crate::workers::{self, Listeners, WorkerSockets, EVENT_QUEUE};

/// How long a stopping filter waits for the HEP exporter to send what is
/// queued.
const HEP_FINISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the filter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No upstream configured.
    #[error("no upstream registrar: set proxy.upstream or pass --upstream udp:IP:PORT")]
    NoUpstream,
    /// A listener could not be bound.
    #[error("cannot listen on {endpoint}")]
    Bind {
        /// The listener.
        endpoint: Endpoint,
        /// The error (the source, not repeated in this message).
        #[source]
        source: std::io::Error,
    },
    /// What only this host can tell: an upstream or a HEP collector that is
    /// sipadmit itself (at one of its addresses, behind a listener on its
    /// port), a decision log path that is a directory
    /// ([`check_on_this_host`], called by `run` before anything opens).
    #[error(transparent)]
    OnThisHost(#[from] ConfigError),
    /// The upstream's transport has no listener, so the registrar could
    /// not reach the proxy's Path.
    #[error("upstream {0} needs a {1} listener (requests from the registrar come back to it)")]
    NoListenerForUpstream(Endpoint, Transport),
    /// The decision log could not be opened.
    #[error(transparent)]
    DecisionLog(#[from] DecisionLogError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} (admin)")]
    AdminBind {
        /// `admin.listen` or `--admin`.
        addr: SocketAddr,
        /// The error (the source, not repeated in this message).
        #[source]
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A `[tls]` file or setting OpenSSL cannot use.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A worker thread (`proxy.workers`) could not be started.
    #[error("cannot start a worker thread (proxy.workers)")]
    Worker(#[source] std::io::Error),
    /// The HEP collector (`hep.collector`) cannot be sent to.
    #[error(transparent)]
    Hep(#[from] ExportError),
}

/// Sockets bound for the listeners, and the TLS contexts they need.
#[derive(Debug)]
pub struct Bound {
    /// The first worker's UDP sockets.
    pub udp: Vec<Arc<UdpSocket>>,
    /// The first worker's TCP listeners.
    pub tcp: Vec<TcpListener>,
    /// The first worker's `tls:` listeners (TCP sockets; the handshake
    /// runs per connection).
    pub tls: Vec<TcpListener>,
    /// The other workers' sockets (`proxy.workers` - 1 of them): on the
    /// same addresses, one per listener each.
    pub siblings: Vec<WorkerSockets>,
    /// The TLS acceptor of the `tls:` listeners and the connector of a
    /// `tls:` upstream, built (files read) before anything is served.
    pub tls_contexts: TlsContexts,
    /// The admin HTTP listener, when configured.
    pub admin: Option<TcpListener>,
}

impl Bound {
    /// Actual local addresses (ports resolved when 0 was asked for).
    pub fn addresses(&self) -> Vec<(Transport, SocketAddr)> {
        let udp = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| (Transport::Udp, a));
        let stream = |transport, listeners: &[TcpListener]| {
            listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .map(move |a| (transport, a))
                .collect::<Vec<_>>()
        };
        udp.chain(stream(Transport::Tcp, &self.tcp))
            .chain(stream(Transport::Tls, &self.tls))
            .collect()
    }

    /// The admin listener's actual address, when there is one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Bind every configured listener, and build the TLS contexts (reading the
/// `[tls]` files) that `tls:` listeners and a `tls:` upstream need.
pub async fn bind(config: &Config) -> Result<Bound, AppError> {
    let settings = &config.settings;
    let listens_tls = settings
        .listen
        .iter()
        .any(|e| e.transport == Transport::Tls);
    let upstream_tls = settings
        .upstream
        .filter(|u| u.transport == Transport::Tls)
        .map(|u| u.addr);
    let advertised_tls = settings
        .advertise
        .iter()
        .filter(|(e, _)| e.transport == Transport::Tls)
        .map(|(_, host)| host.clone())
        .collect();
    let tls_contexts = TlsContexts::new(&settings.tls, listens_tls, advertised_tls, upstream_tls)?;
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
        siblings: (1..settings.workers)
            .map(|_| WorkerSockets::default())
            .collect(),
        tls_contexts,
        admin: None,
    };
    for endpoint in &settings.listen {
        bind_listener(&mut bound, endpoint, settings).map_err(|source| AppError::Bind {
            endpoint: *endpoint,
            source,
        })?;
    }
    let backlog = settings.limits.listen_backlog;
    if let Some(somaxconn) = somaxconn().filter(|max| backlog > *max) {
        if !bound.tcp.is_empty() || !bound.tls.is_empty() {
            warn!(
                listen_backlog = backlog,
                somaxconn,
                "limits.listen_backlog is above net.core.somaxconn: the kernel uses somaxconn (raise it with sysctl)"
            );
        }
    }
    if let Some(addr) = config.settings.admin {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::AdminBind { addr, source })?;
        admin::warn_if_remote(addr, config.settings.admin_allow_remote);
        bound.admin = Some(listener);
    }
    Ok(bound)
}

/// Bind one listener: a socket for each worker, the first worker's on
/// this runtime.
fn bind_listener(
    bound: &mut Bound,
    endpoint: &Endpoint,
    settings: &Settings,
) -> std::io::Result<()> {
    let limits = &settings.limits;
    let (workers, addr) = (settings.workers, endpoint.addr);
    if endpoint.transport == Transport::Udp {
        let mut group = udp::bind(
            addr,
            workers,
            limits.udp_receive_buffer_bytes,
            limits.udp_send_buffer_bytes,
        )?
        .into_iter();
        let first = group.next().ok_or_else(no_socket)?;
        bound.udp.push(Arc::new(UdpSocket::from_std(first)?));
        for (sibling, socket) in bound.siblings.iter_mut().zip(group) {
            sibling.udp.push(socket);
        }
        return Ok(());
    }
    let mut group = stream_listener(addr, limits.listen_backlog, workers)?.into_iter();
    let first = TcpListener::from_std(group.next().ok_or_else(no_socket)?)?;
    let tls = endpoint.transport == Transport::Tls;
    if tls { &mut bound.tls } else { &mut bound.tcp }.push(first);
    for (sibling, listener) in bound.siblings.iter_mut().zip(group) {
        if tls {
            &mut sibling.tls
        } else {
            &mut sibling.tcp
        }
        .push(listener);
    }
    Ok(())
}

/// A bind that gave no socket (never: a group has at least one).
fn no_socket() -> std::io::Error {
    std::io::Error::other("no socket bound")
}

/// Refuse what only this host can tell is sipadmit itself (see
/// [`crate::config::problems_on_this_host`]) as a load refuses a file: its
/// path and each problem with its key. `run` and `check-config` call it.
pub fn check_on_this_host(config: &Config) -> Result<(), ConfigError> {
    let problems = crate::config::problems_on_this_host(config, is_this_hosts);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        path: config.path.clone(),
        problems,
    })
}

/// Whether `ip` is an address of this host: a socket can be bound to it.
/// Not known (`false`) where the host lets sockets bind to any address
/// (`net.ipv4.ip_nonlocal_bind`, `net.ipv6.ip_nonlocal_bind`).
fn is_this_hosts(ip: IpAddr) -> bool {
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let nonlocal = std::fs::read_to_string(format!("/proc/sys/net/{family}/ip_nonlocal_bind"));
    if nonlocal.is_ok_and(|v| v.trim() != "0") {
        return false;
    }
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The kernel's cap on accept queues (`net.core.somaxconn`), where it can
/// be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A TCP listener (for `tcp:` and `tls:`) per worker (see
/// [`crate::transport::spread`]), each with an accept queue of `backlog`
/// connections (`limits.listen_backlog`; the kernel caps it at
/// `net.core.somaxconn`): a reconnect storm of thousands of clients waits
/// in it instead of having its SYNs dropped and retried seconds later.
fn stream_listener(
    addr: SocketAddr,
    backlog: u32,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let reuse_address = |socket: &socket2::Socket| socket.set_reuse_address(true);
    let group =
        crate::transport::spread::bind_group(addr, socket2::Type::STREAM, workers, &reuse_address)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    group
        .into_iter()
        .map(|socket| {
            socket.listen(backlog)?;
            Ok(socket.into())
        })
        .collect()
}

/// The address to advertise for a listener: its own, or, when bound to the
/// unspecified address, the local address the kernel uses toward `upstream`.
fn advertised(local: SocketAddr, upstream: SocketAddr) -> SocketAddr {
    // An IPv4 socket faces no IPv6 registrar (the configuration asks such
    // a listener for `proxy.advertise`): it keeps its own address.
    if !local.ip().is_unspecified() || (local.is_ipv4() && upstream.is_ipv6()) {
        return local;
    }
    let probe_bind: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    std::net::UdpSocket::bind(probe_bind)
        .and_then(|s| s.connect(upstream).and_then(|()| s.local_addr()))
        .map_or(local, |probe| SocketAddr::new(probe.ip(), local.port()))
}

/// Serve until `shutdown` is cancelled. Takes already-bound sockets so
/// tests can bind port 0. Each call is one serving instance with its own
/// random [`BootId`].
pub async fn serve(
    config: Config,
    bound: Bound,
    decision_log: DecisionLog,
    shutdown: CancellationToken,
) -> Result<Arc<Metrics>, AppError> {
    serve_reloading(config, bound, decision_log, shutdown, Control::default()).await
}

/// What may be asked of a serving instance besides stopping at once (its
/// `shutdown`).
#[derive(Debug, Default)]
pub struct Control {
    /// One message per reload of the config file (see [`crate::reload`]).
    pub reloads: Option<mpsc::Receiver<()>>,
    /// Cancelled to start a drain (see [`crate::drain`]): the instance
    /// cancels its `shutdown` itself once nothing is pending, or when
    /// `limits.drain_secs` runs out.
    pub drain: Option<CancellationToken>,
    /// Told when the instance serves and around each reload (a systemd
    /// unit of `Type=notify`, see [`crate::systemd`]).
    pub notifier: Option<Arc<Notifier>>,
}

/// [`serve`], reloading the config file and draining as `control` asks.
/// The steps: advertise the bound sockets, build the core, the
/// transports' context and the senders (with the HEP exporter, `[hep]`),
/// start the listeners, the admin listener, the reloader, the drain and
/// the chores, then run the dispatcher until `shutdown`, and give the HEP
/// exporter a moment to send what is queued.
pub async fn serve_reloading(
    config: Config,
    mut bound: Bound,
    decision_log: DecisionLog,
    shutdown: CancellationToken,
    control: Control,
) -> Result<Arc<Metrics>, AppError> {
    let upstream = config.settings.upstream.ok_or(AppError::NoUpstream)?;
    let tls_contexts = bound.tls_contexts.clone();
    let mut listeners = Advertised::of(&mut bound, upstream, &config.settings)?;
    let metrics = Arc::new(Metrics::default());
    metrics.worker_events.set_started(bound.siblings.len() + 1);
    let settings = config.settings.clone();
    let mode = config.runtime.policy.mode;
    let (admission, reloader) = admission_and_reloader(&config, &tls_contexts, &metrics);
    let boot = BootId::random();
    let core = Arc::new(Core::new(
        config,
        flow_signer(&settings),
        boot,
        listeners.listening.clone(),
        metrics.clone(),
    ));
    let (ctx, events) = transport_context(&settings, &metrics, &admission, &shutdown);
    let (senders, hep_exporter) = senders(&settings, &listeners, &ctx, &tls_contexts)?;
    let mut tasks = JoinSet::new();
    log_listening(&listeners.listening, upstream, mode, boot);
    if let Some(listener) = bound.admin.take() {
        let state = AdminState {
            metrics: metrics.clone(),
            core: core.clone(),
            connections: senders.connections.clone(),
            decision_log: decision_log.clone(),
            upstream,
            upstream_tls: tls_contexts.upstream.as_ref().map(|(c, _)| c.clone()),
            admission: admission.clone(),
            upstream_backlog: ctx.upstream_backlog.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(admin::serve(listener, state));
    }
    let notifier = spawn_control(
        &mut tasks, control, reloader, &core, &metrics, &ctx, &shutdown,
    );
    dispatch::spawn_chores(core.clone(), udp_inodes(&bound), shutdown.clone());
    let probes = settings
        .upstream_probe
        .map(|every| (every, upstream, listeners.upstream_local));
    let summaries = core.clone();
    let dispatcher = Dispatcher::new(core, senders, decision_log.clone(), admission, probes);
    let (first, siblings) = start_workers(
        &mut bound,
        &mut listeners,
        &settings,
        &ctx,
        &tls_contexts,
        &dispatcher,
        &shutdown,
    );
    // Those started stop with it; the tasks end with `tasks`.
    let siblings = siblings.inspect_err(|_| shutdown.cancel())?;
    tell_ready(notifier.as_deref(), &listeners.listening, upstream);
    workers::serve(
        first,
        ctx,
        events,
        settings.tls.handshake_timeout,
        &tls_contexts,
        dispatcher,
        shutdown.clone(),
    )
    .await;
    // The first worker stops on `shutdown`, or when every one of its
    // transports is gone: either way the others stop with it.
    shutdown.cancel();
    wind_down(siblings, hep_exporter).await;
    tasks.shutdown().await;
    report_stop(&summaries, &metrics, &decision_log);
    Ok(metrics)
}

/// Tell systemd (if it asked) that the instance serves, and what: `serving
/// udp:0.0.0.0:5060, tcp:0.0.0.0:5060 relaying to udp:10.0.0.5:5060`.
fn tell_ready(notifier: Option<&Notifier>, listening: &[Listening], upstream: Endpoint) {
    let Some(notifier) = notifier else {
        return;
    };
    let listeners: Vec<String> = listening
        .iter()
        .map(|l| format!("{}:{}", l.transport, l.bound))
        .collect();
    notifier.serving(&format!(
        "serving {} relaying to {upstream}",
        listeners.join(", ")
    ));
}

/// The last lines of a run: the summaries whose windows were not over, and
/// the totals.
fn report_stop(core: &Core, metrics: &Metrics, decision_log: &DecisionLog) {
    core.close_summaries_at_stop();
    let dropped = decision_log.dropped();
    info!(counters = %metrics.summary(), decision_records_dropped = dropped, "stopped");
}

/// The admission (rate limits and bans) of `config`, and the reloader
/// that applies reloads of its file to it and to the TLS contexts.
fn admission_and_reloader(
    config: &Config,
    tls_contexts: &TlsContexts,
    metrics: &Arc<Metrics>,
) -> (Arc<Admission>, Reloader) {
    let settings = &config.settings;
    // A TCP or TLS registrar opens connections of its own towards clients
    // from ports it picks: its hosts are never limited or banned over them.
    let registrar_hosts = match settings.upstream {
        Some(upstream) if upstream.transport.is_stream() => {
            warn_of_registrar_connections(upstream, &settings.upstream_sources);
            settings.upstream_sources.hosts()
        }
        _ => UpstreamSources::default(),
    };
    let admission = Arc::new(
        Admission::new(
            settings.rate_limit.clone(),
            settings.upstream_sources.clone(),
            metrics.clone(),
        )
        .exempting_over_connections(registrar_hosts),
    );
    let reloader = Reloader {
        path: config.path.clone(),
        overrides: config.overrides.clone(),
        running: settings.clone(),
        admission: admission.clone(),
        tls: tls_contexts.clone(),
    };
    (admission, reloader)
}

/// Start what `control` asks for: the reloader, the drain; its notifier
/// (systemd's), to tell when the instance serves.
fn spawn_control(
    tasks: &mut JoinSet<()>,
    control: Control,
    reloader: Reloader,
    core: &Arc<Core>,
    metrics: &Arc<Metrics>,
    ctx: &TransportContext,
    shutdown: &CancellationToken,
) -> Option<Arc<Notifier>> {
    let limit = reloader.running.limits.drain;
    if let Some(reloads) = control.reloads {
        tasks.spawn(reloader.run(
            reloads,
            core.clone(),
            metrics.clone(),
            shutdown.clone(),
            control.notifier.clone(),
        ));
    }
    if let Some(requested) = control.drain {
        let queue = ctx.upstream_backlog.clone();
        tasks.spawn(drain::run(
            requested,
            core.clone(),
            queue,
            ctx.connections.clone(),
            limit,
            shutdown.clone(),
        ));
    }
    control.notifier
}

/// Start the workers beyond the first (each a thread, with a sibling of
/// `dispatcher`); what the first serves, and the others' threads.
fn start_workers(
    bound: &mut Bound,
    listeners: &mut Advertised,
    settings: &Settings,
    ctx: &TransportContext,
    tls_contexts: &TlsContexts,
    dispatcher: &Dispatcher,
    shutdown: &CancellationToken,
) -> (
    Listeners,
    Result<Vec<std::thread::JoinHandle<()>>, AppError>,
) {
    let start = workers::Start {
        ctx: ctx.clone(),
        handshake_timeout: settings.tls.handshake_timeout,
        tls_contexts: tls_contexts.clone(),
        udp_locals: listeners.udp.iter().map(|l| l.local).collect(),
        stream_locals: listeners.streams.iter().map(|(t, _, a)| (*t, *a)).collect(),
        shutdown: shutdown.clone(),
    };
    let siblings = spawn_siblings(std::mem::take(&mut bound.siblings), dispatcher, &start);
    let first = Listeners {
        udp: std::mem::take(&mut listeners.udp),
        streams: std::mem::take(&mut listeners.streams),
    };
    (first, siblings)
}

/// The inodes of every worker's UDP sockets (for the kernel's drop
/// counters).
fn udp_inodes(bound: &Bound) -> Vec<u64> {
    let first = bound
        .udp
        .iter()
        .filter_map(|s| udp::socket_inode(s.as_ref()));
    let others = bound.siblings.iter().flat_map(|w| &w.udp);
    first.chain(others.filter_map(udp::socket_inode)).collect()
}

/// Start the workers beyond the first, each with a sibling of
/// `dispatcher`.
fn spawn_siblings(
    siblings: Vec<WorkerSockets>,
    dispatcher: &Dispatcher,
    start: &workers::Start,
) -> Result<Vec<std::thread::JoinHandle<()>>, AppError> {
    siblings
        .into_iter()
        .enumerate()
        .map(|(i, sockets)| {
            workers::spawn(i + 1, sockets, dispatcher.sibling(i + 1), start)
                .map_err(AppError::Worker)
        })
        .collect()
}

/// Wait for the workers beyond the first to stop, then give the HEP
/// exporter a moment to send what every worker queued.
async fn wind_down(siblings: Vec<std::thread::JoinHandle<()>>, hep_exporter: Exporter) {
    join_siblings(siblings).await;
    hep_exporter.finish(HEP_FINISH_DEADLINE).await;
}

/// Wait for the workers beyond the first to stop (off this runtime's
/// thread).
async fn join_siblings(siblings: Vec<std::thread::JoinHandle<()>>) {
    let joined = tokio::task::spawn_blocking(move || {
        siblings
            .into_iter()
            .filter_map(|worker| worker.join().err())
            .count()
    })
    .await;
    if !matches!(joined, Ok(0)) {
        warn!("a worker thread ended with a panic");
    }
}

/// A TCP or TLS registrar such as Kamailio sends its requests towards
/// clients on connections it opens itself, from ports it picks: with only
/// its `IP:PORT` as the registrar, those count as a client's (their own
/// decision records, on the `from_client` leg). Said once at start, for a
/// `tcp:` or `tls:` upstream.
fn warn_of_registrar_connections(upstream: Endpoint, sources: &UpstreamSources) {
    if *sources == UpstreamSources::exactly(upstream.addr) {
        warn!(
            %upstream,
            "proxy.upstream_sources is only the upstream's IP:PORT: requests the registrar sends on connections it opens itself (from other ports) count as a client's; list its IP (\"{}\") there to make them the registrar's, unless clients connect from that IP too (everything from it would then count as the registrar's)",
            upstream.addr.ip()
        );
    }
}

/// One `listening` line per listener (operators' scripts wait for them),
/// naming what it advertises when `proxy.advertise` gives it a name, and
/// the address it is bound to when that is not `addr` (a `0.0.0.0` or
/// `[::]` listener's `addr` is the address facing the registrar).
fn log_listening(
    listening: &[Listening],
    upstream: Endpoint,
    mode: crate::policy::Mode,
    boot: BootId,
) {
    for l in listening {
        let (transport, addr) = (l.transport, l.addr);
        let bound = (l.bound != addr).then_some(l.bound);
        let advertise = l.advertise.as_ref().map(tracing::field::display);
        info!(%transport, %addr, bound = bound.map(tracing::field::display), advertise, upstream = %upstream, mode = mode.as_str(), boot = %boot, "listening");
    }
}

/// The bound sockets with the addresses they are advertised at.
struct Advertised {
    /// UDP sockets and their advertised addresses.
    udp: Vec<UdpListener>,
    /// Stream listeners: transport, socket, advertised address.
    streams: Vec<(Transport, TcpListener, LocalAddr)>,
    /// Every listener, UDP first: its transport, its address, and what it
    /// advertises (`proxy.advertise`).
    listening: Vec<Listening>,
    /// Where what arrives on the link to a stream upstream counts as
    /// arriving: the first listener of its transport and address family.
    upstream_local: SocketAddr,
}

impl Advertised {
    /// Take the listeners out of `bound` and advertise each (an unspecified
    /// address as the local address facing `upstream`; a name when
    /// `proxy.advertise` gives the listener one).
    fn of(bound: &mut Bound, upstream: Endpoint, settings: &Settings) -> Result<Self, AppError> {
        let advertise = |local: Option<SocketAddr>| local.map(|a| advertised(a, upstream.addr));
        let udp: Vec<UdpListener> = bound
            .udp
            .iter()
            .filter_map(|socket| {
                let local = advertise(socket.local_addr().ok())?;
                Some(UdpListener::new(socket.clone(), LocalAddr(local)))
            })
            .collect();
        let streams: Vec<(Transport, TcpListener, LocalAddr)> = std::mem::take(&mut bound.tcp)
            .into_iter()
            .map(|l| (Transport::Tcp, l))
            .chain(
                std::mem::take(&mut bound.tls)
                    .into_iter()
                    .map(|l| (Transport::Tls, l)),
            )
            .filter_map(|(transport, l)| {
                let local = advertise(l.local_addr().ok())?;
                Some((transport, l, LocalAddr(local)))
            })
            .collect();
        let addresses: Vec<(Transport, SocketAddr)> = udp
            .iter()
            .map(|l| (Transport::Udp, l.local.0))
            .chain(streams.iter().map(|(t, _, a)| (*t, a.0)))
            .collect();
        let upstream_local = core_address(&addresses, upstream).ok_or(
            AppError::NoListenerForUpstream(upstream, upstream.transport),
        )?;
        let listening = listening(&addresses, settings);
        Ok(Self {
            udp,
            streams,
            listening,
            upstream_local,
        })
    }
}

/// The listeners bound (`addresses`, in the order `bind` bound them: each
/// transport's in `proxy.listen` order), each with what its configured
/// listener advertises, and, bound to an unspecified address, the host's
/// addresses it receives at.
fn listening(addresses: &[(Transport, SocketAddr)], settings: &Settings) -> Vec<Listening> {
    let host = std::cell::OnceCell::new();
    let mut configured = [Transport::Udp, Transport::Tcp, Transport::Tls].map(|transport| {
        settings
            .listen
            .iter()
            .filter(move |e| e.transport == transport)
    });
    addresses
        .iter()
        .map(|&(transport, addr)| {
            let slot = match transport {
                Transport::Udp => 0,
                Transport::Tcp => 1,
                Transport::Tls => 2,
            };
            let endpoint = configured[slot].next();
            let advertise = endpoint
                .and_then(|endpoint| settings.advertise.for_listener(endpoint))
                .cloned();
            let receives_at = match endpoint.map(|e| e.addr.ip()) {
                Some(bound) if bound.is_unspecified() => host
                    .get_or_init(host_addresses)
                    .iter()
                    // `[::]` takes IPv4 too (sipadmit binds IPv6 dual-stack).
                    .filter(|ip| bound.is_ipv6() || ip.is_ipv4())
                    .copied()
                    .collect(),
                _ => Vec::new(),
            };
            Listening {
                transport,
                addr,
                advertise,
                bound: endpoint.map_or(addr, |e| SocketAddr::new(e.addr.ip(), addr.port())),
                receives_at,
            }
        })
        .collect()
}

/// This host's interface addresses (IPv4-mapped ones as IPv4), read once
/// at start for the listeners bound to an unspecified address: a Route or
/// Request-URI naming one of them on such a listener's port names
/// sipadmit. None when the host cannot be asked (a warning says so).
fn host_addresses() -> Vec<IpAddr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            warn!(error = %e, "cannot read this host's addresses: a Route or Request-URI naming sipadmit by an address other than the one a 0.0.0.0 or [::] listener advertises will not be taken as sipadmit's");
            return Vec::new();
        }
    };
    let mut addresses: Vec<IpAddr> = interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (None, Some(v6)) => IpAddr::V6(v6.ip()),
                (None, None) => return None,
            };
            Some(ip.to_canonical())
        })
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// The signer of flow tokens: the configured secrets (`proxy.flow_secret`
/// or `proxy.flow_secret_file`), or a random one (with a warning: tokens
/// then die with the process).
fn flow_signer(settings: &Settings) -> FlowSigner {
    let configured = settings.flow_secrets.as_ref().and_then(|secrets| {
        let signer = FlowSigner::with_secrets(secrets.secrets())?;
        info!(
            source = secrets.key(),
            secrets = signer.secrets(),
            signing_fingerprint = %signer.fingerprint(),
            "flow secrets loaded: the first signs, every one verifies"
        );
        Some(signer)
    });
    configured.unwrap_or_else(|| {
        warn!("neither proxy.flow_secret nor proxy.flow_secret_file is set: using a random secret; flow tokens in Path and Record-Route will not survive a restart and will not work across instances");
        FlowSigner::random()
    })
}

/// What every transport task shares, and the queue of the events they hand
/// the dispatcher.
fn transport_context(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    admission: &Arc<Admission>,
    shutdown: &CancellationToken,
) -> (Arc<TransportContext>, mpsc::Receiver<Event>) {
    let (events, received) = mpsc::channel::<Event>(EVENT_QUEUE);
    let upstream = settings.upstream;
    let upstream_backlog = upstream
        .filter(|u| u.transport.is_stream())
        .map(|_| Arc::new(UpstreamBacklog::new(settings.limits.upstream_queue_bytes)));
    let ctx = Arc::new(TransportContext {
        connections: Arc::new(Connections::default()),
        events,
        limits: settings.limits,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        slots: Arc::new(crate::transport::slots::ConnectionSlots::new(
            &settings.limits,
            metrics.clone(),
        )),
        upstream_sources: settings.upstream_sources.clone(),
        admission: admission.clone(),
        read_budget: Arc::new(crate::transport::stream::ReadBudget::new(
            settings.limits.read_buffer_budget_bytes,
            settings.limits.max_message_bytes,
        )),
        udp_upstream: upstream
            .filter(|u| u.transport == Transport::Udp)
            .map(|u| u.addr),
        upstream_backlog,
    });
    (ctx, received)
}

/// Everything that sends: the UDP listeners, the connections, and the
/// registrar (a datagram address, or the link task of a stream upstream);
/// and the HEP handle that mirrors what they send, with its exporter task
/// (`[hep]`; idle without a collector).
fn senders(
    settings: &Settings,
    listeners: &Advertised,
    ctx: &Arc<TransportContext>,
    tls_contexts: &TlsContexts,
) -> Result<(Senders, Exporter), AppError> {
    let locals = listeners.listening.iter().map(|l| (l.transport, l.addr));
    let (hep, exporter) = Hep::start(&settings.hep, locals.collect(), ctx.metrics.clone())?;
    let upstream = settings.upstream.expect("checked by serve_reloading");
    let upstream_sender = match ctx.upstream_backlog.clone() {
        Some(budget) => UpstreamSender::Stream(UpstreamLink::spawn(
            upstream.transport,
            upstream.addr,
            listeners.upstream_local,
            tls_contexts
                .upstream
                .as_ref()
                .map(|(client, _)| client.clone()),
            LinkSettings {
                handshake_timeout: settings.tls.handshake_timeout,
                ..LinkSettings::DEFAULT
            },
            budget,
            ctx.clone(),
        )),
        None => UpstreamSender::Datagram(upstream.addr),
    };
    let senders = Senders {
        udp: listeners.udp.clone(),
        connections: ctx.connections.clone(),
        udp_upstream_health: settings.upstream_probe.map(|_| ctx.metrics.clone()),
        upstream: upstream_sender,
        hep,
    };
    Ok((senders, exporter))
}

/// The first advertised address of the upstream's transport, of its
/// address family when there is one.
fn core_address(addresses: &[(Transport, SocketAddr)], upstream: Endpoint) -> Option<SocketAddr> {
    let of_transport = || addresses.iter().filter(|(t, _)| *t == upstream.transport);
    of_transport()
        .find(|(_, a)| a.is_ipv4() == upstream.addr.is_ipv4())
        .or_else(|| of_transport().next())
        .map(|(_, a)| *a)
}

/// How long an idle thread of the event loop's blocking pool waits for
/// work before it ends: for ever, in effect.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration =
    std::time::Duration::from_secs(u32::MAX as u64);

/// The event loop `run` runs on (the reloads, the admin listener, the
/// chores; each worker has its own): one thread, with a thread for
/// blocking work (config loads, `/metrics` renders, `/proc` reads) started
/// now. Its blocking threads are kept once started (as many as that work
/// ever ran at once: a handful). When creating a thread later fails for a
/// while (a cgroup's `pids.max`, systemd's `TasksMax=`), the work waits for
/// a kept one, one job after another; with none, tokio panics in
/// `spawn_blocking` and the task that asked (the reload task, a chore)
/// would be gone for good.
pub fn event_loop() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()?;
    runtime
        .block_on(runtime.spawn_blocking(|| ()))
        .map_err(std::io::Error::other)?;
    Ok(runtime)
}

/// Open the decision log, bind, then serve until SIGINT or SIGTERM (SIGHUP
/// reloads: its handler installed as `reload`); then close the decision log
/// within [`SHUTDOWN_DEADLINE`].
pub async fn run(config: Config, reload: ReloadSignals) -> Result<(), AppError> {
    let signals = Signals::install(reload).map_err(AppError::Signals)?;
    raise_open_file_limit(config.settings.limits.max_connections);
    // Before the decision log is opened: a directory there is named as
    // check-config names it.
    check_on_this_host(&config)?;
    let (decision_log, log_writer) = DecisionLog::open(&config.settings.decision_log)?;
    let bound = bind(&config).await?;
    let shutdown = CancellationToken::new();
    // One pending reload is enough: SIGHUPs during a reload fold into it.
    let (reload_tx, reloads) = mpsc::channel(1);
    let drain = (!config.settings.limits.drain.is_zero()).then(CancellationToken::new);
    let notifier = Notifier::from_env().map(Arc::new);
    tokio::spawn(handle_signals(
        signals,
        decision_log.clone(),
        reload_tx,
        Stopping {
            drain: drain.clone(),
            shutdown: shutdown.clone(),
            notifier: notifier.clone(),
        },
    ));
    let control = Control {
        reloads: Some(reloads),
        drain,
        notifier,
    };
    let served = serve_reloading(config, bound, decision_log, shutdown, control).await;
    close_decision_log(log_writer).await;
    served.map(drop)
}

/// Stop the log writer: what it holds is written, unless it is stuck (a
/// reader that does not read) past the deadline.
async fn close_decision_log(writer: LogWriter) {
    let closing = tokio::task::spawn_blocking(move || writer.shutdown(SHUTDOWN_DEADLINE));
    match closing.await {
        Ok(report) if report.finished => info!(
            written = report.written,
            dropped = report.dropped,
            lost = report.lost,
            "decision log closed"
        ),
        Ok(report) => warn!(
            written = report.written,
            dropped = report.dropped,
            lost = report.lost,
            unwritten = report.unwritten,
            deadline_ms = SHUTDOWN_DEADLINE.as_millis() as u64,
            "decision log writer did not finish in time (is the reader reading?): records not written"
        ),
        Err(e) => warn!(error = %e, "decision log writer could not be stopped"),
    }
}

/// How the signals stop an instance: the first SIGTERM starts a drain
/// (when `limits.drain_secs` is not 0); a second SIGTERM, a SIGINT, or a
/// SIGTERM with no drain, stops at once.
struct Stopping {
    drain: Option<CancellationToken>,
    shutdown: CancellationToken,
    /// Told that the service is stopping (systemd).
    notifier: Option<Arc<Notifier>>,
}

impl Stopping {
    /// Act on SIGTERM or SIGINT (`name`); `true`: nothing is left to do.
    fn on(&self, name: &'static str) -> bool {
        if let Some(notifier) = &self.notifier {
            let status = match &self.drain {
                Some(drain) if name == "SIGTERM" && !drain.is_cancelled() => "draining",
                _ => "stopping",
            };
            notifier.stopping(status);
        }
        match &self.drain {
            Some(drain) if name == "SIGTERM" && !drain.is_cancelled() => {
                info!(
                    signal = name,
                    "draining (a second SIGTERM, or SIGINT, stops at once)"
                );
                drain.cancel();
                false
            }
            _ => {
                info!(signal = name, "shutting down");
                self.shutdown.cancel();
                true
            }
        }
    }
}

/// SIGHUP asks for a reload (the config file and the TLS certificates, see
/// [`crate::reload`]) and reopens the decision log (logrotate); SIGTERM
/// drains, then stops, and SIGINT stops (see [`Stopping`]).
async fn handle_signals(
    mut signals: Signals,
    log: DecisionLog,
    reload: mpsc::Sender<()>,
    stopping: Stopping,
) {
    loop {
        match signals.next().await {
            Signal::Hangup => {
                // Full: a reload is pending and will read the files anew.
                let _ = reload.try_send(());
                // Waited for on its own task: a writer stuck on a pipe must
                // not keep SIGTERM from being handled.
                let reopened = log.reopen();
                tokio::spawn(async move {
                    match reopened.await {
                        Ok(Ok(())) => info!("SIGHUP: decision log reopened"),
                        Ok(Err(e)) => {
                            warn!(error = %e, "SIGHUP: decision log not reopened; still writing to the old file")
                        }
                        Err(_) => {
                            warn!("SIGHUP: decision log not reopened: the writer has stopped")
                        }
                    }
                });
            }
            Signal::Stop(name) => {
                if stopping.on(name) {
                    return;
                }
            }
        }
    }
}

/// Descriptors sipadmit holds besides its client connections: listeners of
/// every worker, the registrar links, the decision log, HEP, the admin
/// listener and its connections, `/proc` reads.
const OWN_DESCRIPTORS: u64 = 256;

/// Raise the soft limit of open files (RLIMIT_NOFILE) toward the hard one,
/// as far as `max_connections` client connections and sipadmit's own
/// descriptors need: each TCP or TLS connection holds one, and a connection
/// that finds none left fails in `accept()`, before the connection slots
/// (with their share reserved for trusted sources) can decide. Logs what it
/// did; warns, naming the key, when the hard limit is too low.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = (max_connections as u64).saturating_add(OWN_DESCRIPTORS);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = needed.min(hard);
    let soft = if soft < wanted {
        match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
            Ok(()) => {
                info!(
                    from = soft,
                    to = wanted,
                    hard,
                    "open-file limit (RLIMIT_NOFILE) raised"
                );
                wanted
            }
            Err(e) => {
                warn!(error = %e, soft, wanted, "open-file limit (RLIMIT_NOFILE) could not be raised");
                soft
            }
        }
    } else {
        soft
    };
    if soft < needed {
        warn!(
            limit = soft,
            hard,
            needed,
            max_connections,
            "the open-file limit (RLIMIT_NOFILE) is below limits.max_connections plus {OWN_DESCRIPTORS} \
             for sipadmit's own: past it, connections fail in accept() before the slots reserved \
             for trusted sources are used; raise it (systemd LimitNOFILE=) or lower \
             limits.max_connections"
        );
    }
}

/// A signal `run` acts on.
enum Signal {
    /// SIGHUP.
    Hangup,
    /// SIGTERM or SIGINT, by name.
    Stop(&'static str),
}

/// The handlers of the signals that must not end a start (SIGHUP,
/// SIGXFSZ), installed first thing, before the configuration is read: a
/// SIGHUP from logrotate that races a start is a reload once the instance
/// runs. SIGTERM and SIGINT keep their default action (the end of the
/// process) until `run` begins ([`Signals`]).
pub struct ReloadSignals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    /// SIGXFSZ, held and never acted on: its default action would end the
    /// process when the decision log reaches the file size limit
    /// (`ulimit -f`, systemd's `LimitFSIZE=`). With a handler the write
    /// fails with EFBIG instead, and the decision log counts the record
    /// lost.
    #[cfg(unix)]
    _file_too_large: tokio::signal::unix::Signal,
}

impl ReloadSignals {
    /// Install the handlers; within the event loop's context (see
    /// [`event_loop`] and `Runtime::enter`).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                hangup: signal(SignalKind::hangup())?,
                _file_too_large: signal(SignalKind::from_raw(nix::libc::SIGXFSZ))?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }
}

/// Every signal `run` handles: [`ReloadSignals`], then SIGTERM and SIGINT,
/// installed before anything is bound.
struct Signals {
    reload: ReloadSignals,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install(reload: ReloadSignals) -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                reload,
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self { reload })
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.reload.hangup.recv() => Signal::Hangup,
                Some(()) = self.terminate.recv() => Signal::Stop("SIGTERM"),
                Some(()) = self.interrupt.recv() => Signal::Stop("SIGINT"),
                else => Signal::Stop("none (the signal driver stopped)"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop("ctrl-c")
        }
    }
}
