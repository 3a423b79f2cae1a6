//! Stage 1, streams: ONE server for every connection-oriented transport,
//! generic over `AsyncRead + AsyncWrite + Unpin + Send`.
//!
//! - [`accept`]: the accept loop of a listener: the source's admission
//!   (`rate_limit`: banned sources, `connections_per_second`,
//!   `max_connections_per_source`) and a connection slot
//!   (`limits.max_connections`, shared by every listener; a reserved share
//!   for trusted sources and known flows; when full, the oldest half-open
//!   connection of the busiest source is closed to make room, see
//!   [`super::slots`]), or the connection is closed at once; accept errors
//!   back off; each connection gets its own task and span (`transport`,
//!   `peer`, `connection`).
//! - In that task, the listener's `open` step turns the accepted TCP stream
//!   into the byte stream SIP is read from: the stream itself for TCP; for
//!   TLS the handshake, which so runs in the connection's task and slot,
//!   never in the accept loop, and before any framing.
//! - [`serve`] (accepted connections) and [`spawn`] (the connection the
//!   upstream link opened): register the connection, start its writer task,
//!   and read it with [`SipCodec`] until EOF, an error, a timeout or
//!   shutdown. CRLFCRLF keep-alives are answered with CRLF (RFC 5626
//!   3.5.1); messages go to the dispatcher, after their source's rate limit.
//!
//! Every resource a peer can hold is bounded:
//! - time: a message must be complete `limits.message_deadline_secs` after
//!   its first byte (slowloris), the first byte is due within the same
//!   deadline of the connection opening (a silent connection holds no slot
//!   longer), and between messages the connection may be idle
//!   `limits.tcp_idle_timeout_secs`;
//! - read memory: what all connections buffer together is charged to one
//!   budget (`limits.read_buffer_budget_bytes`, [`ReadBudget`]): a read
//!   takes what is free (up to a chunk), and one that finds nothing free
//!   waits, one byte at a time (within the message deadline; it reads one
//!   byte past what it holds meanwhile, to see its peer close), except a
//!   trusted source's while the budget's reserve lasts; sipadmit's own
//!   connection to the registrar is not charged; an idle connection holds
//!   no buffer at all (released after every complete message);
//! - write memory: the writer queue is bounded in bytes
//!   (`limits.write_queue_bytes`); the reader pauses while it is over half
//!   full, and a peer is closed only when nothing could be written to it
//!   for [`WRITE_TIMEOUT`].
//!
//! Nothing here knows SIP beyond framing.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, Instrument, Span};

use super::answers::Heard;
use super::connections::WriteQueue;
pub use super::connections::WRITE_TIMEOUT;
use super::slots::Slot;
use super::{
    admit, is_unrecoverable, Admitted, ConnectionId, Event, Fault, Transport, TransportContext,
};
use crate::observe::metrics::{DropReason, Metrics};
use crate::sip::framing::{is_keep_alive_start, Frame, FramingError, SipCodec, StreamError};
use crate::vocabulary::Leg;
use crate::vocabulary::{Inbound, LocalAddr, PeerAddr};

/// Bytes read at a time while a message is coming in (charged to the read
/// buffer budget before the read).
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes read at a time from a connection between messages, into a small
/// buffer on the task's stack: an idle connection holds no heap buffer.
const IDLE_READ_BYTES: usize = 1024;
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
    pub local: LocalAddr,
}

/// One connection, as the dispatcher sees its messages.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    /// Its transport.
    pub transport: Transport,
    /// The other end.
    pub peer: SocketAddr,
    /// The advertised address of this proxy it belongs to.
    pub local: LocalAddr,
    /// Whose it is: the registrar's (a connection this proxy opened to the
    /// upstream, or one accepted from a source in `proxy.upstream_sources`)
    /// or a client's.
    pub leg: Leg,
}

/// Accept connections on `listener` until shutdown. Each accepted TCP
/// stream gets its source's admission (bans, `connections_per_second`,
/// `max_connections_per_source`: a TLS handshake counts like any
/// connection) and a slot (which may evict a half-open connection), its
/// own task and span, then `open` (the handshake of a secured transport,
/// bounded by its own deadline; `None` closes the connection, `open`
/// having logged and counted why), then [`serve`]. An evicted connection
/// is closed wherever it is, its handshake included.
#[tracing::instrument(
    name = "listener",
    level = "info",
    skip_all,
    fields(transport = %at.transport, local = %at.local)
)]
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
        // An IPv4 client of a dual-stack `[::]` listener arrives as
        // `::ffff:a.b.c.d`: it is known (logged, limited, recorded, mirrored)
        // by its IPv4 address, as it knows itself.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // Refused sources are counted and warned about (rate-limited) by
        // the admission; their connections are closed unread.
        let Ok(source) = ctx.admission.connection(peer, std::time::Instant::now()) else {
            continue;
        };
        let closing = ctx.shutdown.child_token();
        let now = std::time::Instant::now();
        let slot = match ctx.slots.acquire(peer, source.is_exempt(), closing, now) {
            Ok(slot) => slot,
            Err(full) => {
                Fault::ConnectionLimit.report(&ctx.metrics, Some(peer), &full);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        spawn_accepted(tcp, peer, at, &ctx, open.clone(), (slot, source));
    }
}

/// Serve an accepted connection on its own task and span: the listener's
/// open step, then the stream server. The open step bounds itself (a TLS
/// handshake by its deadline, the wait for a plain connection's first
/// bytes by the message deadline); either way the connection holds its
/// slot, counts against its source and counts as open
/// (`sipadmit_open_connections`) meanwhile, and may be evicted.
fn spawn_accepted<O, F, S>(
    tcp: TcpStream,
    peer: SocketAddr,
    at: Listener,
    ctx: &Arc<TransportContext>,
    open: O,
    (mut slot, source): (Slot, super::admission::SourceConnection),
) where
    O: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = ConnectionInfo {
        transport: at.transport,
        peer,
        local: at.local,
        leg: ctx.upstream_sources.leg_of(peer),
    };
    let span = info_span!(
        "connection",
        transport = %at.transport,
        %peer,
        connection = tracing::field::Empty
    );
    let ctx = ctx.clone();
    let opening = ctx.metrics.opening(at.transport);
    tokio::spawn(
        async move {
            let closing = slot.closing().clone();
            let opened = tokio::select! {
                () = closing.cancelled() => None,
                opened = open(tcp) => opened,
            };
            drop(opening);
            if let Some(stream) = opened {
                serve(stream, info, &ctx, Some(&mut slot)).await;
            }
            drop((slot, source));
        }
        .instrument(span),
    );
}

/// Serve one connection in the current task (whose span gets the
/// connection id) until it ends. `slot`: the one it holds (an accepted
/// connection), told when a complete message was heard; its token closes
/// the connection when it is evicted.
pub async fn serve<S>(
    stream: S,
    info: ConnectionInfo,
    ctx: &Arc<TransportContext>,
    slot: Option<&mut Slot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closing = match &slot {
        Some(slot) => slot.closing().clone(),
        None => ctx.shutdown.child_token(),
    };
    let (id, read, queue) = register(stream, info, ctx, closing.clone());
    Span::current().record("connection", tracing::field::display(id));
    let hearing = match slot {
        Some(slot) => Hearing::Slot(slot),
        None => Hearing::Nobody,
    };
    read_messages(read, id, info, ctx, closing, queue, hearing).await;
}

