//! The HEPv3 wire format (the HEP3 network protocol specification of
//! sipcapture.org): encoding only, no I/O.
//!
//! A packet is the ASCII id `HEP3`, its total length (u16, network byte
//! order, this header included), then chunks. A chunk is vendor id (u16,
//! 0 for the generic chunks), type id (u16), its total length (u16, these
//! six bytes included), then the value. The chunks written here, in this
//! order (the order Kamailio's siptrace writes them in):
//!
//! | type | value |
//! |---|---|
//! | 1 | IP family: 2 IPv4, 10 IPv6 (u8) |
//! | 2 | IP protocol: 17 UDP, 6 TCP, 22 for TLS (u8; Kamailio's number for TLS) |
//! | 3, 4 / 5, 6 | source, destination IPv4 (4 bytes) / IPv6 (16 bytes) address |
//! | 7, 8 | source, destination port (u16) |
//! | 9, 10 | timestamp: seconds since the epoch, microseconds in the second (u32 each) |
//! | 11 | payload type: 1 SIP, 100 log (u8) |
//! | 12 | capture agent id (u32) |
//! | 17 | correlation id (bytes; a log's Call-ID) |
//! | 14 | authentication key (bytes) |
//! | 15 | the payload (a SIP message as it went over the wire, decrypted for TLS; or a log line) |
//!
//! Integers are in network byte order.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::vocabulary::Transport;

/// The id every HEPv3 packet starts with.
pub const MAGIC: [u8; 4] = *b"HEP3";

/// Largest packet the 16-bit length field can describe, bytes.
pub const MAX_PACKET_BYTES: usize = u16::MAX as usize;

/// The HEP payload type (chunk 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadType {
    /// A SIP message (1).
    Sip,
    /// A log line correlated with a call (100): a decision record.
    Log,
}

impl PayloadType {
    /// The chunk's value.
    pub fn code(self) -> u8 {
        match self {
            Self::Sip => 1,
            Self::Log => 100,
        }
    }
}

/// The IP protocol number (chunk 2) of a SIP transport: UDP 17, TCP 6,
/// and for TLS 22, the number Kamailio's siptrace sends for TLS (and
/// WebSocket) traffic, whose payload is the decrypted message.
pub fn ip_protocol(transport: Transport) -> u8 {
    match transport {
        Transport::Udp => 17,
        Transport::Tcp => 6,
        Transport::Tls => 22,
    }
}

/// A timestamp as chunks 9 and 10 carry it: seconds since the Unix epoch
/// and microseconds within that second (0 for a clock before 1970; the
/// seconds wrap in 2106, as the format's u32 does).
pub fn timestamp(at: SystemTime) -> (u32, u32) {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (since.as_secs() as u32, since.subsec_micros())
}

/// Everything a packet carries besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Chunk 11.
    pub payload_type: PayloadType,
    /// Chunk 2: the transport the message went over.
    pub transport: Transport,
    /// Chunks 3/5 and 7: who sent the message.
    pub source: SocketAddr,
    /// Chunks 4/6 and 8: who it went to.
    pub destination: SocketAddr,
    /// Chunks 9 and 10 ([`timestamp`]).
    pub seconds: u32,
    /// Chunk 10.
    pub microseconds: u32,
    /// Chunk 12.
    pub capture_id: u32,
    /// Chunk 14, when set.
    pub auth_key: Option<&'a [u8]>,
    /// Chunk 17, when set.
    pub correlation_id: Option<&'a [u8]>,
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet would be longer than its 16-bit length field allows.
    #[error("a HEP packet of {0} bytes is over the format's 65535")]
    TooLarge(usize),
}

