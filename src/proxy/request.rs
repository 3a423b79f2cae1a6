//! The request path, as named phases over one [`RequestCtx`] (in the manner
//! of pingora's phase list):
//!
//! 1. `validate`: size, syntax, header count, the ACK of an answer of ours
//!    (absorbed), Max-Forwards (483), Proxy-Require (420); then `health`:
//!    an OPTIONS addressed to this proxy itself is answered here
//!    (`health.rs`).
//! 2. `route`: this proxy's Route values (flow token; one, or the two of an
//!    RFC 5658 pair), loop detection (482), the target: a client flow, or
//!    the registrar (a registrar request with no Route is looked up: 404).
//! 3. `admit`: who sent it, what part it plays in a Response Group session,
//!    what the policy says ([`Admission`]). Pure: it cannot fail.
//! 4. `enforce`: the verdict: a drop ends here, a reject becomes a
//!    [`Refusal`], a flag is logged.
//! 5. `relay`: the target flow must be writable (430), then the proxy's
//!    edits are spliced in and the destination named.
//!
//! Between 3 and 4, a scanner whose address is proven is banned and its
//! request dropped (rule `ban.scanner`) instead of decided by the policy.
//!
//! Any phase may stop the request with a [`Halt`]: a [`Refusal`] (answered,
//! logged and recorded by `refusal.rs`), a drop, or a local answer. Every
//! outcome, with its record, is made here or in `refusal.rs`; nothing is
//! changed after the core returns it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, warn};

use super::client_transactions::{TransactionKey, TransactionMethod};
use super::flow::{Flow, Purpose, TokenError};
use super::listening::{uri_parts, Listening};
use super::refusal::Refusal;
use super::transactions::{Decided, RecordKind, Treatment};
use super::{
    Core, Destination, Inbound, OpenConnection, Outbound, Outcome, Runtime, Subject, Text,
    BACK_PARAM, FLOW_PARAM,
};
use crate::classify::{Classification, Support};
use crate::observe::decision_log::DecisionKind;
use crate::observe::metrics::DropReason;
use crate::policy::{decide, Decision, SessionFacts, SessionRole, Verdict};
use crate::sip::edit::{
    before_first, loosen_strict_route, mark_received, remove_leading_values, remove_named, Edits,
};
use crate::sip::fields::{check_request_uri, percent_decoded, sip_uri_host};
use crate::sip::{HeaderName, Method, Params, SipError, SipView};
use crate::transport::admission::BanCause;
use crate::transport::Transport;

/// Max-Forwards added to requests that carry none (RFC 3261 16.6 step 3).
const DEFAULT_MAX_FORWARDS: u8 = 70;

/// What every phase of one request reads.
pub(super) struct RequestCtx<'m> {
    /// The request as it arrived.
    pub(super) inbound: &'m Inbound,
    /// Its view.
    pub(super) view: &'m SipView,
    /// The runtime snapshot loaded for this message.
    pub(super) runtime: &'m Runtime,
    /// The clock, read once.
    pub(super) now: Instant,
    /// The method (`Other` when unrecognised).
    pub(super) method: Method,
}

impl<'m> RequestCtx<'m> {
    pub(super) fn new(
        inbound: &'m Inbound,
        view: &'m SipView,
        runtime: &'m Runtime,
        now: Instant,
    ) -> Self {
        Self {
            inbound,
            view,
            runtime,
            now,
            method: view.method().unwrap_or(Method::Other),
        }
    }

    /// The request belongs to a dialog: its To carries a tag (RFC 3261
    /// 12.2). An initial request has none.
    pub(super) fn in_dialog(&self) -> bool {
        self.view.to().ok().and_then(|t| t.tag()).is_some()
    }
}

/// Where the `route` phase sends a request.
struct Routing<'m> {
    /// This proxy's Route values at the top of the request, if any.
    own_route: Option<OwnRoute<'m>>,
    /// The client flow it goes to; `None`: the registrar.
    toward: Option<Flow>,
    /// The loop part of this proxy's branch.
    loop_mark: u32,
}

/// What the `admit` phase found out about a request.
pub(super) struct Admission<'m> {
    /// The sender's classification.
    pub(super) sender: Classification<'m>,
    /// The session role (an agent offer only on the leg toward the agent).
    pub(super) role: SessionRole,
    /// The client the decision is about.
    pub(super) subject: Subject<'m>,
    /// The policy's decision.
    pub(super) decision: Decision<'m>,
    /// An INVITE continuing a dialog this proxy record-routed (a
    /// re-INVITE): no new decision, and no record.
    pub(super) reinvite: bool,
}

/// Why a phase stopped a request.
pub(super) enum Halt<'m> {
    /// Answer it locally (or, when it cannot be answered, drop it).
    Refuse(Refusal<'m>),
    /// Drop it, counted under `reason`; recorded (action `drop`) under
    /// `rule` when there is one.
    Drop {
        /// The counter.
        reason: DropReason,
        /// The record's rule; `None`: not recorded (an absorbed ACK).
        rule: Option<&'static str>,
    },
    /// Answer it with this response, unrecorded (a health check's `200`).
    Answer(Bytes),
    /// An outcome the phase had made whole already: a refusal answered
    /// and recorded through [`Core::refuse`] (its text lives no longer
    /// than the phase: the health check's `503`), or a copy's outcome held
    /// to its first copy's fate. Boxed: rare, and an outcome is large.
    Refused(Box<Outcome>),
}

impl<'m> From<Refusal<'m>> for Halt<'m> {
    fn from(refusal: Refusal<'m>) -> Self {
        Self::Refuse(refusal)
    }
}

impl Core {
    /// Run a request through the phases; one a strict router sent first
    /// becomes the request a loose router would have sent.
    pub(super) fn request(
        &self,
        inbound: &Inbound,
        view: &SipView,
        runtime: &Runtime,
        now: Instant,
        open: OpenConnection<'_>,
        ban: &mut dyn FnMut(SocketAddr) -> bool,
    ) -> Outcome {
        let loosened = self.loosened(inbound, view);
        let (inbound, view) = loosened.as_ref().map_or((inbound, view), |(i, v)| (i, v));
        let ctx = RequestCtx::new(inbound, view, runtime, now);
        let routing = match self
            .validate(&ctx)
            .and_then(|()| self.health(&ctx))
            .and_then(|()| self.drain_gate(&ctx))
            .and_then(|()| self.route(&ctx))
        {
            Ok(routing) => routing,
            Err(halt) => return self.halted(&ctx, None, halt),
        };
        let admission = self.admit(&ctx, &routing);
        Self::ban_scanner(&ctx, &admission, ban)
            .and_then(|()| self.enforce(&ctx, &admission))
            .and_then(|()| self.relay(&ctx, routing, &admission, open))
            .unwrap_or_else(|halt| self.halted(&ctx, Some(&admission), halt))
    }

