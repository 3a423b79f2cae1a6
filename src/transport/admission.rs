//! Stage 1, admission of sources: per-source rate limits and bans, the
//! sipadmit side of what Kamailio admins get from `pike` + `htable`.
//!
//! A source is an IPv4 address or an IPv6 /64 ([`SourceKey`]). Token
//! buckets (the `governor` crate, keyed) limit each source's SIP messages
//! (`rate_limit.requests_per_second`, `burst`; UDP datagrams and messages
//! over TCP/TLS connections each have that budget, so that datagrams in a
//! forged source's name cannot spend its connections') and new stream connections
//! (`connections_per_second`, bursts up to `max_connections_per_source`);
//! open connections per source are capped (`max_connections_per_source`).
//! A source that stays over its limit (its refused messages or connections
//! are themselves over the same rate: it keeps sending at more than twice
//! what it is allowed), or that sends a scanner User-Agent, is banned for
//! `ban_secs`: everything it sends is dropped before any parsing.
//!
//! Trusted networks (`rate_limit.trusted`, default loopback), the Response
//! Group application (`response_group.application_sources`) and the
//! registrar (`proxy.upstream_sources`; with a TCP or TLS registrar, an
//! `IP:PORT` there on any port: it opens connections of its own) are never
//! limited or banned.
//!
//! A live reload (`SIGHUP`) applies a changed `[rate_limit]` at once
//! ([`Admission::reconfigure`]): new buckets at the new rates (every source
//! starts again with a full bucket), bans in force kept until they run out,
//! open connections still counted; with `ban_secs = 0` the bans in force
//! are lifted, and so is a ban all of whose addresses are now trusted.
//!
//! Memory is bounded: bucket state is kept only while it differs from a
//! full bucket (swept every second, and at once when a table passes
//! [`MAX_TRACKED_SOURCES`]); bans at most [`MAX_BANS`], the oldest evicted
//! first (every ban lasts `ban_secs`, so insertion order is expiry order: a
//! queue, never a scan; after a reload shortened `ban_secs`, a new ban is
//! inserted at its place by a binary search).
//!
//! A freeze of sipadmit itself (a paused VM, SIGSTOP, every event loop
//! held up) leaves what clients sent meanwhile queued in the sockets, read
//! at once when it runs again: charged as it is read, that would be a burst
//! no client sent, refused and banned. Every worker beats once a second
//! ([`Admission::heartbeat`]); no beat from any of them for
//! [`FREEZE_THRESHOLD`] is a freeze of `F` seconds (at most
//! [`MAX_FREEZE`]). A source's messages over its bucket then pass, until
//! [`FREEZE_CATCH_UP`] after the beats come back, as long as it sent no
//! more than `requests_per_second * F` of them ([`FreezeCredit`]): what
//! it could have sent over those seconds; so do its new connections, up to
//! `connections_per_second * F`. One slow worker, with the others beating,
//! is no freeze; a flood gets no more than without the freeze.
//!
//! Ban and unban lines are written for fail2ban (README, Operations):
//! `source banned source=<IP> ...` and `source unbanned source=<IP> ...`.
//! Those of bans that block everything are written one by one; those of
//! datagram-only bans (whose sources may be forged: a flood from forged
//! addresses would write one each) at most once per 10 s each, with how
//! many were not written (every ban is still in the decision log).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tracing::{info, warn};

use super::WarningWindow;
use crate::config::{OverLimit, RateLimit, UpstreamSources};
use crate::observe::metrics::Metrics;
use crate::policy::pattern::Network;

/// Sources tracked per limiter before its idle state is swept at once
/// (besides the sweep every second): about 64 bytes each.
pub const MAX_TRACKED_SOURCES: usize = 200_000;
/// Bans held at most; a new ban beyond this evicts the oldest.
pub const MAX_BANS: usize = 65_536;
/// No housekeeping beat (every worker beats once a second) for this long
/// is a freeze of sipadmit itself.
pub const FREEZE_THRESHOLD: Duration = Duration::from_secs(3);
/// How long after the beats come back a freeze's backlog is credited (it
/// drains in well under a second: a full 4 MiB receive buffer is some
/// thousands of messages).
pub const FREEZE_CATCH_UP: Duration = Duration::from_secs(2);
/// The longest freeze credited: a source is let through at most
/// `requests_per_second` times this many seconds on one.
pub const MAX_FREEZE: Duration = Duration::from_secs(30);
/// Sources credited per freeze at most, for messages and for connections
/// each (the rest are limited as usual).
const MAX_FREEZE_CREDITED_SOURCES: usize = 65_536;

/// The credit of a freeze of sipadmit itself (see the module doc). The
/// beats and the end of the catch-up are atomics (milliseconds since
/// `epoch`): a message over its bucket takes the lock only in a freeze or
/// its catch-up.
#[derive(Debug)]
struct FreezeCredit {
    epoch: Instant,
    /// The latest beat of any worker (0: none yet).
    latest_beat_ms: AtomicU64,
    /// Until when a freeze's backlog is credited.
    catch_up_until_ms: AtomicU64,
    freeze: Mutex<Freeze>,
}

/// The last freeze: its length, the beat before it, and what each source
/// was let through on it.
#[derive(Debug, Default)]
struct Freeze {
    length: Duration,
    /// The last beat before it (`latest_beat_ms`): one freeze per silence.
    after_beat_ms: u64,
    used: HashMap<(SourceKey, Charge), u64>,
}

/// What a source spends a freeze's credit on, each at its own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Charge {
    /// SIP messages in UDP datagrams (`requests_per_second`).
    DatagramMessages,
    /// SIP messages over TCP/TLS connections (`requests_per_second`, a
    /// budget of their own).
    StreamMessages,
    /// New stream connections (`connections_per_second`).
    Connections,
}

impl FreezeCredit {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            latest_beat_ms: AtomicU64::new(0),
            catch_up_until_ms: AtomicU64::new(0),
            freeze: Mutex::new(Freeze::default()),
        }
    }

    /// `at` in milliseconds since the epoch, from 1 (0 stands for none).
    fn ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(since).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Freeze> {
        self.freeze.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A worker's beat at `now`: the length of the freeze it ends, when the
    /// last beat of any worker is [`FREEZE_THRESHOLD`] old or more.
    fn beat(&self, now: Instant) -> Option<Duration> {
        let at = self.ms(now);
        let before = self.latest_beat_ms.fetch_max(at, Ordering::Relaxed);
        let silence = Duration::from_millis(at.saturating_sub(before));
        (before != 0 && silence >= FREEZE_THRESHOLD).then(|| self.seen(before, silence, at))
    }

    /// A freeze since the beat at `before_ms`, `silence` long so far, seen
    /// at `at_ms`: its length, capped at [`MAX_FREEZE`] (one freeze per
    /// silence: its credit is not spent twice), and its catch-up extended.
    fn seen(&self, before_ms: u64, silence: Duration, at_ms: u64) -> Duration {
        let mut freeze = self.lock();
        if freeze.after_beat_ms != before_ms {
            *freeze = Freeze {
                after_beat_ms: before_ms,
                ..Freeze::default()
            };
        }
        freeze.length = freeze.length.max(silence.min(MAX_FREEZE));
        let until = at_ms + u64::try_from(FREEZE_CATCH_UP.as_millis()).unwrap_or(u64::MAX);
        self.catch_up_until_ms.fetch_max(until, Ordering::Relaxed);
        freeze.length
    }

    /// Spend one of `source`'s credit for `charge` at `per_second`, if
    /// `now` is in a freeze (no beat for [`FREEZE_THRESHOLD`]) or its
    /// catch-up: whether it had one left.
    fn spend(
        &self,
        source: SourceKey,
        charge: Charge,
        per_second: NonZeroU32,
        now: Instant,
    ) -> bool {
        let at = self.ms(now);
        let latest = self.latest_beat_ms.load(Ordering::Relaxed);
        let silence = Duration::from_millis(at.saturating_sub(latest));
        let frozen = latest != 0 && silence >= FREEZE_THRESHOLD;
        if !frozen && at >= self.catch_up_until_ms.load(Ordering::Relaxed) {
            return false;
        }
        if frozen {
            self.seen(latest, silence, at);
        }
        let mut freeze = self.lock();
        let allowance = u64::from(per_second.get()) * freeze.length.as_secs();
        let key = (source, charge);
        if freeze.used.len() >= MAX_FREEZE_CREDITED_SOURCES && !freeze.used.contains_key(&key) {
            return false;
        }
        let used = freeze.used.entry(key).or_insert(0);
        if *used >= allowance {
            return false;
        }
        *used += 1;
        true
    }
}

