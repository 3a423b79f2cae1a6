//! Decisions over time: counts per time bucket, kept at the finest width
//! that stays within [`MAX_TRACKED_BUCKETS`], and shown at a width chosen
//! from the span of the records (minute, hour, day, or several days) so that
//! a report has at most about [`TARGET_SHOWN_BUCKETS`] rows.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::summary::{Millis, OverTime, TimeBucket};

/// Buckets kept while reading; past this, buckets are merged into wider
/// ones (minute → hour → day → 2 days → 4 days ...): 20,000.
pub const MAX_TRACKED_BUCKETS: usize = 20_000;
/// About how many buckets a report shows: 120 (2 hours by the minute, 5
/// days by the hour, 120 days by the day, then wider buckets).
pub const TARGET_SHOWN_BUCKETS: i64 = 120;

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// Per-bucket counts: policy decisions by action (allow, flag, reject,
/// drop), those monitor mode marked `would_reject`, and protocol answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketCounts {
    /// Records by action, in [`super::ACTIONS`] order.
    pub by_action: [u64; 4],
    /// Records marked `would_reject`.
    pub would_reject: u64,
    /// Protocol and capacity answers.
    pub protocol: u64,
}

impl BucketCounts {
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.by_action.iter_mut().zip(other.by_action) {
            *a += b;
        }
        self.would_reject += other.would_reject;
        self.protocol += other.protocol;
    }
}

/// Counts per time bucket (bounded).
#[derive(Debug, Clone)]
pub struct Timeline {
    width: i64,
    buckets: BTreeMap<i64, BucketCounts>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            width: MINUTE,
            buckets: BTreeMap::new(),
        }
    }
}

impl Timeline {
    /// Count one policy decision at `ts`.
    pub fn add(&mut self, ts: Timestamp, action: usize, would_reject: bool) {
        let counts = self.bucket(ts);
        counts.by_action[action] += 1;
        counts.would_reject += u64::from(would_reject);
        self.bound();
    }

    /// Count one protocol answer at `ts`.
    pub fn add_protocol(&mut self, ts: Timestamp) {
        self.bucket(ts).protocol += 1;
        self.bound();
    }

    fn bucket(&mut self, ts: Timestamp) -> &mut BucketCounts {
        let key = ts.as_second().div_euclid(self.width) * self.width;
        self.buckets.entry(key).or_default()
    }

    fn bound(&mut self) {
        if self.buckets.len() > MAX_TRACKED_BUCKETS {
            self.widen(next_width(self.width));
        }
    }

    /// Merge the buckets into buckets `width` seconds wide (a multiple of
    /// the current width).
    fn widen(&mut self, width: i64) {
        if width <= self.width {
            return;
        }
        let mut merged = BTreeMap::new();
        for (key, counts) in std::mem::take(&mut self.buckets) {
            merged
                .entry(key.div_euclid(width) * width)
                .or_insert_with(BucketCounts::default)
                .merge(&counts);
        }
        self.width = width;
        self.buckets = merged;
    }

    /// Every bucket from the first record's to the last record's (empty
    /// ones included), at the width the span calls for.
    pub fn finish(mut self) -> OverTime {
        let (Some(&first), Some(&last)) = (self.buckets.keys().next(), self.buckets.keys().last())
        else {
            return OverTime {
                bucket: "minute".to_owned(),
                bucket_seconds: MINUTE,
                buckets: Vec::new(),
            };
        };
        let width = shown_width(last - first, self.width);
        self.widen(width);
        let width = self.width;
        let start = first.div_euclid(width) * width;
        let mut buckets = Vec::new();
        let mut key = start;
        while key <= last {
            let counts = self.buckets.get(&key).copied().unwrap_or_default();
            if let Ok(ts) = Timestamp::from_second(key) {
                buckets.push(TimeBucket {
                    start: Millis(ts),
                    allow: counts.by_action[0],
                    flag: counts.by_action[1],
                    reject: counts.by_action[2],
                    drop: counts.by_action[3],
                    would_reject: counts.would_reject,
                    protocol: counts.protocol,
                });
            }
            key += width;
        }
        OverTime {
            bucket: width_name(width),
            bucket_seconds: width,
            buckets,
        }
    }
}

