//! Flow tokens: a signed, stateless name for "the client connection this
//! request came in on, and the client that used it".
//!
//! The token goes into the user part of the Path / Record-Route URI and
//! into a parameter of the proxy's own Via, so requests from the registrar
//! and responses find their way back without a lookup table. It is signed
//! with HMAC-SHA256 (truncated to 80 bits); any instance that shares the
//! secret decodes it and decides the same way.
//!
//! A signer holds one or more secrets (`proxy.flow_secret_file`, one per
//! line): the first signs, every one verifies, the signing one first, so
//! the common case costs one HMAC. Rotating a pool's secret is then:
//! prepend the new one and reload every instance (tokens of either secret
//! verify everywhere), wait until no token of the old one is in use, drop
//! it and reload again.
//!
//! A stream flow is named by its [`FlowId`]: the boot id of the instance
//! holding the connection and the connection's id there, so that a token
//! outliving its process (a restart) or read by another instance of a pool
//! never names someone else's connection. A UDP flow is its address: any
//! instance can send to it. Either names the listener the client reached
//! too: the instance holding it sends a UDP client's datagrams from it
//! (RFC 3581 4: a client behind NAT takes only datagrams from the address
//! it sent to), and names it in the Via and Record-Route toward the client.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::transport::{BootId, ConnectionId, FlowId, Transport};
use crate::vocabulary::LocalAddr;

type HmacSha256 = Hmac<Sha256>;

/// MAC length kept in a token, bytes.
const MAC_BYTES: usize = 10;
/// Longest client id carried in a token, bytes.
const MAX_CLIENT_ID_BYTES: usize = 64;

/// The Record-Route URI parameter that binds a dialog token to its dialog
/// ([`FlowSigner::dialog_binding`]). Versions without it ignore it.
pub const DIALOG_PARAM: &str = "sipadmit-dlg";

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
    /// In the proxy's own Via on a request relayed toward a client: the
    /// client's response goes back to this flow, where the request came
    /// from (a registrar node or connection other than `upstream` itself).
    ViaBack,
}

impl Purpose {
    fn byte(self) -> u8 {
        match self {
            Self::Via => b'v',
            Self::Path => b'p',
            Self::DialogFromClient => b'c',
            Self::DialogFromUpstream => b'r',
            Self::ViaBack => b'b',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'v' => Self::Via,
            b'p' => Self::Path,
            b'c' => Self::DialogFromClient,
            b'r' => Self::DialogFromUpstream,
            b'b' => Self::ViaBack,
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
    /// For stream transports: the connection, scoped by the boot id of the
    /// instance holding it. `None` for UDP (and only for UDP: a decoded
    /// stream flow always has one).
    pub connection: Option<FlowId>,
    /// The listener the client reached (its address as advertised): a
    /// UDP client's datagrams leave from it, and the Via and Record-Route
    /// toward the client name it. `None` when unknown (a token of a version
    /// before 2026-12-06, a flow found by the Request-URI's address): the
    /// first listener of the transport that reaches the client then does.
    pub local: Option<LocalAddr>,
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

/// Which of a signer's secrets verified a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The signing secret (the first).
    Signing,
    /// One of the older secrets, kept for verifying only: the token was
    /// signed before the last rotation.
    Older,
}

/// Signs and checks flow tokens: the first secret signs, every secret
/// verifies.
#[derive(Clone)]
pub struct FlowSigner {
    /// Never empty: the signing key first, then the older ones.
    keys: Vec<HmacSha256>,
    /// SHA-256 over the secrets in order: tells two signers apart without
    /// keeping the secrets. A random secret carried over
    /// ([`FlowSigner::carrying_random_of`]) is not in it.
    digest: [u8; 32],
    /// The last key is this run's random secret: the only one of a signer
    /// made at start without a configured secret, or kept for verifying
    /// once a reload brought configured ones.
    random_last: bool,
    /// How many keys, from the first, are the configured secrets; those
    /// after them were carried over by a reload
    /// ([`FlowSigner::carrying_replaced_of`], [`FlowSigner::carrying_random_of`]).
    configured: usize,
}

impl std::fmt::Debug for FlowSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowSigner(..)")
    }
}

