//! Every answer the proxy gives a request itself, in one place: each
//! [`Refusal`] maps to its SIP response (status, reason, extra headers),
//! its log line and its decision record (action `reject`, a rule naming the
//! cause such as `proxy.not-found`, the status).
//!
//! A request that cannot be answered (an ACK, or one missing a header a
//! response must copy, RFC 3261 8.2.6) is dropped instead: it is still
//! logged, counted, and recorded with action `drop`.

use std::borrow::Cow;

use tracing::warn;

use super::flow::TokenError;
use super::request::{Admission, RequestCtx};
use super::{Core, Outcome, Subject, Text};
use crate::classify::ClientProduct;
use crate::observe::decision_log::DecisionRecord;
use crate::observe::metrics::{DropReason, Metrics};
use crate::observe::summary::SUMMARY_WINDOW;
use crate::policy::{Action, Reply, SessionRole};
use crate::sip::{response, HeaderName, Method, SipError, SipView};
use crate::transport::Transport;

/// The Warning of [`Refusal::SipsWithoutTls`] (RFC 5630 warn-code 380).
const SIPS_NOT_ALLOWED: &str = "380 sipadmit \"SIPS Not Allowed\"";

/// Why a stream flow cannot be written to (RFC 5626 `430 Flow Failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFailure {
    /// The flow belongs to another instance, or to this one before a
    /// restart: its boot id is not this instance's.
    OtherInstance,
    /// The connection is closed, or now open to another peer.
    Closed,
}

impl FlowFailure {
    /// What a log line says about it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtherInstance => "flow of another instance or an earlier run",
            Self::Closed => "connection closed or now to another peer",
        }
    }
}

/// A request the proxy answers itself instead of relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'p> {
    /// It fails validation: 400 (505 for a wrong SIP version), the
    /// reason phrase says why.
    Malformed(SipError),
    /// Over `limits.max_message_bytes`: 513.
    TooLarge,
    /// More header lines than `limits.max_headers`: 400.
    TooManyHeaders,
    /// A REGISTER naming more contacts than
    /// `limits.max_contacts_per_register`: 403 `Too Many Contacts` (final:
    /// retrying the same REGISTER cannot help; Lync and softphones register
    /// one contact per device).
    TooManyContacts,
    /// Max-Forwards is 0: 483 (RFC 3261 16.3 step 2).
    TooManyHops,
    /// Proxy-Require names extensions this proxy does not support: 420
    /// with Unsupported listing them (RFC 3261 16.3 step 5).
    BadExtension,
    /// A Route to this proxy with a token that does not verify: 403
    /// (RFC 5626 5.3).
    InvalidFlowToken(TokenError),
    /// It has been here before on the same route: 482 (RFC 3261 16.3 step 4).
    LoopDetected,
    /// A request from the registrar for a target nobody registered through
    /// this proxy: 404.
    NotFound,
    /// The target stream flow cannot be written to by this instance: 430
    /// (RFC 5626 5.3).
    FlowFailed(FlowFailure),
    /// No listener of the transport the request must leave on: 500.
    NoListener(Transport),
    /// The policy rejects it: the role's configured response.
    Policy {
        /// The response.
        reply: &'p Reply,
        /// The policy rule that decided, e.g. `caller.unsupported`.
        rule: &'static str,
    },
    /// The registrar could not be reached: 503 with Retry-After.
    UpstreamUnavailable,
    /// The queue to a stream registrar is full (the registrar is up, and
    /// does not keep up with a burst): 503 with a short Retry-After.
    UpstreamBusy,
    /// After the proxy's edits, the request no longer fits in one UDP
    /// datagram toward its next hop: 513 (RFC 3261 18.1.1).
    TooLargeForUdp,
    /// Its source is over its rate limit: 503 with Retry-After.
    OverLimit {
        /// Retry-After, seconds.
        retry_after_secs: u32,
    },
    /// Its source is banned (by this request, or for sending a scanner
    /// User-Agent): dropped, never answered; the rule names the ban.
    Banned {
        /// `ban.requests` or `ban.scanner` (a ban earned by connections has no message).
        rule: &'static str,
    },
    /// A `sips:` Request-URI whose next hop is not over TLS (RFC 3261
    /// 26.2.2: a SIPS request travels over TLS on every hop): `480
    /// Temporarily Unavailable` with `Warning: 380 ... "SIPS Not Allowed"`,
    /// the answer RFC 5630 (5.1.1, 5.3) gives when a SIPS target cannot be
    /// reached securely, and on which a UAC must not retry with `sip:`.
    SipsWithoutTls(Transport),
    /// It came over TCP or TLS, left over UDP, and nothing answered it
    /// within 64*T1 though this proxy retransmitted it (RFC 3261 17.1.1.2
    /// Timer B, 17.1.2.2 Timer F): `408 Request Timeout`.
    RequestTimeout,
    /// An INVITE of that kind rang (a provisional response came) through
    /// Timer C (`limits.timer_c_secs`) without another provisional or a
    /// final response; this proxy cancelled it (RFC 3261 16.8): `408
    /// Request Timeout`, recorded with the same rule as
    /// [`Self::RequestTimeout`].
    RangOut,
    /// It was written to a TCP/TLS registrar, which had not answered it when
    /// `limits.drain_secs` ran out (`crate::drain`): `408 Request Timeout`,
    /// recorded with the same rule as [`Self::RequestTimeout`].
    DrainRanOut,
    /// An OPTIONS addressed to sipadmit itself (a load balancer's health
    /// probe) while it is not ready (`super::health`): `503` with a
    /// `Warning` saying why, and `Retry-After` when the registrar is the
    /// reason (draining: none, RFC 3261 21.5.4, so the prober treats this
    /// instance as gone).
    NotReady {
        /// Why, as `/readyz` says it.
        detail: &'p str,
        /// The registrar is the reason.
        upstream: bool,
    },
    /// A new request from a client (outside a dialog: no To tag; not ACK
    /// or CANCEL) while the instance drains: 503 with `Retry-After`
    /// (`limits.drain_secs`: this instance is gone by then) and a Warning,
    /// so the client (RFC 3263 4.3) or a dispatcher tries another instance.
    Draining,
}

