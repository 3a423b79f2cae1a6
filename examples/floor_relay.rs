//! The floor of the load harness: the least a SIP relay over UDP can do.
//!
//! A request gets one Via spliced in after its request line (the client's
//! address and the client's own branch carried in the branch, so that each
//! transaction has a branch of its own and an ACK or CANCEL the branch of
//! its INVITE) and goes to the upstream; a response
//! from the upstream loses its top Via and goes to the address that Via's
//! branch names. No parsing beyond finding those two places, no policy, no
//! records, one blocking socket on one thread. `scripts/load/compare.sh`
//! measures sipadmit's CPU per relayed REGISTER and INVITE against this.
//!
//! ```sh
//! cargo run --release --example floor_relay -- 127.0.0.1:5060 127.0.0.1:5070
//! ```

use std::net::{SocketAddr, UdpSocket};

/// The branch prefix that marks a Via as the floor relay's own.
const BRANCH: &[u8] = b";branch=z9hG4bKfloor~";
/// Ends the client's address in the floor relay's branch (a token
/// character that no address contains).
const ADDRESS_END: u8 = b'~';

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_relay LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT");
        std::process::exit(2);
    };
    let parse = |what: &str, s: &str| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("floor_relay: {what} {s:?}: {e}");
            std::process::exit(2)
        })
    };
    let (listen, upstream) = (parse("listen", &listen), parse("upstream", &upstream));
    let socket = UdpSocket::bind(listen)?;
    let local = socket.local_addr()?;
    eprintln!("floor_relay listening on {local}, relaying to {upstream}");
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(65_535);
    loop {
        let (n, source) = socket.recv_from(&mut buf)?;
        let message = &buf[..n];
        out.clear();
        let to = if message.starts_with(b"SIP/2.0 ") {
            match strip_top_via(message, &mut out) {
                Some(to) => to,
                None => continue,
            }
        } else {
            match add_via(message, local, source, &mut out) {
                Some(()) => upstream,
                None => continue,
            }
        };
        socket.send_to(&out, to)?;
    }
}

/// `message` with a Via naming `local` after its request line, the
/// client's address `source` and the branch of the client's Via (the first
/// `branch=` of the message) in its branch.
fn add_via(message: &[u8], local: SocketAddr, source: SocketAddr, out: &mut Vec<u8>) -> Option<()> {
    use std::io::Write;
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
