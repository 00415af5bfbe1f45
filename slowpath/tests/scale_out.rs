//! Several control planes on one PostgreSQL (issue 17): two `slowpath up`
//! share a database, each with its own data directory, node and fastpath.
//! An invite made through the first for the second's node reaches that
//! node's table, and revoking it through the first ends its session on
//! the second's fastpath: 100 times, with the p50 and p99 printed.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;

/// The PostgreSQL server's URL (None, and a skip line, without one; CI
/// always has one).
fn postgres(test: &str) -> Option<String> {
    match std::env::var("TOTORO_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run {test} on PostgreSQL"
            );
            eprintln!("[{test}] SKIPPED (TOTORO_TEST_DATABASE_URL not set)");
            None
        }
    }
}

#[test]
fn a_revocation_through_one_control_plane_ends_sessions_on_the_node_of_another() {
    let Some(url) = postgres("scale_out") else {
        return;
    };
    let a = Slowpath::up(&Backend::Postgres(url), &[]);
    let b = Slowpath::up_sharing(&a, &["--resolve-rate", "10000"]);
    a.wait_frp();
    b.wait_frp();
    assert_ne!(
        a.local_node, b.local_node,
        "the second control plane took the first one's node"
    );
    // Each lists both nodes: one database.
    let (st, nodes) = b.admin_call("GET", "/api/v1/admin/nodes", None);
    assert_eq!(st, 200, "{nodes}");
    let ids = strings_at(&nodes, "id");
    assert!(
        ids.contains(&a.local_node.as_str()) && ids.contains(&b.local_node.as_str()),
        "{nodes}"
    );

    let rounds = 100;
    let mut took = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Made through a, for b's node: b's table takes it (the first
        // login waits for that, at most 5 s).
        let path = format!("/api/v1/admin/nodes/{}/invites", b.local_node);
        let (st, inv) = a.admin_call(
            "POST",
            &path,
            Some(json!({ "max_uses": 1, "ttl_s": 600, "scope": { "proxy_types": ["tcp"] } })),
        );
        assert_eq!(st, 201, "round {i}: {inv}");
        let (st, resolved) = b.resolve(inv["code"].as_str().unwrap());
        assert_eq!(st, 200, "round {i}: {resolved}");
        let client = first_login(&ticket_opts(&b, &resolved));

        // Revoked through a: the session on b's fastpath ends.
        let t0 = Instant::now();
        let id = inv["id"].as_str().unwrap();
        let (st, v) = a.admin_call("POST", &format!("/api/v1/admin/invites/{id}/revoke"), None);
        assert_eq!(st, 200, "round {i}: {v}");
        while !client.is_closed() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "round {i}: the session on the other node was alive 5 s after the revocation\n\
                 first control plane:\n{}\nsecond:\n{}",
                a.log(),
                b.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(t0.elapsed());
    }
    took.sort();
    let p50 = took[rounds / 2];
    let p99 = took[rounds * 99 / 100 - 1];
    let max = took[rounds - 1];
    eprintln!(
        "revoked through one control plane → session closed on the other's node, {rounds} rounds: \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?} (max {max:?})");
    assert!(
        b.log()
            .contains("listening for other control planes' changes"),
        "{}",
        b.log()
    );
}

