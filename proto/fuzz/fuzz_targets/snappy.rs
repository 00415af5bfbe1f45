//! Arbitrary bytes into the snappy framing decoder, both whole and in
//! pieces the way a driver feeds it: it must never panic, and splitting the
//! input must not change what it decodes.
#![no_main]

use proto::snappy::SnappyDecoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks a delivery size so the corpus explores splits.
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);

    let mut whole_out = Vec::new();
    let whole = SnappyDecoder::new().decode(wire, &mut whole_out);

    let mut dec = SnappyDecoder::new();
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let mut failed = false;
    for piece in wire.chunks(step) {
        pending.extend_from_slice(piece);
        match dec.decode(&pending, &mut out) {
            Ok(used) => {
                assert!(used <= pending.len());
                pending.drain(..used);
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }

    match whole {
        Ok(used) => {
            assert!(!failed, "split delivery failed where whole input decoded");
            assert_eq!(wire.len() - used, pending.len());
            assert_eq!(out, whole_out);
        }
        Err(_) => {
            // The error may be seen early or late, but data before it agrees.
            let n = out.len().min(whole_out.len());
            assert_eq!(out[..n], whole_out[..n]);
        }
    }
});
