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
//!
//! An INVITE is remembered with its CANCEL, and the reader notes the
//! provisional answers to INVITEs too: when a drain runs out, a call the
//! callee's side is ringing is cancelled ([`Unanswered::cancel_calls`])
//! rather than left ringing at a registrar that can no longer reach its
//! caller through this instance (RFC 3261 16.8, as Timer C would).

use std::collections::{HashMap, HashSet};
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

/// How long a call cancelled at a drain's end has for the registrar's
/// final answer (the callee's `487`, RFC 3261 9.2) to come and be relayed
/// before its caller is answered `408` instead; well within the two
/// seconds a drain's end gives its last answers
/// ([`BEYOND_THE_LIMIT`](crate::drain::BEYOND_THE_LIMIT)).
pub const CANCELLED_ANSWERED_WITHIN: Duration = Duration::from_secs(1);

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

    /// The transaction a request written to the registrar opens, how
    /// long it is remembered, and for an INVITE its CANCEL. `None`: an ACK
    /// (never answered), a response, or no branch in a top Via.
    pub fn opened_by(message: &Bytes) -> Option<Opened> {
        if starts_as_response(message) {
            return None;
        }
        let view = SipView::parse(message.clone()).ok()?;
        let named = Named::of(&view)?;
        let mut opened = Opened {
            key: named.key,
            remembered_for: REMEMBERED_FOR,
            invite: None,
        };
        match named.method {
            Method::Ack => return None,
            Method::Invite => {
                opened.remembered_for = INVITE_REMEMBERED_FOR;
                opened.invite = Some(Call::Invite(crate::sip::of_invite::cancel(&view)));
            }
            Method::Cancel => {
                let branch = view.top_via().ok()?.branch()?;
                opened.invite = Some(Call::Cancel(Self::of(branch, Method::Invite)));
            }
            _ => {}
        }
        Some(opened)
    }

    /// The transaction a response from the registrar answers, and how.
    /// `None`: a request, or no branch in its top Via.
    fn answered_by(message: &Bytes) -> Option<(Self, Answer)> {
        if !starts_as_response(message) {
            return None;
        }
        let view = SipView::parse(message.clone()).ok()?;
        let named = Named::of(&view)?;
        let invite = named.method == Method::Invite;
        let answer = match named.status? {
            status @ 200.. => Answer::Final {
                invite_2xx: invite && status < 300,
            },
            _ => Answer::Provisional { invite },
        };
        Some((named.key, answer))
    }
}

/// How a response answers its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A final response: the transaction ended.
    Final {
        /// A 2xx to an INVITE: forwarded even after another final
        /// response (RFC 3261 16.7 step 5).
        invite_2xx: bool,
    },
    /// A provisional response.
    Provisional {
        /// To an INVITE: the call may be ringing, and may be cancelled
        /// (RFC 3261 9.1).
        invite: bool,
    },
}

impl Opened {
    /// For a client's CANCEL, the INVITE it cancels.
    pub fn cancels(&self) -> Option<TransactionKey> {
        match self.invite {
            Some(Call::Cancel(invite)) => Some(invite),
            _ => None,
        }
    }
}

/// What a request written to the registrar opens ([`TransactionKey::opened_by`]).
#[derive(Debug, Clone)]
pub struct Opened {
    /// Its transaction.
    pub key: TransactionKey,
    /// How long it is remembered.
    pub remembered_for: Duration,
    /// What it is to a call: an INVITE, or a CANCEL of one.
    pub invite: Option<Call>,
}

/// What a request is to a call.
#[derive(Debug, Clone)]
pub enum Call {
    /// An INVITE, with the CANCEL of what was written (`None` when it
    /// lacks what a CANCEL copies).
    Invite(Option<Bytes>),
    /// The client's CANCEL of the INVITE of this transaction (same branch,
    /// RFC 3261 9.1).
    Cancel(TransactionKey),
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
    /// Read from the message's view.
    fn of(view: &SipView) -> Option<Self> {
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
    /// What the link has yet to take, and what it gave up: one lock, so
    /// that a transaction is either answered by the registrar or given up
    /// (answered by sipadmit), never both.
    noted: Mutex<Noted>,
}

#[derive(Debug, Default)]
struct Noted {
    /// Transactions answered (ended by a final response, or an INVITE
    /// answered provisionally) since the link last took them.
    answered: Vec<(TransactionKey, bool)>,
    /// Transactions the link gave up, whose clients sipadmit answered.
    given_up: HashSet<TransactionKey>,
}

impl Heard {
    /// The registrar sent `message`: noted. `false`: a response to a
    /// transaction the link gave up (its client was answered `408` at a
    /// drain's end), not to be relayed: after a final response only a 2xx
    /// to an INVITE goes on (RFC 3261 16.7 step 5).
    pub fn message(&self, message: &Bytes) -> bool {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let Some((key, answer)) = TransactionKey::answered_by(message) else {
            return true;
        };
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        if noted.given_up.contains(&key) {
            return answer == Answer::Final { invite_2xx: true };
        }
        let ended = match answer {
            Answer::Final { .. } => true,
            Answer::Provisional { invite: true } => false,
            Answer::Provisional { invite: false } => return true,
        };
        if noted.answered.len() < MAX_ENDED_WAITING {
            noted.answered.push((key, ended));
        }
        true
    }

