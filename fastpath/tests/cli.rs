//! The command line and config contract: --help/--version, config errors
//! naming the key with exit code 2, unknown keys warned about, and the
//! work-connection pool cap.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bench::client::Client;
use common::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fastpath"))
}

#[test]
fn help_and_version() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.contains("--workers"),
        "{text}"
    );
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn run_with(config: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "totoro-cli-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin()).arg("-c").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_values_exit_2_naming_the_key() {
    for (cfg, key) in [
        ("bindPort = 99999", "bindPort"),
        ("bindAddr = \"not-an-ip\"", "bindAddr"),
        ("auth.method = \"oidc\"", "auth.method"),
        ("allowPorts = [{ start = 10, end = 1 }]", "allowPorts"),
        (
            "transport.heartbeatTimeout = 0",
            "transport.heartbeatTimeout",
        ),
        ("log.level = \"chatty\"", "log.level"),
        ("[fastpath]\nworkers = 5000", "fastpath.workers"),
        ("bindPort = \"seven\"", "bindPort"),
        (
            "transport.tls.trustedCaFile = \"/etc/ca.pem\"",
            "transport.tls.trustedCaFile",
        ),
        (
            "custom404Page = \"/nonexistent/totoro-404.html\"",
            "custom404Page",
        ),
        ("vhostHTTPTimeout = -1", "vhostHTTPTimeout"),
    ] {
        let (code, err) = run_with(cfg);
        assert_eq!(code, Some(2), "{cfg}: {err}");
        assert!(
            err.contains(key),
            "{cfg}: message does not name {key}: {err}"
        );
    }
    let (code, err) = run_with("this is = = not toml");
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn unknown_keys_are_warned_about() {
    let fp = Fastpath::start("webServer.port = 7500\nnoSuchKey = true", 1);
    assert!(fp
        .daemon
        .wait_log("unknown config keys", Duration::from_secs(5)));
    assert!(fp.daemon.log().iter().any(|l| l.contains("noSuchKey")));
}

#[test]
fn pool_is_capped_by_max_pool_count() {
    let fp = Fastpath::start("transport.maxPoolCount = 3", 1);
    let mut o = fp.opts();
    o.pool_count = 50;
    let c = Client::login(o).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while c.work_conns() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.work_conns(),
        3,
        "frpc asked for 50; the server must request only maxPoolCount"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_fields_named() {
    let port = bench::proc::free_port();
    let fp = Fastpath::start(
        &format!(
            "log.format = \"json\"\nfastpath.nodeId = \"node-json\"\nallowPorts = [{{ single = {port} }}]"
        ),
        1,
    );
    let echo = bench::backend::Backend::echo().unwrap();
    let c = Client::login(fp.opts()).unwrap();
    tcp_proxy(&c, "web", i64::from(port), echo.addr(), false, false);
    let refused = c.add_proxy(bench::client::ProxySpec {
        name: "outside".into(),
        remote_port: i64::from(port) + 1,
        local: echo.addr(),
        use_encryption: false,
        use_compression: false,
        server_bandwidth_limit: String::new(),
    });
    assert!(refused.is_err());
    assert!(fp.daemon.wait_log("proxy refused", Duration::from_secs(5)));
    let lines = fp.daemon.log();
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for o in &objects {
        assert_eq!(o["node_id"], "node-json", "{o}");
        assert!(
            o["ts"].is_string() && o["level"].is_string() && o["msg"].is_string(),
            "{o}"
        );
    }
    let find = |msg: &str| {
        objects
            .iter()
            .find(|o| o["msg"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line in {lines:#?}"))
    };
    assert_eq!(find("proxy registered")["proxy_name"], "web");
    assert_eq!(find("proxy registered")["port"], port);
    let r = find("proxy refused");
    assert_eq!(r["proxy_name"], "outside");
    assert_eq!(r["level"], "info");
    assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert!(find("client logged in")["session"].is_string());
}
