//! Decision records: one JSON object per line for every admission decision,
//! with the field names operators' scripts rely on (design.md section 3),
//! written by a thread of their own so that a slow or stalled reader never
//! stalls the proxy.
//!
//! ```text
//! event loop ── DecisionLog::submit ──► bounded queue ──► writer thread ──► file │ stdout │ FIFO
//!                (never blocks;            (QUEUE_CAPACITY    (batches, at least
//!                 full: dropped,            records)           every FLUSH_INTERVAL)
//!                 counted, warned)
//! ```
//!
//! - A record is written whole or not at all: when a write fails part-way
//!   (a full disk), the torn line is cut off a regular file; on a pipe the
//!   next record starts on a fresh line. Records lost this way are counted.
//! - [`DecisionLog::reopen`] (SIGHUP) writes what is queued to the old file,
//!   then opens the configured path again, so logrotate can move the file away.
//! - [`LogWriter::shutdown`] writes what is queued and gives up after a
//!   deadline, so a reader that never reads cannot keep the process alive.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::classify::{Category, Support};
use crate::policy::{Action, Mode, SessionRole};
use crate::vocabulary::Transport;

/// Records the queue holds before [`DecisionLog::submit`] drops them: about
/// 80 ms of decisions at 50,000 per second, or with the batch the writer
/// holds (as many again) the 503s of a registrar connection that closes
/// with thousands of requests unanswered (about 1 KB each, so 8 MB at most
/// with the batch). The writer is woken early when the queue is half full,
/// so it drains long before the flush interval ends.
pub const QUEUE_CAPACITY: usize = 4096;
/// The longest a submitted record waits before the writer writes it: 100 ms.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// At most one "records dropped" (or "records lost") warning per 10 s.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a stopping process waits for the writer: 2 s.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);
/// Bytes of whole lines given to one `write` on a regular file (256 KiB).
/// Pipes get one line per `write`, so that a line of up to `PIPE_BUF`
/// (4096) bytes is written atomically and a stalled reader blocks the
/// writer between lines, never inside one.
const FILE_WRITE_BYTES: usize = 256 * 1024;
/// How often the writer retries opening a FIFO that could not be opened.
const OPEN_RETRY_INTERVAL: Duration = Duration::from_secs(10);

// === records ===

/// The fields the interface contract says every decision record carries
/// (design.md section 3), in the order they are written. A reader accepts
/// any line with these; the others are defaulted when missing.
pub const CONTRACT_FIELDS: [&str; 17] = [
    "ts",
    "transport",
    "source",
    "method",
    "call_id",
    "from",
    "to",
    "request_uri",
    "user_agent",
    "client",
    "category",
    "support",
    "role",
    "action",
    "rule",
    "status",
    "mode",
];

pub use crate::vocabulary::Leg;

impl Leg {
    /// The leg of a record written before legs were recorded: an agent
    /// offer is only ever decided on the registrar's leg (toward the
    /// agent); anything else is taken as the client's leg.
    pub fn default_for(role: SessionRole) -> Self {
        if role == SessionRole::AgentOffer {
            Self::FromRegistrar
        } else {
            Self::FromClient
        }
    }
}

/// What a record is: a policy decision, or a local answer for a protocol
/// or capacity reason (malformed request, loop, too many hops, a flow that
/// failed, the registrar unreachable or busy, a timeout, a rate limit, a
/// ban), which says nothing about the client's Response Group support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The admission policy decided (rules `caller.*`, `agent-offer.*`,
    /// `agent-registration.*`, `scanner`, `service`, `supported`,
    /// `no-session`).
    Policy,
    /// A local answer (or drop) for a protocol or capacity reason: rules
    /// `proxy.*`, `rate_limit.*`, `ban.*`.
    Protocol,
}

impl DecisionKind {
    /// The name used in decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Protocol => "protocol",
        }
    }

    /// The kind a rule names: `proxy.*`, `rate_limit.*` and `ban.*` are
    /// protocol and capacity answers, every other rule is the policy's.
    pub fn of_rule(rule: &str) -> Self {
        if ["proxy.", "rate_limit.", "ban."]
            .iter()
            .any(|prefix| rule.starts_with(prefix))
        {
            Self::Protocol
        } else {
            Self::Policy
        }
    }
}

