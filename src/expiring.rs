//! A bounded, expiring map for the proxy's tables (pending REGISTERs,
//! bindings, transactions seen): keys are 64-bit keyed hashes, entries are
//! kept oldest first in a doubly linked list threaded through a slab, so
//! that insert, refresh, remove, expiry of the oldest and eviction of the
//! oldest are all O(1) (amortised: an entry is expired or evicted at most
//! once per insertion). Nothing on the message path scans the table.
//!
//! The index is an open-addressing table of slab positions (linear probing
//! on the key's low bits, deletion by backward shift, so no tombstones),
//! kept at most half full and resized only when the slab grows.
//!
//! Bounds are in entries and in **bytes**: the bytes are those the table
//! has allocated (slab capacity, index capacity) plus what the values hold
//! on the heap, so the bound covers the real memory, slack included.
//! When an insert would go over either bound, the oldest entries are
//! evicted first; the table grows its allocation only while the grown
//! allocation still fits.
//!
//! "Oldest" is the order of insertion (a refresh counts as an insertion).
//! For a table whose entries all live equally long that is also the order
//! of expiry; for one with varied lifetimes (bindings) an expired entry
//! behind a younger-expiring one leaves when it is looked up, reaches the
//! front, is evicted, or is found by [`ExpiringMap::sweep_chunk`], the one
//! walk of the table (a periodic chore's, a chunk at a time). Pure: the
//! clock is passed in.

use std::mem::size_of;
use std::time::Instant;

/// Slab position meaning "none".
const NIL: u32 = u32::MAX;
/// The first slab allocation, entries.
const MIN_SLOTS: usize = 16;
/// What the allocator keeps per heap block beyond the bytes asked for
/// (glibc malloc: an 8-byte header, 16-byte granules), charged to every
/// value that owns a heap block.
pub(crate) const HEAP_BLOCK_OVERHEAD_BYTES: usize = 16;

/// Heap bytes a value owns beyond its inline size (0 for plain data).
pub(crate) trait HeapBytes {
    /// Bytes this value holds on the heap, allocator overhead included.
    fn heap_bytes(&self) -> usize;
}

impl HeapBytes for () {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl HeapBytes for Box<[u64]> {
    fn heap_bytes(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            (self.len() * size_of::<u64>()).next_multiple_of(16) + HEAP_BLOCK_OVERHEAD_BYTES
        }
    }
}

/// Why an entry was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// The entry alone does not fit the byte bound of an empty table.
    TooLarge,
}

/// What an insert did besides storing the entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Inserted {
    /// Live entries evicted (oldest first) to make room.
    pub(crate) evicted: usize,
    /// Expired entries removed from the front on the way.
    pub(crate) expired: usize,
}

/// The bounds of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Most entries held.
    pub(crate) max_entries: usize,
    /// Most bytes allocated (slab + index + values' heap bytes).
    pub(crate) max_bytes: usize,
}

/// One slab position: an entry, or a free position (`value` is `None`,
/// `newer` links the free list).
#[derive(Debug)]
struct Slot<V> {
    key: u64,
    /// Milliseconds after the table's epoch at which the entry is dead.
    deadline_ms: u64,
    older: u32,
    newer: u32,
    value: Option<V>,
}

/// key → slab position; see the module doc.
#[derive(Debug)]
pub(crate) struct ExpiringMap<V> {
    /// Slab positions by key (`NIL`: empty); a power of two long, at
    /// least twice the slab's capacity.
    index: Vec<u32>,
    slots: Vec<Slot<V>>,
    /// Head of the free list.
    free: u32,
    /// Oldest entry (next to expire or be evicted).
    oldest: u32,
    /// Newest entry.
    newest: u32,
    /// Live entries.
    len: usize,
    /// Sum of the live values' [`HeapBytes`].
    value_bytes: usize,
    /// The instant deadlines are counted from: the first `now` seen.
    epoch: Option<Instant>,
    bounds: Bounds,
}

impl<V: HeapBytes> ExpiringMap<V> {
    /// An empty table; it allocates nothing until the first insert.
    pub(crate) fn new(bounds: Bounds) -> Self {
        Self {
            index: Vec::new(),
            slots: Vec::new(),
            free: NIL,
            oldest: NIL,
            newest: NIL,
            len: 0,
            value_bytes: 0,
            epoch: None,
            bounds: Bounds {
                max_entries: bounds.max_entries.clamp(1, NIL as usize - 1),
                ..bounds
            },
        }
    }

