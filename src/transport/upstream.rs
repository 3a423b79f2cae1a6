//! Stage 1, the link to a stream upstream: a task with a bounded queue.
//!
//! The dispatcher only offers messages to the queue ([`UpstreamLink::offer`]
//! never waits). The queue is bounded in bytes ([`UpstreamBacklog`],
//! `limits.upstream_queue_bytes`): client connections stop reading while
//! less than a quarter of it would be free once the messages they read
//! are queued (backpressure: a reconnect storm waits in the clients' TCP
//! windows; [`UpstreamBacklog::room_for_clients`]), so only what cannot
//! wait (UDP, the registrar's own traffic) can fill it, and a message that
//! finds it full is refused at once (answered `503` with rule
//! `proxy.upstream-busy`: the registrar is up, the queue is full), as is a
//! client message larger than the whole queue. The link task waits for room in its connection's writer queue
//! instead of failing a message. The link task connects when
//! it has a message and no open connection (within
//! [`LinkSettings::connect_timeout`]), and after a failed connect fails
//! fast for [`LinkSettings::retry_delay`]. Meanwhile UDP and every other
//! message keep flowing through the dispatcher. Each message the link could
//! not deliver goes back to the dispatcher as [`Event::Undelivered`], which
//! answers a request `503` through `Core::upstream_unavailable`.
//!
//! A connection that closes fails at once, as undelivered (`503`), the
//! client requests (not ACKs, not sipadmit's own probes) written on it
//! that have no final response on it and whose clients still wait (Timer
//! F, Timer C for an INVITE: [`answers`](super::answers); its reader notes
//! the final responses, the link keeps a copy of each request until its
//! answer comes). That covers a registrar that refuses sipadmit's
//! client certificate after a TLS 1.3 handshake (it sends nothing at
//! all), one killed or restarted with requests in flight, and one
//! dropping the connection on a request it cannot read. A registrar that
//! answers a failed request later on a new connection (RFC 3261 18.2.2)
//! gets its answer relayed after the 503. The next message opens a new
//! connection.
//!
//! The connection it opens is served by [`stream::spawn`] like any other
//! (same framing, writer, keep-alives), and everything arriving on it
//! counts as the registrar's. A TLS upstream runs its handshake in
//! `LinkTask::connect`, after the TCP connect and before `spawn`, with
//! [`ClientTls`] (the registrar's certificate always verified): a failed
//! handshake is a failed connect (its messages come back undelivered, so
//! requests are answered `503`, and `/readyz` reports it like a failed TCP
//! connect), counted by reason in
//! `sipadmit_tls_handshake_failures_total{side="upstream"}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::answers::{Heard, Opened, TransactionKey, Unanswered};
use super::connections::WriteQueue;
use super::stream::{self, ConnectionInfo, Spawned};
use super::tls::{ClientTls, HandshakeError};
use super::{ConnectionId, Event, Fault, SendError, Transport, TransportContext};
use crate::observe::metrics::TlsSide;
use crate::vocabulary::Leg;
use crate::vocabulary::{Inbound, LocalAddr};

/// How often the link looks at the answers its connection's reader noted
/// while it remembers requests (so that a drain sees them answered).
const ANSWERS_LOOKED_AT: Duration = Duration::from_millis(100);

/// What waits on the link to a stream upstream: the bytes queued for it,
/// bounded by `limits.upstream_queue_bytes` and shared by the dispatcher
/// (which queues), the link task (which takes) and the client connections'
/// readers (which wait for room: [`UpstreamBacklog::room_for_clients`]);
/// and the requests written on its connection and not answered yet, which
/// a drain waits for and, when it runs out, has the link give up
/// ([`UpstreamBacklog::give_up`]).
#[derive(Debug)]
pub struct UpstreamBacklog {
    queued: AtomicUsize,
    /// Bytes of client messages [`Self::room_for_clients`] let through
    /// whose [`UpstreamRoom`] is held (until the dispatcher has taken
    /// them): counted as queued by the readers, so that connections reading
    /// on meanwhile do not all find the same room.
    promised: AtomicUsize,
    /// Client messages waiting for room: while there are any, new ones
    /// wait their turn behind them (through `turn`), so that steady small
    /// traffic cannot starve a large one.
    waiting: AtomicUsize,
    /// The turns of the waiting client messages (a fair mutex).
    turn: tokio::sync::Mutex<()>,
    capacity: usize,
    /// Wakes the readers waiting for room.
    taken: Notify,
    /// Requests written and not answered (calls ringing included), as of
    /// the link's last look (at most [`ANSWERS_LOOKED_AT`] old while there
    /// are any).
    unanswered: AtomicUsize,
    /// Tells the link to answer those, and what is queued, `408` now.
    give_up: Notify,
    /// Messages the link handed back as given up that the dispatcher has
    /// not answered (or counted) yet.
    given_up: AtomicUsize,
}

impl UpstreamBacklog {
    /// An empty queue of at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            promised: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            turn: tokio::sync::Mutex::new(()),
            capacity,
            taken: Notify::new(),
            unanswered: AtomicUsize::new(0),
            give_up: Notify::new(),
            given_up: AtomicUsize::new(0),
        }
    }

    /// Requests written to the upstream whose clients still wait for its
    /// final answer (retransmissions counted once; calls ringing
    /// included): what a drain waits for, at most `limits.drain_secs`.
    pub fn unanswered(&self) -> usize {
        self.unanswered.load(Ordering::Acquire)
    }

    /// Have the link answer `408 Request Timeout` (recorded, rule
    /// `proxy.request-timeout`) to every request it wrote and saw no answer
    /// to, and to every request still queued, and cancel the calls that
    /// may be ringing (their callers get the registrar's `487`, or `408`
    /// after [`CANCELLED_ANSWERED_WITHIN`](super::answers::CANCELLED_ANSWERED_WITHIN)):
    /// the end of a drain that ran out of time. [`Self::unanswered`] is 0
    /// once they are all answered or handed to the dispatcher,
    /// [`Self::given_up_unanswered`] once it has sent their answers.
    pub fn give_up(&self) {
        self.give_up.notify_one();
    }

    /// Messages given up ([`Self::give_up`]) whose answer the dispatcher
    /// has not sent yet: what the end of a drain waits for before the
    /// connections close.
    pub fn given_up_unanswered(&self) -> usize {
        self.given_up.load(Ordering::Relaxed)
    }

    /// The link hands `n` messages back to the dispatcher as given up.
    pub(crate) fn handing_back(&self, n: usize) {
        self.given_up.fetch_add(n, Ordering::Relaxed);
    }

    /// The dispatcher carried out one message the link handed back as
    /// given up (its `408` sent, or the failure to send it counted).
    pub fn given_up_answered(&self) {
        let _ = self
            .given_up
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queue `bytes` if they fit.
    fn try_add(&self, bytes: usize) -> bool {
        self.queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued + bytes <= self.capacity).then_some(queued + bytes)
            })
            .is_ok()
    }

    /// The link took `bytes` off the queue.
    fn remove(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        self.taken.notify_waiters();
    }

    /// Wait until a client message of `bytes` fits with a quarter of the
    /// queue still free (kept for what cannot wait: UDP, the registrar's
    /// own traffic), counting the client messages let through before it
    /// and not queued yet; the room it is given is counted among those
    /// until it is dropped (by the dispatcher once it has queued or
    /// answered the message; or with the message, wherever it is dropped).
    /// Messages that wait go first come, first served (a large one is not
    /// overtaken by a stream of small ones); one too large ever to leave
    /// that quarter free goes once it fits at all; one larger than the
    /// whole queue goes at once (to be answered `503`). `bytes` is the
    /// message as received, with [`EDIT_ALLOWANCE`] for what the proxy adds.
    pub async fn room_for_clients(self: &Arc<Self>, bytes: usize) -> UpstreamRoom {
        let bytes = bytes + EDIT_ALLOWANCE;
        if self.waiting.load(Ordering::Relaxed) == 0 && self.try_promise(bytes) {
            return self.room(bytes);
        }
        let _waiting = Waiting::new(self);
        // Tokio's mutex is fair: the waiters take their turns in order.
        let _turn = self.turn.lock().await;
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.try_promise(bytes) {
                return self.room(bytes);
            }
            taken.await;
        }
    }

    /// Count `bytes` as promised if a client message of that size fits now.
    fn try_promise(&self, bytes: usize) -> bool {
        let reserve = self.capacity / 4;
        self.promised
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |promised| {
                let ahead = self.queued() + promised;
                let fits = ahead + bytes + reserve <= self.capacity
                    || (bytes + reserve > self.capacity && ahead + bytes <= self.capacity)
                    || bytes > self.capacity;
                fits.then_some(promised + bytes)
            })
            .is_ok()
    }

    fn room(self: &Arc<Self>, bytes: usize) -> UpstreamRoom {
        UpstreamRoom {
            backlog: self.clone(),
            bytes,
        }
    }
}

