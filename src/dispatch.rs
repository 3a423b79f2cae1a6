//! The dispatcher: the one loop that takes what the transports received
//! ([`Event`]s: its worker's datagrams straight from the sockets through
//! [`Datagrams`], what the stream connections read through a queue), has
//! the core decide ([`Core::handle_banning`] and the
//! other entry points), and carries the outcome out (records to the
//! decision log, messages to the senders, never waiting for a connection).
//! It also drives what the core's timers ask for (the client transactions'
//! retransmissions and 408s), the OPTIONS probes of the registrar, and the
//! per-second housekeeping of rate limits and summaries. Slow chores (the
//! registration sweep, the kernel's UDP drop counters in `/proc`) run on
//! tasks of their own, off the message path ([`spawn_chores`]).
//!
//! One [`Dispatcher`] owns its state: built once per worker, it shares the
//! [`Core`] (whose tables are concurrent) and the senders with the others.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::observe::metrics::{DropReason, MessageKind, Metrics};
use crate::observe::DecisionLog;
use crate::proxy::transactions::Treatment;
use crate::proxy::{Core, Destination, FlowFailure, Inbound, Outbound, Outcome};
use crate::sip::framing::has_sip_start_line;
use crate::transport::admission::{Admission, BanCause, BanScope};
use crate::transport::udp::{self, Datagrams};
use crate::transport::upstream::UpstreamWatch;
use crate::transport::{BootId, Event, Fault, SendError, Senders, Transport, UpstreamSender};
use crate::vocabulary::{starts_as_response, Leg, LocalAddr, PeerAddr};

/// Events handled in a row when more are queued, before the timers and
/// the shutdown signal get their turn.
const EVENT_BATCH: usize = 32;

/// How often expired registrations are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How often bans, rate-limit state and log summaries are looked after.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often the kernel's UDP drop counters are read.
const KERNEL_DROPS_INTERVAL: Duration = Duration::from_secs(10);

/// One dispatcher: the core it asks, where it sends, where records go, and
/// its own timers and edge state.
pub struct Dispatcher {
    core: Arc<Core>,
    senders: Senders,
    log: DecisionLog,
    edge: Edge,
    probes: Probes,
    /// This dispatcher looks after the rate limits, bans and summaries
    /// every second (the first worker's; its siblings' do not).
    housekeeping: bool,
    /// The worker it dispatches for (0: the first).
    worker: usize,
}

impl Dispatcher {
    /// A dispatcher over `core`, sending through `senders`, recording to
    /// `log`, banning through `admission`; with `probes` (every, the
    /// registrar, the local address its link counts as), it sends the
    /// registrar an OPTIONS at that interval.
    pub fn new(
        core: Arc<Core>,
        senders: Senders,
        log: DecisionLog,
        admission: Arc<Admission>,
        probes: Option<(Duration, crate::config::Endpoint, std::net::SocketAddr)>,
    ) -> Self {
        let upstream_watch = Arc::new(UpstreamWatch::new(senders.upstream.transport()));
        let probe_inbound = probes.map(|(_, upstream, local)| Inbound {
            bytes: bytes::Bytes::new(),
            transport: upstream.transport,
            source: PeerAddr(upstream.addr),
            local: LocalAddr(local),
            connection: None,
            leg: Leg::FromRegistrar,
        });
        Self {
            core,
            senders,
            log,
            edge: Edge {
                admission,
                upstream_watch,
                ticks: 0,
            },
            probes: Probes {
                every: probes.map(|(every, _, _)| tokio::time::interval(every)),
                sent: 0,
                inbound: probe_inbound,
            },
            housekeeping: true,
            worker: 0,
        }
    }

    /// A dispatcher for another worker: it shares this one's core,
    /// senders (until [`Dispatcher::sending_datagrams_from`] gives it its
    /// worker's UDP sockets), decision log, admission and watch on the
    /// upstream, and handles its worker's events and the client
    /// transactions' timers; the probes and the housekeeping stay with
    /// this one.
    pub fn sibling(&self, worker: usize) -> Self {
        Self {
            core: self.core.clone(),
            senders: self.senders.clone(),
            log: self.log.clone(),
            edge: Edge {
                admission: self.edge.admission.clone(),
                upstream_watch: self.edge.upstream_watch.clone(),
                ticks: 0,
            },
            probes: Probes {
                every: None,
                sent: 0,
                inbound: None,
            },
            housekeeping: false,
            worker,
        }
    }

    /// This dispatcher sends datagrams from `udp` (its worker's sockets).
    pub fn sending_datagrams_from(mut self, udp: Vec<crate::transport::UdpListener>) -> Self {
        self.senders.udp = udp;
        self
    }

