//! Node agents at scale (issue 17): one `slowpath serve` (SQLite, or the
//! PostgreSQL given) with N registered nodes, each with a long poll open as
//! its agent would hold it (`GET /api/v1/nodes/policy?have=…`). Each change
//! is an invite created through the admin API on one node, in turn; the
//! figure is the time until that node's poll answers with its new table,
//! and the control plane's CPU time per change (every waiting poll compiles
//! its node's table again to see whether it changed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proc::{cpu_seconds, free_port, Daemon};

/// What to run.
pub struct AgentsOpts {
    /// The `slowpath` binary.
    pub slowpath: PathBuf,
    /// Node counts, one run each.
    pub nodes: Vec<usize>,
    /// Changes per run.
    pub changes: usize,
    /// A PostgreSQL URL (a fresh database is expected); SQLite otherwise.
    pub database_url: Option<String>,
}

/// One run's figures.
pub struct Row {
    /// Nodes, each with a poll open.
    pub nodes: usize,
    /// Changes made.
    pub changes: usize,
    /// Change → the changed node's poll answered, ms.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
    /// Control-plane CPU per change, ms.
    pub cpu_ms_per_change: f64,
    /// Control-plane CPU per change per waiting poll, µs.
    pub cpu_us_per_poll: f64,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(90))
        .build()
}

fn json_call(
    http: &ureq::Agent,
    method: &str,
    url: &str,
    bearer: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let req = http
        .request(method, url)
        .set("Authorization", &format!("Bearer {bearer}"));
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    resp.into_json().map_err(|e| format!("{url}: {e}"))
}

/// Runs every node count; one row each.
pub fn run(o: &AgentsOpts) -> Result<Vec<Row>, String> {
    o.nodes.iter().map(|&n| run_one(o, n)).collect()
}

fn run_one(o: &AgentsOpts, nodes: usize) -> Result<Row, String> {
    let dir = std::env::temp_dir().join(format!("totoro-bench-agents-{}", free_port()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (data, shm) = (dir.join("data"), dir.join("shm"));
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--data-dir",
        data.to_str().ok_or("path")?,
        "--shm-dir",
        shm.to_str().ok_or("path")?,
        "--listen",
        &listen,
        // Every agent here polls from 127.0.0.1.
        "--api-max-connections-per-ip",
        "100000",
    ];
    if let Some(url) = &o.database_url {
        args.extend_from_slice(&["--database-url", url]);
    }
    let mut sp = Daemon::spawn_logging(&o.slowpath, &args, "warn").map_err(|e| e.to_string())?;
    let http = agent();
    let t0 = Instant::now();
    while http.get(&format!("{base}/healthz")).call().is_err() {
        if t0.elapsed() > Duration::from_secs(20) || !sp.alive() {
            return Err(format!("slowpath serve did not start: {:?}", sp.log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = std::fs::read_to_string(data.join("admin.key"))
        .map_err(|e| format!("admin.key: {e}"))?
        .trim()
        .to_owned();
    // N nodes, each with its key and the table it holds now.
    let mut ids = Vec::with_capacity(nodes);
    let mut keys = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let v = json_call(
            &http,
            "POST",
            &format!("{base}/api/v1/admin/nodes"),
            &admin,
            Some(serde_json::json!({
                "name": format!("relay-{i}"), "server_addr": "127.0.0.1",
                "server_port": 7000, "proxy_types": ["tcp"],
            })),
        )?;
        ids.push(v["id"].as_str().unwrap_or_default().to_owned());
        keys.push(v["node_key"].as_str().unwrap_or_default().to_owned());
    }
    if ids.iter().any(String::is_empty) {
        return Err("a node was registered without an id or key".into());
    }
    // Each poller records when its node's table arrived.
    let stop = Arc::new(AtomicBool::new(false));
    let arrived: Arc<Vec<Mutex<Vec<Instant>>>> =
        Arc::new((0..nodes).map(|_| Mutex::new(Vec::new())).collect());
    let mut pollers = Vec::with_capacity(nodes);
    let ready = Arc::new(std::sync::Barrier::new(nodes + 1));
    for (i, key) in keys.iter().enumerate() {
        let (key, base, stop, arrived, ready) = (
            key.clone(),
            base.clone(),
            Arc::clone(&stop),
            Arc::clone(&arrived),
            Arc::clone(&ready),
        );
        pollers.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || poll_loop(i, &base, &key, &stop, &arrived, &ready))
                .map_err(|e| e.to_string())?,
        );
    }
    ready.wait();
    // The polls are open (the first answered at once with the table, the
    // next waits): let every one reach its wait.
    std::thread::sleep(Duration::from_millis(500 + nodes as u64 * 2));
    let cpu0 = cpu_seconds(sp.pid());
    let mut took = Vec::with_capacity(o.changes);
    for m in 0..o.changes {
        let k = m % nodes;
        let before = arrived[k].lock().map(|a| a.len()).unwrap_or(0);
        let t0 = Instant::now();
        json_call(
            &http,
            "POST",
            &format!("{base}/api/v1/admin/nodes/{}/invites", ids[k]),
            &admin,
            Some(serde_json::json!({ "max_uses": 1, "ttl_s": 600 })),
        )?;
        loop {
            if let Some(at) = arrived[k].lock().ok().and_then(|a| a.get(before).copied()) {
                took.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("change {m}: node {k}'s poll never answered"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Let the other polls finish compiling before the next change.
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_seconds(sp.pid()) - cpu0;
    stop.store(true, Ordering::Release);
    sp.signal(libc::SIGTERM);
    sp.wait_exit(Duration::from_secs(15));
    for p in pollers {
        let _ = p.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    let per_change = cpu * 1e3 / o.changes as f64;
    Ok(Row {
        nodes,
        changes: o.changes,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        cpu_ms_per_change: per_change,
        cpu_us_per_poll: per_change * 1e3 / nodes as f64,
    })
}

/// One agent's long polls, until `stop`.
fn poll_loop(
    i: usize,
    base: &str,
    key: &str,
    stop: &AtomicBool,
    arrived: &[Mutex<Vec<Instant>>],
    ready: &std::sync::Barrier,
) {
    let http = agent();
    let mut have = String::new();
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let url = format!("{base}/api/v1/nodes/policy?have={have}&wait=60");
        let resp = http
            .get(&url)
            .set("Authorization", &format!("Bearer {key}"))
            .call();
        match resp {
            Ok(r) if r.status() == 200 => {
                have = r.header("x-totoro-policy-digest").unwrap_or("").to_owned();
                let _ = std::io::copy(&mut r.into_reader(), &mut std::io::sink());
                if first {
                    first = false;
                    ready.wait();
                } else if let Ok(mut a) = arrived[i].lock() {
                    a.push(Instant::now());
                }
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The rows as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| nodes polling | changes | change → its node's poll answered, p50 ms | p99 ms | control-plane CPU per change, ms | per waiting poll, µs |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
            r.nodes, r.changes, r.p50_ms, r.p99_ms, r.cpu_ms_per_change, r.cpu_us_per_poll
        ));
    }
    s
}
