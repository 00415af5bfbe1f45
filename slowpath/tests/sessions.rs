//! Issue 11, finding 5 and the Login `metas` cap, end to end: the real
//! `slowpath up` (with its fastpath child), invites made through the API,
//! an frp client that matches frpc on the wire, real sockets.
//!
//! A `run_id` belongs to the credential that opened the session: another
//! invite presenting it gets a fresh session or a refusal and never kicks
//! the owner; the owner presenting it again is a reconnect.

mod harness;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bench::backend::Backend as Echo;
use bench::client::{Client, ClientOpts};
use harness::{echo, first_login, login, ticket_opts, wait_audit, wait_within};
use harness::{Backend, Slowpath};
use serde_json::{json, Value};

fn refusal(o: &ClientOpts) -> String {
    match login(o) {
        Ok(c) => panic!("login accepted (run_id {})", c.run_id()),
        Err(r) => r,
    }
}

/// The invite behind `o` holds one session, all its max_conns of 1 allow:
/// another login is refused, saying so.
fn assert_one_session(o: &ClientOpts) {
    let r = refusal(o);
    assert!(r.contains("has 1 of its 1"), "{r}");
}

/// A node that is private, serves tcp from a pool of ports free a moment
/// ago (proxies take port 0: parallel tests' pools may overlap), and is
/// ready for ticket logins.
fn private_node() -> Slowpath {
    let sp = Slowpath::up(&Backend::Sqlite, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(sp.frp_addr()).is_err() {
        assert!(Instant::now() < deadline, "no fastpath:\n{}", sp.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = bench::proc::free_port_run(40);
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{}", sp.local_node),
        Some(json!({ "public": false, "port_pool": format!("{}-{}", base, base + 19), "proxy_types": ["tcp"] })),
    );
    assert_eq!(st, 200, "{v}");
    sp
}

/// A new invite with `max_conns`; returns its id and frpc options that
/// carry its ticket.
fn invite(sp: &Slowpath, max_conns: u32) -> (String, ClientOpts) {
    let inv = sp.admin_invite(json!({
        "max_uses": 5,
        "ttl_s": 3600,
        "scope": { "proxy_types": ["tcp"], "max_conns": max_conns, "max_proxies": 5 },
    }));
    let (st, resolved) = sp.resolve(inv["code"].as_str().unwrap());
    assert_eq!(st, 200, "{resolved}");
    let mut o = ticket_opts(sp, &resolved);
    o.heartbeat = Some(Duration::from_millis(200));
    (inv["id"].as_str().unwrap().to_owned(), o)
}

/// `old`'s owner logs in again (`opts`) under `old`'s run_id: the same
/// run_id, and the new session replaces `old` within 3 s.
fn reconnect(old: &Client, opts: &ClientOpts) -> Client {
    let mut again = opts.clone();
    again.run_id = old.run_id().to_owned();
    let new = login(&again).expect("a reconnect under its own run_id");
    assert_eq!(new.run_id(), old.run_id());
    wait_within(
        Duration::from_secs(3),
        "the old session to be replaced",
        || old.is_closed(),
    );
    new
}

/// A, the owner: a session of a new max_conns 1 invite with a proxy named
/// `proxy` to `echo_srv`; its options, the client and the proxy's port.
fn owner(sp: &Slowpath, echo_srv: &Echo, proxy: &str) -> (ClientOpts, Client, u16) {
    let (_, o) = invite(sp, 1);
    let c = first_login(&o);
    let port = c.add_plain_proxy(proxy, 0, echo_srv.addr()).unwrap();
    (o, c, port)
}

/// Wait until the audit log has an `auth.failed` row whose reason has `want`.
fn wait_auth_failed(sp: &Slowpath, want: &str) -> Value {
    wait_audit(sp, "auth.failed", |r| {
        r["reason"].as_str().is_some_and(|s| s.contains(want))
    })
}

/// `c` is alive: not closed, still answered on heartbeats, and the tunnel
/// at `port` still carries data.
fn still_serving(c: &Client, port: u16) {
    let pongs = c.pongs();
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.pongs() <= pongs + 1 {
        assert!(!c.is_closed(), "session {} was closed", c.run_id());
        assert!(Instant::now() < deadline, "no pongs for {}", c.run_id());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!c.is_closed(), "session {} was closed", c.run_id());
    echo(port, 64 << 10);
}

#[test]
fn another_invites_run_id_never_takes_over_its_session() {
    let sp = private_node();
    let echo_srv = Echo::echo().unwrap();
    let (a_opts, a, a_port) = owner(&sp, &echo_srv, "a-web");
    echo(a_port, 64 << 10);
    let (b_id, b_opts) = invite(&sp, 1);
    let (_, c_opts) = invite(&sp, 0);

    let b = first_login(&b_opts);
    assert_ne!(a.run_id(), b.run_id());

    // B at its max_conns presents A's live run_id: counted as a new session
    // of B, so refused; A carries on.
    let mut steal = b_opts.clone();
    steal.run_id = a.run_id().to_owned();
    let r = refusal(&steal);
    assert!(r.contains("max_conns"), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&a, a_port);
    // B still counts one session, not two.
    assert_one_session(&b_opts);
    assert!(!b.is_closed());
    wait_auth_failed(&sp, &format!("invite {b_id} already has 1 of its 1"));

    // C has room: it gets a session of its own under a fresh run_id.
    let mut steal = c_opts.clone();
    steal.run_id = a.run_id().to_owned();
    let c = login(&steal).expect("C logs in");
    assert_ne!(c.run_id(), a.run_id(), "C was handed A's run_id");
    assert!(!c.run_id().is_empty());
    let c_port = c.add_plain_proxy("c-web", 0, echo_srv.addr()).unwrap();
    echo(c_port, 64 << 10);
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&a, a_port);
    // A's max_conns of 1 is still A's: one session.
    assert_one_session(&a_opts);
}

#[test]
fn the_owner_reconnects_with_its_run_id_and_replaces_the_old_session() {
    let sp = private_node();
    let echo_srv = Echo::echo().unwrap();
    let (a_opts, a, _) = owner(&sp, &echo_srv, "a-old");

    let a2 = reconnect(&a, &a_opts);
    let port = a2.add_plain_proxy("a-new", 0, echo_srv.addr()).unwrap();
    still_serving(&a2, port);
    // Still one session on the invite.
    assert_one_session(&a_opts);
}

#[test]
fn a_login_with_too_many_metas_is_refused_with_the_limit() {
    let sp = private_node();
    let (_, o) = invite(&sp, 0);
    // A handful of metas, as frpc users set them, log in.
    let mut few = o.clone();
    for i in 0..5 {
        few.metas.insert(format!("team{i}"), "platform".into());
    }
    let c = first_login(&few);
    assert!(!c.is_closed());

    // 1,000 short ones still fit in one 10 KiB v1 frame.
    let mut many = o.clone();
    for i in 0..1000 {
        many.metas.insert(i.to_string(), String::new());
    }
    let r = refusal(&many);
    assert!(r.contains("1001 metas") && r.contains("64"), "{r}");
    wait_auth_failed(&sp, "metas");

    // A few, but big: the byte cap (v2 frames carry up to 64 KiB).
    let mut big = o.clone();
    big.wire_v2 = true;
    for i in 0..4 {
        big.metas.insert(format!("blob{i}"), "x".repeat(4000));
    }
    let r = refusal(&big);
    assert!(r.contains("8192"), "{r}");
    assert!(!c.is_closed());
}

#[test]
fn tenant_tokens_own_their_run_ids_too() {
    let sp = private_node();
    let echo_srv = Echo::echo().unwrap();
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{}", sp.local_node),
        Some(json!({ "region": "test" })),
    );
    assert_eq!(st, 200, "{v}");
    for token in ["tenant_one", "tenant_two"] {
        let (st, v) = sp.admin_call(
            "POST",
            "/api/v1/tenants",
            Some(json!({ "token": token, "region": "test", "enabled": true })),
        );
        assert_eq!(st, 201, "{v}");
    }
    let tenant = |token: &str| {
        let mut o = ClientOpts::new(sp.frp_addr(), token);
        o.heartbeat = Some(Duration::from_millis(200));
        o
    };
    let one = first_login(&tenant("tenant_one"));
    let port = one.add_plain_proxy("t1-web", 0, echo_srv.addr()).unwrap();

    // Another tenant's token and an invite's ticket: fresh run_ids.
    let mut two = tenant("tenant_two");
    two.run_id = one.run_id().to_owned();
    let (_, mut inv) = invite(&sp, 1);
    inv.run_id = one.run_id().to_owned();
    for o in [two, inv] {
        let c = first_login(&o);
        assert_ne!(c.run_id(), one.run_id());
    }
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&one, port);

    // The tenant itself reconnects under its run_id.
    reconnect(&one, &tenant("tenant_one"));
}

#[test]
fn racing_logins_with_a_stolen_run_id_stay_within_max_conns() {
    let sp = private_node();
    let echo_srv = Echo::echo().unwrap();
    let (_, a, port) = owner(&sp, &echo_srv, "a-web");
    let (_, d_opts) = invite(&sp, 2);
    // D's invite is in force before the race, and its slots are free.
    let probe = first_login(&d_opts);
    let probe_id = probe.run_id().to_owned();
    probe.kill();
    wait_audit(&sp, "session.close", |r| r["run_id"] == probe_id.as_str());

    let mut steal = d_opts.clone();
    steal.run_id = a.run_id().to_owned();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let o = steal.clone();
            std::thread::spawn(move || login(&o))
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted: Vec<&Client> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("max_conns"), "{r}");
    }
    assert_eq!(admitted.len(), 2, "D has max_conns 2");
    for c in &admitted {
        assert_ne!(c.run_id(), a.run_id());
        assert!(!c.is_closed());
    }
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&a, port);
}
