//! A client version policy → client catalog entries (TOML) with the same
//! precedence, and a [`Note`] for whatever the catalog cannot express.
//!
//! Mapping (documented in docs/client-version-policy.md):
//!
//! | policy | catalog entry |
//! |---|---|
//! | rule, in priority order | one `[[clients]]` entry, in the same order |
//! | `UserAgent` | `token` (and `version_token`) |
//! | version and `CompareOp` | `op` + `version`; see below for wildcards |
//! | `Allow`, `AllowWithUrl`, `AllowAndUpgrade` | `support = "supported"` for the clients the Response Group application supports, `"unsupported"` for the others, in the roles the application supports each in (`support.rs`; `OC` and `UCCAPI` parted at 3, 4 and 15 and by the Attendant's comment, `plan.rs`) |
//! | `Block`, `BlockWithUrl`, `BlockAndUpgrade` | `support = "unsupported"`, no role |
//! | a rule that takes a known server component (`known.rs`) | nothing: named in a note |
//! | an allow of a code sipadmit does not know that takes only unsupported known clients | `support = "unsupported"` |
//! | `ActionUrl`, the upgrade | nothing: named in a note |
//! | `Enabled = False` | nothing: named in a note |
//!
//! A catalog rule compares the token's whole version once. A wildcard
//! compares a prefix: `GEQ 15.*` is `GEQ 15`, `LSS 4.*` is `LSS 4`,
//! `GTR 15.*` is `GEQ 16`, `LEQ 3.5.*` is `LSS 3.6`, and `NEQ 6.25.*` is two
//! rules of one entry, `LSS 6.25` or `GEQ 6.26`. `EQL 4.*` is the range
//! `4 <= v < 5`, which one comparison cannot say, except where earlier rules
//! (on the same token) already take every version on one side of it: a User
//! Agent that reaches the rule has no such token version, so `EQL 4.*` may
//! then be written `LSS 5` (earlier rules take everything below 4) or `GEQ
//! 4` (they take everything from 5). Otherwise the rule is not imported and
//! a note says so.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};

use super::known::{known_clients, Known};
use super::support::code_category;
use super::version_set::{self, Key, VersionSet, MAX};
use super::{ClientVersionPolicy, PolicyAction, PolicyRule};
use crate::classify::{Catalog, CompareOp};
use crate::sip::fields::is_token_char;
use crate::terminal_text::one_line;

mod plan;

use plan::{check_known, plan, Check, Entry, Plan};

/// The entries made from a policy, and what they leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogImport {
    /// `[[clients]]` entries with comments (header, one block per rule,
    /// the rules not imported as comments), TOML.
    pub toml: String,
    /// What could not be expressed, rule by rule, in policy order.
    pub notes: Vec<Note>,
    /// Rules imported (whole or in part).
    pub imported: usize,
    /// Rules not imported.
    pub not_imported: usize,
}

/// How much of a rule a note concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// The rule is not in the entries.
    NotImported,
    /// The rule is in the entries, without part of its action.
    PartLost,
    /// The rule is in the entries, but (some of) the clients it allows get
    /// support `unsupported`: the Response Group application does not
    /// support them (a warning: the policy says otherwise).
    NotSupported,
}

/// Something of one rule the catalog cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The rule: `priority 3 (line 6: OC EQL 4.* -> AllowWithUrl)`.
    pub rule: String,
    /// Whether the rule was imported.
    pub kind: NoteKind,
    /// What is left out, and why.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NoteKind::NotImported => "not imported",
            NoteKind::PartLost => "imported in part",
            NoteKind::NotSupported => "not supported for Response Group",
        };
        write!(f, "{}: {what}: {}", self.rule, self.message)
    }
}

/// What the catalog header says about the mapping (also on stderr).
pub const MAPPING_NOTE: &str = "Block, BlockWithUrl and BlockAndUpgrade become support \
\"unsupported\": sipadmit refuses such clients in Response Group sessions as [policy.*] says \
(callers 403, agent offers 480, agent registrations flagged by default), not at every sign-in \
as Lync does. Allow, AllowWithUrl and AllowAndUpgrade let a client sign in, which does not make \
it a Response Group client: they become support \"supported\" only for the clients the Response \
Group application supports, in the roles it supports them in (OC and UCCAPI from 15 and the \
Attendants every role, OC and UCCAPI 4 to 14 (Lync 2010) and Lync Phone Edition caller and \
informal agent, codes sipadmit does not know every role); mobile and web clients, Office \
Communicator before 4 and the other codes get \"unsupported\" (named as not supported for \
Response Group). A rule that would take the Response Group application or another Lync server \
component is not imported.";

