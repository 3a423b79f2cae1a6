//! Stage 1, transport: sockets in and out. Knows framing, not SIP
//! semantics: every message goes to its worker's dispatcher as an
//! [`Event`], and every outbound message comes back through [`Senders`],
//! which never wait for a connection.
//!
//! - `udp`: a worker's datagrams, received in its dispatcher's own loop
//!   ([`udp::Datagrams`]), and a task per UDP socket for its ICMP errors;
//! - `stream`: ONE server for connection-oriented transports, generic over
//!   `AsyncRead + AsyncWrite` (TCP; TLS runs its handshake in the
//!   connection's task, then the same framing, writer and timeouts);
//! - `connections`: the table of open connections, which checks the peer on
//!   every send;
//! - `upstream`: the link to a stream upstream, a task with a bounded queue;
//! - `admission`: per-source rate limits and bans, checked by [`admit`]
//!   for every message and by `stream::accept` for every connection;
//! - `slots`: the connection slots of every listener, a share reserved for
//!   trusted sources and known flows, and the eviction of half-open
//!   connections when they are all in use;
//! - `tls`: the TLS handshakes. The shared vocabulary (transports, ids,
//!   faults, the inbound message) is in [`crate::vocabulary`].
//!
//! Faults of one datagram or connection are counted and logged in one
//! place ([`Fault::report`]) and never end a loop; only an unrecoverable
//! socket error does.

pub mod admission;
pub mod answers;
pub mod connections;
pub mod slots;
pub mod spread;
pub mod stream;
pub mod stun;
pub mod tls;
pub mod udp;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::observe::metrics::DropReason;