/// The length of the packet [`encode`] writes for `header` and a payload
/// of `payload_len` bytes.
pub fn encoded_len(header: &Header<'_>, payload_len: usize) -> usize {
    let (source, _) = addresses(header.source.ip(), header.destination.ip());
    let address = match source {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    let bytes = |value: Option<&[u8]>| value.map_or(0, |v| CHUNK + v.len());
    6 + 2 * (CHUNK + 1)
        + 2 * (CHUNK + address)
        + 2 * (CHUNK + 2)
        + 2 * (CHUNK + 4)
        + (CHUNK + 1)
        + (CHUNK + 4)
        + bytes(header.correlation_id)
        + bytes(header.auth_key)
        + CHUNK
        + payload_len
}

/// The bytes of a chunk's vendor id, type id and length.
const CHUNK: usize = 6;

/// Append one packet to `out`: `header`'s chunks, then `payload` (chunk
/// 15). Nothing is appended when the packet would be too large. A source
/// and a destination of different address families are both written as
/// IPv6 (the IPv4 one mapped); IPv4-mapped IPv6 addresses of the same
/// family pair are written as IPv4.
pub fn encode(header: &Header<'_>, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = encoded_len(header, payload.len());
    if len > MAX_PACKET_BYTES {
        return Err(EncodeError::TooLarge(len));
    }
    out.reserve(len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let (source, destination) = addresses(header.source.ip(), header.destination.ip());
    let family = match source {
        IpAddr::V4(_) => 2,
        IpAddr::V6(_) => 10,
    };
    chunk(out, 1, &[family]);
    chunk(out, 2, &[ip_protocol(header.transport)]);
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            chunk(out, 3, &s.octets());
            chunk(out, 4, &d.octets());
        }
        (s, d) => {
            chunk(out, 5, &to_v6(s).octets());
            chunk(out, 6, &to_v6(d).octets());
        }
    }
    chunk(out, 7, &header.source.port().to_be_bytes());
    chunk(out, 8, &header.destination.port().to_be_bytes());
    chunk(out, 9, &header.seconds.to_be_bytes());
    chunk(out, 10, &header.microseconds.to_be_bytes());
    chunk(out, 11, &[header.payload_type.code()]);
    chunk(out, 12, &header.capture_id.to_be_bytes());
    if let Some(id) = header.correlation_id {
        chunk(out, 17, id);
    }
    if let Some(key) = header.auth_key {
        chunk(out, 14, key);
    }
    chunk(out, 15, payload);
    Ok(())
}

