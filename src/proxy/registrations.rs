//! The registration table: which client registered which contact, learned
//! from REGISTER responses that pass through. It answers agent offers when
//! the registrar does not route them along Path. Bounded; expired entries
//! are swept. The clock is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::flow::Flow;

/// One registered contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The flow the REGISTER came in on.
    pub flow: Flow,
    /// When the binding expires.
    pub expires_at: Instant,
}

/// Contact → registration, bounded by `max_entries`.
#[derive(Debug)]
pub struct Registrations {
    entries: Mutex<HashMap<Vec<u8>, Registration>>,
    /// REGISTERs relayed and not yet answered.
    pending: Mutex<HashMap<PendingKey, PendingRegister>>,
    max_entries: usize,
}

/// (Call-ID, CSeq number) of a relayed REGISTER.
type PendingKey = (Vec<u8>, u32);

/// The contact keys a relayed REGISTER named, and when it was relayed.
type PendingRegister = (Vec<Vec<u8>>, Instant);

/// How long a relayed REGISTER waits for its response (64 * T1, RFC 3261 Timer F).
const PENDING_TIMEOUT: Duration = Duration::from_secs(32);

/// The lookup key of a contact URI: `scheme:user@host:port`, lowercased,
/// without parameters, headers or `<>`.
pub fn contact_key(uri: &[u8]) -> Vec<u8> {
    let uri = uri.strip_prefix(b"<").unwrap_or(uri);
    let end = uri
        .iter()
        .position(|&b| matches!(b, b';' | b'?' | b'>'))
        .unwrap_or(uri.len());
    uri[..end].to_ascii_lowercase()
}

impl Registrations {
    /// An empty table holding at most `max_entries` contacts.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    /// Note the contacts of a REGISTER being relayed, so that its 2xx
    /// response binds exactly these contacts (not other devices of the AOR).
    pub fn expect(&self, call_id: &[u8], cseq: u32, contacts: Vec<Vec<u8>>, now: Instant) {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.len() >= self.max_entries {
            pending.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TIMEOUT);
            if pending.len() >= self.max_entries {
                return;
            }
        }
        pending.insert((call_id.to_vec(), cseq), (contacts, now));
    }

    /// Apply a 2xx REGISTER response: every contact the REGISTER named is
    /// bound with the expiry the registrar granted (absent = removed).
    /// Returns how many bindings were stored.
    pub fn complete(
        &self,
        call_id: &[u8],
        cseq: u32,
        granted: &[(Vec<u8>, Duration)],
        flow: &Flow,
        now: Instant,
    ) -> usize {
        let Some((contacts, _)) = self
            .pending
            .lock()
            .expect("pending lock")
            .remove(&(call_id.to_vec(), cseq))
        else {
            return 0;
        };
        let mut stored = 0;
        for key in contacts {
            let expires = granted
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Duration::ZERO, |(_, e)| *e);
            if self.learn(&key, flow, expires, now) && !expires.is_zero() {
                stored += 1;
            }
        }
        stored
    }

    /// Record (expires > 0) or remove (expires = 0) a binding. Returns
    /// `false` when the table is full and the binding was not stored.
    pub fn learn(&self, contact_uri: &[u8], flow: &Flow, expires: Duration, now: Instant) -> bool {
        let key = contact_key(contact_uri);
        let mut entries = self.entries.lock().expect("registration lock");
        if expires.is_zero() {
            entries.remove(&key);
            return true;
        }
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, r| r.expires_at > now);
            if entries.len() >= self.max_entries {
                return false;
            }
        }
        let Some(expires_at) = now.checked_add(expires) else {
            return false;
        };
        entries.insert(
            key,
            Registration {
                flow: flow.clone(),
                expires_at,
            },
        );
        true
    }

    /// The live registration of a contact URI.
    pub fn lookup(&self, contact_uri: &[u8], now: Instant) -> Option<Registration> {
        let entries = self.entries.lock().expect("registration lock");
        entries
            .get(&contact_key(contact_uri))
            .filter(|r| r.expires_at > now)
            .cloned()
    }

    /// Drop expired bindings; returns how many were removed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut entries = self.entries.lock().expect("registration lock");
        let before = entries.len();
        entries.retain(|_, r| r.expires_at > now);
        self.pending
            .lock()
            .expect("pending lock")
            .retain(|_, (_, at)| now.duration_since(*at) < PENDING_TIMEOUT);
        before - entries.len()
    }

    /// Number of bindings held.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("registration lock").len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    fn flow(client: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            peer: "127.0.0.1:5062".parse().unwrap(),
            connection: None,
            client: client.into(),
        }
    }

    #[test]
    fn learn_lookup_expire_remove_and_bound() {
        let t = Registrations::new(2);
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        assert!(t.learn(
            b"<sip:a@127.0.0.1:5062;transport=udp>",
            &flow("lync-2013"),
            hour,
            now
        ));
        let r = t.lookup(b"sip:A@127.0.0.1:5062", now).unwrap();
        assert_eq!(r.flow.client, "lync-2013");
        assert!(
            t.lookup(b"sip:a@127.0.0.1:5062", now + hour).is_none(),
            "expired"
        );
        assert!(t.learn(b"sip:b@h", &flow("x"), Duration::from_secs(1), now));
        assert!(!t.learn(b"sip:c@h", &flow("x"), hour, now), "full");
        assert_eq!(t.sweep(now + Duration::from_secs(2)), 1);
        assert!(t.learn(b"sip:c@h", &flow("x"), hour, now));
        assert!(t.learn(b"sip:a@127.0.0.1:5062", &flow("x"), Duration::ZERO, now));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_2xx_binds_only_the_contacts_of_its_register() {
        let t = Registrations::new(10);
        let now = Instant::now();
        t.expect(
            b"call-1",
            7,
            vec![contact_key(b"<sip:mobile@127.0.0.1:5064>")],
            now,
        );
        let granted = [
            (
                contact_key(b"sip:mobile@127.0.0.1:5064"),
                Duration::from_secs(600),
            ),
            (
                contact_key(b"sip:desktop@127.0.0.1:5062"),
                Duration::from_secs(600),
            ),
        ];
        assert_eq!(
            t.complete(b"call-1", 7, &granted, &flow("lync-mobile"), now),
            1
        );
        assert!(t.lookup(b"sip:desktop@127.0.0.1:5062", now).is_none());
        assert_eq!(
            t.lookup(b"sip:mobile@127.0.0.1:5064", now)
                .unwrap()
                .flow
                .client,
            "lync-mobile"
        );
        assert_eq!(
            t.complete(b"call-1", 7, &granted, &flow("x"), now),
            0,
            "answered once"
        );
    }
}
