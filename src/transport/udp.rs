//! UDP: a worker's datagrams are received where they are dispatched
//! ([`Datagrams`], awaited by the dispatcher's loop: no queue and no task
//! switch between the socket and the core). Keep-alives and STUN are
//! counted, not parsed; every other datagram is admitted (the source's rate
//! limit) and handed on as an [`Event`]. A failed receive costs that
//! datagram only; an unrecoverable socket error ends receiving on that
//! socket.
//!
//! ICMP errors (Linux): an unconnected UDP socket hears nothing of them
//! unless `IP_RECVERR` / `IPV6_RECVERR` is set. It is, on every listener, so
//! the kernel queues each ICMP error for a datagram sent (port, host or
//! network unreachable) on the socket's error queue with the datagram's
//! destination; a task per socket ([`watch_errors`]) reads that queue and
//! counts the error as [`Fault::UpstreamUnreachable`] (sent to the UDP
//! upstream) or [`Fault::ClientUnreachable`]. The option also makes the
//! kernel hand the error once to the next `recvfrom` or `sendto` on the
//! socket (whatever its destination): [`Datagrams`] takes it for what it
//! is, and [`send_to`] sends again (up to 8 tries in all for a refused
//! send, as errors may keep coming during a flood from closed ports), so no
//! datagram is lost to an error that was about another one.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::{
    admit, is_unrecoverable, Admitted, Event, Fault, Transport, TransportContext, UdpListener,
};
use crate::observe::metrics::{DropReason, Metrics};
use crate::sip::framing::{classify_datagram, Datagram};
use crate::vocabulary::{Inbound, PeerAddr};
#[cfg(target_os = "linux")]
use std::net::{IpAddr, SocketAddr};

/// Largest UDP payload read (bigger datagrams are truncated by the kernel
/// and then refused by the size limit).
const RECV_BUFFER_BYTES: usize = 65_536;

/// The datagrams of one worker's UDP listeners, received where they are
/// dispatched: the dispatcher awaits [`Datagrams::next`] beside its other
/// work, so a datagram goes from the socket to the core with no queue and
/// no task switch in between. Keep-alives and STUN are counted here, a
/// source over its rate limit is refused or dropped ([`admit`]); what is
/// left comes out as an [`Event`]. The sockets' ICMP errors are read by
/// [`watch_errors`], a task of its own per socket.
pub struct Datagrams {
    listeners: Vec<UdpListener>,
    /// What admission needs; `None` once no listener is left (so that the
    /// worker's event queue can close when its other transports end).
    ctx: Option<Arc<TransportContext>>,
    buf: Box<[u8]>,
    /// The listener asked first next time: turn about, so one busy socket
    /// does not starve the others.
    first: usize,
}

impl Datagrams {
    /// The datagrams arriving on `listeners`, admitted through `ctx`.
    pub fn new(listeners: Vec<UdpListener>, ctx: Arc<TransportContext>) -> Self {
        Self {
            ctx: (!listeners.is_empty()).then_some(ctx),
            listeners,
            buf: vec![0u8; RECV_BUFFER_BYTES].into_boxed_slice(),
            first: 0,
        }
    }

