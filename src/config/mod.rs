//! Config: TOML file → [`RawConfig`] (read key by key: wrong types and
//! unknown keys collected) → validation that adds every invalid value →
//! [`Config`]; all problems are reported together, each with its key path.
//!
//! A [`Config`] has two parts: [`Settings`], which only a restart can change
//! (sockets, advertised names, upstream, decision log, limits; of TLS only
//! the handshake deadline, the reload rebuilding the TLS contexts; the
//! flow secrets are re-read and applied by a reload), and
//! [`RuntimeConfig`], which a live reload may swap (catalog, Response Group
//! matchers, policy, flag header).
//!
//! `config/sipadmit.toml` documents every key and its default.

pub mod advertise;
mod bounds;
pub mod endpoint;
pub mod flow_secrets;
pub mod hep;
pub mod raw;
pub mod tls;
pub mod tls_contexts;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::classify::{Catalog, CatalogError};
use crate::policy::pattern::{Network, UriPattern};
use crate::policy::{Action, Mode, Policy, Reply, RolePolicy, SessionMatchers};
use crate::problem::Problem;
pub use advertise::{Advertise, AdvertisedHost};
use bounds::{Bounds, Unit};
pub use endpoint::{Endpoint, SourcePattern, UpstreamSources};
pub use flow_secrets::FlowSecrets;
pub use hep::{HepSettings, Mirror};
pub use raw::RawConfig;
pub use tls::{Identity, TlsSettings, TlsVersion};

/// The client catalog shipped in `config/clients.toml`, used when
/// `[catalog] path` is not set.
pub const SHIPPED_CATALOG: &str = include_str!("../../config/clients.toml");

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (the source, not repeated in this message).
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML (nothing else can be checked then).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// Keys are unknown, values have the wrong type or are invalid; every
    /// problem is listed.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem, each with its key path. A file that cannot be read or
    /// parsed is one problem named by the file's path.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Read { path, source } => {
                vec![Problem::from_error(path.display().to_string(), source)]
            }
            Self::Syntax { path, message } => {
                vec![Problem::new(path.display().to_string(), message.clone())]
            }
            Self::Invalid { problems, .. } => problems.clone(),
        }
    }
}

/// Command-line values: each replaces the file's value before validation,
/// and a problem in it is named by its flag (`--listen[0]`, `--upstream`,
/// `--decision-log`), not by the file's key.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `proxy.listen` when not empty.
    pub listen: Vec<String>,
    /// Replaces `proxy.upstream`.
    pub upstream: Option<String>,
    /// Replaces `proxy.mode`.
    pub mode: Option<Mode>,
    /// Replaces `proxy.decision_log`.
    pub decision_log: Option<String>,
    /// Replaces `admin.listen` (`--admin IP:PORT`).
    pub admin: Option<String>,
}

/// Validated limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, bytes.
    pub max_message_bytes: usize,
    /// Most header lines in one message.
    pub max_headers: usize,
    /// Most concurrent TCP client connections.
    pub max_connections: usize,
    /// Of those, the slots only trusted sources and known flows may take.
    pub reserved_connections: usize,
    /// How long a source that sent a complete message stays a known flow;
    /// `None`: no source is one.
    pub known_flow_ttl: Option<Duration>,
    /// Bytes the table of known flows may hold.
    pub known_flow_bytes: usize,
    /// Idle time after which a TCP connection is closed.
    pub tcp_idle_timeout: Duration,
    /// Most bindings, and most REGISTERs awaiting their response (each),
    /// entries.
    pub max_registrations: usize,
    /// Most contacts one REGISTER may name; more is answered 403.
    pub max_contacts_per_register: usize,
    /// Most bytes the registration tables hold, both together.
    pub registration_table_bytes: usize,
    /// Most bytes the table of recorded transactions holds.
    pub transaction_table_bytes: usize,
    /// Retry-After of 503 responses when the upstream is unreachable, seconds.
    pub upstream_retry_after_secs: u32,
    /// A stream message must be complete this long after its first byte.
    pub message_deadline: Duration,
    /// Bytes all stream connections together may hold in read buffers.
    pub read_buffer_budget_bytes: usize,
    /// Bytes queued for writing to one stream connection at most.
    pub write_queue_bytes: usize,
    /// SO_RCVBUF asked for UDP listeners, bytes.
    pub udp_receive_buffer_bytes: usize,
    /// SO_SNDBUF asked for UDP listeners, bytes.
    pub udp_send_buffer_bytes: usize,
    /// Bytes the client transactions (stream-to-UDP requests) may hold.
    pub client_transaction_bytes: usize,
    /// RFC 3261 T1 (first retransmission interval; 64*T1 is the timeout).
    pub timer_t1: Duration,
    /// How long a drain (the first SIGTERM) lasts at most (`drain_secs`;
    /// zero: SIGTERM stops at once).
    pub drain: Duration,
    /// RFC 3261 T2 (longest non-INVITE retransmission interval).
    pub timer_t2: Duration,
    /// RFC 3261 Timer C: how long a TCP/TLS client's INVITE relayed over
    /// UDP may ring without a further provisional answer (101 to 199)
    /// before sipadmit cancels it and answers the caller `408`
    /// (`timer_c_secs`).
    pub timer_c: Duration,
    /// Bytes of messages the queue to a TCP/TLS upstream may hold.
    pub upstream_queue_bytes: usize,
    /// Accept queue of each `tcp:` and `tls:` listener, connections.
    pub listen_backlog: u32,
}

/// What a source over its rate limit gets (`rate_limit.over_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// `503 Service Unavailable` with Retry-After (a request that cannot be
    /// answered, such as an ACK, is dropped).
    Reject,
    /// Nothing: the message is dropped (counted).
    Drop,
}

/// Validated `[rate_limit]`: per-source limits (a source is an IPv4
/// address or an IPv6 /64) and bans. Unlike the rest of [`Settings`], a
/// reload applies it (`transport::admission::Admission::reconfigure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Networks never limited or banned: `rate_limit.trusted` and
    /// `response_group.application_sources` (the registrar, named by
    /// `proxy.upstream_sources`, is exempt too).
    pub trusted: Vec<Network>,
    /// SIP messages per second from one source, sustained: over UDP, and
    /// apart from that over TCP/TLS connections.
    pub requests_per_second: NonZeroU32,
    /// SIP messages one source may send at once above that rate.
    pub burst: NonZeroU32,
    /// New stream connections per second from one source.
    pub connections_per_second: NonZeroU32,
    /// Open stream connections from one source at most (also the burst of
    /// new connections).
    pub max_connections_per_source: NonZeroU32,
    /// How long a ban lasts; `None`: sources are never banned.
    pub ban: Option<Duration>,
    /// 503 or drop for a source over its limit.
    pub over_limit: OverLimit,
}

/// A validated config: nothing in it can be invalid.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// What only a restart can change.
    pub settings: Settings,
    /// What a live reload may swap while the proxy runs.
    pub runtime: RuntimeConfig,
    /// The command-line values it was loaded with (a reload applies them
    /// again, so a flag keeps winning over the file).
    pub overrides: Overrides,
}