    /// How many complete messages the registrar sent.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.noted.lock().unwrap_or_else(|e| e.into_inner())
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
    /// It is an INVITE (a call may ring for minutes: when a drain runs
    /// out, it is cancelled rather than given up at once).
    invite: bool,
    /// For an INVITE, the CANCEL sipadmit would send: taken once sent,
    /// and dropped when the client's own CANCEL is written.
    cancel: Option<Bytes>,
    /// An INVITE the registrar answered provisionally: it may ring.
    ringing: bool,
    /// An INVITE being cancelled at a drain's end: by when its final
    /// answer must come ([`CANCELLED_ANSWERED_WITHIN`]).
    cancelled_until: Option<Instant>,
}

impl Written {
    fn bytes(&self) -> usize {
        self.inbound.bytes.len() + self.cancel.as_ref().map_or(0, Bytes::len)
    }

    /// Take its CANCEL (sent, or no longer sipadmit's to send), counting
    /// the bytes out of `tally`.
    fn take_cancel(&mut self, tally: &mut Tally) -> Option<Bytes> {
        let cancel = self.cancel.take()?;
        tally.bytes -= cancel.len();
        Some(cancel)
    }
}

/// The running totals of what [`Unanswered`] remembers.
#[derive(Debug, Default)]
struct Tally {
    bytes: usize,
    /// How many are INVITEs being cancelled at a drain's end.
    cancelled: usize,
}

impl Tally {
    fn add(&mut self, w: &Written) {
        self.bytes += w.bytes();
        self.cancelled += usize::from(w.cancelled_until.is_some());
    }

    fn remove(&mut self, w: &Written) {
        self.bytes -= w.bytes();
        self.cancelled -= usize::from(w.cancelled_until.is_some());
    }
}

/// The requests the link wrote on one connection and has not yet seen a
/// final response to.
#[derive(Debug, Default)]
pub struct Unanswered {
    written: HashMap<TransactionKey, Written>,
    tally: Tally,
    next_order: u64,
    /// Requests not remembered for want of room.
    not_kept: u64,
}

impl Unanswered {
    /// `inbound`'s request is written at `now`, opening `opened`; a copy
    /// is kept. `false`: not remembered now (full, or the transaction's
    /// first copy is kept: a retransmission).
    pub fn written(&mut self, opened: Opened, inbound: &Inbound, now: Instant) -> bool {
        if self.written.contains_key(&opened.key) {
            return false;
        }
        let (invite, cancel) = match opened.invite {
            Some(Call::Invite(cancel)) => (true, cancel),
            Some(Call::Cancel(_)) | None => (false, None),
        };
        let written = Written {
            order: self.next_order + 1,
            until: now + opened.remembered_for,
            inbound: Inbound {
                bytes: Bytes::copy_from_slice(&inbound.bytes),
                ..inbound.clone()
            },
            invite,
            cancel,
            ringing: false,
            cancelled_until: None,
        };
        let size = written.bytes();
        let full = |u: &Self| {
            u.written.len() >= MAX_REMEMBERED || u.tally.bytes + size > MAX_REMEMBERED_BYTES
        };
        if full(self) {
            self.forget_expired(now);
            if full(self) {
                self.not_kept += 1;
                return false;
            }
        }
        self.next_order += 1;
        self.tally.add(&written);
        self.written.insert(opened.key, written);
        true
    }

