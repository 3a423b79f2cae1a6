//! The proxy core never panics, and whatever request it relays parses and
//! checks cleanly again.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipadmit::proxy::Leg;
use sipadmit::proxy::{Core, Inbound, DETACHED_ADDRESS, FUZZ_CONFIG};
use sipadmit::sip::SipView;
use sipadmit::transport::{ConnectionId, Transport};

fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| Core::detached(FUZZ_CONFIG).expect("the fuzz config is valid"))
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
        local: DETACHED_ADDRESS,
        connection: ConnectionId::new(u64::from(selector & 1)),
        leg: if selector & 2 == 0 {
            Leg::FromRegistrar
        } else {
            Leg::FromClient
        },
    };
    let outcome = core().handle(&inbound, Instant::now(), &|_, _| true);
    if let Some(out) = outcome.outbound() {
        let view = SipView::parse(out.bytes.clone()).expect("relayed bytes parse");
        if view.is_request() {
            view.check().expect("relayed requests check");
        }
    }
});