use crate::config::{Limits, OverLimit, UpstreamSources};
use crate::observe::metrics::Metrics;
pub use crate::vocabulary::{
    BootId, ConnectionId, Fault, FlowId, Transport, WarningWindow, FAULT_WARNING_INTERVAL,
};
use crate::vocabulary::{Inbound, LocalAddr, SourceRefusal};
use admission::{Admission, Verdict};
pub use connections::Connections;
use upstream::{Outgoing, UpstreamBacklog, UpstreamLink};

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No socket of the needed transport and address family.
    #[error("no {transport} socket for {addr}")]
    NoSocket {
        /// Transport wanted.
        transport: Transport,
        /// Destination.
        addr: SocketAddr,
    },
    /// The connection is gone.
    #[error("connection {0} is gone")]
    ConnectionGone(ConnectionId),
    /// The connection is open, but to another peer than the one the message
    /// is for: nothing was written.
    #[error("connection {connection} is open to {actual}, not to {expected}; nothing written")]
    OtherPeer {
        /// The connection.
        connection: ConnectionId,
        /// The peer the message is for.
        expected: SocketAddr,
        /// The connection's peer.
        actual: SocketAddr,
    },
    /// A stream flow that is not this instance's (another boot id, or
    /// none): nothing was written.
    #[error("the stream flow to {0} is not this instance's; nothing written")]
    ForeignFlow(SocketAddr),
    /// The peer stopped reading (nothing written to it for
    /// [`connections::WRITE_TIMEOUT`] with bytes waiting); closed.
    #[error("connection {0} stopped reading; closed")]
    QueueFull(ConnectionId),
    /// The connection's writer queue is at `limits.write_queue_bytes`; its
    /// peer still reads, so it stays open, but this message is not sent.
    #[error("the writer queue of connection {0} is full; message not sent")]
    WriteQueueFull(ConnectionId),
    /// The socket reported an error.
    #[error("sending to {addr}: {source}")]
    Io {
        /// Destination.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The link to the stream upstream could not connect (refused, timed
    /// out, or failing fast after a recent failure).
    #[error("upstream {addr} unreachable: {cause}")]
    UpstreamUnreachable {
        /// The upstream.
        addr: SocketAddr,
        /// Why the last connect failed (shared by every message it failed).
        cause: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The queue of the link to the stream upstream is at
    /// `limits.upstream_queue_bytes` (it is connecting, or the upstream
    /// does not keep up): answered `503` with rule `proxy.upstream-busy`.
    #[error("the queue to upstream {0} is full (limits.upstream_queue_bytes)")]
    UpstreamQueueFull(SocketAddr),
    /// The connection to the stream upstream closed with the request
    /// written on it and nothing sent back since (before anything at all
    /// when the registrar refused sipadmit's client certificate after a
    /// TLS 1.3 handshake, say): it gets no answer on that connection.
    #[error("the connection to upstream {0} closed before the registrar answered the request")]
    UpstreamClosedUnanswered(SocketAddr),
    /// A drain ran out of time with the request written to the stream
    /// upstream and not answered: answered `408 Request Timeout` (rule
    /// `proxy.request-timeout`).
    #[error("sipadmit stopped waiting for upstream {0} to answer the request (the drain ran out)")]
    UpstreamGivenUp(SocketAddr),
    /// The link to the stream upstream has stopped (shutting down).
    #[error("the link to upstream {0} has stopped")]
    UpstreamStopped(SocketAddr),
}

/// What the transports hand the dispatcher.
#[derive(Debug)]
pub enum Event {
    /// A message arrived.
    Received(Inbound),
    /// A stream client's message arrived while the registrar is reached
    /// over a stream: it holds its room in the queue to the registrar
    /// until the dispatcher takes it (see
    /// [`upstream::UpstreamBacklog::room_for_clients`]).
    HoldingRoom {
        /// The message.
        inbound: Inbound,
        /// Its room, given back when dropped.
        room: upstream::UpstreamRoom,
    },
    /// A message arrived from a source over its rate limit: answered `503`
    /// (a request) or, when it got its source banned, dropped and recorded.
    Refused {
        /// The message.
        inbound: Inbound,
        /// Why.
        refusal: SourceRefusal,
    },
    /// A message the dispatcher gave the stream upstream's link was not
    /// delivered (the link could not connect, or its connection was gone):
    /// `inbound` is the message it was relayed from, so a request can be
    /// answered `503`.
    Undelivered {
        /// The message as it arrived from the client.
        inbound: Inbound,
        /// Why it was not delivered.
        error: SendError,
    },
}

impl Event {
    /// The message the event is about.
    pub fn inbound(&self) -> &Inbound {
        match self {
            Self::Received(inbound)
            | Self::HoldingRoom { inbound, .. }
            | Self::Refused { inbound, .. }
            | Self::Undelivered { inbound, .. } => inbound,
        }
    }
}

impl Fault {
    /// The fault a failed send counts as: a full queue to the upstream is
    /// its own kind; every other failure is [`Fault::Send`].
    pub fn of_send(error: &SendError) -> Self {
        match error {
            SendError::UpstreamQueueFull(_) => Self::UpstreamQueueFull,
            SendError::WriteQueueFull(_) => Self::WriteQueueFull,
            _ => Self::Send,
        }
    }

    /// Count and log one fault: the one place transport faults are logged.
    /// Peers can trigger them, so warnings are rate-limited: at most one
    /// per kind every [`FAULT_WARNING_INTERVAL`], saying how many of that
    /// kind were not logged since the previous one (every fault is still
    /// counted). Routine faults are logged at debug level, not limited.
    pub fn report(self, metrics: &Metrics, peer: Option<SocketAddr>, error: &dyn fmt::Display) {
        metrics.count_fault(self);
        let peer = peer.map(tracing::field::display);
        if self.is_routine() {
            debug!(fault = self.as_str(), peer, error = %error, "{}", self.summary());
            return;
        }
        let Some(not_logged) = metrics.fault_warning_due(self, std::time::Instant::now()) else {
            return;
        };
        warn!(
            fault = self.as_str(),
            peer,
            error = %error,
            not_logged,
            total = metrics.faults(self),
            "{}",
            self.summary()
        );
    }
}

/// Whether a socket error means the socket itself is unusable (its loop
/// ends); every other error costs one datagram or one accept.
pub fn is_unrecoverable(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotConnected | std::io::ErrorKind::ConnectionAborted
    )
}