/// Append one chunk of the generic vendor (0).
fn chunk(out: &mut Vec<u8>, type_id: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&type_id.to_be_bytes());
    out.extend_from_slice(&((CHUNK + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The addresses as written: IPv4-mapped IPv6 addresses as IPv4, then,
/// when the families still differ, both as IPv6.
fn addresses(source: IpAddr, destination: IpAddr) -> (IpAddr, IpAddr) {
    let plain = |ip: IpAddr| ip.to_canonical();
    let (source, destination) = (plain(source), plain(destination));
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (IpAddr::V6(to_v6(source)), IpAddr::V6(to_v6(destination)))
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The chunks of one packet: (vendor, type, value), checking that the
/// header's length is the packet's and that every chunk length adds up.
#[cfg(test)]
pub(crate) fn chunks(packet: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    assert_eq!(&packet[..4], b"HEP3");
    let total = u16::from_be_bytes([packet[4], packet[5]]) as usize;
    assert_eq!(
        total,
        packet.len(),
        "the length field is the packet's length"
    );
    let mut rest = &packet[6..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let vendor = u16::from_be_bytes([rest[0], rest[1]]);
        let kind = u16::from_be_bytes([rest[2], rest[3]]);
        let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        assert!(
            len >= CHUNK && len <= rest.len(),
            "chunk {kind} of length {len}"
        );
        out.push((vendor, kind, rest[CHUNK..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(source: &str, destination: &str) -> Header<'a> {
        Header {
            payload_type: PayloadType::Sip,
            transport: Transport::Udp,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            seconds: 0x6000_0001,
            microseconds: 123_456,
            capture_id: 2001,
            auth_key: None,
            correlation_id: None,
        }
    }

    #[test]
    fn an_ipv4_sip_packet_byte_for_byte() {
        let mut out = Vec::new();
        let h = Header {
            auth_key: Some(b"key"),
            ..header("192.0.2.1:5062", "198.51.100.2:5060")
        };
        encode(&h, b"OPTIONS", &mut out).unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            b'H', b'E', b'P', b'3', 0, 115,
            0, 0, 0, 1, 0, 7, 2,                         // IPv4
            0, 0, 0, 2, 0, 7, 17,                        // UDP
            0, 0, 0, 3, 0, 10, 192, 0, 2, 1,             // source address
            0, 0, 0, 4, 0, 10, 198, 51, 100, 2,          // destination address
            0, 0, 0, 7, 0, 8, 0x13, 0xc6,                // source port 5062
            0, 0, 0, 8, 0, 8, 0x13, 0xc4,                // destination port 5060
            0, 0, 0, 9, 0, 10, 0x60, 0, 0, 1,            // seconds
            0, 0, 0, 10, 0, 10, 0, 0x01, 0xe2, 0x40,     // microseconds 123456
            0, 0, 0, 11, 0, 7, 1,                        // SIP
            0, 0, 0, 12, 0, 10, 0, 0, 0x07, 0xd1,        // capture id 2001
            0, 0, 0, 14, 0, 9, b'k', b'e', b'y',         // auth key
            0, 0, 0, 15, 0, 13, b'O', b'P', b'T', b'I', b'O', b'N', b'S',
        ];
        assert_eq!(out, expected);
        assert_eq!(encoded_len(&h, 7), expected.len());
    }

    #[test]
    fn a_log_over_ipv6_carries_its_correlation_id_before_the_key() {
        let mut out = b"before".to_vec();
        let h = Header {
            payload_type: PayloadType::Log,
            transport: Transport::Tls,
            auth_key: Some(b"k"),
            correlation_id: Some(b"a84b4c76e66710@pc33"),
            ..header("[2001:db8::1]:5061", "[2001:db8::2]:40000")
        };
        encode(&h, b"{\"action\":\"reject\"}", &mut out).unwrap();
        assert_eq!(&out[..6], b"before", "appended");
        let chunks = chunks(&out[6..]);
        let types: Vec<u16> = chunks.iter().map(|c| c.1).collect();
        assert_eq!(types, [1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 17, 14, 15]);
        assert!(chunks.iter().all(|c| c.0 == 0), "generic vendor");
        let value = |t: u16| chunks.iter().find(|c| c.1 == t).unwrap().2.clone();
        assert_eq!(value(1), [10]);
        assert_eq!(value(2), [22], "TLS as Kamailio numbers it");
        let source: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(value(5), source.octets());
        assert_eq!(value(8), 40000u16.to_be_bytes());
        assert_eq!(value(11), [100]);
        assert_eq!(value(17), b"a84b4c76e66710@pc33");
        assert_eq!(value(15), b"{\"action\":\"reject\"}");
        assert_eq!(encoded_len(&h, 19), out.len() - 6);
    }

    #[test]
    fn mixed_families_are_written_as_ipv6_and_mapped_ones_as_ipv4() {
        let mut out = Vec::new();
        encode(
            &header("192.0.2.1:5060", "[2001:db8::2]:5060"),
            b"x",
            &mut out,
        )
        .unwrap();
        let c = chunks(&out);
        assert_eq!(c[0].2, [10]);
        assert_eq!(c[2].1, 5);
        let mapped: std::net::Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(c[2].2, mapped.octets());
        let mut out = Vec::new();
        encode(
            &header("[::ffff:192.0.2.1]:5060", "192.0.2.2:5060"),
            b"x",
            &mut out,
        )
        .unwrap();
        let c = chunks(&out);
        assert_eq!(
            (c[0].2.clone(), c[2].1, c[2].2.clone()),
            (vec![2], 3, vec![192, 0, 2, 1])
        );
    }

    #[test]
    fn a_packet_over_the_length_field_is_refused_and_nothing_written() {
        let h = header("192.0.2.1:5060", "192.0.2.2:5060");
        let overhead = encoded_len(&h, 0);
        let mut out = Vec::new();
        let fits = vec![b'x'; MAX_PACKET_BYTES - overhead];
        encode(&h, &fits, &mut out).unwrap();
        assert_eq!(out.len(), MAX_PACKET_BYTES);
        let mut out = Vec::new();
        let over = vec![b'x'; MAX_PACKET_BYTES - overhead + 1];
        assert_eq!(
            encode(&h, &over, &mut out),
            Err(EncodeError::TooLarge(MAX_PACKET_BYTES + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn timestamps_are_seconds_and_microseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_401_735, 123_456_789);
        assert_eq!(timestamp(at), (1_796_401_735, 123_456));
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(timestamp(before), (0, 0));
        assert_eq!(
            [Transport::Udp, Transport::Tcp, Transport::Tls].map(ip_protocol),
            [17, 6, 22]
        );
    }
}