/// Bytes counted for what the proxy adds to a client's request on its way
/// to the registrar (its Via, a Path or Record-Route with a flow token), on
/// top of the message as received.
pub const EDIT_ALLOWANCE: usize = 1024;

/// Room a stream client's message holds in the queue to a stream upstream
/// from its connection's reader to the dispatcher
/// ([`UpstreamBacklog::room_for_clients`]); given back when dropped.
#[derive(Debug)]
pub struct UpstreamRoom {
    backlog: Arc<UpstreamBacklog>,
    bytes: usize,
}

impl Drop for UpstreamRoom {
    fn drop(&mut self) {
        let bytes = self.bytes;
        let _ =
            self.backlog
                .promised
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |promised| {
                    Some(promised.saturating_sub(bytes))
                });
        self.backlog.taken.notify_waiters();
    }
}

/// A client message waiting in [`UpstreamBacklog::room_for_clients`]
/// (counted in `waiting` while it waits, however its wait ends: messages
/// that arrive meanwhile wait their turn behind it).
struct Waiting<'b>(&'b UpstreamBacklog);

impl<'b> Waiting<'b> {
    fn new(backlog: &'b UpstreamBacklog) -> Self {
        backlog.waiting.fetch_add(1, Ordering::Relaxed);
        Self(backlog)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the link connects and backs off.
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// How long one connect may take.
    pub connect_timeout: Duration,
    /// After a failed connect, messages fail at once for this long.
    pub retry_delay: Duration,
    /// How long the TLS handshake of a `tls:` upstream may take
    /// (`tls.handshake_timeout_secs`).
    pub handshake_timeout: Duration,
}

impl LinkSettings {
    /// 2 s to connect, then 2 s of failing fast; 10 s for a TLS handshake.
    pub const DEFAULT: Self = Self {
        connect_timeout: Duration::from_secs(2),
        retry_delay: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(10),
    };
}

/// Why the link could not open a connection to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed or timed out (or the link is stopping).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The TLS handshake with a `tls:` upstream failed (its certificate did
    /// not verify, no common version or cipher, ...).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// A message for the upstream, with the message it was relayed from.
#[derive(Debug)]
pub struct Outgoing {
    /// What to write to the upstream.
    pub bytes: Bytes,
    /// The message as it arrived (answered `503` if this is not delivered).
    pub inbound: Inbound,
}

/// The dispatcher's handle on the link task (every worker's dispatcher
/// holds a clone; the link task ends when the last is dropped).
#[derive(Debug, Clone)]
pub struct UpstreamLink {
    transport: Transport,
    addr: SocketAddr,
    queue: mpsc::UnboundedSender<Outgoing>,
    backlog: Arc<UpstreamBacklog>,
}

impl UpstreamLink {
    /// Start the link task to the stream upstream at `addr`, over
    /// `transport`; `local` is the advertised listener address of that
    /// transport (messages on the link arrive "at" it); `tls` runs the
    /// client handshake of a `tls:` upstream; the queue is bounded by
    /// `backlog` (the context's [`TransportContext::upstream_backlog`]). The
    /// task stops on the context's shutdown.
    pub fn spawn(
        transport: Transport,
        addr: SocketAddr,
        local: SocketAddr,
        tls: Option<Arc<ClientTls>>,
        settings: LinkSettings,
        backlog: Arc<UpstreamBacklog>,
        ctx: Arc<TransportContext>,
    ) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let task = LinkTask {
            transport,
            tls,
            addr,
            local,
            settings,
            backlog: backlog.clone(),
            ctx,
            connection: None,
            down: None,
            give_up_due: false,
            gave_up: false,
        };
        tokio::spawn(task.run(waiting));
        Self {
            transport,
            addr,
            queue,
            backlog,
        }
    }

    /// The transport of the link (TCP or TLS).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its queue and the requests it waits answers to.
    pub fn backlog(&self) -> &UpstreamBacklog {
        &self.backlog
    }

    /// Queue a message for the upstream, without waiting: refused when the
    /// queue is at its byte bound or the link has stopped.
    pub fn offer(&self, outgoing: Outgoing) -> Result<(), SendError> {
        let bytes = outgoing.bytes.len();
        if !self.backlog.try_add(bytes) {
            return Err(SendError::UpstreamQueueFull(self.addr));
        }
        self.queue.send(outgoing).map_err(|_| {
            self.backlog.remove(bytes);
            SendError::UpstreamStopped(self.addr)
        })
    }
}

/// The open connection of the link.
struct Open {
    id: ConnectionId,
    /// Cancelled when the connection has ended.
    ended: CancellationToken,
    /// What the registrar has sent on it.
    heard: Arc<Heard>,
    /// Its writer queue (the link waits while it is backed up).
    queue: Arc<WriteQueue>,
    /// Requests written on it with no final response yet: failed at once
    /// if it ends.
    unanswered: Unanswered,
}

/// The link task's state.
struct LinkTask {
    transport: Transport,
    /// The TLS client of a `tls:` upstream.
    tls: Option<Arc<ClientTls>>,
    addr: SocketAddr,
    local: SocketAddr,
    settings: LinkSettings,
    backlog: Arc<UpstreamBacklog>,
    ctx: Arc<TransportContext>,
    /// The open connection to the upstream, if any.
    connection: Option<Open>,
    /// After a failed connect: until when to fail fast, and why.
    down: Option<(Instant, Arc<dyn std::error::Error + Send + Sync>)>,
    /// A drain asked, while a write waited, to give up what is unanswered.
    give_up_due: bool,
    /// A drain ran out and the link gave up: what a closing connection
    /// leaves unanswered gets the drain's `408`, not a `503` inviting a
    /// retry elsewhere while a callee may still ring.
    gave_up: bool,
}