    /// Whether any listener is left to receive on.
    pub fn is_open(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// The next datagram that is an event for the dispatcher, once one
    /// arrives (pending forever when no listener is left).
    pub async fn next(&mut self) -> Event {
        loop {
            let (index, received) = std::future::poll_fn(|cx| self.poll_receive(cx)).await;
            if let Some(event) = self.taken(index, received) {
                return event;
            }
        }
    }

    /// One more event already queued on a socket, without waiting: `None`
    /// when nothing is (what is queued but not an event is taken on the
    /// way).
    pub fn try_next(&mut self) -> Option<Event> {
        for _ in 0..RECEIVE_BATCH {
            let (index, received) = self.try_receive()?;
            if let Some(event) = self.taken(index, received) {
                return Some(event);
            }
        }
        None
    }

    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<(usize, Received)> {
        let count = self.listeners.len();
        for turn in 0..count {
            let index = (self.first + turn) % count;
            let mut read = ReadBuf::new(&mut self.buf);
            if let Poll::Ready(received) =
                self.listeners[index].socket.poll_recv_from(cx, &mut read)
            {
                self.first = (index + 1) % count;
                let n = read.filled().len();
                return Poll::Ready((index, received.map(|source| (n, source))));
            }
        }
        Poll::Pending
    }

    fn try_receive(&mut self) -> Option<(usize, Received)> {
        let count = self.listeners.len();
        for turn in 0..count {
            let index = (self.first + turn) % count;
            match self.listeners[index].socket.try_recv_from(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                received => {
                    self.first = (index + 1) % count;
                    return Some((index, received));
                }
            }
        }
        None
    }

    /// What one receive on listener `index` gives the dispatcher (the
    /// datagram is in the buffer). A socket that can no longer receive is
    /// let go.
    fn taken(&mut self, index: usize, received: Received) -> Option<Event> {
        let ctx = self.ctx.as_ref()?;
        let listener = &self.listeners[index];
        let (n, source) = match received {
            Ok(received) => received,
            Err(e) if is_icmp_echo(&e) => {
                debug!(local = %listener.local, error = %e, "an ICMP error for an earlier datagram (counted from the error queue)");
                return None;
            }
            Err(e) if is_unrecoverable(&e) => {
                error!(local = %listener.local, error = %e, "UDP socket unusable; no more datagrams received on it");
                self.listeners.swap_remove(index);
                self.first = 0;
                if self.listeners.is_empty() {
                    self.ctx = None;
                }
                return None;
            }
            Err(e) => {
                Fault::UdpReceive.report(&ctx.metrics, None, &e);
                return None;
            }
        };
        admitted(ctx, listener, source, &self.buf[..n])
    }
}

/// What a receive gives: the datagram's length and source.
type Received = std::io::Result<(usize, std::net::SocketAddr)>;

/// Datagrams taken in a row without an event for the dispatcher (keep-
/// alives, refused sources) before [`Datagrams::try_next`] gives up its
/// turn.
const RECEIVE_BATCH: usize = 32;

/// The event a datagram from `source` on `listener` is, after its source's
/// rate limit; keep-alives and STUN are counted, not handed on.
fn admitted(
    ctx: &TransportContext,
    listener: &UdpListener,
    source: std::net::SocketAddr,
    data: &[u8],
) -> Option<Event> {
    match classify_datagram(data) {
        Datagram::KeepAlive => {
            Metrics::inc(&ctx.metrics.keepalives);
            return None;
        }
        Datagram::Stun => {
            answer_stun(ctx, listener, source, data);
            return None;
        }
        Datagram::Sip => {}
    }
    // An IPv4 client of a dual-stack `[::]` listener arrives as
    // `::ffff:a.b.c.d`: it is known (logged, limited, recorded, mirrored) by
    // its IPv4 address; the listener maps it back when it answers.
    let source = std::net::SocketAddr::new(source.ip().to_canonical(), source.port());
    let message = Inbound {
        bytes: Bytes::copy_from_slice(data),
        transport: Transport::Udp,
        source: PeerAddr(source),
        local: listener.local,
        connection: None,
        leg: ctx.upstream_sources.leg_of(source),
    };
    match admit(ctx, message) {
        Admitted::Event(event, _) => Some(event),
        _ => None,
    }
}

/// A STUN Binding request (an RFC 5626 client's keep-alive, RFC 5626
/// section 8) is answered from the listener it reached with the source's
/// address, and counted as a keep-alive, when its source is not banned and
/// within its message rate (the answer is at most about 2.3 times the
/// request, a `420` to a 24-byte request being 56 bytes: a forged source
/// must not make this port a reflector); one with
/// attributes that must be understood is answered `420` (RFC 5389 7.3.1),
/// and counted as a keep-alive too. Any
/// other STUN message is counted as dropped (`stun`), one over the limit
/// as `rate_limited` or `banned`.
fn answer_stun(
    ctx: &TransportContext,
    listener: &UdpListener,
    source: std::net::SocketAddr,
    data: &[u8],
) {
    let canonical = std::net::SocketAddr::new(source.ip().to_canonical(), source.port());
    let response = match super::stun::binding_response(data, canonical) {
        Ok(answer) => {
            if !answer.unknown.is_empty() {
                debug!(local = %listener.local, source = %canonical, unknown = ?answer.unknown, "STUN Binding request with attributes that must be understood: answered 420");
            }
            answer.bytes
        }
        Err(e) => {
            debug!(local = %listener.local, source = %canonical, error = %e, "STUN datagram not answered");
            ctx.metrics.count_drop(DropReason::Stun);
            return;
        }
    };
    let now = std::time::Instant::now();
    if !ctx.admission.answered_keep_alive(canonical, now) {
        let banned =
            ctx.admission
                .is_banned_ip(canonical.ip(), super::admission::BanScope::Datagrams, now);
        ctx.metrics.count_drop(if banned {
            DropReason::Banned
        } else {
            DropReason::RateLimited
        });
        return;
    }
    // The socket's copy of an ICMP error for an earlier datagram (to
    // someone else) fails a send once: sent again, as `send_to` does.
    let mut attempt = 1;
    let sent = loop {
        match listener.socket.try_send_to(&response, source) {
            Err(e) if is_icmp_echo(&e) && attempt < attempts_after(&e) => attempt += 1,
            sent => break sent,
        }
    };
    match sent {
        Ok(_) => Metrics::inc(&ctx.metrics.keepalives),
        Err(e) => {
            Fault::Send.report(&ctx.metrics, Some(canonical), &e);
            ctx.metrics.count_drop(DropReason::SendFailed);
        }
    }
}

/// Read the ICMP errors of `listener`'s socket until `shutdown`: each is
/// counted as [`Fault::UpstreamUnreachable`] (for a datagram sent to the
/// UDP upstream `udp_upstream`) or [`Fault::ClientUnreachable`]. Nothing
/// to do (a warning) where the kernel does not report them.
pub async fn watch_errors(
    listener: UdpListener,
    metrics: Arc<Metrics>,
    udp_upstream: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
) {
    if let Err(e) = report_icmp_errors(&listener.socket) {
        tracing::warn!(local = %listener.local, error = %e, "ICMP errors for datagrams sent will not be counted on this socket");
        return;
    }
    // The error queue is also drained once a second: the readiness event of
    // an ICMP error can be missed when it arrives together with other events
    // on the socket, and the error would then wait for the next one.
    let mut sweep = tokio::time::interval(ICMP_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            () = &mut cancelled => return,
            queued = next_icmp_error(&listener.socket) => {
                if let Ok(icmp) = queued {
                    report_icmp_error(&metrics, udp_upstream, icmp);
                }
            }
            _ = sweep.tick() => drain_icmp_errors(&listener.socket, &metrics, udp_upstream),
        }
    }
}

