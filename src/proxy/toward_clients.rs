//! The requests relayed from the registrar toward this instance's clients
//! that have no final answer yet: the callee side of a call (an agent
//! offer, a call to a user connected here), so that a drain waits for the
//! callee's answer before the connections it comes back on close.
//!
//! A request is known by the branch of the Via it arrived with (the
//! registrar's, RFC 3261 17.2.3; a client's answer carries it second,
//! under this proxy's) and its CSeq method class (a CANCEL shares its
//! INVITE's branch). It is forgotten at its final answer, when it could
//! not be sent, or at its deadline: 64*T1 for a non-INVITE, and Timer C
//! (`limits.timer_c_secs`) for an INVITE, from its relay and again from
//! each provisional answer (101 to 199) a callee that still rings sends.
//! One keyed 64-bit hash per request in an [`ExpiringMap`], bounded in
//! entries and bytes (the oldest give way: a drain may then not wait for
//! them). Pure: the clock is passed in.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::client_transactions::TransactionMethod;
use crate::expiring::{slot_bytes, Bounds, ExpiringMap, MAX_INDEX_BYTES_PER_SLOT};

/// Most requests toward clients remembered at once.
const MAX_ENTRIES: usize = 65_536;

/// See the module doc.
#[derive(Debug)]
pub struct TowardClients {
    map: Mutex<ExpiringMap<()>>,
    /// Entries in the map, expired ones not yet swept included (read
    /// without the lock: nothing to look up while it is 0).
    len: AtomicUsize,
    keys: RandomState,
    /// How long an INVITE is remembered without a word (Timer C).
    invite: Duration,
    /// How long another request is (64*T1).
    other: Duration,
}

impl TowardClients {
    /// An empty table: an INVITE is remembered for `timer_c` after its
    /// relay and each provisional answer, another request for `timeout`
    /// (64*T1).
    pub fn new(timer_c: Duration, timeout: Duration) -> Self {
        Self {
            map: Mutex::new(ExpiringMap::new(Bounds {
                max_entries: MAX_ENTRIES,
                max_bytes: MAX_ENTRIES * (slot_bytes::<()>() + MAX_INDEX_BYTES_PER_SLOT),
            })),
            len: AtomicUsize::new(0),
            keys: RandomState::new(),
            invite: timer_c,
            other: timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ExpiringMap<()>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, branch: &[u8], method: TransactionMethod) -> u64 {
        self.keys.hash_one((branch, method))
    }

    /// A request that arrived with Via branch `branch` went toward a
    /// client at `now`.
    pub fn relayed(&self, branch: &[u8], method: TransactionMethod, now: Instant) {
        let wait = match method {
            TransactionMethod::Invite => self.invite,
            TransactionMethod::Cancel | TransactionMethod::Other => self.other,
        };
        let key = self.key(branch, method);
        let mut map = self.lock();
        // Full: the oldest gives way (InsertError only for an entry larger
        // than the bound, which `()` never is).
        let _ = map.insert(key, (), now + wait, now);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// A client answered that request with `status` at `now`: a final
    /// answer forgets it, a provisional one (101 to 199) to an INVITE
    /// gives it Timer C again.
    pub fn answered(&self, branch: &[u8], method: TransactionMethod, status: u16, now: Instant) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = self.key(branch, method);
        let mut map = self.lock();
        if status >= 200 {
            map.remove(key, now);
        } else if status > 100 && method == TransactionMethod::Invite && map.get(key, now).is_some()
        {
            let _ = map.insert(key, (), now + self.invite, now);
        }
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// That request could not be sent: forgotten.
    pub fn forget(&self, branch: &[u8], method: TransactionMethod, now: Instant) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = self.key(branch, method);
        let mut map = self.lock();
        map.remove(key, now);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// The requests toward clients still awaiting a final answer at `now`
    /// (the expired are swept first; a drain's look, not the message path).
    pub fn pending(&self, now: Instant) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let mut map = self.lock();
        let mut from = Some(0);
        while let Some(at) = from {
            from = map.sweep_chunk(now, at, 4096).1;
        }
        self.len.store(map.len(), Ordering::Relaxed);
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMER_C: Duration = Duration::from_secs(180);
    const TIMEOUT: Duration = Duration::from_secs(32);

    #[test]
    fn a_request_is_pending_until_its_final_answer() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-1", TransactionMethod::Invite, t0);
        table.relayed(b"z9hG4bK-2", TransactionMethod::Other, t0);
        assert_eq!(table.pending(t0), 2);
        // The CANCEL of the INVITE (same branch) and its 200: the INVITE
        // is still pending.
        table.relayed(b"z9hG4bK-1", TransactionMethod::Cancel, t0);
        table.answered(b"z9hG4bK-1", TransactionMethod::Cancel, 200, t0);
        table.answered(b"z9hG4bK-2", TransactionMethod::Other, 200, t0);
        assert_eq!(table.pending(t0), 1);
        table.answered(b"z9hG4bK-1", TransactionMethod::Invite, 487, t0);
        assert_eq!(table.pending(t0), 0);
        // One that could not be sent.
        table.relayed(b"z9hG4bK-3", TransactionMethod::Other, t0);
        table.forget(b"z9hG4bK-3", TransactionMethod::Other, t0);
        assert_eq!(table.pending(t0), 0);
    }

    #[test]
    fn an_invite_that_rings_is_remembered_for_timer_c_from_each_provisional() {
        let table = TowardClients::new(TIMER_C, TIMEOUT);
        let t0 = Instant::now();
        table.relayed(b"z9hG4bK-ring", TransactionMethod::Invite, t0);
        table.relayed(b"z9hG4bK-reg", TransactionMethod::Other, t0);
        let later = t0 + TIMEOUT + Duration::from_secs(1);
        assert_eq!(table.pending(later), 1, "a non-INVITE goes at 64*T1");
        let ringing = t0 + Duration::from_secs(100);
        table.answered(b"z9hG4bK-ring", TransactionMethod::Invite, 180, ringing);
        // A 100 gives no more time (RFC 3261 16.7 step 2).
        table.answered(
            b"z9hG4bK-ring",
            TransactionMethod::Invite,
            100,
            ringing + TIMER_C - Duration::from_secs(1),
        );
        assert_eq!(
            table.pending(ringing + TIMER_C - Duration::from_millis(1)),
            1
        );
        assert_eq!(table.pending(ringing + TIMER_C), 0);
    }
}
