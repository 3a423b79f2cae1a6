//! A guard against regressions that does not depend on wall time: heap
//! allocations per relayed message, counted by a counting global
//! allocator around the core (this test binary holds only this test, so
//! nothing else allocates while it counts). A Lync 2013 REGISTER from a
//! UDP client relayed to the registrar, its `200 OK` relayed back, and a
//! 7.6 KB Lync INVITE relayed. The ceilings are today's counts: a change
//! that adds an allocation to the relay path fails here and must say why
//! (or remove one elsewhere).

use std::alloc::System;
use std::time::Instant;

use bytes::Bytes;
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Destination, Inbound, Outcome, DETACHED_ADDRESS};
use sipadmit::transport::Transport;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONFIG: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";
const REGISTER: &str = include_str!("fixtures/lync2013-register-tls.sip");
const INVITE: &[u8] = include_bytes!("fixtures/lync2013-invite-6k-multipart.sip");

/// Most allocations handling one REGISTER may make (the request, its
/// decision record, the registration it notes).
const REGISTER_CEILING: usize = 16;
/// Most allocations relaying the `200 OK` of a REGISTER may make.
const RESPONSE_CEILING: usize = 7;
/// Most allocations handling one 7.6 KB INVITE may make.
const INVITE_CEILING: usize = 16;

/// Messages measured per kind (the average is what is checked).
const ROUNDS: usize = 200;

fn inbound(bytes: Vec<u8>, source: &str, leg: Leg) -> Inbound {
    Inbound {
        bytes: Bytes::from(bytes),
        transport: Transport::Udp,
        source: source.parse().unwrap(),
        local: DETACHED_ADDRESS,
        connection: None,
        leg,
    }
}

/// The fixture REGISTER over UDP, with its own Call-ID and branch.
fn register(n: usize) -> Vec<u8> {
    REGISTER
        .replace("SIP/2.0/TLS", "SIP/2.0/UDP")
        .replace("z9hG4bK9f2c1a7e", &format!("z9hG4bKalloc{n}"))
        .replace("5f0c3e2b9a8d4c7e8f1a2b3c4d5e6f70", &format!("alloc-{n}"))
        .into_bytes()
}

/// The registrar's `200 OK` to `relayed`: its Via lines, From, To with a
/// tag, Call-ID and CSeq.
fn ok(relayed: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(relayed).unwrap();
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line};tag=registrar\r\n")),
            _ => {}
        }
    }
    out.push_str(
        "Contact: <sip:192.168.10.25:52210;transport=udp>;expires=300\r\nContent-Length: 0\r\n\r\n",
    );
    out.into_bytes()
}

/// Allocations per call of `handle` over `messages`, after one warm-up.
fn allocations_per_message(core: &Core, messages: &[Inbound]) -> usize {
    let now = Instant::now();
    let region = Region::new(GLOBAL);
    let mut relayed = 0;
    for message in messages {
        let outcome = core.handle(message, now, &|_, _| true);
        relayed += usize::from(matches!(outcome, Outcome::Relay { .. }));
        std::hint::black_box(outcome);
    }
    let allocations = region.change().allocations;
    assert_eq!(relayed, messages.len(), "every message is relayed");
    allocations / messages.len()
}

#[test]
fn relaying_a_register_its_answer_and_an_invite_allocates_no_more_than_today() {
    let core = Core::detached(CONFIG).unwrap();
    let now = Instant::now();
    let registers: Vec<Inbound> = (0..ROUNDS + 1)
        .map(|n| inbound(register(n), "192.168.10.25:52210", Leg::FromClient))
        .collect();
    // The answers: each REGISTER relayed once (outside the count) to learn
    // what the registrar answers.
    let answers: Vec<Inbound> = registers
        .iter()
        .map(|r| {
            let outcome = core.handle(r, now, &|_, _| true);
            let send = outcome.outbound().expect("relayed");
            assert_eq!(send.to, Destination::Upstream);
            inbound(ok(&send.bytes), "127.0.0.1:5070", Leg::FromRegistrar)
        })
        .collect();
    let fresh = Core::detached(CONFIG).unwrap();
    let invites: Vec<Inbound> = (0..ROUNDS + 1)
        .map(|n| {
            let text = String::from_utf8_lossy(INVITE)
                .replacen("Call-ID: ", &format!("Call-ID: alloc-invite-{n}-"), 1)
                .replacen(";branch=z9hG4bK", &format!(";branch=z9hG4bKalloc{n}x"), 1);
            inbound(text.into_bytes(), "192.168.10.25:52211", Leg::FromClient)
        })
        .collect();
    // One of each first: tables and memos grown once are not the message's.
    allocations_per_message(&fresh, &registers[..1]);
    let register = allocations_per_message(&fresh, &registers[1..]);
    // The answers go through the core that relayed their REGISTERs (its
    // flow tokens, its pending registrations).
    allocations_per_message(&core, &answers[..1]);
    let response = allocations_per_message(&core, &answers[1..]);
    allocations_per_message(&fresh, &invites[..1]);
    let invite = allocations_per_message(&fresh, &invites[1..]);
    eprintln!("allocations per message: REGISTER {register}, its 200 {response}, INVITE {invite}");
    assert!(register <= REGISTER_CEILING, "REGISTER: {register}");
    assert!(response <= RESPONSE_CEILING, "200 OK: {response}");
    assert!(invite <= INVITE_CEILING, "INVITE: {invite}");
}