/// Whether a policy record is counted once per call and client (the
/// report's default, and `sipadmit_decisions_total`), or is a repeat:
///
/// - a record of the client's leg is counted;
/// - a record of the registrar's leg is counted when it carries a decision
///   the client's leg did not: an agent offer (decided only on the leg
///   toward the agent, about the client that registered the agent), or a
///   request that never came through sipadmit from a client (`spiral`
///   false: a caller registered at the registrar directly, a gateway);
/// - a record of the registrar's leg of a request sipadmit already relayed
///   from a client (`spiral`: sipadmit's own Via, with its signed flow
///   token, is in it) is a repeat: it names the same client (the registrar
///   relays the caller's User-Agent) and the client's leg was counted;
/// - a retry after a challenge (`after_challenge`: the same source sends
///   the request again with credentials, after a `401` or `407` to it) is
///   a repeat: the same sign-in or call, its first attempt counted.
pub fn counted_once(leg: Leg, role: SessionRole, spiral: bool, after_challenge: bool) -> bool {
    (leg == Leg::FromClient || role == SessionRole::AgentOffer || !spiral) && !after_challenge
}

/// One admission decision. Serializes to exactly the JSON line `run`
/// writes, and deserializes from it (for `report`).
///
/// Reading follows the interface contract (design.md section 3): a line
/// with the contract's fields ([`CONTRACT_FIELDS`]) is a record. The other
/// fields may be missing (an older version's log, or one a log shipper
/// passed on) and are then defaulted (see each field); fields not known
/// here are ignored (no `deny_unknown_fields`). `user_agent` and `status`
/// may be `null`; like any `Option` field, serde also reads them as `null`
/// when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When the decision was made: RFC 3339 UTC with milliseconds
    /// (`2026-11-27T00:57:40.653Z`); see [`record_time`].
    #[serde(with = "rfc3339_millis")]
    pub ts: Timestamp,
    /// `udp`, `tcp` or `tls`.
    pub transport: Transport,
    /// Source `IP:port` of the message (`[::1]:5060` for IPv6).
    pub source: SocketAddr,
    /// The listener of sipadmit's the message arrived at, by its address
    /// (`IP:port`; for an unspecified bind address, the local address
    /// facing the registrar; for sipadmit's own connection to a TCP/TLS
    /// registrar, the listener of that transport facing it): which of
    /// several listeners a client used. Not one of the contract's fields:
    /// `None` when read from a line without it, and not written then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// Which leg: the request came from a client or from the registrar.
    /// `None` only when read from a line without it; [`Self::leg`] then
    /// gives the default ([`Leg::default_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<Leg>,
    /// Request method.
    pub method: String,
    /// Call-ID.
    pub call_id: String,
    /// From URI.
    pub from: String,
    /// To URI.
    pub to: String,
    /// Request-URI.
    pub request_uri: String,
    /// User-Agent as sent (`null` when missing).
    pub user_agent: Option<String>,
    /// Catalog id of the client the decision is about: the sender's
    /// classification, except for agent offers, where it is the client
    /// that registered the target endpoint.
    pub client: String,
    /// Catalog id of the request's own User-Agent: the client that sent
    /// it (on the registrar's leg, the one that sent it to the registrar,
    /// which relays the User-Agent unchanged). Differs from `client` for
    /// agent offers. Read as empty from a line without it.
    #[serde(default)]
    pub sender_client: String,
    /// The client's category, e.g. `desktop`, `third-party`.
    pub category: Category,
    /// The client's Response Group support, e.g. `supported`, `third-party`.
    pub support: Support,
    /// Session role: `caller`, `agent-offer`, `agent-registration`, `none`.
    pub role: SessionRole,
    /// `policy` or `protocol`. `None` only when read from a line without
    /// it; [`Self::kind`] then reads it from the rule
    /// ([`DecisionKind::of_rule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DecisionKind>,
    /// `allow`, `flag`, `reject` or `drop`.
    pub action: Action,
    /// Rule that decided: a policy rule such as `caller.unsupported`, or
    /// the cause of a protocol answer such as `proxy.malformed`.
    pub rule: Cow<'static, str>,
    /// Catalog rule that classified the client, e.g. `lync-mobile#1`. Not
    /// one of the contract's fields: read as empty (no catalog rule id is)
    /// from a line without it.
    #[serde(default)]
    pub client_rule: String,
    /// Status code sent by the filter (rejects, 430), else `null`.
    pub status: Option<u16>,
    /// `enforce` or `monitor`.
    pub mode: Mode,
    /// Monitor mode relayed a message enforce mode would have rejected.
    /// Not one of the contract's fields: `false` when read from a line
    /// without it.
    #[serde(default)]
    pub would_reject: bool,
    /// Generation of the runtime configuration that decided (1 for the
    /// configuration loaded at start; 0 when read from a record written
    /// before generations were recorded).
    #[serde(default)]
    pub generation: u64,
    /// On the registrar's leg: the request came through sipadmit from a
    /// client before (its own Via, with a valid flow token, is in it), so
    /// its client's leg is recorded too. Written only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub spiral: bool,
    /// The request retries one its source sent with the same method,
    /// Call-ID and From tag, which was answered `401` or `407` (a digest,
    /// NTLM or Kerberos challenge) in the last 32 s: it carries the
    /// credentials (`Authorization` or `Proxy-Authorization`). The same
    /// sign-in or call as that first attempt, so counted with it, once.
    /// Written only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub after_challenge: bool,
    /// A REGISTER that removes bindings: `Contact: *`, or every Contact
    /// with an expiry of 0 (its `expires` parameter, else the Expires
    /// header). Written only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unregister: bool,
    /// What the decision sent (the answer, or the message relayed) was for
    /// a TCP/TLS connection that had closed by then (a client that hung up
    /// while its request waited), or whose write queue had no room for it
    /// (a client that reads nothing): it was not delivered (counted in
    /// `sipadmit_dropped_total{reason="send_failed"}`). The decision
    /// stands; this says the peer never got it. Written only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub undelivered: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DecisionRecord {
    /// The leg, defaulted for a line without it ([`Leg::default_for`]).
    pub fn leg(&self) -> Leg {
        self.leg.unwrap_or_else(|| Leg::default_for(self.role))
    }

    /// The kind, read from the rule for a line without it.
    pub fn kind(&self) -> DecisionKind {
        self.kind
            .unwrap_or_else(|| DecisionKind::of_rule(&self.rule))
    }

    /// Whether this policy record counts once per call and client (see
    /// [`counted_once`]).
    pub fn counted_once(&self) -> bool {
        counted_once(self.leg(), self.role, self.spiral, self.after_challenge)
    }
}