    fn halted(
        &self,
        ctx: &RequestCtx<'_>,
        admission: Option<&Admission<'_>>,
        halt: Halt<'_>,
    ) -> Outcome {
        match halt {
            Halt::Refuse(refusal) => self.refuse(ctx, admission, refusal),
            Halt::Drop { reason, rule } => {
                self.metrics.count_drop(reason);
                let record = rule.map(|rule| self.drop_record(ctx, admission, rule));
                Outcome::Drop { reason, record }
            }
            Halt::Answer(bytes) => Outcome::Answer {
                bytes,
                record: None,
            },
            Halt::Refused(outcome) => *outcome,
        }
    }

    // === phase 1: validate ===

    fn validate<'m>(&self, ctx: &RequestCtx<'m>) -> Result<(), Halt<'m>> {
        let view = ctx.view;
        if ctx.inbound.bytes.len() > self.settings.limits.max_message_bytes {
            return Err(Refusal::TooLarge.into());
        }
        view.check_for_transport(ctx.inbound.transport.is_stream())
            .map_err(Refusal::Malformed)?;
        if view.header_fields().len() > self.settings.limits.max_headers {
            return Err(Refusal::TooManyHeaders.into());
        }
        if ctx.method == Method::Ack && self.acknowledges_an_answer(ctx) {
            debug!(source = %ctx.inbound.source, call_id = %Text(view.call_id()), "ACK of a local response absorbed");
            return Err(Halt::Drop {
                reason: DropReason::AbsorbedAck,
                rule: None,
            });
        }
        if ctx.method == Method::Cancel && self.transactions.answered_invite(view, ctx.now) {
            return Err(Halt::Answer(self.cancel_of_an_answer(ctx)));
        }
        if view.max_forwards() == Ok(Some(0)) {
            return Err(Refusal::TooManyHops.into());
        }
        if view.proxy_require().next().is_some() {
            return Err(Refusal::BadExtension.into());
        }
        if ctx.method == Method::Register {
            check_contacts(view, self.settings.limits.max_contacts_per_register)?;
        }
        Ok(())
    }

    /// The `200` to a CANCEL of an INVITE this proxy answered itself (a
    /// policy reject that crossed the CANCEL, or whose answer was lost):
    /// the INVITE is complete, so the CANCEL has no effect and is answered
    /// here (RFC 3261 9.2), not sent on to a registrar or an agent that
    /// never saw the INVITE. Counted under `proxy.cancel-answered`.
    fn cancel_of_an_answer(&self, ctx: &RequestCtx<'_>) -> Bytes {
        debug!(source = %ctx.inbound.source, call_id = %Text(ctx.view.call_id()), "CANCEL of an INVITE answered here: answered 200");
        self.unrecorded_200(ctx, CANCEL_ANSWERED_RULE)
    }

    /// A `200` of this proxy's to the request of `ctx`, not recorded,
    /// counted in `sipadmit_protocol_answers_total` under `rule`.
    pub(super) fn unrecorded_200(&self, ctx: &RequestCtx<'_>, rule: &'static str) -> Bytes {
        self.metrics.count_protocol_answer(rule, Some(200));
        crate::sip::response::build(
            ctx.view,
            200,
            "",
            &self.local_tag(ctx.view),
            &[],
            ctx.inbound.source.0,
        )
    }

    /// Whether an ACK acknowledges an answer of this proxy's: it carries
    /// this proxy's To tag, or (an INVITE in a dialog keeps the dialog's
    /// tag in the answer) its INVITE was answered here.
    fn acknowledges_an_answer(&self, ctx: &RequestCtx<'_>) -> bool {
        let view = ctx.view;
        let Some(to_tag) = view.to().ok().and_then(|t| t.tag()) else {
            return false;
        };
        to_tag == self.local_tag(view).as_bytes()
            || self.transactions.answered_invite(view, ctx.now)
    }

    /// While the instance drains, a client's new request (outside a
    /// dialog; ACK and CANCEL belong to transactions under way) is refused
    /// so that it goes to another instance; requests in dialogs and from
    /// the registrar keep flowing, and so does the retransmission of a
    /// REGISTER relayed before and still awaiting its final response. A
    /// copy of a request answered `408` when the drain ran out gets that
    /// answer again (RFC 3261 17.2.2), not a second trip to the registrar.
    fn drain_gate<'m>(&self, ctx: &RequestCtx<'m>) -> Result<(), Halt<'m>> {
        if !self.is_draining()
            || ctx.inbound.from_registrar()
            || matches!(ctx.method, Method::Ack | Method::Cancel)
            || ctx.in_dialog()
        {
            return Ok(());
        }
        if self.seen_before(ctx, RecordKind::Timeout) {
            return Err(Refusal::DrainRanOut.into());
        }
        if self.register_under_way(ctx) || self.seen_before(ctx, RecordKind::Decision) {
            return Ok(());
        }
        Err(Refusal::Draining.into())
    }

    /// Whether the request is a copy of one from the same source recorded
    /// as `kind` in the last 32 s: a UDP client's retransmission. Decided
    /// before, its first copy may wait at a stream registrar (a drain waits
    /// for it), so it is handled as the first was, not refused as new;
    /// answered `408` before, it gets that answer again.
    fn seen_before(&self, ctx: &RequestCtx<'_>, kind: RecordKind) -> bool {
        self.transactions
            .seen_before(ctx.view, ctx.inbound.source.0, kind, ctx.now)
    }

    /// A UDP client's request handled as `treatment` without a record (a
    /// relay of a request other than a REGISTER or an INVITE, whose
    /// records note their transactions; a health check's `200`; not an
    /// ACK, which has no answer): its transaction is noted, so that a copy
    /// of it during a drain is relayed as it was ([`Self::seen_before`]),
    /// and a copy over its source's rate limit is dropped, not answered
    /// `503` ([`Core::refuse_source`]). For a copy whose first copy's fate
    /// the current decision would contradict ([`Decided::copy`]), the
    /// outcome it gets instead: dropped after a reload turned the policy's
    /// verdict, or answered the rate limit's `503` again.
    pub(super) fn note_unrecorded(
        &self,
        ctx: &RequestCtx<'_>,
        treatment: Treatment,
        by_policy: bool,
    ) -> Option<Outcome> {
        let inb = ctx.inbound;
        if inb.transport != Transport::Udp || inb.from_registrar() || ctx.method == Method::Ack {
            return None;
        }
        let decided = Decided {
            treatment,
            generation: ctx.runtime.generation as u16,
            by_policy,
        };
        let Err(Some(first)) = self
            .transactions
            .decided(ctx.view, inb.source.0, decided, ctx.now)
        else {
            return None;
        };
        self.copy_decided_before(ctx, first.copy(&decided), Some(treatment), None)
    }

    /// A request relayed without a record, by the verdict of `rule`: noted
    /// ([`Self::note_unrecorded`]); a copy held to its first copy's
    /// fate halts here.
    fn relayed_unrecorded<'m>(&self, ctx: &RequestCtx<'m>, rule: &str) -> Result<(), Halt<'m>> {
        let by_policy = DecisionKind::of_rule(rule) == DecisionKind::Policy;
        match self.note_unrecorded(ctx, Treatment::Relayed, by_policy) {
            Some(copy) => Err(Halt::Refused(Box::new(copy))),
            None => Ok(()),
        }
    }

    /// Whether the request is a copy of a REGISTER this instance relayed
    /// from the same flow and that still awaits its final response.
    fn register_under_way(&self, ctx: &RequestCtx<'_>) -> bool {
        let (view, inb) = (ctx.view, ctx.inbound);
        let (Method::Register, Some(call_id), Ok(cseq)) = (ctx.method, view.call_id(), view.cseq())
        else {
            return false;
        };
        self.registrations
            .is_pending(call_id, cseq.number, &self.pending_flow(inb), ctx.now)
    }

    /// A REGISTER relayed and then answered here (503: it could not be
    /// delivered, or its copy found the registrar known down) awaits
    /// nothing more: no draining instance waits for it.
    pub(super) fn register_answered_here(&self, ctx: &RequestCtx<'_>) {
        let view = ctx.view;
        let (Method::Register, Some(call_id), Ok(cseq)) = (ctx.method, view.call_id(), view.cseq())
        else {
            return;
        };
        let flow = self.pending_flow(ctx.inbound);
        self.registrations.complete(
            call_id,
            cseq.number,
            &flow,
            super::registrations::RegisterAnswer::Refused,
            ctx.now,
        );
    }

    /// The flow a pending REGISTER is noted under: transport, peer and
    /// connection.
    fn pending_flow(&self, inb: &Inbound) -> Flow {
        Flow {
            client: String::new(),
            ..self.inbound_flow(inb)
        }
    }

    /// The flow `inb` came in on, without its client: a stream's
    /// connection or a UDP client's address, and the listener the client
    /// reached (what goes back to it leaves from there, RFC 3581 4) where
    /// this proxy has several of that transport. With one, the flow names
    /// none: the listener found without it is that one, and its tokens
    /// keep the form every earlier version reads (a pool's rolling upgrade
    /// and its rollback).
    fn inbound_flow(&self, inb: &Inbound) -> Flow {
        let several = self
            .listeners
            .iter()
            .filter(|l| l.transport == inb.transport)
            .nth(1)
            .is_some();
        Flow {
            transport: inb.transport,
            peer: inb.source.0,
            connection: inb.connection.map(|c| self.flow_id(c)),
            local: several.then_some(inb.local),
            client: String::new(),
        }
    }

    /// The request continues a dialog this proxy record-routed: a To tag,
    /// and this proxy's Route at the top with a dialog's flow token bound
    /// to this Call-ID ([`super::flow::DIALOG_PARAM`]; RFC 3261 12.2: a request
    /// within a dialog follows its route set). A To tag alone, which any
    /// client can write, makes no dialog, nor does a token of another
    /// dialog a client kept.
    fn continues_a_dialog(&self, ctx: &RequestCtx<'_>, routing: &Routing<'_>) -> bool {
        let Some(call_id) = ctx.view.call_id().filter(|_| ctx.in_dialog()) else {
            return false;
        };
        routing.own_route.as_ref().is_some_and(|route| {
            matches!(
                route.token,
                Some((Purpose::DialogFromClient | Purpose::DialogFromUpstream, _))
            ) && route.dialog_binding.is_some_and(|binding| {
                self.signer()
                    .binds_dialog(route.token_text, call_id, binding)
            })
        })
    }

    // === phase 2: route ===

    /// Where does it go? This proxy's Route (a flow token) decides; else the
    /// registrar's requests are looked up and clients' go upstream.
    fn route<'m>(&self, ctx: &RequestCtx<'m>) -> Result<Routing<'m>, Halt<'m>> {
        let (view, inb) = (ctx.view, ctx.inbound);
        let own_route = self.own_route(view).map_err(Refusal::InvalidFlowToken)?;
        // RFC 3261 16.3 step 4: our own Via with the loop mark we would add
        // means this request has been here before on the same route.
        let loop_mark = self.loop_mark(view, own_route.as_ref().map(|r| r.value));
        if self.is_loop(view, loop_mark) {
            return Err(Refusal::LoopDetected.into());
        }
        let toward = match own_route.as_ref().filter(|r| r.token.is_some()) {
            Some(route) if self.is_on_the_registrars_side(inb) => route
                .toward_client(view)
                .filter(|flow| !self.came_from(flow, inb))
                .cloned(),
            // A client's request goes upstream, whatever flow a token in
            // its Route names: in a dialog its own side's value comes first
            // and leads to the registrar, which sends it on (RFC 3261
            // 16.12). A value naming another client's flow, kept from an
            // earlier call, is no way around the registrar.
            Some(_) => None,
            None if inb.from_registrar() => Some(
                self.flow_by_request_uri(ctx.runtime, view, ctx.now)
                    .ok_or(Refusal::NotFound)?,
            ),
            None => None,
        };
        Ok(Routing {
            own_route,
            toward,
            loop_mark,
        })
    }

    /// The top Route values that are this proxy's: its host and port are
    /// one of ours, or its user part is a valid flow token; with a token,
    /// the next value too when it carries the same token (the other half of
    /// an RFC 5658 double Record-Route). A plain value of ours (a client's
    /// outbound-proxy setting) may precede them: a dialog's route set
    /// behind it is followed, both removed. A Route to this proxy whose
    /// token does not verify is an error (RFC 5626 5.3: 403).
    fn own_route<'m>(&self, view: &'m SipView) -> Result<Option<OwnRoute<'m>>, TokenError> {
        let mut routes = view.routes();
        let mut next = || routes.next().and_then(Result::ok).map(|r| r.uri);
        let (Some(top), second) = (next(), next()) else {
            return Ok(None);
        };
        let Some((user, host, port)) = uri_parts(top) else {
            return Ok(None);
        };
        let addressed_here = self.addressed_here(host, port);
        match user {
            Some(token) => self.token_route(top, token, addressed_here, second, 0),
            None if addressed_here => {
                // This proxy's token value right behind it: the route set
                // of a dialog it record-routed, written after the client's
                // outbound-proxy Route (RFC 3261 12.2.1.1).
                let behind = second
                    .and_then(|uri| Some((uri, uri_parts(uri)?.0?)))
                    .and_then(|(uri, token)| self.token_route(uri, token, false, next(), 1).ok())
                    .flatten();
                // Else removed, and the request is routed as if it had no
                // Route (RFC 3261 16.4).
                Ok(behind.or(Some(OwnRoute {
                    token: None,
                    token_text: b"",
                    dialog_binding: None,
                    ftag: None,
                    value: top,
                    values: 1,
                })))
            }
            None => Ok(None),
        }
    }

    /// The Route value `uri` whose user part is `token`, when the token
    /// verifies (with the next value, `next`, when it carries the same
    /// token), after `before` plain values of this proxy; an error for one
    /// `addressed_here` that does not verify.
    fn token_route<'m>(
        &self,
        uri: &'m [u8],
        token: &'m [u8],
        addressed_here: bool,
        next: Option<&[u8]>,
        before: usize,
    ) -> Result<Option<OwnRoute<'m>>, TokenError> {
        match self.decode_token(token) {
            Ok((Purpose::Via | Purpose::ViaBack, _)) => Err(TokenError::Malformed),
            Ok(decoded) => {
                let pair = next
                    .and_then(uri_parts)
                    .is_some_and(|(next_user, _, _)| next_user == Some(token));
                Ok(Some(OwnRoute {
                    token: Some(decoded),
                    token_text: token,
                    dialog_binding: uri_param(uri, super::flow::DIALOG_PARAM.as_bytes()),
                    ftag: uri_param(uri, b"ftag"),
                    value: uri,
                    values: before + 1 + usize::from(pair),
                }))
            }
            Err(e) if addressed_here => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// A strict router's request (RFC 3261 16.4) as a loose router would
    /// have sent it, with its view; `None` for any other.
    fn loosened(&self, inbound: &Inbound, view: &SipView) -> Option<(Inbound, SipView)> {
        if !self.is_own_record_route(view.request_uri()) {
            return None;
        }
        let loosened = Inbound {
            bytes: loosen_strict_route(view)?,
            ..inbound.clone()
        };
        let view = SipView::parse(loosened.bytes.clone()).ok()?;
        Some((loosened, view))
    }

    /// Whether a Request-URI is a value this proxy put in a Record-Route
    /// (or a Path): addressed here, with a flow token of a route set. A
    /// strict router (RFC 2543) sends requests so (RFC 3261 16.4).
    fn is_own_record_route(&self, uri: Option<&[u8]>) -> bool {
        let Some((Some(user), host, port)) = uri.and_then(uri_parts) else {
            return false;
        };
        self.addressed_here(host, port) && self.is_route_token(user)
    }

    /// Whether `inb` arrived on `flow` (a request going back the way it came).
    fn came_from(&self, flow: &Flow, inb: &Inbound) -> bool {
        flow.transport == inb.transport
            && flow.peer == inb.source.0
            && (!flow.transport.is_stream()
                || flow.connection == inb.connection.map(|c| self.flow_id(c)))
    }

    /// For requests from the registrar without our Route: the registration
    /// table, else a literal IP Request-URI over UDP, unless it names this
    /// proxy itself (sent there, it would only come back as a loop).
    fn flow_by_request_uri(&self, runtime: &Runtime, view: &SipView, now: Instant) -> Option<Flow> {
        let uri = view.request_uri()?;
        if let Some(r) = self.registrations.lookup(uri, now) {
            return Some(r.flow);
        }
        let (host, port) = sip_uri_host(uri)?;
        if self.addressed_here(host, port) {
            return None;
        }
        let host = std::str::from_utf8(host).ok()?;
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(Flow {
            transport: Transport::Udp,
            peer: SocketAddr::new(ip, port.unwrap_or(5060)),
            connection: None,
            local: None,
            client: runtime.unknown_client().id.clone(),
        })
    }

    // === phase 3: admit ===

    /// Who is it, what part does it play, what does the policy say?
    fn admit<'m>(&self, ctx: &RequestCtx<'m>, routing: &Routing<'_>) -> Admission<'m> {
        let (view, config) = (ctx.view, &ctx.runtime.config);
        let user_agent = view.user_agent();
        let facts = SessionFacts {
            method: ctx.method,
            request_uri: view.request_uri().unwrap_or_default(),
            to_uri: view.to().map(|t| t.uri).unwrap_or_default(),
            from_uri: view.from().map(|f| f.uri).unwrap_or_default(),
            user_agent,
            source: ctx.inbound.source.ip(),
        };
        let sender = config.catalog.classify(user_agent);
        // A Response Group session is decided by the request that starts
        // it; an INVITE inside a dialog this proxy record-routed (a
        // re-INVITE: hold, resume, a session refresh) belongs to a session
        // decided already, perhaps by an earlier configuration (a call
        // answered in monitor mode goes on after a reload to enforce).
        let reinvite = ctx.method == Method::Invite && self.continues_a_dialog(ctx, routing);
        // A REGISTER is decided the same whatever its expiry (docs/probe.md:
        // `sipadmit probe` tests the policy with `Expires: 0`).
        let role = if reinvite {
            SessionRole::None
        } else {
            config.sessions.role_of(&facts)
        };
        let (role, subject) = match (role, &routing.toward) {
            // An agent offer is decided on the leg toward the agent, by the
            // client that registered the target.
            (SessionRole::AgentOffer, Some(flow)) => (
                SessionRole::AgentOffer,
                Subject {
                    client: config
                        .catalog
                        .client(&flow.client)
                        .unwrap_or_else(|| ctx.runtime.unknown_client()),
                    rule: Cow::Owned(format!("registered:{}", flow.client)),
                },
            ),
            // On the leg toward the registrar the target is not known yet:
            // relayed as a request outside any session.
            (SessionRole::AgentOffer, None) => (SessionRole::None, Subject::sender(&sender)),
            (role, _) => (role, Subject::sender(&sender)),
        };
        let decision = decide(&config.policy, role, subject.client.support);
        Admission {
            sender,
            role,
            subject,
            decision,
            reinvite,
        }
    }

    /// A scanner's request (the catalog's `scanner` support) whose sender
    /// `ban` bans (the transports decide whether its address is proven):
    /// dropped with rule `ban.scanner`, never decided by the policy.
    fn ban_scanner<'m>(
        ctx: &RequestCtx<'m>,
        admission: &Admission<'m>,
        ban: &mut dyn FnMut(SocketAddr) -> bool,
    ) -> Result<(), Halt<'m>> {
        if admission.sender.client.support == Support::Scanner && ban(ctx.inbound.source.0) {
            debug!(source = %ctx.inbound.source, "scanner banned: request dropped");
            return Err(Halt::Drop {
                reason: DropReason::Banned,
                rule: Some(BanCause::Scanner.rule()),
            });
        }
        Ok(())
    }

    // === phase 4: enforce ===

    /// Apply the verdict: drop, reject (a [`Refusal`]), or flag (logged).
    fn enforce<'m>(&self, ctx: &RequestCtx<'m>, admission: &Admission<'m>) -> Result<(), Halt<'m>> {
        let Admission {
            subject,
            role,
            decision,
            ..
        } = admission;
        match decision.verdict {
            Verdict::Allow => Ok(()),
            Verdict::Flag { would_reject } => {
                // A peer sets these off (monitor mode flags what enforce
                // mode would reject): the first few of every 10 s are
                // logged, then one summary line (every one is recorded).
                let noted = self
                    .summaries
                    .note_flagged(ctx.inbound.source.ip(), ctx.now);
                if let Some(t) = noted.closed.filter(|t| t.events > t.examples) {
                    super::flagged_summary(t);
                }
                if noted.example {
                    warn!(source = %ctx.inbound.source, client = %subject.client.id, role = role.as_str(), rule = decision.rule, would_reject, "flagged");
                }
                Ok(())
            }
            Verdict::Reject(reply) => Err(Refusal::Policy {
                reply,
                rule: decision.rule,
            }
            .into()),
            Verdict::Drop => {
                debug!(source = %ctx.inbound.source, client = %subject.client.id, rule = decision.rule, "dropped by policy");
                Err(Halt::Drop {
                    reason: DropReason::Policy,
                    rule: Some(decision.rule),
                })
            }
        }
    }

    // === phase 5: relay ===

    /// Splice in the proxy's edits and name the destination: the next hop,
    /// then each edit in message order, then the record.
    fn relay<'m>(
        &'m self,
        ctx: &RequestCtx<'m>,
        routing: Routing<'m>,
        admission: &Admission<'m>,
        open: OpenConnection<'_>,
    ) -> Result<Outcome, Halt<'m>> {
        let (view, inb) = (ctx.view, ctx.inbound);
        let hop = self.next_hop(ctx, &routing, open)?;
        let top_via = view
            .top_via()
            .map_err(|_| Refusal::Malformed(SipError::MalformedHeader(HeaderName::Via)))?;
        // The flow this request came in on, named for the way back.
        let inbound_flow = Flow {
            client: admission.sender.client.id.clone(),
            ..self.inbound_flow(inb)
        };
        let branch = self.branch(view, routing.loop_mark);
        let mut edits = Edits::new();
        self.add_via(view, &routing, &hop, branch, &inbound_flow, &mut edits);
        mark_received(view, &top_via, inb.source.0, &mut edits);
        decrement_max_forwards(view, &mut edits);
        if let Some(route) = &routing.own_route {
            // RFC 3261 16.4: a proxy removes its own Route value; RFC 5658:
            // both values of a double Record-Route.
            remove_leading_values(view, HeaderName::Route, route.values, &mut edits);
        }
        self.add_path_or_record_route(ctx, &routing, &hop, &inbound_flow, &mut edits);
        if view.content_length().is_none() {
            // RFC 3261 18.3 / 20.14: required on streams; harmless on UDP.
            edits.insert_fmt(
                view.headers_end(),
                format_args!("Content-Length: {}\r\n", view.body().len()),
            );
        }
        flag_edits(ctx, admission, &mut edits);
        let decision = admission.decision;
        let record = self.relay_record(ctx, admission);
        let bytes = edits.apply(view.raw());
        // What no longer fits in a datagram after our edits gets 513 (the
        // send would fail with EMSGSIZE). Below that it goes over UDP even
        // above 1300 bytes, where RFC 3261 18.1.1 asks for TCP: the
        // registrar's transport is the admin's (docs/architecture.md).
        if hop.transport == Transport::Udp && bytes.len() > max_udp_payload(hop.ip) {
            return Err(Refusal::TooLargeForUdp.into());
        }
        // A scanner's request (relayed when the policy lets scanners
        // through) gets no place in the client transaction table.
        let retransmit = retransmit_key(ctx, &hop, branch)
            .filter(|_| admission.sender.client.support != Support::Scanner);
        let to = match routing.toward {
            Some(flow) => Destination::Flow(flow),
            None => Destination::Upstream,
        };
        if record.is_none() {
            self.relayed_unrecorded(ctx, decision.rule)?;
        }
        if let (Destination::Flow(flow), Method::Invite, Some(branch)) =
            (&to, ctx.method, top_via.branch())
        {
            // The callee's answer is awaited (a drain waits for it).
            let callee = flow.connection.map(|id| (id.connection, flow.peer));
            self.toward_clients.relayed(branch, callee, ctx.now);
        }
        let send = Outbound { to, bytes };
        if let Some(invite) = acknowledged_invite(ctx, &hop, branch) {
            self.client_transactions.acknowledged(&invite, &send);
        }
        Ok(Outcome::Relay {
            send,
            record,
            retransmit,
        })
    }

    /// The record of a request relayed by `admission`: each REGISTER's and
    /// each INVITE's but a re-INVITE's, which is no new admission decision.
    fn relay_record(
        &self,
        ctx: &RequestCtx<'_>,
        admission: &Admission<'_>,
    ) -> Option<crate::observe::DecisionRecord> {
        let decided = match ctx.method {
            Method::Register => true,
            Method::Invite => !admission.reinvite,
            _ => false,
        };
        let decision = admission.decision;
        decided.then(|| {
            self.record(
                ctx.runtime,
                ctx.inbound,
                ctx.view,
                &admission.subject,
                admission.sender.client,
                admission.role,
                decision.verdict.action(),
                decision.rule,
                None,
                decision.verdict.would_reject(),
            )
        })
    }

    /// Where the request leaves: the target flow must be writable (430), a
    /// `sips:` request leaves over TLS only (RFC 3261 26.2.2, RFC 5630),
    /// and this proxy needs a listener of that transport facing the next
    /// hop's address family.
    fn next_hop<'s, 'm>(
        &'s self,
        ctx: &RequestCtx<'m>,
        routing: &Routing<'m>,
        open: OpenConnection<'_>,
    ) -> Result<NextHop<'s>, Halt<'m>> {
        let transport = match &routing.toward {
            Some(flow) => {
                self.check_flow(flow, open).map_err(Refusal::FlowFailed)?;
                flow.transport
            }
            None if self.upstream_known_down(ctx.now) => {
                return Err(Refusal::UpstreamUnavailable.into());
            }
            None => self.upstream_transport(),
        };
        let sips = is_sips_request(ctx.view, routing);
        if sips && transport != Transport::Tls {
            return Err(Refusal::SipsWithoutTls(transport).into());
        }
        // The client flow's peer, or the registrar.
        let ip = match &routing.toward {
            Some(flow) => flow.peer.ip(),
            None => self
                .settings
                .upstream
                .map_or(ctx.inbound.local.ip(), |u| u.addr.ip()),
        };
        // Toward a client, the listener it reached (its way back to this
        // proxy, RFC 3261 18.2.2 and 16.6 step 4), where that is ours.
        let reached = routing
            .toward
            .as_ref()
            .and_then(|flow| self.listener_at(transport, flow.local?.0));
        let own = reached
            .or_else(|| self.address_for(transport, ip))
            .ok_or(Refusal::NoListener(transport))?;
        Ok(NextHop {
            transport,
            ip,
            own,
            sips,
        })
    }

    /// Whether `flow` is the configured registrar itself: its transport,
    /// address and port (a UDP datagram from it, or sipadmit's own link;
    /// an IPv4 registrar seen through a dual-stack listener as well).
    /// Whether a request comes from the registrar's side: a source of
    /// `upstream_sources`, or any port of the registrar's host (a TCP/TLS
    /// registrar's own connections to sipadmit's listener, which count as
    /// a client's for everything else until `upstream_sources` lists
    /// them). Only such a request is sent to the client flow a token in
    /// its Route names.
    fn is_on_the_registrars_side(&self, inb: &Inbound) -> bool {
        inb.from_registrar()
            || self
                .settings
                .upstream
                .is_some_and(|u| u.addr.ip().to_canonical() == inb.source.ip().to_canonical())
    }

    fn is_upstream_itself(&self, flow: &Flow) -> bool {
        self.settings.upstream.is_some_and(|u| {
            u.transport == flow.transport
                && u.addr.ip().to_canonical() == flow.peer.ip().to_canonical()
                && u.addr.port() == flow.peer.port()
        })
    }

    /// Whether the registrar is known to be unreachable now: a UDP one
    /// after an ICMP error or its silence, while the probes are on (they
    /// find out that it is back), or a stream link failing fast after a
    /// failed connect. A request for it is then answered `503` here, with
    /// one record, instead of relayed into nothing and answered later.
    fn upstream_known_down(&self, now: Instant) -> bool {
        match self.settings.upstream {
            Some(u) if u.transport == Transport::Udp => {
                self.settings.upstream_probe.is_some() && self.metrics.udp_upstream_down()
            }
            Some(_) => self.metrics.stream_upstream_failing_fast(now),
            None => false,
        }
    }

    /// This proxy's Via on top (RFC 3261 16.6 step 8); it carries the
    /// token of the flow the answer goes back to: toward the registrar
    /// always; toward a client unless the request came from `upstream`
    /// itself (its address and port, or sipadmit's own link to it). A
    /// request toward a client from anywhere else (a connection the
    /// registrar opened, another of its nodes, another client) gets a back
    /// token bound to this branch, so that the answer goes back there.
    fn add_via(
        &self,
        view: &SipView,
        routing: &Routing<'_>,
        hop: &NextHop<'_>,
        branch: super::Branch,
        inbound_flow: &Flow,
        edits: &mut Edits,
    ) {
        let token = match &routing.toward {
            None => Some((FLOW_PARAM, self.signer().encode(Purpose::Via, inbound_flow))),
            // RFC 3261 18.2.2: the response goes back where the request
            // came from; from `upstream` itself, upstream it goes anyway.
            Some(_) if self.is_upstream_itself(inbound_flow) => None,
            Some(_) => {
                // The client id is of no use on the way back.
                let back = Flow {
                    client: String::new(),
                    ..inbound_flow.clone()
                };
                let token = self
                    .signer()
                    .encode_bound(Purpose::ViaBack, &back, &branch.binding());
                Some((BACK_PARAM, token))
            }
        };
        edits.insert_fmt(
            before_first(view, HeaderName::Via),
            format_args!(
                "Via: SIP/2.0/{} {};branch={branch}{}\r\n",
                hop.transport.via_name(),
                hop.own.sent_by(),
                ViaTokenParam(token.as_ref().map(|(param, token)| (*param, token)))
            ),
        );
    }

    /// Path on REGISTER (RFC 3327) and Record-Route on dialog-creating
    /// requests name the client flow, so requests from the registrar side
    /// come back through this proxy to that flow. Record-Route also carries
    /// the From-tag of the dialog's initiator (`ftag`), which tells the two
    /// directions of later requests apart. Both name the listener by what
    /// it advertises (`proxy.advertise`), else by its address.
    fn add_path_or_record_route(
        &self,
        ctx: &RequestCtx<'_>,
        routing: &Routing<'_>,
        hop: &NextHop<'_>,
        inbound_flow: &Flow,
        edits: &mut Edits,
    ) {
        let (view, inb) = (ctx.view, ctx.inbound);
        let in_dialog = ctx.in_dialog();
        if ctx.method == Method::Register && routing.toward.is_none() {
            let token = self.signer().encode(Purpose::Path, inbound_flow);
            // RFC 5626 5.1: the first hop of an outbound client says that
            // it keeps the flow (it answers the client's keep-alives).
            let ob = if asks_for_outbound(view) { ";ob" } else { "" };
            edits.insert_fmt(
                after_vias(view, HeaderName::Path),
                format_args!(
                    "Path: <{}{token}@{}{};lr{ob}>\r\n",
                    Scheme {
                        sips: hop.sips,
                        transport: hop.transport
                    },
                    hop.own.uri_host(),
                    TransportParam {
                        sips: hop.sips,
                        transport: hop.transport
                    },
                ),
            );
            self.expect_registration(ctx, inbound_flow);
        } else if !in_dialog && is_dialog_creating(view) {
            let (purpose, flow) = match &routing.toward {
                None => (Purpose::DialogFromClient, inbound_flow),
                Some(flow) => (Purpose::DialogFromUpstream, flow),
            };
            let signer = self.signer();
            let token = signer.encode(purpose, flow);
            let binding =
                signer.dialog_binding(token.as_bytes(), view.call_id().unwrap_or_default());
            let ftag = FtagParam(view.from().ok().and_then(|f| f.tag()));
            // RFC 5658: when the request leaves on another transport or
            // address than it came in on, one value per side: the outbound
            // side on top (the next hop's way back), then the inbound side.
            // Inserts at one offset keep their order.
            let at = after_vias(view, HeaderName::RecordRoute);
            let mut line = |transport: Transport, host: &dyn std::fmt::Display| {
                edits.insert_fmt(
                    at,
                    format_args!(
                        "Record-Route: <{}{token}@{host}{};lr{ftag};{}={binding}>\r\n",
                        Scheme {
                            sips: hop.sips,
                            transport
                        },
                        TransportParam {
                            sips: hop.sips,
                            transport
                        },
                        super::flow::DIALOG_PARAM,
                    ),
                );
            };
            line(hop.transport, &hop.own.uri_host());
            if (inb.transport, inb.local.0) != (hop.transport, hop.own.addr) {
                match self.listener_at(inb.transport, inb.local.0) {
                    Some(listener) => line(inb.transport, &listener.uri_host()),
                    None => line(inb.transport, &inb.local),
                }
            }
        }
    }

    // === registrations ===

    /// Note the contacts of a REGISTER being relayed upstream from `flow`.
    fn expect_registration(&self, ctx: &RequestCtx<'_>, flow: &Flow) {
        let view = ctx.view;
        let (Some(call_id), Ok(cseq)) = (view.call_id(), view.cseq()) else {
            return;
        };
        let contacts = view
            .contacts()
            .filter_map(Result::ok)
            .map(|c| c.uri)
            .filter(|uri| *uri != b"*");
        let expected = self
            .registrations
            .expect(call_id, cseq.number, flow, contacts, ctx.now);
        self.contacts_not_learned(ctx.inbound.source.0, call_id, expected.ignored, ctx.now);
        self.registrations_evicted(expected.evicted, ctx.now);
    }
}

