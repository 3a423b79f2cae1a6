//! Lync / Skype for Business Client Version Policy rules, as an admin
//! exports them (`Get-CsClientVersionPolicyRule | ConvertTo-Json` or
//! `| Export-Csv`), read and turned into client catalog entries
//! (`sipadmit catalog import-cvp`).
//!
//! Pure: the caller reads the file; everything here works on its bytes.
//!
//! - [`read`]: bytes (UTF-8, UTF-8 with BOM, UTF-16 with BOM) → JSON or
//!   CSV → [`PolicyRule`]s, every problem named with its record and field.
//! - [`ClientVersionPolicy`]: the rules of one policy in priority order
//!   (two rules of one priority are refused);
//!   [`ClientVersionPolicy::first_match`] evaluates a User-Agent the way the
//!   policy does (first enabled rule by priority wins), the reference the
//!   import is tested against.
//! - [`translate`]: the policy → `[[clients]]` TOML with the same
//!   precedence, and [`Note`]s naming whatever the catalog cannot express.
//!   An `Allow` lets a client sign in; the entries say `supported` only for
//!   the clients the Response Group application supports (`support.rs`),
//!   and no rule takes a server component of the shipped catalog or makes
//!   supported a client it holds unsupported (`known.rs`: User-Agents of
//!   the Microsoft clients and servers and of the corpus's third-party
//!   mobile softphones).
//!
//! How a rule matches (Microsoft documents the fields, not the parser; this
//! is the reading sipadmit uses, shared with its catalog): `UserAgent` is a
//! product name, compared case-insensitively with the name of **every**
//! `product/version` token of the User-Agent (`OC` is the second token of
//! `UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)`); the rule
//! holds when one such token's version compares as `CompareOp` says with
//! `MajorVersion.MinorVersion.BuildNumber.QfeNumber`. A wildcard part (empty,
//! null or `*`) and every part after it are not compared: `OC EQL 4.*`
//! holds for every 4.x. A token without a version satisfies no comparison
//! (a rule whose four parts are all wildcards holds for the token whatever
//! its version, with EQL, GEQ and LEQ, and never with NEQ, GTR and LSS).

mod csv;
mod known;
pub mod read;
mod support;
pub mod translate;
mod version_set;

use std::fmt;

use crate::classify::{tokenize, CompareOp, Item, Version};
use crate::problem::Problem;

pub use read::{read_rules, ReadError};
pub use translate::{translate, CatalogImport, Note, NoteKind};

/// What a rule does with the clients it matches (`-Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    /// The client signs in.
    Allow,
    /// The client signs in and is upgraded through Windows Update or WSUS.
    AllowAndUpgrade,
    /// The client signs in and is shown `ActionUrl`.
    AllowWithUrl,
    /// The client does not sign in.
    Block,
    /// The client does not sign in and is upgraded.
    BlockAndUpgrade,
    /// The client does not sign in and is shown `ActionUrl`.
    BlockWithUrl,
}

impl PolicyAction {
    /// Every action, in Microsoft's order.
    pub const ALL: [Self; 6] = [
        Self::Allow,
        Self::AllowAndUpgrade,
        Self::AllowWithUrl,
        Self::Block,
        Self::BlockAndUpgrade,
        Self::BlockWithUrl,
    ];

    /// The name PowerShell prints (`AllowWithUrl`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::AllowAndUpgrade => "AllowAndUpgrade",
            Self::AllowWithUrl => "AllowWithUrl",
            Self::Block => "Block",
            Self::BlockAndUpgrade => "BlockAndUpgrade",
            Self::BlockWithUrl => "BlockWithUrl",
        }
    }

    /// Looks an action up by its name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether the client signs in (the three `Allow...` actions).
    pub fn allows(self) -> bool {
        matches!(
            self,
            Self::Allow | Self::AllowAndUpgrade | Self::AllowWithUrl
        )
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four version fields of a rule; `None` is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionPattern {
    /// `MajorVersion`, `MinorVersion`, `BuildNumber`, `QfeNumber`.
    pub parts: [Option<u16>; 4],
}

impl VersionPattern {
    /// The parts compared: those before the first wildcard.
    pub fn compared(&self) -> Vec<u16> {
        self.parts.iter().map_while(|p| *p).collect()
    }

    /// Whether a part is given after a wildcard (`4.*.7577`): not compared.
    pub fn has_part_after_wildcard(&self) -> bool {
        let compared = self.compared().len();
        self.parts[compared..].iter().any(Option::is_some)
    }
}

impl fmt::Display for VersionPattern {
    /// `15.0.4420.1017`, `4.*`, `*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last_given = self.parts.iter().rposition(Option::is_some);
        let shown = last_given.map_or(1, |i| i + 1).max(1);
        for (i, part) in self.parts[..shown].iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match part {
                Some(n) => write!(f, "{n}")?,
                None => f.write_str("*")?,
            }
        }
        if shown < 4 && self.parts[shown - 1].is_some() {
            f.write_str(".*")?;
        }
        Ok(())
    }
}

