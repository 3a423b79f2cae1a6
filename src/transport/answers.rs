//! Which requests written on a connection to the registrar are still
//! unanswered when it closes.
//!
//! The connection's reader notes every message the registrar sends and the
//! transactions its final responses end ([`Heard`]); the upstream link
//! keeps a copy of each request it writes ([`Unanswered`]) until a final
//! response to it is heard. When the connection closes, what is left, and
//! younger than Timer F, gets `503` (a client on TCP or TLS never
//! retransmits, so nothing else would answer it). A transaction is named
//! by sipadmit's own branch, which the registrar echoes in its top Via
//! (RFC 3261 17.2.3), and by whether the request is a CANCEL, which shares
//! its INVITE's branch (RFC 3261 9.1).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::sip::view::{Method, SipView};
use crate::vocabulary::Inbound;

/// How long a written request is remembered: Timer F (64 × T1, 32 s), after
/// which the client's own transaction has timed out and a `503` would help
/// nobody.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(32);

/// At most this many requests are remembered per connection (after the
/// expired are forgotten); past it, the rest are left to their clients'
/// timers.
pub const MAX_REMEMBERED: usize = 1_000;

/// At most this many bytes of requests are remembered per connection.
pub const MAX_REMEMBERED_BYTES: usize = 4 * 1024 * 1024;

/// At most this many ended transactions wait for the link to take them;
/// past it (a registrar sending responses to nothing), the rest are not
/// noted, so at worst an answered request gets a stray `503` at a close.
const MAX_ENDED_WAITING: usize = 2 * MAX_REMEMBERED;

/// A transaction at the registrar: sipadmit's branch and whether the
/// request is a CANCEL, hashed (SipHash with fixed keys, over a branch
/// sipadmit made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionKey(u64);

impl TransactionKey {
    fn of(view: &SipView, cancel: bool) -> Option<Self> {
        let via = view.top_via().ok()?;
        let branch = via.branch()?;
        let mut hasher = DefaultHasher::new();
        (branch, cancel).hash(&mut hasher);
        Some(Self(hasher.finish()))
    }

    /// The transaction a request written to the registrar opens. `None`:
    /// an ACK (never answered), a response, or no branch in a top Via.
    pub fn opened_by(message: &Bytes) -> Option<Self> {
        let view = SipView::parse(message.clone()).ok()?;
        match view.method()? {
            Method::Ack => None,
            method => Self::of(&view, method == Method::Cancel),
        }
    }

    /// The transaction a final response (`200` to `699`) from the
    /// registrar ends. `None`: a provisional response, a request, or no
    /// branch in its top Via.
    pub fn ended_by(message: &Bytes) -> Option<Self> {
        if !message.starts_with(b"SIP/2.0 ") {
            return None;
        }
        let view = SipView::parse(message.clone()).ok()?;
        if view.status()? < 200 {
            return None;
        }
        let cseq = view.cseq().ok()?;
        Self::of(&view, cseq.method.eq_ignore_ascii_case(b"CANCEL"))
    }
}

/// What the registrar has sent on one connection, as its reader notes it
/// and the link reads it.
#[derive(Debug, Default)]
pub struct Heard {
    /// Complete messages (keep-alives do not count).
    messages: AtomicU64,
    /// Transactions ended by a final response since the link last took
    /// them.
    ended: Mutex<Vec<TransactionKey>>,
}

impl Heard {
    /// The registrar sent `message`.
    pub fn message(&self, message: &Bytes) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = TransactionKey::ended_by(message) {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.len() < MAX_ENDED_WAITING {
                ended.push(key);
            }
        }
    }

    /// How many complete messages the registrar sent.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn take_ended(&self) -> Vec<TransactionKey> {
        std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One remembered request.
#[derive(Debug)]
struct Written {
    /// Its place in the order of writing.
    order: u64,
    at: Instant,
    /// The client's request, copied (not a slice pinning a read buffer).
    inbound: Inbound,
}

