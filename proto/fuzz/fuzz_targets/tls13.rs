//! TLS 1.3 records (proto::tls13) opened the way the fastpath opens them:
//! delivered in pieces into one buffer, each record's plaintext moved down
//! over its header. The input is a stream of plaintext chunks, sealed with
//! a fixed key, with chunks marked as raw bytes (forged or corrupt records)
//! mixed in. Opening must never panic; an intact stream must give back
//! exactly its plaintext whatever the piece size; a corrupt one may fail,
//! but only after plaintext that agrees.
#![no_main]

use proto::tls13::{Opener, Sealer, Suite};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let suite = match ctl % 3 {
        0 => Suite::Aes128Gcm,
        1 => Suite::Aes256Gcm,
        _ => Suite::Chacha20Poly1305,
    };
    let key = [0x42u8; 32];
    let key = if suite == Suite::Aes128Gcm { &key[..16] } else { &key[..] };
    let iv = [7u8; 12];
    let mut sealer = Sealer::new(suite, key, &iv, 1).unwrap();
    let mut opener = Opener::new(suite, key, &iv, 1).unwrap();
    let step = usize::from(ctl >> 2).max(1) * 61;

    let mut wire = Vec::new();
    let mut expect = Vec::new();
    let mut corrupt = false;
    for chunk in rest.chunks(257) {
        match chunk.split_first() {
            Some((0xff, raw)) => {
                corrupt = true;
                wire.extend_from_slice(raw);
            }
            _ => {
                // A large record now and then (the chunk repeated).
                let plain: Vec<u8> = if chunk.first() == Some(&0xfe) {
                    chunk.iter().copied().cycle().take(20_000).collect()
                } else {
                    chunk.to_vec()
                };
                sealer.seal(&plain, &mut wire).unwrap();
                expect.extend_from_slice(&plain);
            }
        }
    }

    let mut buf = Vec::new();
    let mut plain_end = 0;
    let mut failed = false;
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        match opener.open(&mut buf, plain_end, plain_end) {
            Ok(o) => {
                assert!(plain_end <= o.plain_end && o.plain_end <= o.rest && o.rest <= buf.len());
                plain_end = o.plain_end;
                buf.drain(plain_end..o.rest);
                if o.closed {
                    break;
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let got = &buf[..plain_end];
    if corrupt {
        assert_eq!(got, &expect[..got.len().min(expect.len())]);
    } else {
        assert!(!failed, "an intact stream failed to open");
        assert_eq!(got, &expect[..]);
        assert_eq!(buf.len(), plain_end, "bytes left over after whole records");
    }
});
