//! Stage 5, act: the stateless proxy core (RFC 3261 section 16.11).
//!
//! [`Core::handle`] takes one inbound message and returns what to send
//! where, plus the decision record. It does no I/O: the transports in
//! [`crate::transport`] feed it and carry out the outcome. State is limited
//! to the registration table; flows are named by signed tokens.

pub mod flow;
pub mod registrations;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::classify::ClientProduct;
use crate::config::Config;
use crate::observe::decision_log::{record_time, DecisionRecord};
use crate::observe::metrics::{DropReason, Metrics};
use crate::policy::{decide, Action, SessionFacts, SessionRole};
use crate::sip::edit::{before_first, first_value, Edits};
use crate::sip::fields::{parse_hostport, sip_uri_host, trim_lws};
use crate::sip::{response, HeaderName, Method, Params, SipError, SipView, Via};
use crate::transport::Transport;
use flow::{Flow, FlowSigner, Purpose, TokenError};
use registrations::{contact_key, Registrations};

/// Via parameter of the proxy's own Via that carries the client flow token.
const FLOW_PARAM: &str = "sipadmit-flow";
/// Prefix of the branches this proxy generates.
const BRANCH_PREFIX: &str = "z9hG4bKsa";
/// Max-Forwards added to requests that carry none (RFC 3261 8.1.1.6).
const DEFAULT_MAX_FORWARDS: u8 = 70;
/// Registration expiry when neither the Contact nor Expires says (RFC 3261 10.2.1.1).
const DEFAULT_EXPIRES_SECS: u64 = 3600;
/// Longest registration the table keeps, whatever the registrar granted (2^31 - 1 s).
const MAX_EXPIRES_SECS: u64 = (1 << 31) - 1;
/// Generation of the runtime configuration named in decision records: 1,
/// the configuration loaded at start, until live reload swaps in others.
const RUNTIME_GENERATION: u64 = 1;

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message bytes (one datagram, or one framed stream message).
    pub bytes: Bytes,
    /// Transport it arrived on.
    pub transport: Transport,
    /// Sender address.
    pub source: SocketAddr,
    /// TCP connection id (0 for UDP).
    pub connection: u64,
    /// It came from the upstream registrar (its UDP address or our connection to it).
    pub from_upstream: bool,
}

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The configured registrar.
    Upstream,
    /// A client flow: a UDP address or a TCP connection.
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

/// The result of handling one message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What to send, if anything.
    pub send: Option<Outbound>,
    /// The decision record, for REGISTER and INVITE and every policy drop or reject.
    pub record: Option<DecisionRecord>,
    /// Why nothing was sent, when nothing was.
    pub dropped: Option<DropReason>,
}

impl Outcome {
    fn drop(reason: DropReason) -> Self {
        Self {
            dropped: Some(reason),
            ..Self::default()
        }
    }

    fn reply(bytes: Bytes) -> Self {
        Self {
            send: Some(Outbound {
                to: Destination::Source,
                bytes,
            }),
            ..Self::default()
        }
    }
}

/// The client a decision is about, and how it was identified.
struct Subject<'c> {
    client: &'c ClientProduct,
    rule: String,
}

/// The proxy core: config, signer, registration table, own addresses.
#[derive(Debug)]
pub struct Core {
    config: Arc<Config>,
    signer: FlowSigner,
    registrations: Registrations,
    /// (transport, address) this proxy is reachable at, as put in Via/Path.
    advertised: Vec<(Transport, SocketAddr)>,
    metrics: Arc<Metrics>,
    /// Stand-in for clients that match nothing (agent offers to unknown endpoints).
    unknown: ClientProduct,
}

impl Core {
    /// A core for `config`, reachable at `advertised` (bound listener addresses).
    pub fn new(
        config: Arc<Config>,
        signer: FlowSigner,
        advertised: Vec<(Transport, SocketAddr)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let unknown = config
            .runtime
            .catalog
            .client("unknown")
            .expect("the catalog has a built-in unknown client")
            .clone();
        Self {
            registrations: Registrations::new(config.settings.limits.max_registrations),
            config,
            signer,
            advertised,
            metrics,
            unknown,
        }
    }

