//! The operator verbs (`slowpath node|invite|audit|stats`) against a real
//! `slowpath serve`, on SQLite and PostgreSQL: they reach the API with the
//! admin key from the data directory and print what it answers; errors
//! exit non-zero naming the field.

mod harness;

use std::process::{Command, Output};

use harness::{each_backend, Backend, Slowpath};
use serde_json::Value;

fn run(sp: &Slowpath, args: &[&str]) -> Output {
    let dir = sp.dir.to_str().unwrap().to_owned();
    let mut full: Vec<&str> = args.to_vec();
    full.extend_from_slice(&["--api", &sp.base]);
    // `invite resolve` is anonymous and takes no key or data directory.
    if !args.starts_with(&["invite", "resolve"]) {
        full.extend_from_slice(&["--data-dir", &dir]);
    }
    Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args(&full)
        .env_remove("ADMIN_API_KEY")
        .output()
        .unwrap()
}

fn json_ok(sp: &Slowpath, args: &[&str]) -> Value {
    let out = run(sp, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn verbs(b: Backend) {
    let sp = Slowpath::start(&b, &[]);
    let nodes = json_ok(&sp, &["node", "list"]);
    assert_eq!(nodes[0]["id"], sp.local_node.as_str());

    let inv = json_ok(
        &sp,
        &[
            "invite",
            "create",
            "--max-uses",
            "2",
            "--max-conns",
            "1",
            "--port-pool",
            "10000-10009",
        ],
    );
    let id = inv["id"].as_str().unwrap().to_owned();
    let code = inv["code"].as_str().unwrap().to_owned();
    assert_eq!(inv["scope"]["port_pool"], "10000-10009");

    // resolve prints a frpc.toml that parses and carries the ticket.
    let out = run(&sp, &["invite", "resolve", &code]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml_text = String::from_utf8(out.stdout).unwrap();
    let cfg: toml::Table = toml::from_str(&toml_text).expect("frpc.toml parses");
    assert!(
        cfg["metadatas"]["ticket"]
            .as_str()
            .unwrap()
            .split('.')
            .count()
            == 3
    );

    let list = json_ok(&sp, &["invite", "list"]);
    assert_eq!(list[0]["used"], 1, "{list}");
    let revoked = json_ok(&sp, &["invite", "revoke", &id]);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    // audit prints one line per row: time, kind, node, invite, …, reason.
    let out = run(&sp, &["audit", "--kind", "invite.revoked"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("invite.revoked") && line.contains("revoked by admin"),
        "{line}"
    );
    let stats = json_ok(&sp, &["stats"]);
    assert_eq!(stats["invites"]["total"], 1, "{stats}");

    // Errors: non-zero exit, the field named.
    let out = run(&sp, &["invite", "create", "--port-pool", "1-2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scope.port_pool"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args(["stats", "--api", &sp.base, "--admin-key", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

#[test]
fn operator_verbs_drive_the_api() {
    each_backend("cli", verbs);
}

fn mesh_verbs(b: Backend) {
    let sp = Slowpath::start(&b, &[]);
    let net = json_ok(&sp, &["mesh", "network", "create", "lab", "10.100.0.0/16"]);
    assert_eq!(
        (net["name"].as_str(), net["subnet"].as_str()),
        (Some("lab"), Some("10.100.0.0/16"))
    );
    let list = json_ok(&sp, &["mesh", "network", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let cfg = json_ok(
        &sp,
        &[
            "mesh",
            "config",
            "require_authorization=false",
            "keepalive_interval_seconds=30",
        ],
    );
    assert_eq!(cfg["require_authorization"], "false");
    assert_eq!(cfg["keepalive_interval_seconds"], "30");
    let status = json_ok(&sp, &["mesh", "status"]);
    assert_eq!(status["networks"], 2);
    assert_eq!(
        json_ok(&sp, &["mesh", "node", "list", "--network", "2"]),
        serde_json::json!([])
    );
    // Refusals exit non-zero with the API's words.
    let out = run(&sp, &["mesh", "network", "create", "x", "10.100.0.1/16"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 400"),
        "{out:?}"
    );
    let out = run(&sp, &["mesh", "node", "authorize", "9"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 404"),
        "{out:?}"
    );
    let out = run(&sp, &["mesh", "config", "nonsense"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key=value"),
        "{out:?}"
    );
    let out = run(&sp, &["mesh", "network", "delete", "2"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");

    // Servers: add (its token printed once), disable, a new token, the
    // blacklist with the old one in it, delete.
    let added = json_ok(
        &sp,
        &[
            "mesh",
            "server",
            "add",
            "--name",
            "relay-1",
            "--url",
            "wss://relay.example.com/ws/data",
            "--capability",
            "relay,stun",
            "--stun-ip",
            "203.0.113.7",
            "--region",
            "eu",
        ],
    );
    let sid = added["server"]["id"].as_u64().unwrap().to_string();
    assert_eq!(
        added["server"]["capabilities"],
        serde_json::json!(["relay", "stun"])
    );
    assert_eq!(added["server"]["stun_port"], 3478);
    assert!(
        added["token"].as_str().unwrap().starts_with("ey"),
        "{added}"
    );
    let off = json_ok(&sp, &["mesh", "server", "disable", &sid]);
    assert_eq!(off["enabled"], false);
    let shown = json_ok(&sp, &["mesh", "server", "show", &sid]);
    assert_eq!(shown["enabled"], false);
    let renewed = json_ok(&sp, &["mesh", "token", "generate", "--server", &sid]);
    assert_ne!(renewed["token"], added["token"]);
    let listed = json_ok(&sp, &["mesh", "token", "blacklist"]);
    assert_eq!(
        listed["entries"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    json_ok(
        &sp,
        &[
            "mesh",
            "token",
            "blacklist",
            "--add",
            "jti-1",
            "--reason",
            "leaked",
        ],
    );
    let listed = json_ok(&sp, &["mesh", "token", "blacklist"]);
    assert_eq!(
        listed["entries"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let out = run(
        &sp,
        &[
            "mesh",
            "server",
            "add",
            "--name",
            "s",
            "--capability",
            "turn",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("capabilities"),
        "{out:?}"
    );
    let out = run(&sp, &["mesh", "server", "delete", &sid]);
    assert!(out.status.success());
    assert_eq!(
        json_ok(&sp, &["mesh", "server", "list"]),
        serde_json::json!([])
    );
}

#[test]
fn mesh_verbs_drive_the_mesh_api() {
    each_backend("cli_mesh", mesh_verbs);
}

#[test]
fn help_lists_every_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for verb in [
        "up", "serve", "node", "invite", "audit", "stats", "mesh", "fastpath",
    ] {
        assert!(
            help.contains(&format!("\n  {verb} ")),
            "{verb} missing from:\n{help}"
        );
    }
    // The data plane runs from this binary with its own flags.
    let out = Command::new(env!("CARGO_BIN_EXE_slowpath"))
        .args(["fastpath", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--stats-file"));
}

/// A clean `slowpath up` warns about nothing: the fastpath loads the first
/// table once (issue 12: it used to load it twice and log `WARN policy table
/// refused … generation N is not newer than N` on every start).
#[test]
fn a_clean_up_logs_no_warning() {
    let sp = Slowpath::up(&Backend::Sqlite, &[]);
    sp.wait_frp();
    harness::wait_until("the fastpath to report its table in force", || {
        sp.log().contains("policy table in force")
    });
    // Past a few ticks of the fastpath's table watcher and the
    // slowpath's first publish cycle.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let log = sp.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        warnings.is_empty(),
        "a clean start warned:\n{}",
        warnings.join("\n")
    );
}

/// The compose delivery's fastpath.toml, as shipped, names a placeholder
/// frp token: the control plane refuses to start on it, naming the key,
/// rather than put a node live with a token everyone can read.
#[test]
fn the_shipped_compose_config_is_refused_until_its_token_is_set() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/compose/fastpath.toml"
    );
    let err = harness::start_fails(&["--fastpath-config", shipped]);
    assert!(err.contains("auth.token is still the placeholder"), "{err}");
}