impl Refusal<'_> {
    /// The status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(e) => e.status_code(),
            Self::TooLarge => 513,
            Self::TooManyHeaders => 400,
            Self::TooManyContacts => 403,
            Self::TooManyHops => 483,
            Self::BadExtension => 420,
            Self::InvalidFlowToken(_) => 403,
            Self::LoopDetected => 482,
            Self::NotFound => 404,
            Self::FlowFailed(_) => 430,
            Self::NoListener(_) => 500,
            Self::Policy { reply, .. } => reply.status,
            Self::UpstreamUnavailable | Self::UpstreamBusy => 503,
            Self::TooLargeForUdp => 513,
            Self::OverLimit { .. } => 503,
            // Never sent: a ban is not answered.
            Self::Banned { .. } => 403,
            Self::SipsWithoutTls(_) => 480,
            Self::RequestTimeout | Self::RangOut | Self::DrainRanOut => 408,
            Self::NotReady { .. } | Self::Draining => 503,
        }
    }

    /// The reason phrase (empty: the status code's default).
    pub fn reason(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Self::Malformed(e) => return Cow::Owned(e.to_string()),
            Self::TooLarge => "Message Too Large",
            Self::TooManyHeaders => "Too Many Headers",
            Self::TooManyContacts => "Too Many Contacts",
            Self::TooManyHops => "Too Many Hops",
            Self::BadExtension => "Bad Extension",
            Self::InvalidFlowToken(_) => "Invalid Flow Token",
            Self::LoopDetected => "Loop Detected",
            Self::NotFound => "Not Found",
            Self::FlowFailed(_) => "Flow Failed",
            Self::NoListener(_) => "No Listener For Transport",
            Self::Policy { reply, .. } => &reply.reason,
            Self::UpstreamUnavailable | Self::UpstreamBusy => "Service Unavailable",
            Self::TooLargeForUdp => "Message Too Large",
            Self::OverLimit { .. } => "Service Unavailable",
            Self::Banned { .. } => "Banned",
            Self::SipsWithoutTls(_) => "Temporarily Unavailable",
            Self::RequestTimeout | Self::RangOut | Self::DrainRanOut => "Request Timeout",
            Self::NotReady { .. } | Self::Draining => "Service Unavailable",
        })
    }

    /// The rule named in the decision record and the log line.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "proxy.malformed",
            Self::TooLarge => "proxy.too-large",
            Self::TooManyHeaders => "proxy.too-many-headers",
            Self::TooManyContacts => "proxy.too-many-contacts",
            Self::TooManyHops => "proxy.too-many-hops",
            Self::BadExtension => "proxy.bad-extension",
            Self::InvalidFlowToken(_) => "proxy.invalid-flow-token",
            Self::LoopDetected => "proxy.loop-detected",
            Self::NotFound => "proxy.not-found",
            Self::FlowFailed(_) => "proxy.flow-failed",
            Self::NoListener(_) => "proxy.no-listener",
            Self::Policy { rule, .. } => rule,
            Self::UpstreamUnavailable => "proxy.upstream-unavailable",
            Self::UpstreamBusy => "proxy.upstream-busy",
            Self::TooLargeForUdp => "proxy.too-large",
            Self::OverLimit { .. } => "rate_limit.requests",
            Self::Banned { rule } => rule,
            Self::SipsWithoutTls(_) => "proxy.sips-without-tls",
            Self::RequestTimeout | Self::RangOut | Self::DrainRanOut => "proxy.request-timeout",
            Self::NotReady { .. } => super::health::HEALTH_RULE,
            Self::Draining => "proxy.draining",
        }
    }

    /// What the drop is counted as when the request cannot be answered.
    fn drop_reason(&self) -> DropReason {
        match self {
            Self::Malformed(_) | Self::TooLarge | Self::TooManyHeaders => DropReason::Malformed,
            Self::Policy { .. } => DropReason::Policy,
            Self::OverLimit { .. } => DropReason::RateLimited,
            Self::Banned { .. } => DropReason::Banned,
            // An ACK for a registrar that cannot take it.
            Self::UpstreamUnavailable | Self::UpstreamBusy => DropReason::SendFailed,
            _ => DropReason::Unanswerable,
        }
    }

    /// The `sipadmit_parse_errors_total` reason, when the request was
    /// refused as invalid.
    fn parse_error(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(e) => Some(e.label()),
            Self::TooLarge => Some("too_large"),
            Self::TooManyHeaders => Some("too_many_headers"),
            _ => None,
        }
    }

    /// The detail a log line adds, if any.
    fn detail(&self) -> Option<&str> {
        match self {
            Self::FlowFailed(failure) => Some(failure.as_str()),
            Self::InvalidFlowToken(TokenError::Malformed) => Some("malformed token"),
            Self::InvalidFlowToken(TokenError::BadSignature) => Some("signature mismatch"),
            Self::NoListener(transport) | Self::SipsWithoutTls(transport) => {
                Some(transport.as_str())
            }
            Self::TooManyContacts => Some("over limits.max_contacts_per_register"),
            Self::TooLargeForUdp => Some("too large for a UDP datagram after the proxy's headers"),
            Self::OverLimit { .. } => Some("over rate_limit.requests_per_second"),
            Self::RequestTimeout => {
                Some("no response over UDP within 64*T1, retransmissions included")
            }
            Self::RangOut => Some(
                "rang through Timer C (limits.timer_c_secs) without a final response: cancelled",
            ),
            Self::DrainRanOut => {
                Some("no final response from the registrar when limits.drain_secs ran out")
            }
            Self::UpstreamBusy => {
                Some("the queue to the registrar is full (limits.upstream_queue_bytes)")
            }
            Self::NotReady { detail, .. } => Some(detail),
            Self::Draining => Some(DRAINING),
            _ => None,
        }
    }
}

