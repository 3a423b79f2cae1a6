//! The shared vocabulary: the names every stage uses for what travels
//! between them (transports, the inbound message and which leg it came on,
//! connection and flow ids,
//! source refusals, transport faults, TLS handshake outcomes). A leaf: it
//! imports nothing of the crate, and every module may import it, so no
//! stage has to reach up into a higher one for a word.

mod ids;

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use ids::{BootId, ConnectionId, FlowId};

/// A SIP transport (RFC 3261 18). Serialized in lowercase (`"udp"`), as in
/// decision records and config endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP (RFC 3261 18.1): one message per datagram.
    Udp,
    /// TCP (RFC 3261 18.1): a byte stream framed by Content-Length.
    Tcp,
    /// TLS over TCP (RFC 3261 26.2, RFC 5630): framed like TCP, inside a
    /// TLS session (OpenSSL, [`tls`]).
    Tls,
}

impl Transport {
    /// Whether messages travel over a connection-oriented byte stream
    /// (framed by Content-Length, answered on the same connection).
    pub fn is_stream(self) -> bool {
        match self {
            Self::Udp => false,
            Self::Tcp | Self::Tls => true,
        }
    }

    /// Lowercase name, as in decision records and `transport=` URI parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Uppercase name, as in Via headers.
    pub fn via_name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address at the other end of a message: where it came from (a
/// client, or the registrar, as its [`Leg`] says). Never one of
/// sipadmit's own ([`LocalAddr`]): the two are not interchangeable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// An address of sipadmit's own: a listener's, as advertised (the address
/// a message arrived at, or leaves from). Never a peer's ([`PeerAddr`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalAddr(pub SocketAddr);

macro_rules! address_newtype {
    ($name:ident) => {
        impl std::ops::Deref for $name {
            type Target = SocketAddr;

            fn deref(&self) -> &SocketAddr {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::net::AddrParseError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map(Self)
            }
        }

        impl From<SocketAddr> for $name {
            fn from(addr: SocketAddr) -> Self {
                Self(addr)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

address_newtype!(PeerAddr);
address_newtype!(LocalAddr);

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message bytes (one datagram, or one framed stream message).
    pub bytes: Bytes,
    /// Transport it arrived on.
    pub transport: Transport,
    /// Sender address.
    pub source: PeerAddr,
    /// The address of this proxy it arrived at: the advertised address of
    /// the listener (for the proxy's own link to a stream upstream, the
    /// advertised listener of that transport).
    pub local: LocalAddr,
    /// The stream connection it arrived on (`None` for UDP).
    pub connection: Option<ConnectionId>,
    /// Who sent it: a client, or the registrar (an address of
    /// `proxy.upstream_sources`, or sipadmit's own connection to it; the
    /// dispatcher's OPTIONS probe of the registrar is marked the
    /// registrar's too, so that its failure is answered to no one).
    pub leg: Leg,
}

impl Inbound {
    /// The registrar sent it.
    pub fn from_registrar(&self) -> bool {
        self.leg == Leg::FromRegistrar
    }

    /// It is a response (it starts with the SIP version).
    pub fn is_response(&self) -> bool {
        starts_as_response(&self.bytes)
    }
}

/// Whether a message starts as a response does: with `SIP/`, in any case
/// (RFC 3261 7.1: the version is case-insensitive). A request cannot: `/`
/// is no method character.
pub fn starts_as_response(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/"))
}

/// Which way a message went past sipadmit: sent by a client (toward the
/// registrar), or sent by the registrar (toward a client). An INVITE
/// between two clients behind sipadmit is decided on both legs. Named in
/// decision records (`leg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// The message came from a client.
    FromClient,
    /// The message came from the registrar.
    FromRegistrar,
}

impl Leg {
    /// Both legs, in report order.
    pub const ALL: [Self; 2] = [Self::FromClient, Self::FromRegistrar];

    /// The name used in decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FromClient => "from_client",
            Self::FromRegistrar => "from_registrar",
        }
    }
}

/// Why the transports refused a message for its source (see
/// `transport::admission`), before the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// The source is over its rate limit (`rate_limit.over_limit =
    /// "reject"`): `503` with this Retry-After, seconds.
    OverLimit {
        /// Retry-After, seconds.
        retry_after_secs: u32,
        /// The configuration generation whose `[rate_limit]` refused it.
        generation: u64,
    },
    /// The source was banned by this message (it stayed over its limit):
    /// dropped, recorded with action `drop` and rule `ban.requests`.
    Banned {
        /// The configuration generation whose `[rate_limit]` banned it.
        generation: u64,
    },
}

impl SourceRefusal {
    /// The configuration generation whose `[rate_limit]` decided: the
    /// record of the refusal is written with that snapshot.
    pub fn generation(self) -> u64 {
        match self {
            Self::OverLimit { generation, .. } | Self::Banned { generation } => generation,
        }
    }
}

/// A fault of one datagram, one connection or one connect attempt: counted
/// (`sipadmit_transport_faults_total{kind}`), logged, and survived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Receiving a datagram failed (an ICMP error for an earlier send, say).
    UdpReceive,
    /// A message could not be sent (socket error, connection gone or not
    /// reading, upstream unreachable).
    Send,
    /// Accepting a connection failed (out of file descriptors, say); the
    /// listener backs off.
    Accept,
    /// A new connection was closed at once: every connection slot
    /// (`limits.max_connections`) is taken.
    ConnectionLimit,
    /// Reading a connection failed (reset by the peer, say); closed.
    Read,
    /// A connection sent bytes that cannot be framed; closed.
    Unframeable,
    /// A connection ended in the middle of a message.
    Truncated,
    /// Writing to a connection failed or made no progress for
    /// [`stream::WRITE_TIMEOUT`]; closed.
    Write,
    /// Connecting to the stream upstream failed or timed out.
    UpstreamConnect,
    /// The queue of the link to the stream upstream was full.
    UpstreamQueueFull,
    /// A stream message was not complete `limits.message_deadline_secs`
    /// after its first byte (slowloris); closed.
    MessageDeadline,
    /// A message was not queued for a connection whose writer queue is at
    /// `limits.write_queue_bytes` while its peer still reads.
    WriteQueueFull,
    /// Sending a datagram to the UDP upstream failed.
    UpstreamSend,
    /// A TLS handshake on a `tls:` listener failed or missed its deadline
    /// (`tls.handshake_timeout_secs`); the connection was closed. Also
    /// counted by reason in `sipadmit_tls_handshake_failures_total`.
    TlsHandshake,
    /// A TLS ClientHello arrived on a plain `tcp:` listener (a client set
    /// up for TLS on the wrong port); the connection was closed at once.
    TlsOnTcpPort,
    /// An ICMP error (port, host or network unreachable) came back for a
    /// datagram sent to the UDP upstream: the registrar is down or not
    /// reachable. Also makes `/readyz` fail until the upstream sends a
    /// message again (Linux: read from the sockets' error queues).
    UpstreamUnreachable,
    /// An ICMP error came back for a datagram sent to a client (a client
    /// gone since, or a spoofed source address).
    ClientUnreachable,
}

