//! The relay path without I/O, for instruction counts: a detached core
//! handles N Lync 2013 REGISTERs from a UDP client (each relayed to the
//! registrar) and the registrar's `200 OK` to each (relayed back). Run
//! under `valgrind --tool=callgrind` by `.ci/run`, which divides the
//! instructions by 2N and checks them against
//! `scripts/load/instructions.ceiling`: a regression guard that does not
//! depend on wall time.
//!
//! ```sh
//! cargo build --release --example hot_path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/hot_path 2000
//! ```
//!
//! It also prints the wall time the core took per REGISTER and its answer.
//! With a second argument, `BYTES`, it writes over that many bytes of other
//! memory before each message, as the other processes of a busy machine do
//! between two datagrams: `hot_path 20000 8388608` (more than the L2 cache
//! of the test machines, 2 to 4 MiB) gives what a message costs when the core's
//! code and data have to be fetched again, `hot_path 20000` what it costs
//! warm. A third argument, `STRIDE` (bytes, default 64), writes one word
//! every `STRIDE` bytes instead: `hot_path 20000 33554432 4096` touches one
//! line in each of 8,192 pages, evicting the address translations (TLB)
//! with little of the caches.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Inbound, Outcome, DETACHED_ADDRESS};
use sipadmit::sip::response;
use sipadmit::sip::view::SipView;
use sipadmit::transport::Transport;

const CONFIG: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";
const REGISTER: &str = include_str!("../tests/fixtures/lync2013-register-tls.sip");

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut other_memory = OtherMemory::new(
        std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        std::env::args()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or(64),
    );
    let core = Core::detached(CONFIG).expect("the example's config");
    let now = Instant::now();
    let mut in_core = Duration::ZERO;
    let mut handle = |message: Inbound| {
        other_memory.write_over();
        let started = Instant::now();
        let outcome = core_handles(&core, &message, now);
        in_core += started.elapsed();
        outcome
    };
    let mut relayed = 0usize;
    for i in 0..n {
        let request = REGISTER
            .replace("SIP/2.0/TLS", "SIP/2.0/UDP")
            .replace("z9hG4bK9f2c1a7e", &format!("z9hG4bKhot{i}"))
            .replace("5f0c3e2b9a8d4c7e8f1a2b3c4d5e6f70", &format!("hot-{i}"));
        let outcome = handle(inbound(
            request.into_bytes(),
            "192.168.10.25:52210",
            Leg::FromClient,
        ));
        let Outcome::Relay { send: sent, .. } = outcome else {
            continue;
        };
        let answer = handle(inbound(
            ok(&sent.bytes),
            "127.0.0.1:5070",
            Leg::FromRegistrar,
        ));
        relayed += usize::from(matches!(answer, Outcome::Relay { .. }));
    }
    println!("relayed {relayed} of {n} REGISTERs and their answers");
    println!(
        "core: {:.2} us per REGISTER and its answer, {} bytes of other memory written over (a word every {} bytes) before each message",
        in_core.as_secs_f64() * 1e6 / n.max(1) as f64,
        other_memory.bytes(),
        other_memory.stride_words * 8
    );
    if relayed != n {
        std::process::exit(1);
    }
}

/// The core's work on one message, kept out of line so that callgrind can
/// count it alone (`--toggle-collect=hot_path::core_handles`, e.g. with
/// `--cache-sim=yes` for the lines fetched from beyond each cache level).
#[inline(never)]
fn core_handles(core: &Core, message: &Inbound, now: Instant) -> Outcome {
    core.handle(message, now, &|_, _| true)
}

fn inbound(bytes: Vec<u8>, source: &str, leg: Leg) -> Inbound {
    Inbound {
        bytes: Bytes::from(bytes),
        transport: Transport::Udp,
        source: source.parse().expect("literal"),
        local: DETACHED_ADDRESS,
        connection: None,
        leg,
    }
}

/// The registrar's `200 OK` to `relayed` (received from the core at
/// its detached address), as the project's stateless responses are built.
fn ok(relayed: &Bytes) -> Vec<u8> {
    let view = SipView::parse(relayed.clone()).expect("the relayed REGISTER parses");
    let contact = [(
        "Contact",
        "<sip:192.168.10.25:52210;transport=udp>;expires=300",
    )];
    response::build(&view, 200, "", "registrar", &contact, DETACHED_ADDRESS.0).to_vec()
}

/// Memory the example writes over before each message, standing in for
/// the other processes that run between two datagrams on a busy machine.
struct OtherMemory {
    words: Vec<u64>,
    /// Words from one write to the next: 8 (a cache line) writes all of
    /// it; 512 (a page) one line per page, which evicts the translations
    /// (TLB) of that many pages but few cached lines.
    stride_words: usize,
    round: u64,
}

impl OtherMemory {
    fn new(bytes: usize, stride: usize) -> Self {
        Self {
            words: vec![0; bytes / 8],
            stride_words: (stride / 8).max(1),
            round: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Write one word every `stride_words` (what is written cannot be
    /// optimised away: it is read back by the next round).
    fn write_over(&mut self) {
        self.round += 1;
        for word in self.words.iter_mut().step_by(self.stride_words) {
            *word = word.wrapping_mul(31).wrapping_add(self.round);
        }
        std::hint::black_box(&self.words);
    }
}