/// The contacts of a REGISTER: at most `cap` (counted up to one past it:
/// a REGISTER of thousands costs no more than one just over it), and each
/// a URI this proxy would accept as the Request-URI of a request to it: a binding that every call would find malformed (an
/// IPv6 zone id, `[fe80::1%eth0]`, which SIP URIs do not have) is refused
/// now, `400 Malformed Contact header`, not answered `200` and then
/// unreachable.
fn check_contacts(view: &SipView, cap: usize) -> Result<(), Refusal<'static>> {
    let mut named = 0;
    for contact in view.contacts() {
        if let Ok(contact) = &contact {
            if contact.uri == b"*" {
                continue;
            }
            if check_request_uri(contact.uri).is_err() {
                return Err(Refusal::Malformed(SipError::MalformedHeader(
                    HeaderName::Contact,
                )));
            }
        }
        named += 1;
        if named > cap {
            return Err(Refusal::TooManyContacts);
        }
    }
    Ok(())
}

impl<'c> Subject<'c> {
    /// The sender itself, as classified.
    pub(super) fn sender(sender: &Classification<'c>) -> Self {
        Self {
            client: sender.client,
            rule: Cow::Borrowed(sender.rule),
        }
    }
}

/// This proxy's Route values at the top of a request.
#[derive(Debug)]
struct OwnRoute<'m> {
    /// The flow token in the top value's user part, if it has one.
    token: Option<(Purpose, Flow)>,
    /// That token as written (empty without one).
    token_text: &'m [u8],
    /// The top value's dialog binding ([`super::flow::DIALOG_PARAM`]), if any.
    dialog_binding: Option<&'m [u8]>,
    /// `ftag` of a Record-Route: the From-tag of the dialog's initiator.
    ftag: Option<&'m [u8]>,
    /// The Route URI that decides (the token's, else the top one; it tells
    /// the passes of a spiral apart).
    value: &'m [u8],
    /// How many Route values are this proxy's: 1, or 2 for the two values
    /// of an RFC 5658 double Record-Route (the same token), one more for a
    /// plain value of this proxy before them.
    values: usize,
}

