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
/// The XOR-MAPPED-ADDRESS attribute (RFC 5389 section 15.2).
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Why a STUN datagram gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, or its length field does not match the
    /// datagram, or an attribute runs past the end.
    #[error("malformed STUN message (length)")]
    Malformed,
    /// Another message than a Binding request (a response, an indication).
    #[error("STUN message type {0:#06x} is not a Binding request")]
    NotBindingRequest(u16),
    /// An attribute a server must understand to answer (type below
    /// 0x8000, RFC 5389 section 15), which this one does not.
    #[error("STUN attribute {0:#06x} must be understood and is not")]
    ComprehensionRequired(u16),
}

/// The Binding success response to the Binding request `request`, received
/// from `source`: the request's transaction id, and `source` as the
/// XOR-MAPPED-ADDRESS (the client's address as this proxy sees it).
pub fn binding_response(request: &[u8], source: SocketAddr) -> Result<Vec<u8>, StunError> {
    let header = request.get(..HEADER_BYTES).ok_or(StunError::Malformed)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header[4..8] != MAGIC_COOKIE.to_be_bytes() || length != request.len() - HEADER_BYTES {
        return Err(StunError::Malformed);
    }
    if kind != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest(kind));
    }
    check_attributes(&request[HEADER_BYTES..])?;
    let transaction = &header[8..HEADER_BYTES];
    let address = xor_mapped_address(source, transaction);
    let mut response = Vec::with_capacity(HEADER_BYTES + 4 + address.len());
    response.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    response.extend_from_slice(&(4 + address.len() as u16).to_be_bytes());
    response.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    response.extend_from_slice(transaction);
    response.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    response.extend_from_slice(&(address.len() as u16).to_be_bytes());
    response.extend_from_slice(&address);
    Ok(response)
}

/// Walk the attributes (type, length, value padded to 4 bytes): each must
/// end within the message, and none may be one this server must
/// understand. A keep-alive carries none, or optional ones (SOFTWARE,
/// FINGERPRINT).
fn check_attributes(mut attributes: &[u8]) -> Result<(), StunError> {
    while !attributes.is_empty() {
        let head = attributes.get(..4).ok_or(StunError::Malformed)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let padded = 4 + length.div_ceil(4) * 4;
        attributes = attributes.get(padded..).ok_or(StunError::Malformed)?;
        if kind < 0x8000 {
            return Err(StunError::ComprehensionRequired(kind));
        }
    }
    Ok(())
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
        let response = binding_response(&request(&[]), "192.0.2.1:32853".parse().unwrap()).unwrap();
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
        let response = binding_response(&m, source).unwrap();
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
        assert_eq!(mapped.unwrap()[25], 0x01);
    }

    #[test]
    fn optional_attributes_are_passed_over_the_rest_refused() {
        let source = "192.0.2.1:5060".parse().unwrap();
        // SOFTWARE ("ab", padded) and FINGERPRINT: answered.
        let optional = [
            0x80, 0x22, 0x00, 0x02, b'a', b'b', 0, 0, 0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4,
        ];
        assert!(binding_response(&request(&optional), source).is_ok());
        // USERNAME must be understood (and checked): not answered.
        let username = [0x00, 0x06, 0x00, 0x04, b'u', b's', b'e', b'r'];
        assert_eq!(
            binding_response(&request(&username), source),
            Err(StunError::ComprehensionRequired(0x0006))
        );
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
}
