//! Compiles the local node's state (node row, invites a live ticket may name,
//! ticket keys) into a policy table and publishes it to the shared-memory
//! directory the fastpath watches.
//!
//! Publishing is `policy.tbl.tmp-<gen>` then `rename` onto `policy.tbl`, so
//! the fastpath sees either the old table or the new one, never half of one.
//! The generation is one more than the largest of: the table on disk, the
//! counter in the database, and what this process last wrote; so a restarted
//! slowpath (or a fresh database next to a running fastpath) never publishes
//! a generation the fastpath would refuse as stale.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::policy::{InvitePolicy, NodePolicy, PolicySpec, PolicyTable, TicketKey};
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::{invites, nodes, tickets};

/// File name of the published table inside the shm directory.
pub const TABLE_FILE: &str = "policy.tbl";
/// `meta` key of the generation counter.
const GENERATION_KEY: &str = "policy_generation";
/// Changes arriving within this window are published together.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How often the table is recompiled anyway (invites aging out of it).
const REFRESH: Duration = Duration::from_secs(30);

/// What was last published, for the stats endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishStatus {
    /// Generation of the table on disk (0 = none yet).
    pub generation: u64,
    /// When it was published, ms.
    pub published_ms: i64,
    /// Invites it carries.
    pub invites: usize,
    /// Size, bytes.
    pub bytes: usize,
    /// Compile + write time, µs.
    pub publish_us: u64,
    /// Last publish error, if the latest attempt failed.
    pub last_error: Option<String>,
}

/// Publishes the local node's table on request and periodically.
pub struct Publisher {
    db: Db,
    dir: PathBuf,
    node_id: String,
    wake: Notify,
    status: Mutex<PublishStatus>,
    /// The last encoded table with generation and time zeroed: a recompile
    /// that yields the same content is not published again.
    last_content: Mutex<Option<Vec<u8>>>,
    /// One publish at a time: two at once could pick the same generation,
    /// and the fastpath would refuse the second as stale.
    serial: tokio::sync::Mutex<()>,
}

impl Publisher {
    /// A publisher for `node_id` into `dir` (created if missing).
    pub fn new(db: Db, dir: PathBuf, node_id: String) -> Arc<Publisher> {
        Arc::new(Publisher {
            db,
            dir,
            node_id,
            wake: Notify::new(),
            status: Mutex::new(PublishStatus::default()),
            last_content: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
        })
    }

