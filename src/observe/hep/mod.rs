//! HEPv3 export to a Homer collector (`[hep]`): a copy of every SIP
//! message sipadmit receives and sends (HEP type 1; over TLS the decrypted
//! message) and of every decision record (a HEP log, type 100, correlated
//! with the call by its Call-ID), so that Homer shows the verdict inside
//! the call.
//!
//! ```text
//! dispatcher ── Hep::received / sent / decision ──► bounded queue ──► exporter task ──► collector
//!               (never blocks, no I/O, no HEP          (QUEUE_PACKETS,    (batches; encodes     (udp: or tcp:,
//!                encoding: full: dropped, counted,      QUEUE_BYTES)       into one buffer)      reconnected with backoff)
//!                warned)
//! ```
//!
//! The message path only clones the message's [`Bytes`] (a reference
//! count) and queues it (a decision record as its JSON line, one buffer);
//! the wire format ([`encode`]) is written on the exporter task. A collector that is down, slow or stalled costs the
//! proxy a counter (`sipadmit_hep_send_failures_total`, or
//! `sipadmit_hep_dropped_total{reason="queue_full"}` when the queue
//! fills), never a wait. Messages from sources the transports dropped
//! unparsed (banned, or over their rate limit with `over_limit = "drop"`)
//! never reach the dispatcher and are not mirrored either. Nor is a HEP
//! packet that arrives at a SIP listener ([`is_hep_packet`]: a capture
//! agent, such as another sipadmit, whose collector is this SIP port):
//! mirrored, it would go back to a collector that may be that agent's SIP
//! port, and the two would pass it to and fro for ever.

pub mod encode;
mod export;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::warn;

use crate::config::{HepSettings, Mirror};
use crate::observe::decision_log::DecisionRecord;
use crate::observe::metrics::{HepDrop, Metrics};
use crate::vocabulary::{Inbound, LocalAddr, Transport, WarningWindow};
pub use export::{ExportError, Exporter, TcpTiming};

/// Packets the export queue holds before new ones are dropped: about 1.5 s
/// of a full load of 1,000 REGISTERs per second mirrored whole (four
/// messages and a decision each).
pub const QUEUE_PACKETS: usize = 8192;
/// Bytes of messages the export queue holds before new ones are dropped:
/// 16 MiB. A decision counts as its JSON line.
pub const QUEUE_BYTES: usize = 16 << 20;
/// At most one "HEP packets dropped" warning per 10 s (each drop is counted).
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Room made for a decision record's JSON line at once (the line of a
/// Lync REGISTER is about 700 bytes).
const DECISION_LINE_BYTES: usize = 1024;

/// The handle the dispatcher mirrors through. Cheap to clone; every method
/// returns at once (no I/O; a lock held for one push). The default handle
/// is off: it mirrors nothing.
#[derive(Clone, Default)]
pub struct Hep {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Hep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => f
                .debug_struct("Hep")
                .field("mirror", &inner.mirror)
                .finish_non_exhaustive(),
            None => f.write_str("Hep(off)"),
        }
    }
}

/// State the handles share. Dropped with the last handle, which closes the
/// queue: the exporter then sends what is left and ends.
struct Inner {
    mirror: Mirror,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// Rate limit of the warnings about drops.
    drops: Mutex<WarningWindow>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_one();
    }
}

/// The queue between the handles and the exporter: a push per item, a
/// swap of the whole vector per batch, each under one short lock.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the exporter: the first item after it took a batch, or the
    /// close.
    ready: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    items: Vec<Item>,
    /// What the items count as against [`QUEUE_BYTES`].
    bytes: usize,
    /// Every handle is gone.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One thing to export, as the message path hands it over (not encoded).
#[derive(Debug)]
struct Item {
    /// When it was received, sent or decided.
    at: SystemTime,
    /// The transport the message went over (a decision's: its request's).
    transport: Transport,
    /// Who sent it; `None`: this instance (see [`Item::destination`]).
    source: Option<SocketAddr>,
    /// Who it went to; `None`: this instance, at the address it advertises
    /// for `transport` in the family of the other end.
    destination: Option<SocketAddr>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// A SIP message as it went over the wire.
    Sip(Bytes),
    /// A decision record: its Call-ID's bytes (the first `call_id`), then
    /// its JSON line, in one buffer.
    Decision { text: Vec<u8>, call_id: usize },
}

impl Item {
    /// What it counts as against [`QUEUE_BYTES`].
    fn cost(&self) -> usize {
        match &self.body {
            Body::Sip(bytes) => bytes.len(),
            Body::Decision { text, .. } => text.len(),
        }
    }
}

impl Hep {
    /// A handle that mirrors nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Start exporting as `settings` say (nothing without a collector or
    /// with `mirror = "none"`: the handle is then off and the exporter
    /// idle, no task running).
    /// `locals` are the addresses sipadmit advertises, by transport: the
    /// address of "this instance" in what it sends. Opens the UDP socket
    /// here (so a collector nothing can be sent to fails the start); a TCP
    /// collector is connected by the exporter task, which must run on a
    /// Tokio runtime.
    pub fn start(
        settings: &HepSettings,
        locals: Vec<(Transport, SocketAddr)>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Exporter), ExportError> {
        Self::start_with(settings, locals, metrics, TcpTiming::DEFAULT)
    }