/// Who learns that a connection's peer sent a complete message.
enum Hearing<'a> {
    /// Nobody.
    Nobody,
    /// The opener of a connection to the upstream: notes its messages
    /// (keep-alives do not count) and the final responses among them.
    Registrar(&'a Heard),
    /// An accepted connection's slot: it is no longer half-open, and its
    /// source a known flow (refreshed by later messages and keep-alives).
    Slot(&'a mut Slot),
}

impl Hearing<'_> {
    /// Until when a message read in full waits to be handed on (see
    /// [`ReadState::hand_on_until`]): the registrar's until sipadmit stops,
    /// a client's until its connection is `closing`.
    fn hand_on_until(
        &self,
        ctx: &TransportContext,
        closing: &CancellationToken,
    ) -> CancellationToken {
        match self {
            Self::Registrar(_) => ctx.shutdown.clone(),
            Self::Nobody | Self::Slot(_) => closing.clone(),
        }
    }

    /// The registrar's link notes each message it sent (not keep-alives).
    /// `false`: a late answer to a request the link gave up (answered
    /// `408` at a drain's end), dropped here, logged and counted
    /// (`after_timeout`): after a final response only a 2xx to an INVITE
    /// goes on (RFC 3261 16.7 step 5).
    fn note(&self, frame: &Frame, ctx: &TransportContext, info: ConnectionInfo) -> bool {
        let (Self::Registrar(heard), Frame::Message(message)) = (self, frame) else {
            return true;
        };
        if heard.message(message) {
            return true;
        }
        debug!(peer = %info.peer, "the registrar's answer to a request given up at the drain's end discarded");
        let kind = crate::observe::metrics::MessageKind::of(message);
        ctx.metrics.count_received(info.transport, kind);
        ctx.metrics.count_drop(DropReason::AfterTimeout);
        false
    }
}

/// A connection started by [`spawn`], as its opener (the upstream link)
/// watches it.
#[derive(Debug)]
pub struct Spawned {
    /// Its id, already in the connection table.
    pub id: ConnectionId,
    /// Cancelled once the connection has ended (reader and writer).
    pub ended: CancellationToken,
    /// What the peer sent on it: its messages, and the transactions its
    /// final responses ended.
    pub heard: Arc<Heard>,
    /// Its writer queue.
    pub queue: Arc<WriteQueue>,
}

/// Start serving a connection on its own task (with its own span); it is
/// already in the connection table, so it can be written to at once.
pub fn spawn<S>(stream: S, info: ConnectionInfo, ctx: &Arc<TransportContext>) -> Spawned
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closing = ctx.shutdown.child_token();
    let (id, read, queue) = register(stream, info, ctx, closing.clone());
    let span = info_span!(
        "connection",
        transport = %info.transport,
        peer = %info.peer,
        connection = %id
    );
    let ctx = ctx.clone();
    let ended = CancellationToken::new();
    let heard = Arc::new(Heard::default());
    let spawned = Spawned {
        id,
        ended: ended.clone(),
        heard: heard.clone(),
        queue: queue.clone(),
    };
    tokio::spawn(
        async move {
            let _ended = ended.drop_guard();
            let hearing = Hearing::Registrar(&heard);
            read_messages(read, id, info, &ctx, closing, queue, hearing).await;
        }
        .instrument(span),
    );
    spawned
}

/// Give a connection an id, put its writer queue in the table and start
/// the writer task; returns the read half and the writer queue. The writer
/// cancels `closing` when it fails, so the reader stops too (as it does
/// when anything else cancels it: an eviction, shutdown).
fn register<S>(
    stream: S,
    info: ConnectionInfo,
    ctx: &TransportContext,
    closing: CancellationToken,
) -> (ConnectionId, ReadHalf<S>, Arc<WriteQueue>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = ctx.connections.next_id();
    let (read, write) = tokio::io::split(stream);
    let (writer, pending) = mpsc::unbounded_channel::<Bytes>();
    let queue = Arc::new(WriteQueue::new(ctx.limits.write_queue_bytes));
    ctx.connections
        .insert(id, info.peer, info.transport, writer, queue.clone());
    let span = info_span!(
        "connection",
        transport = %info.transport,
        peer = %info.peer,
        connection = %id
    );
    tokio::spawn(
        write_messages(
            write,
            pending,
            queue.clone(),
            closing.clone(),
            ctx.metrics.clone(),
        )
        .instrument(span),
    );
    (id, read, queue)
}

/// Write what is queued for a connection until the queue closes (the
/// connection left the table). Each write that makes progress counts; a
/// failed write, or none making progress for [`WRITE_TIMEOUT`], closes it.
async fn write_messages<S>(
    mut write: WriteHalf<S>,
    mut pending: mpsc::UnboundedReceiver<Bytes>,
    queue: Arc<WriteQueue>,
    closing: CancellationToken,
    metrics: Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    'messages: while let Some(bytes) = pending.recv().await {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, write.write(rest)).await {
                Ok(Ok(0)) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    Fault::Write.report(&metrics, None, &e);
                    break 'messages;
                }
                Ok(Ok(n)) => {
                    queue.progressed(n);
                    rest = &rest[n..];
                }
                Ok(Err(e)) => {
                    Fault::Write.report(&metrics, None, &e);
                    break 'messages;
                }
                Err(_) => {
                    Fault::Write.report(&metrics, None, &Stalled(WRITE_TIMEOUT));
                    break 'messages;
                }
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

/// What all stream connections may buffer together
/// (`limits.read_buffer_budget_bytes`), one permit a byte: a reserve kept
/// for the connections of the sources never rate-limited
/// (`rate_limit.trusted`, the registrar, the Response Group application),
/// which take it once the rest is spent, as they take reserved connection
/// slots; the rest shared by every connection. The reserve is a tenth of
/// the budget, and at least what one connection reads a message with
/// (`limits.max_message_bytes` and one byte), as long as the shared part
/// keeps that much too (the budget is at least twice the largest message).
/// sipadmit's own connection to the registrar is not charged (see
/// [`BudgetShare`]).
#[derive(Debug)]
pub struct ReadBudget {
    shared: Semaphore,
    reserve: Semaphore,
}

impl ReadBudget {
    /// A budget of `bytes` in all for messages of at most
    /// `max_message_bytes`, its reserve kept for trusted sources.
    pub fn new(bytes: usize, max_message_bytes: usize) -> Self {
        let message = max_message_bytes + 1;
        let reserve = (bytes / 10).max(message).min(bytes.saturating_sub(message));
        Self {
            shared: Semaphore::new(bytes - reserve),
            reserve: Semaphore::new(reserve),
        }
    }

    /// Bytes not held now: (shared, kept for trusted sources).
    #[cfg(test)]
    pub(crate) fn available(&self) -> (usize, usize) {
        (
            self.shared.available_permits(),
            self.reserve.available_permits(),
        )
    }
}

/// The share of the read buffer budget one connection holds: bytes taken
/// from the [`ReadBudget`], given back when its buffer shrinks and when it
/// closes. The link's own connection to the registrar holds none: its one
/// message at a time is bounded by `limits.max_message_bytes`, and sources
/// that hold the budget with messages they never finish must not stall
/// the registrar's answers to everyone.
struct BudgetShare {
    /// `None`: not charged (the link's connection to the registrar).
    budget: Option<Arc<ReadBudget>>,
    /// Held of the shared part.
    shared: usize,
    /// Held of the reserve.
    reserved: usize,
    /// It waited for the budget during the message being read (counted
    /// once a message, however often it waits).
    waiting: bool,
}

