//! Criterion benches of the registration tables: the cost of one REGISTER
//! with the tables empty and with them full (issue 8 item 1: a full table
//! used to make every REGISTER scan it, 40 µs → 630 µs per REGISTER).
//!
//! Run with: `cargo bench --bench tables`
//!
//! - `register/*`: [`Registrations`] alone, with the shipped limits
//!   (100,000 entries per table, 64 MiB). `expect` notes an unanswered
//!   REGISTER (when full, the oldest pending one is evicted); `expect+401`
//!   notes one and settles it with a 401, as every digest registrar answers
//!   first; `learn` binds a new contact (when full, the oldest binding is
//!   evicted).
//! - `core/*`: the whole proxy core, `Core::handle` of a client's REGISTER
//!   (every one a new transaction: its own Call-ID, branch and contact),
//!   and with `+401` the registrar's 401 to it handled too.
//!
//! "empty": a fresh table, replaced every 1,000 REGISTERs (so at most 1 %
//! full); "full": 100,000 unanswered REGISTERs pending and 100,000
//! bindings before the first measurement, and kept full. Every message is
//! built before its timed loop; only the handling is measured.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipadmit::proxy::flow::Flow;
use sipadmit::proxy::registrations::{RegisterAnswer, RegistrationLimits, Registrations};
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Inbound, DETACHED_ADDRESS};
use sipadmit::transport::Transport;

const REGISTER: &str = include_str!("../tests/fixtures/lync2013-register-tls.sip");
const FIXTURE_CALL_ID: &str = "5f0c3e2b9a8d4c7e8f1a2b3c4d5e6f70";
const FIXTURE_BRANCH: &str = "z9hG4bK9f2c1a7e";
const FIXTURE_CONTACT: &str = "sip:192.168.10.25:52210";

/// The shipped `[limits]` defaults.
const LIMITS: RegistrationLimits = RegistrationLimits {
    max_entries: 100_000,
    table_bytes: 64 << 20,
    max_contacts_per_register: 16,
};
/// Entries put in each table before a "full" measurement.
const FILL: u64 = 100_000;
/// REGISTERs handled by one "empty" table before it is replaced.
const EMPTY_CHUNK: u64 = 1_000;

const CONFIG: &str = "[proxy]\nflow_secret = \"tables-bench-secret\"\n[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    Empty,
    Full,
}

impl Fill {
    fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Full => "full",
        }
    }
}

fn flow() -> Flow {
    Flow {
        transport: Transport::Udp,
        peer: "127.0.0.1:40000".parse().expect("literal"),
        connection: None,
        local: Some(DETACHED_ADDRESS),
        client: "lync-2013".into(),
    }
}

// === the tables alone ===

/// Tables with `fill`; unanswered REGISTERs and bindings numbered from
/// `u64::MAX / 2` so the measured ones (from 0) are all new.
fn tables(fill: Fill, now: Instant) -> Registrations {
    let table = Registrations::new(LIMITS);
    if fill == Fill::Full {
        let flow = flow();
        for i in 0..FILL {
            let n = u64::MAX / 2 + i;
            let call_id = n.to_string();
            let contact = format!("sip:fill-{n}@10.0.0.1");
            table.expect(call_id.as_bytes(), 1, &flow, [contact.as_bytes()], now);
            table.learn(contact.as_bytes(), &flow, Duration::from_secs(3600), now);
        }
        assert_eq!((table.pending(), table.len()), (100_000, 100_000));
    }
    table
}

/// The unique Call-IDs and contacts of `count` REGISTERs from `first`.
fn names(first: u64, count: u64) -> Vec<(String, String)> {
    (first..first + count)
        .map(|n| (format!("{n:016x}@bench"), format!("sip:u{n}@10.0.0.2:5060")))
        .collect()
}

fn registrations(c: &mut Criterion) {
    let now = Instant::now();
    let flow = flow();
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));
    for fill in [Fill::Empty, Fill::Full] {
        for op in ["expect", "expect+401", "learn"] {
            let mut table = tables(fill, now);
            let mut next = 0u64;
            g.bench_function(format!("{op}/{}", fill.name()), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let chunk = left.min(EMPTY_CHUNK);
                        left -= chunk;
                        if fill == Fill::Empty {
                            table = tables(fill, now);
                        }
                        let batch = names(next, chunk);
                        next += chunk;
                        let start = Instant::now();
                        for (call_id, contact) in &batch {
                            let (call_id, contact) = (call_id.as_bytes(), contact.as_bytes());
                            match op {
                                "expect" => {
                                    black_box(table.expect(call_id, 1, &flow, [contact], now));
                                }
                                "expect+401" => {
                                    table.expect(call_id, 1, &flow, [contact], now);
                                    black_box(table.complete(
                                        call_id,
                                        1,
                                        &flow,
                                        RegisterAnswer::Refused,
                                        now,
                                    ));
                                }
                                _ => {
                                    black_box(table.learn(
                                        contact,
                                        &flow,
                                        Duration::from_secs(3600),
                                        now,
                                    ));
                                }
                            }
                        }
                        spent += start.elapsed();
                    }
                    spent
                })
            });
            if fill == Fill::Full {
                // Still full: each new entry evicted the oldest.
                assert!(table.pending() >= 99_999 && table.len() == 100_000);
            }
        }
    }
    g.finish();
}

