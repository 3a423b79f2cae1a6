//! The floor of the load harness: the least a SIP relay over UDP can do.
//!
//! A request gets one Via spliced in after its request line (the client's
//! address and the client's own branch carried in the branch, so that each
//! transaction has a branch of its own and an ACK or CANCEL the branch of
//! its INVITE) and goes to the upstream; a response
//! from the upstream loses its top Via and goes to the address that Via's
//! branch names. No parsing beyond finding those two places, no policy, no
//! records, one blocking UDP socket on one thread. `scripts/load/compare.sh`
//! measures sipadmit's CPU per relayed REGISTER and INVITE against this.
//!
//! With `--tcp` it also accepts TCP clients on the same port: each
//! connection's messages are framed by Content-Length (a thread per
//! connection), leave over UDP, and the answers go back on the connection
//! their client's address names.
//!
//! With `--tokio` (UDP only) the same loop runs on a current-thread tokio
//! runtime, as a sipadmit worker does (`recv_from` and `send_to` awaited,
//! the socket in the runtime's epoll): what the event loop itself costs
//! against a blocking socket (docs/PERFORMANCE.md).
//!
//! ```sh
//! cargo run --release --example floor_relay -- [--tcp | --tokio] 127.0.0.1:5060 127.0.0.1:5070
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};

/// The branch prefix that marks a Via as the floor relay's own.
const BRANCH: &[u8] = b";branch=z9hG4bKfloor~";
/// Ends the client's address in the floor relay's branch (a token
/// character that no address contains).
const ADDRESS_END: u8 = b'~';

/// The TCP clients' connections, by their address.
type Connections = Arc<Mutex<HashMap<SocketAddr, TcpStream>>>;

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some(flag @ ("--tcp" | "--tokio")) => {
            let flag = flag.to_owned();
            args.remove(0);
            flag
        }
        _ => String::new(),
    };
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: floor_relay [--tcp | --tokio] LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT");
        std::process::exit(2);
    };
    let parse = |what: &str, s: &str| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("floor_relay: {what} {s:?}: {e}");
            std::process::exit(2)
        })
    };
    let (listen, upstream) = (parse("listen", listen), parse("upstream", upstream));
    let socket = UdpSocket::bind(listen)?;
    let local = socket.local_addr()?;
    eprintln!("floor_relay listening on {local} ({mode:?}), relaying to {upstream}");
    if mode == "--tokio" {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(relay_on_tokio(socket, local, upstream));
    }
    let tcp = mode == "--tcp";
    let connections = Connections::default();
    if tcp {
        let listener = TcpListener::bind(local)?;
        let (socket, connections) = (socket.try_clone()?, connections.clone());
        std::thread::spawn(move || accept(listener, socket, local, upstream, connections));
    }
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(65_535);
    loop {
        let (n, source) = socket.recv_from(&mut buf)?;
        out.clear();
        let Some((to, answer)) = route(&buf[..n], source, local, upstream, &mut out) else {
            continue;
        };
        let mut connections = (tcp && answer).then(|| connections.lock().unwrap());
        match connections.as_mut().and_then(|c| c.get_mut(&to)) {
            // A closed connection only loses this answer.
            Some(stream) => drop(stream.write_all(&out)),
            None => drop(socket.send_to(&out, to)?),
        }
    }
}

/// The UDP loop on the current tokio runtime (`--tokio`).
async fn relay_on_tokio(
    socket: UdpSocket,
    local: SocketAddr,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(65_535);
    loop {
        let (n, source) = socket.recv_from(&mut buf).await?;
        out.clear();
        if let Some((to, _)) = route(&buf[..n], source, local, upstream, &mut out) {
            socket.send_to(&out, to).await?;
        }
    }
}