/// The part of the config that only a restart can change: sockets, the
/// advertised names, the upstream, the decision log, the limits, the admin
/// listener, the HEP collector and the TLS handshake deadline. The other
/// `[tls]` settings live
/// here too, but a reload applies them (see [`Settings::needing_restart`]);
/// so does `[rate_limit]` (applied to the running admission), and so do the
/// flow secrets (the reloader swaps the core's signer).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners (`proxy.listen` or `--listen`).
    pub listen: Vec<Endpoint>,
    /// The registrar, if configured (required by `run`).
    pub upstream: Option<Endpoint>,
    /// Sources whose messages count as coming from the registrar
    /// (`proxy.upstream_sources`; default: exactly the upstream's address,
    /// none without an upstream).
    pub upstream_sources: UpstreamSources,
    /// Decision log destination (`-` = stdout).
    pub decision_log: String,
    /// Flow token secrets (`proxy.flow_secret` or
    /// `proxy.flow_secret_file`), if configured: the first signs.
    pub flow_secrets: Option<FlowSecrets>,
    /// `proxy.advertise`: what listeners advertise instead of their own
    /// address.
    pub advertise: Advertise,
    /// How often sipadmit sends the registrar an OPTIONS (`/readyz` learns
    /// from its answer that the registrar is back); `None`: never.
    pub upstream_probe: Option<Duration>,
    /// Worker threads (`proxy.workers`; default: one per core the process
    /// may run on). Each has its own event loop and its own socket on
    /// every listener (`SO_REUSEPORT`); they share the core's tables.
    pub workers: usize,
    /// Limits.
    pub limits: Limits,
    /// `[tls]`: certificates, versions and ciphers (defaults when absent).
    pub tls: TlsSettings,
    /// `[rate_limit]`: per-source limits and bans.
    pub rate_limit: RateLimit,
    /// The admin HTTP listener (`admin.listen` or `--admin`), if any.
    pub admin: Option<std::net::SocketAddr>,
    /// `admin.allow_remote`: an admin listener on a non-loopback address
    /// is intended (no warning at start; it has no authentication).
    pub admin_allow_remote: bool,
    /// `[hep]`: the HEPv3 collector and what is mirrored to it (off
    /// without `hep.collector`).
    pub hep: HepSettings,
}

impl Settings {
    /// The upstream sources are the upstream's own address, the default.
    fn sources_follow_upstream(&self) -> bool {
        self.upstream
            .is_some_and(|u| self.upstream_sources == UpstreamSources::exactly(u.addr))
    }

    /// The keys of the settings that differ between `self` (running) and
    /// `new`: what a reload cannot apply without a restart. Of `[tls]`,
    /// only `tls.handshake_timeout_secs` is here: the reload rebuilds the
    /// TLS acceptor and the upstream connector from the new `[tls]`
    /// settings and files (`crate::transport::tls::TlsContexts::reload`),
    /// but the deadline is fixed when the listeners and the link start.
    /// `[rate_limit]` is left out: the reloader applies it to the running
    /// admission (`crate::transport::admission::Admission::reconfigure`);
    /// so are the flow secrets, which it applies to the core.
    pub fn needing_restart(&self, new: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key: &'static str, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        check("proxy.listen", self.listen != new.listen);
        check("proxy.upstream", self.upstream != new.upstream);
        // Left unset, the sources follow the upstream's address: a new
        // upstream alone is not also named as new sources.
        check(
            "proxy.upstream_sources",
            self.upstream_sources != new.upstream_sources
                && !(self.sources_follow_upstream() && new.sources_follow_upstream()),
        );
        check("proxy.decision_log", self.decision_log != new.decision_log);
        check("proxy.advertise", self.advertise != new.advertise);
        check(
            "proxy.upstream_probe_secs",
            self.upstream_probe != new.upstream_probe,
        );
        check("proxy.workers", self.workers != new.workers);
        check("limits", self.limits != new.limits);
        check("admin.listen", self.admin != new.admin);
        check(
            "admin.allow_remote",
            self.admin_allow_remote != new.admin_allow_remote,
        );
        check(
            "tls.handshake_timeout_secs",
            self.tls.handshake_timeout != new.tls.handshake_timeout,
        );
        check("hep", self.hep != new.hep);
        changed
    }
}

/// The part of the config a live reload may swap: how clients are
/// classified and what the policy does with them.
#[derive(Debug)]
pub struct RuntimeConfig {
    /// Client catalog.
    pub catalog: Catalog,
    /// Where the catalog came from (a path, or `built-in`).
    pub catalog_source: String,
    /// Response Group session recognition.
    pub sessions: SessionMatchers,
    /// Admission policy.
    pub policy: Policy,
    /// Name of the header added to flagged requests.
    pub flag_header: String,
}

impl RuntimeConfig {
    /// The keys (or sections) whose values differ in `new`: what a reload
    /// changes, for its log line.
    pub fn changed_keys(&self, new: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key: &'static str, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        check(
            "catalog",
            self.catalog_source != new.catalog_source
                || self.catalog.digest() != new.catalog.digest(),
        );
        let sessions = (&self.sessions, &new.sessions);
        check(
            "response_group.workflows",
            sessions.0.workflows != sessions.1.workflows,
        );
        check(
            "response_group.application_user_agents",
            sessions.0.application_user_agents != sessions.1.application_user_agents,
        );
        check(
            "response_group.application_from_uris",
            sessions.0.application_from_uris != sessions.1.application_from_uris,
        );
        check(
            "response_group.application_sources",
            sessions.0.application_sources != sessions.1.application_sources,
        );
        check(
            "response_group.agents",
            sessions.0.agents != sessions.1.agents,
        );
        let policies = (&self.policy, &new.policy);
        check("proxy.mode", policies.0.mode != policies.1.mode);
        check("policy.scanner", policies.0.scanner != policies.1.scanner);
        check("policy.caller", policies.0.caller != policies.1.caller);
        check(
            "policy.agent_offer",
            policies.0.agent_offer != policies.1.agent_offer,
        );
        check(
            "policy.agent_registration",
            policies.0.agent_registration != policies.1.agent_registration,
        );
        check("policy.flag_header", self.flag_header != new.flag_header);
        changed
    }
}

impl Config {
    /// Load and validate a config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parse and validate config text; `path` names it in errors and
    /// anchors the relative catalog path.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let document = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string().trim().to_owned(),
            })?;
        let mut problems = Vec::new();
        let raw = RawConfig::read(document, &mut problems);
        validate(raw, overrides, path, problems)
    }
}

/// A value to validate and the key that names it in a problem: the file's
/// key path, or the command-line flag that replaced it.
struct Given<'a> {
    key: String,
    value: &'a str,
}

impl<'a> Given<'a> {
    fn new(key: impl Into<String>, value: &'a str) -> Self {
        Self {
            key: key.into(),
            value,
        }
    }

    /// The value given on the command line if there is one, else the file's.
    fn pick(
        flag: &str,
        flag_value: Option<&'a str>,
        file_key: &str,
        file_value: Option<&'a str>,
    ) -> Option<Self> {
        flag_value
            .map(|value| Self::new(flag, value))
            .or_else(|| file_value.map(|value| Self::new(file_key, value)))
    }
}

