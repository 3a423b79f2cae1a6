//! The registration table: which client registered which contact, learned
//! from the REGISTER responses that pass through. It answers agent offers
//! when the registrar does not route them along Path. Pure: the clock is
//! passed in.
//!
//! Two tables, both [`ExpiringMap`]s (O(1) insert, expiry and eviction of
//! the oldest entry; bounded in entries and in bytes):
//!
//! - **pending**: a REGISTER relayed upstream and not answered yet, keyed
//!   by a keyed hash of (Call-ID, CSeq number, client flow), holding the
//!   keyed hashes of its contacts (at most `max_contacts_per_register`).
//!   Any final response clears it; so does the transaction timeout (64*T1).
//!   At most a quarter of the byte bound.
//! - **bindings**: contact → client flow, keyed by a keyed hash of the
//!   contact (`scheme:user@host:port`, lowercased), holding the flow
//!   without strings (the client id is an index into a small list of the
//!   ids seen, the listener one into the listeners seen). The rest of the
//!   byte bound.
//!
//! Keys are 64-bit SipHash values under a per-process random key: no
//! contact or Call-ID bytes are kept, a peer cannot make keys collide, and
//! an accidental collision (about n / 2^64 per lookup) is negligible.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::mem::size_of;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::flow::Flow;
use crate::expiring::{
    slot_bytes, Bounds, ExpiringMap, HeapBytes, InsertError, HEAP_BLOCK_OVERHEAD_BYTES,
    MAX_INDEX_BYTES_PER_SLOT,
};
use crate::transport::{FlowId, Transport};
use crate::vocabulary::LocalAddr;

/// How long a relayed REGISTER waits for its final response (64 * T1,
/// RFC 3261 Timer F).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(32);
/// Most distinct client ids the bindings refer to (catalog ids; a catalog
/// has tens). A binding for a client beyond them is not stored.
const MAX_CLIENT_IDS: usize = 4096;
/// Bytes charged per client id held, besides its two copies of the text:
/// its list slot and lookup bucket with their growth slack, and two heap
/// blocks' overhead.
const CLIENT_ID_OVERHEAD_BYTES: usize = 128;
/// Bytes charged once the first client id is held: the list's and the
/// lookup's first allocations.
const CLIENT_IDS_BASE_BYTES: usize = 256;
/// Most distinct listeners the bindings refer to (listeners are
/// configured: a handful). A binding through a listener beyond them is
/// stored without it, and what goes to its client leaves from the first
/// listener of its transport that reaches it.
const MAX_LISTENERS: usize = 64;

/// The bounds of the registration tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Most bindings, and most pending REGISTERs (each), entries
    /// (`limits.max_registrations`).
    pub max_entries: usize,
    /// Most bytes both tables together hold (`limits.registration_table_bytes`):
    /// pending REGISTERs at most a quarter, bindings the rest.
    pub table_bytes: usize,
    /// Most contacts of one REGISTER that are noted, and so learned
    /// (`limits.max_contacts_per_register`).
    pub max_contacts_per_register: usize,
}

/// One registered contact, as [`Registrations::lookup`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The flow the REGISTER came in on.
    pub flow: Flow,
    /// When the binding expires.
    pub expires_at: Instant,
}

/// What [`Registrations::expect`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    /// Contacts noted (learned when the 2xx comes).
    pub noted: usize,
    /// Contacts beyond `max_contacts_per_register`: not noted, never learned.
    pub ignored: usize,
    /// Older pending REGISTERs evicted to make room.
    pub evicted: usize,
}

/// How the registrar answered a relayed REGISTER (a final response).
#[derive(Debug, Clone, Copy)]
pub enum RegisterAnswer<'a> {
    /// Not a 2xx (401/407 challenges, 4xx, 5xx, 6xx), or a 2xx that cannot
    /// be delivered: nothing is bound.
    Refused,
    /// A 2xx: each contact the registrar lists, with the expiry it granted.
    Granted(&'a [(&'a [u8], Duration)]),
}

/// What [`Registrations::complete`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completed {
    /// The REGISTER was pending (and no longer is).
    pub was_pending: bool,
    /// Bindings stored or refreshed.
    pub stored: usize,
    /// Bindings removed (the registrar no longer lists the contact).
    pub removed: usize,
    /// Bindings not stored (no room for its client id).
    pub not_stored: usize,
    /// Older bindings evicted to make room.
    pub evicted: usize,
}

