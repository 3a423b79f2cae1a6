//! Decision records: one JSON object per line for every admission decision,
//! with the field names operators' scripts rely on (design.md section 3).

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// One admission decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    /// RFC 3339 UTC time with milliseconds.
    pub ts: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Source `IP:port` of the message.
    pub source: String,
    /// Request method.
    pub method: String,
    /// Call-ID.
    pub call_id: String,
    /// From URI.
    pub from: String,
    /// To URI.
    pub to: String,
    /// Request-URI.
    pub request_uri: String,
    /// User-Agent as sent (`null` when missing).
    pub user_agent: Option<String>,
    /// Catalog id of the client the decision is about (for agent offers:
    /// the client that registered the target endpoint).
    pub client: String,
    /// The client's category.
    pub category: &'static str,
    /// The client's Response Group support.
    pub support: &'static str,
    /// Session role: caller, agent-offer, agent-registration, none.
    pub role: &'static str,
    /// allow, flag, reject or drop.
    pub action: &'static str,
    /// Policy rule that decided, e.g. `caller.unsupported`.
    pub rule: &'static str,
    /// Catalog rule that classified the client, e.g. `lync-mobile#1`.
    pub client_rule: String,
    /// Status code sent by the filter (rejects), else `null`.
    pub status: Option<u16>,
    /// enforce or monitor.
    pub mode: &'static str,
    /// Monitor mode relayed a message enforce mode would have rejected.
    pub would_reject: bool,
}

/// Where decision records go.
pub struct DecisionLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecisionLog(..)")
    }
}

impl DecisionLog {
    /// Open `-` (stdout) or a file (appended to, created if missing).
    pub fn open(target: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        Ok(Self {
            out: Mutex::new(out),
        })
    }

    /// A log writing into any writer (tests).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(w) }
    }

    /// Write one record as a JSON line and flush it, so that nothing is
    /// lost on a crash or restart.
    pub fn write(&self, record: &DecisionRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut out = self.out.lock().expect("decision log lock");
        out.write_all(&line)?;
        out.flush()
    }
}

/// Current UTC time as RFC 3339 with milliseconds (`2026-11-27T00:10:00.123Z`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// Format Unix seconds + milliseconds as RFC 3339 UTC.
fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339(1_795_737_600 + 3661, 999),
            "2026-11-27T01:01:01.999Z"
        );
    }
}
