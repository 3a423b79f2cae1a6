//! The streaming aggregation: [`Tally::add_line`] takes one log line at a
//! time and keeps only counters and bounded tables (no record is kept);
//! [`Tally::finish`] sorts them into a [`Summary`]. Pure: no I/O, no clock.

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;

use crate::classify::{Catalog, Category, Support, Version, CLIENT_UNKNOWN};
use crate::observe::decision_log::{DecisionKind, Leg};
use crate::policy::{Action, Mode, SessionRole};

use super::capped::CappedTable;
use super::record::RecordView;
use super::snippet::{catalog_snippet, match_rule, Covered, MatchRule};
use super::summary::{
    ByLeg, CatalogSnippet, ClientSummary, DamagedLog, KeyCount, LegCounts, MalformedLines, Millis,
    NamedCounts, ProtocolAnswers, ProtocolRule, Registers, RejectedAndFlagged, RoleActions,
    Summary, UnknownUserAgent, VersionCount, WouldReject,
};
use super::timeline::Timeline;
use super::{Legs, TimeRange};

/// Versions listed per client: 100 (the most frequent; see [`CappedTable`]).
pub const MAX_VERSIONS_PER_CLIENT: usize = 100;
/// How many of the top unknown User-Agents get a catalog snippet: 10.
pub const SNIPPET_USER_AGENTS: usize = 10;

const ACTIONS: [Action; 4] = [Action::Allow, Action::Flag, Action::Reject, Action::Drop];
const ROLES: [SessionRole; 4] = [
    SessionRole::Caller,
    SessionRole::AgentOffer,
    SessionRole::AgentRegistration,
    SessionRole::None,
];
const MODES: [Mode; 2] = [Mode::Enforce, Mode::Monitor];

fn action_index(a: Action) -> usize {
    match a {
        Action::Allow => 0,
        Action::Flag => 1,
        Action::Reject => 2,
        Action::Drop => 3,
    }
}

fn role_index(r: SessionRole) -> usize {
    match r {
        SessionRole::Caller => 0,
        SessionRole::AgentOffer => 1,
        SessionRole::AgentRegistration => 2,
        SessionRole::None => 3,
    }
}

fn leg_index(l: Leg) -> usize {
    match l {
        Leg::FromClient => 0,
        Leg::FromRegistrar => 1,
    }
}

fn mode_index(m: Mode) -> usize {
    match m {
        Mode::Enforce => 0,
        Mode::Monitor => 1,
    }
}

fn support_index(s: Support) -> usize {
    match s {
        Support::Supported => 0,
        Support::Unsupported => 1,
        Support::Service => 2,
        Support::ThirdParty => 3,
        Support::Scanner => 4,
        Support::Unknown => 5,
    }
}

fn category_index(c: Category) -> usize {
    match c {
        Category::Desktop => 0,
        Category::Attendant => 1,
        Category::Phone => 2,
        Category::Mobile => 3,
        Category::Web => 4,
        Category::Service => 5,
        Category::Gateway => 6,
        Category::ThirdParty => 7,
        Category::Scanner => 8,
        Category::Unknown => 9,
    }
}

fn named<T: Copy, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
    counts: &[u64; N],
) -> NamedCounts {
    NamedCounts(
        all.iter()
            .zip(counts)
            .map(|(&v, &c)| (name(v), c))
            .collect(),
    )
}

/// What the report's catalog makes of a User-Agent.
#[derive(Debug, Clone, Copy)]
struct UserAgentClass<'c> {
    client: &'c str,
    version: Option<Version>,
}

/// One client's counters, since it was listed (its records are the
/// table's).
#[derive(Debug, Clone)]
struct ClientTally {
    by_action: [u64; 4],
    by_leg: [u64; 2],
    /// Category and support of the latest record, and its time.
    latest: Option<(Timestamp, Category, Support)>,
    versions: CappedTable<Version>,
    without_version: u64,
    reclassified: u64,
}

impl Default for ClientTally {
    fn default() -> Self {
        Self {
            by_action: [0; 4],
            by_leg: [0; 2],
            latest: None,
            versions: CappedTable::with_limits(MAX_VERSIONS_PER_CLIENT, usize::MAX),
            without_version: 0,
            reclassified: 0,
        }
    }
}

/// When a User-Agent was seen (since it was listed).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl Seen {
    fn add(&mut self, ts: Timestamp) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }
}

/// Counters over a stream of log lines; memory grows with distinct keys
/// (bounded by the tables' limits), never with records.
#[derive(Debug)]
pub struct Tally<'c> {
    catalog: &'c Catalog,
    range: TimeRange,
    legs: Legs,
    /// Valid records inside the time range, of every kind and leg.
    records_read: u64,
    /// Of those, the records marked `undelivered`.
    undelivered: u64,
    /// Of those, the policy records marked `after_challenge`.
    after_challenge: u64,
    /// Policy records counted in the decision tables.
    records: u64,
    by_leg: [LegCounts; 2],
    /// Counted REGISTER records: registrations, de-registrations.
    registers: [u64; 2],
    protocol_by_leg: [u64; 2],
    /// Protocol answers by `rule status` (status `none` for drops).
    protocol_rules: CappedTable<String>,
    protocol_sources: CappedTable<IpAddr>,
    malformed_lines: u64,
    outside_time_range: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    by_role_action: [[u64; 4]; 4],
    by_mode: [u64; 2],
    by_support: [u64; 6],
    by_category: [u64; 10],
    clients: CappedTable<String, ClientTally>,
    rules: CappedTable<String>,
    would_reject_by_role: [u64; 4],
    would_reject_clients: CappedTable<String>,
    would_reject_rules: CappedTable<String>,
    /// Protocol records among the would_reject ones.
    would_reject_answered: u64,
    refused_sources: CappedTable<IpAddr>,
    refused_users: CappedTable<String>,
    refused_workflows: CappedTable<String>,
    unknown_user_agents: CappedTable<String, Seen>,
    /// The catalog's verdict per User-Agent, so that each frequent value is
    /// classified once (a value dropped from the table is classified again).
    user_agent_classes: CappedTable<String, Option<UserAgentClass<'c>>>,
    timeline: Timeline,
    /// Gzip logs read only up to a damage, in reading order.
    damaged: Vec<DamagedLog>,
    /// The log being read, [`Self::lines`] when it began, and its place
    /// among the logs read (a log named twice is read twice).
    log: Option<(String, u64, usize)>,
    /// The logs with malformed lines, in reading order.
    malformed_logs: Vec<MalformedLines>,
    /// The place of the log the last of `malformed_logs` is about.
    malformed_in_last: Option<usize>,
}

