//! The admin HTTP listener (`[admin] listen` or `run --admin IP:PORT`, off
//! by default): `GET /metrics` (Prometheus text, see
//! [`crate::observe::metrics`]), `GET /healthz` and `GET /readyz`. Any other
//! path is 404, any other method 405. HTTP/1.1 through hyper; each
//! connection is its own task, so a slow scraper never holds up SIP.
//!
//! Nobody can make it stop answering `/healthz` by holding connections
//! open (issue "edge holes", item 5):
//! - the accept loop never waits on a peer: a connection over
//!   [`MAX_CONNECTIONS_PER_SOURCE`] open from its IP address, or over
//!   [`MAX_CONNECTIONS`] open in all, is closed at once and counted;
//! - a request head must arrive whole within [`HEADER_READ_TIMEOUT`], the
//!   first on a connection and each next one on a kept-alive connection
//!   (so an idle keep-alive connection is closed after it too), and a
//!   connection lives at most [`CONNECTION_LIFETIME`];
//! - `/healthz` answers at once; `/metrics` renders off the event loop
//!   (on a blocking thread, one render at a time, a request waiting at
//!   most [`BUSY_WAIT`] for its turn before a `503`), and concurrent
//!   `/readyz` requests share one upstream probe instead of each making
//!   its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Endpoint;
use crate::observe::metrics::{Gauges, TRANSPORTS};
use crate::observe::{DecisionLog, Metrics};
use crate::proxy::Core;
use crate::transport::admission::Admission;
use crate::transport::tls::ClientTls;
use crate::transport::Connections;

/// Most admin connections open at once, from all sources; more are closed
/// as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Most admin connections open at once from one IP address; more from it
/// are closed as soon as they are accepted.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 8;
/// A request head (request line and headers) must have arrived whole this
/// long after the listener started waiting for it: on a new connection,
/// from the accept; on a kept-alive one, from the end of the previous
/// response (so this is also how long a keep-alive connection may idle).
/// Else the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest an admin connection stays open: then it is closed once the
/// request in progress, if any, is answered (at most [`CLOSE_GRACE`]
/// later).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// How long a request in progress at [`CONNECTION_LIFETIME`] has left to
/// be answered before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a `/metrics` request waits for the renders ahead of it (they
/// run one at a time) before it is answered `503`.
pub const BUSY_WAIT: Duration = Duration::from_secs(1);
/// The read buffer of one admin connection (hyper's minimum is 8 KiB; an
/// admin request head is a few hundred bytes).
const MAX_BUF_BYTES: usize = 16 * 1024;
/// Refused connections are logged as a warning at most this often (each
/// one at debug level; all counted).
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for a connection to a stream upstream, and
/// then for the TLS handshake with a `tls:` upstream (each).
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
pub use crate::proxy::health::UPSTREAM_FAILURE_WINDOW;

/// What the admin endpoints read: the serving instance's parts.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The proxy core (registrations, config generation).
    pub core: Arc<Core>,
    /// Open stream connections.
    pub connections: Arc<Connections>,
    /// The decision log (records dropped).
    pub decision_log: DecisionLog,
    /// The upstream registrar.
    pub upstream: Endpoint,
    /// The TLS client of a `tls:` upstream (the `/readyz` probe runs a
    /// handshake with it).
    pub upstream_tls: Option<Arc<ClientTls>>,
    /// Per-source rate limits and bans (bans in force, sources tracked).
    pub admission: Arc<Admission>,
    /// The queue to a stream upstream, for its gauge (`None` for UDP).
    pub upstream_backlog: Option<Arc<crate::transport::upstream::UpstreamBacklog>>,
    /// Cancelled when the instance stops serving.
    pub shutdown: CancellationToken,
}

/// Whether the admin listener on `addr` can be reached from other hosts:
/// any address but a loopback one (`0.0.0.0` and `::` included).
pub fn is_remote(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// At start: warn when the admin listener binds `addr`, not a loopback
/// address, and the config does not say so on purpose
/// (`[admin] allow_remote = true`): nothing on it asks who is calling.
/// Whether it warned.
pub fn warn_if_remote(addr: SocketAddr, allow_remote: bool) -> bool {
    if !is_remote(addr) || allow_remote {
        return false;
    }
    warn!(
        %addr,
        "the admin listener (/metrics, /healthz, /readyz) is on a non-loopback address and has no authentication: \
         keep it on loopback or a management network, or set [admin] allow_remote = true if this is intended"
    );
    true
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// [`MAX_CONNECTIONS_PER_SOURCE`] open from its address already.
    PerSource,
    /// [`MAX_CONNECTIONS`] open already.
    Total,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::Total => "total",
        }
    }
}