/// How many times in all [`send_to`] tries a datagram whose sends are
/// refused by the ICMP port-unreachable errors of earlier datagrams. Each
/// failed send takes one pending error; more can arrive between two sends
/// when many clients' ports are closed (a flood from forged sources that
/// sipadmit answers).
const REFUSED_SEND_ATTEMPTS: usize = 8;

/// Send `bytes` to `to`. An ICMP error for an EARLIER datagram (any
/// destination) is handed once to the next send on the socket and fails
/// it; such a failure is followed by another try, so this datagram is not
/// lost to it (the error itself is counted from the error queue). A
/// refused send (port unreachable, which an unconnected socket never gets
/// for the datagram it sends) is tried up to `REFUSED_SEND_ATTEMPTS` (8)
/// times in all; a host or network unreachable twice, since the kernel
/// also gives those at once for a destination it has no route to.
pub async fn send_to(
    socket: &UdpSocket,
    bytes: &[u8],
    to: std::net::SocketAddr,
) -> std::io::Result<()> {
    let mut attempt = 1;
    loop {
        match socket.send_to(bytes, to).await {
            Err(e) if is_icmp_echo(&e) && attempt < attempts_after(&e) => {
                debug!(destination = %to, error = %e, attempt, "send failed with an ICMP error for an earlier datagram; sending again");
                attempt += 1;
            }
            sent => return sent.map(|_| ()),
        }
    }
}

/// How many sends in all a datagram gets when they fail with `error`.
fn attempts_after(error: &std::io::Error) -> usize {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => REFUSED_SEND_ATTEMPTS,
        _ => 2,
    }
}

/// Whether a receive or send error is the socket's copy of an ICMP error
/// (port, host or network unreachable) the kernel also queued on the error
/// queue.
fn is_icmp_echo(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
    )
}

/// One ICMP error the kernel queued for a datagram the socket sent.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct IcmpError {
    /// Where the datagram went.
    destination: SocketAddr,
    /// What the ICMP error means: connection refused (port unreachable),
    /// host or network unreachable, ...
    error: std::io::Error,
    /// The host or router that sent it.
    reporter: Option<IpAddr>,
}

#[cfg(target_os = "linux")]
impl std::fmt::Display for IcmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reporter {
            Some(reporter) => write!(f, "{} (ICMP from {reporter})", self.error),
            None => write!(f, "{} (ICMP)", self.error),
        }
    }
}