/// The current time at the precision records keep (milliseconds), so that
/// a record read back equals the record written.
pub fn record_time() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// `ts` as RFC 3339 UTC with exactly three fractional digits.
mod rfc3339_millis {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{ts:.3}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// === the log ===

/// Why the decision log could not be opened or reopened.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    /// The file could not be opened.
    #[error("cannot open decision log {}: {error}", path.display())]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The OS error (part of the message, so not also a `source`).
        error: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the decision log writer thread: {0}")]
    Thread(io::Error),
    /// The writer has stopped (after [`LogWriter::shutdown`]).
    #[error("the decision log writer has stopped")]
    Stopped,
}

/// The handle the event loop submits records through. Cheap to clone;
/// every method returns at once (a short lock, no I/O).
#[derive(Clone)]
pub struct DecisionLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// The writer thread. Keep it until the end and call
/// [`LogWriter::shutdown`]; dropping it asks the thread to write what is
/// queued and stop, without waiting.
#[derive(Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// Disconnected when the thread has ended.
    finished: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// What the writer did, as [`LogWriter::shutdown`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records written whole.
    pub written: u64,
    /// Records dropped because the queue was full (or submitted after stop).
    pub dropped: u64,
    /// Records lost to failed writes (full disk, closed pipe, no file).
    pub lost: u64,
    /// Records still queued or being written when the deadline passed.
    pub unwritten: u64,
    /// The writer finished within the deadline.
    pub finished: bool,
}

/// Where records go: `-` is stdout, anything else a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Stdout,
    Path(PathBuf),
}

impl Target {
    fn parse(target: &str) -> Self {
        if target == "-" {
            Self::Stdout
        } else {
            Self::Path(PathBuf::from(target))
        }
    }
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    target: Target,
    capacity: usize,
    flush_interval: Duration,
    state: Mutex<State>,
    /// Wakes the writer: records waiting while it idles, the queue half
    /// full, a request, stop.
    wake: Condvar,
    written: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    /// Records the writer has taken from the queue and not yet written or lost.
    in_flight: AtomicU64,
}

impl Shared {
    /// What a log of `target` and its writer share: an empty queue of
    /// `capacity` records (at least 2), written at least every
    /// `flush_interval`.
    fn new(target: Target, capacity: usize, flush_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            target,
            capacity: capacity.max(2),
            flush_interval,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        })
    }
}

