//! Counters, a latency histogram and the Prometheus text exposition
//! (format 0.0.4, what `promtool check metrics` reads), served by the admin
//! listener (`crate::admin`) at `GET /metrics`.
//!
//! Every family is prefixed `sipadmit_` and has HELP and TYPE lines. Labels
//! are bounded by construction: every label value is an enum's name
//! (`as_str()`) or a SIP status code, never a Call-ID, an address, a URI or
//! a raw User-Agent. Every drop is counted by reason.
//!
//! Hand-written rather than `prometheus-client`: that crate writes the
//! OpenMetrics format (`info` type, counter families named without
//! `_total`, `# EOF`), and its label families are hash maps behind a lock;
//! here the hot counters are plain atomics indexed by enum, and the few
//! labelled families with a larger value space (status codes, parse error
//! reasons, decisions) are small ordered maps written on the slow path or
//! once per decision.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::classify::Support;
use crate::observe::decision_log::{DecisionKind, DecisionRecord};
use crate::policy::{Action, SessionRole};
use crate::vocabulary::{Fault, HandshakeReason, Transport, WarningWindow, FAULT_WARNING_INTERVAL};

/// Which end of a TLS handshake sipadmit was (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// The server side, on a `tls:` listener.
    Listener,
    /// The client side, on the link to a `tls:` upstream.
    Upstream,
}

impl TlsSide {
    /// Both sides, in render order.
    pub const ALL: [Self; 2] = [Self::Listener, Self::Upstream];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Upstream => "upstream",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Listener => 0,
            Self::Upstream => 1,
        }
    }
}

/// Why a message was not relayed and not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Unparsable and no response could be formed.
    Malformed,
    /// A response whose top Via is not this proxy's (RFC 3261 18.1.2).
    ForeignResponse,
    /// A malformed response.
    MalformedResponse,
    /// The policy said drop (scanners).
    Policy,
    /// ACK for a response this filter sent itself.
    AbsorbedAck,
    /// A request that must not be answered (ACK) could not be relayed.
    Unanswerable,
    /// The flow a message should go to is gone.
    FlowGone,
    /// Sending failed: a message relayed or answered here that could not
    /// be sent (a TCP/TLS connection closed or stalled, a failed UDP send).
    SendFailed,
    /// STUN datagram (not handled).
    Stun,
    /// Over its source's rate limit (`rate_limit.over_limit = "drop"`, or
    /// a message that cannot be answered 503).
    RateLimited,
    /// From a banned source (dropped unparsed, or the message that got it banned).
    Banned,
    /// A copy of a request whose first copy was relayed and which a
    /// reload since would reject: the first copy's fate stands (a copy of
    /// one rejected before gets that reject again instead).
    DecidedBefore,
    /// A response to a request sipadmit answered `408` already: a TCP/TLS
    /// client's request relayed over UDP whose client transaction timed
    /// out, or one a stream registrar left unanswered when a drain ran out.
    AfterTimeout,
    /// A copy of a final response already relayed to a TCP/TLS client
    /// whose request went on over UDP, or a response after it: the client
    /// transaction sipadmit keeps for it is completed.
    AfterFinal,
    /// A TCP/TLS client's message read in full whose connection was closed
    /// (evicted, or sipadmit stopping) while the message waited for room
    /// in the queue to a stream registrar: no answer can reach its client.
    ConnectionClosed,
}

impl DropReason {
    /// Every reason, in render order.
    pub const ALL: [Self; 15] = [
        Self::Malformed,
        Self::ForeignResponse,
        Self::MalformedResponse,
        Self::Policy,
        Self::AbsorbedAck,
        Self::Unanswerable,
        Self::FlowGone,
        Self::SendFailed,
        Self::Stun,
        Self::RateLimited,
        Self::Banned,
        Self::DecidedBefore,
        Self::AfterTimeout,
        Self::AfterFinal,
        Self::ConnectionClosed,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::ForeignResponse => "foreign_response",
            Self::MalformedResponse => "malformed_response",
            Self::Policy => "policy",
            Self::AbsorbedAck => "absorbed_ack",
            Self::Unanswerable => "unanswerable",
            Self::FlowGone => "flow_gone",
            Self::SendFailed => "send_failed",
            Self::Stun => "stun",
            Self::RateLimited => "rate_limited",
            Self::Banned => "banned",
            Self::DecidedBefore => "decided_before",
            Self::AfterTimeout => "after_timeout",
            Self::AfterFinal => "after_final",
            Self::ConnectionClosed => "connection_closed",
        }
    }
}

/// What a HEP packet carries (label `type` of the HEP families).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HepPayload {
    /// A SIP message sipadmit received or sent (HEP type 1).
    Sip,
    /// A decision record (a HEP log, type 100).
    Decision,
}

impl HepPayload {
    /// Both, in render order.
    pub const ALL: [Self; 2] = [Self::Sip, Self::Decision];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sip => "sip",
            Self::Decision => "decision",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::Sip => 0,
            Self::Decision => 1,
        }
    }
}

/// Why a HEP packet was dropped before it was sent (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HepDrop {
    /// The export queue was full (the collector, or the exporter, does not
    /// keep up).
    QueueFull,
    /// Longer than the 65535 bytes a HEP packet can be.
    TooLarge,
}

impl HepDrop {
    /// Both, in render order.
    pub const ALL: [Self; 2] = [Self::QueueFull, Self::TooLarge];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TooLarge => "too_large",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::QueueFull => 0,
            Self::TooLarge => 1,
        }
    }
}

/// Whether a SIP message is a request or a response (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request.
    Request,
    /// A response.
    Response,
}

impl MessageKind {
    /// Both kinds, in render order.
    pub const ALL: [Self; 2] = [Self::Request, Self::Response];

    /// The kind of a message from its first bytes (`SIP/` starts a response).
    pub fn of(bytes: &[u8]) -> Self {
        if crate::vocabulary::starts_as_response(bytes) {
            Self::Response
        } else {
            Self::Request
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::Request => 0,
            Self::Response => 1,
        }
    }
}

/// The transports counted, in render order.
pub const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// A transport's slot in the per-transport arrays (exhaustive: a new
/// transport must be added to [`TRANSPORTS`]).
fn transport_slot(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// Upper bounds of the handling-latency histogram buckets, seconds: 5 µs
/// (a REGISTER through the core) to 100 ms (a stalled event loop).
pub const HANDLING_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1,
];

/// The outcome of a config reload, or of one side's TLS reload (label
/// `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new runtime configuration (or TLS context) is in use.
    Success,
    /// The file, the catalog or a certificate file had problems; the
    /// running configuration (or TLS context) is kept.
    Failure,
}

impl ReloadResult {
    /// Both results, in render order.
    pub const ALL: [Self; 2] = [Self::Success, Self::Failure];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
        }
    }
}

/// The last message that could not be delivered to the upstream registrar
/// (a failed UDP send, a full queue to the stream link, a message the link
/// could not deliver), cleared by the next delivery: what `/readyz`
/// reports.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    /// When it failed.
    pub at: Instant,
    /// The error, as logged.
    pub error: String,
}

/// Most workers counted apart in [`PerWorker`] (`proxy.workers` allows no
/// more).
pub const WORKER_SLOTS: usize = 256;

/// A counter per worker: each worker adds to its own.
#[derive(Debug)]
pub struct PerWorker {
    counts: [AtomicU64; WORKER_SLOTS],
    /// Workers started (the counts shown).
    started: AtomicUsize,
}

impl Default for PerWorker {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            started: AtomicUsize::new(0),
        }
    }
}

impl PerWorker {
    /// `workers` workers run (the first [`WORKER_SLOTS`] are counted).
    pub fn set_started(&self, workers: usize) {
        self.started
            .store(workers.min(WORKER_SLOTS), Ordering::Relaxed);
    }

