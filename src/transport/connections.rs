//! The live stream connections of this instance: id → (peer, transport,
//! writer queue). A send names the peer it is for and is refused when the
//! connection is now open to another one; it never waits.
//!
//! Writer queues are bounded in bytes ([`WriteQueue`]): a send that would
//! pass the bound is refused (the message is not sent, the connection
//! stays) while the peer still reads, and closes the connection only when
//! nothing could be written to it for [`WRITE_TIMEOUT`]. The connection's
//! reader stops reading while its queue is over half the bound, so a
//! pipelining client that reads is slowed down, never closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::{ConnectionId, SendError, Transport};

/// A connection whose writer wrote nothing for this long while it had
/// bytes queued is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes queued for one connection's writer, and when it last made
/// progress.
#[derive(Debug)]
pub struct WriteQueue {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Most bytes queued (one message larger than this is still queued
    /// when nothing else is).
    bound: usize,
    /// When the writer last wrote a byte or found the queue empty, as
    /// milliseconds since `epoch`.
    progress_ms: AtomicU64,
    epoch: Instant,
    /// Wakes the reader waiting for the queue to drain below half the bound.
    drained: Notify,
}

impl WriteQueue {
    /// An empty queue of at most `bound` bytes.
    pub fn new(bound: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            bound,
            progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            drained: Notify::new(),
        }
    }

    /// Bytes queued.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether the reader should wait before reading more (over half the bound).
    pub fn is_backed_up(&self) -> bool {
        self.queued() > self.bound / 2
    }

    /// Wait until the queue is at most half full.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_backed_up() {
                return;
            }
            notified.await;
        }
    }

    /// The writer wrote `n` bytes (or, with 0, found the queue empty).
    pub fn progressed(&self, written: usize) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
        if written > 0 {
            self.queued.fetch_sub(written, Ordering::Relaxed);
        }
        if !self.is_backed_up() {
            self.drained.notify_waiters();
        }
    }

    /// Whether `len` more bytes fit within the bound (any message fits an
    /// empty queue).
    fn has_room_for(&self, len: usize) -> bool {
        let queued = self.queued();
        queued == 0 || queued + len <= self.bound
    }

    /// Whether the writer has written nothing for [`WRITE_TIMEOUT`].
    fn is_stalled(&self) -> bool {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last) >= WRITE_TIMEOUT
    }
}

/// One open stream connection: who is at the other end, and its writer queue.
#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    transport: Transport,
    writer: mpsc::UnboundedSender<Bytes>,
    queue: Arc<WriteQueue>,
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

    /// Register a connection to `peer`, its writer and its queue.
    pub fn insert(
        &self,
        id: ConnectionId,
        peer: SocketAddr,
        transport: Transport,
        writer: mpsc::UnboundedSender<Bytes>,
        queue: Arc<WriteQueue>,
    ) {
        self.open.lock().expect("connections lock").insert(
            id,
            Connection {
                peer,
                transport,
                writer,
                queue,
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

    /// Whether a message of `len` bytes for `peer` would be taken on
    /// connection `id` now: it is open, to `peer`, and its write queue has
    /// room for it ([`Connections::send`] would queue it). What another
    /// worker queues in between can still fill the queue first.
    pub fn would_take(&self, id: ConnectionId, peer: SocketAddr, len: usize) -> bool {
        self.open
            .lock()
            .expect("connections lock")
            .get(&id)
            .is_some_and(|c| c.peer == peer && !c.writer.is_closed() && c.queue.has_room_for(len))
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
    /// when the connection is gone or open to another peer. When the queue
    /// would pass its byte bound the message is refused
    /// ([`SendError::WriteQueueFull`]) while the peer still reads; a peer
    /// that read nothing for [`WRITE_TIMEOUT`] is closed
    /// ([`SendError::QueueFull`]) rather than allowed to pile up bytes.
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
        let queue = &connection.queue;
        let queued = queue.queued();
        if !queue.has_room_for(bytes.len()) {
            if queue.is_stalled() {
                // Dropping the sender ends the writer task, which closes the
                // connection (and its reader with it).
                open.remove(&id);
                return Err(SendError::QueueFull(id));
            }
            return Err(SendError::WriteQueueFull(id));
        }
        if queued == 0 {
            // The clock of "no progress" starts when bytes are first waiting.
            queue.progressed(0);
        }
        queue.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        match connection.writer.send(bytes) {
            Ok(()) => Ok(()),
            Err(_) => {
                open.remove(&id);
                Err(SendError::ConnectionGone(id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(
        bound: usize,
    ) -> (
        mpsc::UnboundedSender<Bytes>,
        mpsc::UnboundedReceiver<Bytes>,
        Arc<WriteQueue>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, rx, Arc::new(WriteQueue::new(bound)))
    }

    #[test]
    fn a_send_checks_the_peer_and_the_connection() {
        let table = Connections::default();
        let (first, second) = (table.next_id(), table.next_id());
        assert_eq!((first.get(), second.get()), (1, 2));
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let (tx, mut rx, q) = queue(1024);
        table.insert(first, peer, Transport::Tcp, tx, q);
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
    fn the_queue_is_bounded_in_bytes_and_a_reading_peer_is_not_closed() {
        let table = Connections::default();
        let id = table.next_id();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let (tx, rx, q) = queue(10);
        table.insert(id, peer, Transport::Tcp, tx, q.clone());
        // Many small messages fit (a burst of keep-alive pongs) ...
        for _ in 0..5 {
            table.send(id, peer, Bytes::from_static(b"\r\n")).unwrap();
        }
        assert_eq!(q.queued(), 10);
        assert!(q.is_backed_up());
        // ... one more byte does not, but the peer was reading a moment
        // ago: refused, not closed.
        assert!(matches!(
            table.send(id, peer, Bytes::from_static(b"x")),
            Err(SendError::WriteQueueFull(i)) if i == id
        ));
        assert_eq!(table.len(), 1, "still open");
        // The writer writes: room again.
        q.progressed(10);
        assert!(!q.is_backed_up());
        table
            .send(id, peer, Bytes::from_static(b"0123456789"))
            .unwrap();
        // A message larger than the bound still goes when nothing is queued.
        q.progressed(10);
        table.send(id, peer, Bytes::from(vec![b'x'; 100])).unwrap();
        drop(rx);
    }

    #[test]
    fn a_peer_that_stops_reading_is_closed() {
        let table = Connections::default();
        let id = table.next_id();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let (tx, rx, q) = queue(4);
        // As if the last progress was WRITE_TIMEOUT ago.
        let q = Arc::new(WriteQueue {
            epoch: Instant::now() - WRITE_TIMEOUT - Duration::from_secs(1),
            ..Arc::try_unwrap(q).unwrap()
        });
        table.insert(id, peer, Transport::Tcp, tx, q.clone());
        q.queued.store(4, Ordering::Relaxed);
        assert!(matches!(
            table.send(id, peer, Bytes::from_static(b"2")),
            Err(SendError::QueueFull(i)) if i == id
        ));
        assert!(table.is_empty(), "closed");
        drop(rx);
    }
}
