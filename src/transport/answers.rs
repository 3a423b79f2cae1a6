//! Which requests written on a connection to the registrar are still
//! unanswered when it closes.
//!
//! The connection's reader notes every message the registrar sends and the
//! transactions its final responses end ([`Heard`]); the upstream link
//! keeps a copy of each client request it writes ([`Unanswered`]) until a
//! final response to it is heard. When the connection closes, what is
//! left and still within its client's transaction time gets `503`, as a
//! request the transport failed to deliver does (RFC 3261 16.9): no answer
//! to it will come on that connection, and a client on TCP or TLS never
//! retransmits. A transaction is named by sipadmit's own branch, which the
//! registrar echoes in its top Via (RFC 3261 17.2.3), and by whether the
//! request is a CANCEL, which shares its INVITE's branch (RFC 3261 9.1).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::sip::view::{Method, SipView};
use crate::vocabulary::{starts_as_response, Inbound};

/// How long a written request other than an INVITE is remembered: Timer F
/// (64 × T1, 32 s), after which the client's own transaction has timed out
/// and a `503` would help nobody.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(32);

/// How long a written INVITE is remembered: Timer C (at least 3 min, RFC
/// 3261 16.6), as an INVITE may ring that long after its `1xx`.
pub const INVITE_REMEMBERED_FOR: Duration = Duration::from_secs(180);

/// At most this many requests are remembered per connection (after the
/// expired are forgotten); past it, the rest are left to their clients'
/// timers. 10,000: 20 s of a registrar that stalls under 500 requests a
/// second.
pub const MAX_REMEMBERED: usize = 10_000;

/// At most this many bytes of requests are remembered per connection
/// (16 MiB).
pub const MAX_REMEMBERED_BYTES: usize = 16 * 1024 * 1024;

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
    fn of(branch: &[u8], method: Method) -> Self {
        let mut hasher = DefaultHasher::new();
        (branch, method == Method::Cancel).hash(&mut hasher);
        Self(hasher.finish())
    }

    /// The transaction a request written to the registrar opens, and how
    /// long it is remembered. `None`: an ACK (never answered), a
    /// response, or no branch in a top Via.
    pub fn opened_by(message: &Bytes) -> Option<(Self, Duration)> {
        if starts_as_response(message) {
            return None;
        }
        let named = Named::parsed(message)?;
        let remembered_for = match named.method {
            Method::Ack => return None,
            Method::Invite => INVITE_REMEMBERED_FOR,
            _ => REMEMBERED_FOR,
        };
        Some((named.key, remembered_for))
    }

    /// The transaction a final response (`200` to `699`) from the
    /// registrar ends. `None`: a provisional response, a request, or no
    /// branch in its top Via.
    pub fn ended_by(message: &Bytes) -> Option<Self> {
        if !starts_as_response(message) {
            return None;
        }
        let named = Named::parsed(message)?;
        (named.status? >= 200).then_some(named.key)
    }
}

/// What names a message's transaction: the key, the method (a response's
/// from its CSeq; methods are case-sensitive, RFC 3261 7.1) and a
/// response's status. (A reading of the first header lines only, tried
/// instead of the whole parse, made no difference the load harness could
/// measure: not kept.)
struct Named {
    key: TransactionKey,
    method: Method,
    status: Option<u16>,
}

