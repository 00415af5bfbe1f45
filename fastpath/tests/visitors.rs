//! Secret proxies (`stcp`, `sudp`) and their visitors through the real
//! fastpath with the in-repo frpc: a visitor session reaches an owner's
//! service through every wrapping, on one worker or two; refusals carry
//! frps's words; an `sudp` visitor's datagrams come back to the user they
//! name.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bench::backend::Backend;
use bench::client::session::read_msg_exact;
use bench::client::{Client, ClientError, ProxySpec};
use common::Fastpath;
use proto::msg::{Message, NewVisitorConn, UdpPacket};
use sha2::{Digest, Sha256};

const SK: &str = "s3cret-key";

fn login(fp: &Fastpath, user: &str, mux: bool) -> Client {
    let mut o = fp.opts();
    o.user = user.into();
    o.mux = mux;
    Client::login(o).unwrap_or_else(|e| panic!("login {user}: {e}"))
}

/// Register a secret proxy `name` of `kind` to `local`.
fn secret_proxy(
    c: &Client,
    kind: &str,
    name: &str,
    local: SocketAddr,
    allow: &[&str],
    enc: bool,
    comp: bool,
) -> String {
    let spec = ProxySpec {
        use_encryption: enc,
        use_compression: comp,
        ..ProxySpec::plain(name, 0, local)
    };
    c.register_proxy(spec, |np| {
        np.proxy_type = kind.into();
        np.sk = SK.into();
        np.allow_users = allow.iter().map(|s| s.to_string()).collect();
    })
    .unwrap_or_else(|e| panic!("{kind} proxy {name}: {e}"))
}

/// Send `len` pseudo-random bytes through a visitor stream to the echo
/// service and read them back; (sent hash, received hash).
fn echo_through(c: &Client, proxy: &str, enc: bool, comp: bool, len: usize) -> (String, String) {
    let (mut r, mut w) = c
        .visit(proxy, SK, None, enc, comp)
        .unwrap_or_else(|e| panic!("visit {proxy}: {e}"));
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(2654435761) as u8)
        .collect();
    let sent = hex::encode(Sha256::digest(&data));
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(16 * 1024) {
            w.write_all(chunk).unwrap();
        }
        w
    });
    let mut got = vec![0u8; len];
    r.read_exact(&mut got).expect("echo comes back");
    drop(writer.join());
    (sent, hex::encode(Sha256::digest(&got)))
}