    /// Live entries (expired ones not yet removed included).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the table accounts for: its allocation (slab and index
    /// capacity) plus the values' heap bytes. Never above the byte bound.
    pub(crate) fn bytes(&self) -> usize {
        allocation_bytes::<V>(self.slots.capacity(), self.index.capacity()) + self.value_bytes
    }

    /// Store `value` under `key` until `deadline`, as the newest entry
    /// (replacing and refreshing an entry of the same key). Expired entries
    /// at the front go first; then, while the table is over a bound, the
    /// oldest entries are evicted.
    pub(crate) fn insert(
        &mut self,
        key: u64,
        value: V,
        deadline: Instant,
        now: Instant,
    ) -> Result<Inserted, InsertError> {
        let mut done = Inserted {
            expired: self.expire(now),
            ..Inserted::default()
        };
        if let Some(at) = self.find(key) {
            self.unlink_and_free(at);
        }
        let need = value.heap_bytes();
        let at = loop {
            if let Some(at) = self.room_for(need) {
                break at;
            }
            if self.oldest == NIL {
                return Err(InsertError::TooLarge);
            }
            self.unlink_and_free(self.oldest);
            done.evicted += 1;
        };
        let deadline_ms = self.millis(deadline);
        let slot = Slot {
            key,
            deadline_ms,
            older: self.newest,
            newer: NIL,
            value: Some(value),
        };
        if at as usize == self.slots.len() {
            self.slots.push(slot);
        } else {
            self.free = self.slots[at as usize].newer;
            self.slots[at as usize] = slot;
        }
        match self.newest {
            NIL => self.oldest = at,
            newest => self.slots[newest as usize].newer = at,
        }
        self.newest = at;
        self.index_insert(key, at);
        self.len += 1;
        self.value_bytes += need;
        Ok(done)
    }

    /// The live value of `key` and its deadline; an expired entry is
    /// removed instead.
    pub(crate) fn get(&mut self, key: u64, now: Instant) -> Option<(&V, Instant)> {
        let at = self.find(key)?;
        let now_ms = self.millis(now);
        if self.slots[at as usize].deadline_ms <= now_ms {
            self.unlink_and_free(at);
            return None;
        }
        let slot = &self.slots[at as usize];
        let deadline = self.instant(slot.deadline_ms);
        slot.value.as_ref().map(|v| (v, deadline))
    }

    /// Remove `key`; its value when it was there and alive.
    pub(crate) fn remove(&mut self, key: u64, now: Instant) -> Option<V> {
        let at = self.find(key)?;
        let alive = self.slots[at as usize].deadline_ms > self.millis(now);
        let value = self.unlink_and_free(at);
        value.filter(|_| alive)
    }

    /// Remove the expired entries among the slab positions `from..` up to
    /// `count` of them, wherever they stand in the order (one behind a
    /// longer-lived entry too); returns how many went and where the next
    /// call should start (`None`: the slab's end was reached). Positions
    /// do not move when entries go, so a periodic chore walks the whole
    /// table a chunk at a time, letting go of its lock in between.
    pub(crate) fn sweep_chunk(
        &mut self,
        now: Instant,
        from: usize,
        count: usize,
    ) -> (usize, Option<usize>) {
        self.retain_chunk(now, from, count, |_| true)
    }

    /// [`sweep_chunk`](Self::sweep_chunk), removing as well the live
    /// entries whose value `keep` refuses.
    pub(crate) fn retain_chunk(
        &mut self,
        now: Instant,
        from: usize,
        count: usize,
        keep: impl Fn(&V) -> bool,
    ) -> (usize, Option<usize>) {
        let now_ms = self.millis(now);
        let end = from.saturating_add(count).min(self.slots.len());
        let mut removed = 0;
        for at in from..end {
            let slot = &self.slots[at];
            let gone = match &slot.value {
                Some(value) => slot.deadline_ms <= now_ms || !keep(value),
                None => false,
            };
            if gone {
                self.unlink_and_free(at as u32);
                removed += 1;
            }
        }
        (removed, (end < self.slots.len()).then_some(end))
    }

