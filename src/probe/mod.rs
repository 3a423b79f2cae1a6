//! `sipadmit probe`: send one request through a running sipadmit and report
//! what came back (status, `Warning`, `ms-diagnostics`), for admins who
//! check a rule after a reload and for monitoring scripts.
//!
//! - [`message`] (pure): the request (REGISTER, INVITE or OPTIONS, with the
//!   User-Agent to test), the ACK and BYE that close an INVITE, and the
//!   [`Answer`] read from the final response.
//! - [`tls`]: the TLS client context (`--ca`, `--cert`, `--key`), its
//!   files checked before anything is sent.
//! - [`exchange`] (I/O, blocking, every wait bounded by one deadline): UDP
//!   with RFC 3261 retransmissions, TCP, or TLS verified against `--ca`.
//! - [`Outcome`]: the answer against `--expect`, as text or one JSON object.

pub mod exchange;
pub mod message;
pub mod tls;

use std::fmt::Write as _;

use crate::config::endpoint::Endpoint;

pub use exchange::{exchange, ProbeError};
pub use message::{Answer, ProbeMethod, ProbeRequest, RequestError};
pub use tls::{TlsClient, TlsOptions, TlsSetupError};

/// What a probe found, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Where the request went.
    pub target: Endpoint,
    /// Its method.
    pub method: ProbeMethod,
    /// Its User-Agent (`None`: sent without one).
    pub user_agent: Option<String>,
    /// The final answer, or why there is none.
    pub answer: Result<Answer, String>,
    /// `--expect`.
    pub expected: Option<u16>,
}

impl Outcome {
    /// Whether the probe succeeded: a final answer, with the expected
    /// status when one was given.
    pub fn matched(&self) -> bool {
        match (&self.answer, self.expected) {
            (Ok(answer), Some(code)) => answer.status == code,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        }
    }

    /// Why the probe failed (`None` when it matched), for stderr.
    pub fn failure(&self) -> Option<String> {
        match (&self.answer, self.expected) {
            (Err(e), _) => Some(e.clone()),
            (Ok(a), Some(code)) if a.status != code => Some(format!(
                "expected {code}, {} answered {} {}",
                self.target, a.status, a.reason
            )),
            _ => None,
        }
    }

    /// The report for people: the status line, then the Warning and
    /// ms-diagnostics values, one per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match &self.answer {
            Ok(a) => {
                let _ = writeln!(
                    out,
                    "{} {} ({} {} to {}, {} ms)",
                    a.status,
                    a.reason,
                    self.method,
                    self.user_agent.as_deref().map_or_else(
                        || "without User-Agent".to_owned(),
                        |ua| format!("as {ua:?}")
                    ),
                    self.target,
                    a.elapsed.as_millis()
                );
                for w in &a.warnings {
                    let _ = writeln!(out, "Warning: {w}");
                }
                for d in &a.ms_diagnostics {
                    let _ = writeln!(out, "ms-diagnostics: {d}");
                }
                if let Some(note) = &a.note {
                    let _ = writeln!(out, "note: {note}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "no answer: {e}");
            }
        }
        out
    }

    /// The report for scripts: one JSON object (`status` and `reason` null
    /// when there was no answer, with `error` saying why).
    pub fn json(&self) -> String {
        let answer = self.answer.as_ref().ok();
        serde_json::json!({
            "target": self.target.to_string(),
            "method": self.method.as_str(),
            "user_agent": self.user_agent,
            "status": answer.map(|a| a.status),
            "reason": answer.map(|a| a.reason.clone()),
            "warning": answer.map(|a| a.warnings.clone()).unwrap_or_default(),
            "ms_diagnostics": answer.map(|a| a.ms_diagnostics.clone()).unwrap_or_default(),
            "provisional": answer.map(|a| a.provisional.clone()).unwrap_or_default(),
            "elapsed_ms": answer.map(|a| u64::try_from(a.elapsed.as_millis()).unwrap_or(u64::MAX)),
            "note": answer.and_then(|a| a.note.clone()),
            "expected": self.expected,
            "matched": self.matched(),
            "error": self.answer.as_ref().err(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::Transport;
    use std::time::Duration;

    fn outcome(answer: Result<Answer, String>, expected: Option<u16>) -> Outcome {
        Outcome {
            target: Endpoint {
                transport: Transport::Udp,
                addr: "127.0.0.1:5060".parse().unwrap(),
            },
            method: ProbeMethod::Invite,
            user_agent: Some("AndroidLync/6.25.0.27".into()),
            answer,
            expected,
        }
    }

    fn forbidden() -> Answer {
        Answer {
            status: 403,
            reason: "Forbidden".into(),
            warnings: vec![
                "399 sipadmit \"The Response Group does not support this client\"".into(),
            ],
            ms_diagnostics: vec!["17002;reason=\"x\";source=\"sipadmit\"".into()],
            provisional: vec![100],
            elapsed: Duration::from_millis(3),
            note: None,
        }
    }

    #[test]
    fn matched_follows_expect() {
        assert!(outcome(Ok(forbidden()), Some(403)).matched());
        assert!(outcome(Ok(forbidden()), None).matched());
        let wrong = outcome(Ok(forbidden()), Some(200));
        assert!(!wrong.matched());
        assert_eq!(
            wrong.failure().unwrap(),
            "expected 200, udp:127.0.0.1:5060 answered 403 Forbidden"
        );
        let none = outcome(Err("no answer within 5 s".into()), None);
        assert!(!none.matched());
        assert_eq!(none.failure().unwrap(), "no answer within 5 s");
    }

    #[test]
    fn text_and_json_reports() {
        let o = outcome(Ok(forbidden()), Some(403));
        assert_eq!(
            o.text(),
            "403 Forbidden (INVITE as \"AndroidLync/6.25.0.27\" to udp:127.0.0.1:5060, 3 ms)\n\
             Warning: 399 sipadmit \"The Response Group does not support this client\"\n\
             ms-diagnostics: 17002;reason=\"x\";source=\"sipadmit\"\n"
        );
        let json: serde_json::Value = serde_json::from_str(&o.json()).unwrap();
        assert_eq!(json["status"], 403);
        assert_eq!(json["matched"], true);
        assert_eq!(json["warning"][0], forbidden().warnings[0]);
        assert_eq!(json["provisional"][0], 100);
        assert_eq!(json["error"], serde_json::Value::Null);
        let none: serde_json::Value =
            serde_json::from_str(&outcome(Err("timed out".into()), Some(200)).json()).unwrap();
        assert_eq!(none["status"], serde_json::Value::Null);
        assert_eq!(
            (none["matched"].clone(), none["error"].clone()),
            (false.into(), "timed out".into())
        );
    }
}
