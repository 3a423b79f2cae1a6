//! The finished report: what `--json` prints (these types serialize to it
//! field by field) and what the plain and HTML renderers show. Lists are
//! sorted by count, descending, ties by key, ascending.

use std::fmt;

use jiff::Timestamp;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// A timestamp shown as records show it: RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub Timestamp);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Counts by name, serialized as a JSON object in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedCounts(pub Vec<(&'static str, u64)>);

impl NamedCounts {
    /// The count of `name` (0 when absent).
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c)
    }

    /// The sum of the counts.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, c)| c).sum()
    }
}

impl Serialize for NamedCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, count) in &self.0 {
            map.serialize_entry(name, count)?;
        }
        map.end()
    }
}

/// `sipadmit report --json`: the whole report as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The logs read, as named on the command line (`stdin` for stdin).
    pub logs: Vec<String>,
    /// The gzip logs that could be read only up to a damage (cut short, a
    /// corrupt block, a checksum that does not match), in reading order;
    /// empty when every log was read whole. Each was counted up to the
    /// damage, and the lines of its damaged member read before the damage
    /// was detected may be altered.
    pub damaged_logs: Vec<DamagedLog>,
    /// The logs with malformed lines (counted in `malformed_lines`), in
    /// reading order: where to look.
    pub malformed_logs: Vec<MalformedLines>,
    /// Which records the decision tables count: `once` (each call once
    /// per client: the client's leg, and the registrar's leg only when it
    /// carries a decision the client's leg did not) or `both` (`--legs
    /// both`: every policy record).
    pub legs: &'static str,
    /// Valid decision records inside the time range, of every kind and
    /// leg: `records`, plus `protocol_answers.total`, plus the repeats
    /// `--legs once` leaves out (registrar-leg passes of a call, retries
    /// after a challenge).
    pub records_read: u64,
    /// Of `records_read`, the records whose answer or relayed message never
    /// reached its peer (`undelivered`: for a connection that had closed or
    /// whose write queue was full),
    /// of every kind and leg.
    pub undelivered: u64,
    /// Of `records_read`, the policy records of retries after a challenge
    /// (`after_challenge`: a request sent again with credentials after a
    /// `401` or `407`), of either leg: `--legs once` counts each sign-in or
    /// call once, at its first attempt, and leaves them out.
    pub after_challenge: u64,
    /// Policy decision records counted in the decision tables (`by_action`,
    /// `by_client`, ...): inside the time range, not protocol answers, and
    /// as `legs` says.
    pub records: u64,
    /// Records read per leg: `records`, `policy` decisions, `protocol`
    /// answers, and the policy decisions `counted`.
    pub by_leg: ByLeg,
    /// Counted REGISTER decisions: registrations and de-registrations.
    pub registers: Registers,
    /// Local answers for protocol or capacity reasons (rules `proxy.*`,
    /// `rate_limit.*`, `ban.*`): not policy decisions, counted here only
    /// (both legs).
    pub protocol_answers: ProtocolAnswers,
    /// Lines that were not decision records (skipped).
    pub malformed_lines: u64,
    /// Valid records outside `--since` / `--until` (skipped).
    pub outside_time_range: u64,
    /// `--since` (inclusive), if given.
    pub since: Option<Millis>,
    /// `--until` (exclusive), if given.
    pub until: Option<Millis>,
    /// Time of the earliest record counted.
    pub first_record: Option<Millis>,
    /// Time of the latest record counted.
    pub last_record: Option<Millis>,
    /// Records by action: allow, flag, reject, drop.
    pub by_action: NamedCounts,
    /// Records by session role: caller, agent-offer, agent-registration, none.
    pub by_role: NamedCounts,
    /// Records by mode: enforce, monitor.
    pub by_mode: NamedCounts,
    /// Records by the client's Response Group support class.
    pub by_support: NamedCounts,
    /// Records by the client's category.
    pub by_category: NamedCounts,
    /// Per role, records by action.
    pub by_role_and_action: Vec<RoleActions>,
    /// Records by client, with the versions seen.
    pub by_client: Vec<ClientSummary>,
    /// Records by policy rule.
    pub by_rule: Vec<KeyCount>,
    /// What monitor mode relayed that enforce mode would have rejected.
    pub would_reject: WouldReject,
    /// Rejected and flagged records: where they came from.
    pub rejected_and_flagged: RejectedAndFlagged,
    /// User-Agents the catalog did not recognise (client `unknown`); when
    /// the table was full, the most frequent ones (see `not_itemised`).
    pub unknown_user_agents: Vec<UnknownUserAgent>,
    /// Catalog entries for the products with the most unknown records.
    pub catalog_snippets: Vec<CatalogSnippet>,
    /// Per table: records counted in the totals but not under a listed
    /// key because the table was full (see [`super::capped`]): the records
    /// of the keys it dropped for more frequent ones, and those a listed key
    /// had before it was listed.
    pub not_itemised: NamedCounts,
    /// Per table: the most records one key can have among its
    /// `not_itemised`: a key not listed had at most this many records, a
    /// listed key at most this many more than its count (0: the table
    /// dropped no key, every count is exact).
    pub not_itemised_per_key_max: NamedCounts,
    /// Decisions over time.
    pub over_time: OverTime,
}