/// What every transport task of a worker shares (the workers differ only
/// in where their events go).
#[derive(Debug, Clone)]
pub struct TransportContext {
    /// Live stream connections (writers).
    pub connections: Arc<Connections>,
    /// Where messages and undelivered messages go: the dispatcher.
    pub events: mpsc::Sender<Event>,
    /// Limits (message size, idle timeout, connection slots).
    pub limits: Limits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Stop signal.
    pub shutdown: CancellationToken,
    /// Connection slots shared by every listener (`limits.max_connections`,
    /// `limits.reserved_connections` of them for trusted sources and known
    /// flows).
    pub slots: Arc<slots::ConnectionSlots>,
    /// Sources whose messages count as the registrar's, besides what
    /// arrives on the connections this proxy opened to it.
    pub upstream_sources: UpstreamSources,
    /// Per-source rate limits and bans.
    pub admission: Arc<Admission>,
    /// Bytes stream connections may buffer together
    /// (`limits.read_buffer_budget_bytes`).
    pub read_budget: Arc<stream::ReadBudget>,
    /// The registrar's address when it is a UDP upstream: ICMP errors for
    /// datagrams sent there count as [`Fault::UpstreamUnreachable`].
    pub udp_upstream: Option<SocketAddr>,
    /// What waits on the link to a stream upstream (`None` for a UDP
    /// upstream): client connections wait for room in its queue before
    /// handing a message on; a drain waits for its unanswered requests.
    pub upstream_backlog: Option<Arc<upstream::UpstreamBacklog>>,
}

/// What became of one message after its source's rate limit.
#[derive(Debug)]
pub enum Admitted {
    /// Hand the dispatcher this event; `false`: then stop reading the
    /// connection it came on (its source was banned just now).
    Event(Event, bool),
    /// Dropped (counted): over the limit with `over_limit = "drop"`, or a
    /// response that cannot be answered 503.
    Dropped,
    /// The source is banned: dropped unparsed (counted); close its connection.
    Banned,
}

/// Check a message against its source's rate limit (the one place both
/// UDP and streams do it): what to hand the dispatcher, if anything.
pub fn admit(ctx: &TransportContext, inbound: Inbound) -> Admitted {
    if inbound.from_registrar() {
        return Admitted::Event(Event::Received(inbound), true);
    }
    match ctx.admission.message(
        inbound.source.0,
        inbound.transport,
        std::time::Instant::now(),
    ) {
        Verdict::Pass => Admitted::Event(Event::Received(inbound), true),
        Verdict::Banned => {
            count_received(ctx, inbound.transport, &inbound.bytes);
            ctx.metrics.count_drop(DropReason::Banned);
            Admitted::Banned
        }
        Verdict::OverLimit {
            banned: true,
            generation,
            ..
        } => {
            let refusal = SourceRefusal::Banned { generation };
            Admitted::Event(Event::Refused { inbound, refusal }, false)
        }
        Verdict::OverLimit {
            action: OverLimit::Reject,
            generation,
            ..
        } if !inbound.is_response() => {
            let refusal = SourceRefusal::OverLimit {
                retry_after_secs: ctx.admission.retry_after_secs(),
                generation,
            };
            Admitted::Event(Event::Refused { inbound, refusal }, true)
        }
        Verdict::OverLimit { .. } => {
            count_received(ctx, inbound.transport, &inbound.bytes);
            ctx.metrics.count_drop(DropReason::RateLimited);
            Admitted::Dropped
        }
    }
}

/// Count a message dropped here (a banned source's, one over its rate
/// limit), before the core (which counts what reaches it), as received:
/// so that those drops are a part of what was received.
fn count_received(ctx: &TransportContext, transport: Transport, bytes: &[u8]) {
    let kind = crate::observe::metrics::MessageKind::of(bytes);
    ctx.metrics.count_received(transport, kind);
}

