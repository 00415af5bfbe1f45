//! The xtcp broker's decision (proto::nathole) on what two strangers'
//! frpc send: a NatHoleVisitor and a NatHoleClient as frames of the v1
//! wire, each side's addresses anything at all. Must never panic; a
//! decision's responses carry each other's addresses, opposite roles or
//! none, ports within 1–65535 and a read timeout that is never negative.
#![no_main]

use proto::frame;
use proto::msg::Message;
use proto::nathole::Analyzer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(Some((first, used))) = frame::decode(data) else {
        return;
    };
    let Ok(Some((second, _))) = frame::decode(&data[used..]) else {
        return;
    };
    let (Message::NatHoleVisitor(v), Message::NatHoleClient(c)) = (first, second) else {
        return;
    };
    let mut a = Analyzer::default();
    for round in 0..3u64 {
        let Ok((vr, cr, attempt)) = a.decide("sid", &v, &c, round) else {
            return;
        };
        assert!(attempt.mode <= 4);
        for (r, own_tid) in [(&vr, &v.transaction_id), (&cr, &c.transaction_id)] {
            assert_eq!(&r.transaction_id, own_tid);
            assert!(r.detect_behavior.read_timeout_ms >= 0);
            for p in &r.detect_behavior.candidate_ports {
                assert!((1..=65535).contains(&p.from) && (1..=65535).contains(&p.to));
            }
        }
        assert!(vr.candidate_addrs.len() <= c.mapped_addrs.len());
        assert!(cr.candidate_addrs.len() <= v.mapped_addrs.len());
        if round == 1 {
            a.report_success(&attempt, round);
        }
    }
});
