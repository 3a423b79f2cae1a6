//! The client catalog: TOML (`config/clients.toml`) → serde → validate →
//! compiled matchers.
//!
//! Loading collects every problem with its key path before failing.
//! Classifying borrows from the compiled catalog and allocates nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::{meta, util::syntax, Input, PatternID};
use serde::Deserialize;

use super::memo::{Found, Memo, Memoized, MAX_VALUE_BYTES};
use super::tokenize::{tokenize, trim_lws, Item};
use super::version::{CompareOp, Version};
use super::{
    Category, Classification, ClientProduct, Role, Support, CLIENT_MISSING, CLIENT_UNKNOWN,
    RULE_MISSING, RULE_UNKNOWN,
};
use crate::problem::Problem;
use crate::sip::fields::contains_ignore_case;

/// At most this many products and comments of one User-Agent are looked at
/// by token and comment rules (regex rules always see the whole value).
/// Real User-Agents have fewer than 10; the cap keeps classification on the
/// stack.
pub const MAX_UA_ITEMS: usize = 32;

/// Compiled regexes larger than this are refused at load (bytes).
const REGEX_SIZE_LIMIT_BYTES: usize = 1 << 20;

/// Prefix reserved for the ids of built-in rules.
const BUILTIN_RULE_PREFIX: &str = "builtin:";

/// Name of the regex group whose text a regex rule reports as the version.
const VERSION_GROUP: &str = "version";

/// Highest group index (groups count from 1, by their opening parenthesis)
/// the `version` group of a regex may have: the capture slots of one search
/// then fit on the stack.
const MAX_VERSION_GROUP_INDEX: usize = 15;

// === errors ===

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{}: cannot read client catalog", path.display())]
    Io {
        /// The catalog file.
        path: PathBuf,
        /// The underlying error (the source, not repeated in this message).
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, or its top level has an unknown key.
    #[error("{}line {line}, column {column}: {message}", origin(path.as_deref()))]
    Parse {
        /// The catalog file, if loaded from a file.
        path: Option<PathBuf>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML parser or serde reported (names the key).
        message: String,
    },
    /// The TOML is well-formed but its content is not a valid catalog.
    #[error("{}invalid client catalog ({} problem(s)):{}", origin(path.as_deref()), problems.len(), ProblemList(problems))]
    Invalid {
        /// The catalog file, if loaded from a file.
        path: Option<PathBuf>,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl CatalogError {
    /// The problems of an [`CatalogError::Invalid`] error (empty otherwise).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    fn with_path(self, file: &Path) -> Self {
        match self {
            Self::Parse {
                line,
                column,
                message,
                ..
            } => Self::Parse {
                path: Some(file.to_owned()),
                line,
                column,
                message,
            },
            Self::Invalid { problems, .. } => Self::Invalid {
                path: Some(file.to_owned()),
                problems,
            },
            io @ Self::Io { .. } => io,
        }
    }
}

/// `"<path>: "` or nothing.
fn origin(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

// === raw (serde) form ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    name: String,
    category: String,
    support: String,
    #[serde(default)]
    roles: Vec<String>,
    version_token: Option<String>,
    #[serde(rename = "match", default)]
    rules: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Option<String>,
    token: Option<String>,
    op: Option<String>,
    version: Option<toml::Value>,
    comment: Option<String>,
    regex: Option<String>,
}

/// Expected TOML type of a known key.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    StrArray,
    TableArray,
    /// A string, or an integer major version.
    Version,
}

const CLIENT_KEYS: &[(&str, Kind)] = &[
    ("id", Kind::Str),
    ("name", Kind::Str),
    ("category", Kind::Str),
    ("support", Kind::Str),
    ("roles", Kind::StrArray),
    ("version_token", Kind::Str),
    ("match", Kind::TableArray),
];

const RULE_KEYS: &[(&str, Kind)] = &[
    ("id", Kind::Str),
    ("token", Kind::Str),
    ("op", Kind::Str),
    ("version", Kind::Version),
    ("comment", Kind::Str),
    ("regex", Kind::Str),
];

// === compiled form ===

/// A compiled product-token condition.
#[derive(Debug)]
struct TokenCond {
    /// Lowercase product name (without the trailing `*` of a prefix rule).
    name: Box<[u8]>,
    /// [`name_bit`] of `name`; 0 for prefix rules (never skipped).
    bit: u64,
    /// `true` for `Name*`: any product whose name starts with `name`.
    prefix: bool,
    /// Optional version comparison: `token-version <op> version`.
    compare: Option<(CompareOp, Version)>,
}

impl TokenCond {
    fn name_matches(&self, name: &[u8]) -> bool {
        if self.prefix {
            name.len() >= self.name.len()
                && name[..self.name.len()].eq_ignore_ascii_case(&self.name)
        } else {
            name.eq_ignore_ascii_case(&self.name)
        }
    }

    /// Scans every product token; returns `Some(version of the matching
    /// token)` for the first token that satisfies the condition.
    fn find(&self, items: &[Item<'_>], memo: &mut VersionMemo) -> Option<Option<Version>> {
        items.iter().enumerate().find_map(|(index, item)| {
            let Item::Product { name, version } = *item else {
                return None;
            };
            if !self.name_matches(name) {
                return None;
            }
            let parsed = memo.get(index, version);
            match self.compare {
                None => Some(parsed),
                Some((op, wanted)) => match parsed {
                    Some(actual) if op.holds(actual, wanted) => Some(parsed),
                    _ => None,
                },
            }
        })
    }
}

/// The `(?P<version>...)` group of a regex rule, compiled for capture
/// searches that keep their slots on the stack.
#[derive(Debug)]
struct VersionCapture {
    /// The rule's pattern, same syntax options as the rule's [`Regex`].
    regex: meta::Regex,
    /// Index of the `version` group (1 to [`MAX_VERSION_GROUP_INDEX`]).
    group: usize,
}

impl VersionCapture {
    /// `None` if the pattern does not match `value`; else `Some(version)`,
    /// the group's text parsed like a token version ([`Version::parse`]),
    /// `None` when the group took no part in the match or holds no version.
    fn search(&self, value: &[u8]) -> Option<Option<Version>> {
        let mut slots: [Option<NonMaxUsize>; 2 * (MAX_VERSION_GROUP_INDEX + 1)] =
            [None; 2 * (MAX_VERSION_GROUP_INDEX + 1)];
        let slots = &mut slots[..2 * (self.group + 1)];
        self.regex.search_slots(&Input::new(value), slots)?;
        let version = match (slots[2 * self.group], slots[2 * self.group + 1]) {
            (Some(start), Some(end)) => value.get(start.get()..end.get()).and_then(Version::parse),
            _ => None,
        };
        Some(version)
    }
}

/// One compiled match rule.
#[derive(Debug)]
struct Rule {
    id: String,
    client: usize,
    token: Option<TokenCond>,
    /// Lowercase comment substring.
    comment: Option<Box<[u8]>>,
    regex: Option<Regex>,
    /// Lowercase literal every match of `regex` starts with (the pattern is
    /// `^literal...`): a value that does not start with it is skipped without
    /// running the regex. See [`anchored_prefix`].
    regex_prefix: Option<Box<[u8]>>,
    /// Set when `regex` has a group named `version` (boxed: most rules have
    /// none, and a smaller `Rule` keeps the rule scan compact).
    version_capture: Option<Box<VersionCapture>>,
}

impl Rule {
    /// `true` if the rule's regex is anchored on a literal the value does
    /// not start with (ASCII case-insensitively): it cannot match.
    fn prefix_rules_out(&self, value: &[u8]) -> bool {
        self.regex_prefix.as_deref().is_some_and(|prefix| {
            value
                .get(..prefix.len())
                .is_none_or(|start| !start.eq_ignore_ascii_case(prefix))
        })
    }

