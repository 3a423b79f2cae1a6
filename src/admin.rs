//! The admin HTTP listener (`[admin] listen` or `run --admin IP:PORT`, off
//! by default): `GET /metrics` (Prometheus text, see
//! [`crate::observe::metrics`]), `GET /healthz` and `GET /readyz`. Any other
//! path is 404, any other method 405. HTTP/1.1 through hyper; each
//! connection is its own task, so a slow scraper never holds up SIP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Endpoint;
use crate::observe::metrics::{Gauges, TRANSPORTS};
use crate::observe::{DecisionLog, Metrics};
use crate::proxy::Core;
use crate::transport::admission::Admission;
use crate::transport::tls::ClientTls;
use crate::transport::{Connections, Transport};

/// Most admin connections open at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// A request whose headers take longer than this to arrive is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for a connection to a stream upstream, and
/// then for the TLS handshake with a `tls:` upstream (each).
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A message not delivered to the upstream (a failed UDP send, a connect
/// of the stream link that failed) makes `/readyz` fail for this long,
/// 30 s, unless one is delivered meanwhile.
pub const UPSTREAM_FAILURE_WINDOW: Duration = Duration::from_secs(30);

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
    /// The SIP listeners bound (advertised addresses).
    pub listeners: Vec<(Transport, SocketAddr)>,
    /// Per-source rate limits and bans (bans in force, sources tracked).
    pub admission: Arc<Admission>,
    /// The queue to a stream upstream, for its gauge (`None` for UDP).
    pub upstream_queue: Option<Arc<crate::transport::upstream::QueueBudget>>,
    /// sipadmit sends the registrar OPTIONS probes (`proxy.upstream_probe_secs`):
    /// a UDP registrar is "unknown" until it answers one.
    pub probing: bool,
    /// Cancelled when the instance stops serving.
    pub shutdown: CancellationToken,
}

/// Serve admin requests on `listener` until `state.shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            () = state.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, state).await;
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, state: Arc<AdminState>) {
    let shutdown = state.shutdown.clone();
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(answer(&request, &state).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        () = shutdown.cancelled() => {}
        served = connection => if let Err(e) = served {
            debug!(%peer, error = %e, "admin connection ended");
        },
    }
}

/// The response to one admin request.
async fn answer(request: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
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
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics_text(state));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => match not_ready(state).await {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
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
        client_transactions: state.core.client_transactions().len(),
        client_transaction_bytes: state.core.client_transactions().accounted_bytes(),
        upstream_queue_bytes: state.upstream_queue.as_ref().map_or(0, |q| q.queued()),
        decision_records_dropped: state.decision_log.dropped(),
        decision_records_lost: state.decision_log.lost(),
        config_generation: state.core.generation(),
        bans_in_force: state.admission.bans(),
        rate_limited_sources: state.admission.tracked_sources(),
    };
    state.metrics.render(&gauges)
}

/// Why the instance is not ready, or `None` when every listener is bound
/// and the upstream is reachable: no message failed to reach it in the last
/// [`UPSTREAM_FAILURE_WINDOW`] without one delivered since (as the
/// dispatcher and the stream upstream's link report it, TLS handshake
/// failures of a `tls:` upstream included); for a UDP upstream, no ICMP
/// error came back for a datagram sent to it and it was not silent for
/// [`crate::transport::upstream::SILENCE`] with requests relayed, unless it
/// sent a message since (no time limit: only a message from it clears
/// this); and, for a stream upstream, a
/// connection to it can be made now (the link itself connects only when it
/// has a message to send). For a `tls:` upstream that probe is a full
/// TLS handshake with the link's own client (the registrar's certificate
/// verified), then closed; probe handshakes are not counted in
/// `sipadmit_tls_handshakes_total`.
pub async fn not_ready(state: &AdminState) -> Option<String> {
    if state.shutdown.is_cancelled() {
        return Some("stopping".into());
    }
    if state.listeners.is_empty() {
        return Some("no SIP listener is bound".into());
    }
    let upstream = state.upstream;
    if let Some(failure) = state.metrics.upstream_failure() {
        let ago = failure.at.elapsed();
        if ago < UPSTREAM_FAILURE_WINDOW {
            return Some(format!(
                "upstream {upstream} not reachable: {} ({} s ago, nothing delivered since)",
                failure.error,
                ago.as_secs()
            ));
        }
    }
    if !upstream.transport.is_stream() {
        // A UDP upstream: an ICMP error for a datagram sent to it, or its
        // silence with requests relayed, until it sends a message again;
        // with probes on, unknown until it has sent one at all.
        if let Some(unreachable) = state.metrics.udp_upstream_unreachable() {
            return Some(format!(
                "upstream {upstream} not reachable: {} ({} s ago, no message from it since)",
                unreachable.error,
                unreachable.at.elapsed().as_secs()
            ));
        }
        if state.probing && !state.metrics.udp_upstream_heard() {
            return Some(format!(
                "upstream {upstream} unknown: it has not answered sipadmit's OPTIONS probe yet"
            ));
        }
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
