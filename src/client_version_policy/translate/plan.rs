//! The entries of one rule: their Response Group support (see
//! [`super::super::support`]), split where one `UserAgent` code holds
//! supported and unsupported clients, and checked against the known
//! Microsoft clients the rule would take.

use super::super::known::{roles_text, Known};
use super::super::support::{
    code_support, CodeSupport, ALL_ROLES, ATTENDANT_COMMENT, LYNC_2010_MAJOR, LYNC_2013_MAJOR,
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
    /// Why the support or the roles are not what the action says, for the
    /// comment.
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
pub(super) fn plan(
    rule: &PolicyRule,
    cond: &Condition,
    token: &TokenRules,
) -> Result<Plan, String> {
    let compare = match cond {
        Condition::AnyVersion => Vec::new(),
        Condition::Compare { rules, .. } => rules.clone(),
    };
    let plain = |entry| {
        Ok(Plan {
            entries: vec![entry],
            not_supported: None,
        })
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
            Ok(Plan {
                entries: vec![Entry::new("unsupported", "[]", compare).unsupported(why.clone())],
                not_supported: Some(why),
            })
        }
        CodeSupport::FromLync2010 => from_lync_2010(rule, cond, compare, token),
    }
}

/// A version `major.0.0.0`.
fn major(n: u32) -> Key {
    version_set::key([n, 0, 0, 0])
}

/// One entry of an allowed `OC` / `UCCAPI` rule, for the clients of one
/// band of versions (with the Attendant's comment, or the rest).
struct Part {
    /// Added to the rule's id.
    id_suffix: &'static str,
    /// Which clients (after the code: `OC from 15: ...`).
    part: &'static str,
    /// `category`, when not the code's (`desktop`).
    category: Option<&'static str>,
    /// `support` and `roles`; `None`: unsupported, no role.
    roles: Option<&'static str>,
    /// A comment the User-Agent must hold as well.
    comment: Option<&'static str>,
}

/// Callers and informal agents (Lync 2010 desktop).
const CALLER_INFORMAL: &str = r#"["caller", "informal-agent"]"#;

/// The `OC` / `UCCAPI` versions the shipped catalog tells apart, each from
/// a major version to the next band's, lowest first, with their clients:
/// below 3 Communicator 2007 and earlier (unsupported); 3.x the OCS 2007
/// R2 Attendant (every role) and Communicator 2007 R2 (unsupported); 4 to
/// 14 the Lync 2010 Attendant (every role) and Lync 2010 (caller and
/// informal agent: formal agents need Lync 2013 or an Attendant); from 15
/// Lync 2013 and Skype for Business (every role).
const BANDS: [(u32, &[Part]); 4] = [
    (
        0,
        &[Part {
            id_suffix: "-before-3",
            part: "below 3: Office Communicator 2007 and earlier",
            category: None,
            roles: None,
            comment: None,
        }],
    ),
    (
        3,
        &[
            Part {
                id_suffix: "-ocs-2007r2-attendant",
                part: "3.x, Attendant: OCS 2007 R2 Attendant",
                category: Some("attendant"),
                roles: Some(ALL_ROLES),
                comment: Some(ATTENDANT_COMMENT),
            },
            Part {
                id_suffix: "-communicator-2007r2",
                part: "3.x: Office Communicator 2007 R2",
                category: None,
                roles: None,
                comment: None,
            },
        ],
    ),
    (
        LYNC_2010_MAJOR,
        &[
            Part {
                id_suffix: "-lync-2010-attendant",
                part: "4 to 14.x, Attendant: Lync 2010 Attendant",
                category: Some("attendant"),
                roles: Some(ALL_ROLES),
                comment: Some(ATTENDANT_COMMENT),
            },
            Part {
                id_suffix: "-lync-2010",
                part: "4 to 14.x: Lync 2010",
                category: None,
                roles: Some(CALLER_INFORMAL),
                comment: None,
            },
        ],
    ),
    (
        LYNC_2013_MAJOR,
        &[Part {
            id_suffix: "-lync-2013",
            part: "from 15: Lync 2013 and Skype for Business",
            category: None,
            roles: Some(ALL_ROLES),
            comment: None,
        }],
    ),
];

/// The entry below 3 when it also takes Communicator 2007 R2 (3.x but the
/// Attendant, written `GEQ 3` before it).
const BELOW_4: Part = Part {
    id_suffix: "-before-4",
    part: "below 4: Office Communicator 2007 R2 and earlier",
    category: None,
    roles: None,
    comment: None,
};