/// Turn a raw config into a [`Config`]: apply the command-line overrides and
/// collect every problem, after those `problems` already found while reading.
/// A problem in a value given on the command line is named by its flag
/// (`--listen[0]`, `--upstream`, `--decision-log`).
///
/// The sections are checked in a fixed order (proxy, limits, rate_limit,
/// response_group, policy, catalog, tls, admin, hep), which is the order in which
/// `check-config` lists their problems.
fn validate(
    raw: RawConfig,
    overrides: &Overrides,
    path: &Path,
    mut problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });

    let base = path.parent().unwrap_or(Path::new("."));
    let proxy = proxy_section(&raw.proxy, overrides, base, &mut problem);
    let limits = limits(&raw.limits, &mut problem);
    let mut rate_limit = rate_limit(&raw.rate_limit, &mut problem);
    let sessions = session_matchers(&raw.response_group, &mut problem);
    // The Response Group application's sources are trusted too (never
    // limited or banned), after `rate_limit.trusted`.
    rate_limit
        .trusted
        .extend(sessions.application_sources.iter().copied());
    let mode = overrides.mode.unwrap_or(raw.proxy.mode);
    let policy = policy(&raw.policy, mode, &mut problem);
    let (catalog, catalog_source) = catalog(raw.catalog.path.as_deref(), base, &mut problem);

    let tls_start = problems.len();
    let tls = tls::validate(&raw.tls, base, &mut problems);
    problems.extend(tls.listener_problems(proxy.first_tls_listener.as_deref()));
    if problems[tls_start..].is_empty() {
        let every_listener = matches!(raw.proxy.advertise, Some(raw::RawAdvertise::All(_)));
        problems.extend(advertised_tls_names(&proxy.advertise, every_listener, &tls));
    }
    let admin = admin_listener(raw.admin.listen.as_deref(), overrides, &mut problems);
    let hep = hep::validate(
        &raw.hep,
        &proxy.listen,
        proxy.upstream.as_ref(),
        &mut problems,
    );

    match (catalog, problems.is_empty()) {
        (Some(catalog), true) => Ok(Config {
            path: path.to_owned(),
            settings: Settings {
                listen: proxy.listen,
                upstream: proxy.upstream,
                upstream_sources: proxy.upstream_sources,
                decision_log: proxy.decision_log,
                flow_secrets: proxy.flow_secrets,
                advertise: proxy.advertise,
                upstream_probe: (raw.proxy.upstream_probe_secs > 0)
                    .then(|| Duration::from_secs(raw.proxy.upstream_probe_secs)),
                workers: raw.proxy.workers.unwrap_or_else(default_workers),
                limits,
                tls,
                rate_limit,
                admin,
                admin_allow_remote: raw.admin.allow_remote,
                hep,
            },
            overrides: overrides.clone(),
            runtime: RuntimeConfig {
                catalog,
                catalog_source,
                sessions,
                policy: policy.expect("no problems"),
                flag_header: raw.policy.flag_header,
            },
        }),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }),
    }
}

/// The validated `[proxy]` values that [`Settings`] takes (with the key of
/// the first `tls:` listener, for the `[tls]` check).
struct ProxySection {
    listen: Vec<Endpoint>,
    /// The key (`proxy.listen[i]` or `--listen[i]`) of the first `tls:`
    /// listener: `[tls]` then needs a certificate.
    first_tls_listener: Option<String>,
    upstream: Option<Endpoint>,
    upstream_sources: UpstreamSources,
    decision_log: String,
    flow_secrets: Option<FlowSecrets>,
    advertise: Advertise,
}

/// Validate `[proxy]` with its command-line overrides: the listeners, what
/// they advertise, the upstream (and whether a listener can reach it),
/// `upstream_sources`, the decision log, the flow secrets (a secret file
/// relative to `base`, the config file's directory) and the probe
/// interval, in that order.
fn proxy_section(
    raw: &raw::RawProxy,
    overrides: &Overrides,
    base: &Path,
    problem: &mut dyn FnMut(String, String),
) -> ProxySection {
    let listeners = listeners(&raw.listen, &overrides.listen, problem);
    let advertise = advertise(raw.advertise.as_ref(), &listeners, problem);
    // `[tls]` needs a certificate when there is a tls: listener (checked
    // with the other `[tls]` keys).
    let first_tls_listener = listeners
        .iter()
        .find(|(_, e)| e.transport == crate::vocabulary::Transport::Tls)
        .map(|(key, _)| key.clone());
    let listen: Vec<Endpoint> = listeners.iter().map(|(_, e)| *e).collect();

    let listen_key = if overrides.listen.is_empty() {
        "proxy.listen"
    } else {
        "--listen"
    };
    let upstream = Given::pick(
        "--upstream",
        overrides.upstream.as_deref(),
        "proxy.upstream",
        raw.upstream.as_deref(),
    )
    .and_then(|given| match given.value.parse::<Endpoint>() {
        Ok(up) => {
            check_upstream_reachable(&up, &given.key, &listen, listen_key, problem);
            check_wildcards_face(&up, &listeners, &advertise, problem);
            Some(up)
        }
        Err(m) => {
            problem(given.key, m);
            None
        }
    });
    let upstream_sources = upstream_sources(raw.upstream_sources.as_deref(), upstream, problem);
    let decision_log = decision_log(&raw.decision_log, overrides, problem);
    let flow_secrets = flow_secrets(raw, base, problem);
    check_workers_and_probe(raw, problem);
    ProxySection {
        listen,
        first_tls_listener,
        upstream,
        upstream_sources,
        decision_log,
        flow_secrets,
        advertise,
    }
}

/// The listeners (`--listen` when given, else `proxy.listen`), each with
/// the key that names it; reports values that do not parse and listeners
/// that could not all be bound.
fn listeners(
    file: &[String],
    flags: &[String],
    problem: &mut dyn FnMut(String, String),
) -> Vec<(String, Endpoint)> {
    let listen_given: Vec<Given<'_>> = if flags.is_empty() {
        if file.is_empty() {
            problem(
                "proxy.listen".into(),
                "at least one listener is needed".into(),
            );
        }
        file.iter()
            .enumerate()
            .map(|(i, value)| Given::new(format!("proxy.listen[{i}]"), value))
            .collect()
    } else {
        flags
            .iter()
            .enumerate()
            .map(|(i, value)| Given::new(format!("--listen[{i}]"), value))
            .collect()
    };
    let mut listeners: Vec<(String, Endpoint)> = Vec::new();
    for given in listen_given {
        match given.value.parse::<Endpoint>() {
            Ok(endpoint) => listeners.push((given.key, endpoint)),
            Err(m) => problem(given.key, m),
        }
    }
    for (i, (key, endpoint)) in listeners.iter().enumerate() {
        let earlier = listeners[..i]
            .iter()
            .find_map(|(k, e)| listener_clash(e, endpoint).map(|why| (k, e, why)));
        if let Some((earlier_key, earlier_endpoint, why)) = earlier {
            problem(
                key.clone(),
                format!(
                    "{endpoint} overlaps {earlier_key} ({earlier_endpoint}): {why}; \
                     `run` would fail with \"Address already in use\""
                ),
            );
        }
    }
    listeners
}

