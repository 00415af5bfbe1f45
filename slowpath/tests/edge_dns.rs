//! Issue 16: seed 004's DNS manager against a real authoritative server,
//! Debian's `knotd`. Routes under the managed zone get A and AAAA records
//! for the edge's addresses through RFC 2136 updates signed with TSIG, and
//! lose them when the route goes; hostnames under the zone need no domain
//! verification. A slowpath holding the wrong key changes nothing: its
//! update is refused, reported on the record, in `/healthz` and in the
//! audit log, and the zone is as before.
//!
//! Without knotd/kdig the test prints a SKIPPED line, except under CI
//! (env `CI`), where that is a failure: `.ci/edge.sh` installs them.

mod harness;

use std::time::{Duration, Instant};

use harness::dns::{have, Knot};
use harness::{wait_audit, wait_within, Backend, Slowpath};
use serde_json::{json, Value};

fn key_file(dir: &std::path::Path, name: &str, key: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, key.as_bytes()).unwrap();
    path.display().to_string()
}

fn route(sp: &Slowpath, host: &str, origin: &Value) -> (u16, Value) {
    sp.admin_call(
        "POST",
        "/api/v1/routes",
        Some(json!({ "hostname": host, "origin_id": origin["id"], "target_port": 8080 })),
    )
}

/// `slowpath up` managing zone hoge.test on `server` with the TSIG key in
/// `key_file`, its records pointing at `addresses`; and an address origin
/// at `origin_ip`.
fn managing(
    server: &str,
    key_file: &str,
    addresses: &[&str],
    origin_ip: &str,
) -> (Slowpath, Value) {
    let mut args = vec![
        "--dns-zone",
        "hoge.test",
        "--dns-server",
        server,
        "--dns-tsig-key-file",
        key_file,
    ];
    for a in addresses {
        args.extend(["--dns-address", a]);
    }
    let sp = Slowpath::up(&Backend::Sqlite, &args);
    let (st, origin) = sp.admin_call(
        "POST",
        "/api/v1/origins",
        Some(json!({ "name": "home", "wireguard_ip": origin_ip })),
    );
    assert_eq!(st, 201, "{origin}");
    (sp, origin)
}