    /// The client's CANCEL of the INVITE written as `invite` was written:
    /// that call is the client's to cancel, and sipadmit sends no CANCEL
    /// of its own (it would match the client's, RFC 3261 9.1).
    pub fn cancelled_by_client(&mut self, invite: TransactionKey) {
        if let Some(w) = self.written.get_mut(&invite) {
            w.take_cancel(&mut self.tally);
        }
    }

    /// Forget the requests `heard` says the registrar answered, and note
    /// the INVITEs it answered provisionally.
    pub fn answered(&mut self, heard: &Heard) {
        let answered = std::mem::take(&mut heard.lock().answered);
        self.take_answers(answered);
    }

    fn take_answers(&mut self, answered: Vec<(TransactionKey, bool)>) {
        for (key, ended) in answered {
            if ended {
                self.forget(key);
            } else if let Some(w) = self.written.get_mut(&key) {
                w.ringing = true;
            }
        }
    }

    /// Forget the request written as `key` (it was not delivered after
    /// all).
    pub fn forget(&mut self, key: TransactionKey) {
        if let Some(old) = self.written.remove(&key) {
            self.tally.remove(&old);
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

    /// How many requests were not remembered for want of room (left to
    /// their clients' timers).
    pub fn not_kept(&self) -> u64 {
        self.not_kept
    }

    /// The requests still unanswered at `now` whose clients still wait,
    /// in the order they were written, taken (the connection closed): none
    /// is remembered after.
    pub fn take_waiting(&mut self, now: Instant) -> Vec<Inbound> {
        self.take(now, |_| true)
    }

    /// What a drain that ran out gives up at `now`: the requests other
    /// than INVITEs still unanswered whose clients still wait, in the
    /// order they were written, taken after the answers `heard` holds, and
    /// marked there as given up (a late answer is not relayed after the
    /// `408`). The INVITEs are cancelled instead ([`Self::cancel_calls`]).
    pub fn give_up_all_but_calls(&mut self, heard: &Heard, now: Instant) -> Vec<Inbound> {
        self.give_up(heard, now, |w| !w.invite)
    }

    /// At a drain that ran out at `now`: every INVITE remembered is being
    /// cancelled, its final answer awaited until
    /// [`CANCELLED_ANSWERED_WITHIN`] from `now`
    /// ([`Self::give_up_overdue_calls`]); the CANCELs to send now, of the
    /// ones ringing, in the order written. One not answered at all yet may
    /// not be cancelled (RFC 3261 9.1): its CANCEL waits for a provisional
    /// answer ([`Self::cancels_due`]).
    pub fn cancel_calls(&mut self, now: Instant) -> Vec<Bytes> {
        let until = now + CANCELLED_ANSWERED_WITHIN;
        for w in self.written.values_mut() {
            if w.invite && w.cancelled_until.is_none() {
                w.cancelled_until = Some(until);
                self.tally.cancelled += 1;
            }
        }
        self.cancels_due()
    }

    /// The CANCELs due now, in the order written: of the INVITEs being
    /// cancelled that are ringing (a provisional answer came), sipadmit's
    /// to send (the client has not cancelled), not sent yet.
    pub fn cancels_due(&mut self) -> Vec<Bytes> {
        if self.tally.cancelled == 0 {
            return Vec::new();
        }
        let tally = &mut self.tally;
        let mut due: Vec<(u64, Bytes)> = (self.written.values_mut())
            .filter(|w| w.cancelled_until.is_some() && w.ringing)
            .filter_map(|w| Some((w.order, w.take_cancel(tally)?)))
            .collect();
        due.sort_unstable_by_key(|(order, _)| *order);
        due.into_iter().map(|(_, cancel)| cancel).collect()
    }

    /// The INVITEs being cancelled whose final answer has not come by
    /// `now`, in the order they were written, taken after the answers
    /// `heard` holds, and marked there as given up.
    pub fn give_up_overdue_calls(&mut self, heard: &Heard, now: Instant) -> Vec<Inbound> {
        if self.tally.cancelled == 0 {
            return Vec::new();
        }
        self.give_up(heard, now, |w| {
            w.cancelled_until.is_some_and(|until| now >= until)
        })
    }

    /// Take what `taken` picks after the answers `heard` holds, and mark
    /// it given up there, under one lock: an answer the reader notes is
    /// either taken here (and the request not given up) or comes after the
    /// mark (and is not relayed).
    fn give_up(
        &mut self,
        heard: &Heard,
        now: Instant,
        taken: impl Fn(&Written) -> bool,
    ) -> Vec<Inbound> {
        let mut noted = heard.lock();
        let answered = std::mem::take(&mut noted.answered);
        self.take_answers(answered);
        let (keys, given_up) = self.take_keyed(now, taken);
        noted.given_up.extend(keys);
        given_up
    }

    fn take(&mut self, now: Instant, taken: impl Fn(&Written) -> bool) -> Vec<Inbound> {
        self.take_keyed(now, taken).1
    }

    /// What `taken` picks at `now`, in the order written, with its keys.
    fn take_keyed(
        &mut self,
        now: Instant,
        taken: impl Fn(&Written) -> bool,
    ) -> (Vec<TransactionKey>, Vec<Inbound>) {
        self.forget_expired(now);
        let keys: Vec<TransactionKey> = (self.written.iter())
            .filter(|(_, w)| taken(w))
            .map(|(key, _)| *key)
            .collect();
        let mut left: Vec<Written> = keys
            .iter()
            .filter_map(|key| self.written.remove(key))
            .collect();
        for w in &left {
            self.tally.remove(w);
        }
        left.sort_unstable_by_key(|w| w.order);
        (keys, left.into_iter().map(|w| w.inbound).collect())
    }

    /// Forget the requests whose clients have stopped waiting by `now`.
    pub fn forget_expired(&mut self, now: Instant) {
        let tally = &mut self.tally;
        self.written.retain(|_, w| {
            let keep = now < w.until;
            if !keep {
                tally.remove(w);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transaction a final response (`200` to `699`) from the
    /// registrar ends. `None`: a provisional response, a request, or no
    /// branch in its top Via.
    fn ended_by(message: &Bytes) -> Option<TransactionKey> {
        match TransactionKey::answered_by(message)? {
            (key, Answer::Final { .. }) => Some(key),
            (_, Answer::Provisional { .. }) => None,
        }
    }
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
        let key = |m: Bytes| TransactionKey::opened_by(&m).map(|o| o.key);
        let register = key(request("REGISTER", "z9hG4bKa"));
        assert!(register.is_some());
        assert_eq!(ended_by(&response(200, "REGISTER", "z9hG4bKa")), register);
        assert_eq!(
            ended_by(&response(100, "REGISTER", "z9hG4bKa")),
            None,
            "a provisional response ends nothing"
        );
        assert_ne!(ended_by(&response(200, "REGISTER", "z9hG4bKb")), register);
        // A CANCEL shares its INVITE's branch but is a transaction of its own.
        let invite = key(request("INVITE", "z9hG4bKi"));
        let cancel = key(request("CANCEL", "z9hG4bKi"));
        assert_ne!(invite, cancel);
        assert_eq!(ended_by(&response(200, "CANCEL", "z9hG4bKi")), cancel);
        assert_eq!(ended_by(&response(487, "INVITE", "z9hG4bKi")), invite);
        assert_eq!(key(request("ACK", "z9hG4bKi")), None);
        // Methods are case-sensitive: `cancel` is no CANCEL, on either side.
        assert_eq!(key(request("cancel", "z9hG4bKi")), invite);
        assert_eq!(ended_by(&response(200, "cancel", "z9hG4bKi")), invite);
        assert_eq!(
            ended_by(&request("OPTIONS", "z9hG4bKo")),
            None,
            "a request from the registrar ends nothing"
        );
        assert!(TransactionKey::opened_by(&Bytes::from_static(b"\x01")).is_none());
    }

    #[test]
    fn a_folded_top_via_and_compact_names_are_read() {
        let folded = Bytes::from_static(
            b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nv: SIP/2.0/TCP 192.0.2.1\r\n ;branch=z9hG4bKf, SIP/2.0/UDP b\r\nContent-Length: 0\r\n\r\n",
        );
        let register = TransactionKey::opened_by(&request("REGISTER", "z9hG4bKf"));
        assert_eq!(ended_by(&folded), register.map(|o| o.key));
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
        assert!(!unanswered.written(opened.clone(), &inbound(one_more.clone()), start));
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
    fn a_drain_that_runs_out_gives_up_all_but_the_calls_and_drops_their_late_answers() {
        let mut unanswered = Unanswered::default();
        let heard = Heard::default();
        let now = Instant::now();
        write(&mut unanswered, request("REGISTER", "z9hG4bKa"), now);
        write(&mut unanswered, request("INVITE", "z9hG4bKb"), now);
        write(&mut unanswered, request("MESSAGE", "z9hG4bKc"), now);
        assert!(heard.message(&response(100, "MESSAGE", "z9hG4bKc")));
        let given_up = unanswered.give_up_all_but_calls(&heard, now);
        let methods: Vec<&[u8]> = given_up.iter().map(|i| &i.bytes[..8]).collect();
        assert_eq!(methods, [&b"REGISTER"[..], &b"MESSAGE "[..]]);
        assert_eq!(unanswered.len(), 1);
        // Their clients get 408: a late answer is not relayed after it.
        assert!(!heard.message(&response(200, "REGISTER", "z9hG4bKa")));
        assert!(!heard.message(&response(100, "MESSAGE", "z9hG4bKc")));
        // An answer the reader noted before the give-up is taken, not given up.
        write(&mut unanswered, request("OPTIONS", "z9hG4bKd"), now);
        assert!(heard.message(&response(200, "OPTIONS", "z9hG4bKd")));
        assert!(unanswered.give_up_all_but_calls(&heard, now).is_empty());
        // The INVITE is still failed if the connection closes.
        let failed = unanswered.take_waiting(now);
        assert!(failed[0].bytes.starts_with(b"INVITE "));
        assert!(unanswered.is_empty());
    }

    #[test]
    fn a_call_is_cancelled_once_ringing_and_answered_or_given_up() {
        let mut unanswered = Unanswered::default();
        let heard = Heard::default();
        let now = Instant::now();
        for branch in ["z9hG4bKr1", "z9hG4bKr2", "z9hG4bKr3", "z9hG4bKr4"] {
            write(&mut unanswered, request("INVITE", branch), now);
        }
        for branch in ["z9hG4bKr1", "z9hG4bKr2", "z9hG4bKr4"] {
            assert!(heard.message(&response(180, "INVITE", branch)));
        }
        // The caller of the fourth cancelled it already: its CANCEL is its own.
        let cancel = request("CANCEL", "z9hG4bKr4");
        let opened = TransactionKey::opened_by(&cancel).unwrap();
        let invite = opened.cancels().expect("a CANCEL names its INVITE");
        assert!(unanswered.written(opened, &inbound(cancel), now));
        unanswered.cancelled_by_client(invite);
        unanswered.answered(&heard);
        let branch_of = |c: &Bytes| {
            let view = SipView::parse(c.clone()).unwrap();
            assert_eq!(view.method(), Some(Method::Cancel));
            assert_eq!(view.values(crate::sip::HeaderName::Via).count(), 1);
            view.top_via().unwrap().branch().unwrap().to_vec()
        };
        let cancels: Vec<Vec<u8>> = unanswered.cancel_calls(now).iter().map(branch_of).collect();
        assert_eq!(cancels, [b"z9hG4bKr1".to_vec(), b"z9hG4bKr2".to_vec()]);
        assert!(unanswered.cancel_calls(now).is_empty(), "once");
        // The third rings only now: its CANCEL is due now (RFC 3261 9.1).
        assert!(unanswered.cancels_due().is_empty());
        assert!(heard.message(&response(183, "INVITE", "z9hG4bKr3")));
        unanswered.answered(&heard);
        let due: Vec<Vec<u8>> = unanswered.cancels_due().iter().map(branch_of).collect();
        assert_eq!(due, [b"z9hG4bKr3".to_vec()]);
        // The first gets the callee's 487 (and its CANCEL the 200): ended.
        assert!(heard.message(&response(200, "CANCEL", "z9hG4bKr1")));
        assert!(heard.message(&response(487, "INVITE", "z9hG4bKr1")));
        let soon = now + CANCELLED_ANSWERED_WITHIN / 2;
        assert!(unanswered.give_up_overdue_calls(&heard, soon).is_empty());
        let later = now + CANCELLED_ANSWERED_WITHIN;
        let overdue = unanswered.give_up_overdue_calls(&heard, later);
        assert_eq!(overdue.len(), 3, "the second, third and fourth");
        // After their 408, a 487 is not relayed; a 2xx to an INVITE is.
        assert!(!heard.message(&response(487, "INVITE", "z9hG4bKr2")));
        assert!(heard.message(&response(200, "INVITE", "z9hG4bKr3")));
        assert_eq!(unanswered.len(), 1, "the client's CANCEL");
        unanswered.forget_expired(now + REMEMBERED_FOR);
        assert!(unanswered.is_empty());
        assert_eq!((unanswered.tally.bytes, unanswered.tally.cancelled), (0, 0));
    }
}
