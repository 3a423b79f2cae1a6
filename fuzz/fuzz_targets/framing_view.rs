//! Stream framing and the message view never panic on any bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sipadmit::sip::framing::{Decoder, SipCodec};
use sipadmit::sip::{HeaderName, SipView};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = SipView::parse(Bytes::copy_from_slice(data)) {
        let _ = view.check();
        let _ = (view.top_via(), view.cseq(), view.from(), view.to());
        let _ = (view.expires(), view.max_forwards(), view.content_length());
        let _ = view.contacts().count() + view.routes().count() + view.proxy_require().count();
        let _ = view.values(HeaderName::Via).count();
    }
    // The stream server's codec, then the end of the stream.
    let mut codec = SipCodec::new(65_535);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
});