/// The requests the link wrote on one connection and has not yet seen a
/// final response to.
#[derive(Debug, Default)]
pub struct Unanswered {
    written: HashMap<TransactionKey, Written>,
    bytes: usize,
    next_order: u64,
}

impl Unanswered {
    /// `inbound`'s request was written at `now` as transaction `key`; a
    /// copy is kept. `false`: not remembered (full).
    pub fn written(&mut self, key: TransactionKey, inbound: &Inbound, now: Instant) -> bool {
        let size = inbound.bytes.len();
        if self.written.len() >= MAX_REMEMBERED || self.bytes + size > MAX_REMEMBERED_BYTES {
            self.forget_expired(now);
            if self.written.len() >= MAX_REMEMBERED || self.bytes + size > MAX_REMEMBERED_BYTES {
                return false;
            }
        }
        let inbound = Inbound {
            bytes: Bytes::copy_from_slice(&inbound.bytes),
            ..inbound.clone()
        };
        self.bytes += size;
        self.next_order += 1;
        let written = Written {
            order: self.next_order,
            at: now,
            inbound,
        };
        if let Some(old) = self.written.insert(key, written) {
            self.bytes -= old.inbound.bytes.len();
        }
        true
    }

    /// Forget the requests `heard` says the registrar answered.
    pub fn answered(&mut self, heard: &Heard) {
        for key in heard.take_ended() {
            self.forget(key);
        }
    }

