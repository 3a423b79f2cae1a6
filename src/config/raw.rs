//! The config file as written: serde structs with documented defaults.
//! Unknown keys are refused. [`super::validate`] turns this into a
//! [`super::Config`] that cannot be invalid.

use serde::Deserialize;

use crate::policy::{Action, Mode};

/// The whole file (`config/sipadmit.toml` documents every key).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[proxy]`: listeners, upstream, mode, logs.
    pub proxy: RawProxy,
    /// `[limits]`: sizes, counts and timeouts.
    pub limits: RawLimits,
    /// `[catalog]`: where the client catalog is.
    pub catalog: RawCatalog,
    /// `[response_group]`: how Response Group sessions are recognised.
    pub response_group: RawResponseGroup,
    /// `[policy]`: what happens to unsupported clients.
    pub policy: RawPolicy,
}

/// `[proxy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// Listeners, `udp:IP:PORT` or `tcp:IP:PORT` (IPv6 as `udp:[::1]:5060`).
    /// Default: `udp:0.0.0.0:5060` and `tcp:0.0.0.0:5060`.
    pub listen: Vec<String>,
    /// The registrar, `udp:IP:PORT` or `tcp:IP:PORT`. Required to run.
    pub upstream: Option<String>,
    /// `enforce` (default) or `monitor`.
    pub mode: Mode,
    /// Decision records (JSON lines): a file path, or `-` for stdout. Default `-`.
    pub decision_log: String,
    /// Secret that signs flow tokens (at least 16 characters). Default: none,
    /// a random secret is made at start (tokens then do not survive a restart).
    pub flow_secret: Option<String>,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: vec!["udp:0.0.0.0:5060".into(), "tcp:0.0.0.0:5060".into()],
            upstream: None,
            mode: Mode::Enforce,
            decision_log: "-".into(),
            flow_secret: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Largest message accepted, bytes. Default 65535.
    pub max_message_bytes: usize,
    /// Most header lines in one message. Default 256.
    pub max_headers: usize,
    /// Most concurrent TCP client connections. Default 4096.
    pub max_connections: usize,
    /// A TCP connection idle this long is closed, seconds. Default 600
    /// (Lync clients send keep-alives every 300 s).
    pub tcp_idle_timeout_secs: u64,
    /// Most registrations remembered for agent offers. Default 100000.
    pub max_registrations: usize,
    /// Retry-After of the 503 sent when the upstream is unreachable, seconds. Default 30.
    pub upstream_retry_after_secs: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_535,
            max_headers: 256,
            max_connections: 4096,
            tcp_idle_timeout_secs: 600,
            max_registrations: 100_000,
            upstream_retry_after_secs: 30,
        }
    }
}

/// `[catalog]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCatalog {
    /// Client catalog file, relative to this config file. Default: the
    /// catalog shipped in `config/clients.toml`, built into the binary.
    pub path: Option<String>,
}

/// `[response_group]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResponseGroup {
    /// Workflow URIs (`sip:helpdesk@contoso.com`, `*` wildcards). Default none.
    pub workflows: Vec<String>,
    /// Substrings (case-insensitive) of the Response Group application's
    /// User-Agent. Default `["Response_Group_Service"]`.
    pub application_user_agents: Vec<String>,
    /// From URIs (wildcards) of the Response Group application. Default none.
    pub application_from_uris: Vec<String>,
    /// Source networks (CIDR) of the Response Group application. Default none.
    pub application_sources: Vec<String>,
    /// Agent addresses of record (wildcards). Default none.
    pub agents: Vec<String>,
}

impl Default for RawResponseGroup {
    fn default() -> Self {
        Self {
            workflows: Vec::new(),
            application_user_agents: vec!["Response_Group_Service".into()],
            application_from_uris: Vec::new(),
            application_sources: Vec::new(),
            agents: Vec::new(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    /// Action for scanners, whatever the role. Default `drop`.
    pub scanner: Action,
    /// Header added to flagged requests. Default `X-Sipadmit`.
    pub flag_header: String,
    /// `[policy.caller]`: INVITEs to workflow URIs.
    pub caller: RawRolePolicy,
    /// `[policy.agent_offer]`: offers from the Response Group application.
    pub agent_offer: RawRolePolicy,
    /// `[policy.agent_registration]`: REGISTERs of agents.
    pub agent_registration: RawRolePolicy,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            scanner: Action::Drop,
            flag_header: "X-Sipadmit".into(),
            caller: RawRolePolicy::default(),
            agent_offer: RawRolePolicy::default(),
            agent_registration: RawRolePolicy::default(),
        }
    }
}

/// `[policy.<role>]`: every key is optional; a missing key takes the role's
/// default (see `config/sipadmit.toml` and [`super::validate`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRolePolicy {
    /// Action for clients the Response Group does not support.
    pub unsupported: Option<Action>,
    /// Action for third-party clients.
    pub third_party: Option<Action>,
    /// Action for unknown or missing User-Agents.
    pub unknown: Option<Action>,
    /// Status code of a reject.
    pub status: Option<u16>,
    /// Reason phrase of a reject.
    pub reason: Option<String>,
    /// Warning header value of a reject (`{client}` = client name); `""` for none.
    pub warning: Option<String>,
    /// Extra header lines of a reject, `"Name: value"`.
    pub headers: Option<Vec<String>>,
}