/// One rule of a client version policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Where it was read: `rule [3]` (JSON, 0-based) or `line 7` (CSV).
    pub origin: String,
    /// `Identity`, e.g. `site:Redmond/1987d3c2-...`, when exported.
    pub identity: Option<String>,
    /// `Priority`: 0 is evaluated first.
    pub priority: i32,
    /// `UserAgent`: the product name, e.g. `OC`.
    pub user_agent: String,
    /// `UserAgentFullName`, a display label.
    pub user_agent_full_name: Option<String>,
    /// The version compared against.
    pub version: VersionPattern,
    /// `CompareOp`: `<client version> <op> <version>`.
    pub op: CompareOp,
    /// `Action`.
    pub action: PolicyAction,
    /// `ActionUrl` (shown by the `...WithUrl` actions).
    pub action_url: Option<String>,
    /// `Enabled` (default true): a disabled rule is not evaluated.
    pub enabled: bool,
    /// `Description`.
    pub description: Option<String>,
}

impl PolicyRule {
    /// The scope of the policy the rule belongs to: `Identity` up to its
    /// last `/` (`site:Redmond`), or `None` without an Identity.
    pub fn scope(&self) -> Option<&str> {
        self.identity
            .as_deref()
            .map(|id| id.rsplit_once('/').map_or(id, |(scope, _)| scope))
    }

    /// `OC GEQ 15.0.4420.1017 -> Allow`.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} -> {}",
            self.user_agent, self.op, self.version, self.action
        )
    }

    /// Whether the rule holds for a User-Agent value (enabled or not).
    pub fn matches(&self, user_agent: &[u8]) -> bool {
        let compared = self.version.compared();
        tokenize(user_agent).any(|item| {
            let Item::Product { name, version } = item else {
                return false;
            };
            if !name.eq_ignore_ascii_case(self.user_agent.as_bytes()) {
                return false;
            }
            if compared.is_empty() {
                return matches!(self.op, CompareOp::Eql | CompareOp::Geq | CompareOp::Leq);
            }
            version
                .and_then(Version::parse)
                .is_some_and(|v| prefix_holds(self.op, &v.parts()[..compared.len()], &compared))
        })
    }
}

/// The key of a field of the rule read at `origin`: `[2].Priority` (JSON)
/// or `line 7, Priority` (CSV). The reader names its problems with it, and
/// [`ClientVersionPolicy::new`] the duplicate priorities.
fn field_key(origin: &str, field: &str) -> String {
    if origin.starts_with('[') {
        format!("{origin}.{field}")
    } else {
        format!("{origin}, {field}")
    }
}

/// `actual <op> wanted` on the compared parts, in order.
fn prefix_holds(op: CompareOp, actual: &[u32], wanted: &[u16]) -> bool {
    let ord = actual
        .iter()
        .copied()
        .cmp(wanted.iter().map(|&w| u32::from(w)));
    match op {
        CompareOp::Eql => ord.is_eq(),
        CompareOp::Neq => ord.is_ne(),
        CompareOp::Gtr => ord.is_gt(),
        CompareOp::Geq => ord.is_ge(),
        CompareOp::Lss => ord.is_lt(),
        CompareOp::Leq => ord.is_le(),
    }
}

/// The rules of one client version policy, in evaluation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientVersionPolicy {
    /// Every rule read (disabled ones included), sorted by priority; no two
    /// share a priority.
    pub rules: Vec<PolicyRule>,
}

/// Why the rules read cannot be taken as one policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Rules of several policies, and no scope chosen.
    #[error(
        "the export holds the rules of {} policies ({}): each is evaluated on its own; \
         choose one with --scope",
        scopes.len(),
        scopes.join(", ")
    )]
    Several {
        /// The scopes found, in order of first appearance.
        scopes: Vec<String>,
    },
    /// No rule has the scope asked for.
    #[error("no rule of scope {wanted:?} (scopes in the export: {})", found.join(", "))]
    NotFound {
        /// The scope asked for.
        wanted: String,
        /// The scopes found.
        found: Vec<String>,
    },
    /// Rules of the policy share a priority. Lync keeps the priorities of
    /// one policy unique, so the export was edited or merged, and which of
    /// such rules the policy evaluates first is unknown: refused rather
    /// than guessed from the file order.
    #[error(
        "{} rule(s) with the priority of an earlier rule of the same policy; Lync keeps the \
         priorities of a policy unique, so the export was edited or merged, and which rule \
         comes first is unknown: give each rule its own Priority{}",
        problems.len(),
        problems.iter().map(|p| format!("\n  {p}")).collect::<String>()
    )]
    DuplicatePriority {
        /// One per rule after the first of a priority:
        /// `line 14, Priority: 1, as on line 4`.
        problems: Vec<Problem>,
    },
}