impl Named {
    /// Read from the message, parsed.
    fn parsed(message: &Bytes) -> Option<Self> {
        let view = SipView::parse(message.clone()).ok()?;
        let branch = view.top_via().ok()?.branch()?;
        let (method, status) = match view.status() {
            Some(status) => (Method::from_bytes(view.cseq().ok()?.method), Some(status)),
            None => (view.method()?, None),
        };
        Some(Self {
            key: TransactionKey::of(branch, method),
            method,
            status,
        })
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
    /// When its client's transaction is over.
    until: Instant,
    /// The client's request, copied (not a slice pinning a read buffer).
    inbound: Inbound,
    /// It is an INVITE (a call may ring for minutes: a drain neither waits
    /// for it nor gives it up).
    invite: bool,
}

/// The requests the link wrote on one connection and has not yet seen a
/// final response to.
#[derive(Debug, Default)]
pub struct Unanswered {
    written: HashMap<TransactionKey, Written>,
    bytes: usize,
    /// How many of those are INVITEs.
    invites: usize,
    next_order: u64,
    /// Requests not remembered for want of room.
    not_kept: u64,
}

impl Unanswered {
    /// `inbound`'s request is written at `now` as transaction `key`, to
    /// be remembered for `remembered_for`; a copy is kept. `false`: not
    /// remembered now (full, or the transaction's first copy is kept: a
    /// retransmission).
    pub fn written(
        &mut self,
        (key, remembered_for): (TransactionKey, Duration),
        inbound: &Inbound,
        now: Instant,
    ) -> bool {
        if self.written.contains_key(&key) {
            return false;
        }
        let size = inbound.bytes.len();
        let full =
            |u: &Self| u.written.len() >= MAX_REMEMBERED || u.bytes + size > MAX_REMEMBERED_BYTES;
        if full(self) {
            self.forget_expired(now);
            if full(self) {
                self.not_kept += 1;
                return false;
            }
        }
        self.bytes += size;
        self.next_order += 1;
        let invite = remembered_for == INVITE_REMEMBERED_FOR;
        self.invites += usize::from(invite);
        let written = Written {
            order: self.next_order,
            until: now + remembered_for,
            inbound: Inbound {
                bytes: Bytes::copy_from_slice(&inbound.bytes),
                ..inbound.clone()
            },
            invite,
        };
        self.written.insert(key, written);
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
            self.invites -= usize::from(old.invite);
        }
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// No request is remembered.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// How many requests other than INVITEs are remembered: what a drain
    /// waits for.
    pub fn awaited(&self) -> usize {
        self.written.len() - self.invites
    }

    /// How many requests were not remembered for want of room (left to
    /// their clients' timers).
    pub fn not_kept(&self) -> u64 {
        self.not_kept
    }

    /// The requests still unanswered at `now` whose clients still wait,
    /// in the order they were written, taken (the connection closed, or a
    /// drain gives them up): none is remembered after.
    pub fn take_waiting(&mut self, now: Instant) -> Vec<Inbound> {
        self.take(now, |_| true)
    }

    /// The requests other than INVITEs still unanswered at `now` whose
    /// clients still wait, in the order they were written, taken (a drain
    /// gives them up); INVITEs stay remembered.
    pub fn take_awaited(&mut self, now: Instant) -> Vec<Inbound> {
        self.take(now, |w| !w.invite)
    }

    fn take(&mut self, now: Instant, taken: impl Fn(&Written) -> bool) -> Vec<Inbound> {
        self.forget_expired(now);
        let keys: Vec<TransactionKey> = (self.written.iter())
            .filter(|(_, w)| taken(w))
            .map(|(key, _)| *key)
            .collect();
        let mut left: Vec<Written> = keys
            .into_iter()
            .filter_map(|key| self.written.remove(&key))
            .collect();
        for w in &left {
            self.bytes -= w.inbound.bytes.len();
            self.invites -= usize::from(w.invite);
        }
        left.sort_unstable_by_key(|w| w.order);
        left.into_iter().map(|w| w.inbound).collect()
    }