/// Over-limit warnings are logged at most once per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A rate-limited source: an IPv4 address, or the /64 of an IPv6 address
/// (one subscriber's allocation). IPv4-mapped IPv6 addresses are IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// The key of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// Whether every address of this key is in one of `networks` (an IPv6
    /// key stands for its whole /64).
    fn is_within(self, networks: &[Network]) -> bool {
        let (first, prefix_len): (IpAddr, u8) = match self {
            Self::V4(v4) => (Ipv4Addr::from(v4).into(), 32),
            Self::V6(prefix) => (Ipv6Addr::from(u128::from(prefix) << 64).into(), 64),
        };
        networks.iter().any(|n| n.covers(first, prefix_len))
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => std::net::Ipv4Addr::from(*v4).fmt(f),
            Self::V6(prefix) => write!(
                f,
                "{}/64",
                std::net::Ipv6Addr::from(u128::from(*prefix) << 64)
            ),
        }
    }
}

/// Why a source was banned; the rule named in its log lines and decision
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanCause {
    /// It kept sending messages at more than twice its rate limit.
    Requests,
    /// It kept opening connections at more than twice its rate limit.
    Connections,
    /// It sent a scanner User-Agent (the catalog's `scanner` support).
    Scanner,
}

impl BanCause {
    /// The rule: `ban.requests`, `ban.connections` or `ban.scanner`.
    pub fn rule(self) -> &'static str {
        match self {
            Self::Requests => "ban.requests",
            Self::Connections => "ban.connections",
            Self::Scanner => "ban.scanner",
        }
    }
}

/// What a ban blocks. A UDP datagram's source address can be forged (no
/// handshake proves it), so a ban earned over UDP blocks only that
/// address's datagrams: a forger cannot lock a victim's TCP and TLS
/// clients out. A ban earned over a connection (the handshake proved the
/// address) blocks everything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanScope {
    /// The source's UDP datagrams.
    Datagrams,
    /// Its datagrams, connections and stream messages.
    Everything,
}

impl BanScope {
    /// The scope of a ban earned over `transport`.
    pub fn earned_over(transport: crate::transport::Transport) -> Self {
        if transport.is_stream() {
            Self::Everything
        } else {
            Self::Datagrams
        }
    }

    /// Label in the ban log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Datagrams => "udp",
            Self::Everything => "all",
        }
    }
}

/// A scanner datagram alone proves nothing about its source address: the
/// source is banned only when its scanner datagrams span at least this
/// long (a scan goes on; a forged datagram is one), [`Admission::scanner_datagram`].
pub const SCANNER_PROOF: Duration = Duration::from_secs(1);
/// Scanner sightings are forgotten this long after the first.
const SCANNER_SIGHTING_WINDOW: Duration = Duration::from_secs(60);
/// Sources with a scanner sighting held at most (a flood of forged
/// sources beyond this is dropped unbanned, as each datagram is anyway).
const MAX_SCANNER_SIGHTINGS: usize = 65_536;

/// What to do with one message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limit, or exempt: handle it.
    Pass,
    /// The source is banned: drop it, unparsed (counted, not logged).
    Banned,
    /// Over its limit: answer `503` with Retry-After (`over_limit =
    /// "reject"`; `banned` says the source was banned just now, and then
    /// it is dropped and recorded instead), or drop it.
    OverLimit {
        /// The source was banned by this message.
        banned: bool,
        /// `rate_limit.over_limit`.
        action: OverLimit,
        /// The configuration generation whose `[rate_limit]` decided (see
        /// [`Admission::reconfigure`]): its record names that snapshot, even
        /// when a reload has published another by the time it is written.
        generation: u64,
    },
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The source is banned (or was banned just now by this connection).
    Banned,
    /// Over `connections_per_second`.
    OverRate,
    /// `max_connections_per_source` connections are open already.
    TooMany,
}

impl ConnectionRefusal {
    /// What a log line says.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Banned => "source banned",
            Self::OverRate => "over rate_limit.connections_per_second",
            Self::TooMany => "rate_limit.max_connections_per_source open already",
        }
    }
}

/// One open connection of a limited source: counted until dropped.
#[derive(Debug)]
pub struct SourceConnection {
    admission: Arc<Admission>,
    held: Held,
}

/// Whom a connection counts for.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// A limited source's: its source key.
    Limited(SourceKey),
    /// An exempt source's: its address (not its IPv6 /64, whose other
    /// hosts it must not count against).
    Exempt(IpAddr),
}

impl SourceConnection {
    /// Whether its source was exempt from the limits when it connected
    /// (`rate_limit.trusted`, the Response Group application, the
    /// registrar): a trusted source for the connection slots too.
    pub fn is_exempt(&self) -> bool {
        matches!(self.held, Held::Exempt(_))
    }
}

impl Drop for SourceConnection {
    fn drop(&mut self) {
        let mut open = self.admission.lock_open();
        match self.held {
            Held::Limited(key) => release(&mut open.limited, key),
            Held::Exempt(ip) => release(&mut open.exempt, ip),
        }
    }
}

/// One connection fewer for `key`; the entry goes at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// Open stream connections by source.
#[derive(Debug, Default)]
struct OpenConnections {
    /// Limited sources', by source key.
    limited: HashMap<SourceKey, u32>,
    /// Exempt sources', by address: counted, not limited, so that a reload
    /// that ends an address's trust counts them against its new limit.
    exempt: HashMap<IpAddr, u32>,
}

impl OpenConnections {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.limited.is_empty() && self.exempt.is_empty()
    }
}

/// A ban in force.
#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    /// The address whose message or connection set it off.
    source: IpAddr,
    cause: BanCause,
    /// What it blocks.
    scope: BanScope,
}

/// Bans in force, with a queue in expiry order.
#[derive(Debug, Default)]
struct Bans {
    by_source: HashMap<SourceKey, Ban>,
    /// (until, source) in the order bans were made, which is expiry order;
    /// an entry whose `until` no longer matches its ban is stale.
    order: VecDeque<(Instant, SourceKey)>,
}

/// The settings in force and the token buckets built from them (replaced
/// as a whole by a reload that changes them; one that does not keeps the
/// buckets under its generation).
struct Limits {
    settings: RateLimit,
    /// The configuration generation in force (1 at start).
    generation: u64,
    /// SIP messages in UDP datagrams (and answered keep-alives).
    datagrams: Arc<Budget>,
    /// SIP messages over TCP/TLS connections, a budget apart from the
    /// datagrams': a flood of datagrams, whose source may be forged, does
    /// not spend what the address's connections (a handshake proves an
    /// address) may send.
    stream_messages: Arc<Budget>,
    /// New TCP/TLS connections.
    connections: Arc<Budget>,
}