impl PartialEq for FlowSigner {
    /// Whether both hold the same secrets in the same order.
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for FlowSigner {}

/// Secrets replaced outright by reloads that keep verifying until a
/// restart ([`FlowSigner::carrying_replaced_of`]): each costs an HMAC for
/// every token the secrets before it do not verify.
pub const MAX_CARRIED: usize = 4;

/// What tells two HMAC keys apart without their secrets: the MAC of a
/// fixed text.
fn key_id(key: &HmacSha256) -> [u8; 32] {
    let mut mac = key.clone();
    mac.update(b"sipadmit flow secret identity");
    mac.finalize().into_bytes().into()
}

impl FlowSigner {
    /// A signer for `secret` alone.
    pub fn new(secret: &[u8]) -> Self {
        Self::with_secrets(&[secret]).expect("one secret")
    }

    /// A signer whose first secret signs and every secret verifies; `None`
    /// for no secret. Each secret past the first costs an HMAC for every
    /// token that fails the first: the config caps them
    /// ([`crate::config::flow_secrets::MAX_SECRETS`]).
    pub fn with_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Self> {
        if secrets.is_empty() {
            return None;
        }
        let mut digest = Sha256::new();
        let keys = secrets
            .iter()
            .map(|secret| {
                let secret = secret.as_ref();
                digest.update((secret.len() as u64).to_be_bytes());
                digest.update(secret);
                HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length")
            })
            .collect();
        Some(Self {
            configured: secrets.len(),
            keys,
            digest: digest.finalize().into(),
            random_last: false,
        })
    }

    /// This signer, also verifying with the secrets `running` verified
    /// with that are not among its own, when none of `running`'s
    /// configured secrets is: a reload that replaces `proxy.flow_secret`
    /// outright keeps the tokens in use (the Path of every registration,
    /// the Record-Route of every dialog) valid until a restart, where
    /// listing the old secret second (`flow_secret_file`) would have rotated
    /// it. Secrets carried by earlier replacements stay carried (at most
    /// [`MAX_CARRIED`], the latest kept) whatever the reload; a secret
    /// retired by a rotation (configured, then no longer listed) is not.
    /// `true` in the second place when it carried a secret anew.
    pub fn carrying_replaced_of(mut self, running: &FlowSigner) -> (Self, bool) {
        let ours: Vec<[u8; 32]> = self.keys.iter().map(key_id).collect();
        let kept = running.keys[..running.configured]
            .iter()
            .any(|key| ours.contains(&key_id(key)));
        let replaced = !kept && running.configured > 0;
        let carried_before = &running.keys
            [running.configured..running.keys.len() - usize::from(running.random_last)];
        let carried: Vec<HmacSha256> = replaced
            .then(|| running.keys[0].clone())
            .into_iter()
            .chain(carried_before.iter().cloned())
            .filter(|key| !ours.contains(&key_id(key)))
            .take(MAX_CARRIED)
            .collect();
        self.keys.extend(carried);
        (self, replaced)
    }

    /// This signer, also verifying (last) with the random secret `running`
    /// was made with, if it was: a reload that brings the first configured
    /// secrets keeps the tokens of this run's registrations and dialogs
    /// valid (until a restart, which loses the random secret anyway).
    pub fn carrying_random_of(mut self, running: &FlowSigner) -> Self {
        if let (true, Some(random)) = (running.random_last, running.keys.last()) {
            self.keys.push(random.clone());
            self.random_last = true;
        }
        self
    }

    /// Whether this signer verifies with a random secret of this run.
    pub fn verifies_a_random_secret(&self) -> bool {
        self.random_last
    }

    /// Whether a configured secret signs (not the random one of a start
    /// without any).
    pub fn signs_with_a_configured_secret(&self) -> bool {
        !(self.random_last && self.keys.len() == 1)
    }

    /// How many secrets verify (the signing one included).
    pub fn secrets(&self) -> usize {
        self.keys.len()
    }

    /// A short public name of the signing secret (8 hex digits of a hash
    /// of it), logged at start and at reload so that operators can check
    /// that every instance of a pool signs with the same secret. It gives
    /// away 32 bits of a hash, nothing an attacker can use against a
    /// secret of 16 bytes or more.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.signing().clone();
        mac.update(b"sipadmit flow secret fingerprint");
        let full = mac.finalize().into_bytes();
        Token::hex(&full[..4]).as_str().to_owned()
    }

    /// The signing key.
    fn signing(&self) -> &HmacSha256 {
        &self.keys[0]
    }