/// A bound flow, without strings: the client is an index into
/// [`ClientIds`].
#[derive(Debug, Clone, Copy)]
struct Binding {
    peer: SocketAddr,
    connection: Option<FlowId>,
    transport: Transport,
    client: u16,
    /// The listener the client reached, an index into [`Tables::listeners`].
    listener: Option<u8>,
}

impl HeapBytes for Binding {
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// The client ids bindings refer to, each held once.
#[derive(Debug, Default)]
struct ClientIds {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
    bytes: usize,
}

impl ClientIds {
    /// The index of `id`, adding it when there is room.
    fn intern(&mut self, id: &str) -> Option<u16> {
        if let Some(&i) = self.index.get(id) {
            return Some(i);
        }
        if self.names.len() >= MAX_CLIENT_IDS {
            return None;
        }
        let i = u16::try_from(self.names.len()).ok()?;
        if self.names.is_empty() {
            self.bytes += CLIENT_IDS_BASE_BYTES;
        }
        self.names.push(id.into());
        self.index.insert(id.into(), i);
        self.bytes += 2 * id.len() + CLIENT_ID_OVERHEAD_BYTES;
        Some(i)
    }

    fn name(&self, i: u16) -> &str {
        &self.names[usize::from(i)]
    }
}

/// Slab positions of the bindings table one step of [`Registrations::sweep`]
/// looks at under the lock (about 0.1 ms).
const SWEEP_CHUNK: usize = 4096;

/// Both tables, under one lock.
#[derive(Debug)]
struct Tables {
    pending: ExpiringMap<Box<[u64]>>,
    bindings: ExpiringMap<Binding>,
    clients: ClientIds,
    /// The listeners bindings refer to (at most [`MAX_LISTENERS`]).
    listeners: Vec<LocalAddr>,
}

/// The registration tables; see the module doc.
#[derive(Debug)]
pub struct Registrations {
    tables: Mutex<Tables>,
    /// The per-process key of every table key.
    keys: RandomState,
    limits: RegistrationLimits,
}

impl Registrations {
    /// Empty tables within `limits`.
    pub fn new(limits: RegistrationLimits) -> Self {
        let pending_bytes = limits.table_bytes / 4;
        Self {
            tables: Mutex::new(Tables {
                pending: ExpiringMap::new(Bounds {
                    max_entries: limits.max_entries,
                    max_bytes: pending_bytes,
                }),
                bindings: ExpiringMap::new(Bounds {
                    max_entries: limits.max_entries,
                    max_bytes: limits.table_bytes - pending_bytes,
                }),
                clients: ClientIds::default(),
                listeners: Vec::new(),
            }),
            keys: RandomState::new(),
            limits,
        }
    }

    /// The bounds these tables keep.
    pub fn limits(&self) -> RegistrationLimits {
        self.limits
    }

    /// Note the contacts of a REGISTER being relayed upstream from `flow`
    /// (its Contact URIs, `*` excluded), so that its 2xx binds exactly
    /// these contacts (not other devices of the address of record). Only
    /// the first `max_contacts_per_register` are noted. A retransmission
    /// replaces the entry.
    pub fn expect<'u>(
        &self,
        call_id: &[u8],
        cseq: u32,
        flow: &Flow,
        contacts: impl IntoIterator<Item = &'u [u8]>,
        now: Instant,
    ) -> Expected {
        let mut noted = Vec::new();
        let mut ignored = 0;
        for uri in contacts {
            if noted.len() < self.limits.max_contacts_per_register {
                noted.push(self.contact_hash(uri));
            } else {
                ignored += 1;
            }
        }
        let mut done = Expected {
            noted: noted.len(),
            ignored,
            evicted: 0,
        };
        if noted.is_empty() {
            return done;
        }
        let key = self.pending_key(call_id, cseq, flow);
        let mut tables = self.lock();
        match tables
            .pending
            .insert(key, noted.into(), now + PENDING_TIMEOUT, now)
        {
            Ok(inserted) => done.evicted = inserted.evicted,
            // A quarter of the byte bound holds far more than one REGISTER
            // (the config's minimum makes sure); counted as not noted.
            Err(InsertError::TooLarge) => {
                done.ignored += done.noted;
                done.noted = 0;
            }
        }
        done
    }

