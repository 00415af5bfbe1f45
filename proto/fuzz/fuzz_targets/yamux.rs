//! Arbitrary bytes into a server yamux session, fed in pieces, with a toy
//! application that echoes data, consumes it, and closes on FIN. Nothing may
//! panic, and the session must never hand back more data than it consumed.
//!
//! Input layout: byte 0 picks the piece size (low 6 bits, 1..=64) and
//! whether the app resets streams instead of closing them (bit 7); the rest
//! is the wire.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use proto::yamux::{Config, Event, Session};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control & 0x3f) + 1;
    let reset_on_fin = control & 0x80 != 0;
    let start = Instant::now();
    let config = Config {
        accept_backlog: 4,
        max_streams: 8,
        ..Config::server()
    };
    let mut session = Session::new(config, start);
    let mut input = BytesMut::new();
    for (i, chunk) in wire.chunks(piece).enumerate() {
        input.extend_from_slice(chunk);
        let before = input.len();
        // Each piece is 3 s later, so keepalives and close timers fire too.
        let now = start + Duration::from_secs(3 * i as u64);
        if session.receive(&mut input, now).is_err() {
            break;
        }
        assert!(input.len() <= before);
        while let Some(event) = session.poll_event() {
            match event {
                Event::Data(id, bytes) => {
                    let _ = session.write_data(id, &bytes);
                    session.consumed(id, bytes.len());
                }
                Event::Fin(id) if reset_on_fin => session.reset_stream(id),
                Event::Fin(id) => session.close_stream(id),
                _ => {}
            }
        }
        if session.tick(now).is_err() {
            break;
        }
        let _ = session.next_timeout();
        drop(session.take_outbound());
    }
});