impl LinkTask {
    async fn run(mut self, mut waiting: mpsc::UnboundedReceiver<Outgoing>) {
        let mut look = tokio::time::interval(ANSWERS_LOOKED_AT);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if std::mem::take(&mut self.give_up_due) && !self.give_up(&mut waiting).await {
                return;
            }
            let ended = self.connection.as_ref().map(|open| open.ended.clone());
            let remembers = self
                .connection
                .as_ref()
                .is_some_and(|open| !open.unanswered.is_empty());
            let outgoing = tokio::select! {
                () = self.ctx.shutdown.cancelled() => {
                    self.left_at_stop(waiting.len());
                    return;
                }
                _ = look.tick(), if remembers => {
                    if !self.look_at_answers().await {
                        return;
                    }
                    continue;
                }
                () = self.backlog.give_up.notified() => {
                    self.give_up_due = true;
                    continue;
                }
                () = async {
                    match &ended {
                        Some(ended) => ended.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if !self.connection_ended().await {
                        return;
                    }
                    continue;
                }
                outgoing = waiting.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            self.backlog.remove(outgoing.bytes.len());
            if !self.deliver(outgoing).await {
                return;
            }
        }
    }

    /// Tell the backlog how many requests a drain waits for: those written
    /// on the open connection and not answered yet.
    fn publish_awaited(&self) {
        let awaited = self
            .connection
            .as_ref()
            .map_or(0, |open| open.unanswered.len());
        // Release: a drain that reads it sees the handing back before.
        self.backlog.unanswered.store(awaited, Ordering::Release);
    }

    /// Forget the requests the registrar answered, or whose clients have
    /// stopped waiting, and tell the backlog how many are left. At a
    /// drain's end, the calls being cancelled that became ringing get their
    /// CANCEL, and those the registrar has not answered in time are given
    /// up (`408`). `false`: the dispatcher is gone.
    async fn look_at_answers(&mut self) -> bool {
        let (mut cancels, mut overdue) = (Vec::new(), Vec::new());
        if let Some(open) = self.connection.as_mut() {
            open.unanswered.answered(&open.heard);
            let now = Instant::now();
            open.unanswered.forget_expired(now);
            cancels = open.unanswered.cancels_due();
            overdue = open.unanswered.give_up_overdue_calls(&open.heard, now);
        }
        self.cancel(cancels);
        if !overdue.is_empty() {
            warn!(
                upstream = %self.addr,
                calls = overdue.len(),
                "calls cancelled at the drain's end got no final answer from the registrar in time: they are answered 408"
            );
        }
        self.hand_back_given_up(overdue).await
    }

    /// Hand the requests a drain's end gave up back to the dispatcher,
    /// which answers each `408`. `false`: the dispatcher is gone.
    async fn hand_back_given_up(&self, given_up: Vec<Inbound>) -> bool {
        // Counted as handed back before they stop counting as unanswered:
        // the drain never sees both at zero in between.
        self.backlog.handing_back(given_up.len());
        self.publish_awaited();
        let upstream = self.addr;
        self.hand_back(given_up, || SendError::UpstreamGivenUp(upstream))
            .await
    }

    /// sipadmit stops at once: what is still unanswered gets no answer
    /// from it. Said, not claimed as answered.
    /// `queued`: messages still waiting to be written.
    fn left_at_stop(&self, queued: usize) {
        let left = self
            .connection
            .as_ref()
            .map_or(0, |open| open.unanswered.len());
        if left > 0 || queued > 0 {
            warn!(
                upstream = %self.addr,
                requests = left,
                queued,
                "stopping with requests the registrar had not answered, or not been sent: they are left to their clients' timers"
            );
        }
    }

    /// A drain ran out: write the responses and ACKs still queued for the
    /// registrar; answer `408` to every request still unanswered (after
    /// taking the answers heard so far) but the calls that may be ringing,
    /// and to every request still queued; send
    /// the registrar a CANCEL for each call that may be ringing (RFC 3261
    /// 16.8, as Timer C would), whose final answer (`487`) is then
    /// relayed to its caller, or given up ([`Self::look_at_answers`]).
    /// `false`: the dispatcher is gone.
    async fn give_up(&mut self, waiting: &mut mpsc::UnboundedReceiver<Outgoing>) -> bool {
        // What is queued goes first: a response (a callee's 2xx, which a
        // proxy always forwards, RFC 3261 16.7 step 5) or an ACK is
        // written, and before the CANCELs below, so that a call answered
        // meanwhile is not cancelled; a request still queued is given up.
        self.gave_up = true;
        let mut queued_requests = Vec::new();
        while let Ok(queued) = waiting.try_recv() {
            let is_request = !(queued.inbound.is_response() || queued.bytes.starts_with(b"ACK "));
            if is_request {
                // Counted as handed back before it leaves the queue (see
                // `hand_back_given_up`).
                self.backlog.handing_back(1);
            }
            self.backlog.remove(queued.bytes.len());
            if is_request {
                queued_requests.push(queued.inbound);
            } else if !self.write_now(queued).await {
                return false;
            }
        }
        let (given_up, cancels) = match self.connection.as_mut() {
            Some(open) => {
                let now = Instant::now();
                let given_up = open.unanswered.give_up_all_but_calls(&open.heard, now);
                (given_up, open.unanswered.cancel_calls(now))
            }
            None => (Vec::new(), Vec::new()),
        };
        self.cancel(cancels);
        if !given_up.is_empty() || !queued_requests.is_empty() {
            warn!(
                upstream = %self.addr,
                requests = given_up.len() + queued_requests.len(),
                "the drain ran out with requests the registrar had not answered: they are answered 408"
            );
        }
        self.hand_back_given_up(given_up).await && {
            let upstream = self.addr;
            self.hand_back(queued_requests, || SendError::UpstreamGivenUp(upstream))
                .await
        }
    }

    /// Write the CANCELs of calls ringing at a drain's end on the open
    /// connection, counted (`sipadmit_upstream_cancels_total`). One that
    /// cannot be written leaves its call to the `408` that follows.
    fn cancel(&self, cancels: Vec<Bytes>) {
        let Some(open) = self.connection.as_ref().filter(|_| !cancels.is_empty()) else {
            return;
        };
        warn!(
            upstream = %self.addr,
            calls = cancels.len(),
            "the drain ran out with calls ringing: CANCEL sent to the registrar for each; their callers get its final answer, or 408"
        );
        for cancel in cancels {
            match self.ctx.connections.send(open.id, self.addr, cancel) {
                Ok(()) => self.ctx.metrics.note_upstream_cancel(),
                Err(error) => {
                    warn!(upstream = %self.addr, %error, "a CANCEL at the drain's end could not be written");
                }
            }
        }
    }

    /// Hand `messages` back to the dispatcher, each with the error `why`
    /// makes. `false`: the dispatcher is gone.
    async fn hand_back(&self, messages: Vec<Inbound>, why: impl Fn() -> SendError) -> bool {
        for inbound in messages {
            if !self.undelivered(inbound, why()).await {
                return false;
            }
        }
        true
    }

    /// Write one message to the connection (opened if need be), waiting for
    /// room in its writer queue; what cannot be delivered goes back to the
    /// dispatcher. `false`: the dispatcher is gone.
    async fn deliver(&mut self, outgoing: Outgoing) -> bool {
        let Outgoing { bytes, inbound } = outgoing;
        // The transaction a client's request opens at the registrar (none
        // for an ACK, a response, or sipadmit's own probe, which no client
        // waits for), named before the bytes are handed on.
        let opens = (!inbound.is_response() && !inbound.from_registrar())
            .then(|| TransactionKey::opened_by(&bytes))
            .flatten();
        let sent = match self.connection().await {
            Ok(()) => {
                // Remembered before the bytes can reach the registrar: its
                // answer may be read before the write returns.
                let cancels = opens.as_ref().and_then(Opened::cancels);
                let remembered = match (self.connection.as_mut(), opens) {
                    (Some(open), Some(opened)) => {
                        open.unanswered.answered(&open.heard);
                        let key = opened.key;
                        (open.unanswered)
                            .written(opened, &inbound, Instant::now())
                            .then_some(key)
                    }
                    _ => None,
                };
                let sent = self.write(bytes).await;
                if let Some(open) = self.connection.as_mut() {
                    match (&sent, remembered, cancels) {
                        // It comes back as undelivered below, failed once.
                        (Err(_), Some(key), _) => open.unanswered.forget(key),
                        // The client's CANCEL is on its way: its call is
                        // its own to cancel.
                        (Ok(()), _, Some(invite)) => open.unanswered.cancelled_by_client(invite),
                        _ => {}
                    }
                }
                self.publish_awaited();
                sent
            }
            Err(e) => Err(e),
        };
        self.sent(inbound, sent).await
    }

    /// Write `queued` on the open connection at once, without waiting for
    /// room in its writer queue (a drain's end has no time to wait for a
    /// registrar that stopped reading); what cannot be written goes back
    /// to the dispatcher. `false`: the dispatcher is gone.
    async fn write_now(&mut self, queued: Outgoing) -> bool {
        let sent = match &self.connection {
            Some(open) => (self.ctx.connections).send(open.id, self.addr, queued.bytes),
            None => Err(SendError::UpstreamStopped(self.addr)),
        };
        self.sent(queued.inbound, sent).await
    }

    /// Count what `inbound` became: written to the connection's queue
    /// (what `/readyz` counts as delivered, and `sipadmit_relayed_total`),
    /// or back to the dispatcher as undelivered. `false`: the dispatcher
    /// is gone.
    async fn sent(&self, inbound: Inbound, sent: Result<(), SendError>) -> bool {
        match sent {
            Ok(()) => {
                self.ctx.metrics.note_upstream_sent();
                if !inbound.from_registrar() {
                    let kind = crate::observe::metrics::MessageKind::of(&inbound.bytes);
                    self.ctx.metrics.count_relayed(self.transport, kind);
                }
                true
            }
            Err(error) => self.undelivered(inbound, error).await,
        }
    }

    /// Write `bytes` to the open connection, waiting (bounded by
    /// [`stream::WRITE_TIMEOUT`] per wait) while its writer queue is backed up.
    async fn write(&mut self, bytes: Bytes) -> Result<(), SendError> {
        let Some(open) = self.connection.as_ref() else {
            return Err(SendError::UpstreamStopped(self.addr));
        };
        let mut give_up_due = false;
        if open.queue.is_backed_up() {
            tokio::select! {
                () = open.queue.drained() => {}
                () = open.ended.cancelled() => {}
                () = tokio::time::sleep(stream::WRITE_TIMEOUT) => {}
                // Not held up by a registrar that stopped reading: given up
                // as soon as this write is done.
                () = self.backlog.give_up.notified() => give_up_due = true,
            }
        }
        let sent = self.ctx.connections.send(open.id, self.addr, bytes);
        self.give_up_due |= give_up_due;
        sent
    }

    /// Hand a message back to the dispatcher. `false`: it is gone.
    async fn undelivered(&self, inbound: Inbound, error: SendError) -> bool {
        let undelivered = Event::Undelivered { inbound, error };
        self.ctx.events.send(undelivered).await.is_ok()
    }

    /// The connection ended. The requests written on it that have no
    /// final response are failed now (no answer to them will come on it);
    /// the next message opens a new connection. `false`: the dispatcher is
    /// gone.
    async fn connection_ended(&mut self) -> bool {
        let Some(mut open) = self.connection.take() else {
            return true;
        };
        // Its reader notes every message still buffered before it ends
        // (the writer may have seen the close first). It may wait for room
        // in the dispatcher's queue, which always drains: waited for as
        // long as it takes, or answered requests would get a 503 first.
        tokio::select! {
            () = open.ended.cancelled() => {}
            () = self.ctx.shutdown.cancelled() => {}
        }
        open.unanswered.answered(&open.heard);
        if open.unanswered.not_kept() > 0 {
            warn!(
                upstream = %self.addr,
                connection = %open.id,
                writes = open.unanswered.not_kept(),
                "requests written on a closed upstream connection were not remembered (10,000 requests or 16 MiB unanswered on it; a UDP client's retransmissions count as writes): they are left to their clients' timers"
            );
        }
        let failed = open.unanswered.take_waiting(Instant::now());
        if self.gave_up {
            // Counted as handed back before they stop counting as
            // unanswered (see `hand_back_given_up`).
            self.backlog.handing_back(failed.len());
        }
        self.publish_awaited();
        if self.ctx.shutdown.is_cancelled() {
            // Nothing is answered any more: say so, not that 503s go out.
            if !failed.is_empty() {
                warn!(
                    upstream = %self.addr,
                    connection = %open.id,
                    requests = failed.len(),
                    "stopping with requests the registrar had not answered: they are left to their clients' timers"
                );
            }
            return false;
        }
        if failed.is_empty() {
            info!(upstream = %self.addr, connection = %open.id, "upstream connection closed");
            return true;
        }
        let what = match (self.gave_up, open.heard.messages(), self.transport) {
            (true, ..) => "upstream connection closed after the drain ran out, with requests the registrar had not answered: they are answered 408",
            (false, 0, Transport::Tls) => "upstream connection closed before the registrar sent anything (client certificate refused?): its requests are answered 503",
            (false, 0, _) => "upstream connection closed before the registrar sent anything: its requests are answered 503",
            (false, ..) => "upstream connection closed with requests the registrar had not answered: they are answered 503",
        };
        warn!(
            upstream = %self.addr,
            connection = %open.id,
            requests = failed.len(),
            "{what}"
        );
        let (upstream, gave_up) = (self.addr, self.gave_up);
        self.hand_back(failed, || match gave_up {
            true => SendError::UpstreamGivenUp(upstream),
            false => SendError::UpstreamClosedUnanswered(upstream),
        })
        .await
    }

    /// Make sure a connection is open: the open one, or a new one.
    async fn connection(&mut self) -> Result<(), SendError> {
        if let Some(open) = &self.connection {
            if self.ctx.connections.is_open_to(open.id, self.addr) {
                return Ok(());
            }
            // Closed: fail what it never answered before writing anew.
            if !self.connection_ended().await {
                return Err(SendError::UpstreamStopped(self.addr));
            }
        }
        let unreachable = |cause| SendError::UpstreamUnreachable {
            addr: self.addr,
            cause,
        };
        if let Some((until, cause)) = &self.down {
            if Instant::now() < *until {
                return Err(unreachable(cause.clone()));
            }
        }
        match self.connect().await {
            Ok(spawned) => {
                self.down = None;
                self.ctx.metrics.note_stream_upstream_connected();
                info!(upstream = %self.addr, connection = %spawned.id, "connected to upstream");
                self.connection = Some(Open {
                    id: spawned.id,
                    ended: spawned.ended,
                    heard: spawned.heard,
                    queue: spawned.queue,
                    unanswered: Unanswered::default(),
                });
                Ok(())
            }
            Err(cause) => {
                Fault::UpstreamConnect.report(&self.ctx.metrics, Some(self.addr), &cause);
                let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::new(cause);
                let until = Instant::now() + self.settings.retry_delay;
                self.down = Some((until, cause.clone()));
                // The core answers requests 503 itself until then.
                self.ctx.metrics.note_stream_upstream_down(until.into_std());
                Err(unreachable(cause))
            }
        }
    }

    /// Connect (bounded by the connect timeout and shutdown), run the TLS
    /// handshake of a `tls:` upstream (bounded by the handshake timeout),
    /// and start serving the connection.
    async fn connect(&self) -> Result<Spawned, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let connecting = tokio::time::timeout(timeout, TcpStream::connect(self.addr));
        let tcp = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "shutting down").into());
            }
            connected = connecting => match connected {
                Ok(connected) => connected?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {} ms", timeout.as_millis()),
                    )
                    .into());
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnectionInfo {
            transport: self.transport,
            peer: self.addr,
            local: LocalAddr(self.local),
            leg: Leg::FromRegistrar,
        };
        let Some(client) = &self.tls else {
            return Ok(stream::spawn(tcp, info, &self.ctx));
        };
        let deadline = Instant::now() + self.settings.handshake_timeout;
        let metrics = &self.ctx.metrics;
        let handshake = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "shutting down").into());
            }
            handshake = client.connect(tcp, deadline) => handshake,
        };
        match handshake {
            Ok(tls) => {
                metrics.count_tls_handshake(TlsSide::Upstream);
                info!(
                    upstream = %self.addr,
                    server_name = %client.server_name(),
                    version = tls.ssl().version_str(),
                    "TLS session with the upstream"
                );
                Ok(stream::spawn(tls, info, &self.ctx))
            }
            Err(e) => {
                metrics.count_tls_handshake_failure(TlsSide::Upstream, e.reason());
                Err(e.into())
            }
        }
    }
}