fn records(sp: &Slowpath) -> Value {
    let (st, v) = sp.admin_call("GET", "/api/v1/dns/records", None);
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn routes_under_the_managed_zone_get_records_by_signed_dynamic_updates() {
    if !have(&["knotd", "kdig"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("totoro-knot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let knot = Knot::start(&dir, "hoge.test");
    let server = format!("127.0.0.1:{}", knot.port);
    let key = key_file(&dir, "tsig.key", &knot.key);
    let (sp, origin) = managing(&server, &key, &["192.0.2.10", "2001:db8::10"], "10.8.0.2");

    // Under the zone: official, routed without verification, and in DNS
    // soon after (a route change passes at once).
    let started = Instant::now();
    let (st, r) = route(&sp, "app.hoge.test", &origin);
    assert_eq!(st, 201, "{r}");
    wait_within(Duration::from_secs(10), "app.hoge.test's records", || {
        knot.query("app.hoge.test", "A") == ["192.0.2.10"]
            && knot.query("app.hoge.test", "AAAA") == ["2001:db8::10"]
    });
    println!(
        "records in the zone {:?} after the route",
        started.elapsed()
    );
    let (st, r2) = route(&sp, "api.hoge.test", &origin);
    assert_eq!(st, 201, "{r2}");
    wait_within(Duration::from_secs(10), "api.hoge.test's record", || {
        knot.query("api.hoge.test", "A") == ["192.0.2.10"]
    });
    let v = records(&sp);
    let list = v["records"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert!(list.iter().all(|r| r["status"] == "present"), "{v}");
    assert_eq!(
        list[0]["addresses"],
        json!(["192.0.2.10", "2001:db8::10"]),
        "{v}"
    );
    assert_eq!(v["manager"]["zone"], "hoge.test");
    wait_audit(&sp, "edge.dns.set", |r| {
        r["detail"]["hostname"] == "app.hoge.test"
    });

    // Outside the zone and unverified: refused, and nothing in DNS.
    let (st, v) = route(&sp, "app.other.test", &origin);
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["field"], "hostname", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no verified domain"),
        "{v}"
    );
    // The zone is official: adding it as a domain to verify is refused.
    let (st, v) = sp.admin_call(
        "POST",
        "/api/v1/domains",
        Some(json!({ "domain": "hoge.test" })),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "domain", "{v}");

    // The route goes: so do its records; the other stays.
    let (st, _) = sp.admin_call(
        "DELETE",
        &format!("/api/v1/routes/{}", r["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 204);
    wait_within(
        Duration::from_secs(10),
        "app.hoge.test's records gone",
        || {
            knot.query("app.hoge.test", "A").is_empty()
                && knot.query("app.hoge.test", "AAAA").is_empty()
        },
    );
    assert_eq!(knot.query("api.hoge.test", "A"), ["192.0.2.10"]);
    wait_audit(&sp, "edge.dns.deleted", |r| {
        r["detail"]["hostname"] == "app.hoge.test"
    });
    assert_eq!(records(&sp)["records"].as_array().unwrap().len(), 1);

    // A control plane with the wrong key: the server refuses its update,
    // the record says why, /healthz counts it, and the zone is unchanged.
    let wrong = key_file(
        &dir,
        "wrong.key",
        "hmac-sha256:totoro-key:d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZy0hIQ==",
    );
    let (sp2, origin2) = managing(&server, &wrong, &["192.0.2.99"], "10.8.0.3");
    let (st, v) = route(&sp2, "bad.hoge.test", &origin2);
    assert_eq!(st, 201, "{v}");
    wait_within(
        Duration::from_secs(10),
        "the refused update on record",
        || records(&sp2)["records"][0]["status"] == "failed",
    );
    let rec = records(&sp2);
    let why = rec["records"][0]["last_error"].as_str().unwrap().to_owned();
    assert!(why.contains("NOTAUTH"), "{rec}");
    println!("wrong key: {why}");
    let (_, health) = sp2.call("GET", "/healthz", None, None);
    assert!(health["dns"]["failed"].as_u64().unwrap() >= 1, "{health}");
    wait_audit(&sp2, "edge.dns.failed", |r| {
        r["detail"]["hostname"] == "bad.hoge.test"
    });
    assert!(knot.query("bad.hoge.test", "A").is_empty());
    assert_eq!(knot.query("api.hoge.test", "A"), ["192.0.2.10"]);
    // knotd applied the three signed updates and nothing else.
    assert_eq!(
        knot.log().matches("DDNS, finished").count(),
        3,
        "knot's log: {}",
        knot.log()
    );
    drop(sp2);
    drop(sp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dns_flags_are_checked_at_start() {
    let dir = std::env::temp_dir().join(format!("totoro-dnsflags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let loose = dir.join("loose.key");
    std::fs::write(
        &loose,
        "totoro-key:c2VjcmV0LWZvci10b3Rvcm8tdGVzdHMtMzItYnl0ZXMhIQ==",
    )
    .unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bad_key = key_file(
        &dir,
        "bad.key",
        "hmac-md5:k:c2VjcmV0LWZvci10b3Rvcm8tdGVzdHMtMzItYnl0ZXMhIQ==",
    );
    for (args, want) in [
        (vec!["--dns-zone", "hoge.test"], "--dns-server"),
        (
            vec!["--dns-zone", "Hoge.test", "--dns-server", "127.0.0.1"],
            "--dns-zone",
        ),
        (
            vec!["--dns-zone", "hoge.test", "--dns-server", "nameserver"],
            "--dns-server",
        ),
        (
            vec![
                "--dns-zone",
                "hoge.test",
                "--dns-server",
                "127.0.0.1",
                "--dns-tsig-key-file",
                loose.to_str().unwrap(),
            ],
            "readable or writable by other users",
        ),
        (
            vec![
                "--dns-zone",
                "hoge.test",
                "--dns-server",
                "127.0.0.1",
                "--dns-tsig-key-file",
                &bad_key,
            ],
            "not supported",
        ),
    ] {
        let err = harness::start_fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
