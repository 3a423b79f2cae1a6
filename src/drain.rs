//! Draining: how an instance leaves a pool without costing users anything.
//!
//! The first SIGTERM starts a drain ([`run`]): the core reports itself not
//! ready (`/readyz` and OPTIONS to sipadmit answer 503, so load balancers
//! and dispatchers take it out), clients' new requests are answered 503
//! with Retry-After (rule `proxy.draining`, so they go to another
//! instance), and what is under way keeps flowing: responses, requests in
//! dialogs, requests from the registrar, retransmissions. The instance
//! stops once nothing has been pending for [`QUIET`], or when
//! `limits.drain_secs` runs out. A second SIGTERM, or SIGINT, stops at
//! once.
//!
//! Calls ringing at a TCP/TLS registrar are pending too: the link
//! remembers each INVITE until its final answer. When the drain runs out,
//! the link sends the registrar a CANCEL for each one that may be ringing
//! (RFC 3261 16.8, as Timer C would), relays the callee's `487`, and
//! answers `408` to a caller whose `487` has not come within
//! [`CANCELLED_ANSWERED_WITHIN`]. So are the calls of TCP/TLS clients
//! ringing at a UDP registrar (their client transactions keep each INVITE
//! until its final answer, for Timer C): when the drain runs out, each is
//! cancelled and its caller answered `408` at once, as Timer C would. The
//! registrar's INVITEs relayed toward this instance's clients are pending
//! too, until their final answers (the callee side,
//! [`crate::proxy::toward_clients`]), so a callee's answer finds its
//! connection open; when the drain runs out they are left to the
//! registrar. Not pending, so not waited for: a UDP client's calls ringing
//! at a UDP registrar (relayed without state); see docs/pool.md.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::proxy::Core;
use crate::transport::answers::CANCELLED_ANSWERED_WITHIN;
use crate::transport::connections::Connections;
use crate::transport::upstream::UpstreamBacklog;

/// How long nothing must be pending before a draining instance stops: the
/// answers of requests relayed statelessly (which no table holds) have
/// that long to come back.
pub const QUIET: Duration = Duration::from_secs(1);

/// How often a draining instance looks at what is pending.
const POLL: Duration = Duration::from_millis(100);

/// How often a drain that goes on is logged.
const PROGRESS: Duration = Duration::from_secs(5);

/// At the end of a drain that ran out of time: how long the client
/// transactions given up have to be answered `408` (the first worker's
/// loop looks at their timers at least once a second).
const GIVE_UP: Duration = Duration::from_secs(2);

// A cancelled call's `408` (after CANCELLED_ANSWERED_WITHIN, seen within
// the link's 100 ms look) must go out within GIVE_UP.
const _: () = assert!(GIVE_UP.as_millis() >= CANCELLED_ANSWERED_WITHIN.as_millis() + 500);

/// Then how long those answers have to be written before the connections
/// close.
const FLUSH: Duration = Duration::from_millis(200);

/// The longest a drain lasts beyond `limits.drain_secs`: answering what
/// was given up ([`GIVE_UP`] and [`FLUSH`]). A service manager's stop
/// timeout must outlast both.
pub const BEYOND_THE_LIMIT: Duration = GIVE_UP.saturating_add(FLUSH);

/// What a draining instance still waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    /// Requests from TCP/TLS clients relayed over UDP and not answered
    /// (their client transactions), calls ringing included.
    pub client_transactions: usize,
    /// REGISTERs relayed and awaiting their final response.
    pub registers: usize,
    /// Bytes queued for a stream registrar and not yet written.
    pub upstream_queue_bytes: usize,
    /// Requests written to a stream registrar that has not answered them
    /// yet (calls ringing included).
    pub upstream_unanswered: usize,
    /// The registrar's requests relayed toward this instance's clients
    /// and not answered yet (calls ringing at them included).
    pub toward_clients: usize,
}

impl Pending {
    /// What `core` and the queue to the registrar hold now (REGISTERs
    /// whose answer is overdue are swept first: they are not pending any
    /// more; so are INVITEs toward clients whose connection, in
    /// `connections`, closed).
    pub fn of(
        core: &Core,
        upstream_backlog: Option<&UpstreamBacklog>,
        connections: &Connections,
    ) -> Self {
        core.registrations()
            .expire_pending(std::time::Instant::now());
        Self {
            client_transactions: core.client_transactions().owed(),
            registers: core.registrations().pending(),
            upstream_queue_bytes: upstream_backlog.map_or(0, UpstreamBacklog::queued),
            upstream_unanswered: upstream_backlog.map_or(0, UpstreamBacklog::unanswered),
            toward_clients: core
                .toward_clients()
                .pending(std::time::Instant::now(), &|id, peer| {
                    connections.is_open_to(id, peer)
                }),
        }
    }

    /// Nothing is pending.
    pub fn is_idle(&self) -> bool {
        *self == Self::default()
    }
}

