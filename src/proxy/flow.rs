//! Flow tokens: a signed, stateless name for "the client connection this
//! request came in on, and the client that used it".
//!
//! The token goes into the user part of the Path / Record-Route URI and
//! into a parameter of the proxy's own Via, so requests from the registrar
//! and responses find their way back without a lookup table. It is signed
//! with HMAC-SHA256 (truncated to 80 bits); any instance that shares the
//! secret decodes it and decides the same way.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::transport::Transport;

type HmacSha256 = Hmac<Sha256>;

/// MAC length kept in a token, bytes.
const MAC_BYTES: usize = 10;
/// Longest client id carried in a token, bytes.
const MAX_CLIENT_ID_BYTES: usize = 64;

/// What a token is for: each use gets its own token, so one cannot be
/// replayed as another (a Record-Route token a client sees is not a valid
/// Via token, for example).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// In the proxy's own Via: the response goes to this flow.
    Via,
    /// In Path: requests from the registrar go to this flow.
    Path,
    /// In Record-Route of a dialog the client on this flow started.
    DialogFromClient,
    /// In Record-Route of a dialog the registrar side started toward this flow.
    DialogFromUpstream,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Self::Via => b'v',
            Self::Path => b'p',
            Self::DialogFromClient => b'c',
            Self::DialogFromUpstream => b'r',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'v' => Self::Via,
            b'p' => Self::Path,
            b'c' => Self::DialogFromClient,
            b'r' => Self::DialogFromUpstream,
            _ => return None,
        })
    }
}

/// The client flow a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Transport of the client connection.
    pub transport: Transport,
    /// The client's address as seen by the proxy.
    pub peer: SocketAddr,
    /// For TCP: the id of the connection (0 for UDP).
    pub connection: u64,
    /// Catalog id of the client that used this flow.
    pub client: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not hex, or too short or long.
    #[error("malformed flow token")]
    Malformed,
    /// The MAC does not match: tampered, or signed with another secret.
    #[error("flow token signature mismatch")]
    BadSignature,
}

/// Signs and checks flow tokens.
#[derive(Clone)]
pub struct FlowSigner {
    key: HmacSha256,
}

impl std::fmt::Debug for FlowSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowSigner(..)")
    }
}

impl FlowSigner {
    /// A signer for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length"),
        }
    }

    /// A signer with a random secret (tokens die with the process).
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        Self::new(&secret)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_BYTES] {
        // Only encoding needs the tag itself; decoding verifies in constant time.
        let mut mac = self.key.clone();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// Constant-time check of a truncated MAC.
    fn verify(&self, payload: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.key.clone();
        mac.update(payload);
        mac.verify_truncated_left(tag).is_ok()
    }

    /// A 64-bit keyed hash (for branches and To-tags).
    pub fn hash64(&self, parts: &[&[u8]]) -> u64 {
        let mut mac = self.key.clone();
        for p in parts {
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        u64::from_be_bytes(full[..8].try_into().expect("8 bytes"))
    }

    /// Encode a flow for `purpose` as a lowercase hex token.
    pub fn encode(&self, purpose: Purpose, flow: &Flow) -> String {
        let mut payload = Vec::with_capacity(40);
        payload.push(purpose.byte());
        payload.push(match flow.transport {
            Transport::Udp => b'u',
            Transport::Tcp => b't',
        });
        match flow.peer.ip() {
            IpAddr::V4(v4) => {
                payload.push(4);
                payload.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                payload.push(6);
                payload.extend_from_slice(&v6.octets());
            }
        }
        payload.extend_from_slice(&flow.peer.port().to_be_bytes());
        payload.extend_from_slice(&flow.connection.to_be_bytes());
        let client = &flow.client.as_bytes()[..flow.client.len().min(MAX_CLIENT_ID_BYTES)];
        payload.extend_from_slice(client);
        let mac = self.mac(&payload);
        payload.extend_from_slice(&mac);
        hex_encode(&payload)
    }

    /// Decode and verify a token.
    pub fn decode(&self, token: &[u8]) -> Result<(Purpose, Flow), TokenError> {
        let bytes = hex_decode(token).ok_or(TokenError::Malformed)?;
        if bytes.len() < 1 + 1 + 1 + 4 + 2 + 8 + MAC_BYTES {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_BYTES);
        if !self.verify(payload, mac) {
            return Err(TokenError::BadSignature);
        }
        let purpose = Purpose::from_byte(payload[0]).ok_or(TokenError::Malformed)?;
        let payload = &payload[1..];
        let transport = match payload[0] {
            b'u' => Transport::Udp,
            b't' => Transport::Tcp,
            _ => return Err(TokenError::Malformed),
        };
        let (ip, rest): (IpAddr, &[u8]) = match payload[1] {
            4 => {
                let o: [u8; 4] = payload[2..6]
                    .try_into()
                    .map_err(|_| TokenError::Malformed)?;
                (o.into(), &payload[6..])
            }
            6 if payload.len() >= 2 + 16 + 10 => {
                let o: [u8; 16] = payload[2..18]
                    .try_into()
                    .map_err(|_| TokenError::Malformed)?;
                (o.into(), &payload[18..])
            }
            _ => return Err(TokenError::Malformed),
        };
        if rest.len() < 10 {
            return Err(TokenError::Malformed);
        }
        let port = u16::from_be_bytes([rest[0], rest[1]]);
        let connection = u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes"));
        let client = String::from_utf8(rest[10..].to_vec()).map_err(|_| TokenError::Malformed)?;
        let flow = Flow {
            transport,
            peer: SocketAddr::new(ip, port),
            connection,
            client,
        };
        Ok((purpose, flow))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn hex_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 512 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(peer: &str) -> Flow {
        Flow {
            transport: Transport::Tcp,
            peer: peer.parse().unwrap(),
            connection: 42,
            client: "lync-mobile".into(),
        }
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let s = FlowSigner::new(b"0123456789abcdef");
        for peer in ["192.0.2.1:5060", "[2001:db8::1]:5061"] {
            let f = flow(peer);
            let token = s.encode(Purpose::Path, &f);
            assert_eq!(s.decode(token.as_bytes()), Ok((Purpose::Path, f)));
        }
    }

    #[test]
    fn tampering_and_other_secrets_are_refused() {
        let a = FlowSigner::new(b"0123456789abcdef");
        let b = FlowSigner::new(b"another-secret-xx");
        let token = a.encode(Purpose::Via, &flow("192.0.2.1:5060"));
        assert_eq!(b.decode(token.as_bytes()), Err(TokenError::BadSignature));
        let mut t = token.into_bytes();
        t[5] = if t[5] == b'0' { b'1' } else { b'0' };
        assert_eq!(a.decode(&t), Err(TokenError::BadSignature));
        assert_eq!(a.decode(b"zz"), Err(TokenError::Malformed));
        assert_eq!(a.decode(b"abcd"), Err(TokenError::Malformed));
        // Same secret, another instance: same answer.
        let a2 = FlowSigner::new(b"0123456789abcdef");
        let token = a.encode(Purpose::DialogFromClient, &flow("192.0.2.1:5060"));
        let (purpose, decoded) = a2.decode(token.as_bytes()).unwrap();
        assert_eq!(
            (purpose, decoded.client.as_str()),
            (Purpose::DialogFromClient, "lync-mobile")
        );
    }
}