/// One catalog comparison: `token <op> version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Comparison {
    op: CompareOp,
    version: Key,
}

/// The match rules of one entry, and the token versions they take.
pub(super) enum Condition {
    /// `token` alone: any version, or none.
    AnyVersion,
    /// One entry, one or two rules (either matches).
    Compare {
        rules: Vec<Comparison>,
        taken: VersionSet,
        /// Why the comparison differs from the policy's, when it does.
        comment: Option<String>,
    },
}

/// Entries for `policy`; `source` names the export in the header.
/// `shipped` is the catalog sipadmit ships: what it says of the known
/// Microsoft clients (`known.rs`) an imported rule may not overrule
/// upwards (an `Allow` that would make a client it holds unsupported
/// `supported`), nor take from a server component.
pub fn translate(policy: &ClientVersionPolicy, source: &str, shipped: &Catalog) -> CatalogImport {
    let mut t = Translation {
        known: known_clients(shipped),
        ..Translation::default()
    };
    for rule in &policy.rules {
        t.rule(rule);
    }
    let not_imported = policy.rules.len() - t.imported;
    let mut toml = header(policy, source, t.imported, not_imported);
    toml.push_str(&t.body);
    CatalogImport {
        toml,
        notes: t.notes,
        imported: t.imported,
        not_imported,
    }
}

/// What the imported rules on one token (`UserAgent`, case-insensitively)
/// take, in policy order.
#[derive(Default)]
pub(super) struct TokenRules {
    /// The token versions taken.
    taken: VersionSet,
    /// The rule that takes the token without a version, if one does.
    versionless: Option<String>,
    /// Each imported rule and the versions it was written to take.
    rules: Vec<(String, VersionSet)>,
}

/// The entries and notes written so far.
#[derive(Default)]
struct Translation {
    body: String,
    notes: Vec<Note>,
    tokens: HashMap<String, TokenRules>,
    ids: HashSet<String>,
    imported: usize,
    /// The known clients, and whether an imported rule takes each.
    known: Vec<Known>,
}

impl Translation {
    /// Writes the entries of one rule, or why there are none.
    fn rule(&mut self, rule: &PolicyRule) {
        let label = format!(
            "priority {} ({}: {})",
            rule.priority,
            rule.origin,
            rule.summary()
        );
        let token = self
            .tokens
            .entry(rule.user_agent.to_ascii_lowercase())
            .or_default();
        let planned = condition(rule, &token.taken)
            .and_then(|cond| shadowed(rule, &cond, token).map_or(Ok(cond), Err))
            .and_then(|cond| plan(rule, &cond, token).map(|plan| (cond, plan)));
        let (cond, mut plan) = match planned {
            Ok(planned) => planned,
            Err(reason) => return self.not_imported(label, reason),
        };
        let decided: Vec<usize> = (0..self.known.len())
            .filter(|&i| !self.known[i].taken)
            .filter(|&i| rule.matches(self.known[i].user_agent.as_bytes()))
            .collect();
        if !decided.is_empty() {
            let mut text = String::new();
            write_rule(&mut text, rule, &mut HashSet::new(), &cond, &[], &plan);
            let known: Vec<&Known> = decided.iter().map(|&i| &self.known[i]).collect();
            match check_known(rule, &text, &known) {
                Check::Keep => {}
                Check::Unsupported(why) => {
                    for entry in &mut plan.entries {
                        *entry = entry.clone().unsupported(why.clone());
                    }
                    plan.not_supported = Some(why);
                }
                Check::Refuse(why) => return self.not_imported(label, why),
            }
        }
        let set = match &cond {
            Condition::AnyVersion => {
                token.versionless = Some(label.clone());
                let mut all = VersionSet::default();
                all.add(0, MAX);
                all
            }
            Condition::Compare { taken: set, .. } => set.clone(),
        };
        token.taken.extend(&set);
        token.rules.push((label.clone(), set));
        for i in decided {
            self.known[i].taken = true;
        }
        let lost = lost_parts(rule, &label);
        self.body.push('\n');
        write_rule(&mut self.body, rule, &mut self.ids, &cond, &lost, &plan);
        self.notes.extend(lost);
        if let Some(message) = plan.not_supported {
            self.notes.push(Note {
                rule: label,
                kind: NoteKind::NotSupported,
                message,
            });
        }
        self.imported += 1;
    }

