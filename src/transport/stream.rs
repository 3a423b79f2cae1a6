//! Stage 1, streams: ONE server for every connection-oriented transport,
//! generic over `AsyncRead + AsyncWrite + Unpin + Send`.
//!
//! - [`accept`]: the accept loop of a listener: a connection slot
//!   (`limits.max_connections`, shared by every listener) or the connection
//!   is closed at once; accept errors back off; each connection gets its own
//!   task and span (`transport`, `peer`, `connection`).
//! - In that task, the listener's `open` step turns the accepted TCP stream
//!   into the byte stream SIP is read from: the stream itself for TCP; for
//!   TLS the handshake, which so runs in the connection's task and slot,
//!   never in the accept loop, and before any framing.
//! - [`serve`] (accepted connections) and [`spawn`] (the connection the
//!   upstream link opened): register the connection, start its writer task,
//!   and read it through `FramedRead` with [`SipCodec`] until EOF, an error,
//!   the idle timeout or shutdown. CRLFCRLF keep-alives are answered with
//!   CRLF (RFC 5626 3.5.1); messages go to the dispatcher.
//!
//! Nothing here knows SIP beyond framing.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, Instrument, Span};

use super::{is_unrecoverable, ConnectionId, Event, Fault, Transport, TransportContext};
use crate::observe::metrics::{DropReason, Metrics};
use crate::proxy::Inbound;
use crate::sip::framing::{Frame, FramingError, SipCodec, StreamError};

/// Messages queued per connection; a peer that lets more pile up is closed.
pub const WRITE_QUEUE_MESSAGES: usize = 256;
/// A write that makes no progress for this long closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial capacity of a connection's read buffer, bytes (it grows to the
/// largest message, `limits.max_message_bytes`).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// The keep-alive pong (RFC 5626 3.5.1).
const PONG: &[u8] = b"\r\n";

/// A listener: its transport and the address it is advertised at (in Via,
/// Path, Record-Route; the `Inbound::local` of what arrives on it).
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// Transport of its connections.
    pub transport: Transport,
    /// Advertised address.
    pub local: SocketAddr,
}

/// One connection, as the dispatcher sees its messages.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    /// Its transport.
    pub transport: Transport,
    /// The other end.
    pub peer: SocketAddr,
    /// The advertised address of this proxy it belongs to.
    pub local: SocketAddr,
    /// It is the registrar's: a connection this proxy opened to the
    /// upstream, or one accepted from a source in `proxy.upstream_sources`.
    pub from_upstream: bool,
}

/// Accept connections on `listener` until shutdown. Each accepted TCP
/// stream gets a slot, its own task and span, then `open` (the handshake
/// of a secured transport; `None` closes the connection, `open` having
/// logged and counted why), then [`serve`].
pub async fn accept<O, F, S>(
    listener: TcpListener,
    at: Listener,
    ctx: Arc<TransportContext>,
    open: O,
) where
    O: Fn(TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = info_span!("listener", transport = %at.transport, local = %at.local);
    accept_loop(listener, at, ctx, open).instrument(span).await;
}

