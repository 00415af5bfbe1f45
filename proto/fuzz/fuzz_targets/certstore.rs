//! The edge's certificate store file (proto::certstore) and the X.509
//! validity reader. Must never panic; a store that decodes encodes back to
//! the same bytes (the layout has one encoding), and a validity is an
//! ordered pair of times.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = proto::certstore::decode(data) {
        assert_eq!(proto::certstore::encode(&entries), data);
    }
    let _ = proto::certstore::validity(data);
});
