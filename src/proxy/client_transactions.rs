//! Client transactions for requests that arrive over a reliable transport
//! (TCP, TLS) and leave over UDP (RFC 3261 17.1).
//!
//! A client on a stream never retransmits (17.1.1.2: only unreliable
//! transports do), so when sipadmit relays its request over UDP, a lost
//! datagram (a registrar's receive buffer overflowing in a reconnect storm)
//! would lose the request for good. For those requests only, sipadmit keeps
//! the client transaction RFC 3261 gives a stateful element:
//!
//! - Timer A / E: the request is sent again after T1, then at doubling
//!   intervals; a non-INVITE's interval is capped at T2 (17.1.2.2), and
//!   after a provisional response it is resent every T2.
//! - The first response ends an INVITE's retransmissions (17.1.1.2: a
//!   provisional moves it to Proceeding, where the transaction layer no
//!   longer resends); a final response ends a non-INVITE's. A ringing
//!   INVITE is remembered until Timer C (`limits.timer_c_secs`, 3 minutes
//!   by default, 16.6 step 11) after its last provisional response, so
//!   that its final response and the copies of it are told apart however
//!   long it rang. If Timer C runs out first (a registrar that died while
//!   it rang), the registrar is sent its CANCEL and the client answered
//!   `408` ([`Due::RangOut`], 16.8), so that no caller waits on a call
//!   nobody will answer. That CANCEL is a client transaction of sipadmit's
//!   own ([`ClientTransactions::start_own`]): resent as any until its final
//!   answer or 64*T1, its answers consumed ([`Answered::Own`]) and its
//!   timeout answered to nobody. The INVITE's non-2xx final answer (the
//!   `487` the CANCEL brings), and each copy of it, is acknowledged by
//!   sipadmit ([`Answered::RungOut`]; 17.1.1.3), as the client transaction
//!   that sent the INVITE does.
//! - Timer B / F: with no response (INVITE) or no final response
//!   (non-INVITE) 64*T1 after the first send, the client is answered
//!   `408 Request Timeout` by sipadmit ([`Due::TimedOut`]). The transaction
//!   is remembered for another 64*T1: a late response to it is not relayed
//!   after that final answer ([`Answered::AfterTimeout`]; RFC 3261 16.7
//!   step 5), except a 2xx to an INVITE, which always is. A timeout that
//!   fires late (this process was frozen, a paused VM or SIGSTOP) is put
//!   off once for a moment, so that an answer queued on a socket since
//!   before its time is read first.
//! - Copies of a final response (the registrar resends one for each copy
//!   of the request it got, and a non-2xx to an INVITE until it is
//!   acknowledged), and anything after it, are not relayed to the client
//!   for 64*T1 after the final one was ([`Answered::AfterFinal`]; RFC 3261
//!   16.7 step 5: after a final response only a 2xx to an INVITE goes on).
//!   The client's ACK of a non-2xx to an INVITE is remembered with it
//!   ([`ClientTransactions::acknowledged`]): a copy of that final response,
//!   which says the ACK was lost, sends the ACK again instead
//!   ([`Answered::AckAgain`]; RFC 3261 17.1.1.2, Completed state: the
//!   client on its stream, with Timer D at 0, would not).
//! - ACK is never a transaction (17.1.1.3); CANCEL is a non-INVITE
//!   transaction of its own with the INVITE's branch, told apart by its
//!   CSeq method (17.1.3).
//!
//! Requests between two UDP peers are relayed statelessly, as before: the
//! client retransmits them itself. The table is pure (the clock is passed
//! in) and bounded in bytes: the memory of ended transactions gives way to
//! a new one, oldest first; a request that still finds no room is relayed
//! once without a transaction and counted ([`Start::NoRoom`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Inbound, Outbound};

/// RFC 3261 timer values (17.1.1.1, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1, the round-trip estimate: the first retransmission interval, and
    /// 64*T1 is the transaction timeout. RFC default 500 ms.
    pub t1: Duration,
    /// T2, the cap of a non-INVITE's retransmission interval. RFC default 4 s.
    pub t2: Duration,
    /// Timer C (16.6 step 11): how long an INVITE that got a provisional
    /// response may go on without another; then it is cancelled and its
    /// client answered `408` ([`Due::RangOut`]). More than 3 minutes by
    /// the RFC (a UAS sends a provisional response at least every minute,
    /// 13.3.1.1); 180 s here.
    pub timer_c: Duration,
}

impl Timers {
    /// The RFC 3261 defaults: T1 = 500 ms, T2 = 4 s, Timer C 180 s.
    pub const RFC3261: Self = Self {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        timer_c: Duration::from_secs(180),
    };

    /// Timer B / F: 64*T1.
    pub fn timeout(self) -> Duration {
        self.t1 * 64
    }
}

/// Which kind of client transaction a request starts: the CSeq method
/// tells an INVITE from the CANCEL that shares its branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransactionMethod {
    /// INVITE: retransmitted until any response.
    Invite,
    /// CANCEL: a non-INVITE transaction with the INVITE's branch.
    Cancel,
    /// Every other non-INVITE method (REGISTER, OPTIONS, BYE, ...).
    Other,
}

impl TransactionMethod {
    /// The method class of a CSeq method; `None` for ACK, which is never
    /// a transaction of its own.
    pub fn of(cseq_method: &[u8]) -> Option<Self> {
        match cseq_method {
            b"INVITE" => Some(Self::Invite),
            b"CANCEL" => Some(Self::Cancel),
            b"ACK" => None,
            _ => Some(Self::Other),
        }
    }

    /// The method class of `message`'s CSeq; `None` for ACK, or without
    /// a CSeq.
    pub fn of_view(message: &crate::sip::SipView) -> Option<Self> {
        Self::of(message.cseq().ok()?.method)
    }
}

/// What identifies a client transaction (RFC 3261 17.1.3): the branch of
/// the Via sipadmit put on the request, and the CSeq method class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey {
    /// sipadmit's branch, as the proxy's two branch parts.
    pub branch: (u64, u32),
    /// INVITE, CANCEL or another method.
    pub method: TransactionMethod,
}

/// A client transaction to keep: what to resend, and the request it was
/// relayed from (answered `408` on timeout).
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Its key.
    pub key: TransactionKey,
    /// The request as relayed (resent as is).
    pub send: Outbound,
    /// The request as it arrived from the client.
    pub inbound: Inbound,
}

/// What [`ClientTransactions::start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Kept: it is retransmitted until answered.
    Started,
    /// A transaction with this key is already kept (the client sent the
    /// request again): nothing changes.
    Known,
    /// The table is at its byte bound: relayed once, not retransmitted.
    NoRoom,
}

/// What a response was to the kept transactions
/// ([`ClientTransactions::answered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// It answers a kept transaction.
    Kept,
    /// It answers one that timed out in the last 64*T1: its client was
    /// answered `408` by sipadmit already.
    AfterTimeout,
    /// It answers a request of sipadmit's own (the CANCEL of an INVITE
    /// that rang through Timer C), kept or ended in the last 64*T1:
    /// consumed, it concerns no client.
    Own,
    /// A non-2xx final response (or a copy of it) to an INVITE that rang
    /// through Timer C in the last 64*T1 and whose client was answered
    /// `408`: acknowledge it (RFC 3261 17.1.1.3) with the ACK built from
    /// this request, the INVITE as relayed.
    RungOut(Outbound),
    /// It answers one whose final response was relayed in the last 64*T1:
    /// a copy of it (the registrar resends a final response until it is
    /// acknowledged, or for each copy of the request it got), or one that
    /// comes after it.
    AfterFinal,
    /// A copy of a non-2xx final response to an INVITE whose ACK went out
    /// (RFC 3261 17.1.1.2): the registrar did not get it. Send it again.
    AckAgain(Outbound),
    /// A provisional response to a kept INVITE, which now rings without
    /// Timer C: no room to keep its request (`limits.client_transaction_bytes`).
    /// Relayed as [`Answered::Kept`] is.
    RingsWithoutTimerC,
    /// It answers none.
    Unknown,
}