#[derive(Debug, Default)]
struct State {
    queue: Vec<DecisionRecord>,
    /// When the oldest queued record was submitted.
    oldest: Option<Instant>,
    requests: Vec<Request>,
    /// The writer waits for records (nothing queued, nothing held).
    writer_idle: bool,
    stopping: bool,
    /// The writer took its last batch; later records are dropped.
    closed: bool,
    drops_since_warning: u64,
    last_drop_warning: Option<Instant>,
}

#[derive(Debug)]
enum Request {
    Flush(oneshot::Sender<()>),
    Reopen(oneshot::Sender<Result<(), DecisionLogError>>),
}

/// The drops to warn about now (taken, and the warning's time noted), if
/// [`WARNING_INTERVAL`] has passed since the last warning; `None` if not.
fn take_drops_due(state: &mut State, now: Instant) -> Option<u64> {
    let due = state
        .last_drop_warning
        .is_none_or(|at| now.saturating_duration_since(at) >= WARNING_INTERVAL);
    due.then(|| {
        state.last_drop_warning = Some(now);
        std::mem::take(&mut state.drops_since_warning)
    })
}

/// The rules of answers to what a flood sends: over a rate limit, banned,
/// or refused unread (see [`yields_to_others`]).
const FLOOD_RULES: [&str; 6] = [
    "rate_limit.requests",
    "proxy.malformed",
    "proxy.too-large",
    "proxy.too-many-headers",
    "proxy.invalid-flow-token",
    "proxy.bad-extension",
];