    /// A signer with a random secret (tokens die with the process).
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        Self {
            random_last: true,
            configured: 0,
            ..Self::new(&secret)
        }
    }

    fn mac(&self, payload: &[u8], binding: &[u8]) -> [u8; MAC_BYTES] {
        // Only encoding needs the tag itself; decoding verifies in constant time.
        let mut mac = self.signing().clone();
        mac.update(payload);
        mac.update(binding);
        let full = mac.finalize().into_bytes();
        let mut out = [0; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// Constant-time check of a truncated MAC against each secret, the
    /// signing one first: which one verified it, if any.
    fn verify(&self, payload: &[u8], binding: &[u8], tag: &[u8]) -> Option<Verified> {
        self.keys.iter().enumerate().find_map(|(i, key)| {
            let mut mac = key.clone();
            mac.update(payload);
            mac.update(binding);
            mac.verify_truncated_left(tag).is_ok().then_some(if i == 0 {
                Verified::Signing
            } else {
                Verified::Older
            })
        })
    }

    /// Encode a flow for `purpose` as a lowercase hex token.
    pub fn encode(&self, purpose: Purpose, flow: &Flow) -> Token {
        self.encode_bound(purpose, flow, &[])
    }

    /// Encode a flow for `purpose`, bound to `binding`: the MAC covers
    /// `binding` too (not written in the token), so the token verifies only
    /// with the same `binding` ([`FlowSigner::decode_bound`]). A back token
    /// is bound to its transaction's branch. Bound to nothing, it is
    /// [`FlowSigner::encode`]'s.
    pub fn encode_bound(&self, purpose: Purpose, flow: &Flow, binding: &[u8]) -> Token {
        let mut payload = Payload::default();
        payload.put(&[purpose.byte()]);
        // Lowercase without the listener (the form before it was named),
        // uppercase with it.
        let transport = match flow.transport {
            Transport::Udp => b'u',
            Transport::Tcp => b't',
            Transport::Tls => b's',
        };
        payload.put(&[match flow.local {
            Some(_) => transport.to_ascii_uppercase(),
            None => transport,
        }]);
        payload.put_addr(flow.peer);
        if let Some(local) = flow.local {
            payload.put_addr(local.0);
        }
        if flow.transport.is_stream() {
            // A stream flow without an id encodes connection 0, which no
            // decoder accepts.
            let (boot, connection) = flow
                .connection
                .map_or((0, 0), |id| (id.boot.get(), id.connection.get()));
            payload
                .put(&boot.to_be_bytes())
                .put(&connection.to_be_bytes());
        }
        let client = &flow.client.as_bytes()[..flow.client.len().min(MAX_CLIENT_ID_BYTES)];
        payload.put(client);
        let mac = self.mac(payload.bytes(), binding);
        payload.put(&mac);
        Token::hex(payload.bytes())
    }

    /// Decode and verify a token.
    pub fn decode(&self, token: &[u8]) -> Result<(Purpose, Flow), TokenError> {
        self.decode_verified(token)
            .map(|(purpose, flow, _)| (purpose, flow))
    }

    /// Decode and verify a token, and say which secret verified it.
    pub fn decode_verified(&self, token: &[u8]) -> Result<(Purpose, Flow, Verified), TokenError> {
        self.decode_bound(token, &[])
    }

    /// The dialog binding of a Record-Route `token` (its hex text) for the
    /// dialog of `call_id`: a MAC over both, written beside the token
    /// ([`DIALOG_PARAM`]) so that a request within that dialog can be
    /// told from one that merely carries a token of some other dialog.
    pub fn dialog_binding(&self, token: &[u8], call_id: &[u8]) -> Token {
        Token::hex(&self.mac(token, call_id))
    }

    /// Whether `binding` (hex) is the dialog binding of `token` for
    /// `call_id`, under any of the secrets.
    pub fn binds_dialog(&self, token: &[u8], call_id: &[u8], binding: &[u8]) -> bool {
        let mut decoded = [0; MAX_TOKEN_BYTES];
        hex_decode(binding, &mut decoded)
            .filter(|mac| mac.len() == MAC_BYTES)
            .is_some_and(|mac| self.verify(token, call_id, mac).is_some())
    }

    /// Decode and verify a token made by [`FlowSigner::encode_bound`] with
    /// `binding`, and say which secret verified it.
    pub fn decode_bound(
        &self,
        token: &[u8],
        binding: &[u8],
    ) -> Result<(Purpose, Flow, Verified), TokenError> {
        let mut decoded = [0; MAX_TOKEN_BYTES];
        let bytes = hex_decode(token, &mut decoded).ok_or(TokenError::Malformed)?;
        if bytes.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_BYTES);
        let verified = self
            .verify(payload, binding, mac)
            .ok_or(TokenError::BadSignature)?;
        let mut reader = Reader(payload);
        let purpose = Purpose::from_byte(reader.byte()?).ok_or(TokenError::Malformed)?;
        let byte = reader.byte()?;
        let transport = match byte.to_ascii_lowercase() {
            b'u' => Transport::Udp,
            b't' => Transport::Tcp,
            b's' => Transport::Tls,
            _ => return Err(TokenError::Malformed),
        };
        let with_local = byte.is_ascii_uppercase();
        let peer = reader.addr()?;
        let local = if with_local {
            Some(LocalAddr(reader.addr()?))
        } else {
            None
        };
        let connection = if transport.is_stream() {
            let boot = BootId::from_u64(u64::from_be_bytes(reader.array()?));
            let connection = ConnectionId::new(u64::from_be_bytes(reader.array()?))
                .ok_or(TokenError::Malformed)?;
            Some(FlowId { boot, connection })
        } else {
            None
        };
        let client = std::str::from_utf8(reader.0).map_err(|_| TokenError::Malformed)?;
        let flow = Flow {
            transport,
            peer,
            connection,
            local,
            client: client.to_owned(),
        };
        Ok((purpose, flow, verified))
    }
}