    /// Whether the REGISTER `call_id`/`cseq` relayed from `flow` awaits
    /// its final response: another copy of it now is a retransmission of a
    /// request under way.
    pub fn is_pending(&self, call_id: &[u8], cseq: u32, flow: &Flow, now: Instant) -> bool {
        let key = self.pending_key(call_id, cseq, flow);
        self.lock().pending.get(key, now).is_some()
    }

    /// Apply the final response to a REGISTER relayed from `flow`: the
    /// pending entry goes in any case; on a 2xx every contact the REGISTER
    /// named is bound with the expiry the registrar granted (not listed or
    /// 0 = removed).
    pub fn complete(
        &self,
        call_id: &[u8],
        cseq: u32,
        flow: &Flow,
        answer: RegisterAnswer<'_>,
        now: Instant,
    ) -> Completed {
        let key = self.pending_key(call_id, cseq, flow);
        let mut tables = self.lock();
        let Some(contacts) = tables.pending.remove(key, now) else {
            return Completed::default();
        };
        let mut done = Completed {
            was_pending: true,
            ..Completed::default()
        };
        let RegisterAnswer::Granted(granted) = answer else {
            return done;
        };
        let granted: Vec<(u64, Duration)> = granted
            .iter()
            .map(|(uri, expires)| (self.contact_hash(uri), *expires))
            .collect();
        for contact in contacts.iter().copied() {
            let expires = granted
                .iter()
                .find(|(k, _)| *k == contact)
                .map_or(Duration::ZERO, |(_, e)| *e);
            match tables.bind(contact, flow, expires, now) {
                Bound::Stored { evicted } => {
                    done.stored += 1;
                    done.evicted += evicted;
                }
                Bound::Removed => done.removed += 1,
                Bound::NotStored => done.not_stored += 1,
            }
        }
        done
    }

    /// Record (expires > 0) or remove (expires = 0) a binding outright.
    /// Returns `false` when it could not be stored.
    pub fn learn(&self, contact_uri: &[u8], flow: &Flow, expires: Duration, now: Instant) -> bool {
        let key = self.contact_hash(contact_uri);
        !matches!(self.lock().bind(key, flow, expires, now), Bound::NotStored)
    }

    /// The live registration of a contact URI.
    pub fn lookup(&self, contact_uri: &[u8], now: Instant) -> Option<Registration> {
        let key = self.contact_hash(contact_uri);
        let mut tables = self.lock();
        let (binding, expires_at) = tables.bindings.get(key, now).map(|(b, at)| (*b, at))?;
        Some(Registration {
            flow: Flow {
                transport: binding.transport,
                peer: binding.peer,
                connection: binding.connection,
                local: binding.listener.map(|i| tables.listeners[usize::from(i)]),
                client: tables.clients.name(binding.client).to_owned(),
            },
            expires_at,
        })
    }

    /// Drop every expired entry of both tables (one behind a longer-lived
    /// binding too, so the gauge and a full table count live bindings
    /// only); returns how many went. Walks the tables [`SWEEP_CHUNK`]
    /// positions at a time, letting go of the lock in between (a worker
    /// waits for one chunk at most): for the periodic chore, off the event
    /// loop.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        let mut next = Some(0);
        while let Some(from) = next {
            let (gone, after) = self.lock().bindings.sweep_chunk(now, from, SWEEP_CHUNK);
            removed += gone;
            next = after;
        }
        removed + self.expire_pending(now)
    }

    /// Drop the pending REGISTERs whose answer is overdue (they all wait
    /// equally long: from the front, cheap); returns how many went.
    pub fn expire_pending(&self, now: Instant) -> usize {
        self.lock().pending.expire(now)
    }

    /// Bindings held (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.lock().bindings.len()
    }

    /// Whether no binding is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// REGISTERs relayed and not answered yet.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Bytes both tables account for (their allocations, the values' heap
    /// blocks, the client ids): at most `limits.table_bytes` plus the
    /// client ids (a few KiB).
    pub fn accounted_bytes(&self) -> usize {
        let tables = self.lock();
        tables.pending.bytes() + tables.bindings.bytes() + tables.clients.bytes
    }

    // === keys ===

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key of a contact URI: `scheme:user@host:port`, lowercased,
    /// without `<>`, parameters or headers.
    fn contact_hash(&self, uri: &[u8]) -> u64 {
        let uri = uri.strip_prefix(b"<").unwrap_or(uri);
        let end = memchr::memchr3(b';', b'?', b'>', uri).unwrap_or(uri.len());
        let mut h = self.keys.build_hasher();
        h.write_u8(b'c');
        let mut lower = [0u8; 64];
        for chunk in uri[..end].chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            h.write(lower);
        }
        h.write_usize(end);
        h.finish()
    }

    /// The key of a pending REGISTER: Call-ID, CSeq number and the flow it
    /// came in on (which the response's signed Via token names again).
    fn pending_key(&self, call_id: &[u8], cseq: u32, flow: &Flow) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u8(b'p');
        h.write(call_id);
        h.write_usize(call_id.len());
        h.write_u32(cseq);
        flow.transport.hash(&mut h);
        flow.peer.hash(&mut h);
        flow.connection.hash(&mut h);
        h.finish()
    }
}

