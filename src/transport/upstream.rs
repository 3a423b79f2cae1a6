//! Stage 1, the link to a stream upstream: a task with a bounded queue.
//!
//! The dispatcher only offers messages to the queue ([`UpstreamLink::offer`]
//! never waits); a full queue refuses at once. The link task connects when
//! it has a message and no open connection (within
//! [`LinkSettings::connect_timeout`]), and after a failed connect fails
//! fast for [`LinkSettings::retry_delay`]. Meanwhile UDP and every other
//! message keep flowing through the dispatcher. Each message the link could
//! not deliver goes back to the dispatcher as [`Event::Undelivered`], which
//! answers a request `503` through `Core::upstream_unavailable`.
//!
//! The connection it opens is served by [`stream::spawn`] like any other
//! (same framing, writer, keep-alives), and everything arriving on it
//! counts as the registrar's. A TLS upstream runs its handshake in
//! `LinkTask::connect`, after the TCP connect and before `spawn`, with
//! [`ClientTls`] (the registrar's certificate always verified): a failed
//! handshake is a failed connect (its messages come back undelivered, so
//! requests are answered `503`, and `/readyz` reports it like a failed TCP
//! connect), counted by reason in
//! `sipadmit_tls_handshake_failures_total{side="upstream"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use super::stream::{self, ConnectionInfo};
use super::tls::{ClientTls, HandshakeError};
use super::{ConnectionId, Event, Fault, SendError, Transport, TransportContext};
use crate::observe::metrics::TlsSide;
use crate::proxy::Inbound;

/// How the link queues, connects and backs off.
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// Messages waiting for the link at most; more are refused at once
    /// (the dispatcher answers `503`).
    pub queue_messages: usize,
    /// How long one connect may take.
    pub connect_timeout: Duration,
    /// After a failed connect, messages fail at once for this long.
    pub retry_delay: Duration,
    /// How long the TLS handshake of a `tls:` upstream may take
    /// (`tls.handshake_timeout_secs`).
    pub handshake_timeout: Duration,
}

impl LinkSettings {
    /// 1,024 messages, 2 s to connect, then 2 s of failing fast; 10 s for
    /// a TLS handshake.
    pub const DEFAULT: Self = Self {
        queue_messages: 1024,
        connect_timeout: Duration::from_secs(2),
        retry_delay: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(10),
    };
}

/// Why the link could not open a connection to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed or timed out (or the link is stopping).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The TLS handshake with a `tls:` upstream failed (its certificate did
    /// not verify, no common version or cipher, ...).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// A message for the upstream, with the message it was relayed from.
#[derive(Debug)]
pub struct Outgoing {
    /// What to write to the upstream.
    pub bytes: Bytes,
    /// The message as it arrived (answered `503` if this is not delivered).
    pub inbound: Inbound,
}

/// The dispatcher's handle on the link task.
#[derive(Debug)]
pub struct UpstreamLink {
    transport: Transport,
    addr: SocketAddr,
    queue: mpsc::Sender<Outgoing>,
}

impl UpstreamLink {
    /// Start the link task to the stream upstream at `addr`, over
    /// `transport`; `local` is the advertised listener address of that
    /// transport (messages on the link arrive "at" it); `tls` runs the
    /// client handshake of a `tls:` upstream. The task stops on the
    /// context's shutdown.
    pub fn spawn(
        transport: Transport,
        addr: SocketAddr,
        local: SocketAddr,
        tls: Option<Arc<ClientTls>>,
        settings: LinkSettings,
        ctx: Arc<TransportContext>,
    ) -> Self {
        let (queue, waiting) = mpsc::channel(settings.queue_messages.max(1));
        let task = LinkTask {
            transport,
            tls,
            addr,
            local,
            settings,
            ctx,
            connection: None,
            down: None,
        };
        tokio::spawn(task.run(waiting));
        Self {
            transport,
            addr,
            queue,
        }
    }