/// How rules without an Identity are listed among scopes.
const NO_SCOPE: &str = "(no Identity)";

impl ClientVersionPolicy {
    /// The policy made of `rules`: those of `scope` when given (compared
    /// case-insensitively), else all of them, which must then be of one
    /// scope. Sorted by priority; two rules of one priority are refused
    /// ([`PolicyError::DuplicatePriority`]).
    pub fn new(rules: Vec<PolicyRule>, scope: Option<&str>) -> Result<Self, PolicyError> {
        let mut scopes: Vec<String> = Vec::new();
        for rule in &rules {
            let s = rule.scope().unwrap_or(NO_SCOPE);
            if !scopes.iter().any(|known| known.eq_ignore_ascii_case(s)) {
                scopes.push(s.to_owned());
            }
        }
        let mut rules = match scope {
            Some(wanted) => {
                let kept: Vec<PolicyRule> = rules
                    .into_iter()
                    .filter(|r| r.scope().unwrap_or(NO_SCOPE).eq_ignore_ascii_case(wanted))
                    .collect();
                if kept.is_empty() {
                    return Err(PolicyError::NotFound {
                        wanted: wanted.to_owned(),
                        found: scopes,
                    });
                }
                kept
            }
            None if scopes.len() > 1 => return Err(PolicyError::Several { scopes }),
            None => rules,
        };
        rules.sort_by_key(|r| r.priority);
        let problems: Vec<Problem> = rules
            .chunk_by(|a, b| a.priority == b.priority)
            .flat_map(|same| {
                same[1..].iter().map(|r| {
                    Problem::new(
                        field_key(&r.origin, "Priority"),
                        format!("{}, as on {}", r.priority, same[0].origin),
                    )
                })
            })
            .collect();
        if !problems.is_empty() {
            return Err(PolicyError::DuplicatePriority { problems });
        }
        Ok(Self { rules })
    }