#[cfg(test)]
impl TransportContext {
    /// A context for unit tests: default limits but `max_connections`
    /// slots and a 60 s idle timeout; nothing counts as the registrar.
    pub(crate) fn for_tests(events: mpsc::Sender<Event>, max_connections: usize) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let limits = Self::test_limits(max_connections);
        Arc::new(Self {
            connections: Arc::new(Connections::default()),
            events,
            limits,
            admission: Arc::new(Admission::new(
                crate::config::RateLimit {
                    trusted: Vec::new(),
                    requests_per_second: admission::per_second(1000),
                    burst: admission::per_second(1000),
                    connections_per_second: admission::per_second(1000),
                    max_connections_per_source: admission::per_second(1000),
                    ban: None,
                    over_limit: OverLimit::Reject,
                },
                UpstreamSources::default(),
                metrics.clone(),
            )),
            slots: Arc::new(slots::ConnectionSlots::new(&limits, metrics.clone())),
            metrics,
            shutdown: CancellationToken::new(),
            upstream_sources: UpstreamSources::default(),
            read_budget: Arc::new(stream::ReadBudget::new(1 << 20, 65_535)),
            udp_upstream: None,
            upstream_backlog: None,
        })
    }

    /// The limits of [`TransportContext::for_tests`]: the defaults, but
    /// `max_connections` slots (none reserved) and a 60 s idle timeout.
    pub(crate) fn test_limits(max_connections: usize) -> Limits {
        Limits {
            max_message_bytes: 65_535,
            max_headers: 256,
            max_connections,
            reserved_connections: 0,
            known_flow_ttl: Some(std::time::Duration::from_secs(3600)),
            known_flow_bytes: 1 << 20,
            tcp_idle_timeout: std::time::Duration::from_secs(60),
            max_registrations: 16,
            max_contacts_per_register: 16,
            client_transaction_bytes: 1 << 20,
            timer_t1: std::time::Duration::from_millis(500),
            timer_t2: std::time::Duration::from_secs(4),
            timer_c: std::time::Duration::from_secs(180),
            drain: std::time::Duration::from_secs(30),
            upstream_queue_bytes: 1 << 20,
            listen_backlog: 128,
            registration_table_bytes: 1 << 20,
            transaction_table_bytes: 1 << 20,
            upstream_retry_after_secs: 30,
            message_deadline: std::time::Duration::from_secs(10),
            read_buffer_budget_bytes: 1 << 20,
            write_queue_bytes: 1 << 20,
            udp_receive_buffer_bytes: 1 << 20,
            udp_send_buffer_bytes: 1 << 20,
        }
    }
}

/// A bound UDP socket and the address it is advertised at.
#[derive(Debug, Clone)]
pub struct UdpListener {
    /// The socket.
    pub socket: Arc<UdpSocket>,
    /// Its advertised address (the `Inbound::local` of what it receives).
    /// A wildcard `[::]` listener advertises the address facing the
    /// registrar, which may be IPv4: what it reaches is [`Reach`].
    pub local: LocalAddr,
    reach: Reach,
}

/// Which destinations a UDP socket can send to, by how it was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// IPv4 (an IPv4-mapped IPv6 destination unmapped).
    V4,
    /// IPv6 only.
    V6,
    /// IPv6 and IPv4 (a dual-stack `[::]`: IPv4 destinations mapped).
    Both,
}

impl UdpListener {
    /// `socket`, advertised at `local`; what it reaches is read from the
    /// socket: its family, and for one bound to `[::]` whether it is
    /// dual-stack (one bound to a given IPv6 address reaches IPv6 only,
    /// whatever IPV6_V6ONLY says).
    pub fn new(socket: Arc<UdpSocket>, local: LocalAddr) -> Self {
        let v6only = || socket2::SockRef::from(&*socket).only_v6().unwrap_or(true);
        let reach = match socket.local_addr() {
            Ok(SocketAddr::V4(_)) => Reach::V4,
            Ok(SocketAddr::V6(v6)) if v6.ip().is_unspecified() && !v6only() => Reach::Both,
            Ok(SocketAddr::V6(_)) => Reach::V6,
            Err(_) if local.is_ipv4() => Reach::V4,
            Err(_) => Reach::V6,
        };
        Self {
            socket,
            local,
            reach,
        }
    }

    /// `to` as this socket sends to it, if it reaches it at all.
    fn address_for(&self, to: SocketAddr) -> Option<SocketAddr> {
        let unmapped = SocketAddr::new(to.ip().to_canonical(), to.port());
        match (self.reach, unmapped) {
            (Reach::V4, SocketAddr::V4(_)) => Some(unmapped),
            (Reach::V6 | Reach::Both, SocketAddr::V6(_)) => Some(to),
            (Reach::Both, SocketAddr::V4(v4)) => Some(SocketAddr::new(
                std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()),
                v4.port(),
            )),
            _ => None,
        }
    }
}

/// Where messages for the registrar go.
#[derive(Debug, Clone)]
pub enum UpstreamSender {
    /// A UDP registrar at this address.
    Datagram(SocketAddr),
    /// A stream registrar, through the link task.
    Stream(UpstreamLink),
}