/// A visitor reaches the owner's service whatever each side wraps, over
/// yamux and plain connections, with sessions spread over two workers.
#[test]
fn stcp_visitors_reach_the_service_through_every_wrapping() {
    let fp = Fastpath::start("", 2);
    let echo = Backend::echo().unwrap();
    let owner = login(&fp, "alice", true);
    for (n, (p_enc, p_comp)) in [(false, false), (true, true)].into_iter().enumerate() {
        let name = format!("svc{n}");
        secret_proxy(&owner, "stcp", &name, echo.addr(), &["bob"], p_enc, p_comp);
        let full = format!("alice.{name}");
        for (mux, v_enc, v_comp) in [
            (true, false, false),
            (true, true, false),
            (false, false, true),
            (false, true, true),
        ] {
            // Several sessions, so that some land on the other worker.
            for _ in 0..2 {
                let bob = login(&fp, "bob", mux);
                let (a, b) = echo_through(&bob, &full, v_enc, v_comp, 256 * 1024);
                assert_eq!(
                    a, b,
                    "proxy enc/comp {p_enc}/{p_comp}, visitor mux {mux} enc/comp {v_enc}/{v_comp}"
                );
                bob.kill();
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(fp.counter("visitors"), 16);
    let log = fp.daemon.log().join("\n");
    assert!(
        log.contains("across_workers=true") && log.contains("across_workers=false"),
        "visitors did not land on both workers:\n{log}"
    );
    assert_eq!(fp.counter("visitors_refused"), 0);
}

fn refused<T>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Refused(e)) => e,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("visitor accepted"),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Each refusal is frps's answer, counted and logged; the proxy serves
/// its allowed visitors after all of them, and not once it is closed.
#[test]
fn visitors_are_refused_with_frps_reasons() {
    let fp = Fastpath::start("", 1);
    let echo = Backend::echo().unwrap();
    let owner = login(&fp, "alice", true);
    // No allowUsers: only the owner's own user.
    secret_proxy(&owner, "stcp", "db", echo.addr(), &[], false, false);
    let bob = login(&fp, "bob", true);
    let alice2 = login(&fp, "alice", true);

    let e = refused(bob.visit("alice.db", "wrong", None, false, false));
    assert_eq!(e, "visitor connection of [alice.db] auth failed");
    let e = refused(alice2.visit("alice.db", SK, Some(now() - 3600), false, false));
    assert!(
        e.starts_with("visitor connection of [alice.db] auth failed"),
        "{e}"
    );
    let e = refused(bob.visit("alice.db", SK, None, false, false));
    assert_eq!(e, "visitor connection of [alice.db] user [bob] not allowed");
    let e = refused(bob.visit("alice.nope", SK, None, false, false));
    assert_eq!(e, "custom listener for [alice.nope] doesn't exist");

    // A run_id no session has.
    let (mut r, mut w) = fp.plain_dial().connect().unwrap();
    let ts = now();
    let mut nvc = Vec::new();
    proto::frame::encode(
        &Message::NewVisitorConn(NewVisitorConn {
            run_id: "0123456789abcdef".into(),
            proxy_name: "alice.db".into(),
            sign_key: proto::auth::privilege_key(SK, ts),
            timestamp: ts,
            ..Default::default()
        }),
        &mut nvc,
    );
    w.write_all(&nvc).unwrap();
    match read_msg_exact(&mut r, false).expect("an answer") {
        Message::NewVisitorConnResp(resp) => assert_eq!(
            resp.error,
            "no client control found for run id [0123456789abcdef]"
        ),
        other => panic!("unexpected {}", other.name()),
    }

    // The owner's user is allowed.
    let (a, b) = echo_through(&alice2, "alice.db", false, false, 64 * 1024);
    assert_eq!(a, b);
    assert!(fp
        .daemon
        .wait_log("visitor connection refused", Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(fp.counter("visitors_refused"), 5);

    owner.close_proxy("alice.db").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let e = refused(alice2.visit("alice.db", SK, None, false, false));
    assert_eq!(e, "custom listener for [alice.db] doesn't exist");
}

/// An sudp visitor's stream carries UDPPacket messages: each reaches the
/// owner's UDP service, and its answer comes back naming the same user.
#[test]
fn sudp_visitors_carry_datagrams_for_their_users() {
    let fp = Fastpath::start("", 2);
    let svc = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = svc.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = svc.recv_from(&mut buf) {
            let mut answer = b"re:".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = svc.send_to(&answer, from);
        }
    });
    let owner = login(&fp, "alice", true);
    secret_proxy(&owner, "sudp", "dns", local, &["*"], true, false);
    let bob = login(&fp, "bob", true);
    let (mut r, mut w) = bob
        .visit("alice.dns", SK, None, false, true)
        .expect("visit");
    let users: [SocketAddr; 2] = [
        "10.9.8.7:5353".parse().unwrap(),
        "[2001:db8::7]:53".parse().unwrap(),
    ];
    for i in 0..200u32 {
        let user = users[i as usize % 2];
        let mut frame = Vec::new();
        proto::frame::encode(
            &Message::UdpPacket(UdpPacket {
                content: format!("q{i}").into_bytes(),
                local_addr: None,
                remote_addr: Some(user.into()),
            }),
            &mut frame,
        );
        w.write_all(&frame).unwrap();
        let Message::UdpPacket(p) = read_msg_exact(&mut r, false).expect("answer") else {
            panic!("not a UDPPacket")
        };
        assert_eq!(p.content, format!("re:q{i}").into_bytes());
        assert_eq!(p.remote_addr, Some(user.into()));
    }
}
