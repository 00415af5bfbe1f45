//! Seed 001 §1.3, the MVP acceptance, end to end: the real `slowpath up`
//! (which runs the real fastpath as its child) on SQLite and on PostgreSQL,
//! an frp-protocol client that matches frpc on the wire, real sockets.
//!
//! public list → public node login → invite → resolve → ticket login →
//! tunnel → max_conns / max_proxies / port pool refusals → audit with
//! reasons → revocation ends live sessions → slowpath killed mid-transfer,
//! data plane carries on and takes new logins → slowpath back, events resume.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bench::backend::Backend as Echo;
use bench::client::{Client, ClientOpts};
use harness::{each_backend, Backend, Slowpath};
use harness::{echo, login, ticket_opts, wait_audit};
use serde_json::json;

/// The refusal reason of a login that must fail.
fn refusal(o: &ClientOpts) -> String {
    match login(o) {
        Ok(_) => panic!("login accepted"),
        Err(r) => r,
    }
}

fn proxy(c: &Client, name: &str, port: u16, local: std::net::SocketAddr) -> Result<u16, String> {
    c.add_plain_proxy(name, port, local)
        .map_err(|e| e.to_string())
}

fn mvp(backend: Backend) {
    let mut sp = Slowpath::up(&backend, &[]);
    sp.wait_frp();
    let node = sp.local_node.clone();
    let echo_srv = Echo::echo().unwrap();
    let local = echo_srv.addr();
    // A pool of ports that were free a moment ago, for this run alone.
    let base = bench::proc::free_port_run(40);
    let pool = format!("{}-{}", base, base + 19);
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{node}"),
        Some(json!({ "public": true, "port_pool": pool, "proxy_types": ["tcp", "udp"] })),
    );
    assert_eq!(st, 200, "{v}");

    // 1. Public node: the list shows it; its token alone logs in.
    let (st, list) = sp.call("GET", "/api/v1/public/nodes", None, None);
    assert_eq!(st, 200);
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == node.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("local node not listed: {list}"));
    assert_eq!(entry["server_port"].as_u64().unwrap() as u16, sp.frp_port);
    let token = entry["token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let public = loop {
        // The fastpath needs the table that says "public".
        match login(&ClientOpts::new(sp.frp_addr(), &token)) {
            Ok(c) => break c,
            Err(r) if Instant::now() < deadline && r.contains("private") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(r) => panic!("public login: {r}"),
        }
    };
    let port = proxy(&public, "pub-web", 0, local).expect("proxy on the public node");
    echo(port, 256 << 10);
    public.kill();

    // 2. Private node: token alone is refused, invites are the way in.
    let (st, v) = sp.admin_call(
        "PATCH",
        &format!("/api/v1/admin/nodes/{node}"),
        Some(json!({ "public": false })),
    );
    assert_eq!(st, 200, "{v}");
    let inv_pool = format!("{}-{}", base, base + 4);
    let inv = sp.admin_invite(json!({
        "max_uses": 5,
        "ttl_s": 3600,
        "scope": { "proxy_types": ["tcp"], "port_pool": inv_pool, "max_conns": 2, "max_proxies": 2 },
    }));
    let code = inv["code"].as_str().unwrap().to_owned();
    let invite_id = inv["id"].as_str().unwrap().to_owned();
    let (st, resolved) = sp.resolve(&code);
    assert_eq!(st, 200, "{resolved}");
    assert_eq!(resolved["node_id"], node.as_str());
    let opts = ticket_opts(&sp, &resolved);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match login(&ClientOpts::new(sp.frp_addr(), &token)) {
            Err(r) if r.contains("private") => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!(
                "token-only login on a private node: {:?}",
                other.map(|_| ())
            ),
        }
    }
    let a = login(&opts).expect("ticket login");
    let p1 = proxy(&a, "inv-1", 0, local).expect("first proxy");
    assert!((base..base + 5).contains(&p1), "{p1} outside {inv_pool}");
    echo(p1, 1 << 20);
    let outside = proxy(&a, "inv-out", base + 10, local).unwrap_err();
    assert!(outside.contains("not in the port pool"), "{outside}");
    let b = login(&opts).expect("second session");
    proxy(&b, "inv-2", 0, local).expect("second proxy");
    let over = proxy(&b, "inv-3", 0, local).unwrap_err();
    assert!(over.contains("max_proxies"), "{over}");
    let third = refusal(&opts);
    assert!(third.contains("max_conns"), "{third}");

    // 3. The audit trail says all of it, with reasons.
    wait_audit(&sp, "invite.resolved", |r| {
        r["invite_id"] == invite_id.as_str()
    });
    wait_audit(&sp, "session.open", |r| {
        r["invite_id"] == invite_id.as_str()
    });
    wait_audit(&sp, "proxy.registered", |r| r["proxy"] == "inv-1");
    let rej = wait_audit(&sp, "proxy.rejected", |r| r["proxy"] == "inv-out");
    assert!(
        rej["reason"].as_str().unwrap().contains("port pool"),
        "{rej}"
    );
    let rej = wait_audit(&sp, "proxy.rejected", |r| r["proxy"] == "inv-3");
    assert!(
        rej["reason"].as_str().unwrap().contains("max_proxies"),
        "{rej}"
    );
    let af = wait_audit(&sp, "auth.failed", |r| r["invite_id"] == invite_id.as_str());
    assert!(af["reason"].as_str().unwrap().contains("max_conns"), "{af}");
    b.kill();
    wait_audit(&sp, "session.close", |r| {
        r["invite_id"] == invite_id.as_str()
    });
    wait_audit(&sp, "proxy.closed", |r| r["proxy"] == "inv-2");

    // 4. A tampered ticket and a ticket of another node: own reasons.
    let mut tampered = opts.clone();
    let t = tampered.metas["ticket"].clone();
    let (head, sig) = t.rsplit_once('.').unwrap();
    let flipped = match sig.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &sig[1..]),
    };
    tampered
        .metas
        .insert("ticket".into(), format!("{head}.{flipped}"));
    let r = refusal(&tampered);
    assert!(r.contains("signature"), "{r}");
    let (other, other_key) =
        sp.node(json!({ "name": "elsewhere", "server_addr": "10.0.0.9", "public": false }));
    let (st, oinv) = sp.invite(&other_key, json!({ "max_uses": 1 }));
    assert_eq!(st, 201, "{oinv}; other node {other}");
    let (st, ores) = sp.resolve(oinv["code"].as_str().unwrap());
    assert_eq!(st, 200, "{ores}");
    let mut wrong = opts.clone();
    wrong.metas.insert(
        "ticket".into(),
        ores["connection_ticket"].as_str().unwrap().into(),
    );
    let r = refusal(&wrong);
    assert!(r.contains("another node"), "{r}");

    // 5. Kill the slowpath while a tunnel carries data: the data plane goes
    //    on, and a still-valid ticket still logs in.
    let inv2 = sp.admin_invite(
        json!({ "max_uses": 1, "scope": { "port_pool": format!("{}-{}", base + 5, base + 9) } }),
    );
    let (st, res2) = sp.resolve(inv2["code"].as_str().unwrap());
    assert_eq!(st, 200, "{res2}");
    let opts2 = ticket_opts(&sp, &res2);
    let c = login(&opts2).expect("login under the second invite");
    let p2 = proxy(&c, "long", 0, local).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", p2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64 << 10];
    let mut round = |s: &mut TcpStream| {
        s.write_all(&buf).unwrap();
        let mut got = 0;
        let mut tmp = [0u8; 64 << 10];
        while got < buf.len() {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0, "tunnel closed");
            got += n;
        }
        buf[0] = buf[0].wrapping_add(1);
    };
    round(&mut s);
    sp.kill_hard();
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_millis(500) {
        round(&mut s);
    }
    let d = login(&opts2).expect("new login while the slowpath is down");
    let run_id_while_down = d.run_id().to_owned();
    round(&mut s);
    echo(p1, 256 << 10);

    // 6. Slowpath back: it adopts the running fastpath and the events of
    //    the outage arrive.
    sp.restart();
    let row = wait_audit(&sp, "session.open", |r| {
        r["run_id"] == run_id_while_down.as_str()
    });
    assert_eq!(row["invite_id"], inv2["id"]);
    assert!(sp.log().contains("supervising it"), "{}", sp.log());
    round(&mut s);

    // 7. Revoking an invite ends its live sessions within a second.
    let t0 = Instant::now();
    let (st, v) = sp.admin_call(
        "POST",
        &format!("/api/v1/admin/invites/{invite_id}/revoke"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    while !a.is_closed() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "session alive 1 s after revocation"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("revoked → session closed in {:?}", t0.elapsed());
    let r = refusal(&opts);
    assert!(r.contains("revoked"), "{r}");
    let close = wait_audit(&sp, "session.close", |r| {
        r["invite_id"] == invite_id.as_str()
            && r["reason"].as_str().unwrap_or("").contains("revoked")
    });
    assert!(close["reason"].as_str().unwrap().contains("revoked"));
    wait_audit(&sp, "invite.revoked", |r| {
        r["invite_id"] == invite_id.as_str()
    });
    // The other invite's tunnel is untouched.
    round(&mut s);

    // The local node heartbeats with what its fastpath reports.
    let (st, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
    assert_eq!(st, 200, "{n}");
    assert_eq!(n["status"], "online", "{n}");
    assert!(n["heartbeat"]["versions"]["fastpath"].is_string(), "{n}");
    assert!(n["heartbeat"]["mem_bytes"].as_u64().unwrap_or(0) > 0, "{n}");
    drop(c);
    drop(d);
}

#[test]
fn seed_001_mvp_acceptance() {
    each_backend("mvp", mvp);
}