/// One rate per source, and its strikes: what `allowed` refuses goes
/// through `strikes`; refused there too means the source stays over its
/// limit (more than twice the rate): banned.
struct Budget {
    allowed: DefaultKeyedRateLimiter<SourceKey>,
    strikes: DefaultKeyedRateLimiter<SourceKey>,
}

impl Budget {
    fn new(quota: Quota) -> Self {
        Self {
            allowed: RateLimiter::keyed(quota),
            strikes: RateLimiter::keyed(quota),
        }
    }
}

impl Limits {
    fn new(settings: RateLimit, generation: u64) -> Self {
        let messages = Quota::per_second(settings.requests_per_second).allow_burst(settings.burst);
        let connections = Quota::per_second(settings.connections_per_second)
            .allow_burst(settings.max_connections_per_source);
        Self {
            datagrams: Arc::new(Budget::new(messages)),
            stream_messages: Arc::new(Budget::new(messages)),
            connections: Arc::new(Budget::new(connections)),
            settings,
            generation,
        }
    }

    /// The same settings and buckets, under `generation`.
    fn under(&self, generation: u64) -> Self {
        Self {
            settings: self.settings.clone(),
            generation,
            datagrams: Arc::clone(&self.datagrams),
            stream_messages: Arc::clone(&self.stream_messages),
            connections: Arc::clone(&self.connections),
        }
    }

    /// The budget of the messages that arrive over `transport`, and what a
    /// freeze credits them as.
    fn messages(&self, transport: crate::transport::Transport) -> (&Budget, Charge) {
        if transport.is_stream() {
            (&*self.stream_messages, Charge::StreamMessages)
        } else {
            (&*self.datagrams, Charge::DatagramMessages)
        }
    }

    fn limiters(&self) -> [&DefaultKeyedRateLimiter<SourceKey>; 6] {
        let [d, s, c] = [&*self.datagrams, &*self.stream_messages, &*self.connections];
        [
            &d.allowed, &d.strikes, &s.allowed, &s.strikes, &c.allowed, &c.strikes,
        ]
    }
}

/// Rate limits and bans of every source. Shared by the transports (which
/// check every message and connection), the dispatcher (which bans
/// scanners) and the reloader (which swaps the limits).
pub struct Admission {
    limits: ArcSwap<Limits>,
    upstream_sources: UpstreamSources,
    /// The hosts of a TCP or TLS registrar, exempt on any port over
    /// connections (its own connections come from ports it picks; a
    /// datagram's source is too easily forged to earn that).
    registrar_hosts: UpstreamSources,
    open: Mutex<OpenConnections>,
    bans: Mutex<Bans>,
    /// When each source's first scanner datagram was seen (recent ones).
    scanner_sightings: Mutex<HashMap<SourceKey, Instant>>,
    /// Bans held (`bans.by_source.len()`, kept under its lock), read
    /// without the lock: while there is none, a message's ban check takes
    /// no lock.
    bans_held: AtomicUsize,
    /// Checks since the tables' sizes were last looked at.
    checks: AtomicU32,
    warnings: Mutex<WarningWindow>,
    /// The ban and unban lines of datagram-only bans: at most one of each
    /// per [`WARNING_INTERVAL`].
    datagram_ban_lines: Mutex<[WarningWindow; 2]>,
    /// The credit of a freeze of sipadmit itself (see the module doc).
    freeze_credit: FreezeCredit,
    metrics: Arc<Metrics>,
}