/// A record that yields the last quarter of the queue to the others (see
/// [`DecisionLog::submit`]): a drop (a scanner, a ban, an ACK nothing can
/// answer), or the answer to what a flood sends ([`FLOOD_RULES`]). The
/// answers to legitimate clients that sipadmit gives itself (the
/// registrar unavailable, a timeout, draining) do not yield.
fn yields_to_others(record: &DecisionRecord) -> bool {
    record.action == Action::Drop
        || record.rule.starts_with("ban.")
        || FLOOD_RULES.contains(&&*record.rule)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DecisionLog {
    /// Open `-` (stdout) or a file (appended to, created if missing) and
    /// start the writer thread. A regular file is opened here, so that an
    /// error (permission denied, no such directory) fails start-up with the
    /// path named; a FIFO is opened by the writer thread, because opening
    /// one blocks until a reader opens it.
    pub fn open(target: &str) -> Result<(Self, LogWriter), DecisionLogError> {
        Self::open_with(target, QUEUE_CAPACITY, FLUSH_INTERVAL)
    }

    fn open_with(
        target: &str,
        capacity: usize,
        flush_interval: Duration,
    ) -> Result<(Self, LogWriter), DecisionLogError> {
        let target = Target::parse(target);
        let sink = match &target {
            Target::Stdout => Some(open_stdout().map_err(|error| DecisionLogError::Open {
                path: PathBuf::from("-"),
                error,
            })?),
            Target::Path(path) if is_fifo(path) => None,
            Target::Path(path) => {
                Some(open_file(path).map_err(|error| DecisionLogError::Open {
                    path: path.clone(),
                    error,
                })?)
            }
        };
        start(target, sink, capacity, flush_interval)
    }

    /// Queue one record for the writer. Never blocks and does no I/O: when
    /// the queue is full the record is dropped and counted, and a warning
    /// (at most one per [`WARNING_INTERVAL`]) says how many were dropped
    /// since the last one.
    ///
    /// The last quarter of the queue is kept for the legitimate clients'
    /// records: a record of a drop (a scanner, a ban, an ACK nothing can
    /// answer) or of an answer to what a flood sends (malformed, too large,
    /// over a rate limit) is dropped once the queue is three quarters full,
    /// so that a flood does not crowd them out.
    pub fn submit(&self, record: DecisionRecord) {
        let shared = &*self.shared;
        let mut state = lock(&shared.state);
        let room = if yields_to_others(&record) {
            shared.capacity - shared.capacity / 4
        } else {
            shared.capacity
        };
        if state.closed || state.queue.len() >= room {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            state.drops_since_warning += 1;
            let warning = take_drops_due(&mut state, Instant::now());
            drop(state);
            drop(record);
            if let Some(dropped) = warning {
                self.warn_dropped(dropped);
            }
            return;
        }
        if state.queue.is_empty() {
            state.oldest = Some(Instant::now());
        }
        state.queue.push(record);
        let len = state.queue.len();
        let wake = (state.writer_idle && len == 1) || len == shared.capacity / 2;
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Warn about records dropped since the last warning, if any were and
    /// [`WARNING_INTERVAL`] has passed since it (called every second, so a
    /// burst of drops that ended is reported too, not only at shutdown).
    /// Returns how many it warned about.
    pub fn warn_of_drops(&self, now: Instant) -> Option<u64> {
        let dropped = {
            let mut state = lock(&self.shared.state);
            if state.drops_since_warning == 0 {
                return None;
            }
            take_drops_due(&mut state, now)?
        };
        self.warn_dropped(dropped);
        Some(dropped)
    }

    fn warn_dropped(&self, dropped: u64) {
        warn!(
            dropped,
            dropped_total = self.shared.dropped.load(Ordering::Relaxed),
            queue_capacity = self.shared.capacity,
            "decision log queue full (the log is not keeping up): records dropped since the last warning"
        );
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records written whole so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records lost so far to failed writes.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Ask the writer to write what is queued to the current file, then
    /// open the configured path again (SIGHUP: logrotate has moved the file
    /// away). The answer comes when that is done; if the path cannot be
    /// opened, the writer keeps the old file. A no-op for stdout.
    pub fn reopen(&self) -> oneshot::Receiver<Result<(), DecisionLogError>> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Reopen(tx));
        rx
    }

    /// Ask the writer to write every record submitted so far; answered
    /// when they are written (or lost). Dropped unanswered when the writer
    /// has stopped.
    pub fn flush(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Flush(tx));
        rx
    }

    fn request(&self, request: Request) {
        let mut state = lock(&self.shared.state);
        if state.closed {
            if let Request::Reopen(tx) = request {
                let _ = tx.send(Err(DecisionLogError::Stopped));
            }
            return;
        }
        state.requests.push(request);
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl LogWriter {
    /// Stop the writer: it writes what is queued, then ends. Waits at most
    /// `deadline` (a writer blocked on a pipe nobody reads, or on opening a
    /// FIFO nobody opens, is left behind and ends with the process); the
    /// report says how many records were then left unwritten.
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.ask_to_stop();
        let finished = matches!(
            self.finished.recv_timeout(deadline),
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(())
        );
        let unwritten = if finished {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            0
        } else {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.queue.len() as u64 + self.shared.in_flight.load(Ordering::Relaxed)
        };
        ShutdownReport {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            lost: self.shared.lost.load(Ordering::Relaxed),
            unwritten,
            finished,
        }
    }

    fn ask_to_stop(&self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.ask_to_stop();
    }
}

/// Start the writer thread over `sink` (`None`: open `target` in the thread).
fn start(
    target: Target,
    sink: Option<Box<dyn Sink>>,
    capacity: usize,
    flush_interval: Duration,
) -> Result<(DecisionLog, LogWriter), DecisionLogError> {
    let shared = Shared::new(target, capacity, flush_interval);
    let (finished_tx, finished) = mpsc::channel::<()>();
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("decision-log".into())
        .spawn(move || {
            let _finished = finished_tx;
            Writer::new(thread_shared, sink).run();
        })
        .map_err(DecisionLogError::Thread)?;
    Ok((
        DecisionLog {
            shared: shared.clone(),
        },
        LogWriter {
            shared,
            finished,
            thread: Some(thread),
        },
    ))
}

// === sinks ===

/// Where the writer puts bytes.
trait Sink: Send {
    /// One `write` call: how many bytes were taken.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Whether several lines may go into one `write` (regular files); else
    /// one line per `write` (pipes).
    fn takes_many_lines(&self) -> bool;
    /// Remove the last `tail` bytes written (a torn line). `Ok(false)` when
    /// this sink cannot (pipes, terminals).
    fn cut_tail(&mut self, tail: u64) -> io::Result<bool>;
    /// Whether what is already there ends in an unfinished line (a file
    /// left so by a crash in the middle of a write): the first record then
    /// starts on a new line.
    fn ends_unfinished(&self) -> bool {
        false
    }
}

/// A file, pipe, FIFO or terminal.
struct FileSink {
    file: File,
    regular: bool,
    /// It was opened ending in an unfinished line.
    unfinished: bool,
}

impl Sink for FileSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn takes_many_lines(&self) -> bool {
        self.regular
    }

    fn cut_tail(&mut self, tail: u64) -> io::Result<bool> {
        if !self.regular {
            return Ok(false);
        }
        // Appending: the torn bytes are the file's last ones.
        let len = self.file.metadata()?.len();
        self.file.set_len(len.saturating_sub(tail))?;
        // For a descriptor without O_APPEND (stdout redirected with `>`).
        self.file.seek(io::SeekFrom::End(0))?;
        Ok(true)
    }

    fn ends_unfinished(&self) -> bool {
        self.unfinished
    }
}