/// The registrar is reached from a listener of its transport and address
/// family (or a dual-stack `[::]` one for an IPv4 registrar): its socket
/// sends the requests, and its address goes in Via, Path and Record-Route
/// (an IPv6 listener bound to one address cannot reach an IPv4 registrar,
/// and every request would get 503). Reports an upstream with no listener
/// of its transport, listeners of that transport none of which reaches
/// its family, and an upstream that is one of the listeners
/// (every request would loop back and get 482, while the upstream probes,
/// answered by sipadmit itself, would call the registrar healthy).
fn check_upstream_reachable(
    up: &Endpoint,
    up_key: &str,
    listen: &[Endpoint],
    listen_key: &str,
    problem: &mut dyn FnMut(String, String),
) {
    let of_transport: Vec<&Endpoint> = listen
        .iter()
        .filter(|e| e.transport == up.transport)
        .collect();
    if of_transport.is_empty() {
        if !listen.is_empty() {
            problem(
                up_key.into(),
                format!(
                    "{up} needs a {} listener in {listen_key}: the registrar's requests \
                     come back to it",
                    up.transport
                ),
            );
        }
        return;
    }
    if let Some(own) = of_transport.iter().find(|e| is_listener_address(e, up)) {
        problem(
            up_key.into(),
            format!("{up} is sipadmit's own listener {own}: every request would loop back to it"),
        );
    }
    // A `[::]` listener is dual-stack: it reaches an IPv4 registrar too.
    let reaches = |e: &&Endpoint| {
        e.addr.is_ipv4() == up.addr.is_ipv4() || (up.addr.is_ipv4() && e.addr.ip().is_unspecified())
    };
    if !of_transport.iter().any(reaches) {
        let (t, port) = (up.transport, of_transport[0].addr.port());
        let (family, fix) = if up.addr.is_ipv4() {
            ("IPv4", format!("add one such as {t}:0.0.0.0:{port}"))
        } else {
            (
                "IPv6",
                format!(
                    "add one of an IPv6 address of this host, or put {t}:[::]:{port} (which takes \
                     IPv4 clients too) in place of the IPv4 listeners on port {port}"
                ),
            )
        };
        problem(
            listen_key.into(),
            format!("no {t} listener of the upstream's address family ({family}, {up}): {fix}"),
        );
    }
}

/// A `0.0.0.0` listener advertises the address of this host facing the
/// registrar (`up`); with an IPv6 registrar no IPv4 address faces it, and
/// an IPv6 one would be written toward IPv4 clients: such a listener needs
/// `proxy.advertise`, or its own address.
fn check_wildcards_face(
    up: &Endpoint,
    listeners: &[(String, Endpoint)],
    advertise: &Advertise,
    problem: &mut dyn FnMut(String, String),
) {
    if up.addr.is_ipv4() {
        return;
    }
    let unadvertised = listeners.iter().filter(|(_, e)| {
        e.addr.is_ipv4() && e.addr.ip().is_unspecified() && advertise.for_listener(e).is_none()
    });
    for (key, e) in unadvertised {
        problem(
            key.clone(),
            format!(
                "{e} would advertise the address of this host facing the registrar, and the \
                 registrar ({up}) is IPv6: no IPv4 address faces it. List the IPv4 address its \
                 clients reach ({t}:192.0.2.10:{port}), or give it proxy.advertise",
                t = e.transport,
                port = e.addr.port()
            ),
        );
    }
}

/// Whether `listener` receives what is sent to `to`: the same port, and
/// the same address, or an unspecified listener address and a loopback or
/// unspecified destination of a family it takes. (Another address of this
/// host behind an unspecified listener cannot be told from a remote one
/// here: [`own_listener_behind`] asks the host.)
fn is_listener_address(listener: &Endpoint, to: &Endpoint) -> bool {
    let (l, t) = (listener.addr, to.addr);
    if l.port() != t.port() || l.port() == 0 {
        return false;
    }
    let t = t.ip().to_canonical();
    if l.ip().to_canonical() == t {
        return true;
    }
    (t.is_loopback() || t.is_unspecified()) && takes_every_address_of(listener, t)
}

/// Whether `listener` is bound to every address (`0.0.0.0`, or `[::]`,
/// which takes IPv4 too) of `to`'s family.
fn takes_every_address_of(listener: &Endpoint, to: std::net::IpAddr) -> bool {
    let l = listener.addr.ip();
    l.is_unspecified() && (l.is_ipv6() || to.is_ipv4())
}

/// The listener the upstream (or the HEP collector) `up` would reach when
/// its address is one of this host's (`this_host`, asked of the host at start: validation cannot
/// tell such an address from a remote one): a listener of its transport on
/// its port whose address is unspecified (`0.0.0.0`, or `[::]`, which takes
/// IPv4 too) receives what is sent to any address of the host.
///
/// `any_stream`: a `tcp:` destination is taken by a `tls:` listener too (a
/// HEP collector, whose bytes reach whatever accepts the connection).
pub fn own_listener_behind(
    up: &Endpoint,
    listen: &[Endpoint],
    any_stream: bool,
    this_host: impl Fn(std::net::IpAddr) -> bool,
) -> Option<Endpoint> {
    let to = up.addr.ip().to_canonical();
    let own = listen.iter().find(|l| {
        let same = match any_stream {
            true => l.transport.is_stream() == up.transport.is_stream(),
            false => l.transport == up.transport,
        };
        same && l.addr.port() == up.addr.port() && takes_every_address_of(l, to)
    })?;
    this_host(to).then_some(*own)
}

/// What only this host can tell of `config`: a decision log path that is a
/// directory; an upstream or a HEP collector at one of its addresses
/// (`this_host`) behind a listener of its transport on its port that takes
/// every address ([`own_listener_behind`]), that is sipadmit itself. Each
/// is a problem with its key (the flag, when the value came from one).
pub fn problems_on_this_host(
    config: &Config,
    this_host: impl Fn(std::net::IpAddr) -> bool,
) -> Vec<Problem> {
    let settings = &config.settings;
    let upstream_key = match config.overrides.upstream {
        Some(_) => "--upstream",
        None => "proxy.upstream",
    };
    let candidates = [
        (
            settings.upstream,
            false,
            upstream_key,
            "listener",
            "every request would loop back to sipadmit (482 Loop Detected), and its upstream \
             probes, answered by itself, would call the registrar healthy; give the registrar's \
             address",
        ),
        (
            settings.hep.collector,
            true,
            "hep.collector",
            "SIP listener",
            "the HEP copies would reach sipadmit, not a collector (over the listener's own \
             transport they would come back as SIP messages and be mirrored again, a loop); \
             give the HEP collector's address",
        ),
    ];
    let mut problems = Vec::new();
    // (A directory that does not exist yet is no problem here: the
    // service manager may create it at start, LogsDirectory=.)
    if settings.decision_log != "-" && Path::new(&settings.decision_log).is_dir() {
        let key = match config.overrides.decision_log {
            Some(_) => "--decision-log",
            None => "proxy.decision_log",
        };
        problems.push(Problem::new(
            key,
            format!(
                "{:?} is a directory: name a file in it",
                settings.decision_log
            ),
        ));
    }
    for (to, any_stream, key, listener, why) in candidates {
        let Some(to) = to else { continue };
        if let Some(own) = own_listener_behind(&to, &settings.listen, any_stream, &this_host) {
            problems.push(Problem::new(
                key,
                format!(
                    "{to} is an address of this host, and the {listener} {own} takes it: {why}"
                ),
            ));
        }
    }
    problems
}

/// `proxy.upstream_sources`, or by default exactly the upstream's address
/// (nothing without an upstream).
fn upstream_sources(
    list: Option<&[String]>,
    upstream: Option<Endpoint>,
    problem: &mut dyn FnMut(String, String),
) -> UpstreamSources {
    match list {
        None => upstream.map_or_else(UpstreamSources::default, |u| {
            UpstreamSources::exactly(u.addr)
        }),
        Some(list) => {
            if list.is_empty() {
                problem(
                    "proxy.upstream_sources".into(),
                    "empty: nothing would count as the registrar; leave the key out \
                     for the default (the upstream's address)"
                        .into(),
                );
            }
            let mut patterns = Vec::new();
            for (i, text) in list.iter().enumerate() {
                match text.parse::<SourcePattern>() {
                    Ok(p) => patterns.push(p),
                    Err(m) => problem(format!("proxy.upstream_sources[{i}]"), m),
                }
            }
            UpstreamSources::new(patterns)
        }
    }
}

