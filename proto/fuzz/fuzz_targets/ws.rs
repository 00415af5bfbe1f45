//! Arbitrary bytes as what a relay reads from a WebSocket client: first as
//! an upgrade request, then as frames (seed 003's `/ws/data`, `/ws/mesh`).
//!
//! Also as the 101 answer a dialing relay reads (`/ws/mesh`).
//!
//! Properties: no panic; an upgrade that parses has a head within the
//! input and the limit; an answer accepted ends its head within the input; a frame head that parses is within the input and
//! its limits, and encoding it again gives the same head bytes when the
//! input used the shortest length form.
#![no_main]

use proto::ws;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    match ws::parse_upgrade(input) {
        Ok(Some(u)) => {
            assert!(u.head_len <= input.len() && u.head_len <= ws::MAX_REQUEST_HEAD);
            assert!(u.path.starts_with('/'), "{:?}", u.path);
            assert!(ws::upgrade_response(&u.key).starts_with(b"HTTP/1.1 101"));
        }
        Ok(None) => assert!(input.len() <= ws::MAX_REQUEST_HEAD),
        Err(e) => assert!([400, 426, 431].contains(&e.status())),
    }
    // As the answer a dialing relay reads from the relay it dialed.
    if let Ok(Some(head)) = ws::check_upgrade_answer(input, "dGhlIHNhbXBsZSBub25jZQ==") {
        assert!(head <= input.len() && head >= 4);
        assert_eq!(&input[head - 4..head], b"\r\n\r\n");
    }
    let mut at = 0;
    while at < input.len() {
        let Ok(Some(h)) = ws::parse_head(&input[at..], true, 1 << 16) else {
            break;
        };
        assert!(h.head_len <= input.len() - at && h.len <= 1 << 16);
        assert!(h.mask.is_some());
        if h.opcode.is_control() {
            assert!(h.fin && h.len <= ws::MAX_CONTROL_PAYLOAD);
        }
        let mut again = Vec::new();
        ws::encode_head(h.opcode, h.fin, h.len, h.mask, &mut again);
        if again.len() == h.head_len {
            assert_eq!(&again[..], &input[at..at + h.head_len]);
        }
        let end = (at + h.head_len).saturating_add(h.len).min(input.len());
        let mut body = input[at + h.head_len..end].to_vec();
        ws::apply_mask(&mut body, h.mask.unwrap_or_default(), 0);
        at = at + h.head_len + h.len;
    }
});
