//! The response path (RFC 3261 16.7, stateless): a response whose top Via
//! is this proxy's loses that Via and goes to the flow named by the token
//! in it (only the registrar answers requests sent upstream with one); a
//! client's response to a request relayed toward it goes back to the flow
//! its `sipadmit-back` token names (where the request came from), else
//! upstream.
//! Foreign, malformed or undeliverable responses are discarded and counted;
//! nothing here is ever answered.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::client_transactions::{Answered, TransactionKey, TransactionMethod};
use super::flow::{Flow, Purpose};
use super::registrations::RegisterAnswer;
use super::{
    Branch, Core, Destination, Inbound, OpenConnection, Outbound, Outcome, BACK_PARAM, FLOW_PARAM,
    PROBE_BRANCH_PREFIX,
};
use crate::observe::metrics::{DropReason, Metrics};
use crate::sip::edit::{first_value, Edits};
use crate::sip::{HeaderName, SipError, SipView};

/// The response without its top Via (this proxy's), with a
/// Content-Length when it had none; `None` when it has no Via.
fn without_top_via(view: &SipView) -> Option<bytes::Bytes> {
    let (_, removal) = first_value(view, HeaderName::Via)?;
    let mut edits = Edits::new();
    edits.remove(removal);
    if view.content_length().is_none() {
        edits.insert_fmt(
            view.headers_end(),
            format_args!("Content-Length: {}\r\n", view.body().len()),
        );
    }
    Some(edits.apply(view.raw()))
}

/// Whether `view` is a 2xx response to an INVITE.
fn is_2xx_to_invite(view: &SipView) -> bool {
    view.status().is_some_and(|s| (200..300).contains(&s))
        && view.cseq().is_ok_and(|c| c.method == b"INVITE")
}

/// Registration expiry when neither the Contact nor Expires says (RFC 3261 10.2.1.1).
const DEFAULT_EXPIRES_SECS: u64 = 3600;
/// Longest registration the table keeps, whatever the registrar granted (2^31 - 1 s).
const MAX_EXPIRES_SECS: u64 = (1 << 31) - 1;

impl Core {
    /// Relay a response back along its Via.
    pub(super) fn response(
        &self,
        inb: &Inbound,
        view: &SipView,
        now: Instant,
        open: OpenConnection<'_>,
    ) -> Outcome {
        let discard = |reason: DropReason| {
            self.metrics.count_drop(reason);
            Outcome::drop(reason)
        };
        if inb.bytes.len() > self.settings.limits.max_message_bytes {
            warn!(source = %inb.source, bytes = inb.bytes.len(), "response over limits.max_message_bytes dropped");
            return discard(DropReason::Malformed);
        }
        if let Err(e) = view.check_for_transport(inb.transport.is_stream()) {
            self.malformed_response(inb, view, e, now);
            return discard(DropReason::MalformedResponse);
        }
        if let Some(outcome) = self.after_a_final_answer(inb, view, now) {
            // A callee's answer consumed here (a TCP/TLS registrar's call
            // over UDP, rung out) still ends the wait for it.
            if let Some(next_via) = view.values(HeaderName::Via).nth(1) {
                self.callee_answered(view, next_via, now);
            }
            return outcome;
        }
        let Ok(via) = view.top_via() else {
            return discard(DropReason::MalformedResponse);
        };
        if !self.is_own(&via) {
            debug!(source = %inb.source, "response not addressed to this proxy discarded");
            return discard(DropReason::ForeignResponse);
        }
        if let Some(consumed) = self.probe_answered(inb, &via, view) {
            return consumed;
        }
        // The back token of a request relayed toward a client, if any.
        let back = via.params.get(BACK_PARAM.as_bytes());
        let destination = match self.response_destination(inb, &via, back, open, now) {
            Ok(destination) => destination,
            Err(reason) => return discard(reason),
        };
        let Some(next_via) = view.values(HeaderName::Via).nth(1) else {
            return self.with_only_our_via(inb, view);
        };
        if back.is_none() && self.answers_nothing_sent(inb, &destination, now) {
            return discard(DropReason::ForeignResponse);
        }
        // A callee's answer to a request the registrar sent it: one with
        // a back token, or with no token at all (from the registrar
        // itself, the request's Via had none).
        if back.is_some() || destination == Destination::Upstream {
            self.callee_answered(view, next_via, now);
        }
        if let (Destination::Flow(flow), None) = (&destination, back) {
            let writable = self.check_flow(flow, open);
            self.settle_registration(view, flow, writable.is_ok(), now);
            if matches!(view.status(), Some(401 | 407)) {
                self.transactions.note_challenge(view, flow.peer, now);
            }
            if let Err(failure) = writable {
                debug!(source = %inb.source, peer = %flow.peer, reason = failure.as_str(), "response for a flow this instance cannot write to dropped");
                return discard(DropReason::FlowGone);
            }
        }
        let Some(bytes) = without_top_via(view) else {
            return discard(DropReason::MalformedResponse);
        };
        Outcome::send(Outbound {
            to: destination,
            bytes,
        })
    }

