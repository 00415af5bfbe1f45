//! The node agent (issue 17): a relay host governed by a control plane
//! elsewhere runs `slowpath agent` (its node key, no database) next to a
//! fastpath whose policy directory the agent keeps current. Checked with
//! the real binaries: the node's table arrives and logins under its
//! invites work; revocations through the API end sessions on the remote
//! node (20 rounds, p50/p99 printed); a wrong node key is refused and
//! nothing is written; the agent heartbeats with the fastpath's figures;
//! with the control plane killed the fastpath keeps enforcing the last
//! table, and once it is back the agent resumes.

mod harness;

use std::time::{Duration, Instant};

use bench::proc::free_port;
use harness::agent::{ended_within, invite, revoke, Host};
use harness::*;
use serde_json::json;

#[test]
fn a_remote_node_follows_its_control_plane_through_its_agent() {
    let mut sp = Slowpath::start(&Backend::Sqlite, &["--resolve-rate", "10000"]);
    let port = free_port();
    let token = "remote-node-token";
    let (node, key) = sp.node(json!({
        "name": "remote", "server_addr": "127.0.0.1", "server_port": port,
        "proxy_types": ["tcp"], "token": token,
    }));
    let node = node["id"].as_str().unwrap().to_owned();
    let host = Host::start(&[&sp], "remote", &key, port, token, true);

    // Invites made through the API reach the node; revoking one ends its
    // session there.
    let mut took = Vec::new();
    for round in 0..20 {
        let (id, o) = invite(&sp, &node, host.frp);
        let client = first_login(&o);
        let t0 = Instant::now();
        revoke(&sp, &id);
        let what = format!("round {round}");
        took.push(ended_within(
            &client,
            t0,
            Duration::from_secs(5),
            &what,
            &host,
        ));
    }
    took.sort();
    eprintln!(
        "revoked → session closed on the agent's node, 20 rounds: p50 {:?}, p99 {:?}",
        took[10], took[19]
    );
    assert!(took[19] < Duration::from_secs(1), "{took:?}");

    // The control plane's /metrics counts the agent (its next long poll
    // is open within moments of each answer) and what it was sent.
    let value = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let scrape = || {
        ureq::get(&format!("{}/metrics", sp.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    wait_within(
        Duration::from_secs(5),
        "the agent counted in /metrics",
        || value(&scrape(), "totoro_slowpath_agents_connected") == 1.0,
    );
    let metrics = scrape();
    assert!(
        value(&metrics, "totoro_slowpath_agent_tables_sent_total") >= 21.0,
        "{metrics}"
    );

    // A wrong key: refused, said, nothing written.
    let wrong = Host::start(&[&sp], "wrong", "nk_0000", free_port(), token, false);
    assert!(
        wrong
            .agent
            .wait_log("refuses this node key", Duration::from_secs(10)),
        "{}",
        wrong.agent_log()
    );
    assert!(!wrong.shm.join(shm::TABLE_FILE).exists());

    // The control plane dies: the node keeps enforcing its last table (a
    // ticket resolved before still logs in), and the agent says so.
    let (kept_id, kept) = invite(&sp, &node, host.frp);
    let before = first_login(&kept);

    // The agent heartbeats with seed 000 §3.3's figures, the session
    // just opened among them.
    wait_within(
        Duration::from_secs(10),
        "a heartbeat counting the session",
        || {
            let (st, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
            assert_eq!(st, 200, "{n}");
            let hb = &n["heartbeat"];
            n["status"] == "online"
                && hb["versions"]["agent"].is_string()
                && hb["connections"].as_u64() >= Some(1)
                && hb["mem_bytes"].as_u64() > Some(0)
                && hb["disk_total_bytes"].as_u64() > Some(0)
        },
    );
    sp.kill_hard();
    assert!(
        host.agent
            .wait_log("no policy from the control plane", Duration::from_secs(15)),
        "{}",
        host.agent_log()
    );
    assert!(
        !before.is_closed(),
        "a session ended when the control plane died"
    );
    // Back: the agent resumes, and a revocation reaches the node again.
    sp.restart();
    revoke(&sp, &kept_id);
    let what = "the agent resumed after the control plane came back";
    ended_within(
        &before,
        Instant::now(),
        Duration::from_secs(15),
        what,
        &host,
    );
}