    /// Handle the worker's `datagrams` and `events` until `shutdown` (or
    /// until every transport is gone).
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut datagrams: Datagrams,
        shutdown: CancellationToken,
    ) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let Self {
            core,
            senders,
            log,
            edge,
            probes,
            housekeeping: keeps_house,
            worker,
        } = &mut self;
        let worker = *worker;
        // Made once, not once per turn of the loop: a fresh `cancelled()`
        // registers a waiter and a fresh sleep a timer entry every time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut retransmit_timer = RetransmitTimer::new();
        loop {
            retransmit_timer.arm(core.client_transactions().next_due());
            tokio::select! {
                () = &mut cancelled => break,
                () = retransmit_timer.fired() => retransmit(core, senders, log).await,
                () = probes.due() => probes.send(core, senders, log, edge).await,
                _ = housekeeping.tick() => {
                    let now = Instant::now();
                    // Every worker's: a freeze is no beat from any.
                    edge.admission.heartbeat(now);
                    if *keeps_house {
                        edge.housekeeping(core, now);
                        log.warn_of_drops(now);
                    }
                }
                event = datagrams.next(), if datagrams.is_open() => {
                    let more = || datagrams.try_next();
                    dispatch_in_a_row(core, senders, log, edge, worker, event, more).await;
                }
                event = events.recv() => match event {
                    Some(event) => {
                        let more = || events.try_recv().ok();
                        dispatch_in_a_row(core, senders, log, edge, worker, event, more).await;
                    }
                    None => break,
                },
            }
        }
    }
}

/// Handle `first`, then what `more` has queued already, without going
/// back through the select (at most `EVENT_BATCH` in a row: the timers and
/// the shutdown signal get their turn).
async fn dispatch_in_a_row(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    edge: &mut Edge,
    worker: usize,
    first: Event,
    mut more: impl FnMut() -> Option<Event>,
) {
    let mut next = Some(first);
    let mut handled = 0;
    while let Some(event) = next.take() {
        core.metrics().worker_events.inc(worker);
        dispatch(core, senders, log, edge, event).await;
        handled += 1;
        if handled < EVENT_BATCH {
            next = more();
        }
    }
}

/// Start the chores that must not hold up the dispatcher: the sweep of
/// expired registrations and transactions (every 30 s) and the read of the
/// kernel's UDP drop counters of the UDP sockets of `udp_inodes` (every
/// 10 s; every worker's, see [`udp::socket_inode`]), each off the event
/// loop's thread (`spawn_blocking`). They stop on `shutdown`.
pub fn spawn_chores(core: Arc<Core>, udp_inodes: Vec<u64>, shutdown: CancellationToken) {
    let sweeping = core.clone();
    tokio::spawn(every(SWEEP_INTERVAL, shutdown.clone(), move || {
        let now = Instant::now();
        let removed = sweeping.registrations().sweep(now);
        sweeping.transactions().expire(now);
        if removed > 0 {
            info!(removed, "expired registrations swept");
        }
    }));
    let tally = Arc::new(Mutex::new(udp::KernelDrops::default()));
    tokio::spawn(every(KERNEL_DROPS_INTERVAL, shutdown, move || {
        let Some(now) = udp::kernel_drops(&udp_inodes) else {
            return;
        };
        let new = tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .new_since_last(&now);
        if new > 0 {
            let total = core
                .metrics()
                .udp_kernel_drops
                .fetch_add(new, Ordering::Relaxed)
                + new;
            warn!(
                dropped = new,
                total,
                "the kernel dropped UDP datagrams (receive buffer full): raise limits.udp_receive_buffer_bytes and net.core.rmem_max"
            );
        }
    }));
}

/// Run `chore` on the blocking pool every `interval` (the first after one
/// interval) until `shutdown`.
async fn every<F>(interval: Duration, shutdown: CancellationToken, chore: F)
where
    F: Fn() + Clone + Send + Sync + 'static,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let chore = chore.clone();
                let _ = tokio::task::spawn_blocking(chore).await;
            }
        }
    }
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
    /// noted for `/readyz`, but answered to no one); `None` with probes off.
    inbound: Option<Inbound>,
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
        let (Some(bytes), Some(from)) = (core.probe_request(self.sent), &self.inbound) else {
            return;
        };
        Metrics::inc(&core.metrics().upstream_probes);
        let inbound = Inbound {
            bytes: bytes.clone(),
            ..from.clone()
        };
        mirror_sent(senders, &inbound, &Destination::Upstream, &bytes);
        match senders.send_upstream_probe(bytes, &inbound).await {
            // A UDP registrar must answer the probes (they are how its
            // return is found); a stream registrar need not, so an
            // unanswered probe counts toward its silence only over UDP.
            Ok(()) => {
                if let UpstreamSender::Datagram(_) = senders.upstream {
                    core.metrics().note_upstream_sent();
                    edge.upstream_watch.probed(Instant::now());
                }
            }
            Err(e) => {
                Fault::UpstreamSend.report(core.metrics(), None, &e);
                not_delivered(core, senders, log, &inbound, &Destination::Upstream, &e).await;
            }
        }
    }
}