/// Wait for `requested` (the first SIGTERM), then drain `core` for at most
/// `limit` and cancel `shutdown`. Ends at once when `shutdown` comes first.
pub async fn run(
    requested: CancellationToken,
    core: Arc<Core>,
    upstream_backlog: Option<Arc<UpstreamBacklog>>,
    connections: Arc<Connections>,
    limit: Duration,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = requested.cancelled() => {}
    }
    let started = Instant::now();
    let pending = || Pending::of(&core, upstream_backlog.as_deref(), &connections);
    core.start_draining();
    let at_start = pending();
    info!(
        drain_secs = limit.as_secs(),
        client_transactions = at_start.client_transactions,
        registers = at_start.registers,
        upstream_queue_bytes = at_start.upstream_queue_bytes,
        upstream_unanswered = at_start.upstream_unanswered,
        toward_clients = at_start.toward_clients,
        "draining: new requests from clients get 503 with Retry-After; stopping once nothing is pending (a second SIGTERM stops at once)"
    );
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return,
        outcome = settle(started, limit, &pending) => outcome,
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => info!(elapsed_ms, "drained: nothing pending; shutting down"),
        Err(left) => {
            warn!(
                elapsed_ms,
                client_transactions = left.client_transactions,
                registers = left.registers,
                upstream_queue_bytes = left.upstream_queue_bytes,
                upstream_unanswered = left.upstream_unanswered,
                toward_clients = left.toward_clients,
                "limits.drain_secs ran out with work pending; shutting down"
            );
            if left.client_transactions > 0
                || left.upstream_unanswered > 0
                || left.upstream_queue_bytes > 0
            {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = answer_given_up(&core, upstream_backlog.as_deref()) => {}
                }
            }
        }
    }
    shutdown.cancel();
}

/// Give up the client transactions still kept and the requests a stream
/// registrar has not answered, so that each client still waiting is
/// answered `408` (and recorded, rule `proxy.request-timeout`) instead of
/// losing its connection without a final response, and the calls ringing
/// there are cancelled (their callers get the `487`, or `408`); wait
/// (bounded by [`GIVE_UP`]) until they are, then [`FLUSH`].
async fn answer_given_up(core: &Core, upstream: Option<&UpstreamBacklog>) {
    let transactions = core.client_transactions();
    transactions.give_up_all(std::time::Instant::now());
    if let Some(upstream) = upstream {
        upstream.give_up();
    }
    let answered = || {
        transactions.owed() == 0
            && upstream.is_none_or(|u| {
                u.unanswered() == 0 && u.queued() == 0 && u.given_up_unanswered() == 0
            })
    };
    let deadline = Instant::now() + GIVE_UP;
    while !answered() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(FLUSH).await;
}

/// Wait until nothing has been pending for [`QUIET`] (`Ok`), or until
/// `limit` after `started` (`Err` with what was still pending).
async fn settle(
    started: Instant,
    limit: Duration,
    pending: &(dyn Fn() -> Pending + Sync),
) -> Result<(), Pending> {
    let deadline = started + limit;
    let mut idle_since: Option<Instant> = None;
    let mut logged = started;
    let mut poll = tokio::time::interval(POLL);
    loop {
        poll.tick().await;
        let now = Instant::now();
        let left = pending();
        if now >= deadline {
            return if left.is_idle() { Ok(()) } else { Err(left) };
        }
        if !left.is_idle() {
            idle_since = None;
            if now.duration_since(logged) >= PROGRESS {
                logged = now;
                info!(
                    client_transactions = left.client_transactions,
                    registers = left.registers,
                    upstream_queue_bytes = left.upstream_queue_bytes,
                    upstream_unanswered = left.upstream_unanswered,
                    toward_clients = left.toward_clients,
                    "draining: still pending"
                );
            }
            continue;
        }
        let since = *idle_since.get_or_insert(now);
        if now.duration_since(since) >= QUIET {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_a_quiet_second_after_the_last_pending_work() {
        let left = AtomicUsize::new(3);
        let pending = || Pending {
            registers: left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .unwrap_or(0),
            ..Pending::default()
        };
        let started = Instant::now();
        assert_eq!(
            settle(started, Duration::from_secs(30), &pending).await,
            Ok(())
        );
        let took = started.elapsed();
        assert!(took >= QUIET && took < QUIET + 5 * POLL, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_never_settles_ends_at_its_limit_and_says_what_was_left() {
        let pending = || Pending {
            client_transactions: 2,
            ..Pending::default()
        };
        let started = Instant::now();
        let left = settle(started, Duration::from_secs(3), &pending).await;
        assert_eq!(left.unwrap_err().client_transactions, 2);
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    /// At a drain's end the connections stay open until the dispatcher has
    /// sent the `408`s of what the link gave up, not only until the link
    /// has handed them over.
    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_drain_waits_for_the_408s_of_what_was_given_up() {
        let core = Core::detached("").unwrap();
        let backlog = Arc::new(UpstreamBacklog::new(1 << 20));
        // Two handed back by the link (as its give-up does), not answered.
        backlog.handing_back(2);
        let answering = tokio::spawn({
            let backlog = backlog.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                backlog.given_up_answered();
                tokio::time::sleep(Duration::from_millis(700)).await;
                backlog.given_up_answered();
            }
        });
        let started = Instant::now();
        answer_given_up(&core, Some(&backlog)).await;
        let took = started.elapsed();
        assert_eq!(backlog.given_up_unanswered(), 0);
        assert!(
            took >= Duration::from_millis(1400) + FLUSH
                && took < Duration::from_millis(1400) + FLUSH + 2 * POLL,
            "{took:?}"
        );
        answering.await.unwrap();
    }
}