impl UpstreamSender {
    /// The transport messages for the registrar travel on.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Datagram(_) => Transport::Udp,
            Self::Stream(link) => link.transport(),
        }
    }

    /// The registrar's address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Datagram(addr) => *addr,
            Self::Stream(link) => link.addr(),
        }
    }

    /// The queue and the unanswered requests of a stream registrar's link.
    pub fn backlog(&self) -> Option<&UpstreamBacklog> {
        match self {
            Self::Datagram(_) => None,
            Self::Stream(link) => Some(link.backlog()),
        }
    }
}

/// Everything that can send: UDP sockets, client connections, the
/// upstream. Nothing here waits for a connection. Each worker has its
/// own (its own UDP sockets; the rest shared).
#[derive(Debug, Clone)]
pub struct Senders {
    /// UDP listeners, in configuration order.
    pub udp: Vec<UdpListener>,
    /// Open stream connections.
    pub connections: Arc<Connections>,
    /// The upstream registrar.
    pub upstream: UpstreamSender,
    /// Set when sipadmit probes the registrar with OPTIONS (so it learns
    /// when a registrar that is down is back): a UDP registrar known to be
    /// unreachable (an ICMP error, or silence) then fails sends at once, and
    /// requests are answered `503` instead of waiting for nothing.
    pub udp_upstream_health: Option<Arc<Metrics>>,
    /// Where copies of what is received and sent go (`[hep]`; off unless
    /// a collector is configured).
    pub hep: crate::observe::Hep,
}

impl Senders {
    /// Send a datagram to `to` from the UDP listener advertised at `from`
    /// (the one a request arrived on, so that its answer leaves from the
    /// address the client sent to); without `from`, or when that listener
    /// cannot reach `to`, from the first listener that can (an IPv4
    /// socket reaches IPv4 destinations, a dual-stack `[::]` both).
    pub async fn send_datagram(
        &self,
        from: Option<LocalAddr>,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), SendError> {
        let (listener, addressed) = self.udp_listener_for(from, to).ok_or(SendError::NoSocket {
            transport: Transport::Udp,
            addr: to,
        })?;
        udp::send_to(&listener.socket, bytes, addressed)
            .await
            .map_err(|source| SendError::Io { addr: to, source })
    }

    /// The UDP listener [`Senders::send_datagram`] sends to `to` from, and
    /// `to` as that socket addresses it; `None` when no listener reaches it.
    pub fn udp_listener_for(
        &self,
        from: Option<LocalAddr>,
        to: SocketAddr,
    ) -> Option<(&UdpListener, SocketAddr)> {
        fn reaching(l: &UdpListener, to: SocketAddr) -> Option<(&UdpListener, SocketAddr)> {
            Some((l, l.address_for(to)?))
        }
        from.and_then(|local| self.udp.iter().find(|l| l.local == local))
            .and_then(|l| reaching(l, to))
            .or_else(|| self.udp.iter().find_map(|l| reaching(l, to)))
    }

    /// Send to the upstream registrar: a datagram, or a message queued for
    /// the stream link (never waiting for it to connect; a failure to
    /// deliver later comes back as [`Event::Undelivered`]). `inbound` is
    /// the message `bytes` were relayed from.
    pub async fn send_upstream(&self, bytes: Bytes, inbound: &Inbound) -> Result<(), SendError> {
        if let (UpstreamSender::Datagram(addr), Some(health)) =
            (&self.upstream, &self.udp_upstream_health)
        {
            if let Some(down) = health.udp_upstream_unreachable() {
                return Err(SendError::UpstreamUnreachable {
                    addr: *addr,
                    cause: Arc::new(std::io::Error::other(down.error)),
                });
            }
        }
        self.send_upstream_probe(bytes, inbound).await
    }

