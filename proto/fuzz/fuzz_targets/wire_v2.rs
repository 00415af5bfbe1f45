//! Arbitrary bytes into every v2 decoder: frames, message payloads, hellos
//! and the AEAD record reader (both algorithms, fed in two pieces).
//!
//! Properties: no panic; decoded messages survive a v2 re-encode.
#![no_main]

use proto::wire_v2::{self, AeadAlgorithm, AeadReader, ClientHello, FrameType, ServerHello};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wire_v2::detect_magic(data);

    let mut rest = data;
    while let Ok(Some((ty, payload, used))) = wire_v2::decode_frame(rest) {
        let payload = &rest[payload];
        match ty {
            FrameType::Message => {
                if let Ok(msg) = wire_v2::decode_message(payload) {
                    let mut out = Vec::new();
                    if wire_v2::encode_message(&msg, &mut out).is_ok() {
                        let (_, range, _) = wire_v2::decode_frame(&out)
                            .expect("own frame decodes")
                            .expect("own frame is whole");
                        let again = wire_v2::decode_message(&out[range]).expect("own message");
                        assert_eq!(again, msg);
                    }
                }
            }
            FrameType::ClientHello => {
                if let Ok(hello) = ClientHello::parse(payload) {
                    let reply = wire_v2::server_hello(&hello, [7; 32]);
                    let _ = ServerHello::parse(&reply.payload).expect("own hello parses");
                }
            }
            FrameType::ServerHello => {
                let _ = ServerHello::parse(payload);
            }
        }
        rest = &rest[used..];
    }

    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305] {
        let Ok(mut reader) = AeadReader::new(alg, [0x42; 32]) else {
            continue;
        };
        let mut plain = Vec::new();
        if let Ok(used) = reader.open(&data[..split], &mut plain) {
            let mut pending = data[used..split].to_vec();
            pending.extend_from_slice(&data[split..]);
            let _ = reader.open(&pending, &mut plain);
        }
    }
});