/// What a timer that fired asks for.
#[derive(Debug)]
pub enum Due {
    /// Send the request again (relayed from the request it carries; the
    /// transaction's key, to end it when the send fails).
    Retransmit(Outbound, Inbound, TransactionKey),
    /// No (final) response within 64*T1: answer the client `408`.
    TimedOut(Inbound),
    /// Given up when a drain ran out ([`ClientTransactions::give_up_all`]):
    /// answer the client the drain's `408`.
    GivenUp(Inbound),
    /// An INVITE rang through Timer C without another provisional or a
    /// final response (16.8: a registrar that died while it rang): send
    /// the registrar the CANCEL of the request as relayed (the
    /// transaction's `send`; kept with [`ClientTransactions::start_own`]),
    /// and answer the client `408`. The CANCEL's answers are then
    /// [`Answered::Own`], the INVITE's non-2xx final answer (its `487`)
    /// [`Answered::RungOut`], and its provisional ones discarded as after
    /// a timeout (a 2xx to the INVITE still goes on).
    RangOut(Transaction),
    /// An INVITE still ringing when a drain ran out
    /// ([`ClientTransactions::give_up_all`]): as [`Due::RangOut`], its
    /// client answered the drain's `408`.
    RingingGivenUp(Transaction),
}

/// One kept transaction.
#[derive(Debug)]
struct Entry {
    transaction: Transaction,
    /// Timer B / F: when it times out.
    gives_up: Instant,
    /// The interval before the next retransmission.
    interval: Duration,
    /// A non-INVITE got a provisional response: resent every T2.
    proceeding: bool,
    /// Given up by a drain that ran out, not timed out.
    given_up: bool,
    /// Its timeout came late and was put off by [`LATE_TIMEOUT_GRACE`]
    /// (once).
    graced: bool,
    /// A request of sipadmit's own ([`ClientTransactions::start_own`]):
    /// its answers and its timeout concern no client.
    own: bool,
    /// The timer of this entry that is live in the heap (older ones are
    /// stale and skipped).
    timer: u64,
    /// Bytes this entry accounts for.
    bytes: usize,
}

/// A timeout that comes this late (Timer B/F fired this long after its
/// time) tells that this process was frozen (a paused VM, SIGSTOP) or held
/// up, with what came meanwhile not read yet.
const LATE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a late timeout is put off (once), so that every worker reads
/// the answers queued on its sockets first.
const LATE_TIMEOUT_GRACE: Duration = Duration::from_millis(200);

/// A timer in the heap: (when, timer id, key).
type Timer = Reverse<(Instant, u64, TransactionKey)>;

/// Fixed bytes an entry costs beyond its two messages: the entry and its
/// key in the map, with the map's slack (its timer is counted with the
/// heap's).
const ENTRY_OVERHEAD: usize =
    2 * (std::mem::size_of::<Entry>() + std::mem::size_of::<TransactionKey>());
/// Bytes a timer in the heap costs (stale ones included, until they fire).
const TIMER_BYTES: usize = std::mem::size_of::<Timer>();
/// Bytes a transaction that ended costs while it is remembered: its entry
/// in the map and in the queue, each with its container's slack.
const ENDED_BYTES: usize = 2 * std::mem::size_of::<(TransactionKey, (Instant, Ending))>()
    + 2 * std::mem::size_of::<(Instant, TransactionKey)>();
/// Bytes an ACK remembered with its INVITE costs beyond its own: its entry
/// in the map, with the map's slack.
const ACK_OVERHEAD: usize = 2 * std::mem::size_of::<(TransactionKey, Outbound)>();

/// A ringing INVITE's request, kept for its Timer C.
#[derive(Debug)]
struct Ringing {
    transaction: Transaction,
    /// When its one timer in the heap fires: Timer C as it was then (a
    /// later provisional response moves Timer C on, and the timer is set
    /// again when it fires early).
    armed: Instant,
    /// Given up when a drain ran out ([`ClientTransactions::give_up_all`]):
    /// rung out at once, whatever comes.
    given_up: bool,
}

/// Bytes a ringing INVITE's request costs while it rings: its two messages
/// and its entry in the map, with the map's slack.
fn ringing_bytes(transaction: &Transaction) -> usize {
    transaction.send.bytes.len()
        + transaction.inbound.bytes.len()
        + 2 * std::mem::size_of::<(TransactionKey, Ringing)>()
}

/// How a transaction that is no longer kept ended, remembered for 64*T1
/// (from its last response; an INVITE still ringing, for Timer C more) so
/// that what comes after is told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Timed out (or failed): its client was answered `408`.
    TimedOut,
    /// An INVITE's provisional response ended its retransmissions; its
    /// final response is still to come, remembered until Timer C after
    /// the last provisional one.
    Proceeding {
        /// When Timer C runs out.
        timer_c: Instant,
    },
    /// Its final response was relayed.
    Answered,
    /// An INVITE that rang through Timer C: its client was answered `408`,
    /// and its final non-2xx response is acknowledged by sipadmit.
    RungOut,
    /// A request of sipadmit's own that ended (answered or timed out).
    Own,
}