    /// Remove the expired entries at the front; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let now_ms = self.millis(now);
        let mut removed = 0;
        while self.oldest != NIL && self.slots[self.oldest as usize].deadline_ms <= now_ms {
            self.unlink_and_free(self.oldest);
            removed += 1;
        }
        removed
    }

    // === internals ===

    /// A slab position for a new entry whose value holds `need` heap
    /// bytes, growing the allocation if the grown one fits the bounds;
    /// `None` when an entry must be evicted first.
    fn room_for(&mut self, need: usize) -> Option<u32> {
        if self.len >= self.bounds.max_entries {
            return None;
        }
        let values = self.value_bytes + need;
        if self.free != NIL || self.slots.len() < self.slots.capacity() {
            let at = if self.free != NIL {
                self.free
            } else {
                self.slots.len() as u32
            };
            return (self.bytes() + need <= self.bounds.max_bytes).then_some(at);
        }
        let capacity = self.slots.capacity();
        let grown = (capacity * 2)
            .max(MIN_SLOTS)
            .min(self.bounds.max_entries)
            .max(capacity + 1);
        let grown_bytes = allocation_bytes::<V>(grown, index_len_for(grown));
        if grown_bytes + values > self.bounds.max_bytes {
            return None;
        }
        self.slots.reserve_exact(grown - self.slots.len());
        if self.index.len() < index_len_for(self.slots.capacity()) {
            self.rebuild_index(index_len_for(self.slots.capacity()));
        }
        Some(self.slots.len() as u32)
    }

    /// Take the entry at `at` out of the list and the index and put its
    /// position on the free list.
    fn unlink_and_free(&mut self, at: u32) -> Option<V> {
        let (key, older, newer) = {
            let s = &self.slots[at as usize];
            (s.key, s.older, s.newer)
        };
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        self.index_remove(key);
        let slot = &mut self.slots[at as usize];
        let value = slot.value.take();
        slot.newer = self.free;
        slot.older = NIL;
        self.free = at;
        self.len -= 1;
        if let Some(v) = &value {
            self.value_bytes -= v.heap_bytes();
        }
        value
    }

    /// `instant` as milliseconds after the epoch (which the first call sets).
    fn millis(&mut self, instant: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(instant);
        u64::try_from(instant.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, millis: u64) -> Instant {
        let epoch = self.epoch.expect("set by the insert that stored the entry");
        epoch
            .checked_add(std::time::Duration::from_millis(millis))
            .unwrap_or(epoch)
    }

    // === index ===

    /// The index position `key` starts probing at.
    fn home(&self, key: u64) -> usize {
        (key as usize) & (self.index.len() - 1)
    }

    /// The slab position of `key`.
    fn find(&self, key: u64) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.index[i] {
                NIL => return None,
                at if self.slots[at as usize].key == key => return Some(at),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Index slab position `at` under `key` (not present; the index has
    /// room: it is at most half full).
    fn index_insert(&mut self, key: u64, at: u32) {
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        while self.index[i] != NIL {
            i = (i + 1) & mask;
        }
        self.index[i] = at;
    }

    /// Take `key` out of the index, shifting back the entries after it in
    /// its probe run (Knuth's algorithm R: no tombstones are left).
    fn index_remove(&mut self, key: u64) {
        let mask = self.index.len() - 1;
        let mut hole = self.home(key);
        while self.slots[self.index[hole] as usize].key != key {
            hole = (hole + 1) & mask;
        }
        self.index[hole] = NIL;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let at = self.index[i];
            if at == NIL {
                return;
            }
            let home = self.home(self.slots[at as usize].key);
            // Stays when its home lies cyclically in (hole, i].
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                self.index[hole] = at;
                self.index[i] = NIL;
                hole = i;
            }
        }
    }

    /// A new index of `len` positions holding every live entry.
    fn rebuild_index(&mut self, len: usize) {
        self.index = vec![NIL; len];
        let mut at = self.oldest;
        while at != NIL {
            let (key, newer) = (self.slots[at as usize].key, self.slots[at as usize].newer);
            self.index_insert(key, at);
            at = newer;
        }
    }
}

/// Bytes of one slab slot holding a `V`.
pub(crate) fn slot_bytes<V>() -> usize {
    size_of::<Slot<V>>()
}

/// Most index bytes per slab slot: the index is 2 to 4 times the slab's
/// capacity, in positions of 4 bytes.
pub(crate) const MAX_INDEX_BYTES_PER_SLOT: usize = 4 * size_of::<u32>();

/// Index length for a slab of `slots` positions: a power of two, at least
/// twice as many, so the index is never more than half full.
fn index_len_for(slots: usize) -> usize {
    (slots * 2).next_power_of_two()
}

