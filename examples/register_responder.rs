//! A registrar too cheap to be the bottleneck of a saturation run: every
//! request on one UDP socket gets `200 OK` (its Via, From, To with a tag,
//! Call-ID and CSeq copied), nothing is stored. `scripts/load/saturation.sh`
//! puts it behind the relay under test.
//!
//! ```sh
//! cargo run --release --example register_responder -- 127.0.0.1:5070
//! ```

use std::net::{SocketAddr, UdpSocket};

fn main() -> std::io::Result<()> {
    let Some(listen) = std::env::args().nth(1) else {
        eprintln!("usage: register_responder LISTEN_ADDR:PORT");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| {
        eprintln!("register_responder: {listen:?}: {e}");
        std::process::exit(2)
    });
    let socket = UdpSocket::bind(listen)?;
    eprintln!("register_responder listening on {}", socket.local_addr()?);
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, source) = socket.recv_from(&mut buf)?;
        let request = &buf[..n];
        if request.starts_with(b"SIP/2.0 ") || n < 16 {
            continue;
        }
        out.clear();
        answer(request, &mut out);
        socket.send_to(&out, source)?;
    }
}

/// `200 OK` to `request`, with the headers a response must copy.
fn answer(request: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    let head_end = memchr::memmem::find(request, b"\r\n\r\n").unwrap_or(request.len());
    for line in request[..head_end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let name_end = line.iter().position(|&b| b == b':').unwrap_or(0);
        let name = line[..name_end].trim_ascii().to_ascii_lowercase();
        let copied = matches!(
            name.as_slice(),
            b"via" | b"v" | b"from" | b"f" | b"call-id" | b"i" | b"cseq"
        );
        let to = matches!(name.as_slice(), b"to" | b"t");
        if copied || to {
            out.extend_from_slice(line);
            if to && memchr::memmem::find(line, b";tag=").is_none() {
                out.extend_from_slice(b";tag=responder");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}
