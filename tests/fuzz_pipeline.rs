//! Mutation fuzzing of everything that reads bytes: the stream framer, the
//! message view (parse, check, every accessor) and the proxy core. Inputs
//! are the RFC 4475 / RFC 5118 corpora and the Lync fixtures, mutated by a
//! seeded generator, so a failure reproduces. Nothing may panic, and
//! whatever the core relays (and the CANCEL of a relayed INVITE) must
//! parse and check cleanly again.

use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Inbound, DETACHED_ADDRESS, FUZZ_CONFIG};
use sipadmit::sip::framing::{Decoder, SipCodec};
use sipadmit::sip::{HeaderName, SipView};
use sipadmit::transport::{ConnectionId, Transport};

/// Iterations per run; raise with SIPADMIT_FUZZ_ITERATIONS for a long soak.
fn iterations() -> usize {
    std::env::var("SIPADMIT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        root.join("tests/corpus/rfc4475"),
        root.join("tests/corpus/rfc5118"),
        root.join("tests/fixtures"),
    ] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "dat" || e == "sip") {
                out.push(std::fs::read(path).unwrap());
            }
        }
    }
    assert!(out.len() > 60);
    out
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"\"",
    b"<",
    b">",
    b"\\",
    b"\0",
    b"Content-Length: 99999\r\n",
    b"l: -1\r\n",
    b"v: SIP/2.0/UDP [::1]:0;rport\r\n",
    b";branch=z9hG4bK",
    b"SIP/2.0 ",
    b"\r\n ",
    b"Route: <sip:00@127.0.0.1;lr>\r\n",
    b"Max-Forwards: 0\r\n",
    b"CSeq: 4294967296 INVITE\r\n",
    b"\xff\xfe",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(m.len() + 1);
        match rng.below(6) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 => m.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                m.splice(at..at, t.iter().copied());
            }
            3 if at < m.len() => {
                let end = (at + rng.below(16)).min(m.len());
                m.drain(at..end);
            }
            4 if at < m.len() => {
                let end = (at + rng.below(64)).min(m.len());
                let copy = m[at..end].to_vec();
                let to = rng.below(m.len() + 1);
                m.splice(to..to, copy);
            }
            _ => {
                let b = (rng.next() & 0xff) as u8;
                m.insert(at.min(m.len()), b);
            }
        }
    }
    m
}

fn exercise_view(bytes: &[u8]) {
    let Ok(view) = SipView::parse(Bytes::copy_from_slice(bytes)) else {
        return;
    };
    let _ = view.check();
    let _ = (
        view.method(),
        view.request_uri(),
        view.status(),
        view.call_id(),
    );
    let _ = (view.top_via(), view.cseq(), view.from(), view.to());
    let _ = (view.expires(), view.max_forwards(), view.content_length());
    let _ = view.contacts().count() + view.routes().count() + view.proxy_require().count();
    let _ = view.values(HeaderName::Via).count();
    let _ = view.header_named("x-unknown");
}

#[test]
fn framer_and_view_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_0001);
    for i in 0..iterations() {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        exercise_view(&input);
        // The same bytes as a stream, in random chunks, twice in a row.
        let mut codec = SipCodec::new(8192);
        let mut buf = BytesMut::new();
        let stream = [input.as_slice(), input.as_slice()].concat();
        let mut pos = 0;
        'stream: while pos < stream.len() {
            let n = 1 + rng.below(700);
            buf.extend_from_slice(&stream[pos..(pos + n).min(stream.len())]);
            pos += n;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'stream,
                }
            }
        }
        while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    }
}

/// STUN on the UDP ports: mutated Binding requests (with optional and
/// required attributes) never panic, and what is answered is a Binding
/// success response of the request's transaction, as long as it says.
#[test]
fn stun_binding_requests_never_panic_and_answers_are_well_formed() {
    use sipadmit::transport::stun::binding_response;
    let seeds: [&[u8]; 2] = [
        &[
            0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ],
        &[
            0, 1, 0, 16, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x80, 0x22,
            0, 2, b'p', b'j', 0, 0, 0x80, 0x28, 0, 4, 1, 2, 3, 4,
        ],
    ];
    let sources = [
        "192.0.2.1:5060",
        "[2001:db8::1]:5060",
        "[::ffff:192.0.2.1]:1",
    ];
    let mut rng = Rng(0x5eed_0003);
    for i in 0..iterations() {
        let input = mutate(&mut rng, seeds[i % seeds.len()]);
        let source = sources[i % sources.len()].parse().unwrap();
        let Ok(answer) = binding_response(&input, source) else {
            continue;
        };
        // A success, or a 420 exactly when attributes were not understood.
        let kind: &[u8] = if answer.unknown.is_empty() {
            &[0x01, 0x01]
        } else {
            &[0x01, 0x11]
        };
        let answer = answer.bytes;
        assert_eq!(&answer[..2], kind, "{input:?}");
        assert_eq!(
            usize::from(u16::from_be_bytes([answer[2], answer[3]])),
            answer.len() - 20
        );
        assert_eq!(&answer[4..20], &input[4..20], "cookie and transaction");
    }
}

#[test]
fn proxy_core_never_panics_and_relays_only_valid_messages() {
    let core = Core::detached(FUZZ_CONFIG).unwrap();
    let seeds = seeds();
    let mut rng = Rng(0x5eed_0002);
    let now = Instant::now();
    let mut cancels = 0;
    for i in 0..iterations() {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        let inbound = Inbound {
            bytes: Bytes::from(input),
            transport: if i % 3 == 0 {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            source: if i % 2 == 0 {
                "127.0.0.1:5070"
            } else {
                "127.0.0.1:40000"
            }
            .parse()
            .unwrap(),
            local: DETACHED_ADDRESS,
            connection: ConnectionId::new((i % 3 == 0) as u64),
            leg: if i % 2 == 0 {
                Leg::FromRegistrar
            } else {
                Leg::FromClient
            },
        };
        let outcome = core.handle(&inbound, now, &|_, _| true);
        if let Some(out) = outcome.outbound() {
            let view = SipView::parse(out.bytes.clone()).unwrap_or_else(|e| {
                panic!(
                    "relayed unparsable ({e}): {:?}",
                    String::from_utf8_lossy(&out.bytes)
                )
            });
            if view.is_request() || view.status().is_some_and(|s| s >= 100) {
                // Responses the proxy builds itself copy what the request
                // had, so only relayed requests must check cleanly.
                if view.is_request() {
                    view.check().unwrap_or_else(|e| {
                        panic!(
                            "relayed a request failing check ({e}): {:?}",
                            String::from_utf8_lossy(&out.bytes)
                        )
                    });
                    // The CANCEL a drain would send for a relayed INVITE
                    // must be as valid.
                    if let Some(cancel) = sipadmit::sip::of_invite::cancel(&view) {
                        cancels += 1;
                        let checked = SipView::parse(cancel.clone()).and_then(|c| c.check());
                        assert!(
                            checked.is_ok(),
                            "a CANCEL failing check ({checked:?}): {:?}",
                            String::from_utf8_lossy(&cancel)
                        );
                    }
                }
            }
        }
    }
    assert!(cancels > 0, "no relayed INVITE had its CANCEL built");
}
