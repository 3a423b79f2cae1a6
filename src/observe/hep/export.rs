//! The exporter task: takes what the dispatcher queued, encodes it into
//! one reused buffer ([`super::encode`]) and sends it to the collector, a
//! batch at a time. The I/O edge of HEP export.
//!
//! - `udp:` one datagram per packet on a connected socket, a batch per
//!   `sendmmsg` call. A send failed by the refusal of an earlier datagram
//!   (an ICMP port unreachable: nothing listened) is counted and tried
//!   again once, so that the packet is not lost to it; any other failed
//!   send costs that packet.
//! - `tcp:` one connection, packets written back to back, a batch per
//!   write. A collector that refuses, resets, closes or stops reading
//!   (nothing written for [`TcpTiming::write_timeout`]) is dropped, logged,
//!   and connected again after a backoff (0.5 s, doubling, at most 30 s);
//!   meanwhile what comes is counted as not sent.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::encode::{self, EncodeError, Header, PayloadType};
use super::{Body, Item, Queue, WARNING_INTERVAL};
use crate::config::{Endpoint, HepSettings};
use crate::observe::metrics::{HepDrop, HepPayload, Metrics};
use crate::vocabulary::{Transport, WarningWindow};

/// How long the exporter lets packets gather after the first of a batch,
/// so that a busy proxy wakes it (and sends, and writes to a TCP
/// collector) once per batch rather than once per message.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The UDP socket toward the collector could not be opened.
    #[error("cannot open a UDP socket to the HEP collector {collector} (hep.collector)")]
    Socket {
        /// `hep.collector`.
        collector: Endpoint,
        /// The error (the source, not repeated in this message).
        #[source]
        source: std::io::Error,
    },
}

/// How a TCP collector is connected and written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTiming {
    /// A connect not finished within this is a failure.
    pub connect_timeout: Duration,
    /// A write that makes no progress for this long means the collector
    /// stopped reading: the connection is dropped and made again.
    pub write_timeout: Duration,
    /// The first wait before connecting again; doubled after each failure.
    pub first_backoff: Duration,
    /// The longest wait before connecting again.
    pub max_backoff: Duration,
}

impl TcpTiming {
    /// 2 s to connect, 5 s without progress on a write, backoff 0.5 s
    /// doubling up to 30 s.
    pub const DEFAULT: Self = Self {
        connect_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
    };
}

/// What every packet carries and how "this instance" is written.
#[derive(Debug, Clone)]
pub(super) struct Encoding {
    capture_id: u32,
    auth_key: Option<Vec<u8>>,
    /// The addresses sipadmit advertises, by transport.
    locals: Vec<(Transport, SocketAddr)>,
}

impl Encoding {
    pub(super) fn new(settings: &HepSettings, locals: Vec<(Transport, SocketAddr)>) -> Self {
        Self {
            capture_id: settings.capture_id,
            auth_key: settings.auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
            locals,
        }
    }

    /// This instance's address for `transport` facing `peer`: the first
    /// advertised one of that transport and family, else of that transport,
    /// else any.
    fn local(&self, transport: Transport, peer: SocketAddr) -> SocketAddr {
        let of = |t: Option<Transport>| {
            self.locals
                .iter()
                .filter(move |(lt, _)| t.is_none_or(|t| *lt == t))
                .map(|(_, a)| *a)
        };
        of(Some(transport))
            .find(|a| a.is_ipv4() == peer.is_ipv4())
            .or_else(|| of(Some(transport)).next())
            .or_else(|| of(None).next())
            .unwrap_or_else(|| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0))
    }

    /// Append `item`'s packet to `out`.
    fn encode(&self, item: &Item, out: &mut Vec<u8>) -> Result<HepPayload, EncodeError> {
        let (seconds, microseconds) = encode::timestamp(item.at);
        let unspecified = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let peer = item.source.or(item.destination).unwrap_or(unspecified);
        let here = || self.local(item.transport, peer);
        let mut header = Header {
            payload_type: PayloadType::Sip,
            transport: item.transport,
            source: item.source.unwrap_or_else(here),
            destination: item.destination.unwrap_or_else(here),
            seconds,
            microseconds,
            capture_id: self.capture_id,
            auth_key: self.auth_key.as_deref(),
            correlation_id: None,
        };
        match &item.body {
            Body::Sip(bytes) => {
                encode::encode(&header, bytes, out)?;
                Ok(HepPayload::Sip)
            }
            Body::Decision { text, call_id } => {
                let (call_id, line) = text.split_at(*call_id);
                header.payload_type = PayloadType::Log;
                header.correlation_id = Some(call_id);
                encode::encode(&header, line, out)?;
                Ok(HepPayload::Decision)
            }
        }
    }
}

