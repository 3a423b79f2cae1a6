//! The config file as written, read leniently: every key of every section
//! is taken on its own, so one run reports every wrong-typed value and every
//! unknown key (with its key path) instead of stopping at the first.
//! Validation ([`super::Config::from_toml_str`]) then turns this into a
//! [`super::Config`] that cannot be invalid.
//!
//! A key that is missing, or present with the wrong type, keeps its default
//! here; the wrong type is recorded as a [`Problem`], so the file is still
//! refused.

use serde::de::DeserializeOwned;

use crate::policy::{Action, Mode};
use crate::problem::Problem;

/// The whole file (`config/sipadmit.toml` documents every key).
#[derive(Debug, Clone, Default)]
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
    /// `[tls]`: certificates, versions and ciphers of TLS listeners and upstream.
    pub tls: RawTls,
    /// `[rate_limit]`: per-source limits and bans.
    pub rate_limit: RawRateLimit,
    /// `[admin]`: the admin HTTP listener (metrics, health).
    pub admin: RawAdmin,
    /// `[hep]`: HEPv3 copies of messages and decisions for a Homer collector.
    pub hep: RawHep,
}

/// `[hep]`.
#[derive(Debug, Clone)]
pub struct RawHep {
    /// The collector, `udp:IP:PORT` or `tcp:IP:PORT`. Default: none,
    /// nothing exported.
    pub collector: Option<String>,
    /// Capture agent id sent in every packet. Default 1.
    pub capture_id: u32,
    /// Password sent in every packet (at most 256 bytes). Default: none.
    pub auth_key: Option<String>,
    /// `none`, `decisions` or `all`. Default (`None`): `all`.
    pub mirror: Option<String>,
}

impl Default for RawHep {
    fn default() -> Self {
        Self {
            collector: None,
            capture_id: super::hep::DEFAULT_CAPTURE_ID,
            auth_key: None,
            mirror: None,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default)]
pub struct RawAdmin {
    /// Admin HTTP listener, `IP:PORT` (`/metrics`, `/healthz`, `/readyz`).
    /// Default: none, no admin listener.
    pub listen: Option<String>,
    /// The admin listener may be on a non-loopback address on purpose: no
    /// warning at start. Default: false.
    pub allow_remote: bool,
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct RawProxy {
    /// Listeners, `udp:IP:PORT` or `tcp:IP:PORT` (IPv6 as `udp:[::1]:5060`).
    /// Default: `udp:0.0.0.0:5060` and `tcp:0.0.0.0:5060`.
    pub listen: Vec<String>,
    /// The registrar, `udp:IP:PORT` or `tcp:IP:PORT`. Required to run.
    pub upstream: Option<String>,
    /// Sources whose messages count as the registrar's: IPs (any port),
    /// CIDR networks, or exact `IP:PORT` / `[v6]:PORT`. Default (`None`):
    /// exactly the upstream's address.
    pub upstream_sources: Option<Vec<String>>,
    /// `enforce` (default) or `monitor`.
    pub mode: Mode,
    /// Decision records (JSON lines): a file path, or `-` for stdout. Default `-`.
    pub decision_log: String,
    /// Secret that signs flow tokens (at least 16 characters). Default: none,
    /// a random secret is made at start (tokens then do not survive a restart).
    pub flow_secret: Option<String>,
    /// File of flow secrets, one per line (at least 16 bytes each, at most
    /// 8): the first signs, every line verifies; read again on reload, so
    /// a pool's secret can be rotated. Not readable by every user. Not
    /// with `flow_secret`. Default: none.
    pub flow_secret_file: Option<String>,
    /// The name or address (optional port) written in Path, Record-Route
    /// and Via instead of the listener's address: a string for every
    /// listener, or a table of listener (as in `listen`) = name. Default:
    /// none, each listener's own address.
    pub advertise: Option<RawAdvertise>,
    /// Seconds between the OPTIONS probes sipadmit sends the registrar
    /// (0..=300; 0: none). Default 5.
    pub upstream_probe_secs: u64,
    /// Worker threads, each with its own event loop and its own sockets
    /// on every listener (1..=256). Default (`None`): one per core the
    /// process may run on.
    pub workers: Option<usize>,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: vec!["udp:0.0.0.0:5060".into(), "tcp:0.0.0.0:5060".into()],
            upstream: None,
            upstream_sources: None,
            mode: Mode::Enforce,
            decision_log: "-".into(),
            flow_secret: None,
            flow_secret_file: None,
            advertise: None,
            upstream_probe_secs: 5,
            workers: None,
        }
    }
}