/// An upstream that receives requests and sends nothing back for this
/// long is reported silent.
pub const SILENCE: Duration = Duration::from_secs(10);

/// The watch on the upstream's silence. A UDP registrar that is down
/// answers nothing (an ICMP error, where one comes back, is counted by the
/// UDP receive loop as `upstream_unreachable`); a stream registrar that
/// stalls keeps its connection and answers nothing either. So requests
/// relayed to it with no message from it for [`SILENCE`] are counted
/// (`sipadmit_upstream_silent_requests_total`) and warned about, at most
/// once per [`SILENCE`]; over UDP its unanswered OPTIONS probes make a
/// silence too, but are not counted or warned about again. `/readyz` then
/// fails until it sends a message (with the probes off, for
/// [`UPSTREAM_FAILURE_WINDOW`](crate::proxy::health::UPSTREAM_FAILURE_WINDOW)
/// after the silence was last noted). A silent UDP registrar also counts as unreachable
/// (its requests are answered 503 at once while the probes are on); a
/// silent stream registrar does not: its link still delivers, and what it
/// queued is answered once the registrar wakes.
///
/// Shared by every worker's dispatcher (a request relayed by one worker is
/// answered on another's socket), so it is atomics, no lock: each message
/// to or from the registrar costs one or two atomic operations.
#[derive(Debug)]
pub struct UpstreamWatch {
    /// The upstream is a stream (TCP/TLS) registrar.
    stream: bool,
    /// What the instants below count from.
    epoch: std::time::Instant,
    /// When the first request relayed since the upstream was last heard
    /// from went out, in nanoseconds since `epoch` plus one; 0: none.
    unanswered_since: AtomicU64,
    /// Requests relayed since then and not yet counted as silent.
    pending: AtomicU64,
    /// Probes (`OPTIONS` to a UDP registrar, which must answer them) sent
    /// since then and not yet counted as silent: they make a silence as
    /// requests do, but are not counted or told as requests.
    probes: AtomicU64,
    /// A silence was reported and has not ended.
    silent: AtomicBool,
    /// Requests (not only probes) went unanswered in this silence.
    requests_unanswered: AtomicBool,
    /// When the first request or probe of the silence noted went out, as
    /// `unanswered_since`; 0: no silence noted.
    silence_began: AtomicU64,
}

