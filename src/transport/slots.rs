//! Stage 1, connection slots: `limits.max_connections`, one pool for every
//! TCP and TLS listener, of which `limits.reserved_connections` only
//! trusted sources may take, and the eviction of half-open connections
//! when the pool is full.
//!
//! How a source stands at accept ([`Standing`]):
//! - **trusted**: `rate_limit.trusted`, `response_group.application_sources`
//!   and the registrar (`proxy.upstream_sources`), i.e. the sources the
//!   admission exempts: any slot, and their connections are never evicted;
//! - **known flow**: a source (IPv4 address or IPv6 /64) that sent a
//!   complete SIP message, admitted by its rate limit, on a connection in
//!   the last `limits.known_flow_secs` (keep-alives on a connection that
//!   did so keep it known). The transport knows framing, not SIP, so
//!   "proven" means exactly that: a framed message handed on, not one the
//!   registrar accepted. A known flow may hold one reserved slot at a time
//!   (a client keeps one connection), so a few proven addresses cannot
//!   take the whole reserve;
//! - **unknown**: anyone else: unreserved slots only.
//!
//! A connection takes an unreserved slot while there is one; otherwise a
//! trusted one (or a known flow) takes a reserved slot while there is one.
//! When the slots it may take are all in use, it closes the **oldest
//! half-open connection of the busiest source** (connected, no complete
//! message yet, in the unreserved share, not trusted) and takes its place;
//! with no such connection it is refused (counted as transport fault
//! `connection_limit`, as before). "Busiest" is the source with the most
//! half-open connections: a client sends its first message milliseconds
//! after connecting, so its connection is rarely half-open for long, while
//! a trickling or silent connection is half-open until the message
//! deadline closes it. An evicted connection is closed at once (its slot
//! counted until it has closed: a moment); at most [`MAX_CLOSING`] are on
//! their way out at once, past which a new connection is refused.
//!
//! Everything is O(1) per accept, close and first message, with no scan of
//! the connections: half-open connections are kept per source in a queue
//! ordered by age (ids increase), sources in buckets by their number of
//! half-open connections with the highest non-empty bucket tracked (a
//! count changes by one at a time, so that bucket moves by at most one); a
//! connection leaves its source's queue by a binary search (the queue is
//! at most `rate_limit.max_connections_per_source` long). Known flows are
//! an expiring table bounded in bytes (`limits.known_flow_bytes`; the
//! oldest evicted first, O(1): the proxy's table of [`ExpiringMap`]), keyed
//! by a keyed hash of the source.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::admission::SourceKey;
use super::WarningWindow;
use crate::config::Limits;
use crate::expiring::{Bounds, ExpiringMap};
use crate::observe::metrics::Metrics;

/// Eviction warnings are logged at most once per this interval.
const EVICTION_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// How a source stands when one of its connections is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Exempt from rate limits (`rate_limit.trusted`, the Response Group
    /// application, the registrar): any slot; never evicted.
    Trusted,
    /// Sent a complete message within `limits.known_flow_secs`: one
    /// reserved slot at a time.
    Known,
    /// Unreserved slots only.
    Unknown,
}

impl Standing {
    /// What a log line says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Known => "known flow",
            Self::Unknown => "unknown",
        }
    }
}

/// No slot for a new connection: every one it may take is in use and no
/// half-open connection could be closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// How its source stood.
    pub standing: Standing,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// `limits.reserved_connections`.
    pub reserved: usize,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "limits.max_connections = {} (limits.reserved_connections = {} of them for trusted sources and known flows) in use, no half-open connection to close (or {MAX_CLOSING} closing already); source {}",
            self.max_connections,
            self.reserved,
            self.standing.as_str()
        )
    }
}

/// Which share of the pool a slot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    Unreserved,
    Reserved,
}