impl BudgetShare {
    /// Make room for the next read: hold up to `want` bytes in all (what
    /// the buffer may hold after it), as much of it as the budget has free
    /// now, and enough for at least one byte more than the `buffered` ones
    /// (a connection's first KiB needs none: it is not charged). Returns
    /// the most bytes the buffer may hold after the read. It waits only
    /// when no byte is free, and then for one byte at a time: connections
    /// that each hold part of a message never wait for each other's bytes
    /// while any is free. `exempt` says whether the connection's source is
    /// exempt from rate limits now (asked only when the shared part runs
    /// short): it may then take the reserve.
    async fn hold(
        &mut self,
        want: usize,
        buffered: usize,
        metrics: &Metrics,
        exempt: impl FnOnce() -> bool,
    ) -> usize {
        let Self {
            budget: Some(budget),
            shared,
            reserved,
            waiting,
        } = self
        else {
            return want;
        };
        let room_with = |held: usize| held.max(IDLE_READ_BYTES).min(want);
        let mut exempt = Some(exempt);
        let mut trusted = None;
        loop {
            let need = want.saturating_sub(*shared + *reserved);
            let from_shared = take_free(&budget.shared, need);
            *shared += from_shared;
            if from_shared < need
                && *trusted.get_or_insert_with(|| exempt.take().is_some_and(|f| f()))
            {
                *reserved += take_free(&budget.reserve, need - from_shared);
            }
            let room = room_with(*shared + *reserved);
            if room > buffered {
                return room;
            }
            if !*waiting {
                *waiting = true;
                Metrics::inc(&metrics.read_budget_waits);
                debug!(want, "read buffer budget spent; waiting");
            }
            let (acquired, from_reserve) = if trusted == Some(true) {
                tokio::select! {
                    permits = budget.shared.acquire() => (permits, false),
                    permits = budget.reserve.acquire() => (permits, true),
                }
            } else {
                (budget.shared.acquire().await, false)
            };
            // Never closed; nothing to hold then (read as if not charged).
            let Ok(permit) = acquired else {
                return want;
            };
            permit.forget();
            if from_reserve {
                *reserved += 1;
            } else {
                *shared += 1;
            }
        }
    }

    /// Bytes held (0 when not charged).
    fn held(&self) -> usize {
        self.shared + self.reserved
    }

    /// Give back what is held beyond `bytes`, the reserve's first.
    fn release_to(&mut self, bytes: usize) {
        let Some(budget) = &self.budget else {
            return;
        };
        let mut excess = self.held().saturating_sub(bytes);
        let to_reserve = excess.min(self.reserved);
        if to_reserve > 0 {
            budget.reserve.add_permits(to_reserve);
            self.reserved -= to_reserve;
            excess -= to_reserve;
        }
        if excess > 0 {
            budget.shared.add_permits(excess);
            self.shared -= excess;
        }
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

/// Take up to `n` bytes of `part` without waiting: what it has free now.
/// How many it took.
fn take_free(part: &Semaphore, n: usize) -> usize {
    let n = n.min(part.available_permits());
    if n == 0 {
        return 0;
    }
    match part.try_acquire_many(u32::try_from(n).unwrap_or(u32::MAX)) {
        Ok(permits) => {
            permits.forget();
            n
        }
        // Taken meanwhile by another worker's connection.
        Err(_) => 0,
    }
}

/// Why a connection's reader stopped.
enum Stop {
    /// EOF, an error (reported), a ban, or the dispatcher is gone.
    Closed,
    /// The connection is closing: its writer failed, it was evicted, or
    /// sipadmit stops.
    Closing,
    /// No message began for `limits.tcp_idle_timeout_secs`.
    Idle,
    /// A message was not complete `limits.message_deadline_secs` after its
    /// first byte.
    Deadline,
    /// Nothing arrived within `limits.message_deadline_secs` of the
    /// connection opening.
    Silent,
}

/// Read and frame one connection until EOF, an error, a timeout (idle
/// between messages, the message deadline, or silence since it opened), a
/// failed writer or shutdown; then take it out of the table. `hearing`
/// notes its first message (the upstream link's flag, or a client slot's
/// known flow).
async fn read_messages<S>(
    mut read: ReadHalf<S>,
    id: ConnectionId,
    info: ConnectionInfo,
    ctx: &TransportContext,
    closing: CancellationToken,
    queue: Arc<WriteQueue>,
    mut hearing: Hearing<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!(leg = info.leg.as_str(), "connection open");
    let mut state = ReadState::new(ctx, &hearing, &closing);
    let stop = loop {
        if state.frame_buffered(id, info, ctx, &mut hearing).await {
            break Stop::Closed;
        }
        state.settle();
        let (deadline, on_timeout) = state.deadline(ctx, info);
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        // A peer that does not read its answers is read no further.
        if queue.is_backed_up() {
            tokio::select! {
                () = closing.cancelled() => break Stop::Closing,
                () = &mut timeout => break on_timeout,
                () = queue.drained() => {}
            }
        }
        // What is in the socket is read before the deadline counts: read
        // first (`biased`) when both are ready, and a last look when the
        // deadline comes alone (see `last_look`). After a freeze of this
        // process (a paused VM, a SIGSTOP), bytes that came in time count.
        let read = if state.buf.is_empty() {
            read_first(
                &mut read,
                &mut state.buf,
                timeout.as_mut(),
                &closing,
                on_timeout,
            )
            .await
        } else {
            state
                .read_more(&mut read, ctx, info, timeout.as_mut(), &closing, on_timeout)
                .await
        };
        let read = match read {
            Ok(read) => read,
            Err(stop) => break stop,
        };
        match read {
            Ok(0) => {
                state.frame_at_eof(id, info, ctx, &hearing).await;
                break Stop::Closed;
            }
            Ok(_) => {}
            Err(e) => {
                Fault::Read.report(&ctx.metrics, Some(info.peer), &e);
                state.cut_off(info, ctx);
                break Stop::Closed;
            }
        }
    };
    if matches!(stop, Stop::Closing) {
        state
            .read_what_is_left(&mut read, id, info, ctx, &mut hearing)
            .await;
    }
    stop.report(ctx, info, state.buf.len());
    ctx.connections.remove(id);
    debug!("connection closed");
}

/// The first read into an empty buffer (at most [`IDLE_READ_BYTES`]: an
/// idle connection holds little), reading what is in the socket before the
/// deadline counts, as [`read_messages`] does: what it read, or why the
/// connection stops.
async fn read_first<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    timeout: std::pin::Pin<&mut tokio::time::Sleep>,
    closing: &CancellationToken,
    on_timeout: Stop,
) -> Result<std::io::Result<usize>, Stop> {
    let mut first = [0u8; IDLE_READ_BYTES];
    let read = tokio::select! {
        biased;
        () = closing.cancelled() => return Err(Stop::Closing),
        read = read.read(&mut first) => read,
        () = timeout => match last_look(read.read(&mut first)).await {
            Some(read) => read,
            None => return Err(on_timeout),
        },
    };
    Ok(read.inspect(|&n| buf.extend_from_slice(&first[..n])))
}

/// Read into `buf` until it holds at most `want` bytes (more than it
/// holds now): what the connection holds of the read budget. (Its spare
/// capacity may be larger: `BytesMut` grows by doubling.)
async fn read_up_to<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> std::io::Result<usize> {
    let room = want - buf.len();
    buf.reserve(room);
    (&mut *read).take(room as u64).read_buf(buf).await
}

/// A read tried once more when a deadline came without it: `None` when
/// nothing is there. The event loop first gets one turn, so that it takes
/// in what its last wait missed: when this process was stopped (SIGSTOP,
/// a paused VM) and resumed, that wait fails with EINTR and the deadline
/// fires before the readiness of the bytes that came in the meantime.
async fn last_look<F: Future<Output = std::io::Result<usize>>>(
    read: F,
) -> Option<std::io::Result<usize>> {
    tokio::task::yield_now().await;
    futures_util::FutureExt::now_or_never(read)
}

/// What the reader of one connection keeps between reads.
struct ReadState {
    codec: SipCodec,
    /// Bytes read and not framed yet.
    buf: BytesMut,
    /// The read buffer budget it holds.
    share: BudgetShare,
    /// When the message being read began (its first byte), if one is.
    message_began: Option<Instant>,
    /// When the connection opened.
    opened: Instant,
    /// When the last message (or keep-alive) arrived; `None` before the first.
    last_message: Option<Instant>,
    /// Cancelled when a message waiting to be handed on stops waiting: a
    /// client's when its connection closes (evicted, or sipadmit stopping);
    /// the registrar's only when sipadmit stops. A response read in full is
    /// its request's answer (the link counts it as answered): it goes to its
    /// client even when the registrar's connection has just failed.
    hand_on_until: CancellationToken,
}

impl ReadState {
    fn new(ctx: &TransportContext, hearing: &Hearing<'_>, closing: &CancellationToken) -> Self {
        Self {
            hand_on_until: hearing.hand_on_until(ctx, closing),
            codec: SipCodec::new(ctx.limits.max_message_bytes),
            buf: BytesMut::new(),
            share: BudgetShare {
                budget: (!matches!(hearing, Hearing::Registrar(_)))
                    .then(|| ctx.read_budget.clone()),
                shared: 0,
                reserved: 0,
                waiting: false,
            },
            message_began: None,
            opened: Instant::now(),
            last_message: None,
        }
    }