    /// The rule that decides for a User-Agent: the first enabled rule, by
    /// priority, that holds; `None` when none does (the policy's
    /// `DefaultAction`, set in `Set-CsClientVersionConfiguration`, then
    /// applies).
    pub fn first_match(&self, user_agent: &[u8]) -> Option<&PolicyRule> {
        self.rules
            .iter()
            .filter(|r| r.enabled)
            .find(|r| r.matches(user_agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rule(ua: &str, op: CompareOp, version: &str, action: PolicyAction) -> PolicyRule {
        let mut parts = [None; 4];
        for (slot, text) in parts.iter_mut().zip(version.split('.')) {
            *slot = text.parse().ok();
        }
        PolicyRule {
            origin: "test".into(),
            identity: None,
            priority: 0,
            user_agent: ua.into(),
            user_agent_full_name: None,
            version: VersionPattern { parts },
            op,
            action,
            action_url: None,
            enabled: true,
            description: None,
        }
    }

    const LYNC_2013: &[u8] = b"UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
    const LYNC_2010: &[u8] = b"UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)";

    #[test]
    fn a_rule_looks_at_every_product_token_case_insensitively() {
        let r = rule("oc", CompareOp::Geq, "15.0.4420.1017", PolicyAction::Allow);
        assert!(r.matches(LYNC_2013));
        assert!(!r.matches(LYNC_2010));
        // A token inside a comment is not a product token.
        assert!(!r.matches(b"Foo/1 (OC/15.0.4481.1000)"));
        let uccapi = rule("UCCAPI", CompareOp::Lss, "15", PolicyAction::Block);
        assert!(uccapi.matches(LYNC_2010) && !uccapi.matches(LYNC_2013));
    }

    #[test]
    fn wildcards_stop_the_comparison() {
        let eql4 = rule("OC", CompareOp::Eql, "4.*", PolicyAction::Block);
        assert!(eql4.matches(LYNC_2010));
        assert!(!eql4.matches(LYNC_2013));
        let gtr15 = rule("OC", CompareOp::Gtr, "15.*", PolicyAction::Block);
        assert!(!gtr15.matches(LYNC_2013));
        assert!(gtr15.matches(b"OC/16.0.4417.1000"));
        let leq4 = rule("OC", CompareOp::Leq, "4.0.*", PolicyAction::Block);
        assert!(leq4.matches(LYNC_2010) && !leq4.matches(LYNC_2013));
        let neq15 = rule("OC", CompareOp::Neq, "15.*", PolicyAction::Block);
        assert!(neq15.matches(LYNC_2010) && !neq15.matches(LYNC_2013));
    }

    #[test]
    fn all_wildcards_match_the_token_whatever_its_version() {
        let any = rule("OC", CompareOp::Eql, "*", PolicyAction::Block);
        assert!(any.matches(LYNC_2013) && any.matches(b"OC") && !any.matches(b"OCPhone/4"));
        let never = rule("OC", CompareOp::Gtr, "*", PolicyAction::Block);
        assert!(!never.matches(LYNC_2013));
        // A token without a version satisfies no comparison.
        let geq = rule("OC", CompareOp::Geq, "1", PolicyAction::Block);
        assert!(!geq.matches(b"OC (no version)"));
    }

    #[test]
    fn first_enabled_rule_by_priority_wins() {
        let mut allow = rule("OC", CompareOp::Geq, "15", PolicyAction::Allow);
        allow.priority = 1;
        let mut block = rule("OC", CompareOp::Lss, "16", PolicyAction::Block);
        block.priority = 0;
        let policy = ClientVersionPolicy::new(vec![allow.clone(), block.clone()], None).unwrap();
        assert_eq!(
            policy.first_match(LYNC_2013).map(|r| r.action),
            Some(PolicyAction::Block)
        );
        block.enabled = false;
        let policy = ClientVersionPolicy::new(vec![allow, block], None).unwrap();
        assert_eq!(
            policy.first_match(LYNC_2013).map(|r| r.action),
            Some(PolicyAction::Allow)
        );
        assert_eq!(policy.first_match(b"Acme/1"), None);
    }

    #[test]
    fn several_scopes_need_a_choice() {
        let mut a = rule("OC", CompareOp::Geq, "15", PolicyAction::Allow);
        a.identity = Some("Global/6f9c1f33-0000-4000-8000-000000000001".into());
        let mut b = a.clone();
        b.identity = Some("site:Redmond/6f9c1f33-0000-4000-8000-000000000002".into());
        let err = ClientVersionPolicy::new(vec![a.clone(), b.clone()], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the export holds the rules of 2 policies (Global, site:Redmond): each is \
             evaluated on its own; choose one with --scope"
        );
        let site =
            ClientVersionPolicy::new(vec![a.clone(), b.clone()], Some("SITE:redmond")).unwrap();
        assert_eq!(site.rules, [b.clone()]);
        let err = ClientVersionPolicy::new(vec![a, b], Some("site:Paris")).unwrap_err();
        assert!(err.to_string().contains("\"site:Paris\""), "{err}");
    }

    #[test]
    fn duplicate_priorities_of_one_policy_are_refused_naming_both_rules() {
        let at = |priority, origin: &str, action| PolicyRule {
            priority,
            origin: origin.into(),
            identity: Some(format!("Global/{origin}")),
            ..rule("OC", CompareOp::Geq, "15", action)
        };
        let rules = vec![
            at(1, "line 4", PolicyAction::Allow),
            at(0, "line 3", PolicyAction::Allow),
            at(1, "line 14", PolicyAction::Block),
            at(1, "line 15", PolicyAction::Block),
        ];
        let err = ClientVersionPolicy::new(rules.clone(), None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("2 rule(s) with the priority of an earlier rule of the same policy"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "give each rule its own Priority\n  line 14, Priority: 1, as on line 4\n  \
                 line 15, Priority: 1, as on line 4"
            ),
            "{text}"
        );
        // JSON records are named by index; other scopes do not count.
        let mut json = rules[..3].to_vec();
        json[2].origin = "[7]".into();
        json[2].identity = Some("site:Paris/x".into());
        assert!(ClientVersionPolicy::new(json.clone(), Some("Global")).is_ok());
        json[2].identity = Some("Global/x".into());
        let err = ClientVersionPolicy::new(json, None).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("\n  [7].Priority: 1, as on line 4"),
            "{err}"
        );
    }

    #[test]
    fn version_patterns_print_as_the_control_panel_shows_them() {
        let p = |parts| VersionPattern { parts }.to_string();
        assert_eq!(
            p([Some(15), Some(0), Some(4420), Some(1017)]),
            "15.0.4420.1017"
        );
        assert_eq!(p([Some(4), None, None, None]), "4.*");
        assert_eq!(p([None, None, None, None]), "*");
        assert_eq!(p([Some(4), None, Some(7577), None]), "4.*.7577.*");
    }
}
