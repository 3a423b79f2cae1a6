//! Stage 4, decide: what the filter does with a classified message.
//!
//! Pure and deterministic: [`decide`] maps (role, client support, policy)
//! to a typed [`Decision`] with the id of the rule that decided. No I/O, no
//! clock. Role recognition ([`SessionMatchers::role_of`]) is pure as well.

pub mod pattern;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::classify::Support;
use crate::sip::fields::contains_ignore_case;
use crate::sip::Method;
use pattern::{Network, UriPattern};

/// What the filter does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Relay unchanged (apart from the proxy's own edits).
    Allow,
    /// Relay with a flag header, and log a warning.
    Flag,
    /// Answer locally with the role's configured response.
    Reject,
    /// Discard silently (logged and counted).
    Drop,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Self; 4] = [Self::Allow, Self::Flag, Self::Reject, Self::Drop];

    /// The name used in config files and decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Flag => "flag",
            Self::Reject => "reject",
            Self::Drop => "drop",
        }
    }
}

/// Enforce the policy, or only watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rejects are answered.
    #[default]
    Enforce,
    /// Rejects become flags marked `would_reject`.
    Monitor,
}

impl Mode {
    /// The name used in config files and decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

/// The part a message plays in a Response Group session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionRole {
    /// An INVITE to a workflow URI.
    Caller,
    /// An INVITE from the Response Group application to an agent endpoint.
    AgentOffer,
    /// A REGISTER of a configured agent address of record.
    AgentRegistration,
    /// Not part of a Response Group session.
    None,
}

impl SessionRole {
    /// Every role, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Caller,
        Self::AgentOffer,
        Self::AgentRegistration,
        Self::None,
    ];

    /// The name used in decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::AgentOffer => "agent-offer",
            Self::AgentRegistration => "agent-registration",
            Self::None => "none",
        }
    }
}

/// The response a reject answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code (400 to 699; below 600 for agent offers).
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Warning header value; `{client}` is replaced by the client's display name.
    pub warning: Option<String>,
    /// Extra header lines (name, value), e.g. `ms-diagnostics`.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The Warning value with the client's name filled in.
    pub fn warning_for(&self, client_name: &str) -> Option<String> {
        // Inside the Warning's quoted text (RFC 3261 25.1 quoted-string): a
        // catalog name's `"` and `\` escaped (quoted-pair), and control
        // characters, which neither qdtext nor quoted-pair may carry (a line
        // break would start a header of its own), as spaces. The catalog
        // refuses them; this holds whatever the name.
        let escaped = crate::terminal_text::one_line(client_name)
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        self.warning
            .as_ref()
            .map(|w| w.replace("{client}", &escaped))
    }
}

/// What to do, per support class, for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// Clients the Response Group application does not support.
    pub unsupported: Action,
    /// Non-Microsoft clients.
    pub third_party: Action,
    /// Unknown and missing User-Agents.
    pub unknown: Action,
    /// The response of a reject.
    pub reply: Reply,
    /// The response of a reject of an unknown or missing User-Agent: the
    /// same status and reason, but a Warning (and, by default, headers)
    /// that say sipadmit does not recognise the client rather than that the
    /// Response Group does not support it.
    pub unknown_reply: Reply,
}

/// The whole admission policy, compiled from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Enforce or monitor.
    pub mode: Mode,
    /// Scanners, whatever the role (default drop).
    pub scanner: Action,
    /// INVITEs to workflow URIs.
    pub caller: RolePolicy,
    /// Offers from the Response Group application to agents.
    pub agent_offer: RolePolicy,
    /// REGISTERs of agents.
    pub agent_registration: RolePolicy,
}

/// What the policy says to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// Relay unchanged (apart from the proxy's own edits).
    Allow,
    /// Relay with the flag header, and log a warning.
    Flag {
        /// Monitor mode turned a reject into this flag.
        would_reject: bool,
    },
    /// Answer locally with this response.
    Reject(&'p Reply),
    /// Discard silently (logged and counted).
    Drop,
}

