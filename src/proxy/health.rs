//! Readiness, and the answer to an OPTIONS addressed to sipadmit itself.
//!
//! [`Core::not_ready`] is the one place that says whether this instance
//! should get traffic: not while draining ([`Core::start_draining`]), not
//! without a listener, not while the registrar is unreachable as far as the
//! deliveries and the OPTIONS probes tell. `/readyz` asks it (and, for a
//! stream registrar, also tries a connection); so does the health answer.
//!
//! Load balancers and dispatchers (Kamailio's `dispatcher` with
//! `ds_ping_interval`, OpenSIPS, hardware balancers) probe a SIP server
//! with an OPTIONS addressed to the server itself: a Request-URI naming
//! one of its listener addresses or its advertised name, with no user
//! part (RFC 3261 11). sipadmit answers such a request itself instead of
//! relaying it: `200 OK` when ready, `503 Service Unavailable` (with a
//! `Warning` saying why, and `Retry-After` when the registrar is down) when
//! not. Any other OPTIONS (to a user, to another host) is relayed as
//! before. A scanner's OPTIONS is not answered: it goes through the policy
//! like any other request of a scanner.
//!
//! The `200` is counted (`sipadmit_protocol_answers_total{rule="proxy.health",
//! status="200"}`), not recorded: a balancer probes every few seconds, and a
//! decision record of each would bury the admission decisions. The `503`
//! is recorded (rule `proxy.health`): it is when an instance turns the
//! pool's traffic away.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::info;

use super::listening::uri_parts;
use super::refusal::Refusal;
use super::request::{Halt, RequestCtx};
use super::transactions::Treatment;
use super::Core;
use crate::classify::Support;
use crate::config::Endpoint;
use crate::observe::metrics::UpstreamFailure;
use crate::sip::{Method, SipView};

/// A message not delivered to the registrar (a failed UDP send, a connect
/// of the stream link that failed) makes the instance not ready for this
/// long, 30 s, unless one is delivered meanwhile.
pub const UPSTREAM_FAILURE_WINDOW: Duration = Duration::from_secs(30);

/// The rule of the health answers, in records and in
/// `sipadmit_protocol_answers_total`.
pub const HEALTH_RULE: &str = "proxy.health";

/// Why the instance should not get traffic now.
#[derive(Debug, Clone)]
pub enum NotReady {
    /// It is draining ([`Core::start_draining`]).
    Draining,
    /// No SIP listener is bound.
    NoListener,
    /// A message could not be delivered to the registrar within
    /// [`UPSTREAM_FAILURE_WINDOW`], and none was since.
    UpstreamFailed {
        /// The registrar.
        upstream: Endpoint,
        /// When and why.
        failure: UpstreamFailure,
    },
    /// A UDP registrar sent back an ICMP error, or stayed silent with
    /// requests relayed to it, and has sent nothing since.
    UpstreamUnreachable {
        /// The registrar.
        upstream: Endpoint,
        /// When and why.
        failure: UpstreamFailure,
    },
    /// With probes on, a UDP registrar has not answered one yet.
    UpstreamUnknown {
        /// The registrar.
        upstream: Endpoint,
    },
}

impl NotReady {
    /// Whether the registrar is the reason (a client may retry later: the
    /// answer carries `Retry-After`).
    pub fn is_upstream(&self) -> bool {
        !matches!(self, Self::Draining | Self::NoListener)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Draining => f.write_str("draining"),
            Self::NoListener => f.write_str("no SIP listener is bound"),
            Self::UpstreamFailed { upstream, failure } => write!(
                f,
                "upstream {upstream} not reachable: {} ({} s ago, nothing delivered since)",
                failure.error,
                failure.at.elapsed().as_secs()
            ),
            Self::UpstreamUnreachable { upstream, failure } => write!(
                f,
                "upstream {upstream} not reachable: {} ({} s ago, no message from it since)",
                failure.error,
                failure.at.elapsed().as_secs()
            ),
            Self::UpstreamUnknown { upstream } => write!(
                f,
                "upstream {upstream} unknown: it has not answered sipadmit's OPTIONS probe yet"
            ),
        }
    }
}

