//! The workers: one event loop per core (`proxy.workers`).
//!
//! The first worker runs on the caller's runtime, beside everything that
//! exists once (the admin listener, reloads, chores, the upstream link and
//! the probes of the registrar). Every other worker is a thread with a
//! current-thread runtime of its own, its own socket on every listener (a
//! `SO_REUSEPORT` sibling, see [`crate::transport::spread`]), its own event
//! queue and its own dispatcher ([`Dispatcher::sibling`]).
//!
//! They share the core (its tables are concurrent, its configuration an
//! `ArcSwap` snapshot), the connections (any worker writes to any
//! connection through that connection's queue), the upstream link, the
//! admission and the decision log. A response that arrives on one worker's
//! socket for a request another worker relayed goes out all the same: the
//! flow token in the Via or Path names the client, not a worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::dispatch::Dispatcher;
use crate::transport::stream::{self, Listener};
use crate::transport::tls::{self, TlsContexts, TlsListener};
use crate::transport::udp::{self, Datagrams};
use crate::transport::{Event, Transport, TransportContext, UdpListener};
use crate::vocabulary::LocalAddr;

/// Events queued between a worker's stream connections (their messages)
/// or the upstream link (messages it could not deliver) and its dispatcher.
/// Datagrams are not queued here: the dispatcher receives them itself, and
/// a UDP burst waits in the socket's receive buffer
/// (`limits.udp_receive_buffer_bytes`).
pub const EVENT_QUEUE: usize = 4096;

/// One worker's sockets beyond the first worker, bound but not yet on a
/// runtime: one per listener, in the order of the first worker's.
#[derive(Debug, Default)]
pub struct WorkerSockets {
    /// One per UDP listener.
    pub udp: Vec<std::net::UdpSocket>,
    /// One per `tcp:` listener.
    pub tcp: Vec<std::net::TcpListener>,
    /// One per `tls:` listener.
    pub tls: Vec<std::net::TcpListener>,
}

/// What one worker serves: its UDP sockets and its stream listeners, each
/// with the address it is advertised at.
#[derive(Debug, Default)]
pub struct Listeners {
    /// UDP sockets.
    pub udp: Vec<UdpListener>,
    /// Stream listeners: transport, socket, advertised address.
    pub streams: Vec<(Transport, TcpListener, LocalAddr)>,
}

/// What every worker beyond the first starts from.
pub struct Start {
    /// The first worker's transport context (its events are replaced).
    pub ctx: TransportContext,
    /// The TLS handshake deadline of `tls:` listeners
    /// (`tls.handshake_timeout_secs`).
    pub handshake_timeout: Duration,
    /// The TLS acceptor of `tls:` listeners.
    pub tls_contexts: TlsContexts,
    /// The addresses the first worker's UDP listeners are advertised at,
    /// in order.
    pub udp_locals: Vec<LocalAddr>,
    /// The first worker's stream listeners' transports and advertised
    /// addresses, in order (`tcp:` first, then `tls:`).
    pub stream_locals: Vec<(Transport, LocalAddr)>,
    /// Stop signal.
    pub shutdown: CancellationToken,
}

/// Start worker `index` on a thread of its own, serving `sockets` with
/// `dispatcher` (a sibling of the first worker's) until `start.shutdown`.
pub fn spawn(
    index: usize,
    sockets: WorkerSockets,
    dispatcher: Dispatcher,
    start: &Start,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let ctx = start.ctx.clone();
    let handshake_timeout = start.handshake_timeout;
    let tls_contexts = start.tls_contexts.clone();
    let udp_locals = start.udp_locals.clone();
    let stream_locals = start.stream_locals.clone();
    let shutdown = start.shutdown.clone();
    // A worker that cannot serve stops the instance (logged): serving with
    // fewer workers than configured would hide the problem.
    let cannot = move |shutdown: &CancellationToken, what: &str, e: std::io::Error| {
        error!(worker = index, error = %e, "worker cannot {what}: stopping");
        shutdown.cancel();
    };
    std::thread::Builder::new()
        .name(format!("sipadmit-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return cannot(&shutdown, "start its event loop", e),
            };
            runtime.block_on(async move {
                let listeners = match on_this_runtime(sockets, &udp_locals, &stream_locals) {
                    Ok(listeners) => listeners,
                    Err(e) => return cannot(&shutdown, "take its sockets", e),
                };
                info!(worker = index, "worker started");
                let (events_tx, events) = mpsc::channel::<Event>(EVENT_QUEUE);
                let ctx = Arc::new(TransportContext {
                    events: events_tx,
                    ..ctx
                });
                serve(
                    listeners,
                    ctx,
                    events,
                    handshake_timeout,
                    &tls_contexts,
                    dispatcher,
                    shutdown,
                )
                .await;
            });
        })
}

