//! The node agent (issue 17, seed 000 §3.3), first part: `slowpath agent
//! --control URL` runs on a relay host next to its fastpath, holds that
//! node's key and no database credentials, and keeps the fastpath's policy
//! table current.
//!
//! It long-polls `GET /api/v1/nodes/policy?have=<digest>&wait=<s>` with its
//! node key, on one of the control planes it is given (`--control`,
//! repeated; it moves to the next when one fails). The control plane answers at once with its node's table when
//! it differs from the one the agent holds, and otherwise holds the request
//! until a change (made through it, or told by another control plane on
//! the same PostgreSQL: [`crate::store::changes`]) gives a different
//! table, or `wait` seconds pass (204). So a change reaches the node in one
//! round trip, without polling every few seconds.
//!
//! The body is the encoded table, neither stamped nor sealed. It comes
//! with its SHA-256 ([`DIGEST_HEADER`]) and an HMAC-SHA256 under the node
//! key ([`MAC_HEADER`]): a truncated body, or one changed on the way, is
//! refused and the last good table stays. The agent checks the header,
//! stamps the next generation, seals it under the instance key of its
//! shared-memory directory (which only it and the fastpath can read) and
//! renames it into place, as `slowpath up` does for its own node.
//!
//! While the control plane is unreachable, or refuses the key, the
//! fastpath keeps enforcing the last table; the agent retries with backoff.
//! A thread heartbeats (`POST /api/v1/nodes/heartbeat`, every 10 s) with
//! seed 000 §3.3's figures: the fastpath's sessions, proxies and
//! bandwidth (its `--stats-file`), its CPU and memory, the disk, versions.
//!
//! Events and traffic go the other way ([`ship`]): the fastpath's rings
//! are read into a disk spool ([`spool`], `--spool-dir`), and its batches
//! are sent to the control plane, which writes each once (audit log,
//! per-proxy traffic, tenant traffic reports and quotas) in the same
//! transaction as the spool's last batch number. While no control plane
//! answers they wait on disk, up to `--spool-max-kib`.
//!
//! Not done yet: the mesh relay, edge and certificates in remote nodes'
//! tables.

pub mod ship;
pub mod spool;

pub use crate::telemetry::events_drain::Cursor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use shm::{InstanceDir, LockError, SLOWPATH_LOCK_FILE};

use crate::domain::nodes::Heartbeat;
use crate::telemetry::host::Probe;

/// The SHA-256 of the body, hex.
pub const DIGEST_HEADER: &str = "x-totoro-policy-digest";
/// HMAC-SHA256 of the body under the node key, hex.
pub const MAC_HEADER: &str = "x-totoro-policy-mac";
/// How long a poll waits for a change by default, in seconds.
pub const WAIT_S: u64 = 25;
/// The longest wait a poll may ask for, in seconds.
pub const MAX_WAIT_S: u64 = 60;
/// The largest table the agent takes (the control plane's 100k-invite
/// tables are a few MiB).
const MAX_TABLE: u64 = 256 << 20;

/// The digest the agent sends back as `have`.
pub fn digest(table: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, table))
}

/// The body's tag under the node key.
pub fn mac(node_key: &str, table: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, node_key.as_bytes());
    hex::encode(ring::hmac::sign(&key, table))
}

/// Whether `tag` (hex) is the body's tag under the node key (in constant
/// time).
fn mac_ok(node_key: &str, table: &[u8], tag: &str) -> bool {
    let Ok(tag) = hex::decode(tag) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, node_key.as_bytes());
    ring::hmac::verify(&key, table, &tag).is_ok()
}

/// What the agent is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control planes' base URLs (`https://cp.example.com`), tried in
    /// turn: the agent stays with one until it fails.
    pub control: Vec<String>,
    /// This node's key.
    pub node_key: String,
    /// A root certificate (PEM) for the control plane's HTTPS, when it is
    /// not publicly trusted.
    pub ca_file: Option<PathBuf>,
    /// The fastpath's policy directory (its `fastpath.policyDir`).
    pub shm_dir: PathBuf,
    /// Seconds each poll waits for a change.
    pub wait_s: u64,
    /// The fastpath's `--stats-file` (sessions, proxies, bytes for the
    /// heartbeat; without it those read 0).
    pub stats_file: Option<PathBuf>,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// The event spool's directory.
    pub spool_dir: PathBuf,
    /// The most bytes the spool keeps on disk.
    pub spool_budget: u64,
}

/// Why a poll did not bring a table.
enum Miss {
    /// Nothing changed within the wait.
    Unchanged,
    /// The control plane refused the node key (401/403): said once.
    Refused(u16, String),
    /// Anything else: unreachable, 5xx, a body that failed its checks.
    Failed(String),
}