    /// Names a rule that is not imported, in the output and the notes.
    fn not_imported(&mut self, label: String, reason: String) {
        let note = Note {
            rule: label,
            kind: NoteKind::NotImported,
            message: reason,
        };
        self.body.push('\n');
        comment(
            &mut self.body,
            &format!("NOT IMPORTED: {}: {}", note.rule, note.message),
        );
        self.notes.push(note);
    }
}

/// Why a rule never decides, if it does not: earlier imported rules on its
/// token take every version it matches (an exact duplicate, or a rule
/// inside a broader one), and the token without a version when it matches
/// that too.
fn shadowed(rule: &PolicyRule, cond: &Condition, token: &TokenRules) -> Option<String> {
    let set = match cond {
        Condition::AnyVersion => {
            token.versionless.as_ref()?;
            let mut all = VersionSet::default();
            all.add(0, MAX);
            all
        }
        Condition::Compare { taken, .. } => taken.clone(),
    };
    if !token.taken.contains(&set) {
        return None;
    }
    let earlier: Vec<&str> = token
        .rules
        .iter()
        .filter(|(_, taken)| taken.intersects(&set))
        .map(|(label, _)| label.as_str())
        .collect();
    Some(format!(
        "never decides: every {} version it matches is taken by an earlier rule ({})",
        rule.user_agent,
        earlier.join("; ")
    ))
}

/// The catalog condition of an enabled rule, or why there is none.
fn condition(rule: &PolicyRule, taken: &VersionSet) -> Result<Condition, String> {
    if !rule.enabled {
        return Err("disabled (Enabled is False): the policy does not evaluate it".into());
    }
    if let Some(bad) = rule.user_agent.chars().find(|&c| !product_name_char(c)) {
        return Err(format!(
            "UserAgent {:?} holds {bad:?}, which no product name of a User-Agent holds \
             (RFC 3261 token: letters, digits and - . ! % _ + ` ' ~; and * is the catalog's \
             wildcard)",
            rule.user_agent
        ));
    }
    if rule.version.has_part_after_wildcard() {
        return Err(format!(
            "version {}: a part after a wildcard; sipadmit compares the leading parts only",
            rule.version
        ));
    }
    let compared = rule.version.compared();
    if compared.is_empty() {
        return match rule.op {
            CompareOp::Eql | CompareOp::Geq | CompareOp::Leq => Ok(Condition::AnyVersion),
            op => Err(format!(
                "{op} with every version part a wildcard matches no client"
            )),
        };
    }
    let mut padded = [0u32; 4];
    for (slot, &part) in padded.iter_mut().zip(&compared) {
        *slot = u32::from(part);
    }
    let lo = version_set::key(padded);
    // The first version past the prefix: its last compared part plus one
    // (a u16 plus one always fits a u32 part).
    padded[compared.len() - 1] += 1;
    let past = version_set::key(padded);
    if compared.len() == 4 {
        exact(rule.op, lo)
    } else {
        prefix(rule, lo, past, taken)
    }
}

/// Whether `c` may be part of a product name that a catalog `token` rule
/// compares: an RFC 3261 `token` character (ASCII letters, digits and
/// `-.!%_+`'~`), but `*`, which a catalog token reads as a wildcard.
fn product_name_char(c: char) -> bool {
    c != '*' && u8::try_from(c).is_ok_and(is_token_char)
}

/// A four-part version: the catalog compares the same way.
fn exact(op: CompareOp, v: Key) -> Result<Condition, String> {
    let mut set = VersionSet::default();
    // `v + 1` fits: the parts of `v` are u16.
    match op {
        CompareOp::Eql => set.add(v, v),
        CompareOp::Neq => {
            if v > 0 {
                set.add(0, v - 1);
            }
            set.add(v + 1, MAX);
        }
        CompareOp::Gtr => set.add(v + 1, MAX),
        CompareOp::Geq => set.add(v, MAX),
        CompareOp::Lss if v == 0 => return Err("LSS 0.0.0.0 matches no client".into()),
        CompareOp::Lss => set.add(0, v - 1),
        CompareOp::Leq => set.add(0, v),
    }
    Ok(Condition::Compare {
        rules: vec![Comparison { op, version: v }],
        taken: set,
        comment: None,
    })
}

