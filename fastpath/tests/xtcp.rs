//! The xtcp broker through the real fastpath with the in-repo frpc, at the
//! message level: pre-checks and refusals with frps's words, the sid
//! handed to the owner on a work connection, both sides' NatHoleResp with
//! each other's addresses and opposite roles (the sender's a second
//! later), and a NatHoleClient from anyone but the owner ignored.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::client::{Client, ProxySpec};
use common::Fastpath;
use proto::msg::{Message, NatHoleClient, NatHoleResp, NatHoleVisitor};

const SK: &str = "p2p-secret";

fn login(fp: &Fastpath, user: &str) -> Client {
    let mut o = fp.opts();
    o.user = user.into();
    Client::login(o).unwrap_or_else(|e| panic!("login {user}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn addrs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The NatHoleResp for transaction `tid`, within `limit`.
fn resp(c: &Client, tid: &str, limit: Duration) -> Option<NatHoleResp> {
    c.next_message(
        limit,
        |m| matches!(m, Message::NatHoleResp(r) if r.transaction_id == tid),
    )
    .map(|m| match m {
        Message::NatHoleResp(r) => r,
        _ => unreachable!(),
    })
}

fn ask(c: &Client, tid: &str, proxy: &str, pre_check: bool, sk: &str, mapped: &[&str]) {
    let ts = now();
    c.send(&Message::NatHoleVisitor(NatHoleVisitor {
        transaction_id: tid.into(),
        proxy_name: proxy.into(),
        pre_check,
        protocol: "quic".into(),
        sign_key: proto::auth::privilege_key(sk, ts),
        timestamp: ts,
        mapped_addrs: addrs(mapped),
        assisted_addrs: addrs(&["192.168.7.2:41000"]),
    }))
    .unwrap();
}

fn sid(owner: &Client) -> String {
    match owner.next_message(Duration::from_secs(5), |m| {
        matches!(m, Message::NatHoleSid(_))
    }) {
        Some(Message::NatHoleSid(s)) => s.sid,
        _ => panic!("the owner got no NatHoleSid on a work connection"),
    }
}

#[test]
fn the_broker_introduces_the_visitor_and_the_owner() {
    let fp = Fastpath::start("", 2);
    let owner = login(&fp, "alice");
    let addr = owner
        .register_proxy(
            ProxySpec::plain("p2p", 0, "127.0.0.1:9".parse().unwrap()),
            |np| {
                np.proxy_type = "xtcp".into();
                np.sk = SK.into();
                np.allow_users = vec!["bob".into()];
            },
        )
        .expect("xtcp proxy");
    assert_eq!(addr, "", "an xtcp proxy has no address");
    let bob = login(&fp, "bob");
    let carol = login(&fp, "carol");
    let wait = Duration::from_secs(5);

    // Pre-checks and refusals.
    ask(&bob, "pc", "alice.p2p", true, "", &[]);
    assert_eq!(resp(&bob, "pc", wait).expect("pre-check answer").error, "");
    ask(&bob, "none", "alice.nope", true, "", &[]);
    assert_eq!(
        resp(&bob, "none", wait).unwrap().error,
        "xtcp server for [alice.nope] doesn't exist"
    );
    ask(&carol, "carol", "alice.p2p", true, "", &[]);
    assert_eq!(
        resp(&carol, "carol", wait).unwrap().error,
        "xtcp visitor user [carol] not allowed for [alice.p2p]"
    );
    ask(
        &bob,
        "badsig",
        "alice.p2p",
        false,
        "wrong",
        &["198.51.100.1:4000", "198.51.100.1:4000"],
    );
    assert_eq!(
        resp(&bob, "badsig", wait).unwrap().error,
        "xtcp connection of [alice.p2p] auth failed"
    );
    // An xtcp proxy takes no stcp-style visitor connection.
    match bob.visit("alice.p2p", SK, None, false, false) {
        Err(bench::client::ClientError::Refused(r)) => {
            assert_eq!(r, "custom listener for [alice.p2p] doesn't exist")
        }
        other => panic!("unexpected {:?}", other.err()),
    }

    // An attempt: the owner gets the sid on a work connection.
    let visitor_mapped = ["198.51.100.1:4000", "198.51.100.1:4000"];
    ask(&bob, "t1", "alice.p2p", false, SK, &visitor_mapped);
    let sid1 = sid(&owner);
    // Someone else's NatHoleClient for it is ignored...
    let client = |tid: &str, sid: &str| {
        Message::NatHoleClient(NatHoleClient {
            transaction_id: tid.into(),
            proxy_name: "alice.p2p".into(),
            sid: sid.into(),
            mapped_addrs: addrs(&["203.0.113.9:6000", "203.0.113.9:6000"]),
            assisted_addrs: addrs(&["10.0.0.2:6000"]),
        })
    };
    bob.send(&client("stolen", &sid1)).unwrap();
    assert!(resp(&bob, "t1", Duration::from_millis(1500)).is_none());
    // ... the owner's is answered, both sides.
    let sent = Instant::now();
    owner.send(&client("tc", &sid1)).unwrap();
    let v = resp(&bob, "t1", wait).expect("the visitor's answer");
    let v_at = sent.elapsed();
    let c = resp(&owner, "tc", wait).expect("the owner's answer");
    let c_at = sent.elapsed();
    for r in [&v, &c] {
        assert_eq!(r.error, "", "{r:?}");
        assert_eq!(r.sid, sid1);
        assert_eq!(r.protocol, "quic");
    }
    assert_eq!(v.candidate_addrs, addrs(&["203.0.113.9:6000"]));
    assert_eq!(v.assisted_addrs, addrs(&["10.0.0.2:6000"]));
    assert_eq!(c.candidate_addrs, addrs(&["198.51.100.1:4000"]));
    assert_eq!(c.assisted_addrs, addrs(&["192.168.7.2:41000"]));
    let roles = (
        v.detect_behavior.role.as_str(),
        c.detect_behavior.role.as_str(),
    );
    assert_eq!(
        roles,
        ("receiver", "sender"),
        "two easy NATs: the owner sends first"
    );
    // The sender hears a second after the receiver.
    assert!(
        c_at >= Duration::from_millis(900) && v_at < c_at,
        "{v_at:?} {c_at:?}"
    );

    // An unknown sid is ignored, and a sid is used once.
    owner.send(&client("again", &sid1)).unwrap();
    assert!(resp(&owner, "again", Duration::from_millis(1500)).is_none());

    // A second attempt tries the next behaviour (no success reported).
    ask(&bob, "t2", "alice.p2p", false, SK, &visitor_mapped);
    let sid2 = sid(&owner);
    assert_ne!(sid1, sid2);
    owner.send(&client("tc2", &sid2)).unwrap();
    let v2 = resp(&bob, "t2", wait).expect("second answer");
    assert_eq!(v2.detect_behavior.role, "sender");

    // Too few mapped addresses: both sides hear why.
    ask(&bob, "t3", "alice.p2p", false, SK, &["198.51.100.1:4000"]);
    let sid3 = sid(&owner);
    owner.send(&client("tc3", &sid3)).unwrap();
    assert_eq!(
        resp(&bob, "t3", wait).unwrap().error,
        "classify visitor nat feature error: not enough addresses"
    );
    assert_eq!(
        resp(&owner, "tc3", wait).unwrap().error,
        "classify visitor nat feature error: not enough addresses"
    );
}
