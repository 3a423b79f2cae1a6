//! Stage 1, transport: sockets in and out. Knows framing, not SIP
//! semantics: every message goes to [`crate::app`]'s dispatcher, and every
//! outbound message comes back through [`Senders`].

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
    /// The TCP connection is gone.
    #[error("TCP connection {0} is gone")]
    ConnectionGone(u64),
    /// The peer stopped reading; the connection was closed.
    #[error("TCP connection {0} stopped reading; closed")]
    QueueFull(u64),
    /// The socket reported an error.
    #[error("sending to {addr}: {source}")]
    Io {
        /// Destination.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Live TCP connections: id → writer queue.
#[derive(Debug, Default)]
pub struct Connections {
    writers: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    next_id: AtomicU64,
}

impl Connections {
    /// A fresh connection id (never 0, which means UDP).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Register a connection's writer.
    pub fn insert(&self, id: u64, writer: mpsc::Sender<Bytes>) {
        self.writers
            .lock()
            .expect("connections lock")
            .insert(id, writer);
    }

    /// Forget a connection.
    pub fn remove(&self, id: u64) {
        self.writers.lock().expect("connections lock").remove(&id);
    }

    /// Whether a connection is still open.
    pub fn alive(&self, id: u64) -> bool {
        self.writers
            .lock()
            .expect("connections lock")
            .get(&id)
            .is_some_and(|w| !w.is_closed())
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.writers.lock().expect("connections lock").len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue bytes on a connection without waiting: a connection whose
    /// queue is full (a peer that stopped reading) is closed rather than
    /// allowed to stall the dispatcher.
    pub fn send(&self, id: u64, bytes: Bytes) -> Result<(), SendError> {
        let mut writers = self.writers.lock().expect("connections lock");
        let writer = writers.get(&id).ok_or(SendError::ConnectionGone(id))?;
        match writer.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the writer task, which closes the socket.
                writers.remove(&id);
                Err(SendError::QueueFull(id))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                writers.remove(&id);
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
}