    /// `Some(version of the matched token, or of the regex's `version`
    /// group)` if the rule matches. `names` is the [`ItemBuf::names`] mask of
    /// the value.
    fn eval(
        &self,
        value: &[u8],
        items: &[Item<'_>],
        names: u64,
        memo: &mut VersionMemo,
    ) -> Option<Option<Version>> {
        // A token rule whose name is certainly absent is skipped cheaply.
        if let Some(token) = &self.token {
            if token.bit != 0 && names & token.bit == 0 {
                return None;
            }
        }
        if let Some(regex) = &self.regex {
            // A regex rule has no token or comment condition (checked at load).
            // The capture search is slower: run it only once the rule matched.
            if !regex.is_match(value) {
                return None;
            }
            return match &self.version_capture {
                Some(capture) => capture.search(value),
                None => Some(None),
            };
        }
        if let Some(needle) = &self.comment {
            let found = items.iter().any(|item| match item {
                Item::Comment(text) => contains_ignore_case(text, needle),
                Item::Product { .. } => false,
            });
            if !found {
                return None;
            }
        }
        match &self.token {
            Some(token) => token.find(items, memo),
            None => Some(None),
        }
    }
}

/// The items of one User-Agent, on the stack.
struct ItemBuf<'a> {
    items: [Item<'a>; MAX_UA_ITEMS],
    len: usize,
    /// OR of [`name_bit`] over the product names: a rule whose name's bit is
    /// missing cannot match.
    names: u64,
}

/// One bit (of 64) chosen by an FNV-1a hash of a lowercased product name.
fn name_bit(name: &[u8]) -> u64 {
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    });
    1 << (hash & 63)
}

impl<'a> ItemBuf<'a> {
    fn new(value: &'a [u8]) -> Self {
        let mut buf = Self {
            items: [Item::Comment(&[]); MAX_UA_ITEMS],
            len: 0,
            names: 0,
        };
        for item in tokenize(value).take(MAX_UA_ITEMS) {
            if let Item::Product { name, .. } = item {
                buf.names |= name_bit(name);
            }
            buf.items[buf.len] = item;
            buf.len += 1;
        }
        buf
    }

    fn as_slice(&self) -> &[Item<'a>] {
        &self.items[..self.len]
    }
}

// === impl Catalog ===

/// The compiled client catalog.
#[derive(Debug)]
pub struct Catalog {
    clients: Vec<ClientProduct>,
    /// Per client: lowercase `version_token`.
    version_tokens: Vec<Option<Box<[u8]>>>,
    /// Every rule of every client, in file order.
    rules: Vec<Rule>,
    /// The regexes of `rules` that have no `regex_prefix`, in one set: when
    /// none matches the value, those rules are skipped without running them
    /// one by one.
    unprefixed_regexes: RegexSet,
    missing: ClientProduct,
    unknown: ClientProduct,
    /// A hash of the TOML text it was compiled from: tells a reload whether
    /// the catalog changed.
    digest: u64,
    /// Recent values and what they classified as.
    memo: Memo,
}

impl Catalog {
    /// A hash of the TOML text the catalog was compiled from (equal texts,
    /// equal digests; within one build of sipadmit).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Parses, validates and compiles a catalog from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, CatalogError> {
        // The file holds only the `[[clients]]` array. It is read as a
        // table, each entry checked on its own, so that every problem is
        // told with its key path, an unknown key beside the rest.
        let table: std::collections::BTreeMap<toml::Spanned<String>, toml::Value> =
            toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        let mut builder = Builder::default();
        for (key, value) in table {
            let line = line_of(text, key.span().start);
            match (key.get_ref().as_str(), value) {
                ("clients", toml::Value::Array(clients)) => {
                    for (i, value) in clients.into_iter().enumerate() {
                        builder.client(i, value);
                    }
                }
                ("clients", other) => builder.problem(
                    "clients",
                    format!(
                        "line {line}: expected an array of tables ([[clients]]), found {}",
                        other.type_str()
                    ),
                ),
                (key, _) => builder.problem(
                    key,
                    format!("line {line}: unknown field `{key}`, expected `clients`"),
                ),
            }
        }
        let mut catalog = builder.finish()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(text, &mut hasher);
        catalog.digest = std::hash::Hasher::finish(&hasher);
        Ok(catalog)
    }

    /// Reads and compiles a catalog file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.with_path(path))
    }

    /// Classifies a User-Agent (or Server) header value.
    ///
    /// `None` (header absent) or an empty / whitespace-only value gives the
    /// built-in client `missing` (rule `builtin:missing`); a value that no
    /// rule matches gives `unknown` (rule `builtin:unknown`). Otherwise the
    /// first matching rule in file order wins. Allocates nothing. A value
    /// seen recently is answered from a memo (the same answer: the catalog
    /// never changes once compiled).
    pub fn classify(&self, user_agent: Option<&[u8]>) -> Classification<'_> {
        let value = user_agent.map(trim_lws).unwrap_or_default();
        if value.is_empty() {
            return Classification {
                client: &self.missing,
                version: None,
                rule: RULE_MISSING,
            };
        }
        if value.len() > MAX_VALUE_BYTES {
            return self.classification(self.run_rules(value));
        }
        let slot = self.memo.slot(value);
        let memoized = self.memo.get(slot, value).unwrap_or_else(|| {
            let memoized = self.run_rules(value);
            self.memo.put(slot, value, memoized);
            memoized
        });
        self.classification(memoized)
    }

    /// The classification the rules' answer names.
    pub(super) fn classification(&self, memoized: Memoized) -> Classification<'_> {
        match memoized.found {
            Found::Rule(i) => {
                let rule = &self.rules[i];
                Classification {
                    client: &self.clients[rule.client],
                    version: memoized.version,
                    rule: &rule.id,
                }
            }
            Found::Unknown => Classification {
                client: &self.unknown,
                version: None,
                rule: RULE_UNKNOWN,
            },
        }
    }

    /// Run the rules over a non-empty `value`: the first that matches, in
    /// file order, and the version read.
    pub(super) fn run_rules(&self, value: &[u8]) -> Memoized {
        let buf = ItemBuf::new(value);
        let items = buf.as_slice();
        // Computed at the first regex rule reached, at most once.
        let mut regex_possible = None;
        let mut memo = VersionMemo::new();
        for (i, rule) in self.rules.iter().enumerate() {
            // A prefixed regex rule is filtered by its prefix, the others by
            // the set of their regexes.
            if rule.regex.is_some()
                && (rule.prefix_rules_out(value)
                    || (rule.regex_prefix.is_none()
                        && !*regex_possible
                            .get_or_insert_with(|| self.unprefixed_regexes.is_match(value))))
            {
                continue;
            }
            if let Some(matched_version) = rule.eval(value, items, buf.names, &mut memo) {
                let version = self.version_tokens[rule.client]
                    .as_deref()
                    .and_then(|name| token_version(items, name, &mut memo))
                    .or(matched_version);
                return Memoized {
                    found: Found::Rule(i),
                    version,
                };
            }
        }
        Memoized {
            found: Found::Unknown,
            version: None,
        }
    }

    /// Looks a client up by id (built-ins `missing` and `unknown` included).
    pub fn client(&self, id: &str) -> Option<&ClientProduct> {
        self.clients().find(|c| c.id == id)
    }

    /// The client products of the catalog file, in file order (the
    /// built-ins `missing` and `unknown` excluded): what the README counts.
    pub fn products(&self) -> impl Iterator<Item = &ClientProduct> {
        self.clients.iter()
    }

    /// Every client in file order, then the built-ins `missing` and `unknown`.
    pub fn clients(&self) -> impl Iterator<Item = &ClientProduct> {
        self.clients.iter().chain([&self.missing, &self.unknown])
    }

    /// Every rule id with its client, in evaluation order (built-ins excluded).
    pub fn rules(&self) -> impl Iterator<Item = (&str, &ClientProduct)> {
        self.rules
            .iter()
            .map(|rule| (rule.id.as_str(), &self.clients[rule.client]))
    }
}