/// The timer of the next client transaction due: one sleep, moved when
/// the time due changes (not made anew for every event).
struct RetransmitTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When it fires; `None`: nothing due.
    armed: Option<Instant>,
}

impl RetransmitTimer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Fire at `at` (never, with `None`).
    fn arm(&mut self, at: Option<Instant>) {
        if at != self.armed {
            if let Some(at) = at {
                self.sleep.as_mut().reset(at.into());
            }
            self.armed = at;
        }
    }

    /// The time armed has come (pending forever while nothing is armed).
    async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// Carry out what the client transactions' timers ask for: requests sent
/// again over UDP, `408`s to the clients of those that timed out. A
/// request that can no longer be sent because the registrar is known to be
/// unreachable (an ICMP error, or its silence, with probes on) ends its
/// transaction with the `503` a new request would get (RFC 3261 17.1.4),
/// instead of waiting out 64*T1 for a `408`.
async fn retransmit(core: &Core, senders: &Senders, log: &DecisionLog) {
    for (inbound, outcome, key) in core.client_transactions_due(Instant::now()) {
        match (carry_out(core, senders, log, &inbound, outcome).await, key) {
            (Ok(()), _) => {}
            (Err((to, e @ SendError::UpstreamUnreachable { .. })), Some(key)) => {
                Fault::UpstreamSend.report(core.metrics(), None, &e);
                // Answered only while still kept: the registrar's own final
                // answer may have been relayed by another worker since.
                if core.fail_transaction(&key, Instant::now()) {
                    not_delivered(core, senders, log, &inbound, &to, &e).await;
                }
            }
            (Err((_, e)), _) => not_sent(core, None, &e),
        }
    }
}

/// The dispatcher's part of the edge hardening: bans of scanners, the
/// housekeeping of the rate limits and summaries, and the watch on a UDP
/// upstream that stays silent.
struct Edge {
    admission: Arc<Admission>,
    upstream_watch: Arc<UpstreamWatch>,
    /// Housekeeping ticks so far.
    ticks: u64,
}

impl Edge {
    /// Every second: lift bans that ran out, forget idle rate-limit state,
    /// close summary windows; every 10 s: check the upstream's silence.
    fn housekeeping(&mut self, core: &Core, now: Instant) {
        self.ticks += 1;
        self.admission.sweep(now);
        core.close_summaries(now);
        if self.ticks % 10 == 0 {
            self.upstream_watch.check(now, core.metrics());
        }
    }
}

/// Where the message an outcome sends leaves, for what is counted once
/// it is sent.
struct Leaving {
    /// The transport it counts as relayed over (`None`: a local answer,
    /// nothing, or the stream upstream, whose link counts what it writes
    /// itself).
    over: Option<Transport>,
    /// It goes to the upstream.
    upstream: bool,
    /// It goes to the upstream as a datagram.
    upstream_datagram: bool,
}

impl Leaving {
    fn of(senders: &Senders, inbound: &Inbound, outcome: &Outcome) -> Self {
        let datagrams = matches!(senders.upstream, UpstreamSender::Datagram(_));
        let to = match outcome {
            // A response whose outcome is a request: the ACK a copy of a
            // final response sends again, counted by the core as its client
            // transaction's retransmission, not as relayed.
            Outcome::Relay { send, .. }
                if inbound.is_response() && !starts_as_response(&send.bytes) =>
            {
                return Self {
                    over: None,
                    upstream: false,
                    upstream_datagram: datagrams,
                };
            }
            Outcome::Relay { send, .. } => Some(&send.to),
            _ => None,
        };
        let upstream = to == Some(&Destination::Upstream);
        Self {
            over: match to {
                Some(Destination::Flow(flow)) => Some(flow.transport),
                Some(Destination::Upstream) if datagrams => Some(Transport::Udp),
                _ => None,
            },
            upstream,
            upstream_datagram: upstream && datagrams,
        }
    }

