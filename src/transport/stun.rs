//! STUN Binding requests on the SIP UDP ports: the keep-alives of RFC 5626
//! (outbound) clients, which every edge proxy that offers outbound answers
//! (RFC 5626 section 8, RFC 5389). Pure: a request's bytes and its source
//! in, the response's bytes out.

use std::net::{IpAddr, SocketAddr};

/// The magic cookie of RFC 5389 messages (section 6).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// A message header: type, length, cookie, transaction id.
const HEADER_BYTES: usize = 20;
/// Binding request (method 0x001, class request).
const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response (method 0x001, class success).
const BINDING_SUCCESS: u16 = 0x0101;
/// Binding error response (method 0x001, class error).
const BINDING_ERROR: u16 = 0x0111;
/// The ERROR-CODE attribute (RFC 5389 section 15.6).
const ERROR_CODE: u16 = 0x0009;
/// The UNKNOWN-ATTRIBUTES attribute (RFC 5389 section 15.9).
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// The XOR-MAPPED-ADDRESS attribute (RFC 5389 section 15.2).
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// The FINGERPRINT attribute (RFC 5389 section 15.5): the CRC-32 of the
/// message before it, XORed with [`FINGERPRINT_XOR`]; always the last.
const FINGERPRINT: u16 = 0x8028;
/// What a FINGERPRINT's CRC-32 is XORed with ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// The unknown attributes a `420` lists at most (a keep-alive has none;
/// the answer stays smaller than a datagram's usual size).
const MAX_UNKNOWN_LISTED: usize = 16;

/// Why a STUN datagram gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, or its length field does not match the
    /// datagram, or an attribute runs past the end, or an attribute
    /// follows the FINGERPRINT.
    #[error("malformed STUN message (length)")]
    Malformed,
    /// Another message than a Binding request (a response, an indication).
    #[error("STUN message type {0:#06x} is not a Binding request")]
    NotBindingRequest(u16),
    /// Its FINGERPRINT does not match the message: not STUN, or altered
    /// (silently discarded, RFC 5389 section 7.3).
    #[error("STUN FINGERPRINT does not match the message")]
    Fingerprint,
}

/// The answer to a Binding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response's bytes.
    pub bytes: Vec<u8>,
    /// The attributes the request carried that a server must understand
    /// (type below 0x8000, RFC 5389 section 15) and this one does not:
    /// when there are any, the response is a `420 Unknown Attribute` that
    /// lists them (section 7.3.1), else the success response.
    pub unknown: Vec<u16>,
}

/// The answer to the Binding request `request`, received from `source`:
/// the success response with the request's transaction id and `source` as
/// the XOR-MAPPED-ADDRESS (the client's address as this proxy sees it), or
/// a `420` when the request carries attributes that must be understood.
/// Either carries a FINGERPRINT when the request did.
pub fn binding_response(request: &[u8], source: SocketAddr) -> Result<Answer, StunError> {
    let header = request.get(..HEADER_BYTES).ok_or(StunError::Malformed)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[4..8] != MAGIC_COOKIE.to_be_bytes() || length != request.len() - HEADER_BYTES {
        return Err(StunError::Malformed);
    }
    if kind != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest(kind));
    }
    let attributes = read_attributes(request)?;
    let transaction = &header[8..HEADER_BYTES];
    let bytes = if attributes.unknown.is_empty() {
        let address = xor_mapped_address(source, transaction);
        message(
            BINDING_SUCCESS,
            transaction,
            &[(XOR_MAPPED_ADDRESS, &address)],
            attributes.fingerprint,
        )
    } else {
        let listed: Vec<u8> = attributes
            .unknown
            .iter()
            .flat_map(|kind| kind.to_be_bytes())
            .collect();
        message(
            BINDING_ERROR,
            transaction,
            &[
                (ERROR_CODE, b"\0\0\x04\x14Unknown Attribute"),
                (UNKNOWN_ATTRIBUTES, &listed),
            ],
            attributes.fingerprint,
        )
    };
    Ok(Answer {
        bytes,
        unknown: attributes.unknown,
    })
}

/// What the attributes of a request say.
struct Attributes {
    /// Those that must be understood and are not (at most
    /// [`MAX_UNKNOWN_LISTED`], each once).
    unknown: Vec<u16>,
    /// It ends with a FINGERPRINT that matches it.
    fingerprint: bool,
}