/// The exporter task (none when export is off).
#[derive(Debug)]
pub struct Exporter {
    task: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Open the way to `collector` (the UDP socket now; a TCP connection
    /// on the task, as `timing` says) and start the task over `items`.
    pub(super) fn spawn(
        collector: Endpoint,
        encoding: Encoding,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        timing: TcpTiming,
    ) -> Result<Self, ExportError> {
        let sink = match collector.transport {
            Transport::Udp => Sink::Udp(
                udp_socket(collector.addr)
                    .map_err(|source| ExportError::Socket { collector, source })?,
            ),
            _ => Sink::Tcp(TcpLink::new(collector, timing)),
        };
        info!(collector = %collector, "exporting HEPv3 to the collector");
        let export = Export {
            queue,
            encoding,
            sink,
            collector,
            metrics,
            batch: Vec::new(),
            packets: Vec::new(),
            ends: Vec::new(),
            warnings: WarningWindow::default(),
        };
        Ok(Self {
            task: Some(tokio::spawn(export.run())),
        })
    }

    /// No task: export is off.
    pub(super) fn idle() -> Self {
        Self { task: None }
    }

    /// Wait for the task to send what is queued and end (it ends once every
    /// [`super::Hep`] handle is dropped), at most `deadline`; then stop it.
    /// At once when export is off.
    pub async fn finish(self, deadline: Duration) {
        let Some(mut task) = self.task else {
            return;
        };
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            warn!(
                deadline_ms = deadline.as_millis() as u64,
                "HEP exporter did not finish in time: packets still queued were not sent"
            );
        }
    }
}