impl Core {
    /// Answer (or drop), log, count and record a refused request.
    /// `admission` is what the admit phase found when it ran; before it, the
    /// record names the sender's classification and no session role.
    pub(super) fn refuse(
        &self,
        ctx: &RequestCtx<'_>,
        admission: Option<&Admission<'_>>,
        refusal: Refusal<'_>,
    ) -> Outcome {
        let (view, inb) = (ctx.view, ctx.inbound);
        let (subject, sender, role) = Self::parties(ctx, admission);
        let subject = &subject;
        let answered = is_formable(view)
            && ctx.method != Method::Ack
            && !matches!(refusal, Refusal::Banned { .. })
            && !matches!(refusal, Refusal::Malformed(e) if e.taints_an_answer());
        if let Some(reason) = refusal.parse_error() {
            self.metrics.count_parse_error(reason);
        }
        self.log_refusal(ctx, &refusal, subject, role, answered);
        let status = refusal.status();
        let action = if answered {
            Action::Reject
        } else {
            Action::Drop
        };
        let record = self.record(
            ctx.runtime,
            inb,
            view,
            subject,
            sender,
            role,
            action,
            refusal.rule(),
            answered.then_some(status),
            // Monitor mode flagged it (enforce would have rejected it)
            // before this refusal came: `report` counts it there too.
            admission.is_some_and(|a| a.decision.verdict.would_reject()),
        );
        if !answered {
            let reason = refusal.drop_reason();
            self.metrics.count_drop(reason);
            return Outcome::Drop {
                reason,
                record: Some(record),
            };
        }
        Outcome::Answer {
            bytes: self.answer(ctx, &refusal, subject),
            record: Some(record),
        }
    }

    /// The response of `refusal` to the request of `ctx`, about `subject`.
    pub(super) fn answer(
        &self,
        ctx: &RequestCtx<'_>,
        refusal: &Refusal<'_>,
        subject: &Subject<'_>,
    ) -> bytes::Bytes {
        let view = ctx.view;
        let extra = self.extra_headers(view, refusal, subject);
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let bytes = response::build(
            view,
            refusal.status(),
            &refusal.reason(),
            &self.local_tag(view),
            &extra,
            ctx.inbound.source.0,
        );
        bytes
    }

