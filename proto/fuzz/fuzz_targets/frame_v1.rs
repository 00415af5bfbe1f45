//! Arbitrary bytes into the v1 frame decoder, as a hostile peer would send them.
//!
//! Properties: no panic; every decoded message re-encodes to a body that
//! decodes to the same message (JSON round trip, Go escaping included).
#![no_main]

use proto::{frame, msg::Message};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = frame::decode(rest) {
        assert!(used >= frame::HEADER_LEN && used <= rest.len());
        let mut body = Vec::new();
        msg.to_json(&mut body);
        let again = Message::from_json(msg.type_byte(), &body).expect("own output parses");
        assert_eq!(again, msg);
        rest = &rest[used..];
    }
});