fn next_width(width: i64) -> i64 {
    match width {
        MINUTE => HOUR,
        HOUR => DAY,
        w => w * 2,
    }
}

/// The width to show a span of `span` seconds at, given buckets kept
/// `tracked` seconds wide: minute, hour or day when that shows at most
/// [`TARGET_SHOWN_BUCKETS`], else whole days (a multiple of `tracked`).
fn shown_width(span: i64, tracked: i64) -> i64 {
    let fits = |width: i64| span / width < TARGET_SHOWN_BUCKETS;
    let wanted = [MINUTE, HOUR, DAY]
        .into_iter()
        .find(|&w| fits(w))
        .unwrap_or_else(|| {
            let days = ceil_div(span, DAY * TARGET_SHOWN_BUCKETS).max(2);
            days * DAY
        });
    if wanted <= tracked {
        tracked
    } else {
        ceil_div(wanted, tracked) * tracked
    }
}

/// `a / b` rounded up, for `a >= 0`, `b > 0`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

fn width_name(width: i64) -> String {
    match width {
        MINUTE => "minute".to_owned(),
        HOUR => "hour".to_owned(),
        DAY => "day".to_owned(),
        w if w % DAY == 0 => format!("{} days", w / DAY),
        w => format!("{w} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_hour_of_records_is_shown_by_the_minute_with_empty_minutes() {
        let mut t = Timeline::default();
        t.add(ts("2026-11-27T10:00:05Z"), 0, false);
        t.add(ts("2026-11-27T10:00:59.999Z"), 2, false);
        t.add(ts("2026-11-27T10:03:00Z"), 1, true);
        let shown = t.finish();
        assert_eq!(shown.bucket, "minute");
        assert_eq!(shown.buckets.len(), 4);
        assert_eq!(
            shown.buckets[0].start.to_string(),
            "2026-11-27T10:00:00.000Z"
        );
        assert_eq!((shown.buckets[0].allow, shown.buckets[0].reject), (1, 1));
        assert_eq!(shown.buckets[1].allow + shown.buckets[2].allow, 0);
        assert_eq!(
            (shown.buckets[3].flag, shown.buckets[3].would_reject),
            (1, 1)
        );
    }

    #[test]
    fn the_width_follows_the_span() {
        for (from, to, name, count) in [
            (
                "2026-11-27T10:00:00Z",
                "2026-11-27T11:59:00Z",
                "minute",
                120,
            ),
            ("2026-11-27T10:00:00Z", "2026-11-29T10:00:00Z", "hour", 49),
            ("2026-11-01T10:00:00Z", "2026-11-30T10:00:00Z", "day", 30),
            (
                "2020-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                "19 days",
                116,
            ),
        ] {
            let mut t = Timeline::default();
            t.add(ts(from), 0, false);
            t.add(ts(to), 3, false);
            let shown = t.finish();
            assert_eq!(shown.bucket, name, "{from}..{to}");
            assert_eq!(shown.buckets.len(), count, "{from}..{to}");
            let total: u64 = shown.buckets.iter().map(|b| b.allow + b.drop).sum();
            assert_eq!(total, 2);
        }
    }

    #[test]
    fn tracked_buckets_stay_bounded_and_counts_survive_merging() {
        let mut t = Timeline::default();
        let start = ts("2026-01-01T00:00:00Z").as_second();
        let n = 3 * MAX_TRACKED_BUCKETS as i64;
        for i in 0..n {
            t.add(Timestamp::from_second(start + i * 60).unwrap(), 0, false);
            assert!(t.buckets.len() <= MAX_TRACKED_BUCKETS);
        }
        assert_eq!(t.width, HOUR);
        let shown = t.finish();
        let total: u64 = shown.buckets.iter().map(|b| b.allow).sum();
        assert_eq!(total, n as u64);
    }

    #[test]
    fn records_before_1970_land_in_their_own_bucket() {
        let mut t = Timeline::default();
        t.add(ts("1969-12-31T23:59:30Z"), 0, false);
        t.add(ts("1970-01-01T00:00:30Z"), 0, false);
        let shown = t.finish();
        assert_eq!(shown.buckets.len(), 2);
        assert_eq!(
            shown.buckets[0].start.to_string(),
            "1969-12-31T23:59:00.000Z"
        );
    }
}