/// Smallest token: purpose, transport, IPv4 family and address, port, MAC.
const MIN_TOKEN_BYTES: usize = 1 + 1 + 1 + 4 + 2 + MAC_BYTES;
/// Largest token: purpose, transport, IPv6 family, address and port of
/// the client and of the listener, boot and connection ids, the longest
/// client id, MAC (130 bytes, 260 hex digits). A longer text is no token
/// of ours.
const MAX_TOKEN_BYTES: usize = 1 + 1 + 2 * (1 + 16 + 2) + 8 + 8 + MAX_CLIENT_ID_BYTES + MAC_BYTES;

/// Reads a token payload front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, TokenError> {
        let (&first, rest) = self.0.split_first().ok_or(TokenError::Malformed)?;
        self.0 = rest;
        Ok(first)
    }

    /// An address as [`Payload::put_addr`] wrote it.
    fn addr(&mut self) -> Result<SocketAddr, TokenError> {
        let ip: IpAddr = match self.byte()? {
            4 => IpAddr::from(self.array::<4>()?),
            6 => IpAddr::from(self.array::<16>()?),
            _ => return Err(TokenError::Malformed),
        };
        Ok(SocketAddr::new(ip, u16::from_be_bytes(self.array()?)))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(TokenError::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }
}

/// A token's payload while it is built, on the stack.
struct Payload {
    bytes: [u8; MAX_TOKEN_BYTES],
    len: usize,
}

impl Default for Payload {
    fn default() -> Self {
        Self {
            bytes: [0; MAX_TOKEN_BYTES],
            len: 0,
        }
    }
}

impl Payload {
    /// Append `bytes` (the caller keeps within [`MAX_TOKEN_BYTES`]: the
    /// fields are fixed-size, the client id is cut to its maximum).
    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        let end = self.len + bytes.len();
        self.bytes[self.len..end].copy_from_slice(bytes);
        self.len = end;
        self
    }

    /// Append an address: its family (4 or 6), its octets, its port.
    fn put_addr(&mut self, addr: SocketAddr) -> &mut Self {
        match addr.ip() {
            IpAddr::V4(v4) => self.put(&[4]).put(&v4.octets()),
            IpAddr::V6(v6) => self.put(&[6]).put(&v6.octets()),
        };
        self.put(&addr.port().to_be_bytes())
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A flow token as written in a message: lowercase hex, held inline, so
/// writing one into a Via, Path or Record-Route allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    hex: [u8; 2 * MAX_TOKEN_BYTES],
    len: usize,
}