impl Verdict<'_> {
    /// The action named in decision records.
    pub fn action(self) -> Action {
        match self {
            Self::Allow => Action::Allow,
            Self::Flag { .. } => Action::Flag,
            Self::Reject(_) => Action::Reject,
            Self::Drop => Action::Drop,
        }
    }

    /// Whether monitor mode turned a reject into a flag.
    pub fn would_reject(self) -> bool {
        matches!(self, Self::Flag { would_reject: true })
    }
}

/// The outcome of [`decide`]: the verdict and the rule that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    /// What to do (after monitor mode is applied); a reject carries its
    /// response.
    pub verdict: Verdict<'p>,
    /// Id of the policy rule that decided, e.g. `caller.unsupported`.
    pub rule: &'static str,
}

/// Decide what to do with a message of `role` from a client of `support`.
pub fn decide(policy: &Policy, role: SessionRole, support: Support) -> Decision<'_> {
    let (action, rule, role_policy) = match (support, role) {
        (Support::Scanner, _) => (policy.scanner, "scanner", None),
        (Support::Service, _) => (Action::Allow, "service", None),
        (Support::Supported, _) => (Action::Allow, "supported", None),
        _ => match role_rule(policy, role, support) {
            Some((action, rule, reply)) => (action, rule, Some(reply)),
            None => (Action::Allow, "no-session", None),
        },
    };
    let verdict = match (action, policy.mode) {
        (Action::Allow, _) => Verdict::Allow,
        (Action::Flag, _) => Verdict::Flag {
            would_reject: false,
        },
        // Monitor mode refuses nothing the policy of a role would refuse,
        // by a reject or a drop: it relays it, flagged. Scanners are
        // dropped in either mode.
        (Action::Reject, Mode::Monitor) => Verdict::Flag { would_reject: true },
        (Action::Drop, Mode::Monitor) if role_policy.is_some() => {
            Verdict::Flag { would_reject: true }
        }
        (Action::Drop, _) => Verdict::Drop,
        // A scanner rule set to reject has no role reply: answer 403.
        (Action::Reject, Mode::Enforce) => Verdict::Reject(role_policy.unwrap_or(&SCANNER_REPLY)),
    };
    Decision { verdict, rule }
}

/// The reply a reject by the policy of `role` gives a client of
/// `support`, and its rule, whatever action is configured now: what a copy
/// of a request rejected before a reload is answered again with. `None`
/// where no role policy applies (scanners, services, supported clients,
/// requests of no role).
pub fn reject_reply(
    policy: &Policy,
    role: SessionRole,
    support: Support,
) -> Option<(&Reply, &'static str)> {
    role_rule(policy, role, support).map(|(_, rule, reply)| (reply, rule))
}

/// What the policy of `role` says for a client of `support`: its action,
/// rule and reject reply; `None` where no role policy applies.
fn role_rule(
    policy: &Policy,
    role: SessionRole,
    support: Support,
) -> Option<(Action, &'static str, &Reply)> {
    let rp = match (support, role) {
        (Support::Scanner | Support::Service | Support::Supported, _) | (_, SessionRole::None) => {
            return None
        }
        (_, SessionRole::Caller) => &policy.caller,
        (_, SessionRole::AgentOffer) => &policy.agent_offer,
        (_, SessionRole::AgentRegistration) => &policy.agent_registration,
    };
    let (action, class, reply) = match support {
        Support::Unsupported => (rp.unsupported, 0, &rp.reply),
        Support::ThirdParty => (rp.third_party, 1, &rp.reply),
        _ => (rp.unknown, 2, &rp.unknown_reply),
    };
    Some((action, RULES[role_index(role)][class], reply))
}

static SCANNER_REPLY: Reply = Reply {
    status: 403,
    reason: String::new(),
    warning: None,
    headers: Vec::new(),
};