impl<'c> Tally<'c> {
    /// An empty tally that reads versions with `catalog` and counts the
    /// records inside `range`.
    pub fn new(catalog: &'c Catalog, range: TimeRange) -> Self {
        Self {
            catalog,
            range,
            legs: Legs::Once,
            records_read: 0,
            undelivered: 0,
            after_challenge: 0,
            records: 0,
            by_leg: [LegCounts::default(); 2],
            registers: [0; 2],
            protocol_by_leg: [0; 2],
            protocol_rules: CappedTable::default(),
            protocol_sources: CappedTable::default(),
            malformed_lines: 0,
            outside_time_range: 0,
            first: None,
            last: None,
            by_role_action: [[0; 4]; 4],
            by_mode: [0; 2],
            by_support: [0; 6],
            by_category: [0; 10],
            clients: CappedTable::default(),
            rules: CappedTable::default(),
            would_reject_by_role: [0; 4],
            would_reject_clients: CappedTable::default(),
            would_reject_rules: CappedTable::default(),
            would_reject_answered: 0,
            refused_sources: CappedTable::default(),
            refused_users: CappedTable::default(),
            refused_workflows: CappedTable::default(),
            unknown_user_agents: CappedTable::default(),
            user_agent_classes: CappedTable::default(),
            timeline: Timeline::default(),
            damaged: Vec::new(),
            log: None,
            malformed_logs: Vec::new(),
            malformed_in_last: None,
        }
    }

    /// Count the records of `legs`: [`Legs::Once`] (the default) counts
    /// each call once per client, [`Legs::Both`] every policy record.
    pub fn counting(mut self, legs: Legs) -> Self {
        self.legs = legs;
        self
    }

    /// Count one log line (without its line break): a decision record, or
    /// a malformed line.
    pub fn add_line(&mut self, line: &[u8]) {
        match RecordView::parse(line) {
            Some(record) => self.add(&record),
            None => self.add_malformed(),
        }
    }

    /// Count one line that is not a record (or too long to be one), and
    /// note where it is when its log is named ([`Self::begin_log`]).
    pub fn add_malformed(&mut self) {
        self.malformed_lines += 1;
        let Some((log, began, place)) = &self.log else {
            return;
        };
        let line = self.lines() - began;
        match self.malformed_logs.last_mut() {
            Some(last) if self.malformed_in_last == Some(*place) => last.lines += 1,
            _ => {
                self.malformed_logs.push(MalformedLines {
                    log: log.clone(),
                    lines: 1,
                    first_line: line,
                });
                self.malformed_in_last = Some(*place);
            }
        }
    }

    /// The lines that follow are those of the log `name` (see
    /// [`Summary::malformed_logs`]).
    pub fn begin_log(&mut self, name: &str) {
        let place = self.log.as_ref().map_or(0, |(_, _, place)| place + 1);
        self.log = Some((name.to_owned(), self.lines(), place));
    }

    /// The logs with malformed lines so far (for a warning per log).
    pub fn malformed_logs(&self) -> &[MalformedLines] {
        &self.malformed_logs
    }

    /// Lines counted so far: records (inside the time range or not) and
    /// malformed lines.
    pub fn lines(&self) -> u64 {
        self.records_read + self.outside_time_range + self.malformed_lines
    }

    /// Note a log that could be read only up to a damage, for the report.
    pub fn add_damaged(&mut self, damaged: DamagedLog) {
        self.damaged.push(damaged);
    }

    /// Count one record: a protocol answer in its own tables; a policy
    /// decision in the decision tables when `legs` counts it (see
    /// [`crate::observe::decision_log::counted_once`]).
    pub fn add(&mut self, r: &RecordView<'_>) {
        if !self.range.contains(r.ts) {
            self.outside_time_range += 1;
            return;
        }
        self.records_read += 1;
        self.undelivered += u64::from(r.undelivered);
        self.first = Some(self.first.map_or(r.ts, |f| f.min(r.ts)));
        self.last = Some(self.last.map_or(r.ts, |l| l.max(r.ts)));
        let leg = leg_index(r.leg());
        self.by_leg[leg].records += 1;
        if r.kind() == DecisionKind::Protocol {
            self.by_leg[leg].protocol += 1;
            self.add_protocol(r, leg);
            // Flagged by monitor mode, then refused on the way (a 430 to
            // an agent whose connection closed): enforce would still have
            // rejected it.
            if r.would_reject {
                self.would_reject_answered += 1;
                self.add_would_reject(r);
            }
            return;
        }
        self.by_leg[leg].policy += 1;
        self.after_challenge += u64::from(r.after_challenge);
        if self.legs == Legs::Once && !r.counted_once() {
            return;
        }
        self.by_leg[leg].counted += 1;
        self.records += 1;
        if r.method.as_str() == "REGISTER" {
            self.registers[usize::from(r.unregister)] += 1;
        }
        let action = action_index(r.action);
        let role = role_index(r.role);
        self.by_role_action[role][action] += 1;
        self.by_mode[mode_index(r.mode)] += 1;
        self.by_support[support_index(r.support)] += 1;
        self.by_category[category_index(r.category)] += 1;
        self.rules.count(r.rule.as_str());
        self.timeline.add(r.ts, action, r.would_reject);
        self.add_client(r, action, leg);
        if r.would_reject {
            self.add_would_reject(r);
        }
        if matches!(r.action, Action::Reject | Action::Flag) {
            self.refused_sources.count(&r.source.ip());
            self.refused_users.count(r.from.as_str());
            if r.role == SessionRole::Caller {
                self.refused_workflows.count(r.request_uri.as_str());
            }
        }
        // An agent offer carries the Response Group application's
        // User-Agent, not the one of the client it is about.
        if r.client.as_str() == CLIENT_UNKNOWN && r.role != SessionRole::AgentOffer {
            if let Some(ua) = &r.user_agent {
                if let Some(seen) = self.unknown_user_agents.slot(ua.as_str()) {
                    seen.add(r.ts);
                }
            }
        }
    }