/// `proxy.advertise` as written: one value for every listener, or one per
/// listener (keyed by the listener as in `proxy.listen`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum RawAdvertise {
    /// `advertise = "pool.example.com"`.
    All(String),
    /// `advertise = { "udp:0.0.0.0:5060" = "pool.example.com" }`.
    PerListener(std::collections::BTreeMap<String, String>),
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct RawLimits {
    /// Largest message accepted, bytes. Default 65535.
    pub max_message_bytes: usize,
    /// Most header lines in one message. Default 256.
    pub max_headers: usize,
    /// Most concurrent TCP client connections. Default 4096.
    pub max_connections: usize,
    /// Of `max_connections`, the slots only trusted sources and known flows
    /// may take (0..max_connections; 0: none reserved). Default: a tenth
    /// of `max_connections`, rounded down.
    pub reserved_connections: Option<usize>,
    /// A source that sent a complete message on a connection is a known
    /// flow this many seconds (0: none is; otherwise 60..=604800); a known
    /// flow may take one reserved slot. Default 3600.
    pub known_flow_secs: u64,
    /// Bytes the table of known flows may hold (65536..=1099511627776),
    /// about 48 bytes a source; when full the oldest is forgotten. Default
    /// 8388608 (8 MiB).
    pub known_flow_bytes: usize,
    /// A TCP connection idle this long is closed, seconds. Default 600
    /// (Lync clients send keep-alives every 300 s).
    pub tcp_idle_timeout_secs: u64,
    /// Most registrations remembered for agent offers (bindings, and
    /// REGISTERs awaiting their response, each), entries. Default 100000.
    pub max_registrations: usize,
    /// Most contacts one REGISTER may name (1..=1024); a REGISTER naming
    /// more is answered `403 Too Many Contacts`, logged, counted and
    /// recorded (rule `proxy.too-many-contacts`). Default 16.
    pub max_contacts_per_register: usize,
    /// Bytes the registration tables may hold, allocation slack included
    /// (REGISTERs awaiting their response at most a quarter, bindings the
    /// rest); when full the oldest entry is evicted. At least 1048576.
    /// Default 67108864 (64 MiB).
    pub registration_table_bytes: usize,
    /// Bytes the table of recorded transactions (which makes a
    /// retransmission get no second decision record) may hold, 48 bytes a
    /// transaction for 32 s; when full the oldest is forgotten. At least
    /// 65536. Default 8388608 (8 MiB).
    pub transaction_table_bytes: usize,
    /// Retry-After of the 503 sent when the upstream is unreachable, seconds. Default 30.
    pub upstream_retry_after_secs: u32,
    /// A stream message (headers and body) must be complete this many
    /// seconds after its first byte arrived, or the connection is closed
    /// (1..=300). Default 10. Separate from `tcp_idle_timeout_secs`, which
    /// runs between messages.
    pub message_deadline_secs: u64,
    /// Bytes all stream connections together may hold in read buffers
    /// (partial messages); when spent, reads wait until a connection
    /// completes, closes or misses its message deadline. At least twice
    /// `max_message_bytes`. Default 67108864 (64 MiB).
    pub read_buffer_budget_bytes: usize,
    /// Bytes queued for writing to one stream connection at most (65536..=
    /// 67108864). A connection at this bound is read no further until its
    /// peer reads; it is closed only when nothing could be written to it for
    /// 10 s. Default 1048576 (1 MiB).
    pub write_queue_bytes: usize,
    /// SO_RCVBUF asked for UDP listeners, bytes (65536..=1073741824; the
    /// kernel caps it at net.core.rmem_max). Default 4194304 (4 MiB).
    pub udp_receive_buffer_bytes: usize,
    /// SO_SNDBUF asked for UDP listeners, bytes (65536..=1073741824; the
    /// kernel caps it at net.core.wmem_max). Default 1048576 (1 MiB).
    pub udp_send_buffer_bytes: usize,
    /// Bytes the client transactions of requests that arrive over TCP/TLS
    /// and leave over UDP may hold (both copies of each request and about
    /// 770 bytes more), at least 65536; a request that finds no room is
    /// relayed once without retransmissions (counted). Default 67108864
    /// (64 MiB).
    pub client_transaction_bytes: usize,
    /// RFC 3261 T1, milliseconds (50..=10000): the first retransmission
    /// interval of a request from a TCP/TLS client relayed over UDP;
    /// 64*T1 without a (final) response answers it `408`. Default 500.
    pub timer_t1_ms: u64,
    /// RFC 3261 T2, milliseconds (T1..=60000): the longest retransmission
    /// interval of a non-INVITE request. Default 4000.
    pub timer_t2_ms: u64,
    /// RFC 3261 Timer C, seconds (1..=3600): how long an INVITE from a
    /// TCP/TLS client relayed over UDP may ring (after a provisional
    /// answer) without another provisional (101 to 199) or a final answer; then
    /// sipadmit sends the registrar its CANCEL and answers the caller
    /// `408`. Default 180.
    pub timer_c_secs: u64,
    /// Seconds a drain (the first SIGTERM) may last at most (0..=3600; 0:
    /// SIGTERM stops at once). Default 30.
    pub drain_secs: u64,
    /// Bytes of messages the queue to a TCP/TLS upstream may hold (65536..=
    /// 1099511627776); client connections stop reading while less than a
    /// quarter would be free once what they read is queued (waiting ones go
    /// in turn; one larger than three quarters once it fits at all), and a
    /// message that finds it full, or is larger than all of it, is answered `503` (rule
    /// `proxy.upstream-busy`). Default 33554432 (32 MiB, about 50000
    /// REGISTERs).
    pub upstream_queue_bytes: usize,
    /// Accept queue of each `tcp:` and `tls:` listener, connections
    /// (1..=65535; the kernel caps it at net.core.somaxconn). Default 4096.
    pub listen_backlog: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 65_535,
            max_headers: 256,
            max_connections: 4096,
            reserved_connections: None,
            known_flow_secs: 3600,
            known_flow_bytes: 8 << 20,
            tcp_idle_timeout_secs: 600,
            max_registrations: 100_000,
            max_contacts_per_register: 16,
            registration_table_bytes: 64 << 20,
            transaction_table_bytes: 8 << 20,
            upstream_retry_after_secs: 30,
            message_deadline_secs: 10,
            read_buffer_budget_bytes: 64 << 20,
            write_queue_bytes: 1 << 20,
            udp_receive_buffer_bytes: 4 << 20,
            udp_send_buffer_bytes: 1 << 20,
            client_transaction_bytes: 64 << 20,
            timer_t1_ms: 500,
            timer_t2_ms: 4000,
            timer_c_secs: 180,
            drain_secs: 30,
            upstream_queue_bytes: 32 << 20,
            listen_backlog: 4096,
        }
    }
}