/// Which line of a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BanLine {
    Banned = 0,
    Unbanned = 1,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limits = self.limits.load();
        f.debug_struct("Admission")
            .field("settings", &limits.settings)
            .field("tracked_sources", &self.tracked_sources())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Limits from `settings`; `upstream_sources` (the registrar) exempt.
    pub fn new(
        settings: RateLimit,
        upstream_sources: UpstreamSources,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limits: ArcSwap::from_pointee(Limits::new(settings, 1)),
            upstream_sources,
            registrar_hosts: UpstreamSources::default(),
            open: Mutex::new(OpenConnections::default()),
            bans: Mutex::new(Bans::default()),
            scanner_sightings: Mutex::new(HashMap::new()),
            bans_held: AtomicUsize::new(0),
            checks: AtomicU32::new(0),
            warnings: Mutex::new(WarningWindow::default()),
            datagram_ban_lines: Mutex::new(Default::default()),
            freeze_credit: FreezeCredit::new(),
            metrics,
        }
    }

    /// A worker's beat (each worker's, every second): the first after no
    /// beat of any worker for [`FREEZE_THRESHOLD`] ends a freeze of
    /// sipadmit itself, logged; its backlog is credited ([`FreezeCredit`]).
    pub fn heartbeat(&self, now: Instant) {
        if let Some(length) = self.freeze_credit.beat(now) {
            warn!(
                frozen_secs = length.as_secs(),
                "sipadmit was frozen (a paused VM, SIGSTOP, or every event loop held up): what clients sent meanwhile is charged to their rate limit over that time"
            );
        }
    }

    /// Whether a message (or a connection, for `charge`) from `key` over
    /// its bucket is let through on the credit of a freeze, in it or in its
    /// catch-up at `now`.
    fn credited(
        &self,
        key: SourceKey,
        charge: Charge,
        per_second: NonZeroU32,
        now: Instant,
    ) -> bool {
        let credited = self.freeze_credit.spend(key, charge, per_second, now);
        if credited {
            Metrics::inc(match charge {
                Charge::DatagramMessages | Charge::StreamMessages => {
                    &self.metrics.freeze_credited_messages
                }
                Charge::Connections => &self.metrics.freeze_credited_connections,
            });
        }
        credited
    }

    /// Exempt `hosts` (a TCP or TLS registrar's) on any port over
    /// connections: their connections, and what arrives on them, are never
    /// limited or banned.
    pub fn exempting_over_connections(mut self, hosts: UpstreamSources) -> Self {
        self.registrar_hosts = hosts;
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> RateLimit {
        self.limits.load().settings.clone()
    }

    /// Apply new settings (a live reload): nothing changes but the
    /// generation when they are the ones in force (and `false` is
    /// returned). Otherwise every source starts again with a full
    /// bucket at the new rates, the bans in force run out as they were set
    /// (all lifted at once when bans are now off, and those of addresses
    /// now trusted), and open connections stay counted against the new
    /// `max_connections_per_source`.
    ///
    /// `generation` is that of the configuration the settings come from
    /// (given after it is published): what the limits refuse from now on
    /// names it, unchanged settings included.
    pub fn reconfigure(&self, settings: RateLimit, generation: u64) -> bool {
        let limits = self.limits.load();
        if limits.settings == settings {
            self.limits.store(Arc::new(limits.under(generation)));
            return false;
        }
        let bans_off = settings.ban.is_none();
        let trusted = settings.trusted.clone();
        self.limits
            .store(Arc::new(Limits::new(settings, generation)));
        self.lift_bans(|key| {
            if bans_off {
                Some("bans turned off (rate_limit.ban_secs = 0)")
            } else {
                key.is_within(&trusted)
                    .then_some("its addresses are trusted now (rate_limit.trusted)")
            }
        });
        true
    }

    /// Lift each ban for which `why` gives a reason, and log it once the
    /// bans are unlocked (a reload may lift thousands).
    fn lift_bans(&self, why: impl Fn(SourceKey) -> Option<&'static str>) {
        let mut lifted = Vec::new();
        {
            let mut bans = self.lock_bans();
            bans.by_source.retain(|&key, ban| match why(key) {
                Some(why) => {
                    lifted.push((key, *ban, why));
                    false
                }
                None => true,
            });
            // What is left in the expiry queue for a lifted ban is stale:
            // `sweep` skips an entry whose time is not its ban's.
            if bans.by_source.is_empty() {
                bans.order.clear();
            }
            self.bans_held
                .store(bans.by_source.len(), Ordering::Relaxed);
        }
        let now = Instant::now();
        for (key, ban, why) in lifted {
            self.unbanned(key, &ban, why, now);
        }
    }

    /// Whether `source` is never limited or banned under `settings`
    /// (`over_connections`: for its connections and what arrives on them).
    fn is_exempt_under(
        &self,
        settings: &RateLimit,
        source: SocketAddr,
        over_connections: bool,
    ) -> bool {
        settings.trusted.iter().any(|n| n.contains(source.ip()))
            || self.upstream_sources.matches(source)
            || (over_connections && self.registrar_hosts.matches(source))
    }

    /// Whether a TCP/TLS connection from `source` is exempt from the limits
    /// under the settings in force now (it may take the read buffer
    /// budget's reserve): a trusted network, the registrar (its
    /// `upstream_sources`, and a TCP/TLS upstream's host), the Response
    /// Group application.
    pub fn exempts_connection(&self, source: SocketAddr) -> bool {
        let limits = self.limits.load();
        self.is_exempt_under(&limits.settings, source, true)
    }

    /// The Retry-After of a `503` to a source over its limit: the seconds
    /// its bucket takes to refill a burst (at least 1).
    pub fn retry_after_secs(&self) -> u32 {
        let limits = self.limits.load();
        limits
            .settings
            .burst
            .get()
            .div_ceil(limits.settings.requests_per_second.get())
            .max(1)
    }

    /// Check one SIP message from `source`, arrived over `transport`
    /// (keep-alives are not checked).
    pub fn message(
        &self,
        source: SocketAddr,
        transport: crate::transport::Transport,
        now: Instant,
    ) -> Verdict {
        let limits = self.limits.load();
        if self.is_exempt_under(&limits.settings, source, transport.is_stream()) {
            return Verdict::Pass;
        }
        let key = SourceKey::of(source.ip());
        let scope = BanScope::earned_over(transport);
        if self.is_banned(key, scope, now) {
            Metrics::inc(&self.metrics.banned_messages);
            return Verdict::Banned;
        }
        self.bound_tables(&limits);
        let (budget, charge) = limits.messages(transport);
        if budget.allowed.check_key(&key).is_ok()
            || self.credited(key, charge, limits.settings.requests_per_second, now)
        {
            return Verdict::Pass;
        }
        Metrics::inc(&self.metrics.rate_limited_messages);
        let banned = budget.strikes.check_key(&key).is_err()
            && self.ban(source, BanCause::Requests, scope, now);
        if !banned {
            self.warn_over_limit(source, "messages over rate_limit.requests_per_second");
        }
        Verdict::OverLimit {
            banned,
            action: limits.settings.over_limit,
            generation: limits.generation,
        }
    }

    /// Whether a datagram keep-alive that is answered (a STUN Binding
    /// request) from `source` may be: not banned, and within the source's
    /// message rate (`rate_limit.requests_per_second`), which it spends. One
    /// over the rate is not answered and earns no strike or ban: a source
    /// address that is answered may be forged.
    pub fn answered_keep_alive(&self, source: SocketAddr, now: Instant) -> bool {
        let limits = self.limits.load();
        if self.is_exempt_under(&limits.settings, source, false) {
            return true;
        }
        let key = SourceKey::of(source.ip());
        if self.is_banned(key, BanScope::Datagrams, now) {
            Metrics::inc(&self.metrics.banned_messages);
            return false;
        }
        self.bound_tables(&limits);
        let within = limits.datagrams.allowed.check_key(&key).is_ok();
        if !within {
            Metrics::inc(&self.metrics.rate_limited_messages);
        }
        within
    }

    /// Check a new stream connection from `peer`: its guard counts it among
    /// the source's open connections until dropped.
    pub fn connection(
        self: &Arc<Self>,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<SourceConnection, ConnectionRefusal> {
        let limits = self.limits.load();
        if self.is_exempt_under(&limits.settings, peer, true) {
            *self.lock_open().exempt.entry(peer.ip()).or_insert(0) += 1;
            return Ok(SourceConnection {
                admission: self.clone(),
                held: Held::Exempt(peer.ip()),
            });
        }
        let key = SourceKey::of(peer.ip());
        if self.is_banned(key, BanScope::Everything, now) {
            Metrics::inc(&self.metrics.banned_connections);
            return Err(ConnectionRefusal::Banned);
        }
        self.bound_tables(&limits);
        // A freeze's credit is spent only on a connection the cap on open
        // ones would take.
        if limits.connections.allowed.check_key(&key).is_err()
            && !(self.opened(peer, key) < limits.settings.max_connections_per_source.get()
                && self.credited(
                    key,
                    Charge::Connections,
                    limits.settings.connections_per_second,
                    now,
                ))
        {
            Metrics::inc(&self.metrics.rate_limited_connections);
            if limits.connections.strikes.check_key(&key).is_err()
                && self.ban(peer, BanCause::Connections, BanScope::Everything, now)
            {
                return Err(ConnectionRefusal::Banned);
            }
            self.warn_over_limit(peer, ConnectionRefusal::OverRate.as_str());
            return Err(ConnectionRefusal::OverRate);
        }
        let mut open = self.lock_open();
        if Self::opened_in(&open, peer, key) >= limits.settings.max_connections_per_source.get() {
            drop(open);
            Metrics::inc(&self.metrics.connections_per_source_refused);
            self.warn_over_limit(peer, ConnectionRefusal::TooMany.as_str());
            return Err(ConnectionRefusal::TooMany);
        }
        *open.limited.entry(key).or_insert(0) += 1;
        Ok(SourceConnection {
            admission: self.clone(),
            held: Held::Limited(key),
        })
    }

    /// The connections open from `peer` (of source `key`), those it opened
    /// while it was exempt included.
    fn opened(&self, peer: SocketAddr, key: SourceKey) -> u32 {
        Self::opened_in(&self.lock_open(), peer, key)
    }

    fn opened_in(open: &OpenConnections, peer: SocketAddr, key: SourceKey) -> u32 {
        let opened_exempt = open.exempt.get(&peer.ip()).copied().unwrap_or(0);
        open.limited.get(&key).copied().unwrap_or(0) + opened_exempt
    }

    /// A scanner datagram from `source` at `now`: whether its source has
    /// now proven itself a scanner to be banned (its scanner datagrams span
    /// [`SCANNER_PROOF`]). The first one only starts the clock: a single
    /// forged datagram bans no one (it is dropped like any scanner's).
    pub fn scanner_datagram(&self, source: SocketAddr, now: Instant) -> bool {
        let key = SourceKey::of(source.ip());
        let mut sightings = self
            .scanner_sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match sightings.get(&key) {
            Some(first) if now.saturating_duration_since(*first) >= SCANNER_PROOF => {
                sightings.remove(&key);
                true
            }
            Some(_) => false,
            None => {
                if sightings.len() < MAX_SCANNER_SIGHTINGS {
                    sightings.insert(key, now);
                }
                false
            }
        }
    }

    /// Ban the source of `source` for `ban_secs`, blocking what `scope`
    /// says (nothing when it is exempt, already banned as widely, or bans
    /// are off; a datagram ban is widened by a later one over a
    /// connection). Returns whether it was banned now.
    pub fn ban(&self, source: SocketAddr, cause: BanCause, scope: BanScope, now: Instant) -> bool {
        // The settings are read under the bans' lock: a reload stores new
        // ones before it lifts the bans they end (see `reconfigure`), so a
        // ban made on the old ones is lifted with the rest.
        let mut bans = self.lock_bans();
        let limits = self.limits.load();
        let Some(duration) = limits.settings.ban else {
            return false;
        };
        if self.is_exempt_under(&limits.settings, source, scope == BanScope::Everything) {
            return false;
        }
        let key = SourceKey::of(source.ip());
        if bans.by_source.get(&key).is_some_and(|b| {
            b.until > now && (b.scope == BanScope::Everything || scope == BanScope::Datagrams)
        }) {
            return false;
        }
        if bans.by_source.len() >= MAX_BANS {
            while let Some((until, oldest)) = bans.order.pop_front() {
                if bans
                    .by_source
                    .get(&oldest)
                    .is_some_and(|b| b.until == until)
                {
                    let ban = bans.by_source.remove(&oldest).expect("present");
                    self.unbanned(oldest, &ban, "evicted: too many bans", now);
                    break;
                }
            }
        }
        let until = now + duration;
        bans.by_source.insert(
            key,
            Ban {
                until,
                source: source.ip(),
                cause,
                scope,
            },
        );
        // In expiry order: at the back, unless a reload shortened ban_secs.
        let at = bans.order.partition_point(|&(u, _)| u <= until);
        bans.order.insert(at, (until, key));
        self.bans_held
            .store(bans.by_source.len(), Ordering::Relaxed);
        drop(bans);
        Metrics::inc(&self.metrics.bans);
        if let Some(not_logged) = self.ban_line_due(scope, BanLine::Banned, now) {
            warn!(
                source = %source.ip(),
                banned = %key,
                rule = cause.rule(),
                blocks = scope.as_str(),
                ban_secs = duration.as_secs(),
                not_logged,
                "source banned"
            );
        }
        true
    }

    /// Whether the `line` of a ban of `scope` is written at `now`:
    /// `Some(n)` with the `n` lines of its kind held back before it (always
    /// `Some(0)` for a ban that blocks everything).
    fn ban_line_due(&self, scope: BanScope, line: BanLine, now: Instant) -> Option<u64> {
        match scope {
            BanScope::Everything => Some(0),
            BanScope::Datagrams => {
                self.lock_datagram_ban_lines()[line as usize].admit(now, WARNING_INTERVAL)
            }
        }
    }

    fn lock_datagram_ban_lines(&self) -> std::sync::MutexGuard<'_, [WarningWindow; 2]> {
        self.datagram_ban_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Log the end of a ban.
    fn unbanned(&self, key: SourceKey, ban: &Ban, why: &'static str, now: Instant) {
        if let Some(not_logged) = self.ban_line_due(ban.scope, BanLine::Unbanned, now) {
            info!(
                source = %ban.source,
                banned = %key,
                rule = ban.cause.rule(),
                why,
                not_logged,
                "source unbanned"
            );
        }
    }

    /// Report the lines of datagram-only bans held back, once 10 s have
    /// passed since the last one written: a flood that ended is told too.
    /// Returns how many ban and unban lines it reported.
    fn report_held_ban_lines(&self, now: Instant) -> [u64; 2] {
        let mut windows = self.lock_datagram_ban_lines();
        let held = [BanLine::Banned, BanLine::Unbanned]
            .map(|line| windows[line as usize].take_held_back(now, WARNING_INTERVAL));
        drop(windows);
        if let Some(not_logged) = held[BanLine::Banned as usize] {
            warn!(
                not_logged,
                "sources banned from datagrams whose lines were held back (at most one a 10 s; every ban is in the decision log)"
            );
        }
        if let Some(not_logged) = held[BanLine::Unbanned as usize] {
            info!(
                not_logged,
                "datagram bans lifted whose lines were held back (at most one a 10 s)"
            );
        }
        held.map(Option::unwrap_or_default)
    }

    /// Whether the source of `ip` is banned at `now` from what `scope`
    /// names (a datagram ban does not block connections).
    pub fn is_banned_ip(&self, ip: IpAddr, scope: BanScope, now: Instant) -> bool {
        self.is_banned(SourceKey::of(ip), scope, now)
    }

    /// Lift the bans that ran out (each logged), and forget the bucket
    /// state of sources whose buckets are full again. Called every second.
    pub fn sweep(&self, now: Instant) {
        {
            let mut bans = self.lock_bans();
            while let Some(&(until, key)) = bans.order.front() {
                if until > now {
                    break;
                }
                bans.order.pop_front();
                if bans.by_source.get(&key).is_some_and(|b| b.until == until) {
                    let ban = bans.by_source.remove(&key).expect("present");
                    self.unbanned(key, &ban, "expired", now);
                }
            }
            self.bans_held
                .store(bans.by_source.len(), Ordering::Relaxed);
            if bans.by_source.is_empty() && bans.order.capacity() > 1024 {
                bans.order = VecDeque::new();
                bans.by_source = HashMap::new();
            }
        }
        self.scanner_sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, first| now.saturating_duration_since(*first) < SCANNER_SIGHTING_WINDOW);
        for limiter in self.limits.load().limiters() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.report_held_ban_lines(now);
    }

    /// Sources whose bucket state is held (the message limiters': a source
    /// that sends both over UDP and over connections counts twice).
    pub fn tracked_sources(&self) -> usize {
        let limits = self.limits.load();
        limits.datagrams.allowed.len() + limits.stream_messages.allowed.len()
    }

    /// Bans in force (expired ones not swept yet included).
    pub fn bans(&self) -> usize {
        self.lock_bans().by_source.len()
    }

    /// Every 1,024 checks, sweep a limiter grown past [`MAX_TRACKED_SOURCES`]
    /// (a flood from many addresses) without waiting for the next second.
    fn bound_tables(&self, limits: &Limits) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 != 0 {
            return;
        }
        for limiter in limits.limiters() {
            if limiter.len() > MAX_TRACKED_SOURCES {
                limiter.retain_recent();
            }
        }
    }

    /// Whether `key` is banned at `now` from traffic of `scope`: a
    /// datagram ban blocks datagrams only.
    fn is_banned(&self, key: SourceKey, scope: BanScope, now: Instant) -> bool {
        if self.bans_held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.lock_bans().by_source.get(&key).is_some_and(|b| {
            b.until > now && (b.scope == BanScope::Everything || scope == BanScope::Datagrams)
        })
    }

    fn warn_over_limit(&self, source: SocketAddr, what: &'static str) {
        let due = self
            .warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now(), WARNING_INTERVAL);
        if let Some(not_logged) = due {
            warn!(
                source = %source.ip(),
                limit = what,
                not_logged,
                "source over its rate limit"
            );
        }
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_bans(&self) -> std::sync::MutexGuard<'_, Bans> {
        self.bans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A limit of `n` per second, for tests and callers that have a plain number.
