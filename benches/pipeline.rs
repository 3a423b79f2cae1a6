//! Criterion benches of the pure pipeline stages, no sockets.
//!
//! Run with: `cargo bench --bench pipeline`
//! (one group per stage; `view` compares with `rsip::SipMessage::try_from`
//! on the same bytes; `pipeline` is view + classify + role + decide; `core`
//! is the whole proxy core on one message: `Core::handle` of a detached
//! core, from bytes to the relayed bytes and the decision record.)

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipadmit::classify::Catalog;
use sipadmit::config::{Config, Overrides, SHIPPED_CATALOG};
use sipadmit::policy::{decide, SessionFacts, Verdict};
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Inbound, DETACHED_ADDRESS};
use sipadmit::sip::SipView;
use sipadmit::transport::Transport;

const REGISTER: &[u8] = include_bytes!("../tests/fixtures/lync2013-register-tls.sip");
const INVITE: &[u8] = include_bytes!("../tests/fixtures/lync2013-invite-6k-multipart.sip");
const USER_AGENTS: &str = include_str!("../tests/corpus/user-agents.tsv");

const CONFIG: &str = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\nagents = [\"sip:agent-*@contoso.com\"]\n";

fn config() -> Config {
    Config::from_toml_str(
        CONFIG,
        std::path::Path::new("bench.toml"),
        &Overrides::default(),
    )
    .expect("bench config")
}

/// View + classify + role + decide: what the proxy does before it acts.
fn admit(config: &Config, raw: &Bytes) -> bool {
    let view = SipView::parse(raw.clone()).expect("valid");
    view.check().expect("valid");
    let class = config.runtime.catalog.classify(view.user_agent());
    let facts = SessionFacts {
        method: view.method().expect("request"),
        request_uri: view.request_uri().unwrap_or_default(),
        to_uri: view.to().map(|t| t.uri).unwrap_or_default(),
        from_uri: view.from().map(|f| f.uri).unwrap_or_default(),
        user_agent: view.user_agent(),
        source: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let role = config.runtime.sessions.role_of(&facts);
    let decision = decide(&config.runtime.policy, role, class.client.support);
    matches!(decision.verdict, Verdict::Reject(_))
}

fn view_vs_rsip(c: &mut Criterion) {
    for (name, raw) in [("register-856B", REGISTER), ("invite-7.6KB", INVITE)] {
        let bytes = Bytes::from_static(raw);
        let mut g = c.benchmark_group(format!("view/{name}"));
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function("sipadmit-view+check", |b| {
            b.iter(|| {
                let v = SipView::parse(black_box(bytes.clone())).unwrap();
                v.check().unwrap();
                black_box(v.header_fields().len())
            })
        });
        g.bench_function("rsip-full-parse", |b| {
            b.iter(|| black_box(rsip::SipMessage::try_from(black_box(raw)).is_ok()))
        });
        g.finish();
    }
}

fn classify(c: &mut Criterion) {
    let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
    let uas: Vec<&str> = USER_AGENTS
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(uas.len() as u64));
    g.bench_function("corpus", |b| {
        b.iter(|| {
            for ua in &uas {
                black_box(catalog.classify(Some(black_box(ua.as_bytes()))));
            }
        })
    });
    g.bench_function("lync-2013", |b| {
        let ua = b"UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";
        b.iter(|| black_box(catalog.classify(Some(black_box(&ua[..])))))
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let config = config();
    let mut g = c.benchmark_group("pipeline");
    for (name, raw) in [("register-856B", REGISTER), ("invite-7.6KB", INVITE)] {
        let bytes = Bytes::from_static(raw);
        g.bench_function(format!("view+classify+decide/{name}"), |b| {
            b.iter(|| black_box(admit(&config, black_box(&bytes))))
        });
        g.bench_function(format!("rsip-full-parse/{name}"), |b| {
            b.iter(|| black_box(rsip::SipMessage::try_from(black_box(raw)).is_ok()))
        });
    }
    g.bench_function("decide", |b| {
        b.iter(|| {
            black_box(decide(
                &config.runtime.policy,
                black_box(sipadmit::policy::SessionRole::Caller),
                black_box(sipadmit::classify::Support::Unsupported),
            ))
        })
    });
    g.finish();
}

/// The whole core: a client's REGISTER and INVITE relayed upstream.
fn core(c: &mut Criterion) {
    let core = Core::detached(CONFIG).expect("bench config");
    let now = Instant::now();
    let mut g = c.benchmark_group("core");
    for (name, raw) in [("register-856B", REGISTER), ("invite-7.6KB", INVITE)] {
        let inbound = Inbound {
            bytes: Bytes::from_static(raw),
            transport: Transport::Udp,
            source: "127.0.0.1:40000".parse().expect("literal"),
            local: DETACHED_ADDRESS,
            connection: None,
            leg: Leg::FromClient,
        };
        g.bench_function(format!("handle/{name}"), |b| {
            b.iter(|| black_box(core.handle(black_box(&inbound), now, &|_, _| true)))
        });
    }
    g.finish();
}

criterion_group!(benches, view_vs_rsip, classify, pipeline, core);
criterion_main!(benches);