    /// The registrar's answer to this proxy's own OPTIONS probe (top Via
    /// `via`): its arrival is what the probe is for (`/readyz`), so it is
    /// consumed, nothing to relay.
    fn probe_answered(
        &self,
        inb: &Inbound,
        via: &crate::sip::Via<'_>,
        view: &SipView,
    ) -> Option<Outcome> {
        let probe = via
            .branch()
            .is_some_and(|b| b.starts_with(PROBE_BRANCH_PREFIX.as_bytes()));
        if !(inb.from_registrar() && probe) {
            return None;
        }
        Metrics::inc(&self.metrics.upstream_probe_answers);
        debug!(source = %inb.source, status = view.status(), "the registrar answered the OPTIONS probe");
        Some(Outcome::Consumed)
    }

    /// A malformed response, about to be dropped: not relayed, so it
    /// answers no client transaction either (one kept for a stream client
    /// goes on to its 408). The registrar's is worth a warning
    /// (rate-limited): all its clients wait.
    fn malformed_response(&self, inb: &Inbound, view: &SipView, e: SipError, now: Instant) {
        let warning = inb.from_registrar().then(|| {
            super::lock(&self.warnings.registrar_responses).admit(now, super::WARNING_INTERVAL)
        });
        match warning.flatten() {
            Some(held_back) => {
                warn!(source = %inb.source, error = %e, status = view.status(), warnings_held_back = held_back, "malformed response from the registrar dropped (RFC 3261: nothing malformed is relayed)")
            }
            None => debug!(source = %inb.source, error = %e, "malformed response dropped"),
        }
    }

    /// What becomes of a response that comes after its client
    /// transaction's final answer (a `408` of sipadmit's, or the final
    /// response relayed already), if it does: after a final response only
    /// a 2xx to an INVITE goes on (RFC 3261 16.7 step 5); the rest is
    /// dropped, but a copy of a non-2xx to an INVITE that was acknowledged
    /// sends that ACK again (RFC 3261 17.1.1.2).
    fn after_a_final_answer(&self, inb: &Inbound, view: &SipView, now: Instant) -> Option<Outcome> {
        let (reason, what) = match self.answer_client_transaction(inb, view, now) {
            Answered::AckAgain(ack) => {
                Metrics::inc(&self.metrics.client_retransmissions);
                debug!(source = %inb.source, status = view.status(), call_id = %super::Text(view.call_id()), "copy of a final response acknowledged already: its ACK sent again");
                return Some(Outcome::send(ack));
            }
            Answered::Own => {
                Metrics::inc(&self.metrics.upstream_cancel_answers);
                debug!(source = %inb.source, status = view.status(), call_id = %super::Text(view.call_id()), "the answer to a CANCEL of sipadmit's own (Timer C, or a drain's end) consumed");
                return Some(Outcome::Consumed);
            }
            Answered::RungOut(invite) => {
                if let Some(ack) = Self::ack_of_rung_out(&invite, view) {
                    Metrics::inc(&self.metrics.upstream_cancel_answers);
                    debug!(source = %inb.source, status = view.status(), call_id = %super::Text(view.call_id()), "the final answer to a call that rang through Timer C acknowledged");
                    return Some(Outcome::send(ack));
                }
                (
                    DropReason::AfterTimeout,
                    "response to a request answered 408 already discarded",
                )
            }
            Answered::AfterTimeout => (
                DropReason::AfterTimeout,
                "response to a request answered 408 already discarded",
            ),
            Answered::AfterFinal => (
                DropReason::AfterFinal,
                "copy of a final response relayed already discarded",
            ),
            Answered::RingsWithoutTimerC => {
                self.untracked(now, "client transaction table full: a call from a TCP/TLS client rings without Timer C (a registrar that dies while it rings leaves the caller waiting)");
                return None;
            }
            Answered::Kept | Answered::Unknown => return None,
        };
        if is_2xx_to_invite(view) {
            return None;
        }
        debug!(source = %inb.source, status = view.status(), call_id = %super::Text(view.call_id()), "{what}");
        self.metrics.count_drop(reason);
        Some(Outcome::drop(reason))
    }