/// A connected, non-blocking UDP socket toward `collector`.
fn udp_socket(collector: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if collector.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(collector)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Where packets go.
enum Sink {
    Udp(UdpSocket),
    Tcp(TcpLink),
}

/// The exporter's state: the queue it reads, its buffers (reused from
/// batch to batch) and where it sends.
struct Export {
    queue: Arc<Queue>,
    encoding: Encoding,
    sink: Sink,
    collector: Endpoint,
    metrics: Arc<Metrics>,
    batch: Vec<Item>,
    /// The batch's packets, back to back.
    packets: Vec<u8>,
    /// Where each packet of `packets` ends, and what it carries.
    ends: Vec<(usize, HepPayload)>,
    /// Rate limit of the warnings about UDP send failures and packets too
    /// large to encode.
    warnings: WarningWindow,
}

impl Export {
    /// Until every handle is gone: wait for a first item, let more gather
    /// for [`BATCH_WINDOW`], take them all, encode them, send them. Once
    /// closed, what is left is sent at once.
    async fn run(mut self) {
        loop {
            self.queue.ready.notified().await;
            if !self.queue.lock().closed {
                tokio::time::sleep(BATCH_WINDOW).await;
            }
            let closed = {
                let mut pending = self.queue.lock();
                std::mem::swap(&mut pending.items, &mut self.batch);
                pending.bytes = 0;
                pending.closed
            };
            self.encode_batch();
            self.send_batch().await;
            if closed {
                debug!("HEP exporter stopped: no handle left");
                return;
            }
        }
    }

    /// Encode the batch into `packets`; a packet too large to encode is
    /// dropped, counted and warned.
    fn encode_batch(&mut self) {
        self.packets.clear();
        self.ends.clear();
        for item in self.batch.drain(..) {
            match self.encoding.encode(&item, &mut self.packets) {
                Ok(payload) => self.ends.push((self.packets.len(), payload)),
                Err(e) => {
                    self.metrics.count_hep_dropped(HepDrop::TooLarge);
                    if let Some(not_logged) = self
                        .warnings
                        .admit(std::time::Instant::now(), WARNING_INTERVAL)
                    {
                        warn!(error = %e, not_logged, "HEP packet dropped: too large for the format");
                    }
                }
            }
        }
    }

    /// Send the encoded batch; count what went out and what did not.
    async fn send_batch(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        match &mut self.sink {
            Sink::Udp(socket) => {
                let failed = send_datagrams(socket, &self.packets, &self.ends, &self.metrics).await;
                if let Some(e) = failed {
                    let due = self
                        .warnings
                        .admit(std::time::Instant::now(), WARNING_INTERVAL);
                    if let Some(not_logged) = due {
                        let what = if is_refusal(&e) {
                            "HEP collector refused packets sent to it (nothing listens at its address): they were lost"
                        } else {
                            "HEP packets not sent to the collector"
                        };
                        warn!(collector = %self.collector, error = %e, not_logged, "{what}");
                    }
                }
            }
            Sink::Tcp(link) => {
                if link.deliver(&self.packets).await {
                    for &(_, payload) in &self.ends {
                        self.metrics.count_hep_exported(payload, 1);
                    }
                } else {
                    Metrics::add(&self.metrics.hep_send_failures, self.ends.len());
                }
            }
        }
    }
}

/// Send each packet of `packets` (ending at `ends`) as a datagram on the
/// connected `socket`, as many per system call as it takes
/// (`sendmmsg`); count what went out, the collector's refusals reported,
/// and the packets not sent; the last error is returned.
///
/// An ICMP port unreachable for a datagram sent earlier leaves one error
/// pending on the socket (several collapse into one), which fails the next
/// send and is consumed by it ([`is_refusal`]): that packet was not sent,
/// and is tried once more, so that a collector that is up again never
/// loses a packet to an earlier one's refusal (the same for a host or
/// network unreachable, [`may_report_an_earlier_datagram`]). (Met after the first packet
/// of a call, the error is consumed without being reported: `sendmmsg`
/// returns the count sent, and the next call sends the rest.) A packet
/// whose send fails otherwise (too large for UDP, refused by a firewall),
/// or fails again (a route missing here, not an earlier datagram's
/// error), is skipped.
async fn send_datagrams(
    socket: &UdpSocket,
    packets: &[u8],
    ends: &[(usize, HepPayload)],
    metrics: &Metrics,
) -> Option<std::io::Error> {
    let bounds: Vec<(usize, usize)> = ends
        .iter()
        .scan(0, |start, &(end, _)| {
            Some((std::mem::replace(start, end), end))
        })
        .collect();
    let mut next = 0;
    // The packet sent again after a refusal of an earlier one.
    let mut retried = None;
    let mut failed = None;
    while next < bounds.len() {
        let sent = match socket.writable().await {
            Ok(()) => socket.try_io(Interest::WRITABLE, || {
                send_many(socket, packets, &bounds[next..])
            }),
            Err(e) => Err(e),
        };
        match sent {
            Ok(n) => {
                for &(_, payload) in &ends[next..next + n] {
                    metrics.count_hep_exported(payload, 1);
                }
                next += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                if is_refusal(&e) {
                    Metrics::inc(&metrics.hep_collector_refusals);
                }
                if may_report_an_earlier_datagram(&e) && retried != Some(next) {
                    retried = Some(next);
                } else {
                    Metrics::inc(&metrics.hep_send_failures);
                    next += 1;
                }
                failed = Some(e);
            }
        }
    }
    failed
}

/// Whether a failed send on a connected UDP socket reports that the
/// collector refused a datagram sent before (an ICMP port unreachable came
/// back: nothing listened), not a failure of the packet being sent.
fn is_refusal(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::ConnectionRefused
}

/// Whether a failed send may report an ICMP error that came back for a
/// datagram sent before (port, host or network unreachable), left pending
/// on the socket, rather than a failure of the packet being sent: such a
/// packet is tried once more.
pub(super) fn may_report_an_earlier_datagram(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable};
    matches!(
        error.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable
    )
}