    /// Frame and hand on what is buffered. `true`: stop reading (the
    /// source was banned, the dispatcher is gone, or the bytes cannot be
    /// framed).
    async fn frame_buffered(
        &mut self,
        id: ConnectionId,
        info: ConnectionInfo,
        ctx: &TransportContext,
        hearing: &mut Hearing<'_>,
    ) -> bool {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    let now = Instant::now();
                    self.last_message = Some(now);
                    if !hearing.note(&frame, ctx, info) {
                        continue;
                    }
                    let handled = handle_frame(frame, id, info, ctx, &self.hand_on_until).await;
                    if let Hearing::Slot(slot) = hearing {
                        // A keep-alive refreshes a known flow, never makes one.
                        let proven = match handled {
                            Handled::Admitted => true,
                            Handled::Pinged => slot.is_heard(),
                            Handled::Refused | Handled::Stop(_) => false,
                        };
                        if proven {
                            slot.heard(now.into_std());
                        }
                    }
                    if let Handled::Stop(reason) = handled {
                        if let Some(reason) = reason {
                            self.drop_buffered(info, ctx, reason);
                        }
                        return true;
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    framing_failed(e, info, ctx, &self.buf);
                    return true;
                }
            }
        }
    }

    /// The reader stops for `reason`: the complete messages still buffered
    /// are counted as received and dropped for it, and logged (a partial
    /// one is not a message).
    fn drop_buffered(&mut self, info: ConnectionInfo, ctx: &TransportContext, reason: DropReason) {
        let mut dropped = 0;
        while let Ok(Some(frame)) = self.codec.decode(&mut self.buf) {
            let Frame::Message(bytes) = frame else {
                continue;
            };
            super::count_received(ctx, info.transport, &bytes);
            ctx.metrics.count_drop(reason);
            dropped += 1;
        }
        if dropped > 0 {
            info!(
                dropped,
                reason = reason.as_str(),
                "connection closed with complete messages unread; dropped"
            );
        }
    }

    /// The read failed (a reset: the peer closed with data unread, or
    /// aborted): a message begun in the buffer is received and dropped as
    /// malformed, as one cut off by a close is at EOF.
    fn cut_off(&self, info: ConnectionInfo, ctx: &TransportContext) {
        if self.buf.iter().any(|b| !matches!(b, b'\r' | b'\n')) {
            super::count_received(ctx, info.transport, &self.buf);
            ctx.metrics.count_drop(DropReason::Malformed);
        }
    }

    /// The connection is closing: what its peer sent before, still in the
    /// socket, is read without waiting and handed on while messages read
    /// in full may be (see [`Self::hand_on_until`]), for at most
    /// `limits.message_deadline_secs` (a peer still sending, whose writer
    /// stalled, is read no longer than that). When the registrar's
    /// connection fails (its writer sees the reset of a registrar that
    /// died), the answers it sent before it died go to their clients, and
    /// the link counts them as answered instead of answering `503`. A
    /// client's connection stops at once.
    async fn read_what_is_left<S>(
        &mut self,
        read: &mut ReadHalf<S>,
        id: ConnectionId,
        info: ConnectionInfo,
        ctx: &TransportContext,
        hearing: &mut Hearing<'_>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.hand_on_until.is_cancelled() {
            return;
        }
        let deadline = tokio::time::sleep(ctx.limits.message_deadline);
        tokio::pin!(deadline);
        // One turn of the event loop first, to take in what its last wait
        // missed (as `last_look` does).
        tokio::task::yield_now().await;
        loop {
            let want = self.wanted(ctx);
            let buffered = self.buf.len();
            let exempt = || ctx.admission.exempts_connection(info.peer);
            let room = tokio::select! {
                biased;
                () = self.hand_on_until.cancelled() => return,
                () = &mut deadline => return,
                room = self.share.hold(want, buffered, &ctx.metrics, exempt) => room,
            };
            match futures_util::FutureExt::now_or_never(read_up_to(read, &mut self.buf, room)) {
                Some(Ok(0)) => return self.frame_at_eof(id, info, ctx, hearing).await,
                // A message read in full waits for the dispatcher (it may
                // be heard already), never cut off by the deadline.
                Some(Ok(_)) => {
                    if self.frame_buffered(id, info, ctx, hearing).await {
                        return;
                    }
                    self.settle();
                }
                // The reset that failed the writer, or nothing more now: a
                // message begun is cut off (the writer reported the fault).
                Some(Err(_)) | None => return self.cut_off(info, ctx),
            }
        }
    }

    /// A read into a buffer that holds part of a message, as far as the
    /// connection holds the budget for it (see [`BudgetShare::hold`]; and
    /// [`read_messages`] on the deadline): what it read, or why the
    /// connection stops. What it holds for the read stays held while the
    /// read waits for its peer (at most a chunk more than it has buffered;
    /// `settle` gives back the rest after the read): so a connection whose
    /// message is coming in finishes it before others take the bytes, and
    /// connections that share too small a budget get through one after
    /// another instead of all stopping half-way. While it waits for the
    /// budget (none is free), it reads one byte past what it holds (or past
    /// its first KiB, which is not charged), so that a peer that closed
    /// after all it sent is seen then, and what it held goes back at once,
    /// not at its deadline.
    async fn read_more<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
        ctx: &TransportContext,
        info: ConnectionInfo,
        mut timeout: std::pin::Pin<&mut tokio::time::Sleep>,
        closing: &CancellationToken,
        on_timeout: Stop,
    ) -> Result<std::io::Result<usize>, Stop> {
        let want = self.wanted(ctx);
        let buffered = self.buf.len();
        let exempt = || ctx.admission.exempts_connection(info.peer);
        let mut byte = [0u8; 1];
        let may_look = buffered <= self.share.held().max(IDLE_READ_BYTES);
        let room = tokio::select! {
            biased;
            () = closing.cancelled() => return Err(Stop::Closing),
            room = self.share.hold(want, buffered, &ctx.metrics, exempt) => room,
            looked = read.read(&mut byte), if may_look => {
                return Ok(looked.inspect(|&n| self.buf.extend_from_slice(&byte[..n])));
            }
            () = &mut timeout => return Err(on_timeout),
        };
        let buf = &mut self.buf;
        Ok(tokio::select! {
            biased;
            () = closing.cancelled() => return Err(Stop::Closing),
            read = read_up_to(read, buf, room) => read,
            () = timeout => match last_look(read_up_to(read, buf, room)).await {
                Some(read) => read,
                None => return Err(on_timeout),
            },
        })
    }

    /// How many bytes the buffer should hold after the next read, budget
    /// permitting: never more than a whole message (one past the limit, to
    /// see it is over).
    fn wanted(&self, ctx: &TransportContext) -> usize {
        (self.buf.len() + READ_CHUNK_BYTES)
            .min(ctx.limits.max_message_bytes + 1)
            .max(self.buf.len() + 1)
    }

    /// What is left at EOF: a last message, or a truncated one (reported).
    async fn frame_at_eof(
        &mut self,
        id: ConnectionId,
        info: ConnectionInfo,
        ctx: &TransportContext,
        hearing: &Hearing<'_>,
    ) {
        // The start of what is left, to tell a request cut off from a
        // response (decoding at the end takes the bytes).
        let mut start = [0u8; 8];
        let started = self.buf.len().min(start.len());
        start[..started].copy_from_slice(&self.buf[..started]);
        match self.codec.decode_eof(&mut self.buf) {
            Ok(Some(frame)) => {
                if hearing.note(&frame, ctx, info) {
                    handle_frame(frame, id, info, ctx, &self.hand_on_until).await;
                }
            }
            Ok(None) => {}
            Err(e) => framing_failed(e, info, ctx, &start[..started]),
        }
    }

    /// After framing: an idle connection holds no heap buffer and no
    /// budget; a partial message starts its deadline at its first byte. A
    /// keep-alive's first bytes (a lone CRLF after a message, say) are no
    /// message: the connection stays under its idle timeout.
    fn settle(&mut self) {
        if self.buf.is_empty() {
            // A message finished while it waited: the next wait is counted.
            self.share.waiting = false;
            self.message_began = None;
            if self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
        } else if is_keep_alive_start(&self.buf) {
            self.message_began = None;
        } else if self.message_began.is_none() {
            self.message_began = Some(Instant::now());
        }
        self.share.release_to(self.buf.len());
    }

    /// When the connection times out, and as what: a partial message at
    /// its deadline; between messages after the idle timeout; a connection
    /// that sent nothing yet at the message deadline too (a silent
    /// connection holds a slot no longer than a trickling one; the
    /// connection sipadmit opened to the registrar is exempt).
    fn deadline(&self, ctx: &TransportContext, info: ConnectionInfo) -> (Instant, Stop) {
        match (self.message_began, self.last_message) {
            (Some(began), _) => (began + ctx.limits.message_deadline, Stop::Deadline),
            (None, Some(last)) => (last + ctx.limits.tcp_idle_timeout, Stop::Idle),
            (None, None) if info.leg == Leg::FromClient => {
                (self.opened + ctx.limits.message_deadline, Stop::Silent)
            }
            (None, None) => (self.opened + ctx.limits.tcp_idle_timeout, Stop::Idle),
        }
    }
}