/// The half-open connections of limited sources in the unreserved share.
#[derive(Debug, Default)]
struct HalfOpen {
    sources: HashMap<SourceKey, Pending>,
    /// `by_count[n - 1]`: the sources with `n` half-open connections.
    by_count: Vec<Vec<SourceKey>>,
    /// The highest `n` whose bucket is not empty (0: none is half-open).
    busiest: usize,
    /// Half-open connections held.
    len: usize,
}

/// One source's half-open connections.
#[derive(Debug)]
struct Pending {
    /// (slot id, the connection's closing token), oldest first: ids
    /// increase, so the queue is sorted.
    queue: VecDeque<(u64, CancellationToken)>,
    /// Its place in `by_count[queue.len() - 1]`.
    at: usize,
}

impl HalfOpen {
    /// Add connection `id` of `key` as its newest half-open one.
    fn push(&mut self, key: SourceKey, id: u64, closing: CancellationToken) {
        let pending = self.sources.entry(key).or_insert_with(|| Pending {
            queue: VecDeque::new(),
            at: 0,
        });
        let (before, at) = (pending.queue.len(), pending.at);
        pending.queue.push_back((id, closing));
        if before > 0 {
            self.unbucket(before, at);
        }
        self.bucket(key, before + 1);
        self.len += 1;
    }

    /// Take connection `id` of `key` out; whether it was there.
    fn remove(&mut self, key: SourceKey, id: u64) -> bool {
        let Some(pending) = self.sources.get_mut(&key) else {
            return false;
        };
        let Ok(i) = pending.queue.binary_search_by_key(&id, |(id, _)| *id) else {
            return false;
        };
        pending.queue.remove(i);
        let (after, at) = (pending.queue.len(), pending.at);
        self.unbucket(after + 1, at);
        if after == 0 {
            self.sources.remove(&key);
        } else {
            self.bucket(key, after);
        }
        while self.busiest > 0 && self.by_count[self.busiest - 1].is_empty() {
            self.busiest -= 1;
        }
        self.len -= 1;
        true
    }

    /// Take out the oldest half-open connection of the busiest source.
    fn pop_oldest_of_busiest(&mut self) -> Option<(SourceKey, u64, CancellationToken)> {
        let key = *self.by_count.get(self.busiest.checked_sub(1)?)?.last()?;
        let (id, closing) = self.sources.get(&key)?.queue.front()?.clone();
        self.remove(key, id);
        Some((key, id, closing))
    }

    fn unbucket(&mut self, count: usize, at: usize) {
        let bucket = &mut self.by_count[count - 1];
        bucket.swap_remove(at);
        if let Some(moved) = bucket.get(at) {
            if let Some(pending) = self.sources.get_mut(moved) {
                pending.at = at;
            }
        }
    }

    fn bucket(&mut self, key: SourceKey, count: usize) {
        if self.by_count.len() < count {
            self.by_count.resize_with(count, Vec::new);
        }
        let bucket = &mut self.by_count[count - 1];
        bucket.push(key);
        let at = bucket.len() - 1;
        if let Some(pending) = self.sources.get_mut(&key) {
            pending.at = at;
        }
        self.busiest = self.busiest.max(count);
    }
}

/// What the pool's lock guards.
#[derive(Debug, Default)]
struct State {
    unreserved_used: usize,
    reserved_used: usize,
    /// Known flows holding a reserved slot (one each at most).
    known_in_reserve: HashSet<SourceKey>,
    next_id: u64,
    half_open: HalfOpen,
    /// Connections closed for another and not closed yet (their slots
    /// still counted): at most [`MAX_CLOSING`].
    closing: HashSet<u64>,
}

/// At most this many connections closed for others may be on their way
/// out at once; past it, a new connection is refused instead. Each slot
/// closed for another is counted until its connection has gone (the
/// runtime runs its task, usually within a millisecond), so this bounds
/// how far open connections and file descriptors can stand above
/// `limits.max_connections` during a flood of evictions.
pub const MAX_CLOSING: usize = 64;

