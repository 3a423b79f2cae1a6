//! The INVITEs relayed from the registrar toward this instance's clients
//! that have no final answer yet: the callee side of a call (an agent
//! offer, a call to a user connected here), so that a drain waits for the
//! callee's answer before the connection it comes back on closes.
//!
//! Only INVITEs: a call may ring for minutes, while another request is
//! answered at once or never (Lync's BENOTIFY), and a drain's quiet second
//! covers the former. An INVITE is known by the branch of the Via it
//! arrived with (the registrar's, RFC 3261 17.2.3; a client's answer
//! carries it second, under this proxy's). It is forgotten at its final
//! answer, when it could not be sent, when the connection it went on
//! closed (looked at when a drain asks), or at its deadline: 64*T1 (Timer B)
//! from its relay, and Timer C (`limits.timer_c_secs`) from each
//! provisional answer (101 to 199) of a callee that rings. One keyed
//! 64-bit hash per INVITE in an [`ExpiringMap`], bounded in entries and
//! bytes (the oldest give way: a drain may then not wait for them); each
//! relay also sweeps a few slots for expired entries, so that those of
//! calls answered elsewhere do not pile up behind ringing ones. Pure: the
//! clock is passed in.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::expiring::{slot_bytes, Bounds, ExpiringMap, HeapBytes, MAX_INDEX_BYTES_PER_SLOT};
use crate::vocabulary::ConnectionId;

/// Where an INVITE went: the connection and its peer, over a stream (a
/// UDP client has none).
pub type Callee = Option<(ConnectionId, SocketAddr)>;

/// A remembered INVITE's callee.
#[derive(Debug, Clone, Copy)]
struct Entry(Callee);

impl HeapBytes for Entry {
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// Most INVITEs toward clients remembered at once.
const MAX_ENTRIES: usize = 65_536;
/// Slots swept for expired entries at each relay.
const SWEEP_PER_RELAY: usize = 8;
/// Slots swept at a time (the lock let go in between) when a drain asks
/// what is pending.
const SWEEP_CHUNK: usize = 4096;

/// The map, and where the next sweep of a relay starts.
#[derive(Debug)]
struct Table {
    map: ExpiringMap<Entry>,
    sweep_from: usize,
}

/// See the module doc.
#[derive(Debug)]
pub struct TowardClients {
    table: Mutex<Table>,
    /// Entries in the map, expired ones not yet swept included (read
    /// without the lock: nothing to look up while it is 0).
    len: AtomicUsize,
    keys: RandomState,
    /// How long a ringing INVITE is remembered without a word (Timer C).
    ringing: Duration,
    /// How long one is before its first provisional answer (64*T1).
    unanswered: Duration,
}

impl TowardClients {
    /// An empty table: an INVITE is remembered for `timeout` (64*T1)
    /// after its relay, and for `timer_c` after each provisional answer.
    pub fn new(timer_c: Duration, timeout: Duration) -> Self {
        Self {
            table: Mutex::new(Table {
                map: ExpiringMap::new(Bounds {
                    max_entries: MAX_ENTRIES,
                    max_bytes: MAX_ENTRIES * (slot_bytes::<Entry>() + MAX_INDEX_BYTES_PER_SLOT),
                }),
                sweep_from: 0,
            }),
            len: AtomicUsize::new(0),
            keys: RandomState::new(),
            ringing: timer_c,
            unanswered: timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An INVITE that arrived with Via branch `branch` went toward a
    /// client (`callee`) at `now`. A copy of one remembered (the registrar
    /// resends it until a provisional answer) changes nothing.
    pub fn relayed(&self, branch: &[u8], callee: Callee, now: Instant) {
        let key = self.keys.hash_one(branch);
        let mut table = self.lock();
        let from = table.sweep_from;
        let (_, next) = table.map.sweep_chunk(now, from, SWEEP_PER_RELAY);
        table.sweep_from = next.unwrap_or(0);
        if table.map.get(key, now).is_none() {
            // Full: the oldest gives way (InsertError only for an entry
            // larger than the bound, which this never is).
            let _ = table
                .map
                .insert(key, Entry(callee), now + self.unanswered, now);
        }
        self.len.store(table.map.len(), Ordering::Relaxed);
    }

    /// A client answered that INVITE with `status` at `now`: a final
    /// answer forgets it, a provisional one (101 to 199) gives it Timer C.
    pub fn answered(&self, branch: &[u8], status: u16, now: Instant) {
        if self.len.load(Ordering::Relaxed) == 0 || status == 100 {
            return;
        }
        let key = self.keys.hash_one(branch);
        let mut table = self.lock();
        if status >= 200 {
            table.map.remove(key, now);
        } else if let Some((&entry, _)) = table.map.get(key, now) {
            let _ = table.map.insert(key, entry, now + self.ringing, now);
        }
        self.len.store(table.map.len(), Ordering::Relaxed);
    }

    /// That INVITE could not be sent: forgotten.
    pub fn forget(&self, branch: &[u8], now: Instant) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = self.keys.hash_one(branch);
        let mut table = self.lock();
        table.map.remove(key, now);
        self.len.store(table.map.len(), Ordering::Relaxed);
    }

    /// The INVITEs toward clients still awaiting a final answer at `now`:
    /// those that expired, and those whose connection `open` says is gone
    /// (its callee cannot answer on it), are forgotten first, a chunk at a
    /// time (a drain's look, not the message path).
    pub fn pending(&self, now: Instant, open: &dyn Fn(ConnectionId, SocketAddr) -> bool) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let alive = |entry: &Entry| entry.0.is_none_or(|(id, peer)| open(id, peer));
        let mut from = Some(0);
        while let Some(at) = from {
            from = self.lock().map.retain_chunk(now, at, SWEEP_CHUNK, alive).1;
        }
        let len = self.lock().map.len();
        self.len.store(len, Ordering::Relaxed);
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMER_C: Duration = Duration::from_secs(180);

    /// Every connection open.
    fn open(_: ConnectionId, _: SocketAddr) -> bool {
        true
    }
    const TIMEOUT: Duration = Duration::from_secs(32);

    #[test]
    fn an_invite_is_pending_until_its_final_answer() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-1", None, t0);
        table.relayed(b"z9hG4bK-2", None, t0);
        assert_eq!(table.pending(t0, &open), 2);
        table.answered(b"z9hG4bK-1", 180, t0);
        table.answered(b"z9hG4bK-2", 486, t0);
        assert_eq!(table.pending(t0, &open), 1);
        table.answered(b"z9hG4bK-1", 200, t0);
        assert_eq!(table.pending(t0, &open), 0);
        // One that could not be sent.
        table.relayed(b"z9hG4bK-3", None, t0);
        table.forget(b"z9hG4bK-3", t0);
        assert_eq!(table.pending(t0, &open), 0);
    }

