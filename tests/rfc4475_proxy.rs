//! Every RFC 4475 torture message sent over UDP through the running proxy to
//! a test upstream: each `must` and `should` row of MANIFEST.tsv holds, the
//! relayed bytes are the original apart from the proxy's own edits, and
//! the proxy keeps serving. The RFC 5118 IPv6 set relays too.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::TestProxy;

fn corpus(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(set)
}

fn socket(timeout: Duration) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// The next datagram, skipping sipadmit's own OPTIONS probes of the registrar.
fn try_recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        let probe = String::from_utf8_lossy(&buf[..n]).contains("\r\nCall-ID: sipadmit-probe-");
        if !probe {
            return Some(buf[..n].to_vec());
        }
    }
}

/// Header lines (as bytes) the proxy may edit: Via and Max-Forwards.
fn owned_line(line: &[u8]) -> bool {
    let name: Vec<u8> = line
        .iter()
        .take_while(|&&b| b != b':')
        .map(u8::to_ascii_lowercase)
        .collect();
    let name = name.trim_ascii();
    name == b"via" || name == b"v" || name == b"max-forwards"
}

fn assert_relayed_unchanged(file: &str, original: &[u8], relayed: &[u8]) {
    let split = |m: &[u8]| {
        let end = m
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end")
            + 4;
        (m[..end].to_vec(), m[end..].to_vec())
    };
    let (orig_head, orig_body) = split(original);
    let (relayed_head, relayed_body) = split(relayed);
    let cl: Option<usize> = String::from_utf8_lossy(&orig_head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        matches!(
            n.trim().to_ascii_lowercase().as_str(),
            "content-length" | "l"
        )
        .then(|| v.trim().parse().ok())?
    });
    let want_body = &orig_body[..cl.unwrap_or(orig_body.len()).min(orig_body.len())];
    assert_eq!(relayed_body, want_body, "{file}: body changed");
    let relayed_lines: Vec<&[u8]> = relayed_head.split(|&b| b == b'\n').collect();
    let mut owned = false;
    for line in orig_head.split(|&b| b == b'\n').skip(1) {
        // Continuation lines belong to the header above them.
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            owned = owned_line(line);
        }
        if line.is_empty() || line == b"\r" || owned {
            continue;
        }
        assert!(
            relayed_lines.contains(&line),
            "{file}: header line not relayed byte for byte: {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn rfc4475_manifest_holds_through_the_proxy() {
    let upstream = socket(Duration::from_millis(400));
    let client = socket(Duration::from_millis(400));
    let proxy = TestProxy::start(
        "[proxy]\nflow_secret = \"0123456789abcdef-rfc4475\"\n",
        "127.0.0.1",
        &format!("udp:{}", upstream.local_addr().unwrap()),
    );
    let dir = corpus("rfc4475");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, level, expected) = (cols[0], cols[3], cols[4]);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        client.send_to(&bytes, proxy.udp).unwrap();
        let at_upstream = try_recv(&upstream);
        let at_client = if at_upstream.is_none() {
            try_recv(&client)
        } else {
            None
        };
        let outcome = match (&at_upstream, &at_client) {
            (Some(_), None) => "forward".to_owned(),
            (None, Some(resp)) => {
                let status = String::from_utf8_lossy(&resp[8..11]).into_owned();
                format!("reply:{status}")
            }
            (None, None) => "discard".to_owned(),
            (Some(_), Some(_)) => "both".to_owned(),
        };
        checked += 1;
        if level != "either" {
            assert!(
                expected.split('|').any(|e| e == outcome),
                "{file} ({level}): expected {expected}, got {outcome}"
            );
        }
        if let Some(relayed) = &at_upstream {
            assert_relayed_unchanged(file, &bytes, relayed);
        }
    }
    assert_eq!(checked, 49);
    // Still serving.
    let ping = b"OPTIONS sip:x@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKalive\r\nFrom: <sip:a@contoso.com>;tag=1\r\nTo: <sip:x@contoso.com>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    client.send_to(ping, proxy.udp).unwrap();
    assert!(try_recv(&upstream).is_some(), "proxy still serving");
}

#[test]
fn rfc5118_valid_messages_relay_and_invalid_ones_are_refused() {
    let upstream = socket(Duration::from_millis(400));
    let client = socket(Duration::from_millis(400));
    let proxy = TestProxy::start(
        "",
        "127.0.0.1",
        &format!("udp:{}", upstream.local_addr().unwrap()),
    );
    let mut files = 0;
    for entry in std::fs::read_dir(corpus("rfc5118")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        client.send_to(&bytes, proxy.udp).unwrap();
        files += 1;
        if name.starts_with("ipv6-bad") || name.starts_with("ipv6-bug") {
            let resp = try_recv(&client).unwrap_or_else(|| panic!("{name}: no 400"));
            assert!(resp.starts_with(b"SIP/2.0 400 "), "{name}");
        } else {
            let relayed = try_recv(&upstream).unwrap_or_else(|| panic!("{name}: not relayed"));
            assert_relayed_unchanged(&name, &bytes, &relayed);
        }
    }
    assert_eq!(files, 12);
}