    /// [`Senders::send_upstream`], even to a UDP registrar known to be
    /// unreachable: for the OPTIONS probes that find out it is back.
    pub async fn send_upstream_probe(
        &self,
        bytes: Bytes,
        inbound: &Inbound,
    ) -> Result<(), SendError> {
        match &self.upstream {
            UpstreamSender::Datagram(addr) => self.send_datagram(None, *addr, &bytes).await,
            UpstreamSender::Stream(link) => link.offer(Outgoing {
                bytes,
                inbound: inbound.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 UDP socket bound to `addr` as sipadmit binds one
    /// (IPV6_V6ONLY off).
    fn ipv6_socket(addr: &str) -> Arc<UdpSocket> {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
        socket.set_only_v6(false).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
            .bind(&addr.parse::<SocketAddr>().unwrap().into())
            .unwrap();
        Arc::new(UdpSocket::from_std(socket.into()).unwrap())
    }

    /// A `[::]` listener advertised at an IPv4 address (the one facing an
    /// IPv4 registrar) still answers its IPv6 clients and its IPv4 ones
    /// (which arrive IPv4-mapped); an IPv4 listener unmaps.
    #[tokio::test]
    async fn a_dual_stack_listener_reaches_both_families_whatever_it_advertises() {
        let socket = ipv6_socket("[::]:0");
        let port = socket.local_addr().unwrap().port();
        let listener =
            UdpListener::new(socket, LocalAddr(SocketAddr::from(([127, 0, 0, 1], port))));
        for client in ["127.0.0.1:0", "[::1]:0"] {
            let client = UdpSocket::bind(client).await.unwrap();
            let at = client.local_addr().unwrap();
            // As the core names a mapped source, and as an IPv4 one.
            let mapped = SocketAddr::new(
                match at.ip() {
                    std::net::IpAddr::V4(v4) => std::net::IpAddr::V6(v4.to_ipv6_mapped()),
                    v6 => v6,
                },
                at.port(),
            );
            for to in [at, mapped] {
                let addressed = listener.address_for(to).expect("reached");
                udp::send_to(&listener.socket, b"answer", addressed)
                    .await
                    .unwrap();
                let mut buf = [0u8; 16];
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(5), client.recv(&mut buf))
                        .await
                        .unwrap()
                        .unwrap();
                assert_eq!(&buf[..n], b"answer");
            }
        }
        let v4 = UdpListener::new(
            Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            LocalAddr("127.0.0.1:5060".parse().unwrap()),
        );
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:5062".parse().unwrap();
        assert_eq!(
            v4.address_for(mapped),
            Some("127.0.0.2:5062".parse().unwrap())
        );
        assert_eq!(v4.address_for("[::1]:5062".parse().unwrap()), None);
        // A socket bound to a given IPv6 address reaches IPv6 only, even
        // with IPV6_V6ONLY off (as sipadmit binds every IPv6 socket).
        let socket = ipv6_socket("[::1]:0");
        let local = LocalAddr(socket.local_addr().unwrap());
        let loopback6 = UdpListener::new(socket, local);
        assert_eq!(loopback6.address_for(mapped), None);
    }

    #[test]
    fn transport_names_and_serde_form() {
        assert!(!Transport::Udp.is_stream());
        assert!(Transport::Tcp.is_stream());
        assert_eq!(Transport::Tcp.as_str(), "tcp");
        assert_eq!(Transport::Tcp.via_name(), "TCP");
        assert_eq!(Transport::Udp.to_string(), "udp");
        assert!(Transport::Tls.is_stream());
        assert_eq!(
            (Transport::Tls.as_str(), Transport::Tls.via_name()),
            ("tls", "TLS")
        );
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Transport>(&json).unwrap(), t);
        }
        assert!(serde_json::from_str::<Transport>("\"UDP\"").is_err());
    }

    #[test]
    fn fault_warnings_are_limited_per_interval_and_count_what_they_held_back() {
        let interval = std::time::Duration::from_secs(10);
        let start = std::time::Instant::now();
        let at = |secs| start + std::time::Duration::from_secs(secs);
        let mut window = WarningWindow::default();
        assert_eq!(
            window.admit(at(0), interval),
            Some(0),
            "the first is logged"
        );
        assert_eq!(window.admit(at(1), interval), None);
        assert_eq!(window.admit(at(9), interval), None);
        assert_eq!(
            window.admit(at(10), interval),
            Some(2),
            "then one saying 2 were held back"
        );
        assert_eq!(window.admit(at(25), interval), Some(0));
    }

    #[test]
    fn a_full_upstream_queue_is_its_own_fault() {
        let addr: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        assert_eq!(
            Fault::of_send(&SendError::UpstreamQueueFull(addr)),
            Fault::UpstreamQueueFull
        );
        assert_eq!(
            Fault::of_send(&SendError::UpstreamStopped(addr)),
            Fault::Send
        );
    }
}