/// The decision log destination (`--decision-log` when given, else
/// `proxy.decision_log`); it must not be empty. Whether it names a
/// directory is this host's state, checked at start and by `check-config`
/// ([`problems_on_this_host`]), not at a reload, which does not reopen it.
fn decision_log(
    file: &str,
    overrides: &Overrides,
    problem: &mut dyn FnMut(String, String),
) -> String {
    let decision_log = match overrides.decision_log.as_deref() {
        Some(value) => Given::new("--decision-log", value),
        None => Given::new("proxy.decision_log", file),
    };
    if decision_log.value.trim().is_empty() {
        problem(
            decision_log.key,
            "empty; use a file path or \"-\" for stdout".into(),
        );
    }
    decision_log.value.to_owned()
}

/// Most worker threads `proxy.workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// One worker per core the process may run on (its CPU affinity), at
/// most [`MAX_WORKERS`].
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_WORKERS)
}

/// The flow secrets: `proxy.flow_secret` (at least 16 characters), or
/// `proxy.flow_secret_file` read now (see [`flow_secrets::read`]); not
/// both. `None` when neither is set.
fn flow_secrets(
    raw: &raw::RawProxy,
    base: &Path,
    problem: &mut dyn FnMut(String, String),
) -> Option<FlowSecrets> {
    match (&raw.flow_secret, &raw.flow_secret_file) {
        (Some(_), Some(_)) => {
            problem(
                "proxy.flow_secret_file".into(),
                "set together with proxy.flow_secret: keep one (the file can be rotated by a reload)"
                    .into(),
            );
            None
        }
        (Some(secret), None) => FlowSecrets::inline(secret)
            .map_err(|m| problem("proxy.flow_secret".into(), m))
            .ok(),
        (None, Some(file)) => match flow_secrets::read(file, base) {
            Ok(secrets) => Some(secrets),
            Err(problems) => {
                for m in problems {
                    problem("proxy.flow_secret_file".into(), m);
                }
                None
            }
        },
        (None, None) => None,
    }
}

/// What each listener advertises (`proxy.advertise`): one value for all,
/// or a table whose keys each name a listener (as in `proxy.listen` or
/// `--listen`).
fn advertise(
    raw: Option<&raw::RawAdvertise>,
    listeners: &[(String, Endpoint)],
    problem: &mut dyn FnMut(String, String),
) -> Advertise {
    let mut per_listener = Vec::new();
    match raw {
        None => {}
        Some(raw::RawAdvertise::All(value)) => match value.parse::<AdvertisedHost>() {
            Ok(host) => per_listener.extend(listeners.iter().map(|(_, e)| (*e, host.clone()))),
            Err(m) => problem("proxy.advertise".into(), m),
        },
        Some(raw::RawAdvertise::PerListener(table)) => {
            for (listener, value) in table {
                let key = format!("proxy.advertise.{listener:?}");
                let endpoint = match listener.parse::<Endpoint>() {
                    Ok(e) if listeners.iter().any(|(_, l)| *l == e) => e,
                    Ok(_) | Err(_) => {
                        let known: Vec<String> =
                            listeners.iter().map(|(_, e)| e.to_string()).collect();
                        problem(
                            key,
                            format!("names no listener; the listeners are {}", known.join(", ")),
                        );
                        continue;
                    }
                };
                match value.parse::<AdvertisedHost>() {
                    Ok(host) => per_listener.push((endpoint, host)),
                    Err(m) => problem(key, m),
                }
            }
        }
    }
    Advertise::new(per_listener)
}

/// What a `tls:` listener advertises must be a name of the certificate it
/// presents (`tls.certificate`): the registrar and the clients reaching
/// it by that name check the certificate against it. One problem per
/// listener whose advertised host the certificate does not cover, keyed
/// `proxy.advertise` (`every_listener`: one value for all) or by the
/// listener. Called once `[tls]` has no problem (the file reads).
fn advertised_tls_names(
    advertise: &Advertise,
    every_listener: bool,
    tls: &TlsSettings,
) -> Vec<Problem> {
    let Some(identity) = &tls.identity else {
        return Vec::new();
    };
    let tls_listeners = || {
        advertise
            .iter()
            .filter(|(e, _)| e.transport == crate::vocabulary::Transport::Tls)
    };
    if tls_listeners().next().is_none() {
        return Vec::new();
    }
    let names = match tls_contexts::certificate_names("tls.certificate", &identity.certificate) {
        Ok(names) => names,
        Err(e) => return vec![e.to_problem()],
    };
    tls_listeners()
        .filter(|(_, host)| !host.is_in(&names))
        .map(|(endpoint, host)| {
            let key = if every_listener {
                "proxy.advertise".to_owned()
            } else {
                format!("proxy.advertise.{:?}", endpoint.to_string())
            };
            Problem::new(
                key,
                format!(
                    "{} is not a name of tls.certificate {} (it names {names}): the registrar \
                     and clients reaching {endpoint} by it would refuse the certificate",
                    host.host(),
                    identity.certificate.display()
                ),
            )
        })
        .collect()
}

/// `proxy.workers` (1..=256) and `proxy.upstream_probe_secs` (at most 300).
fn check_workers_and_probe(raw: &raw::RawProxy, problem: &mut dyn FnMut(String, String)) {
    let workers = Bounds::new(1, MAX_WORKERS as u64, Unit::Count).noting("default: one per core");
    if let Some(message) = raw.workers.and_then(|w| workers.check(w)) {
        problem("proxy.workers".into(), message);
    }
    let probe = Bounds::new(0, 300, Unit::Seconds)
        .noting("0 turns the probes off")
        .defaulting_to(raw::RawProxy::default().upstream_probe_secs);
    if let Some(message) = probe.check(raw.upstream_probe_secs) {
        problem("proxy.upstream_probe_secs".into(), message);
    }
}

/// Validate `[limits]`: report every value out of its range (the checks
/// run in this order), then the [`Limits`] with their defaults applied.
fn limits(l: &raw::RawLimits, problem: &mut dyn FnMut(String, String)) -> Limits {
    check_limit_counts(l, problem);
    check_limit_sizes(l, problem);
    check_limits_that_depend_on_others(l, problem);
    check_limit_backlog_and_timers(l, problem);
    Limits {
        max_message_bytes: l.max_message_bytes,
        max_headers: l.max_headers,
        max_connections: l.max_connections,
        reserved_connections: l.reserved_connections.unwrap_or(l.max_connections / 10),
        known_flow_ttl: (l.known_flow_secs > 0).then(|| Duration::from_secs(l.known_flow_secs)),
        known_flow_bytes: l.known_flow_bytes,
        tcp_idle_timeout: Duration::from_secs(l.tcp_idle_timeout_secs),
        max_registrations: l.max_registrations,
        max_contacts_per_register: l.max_contacts_per_register,
        registration_table_bytes: l.registration_table_bytes,
        transaction_table_bytes: l.transaction_table_bytes,
        upstream_retry_after_secs: l.upstream_retry_after_secs,
        message_deadline: Duration::from_secs(l.message_deadline_secs),
        read_buffer_budget_bytes: l.read_buffer_budget_bytes,
        write_queue_bytes: l.write_queue_bytes,
        client_transaction_bytes: l.client_transaction_bytes,
        timer_t1: Duration::from_millis(l.timer_t1_ms),
        timer_t2: Duration::from_millis(l.timer_t2_ms),
        timer_c: Duration::from_secs(l.timer_c_secs),
        drain: Duration::from_secs(l.drain_secs),
        upstream_queue_bytes: l.upstream_queue_bytes,
        listen_backlog: l.listen_backlog,
        udp_receive_buffer_bytes: l.udp_receive_buffer_bytes,
        udp_send_buffer_bytes: l.udp_send_buffer_bytes,
    }
}