impl OwnRoute<'_> {
    /// The client flow the request goes to, or `None` when it goes upstream.
    fn toward_client(&self, view: &SipView) -> Option<&Flow> {
        let (purpose, flow) = self.token.as_ref()?;
        let from_tag = view.from().ok().and_then(|f| f.tag());
        let from_initiator = ftag_names(self.ftag, from_tag);
        let to_client = match purpose {
            Purpose::Path => true,
            Purpose::DialogFromClient => !from_initiator,
            Purpose::DialogFromUpstream => from_initiator,
            Purpose::Via | Purpose::ViaBack => false,
        };
        to_client.then_some(flow)
    }
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

/// Where a relayed request leaves, as the `relay` phase found it.
struct NextHop<'s> {
    /// The transport it leaves on.
    transport: Transport,
    /// The next hop's address (a client flow's peer, or the registrar).
    ip: std::net::IpAddr,
    /// This proxy's listener on that transport, facing that hop.
    own: &'s Listening,
    /// The request is for a `sips:` URI: the URIs this proxy adds for it
    /// are `sips:` too (RFC 3261 16.6 step 4).
    sips: bool,
}

/// RFC 3261 17.1: a client on a stream never retransmits, so a request
/// that leaves over UDP is retransmitted by this proxy until answered,
/// under this key (our branch and the CSeq method); `None` otherwise (and
/// for an ACK, never a transaction of its own, and for Lync's BENOTIFY, a
/// NOTIFY that is never answered ([MS-SIP] 3.5, Best Effort NOTIFY):
/// resent, it would reach its peer again and again and end in a `408` to
/// its sender).
fn retransmit_key(
    ctx: &RequestCtx<'_>,
    hop: &NextHop<'_>,
    branch: super::Branch,
) -> Option<TransactionKey> {
    if !ctx.inbound.transport.is_stream() || hop.transport != Transport::Udp {
        return None;
    }
    let method = ctx.view.cseq().ok()?.method;
    if method == b"BENOTIFY" {
        return None;
    }
    Some(TransactionKey {
        branch: (branch.transaction, branch.loop_mark),
        method: TransactionMethod::of(method)?,
    })
}