/// The versions of band `i` of [`BANDS`].
fn band(i: usize) -> (Key, Key) {
    let hi = BANDS.get(i + 1).map_or(MAX, |&(next, _)| major(next) - 1);
    (major(BANDS[i].0), hi)
}

/// An allowed `OC` / `UCCAPI` rule: one entry per client of each band of
/// [`BANDS`] the rule takes versions of. Bands are peeled off the rule's
/// versions from the top (`GEQ <band>`, when the earlier rules and this
/// one take every version from there on) or from the bottom (`LSS <next
/// band>`, when they take every version below), highest first and lowest
/// first, and the last band takes what is left with the rule's own
/// comparisons: together they take exactly the rule's versions.
fn from_lync_2010(
    rule: &PolicyRule,
    cond: &Condition,
    compare: Vec<Comparison>,
    token: &TokenRules,
) -> Result<Plan, String> {
    let mut written = VersionSet::default();
    match cond {
        Condition::AnyVersion => written.add(0, MAX),
        Condition::Compare { taken, .. } => written.extend(taken),
    }
    let mut reach = token.taken.clone();
    reach.extend(&written);
    // A token without a version: no band, the entry without comparison
    // (the lowest band's, unsupported as the shipped catalog says).
    let versionless = matches!(cond, Condition::AnyVersion) && token.versionless.is_none();
    let live: Vec<usize> = (0..BANDS.len())
        .filter(|&i| {
            let (lo, hi) = band(i);
            (i == 0 && versionless) || !token.taken.contains(&written.within(lo, hi))
        })
        .collect();
    let (Some(&first), Some(&last)) = (live.first(), live.last()) else {
        return Err(format!("no {} version left to take", rule.user_agent));
    };
    let (mut lo, mut hi) = (first, last);
    let (mut top, mut bottom) = (Vec::new(), Vec::new());
    let one = |op, version| vec![Comparison { op, version }];
    let mut below_4 = false;
    while lo < hi {
        let (from, _) = band(hi);
        let (_, to) = band(lo);
        if reach.covers(from, MAX) {
            let mut parts = BANDS[hi].1;
            // 3.x but the Attendant is unsupported, as is all below 3: the
            // last entry takes both.
            below_4 = hi == 1 && lo == 0;
            if below_4 {
                parts = &parts[..1];
            }
            top.extend(parts.iter().map(|p| (p, one(CompareOp::Geq, from))));
            hi = live.iter().rev().copied().find(|&i| i < hi).unwrap_or(lo);
        } else if reach.covers(0, to) {
            let parts = BANDS[lo].1.iter();
            bottom.extend(parts.map(|p| (p, one(CompareOp::Lss, to + 1))));
            lo = live.iter().copied().find(|&i| i > lo).unwrap_or(hi);
        } else {
            return Err(format!(
                "the {} clients the Response Group application supports differ below and from \
                 {} versions this rule leaves to later rules on both sides; write it as \
                 several rules",
                rule.user_agent, BANDS[hi].0
            ));
        }
    }
    let last: &[Part] = if below_4 {
        std::slice::from_ref(&BELOW_4)
    } else {
        BANDS[lo].1
    };
    let chosen: Vec<(&Part, Vec<Comparison>)> = top
        .into_iter()
        .chain(bottom)
        .chain(last.iter().map(|p| (p, compare.clone())))
        .collect();
    Ok(oc_plan(rule, chosen))
}

