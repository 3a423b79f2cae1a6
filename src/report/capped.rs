//! Counting by key with a bound: [`CappedTable`] tracks at most a number of
//! distinct keys and of key bytes; records whose key arrives after the table
//! is full are counted as "not itemised" instead. Keys from a log are chosen
//! by whoever sent the messages (User-Agents, From URIs, source addresses),
//! so every table the report keeps is one of these.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use crate::classify::Version;

/// Distinct keys one table tracks: 10,000.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// Bytes of keys one table tracks: 4 MiB (10,000 User-Agents of 400 bytes).
pub const MAX_TRACKED_KEY_BYTES: usize = 4 << 20;

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

/// Values per key, for at most `max_keys` keys and `max_key_bytes` key
/// bytes, in the order keys were first seen.
#[derive(Debug, Clone)]
pub struct CappedTable<K, V> {
    index: HashMap<K, usize>,
    entries: Vec<(K, V)>,
    key_bytes: usize,
    max_keys: usize,
    max_key_bytes: usize,
    not_itemised: u64,
}

impl<K, V> Default for CappedTable<K, V> {
    fn default() -> Self {
        Self::with_limits(MAX_TRACKED_KEYS, MAX_TRACKED_KEY_BYTES)
    }
}

impl<K, V> CappedTable<K, V> {
    /// A table with its own bounds.
    pub fn with_limits(max_keys: usize, max_key_bytes: usize) -> Self {
        Self {
            index: HashMap::new(),
            entries: Vec::new(),
            key_bytes: 0,
            max_keys,
            max_key_bytes,
            not_itemised: 0,
        }
    }

    /// Records that fell outside the table because it was full.
    pub fn not_itemised(&self) -> u64 {
        self.not_itemised
    }

    /// Distinct keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No key tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tracked entries, in first-seen order.
    pub fn into_entries(self) -> Vec<(K, V)> {
        self.entries
    }

    /// The tracked entries, in first-seen order.
    pub fn entries(&self) -> &[(K, V)] {
        &self.entries
    }
}

impl<K: Hash + Eq + Clone, V: Default> CappedTable<K, V> {
    /// The value of `key`, inserted with its default when new and the
    /// table has room; `None` (and one more record not itemised) when the
    /// key is new and the table is full.
    pub fn slot<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + KeySize + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(&i) = self.index.get(key) {
            return Some(&mut self.entries[i].1);
        }
        let bytes = key.key_bytes();
        if self.entries.len() >= self.max_keys || self.key_bytes + bytes > self.max_key_bytes {
            self.not_itemised += 1;
            return None;
        }
        self.key_bytes += bytes;
        let owned = key.to_owned();
        self.index.insert(owned.clone(), self.entries.len());
        self.entries.push((owned, V::default()));
        self.entries.last_mut().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone> CappedTable<K, u64> {
    /// Count one record for `key`.
    pub fn count<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + KeySize + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(n) = self.slot(key) {
            *n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_full_then_counts_the_rest_apart() {
        let mut t: CappedTable<String, u64> = CappedTable::with_limits(2, 100);
        for k in ["a", "b", "a", "c", "b", "d", "a"] {
            t.count(k);
        }
        let expected: Vec<(String, u64)> = vec![("a".into(), 3), ("b".into(), 2)];
        assert_eq!(t.entries(), &expected[..]);
        assert_eq!(t.not_itemised(), 2);
    }

    #[test]
    fn the_byte_bound_holds_for_long_keys() {
        let mut t: CappedTable<String, u64> = CappedTable::with_limits(100, 10);
        let long = "x".repeat(11);
        t.count(long.as_str());
        t.count("12345");
        t.count("67890");
        t.count("1");
        assert_eq!(t.len(), 2);
        assert_eq!(t.not_itemised(), 2);
    }

    #[test]
    fn addresses_are_keys_too() {
        let mut t: CappedTable<IpAddr, u64> = CappedTable::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        t.count(&a);
        t.count(&a);
        assert_eq!(t.entries(), &[(a, 2)]);
    }
}