impl Stop {
    /// Log or count why the reader stopped (`buffered`: bytes of the
    /// message it was in).
    fn report(self, ctx: &TransportContext, info: ConnectionInfo, buffered: usize) {
        let deadline_secs = ctx.limits.message_deadline.as_secs();
        match self {
            Self::Closed | Self::Closing => {}
            Self::Idle => {
                info!(
                    idle_secs = ctx.limits.tcp_idle_timeout.as_secs(),
                    "connection idle; closed"
                );
            }
            Self::Silent => Fault::MessageDeadline.report(
                &ctx.metrics,
                Some(info.peer),
                &format_args!(
                    "no byte within limits.message_deadline_secs = {deadline_secs} of the connection opening"
                ),
            ),
            Self::Deadline => Fault::MessageDeadline.report(
                &ctx.metrics,
                Some(info.peer),
                &format_args!(
                    "{buffered} bytes of a message after limits.message_deadline_secs = {deadline_secs}"
                ),
            ),
        }
    }
}

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// A message within its source's rate limit, handed to the dispatcher.
    Admitted,
    /// A keep-alive, answered.
    Pinged,
    /// A message over its source's limit (answered 503 or dropped).
    Refused,
    /// Stop reading: the source is banned, the connection is closing, or
    /// the dispatcher is gone. The complete messages still buffered are
    /// counted as dropped for the reason given (none when the dispatcher
    /// is gone: sipadmit stops).
    Stop(Option<DropReason>),
}

/// Handle one frame: answer a ping, hand a message to the dispatcher (after
/// its source's rate limit).
async fn handle_frame(
    frame: Frame,
    id: ConnectionId,
    info: ConnectionInfo,
    ctx: &TransportContext,
    closing: &CancellationToken,
) -> Handled {
    match frame {
        Frame::Ping => {
            Metrics::inc(&ctx.metrics.keepalives);
            let pong = Bytes::from_static(PONG);
            if let Err(e) = ctx.connections.send(id, info.peer, pong) {
                Fault::of_send(&e).report(&ctx.metrics, Some(info.peer), &e);
            }
            Handled::Pinged
        }
        Frame::Message(bytes) => {
            let message = Inbound {
                bytes,
                transport: info.transport,
                source: PeerAddr(info.peer),
                local: info.local,
                connection: Some(id),
                leg: info.leg,
            };
            match admit(ctx, message) {
                Admitted::Event(event, keep_reading) => {
                    hand_on(event, keep_reading, info, ctx, closing).await
                }
                Admitted::Dropped => Handled::Refused,
                Admitted::Banned => Handled::Stop(Some(DropReason::Banned)),
            }
        }
    }
}

/// Hand an admitted message's event to the dispatcher. A client's message
/// waits first (and its connection is read no further) while the queue to a
/// stream upstream is nearly full. Waiting for that room or for the
/// dispatcher ends when `closing` is cancelled (see
/// [`ReadState::hand_on_until`]): the message is then dropped, logged and
/// counted.
async fn hand_on(
    event: Event,
    keep_reading: bool,
    info: ConnectionInfo,
    ctx: &TransportContext,
    closing: &CancellationToken,
) -> Handled {
    let received = matches!(event, Event::Received(_));
    let event = match (event, &ctx.upstream_backlog, info.leg) {
        (Event::Received(inbound), Some(backlog), Leg::FromClient) => tokio::select! {
            room = backlog.room_for_clients(inbound.bytes.len()) => {
                Event::HoldingRoom { inbound, room }
            }
            () = closing.cancelled() => {
                return closed_while_waiting(ctx, &inbound, "room in the queue to the registrar");
            }
        },
        (event, ..) => event,
    };
    let permit = tokio::select! {
        permit = ctx.events.reserve() => permit,
        () = closing.cancelled() => {
            return closed_while_waiting(ctx, event.inbound(), "the dispatcher");
        }
    };
    let Ok(permit) = permit else {
        return Handled::Stop(None);
    };
    permit.send(event);
    match (keep_reading, received) {
        (false, _) => Handled::Stop(Some(DropReason::Banned)),
        (true, true) => Handled::Admitted,
        (true, false) => Handled::Refused,
    }
}

/// A message read in full whose connection closed while it waited for
/// `what`: counted as received and dropped (`connection_closed`), and logged.
fn closed_while_waiting(ctx: &TransportContext, inbound: &Inbound, what: &str) -> Handled {
    super::count_received(ctx, inbound.transport, &inbound.bytes);
    ctx.metrics.count_drop(DropReason::ConnectionClosed);
    info!(
        bytes = inbound.bytes.len(),
        waited_for = what,
        "connection closed while its message waited; message dropped"
    );
    Handled::Stop(Some(DropReason::ConnectionClosed))
}