/// The rule of the `200` to a CANCEL of an INVITE this proxy answered, in
/// `sipadmit_protocol_answers_total` (not recorded).
pub const CANCEL_ANSWERED_RULE: &str = "proxy.cancel-answered";

/// The INVITE transaction an ACK from a stream client to a UDP hop may
/// acknowledge: the ACK of a non-2xx has its INVITE's branch (RFC 3261
/// 17.1.1.3), and this proxy's branch for it is the INVITE's too.
fn acknowledged_invite(
    ctx: &RequestCtx<'_>,
    hop: &NextHop<'_>,
    branch: super::Branch,
) -> Option<TransactionKey> {
    (ctx.method == Method::Ack
        && ctx.inbound.transport.is_stream()
        && hop.transport == Transport::Udp)
        .then_some(TransactionKey {
            branch: (branch.transaction, branch.loop_mark),
            method: TransactionMethod::Invite,
        })
}

/// Whether a REGISTER asks for outbound, with this proxy its first hop
/// (RFC 5626 5.1): a Contact with a `reg-id`, and no Via but the client's.
fn asks_for_outbound(view: &SipView) -> bool {
    // A glance for `reg-id` at each `-` first: most REGISTERs have none,
    // and are not parsed again for it.
    let mentions_reg_id = |value: &[u8]| {
        memchr::memchr_iter(b'-', value).any(|i| {
            i >= 3
                && value
                    .get(i - 3..i + 3)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"reg-id"))
        })
    };
    view.values(HeaderName::Via).nth(1).is_none()
        && view.headers(HeaderName::Contact).any(mentions_reg_id)
        && view.contacts().filter_map(Result::ok).any(|contact| {
            contact
                .params
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(b"reg-id"))
        })
}

