//! The entries of one rule: their Response Group support (see
//! [`super::super::support`]), split where one `UserAgent` code holds
//! supported and unsupported clients, and checked against the known
//! Microsoft clients the rule would take.

use super::super::known::Known;
use super::super::support::{
    code_support, CodeSupport, ALL_ROLES, ATTENDANT_COMMENT, LYNC_2010_MAJOR,
};
use super::super::version_set::{self, Key, VersionSet, MAX};
use super::super::PolicyRule;
use super::{Comparison, Condition, TokenRules};
use crate::classify::{Catalog, CompareOp, Support};

/// One `[[clients]]` entry of a rule.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Added to the rule's id (`-attendant`); empty for the rule's own.
    pub(super) id_suffix: &'static str,
    /// Which of the rule's clients it holds, when not all of them.
    pub(super) part: Option<&'static str>,
    /// `category`, when not the code's.
    pub(super) category: Option<&'static str>,
    /// `support`.
    pub(super) support: &'static str,
    /// `roles` (a TOML array).
    pub(super) roles: &'static str,
    /// Why the support is not what the action says, for the comment.
    pub(super) why: Option<String>,
    /// Its comparisons (either holds); none: the token alone.
    pub(super) compare: Vec<Comparison>,
    /// A comment the User-Agent must hold as well.
    pub(super) comment: Option<&'static str>,
}

impl Entry {
    fn new(support: &'static str, roles: &'static str, compare: Vec<Comparison>) -> Self {
        Self {
            id_suffix: "",
            part: None,
            category: None,
            support,
            roles,
            why: None,
            compare,
            comment: None,
        }
    }

    /// The entry with support `unsupported`, no role, and why.
    pub(super) fn unsupported(self, why: String) -> Self {
        Self {
            support: "unsupported",
            roles: "[]",
            why: Some(why),
            ..self
        }
    }
}

/// The entries of a rule, and what the notes say of their support.
pub(super) struct Plan {
    /// In catalog order.
    pub(super) entries: Vec<Entry>,
    /// Why (some of) the clients the rule allows get `unsupported`.
    pub(super) not_supported: Option<String>,
}

/// The entries of `rule` written as `cond`, after the rules on its token
/// (`token`).
pub(super) fn plan(rule: &PolicyRule, cond: &Condition, token: &TokenRules) -> Plan {
    let compare = match cond {
        Condition::AnyVersion => Vec::new(),
        Condition::Compare { rules, .. } => rules.clone(),
    };
    let plain = |entry| Plan {
        entries: vec![entry],
        not_supported: None,
    };
    if !rule.action.allows() {
        return plain(Entry::new("unsupported", "[]", compare));
    }
    match code_support(&rule.user_agent) {
        CodeSupport::NotKnown => plain(Entry::new("supported", ALL_ROLES, compare)),
        CodeSupport::Supported { roles } => plain(Entry::new("supported", roles, compare)),
        CodeSupport::Unsupported { clients } => {
            let why = format!(
                "{} lets these clients sign in, and the Response Group application does not \
                 support {clients}: support \"unsupported\"",
                rule.action
            );
            Plan {
                entries: vec![Entry::new("unsupported", "[]", compare).unsupported(why.clone())],
                not_supported: Some(why),
            }
        }
        CodeSupport::FromLync2010 => from_lync_2010(rule, cond, compare, token),
    }
}

/// A version `major.0.0.0`.
fn major(n: u32) -> Key {
    version_set::key([n, 0, 0, 0])
}

