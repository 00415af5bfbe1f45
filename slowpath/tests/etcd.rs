//! The etcd tenant source against a real etcd (seed 002): initial load,
//! watch updates, bad records skipped and named, outages survived with the
//! last map, reconnects that catch up, password auth and client-certificate
//! TLS. Each test starts its own etcd; without etcd installed they print a
//! SKIPPED line (under CI they fail).

mod harness;

use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use harness::etcd::Etcd;
use slowpath::etcd::{self, EtcdConfig, EtcdHandle, EtcdHealth, TenantMap};

const WAIT: Duration = Duration::from_secs(20);

fn config(endpoints: &[String], extra: &str) -> EtcdConfig {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "bindPort = 7000\n[etcd]\nendpoints = [{}]\nregion = \"chengdu\"\ndialTimeout = 2\n{extra}",
        list.join(", ")
    );
    let (file, unknown) = proto::config::Config::from_toml(&text).unwrap();
    EtcdConfig::from_config(&file, &unknown).unwrap().unwrap()
}

/// The source, with every map it hands over arriving on a channel.
fn start(cfg: EtcdConfig) -> (EtcdHandle, Receiver<TenantMap>) {
    let (tx, rx) = channel();
    let handle = etcd::spawn(cfg, move |map| {
        let _ = tx.send(map);
    });
    (handle, rx)
}

/// Waits for a map that satisfies `want`; no map on the way may be empty
/// unless `want` accepts it.
fn wait_map(rx: &Receiver<TenantMap>, what: &str, want: impl Fn(&TenantMap) -> bool) -> TenantMap {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(map) if want(&map) => return map,
            Ok(map) => seen.push(map.keys().cloned().collect::<Vec<_>>()),
            Err(_) => panic!("no map with {what}; saw {seen:?}"),
        }
    }
}