fn file_sink(file: File) -> io::Result<Box<dyn Sink>> {
    let regular = file.metadata()?.is_file();
    Ok(Box::new(FileSink {
        file,
        regular,
        unfinished: false,
    }))
}

/// Whether the regular file at `path`, the one `opened` (not another one
/// renamed into its place since), ends in an unfinished line: its last byte
/// is no line feed. `false` when that cannot be read (logged).
fn ends_unfinished(path: &Path, opened: &std::fs::Metadata) -> bool {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, nix::libc::O_NONBLOCK);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(error) => {
            debug!(path = %path.display(), %error, "decision log not readable: whether it ends in an unfinished line is not known");
            return false;
        }
    };
    let same = |m: &std::fs::Metadata| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            m.dev() == opened.dev() && m.ino() == opened.ino()
        }
        #[cfg(not(unix))]
        {
            let _ = (m, opened);
            true
        }
    };
    let mut last = [0u8; 1];
    file.metadata()
        .is_ok_and(|m| same(&m) && m.is_file() && m.len() > 0)
        && file.seek(io::SeekFrom::End(-1)).is_ok()
        && file.read_exact(&mut last).is_ok()
        && last[0] != b'\n'
}

/// Open (append) the log file; a new one is created `0640` (owner
/// read-write, group read: the records name users and addresses), whatever
/// the umask allows beyond that.
fn open_file(path: &Path) -> io::Result<Box<dyn Sink>> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    let regular = metadata.is_file();
    Ok(Box::new(FileSink {
        file,
        regular,
        unfinished: regular && ends_unfinished(path, &metadata),
    }))
}

/// A descriptor of its own for stdout, so that the writer neither takes
/// the process's stdout lock nor its buffer.
fn open_stdout() -> io::Result<Box<dyn Sink>> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        file_sink(File::from(io::stdout().as_fd().try_clone_to_owned()?))
    }
    #[cfg(not(unix))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a decision log on stdout needs a Unix system",
        ))
    }
}