    /// A record of what enforce mode would have rejected.
    fn add_would_reject(&mut self, r: &RecordView<'_>) {
        self.would_reject_by_role[role_index(r.role)] += 1;
        self.would_reject_clients.count(r.client.as_str());
        self.would_reject_rules.count(r.rule.as_str());
    }

    fn add_protocol(&mut self, r: &RecordView<'_>, leg: usize) {
        self.protocol_by_leg[leg] += 1;
        self.timeline.add_protocol(r.ts);
        let key = match r.status {
            Some(status) => format!("{} {status}", r.rule),
            None => format!("{} none", r.rule),
        };
        self.protocol_rules.count(key.as_str());
        self.protocol_sources.count(&r.source.ip());
    }

    fn add_client(&mut self, r: &RecordView<'_>, action: usize, leg: usize) {
        let class = match (&r.user_agent, r.role) {
            (Some(ua), role) if role != SessionRole::AgentOffer => Some(self.classify(ua.as_str())),
            _ => None,
        };
        let Some(client) = self.clients.slot(r.client.as_str()) else {
            return;
        };
        client.by_action[action] += 1;
        client.by_leg[leg] += 1;
        if client.latest.is_none_or(|(t, _, _)| r.ts >= t) {
            client.latest = Some((r.ts, r.category, r.support));
        }
        match class {
            Some(class) if class.client != r.client.as_str() => client.reclassified += 1,
            Some(UserAgentClass {
                version: Some(v), ..
            }) => client.versions.count(&v),
            _ => client.without_version += 1,
        }
    }

    fn classify(&mut self, user_agent: &str) -> UserAgentClass<'c> {
        let catalog = self.catalog;
        let classify = || {
            let c = catalog.classify(Some(user_agent.as_bytes()));
            UserAgentClass {
                client: c.client.id.as_str(),
                version: c.version,
            }
        };
        match self.user_agent_classes.slot(user_agent) {
            Some(Some(class)) => *class,
            Some(slot) => *slot.insert(classify()),
            None => classify(),
        }
    }

    /// Sort the counters into the report.
    pub fn finish(self) -> Summary {
        let by_action = self.action_totals();
        let role_totals = self.role_totals();
        let (not_itemised, not_itemised_per_key_max) = self.not_itemised();
        let (unknown_user_agents, catalog_snippets) = self.unknown_summary();
        let by_role = role_counts(&role_totals);
        let by_role_and_action = role_action_rows(&self.by_role_action, &role_totals);
        Summary {
            logs: Vec::new(),
            damaged_logs: self.damaged,
            malformed_logs: self.malformed_logs,
            legs: self.legs.as_str(),
            records_read: self.records_read,
            undelivered: self.undelivered,
            after_challenge: self.after_challenge,
            records: self.records,
            by_leg: ByLeg {
                from_client: self.by_leg[0],
                from_registrar: self.by_leg[1],
            },
            registers: Registers {
                register: self.registers[0],
                unregister: self.registers[1],
            },
            protocol_answers: protocol_answers(
                &self.protocol_by_leg,
                self.protocol_rules,
                self.protocol_sources,
            ),
            malformed_lines: self.malformed_lines,
            outside_time_range: self.outside_time_range,
            since: self.range.since.map(Millis),
            until: self.range.until.map(Millis),
            first_record: self.first.map(Millis),
            last_record: self.last.map(Millis),
            by_action: named(ACTIONS, Action::as_str, &by_action),
            by_role,
            by_mode: named(MODES, Mode::as_str, &self.by_mode),
            by_support: named(Support::ALL, Support::as_str, &self.by_support),
            by_category: named(Category::ALL, Category::as_str, &self.by_category),
            by_role_and_action,
            by_client: clients_summary(self.clients),
            by_rule: key_counts(self.rules, "rule"),
            would_reject: would_reject(
                &self.would_reject_by_role,
                self.would_reject_answered,
                self.would_reject_clients,
                self.would_reject_rules,
            ),
            rejected_and_flagged: rejected_and_flagged(
                &by_action,
                self.refused_sources,
                self.refused_users,
                self.refused_workflows,
            ),
            unknown_user_agents,
            catalog_snippets,
            not_itemised,
            not_itemised_per_key_max,
            over_time: self.timeline.finish(),
        }
    }

    /// Policy records per action (allow, flag, reject, drop), over all roles.
    fn action_totals(&self) -> [u64; 4] {
        let mut by_action = [0u64; 4];
        for per_role in &self.by_role_action {
            for (total, n) in by_action.iter_mut().zip(per_role) {
                *total += n;
            }
        }
        by_action
    }

    /// Policy records per role, in [`ROLES`] order, over all actions.
    fn role_totals(&self) -> Vec<u64> {
        self.by_role_action.iter().map(|a| a.iter().sum()).collect()
    }

    /// Per bounded table, by its name: the records counted but not under
    /// a listed key, and the most records one key can have among them
    /// (see [`CappedTable`]).
    fn not_itemised(&self) -> (NamedCounts, NamedCounts) {
        let versions = || self.clients.iter().map(|c| &c.value.versions);
        let tables: [(&'static str, u64, u64); 11] = [
            bounds("clients", &self.clients),
            bounds("rules", &self.rules),
            (
                "versions",
                versions().map(CappedTable::not_itemised).sum(),
                versions()
                    .map(CappedTable::not_itemised_per_key_max)
                    .max()
                    .unwrap_or(0),
            ),
            bounds("would_reject_clients", &self.would_reject_clients),
            bounds("would_reject_rules", &self.would_reject_rules),
            bounds("sources", &self.refused_sources),
            bounds("users", &self.refused_users),
            bounds("workflows", &self.refused_workflows),
            bounds("unknown_user_agents", &self.unknown_user_agents),
            bounds("protocol_rules", &self.protocol_rules),
            bounds("protocol_sources", &self.protocol_sources),
        ];
        (
            NamedCounts(tables.iter().map(|&(n, c, _)| (n, c)).collect()),
            NamedCounts(tables.iter().map(|&(n, _, m)| (n, m)).collect()),
        )
    }

    /// Unknown User-Agents by count, with catalog snippets for the top
    /// products: User-Agents are grouped by the rule a snippet would use
    /// (their first product token), and the [`SNIPPET_USER_AGENTS`]
    /// groups with the most records get one, shown on the group's most
    /// frequent User-Agent; every member names it in `catalog_entry`.
    fn unknown_summary(&self) -> (Vec<UnknownUserAgent>, Vec<CatalogSnippet>) {
        let mut entries: Vec<(&str, u64, Timestamp, Timestamp)> = self
            .unknown_user_agents
            .iter()
            .filter_map(|l| Some((l.key.as_str(), l.records, l.value.first?, l.value.last?)))
            .collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        // Group by rule; a group's first member is its most frequent.
        let mut groups: HashMap<MatchRule, usize> = HashMap::new();
        let mut members: Vec<(usize, Covered)> = Vec::new();
        let mut group_of = Vec::with_capacity(entries.len());
        for (i, &(ua, count, first, last)) in entries.iter().enumerate() {
            let next = members.len();
            let g = *groups.entry(match_rule(ua)).or_insert(next);
            if g == next {
                members.push((
                    i,
                    Covered {
                        records: 0,
                        user_agents: 0,
                        first: Millis(first),
                        last: Millis(last),
                    },
                ));
            }
            let c = &mut members[g].1;
            c.records += count;
            c.user_agents += 1;
            c.first = c.first.min(Millis(first));
            c.last = c.last.max(Millis(last));
            group_of.push(g);
        }
        let mut ranked: Vec<usize> = (0..members.len()).collect();
        ranked.sort_by(|&a, &b| {
            members[b]
                .1
                .records
                .cmp(&members[a].1.records)
                .then_with(|| members[a].0.cmp(&members[b].0))
        });
        let mut entry_ids: HashMap<usize, String> = HashMap::new();
        let mut snippets = Vec::new();
        for &g in ranked.iter().take(SNIPPET_USER_AGENTS) {
            let (leader, covered) = members[g];
            let snippet = catalog_snippet(entries[leader].0, covered, |id| {
                self.catalog.client(id).is_some()
                    || snippets.iter().any(|s: &CatalogSnippet| s.client == id)
            });
            entry_ids.insert(g, snippet.id.clone());
            snippets.push(CatalogSnippet {
                client: snippet.id,
                user_agent: entries[leader].0.to_owned(),
                records: covered.records,
                user_agents: covered.user_agents,
                toml: snippet.toml,
            });
        }
        let user_agents = entries
            .iter()
            .zip(group_of)
            .map(|(&(ua, count, first, last), g)| UnknownUserAgent {
                user_agent: ua.to_owned(),
                count,
                first_seen: Millis(first),
                last_seen: Millis(last),
                catalog_entry: entry_ids.get(&g).cloned(),
            })
            .collect();
        (user_agents, snippets)
    }
}

