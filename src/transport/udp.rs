//! UDP: one receive loop per listener socket. Keep-alives and STUN are
//! counted, not parsed; every other datagram goes to the dispatcher.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Transport;
use crate::observe::metrics::{DropReason, Metrics};
use crate::proxy::Inbound;
use crate::sip::framing::{classify_datagram, Datagram};

/// Largest UDP payload read (bigger datagrams are truncated by the kernel
/// and then refused by the size limit).
const RECV_BUFFER_BYTES: usize = 65_536;

/// Receive datagrams until `shutdown`; `local` is the address this
/// listener is advertised at (in Via, Path, Record-Route); `upstream` marks
/// the registrar's messages.
pub async fn serve(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    upstream: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        let (n, source) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors for earlier sends surface here; keep serving.
                    warn!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let data = &buf[..n];
        match classify_datagram(data) {
            Datagram::KeepAlive => {
                Metrics::inc(&metrics.keepalives);
                continue;
            }
            Datagram::Stun => {
                debug!(%source, "STUN datagram ignored");
                metrics.count_drop(DropReason::Stun);
                continue;
            }
            Datagram::Sip => {}
        }
        let message = Inbound {
            bytes: Bytes::copy_from_slice(data),
            transport: Transport::Udp,
            source,
            local,
            connection: None,
            from_upstream: source == upstream,
        };
        if inbound.send(message).await.is_err() {
            return;
        }
    }
}