/// A gzip log read only up to a damage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedLog {
    /// The log, as named on the command line (`stdin` for stdin).
    pub log: String,
    /// What the decompressor said, e.g. `corrupt gzip stream does not have
    /// a matching checksum` (altered data, caught at the member's end),
    /// `corrupt deflate stream`, or `incomplete deflate stream` (a file cut
    /// short).
    pub error: String,
    /// The gzip member the damage is in, from 1 (a logrotate file has one;
    /// the members before it were intact).
    pub gzip_member: u64,
    /// Lines of that member read before the damage was detected: counted
    /// (as records, records outside the time range, or malformed lines),
    /// and they may be altered (gzip checks a member's checksum only at its
    /// end). The rest of the log was skipped.
    pub lines_counted: u64,
}

/// A log with lines that are not decision records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MalformedLines {
    /// The log, as named on the command line (`stdin` for stdin).
    pub log: String,
    /// How many of its lines were skipped: not a decision record (not
    /// JSON, or without the fields a record has), or longer than 4 MiB.
    pub lines: u64,
    /// The first of them, 1-based (in the decompressed text of a `.gz`).
    pub first_line: u64,
}

/// One role's records by action.
#[derive(Debug, Clone, Serialize)]
pub struct RoleActions {
    /// Session role.
    pub role: &'static str,
    /// Records of the role.
    pub count: u64,
    /// Those records by action.
    pub by_action: NamedCounts,
}

/// Records of one client product.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    /// Catalog id (`unknown`, `missing` for the built-ins).
    pub client: String,
    /// Records of the client.
    pub count: u64,
    /// The client's category, as the latest of its records says.
    pub category: &'static str,
    /// The client's support class, as the latest of its records says.
    pub support: &'static str,
    /// Records by action.
    pub by_action: NamedCounts,
    /// Records by leg: `from_client`, `from_registrar`.
    pub by_leg: NamedCounts,
    /// Versions read from the records' User-Agents with the catalog.
    pub versions: Vec<VersionCount>,
    /// Records that gave no version: no version in the User-Agent, no
    /// User-Agent, or an agent offer (whose User-Agent is the Response
    /// Group application's, not the client's).
    pub without_version: u64,
    /// Records whose User-Agent the report's catalog classifies as another
    /// client than the record names (the catalog changed since).
    pub reclassified: u64,
}

/// The records of one leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LegCounts {
    /// Records read (inside the time range).
    pub records: u64,
    /// Policy decisions among them.
    pub policy: u64,
    /// Protocol and capacity answers among them.
    pub protocol: u64,
    /// Policy decisions counted in the decision tables.
    pub counted: u64,
}

/// Records per leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByLeg {
    /// Requests that came from a client.
    pub from_client: LegCounts,
    /// Requests that came from the registrar.
    pub from_registrar: LegCounts,
}

/// Counted REGISTER decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Registers {
    /// REGISTERs that add or refresh bindings (or query them).
    pub register: u64,
    /// De-REGISTERs (`unregister`: `Contact: *`, or every Contact expiring at once).
    pub unregister: u64,
}

/// Local answers for protocol or capacity reasons.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolAnswers {
    /// Records.
    pub total: u64,
    /// Records by leg.
    pub by_leg: NamedCounts,
    /// Records by rule and status.
    pub by_rule: Vec<ProtocolRule>,
    /// Records by source IP address.
    pub sources: Vec<KeyCount>,
}

/// The protocol answers of one rule with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtocolRule {
    /// The rule, e.g. `proxy.malformed`.
    pub rule: String,
    /// The status answered; `null` when the request was dropped (an ACK,
    /// a ban).
    pub status: Option<u16>,
    /// Records.
    pub count: u64,
}

/// Records that showed one version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionCount {
    /// The version, e.g. `15.0.4481.1000`.
    pub version: String,
    /// Records.
    pub count: u64,
}

/// A key and its record count; serialized as `{"<field>": key, "count": n}`
/// (e.g. `{"source": "192.0.2.7", "count": 3}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    /// The JSON field name of the key: `rule`, `client`, `source`, `user`, `workflow`.
    pub field: &'static str,
    /// The key (a rule id, client id, address, URI).
    pub key: String,
    /// Records.
    pub count: u64,
}