/// Version of the first product named `name` (lowercase) that has one.
fn token_version(items: &[Item<'_>], name: &[u8], memo: &mut VersionMemo) -> Option<Version> {
    items
        .iter()
        .enumerate()
        .find_map(|(index, item)| match *item {
            Item::Product {
                name: n,
                version: Some(v),
            } if n.eq_ignore_ascii_case(name) => memo.get(index, Some(v)),
            _ => None,
        })
}

/// Product tokens whose parsed versions are remembered during one classification.
const VERSION_MEMO_ITEMS: usize = 8;

/// Versions of the first product tokens, parsed at most once while the
/// rules run (several rules look at the same `OC/` token).
struct VersionMemo {
    versions: [Option<Version>; VERSION_MEMO_ITEMS],
    parsed: u8,
}

impl VersionMemo {
    fn new() -> Self {
        Self {
            versions: [None; VERSION_MEMO_ITEMS],
            parsed: 0,
        }
    }

    fn get(&mut self, index: usize, text: Option<&[u8]>) -> Option<Version> {
        if index >= VERSION_MEMO_ITEMS {
            return text.and_then(Version::parse);
        }
        let bit = 1 << index;
        if self.parsed & bit == 0 {
            self.versions[index] = text.and_then(Version::parse);
            self.parsed |= bit;
        }
        self.versions[index]
    }
}

fn builtin(id: &str, name: &str) -> ClientProduct {
    ClientProduct {
        id: id.to_owned(),
        name: name.to_owned(),
        category: Category::Unknown,
        support: Support::Unknown,
        roles: Vec::new(),
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// Maps a TOML/serde error to line and column.
fn parse_error(text: &str, error: &toml::de::Error) -> CatalogError {
    let offset = error.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = line_of(text, offset);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    CatalogError::Parse {
        path: None,
        line,
        column,
        message: error.message().trim().to_owned(),
    }
}

/// Key path for a serde error inside the entry at `base`: names the field
/// when serde does (unknown / missing / duplicate field).
fn serde_problem(base: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim().to_owned();
    let field = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let key = match field {
        Some(field) => format!("{base}.{field}"),
        None => base.to_owned(),
    };
    Problem { key, message }
}

// === validation and compilation ===

#[derive(Default)]
struct Builder {
    clients: Vec<ClientProduct>,
    version_tokens: Vec<Option<Box<[u8]>>>,
    rules: Vec<Rule>,
    problems: Vec<Problem>,
    /// Client id → key of its first definition.
    client_ids: std::collections::HashMap<String, String>,
    /// Rule id → key of its first definition.
    rule_ids: std::collections::HashMap<String, String>,
}

impl Builder {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn client(&mut self, index: usize, value: toml::Value) {
        let base = format!("clients[{index}]");
        if !self.check_types(&base, &value, CLIENT_KEYS) {
            return;
        }
        let raw: RawClient = match value.try_into() {
            Ok(raw) => raw,
            Err(e) => return self.problems.push(serde_problem(&base, &e)),
        };

        self.check_id(&base, &raw.id);
        self.check_name(&base, &raw.name);
        let category = match parse_category(&raw.category) {
            Ok(c) => c,
            Err(message) => {
                self.problem(format!("{base}.category"), message);
                Category::Unknown
            }
        };
        let support = match parse_support(&raw.support) {
            Ok(s) => s,
            Err(message) => {
                self.problem(format!("{base}.support"), message);
                Support::Unknown
            }
        };
        let mut roles = Vec::with_capacity(raw.roles.len());
        for (r, name) in raw.roles.iter().enumerate() {
            match parse_role(name) {
                Ok(role) if roles.contains(&role) => {
                    self.problem(
                        format!("{base}.roles[{r}]"),
                        format!("duplicate role {name:?}"),
                    );
                }
                Ok(role) => roles.push(role),
                Err(message) => self.problem(format!("{base}.roles[{r}]"), message),
            }
        }
        let version_token =
            raw.version_token
                .as_deref()
                .and_then(|token| match check_token_name(token, false) {
                    Ok(()) => Some(token.to_ascii_lowercase().into_bytes().into_boxed_slice()),
                    Err(message) => {
                        self.problem(format!("{base}.version_token"), message);
                        None
                    }
                });
        if raw.rules.is_empty() {
            self.problem(
                format!("{base}.match"),
                "at least one [[clients.match]] rule is required",
            );
        }

        let client = self.clients.len();
        for (r, value) in raw.rules.into_iter().enumerate() {
            self.rule(&base, &raw.id, client, r, value);
        }
        self.clients.push(ClientProduct {
            id: raw.id,
            name: raw.name,
            category,
            support,
            roles,
        });
        self.version_tokens.push(version_token);
    }

    /// Checks the value types of the known keys of a table, so that a type
    /// error names its key (serde's message does not). Unknown keys are
    /// left to serde. Returns `false` if there was a problem.
    fn check_types(&mut self, base: &str, value: &toml::Value, spec: &[(&str, Kind)]) -> bool {
        let Some(table) = value.as_table() else {
            let found = value.type_str();
            self.problem(base, format!("expected a table, found {found}"));
            return false;
        };
        let before = self.problems.len();
        for (key, kind) in spec {
            let Some(value) = table.get(*key) else {
                continue;
            };
            let ok = match kind {
                Kind::Str => value.is_str(),
                Kind::StrArray => value
                    .as_array()
                    .is_some_and(|a| a.iter().all(toml::Value::is_str)),
                Kind::TableArray => value
                    .as_array()
                    .is_some_and(|a| a.iter().all(toml::Value::is_table)),
                Kind::Version => value.is_str() || value.is_integer(),
            };
            if !ok {
                let expected = match kind {
                    Kind::Str => "a string",
                    Kind::StrArray => "an array of strings",
                    Kind::TableArray => "an array of tables ([[clients.match]])",
                    Kind::Version => "a version string such as \"4.0.7577\"",
                };
                let found = value.type_str();
                self.problem(
                    format!("{base}.{key}"),
                    format!("expected {expected}, found {found}"),
                );
            }
        }
        self.problems.len() == before
    }

    /// A client's display name: one line of text, not empty. It goes into
    /// the Warning of a reject, where a line break would start a header of
    /// its own.
    fn check_name(&mut self, base: &str, name: &str) {
        let key = format!("{base}.name");
        if name.trim().is_empty() {
            self.problem(key, "must not be empty");
        } else if let Some(c) = name.chars().find(|c| c.is_control()) {
            let message = format!(
                "{name:?} holds the control character {c:?}: names are shown in the \
                 Warning header of rejects and in reports, one line of text"
            );
            self.problem(key, message);
        }
    }

    fn check_id(&mut self, base: &str, id: &str) {
        let key = format!("{base}.id");
        if id.is_empty() {
            return self.problem(key, "must not be empty");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return self.problem(
                key,
                format!("invalid id {id:?}: use letters, digits, '-', '_' and '.'"),
            );
        }
        if id == CLIENT_MISSING || id == CLIENT_UNKNOWN {
            return self.problem(
                key,
                format!("id {id:?} is reserved for the built-in client"),
            );
        }
        if let Some(first) = self.client_ids.get(id) {
            let message = format!("duplicate id {id:?} (first defined at {first})");
            return self.problem(key, message);
        }
        self.client_ids.insert(id.to_owned(), base.to_owned());
    }

    /// Checks and compiles rule `r` of the client at `client_base`: its id,
    /// version comparison, token, comment and regex, then how they combine.
    /// The rule is kept only when none of this found a problem.
    fn rule(
        &mut self,
        client_base: &str,
        client_id: &str,
        client: usize,
        r: usize,
        value: toml::Value,
    ) {
        let base = format!("{client_base}.match[{r}]");
        if !self.check_types(&base, &value, RULE_KEYS) {
            return;
        }
        let raw: RawRule = match value.try_into() {
            Ok(raw) => raw,
            Err(e) => return self.problems.push(serde_problem(&base, &e)),
        };
        let before = self.problems.len();

        let id = self.rule_id(&base, client_id, r, raw.id.clone());
        let compare = self.compare(&base, &raw);
        let token = self.rule_token(&base, raw.token.as_deref(), compare);
        let comment = self.rule_comment(&base, raw.comment.as_deref());
        let regex = self.rule_regex(&base, raw.regex.as_deref());
        let version_capture = self.rule_version_capture(&base, regex.as_ref());
        self.check_rule_conditions(&base, &raw);

        if self.problems.len() == before {
            let regex_prefix = raw.regex.as_deref().and_then(anchored_prefix);
            self.rules.push(Rule {
                id,
                client,
                token,
                comment,
                regex,
                regex_prefix,
                version_capture,
            });
        }
    }

    /// The rule's id: the one given (checked: not empty, no whitespace, not
    /// built-in) or `client#n`; either must be unused so far.
    fn rule_id(&mut self, base: &str, client_id: &str, r: usize, given: Option<String>) -> String {
        let id = match given {
            Some(id) => {
                if id.is_empty()
                    || id
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    self.problem(
                        format!("{base}.id"),
                        "must be non-empty, without whitespace",
                    );
                } else if id.starts_with(BUILTIN_RULE_PREFIX) {
                    self.problem(
                        format!("{base}.id"),
                        format!("ids starting with {BUILTIN_RULE_PREFIX:?} are reserved"),
                    );
                }
                id
            }
            None => format!("{client_id}#{}", r + 1),
        };
        if let Some(first) = self.rule_ids.get(&id) {
            let message = format!("duplicate rule id {id:?} (first used at {first})");
            self.problem(format!("{base}.id"), message);
        } else {
            self.rule_ids.insert(id.clone(), base.to_owned());
        }
        id
    }

    /// The `token` condition: a product name (`Name*` for a prefix),
    /// lowercased, with the rule's version comparison.
    fn rule_token(
        &mut self,
        base: &str,
        token: Option<&str>,
        compare: Option<(CompareOp, Version)>,
    ) -> Option<TokenCond> {
        token.and_then(|token| match check_token_name(token, true) {
            Ok(()) => {
                let prefix = token.ends_with('*');
                let name = token.trim_end_matches('*').to_ascii_lowercase();
                Some(TokenCond {
                    bit: if prefix { 0 } else { name_bit(name.as_bytes()) },
                    name: name.into_bytes().into_boxed_slice(),
                    prefix,
                    compare,
                })
            }
            Err(message) => {
                self.problem(format!("{base}.token"), message);
                None
            }
        })
    }

    /// The `comment` condition: a non-empty substring, lowercased.
    fn rule_comment(&mut self, base: &str, comment: Option<&str>) -> Option<Box<[u8]>> {
        comment.and_then(|comment| {
            if comment.is_empty() {
                self.problem(format!("{base}.comment"), "must not be empty");
                None
            } else {
                Some(comment.to_ascii_lowercase().into_bytes().into_boxed_slice())
            }
        })
    }

    /// The `regex` condition: a non-empty pattern, compiled ASCII
    /// case-insensitively within [`REGEX_SIZE_LIMIT_BYTES`].
    fn rule_regex(&mut self, base: &str, pattern: Option<&str>) -> Option<Regex> {
        pattern.and_then(|pattern| {
            if pattern.is_empty() {
                self.problem(format!("{base}.regex"), "must not be empty");
                return None;
            }
            let built = RegexBuilder::new(pattern)
                .case_insensitive(true)
                .unicode(false)
                .size_limit(REGEX_SIZE_LIMIT_BYTES)
                .build();
            match built {
                Ok(regex) => Some(regex),
                Err(e) => {
                    let detail = e
                        .to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.problem(format!("{base}.regex"), format!("invalid regex: {detail}"));
                    None
                }
            }
        })
    }

    /// The capture of the regex's `version` group, when it has one.
    fn rule_version_capture(
        &mut self,
        base: &str,
        regex: Option<&Regex>,
    ) -> Option<Box<VersionCapture>> {
        regex
            .filter(|regex| regex.capture_names().any(|n| n == Some(VERSION_GROUP)))
            .and_then(|regex| match compile_version_capture(regex.as_str()) {
                Ok(capture) => Some(Box::new(capture)),
                Err(message) => {
                    self.problem(format!("{base}.regex"), message);
                    None
                }
            })
    }

    /// How the conditions combine: a rule needs token/comment or regex (not
    /// both kinds), and `op`/`version` need a token.
    fn check_rule_conditions(&mut self, base: &str, raw: &RawRule) {
        let has_regex = raw.regex.is_some();
        let has_text = raw.token.is_some() || raw.comment.is_some();
        if !has_regex && !has_text {
            self.problem(base, "a rule needs a condition: token, comment or regex");
        } else if has_regex && has_text {
            self.problem(
                base,
                "regex cannot be combined with token or comment (use one rule kind)",
            );
        }
        if raw.token.is_none() && (raw.op.is_some() || raw.version.is_some()) {
            self.problem(base, "op and version need a token");
        }
    }

    /// Validates `op` + `version` (both or neither).
    fn compare(&mut self, base: &str, raw: &RawRule) -> Option<(CompareOp, Version)> {
        let op = raw.op.as_deref().map(|name| {
            CompareOp::from_name(name).ok_or_else(|| {
                format!("unknown op {name:?}: expected EQL, NEQ, GTR, GEQ, LSS or LEQ")
            })
        });
        let version = raw.version.as_ref().map(|value| match value {
            toml::Value::String(text) => text.parse::<Version>().map_err(|e| e.to_string()),
            toml::Value::Integer(n) => u32::try_from(*n)
                .map(|n| Version::new(n, 0, 0, 0))
                .map_err(|_| format!("invalid version {n}: must be 0 to {}", u32::MAX)),
            other => Err(format!(
                "invalid version: expected a string such as \"4.0.7577\", found {}",
                other.type_str()
            )),
        });
        match (op, version) {
            (None, None) => None,
            (Some(op), Some(version)) => {
                let op = op.map_err(|m| self.problem(format!("{base}.op"), m)).ok();
                let version = version
                    .map_err(|m| self.problem(format!("{base}.version"), m))
                    .ok();
                op.zip(version)
            }
            (Some(op), None) => {
                if let Err(m) = op {
                    self.problem(format!("{base}.op"), m);
                }
                self.problem(format!("{base}.version"), "required when op is set");
                None
            }
            (None, Some(version)) => {
                if let Err(m) = version {
                    self.problem(format!("{base}.version"), m);
                }
                self.problem(format!("{base}.op"), "required when version is set");
                None
            }
        }
    }

    fn finish(self) -> Result<Catalog, CatalogError> {
        if !self.problems.is_empty() {
            return Err(CatalogError::Invalid {
                path: None,
                problems: self.problems,
            });
        }
        let patterns: Vec<&str> = self
            .rules
            .iter()
            .filter(|rule| rule.regex_prefix.is_none())
            .filter_map(|rule| rule.regex.as_ref().map(Regex::as_str))
            .collect();
        let unprefixed_regexes = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .unicode(false)
            .size_limit(REGEX_SIZE_LIMIT_BYTES.saturating_mul(patterns.len().max(1)))
            .build()
            .map_err(|e| CatalogError::Invalid {
                path: None,
                problems: vec![Problem {
                    key: "clients".to_owned(),
                    message: format!("the regexes together are too large: {e}"),
                }],
            })?;
        Ok(Catalog {
            unprefixed_regexes,
            clients: self.clients,
            version_tokens: self.version_tokens,
            rules: self.rules,
            missing: builtin(CLIENT_MISSING, "Missing or empty User-Agent"),
            unknown: builtin(CLIENT_UNKNOWN, "Unknown client"),
            digest: 0,
            memo: Memo::default(),
        })
    }
}

/// The literal every match of `pattern` must start with, lowercased, when the
/// pattern is `^` followed by plain characters (`^Yealink\b...` gives
/// `yealink`); `None` when that cannot be read off safely.
///
/// Conservative on purpose: only ASCII letters, digits and ` /_-,:;=@!%&'"<>`
/// count; a character followed by a quantifier (`?`, `*`, `+`, `{`) is
/// dropped; a `|` outside groups and classes (an alternative the `^` does not
/// bind) disables the prefix. The value is compared case-insensitively, which
/// is a weaker condition than a case-sensitive `(?-i)` pattern, so the prefix
/// is always a necessary condition for a match.
fn anchored_prefix(pattern: &str) -> Option<Box<[u8]>> {
    let rest = pattern.strip_prefix('^')?;
    let bytes = rest.as_bytes();
    let plain = |b: u8| b.is_ascii_alphanumeric() || b" /_-,:;=@!%&'\"<>".contains(&b);
    let mut prefix = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        if !plain(b) {
            break;
        }
        if matches!(bytes.get(i + 1), Some(b'?' | b'*' | b'+' | b'{')) {
            break;
        }
        prefix.push(b.to_ascii_lowercase());
    }
    (!prefix.is_empty() && !has_top_level_alternation(bytes)).then(|| prefix.into_boxed_slice())
}

/// Whether a regex has a `|` outside every group and class (escapes skipped).
fn has_top_level_alternation(pattern: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_class = false;
    let mut i = 0;
    while let Some(&b) = pattern.get(i) {
        match b {
            b'\\' => i += 1,
            b'[' if !in_class => {
                in_class = true;
                // A `]` right after `[` or `[^` is a literal.
                if pattern.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if pattern.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if in_class => in_class = false,
            b'(' if !in_class => depth += 1,
            b')' if !in_class => depth = depth.saturating_sub(1),
            b'|' if !in_class && depth == 0 => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Compiles the capture form of a regex that has a `version` group, with
/// the syntax options of the rule regexes (case-insensitive, Unicode off,
/// over bytes).
fn compile_version_capture(pattern: &str) -> Result<VersionCapture, String> {
    let regex = meta::Regex::builder()
        .syntax(
            syntax::Config::new()
                .case_insensitive(true)
                .unicode(false)
                .utf8(false),
        )
        .configure(
            meta::Config::new()
                .utf8_empty(false)
                .nfa_size_limit(Some(REGEX_SIZE_LIMIT_BYTES)),
        )
        .build(pattern)
        .map_err(|e| format!("invalid regex: {e}"))?;
    let group = regex
        .group_info()
        .to_index(PatternID::ZERO, VERSION_GROUP)
        .ok_or_else(|| format!("no group named {VERSION_GROUP:?}"))?;
    if group > MAX_VERSION_GROUP_INDEX {
        return Err(format!(
            "the {VERSION_GROUP:?} group is group {group}: it must be one of the first \
             {MAX_VERSION_GROUP_INDEX} groups"
        ));
    }
    Ok(VersionCapture { regex, group })
}

/// A product name as written in a rule (`allow_prefix`: may end in `*`).
fn check_token_name(token: &str, allow_prefix: bool) -> Result<(), String> {
    let name = if allow_prefix {
        token.strip_suffix('*').unwrap_or(token)
    } else {
        token
    };
    if name.is_empty() {
        return Err("empty token".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| c.is_whitespace() || matches!(c, '/' | '(' | ')' | '*'))
    {
        let hint = if allow_prefix {
            " ('*' only at the end)"
        } else {
            ""
        };
        return Err(format!(
            "invalid token {token:?}: a product name cannot contain {bad:?}{hint}"
        ));
    }
    Ok(())
}

fn parse_category(name: &str) -> Result<Category, String> {
    // A catalog entry names what it is: `unknown` is for what matched nothing.
    let named = || {
        Category::ALL
            .into_iter()
            .filter(|c| *c != Category::Unknown)
    };
    named().find(|c| c.as_str() == name).ok_or_else(|| {
        format!(
            "unknown category {name:?}: expected one of {}",
            names(named().map(Category::as_str))
        )
    })
}

fn parse_support(name: &str) -> Result<Support, String> {
    Support::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| {
            format!(
                "unknown support {name:?}: expected one of {}",
                names(Support::ALL.map(Support::as_str))
            )
        })
}

fn parse_role(name: &str) -> Result<Role, String> {
    const ALL: [Role; 3] = [Role::Caller, Role::InformalAgent, Role::FormalAgent];
    ALL.into_iter().find(|r| r.as_str() == name).ok_or_else(|| {
        format!(
            "unknown role {name:?}: expected one of {}",
            names(ALL.map(Role::as_str))
        )
    })
}

fn names<'a>(all: impl IntoIterator<Item = &'a str>) -> String {
    all.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[[clients]]
id = "lync-2013"
name = "Lync 2013"
category = "desktop"
support = "supported"
roles = ["caller", "informal-agent", "formal-agent"]
version_token = "OC"
[[clients.match]]
token = "OC"
op = "GEQ"
version = "15"

[[clients]]
id = "lync-2010-attendant"
name = "Lync 2010 Attendant"
category = "attendant"
support = "supported"
roles = ["caller", "informal-agent", "formal-agent"]
version_token = "OC"
[[clients.match]]
id = "attendant"
token = "oc"
op = "GEQ"
version = 4
comment = "attendant"

[[clients]]
id = "lync-2010"
name = "Lync 2010"
category = "desktop"
support = "supported"
roles = ["caller", "informal-agent"]
version_token = "OC"
[[clients.match]]
token = "OC"
op = "GEQ"
version = "4"

[[clients]]
id = "rgs"
name = "Response Group application"
category = "service"
support = "service"
version_token = "RTCC"
[[clients.match]]
token = "Response_Group_Service"

[[clients]]
id = "ms-server"
name = "Microsoft server"
category = "service"
support = "service"
[[clients.match]]
token = "RTCC"
[[clients.match]]
token = "RTC"
op = "GEQ"
version = "3"

[[clients]]
id = "polycom"
name = "Polycom"
category = "phone"
support = "third-party"
[[clients.match]]
token = "PolycomVVX-*"
[[clients.match]]
regex = '^Polycom (HDX|VSX)\b'

[[clients]]
id = "scanner"
name = "Scanners"
category = "scanner"
support = "scanner"
[[clients.match]]
token = "friendly-scanner"
[[clients.match]]
comment = "scanner"
"#;

    fn catalog() -> Catalog {
        Catalog::from_toml_str(SMALL).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> Vec<String> {
        match Catalog::from_toml_str(text) {
            Ok(_) => panic!("catalog unexpectedly valid"),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    fn which(c: &Catalog, ua: &str) -> (String, String, Option<String>) {
        let got = c.classify(Some(ua.as_bytes()));
        (
            got.client.id.clone(),
            got.rule.to_owned(),
            got.version.map(|v| v.to_string()),
        )
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn first_match_wins_in_file_order() {
        let c = catalog();
        assert_eq!(
            which(
                &c,
                "UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)"
            ),
            (s("lync-2013"), s("lync-2013#1"), Some(s("15.0.4420.1017")))
        );
        // The attendant rule comes before the generic Lync 2010 rule.
        assert_eq!(
            which(
                &c,
                "UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010 Attendant)"
            ),
            (
                s("lync-2010-attendant"),
                s("attendant"),
                Some(s("4.0.7577.0"))
            )
        );
        assert_eq!(
            which(
                &c,
                "UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)"
            ),
            (s("lync-2010"), s("lync-2010#1"), Some(s("4.0.7577.314")))
        );
        // Classified by the OC version, not the comment.
        assert_eq!(
            which(&c, "UCCAPI/4.0.7400.0 OC/4.0.7400.0 (Microsoft Lync 2013)").0,
            "lync-2010"
        );
        // Response Group before the generic RTCC rule; version from version_token.
        assert_eq!(
            which(
                &c,
                "RTCC/5.0.0.0 Response_Group_Service Announcement_Service"
            ),
            (s("rgs"), s("rgs#1"), Some(s("5.0.0.0")))
        );
        assert_eq!(
            which(&c, "RTCC/5.0.0.0 MediationServer"),
            (s("ms-server"), s("ms-server#1"), Some(s("5.0.0.0")))
        );
        assert_eq!(
            which(&c, "RTC/5.0"),
            (s("ms-server"), s("ms-server#2"), Some(s("5.0")))
        );
        // A version condition that fails falls through to later rules.
        assert_eq!(which(&c, "RTC/1.3.5470 (Messenger 5.1)").0, "unknown");
        assert_eq!(which(&c, "UCCAPI/3.5.6907.0 OC/3.5.6907.0").0, "unknown");
        // A token without a version never satisfies a version condition.
        assert_eq!(which(&c, "OC (Microsoft Lync)").0, "unknown");
    }

    #[test]
    fn token_rules_scan_every_token_case_insensitively() {
        let c = catalog();
        assert_eq!(which(&c, "foo/1 bar oc/15.0.1.2").0, "lync-2013");
        assert_eq!(which(&c, "x/1 FRIENDLY-SCANNER").0, "scanner");
        // Exact names: OCPhone is not OC.
        assert_eq!(which(&c, "OCPhone/15.0.1.1").0, "unknown");
        // Prefix tokens, and version of the matched token.
        assert_eq!(
            which(&c, "PolycomVVX-VVX_500-UA/5.0.0.6874"),
            (s("polycom"), s("polycom#1"), Some(s("5.0.0.6874")))
        );
        // Regex on the whole value, case-insensitive, no token version.
        assert_eq!(
            which(&c, "polycom hdx 8000 HD (Release - 2.5.0.8_ne-4035)"),
            (s("polycom"), s("polycom#2"), None)
        );
        // Comment rules look inside comments only.
        assert_eq!(which(&c, "Foo/1 (Some SCANNER tool)").0, "scanner");
        assert_eq!(which(&c, "scanner/1").0, "unknown");
    }

    #[test]
    fn missing_empty_and_unknown_are_explicit() {
        let c = catalog();
        for ua in [None, Some(&b""[..]), Some(&b"  \t\r\n"[..])] {
            let got = c.classify(ua);
            assert_eq!(got.client.id, CLIENT_MISSING);
            assert_eq!(got.rule, RULE_MISSING);
            assert_eq!(got.client.category, Category::Unknown);
            assert_eq!(got.client.support, Support::Unknown);
            assert!(got.client.roles.is_empty());
            assert_eq!(got.version, None);
        }
        for ua in [&b"Nothing/1.0 (matches)"[..], b"\xff\xfe((", b")"] {
            let got = c.classify(Some(ua));
            assert_eq!(got.client.id, CLIENT_UNKNOWN);
            assert_eq!(got.rule, RULE_UNKNOWN);
            assert_eq!(got.client.support, Support::Unknown);
            assert!(got.client.roles.is_empty());
        }
        assert_eq!(
            c.client("missing").map(|x| x.support),
            Some(Support::Unknown)
        );
        assert_eq!(
            c.client("unknown").map(|x| x.category),
            Some(Category::Unknown)
        );
        assert!(c.client("nope").is_none());
        let ids: Vec<_> = c.clients().map(|x| x.id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"lync-2013"));
        assert_eq!(ids[ids.len() - 2..], ["missing", "unknown"]);
        assert_eq!(c.products().count(), ids.len() - 2);
        assert!(c.products().all(|p| p.id != "missing" && p.id != "unknown"));
        assert_eq!(c.rules().count(), 10);
    }

    #[test]
    fn empty_catalog_is_valid() {
        let c = Catalog::from_toml_str("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.classify(Some(b"OC/15")).rule, RULE_UNKNOWN);
    }

    #[test]
    fn collects_every_problem_with_key_paths() {
        let text = r#"
[[clients]]
id = "a"
name = "A"
category = "desktop"
support = "supported"
[[clients.match]]
token = "OC"
op = "GEQQ"
version = "4.x"
[[clients.match]]
regex = "(unclosed"
[[clients.match]]
token = ""
[[clients.match]]
id = "shared"
token = "X"
comment = "y"
regex = "z"
[[clients.match]]
op = "EQL"

[[clients]]
id = "a"
name = ""
category = "laptop"
support = "maybe"
roles = ["caller", "boss", "caller"]
version_token = "O C"
[[clients.match]]
id = "shared"
token = "Y"
version = "1"
[[clients.match]]
token = "a*b"
comment = ""

[[clients]]
id = "missing"
name = "M"
category = "web"
support = "unknown"
[[clients.match]]
id = "builtin:x"
token = "M"
op = "LEQ"

[[clients]]
id = "no-rules"
name = "N"
category = "web"
support = "unsupported"
"#;
        let got = problems(text);
        let expected = [
            r#"clients[0].match[0].op: unknown op "GEQQ": expected EQL, NEQ, GTR, GEQ, LSS or LEQ"#,
            r#"clients[0].match[0].version: invalid version "4.x": expected 1 to 4 dot-separated numbers, e.g. "15" or "4.0.7577.4363""#,
            "clients[0].match[1].regex: invalid regex: regex parse error: (unclosed ^ error: unclosed group",
            "clients[0].match[2].token: empty token",
            "clients[0].match[3]: regex cannot be combined with token or comment (use one rule kind)",
            "clients[0].match[4].version: required when op is set",
            "clients[0].match[4]: a rule needs a condition: token, comment or regex",
            "clients[0].match[4]: op and version need a token",
            r#"clients[1].id: duplicate id "a" (first defined at clients[0])"#,
            "clients[1].name: must not be empty",
            r#"clients[1].category: unknown category "laptop": expected one of desktop, attendant, phone, mobile, web, service, gateway, third-party, scanner"#,
            r#"clients[1].support: unknown support "maybe""#,
            r#"clients[1].roles[1]: unknown role "boss""#,
            r#"clients[1].roles[2]: duplicate role "caller""#,
            r#"clients[1].version_token: invalid token "O C": a product name cannot contain ' '"#,
            r#"clients[1].match[0].id: duplicate rule id "shared" (first used at clients[0].match[3])"#,
            "clients[1].match[0].op: required when version is set",
            // Default rule ids repeat because the client id does.
            r#"clients[1].match[1].id: duplicate rule id "a#2""#,
            r#"clients[1].match[1].token: invalid token "a*b": a product name cannot contain '*'"#,
            "clients[1].match[1].comment: must not be empty",
            r#"clients[2].id: id "missing" is reserved for the built-in client"#,
            r#"clients[2].match[0].id: ids starting with "builtin:" are reserved"#,
            "clients[2].match[0].version: required when op is set",
            "clients[3].match: at least one [[clients.match]] rule is required",
        ];
        for (i, want) in expected.iter().enumerate() {
            let Some(line) = got.get(i) else {
                panic!("missing problem {i}: {want}\nall: {got:#?}");
            };
            assert!(
                line.starts_with(want),
                "problem {i}:\n got: {line}\nwant: {want}\nall: {got:#?}"
            );
        }
        assert_eq!(got.len(), expected.len(), "{got:#?}");
    }

    #[test]
    fn a_name_with_a_control_character_is_refused() {
        let text = r#"
[[clients]]
id = "evil"
name = "Evil\r\nX-Injected: yes"
category = "mobile"
support = "unsupported"
[[clients.match]]
token = "Evil"
"#;
        assert_eq!(
            problems(text),
            [
                r#"clients[0].name: "Evil\r\nX-Injected: yes" holds the control character '\r': names are shown in the Warning header of rejects and in reports, one line of text"#
            ]
        );
    }

    #[test]
    fn an_unknown_top_level_key_is_told_beside_the_entries_problems() {
        let text = r#"
schema = 2
[[clients]]
id = "a"
name = "A"
category = "nonsense"
support = "supported"
[[clients.match]]
token = "OC"
"#;
        let got = problems(text);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got.iter()
                .any(|p| p == "schema: line 2: unknown field `schema`, expected `clients`"),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("clients[0].category: unknown category")),
            "{got:#?}"
        );
        let got = problems("[clients]\nid = \"x\"\n");
        assert_eq!(
            got,
            ["clients: line 1: expected an array of tables ([[clients]]), found table"]
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let rule_key = r#"
[[clients]]
id = "a"
name = "A"
category = "desktop"
support = "supported"
[[clients.match]]
tokn = "OC"
"#;
        let got = problems(rule_key);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with("clients[0].match[0].tokn: unknown field `tokn`"),
            "{got:#?}"
        );

        let client_key = r#"
[[clients]]
id = "a"
name = "A"
category = "desktop"
support = "supported"
colour = "blue"
[[clients.match]]
token = "OC"
"#;
        let got = problems(client_key);
        assert!(
            got[0].starts_with("clients[0].colour: unknown field `colour`"),
            "{got:#?}"
        );

        let missing = "[[clients]]\nid = \"a\"\n";
        let got = problems(missing);
        assert!(
            got[0].starts_with("clients[0].name: missing field `name`"),
            "{got:#?}"
        );

        let wrong_types = r#"
[[clients]]
id = 3
name = "A"
category = "web"
support = "unknown"
roles = "caller"
[[clients.match]]
token = "X"

[[clients]]
id = "b"
name = "B"
category = "web"
support = "unknown"
[[clients.match]]
token = ["X"]
version = 1.5
"#;
        let got = problems(wrong_types);
        assert_eq!(
            got,
            [
                "clients[0].id: expected a string, found integer",
                "clients[0].roles: expected an array of strings, found string",
                "clients[1].match[0].token: expected a string, found array",
                r#"clients[1].match[0].version: expected a version string such as "4.0.7577", found float"#,
            ]
        );

        // Top level: refused with its line.
        assert_eq!(
            problems("\n\n[settings]\nx = 1\n"),
            ["settings: line 3: unknown field `settings`, expected `clients`"]
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_file() {
        let err = Catalog::from_toml_str("[[clients]]\nid = \"a\nname = 1\n").err();
        let Some(CatalogError::Parse { line, .. }) = err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert_eq!(line, 2);

        let dir = std::env::temp_dir().join(format!("sipadmit-classify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[[clients]]\nid = \"a\"\n").unwrap_or_else(|e| panic!("{e}"));
        let shown = Catalog::load(&file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            shown.starts_with(&format!("{}: invalid client catalog", file.display())),
            "{shown}"
        );
        assert!(
            shown.contains("\n  clients[0].name: missing field `name`"),
            "{shown}"
        );
        let absent = dir.join("absent.toml");
        let shown = Catalog::load(&absent)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(shown.starts_with(&absent.display().to_string()), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn regexes_are_byte_oriented_and_case_insensitive() {
        let text = r#"
[[clients]]
id = "r"
name = "R"
category = "third-party"
support = "third-party"
[[clients.match]]
regex = '^acme\b.\xFF'
[[clients.match]]
regex = '(?-i)^Exact$'
"#;
        let c = Catalog::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.classify(Some(b"ACME\xfe\xff")).rule, "r#1");
        assert_eq!(c.classify(Some(b"  Exact\r\n")).rule, "r#2");
        assert_eq!(c.classify(Some(b"exact")).rule, RULE_UNKNOWN);
    }

    #[test]
    fn regex_version_group_reports_the_version() {
        let text = r#"
[[clients]]
id = "sip-lib"
name = "SIP library"
category = "third-party"
support = "third-party"
version_token = "Lib"
[[clients.match]]
id = "optional-group"
regex = '^baresip(?: v(?P<version>\d+(?:\.\d+)*))?'
[[clients.match]]
id = "late-group"
regex = '^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)(m)(n)-(?P<version>\S+)'
[[clients.match]]
id = "no-group"
regex = '^Yealink\b'

[[clients]]
id = "other"
name = "Other"
category = "third-party"
support = "third-party"
[[clients.match]]
id = "unnamed-group"
regex = '^Grandstream \S+ (\d+(\.\d+)+)'
"#;
        let c = Catalog::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
        let version = |ua: &[u8]| c.classify(Some(ua)).version.map(|v| v.to_string());
        assert_eq!(version(b"baresip v1.0.0 (x86_64/linux)"), Some(s("1.0.0")));
        assert_eq!(version(b"BARESIP V2.10 (mips/linux)"), Some(s("2.10")));
        // The group took no part in the match: the rule still matches.
        assert_eq!(c.classify(Some(b"baresip-fake")).rule, "optional-group");
        assert_eq!(version(b"baresip-fake"), None);
        // The group matched text that is not a version.
        assert_eq!(version(b"abcdefghijklmn-release"), None);
        assert_eq!(version(b"abcdefghijklmn-7.5.6a"), Some(s("7.5.6")));
        // A version_token present in the value wins over the group.
        assert_eq!(version(b"baresip v1.0.0 Lib/3.1"), Some(s("3.1")));
        // No `version` group: no version, as before.
        assert_eq!(version(b"Yealink SIP-T46S 66.85.0.15"), None);
        assert_eq!(version(b"Grandstream GXP2170 1.0.9.135"), None);
        assert_eq!(version(b"Grandstream GXP2170"), None);

        let too_late = r#"
[[clients]]
id = "x"
name = "X"
category = "third-party"
support = "third-party"
[[clients.match]]
regex = '(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)(m)(n)(o)(?P<version>\d+)'
"#;
        assert_eq!(
            problems(too_late),
            [
                r#"clients[0].match[0].regex: the "version" group is group 16: it must be one of the first 15 groups"#
            ]
        );
    }

    #[test]
    fn anchored_prefix_is_read_conservatively() {
        let prefix = |pattern: &str| {
            anchored_prefix(pattern).map(|p| String::from_utf8_lossy(&p).into_owned())
        };
        assert_eq!(
            prefix(r"^Yealink\b(?:.*?\s(?P<version>\d+))?"),
            Some(s("yealink"))
        );
        assert_eq!(
            prefix(r"^Cisco/SPA(?:\w*-(?P<version>\d+))?"),
            Some(s("cisco/spa"))
        );
        assert_eq!(
            prefix(r"^Z (?P<version>\d+(?:\.\d+)+) r?v\d"),
            Some(s("z "))
        );
        assert_eq!(prefix(r"^Bria (iOS|Android)\b"), Some(s("bria ")));
        assert_eq!(prefix(r"^Huawei[- ]eSpace"), Some(s("huawei")));
        assert_eq!(prefix(r"^Z 3\.14"), Some(s("z 3")));
        // A quantified character is optional: dropped, and the prefix ends.
        assert_eq!(prefix(r"^abc?d"), Some(s("ab")));
        assert_eq!(prefix(r"^ab*"), Some(s("a")));
        assert_eq!(prefix(r"^a{2}"), None);
        // Not anchored, no literal, or an alternative outside `^`'s reach.
        assert_eq!(prefix(r"\bGroundwire\b"), None);
        assert_eq!(prefix(r"^(Bria|X-Lite)\b"), None);
        assert_eq!(prefix(r"^[CN]\d{3}"), None);
        assert_eq!(prefix(r"(?-i)^Exact$"), None);
        assert_eq!(prefix(r"^Mitel|Aastra"), None);
        assert_eq!(prefix(r"^a[|]b"), Some(s("a")));
        assert_eq!(prefix(r"^a[]|]b"), Some(s("a")));
        assert_eq!(prefix(r"^a\|b"), Some(s("a")));
        assert_eq!(prefix(r"^a[[:alpha:]]|b"), None);
    }

    #[test]
    fn regex_prefix_never_skips_a_match_of_the_shipped_catalog() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let c = Catalog::load(&root.join("config/clients.toml")).unwrap_or_else(|e| panic!("{e}"));
        let mut values: Vec<Vec<u8>> = Vec::new();
        for table in ["user-agents.tsv", "user-agents-extra.tsv"] {
            let text = std::fs::read(root.join("tests/corpus").join(table))
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            for line in text.split(|&b| b == b'\n').skip(1) {
                let ua = line.split(|&b| b == b'\t').next().unwrap_or_default();
                values.push(ua.to_vec());
                values.push(ua.to_ascii_uppercase());
                values.push(ua.get(..ua.len() / 2).unwrap_or_default().to_vec());
            }
        }
        let with_prefix = c.rules.iter().filter(|r| r.regex_prefix.is_some()).count();
        assert!(with_prefix >= 30, "only {with_prefix} prefixed regex rules");
        for rule in &c.rules {
            let Some(regex) = &rule.regex else { continue };
            for value in &values {
                let value = trim_lws(value);
                assert!(
                    !(rule.prefix_rules_out(value) && regex.is_match(value)),
                    "{} skipped {:?}",
                    rule.id,
                    String::from_utf8_lossy(value)
                );
            }
        }
    }

    #[test]
    fn catalog_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Catalog>();
    }

    #[test]
    fn item_cap_keeps_classification_on_the_stack() {
        let c = catalog();
        let many = "x/1 ".repeat(MAX_UA_ITEMS) + "OC/15.0.1.1";
        assert_eq!(c.classify(Some(many.as_bytes())).rule, RULE_UNKNOWN);
        let fits = "x/1 ".repeat(MAX_UA_ITEMS - 1) + "OC/15.0.1.1";
        assert_eq!(c.classify(Some(fits.as_bytes())).client.id, "lync-2013");
    }
}
