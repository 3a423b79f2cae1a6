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

use super::{Connections, SendError};
use crate::config::{Limits, Transport};
use crate::observe::metrics::{DropReason, Metrics};
use crate::proxy::Inbound;
use crate::sip::framing::{Frame, StreamFramer};

/// Messages queued per connection before senders wait.
const WRITE_QUEUE: usize = 256;
/// How long connecting to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
}

/// Accept connections until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: ConnectionContext) {
    let permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, limit = ctx.limits.max_connections, "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ctx.connections.next_id();
        let (read, write) = stream.into_split();
        spawn_writer(&ctx, id, write);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            read_loop(read, peer, id, false, &ctx).await;
            drop(permit);
        });
    }
}

fn spawn_writer(ctx: &ConnectionContext, id: u64, mut write: OwnedWriteHalf) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    ctx.connections.insert(id, tx);
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if let Err(e) = write.write_all(&bytes).await {
                debug!(connection = id, error = %e, "TCP write failed");
                break;
            }
        }
        let _ = write.shutdown().await;
    });
}

/// Read and frame one connection until EOF, error, idle timeout or shutdown.
async fn read_loop(
    mut read: OwnedReadHalf,
    peer: SocketAddr,
    id: u64,
    from_upstream: bool,
    ctx: &ConnectionContext,
) {
    let mut framer = StreamFramer::new(ctx.limits.max_message_bytes);
    let mut buf = BytesMut::with_capacity(8192);
    debug!(%peer, connection = id, "TCP connection open");
    'conn: loop {
        let read_result = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            r = tokio::time::timeout(ctx.limits.tcp_idle_timeout, read.read_buf(&mut buf)) => r,
        };
        match read_result {
            Err(_) => {
                info!(%peer, connection = id, "TCP connection idle; closing");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Err(e)) => {
                debug!(%peer, connection = id, error = %e, "TCP read failed");
                break;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            match framer.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    Metrics::inc(&ctx.metrics.keepalives);
                    let _ = ctx.connections.send(id, Bytes::from_static(b"\r\n")).await;
                }
                Ok(Some(Frame::Message(bytes))) => {
                    let message = Inbound {
                        bytes,
                        transport: Transport::Tcp,
                        source: peer,
                        connection: id,
                        from_upstream,
                    };
                    if ctx.inbound.send(message).await.is_err() {
                        break 'conn;
                    }
                }
                Err(e) => {
                    warn!(%peer, connection = id, error = %e, "unframeable TCP stream; closing");
                    ctx.metrics.count_drop(DropReason::Malformed);
                    break 'conn;
                }
            }
        }
    }
    ctx.connections.remove(id);
    debug!(%peer, connection = id, "TCP connection closed");
}

/// The proxy's own connection to a TCP upstream, opened on first use and
/// reopened after it fails. What the upstream sends on it is marked
/// `from_upstream`.
#[derive(Debug)]
pub struct UpstreamLink {
    addr: SocketAddr,
    current: tokio::sync::Mutex<Option<u64>>,
    ctx: ConnectionContext,
}

impl UpstreamLink {
    /// A link to `addr` (not connected yet).
    pub fn new(addr: SocketAddr, ctx: ConnectionContext) -> Self {
        Self {
            addr,
            current: tokio::sync::Mutex::new(None),
            ctx,
        }
    }

    /// Send on the link, connecting first when needed.
    pub async fn send(&self, bytes: Bytes) -> Result<(), SendError> {
        let mut current = self.current.lock().await;
        if let Some(id) = *current {
            if self.ctx.connections.alive(id) {
                return self.ctx.connections.send(id, bytes).await;
            }
        }
        let stream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| SendError::Io {
                addr: self.addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| SendError::Io {
                addr: self.addr,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let id = self.ctx.connections.next_id();
        let (read, write) = stream.into_split();
        spawn_writer(&self.ctx, id, write);
        let ctx = self.ctx.clone();
        let addr = self.addr;
        tokio::spawn(async move { read_loop(read, addr, id, true, &ctx).await });
        *current = Some(id);
        info!(upstream = %self.addr, connection = id, "connected to upstream");
        self.ctx.connections.send(id, bytes).await
    }
}
