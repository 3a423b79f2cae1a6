//! The transactions already recorded, so that a retransmitted request gets
//! the same treatment (relayed again, or answered again with the same
//! response) but no second decision record. A decision is remembered with
//! how it handled the request and the configuration that decided
//! ([`Decided`]): a copy that a reload since would decide otherwise is not
//! given that second, contradicting fate (RFC 3261 16.11).
//!
//! A request is a retransmission of one seen within the transaction
//! lifetime (64*T1 = 32 s, RFC 3261 Timer B/F) when it has the same method,
//! Call-ID, CSeq number, From tag and top Via (branch and sent-by, the
//! RFC 3261 17.2.3 match), and came from the same address and port: a
//! client retransmits from where it sent, while the same bytes from another
//! source (a replay, a flood of one message from many forged addresses) are
//! another source's request, recorded as such. The table holds one 64-bit
//! keyed hash per transaction in an [`ExpiringMap`]: O(1) per request,
//! bounded in bytes; when full the oldest transaction is forgotten (its late
//! retransmission would then be recorded once more, nothing worse). Each
//! kind of record of a transaction ([`RecordKind`]) is remembered apart, and
//! so are the INVITEs this proxy answered with an error, whose ACK it
//! absorbs (inside a dialog it carries the dialog's To tag, not this
//! proxy's) and whose CANCEL it answers, and the requests a server challenged (`401`,
//! `407`), whose retry with credentials is the same sign-in or call. Pure:
//! the clock is passed in.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::expiring::{Bounds, ExpiringMap, HeapBytes};
use crate::sip::SipView;
use crate::vocabulary::WarningWindow;

/// How long a transaction's requests count as retransmissions (64 * T1).
pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(32);
/// At most one warning about evicted transactions in this time.
const EVICTION_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Which record of a transaction: the one of handling the request (or of
/// refusing it over its source's rate limit), or one of what may follow it
/// (a 503 when the registrar proved unreachable, a 408, a ban), each
/// recorded once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The request's decision (relay, reject, drop).
    Decision,
    /// The 503 answered when it could not be sent upstream.
    UpstreamUnavailable,
    /// The 430 answered when it could not be sent on its client flow.
    FlowFailed,
    /// The 408 answered when nothing answered it over UDP (RFC 3261 17.1).
    Timeout,
    /// The ban its source earned with it (`ban.*`): recorded even when the
    /// request is a retransmission of one decided before.
    Ban,
}

/// How the first copy of a request was handled, remembered with its
/// decision: a copy is handled the same way, even after a reload changed
/// the verdict (RFC 3261 16.11: a retransmitted request is forwarded to
/// the same destination each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Sent on, toward the registrar or a client flow.
    Relayed,
    /// Answered here, with this status.
    Answered(u16),
    /// Dropped.
    Dropped,
    /// Answered `503` with this Retry-After (seconds, at most 65,535):
    /// its source was over its rate limit (`rate_limit.requests`).
    OverLimit {
        /// The Retry-After sent.
        retry_after_secs: u16,
    },
}

/// What becomes of a copy of a request decided before ([`Decided::copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFate {
    /// Handled as the configuration now decides it, which does not
    /// contradict the first copy's fate; not recorded again.
    Again,
    /// Dropped: the first copy's policy verdict stands.
    Dropped,
    /// The first copy's policy reject stands: answered again with this
    /// status (RFC 3261 17.2.1: a completed transaction answers a copy
    /// with its final response), where the policy still has the reply.
    AnsweredBefore {
        /// The first copy's status.
        status: u16,
    },
    /// Answered `503` again, with this Retry-After: the first copy was over
    /// its source's rate limit, and a copy within the limit is not relayed
    /// after that answer (a stateless answer is the same for every copy).
    OverLimit {
        /// The first copy's Retry-After, seconds.
        retry_after_secs: u32,
    },
}

/// A decision remembered: how the first copy was handled, by which
/// generation of the runtime configuration (its low 16 bits: a copy comes
/// within 32 s, and 65,536 reloads never do; 8 bytes in all keep a
/// transaction at 48), and whether that was the policy's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// How.
    pub treatment: Treatment,
    /// By which configuration (one more per reload).
    pub generation: u16,
    /// The policy's verdict (a record of kind `policy`: relayed, flagged,
    /// rejected or dropped by a rule), not a protocol answer (`proxy.*`).
    pub by_policy: bool,
}