/// `[rate_limit]`: per-source limits and bans (validated in `config`;
/// `config/sipadmit.toml` documents each key). A source is an IPv4
/// address or an IPv6 /64.
#[derive(Debug, Clone)]
pub struct RawRateLimit {
    /// Networks (CIDR or address) never limited or banned. Default
    /// loopback (`127.0.0.0/8`, `::1`). The registrar (`proxy.upstream_sources`)
    /// and the Response Group application (`response_group.application_sources`)
    /// are exempt too.
    pub trusted: Vec<String>,
    /// SIP messages per second one source may send, sustained: over UDP,
    /// and apart from that over TCP/TLS connections. Default 50.
    pub requests_per_second: u32,
    /// SIP messages one source may send at once above that rate. Default 200.
    pub burst: u32,
    /// New stream connections per second from one source (bursts up to
    /// `max_connections_per_source`). Default 10.
    pub connections_per_second: u32,
    /// Open stream connections from one source at most. Default 32.
    pub max_connections_per_source: u32,
    /// How long a ban lasts, seconds (0: never ban). Default 300.
    pub ban_secs: u64,
    /// `"reject"` (503 with Retry-After) or `"drop"`. Default `"reject"`.
    pub over_limit: String,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            trusted: vec!["127.0.0.0/8".into(), "::1".into()],
            requests_per_second: 50,
            burst: 200,
            connections_per_second: 10,
            max_connections_per_source: 32,
            ban_secs: 300,
            over_limit: "reject".into(),
        }
    }
}

/// `[catalog]`.
#[derive(Debug, Clone, Default)]
pub struct RawCatalog {
    /// Client catalog file, relative to this config file. Default: the
    /// catalog shipped in `config/clients.toml`, built into the binary.
    pub path: Option<String>,
}

/// `[response_group]`.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
/// default (see `config/sipadmit.toml` and the role defaults in `config/mod.rs`).
#[derive(Debug, Clone, Default)]
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
    /// Warning header value of a reject of an unknown or missing
    /// User-Agent (`{client}` = client name); `""` for none.
    pub unknown_warning: Option<String>,
}

