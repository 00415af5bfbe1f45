//! Issue 11, findings 6 and 7, end to end against the real `slowpath up`
//! (with its fastpath child) and `slowpath serve`:
//!
//! - a node token with a control character is refused by the API (400
//!   naming `token`), and a token that is allowed but awkward for a format
//!   string (a combining accent, `#`, `]]`, a quote of the other kind) goes
//!   into `fastpath.toml` as TOML: after a restart the file parses back to
//!   the same token and the fastpath it configures serves logins with it;
//! - the demo invite `up` creates is limited (uses, hours, sessions,
//!   proxies), lists only the proxy types the fastpath serves, says its
//!   limits in the printed frpc.toml, and refuses a session past its cap;
//! - invites created without limits get the documented defaults, through
//!   the API and through `slowpath invite create`.

mod harness;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench::client::ClientOpts;
use harness::login;
use harness::{Backend, Slowpath};
use serde_json::{json, Value};

/// SIGKILLs the fastpath that `up` started for the data directory `dir`,
/// found in /proc by its command line (`-c DIR/fastpath.toml`): a
/// fastpath outlives its slowpath by design, and this test restarts both.
fn kill_fastpath(dir: &Path) -> usize {
    let config = dir.join("fastpath.toml");
    let config = config.to_str().unwrap();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"fastpath"[..]) && args.contains(&config.as_bytes()) {
            // SAFETY: signalling the fastpath this test's slowpath started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

/// Kills the fastpath of a data directory when the test ends, pass or
/// fail; declared before the `Slowpath` so that it runs after its drop.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        kill_fastpath(&self.0);
    }
}

