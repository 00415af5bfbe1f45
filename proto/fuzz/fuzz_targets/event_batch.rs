//! Arbitrary bytes as the body of `POST /api/v1/nodes/events`: batches of
//! event records from a node agent's spool.
//!
//! Properties: no panic; what decodes re-encodes to the same bytes.
#![no_main]

use proto::event_batch::{decode, Batch};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(batches) = decode(data) {
        let mut again = Vec::new();
        for b in &batches {
            Batch::encode(b, &mut again);
        }
        assert_eq!(again, data);
    }
});
