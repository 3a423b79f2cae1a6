//! The live stream connections of this instance: id → (peer, transport,
//! writer queue). A send names the peer it is for and is refused when the
//! connection is now open to another one; it never waits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ConnectionId, SendError, Transport};

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

    /// Forget a connection (its writer ends once its queue is written).
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
                // Dropping the sender ends the writer task, which closes the
                // connection (and its reader with it).
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_peer_that_stops_reading_is_closed() {
        let table = Connections::default();
        let id = table.next_id();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let (tx, rx) = mpsc::channel(1);
        table.insert(id, peer, Transport::Tcp, tx);
        table.send(id, peer, Bytes::from_static(b"1")).unwrap();
        assert!(matches!(
            table.send(id, peer, Bytes::from_static(b"2")),
            Err(SendError::QueueFull(i)) if i == id
        ));
        assert!(table.is_empty(), "closed");
        drop(rx);
    }
}