/// Register a worker's sockets with the runtime it runs on.
fn on_this_runtime(
    sockets: WorkerSockets,
    udp_locals: &[LocalAddr],
    stream_locals: &[(Transport, LocalAddr)],
) -> std::io::Result<Listeners> {
    let udp = sockets
        .udp
        .into_iter()
        .zip(udp_locals)
        .map(|(socket, local)| {
            Ok(UdpListener::new(
                Arc::new(UdpSocket::from_std(socket)?),
                *local,
            ))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let streams = sockets
        .tcp
        .into_iter()
        .chain(sockets.tls)
        .zip(stream_locals)
        .map(|(listener, (transport, local))| {
            Ok((*transport, TcpListener::from_std(listener)?, *local))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Listeners { udp, streams })
}

/// Serve one worker on the current runtime until `shutdown`: its
/// dispatcher receives its UDP datagrams itself, and its stream listeners
/// feed `events` (through `ctx`, whose events go there).
pub async fn serve(
    listeners: Listeners,
    ctx: Arc<TransportContext>,
    events: mpsc::Receiver<Event>,
    handshake_timeout: Duration,
    tls_contexts: &TlsContexts,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    spawn_listeners(
        &mut tasks,
        &listeners.udp,
        listeners.streams,
        &ctx,
        handshake_timeout,
        tls_contexts,
    );
    let datagrams = Datagrams::new(listeners.udp.clone(), ctx);
    dispatcher
        .sending_datagrams_from(listeners.udp)
        .run(events, datagrams, shutdown)
        .await;
    tasks.shutdown().await;
}

/// Start the watch on the UDP sockets' ICMP errors and the stream accept
/// loops. Each stream
/// listener's open step is chosen here: `tcp:` refuses a TLS ClientHello
/// (the first byte due within the message deadline), `tls:` runs the
/// handshake (bounded like a message) in the connection's task and slot.
fn spawn_listeners(
    tasks: &mut JoinSet<()>,
    udp_listeners: &[UdpListener],
    streams: Vec<(Transport, TcpListener, LocalAddr)>,
    ctx: &Arc<TransportContext>,
    handshake_timeout: Duration,
    tls_contexts: &TlsContexts,
) {
    for listener in udp_listeners {
        tasks.spawn(udp::watch_errors(
            listener.clone(),
            ctx.metrics.clone(),
            ctx.udp_upstream,
            ctx.shutdown.clone(),
        ));
    }
    let deadline = ctx.limits.message_deadline;
    for (transport, listener, local) in streams {
        let at = Listener { transport, local };
        let metrics = ctx.metrics.clone();
        match transport {
            Transport::Tcp => {
                let open = move |tcp| tls::refuse_tls_client_hello(tcp, deadline, metrics.clone());
                tasks.spawn(stream::accept(listener, at, ctx.clone(), open));
            }
            Transport::Tls => {
                let Some(server) = tls_contexts.server.clone() else {
                    error!(%local, "tls: listener without a TLS acceptor: not served");
                    continue;
                };
                let handshake_deadline = handshake_timeout.min(deadline);
                let handshake = TlsListener::new(server, handshake_deadline, metrics);
                let open = move |tcp| {
                    let handshake = handshake.clone();
                    async move { handshake.open(tcp).await }
                };
                tasks.spawn(stream::accept(listener, at, ctx.clone(), open));
            }
            Transport::Udp => error!(%local, "a UDP socket among the stream listeners: not served"),
        }
    }
}
