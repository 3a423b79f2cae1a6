//! Summaries of repeated events a peer can set off (malformed messages,
//! refused requests): instead of one log line each, the first few of every
//! window are logged as examples, and one line per window says how many
//! there were and from how many sources ("N malformed messages from M
//! sources in the last 10 s"). Every event is still counted in metrics.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The length of a summary window.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(10);
/// Distinct sources counted per window at most (beyond, the count says
/// "at least").
pub const MAX_SOURCES_COUNTED: usize = 4096;

/// The totals of one closed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTotals {
    /// Events in the window.
    pub events: u64,
    /// Distinct source addresses (at most [`MAX_SOURCES_COUNTED`]).
    pub sources: usize,
    /// Events logged one by one as examples.
    pub examples: u64,
}

/// One kind of event, counted per [`SUMMARY_WINDOW`].
#[derive(Debug)]
pub struct EventSummary {
    /// Events of each window logged as examples.
    examples_per_window: u64,
    began: Option<Instant>,
    events: u64,
    examples: u64,
    sources: HashSet<IpAddr>,
}

/// What to do about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    /// Log this one as an example.
    pub example: bool,
    /// The previous window closed: log its summary.
    pub closed: Option<WindowTotals>,
}

impl EventSummary {
    /// A summary logging the first `examples_per_window` events of each window.
    pub fn new(examples_per_window: u64) -> Self {
        Self {
            examples_per_window,
            began: None,
            events: 0,
            examples: 0,
            sources: HashSet::new(),
        }
    }

    /// Count one event from `source` at `now`.
    pub fn note(&mut self, source: IpAddr, now: Instant) -> Noted {
        let closed = self.close_if_due(now);
        self.began.get_or_insert(now);
        self.events += 1;
        if self.sources.len() < MAX_SOURCES_COUNTED {
            self.sources.insert(source);
        }
        let example = self.examples < self.examples_per_window;
        if example {
            self.examples += 1;
        }
        Noted { example, closed }
    }

    /// Close the window if it is [`SUMMARY_WINDOW`] old: its totals, when
    /// it held any event. Called on every event and by a timer, so the last
    /// window of a flood is summarised too.
    pub fn close_if_due(&mut self, now: Instant) -> Option<WindowTotals> {
        let began = self.began?;
        if now.saturating_duration_since(began) < SUMMARY_WINDOW {
            return None;
        }
        let totals = WindowTotals {
            events: self.events,
            sources: self.sources.len(),
            examples: self.examples,
        };
        self.began = None;
        self.events = 0;
        self.examples = 0;
        self.sources.clear();
        if self.sources.capacity() > 64 {
            self.sources.shrink_to(64);
        }
        Some(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gives_a_few_examples_and_one_summary_per_window() {
        let mut s = EventSummary::new(3);
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([192, 0, 2, n]);
        let noted: Vec<Noted> = (0..1000).map(|i| s.note(ip((i % 7) as u8), t0)).collect();
        assert_eq!(noted.iter().filter(|n| n.example).count(), 3);
        assert!(noted.iter().all(|n| n.closed.is_none()));
        assert_eq!(s.close_if_due(t0 + Duration::from_secs(9)), None);
        let next = s.note(ip(1), t0 + SUMMARY_WINDOW);
        assert_eq!(
            next.closed,
            Some(WindowTotals {
                events: 1000,
                sources: 7,
                examples: 3
            })
        );
        assert!(next.example, "a new window, new examples");
        // The timer closes the last window of a flood.
        assert_eq!(
            s.close_if_due(t0 + 2 * SUMMARY_WINDOW).map(|t| t.events),
            Some(1)
        );
        assert_eq!(
            s.close_if_due(t0 + 3 * SUMMARY_WINDOW),
            None,
            "nothing since"
        );
    }
}