async fn accept_loop<O, F, S>(
    listener: TcpListener,
    at: Listener,
    ctx: Arc<TransportContext>,
    open: O,
) where
    O: Fn(TcpStream) -> F + Clone + Send + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_unrecoverable(&e) => {
                error!(error = %e, "listener unusable; no more connections accepted on it");
                return;
            }
            Err(e) => {
                Fault::Accept.report(&ctx.metrics, None, &e);
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF.0;
        let Ok(slot) = ctx.slots.clone().try_acquire_owned() else {
            Fault::ConnectionLimit.report(
                &ctx.metrics,
                Some(peer),
                &format_args!("limits.max_connections = {}", ctx.limits.max_connections),
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnectionInfo {
            transport: at.transport,
            peer,
            local: at.local,
            from_upstream: ctx.upstream_sources.matches(peer),
        };
        let span = info_span!(
            "connection",
            transport = %at.transport,
            %peer,
            connection = tracing::field::Empty
        );
        let (ctx, open) = (ctx.clone(), open.clone());
        tokio::spawn(
            async move {
                if let Some(stream) = open(tcp).await {
                    serve(stream, info, &ctx).await;
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Serve one connection in the current task (whose span gets the
/// connection id) until it ends.
pub async fn serve<S>(stream: S, info: ConnectionInfo, ctx: &Arc<TransportContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (id, read, closing) = register(stream, info, ctx);
    Span::current().record("connection", tracing::field::display(id));
    read_messages(read, id, info, ctx, closing).await;
}

/// Start serving a connection on its own task (with its own span); returns
/// its id, already in the connection table, so it can be written to at once.
pub fn spawn<S>(stream: S, info: ConnectionInfo, ctx: &Arc<TransportContext>) -> ConnectionId
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (id, read, closing) = register(stream, info, ctx);
    let span = info_span!(
        "connection",
        transport = %info.transport,
        peer = %info.peer,
        connection = %id
    );
    let ctx = ctx.clone();
    tokio::spawn(
        async move { read_messages(read, id, info, &ctx, closing).await }.instrument(span),
    );
    id
}

/// Give a connection an id, put its writer queue in the table and start
/// the writer task; returns the read half and the token the writer cancels
/// when it fails (so the reader stops too).
fn register<S>(
    stream: S,
    info: ConnectionInfo,
    ctx: &TransportContext,
) -> (ConnectionId, ReadHalf<S>, CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = ctx.connections.next_id();
    let (read, write) = tokio::io::split(stream);
    let (queue, pending) = mpsc::channel::<Bytes>(WRITE_QUEUE_MESSAGES);
    ctx.connections.insert(id, info.peer, info.transport, queue);
    let closing = ctx.shutdown.child_token();
    let span = info_span!(
        "connection",
        transport = %info.transport,
        peer = %info.peer,
        connection = %id
    );
    tokio::spawn(
        write_messages(write, pending, closing.clone(), ctx.metrics.clone()).instrument(span),
    );
    (id, read, closing)
}

/// Write what is queued for a connection until the queue closes (the
/// connection left the table); a failed or stalled write closes it.
async fn write_messages<S>(
    mut write: WriteHalf<S>,
    mut pending: mpsc::Receiver<Bytes>,
    closing: CancellationToken,
    metrics: Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(bytes) = pending.recv().await {
        let written = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                Fault::Write.report(&metrics, None, &e);
                break;
            }
            Err(_) => {
                Fault::Write.report(&metrics, None, &Stalled(WRITE_TIMEOUT));
                break;
            }
        }
    }
    // The reader stops too (when the queue closed because it did, nothing changes).
    closing.cancel();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write.shutdown()).await;
}

/// A write that made no progress for this long.
#[derive(Debug)]
struct Stalled(Duration);

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no progress for {} ms", self.0.as_millis())
    }
}

/// Read and frame one connection until EOF, an error, the idle timeout
/// (no message or keep-alive for `limits.tcp_idle_timeout`), a failed
/// writer or shutdown; then take it out of the table.
async fn read_messages<S>(
    read: ReadHalf<S>,
    id: ConnectionId,
    info: ConnectionInfo,
    ctx: &TransportContext,
    closing: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!(from_upstream = info.from_upstream, "connection open");
    let codec = SipCodec::new(ctx.limits.max_message_bytes);
    let mut frames = FramedRead::with_capacity(read, codec, READ_BUFFER_BYTES);
    let idle_timeout = ctx.limits.tcp_idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        let frame = tokio::select! {
            () = closing.cancelled() => break,
            () = &mut idle => {
                info!(idle_secs = idle_timeout.as_secs(), "connection idle; closed");
                break;
            }
            frame = frames.next() => frame,
        };
        idle.as_mut().reset(Instant::now() + idle_timeout);
        match frame {
            None => break,
            Some(Ok(Frame::Ping)) => {
                Metrics::inc(&ctx.metrics.keepalives);
                let pong = Bytes::from_static(PONG);
                if let Err(e) = ctx.connections.send(id, info.peer, pong) {
                    Fault::Send.report(&ctx.metrics, Some(info.peer), &e);
                }
            }
            Some(Ok(Frame::Message(bytes))) => {
                let message = Inbound {
                    bytes,
                    transport: info.transport,
                    source: info.peer,
                    local: info.local,
                    connection: Some(id),
                    from_upstream: info.from_upstream,
                };
                if ctx.events.send(Event::Received(message)).await.is_err() {
                    break;
                }
            }
            Some(Err(StreamError::Io(e))) => {
                Fault::Read.report(&ctx.metrics, Some(info.peer), &e);
                break;
            }
            Some(Err(StreamError::Framing(e))) => {
                let fault = match e {
                    FramingError::Truncated { .. } => Fault::Truncated,
                    _ => Fault::Unframeable,
                };
                fault.report(&ctx.metrics, Some(info.peer), &e);
                ctx.metrics.count_drop(DropReason::Malformed);
                break;
            }
        }
    }
    ctx.connections.remove(id);
    debug!("connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const MESSAGE: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 2\r\n\r\nhi";

    fn info(peer: &str) -> ConnectionInfo {
        ConnectionInfo {
            transport: Transport::Tcp,
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            from_upstream: false,
        }
    }

    async fn received(events: &mut mpsc::Receiver<Event>) -> Inbound {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Event::Received(m))) => m,
            other => panic!("no message: {other:?}"),
        }
    }

    /// Serve the server end of an in-memory stream: any `AsyncRead +
    /// AsyncWrite` is served the same way as TCP.
    fn served(ctx: &Arc<TransportContext>, peer: &str) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (ctx, info) = (ctx.clone(), info(peer));
        tokio::spawn(async move { serve(server, info, &ctx).await });
        client
    }

    #[tokio::test]
    async fn any_byte_stream_is_framed_answered_and_written_to() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40001");
        // A keep-alive ping gets its pong (RFC 5626 3.5.1).
        client.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\r\n");
        // A message in two writes is one inbound message of this connection.
        client.write_all(&MESSAGE[..30]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&MESSAGE[30..]).await.unwrap();
        let m = received(&mut events).await;
        assert_eq!(&m.bytes[..], MESSAGE);
        assert_eq!((m.transport, m.from_upstream), (Transport::Tcp, false));
        assert_eq!(m.source, "127.0.0.1:40001".parse().unwrap());
        let id = m.connection.expect("a stream message names its connection");
        // What the dispatcher sends to the connection reaches the peer.
        ctx.connections
            .send(id, m.source, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"))
            .unwrap();
        let mut answer = [0u8; 18];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(
            ctx.metrics
                .keepalives
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The peer stops in the middle of a message: counted, closed.
        client.write_all(&MESSAGE[..10]).await.unwrap();
        drop(client);
        for _ in 0..1000 {
            if ctx.connections.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(ctx.connections.is_empty(), "closed and forgotten");
        assert_eq!(ctx.metrics.faults(Fault::Truncated), 1);
        assert_eq!(ctx.metrics.drops(DropReason::Malformed), 1);
    }

    #[tokio::test]
    async fn unframeable_bytes_close_the_connection() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40002");
        client
            .write_all(b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed without an answer");
        assert_eq!(ctx.metrics.faults(Fault::Unframeable), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40003");
        // Paused time jumps to the idle deadline once nothing else can run.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(ctx.connections.is_empty());
    }

    #[tokio::test]
    async fn connections_beyond_the_slots_are_closed_at_once() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let at = Listener {
            transport: Transport::Tcp,
            local: addr,
        };
        tokio::spawn(accept(listener, at, ctx.clone(), |tcp| {
            std::future::ready(Some(tcp))
        }));
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        first.read_exact(&mut pong).await.unwrap();
        // The only slot is taken: the second connection is closed unread.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let _ = second.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(ctx.metrics.faults(Fault::ConnectionLimit), 1);
        // The first still works.
        first.write_all(b"\r\n\r\n").await.unwrap();
        first.read_exact(&mut pong).await.unwrap();
        ctx.shutdown.cancel();
    }
}