fn is_fifo(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

// === the writer thread ===

struct Writer {
    shared: Arc<Shared>,
    sink: Option<Box<dyn Sink>>,
    /// When to try opening the target again after a failed open.
    next_open: Option<Instant>,
    /// A torn line was left on a sink that cannot cut it: start the next
    /// write with a line break.
    torn: bool,
    batch: Vec<DecisionRecord>,
    bytes: Vec<u8>,
    /// End offset in `bytes` of each line, and whether it is a record.
    lines: Vec<(usize, bool)>,
    lost_since_warning: u64,
    last_lost_warning: Option<Instant>,
    /// Why the last of those records was lost: a write's error, the log
    /// not open, a record that could not be serialized.
    loss_cause: String,
}

impl Writer {
    fn new(shared: Arc<Shared>, sink: Option<Box<dyn Sink>>) -> Self {
        let mut writer = Self {
            next_open: Some(Instant::now()),
            shared,
            sink: None,
            torn: false,
            batch: Vec::new(),
            bytes: Vec::new(),
            lines: Vec::new(),
            lost_since_warning: 0,
            last_lost_warning: None,
            loss_cause: String::new(),
        };
        if let Some(sink) = sink {
            writer.install(sink);
        }
        writer
    }

    /// Write to `sink` from now on: after a line break when it ends in an
    /// unfinished line (told once, as a warning).
    fn install(&mut self, sink: Box<dyn Sink>) {
        // A pipe or FIFO at the same path still carries the torn line
        // the last write left on it; a regular file says itself.
        let torn_before = self.torn && !sink.takes_many_lines();
        self.torn = sink.ends_unfinished() || torn_before;
        if sink.ends_unfinished() {
            let path = match &self.shared.target {
                Target::Path(path) => path.display().to_string(),
                Target::Stdout => "-".into(),
            };
            warn!(
                path,
                "decision log ends in an unfinished line (left by a crash?): new records start on a line of their own"
            );
        }
        self.sink = Some(sink);
        self.next_open = None;
    }

    fn run(mut self) {
        if self.sink.is_none() {
            self.open_target();
        }
        while self.turn() {}
    }

    /// One turn of the writer: wait for records, write them, answer the
    /// requests; `false` once the log has stopped.
    fn turn(&mut self) -> bool {
        let (requests, last) = self.take_batch();
        self.write_batch();
        // Losses held back are told once their interval is over, also
        // when nothing more comes to write.
        self.warn_lost(false);
        for request in requests {
            match request {
                Request::Flush(tx) => {
                    let _ = tx.send(());
                }
                Request::Reopen(tx) => {
                    let _ = tx.send(self.reopen());
                }
            }
        }
        if last {
            self.warn_lost(true);
        }
        !last
    }

    /// Wait for records (at most until the oldest is `flush_interval` old,
    /// earlier when the queue is half full, a request comes or the log
    /// stops), then take them all. Returns the requests and whether this is
    /// the last batch.
    fn take_batch(&mut self) -> (Vec<Request>, bool) {
        let shared = &*self.shared;
        let mut state = lock(&shared.state);
        let told_at = self.lost_warning_due();
        while state.queue.is_empty() && state.requests.is_empty() && !state.stopping {
            state.writer_idle = true;
            let Some(told_at) = told_at else {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            // Idle with losses held back: up when they are due.
            match told_at.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => {
                    state = shared
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => break,
            }
        }
        state.writer_idle = false;
        let due = state.oldest.map(|t| t + shared.flush_interval);
        while state.requests.is_empty()
            && !state.stopping
            && state.queue.len() < shared.capacity / 2
        {
            let Some(wait) = due.and_then(|d| d.checked_duration_since(Instant::now())) else {
                break;
            };
            if wait.is_zero() {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut state.queue, &mut self.batch);
        state.oldest = None;
        let requests = std::mem::take(&mut state.requests);
        let last = state.stopping;
        if last {
            state.closed = true;
        }
        shared
            .in_flight
            .store(self.batch.len() as u64, Ordering::Relaxed);
        (requests, last)
    }

    /// Write the taken records, each line whole or not at all.
    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.sink.is_none() && self.next_open.is_some_and(|at| Instant::now() >= at) {
            self.open_target();
        }
        self.serialize_batch();
        let records = self.lines.iter().filter(|(_, r)| *r).count() as u64;
        let Some(sink) = self.sink.as_mut() else {
            self.count_lost(records, "the log is not open");
            self.warn_lost(false);
            return;
        };
        let Progress {
            pos,
            next_line,
            failure,
        } = write_lines(&mut **sink, &self.bytes, &self.lines, &self.shared);
        if next_line > 0 {
            self.torn = false;
        }
        let Some(error) = failure else {
            // Writing again: what was lost before and held back is told
            // now (once its interval is over), not only at the stop.
            self.warn_lost(false);
            return;
        };
        let complete = next_line.checked_sub(1).map_or(0, |i| self.lines[i].0);
        let tail = (pos - complete) as u64;
        if tail > 0 && !cut_torn_tail(&mut **sink, tail) {
            self.torn = true;
        }
        let lost = self.lines[next_line..].iter().filter(|(_, r)| *r).count() as u64;
        self.count_lost(lost, error.to_string());
        self.warn_lost(false);
    }

    /// Turn the taken records into JSON lines in `bytes` (after a line
    /// break when the last write left a torn line), noting where each line
    /// ends in `lines`. Records that cannot be serialized are counted lost.
    fn serialize_batch(&mut self) {
        self.bytes.clear();
        self.lines.clear();
        if self.torn {
            self.bytes.push(b'\n');
            self.lines.push((1, false));
        }
        let mut unserializable = 0;
        for record in self.batch.drain(..) {
            let start = self.bytes.len();
            if serde_json::to_writer(&mut self.bytes, &record).is_err() {
                self.bytes.truncate(start);
                unserializable += 1;
                continue;
            }
            self.bytes.push(b'\n');
            self.lines.push((self.bytes.len(), true));
        }
        if unserializable > 0 {
            self.count_lost(unserializable, "a record could not be serialized");
            self.warn_lost(false);
        }
    }

    fn count_lost(&mut self, n: u64, cause: impl Into<String>) {
        self.loss_cause = cause.into();
        self.shared.lost.fetch_add(n, Ordering::Relaxed);
        self.shared.in_flight.fetch_sub(
            n.min(self.shared.in_flight.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.lost_since_warning += n;
    }

    /// When the losses held back are to be told, if any are.
    fn lost_warning_due(&self) -> Option<Instant> {
        (self.lost_since_warning > 0).then(|| {
            self.last_lost_warning
                .map_or_else(Instant::now, |t| t + WARNING_INTERVAL)
        })
    }

    /// Warn about the records lost since the last warning, with the cause
    /// of the last loss, at most once per [`WARNING_INTERVAL`] unless
    /// `now` (the last word before stopping).
    fn warn_lost(&mut self, now: bool) {
        let at = Instant::now();
        let due = now
            || self
                .last_lost_warning
                .is_none_or(|t| at.duration_since(t) >= WARNING_INTERVAL);
        if !due || self.lost_since_warning == 0 {
            return;
        }
        self.last_lost_warning = Some(at);
        let lost = std::mem::take(&mut self.lost_since_warning);
        let lost_total = self.shared.lost.load(Ordering::Relaxed);
        warn!(
            lost,
            lost_total,
            cause = %self.loss_cause,
            "decision records could not be written: lost since the last warning"
        );
    }

    /// Open the configured target in this thread (a FIFO at start, or a
    /// retry after a failed open).
    fn open_target(&mut self) {
        match self.open_configured() {
            Ok(sink) => self.install(sink),
            Err(e) => {
                self.next_open = Some(Instant::now() + OPEN_RETRY_INTERVAL);
                warn!(error = %e, retry_in_s = OPEN_RETRY_INTERVAL.as_secs(), "decision log not open");
            }
        }
    }

    fn open_configured(&self) -> Result<Box<dyn Sink>, DecisionLogError> {
        match &self.shared.target {
            Target::Stdout => open_stdout().map_err(|error| DecisionLogError::Open {
                path: PathBuf::from("-"),
                error,
            }),
            Target::Path(path) => open_file(path).map_err(|error| DecisionLogError::Open {
                path: path.clone(),
                error,
            }),
        }
    }

    /// Open the configured path again; keep the old file when that fails.
    fn reopen(&mut self) -> Result<(), DecisionLogError> {
        if self.shared.target == Target::Stdout {
            return Ok(());
        }
        let sink = self.open_configured()?;
        self.install(sink);
        Ok(())
    }
}

/// How far [`write_lines`] got.
struct Progress {
    /// Bytes written.
    pos: usize,
    /// Lines written whole (the index of the first line not written whole).
    next_line: usize,
    /// The error that stopped the writing, if any.
    failure: Option<io::Error>,
}

/// Write `bytes` (lines ending at the offsets in `lines`) to `sink`: in
/// chunks of whole lines up to [`FILE_WRITE_BYTES`] when it takes many
/// lines, else one line per write. Each record line written whole counts
/// as written (and no longer in flight). Stops at the first error.
fn write_lines(
    sink: &mut dyn Sink,
    bytes: &[u8],
    lines: &[(usize, bool)],
    shared: &Shared,
) -> Progress {
    let many = sink.takes_many_lines();
    let mut pos = 0;
    let mut next_line = 0;
    let mut failure = None;
    while pos < bytes.len() {
        let end = if many {
            chunk_end(&lines[next_line..], pos + FILE_WRITE_BYTES)
        } else {
            lines[next_line].0
        };
        match sink.write(&bytes[pos..end]) {
            Ok(0) => {
                failure = Some(io::Error::from(io::ErrorKind::WriteZero));
                break;
            }
            Ok(n) => {
                pos += n;
                while next_line < lines.len() && lines[next_line].0 <= pos {
                    if lines[next_line].1 {
                        shared.written.fetch_add(1, Ordering::Relaxed);
                        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    next_line += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    Progress {
        pos,
        next_line,
        failure,
    }
}

/// Cut the last `tail` bytes (a torn line) off `sink`. Returns `false`
/// when the torn line stays (the sink cannot cut, or cutting failed: that
/// is logged).
fn cut_torn_tail(sink: &mut dyn Sink, tail: u64) -> bool {
    match sink.cut_tail(tail) {
        Ok(true) => true,
        Ok(false) => false,
        Err(e) => {
            warn!(error = %e, "decision log: a torn line could not be cut off");
            false
        }
    }
}

/// The end of the last whole line within `limit`, or of the first line if
/// that alone is longer. `lines` holds the lines not yet written (not empty).
fn chunk_end(lines: &[(usize, bool)], limit: usize) -> usize {
    match lines.partition_point(|(end, _)| *end <= limit) {
        0 => lines[0].0,
        within => lines[within - 1].0,
    }
}

#[cfg(test)]
mod tests;