/// Report each `(key, value, bounds)` whose value lies outside its bounds.
fn report_out_of_bounds<V: TryInto<u64>, const N: usize>(
    problem: &mut dyn FnMut(String, String),
    checks: [(&str, V, Bounds); N],
) {
    for (key, value, bounds) in checks {
        if let Some(message) = bounds.check(value) {
            problem(key.into(), message);
        }
    }
}

/// The `[limits]` counts that must lie in a range of their own.
fn check_limit_counts(l: &raw::RawLimits, problem: &mut dyn FnMut(String, String)) {
    let d = raw::RawLimits::default();
    let count = |min: u64, max: u64, default: usize| {
        Bounds::new(min, max, Unit::Count).defaulting_to(default)
    };
    report_out_of_bounds(
        problem,
        [
            (
                "limits.max_headers",
                l.max_headers,
                count(16, u64::MAX, d.max_headers),
            ),
            (
                "limits.max_connections",
                l.max_connections,
                count(1, 1_000_000, d.max_connections),
            ),
            (
                "limits.max_registrations",
                l.max_registrations,
                count(1, u64::MAX, d.max_registrations),
            ),
            (
                "limits.max_contacts_per_register",
                l.max_contacts_per_register,
                count(1, 1024, d.max_contacts_per_register),
            ),
        ],
    );
}

/// The `[limits]` sizes, of messages, tables and buffers, that must lie
/// in a range of their own.
fn check_limit_sizes(l: &raw::RawLimits, problem: &mut dyn FnMut(String, String)) {
    const TIB: u64 = 1 << 40;
    let d = raw::RawLimits::default();
    let bytes = |min: u64, max: u64, default: usize| {
        Bounds::new(min, max, Unit::Bytes).defaulting_to(default)
    };
    report_out_of_bounds(
        problem,
        [
            (
                "limits.max_message_bytes",
                l.max_message_bytes,
                bytes(1024, 1 << 20, d.max_message_bytes),
            ),
            (
                "limits.registration_table_bytes",
                l.registration_table_bytes,
                bytes(1 << 20, TIB, d.registration_table_bytes),
            ),
            (
                "limits.transaction_table_bytes",
                l.transaction_table_bytes,
                bytes(64 << 10, TIB, d.transaction_table_bytes),
            ),
            (
                "limits.write_queue_bytes",
                l.write_queue_bytes,
                bytes(64 << 10, 64 << 20, d.write_queue_bytes),
            ),
            (
                "limits.udp_receive_buffer_bytes",
                l.udp_receive_buffer_bytes,
                bytes(64 << 10, 1 << 30, d.udp_receive_buffer_bytes),
            ),
            (
                "limits.udp_send_buffer_bytes",
                l.udp_send_buffer_bytes,
                bytes(64 << 10, 1 << 30, d.udp_send_buffer_bytes),
            ),
            (
                "limits.client_transaction_bytes",
                l.client_transaction_bytes,
                bytes(64 << 10, TIB, d.client_transaction_bytes),
            ),
            (
                "limits.upstream_queue_bytes",
                l.upstream_queue_bytes,
                bytes(64 << 10, TIB, d.upstream_queue_bytes),
            ),
            (
                "limits.known_flow_bytes",
                l.known_flow_bytes,
                bytes(64 << 10, TIB, d.known_flow_bytes),
            ),
        ],
    );
}

/// The `[limits]` keys whose bounds come from another key, or that allow a
/// 0 outside their range: `reserved_connections` (below `max_connections`),
/// the read buffer budget (at least two of the largest message) and
/// `known_flow_secs`.
fn check_limits_that_depend_on_others(l: &raw::RawLimits, problem: &mut dyn FnMut(String, String)) {
    let d = raw::RawLimits::default();
    if let Some(reserved) = l.reserved_connections {
        if reserved >= l.max_connections.max(1) {
            problem(
                "limits.reserved_connections".into(),
                format!(
                    "{reserved} is not below limits.max_connections ({}): untrusted clients would get no slot (0 reserves none)",
                    l.max_connections
                ),
            );
        }
    }
    let budget = Bounds::new(2 * l.max_message_bytes as u64, 1 << 40, Unit::Bytes)
        .noting("at least twice limits.max_message_bytes")
        .defaulting_to(d.read_buffer_budget_bytes);
    if let Some(message) = budget.check(l.read_buffer_budget_bytes) {
        problem("limits.read_buffer_budget_bytes".into(), message);
    }
    if l.known_flow_secs != 0 {
        let known_flow = Bounds::new(60, 604_800, Unit::Seconds)
            .noting("0: no known flows")
            .defaulting_to(d.known_flow_secs);
        if let Some(message) = known_flow.check(l.known_flow_secs) {
            problem("limits.known_flow_secs".into(), message);
        }
    }
}

/// `limits.listen_backlog`, the TCP idle timeout, the RFC 3261 timers T1
/// and T2, the drain and the deadline of a stream message.
fn check_limit_backlog_and_timers(l: &raw::RawLimits, problem: &mut dyn FnMut(String, String)) {
    let d = raw::RawLimits::default();
    report_out_of_bounds(
        problem,
        [
            (
                "limits.listen_backlog",
                u64::from(l.listen_backlog),
                Bounds::new(1, 65_535, Unit::Count)
                    .noting("connections; the kernel caps it at net.core.somaxconn")
                    .defaulting_to(d.listen_backlog),
            ),
            (
                "limits.tcp_idle_timeout_secs",
                l.tcp_idle_timeout_secs,
                Bounds::new(30, u64::MAX, Unit::Seconds)
                    .noting("Lync clients keep connections alive every 300 s")
                    .defaulting_to(d.tcp_idle_timeout_secs),
            ),
            (
                "limits.timer_t1_ms",
                l.timer_t1_ms,
                Bounds::new(50, 10_000, Unit::Milliseconds)
                    .noting("RFC 3261 T1")
                    .defaulting_to(d.timer_t1_ms),
            ),
            (
                "limits.timer_t2_ms",
                l.timer_t2_ms,
                Bounds::new(l.timer_t1_ms, 60_000, Unit::Milliseconds)
                    .noting("RFC 3261 T2, at least limits.timer_t1_ms")
                    .defaulting_to(d.timer_t2_ms),
            ),
            (
                "limits.timer_c_secs",
                l.timer_c_secs,
                Bounds::new(1, 3600, Unit::Seconds)
                    .noting("RFC 3261 Timer C, more than 3 minutes")
                    .defaulting_to(d.timer_c_secs),
            ),
            (
                "limits.drain_secs",
                l.drain_secs,
                Bounds::new(0, 3600, Unit::Seconds)
                    .noting("0 stops at once on SIGTERM")
                    .defaulting_to(d.drain_secs),
            ),
            (
                "limits.message_deadline_secs",
                l.message_deadline_secs,
                Bounds::new(1, 300, Unit::Seconds)
                    .noting("a complete message, headers and body")
                    .defaulting_to(d.message_deadline_secs),
            ),
        ],
    );
}