/// Runs until killed.
pub fn run(cfg: AgentConfig) -> Result<()> {
    let shm = Arc::new(
        InstanceDir::open(&cfg.shm_dir)
            .with_context(|| format!("--shm-dir {}", cfg.shm_dir.display()))?,
    );
    // The agent is this directory's control side, as `up` is for its own.
    let note = format!("pid {} node agent", std::process::id());
    let _lock = match shm.dir.lock(SLOWPATH_LOCK_FILE, &note) {
        Ok(f) => f,
        Err(LockError::Held(held)) => anyhow::bail!(
            "--shm-dir {} is already governed ({}{})",
            cfg.shm_dir.display(),
            held.pid.map(|p| format!("pid {p}, ")).unwrap_or_default(),
            held.note
        ),
        Err(LockError::Io(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", cfg.shm_dir.display()))
        }
    };
    let wait = cfg.wait_s.clamp(1, MAX_WAIT_S);
    let http =
        crate::edge_agent::http_agent(cfg.ca_file.as_deref(), Duration::from_secs(wait + 15))?;
    let controls: Vec<String> = cfg
        .control
        .iter()
        .map(|c| c.trim_end_matches('/').to_owned())
        .collect();
    anyhow::ensure!(!controls.is_empty(), "--control is required");
    let mut at = 0;
    let (spool, cursors) = spool::Spool::open(&cfg.spool_dir, cfg.spool_budget)
        .with_context(|| format!("--spool-dir {}", cfg.spool_dir.display()))?;
    let spool_stats = spool.stats();
    let shared = ship::Shared::new(spool);
    {
        let (shm, shared) = (Arc::clone(&shm), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("rings".into())
            .spawn(move || ship::read_rings(shm, shared, cursors))
            .context("starting the ring reader")?;
    }
    {
        let (controls, key) = (controls.clone(), cfg.node_key.clone());
        let http = crate::edge_agent::http_agent(cfg.ca_file.as_deref(), Duration::from_secs(30))?;
        std::thread::Builder::new()
            .name("ship".into())
            .spawn(move || ship::send(controls, key, http, shared))
            .context("starting the event sender")?;
    }
    {
        let (controls, key, shm) = (controls.clone(), cfg.node_key.clone(), Arc::clone(&shm));
        let probe = Probe::new(
            cfg.stats_file.clone().unwrap_or_default(),
            cfg.shm_dir.clone(),
        );
        let http = crate::edge_agent::http_agent(cfg.ca_file.as_deref(), Duration::from_secs(15))?;
        let every = cfg.heartbeat.max(Duration::from_secs(1));
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeats(&controls, &key, &http, &shm, probe, &spool_stats, every))
            .context("starting the heartbeat thread")?;
    }
    let mut have = String::new();
    let mut generation = shm.table_generation().unwrap_or(0);
    let mut backoff = Duration::from_millis(500);
    let mut refused_said = false;
    tracing::info!(control = %controls.join(" "), shm = %cfg.shm_dir.display(), "node agent started");
    loop {
        let base = &controls[at];
        let url = format!("{base}/api/v1/nodes/policy?have={have}&wait={wait}");
        match poll(&http, &url, &cfg.node_key) {
            Ok((table, digest)) => {
                let started = Instant::now();
                // The directory's lock makes this the only writer: the
                // table on disk was read once, at start.
                let now = u64::try_from(crate::clock::now_ms()).unwrap_or(0);
                match shm.write_table(table, generation + 1, now) {
                    Ok(_) => {
                        generation += 1;
                        tracing::info!(
                            generation,
                            write_us = started.elapsed().as_micros() as u64,
                            "policy table from the control plane in place"
                        );
                        have = digest;
                        backoff = Duration::from_millis(500);
                        refused_said = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write the policy table; the fastpath keeps its last one");
                        std::thread::sleep(backoff);
                    }
                }
            }
            Err(Miss::Unchanged) => {}
            Err(Miss::Refused(status, why)) => {
                if !refused_said {
                    tracing::error!(status, reason = %why, "the control plane refuses this node key; the fastpath keeps its last table");
                    refused_said = true;
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            Err(Miss::Failed(why)) => {
                tracing::warn!(control = %base, reason = %why, retry_ms = backoff.as_millis() as u64,
                    "no policy from the control plane; the fastpath keeps its last table");
                if controls.len() > 1 {
                    at = (at + 1) % controls.len();
                    tracing::info!(control = %controls[at], "moving to the next control plane");
                    // A whole round of failures waits; moving on does not.
                    if at != 0 {
                        continue;
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Heartbeats every `every` (seed 000 §3.3's figures: the fastpath's
/// sessions, proxies, bandwidth, CPU and memory, the disk, versions; and
/// the event spool's backlog and drops), to
/// the control planes in turn as they fail; forever.
fn heartbeats(
    controls: &[String],
    node_key: &str,
    http: &ureq::Agent,
    shm: &InstanceDir,
    mut probe: Probe,
    spool: &spool::SpoolStats,
    every: Duration,
) {
    let mut at = 0;
    loop {
        let mut hb = match shm.dir.holder(shm::LOCK_FILE) {
            Some(pid) => probe.sample(pid),
            // No fastpath running: the host's own figures only.
            None => {
                let (disk_total_bytes, disk_free_bytes) = probe.disk();
                Heartbeat {
                    disk_total_bytes,
                    disk_free_bytes,
                    ..Heartbeat::default()
                }
            }
        };
        hb.versions
            .insert("agent".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        {
            use std::sync::atomic::Ordering::Relaxed;
            hb.spool_batches = spool.batches.load(Relaxed);
            hb.spool_bytes = spool.bytes.load(Relaxed);
            hb.spool_dropped_events = spool.dropped.load(Relaxed);
        }
        let url = format!("{}/api/v1/nodes/heartbeat", controls[at]);
        let sent = http
            .post(&url)
            .set("Authorization", &format!("Bearer {node_key}"))
            .send_json(&hb);
        if let Err(e) = sent {
            tracing::warn!(control = %controls[at], error = %e, "heartbeat failed");
            at = (at + 1) % controls.len();
        }
        std::thread::sleep(every);
    }
}

/// One long poll: the new table and its digest.
fn poll(http: &ureq::Agent, url: &str, node_key: &str) -> Result<(Vec<u8>, String), Miss> {
    let resp = match http
        .get(url)
        .set("Authorization", &format!("Bearer {node_key}"))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(s @ (401 | 403), r)) => {
            return Err(Miss::Refused(s, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(s, r)) => {
            return Err(Miss::Failed(format!(
                "HTTP {s}: {}",
                r.into_string().unwrap_or_default()
            )))
        }
        Err(e) => return Err(Miss::Failed(e.to_string())),
    };
    if resp.status() == 204 {
        return Err(Miss::Unchanged);
    }
    let said_digest = resp.header(DIGEST_HEADER).unwrap_or("").to_owned();
    let said_mac = resp.header(MAC_HEADER).unwrap_or("").to_owned();
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(resp.into_reader(), MAX_TABLE + 1),
        &mut body,
    )
    .map_err(|e| Miss::Failed(format!("reading the table: {e}")))?;
    check(&body, &said_digest, &said_mac, node_key).map_err(Miss::Failed)?;
    Ok((body, said_digest))
}

/// A table as it came over the network: its size, digest, tag and header.
fn check(body: &[u8], said_digest: &str, said_mac: &str, node_key: &str) -> Result<(), String> {
    if body.len() as u64 > MAX_TABLE {
        return Err(format!("table refused: over {MAX_TABLE} bytes"));
    }
    if digest(body) != said_digest {
        return Err("table refused: its digest does not match (truncated or changed)".into());
    }
    if !mac_ok(node_key, body, said_mac) {
        return Err("table refused: not authenticated under this node's key".into());
    }
    proto::policy::table::PolicyTable::parse(body).map_err(|e| format!("table refused: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_taken_only_whole_and_under_the_node_key() {
        use proto::policy::table::{EdgePolicy, MeshPolicy, NodePolicy, PolicySpec};
        let spec = PolicySpec {
            generation: 0,
            created_ms: 0,
            node: NodePolicy {
                node_id: "n_a".into(),
                region: String::new(),
                public: false,
                port_pool: Default::default(),
                proxy_types: Default::default(),
                max_proxies_per_session: 0,
                sub_domain_host: String::new(),
            },
            keys: Vec::new(),
            invites: Vec::new(),
            tenants: Vec::new(),
            mesh: MeshPolicy::default(),
            edge: EdgePolicy::default(),
        };
        let body = spec.encode();
        let (d, m) = (digest(&body), mac("nk_a", &body));
        assert_eq!(check(&body, &d, &m, "nk_a"), Ok(()));
        // Cut short: the digest says so.
        let cut = &body[..body.len() - 1];
        assert!(check(cut, &d, &m, "nk_a").unwrap_err().contains("digest"));
        // Changed, digest recomputed by whoever changed it: the tag says so.
        let mut changed = body.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        let e = check(&changed, &digest(&changed), &m, "nk_a").unwrap_err();
        assert!(e.contains("not authenticated"), "{e}");
        // Another node's key.
        assert!(check(&body, &d, &m, "nk_b")
            .unwrap_err()
            .contains("not authenticated"));
        assert!(check(&body, &d, "zz", "nk_a").is_err());
        // Whole and authenticated, but not a table.
        let junk = b"not a table".to_vec();
        let e = check(&junk, &digest(&junk), &mac("nk_a", &junk), "nk_a").unwrap_err();
        assert!(e.starts_with("table refused"), "{e}");
    }
}
