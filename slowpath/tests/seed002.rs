//! Seed 002 end to end: a real etcd, two nodes (`slowpath up` with an
//! frps-style config holding `[etcd]`, each running the real fastpath),
//! tokens put with `etcdctl` as the seed writes them, and an frp-protocol
//! client that matches frpc on the wire.
//!
//! Regions, allowPorts, maxPortsPerClient, live updates (new, changed,
//! disabled, deleted mid-transfer), a quota that closes, traffic reports
//! at a test HTTP endpoint whose sums equal the bytes relayed, a bad record
//! skipped by key, and etcd going away with the last tenants kept.
//!
//! The seed's ports (8080, 9000-9100, 10000-10100, 7000) are replaced by
//! ranges free on the test machine; everything else is as written.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bench::backend::Backend as Echo;
use bench::client::{Client, ClientError, ClientOpts};
use bench::proc::free_port;
use harness::etcd::Etcd;
use harness::report::report_server;
use harness::{Backend, Slowpath};
use serde_json::{json, Value};

struct Node {
    sp: Slowpath,
    frp: SocketAddr,
}

fn node(dir: &Path, region: &str, etcd: &Etcd, report_url: &str) -> Node {
    let port = free_port();
    let cfg = dir.join(format!("frps-{region}.toml"));
    // The seed's frps.toml, with a free port and a report URL.
    std::fs::write(
        &cfg,
        format!(
            "bindPort = {port}\n\n[etcd]\nendpoints = [\"{}\"]\nregion = \"{region}\"\ntrafficReportUrl = \"{report_url}\"\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let sp = Slowpath::up(
        &Backend::Sqlite,
        &["--fastpath-config", cfg.to_str().unwrap()],
    );
    let frp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        bench::proc::wait_listening(frp, Duration::from_secs(20)),
        "fastpath did not start:\n{}",
        sp.log()
    );
    Node { sp, frp }
}

/// How soon a disabled or deleted token's sessions and transfers must end:
/// "at once".
const AT_ONCE: Duration = Duration::from_secs(1);

fn opts(n: &Node, token: &str) -> ClientOpts {
    ClientOpts::new(n.frp, token)
}

fn refused(r: Result<Client, ClientError>) -> String {
    match r {
        Ok(_) => panic!("login was accepted"),
        Err(ClientError::Refused(reason)) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
    }
}

/// Log in, retrying for up to `limit` while the node catches up with etcd.
fn login_within(n: &Node, token: &str, limit: Duration) -> (Client, Duration) {
    let t0 = Instant::now();
    loop {
        match Client::login(opts(n, token)) {
            Ok(c) => return (c, t0.elapsed()),
            Err(_) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{token}: no login within {limit:?}: {e}"),
        }
    }
}