    /// The transport of the link (TCP or TLS).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Queue a message for the upstream, without waiting: refused when the
    /// queue is full or the link has stopped.
    pub fn offer(&self, outgoing: Outgoing) -> Result<(), SendError> {
        self.queue.try_send(outgoing).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::UpstreamQueueFull(self.addr),
            mpsc::error::TrySendError::Closed(_) => SendError::UpstreamStopped(self.addr),
        })
    }
}

/// The link task's state.
struct LinkTask {
    transport: Transport,
    /// The TLS client of a `tls:` upstream.
    tls: Option<Arc<ClientTls>>,
    addr: SocketAddr,
    local: SocketAddr,
    settings: LinkSettings,
    ctx: Arc<TransportContext>,
    /// The open connection to the upstream, if any.
    connection: Option<ConnectionId>,
    /// After a failed connect: until when to fail fast, and why.
    down: Option<(Instant, Arc<dyn std::error::Error + Send + Sync>)>,
}

impl LinkTask {
    async fn run(mut self, mut waiting: mpsc::Receiver<Outgoing>) {
        loop {
            let outgoing = tokio::select! {
                () = self.ctx.shutdown.cancelled() => return,
                outgoing = waiting.recv() => match outgoing {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            let Outgoing { bytes, inbound } = outgoing;
            let sent = match self.connection().await {
                Ok(id) => self.ctx.connections.send(id, self.addr, bytes),
                Err(e) => Err(e),
            };
            match sent {
                // Written to the connection's queue: what `/readyz` counts
                // as delivered (a connect failure comes back below, as the
                // undelivered messages).
                Ok(()) => self.ctx.metrics.note_upstream_sent(),
                Err(error) => {
                    let undelivered = Event::Undelivered { inbound, error };
                    if self.ctx.events.send(undelivered).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The open connection, or a new one.
    async fn connection(&mut self) -> Result<ConnectionId, SendError> {
        if let Some(id) = self.connection {
            if self.ctx.connections.is_open_to(id, self.addr) {
                return Ok(id);
            }
            info!(upstream = %self.addr, connection = %id, "upstream connection closed");
            self.connection = None;
        }
        let unreachable = |cause| SendError::UpstreamUnreachable {
            addr: self.addr,
            cause,
        };
        if let Some((until, cause)) = &self.down {
            if Instant::now() < *until {
                return Err(unreachable(cause.clone()));
            }
        }
        match self.connect().await {
            Ok(id) => {
                self.down = None;
                self.connection = Some(id);
                info!(upstream = %self.addr, connection = %id, "connected to upstream");
                Ok(id)
            }
            Err(cause) => {
                Fault::UpstreamConnect.report(&self.ctx.metrics, Some(self.addr), &cause);
                let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::new(cause);
                self.down = Some((Instant::now() + self.settings.retry_delay, cause.clone()));
                Err(unreachable(cause))
            }
        }
    }

    /// Connect (bounded by the connect timeout and shutdown), run the TLS
    /// handshake of a `tls:` upstream (bounded by the handshake timeout),
    /// and start serving the connection.
    async fn connect(&self) -> Result<ConnectionId, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let connecting = tokio::time::timeout(timeout, TcpStream::connect(self.addr));
        let tcp = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "shutting down").into());
            }
            connected = connecting => match connected {
                Ok(connected) => connected?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {} ms", timeout.as_millis()),
                    )
                    .into());
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnectionInfo {
            transport: self.transport,
            peer: self.addr,
            local: self.local,
            from_upstream: true,
        };
        let Some(client) = &self.tls else {
            return Ok(stream::spawn(tcp, info, &self.ctx));
        };
        let deadline = Instant::now() + self.settings.handshake_timeout;
        let metrics = &self.ctx.metrics;
        let handshake = tokio::select! {
            () = self.ctx.shutdown.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "shutting down").into());
            }
            handshake = client.connect(tcp, deadline) => handshake,
        };
        match handshake {
            Ok(tls) => {
                metrics.count_tls_handshake(TlsSide::Upstream);
                info!(
                    upstream = %self.addr,
                    server_name = %client.server_name(),
                    version = tls.ssl().version_str(),
                    "TLS session with the upstream"
                );
                Ok(stream::spawn(tls, info, &self.ctx))
            }
            Err(e) => {
                metrics.count_tls_handshake_failure(TlsSide::Upstream, e.reason());
                Err(e.into())
            }
        }
    }
}