    /// Forget the requests whose clients have stopped waiting by `now`.
    pub fn forget_expired(&mut self, now: Instant) {
        let (bytes, invites) = (&mut self.bytes, &mut self.invites);
        self.written.retain(|_, w| {
            let keep = now < w.until;
            if !keep {
                *bytes -= w.inbound.bytes.len();
                *invites -= usize::from(w.invite);
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
        let opened = TransactionKey::opened_by(&message).expect("a transaction");
        assert!(unanswered.written(opened, &inbound(message), now));
    }

    #[test]
    fn keys_match_a_request_and_its_final_response_only() {
        let key = |m: Bytes| TransactionKey::opened_by(&m).map(|(key, _)| key);
        let register = key(request("REGISTER", "z9hG4bKa"));
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
        let invite = key(request("INVITE", "z9hG4bKi"));
        let cancel = key(request("CANCEL", "z9hG4bKi"));
        assert_ne!(invite, cancel);
        assert_eq!(
            TransactionKey::ended_by(&response(200, "CANCEL", "z9hG4bKi")),
            cancel
        );
        assert_eq!(
            TransactionKey::ended_by(&response(487, "INVITE", "z9hG4bKi")),
            invite
        );
        assert_eq!(key(request("ACK", "z9hG4bKi")), None);
        // Methods are case-sensitive: `cancel` is no CANCEL, on either side.
        assert_eq!(key(request("cancel", "z9hG4bKi")), invite);
        assert_eq!(
            TransactionKey::ended_by(&response(200, "cancel", "z9hG4bKi")),
            invite
        );
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
    fn a_folded_top_via_and_compact_names_are_read() {
        let folded = Bytes::from_static(
            b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nv: SIP/2.0/TCP 192.0.2.1\r\n ;branch=z9hG4bKf, SIP/2.0/UDP b\r\nContent-Length: 0\r\n\r\n",
        );
        let register = TransactionKey::opened_by(&request("REGISTER", "z9hG4bKf"));
        assert_eq!(
            TransactionKey::ended_by(&folded),
            register.map(|(key, _)| key)
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
        let failed = unanswered.take_waiting(now);
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
    fn requests_are_forgotten_when_their_clients_gave_up_and_the_count_is_bounded() {
        let start = Instant::now();
        let mut unanswered = Unanswered::default();
        write(&mut unanswered, request("REGISTER", "z9hG4bKold"), start);
        write(&mut unanswered, request("INVITE", "z9hG4bKringing"), start);
        let later = start + REMEMBERED_FOR;
        let failed = unanswered.take_waiting(later);
        assert_eq!(failed.len(), 1, "the REGISTER's client gave up (Timer F)");
        assert!(
            failed[0].bytes.starts_with(b"INVITE"),
            "an INVITE may ring for 3 min (Timer C)"
        );

        let mut unanswered = Unanswered::default();
        for n in 0..MAX_REMEMBERED {
            let branch = format!("z9hG4bK{n}");
            write(&mut unanswered, request("REGISTER", &branch), start);
        }
        let one_more = request("REGISTER", "z9hG4bKmore");
        let opened = TransactionKey::opened_by(&one_more).unwrap();
        assert!(!unanswered.written(opened, &inbound(one_more.clone()), start));
        assert_eq!(unanswered.not_kept(), 1);
        // Once the first ones expire, there is room again.
        assert!(unanswered.written(opened, &inbound(one_more), later));
        assert_eq!(unanswered.len(), 1);
    }

    #[test]
    fn a_retransmission_keeps_the_first_copy_and_the_bytes_are_bounded() {
        let now = Instant::now();
        let mut unanswered = Unanswered::default();
        let big = Bytes::from(vec![b'x'; MAX_REMEMBERED_BYTES / 2 + 1]);
        let opened = |n: &str| TransactionKey::opened_by(&request("REGISTER", n)).unwrap();
        assert!(unanswered.written(opened("z9hG4bK1"), &inbound(big.clone()), now));
        assert!(!unanswered.written(opened("z9hG4bK2"), &inbound(big.clone()), now));
        assert_eq!(unanswered.not_kept(), 1);
        // Written again under the same key (a retransmission): not newly
        // remembered, so a failed write of it forgets nothing.
        let again = inbound(request("REGISTER", "x"));
        assert!(!unanswered.written(opened("z9hG4bK1"), &again, now));
        assert_eq!(unanswered.not_kept(), 1, "not for want of room");
        let failed = unanswered.take_waiting(now);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].bytes, big, "the first copy");
    }

    #[test]
    fn a_drain_awaits_and_gives_up_all_but_the_invites() {
        let mut unanswered = Unanswered::default();
        let now = Instant::now();
        write(&mut unanswered, request("REGISTER", "z9hG4bKa"), now);
        write(&mut unanswered, request("INVITE", "z9hG4bKb"), now);
        write(&mut unanswered, request("MESSAGE", "z9hG4bKc"), now);
        assert_eq!((unanswered.len(), unanswered.awaited()), (3, 2));
        let given_up = unanswered.take_awaited(now);
        let methods: Vec<&[u8]> = given_up.iter().map(|i| &i.bytes[..8]).collect();
        assert_eq!(methods, [&b"REGISTER"[..], &b"MESSAGE "[..]]);
        assert_eq!((unanswered.len(), unanswered.awaited()), (1, 0));
        // The INVITE is still failed if the connection closes.
        let failed = unanswered.take_waiting(now);
        assert!(failed[0].bytes.starts_with(b"INVITE "));
        assert!(unanswered.is_empty());
    }
}