/// The admin connections open, in all and per source address.
#[derive(Debug)]
struct Slots {
    total_cap: usize,
    per_source_cap: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Slots {
    fn new(total_cap: usize, per_source_cap: usize) -> Arc<Self> {
        Arc::new(Self {
            total_cap,
            per_source_cap,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for one more connection from `ip`, held until dropped; or why
    /// not. Never waits (a lock held for a few map operations).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_source) = &mut *open;
        let from_ip = per_source.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_source_cap {
            return Err(Refusal::PerSource);
        }
        if *total >= self.total_cap {
            return Err(Refusal::Total);
        }
        *total += 1;
        per_source.insert(ip, from_ip + 1);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Sources with a connection open now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .len()
    }
}

/// One admitted connection's place in [`Slots`], given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_source) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.ip);
            }
        }
    }
}

/// The admin listener's own counters (rendered after the instance's in
/// `/metrics`).
#[derive(Debug, Default)]
struct AdminCounters {
    refused_per_source: AtomicU64,
    refused_total: AtomicU64,
    header_timeouts: AtomicU64,
    lifetime_ends: AtomicU64,
    metrics_busy: AtomicU64,
    accept_failures: AtomicU64,
}

/// The last `/readyz` verdict and when its probe finished.
#[derive(Debug)]
struct Probed {
    finished: Instant,
    verdict: Option<String>,
}

/// Everything the listener's tasks share.
#[derive(Debug)]
struct Shared {
    state: AdminState,
    slots: Arc<Slots>,
    counters: AdminCounters,
    /// One `/metrics` render at a time.
    render: Arc<Semaphore>,
    /// One `/readyz` probe at a time; a request that waited for it takes
    /// its verdict.
    readiness: tokio::sync::Mutex<Option<Probed>>,
    /// When a refused connection was last logged as a warning.
    refusal_warned: Mutex<Option<Instant>>,
    /// When a failed accept was last logged, and the failures counted then.
    accept_warned: Mutex<Option<(Instant, u64)>>,
}

impl Shared {
    fn new(state: AdminState, slots: Arc<Slots>) -> Self {
        Self {
            state,
            slots,
            counters: AdminCounters::default(),
            render: Arc::new(Semaphore::new(1)),
            readiness: tokio::sync::Mutex::new(None),
            refusal_warned: Mutex::new(None),
            accept_warned: Mutex::new(None),
        }
    }

    /// Accepting a connection failed (out of descriptors, say: nothing a
    /// peer decides): counted; a warning at most every
    /// [`REFUSAL_WARNING_EVERY`], with the failures since the last one.
    fn accept_failed(&self, error: &std::io::Error) {
        let total = self
            .counters
            .accept_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let now = Instant::now();
        let mut warned = self
            .accept_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned.is_some_and(|(at, _)| now.duration_since(at) < REFUSAL_WARNING_EVERY) {
            return;
        }
        let failed = total - warned.map_or(0, |(_, counted)| counted);
        *warned = Some((now, total));
        warn!(
            error = %error,
            failed,
            failed_total = total,
            "admin accept failed (logged at most every 10 s; sipadmit_admin_accept_failures_total counts them all)"
        );
    }

    /// Count a connection closed at accept; a warning at most every
    /// [`REFUSAL_WARNING_EVERY`].
    fn refused(&self, refusal: Refusal, peer: SocketAddr) {
        let counter = match refusal {
            Refusal::PerSource => &self.counters.refused_per_source,
            Refusal::Total => &self.counters.refused_total,
        };
        Metrics::inc(counter);
        debug!(%peer, reason = refusal.as_str(), "admin connection refused");
        let now = Instant::now();
        let mut warned = self
            .refusal_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned.is_some_and(|at| now.duration_since(at) < REFUSAL_WARNING_EVERY) {
            return;
        }
        *warned = Some(now);
        warn!(
            %peer,
            reason = refusal.as_str(),
            per_source_cap = MAX_CONNECTIONS_PER_SOURCE,
            total_cap = MAX_CONNECTIONS,
            refused_per_source = self.counters.refused_per_source.load(Ordering::Relaxed),
            refused_total = self.counters.refused_total.load(Ordering::Relaxed),
            "admin connection refused: too many open (logged at most every 10 s; sipadmit_admin_connections_refused_total counts them all)"
        );
    }

