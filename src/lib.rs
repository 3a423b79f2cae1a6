//! sipadmit: a SIP registration admission filter.
//!
//! ```text
//! bytes ─► sip::framing ─► sip::SipView ─► classify ─► policy::decide ─► act ─► log
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
#[cfg(test)]
mod captured_log;
pub mod classify;
pub mod cli;
pub mod client_version_policy;
pub mod config;
pub mod dispatch;
pub mod drain;
pub mod expiring;
pub mod observe;
pub mod policy;
pub mod probe;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod sip;
pub mod systemd;
pub mod terminal_text;
#[cfg(test)]
mod test_certificates;
pub mod transport;
pub mod vocabulary;
pub mod workers;
