//! HEP collectors for tests, on loopback: a UDP socket or a TCP listener
//! that keeps every HEP packet it receives; a pcap file of them (each as a
//! UDP datagram to the collector's port); and `tshark`, with the HEPv3
//! dissector of `tests/e2e/hep3.lua`, to decode them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// One HEP packet as a collector received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: SystemTime,
    /// Who sent it (sipadmit's socket).
    pub from: SocketAddr,
    /// The packet.
    pub bytes: Vec<u8>,
}

/// A collector on 127.0.0.1: a thread that keeps what arrives.
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// A UDP collector: one packet per datagram.
    pub fn udp() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        Self::run(addr, move |received, stop| {
            let mut buffer = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                    received.lock().unwrap().push(Received {
                        at: SystemTime::now(),
                        from,
                        bytes: buffer[..n].to_vec(),
                    });
                }
            }
        })
    }

    /// A TCP collector on `addr` (port 0: any): accepts connections one
    /// after the other and splits each stream into packets by their
    /// length field.
    pub fn tcp_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        Self::run(addr, move |received, stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, from)) => read_stream(stream, from, &received, &stop),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    }

    fn run(
        addr: SocketAddr,
        serve: impl FnOnce(Arc<Mutex<Vec<Received>>>, Arc<AtomicBool>) + Send + 'static,
    ) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(r, s));
        Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Packets received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Wait until nothing has arrived for `quiet` (at most `bound`), then
    /// stop and return every packet received.
    pub fn finish(mut self, quiet: Duration, bound: Duration) -> Vec<Received> {
        let deadline = Instant::now() + bound;
        let mut seen = self.count();
        let mut since = Instant::now();
        while Instant::now() < deadline && since.elapsed() < quiet {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.count();
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read one TCP connection until it ends (or `stop`), keeping each HEP
/// packet; bytes that are not a packet end the reading (a test failure
/// shows up as missing packets).
fn read_stream(
    mut stream: std::net::TcpStream,
    from: SocketAddr,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        while buffer.len() >= 6 {
            if &buffer[..4] != b"HEP3" {
                return;
            }
            let len = u16::from_be_bytes([buffer[4], buffer[5]]) as usize;
            if buffer.len() < len {
                break;
            }
            let bytes: Vec<u8> = buffer.drain(..len).collect();
            received.lock().unwrap().push(Received {
                at: SystemTime::now(),
                from,
                bytes,
            });
        }
    }
}

/// Write `packets` as a pcap file (link type 101, raw IPv4): each a UDP
/// datagram from its sender to `collector`, at its arrival time.
pub fn write_pcap(path: &Path, collector: SocketAddr, packets: &[Received]) {
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [127, 0, 0, 1],
    };
    let mut out = Vec::new();
    for value in [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4]] {
        out.extend_from_slice(&value);
    }
    out.extend_from_slice(&262_144u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for packet in packets {
        let udp_len = 8 + packet.bytes.len();
        let mut header = vec![0x45, 0];
        header.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        header.extend_from_slice(&ip(packet.from));
        header.extend_from_slice(&ip(collector));
        let checksum = ipv4_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        header.extend_from_slice(&packet.from.port().to_be_bytes());
        header.extend_from_slice(&collector.port().to_be_bytes());
        header.extend_from_slice(&(udp_len as u16).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        let since = packet.at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let frame_len = (header.len() + packet.bytes.len()) as u32;
        out.extend_from_slice(&(since.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&since.subsec_micros().to_le_bytes());
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&packet.bytes);
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .unwrap();
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One packet as tshark decoded it: field name to its values.
#[derive(Debug, Clone)]
pub struct Decoded(pub BTreeMap<String, Vec<String>>);

impl Decoded {
    /// The first value of `field`, if any.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .get(field)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The first value of `field`; panics without one.
    pub fn field(&self, field: &str) -> &str {
        self.get(field)
            .unwrap_or_else(|| panic!("no {field} in {self:#?}"))
    }

    /// Panics unless the HEP dissector found the packet well formed (no
    /// `hep3.malformed` expert error), nothing was malformed for Wireshark
    /// (the SIP payload included), and the dissector script ran without
    /// an error.
    pub fn assert_well_formed(&self) {
        assert_eq!(self.get("hep3.malformed"), None, "{self:#?}");
        assert_eq!(self.get("_ws.malformed"), None, "{self:#?}");
        let messages = self
            .0
            .get("_ws.expert.message")
            .cloned()
            .unwrap_or_default();
        assert!(
            !messages.iter().any(|m| m.contains("Lua Error")),
            "{self:#?}"
        );
    }

    /// `hep3.src_ip`:`hep3.src_port` (IPv4 or IPv6).
    pub fn source(&self) -> SocketAddr {
        self.address("src")
    }

    /// `hep3.dst_ip`:`hep3.dst_port` (IPv4 or IPv6).
    pub fn destination(&self) -> SocketAddr {
        self.address("dst")
    }

    fn address(&self, side: &str) -> SocketAddr {
        let ip: IpAddr = self
            .get(&format!("hep3.{side}_ip"))
            .or_else(|| self.get(&format!("hep3.{side}_ip6")))
            .unwrap_or_else(|| panic!("no {side} address in {self:#?}"))
            .parse()
            .unwrap();
        let port = self.field(&format!("hep3.{side}_port")).parse().unwrap();
        SocketAddr::new(ip, port)
    }
}

/// The fields tshark is asked for.
const FIELDS: [&str; 22] = [
    "hep3.ip_family",
    "hep3.ip_proto",
    "hep3.src_ip",
    "hep3.dst_ip",
    "hep3.src_ip6",
    "hep3.dst_ip6",
    "hep3.src_port",
    "hep3.dst_port",
    "hep3.ts_sec",
    "hep3.ts_usec",
    "hep3.proto_type",
    "hep3.capture_id",
    "hep3.auth_key",
    "hep3.correlation_id",
    "hep3.log",
    "sip.Method",
    "sip.Status-Code",
    "sip.Call-ID",
    "sip.CSeq.method",
    "hep3.malformed",
    "_ws.malformed",
    "_ws.expert.message",
];

/// Decode `packets` (received by a collector at `collector`) with
/// `tshark` and the HEPv3 dissector of `tests/e2e/hep3.lua`, through a
/// pcap file in `dir`: one [`Decoded`] per packet, in order.
pub fn tshark_decode(
    tshark: &Path,
    dir: &Path,
    collector: SocketAddr,
    packets: &[Received],
) -> Vec<Decoded> {
    let pcap = dir.join("hep.pcap");
    write_pcap(&pcap, collector, packets);
    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/hep3.lua");
    let mut command = Command::new(tshark);
    command
        .arg("-n")
        .arg("-X")
        .arg(format!("lua_script:{}", lua.display()))
        .arg("-r")
        .arg(&pcap)
        .arg("-d")
        .arg(format!("udp.port=={},hep3", collector.port()))
        .args(["-T", "json"]);
    for field in FIELDS {
        command.args(["-e", field]);
    }
    let output = command.output().expect("tshark runs");
    assert!(
        output.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "tshark -T json: {e}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    json.as_array()
        .expect("an array of packets")
        .iter()
        .map(|packet| {
            let layers = packet["_source"]["layers"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            Decoded(
                layers
                    .into_iter()
                    .map(|(name, values)| {
                        let values = values
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|v| v.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (name, values)
                    })
                    .collect(),
            )
        })
        .collect()
}