impl Fault {
    /// Every kind, in render order.
    pub const ALL: [Self; 17] = [
        Self::UdpReceive,
        Self::Send,
        Self::Accept,
        Self::ConnectionLimit,
        Self::Read,
        Self::Unframeable,
        Self::Truncated,
        Self::Write,
        Self::UpstreamConnect,
        Self::UpstreamQueueFull,
        Self::MessageDeadline,
        Self::WriteQueueFull,
        Self::UpstreamSend,
        Self::TlsHandshake,
        Self::TlsOnTcpPort,
        Self::UpstreamUnreachable,
        Self::ClientUnreachable,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UdpReceive => "udp_receive",
            Self::Send => "send",
            Self::Accept => "accept",
            Self::ConnectionLimit => "connection_limit",
            Self::Read => "read",
            Self::Unframeable => "unframeable",
            Self::Truncated => "truncated",
            Self::Write => "write",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamQueueFull => "upstream_queue_full",
            Self::MessageDeadline => "message_deadline",
            Self::WriteQueueFull => "write_queue_full",
            Self::UpstreamSend => "upstream_send",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsOnTcpPort => "tls_on_tcp_port",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::ClientUnreachable => "client_unreachable",
        }
    }

    /// What the log line says.
    pub fn summary(self) -> &'static str {
        match self {
            Self::UdpReceive => "UDP receive failed; serving on",
            Self::Send => "send failed",
            Self::Accept => "accept failed; backing off",
            Self::ConnectionLimit => "connection limit reached; new connection closed",
            Self::Read => "read failed; connection closed",
            Self::Unframeable => "unframeable stream; connection closed",
            Self::Truncated => "connection ended in the middle of a message",
            Self::Write => "write failed or stalled; connection closed",
            Self::UpstreamConnect => "connecting to the upstream failed",
            Self::UpstreamQueueFull => "queue to the upstream full",
            Self::MessageDeadline => "message not complete within its deadline; connection closed",
            Self::WriteQueueFull => "writer queue full; message not sent",
            Self::UpstreamSend => "sending to the UDP upstream failed",
            Self::TlsHandshake => "TLS handshake failed; connection closed",
            Self::TlsOnTcpPort => {
                "TLS ClientHello on a plain TCP listener (client configured for TLS on the wrong port?); connection closed"
            }
            Self::UpstreamUnreachable => {
                "ICMP error for a datagram sent to the UDP upstream: is the registrar down?"
            }
            Self::ClientUnreachable => "ICMP error for a datagram sent to a client",
        }
    }

    /// Whether it happens in normal operation (a client resetting its
    /// connection): logged at debug level, not as a warning.
    pub fn is_routine(self) -> bool {
        matches!(self, Self::Read | Self::Truncated)
    }
}