    /// [`Hep::start`] with a TCP collector connected and written to as
    /// `timing` says.
    fn start_with(
        settings: &HepSettings,
        locals: Vec<(Transport, SocketAddr)>,
        metrics: Arc<Metrics>,
        timing: TcpTiming,
    ) -> Result<(Self, Exporter), ExportError> {
        let Some(collector) = settings.exporting_to() else {
            return Ok((Self::off(), Exporter::idle()));
        };
        let queue = Arc::new(Queue::default());
        let exporter = Exporter::spawn(
            collector,
            export::Encoding::new(settings, locals),
            queue.clone(),
            metrics.clone(),
            timing,
        )?;
        let inner = Inner {
            mirror: settings.mirror,
            queue,
            metrics,
            drops: Mutex::new(WarningWindow::default()),
        };
        Ok((
            Self {
                inner: Some(Arc::new(inner)),
            },
            exporter,
        ))
    }

    /// Whether SIP messages are mirrored (`mirror = "all"`).
    pub fn mirrors_messages(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.mirror.messages())
    }

    /// Mirror a message as it arrived; never a HEP packet
    /// ([`is_hep_packet`]), which is no SIP message and whose copy could
    /// come back to be mirrored again (see the module's documentation).
    pub fn received(&self, inbound: &Inbound) {
        let Some(inner) = self.inner.as_ref().filter(|i| i.mirror.messages()) else {
            return;
        };
        if is_hep_packet(&inbound.bytes) {
            return;
        }
        inner.offer(Item {
            at: SystemTime::now(),
            transport: inbound.transport,
            source: Some(inbound.source.0),
            destination: Some(inbound.local.0),
            body: Body::Sip(inbound.bytes.clone()),
        });
    }

    /// Mirror a message handed to the transport for `peer` over
    /// `transport`, from `local` (`None`: the address sipadmit advertises
    /// for that transport).
    pub fn sent(
        &self,
        transport: Transport,
        local: Option<LocalAddr>,
        peer: SocketAddr,
        bytes: &Bytes,
    ) {
        let Some(inner) = self.inner.as_ref().filter(|i| i.mirror.messages()) else {
            return;
        };
        inner.offer(Item {
            at: SystemTime::now(),
            transport,
            source: local.map(|local| local.0),
            destination: Some(peer),
            body: Body::Sip(bytes.clone()),
        });
    }

    /// Mirror a decision record about a message that arrived at `local`
    /// (a HEP log from the record's source to `local`, correlated by its
    /// Call-ID). Its JSON line is written here, into one buffer: cheaper
    /// than a copy of the record's dozen strings, and written once either
    /// way.
    pub fn decision(&self, record: &DecisionRecord, local: LocalAddr) {
        let Some(inner) = self.inner.as_ref().filter(|i| i.mirror.decisions()) else {
            return;
        };
        let call_id = record.call_id.len();
        let mut text = Vec::with_capacity(call_id + DECISION_LINE_BYTES);
        text.extend_from_slice(record.call_id.as_bytes());
        serde_json::to_writer(&mut text, record).expect("a decision record serializes");
        inner.offer(Item {
            at: SystemTime::now(),
            transport: record.transport,
            source: Some(record.source),
            destination: Some(local.0),
            body: Body::Decision { text, call_id },
        });
    }
}

/// Whether `bytes` start as a HEPv3 packet does
/// ([`crate::sip::framing::hep_packet_length`]).
pub fn is_hep_packet(bytes: &[u8]) -> bool {
    crate::sip::framing::hep_packet_length(bytes).is_some()
}

impl Inner {
    /// Queue `item` (waking the exporter when it is the first since its
    /// last batch), or drop it (counted, warned) when the queue is full.
    fn offer(&self, item: Item) {
        let cost = item.cost();
        let mut pending = self.queue.lock();
        let full = pending.items.len() >= QUEUE_PACKETS || pending.bytes + cost > QUEUE_BYTES;
        if !full {
            let first = pending.items.is_empty();
            pending.items.push(item);
            pending.bytes += cost;
            drop(pending);
            if first {
                self.queue.ready.notify_one();
            }
            return;
        }
        drop(pending);
        self.metrics.count_hep_dropped(HepDrop::QueueFull);
        let now = Instant::now();
        let due = self
            .drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(now, WARNING_INTERVAL);
        if let Some(not_logged) = due {
            warn!(
                not_logged,
                dropped_total = self.metrics.hep_dropped(HepDrop::QueueFull),
                queue_packets = QUEUE_PACKETS,
                queue_bytes = QUEUE_BYTES,
                "HEP export queue full (the collector or the exporter does not keep up): packets dropped"
            );
        }
    }
}