/// Stops `up` and its fastpath, runs `between` on the data directory, and
/// starts `up` again with the same flags.
fn restart_up(sp: &mut Slowpath, between: impl FnOnce(&Path)) {
    sp.kill_hard();
    assert_eq!(
        kill_fastpath(&sp.dir),
        1,
        "no fastpath found for {:?}",
        sp.dir
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(sp.frp_addr()).is_ok() {
        assert!(Instant::now() < deadline, "old fastpath still listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    between(&sp.dir);
    sp.restart();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn node_tokens_reach_fastpath_toml_as_toml() {
    let mut sp = Slowpath::up(&Backend::Sqlite, &[]);
    let _reaper = Reaper(sp.dir.clone());
    sp.wait_frp();
    let path = format!("/api/v1/admin/nodes/{}", sp.local_node);

    // Control characters are refused, naming the field.
    for bad in ["ab\u{1}cd", "ab\u{7f}cd", "tab\there", "new\nline\"quote"] {
        let (st, v) = sp.admin_call("PATCH", &path, Some(json!({ "token": bad })));
        assert_eq!(st, 400, "token {bad:?} accepted: {v}");
        assert_eq!(v["field"], "token", "{v}");
    }

    // Allowed, and hostile to a format string: Rust's `{:?}` writes the
    // combining accent as `\u{301}`, which TOML cannot read.
    let token = "tok#]]'e\u{301} \u{2603}=[x]";
    let (st, v) = sp.admin_call(
        "PATCH",
        &path,
        Some(json!({ "token": token, "public": true })),
    );
    assert_eq!(st, 200, "{v}");

    // `up` writes fastpath.toml at start: restart it, fastpath included.
    restart_up(&mut sp, |_| {});

    let text = std::fs::read_to_string(sp.dir.join("fastpath.toml")).unwrap();
    let cfg: toml::Table = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("fastpath.toml is not TOML ({e}):\n{text}"));
    assert_eq!(cfg["auth"]["token"].as_str(), Some(token), "{text}");

    // The fastpath it configures runs (no exit-2 restart loop) and takes
    // the token.
    sp.wait_frp();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match login(&ClientOpts::new(sp.frp_addr(), token)) {
            Ok(_) => break,
            Err(r) if Instant::now() < deadline => {
                eprintln!("login with the new token: {r}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(r) => panic!("login with the new token: {r}\n{}", sp.log()),
        }
    }
}

#[test]
fn the_demo_invite_is_limited_and_says_so() {
    let mut sp = Slowpath::up(&Backend::Sqlite, &[]);
    let _reaper = Reaper(sp.dir.clone());
    sp.wait_frp();
    let (st, list) = sp.admin_call("GET", "/api/v1/admin/invites", None);
    assert_eq!(st, 200, "{list}");
    let invites = list.as_array().unwrap();
    assert_eq!(invites.len(), 1, "{list}");
    let demo = &invites[0];
    assert_eq!(demo["max_uses"], 5, "{demo}");
    assert_eq!(demo["used"], 1, "{demo}");
    assert_eq!(demo["scope"]["max_conns"], 2, "{demo}");
    assert_eq!(demo["scope"]["max_proxies"], 10, "{demo}");
    assert_eq!(
        demo["scope"]["proxy_types"],
        json!(["tcp", "udp"]),
        "{demo}"
    );
    let left = demo["expires_ms"].as_i64().unwrap() - now_ms();
    assert!(
        (23 * 3_600_000..=24 * 3_600_000).contains(&left),
        "demo invite expires in {left} ms: {demo}"
    );

    // The printed frpc.toml: only served types (the node's tcp and udp),
    // its limits, the way to a real invite.
    let text = std::fs::read_to_string(sp.dir.join("frpc-demo.toml")).unwrap();
    assert!(text.contains("Allowed: types tcp,udp;"), "{text}");
    assert!(text.contains("slowpath invite create"), "{text}");
    assert!(text.contains("at most 5 resolves"), "{text}");
    let cfg: toml::Table = toml::from_str(&text).expect("frpc-demo.toml parses");
    for p in cfg["proxies"].as_array().unwrap() {
        assert_eq!(p["type"].as_str(), Some("tcp"), "{text}");
    }

    // Its ticket logs in max_conns times, then is refused.
    let mut opts = ClientOpts::new(sp.frp_addr(), cfg["auth"]["token"].as_str().unwrap());
    opts.metas.insert(
        "ticket".into(),
        cfg["metadatas"]["ticket"].as_str().unwrap().into(),
    );
    let a = login(&opts).expect("first demo session");
    let b = login(&opts).expect("second demo session");
    match login(&opts) {
        Ok(c) => panic!("third demo session accepted (run_id {})", c.run_id()),
        Err(r) => assert!(r.contains("max_conns"), "{r}"),
    }
    drop((a, b));

    // A demo invite as older versions made it (unlimited, a year) is
    // revoked at the next start and a limited one takes its place.
    restart_up(&mut sp, |dir| {
        let db = format!("sqlite://{}", dir.join("totoro.db").display());
        harness::admin_sql(
            &db,
            "UPDATE invites SET max_uses = 0, max_conns = 0, max_proxies = 0, \
             proxy_types = 'tcp,udp', expires_ms = expires_ms + 364 * 86400000",
        );
    });
    let old_id = demo["id"].as_str().unwrap();
    let (st, list) = sp.admin_call("GET", "/api/v1/admin/invites", None);
    assert_eq!(st, 200, "{list}");
    let invites = list.as_array().unwrap();
    assert_eq!(invites.len(), 2, "{list}");
    for inv in invites {
        if inv["id"] == old_id {
            assert_eq!(inv["status"], "revoked", "{inv}");
        } else {
            assert_eq!(inv["status"], "active", "{inv}");
            assert_eq!(inv["max_uses"], 5, "{inv}");
            assert_eq!(inv["scope"]["max_conns"], 2, "{inv}");
        }
    }
    let text = std::fs::read_to_string(sp.dir.join("frpc-demo.toml")).unwrap();
    assert!(text.contains("at most 5 resolves (1 used)"), "{text}");
    assert!(text.contains("Allowed: types tcp,udp;"), "{text}");
}

fn assert_defaults(inv: &Value) {
    assert_eq!(inv["max_uses"], 1, "{inv}");
    assert_eq!(inv["ticket_ttl_s"], 1800, "{inv}");
    assert_eq!(inv["scope"]["max_conns"], 2, "{inv}");
    assert_eq!(inv["scope"]["max_proxies"], 10, "{inv}");
    let left = inv["expires_ms"].as_i64().unwrap() - now_ms();
    assert!(
        (7 * 86_400_000 - 60_000..=7 * 86_400_000).contains(&left),
        "expires in {left} ms: {inv}"
    );
}

#[test]
fn invites_without_limits_get_the_documented_defaults() {
    let sp = Slowpath::start(&Backend::Sqlite, &[]);
    let (node, key) = sp.node(json!({ "name": "relay-d", "server_addr": "relay.example" }));
    let node_id = node["id"].as_str().unwrap();

    let (st, inv) = sp.invite(&key, json!({}));
    assert_eq!(st, 201, "{inv}");
    assert_defaults(&inv);
    let (st, inv) = sp.admin_call(
        "POST",
        &format!("/api/v1/admin/nodes/{node_id}/invites"),
        Some(json!({ "scope": { "port_pool": "10000-10009" } })),
    );
    assert_eq!(st, 201, "{inv}");
    assert_defaults(&inv);

    // Explicit 0 still means unlimited, as documented.
    let (st, inv) = sp.invite(
        &key,
        json!({ "max_uses": 0, "scope": { "max_conns": 0, "max_proxies": 0 } }),
    );
    assert_eq!(st, 201, "{inv}");
    assert_eq!(inv["max_uses"], 0, "{inv}");
    assert_eq!(inv["scope"]["max_conns"], 0, "{inv}");
    assert_eq!(inv["scope"]["max_proxies"], 0, "{inv}");

    // The operator verb sends only what it is given.
    let out = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args(["invite", "create", "--node", node_id, "--api", &sp.base])
        .arg("--data-dir")
        .arg(&sp.dir)
        .env_remove("ADMIN_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_defaults(&inv);

    // The OpenAPI document says the same defaults.
    let (st, doc) = sp.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(st, 200);
    let schema = &doc["components"]["schemas"]["NewInvite"]["properties"];
    assert_eq!(schema["max_uses"]["default"], 1, "{schema}");
    assert_eq!(schema["ttl_s"]["default"], 7 * 86_400, "{schema}");
    assert_eq!(schema["scope"]["properties"]["max_conns"]["default"], 2);
    assert_eq!(schema["scope"]["properties"]["max_proxies"]["default"], 10);
    let create = &doc["paths"]["/api/v1/nodes/invites"]["post"]["requestBody"];
    assert_eq!(
        create["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewInvite"
    );
}
