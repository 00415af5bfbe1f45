//! Arbitrary bytes as the payload of a mesh DATA frame (seed 003 §8.3), as
//! a relay reads it to route and a node reads it to decrypt.
//!
//! Properties: no panic; what parses has the layout's lengths and the
//! relay's peek agrees with the parser; what does not is too short.
#![no_main]

use proto::mesh::data;

libfuzzer_sys::fuzz_target!(|payload: &[u8]| {
    match data::Data::parse(payload) {
        Ok(d) => {
            assert_eq!(data::peek_dst(payload), Some(d.dst));
            assert_eq!(d.sealed.len() + data::HEADER_LEN, payload.len());
            assert_eq!(d.plaintext_len() + data::TAG_LEN, d.sealed.len());
            assert_eq!(data::nonce(d.nonce[..4].try_into().unwrap(), d.counter()), d.nonce);
            let mut again = Vec::new();
            data::put_header(&mut again, d.src, d.dst, &d.nonce);
            again.extend_from_slice(d.sealed);
            assert_eq!(again, payload);
        }
        Err(e) => {
            assert!(payload.len() < data::MIN_LEN);
            assert_eq!(data::peek_dst(payload), None);
            assert_eq!(e.code().code(), 2002);
        }
    }
});
