//! Stage 5, act: the stateless proxy core (RFC 3261 section 16.11).
//!
//! [`Core::handle`] takes one inbound message and returns what to send
//! where, plus the decision record. It does no I/O: the transports in
//! [`crate::transport`] feed it and carry out the outcome. State is limited
//! to the registration tables and the transactions recorded, both bounded
//! in bytes; flows are named by signed tokens.
//!
//! - `request`: a request goes through named phases over one context,
//!   validate → route → admit → relay; any phase may stop it with a
//!   [`Refusal`] (answered locally), an absorbed ACK or a policy drop.
//! - `response`: a response whose top Via is ours goes back to the flow
//!   named in that Via's token.
//! - [`Refusal`] (`refusal.rs`): every answer the proxy gives itself, with
//!   its SIP response, its log line and its decision record, in one place.
//! - [`client_transactions`]: the retransmissions of requests that came
//!   over TCP or TLS and leave over UDP (RFC 3261 17.1), and the `408`
//!   when nothing answers them.
//! - [`health`]: readiness ([`Core::not_ready`], shared with `/readyz`),
//!   draining, and the answer to an OPTIONS addressed to sipadmit itself.
//! - [`listening`]: this proxy's own addresses and advertised names, and
//!   whether a URI or Via names them.
//! - [`flow`]: signed flow tokens; [`registrations`]: the registration
//!   tables; [`transactions`]: the transactions recorded, so that a
//!   retransmission is handled again but not recorded again; both on
//!   [`crate::expiring`], a map with O(1) insert, expiry and eviction.
//!
//! The runtime configuration (catalog, Response Group matchers, policy,
//! flag header) is an [`ArcSwap`] snapshot loaded once per message:
//! [`Core::publish`] swaps in a new one, and messages already being handled
//! finish with the one they started with. The flow signer is an [`ArcSwap`]
//! of its own ([`Core::set_flow_signer`], at a reload that changed the
//! secrets): no lock on the message path either way.

pub mod client_transactions;

pub mod flow;
pub mod health;
pub mod listening;
mod refusal;
pub mod registrations;
mod request;
mod response;
pub mod toward_clients;
pub mod transactions;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;

use crate::classify::{ClientProduct, CLIENT_UNKNOWN};
use crate::config::{Config, ConfigError, Overrides, RuntimeConfig, Settings};
use crate::observe::decision_log::{record_time, DecisionKind, DecisionRecord};
use crate::observe::metrics::{DropReason, MessageKind, Metrics};
use crate::observe::summary::{EventSummary, Noted, WindowTotals, SUMMARY_WINDOW};
use crate::policy::{Action, SessionRole};
use crate::sip::{HeaderName, SipError, SipView, Via};
use crate::transport::admission::BanCause;
use crate::transport::{BootId, ConnectionId, FlowId, Transport, WarningWindow};
pub use crate::vocabulary::{Inbound, Leg, LocalAddr, PeerAddr, SourceRefusal};
use client_transactions::{ClientTransactions, Timers, TransactionKey};
use flow::{Flow, FlowSigner, Purpose, TokenError, Verified};
use listening::Listening;
pub use refusal::{FlowFailure, Refusal};
use registrations::{RegistrationLimits, Registrations};
use transactions::{CopyFate, Decided, RecordKind, Transactions, Treatment};

/// Via parameter of the proxy's own Via that carries the client flow token.
const FLOW_PARAM: &str = "sipadmit-flow";
/// Via parameter of the proxy's own Via on a request relayed toward a
/// client that carries the token of the flow the request came from
/// ([`flow::Purpose::ViaBack`]): the client's response goes back there. A
/// parameter of its own, so that an instance of an earlier version, which
/// does not know it, sends that response upstream as it always did.
const BACK_PARAM: &str = "sipadmit-back";
/// Prefix of the branches this proxy generates.
const BRANCH_PREFIX: &str = "z9hG4bKsa";
/// Prefix of the branches of the OPTIONS probes this proxy sends the
/// registrar ([`Core::probe_request`]); never a relayed request's (those
/// are hex digits after [`BRANCH_PREFIX`]).
const PROBE_BRANCH_PREFIX: &str = "z9hG4bKsaprobe";

/// The address a [`Core::detached`] core is reachable at (UDP and TCP).
pub const DETACHED_ADDRESS: LocalAddr =
    LocalAddr(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5060)));
/// The upstream registrar of a [`Core::detached`] core.
pub const DETACHED_UPSTREAM: &str = "udp:127.0.0.1:5070";
/// The configuration the fuzzers run a [`Core::detached`] core with
/// (`fuzz/fuzz_targets/proxy_core.rs`, `tests/fuzz_pipeline.rs`): every
/// `example.com` URI is a workflow and an agent, so INVITEs and REGISTERs
/// take Response Group roles and reach every policy branch.
pub const FUZZ_CONFIG: &str =
    "[response_group]\nworkflows = [\"sip:*@example.com\"]\nagents = [\"sip:*@example.com\"]\n";

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The configured registrar.
    Upstream,
    /// A client flow: a UDP address, or a stream connection of this
    /// instance (checked: its boot id is this instance's).
    Flow(Flow),
    /// Back to the sender of the inbound message (local responses).
    Source,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Where.
    pub to: Destination,
    /// What.
    pub bytes: Bytes,
}

/// The result of handling one message: exactly one thing happens to it,
/// decided and recorded inside the core (the I/O layer only carries it out).
#[derive(Debug)]
pub enum Outcome {
    /// Send it on: a request toward the registrar or a client flow, a
    /// response toward its client, or a request sent again by its client
    /// transaction.
    Relay {
        /// The edited message and where it goes.
        send: Outbound,
        /// The decision record of a REGISTER or INVITE (none for other
        /// methods, responses, retransmissions and requests already
        /// recorded).
        record: Option<DecisionRecord>,
        /// The request came over TCP or TLS and leaves over UDP: keep its
        /// client transaction under this key ([`Core::keep_transaction`])
        /// before it is sent, so it is retransmitted until answered.
        retransmit: Option<TransactionKey>,
    },
    /// Answer the sender locally (a refusal, a health answer).
    Answer {
        /// The response, sent back the way the request came.
        bytes: Bytes,
        /// The decision record (none for a retransmission already recorded
        /// or a health answer).
        record: Option<DecisionRecord>,
    },
    /// Send nothing; counted under `reason`.
    Drop {
        /// Why.
        reason: DropReason,
        /// The decision record of a dropped request (policy, ban, a
        /// request that cannot be answered), when it was recorded.
        record: Option<DecisionRecord>,
    },
    /// Nothing to send and nothing lost: a message for sipadmit itself
    /// (the registrar's answer to its OPTIONS probe).
    Consumed,
}

impl Outcome {
    /// A drop without a record.
    fn drop(reason: DropReason) -> Self {
        Self::Drop {
            reason,
            record: None,
        }
    }

    /// `send` goes out without a record or a client transaction of its
    /// own: a response relayed, an ACK sent again, a retransmission, a
    /// request of sipadmit's own.
    fn send(send: Outbound) -> Self {
        Self::Relay {
            send,
            record: None,
            retransmit: None,
        }
    }

    /// What is sent and where (an answer goes to [`Destination::Source`]).
    pub fn outbound(&self) -> Option<Outbound> {
        match self {
            Self::Relay { send, .. } => Some(send.clone()),
            Self::Answer { bytes, .. } => Some(Outbound {
                to: Destination::Source,
                bytes: bytes.clone(),
            }),
            Self::Drop { .. } | Self::Consumed => None,
        }
    }

    /// The decision record, if there is one.
    pub fn record(&self) -> Option<&DecisionRecord> {
        match self {
            Self::Relay { record, .. }
            | Self::Answer { record, .. }
            | Self::Drop { record, .. } => record.as_ref(),
            Self::Consumed => None,
        }
    }

    /// The decision record, consumed.
    pub fn into_record(mut self) -> Option<DecisionRecord> {
        self.take_record()
    }

    /// Take the decision record out (to submit it).
    pub fn take_record(&mut self) -> Option<DecisionRecord> {
        match self {
            Self::Relay { record, .. }
            | Self::Answer { record, .. }
            | Self::Drop { record, .. } => record.take(),
            Self::Consumed => None,
        }
    }

