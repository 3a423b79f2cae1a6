//! The one place that wires the stages: bind sockets, start the transport
//! tasks (UDP loops, the stream accept loops, the upstream link), run the
//! dispatcher (view → classify → decide → act) over the transports'
//! events, submit decision records to the log writer, sweep registrations,
//! start the admin listener ([`crate::admin`]), handle signals (SIGHUP
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::{self, AdminState};
use crate::config::{Config, Endpoint};
use crate::observe::decision_log::{DecisionLogError, SHUTDOWN_DEADLINE};
use crate::observe::metrics::{DropReason, MessageKind, Metrics};
use crate::observe::{DecisionLog, LogWriter};
use crate::proxy::flow::FlowSigner;
use crate::proxy::{Core, Destination, Inbound, Outbound, Outcome};
use crate::reload::Reloader;
use crate::transport::admission::{Admission, BanCause, BanScope};
use crate::transport::stream::{self, Listener};
use crate::transport::tls::{self, TlsContexts, TlsError, TlsListener};
use crate::transport::upstream::{DatagramWatch, LinkSettings, QueueBudget, UpstreamLink};
use crate::transport::{udp, BootId, Connections, Senders, TransportContext, UdpListener};
use crate::transport::{Event, Fault, SendError, Transport, UpstreamSender};

/// Events (inbound messages, undelivered ones) queued between the
/// transports and the dispatcher.
const EVENT_QUEUE: usize = 4096;
/// How often expired registrations are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often bans, rate-limit state and log summaries are looked after.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

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
}

