//! Counting by key with a bound: [`CappedTable`] lists at most a number of
//! distinct keys and of key bytes, and keeps the most frequent ones. Keys
//! from a log are chosen by whoever sent the messages (User-Agents, From
//! URIs, source addresses), so every table the report keeps is one of
//! these.
//!
//! A full table counts with Space-Saving (Metwally, Agrawal, El Abbadi,
//! "Efficient computation of frequent and top-k elements in data streams",
//! 2005): a new key replaces the listed key with the fewest records, and
//! starts from that key's count. Whatever the order of the records:
//!
//! - a key listed with `records` had at least that many records, and at
//!   most [`CappedTable::not_itemised_per_key_max`] more (the records it
//!   had before it was listed, counted as not itemised);
//! - a key not listed had at most `not_itemised_per_key_max` records;
//! - so a key with more than that many records is listed, and that bound
//!   is at most the table's records divided by the keys it holds (a key
//!   with more than a 10,000th of the records is always listed).
//!
//! The keys are kept in buckets by count (Space-Saving's "stream summary"),
//! so counting a record, listing a new key or dropping the one with the
//! fewest records takes the same few steps however full the table is.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use crate::classify::Version;

/// Distinct keys one table lists: 10,000.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// Bytes of keys one table lists: 4 MiB (10,000 User-Agents of 400 bytes).
pub const MAX_TRACKED_KEY_BYTES: usize = 4 << 20;

/// No slot or bucket: the end of a list.
const NONE: usize = usize::MAX;

/// How much memory a key takes, for the byte bound.
pub trait KeySize {
    /// Bytes of the key's own data.
    fn key_bytes(&self) -> usize;
}

impl KeySize for str {
    fn key_bytes(&self) -> usize {
        self.len()
    }
}

impl KeySize for IpAddr {
    fn key_bytes(&self) -> usize {
        16
    }
}

impl KeySize for Version {
    fn key_bytes(&self) -> usize {
        std::mem::size_of::<Version>()
    }
}

/// A key a table lists, with its value and the records counted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<K, V> {
    /// The key.
    pub key: K,
    /// What the caller kept for it, since it was last listed.
    pub value: V,
    /// Records counted for the key since it was last listed: at least
    /// this many records had it, and at most
    /// [`CappedTable::not_itemised_per_key_max`] more.
    pub records: u64,
}

/// A listed key and its place in its count's bucket.
#[derive(Debug, Clone)]
struct Slot<K, V> {
    key: K,
    value: V,
    /// Bytes the key counts for in the byte bound.
    bytes: usize,
    /// Space-Saving's count: `error` plus the records counted since the
    /// key was listed; at least the key's records.
    count: u64,
    /// The count the key started from when it was listed.
    error: u64,
    bucket: usize,
    /// Neighbours in the bucket.
    prev: usize,
    next: usize,
}

/// The slots with one count; buckets are linked in increasing count.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    count: u64,
    /// First slot of the bucket (never [`NONE`] while it is linked).
    first: usize,
    prev: usize,
    next: usize,
}

/// Values per key, for at most `max_keys` keys and `max_key_bytes` key
/// bytes: the most frequent keys (see the [module](self) documentation).
#[derive(Debug, Clone)]
pub struct CappedTable<K, V = ()> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    buckets: Vec<Bucket>,
    free_buckets: Vec<usize>,
    /// The bucket with the lowest count.
    min: usize,
    key_bytes: usize,
    max_keys: usize,
    max_key_bytes: usize,
    /// Records counted.
    records: u64,
    /// Of those, the records counted for listed keys since they were listed.
    listed_records: u64,
    /// The largest count a dropped key had (0: none was dropped).
    dropped_max: u64,
}

impl<K, V> Default for CappedTable<K, V> {
    fn default() -> Self {
        Self::with_limits(MAX_TRACKED_KEYS, MAX_TRACKED_KEY_BYTES)
    }
}