/// The entries of an allowed `OC` / `UCCAPI` rule from their parts: one
/// plain entry when one part is all, and a note when a part is
/// unsupported.
fn oc_plan(rule: &PolicyRule, chosen: Vec<(&Part, Vec<Comparison>)>) -> Plan {
    let why = format!(
        "{} lets them sign in; the Response Group application supports {} clients from \
         {LYNC_2010_MAJOR} on (Lync 2010 and later) and, below {LYNC_2010_MAJOR}, only the OCS \
         2007 R2 Attendant (3.x, comment \"{ATTENDANT_COMMENT}\")",
        rule.action, rule.user_agent
    );
    let alone = chosen.len() == 1;
    let mut unsupported = false;
    let entries = chosen
        .into_iter()
        .map(|(p, compare)| {
            let mut entry = match p.roles {
                Some(roles) => Entry::new("supported", roles, compare),
                None => {
                    unsupported = true;
                    Entry::new("unsupported", "[]", compare).unsupported(why.clone())
                }
            };
            if p.roles == Some(CALLER_INFORMAL) {
                entry.why = Some(
                    "Lync 2010 takes Response Group calls as a caller or an informal agent; \
                     formal agents need Lync 2013 or an Attendant"
                        .into(),
                );
            }
            if !alone {
                entry.id_suffix = p.id_suffix;
                entry.part = Some(p.part);
            }
            Entry {
                category: p.category,
                comment: p.comment,
                ..entry
            }
        })
        .collect();
    Plan {
        entries,
        not_supported: unsupported.then(|| {
            format!(
                "{} below {LYNC_2010_MAJOR} (Office Communicator 2007 R2 and earlier) gets \
                 support \"unsupported\": {why}",
                rule.user_agent
            )
        }),
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
/// component, an allowed rule must give each known client the shipped
/// catalog supports its shipped support and roles (else the rule is
/// refused: the code table is wrong), and an entry may not make a known
/// client `supported` that the shipped catalog holds `unsupported` (a
/// Microsoft mobile client, a third-party mobile softphone), unless, for a
/// code sipadmit does not know, every known client it takes is such a
/// client (then the entry becomes `unsupported`); a rule that takes such
/// clients and others (`Allow Bria`: Bria for iOS and Bria desktop) is
/// refused. Known clients of support `third-party` may be made supported:
/// that is what an allow of their code says.
pub(super) fn check_known(rule: &PolicyRule, entries: &str, decided: &[&Known]) -> Check {
    let services: Vec<&Known> = decided
        .iter()
        .copied()
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
    if rule.action.allows() {
        check_allowed(rule, &catalog, decided)
    } else {
        Check::Keep
    }
}

/// [`check_known`] for an allowed rule whose entries are `catalog`.
fn check_allowed(rule: &PolicyRule, catalog: &Catalog, decided: &[&Known]) -> Check {
    let differ: Vec<String> = decided.iter().filter_map(|k| differs(catalog, k)).collect();
    if !differ.is_empty() {
        return Check::Refuse(format!(
            "its entries would give {}: the Response Group support of its code (support.rs) \
             disagrees with the shipped catalog (a bug of sipadmit's import, please report it)",
            differ.join("; ")
        ));
    }
    let (raised, others): (Vec<&Known>, Vec<&Known>) = decided
        .iter()
        .copied()
        .partition(|k| k.support == Support::Unsupported);
    let raised: Vec<&Known> = raised
        .into_iter()
        .filter(|k| {
            let c = catalog.classify(Some(k.user_agent.as_bytes()));
            c.client.support == Support::Supported
        })
        .collect();
    if raised.is_empty() {
        return Check::Keep;
    }
    if code_support(&rule.user_agent) == CodeSupport::NotKnown && others.is_empty() {
        return Check::Unsupported(format!(
            "{} lets them sign in, and the Response Group application does not support the \
             known clients it takes: {}: support \"unsupported\"",
            rule.action,
            list(&raised)
        ));
    }
    if others.is_empty() {
        return Check::Refuse(format!(
            "it would make supported {}, which the Response Group application does not \
             support: the entry of {} in support.rs says otherwise (a bug of sipadmit's import, \
             please report it)",
            list(&raised),
            rule.user_agent
        ));
    }
    Check::Refuse(format!(
        "it would make supported {}, which the Response Group application does not support, \
         and takes {} as well, which the shipped catalog does not hold unsupported: one entry \
         cannot say both (write the rule on a token only one of them holds, or a catalog \
         entry by hand)",
        list(&raised),
        list(&others)
    ))
}

/// The known clients, at most four named, and the count of the others.
fn list(known: &[&Known]) -> String {
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
}

/// What `entries` give a known client the shipped catalog supports, when
/// that is not the shipped support and roles: `Lync 2010 ("...") support
/// supported, roles [...] (shipped: ...)`.
fn differs(entries: &Catalog, known: &Known) -> Option<String> {
    if known.support != Support::Supported {
        return None;
    }
    let c = entries.classify(Some(known.user_agent.as_bytes()));
    if c.client.support == Support::Supported && c.client.roles == known.roles {
        return None;
    }
    Some(format!(
        "{} ({:?}) support {}, roles {}, where the shipped catalog says support supported, \
         roles {}",
        known.name,
        known.user_agent,
        c.client.support,
        roles_text(&c.client.roles),
        roles_text(&known.roles)
    ))
}