    /// The record of a request dropped under `rule` (a policy drop, a
    /// scanner's ban): action `drop`, no status.
    pub(super) fn drop_record(
        &self,
        ctx: &RequestCtx<'_>,
        admission: Option<&Admission<'_>>,
        rule: &'static str,
    ) -> DecisionRecord {
        let (subject, sender, role) = Self::parties(ctx, admission);
        self.record(
            ctx.runtime,
            ctx.inbound,
            ctx.view,
            &subject,
            sender,
            role,
            Action::Drop,
            rule,
            None,
            false,
        )
    }

    /// Whom a refused or dropped request's record names (subject, sender,
    /// role): what the admit phase found when it ran; before it, the
    /// sender's classification and no session role.
    fn parties<'r>(
        ctx: &RequestCtx<'r>,
        admission: Option<&Admission<'r>>,
    ) -> (Subject<'r>, &'r ClientProduct, SessionRole) {
        match admission {
            Some(a) => (a.subject.clone(), a.sender.client, a.role),
            None => {
                let sender = ctx.runtime.config.catalog.classify(ctx.view.user_agent());
                (Subject::sender(&sender), sender.client, SessionRole::None)
            }
        }
    }

    /// Log a refusal: the first few of every 10 s one by one, then one
    /// summary line (a peer sets these off; every one is recorded and
    /// counted).
    fn log_refusal(
        &self,
        ctx: &RequestCtx<'_>,
        refusal: &Refusal<'_>,
        subject: &Subject<'_>,
        role: SessionRole,
        answered: bool,
    ) {
        let (view, inb) = (ctx.view, ctx.inbound);
        let noted = self.summaries.note_refused(inb.source.ip(), ctx.now);
        if let Some(t) = noted.closed.filter(|t| t.events > t.examples) {
            warn!(
                refused = t.events,
                sources = t.sources,
                logged = t.examples,
                window_secs = SUMMARY_WINDOW.as_secs(),
                "requests refused in the last 10 s (the rest were not logged one by one)"
            );
        }
        if noted.example {
            warn!(
                source = %inb.source,
                method = %Text(view.method_bytes()),
                call_id = %Text(view.call_id()),
                // Nothing was sent for one not answered (a ban's drop).
                status = answered.then(|| refusal.status()),
                reason = %refusal.reason(),
                rule = refusal.rule(),
                detail = refusal.detail(),
                client = %subject.client.id,
                role = role.as_str(),
                answered,
                "refused"
            );
        }
    }

    /// The header lines a refusal's answer adds: Unsupported (420), the
    /// policy's Warning and headers, Retry-After (503), the SIPS Warning.
    fn extra_headers(
        &self,
        view: &SipView,
        refusal: &Refusal<'_>,
        subject: &Subject<'_>,
    ) -> Vec<(String, String)> {
        let mut extra: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, value: String| extra.push((name.to_owned(), value));
        match refusal {
            Refusal::BadExtension => {
                let unsupported = view
                    .proxy_require()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ");
                add("Unsupported", unsupported);
            }
            Refusal::Policy { reply, .. } => {
                if let Some(w) = reply.warning_for(&subject.client.name) {
                    add("Warning", w);
                }
                for (name, value) in &reply.headers {
                    add(name, value.clone());
                }
            }
            Refusal::TooManyContacts => Metrics::inc(&self.metrics.too_many_contacts),
            Refusal::UpstreamUnavailable => add(
                "Retry-After",
                self.settings.limits.upstream_retry_after_secs.to_string(),
            ),
            Refusal::UpstreamBusy => add(
                "Retry-After",
                super::UPSTREAM_BUSY_RETRY_AFTER_SECS.to_string(),
            ),
            Refusal::OverLimit { retry_after_secs } => {
                add("Retry-After", retry_after_secs.to_string());
            }
            Refusal::SipsWithoutTls(_) => add("Warning", SIPS_NOT_ALLOWED.to_owned()),
            Refusal::Draining => {
                add("Warning", format!("399 sipadmit \"{DRAINING}\""));
                let secs = self.settings.limits.drain.as_secs().max(1);
                add("Retry-After", secs.to_string());
            }
            Refusal::NotReady { detail, upstream } => {
                add("Warning", format!("399 sipadmit \"{detail}\""));
                if *upstream {
                    add(
                        "Retry-After",
                        self.settings.limits.upstream_retry_after_secs.to_string(),
                    );
                }
            }
            _ => {}
        }
        extra
    }
}

/// Why a draining instance refuses new requests (its Warning and log).
const DRAINING: &str = "draining: this instance is stopping; use another";

/// Whether a response can be formed: it copies Via, From, To, Call-ID and
/// CSeq (RFC 3261 8.2.6); it goes back to the source address, so they only
/// need to be present, even if malformed.
fn is_formable(view: &SipView) -> bool {
    [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ]
    .iter()
    .all(|&h| view.header(h).is_some())
}