pub fn per_second(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    fn settings(rps: u32, burst: u32) -> RateLimit {
        RateLimit {
            trusted: vec![Network::parse("127.0.0.9").unwrap()],
            requests_per_second: per_second(rps),
            burst: per_second(burst),
            connections_per_second: per_second(1),
            max_connections_per_source: per_second(2),
            ban: Some(Duration::from_secs(300)),
            over_limit: OverLimit::Reject,
        }
    }

    fn admission(rps: u32, burst: u32) -> Arc<Admission> {
        Arc::new(Admission::new(
            settings(rps, burst),
            UpstreamSources::exactly("127.0.0.8:5070".parse().unwrap()),
            Arc::new(Metrics::default()),
        ))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A TCP or TLS registrar's hosts are exempt on any port over
    /// connections (its own, towards clients), never for datagrams, whose
    /// source is easily forged.
    #[test]
    fn a_stream_registrars_hosts_are_exempt_over_connections_only() {
        let sources = UpstreamSources::exactly(addr("127.0.0.8:5070"));
        let a = Arc::new(
            Admission::new(
                settings(1, 2),
                sources.clone(),
                Arc::new(Metrics::default()),
            )
            .exempting_over_connections(sources.hosts()),
        );
        let now = Instant::now();
        let own = addr("127.0.0.8:41234");
        for _ in 0..20 {
            assert_eq!(a.message(own, Transport::Tcp, now), Verdict::Pass);
            assert!(a.connection(own, now).is_ok());
        }
        assert!(!a.ban(own, BanCause::Scanner, BanScope::Everything, now));
        let limited = (0..20)
            .map(|_| a.message(own, Transport::Udp, now))
            .filter(|v| *v != Verdict::Pass)
            .count();
        assert!(limited > 0, "datagrams from another port are limited");
    }

    /// The connections a freeze left in the accept backlog are credited at
    /// `connections_per_second` over its length, as messages are at theirs.
    #[test]
    fn a_freeze_of_sipadmit_credits_the_connections_it_held_back() {
        let a = admission(2, 3);
        let opened = |source, now, tries| {
            (0..tries)
                .filter(|_| a.connection(source, now).is_ok())
                .count()
        };
        let t0 = Instant::now();
        a.heartbeat(t0);
        let client = addr("192.0.2.20:5060");
        assert_eq!(opened(client, t0, 3), 2, "no freeze: the burst is all");
        // 10 s without a beat: 1/s * 10 s more (the bucket runs on the
        // limiter's own clock, for which no time passed).
        let resumed = t0 + Duration::from_secs(10);
        a.heartbeat(resumed);
        assert_eq!(opened(client, resumed, 10), 10);
        assert_eq!(
            a.metrics
                .freeze_credited_connections
                .load(Ordering::Relaxed),
            10
        );
        assert_eq!(
            a.metrics.freeze_credited_messages.load(Ordering::Relaxed),
            0,
            "messages have a credit of their own"
        );
        assert_eq!(opened(client, resumed, 1), 0, "the credit is spent");
        // The cap on open connections holds, and a connection it refuses
        // spends no credit.
        let held = addr("192.0.2.21:5060");
        let frozen = resumed + Duration::from_secs(10);
        a.heartbeat(frozen);
        let open: Vec<_> = (0..3)
            .filter_map(|_| a.connection(held, frozen).ok())
            .collect();
        assert_eq!(open.len(), 2, "max_connections_per_source");
        assert!(a.connection(held, frozen).is_err());
        drop(open);
        assert_eq!(opened(held, frozen, 10), 10, "the whole credit is left");
    }

    /// Trial 20: a freeze of sipadmit itself (no beat for 10 s) leaves a
    /// client's messages of those seconds queued; read at once, they pass
    /// up to the rate over the freeze on top of the burst, before and after
    /// the next beat, each source on its own; after the catch-up, none.
    #[test]
    fn a_freeze_of_sipadmit_credits_its_backlog_at_the_rate_over_its_length() {
        let a = admission(2, 3);
        let over = |source, now| !matches!(a.message(source, Transport::Udp, now), Verdict::Pass);
        let t0 = Instant::now();
        a.heartbeat(t0);
        let client = addr("192.0.2.10:5060");
        for _ in 0..3 {
            assert!(!over(client, t0));
        }
        assert!(over(client, t0), "no freeze: the burst is all");
        // 10 s without a beat: 2/s * 10 s = 20 more, the beat's line or not.
        let resumed = t0 + Duration::from_secs(10);
        for _ in 0..10 {
            assert!(!over(client, resumed));
        }
        a.heartbeat(resumed);
        let draining = resumed + Duration::from_millis(100);
        for _ in 0..10 {
            assert!(!over(client, draining));
        }
        assert!(
            over(client, draining),
            "the credit is the rate over the freeze"
        );
        let other = addr("192.0.2.11:5060");
        assert_eq!((0..30).filter(|_| !over(other, draining)).count(), 3 + 20);
        assert_eq!(
            a.metrics.freeze_credited_messages.load(Ordering::Relaxed),
            40
        );
        // Beats every second again: after the catch-up no credit is left.
        let later = (1..=3).fold(resumed, |at, _| {
            let next = at + Duration::from_secs(1);
            a.heartbeat(next);
            next
        });
        let third = addr("192.0.2.12:5060");
        assert_eq!((0..10).filter(|_| !over(third, later)).count(), 3);
        // One worker beating while another is held up: no freeze.
        a.heartbeat(later + Duration::from_secs(2));
        let fourth = addr("192.0.2.13:5060");
        let held_up = later + Duration::from_secs(4);
        assert_eq!((0..10).filter(|_| !over(fourth, held_up)).count(), 3);
        // A long freeze is credited as MAX_FREEZE at most.
        let long = held_up + Duration::from_secs(120);
        a.heartbeat(long);
        let fifth = addr("192.0.2.14:5060");
        assert_eq!((0..200).filter(|_| !over(fifth, long)).count(), 3 + 2 * 30);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let a = SourceKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = SourceKey::of("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = SourceKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            SourceKey::of("::ffff:192.0.2.1".parse().unwrap()),
            SourceKey::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn a_source_over_its_burst_is_limited_then_banned_and_others_are_not() {
        let a = admission(1, 5);
        let now = Instant::now();
        let flood = addr("192.0.2.1:5060");
        let verdicts: Vec<Verdict> = (0..20)
            .map(|_| a.message(flood, Transport::Udp, now))
            .collect();
        assert!(
            verdicts[..5].iter().all(|v| *v == Verdict::Pass),
            "{verdicts:?}"
        );
        let first_over = Verdict::OverLimit {
            banned: false,
            action: OverLimit::Reject,
            generation: 1,
        };
        assert_eq!(verdicts[5], first_over);
        // Refused messages beyond another burst: banned, then dropped unparsed.
        let banned_at = verdicts
            .iter()
            .position(|v| matches!(v, Verdict::OverLimit { banned: true, .. }))
            .expect("banned");
        assert!(banned_at > 5);
        assert!(verdicts[banned_at + 1..]
            .iter()
            .all(|v| *v == Verdict::Banned));
        assert_eq!(a.bans(), 1);
        // Another source, the trusted one and the registrar are untouched.
        assert_eq!(
            a.message(addr("192.0.2.2:5060"), Transport::Udp, now),
            Verdict::Pass
        );
        for exempt in ["127.0.0.9:1", "127.0.0.8:5070"] {
            for _ in 0..50 {
                assert_eq!(a.message(addr(exempt), Transport::Udp, now), Verdict::Pass);
            }
            assert!(!a.ban(addr(exempt), BanCause::Scanner, BanScope::Everything, now));
        }
        // The ban runs out after ban_secs.
        a.sweep(now + Duration::from_secs(301));
        assert_eq!(a.bans(), 0);
        assert!(!a.is_banned_ip(
            flood.ip(),
            BanScope::Everything,
            now + Duration::from_secs(301)
        ));
    }

    #[test]
    fn answered_keep_alives_spend_the_message_rate_and_never_ban() {
        let a = admission(1, 2);
        let now = Instant::now();
        let source = addr("192.0.2.8:5060");
        assert!(a.answered_keep_alive(source, now));
        assert!(a.answered_keep_alive(source, now));
        // The burst of two is spent: the rest are not answered (a forged
        // source must not make the port a reflector), and no one is banned.
        for _ in 0..50 {
            assert!(!a.answered_keep_alive(source, now));
        }
        assert_eq!(a.bans(), 0);
        // A trusted source is answered whatever its rate.
        assert!((0..50).all(|_| a.answered_keep_alive(addr("127.0.0.9:1"), now)));
        // A banned one is not.
        assert!(a.ban(source, BanCause::Scanner, BanScope::Datagrams, now));
        assert!(!a.answered_keep_alive(source, now + Duration::from_secs(5)));
    }

    #[test]
    fn connections_are_capped_per_source_and_released_on_drop() {
        let a = admission(100, 100);
        let now = Instant::now();
        let peer = addr("192.0.2.7:40000");
        let first = a.connection(peer, now).unwrap();
        let second = a.connection(addr("192.0.2.7:40001"), now).unwrap();
        // Two open (the cap) and the burst of two spent.
        assert!(a.connection(peer, now).is_err());
        drop(first);
        drop(second);
        assert!(a.lock_open().is_empty(), "released on drop");
        // A trusted source is never capped.
        let trusted: Vec<_> = (0..10)
            .map(|_| a.connection(addr("127.0.0.9:1"), now).unwrap())
            .collect();
        assert_eq!(trusted.len(), 10);
        // Counted all the same: a reload that ends its trust (trial 18)
        // finds ten open, over its cap of two, and refuses the next.
        let mut untrusted = settings(100, 100);
        untrusted.trusted.clear();
        assert!(a.reconfigure(untrusted, 2));
        assert!(matches!(
            a.connection(addr("127.0.0.9:2"), now),
            Err(ConnectionRefusal::TooMany)
        ));
        drop(trusted);
        assert!(a.lock_open().is_empty(), "released on drop");
        assert!(a.connection(addr("127.0.0.9:3"), now).is_ok());
    }

    /// A trusted IPv6 host's connections count against no other host of
    /// its /64 (the key limited sources share).
    #[test]
    fn a_trusted_hosts_connections_leave_its_ipv6_neighbours_their_cap() {
        let mut trusting = settings(100, 100);
        trusting.trusted = vec![Network::parse("2001:db8:1::10").unwrap()];
        let a = Arc::new(Admission::new(
            trusting,
            UpstreamSources::exactly("127.0.0.8:5070".parse().unwrap()),
            Arc::new(Metrics::default()),
        ));
        let now = Instant::now();
        let trusted: Vec<_> = (0..10)
            .map(|p| a.connection(addr(&format!("[2001:db8:1::10]:{}", 4000 + p)), now))
            .collect();
        assert!(trusted.iter().all(Result::is_ok));
        let neighbour = |port| a.connection(addr(&format!("[2001:db8:1::20]:{port}")), now);
        let (first, second) = (neighbour(1), neighbour(2));
        assert!(first.is_ok() && second.is_ok(), "its cap of two is its own");
        // Two open (its cap) and its burst of two spent.
        assert!(neighbour(3).is_err());
    }

    /// A reload that leaves `[rate_limit]` as it was keeps every source's
    /// bucket, and names its own generation in what the limits refuse next.
    #[test]
    fn an_unchanged_reconfigure_keeps_the_buckets_under_the_new_generation() {
        let a = admission(1, 2);
        let now = Instant::now();
        let client = addr("192.0.2.21:5060");
        let over = |generation| Verdict::OverLimit {
            banned: false,
            action: OverLimit::Reject,
            generation,
        };
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| a.message(client, Transport::Udp, now))
            .collect();
        assert_eq!(verdicts, [Verdict::Pass, Verdict::Pass, over(1)]);
        assert!(!a.reconfigure(settings(1, 2), 5), "unchanged");
        assert_eq!(a.message(client, Transport::Udp, now), over(5));
    }

    #[test]
    fn a_reconfigure_applies_new_rates_keeps_bans_and_ban_secs_0_lifts_them() {
        let a = admission(1000, 1000);
        let now = Instant::now();
        let client = addr("192.0.2.20:5060");
        assert!(!a.reconfigure(settings(1000, 1000), 2), "unchanged");
        assert!((0..10).all(|_| a.message(client, Transport::Udp, now) == Verdict::Pass));
        assert!(a.ban(
            addr("198.51.100.9:5060"),
            BanCause::Scanner,
            BanScope::Everything,
            now
        ));
        // Slower and a shorter ban: the client is limited at once, the ban
        // in force stays, and a new ban expires first though made later.
        let mut slower = settings(1, 2);
        slower.ban = Some(Duration::from_secs(10));
        slower.over_limit = OverLimit::Drop;
        assert!(a.reconfigure(slower.clone(), 3));
        assert_eq!(a.settings(), slower);
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| a.message(client, Transport::Udp, now))
            .collect();
        assert_eq!(verdicts[..2], [Verdict::Pass, Verdict::Pass]);
        assert_eq!(
            verdicts[2],
            Verdict::OverLimit {
                banned: false,
                action: OverLimit::Drop,
                generation: 3,
            }
        );
        assert!(a.ban(
            addr("198.51.100.10:5060"),
            BanCause::Scanner,
            BanScope::Everything,
            now
        ));
        a.sweep(now + Duration::from_secs(11));
        assert_eq!(a.bans(), 1, "the 10 s ban ran out, the 300 s one did not");
        assert!(a.is_banned_ip("198.51.100.9".parse().unwrap(), BanScope::Everything, now));
        // Bans off: the ones in force are lifted.
        let mut no_bans = slower;
        no_bans.ban = None;
        assert!(a.reconfigure(no_bans, 4));
        assert_eq!(a.bans(), 0);
        assert!(!a.is_banned_ip("198.51.100.9".parse().unwrap(), BanScope::Everything, now));
    }

    /// A reload that trusts a banned source lifts its ban (and the bans
    /// gauge stops counting it); an IPv6 ban, kept for its whole /64, only
    /// when a trusted network covers the /64. A ban earned again after it
    /// was lifted lasts its own `ban_secs`.
    #[test]
    fn a_reconfigure_that_trusts_a_banned_source_lifts_its_ban() {
        let a = admission(1000, 1000);
        let now = Instant::now();
        let sources = [
            "198.51.100.9:5060",
            "198.51.100.10:5060",
            "[2001:db8:1::9]:5060",
            "[::5]:5060",
        ];
        for source in sources {
            assert!(a.ban(addr(source), BanCause::Scanner, BanScope::Everything, now));
        }
        assert_eq!(a.bans(), 4);
        let banned = |ip: &str| a.is_banned_ip(ip.parse().unwrap(), BanScope::Everything, now);
        let trusting = |networks: &[&str]| {
            let mut settings = settings(1000, 1000);
            settings.trusted = networks
                .iter()
                .map(|n| Network::parse(n).unwrap())
                .collect();
            settings
        };
        assert!(a.reconfigure(trusting(&["198.51.100.9", "2001:db8:1::9/128"]), 2));
        assert_eq!(a.bans(), 3, "the trusted IPv4 address's ban is lifted");
        assert!(!banned("198.51.100.9"));
        assert!(banned("198.51.100.10"));
        assert!(banned("2001:db8:1::7"), "the rest of the /64 stays banned");
        assert!(a.reconfigure(trusting(&["2001:db8:1::/48", "::/0"]), 3));
        assert_eq!(a.bans(), 1, "every IPv6 ban is lifted, ::/64 too");
        assert!(!banned("2001:db8:1::7"));
        // Trusted no more: banned again, later; the first ban's expiry
        // entry, stale, does not end the new one.
        let later = now + Duration::from_secs(10);
        assert!(a.reconfigure(settings(1000, 1000), 4));
        assert!(a.ban(
            addr(sources[0]),
            BanCause::Scanner,
            BanScope::Everything,
            later
        ));
        a.sweep(now + Duration::from_secs(301));
        assert_eq!(
            a.bans(),
            1,
            "the 198.51.100.10 ban ran out, the new one did not"
        );
        assert!(a.is_banned_ip(
            "198.51.100.9".parse().unwrap(),
            BanScope::Everything,
            now + Duration::from_secs(301)
        ));
        a.sweep(now + Duration::from_secs(311));
        assert_eq!(a.bans(), 0);
    }

    #[test]
    fn bans_are_bounded_and_a_scanner_ban_is_logged_once() {
        let a = admission(100, 100);
        let now = Instant::now();
        assert!(a.ban(
            addr("198.51.100.1:5060"),
            BanCause::Scanner,
            BanScope::Everything,
            now
        ));
        assert!(
            !a.ban(
                addr("198.51.100.1:5061"),
                BanCause::Scanner,
                BanScope::Everything,
                now
            ),
            "already banned"
        );
        for i in 0..(MAX_BANS as u32 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            a.ban(
                SocketAddr::new(ip.into(), 1),
                BanCause::Requests,
                BanScope::Everything,
                now,
            );
        }
        assert_eq!(a.bans(), MAX_BANS);
    }

    /// A flood from forged addresses writes one line of its datagram bans
    /// per 10 s (saying how many it held back, also once the flood is
    /// over), not one per address; bans that block everything keep a line
    /// each, for fail2ban.
    #[test]
    fn datagram_ban_lines_are_limited_and_full_ban_lines_are_not() {
        let a = admission(100, 100);
        let now = Instant::now();
        let ban_secs = a.settings().ban.expect("bans on");
        for i in 0..100u32 {
            let forged = SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 5060);
            assert!(a.ban(forged, BanCause::Scanner, BanScope::Datagrams, now));
            let proven = SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + i).into(), 5060);
            assert!(a.ban(proven, BanCause::Scanner, BanScope::Everything, now));
        }
        // The first datagram ban's line was written; 99 held back, told
        // by the sweep once 10 s have passed (nothing of the full bans).
        a.sweep(now + WARNING_INTERVAL / 2);
        assert_eq!(a.report_held_ban_lines(now + WARNING_INTERVAL / 2), [0, 0]);
        a.sweep(now + WARNING_INTERVAL);
        assert_eq!(
            a.report_held_ban_lines(now + WARNING_INTERVAL),
            [0, 0],
            "told once"
        );
        let mut b = admission(100, 100);
        for i in 0..100u32 {
            let forged = SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 5060);
            b.ban(forged, BanCause::Scanner, BanScope::Datagrams, now);
        }
        assert_eq!(b.report_held_ban_lines(now + WARNING_INTERVAL), [99, 0]);
        // They all run out together: one unban line, 99 held back.
        let over = now + ban_secs;
        b.sweep(over);
        assert_eq!(b.bans(), 0);
        assert_eq!(b.report_held_ban_lines(over + WARNING_INTERVAL), [0, 99]);
        b = admission(100, 100);
        for i in 0..100u32 {
            let proven = SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + i).into(), 5060);
            b.ban(proven, BanCause::Scanner, BanScope::Everything, now);
        }
        b.sweep(over);
        assert_eq!(b.report_held_ban_lines(over + WARNING_INTERVAL), [0, 0]);
    }

    /// A forged datagram cannot lock its "source" out of TCP and TLS: a
    /// ban earned over UDP blocks datagrams only; one earned over a
    /// connection blocks everything (and widens an earlier datagram ban).
    #[test]
    fn a_ban_earned_over_udp_blocks_datagrams_only() {
        let a = admission(100, 100);
        let now = Instant::now();
        let victim = addr("198.51.100.20:5060");
        assert!(a.ban(victim, BanCause::Scanner, BanScope::Datagrams, now));
        assert_eq!(a.message(victim, Transport::Udp, now), Verdict::Banned);
        assert_eq!(a.message(victim, Transport::Tcp, now), Verdict::Pass);
        assert!(
            a.connection(victim, now).is_ok(),
            "connections are not blocked"
        );
        assert!(!a.is_banned_ip(victim.ip(), BanScope::Everything, now));
        // A ban earned over a connection widens it.
        assert!(a.ban(victim, BanCause::Scanner, BanScope::Everything, now));
        assert_eq!(a.message(victim, Transport::Tls, now), Verdict::Banned);
        assert!(a.connection(victim, now).is_err());
        assert!(
            !a.ban(victim, BanCause::Requests, BanScope::Datagrams, now),
            "already banned as widely"
        );
    }

    /// A datagram's source may be forged: a flood of datagrams kept under
    /// the ban (not twice over the limit) spends the address's datagram
    /// budget only, never what its connections may send (trial 36: a TCP
    /// client got 503s from a UDP flood in its address's name).
    #[test]
    fn datagrams_and_connections_each_have_their_own_message_budget() {
        let a = admission(1, 10);
        let now = Instant::now();
        let source = addr("198.51.100.30:5060");
        for _ in 0..10 {
            assert_eq!(a.message(source, Transport::Udp, now), Verdict::Pass);
        }
        assert!(matches!(
            a.message(source, Transport::Udp, now),
            Verdict::OverLimit { banned: false, .. }
        ));
        for transport in [Transport::Tcp, Transport::Tls] {
            for _ in 0..5 {
                assert_eq!(a.message(source, transport, now), Verdict::Pass);
            }
        }
        // The connections' budget is the address's, whatever the transport.
        assert!(matches!(
            a.message(source, Transport::Tcp, now),
            Verdict::OverLimit { banned: false, .. }
        ));
        assert_eq!(a.tracked_sources(), 2);
    }

    /// One scanner datagram proves nothing about its source; a scan that
    /// goes on for SCANNER_PROOF does.
    #[test]
    fn a_scanner_datagram_alone_bans_no_one() {
        let a = admission(100, 100);
        let now = Instant::now();
        let source = addr("198.51.100.21:5060");
        assert!(
            !a.scanner_datagram(source, now),
            "the first starts the clock"
        );
        assert!(!a.scanner_datagram(source, now + SCANNER_PROOF / 2));
        assert!(
            a.scanner_datagram(source, now + SCANNER_PROOF),
            "a scan goes on"
        );
        // Forgotten after the window: one more datagram alone bans no one.
        let other = addr("198.51.100.22:5060");
        assert!(!a.scanner_datagram(other, now));
        a.sweep(now + SCANNER_SIGHTING_WINDOW);
        assert!(!a.scanner_datagram(other, now + SCANNER_SIGHTING_WINDOW + SCANNER_PROOF));
    }
}
