//! UDP: one receive loop per listener socket. Keep-alives and STUN are
//! counted, not parsed; every other datagram goes to the dispatcher. A
//! failed receive costs that datagram only; an unrecoverable socket error
//! ends the loop.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, error, info_span, Instrument};

use super::{is_unrecoverable, Event, Fault, Transport, TransportContext, UdpListener};
use crate::observe::metrics::{DropReason, Metrics};
use crate::proxy::Inbound;
use crate::sip::framing::{classify_datagram, Datagram};

/// Largest UDP payload read (bigger datagrams are truncated by the kernel
/// and then refused by the size limit).
const RECV_BUFFER_BYTES: usize = 65_536;

/// Receive datagrams on `listener` until shutdown. A datagram whose source
/// is in `proxy.upstream_sources` is the registrar's.
pub async fn serve(listener: UdpListener, ctx: Arc<TransportContext>) {
    let span = info_span!("listener", transport = %Transport::Udp, local = %listener.local);
    receive(listener, ctx).instrument(span).await;
}

async fn receive(listener: UdpListener, ctx: Arc<TransportContext>) {
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        let received = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            received = listener.socket.recv_from(&mut buf) => received,
        };
        let (n, source) = match received {
            Ok(received) => received,
            Err(e) if is_unrecoverable(&e) => {
                error!(error = %e, "UDP socket unusable; no more datagrams received on it");
                return;
            }
            Err(e) => {
                Fault::UdpReceive.report(&ctx.metrics, None, &e);
                continue;
            }
        };
        let data = &buf[..n];
        match classify_datagram(data) {
            Datagram::KeepAlive => {
                Metrics::inc(&ctx.metrics.keepalives);
                continue;
            }
            Datagram::Stun => {
                debug!(%source, "STUN datagram ignored");
                ctx.metrics.count_drop(DropReason::Stun);
                continue;
            }
            Datagram::Sip => {}
        }
        let message = Inbound {
            bytes: Bytes::copy_from_slice(data),
            transport: Transport::Udp,
            source,
            local: listener.local,
            connection: None,
            from_upstream: ctx.upstream_sources.matches(source),
        };
        if ctx.events.send(Event::Received(message)).await.is_err() {
            return;
        }
    }
}