    /// The registration table (for sweeping and tests).
    pub fn registrations(&self) -> &Registrations {
        &self.registrations
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Handle one inbound message. `flow_alive` tells whether a TCP
    /// connection still exists.
    pub fn handle(
        &self,
        inbound: &Inbound,
        now: Instant,
        flow_alive: &dyn Fn(&Flow) -> bool,
    ) -> Outcome {
        Metrics::inc(&self.metrics.received);
        let oversized = inbound.bytes.len() > self.config.settings.limits.max_message_bytes;
        let view = match SipView::parse(inbound.bytes.clone()) {
            Ok(v) => v,
            Err(e) => {
                let reason = if inbound.bytes.starts_with(b"SIP/") {
                    DropReason::MalformedResponse
                } else {
                    DropReason::Malformed
                };
                warn!(source = %inbound.source, error = %e, "unparsable message dropped");
                self.metrics.count_drop(reason);
                return Outcome::drop(reason);
            }
        };
        if oversized {
            warn!(source = %inbound.source, bytes = inbound.bytes.len(), "message over limits.max_message_bytes");
            if view.is_request() {
                return self.refuse(inbound, &view, 513, "Message Too Large");
            }
            self.metrics.count_drop(DropReason::Malformed);
            return Outcome::drop(DropReason::Malformed);
        }
        if view.is_request() {
            self.request(inbound, &view, now, flow_alive)
        } else {
            self.response(inbound, &view, now, flow_alive)
        }
    }

    /// A 503 for a request that could not be sent upstream (the I/O layer
    /// calls this when the registrar is unreachable).
    pub fn upstream_unavailable(&self, request: &Bytes) -> Option<Bytes> {
        let view = SipView::parse(request.clone()).ok()?;
        if view.method()? == Method::Ack {
            return None;
        }
        let retry = self
            .config
            .settings
            .limits
            .upstream_retry_after_secs
            .to_string();
        Metrics::inc(&self.metrics.local_responses);
        Some(response::build(
            &view,
            503,
            "Service Unavailable",
            &self.local_tag(&view),
            &[("Retry-After", &retry)],
        ))
    }

    // === requests ===

    fn request(
        &self,
        inb: &Inbound,
        view: &SipView,
        now: Instant,
        flow_alive: &dyn Fn(&Flow) -> bool,
    ) -> Outcome {
        let method = view.method().unwrap_or(Method::Other);
        if let Err(e) = view.check() {
            warn!(source = %inb.source, error = %e, "malformed request");
            return self.refuse(inb, view, e.status_code(), &e.to_string());
        }
        if view.header_fields().len() > self.config.settings.limits.max_headers {
            return self.refuse(inb, view, 400, "Too Many Headers");
        }
        if method == Method::Ack
            && view.to().ok().and_then(|t| t.tag()) == Some(self.local_tag(view).as_bytes())
        {
            debug!(call_id = %lossy(view.call_id()), "ACK of a local response absorbed");
            self.metrics.count_drop(DropReason::AbsorbedAck);
            return Outcome::drop(DropReason::AbsorbedAck);
        }
        if view.max_forwards() == Ok(Some(0)) {
            return self.local(view, 483, "Too Many Hops", &[]);
        }
        let unsupported: Vec<&[u8]> = view.proxy_require().collect();
        if !unsupported.is_empty() {
            let list = unsupported
                .iter()
                .map(|t| String::from_utf8_lossy(t))
                .collect::<Vec<_>>()
                .join(", ");
            return self.local(view, 420, "Bad Extension", &[("Unsupported", &list)]);
        }

        // Where does it go? Our own Route (a flow token) decides; else the
        // registrar's requests are looked up and clients' go upstream.
        let route = match self.own_route(view) {
            Ok(route) => route,
            Err(e) => {
                warn!(source = %inb.source, error = %e, "request with an invalid flow token in its Route");
                return self.local(view, 403, "Invalid Flow Token", &[]);
            }
        };
        // RFC 3261 16.3 step 4: our own Via with the loop mark we would add
        // means this request has been here before on the same route.
        let loop_mark = self.loop_mark(view, route.as_ref());
        if self.is_loop(view, &loop_mark) {
            return self.local(view, 482, "Loop Detected", &[]);
        }
        let branch = self.branch(view, &loop_mark);
        let toward: Option<Flow> = match route.as_ref().filter(|r| r.token.is_some()) {
            Some(r) => r
                .toward_client(view)
                .filter(|f| !self.came_from(f, inb))
                .cloned(),
            None if inb.from_upstream => match self.flow_by_request_uri(view, now) {
                Some(flow) => Some(flow),
                None => return self.local(view, 404, "Not Found", &[]),
            },
            None => None,
        };

        // Who is it, what part does it play, what does the policy say?
        let user_agent = view.user_agent();
        let from_uri = view.from().map(|f| f.uri).unwrap_or_default();
        let to_uri = view.to().map(|t| t.uri).unwrap_or_default();
        let facts = SessionFacts {
            method,
            request_uri: view.request_uri().unwrap_or_default(),
            to_uri,
            from_uri,
            user_agent,
            source: inb.source.ip(),
        };
        let role = self.config.runtime.sessions.role_of(&facts);
        let sender = self.config.runtime.catalog.classify(user_agent);
        let subject = match (role, &toward) {
            (SessionRole::AgentOffer, Some(flow)) => Subject {
                client: self
                    .config
                    .runtime
                    .catalog
                    .client(&flow.client)
                    .unwrap_or(&self.unknown),
                rule: format!("registered:{}", flow.client),
            },
            (SessionRole::AgentOffer, None) => Subject {
                client: &self.unknown,
                rule: "registered:none".into(),
            },
            _ => Subject {
                client: sender.client,
                rule: sender.rule.to_owned(),
            },
        };
        let decision = decide(&self.config.runtime.policy, role, subject.client.support);
        let recorded = matches!(method, Method::Register | Method::Invite)
            || matches!(decision.action, Action::Drop | Action::Reject);
        let record = |action: Action, status: Option<u16>| {
            recorded.then(|| {
                self.record(
                    inb,
                    view,
                    &subject,
                    role,
                    action,
                    decision.rule,
                    status,
                    decision.would_reject,
                )
            })
        };

        match decision.action {
            Action::Drop => {
                debug!(source = %inb.source, client = %subject.client.id, rule = decision.rule, "dropped by policy");
                self.metrics.count_drop(DropReason::Policy);
                return Outcome {
                    record: record(Action::Drop, None),
                    ..Outcome::drop(DropReason::Policy)
                };
            }
            Action::Reject if method == Method::Ack => {
                self.metrics.count_drop(DropReason::Policy);
                return Outcome {
                    record: record(Action::Drop, None),
                    ..Outcome::drop(DropReason::Policy)
                };
            }
            Action::Reject => {
                let reply = decision.reply.expect("a reject carries its reply");
                let warning = reply.warning_for(&subject.client.name);
                let mut extra: Vec<(&str, &str)> = Vec::new();
                if let Some(w) = &warning {
                    extra.push(("Warning", w));
                }
                extra.extend(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                Metrics::inc(&self.metrics.rejected);
                warn!(source = %inb.source, client = %subject.client.id, role = role.as_str(), rule = decision.rule, status = reply.status, "rejected");
                let mut out = self.local(view, reply.status, &reply.reason, &extra);
                out.record = record(Action::Reject, Some(reply.status));
                return out;
            }
            Action::Flag => {
                Metrics::inc(&self.metrics.flagged);
                warn!(source = %inb.source, client = %subject.client.id, role = role.as_str(), rule = decision.rule, would_reject = decision.would_reject, "flagged");
            }
            Action::Allow => {}
        }

        // Relay.
        let (out_transport, destination) = match &toward {
            Some(flow) => (flow.transport, Destination::Flow(flow.clone())),
            None => (self.upstream_transport(), Destination::Upstream),
        };
        if let Destination::Flow(flow) = &destination {
            if flow.transport == Transport::Tcp && !flow_alive(flow) {
                self.metrics.count_drop(DropReason::FlowGone);
                return Outcome {
                    record: record(decision.action, Some(430)),
                    ..self.local(view, 430, "Flow Failed", &[])
                };
            }
        }
        let Ok(top_via) = view.top_via() else {
            let e = SipError::MalformedHeader(HeaderName::Via);
            return self.refuse(inb, view, e.status_code(), &e.to_string());
        };
        let Some(own_addr) = self.address_for(out_transport) else {
            return self.local(view, 500, "No Listener For Transport", &[]);
        };

        // The flow this request came in on, named for the way back.
        let inbound_flow = Flow {
            transport: inb.transport,
            peer: inb.source,
            connection: inb.connection,
            client: sender.client.id.clone(),
        };
        let mut edits = Edits::new();
        let mut via = format!(
            "Via: SIP/2.0/{} {own_addr};branch={branch}",
            out_transport.via_name()
        );
        if toward.is_none() {
            let token = self.signer.encode(Purpose::Via, &inbound_flow);
            via.push_str(&format!(";{FLOW_PARAM}={token}"));
        }
        via.push_str("\r\n");
        edits.insert(before_first(view, HeaderName::Via), via);
        self.mark_received(view, &top_via, inb.source, &mut edits);
        match view
            .header_fields()
            .iter()
            .find(|h| h.name == HeaderName::MaxForwards)
        {
            Some(h) => {
                let n = view
                    .max_forwards()
                    .ok()
                    .flatten()
                    .unwrap_or(DEFAULT_MAX_FORWARDS);
                edits.replace(h.value_span.range(), (n - 1).to_string());
            }
            None => {
                edits.insert(
                    view.headers_end(),
                    format!("Max-Forwards: {}\r\n", DEFAULT_MAX_FORWARDS - 1),
                );
            }
        }
        if route.is_some() {
            // RFC 3261 16.4: a proxy removes its own Route value.
            if let Some((_, removal)) = first_value(view, HeaderName::Route) {
                edits.remove(removal);
            }
        }
        // Path on REGISTER (RFC 3327) and Record-Route on dialog-creating
        // requests name the client flow, so requests from the registrar side
        // come back through this proxy to that flow. Record-Route also
        // carries the From-tag of the dialog's initiator (`ftag`), which
        // tells the two directions of later requests apart.
        let in_dialog = view.to().ok().and_then(|t| t.tag()).is_some();
        let scheme_addr = |token: String| {
            format!(
                "sip:{token}@{own_addr};transport={};lr",
                out_transport.as_str()
            )
        };
        if method == Method::Register && toward.is_none() {
            let uri = scheme_addr(self.signer.encode(Purpose::Path, &inbound_flow));
            edits.insert(
                after_vias(view, HeaderName::Path),
                format!("Path: <{uri}>\r\n"),
            );
            self.expect_registration(view, now);
        } else if !in_dialog && is_dialog_creating(view) {
            let (purpose, flow) = match &toward {
                None => (Purpose::DialogFromClient, &inbound_flow),
                Some(flow) => (Purpose::DialogFromUpstream, flow),
            };
            let ftag = view.from().ok().and_then(|f| f.tag()).unwrap_or_default();
            let uri = scheme_addr(self.signer.encode(purpose, flow));
            edits.insert(
                after_vias(view, HeaderName::RecordRoute),
                format!(
                    "Record-Route: <{uri};ftag={}>\r\n",
                    String::from_utf8_lossy(ftag)
                ),
            );
        }
        if view.content_length().is_none() {
            // RFC 3261 18.3 / 20.14: required on streams; harmless on UDP.
            edits.insert(
                view.headers_end(),
                format!("Content-Length: {}\r\n", view.body().len()),
            );
        }
        if decision.action == Action::Flag {
            let mut value = format!(
                "flagged; client={}; reason={}",
                subject.client.id, decision.rule
            );
            if decision.would_reject {
                value.push_str("; would-reject");
            }
            edits.insert(
                view.headers_end(),
                format!("{}: {value}\r\n", self.config.runtime.flag_header),
            );
        }
        Metrics::inc(&self.metrics.requests_relayed);
        Outcome {
            send: Some(Outbound {
                to: destination,
                bytes: edits.apply(view.raw()),
            }),
            record: record(decision.action, None),
            dropped: None,
        }
    }

    /// Answer a request that failed validation (400, 505, 513) when a
    /// response can be formed (RFC 3261 8.2.6 needs Via, From, To, Call-ID
    /// and CSeq to copy); otherwise, and for ACK, drop and count it.
    fn refuse(&self, inb: &Inbound, view: &SipView, status: u16, reason: &str) -> Outcome {
        // The response goes back to the source address, so the header lines
        // only need to be present to be copied, even if malformed.
        let formable = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]
        .iter()
        .all(|&h| view.header(h).is_some());
        if !formable || view.method() == Some(Method::Ack) {
            debug!(source = %inb.source, status, "no response can be formed; dropped");
            self.metrics.count_drop(DropReason::Malformed);
            return Outcome::drop(DropReason::Malformed);
        }
        self.local(view, status, reason, &[])
    }

    /// A local response to the sender.
    fn local(&self, view: &SipView, status: u16, reason: &str, extra: &[(&str, &str)]) -> Outcome {
        if view.method() == Some(Method::Ack) {
            self.metrics.count_drop(DropReason::Unanswerable);
            return Outcome::drop(DropReason::Unanswerable);
        }
        Metrics::inc(&self.metrics.local_responses);
        Outcome::reply(response::build(
            view,
            status,
            reason,
            &self.local_tag(view),
            extra,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        inb: &Inbound,
        view: &SipView,
        subject: &Subject<'_>,
        role: SessionRole,
        action: Action,
        rule: &'static str,
        status: Option<u16>,
        would_reject: bool,
    ) -> DecisionRecord {
        let text = |b: Option<&[u8]>| {
            b.map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        DecisionRecord {
            ts: record_time(),
            transport: inb.transport,
            source: inb.source,
            method: text(view.method_bytes()),
            call_id: text(view.call_id()),
            from: text(view.from().ok().map(|f| f.uri)),
            to: text(view.to().ok().map(|t| t.uri)),
            request_uri: text(view.request_uri()),
            user_agent: view
                .user_agent()
                .map(|u| String::from_utf8_lossy(u).into_owned()),
            client: subject.client.id.clone(),
            category: subject.client.category,
            support: subject.client.support,
            role,
            action,
            rule: rule.into(),
            client_rule: subject.rule.clone(),
            status,
            mode: self.config.runtime.policy.mode,
            would_reject,
            generation: RUNTIME_GENERATION,
        }
    }

    // === responses ===

    fn response(
        &self,
        inb: &Inbound,
        view: &SipView,
        now: Instant,
        flow_alive: &dyn Fn(&Flow) -> bool,
    ) -> Outcome {
        if let Err(e) = view.check() {
            debug!(source = %inb.source, error = %e, "malformed response dropped");
            self.metrics.count_drop(DropReason::MalformedResponse);
            return Outcome::drop(DropReason::MalformedResponse);
        }
        let Ok(via) = view.top_via() else {
            self.metrics.count_drop(DropReason::MalformedResponse);
            return Outcome::drop(DropReason::MalformedResponse);
        };
        if !self.is_own(&via) {
            debug!(source = %inb.source, "response not addressed to this proxy discarded");
            self.metrics.count_drop(DropReason::ForeignResponse);
            return Outcome::drop(DropReason::ForeignResponse);
        }
        let destination = match via.params.get(FLOW_PARAM.as_bytes()) {
            // Only the registrar answers requests we sent upstream with a
            // flow token in our Via.
            Some(Some(token)) if inb.from_upstream => match self.signer.decode(token) {
                Ok((Purpose::Via, flow)) => Destination::Flow(flow),
                Ok(_) | Err(_) => {
                    warn!(source = %inb.source, "response with a bad flow token discarded");
                    self.metrics.count_drop(DropReason::ForeignResponse);
                    return Outcome::drop(DropReason::ForeignResponse);
                }
            },
            Some(_) => {
                warn!(source = %inb.source, "flow-token response not from the registrar discarded");
                self.metrics.count_drop(DropReason::ForeignResponse);
                return Outcome::drop(DropReason::ForeignResponse);
            }
            None => Destination::Upstream,
        };
        if view.values(HeaderName::Via).nth(1).is_none() {
            // RFC 3261 16.7 step 3: nothing left to send it to.
            debug!(source = %inb.source, "response with only our Via discarded");
            self.metrics.count_drop(DropReason::ForeignResponse);
            return Outcome::drop(DropReason::ForeignResponse);
        }
        if let Destination::Flow(flow) = &destination {
            if flow.transport == Transport::Tcp && !flow_alive(flow) {
                self.metrics.count_drop(DropReason::FlowGone);
                return Outcome::drop(DropReason::FlowGone);
            }
            self.learn_registration(view, flow, now);
        }
        let Some((_, removal)) = first_value(view, HeaderName::Via) else {
            self.metrics.count_drop(DropReason::MalformedResponse);
            return Outcome::drop(DropReason::MalformedResponse);
        };
        let mut edits = Edits::new();
        edits.remove(removal);
        if view.content_length().is_none() {
            edits.insert(
                view.headers_end(),
                format!("Content-Length: {}\r\n", view.body().len()),
            );
        }
        Metrics::inc(&self.metrics.responses_relayed);
        Outcome {
            send: Some(Outbound {
                to: destination,
                bytes: edits.apply(view.raw()),
            }),
            ..Outcome::default()
        }
    }

    // === registrations ===

    fn expect_registration(&self, view: &SipView, now: Instant) {
        let (Some(call_id), Ok(cseq)) = (view.call_id(), view.cseq()) else {
            return;
        };
        let contacts: Vec<Vec<u8>> = view
            .contacts()
            .filter_map(Result::ok)
            .filter(|c| c.uri != b"*")
            .map(|c| contact_key(c.uri))
            .collect();
        if !contacts.is_empty() {
            self.registrations
                .expect(call_id, cseq.number, contacts, now);
        }
    }

    fn learn_registration(&self, view: &SipView, flow: &Flow, now: Instant) {
        let (Some(status), Some(call_id), Ok(cseq)) = (view.status(), view.call_id(), view.cseq())
        else {
            return;
        };
        if !(200..300).contains(&status) || cseq.method != b"REGISTER" {
            return;
        }
        let default = view
            .expires()
            .ok()
            .flatten()
            .map_or(DEFAULT_EXPIRES_SECS, u64::from);
        let granted: Vec<(Vec<u8>, Duration)> = view
            .contacts()
            .filter_map(Result::ok)
            .map(|c| {
                let secs = c
                    .params
                    .get(b"expires")
                    .flatten()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(default)
                    .min(MAX_EXPIRES_SECS);
                (contact_key(c.uri), Duration::from_secs(secs))
            })
            .collect();
        let stored = self
            .registrations
            .complete(call_id, cseq.number, &granted, flow, now);
        debug!(client = %flow.client, stored, "registration learned");
    }

    // === routing helpers ===

    /// The top Route, if it is this proxy's: its host and port are one of
    /// ours, or its user part is a valid flow token. A Route to this proxy
    /// whose token does not verify is an error (RFC 5626 5.3: 403).
    fn own_route(&self, view: &SipView) -> Result<Option<OwnRoute>, TokenError> {
        let Some(Ok(top)) = view.routes().next() else {
            return Ok(None);
        };
        let Some((user, host, port)) = route_parts(top.uri) else {
            return Ok(None);
        };
        let addressed_here = self
            .advertised
            .iter()
            .any(|(_, addr)| port.unwrap_or(5060) == addr.port() && host_matches(host, addr));
        let ftag = || uri_param(top.uri, b"ftag").map(<[u8]>::to_vec);
        match user.map(|u| self.signer.decode(u)) {
            Some(Ok((Purpose::Via, _))) => Err(TokenError::Malformed),
            Some(Ok(token)) => Ok(Some(OwnRoute {
                token: Some(token),
                ftag: ftag(),
                value: top.uri.to_vec(),
            })),
            Some(Err(e)) if addressed_here => Err(e),
            // A plain Route to this proxy (an outbound-proxy setting): removed,
            // and the request is routed as if it had none (RFC 3261 16.4).
            None if addressed_here => Ok(Some(OwnRoute {
                token: None,
                ftag: None,
                value: top.uri.to_vec(),
            })),
            _ => Ok(None),
        }
    }

    /// Whether `inb` arrived on `flow` (a request going back the way it came).
    fn came_from(&self, flow: &Flow, inb: &Inbound) -> bool {
        flow.transport == inb.transport
            && flow.peer == inb.source
            && (flow.transport == Transport::Udp || flow.connection == inb.connection)
    }

    /// For requests from the registrar without our Route: the registration
    /// table, else a literal IP Request-URI over UDP.
    fn flow_by_request_uri(&self, view: &SipView, now: Instant) -> Option<Flow> {
        let uri = view.request_uri()?;
        if let Some(r) = self.registrations.lookup(uri, now) {
            return Some(r.flow);
        }
        let (host, port) = sip_uri_host(uri)?;
        let host = std::str::from_utf8(host).ok()?;
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(Flow {
            transport: Transport::Udp,
            peer: SocketAddr::new(ip, port.unwrap_or(5060)),
            connection: 0,
            client: self.unknown.id.clone(),
        })
    }

    fn upstream_transport(&self) -> Transport {
        self.config
            .settings
            .upstream
            .map_or(Transport::Udp, |u| u.transport)
    }

    fn address_for(&self, transport: Transport) -> Option<SocketAddr> {
        self.advertised
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| *a)
    }

    /// Whether a Via names this proxy.
    fn is_own(&self, via: &Via<'_>) -> bool {
        self.advertised.iter().any(|(_, addr)| {
            via.port.unwrap_or(5060) == addr.port() && host_matches(via.host, addr)
        })
    }

    /// RFC 3261 16.11 branch: a transaction part, then a loop part.
    ///
    /// The transaction part hashes the received top Via branch when it is
    /// RFC 3261 style, so retransmissions, CANCEL and the ACK of a non-2xx
    /// response get their INVITE's branch while the ACK of a 2xx gets a new
    /// one; for RFC 2543 requests it hashes the 16.6 step 8 fields instead.
    /// The loop part hashes what a loop does not change (Request-URI, From
    /// tag, Call-ID, CSeq number) plus the Route this proxy consumes, so a
    /// spiral through this proxy on another route is no loop. It leaves the
    /// To tag out, so the ACK of a non-2xx keeps its INVITE's whole branch.
    fn branch(&self, view: &SipView, loop_mark: &str) -> String {
        let top_via = view.top_via().ok();
        let cseq = view.cseq().map(|c| c.number).unwrap_or(0).to_be_bytes();
        let from_tag = view.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let to_tag = view.to().ok().and_then(|t| t.tag()).unwrap_or_default();
        let request_uri = view.request_uri().unwrap_or_default();
        let call_id = view.call_id().unwrap_or_default();
        let transaction = match top_via.as_ref().and_then(|v| Some((v, v.branch()?))) {
            Some((via, b)) if b.len() > 7 && b.starts_with(b"z9hG4bK") => {
                let port = via.port.unwrap_or(5060).to_be_bytes();
                self.signer.hash64(&[b"t", b, via.host, &port])
            }
            _ => self
                .signer
                .hash64(&[b"o", request_uri, to_tag, from_tag, call_id, &cseq]),
        };
        format!("{BRANCH_PREFIX}{transaction:016x}{}", loop_mark)
    }

    /// The loop part of this proxy's branch for a request (8 hex digits).
    fn loop_mark(&self, view: &SipView, route: Option<&OwnRoute>) -> String {
        let cseq = view.cseq().map(|c| c.number).unwrap_or(0).to_be_bytes();
        let hash = self.signer.hash64(&[
            b"l",
            view.request_uri().unwrap_or_default(),
            view.from().ok().and_then(|f| f.tag()).unwrap_or_default(),
            view.call_id().unwrap_or_default(),
            &cseq,
            route.map_or(&[][..], |r| &r.value),
        ]);
        format!("{:08x}", hash >> 32)
    }

    /// RFC 3261 16.3 step 4: one of our Vias carries the loop part this
    /// request would get.
    fn is_loop(&self, view: &SipView, mark: &str) -> bool {
        view.values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
            .any(|v| {
                self.is_own(&v)
                    && v.branch().is_some_and(|b| {
                        b.starts_with(BRANCH_PREFIX.as_bytes()) && b.ends_with(mark.as_bytes())
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
        let hash = self.signer.hash64(&[
            b"t",
            view.call_id().unwrap_or_default(),
            view.from().ok().and_then(|f| f.tag()).unwrap_or_default(),
            &cseq,
            branch,
        ]);
        format!("sa{hash:016x}")
    }

    /// RFC 3261 18.2.1 `received` and RFC 3581 `rport` on the sender's Via.
    fn mark_received(&self, view: &SipView, via: &Via<'_>, source: SocketAddr, edits: &mut Edits) {
        let Some((range, _)) = first_value(view, HeaderName::Via) else {
            return;
        };
        let value = &view.raw()[range.clone()];
        // The rport value goes in first: when `rport` ends the value, both
        // edits insert at the same offset and keep this order.
        if via.rport() == Some(None) {
            // Find the valueless `rport` flag and give it the source port.
            let lower = value.to_ascii_lowercase();
            let mut from = 0;
            while let Some(p) = memchr::memmem::find(&lower[from..], b";rport").map(|p| p + from) {
                let end = p + b";rport".len();
                let next = lower.get(end).copied();
                if matches!(
                    next,
                    None | Some(b';' | b' ' | b'\t' | b'\r' | b'\n' | b',')
                ) {
                    edits.insert(range.start + end, format!("={}", source.port()));
                    break;
                }
                from = end;
            }
        }
        // RFC 3581 4: with rport, received is added even when the host matches.
        let rport = via.rport().is_some();
        if (rport || !host_matches(via.host, &source)) && via.received().is_none() {
            edits.insert(range.end, format!(";received={}", source.ip()));
        }
    }
}

/// Whether a sent-by host (as written) is this socket address's IP.
fn host_matches(host: &[u8], addr: &SocketAddr) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip == addr.ip())
}

/// A Route to this proxy.
#[derive(Debug)]
struct OwnRoute {
    /// The flow token in its user part, if it has one.
    token: Option<(Purpose, Flow)>,
    /// `ftag` of a Record-Route: the From-tag of the dialog's initiator.
    ftag: Option<Vec<u8>>,
    /// The Route URI (it tells the passes of a spiral apart).
    value: Vec<u8>,
}

impl OwnRoute {
    /// The client flow the request goes to, or `None` when it goes upstream.
    fn toward_client(&self, view: &SipView) -> Option<&Flow> {
        let (purpose, flow) = self.token.as_ref()?;
        let from_tag = view.from().ok().and_then(|f| f.tag());
        let from_initiator = from_tag == self.ftag.as_deref();
        let to_client = match purpose {
            Purpose::Path => true,
            Purpose::DialogFromClient => !from_initiator,
            Purpose::DialogFromUpstream => from_initiator,
            Purpose::Via => false,
        };
        to_client.then_some(flow)
    }
}

/// (user, host, port) of a Route URI.
type RouteParts<'a> = (Option<&'a [u8]>, &'a [u8], Option<u16>);

/// (user, host, port) of a `sip:`/`sips:` Route URI.
fn route_parts(uri: &[u8]) -> Option<RouteParts<'_>> {
    let rest = uri
        .strip_prefix(b"sip:")
        .or_else(|| uri.strip_prefix(b"sips:"))?;
    let (user, hostport) = match rest.iter().position(|&b| b == b'@') {
        Some(at) => (Some(trim_lws(&rest[..at])), &rest[at + 1..]),
        None => (None, rest),
    };
    let (host, port, _) = parse_hostport(hostport)?;
    Some((user, host, port))
}

/// A `;name=value` URI parameter.
fn uri_param<'a>(uri: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let params = &uri[uri.iter().position(|&b| b == b';')?..];
    Params::new(params).get(name).flatten()
}

/// Where a new Path or Record-Route line goes: before the first header of
/// that name, else right after the last Via line.
fn after_vias(view: &SipView, name: HeaderName) -> usize {
    let fields = view.header_fields();
    if let Some(h) = fields.iter().find(|h| h.name == name) {
        return h.line_span.start as usize;
    }
    fields
        .iter()
        .rev()
        .find(|h| h.name == HeaderName::Via)
        .map_or(view.start_line_end(), |h| h.line_span.end as usize)
}

/// Requests that create dialogs and so get a Record-Route (RFC 3261 16.6 step 4).
fn is_dialog_creating(view: &SipView) -> bool {
    matches!(view.method(), Some(Method::Invite))
        || matches!(view.method_bytes(), Some(b"SUBSCRIBE" | b"REFER"))
}

fn lossy(b: Option<&[u8]>) -> String {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}
