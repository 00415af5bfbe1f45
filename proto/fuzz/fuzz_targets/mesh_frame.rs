//! Arbitrary bytes as one WebSocket message of seed 003's mesh protocol,
//! as a hostile node, relay or server would send it.
//!
//! Properties: no panic; a message that parses re-encodes to the same
//! bytes; every refusal maps to one of the seed's 2xxx codes; a payload is
//! then decoded as its type says (DATA's layout, the JSON bodies) without
//! panicking. The same bytes as a relay link's message (frames back to
//! back) split into whole frames or refuse with 2002.
#![no_main]

use proto::mesh::{control, data, frame, MsgType};

libfuzzer_sys::fuzz_target!(|msg: &[u8]| {
    let limit = 1500;
    match frame::parse(msg, limit) {
        Ok(f) => {
            let mut again = Vec::new();
            frame::encode(f.kind, f.flags, f.payload, &mut again).expect("a parsed frame encodes");
            assert_eq!(again, msg);
            assert!(f.payload.len() <= limit);
            match f.kind {
                MsgType::Data => {
                    if let Ok(d) = data::Data::parse(f.payload) {
                        assert_eq!(data::peek_dst(f.payload), Some(d.dst));
                    }
                }
                MsgType::AuthRequest => drop(control::decode::<control::AuthRequest>(f.payload)),
                MsgType::AuthResponse => drop(control::decode::<control::AuthResponse>(f.payload)),
                MsgType::Config => {
                    drop(control::decode::<control::Config>(f.payload));
                    drop(control::decode::<control::ServerConfig>(f.payload));
                }
                MsgType::ConfigUpdate => {
                    drop(control::decode::<control::ConfigUpdate>(f.payload));
                    drop(control::decode::<control::ServerNodes>(f.payload));
                }
                MsgType::ServerNodeLoc => drop(control::decode::<control::NodeLocations>(f.payload)),
                MsgType::ServerBlacklist => drop(control::decode::<control::Blacklist>(f.payload)),
                MsgType::Error => drop(control::decode::<control::ErrorBody>(f.payload)),
                _ => {}
            }
        }
        Err(e) => {
            let code = e.code().code();
            assert!((2001..=2003).contains(&code), "{e}: {code}");
            let _ = e.to_string();
        }
    }
    // As one message of a relay-to-relay link: whole frames back to back,
    // each within the message; a cut one is 2002.
    let mut rest = msg;
    let mut taken = 0;
    loop {
        match frame::split(rest) {
            Ok(Some((f, more))) => {
                assert!(f.len() >= frame::HEADER_LEN && f.len() + more.len() == rest.len());
                taken += f.len();
                rest = more;
            }
            Ok(None) => {
                assert_eq!(taken, msg.len());
                break;
            }
            Err(e) => {
                assert_eq!(e.code().code(), 2002, "{e}");
                break;
            }
        }
    }
});