/// The connection slots of every TCP and TLS listener; see the module doc.
pub struct ConnectionSlots {
    max_connections: usize,
    reserved: usize,
    known_flow_ttl: Option<Duration>,
    state: Mutex<State>,
    /// Known flows: keyed hash of the source → (), until it expires.
    known: Mutex<ExpiringMap<()>>,
    hasher: RandomState,
    warnings: Mutex<WarningWindow>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for ConnectionSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock_state();
        f.debug_struct("ConnectionSlots")
            .field("max_connections", &self.max_connections)
            .field("reserved", &self.reserved)
            .field("unreserved_used", &state.unreserved_used)
            .field("reserved_used", &state.reserved_used)
            .field("half_open", &state.half_open.len)
            .finish_non_exhaustive()
    }
}

impl ConnectionSlots {
    /// `limits.max_connections` slots, `limits.reserved_connections` of
    /// them reserved; known flows per `limits.known_flow_secs` and
    /// `limits.known_flow_bytes`.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            max_connections: limits.max_connections,
            reserved: limits.reserved_connections.min(limits.max_connections),
            known_flow_ttl: limits.known_flow_ttl,
            state: Mutex::new(State::default()),
            known: Mutex::new(ExpiringMap::new(Bounds {
                max_entries: usize::MAX,
                max_bytes: limits.known_flow_bytes,
            })),
            hasher: RandomState::new(),
            warnings: Mutex::new(WarningWindow::default()),
            metrics,
        }
    }

    /// A slot for a connection from `peer` (`trusted`: its source is exempt
    /// from the rate limits), or [`Full`]. `closing` is the connection's
    /// token: cancelled when it is evicted.
    pub fn acquire(
        self: &Arc<Self>,
        peer: SocketAddr,
        trusted: bool,
        closing: CancellationToken,
        now: Instant,
    ) -> Result<Slot, Full> {
        let key = SourceKey::of(peer.ip());
        let mut state = self.lock_state();
        let id = state.next_id;
        state.next_id += 1;
        let mut known_in_reserve = false;
        let share = if state.unreserved_used < self.max_connections - self.reserved {
            state.unreserved_used += 1;
            Share::Unreserved
        } else {
            let standing = match trusted {
                true => Standing::Trusted,
                false if self.is_known(key, now) => Standing::Known,
                false => Standing::Unknown,
            };
            let may_reserve = match standing {
                Standing::Trusted => true,
                Standing::Known => !state.known_in_reserve.contains(&key),
                Standing::Unknown => false,
            };
            if may_reserve && state.reserved_used < self.reserved {
                state.reserved_used += 1;
                if standing == Standing::Known {
                    state.known_in_reserve.insert(key);
                    known_in_reserve = true;
                }
                Metrics::inc(&self.metrics.reserved_admissions);
                Share::Reserved
            } else if let Some((evicted, evicted_id, token)) = (state.closing.len() < MAX_CLOSING)
                .then(|| state.half_open.pop_oldest_of_busiest())
                .flatten()
            {
                // Closed at once; its slot is counted until it has closed.
                token.cancel();
                state.closing.insert(evicted_id);
                state.unreserved_used += 1;
                Metrics::inc(&self.metrics.connections_evicted);
                self.warn_evicted(evicted, peer, standing);
                Share::Unreserved
            } else {
                return Err(Full {
                    standing,
                    max_connections: self.max_connections,
                    reserved: self.reserved,
                });
            }
        };
        let evictable = share == Share::Unreserved && !trusted;
        if evictable {
            state.half_open.push(key, id, closing.clone());
        }
        self.publish(&state);
        drop(state);
        Ok(Slot {
            slots: self.clone(),
            key,
            id,
            share,
            trusted,
            known_in_reserve,
            evictable,
            closing,
            heard_at: None,
        })
    }

    /// Whether `key` is a known flow at `now`.
    fn is_known(&self, key: SourceKey, now: Instant) -> bool {
        self.known_flow_ttl.is_some()
            && self
                .lock_known()
                .get(self.hasher.hash_one(key), now)
                .is_some()
    }

    /// Make `key` a known flow until `now` + `limits.known_flow_secs`.
    fn know(&self, key: SourceKey, now: Instant) {
        let Some(ttl) = self.known_flow_ttl else {
            return;
        };
        let mut known = self.lock_known();
        // Never too large: the bound is at least 64 KiB, an entry 48 bytes.
        let _ = known.insert(self.hasher.hash_one(key), (), now + ttl, now);
        self.metrics
            .known_flows
            .store(known.len() as u64, Ordering::Relaxed);
    }

    /// Slots in use now: (unreserved, reserved).
    pub fn in_use(&self) -> (usize, usize) {
        let state = self.lock_state();
        (state.unreserved_used, state.reserved_used)
    }

    /// Half-open connections that could be evicted now.
    pub fn half_open(&self) -> usize {
        self.lock_state().half_open.len
    }

    fn publish(&self, state: &State) {
        self.metrics
            .reserved_connections_in_use
            .store(state.reserved_used as u64, Ordering::Relaxed);
    }

    fn warn_evicted(&self, evicted: SourceKey, peer: SocketAddr, standing: Standing) {
        let due = self
            .warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now(), EVICTION_WARNING_INTERVAL);
        if let Some(not_logged) = due {
            warn!(
                evicted = %evicted,
                peer = %peer.ip(),
                standing = standing.as_str(),
                max_connections = self.max_connections,
                reserved = self.reserved,
                not_logged,
                "connection slots full: closed the oldest half-open connection of the busiest source"
            );
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_known(&self) -> MutexGuard<'_, ExpiringMap<()>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's slot, given back when dropped.
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    key: SourceKey,
    id: u64,
    share: Share,
    trusted: bool,
    /// It is its known flow's one reserved slot.
    known_in_reserve: bool,
    /// It is among the half-open connections until it is heard.
    evictable: bool,
    closing: CancellationToken,
    /// When it last made its source a known flow (`None`: no complete
    /// message yet).
    heard_at: Option<Instant>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("source", &self.key)
            .field("id", &self.id)
            .field("share", &self.share)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Cancelled when the connection is evicted (or shutdown begins).
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Whether a complete message was heard on it.
    pub fn is_heard(&self) -> bool {
        self.heard_at.is_some()
    }

    /// A complete message was admitted on the connection (or, once one
    /// was, a keep-alive arrived): it is no longer half-open, and its
    /// source is a known flow for `limits.known_flow_secs` (refreshed at
    /// most every quarter of that per connection).
    pub fn heard(&mut self, now: Instant) {
        if self.heard_at.is_none() && self.evictable {
            self.evictable = false;
            self.slots.lock_state().half_open.remove(self.key, self.id);
        }
        let Some(ttl) = self.slots.known_flow_ttl else {
            self.heard_at.get_or_insert(now);
            return;
        };
        let due = self
            .heard_at
            .is_none_or(|at| now.saturating_duration_since(at) >= ttl / 4);
        if due {
            self.heard_at = Some(now);
            if !self.trusted {
                self.slots.know(self.key, now);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock_state();
        match self.share {
            Share::Unreserved => state.unreserved_used -= 1,
            Share::Reserved => state.reserved_used -= 1,
        }
        if self.known_in_reserve {
            state.known_in_reserve.remove(&self.key);
        }
        if self.evictable {
            state.half_open.remove(self.key, self.id);
        }
        state.closing.remove(&self.id);
        self.slots.publish(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, reserved: usize) -> Limits {
        Limits {
            max_connections: max,
            reserved_connections: reserved,
            known_flow_ttl: Some(Duration::from_secs(3600)),
            known_flow_bytes: 1 << 20,
            ..crate::transport::TransportContext::test_limits(max)
        }
    }

    fn pool(max: usize, reserved: usize) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots::new(
            &limits(max, reserved),
            Arc::new(Metrics::default()),
        ))
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn take(
        slots: &Arc<ConnectionSlots>,
        from: &str,
        trusted: bool,
    ) -> Result<(Slot, CancellationToken), Full> {
        let token = CancellationToken::new();
        let slot = slots.acquire(peer(from), trusted, token.clone(), Instant::now())?;
        Ok((slot, token))
    }

    /// A flood of evictions: the connections closed for others count
    /// until they are gone, and at most MAX_CLOSING are on their way out,
    /// so the pool stands at most that far above max_connections.
    #[test]
    fn at_most_max_closing_connections_are_on_their_way_out() {
        let slots = pool(4, 0);
        let mut held = Vec::new();
        for port in 1..=4 {
            held.push(take(&slots, &format!("192.0.2.1:{port}"), false).unwrap());
        }
        // Every new one closes an older half-open one, whose task has not
        // run yet (its slot is still held here).
        for port in 0..MAX_CLOSING {
            held.push(take(&slots, &format!("192.0.2.2:{port}"), false).unwrap());
        }
        assert_eq!(
            held.iter().filter(|(_, t)| t.is_cancelled()).count(),
            MAX_CLOSING
        );
        assert!(take(&slots, "192.0.2.3:1", false).is_err(), "refused");
        // One of them goes: room for one more eviction.
        let gone = held.iter().position(|(_, t)| t.is_cancelled()).unwrap();
        held.remove(gone);
        held.push(take(&slots, "192.0.2.3:2", false).unwrap());
        assert!(take(&slots, "192.0.2.3:3", false).is_err());
    }

    #[test]
    fn untrusted_sources_leave_the_reserve_to_trusted_ones() {
        let slots = pool(4, 2);
        let now = Instant::now();
        let mut held = Vec::new();
        for port in 1..=2 {
            let (mut slot, _) = take(&slots, &format!("192.0.2.1:{port}"), false).unwrap();
            // Heard: no longer half-open, and 192.0.2.1 is a known flow.
            slot.heard(now);
            held.push(slot);
        }
        // The unreserved share is full and nothing is half-open: an
        // unknown source is refused, a trusted one gets a reserved slot.
        let full = take(&slots, "192.0.2.2:1", false).unwrap_err();
        assert_eq!(full.standing, Standing::Unknown);
        let (trusted, _) = take(&slots, "10.0.0.1:1", true).unwrap();
        assert_eq!(slots.in_use(), (2, 1));
        // 192.0.2.1 was heard: a known flow, one reserved slot at a time.
        let (known, _) = take(&slots, "192.0.2.1:9", false).unwrap();
        assert_eq!(slots.in_use(), (2, 2));
        assert_eq!(slots.metrics.reserved_admissions.load(Ordering::Relaxed), 2);
        drop(trusted);
        assert_eq!(
            take(&slots, "192.0.2.1:10", false).unwrap_err().standing,
            Standing::Known,
            "a known flow holds one reserved slot at most"
        );
        drop(known);
        let (again, _) = take(&slots, "192.0.2.1:10", false).unwrap();
        assert_eq!(slots.in_use(), (2, 1));
        drop((again, held));
        assert_eq!(slots.in_use(), (0, 0));
        assert_eq!(
            slots
                .metrics
                .reserved_connections_in_use
                .load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_full_pool_closes_the_oldest_half_open_connection_of_the_busiest_source() {
        let slots = pool(5, 0);
        // 192.0.2.1: three half-open; 192.0.2.2: one half-open; 192.0.2.3:
        // one heard (not half-open).
        let a: Vec<_> = (1..=3)
            .map(|p| take(&slots, &format!("192.0.2.1:{p}"), false).unwrap())
            .collect();
        let b = take(&slots, "192.0.2.2:1", false).unwrap();
        let (mut c, c_token) = take(&slots, "192.0.2.3:1", false).unwrap();
        c.heard(Instant::now());
        assert_eq!(slots.half_open(), 4);
        // A newcomer closes 192.0.2.1's oldest, then its next oldest ...
        let d = take(&slots, "192.0.2.4:1", false).unwrap();
        assert!(a[0].1.is_cancelled() && !a[1].1.is_cancelled());
        let e = take(&slots, "192.0.2.5:1", false).unwrap();
        assert!(a[1].1.is_cancelled() && !a[2].1.is_cancelled());
        assert_eq!(slots.metrics.connections_evicted.load(Ordering::Relaxed), 2);
        // The evicted ones still count until they close.
        assert_eq!(slots.in_use(), (7, 0));
        let mut a = a.into_iter();
        drop((a.next(), a.next()));
        assert_eq!(slots.in_use(), (5, 0));
        // Now every source has one half-open connection (a[2], b, d, e):
        // any of them may go, never the heard one, never a trusted one.
        let a2 = a.next().unwrap();
        let _trusted = take(&slots, "10.0.0.1:1", true).unwrap();
        assert!(!c_token.is_cancelled());
        let cancelled = [&a2.1, &b.1, &d.1, &e.1]
            .iter()
            .filter(|t| t.is_cancelled())
            .count();
        assert_eq!(cancelled, 1);
        assert_eq!(slots.half_open(), 3);
    }

    #[test]
    fn with_nothing_half_open_a_full_pool_refuses() {
        let slots = pool(2, 0);
        let now = Instant::now();
        let (mut one, _) = take(&slots, "192.0.2.1:1", false).unwrap();
        let _trusted = take(&slots, "10.0.0.1:1", true).unwrap();
        one.heard(now);
        assert_eq!(slots.half_open(), 0);
        let full = take(&slots, "10.0.0.2:1", true).unwrap_err();
        assert_eq!(full.standing, Standing::Trusted);
        assert!(full.to_string().contains("limits.max_connections = 2"));
        drop(one);
        assert!(take(&slots, "192.0.2.9:1", false).is_ok());
    }

    #[test]
    fn half_open_bookkeeping_survives_any_order_of_closes() {
        let slots = pool(64, 0);
        let mut held: Vec<(Slot, CancellationToken)> = (0..48)
            .map(|i| take(&slots, &format!("192.0.2.{}:{i}", i % 5), false).unwrap())
            .collect();
        // Close or hear them in a scrambled order; the busiest source and
        // the counts stay right all along.
        let mut order: Vec<usize> = (0..48).map(|i| (i * 17) % 48).collect();
        order.reverse();
        for (n, i) in order.into_iter().enumerate() {
            if n % 3 == 0 {
                held[i].0.heard(Instant::now());
            }
            let state = slots.lock_state();
            let h = &state.half_open;
            let most = h.sources.values().map(|p| p.queue.len()).max().unwrap_or(0);
            assert_eq!(h.busiest, most);
            assert_eq!(
                h.len,
                h.sources.values().map(|p| p.queue.len()).sum::<usize>()
            );
            for (count, bucket) in h.by_count.iter().enumerate() {
                for (at, key) in bucket.iter().enumerate() {
                    assert_eq!(h.sources[key].queue.len(), count + 1);
                    assert_eq!(h.sources[key].at, at);
                }
            }
        }
        held.clear();
        assert_eq!(slots.in_use(), (0, 0));
        assert_eq!(slots.half_open(), 0);
    }

    #[test]
    fn known_flows_expire_and_can_be_off() {
        let metrics = Arc::new(Metrics::default());
        let slots = Arc::new(ConnectionSlots::new(&limits(2, 1), metrics.clone()));
        let now = Instant::now();
        let (mut slot, _) = take(&slots, "192.0.2.1:1", false).unwrap();
        slot.heard(now);
        let key = SourceKey::of("192.0.2.1".parse().unwrap());
        assert!(slots.is_known(key, now + Duration::from_secs(3599)));
        assert!(!slots.is_known(key, now + Duration::from_secs(3601)));
        assert_eq!(metrics.known_flows.load(Ordering::Relaxed), 1);
        let off = ConnectionSlots::new(
            &Limits {
                known_flow_ttl: None,
                ..limits(2, 1)
            },
            metrics,
        );
        off.know(key, now);
        assert!(!off.is_known(key, now));
    }
}
