//! UDP: one receive loop per listener socket. Keep-alives and STUN are
//! counted, not parsed; every other datagram goes to the dispatcher. A
//! failed receive costs that datagram only; an unrecoverable socket error
//! ends the loop.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::{debug, error, info_span, Instrument};

use super::{admit, is_unrecoverable, Admitted, Fault, Transport, TransportContext, UdpListener};
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
        let Admitted::Event(event, _) = admit(&ctx, message) else {
            continue;
        };
        if ctx.events.send(event).await.is_err() {
            return;
        }
    }
}

/// Bind a UDP listener with the receive and send buffers asked for (the
/// kernel caps them at `net.core.rmem_max` / `wmem_max`; what it granted is
/// logged, with a hint when it is less than asked).
pub fn bind(
    addr: std::net::SocketAddr,
    receive_buffer_bytes: usize,
    send_buffer_bytes: usize,
) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As std and tokio bind: [::] is dual-stack unless the system says otherwise.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(receive_buffer_bytes);
    let _ = socket.set_send_buffer_size(send_buffer_bytes);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    // Linux reports twice what was set (its bookkeeping overhead included).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < receive_buffer_bytes {
        tracing::warn!(
            local = %addr,
            asked = receive_buffer_bytes,
            granted,
            "UDP receive buffer smaller than limits.udp_receive_buffer_bytes: raise net.core.rmem_max"
        );
    } else {
        debug!(local = %addr, receive_buffer_bytes = granted, "UDP receive buffer set");
    }
    UdpSocket::from_std(socket.into())
}

/// Datagrams the kernel dropped on these sockets (receive buffer full),
/// summed from the `drops` column of `/proc/net/udp` and `/proc/net/udp6`
/// for the sockets' inodes. `None` where /proc is not there.
pub fn kernel_drops(sockets: &[&UdpSocket]) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let inodes: Vec<u64> = sockets
        .iter()
        .filter_map(|s| socket_inode(s.as_raw_fd()))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let mut total = 0;
    let mut read_any = false;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        total += drops_in_table(&text, &inodes);
    }
    read_any.then_some(total)
}

/// The inode of a socket, from `/proc/self/fd/N` (`socket:[INODE]`).
fn socket_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Sum the `drops` column (the last) of the rows of a `/proc/net/udp`
/// table whose `inode` (the tenth column) is one of `inodes`.
fn drops_in_table(text: &str, inodes: &[u64]) -> u64 {
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let columns: Vec<&str> = row.split_whitespace().collect();
            let inode: u64 = columns.get(9)?.parse().ok()?;
            let drops: u64 = columns.last()?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_is_summed_for_our_inodes() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  2: 0100007F:13C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 5\n";
        assert_eq!(drops_in_table(table, &[4242]), 17);
        assert_eq!(drops_in_table(table, &[4242, 99]), 22);
        assert_eq!(drops_in_table(table, &[1]), 0);
    }

    #[tokio::test]
    async fn buffers_are_set_and_kernel_drops_are_counted() {
        let addr = "127.0.0.1:0".parse().unwrap();
        let big = bind(addr, 1 << 20, 1 << 20).unwrap();
        let granted = socket2::SockRef::from(&big).recv_buffer_size().unwrap();
        // Above the 208 KiB default (where net.core.rmem_max allows it).
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(granted >= 2 * rmem_max.min(1 << 20), "{granted}");
        // A socket with a tiny buffer that nobody reads: the kernel drops
        // what does not fit, and the drops show.
        let small = bind(addr, 4096, 4096).unwrap();
        let target = small.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            let _ = sender.send_to(&[0u8; 1000], target);
        }
        let drops = kernel_drops(&[&small]).expect("/proc/net/udp");
        assert!(drops > 0, "{drops}");
        assert_eq!(kernel_drops(&[&big]), Some(0));
    }
}