impl Serialize for KeyCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(self.field, &self.key)?;
        map.serialize_entry("count", &self.count)?;
        map.end()
    }
}

/// Monitor mode's would-be rejects.
#[derive(Debug, Clone, Serialize)]
pub struct WouldReject {
    /// Records marked `would_reject`.
    pub total: u64,
    /// Those of them that are protocol records: requests monitor mode
    /// flagged that were then answered on the way (a `503` while the
    /// registrar was known down, a `430`), not relayed; counted under
    /// their protocol rule.
    pub answered_on_the_way: u64,
    /// Those records by role.
    pub by_role: NamedCounts,
    /// Those records by client.
    pub by_client: Vec<KeyCount>,
    /// Those records by policy rule.
    pub by_rule: Vec<KeyCount>,
}

impl WouldReject {
    /// What the text and HTML reports say of the `would_reject` records:
    /// those relayed, then those answered on the way (when there are).
    pub fn sentences(&self) -> impl Iterator<Item = String> {
        let relayed = format!(
            "{} records relayed in monitor mode would have been refused (rejected or dropped) in enforce mode.",
            self.total - self.answered_on_the_way
        );
        let answered = (self.answered_on_the_way > 0).then(|| {
            format!(
                "{} more that monitor mode let through were answered on the way, not relayed (each counted under its protocol rule, such as proxy.upstream-unavailable).",
                self.answered_on_the_way
            )
        });
        std::iter::once(relayed).chain(answered)
    }
}

/// Records rejected or flagged.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedAndFlagged {
    /// Records rejected.
    pub reject: u64,
    /// Records flagged (monitor-mode would-be rejects included).
    pub flag: u64,
    /// Those records by source IP address.
    pub sources: Vec<KeyCount>,
    /// Those records by From URI.
    pub users: Vec<KeyCount>,
    /// Caller records among them by Request-URI (the workflow called).
    pub workflows: Vec<KeyCount>,
}

/// A User-Agent the catalog did not recognise.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownUserAgent {
    /// The User-Agent as sent.
    pub user_agent: String,
    /// Records with it (when the table was full, since it was last listed:
    /// up to `not_itemised_per_key_max.unknown_user_agents` more).
    pub count: u64,
    /// Earliest of those records.
    pub first_seen: Millis,
    /// Latest of those records.
    pub last_seen: Millis,
    /// The id of the entry of [`Summary::catalog_snippets`] that would
    /// recognise it (`null` when it is not among the top products).
    pub catalog_entry: Option<String>,
}

/// A proposed `[[clients]]` catalog entry for unknown User-Agents that
/// share a product token.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogSnippet {
    /// The client id the entry proposes.
    pub client: String,
    /// The most frequent of the User-Agents it recognises.
    pub user_agent: String,
    /// Records with the User-Agents it recognises.
    pub records: u64,
    /// Distinct User-Agents it recognises.
    pub user_agents: u64,
    /// The entry: TOML with comments, to paste at the end of the catalog.
    pub toml: String,
}

/// Decisions over time.
#[derive(Debug, Clone, Serialize)]
pub struct OverTime {
    /// Bucket width in words: `minute`, `hour`, `day`, `N days`.
    pub bucket: String,
    /// Bucket width in seconds.
    pub bucket_seconds: i64,
    /// Every bucket from the first record's to the last record's.
    pub buckets: Vec<TimeBucket>,
}

/// The records of one time bucket by action.
#[derive(Debug, Clone, Serialize)]
pub struct TimeBucket {
    /// Start of the bucket (UTC).
    pub start: Millis,
    /// Records allowed.
    pub allow: u64,
    /// Records flagged.
    pub flag: u64,
    /// Records rejected.
    pub reject: u64,
    /// Records dropped.
    pub drop: u64,
    /// Records marked `would_reject` (counted under `flag` too).
    pub would_reject: u64,
    /// Protocol and capacity answers (not in the counts above).
    pub protocol: u64,
}

impl TimeBucket {
    /// Policy decisions in the bucket (protocol answers not included).
    pub fn total(&self) -> u64 {
        self.allow + self.flag + self.reject + self.drop
    }

    /// The cells of its row in the per-bucket tables (text and HTML):
    /// start, total, allow, flag, reject, drop, would-reject, protocol.
    pub fn cells(&self) -> Vec<String> {
        [
            self.total(),
            self.allow,
            self.flag,
            self.reject,
            self.drop,
            self.would_reject,
            self.protocol,
        ]
        .into_iter()
        .fold(vec![self.start.to_string()], |mut cells, n| {
            cells.push(n.to_string());
            cells
        })
    }
}
