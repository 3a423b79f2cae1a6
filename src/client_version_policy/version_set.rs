//! Sets of `major.minor.build.qfe` versions as unions of closed ranges of
//! 128-bit keys (the four `u32` parts side by side, so that key order is
//! the catalog's version order).

/// A version as a key: parts 0..4 from the most significant end.
pub(super) type Key = u128;

/// The highest version (every part `u32::MAX`).
pub(super) const MAX: Key = Key::MAX;

/// The key of four parts.
pub(super) fn key(parts: [u32; 4]) -> Key {
    parts
        .iter()
        .fold(0, |acc, &part| (acc << 32) | Key::from(part))
}

/// The four parts of a key.
pub(super) fn parts(key: Key) -> [u32; 4] {
    // Each part is the key's 32 bits at that place: the cast truncates on purpose.
    [96u32, 64, 32, 0].map(|shift| (key >> shift) as u32)
}

/// A version as the catalog writes it: trailing zero parts left out
/// (`16.0.0.0` is `"16"`), at least one part.
pub(super) fn display(key: Key) -> String {
    let parts = parts(key);
    let shown = parts.iter().rposition(|&p| p != 0).map_or(1, |i| i + 1);
    parts[..shown]
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A set of versions: sorted, disjoint, non-adjacent closed ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct VersionSet {
    ranges: Vec<(Key, Key)>,
}

impl VersionSet {
    /// Adds `lo..=hi` (nothing when `lo > hi`).
    pub(super) fn add(&mut self, lo: Key, hi: Key) {
        if lo > hi {
            return;
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            // Disjoint and not adjacent: keep apart; otherwise merge.
            if b.checked_add(1).is_some_and(|next| next < lo)
                || hi.checked_add(1).is_some_and(|next| next < a)
            {
                kept.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        kept.push((lo, hi));
        kept.sort_unstable();
        self.ranges = kept;
    }

    /// Adds every version of `other`.
    pub(super) fn extend(&mut self, other: &Self) {
        for &(lo, hi) in &other.ranges {
            self.add(lo, hi);
        }
    }

    /// Whether every version of `lo..=hi` is in the set (true when empty).
    pub(super) fn covers(&self, lo: Key, hi: Key) -> bool {
        lo > hi || self.ranges.iter().any(|&(a, b)| a <= lo && hi <= b)
    }

    /// The versions of the set within `lo..=hi`.
    pub(super) fn within(&self, lo: Key, hi: Key) -> Self {
        let ranges = self
            .ranges
            .iter()
            .filter(|&&(a, b)| a <= hi && lo <= b)
            .map(|&(a, b)| (a.max(lo), b.min(hi)))
            .collect();
        Self { ranges }
    }

    /// Whether every version of `other` is in the set.
    pub(super) fn contains(&self, other: &Self) -> bool {
        other.ranges.iter().all(|&(lo, hi)| self.covers(lo, hi))
    }

    /// Whether a version is in both sets.
    pub(super) fn intersects(&self, other: &Self) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b)| other.ranges.iter().any(|&(c, d)| a <= d && c <= b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_as_versions_and_print_without_trailing_zeros() {
        assert!(key([4, 0, 7577, 4363]) < key([15, 0, 0, 0]));
        assert!(key([15, 0, 4420, 1017]) < key([15, 1, 0, 0]));
        assert_eq!(parts(key([4, 0, 7577, 4363])), [4, 0, 7577, 4363]);
        assert_eq!(display(key([16, 0, 0, 0])), "16");
        assert_eq!(display(key([6, 26, 0, 0])), "6.26");
        assert_eq!(display(0), "0");
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        let mut set = VersionSet::default();
        set.add(key([15, 0, 0, 0]), MAX);
        assert!(!set.covers(key([4, 0, 0, 0]), MAX));
        set.add(key([5, 0, 0, 0]), key([15, 0, 0, 0]) - 1);
        assert!(set.covers(key([5, 0, 0, 0]), MAX));
        set.add(0, key([4, 0, 0, 0]) - 1);
        assert!(!set.covers(0, MAX), "4.x is still out");
        set.add(key([4, 0, 0, 0]), key([5, 0, 0, 0]) - 1);
        assert!(set.covers(0, MAX));
        assert!(VersionSet::default().covers(1, 0), "the empty range");
    }

    #[test]
    fn containment_and_intersection_of_sets() {
        let set = |ranges: &[(Key, Key)]| {
            let mut s = VersionSet::default();
            for &(lo, hi) in ranges {
                s.add(lo, hi);
            }
            s
        };
        let wide = set(&[(10, 20), (30, MAX)]);
        assert!(wide.contains(&set(&[(12, 20), (40, 50)])));
        assert!(!wide.contains(&set(&[(12, 25)])));
        assert!(wide.contains(&VersionSet::default()));
        assert!(wide.intersects(&set(&[(20, 25)])));
        assert!(!wide.intersects(&set(&[(21, 29)])));
        assert!(!wide.intersects(&VersionSet::default()));
        assert_eq!(wide.within(15, 35), set(&[(15, 20), (30, 35)]));
        assert_eq!(wide.within(21, 29), VersionSet::default());
    }
}