/// Validate `[rate_limit]`. Its `trusted` networks are only
/// `rate_limit.trusted`: the caller adds `response_group.application_sources`.
fn rate_limit(r: &raw::RawRateLimit, problem: &mut dyn FnMut(String, String)) -> RateLimit {
    let mut trusted = Vec::new();
    for (i, net) in r.trusted.iter().enumerate() {
        match Network::parse(net) {
            Ok(n) => trusted.push(n),
            Err(e) => problem(format!("rate_limit.trusted[{i}]"), e.to_string()),
        }
    }
    let mut positive = |key: &str, value: u32| {
        NonZeroU32::new(value).unwrap_or_else(|| {
            problem(
                format!("rate_limit.{key}"),
                "0 is below the minimum 1 (to exempt a source, list it in rate_limit.trusted)"
                    .into(),
            );
            NonZeroU32::MIN
        })
    };
    let requests_per_second = positive("requests_per_second", r.requests_per_second);
    let burst = positive("burst", r.burst);
    let connections_per_second = positive("connections_per_second", r.connections_per_second);
    let max_connections_per_source =
        positive("max_connections_per_source", r.max_connections_per_source);
    let ban = Bounds::new(0, 7 * 86_400, Unit::Seconds)
        .noting("7 days; 0: never ban")
        .defaulting_to(raw::RawRateLimit::default().ban_secs);
    if let Some(message) = ban.check(r.ban_secs) {
        problem("rate_limit.ban_secs".into(), message);
    }
    let over_limit = match r.over_limit.as_str() {
        "reject" => OverLimit::Reject,
        "drop" => OverLimit::Drop,
        other => {
            problem(
                "rate_limit.over_limit".into(),
                format!("{other:?}: expected \"reject\" (503 with Retry-After) or \"drop\""),
            );
            OverLimit::Reject
        }
    };
    RateLimit {
        trusted,
        requests_per_second,
        burst,
        connections_per_second,
        max_connections_per_source,
        ban: (r.ban_secs > 0).then(|| Duration::from_secs(r.ban_secs)),
        over_limit,
    }
}

/// Validate `[response_group]`: how the Response Group's sessions are
/// recognised (workflows, application From URIs, agents, application
/// User-Agents and sources, reported in that order).
fn session_matchers(
    rg: &raw::RawResponseGroup,
    problem: &mut dyn FnMut(String, String),
) -> SessionMatchers {
    let workflows = uri_patterns("response_group.workflows", &rg.workflows, problem);
    let application_from_uris = uri_patterns(
        "response_group.application_from_uris",
        &rg.application_from_uris,
        problem,
    );
    let agents = uri_patterns("response_group.agents", &rg.agents, problem);
    let mut application_user_agents = Vec::new();
    for (i, ua) in rg.application_user_agents.iter().enumerate() {
        if ua.trim().is_empty() {
            problem(
                format!("response_group.application_user_agents[{i}]"),
                "empty string would match every User-Agent".into(),
            );
        } else {
            application_user_agents.push(ua.trim().to_ascii_lowercase());
        }
    }
    let mut application_sources = Vec::new();
    for (i, net) in rg.application_sources.iter().enumerate() {
        match Network::parse(net) {
            Ok(n) => application_sources.push(n),
            Err(e) => problem(
                format!("response_group.application_sources[{i}]"),
                e.to_string(),
            ),
        }
    }
    SessionMatchers {
        workflows,
        application_user_agents,
        application_from_uris,
        application_sources,
        agents,
    }
}

/// The SIP URI patterns of the list `key`; each entry that is not one is
/// reported as `{key}[i]` and left out.
fn uri_patterns(
    key: &str,
    list: &[String],
    problem: &mut dyn FnMut(String, String),
) -> Vec<UriPattern> {
    list.iter()
        .enumerate()
        .filter_map(|(i, u)| {
            UriPattern::new(u).or_else(|| {
                problem(
                    format!("{key}[{i}]"),
                    format!("not a SIP URI: {u:?} (expected sip:user@host, * allowed)"),
                );
                None
            })
        })
        .collect::<Vec<_>>()
}

/// Validate `[policy]` (the flag header, then each role) into the
/// [`Policy`] of `mode`; `None` when a role is invalid (reported).
fn policy(
    p: &raw::RawPolicy,
    mode: Mode,
    problem: &mut dyn FnMut(String, String),
) -> Option<Policy> {
    if !is_header_name(&p.flag_header) {
        problem(
            "policy.flag_header".into(),
            format!("not a header name: {:?}", p.flag_header),
        );
    }
    let caller = role_policy("policy.caller", &p.caller, RoleDefaults::CALLER, problem);
    let agent_offer = role_policy(
        "policy.agent_offer",
        &p.agent_offer,
        RoleDefaults::AGENT_OFFER,
        problem,
    );
    let agent_registration = role_policy(
        "policy.agent_registration",
        &p.agent_registration,
        RoleDefaults::AGENT_REGISTRATION,
        problem,
    );
    Some(Policy {
        mode,
        scanner: p.scanner,
        caller: caller?,
        agent_offer: agent_offer?,
        agent_registration: agent_registration?,
    })
}

/// Load the client catalog: `[catalog] path` (relative to `base`, the
/// config file's directory) or the shipped one. Returns it (`None` when it
/// is invalid; its problems are reported) and where it came from.
fn catalog(
    rel: Option<&str>,
    base: &Path,
    problem: &mut dyn FnMut(String, String),
) -> (Option<Catalog>, String) {
    let (catalog, catalog_source) = match rel {
        None => (
            Catalog::from_toml_str(SHIPPED_CATALOG),
            "built-in".to_owned(),
        ),
        Some(rel) => {
            let file = base.join(rel);
            (Catalog::load(&file), file.display().to_string())
        }
    };
    let catalog = match catalog {
        Ok(c) => Some(c),
        Err(e) => {
            catalog_problems(&e, &catalog_source, problem);
            None
        }
    };
    (catalog, catalog_source)
}

/// The admin listener (`--admin` when given, else `admin.listen`), if any;
/// a value that is not `IP:PORT` is reported.
fn admin_listener(
    file: Option<&str>,
    overrides: &Overrides,
    problems: &mut Vec<Problem>,
) -> Option<std::net::SocketAddr> {
    Given::pick("--admin", overrides.admin.as_deref(), "admin.listen", file).and_then(|given| {
        match given.value.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(Problem {
                    key: given.key,
                    message: format!(
                        "{:?} is not IP:PORT (e.g. 127.0.0.1:9464, [::1]:9464)",
                        given.value
                    ),
                });
                None
            }
        }
    })
}

/// Why two listeners cannot both be bound (`None` if they can). Port 0
/// asks the kernel for a free port, so it never clashes.
fn listener_clash(a: &Endpoint, b: &Endpoint) -> Option<&'static str> {
    let port = a.addr.port();
    if a.transport != b.transport || port != b.addr.port() || port == 0 {
        return None;
    }
    let (a, b) = (a.addr.ip(), b.addr.ip());
    if a == b {
        Some("the same listener twice")
    } else if a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()) {
        Some("the unspecified address already takes every address of its family on that port")
    } else if (a.is_ipv6() && a.is_unspecified()) || (b.is_ipv6() && b.is_unspecified()) {
        Some("[::] also takes the IPv4 addresses on that port (IPv6 sockets are dual-stack by default)")
    } else {
        None
    }
}

