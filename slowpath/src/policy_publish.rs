//! Compiles the local node's state (node row, invites a live ticket may name,
//! ticket keys) into a policy table and publishes it to the shared-memory
//! directory the fastpath watches.
//!
//! Publishing is a private file written aside then renamed onto
//! `policy.tbl` in the verified directory ([`fastpath::shm::ShmDir`]), so
//! the fastpath sees either the old table or the new one, never half of one;
//! each table carries an HMAC under the instance key, so the fastpath
//! refuses anything the slowpath did not write. A change that the fastpath
//! does not apply in time (stopped, wedged, refusing the table) fails the
//! API call that made it with 503 and the reason.
//! The generation is one more than the largest of: the table on disk, the
//! counter in the database, and what this process last wrote; so a restarted
//! slowpath (or a fresh database next to a running fastpath) never publishes
//! a generation the fastpath would refuse as stale.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use fastpath::shm::InstanceDir;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::policy::{
    table, InviteId, InvitePolicy, NodePolicy, PolicySpec, TenantPolicy, TicketKey,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::tenants::Tenant;
use crate::{invites, nodes, tickets};

/// File name of the published table inside the shm directory.
pub use fastpath::shm::TABLE_FILE;
/// `meta` key of the generation counter.
const GENERATION_KEY: &str = "policy_generation";
/// Changes arriving within this window are published together.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How often invites that no live ticket can name are dropped from the table.
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
    /// Tenants it carries.
    pub tenants: usize,
    /// Size, bytes.
    pub bytes: usize,
    /// Compile + encode + write time, µs.
    pub publish_us: u64,
    /// Of which: reading the state (a full query, or one invite row), µs.
    pub compile_us: u64,
    /// Of which: encoding the table, µs.
    pub encode_us: u64,
    /// Last publish error, if the latest attempt failed.
    pub last_error: Option<String>,
}

/// Publishes the local node's table on request and periodically.
pub struct Publisher {
    db: Db,
    shm: Arc<InstanceDir>,
    node_id: String,
    wake: Notify,
    status: Mutex<PublishStatus>,
    /// The last encoded table with generation and time zeroed: a recompile
    /// that yields the same content is not published again.
    last_content: Mutex<Option<Vec<u8>>>,
    /// The state of the last full compile, kept up to date by per-invite
    /// publishes.
    compiled: Mutex<Option<Compiled>>,
    /// One publish at a time: two at once could pick the same generation,
    /// and the fastpath would refuse the second as stale.
    serial: tokio::sync::Mutex<()>,
    /// Tenants from etcd (None: no etcd source).
    etcd_tenants: Mutex<Option<Arc<BTreeMap<String, Tenant>>>>,
    /// Tokens over their traffic quota.
    over_quota: Mutex<HashSet<String>>,
    /// Set when a tenant source changed; the next pass recompiles tenants.
    tenants_dirty: std::sync::atomic::AtomicBool,
    /// Called with every tenant after each compile of tenants (traffic
    /// report thresholds and quotas follow the table).
    on_tenants: Mutex<Option<TenantHook>>,
}

/// See [`Publisher::on_tenants`].
pub type TenantHook = Box<dyn Fn(&[Tenant]) + Send + Sync>;

impl Publisher {
    /// A publisher for `node_id` into the verified instance directory.
    pub fn new(db: Db, shm: Arc<InstanceDir>, node_id: String) -> Arc<Publisher> {
        Arc::new(Publisher {
            db,
            shm,
            node_id,
            wake: Notify::new(),
            status: Mutex::new(PublishStatus::default()),
            last_content: Mutex::new(None),
            compiled: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
            etcd_tenants: Mutex::new(None),
            over_quota: Mutex::new(HashSet::new()),
            tenants_dirty: std::sync::atomic::AtomicBool::new(false),
            on_tenants: Mutex::new(None),
        })
    }

    /// Replace the tenants that came from etcd, and publish soon.
    pub fn set_etcd_tenants(&self, tenants: Arc<BTreeMap<String, Tenant>>) {
        *self.etcd_tenants.lock().unwrap_or_else(|p| p.into_inner()) = Some(tenants);
        self.tenants_changed();
    }

