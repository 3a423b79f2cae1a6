//! One socket per worker on every listener: the workers' sockets share the
//! listener's address (`SO_REUSEPORT`) and the kernel spreads what arrives
//! over them. For UDP the spread is per datagram and at random (a classic
//! BPF program on the group), not by the kernel's default hash of the
//! source address: a registrar sends everything from one address, and
//! hashed it would all land on one worker. TCP connections keep the
//! default hash (one connection, one worker; many clients spread).
//!
//! A group of `SO_REUSEPORT` sockets would also let a second process of
//! the same user join it; so the address is first bound alone, which
//! fails as usual (`Address in use`) when another process holds it.

use std::net::SocketAddr;

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// `count` sockets of `kind` bound to `addr`: one plain socket when
/// `count` is 1, otherwise a `SO_REUSEPORT` group (datagram groups
/// spread at random). Each socket is non-blocking and has `prepare`
/// applied before it is bound.
pub fn bind_group(
    addr: SocketAddr,
    kind: Type,
    count: usize,
    prepare: &dyn Fn(&Socket) -> std::io::Result<()>,
) -> std::io::Result<Vec<Socket>> {
    let protocol = if kind == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let new = || -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
        if addr.is_ipv6() {
            // As std and tokio bind: [::] is dual-stack unless the system says otherwise.
            let _ = socket.set_only_v6(false);
        }
        socket.set_nonblocking(true)?;
        prepare(&socket)?;
        Ok(socket)
    };
    if count <= 1 {
        let socket = new()?;
        socket.bind(&addr.into())?;
        return Ok(vec![socket]);
    }
    let mut addr = addr;
    {
        // Alone first: fails when another process holds the address; also
        // resolves port 0 to the port the whole group then shares.
        let alone = new()?;
        alone.bind(&addr.into())?;
        if let Some(bound) = alone.local_addr()?.as_socket() {
            addr.set_port(bound.port());
        }
    }
    let mut group = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = new()?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        group.push(socket);
    }
    if kind == Type::DGRAM {
        spread_at_random(&group[0], count)?;
    }
    Ok(group)
}

/// Have the kernel hand each datagram arriving at `socket`'s
/// `SO_REUSEPORT` group to one of its `count` sockets at random.
fn spread_at_random(socket: &Socket, count: usize) -> std::io::Result<()> {
    let count = u32::try_from(count).map_err(std::io::Error::other)?;
    // A = random; A = A % count; return A (the index in the group).
    let random_offset = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let mut program = [
        filter(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, random_offset),
        filter(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, count),
        filter(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    setsockopt(socket, sockopt::AttachReusePortCbpf, &fprog).map_err(std::io::Error::from)
}

/// One classic BPF instruction without jumps.
fn filter(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_spreads_datagrams_over_every_socket() {
        let group =
            bind_group("127.0.0.1:0".parse().unwrap(), Type::DGRAM, 2, &|_| Ok(())).expect("bind");
        let sockets: Vec<std::net::UdpSocket> = group.into_iter().map(Into::into).collect();
        let addr = sockets[0].local_addr().unwrap();
        assert_eq!(sockets[1].local_addr().unwrap(), addr);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            client.send_to(b"x", addr).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let received: Vec<usize> = sockets
            .iter()
            .map(|s| std::iter::from_fn(|| s.recv_from(&mut buf).ok()).count())
            .collect();
        assert_eq!(received.iter().sum::<usize>(), 200, "{received:?}");
        // From one source address the default hash would give one socket all.
        assert!(received.iter().all(|&n| n > 20), "{received:?}");
    }

    #[test]
    fn a_group_is_refused_where_another_socket_holds_the_address() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind_group(addr, Type::DGRAM, 2, &|_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