impl Ending {
    /// An INVITE that got a provisional response at `now`.
    fn ringing(now: Instant, timers: Timers) -> Self {
        Self::Proceeding {
            timer_c: now + timers.timer_c,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<TransactionKey, Entry>,
    timers: BinaryHeap<Timer>,
    /// Bytes of the entries (messages and overhead).
    entry_bytes: usize,
    next_timer: u64,
    /// The transactions that ended, until when each is remembered and how
    /// it ended...
    ended: HashMap<TransactionKey, (Instant, Ending)>,
    /// ...in that order (the first to run out first: each is remembered
    /// for 64*T1 at a time).
    ended_order: VecDeque<(Instant, TransactionKey)>,
    /// The ACK sent for an INVITE that ended with a non-2xx; for one rung
    /// out ([`Ending::RungOut`]), the INVITE as relayed, from which the ACK
    /// of its final response is built (its To tag is the response's). As
    /// long as the INVITE's ending is remembered.
    acks: HashMap<TransactionKey, Outbound>,
    /// Bytes of those ACKs (messages and overhead).
    ack_bytes: usize,
    /// The INVITEs still ringing (their ending `Proceeding`), with their
    /// requests, to cancel and answer when Timer C runs out, as long as
    /// there is room.
    ringing: HashMap<TransactionKey, Ringing>,
    /// Bytes of those INVITEs (messages and overhead).
    ringing_bytes: usize,
    /// How many of the entries are requests of sipadmit's own.
    own_entries: usize,
}

impl Table {
    fn bytes(&self) -> usize {
        self.entry_bytes
            + self.timers.len() * TIMER_BYTES
            + self.ended_order.len() * ENDED_BYTES
            + self.ack_bytes
            + self.ringing_bytes
    }

    /// Forget the transactions that ended longer ago than they are
    /// remembered for (the memory of a burst of them goes back once all
    /// are forgotten).
    fn forget_ended(&mut self, now: Instant, timeout: Duration) {
        while let Some(&(until, key)) = self.ended_order.front() {
            if until > now {
                break;
            }
            match self.ended.get_mut(&key) {
                // Still ringing (Timer C not run out, or run out and not
                // yet rung out by `due`): remembered on, for another 64*T1
                // at a time, which keeps the order.
                Some((at, Ending::Proceeding { timer_c }))
                    if *at == until && (*timer_c > now || self.ringing.contains_key(&key)) =>
                {
                    *at = now + timeout;
                    let renewed = (*at, key);
                    self.ended_order.pop_front();
                    self.ended_order.push_back(renewed);
                }
                _ => {
                    self.forget_oldest_ended();
                }
            }
        }
        self.release_ended();
    }

    /// Forget the transaction whose memory runs out first (its place in the
    /// order; the transaction itself unless it was remembered again since).
    /// Whether there was one.
    fn forget_oldest_ended(&mut self) -> bool {
        let Some((until, key)) = self.ended_order.pop_front() else {
            return false;
        };
        if self.ended.get(&key).is_some_and(|&(at, _)| at == until) {
            self.ended.remove(&key);
            if let Some(ack) = self.acks.remove(&key) {
                self.ack_bytes -= ack.bytes.len() + ACK_OVERHEAD;
            }
            self.stop_ringing(&key);
        }
        true
    }

    /// Forget the request of a ringing INVITE (answered, rung out, or
    /// forgotten); returns it.
    fn stop_ringing(&mut self, key: &TransactionKey) -> Option<Transaction> {
        let ringing = self.ringing.remove(key)?;
        self.ringing_bytes -= ringing_bytes(&ringing.transaction);
        Some(ringing.transaction)
    }

    /// Once none that ended is remembered, give their maps' memory back;
    /// once none is kept either, every timer left is stale (a ringing
    /// INVITE's Timer C, answered since): gone too, so that the table
    /// accounts for nothing while idle.
    fn release_ended(&mut self) {
        if self.ended_order.is_empty() && self.ended_order.capacity() > 0 {
            self.ended = HashMap::new();
            self.ended_order = VecDeque::new();
            self.acks = HashMap::new();
            self.ringing = HashMap::new();
            // Their bytes went with them (each forgotten with its ending).
            debug_assert_eq!((self.ack_bytes, self.ringing_bytes), (0, 0));
            (self.ack_bytes, self.ringing_bytes) = (0, 0);
        }
        if self.ended_order.is_empty() && self.entries.is_empty() && !self.timers.is_empty() {
            self.timers = BinaryHeap::new();
        }
    }

    fn schedule(&mut self, key: TransactionKey, at: Instant) -> u64 {
        let id = self.next_timer;
        self.next_timer += 1;
        self.timers.push(Reverse((at, id, key)));
        id
    }

    /// Remove the entry of `key`, with its bytes; returns it.
    fn remove(&mut self, key: &TransactionKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.entry_bytes -= entry.bytes;
        self.own_entries -= usize::from(entry.own);
        Some(entry)
    }

    /// Clients owed a final answer: the transactions kept for them, and
    /// the INVITEs ringing.
    fn owed(&self) -> usize {
        self.entries.len() - self.own_entries + self.ringing.len()
    }
}

/// The client transactions kept for stream-to-UDP requests; see the module
/// doc. Shared by every task (one lock; idle when empty, checked without it).
#[derive(Debug)]
pub struct ClientTransactions {
    table: Mutex<Table>,
    /// Transactions kept (read without the lock).
    kept: AtomicUsize,
    /// Transactions that ended and are remembered (read without the lock).
    ended: AtomicUsize,
    /// Clients owed a final answer (read without the lock): see
    /// [`Self::owed`].
    owed: AtomicUsize,
    timers: Timers,
    max_bytes: usize,
}

impl ClientTransactions {
    /// An empty table of at most `max_bytes` bytes, with `timers`.
    pub fn new(timers: Timers, max_bytes: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            kept: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            owed: AtomicUsize::new(0),
            timers,
            max_bytes,
        }
    }

    /// The timer values.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publish what is read without the lock.
    fn publish(&self, table: &Table) {
        self.kept.store(table.entries.len(), Ordering::Relaxed);
        self.ended.store(table.ended.len(), Ordering::Relaxed);
        self.owed.store(table.owed(), Ordering::Relaxed);
    }

    /// Keep `transaction`, first sent at `now`.
    pub fn start(&self, transaction: Transaction, now: Instant) -> Start {
        self.start_entry(transaction, now, false)
    }

    /// Keep `transaction`, a request of sipadmit's own first sent at `now`
    /// (the CANCEL of [`Due::RangOut`]): resent as any, but its answers are
    /// [`Answered::Own`] and its timeout is due to nobody (its `inbound`,
    /// the client's request it was made for, is not answered again).
    pub fn start_own(&self, transaction: Transaction, now: Instant) -> Start {
        self.start_entry(transaction, now, true)
    }

    /// [`start`](Self::start), or of a request of sipadmit's own.
    fn start_entry(&self, transaction: Transaction, now: Instant, own: bool) -> Start {
        let mut table = self.lock();
        let key = transaction.key;
        if table.entries.contains_key(&key) {
            return Start::Known;
        }
        let bytes = transaction.send.bytes.len() + transaction.inbound.bytes.len() + ENTRY_OVERHEAD;
        // A transaction under way goes before the memory of ended ones,
        // oldest first: without it, only copies of their answers would be
        // relayed as any response is. None is forgotten for a request that
        // would not fit without all of it.
        let ended_bytes =
            table.ended_order.len() * ENDED_BYTES + table.ack_bytes + table.ringing_bytes;
        if table.bytes() - ended_bytes + bytes > self.max_bytes {
            return Start::NoRoom;
        }
        while table.bytes() + bytes > self.max_bytes && table.forget_oldest_ended() {}
        table.release_ended();
        let t1 = self.timers.t1;
        let timer = table.schedule(key, now + t1);
        table.entry_bytes += bytes;
        table.own_entries += usize::from(own);
        table.entries.insert(
            key,
            Entry {
                transaction,
                gives_up: now + self.timers.timeout(),
                interval: t1,
                proceeding: false,
                given_up: false,
                graced: false,
                own,
                timer,
                bytes,
            },
        );
        self.publish(&table);
        Start::Started
    }

    /// Forget the transaction of `key` (its request could not be sent).
    pub fn forget(&self, key: &TransactionKey) {
        let mut table = self.lock();
        if table.entries.contains_key(key) {
            table.remove(key);
        }
        self.publish(&table);
    }

    /// End `key` at `now` because its request can no longer be sent (the
    /// registrar is known to be unreachable): removed, and remembered as a
    /// timed-out one is, so that a late answer is discarded as after a
    /// `408` (a 2xx to an INVITE excepted). Whether it was still kept: only
    /// then is its client owed the final answer (another worker may have
    /// relayed the registrar's in between).
    pub fn fail(&self, key: &TransactionKey, now: Instant) -> bool {
        let mut table = self.lock();
        let kept = table.entries.get(key).map(|entry| entry.own);
        if let Some(own) = kept {
            table.remove(key);
            let ending = if own { Ending::Own } else { Ending::TimedOut };
            self.remember(&mut table, *key, now, ending);
        }
        self.publish(&table);
        kept == Some(false)
    }

    /// A response with `status` arrived for `key` at `now`: a final one
    /// ends the transaction; a provisional one ends an INVITE's
    /// retransmissions and slows a non-INVITE's to every T2. Returns what
    /// it matched.
    pub fn answered(&self, key: &TransactionKey, status: u16, now: Instant) -> Answered {
        if self.is_idle() {
            return Answered::Unknown;
        }
        let mut table = self.lock();
        table.forget_ended(now, self.timers.timeout());
        let answered = self.answer(&mut table, key, status, now);
        self.publish(&table);
        answered
    }

    /// [`answered`](Self::answered), under the lock.
    fn answer(
        &self,
        table: &mut Table,
        key: &TransactionKey,
        status: u16,
        now: Instant,
    ) -> Answered {
        let final_response = status >= 200;
        let Some(entry) = table.entries.get_mut(key) else {
            let Some(&(until, ending)) = table.ended.get(key) else {
                return Answered::Unknown;
            };
            if until <= now {
                return Answered::Unknown;
            }
            // The registrar resends a final answer nobody acknowledges
            // (Timer G, up to 64*T1): its copies are told apart as long.
            let (ending, answered) = match ending {
                Ending::TimedOut => (ending, Answered::AfterTimeout),
                Ending::Own => (ending, Answered::Own),
                Ending::RungOut => match table.acks.get(key) {
                    Some(invite) if status >= 300 => (ending, Answered::RungOut(invite.clone())),
                    _ => (ending, Answered::AfterTimeout),
                },
                Ending::Answered => match table.acks.get(key) {
                    Some(ack) if status >= 300 => (ending, Answered::AckAgain(ack.clone())),
                    _ => (ending, Answered::AfterFinal),
                },
                Ending::Proceeding { .. } if final_response => {
                    table.stop_ringing(key);
                    (Ending::Answered, Answered::Kept)
                }
                // A 100 changes nothing (16.7 step 2: 101 to 199 reset
                // Timer C).
                Ending::Proceeding { .. } if status == 100 => (ending, Answered::Kept),
                // Timer C starts again; its timer is set again when it
                // fires.
                Ending::Proceeding { .. } => (Ending::ringing(now, self.timers), Answered::Kept),
            };
            self.remember(table, *key, now, ending);
            return answered;
        };
        if !final_response && key.method != TransactionMethod::Invite {
            entry.proceeding = true;
            return if entry.own {
                Answered::Own
            } else {
                Answered::Kept
            };
        }
        let Some(entry) = table.remove(key) else {
            return Answered::Kept;
        };
        if entry.own {
            self.remember(table, *key, now, Ending::Own);
            return Answered::Own;
        }
        if final_response {
            self.remember(table, *key, now, Ending::Answered);
        } else {
            self.remember(table, *key, now, Ending::ringing(now, self.timers));
            if !self.ring(table, *key, entry.transaction, now) {
                return Answered::RingsWithoutTimerC;
            }
        }
        Answered::Kept
    }

    /// Keep the request of the INVITE `key`, which rings from `now`, until
    /// its final response or its Timer C (then [`Due::RangOut`]), when
    /// there is room; without it (`false`), it rings on without Timer C.
    fn ring(
        &self,
        table: &mut Table,
        key: TransactionKey,
        transaction: Transaction,
        now: Instant,
    ) -> bool {
        // A copy of the INVITE its client sent again rang again: it takes
        // the place of the first, bytes and timer.
        table.stop_ringing(&key);
        let bytes = ringing_bytes(&transaction);
        if !table.ended.contains_key(&key) || table.bytes() + bytes + TIMER_BYTES > self.max_bytes {
            return false;
        }
        let armed = now + self.timers.timer_c;
        table.ringing_bytes += bytes;
        table.ringing.insert(
            key,
            Ringing {
                transaction,
                armed,
                given_up: false,
            },
        );
        table.schedule(key, armed);
        true
    }

    /// The timer of `key` set for `at` fired at `now` with no transaction
    /// kept for it: if it is a ringing INVITE's Timer C that has run out,
    /// it is rung out ([`Due::RangOut`]) and remembered as timed out, with
    /// its CANCEL (whose answer is then discarded too); one that a later
    /// provisional response moved on is set again.
    fn ring_out_if_due(
        &self,
        table: &mut Table,
        key: TransactionKey,
        at: Instant,
        now: Instant,
        due: &mut Vec<Due>,
    ) {
        let Some(&(_, Ending::Proceeding { timer_c })) = table.ended.get(&key) else {
            return;
        };
        if table.entries.contains_key(&key) {
            // Its client sent it again: a transaction under way, not ringing.
            return;
        }
        let Some(ringing) = table.ringing.get_mut(&key).filter(|r| r.armed == at) else {
            return;
        };
        let given_up = ringing.given_up;
        if timer_c > now && !given_up {
            ringing.armed = timer_c;
            table.schedule(key, timer_c);
            return;
        }
        let Some(transaction) = table.stop_ringing(&key) else {
            return;
        };
        // Its final non-2xx is acknowledged from the INVITE as relayed,
        // while there is room to keep it.
        let bytes = transaction.send.bytes.len() + ACK_OVERHEAD;
        if table.bytes() + bytes + ENDED_BYTES <= self.max_bytes {
            table.ack_bytes += bytes;
            // One of an earlier transaction of the same branch goes.
            if let Some(old) = table.acks.insert(key, transaction.send.clone()) {
                table.ack_bytes -= old.bytes.len() + ACK_OVERHEAD;
            }
        }
        self.remember(table, key, now, Ending::RungOut);
        // Its CANCEL's answers are consumed, even when the CANCEL finds
        // no room for its own transaction.
        let cancel = TransactionKey {
            method: TransactionMethod::Cancel,
            ..key
        };
        self.remember(table, cancel, now, Ending::Own);
        due.push(match given_up {
            true => Due::RingingGivenUp(transaction),
            false => Due::RangOut(transaction),
        });
    }

    /// The client's ACK of the INVITE `key` went out as `ack`: if that
    /// INVITE ended with its final response (a non-2xx: the ACK of a 2xx
    /// has a branch of its own), the ACK is remembered with it, while there
    /// is room, to be sent again for each copy of that response
    /// ([`Answered::AckAgain`]).
    pub fn acknowledged(&self, key: &TransactionKey, ack: &Outbound) {
        if key.method != TransactionMethod::Invite || self.is_idle() {
            return;
        }
        let mut table = self.lock();
        let answered = table
            .ended
            .get(key)
            .is_some_and(|&(_, ending)| ending == Ending::Answered);
        let bytes = ack.bytes.len() + ACK_OVERHEAD;
        if !answered || table.acks.contains_key(key) || table.bytes() + bytes > self.max_bytes {
            return;
        }
        table.ack_bytes += bytes;
        table.acks.insert(*key, ack.clone());
    }

    /// The timers that fired by `now`: requests to send again, and
    /// transactions that timed out (removed).
    pub fn due(&self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        let mut table = self.lock();
        while let Some(Reverse((at, id, key))) = table.timers.peek().copied() {
            if at > now {
                break;
            }
            table.timers.pop();
            let t2 = self.timers.t2;
            let next = match table.entries.get_mut(&key) {
                Some(entry) if entry.timer == id => {
                    if now >= entry.gives_up + LATE_TIMEOUT {
                        // Late: this process was frozen or held up, and
                        // the answer may be queued on a socket (any
                        // worker's) since before its time. Put off once,
                        // so that every worker reads what came first.
                        if entry.graced || entry.given_up {
                            None
                        } else {
                            entry.graced = true;
                            entry.gives_up = now + LATE_TIMEOUT_GRACE;
                            Some(entry.gives_up)
                        }
                    } else if now >= entry.gives_up {
                        None
                    } else {
                        due.push(Due::Retransmit(
                            entry.transaction.send.clone(),
                            entry.transaction.inbound.clone(),
                            key,
                        ));
                        entry.interval = if entry.proceeding {
                            t2
                        } else if key.method == TransactionMethod::Invite {
                            entry.interval * 2
                        } else {
                            (entry.interval * 2).min(t2)
                        };
                        Some((now + entry.interval).min(entry.gives_up))
                    }
                }
                // Answered since, or rescheduled: a stale timer, or the
                // Timer C of a ringing INVITE.
                _ => {
                    self.ring_out_if_due(&mut table, key, at, now, &mut due);
                    continue;
                }
            };
            match next {
                Some(at) => {
                    let timer = table.schedule(key, at);
                    if let Some(entry) = table.entries.get_mut(&key) {
                        entry.timer = timer;
                    }
                }
                None => {
                    if let Some(entry) = table.remove(&key) {
                        if entry.own {
                            self.remember(&mut table, key, now, Ending::Own);
                            continue;
                        }
                        let inbound = entry.transaction.inbound;
                        due.push(match entry.given_up {
                            true => Due::GivenUp(inbound),
                            false => Due::TimedOut(inbound),
                        });
                        self.remember(&mut table, key, now, Ending::TimedOut);
                    }
                }
            }
        }
        table.forget_ended(now, self.timers.timeout());
        self.publish(&table);
        due
    }

    /// Remember for 64*T1 from `now` how `key` ended (a ringing INVITE is
    /// remembered on, 64*T1 at a time, until its Timer C), when there is
    /// room (without it, what comes after is relayed as any response is).
    fn remember(&self, table: &mut Table, key: TransactionKey, now: Instant, ending: Ending) {
        if table.bytes() + ENDED_BYTES > self.max_bytes {
            // No room to remember it longer: how it ended still changes
            // (a ringing INVITE's final response came).
            if let Some((_, known)) = table.ended.get_mut(&key) {
                *known = ending;
            }
            return;
        }
        let until = now + self.timers.timeout();
        table.ended_order.push_back((until, key));
        table.ended.insert(key, (until, ending));
    }

    /// Give every kept transaction up at `now`: their next timers time
    /// them out, so that each client is answered (`408`) rather than left
    /// without a final response when the instance stops (the end of a drain
    /// that ran out of time). Every INVITE ringing at the registrar is rung
    /// out at its next timer ([`Due::RingingGivenUp`]: cancelled, its
    /// client answered); those ringing at clients (the registrar's, sent
    /// toward them) are left to the registrar, which ends its calls itself
    /// (with a CANCEL of its own, once the drain has cancelled the callers'
    /// side at a stream registrar).
    pub fn give_up_all(&self, now: Instant) {
        let mut table = self.lock();
        let keys: Vec<TransactionKey> = table.entries.keys().copied().collect();
        for key in keys {
            let timer = table.schedule(key, now);
            if let Some(entry) = table.entries.get_mut(&key) {
                entry.gives_up = now;
                entry.given_up = true;
                entry.timer = timer;
            }
        }
        let ringing: Vec<TransactionKey> = (table.ringing.iter())
            .filter(|(_, r)| r.transaction.send.to == super::Destination::Upstream)
            .map(|(key, _)| *key)
            .collect();
        for key in ringing {
            if let Some(r) = table.ringing.get_mut(&key) {
                r.armed = now;
                r.given_up = true;
            }
            table.schedule(key, now);
        }
    }

    /// When the next timer fires, if any is set (a ringing INVITE's Timer
    /// C among them), or the memory of an ended transaction runs out
    /// first: [`Self::due`] then forgets it, so that an idle instance gives
    /// that memory back (and its gauge says so) without waiting for a
    /// message.
    pub fn next_due(&self) -> Option<Instant> {
        if self.is_idle() {
            return None;
        }
        let table = self.lock();
        let timer = table.timers.peek().map(|Reverse((at, _, _))| *at);
        let forgotten = table.ended_order.front().map(|&(until, _)| until);
        match (timer, forgotten) {
            (Some(timer), Some(forgotten)) => Some(timer.min(forgotten)),
            (timer, forgotten) => timer.or(forgotten),
        }
    }

    /// Transactions kept.
    pub fn len(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    /// Clients owed a final answer: the requests kept for them (not those
    /// of sipadmit's own) and the INVITEs ringing. A drain waits for them.
    pub fn owed(&self) -> usize {
        self.owed.load(Ordering::Relaxed)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether none is kept and none that ended is remembered: no
    /// response can match (checked without the lock).
    pub fn is_idle(&self) -> bool {
        self.is_empty() && self.ended.load(Ordering::Relaxed) == 0
    }

    /// Bytes the table accounts for (never above its bound).
    pub fn accounted_bytes(&self) -> usize {
        self.lock().bytes()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::proxy::Destination;
    use crate::transport::Transport;
    use crate::vocabulary::Leg;

    const T1: Duration = Duration::from_millis(500);

    fn key(n: u64, method: TransactionMethod) -> TransactionKey {
        TransactionKey {
            branch: (n, 7),
            method,
        }
    }

    fn transaction(key: TransactionKey, size: usize) -> Transaction {
        Transaction {
            key,
            send: Outbound {
                to: Destination::Upstream,
                bytes: Bytes::from(vec![b'r'; size]),
            },
            inbound: Inbound {
                bytes: Bytes::from(vec![b'i'; size]),
                transport: Transport::Tcp,
                source: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                connection: None,
                leg: Leg::FromClient,
            },
        }
    }

    #[test]
    fn given_up_transactions_are_due_at_their_next_timer_as_given_up() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        for n in 1..=3 {
            table.start(transaction(key(n, TransactionMethod::Other), 100), t0);
        }
        // A call that rings, and a CANCEL of sipadmit's own: the clients
        // owed an answer are the three and the caller.
        let ringing = key(4, TransactionMethod::Invite);
        table.start(transaction(ringing, 100), t0);
        assert_eq!(table.answered(&ringing, 180, t0), Answered::Kept);
        table.start_own(transaction(key(5, TransactionMethod::Cancel), 50), t0);
        assert_eq!(table.owed(), 4);
        // The registrar's call ringing at a UDP client: left to the
        // registrar (owed, not rung out).
        let callee = key(6, TransactionMethod::Invite);
        let mut toward = transaction(callee, 100);
        toward.send.to = Destination::Flow(super::super::flow::Flow {
            transport: Transport::Udp,
            peer: "127.0.0.1:40001".parse().unwrap(),
            connection: None,
            local: None,
            client: String::new(),
        });
        table.start(toward, t0);
        assert_eq!(table.answered(&callee, 180, t0), Answered::Kept);
        assert_eq!(table.owed(), 5);
        let later = t0 + Duration::from_millis(100);
        // A provisional answer after the give-up does not keep it ringing.
        table.give_up_all(later);
        assert_eq!(table.answered(&ringing, 180, later), Answered::Kept);
        assert_eq!(table.next_due(), Some(later), "before T1");
        let due = table.due(later);
        assert_eq!(due.len(), 4, "{due:?}");
        assert_eq!(
            due.iter().filter(|d| matches!(d, Due::GivenUp(_))).count(),
            3,
            "{due:?}"
        );
        assert!(
            due.iter()
                .any(|d| matches!(d, Due::RingingGivenUp(t) if t.key == ringing)),
            "{due:?}"
        );
        assert_eq!(table.owed(), 1, "the callee's call rings on");
        assert!(table.is_empty());
        assert!(
            table.due(t0 + Duration::from_secs(60)).is_empty(),
            "no stale timer left"
        );
    }

    /// The offsets from the start (in ms) at which the request is resent,
    /// and when it times out, with no response at all.
    fn schedule(method: TransactionMethod) -> (Vec<u128>, Option<u128>) {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(
            table.start(transaction(key(1, method), 100), t0),
            Start::Started
        );
        let (mut resent, mut timed_out) = (Vec::new(), None);
        while let Some(at) = table.next_due() {
            for due in table.due(at) {
                let ms = at.duration_since(t0).as_millis();
                match due {
                    Due::Retransmit(..) => resent.push(ms),
                    Due::TimedOut(_) => timed_out = Some(ms),
                    Due::GivenUp(_) => panic!("nothing was given up"),
                    Due::RangOut(_) | Due::RingingGivenUp(_) => panic!("nothing rang"),
                }
            }
        }
        (resent, timed_out)
    }

    #[test]
    fn a_non_invite_is_resent_at_doubling_intervals_capped_at_t2_then_times_out_at_64_t1() {
        let (resent, timed_out) = schedule(TransactionMethod::Other);
        assert_eq!(
            resent,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(timed_out, Some(32_000));
    }

    #[test]
    fn an_invite_doubles_without_a_cap_until_timer_b() {
        let (resent, timed_out) = schedule(TransactionMethod::Invite);
        assert_eq!(resent, [500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(timed_out, Some(32_000));
    }

    #[test]
    fn a_final_response_ends_it_and_a_provisional_ends_only_an_invites_retransmissions() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let register = key(1, TransactionMethod::Other);
        let invite = key(2, TransactionMethod::Invite);
        let cancel = key(2, TransactionMethod::Cancel);
        for k in [register, invite, cancel] {
            assert_eq!(table.start(transaction(k, 10), t0), Start::Started);
        }
        assert_eq!(table.start(transaction(invite, 10), t0), Start::Known);
        assert_eq!(table.len(), 3, "CANCEL and INVITE are two transactions");
        assert_eq!(
            table.answered(&invite, 180, t0),
            Answered::Kept,
            "100/180 stops an INVITE"
        );
        assert_eq!(
            table.answered(&invite, 486, t0),
            Answered::Kept,
            "no longer resent, its final response still relayed"
        );
        assert_eq!(table.answered(&invite, 486, t0), Answered::AfterFinal);
        assert_eq!(
            table.answered(&register, 100, t0),
            Answered::Kept,
            "a non-INVITE proceeds"
        );
        assert_eq!(table.len(), 2);
        // The REGISTER goes on every T2 from now on; the CANCEL doubles.
        let due = table.due(t0 + T1);
        assert_eq!(due.len(), 2);
        assert_eq!(table.answered(&cancel, 200, t0), Answered::Kept);
        let next = table.due(t0 + T1 + Duration::from_secs(4));
        assert_eq!(next.len(), 1, "only the proceeding REGISTER, after T2");
        assert_eq!(table.answered(&register, 200, t0), Answered::Kept);
        assert!(table.is_empty());
        // The last stale timer is the one the INVITE's Timer C was set
        // for when it rang.
        assert!(table.due(t0 + Timers::RFC3261.timer_c).is_empty());
        assert_eq!(
            table.accounted_bytes(),
            0,
            "stale timers fired and are gone"
        );
    }

    #[test]
    fn the_table_is_bounded_in_bytes() {
        let table = ClientTransactions::new(Timers::RFC3261, 16 << 10);
        let t0 = Instant::now();
        let mut started = 0;
        for n in 0..100 {
            match table.start(transaction(key(n, TransactionMethod::Other), 1000), t0) {
                Start::Started => started += 1,
                Start::NoRoom => {}
                Start::Known => unreachable!(),
            }
            assert!(table.accounted_bytes() <= 16 << 10);
        }
        assert!((5..10).contains(&started), "{started}");
        // An answer makes room again.
        assert_eq!(
            table.answered(&key(0, TransactionMethod::Other), 200, t0),
            Answered::Kept
        );
        assert_eq!(
            table.start(transaction(key(500, TransactionMethod::Other), 1000), t0),
            Start::Started
        );
    }

    /// The memory of ended transactions gives way to a new one, oldest
    /// first, when the table is at its bound.
    #[test]
    fn transactions_that_ended_make_room_for_new_ones_oldest_first() {
        let table = ClientTransactions::new(Timers::RFC3261, 16 << 10);
        let t0 = Instant::now();
        let mut ended = 0;
        while table.accounted_bytes() + 2_000 < 16 << 10 {
            let key = key(ended, TransactionMethod::Other);
            assert_eq!(table.start(transaction(key, 10), t0), Start::Started);
            assert_eq!(table.answered(&key, 200, t0), Answered::Kept);
            ended += 1;
        }
        // Their stale timers go; their memory stays.
        assert!(table.due(t0 + T1).is_empty());
        assert!(table.accounted_bytes() > 10 << 10);
        let newest = key(ended - 1, TransactionMethod::Other);
        let new = key(10_000, TransactionMethod::Other);
        assert_eq!(table.start(transaction(new, 3000), t0), Start::Started);
        assert!(table.accounted_bytes() <= 16 << 10);
        let oldest = key(0, TransactionMethod::Other);
        assert_eq!(table.answered(&oldest, 200, t0), Answered::Unknown);
        // A request that would not fit beside the new one with all of that
        // memory gone finds no room, and the memory stays.
        let large = key(20_000, TransactionMethod::Other);
        assert_eq!(table.start(transaction(large, 5000), t0), Start::NoRoom);
        assert_eq!(table.answered(&newest, 200, t0), Answered::AfterFinal);
        assert_eq!(table.answered(&new, 200, t0), Answered::Kept);
    }

    #[test]
    fn a_response_after_the_timeout_is_told_apart_for_64_t1() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let register = key(1, TransactionMethod::Other);
        table.start(transaction(register, 100), t0);
        let timeout = Timers::RFC3261.timeout();
        let due = table.due(t0 + timeout);
        assert!(due.iter().any(|d| matches!(d, Due::TimedOut(_))), "{due:?}");
        assert!(table.is_empty() && !table.is_idle());
        assert!(table.accounted_bytes() >= ENDED_BYTES);
        let late = t0 + timeout + Duration::from_secs(1);
        assert_eq!(table.answered(&register, 200, late), Answered::AfterTimeout);
        assert_eq!(
            table.answered(&key(2, TransactionMethod::Other), 200, late),
            Answered::Unknown
        );
        // Remembered 64*T1 after the last late answer, then forgotten.
        let still = t0 + timeout * 2;
        assert_eq!(
            table.answered(&register, 200, still),
            Answered::AfterTimeout
        );
        let gone = late + timeout * 2;
        assert_eq!(table.answered(&register, 200, gone), Answered::Unknown);
        assert!(table.is_idle());
        assert_eq!(table.accounted_bytes(), 0);
    }

    #[test]
    fn copies_of_a_final_response_and_what_follows_it_are_told_apart_for_64_t1() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let register = key(1, TransactionMethod::Other);
        let invite = key(2, TransactionMethod::Invite);
        table.start(transaction(register, 100), t0);
        table.start(transaction(invite, 100), t0);
        assert_eq!(table.answered(&register, 401, t0), Answered::Kept);
        assert!(table.len() == 1 && !table.is_idle());
        let copy = t0 + Duration::from_millis(500);
        assert_eq!(table.answered(&register, 401, copy), Answered::AfterFinal);
        assert_eq!(table.answered(&register, 100, copy), Answered::AfterFinal);
        // An INVITE's provisional responses go on until its final one.
        assert_eq!(table.answered(&invite, 100, t0), Answered::Kept);
        assert_eq!(table.answered(&invite, 180, copy), Answered::Kept);
        assert_eq!(table.answered(&invite, 486, copy), Answered::Kept);
        assert_eq!(table.answered(&invite, 486, copy), Answered::AfterFinal);
        assert_eq!(table.answered(&invite, 200, copy), Answered::AfterFinal);
        assert!(table.is_empty());
        // Remembered 64*T1 after the last copy, then forgotten.
        let timeout = Timers::RFC3261.timeout();
        assert_eq!(
            table.answered(&register, 401, copy + timeout - Duration::from_millis(1)),
            Answered::AfterFinal
        );
        let gone = copy + timeout * 3;
        assert_eq!(table.answered(&register, 401, gone), Answered::Unknown);
        assert_eq!(table.answered(&invite, 486, gone), Answered::Unknown);
        assert!(table.is_idle());
        // Their timers are stale, the INVITE's Timer C (set when it rang)
        // the last.
        assert!(table.due(t0 + Timers::RFC3261.timer_c).is_empty());
        assert_eq!(table.accounted_bytes(), 0);
    }

    /// The ACK of an INVITE that ended with a non-2xx is remembered with
    /// it: each copy of that response asks for the ACK again, as long as
    /// the INVITE is remembered; an ACK for an INVITE not answered, or for
    /// another method's key, is not kept.
    #[test]
    fn the_ack_of_a_non_2xx_is_sent_again_for_each_copy_of_it_for_64_t1() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let busy = key(1, TransactionMethod::Invite);
        let ringing = key(2, TransactionMethod::Invite);
        table.start(transaction(busy, 100), t0);
        table.start(transaction(ringing, 100), t0);
        let ack = |n: u8| Outbound {
            to: Destination::Upstream,
            bytes: Bytes::from(vec![n; 300]),
        };
        // Before the final response, or for a provisional one, no ACK.
        table.acknowledged(&busy, &ack(1));
        assert_eq!(table.answered(&busy, 486, t0), Answered::Kept);
        assert_eq!(table.answered(&busy, 486, t0), Answered::AfterFinal);
        assert_eq!(table.answered(&ringing, 180, t0), Answered::Kept);
        table.acknowledged(&ringing, &ack(2));
        table.acknowledged(&key(1, TransactionMethod::Other), &ack(3));
        let before = table.accounted_bytes();
        table.acknowledged(&busy, &ack(4));
        assert_eq!(table.accounted_bytes(), before + 300 + ACK_OVERHEAD);
        let copy = t0 + Duration::from_millis(500);
        for _ in 0..2 {
            assert_eq!(table.answered(&busy, 486, copy), Answered::AckAgain(ack(4)));
        }
        assert_eq!(table.answered(&busy, 100, copy), Answered::AfterFinal);
        assert_eq!(table.answered(&ringing, 486, copy), Answered::Kept);
        assert_eq!(table.answered(&ringing, 486, copy), Answered::AfterFinal);
        let gone = copy + Timers::RFC3261.timeout() * 3;
        assert_eq!(table.answered(&busy, 486, gone), Answered::Unknown);
        // The ringing INVITE's Timer C timer (stale) fires last.
        assert!(table.due(t0 + Timers::RFC3261.timer_c).is_empty());
        assert_eq!(table.accounted_bytes(), 0, "the ACK is forgotten with it");
    }

    /// A call that rings longer than 64*T1: its final response still ends
    /// it, and the copies of that response are told apart.
    #[test]
    fn a_call_that_rings_for_minutes_still_has_its_final_response_told_apart() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let invite = key(1, TransactionMethod::Invite);
        table.start(transaction(invite, 100), t0);
        assert_eq!(table.answered(&invite, 180, t0), Answered::Kept);
        let answered = t0 + Duration::from_secs(150);
        assert!(table.due(answered).is_empty());
        assert_eq!(table.answered(&invite, 486, answered), Answered::Kept);
        assert_eq!(table.answered(&invite, 486, answered), Answered::AfterFinal);
        assert_eq!(table.answered(&invite, 180, answered), Answered::AfterFinal);
    }

    /// An INVITE that rang through Timer C without another word (a
    /// registrar that died while it rang) is rung out: its request comes
    /// back to be cancelled and its client answered `408`; the callee's
    /// `487` (each copy) is to be acknowledged from the INVITE as relayed,
    /// the CANCEL, kept as sipadmit's own, is resent until answered and
    /// its answers consumed, and all of it is forgotten 64*T1 later. Each
    /// provisional response starts Timer C again.
    #[test]
    fn an_invite_that_rings_through_timer_c_is_rung_out_once() {
        let timers = Timers::RFC3261;
        let table = ClientTransactions::new(timers, 1 << 20);
        let t0 = Instant::now();
        let silent = key(2, TransactionMethod::Invite);
        table.start(transaction(silent, 100), t0);
        assert_eq!(table.answered(&silent, 100, t0), Answered::Kept);
        // Another provisional a minute on: Timer C from then.
        let again = t0 + Duration::from_secs(60);
        assert_eq!(table.answered(&silent, 180, again), Answered::Kept);
        assert_eq!(
            table.next_due(),
            Some(t0 + timers.t1),
            "a stale timer first"
        );
        let first_timer_c = t0 + timers.timer_c;
        assert!(
            table.due(first_timer_c).is_empty(),
            "the 180 started Timer C again"
        );
        let runs_out = again + timers.timer_c;
        // Due next: Timer C, or before it the memory of how the INVITE
        // ended, to be remembered on.
        assert!(table.next_due().is_some_and(|at| at <= runs_out));
        let due = table.due(runs_out);
        let [Due::RangOut(rung)] = &due[..] else {
            panic!("rung out once: {due:?}");
        };
        assert_eq!(rung.key, silent);
        assert_eq!(rung.send.bytes, transaction(silent, 100).send.bytes);
        assert!(table.due(runs_out + Duration::from_secs(1)).is_empty());
        let cancel = TransactionKey {
            method: TransactionMethod::Cancel,
            ..silent
        };
        // The core keeps the CANCEL it sent as a transaction of its own.
        assert_eq!(
            table.start_own(transaction(cancel, 50), runs_out),
            Start::Started
        );
        let resent = table.due(runs_out + timers.t1);
        assert!(
            matches!(&resent[..], [Due::Retransmit(_, _, k)] if *k == cancel),
            "the CANCEL is resent: {resent:?}"
        );
        assert!(!table.fail(&key(9, TransactionMethod::Cancel), runs_out));
        let relayed = Answered::RungOut(transaction(silent, 100).send);
        assert_eq!(table.answered(&silent, 487, runs_out), relayed);
        assert_eq!(table.answered(&silent, 487, runs_out), relayed, "a copy");
        assert_eq!(
            table.answered(&silent, 180, runs_out),
            Answered::AfterTimeout
        );
        assert_eq!(table.answered(&cancel, 200, runs_out), Answered::Own);
        assert_eq!(
            table.answered(&cancel, 200, runs_out),
            Answered::Own,
            "a copy"
        );
        assert!(
            table.due(runs_out + timers.t1 * 3).is_empty(),
            "answered, the CANCEL is no longer resent"
        );
        let gone = runs_out + timers.timeout() + Duration::from_secs(1);
        assert!(table.due(gone).is_empty());
        assert_eq!(table.answered(&silent, 487, gone), Answered::Unknown);
        assert_eq!(table.accounted_bytes(), 0, "nothing is left of it");
        assert!(table.is_idle());
    }

    /// sipadmit's own CANCEL that nothing answers is resent until 64*T1,
    /// then ends owing no client an answer; one whose send fails for good
    /// owes none either.
    #[test]
    fn an_own_request_times_out_to_nobody() {
        let timers = Timers::RFC3261;
        let table = ClientTransactions::new(timers, 1 << 20);
        let t0 = Instant::now();
        let unanswered = key(4, TransactionMethod::Cancel);
        let failed = key(5, TransactionMethod::Cancel);
        table.start_own(transaction(unanswered, 50), t0);
        table.start_own(transaction(failed, 50), t0);
        assert!(!table.fail(&failed, t0), "no client is owed an answer");
        assert_eq!(table.answered(&failed, 200, t0), Answered::Own);
        let mut resent = 0;
        let mut at = t0;
        while at <= t0 + timers.timeout() + Duration::from_secs(1) {
            for due in table.due(at) {
                match due {
                    Due::Retransmit(_, _, k) => {
                        assert_eq!(k, unanswered);
                        resent += 1;
                    }
                    other => panic!("only resent: {other:?}"),
                }
            }
            at += Duration::from_millis(100);
        }
        assert_eq!(resent, 10, "T1, 2T1, 4T1, then every T2 until 64*T1");
        assert!(table.is_empty());
        assert_eq!(table.answered(&unanswered, 200, at), Answered::Own);
    }

    /// A copy of a ringing INVITE that its client sent again, and that
    /// rang again, takes the first one's place: its bytes are counted
    /// once, and it rings out once, on its own Timer C.
    #[test]
    fn a_copy_of_a_ringing_invite_that_rings_again_takes_its_place() {
        let timers = Timers::RFC3261;
        let table = ClientTransactions::new(timers, 1 << 20);
        let t0 = Instant::now();
        let invite = key(3, TransactionMethod::Invite);
        table.start(transaction(invite, 100), t0);
        assert_eq!(table.answered(&invite, 100, t0), Answered::Kept);
        let ringing = table.accounted_bytes();
        let copy = t0 + Duration::from_secs(1);
        assert_eq!(table.start(transaction(invite, 100), copy), Start::Started);
        let rang_again = copy + Duration::from_secs(1);
        assert_eq!(table.answered(&invite, 180, rang_again), Answered::Kept);
        assert_eq!(
            table.accounted_bytes(),
            ringing + ENDED_BYTES + 2 * TIMER_BYTES
        );
        // The first one's Timer C passes: nothing.
        assert!(table.due(t0 + timers.timer_c).is_empty());
        let due = table.due(rang_again + timers.timer_c);
        assert!(
            matches!(&due[..], [Due::RangOut(_)]),
            "rung out once, on the copy's Timer C: {due:?}"
        );
        let gone = t0 + timers.timer_c * 3;
        table.due(gone);
        assert_eq!(table.answered(&invite, 487, gone), Answered::Unknown);
        assert!(table.due(gone + timers.timeout()).is_empty());
        assert_eq!(
            table.accounted_bytes(),
            0,
            "nothing counted twice: {ringing}"
        );
    }

    /// A call that rang and was answered leaves its Timer C timer in the
    /// heap; once nothing of it is remembered, an idle table accounts for
    /// nothing (the gauge of its bytes goes back to 0), long before that
    /// timer would have fired.
    #[test]
    fn an_idle_table_keeps_no_stale_timer_of_a_call_that_rang() {
        let timers = Timers::RFC3261;
        let table = ClientTransactions::new(timers, 1 << 20);
        let t0 = Instant::now();
        let invite = key(4, TransactionMethod::Invite);
        table.start(transaction(invite, 100), t0);
        assert_eq!(table.answered(&invite, 180, t0), Answered::Kept);
        assert_eq!(table.answered(&invite, 200, t0), Answered::Kept);
        // Its memory runs out 64*T1 on: the next thing due, though no
        // timer is (so that an idle instance's dispatcher wakes for it).
        let forgotten = t0 + timers.timeout();
        assert!(forgotten < t0 + timers.timer_c);
        assert_eq!(
            table.next_due(),
            Some(t0 + timers.t1),
            "a stale timer first"
        );
        assert!(table.due(t0 + timers.t1).is_empty());
        assert_eq!(table.next_due(), Some(forgotten));
        assert!(table.due(forgotten).is_empty());
        assert!(table.is_idle());
        assert_eq!(table.accounted_bytes(), 0);
        assert_eq!(table.next_due(), None);
    }

    /// Without room for its request, a ringing INVITE rings on without
    /// Timer C (remembered as before, then forgotten).
    #[test]
    fn a_ringing_invite_without_room_rings_on_without_timer_c() {
        let timers = Timers::RFC3261;
        let t0 = Instant::now();
        let invite = key(1, TransactionMethod::Invite);
        let needs = transaction(invite, 4000);
        // Room for the transaction, not for its request beside the memory
        // of how it ended.
        let table = ClientTransactions::new(timers, 8000 + ENTRY_OVERHEAD);
        assert_eq!(table.start(needs, t0), Start::Started);
        assert_eq!(
            table.answered(&invite, 180, t0),
            Answered::RingsWithoutTimerC,
            "said, to be counted"
        );
        let gone = t0 + timers.timer_c + timers.timeout() + Duration::from_secs(1);
        assert!(table.due(gone).is_empty(), "no Timer C without its request");
        assert_eq!(table.answered(&invite, 486, gone), Answered::Unknown);
    }

    /// A `100 Trying` to a ringing INVITE does not start Timer C again
    /// (RFC 3261 16.7 step 2: 101 to 199 do); a 183 does.
    #[test]
    fn a_100_does_not_start_timer_c_again() {
        let timers = Timers::RFC3261;
        let table = ClientTransactions::new(timers, 1 << 20);
        let t0 = Instant::now();
        let trying = key(1, TransactionMethod::Invite);
        let progress = key(2, TransactionMethod::Invite);
        for invite in [trying, progress] {
            table.start(transaction(invite, 100), t0);
            assert_eq!(table.answered(&invite, 180, t0), Answered::Kept);
        }
        let later = t0 + Duration::from_secs(60);
        assert_eq!(table.answered(&trying, 100, later), Answered::Kept);
        assert_eq!(table.answered(&progress, 183, later), Answered::Kept);
        let due = table.due(t0 + timers.timer_c);
        assert!(
            matches!(&due[..], [Due::RangOut(t)] if t.key == trying),
            "{due:?}"
        );
        let due = table.due(later + timers.timer_c);
        assert!(
            matches!(&due[..], [Due::RangOut(t)] if t.key == progress),
            "{due:?}"
        );
    }

    /// A timeout that fires late (this process was frozen) is put off once
    /// for a moment, so that an answer queued since before its time (on any
    /// worker's socket) is read first; one on time, or put off already,
    /// times out.
    #[test]
    fn a_late_timeout_is_put_off_once_for_the_answers_queued_meanwhile() {
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        let t0 = Instant::now();
        let answered = key(1, TransactionMethod::Other);
        let silent = key(2, TransactionMethod::Other);
        table.start(transaction(answered, 100), t0);
        table.start(transaction(silent, 100), t0);
        let resumed = t0 + Timers::RFC3261.timeout() + Duration::from_secs(3);
        let due = table.due(resumed);
        assert!(
            due.iter().all(|d| matches!(d, Due::Retransmit(..))),
            "{due:?}"
        );
        assert_eq!(table.answered(&answered, 200, resumed), Answered::Kept);
        let due = table.due(resumed + LATE_TIMEOUT_GRACE);
        assert!(
            matches!(due[..], [Due::TimedOut(_)]),
            "the silent one times out after the grace: {due:?}"
        );
        assert!(table.is_empty());
        // On time (a drain's give-up included): no grace.
        let on_time = key(3, TransactionMethod::Other);
        table.start(transaction(on_time, 100), t0);
        let due = table.due(t0 + Timers::RFC3261.timeout());
        assert!(due.iter().any(|d| matches!(d, Due::TimedOut(_))), "{due:?}");
    }

    /// The per-transaction overhead the config reference gives ("about
    /// 770 bytes" beyond the two copies of the request; about 190 for one
    /// that ended, about 340 beyond an ACK kept; 64-bit).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_transaction_costs_its_two_messages_and_about_770_bytes() {
        let overhead = ENTRY_OVERHEAD + TIMER_BYTES;
        assert!((720..=820).contains(&overhead), "{overhead}");
        assert!((170..=210).contains(&ENDED_BYTES), "{ENDED_BYTES}");
        assert!((300..=380).contains(&ACK_OVERHEAD), "{ACK_OVERHEAD}");
        let table = ClientTransactions::new(Timers::RFC3261, 1 << 20);
        table.start(
            transaction(key(1, TransactionMethod::Other), 600),
            Instant::now(),
        );
        assert_eq!(table.accounted_bytes(), 1200 + overhead);
    }

    #[test]
    fn ack_is_never_a_transaction() {
        assert_eq!(TransactionMethod::of(b"ACK"), None);
        assert_eq!(
            TransactionMethod::of(b"INVITE"),
            Some(TransactionMethod::Invite)
        );
        assert_eq!(
            TransactionMethod::of(b"CANCEL"),
            Some(TransactionMethod::Cancel)
        );
        assert_eq!(
            TransactionMethod::of(b"REGISTER"),
            Some(TransactionMethod::Other)
        );
    }
}
