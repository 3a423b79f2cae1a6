//! Stage 6, observe: decision records, counters, console logging, and
//! the HEPv3 export of messages and decisions to a Homer collector.

pub mod console;
pub mod decision_log;
pub mod hep;
pub mod metrics;
pub mod summary;

pub use decision_log::{DecisionLog, DecisionRecord, LogWriter};
pub use hep::Hep;
pub use metrics::Metrics;