impl Decided {
    /// Whether a copy decided as `copy` would contradict this first copy's
    /// fate: both are the policy's verdicts, another configuration gave it,
    /// and it handles the request otherwise, not as a drop (which
    /// contradicts nothing). A protocol answer is never held back: what
    /// changed is the network (a flow gone, a message that no longer
    /// fits), and the new answer says so.
    pub fn contradicts(&self, copy: &Decided) -> bool {
        self.by_policy
            && copy.by_policy
            && self.generation != copy.generation
            && self.treatment != copy.treatment
            && copy.treatment != Treatment::Dropped
    }

    /// What becomes of a copy that is decided as `copy` now, when this is
    /// its first copy's decision: answered `503` again after a rate limit's
    /// `503` (unless dropped now), dropped when it [contradicts](Self::contradicts),
    /// else handled again.
    pub fn copy(&self, copy: &Decided) -> CopyFate {
        match self.treatment {
            Treatment::OverLimit { retry_after_secs } if copy.treatment != Treatment::Dropped => {
                CopyFate::OverLimit {
                    retry_after_secs: retry_after_secs.into(),
                }
            }
            Treatment::Answered(status) if self.contradicts(copy) => {
                CopyFate::AnsweredBefore { status }
            }
            _ if self.contradicts(copy) => CopyFate::Dropped,
            _ => CopyFate::Again,
        }
    }
}

impl HeapBytes for Option<Decided> {
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// What a key in the table stands for: a record of the request's
/// transaction (keyed with its own method), or an INVITE answered here
/// with an error (keyed with INVITE, so that the ACK of that answer finds
/// it: RFC 3261 17.1.1.3, same Call-ID, CSeq number, From tag and top Via).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// The request's own method, for a record of `RecordKind`.
    Record(RecordKind),
    /// An INVITE answered by this proxy with an error (its ACK and CANCEL
    /// match it).
    AnsweredInvite,
}

/// The two header fields that carry credentials answering a challenge
/// (RFC 3261 22.2, 22.3).
const CREDENTIALS: [&str; 2] = ["authorization", "proxy-authorization"];

/// Hash `bytes` as one field of a key: with its length, so that two
/// fields never run into each other.
fn write_field(h: &mut impl Hasher, bytes: &[u8]) {
    h.write(bytes);
    h.write_usize(bytes.len());
}

/// The transactions recorded in the last [`TRANSACTION_LIFETIME`].
#[derive(Debug)]
pub struct Transactions {
    /// The first copy's treatment, for a decision.
    seen: Mutex<ExpiringMap<Option<Decided>>>,
    keys: RandomState,
    /// Transactions forgotten before their time because the table was
    /// full (a copy of one is then handled, and recorded, as new).
    evicted: AtomicU64,
    /// The rate limit of the warning about them.
    eviction_warning: Mutex<WarningWindow>,
    /// A challenge was ever noted: until then, no request is looked up as
    /// a retry after one (most registrars behind sipadmit challenge every
    /// sign-in, or none).
    challenged: AtomicBool,
    /// The table's bound, bytes (`limits.transaction_table_bytes`).
    max_bytes: usize,
}