impl<K, V> CappedTable<K, V> {
    /// A table with its own bounds (at least one key).
    pub fn with_limits(max_keys: usize, max_key_bytes: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            buckets: Vec::new(),
            free_buckets: Vec::new(),
            min: NONE,
            key_bytes: 0,
            max_keys: max_keys.max(1),
            max_key_bytes,
            records: 0,
            listed_records: 0,
            dropped_max: 0,
        }
    }

    /// Records counted but not under a listed key: the records of keys
    /// dropped when the table was full, and those a listed key had before
    /// it was listed (a key longer than the byte bound is never listed).
    pub fn not_itemised(&self) -> u64 {
        self.records - self.listed_records
    }

    /// The most records one key can have among the not itemised ones: a
    /// key not listed had at most this many records, a listed key at most
    /// this many more than its `records`. 0 while no key was dropped (every
    /// key is listed, with all its records).
    pub fn not_itemised_per_key_max(&self) -> u64 {
        self.dropped_max
    }

    /// Distinct keys listed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No key listed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The listed keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Listed<&K, &V>> {
        self.slots.iter().map(|s| Listed {
            key: &s.key,
            value: &s.value,
            records: s.count - s.error,
        })
    }

    /// The listed keys, in no particular order.
    pub fn into_entries(self) -> Vec<Listed<K, V>> {
        self.slots
            .into_iter()
            .map(|s| Listed {
                key: s.key,
                value: s.value,
                records: s.count - s.error,
            })
            .collect()
    }

    // === the buckets ===

    /// A new bucket of `count` between `prev` and `next`.
    fn new_bucket(&mut self, count: u64, prev: usize, next: usize) -> usize {
        let bucket = Bucket {
            count,
            first: NONE,
            prev,
            next,
        };
        let b = match self.free_buckets.pop() {
            Some(b) => {
                self.buckets[b] = bucket;
                b
            }
            None => {
                self.buckets.push(bucket);
                self.buckets.len() - 1
            }
        };
        if prev == NONE {
            self.min = b;
        } else {
            self.buckets[prev].next = b;
        }
        if next != NONE {
            self.buckets[next].prev = b;
        }
        b
    }

    fn drop_bucket(&mut self, b: usize) {
        let Bucket { prev, next, .. } = self.buckets[b];
        if prev == NONE {
            self.min = next;
        } else {
            self.buckets[prev].next = next;
        }
        if next != NONE {
            self.buckets[next].prev = prev;
        }
        self.free_buckets.push(b);
    }

    /// Put slot `s` first in bucket `b`.
    fn attach(&mut self, s: usize, b: usize) {
        let first = self.buckets[b].first;
        let slot = &mut self.slots[s];
        slot.bucket = b;
        slot.prev = NONE;
        slot.next = first;
        slot.count = self.buckets[b].count;
        if first != NONE {
            self.slots[first].prev = s;
        }
        self.buckets[b].first = s;
    }

    /// Take slot `s` out of its bucket, and drop the bucket if it empties.
    fn detach(&mut self, s: usize) {
        let (b, prev, next) = {
            let slot = &self.slots[s];
            (slot.bucket, slot.prev, slot.next)
        };
        if prev == NONE {
            self.buckets[b].first = next;
        } else {
            self.slots[prev].next = next;
        }
        if next != NONE {
            self.slots[next].prev = prev;
        }
        if self.buckets[b].first == NONE {
            self.drop_bucket(b);
        }
    }

    /// One more record for slot `s`: it moves to the next count's bucket.
    fn increment(&mut self, s: usize) {
        let b = self.slots[s].bucket;
        let count = self.buckets[b].count + 1;
        let next = self.buckets[b].next;
        let target = if next != NONE && self.buckets[next].count == count {
            next
        } else {
            self.new_bucket(count, b, next)
        };
        self.detach(s);
        self.attach(s, target);
        self.listed_records += 1;
    }

    /// The bucket a new key starts in: the count of the last key dropped.
    /// Every listed key has at least that count, so it is the first bucket.
    fn start_bucket(&mut self) -> usize {
        if self.min != NONE && self.buckets[self.min].count == self.dropped_max {
            self.min
        } else {
            self.new_bucket(self.dropped_max, NONE, self.min)
        }
    }
}

impl<K: Hash + Eq, V> CappedTable<K, V> {
    /// Drop the key with the fewest records (the table is not empty): its
    /// slot, out of every list, is left for the caller to reuse or remove.
    fn drop_min(&mut self) -> usize {
        let s = self.buckets[self.min].first;
        self.detach(s);
        let slot = &self.slots[s];
        self.dropped_max = self.dropped_max.max(slot.count);
        self.listed_records -= slot.count - slot.error;
        self.key_bytes -= slot.bytes;
        self.index.remove(&slot.key);
        s
    }