/// Walk the attributes of `request` (type, length, value padded to 4
/// bytes): each must end within the message, a FINGERPRINT must be the last
/// and match. A keep-alive carries none, or optional ones (SOFTWARE,
/// FINGERPRINT).
fn read_attributes(request: &[u8]) -> Result<Attributes, StunError> {
    let mut found = Attributes {
        unknown: Vec::new(),
        fingerprint: false,
    };
    let mut at = HEADER_BYTES;
    while at < request.len() {
        if found.fingerprint {
            return Err(StunError::Malformed);
        }
        let head = request.get(at..at + 4).ok_or(StunError::Malformed)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = request
            .get(at + 4..at + 4 + length)
            .ok_or(StunError::Malformed)?;
        if kind == FINGERPRINT {
            let value: [u8; 4] = value.try_into().map_err(|_| StunError::Malformed)?;
            if u32::from_be_bytes(value) != fingerprint(&request[..at]) {
                return Err(StunError::Fingerprint);
            }
            found.fingerprint = true;
        } else if kind < 0x8000
            && !found.unknown.contains(&kind)
            && found.unknown.len() < MAX_UNKNOWN_LISTED
        {
            found.unknown.push(kind);
        }
        at += 4 + length.div_ceil(4) * 4;
    }
    if at != request.len() {
        return Err(StunError::Malformed);
    }
    Ok(found)
}

/// The FINGERPRINT value of a message whose bytes before the attribute
/// are `before` (its length field counting the attribute).
fn fingerprint(before: &[u8]) -> u32 {
    crc32fast::hash(before) ^ FINGERPRINT_XOR
}

/// A message of `kind` in `transaction` with `attributes` (each padded to
/// 4 bytes with zeros), and a FINGERPRINT last when `with_fingerprint`.
fn message(
    kind: u16,
    transaction: &[u8],
    attributes: &[(u16, &[u8])],
    with_fingerprint: bool,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(transaction);
    for (kind, value) in attributes {
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        m.resize(m.len().div_ceil(4) * 4, 0);
    }
    let set_length = |m: &mut Vec<u8>, extra: usize| {
        let length = (m.len() + extra - HEADER_BYTES) as u16;
        m[2..4].copy_from_slice(&length.to_be_bytes());
    };
    if with_fingerprint {
        set_length(&mut m, 8);
        let value = fingerprint(&m);
        m.extend_from_slice(&FINGERPRINT.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&value.to_be_bytes());
    } else {
        set_length(&mut m, 0);
    }
    m
}

