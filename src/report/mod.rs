//! `sipadmit report`: summarise decision logs for the admins reviewing them.
//!
//! ```text
//! files │ .gz │ stdin ─► input (lines) ─► record::RecordView ─► tally::Tally ─► summary::Summary
//!                          I/O               borrowed parse       pure, bounded    ├─► plain (tables)
//!                                                                                  ├─► --json (serde)
//!                                                                                  └─► html (inline SVG)
//! ```
//!
//! - Streaming: one pass, one line at a time; memory grows with the number
//!   of distinct keys (clients, User-Agents, sources, users, workflows,
//!   rules, versions, time buckets), never with the number of records, and
//!   every table of keys is bounded ([`capped`]: 10,000 keys and 4 MiB of
//!   key bytes each). A full table keeps the most frequent keys
//!   (Space-Saving): the records of the keys it drops are counted as
//!   `not_itemised`, with the most any one key can have among them.
//! - A line that is not a decision record (as [`crate::observe::DecisionRecord`]
//!   reads it) is counted in `malformed_lines` and skipped.
//! - Policy decisions are counted each call once per client ([`Legs::Once`]:
//!   the client's leg, and the registrar's leg only when it carries a
//!   decision the client's leg did not; see
//!   [`crate::observe::decision_log::counted_once`]), or on both legs
//!   ([`Legs::Both`]). Protocol and capacity answers (`kind` `protocol`)
//!   are counted apart, never as policy decisions.
//! - Versions are not in the records: the report reads them from each
//!   record's User-Agent with the catalog (the shipped one, or the one of
//!   `--config`), and counts them only when that catalog names the same
//!   client as the record (else the record counts as `reclassified`).
//!   Agent offers add no version: their User-Agent is the Response Group
//!   application's.
//!
//! Everything but [`input`] is pure.

pub mod capped;
pub mod html;
pub mod input;
pub mod plain;
pub mod record;
pub mod snippet;
pub mod summary;
pub mod tally;
pub mod timeline;

use std::io;
use std::path::PathBuf;

use jiff::Timestamp;

pub use input::{distinct_logs, open_logs, read_log, Damaged, OpenLog};
pub use record::RecordView;
pub use summary::Summary;
pub use tally::Tally;

/// Which policy records the decision tables count (`--legs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Legs {
    /// Each call once per client (the default): every record of the
    /// client's leg, and a record of the registrar's leg only when it
    /// carries a decision the client's leg did not
    /// ([`crate::observe::decision_log::counted_once`]).
    #[default]
    Once,
    /// Every policy record, on both legs.
    Both,
}

impl Legs {
    /// The name in `--legs` and the JSON's `legs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Both => "both",
        }
    }
}

/// The records a report counts: `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Earliest time counted (inclusive); `None`: from the start.
    pub since: Option<Timestamp>,
    /// Time from which records are no longer counted; `None`: to the end.
    pub until: Option<Timestamp>,
}

impl TimeRange {
    /// A range; refused when `until` is not after `since`.
    pub fn new(since: Option<Timestamp>, until: Option<Timestamp>) -> Result<Self, ReportError> {
        if let (Some(s), Some(u)) = (since, until) {
            if u <= s {
                return Err(ReportError::EmptyRange { since: s, until: u });
            }
        }
        Ok(Self { since, until })
    }

    /// Whether a record at `ts` is counted.
    pub fn contains(&self, ts: Timestamp) -> bool {
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A log file could not be opened.
    #[error("cannot open decision log {}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A log could not be read to its end: an I/O error (a damaged gzip
    /// stream is no error: it is read up to the damage, see [`Damaged`]).
    #[error("cannot read decision log {name}")]
    Read {
        /// The path, or `stdin`.
        name: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// `--until` is not after `--since`.
    #[error("--until {until} is not after --since {since}: no record can be in that range")]
    EmptyRange {
        /// `--since`.
        since: Timestamp,
        /// `--until`.
        until: Timestamp,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_inclusive_until_exclusive() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let r = TimeRange::new(
            Some(t("2026-11-27T10:00:00Z")),
            Some(t("2026-11-27T11:00:00Z")),
        )
        .unwrap();
        assert!(r.contains(t("2026-11-27T10:00:00Z")));
        assert!(r.contains(t("2026-11-27T10:59:59.999Z")));
        assert!(!r.contains(t("2026-11-27T11:00:00Z")));
        assert!(!r.contains(t("2026-11-27T09:59:59.999Z")));
        assert!(TimeRange::new(
            Some(t("2026-11-27T10:00:00Z")),
            Some(t("2026-11-27T10:00:00Z"))
        )
        .is_err());
        assert!(TimeRange::default().contains(t("1970-01-01T00:00:00Z")));
    }
}