/// A UDP upstream that receives requests and sends nothing back for this
/// long is reported silent.
pub const SILENCE: Duration = Duration::from_secs(10);

/// The watch on a UDP upstream: a registrar that is down answers nothing
/// (an ICMP error, where one comes back, is counted by the UDP receive
/// loop as `upstream_unreachable`), so requests relayed to it with no
/// message from it for [`SILENCE`] are counted
/// (`sipadmit_upstream_silent_requests_total`) and warned about, at most
/// once per [`SILENCE`]; `/readyz` then fails until it sends a message.
#[derive(Debug, Default)]
pub struct DatagramWatch {
    /// The first request relayed since the upstream was last heard from.
    unanswered_since: Option<std::time::Instant>,
    /// Requests relayed since then and not yet counted as silent.
    pending: u64,
    /// A silence was reported and has not ended.
    silent: bool,
}

impl DatagramWatch {
    /// A request was sent to the upstream at `now`.
    pub fn relayed(&mut self, now: std::time::Instant) {
        self.unanswered_since.get_or_insert(now);
        self.pending += 1;
    }

    /// A message arrived from the upstream: it answers, and `/readyz` no
    /// longer reports it unreachable (silent, or ICMP errors).
    pub fn heard(&mut self, metrics: &crate::observe::metrics::Metrics) {
        if self.silent {
            info!("the UDP upstream answers again");
        }
        metrics.note_udp_upstream_heard();
        *self = Self::default();
    }

    /// Whether the upstream has been silent for [`SILENCE`] with requests
    /// relayed: counts them and warns (called every [`SILENCE`]).
    pub fn check(
        &mut self,
        now: std::time::Instant,
        metrics: &crate::observe::metrics::Metrics,
    ) -> bool {
        let Some(since) = self.unanswered_since else {
            return false;
        };
        let silent_for = now.saturating_duration_since(since);
        if silent_for < SILENCE {
            return false;
        }
        crate::observe::metrics::Metrics::add(
            &metrics.upstream_silent_requests,
            self.pending as usize,
        );
        tracing::warn!(
            requests = self.pending,
            silent_secs = silent_for.as_secs(),
            total = metrics
                .upstream_silent_requests
                .load(std::sync::atomic::Ordering::Relaxed),
            "the UDP upstream sent nothing back: is the registrar down?"
        );
        metrics.note_udp_upstream_unreachable(format!(
            "no message from it for {} s with requests relayed to it",
            silent_for.as_secs()
        ));
        self.pending = 0;
        self.silent = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(events: mpsc::Sender<Event>) -> Arc<TransportContext> {
        TransportContext::for_tests(events, 16)
    }

    fn outgoing(n: u8) -> Outgoing {
        Outgoing {
            bytes: Bytes::from(vec![n]),
            inbound: Inbound {
                bytes: Bytes::from(vec![n]),
                transport: Transport::Udp,
                source: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                connection: None,
                from_upstream: false,
            },
        }
    }

    /// A listener on 127.0.0.1 whose accept queue is full (backlog 0, one
    /// connection never accepted): further connects hang (their SYNs are
    /// dropped). Returns it and the connection filling it.
    async fn stalled_listener() -> (tokio::net::TcpListener, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let filler = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener, filler)
    }