/// Ask the kernel to queue ICMP errors for datagrams sent on `socket`
/// (`IP_RECVERR`; `IPV6_RECVERR` too on an IPv6 socket, whose IPv4-mapped
/// traffic takes the IPv4 option).
#[cfg(target_os = "linux")]
fn report_icmp_errors(socket: &UdpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if socket.local_addr()?.is_ipv6() {
        setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
        // Dual-stack: IPv4 peers on an IPv6 socket (not fatal if refused).
        let _ = setsockopt(socket, sockopt::Ipv4RecvErr, &true);
    } else {
        setsockopt(socket, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn report_icmp_errors(_socket: &UdpSocket) -> std::io::Result<()> {
    Err(std::io::Error::other("ICMP errors are read on Linux only"))
}

/// The next ICMP error of the socket's error queue, once there is one.
/// An entry that is not an ICMP error (or cannot be read) is skipped.
#[cfg(target_os = "linux")]
async fn next_icmp_error(socket: &UdpSocket) -> Result<IcmpError, ()> {
    socket
        .async_io(tokio::io::Interest::ERROR, || read_error_queue(socket))
        .await
        .map_err(|_| ())?
        .ok_or(())
}

#[cfg(not(target_os = "linux"))]
async fn next_icmp_error(_socket: &UdpSocket) -> Result<std::convert::Infallible, ()> {
    std::future::pending().await
}

/// How often the error queue is read without waiting for its readiness.
const ICMP_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Count every ICMP error waiting on the socket's error queue, now.
#[cfg(target_os = "linux")]
fn drain_icmp_errors(socket: &UdpSocket, metrics: &Metrics, udp_upstream: Option<SocketAddr>) {
    while let Ok(entry) = read_error_queue(socket) {
        if let Some(icmp) = entry {
            report_icmp_error(metrics, udp_upstream, icmp);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn drain_icmp_errors(
    _socket: &UdpSocket,
    _metrics: &Metrics,
    _udp_upstream: Option<std::net::SocketAddr>,
) {
}

/// Take one entry of the socket's error queue: `Ok(Some)` for an ICMP
/// error, `Ok(None)` for another entry, `WouldBlock` when the queue is
/// empty. A failing read also counts as `WouldBlock` (the readiness is
/// cleared until the next error, never spun on).
#[cfg(target_os = "linux")]
fn read_error_queue(socket: &UdpSocket) -> std::io::Result<Option<IcmpError>> {
    use nix::libc;
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    // The datagram's first bytes come back too; they are not needed.
    let mut payload = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut payload)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
    let message =
        match recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut control), flags) {
            Ok(message) => message,
            Err(nix::errno::Errno::EAGAIN) => return Err(std::io::ErrorKind::WouldBlock.into()),
            Err(e) => {
                debug!(error = %e, "reading the UDP error queue failed");
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
        };
    let destination = message.address.as_ref().and_then(|a| {
        if let Some(v4) = a.as_sockaddr_in() {
            return Some(SocketAddr::from((v4.ip(), v4.port())));
        }
        let v6 = a.as_sockaddr_in6()?;
        let ip = v6.ip();
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Some(SocketAddr::new(ip, v6.port()))
    });
    let Ok(cmsgs) = message.cmsgs() else {
        return Ok(None);
    };
    for cmsg in cmsgs {
        let (extended, reporter) = match cmsg {
            ControlMessageOwned::Ipv4RecvErr(extended, reporter) => (
                extended,
                reporter
                    .map(|r| IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(r.sin_addr.s_addr)))),
            ),
            ControlMessageOwned::Ipv6RecvErr(extended, reporter) => (
                extended,
                reporter.map(|r| IpAddr::V6(std::net::Ipv6Addr::from(r.sin6_addr.s6_addr))),
            ),
            _ => continue,
        };
        let from_icmp = matches!(
            extended.ee_origin,
            libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
        );
        let Some(destination) = destination.filter(|_| from_icmp) else {
            debug!(
                origin = extended.ee_origin,
                errno = extended.ee_errno,
                "UDP error queue entry that is not an ICMP error; skipped"
            );
            return Ok(None);
        };
        return Ok(Some(IcmpError {
            destination,
            error: std::io::Error::from_raw_os_error(extended.ee_errno as i32),
            reporter,
        }));
    }
    Ok(None)
}

/// Count and log (rate-limited) an ICMP error: for the UDP upstream it
/// also makes `/readyz` fail until the upstream sends a message again.
#[cfg(target_os = "linux")]
fn report_icmp_error(metrics: &Metrics, udp_upstream: Option<SocketAddr>, icmp: IcmpError) {
    if udp_upstream == Some(icmp.destination) {
        metrics
            .note_udp_upstream_unreachable(format!("ICMP error for a datagram sent to it: {icmp}"));
        Fault::UpstreamUnreachable.report(metrics, Some(icmp.destination), &icmp);
    } else {
        Fault::ClientUnreachable.report(metrics, Some(icmp.destination), &icmp);
    }
}

#[cfg(not(target_os = "linux"))]
fn report_icmp_error(
    _metrics: &Metrics,
    _udp_upstream: Option<std::net::SocketAddr>,
    icmp: std::convert::Infallible,
) {
    match icmp {}
}

/// Bind a UDP listener: `workers` sockets on `addr` (one per worker, a
/// `SO_REUSEPORT` group spreading datagrams at random when more than one,
/// see [`super::spread`]), each with the receive and send buffers asked
/// for (the kernel caps them at `net.core.rmem_max` / `wmem_max`; what it
/// granted is logged, with a hint when it is less than asked).
pub fn bind(
    addr: std::net::SocketAddr,
    workers: usize,
    receive_buffer_bytes: usize,
    send_buffer_bytes: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let buffers = |socket: &socket2::Socket| {
        let _ = socket.set_recv_buffer_size(receive_buffer_bytes);
        let _ = socket.set_send_buffer_size(send_buffer_bytes);
        Ok(())
    };
    let group = super::spread::bind_group(addr, socket2::Type::DGRAM, workers, &buffers)?;
    // Linux reports twice what was set (its bookkeeping overhead included).
    let granted = group[0].recv_buffer_size().unwrap_or(0) / 2;
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
    Ok(group.into_iter().map(Into::into).collect())
}

/// Datagrams the kernel dropped on each socket of these inodes (receive
/// buffer full; see [`socket_inode`]), as `(inode, drops)` from the `drops`
/// column of `/proc/net/udp` and `/proc/net/udp6`; a socket that is closed
/// is not listed. `None` where /proc is not there, or when a table could
/// not be read this time (out of descriptors).
pub fn kernel_drops(inodes: &[u64]) -> Option<Vec<(u64, u64)>> {
    if inodes.is_empty() {
        return None;
    }
    drops_in_tables(
        ["/proc/net/udp", "/proc/net/udp6"].map(std::fs::read_to_string),
        inodes,
    )
}

/// [`drops_in_table`] of the tables read; a table that does not exist (no
/// IPv6) lists nothing, one that could not be read makes the whole unknown.
fn drops_in_tables(
    tables: [std::io::Result<String>; 2],
    inodes: &[u64],
) -> Option<Vec<(u64, u64)>> {
    let mut drops = Vec::new();
    let mut read_any = false;
    for table in tables {
        match table {
            Ok(text) => {
                read_any = true;
                drops.extend(drops_in_table(&text, inodes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    read_any.then_some(drops)
}

/// What the kernel's per-socket drop counters said at the last read, so
/// that each read adds only what is new: the drops of a socket that closes
/// (a worker that stopped) stay counted, and do not hide the new drops of
/// the others.
#[derive(Debug, Default)]
pub struct KernelDrops {
    last: std::collections::HashMap<u64, u64>,
}

impl KernelDrops {
    /// The drops since the last read, given each socket's counter now
    /// (from [`kernel_drops`]).
    pub fn new_since_last(&mut self, now: &[(u64, u64)]) -> u64 {
        now.iter()
            .map(|&(inode, drops)| {
                let last = self.last.insert(inode, drops).unwrap_or(0);
                drops.saturating_sub(last)
            })
            .sum()
    }
}

/// The inode of a socket, from `/proc/self/fd/N` (`socket:[INODE]`);
/// `None` where /proc is not there.
pub fn socket_inode(socket: &impl std::os::fd::AsRawFd) -> Option<u64> {
    let fd = socket.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The `drops` column (the last) of the rows of a `/proc/net/udp` table
/// whose `inode` (the tenth column) is one of `inodes`, with their inode.
fn drops_in_table(text: &str, inodes: &[u64]) -> Vec<(u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let columns: Vec<&str> = row.split_whitespace().collect();
            let inode: u64 = columns.get(9)?.parse().ok()?;
            let drops: u64 = columns.last()?.parse().ok()?;
            inodes.contains(&inode).then_some((inode, drops))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_is_summed_for_our_inodes() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
  2: 0100007F:13C5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 5\n";
        assert_eq!(drops_in_table(table, &[4242]), [(4242, 17)]);
        assert_eq!(drops_in_table(table, &[4242, 99]), [(4242, 17), (99, 5)]);
        assert_eq!(drops_in_table(table, &[1]), []);
    }

    #[test]
    fn drops_of_a_socket_that_closed_stay_counted_and_hide_no_new_ones() {
        let mut tally = KernelDrops::default();
        assert_eq!(tally.new_since_last(&[(1, 10), (2, 5)]), 15);
        assert_eq!(tally.new_since_last(&[(1, 10), (2, 7)]), 2);
        // Socket 1 closed (its worker stopped): socket 2's new drops count.
        assert_eq!(tally.new_since_last(&[(2, 8)]), 1);
        assert_eq!(tally.new_since_last(&[(2, 8)]), 0);
    }

    /// A listener on a loopback port of its own.
    async fn loopback_listener() -> UdpListener {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = crate::vocabulary::LocalAddr(socket.local_addr().unwrap());
        UdpListener::new(Arc::new(socket), local)
    }

    /// The datagrams of one loopback listener, its address, and a client
    /// socket to send to it from.
    async fn one_listener() -> (Datagrams, std::net::SocketAddr, UdpSocket) {
        let (events, _queue) = tokio::sync::mpsc::channel(1);
        let listener = loopback_listener().await;
        let local = listener.local.0;
        let datagrams = Datagrams::new(vec![listener], TransportContext::for_tests(events, 4));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (datagrams, local, client)
    }

    /// The source and local address of a received event.
    fn addresses(event: Event) -> (std::net::SocketAddr, std::net::SocketAddr) {
        match event {
            Event::Received(inbound) => (inbound.source.0, inbound.local.0),
            other => panic!("not a received message: {other:?}"),
        }
    }

    #[tokio::test]
    async fn datagrams_come_from_every_listener_keepalives_are_counted_and_stun_answered() {
        let (events, _queue) = tokio::sync::mpsc::channel(1);
        let ctx = TransportContext::for_tests(events, 4);
        let (a, b) = (loopback_listener().await, loopback_listener().await);
        let (a_local, b_local) = (a.local.0, b.local.0);
        let mut datagrams = Datagrams::new(vec![a, b], ctx.clone());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let options = b"OPTIONS sip:x@example.com SIP/2.0\r\n\r\n";
        // A STUN binding request: type 0x0001, length 0, the magic cookie.
        let stun = [
            0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        // A Binding success response: nothing to answer.
        let mut stun_response = stun;
        stun_response[0] = 1;
        client.send_to(b"\r\n\r\n", a_local).await.unwrap();
        client.send_to(&stun, a_local).await.unwrap();
        client.send_to(&stun_response, a_local).await.unwrap();
        client.send_to(options, a_local).await.unwrap();
        client.send_to(options, b_local).await.unwrap();
        let within = std::time::Duration::from_secs(5);
        let mut locals = Vec::new();
        for _ in 0..2 {
            let event = tokio::time::timeout(within, datagrams.next())
                .await
                .expect("a datagram");
            let (source, local) = addresses(event);
            assert_eq!(source, client.local_addr().unwrap());
            locals.push(local);
        }
        locals.sort();
        let mut expected = vec![a_local, b_local];
        expected.sort();
        assert_eq!(locals, expected, "one message from each listener");
        assert_eq!(
            ctx.metrics
                .keepalives
                .load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the CRLF and the Binding request"
        );
        assert_eq!(ctx.metrics.drops(DropReason::Stun), 1, "the response");
        assert!(datagrams.try_next().is_none(), "nothing else queued");
        assert!(datagrams.is_open());
        // The Binding request was answered from the listener it reached,
        // with the client's address (RFC 5626 8, RFC 5389 15.2).
        let mut answer = [0u8; 64];
        let (n, from) = tokio::time::timeout(within, client.recv_from(&mut answer))
            .await
            .expect("a STUN answer")
            .unwrap();
        assert_eq!(from, a_local);
        let expected =
            crate::transport::stun::binding_response(&stun, client.local_addr().unwrap());
        assert_eq!(&answer[..n], &expected.unwrap().bytes[..]);
    }

    /// An IPv4 client of a dual-stack `[::]` socket is known by its IPv4
    /// address from the receive on (trial 15: log lines spelled it
    /// `::ffff:a.b.c.d` while records said `a.b.c.d`).
    #[tokio::test]
    async fn an_ipv4_client_of_a_dual_stack_socket_is_known_by_its_ipv4_address() {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None);
        let Ok(socket) = socket else {
            eprintln!("skipping: no IPv6");
            return;
        };
        socket.set_only_v6(false).unwrap();
        socket.set_nonblocking(true).unwrap();
        let any: std::net::SocketAddr = "[::]:0".parse().unwrap();
        if socket.bind(&any.into()).is_err() {
            eprintln!("skipping: no IPv6");
            return;
        }
        let socket = UdpSocket::from_std(socket.into()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let local =
            crate::vocabulary::LocalAddr(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let (events, _queue) = tokio::sync::mpsc::channel(1);
        let listener = UdpListener::new(Arc::new(socket), local);
        let mut datagrams = Datagrams::new(vec![listener], TransportContext::for_tests(events, 4));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(b"OPTIONS sip:x@example.com SIP/2.0\r\n\r\n", local.0)
            .await
            .unwrap();
        let within = std::time::Duration::from_secs(5);
        let event = tokio::time::timeout(within, datagrams.next())
            .await
            .expect("a datagram");
        let (source, _) = addresses(event);
        assert_eq!(source, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn what_is_queued_is_taken_without_waiting() {
        let (mut datagrams, local, client) = one_listener().await;
        for _ in 0..3 {
            client.send_to(b"\r\n\r\n", local).await.unwrap();
            client
                .send_to(b"SIP/2.0 200 OK\r\n\r\n", local)
                .await
                .unwrap();
        }
        let within = std::time::Duration::from_secs(5);
        tokio::time::timeout(within, datagrams.next())
            .await
            .expect("a datagram");
        // Loopback delivers at once: the other two are queued already, the
        // keep-alives between them skipped.
        assert!(datagrams.try_next().is_some());
        assert!(datagrams.try_next().is_some());
        assert!(datagrams.try_next().is_none());
    }

    #[tokio::test]
    async fn a_queue_is_taken_in_order_and_an_emptied_socket_still_wakes() {
        let (mut datagrams, local, client) = one_listener().await;
        let count = 25;
        for i in 0..count {
            let message = format!("SIP/2.0 200 OK\r\nCall-ID: {i}\r\n\r\n");
            client.send_to(message.as_bytes(), local).await.unwrap();
        }
        let call_id = |event: Event| match event {
            Event::Received(inbound) => String::from_utf8_lossy(&inbound.bytes[25..]).into_owned(),
            other => panic!("not a received message: {other:?}"),
        };
        let within = std::time::Duration::from_secs(5);
        let mut seen = vec![call_id(
            tokio::time::timeout(within, datagrams.next())
                .await
                .expect("a datagram"),
        )];
        while let Some(event) = datagrams.try_next() {
            seen.push(call_id(event));
        }
        let sent: Vec<String> = (0..count).map(|i| format!("{i}\r\n\r\n")).collect();
        assert_eq!(seen, sent, "every datagram, in the order sent");
        // The last read found the queue empty, which cleared the socket's
        // readiness: the next datagram must still wake the wait.
        for round in 0..3 {
            client
                .send_to(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n", local)
                .await
                .unwrap();
            tokio::time::timeout(within, datagrams.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the datagram after an emptied queue"));
            assert!(datagrams.try_next().is_none());
        }
    }

    #[test]
    fn no_listener_means_closed() {
        let (events, _queue) = tokio::sync::mpsc::channel(1);
        let datagrams = Datagrams::new(Vec::new(), TransportContext::for_tests(events, 4));
        assert!(!datagrams.is_open());
    }

    /// A loopback UDP port nobody listens on (bound, then closed), below
    /// the kernel's ephemeral range: no socket bound to port 0 (another
    /// test's running beside it) is given it while its errors are awaited.
    fn closed_port() -> std::net::SocketAddr {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let base = 20_000 + (std::process::id() % 500) as u16 * 20;
        loop {
            let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000;
            let candidate = std::net::SocketAddr::from(([127, 0, 0, 1], base + offset));
            if let Ok(socket) = std::net::UdpSocket::bind(candidate) {
                return socket.local_addr().unwrap();
            }
        }
    }

    /// Wait (at most 10 s) until the kernel reports a new error for
    /// `socket`; then forget the readiness, so the next wait is for the
    /// next error.
    async fn error_pending(socket: &UdpSocket) {
        let error = tokio::io::Interest::ERROR;
        tokio::time::timeout(std::time::Duration::from_secs(10), socket.ready(error))
            .await
            .expect("an ICMP error within 10 s")
            .unwrap();
        let _ = socket.try_io(error, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn icmp_errors_are_read_from_the_error_queue_and_cost_no_other_datagram() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1, 1 << 16, 1 << 16)
            .unwrap()
            .remove(0);
        let socket = UdpSocket::from_std(socket).unwrap();
        report_icmp_errors(&socket).unwrap();
        let closed = closed_port();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut buf = [0u8; 64];

        // The kernel hands a pending ICMP error to the next send, whatever
        // its destination: that datagram would be lost...
        socket.send_to(b"one", closed).await.unwrap();
        error_pending(&socket).await;
        let lost = socket.send_to(b"lost", peer_addr).await.unwrap_err();
        assert!(is_icmp_echo(&lost), "{lost}");
        // ...so send_to sends again, and the peer gets it.
        socket.send_to(b"two", closed).await.unwrap();
        error_pending(&socket).await;
        send_to(&socket, b"kept", peer_addr).await.unwrap();
        let (n, _) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"kept");

        // And to the next receive, before the datagram waiting: an error
        // the receive loop takes as an ICMP error, then the datagram.
        socket.send_to(b"three", closed).await.unwrap();
        error_pending(&socket).await;
        peer.send_to(b"hello", socket.local_addr().unwrap())
            .await
            .unwrap();
        let echo = socket.recv_from(&mut buf).await.unwrap_err();
        assert!(is_icmp_echo(&echo), "{echo}");
        let (n, from) = socket.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], peer_addr));

        // Each of the three is on the error queue, with the destination.
        for _ in 0..3 {
            let icmp =
                tokio::time::timeout(std::time::Duration::from_secs(10), next_icmp_error(&socket))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(icmp.destination, closed);
            assert_eq!(icmp.error.kind(), std::io::ErrorKind::ConnectionRefused);
            assert_eq!(icmp.reporter, Some(IpAddr::from([127, 0, 0, 1])));
        }
        assert_eq!(
            read_error_queue(&socket).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the queue is empty"
        );
        // Nothing pending any more: sends and receives just work.
        socket.send_to(b"fine", peer_addr).await.unwrap();
        assert_eq!(peer.recv_from(&mut buf).await.unwrap().0, 4);
    }

    /// Many clients' ports closed at once (a flood from forged sources
    /// that sipadmit answers): ICMP errors keep coming, and a datagram to a
    /// live peer (the registrar) must still go out every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_icmp_errors_costs_no_datagram_to_a_live_peer() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1, 1 << 16, 1 << 16)
            .unwrap()
            .remove(0);
        let hammer = socket.try_clone().unwrap();
        let socket = UdpSocket::from_std(socket).unwrap();
        report_icmp_errors(&socket).unwrap();
        let closed = closed_port();
        let peer = bind("127.0.0.1:0".parse().unwrap(), 1, 1 << 22, 1 << 16)
            .unwrap()
            .remove(0);
        let peer_addr = peer.local_addr().unwrap();
        const SENT: usize = 20_000;
        // How many the peer has read: the sender waits for it to keep up,
        // so that a slow machine loses none to the peer's full buffer.
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let receiving = std::thread::spawn({
            let read = read.clone();
            move || {
                peer.set_nonblocking(false).unwrap();
                peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 64];
                (0..SENT)
                    .take_while(|_| peer.recv_from(&mut buf).is_ok())
                    .inspect(|_| {
                        read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    })
                    .count()
            }
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammering = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Each is refused by ICMP; its own failures are the
                    // earlier ones' echoes. About 10,000 a second, ten
                    // times what the kernel sends a host by default
                    // (net.ipv4.icmp_msgs_per_sec), at any load.
                    let _ = hammer.send_to(b"x", closed);
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            })
        };
        let mut failed = 0;
        for sent in 0..SENT {
            if send_to(&socket, b"to the registrar", peer_addr)
                .await
                .is_err()
            {
                failed += 1;
            }
            // Leave the receiving thread time to keep up (until it stops:
            // a peer that lost some stops reading after 2 s).
            while sent + 1 - failed >= read.load(std::sync::atomic::Ordering::Relaxed) + 256
                && !receiving.is_finished()
            {
                tokio::task::yield_now().await;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hammering.join().unwrap();
        assert_eq!(failed, 0, "sends to the live peer failed");
        assert_eq!(receiving.join().unwrap(), SENT, "received by the peer");
    }

    #[test]
    fn a_table_that_cannot_be_read_makes_the_sum_unknown_not_smaller() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n";
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let out_of_descriptors = || std::io::Error::from_raw_os_error(24);
        assert_eq!(
            drops_in_tables([Ok(table.into()), Err(gone())], &[4242]),
            Some(vec![(4242, 17)])
        );
        assert_eq!(
            drops_in_tables([Err(out_of_descriptors()), Ok(table.into())], &[4242]),
            None
        );
        assert_eq!(drops_in_tables([Err(gone()), Err(gone())], &[4242]), None);
    }

    #[tokio::test]
    async fn buffers_are_set_and_kernel_drops_are_counted() {
        let addr = "127.0.0.1:0".parse().unwrap();
        let big = bind(addr, 1, 1 << 20, 1 << 20).unwrap().remove(0);
        let granted = socket2::SockRef::from(&big).recv_buffer_size().unwrap();
        // Above the 208 KiB default (where net.core.rmem_max allows it).
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(granted >= 2 * rmem_max.min(1 << 20), "{granted}");
        // A socket with a tiny buffer that nobody reads: the kernel drops
        // what does not fit, and the drops show.
        let small = bind(addr, 1, 4096, 4096).unwrap().remove(0);
        let target = small.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            let _ = sender.send_to(&[0u8; 1000], target);
        }
        let inode = |s: &std::net::UdpSocket| socket_inode(s).expect("/proc/self/fd");
        let drops = kernel_drops(&[inode(&small)]).expect("/proc/net/udp");
        assert!(drops[0].1 > 0, "{drops:?}");
        assert_eq!(kernel_drops(&[inode(&big)]), Some(vec![(inode(&big), 0)]));
    }
}
