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

/// A node registered through `sp`'s API for a relay at `port` with frp
/// token `token`: (id, node key).
fn remote_node(sp: &Slowpath, port: u16, token: &str) -> (String, String) {
    let (node, key) = sp.node(json!({
        "name": "remote", "server_addr": "127.0.0.1", "server_port": port,
        "proxy_types": ["tcp"], "token": token,
    }));
    (node["id"].as_str().unwrap().to_owned(), key)
}

#[test]
fn a_remote_node_follows_its_control_plane_through_its_agent() {
    let mut sp = Slowpath::start(&Backend::Sqlite, &["--resolve-rate", "10000"]);
    let port = free_port();
    let token = "remote-node-token";
    let (node, key) = remote_node(&sp, port, token);
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

/// Audit rows of `kind` for `node` (at most 1000).
fn audit_count(sp: &Slowpath, node: &str, kind: &str) -> usize {
    let (st, rows) = sp.admin_call(
        "GET",
        &format!("/api/v1/admin/audit?node_id={node}&kind={kind}&limit=1000"),
        None,
    );
    assert_eq!(st, 200, "{rows}");
    rows.as_array().unwrap().len()
}

/// Bytes relayed through invite proxies, as the control plane has them.
fn traffic(sp: &Slowpath) -> (u64, u64) {
    let (st, v) = sp.admin_call("GET", "/api/v1/admin/stats", None);
    assert_eq!(st, 200, "{v}");
    (
        v["traffic"]["bytes_in"].as_u64().unwrap_or(0),
        v["traffic"]["bytes_out"].as_u64().unwrap_or(0),
    )
}

/// One session on the remote node: a tcp proxy to an echo server, `len`
/// bytes echoed through it, then the client closes.
fn one_session(o: &bench::client::ClientOpts, len: usize) {
    let echo_srv = bench::backend::Backend::echo().unwrap();
    let c = first_login(o);
    let port = c.add_plain_proxy("web", 0, echo_srv.addr()).unwrap();
    echo(port, len);
    c.close();
    while !c.is_closed() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Issue 17, item 1: a remote node's events and traffic reach the control
/// plane through its agent, each once: while the control plane is up; while
/// it is down (they wait in the agent's spool and arrive when it is back);
/// across the agent killed and restarted; and when a batch is sent again,
/// the control plane acknowledges it without writing it twice. On SQLite
/// and PostgreSQL.
#[test]
fn a_remote_nodes_events_and_traffic_reach_the_control_plane_once() {
    each_backend("agent_events", events_once);
}

fn events_once(backend: Backend) {
    const LEN: usize = 100_000;
    let mut sp = Slowpath::start(&backend, &["--resolve-rate", "10000"]);
    let port = free_port();
    let token = "remote-node-token";
    let (node, key) = remote_node(&sp, port, token);
    let mut host = Host::start(&[&sp], "remote", &key, port, token, true);
    // Invites for every round, made while the control plane is up.
    let invites: Vec<_> = (0..9).map(|_| invite(&sp, &node, host.frp).1).collect();
    let expect = |sp: &Slowpath, sessions: usize, what: &str, host: &Host| {
        let moved = (sessions * LEN) as u64;
        wait_within(Duration::from_secs(20), what, || {
            audit_count(sp, &node, "session.close") >= sessions && traffic(sp) == (moved, moved)
        });
        // Exactly, and still so a moment later (nothing doubled).
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            (
                audit_count(sp, &node, "session.open"),
                audit_count(sp, &node, "session.close"),
                audit_count(sp, &node, "proxy.registered"),
                traffic(sp)
            ),
            (sessions, sessions, sessions, (moved, moved)),
            "{what}\n{}",
            host.agent_log()
        );
    };

    // Up: three sessions.
    for o in &invites[0..3] {
        one_session(o, LEN);
    }
    expect(&sp, 3, "the first three sessions written", &host);

    // Down: three more wait in the spool.
    sp.kill_hard();
    for o in &invites[3..6] {
        one_session(o, LEN);
    }
    assert!(
        host.agent
            .wait_log("cannot ship events", Duration::from_secs(15)),
        "{}",
        host.agent_log()
    );
    let waiting = std::fs::read_dir(&host.spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        })
        .count();
    assert!(waiting >= 2, "{waiting} batch files in the spool");
    // The agent crashes meanwhile and comes back.
    host.restart_agent();
    one_session(&invites[6], LEN);
    sp.restart();
    expect(&sp, 7, "the sessions of the outage written once", &host);

    // The agent killed again while the control plane is up, between
    // sessions: nothing lost or doubled.
    one_session(&invites[7], LEN);
    host.restart_agent();
    one_session(&invites[8], LEN);
    expect(&sp, 9, "the sessions around an agent restart", &host);

    // A batch sent again (its answer lost): acknowledged, not written.
    let newest = std::fs::read_dir(&host.spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .max()
        .expect("the newest batch file stays");
    let file = std::fs::read(&newest).unwrap();
    let state = u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize;
    let batch = &file[8 + state..];
    let send = |body: &[u8]| match ureq::post(&format!("{}/api/v1/nodes/events", sp.base))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(body)
    {
        Ok(r) => (r.status(), r.into_json::<serde_json::Value>().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    };
    let (st, v) = send(batch);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["batches_repeated"].as_u64(), v["events_written"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    expect(&sp, 9, "nothing written twice", &host);
    // A body that is not batches: 400 naming it; cut short, likewise.
    let (st, v) = send(b"not a batch");
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["field"], "body", "{v}");
    let (st, v) = send(&batch[..batch.len() - 1]);
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("truncated"),
        "{v}"
    );
    // The heartbeat says the spool is empty of unacknowledged batches.
    wait_within(Duration::from_secs(10), "an empty spool heartbeat", || {
        let (_, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
        n["heartbeat"]["spool_batches"] == 0 && n["heartbeat"]["spool_bytes"].as_u64() > Some(0)
    });
}

/// Issue 17's spool fault: a spool that fills its disk budget while the
/// control plane is away drops its oldest batches and counts them, and
/// never crashes; once the control plane is back, every refused login the
/// fastpath recorded is either written or counted as dropped, exactly.
#[test]
fn a_full_spool_drops_its_oldest_batches_and_counts_them() {
    const ATTEMPTS: usize = 600;
    let mut sp = Slowpath::start(&Backend::Sqlite, &[]);
    let port = free_port();
    let token = "remote-node-token";
    let (node, key) = remote_node(&sp, port, token);
    let urls = [sp.base.as_str()];
    let mut host = Host::start_with(
        &sp,
        &urls,
        "small-spool",
        &key,
        port,
        token,
        true,
        &["--spool-max-kib", "16"],
    );
    sp.kill_hard();
    // Logins with a wrong token: each one a refusal event of ~100 bytes,
    // about 60 KiB in all, four times the budget. Paced under the
    // fastpath's per-source rate of new connections.
    let wrong = bench::client::ClientOpts::new(host.frp, "not-the-token");
    for i in 0..ATTEMPTS {
        assert!(login(&wrong).is_err(), "login {i} with a wrong token");
        std::thread::sleep(Duration::from_millis(7));
    }
    assert!(
        host.agent
            .wait_log("dropped its oldest batch", Duration::from_secs(10)),
        "{}",
        host.agent_log()
    );
    assert!(host.agent.alive(), "the agent died: {}", host.agent_log());
    let spool_bytes: u64 = std::fs::read_dir(&host.spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        spool_bytes <= 16 * 1024 + 8 * 1024,
        "{spool_bytes} bytes in the spool"
    );
    sp.restart();
    let dropped = |sp: &Slowpath| {
        let metrics = ureq::get(&format!("{}/metrics", sp.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics
            .lines()
            .find(|l| l.starts_with("totoro_slowpath_agent_events_dropped_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as usize
    };
    wait_within(
        Duration::from_secs(20),
        "written + dropped = attempts",
        || audit_count(&sp, &node, "auth.failed") + dropped(&sp) == ATTEMPTS,
    );
    let (written, lost) = (audit_count(&sp, &node, "auth.failed"), dropped(&sp));
    eprintln!("{ATTEMPTS} refusals: {written} written, {lost} dropped by the spool for room");
    assert!(lost > 0 && written > 0, "{written} written, {lost} dropped");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        audit_count(&sp, &node, "auth.failed") + dropped(&sp),
        ATTEMPTS
    );
    wait_within(
        Duration::from_secs(10),
        "the drops in the heartbeat",
        || {
            let (_, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
            n["heartbeat"]["spool_dropped_events"].as_u64() == Some(lost as u64)
        },
    );
    host.restart_agent();
}

/// `serve` with a fastpath beside it on its policy directory (as the
/// compose stack runs them, in two containers): the control plane
/// heartbeats its own node for that fastpath, so the node shows online
/// with the fastpath's memory, as under `up`.
#[test]
fn serve_heartbeats_for_a_fastpath_beside_it() {
    let sp = Slowpath::start(&Backend::Sqlite, &[]);
    let node = sp.local_node.clone();
    let (st, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
    assert_eq!(st, 200, "{n}");
    assert_ne!(n["status"], "online", "online before any fastpath: {n}");
    let port = free_port();
    let cfg = sp.dir.join("beside.toml");
    std::fs::write(
        &cfg,
        format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nauth.token = \"t\"\n\
             fastpath.workers = 1\nfastpath.policyDir = \"{}\"\n",
            sp.shm.display()
        ),
    )
    .unwrap();
    let _fp = bench::proc::Daemon::spawn_logging(
        std::path::Path::new(env!("CARGO_BIN_EXE_slowpath")),
        &["fastpath", "-c", cfg.to_str().unwrap()],
        "info",
    )
    .expect("start the fastpath");
    wait_within(Duration::from_secs(10), "the node online", || {
        let (_, n) = sp.admin_call("GET", &format!("/api/v1/admin/nodes/{node}"), None);
        n["status"] == "online" && n["heartbeat"]["mem_bytes"].as_u64() > Some(0)
    });
}
