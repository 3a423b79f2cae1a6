//! The proxy core never panics, and whatever request it relays parses and
//! checks cleanly again.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipadmit::config::{Config, Overrides};
use sipadmit::transport::Transport;
use sipadmit::observe::Metrics;
use sipadmit::proxy::flow::FlowSigner;
use sipadmit::proxy::{Core, Inbound};
use sipadmit::sip::SipView;

fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| {
        let config = Config::from_toml_str(
            "[response_group]\nworkflows = [\"sip:*@example.com\"]\nagents = [\"sip:*@example.com\"]\n",
            std::path::Path::new("fuzz.toml"),
            &Overrides {
                upstream: Some("udp:127.0.0.1:5070".into()),
                ..Overrides::default()
            },
        )
        .expect("fuzz config");
        let me = "127.0.0.1:5060".parse().expect("literal");
        Core::new(
            Arc::new(config),
            FlowSigner::new(b"fuzzing-secret-0123"),
            vec![(Transport::Udp, me), (Transport::Tcp, me)],
            Arc::new(Metrics::default()),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let inbound = Inbound {
        bytes: Bytes::copy_from_slice(message),
        transport: if selector & 1 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        source: if selector & 2 == 0 {
            "127.0.0.1:5070"
        } else {
            "127.0.0.1:40000"
        }
        .parse()
        .expect("literal"),
        connection: u64::from(selector & 1),
        from_upstream: selector & 2 == 0,
    };
    let outcome = core().handle(&inbound, Instant::now(), &|_| true);
    if let Some(out) = outcome.send {
        let view = SipView::parse(out.bytes.clone()).expect("relayed bytes parse");
        if view.is_request() {
            view.check().expect("relayed requests check");
        }
    }
});