    /// Forget the request written as `key` (it was not delivered after
    /// all).
    pub fn forget(&mut self, key: TransactionKey) {
        if let Some(old) = self.written.remove(&key) {
            self.bytes -= old.inbound.bytes.len();
        }
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The connection closed at `now`: the requests still unanswered and
    /// younger than [`REMEMBERED_FOR`], in the order they were written.
    pub fn into_failed(mut self, now: Instant) -> Vec<Inbound> {
        self.forget_expired(now);
        let mut left: Vec<Written> = self.written.into_values().collect();
        left.sort_unstable_by_key(|w| w.order);
        left.into_iter().map(|w| w.inbound).collect()
    }

    fn forget_expired(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.written.retain(|_, w| {
            let keep = now.saturating_duration_since(w.at) < REMEMBERED_FOR;
            if !keep {
                *bytes -= w.inbound.bytes.len();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;
    use crate::vocabulary::{Leg, LocalAddr, PeerAddr};

    fn request(method: &str, branch: &str) -> Bytes {
        Bytes::from(format!(
            "{method} sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch={branch}\r\n\
             Via: SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bKclient\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn response(status: u16, method: &str, branch: &str) -> Bytes {
        Bytes::from(format!(
            "SIP/2.0 {status} Whatever\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch={branch}\r\n\
             Via: SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bKclient\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\n\
             Call-ID: c1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn inbound(bytes: Bytes) -> Inbound {
        Inbound {
            bytes,
            transport: Transport::Tcp,
            source: PeerAddr("198.51.100.7:5060".parse().unwrap()),
            local: LocalAddr("192.0.2.1:5060".parse().unwrap()),
            connection: None,
            leg: Leg::FromClient,
        }
    }

    /// Write `message` (as the client's request too) into `unanswered`.
    fn write(unanswered: &mut Unanswered, message: Bytes, now: Instant) {
        let key = TransactionKey::opened_by(&message).expect("a transaction");
        assert!(unanswered.written(key, &inbound(message), now));
    }

    #[test]
    fn keys_match_a_request_and_its_final_response_only() {
        let register = TransactionKey::opened_by(&request("REGISTER", "z9hG4bKa"));
        assert!(register.is_some());
        assert_eq!(
            TransactionKey::ended_by(&response(200, "REGISTER", "z9hG4bKa")),
            register
        );
        assert_eq!(
            TransactionKey::ended_by(&response(100, "REGISTER", "z9hG4bKa")),
            None,
            "a provisional response ends nothing"
        );
        assert_ne!(
            TransactionKey::ended_by(&response(200, "REGISTER", "z9hG4bKb")),
            register
        );
        // A CANCEL shares its INVITE's branch but is a transaction of its own.
        let invite = TransactionKey::opened_by(&request("INVITE", "z9hG4bKi"));
        let cancel = TransactionKey::opened_by(&request("CANCEL", "z9hG4bKi"));
        assert_ne!(invite, cancel);
        assert_eq!(
            TransactionKey::ended_by(&response(200, "CANCEL", "z9hG4bKi")),
            cancel
        );
        assert_eq!(
            TransactionKey::ended_by(&response(487, "INVITE", "z9hG4bKi")),
            invite
        );
        assert_eq!(TransactionKey::opened_by(&request("ACK", "z9hG4bKi")), None);
        assert_eq!(
            TransactionKey::ended_by(&request("OPTIONS", "z9hG4bKo")),
            None,
            "a request from the registrar ends nothing"
        );
        assert_eq!(
            TransactionKey::opened_by(&Bytes::from_static(b"\x01")),
            None
        );
    }

    #[test]
    fn what_has_no_final_response_is_failed_in_the_order_written() {
        let now = Instant::now();
        let heard = Heard::default();
        let mut unanswered = Unanswered::default();
        for branch in ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "z9hG4bK4"] {
            write(&mut unanswered, request("REGISTER", branch), now);
        }
        // The second is answered, the third only provisionally, and the
        // registrar's own request and a stray answer end nothing written.
        heard.message(&response(200, "REGISTER", "z9hG4bK2"));
        heard.message(&response(100, "REGISTER", "z9hG4bK3"));
        heard.message(&request("OPTIONS", "z9hG4bKo"));
        heard.message(&response(200, "REGISTER", "z9hG4bKnone"));
        assert_eq!(heard.messages(), 4);
        unanswered.answered(&heard);
        assert_eq!(unanswered.len(), 3);
        let failed = unanswered.into_failed(now);
        let branches: Vec<_> = failed
            .iter()
            .map(|i| {
                let view = SipView::parse(i.bytes.clone()).unwrap();
                view.top_via().unwrap().branch().unwrap().to_vec()
            })
            .collect();
        assert_eq!(
            branches,
            [
                b"z9hG4bK1".to_vec(),
                b"z9hG4bK3".to_vec(),
                b"z9hG4bK4".to_vec()
            ]
        );
    }

    #[test]
    fn requests_older_than_timer_f_are_forgotten_and_the_count_is_bounded() {
        let start = Instant::now();
        let mut unanswered = Unanswered::default();
        write(&mut unanswered, request("REGISTER", "z9hG4bKold"), start);
        let later = start + REMEMBERED_FOR;
        assert!(
            unanswered.into_failed(later).is_empty(),
            "its client gave up"
        );

        let mut unanswered = Unanswered::default();
        for n in 0..MAX_REMEMBERED {
            write(
                &mut unanswered,
                request("REGISTER", &format!("z9hG4bK{n}")),
                start,
            );
        }
        let one_more = request("REGISTER", "z9hG4bKmore");
        let key = TransactionKey::opened_by(&one_more).unwrap();
        assert!(!unanswered.written(key, &inbound(one_more.clone()), start));
        // Once the first ones expire, there is room again.
        assert!(unanswered.written(key, &inbound(one_more), later));
        assert_eq!(unanswered.len(), 1);
    }

    #[test]
    fn the_bytes_remembered_are_bounded() {
        let now = Instant::now();
        let mut unanswered = Unanswered::default();
        let big = Bytes::from(vec![b'x'; MAX_REMEMBERED_BYTES / 2 + 1]);
        let key = |n: &str| TransactionKey::opened_by(&request("REGISTER", n)).unwrap();
        assert!(unanswered.written(key("z9hG4bK1"), &inbound(big.clone()), now));
        assert!(!unanswered.written(key("z9hG4bK2"), &inbound(big.clone()), now));
        // Rewritten under the same key (a retransmission), it replaces.
        assert!(unanswered.written(key("z9hG4bK1"), &inbound(request("REGISTER", "x")), now));
        assert!(unanswered.written(key("z9hG4bK2"), &inbound(big), now));
        assert_eq!(unanswered.len(), 2);
    }
}