    /// The shm directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Asks for a publish soon (after [`DEBOUNCE`]).
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// What was last published.
    pub fn status(&self) -> PublishStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publish the change an API call just made and wait (at most
    /// [`ENFORCE_WAIT`]) until every live fastpath worker on this host
    /// enforces it, so that when the call returns, the change holds: a
    /// fresh invite's ticket logs in, a revoked invite's sessions are gone.
    /// Returns how long enforcement took, or None if it did not finish in
    /// time (the change still lands; the call does not fail for it).
    pub async fn sync(&self) -> Result<Option<Duration>> {
        let started = Instant::now();
        let generation = self.publish(false).await?;
        loop {
            if applied_everywhere(&self.dir, generation) {
                return Ok(Some(started.elapsed()));
            }
            if started.elapsed() > ENFORCE_WAIT {
                tracing::warn!(
                    generation,
                    "fastpath workers did not confirm the new policy in time"
                );
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs forever: publishes on request (debounced) and every [`REFRESH`].
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            if let Err(e) = self.publish(false).await {
                tracing::warn!(error = %e, "policy publish failed; the fastpath keeps its last table");
            }
        }
    }

    /// Compiles and publishes now; `force` publishes even when nothing changed.
    /// Returns the generation on disk afterwards.
    pub async fn publish(&self, force: bool) -> Result<u64> {
        let _one_at_a_time = self.serial.lock().await;
        let started = Instant::now();
        let result = self.publish_inner(force, started).await;
        if let Err(e) = &result {
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error = Some(e.to_string());
        }
        result
    }

    async fn publish_inner(&self, force: bool, started: Instant) -> Result<u64> {
        let now = now_ms();
        let mut spec = compile(&self.db, &self.node_id, now).await?;
        let content = spec.encode();
        {
            let last = self.last_content.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.as_deref() == Some(&content[..]) {
                return Ok(self.status().generation);
            }
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", self.dir.display())))?;
        let path = self.dir.join(TABLE_FILE);
        let on_disk = match tokio::fs::read(&path).await {
            Ok(bytes) => PolicyTable::parse(&bytes)
                .map(|t| t.generation())
                .unwrap_or(0),
            Err(_) => 0,
        };
        let counted = db::meta_get(&self.db, GENERATION_KEY)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let generation = on_disk.max(counted).max(self.status().generation) + 1;
        db::meta_set(&self.db, GENERATION_KEY, &generation.to_string()).await?;
        spec.generation = generation;
        spec.created_ms = u64::try_from(now).unwrap_or(0);
        let bytes = spec.encode();
        let tmp = self.dir.join(format!("{TABLE_FILE}.tmp-{generation}"));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| Error::Internal(format!("cannot rename onto {}: {e}", path.display())))?;
        let publish_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        *self.last_content.lock().unwrap_or_else(|p| p.into_inner()) = Some(content);
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = PublishStatus {
            generation,
            published_ms: now,
            invites: spec.invites.len(),
            bytes: bytes.len(),
            publish_us,
            last_error: None,
        };
        tracing::info!(
            generation,
            invites = spec.invites.len(),
            bytes = bytes.len(),
            publish_us,
            "policy table published"
        );
        Ok(generation)
    }
}

/// How long an API call waits for the fastpath to enforce its change.
pub const ENFORCE_WAIT: Duration = Duration::from_secs(1);

/// Whether every live fastpath worker whose ring is in `dir` reports
/// `generation` (or later) as applied. Rings of dead producers (a stopped
/// fastpath's leftovers) do not count; no rings at all means nothing to
/// wait for (a `serve` without a local fastpath).
pub fn applied_everywhere(dir: &Path, generation: u64) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "ring") {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let Ok(map) = fastpath::shm::Mapping::read_only(&file) else {
            continue;
        };
        // SAFETY: a read-only mapping that outlives `ring`; only the
        // header's atomics are read (no push or pop on this handle).
        let Ok(ring) = (unsafe { proto::ring::Ring::attach(map.as_mut_ptr(), map.len()) }) else {
            continue;
        };
        let pid = ring.producer_pid() as i32;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        if alive && ring.applied_generation() < generation {
            return false;
        }
    }
    true
}

/// The node's state as a policy spec (generation and time left at 0).
pub async fn compile(db: &Db, node_id: &str, now: i64) -> Result<PolicySpec> {
    let node = nodes::get(db, node_id).await?;
    let keys = tickets::public_keys(db).await?;
    let invites = invites::for_policy(db, node_id, now).await?;
    Ok(PolicySpec {
        generation: 0,
        created_ms: 0,
        node: NodePolicy {
            node_id: node.id.clone(),
            region: node.region.clone(),
            public: node.public,
            port_pool: node.port_pool.clone(),
            proxy_types: node.proxy_types,
            max_proxies_per_session: node.max_proxies_per_session,
        },
        keys: keys
            .into_iter()
            .map(|k| TicketKey {
                kid: k.kid,
                public_key: k.public_key,
            })
            .collect(),
        invites: invites
            .into_iter()
            .map(|i| InvitePolicy {
                id: i.id,
                revoked: i.revoked,
                expires_ms: u64::try_from(i.expires_ms).unwrap_or(0),
                max_conns: i.max_conns,
                max_proxies: i.max_proxies,
                proxy_types: i.proxy_types,
                port_pool: i.port_pool,
                domain_suffix: i.domain_suffix,
            })
            .collect(),
    })
}