impl Token {
    /// `bytes` (at most [`MAX_TOKEN_BYTES`]) in lowercase hex.
    fn hex(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        debug_assert!(bytes.len() <= MAX_TOKEN_BYTES, "a token's payload fits");
        let mut token = Self {
            hex: [0; 2 * MAX_TOKEN_BYTES],
            len: 2 * bytes.len(),
        };
        for (pair, b) in token.hex.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        token
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        // Hex digits only, so always UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The token's text, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.hex[..self.len]
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.as_str())
    }
}

/// Decode the hex `text` into `out`: the bytes, or `None` when it is not
/// hex of an even length that fits.
fn hex_decode<'a>(text: &[u8], out: &'a mut [u8; MAX_TOKEN_BYTES]) -> Option<&'a [u8]> {
    if text.len() % 2 != 0 || text.len() > 2 * out.len() {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (b, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *b = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(&out[..text.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(peer: &str) -> Flow {
        Flow {
            transport: Transport::Tcp,
            peer: peer.parse().unwrap(),
            connection: Some(FlowId {
                boot: BootId::from_u64(0x0123_4567_89ab_cdef),
                connection: ConnectionId::new(42).unwrap(),
            }),
            local: None,
            client: "lync-mobile".into(),
        }
    }

    #[test]
    fn round_trip_v4_and_v6_stream_and_datagram() {
        let s = FlowSigner::new(b"0123456789abcdef");
        for peer in ["192.0.2.1:5060", "[2001:db8::1]:5061"] {
            let f = flow(peer);
            let token = s.encode(Purpose::Path, &f);
            assert_eq!(s.decode(token.as_bytes()), Ok((Purpose::Path, f.clone())));
            let udp = Flow {
                transport: Transport::Udp,
                connection: None,
                ..f
            };
            let token = s.encode(Purpose::Via, &udp);
            assert_eq!(s.decode(token.as_bytes()), Ok((Purpose::Via, udp.clone())));
            for local in ["192.0.2.9:5060", "[2001:db8::9]:5062"] {
                let with_listener = Flow {
                    local: Some(LocalAddr(local.parse().unwrap())),
                    ..udp.clone()
                };
                let token = s.encode(Purpose::Path, &with_listener);
                assert_eq!(
                    s.decode(token.as_bytes()),
                    Ok((Purpose::Path, with_listener))
                );
            }
            let tls = Flow {
                transport: Transport::Tls,
                ..flow(peer)
            };
            let token = s.encode(Purpose::DialogFromClient, &tls);
            assert_eq!(
                s.decode(token.as_bytes()),
                Ok((Purpose::DialogFromClient, tls))
            );
        }
    }

    #[test]
    fn a_stream_flow_names_its_listener_and_a_token_without_one_still_decodes() {
        let s = FlowSigner::new(b"0123456789abcdef");
        for local in ["192.0.2.9:5060", "[2001:db8::9]:5061"] {
            let stream = Flow {
                local: Some(LocalAddr(local.parse().unwrap())),
                ..flow("192.0.2.1:5060")
            };
            let token = s.encode(Purpose::DialogFromClient, &stream);
            assert_eq!(
                s.decode(token.as_bytes()),
                Ok((Purpose::DialogFromClient, stream))
            );
        }
        // A UDP token of the form before the listener was named (the
        // transport byte 'u'; a REGISTER's Path lives at the registrar for
        // as long as the binding) decodes, without a listener.
        let mut payload = Payload::default();
        payload
            .put(b"pu")
            .put_addr("192.0.2.1:5060".parse().unwrap())
            .put(b"lync-2013");
        let mac = s.mac(payload.bytes(), &[]);
        payload.put(&mac);
        let (purpose, old) = s.decode(Token::hex(payload.bytes()).as_bytes()).unwrap();
        assert_eq!(purpose, Purpose::Path);
        assert_eq!(
            old,
            Flow {
                transport: Transport::Udp,
                peer: "192.0.2.1:5060".parse().unwrap(),
                connection: None,
                local: None,
                client: "lync-2013".into(),
            }
        );
    }

    #[test]
    fn the_longest_token_round_trips_and_a_longer_text_is_no_token() {
        let s = FlowSigner::new(b"0123456789abcdef");
        let mut f = Flow {
            local: Some(LocalAddr("[2001:db8::9]:5062".parse().unwrap())),
            ..flow("[2001:db8::1]:5061")
        };
        f.client = "c".repeat(MAX_CLIENT_ID_BYTES);
        let token = s.encode(Purpose::Path, &f);
        assert_eq!(token.as_bytes().len(), 2 * MAX_TOKEN_BYTES);
        assert_eq!(s.decode(token.as_bytes()), Ok((Purpose::Path, f.clone())));
        // A longer client id is cut to the longest.
        let mut long = f.clone();
        long.client.push('x');
        assert_eq!(s.encode(Purpose::Path, &long), token);
        let mut longer = token.as_bytes().to_vec();
        longer.extend_from_slice(b"00");
        assert_eq!(s.decode(&longer), Err(TokenError::Malformed));
        assert_eq!(format!("{token}"), token.as_str());
    }

    #[test]
    fn the_boot_id_is_part_of_the_signed_token() {
        let s = FlowSigner::new(b"0123456789abcdef");
        let mut f = flow("192.0.2.1:5060");
        let a = s.encode(Purpose::Path, &f);
        f.connection = Some(FlowId {
            boot: BootId::from_u64(7),
            connection: ConnectionId::new(42).unwrap(),
        });
        let b = s.encode(Purpose::Path, &f);
        assert_ne!(a, b, "same connection id, another instance: another token");
        let (_, decoded) = s.decode(b.as_bytes()).unwrap();
        assert_eq!(decoded.connection.unwrap().boot, BootId::from_u64(7));
    }

    #[test]
    fn tampering_and_other_secrets_are_refused() {
        let a = FlowSigner::new(b"0123456789abcdef");
        let b = FlowSigner::new(b"another-secret-xx");
        let token = a.encode(Purpose::Via, &flow("192.0.2.1:5060"));
        assert_eq!(b.decode(token.as_bytes()), Err(TokenError::BadSignature));
        let mut t = token.as_bytes().to_vec();
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

    #[test]
    fn the_first_secret_signs_and_every_secret_verifies() {
        let old = FlowSigner::new(b"old-secret-0123456789");
        let rotating =
            FlowSigner::with_secrets(&[&b"new-secret-0123456789"[..], b"old-secret-0123456789"])
                .unwrap();
        let new = FlowSigner::new(b"new-secret-0123456789");
        let f = flow("192.0.2.1:5060");
        // A token of the old secret verifies during the rotation, as older.
        let old_token = old.encode(Purpose::Path, &f);
        assert_eq!(
            rotating.decode_verified(old_token.as_bytes()),
            Ok((Purpose::Path, f.clone(), Verified::Older))
        );
        // The rotating signer signs with the new secret: the old-only
        // instance refuses it, a new-only one takes it as signing.
        let token = rotating.encode(Purpose::Path, &f);
        assert_eq!(token, new.encode(Purpose::Path, &f));
        assert_eq!(old.decode(token.as_bytes()), Err(TokenError::BadSignature));
        assert_eq!(
            rotating.decode_verified(token.as_bytes()),
            Ok((Purpose::Path, f.clone(), Verified::Signing))
        );
        // Once the old secret is dropped, its tokens are refused.
        assert_eq!(
            new.decode(old_token.as_bytes()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn the_first_configured_secret_keeps_verifying_the_random_one_of_this_run() {
        let random = FlowSigner::random();
        let f = flow("192.0.2.1:5060");
        let before = random.encode(Purpose::Path, &f);
        let configured = FlowSigner::with_secrets(&["configured-secret-0123"]).unwrap();
        let reloaded = configured.clone().carrying_random_of(&random);
        assert!(reloaded.verifies_a_random_secret() && random.verifies_a_random_secret());
        assert!(
            reloaded.signs_with_a_configured_secret() && !random.signs_with_a_configured_secret()
        );
        assert!(configured.signs_with_a_configured_secret());
        assert_eq!(
            reloaded.decode_verified(before.as_bytes()),
            Ok((Purpose::Path, f.clone(), Verified::Older))
        );
        // It signs with the configured secret, and compares as it does: a
        // reload of the same file changes nothing, and keeps carrying.
        assert_eq!(
            reloaded.encode(Purpose::Path, &f),
            configured.encode(Purpose::Path, &f)
        );
        assert_eq!(reloaded, configured);
        let again = configured.clone().carrying_random_of(&reloaded);
        assert_eq!(
            again.decode(before.as_bytes()).map(|(p, _)| p),
            Ok(Purpose::Path)
        );
        // A rotation of the configured secrets still carries it.
        let rotated =
            FlowSigner::with_secrets(&["rotated-secret-012345", "configured-secret-0123"])
                .unwrap()
                .carrying_random_of(&again);
        assert_eq!(
            (rotated.secrets(), rotated.decode(before.as_bytes()).is_ok()),
            (3, true)
        );
        // Configured from the start: nothing random to carry.
        let plain = FlowSigner::with_secrets(&["rotated-secret-012345"])
            .unwrap()
            .carrying_random_of(&configured);
        assert!(!plain.verifies_a_random_secret());
        assert_eq!(plain.secrets(), 1);
    }

    /// Trial 27: a secret replaced twice (A, then B, then C) stopped
    /// verifying at the second replacement, though each reload said it
    /// would verify until a restart.
    #[test]
    fn secrets_replaced_outright_keep_verifying_and_rotated_ones_are_retired() {
        let f = flow("192.0.2.1:5060");
        let signer = |secrets: &[&str], running: &FlowSigner| {
            FlowSigner::with_secrets(secrets)
                .unwrap()
                .carrying_replaced_of(running)
        };
        let a = FlowSigner::with_secrets(&["secret-a-0123456789"]).unwrap();
        let token_a = a.encode(Purpose::Path, &f);
        let verifies = |s: &FlowSigner, token: &Token| s.decode(token.as_bytes()).is_ok();
        let (b, replaced) = signer(&["secret-b-0123456789"], &a);
        assert!(replaced && verifies(&b, &token_a));
        let token_b = b.encode(Purpose::Path, &f);
        let (c, replaced) = signer(&["secret-c-0123456789"], &b);
        assert!(replaced && verifies(&c, &token_a) && verifies(&c, &token_b));
        assert_eq!(c.secrets(), 3);
        // The same file again: nothing replaced, everything still carried.
        let (same, replaced) = signer(&["secret-c-0123456789"], &c);
        assert!(!replaced && verifies(&same, &token_a) && same == c);
        // A rotation through the file (D first, C second) keeps what was
        // carried; dropping C then retires C, not the carried A and B.
        let (rotating, replaced) = signer(&["secret-d-0123456789", "secret-c-0123456789"], &c);
        assert!(!replaced && verifies(&rotating, &token_a));
        let token_c = c.encode(Purpose::Path, &f);
        let (rotated, _) = signer(&["secret-d-0123456789"], &rotating);
        assert!(!verifies(&rotated, &token_c));
        assert!(verifies(&rotated, &token_a) && verifies(&rotated, &token_b));
        // A secret carried and then configured again is not listed twice.
        let (back, _) = signer(&["secret-a-0123456789"], &rotated);
        assert!(verifies(&back, &token_a));
        assert_eq!(back.secrets(), 3, "A, then D and B carried");
        // At most MAX_CARRIED are carried, the latest first.
        let mut running = back;
        for i in 0..10 {
            let secret = format!("secret-many-{i:08}");
            running = signer(&[secret.as_str()], &running).0;
        }
        assert_eq!(running.secrets(), 1 + MAX_CARRIED);
    }

    #[test]
    fn signers_compare_and_fingerprint_by_their_secrets() {
        let a = FlowSigner::with_secrets(&["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]).unwrap();
        let same = FlowSigner::with_secrets(&["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]).unwrap();
        let reordered =
            FlowSigner::with_secrets(&["bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa"]).unwrap();
        // Length-prefixed: secrets split differently are other secrets.
        let split = FlowSigner::with_secrets(&["aaaaaaaaaaaaaaaab", "bbbbbbbbbbbbbbb"]).unwrap();
        assert_eq!(a, same);
        assert_ne!(a, reordered);
        assert_ne!(a, split);
        assert_eq!((a.secrets(), FlowSigner::new(b"x").secrets()), (2, 1));
        assert!(FlowSigner::with_secrets::<&str>(&[]).is_none());
        let fingerprint = a.fingerprint();
        assert_eq!(fingerprint.len(), 8, "{fingerprint}");
        assert_eq!(fingerprint, same.fingerprint());
        assert_eq!(
            fingerprint,
            FlowSigner::new(b"aaaaaaaaaaaaaaaa").fingerprint(),
            "the signing secret's"
        );
        assert_ne!(fingerprint, reordered.fingerprint());
    }
}