/// `[tls]` (validated by `config::tls`; `config/sipadmit.toml` documents
/// each key). Paths are relative to the config file.
#[derive(Debug, Clone)]
pub struct RawTls {
    /// PEM certificate chain (certificate first) of `tls:` listeners. Default none.
    pub certificate: Option<String>,
    /// PEM private key of `certificate`. Default none.
    pub private_key: Option<String>,
    /// PEM roots client certificates must chain to (mutual TLS). Default none.
    pub client_ca: Option<String>,
    /// Oldest TLS version: `"1.0"`, `"1.1"`, `"1.2"` or `"1.3"`. Default `"1.2"`.
    pub min_version: String,
    /// OpenSSL cipher list for TLS 1.2 and below. Default
    /// [`super::tls::DEFAULT_CIPHERS`].
    pub ciphers: String,
    /// PEM roots the registrar's certificate must chain to. Default: the system's.
    pub upstream_ca: Option<String>,
    /// Name the registrar's certificate must carry (and SNI). Default: the
    /// upstream's address.
    pub upstream_server_name: Option<String>,
    /// PEM client certificate chain presented to the registrar. Default none.
    pub upstream_certificate: Option<String>,
    /// PEM private key of `upstream_certificate`. Default none.
    pub upstream_private_key: Option<String>,
    /// Handshake deadline, seconds. Default 10.
    pub handshake_timeout_secs: u64,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            certificate: None,
            private_key: None,
            client_ca: None,
            min_version: "1.2".into(),
            ciphers: super::tls::DEFAULT_CIPHERS.into(),
            upstream_ca: None,
            upstream_server_name: None,
            upstream_certificate: None,
            upstream_private_key: None,
            handshake_timeout_secs: super::tls::DEFAULT_HANDSHAKE_TIMEOUT_SECS,
        }
    }
}

// === reading ===

impl RawConfig {
    /// Read a parsed TOML document. Every wrong-typed value and every
    /// unknown key is added to `problems`; such keys keep their defaults.
    pub fn read(document: toml::Table, problems: &mut Vec<Problem>) -> Self {
        let mut root = Section::new(String::new(), document, problems);
        let raw = Self {
            proxy: RawProxy::read(root.section("proxy")),
            limits: RawLimits::read(root.section("limits")),
            catalog: RawCatalog::read(root.section("catalog")),
            response_group: RawResponseGroup::read(root.section("response_group")),
            policy: RawPolicy::read(root.section("policy")),
            tls: RawTls::read(root.section("tls")),
            rate_limit: RawRateLimit::read(root.section("rate_limit")),
            admin: RawAdmin::read(root.section("admin")),
            hep: RawHep::read(root.section("hep")),
        };
        root.finish();
        raw
    }
}

/// `impl $ty { fn read(Section) -> Self }`: each field read from the key
/// of the same name, in the order listed, then every other key of the
/// table reported as unknown. An `or_default` field keeps the value of
/// `$ty::default()` when its key is missing or wrong; an `optional` field
/// is then `None`; a `table(T)` field is `T::read` of the sub-table.
macro_rules! read_by_field_name {
    ($ty:ident { $($field:ident: $how:ident $(($table:ident))?),* $(,)? }) => {
        impl $ty {
            fn read(mut s: Section<'_>) -> Self {
                #[allow(unused_variables)]
                let d = Self::default();
                let raw = Self {
                    $($field: read_by_field_name!(@$how s, d, $field $(, $table)?),)*
                };
                s.finish();
                raw
            }
        }
    };
    (@or_default $s:ident, $d:ident, $field:ident) => {
        $s.get(stringify!($field)).unwrap_or($d.$field)
    };
    (@optional $s:ident, $d:ident, $field:ident) => {
        $s.get(stringify!($field))
    };
    (@table $s:ident, $d:ident, $field:ident, $table:ident) => {
        $table::read($s.section(stringify!($field)))
    };
}

read_by_field_name!(RawProxy {
    listen: or_default,
    upstream: optional,
    upstream_sources: optional,
    mode: or_default,
    decision_log: or_default,
    flow_secret: optional,
    flow_secret_file: optional,
    advertise: optional,
    upstream_probe_secs: or_default,
    workers: optional,
});