    /// Remove the dropped slot `s`; the last slot takes its place.
    fn remove(&mut self, s: usize) {
        self.slots.swap_remove(s);
        if s == self.slots.len() {
            return;
        }
        let (b, prev, next) = {
            let moved = &self.slots[s];
            (moved.bucket, moved.prev, moved.next)
        };
        if prev == NONE {
            self.buckets[b].first = s;
        } else {
            self.slots[prev].next = s;
        }
        if next != NONE {
            self.slots[next].prev = s;
        }
        if let Some(i) = self.index.get_mut(&self.slots[s].key) {
            *i = s;
        }
    }
}

impl<K: Hash + Eq + Clone, V: Default> CappedTable<K, V> {
    /// Count one record for `key` and give its value, inserted with its
    /// default when the key is new; when the table is full, a new key
    /// takes the place of the keys with the fewest records (their values
    /// are dropped). `None` (the record counted as not itemised) only for
    /// a key longer than the byte bound.
    pub fn slot<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + KeySize + ToOwned<Owned = K> + ?Sized,
    {
        self.records += 1;
        if let Some(&s) = self.index.get(key) {
            self.increment(s);
            return Some(&mut self.slots[s].value);
        }
        let bytes = key.key_bytes();
        if bytes > self.max_key_bytes {
            return None;
        }
        let owned = key.to_owned();
        let s = loop {
            if self.slots.len() < self.max_keys && self.key_bytes + bytes <= self.max_key_bytes {
                self.slots.push(Slot {
                    key: owned.clone(),
                    value: V::default(),
                    bytes,
                    count: 0,
                    error: 0,
                    bucket: NONE,
                    prev: NONE,
                    next: NONE,
                });
                break self.slots.len() - 1;
            }
            let s = self.drop_min();
            if self.key_bytes + bytes <= self.max_key_bytes {
                let slot = &mut self.slots[s];
                slot.key = owned.clone();
                slot.value = V::default();
                slot.bytes = bytes;
                break s;
            }
            self.remove(s);
        };
        self.key_bytes += bytes;
        self.index.insert(owned, s);
        let start = self.start_bucket();
        self.attach(s, start);
        self.slots[s].error = self.dropped_max;
        self.increment(s);
        Some(&mut self.slots[s].value)
    }