/// A table's name, records not itemised and most records per key among them.
fn bounds<K, V>(name: &'static str, table: &CappedTable<K, V>) -> (&'static str, u64, u64) {
    (name, table.not_itemised(), table.not_itemised_per_key_max())
}

/// A table's keys and records, by records, descending, then key, ascending.
fn ranked<K: Ord>(table: CappedTable<K>) -> Vec<(K, u64)> {
    let mut entries: Vec<(K, u64)> = table
        .into_entries()
        .into_iter()
        .map(|l| (l.key, l.records))
        .collect();
    entries.sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
    entries
}

/// Sorted by count, descending, then key, ascending.
fn key_counts(table: CappedTable<String>, field: &'static str) -> Vec<KeyCount> {
    ranked(table)
        .into_iter()
        .map(|(key, count)| KeyCount { field, key, count })
        .collect()
}

/// Policy records per role, named, in [`ROLES`] order.
fn role_counts(role_totals: &[u64]) -> NamedCounts {
    NamedCounts(
        ROLES
            .iter()
            .zip(role_totals)
            .map(|(r, &c)| (r.as_str(), c))
            .collect(),
    )
}

/// A row per role: its total and its records per action.
fn role_action_rows(by_role_action: &[[u64; 4]; 4], role_totals: &[u64]) -> Vec<RoleActions> {
    ROLES
        .iter()
        .zip(by_role_action)
        .zip(role_totals)
        .map(|((r, actions), &count)| RoleActions {
            role: r.as_str(),
            count,
            by_action: named(ACTIONS, Action::as_str, actions),
        })
        .collect()
}

/// The protocol and capacity answers: per leg, per `rule status`, per source.
fn protocol_answers(
    by_leg: &[u64; 2],
    rules: CappedTable<String>,
    sources: CappedTable<IpAddr>,
) -> ProtocolAnswers {
    ProtocolAnswers {
        total: by_leg.iter().sum(),
        by_leg: named(Leg::ALL, Leg::as_str, by_leg),
        by_rule: protocol_rules(rules),
        sources: address_counts(sources),
    }
}

/// What monitor mode let through that enforce mode would have rejected:
/// per role, client and rule; `answered_on_the_way` of them are protocol
/// records.
fn would_reject(
    by_role: &[u64; 4],
    answered_on_the_way: u64,
    clients: CappedTable<String>,
    rules: CappedTable<String>,
) -> WouldReject {
    WouldReject {
        total: by_role.iter().sum(),
        answered_on_the_way,
        by_role: named(ROLES, SessionRole::as_str, by_role),
        by_client: key_counts(clients, "client"),
        by_rule: key_counts(rules, "rule"),
    }
}

/// The rejected and flagged policy records (counts from `by_action`), with
/// their top sources, users and workflows.
fn rejected_and_flagged(
    by_action: &[u64; 4],
    sources: CappedTable<IpAddr>,
    users: CappedTable<String>,
    workflows: CappedTable<String>,
) -> RejectedAndFlagged {
    RejectedAndFlagged {
        reject: by_action[action_index(Action::Reject)],
        flag: by_action[action_index(Action::Flag)],
        sources: address_counts(sources),
        users: key_counts(users, "user"),
        workflows: key_counts(workflows, "workflow"),
    }
}

/// `rule status` keys as rules with their status, by count descending,
/// then rule and status ascending (no status: a drop, first).
fn protocol_rules(table: CappedTable<String>) -> Vec<ProtocolRule> {
    let mut rules: Vec<ProtocolRule> = ranked(table)
        .into_iter()
        .map(|(key, count)| {
            let (rule, status) = key.rsplit_once(' ').unwrap_or((key.as_str(), "none"));
            ProtocolRule {
                rule: rule.to_owned(),
                status: status.parse().ok(),
                count,
            }
        })
        .collect();
    rules.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.rule.cmp(&b.rule))
            .then_with(|| a.status.cmp(&b.status))
    });
    rules
}

