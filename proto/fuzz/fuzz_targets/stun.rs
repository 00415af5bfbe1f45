//! STUN datagrams (proto::stun) as the fastpath's STUN server gets them
//! from anyone. Must never panic; an answer must itself be a well-formed
//! STUN message for the same transaction, and never larger than a fixed
//! size plus the request (no amplification for a spoofed source).
#![no_main]

use proto::stun::{answer, parse, Site, MAX_FIXED_ANSWER};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, req)) = data.split_first() else {
        return;
    };
    let site = Site {
        ips: ["203.0.113.1".parse().unwrap(), "2001:db8::2".parse().unwrap()],
        ports: [3478, 3479],
        alternate: ctl & 1 != 0,
    };
    let src = if ctl & 2 != 0 {
        "[2001:db8::7]:40000".parse().unwrap()
    } else {
        "198.51.100.7:40000".parse().unwrap()
    };
    let at = (usize::from(ctl >> 2 & 1), usize::from(ctl >> 3 & 1));
    let mut out = Vec::new();
    match answer(req, src, at, &site, &mut out) {
        Ok(from) => {
            assert!(from.0 < 2 && from.1 < 2);
            assert!(out.len() <= MAX_FIXED_ANSWER + req.len(), "{} for {}", out.len(), req.len());
            let m = parse(&out).expect("an answer parses");
            assert_eq!(m.txid, parse(req).unwrap().txid);
        }
        Err(_) => assert!(out.is_empty()),
    }
    if let Ok(m) = parse(req) {
        for a in m.attrs() {
            let _ = a.value.len();
        }
        let _ = m.integrity_ok(b"key");
    }
});