// === the whole core ===

/// REGISTER number `n`: the Lync fixture with its own Call-ID, branch,
/// contact and source port.
fn register(n: u64) -> Inbound {
    let port = 20_000 + (n % 40_000) as u16;
    let text = REGISTER
        .replace(FIXTURE_CALL_ID, &format!("{n:032x}"))
        .replace(FIXTURE_BRANCH, &format!("z9hG4bK{n:016x}"))
        .replace(FIXTURE_CONTACT, &format!("sip:u{n}@192.168.10.25:{port}"));
    Inbound {
        bytes: Bytes::from(text),
        transport: Transport::Udp,
        source: SocketAddr::from(([127, 0, 0, 1], port)).into(),
        local: DETACHED_ADDRESS,
        connection: None,
        leg: Leg::FromClient,
    }
}

/// The registrar's 401 to `relayed` (the REGISTER as the proxy relayed it).
fn challenge(relayed: &[u8]) -> Inbound {
    let relayed = String::from_utf8_lossy(relayed);
    let mut answer = String::from("SIP/2.0 401 Unauthorized\r\n");
    for line in relayed.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
            answer.push_str(line);
            answer.push_str("\r\n");
        } else if name == "To" {
            answer.push_str(line);
            answer.push_str(";tag=registrar\r\n");
        }
    }
    answer.push_str("WWW-Authenticate: NTLM realm=\"SIP Communications Service\", version=4\r\n");
    answer.push_str("Content-Length: 0\r\n\r\n");
    Inbound {
        bytes: Bytes::from(answer),
        transport: Transport::Udp,
        source: "127.0.0.1:5060".parse().expect("literal"),
        local: DETACHED_ADDRESS,
        connection: None,
        leg: Leg::FromRegistrar,
    }
}

/// A detached core with `fill`: 100,000 unanswered REGISTERs (numbered
/// from `u64::MAX / 2`) and 100,000 bindings.
fn core_with(fill: Fill, now: Instant) -> Core {
    let core = Core::detached(CONFIG).expect("bench config");
    if fill == Fill::Full {
        for n in u64::MAX / 2..u64::MAX / 2 + FILL {
            core.handle(&register(n), now, &|_, _| true);
            let contact = format!("sip:fill-{n}@10.0.0.1");
            core.registrations()
                .learn(contact.as_bytes(), &flow(), Duration::from_secs(3600), now);
        }
        let table = core.registrations();
        assert_eq!((table.pending(), table.len()), (100_000, 100_000));
    }
    core
}

fn core(c: &mut Criterion) {
    let now = Instant::now();
    // Relays REGISTERs exactly as the measured core does (same secret, same
    // boot id, and the relayed bytes do not depend on the tables), so the
    // 401s can be built before the timed loop.
    let twin = Core::detached(CONFIG).expect("bench config");
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));
    for fill in [Fill::Empty, Fill::Full] {
        for answered in [false, true] {
            let name = format!(
                "handle-register{}/{}",
                if answered { "+401" } else { "" },
                fill.name()
            );
            let mut core = core_with(fill, now);
            let mut next = 0u64;
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let chunk = left.min(EMPTY_CHUNK);
                        left -= chunk;
                        if fill == Fill::Empty {
                            core = core_with(fill, now);
                        }
                        let batch: Vec<(Inbound, Option<Inbound>)> = (next..next + chunk)
                            .map(|n| {
                                let register = register(n);
                                let answer = answered.then(|| {
                                    let out = twin.handle(&register, now, &|_, _| true);
                                    challenge(&out.outbound().expect("relayed").bytes)
                                });
                                (register, answer)
                            })
                            .collect();
                        next += chunk;
                        let pending = core.registrations().pending();
                        let start = Instant::now();
                        for (register, answer) in &batch {
                            black_box(core.handle(register, now, &|_, _| true));
                            if let Some(answer) = answer {
                                black_box(core.handle(answer, now, &|_, _| true));
                            }
                        }
                        spent += start.elapsed();
                        if answered {
                            // Every 401 found and cleared its REGISTER.
                            assert!(core.registrations().pending() <= pending.max(1));
                        }
                    }
                    spent
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, registrations, core);
criterion_main!(benches);
