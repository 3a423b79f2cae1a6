//! A memo of recent User-Agents and what they classified as. A site's
//! clients send a handful of distinct strings (every Lync 2013 desktop of
//! one build sends the same one), so each is run through the rules once,
//! not once per message, and the rules' code and data stay out of the
//! message path's caches.
//!
//! Direct-mapped: a value has one slot (a keyed hash of it picks which),
//! and the newest value in a slot replaces the one before. Bounded and
//! allocation-free: [`SLOTS`] slots, values of at most [`MAX_VALUE_BYTES`]
//! kept inline (longer ones are never memoized). Never in the way: a slot
//! another thread holds is passed by, and the value classified as if there
//! were no memo. Values an attacker sprays only ever cost a miss.

use std::hash::BuildHasher;
use std::sync::Mutex;

use super::version::Version;

/// Slots in the memo.
const SLOTS: usize = 64;
/// Longest value memoized, bytes (a Lync User-Agent is about 60).
pub(super) const MAX_VALUE_BYTES: usize = 256;

/// What the rules found for a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// The rule at this position of the catalog's rules matched.
    Rule(usize),
    /// No rule matched.
    Unknown,
}

/// A value's classification, as the memo keeps it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Memoized {
    /// The rule that matched, if any.
    pub(super) found: Found,
    /// The version read from the value.
    pub(super) version: Option<Version>,
}

/// One slot's value and classification.
#[derive(Debug)]
struct Entry {
    len: usize,
    value: [u8; MAX_VALUE_BYTES],
    memoized: Memoized,
}

/// The memo of one compiled catalog (a reload compiles a new catalog, with
/// an empty memo).
#[derive(Debug)]
pub(super) struct Memo {
    keys: std::collections::hash_map::RandomState,
    slots: Box<[Mutex<Option<Entry>>]>,
}

impl Default for Memo {
    fn default() -> Self {
        Self {
            keys: Default::default(),
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl Memo {
    /// The slot of `value`.
    pub(super) fn slot(&self, value: &[u8]) -> usize {
        (self.keys.hash_one(value) % SLOTS as u64) as usize
    }

    /// What `value` classified as, if `slot` (its slot) remembers it.
    pub(super) fn get(&self, slot: usize, value: &[u8]) -> Option<Memoized> {
        let held = self.slots[slot].try_lock().ok()?;
        held.as_ref()
            .filter(|entry| &entry.value[..entry.len] == value)
            .map(|entry| entry.memoized)
    }

    /// Remember that `value` (at most [`MAX_VALUE_BYTES`]) classified as
    /// `memoized`, in `slot` (its slot).
    pub(super) fn put(&self, slot: usize, value: &[u8], memoized: Memoized) {
        if value.len() > MAX_VALUE_BYTES {
            return;
        }
        let Ok(mut held) = self.slots[slot].try_lock() else {
            return;
        };
        let entry = held.get_or_insert_with(|| Entry {
            len: 0,
            value: [0; MAX_VALUE_BYTES],
            memoized,
        });
        entry.value[..value.len()].copy_from_slice(value);
        entry.len = value.len();
        entry.memoized = memoized;
    }
}