/// Sockets bound for the listeners, and the TLS contexts they need.
#[derive(Debug)]
pub struct Bound {
    /// UDP sockets.
    pub udp: Vec<Arc<UdpSocket>>,
    /// TCP listeners.
    pub tcp: Vec<TcpListener>,
    /// `tls:` listeners (TCP sockets; the handshake runs per connection).
    pub tls: Vec<TcpListener>,
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
        .map(|u| u.addr.ip());
    let tls_contexts = TlsContexts::new(&settings.tls, listens_tls, upstream_tls)?;
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
        tls_contexts,
        admin: None,
    };
    for endpoint in &settings.listen {
        let err = |source| AppError::Bind {
            endpoint: *endpoint,
            source,
        };
        let limits = &config.settings.limits;
        match endpoint.transport {
            Transport::Udp => bound.udp.push(Arc::new(
                udp::bind(
                    endpoint.addr,
                    limits.udp_receive_buffer_bytes,
                    limits.udp_send_buffer_bytes,
                )
                .map_err(err)?,
            )),
            Transport::Tcp => bound
                .tcp
                .push(stream_listener(endpoint.addr, limits.listen_backlog).map_err(err)?),
            Transport::Tls => bound
                .tls
                .push(stream_listener(endpoint.addr, limits.listen_backlog).map_err(err)?),
        }
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

/// The kernel's cap on accept queues (`net.core.somaxconn`), where it can
/// be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A TCP listener (for `tcp:` and `tls:`) with an accept queue of
/// `backlog` connections (`limits.listen_backlog`; the kernel caps it at
/// `net.core.somaxconn`): a reconnect storm of thousands of clients waits
/// in it instead of having its SYNs dropped and retried seconds later.
fn stream_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The address to advertise for a listener: its own, or, when bound to the
/// unspecified address, the local address the kernel uses toward `upstream`.
fn advertised(local: SocketAddr, upstream: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
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
    serve_reloading(config, bound, decision_log, shutdown, None).await
}

/// [`serve`], reloading the config file once per message on `reloads`
/// (see [`crate::reload`]).
pub async fn serve_reloading(
    config: Config,
    mut bound: Bound,
    decision_log: DecisionLog,
    shutdown: CancellationToken,
    reloads: Option<mpsc::Receiver<()>>,
) -> Result<Arc<Metrics>, AppError> {
    let upstream = config.settings.upstream.ok_or(AppError::NoUpstream)?;
    let tls_contexts = bound.tls_contexts.clone();
    let advertise = |local: Option<SocketAddr>| local.map(|a| advertised(a, upstream.addr));
    let udp_sockets: Vec<(Arc<UdpSocket>, SocketAddr)> = bound
        .udp
        .iter()
        .filter_map(|s| Some((s.clone(), advertise(s.local_addr().ok())?)))
        .collect();
    let stream_listeners: Vec<(Transport, TcpListener, SocketAddr)> = bound
        .tcp
        .into_iter()
        .map(|l| (Transport::Tcp, l))
        .chain(bound.tls.into_iter().map(|l| (Transport::Tls, l)))
        .filter_map(|(transport, l)| {
            let local = advertise(l.local_addr().ok())?;
            Some((transport, l, local))
        })
        .collect();
    let addresses: Vec<(Transport, SocketAddr)> = udp_sockets
        .iter()
        .map(|(_, a)| (Transport::Udp, *a))
        .chain(stream_listeners.iter().map(|(t, _, a)| (*t, *a)))
        .collect();
    // What arrives on the link to a stream upstream counts as arriving at
    // the first listener of its transport and the upstream's address family.
    let Some(upstream_local) = core_address(&addresses, upstream) else {
        return Err(AppError::NoListenerForUpstream(
            upstream,
            upstream.transport,
        ));
    };
    let signer = match &config.settings.flow_secret {
        Some(secret) => FlowSigner::new(secret.as_bytes()),
        None => {
            warn!("proxy.flow_secret is not set: using a random secret; flow tokens in Path and Record-Route will not survive a restart and will not work across instances");
            FlowSigner::random()
        }
    };
    let metrics = Arc::new(Metrics::default());
    let settings = config.settings.clone();
    let mode = config.runtime.policy.mode;
    let (config_path, overrides) = (config.path.clone(), config.overrides.clone());
    let boot = BootId::random();
    let core = Arc::new(Core::new(
        config,
        signer,
        boot,
        addresses.clone(),
        metrics.clone(),
    ));
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let connections = Arc::new(Connections::default());
    let admission = Arc::new(Admission::new(
        settings.rate_limit.clone(),
        settings.upstream_sources.clone(),
        metrics.clone(),
    ));
    let reloader = Reloader {
        path: config_path,
        overrides,
        running: settings.clone(),
        admission: admission.clone(),
        tls: tls_contexts.clone(),
    };
    let upstream_queue = upstream
        .transport
        .is_stream()
        .then(|| Arc::new(QueueBudget::new(settings.limits.upstream_queue_bytes)));
    let ctx = Arc::new(TransportContext {
        connections: connections.clone(),
        events: events_tx,
        limits: settings.limits,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        slots: Arc::new(crate::transport::slots::ConnectionSlots::new(
            &settings.limits,
            metrics.clone(),
        )),
        upstream_sources: settings.upstream_sources.clone(),
        admission: admission.clone(),
        read_budget: Arc::new(tokio::sync::Semaphore::new(
            settings.limits.read_buffer_budget_bytes,
        )),
        udp_upstream: (upstream.transport == Transport::Udp).then_some(upstream.addr),
        upstream_queue: upstream_queue.clone(),
    });
    let udp_listeners: Vec<UdpListener> = udp_sockets
        .into_iter()
        .map(|(socket, local)| UdpListener { socket, local })
        .collect();
    let senders = Senders {
        udp: udp_listeners.clone(),
        connections: connections.clone(),
        udp_upstream_health: settings.upstream_probe.map(|_| metrics.clone()),
        upstream: if let Some(budget) = upstream_queue.clone() {
            UpstreamSender::Stream(UpstreamLink::spawn(
                upstream.transport,
                upstream.addr,
                upstream_local,
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
            ))
        } else {
            UpstreamSender::Datagram(upstream.addr)
        },
    };

    let mut tasks = JoinSet::new();
    for listener in udp_listeners {
        tasks.spawn(udp::serve(listener, ctx.clone()));
    }
    for (transport, listener, local) in stream_listeners {
        let at = Listener { transport, local };
        match transport {
            // Plain TCP: the accepted stream is the SIP stream, unless it
            // opens with a TLS ClientHello (closed at once, logged).
            Transport::Tcp => {
                // The first byte is due within the message deadline.
                let (deadline, metrics) = (settings.limits.message_deadline, metrics.clone());
                let open = move |tcp| tls::refuse_tls_client_hello(tcp, deadline, metrics.clone());
                tasks.spawn(stream::accept(listener, at, ctx.clone(), open));
            }
            // TLS: the handshake, in the connection's task and slot.
            Transport::Tls => {
                let server = tls_contexts
                    .server
                    .clone()
                    .expect("bind builds the acceptor when a tls: listener is configured");
                // A handshake is bounded like a message (slowloris).
                let deadline = settings
                    .tls
                    .handshake_timeout
                    .min(settings.limits.message_deadline);
                let handshake = TlsListener::new(server, deadline, metrics.clone());
                let open = move |tcp| {
                    let handshake = handshake.clone();
                    async move { handshake.open(tcp).await }
                };
                tasks.spawn(stream::accept(listener, at, ctx.clone(), open));
            }
            Transport::Udp => unreachable!("stream listeners are TCP or TLS"),
        }
    }
    drop(ctx);
    for (transport, addr) in &addresses {
        info!(%transport, %addr, upstream = %upstream, mode = mode.as_str(), boot = %boot, "listening");
    }
    if let Some(listener) = bound.admin.take() {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "admin listening (/metrics, /healthz, /readyz)");
        }
        tasks.spawn(admin::serve(
            listener,
            AdminState {
                metrics: metrics.clone(),
                core: core.clone(),
                connections: connections.clone(),
                decision_log: decision_log.clone(),
                upstream,
                upstream_tls: tls_contexts
                    .upstream
                    .as_ref()
                    .map(|(client, _)| client.clone()),
                listeners: addresses.clone(),
                admission: admission.clone(),
                upstream_queue: upstream_queue.clone(),
                probing: settings.upstream_probe.is_some(),
                shutdown: shutdown.clone(),
            },
        ));
    }
    if let Some(reloads) = reloads {
        tasks.spawn(reloader.run(reloads, core.clone(), metrics.clone(), shutdown.clone()));
    }

    let mut probes = Probes {
        every: settings.upstream_probe.map(tokio::time::interval),
        sent: 0,
        inbound: Inbound {
            bytes: bytes::Bytes::new(),
            transport: upstream.transport,
            source: upstream.addr,
            local: upstream_local,
            connection: None,
            from_upstream: true,
        },
    };
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut edge = Edge {
        admission,
        upstream_watch: DatagramWatch::default(),
        udp_sockets: bound.udp.clone(),
        ticks: 0,
    };
    loop {
        let retransmit_at = core.client_transactions().next_due();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = until(retransmit_at) => {
                retransmit(&core, &senders, &decision_log).await;
            }
            () = probes.due() => probes.send(&core, &senders, &decision_log, &mut edge).await,
            _ = sweep.tick() => {
                let removed = core.registrations().sweep(Instant::now());
                if removed > 0 {
                    info!(removed, "expired registrations swept");
                }
            }
            _ = housekeeping.tick() => edge.housekeeping(&core, Instant::now()),
            event = events.recv() => match event {
                Some(event) => dispatch(&core, &senders, &decision_log, &mut edge, event).await,
                None => break,
            },
        }
    }
    tasks.shutdown().await;
    info!(
        counters = %metrics.summary(),
        decision_records_dropped = decision_log.dropped(),
        "stopped"
    );
    Ok(metrics)
}

