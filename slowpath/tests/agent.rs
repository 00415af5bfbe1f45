//! The node agent (issue 17): a relay host governed by a control plane
//! elsewhere runs `slowpath agent` (its node key, no database) next to a
//! fastpath whose policy directory the agent keeps current. Checked with
//! the real binaries: the node's table arrives and logins under its
//! invites work; revocations through the API end sessions on the remote
//! node (20 rounds, p50/p99 printed); a wrong node key is refused and
//! nothing is written; the agent heartbeats with the fastpath's figures;
//! with the control plane killed the fastpath keeps enforcing the last
//! table, and once it is back the agent resumes; a table changed or cut
//! short on the way is refused and the last good one stays.

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

/// What the stand-in control plane answers the agent's polls with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    /// The real control plane's answer, as it came.
    Whole,
    /// One byte of the table changed, headers as they came.
    Changed,
    /// The headers promise the whole table; the connection ends halfway.
    Cut,
}

/// A stand-in for the control plane between the agent and the network: it
/// answers every poll with `answer` applied to `table` (the real one's
/// body) and `headers` (its digest and tag).
fn stand_in(
    table: Vec<u8>,
    headers: Vec<(String, String)>,
    answer: std::sync::Arc<std::sync::Mutex<Answer>>,
) -> String {
    use std::io::{Read, Write};
    let digest = headers
        .iter()
        .find(|(k, _)| k == "x-totoro-policy-digest")
        .map(|(_, v)| v.clone())
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            // The request's head (a GET has no body).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let mode = *answer.lock().unwrap();
            // As the real one: the table the agent holds already is not
            // sent again (the poll would wait; this one says so at once).
            let have = format!("have={digest}");
            if mode == Answer::Whole && String::from_utf8_lossy(&head).contains(&have) {
                let _ = conn.write_all(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let mut body = table.clone();
            if mode == Answer::Changed {
                let i = body.len() / 2;
                body[i] ^= 0x40;
            }
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in &headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut out = out.into_bytes();
            match mode {
                Answer::Cut => out.extend_from_slice(&body[..body.len() / 2]),
                _ => out.extend_from_slice(&body),
            }
            let _ = conn.write_all(&out);
            // One answer a second at most, so the log stays readable.
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    base
}

/// A table changed or cut on its way to the node is refused and written
/// nowhere; the last good one stays in force.
#[test]
fn a_table_changed_or_cut_on_the_way_is_refused_and_the_last_good_one_stays() {
    use std::sync::{Arc, Mutex};
    let sp = Slowpath::start(&Backend::Sqlite, &[]);
    let (node, key) = sp.node(json!({
        "name": "remote", "server_addr": "127.0.0.1", "server_port": free_port(),
        "proxy_types": ["tcp"], "token": "t",
    }));
    assert!(node["id"].is_string());
    // The real answer, fetched as the agent would.
    let resp = ureq::get(&format!("{}/api/v1/nodes/policy?wait=1", sp.base))
        .set("Authorization", &format!("Bearer {key}"))
        .call()
        .expect("the node's table");
    assert_eq!(resp.status(), 200);
    let headers: Vec<(String, String)> = ["x-totoro-policy-digest", "x-totoro-policy-mac"]
        .iter()
        .map(|h| (h.to_string(), resp.header(h).expect(h).to_owned()))
        .collect();
    let mut table = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut table).unwrap();

    let answer = Arc::new(Mutex::new(Answer::Changed));
    let fake = stand_in(table, headers, Arc::clone(&answer));
    let host = Host::start_at(&sp, &[&fake], "tampered", &key, free_port(), "t", false);
    let file = host.shm.join(shm::TABLE_FILE);
    // Changed: refused by its digest, nothing written.
    assert!(
        host.agent
            .wait_log("its digest does not match", Duration::from_secs(10)),
        "{}",
        host.agent_log()
    );
    assert!(!file.exists(), "a changed table was written");
    // Cut short: refused too.
    *answer.lock().unwrap() = Answer::Cut;
    let cut_seen = |log: &str| {
        log.lines()
            .filter(|l| l.contains("no policy from the control plane"))
            .any(|l| !l.contains("its digest does not match"))
    };
    wait_within(Duration::from_secs(15), "the cut table refused", || {
        cut_seen(&host.agent_log())
    });
    assert!(!file.exists(), "a cut table was written");
    // Whole: taken.
    *answer.lock().unwrap() = Answer::Whole;
    wait_within(Duration::from_secs(15), "the whole table in place", || {
        file.exists()
    });
    let good = std::fs::read(&file).unwrap();
    // Held: the stand-in answers 204 to the digest the agent now sends.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        good,
        "the same table was written again"
    );
    // Changed again: refused, and the good table stays as it was.
    *answer.lock().unwrap() = Answer::Changed;
    let refusals = |log: &str| log.matches("its digest does not match").count();
    let before = refusals(&host.agent_log());
    wait_within(
        Duration::from_secs(15),
        "the next changed table refused",
        || refusals(&host.agent_log()) > before,
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        good,
        "the last good table was replaced"
    );
}