/// RFC 3261 16.6 step 3: Max-Forwards one less, or added when absent
/// (with 70, as the step recommends).
fn decrement_max_forwards(view: &SipView, edits: &mut Edits) {
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
            edits.replace_fmt(
                h.value_span.range(),
                format_args!("{}", n.saturating_sub(1)),
            );
        }
        None => {
            edits.insert_fmt(
                view.headers_end(),
                format_args!("Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\n"),
            );
        }
    }
}

/// The flag header is sipadmit's alone: whatever came in under its name
/// (forged by a client, or left by an earlier leg) goes; a flagged request
/// gets sipadmit's own.
fn flag_edits(ctx: &RequestCtx<'_>, admission: &Admission<'_>, edits: &mut Edits) {
    let view = ctx.view;
    let flag_header = ctx.runtime.config.flag_header.as_str();
    remove_named(view, flag_header, edits);
    let decision = admission.decision;
    if let Verdict::Flag { would_reject } = decision.verdict {
        edits.insert_fmt(
            view.headers_end(),
            format_args!(
                "{flag_header}: flagged; client={}; reason={}{}\r\n",
                admission.subject.client.id,
                decision.rule,
                if would_reject { "; would-reject" } else { "" }
            ),
        );
    }
}

/// The largest UDP payload toward `ip`: 65,535 bytes less the IP and UDP
/// headers (65,507 over IPv4; 65,527 over IPv6, without jumbograms).
fn max_udp_payload(ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(_) => 65_535 - 20 - 8,
        std::net::IpAddr::V6(_) => 65_535 - 8,
    }
}