    /// `/readyz`'s verdict: [`not_ready`], probed now, or the verdict of a
    /// probe that finished after this request arrived (it waited for that
    /// probe to finish), so a burst of requests makes one probe at a time.
    async fn readiness(&self) -> Option<String> {
        let arrived = Instant::now();
        let mut last = self.readiness.lock().await;
        if let Some(probed) = last.as_ref().filter(|p| p.finished >= arrived) {
            return probed.verdict.clone();
        }
        let verdict = not_ready(&self.state).await;
        *last = Some(Probed {
            finished: Instant::now(),
            verdict: verdict.clone(),
        });
        verdict
    }

    /// The exposition: the instance's counters and gauges, then the admin
    /// listener's own.
    fn exposition(&self) -> String {
        let mut text = metrics_text(&self.state);
        let c = &self.counters;
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        family(
            "sipadmit_admin_connections_refused_total",
            "counter",
            "Admin HTTP connections closed as soon as accepted, by reason: per_source (8 open from that IP address already) or total (64 open already).",
            &[
                ("{reason=\"per_source\"}", load(&c.refused_per_source)),
                ("{reason=\"total\"}", load(&c.refused_total)),
            ],
        );
        family(
            "sipadmit_admin_connections_closed_total",
            "counter",
            "Admin HTTP connections closed by sipadmit, by reason: header_timeout (no whole request head within 2 s, also between keep-alive requests) or lifetime (open 10 s).",
            &[
                ("{reason=\"header_timeout\"}", load(&c.header_timeouts)),
                ("{reason=\"lifetime\"}", load(&c.lifetime_ends)),
            ],
        );
        family(
            "sipadmit_admin_accept_failures_total",
            "counter",
            "Connections the admin listener failed to accept (out of file descriptors, say).",
            &[("", load(&c.accept_failures))],
        );
        family(
            "sipadmit_admin_metrics_busy_total",
            "counter",
            "/metrics requests answered 503 because earlier renders kept them waiting 1 s.",
            &[("", load(&c.metrics_busy))],
        );
        family(
            "sipadmit_admin_connections",
            "gauge",
            "Admin HTTP connections open.",
            &[("", self.slots.open() as u64)],
        );
        text
    }
}

/// Serve admin requests on `listener` until `state.shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening (/metrics, /healthz, /readyz)");
    }
    let slots = Slots::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE);
    let shared = Arc::new(Shared::new(state, slots));
    loop {
        let (stream, peer) = tokio::select! {
            () = shared.state.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    shared.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match shared.slots.admit(peer.ip()) {
            Ok(slot) => {
                tokio::spawn(serve_connection(stream, peer, shared.clone(), slot));
            }
            Err(refusal) => {
                drop(stream);
                shared.refused(refusal, peer);
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, slot: Slot) {
    let _slot = slot;
    let shutdown = shared.state.shutdown.clone();
    let service = {
        let shared = shared.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(answer(&request, &shared).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        () = shutdown.cancelled() => return,
        served = connection.as_mut() => served,
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            Metrics::inc(&shared.counters.lifetime_ends);
            // No more requests: the one in progress, if any, is answered.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                () = shutdown.cancelled() => return,
                served = tokio::time::timeout(CLOSE_GRACE, connection.as_mut()) => match served {
                    Ok(served) => served,
                    Err(_) => {
                        debug!(%peer, "admin connection dropped at the end of its lifetime");
                        return;
                    }
                },
            }
        }
    };
    if let Err(e) = served {
        if e.is_timeout() {
            Metrics::inc(&shared.counters.header_timeouts);
        }
        debug!(%peer, error = %e, "admin connection ended");
    }
}

/// The response to one admin request.
async fn answer(request: &Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
        );
    }
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => metrics(shared).await,
        _ => match shared.readiness().await {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
}

/// `/metrics`: rendered on a blocking thread (the event loop serving
/// `/healthz` and SIP never renders), one render at a time; a request
/// kept waiting [`BUSY_WAIT`] for its turn is answered `503`.
async fn metrics(shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let turn = tokio::time::timeout(BUSY_WAIT, shared.render.clone().acquire_owned()).await;
    let Ok(Ok(turn)) = turn else {
        Metrics::inc(&shared.counters.metrics_busy);
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many /metrics requests at once\n",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let rendering = shared.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        rendering.exposition()
    })
    .await;
    let Ok(rendered) = rendered else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the render of /metrics failed\n",
        );
    };
    let mut response = text(StatusCode::OK, rendered);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The exposition of the counters and the gauges read now.