    /// How it handles a request: relayed, answered (with its status) or
    /// dropped; `None` when consumed.
    pub fn treatment(&self) -> Option<Treatment> {
        match self {
            Self::Relay { .. } => Some(Treatment::Relayed),
            Self::Answer { bytes, .. } => {
                Some(Treatment::Answered(response_status(bytes).unwrap_or(0)))
            }
            Self::Drop { .. } => Some(Treatment::Dropped),
            Self::Consumed => None,
        }
    }

    /// Why nothing is sent, when it is a drop.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            Self::Drop { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// One generation of the runtime configuration, as the core uses it for
/// one message.
#[derive(Debug)]
pub struct Runtime {
    /// 1 for the configuration loaded at start, then one more per
    /// [`Core::publish`]; named in decision records.
    pub generation: u64,
    /// Catalog, Response Group matchers, policy, flag header.
    pub config: RuntimeConfig,
}

impl Runtime {
    /// The catalog's built-in client for User-Agents nothing matches (the
    /// stand-in for agent endpoints nobody registered through this proxy).
    fn unknown_client(&self) -> &ClientProduct {
        let catalog = &self.config.catalog;
        // Every catalog has the built-in; `missing` is the (total) fallback.
        catalog
            .client(CLIENT_UNKNOWN)
            .unwrap_or_else(|| catalog.classify(None).client)
    }
}

/// Whether a stream connection of this instance is still open to a peer:
/// the transports answer it for [`Core::handle`].
pub type OpenConnection<'a> = &'a dyn Fn(ConnectionId, SocketAddr) -> bool;

/// The client a decision is about, and how it was identified.
#[derive(Debug, Clone)]
struct Subject<'c> {
    client: &'c ClientProduct,
    /// The catalog rule that classified it, or `registered:<client>` for
    /// an agent offer decided by the client that registered the target.
    rule: Cow<'c, str>,
}

/// The proxy core: settings, the runtime snapshot, signer, boot id,
/// registration table, own addresses.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    runtime: ArcSwap<Runtime>,
    /// The snapshot before the one in use (none before the first reload):
    /// a refusal of a source's rate limit decided under it may reach the
    /// core after a reload ([`Core::refuse_source`]).
    previous_runtime: ArcSwapOption<Runtime>,
    /// Held while publishing, so generations are stored in order.
    publishing: Mutex<()>,
    /// Signs and checks flow tokens; swapped when a reload changes the
    /// secrets.
    signer: ArcSwap<FlowSigner>,
    /// Set by [`Core::start_draining`]: the instance reports itself not
    /// ready.
    draining: AtomicBool,
    /// Scopes this instance's connection ids in flow tokens.
    boot: BootId,
    registrations: Registrations,
    /// The transactions recorded in the last 32 s.
    transactions: Transactions,
    /// The client transactions of stream-to-UDP requests.
    client_transactions: ClientTransactions,
    /// The registrar's requests relayed toward clients, until their final
    /// answers (what a drain waits for on the callee side).
    toward_clients: toward_clients::TowardClients,
    /// Rate limits of the warnings about the registration tables.
    warnings: TableWarnings,
    /// Summaries of malformed messages and refused requests.
    summaries: Summaries,
    /// The listeners, with what each advertises in Via, Path and
    /// Record-Route.
    listeners: Vec<Listening>,
    metrics: Arc<Metrics>,
}

impl Core {
    /// A core for `config` (its runtime part becomes generation 1),
    /// reachable at `listeners` (bound listener addresses, with what each
    /// advertises), naming its stream flows with `boot`.
    pub fn new(
        config: Config,
        signer: FlowSigner,
        boot: BootId,
        listeners: Vec<Listening>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Config {
            settings, runtime, ..
        } = config;
        Self {
            registrations: Registrations::new(RegistrationLimits {
                max_entries: settings.limits.max_registrations,
                table_bytes: settings.limits.registration_table_bytes,
                max_contacts_per_register: settings.limits.max_contacts_per_register,
            }),
            transactions: Transactions::new(settings.limits.transaction_table_bytes),
            client_transactions: ClientTransactions::new(
                Timers {
                    t1: settings.limits.timer_t1,
                    t2: settings.limits.timer_t2,
                    timer_c: settings.limits.timer_c,
                },
                settings.limits.client_transaction_bytes,
            ),
            toward_clients: toward_clients::TowardClients::new(
                settings.limits.timer_c,
                settings.limits.timer_t1 * 64,
            ),
            warnings: TableWarnings::default(),
            summaries: Summaries::default(),
            settings,
            runtime: ArcSwap::from_pointee(Runtime {
                generation: 1,
                config: runtime,
            }),
            previous_runtime: ArcSwapOption::empty(),
            publishing: Mutex::new(()),
            signer: ArcSwap::from_pointee(signer),
            draining: AtomicBool::new(false),
            boot,
            listeners,
            metrics,
        }
    }

    /// A core with no sockets behind it, for fuzzing, tests and benches:
    /// `toml` is a sipadmit config, with the upstream set to
    /// [`DETACHED_UPSTREAM`] and the core reachable at [`DETACHED_ADDRESS`]
    /// over UDP and TCP (advertising what `proxy.advertise` gives the first
    /// listener of each transport). Flow tokens are signed with the
    /// configured secrets (a fixed test secret when unset) and the boot id
    /// is 1, so runs repeat exactly.
    pub fn detached(toml: &str) -> Result<Self, ConfigError> {
        let config = Config::from_toml_str(
            toml,
            Path::new("detached.toml"),
            &Overrides {
                upstream: Some(DETACHED_UPSTREAM.into()),
                ..Overrides::default()
            },
        )?;
        let settings = &config.settings;
        let signer = settings
            .flow_secrets
            .as_ref()
            .and_then(|s| FlowSigner::with_secrets(s.secrets()))
            .unwrap_or_else(|| FlowSigner::new(b"detached-core-flow-secret"));
        let listeners = [Transport::Udp, Transport::Tcp]
            .into_iter()
            .map(|transport| Listening {
                transport,
                addr: DETACHED_ADDRESS.0,
                advertise: settings.advertise.for_transport(transport).cloned(),
                bound: DETACHED_ADDRESS.0,
                receives_at: Vec::new(),
            })
            .collect();
        Ok(Self::new(
            config,
            signer,
            BootId::from_u64(1),
            listeners,
            Arc::new(Metrics::default()),
        ))
    }

    /// Swap in a new runtime configuration; returns its generation. The
    /// next message is handled with it; messages being handled finish with
    /// the one they started with.
    pub fn publish(&self, config: RuntimeConfig) -> u64 {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.runtime.load().generation + 1;
        let previous = self.runtime.swap(Arc::new(Runtime { generation, config }));
        self.previous_runtime.store(Some(previous));
        generation
    }

    /// The snapshot of `generation` when it is the one in use or the one
    /// before; the one in use otherwise (two reloads in a moment).
    fn runtime_of(&self, generation: u64) -> Arc<Runtime> {
        let current = self.runtime.load_full();
        if current.generation == generation {
            return current;
        }
        match self.previous_runtime.load_full() {
            Some(previous) if previous.generation == generation => previous,
            _ => current,
        }
    }

    /// The runtime configuration in use (the snapshot the next message
    /// gets).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The generation of the runtime configuration in use.
    pub fn generation(&self) -> u64 {
        self.runtime.load().generation
    }

    /// The flow signer in use.
    pub fn flow_signer(&self) -> Arc<FlowSigner> {
        self.signer.load_full()
    }

    /// Swap in a new flow signer (the secrets changed at a reload); returns
    /// whether it differs from the one in use (same secrets: kept). Tokens
    /// are checked by the new one from the next message on.
    pub fn set_flow_signer(&self, signer: FlowSigner) -> bool {
        if **self.signer.load() == signer {
            return false;
        }
        self.signer.store(Arc::new(signer));
        true
    }

    /// The signer for this use (a lock-free load).
    fn signer(&self) -> arc_swap::Guard<Arc<FlowSigner>> {
        self.signer.load()
    }