/// Count and log a stream that cannot be framed any further. The message
/// it stopped in (`unframed`: its first bytes, at least the first 8) is
/// received and dropped as malformed, so that the drop is a part of what
/// was received.
fn framing_failed(e: StreamError, info: ConnectionInfo, ctx: &TransportContext, unframed: &[u8]) {
    match e {
        StreamError::Io(e) => Fault::Read.report(&ctx.metrics, Some(info.peer), &e),
        StreamError::Framing(e) => {
            let fault = match e {
                FramingError::Truncated { .. } => Fault::Truncated,
                _ => Fault::Unframeable,
            };
            fault.report(&ctx.metrics, Some(info.peer), &e);
            super::count_received(ctx, info.transport, unframed);
            ctx.metrics.count_drop(DropReason::Malformed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::MessageKind;
    use crate::transport::Event;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const MESSAGE: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 2\r\n\r\nhi";

    fn info(peer: &str) -> ConnectionInfo {
        ConnectionInfo {
            transport: Transport::Tcp,
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            leg: Leg::FromClient,
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
        tokio::spawn(async move { serve(server, info, &ctx, None).await });
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
        assert_eq!((m.transport, m.from_registrar()), (Transport::Tcp, false));
        assert_eq!(m.source, "127.0.0.1:40001".parse().unwrap());
        let id = m.connection.expect("a stream message names its connection");
        // What the dispatcher sends to the connection reaches the peer.
        ctx.connections
            .send(
                id,
                m.source.0,
                Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
            )
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
        // The one cut off is received too (the core, not running here,
        // counts those framed).
        assert_eq!(
            ctx.metrics.received(Transport::Tcp, MessageKind::Request),
            1
        );
    }

    /// A message cut off by its peer's reset (a close with data unread, or
    /// an abort) is received and dropped as malformed, as one cut off by a
    /// close is.
    #[tokio::test]
    async fn a_message_cut_off_by_a_reset_is_received_and_dropped() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let info = ConnectionInfo {
            peer,
            ..info("127.0.0.1:40004")
        };
        let served = {
            let ctx = ctx.clone();
            tokio::spawn(async move { serve(server, info, &ctx, None).await })
        };
        let mut client = client;
        client
            .write_all(b"REGISTER sip:a@b SIP/2.0\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // SO_LINGER 0: the close is a reset.
        let client = client.into_std().unwrap();
        nix::sys::socket::setsockopt(
            &client,
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection closes")
            .unwrap();
        assert_eq!(ctx.metrics.faults(Fault::Read), 1);
        assert_eq!(ctx.metrics.drops(DropReason::Malformed), 1);
        assert_eq!(
            ctx.metrics.received(Transport::Tcp, MessageKind::Request),
            1
        );
    }

    /// A response cut off by its peer's close is received as a response,
    /// and dropped as malformed.
    #[tokio::test]
    async fn a_response_cut_off_is_received_as_a_response() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40003");
        client
            .write_all(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP a")
            .await
            .unwrap();
        drop(client);
        for _ in 0..1000 {
            if ctx.metrics.drops(DropReason::Malformed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ctx.metrics.faults(Fault::Truncated), 1);
        assert_eq!(ctx.metrics.drops(DropReason::Malformed), 1);
        assert_eq!(
            ctx.metrics.received(Transport::Tcp, MessageKind::Response),
            1
        );
        assert_eq!(
            ctx.metrics.received(Transport::Tcp, MessageKind::Request),
            0
        );
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
        // Dropped as malformed, and so received: every drop is a part of
        // what was received.
        assert_eq!(ctx.metrics.drops(DropReason::Malformed), 1);
        assert_eq!(
            ctx.metrics.received(Transport::Tcp, MessageKind::Request),
            1
        );
    }

    #[tokio::test]
    async fn partial_messages_hold_the_read_budget_until_they_complete_or_close() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let available = || {
            let (shared, reserve) = ctx.read_budget.available();
            shared + reserve
        };
        let full = available();
        let settle = || async {
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
        };
        // A complete message: nothing held afterwards (no buffer between messages).
        let mut client = served(&ctx, "127.0.0.1:40010");
        client.write_all(MESSAGE).await.unwrap();
        received(&mut events).await;
        settle().await;
        assert_eq!(available(), full);
        // 40 KB of a message's headers: held from the budget ...
        let partial = format!("OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}", "p".repeat(40_000));
        client.write_all(partial.as_bytes()).await.unwrap();
        let mut held = false;
        for _ in 0..1000 {
            if available() <= full - 40_000 {
                held = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(held, "the partial message is charged to the budget");
        // ... and given back when the connection closes.
        drop(client);
        let mut released = false;
        for _ in 0..1000 {
            if available() == full && ctx.connections.is_empty() {
                released = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(released, "{} of {full}", available());
    }

    /// The shared part of the budget always holds what one connection
    /// reads a whole message with, at the smallest budget the
    /// configuration takes too (twice `max_message_bytes`); the reserve is
    /// a tenth, at least that much where the budget has room for both.
    #[test]
    fn the_shared_part_of_the_budget_holds_a_whole_message() {
        for (bytes, max) in [
            (2 * 65_535, 65_535),
            (2 * 16_384, 16_384),
            (65_536, 16_384),
            (1 << 20, 65_535),
            (64 << 20, 65_535),
        ] {
            let (shared, reserve) = ReadBudget::new(bytes, max).available();
            assert_eq!(shared + reserve, bytes, "{bytes} {max}");
            assert!(shared > max, "{bytes} {max}: shared {shared}");
            assert!(
                reserve >= (bytes / 10).min(bytes - max - 1),
                "{bytes} {max}"
            );
        }
        assert_eq!(
            ReadBudget::new(64 << 20, 65_535).available().1,
            (64 << 20) / 10
        );
        assert_eq!(ReadBudget::new(65_536, 16_384).available().1, 16_385);
    }

    /// Take every byte of the shared part of `ctx`'s read budget, as the
    /// unfinished messages of other sources would hold it: how many.
    fn spend_the_shared_budget(ctx: &TransportContext) -> usize {
        let (shared, _) = ctx.read_budget.available();
        let held = u32::try_from(shared).unwrap();
        ctx.read_budget
            .shared
            .try_acquire_many(held)
            .unwrap()
            .forget();
        shared
    }

    /// `sipadmit_read_budget_waits_total` of `ctx`.
    fn budget_waits(ctx: &TransportContext) -> u64 {
        ctx.metrics
            .read_budget_waits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// While the budget is spent, a short message that comes in pieces is
    /// still read, without waiting: its first KiB is not charged.
    #[tokio::test]
    async fn a_short_message_in_pieces_is_read_while_the_budget_is_spent() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        spend_the_shared_budget(&ctx);
        let message = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "p".repeat(540)
        );
        let mut client = served(&ctx, "127.0.0.3:40040");
        for _ in 0..2 {
            client.write_all(&message.as_bytes()[..500]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&message.as_bytes()[500..]).await.unwrap();
            let read = received(&mut events).await;
            assert_eq!(&read.bytes[..], message.as_bytes());
        }
        assert_eq!(budget_waits(&ctx), 0);
        ctx.shutdown.cancel();
    }

    /// Connections that each hold part of a message never wait for each
    /// other's bytes while any is free (trial 41: two trusted connections
    /// sending 4.6 KB in 700-byte pieces each asked for the whole 16 KiB
    /// reserve, got part of it, and waited for the rest, held by the other,
    /// until their deadline). Here eight connections share 16 KiB.
    #[tokio::test]
    async fn connections_sharing_a_small_budget_all_finish_their_messages() {
        let (tx, mut events) = mpsc::channel(64);
        let ctx = Arc::try_unwrap(TransportContext::for_tests(tx, 16)).unwrap();
        let ctx = Arc::new(TransportContext {
            limits: crate::config::Limits {
                max_message_bytes: 16_384,
                ..ctx.limits
            },
            read_budget: Arc::new(ReadBudget::new(32_768, 16_384)),
            ..ctx
        });
        let message = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "p".repeat(4_600)
        );
        let mut clients: Vec<DuplexStream> = (0..8)
            .map(|n| served(&ctx, &format!("127.0.0.{}:40050", 10 + n)))
            .collect();
        for piece in message.as_bytes().chunks(700) {
            for client in &mut clients {
                client.write_all(piece).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let within = Duration::from_secs(3);
        for _ in 0..clients.len() {
            match tokio::time::timeout(within, events.recv()).await {
                Ok(Some(Event::Received(read))) => assert_eq!(read.bytes.len(), message.len()),
                other => panic!("not every message was read within {within:?}: {other:?}"),
            }
        }
        ctx.shutdown.cancel();
    }

    /// At the smallest budget, a message near the size limit that comes in
    /// pieces is read in full (its connection asks for the whole message's
    /// room at the end).
    #[tokio::test]
    async fn a_large_message_in_pieces_is_read_at_the_smallest_budget() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = Arc::try_unwrap(TransportContext::for_tests(tx, 4)).unwrap();
        let max = ctx.limits.max_message_bytes;
        let ctx = Arc::new(TransportContext {
            read_budget: Arc::new(ReadBudget::new(2 * max, max)),
            ..ctx
        });
        let message = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "p".repeat(60_000)
        );
        let mut client = served(&ctx, "127.0.0.1:40030");
        for piece in message.as_bytes().chunks(4096) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let read = received(&mut events).await;
        assert_eq!(read.bytes.len(), message.len());
        ctx.shutdown.cancel();
    }

    /// Sources holding the shared read buffer budget with messages they
    /// never finish stall neither the registrar's messages on sipadmit's
    /// own connection to it (not charged) nor a trusted source's (the
    /// reserve); another source's message larger than the first read waits
    /// for the budget.
    #[tokio::test]
    async fn a_spent_read_budget_holds_up_neither_the_registrar_nor_trusted_sources() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let (shared, reserve) = ctx.read_budget.available();
        assert!(reserve >= 64 * 1024, "a tenth of 1 MiB");
        // What the unfinished messages of other sources would hold.
        assert_eq!(spend_the_shared_budget(&ctx), shared);
        let large = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "p".repeat(4 * IDLE_READ_BYTES)
        );
        // sipadmit's own connection to the registrar.
        let (mut registrar, server) = tokio::io::duplex(64 * 1024);
        let registrar_info = ConnectionInfo {
            leg: Leg::FromRegistrar,
            ..info("127.0.0.1:5080")
        };
        let _link = spawn(server, registrar_info, &ctx);
        registrar.write_all(large.as_bytes()).await.unwrap();
        let from_registrar = received(&mut events).await;
        assert_eq!(&from_registrar.bytes[..], large.as_bytes());
        // A trusted source's connection takes the reserve, and gives it back;
        // so does one whose source a reload has made trusted since it opened.
        let trust = |addresses: &[&str]| {
            let trusted = addresses
                .iter()
                .map(|a| crate::policy::pattern::Network::parse(a).unwrap())
                .collect();
            let settings = crate::config::RateLimit {
                trusted,
                ..ctx.admission.settings()
            };
            assert!(ctx.admission.reconfigure(settings, 2));
        };
        trust(&["127.0.0.2"]);
        let mut trusted = served(&ctx, "127.0.0.2:40020");
        let mut trusted_since = served(&ctx, "127.0.0.4:40022");
        trusted.write_all(large.as_bytes()).await.unwrap();
        let from_trusted = received(&mut events).await;
        assert_eq!(
            from_trusted.source,
            PeerAddr("127.0.0.2:40020".parse().unwrap())
        );
        trusted_since.write_all(MESSAGE).await.unwrap();
        received(&mut events).await;
        trust(&["127.0.0.2", "127.0.0.4"]);
        trusted_since.write_all(large.as_bytes()).await.unwrap();
        let from_trusted_since = received(&mut events).await;
        assert_eq!(&from_trusted_since.bytes[..], large.as_bytes());
        // Any other source's waits for the shared part.
        let mut other = served(&ctx, "127.0.0.3:40021");
        other.write_all(large.as_bytes()).await.unwrap();
        let waits = || budget_waits(&ctx);
        tokio::time::timeout(Duration::from_secs(5), async {
            while waits() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the other source's read waits for the budget");
        assert_eq!(
            waits(),
            1,
            "neither the registrar nor the trusted sources waited"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), events.recv())
                .await
                .is_err(),
            "the other source's message is not read in full"
        );
        assert_eq!(ctx.read_budget.available(), (0, reserve));
        // Once the shared part is back, it is read.
        ctx.read_budget.shared.add_permits(shared);
        let from_other = received(&mut events).await;
        assert_eq!(&from_other.bytes[..], large.as_bytes());
        ctx.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_trickling_in_is_closed_at_its_deadline_not_its_idle_timeout() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40011");
        // One byte every 5 s (slowloris): each is progress, but the message
        // is not complete 10 s after its first byte.
        let mut sent = 0;
        let mut rest = Vec::new();
        loop {
            if client.write_all(b"O").await.is_err() {
                break;
            }
            sent += 1;
            assert!(sent < 20, "still open after {sent} bytes");
            tokio::select! {
                read = client.read_to_end(&mut rest) => { read.unwrap(); break; }
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        assert!(ctx.connections.is_empty());
        assert_eq!(ctx.metrics.faults(Fault::MessageDeadline), 1);
    }

    /// A freeze of sipadmit itself (a paused VM, SIGSTOP) that ends past
    /// a message's deadline: the rest of the message, in the socket since
    /// before the deadline, is read and the message goes on.
    #[tokio::test]
    async fn a_message_complete_in_the_socket_before_its_deadline_survives_a_freeze() {
        let (tx, mut events) = mpsc::channel(64);
        let mut ctx = TransportContext::for_tests(tx, 64);
        Arc::get_mut(&mut ctx).unwrap().limits.message_deadline = Duration::from_millis(200);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Each reader that the freeze finds with both its rest and its
        // deadline ready would have closed at even odds without `biased`.
        const CONNECTIONS: usize = 12;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().await.unwrap();
            let (ctx, info) = (ctx.clone(), info(&peer.to_string()));
            tokio::spawn(async move { serve(server, info, &ctx, None).await });
            clients.push(client);
        }
        for client in &mut clients {
            std::io::Write::write_all(client, &MESSAGE[..30]).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for client in &mut clients {
            std::io::Write::write_all(client, &MESSAGE[30..]).unwrap();
        }
        // The freeze: the event loop runs nothing until every deadline passed.
        std::thread::sleep(Duration::from_millis(400));
        for _ in 0..CONNECTIONS {
            assert_eq!(&received(&mut events).await.bytes[..], MESSAGE);
        }
        assert_eq!(ctx.metrics.faults(Fault::MessageDeadline), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40003");
        client.write_all(MESSAGE).await.unwrap();
        received(&mut events).await;
        // Paused time jumps to the idle deadline once nothing else can run.
        let started = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(ctx.connections.is_empty());
        assert!(started.elapsed() >= ctx.limits.tcp_idle_timeout);
    }

    /// A lone CRLF after a message (a keep-alive of its own, or padding:
    /// RFC 3261 7.5) starts no message: the connection lives on to its idle
    /// timeout, not its message deadline (trial 47: a healthy flow was cut
    /// 10 s after one), and a message after it is read whole.
    #[tokio::test(start_paused = true)]
    async fn a_lone_crlf_after_a_message_starts_no_deadline() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let mut client = served(&ctx, "127.0.0.1:40005");
        for tail in [&b"\r\n"[..], b"\r\n\r\n\r\n", b"\r"] {
            client.write_all(MESSAGE).await.unwrap();
            client.write_all(tail).await.unwrap();
            assert_eq!(&received(&mut events).await.bytes[..], MESSAGE);
            tokio::time::sleep(ctx.limits.message_deadline * 3).await;
        }
        client.write_all(b"\n").await.unwrap();
        client.write_all(MESSAGE).await.unwrap();
        assert_eq!(&received(&mut events).await.bytes[..], MESSAGE);
        assert_eq!(ctx.metrics.faults(Fault::MessageDeadline), 0);
        assert!(!ctx.connections.is_empty());
        // Then the idle timeout as ever.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(ctx.connections.is_empty());
        assert_eq!(ctx.metrics.faults(Fault::MessageDeadline), 0);
    }

    /// A connection that never sends a byte is closed at the message
    /// deadline (10 s), not after the idle timeout: silent connections
    /// cannot hold every slot for minutes.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_message_deadline() {
        let (tx, _events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 4);
        let started = Instant::now();
        let mut client = served(&ctx, "127.0.0.1:40004");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let took = started.elapsed();
        assert!(ctx.connections.is_empty());
        assert!(
            took >= ctx.limits.message_deadline && took < ctx.limits.tcp_idle_timeout,
            "{took:?}"
        );
        assert_eq!(ctx.metrics.faults(Fault::MessageDeadline), 1);
    }

    /// A TCP listener on a loopback port, its connections accepted and
    /// served with `ctx`: its address.
    async fn accepting(ctx: &Arc<TransportContext>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let at = Listener {
            transport: Transport::Tcp,
            local: addr.into(),
        };
        tokio::spawn(accept(listener, at, ctx.clone(), |tcp| {
            std::future::ready(Some(tcp))
        }));
        addr
    }

    #[tokio::test]
    async fn a_full_pool_closes_a_half_open_connection_for_a_new_one_or_refuses_it() {
        let (tx, mut events) = mpsc::channel(16);
        let ctx = TransportContext::for_tests(tx, 2);
        let addr = accepting(&ctx).await;
        let mut pong = [0u8; 2];
        // The first sends a message: no longer half-open.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(MESSAGE).await.unwrap();
        received(&mut events).await;
        // The second only pings (a keep-alive proves nothing): half-open.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"\r\n\r\n").await.unwrap();
        second.read_exact(&mut pong).await.unwrap();
        // Both slots are taken: the third closes the second and takes its place.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let _ = second.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(
            ctx.metrics
                .connections_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        third.write_all(MESSAGE).await.unwrap();
        received(&mut events).await;
        // Nothing half-open now: the fourth is closed unread.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let _ = fourth.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(ctx.metrics.faults(Fault::ConnectionLimit), 1);
        // The first and third still work.
        for conn in [&mut first, &mut third] {
            conn.write_all(b"\r\n\r\n").await.unwrap();
            conn.read_exact(&mut pong).await.unwrap();
        }
        assert_eq!(ctx.slots.in_use(), (2, 0));
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_message_waiting_for_upstream_room_does_not_keep_an_evicted_connection() {
        use crate::transport::upstream::{UpstreamBacklog, EDIT_ALLOWANCE};
        let (tx, mut events) = mpsc::channel(16);
        let mut ctx = TransportContext::for_tests(tx, 2);
        let backlog = Arc::new(UpstreamBacklog::new(10_000));
        Arc::get_mut(&mut ctx).unwrap().upstream_backlog = Some(backlog.clone());
        // The queue to the registrar is full: held by a message let through.
        let _full = backlog.room_for_clients(10_000 - EDIT_ALLOWANCE).await;
        let addr = accepting(&ctx).await;
        // Its first message waits for room, two more behind it: the
        // connection is half-open.
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting.write_all(&MESSAGE.repeat(3)).await.unwrap();
        let mut pong = [0u8; 2];
        let mut other = TcpStream::connect(addr).await.unwrap();
        other.write_all(b"\r\n\r\n").await.unwrap();
        other.read_exact(&mut pong).await.unwrap();
        // The pool is full: a third connection evicts the oldest half-open
        // one, whose message stops waiting and whose slot comes free.
        let _third = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), waiting.read_to_end(&mut rest))
            .await
            .expect("the evicted connection closes though its message waits")
            .unwrap();
        assert!(rest.is_empty());
        tokio::time::timeout(Duration::from_secs(5), async {
            while ctx.metrics.drops(DropReason::ConnectionClosed) < 3
                || ctx.slots.in_use() != (2, 0)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the message counted as dropped, the slot given back");
        // Each of the three is counted received and dropped.
        assert_eq!(ctx.metrics.drops(DropReason::ConnectionClosed), 3);
        let options = crate::observe::metrics::MessageKind::of(MESSAGE);
        assert_eq!(ctx.metrics.received(Transport::Tcp, options), 3);
        assert!(events.try_recv().is_err(), "nothing reached the dispatcher");
        ctx.shutdown.cancel();
    }

    /// The registrar's answers read in full reach the dispatcher though its
    /// connection fails while they wait for room there: the link counts
    /// them as answered, so a dropped one would leave its client with no
    /// answer at all (neither the registrar's nor sipadmit's `503`).
    #[tokio::test]
    async fn answers_read_from_a_failed_registrar_connection_are_handed_on() {
        registrar_dies_after_answering(false).await;
    }

    #[tokio::test]
    async fn answers_left_in_a_failed_registrar_connection_are_read_and_handed_on() {
        registrar_dies_after_answering(true).await;
    }

    /// The registrar answers two requests and dies; sipadmit's next write to
    /// it fails while its first answer waits for the dispatcher (whose
    /// queue is full). `second_unread`: its second answer is still in the
    /// socket then, not read yet. Both answers go to the dispatcher.
    async fn registrar_dies_after_answering(second_unread: bool) {
        let (tx, mut events) = mpsc::channel(1);
        let ctx = TransportContext::for_tests(tx.clone(), 4);
        let (mut registrar, server) = tokio::io::duplex(64 * 1024);
        let info = ConnectionInfo {
            leg: Leg::FromRegistrar,
            ..info("127.0.0.1:5080")
        };
        // The dispatcher's queue is full.
        let earlier = Inbound {
            bytes: Bytes::from_static(MESSAGE),
            transport: Transport::Tcp,
            source: PeerAddr(info.peer),
            local: info.local,
            connection: None,
            leg: Leg::FromClient,
        };
        tx.send(Event::Received(earlier)).await.unwrap();
        let spawned = spawn(server, info, &ctx);
        let answer = |n: u32| {
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK-{n}\r\n\
                 Call-ID: c{n}\r\nCSeq: {n} REGISTER\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let sent_first = if second_unread {
            answer(1)
        } else {
            format!("{}{}", answer(1), answer(2))
        };
        registrar.write_all(sent_first.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while spawned.heard.messages() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the first answer is read and waits for the dispatcher");
        if second_unread {
            registrar.write_all(answer(2).as_bytes()).await.unwrap();
        }
        // The registrar is gone: the next write to it fails, which closes
        // the connection while the first answer waits.
        drop(registrar);
        ctx.connections
            .send(spawned.id, info.peer, Bytes::from_static(MESSAGE))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while ctx.metrics.faults(Fault::Write) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the write fails");
        // The reader sees its connection closing while the answer waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = received(&mut events).await;
        assert_eq!(first.leg, Leg::FromClient, "the earlier message");
        for n in 1..=2 {
            let answer_n = received(&mut events).await;
            assert_eq!(&answer_n.bytes[..], answer(n).as_bytes());
        }
        assert_eq!(spawned.heard.messages(), 2);
        assert_eq!(ctx.metrics.drops(DropReason::ConnectionClosed), 0);
        ctx.shutdown.cancel();
    }
}