/// A version with wildcards: versions `lo..past` share the compared prefix.
fn prefix(rule: &PolicyRule, lo: Key, past: Key, taken: &VersionSet) -> Result<Condition, String> {
    let cmp = |op, version| Comparison { op, version };
    let geq = |v: Key| (vec![cmp(CompareOp::Geq, v)], (v, MAX));
    let lss = |v: Key| (vec![cmp(CompareOp::Lss, v)], (0, v - 1));
    let mut comment = None;
    let (rules, (a, b)) = match rule.op {
        CompareOp::Geq => geq(lo),
        CompareOp::Gtr => geq(past),
        CompareOp::Lss if lo == 0 => return Err(format!("LSS {} matches no client", rule.version)),
        CompareOp::Lss => lss(lo),
        CompareOp::Leq => lss(past),
        CompareOp::Neq => {
            let mut set = VersionSet::default();
            let mut rules = Vec::new();
            if lo > 0 {
                rules.push(cmp(CompareOp::Lss, lo));
                set.add(0, lo - 1);
            }
            rules.push(cmp(CompareOp::Geq, past));
            set.add(past, MAX);
            return Ok(Condition::Compare {
                rules,
                taken: set,
                comment: None,
            });
        }
        CompareOp::Eql if lo == 0 => lss(past),
        CompareOp::Eql if taken.covers(past, MAX) => {
            comment = Some(format!(
                "EQL {} written GEQ {}: earlier rules take every {} version from {} on",
                rule.version,
                version_set::display(lo),
                rule.user_agent,
                version_set::display(past)
            ));
            geq(lo)
        }
        CompareOp::Eql if taken.covers(0, lo - 1) => {
            comment = Some(format!(
                "EQL {} written LSS {}: earlier rules take every {} version below {}",
                rule.version,
                version_set::display(past),
                rule.user_agent,
                version_set::display(lo)
            ));
            lss(past)
        }
        CompareOp::Eql => {
            return Err(format!(
                "EQL {} is the range {} <= version < {}: a catalog rule makes one comparison, \
                 and earlier rules on {} leave versions on both sides of the range",
                rule.version,
                version_set::display(lo),
                version_set::display(past),
                rule.user_agent
            ))
        }
    };
    let mut set = VersionSet::default();
    set.add(a, b);
    Ok(Condition::Compare {
        rules,
        taken: set,
        comment,
    })
}

/// Notes for the parts of the action an entry cannot carry.
fn lost_parts(rule: &PolicyRule, label: &str) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut lost = |message: String| {
        notes.push(Note {
            rule: label.to_owned(),
            kind: NoteKind::PartLost,
            message,
        })
    };
    if matches!(
        rule.action,
        PolicyAction::AllowWithUrl | PolicyAction::BlockWithUrl
    ) {
        let url = rule.action_url.as_deref().unwrap_or("(none given)");
        lost(format!(
            "the ActionUrl {url:?} that Lync shows the user: a catalog entry carries no URL \
             (a reject's Warning is set per role in [policy.*], not per client)"
        ));
    }
    if matches!(
        rule.action,
        PolicyAction::AllowAndUpgrade | PolicyAction::BlockAndUpgrade
    ) {
        lost("the upgrade through Windows Update or WSUS: sipadmit upgrades no client".into());
    }
    notes
}

/// Writes the entries of one rule: the rule as comments (what is not
/// carried over included), then each entry, with ids from
/// `cvp-<priority>-<useragent>` not in `ids`.
fn write_rule(
    out: &mut String,
    rule: &PolicyRule,
    ids: &mut HashSet<String>,
    cond: &Condition,
    lost: &[Note],
    plan: &Plan,
) {
    comment(
        out,
        &format!(
            "Priority {} ({}): {}",
            rule.priority,
            rule.origin,
            rule.summary()
        ),
    );
    if let Some(identity) = &rule.identity {
        comment(out, &format!("Identity {identity}"));
    }
    if let Some(description) = &rule.description {
        comment(out, &format!("Description: {description}"));
    }
    if let Condition::Compare {
        comment: Some(why), ..
    } = cond
    {
        comment(out, why);
    }
    for note in lost {
        comment(out, &format!("NOT CARRIED OVER: {}", note.message));
    }
    let base = format!("cvp-{}-{}", rule.priority, slug(&rule.user_agent));
    for (i, entry) in plan.entries.iter().enumerate() {
        let part = entry.part.map(|p| format!("{} {p}", rule.user_agent));
        match (&part, &entry.why) {
            (Some(part), Some(why)) => comment(out, &format!("{part}: {why}")),
            (Some(part), None) if i > 0 => comment(out, part),
            (None, Some(why)) => comment(out, why),
            _ => {}
        }
        let id = free_id(&format!("{base}{}", entry.id_suffix), ids);
        write_entry(out, rule, &id, part.as_deref(), entry);
    }
}