/// The OPTIONS probes of the registrar (`proxy.upstream_probe_secs`): the
/// registrar's answer (consumed by the core) tells `/readyz` it is there,
/// so an instance recovers within one probe of the registrar coming back,
/// with no client traffic needed.
struct Probes {
    /// The probe interval; `None`: probes are off.
    every: Option<tokio::time::Interval>,
    /// Probes sent so far.
    sent: u64,
    /// What a probe counts as having been relayed from: a message "from the
    /// registrar" (so that a probe that cannot be delivered is counted and
    /// noted for `/readyz`, but answered to no one).
    inbound: Inbound,
}

impl Probes {
    /// The next probe is due (never, with probes off).
    async fn due(&mut self) {
        match &mut self.every {
            Some(every) => {
                every.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Send one probe.
    async fn send(&mut self, core: &Core, senders: &Senders, log: &DecisionLog, edge: &mut Edge) {
        self.sent += 1;
        let Some(bytes) = core.probe_request(self.sent) else {
            return;
        };
        Metrics::inc(&core.metrics().upstream_probes);
        let inbound = Inbound {
            bytes: bytes.clone(),
            ..self.inbound.clone()
        };
        match senders.send_upstream_probe(bytes, &inbound).await {
            Ok(()) => {
                if let UpstreamSender::Datagram(_) = senders.upstream {
                    core.metrics().note_upstream_sent();
                    edge.upstream_watch.relayed(Instant::now());
                }
            }
            Err(e) => {
                Fault::UpstreamSend.report(core.metrics(), None, &e);
                not_delivered(core, senders, log, &inbound, &Destination::Upstream, &e).await;
            }
        }
    }
}

/// Sleep until `at`; forever without it.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Carry out what the client transactions' timers ask for: requests sent
/// again over UDP, `408`s to the clients of those that timed out.
async fn retransmit(core: &Core, senders: &Senders, log: &DecisionLog) {
    for (inbound, outcome) in core.client_transactions_due(Instant::now()) {
        if let Err((_, e)) = carry_out(senders, log, &inbound, outcome, core.boot()).await {
            Fault::of_send(&e).report(core.metrics(), None, &e);
        }
    }
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

/// The dispatcher's part of the edge hardening: bans of scanners, the
/// housekeeping of the rate limits and summaries, the UDP listeners' kernel
/// drops, and the watch on a UDP upstream that stays silent.
struct Edge {
    admission: Arc<Admission>,
    upstream_watch: DatagramWatch,
    udp_sockets: Vec<Arc<UdpSocket>>,
    /// Housekeeping ticks so far.
    ticks: u64,
}

impl Edge {
    /// Every second: lift bans that ran out, forget idle rate-limit state,
    /// close summary windows; every 10 s: read the kernel's UDP drops and
    /// check the UDP upstream.
    fn housekeeping(&mut self, core: &Core, now: Instant) {
        self.ticks += 1;
        self.admission.sweep(now);
        core.close_summaries(now);
        if self.ticks % 10 != 0 {
            return;
        }
        self.upstream_watch.check(now, core.metrics());
        let sockets: Vec<&UdpSocket> = self.udp_sockets.iter().map(|s| s.as_ref()).collect();
        if let Some(total) = udp::kernel_drops(&sockets) {
            let before = core
                .metrics()
                .udp_kernel_drops
                .swap(total, Ordering::Relaxed);
            if total > before {
                warn!(
                    dropped = total - before,
                    total,
                    "the kernel dropped UDP datagrams (receive buffer full): raise limits.udp_receive_buffer_bytes and net.core.rmem_max"
                );
            }
        }
    }
}

/// Handle one event of the transports.
async fn dispatch(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    edge: &mut Edge,
    event: Event,
) {
    match event {
        Event::Received(inbound) => {
            let started = Instant::now();
            if inbound.from_upstream && inbound.transport == Transport::Udp {
                edge.upstream_watch.heard(core.metrics());
            }
            // A scanner banned by this message is dropped, and its record
            // says why (see `Core::handle_banning`). Over a connection the
            // handshake proved its address: banned at once, from
            // everything. A datagram's source may be forged: banned (from
            // datagrams only) once its scanner traffic has gone on for
            // `SCANNER_PROOF`; until then each is dropped by the policy.
            let admission = &mut edge.admission;
            let scope = BanScope::earned_over(inbound.transport);
            let outcome = core.handle_banning(
                &inbound,
                started,
                &|id, peer| senders.connections.is_open_to(id, peer),
                &mut |source| {
                    (scope == BanScope::Everything || admission.scanner_datagram(source, started))
                        && admission.ban(source, BanCause::Scanner, scope, started)
                },
            );
            // A datagram sent is delivered as far as UDP can tell; the
            // stream link notes its own deliveries.
            let to_udp_upstream = matches!(senders.upstream, UpstreamSender::Datagram(_))
                && matches!(
                    &outcome.send,
                    Some(Outbound {
                        to: Destination::Upstream,
                        ..
                    })
                );
            // Counted as relayed once it is sent (the stream upstream's link
            // counts what it writes itself).
            let relayed_over = match &outcome.send {
                Some(Outbound {
                    to: Destination::Flow(flow),
                    ..
                }) => Some(flow.transport),
                Some(Outbound {
                    to: Destination::Upstream,
                    ..
                }) if to_udp_upstream => Some(Transport::Udp),
                _ => None,
            };
            // Kept once sent: a stream client's request leaving over UDP.
            let retransmit = outcome
                .retransmit
                .zip(outcome.send.clone())
                .filter(|_| !outcome.scanner);
            let carried_out = carry_out(senders, log, &inbound, outcome, core.boot()).await;
            if let (Some((key, send)), Ok(())) = (retransmit, &carried_out) {
                core.keep_transaction(key, send, inbound.clone(), started);
            }
            core.metrics().observe_handling(started.elapsed());
            if let (Some(transport), Ok(())) = (relayed_over, &carried_out) {
                core.metrics()
                    .count_relayed(transport, MessageKind::of(&inbound.bytes));
            }
            match carried_out {
                Ok(()) if to_udp_upstream => {
                    core.metrics().note_upstream_sent();
                    // Only a request other than ACK gets something back.
                    let answered = MessageKind::of(&inbound.bytes) == MessageKind::Request
                        && !inbound.bytes.starts_with(b"ACK ");
                    if answered {
                        edge.upstream_watch.relayed(started);
                    }
                }
                Ok(()) => {}
                Err((to, e)) => {
                    let fault = match (&to, &e) {
                        (Destination::Upstream, SendError::Io { .. }) => Fault::UpstreamSend,
                        _ => Fault::of_send(&e),
                    };
                    fault.report(core.metrics(), None, &e);
                    not_delivered(core, senders, log, &inbound, &to, &e).await;
                }
            }
        }
        Event::Refused { inbound, refusal } => {
            let outcome = core.refuse_source(&inbound, Instant::now(), refusal);
            if let Err((_, e)) = carry_out(senders, log, &inbound, outcome, core.boot()).await {
                Fault::of_send(&e).report(core.metrics(), Some(inbound.source), &e);
            }
        }
        // The link reported its connect failure once; each message is
        // counted and, if a request, answered here.
        Event::Undelivered { inbound, error } => {
            debug!(source = %inbound.source, error = %error, "not delivered to the upstream");
            not_delivered(core, senders, log, &inbound, &Destination::Upstream, &error).await;
        }
    }
}

/// A message could not be sent to `to` (`error` says why): counted; for
/// the registrar, also counted by the upstream's transport and remembered
/// for `/readyz` until a message is delivered to it, and a request is
/// answered `503` with Retry-After (logged and recorded by the core).
async fn not_delivered(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    inbound: &Inbound,
    to: &Destination,
    error: &SendError,
) {
    core.metrics().count_drop(DropReason::SendFailed);
    if *to != Destination::Upstream {
        return;
    }
    // A full queue is no sign of a registrar that is down.
    let busy = matches!(error, SendError::UpstreamQueueFull(_));
    if !busy {
        core.metrics()
            .count_upstream_send_failure(senders.upstream.transport(), error.to_string());
    }
    // A response has no one to answer it; nor has sipadmit's own probe
    // (the only message "from the registrar" that goes to the registrar).
    if inbound.bytes.starts_with(b"SIP/") || inbound.from_upstream {
        return;
    }
    let answer = core.upstream_unavailable(inbound, Instant::now(), busy);
    if let Err((_, e)) = carry_out(senders, log, inbound, answer, core.boot()).await {
        Fault::of_send(&e).report(core.metrics(), Some(inbound.source), &e);
    }
}

/// Submit an outcome's record and send what it says (never waiting for a
/// connection). `boot` is this instance's: only its stream flows are
/// written to.
async fn carry_out(
    senders: &Senders,
    log: &DecisionLog,
    inbound: &Inbound,
    mut outcome: Outcome,
    boot: BootId,
) -> Result<(), (Destination, SendError)> {
    if let Some(record) = outcome.record.take() {
        log.submit(record);
    }
    let Some(Outbound { to, bytes }) = outcome.send else {
        return Ok(());
    };
    let result = match &to {
        // Back where it came from: the same connection, or the same UDP socket.
        Destination::Source => match inbound.connection {
            Some(id) => senders.connections.send(id, inbound.source, bytes),
            None => {
                senders
                    .send_datagram(Some(inbound.local), inbound.source, &bytes)
                    .await
            }
        },
        Destination::Flow(flow) if flow.transport.is_stream() => match flow.connection {
            Some(id) if id.boot == boot => {
                senders.connections.send(id.connection, flow.peer, bytes)
            }
            // The core names only stream flows of this instance; never
            // write another instance's flow onto a connection of ours.
            _ => Err(SendError::ForeignFlow(flow.peer)),
        },
        Destination::Flow(flow) => senders.send_datagram(None, flow.peer, &bytes).await,
        Destination::Upstream => senders.send_upstream(bytes, inbound).await,
    };
    result.map_err(|e| (to, e))
}

/// Open the decision log, bind, then serve until SIGINT or SIGTERM; then
/// close the decision log within [`SHUTDOWN_DEADLINE`].
pub async fn run(config: Config) -> Result<(), AppError> {
    let signals = Signals::install().map_err(AppError::Signals)?;
    let (decision_log, log_writer) = DecisionLog::open(&config.settings.decision_log)?;
    let bound = bind(&config).await?;
    let shutdown = CancellationToken::new();
    // One pending reload is enough: SIGHUPs during a reload fold into it.
    let (reload_tx, reloads) = mpsc::channel(1);
    tokio::spawn(handle_signals(
        signals,
        decision_log.clone(),
        reload_tx,
        shutdown.clone(),
    ));
    let served = serve_reloading(config, bound, decision_log, shutdown, Some(reloads)).await;
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

/// SIGHUP asks for a reload (the config file and the TLS certificates, see
/// [`crate::reload`]) and reopens the decision log (logrotate); SIGTERM or
/// SIGINT cancels `shutdown`.
async fn handle_signals(
    mut signals: Signals,
    log: DecisionLog,
    reload: mpsc::Sender<()>,
    shutdown: CancellationToken,
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
                info!(signal = name, "shutting down");
                shutdown.cancel();
                return;
            }
        }
    }
}

/// A signal `run` acts on.
enum Signal {
    /// SIGHUP.
    Hangup,
    /// SIGTERM or SIGINT, by name.
    Stop(&'static str),
}

/// The signal handlers, installed before anything is bound so that no
/// signal finds the default action (which ends the process).
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                hangup: signal(SignalKind::hangup())?,
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.hangup.recv() => Signal::Hangup,
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