impl Core {
    /// Start draining: from now on the instance reports itself not ready
    /// (`/readyz` and the OPTIONS health answer `503`), so balancers take
    /// it out of the pool. It cannot be undone.
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            info!("draining: /readyz and OPTIONS to sipadmit now answer 503");
        }
    }

    /// Whether [`Core::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Why the instance should not get traffic now, or `None` when it is
    /// ready: draining; no listener; a message not delivered to the
    /// registrar in the last [`UPSTREAM_FAILURE_WINDOW`] with none
    /// delivered since (as the dispatcher and the stream upstream's link
    /// report it, TLS handshake failures of a `tls:` upstream included);
    /// for a UDP registrar, an ICMP error for a datagram sent to it or its
    /// silence with requests relayed ([`crate::transport::upstream::SILENCE`]),
    /// until it sends a message again, and with probes on, no message from
    /// it at all yet; for a stream registrar, its silence with clients'
    /// requests relayed (a stalled one), until it sends a message again. Reads a few atomics (and a lock only while the
    /// registrar is failing): cheap enough for every health probe.
    ///
    /// With the probes off (`proxy.upstream_probe_secs = 0`), client
    /// traffic is all that can tell the registrar is back, and a balancer
    /// that took the instance out sends none: an ICMP error or a silence
    /// then makes it not ready for [`UPSTREAM_FAILURE_WINDOW`] after the
    /// last such evidence, not until a message comes.
    pub fn not_ready(&self) -> Option<NotReady> {
        self.not_ready_at(Instant::now())
    }

    /// [`Core::not_ready`] as of `now`.
    pub(crate) fn not_ready_at(&self, now: Instant) -> Option<NotReady> {
        if self.is_draining() {
            return Some(NotReady::Draining);
        }
        if self.listeners.is_empty() {
            return Some(NotReady::NoListener);
        }
        let upstream = self.settings.upstream?;
        let recent = |failure: &UpstreamFailure| {
            now.saturating_duration_since(failure.at) < UPSTREAM_FAILURE_WINDOW
        };
        if let Some(failure) = self.metrics.upstream_failure().filter(recent) {
            return Some(NotReady::UpstreamFailed { upstream, failure });
        }
        // Held until the registrar sends a message, or with the probes off
        // for the window after the last evidence.
        let held =
            |failure: &UpstreamFailure| self.settings.upstream_probe.is_some() || recent(failure);
        if upstream.transport.is_stream() {
            // Connected, but answering nothing (a stalled registrar).
            return self
                .metrics
                .stream_upstream_silent()
                .filter(held)
                .map(|failure| NotReady::UpstreamUnreachable { upstream, failure });
        }
        if let Some(failure) = self.metrics.udp_upstream_unreachable().filter(held) {
            return Some(NotReady::UpstreamUnreachable { upstream, failure });
        }
        if self.settings.upstream_probe.is_some() && !self.metrics.udp_upstream_heard() {
            return Some(NotReady::UpstreamUnknown { upstream });
        }
        None
    }

    /// Whether a request is addressed to this proxy itself: its
    /// Request-URI is a `sip:`/`sips:` URI with no user part naming one of
    /// its listeners (address or advertised name), and every Route value
    /// (loose routing: they are popped) names one of them too, with no
    /// flow token.
    pub(super) fn addressed_to_self(&self, view: &SipView) -> bool {
        let Some((None, host, port)) = view.request_uri().and_then(uri_parts) else {
            return false;
        };
        self.addressed_here(host, port)
            && view.routes().all(|route| {
                route
                    .ok()
                    .and_then(|r| uri_parts(r.uri))
                    .is_some_and(|(user, host, port)| {
                        user.is_none() && self.addressed_here(host, port)
                    })
            })
    }

    /// The health phase: an OPTIONS addressed to this proxy itself (not a
    /// scanner's) is answered here, `200` when ready, else `503` with a
    /// `Warning` naming why (and `Retry-After` when the registrar is the
    /// reason), recorded as a refusal. Anything else goes on.
    pub(super) fn health<'m>(&self, ctx: &RequestCtx<'m>) -> Result<(), Halt<'m>> {
        if ctx.method != Method::Options || !self.addressed_to_self(ctx.view) {
            return Ok(());
        }
        let sender = ctx.runtime.config.catalog.classify(ctx.view.user_agent());
        if sender.client.support == Support::Scanner {
            return Ok(());
        }
        let outcome = match self.not_ready() {
            // Noted, so that a copy over the rate limit is dropped, not
            // answered 503; a copy of one the rate limit answered 503 gets
            // that 503 again.
            None => match self.note_unrecorded(ctx, Treatment::Answered(200), false) {
                Some(copy) => copy,
                None => return Err(Halt::Answer(self.unrecorded_200(ctx, HEALTH_RULE))),
            },
            Some(not_ready) => {
                let detail = warning_text(&not_ready.to_string());
                let refusal = Refusal::NotReady {
                    detail: &detail,
                    upstream: not_ready.is_upstream(),
                };
                self.refuse(ctx, None, refusal)
            }
        };
        Err(Halt::Refused(Box::new(outcome)))
    }
}

/// `text` made fit for a `Warning` quoted string: quotes and backslashes
/// become apostrophes, control characters spaces.
fn warning_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_text_is_a_valid_quoted_string() {
        assert_eq!(
            warning_text("upstream \"x\"\\ down\r\n"),
            "upstream 'x'' down  "
        );
    }
}
