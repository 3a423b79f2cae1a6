//! Stage 6, observe: decision records, counters and console logging.

pub mod console;
pub mod decision_log;
pub mod metrics;
pub mod summary;

pub use decision_log::{DecisionLog, DecisionRecord, LogWriter};
pub use metrics::Metrics;