    /// Worker `worker` handled one more.
    pub fn inc(&self, worker: usize) {
        if let Some(count) = self.counts.get(worker) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts of the workers started.
    pub fn started(&self) -> &[AtomicU64] {
        &self.counts[..self.started.load(Ordering::Relaxed)]
    }
}

/// Policy decisions by action, role and support: one counter for each
/// combination (96), so that counting one takes no lock and no lookup.
type DecisionCounts =
    [[[AtomicU64; Support::ALL.len()]; SessionRole::ALL.len()]; Action::ALL.len()];

/// Process-wide counters. The hot ones are atomics; see the module doc.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Keep-alives received (CRLF, CRLFCRLF), all transports.
    pub keepalives: AtomicU64,
    /// Messages received, by transport and kind (keep-alives excluded).
    received: [[AtomicU64; 2]; TRANSPORTS.len()],
    /// Messages relayed (sent on toward the registrar or a client), by the
    /// transport they leave on and kind.
    relayed: [[AtomicU64; 2]; TRANSPORTS.len()],
    /// Requests recognised as retransmissions of a transaction already
    /// recorded (handled the same way again, not recorded again).
    pub retransmissions: AtomicU64,
    /// Requests from TCP/TLS clients that sipadmit sent again over UDP
    /// (RFC 3261 Timer A/E) because no response had come, and their ACKs
    /// of a non-2xx sent again for a copy of that response (17.1.1.2).
    pub client_retransmissions: AtomicU64,
    /// Requests from TCP/TLS clients relayed over UDP that nothing answered
    /// within 64*T1: answered `408` by sipadmit.
    pub client_transaction_timeouts: AtomicU64,
    /// Requests from TCP/TLS clients relayed over UDP without a client
    /// transaction (the table was at `limits.client_transaction_bytes`).
    pub client_transactions_untracked: AtomicU64,
    /// Events (messages received, undelivered ones) each worker's
    /// dispatcher handled, by worker (`proxy.workers`).
    pub worker_events: PerWorker,
    /// OPTIONS probes sent to the registrar (`proxy.upstream_probe_secs`).
    pub upstream_probes: AtomicU64,
    /// Answers of the registrar to those probes.
    pub upstream_probe_answers: AtomicU64,
    /// CANCELs written to a TCP/TLS registrar for calls ringing when a
    /// drain ran out (`limits.drain_secs`), or that start ringing in the
    /// second after.
    pub upstream_cancels: AtomicU64,
    /// The registrar's answers to those CANCELs, any status (consumed
    /// here: a response to a CANCEL with sipadmit's Via alone).
    pub upstream_cancel_answers: AtomicU64,
    /// Flow tokens verified by a secret other than the signing one (a
    /// rotation in progress: `proxy.flow_secret_file` lines after the first).
    pub flow_tokens_older_secret: AtomicU64,
    /// Responses whose `sipadmit-back` token did not verify for their
    /// branch (forged, damaged, replayed for another transaction, or made
    /// with a secret since dropped): sent upstream.
    pub bad_back_tokens: AtomicU64,
    /// REGISTERs answered 403 for naming more contacts than
    /// `limits.max_contacts_per_register`.
    pub too_many_contacts: AtomicU64,
    /// REGISTER contacts not learned for want of room in the registration
    /// tables (a single entry larger than its table's byte bound).
    pub contacts_not_learned: AtomicU64,
    /// Pending REGISTERs and bindings evicted (oldest first) because their
    /// table was full.
    pub registrations_evicted: AtomicU64,
    /// Messages over their source's rate limit (`rate_limit.requests_per_second`, `burst`).
    pub rate_limited_messages: AtomicU64,
    /// Messages over their source's bucket let through after a freeze of
    /// sipadmit itself: they queued while it ran nothing, and are charged
    /// to their source's rate over that time.
    pub freeze_credited_messages: AtomicU64,
    /// New TCP/TLS connections over their source's connection rate let
    /// through after a freeze of sipadmit itself (queued in the accept
    /// backlog meanwhile).
    pub freeze_credited_connections: AtomicU64,
    /// Connections over their source's rate limit (`rate_limit.connections_per_second`).
    pub rate_limited_connections: AtomicU64,
    /// Connections refused because their source had
    /// `rate_limit.max_connections_per_source` open.
    pub connections_per_source_refused: AtomicU64,
    /// Sources banned (`rate_limit.ban_secs`).
    pub bans: AtomicU64,
    /// Messages from banned sources, dropped unparsed.
    pub banned_messages: AtomicU64,
    /// Connections from banned sources, closed at once.
    pub banned_connections: AtomicU64,
    /// Datagrams the kernel dropped on the UDP listeners (receive buffer
    /// full), as last read from `/proc/net/udp` and `/proc/net/udp6`.
    pub udp_kernel_drops: AtomicU64,
    /// Requests relayed to the upstream that then stayed silent (no
    /// message from it) for 10 s or more.
    pub upstream_silent_requests: AtomicU64,
    /// Stream connections accepted and not yet served (their TLS handshake,
    /// or the wait for a plain connection's first bytes), by transport:
    /// they hold a connection slot too.
    opening: [AtomicU64; TRANSPORTS.len()],
    /// Reads of stream connections that waited for the read buffer budget
    /// (`limits.read_buffer_budget_bytes`).
    pub read_budget_waits: AtomicU64,
    /// Half-open connections closed to make room for a new one (every
    /// slot it may take in use).
    pub connections_evicted: AtomicU64,
    /// Connections given a reserved slot (`limits.reserved_connections`).
    pub reserved_admissions: AtomicU64,
    /// Reserved slots in use now (a gauge the connection slots keep).
    pub reserved_connections_in_use: AtomicU64,
    /// Known flows held now (a gauge the connection slots keep; expired
    /// ones not yet removed included).
    pub known_flows: AtomicU64,
    /// TLS handshakes completed, per [`TlsSide`].
    tls_handshakes: [AtomicU64; TlsSide::ALL.len()],
    /// TLS handshakes failed, per [`TlsSide`] and [`HandshakeReason`].
    tls_handshake_failures: [[AtomicU64; HandshakeReason::ALL.len()]; TlsSide::ALL.len()],
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Transport faults, by kind (see [`Fault::report`]).
    faults: [AtomicU64; Fault::ALL.len()],
    /// Rate limits of the fault warnings, per kind.
    fault_warnings: [Mutex<WarningWindow>; Fault::ALL.len()],
    /// Policy decisions counted once per call and client, by action, role
    /// and support.
    decisions: DecisionCounts,
    /// Policy decisions on the registrar's leg that repeat the client
    /// leg's, by action, role and support.
    repeated_decisions: DecisionCounts,
    /// Local answers (and drops) for protocol or capacity reasons, by
    /// (rule, status; 0: none sent).
    protocol_answers: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Messages refused as unparsable or invalid, by reason.
    parse_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Responses the filter sent itself, by status code.
    local_responses: Mutex<BTreeMap<u16, u64>>,
    /// Failed sends to the upstream registrar, by its transport.
    upstream_send_failures: [AtomicU64; TRANSPORTS.len()],
    /// The last message not delivered to the upstream, until one is
    /// (every message delivered asks).
    upstream_failure: Noted<UpstreamFailure>,
    /// Why a UDP upstream counts as unreachable (an ICMP error for a
    /// datagram sent to it, or silence), until it sends a message again
    /// (every message to and from it asks).
    udp_upstream_unreachable: Noted<UpstreamFailure>,
    /// A UDP upstream has sent a message since start.
    udp_upstream_heard: std::sync::atomic::AtomicBool,
    /// Until when the link to a stream upstream fails fast after a failed
    /// connect (every message to it asks).
    stream_upstream_down_until: Noted<Instant>,
    /// Why a stream upstream counts as silent (requests relayed, nothing
    /// heard for a while), until it sends a message again.
    stream_upstream_silent: Noted<UpstreamFailure>,
    reloads: [AtomicU64; 2],
    /// HEP packets sent to the collector, per [`HepPayload`].
    hep_exported: [AtomicU64; HepPayload::ALL.len()],
    /// HEP packets dropped before they were sent, per [`HepDrop`].
    hep_dropped: [AtomicU64; HepDrop::ALL.len()],
    /// HEP packets not sent: to a UDP collector, each whose send failed
    /// other than by a refusal of an earlier datagram, or failed again; to
    /// a TCP collector, each not written (down, closing or stalled).
    pub hep_send_failures: AtomicU64,
    /// Refusals a UDP collector's socket reported: ICMP port unreachable
    /// came back for datagrams sent before (nothing listened), one or
    /// several per report. Each fails the next send, which is tried again.
    pub hep_collector_refusals: AtomicU64,
    /// TLS context reloads, per [`TlsSide`] and [`ReloadResult`].
    tls_reloads: [[AtomicU64; 2]; TlsSide::ALL.len()],
    handling_buckets: [AtomicU64; HANDLING_BUCKETS.len()],
    handling_count: AtomicU64,
    handling_sum_ns: AtomicU64,
}