    /// Count one record for `key`.
    pub fn count<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + KeySize + ToOwned<Owned = K> + ?Sized,
    {
        self.slot(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, records) listed, by records descending, then key.
    fn listed(t: &CappedTable<String>) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = t.iter().map(|l| (l.key.clone(), l.records)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    #[test]
    fn counts_every_key_exactly_while_there_is_room() {
        let mut t: CappedTable<String> = CappedTable::with_limits(3, 100);
        for k in ["a", "b", "a", "c", "b", "a"] {
            t.count(k);
        }
        assert_eq!(
            listed(&t),
            [("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]
        );
        assert_eq!((t.not_itemised(), t.not_itemised_per_key_max()), (0, 0));
    }

    /// The trial's case, scaled down: a full table of one-off keys, then
    /// one key many times. Keeping the first keys seen listed only junk.
    #[test]
    fn a_frequent_key_first_seen_after_the_table_filled_is_listed() {
        let mut t: CappedTable<String> = CappedTable::with_limits(100, 1 << 20);
        for i in 0..100 {
            t.count(format!("Junk{i}/1.0").as_str());
        }
        for _ in 0..500 {
            t.count("RealTopPhone/3.1");
        }
        let top = listed(&t)[0].clone();
        assert_eq!(top, ("RealTopPhone/3.1".into(), 500));
        assert_eq!(t.len(), 100);
        // One junk key was dropped for it, with its one record.
        assert_eq!((t.not_itemised(), t.not_itemised_per_key_max()), (1, 1));
    }

    #[test]
    fn a_new_key_starts_from_the_count_of_the_key_it_replaces() {
        let mut t: CappedTable<String> = CappedTable::with_limits(2, 100);
        for k in ["a", "a", "a", "b", "b", "c"] {
            t.count(k);
        }
        // c took b's place: c's count is b's 2 + 1, of which 1 is c's own.
        assert_eq!(listed(&t), [("a".into(), 3), ("c".into(), 1)]);
        assert_eq!((t.not_itemised(), t.not_itemised_per_key_max()), (2, 2));
        for _ in 0..3 {
            t.count("b");
        }
        // b came back (from c's 3) and c went; b had 5 records in all.
        assert_eq!(listed(&t), [("a".into(), 3), ("b".into(), 3)]);
        assert_eq!((t.not_itemised(), t.not_itemised_per_key_max()), (3, 3));
    }

    /// Space-Saving's guarantees over streams in many orders, against
    /// exact counts: listed records are a lower bound off by at most the
    /// bound, keys not listed have at most the bound, the bound is at most
    /// records / keys, and everything adds up.
    #[test]
    fn the_bounds_hold_whatever_the_order() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..50 {
            let keys = 8 + round % 5;
            let mut t: CappedTable<String> = CappedTable::with_limits(keys, 1 << 20);
            let mut exact: HashMap<String, u64> = HashMap::new();
            let n = 2_000;
            for _ in 0..n {
                // Skewed: key k with weight about 1/(k+1), 200 keys.
                let r = next() % 1_000;
                let k = (1_000 / (r + 5)).min(199) ^ (next() % 3 * (round as u64 % 2));
                let key = format!("k{k}");
                t.count(key.as_str());
                *exact.entry(key).or_default() += 1;
            }
            let bound = t.not_itemised_per_key_max();
            assert!(bound <= n / keys as u64, "round {round}: {bound}");
            let listed: HashMap<String, u64> =
                t.iter().map(|l| (l.key.clone(), l.records)).collect();
            assert_eq!(listed.len(), keys);
            for (key, &true_count) in &exact {
                match listed.get(key) {
                    Some(&records) => assert!(
                        records <= true_count && true_count <= records + bound,
                        "round {round} {key}: {records} listed, {true_count} true, {bound}"
                    ),
                    None => assert!(true_count <= bound, "round {round} {key}: {true_count}"),
                }
            }
            let listed_sum: u64 = listed.values().sum();
            assert_eq!(listed_sum + t.not_itemised(), n);
        }
    }

    #[test]
    fn the_byte_bound_holds_for_long_keys() {
        let mut t: CappedTable<String> = CappedTable::with_limits(100, 10);
        let long = "x".repeat(11);
        t.count(long.as_str());
        assert!(t.is_empty(), "longer than the bound: never listed");
        t.count("67890");
        t.count("12345");
        t.count("12345");
        assert_eq!(t.len(), 2);
        // 6 bytes more: both listed keys go, the fewest records first.
        t.count("abcdef");
        assert_eq!(listed(&t), [("abcdef".into(), 1)]);
        assert_eq!(t.not_itemised(), 4);
        assert_eq!(t.not_itemised_per_key_max(), 2);
        assert!(t.key_bytes <= 10);
        // The freed slots are reused, the index follows them.
        t.count("1");
        t.count("abcdef");
        assert_eq!(listed(&t), [("abcdef".into(), 2), ("1".into(), 1)]);
    }

    #[test]
    fn values_follow_their_keys_and_start_over_when_a_key_is_listed_again() {
        let mut t: CappedTable<String, Vec<u32>> = CappedTable::with_limits(2, 100);
        for (i, k) in ["a", "b", "a", "c", "c", "c", "b"].into_iter().enumerate() {
            t.slot(k).unwrap().push(i as u32);
        }
        let mut v: Vec<(String, Vec<u32>, u64)> = t
            .into_entries()
            .into_iter()
            .map(|l| (l.key, l.value, l.records))
            .collect();
        v.sort();
        assert_eq!(
            v,
            [("b".into(), vec![6], 1), ("c".into(), vec![3, 4, 5], 3)]
        );
    }

    #[test]
    fn addresses_are_keys_too() {
        let mut t: CappedTable<IpAddr> = CappedTable::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        t.count(&a);
        t.count(&a);
        let l: Vec<(IpAddr, u64)> = t.iter().map(|l| (*l.key, l.records)).collect();
        assert_eq!(l, [(a, 2)]);
    }
}