/// What binding one contact did.
enum Bound {
    Stored { evicted: usize },
    Removed,
    NotStored,
}

impl Tables {
    /// The index of the listener `local`, adding it when there is room.
    fn listener_index(&mut self, local: LocalAddr) -> Option<u8> {
        let i = match self.listeners.iter().position(|&l| l == local) {
            Some(i) => i,
            None if self.listeners.len() < MAX_LISTENERS => {
                self.listeners.push(local);
                self.listeners.len() - 1
            }
            None => return None,
        };
        u8::try_from(i).ok()
    }

    fn bind(&mut self, key: u64, flow: &Flow, expires: Duration, now: Instant) -> Bound {
        if expires.is_zero() {
            self.bindings.remove(key, now);
            return Bound::Removed;
        }
        let (Some(client), Some(deadline)) =
            (self.clients.intern(&flow.client), now.checked_add(expires))
        else {
            return Bound::NotStored;
        };
        let binding = Binding {
            peer: flow.peer,
            connection: flow.connection,
            transport: flow.transport,
            client,
            listener: flow.local.and_then(|local| self.listener_index(local)),
        };
        match self.bindings.insert(key, binding, deadline, now) {
            Ok(inserted) => Bound::Stored {
                evicted: inserted.evicted,
            },
            Err(InsertError::TooLarge) => Bound::NotStored,
        }
    }
}

/// What one entry costs in a full table, bytes: its slab slot, its index
/// positions at the index's emptiest (4 of 4 bytes) and, for a pending
/// REGISTER, the heap block of its contact keys. (A slab just doubled holds
/// up to as many free slots as entries; the byte bound counts those too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryBytes {
    /// A pending REGISTER with the given number of contacts noted.
    pub pending: usize,
    /// A binding.
    pub binding: usize,
}

impl EntryBytes {
    /// The costs with `contacts` contacts noted per pending REGISTER.
    pub fn with_contacts(contacts: usize) -> Self {
        let block = if contacts == 0 {
            0
        } else {
            (contacts * size_of::<u64>()).next_multiple_of(16) + HEAP_BLOCK_OVERHEAD_BYTES
        };
        Self {
            pending: slot_bytes::<Box<[u64]>>() + MAX_INDEX_BYTES_PER_SLOT + block,
            binding: slot_bytes::<Binding>() + MAX_INDEX_BYTES_PER_SLOT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            peer: "127.0.0.1:5062".parse().unwrap(),
            connection: None,
            local: Some(LocalAddr("127.0.0.1:5060".parse().unwrap())),
            client: client.into(),
        }
    }