/// A stream connection counted as opening until dropped
/// ([`Metrics::opening`]).
#[derive(Debug)]
pub struct Opening {
    metrics: std::sync::Arc<Metrics>,
    transport: Transport,
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.metrics.opening[transport_slot(self.transport)].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Values read at scrape time from the parts that own them.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Open stream connections (clients and the upstream link), by transport.
    pub connections: Vec<(Transport, usize)>,
    /// Bindings in the registration table.
    pub registrations: usize,
    /// REGISTERs relayed upstream and not answered yet.
    pub registrations_pending: usize,
    /// Bytes the registration tables account for (bindings, pending
    /// REGISTERs, client ids).
    pub registration_table_bytes: usize,
    /// Transactions remembered (to tell retransmissions apart).
    pub transactions: usize,
    /// Bytes the transaction table accounts for.
    pub transaction_table_bytes: usize,
    /// Transactions forgotten before their time because the table was full.
    pub transactions_evicted: u64,
    /// Client transactions kept for requests from TCP/TLS clients relayed over UDP.
    pub client_transactions: usize,
    /// Bytes the client transaction table accounts for.
    pub client_transaction_bytes: usize,
    /// INVITEs the registrar sent toward this instance's clients that have
    /// no final answer yet (a drain waits for them).
    pub invites_toward_clients: usize,
    /// Bytes waiting in the queue of the link to a TCP/TLS upstream.
    pub upstream_queue_bytes: usize,
    /// Decision records dropped because the log writer's queue was full.
    pub decision_records_dropped: u64,
    /// Decision records lost to failed writes of the log.
    pub decision_records_lost: u64,
    /// Generation of the runtime configuration in use (1 at start).
    pub config_generation: u64,
    /// Sources banned now (expired bans not swept yet included; at most
    /// `transport::admission::MAX_BANS`).
    pub bans_in_force: usize,
    /// Message rate-limit buckets held (not full): a source's UDP and
    /// TCP/TLS buckets each count.
    pub rate_limited_sources: usize,
}