fn catalog_problems(e: &CatalogError, source: &str, problem: &mut dyn FnMut(String, String)) {
    match e {
        CatalogError::Invalid { problems, .. } => {
            for p in problems {
                problem(format!("catalog({source}).{}", p.key), p.message.clone());
            }
        }
        other => {
            let Problem { key, message } = Problem::from_error("catalog.path", other);
            problem(key, message);
        }
    }
}

/// Role defaults; documented in `config/sipadmit.toml`.
struct RoleDefaults {
    unsupported: Action,
    third_party: Action,
    unknown: Action,
    status: u16,
    reason: &'static str,
    warning: &'static str,
    headers: &'static [&'static str],
    /// The Warning of a reject of an unknown client.
    unknown_warning: &'static str,
    /// The headers of a reject of an unknown client, unless `headers` is set.
    unknown_headers: &'static [&'static str],
    /// Highest status allowed (agent offers never get 6xx).
    max_status: u16,
}

impl RoleDefaults {
    const CALLER: Self = Self {
        unsupported: Action::Reject,
        third_party: Action::Allow,
        unknown: Action::Flag,
        status: 403,
        reason: "Forbidden",
        warning: "399 sipadmit \"The Response Group does not support this client: {client}\"",
        headers: &[],
        unknown_warning: UNKNOWN_WARNING,
        unknown_headers: &[],
        max_status: 699,
    };
    const AGENT_OFFER: Self = Self {
        unsupported: Action::Reject,
        third_party: Action::Flag,
        unknown: Action::Flag,
        status: 480,
        reason: "Temporarily Unavailable",
        warning: "399 sipadmit \"Response Group calls are not offered to {client}\"",
        headers: &[],
        unknown_warning: UNKNOWN_WARNING,
        unknown_headers: &[],
        max_status: 599,
    };
    const AGENT_REGISTRATION: Self = Self {
        unsupported: Action::Flag,
        third_party: Action::Flag,
        unknown: Action::Flag,
        status: 403,
        reason: "Forbidden",
        warning: "310 lcs.microsoft.com \"You are currently not using the recommended version of the client\"",
        headers: &["ms-diagnostics: 17002;reason=\"Client is not supported by the Response Group application\";source=\"sipadmit\""],
        unknown_warning: UNKNOWN_WARNING,
        unknown_headers: &["ms-diagnostics: 17002;reason=\"Client not recognised by sipadmit\";source=\"sipadmit\""],
        max_status: 699,
    };
}

/// The default Warning of a reject of an unknown or missing User-Agent:
/// sipadmit cannot say the Response Group does not support a client it does
/// not know.
const UNKNOWN_WARNING: &str = "399 sipadmit \"sipadmit does not recognise this client ({client})\"";

fn role_policy(
    key: &str,
    raw: &raw::RawRolePolicy,
    d: RoleDefaults,
    problem: &mut dyn FnMut(String, String),
) -> Option<RolePolicy> {
    let mut ok = true;
    let status = raw.status.unwrap_or(d.status);
    let why = if d.max_status < 600 {
        "a 6xx would cancel every fork of the Response Group call (RFC 3261 16.7)"
    } else {
        "a status of the 4xx, 5xx or 6xx class"
    };
    let statuses = Bounds::new(400, u64::from(d.max_status), Unit::Count)
        .noting(why)
        .defaulting_to(d.status);
    if let Some(message) = statuses.check(status) {
        ok = false;
        problem(format!("{key}.status"), message);
    }
    let reason = raw.reason.clone().unwrap_or_else(|| d.reason.into());
    if reason.bytes().any(|b| b == b'\r' || b == b'\n') {
        ok = false;
        problem(
            format!("{key}.reason"),
            "line breaks are not allowed".into(),
        );
    }
    // A Warning header's value, or none when empty.
    let mut warning_value = |name: &str, value: String| {
        if let Some(why) = warning_problem(&value) {
            ok = false;
            problem(format!("{key}.{name}"), why);
        }
        (!value.is_empty()).then_some(value)
    };
    let warning = warning_value(
        "warning",
        raw.warning.clone().unwrap_or_else(|| d.warning.into()),
    );
    let unknown_warning = warning_value(
        "unknown_warning",
        raw.unknown_warning
            .clone()
            .unwrap_or_else(|| d.unknown_warning.into()),
    );
    let defaults = |lines: &[&str]| lines.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    let headers = header_lines(
        key,
        &raw.headers.clone().unwrap_or_else(|| defaults(d.headers)),
        problem,
    );
    // Headers set for the role apply to both replies; the defaults differ.
    let unknown_headers = match &raw.headers {
        Some(_) => headers.clone(),
        None => header_lines(key, &defaults(d.unknown_headers), problem),
    };
    let (Some(headers), Some(unknown_headers)) = (headers, unknown_headers) else {
        return None;
    };
    ok.then(|| RolePolicy {
        unsupported: raw.unsupported.unwrap_or(d.unsupported),
        third_party: raw.third_party.unwrap_or(d.third_party),
        unknown: raw.unknown.unwrap_or(d.unknown),
        reply: Reply {
            status,
            reason: reason.clone(),
            warning,
            headers,
        },
        unknown_reply: Reply {
            status,
            reason,
            warning: unknown_warning,
            headers: unknown_headers,
        },
    })
}

/// What is wrong with a configured Warning value (empty: none is sent).
fn warning_problem(value: &str) -> Option<String> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Some("line breaks are not allowed".into());
    }
    let why = not_a_warning_value(value).filter(|_| !value.is_empty())?;
    Some(format!("{value:?}: {why}"))
}

/// Why `value` is not a Warning header value (RFC 3261 20.43: `warn-code
/// SP warn-agent SP warn-text`, e.g. `399 sipadmit "text"`), or `None`.
fn not_a_warning_value(value: &str) -> Option<&'static str> {
    let mut parts = value.splitn(3, ' ');
    let (code, agent, text) = (parts.next()?, parts.next(), parts.next());
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Some("expected a three-digit code first, as in 399 sipadmit \"text\"");
    }
    if agent.is_none_or(|a| a.is_empty() || a.contains('"')) {
        return Some("expected the code, a space and an agent (a host or a name), as in 399 sipadmit \"text\"");
    }
    match text.and_then(|t| t.strip_prefix('"')) {
        Some(rest) if is_quoted_string_rest(rest) => None,
        _ => Some("expected the text last, in double quotes (a quote inside escaped as \\\"), as in 399 sipadmit \"text\""),
    }
}

/// Whether `rest` is what follows the opening quote of one RFC 3261
/// quoted-string: `\` escapes the next character, and the only unescaped
/// `"` ends it, last.
fn is_quoted_string_rest(rest: &str) -> bool {
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return false,
            '"' => return chars.next().is_none(),
            _ => {}
        }
    }
    false
}

/// `"Name: value"` lines of `{key}.headers`, or `None` (each problem reported).
fn header_lines(
    key: &str,
    lines: &[String],
    problem: &mut dyn FnMut(String, String),
) -> Option<Vec<(String, String)>> {
    let mut ok = true;
    let mut headers = Vec::new();
    for (i, h) in lines.iter().enumerate() {
        match h.split_once(':') {
            Some((name, value))
                if is_header_name(name.trim())
                    && !value.bytes().any(|b| b == b'\r' || b == b'\n') =>
            {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            _ => {
                ok = false;
                problem(
                    format!("{key}.headers[{i}]"),
                    format!("expected \"Name: value\" on one line, got {h:?}"),
                );
            }
        }
    }
    ok.then_some(headers)
}

fn is_header_name(name: &str) -> bool {
    crate::sip::fields::is_token(name.as_bytes())
}