    /// The first `n` undelivered events (waiting at most 10 s for them).
    async fn undelivered(events: &mut mpsc::Receiver<Event>, n: usize) -> Vec<(u8, SendError)> {
        let mut got = Vec::new();
        while got.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("an event within 10 s")
                .expect("the link is running");
            match event {
                Event::Undelivered { inbound, error } => got.push((inbound.bytes[0], error)),
                other => panic!("unexpected event {other:?}"),
            }
        }
        got
    }

    #[test]
    fn a_silent_udp_upstream_is_counted_and_an_answer_ends_it() {
        let metrics = crate::observe::metrics::Metrics::default();
        let mut watch = DatagramWatch::default();
        let t0 = std::time::Instant::now();
        assert!(!watch.check(t0 + SILENCE, &metrics), "nothing relayed");
        watch.relayed(t0);
        watch.relayed(t0);
        assert!(
            !watch.check(t0 + SILENCE / 2, &metrics),
            "not silent long enough"
        );
        assert!(watch.check(t0 + SILENCE, &metrics));
        let silent = || {
            metrics
                .upstream_silent_requests
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(silent(), 2);
        watch.relayed(t0 + SILENCE);
        assert!(watch.check(t0 + 2 * SILENCE, &metrics), "still silent");
        assert_eq!(silent(), 3, "each request counted once");
        assert!(metrics.udp_upstream_unreachable().is_some(), "for /readyz");
        watch.heard(&metrics);
        assert!(metrics.udp_upstream_unreachable().is_none());
        assert!(!watch.check(t0 + 3 * SILENCE, &metrics));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_stalled_connect_returns_what_waited() {
        let (listener, _filler) = stalled_listener().await;
        let addr = listener.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let settings = LinkSettings {
            queue_messages: 1,
            connect_timeout: Duration::from_millis(300),
            retry_delay: Duration::from_secs(60),
            ..LinkSettings::DEFAULT
        };
        let local = "127.0.0.1:5060".parse().unwrap();
        let link = UpstreamLink::spawn(Transport::Tcp, addr, local, None, settings, ctx.clone());
        // The first is taken by the task, which starts connecting ...
        link.offer(outgoing(1)).unwrap();
        let mut taken = false;
        for _ in 0..1000 {
            if link.queue.capacity() == 1 {
                taken = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(taken, "the link task took the first message");
        // ... the second waits in the queue, the third finds it full.
        link.offer(outgoing(2)).unwrap();
        assert!(matches!(
            link.offer(outgoing(3)),
            Err(SendError::UpstreamQueueFull(a)) if a == addr
        ));
        // The connect times out: both come back, in order, as undelivered.
        let got = undelivered(&mut events, 2).await;
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        for (_, error) in &got {
            assert!(
                matches!(error, SendError::UpstreamUnreachable { cause, .. } if cause.to_string().contains("no connection within 300 ms")),
                "{error}"
            );
        }
        assert_eq!(ctx.metrics.faults(Fault::UpstreamConnect), 1);
        ctx.shutdown.cancel();
    }

    #[tokio::test]
    async fn the_link_connects_writes_and_reconnects_after_the_upstream_closes() {
        let registrar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = registrar.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(16);
        let ctx = context(tx);
        let local = "127.0.0.1:5060".parse().unwrap();
        let link = UpstreamLink::spawn(
            Transport::Tcp,
            addr,
            local,
            None,
            LinkSettings::DEFAULT,
            ctx.clone(),
        );
        let read_one = |mut conn: TcpStream| async move {
            use tokio::io::AsyncReadExt;
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            (conn, byte[0])
        };
        // An earlier failure (what `/readyz` reports) is forgotten once the
        // link delivers.
        ctx.metrics
            .count_upstream_send_failure(Transport::Tcp, "earlier".into());
        link.offer(outgoing(7)).unwrap();
        let (first, _) = registrar.accept().await.unwrap();
        let (first, byte) = read_one(first).await;
        assert_eq!(byte, 7);
        assert!(ctx.metrics.upstream_failure().is_none());
        // What the registrar sends on the link is the registrar's.
        {
            use tokio::io::AsyncWriteExt;
            let mut first = first;
            first
                .write_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let Some(Event::Received(m)) = events.recv().await else {
                panic!("no message")
            };
            assert!(m.from_upstream && m.connection.is_some() && m.source == addr);
            assert_eq!(m.local, local);
            // The registrar closes; the next message opens a new connection.
            drop(first);
        }
        for _ in 0..1000 {
            if ctx.connections.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        link.offer(outgoing(8)).unwrap();
        let (second, _) = registrar.accept().await.unwrap();
        let (_second, byte) = read_one(second).await;
        assert_eq!(byte, 8);
        assert_eq!(ctx.metrics.faults(Fault::UpstreamConnect), 0);
        ctx.shutdown.cancel();
    }
}