    /// The ACK of `response`, a non-2xx final answer to `invite` (as
    /// relayed, a call rung out by Timer C), to where the INVITE went.
    fn ack_of_rung_out(invite: &Outbound, response: &SipView) -> Option<Outbound> {
        let relayed = SipView::parse(invite.bytes.clone()).ok()?;
        let bytes = crate::sip::of_invite::ack(&relayed, response)?;
        Some(Outbound {
            to: invite.to.clone(),
            bytes,
        })
    }

    /// A client's answer to a request relayed toward it (whose Via,
    /// `next_via`, is under this proxy's): an INVITE's is what
    /// [`super::toward_clients`] awaits.
    fn callee_answered(&self, view: &SipView, next_via: &[u8], now: Instant) {
        if !view.cseq().is_ok_and(|c| c.method == b"INVITE") {
            return;
        }
        let via = crate::sip::Via::parse(next_via).ok();
        if let (Some(branch), Some(status)) = (via.as_ref().and_then(|v| v.branch()), view.status())
        {
            self.toward_clients.answered(branch, status, now);
        }
    }

    /// A response whose only Via is ours: the registrar's answer to a
    /// CANCEL this proxy sent at a drain's end (see `crate::drain`),
    /// consumed; else nothing is left to send it to (RFC 3261 16.7 step
    /// 3): discarded.
    fn with_only_our_via(&self, inb: &Inbound, view: &SipView) -> Outcome {
        if inb.from_registrar() && view.cseq().is_ok_and(|c| c.method == b"CANCEL") {
            Metrics::inc(&self.metrics.upstream_cancel_answers);
            debug!(source = %inb.source, status = view.status(), "the registrar answered a CANCEL sent at the drain's end");
            return Outcome::Consumed;
        }
        debug!(source = %inb.source, "response with only our Via discarded");
        self.metrics.count_drop(DropReason::ForeignResponse);
        Outcome::drop(DropReason::ForeignResponse)
    }

    /// Where a response whose top Via is ours goes: the flow named by the
    /// token in that Via (only the registrar answers requests sent upstream
    /// with one); for a response to a request relayed toward a client, the
    /// flow its back token names while this instance can write to it (RFC
    /// 3261 18.2.2: where the request came from), else upstream as a
    /// response without one (that connection gone: the registrar relays or
    /// discards it). `Err`: why it is dropped: a bad flow token, or a flow
    /// token not from the registrar.
    fn response_destination(
        &self,
        inb: &Inbound,
        via: &crate::sip::Via<'_>,
        back: Option<Option<&[u8]>>,
        open: OpenConnection<'_>,
        now: Instant,
    ) -> Result<Destination, DropReason> {
        // From whoever answers: it can only send the response where the
        // request came from, or upstream.
        if let Some(Some(token)) = back {
            // Bound to the branch it was made for: the responses of that
            // transaction alone.
            let binding = via.branch().and_then(Branch::parse).map(|b| b.binding());
            let decoded = binding.map(|b| self.decode_bound_token(token, &b));
            return Ok(match decoded {
                Some(Ok((Purpose::ViaBack, flow))) => match self.check_flow(&flow, open) {
                    Ok(()) => Destination::Flow(flow),
                    Err(failure) => {
                        debug!(source = %inb.source, peer = %flow.peer, reason = failure.as_str(), "the connection a request toward a client came on is gone: its response goes upstream");
                        Destination::Upstream
                    }
                },
                _ => {
                    Metrics::inc(&self.metrics.bad_back_tokens);
                    if let Some(held_back) =
                        super::lock(&self.warnings.back_tokens).admit(now, super::WARNING_INTERVAL)
                    {
                        warn!(source = %inb.source, warnings_held_back = held_back, "response with a bad back token sent upstream");
                    }
                    Destination::Upstream
                }
            });
        }
        match via.params.get(FLOW_PARAM.as_bytes()) {
            Some(Some(token)) if inb.from_registrar() => match self.decode_token(token) {
                Ok((Purpose::Via, flow)) => Ok(Destination::Flow(flow)),
                Ok(_) | Err(_) => {
                    self.bad_response_token(inb, now, "response with a bad flow token discarded");
                    Err(DropReason::ForeignResponse)
                }
            },
            Some(_) => {
                self.bad_response_token(
                    inb,
                    now,
                    "flow-token response not from the registrar discarded",
                );
                Err(DropReason::ForeignResponse)
            }
            None => Ok(Destination::Upstream),
        }
    }