/// The value of an XOR-MAPPED-ADDRESS for `source`: family, port and
/// address, each XORed with the cookie (and, for IPv6, the transaction id).
fn xor_mapped_address(source: SocketAddr, transaction: &[u8]) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let (family, address): (u8, Vec<u8>) = match source.ip().to_canonical() {
        IpAddr::V4(ip) => (0x01, ip.octets().to_vec()),
        IpAddr::V6(ip) => (0x02, ip.octets().to_vec()),
    };
    let mask = cookie.iter().chain(transaction);
    let mut value = vec![0, family];
    value.extend_from_slice(&port.to_be_bytes());
    value.extend(address.iter().zip(mask).map(|(a, m)| a ^ m));
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request with the transaction id 0x01..0x0c and `attributes`.
    fn request(attributes: &[u8]) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend(1..=12u8);
        m.extend_from_slice(attributes);
        m
    }

    #[test]
    fn a_binding_request_gets_the_source_as_its_xor_mapped_address() {
        // RFC 5769 2.2's address and port: 192.0.2.1:32853 is written
        // 0x01, 0xa1 0x47, 0xe1 0x12 0xa6 0x43.
        let response = binding_response(&request(&[]), "192.0.2.1:32853".parse().unwrap())
            .unwrap()
            .bytes;
        assert_eq!(&response[..4], &[0x01, 0x01, 0x00, 0x0c]);
        assert_eq!(&response[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&response[8..20], &(1..=12u8).collect::<Vec<_>>()[..]);
        assert_eq!(
            &response[20..],
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
    }

    #[test]
    fn an_ipv6_source_is_masked_with_the_cookie_and_the_transaction_id() {
        // RFC 5769 2.3's address and port, with its transaction id.
        let mut m = request(&[]);
        let transaction = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        m[8..20].copy_from_slice(&transaction);
        let source = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let response = binding_response(&m, source).unwrap().bytes;
        assert_eq!(&response[20..24], &[0x00, 0x20, 0x00, 0x14]);
        assert_eq!(
            &response[24..],
            &[
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        // An IPv4 client of a dual-stack socket is answered its IPv4 address.
        let mapped = binding_response(&request(&[]), "[::ffff:192.0.2.1]:32853".parse().unwrap());
        assert_eq!(mapped.unwrap().bytes[25], 0x01);
    }

    #[test]
    fn optional_attributes_are_passed_over_unknown_required_ones_get_a_420() {
        let source = "192.0.2.1:5060".parse().unwrap();
        // SOFTWARE ("ab", padded): answered.
        let optional = [0x80, 0x22, 0x00, 0x02, b'a', b'b', 0, 0];
        let answer = binding_response(&request(&optional), source).unwrap();
        assert!(answer.unknown.is_empty());
        assert_eq!(&answer.bytes[..2], &[0x01, 0x01]);
        // USERNAME and 0x7777 must be understood: a 420 that lists them
        // (RFC 5389 7.3.1), the transaction id kept.
        let required = [
            0x00, 0x06, 0x00, 0x04, b'u', b's', b'e', b'r', 0x77, 0x77, 0x00, 0x00,
        ];
        let answer = binding_response(&request(&required), source).unwrap();
        assert_eq!(answer.unknown, [0x0006, 0x7777]);
        let mut expected = vec![0x01, 0x11, 0x00, 0x24];
        expected.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        expected.extend(1..=12u8);
        expected.extend_from_slice(&[0x00, 0x09, 0x00, 0x15, 0, 0, 4, 20]);
        expected.extend_from_slice(b"Unknown Attribute\0\0\0");
        expected.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x06, 0x77, 0x77]);
        assert_eq!(answer.bytes, expected);
        // An attribute past the end, a wrong length field, a response.
        assert_eq!(
            binding_response(&request(&[0x80, 0x22, 0x00, 0x08, 1, 2, 3, 4]), source),
            Err(StunError::Malformed)
        );
        let mut short = request(&[]);
        short[3] = 4;
        assert_eq!(binding_response(&short, source), Err(StunError::Malformed));
        let mut answer = request(&[]);
        answer[0] = 0x01;
        assert_eq!(
            binding_response(&answer, source),
            Err(StunError::NotBindingRequest(0x0101))
        );
        assert_eq!(binding_response(&[0; 8], source), Err(StunError::Malformed));
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// RFC 5769 2.1, the sample request: SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: &str = "00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86
        fa 87 df ae 80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
        00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf";

    #[test]
    fn a_fingerprint_is_checked_and_answered_with_one() {
        let source = "192.0.2.1:32853".parse().unwrap();
        // RFC 5769 2.2's FINGERPRINT, of the bytes before it.
        let response = hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 08 00 01 a1 47 e1 12 a6 43
             00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7");
        assert_eq!(fingerprint(&response), 0xc07d_4c96);
        // RFC 5769 2.1's request: its FINGERPRINT holds; USERNAME, PRIORITY
        // and MESSAGE-INTEGRITY (ICE's) are not understood here.
        let answer = binding_response(&hex(RFC5769_REQUEST), source).unwrap();
        assert_eq!(answer.unknown, [0x0024, 0x0006, 0x0008]);
        // The answer ends with its own FINGERPRINT, over all before it.
        let (body, last) = answer.bytes.split_at(answer.bytes.len() - 8);
        assert_eq!(&last[..4], &[0x80, 0x28, 0x00, 0x04]);
        assert_eq!(
            u32::from_be_bytes(last[4..].try_into().unwrap()),
            fingerprint(body)
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([body[2], body[3]])),
            answer.bytes.len() - HEADER_BYTES
        );
        // A keep-alive with a FINGERPRINT gets the mapped address and one.
        let mut keep_alive = request(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
        let value = fingerprint(&keep_alive[..HEADER_BYTES]);
        keep_alive[HEADER_BYTES + 4..].copy_from_slice(&value.to_be_bytes());
        let answer = binding_response(&keep_alive, source).unwrap();
        assert!(answer.unknown.is_empty());
        assert_eq!(answer.bytes.len(), HEADER_BYTES + 12 + 8);
        assert_eq!(&answer.bytes[..4], &[0x01, 0x01, 0x00, 0x14]);
        // Altered, or an attribute after the FINGERPRINT: not answered.
        let mut altered = hex(RFC5769_REQUEST);
        altered[30] ^= 1;
        assert_eq!(
            binding_response(&altered, source),
            Err(StunError::Fingerprint)
        );
        let mut after = keep_alive.clone();
        after.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        after[3] += 4;
        let value = fingerprint(&after[..HEADER_BYTES]);
        after[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&value.to_be_bytes());
        assert_eq!(binding_response(&after, source), Err(StunError::Malformed));
    }
}