/// The token parameter of the proxy's Via, `;sipadmit-flow=TOKEN` or
/// `;sipadmit-back=TOKEN`, when there is a token (written nothing
/// otherwise).
struct ViaTokenParam<'a>(Option<(&'static str, &'a super::flow::Token)>);

impl std::fmt::Display for ViaTokenParam<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((param, token)) => write!(f, ";{param}={token}"),
            None => Ok(()),
        }
    }
}

/// Whether the request is for a `sips:` URI: its Request-URI, or the first
/// Route value that is not this proxy's (RFC 3261 16.6 step 4).
fn is_sips_request(view: &SipView, routing: &Routing<'_>) -> bool {
    let own_values = routing.own_route.as_ref().map_or(0, |r| r.values);
    let next_route = view.routes().nth(own_values).and_then(Result::ok);
    view.request_uri()
        .into_iter()
        .chain(next_route.map(|r| r.uri))
        .any(|uri| uri.len() >= 5 && uri[..5].eq_ignore_ascii_case(b"sips:"))
}

/// The scheme of a URI this proxy names itself by: `sips:` for a `sips:`
/// request over TLS (RFC 3261 16.6 step 4), else `sip:`. A side of a
/// `sips:` request that is not TLS (a client that sent one over another
/// transport) can only be reached by `sip:`.
struct Scheme {
    /// The request is for a `sips:` URI.
    sips: bool,
    /// The transport of the side the URI names.
    transport: Transport,
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sips && self.transport == Transport::Tls {
            "sips:"
        } else {
            "sip:"
        })
    }
}