    /// Whether a response on our Via without a back token, going
    /// `destination`, is the registrar's with no flow token either: what
    /// this proxy sends upstream always carries one (and its own requests
    /// are answered before), so it answers nothing sent. Sent back to the
    /// registrar it would go around, or on to whoever the next Via names
    /// (RFC 3261 18.1.2: discarded, with a rate-limited warning).
    fn answers_nothing_sent(&self, inb: &Inbound, destination: &Destination, now: Instant) -> bool {
        let stray = *destination == Destination::Upstream && inb.from_registrar();
        if stray {
            self.bad_response_token(
                inb,
                now,
                "response from the registrar without a flow token discarded",
            );
        }
        stray
    }

    /// Warn of a response whose token a peer got wrong (rate-limited: a
    /// peer sets these off at will).
    fn bad_response_token(&self, inb: &Inbound, now: Instant, what: &'static str) {
        if let Some(held_back) =
            super::lock(&self.warnings.response_tokens).admit(now, super::WARNING_INTERVAL)
        {
            warn!(source = %inb.source, warnings_held_back = held_back, "{what}");
        }
    }

    /// A response over UDP may answer a client transaction this proxy keeps
    /// for a request that came over a stream (RFC 3261 17.1.3: our branch
    /// in the top Via, and the CSeq method), or one that timed out
    /// ([`Answered::AfterTimeout`]). Matched before its Via is checked as
    /// this proxy's and its destination is found: an answer that cannot be
    /// relayed still shows the request arrived.
    fn answer_client_transaction(&self, inb: &Inbound, view: &SipView, now: Instant) -> Answered {
        if inb.transport.is_stream() || self.client_transactions.is_idle() {
            return Answered::Unknown;
        }
        let Ok(via) = view.top_via() else {
            return Answered::Unknown;
        };
        let branch = via.branch().and_then(Branch::parse);
        let method = TransactionMethod::of_view(view);
        if let (Some(branch), Some(method), Some(status)) = (branch, method, view.status()) {
            if self.is_own(&via) {
                let key = TransactionKey {
                    branch: (branch.transaction, branch.loop_mark),
                    method,
                };
                return self.client_transactions.answered(&key, status, now);
            }
        }
        Answered::Unknown
    }

    /// A final response to a REGISTER relayed from `flow` settles its
    /// pending entry, whatever the status (a 401/407 challenge, any 4xx,
    /// 5xx, 6xx): a 2xx that can be delivered binds the contacts it
    /// granted; anything else binds nothing.
    fn settle_registration(&self, view: &SipView, flow: &Flow, deliverable: bool, now: Instant) {
        let (Some(status), Some(call_id), Ok(cseq)) = (view.status(), view.call_id(), view.cseq())
        else {
            return;
        };
        if status < 200 || cseq.method != b"REGISTER" {
            return;
        }
        let granted: Vec<(&[u8], Duration)>;
        let answer = if (200..300).contains(&status) && deliverable {
            let default = view
                .expires()
                .ok()
                .flatten()
                .map_or(DEFAULT_EXPIRES_SECS, u64::from);
            granted = view
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
                    (c.uri, Duration::from_secs(secs))
                })
                .collect();
            RegisterAnswer::Granted(&granted)
        } else {
            RegisterAnswer::Refused
        };
        let done = self
            .registrations
            .complete(call_id, cseq.number, flow, answer, now);
        debug!(client = %flow.client, status, pending = done.was_pending, stored = done.stored, removed = done.removed, "registration settled");
        self.contacts_not_learned(flow.peer, call_id, done.not_stored, now);
        self.registrations_evicted(done.evicted, now);
    }
}