/// Writes one `[[clients]]` entry of `rule`.
fn write_entry(out: &mut String, rule: &PolicyRule, id: &str, part: Option<&str>, entry: &Entry) {
    let label = match (&rule.user_agent_full_name, part) {
        (Some(full), Some(part)) => format!("{full}, {part}"),
        (Some(full), None) => full.clone(),
        (None, Some(part)) => part.to_owned(),
        (None, None) => rule.user_agent.clone(),
    };
    let _ = writeln!(out, "[[clients]]");
    let _ = writeln!(out, "id = {}", quote(id));
    let name = format!(
        "{label} (client version policy, priority {}: {})",
        rule.priority,
        rule.summary()
    );
    let _ = writeln!(out, "name = {}", quote(&one_line(&name)));
    let category = entry
        .category
        .unwrap_or_else(|| code_category(&rule.user_agent));
    let _ = writeln!(out, "category = {}", quote(category));
    let _ = writeln!(
        out,
        "support = {}\nroles = {}",
        quote(entry.support),
        entry.roles
    );
    let _ = writeln!(out, "version_token = {}", quote(&rule.user_agent));
    let with_comment = |out: &mut String| {
        if let Some(c) = entry.comment {
            let _ = writeln!(out, "comment = {}", quote(c));
        }
    };
    if entry.compare.is_empty() {
        let _ = writeln!(
            out,
            "[[clients.match]]\nid = {}\ntoken = {}",
            quote(id),
            quote(&rule.user_agent)
        );
        with_comment(out);
    }
    for (i, c) in entry.compare.iter().enumerate() {
        let rule_id = if entry.compare.len() == 1 {
            id.to_owned()
        } else {
            format!("{id}.{}", i + 1)
        };
        let _ = writeln!(
            out,
            "[[clients.match]]\nid = {}\ntoken = {}\nop = {}\nversion = {}",
            quote(&rule_id),
            quote(&rule.user_agent),
            quote(c.op.as_str()),
            quote(&version_set::display(c.version))
        );
        with_comment(out);
    }
}

/// The comment block at the top of the output.
fn header(
    policy: &ClientVersionPolicy,
    source: &str,
    imported: usize,
    not_imported: usize,
) -> String {
    let scope = policy
        .rules
        .first()
        .and_then(PolicyRule::scope)
        .map(|s| format!(", scope {s}"))
        .unwrap_or_default();
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "sipadmit client catalog entries made from a Lync / Skype for Business client \
             version policy (sipadmit catalog import-cvp {source}{scope}): {} rules, {imported} \
             imported, {not_imported} not imported (marked NOT IMPORTED below).",
            policy.rules.len()
        ),
    );
    out.push_str("#\n");
    comment(
        &mut out,
        "Order: first match wins, in the policy (by priority) as in the catalog (file order), \
         so these entries keep the policy's order. Put them ABOVE the catalog entries they \
         override (at the top of the catalog file), then `sipadmit check-config` and SIGHUP. \
         Clients that no rule matches fall through to the entries below them; the policy's \
         DefaultAction (Set-CsClientVersionConfiguration) is not part of this export.",
    );
    out.push_str("#\n");
    comment(&mut out, MAPPING_NOTE);
    out
}

/// `base`, or `base-2`, `base-3`, ... : the first id not used yet.
fn free_id(base: &str, used: &mut HashSet<String>) -> String {
    let id = (1..)
        .map(|n| {
            if n == 1 {
                base.to_owned()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|id| !used.contains(id))
        .unwrap_or_else(|| base.to_owned());
    used.insert(id.clone());
    id
}

/// Lowercase letters, digits, `.`, `_` and `-`; anything else becomes `-`.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Writes `text` as `#` comment lines of at most [`COMMENT_WIDTH`]
/// characters (control characters, line breaks included, as spaces).
fn comment(out: &mut String, text: &str) {
    let text = one_line(text);
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > COMMENT_WIDTH {
            let _ = writeln!(out, "# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "# {line}");
}

/// Widest comment line, after `# ` (characters).
const COMMENT_WIDTH: usize = 86;

#[cfg(test)]
mod tests;