/// Every cell of a decision table: its label values (action, role,
/// support) and its count.
fn decision_cells(table: &DecisionCounts) -> impl Iterator<Item = ([&'static str; 3], u64)> + '_ {
    Action::ALL.into_iter().flat_map(move |action| {
        SessionRole::ALL.into_iter().flat_map(move |role| {
            Support::ALL.into_iter().map(move |support| {
                let cell = &table[action as usize][role as usize][support as usize];
                (
                    [action.as_str(), role.as_str(), support.as_str()],
                    cell.load(Ordering::Relaxed),
                )
            })
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A value noted now and then and asked for on every message: while none
/// is noted, asking (and clearing) reads one atomic flag and takes no lock.
#[derive(Debug)]
struct Noted<T> {
    value: Mutex<Option<T>>,
    /// `value` holds something (the flag is written under its lock).
    noted: std::sync::atomic::AtomicBool,
}

impl<T> Default for Noted<T> {
    fn default() -> Self {
        Self {
            value: Mutex::new(None),
            noted: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl<T: Clone> Noted<T> {
    fn note(&self, value: T) {
        let mut slot = lock(&self.value);
        *slot = Some(value);
        self.noted.store(true, Ordering::Relaxed);
    }

    fn clear(&self) {
        if self.is_noted() {
            let mut slot = lock(&self.value);
            *slot = None;
            self.noted.store(false, Ordering::Relaxed);
        }
    }

    fn is_noted(&self) -> bool {
        self.noted.load(Ordering::Relaxed)
    }

    fn get(&self) -> Option<T> {
        if !self.is_noted() {
            return None;
        }
        lock(&self.value).clone()
    }

    /// The value if `keep` holds for it; else it is forgotten.
    fn keep_if(&self, keep: impl FnOnce(&T) -> bool) -> Option<T> {
        if !self.is_noted() {
            return None;
        }
        let mut slot = lock(&self.value);
        let kept = slot.take().filter(|v| keep(v));
        slot.clone_from(&kept);
        self.noted.store(kept.is_some(), Ordering::Relaxed);
        kept
    }
}

/// A fault's slot in the per-fault arrays (its place in [`Fault::ALL`]).
fn fault_slot(fault: Fault) -> usize {
    Fault::ALL
        .iter()
        .position(|f| *f == fault)
        .expect("every fault is listed")
}

/// A drop reason's slot in the per-reason array (its place in [`DropReason::ALL`]).
fn drop_slot(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is listed")
}

fn reason_index(reason: HandshakeReason) -> usize {
    HandshakeReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is listed")
}

impl Metrics {
    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count one transport fault (see [`Fault::report`], which logs it too).
    pub fn count_fault(&self, fault: Fault) {
        let i = fault_slot(fault);
        self.faults[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Transport faults counted of a kind.
    pub fn faults(&self, fault: Fault) -> u64 {
        let i = fault_slot(fault);
        self.faults[i].load(Ordering::Relaxed)
    }

    /// Whether a warning for a fault of this kind at `now` is logged (see
    /// [`Fault::report`]): `Some(n)` with the `n` held back since the last
    /// one, or `None`.
    pub fn fault_warning_due(&self, fault: Fault, now: Instant) -> Option<u64> {
        let i = fault_slot(fault);
        lock(&self.fault_warnings[i]).admit(now, FAULT_WARNING_INTERVAL)
    }

    /// Count one completed TLS handshake.
    pub fn count_tls_handshake(&self, side: TlsSide) {
        self.tls_handshakes[side.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes completed on one side.
    pub fn tls_handshakes(&self, side: TlsSide) -> u64 {
        self.tls_handshakes[side.index()].load(Ordering::Relaxed)
    }

    /// Count one failed TLS handshake.
    pub fn count_tls_handshake_failure(&self, side: TlsSide, reason: HandshakeReason) {
        self.tls_handshake_failures[side.index()][reason_index(reason)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes failed on one side for one reason.
    pub fn tls_handshake_failures(&self, side: TlsSide, reason: HandshakeReason) -> u64 {
        self.tls_handshake_failures[side.index()][reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Count one drop.
    pub fn count_drop(&self, reason: DropReason) {
        let i = drop_slot(reason);
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops counted for a reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = drop_slot(reason);
        self.drops[i].load(Ordering::Relaxed)
    }

    /// Count one message received.
    pub fn count_received(&self, transport: Transport, kind: MessageKind) {
        Self::inc(&self.received[transport_slot(transport)][kind.slot()]);
    }

    /// Messages received on a transport, of a kind.
    pub fn received(&self, transport: Transport, kind: MessageKind) -> u64 {
        self.received[transport_slot(transport)][kind.slot()].load(Ordering::Relaxed)
    }

    /// Count one message relayed, by the transport it leaves on.
    pub fn count_relayed(&self, transport: Transport, kind: MessageKind) {
        Self::inc(&self.relayed[transport_slot(transport)][kind.slot()]);
    }

    /// Messages relayed on a transport, of a kind.
    pub fn relayed(&self, transport: Transport, kind: MessageKind) -> u64 {
        self.relayed[transport_slot(transport)][kind.slot()].load(Ordering::Relaxed)
    }

    /// Count one decision record: a policy decision in
    /// `sipadmit_decisions_total` (or, when it repeats the client leg's
    /// decision on the registrar's leg, in
    /// `sipadmit_decisions_repeated_total`), a protocol or capacity answer
    /// in `sipadmit_protocol_answers_total`.
    pub fn count_record(&self, r: &DecisionRecord) {
        if r.kind() == DecisionKind::Protocol {
            // Rules are the proxy's own names (`Refusal::rule`,
            // `BanCause::rule`): a fixed set.
            let rule = match &r.rule {
                Cow::Borrowed(rule) => rule,
                Cow::Owned(_) => "other",
            };
            self.count_protocol_answer(rule, r.status);
            return;
        }
        let table = if r.counted_once() {
            &self.decisions
        } else {
            &self.repeated_decisions
        };
        Self::inc(&table[r.action as usize][r.role as usize][r.support as usize]);
    }

    /// Count one policy decision counted once per call and client, by its
    /// labels' values (`Action::as_str`, `SessionRole::as_str`,
    /// `Support::as_str`).
    pub fn count_decision(&self, action: Action, role: SessionRole, support: Support) {
        Self::inc(&self.decisions[action as usize][role as usize][support as usize]);
    }

    /// Count one local answer (or drop: no `status`) for a protocol or
    /// capacity reason, by its rule (`proxy.*`, `rate_limit.*`, `ban.*`).
    pub fn count_protocol_answer(&self, rule: &'static str, status: Option<u16>) {
        *lock(&self.protocol_answers)
            .entry((rule, status.unwrap_or(0)))
            .or_default() += 1;
    }

    /// Protocol answers counted for a rule and status (`None`: dropped).
    pub fn protocol_answers(&self, rule: &str, status: Option<u16>) -> u64 {
        lock(&self.protocol_answers)
            .iter()
            .filter(|((r, s), _)| *r == rule && *s == status.unwrap_or(0))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Repeated registrar-leg decisions counted with these label values.
    pub fn repeated_decisions(&self, action: &str, role: &str, support: &str) -> u64 {
        Self::decision_count(&self.repeated_decisions, [action, role, support])
    }

    /// Decisions counted with these label values.
    pub fn decisions(&self, action: &str, role: &str, support: &str) -> u64 {
        Self::decision_count(&self.decisions, [action, role, support])
    }

    /// The counter of a decision table under these label values (0 for
    /// values no decision has).
    fn decision_count(table: &DecisionCounts, labels: [&str; 3]) -> u64 {
        decision_cells(table)
            .filter(|(cell, _)| *cell == labels)
            .map(|(_, value)| value)
            .sum()
    }

    /// Count one message refused as unparsable or invalid (`reason` is a
    /// fixed name such as `SipError::label`).
    pub fn count_parse_error(&self, reason: &'static str) {
        *lock(&self.parse_errors).entry(reason).or_default() += 1;
    }

    /// Parse errors counted for a reason.
    pub fn parse_errors(&self, reason: &str) -> u64 {
        lock(&self.parse_errors).get(reason).copied().unwrap_or(0)
    }

    /// Count one response the filter sent itself.
    pub fn count_local_response(&self, status: u16) {
        *lock(&self.local_responses).entry(status).or_default() += 1;
    }

    /// Local responses sent with a status.
    pub fn local_responses(&self, status: u16) -> u64 {
        lock(&self.local_responses)
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Count a message not delivered to the upstream (over `transport`) and
    /// remember why for `/readyz` until the next delivery.
    pub fn count_upstream_send_failure(&self, transport: Transport, error: String) {
        Self::inc(&self.upstream_send_failures[transport_slot(transport)]);
        self.upstream_failure.note(UpstreamFailure {
            at: Instant::now(),
            error,
        });
    }

    /// A CANCEL of sipadmit's own was sent: to the registrar at a drain's
    /// end, or for a call that rang through Timer C.
    pub fn note_upstream_cancel(&self) {
        Self::inc(&self.upstream_cancels);
    }

    /// A message was delivered to the upstream (a UDP send, or a write
    /// queued on the stream link's connection): forget the last failure.
    pub fn note_upstream_sent(&self) {
        self.upstream_failure.clear();
    }

    /// The last message not delivered to the upstream, unless one was
    /// delivered since.
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        self.upstream_failure.get()
    }

    /// A UDP upstream looks unreachable (`reason`: an ICMP error for a
    /// datagram sent to it, or its silence): remembered for `/readyz` until
    /// [`Metrics::note_udp_upstream_heard`].
    pub fn note_udp_upstream_unreachable(&self, reason: String) {
        self.udp_upstream_unreachable.note(UpstreamFailure {
            at: Instant::now(),
            error: reason,
        });
    }

    /// A message arrived from the UDP upstream: it is reachable again.
    pub fn note_udp_upstream_heard(&self) {
        if !self.udp_upstream_heard.load(Ordering::Relaxed) {
            self.udp_upstream_heard.store(true, Ordering::Relaxed);
        }
        self.udp_upstream_unreachable.clear();
    }

    /// Whether the UDP upstream looks unreachable (what
    /// [`Metrics::udp_upstream_unreachable`] says, without its reason).
    pub fn udp_upstream_down(&self) -> bool {
        self.udp_upstream_unreachable.is_noted()
    }

    /// Why the UDP upstream looks unreachable, unless it sent a message since.
    pub fn udp_upstream_unreachable(&self) -> Option<UpstreamFailure> {
        self.udp_upstream_unreachable.get()
    }

    /// Whether a UDP upstream has sent any message since start.
    pub fn udp_upstream_heard(&self) -> bool {
        self.udp_upstream_heard.load(Ordering::Relaxed)
    }

    /// The link to a stream upstream failed to connect: it fails fast
    /// until `until`, when the next message tries again.
    pub fn note_stream_upstream_down(&self, until: Instant) {
        self.stream_upstream_down_until.note(until);
    }

    /// The link to a stream upstream connected.
    pub fn note_stream_upstream_connected(&self) {
        self.stream_upstream_down_until.clear();
    }

    /// Whether the link to a stream upstream fails fast at `now` (the
    /// first question after the window ends forgets it).
    pub fn stream_upstream_failing_fast(&self, now: Instant) -> bool {
        self.stream_upstream_down_until
            .keep_if(|until| now < *until)
            .is_some()
    }

    /// A stream upstream sent nothing back for a while with requests
    /// relayed to it (`reason`): remembered for `/readyz` until
    /// [`Metrics::note_stream_upstream_heard`].
    pub fn note_stream_upstream_silent(&self, reason: String) {
        self.stream_upstream_silent.note(UpstreamFailure {
            at: Instant::now(),
            error: reason,
        });
    }

    /// A message arrived from a stream upstream (or the connection it was
    /// silent on closed, and what it left unanswered was answered 503).
    pub fn note_stream_upstream_heard(&self) {
        self.stream_upstream_silent.clear();
    }

    /// Why a stream upstream looks silent, unless it sent a message since.
    pub fn stream_upstream_silent(&self) -> Option<UpstreamFailure> {
        self.stream_upstream_silent.get()
    }

    /// A connection over `transport` was accepted and is opening (its
    /// slot taken); it stops counting when the guard is dropped.
    pub fn opening(self: &std::sync::Arc<Self>, transport: Transport) -> Opening {
        Self::inc(&self.opening[transport_slot(transport)]);
        Opening {
            metrics: self.clone(),
            transport,
        }
    }

    /// Connections over `transport` accepted and not yet served.
    pub fn opening_connections(&self, transport: Transport) -> u64 {
        self.opening[transport_slot(transport)].load(Ordering::Relaxed)
    }

    /// Messages not delivered to the upstream over a transport.
    pub fn upstream_send_failures(&self, transport: Transport) -> u64 {
        self.upstream_send_failures[transport_slot(transport)].load(Ordering::Relaxed)
    }

    /// Count `n` HEP packets sent to the collector.
    pub fn count_hep_exported(&self, payload: HepPayload, n: usize) {
        Self::add(&self.hep_exported[payload.slot()], n);
    }

    /// HEP packets sent to the collector, of one payload type.
    pub fn hep_exported(&self, payload: HepPayload) -> u64 {
        self.hep_exported[payload.slot()].load(Ordering::Relaxed)
    }

    /// Count one HEP packet dropped before it was sent.
    pub fn count_hep_dropped(&self, reason: HepDrop) {
        Self::inc(&self.hep_dropped[reason.slot()]);
    }

    /// HEP packets dropped for one reason.
    pub fn hep_dropped(&self, reason: HepDrop) -> u64 {
        self.hep_dropped[reason.slot()].load(Ordering::Relaxed)
    }

    /// HEP packets not sent (see the `hep_send_failures` field).
    pub fn hep_send_failures(&self) -> u64 {
        self.hep_send_failures.load(Ordering::Relaxed)
    }

    /// Refusals a UDP collector's socket reported (see the
    /// `hep_collector_refusals` field).
    pub fn hep_collector_refusals(&self) -> u64 {
        self.hep_collector_refusals.load(Ordering::Relaxed)
    }

    /// Count one config reload.
    pub fn count_reload(&self, result: ReloadResult) {
        Self::inc(&self.reloads[result.slot()]);
    }

    /// Config reloads with a result.
    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.reloads[result.slot()].load(Ordering::Relaxed)
    }

    /// Count one TLS context reload of one side (see
    /// `crate::transport::tls::TlsContexts::reload`).
    pub fn count_tls_reload(&self, side: TlsSide, result: ReloadResult) {
        Self::inc(&self.tls_reloads[side.index()][result.slot()]);
    }

    /// TLS context reloads of one side with a result.
    pub fn tls_reloads(&self, side: TlsSide, result: ReloadResult) -> u64 {
        self.tls_reloads[side.index()][result.slot()].load(Ordering::Relaxed)
    }

    /// Record how long handling one message took (core and send).
    pub fn observe_handling(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = HANDLING_BUCKETS.iter().position(|&le| seconds <= le) {
            Self::inc(&self.handling_buckets[i]);
        }
        Self::inc(&self.handling_count);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.handling_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Messages whose handling time was recorded.
    pub fn handled(&self) -> u64 {
        self.handling_count.load(Ordering::Relaxed)
    }

    /// One line of totals, for the log line at shutdown.
    pub fn summary(&self) -> String {
        let sum = |table: &[[AtomicU64; 2]; TRANSPORTS.len()]| -> u64 {
            table
                .iter()
                .flatten()
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        };
        let drops: u64 = self.drops.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let local: u64 = lock(&self.local_responses).values().sum();
        let faults: u64 = self.faults.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        format!(
            "received {}, relayed {}, local responses {local}, dropped {drops}, keep-alives {}, retransmissions {}, transport faults {faults}",
            sum(&self.received),
            sum(&self.relayed),
            self.keepalives.load(Ordering::Relaxed),
            self.retransmissions.load(Ordering::Relaxed),
        )
    }

    /// The Prometheus text exposition (format 0.0.4) of every family, with
    /// the `gauges` read at scrape time: the families of the `FAMILIES`
    /// table, in its order.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = Exposition::default();
        for family in &FAMILIES {
            let name = family.name;
            out.family(name, family.kind, family.help);
            match family.samples {
                Samples::Atomic(value) => {
                    out.sample(name, &[], value(self).load(Ordering::Relaxed))
                }
                Samples::Scraped(value) => out.sample(name, &[], value(gauges)),
                Samples::PerLabel(label, values) => {
                    for (value, n) in values(self, gauges) {
                        out.sample(name, &[(label, value)], n);
                    }
                }
                Samples::Written(write) => write(self, name, &mut out),
            }
        }
        out.text
    }

    /// Samples of `sipadmit_received_total` or `sipadmit_relayed_total`,
    /// by transport and kind.
    fn write_by_transport_and_kind(
        &self,
        name: &str,
        out: &mut Exposition,
        value: fn(&Self, Transport, MessageKind) -> u64,
    ) {
        for transport in TRANSPORTS {
            for kind in MessageKind::ALL {
                let labels = [("transport", transport.as_str()), ("kind", kind.as_str())];
                out.sample(name, &labels, value(self, transport, kind));
            }
        }
    }

    fn write_worker_events(&self, name: &str, out: &mut Exposition) {
        for (worker, count) in self.worker_events.started().iter().enumerate() {
            let worker = worker.to_string();
            out.sample(name, &[("worker", &worker)], count.load(Ordering::Relaxed));
        }
    }

    fn write_received(&self, name: &str, out: &mut Exposition) {
        self.write_by_transport_and_kind(name, out, Self::received);
    }

    fn write_relayed(&self, name: &str, out: &mut Exposition) {
        self.write_by_transport_and_kind(name, out, Self::relayed);
    }

    /// Samples of a decision table, by action, role and support.
    fn write_decisions(table: &DecisionCounts, name: &str, out: &mut Exposition) {
        for ([action, role, support], value) in decision_cells(table).filter(|(_, v)| *v > 0) {
            let labels = [("action", action), ("role", role), ("support", support)];
            out.sample(name, &labels, value);
        }
    }

    fn write_counted_decisions(&self, name: &str, out: &mut Exposition) {
        Self::write_decisions(&self.decisions, name, out);
    }

    fn write_repeated_decisions(&self, name: &str, out: &mut Exposition) {
        Self::write_decisions(&self.repeated_decisions, name, out);
    }

    /// Samples of `sipadmit_protocol_answers_total`, by rule and status
    /// (`none`: dropped).
    fn write_protocol_answers(&self, name: &str, out: &mut Exposition) {
        for ((rule, status), value) in lock(&self.protocol_answers).iter() {
            let status = match status {
                0 => "none".to_owned(),
                s => s.to_string(),
            };
            out.sample(
                name,
                &[("rule", *rule), ("status", status.as_str())],
                *value,
            );
        }
    }

    /// Samples of `sipadmit_local_responses_total`, by status code.
    fn write_local_responses(&self, name: &str, out: &mut Exposition) {
        for (status, value) in lock(&self.local_responses).iter() {
            let status = status.to_string();
            out.sample(name, &[("status", &status)], *value);
        }
    }

    /// Samples of `sipadmit_tls_handshake_failures_total`, by side and reason.
    fn write_tls_handshake_failures(&self, name: &str, out: &mut Exposition) {
        for side in TlsSide::ALL {
            for reason in HandshakeReason::ALL {
                let labels = [("side", side.as_str()), ("reason", reason.as_str())];
                out.sample(name, &labels, self.tls_handshake_failures(side, reason));
            }
        }
    }

    /// Samples of `sipadmit_tls_reloads_total`, by side and result.
    fn write_tls_reloads(&self, name: &str, out: &mut Exposition) {
        for side in TlsSide::ALL {
            for result in ReloadResult::ALL {
                let labels = [("side", side.as_str()), ("result", result.as_str())];
                out.sample(name, &labels, self.tls_reloads(side, result));
            }
        }
    }

    /// Samples of the handling-latency histogram: cumulative buckets, sum
    /// and count.
    fn write_handling_histogram(&self, name: &str, out: &mut Exposition) {
        let mut cumulative = 0;
        for (le, count) in HANDLING_BUCKETS.iter().zip(&self.handling_buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = le.to_string();
            out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
        }
        let count = self.handling_count.load(Ordering::Relaxed);
        out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
        let sum = self.handling_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out.text, "{name}_sum {sum}");
        out.sample(&format!("{name}_count"), &[], count);
    }
}

/// One family of the exposition: its name, type, help and how its samples
/// are read.
struct Family {
    name: &'static str,
    /// The TYPE: `counter`, `gauge` or `histogram`.
    kind: &'static str,
    help: &'static str,
    samples: Samples,
}

/// How the samples of a [`Family`] are read at scrape time.
enum Samples {
    /// One unlabelled sample: an atomic of [`Metrics`].
    Atomic(fn(&Metrics) -> &AtomicU64),
    /// One unlabelled sample: a value of [`Gauges`].
    Scraped(fn(&Gauges) -> u64),
    /// One sample per value of one label (the label name), in order.
    PerLabel(
        &'static str,
        fn(&Metrics, &Gauges) -> Vec<(&'static str, u64)>,
    ),
    /// Samples written by a function of their own (several labels, label
    /// values that are numbers, a histogram), given the family's name.
    Written(fn(&Metrics, &str, &mut Exposition)),
}

const fn counter(name: &'static str, help: &'static str, samples: Samples) -> Family {
    Family {
        name,
        kind: "counter",
        help,
        samples,
    }
}

const fn gauge(name: &'static str, help: &'static str, samples: Samples) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
        samples,
    }
}

/// Every family, in render order.
const FAMILIES: [Family; 63] = [
    gauge(
        "sipadmit_build_info",
        "Always 1; the label names the sipadmit version.",
        Samples::PerLabel("version", |_, _| vec![(env!("CARGO_PKG_VERSION"), 1)]),
    ),
    counter(
        "sipadmit_received_total",
        "SIP messages received (keep-alives excluded), by transport and kind.",
        Samples::Written(Metrics::write_received),
    ),
    counter(
        "sipadmit_relayed_total",
        "SIP messages relayed toward the registrar or a client, by the transport they leave on and kind.",
        Samples::Written(Metrics::write_relayed),
    ),
    counter(
        "sipadmit_keepalives_total",
        "Keep-alives received, all transports: CRLF pings, and STUN Binding requests on UDP (answered, RFC 5626 8).",
        Samples::Atomic(|m| &m.keepalives),
    ),
    counter(
        "sipadmit_decisions_total",
        "Admission policy decisions, one per request and client the decision is about (the registrar's leg of a request already decided on its client's leg is in sipadmit_decisions_repeated_total; protocol and capacity answers in sipadmit_protocol_answers_total), by action, Response Group role and client support class.",
        Samples::Written(Metrics::write_counted_decisions),
    ),
    counter(
        "sipadmit_decisions_repeated_total",
        "Admission policy decisions that repeat one counted in sipadmit_decisions_total: on the registrar's leg of a request sipadmit already relayed from a client (a spiral: the same caller's client, counted on its client's leg), or of a retry with credentials after a 401/407 challenge (the same sign-in or call), by action, Response Group role and client support class.",
        Samples::Written(Metrics::write_repeated_decisions),
    ),
    counter(
        "sipadmit_protocol_answers_total",
        "Requests sipadmit answered (or dropped: status none) for a protocol or capacity reason rather than by policy, by rule (proxy.*, rate_limit.*, ban.*) and status.",
        Samples::Written(Metrics::write_protocol_answers),
    ),
    counter(
        "sipadmit_dropped_total",
        "Messages neither relayed nor answered, by reason.",
        Samples::PerLabel("reason", |m, _| {
            DropReason::ALL.map(|r| (r.as_str(), m.drops(r))).to_vec()
        }),
    ),
    counter(
        "sipadmit_transport_faults_total",
        "Faults of one datagram, connection or upstream connect (counted, logged rate-limited, survived), by kind.",
        Samples::PerLabel("kind", |m, _| {
            Fault::ALL.map(|f| (f.as_str(), m.faults(f))).to_vec()
        }),
    ),
    counter(
        "sipadmit_retransmissions_total",
        "Requests recognised as retransmissions of a transaction already recorded (handled again and not recorded again, or dropped: a copy a reload would decide otherwise, or one over its source's rate limit; a copy of a request answered 503 over its source's rate limit gets that 503 again).",
        Samples::Atomic(|m| &m.retransmissions),
    ),
    counter(
        "sipadmit_client_retransmissions_total",
        "Requests from TCP/TLS clients sent again over UDP because no response had come (RFC 3261 Timer A/E, limits.timer_t1_ms, limits.timer_t2_ms), and their ACKs of a non-2xx sent again for each copy of that response (RFC 3261 17.1.1.2).",
        Samples::Atomic(|m| &m.client_retransmissions),
    ),
    counter(
        "sipadmit_client_transaction_timeouts_total",
        "Requests from TCP/TLS clients relayed over UDP that nothing answered within 64*T1, or INVITEs of theirs that rang through Timer C (limits.timer_c_secs; each also cancelled): answered 408 Request Timeout by sipadmit.",
        Samples::Atomic(|m| &m.client_transaction_timeouts),
    ),
    counter(
        "sipadmit_client_transactions_untracked_total",
        "Requests from TCP/TLS clients relayed over UDP once, without retransmissions, and their calls that ring without Timer C, because the client transaction table was at limits.client_transaction_bytes.",
        Samples::Atomic(|m| &m.client_transactions_untracked),
    ),
    counter(
        "sipadmit_worker_events_total",
        "Messages (and undelivered messages) each worker's dispatcher handled, by worker (proxy.workers): how evenly the kernel spreads the load.",
        Samples::Written(Metrics::write_worker_events),
    ),
    counter(
        "sipadmit_upstream_probes_total",
        "OPTIONS probes sipadmit sent the registrar (proxy.upstream_probe_secs).",
        Samples::Atomic(|m| &m.upstream_probes),
    ),
    counter(
        "sipadmit_upstream_probe_answers_total",
        "Answers of the registrar to sipadmit's OPTIONS probes.",
        Samples::Atomic(|m| &m.upstream_probe_answers),
    ),
    counter(
        "sipadmit_upstream_cancels_total",
        "CANCELs sipadmit sent itself: to a TCP/TLS registrar for calls ringing when a drain ran out (limits.drain_secs), or that start ringing in the second after (their callers get the callee's 487, or 408); and for a TCP/TLS client's call relayed over UDP that rang through Timer C (limits.timer_c_secs) without an answer, or still rang when a drain ran out (its caller gets 408).",
        Samples::Atomic(|m| &m.upstream_cancels),
    ),
    counter(
        "sipadmit_upstream_cancel_answers_total",
        "Answers of the registrar (any status, each copy) to the CANCELs sipadmit sent itself (at a drain's end, and for Timer C), and each copy of the non-2xx final answer of a call rung out by Timer C, which sipadmit acknowledges.",
        Samples::Atomic(|m| &m.upstream_cancel_answers),
    ),
    counter(
        "sipadmit_flow_tokens_older_secret_total",
        "Flow tokens (Path, Record-Route, Via) verified by an older secret of proxy.flow_secret_file, not the signing one: while it grows, clients still use tokens of the old secret; drop that secret once it has stopped growing for the longest registration and dialog.",
        Samples::Atomic(|m| &m.flow_tokens_older_secret),
    ),
    counter(
        "sipadmit_bad_back_tokens_total",
        "Responses whose sipadmit-back Via token did not verify for their branch (forged, damaged, replayed for another transaction, or made with a secret since dropped): sent upstream, as a response without one.",
        Samples::Atomic(|m| &m.bad_back_tokens),
    ),
    counter(
        "sipadmit_registers_too_many_contacts_total",
        "REGISTERs answered 403 for naming more contacts than limits.max_contacts_per_register.",
        Samples::Atomic(|m| &m.too_many_contacts),
    ),
    counter(
        "sipadmit_registration_contacts_not_learned_total",
        "REGISTER contacts not learned for want of room in the registration tables.",
        Samples::Atomic(|m| &m.contacts_not_learned),
    ),
    counter(
        "sipadmit_registrations_evicted_total",
        "Pending REGISTERs and bindings evicted, oldest first, because their table was full.",
        Samples::Atomic(|m| &m.registrations_evicted),
    ),
    counter(
        "sipadmit_rate_limit_bans_total",
        "Sources banned (rate_limit.ban_secs): for staying over their rate limit or sending a scanner User-Agent.",
        Samples::Atomic(|m| &m.bans),
    ),
    counter(
        "sipadmit_udp_kernel_drops_total",
        "Datagrams the kernel dropped on the UDP listeners for a full receive buffer (limits.udp_receive_buffer_bytes), read from /proc/net/udp and /proc/net/udp6 every 10 s.",
        Samples::Atomic(|m| &m.udp_kernel_drops),
    ),
    counter(
        "sipadmit_upstream_silent_requests_total",
        "Requests relayed to the upstream that then sent nothing back for 10 s or more (a UDP registrar that is down, a TCP or TLS one that stalls).",
        Samples::Atomic(|m| &m.upstream_silent_requests),
    ),
    counter(
        "sipadmit_read_budget_waits_total",
        "Reads of stream connections that waited because limits.read_buffer_budget_bytes was in use.",
        Samples::Atomic(|m| &m.read_budget_waits),
    ),
    counter(
        "sipadmit_connections_evicted_total",
        "Half-open TCP/TLS connections (no complete message yet) closed to make room for a new connection when every slot it may take was in use: the oldest of the source with the most.",
        Samples::Atomic(|m| &m.connections_evicted),
    ),
    counter(
        "sipadmit_connections_reserved_total",
        "TCP/TLS connections given one of the limits.reserved_connections slots (trusted sources and known flows, once the unreserved slots are in use).",
        Samples::Atomic(|m| &m.reserved_admissions),
    ),
    counter(
        "sipadmit_rate_limit_freeze_credits_total",
        "SIP messages over their source's token bucket let through after a freeze of sipadmit itself (a paused VM, SIGSTOP, an event loop held up for 3 s or more): they queued in the socket while it ran nothing, and each source may send requests_per_second for every second of the freeze on top of its burst.",
        Samples::Atomic(|m| &m.freeze_credited_messages),
    ),
    counter(
        "sipadmit_rate_limit_freeze_credited_connections_total",
        "New TCP/TLS connections over their source's connection rate let through after a freeze of sipadmit itself: they queued in the accept backlog while it ran nothing, and each source may open connections_per_second for every second of the freeze beyond the rate's burst (max_connections_per_source still caps the connections open at once).",
        Samples::Atomic(|m| &m.freeze_credited_connections),
    ),
    counter(
        "sipadmit_rate_limit_refused_messages_total",
        "SIP messages refused by their source's rate limit (answered 503 or dropped, rate_limit.over_limit), by reason: over_rate (rate_limit.requests_per_second, burst) or banned (dropped unparsed).",
        Samples::PerLabel("reason", |m, _| {
            [
                ("over_rate", &m.rate_limited_messages),
                ("banned", &m.banned_messages),
            ]
            .map(|(reason, c)| (reason, c.load(Ordering::Relaxed)))
            .to_vec()
        }),
    ),
    counter(
        "sipadmit_rate_limit_refused_connections_total",
        "Stream connections closed at accept by their source's limits, by reason: over_rate (rate_limit.connections_per_second), max_per_source (rate_limit.max_connections_per_source open already) or banned.",
        Samples::PerLabel("reason", |m, _| {
            [
                ("over_rate", &m.rate_limited_connections),
                ("max_per_source", &m.connections_per_source_refused),
                ("banned", &m.banned_connections),
            ]
            .map(|(reason, c)| (reason, c.load(Ordering::Relaxed)))
            .to_vec()
        }),
    ),
    counter(
        "sipadmit_parse_errors_total",
        "Messages refused as unparsable or invalid, by reason.",
        Samples::PerLabel("reason", |m, _| {
            lock(&m.parse_errors).iter().map(|(r, n)| (*r, *n)).collect()
        }),
    ),
    counter(
        "sipadmit_local_responses_total",
        "Responses sipadmit sent itself (rejects, 400, 503, ...), by status code.",
        Samples::Written(Metrics::write_local_responses),
    ),
    counter(
        "sipadmit_upstream_send_failures_total",
        "Messages that could not be sent to the upstream registrar, by its transport.",
        Samples::PerLabel("transport", |m, _| {
            TRANSPORTS
                .map(|t| (t.as_str(), m.upstream_send_failures(t)))
                .to_vec()
        }),
    ),
    counter(
        "sipadmit_tls_handshakes_total",
        "TLS handshakes completed, by side (listener: a client's; upstream: the link to the registrar).",
        Samples::PerLabel("side", |m, _| {
            TlsSide::ALL.map(|s| (s.as_str(), m.tls_handshakes(s))).to_vec()
        }),
    ),
    counter(
        "sipadmit_tls_handshake_failures_total",
        "TLS handshakes failed (the connection closed), by side and reason.",
        Samples::Written(Metrics::write_tls_handshake_failures),
    ),
    gauge(
        "sipadmit_open_connections",
        "Open stream connections (clients and the upstream link), by transport, including those accepted and still in their TLS handshake or waiting for their first byte (they hold a connection slot), and those evicted and not yet closed (at most 64 above limits.max_connections during an eviction flood).",
        Samples::PerLabel("transport", |_, g| {
            g.connections
                .iter()
                .map(|(t, n)| (t.as_str(), *n as u64))
                .collect()
        }),
    ),
    gauge(
        "sipadmit_registrations",
        "Registrations held in the registration table (contact to client, for agent offers).",
        Samples::Scraped(|g| g.registrations as u64),
    ),
    gauge(
        "sipadmit_registrations_pending",
        "REGISTERs relayed to the registrar and not answered yet.",
        Samples::Scraped(|g| g.registrations_pending as u64),
    ),
    gauge(
        "sipadmit_registration_table_bytes",
        "Bytes the registration tables account for (bounded by limits.registration_table_bytes plus the client ids).",
        Samples::Scraped(|g| g.registration_table_bytes as u64),
    ),
    gauge(
        "sipadmit_transactions",
        "Transactions remembered to tell retransmissions apart (the last 32 s).",
        Samples::Scraped(|g| g.transactions as u64),
    ),
    gauge(
        "sipadmit_transaction_table_bytes",
        "Bytes the transaction table accounts for (bounded by limits.transaction_table_bytes).",
        Samples::Scraped(|g| g.transaction_table_bytes as u64),
    ),
    counter(
        "sipadmit_transactions_evicted_total",
        "Transactions forgotten before their 32 s because the transaction table was full (limits.transaction_table_bytes): a retransmission of one is decided and recorded again.",
        Samples::Scraped(|g| g.transactions_evicted),
    ),
    gauge(
        "sipadmit_client_transactions",
        "Requests from TCP/TLS clients relayed over UDP and awaiting a (final) response, retransmitted by sipadmit.",
        Samples::Scraped(|g| g.client_transactions as u64),
    ),
    gauge(
        "sipadmit_client_transaction_bytes",
        "Bytes the client transaction table accounts for (bounded by limits.client_transaction_bytes).",
        Samples::Scraped(|g| g.client_transaction_bytes as u64),
    ),
    gauge(
        "sipadmit_invites_toward_clients",
        "INVITEs the registrar sent toward this instance's clients and not answered finally yet (forgotten 64*T1 after the relay without a provisional answer, Timer C after the last one, or when the client's connection closes); a drain waits for them.",
        Samples::Scraped(|g| g.invites_toward_clients as u64),
    ),
    gauge(
        "sipadmit_upstream_queue_bytes",
        "Bytes of messages waiting for the link to a TCP/TLS upstream (bounded by limits.upstream_queue_bytes).",
        Samples::Scraped(|g| g.upstream_queue_bytes as u64),
    ),
    gauge(
        "sipadmit_rate_limit_bans",
        "Sources banned now (at most 65,536, the oldest evicted first).",
        Samples::Scraped(|g| g.bans_in_force as u64),
    ),
    gauge(
        "sipadmit_rate_limit_tracked_sources",
        "Message rate-limit buckets held (not full), a source's UDP bucket and its TCP/TLS bucket each counted; swept every second.",
        Samples::Scraped(|g| g.rate_limited_sources as u64),
    ),
    gauge(
        "sipadmit_reserved_connections",
        "Reserved connection slots in use (of limits.reserved_connections).",
        Samples::Atomic(|m| &m.reserved_connections_in_use),
    ),
    gauge(
        "sipadmit_known_flows",
        "Sources held as known flows (a complete message within limits.known_flow_secs; bounded by limits.known_flow_bytes).",
        Samples::Atomic(|m| &m.known_flows),
    ),
    counter(
        "sipadmit_decision_records_dropped_total",
        "Decision records dropped because the decision log writer's queue was full (three quarters full for records of drops and of answers to a flood).",
        Samples::Scraped(|g| g.decision_records_dropped),
    ),
    counter(
        "sipadmit_decision_records_lost_total",
        "Decision records lost to failed writes of the decision log (a full disk, a closed pipe).",
        Samples::Scraped(|g| g.decision_records_lost),
    ),
    counter(
        "sipadmit_config_reloads_total",
        "Config reloads (SIGHUP), by result; a failure keeps the running configuration.",
        Samples::PerLabel("result", |m, _| {
            ReloadResult::ALL.map(|r| (r.as_str(), m.reloads(r))).to_vec()
        }),
    ),
    counter(
        "sipadmit_tls_reloads_total",
        "TLS context reloads (SIGHUP: certificate, key and CA files re-read, [tls] settings applied), by side and result; a failure keeps the side's running context.",
        Samples::Written(Metrics::write_tls_reloads),
    ),
    counter(
        "sipadmit_hep_exported_total",
        "HEPv3 packets sent to the collector (hep.collector), by type: sip (a SIP message received or sent, HEP type 1) or decision (a decision record, HEP log type 100).",
        Samples::PerLabel("type", |m, _| {
            HepPayload::ALL
                .map(|p| (p.as_str(), m.hep_exported(p)))
                .to_vec()
        }),
    ),
    counter(
        "sipadmit_hep_dropped_total",
        "HEPv3 packets dropped before they were sent, by reason: queue_full (the export queue was full) or too_large (over 65535 bytes).",
        Samples::PerLabel("reason", |m, _| {
            HepDrop::ALL.map(|r| (r.as_str(), m.hep_dropped(r))).to_vec()
        }),
    ),
    counter(
        "sipadmit_hep_send_failures_total",
        "HEPv3 packets not sent: udp: each whose send failed other than by the collector's refusal of an earlier datagram, or failed again after one; tcp: each not written, the collector down (reconnected with backoff), closing or stalled.",
        Samples::Atomic(|m| &m.hep_send_failures),
    ),
    counter(
        "sipadmit_hep_collector_refusals_total",
        "Refusals a UDP HEP collector's address sent back (ICMP port unreachable: nothing listened), each reported on a later send, which is tried again once; one report may stand for several refused datagrams. Non-zero while the collector is down: the packets sent then were lost.",
        Samples::Atomic(|m| &m.hep_collector_refusals),
    ),
    gauge(
        "sipadmit_config_generation",
        "Generation of the runtime configuration in use: 1 at start, one more per successful reload.",
        Samples::Scraped(|g| g.config_generation),
    ),
    Family {
        name: "sipadmit_message_handling_seconds",
        kind: "histogram",
        help: "Time to handle one SIP message: parse, classify, decide and hand it to the transport.",
        samples: Samples::Written(Metrics::write_handling_histogram),
    },
];

/// Text being written in the exposition format.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                // Label values are enum names and numbers: nothing to escape.
                let _ = write!(self.text, "{label}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision tables index by `as usize`: each `ALL` must list its
    /// enum in declaration order.
    #[test]
    fn decision_labels_index_their_cells() {
        assert!(Action::ALL
            .iter()
            .enumerate()
            .all(|(i, a)| *a as usize == i));
        assert!(SessionRole::ALL
            .iter()
            .enumerate()
            .all(|(i, r)| *r as usize == i));
        assert!(Support::ALL
            .iter()
            .enumerate()
            .all(|(i, s)| *s as usize == i));
        let metrics = Metrics::default();
        metrics.count_decision(Action::Drop, SessionRole::AgentOffer, Support::Scanner);
        assert_eq!(metrics.decisions("drop", "agent-offer", "scanner"), 1);
        assert_eq!(metrics.decisions("drop", "agent-offer", "unknown"), 0);
        assert_eq!(
            metrics.repeated_decisions("drop", "agent-offer", "scanner"),
            0
        );
    }

    #[test]
    fn every_family_has_help_and_type_and_the_prefix() {
        let metrics = Metrics::default();
        metrics.count_received(Transport::Udp, MessageKind::Request);
        metrics.count_relayed(Transport::Tcp, MessageKind::Response);
        metrics.count_decision(Action::Reject, SessionRole::Caller, Support::Unsupported);
        metrics.count_protocol_answer("proxy.malformed", Some(400));
        metrics.count_protocol_answer("ban.scanner", None);
        metrics.count_parse_error("malformed_start_line");
        metrics.count_local_response(403);
        metrics.count_reload(ReloadResult::Failure);
        metrics.observe_handling(Duration::from_micros(30));
        metrics.observe_handling(Duration::from_secs(1));
        metrics.count_fault(Fault::UpstreamConnect);
        Metrics::inc(&metrics.retransmissions);
        Metrics::inc(&metrics.connections_per_source_refused);
        Metrics::inc(&metrics.banned_messages);
        Metrics::inc(&metrics.bans);
        metrics.count_drop(DropReason::RateLimited);
        metrics.count_fault(Fault::MessageDeadline);
        Metrics::add(&metrics.registrations_evicted, 4);
        Metrics::add(&metrics.connections_evicted, 2);
        metrics
            .reserved_connections_in_use
            .store(3, Ordering::Relaxed);
        metrics.count_received(Transport::Tls, MessageKind::Request);
        metrics.count_tls_handshake(TlsSide::Listener);
        metrics.count_tls_handshake_failure(TlsSide::Upstream, HandshakeReason::BadCertificate);
        metrics.count_tls_reload(TlsSide::Listener, ReloadResult::Success);
        metrics.count_upstream_send_failure(Transport::Tls, "handshake".into());
        metrics.count_hep_exported(HepPayload::Decision, 3);
        metrics.count_hep_dropped(HepDrop::QueueFull);
        Metrics::add(&metrics.hep_send_failures, 2);
        Metrics::add(&metrics.hep_collector_refusals, 4);
        let text = metrics.render(&Gauges {
            connections: vec![(Transport::Tcp, 2), (Transport::Tls, 1)],
            registrations: 5,
            registrations_pending: 6,
            registration_table_bytes: 7,
            transactions: 8,
            transaction_table_bytes: 9,
            transactions_evicted: 11,
            decision_records_dropped: 0,
            decision_records_lost: 0,
            config_generation: 3,
            bans_in_force: 10,
            rate_limited_sources: 11,
            client_transactions: 12,
            client_transaction_bytes: 13,
            invites_toward_clients: 15,
            upstream_queue_bytes: 14,
        });
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            assert!(line.starts_with("sipadmit_"), "{line}");
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                typed.iter().any(|t| name == t
                    || name
                        .strip_prefix(t.as_str())
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "{name} has no TYPE before it"
            );
        }
        for wanted in [
            "sipadmit_received_total{transport=\"udp\",kind=\"request\"} 1",
            "sipadmit_relayed_total{transport=\"tcp\",kind=\"response\"} 1",
            "sipadmit_decisions_total{action=\"reject\",role=\"caller\",support=\"unsupported\"} 1",
            "sipadmit_protocol_answers_total{rule=\"proxy.malformed\",status=\"400\"} 1",
            "sipadmit_protocol_answers_total{rule=\"ban.scanner\",status=\"none\"} 1",
            "# TYPE sipadmit_decisions_repeated_total counter",
            "sipadmit_parse_errors_total{reason=\"malformed_start_line\"} 1",
            "sipadmit_invites_toward_clients 15",
            "sipadmit_local_responses_total{status=\"403\"} 1",
            "sipadmit_config_reloads_total{result=\"failure\"} 1",
            "sipadmit_config_generation 3",
            "sipadmit_open_connections{transport=\"tcp\"} 2",
            "sipadmit_registrations 5",
            "sipadmit_registrations_pending 6",
            "sipadmit_registration_table_bytes 7",
            "sipadmit_transactions 8",
            "sipadmit_transaction_table_bytes 9",
            "sipadmit_transactions_evicted_total 11",
            "sipadmit_transport_faults_total{kind=\"upstream_connect\"} 1",
            "sipadmit_transport_faults_total{kind=\"accept\"} 0",
            "sipadmit_retransmissions_total 1",
            "sipadmit_registrations_evicted_total 4",
            "sipadmit_registers_too_many_contacts_total 0",
            "sipadmit_registration_contacts_not_learned_total 0",
            "sipadmit_rate_limit_refused_connections_total{reason=\"max_per_source\"} 1",
            "sipadmit_rate_limit_refused_connections_total{reason=\"over_rate\"} 0",
            "sipadmit_rate_limit_refused_messages_total{reason=\"banned\"} 1",
            "sipadmit_rate_limit_bans_total 1",
            "sipadmit_rate_limit_bans 10",
            "sipadmit_rate_limit_tracked_sources 11",
            "sipadmit_dropped_total{reason=\"rate_limited\"} 1",
            "sipadmit_dropped_total{reason=\"banned\"} 0",
            "sipadmit_transport_faults_total{kind=\"message_deadline\"} 1",
            "sipadmit_udp_kernel_drops_total 0",
            "sipadmit_upstream_silent_requests_total 0",
            "sipadmit_read_budget_waits_total 0",
            "sipadmit_connections_evicted_total 2",
            "sipadmit_connections_reserved_total 0",
            "sipadmit_reserved_connections 3",
            "sipadmit_known_flows 0",
            "sipadmit_message_handling_seconds_bucket{le=\"0.00005\"} 1",
            "sipadmit_message_handling_seconds_bucket{le=\"0.1\"} 1",
            "sipadmit_message_handling_seconds_bucket{le=\"+Inf\"} 2",
            "sipadmit_message_handling_seconds_count 2",
            "sipadmit_build_info{version=\"",
            "sipadmit_received_total{transport=\"tls\",kind=\"request\"} 1",
            "sipadmit_relayed_total{transport=\"tls\",kind=\"response\"} 0",
            "sipadmit_open_connections{transport=\"tls\"} 1",
            "sipadmit_upstream_send_failures_total{transport=\"tls\"} 1",
            "sipadmit_tls_handshakes_total{side=\"listener\"} 1",
            "sipadmit_tls_handshakes_total{side=\"upstream\"} 0",
            "sipadmit_tls_handshake_failures_total{side=\"upstream\",reason=\"bad_certificate\"} 1",
            "sipadmit_tls_handshake_failures_total{side=\"listener\",reason=\"timeout\"} 0",
            "sipadmit_tls_reloads_total{side=\"listener\",result=\"success\"} 1",
            "sipadmit_tls_reloads_total{side=\"upstream\",result=\"failure\"} 0",
            "sipadmit_hep_exported_total{type=\"sip\"} 0",
            "sipadmit_hep_exported_total{type=\"decision\"} 3",
            "sipadmit_hep_dropped_total{reason=\"queue_full\"} 1",
            "sipadmit_hep_dropped_total{reason=\"too_large\"} 0",
            "sipadmit_hep_send_failures_total 2",
            "sipadmit_hep_collector_refusals_total 4",
        ] {
            assert!(text.contains(wanted), "{wanted} missing from\n{text}");
        }
        assert!(text.contains("sipadmit_message_handling_seconds_sum 1.00003"));
    }

    #[test]
    fn an_upstream_failure_is_forgotten_after_a_successful_send() {
        let metrics = Metrics::default();
        assert!(metrics.upstream_failure().is_none());
        metrics.count_upstream_send_failure(Transport::Tcp, "refused".into());
        assert_eq!(metrics.upstream_failure().unwrap().error, "refused");
        assert_eq!(metrics.upstream_send_failures(Transport::Tcp), 1);
        metrics.note_upstream_sent();
        assert!(metrics.upstream_failure().is_none());
        assert_eq!(metrics.upstream_send_failures(Transport::Tcp), 1);
    }
}