/// Issue 17's shape: one PostgreSQL, two `slowpath serve`, three relay
/// nodes each with its own agent and fastpath. Two agents are attached to
/// the second control plane, the third to the first (and the second after
/// it). 100 invites made and revoked through the first, on the three nodes
/// in turn, end their sessions within 1 s at p99; then the first is killed
/// and the third agent moves to the second, which governs its node from
/// then on. Every session's opening and closing reaches the audit log
/// through the agents exactly once, across the kill (counted per node).
#[test]
fn three_agents_follow_two_control_planes_on_one_database() {
    use harness::agent::{ended_within, invite, revoke, Host};
    let Some(url) = postgres("scale_out_agents") else {
        return;
    };
    let mut a = Slowpath::start(&Backend::Postgres(url), &["--resolve-rate", "10000"]);
    let b = Slowpath::start_sharing(&a, &["--resolve-rate", "10000"]);
    let token = "relay-token";
    let mut hosts = Vec::new();
    let mut node_ids = Vec::new();
    for i in 0..3 {
        let port = bench::proc::free_port();
        let (node, key) = a.node(json!({
            "name": format!("relay-{i}"), "server_addr": "127.0.0.1", "server_port": port,
            "proxy_types": ["tcp"], "token": token,
        }));
        node_ids.push(node["id"].as_str().unwrap().to_owned());
        let controls: Vec<&Slowpath> = if i < 2 { vec![&b] } else { vec![&a, &b] };
        hosts.push(Host::start(
            &controls,
            &format!("relay-{i}"),
            &key,
            port,
            token,
            true,
        ));
    }

    let rounds = 100;
    let mut took = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let n = round % 3;
        let (id, o) = invite(&a, &node_ids[n], hosts[n].frp);
        let client = first_login(&o);
        let t0 = Instant::now();
        revoke(&a, &id);
        let what = format!("round {round}, node {n}");
        took.push(ended_within(
            &client,
            t0,
            Duration::from_secs(5),
            &what,
            &hosts[n],
        ));
    }
    took.sort();
    let (p50, p99) = (took[rounds / 2], took[rounds * 99 / 100 - 1]);
    eprintln!(
        "revoked through serve #1 → session closed on 3 agents' nodes (2 attached to serve #2), \
         {rounds} rounds: p50 {p50:?}, p99 {p99:?}, max {:?}",
        took[rounds - 1]
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");

    // Serve #1 dies: the third agent moves to #2, which governs its node.
    let (id, o) = invite(&a, &node_ids[2], hosts[2].frp);
    let client = first_login(&o);
    a.kill_hard();
    assert!(
        hosts[2]
            .agent
            .wait_log("moving to the next control plane", Duration::from_secs(15)),
        "{}",
        hosts[2].agent_log()
    );
    assert!(!client.is_closed(), "a session ended when serve #1 died");
    let t0 = Instant::now();
    revoke(&b, &id);
    let what = "serve #2 governs the moved agent's node";
    let moved = ended_within(&client, t0, Duration::from_secs(5), what, &hosts[2]);
    eprintln!(
        "after the move: revoked through serve #2 → closed in {:?}",
        moved
    );
    // Three more sessions on the moved agent's node, under serve #2.
    for _ in 0..3 {
        let (_, o) = invite(&b, &node_ids[2], hosts[2].frp);
        let c = first_login(&o);
        c.close();
        while !c.is_closed() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Audit through the agents: each node's sessions, every one opened
    // and closed once, nothing lost to the kill and nothing doubled by a
    // batch sent again to serve #2.
    let expected = [34, 33, 33 + 1 + 3];
    let count = |node: &str, kind: &str| {
        let (st, rows) = b.admin_call(
            "GET",
            &format!("/api/v1/admin/audit?node_id={node}&kind={kind}&limit=1000"),
            None,
        );
        assert_eq!(st, 200, "{rows}");
        rows.as_array().unwrap().len()
    };
    let counts = || {
        node_ids
            .iter()
            .map(|n| (count(n, "session.open"), count(n, "session.close")))
            .collect::<Vec<_>>()
    };
    let want: Vec<(usize, usize)> = expected.iter().map(|&n| (n, n)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counts() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        counts(),
        want,
        "sessions opened and closed per node, as audited
{}",
        hosts[2].agent_log()
    );
    eprintln!("audited through the agents, per node (opened, closed): {want:?}");
    // Stopped with agents' long polls open (they wait 5 s here, 25 s by
    // default), serve #2 ends them and exits at once rather than after
    // its shutdown grace.
    let mut b = b;
    let took = b.terminate(Duration::from_secs(15));
    eprintln!("serve #2 stopped with 3 agents polling in {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "SIGTERM → exit took {took:?}"
    );
    assert!(
        hosts[0]
            .agent
            .wait_log("shutting down", Duration::from_secs(5)),
        "{}",
        hosts[0].agent_log()
    );
    drop(hosts);
}

/// Mesh nodes' online flags belong to the control plane holding their
/// control channels: another control plane on the same PostgreSQL that
/// starts (or restarts) leaves them alone, and a node that came back on a
/// newer channel stays online when its older one closes.
#[test]
fn a_control_plane_starting_leaves_another_ones_mesh_channels_alone() {
    use harness::mesh::{authorized, join, Node};
    let Some(url) = postgres("scale_out_mesh") else {
        return;
    };
    let a = Slowpath::start(&Backend::Postgres(url), &[]);
    let mut b = Slowpath::start_sharing(&a, &[]);
    let online = |sp: &Slowpath, id: u32| {
        let (st, v) = sp.admin_call("GET", &format!("/api/v1/mesh/nodes/{id}"), None);
        assert_eq!(st, 200, "{v}");
        v["online"] == true
    };
    let n = Node::new();
    let (ws_a, id, _) = authorized(&a, &n, "default");
    assert!(online(&b, id));
    // #2 restarts: the node's channel, held by #1, keeps it online.
    b.kill_hard();
    b.restart();
    assert!(
        online(&b, id),
        "another control plane's start set the node offline"
    );
    // The node comes back through #2 while its channel to #1 is still
    // open; that older channel closing leaves it online.
    let (ws_b, _, _) = join(&b, &n);
    drop(ws_a);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        online(&a, id),
        "an older channel's close set the node offline"
    );
    // Its only channel closes: offline.
    drop(ws_b);
    wait_within(Duration::from_secs(5), "the node offline", || {
        !online(&a, id)
    });
}
