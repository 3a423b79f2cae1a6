//! Counters with bounded labels (never a Call-ID or a User-Agent string).
//! Every drop is counted by reason; the totals are logged at shutdown and
//! rendered in the Prometheus text format by [`Metrics::render`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::transport::tls::HandshakeReason;
use crate::transport::{Fault, WarningWindow, FAULT_WARNING_INTERVAL};

/// Which end of a TLS handshake sipadmit was (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// The server side, on a `tls:` listener.
    Listener,
    /// The client side, on the link to a `tls:` upstream.
    Upstream,
}

impl TlsSide {
    /// Both sides, in render order.
    pub const ALL: [Self; 2] = [Self::Listener, Self::Upstream];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Upstream => "upstream",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Listener => 0,
            Self::Upstream => 1,
        }
    }
}

/// Why a message was not relayed and not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Unparsable and no response could be formed.
    Malformed,
    /// A response whose top Via is not this proxy's (RFC 3261 18.1.2).
    ForeignResponse,
    /// A malformed response.
    MalformedResponse,
    /// The policy said drop (scanners).
    Policy,
    /// ACK for a response this filter sent itself.
    AbsorbedAck,
    /// A request that must not be answered (ACK) could not be relayed.
    Unanswerable,
    /// The flow a message should go to is gone.
    FlowGone,
    /// Sending failed.
    SendFailed,
    /// STUN datagram (not handled).
    Stun,
}

impl DropReason {
    /// Every reason, in render order.
    pub const ALL: [Self; 9] = [
        Self::Malformed,
        Self::ForeignResponse,
        Self::MalformedResponse,
        Self::Policy,
        Self::AbsorbedAck,
        Self::Unanswerable,
        Self::FlowGone,
        Self::SendFailed,
        Self::Stun,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::ForeignResponse => "foreign_response",
            Self::MalformedResponse => "malformed_response",
            Self::Policy => "policy",
            Self::AbsorbedAck => "absorbed_ack",
            Self::Unanswerable => "unanswerable",
            Self::FlowGone => "flow_gone",
            Self::SendFailed => "send_failed",
            Self::Stun => "stun",
        }
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received (keep-alives excluded).
    pub received: AtomicU64,
    /// Keep-alives received (CRLF, CRLFCRLF).
    pub keepalives: AtomicU64,
    /// Requests relayed.
    pub requests_relayed: AtomicU64,
    /// Responses relayed.
    pub responses_relayed: AtomicU64,
    /// Responses the filter sent itself.
    pub local_responses: AtomicU64,
    /// Requests flagged.
    pub flagged: AtomicU64,
    /// Requests rejected by policy.
    pub rejected: AtomicU64,
    /// Requests recognised as retransmissions of a transaction already
    /// recorded (handled the same way again, not recorded again).
    pub retransmissions: AtomicU64,
    /// REGISTERs answered 403 for naming more contacts than
    /// `limits.max_contacts_per_register`.
    pub too_many_contacts: AtomicU64,
    /// REGISTER contacts not learned for want of room in the registration
    /// tables (a single entry larger than its table's byte bound).
    pub contacts_not_learned: AtomicU64,
    /// Pending REGISTERs and bindings evicted (oldest first) because their
    /// table was full.
    pub registrations_evicted: AtomicU64,
    /// TLS handshakes completed, per [`TlsSide`].
    tls_handshakes: [AtomicU64; TlsSide::ALL.len()],
    /// TLS handshakes failed, per [`TlsSide`] and [`HandshakeReason`].
    tls_handshake_failures: [[AtomicU64; HandshakeReason::ALL.len()]; TlsSide::ALL.len()],
    drops: [AtomicU64; DropReason::ALL.len()],
    faults: [AtomicU64; Fault::ALL.len()],
    /// Rate limits of the fault warnings, per kind.
    fault_warnings: [Mutex<WarningWindow>; Fault::ALL.len()],
}

impl Metrics {
    /// Count one drop.
    pub fn count_drop(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.drops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Drops counted for a reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.drops[i].load(Ordering::Relaxed)
    }

    /// Count one transport fault (see [`Fault::report`], which logs it too).
    pub fn count_fault(&self, fault: Fault) {
        let i = Fault::ALL
            .iter()
            .position(|f| *f == fault)
            .expect("every fault is listed");
        self.faults[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Transport faults counted of a kind.
    pub fn faults(&self, fault: Fault) -> u64 {
        let i = Fault::ALL
            .iter()
            .position(|f| *f == fault)
            .expect("every fault is listed");
        self.faults[i].load(Ordering::Relaxed)
    }

    /// Whether a warning for a fault of this kind at `now` is logged (see
    /// [`Fault::report`]): `Some(n)` with the `n` held back since the last
    /// one, or `None`.
    pub fn fault_warning_due(&self, fault: Fault, now: Instant) -> Option<u64> {
        let i = Fault::ALL
            .iter()
            .position(|f| *f == fault)
            .expect("every fault is listed");
        self.fault_warnings[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(now, FAULT_WARNING_INTERVAL)
    }

    /// Count one completed TLS handshake.
    pub fn count_tls_handshake(&self, side: TlsSide) {
        self.tls_handshakes[side.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes completed on one side.
    pub fn tls_handshakes(&self, side: TlsSide) -> u64 {
        self.tls_handshakes[side.index()].load(Ordering::Relaxed)
    }

    /// Count one failed TLS handshake.
    pub fn count_tls_handshake_failure(&self, side: TlsSide, reason: HandshakeReason) {
        self.tls_handshake_failures[side.index()][reason_index(reason)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes failed on one side for one reason.
    pub fn tls_handshake_failures(&self, side: TlsSide, reason: HandshakeReason) -> u64 {
        self.tls_handshake_failures[side.index()][reason_index(reason)].load(Ordering::Relaxed)
    }

    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, c) in [
            ("sipadmit_received_total", &self.received),
            ("sipadmit_keepalives_total", &self.keepalives),
            ("sipadmit_requests_relayed_total", &self.requests_relayed),
            ("sipadmit_responses_relayed_total", &self.responses_relayed),
            ("sipadmit_local_responses_total", &self.local_responses),
            ("sipadmit_flagged_total", &self.flagged),
            ("sipadmit_rejected_total", &self.rejected),
            ("sipadmit_retransmissions_total", &self.retransmissions),
            (
                "sipadmit_registers_too_many_contacts_total",
                &self.too_many_contacts,
            ),
            (
                "sipadmit_registration_contacts_not_learned_total",
                &self.contacts_not_learned,
            ),
            (
                "sipadmit_registrations_evicted_total",
                &self.registrations_evicted,
            ),
        ] {
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "sipadmit_dropped_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.drops(r)
            );
        }
        for side in TlsSide::ALL {
            let _ = writeln!(
                out,
                "sipadmit_tls_handshakes_total{{side=\"{}\"}} {}",
                side.as_str(),
                self.tls_handshakes(side)
            );
            for reason in HandshakeReason::ALL {
                let _ = writeln!(
                    out,
                    "sipadmit_tls_handshake_failures_total{{side=\"{}\",reason=\"{}\"}} {}",
                    side.as_str(),
                    reason.as_str(),
                    self.tls_handshake_failures(side, reason)
                );
            }
        }
        for f in Fault::ALL {
            let _ = writeln!(
                out,
                "sipadmit_transport_faults_total{{kind=\"{}\"}} {}",
                f.as_str(),
                self.faults(f)
            );
        }
        out
    }
}

fn reason_index(reason: HandshakeReason) -> usize {
    HandshakeReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is listed")
}