    /// Decode and verify a flow token; one verified by an older secret
    /// (a rotation in progress) is counted.
    fn decode_token(&self, token: &[u8]) -> Result<(Purpose, Flow), TokenError> {
        self.decode_bound_token(token, &[])
    }

    /// Whether `token` is a valid flow token of a route set (a Path or a
    /// Record-Route's), counting nothing.
    fn is_route_token(&self, token: &[u8]) -> bool {
        matches!(
            self.signer().decode_bound(token, &[]),
            Ok((
                Purpose::Path | Purpose::DialogFromClient | Purpose::DialogFromUpstream,
                ..
            ))
        )
    }

    /// [`Core::decode_token`] for a token bound to `binding`.
    fn decode_bound_token(
        &self,
        token: &[u8],
        binding: &[u8],
    ) -> Result<(Purpose, Flow), TokenError> {
        let (purpose, flow, verified) = self.signer().decode_bound(token, binding)?;
        if verified == Verified::Older {
            Metrics::inc(&self.metrics.flow_tokens_older_secret);
        }
        Ok((purpose, flow))
    }

    /// The listeners, with what each advertises.
    pub fn listeners(&self) -> &[Listening] {
        &self.listeners
    }

    /// This instance's boot id.
    pub fn boot(&self) -> BootId {
        self.boot
    }

    /// The registration table (for sweeping and tests).
    pub fn registrations(&self) -> &Registrations {
        &self.registrations
    }

    /// The transactions recorded (for tests and the admin gauges).
    pub fn transactions(&self) -> &Transactions {
        &self.transactions
    }

    /// The client transactions kept for stream-to-UDP requests.
    pub fn client_transactions(&self) -> &ClientTransactions {
        &self.client_transactions
    }

    /// The registrar's requests relayed toward clients and not answered
    /// yet.
    pub fn toward_clients(&self) -> &toward_clients::TowardClients {
        &self.toward_clients
    }

