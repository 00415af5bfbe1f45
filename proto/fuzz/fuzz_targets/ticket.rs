//! Arbitrary strings through the ticket verifier: peek, verify against a fixed
//! key, and check; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::ticket;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ticket::peek_kid(token);
    let key = [7u8; 32];
    if let Ok(claims) = ticket::verify(token, &key) {
        let _ = ticket::check(&claims, 1_700_000_000, "node_fuzz");
    }
});