pub fn metrics_text(state: &AdminState) -> String {
    let gauges = Gauges {
        connections: TRANSPORTS
            .iter()
            .filter(|t| t.is_stream())
            .map(|&t| {
                let opening = state.metrics.opening_connections(t) as usize;
                (t, state.connections.count(t) + opening)
            })
            .collect(),
        registrations: state.core.registrations().len(),
        registrations_pending: state.core.registrations().pending(),
        registration_table_bytes: state.core.registrations().accounted_bytes(),
        transactions: state.core.transactions().len(),
        transaction_table_bytes: state.core.transactions().accounted_bytes(),
        transactions_evicted: state.core.transactions().evicted(),
        client_transactions: state.core.client_transactions().len(),
        client_transaction_bytes: state.core.client_transactions().accounted_bytes(),
        invites_toward_clients: state
            .core
            .toward_clients()
            .pending(std::time::Instant::now(), &|id, peer| {
                state.connections.is_open_to(id, peer)
            }),
        upstream_queue_bytes: state.upstream_backlog.as_ref().map_or(0, |q| q.queued()),
        decision_records_dropped: state.decision_log.dropped(),
        decision_records_lost: state.decision_log.lost(),
        config_generation: state.core.generation(),
        bans_in_force: state.admission.bans(),
        rate_limited_sources: state.admission.tracked_sources(),
    };
    state.metrics.render(&gauges)
}

/// Why the instance is not ready, or `None` when it is: stopping
/// (shutdown begun); then what [`Core::not_ready`] says (draining, no
/// listener, the registrar unreachable as deliveries and probes tell: the
/// same function answers the OPTIONS health probes); then, for a stream
/// upstream, whether a connection to it can be made now (the link itself
/// connects only when it has a message to send). For a `tls:` upstream
/// that probe is a full TLS handshake with the link's own client (the
/// registrar's certificate verified), then closed; probe handshakes are
/// not counted in `sipadmit_tls_handshakes_total`.
pub async fn not_ready(state: &AdminState) -> Option<String> {
    if state.shutdown.is_cancelled() {
        return Some("stopping".into());
    }
    if let Some(not_ready) = state.core.not_ready() {
        return Some(not_ready.to_string());
    }
    let upstream = state.upstream;
    if !upstream.transport.is_stream() {
        return None;
    }
    let probe = tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, TcpStream::connect(upstream.addr));
    let tcp = match probe.await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Some(format!("upstream {upstream} not reachable: {e}")),
        Err(_) => {
            return Some(format!(
                "upstream {upstream} not reachable: no connection within {} ms",
                UPSTREAM_PROBE_TIMEOUT.as_millis()
            ))
        }
    };
    let Some(client) = &state.upstream_tls else {
        return None;
    };
    let deadline = tokio::time::Instant::now() + UPSTREAM_PROBE_TIMEOUT;
    match client.connect(tcp, deadline).await {
        Ok(mut tls) => {
            // close_notify, so the registrar does not log a reset.
            let _ = tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, tls.shutdown()).await;
            None
        }
        Err(e) => Some(format!("upstream {upstream} not reachable: {e}")),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn slots_cap_each_source_and_the_total_and_come_back_on_drop() {
        let slots = Slots::new(5, 2);
        let a1 = slots.admit(ip("192.0.2.1")).unwrap();
        let a2 = slots.admit(ip("192.0.2.1")).unwrap();
        // The IPv4-mapped form is the same source.
        assert_eq!(
            slots.admit(ip("::ffff:192.0.2.1")).unwrap_err(),
            Refusal::PerSource
        );
        let others: Vec<_> = ["192.0.2.2", "192.0.2.2", "2001:db8::1"]
            .into_iter()
            .map(|a| slots.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(slots.open(), 5);
        // A new source, but the listener is full.
        assert_eq!(slots.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Total);
        // A source at its cap is refused as such even then.
        assert_eq!(
            slots.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerSource
        );
        drop(a1);
        assert_eq!(slots.open(), 4);
        let a3 = slots.admit(ip("192.0.2.1")).unwrap();
        drop((a2, a3, others));
        assert_eq!((slots.open(), slots.sources()), (0, 0));
    }

    #[test]
    fn only_loopback_admin_addresses_are_local() {
        for local in [
            "127.0.0.1:9464",
            "127.0.0.5:0",
            "[::1]:9464",
            "[::ffff:127.0.0.1]:9464",
        ] {
            let addr: SocketAddr = local.parse().unwrap();
            assert!(!is_remote(addr), "{local}");
            assert!(!warn_if_remote(addr, false), "{local}");
        }
        for remote in [
            "0.0.0.0:9464",
            "[::]:9464",
            "192.0.2.7:9464",
            "[2001:db8::7]:9464",
        ] {
            let addr: SocketAddr = remote.parse().unwrap();
            assert!(is_remote(addr), "{remote}");
            assert!(warn_if_remote(addr, false), "{remote}");
            assert!(!warn_if_remote(addr, true), "{remote}: allow_remote");
        }
    }
}