    fn limits(max_entries: usize) -> RegistrationLimits {
        RegistrationLimits {
            max_entries,
            table_bytes: 64 << 20,
            max_contacts_per_register: 16,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn learn_lookup_expire_remove_and_evict_the_oldest_when_full() {
        let t = Registrations::new(limits(2));
        let now = Instant::now();
        assert!(t.learn(
            b"<sip:a@127.0.0.1:5062;transport=udp>",
            &flow("lync-2013"),
            HOUR,
            now
        ));
        let r = t.lookup(b"sip:A@127.0.0.1:5062", now).unwrap();
        assert_eq!(r.flow, flow("lync-2013"));
        assert!(r.expires_at >= now + HOUR - Duration::from_millis(1));
        assert!(
            t.lookup(b"sip:a@127.0.0.1:5062", now + HOUR).is_none(),
            "expired (and removed)"
        );
        assert!(t.learn(b"sip:b@h", &flow("x"), Duration::from_secs(1), now));
        assert!(t.learn(b"sip:c@h", &flow("x"), HOUR, now));
        assert!(
            t.learn(b"sip:d@h", &flow("x"), HOUR, now),
            "full: b evicted"
        );
        assert!(t.lookup(b"sip:b@h", now).is_none());
        assert!(t.lookup(b"sip:c@h", now).is_some());
        assert!(t.learn(b"sip:c@h", &flow("x"), Duration::ZERO, now));
        assert!(t.lookup(b"sip:c@h", now).is_none(), "removed");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_2xx_binds_only_the_contacts_of_its_register() {
        let t = Registrations::new(limits(10));
        let now = Instant::now();
        let mobile = flow("lync-mobile");
        let expected = t.expect(
            b"call-1",
            7,
            &mobile,
            [&b"<sip:mobile@127.0.0.1:5064>"[..]],
            now,
        );
        assert_eq!(
            expected,
            Expected {
                noted: 1,
                ignored: 0,
                evicted: 0
            }
        );
        let granted: [(&[u8], Duration); 2] = [
            (b"sip:mobile@127.0.0.1:5064", Duration::from_secs(600)),
            (b"sip:desktop@127.0.0.1:5062", Duration::from_secs(600)),
        ];
        let done = t.complete(
            b"call-1",
            7,
            &mobile,
            RegisterAnswer::Granted(&granted),
            now,
        );
        assert_eq!((done.was_pending, done.stored), (true, 1));
        assert!(t.lookup(b"sip:desktop@127.0.0.1:5062", now).is_none());
        assert_eq!(
            t.lookup(b"sip:mobile@127.0.0.1:5064", now)
                .unwrap()
                .flow
                .client,
            "lync-mobile"
        );
        assert_eq!(
            t.complete(
                b"call-1",
                7,
                &mobile,
                RegisterAnswer::Granted(&granted),
                now
            ),
            Completed::default(),
            "answered once"
        );
    }

    #[test]
    fn a_binding_keeps_its_udp_listener_as_far_as_there_is_room_for_listeners() {
        let t = Registrations::new(limits(200));
        let now = Instant::now();
        let through = |port: u16| Flow {
            local: Some(LocalAddr(SocketAddr::from(([127, 0, 0, 2], port)))),
            ..flow("x")
        };
        for port in 0..=MAX_LISTENERS as u16 {
            let contact = format!("sip:u{port}@h");
            assert!(t.learn(contact.as_bytes(), &through(port), HOUR, now));
        }
        for port in 0..MAX_LISTENERS as u16 {
            let contact = format!("sip:u{port}@h");
            assert_eq!(
                t.lookup(contact.as_bytes(), now).unwrap().flow,
                through(port)
            );
        }
        // One listener too many: bound without it.
        let contact = format!("sip:u{}@h", MAX_LISTENERS);
        let beyond = t.lookup(contact.as_bytes(), now).unwrap().flow;
        assert_eq!(beyond.local, None);
        // A flow without a listener is bound without one.
        let unknown = Flow {
            local: None,
            ..flow("x")
        };
        assert!(t.learn(b"sip:v@h", &unknown, HOUR, now));
        assert_eq!(t.lookup(b"sip:v@h", now).unwrap().flow, unknown);
        // The listener costs a binding no bytes.
        assert!(size_of::<Binding>() <= 56, "{}", size_of::<Binding>());
    }

    #[test]
    fn any_final_response_clears_a_pending_register() {
        let t = Registrations::new(limits(10));
        let now = Instant::now();
        let f = flow("x");
        t.expect(b"call-401", 1, &f, [&b"sip:a@h"[..]], now);
        assert_eq!(t.pending(), 1);
        let done = t.complete(b"call-401", 1, &f, RegisterAnswer::Refused, now);
        assert_eq!((done.was_pending, done.stored), (true, 0));
        assert_eq!(t.pending(), 0);
        assert!(t.lookup(b"sip:a@h", now).is_none());
        // Another flow with the same Call-ID and CSeq is another REGISTER.
        t.expect(b"call-1", 1, &f, [&b"sip:a@h"[..]], now);
        let other = Flow {
            peer: "127.0.0.1:6000".parse().unwrap(),
            ..flow("x")
        };
        assert!(
            !t.complete(b"call-1", 1, &other, RegisterAnswer::Refused, now)
                .was_pending
        );
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn unanswered_registers_time_out() {
        let t = Registrations::new(limits(10));
        let now = Instant::now();
        t.expect(b"c", 1, &flow("x"), [&b"sip:a@h"[..]], now);
        assert_eq!(t.sweep(now + PENDING_TIMEOUT - Duration::from_millis(1)), 0);
        assert_eq!(t.sweep(now + PENDING_TIMEOUT), 1);
        assert_eq!(t.pending(), 0);
        t.expect(b"d", 1, &flow("x"), [&b"sip:a@h"[..]], now);
        let late = t.complete(
            b"d",
            1,
            &flow("x"),
            RegisterAnswer::Granted(&[(b"sip:a@h", HOUR)]),
            now + PENDING_TIMEOUT,
        );
        assert!(!late.was_pending, "a response after 64*T1 finds nothing");
    }

    #[test]
    fn contacts_beyond_the_cap_are_not_noted() {
        let t = Registrations::new(RegistrationLimits {
            max_contacts_per_register: 2,
            ..limits(10)
        });
        let now = Instant::now();
        let uris = ["sip:a@h", "sip:b@h", "sip:c@h"];
        let expected = t.expect(b"c", 1, &flow("x"), uris.iter().map(|u| u.as_bytes()), now);
        assert_eq!((expected.noted, expected.ignored), (2, 1));
        let granted: Vec<(&[u8], Duration)> = uris.iter().map(|u| (u.as_bytes(), HOUR)).collect();
        let done = t.complete(b"c", 1, &flow("x"), RegisterAnswer::Granted(&granted), now);
        assert_eq!(done.stored, 2);
        assert!(t.lookup(b"sip:c@h", now).is_none());
    }

    #[test]
    fn a_full_pending_table_evicts_its_oldest_register() {
        let t = Registrations::new(limits(3));
        let now = Instant::now();
        for i in 0..5u32 {
            let done = t.expect(b"c", i, &flow("x"), [&b"sip:a@h"[..]], now);
            assert_eq!(done.evicted, usize::from(i >= 3));
        }
        assert_eq!(t.pending(), 3);
        let answer = RegisterAnswer::Refused;
        assert!(!t.complete(b"c", 0, &flow("x"), answer, now).was_pending);
        assert!(t.complete(b"c", 4, &flow("x"), answer, now).was_pending);
    }

    #[test]
    fn twenty_thousand_registers_of_600_contacts_stay_under_the_byte_bound() {
        let bound = 4 << 20;
        let t = Registrations::new(RegistrationLimits {
            table_bytes: bound,
            ..limits(100_000)
        });
        let now = Instant::now();
        let contacts: Vec<String> = (0..600)
            .map(|i| format!("<sip:u{i}@10.0.0.1:5060>"))
            .collect();
        let mut evicted = 0;
        for i in 0..20_000u32 {
            let call_id = format!("flood-{i}");
            let done = t.expect(
                call_id.as_bytes(),
                1,
                &flow("x"),
                contacts.iter().map(|c| c.as_bytes()),
                now,
            );
            assert_eq!((done.noted, done.ignored), (16, 584));
            evicted += done.evicted;
            assert!(
                t.accounted_bytes() <= bound,
                "{} at {i}",
                t.accounted_bytes()
            );
        }
        let per_entry = EntryBytes::with_contacts(16).pending;
        assert!(t.pending() * per_entry >= bound / 4 / 2, "{}", t.pending());
        assert_eq!(evicted + t.pending(), 20_000);
    }

    /// The per-entry figures the config reference (README, shipped
    /// config) gives for the worst case (64-bit targets).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn entry_sizes_are_the_documented_ones() {
        assert_eq!(EntryBytes::with_contacts(1).pending, 88);
        assert_eq!(EntryBytes::with_contacts(16).pending, 200);
        assert_eq!(EntryBytes::with_contacts(16).binding, 96);
    }

    #[test]
    fn client_ids_are_held_once() {
        let t = Registrations::new(limits(100));
        let now = Instant::now();
        for i in 0..50 {
            t.learn(
                format!("sip:{i}@h").as_bytes(),
                &flow("lync-2013"),
                HOUR,
                now,
            );
        }
        assert_eq!(t.lock().clients.names.len(), 1);
    }
}