impl UpstreamWatch {
    /// The watch on an upstream over `transport`.
    pub fn new(transport: Transport) -> Self {
        Self {
            stream: transport.is_stream(),
            epoch: std::time::Instant::now(),
            unanswered_since: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            requests_unanswered: AtomicBool::new(false),
            silence_began: AtomicU64::new(0),
        }
    }

    /// A request was sent to the upstream at `now`.
    pub fn relayed(&self, now: std::time::Instant) {
        self.awaits_answer(now);
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// A probe was sent to a UDP upstream at `now`.
    pub fn probed(&self, now: std::time::Instant) {
        self.awaits_answer(now);
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    /// The instant a stored time (nanoseconds since `epoch` plus one) stands for.
    fn instant(&self, stored: u64) -> std::time::Instant {
        self.epoch + Duration::from_nanos(stored - 1)
    }

    fn awaits_answer(&self, now: std::time::Instant) {
        if self.unanswered_since.load(Ordering::Relaxed) == 0 {
            let at = now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
            let _ =
                self.unanswered_since
                    .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Forget what was sent and not answered.
    fn forget_unanswered(&self) {
        // On the path of every message from the upstream: each field is
        // loaded, and stored only when set (the last three only in a
        // silence).
        let clear = |field: &AtomicU64| {
            if field.load(Ordering::Relaxed) != 0 {
                field.store(0, Ordering::Relaxed);
            }
        };
        clear(&self.unanswered_since);
        clear(&self.pending);
        clear(&self.probes);
        clear(&self.silence_began);
        if self.requests_unanswered.load(Ordering::Relaxed) {
            self.requests_unanswered.store(false, Ordering::Relaxed);
        }
    }

    /// A message arrived from the upstream: it answers, and `/readyz` no
    /// longer reports it unreachable (silent, or ICMP errors).
    pub fn heard(&self, metrics: &crate::observe::metrics::Metrics) {
        if self.silent.load(Ordering::Relaxed) && self.silent.swap(false, Ordering::Relaxed) {
            info!("the upstream answers again");
        }
        if self.stream {
            metrics.note_stream_upstream_heard();
        } else {
            metrics.note_udp_upstream_heard();
        }
        self.forget_unanswered();
    }

    /// A connection to the stream upstream closed, and the requests it left
    /// unanswered are answered 503: they no longer count towards a silence
    /// (with the probes off, `/readyz` stayed failed after such a close
    /// until a client's request happened to be answered).
    /// A silence already reported ends with them.
    pub fn connection_closed(&self, metrics: &crate::observe::metrics::Metrics) {
        if self.silent.swap(false, Ordering::Relaxed) {
            metrics.note_stream_upstream_heard();
        }
        self.forget_unanswered();
    }

    /// Whether the upstream has been silent for [`SILENCE`] with requests
    /// (or probes) sent to it: counts the requests and warns (called every
    /// [`SILENCE`]). The silence is noted for `/readyz` when it begins and
    /// again only with new requests or probes gone unanswered, so its
    /// reason and time tell the last evidence (not every 10 s of a
    /// registrar that refuses connections and gets none).
    pub fn check(
        &self,
        now: std::time::Instant,
        metrics: &crate::observe::metrics::Metrics,
    ) -> bool {
        let silent = self.silent.load(Ordering::Relaxed);
        let since = match self.unanswered_since.load(Ordering::Relaxed) {
            0 => {
                // A request counted just as a silence was noted (on another
                // worker) is timed from now.
                if self.pending.load(Ordering::Relaxed) + self.probes.load(Ordering::Relaxed) > 0 {
                    self.awaits_answer(now);
                }
                return silent;
            }
            at => at,
        };
        if now.saturating_duration_since(self.instant(since)) < SILENCE {
            return silent;
        }
        // What is sent from now on is timed anew, from the first request
        // or probe after this check (a registrar back since the last
        // evidence gets its chance); the silence as a whole is timed from
        // its first request or probe.
        self.unanswered_since.store(0, Ordering::Relaxed);
        let requests = self.pending.swap(0, Ordering::Relaxed);
        let probes = self.probes.swap(0, Ordering::Relaxed);
        crate::observe::metrics::Metrics::add(&metrics.upstream_silent_requests, requests as usize);
        if requests + probes == 0 {
            // Nothing new (or the upstream was just heard from).
            return silent;
        }
        let began = match self.silence_began.compare_exchange(
            0,
            since,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => since,
            Err(began) => began,
        };
        let silent_for = now.saturating_duration_since(self.instant(began));
        // Told when it begins and with each request gone unanswered since,
        // not for every probe of a registrar that stays down.
        if !silent || requests > 0 {
            tracing::warn!(
                requests,
                probes,
                silent_secs = silent_for.as_secs(),
                total = metrics.upstream_silent_requests.load(Ordering::Relaxed),
                "the upstream sent nothing back: is the registrar down or stalled?"
            );
        }
        if requests > 0 {
            self.requests_unanswered.store(true, Ordering::Relaxed);
        }
        let sent = if self.requests_unanswered.load(Ordering::Relaxed) || probes == 0 {
            "requests relayed to it"
        } else {
            "its OPTIONS probes unanswered"
        };
        let reason = format!(
            "no message from it for {} s with {sent}",
            silent_for.as_secs()
        );
        if self.stream {
            metrics.note_stream_upstream_silent(reason);
        } else {
            metrics.note_udp_upstream_unreachable(reason);
        }
        self.silent.store(true, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(events: mpsc::Sender<Event>) -> Arc<TransportContext> {
        TransportContext::for_tests(events, 16)
    }

    fn outgoing(n: u8) -> Outgoing {
        Outgoing {
            bytes: Bytes::from(vec![n]),
            inbound: Inbound {
                bytes: Bytes::from(vec![n]),
                transport: Transport::Udp,
                source: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                connection: None,
                leg: Leg::FromClient,
            },
        }
    }

    /// A listener on 127.0.0.1 whose accept queue is full (backlog 0, one
    /// connection never accepted): further connects hang (their SYNs are
    /// dropped). Returns it and the connection filling it.
    async fn stalled_listener() -> (tokio::net::TcpListener, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let filler = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener, filler)
    }

    /// The first `n` undelivered events (waiting at most 10 s for them).
    async fn undelivered(events: &mut mpsc::Receiver<Event>, n: usize) -> Vec<(u8, SendError)> {
        let mut got = Vec::new();
        while got.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("an event within 10 s")
                .expect("the link is running");
            match event {
                Event::Undelivered { inbound, error } => got.push((inbound.bytes[0], error)),
                other => panic!("unexpected event {other:?}"),
            }
        }
        got
    }

    #[test]
    fn a_silent_udp_upstream_is_counted_and_an_answer_ends_it() {
        let metrics = crate::observe::metrics::Metrics::default();
        let watch = UpstreamWatch::new(Transport::Udp);
        let t0 = std::time::Instant::now();
        assert!(!watch.check(t0 + SILENCE, &metrics), "nothing relayed");
        watch.relayed(t0);
        watch.relayed(t0);
        assert!(
            !watch.check(t0 + SILENCE / 2, &metrics),
            "not silent long enough"
        );
        assert!(watch.check(t0 + SILENCE, &metrics));
        let silent = || {
            metrics
                .upstream_silent_requests
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(silent(), 2);
        watch.relayed(t0 + SILENCE);
        assert!(watch.check(t0 + 2 * SILENCE, &metrics), "still silent");
        assert_eq!(silent(), 3, "each request counted once");
        assert!(metrics.udp_upstream_unreachable().is_some(), "for /readyz");
        watch.heard(&metrics);
        assert!(metrics.udp_upstream_unreachable().is_none());
        assert!(!watch.check(t0 + 3 * SILENCE, &metrics));
    }

    #[test]
    fn a_silence_is_told_again_only_with_new_requests_unanswered() {
        let metrics = crate::observe::metrics::Metrics::default();
        let watch = UpstreamWatch::new(Transport::Tcp);
        let t0 = std::time::Instant::now();
        let ((), text) = crate::captured_log::captured_log(tracing::Level::INFO, || {
            watch.relayed(t0);
            assert!(watch.check(t0 + SILENCE, &metrics));
            // A registrar that refuses connections: no request relayed.
            assert!(watch.check(t0 + 2 * SILENCE, &metrics), "still silent");
            assert!(watch.check(t0 + 3 * SILENCE, &metrics), "still silent");
            watch.relayed(t0 + 3 * SILENCE);
            assert!(watch.check(t0 + 4 * SILENCE, &metrics));
        });
        let told: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("the upstream sent nothing back"))
            .collect();
        assert_eq!(told.len(), 2, "{text}");
        assert!(told.iter().all(|l| l.contains("requests=1")), "{text}");
    }

    #[test]
    fn unanswered_probes_make_a_silence_but_are_not_counted_as_requests() {
        let metrics = crate::observe::metrics::Metrics::default();
        let watch = UpstreamWatch::new(Transport::Udp);
        let t0 = std::time::Instant::now();
        watch.probed(t0);
        assert!(watch.check(t0 + SILENCE, &metrics));
        let silent_requests = || {
            metrics
                .upstream_silent_requests
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(silent_requests(), 0, "a probe is not a request");
        let first = metrics.udp_upstream_unreachable().expect("for /readyz");
        assert_eq!(
            first.error,
            "no message from it for 10 s with its OPTIONS probes unanswered"
        );
        // Nothing new sent: the silence holds, but its evidence is not
        // told again as if new (its time and reason stay).
        assert!(watch.check(t0 + 2 * SILENCE, &metrics));
        assert_eq!(metrics.udp_upstream_unreachable().unwrap().at, first.at);
        // A request gone unanswered is new evidence.
        watch.relayed(t0 + 2 * SILENCE);
        assert!(watch.check(t0 + 3 * SILENCE, &metrics));
        assert_eq!(silent_requests(), 1);
        assert_eq!(
            metrics.udp_upstream_unreachable().unwrap().error,
            "no message from it for 30 s with requests relayed to it"
        );
        // A request sent just before a check is not judged by it: it gets
        // its own SILENCE.
        watch.relayed(t0 + 4 * SILENCE - Duration::from_millis(1));
        let noted = metrics.udp_upstream_unreachable().unwrap().at;
        assert!(watch.check(t0 + 4 * SILENCE, &metrics), "still silent");
        assert_eq!(metrics.udp_upstream_unreachable().unwrap().at, noted);
        assert_eq!(silent_requests(), 1, "not yet counted");
        assert!(watch.check(t0 + 5 * SILENCE, &metrics));
        assert_eq!(silent_requests(), 2);
        // Probes alone after it: the silence still had requests in it.
        watch.probed(t0 + 5 * SILENCE);
        assert!(watch.check(t0 + 6 * SILENCE, &metrics));
        assert_eq!(
            metrics.udp_upstream_unreachable().unwrap().error,
            "no message from it for 60 s with requests relayed to it"
        );
        // An answer ends it all.
        watch.heard(&metrics);
        assert!(metrics.udp_upstream_unreachable().is_none());
        assert!(!watch.check(t0 + 7 * SILENCE, &metrics));
        watch.probed(t0 + 7 * SILENCE);
        assert!(watch.check(t0 + 8 * SILENCE, &metrics));
        assert_eq!(
            metrics.udp_upstream_unreachable().unwrap().error,
            "no message from it for 10 s with its OPTIONS probes unanswered"
        );
    }

    #[test]
    fn a_stalled_stream_upstream_is_silent_for_readyz_but_not_refused() {
        let metrics = crate::observe::metrics::Metrics::default();
        let watch = UpstreamWatch::new(Transport::Tcp);
        let t0 = std::time::Instant::now();
        watch.relayed(t0);
        assert!(watch.check(t0 + SILENCE, &metrics));
        let silent = metrics.stream_upstream_silent().expect("for /readyz");
        assert!(
            silent.error.contains("no message from it for 10 s"),
            "{}",
            silent.error
        );
        assert!(!metrics.udp_upstream_down(), "its link still delivers");
        watch.heard(&metrics);
        assert!(metrics.stream_upstream_silent().is_none());

        // A connection that closes with requests unanswered (answered 503
        // by sipadmit) ends the silence it caused and forgets its requests.
        watch.relayed(t0 + SILENCE);
        assert!(watch.check(t0 + SILENCE * 2, &metrics));
        assert!(metrics.stream_upstream_silent().is_some());
        watch.connection_closed(&metrics);
        assert!(metrics.stream_upstream_silent().is_none());
        assert!(!watch.check(t0 + SILENCE * 4, &metrics), "nothing pending");
    }

    fn spawn_link(
        addr: SocketAddr,
        settings: LinkSettings,
        budget: usize,
        ctx: &Arc<TransportContext>,
    ) -> UpstreamLink {
        let local = "127.0.0.1:5060".parse().unwrap();
        let budget = Arc::new(UpstreamBacklog::new(budget));
        UpstreamLink::spawn(
            Transport::Tcp,
            addr,
            local,
            None,
            settings,
            budget,
            ctx.clone(),
        )
    }

    /// A TCP listener standing for the registrar, and a link to it with
    /// the default settings: the listener, its address, the transports'
    /// context, the events the link reports, the link.
    async fn link_to_a_listener() -> (
        tokio::net::TcpListener,
        SocketAddr,
        Arc<TransportContext>,
        mpsc::Receiver<Event>,
        UpstreamLink,
    ) {
        let registrar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = registrar.local_addr().unwrap();
        let (tx, events) = mpsc::channel(16);
        let ctx = context(tx);
        let link = spawn_link(addr, LinkSettings::DEFAULT, 1 << 20, &ctx);
        (registrar, addr, ctx, events, link)
    }

    /// A request the core would relay: a REGISTER with branch
    /// `z9hG4bK{n}` in sipadmit's Via, for the client's request `[n]`.
    fn request(n: u8) -> Outgoing {
        let mut request = outgoing(n);
        request.bytes = Bytes::from(format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{n}\r\n\
             CSeq: {n} REGISTER\r\nContent-Length: 0\r\n\r\n"
        ));
        request
    }

    /// The registrar's answer `status` to `request(n)`.
    fn answer(status: u16, n: u8) -> Vec<u8> {
        format!(
            "SIP/2.0 {status} Whatever\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{n}\r\n\
             CSeq: {n} REGISTER\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// As the registrar on `conn`: read one request the link wrote (up to
    /// its blank line). Returns its CSeq number.
    async fn read_request(conn: &mut TcpStream) -> u8 {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(conn, &mut byte)
                .await
                .unwrap();
            request.push(byte[0]);
        }
        let request = String::from_utf8(request).unwrap();
        let cseq = request.split("CSeq: ").nth(1).expect("a CSeq");
        cseq.split(' ').next().unwrap().parse().unwrap()
    }

    /// As the registrar on `conn`: send `message` and see it reach the
    /// dispatcher.
    async fn send(conn: &mut TcpStream, message: &[u8], events: &mut mpsc::Receiver<Event>) {
        tokio::io::AsyncWriteExt::write_all(conn, message)
            .await
            .unwrap();
        assert!(matches!(events.recv().await, Some(Event::Received(_))));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_stalled_connect_returns_what_waited() {
        let (listener, _filler) = stalled_listener().await;
        let addr = listener.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let settings = LinkSettings {
            connect_timeout: Duration::from_millis(300),
            retry_delay: Duration::from_secs(60),
            ..LinkSettings::DEFAULT
        };
        // Two bytes of queue; each message is one byte.
        let link = spawn_link(addr, settings, 2, &ctx);
        // The first is taken by the task (its bytes leave the queue), which
        // starts connecting ...
        link.offer(outgoing(1)).unwrap();
        let mut taken = false;
        for _ in 0..1000 {
            if link.backlog.queued() == 0 {
                taken = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(taken, "the link task took the first message");
        // ... the next two wait in the queue, the fourth finds it full.
        link.offer(outgoing(2)).unwrap();
        link.offer(outgoing(3)).unwrap();
        assert_eq!(link.backlog.queued(), 2);
        assert!(matches!(
            link.offer(outgoing(4)),
            Err(SendError::UpstreamQueueFull(a)) if a == addr
        ));
        // The connect times out: all three come back, in order, as undelivered.
        let got = undelivered(&mut events, 3).await;
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
        for (_, error) in &got {
            assert!(
                matches!(error, SendError::UpstreamUnreachable { cause, .. } if cause.to_string().contains("no connection within 300 ms")),
                "{error}"
            );
        }
        assert_eq!(ctx.metrics.faults(Fault::UpstreamConnect), 1);
        assert_eq!(link.backlog.queued(), 0);
        ctx.shutdown.cancel();
    }

    /// A client message of this size as received counts `n` bytes.
    fn received(n: usize) -> usize {
        n - EDIT_ALLOWANCE
    }

    async fn let_through(task: tokio::task::JoinHandle<UpstreamRoom>) -> UpstreamRoom {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("let through")
            .unwrap()
    }

    fn wait_for_room(
        budget: &Arc<UpstreamBacklog>,
        n: usize,
    ) -> tokio::task::JoinHandle<UpstreamRoom> {
        let budget = budget.clone();
        tokio::spawn(async move { budget.room_for_clients(received(n)).await })
    }

    async fn still_waits(task: &tokio::task::JoinHandle<UpstreamRoom>) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn client_readers_wait_while_less_than_a_quarter_of_the_queue_is_free() {
        let budget = Arc::new(UpstreamBacklog::new(10_000));
        assert!(budget.try_add(7000));
        // 7000 + 1100 + 2500 (the reserve) > 10000: a client message waits ...
        let waiting = wait_for_room(&budget, 1100);
        still_waits(&waiting).await;
        // ... while what cannot wait still fits, up to the bound.
        assert!(budget.try_add(3000));
        assert!(!budget.try_add(1), "full");
        // The link takes messages: room again.
        budget.remove(7000);
        let_through(waiting).await;
    }

    #[tokio::test]
    async fn client_messages_let_through_count_until_the_dispatcher_takes_them() {
        let budget = Arc::new(UpstreamBacklog::new(10_000));
        // Nothing queued yet: two of 3000 bytes fit beside the reserve ...
        let first = let_through(wait_for_room(&budget, 3000)).await;
        let _second = let_through(wait_for_room(&budget, 3000)).await;
        // ... a third would leave less than a quarter free once all three
        // are queued: it waits, though nothing is queued yet.
        let third = wait_for_room(&budget, 3000);
        still_waits(&third).await;
        // The dispatcher took the first and answered it itself: room again.
        drop(first);
        let_through(third).await;
    }

    #[tokio::test]
    async fn waiting_client_messages_go_in_turn_a_large_one_when_it_fits() {
        let budget = Arc::new(UpstreamBacklog::new(10_000));
        assert!(budget.try_add(2500));
        // 8000 + 2500 (the reserve) never fits: it waits for room for
        // itself alone (2500 + 8000 > 10000) ...
        let large = wait_for_room(&budget, 8000);
        still_waits(&large).await;
        // ... and a small one that would fit waits its turn behind it
        // (steady small traffic must not starve it) ...
        let small = wait_for_room(&budget, 1100);
        still_waits(&small).await;
        // ... it goes once it fits, instead of waiting for an empty queue,
        budget.remove(500);
        let room = let_through(large).await;
        still_waits(&small).await;
        // and the small one after it, once the room is there.
        drop(room);
        assert!(budget.try_add(8000));
        still_waits(&small).await;
        budget.remove(8000);
        let_through(small).await;
        // One larger than the whole queue goes at once (to be answered 503).
        tokio::time::timeout(Duration::from_secs(5), budget.room_for_clients(20_000))
            .await
            .expect("at once");
    }

    #[tokio::test]
    async fn requests_on_a_connection_closed_before_any_answer_are_failed_at_once() {
        let (registrar, addr, ctx, mut events, link) = link_to_a_listener().await;
        // A request and a response (nobody to answer) are written; the
        // registrar reads them and closes without a word (as one refusing
        // sipadmit's certificate after a TLS 1.3 handshake does).
        link.offer(request(1)).unwrap();
        let mut response = outgoing(2);
        response.inbound.bytes = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        link.offer(response).unwrap();
        let (mut conn, _) = registrar.accept().await.unwrap();
        assert_eq!(read_request(&mut conn).await, 1);
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut byte)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        drop(conn);
        let failed = undelivered(&mut events, 1).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed at once, not after a client timeout"
        );
        assert_eq!(failed[0].0, 1, "the request, not the response");
        assert!(matches!(
            failed[0].1,
            SendError::UpstreamClosedUnanswered(a) if a == addr
        ));
        // The next request opens a new connection, which answers it:
        // closing it after that fails nothing.
        link.offer(request(3)).unwrap();
        let (mut second, _) = registrar.accept().await.unwrap();
        assert_eq!(read_request(&mut second).await, 3);
        send(&mut second, &answer(200, 3), &mut events).await;
        drop(second);
        let quiet = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        assert!(quiet.is_err(), "nothing failed: {quiet:?}");
        ctx.shutdown.cancel();
    }

    /// A drain that runs out: the requests the registrar left unanswered
    /// go back to the dispatcher once, as given up.
    #[tokio::test]
    async fn a_drain_sees_what_is_unanswered_and_its_give_up_hands_it_back_once() {
        let (registrar, addr, ctx, mut events, link) = link_to_a_listener().await;
        for n in 1..=3 {
            link.offer(request(n)).unwrap();
        }
        let (mut conn, _) = registrar.accept().await.unwrap();
        for n in 1..=3 {
            assert_eq!(read_request(&mut conn).await, n);
        }
        send(&mut conn, &answer(200, 2), &mut events).await;
        // The link looks at the answers while it remembers requests: the
        // answered one stops counting without another request written.
        let backlog = link.backlog.clone();
        let until = Instant::now() + Duration::from_secs(5);
        while backlog.unanswered() != 2 {
            assert!(Instant::now() < until, "{}", backlog.unanswered());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        backlog.give_up();
        let given_up = undelivered(&mut events, 2).await;
        assert_eq!(given_up.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3]);
        assert!(given_up
            .iter()
            .all(|(_, e)| matches!(e, SendError::UpstreamGivenUp(a) if *a == addr)));
        assert_eq!(backlog.unanswered(), 0);
        // The dispatcher has yet to answer them: the drain waits for that.
        assert_eq!(backlog.given_up_unanswered(), 2);
        backlog.given_up_answered();
        backlog.given_up_answered();
        assert_eq!(backlog.given_up_unanswered(), 0);
        // Given up once: the connection closing later fails nothing more.
        drop(conn);
        let quiet = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        assert!(quiet.is_err(), "nothing failed twice: {quiet:?}");
        ctx.shutdown.cancel();
    }

    /// A drain that runs out while the link waits to write to a registrar
    /// that stopped reading: the give-up is not held up by the write's
    /// timeout, and hands back, once each, what was written unanswered and
    /// what was still queued for the registrar.
    #[tokio::test]
    async fn a_give_up_while_a_write_waits_hands_back_the_written_and_the_queued() {
        // The registrar's receive buffer is fixed small (no autotuning), so
        // what the sockets hold stays far below what is written.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let registrar = socket.listen(16).unwrap();
        let addr = registrar.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let link = spawn_link(addr, LinkSettings::DEFAULT, 64 << 20, &ctx);
        // Requests of 128 KiB each, 32 MiB in all: more than the sending
        // socket's largest buffer and the writer queue's 1 MiB hold. The
        // registrar accepts and never reads.
        const REQUESTS: u8 = 255;
        let padding = "x".repeat(128 * 1024);
        for n in 1..=REQUESTS {
            let mut big = request(n);
            let text = std::str::from_utf8(&big.bytes).unwrap().to_owned();
            big.bytes = Bytes::from(text.replace("CSeq:", &format!("X-Pad: {padding}\r\nCSeq:")));
            link.offer(big).unwrap();
        }
        let (_conn, _) = registrar.accept().await.unwrap();
        // The link stops taking from its queue: a write waits for room.
        let backlog = link.backlog.clone();
        let mut last = backlog.queued();
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = backlog.queued();
            if now == last && now > 0 {
                break;
            }
            assert!(Instant::now() < until, "the link kept writing: {now}");
            last = now;
        }
        assert!(backlog.unanswered() > 0, "some were written");
        let started = std::time::Instant::now();
        backlog.give_up();
        let back = undelivered(&mut events, usize::from(REQUESTS)).await;
        assert!(
            started.elapsed() < stream::WRITE_TIMEOUT / 2,
            "not held up by the waiting write: {:?}",
            started.elapsed()
        );
        let mut numbers: Vec<u8> = back.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=REQUESTS).collect::<Vec<_>>(), "each once");
        let given_up = back
            .iter()
            .filter(|(_, e)| matches!(e, SendError::UpstreamGivenUp(a) if *a == addr))
            .count();
        // The write that waited may find the writer queue full instead.
        assert!(given_up + 1 >= usize::from(REQUESTS), "{back:?}");
        assert_eq!((backlog.unanswered(), backlog.queued()), (0, 0));
        ctx.shutdown.cancel();
    }

    /// At a drain's end, a response or an ACK still queued for the
    /// registrar (a callee's 200) is written, not given up; a request
    /// still queued is given up (408); and what a connection that closes
    /// afterwards leaves unanswered is given up too, not failed with 503.
    #[tokio::test]
    async fn a_give_up_writes_the_queued_responses_and_gives_up_the_queued_requests() {
        let registrar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = registrar.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let mut task = LinkTask {
            transport: Transport::Tcp,
            tls: None,
            addr,
            local: "127.0.0.1:5060".parse().unwrap(),
            settings: LinkSettings::DEFAULT,
            backlog: Arc::new(UpstreamBacklog::new(1 << 20)),
            ctx: ctx.clone(),
            connection: None,
            down: None,
            give_up_due: false,
            gave_up: false,
        };
        assert!(task.deliver(request(1)).await);
        let (mut conn, _) = registrar.accept().await.unwrap();
        assert_eq!(read_request(&mut conn).await, 1);
        let (queue, mut waiting) = mpsc::unbounded_channel();
        let mut callee_200 = outgoing(2);
        callee_200.bytes = Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKk\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        );
        callee_200.inbound.bytes = callee_200.bytes.clone();
        queue.send(callee_200).unwrap();
        queue.send(request(3)).unwrap();
        assert!(task.give_up(&mut waiting).await);
        // Request 1 (written, unanswered) and 3 (queued) are given up.
        let back = undelivered(&mut events, 2).await;
        assert_eq!(back.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3]);
        assert!(back
            .iter()
            .all(|(_, e)| matches!(e, SendError::UpstreamGivenUp(_))));
        // The 200 went to the registrar.
        let mut written = vec![0u8; 4096];
        let read = tokio::io::AsyncReadExt::read(&mut conn, &mut written);
        let n = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        assert!(
            written[..n].starts_with(b"SIP/2.0 200 OK"),
            "{:?}",
            &written[..n]
        );
        // A request written after (in dialog) and left unanswered by a
        // connection that closes: given up, not failed with 503.
        assert!(task.deliver(request(4)).await);
        assert_eq!(read_request(&mut conn).await, 4);
        drop(conn);
        assert!(task.connection_ended().await);
        let back = undelivered(&mut events, 1).await;
        assert!(
            matches!(back[..], [(4, SendError::UpstreamGivenUp(_))]),
            "{back:?}"
        );
        ctx.shutdown.cancel();
    }

    /// A registrar that answers some requests and then closes the
    /// connection (as Kamailio does on a request it cannot read, or when
    /// it is killed under load): every request it wrote no final answer
    /// to is failed at once, not left without an answer (a client on TCP
    /// or TLS never retransmits), whatever it answered after it.
    #[tokio::test]
    async fn requests_without_a_final_answer_are_failed_when_the_connection_closes() {
        let (registrar, addr, ctx, mut events, link) = link_to_a_listener().await;
        for n in 1..=4 {
            link.offer(request(n)).unwrap();
        }
        let (mut conn, _) = registrar.accept().await.unwrap();
        for n in 1..=4 {
            assert_eq!(read_request(&mut conn).await, n);
        }
        // The second and the fourth are answered, the third only
        // provisionally; the first not at all.
        send(&mut conn, &answer(200, 2), &mut events).await;
        send(&mut conn, &answer(100, 3), &mut events).await;
        send(&mut conn, &answer(401, 4), &mut events).await;
        // A fifth request and an ACK (never answered); the registrar reads
        // them and closes.
        link.offer(request(5)).unwrap();
        let mut ack = request(6);
        ack.bytes = Bytes::from_static(
            b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK6\r\n\
              CSeq: 6 ACK\r\n\r\n",
        );
        link.offer(ack).unwrap();
        // And sipadmit's own probe, which no client waits for.
        let mut probe = request(7);
        probe.inbound.leg = Leg::FromRegistrar;
        link.offer(probe).unwrap();
        for n in 5..=7 {
            assert_eq!(read_request(&mut conn).await, n);
        }
        drop(conn);
        let failed = undelivered(&mut events, 3).await;
        assert_eq!(
            failed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1, 3, 5],
            "the requests with no final answer, in the order written"
        );
        assert!(failed
            .iter()
            .all(|(_, e)| matches!(e, SendError::UpstreamClosedUnanswered(a) if *a == addr)));
        let quiet = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        assert!(quiet.is_err(), "neither the ACK nor the probe: {quiet:?}");
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn the_link_connects_writes_and_reconnects_after_the_upstream_closes() {
        let registrar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = registrar.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let local = "127.0.0.1:5060".parse().unwrap();
        let link = spawn_link(addr, LinkSettings::DEFAULT, 1 << 20, &ctx);
        let read_one = |mut conn: TcpStream| async move {
            use tokio::io::AsyncReadExt;
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            (conn, byte[0])
        };
        // An earlier failure (what `/readyz` reports) is forgotten once the
        // link delivers.
        ctx.metrics
            .count_upstream_send_failure(Transport::Tcp, "earlier".into());
        link.offer(outgoing(7)).unwrap();
        let (first, _) = registrar.accept().await.unwrap();
        let (first, byte) = read_one(first).await;
        assert_eq!(byte, 7);
        assert!(ctx.metrics.upstream_failure().is_none());
        // What the registrar sends on the link is the registrar's.
        {
            use tokio::io::AsyncWriteExt;
            let mut first = first;
            first
                .write_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let Some(Event::Received(m)) = events.recv().await else {
                panic!("no message")
            };
            assert!(m.from_registrar() && m.connection.is_some() && m.source.0 == addr);
            assert_eq!(m.local, local);
            // The registrar closes; the next message opens a new connection.
            drop(first);
        }
        for _ in 0..1000 {
            if ctx.connections.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.offer(outgoing(8)).unwrap();
        let (second, _) = registrar.accept().await.unwrap();
        let (_second, byte) = read_one(second).await;
        assert_eq!(byte, 8);
        assert_eq!(ctx.metrics.faults(Fault::UpstreamConnect), 0);
        ctx.shutdown.cancel();
    }
}
