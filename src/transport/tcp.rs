//! TCP: accept loop (connection cap, backoff), one reader and one writer
//! task per connection, idle timeout, RFC 5626 keep-alive pongs, and the
//! client side link to a TCP upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Transport;
use super::{ConnectionId, Connections, SendError};
use crate::config::Limits;
use crate::observe::metrics::{DropReason, Metrics};
use crate::proxy::Inbound;
use crate::sip::framing::{Frame, StreamFramer};

/// Messages queued per connection; a peer that lets more pile up is closed.
const WRITE_QUEUE: usize = 256;
/// A write that makes no progress for this long closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed connect to the upstream, fail fast for this long.
const UPSTREAM_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long connecting to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Live connections (writers).
    pub connections: Arc<Connections>,
    /// Where messages go.
    pub inbound: mpsc::Sender<Inbound>,
    /// Limits.
    pub limits: Limits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop signal.
    pub shutdown: CancellationToken,
    /// Connection slots shared by every listener (`limits.max_connections`).
    pub slots: Arc<Semaphore>,
    /// With a TCP upstream: its address. Connections the registrar opens to
    /// a listener (to send requests) come from this IP and count as upstream.
    pub upstream_ip: Option<std::net::IpAddr>,
}

/// Accept connections until `shutdown`; `local` is the address this
/// listener is advertised at (in Via, Path, Record-Route).
pub async fn serve(listener: TcpListener, local: SocketAddr, ctx: ConnectionContext) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "TCP accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = ctx.limits.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ctx.connections.next_id();
        let (read, write) = stream.into_split();
        spawn_writer(&ctx, id, peer, write);
        let ctx = ctx.clone();
        let from_upstream = ctx.upstream_ip == Some(peer.ip());
        let ends = Ends { peer, local };
        tokio::spawn(async move {
            read_loop(read, ends, id, from_upstream, &ctx).await;
            drop(permit);
        });
    }
}

/// The two ends of a connection: the peer, and the address of this proxy
/// the connection belongs to (as advertised).
#[derive(Debug, Clone, Copy)]
struct Ends {
    peer: SocketAddr,
    local: SocketAddr,
}

fn spawn_writer(
    ctx: &ConnectionContext,
    id: ConnectionId,
    peer: SocketAddr,
    mut write: OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    ctx.connections.insert(id, peer, Transport::Tcp, tx);
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(connection = %id, error = %e, "TCP write failed");
                    break;
                }
                Err(_) => {
                    warn!(connection = %id, "TCP write stalled; closing");
                    break;
                }
            }
        }
        let _ = write.shutdown().await;
    });
}

/// Read and frame one connection until EOF, error, idle timeout or shutdown.
async fn read_loop(
    mut read: OwnedReadHalf,
    ends: Ends,
    id: ConnectionId,
    from_upstream: bool,
    ctx: &ConnectionContext,
) {
    let peer = ends.peer;
    let mut framer = StreamFramer::new(ctx.limits.max_message_bytes);
    let mut buf = BytesMut::with_capacity(8192);
    debug!(%peer, connection = %id, "TCP connection open");
    'conn: loop {
        let read_result = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            r = tokio::time::timeout(ctx.limits.tcp_idle_timeout, read.read_buf(&mut buf)) => r,
        };
        match read_result {
            Err(_) => {
                info!(%peer, connection = %id, "TCP connection idle; closing");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Err(e)) => {
                debug!(%peer, connection = %id, error = %e, "TCP read failed");
                break;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            match framer.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    Metrics::inc(&ctx.metrics.keepalives);
                    let _ = ctx.connections.send(id, peer, Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Message(bytes))) => {
                    let message = Inbound {
                        bytes,
                        transport: Transport::Tcp,
                        source: peer,
                        local: ends.local,
                        connection: Some(id),
                        from_upstream,
                    };
                    if ctx.inbound.send(message).await.is_err() {
                        break 'conn;
                    }
                }
                Err(e) => {
                    warn!(%peer, connection = %id, error = %e, "unframeable TCP stream; closing");
                    ctx.metrics.count_drop(DropReason::Malformed);
                    break 'conn;
                }
            }
        }
    }
    ctx.connections.remove(id);
    debug!(%peer, connection = %id, "TCP connection closed");
}

/// The proxy's own connection to a TCP upstream, opened on first use and
/// reopened after it fails. What the upstream sends on it is marked
/// `from_upstream`.
#[derive(Debug)]
pub struct UpstreamLink {
    addr: SocketAddr,
    /// The TCP listener address this proxy advertises toward the upstream.
    local: SocketAddr,
    current: tokio::sync::Mutex<LinkState>,
    ctx: ConnectionContext,
}

/// The upstream connection, or when connecting last failed.
#[derive(Debug, Default)]
struct LinkState {
    connection: Option<ConnectionId>,
    failed_at: Option<tokio::time::Instant>,
}

impl UpstreamLink {
    /// A link to `addr` (not connected yet); `local` is the TCP listener
    /// address this proxy advertises (messages on the link arrive "at" it).
    pub fn new(addr: SocketAddr, local: SocketAddr, ctx: ConnectionContext) -> Self {
        Self {
            addr,
            local,
            current: tokio::sync::Mutex::new(LinkState::default()),
            ctx,
        }
    }

    /// Send on the link, connecting first when needed.
    pub async fn send(&self, bytes: Bytes) -> Result<(), SendError> {
        let mut state = self.current.lock().await;
        if let Some(id) = state.connection {
            if self.ctx.connections.is_open_to(id, self.addr) {
                return self.ctx.connections.send(id, self.addr, bytes);
            }
        }
        let refused = || SendError::Io {
            addr: self.addr,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        if state
            .failed_at
            .is_some_and(|at| at.elapsed() < UPSTREAM_RETRY_DELAY)
        {
            return Err(refused());
        }
        let connected =
            tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                state.failed_at = Some(tokio::time::Instant::now());
                return Err(SendError::Io {
                    addr: self.addr,
                    source,
                });
            }
            Err(_) => {
                state.failed_at = Some(tokio::time::Instant::now());
                return Err(SendError::Io {
                    addr: self.addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
        state.failed_at = None;
        let _ = stream.set_nodelay(true);
        let id = self.ctx.connections.next_id();
        let (read, write) = stream.into_split();
        spawn_writer(&self.ctx, id, self.addr, write);
        let ctx = self.ctx.clone();
        let ends = Ends {
            peer: self.addr,
            local: self.local,
        };
        tokio::spawn(async move { read_loop(read, ends, id, true, &ctx).await });
        state.connection = Some(id);
        info!(upstream = %self.addr, connection = %id, "connected to upstream");
        self.ctx.connections.send(id, self.addr, bytes)
    }
}
