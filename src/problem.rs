//! One finding in a config or catalog file, with the key path that locates it.
//!
//! Shared by [`crate::config`] and [`crate::classify::Catalog`]: both collect
//! every problem of a file before failing, so that one run of
//! `sipadmit check-config` lists them all.

use std::error::Error;
use std::fmt;

/// One problem found in a config or catalog file.
///
/// Displayed as `key: message`, e.g.
/// `response_group.workflows[2]: not a SIP URI: "helpdesk" (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a dotted key path (`limits.max_headers`, `clients[3].match[1].regex`),
    /// or the command-line flag that gave the value (`--listen[0]`).
    pub key: String,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem at `key` whose message is `error` and every error in its
    /// source chain, joined by `": "` (each cause written once).
    pub fn from_error(key: impl Into<String>, error: &dyn Error) -> Self {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(e) = cause {
            message.push_str(": ");
            message.push_str(&e.to_string());
            cause = e.source();
        }
        Self::new(key, message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x.toml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn displays_key_then_message() {
        let p = Problem::new("limits.max_headers", "expected an integer, got \"lots\"");
        assert_eq!(
            p.to_string(),
            "limits.max_headers: expected an integer, got \"lots\""
        );
    }

    #[test]
    fn error_chain_is_written_once_each() {
        let io = std::io::Error::from_raw_os_error(2);
        let os_message = io.to_string();
        let p = Problem::from_error("catalog.path", &Outer(io));
        assert_eq!(p.message, format!("cannot read x.toml: {os_message}"));
        assert_eq!(p.message.matches("os error 2").count(), 1, "{p}");
    }
}