const RULES: [[&str; 3]; 3] = [
    ["caller.unsupported", "caller.third-party", "caller.unknown"],
    [
        "agent-offer.unsupported",
        "agent-offer.third-party",
        "agent-offer.unknown",
    ],
    [
        "agent-registration.unsupported",
        "agent-registration.third-party",
        "agent-registration.unknown",
    ],
];

fn role_index(role: SessionRole) -> usize {
    match role {
        SessionRole::Caller => 0,
        SessionRole::AgentOffer => 1,
        _ => 2,
    }
}

/// How Response Group sessions are recognised (from `[response_group]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionMatchers {
    /// Workflow URIs: an INVITE to one is a caller.
    pub workflows: Vec<UriPattern>,
    /// Lowercased substrings of the Response Group application's User-Agent.
    pub application_user_agents: Vec<String>,
    /// From URIs of the Response Group application.
    pub application_from_uris: Vec<UriPattern>,
    /// Source networks of the Response Group application.
    pub application_sources: Vec<Network>,
    /// Agent addresses of record: a REGISTER of one is an agent registration.
    pub agents: Vec<UriPattern>,
}

/// The facts about a request that decide its role.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    /// Request method.
    pub method: Method,
    /// Request-URI.
    pub request_uri: &'a [u8],
    /// To URI.
    pub to_uri: &'a [u8],
    /// From URI.
    pub from_uri: &'a [u8],
    /// User-Agent value, if any.
    pub user_agent: Option<&'a [u8]>,
    /// Source address of the message.
    pub source: IpAddr,
}

impl SessionMatchers {
    /// Whether the request comes from the Response Group application.
    pub fn is_application(&self, facts: &SessionFacts<'_>) -> bool {
        facts.user_agent.is_some_and(|ua| {
            self.application_user_agents
                .iter()
                .any(|needle| contains_ignore_case(ua, needle.as_bytes()))
        }) || UriPattern::any_matches(&self.application_from_uris, facts.from_uri)
            || self
                .application_sources
                .iter()
                .any(|n| n.contains(facts.source))
    }

    /// The role of a request.
    pub fn role_of(&self, facts: &SessionFacts<'_>) -> SessionRole {
        match facts.method {
            Method::Invite if UriPattern::any_matches(&self.workflows, facts.request_uri) => {
                SessionRole::Caller
            }
            Method::Invite if self.is_application(facts) => SessionRole::AgentOffer,
            Method::Register if UriPattern::any_matches(&self.agents, facts.to_uri) => {
                SessionRole::AgentRegistration
            }
            _ => SessionRole::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            reason: "R".into(),
            warning: Some("399 sipadmit \"{client} not supported\"".into()),
            headers: vec![],
        }
    }