/// An allowed `OC` / `UCCAPI` rule: clients from 4 on are supported; below
/// 4, only the Attendant (its comment), in an entry of its own before the
/// unsupported rest. Whichever side earlier rules leave no room for is
/// written first with one comparison (`GEQ 4`, `LSS 4`), then the rule's own
/// comparisons take what is left.
fn from_lync_2010(
    rule: &PolicyRule,
    cond: &Condition,
    compare: Vec<Comparison>,
    token: &TokenRules,
) -> Plan {
    let (v3, v4) = (major(3), major(LYNC_2010_MAJOR));
    let mut written = VersionSet::default();
    match cond {
        Condition::AnyVersion => written.add(0, MAX),
        Condition::Compare { taken, .. } => written.extend(taken),
    }
    let left = |lo, hi| !token.taken.contains(&written.within(lo, hi));
    let versionless = matches!(cond, Condition::AnyVersion) && token.versionless.is_none();
    if !left(0, v4 - 1) && !versionless {
        return Plan {
            entries: vec![Entry::new("supported", ALL_ROLES, compare)],
            not_supported: None,
        };
    }
    let why = format!(
        "{} lets them sign in; the Response Group application supports {} clients from \
         {LYNC_2010_MAJOR} on (Lync 2010 and later) and, below {LYNC_2010_MAJOR}, only the OCS \
         2007 R2 Attendant (comment \"{ATTENDANT_COMMENT}\")",
        rule.action, rule.user_agent
    );
    let below = |compare: Vec<Comparison>| {
        let mut low = Entry::new("unsupported", "[]", compare.clone()).unsupported(why.clone());
        low.id_suffix = "-before-4";
        low.part = Some("below 4: Office Communicator 2007 R2 and earlier");
        let attendant = Entry {
            id_suffix: "-attendant",
            part: Some("below 4, Attendant: OCS 2007 R2 Attendant"),
            category: Some("attendant"),
            comment: Some(ATTENDANT_COMMENT),
            ..Entry::new("supported", ALL_ROLES, compare)
        };
        let attendants = left(v3, v4 - 1) || versionless;
        attendants.then_some(attendant).into_iter().chain([low])
    };
    let one = |op| vec![Comparison { op, version: v4 }];
    let mut reach = token.taken.clone();
    reach.extend(&written);
    let entries: Vec<Entry> = if !left(v4, MAX) {
        below(compare).collect()
    } else if reach.covers(v4, MAX) {
        // `GEQ 4` takes only versions the rule would: the others from 4
        // on are taken already.
        let mut high = Entry::new("supported", ALL_ROLES, one(CompareOp::Geq));
        high.part = Some("from 4: Lync 2010 and later");
        std::iter::once(high).chain(below(compare)).collect()
    } else {
        // Then `LSS 4` does: a rule's versions leave at most one gap (NEQ),
        // a version prefix, which lies on one side of 4.
        let mut high = Entry::new("supported", ALL_ROLES, compare);
        high.part = Some("from 4: Lync 2010 and later");
        below(one(CompareOp::Lss)).chain([high]).collect()
    };
    Plan {
        entries,
        not_supported: Some(format!(
            "{} below {LYNC_2010_MAJOR} (Office Communicator 2007 R2 and earlier) gets support \
             \"unsupported\": {why}",
            rule.user_agent
        )),
    }
}

/// What the known clients a rule takes say about its entries.
pub(super) enum Check {
    /// Nothing against them.
    Keep,
    /// Every known client the allowed entry takes is one the Response
    /// Group application does not support: the entry says so (why).
    Unsupported(String),
    /// The rule cannot be imported (why).
    Refuse(String),
}

/// Checks `entries` (the TOML of one rule's entries) against the known
/// clients the rule decides: the entries must compile (else the rule is
/// refused: unchecked entries are not written), none may take a server
/// component, and an entry
/// may not make a known client `supported` that the shipped catalog does
/// not, unless, for a code sipadmit does not know, every known client it
/// takes is such a client (then the entry becomes `unsupported`).
pub(super) fn check_known(rule: &PolicyRule, entries: &str, decided: &[&Known]) -> Check {
    // At most four named, the count of the others.
    let list = |known: &[&&Known]| {
        let mut text = known
            .iter()
            .take(4)
            .map(|k| k.describe())
            .collect::<Vec<_>>()
            .join("; ");
        if known.len() > 4 {
            text.push_str(&format!(" and {} more", known.len() - 4));
        }
        text
    };
    let services: Vec<&&Known> = decided
        .iter()
        .filter(|k| k.support == Support::Service)
        .collect();
    if !services.is_empty() {
        return Check::Refuse(format!(
            "it would take {}: sipadmit classifies the Response Group application and the Lync \
             servers as services, which no client version policy reclassifies (a rule on a \
             platform token such as RTCC takes them all; write rules on the clients' own \
             tokens, such as iPhoneLync or AndroidLync)",
            list(&services)
        ));
    }
    // The entries are sipadmit's own: an error is a bug of the import, and
    // without the catalog the guard cannot tell what they would do.
    let catalog = match Catalog::from_toml_str(entries) {
        Ok(catalog) => catalog,
        Err(e) => {
            return Check::Refuse(format!(
                "its entries do not compile, so what they would make of the known clients \
                 cannot be checked (a bug of sipadmit's import, please report it): {e}"
            ))
        }
    };
    let raised: Vec<&&Known> = decided
        .iter()
        .filter(|k| {
            let c = catalog.classify(Some(k.user_agent.as_bytes()));
            c.client.support == Support::Supported && k.support != Support::Supported
        })
        .collect();
    if raised.is_empty() {
        return Check::Keep;
    }
    let any_supported = decided.iter().any(|k| k.support == Support::Supported);
    if code_support(&rule.user_agent) == CodeSupport::NotKnown && !any_supported {
        return Check::Unsupported(format!(
            "{} lets them sign in, and the Response Group application does not support the \
             known clients it takes: {}: support \"unsupported\"",
            rule.action,
            list(&raised)
        ));
    }
    Check::Refuse(format!(
        "it would make supported {}, which the Response Group application does not support, \
         and takes supported clients as well: one entry cannot say both; write the rule per \
         client token",
        list(&raised)
    ))
}