read_by_field_name!(RawLimits {
    max_message_bytes: or_default,
    max_headers: or_default,
    max_connections: or_default,
    reserved_connections: optional,
    known_flow_secs: or_default,
    known_flow_bytes: or_default,
    tcp_idle_timeout_secs: or_default,
    max_registrations: or_default,
    max_contacts_per_register: or_default,
    registration_table_bytes: or_default,
    transaction_table_bytes: or_default,
    upstream_retry_after_secs: or_default,
    message_deadline_secs: or_default,
    read_buffer_budget_bytes: or_default,
    write_queue_bytes: or_default,
    udp_receive_buffer_bytes: or_default,
    udp_send_buffer_bytes: or_default,
    client_transaction_bytes: or_default,
    timer_t1_ms: or_default,
    timer_t2_ms: or_default,
    timer_c_secs: or_default,
    drain_secs: or_default,
    upstream_queue_bytes: or_default,
    listen_backlog: or_default,
});

read_by_field_name!(RawRateLimit {
    trusted: or_default,
    requests_per_second: or_default,
    burst: or_default,
    connections_per_second: or_default,
    max_connections_per_source: or_default,
    ban_secs: or_default,
    over_limit: or_default,
});

read_by_field_name!(RawCatalog { path: optional });

read_by_field_name!(RawResponseGroup {
    workflows: or_default,
    application_user_agents: or_default,
    application_from_uris: or_default,
    application_sources: or_default,
    agents: or_default,
});

read_by_field_name!(RawPolicy {
    scanner: or_default,
    flag_header: or_default,
    caller: table(RawRolePolicy),
    agent_offer: table(RawRolePolicy),
    agent_registration: table(RawRolePolicy),
});

read_by_field_name!(RawRolePolicy {
    unsupported: optional,
    third_party: optional,
    unknown: optional,
    status: optional,
    reason: optional,
    warning: optional,
    headers: optional,
    unknown_warning: optional,
});

read_by_field_name!(RawAdmin {
    listen: optional,
    allow_remote: or_default,
});

read_by_field_name!(RawHep {
    collector: optional,
    capture_id: or_default,
    auth_key: optional,
    mirror: optional,
});

read_by_field_name!(RawTls {
    certificate: optional,
    private_key: optional,
    client_ca: optional,
    min_version: or_default,
    ciphers: or_default,
    upstream_ca: optional,
    upstream_server_name: optional,
    upstream_certificate: optional,
    upstream_private_key: optional,
    handshake_timeout_secs: or_default,
});

/// One table of the file: hands out its keys one at a time, each
/// deserialized on its own, and at [`Section::finish`] reports every key
/// nobody asked for.
struct Section<'p> {
    /// Key path of the table (`""` for the top level, `policy.caller`).
    path: String,
    /// Keys not taken yet.
    table: toml::Table,
    /// Keys asked for so far, in the order of the documentation.
    known: Vec<&'static str>,
    problems: &'p mut Vec<Problem>,
}