/// What a datagram from `source` becomes, written to `out`: a response
/// loses its top Via and goes to the client its branch names, a request
/// gains the floor relay's Via and goes to `upstream`. Returns where it
/// goes and whether it is an answer; `None`: not relayed.
fn route(
    message: &[u8],
    source: SocketAddr,
    local: SocketAddr,
    upstream: SocketAddr,
    out: &mut Vec<u8>,
) -> Option<(SocketAddr, bool)> {
    if message.starts_with(b"SIP/2.0 ") {
        strip_top_via(message, out).map(|client| (client, true))
    } else {
        add_via(message, local, source, out).map(|()| (upstream, false))
    }
}

/// Serve each TCP client on a thread of its own.
fn accept(
    listener: TcpListener,
    socket: UdpSocket,
    local: SocketAddr,
    upstream: SocketAddr,
    connections: Connections,
) {
    for stream in listener.incoming().flatten() {
        // Answers are written as they come, not held back for more (Nagle).
        let _ = stream.set_nodelay(true);
        let (Ok(peer), Ok(writer), Ok(socket)) =
            (stream.peer_addr(), stream.try_clone(), socket.try_clone())
        else {
            continue;
        };
        connections.lock().unwrap().insert(peer, writer);
        let connections = connections.clone();
        std::thread::spawn(move || {
            let _ = relay_stream(stream, peer, &socket, local, upstream);
            connections.lock().unwrap().remove(&peer);
        });
    }
}

/// Frame a TCP client's messages by Content-Length and send each upstream
/// over UDP with the floor relay's Via; CRLF keep-alives are skipped.
fn relay_stream(
    mut stream: TcpStream,
    peer: SocketAddr,
    socket: &UdpSocket,
    local: SocketAddr,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(65_536);
    let mut chunk = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(65_536);
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = framed_len(&buf) {
            out.clear();
            if add_via(&buf[..len], local, peer, &mut out).is_some() {
                socket.send_to(&out, upstream)?;
            }
            buf.drain(..len);
        }
    }
}

/// The length of the first whole message in `buf` (leading CRLFs count as
/// a message of their own, never relayed: `add_via` finds no branch).
fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    let head = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let body = buf[..head]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = &line[..colon];
            (name.eq_ignore_ascii_case(b"Content-Length") || name.eq_ignore_ascii_case(b"l")).then(
                || {
                    std::str::from_utf8(&line[colon + 1..])
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                },
            )?
        })
        .unwrap_or(0usize);
    let len = head.checked_add(body)?;
    (buf.len() >= len).then_some(len)
}

/// `message` with a Via naming `local` after its request line, the
/// client's address `source` and the branch of the client's Via (the first
/// `branch=` of the message) in its branch.
fn add_via(message: &[u8], local: SocketAddr, source: SocketAddr, out: &mut Vec<u8>) -> Option<()> {
    let line_end = memchr::memmem::find(message, b"\r\n")? + 2;
    let rest = &message[line_end..];
    let branch = memchr::memmem::find(rest, b"branch=")? + b"branch=".len();
    let branch_len = rest[branch..]
        .iter()
        .position(|b| matches!(b, b';' | b'\r' | b',' | b' '))?;
    out.extend_from_slice(&message[..line_end]);
    write!(out, "Via: SIP/2.0/UDP {local}").ok()?;
    out.extend_from_slice(BRANCH);
    write!(out, "{source}").ok()?;
    out.push(ADDRESS_END);
    out.extend_from_slice(&rest[branch..branch + branch_len]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(rest);
    Some(())
}

/// `message` without its first Via line, which must be the floor relay's;
/// returns the client's address from its branch.
fn strip_top_via(message: &[u8], out: &mut Vec<u8>) -> Option<SocketAddr> {
    let start = memchr::memmem::find(message, b"\r\nVia: ")? + 2;
    let end = start + memchr::memmem::find(&message[start..], b"\r\n")? + 2;
    let via = &message[start..end - 2];
    let branch = memchr::memmem::find(via, BRANCH)? + BRANCH.len();
    let address_len = memchr::memchr(ADDRESS_END, &via[branch..])?;
    let client = std::str::from_utf8(&via[branch..branch + address_len])
        .ok()?
        .parse()
        .ok()?;
    out.extend_from_slice(&message[..start]);
    out.extend_from_slice(&message[end..]);
    Some(client)
}