/// Transport fault warnings of one kind are logged at most once per this
/// interval (10 s); the faults in between are counted, and the next
/// warning says how many were not logged.
pub const FAULT_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The rate limit of one kind of warning: when the last one was logged and
/// how many were held back since.
#[derive(Debug, Default)]
pub struct WarningWindow {
    last: Option<std::time::Instant>,
    not_logged: u64,
}

impl WarningWindow {
    /// Whether a warning at `now` is logged (at most one per `interval`):
    /// `Some(n)` with the `n` warnings held back before it, or `None` (held
    /// back and counted).
    pub fn admit(&mut self, now: std::time::Instant, interval: std::time::Duration) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.not_logged))
        } else {
            self.not_logged += 1;
            None
        }
    }

    /// The warnings held back, once `interval` has passed since the last
    /// one logged (taken: a summary at `now` stands for them); `None` while
    /// none is held back or the interval has not passed. For the periodic
    /// check that reports a burst that ended.
    pub fn take_held_back(
        &mut self,
        now: std::time::Instant,
        interval: std::time::Duration,
    ) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        (self.not_logged > 0 && due).then(|| {
            self.last = Some(now);
            std::mem::take(&mut self.not_logged)
        })
    }
}

/// Why a handshake failed, as a bounded label for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeReason {
    /// Not finished before the deadline (a silent or slow peer).
    Timeout,
    /// The peer sent something that is not TLS (e.g. SIP in clear text).
    PlainText,
    /// The peer closed the connection (or reset it) during the handshake.
    Closed,
    /// A client certificate is required and the client sent none.
    NoClientCertificate,
    /// The peer's certificate did not verify here (unknown CA, expired,
    /// wrong name).
    BadCertificate,
    /// The peer refused this side's certificate (its alert: unknown CA,
    /// expired, bad, unsupported or revoked certificate): on a listener, a
    /// client that does not trust sipadmit's certificate; toward the
    /// registrar, one that does not take sipadmit's client certificate,
    /// under TLS 1.2 (under TLS 1.3 the client's handshake is over before
    /// the server checks its certificate: the refusal ends the link's first
    /// read instead).
    CertificateRefused,
    /// No TLS version both sides speak (e.g. a TLS 1.0 client, minimum 1.2).
    ProtocolVersion,
    /// No cipher suite (or signature algorithm) both sides accept.
    NoSharedCipher,
    /// Anything else; the detail says what.
    Other,
}

impl HandshakeReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Self; 9] = [
        Self::Timeout,
        Self::PlainText,
        Self::Closed,
        Self::NoClientCertificate,
        Self::BadCertificate,
        Self::CertificateRefused,
        Self::ProtocolVersion,
        Self::NoSharedCipher,
        Self::Other,
    ];

    /// Snake-case label (`no_shared_cipher`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::PlainText => "plain_text",
            Self::Closed => "closed",
            Self::NoClientCertificate => "no_client_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::CertificateRefused => "certificate_refused",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for HandshakeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_newtypes_read_and_print_as_the_socket_address_they_hold() {
        let peer: PeerAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(peer.to_string(), "[2001:db8::1]:5061");
        assert_eq!((peer.port(), peer.is_ipv6()), (5061, true));
        let local = LocalAddr::from(peer.0);
        assert_eq!(format!("{local:?}"), format!("{:?}", peer.0));
        assert!(
            "127.0.0.1".parse::<LocalAddr>().is_err(),
            "a port is required"
        );
    }
}