    #[test]
    fn an_unanswered_invite_goes_at_64_t1_and_a_ringing_one_at_timer_c() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-ring", None, t0);
        table.relayed(b"z9hG4bK-dead", None, t0);
        // A 100 gives no more time (RFC 3261 16.7 step 2).
        table.answered(b"z9hG4bK-dead", 100, t0);
        let ringing = t0 + Duration::from_secs(10);
        table.answered(b"z9hG4bK-ring", 180, ringing);
        assert_eq!(table.pending(t0 + TIMEOUT, &open), 1, "the silent one went");
        assert_eq!(
            table.pending(ringing + TIMER_C - Duration::from_millis(1), &open),
            1
        );
        assert_eq!(table.pending(ringing + TIMER_C, &open), 0);
    }

    /// An INVITE whose callee's connection closed is not waited for; one
    /// to a UDP callee, or over a connection still open, is.
    #[test]
    fn an_invite_on_a_connection_that_closed_is_not_pending() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (open_id, closed_id) = (ConnectionId::FIRST, ConnectionId::new(2).unwrap());
        table.relayed(b"z9hG4bK-open", Some((open_id, peer)), t0);
        table.relayed(b"z9hG4bK-closed", Some((closed_id, peer)), t0);
        table.relayed(b"z9hG4bK-udp", None, t0);
        let only_first = |id: ConnectionId, _: SocketAddr| id == open_id;
        assert_eq!(table.pending(t0, &only_first), 2);
        assert_eq!(table.pending(t0, &open), 2, "forgotten for good");
    }

    /// A copy of an INVITE (the registrar resends it until a provisional
    /// answer) does not give it more time.
    #[test]
    fn a_copy_of_an_invite_gives_it_no_more_time() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-copy", None, t0);
        table.relayed(b"z9hG4bK-copy", None, t0 + Duration::from_secs(16));
        assert_eq!(table.pending(t0 + TIMEOUT, &open), 0);
    }

    /// Entries that expired behind a long-lived one are swept by later
    /// relays, not only by a drain's look.
    #[test]
    fn relays_sweep_what_expired_behind_a_ringing_invite() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-ring", None, t0);
        table.answered(b"z9hG4bK-ring", 180, t0);
        for n in 0..100 {
            table.relayed(format!("z9hG4bK-{n}").as_bytes(), None, t0);
        }
        let later = t0 + TIMEOUT + Duration::from_secs(1);
        for n in 100..140 {
            table.relayed(format!("z9hG4bK-{n}").as_bytes(), None, later);
        }
        // 41 live: the 40 relays swept 320 slots, the table twice over.
        assert_eq!(table.len.load(Ordering::Relaxed), 41);
        assert_eq!(table.pending(later, &open), 41);
    }
}