fn address_counts(table: CappedTable<IpAddr>) -> Vec<KeyCount> {
    ranked(table)
        .into_iter()
        .map(|(ip, count)| KeyCount {
            field: "source",
            key: ip.to_string(),
            count,
        })
        .collect()
}

fn clients_summary(table: CappedTable<String, ClientTally>) -> Vec<ClientSummary> {
    let mut clients = table.into_entries();
    clients.sort_by(|a, b| b.records.cmp(&a.records).then_with(|| a.key.cmp(&b.key)));
    clients
        .into_iter()
        .map(|c| {
            let t = c.value;
            let (category, support) = t
                .latest
                .map_or((Category::Unknown, Support::Unknown), |(_, c, s)| (c, s));
            ClientSummary {
                client: c.key,
                count: c.records,
                category: category.as_str(),
                support: support.as_str(),
                by_action: named(ACTIONS, Action::as_str, &t.by_action),
                by_leg: named(Leg::ALL, Leg::as_str, &t.by_leg),
                versions: ranked(t.versions)
                    .into_iter()
                    .map(|(v, count)| VersionCount {
                        version: v.to_string(),
                        count,
                    })
                    .collect(),
                without_version: t.without_version,
                reclassified: t.reclassified,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::config::SHIPPED_CATALOG;
    use crate::observe::DecisionRecord;
    use crate::transport::Transport;

    const LYNC_2013: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
    const LYNC_2013_NEWER: &str = "UCCAPI/15.0.5023.1000 OC/15.0.5023.1000 (Microsoft Lync)";
    const MOBILE: &str = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5)";
    const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";

    static CATALOG: std::sync::LazyLock<Catalog> =
        std::sync::LazyLock::new(|| Catalog::from_toml_str(SHIPPED_CATALOG).unwrap());

    fn catalog() -> &'static Catalog {
        &CATALOG
    }

    /// A record as `run` writes it: client, category and support from the
    /// shipped catalog's verdict on `ua` unless `client` says otherwise.
    fn record(at: &str, ua: Option<&str>, role: SessionRole, action: Action) -> DecisionRecord {
        let catalog = catalog();
        let c = catalog.classify(ua.map(str::as_bytes));
        DecisionRecord {
            ts: at.parse().unwrap(),
            transport: Transport::Udp,
            source: "192.0.2.10:5060".parse().unwrap(),
            local: None,
            leg: Some(Leg::default_for(role)),
            method: if role == SessionRole::AgentRegistration {
                "REGISTER".into()
            } else {
                "INVITE".into()
            },
            call_id: format!("call-{at}"),
            from: "sip:alice@contoso.com".into(),
            to: "sip:helpdesk@contoso.com".into(),
            request_uri: "sip:helpdesk@contoso.com".into(),
            user_agent: ua.map(str::to_owned),
            client: c.client.id.clone(),
            sender_client: c.client.id.clone(),
            category: c.client.category,
            support: c.client.support,
            role,
            kind: Some(DecisionKind::Policy),
            action,
            rule: Cow::Borrowed("caller.unsupported"),
            client_rule: c.rule.to_owned(),
            status: (action == Action::Reject).then_some(403),
            mode: Mode::Enforce,
            would_reject: false,
            generation: 1,
            spiral: false,
            after_challenge: false,
            unregister: false,
            undelivered: false,
        }
    }

    fn summarise(records: &[DecisionRecord], range: TimeRange) -> Summary {
        let catalog = catalog();
        let mut tally = Tally::new(catalog, range);
        add_records(&mut tally, records);
        tally.finish()
    }

    /// Feeds `records` to `tally` as the log lines `run` writes.
    fn add_records(tally: &mut Tally<'_>, records: &[DecisionRecord]) {
        for r in records {
            tally.add_line(serde_json::to_string(r).unwrap().as_bytes());
        }
    }

    /// An allowed record outside any session, from `ua` at `at`.
    fn allowed(at: &str, ua: &str) -> DecisionRecord {
        record(at, Some(ua), SessionRole::None, Action::Allow)
    }

    /// One allowed record per User-Agent in `uas`, a second apart from
    /// 2026-11-27T10:00:00Z (at most ten).
    fn allowed_a_second_apart(uas: &[&str]) -> Vec<DecisionRecord> {
        uas.iter()
            .enumerate()
            .map(|(i, ua)| allowed(&format!("2026-11-27T10:00:0{i}Z"), ua))
            .collect()
    }

    #[test]
    fn counts_by_action_role_mode_support_and_client() {
        let mut monitor = record(
            "2026-11-27T10:05:00Z",
            Some(MOBILE),
            SessionRole::Caller,
            Action::Flag,
        );
        monitor.mode = Mode::Monitor;
        monitor.would_reject = true;
        let records = [
            allowed("2026-11-27T10:00:00Z", LYNC_2013),
            record(
                "2026-11-27T10:01:00Z",
                Some(LYNC_2013),
                SessionRole::Caller,
                Action::Allow,
            ),
            allowed("2026-11-27T10:02:00Z", LYNC_2013_NEWER),
            record(
                "2026-11-27T10:03:00Z",
                Some(MOBILE),
                SessionRole::Caller,
                Action::Reject,
            ),
            record(
                "2026-11-27T10:04:00Z",
                Some("friendly-scanner"),
                SessionRole::None,
                Action::Drop,
            ),
            monitor,
        ];
        let s = summarise(&records, TimeRange::default());
        assert_eq!((s.records, s.malformed_lines), (6, 0));
        assert_eq!(
            s.by_action.0,
            [("allow", 3), ("flag", 1), ("reject", 1), ("drop", 1)]
        );
        assert_eq!(s.by_role.get("caller"), 3);
        assert_eq!(s.by_role.get("none"), 3);
        assert_eq!(s.by_mode.0, [("enforce", 5), ("monitor", 1)]);
        assert_eq!(s.by_support.get("supported"), 3);
        assert_eq!(s.by_support.get("unsupported"), 2);
        assert_eq!(s.by_support.get("scanner"), 1);
        let caller = &s.by_role_and_action[0];
        assert_eq!((caller.role, caller.count), ("caller", 3));
        assert_eq!(
            caller.by_action.0,
            [("allow", 1), ("flag", 1), ("reject", 1), ("drop", 0)]
        );
        let clients: Vec<(&str, u64)> = s
            .by_client
            .iter()
            .map(|c| (c.client.as_str(), c.count))
            .collect();
        assert_eq!(
            clients,
            [("lync-2013", 3), ("lync-mobile", 2), ("sip-scanner", 1)]
        );
        let lync = &s.by_client[0];
        let versions: Vec<(&str, u64)> = lync
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.count))
            .collect();
        assert_eq!(versions, [("15.0.4481.1000", 2), ("15.0.5023.1000", 1)]);
        assert_eq!((lync.support, lync.category), ("supported", "desktop"));
        assert_eq!(s.by_client[2].without_version, 1);
        assert_eq!(s.would_reject.total, 1);
        assert_eq!(s.would_reject.by_role.get("caller"), 1);
        assert_eq!(s.would_reject.by_client[0].key, "lync-mobile");
        assert_eq!(s.over_time.bucket, "minute");
        assert_eq!(s.over_time.buckets.len(), 6);
    }

    /// A protocol record of a message monitor mode flagged as one enforce
    /// would reject (an offer to a mobile agent whose connection closed,
    /// answered 430) counts under would_reject, and as a protocol answer.
    #[test]
    fn a_would_reject_protocol_record_counts_under_would_reject() {
        let mut gone = record(
            "2026-11-27T10:05:00Z",
            Some(MOBILE),
            SessionRole::AgentOffer,
            Action::Reject,
        );
        gone.kind = Some(DecisionKind::Protocol);
        gone.rule = Cow::Borrowed("proxy.flow-failed");
        gone.status = Some(430);
        gone.mode = Mode::Monitor;
        gone.would_reject = true;
        let s = summarise(&[gone], TimeRange::default());
        assert_eq!(s.records, 0, "no policy decision");
        assert_eq!(s.would_reject.total, 1);
        assert_eq!(s.would_reject.answered_on_the_way, 1);
        assert_eq!(s.would_reject.by_role.get("agent-offer"), 1);
        assert_eq!(s.would_reject.by_client[0].key, "lync-mobile");
        // Not said to be relayed, nor among the flagged (trial 34).
        let text = crate::report::plain::render(&s);
        assert!(
            text.contains("  0 records relayed in monitor mode would have been refused")
                && text.contains("  1 more that monitor mode let through were answered on the way")
                && text.contains("  0 rejected, 0 flagged (0 of them would_reject)"),
            "{text}"
        );
    }

    const BARESIP: &str = "baresip v1.0.0 (x86_64/linux)";

    /// A baresip call to a Lync user recorded on both legs (the registrar
    /// relays it back with sipadmit's own Via: a spiral), an agent offer
    /// (the registrar's leg only), and a 400 for a malformed request from
    /// baresip: by default baresip has one allowed call, no reject, and the
    /// 400 is a protocol answer; `--legs both` counts the repeat too.
    #[test]
    fn a_call_counts_once_per_client_and_protocol_answers_apart() {
        let client_leg = record(
            "2026-11-27T10:00:00Z",
            Some(BARESIP),
            SessionRole::None,
            Action::Allow,
        );
        let mut registrar_leg = client_leg.clone();
        registrar_leg.ts = "2026-11-27T10:00:00.020Z".parse().unwrap();
        registrar_leg.source = "192.0.2.1:5060".parse().unwrap();
        registrar_leg.leg = Some(Leg::FromRegistrar);
        registrar_leg.spiral = true;
        let mut offer = record(
            "2026-11-27T10:01:00Z",
            Some(RGS),
            SessionRole::AgentOffer,
            Action::Reject,
        );
        offer.client = "lync-mobile".into();
        offer.source = "192.0.2.1:5060".parse().unwrap();
        offer.leg = Some(Leg::FromRegistrar);
        offer.sender_client = "response-group-service".into();
        let mut malformed = record(
            "2026-11-27T10:02:00Z",
            Some(BARESIP),
            SessionRole::None,
            Action::Reject,
        );
        malformed.rule = Cow::Borrowed("proxy.malformed");
        malformed.kind = Some(DecisionKind::Protocol);
        malformed.status = Some(400);
        let records = [client_leg, registrar_leg, offer, malformed];

        let s = summarise(&records, TimeRange::default());
        assert_eq!((s.records_read, s.records), (4, 2));
        assert_eq!(
            s.by_action.0,
            [("allow", 1), ("flag", 0), ("reject", 1), ("drop", 0)]
        );
        let baresip = s.by_client.iter().find(|c| c.client == "baresip").unwrap();
        assert_eq!(baresip.count, 1);
        assert_eq!(
            baresip.by_action.get("reject"),
            0,
            "the 400 is no policy reject"
        );
        let mobile = s
            .by_client
            .iter()
            .find(|c| c.client == "lync-mobile")
            .unwrap();
        assert_eq!(
            (mobile.count, mobile.by_leg.get("from_registrar")),
            (1, 1),
            "the agent offer counts: only its leg decides it"
        );
        assert_eq!(
            (s.by_leg.from_client.records, s.by_leg.from_client.counted),
            (2, 1)
        );
        assert_eq!(
            (
                s.by_leg.from_registrar.policy,
                s.by_leg.from_registrar.counted
            ),
            (2, 1)
        );
        assert_eq!(s.protocol_answers.total, 1);
        assert_eq!(
            s.protocol_answers.by_rule,
            [super::super::summary::ProtocolRule {
                rule: "proxy.malformed".into(),
                status: Some(400),
                count: 1
            }]
        );
        assert!(s.by_rule.iter().all(|r| r.key != "proxy.malformed"));
        assert_eq!(s.rejected_and_flagged.reject, 1, "the agent offer only");
        let minutes: Vec<(u64, u64)> = s
            .over_time
            .buckets
            .iter()
            .map(|b| (b.total(), b.protocol))
            .collect();
        assert_eq!(minutes, [(1, 0), (1, 0), (0, 1)]);

        let mut tally = Tally::new(catalog(), TimeRange::default()).counting(Legs::Both);
        add_records(&mut tally, &records);
        let both = tally.finish();
        assert_eq!((both.legs, both.records), ("both", 3));
        let baresip = both
            .by_client
            .iter()
            .find(|c| c.client == "baresip")
            .unwrap();
        assert_eq!(
            (baresip.count, baresip.by_leg.0.clone()),
            (2, vec![("from_client", 1), ("from_registrar", 1)])
        );
        assert_eq!(both.protocol_answers.total, 1);
    }

    #[test]
    fn undelivered_records_are_counted_whatever_their_kind() {
        let mut refused = allowed("2026-11-27T10:00:00Z", LYNC_2013);
        refused.action = Action::Reject;
        refused.undelivered = true;
        let mut timed_out = allowed("2026-11-27T10:00:01Z", LYNC_2013);
        timed_out.kind = Some(DecisionKind::Protocol);
        timed_out.rule = Cow::Borrowed("proxy.request-timeout");
        timed_out.status = Some(408);
        timed_out.undelivered = true;
        let delivered = allowed("2026-11-27T10:00:02Z", LYNC_2013);
        let s = summarise(&[refused, timed_out, delivered], TimeRange::default());
        assert_eq!((s.records_read, s.undelivered), (3, 2));
        let text = crate::report::plain::render(&s);
        assert!(
            text.contains(
                "Undelivered:  2 records whose answer or relayed message never reached its peer (its connection had closed, or its write queue was full)"
            ),
            "{text}"
        );
        let html = crate::report::html::render(&s);
        assert!(html.contains("<b>2</b>undelivered"), "{html}");
        // None undelivered: no line, no card.
        let s = summarise(
            &[allowed("2026-11-27T10:00:00Z", LYNC_2013)],
            TimeRange::default(),
        );
        assert!(!crate::report::plain::render(&s).contains("Undelivered"));
        assert!(!crate::report::html::render(&s).contains("undelivered"));
    }

    #[test]
    fn de_registrations_are_counted_apart() {
        let mut gone = allowed("2026-11-27T10:00:01Z", LYNC_2013);
        gone.method = "REGISTER".into();
        gone.unregister = true;
        let mut here = allowed("2026-11-27T10:00:00Z", LYNC_2013);
        here.method = "REGISTER".into();
        let s = summarise(&[here, gone], TimeRange::default());
        assert_eq!((s.registers.register, s.registers.unregister), (1, 1));
    }

    #[test]
    fn ties_are_sorted_by_key() {
        let mut records =
            allowed_a_second_apart(&["Zeta/1", "Alpha/1", "Mid/1", "Alpha/1", "Zeta/1", "Mid/1"]);
        records.push(allowed("2026-11-27T10:00:09Z", "Last/1"));
        let s = summarise(&records, TimeRange::default());
        let uas: Vec<(&str, u64)> = s
            .unknown_user_agents
            .iter()
            .map(|u| (u.user_agent.as_str(), u.count))
            .collect();
        assert_eq!(
            uas,
            [("Alpha/1", 2), ("Mid/1", 2), ("Zeta/1", 2), ("Last/1", 1)]
        );
        let zeta = &s.unknown_user_agents[2];
        assert_eq!(zeta.first_seen.to_string(), "2026-11-27T10:00:00.000Z");
        assert_eq!(zeta.last_seen.to_string(), "2026-11-27T10:00:04.000Z");
    }

    #[test]
    fn first_and_last_seen_do_not_depend_on_the_reading_order() {
        let records = [
            allowed("2026-11-27T12:00:00Z", "Acme/1"),
            allowed("2026-11-27T09:00:00Z", "Acme/1"),
            allowed("2026-11-27T11:00:00Z", "Acme/1"),
        ];
        let s = summarise(&records, TimeRange::default());
        let u = &s.unknown_user_agents[0];
        assert_eq!(u.first_seen.to_string(), "2026-11-27T09:00:00.000Z");
        assert_eq!(u.last_seen.to_string(), "2026-11-27T12:00:00.000Z");
        assert_eq!(
            s.first_record.unwrap().to_string(),
            "2026-11-27T09:00:00.000Z"
        );
    }

    /// An agent offer names the agent's client but carries the Response
    /// Group application's User-Agent: neither a version nor an unknown UA.
    #[test]
    fn agent_offers_add_no_version_and_no_unknown_user_agent() {
        let mut offer = record(
            "2026-11-27T10:00:00Z",
            Some(RGS),
            SessionRole::AgentOffer,
            Action::Reject,
        );
        offer.client = "unknown".into();
        let mut mobile_offer = record(
            "2026-11-27T10:00:01Z",
            Some(RGS),
            SessionRole::AgentOffer,
            Action::Reject,
        );
        mobile_offer.client = "lync-mobile".into();
        let s = summarise(&[offer, mobile_offer], TimeRange::default());
        assert!(s.unknown_user_agents.is_empty());
        for c in &s.by_client {
            assert!(c.versions.is_empty(), "{c:?}");
            assert_eq!((c.without_version, c.reclassified), (1, 0), "{c:?}");
        }
    }

    #[test]
    fn a_client_the_catalog_no_longer_gives_the_user_agent_is_reclassified() {
        let mut old = allowed("2026-11-27T10:00:00Z", LYNC_2013);
        old.client = "lync-2013-beta".into();
        let s = summarise(&[old], TimeRange::default());
        assert_eq!(s.by_client[0].reclassified, 1);
        assert!(s.by_client[0].versions.is_empty());
    }

    #[test]
    fn rejected_and_flagged_by_source_ip_user_and_workflow() {
        let mut records = Vec::new();
        for (i, (ip, port, from, role, action)) in [
            (
                "192.0.2.1",
                5060,
                "sip:a@x",
                SessionRole::Caller,
                Action::Reject,
            ),
            (
                "192.0.2.1",
                40000,
                "sip:a@x",
                SessionRole::Caller,
                Action::Reject,
            ),
            (
                "2001:db8::1",
                5060,
                "sip:b@x",
                SessionRole::AgentRegistration,
                Action::Flag,
            ),
            (
                "192.0.2.9",
                5060,
                "sip:c@x",
                SessionRole::Caller,
                Action::Allow,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record(
                &format!("2026-11-27T10:00:0{i}Z"),
                Some(MOBILE),
                role,
                action,
            );
            r.source = std::net::SocketAddr::new(ip.parse().unwrap(), port);
            r.from = from.into();
            r.request_uri = format!("sip:workflow{i}@x");
            records.push(r);
        }
        let s = summarise(&records, TimeRange::default());
        let r = &s.rejected_and_flagged;
        assert_eq!((r.reject, r.flag), (2, 1));
        let sources: Vec<(&str, u64)> = r
            .sources
            .iter()
            .map(|k| (k.key.as_str(), k.count))
            .collect();
        assert_eq!(sources, [("192.0.2.1", 2), ("2001:db8::1", 1)]);
        let users: Vec<(&str, u64)> = r.users.iter().map(|k| (k.key.as_str(), k.count)).collect();
        assert_eq!(users, [("sip:a@x", 2), ("sip:b@x", 1)]);
        // Callers only: the agent registration's Request-URI is no workflow.
        let workflows: Vec<&str> = r.workflows.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(workflows, ["sip:workflow0@x", "sip:workflow1@x"]);
    }

    #[test]
    fn the_time_range_and_malformed_lines_are_counted_apart() {
        let records = [
            allowed("2026-11-27T09:59:59.999Z", LYNC_2013),
            allowed("2026-11-27T10:00:00Z", LYNC_2013),
            allowed("2026-11-27T10:59:59.999Z", LYNC_2013),
            allowed("2026-11-27T11:00:00Z", LYNC_2013),
        ];
        let range = TimeRange::new(
            Some("2026-11-27T10:00:00Z".parse().unwrap()),
            Some("2026-11-27T11:00:00Z".parse().unwrap()),
        )
        .unwrap();
        let catalog = catalog();
        let mut tally = Tally::new(catalog, range);
        add_records(&mut tally, &records);
        tally.add_line(b"{\"ts\":\"2026-11-27T10:30:00Z\"}");
        tally.add_line(b"garbage");
        let s = tally.finish();
        assert_eq!(
            (s.records, s.outside_time_range, s.malformed_lines),
            (2, 2, 2)
        );
    }

    #[test]
    fn tables_past_their_bound_count_the_rest_as_not_itemised() {
        let catalog = catalog();
        let mut tally = Tally::new(catalog, TimeRange::default());
        let n = super::super::capped::MAX_TRACKED_KEYS + 5;
        for i in 0..n {
            let r = record(
                "2026-11-27T10:00:00Z",
                Some(&format!("Flood/{i}")),
                SessionRole::None,
                Action::Allow,
            );
            tally.add_line(serde_json::to_string(&r).unwrap().as_bytes());
        }
        let s = tally.finish();
        assert_eq!(s.records, n as u64);
        assert_eq!(
            s.unknown_user_agents.len(),
            super::super::capped::MAX_TRACKED_KEYS
        );
        // Five one-off User-Agents dropped (each for the next).
        assert_eq!(s.not_itemised.get("unknown_user_agents"), 5);
        assert_eq!(s.not_itemised_per_key_max.get("unknown_user_agents"), 1);
        assert_eq!(s.not_itemised_per_key_max.get("clients"), 0);
        assert_eq!(s.by_client[0].count, n as u64);
    }

    /// Trial 25's case: 10,000 one-off User-Agents (a scan), then the real
    /// unknown client 50,000 times. A table that kept the first keys seen
    /// listed only the scan, and proposed catalog entries for it.
    #[test]
    fn the_most_frequent_unknown_user_agent_is_listed_after_the_table_filled() {
        let catalog = catalog();
        let mut tally = Tally::new(catalog, TimeRange::default());
        let junk = super::super::capped::MAX_TRACKED_KEYS;
        let line = |ua: &str| {
            let r = record(
                "2026-12-07T00:00:00Z",
                Some(ua),
                SessionRole::None,
                Action::Allow,
            );
            serde_json::to_string(&r).unwrap()
        };
        for i in 0..junk {
            tally.add_line(line(&format!("Junk{i}/1.0")).as_bytes());
        }
        let top = line("RealTopPhone/3.1");
        for _ in 0..50_000 {
            tally.add_line(top.as_bytes());
        }
        let s = tally.finish();
        let top = &s.unknown_user_agents[0];
        assert_eq!(
            (top.user_agent.as_str(), top.count),
            ("RealTopPhone/3.1", 50_000)
        );
        assert_eq!(top.catalog_entry.as_deref(), Some("realtopphone"));
        assert_eq!(s.catalog_snippets[0].user_agent, "RealTopPhone/3.1");
        assert_eq!(s.catalog_snippets[0].records, 50_000);
        assert_eq!(s.unknown_user_agents.len(), junk);
        assert_eq!(s.not_itemised.get("unknown_user_agents"), 1);
        assert_eq!(s.not_itemised_per_key_max.get("unknown_user_agents"), 1);
    }

    #[test]
    fn snippets_for_the_top_unknown_user_agents_one_per_product() {
        let records = allowed_a_second_apart(&[
            "Acme/1.0", "Acme/1.0", "Other/3", "Other/3", "Other/3", "ACME/2.0", "ACME/2.0",
        ]);
        let s = summarise(&records, TimeRange::default());
        let u: Vec<(&str, Option<&str>)> = s
            .unknown_user_agents
            .iter()
            .map(|u| (u.user_agent.as_str(), u.catalog_entry.as_deref()))
            .collect();
        assert_eq!(
            u,
            [
                ("Other/3", Some("other")),
                ("ACME/2.0", Some("acme")),
                ("Acme/1.0", Some("acme"))
            ]
        );
        // Ranked by the records of the whole product: Acme has 4, Other 3.
        let snippets: Vec<(&str, &str, u64, u64)> = s
            .catalog_snippets
            .iter()
            .map(|c| {
                (
                    c.client.as_str(),
                    c.user_agent.as_str(),
                    c.records,
                    c.user_agents,
                )
            })
            .collect();
        assert_eq!(
            snippets,
            [("acme", "ACME/2.0", 4, 2), ("other", "Other/3", 3, 1)]
        );
        let all: Vec<&str> = s.catalog_snippets.iter().map(|c| c.toml.as_str()).collect();
        let catalog = Catalog::from_toml_str(&all.join("\n")).unwrap();
        assert_eq!(catalog.classify(Some(b"Acme/1.0")).client.id, "acme");
        assert_eq!(catalog.classify(Some(b"Other/3")).client.id, "other");
    }
}