    #[test]
    fn a_client_name_is_escaped_inside_the_warning_text() {
        assert_eq!(
            reply(403).warning_for(r#"Phone "X" \ 2"#).unwrap(),
            r#"399 sipadmit "Phone \"X\" \\ 2 not supported""#
        );
    }

    #[test]
    fn no_control_character_of_a_client_name_reaches_the_warning() {
        let warning = reply(403)
            .warning_for("Evil\r\nX-Injected: yes\r\n\u{1}\u{7f}\u{85}")
            .unwrap();
        assert_eq!(
            warning,
            "399 sipadmit \"Evil  X-Injected: yes      not supported\""
        );
    }

    fn policy(mode: Mode) -> Policy {
        let rp = |unsupported, status| RolePolicy {
            unsupported,
            third_party: Action::Allow,
            unknown: Action::Flag,
            reply: reply(status),
            unknown_reply: Reply {
                warning: Some("399 sipadmit \"{client} not recognised\"".into()),
                ..reply(status)
            },
        };
        Policy {
            mode,
            scanner: Action::Drop,
            caller: rp(Action::Reject, 403),
            agent_offer: rp(Action::Reject, 480),
            agent_registration: rp(Action::Flag, 403),
        }
    }

    #[test]
    fn table_over_role_support_and_mode() {
        use Action::*;
        use SessionRole as R;
        use Support as S;
        // (role, support, enforce action, enforce status, monitor action, would_reject, rule)
        type Row = (R, S, Action, Option<u16>, Action, bool, &'static str);
        let rows: &[Row] = &[
            (
                R::Caller,
                S::Unsupported,
                Reject,
                Some(403),
                Flag,
                true,
                "caller.unsupported",
            ),
            (
                R::Caller,
                S::Supported,
                Allow,
                None,
                Allow,
                false,
                "supported",
            ),
            (R::Caller, S::Service, Allow, None, Allow, false, "service"),
            (
                R::Caller,
                S::ThirdParty,
                Allow,
                None,
                Allow,
                false,
                "caller.third-party",
            ),
            (
                R::Caller,
                S::Unknown,
                Flag,
                None,
                Flag,
                false,
                "caller.unknown",
            ),
            (R::Caller, S::Scanner, Drop, None, Drop, false, "scanner"),
            (
                R::AgentOffer,
                S::Unsupported,
                Reject,
                Some(480),
                Flag,
                true,
                "agent-offer.unsupported",
            ),
            (
                R::AgentOffer,
                S::Supported,
                Allow,
                None,
                Allow,
                false,
                "supported",
            ),
            (
                R::AgentOffer,
                S::Unknown,
                Flag,
                None,
                Flag,
                false,
                "agent-offer.unknown",
            ),
            (
                R::AgentOffer,
                S::ThirdParty,
                Allow,
                None,
                Allow,
                false,
                "agent-offer.third-party",
            ),
            (
                R::AgentOffer,
                S::Scanner,
                Drop,
                None,
                Drop,
                false,
                "scanner",
            ),
            (
                R::AgentRegistration,
                S::Unsupported,
                Flag,
                None,
                Flag,
                false,
                "agent-registration.unsupported",
            ),
            (
                R::AgentRegistration,
                S::Supported,
                Allow,
                None,
                Allow,
                false,
                "supported",
            ),
            (
                R::AgentRegistration,
                S::Unknown,
                Flag,
                None,
                Flag,
                false,
                "agent-registration.unknown",
            ),
            (
                R::AgentRegistration,
                S::Service,
                Allow,
                None,
                Allow,
                false,
                "service",
            ),
            (
                R::None,
                S::Unsupported,
                Allow,
                None,
                Allow,
                false,
                "no-session",
            ),
            (R::None, S::Unknown, Allow, None, Allow, false, "no-session"),
            (R::None, S::Scanner, Drop, None, Drop, false, "scanner"),
        ];
        let (enforce, monitor) = (policy(Mode::Enforce), policy(Mode::Monitor));
        let status = |d: Decision<'_>| match d.verdict {
            Verdict::Reject(reply) => Some(reply.status),
            _ => None,
        };
        for &(role, support, e_action, e_status, m_action, would, rule) in rows {
            let d = decide(&enforce, role, support);
            assert_eq!(d.verdict.action(), e_action, "{role:?} {support:?} enforce");
            assert_eq!(status(d), e_status, "{role:?} {support:?}");
            assert_eq!(d.rule, rule);
            assert!(!d.verdict.would_reject());
            let m = decide(&monitor, role, support);
            assert_eq!(
                (m.verdict.action(), m.verdict.would_reject(), m.rule),
                (m_action, would, rule),
                "{role:?} {support:?} monitor"
            );
            assert_eq!(status(m), None, "monitor mode answers nothing");
        }
    }

    #[test]
    fn monitor_mode_relays_what_a_roles_drop_would_refuse_and_still_drops_scanners() {
        let mut enforce = policy(Mode::Enforce);
        enforce.caller.unsupported = Action::Drop;
        let monitor = Policy {
            mode: Mode::Monitor,
            ..enforce.clone()
        };
        let d = decide(&enforce, SessionRole::Caller, Support::Unsupported);
        assert_eq!((d.verdict, d.rule), (Verdict::Drop, "caller.unsupported"));
        let m = decide(&monitor, SessionRole::Caller, Support::Unsupported);
        assert_eq!(
            (m.verdict, m.rule),
            (Verdict::Flag { would_reject: true }, "caller.unsupported")
        );
        let scanner = decide(&monitor, SessionRole::Caller, Support::Scanner);
        assert_eq!(scanner.verdict, Verdict::Drop);
    }

    #[test]
    fn agent_registration_reject_when_configured_and_warning_names_client() {
        let mut p = policy(Mode::Enforce);
        p.agent_registration.unsupported = Action::Reject;
        let d = decide(&p, SessionRole::AgentRegistration, Support::Unsupported);
        let Verdict::Reject(r) = d.verdict else {
            panic!("a reject: {d:?}");
        };
        assert_eq!(r.status, 403);
        assert_eq!(
            r.warning_for("Lync mobile").unwrap(),
            "399 sipadmit \"Lync mobile not supported\""
        );
    }

    #[test]
    fn scanner_reject_gets_a_reply() {
        let mut p = policy(Mode::Enforce);
        p.scanner = Action::Reject;
        let d = decide(&p, SessionRole::None, Support::Scanner);
        assert_eq!(d.verdict, Verdict::Reject(&SCANNER_REPLY));
        assert_eq!(SCANNER_REPLY.status, 403);
    }

    fn facts<'a>(method: Method, ruri: &'a [u8], ua: Option<&'a [u8]>) -> SessionFacts<'a> {
        SessionFacts {
            method,
            request_uri: ruri,
            to_uri: ruri,
            from_uri: b"sip:someone@contoso.com",
            user_agent: ua,
            source: "192.0.2.1".parse().unwrap(),
        }
    }

    #[test]
    fn roles() {
        let m = SessionMatchers {
            workflows: vec![UriPattern::new("sip:helpdesk@contoso.com").unwrap()],
            application_user_agents: vec!["response_group_service".into()],
            application_from_uris: vec![UriPattern::new("sip:rgs@contoso.com").unwrap()],
            application_sources: vec![Network::parse("10.0.0.0/8").unwrap()],
            agents: vec![UriPattern::new("sip:agent-*@contoso.com").unwrap()],
        };
        let rg = Some(&b"RTCC/5.0.0.0 Response_Group_Service/5.0.0.0"[..]);
        assert_eq!(
            m.role_of(&facts(Method::Invite, b"sip:helpdesk@contoso.com", None)),
            SessionRole::Caller
        );
        assert_eq!(
            m.role_of(&facts(Method::Invite, b"sip:agent-1@contoso.com", rg)),
            SessionRole::AgentOffer
        );
        assert_eq!(
            m.role_of(&facts(Method::Invite, b"sip:agent-1@contoso.com", None)),
            SessionRole::None
        );
        let mut f = facts(Method::Invite, b"sip:x@contoso.com", None);
        f.source = "10.1.1.1".parse().unwrap();
        assert_eq!(m.role_of(&f), SessionRole::AgentOffer);
        let mut f = facts(Method::Invite, b"sip:x@contoso.com", None);
        f.from_uri = b"sip:rgs@contoso.com";
        assert_eq!(m.role_of(&f), SessionRole::AgentOffer);
        assert_eq!(
            m.role_of(&facts(Method::Register, b"sip:agent-7@contoso.com", None)),
            SessionRole::AgentRegistration
        );
        assert_eq!(
            m.role_of(&facts(Method::Register, b"sip:bob@contoso.com", None)),
            SessionRole::None
        );
        assert_eq!(
            m.role_of(&facts(Method::Options, b"sip:helpdesk@contoso.com", None)),
            SessionRole::None
        );
    }
}