    /// Count what was sent from `inbound`; a request to the upstream is
    /// noted for its watch (only a request other than ACK gets something
    /// back). A datagram sent is delivered as far as UDP can tell (the
    /// stream link notes its own deliveries).
    fn sent(&self, core: &Core, watch: &UpstreamWatch, inbound: &Inbound, started: Instant) {
        let kind = MessageKind::of(&inbound.bytes);
        if let Some(transport) = self.over {
            core.metrics().count_relayed(transport, kind);
        }
        if self.upstream_datagram {
            core.metrics().note_upstream_sent();
        }
        let answered = kind == MessageKind::Request && !inbound.bytes.starts_with(b"ACK ");
        if self.upstream && answered {
            watch.relayed(started);
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
    if let Event::Received(inbound)
    | Event::HoldingRoom { inbound, .. }
    | Event::Refused { inbound, .. } = &event
    {
        senders.hep.received(inbound);
    }
    match event {
        Event::Received(inbound) => received(core, senders, log, edge, inbound).await,
        Event::HoldingRoom { inbound, room } => {
            received(core, senders, log, edge, inbound).await;
            // Queued for the registrar now (counted in the queue), or
            // answered here.
            drop(room);
        }
        Event::Refused { inbound, refusal } => {
            let outcome = core.refuse_source(&inbound, Instant::now(), refusal);
            if let Err((_, e)) = carry_out(core, senders, log, &inbound, outcome).await {
                not_sent(core, Some(inbound.source.0), &e);
            }
        }
        // The link reported its connect failure once; each message is
        // counted and, if a request, answered here.
        Event::Undelivered { inbound, error } => {
            debug!(source = %inbound.source, error = %error, "not delivered to the upstream");
            let request = !inbound.is_response() && !inbound.from_registrar();
            if let SendError::UpstreamGivenUp(_) = error {
                if request {
                    // The drain ran out before its answer came.
                    let answer = core.drain_ran_out(&inbound, Instant::now());
                    if let Err((_, e)) = carry_out(core, senders, log, &inbound, answer).await {
                        not_sent(core, Some(inbound.source.0), &e);
                    }
                } else {
                    not_delivered(core, senders, log, &inbound, &Destination::Upstream, &error)
                        .await;
                }
                // The drain's end waits for this before the connections close.
                if let Some(backlog) = senders.upstream.backlog() {
                    backlog.given_up_answered();
                }
                return;
            }
            if ends_the_silence(&error) {
                edge.upstream_watch.connection_closed(core.metrics());
            }
            not_delivered(core, senders, log, &inbound, &Destination::Upstream, &error).await;
        }
    }
}

/// Whether a message handed back by the link ends the count of requests
/// the upstream left unanswered: its connection closed, or none could be
/// opened. What the link held is answered 503 here; it is not a request
/// the registrar keeps unanswered on a connection it holds open (a stall,
/// which the silence watch is for), nor one it never got.
fn ends_the_silence(error: &SendError) -> bool {
    matches!(
        error,
        SendError::UpstreamClosedUnanswered(_) | SendError::UpstreamUnreachable { .. }
    )
}

/// A message arrived: the core decides (banning a scanner that proved its
/// address), the outcome is carried out, and what was sent is counted,
/// kept for retransmission, or noted for the upstream's watch.
async fn received(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    edge: &mut Edge,
    inbound: Inbound,
) {
    let started = Instant::now();
    // The registrar answers when what it sends is SIP: bytes of another
    // protocol (a wrong service at the upstream's address) do not make it
    // ready.
    if inbound.from_registrar() && has_sip_start_line(&inbound.bytes) {
        edge.upstream_watch.heard(core.metrics());
    }
    // A scanner banned by this message is dropped, and its record says why
    // (see `Core::handle_banning`). Over a connection the handshake proved
    // its address: banned at once, from everything. A datagram's source
    // may be forged: banned (from datagrams only) once its scanner traffic
    // has gone on for `SCANNER_PROOF`; until then each is dropped by the
    // policy.
    let admission = &mut edge.admission;
    let scope = BanScope::earned_over(inbound.transport);
    let mut banned = false;
    let outcome = core.handle_banning(
        &inbound,
        started,
        &|id, peer| senders.connections.is_open_to(id, peer),
        &mut |source| {
            banned = (scope == BanScope::Everything || admission.scanner_datagram(source, started))
                && admission.ban(source, BanCause::Scanner, scope, started);
            banned
        },
    );
    let leaving = Leaving::of(senders, &inbound, &outcome);
    // A stream client's request leaving over UDP: its client transaction
    // is kept before it is sent (its answer may come back on another
    // worker's socket at once), and forgotten if it could not be sent.
    let kept = match &outcome {
        Outcome::Relay {
            send,
            retransmit: Some(key),
            ..
        } => {
            // Forgotten on a failed send only when this message started it
            // (not when it retransmits one kept already).
            core.keep_transaction(*key, send.clone(), inbound.clone(), started)
                .then_some(*key)
        }
        _ => None,
    };
    let carried_out = carry_out(core, senders, log, &inbound, outcome).await;
    if let (true, Some(id)) = (banned, inbound.connection) {
        // The connection that earned its source a ban closes once what was
        // queued for it is written (the ban refuses its next message).
        senders.connections.remove(id);
    }
    core.metrics().observe_handling(started.elapsed());
    if let (Some(key), Err(_)) = (&kept, &carried_out) {
        core.forget_transaction(key);
    }
    match carried_out {
        Ok(()) => leaving.sent(core, &edge.upstream_watch, &inbound, started),
        Err((to, e)) => {
            let fault = match (&to, &e) {
                (
                    Destination::Upstream,
                    SendError::Io { .. } | SendError::UpstreamUnreachable { .. },
                ) => Fault::UpstreamSend,
                _ => Fault::of_send(&e),
            };
            fault.report(core.metrics(), None, &e);
            not_delivered(core, senders, log, &inbound, &to, &e).await;
        }
    }
}

/// A message could not be sent to `to` (`error` says why): for the
/// registrar, counted by the upstream's transport and remembered for
/// `/readyz` until a message is delivered to it, and a request is answered
/// `503` with Retry-After (logged, recorded and counted by the core); a
/// request of the registrar's side for a client flow found dead is answered
/// `430 Flow Failed` (RFC 5626 5.3); whatever is not answered is counted as
/// dropped (`send_failed`).
async fn not_delivered(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    inbound: &Inbound,
    to: &Destination,
    error: &SendError,
) {
    if let (Destination::Flow(_), false) = (to, inbound.is_response()) {
        core.not_sent_toward_client(inbound, Instant::now());
    }
    // Only a request of the registrar's side goes to a client flow; a flow
    // found dead (RFC 5626 5.3) is answered so, at once.
    if let (Destination::Flow(_), false, Some(failure)) =
        (to, inbound.is_response(), flow_failure(error))
    {
        let answer = core.flow_failed(inbound, Instant::now(), failure);
        if let Err((_, e)) = carry_out(core, senders, log, inbound, answer).await {
            not_sent(core, Some(inbound.source.0), &e);
        }
        return;
    }
    if *to != Destination::Upstream {
        core.metrics().count_drop(DropReason::SendFailed);
        return;
    }
    // A full queue is no sign of a registrar that is down.
    let busy = matches!(error, SendError::UpstreamQueueFull(_));
    if !busy {
        core.metrics()
            .count_upstream_send_failure(senders.upstream.transport(), error.to_string());
    }
    // A response has no one to answer it: dropped. Nor has sipadmit's own
    // probe (the only message "from the registrar" that goes to the
    // registrar), which is no message received: only the failure counts.
    if inbound.from_registrar() {
        return;
    }
    if inbound.is_response() {
        core.metrics().count_drop(DropReason::SendFailed);
        return;
    }
    let answer = core.upstream_unavailable(inbound, Instant::now(), busy);
    if let Err((_, e)) = carry_out(core, senders, log, inbound, answer).await {
        not_sent(core, Some(inbound.source.0), &e);
    }
}

/// The dead flow a send failure shows, for its `430`: a connection closed
/// (or now to another peer, or closed for not reading) or another
/// instance's. `None` for what does not kill a flow (a full write queue of
/// a peer that reads, a socket error of a UDP send): counted, not answered,
/// so that the registrar's retransmission or timeout decides, not a `430`
/// that would make it drop the binding.
fn flow_failure(error: &SendError) -> Option<FlowFailure> {
    match error {
        SendError::ConnectionGone(_) | SendError::OtherPeer { .. } | SendError::QueueFull(_) => {
            Some(FlowFailure::Closed)
        }
        SendError::ForeignFlow(_) => Some(FlowFailure::OtherInstance),
        _ => None,
    }
}

/// A local answer (or a retransmission) could not be sent (`error`):
/// reported as a transport fault (with the client's address when known)
/// and counted as dropped (`send_failed`).
fn not_sent(core: &Core, peer: Option<std::net::SocketAddr>, error: &SendError) {
    Fault::of_send(error).report(core.metrics(), peer, error);
    core.metrics().count_drop(DropReason::SendFailed);
}

/// Mirror (HEP) a message handed to the transport for `to`: from the
/// address it arrived at when it goes back to its source, from the UDP
/// listener it leaves from toward a UDP flow, else from the address
/// sipadmit advertises for the transport it leaves on.
fn mirror_sent(senders: &Senders, inbound: &Inbound, to: &Destination, bytes: &bytes::Bytes) {
    if !senders.hep.mirrors_messages() {
        return;
    }
    let (transport, local, peer) = match to {
        Destination::Source => (inbound.transport, Some(inbound.local), inbound.source.0),
        Destination::Flow(flow) if flow.transport == Transport::Udp => {
            let listener = senders.udp_listener_for(flow.local, flow.peer);
            (flow.transport, listener.map(|(l, _)| l.local), flow.peer)
        }
        Destination::Flow(flow) => (flow.transport, flow.local, flow.peer),
        Destination::Upstream => (senders.upstream.transport(), None, senders.upstream.addr()),
    };
    senders.hep.sent(transport, local, peer, bytes);
}

/// Submit an outcome's record and send what it says (never waiting for a
/// connection). The record goes first: whoever reads the answer finds it
/// in the log once the log is flushed. It is marked `undelivered` when the
/// answer is for a connection that has closed already, or whose write
/// queue has no room for it. Only the stream flows of `core`'s instance
/// (its boot id) are written to. A local answer is counted once sent.
async fn carry_out(
    core: &Core,
    senders: &Senders,
    log: &DecisionLog,
    inbound: &Inbound,
    mut outcome: Outcome,
) -> Result<(), (Destination, SendError)> {
    let boot = core.boot();
    if let Some(mut record) = outcome.take_record() {
        record.undelivered = !stream_takes(senders, inbound, &outcome, boot);
        senders.hep.decision(&record, inbound.local);
        log.submit(record);
    }
    // A local answer is counted once sent, as a relayed message is: one
    // that could not be sent is a `send_failed` drop only.
    let answered = match outcome.treatment() {
        Some(Treatment::Answered(status)) if status > 0 => Some(status),
        _ => None,
    };
    let sent = send(senders, inbound, outcome, boot).await;
    if let (Some(status), Ok(())) = (answered, &sent) {
        core.metrics().count_local_response(status);
    }
    sent
}

/// Whether the stream connection `outcome` sends on would take what it
/// sends now: open (and this instance's), with room in its write queue.
/// True for what leaves over UDP, goes upstream or sends nothing.
fn stream_takes(senders: &Senders, inbound: &Inbound, outcome: &Outcome, boot: BootId) -> bool {
    let (to, len) = match outcome {
        Outcome::Relay { send, .. } => (&send.to, send.bytes.len()),
        Outcome::Answer { bytes, .. } => (&Destination::Source, bytes.len()),
        Outcome::Drop { .. } | Outcome::Consumed => return true,
    };
    match to {
        Destination::Source => inbound
            .connection
            .is_none_or(|id| senders.connections.would_take(id, inbound.source.0, len)),
        Destination::Flow(flow) if flow.transport.is_stream() => match flow.connection {
            Some(id) if id.boot == boot => {
                senders
                    .connections
                    .would_take(id.connection, flow.peer, len)
            }
            _ => false,
        },
        Destination::Flow(_) | Destination::Upstream => true,
    }
}

/// Send what `outcome` (its record taken) says: to `inbound`'s source, a
/// flow or the registrar.
async fn send(
    senders: &Senders,
    inbound: &Inbound,
    outcome: Outcome,
    boot: BootId,
) -> Result<(), (Destination, SendError)> {
    let (to, bytes) = match outcome {
        Outcome::Relay {
            send: Outbound { to, bytes },
            ..
        } => (to, bytes),
        Outcome::Answer { bytes, .. } => (Destination::Source, bytes),
        Outcome::Drop { .. } | Outcome::Consumed => return Ok(()),
    };
    mirror_sent(senders, inbound, &to, &bytes);
    let result = match &to {
        // Back where it came from: the same connection, or the same UDP socket.
        Destination::Source => match inbound.connection {
            Some(id) => senders.connections.send(id, inbound.source.0, bytes),
            None => {
                senders
                    .send_datagram(Some(inbound.local), inbound.source.0, &bytes)
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
        // From the listener the client sent to, when the flow names it.
        Destination::Flow(flow) => senders.send_datagram(flow.local, flow.peer, &bytes).await,
        Destination::Upstream => senders.send_upstream(bytes, inbound).await,
    };
    result.map_err(|e| (to, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP client's connection in `connections`, with a write queue of
    /// `queue_bytes`: an INVITE of its (naming it), and what is written
    /// to it.
    fn client_connection(
        connections: &crate::transport::Connections,
        queue_bytes: usize,
    ) -> (Inbound, mpsc::UnboundedReceiver<bytes::Bytes>) {
        use crate::transport::connections::WriteQueue;
        let peer: std::net::SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let id = connections.next_id();
        let (writer, written) = mpsc::unbounded_channel();
        connections.insert(
            id,
            peer,
            Transport::Tcp,
            writer,
            Arc::new(WriteQueue::new(queue_bytes)),
        );
        let inbound = Inbound {
            bytes: bytes::Bytes::from_static(b"INVITE sip:x SIP/2.0\r\n\r\n"),
            transport: Transport::Tcp,
            source: PeerAddr(peer),
            local: LocalAddr("127.0.0.1:5060".parse().unwrap()),
            connection: Some(id),
            leg: Leg::FromClient,
        };
        (inbound, written)
    }

    /// Senders with `connections`, no UDP listener, and a UDP registrar.
    fn udp_upstream_senders(connections: &Arc<crate::transport::Connections>) -> Senders {
        Senders {
            udp: Vec::new(),
            connections: connections.clone(),
            upstream: UpstreamSender::Datagram("127.0.0.1:5070".parse().unwrap()),
            udp_upstream_health: None,
            hep: crate::observe::Hep::off(),
        }
    }

    #[test]
    fn a_refused_connect_or_a_close_ends_the_silence_a_full_queue_does_not() {
        let addr: std::net::SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let refused = SendError::UpstreamUnreachable {
            addr,
            cause: std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(ends_the_silence(&refused));
        assert!(ends_the_silence(&SendError::UpstreamClosedUnanswered(addr)));
        assert!(!ends_the_silence(&SendError::UpstreamQueueFull(addr)));
        assert!(!ends_the_silence(&SendError::UpstreamGivenUp(addr)));
    }

    /// A request of the registrar's side relayed toward a client
    /// connection that closed between the decision and the send is
    /// answered `430 Flow Failed` (RFC 5626 5.3) on the registrar's own
    /// connection at once, not left to the registrar's transaction timeout.
    #[tokio::test]
    async fn a_request_for_a_client_connection_gone_after_its_decision_is_answered_430() {
        use crate::transport::connections::WriteQueue;
        let core = Core::detached(
            "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n",
        )
        .unwrap();
        let connections = Arc::new(crate::transport::Connections::default());
        let senders = udp_upstream_senders(&connections);
        let dir = tempfile::tempdir().unwrap();
        let (log, _writer) = DecisionLog::open(dir.path().join("d.log").to_str().unwrap()).unwrap();
        let open = |peer, transport| {
            let id = connections.next_id();
            let (writer, written) = mpsc::unbounded_channel();
            let queue = Arc::new(WriteQueue::new(65_536));
            connections.insert(id, peer, transport, writer, queue);
            (id, written)
        };
        let inbound = |bytes: String, peer, id, leg| Inbound {
            bytes: bytes::Bytes::from(bytes),
            transport: Transport::Tcp,
            source: PeerAddr(peer),
            local: crate::proxy::DETACHED_ADDRESS,
            connection: Some(id),
            leg,
        };
        // An agent registers over TCP; the registrar gets the Path to it.
        let agent: std::net::SocketAddr = "127.0.0.1:41000".parse().unwrap();
        let (agent_id, _agent_written) = open(agent, Transport::Tcp);
        let register = include_str!("../tests/fixtures/lync2013-register-tls.sip")
            .replace("SIP/2.0/TLS", "SIP/2.0/TCP");
        let relayed = core.handle(
            &inbound(register, agent, agent_id, Leg::FromClient),
            Instant::now(),
            &|id, peer| connections.is_open_to(id, peer),
        );
        let Outcome::Relay { send, .. } = relayed else {
            panic!("the REGISTER is relayed: {relayed:?}");
        };
        let relayed = String::from_utf8_lossy(&send.bytes).into_owned();
        let path = relayed
            .lines()
            .find_map(|l| l.strip_prefix("Path: "))
            .expect("a Path");
        // The registrar offers a call along it on its own TCP connection.
        let registrar: std::net::SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let (registrar_id, mut registrar_written) = open(registrar, Transport::Tcp);
        let offer = inbound(
            format!(
                "INVITE sip:agent-a@{agent};transport=tcp SIP/2.0\r\n\
                 Via: SIP/2.0/TCP {registrar};branch=z9hG4bK-offer\r\n\
                 Route: {path}\r\nMax-Forwards: 70\r\n\
                 From: <sip:helpdesk@contoso.com>;tag=rgs\r\nTo: <sip:agent-a@contoso.com>\r\n\
                 Call-ID: offer-1\r\nCSeq: 1 INVITE\r\n\
                 User-Agent: RTCC/5.0.0.0 Response_Group_Service/5.0.0.0\r\n\
                 Content-Length: 0\r\n\r\n"
            ),
            registrar,
            registrar_id,
            Leg::FromRegistrar,
        );
        let outcome = core.handle(&offer, Instant::now(), &|id, peer| {
            connections.is_open_to(id, peer)
        });
        assert!(
            matches!(&outcome, Outcome::Relay { send, .. }
                if matches!(&send.to, Destination::Flow(f) if f.peer == agent)),
            "relayed toward the agent's connection: {outcome:?}"
        );
        // The agent's connection closes before the offer is written.
        connections.remove(agent_id);
        let Err((to, error)) = carry_out(&core, &senders, &log, &offer, outcome).await else {
            panic!("the send fails");
        };
        not_delivered(&core, &senders, &log, &offer, &to, &error).await;
        let answer = registrar_written
            .try_recv()
            .expect("answered on the registrar's connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("SIP/2.0 430 Flow Failed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("branch=z9hG4bK-offer"), "{answer}");
        assert_eq!(core.metrics().drops(DropReason::SendFailed), 0);
    }

    /// A local answer counts in `sipadmit_local_responses_total` once it
    /// is sent; one whose connection closed first is not sent, and is not
    /// counted there (its drop is counted `send_failed` by `not_delivered`).
    #[tokio::test]
    async fn a_local_answer_is_counted_once_sent_and_not_when_its_send_fails() {
        let core = Core::detached("").unwrap();
        let connections = Arc::new(crate::transport::Connections::default());
        let senders = udp_upstream_senders(&connections);
        let dir = tempfile::tempdir().unwrap();
        let (log, _writer) = DecisionLog::open(dir.path().join("d.log").to_str().unwrap()).unwrap();
        let (inbound, mut written) = client_connection(&connections, 65_536);
        let id = inbound.connection.unwrap();
        let answer = || Outcome::Answer {
            bytes: bytes::Bytes::from_static(b"SIP/2.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
            record: None,
        };
        carry_out(&core, &senders, &log, &inbound, answer())
            .await
            .expect("sent on the open connection");
        assert!(written.try_recv().is_ok(), "written to the connection");
        assert_eq!(core.metrics().local_responses(403), 1);
        connections.remove(id);
        let Err((to, error)) = carry_out(&core, &senders, &log, &inbound, answer()).await else {
            panic!("the connection is gone: the send fails");
        };
        not_delivered(&core, &senders, &log, &inbound, &to, &error).await;
        assert_eq!(
            core.metrics().local_responses(403),
            1,
            "not sent, not counted"
        );
        assert_eq!(core.metrics().drops(DropReason::SendFailed), 1);
    }

    /// What `undelivered` is marked from: a stream connection that has
    /// closed, or whose write queue has no room for the message; anything
    /// else is taken.
    #[test]
    fn a_stream_answer_is_taken_while_its_connection_is_open_with_room() {
        let connections = Arc::new(crate::transport::Connections::default());
        let senders = udp_upstream_senders(&connections);
        let (inbound, _written) = client_connection(&connections, 100);
        let (id, peer) = (inbound.connection.unwrap(), inbound.source.0);
        let boot = BootId::from_u64(7);
        let answer = |len: usize| Outcome::Answer {
            bytes: bytes::Bytes::from(vec![b'x'; len]),
            record: None,
        };
        // Any message fits an empty queue.
        assert!(stream_takes(&senders, &inbound, &answer(500), boot));
        connections
            .send(id, peer, bytes::Bytes::from(vec![b'q'; 80]))
            .unwrap();
        assert!(stream_takes(&senders, &inbound, &answer(20), boot));
        assert!(
            !stream_takes(&senders, &inbound, &answer(21), boot),
            "no room"
        );
        // What leaves over UDP or upstream, or sends nothing, is taken.
        let udp = Inbound {
            connection: None,
            transport: Transport::Udp,
            ..inbound.clone()
        };
        assert!(stream_takes(&senders, &udp, &answer(500), boot));
        let dropped = Outcome::Drop {
            reason: DropReason::SendFailed,
            record: None,
        };
        assert!(stream_takes(&senders, &inbound, &dropped, boot));
        connections.remove(id);
        assert!(
            !stream_takes(&senders, &inbound, &answer(1), boot),
            "closed"
        );
    }
}
