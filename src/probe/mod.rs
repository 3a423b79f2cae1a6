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
//!   The text never passes the target's control characters to the
//!   terminal ([`crate::terminal_text::terminal_safe`]).

pub mod exchange;
pub mod message;
pub mod tls;

use crate::config::endpoint::Endpoint;
use crate::terminal_text::terminal_safe;

pub use exchange::{exchange, ProbeError};
pub use message::{Answer, BadContact, ProbeMethod, ProbeRequest, RequestError};
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
    /// Whether the probe succeeded: a final answer without a protocol
    /// error, with the expected status when one was given.
    pub fn matched(&self) -> bool {
        match (&self.answer, self.expected) {
            (Ok(answer), _) if answer.fault.is_some() => false,
            (Ok(answer), Some(code)) => answer.status == code,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        }
    }

    /// Why the probe failed (`None` when it matched), for stderr, safe for
    /// a terminal.
    pub fn failure(&self) -> Option<String> {
        let failure = match (&self.answer, self.expected) {
            (Err(e), _) => e.clone(),
            (Ok(a), expected) => {
                let unexpected = expected.filter(|&code| code != a.status);
                if unexpected.is_none() && a.fault.is_none() {
                    return None;
                }
                format!(
                    "{}{} answered {} {}{}",
                    unexpected.map_or_else(String::new, |code| format!("expected {code}, ")),
                    self.target,
                    a.status,
                    a.reason,
                    a.fault.as_ref().map_or_else(String::new, |fault| format!(
                        " with a protocol error: {fault}"
                    )),
                )
            }
        };
        Some(terminal_safe(&failure).into_owned())
    }

    /// The report for people: the status line, then the Warning and
    /// ms-diagnostics values, one per line (what the target sent made safe
    /// for a terminal: [`crate::terminal_text::terminal_safe`]).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |text: &str| {
            out.push_str(&terminal_safe(text));
            out.push('\n');
        };
        match &self.answer {
            Ok(a) => {
                line(&format!(
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
                ));
                for w in &a.warnings {
                    line(&format!("Warning: {w}"));
                }
                for d in &a.ms_diagnostics {
                    line(&format!("ms-diagnostics: {d}"));
                }
                if let Some(note) = &a.note {
                    line(&format!("note: {note}"));
                }
                if let Some(fault) = &a.fault {
                    line(&format!("protocol error: {fault}"));
                }
            }
            Err(e) => line(&format!("no answer: {e}")),
        }
        out
    }

    /// The report for scripts: one JSON object (`status` and `reason` null
    /// when there was no answer, with `error` saying why; an answer's
    /// protocol error in `protocol_error`, `error` staying null). The
    /// target's text as it came (JSON escapes control characters).
    pub fn json(&self) -> String {
        let answer = self.answer.as_ref().ok();
        let error = self.answer.as_ref().err();
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
            "error": error,
            "protocol_error": answer.and_then(|a| a.fault.clone()),
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
            fault: None,
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

    #[test]
    fn terminal_safe_escapes_controls_and_bidi_overrides_only() {
        assert_eq!(terminal_safe("Forbidden — déjà vu"), "Forbidden — déjà vu");
        assert_eq!(
            terminal_safe("a\0b\x1b[31mc\x07\td\r\ne\u{202e}f\u{7f}"),
            "a\\u{0}b\\u{1b}[31mc\\u{7}\\u{9}d\\u{d}\\u{a}e\\u{202e}f\\u{7f}"
        );
    }

    #[test]
    fn text_and_failure_escape_the_targets_control_characters_json_keeps_them() {
        let hostile = Answer {
            reason: "Forb\0idden\x1b[31m".into(),
            warnings: vec!["399 fake \"\x1b]0;pwned\x07\x1b[2J\"".into()],
            ms_diagnostics: vec!["1\u{202e}2".into()],
            note: Some("the call was set up, and its BYE answered 5\x1b".into()),
            ..forbidden()
        };
        let o = outcome(Ok(hostile.clone()), Some(200));
        assert_eq!(
            o.text(),
            "403 Forb\\u{0}idden\\u{1b}[31m (INVITE as \"AndroidLync/6.25.0.27\" to udp:127.0.0.1:5060, 3 ms)\n\
             Warning: 399 fake \"\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\"\n\
             ms-diagnostics: 1\\u{202e}2\n\
             note: the call was set up, and its BYE answered 5\\u{1b}\n"
        );
        assert_eq!(
            o.failure().unwrap(),
            "expected 200, udp:127.0.0.1:5060 answered 403 Forb\\u{0}idden\\u{1b}[31m"
        );
        let none = outcome(Err("got \x1b[2J".into()), None);
        assert_eq!(none.text(), "no answer: got \\u{1b}[2J\n");
        assert_eq!(none.failure().unwrap(), "got \\u{1b}[2J");
        // JSON escapes control characters itself: the values stay as sent.
        let json: serde_json::Value = serde_json::from_str(&o.json()).unwrap();
        assert_eq!(json["reason"], hostile.reason.as_str());
        assert_eq!(json["warning"][0], hostile.warnings[0].as_str());
        assert!(!o.json().contains('\x1b'));
    }

    #[test]
    fn a_protocol_error_fails_the_probe_whatever_the_status() {
        let ok = Answer {
            status: 200,
            reason: "OK".into(),
            warnings: vec![],
            ms_diagnostics: vec![],
            fault: Some("it has no Contact".into()),
            ..forbidden()
        };
        for expected in [None, Some(200)] {
            let o = outcome(Ok(ok.clone()), expected);
            assert!(!o.matched());
            assert_eq!(
                o.failure().unwrap(),
                "udp:127.0.0.1:5060 answered 200 OK with a protocol error: it has no Contact"
            );
            assert!(
                o.text().ends_with("\nprotocol error: it has no Contact\n"),
                "{}",
                o.text()
            );
            let json: serde_json::Value = serde_json::from_str(&o.json()).unwrap();
            assert_eq!(
                (json["matched"].clone(), json["status"].clone()),
                (false.into(), 200.into())
            );
            // `error` stays what it was, "no answer" (scripts read it so).
            assert_eq!(json["error"], serde_json::Value::Null);
            assert_eq!(json["protocol_error"], "it has no Contact");
        }
        assert_eq!(
            outcome(Ok(ok), Some(486)).failure().unwrap(),
            "expected 486, udp:127.0.0.1:5060 answered 200 OK with a protocol error: \
             it has no Contact"
        );
    }
}