impl Transactions {
    /// An empty table of at most `max_bytes` bytes.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            seen: Mutex::new(ExpiringMap::new(Bounds {
                max_entries: usize::MAX,
                max_bytes,
            })),
            keys: RandomState::new(),
            evicted: AtomicU64::new(0),
            eviction_warning: Mutex::new(WarningWindow::default()),
            challenged: AtomicBool::new(false),
            max_bytes,
        }
    }

    /// Whether this is the first time a record of `kind` is due for the
    /// transaction of `request`; it is remembered for
    /// [`TRANSACTION_LIFETIME`] from its first sighting.
    pub fn first_sighting(
        &self,
        request: &SipView,
        source: SocketAddr,
        kind: RecordKind,
        now: Instant,
    ) -> bool {
        let key = self.key(request, KeyKind::Record(kind), Some(source));
        self.note(key, None, now).is_ok()
    }

    /// The decision of `request` from `source` is `decided`: `Ok` when it
    /// is the transaction's first (remembered for [`TRANSACTION_LIFETIME`]),
    /// or the first copy's decision when this is a copy of it (`None`: not
    /// known).
    pub fn decided(
        &self,
        request: &SipView,
        source: SocketAddr,
        decided: Decided,
        now: Instant,
    ) -> Result<(), Option<Decided>> {
        let key = self.key(request, KeyKind::Record(RecordKind::Decision), Some(source));
        self.note(key, Some(decided), now)
    }

    /// Whether a record of `kind` was already due for the transaction of
    /// `request` from `source` in the last [`TRANSACTION_LIFETIME`] (this
    /// is a copy of it), without noting anything.
    pub fn seen_before(
        &self,
        request: &SipView,
        source: SocketAddr,
        kind: RecordKind,
        now: Instant,
    ) -> bool {
        self.holds(self.key(request, KeyKind::Record(kind), Some(source)), now)
    }

    /// Remember that this proxy answered the INVITE `request` with an
    /// error ([`Transactions::answered_invite`]), so that the ACK of that
    /// answer is absorbed even when it carries the dialog's To tag instead
    /// of this proxy's, and a CANCEL of it is answered here.
    pub fn note_answered_invite(&self, request: &SipView, now: Instant) {
        let _ = self.note(self.key(request, KeyKind::AnsweredInvite, None), None, now);
    }

    /// Forget that this proxy answered the INVITE `request`: a copy of it
    /// was sent on since (its answer was lost, and the copy found the
    /// registrar back), so that whoever answers it now gets its CANCEL and
    /// ACK.
    pub fn forget_answered_invite(&self, request: &SipView, now: Instant) {
        self.take(self.key(request, KeyKind::AnsweredInvite, None), now);
    }

    /// Whether the INVITE that `request` belongs to, an ACK or a CANCEL
    /// of it (the same Call-ID, CSeq number, From tag and top Via: RFC
    /// 3261 9.1, 17.1.1.3), was answered by this proxy with an error in the
    /// last [`TRANSACTION_LIFETIME`].
    pub fn answered_invite(&self, request: &SipView, now: Instant) -> bool {
        self.holds(self.key(request, KeyKind::AnsweredInvite, None), now)
    }

    /// Remember that `response` (a `401` or `407`) challenged the request
    /// of the client at `client`, so that its retry with credentials is
    /// known as one ([`Transactions::follows_challenge`]).
    pub fn note_challenge(&self, response: &SipView, client: SocketAddr, now: Instant) {
        let Ok(cseq) = response.cseq() else {
            return;
        };
        self.challenged.store(true, Ordering::Relaxed);
        let key = self.challenge_key(response, cseq.method, client);
        // Each challenge counts from its own time (NTLM takes two).
        self.take(key, now);
        let _ = self.note(key, None, now);
    }

    /// Whether `request` from `source` retries, with credentials, a request
    /// of the same source, method, Call-ID and From tag that was challenged
    /// in the last [`TRANSACTION_LIFETIME`]. A challenge is answered by one
    /// retry: it is forgotten then (a later request of the dialog or the
    /// registration is none).
    pub fn follows_challenge(&self, request: &SipView, source: SocketAddr, now: Instant) -> bool {
        if !self.any_challenge()
            || !CREDENTIALS
                .iter()
                .any(|name| request.header_named(name).is_some())
        {
            return false;
        }
        let method = request.method_bytes().unwrap_or_default();
        self.take(self.challenge_key(request, method, source), now)
    }

    /// Forget `key`: whether it was remembered (and not expired) at `now`.
    fn take(&self, key: u64, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.remove(key, now).is_some()
    }

    /// Whether a challenge was ever noted: until then no request follows
    /// one (checked without a lock, and without reading the clock first).
    pub fn any_challenge(&self) -> bool {
        self.challenged.load(Ordering::Relaxed)
    }

    /// The key of a challenged request of `client`: its method (a
    /// response's CSeq method), Call-ID and From tag, which its retry
    /// keeps (RFC 3261 22.2: a new CSeq number, a new branch).
    fn challenge_key(&self, message: &SipView, method: &[u8], client: SocketAddr) -> u64 {
        let mut h = self.keys.build_hasher();
        std::hash::Hash::hash(
            &SocketAddr::new(client.ip().to_canonical(), client.port()),
            &mut h,
        );
        let from_tag = message
            .from()
            .ok()
            .and_then(|f| f.tag())
            .unwrap_or_default();
        for field in [
            &b"c"[..],
            method,
            message.call_id().unwrap_or_default(),
            from_tag,
        ] {
            write_field(&mut h, field);
        }
        h.finish()
    }

    /// Whether `key` is remembered (and not expired) at `now`.
    fn holds(&self, key: u64, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(key, now).is_some()
    }

    /// Remember `key` with `decided`: `Ok` when it is new, else the
    /// decision remembered with it.
    fn note(
        &self,
        key: u64,
        decided: Option<Decided>,
        now: Instant,
    ) -> Result<(), Option<Decided>> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((first, _)) = seen.get(key, now) {
            return Err(*first);
        }
        // Only a value larger than the whole bound is refused, and a
        // decision is not: the insert evicts the oldest instead.
        let evicted = seen
            .insert(key, decided, now + TRANSACTION_LIFETIME, now)
            .map_or(0, |inserted| inserted.evicted);
        drop(seen);
        if evicted > 0 {
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
            let mut warning = self
                .eviction_warning
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(held_back) = warning.admit(now, EVICTION_WARNING_INTERVAL) {
                tracing::warn!(
                    evicted,
                    transaction_table_bytes = self.max_bytes,
                    warnings_held_back = held_back,
                    "transaction table full: oldest transactions forgotten before their 32 s (a \
                     retransmission of one is decided and recorded again); raise \
                     limits.transaction_table_bytes"
                );
            }
        }
        Ok(())
    }

    /// Transactions forgotten before their time because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Forget the transactions whose time is over (all live equally long:
    /// they leave from the front); returns how many. Inserts do it too;
    /// this keeps the gauges true while no request comes.
    pub fn expire(&self, now: Instant) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expire(now)
    }

    /// Transactions remembered.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table accounts for (never above its bound).
    pub fn accounted_bytes(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes()
    }

    fn key(&self, request: &SipView, method: KeyKind, source: Option<SocketAddr>) -> u64 {
        let mut h = self.keys.build_hasher();
        if let Some(source) = source {
            std::hash::Hash::hash(&source, &mut h);
        }
        let mut field = |bytes: &[u8]| write_field(&mut h, bytes);
        field(match method {
            KeyKind::Record(RecordKind::Decision) => b"d",
            KeyKind::Record(RecordKind::UpstreamUnavailable) => b"u",
            KeyKind::Record(RecordKind::FlowFailed) => b"f",
            KeyKind::Record(RecordKind::Timeout) => b"t",
            KeyKind::Record(RecordKind::Ban) => b"b",
            KeyKind::AnsweredInvite => b"a",
        });
        field(match method {
            KeyKind::Record(_) => request.method_bytes().unwrap_or_default(),
            KeyKind::AnsweredInvite => b"INVITE",
        });
        field(request.call_id().unwrap_or_default());
        field(&request.cseq().map_or(0, |c| c.number).to_be_bytes());
        field(
            request
                .from()
                .ok()
                .and_then(|f| f.tag())
                .unwrap_or_default(),
        );
        match request.top_via() {
            Ok(via) => {
                field(via.branch().unwrap_or_default());
                field(via.host);
                field(&via.port.unwrap_or(0).to_be_bytes());
            }
            Err(_) => field(b""),
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Where the requests come from.
    const CLIENT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5062);

    fn invite(branch: &str, via_port: u16) -> SipView {
        SipView::parse(Bytes::from(format!(
            "INVITE sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{via_port};branch={branch}\r\n\
             From: <sip:a@h>;tag=f\r\nTo: <sip:bob@h>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    /// A full table forgets its oldest transactions, and counts them
    /// (trial 18: silently).
    #[test]
    fn transactions_evicted_from_a_full_table_are_counted() {
        let t = Transactions::new(4096);
        let now = Instant::now();
        let first = invite("z9hG4bK-first", 5062);
        assert!(t.first_sighting(&first, CLIENT, RecordKind::Decision, now));
        let mut n = 0;
        while t.evicted() == 0 {
            n += 1;
            assert!(n < 10_000, "a 4 KiB table never full");
            let other = invite(&format!("z9hG4bK-{n}"), 5062);
            assert!(t.first_sighting(&other, CLIENT, RecordKind::Decision, now));
        }
        assert!(t.accounted_bytes() <= 4096);
        // The oldest went first: a copy of it is new again, and counted.
        assert!(t.first_sighting(&first, CLIENT, RecordKind::Decision, now));
        assert_eq!(t.evicted(), 2);
    }

    /// The gauges read the table: its expiry is swept while no request
    /// comes (trial 16: they stayed at their last value).
    #[test]
    fn remembered_transactions_expire_without_a_new_request() {
        let t = Transactions::new(1 << 20);
        let now = Instant::now();
        assert!(t.first_sighting(&invite("z9hG4bK1", 5062), CLIENT, RecordKind::Decision, now));
        assert!(t.first_sighting(&invite("z9hG4bK2", 5062), CLIENT, RecordKind::Decision, now));
        assert_eq!(t.expire(now), 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(now + TRANSACTION_LIFETIME), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn only_a_policy_verdict_of_another_generation_that_handles_it_otherwise_contradicts() {
        let decided = |treatment, generation, by_policy| Decided {
            treatment,
            generation,
            by_policy,
        };
        let first = decided(Treatment::Answered(403), 1, true);
        assert!(first.contradicts(&decided(Treatment::Relayed, 2, true)));
        assert!(
            !first.contradicts(&decided(Treatment::Relayed, 1, true)),
            "same config"
        );
        assert!(
            !first.contradicts(&decided(Treatment::Answered(403), 2, true)),
            "same fate"
        );
        assert!(
            !first.contradicts(&decided(Treatment::Dropped, 2, true)),
            "a drop"
        );
        assert!(
            !first.contradicts(&decided(Treatment::Answered(430), 2, false)),
            "a protocol answer (a flow gone)"
        );
        let relayed_unrecorded = decided(Treatment::Relayed, 1, false);
        assert!(!relayed_unrecorded.contradicts(&decided(Treatment::Answered(403), 2, true)));
    }

    #[test]
    fn a_copy_after_a_rate_limits_503_gets_it_again_unless_dropped_now() {
        let decided = |treatment, by_policy| Decided {
            treatment,
            generation: 1,
            by_policy,
        };
        let limited = decided(
            Treatment::OverLimit {
                retry_after_secs: 9,
            },
            false,
        );
        let again = CopyFate::OverLimit {
            retry_after_secs: 9,
        };
        assert_eq!(limited.copy(&decided(Treatment::Relayed, true)), again);
        assert_eq!(limited.copy(&limited), again);
        assert_eq!(
            limited.copy(&decided(Treatment::Dropped, true)),
            CopyFate::Again,
            "a drop contradicts nothing"
        );
        let rejected = decided(Treatment::Answered(403), true);
        let relayed_after_a_reload = Decided {
            generation: 2,
            ..decided(Treatment::Relayed, true)
        };
        assert_eq!(
            rejected.copy(&relayed_after_a_reload),
            CopyFate::AnsweredBefore { status: 403 }
        );
        assert_eq!(rejected.copy(&rejected), CopyFate::Again);
        let relayed = decided(Treatment::Relayed, true);
        let rejected_after_a_reload = Decided {
            generation: 2,
            ..rejected
        };
        assert_eq!(relayed.copy(&rejected_after_a_reload), CopyFate::Dropped);
    }

    #[test]
    fn a_retransmission_is_seen_once_within_the_lifetime() {
        let t = Transactions::new(1 << 20);
        let now = Instant::now();
        let first = invite("z9hG4bK-1", 5062);
        assert!(t.first_sighting(&first, CLIENT, RecordKind::Decision, now));
        assert!(!t.first_sighting(
            &invite("z9hG4bK-1", 5062),
            CLIENT,
            RecordKind::Decision,
            now
        ));
        assert!(
            t.first_sighting(&first, CLIENT, RecordKind::UpstreamUnavailable, now),
            "another record of the same transaction"
        );
        assert!(t.first_sighting(
            &invite("z9hG4bK-2", 5062),
            CLIENT,
            RecordKind::Decision,
            now
        ));
        assert!(
            t.first_sighting(
                &invite("z9hG4bK-1", 5070),
                CLIENT,
                RecordKind::Decision,
                now
            ),
            "another sent-by: another transaction (the registrar's leg)"
        );
        let elsewhere = "127.0.0.9:5062".parse().unwrap();
        assert!(
            t.first_sighting(&first, elsewhere, RecordKind::Decision, now),
            "the same bytes from another source: its own request"
        );
        assert!(!t.first_sighting(&first, elsewhere, RecordKind::Decision, now));
        let later = now + TRANSACTION_LIFETIME;
        assert!(
            t.first_sighting(&first, CLIENT, RecordKind::Decision, later),
            "expired"
        );
    }

    /// The per-transaction figure the config reference gives (64-bit).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_transaction_costs_the_documented_48_bytes() {
        use crate::expiring::{slot_bytes, MAX_INDEX_BYTES_PER_SLOT};
        assert_eq!(
            slot_bytes::<Option<Decided>>() + MAX_INDEX_BYTES_PER_SLOT,
            48
        );
    }

    #[test]
    fn the_table_stays_within_its_bytes_and_forgets_the_oldest() {
        let bound = 64 * 1024;
        let t = Transactions::new(bound);
        let now = Instant::now();
        for i in 0..5_000 {
            assert!(t.first_sighting(
                &invite(&format!("z9hG4bK-{i}"), 5062),
                CLIENT,
                RecordKind::Decision,
                now
            ));
            assert!(t.accounted_bytes() <= bound);
        }
        assert!(t.len() > 1000 && t.len() < 5000, "{}", t.len());
        assert!(
            t.first_sighting(
                &invite("z9hG4bK-0", 5062),
                CLIENT,
                RecordKind::Decision,
                now
            ),
            "forgotten"
        );
        assert!(!t.first_sighting(
            &invite("z9hG4bK-4999", 5062),
            CLIENT,
            RecordKind::Decision,
            now
        ));
    }
}