impl<'p> Section<'p> {
    fn new(path: String, table: toml::Table, problems: &'p mut Vec<Problem>) -> Self {
        Self {
            path,
            table,
            known: Vec::new(),
            problems,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`, if present and of type `T`; a value of another
    /// type is recorded as a problem.
    fn get<T: ConfigValue>(&mut self, key: &'static str) -> Option<T> {
        self.known.push(key);
        let value = self.table.remove(key)?;
        match value.clone().try_into::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                let problem = Problem::new(
                    self.key_path(key),
                    format!("expected {}, got {value}", T::EXPECTED),
                );
                self.problems.push(problem);
                None
            }
        }
    }

    /// The sub-table `key` (empty when absent, or when not a table, which
    /// is recorded as a problem).
    #[must_use = "a section reports its unknown keys at finish()"]
    fn section(&mut self, key: &'static str) -> Section<'_> {
        self.known.push(key);
        let path = self.key_path(key);
        let table = match self.table.remove(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(table)) => table,
            Some(other) => {
                let message = format!("expected a table ([{path}]), got {other}");
                self.problems.push(Problem::new(path.clone(), message));
                toml::Table::new()
            }
        };
        Section::new(path, table, self.problems)
    }

    /// Record every key that was not asked for.
    fn finish(self) {
        for key in self.table.keys() {
            let message = format!("unknown key (known: {})", self.known.join(", "));
            self.problems
                .push(Problem::new(self.key_path(key), message));
        }
    }
}

/// A type a config key can hold, with the words for it in a problem.
trait ConfigValue: DeserializeOwned {
    /// What a value of this type looks like, completing "expected ...".
    const EXPECTED: &'static str;
}

impl ConfigValue for String {
    const EXPECTED: &'static str = "a string";
}

impl ConfigValue for Vec<String> {
    const EXPECTED: &'static str = "an array of strings";
}

impl ConfigValue for usize {
    const EXPECTED: &'static str = "a non-negative integer";
}

impl ConfigValue for u64 {
    const EXPECTED: &'static str = "a non-negative integer";
}

impl ConfigValue for u32 {
    const EXPECTED: &'static str = "an integer from 0 to 4294967295";
}

impl ConfigValue for u16 {
    const EXPECTED: &'static str = "an integer from 0 to 65535";
}

impl ConfigValue for bool {
    const EXPECTED: &'static str = "true or false";
}

impl ConfigValue for RawAdvertise {
    const EXPECTED: &'static str =
        "a string (HOST or HOST:PORT, for every listener) or a table of listener = \"HOST[:PORT]\"";
}

impl ConfigValue for Mode {
    const EXPECTED: &'static str = "\"enforce\" or \"monitor\"";
}

impl ConfigValue for Action {
    const EXPECTED: &'static str = "\"allow\", \"flag\", \"reject\" or \"drop\"";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (RawConfig, Vec<String>) {
        let mut problems = Vec::new();
        let raw = RawConfig::read(text.parse().unwrap(), &mut problems);
        (raw, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn every_wrong_type_is_reported_with_its_key_path() {
        let (raw, problems) = read(
            "[limits]\nmax_headers = \"lots\"\nmax_connections = -1\n\
             [proxy]\nmode = \"enforc\"\nlisten = \"udp:127.0.0.1:5060\"\n\
             [policy.caller]\nstatus = 70000\nunknown = 3\n",
        );
        assert_eq!(
            problems,
            [
                "proxy.listen: expected an array of strings, got \"udp:127.0.0.1:5060\"",
                "proxy.mode: expected \"enforce\" or \"monitor\", got \"enforc\"",
                "limits.max_headers: expected a non-negative integer, got \"lots\"",
                "limits.max_connections: expected a non-negative integer, got -1",
                "policy.caller.unknown: expected \"allow\", \"flag\", \"reject\" or \"drop\", got 3",
                "policy.caller.status: expected an integer from 0 to 65535, got 70000",
            ]
        );
        // Wrong-typed keys keep their defaults.
        assert_eq!(raw.limits.max_headers, RawLimits::default().max_headers);
        assert_eq!(raw.policy.caller.status, None);
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_known_ones() {
        let (raw, problems) = read(
            "extra = 1\n[proxy]\nlisen = []\nupstream = \"udp:127.0.0.1:5070\"\n\
             [policy.agent_offer]\nstatuss = 480\n[proxi]\n",
        );
        assert_eq!(
            problems,
            [
                "proxy.lisen: unknown key (known: listen, upstream, upstream_sources, mode, decision_log, flow_secret, flow_secret_file, advertise, upstream_probe_secs, workers)",
                "policy.agent_offer.statuss: unknown key (known: unsupported, third_party, unknown, status, reason, warning, headers, unknown_warning)",
                "extra: unknown key (known: proxy, limits, catalog, response_group, policy, tls, rate_limit, admin, hep)",
                "proxi: unknown key (known: proxy, limits, catalog, response_group, policy, tls, rate_limit, admin, hep)",
            ]
        );
        // Known keys beside unknown ones are still read.
        assert_eq!(raw.proxy.upstream.as_deref(), Some("udp:127.0.0.1:5070"));
    }

    #[test]
    fn a_section_that_is_not_a_table_is_reported() {
        let (_, problems) = read("proxy = 3\n[policy]\ncaller = \"reject\"\n");
        assert_eq!(
            problems,
            [
                "proxy: expected a table ([proxy]), got 3",
                "policy.caller: expected a table ([policy.caller]), got \"reject\"",
            ]
        );
    }

    #[test]
    fn an_empty_document_is_all_defaults() {
        let (raw, problems) = read("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(raw.proxy.listen, RawProxy::default().listen);
        assert_eq!(raw.policy.flag_header, "X-Sipadmit");
        assert!(!raw.admin.allow_remote);
    }

    #[test]
    fn admin_allow_remote_is_a_boolean() {
        let (raw, problems) = read("[admin]\nallow_remote = true\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(raw.admin.allow_remote);
        let (raw, problems) = read("[admin]\nallow_remote = \"yes\"\n");
        assert_eq!(
            problems,
            ["admin.allow_remote: expected true or false, got \"yes\""]
        );
        assert!(!raw.admin.allow_remote);
    }
}