/// The `;transport=` parameter of such a URI; none on a `sips:` one (RFC
/// 5630 3.1.3: `transport=tls` is deprecated; `sips:` says TLS over TCP).
struct TransportParam {
    /// The request is for a `sips:` URI.
    sips: bool,
    /// The transport of the side the URI names.
    transport: Transport,
}

impl std::fmt::Display for TransportParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sips && self.transport == Transport::Tls {
            Ok(())
        } else {
            write!(f, ";transport={}", self.transport.as_str())
        }
    }
}

/// `;ftag=` with the initiator's From-tag, %-escaped where a tag's
/// characters are not a URI parameter's (`%` and `` ` ``); nothing when
/// the From has no tag (an RFC 2543 client).
struct FtagParam<'a>(Option<&'a [u8]>);

impl std::fmt::Display for FtagParam<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(tag) = self.0.filter(|t| !t.is_empty()) else {
            return Ok(());
        };
        f.write_str(";ftag=")?;
        for piece in escaped_ftag(tag) {
            f.write_str(piece)?;
        }
        Ok(())
    }
}

/// A From-tag as `ftag` carries it, piece by piece. Tags are tokens
/// (checked with the view), so every other byte is ASCII and stands as is.
fn escaped_ftag(tag: &[u8]) -> impl Iterator<Item = &str> {
    tag.iter().map(|b| match b {
        b'%' => "%25",
        b'`' => "%60",
        _ => std::str::from_utf8(std::slice::from_ref(b)).unwrap_or("%3F"),
    })
}

/// Whether a Route's `ftag` names `from_tag`: both absent (or empty), or
/// the tag itself once its escapes are decoded (however the route set was
/// written back: `%25` or `%60` in either case, or not escaped at all).
fn ftag_names(ftag: Option<&[u8]>, from_tag: Option<&[u8]>) -> bool {
    match (
        ftag.filter(|t| !t.is_empty()),
        from_tag.filter(|t| !t.is_empty()),
    ) {
        (None, None) => true,
        (Some(ftag), Some(tag)) => percent_decoded(ftag).eq(tag.iter().copied()),
        _ => false,
    }
}

/// Requests that create dialogs and so get a Record-Route (RFC 3261 16.6 step 4).
fn is_dialog_creating(view: &SipView) -> bool {
    matches!(view.method(), Some(Method::Invite))
        || matches!(view.method_bytes(), Some(b"SUBSCRIBE" | b"REFER"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftag_names_the_tag_however_its_escapes_were_written_back() {
        let tag = Some(&b"50%off`x"[..]);
        for ftag in [&b"50%25off%60x"[..], b"50%off%60x", b"50%off`x"] {
            assert!(
                ftag_names(Some(ftag), tag),
                "{}",
                String::from_utf8_lossy(ftag)
            );
        }
        assert!(!ftag_names(Some(b"50%25off"), tag));
        assert!(ftag_names(None, None) && ftag_names(Some(b""), None));
        assert!(!ftag_names(None, tag) && !ftag_names(Some(b"x"), None));
        let written = FtagParam(tag).to_string();
        assert_eq!(written, ";ftag=50%25off%60x");
        assert_eq!(FtagParam(Some(b"")).to_string(), "");
    }
}
