//! Stage 1, transport: sockets in and out. Knows framing, not SIP
//! semantics: every message goes to [`crate::app`]'s dispatcher, and every
//! outbound message comes back through [`Senders`].

pub mod addr;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::config::Endpoint;
pub use addr::{BootId, ConnectionId, FlowId};

/// A SIP transport (RFC 3261 18). Serialized in lowercase (`"udp"`), as in
/// decision records and config endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP (RFC 3261 18.1): one message per datagram.
    Udp,
    /// TCP (RFC 3261 18.1): a byte stream framed by Content-Length.
    Tcp,
}

impl Transport {
    /// Whether messages travel over a connection-oriented byte stream
    /// (framed by Content-Length, answered on the same connection).
    pub fn is_stream(self) -> bool {
        match self {
            Self::Udp => false,
            Self::Tcp => true,
        }
    }

    /// Lowercase name, as in decision records and `transport=` URI parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }

    /// Uppercase name, as in Via headers.
    pub fn via_name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// The peer stopped reading; the connection was closed.
    #[error("connection {0} stopped reading; closed")]
    QueueFull(ConnectionId),
    /// The socket reported an error.
    #[error("sending to {addr}: {source}")]
    Io {
        /// Destination.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// One open stream connection: who is at the other end, and its writer queue.
#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    transport: Transport,
    writer: mpsc::Sender<Bytes>,
}

/// Live stream connections of this instance: id → (peer, transport, writer
/// queue). A send names the peer it is for, and is refused when the
/// connection's peer differs.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<HashMap<ConnectionId, Connection>>,
    /// How many ids were handed out (the next is `ConnectionId::nth(issued)`).
    issued: AtomicU64,
}

impl Connections {
    /// A fresh connection id (never 0, never reused by this table).
    pub fn next_id(&self) -> ConnectionId {
        ConnectionId::nth(self.issued.fetch_add(1, Ordering::Relaxed))
    }

    /// Register a connection to `peer` and its writer.
    pub fn insert(
        &self,
        id: ConnectionId,
        peer: SocketAddr,
        transport: Transport,
        writer: mpsc::Sender<Bytes>,
    ) {
        self.open.lock().expect("connections lock").insert(
            id,
            Connection {
                peer,
                transport,
                writer,
            },
        );
    }

    /// Forget a connection.
    pub fn remove(&self, id: ConnectionId) {
        self.open.lock().expect("connections lock").remove(&id);
    }

    /// Whether connection `id` is still open, and open to `peer`.
    pub fn is_open_to(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        self.open
            .lock()
            .expect("connections lock")
            .get(&id)
            .is_some_and(|c| c.peer == peer && !c.writer.is_closed())
    }

    /// The transport of an open connection.
    pub fn transport(&self, id: ConnectionId) -> Option<Transport> {
        self.open
            .lock()
            .expect("connections lock")
            .get(&id)
            .map(|c| c.transport)
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.open.lock().expect("connections lock").len()
    }

    /// Number of open connections of a transport.
    pub fn count(&self, transport: Transport) -> usize {
        let open = self.open.lock().expect("connections lock");
        open.values().filter(|c| c.transport == transport).count()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue bytes for `peer` on connection `id` without waiting. Refused
    /// when the connection is gone or open to another peer. A connection
    /// whose queue is full (a peer that stopped reading) is closed rather
    /// than allowed to stall the dispatcher.
    pub fn send(&self, id: ConnectionId, peer: SocketAddr, bytes: Bytes) -> Result<(), SendError> {
        let mut open = self.open.lock().expect("connections lock");
        let connection = open.get(&id).ok_or(SendError::ConnectionGone(id))?;
        if connection.peer != peer {
            return Err(SendError::OtherPeer {
                connection: id,
                expected: peer,
                actual: connection.peer,
            });
        }
        match connection.writer.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the writer task, which closes the socket.
                open.remove(&id);
                Err(SendError::QueueFull(id))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                open.remove(&id);
                Err(SendError::ConnectionGone(id))
            }
        }
    }
}

/// Everything that can send: UDP sockets, client connections, the upstream link.
#[derive(Debug)]
pub struct Senders {
    /// Bound UDP listener sockets.
    pub udp: Vec<Arc<UdpSocket>>,
    /// Client TCP connections.
    pub connections: Arc<Connections>,
    /// The upstream registrar.
    pub upstream: Endpoint,
    /// The TCP link to the upstream (when it is TCP).
    pub upstream_tcp: Option<tcp::UpstreamLink>,
}

impl Senders {
    /// Send a datagram from the UDP socket of the destination's address family.
    pub async fn send_udp(&self, addr: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        let socket = self
            .udp
            .iter()
            .find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()))
            .ok_or(SendError::NoSocket {
                transport: Transport::Udp,
                addr,
            })?;
        socket
            .send_to(bytes, addr)
            .await
            .map(|_| ())
            .map_err(|source| SendError::Io { addr, source })
    }

    /// Send to the upstream registrar.
    pub async fn send_upstream(&self, bytes: Bytes) -> Result<(), SendError> {
        match (&self.upstream_tcp, self.upstream.transport) {
            (Some(link), Transport::Tcp) => link.send(bytes).await,
            _ => self.send_udp(self.upstream.addr, &bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_names_and_serde_form() {
        assert!(!Transport::Udp.is_stream());
        assert!(Transport::Tcp.is_stream());
        assert_eq!(Transport::Tcp.as_str(), "tcp");
        assert_eq!(Transport::Tcp.via_name(), "TCP");
        assert_eq!(Transport::Udp.to_string(), "udp");
        for t in [Transport::Udp, Transport::Tcp] {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Transport>(&json).unwrap(), t);
        }
        assert!(serde_json::from_str::<Transport>("\"UDP\"").is_err());
    }

    #[test]
    fn a_send_checks_the_peer_and_the_connection() {
        let table = Connections::default();
        let (first, second) = (table.next_id(), table.next_id());
        assert_eq!((first.get(), second.get()), (1, 2));
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        table.insert(first, peer, Transport::Tcp, tx);
        assert!(table.is_open_to(first, peer));
        assert!(!table.is_open_to(first, other), "another peer");
        assert!(!table.is_open_to(second, peer), "another connection");
        assert!(matches!(
            table.send(first, other, Bytes::from_static(b"x")),
            Err(SendError::OtherPeer { actual, .. }) if actual == peer
        ));
        assert!(rx.try_recv().is_err(), "nothing written for the other peer");
        assert!(matches!(
            table.send(second, peer, Bytes::from_static(b"x")),
            Err(SendError::ConnectionGone(id)) if id == second
        ));
        table.send(first, peer, Bytes::from_static(b"ok")).unwrap();
        assert_eq!(&rx.try_recv().unwrap()[..], b"ok");
        assert_eq!(table.transport(first), Some(Transport::Tcp));
        table.remove(first);
        assert!(table.is_empty());
    }
}