    /// The tenants last read from etcd (None: no etcd source).
    pub fn etcd_tenants(&self) -> Option<Arc<BTreeMap<String, Tenant>>> {
        self.etcd_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the set of tokens over quota, and publish soon if it changed.
    pub fn set_over_quota(&self, tokens: HashSet<String>) {
        let mut cur = self.over_quota.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != tokens {
            *cur = tokens;
            drop(cur);
            self.tenants_changed();
        }
    }

    /// Register a function called with every tenant after each compile.
    pub fn on_tenants(&self, hook: TenantHook) {
        *self.on_tenants.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// A tenant source changed: recompile tenants on the next pass.
    pub fn tenants_changed(&self) {
        self.tenants_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        self.request();
    }

    /// Every tenant from every source: database tenants, then etcd's (a
    /// token in both is taken from etcd).
    async fn all_tenants(&self) -> Result<Vec<Tenant>> {
        let mut by_token: BTreeMap<String, Tenant> = BTreeMap::new();
        for t in crate::tenants::list(&self.db).await? {
            by_token.insert(t.token().to_owned(), t);
        }
        let etcd = self
            .etcd_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(etcd) = etcd {
            for (token, t) in etcd.iter() {
                if by_token.insert(token.clone(), t.clone()).is_some() {
                    tracing::debug!(token = %token, "tenant in both etcd and the database; etcd's record wins");
                }
            }
        }
        Ok(by_token.into_values().collect())
    }

    /// Compile every tenant into its table form.
    async fn compile_tenants(&self) -> Result<Vec<TenantPolicy>> {
        self.tenants_dirty
            .store(false, std::sync::atomic::Ordering::Release);
        let all = self.all_tenants().await?;
        if let Some(hook) = self
            .on_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            hook(&all);
        }
        let over = self
            .over_quota
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(all
            .iter()
            .map(|t| t.policy(over.contains(t.token())))
            .collect())
    }

    /// The shm directory.
    pub fn dir(&self) -> &Path {
        self.shm.dir.path()
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
    /// Returns how long enforcement took; when the fastpath does not apply
    /// the change in time the change is recorded but the call fails with
    /// [`Error::Unavailable`] saying why.
    pub async fn sync(&self) -> Result<Duration> {
        let started = Instant::now();
        let generation = self.publish(false).await?;
        self.wait_applied(generation, started).await
    }

    /// Runs forever: publishes on request (debounced) and every [`REFRESH`].
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "policy publish failed; the fastpath keeps its last table");
            }
        }
    }

    /// Compiles everything from the database and publishes now; `force`
    /// publishes even when nothing changed. Returns the generation on disk
    /// afterwards.
    pub async fn publish(&self, force: bool) -> Result<u64> {
        let _one_at_a_time = self.serial.lock().await;
        let started = Instant::now();
        let result = async {
            let spec = compile(&self.db, &self.node_id, now_ms()).await?;
            let tenants = self.compile_tenants().await?;
            let compiled = Compiled {
                node: spec.node,
                keys: spec.keys,
                invites: spec.invites.into_iter().map(|i| (i.id, i)).collect(),
                tenants,
            };
            let compile_us = elapsed_us(started);
            *self.compiled.lock().unwrap_or_else(|p| p.into_inner()) = Some(compiled);
            self.write(force, started, compile_us).await
        }
        .await;
        self.note_error(&result);
        result
    }

    /// The periodic pass: a full compile the first time (or after a failed
    /// one), afterwards only dropping invites that no live ticket can name
    /// any more from the kept state — no query, so a 100k-invite node does
    /// not stall its API (SQLite has one connection) every [`REFRESH`].
    async fn refresh(&self) -> Result<u64> {
        if self
            .tenants_dirty
            .load(std::sync::atomic::Ordering::Acquire)
        {
            let has_state = self
                .compiled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !has_state {
                return self.publish(false).await;
            }
            let _one_at_a_time = self.serial.lock().await;
            let started = Instant::now();
            let result = async {
                let tenants = self.compile_tenants().await?;
                if let Some(c) = self
                    .compiled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    c.tenants = tenants;
                }
                let compile_us = elapsed_us(started);
                self.write(false, started, compile_us).await
            }
            .await;
            self.note_error(&result);
            return result;
        }
        let pruned = {
            let mut guard = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                None => None,
                Some(c) => {
                    let horizon = u64::try_from(
                        now_ms() - i64::try_from(tickets::MAX_TICKET_TTL_S * 1000).unwrap_or(0),
                    )
                    .unwrap_or(0);
                    let before = c.invites.len();
                    c.invites.retain(|_, inv| inv.expires_ms > horizon);
                    Some(before - c.invites.len())
                }
            }
        };
        match pruned {
            None => self.publish(false).await,
            Some(0) => Ok(self.status().generation),
            Some(_) => {
                let _one_at_a_time = self.serial.lock().await;
                let started = Instant::now();
                let result = self.write(false, started, 0).await;
                self.note_error(&result);
                result
            }
        }
    }

    /// Publishes the change to one invite (created, revoked): the invite is
    /// re-read and replaced in the compiled state kept from the last full
    /// compile, so a change costs one row and one encode, not a query of
    /// every invite. Falls back to a full compile when there is no state yet.
    pub async fn publish_invite(&self, id: InviteId) -> Result<u64> {
        if self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return self.publish(false).await;
        }
        let _one_at_a_time = self.serial.lock().await;
        let started = Instant::now();
        let result = async {
            let now = now_ms();
            let row = match invites::get(&self.db, &id.to_string()).await {
                Ok(inv) => Some(inv),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            let horizon = now - i64::try_from(tickets::MAX_TICKET_TTL_S * 1000).unwrap_or(0);
            {
                let mut guard = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
                let Some(compiled) = guard.as_mut() else {
                    return Err(Error::Internal("compiled policy state vanished".into()));
                };
                match row {
                    Some(inv) if inv.node_id == self.node_id && inv.expires_ms > horizon => {
                        compiled.invites.insert(inv.id, invite_policy(inv));
                    }
                    _ => {
                        compiled.invites.remove(&id);
                    }
                }
            }
            let compile_us = elapsed_us(started);
            self.write(false, started, compile_us).await
        }
        .await;
        self.note_error(&result);
        result
    }

    /// Like [`Publisher::sync`] for a change to one invite.
    pub async fn sync_invite(&self, id: InviteId) -> Result<Duration> {
        let started = Instant::now();
        let generation = self.publish_invite(id).await?;
        self.wait_applied(generation, started).await
    }

    fn note_error(&self, result: &Result<u64>) {
        if let Err(e) = result {
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error = Some(e.to_string());
        }
    }

    /// Encode the compiled state, and write it unless it equals what was
    /// last written (and `force` is off). Called with `serial` held.
    async fn write(&self, force: bool, started: Instant, compile_us: u64) -> Result<u64> {
        let now = now_ms();
        let (mut bytes, invites, tenants) = {
            let guard = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            let Some(c) = guard.as_ref() else {
                return Err(Error::Internal("no compiled policy state".into()));
            };
            let bytes = table::encode_parts(
                0,
                0,
                &c.node,
                &c.keys,
                c.invites.len(),
                c.invites.values(),
                &c.tenants,
            );
            (bytes, c.invites.len(), c.tenants.len())
        };
        let encode_us = elapsed_us(started) - compile_us;
        {
            let last = self.last_content.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.as_deref() == Some(&bytes[..]) {
                return Ok(self.status().generation);
            }
        }
        let content = bytes.clone();
        // The table on disk matters only before this process's first
        // publish: the instance lock makes it the only writer afterwards,
        // so a big table is not read and checked again at every change.
        let ours = self.status().generation;
        let on_disk = if ours == 0 {
            disk_generation(&self.shm)
        } else {
            0
        };
        let counted = db::meta_get(&self.db, GENERATION_KEY)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let generation = on_disk
            .max(counted)
            .max(ours)
            .checked_add(1)
            .ok_or_else(|| Error::Internal("policy generations are exhausted".into()))?;
        db::meta_set(&self.db, GENERATION_KEY, &generation.to_string()).await?;
        table::stamp(&mut bytes, generation, u64::try_from(now).unwrap_or(0));
        self.shm.key.seal_table(&mut bytes);
        let shm = Arc::clone(&self.shm);
        let file = bytes;
        let bytes_len = file.len();
        tokio::task::spawn_blocking(move || shm.dir.write_replacing(TABLE_FILE, &file))
            .await
            .map_err(|e| Error::Internal(format!("table writer: {e}")))?
            .map_err(|e| {
                Error::Internal(format!(
                    "cannot write {}: {e}",
                    self.shm.dir.path().join(TABLE_FILE).display()
                ))
            })?;
        let publish_us = elapsed_us(started);
        *self.last_content.lock().unwrap_or_else(|p| p.into_inner()) = Some(content);
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = PublishStatus {
            generation,
            published_ms: now,
            invites,
            tenants,
            bytes: bytes_len,
            publish_us,
            compile_us,
            encode_us,
            last_error: None,
        };
        tracing::info!(
            generation,
            invites,
            tenants,
            bytes = bytes_len,
            compile_us,
            encode_us,
            publish_us,
            "policy table published"
        );
        Ok(generation)
    }

    /// Wait for the workers, up to [`ENFORCE_WAIT`] from now (the publish
    /// itself may have taken a while on a big table); the returned time
    /// counts from `started`. A change not applied by then is in the
    /// database and the table but not in force: [`Error::Unavailable`],
    /// with what the fastpath said about the table if it refused it.
    async fn wait_applied(&self, generation: u64, started: Instant) -> Result<Duration> {
        let waiting = Instant::now();
        let lagging = loop {
            let lagging = lagging_workers(&self.shm, generation);
            if lagging.is_empty() {
                return Ok(started.elapsed());
            }
            if waiting.elapsed() > ENFORCE_WAIT {
                break lagging;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let enforced = lagging.iter().map(|(_, g)| *g).min().unwrap_or(0);
        let mut reason = format!(
            "the change is recorded but not in force: the fastpath did not apply policy \
             generation {generation} within {} ms ({} worker(s) still enforce generation {enforced})",
            ENFORCE_WAIT.as_millis(),
            lagging.len()
        );
        if let Some(why) = self.refusal_since(started) {
            reason.push_str(&format!("; it refused the table: {why}"));
        }
        tracing::warn!(generation, enforced, %reason, "policy change not applied");
        Err(Error::Unavailable(reason))
    }

    /// What the fastpath last wrote about a refused table, if it wrote it
    /// after `since` (roughly: the refusal note carries a wall-clock ms).
    fn refusal_since(&self, since: Instant) -> Option<String> {
        let text = String::from_utf8(self.shm.dir.read(fastpath::shm::REFUSED_FILE).ok()?).ok()?;
        let (ms, why) = text.trim().split_once(' ')?;
        let ms: i64 = ms.parse().ok()?;
        let since_ms = now_ms() - i64::try_from(since.elapsed().as_millis()).unwrap_or(0) - 1000;
        (ms >= since_ms).then(|| why.to_owned())
    }
}

/// The generation of the table in the directory (0 when absent, unreadable
/// or not sealed with this instance's key: a planted table must not push
/// the generation counter to its end). Only the header is needed, but the
/// tag covers the whole file.
fn disk_generation(shm: &InstanceDir) -> u64 {
    let Ok(file) = shm.dir.read(TABLE_FILE) else {
        return 0;
    };
    match shm.key.open_table(&file) {
        Ok(t) if t.len() >= 24 && &t[..8] == table::MAGIC => {
            u64::from_le_bytes(t[16..24].try_into().unwrap_or([0; 8]))
        }
        _ => 0,
    }
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The compiled state kept between publishes.
struct Compiled {
    node: NodePolicy,
    keys: Vec<TicketKey>,
    invites: BTreeMap<InviteId, InvitePolicy>,
    tenants: Vec<TenantPolicy>,
}

fn invite_policy(i: invites::Invite) -> InvitePolicy {
    InvitePolicy {
        id: i.id,
        revoked: i.revoked,
        expires_ms: u64::try_from(i.expires_ms).unwrap_or(0),
        max_conns: i.max_conns,
        max_proxies: i.max_proxies,
        proxy_types: i.proxy_types,
        port_pool: i.port_pool,
        domain_suffix: i.domain_suffix,
    }
}

/// How long an API call waits for the fastpath to enforce its change.
pub const ENFORCE_WAIT: Duration = Duration::from_secs(1);

/// The workers of the live fastpath whose ring in the directory reports a
/// policy generation older than `generation`, with the one each reports.
/// The live fastpath is the holder of `fastpath.lock` as the kernel names
/// it; rings of any other producer (a stopped fastpath's leftovers) do not
/// count, and with no fastpath at all there is nothing to wait for (a
/// `serve` without a local fastpath).
pub fn lagging_workers(shm: &InstanceDir, generation: u64) -> Vec<(u32, u64)> {
    let Some(live) = shm.dir.holder(fastpath::shm::LOCK_FILE) else {
        return Vec::new();
    };
    let mut lagging = Vec::new();
    for name in shm.dir.names().unwrap_or_default() {
        let Some(worker) = fastpath::shm::ring_worker(&name) else {
            continue;
        };
        let Ok(file) = shm.dir.open_file(&name, false) else {
            continue;
        };
        let Some(header) = fastpath::shm::RingHeader::read(&file) else {
            continue;
        };
        if header.producer_pid == live && header.applied_generation < generation {
            lagging.push((worker, header.applied_generation));
        }
    }
    lagging
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
        invites,
        tenants: Vec::new(),
    })
}