    /// A request of the registrar's side could not be sent to its client
    /// flow: an INVITE's answer is not to be waited for.
    pub fn not_sent_toward_client(&self, inbound: &Inbound, now: Instant) {
        if !inbound.bytes.starts_with(b"INVITE ") {
            return;
        }
        let Ok(view) = SipView::parse(inbound.bytes.clone()) else {
            return;
        };
        if let Some(branch) = view.top_via().ok().and_then(|via| via.branch()) {
            self.toward_clients.forget(branch, now);
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Handle one inbound message. `open` tells whether a stream connection
    /// of this instance is still open to a peer.
    pub fn handle(&self, inbound: &Inbound, now: Instant, open: OpenConnection<'_>) -> Outcome {
        self.handle_banning(inbound, now, open, &mut |_| false)
    }

    /// [`Core::handle`] for the transports, which ban scanners: when the
    /// sender's User-Agent is a scanner's, `ban` is asked whether this
    /// message gets its source banned (`rate_limit.ban_secs`), once the
    /// request is admitted and before the policy's verdict is applied. A
    /// message that does is dropped, and its record says why (action
    /// `drop`, rule `ban.scanner`, a protocol record): the policy's verdict
    /// is never carried out, logged or counted for it.
    pub fn handle_banning(
        &self,
        inbound: &Inbound,
        now: Instant,
        open: OpenConnection<'_>,
        ban: &mut dyn FnMut(SocketAddr) -> bool,
    ) -> Outcome {
        let kind = MessageKind::of(&inbound.bytes);
        self.metrics.count_received(inbound.transport, kind);
        let outcome = match SipView::parse(inbound.bytes.clone()) {
            Ok(view) if view.is_request() => {
                let runtime = self.runtime.load();
                let outcome = self.request(inbound, &view, &runtime, now, open, ban);
                // The scanner ban a request earned is recorded even when the
                // request repeats one decided before (a retransmission), and
                // so is the 503 of a registrar known to be down, which may
                // follow the relay of the request's first copy.
                let kind = match outcome.record().map(|r| &*r.rule) {
                    Some(rule) if rule == BanCause::Scanner.rule() => RecordKind::Ban,
                    Some(rule) if rule == Refusal::UpstreamUnavailable.rule() => {
                        RecordKind::UpstreamUnavailable
                    }
                    _ => RecordKind::Decision,
                };
                let outcome = self.record_once(&view, inbound, kind, outcome, now);
                if matches!(outcome, Outcome::Answer { .. }) {
                    // A copy of a REGISTER under way answered here (a 503
                    // for a registrar known down since its first copy went
                    // out) awaits nothing more; one dropped does.
                    let ctx = request::RequestCtx::new(inbound, &view, &runtime, now);
                    self.register_answered_here(&ctx);
                }
                self.note_invite_fate(&view, &outcome, now);
                outcome
            }
            Ok(view) => self.response(inbound, &view, now, open),
            Err(e) => self.unparsable(inbound, e, now),
        };
        self.count_outcome(&outcome);
        outcome
    }

    /// A message that does not parse: dropped, counted, and noted for the
    /// malformed-message summary (the first few of every 10 s logged), or,
    /// for a HEP packet, for the summary of those (the first of every 10 s
    /// logged as a warning: a capture agent's collector is this SIP port).
    /// A HEP packet is counted as any malformed message is.
    fn unparsable(&self, inbound: &Inbound, error: SipError, now: Instant) -> Outcome {
        let reason = if inbound.is_response() {
            DropReason::MalformedResponse
        } else {
            DropReason::Malformed
        };
        if crate::observe::hep::is_hep_packet(&inbound.bytes) {
            self.hep_packet_dropped(inbound, now);
        } else {
            let noted = self.summaries.note_malformed(inbound.source.ip(), now);
            if let Some(t) = noted.closed {
                malformed_summary(t);
            }
            if noted.example {
                tracing::debug!(source = %inbound.source, %error, "unparsable message dropped");
            }
        }
        self.metrics.count_drop(reason);
        self.metrics.count_parse_error(error.label());
        Outcome::drop(reason)
    }

    /// Note a HEP packet that arrived at a SIP listener for its summary,
    /// and log the first of its window (it is not mirrored: see
    /// [`crate::observe::hep::Hep::received`]).
    fn hep_packet_dropped(&self, inbound: &Inbound, now: Instant) {
        let noted = self.summaries.note_hep_packet(inbound.source.ip(), now);
        if let Some(t) = noted.closed {
            hep_packets_summary(t);
        }
        if noted.example {
            tracing::warn!(
                source = %inbound.source,
                listener = %inbound.local,
                transport = %inbound.transport,
                bytes = inbound.bytes.len(),
                "HEP packet sent to a SIP listener: dropped as malformed, not mirrored (a capture \
                 agent's HEP collector, another sipadmit's hep.collector perhaps, is this SIP \
                 port; point it at the HEP collector)"
            );
        }
    }

    /// The `503 Service Unavailable` (with Retry-After) for a request that
    /// could not be sent upstream, with its log line and record; nothing
    /// for an ACK. The I/O layer calls this when the registrar is
    /// unreachable (`busy: false`, rule `proxy.upstream-unavailable`,
    /// Retry-After `limits.upstream_retry_after_secs`) or when the queue to
    /// a stream registrar is full (`busy: true`, rule
    /// `proxy.upstream-busy`, Retry-After [`UPSTREAM_BUSY_RETRY_AFTER_SECS`]).
    pub fn upstream_unavailable(&self, inbound: &Inbound, now: Instant, busy: bool) -> Outcome {
        let refusal = if busy {
            Refusal::UpstreamBusy
        } else {
            Refusal::UpstreamUnavailable
        };
        self.answer_unsent(inbound, now, refusal, RecordKind::UpstreamUnavailable)
    }

    /// The `430 Flow Failed` (RFC 5626 5.3) for a request of the
    /// registrar's side that was relayed toward a client flow found dead
    /// when it was sent (`failure`: its connection closed between the
    /// decision and the send), with its log line and record; nothing for
    /// an ACK. The I/O layer calls this, so that the registrar learns at
    /// once, not at its transaction's timeout.
    pub fn flow_failed(&self, inbound: &Inbound, now: Instant, failure: FlowFailure) -> Outcome {
        self.answer_unsent(
            inbound,
            now,
            Refusal::FlowFailed(failure),
            RecordKind::FlowFailed,
        )
    }

    /// Answer a request that was decided and relayed but could not be sent
    /// (`refusal` says where and why): once per transaction (`kind`).
    fn answer_unsent(
        &self,
        inbound: &Inbound,
        now: Instant,
        refusal: Refusal<'_>,
        kind: RecordKind,
    ) -> Outcome {
        let Ok(view) = SipView::parse(inbound.bytes.clone()) else {
            self.metrics.count_drop(DropReason::SendFailed);
            return Outcome::drop(DropReason::SendFailed);
        };
        let runtime = self.runtime.load();
        let ctx = request::RequestCtx::new(inbound, &view, &runtime, now);
        self.register_answered_here(&ctx);
        let outcome = self.refuse(&ctx, None, refusal);
        let outcome = self.record_once(&view, inbound, kind, outcome, now);
        self.note_invite_fate(&view, &outcome, now);
        self.count_outcome(&outcome);
        outcome
    }

    /// The `n`th OPTIONS probe for the registrar (RFC 3261 11: its answer
    /// tells that the registrar is there): from this proxy's address on the
    /// upstream's transport, to the registrar's address with no user part,
    /// a branch of its own (its answer is recognised and consumed by the
    /// response path). `None` without an upstream or a listener of its
    /// transport.
    pub fn probe_request(&self, n: u64) -> Option<Bytes> {
        let upstream = self.settings.upstream?;
        let own = self
            .address_for(upstream.transport, upstream.addr.ip())?
            .addr;
        let (boot, transport) = (self.boot, upstream.transport);
        let target = upstream.addr;
        Some(Bytes::from(format!(
            "OPTIONS sip:{target};transport={t} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {own};branch={PROBE_BRANCH_PREFIX}{boot}{n:x}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:sipadmit@{own}>;tag=probe{boot}\r\n\
             To: <sip:{target}>\r\n\
             Call-ID: sipadmit-probe-{boot}-{n}\r\n\
             CSeq: {n} OPTIONS\r\n\
             User-Agent: sipadmit/{version}\r\n\
             Content-Length: 0\r\n\r\n",
            t = transport.as_str(),
            via = transport.via_name(),
            version = env!("CARGO_PKG_VERSION"),
        )))
    }

    /// The request of `key` could not be sent: forget its client
    /// transaction (kept by [`Core::keep_transaction`]).
    pub fn forget_transaction(&self, key: &TransactionKey) {
        self.client_transactions.forget(key);
    }

    /// End the client transaction `key`, whose request can no longer be
    /// sent (see [`ClientTransactions::fail`]); whether its client is owed
    /// the final answer.
    pub fn fail_transaction(&self, key: &TransactionKey, now: Instant) -> bool {
        self.client_transactions.fail(key, now)
    }

    /// Keep the client transaction of a request about to be sent
    /// (retransmitted until answered, `408` after 64*T1); kept before it
    /// is sent: with several workers, its response may arrive on another
    /// worker's socket before it would have been kept after. A full table
    /// is counted and warned about (rate-limited): the request then goes
    /// out once, as a stateless proxy sends it. Returns whether this call
    /// started the transaction (not a retransmission of one kept, not a
    /// full table).
    pub fn keep_transaction(
        &self,
        key: TransactionKey,
        send: Outbound,
        mut inbound: Inbound,
        now: Instant,
    ) -> bool {
        // A framed stream message shares its connection's read buffer:
        // kept, it would pin the whole buffer. A copy of its own costs
        // what the table accounts for.
        inbound.bytes = Bytes::copy_from_slice(&inbound.bytes);
        let transaction = client_transactions::Transaction { key, send, inbound };
        let start = self.client_transactions.start(transaction, now);
        if start == client_transactions::Start::NoRoom {
            self.untracked(
                now,
                "client transaction table full: a request from a TCP/TLS client went out over UDP once, without retransmissions",
            );
        }
        start == client_transactions::Start::Started
    }

    /// What the client transaction table had no room for (`what`): counted
    /// in `sipadmit_client_transactions_untracked_total`, and warned about
    /// (rate-limited).
    fn untracked(&self, now: Instant, what: &'static str) {
        Metrics::inc(&self.metrics.client_transactions_untracked);
        if let Some(held_back) =
            lock(&self.warnings.client_transactions).admit(now, WARNING_INTERVAL)
        {
            let bytes = self.settings.limits.client_transaction_bytes;
            tracing::warn!(
                client_transaction_bytes = bytes,
                warnings_held_back = held_back,
                "{what}"
            );
        }
    }

    /// The client transactions whose timers fired by `now`, each with the
    /// request it was relayed from: a request to send again (counted), or
    /// for one that timed out (or that a drain gave up) the `408 Request
    /// Timeout` to its client (logged, counted and recorded with rule
    /// `proxy.request-timeout`).
    pub fn client_transactions_due(
        &self,
        now: Instant,
    ) -> Vec<(Inbound, Outcome, Option<TransactionKey>)> {
        let mut carried = Vec::new();
        for due in self.client_transactions.due(now) {
            match due {
                client_transactions::Due::Retransmit(send, inbound, key) => {
                    Metrics::inc(&self.metrics.client_retransmissions);
                    let outcome = Outcome::send(send);
                    carried.push((inbound, outcome, Some(key)));
                }
                client_transactions::Due::TimedOut(inbound) => {
                    Metrics::inc(&self.metrics.client_transaction_timeouts);
                    let outcome = self.request_timeout(&inbound, now);
                    carried.push((inbound, outcome, None));
                }
                client_transactions::Due::GivenUp(inbound) => {
                    let outcome = self.drain_ran_out(&inbound, now);
                    carried.push((inbound, outcome, None));
                }
                client_transactions::Due::RangOut(rung) => {
                    carried.extend(self.ring_out(rung, Refusal::RangOut, now));
                }
                client_transactions::Due::RingingGivenUp(rung) => {
                    carried.extend(self.ring_out(rung, Refusal::DrainRanOut, now));
                }
            }
        }
        carried
    }

    /// An INVITE that rang through Timer C (RFC 3261 16.8, `refusal`
    /// [`Refusal::RangOut`]), or still rang when a drain ran out
    /// ([`Refusal::DrainRanOut`]): the CANCEL of the request as relayed
    /// goes to where the request went, kept as a client transaction of
    /// sipadmit's own (resent until answered), then its client gets the
    /// `408` of `refusal` (logged, recorded, counted).
    fn ring_out(
        &self,
        rung: client_transactions::Transaction,
        refusal: Refusal<'static>,
        now: Instant,
    ) -> Vec<(Inbound, Outcome, Option<TransactionKey>)> {
        let inbound = rung.inbound;
        let cancel = SipView::parse(rung.send.bytes.clone())
            .ok()
            .and_then(|relayed| crate::sip::of_invite::cancel(&relayed));
        let call_id = SipView::parse(inbound.bytes.clone()).ok();
        let call_id = Text(call_id.as_ref().and_then(SipView::call_id));
        let cancelled = cancel.is_some();
        if matches!(refusal, Refusal::RangOut) {
            Metrics::inc(&self.metrics.client_transaction_timeouts);
            let timer_c_secs = self.client_transactions.timers().timer_c.as_secs();
            tracing::info!(source = %inbound.source, %call_id, timer_c_secs, cancelled, "a call rang through Timer C without a final answer: cancelled, and a 408 for its caller");
        } else {
            tracing::info!(source = %inbound.source, %call_id, cancelled, "a call still rang when limits.drain_secs ran out: cancelled, and a 408 for its caller");
        }
        let mut carried = Vec::with_capacity(2);
        if let Some(bytes) = cancel {
            self.metrics.note_upstream_cancel();
            let send = Outbound {
                to: rung.send.to,
                bytes,
            };
            // Resent until answered, as a CANCEL client transaction is
            // (RFC 3261 9.1); its answers are consumed.
            let key = TransactionKey {
                method: client_transactions::TransactionMethod::Cancel,
                ..rung.key
            };
            let own = client_transactions::Transaction {
                key,
                send: send.clone(),
                inbound: inbound.clone(),
            };
            let start = self.client_transactions.start_own(own, now);
            if start == client_transactions::Start::NoRoom {
                self.untracked(
                    now,
                    "client transaction table full: a CANCEL of sipadmit's own went out once, without retransmissions",
                );
            }
            let kept = start == client_transactions::Start::Started;
            let outcome = Outcome::send(send);
            carried.push((inbound.clone(), outcome, kept.then_some(key)));
        }
        let answer = self.timed_out(&inbound, now, refusal);
        carried.push((inbound, answer, None));
        carried
    }

    /// The `408 Request Timeout` of a request a stream registrar had not
    /// answered when a drain ran out (see [`crate::drain`]), with its log
    /// line and record (rule `proxy.request-timeout`, counted with it in
    /// `sipadmit_protocol_answers_total`).
    pub fn drain_ran_out(&self, inbound: &Inbound, now: Instant) -> Outcome {
        self.timed_out(inbound, now, Refusal::DrainRanOut)
    }

    /// The `408 Request Timeout` of a request nothing answered within
    /// 64*T1, with its log line and record.
    fn request_timeout(&self, inbound: &Inbound, now: Instant) -> Outcome {
        self.timed_out(inbound, now, Refusal::RequestTimeout)
    }

    /// The `408` of `refusal` (a timeout), logged, recorded and counted.
    fn timed_out(&self, inbound: &Inbound, now: Instant, refusal: Refusal<'_>) -> Outcome {
        let Ok(view) = SipView::parse(inbound.bytes.clone()) else {
            return Outcome::drop(DropReason::Unanswerable);
        };
        let runtime = self.runtime.load();
        let ctx = request::RequestCtx::new(inbound, &view, &runtime, now);
        self.register_answered_here(&ctx);
        let outcome = self.refuse(&ctx, None, refusal);
        let outcome = self.record_once(&view, inbound, RecordKind::Timeout, outcome, now);
        self.note_invite_fate(&view, &outcome, now);
        self.count_outcome(&outcome);
        outcome
    }

    /// The answer to a message its source's rate limit refused (see
    /// [`SourceRefusal`]): `503` with Retry-After, or (the source banned by
    /// it) a drop, recorded with the ban's rule.
    pub fn refuse_source(
        &self,
        inbound: &Inbound,
        now: Instant,
        refusal: SourceRefusal,
    ) -> Outcome {
        let reason = match refusal {
            SourceRefusal::OverLimit { .. } => DropReason::RateLimited,
            SourceRefusal::Banned { .. } => DropReason::Banned,
        };
        let kind = MessageKind::of(&inbound.bytes);
        self.metrics.count_received(inbound.transport, kind);
        let view = match SipView::parse(inbound.bytes.clone()) {
            Ok(view) if view.is_request() => view,
            _ => {
                self.metrics.count_drop(reason);
                return Outcome::drop(reason);
            }
        };
        // Recorded with the snapshot whose `[rate_limit]` decided, which a
        // reload may have replaced since.
        let runtime = self.runtime_of(refusal.generation());
        let ctx = request::RequestCtx::new(inbound, &view, &runtime, now);
        let outcome = match refusal {
            SourceRefusal::OverLimit {
                retry_after_secs, ..
            } => self.over_limit(&ctx, retry_after_secs),
            SourceRefusal::Banned { .. } => {
                let rule = BanCause::Requests.rule();
                let outcome = self.refuse(&ctx, None, Refusal::Banned { rule });
                self.record_once(&view, inbound, RecordKind::Ban, outcome, now)
            }
        };
        self.note_invite_fate(&view, &outcome, now);
        self.count_outcome(&outcome);
        outcome
    }

    /// The `503` of a request over its source's rate limit, remembered as
    /// its transaction's decision: a copy of it gets the `503` again,
    /// unrecorded, over the limit or (see [`Core::record_once`]) within it.
    /// A copy of a request decided before (relayed, or answered) is dropped
    /// instead, as the limit's `drop` does: a `503` now would contradict
    /// the first copy's fate (RFC 3261 16.11).
    fn over_limit(&self, ctx: &request::RequestCtx<'_>, retry_after_secs: u32) -> Outcome {
        let (view, inbound) = (ctx.view, ctx.inbound);
        let limited = Decided {
            treatment: Treatment::OverLimit {
                retry_after_secs: u16::try_from(retry_after_secs).unwrap_or(u16::MAX),
            },
            generation: ctx.runtime.generation as u16,
            by_policy: false,
        };
        match self
            .transactions
            .decided(view, inbound.source.0, limited, ctx.now)
        {
            Ok(()) => self.refuse(ctx, None, Refusal::OverLimit { retry_after_secs }),
            Err(Some(Decided {
                treatment: Treatment::OverLimit { retry_after_secs },
                ..
            })) => self.over_limit_again(ctx, retry_after_secs.into()),
            Err(_) => {
                Metrics::inc(&self.metrics.retransmissions);
                tracing::debug!(
                    source = %inbound.source,
                    call_id = %Text(view.call_id()),
                    "retransmission over its source's rate limit: dropped, not answered 503"
                );
                self.metrics.count_drop(DropReason::RateLimited);
                Outcome::drop(DropReason::RateLimited)
            }
        }
    }

    /// A copy of a request its source's rate limit answered `503`: the
    /// same answer, counted as a retransmission, not recorded again.
    fn over_limit_again(&self, ctx: &request::RequestCtx<'_>, retry_after_secs: u32) -> Outcome {
        Metrics::inc(&self.metrics.retransmissions);
        tracing::debug!(
            source = %ctx.inbound.source,
            call_id = %Text(ctx.view.call_id()),
            "retransmission of a request answered 503 over its source's rate limit: answered 503 again"
        );
        let mut outcome = self.refuse(ctx, None, Refusal::OverLimit { retry_after_secs });
        outcome.take_record();
        outcome
    }

    /// Log the summaries of windows that have ended (the last window of a
    /// flood closes here, not on a next event). Called every second.
    pub fn close_summaries(&self, now: Instant) {
        let (malformed, refused, flagged, hep_packets) = self.summaries.close_if_due(now);
        if let Some(t) = malformed {
            malformed_summary(t);
        }
        if let Some(t) = hep_packets {
            hep_packets_summary(t);
        }
        if let Some(t) = refused.filter(|t| t.events > t.examples) {
            tracing::warn!(
                refused = t.events,
                sources = t.sources,
                logged = t.examples,
                window_secs = SUMMARY_WINDOW.as_secs(),
                "requests refused in the last 10 s (the rest were not logged one by one)"
            );
        }
        if let Some(t) = flagged.filter(|t| t.events > t.examples) {
            flagged_summary(t);
        }
    }

    /// Log the summaries at a stop, windows not yet over included: a flood
    /// in the last seconds before a stop is told too, not only in the
    /// stop's totals.
    pub fn close_summaries_at_stop(&self) {
        self.close_summaries(Instant::now() + SUMMARY_WINDOW);
    }

    /// What became of an INVITE, for what may follow it: answered here,
    /// it is remembered, so that its ACK is absorbed and a CANCEL of it is
    /// answered here ([`Transactions::note_answered_invite`]); sent on
    /// (a copy, after one answered here was lost), it is no longer, and
    /// its CANCEL and ACK go on to whoever answers it.
    fn note_invite_fate(&self, request: &SipView, outcome: &Outcome, now: Instant) {
        if request.method_bytes() != Some(b"INVITE".as_slice()) {
            return;
        }
        match outcome {
            Outcome::Answer { .. } => self.transactions.note_answered_invite(request, now),
            Outcome::Relay { .. } => self.transactions.forget_answered_invite(request, now),
            Outcome::Drop { .. } | Outcome::Consumed => {}
        }
    }

    /// Keep the outcome's record only for the first sighting of the
    /// request's transaction from its source: a retransmission is handled
    /// the same way (relayed again, answered again) but counted instead of
    /// recorded. A copy whose decision now differs from its first copy's
    /// (a reload changed the verdict in between) is dropped, and a copy of
    /// one its source's rate limit answered `503` gets that `503` again:
    /// the first copy's fate stands (RFC 3261 16.11).
    fn record_once(
        &self,
        request: &SipView,
        inbound: &Inbound,
        kind: RecordKind,
        mut outcome: Outcome,
        now: Instant,
    ) -> Outcome {
        let source = inbound.source.0;
        let fate = match (outcome.record(), kind, outcome.treatment()) {
            (None, ..) => return outcome,
            (Some(record), RecordKind::Decision, Some(treatment)) => {
                let decided = Decided {
                    treatment,
                    generation: record.generation as u16,
                    by_policy: record.kind() == DecisionKind::Policy,
                };
                match self.transactions.decided(request, source, decided, now) {
                    Ok(()) => return outcome,
                    Err(first) => first.map_or(CopyFate::Again, |first| first.copy(&decided)),
                }
            }
            (Some(_), ..) if self.transactions.first_sighting(request, source, kind, now) => {
                return outcome;
            }
            (Some(_), ..) => CopyFate::Again,
        };
        if fate == CopyFate::Again {
            outcome.take_record();
            Metrics::inc(&self.metrics.retransmissions);
            tracing::debug!(
                call_id = %Text(request.call_id()),
                method = %Text(request.method_bytes()),
                "retransmission: handled again, not recorded again"
            );
            return outcome;
        }
        let runtime = self.runtime.load();
        let ctx = request::RequestCtx::new(inbound, request, &runtime, now);
        self.copy_decided_before(&ctx, fate, outcome.treatment(), outcome.record())
            .unwrap_or(outcome)
    }

    /// A copy of a request whose first copy's fate the current decision
    /// (`now`, recorded as `decided`) would contradict: answered the
    /// policy's reject again, or the rate limit's `503`, or dropped
    /// (`decided_before`). `None` for [`CopyFate::Again`].
    fn copy_decided_before(
        &self,
        ctx: &request::RequestCtx<'_>,
        fate: CopyFate,
        now: Option<Treatment>,
        decided: Option<&DecisionRecord>,
    ) -> Option<Outcome> {
        if fate != CopyFate::Again && now == Some(Treatment::Relayed) {
            // Its relay noted a REGISTER as pending, and it does not go out.
            self.register_answered_here(ctx);
        }
        match fate {
            CopyFate::Again => None,
            CopyFate::OverLimit { retry_after_secs } => {
                Some(self.over_limit_again(ctx, retry_after_secs))
            }
            CopyFate::AnsweredBefore { status } => Some(
                decided
                    .and_then(|decided| self.reject_again(ctx, decided, status))
                    .unwrap_or_else(|| self.decided_before(ctx, now)),
            ),
            CopyFate::Dropped => Some(self.decided_before(ctx, now)),
        }
    }

    /// A copy of a request the policy rejected with `status` before a
    /// reload, answered that reject again (not recorded again: counted as
    /// a retransmission), when the policy still has a reply of that status
    /// for the role and client `decided` names.
    fn reject_again(
        &self,
        ctx: &request::RequestCtx<'_>,
        decided: &DecisionRecord,
        status: u16,
    ) -> Option<Outcome> {
        let config = &ctx.runtime.config;
        let (reply, rule) =
            crate::policy::reject_reply(&config.policy, decided.role, decided.support)
                .filter(|(reply, _)| reply.status == status)?;
        let subject = Subject {
            client: config
                .catalog
                .client(&decided.client)
                .unwrap_or_else(|| ctx.runtime.unknown_client()),
            rule: Cow::Borrowed(decided.client_rule.as_str()),
        };
        Metrics::inc(&self.metrics.retransmissions);
        tracing::debug!(
            source = %ctx.inbound.source,
            call_id = %Text(ctx.view.call_id()),
            status,
            "a copy of a request rejected before a reload: answered again, the first copy's fate stands"
        );
        let bytes = self.answer(ctx, &refusal::Refusal::Policy { reply, rule }, &subject);
        Some(Outcome::Answer {
            bytes,
            record: None,
        })
    }

    /// A copy of a request decided otherwise before a reload, dropped.
    fn decided_before(&self, ctx: &request::RequestCtx<'_>, now: Option<Treatment>) -> Outcome {
        Metrics::inc(&self.metrics.retransmissions);
        tracing::debug!(
            source = %ctx.inbound.source,
            call_id = %Text(ctx.view.call_id()),
            method = %Text(ctx.view.method_bytes()),
            ?now,
            "a copy of a request decided otherwise before a reload: dropped, the first copy's fate stands"
        );
        self.metrics.count_drop(DropReason::DecidedBefore);
        Outcome::drop(DropReason::DecidedBefore)
    }

    // === registration table warnings ===

    /// Count the contacts of a REGISTER that were not learned (no room: the
    /// request path refuses a REGISTER over
    /// `limits.max_contacts_per_register` before it gets here), and warn
    /// (rate-limited: a peer sets this off).
    fn contacts_not_learned(&self, source: SocketAddr, call_id: &[u8], count: usize, now: Instant) {
        if count == 0 {
            return;
        }
        Metrics::add(&self.metrics.contacts_not_learned, count);
        if let Some(held_back) = lock(&self.warnings.contacts).admit(now, WARNING_INTERVAL) {
            tracing::warn!(
                %source,
                call_id = %Text(Some(call_id)),
                contacts = count,
                max_contacts_per_register = self.registrations.limits().max_contacts_per_register,
                warnings_held_back = held_back,
                "REGISTER contacts not learned: no room in the registration tables"
            );
        }
    }

    /// Count the entries evicted from a full registration table, and warn
    /// (rate-limited).
    fn registrations_evicted(&self, count: usize, now: Instant) {
        if count == 0 {
            return;
        }
        Metrics::add(&self.metrics.registrations_evicted, count);
        if let Some(held_back) = lock(&self.warnings.evictions).admit(now, WARNING_INTERVAL) {
            let limits = self.registrations.limits();
            tracing::warn!(
                evicted = count,
                max_registrations = limits.max_entries,
                registration_table_bytes = limits.table_bytes,
                warnings_held_back = held_back,
                "registration table full: oldest entries evicted"
            );
        }
    }

    /// Count what an outcome decides: its record's decision. What is sent
    /// (a message relayed, a local answer) is counted by the I/O layer once
    /// it is sent (`sipadmit_relayed_total` and
    /// `sipadmit_local_responses_total` count no failed send).
    fn count_outcome(&self, outcome: &Outcome) {
        if let Some(r) = outcome.record() {
            self.metrics.count_record(r);
        }
    }

    // === flows and addresses ===

    /// The flow id of a stream connection of this instance.
    fn flow_id(&self, connection: ConnectionId) -> FlowId {
        FlowId {
            boot: self.boot,
            connection,
        }
    }

    /// Whether this instance can write to `flow`: a UDP flow always; a
    /// stream flow only when it is this instance's (boot id) and its
    /// connection is still open to the flow's peer.
    fn check_flow(&self, flow: &Flow, open: OpenConnection<'_>) -> Result<(), FlowFailure> {
        if !flow.transport.is_stream() {
            return Ok(());
        }
        let Some(id) = flow.connection else {
            return Err(FlowFailure::Closed);
        };
        if id.boot != self.boot {
            return Err(FlowFailure::OtherInstance);
        }
        if !open(id.connection, flow.peer) {
            return Err(FlowFailure::Closed);
        }
        Ok(())
    }

    fn upstream_transport(&self) -> Transport {
        self.settings
            .upstream
            .map_or(Transport::Udp, |u| u.transport)
    }

    /// This proxy's listener on `transport` facing `peer`: one of the
    /// peer's address family (an IPv4 peer cannot reach an IPv6 address in
    /// a Path, Record-Route or Via), else the first of the transport.
    fn address_for(&self, transport: Transport, peer: IpAddr) -> Option<&Listening> {
        let of_transport = || {
            self.listeners
                .iter()
                .filter(move |l| l.transport == transport)
        };
        of_transport()
            .find(|l| l.addr.is_ipv4() == peer.is_ipv4())
            .or_else(|| of_transport().next())
    }

    /// The listener a message arrived on (`transport`, `local`), if it is
    /// one of ours.
    fn listener_at(&self, transport: Transport, local: SocketAddr) -> Option<&Listening> {
        self.listeners
            .iter()
            .find(|l| l.transport == transport && l.addr == local)
    }

    /// Whether `host:port` (as written; no port means 5060) is one of ours:
    /// a listener's address or what it advertises.
    fn addressed_here(&self, host: &[u8], port: Option<u16>) -> bool {
        self.listeners.iter().any(|l| l.names(host, port))
    }

    /// Whether a Via names this proxy.
    fn is_own(&self, via: &Via<'_>) -> bool {
        self.addressed_here(via.host, via.port)
    }

    // === branches and tags ===

    /// RFC 3261 16.11 branch: a transaction part, then a loop part.
    ///
    /// The transaction part hashes the received top Via branch when it is
    /// RFC 3261 style, so retransmissions, CANCEL and the ACK of a non-2xx
    /// response get their INVITE's branch while the ACK of a 2xx gets a new
    /// one; for RFC 2543 requests it hashes the 16.6 step 8 fields instead.
    /// The loop part ([`Core::loop_mark`]) follows.
    fn branch(&self, view: &SipView, loop_mark: u32) -> Branch {
        let top_via = view.top_via().ok();
        let cseq = view.cseq().map(|c| c.number).unwrap_or(0).to_be_bytes();
        let from_tag = view.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let to_tag = view.to().ok().and_then(|t| t.tag()).unwrap_or_default();
        let request_uri = view.request_uri().unwrap_or_default();
        let call_id = view.call_id().unwrap_or_default();
        let transaction = match top_via.as_ref().and_then(|v| Some((v, v.branch()?))) {
            Some((via, b)) if b.len() > 7 && b.starts_with(b"z9hG4bK") => {
                let port = via.port.unwrap_or(5060).to_be_bytes();
                transaction_hash(&[b"t", b, via.host, &port])
            }
            _ => transaction_hash(&[b"o", request_uri, to_tag, from_tag, call_id, &cseq]),
        };
        Branch {
            transaction,
            loop_mark,
        }
    }

    /// The loop part of this proxy's branch for a request: a hash of what a
    /// loop does not change (Request-URI, From tag, Call-ID, CSeq number)
    /// plus the Route this proxy consumes, so a spiral through this proxy
    /// on another route is no loop. It leaves the To tag out, so the ACK of
    /// a non-2xx keeps its INVITE's whole branch.
    fn loop_mark(&self, view: &SipView, consumed_route: Option<&[u8]>) -> u32 {
        let cseq = view.cseq().map(|c| c.number).unwrap_or(0).to_be_bytes();
        let hash = transaction_hash(&[
            b"l",
            view.request_uri().unwrap_or_default(),
            view.from().ok().and_then(|f| f.tag()).unwrap_or_default(),
            view.call_id().unwrap_or_default(),
            &cseq,
            consumed_route.unwrap_or_default(),
        ]);
        (hash >> 32) as u32
    }

    /// RFC 3261 16.3 step 4: one of our Vias carries the loop part this
    /// request would get.
    fn is_loop(&self, view: &SipView, mark: u32) -> bool {
        let mut suffix = [0u8; 8];
        hex_u32(mark, &mut suffix);
        view.values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
            .any(|v| {
                self.is_own(&v)
                    && v.branch().is_some_and(|b| {
                        b.starts_with(BRANCH_PREFIX.as_bytes()) && b.ends_with(&suffix)
                    })
            })
    }

    /// The stable To-tag of local responses to this request.
    fn local_tag(&self, view: &SipView) -> String {
        let cseq = view.cseq().map(|c| c.number).unwrap_or(0).to_be_bytes();
        let branch = view
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .unwrap_or_default();
        let hash = transaction_hash(&[
            b"g",
            view.call_id().unwrap_or_default(),
            view.from().ok().and_then(|f| f.tag()).unwrap_or_default(),
            &cseq,
            branch,
        ]);
        format!("sa{hash:016x}")
    }

    // === records ===

    /// The decision record of a request: `subject` is the client the
    /// decision is about, `sender` the classification of the request's own
    /// User-Agent.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        runtime: &Runtime,
        inb: &Inbound,
        view: &SipView,
        subject: &Subject<'_>,
        sender: &ClientProduct,
        role: SessionRole,
        action: Action,
        rule: &'static str,
        status: Option<u16>,
        would_reject: bool,
    ) -> DecisionRecord {
        // What `Text` displays, made in one allocation of the right size.
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        DecisionRecord {
            ts: record_time(),
            transport: inb.transport,
            // An IPv4 client of a dual-stack listener as its IPv4 address.
            source: SocketAddr::new(inb.source.ip().to_canonical(), inb.source.port()),
            local: Some(inb.local.0),
            leg: Some(inb.leg),
            method: text(view.method_bytes()),
            call_id: text(view.call_id()),
            from: text(view.from().ok().map(|f| f.uri)),
            to: text(view.to().ok().map(|t| t.uri)),
            request_uri: text(view.request_uri()),
            user_agent: view.user_agent().map(unfolded),
            client: subject.client.id.clone(),
            sender_client: sender.id.clone(),
            category: subject.client.category,
            support: subject.client.support,
            role,
            kind: Some(DecisionKind::of_rule(rule)),
            action,
            rule: rule.into(),
            client_rule: subject.rule.clone().into_owned(),
            status,
            mode: runtime.config.policy.mode,
            would_reject,
            generation: runtime.generation,
            spiral: inb.from_registrar() && self.came_through_from_client(view),
            after_challenge: self.transactions.any_challenge()
                && self
                    .transactions
                    .follows_challenge(view, inb.source.0, Instant::now()),
            unregister: is_unregister(view),
            // Set by the dispatcher as it carries the outcome out
            // (`dispatch::carry_out`).
            undelivered: false,
        }
    }

    /// Whether a request from the registrar passed this proxy from a
    /// client before: one of its Vias is this proxy's, with a flow token
    /// this proxy signed (only requests relayed toward the registrar get
    /// one). The registrar sent it back toward the callee: a spiral.
    fn came_through_from_client(&self, view: &SipView) -> bool {
        view.values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
            .any(|via| {
                self.is_own(&via)
                    && matches!(
                        via.params.get(FLOW_PARAM.as_bytes()),
                        Some(Some(token)) if matches!(self.decode_token(token), Ok((Purpose::Via, _)))
                    )
            })
    }
}

/// A 64-bit hash of `parts` (each length-prefixed) for branches, loop
/// marks and local To-tags: SHA-256, unkeyed, so that every instance of a
/// pool, and this one after its flow secrets rotate, gives a transaction
/// the same branch (a CANCEL, or the ACK of a non-2xx, relayed after a
/// rotation or by another instance must match its INVITE's at the next
/// hop). None of them needs to be secret: what proves that a message went
/// through this proxy is the signed flow token beside them.
fn transaction_hash(parts: &[&[u8]]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A header value as one line: each line fold (CRLF and the white space
/// after it) read as one space (RFC 3261 7.3.1).
fn unfolded(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    if !text.contains(['\r', '\n']) {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if n == 0 {
            out.push_str(line);
        } else {
            out.truncate(out.trim_end_matches([' ', '\t']).len());
            out.push(' ');
            out.push_str(line.trim_start_matches([' ', '\t']));
        }
    }
    out
}

/// Whether a request is a REGISTER that removes bindings (RFC 3261
/// 10.2.2): `Contact: *` alone with `Expires: 0`, or Contacts that all
/// expire at once (each one's `expires` parameter, else the Expires
/// header, is 0). A REGISTER without Contact (a query), with an unreadable
/// one, or with a `*` the registrar must refuse (beside other Contacts, or
/// with another expiry: 10.3 step 6) is not.
fn is_unregister(view: &SipView) -> bool {
    if view.method() != Some(crate::sip::Method::Register) {
        return false;
    }
    // One Expires header, read as the registrar reads it; a second one
    // could be the one it takes.
    let expires_headers = view
        .header_fields()
        .iter()
        .filter(|h| h.name == HeaderName::Expires)
        .count();
    let header = match expires_headers {
        0 => None,
        1 => view.expires().ok().flatten(),
        _ => return false,
    };
    let mut contacts = 0;
    let mut star = false;
    for contact in view.contacts() {
        let Ok(contact) = contact else {
            return false;
        };
        contacts += 1;
        if contact.uri == b"*" {
            star = true;
            continue;
        }
        // Exactly one `expires`, plain digits, zero: a repeated one (a
        // registrar may take the last), `+0` or anything a registrar may
        // read otherwise is no de-registration (it would pass the agent
        // policy and bind).
        let mut values = contact
            .params
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"expires"));
        let zero = match (values.next(), values.next()) {
            (None, _) => header == Some(0),
            (Some((_, Some(v))), None) => {
                let v = crate::sip::fields::trim_lws(v);
                !v.is_empty() && v.iter().all(|&b| b == b'0')
            }
            _ => false,
        };
        if !zero {
            return false;
        }
    }
    if star {
        return contacts == 1 && header == Some(0);
    }
    contacts > 0
}

/// Retry-After (seconds) of the `503` answered when the queue to a stream
/// registrar is full: the registrar is up, so a short wait.
pub const UPSTREAM_BUSY_RETRY_AFTER_SECS: u32 = 5;

/// How often a rate-limited warning may be written.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Log the summary of a window of malformed messages.
fn malformed_summary(t: WindowTotals) {
    tracing::warn!(
        malformed = t.events,
        sources = t.sources,
        window_secs = SUMMARY_WINDOW.as_secs(),
        "malformed messages dropped in the last 10 s (the first few at debug level)"
    );
}

/// Log the summary of a window of HEP packets that arrived at SIP
/// listeners, when there were more than the one logged as it came.
fn hep_packets_summary(t: WindowTotals) {
    if t.events <= t.examples {
        return;
    }
    tracing::warn!(
        hep_packets = t.events,
        sources = t.sources,
        logged = t.examples,
        window_secs = SUMMARY_WINDOW.as_secs(),
        "HEP packets sent to a SIP listener in the last 10 s: dropped as malformed, not \
         mirrored (a capture agent's HEP collector is this SIP port; the first was logged)"
    );
}

/// Log the summary of a window of flagged requests whose warnings were
/// not all logged one by one.
pub(crate) fn flagged_summary(t: WindowTotals) {
    tracing::warn!(
        flagged = t.events,
        sources = t.sources,
        logged = t.examples,
        window_secs = SUMMARY_WINDOW.as_secs(),
        "requests flagged in the last 10 s (the rest were not logged one by one)"
    );
}

/// Malformed messages: examples logged per window (at debug level).
const MALFORMED_EXAMPLES: u64 = 3;
/// Refused requests: logged one by one per window (warnings).
const REFUSED_EXAMPLES: u64 = 10;
/// Flagged requests: logged one by one per window (warnings).
const FLAGGED_EXAMPLES: u64 = 10;
/// HEP packets at a SIP listener: logged one by one per window (warnings).
const HEP_PACKET_EXAMPLES: u64 = 1;

/// The summaries of what a peer can make the core log often.
#[derive(Debug)]
struct Summaries {
    malformed: Mutex<EventSummary>,
    refused: Mutex<EventSummary>,
    flagged: Mutex<EventSummary>,
    hep_packets: Mutex<EventSummary>,
}

impl Default for Summaries {
    fn default() -> Self {
        Self {
            malformed: Mutex::new(EventSummary::new(MALFORMED_EXAMPLES)),
            refused: Mutex::new(EventSummary::new(REFUSED_EXAMPLES)),
            flagged: Mutex::new(EventSummary::new(FLAGGED_EXAMPLES)),
            hep_packets: Mutex::new(EventSummary::new(HEP_PACKET_EXAMPLES)),
        }
    }
}

impl Summaries {
    fn note_malformed(&self, source: std::net::IpAddr, now: Instant) -> Noted {
        lock(&self.malformed).note(source, now)
    }