/// Wait until `c`'s session ends, at most `limit` after `t0`; how long it took.
fn wait_closed(c: &Client, t0: Instant, limit: Duration, what: &str) -> Duration {
    while !c.is_closed() {
        assert!(t0.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

fn etcdctl_put(etcd: &Etcd, key: &str, value: &str) {
    // The seed's own command when etcdctl is installed (Debian's
    // etcd-client), else the same put through the gateway.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "put", key, value])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        _ => {
            etcd.put(key, value);
        }
    }
}

/// Puts `token`'s record at `/frp/tokens/<token>` as the seed writes one:
/// `extra` adds fields (allowPorts, maxPortsPerClient, a quota) or
/// overrides them.
fn put_token(etcd: &Etcd, token: &str, region: &str, extra: Value) {
    let mut v = json!({
        "token": token,
        "region": region,
        "allowPorts": [],
        "bandwidthLimit": "10MB",
        "maxPortsPerClient": 0,
        "enabled": true,
        "description": format!("{token} test tenant"),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    etcdctl_put(etcd, &format!("/frp/tokens/{token}"), &v.to_string());
}

fn stats(n: &Node) -> Value {
    let (st, v) = n.sp.admin_call("GET", "/api/v1/admin/stats", None);
    assert_eq!(st, 200, "{v}");
    v
}

/// Send `len` bytes through an echo tunnel and read them back.
fn echo(port: u16, len: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let buf = vec![0x5au8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            w.write_all(&buf[..n]).unwrap();
            left -= n;
        }
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while got < len {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "tunnel closed after {got} of {len}");
        got += n;
    }
    writer.join().unwrap();
}

/// The start of a run of ports below the ephemeral range, at a random spot.
fn free_base() -> u16 {
    20000 + (free_port() % 9000)
}

#[test]
fn seed_002_usage_example_and_every_refusal() {
    let Some(mut etcd) = Etcd::start("seed002") else {
        return;
    };
    let tmp: PathBuf = std::env::temp_dir().join(format!("totoro-seed002-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (report_url, reports) = report_server();
    let echo_srv = Echo::echo().unwrap();

    // 2. Tokens, as the seed puts them (ports moved to free ranges).
    let cd = free_base();
    let sh = cd + 200;
    put_token(
        &etcd,
        "user1_chengdu",
        "chengdu",
        json!({"allowPorts": [{"single": cd}, {"start": cd + 10, "end": cd + 110}], "maxPortsPerClient": 5}),
    );
    put_token(
        &etcd,
        "user1_shanghai",
        "shanghai",
        json!({"allowPorts": [{"start": sh, "end": sh + 100}], "maxPortsPerClient": 3}),
    );

    // 3-4. Two nodes, one per region.
    let chengdu = node(&tmp, "chengdu", &etcd, &report_url);
    let shanghai = node(&tmp, "shanghai", &etcd, &report_url);

    // 5. Clients connect only where their region matches.
    let (c1, _) = login_within(&chengdu, "user1_chengdu", Duration::from_secs(10));
    let port = c1
        .add_plain_proxy("web", cd, echo_srv.addr())
        .expect("remotePort in allowPorts");
    assert_eq!(port, cd);
    echo(port, 256 * 1024);
    // Shanghai's own tenant first: once it logs in, that node has etcd's
    // tenants, so the next refusal is about the region, not a token that
    // the node has not heard of yet (a slow start failed it that way).
    let (c2, _) = login_within(&shanghai, "user1_shanghai", Duration::from_secs(10));
    c2.add_plain_proxy("web", sh + 1, echo_srv.addr())
        .expect("shanghai port");
    let r = refused(Client::login(opts(&shanghai, "user1_chengdu")));
    assert!(
        r.contains("region") && r.contains("chengdu") && r.contains("shanghai"),
        "{r}"
    );
    let r = refused(Client::login(opts(&chengdu, "user1_shanghai")));
    assert!(r.contains("region"), "{r}");
    let r = refused(Client::login(opts(&chengdu, "no_such_token")));
    assert!(r.contains("token"), "{r}");

    // Port range and max ports.
    let e = c1
        .add_plain_proxy("outside", cd + 150, echo_srv.addr())
        .unwrap_err();
    assert!(e.to_string().contains("allowPorts"), "{e}");
    for i in 0..4 {
        c1.add_plain_proxy(&format!("p{i}"), cd + 10 + i, echo_srv.addr())
            .expect("within maxPortsPerClient");
    }
    let e = c1
        .add_plain_proxy("p5", cd + 20, echo_srv.addr())
        .unwrap_err();
    assert!(e.to_string().contains("maxPortsPerClient"), "{e}");

    // Live updates: a new token works at once.
    let t0 = Instant::now();
    put_token(
        &etcd,
        "user2_chengdu",
        "chengdu",
        json!({"trafficReportIntervalMB": 1}),
    );
    let (c3, took) = login_within(&chengdu, "user2_chengdu", Duration::from_secs(2));
    eprintln!(
        "new token usable {took:?} after the put ({:?} in all)",
        t0.elapsed()
    );

    // A changed token applies to the next proxies; the live one stays.
    put_token(
        &etcd,
        "user1_shanghai",
        "shanghai",
        json!({"allowPorts": [{"single": sh + 300}], "maxPortsPerClient": 3}),
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match c2.add_plain_proxy("web2", sh + 2, echo_srv.addr()) {
            Err(e) if e.to_string().contains("allowPorts") => break,
            Ok(_) => {
                c2.close_proxy("web2").unwrap();
                assert!(Instant::now() < deadline, "the change never applied");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!c2.is_closed(), "a changed token keeps its session");

    // Traffic reports: 3 MiB each way through user2's proxy, then close it.
    let p = c3.add_plain_proxy("rep", 0, echo_srv.addr()).unwrap();
    echo(p, 3 << 20);
    c3.close_proxy("rep").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (tin, tout) = loop {
        let got = reports.lock().unwrap().clone();
        let mine: Vec<&Value> = got
            .iter()
            .filter(|v| v["token"] == "user2_chengdu")
            .collect();
        let sum = |k: &str| mine.iter().map(|v| v[k].as_u64().unwrap()).sum::<u64>();
        if sum("trafficIn") >= 3 << 20 && sum("trafficOut") >= 3 << 20 {
            for v in &mine {
                assert_eq!(v["region"], "chengdu", "{v}");
                assert!(v["proxyName"].as_str().unwrap().ends_with("rep"), "{v}");
                assert!(v["timestamp"].as_i64().unwrap() > 1_700_000_000, "{v}");
            }
            eprintln!("{} reports for user2_chengdu", mine.len());
            assert!(
                mine.len() >= 2,
                "a 1 MB interval over 6 MiB makes several reports"
            );
            break (sum("trafficIn"), sum("trafficOut"));
        }
        assert!(Instant::now() < deadline, "reports so far: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (tin, tout),
        (3 << 20, 3 << 20),
        "reports add up to the bytes relayed"
    );

    // Disabled: live sessions end at once, new logins are refused.
    let t0 = Instant::now();
    put_token(&etcd, "user2_chengdu", "chengdu", json!({"enabled": false}));
    let took = wait_closed(&c3, t0, AT_ONCE, "disabled token's session survived");
    eprintln!("disabled: session closed {took:?} after the put");
    let r = refused(Client::login(opts(&chengdu, "user2_chengdu")));
    assert!(r.contains("disabled"), "{r}");

    // Deleted mid-transfer: the transfer stops at once.
    let mut v = TcpStream::connect(("127.0.0.1", port)).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    v.write_all(&[1u8; 4096]).unwrap();
    let mut b = [0u8; 4096];
    v.read_exact(&mut b).unwrap();
    let ended = std::thread::spawn(move || loop {
        if v.write_all(&[1u8; 4096]).is_err() {
            return Instant::now();
        }
        match v.read(&mut b) {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    etcd.delete("/frp/tokens/user1_chengdu");
    let took = ended.join().unwrap().saturating_duration_since(t0);
    assert!(took < AT_ONCE, "transfer went on {took:?} after the delete");
    wait_closed(&c1, t0, AT_ONCE, "deleted token's session survived");
    eprintln!(
        "deleted: transfer ended {took:?}, session closed {:?} after the delete",
        t0.elapsed()
    );
    refused(Client::login(opts(&chengdu, "user1_chengdu")));

    // A quota that closes: 1 MB a day.
    put_token(
        &etcd,
        "user3_chengdu",
        "chengdu",
        json!({"trafficQuota": "1MB", "quotaPeriod": "day", "overQuota": "close"}),
    );
    let (c4, _) = login_within(&chengdu, "user3_chengdu", Duration::from_secs(2));
    let p4 = c4.add_plain_proxy("q", 0, echo_srv.addr()).unwrap();
    echo(p4, 1 << 20);
    let t0 = Instant::now();
    let took = wait_closed(
        &c4,
        t0,
        Duration::from_secs(15),
        "over-quota session survived",
    );
    eprintln!("quota: session closed {took:?} after the traffic");
    let r = refused(Client::login(opts(&chengdu, "user3_chengdu")));
    assert!(r.contains("quota"), "{r}");

    // The API lists etcd's tenants beside the database's.
    let (st, list) = chengdu.sp.admin_call("GET", "/api/v1/tenants", None);
    assert_eq!(st, 200, "{list}");
    let sh_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["token"] == "user1_shanghai")
        .expect("etcd tenant listed");
    assert_eq!(sh_row["source"], "etcd");
    assert_eq!(sh_row["region"], "shanghai");

    // A record that does not parse is skipped, naming its key; the rest work.
    etcd.put(
        "/frp/tokens/broken",
        "{\"token\": \"broken\", \"region\": 5}",
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = stats(&chengdu);
        let skipped = &s["tenants"]["etcd"]["skipped"];
        if skipped.as_array().is_some_and(|a| {
            a.iter().any(|k| {
                k["key"] == "/frp/tokens/broken"
                    && k["reason"].as_str().unwrap_or("").contains("region")
            })
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    login_within(&shanghai, "user1_shanghai", Duration::from_secs(1));

    // etcd goes away: health says so, the last tenants stay in force.
    etcd.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ((_, h), _) =
            harness::call(&format!("{}/healthz", shanghai.sp.base), "GET", None, None);
        if h["etcd"]["connected"] == false {
            assert!(h["etcd"]["last_error"].is_string(), "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (c5, _) = login_within(&shanghai, "user1_shanghai", Duration::from_secs(1));
    assert!(!c2.is_closed());
    c5.kill();
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(&shanghai)["tenants"]["etcd"]["connected"] != true {
        assert!(Instant::now() < deadline, "no reconnect");
        std::thread::sleep(Duration::from_millis(100));
    }
    c2.kill();
    drop(chengdu);
    drop(shanghai);
    let _ = std::fs::remove_dir_all(&tmp);
}