/// Bytes of a slab of `slots` positions and an index of `index` positions,
/// with the allocator's overhead for the two blocks.
fn allocation_bytes<V>(slots: usize, index: usize) -> usize {
    if slots == 0 && index == 0 {
        return 0;
    }
    slots * size_of::<Slot<V>>() + index * size_of::<u32>() + 2 * HEAP_BLOCK_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn table(max_entries: usize, max_bytes: usize) -> ExpiringMap<Box<[u64]>> {
        ExpiringMap::new(Bounds {
            max_entries,
            max_bytes,
        })
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn entries_expire_oldest_first_and_refresh_moves_to_the_back() {
        let now = Instant::now();
        let mut t = table(100, 1 << 20);
        for k in 0..3u64 {
            t.insert(k, vec![k].into(), now + secs(10 + k), now)
                .unwrap();
        }
        // Refresh key 0: now the newest, and alive longer.
        t.insert(0, vec![7].into(), now + secs(30), now).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.expire(now + secs(11)), 1, "key 1 only");
        assert!(t.get(1, now + secs(11)).is_none());
        assert_eq!(t.get(2, now + secs(11)).unwrap().0[..], [2]);
        assert_eq!(t.get(0, now + secs(11)).unwrap().0[..], [7]);
        assert_eq!(t.expire(now + secs(40)), 2);
        assert_eq!((t.len(), t.value_bytes), (0, 0));
    }

    #[test]
    fn a_sweep_removes_expired_entries_behind_a_longer_lived_one() {
        // One long-lived entry first, then nine short ones: expiry at the
        // front stops at the first, the sweep finds the nine (trial 16: a
        // full table then evicted the live one and kept the dead).
        let mut t = table(10, 1 << 20);
        let now = Instant::now();
        t.insert(0, Box::new([0]), now + secs(3600), now).unwrap();
        for k in 1..10 {
            t.insert(k, Box::new([k]), now + secs(1), now).unwrap();
        }
        let later = now + secs(2);
        assert_eq!(t.expire(later), 0);
        assert_eq!(t.len(), 10);
        // In chunks of 4 positions: 3 of the first (the live one stays),
        // 4, then the last 2 and the end.
        assert_eq!(t.sweep_chunk(later, 0, 4), (3, Some(4)));
        assert_eq!(t.sweep_chunk(later, 4, 4), (4, Some(8)));
        assert_eq!(t.sweep_chunk(later, 8, 4), (2, None));
        assert_eq!(t.len(), 1);
        assert!(t.get(0, later).is_some());
        // Room again: the next insert evicts nothing.
        let inserted = t
            .insert(10, Box::new([10]), later + secs(60), later)
            .unwrap();
        assert_eq!(inserted.evicted, 0);
        assert!(t.get(0, later).is_some());
    }

    #[test]
    fn a_full_table_evicts_its_oldest_entry_and_reuses_its_slot() {
        let now = Instant::now();
        let mut t = table(4, 1 << 20);
        for k in 0..4u64 {
            assert_eq!(
                t.insert(k, vec![k].into(), now + secs(60), now)
                    .unwrap()
                    .evicted,
                0
            );
        }
        let slab = t.slots.len();
        assert_eq!(
            t.insert(9, vec![9].into(), now + secs(60), now)
                .unwrap()
                .evicted,
            1
        );
        assert!(t.get(0, now).is_none(), "the oldest went");
        assert!(t.get(1, now).is_some() && t.get(9, now).is_some());
        assert_eq!((t.len(), t.slots.len()), (4, slab), "slot reused");
    }

    #[test]
    fn remove_and_get_do_not_return_expired_values() {
        let now = Instant::now();
        let mut t = table(10, 1 << 20);
        t.insert(1, vec![1].into(), now + secs(5), now).unwrap();
        t.insert(2, vec![2].into(), now + secs(5), now).unwrap();
        assert!(t.remove(1, now + secs(5)).is_none(), "dead at its deadline");
        assert_eq!(t.remove(2, now).unwrap()[..], [2]);
        assert_eq!(t.len(), 0);
        assert!(t.remove(2, now).is_none());
    }

    #[test]
    fn the_byte_bound_holds_and_covers_the_allocation() {
        let now = Instant::now();
        let bound = 64 * 1024;
        let mut t = table(usize::MAX, bound);
        let mut evicted = 0;
        for k in 0..10_000u64 {
            let contacts: Box<[u64]> = vec![k; (k % 16 + 1) as usize].into();
            evicted += t.insert(k, contacts, now + secs(32), now).unwrap().evicted;
            assert!(t.bytes() <= bound, "{} > {bound} at {k}", t.bytes());
        }
        assert!(evicted > 9_000, "{evicted}");
        assert!(t.len() > 100, "{}", t.len());
        // The index is at most half full.
        assert!(t.index.len() >= 2 * t.slots.capacity());
        assert_eq!(t.index.iter().filter(|&&at| at != NIL).count(), t.len());
    }

    #[test]
    fn a_value_larger_than_the_whole_bound_is_refused() {
        let now = Instant::now();
        let mut t = table(10, 4096);
        t.insert(1, vec![1].into(), now + secs(5), now).unwrap();
        let huge: Box<[u64]> = vec![0; 1024].into();
        assert_eq!(
            t.insert(2, huge, now + secs(5), now),
            Err(InsertError::TooLarge)
        );
        assert_eq!(t.len(), 0, "what was evicted for it stays evicted");
    }

    #[test]
    fn removing_the_head_of_a_probe_run_keeps_the_rest_findable() {
        let now = Instant::now();
        let mut t = table(16, usize::MAX);
        let keys = [5, 5 | 1 << 32, 5 | 2 << 32, 6];
        for k in keys {
            t.insert(k, vec![k].into(), now + secs(9), now).unwrap();
        }
        assert_eq!(t.remove(keys[0], now).unwrap()[..], [keys[0]]);
        for k in &keys[1..] {
            assert_eq!(t.get(*k, now).unwrap().0[..], [*k], "{k:x}");
        }
    }

    /// Random inserts, refreshes, removals and expiries against a plain
    /// map: the index finds exactly what the model holds, including keys
    /// whose probe runs share a home and wrap around the index's end.
    #[test]
    fn the_index_agrees_with_a_model_under_random_operations() {
        use rand::{Rng, SeedableRng};
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t: ExpiringMap<Box<[u64]>> = table(300, usize::MAX);
        let mut model: std::collections::HashMap<u64, (u64, u64)> = Default::default();
        let mut order: Vec<u64> = Vec::new();
        for step in 0..50_000u64 {
            let clock = now + Duration::from_millis(step);
            // 400 keys on 200 homes: at the index's start and at its end,
            // so probe runs share homes, merge and wrap around.
            let r = rng.gen_range(0..400u64);
            let key = match r % 2 {
                0 => (r << 32) | (r / 2 % 100),
                _ => (r << 32) | u64::from(u32::MAX - (r / 2 % 100) as u32),
            };
            match rng.gen_range(0..10) {
                0..=5 => {
                    let ttl = rng.gen_range(1..2_000);
                    let done = t
                        .insert(
                            key,
                            vec![step].into(),
                            clock + Duration::from_millis(ttl),
                            clock,
                        )
                        .unwrap();
                    // Mirror: expiry from the front, refresh, eviction of the oldest.
                    let mut gone = 0;
                    while let Some(&k) = order.first() {
                        if model[&k].1 > step {
                            break;
                        }
                        model.remove(&k);
                        order.remove(0);
                        gone += 1;
                    }
                    assert_eq!(done.expired, gone);
                    if model.remove(&key).is_some() {
                        order.retain(|&k| k != key);
                    }
                    if model.len() == 300 {
                        let oldest = order.remove(0);
                        model.remove(&oldest);
                    }
                    model.insert(key, (step, step + ttl));
                    order.push(key);
                }
                6..=7 => {
                    let got = t.remove(key, clock).map(|v| v[0]);
                    let want = model
                        .remove(&key)
                        .filter(|(_, d)| *d > step)
                        .map(|(v, _)| v);
                    order.retain(|&k| k != key);
                    assert_eq!(got, want, "remove {key} at {step}");
                }
                _ => {
                    let got = t.get(key, clock).map(|(v, _)| v[0]);
                    let want = model.get(&key).filter(|(_, d)| *d > step).map(|(v, _)| *v);
                    if want.is_none() && model.remove(&key).is_some() {
                        order.retain(|&k| k != key);
                    }
                    assert_eq!(got, want, "get {key} at {step}");
                }
            }
            assert_eq!(t.len(), model.len(), "at {step}");
        }
    }

    #[test]
    fn the_entry_bound_caps_the_slab() {
        let now = Instant::now();
        let mut t: ExpiringMap<()> = ExpiringMap::new(Bounds {
            max_entries: 20,
            max_bytes: usize::MAX,
        });
        for k in 0..1000 {
            t.insert(k, (), now + secs(1), now).unwrap();
        }
        assert_eq!(t.len(), 20);
        assert_eq!(t.slots.capacity(), 20);
    }
}
