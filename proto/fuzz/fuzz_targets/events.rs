//! Arbitrary bytes as an event record, as a scribbled-on ring would hand
//! them to the slowpath.
//!
//! Properties: no panic; a record that decodes re-encodes to the same bytes.
#![no_main]

use proto::events::EventRecord;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = EventRecord::decode(data) {
        assert_eq!(rec.to_bytes(), data);
    }
});