fn wait_health(h: &EtcdHandle, what: &str, want: impl Fn(&EtcdHealth) -> bool) -> EtcdHealth {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = h.health();
        if want(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "health never showed {what}: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn record(region: &str, ports: &str) -> String {
    format!(
        r#"{{"region":"{region}","allowPorts":[{ports}],"bandwidthLimit":"10MB","maxPortsPerClient":5,"enabled":true}}"#
    )
}

#[test]
fn loads_then_follows_puts_updates_and_deletes() {
    let Some(etcd) = Etcd::start("etcd_follows") else {
        return;
    };
    etcd.put(
        "/frp/tokens/user1_chengdu",
        &record("chengdu", r#"{"single":8080},{"start":9000,"end":9100}"#),
    );
    etcd.put(
        "/frp/tokens/broken",
        r#"{"region":"chengdu","enabled":"yes"}"#,
    );
    etcd.put("/other/prefix/x", &record("chengdu", ""));
    let (source, rx) = start(config(&[etcd.endpoint()], ""));

    let map = wait_map(&rx, "the initial load", |m| !m.is_empty());
    assert_eq!(map.keys().collect::<Vec<_>>(), ["user1_chengdu"]);
    let t = &map["user1_chengdu"];
    assert_eq!(t.record.token, "user1_chengdu", "token taken from the key");
    assert!(t.allow_ports.contains(9050) && !t.allow_ports.contains(8081));
    let h = wait_health(&source, "connected", |h| h.connected);
    assert_eq!(h.tenants, 1);
    assert_eq!(h.skipped.len(), 1, "{h:?}");
    assert_eq!(h.skipped[0].key, "/frp/tokens/broken");
    assert!(h.skipped[0].reason.starts_with("enabled"), "{h:?}");
    assert_eq!(h.last_error, None);
    assert!(h.endpoint.ends_with(&etcd.endpoint()), "{h:?}");

    // put
    let rev = etcd.put("/frp/tokens/user2", &record("shanghai", ""));
    let map = wait_map(&rx, "user2", |m| m.contains_key("user2"));
    assert_eq!(map["user2"].record.region, "shanghai");
    assert!(map.contains_key("user1_chengdu"));
    wait_health(&source, "the put's revision", |h| h.revision >= rev);

    // update
    etcd.put(
        "/frp/tokens/user2",
        &record("chengdu", r#"{"single":7001}"#),
    );
    let map = wait_map(&rx, "user2 updated", |m| {
        m.get("user2").is_some_and(|t| t.record.region == "chengdu")
    });
    assert!(map["user2"].allow_ports.contains(7001));

    // fixing the broken record loads it and clears the skip
    etcd.put("/frp/tokens/broken", &record("chengdu", ""));
    wait_map(&rx, "broken fixed", |m| m.contains_key("broken"));
    wait_health(&source, "no skipped keys", |h| {
        h.skipped.is_empty() && h.tenants == 3
    });

    // delete
    etcd.delete("/frp/tokens/user2");
    let map = wait_map(&rx, "user2 deleted", |m| !m.contains_key("user2"));
    assert_eq!(map.len(), 2);

    // A bad value over a good one: that tenant goes, the others stay.
    etcd.put("/frp/tokens/broken", r#"{"region":"chengdu","nope":1}"#);
    let map = wait_map(&rx, "broken dropped", |m| !m.contains_key("broken"));
    assert!(map.contains_key("user1_chengdu"));
    let h = wait_health(&source, "broken skipped", |h| h.skipped.len() == 1);
    assert!(h.skipped[0].reason.contains("nope"), "{h:?}");

    source.stop();
    etcd.put("/frp/tokens/after_stop", &record("chengdu", ""));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_iter().all(|m| !m.contains_key("after_stop")),
        "no map after stop"
    );
}

#[test]
fn keeps_the_last_map_while_etcd_is_down_and_catches_up_on_reconnect() {
    let Some(mut etcd) = Etcd::start("etcd_outage") else {
        return;
    };
    let port = etcd.client_port;
    etcd.put("/frp/tokens/a", &record("chengdu", ""));
    etcd.put("/frp/tokens/b", &record("chengdu", ""));
    let (source, rx) = start(config(&[etcd.endpoint()], ""));
    wait_map(&rx, "a and b", |m| m.len() == 2);
    let up = wait_health(&source, "connected", |h| h.connected);

    etcd.kill();
    let down = wait_health(&source, "disconnected", |h| !h.connected);
    assert!(down.last_error.is_some(), "{down:?}");
    assert!(down.since_ms >= up.since_ms);
    assert_eq!(down.tenants, 2, "the last map is kept: {down:?}");

    // Change the keys where the source cannot see them (etcd on another
    // port, same data), then bring etcd back where the source looks.
    etcd.restart_on(Etcd::unused_port());
    etcd.delete("/frp/tokens/a");
    etcd.put("/frp/tokens/c", &record("chengdu", ""));
    etcd.put("/frp/tokens/b", &record("shanghai", ""));
    etcd.kill();
    assert!(
        rx.try_iter().all(|m| m.len() == 2),
        "while etcd was away the map must not change (and never be empty)"
    );
    etcd.restart_on(port);

    let map = wait_map(&rx, "the changes made meanwhile", |m| {
        m.contains_key("c") && !m.contains_key("a")
    });
    assert_eq!(map["b"].record.region, "shanghai");
    let h = wait_health(&source, "reconnected", |h| h.connected);
    assert_eq!(h.last_error, None);
    assert_eq!(h.tenants, 2);

    // And it watches again after the reconnect.
    etcd.put("/frp/tokens/d", &record("chengdu", ""));
    wait_map(&rx, "d", |m| m.contains_key("d"));
    source.stop();
}

#[test]
fn tries_endpoints_in_turn_and_authenticates() {
    let Some(mut etcd) = Etcd::start("etcd_auth") else {
        return;
    };
    etcd.put("/frp/tokens/a", &record("chengdu", ""));
    etcd.enable_auth("s3cret");
    let dead = format!("127.0.0.1:{}", Etcd::unused_port());

    // Wrong password: the error says so, nothing is handed over.
    let (bad, bad_rx) = start(config(
        &[etcd.endpoint()],
        "username = \"root\"\npassword = \"wrong\"",
    ));
    let h = wait_health(&bad, "an auth error", |h| h.last_error.is_some());
    assert!(!h.connected);
    let err = h.last_error.unwrap();
    assert!(err.contains("authenticate"), "{err}");
    assert!(bad_rx.try_recv().is_err());
    bad.stop();

    // Without credentials etcd refuses the listing.
    let (anon, _anon_rx) = start(config(&[etcd.endpoint()], ""));
    let h = wait_health(&anon, "a refusal", |h| h.last_error.is_some());
    assert!(h.last_error.unwrap().contains("range"), "listing refused");
    anon.stop();

    // Right password, behind a dead endpoint.
    let (source, rx) = start(config(
        &[dead, etcd.endpoint()],
        "username = \"root\"\npassword = \"s3cret\"",
    ));
    wait_map(&rx, "a", |m| m.contains_key("a"));
    etcd.put("/frp/tokens/b", &record("chengdu", ""));
    wait_map(&rx, "b", |m| m.contains_key("b"));
    let h = wait_health(&source, "connected", |h| h.connected);
    assert!(h.endpoint.ends_with(&etcd.endpoint()), "{h:?}");
    source.stop();
}

#[test]
fn client_certificate_tls() {
    let Some(etcd) = Etcd::start_tls("etcd_tls") else {
        return;
    };
    etcd.put("/frp/tokens/a", &record("chengdu", ""));
    let tls = etcd.tls.as_ref().unwrap();
    let extra = format!(
        "[etcd.tls]\ncertFile = {:?}\nkeyFile = {:?}\ncaFile = {:?}\n",
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
        tls.ca.display().to_string(),
    );
    let cfg = config(&[etcd.endpoint()], &extra);
    assert!(cfg.endpoints[0].starts_with("https://"), "{cfg:?}");
    let (source, rx) = start(cfg);
    wait_map(&rx, "a", |m| m.contains_key("a"));
    etcd.put("/frp/tokens/b", &record("chengdu", ""));
    wait_map(&rx, "b", |m| m.contains_key("b"));
    source.stop();

    // Without the client certificate etcd refuses the handshake.
    let extra = format!("[etcd.tls]\ncaFile = {:?}\n", tls.ca.display().to_string());
    let (source, rx) = start(config(&[etcd.endpoint()], &extra));
    let h = wait_health(&source, "an error", |h| h.last_error.is_some());
    assert!(!h.connected && rx.try_recv().is_err(), "{h:?}");
    source.stop();
}