    fn note_refused(&self, source: std::net::IpAddr, now: Instant) -> Noted {
        lock(&self.refused).note(source, now)
    }

    fn note_flagged(&self, source: std::net::IpAddr, now: Instant) -> Noted {
        lock(&self.flagged).note(source, now)
    }

    fn note_hep_packet(&self, source: std::net::IpAddr, now: Instant) -> Noted {
        lock(&self.hep_packets).note(source, now)
    }

    /// The windows closed now: (malformed, refused, flagged, HEP packets).
    fn close_if_due(
        &self,
        now: Instant,
    ) -> (
        Option<WindowTotals>,
        Option<WindowTotals>,
        Option<WindowTotals>,
        Option<WindowTotals>,
    ) {
        (
            lock(&self.malformed).close_if_due(now),
            lock(&self.refused).close_if_due(now),
            lock(&self.flagged).close_if_due(now),
            lock(&self.hep_packets).close_if_due(now),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rate limits of the warnings a peer can set off through the
/// registration and client transaction tables, and the tokens of
/// responses.
#[derive(Debug, Default)]
struct TableWarnings {
    /// Contacts not learned (over the cap, or no room).
    contacts: Mutex<WarningWindow>,
    /// Entries evicted from a full table.
    evictions: Mutex<WarningWindow>,
    /// Client transactions not kept: no room.
    client_transactions: Mutex<WarningWindow>,
    /// Responses with a bad flow token, or a flow token not from the
    /// registrar (a pool's flow secrets that differ, as a rule).
    response_tokens: Mutex<WarningWindow>,
    /// Responses with a bad back token (a client's doing).
    back_tokens: Mutex<WarningWindow>,
    /// Malformed responses from the registrar (no Content-Length over a
    /// stream, a control character, ...): its clients get no answer.
    registrar_responses: Mutex<WarningWindow>,
}

/// The branch this proxy puts in its Via: `z9hG4bKsa`, 16 hex digits of
/// transaction part, 8 of loop part.
#[derive(Debug, Clone, Copy)]
struct Branch {
    transaction: u64,
    loop_mark: u32,
}

impl Branch {
    /// What a back token is bound to ([`flow::FlowSigner::encode_bound`]):
    /// the branch's two parts, so that the token serves the responses of
    /// this transaction alone.
    fn binding(&self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..8].copy_from_slice(&self.transaction.to_be_bytes());
        bytes[8..].copy_from_slice(&self.loop_mark.to_be_bytes());
        bytes
    }

    /// The parts of a branch this proxy generated (`z9hG4bKsa` + 16 + 8 hex
    /// digits); `None` for any other.
    fn parse(branch: &[u8]) -> Option<Self> {
        let digits = branch.strip_prefix(BRANCH_PREFIX.as_bytes())?;
        if digits.len() != 24 {
            return None;
        }
        let hex = |d: &[u8]| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        Some(Self {
            transaction: hex(&digits[..16])?,
            loop_mark: u32::try_from(hex(&digits[16..])?).ok()?,
        })
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{BRANCH_PREFIX}{:016x}{:08x}",
            self.transaction, self.loop_mark
        )
    }
}

/// The status code of a response the proxy built (`SIP/2.0 NNN ...`).
fn response_status(bytes: &[u8]) -> Option<u16> {
    let digits = bytes.strip_prefix(b"SIP/2.0 ")?.get(..3)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Eight lowercase hex digits of `value`.
fn hex_u32(value: u32, out: &mut [u8; 8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (28 - 4 * i)) & 0xf) as usize];
    }
}

/// Header bytes a peer sent, shown in a log line (formatted only when one
/// is written): invalid UTF-8 replaced, and `"`, `\` and control
/// characters escaped (`\"`, `\\`, `\u{1b}`), so that no value can write
/// a field of its own into the line (a forged `blocks="all"` for a
/// fail2ban filter, say) or act on a terminal.
#[derive(Debug, Clone, Copy)]
struct Text<'a>(Option<&'a [u8]>);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.unwrap_or_default().utf8_chunks() {
            let valid = chunk.valid();
            let mut start = 0;
            for (at, c) in valid.char_indices() {
                let quoted = matches!(c, '"' | '\\');
                if !quoted && !c.is_control() && !crate::terminal_text::is_bidi_control(c) {
                    continue;
                }
                f.write_str(&valid[start..at])?;
                if quoted {
                    write!(f, "\\{c}")?;
                } else {
                    write!(f, "\\u{{{:x}}}", c as u32)?;
                }
                start = at + c.len_utf8();
            }
            f.write_str(&valid[start..])?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