/// One `sendmmsg` of the packets at `bounds` (offsets into `packets`):
/// how many were sent (at least one, or an error for the first).
fn send_many(
    socket: &UdpSocket,
    packets: &[u8],
    bounds: &[(usize, usize)],
) -> std::io::Result<usize> {
    let slices: Vec<[IoSlice<'_>; 1]> = bounds
        .iter()
        .map(|&(start, end)| [IoSlice::new(&packets[start..end])])
        .collect();
    let addresses: Vec<Option<SockaddrStorage>> = vec![None; slices.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices,
        &addresses,
        [],
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    Ok(sent.count())
}

/// The connection to a TCP collector, made again after a failure once its
/// backoff has passed.
struct TcpLink {
    /// The collector (`tcp:` address), as its log lines name it.
    collector: Endpoint,
    timing: TcpTiming,
    stream: Option<TcpStream>,
    /// The wait after the next failure.
    backoff: Duration,
    /// No connect before this.
    retry_at: Option<Instant>,
}

impl TcpLink {
    fn new(collector: Endpoint, timing: TcpTiming) -> Self {
        Self {
            collector,
            timing,
            stream: None,
            backoff: timing.first_backoff,
            retry_at: None,
        }
    }

    /// Write `bytes` whole, connecting first if need be: whether they were
    /// written. Never waits longer than a connect and a write timeout.
    async fn deliver(&mut self, bytes: &[u8]) -> bool {
        if !self.usable() && !self.connect().await {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        let write = tokio::time::timeout(self.timing.write_timeout, stream.write_all(bytes));
        let error = match write.await {
            Ok(Ok(())) => {
                self.backoff = self.timing.first_backoff;
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "the collector stopped reading (nothing written for {} ms)",
                self.timing.write_timeout.as_millis()
            ),
        };
        self.stream = None;
        let retry_in = self.wait_before_retry();
        warn!(collector = %self.collector, error, retry_in_ms = retry_in.as_millis() as u64, "HEP collector connection lost: reconnecting");
        false
    }

    /// Whether the connection is there and the collector has not closed
    /// it (a collector sends nothing on it: anything to read is its end).
    fn usable(&mut self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            closed => {
                let error = match closed {
                    Ok(0) => "closed by the collector".to_owned(),
                    Ok(_) => "the collector sent data".to_owned(),
                    Err(e) => e.to_string(),
                };
                info!(collector = %self.collector, error, "HEP collector connection ended: reconnecting");
                self.stream = None;
                false
            }
        }
    }

    /// Connect, unless the backoff since the last failure has not passed.
    async fn connect(&mut self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let connect = tokio::time::timeout(
            self.timing.connect_timeout,
            TcpStream::connect(self.collector.addr),
        );
        let error = match connect.await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                info!(collector = %self.collector, "HEP collector connected");
                self.stream = Some(stream);
                self.retry_at = None;
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {} ms",
                self.timing.connect_timeout.as_millis()
            ),
        };
        let retry_in = self.wait_before_retry();
        warn!(collector = %self.collector, error, retry_in_ms = retry_in.as_millis() as u64, "HEP collector unreachable: packets are counted as not sent until it is back");
        false
    }

    /// Set the next connect after the current backoff, and double it.
    fn wait_before_retry(&mut self) -> Duration {
        let wait = self.backoff;
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(self.timing.max_backoff);
        wait
    }
}
