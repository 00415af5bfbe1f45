//! Publish: the local node's policy, compiled ([`super::compile`]), written
//! to the shared-memory directory the fastpath watches; with
//! [`Publisher::sync`] an API call also waits until the workers enforce it
//! ([`super::applied`]), and fails with 503 when they do not within 1 s.
//!
//! Three parts a change passes through:
//! 1. **inputs**: the database (node row, invites, ticket keys, tenants)
//!    and what other tasks hand over: etcd's tenants, the tokens over
//!    quota ([`Publisher::set_etcd_tenants`], [`Publisher::set_over_quota`]);
//! 2. **compile**: the rows into a [`PolicyState`], kept between publishes
//!    so that one invite's change costs one row and one encode;
//! 3. **write** (`TableWriter`): encode, skip a table equal to the last,
//!    pick the generation, stamp and seal it, write it aside and rename it
//!    onto `policy.tbl` in the verified directory ([`shm::ShmDir`]), so the
//!    fastpath sees either the old table or the new one, never half of
//!    one; the HMAC under the instance key makes it refuse anything the
//!    slowpath did not write.
//!
//! The generation is one more than the largest of: the table on disk, the
//! counter in the database, and what this process last wrote; so a restarted
//! slowpath (or a fresh database next to a running fastpath) never publishes
//! a generation the fastpath would refuse as stale.
//!
//! Locks: `table` (async) holds the compiled state and the writer, and is
//! held for a whole publish, so publishes run one at a time (two at once
//! could pick the same generation, and the fastpath would refuse the
//! second as stale); `inputs` holds what other tasks hand over, and
//! `status` what the stats endpoint shows: both are plain mutexes held for
//! a copy, so neither a setter nor the stats wait for a publish in progress.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use proto::policy::{InviteId, PolicySpec};
use serde::Serialize;
use shm::InstanceDir;
use tokio::sync::{watch, Notify};

use super::applied;
use super::compile::{self, PolicyState};
use crate::clock::now_ms;
use crate::domain::tenants::{self, Tenant};
use crate::domain::{invites, nodes, tickets};
use crate::error::{Error, Result};
use crate::store::changes::{Change, Changes};
use crate::store::db::{self, Db};

/// File name of the published table inside the shm directory.
pub use shm::TABLE_FILE;
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

/// See [`Publisher::on_tenants`].
pub type TenantHook = Box<dyn Fn(&[Tenant]) + Send + Sync>;

/// Tenant inputs other tasks hand over.
#[derive(Default)]
struct Inputs {
    /// Tenants from etcd (None: no etcd source).
    etcd_tenants: Option<Arc<BTreeMap<String, Tenant>>>,
    /// Tokens over their traffic quota.
    over_quota: HashSet<String>,
    /// An input changed since the tenants were last compiled.
    tenants_dirty: bool,
    /// This host's mesh relay id (0: none).
    mesh_relay: u32,
    /// Mesh nodes or revocations changed since the last compile.
    mesh_dirty: bool,
    /// What signs the relay's link tokens (the built-in relay dials the
    /// relays with higher ids).
    mesh_signer: Option<crate::domain::tickets::TicketSigner>,
    /// Link tokens made so far.
    link_tokens: crate::domain::mesh::servers::LinkTokens,
    /// Pending ACME HTTP-01 answers: token → key authorization.
    acme_challenges: BTreeMap<String, String>,
}

/// What a publish works on, behind [`Publisher::table`].
struct Table {
    /// The state of the last full compile, kept up to date by per-invite
    /// publishes (None until the first full compile succeeds).
    state: Option<PolicyState>,
    writer: TableWriter,
}

/// Publishes the local node's table on request and periodically.
pub struct Publisher {
    db: Db,
    node_id: String,
    shm: Arc<InstanceDir>,
    /// Wakes [`Publisher::run`] for a debounced publish.
    wake: Notify,
    inputs: Mutex<Inputs>,
    /// Called with every tenant after each compile of tenants (traffic
    /// report thresholds and quotas follow the table).
    on_tenants: OnceLock<TenantHook>,
    /// One publish at a time, over the compiled state and the writer.
    table: tokio::sync::Mutex<Table>,
    status: Mutex<PublishStatus>,
    /// Tells the control planes sharing the database about the changes
    /// API calls make here (set once, at start; none: nobody to tell).
    changes: OnceLock<Arc<Changes>>,
    /// Counts the changes this control plane made or heard of: node
    /// agents' long polls wait on it ([`Publisher::changes_epoch`]), with
    /// the one node whose table the latest change concerns (None: any).
    epoch: watch::Sender<(u64, Option<String>)>,
    /// Set when the control plane shuts down: agents' long polls end.
    stopping: std::sync::atomic::AtomicBool,
}

/// A poisoned lock only means a panic elsewhere while it was held; what it
/// guards (plain values replaced whole) is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Publisher {
    /// A publisher for `node_id` into the verified instance directory.
    pub fn new(db: Db, shm: Arc<InstanceDir>, node_id: String) -> Arc<Publisher> {
        Arc::new(Publisher {
            table: tokio::sync::Mutex::new(Table {
                state: None,
                writer: TableWriter::new(db.clone(), Arc::clone(&shm)),
            }),
            db,
            node_id,
            shm,
            wake: Notify::new(),
            inputs: Mutex::new(Inputs::default()),
            on_tenants: OnceLock::new(),
            status: Mutex::new(PublishStatus::default()),
            changes: OnceLock::new(),
            epoch: watch::Sender::new((0, None)),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Changes as they come: the count moves at every change made here or
    /// told by another control plane, with the node whose table the change
    /// concerns when it concerns one only (an invite). A node agent's long
    /// poll compiles its node's table again after a change that may
    /// concern it; one that sees the count move by one for another node
    /// goes on waiting.
    pub fn changes_epoch(&self) -> watch::Receiver<(u64, Option<String>)> {
        self.epoch.subscribe()
    }

    /// The control plane is shutting down: agents' long polls end now
    /// (they move to another control plane) rather than holding the
    /// shutdown for their wait.
    pub fn stop_polls(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.bump();
    }

    /// Whether [`Publisher::stop_polls`] was called.
    pub fn polls_stopped(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.bump_for(None);
    }

    /// A change that concerns `node`'s table only (Some), or any (None).
    fn bump_for(&self, node: Option<String>) {
        self.epoch.send_modify(|e| *e = (e.0.wrapping_add(1), node));
    }

    /// The node an invite belongs to, for [`Publisher::bump_for`] (None when
    /// it is gone or unreadable: then any node may be concerned).
    async fn invite_node(&self, id: InviteId) -> Option<String> {
        invites::get(&self.db, &id.to_string())
            .await
            .ok()
            .map(|inv| inv.node_id)
    }

    /// The table of node `node_id`, for its agent ([`crate::agent`]): the
    /// node's row, the ticket keys, its invites, and the tenants as this
    /// control plane has them (database, etcd, over quota); encoded, but
    /// neither stamped nor sealed, which the agent does under its own
    /// instance key. No mesh relay, edge routes or certificates: those are
    /// not served to remote nodes yet.
    pub async fn compile_for(&self, node_id: &str) -> Result<Vec<u8>> {
        let now = now_ms();
        let node = nodes::get(&self.db, node_id).await?;
        let keys = tickets::public_keys(&self.db).await?;
        let invites = invites::for_policy(&self.db, node_id, now).await?;
        let (all, over_quota) = self.tenants_now().await?;
        let tenants = compile::tenant_policies(&all, &over_quota);
        let mesh = compile_mesh(&self.db, 0).await?;
        Ok(PolicyState::new(&node, keys, invites, tenants, mesh).encode())
    }

    /// Announce the changes [`Publisher::sync`] and its kin publish to the
    /// other control planes on the same database (once, at start).
    pub fn set_changes(&self, changes: Arc<Changes>) {
        let _ = self.changes.set(changes);
    }

    /// Tells the node agents waiting here and the other control planes
    /// (their nodes republish too).
    async fn announce(&self, change: Change) {
        let node = match change {
            Change::Invite(id) => self.invite_node(id).await,
            _ => None,
        };
        self.bump_for(node);
        if let Some(c) = self.changes.get() {
            c.announce(change).await;
        }
    }

    /// Applies a change another control plane announced: publishes it
    /// here (not announced again).
    pub async fn apply_remote(&self, change: Change) {
        let node = match change {
            Change::Invite(id) => self.invite_node(id).await,
            _ => None,
        };
        self.bump_for(node);
        let result = match change {
            Change::All => self.publish(false).await,
            Change::Invite(id) => self.publish_invite(id).await,
            Change::Edge => self.publish_edge().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, ?change, "publishing another control plane's change failed; the fastpath keeps its last table");
        }
    }

    /// Replace the tenants that came from etcd, and publish soon.
    pub fn set_etcd_tenants(&self, tenants: Arc<BTreeMap<String, Tenant>>) {
        lock(&self.inputs).etcd_tenants = Some(tenants);
        self.tenants_changed();
    }

    /// The tenants last read from etcd (None: no etcd source).
    pub fn etcd_tenants(&self) -> Option<Arc<BTreeMap<String, Tenant>>> {
        lock(&self.inputs).etcd_tenants.clone()
    }

    /// Replace the set of tokens over quota, and publish soon if it changed.
    pub fn set_over_quota(&self, tokens: HashSet<String>) {
        let mut inputs = lock(&self.inputs);
        if inputs.over_quota != tokens {
            inputs.over_quota = tokens;
            drop(inputs);
            self.tenants_changed();
        }
    }

    /// Register the function called with every tenant after each compile
    /// (once, at start-up: a second registration is ignored).
    pub fn on_tenants(&self, hook: TenantHook) {
        if self.on_tenants.set(hook).is_err() {
            tracing::warn!("a second tenant hook was ignored");
        }
    }

    /// A tenant source changed: recompile tenants on the next pass.
    pub fn tenants_changed(&self) {
        lock(&self.inputs).tenants_dirty = true;
        self.bump();
        self.request();
    }

    /// This host's mesh relay is server `id` (0: no relay here).
    pub fn set_mesh_relay(&self, id: u32) {
        let mut inputs = lock(&self.inputs);
        inputs.mesh_relay = id;
        inputs.mesh_dirty = true;
        drop(inputs);
        self.request();
    }

    /// Mesh nodes or token revocations changed: recompile the mesh part
    /// on the next pass (soon: a revoked node is cut off by the table).
    pub fn mesh_changed(&self) {
        lock(&self.inputs).mesh_dirty = true;
        self.request();
    }

    /// The shm directory.
    pub fn dir(&self) -> &Path {
        self.shm.dir.path()
    }

    /// Asks for a publish soon (after `DEBOUNCE`).
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// What was last published.
    pub fn status(&self) -> PublishStatus {
        lock(&self.status).clone()
    }

    /// Publish the change an API call just made and wait (at most
    /// [`applied::ENFORCE_WAIT`]) until every live fastpath worker on this
    /// host enforces it, so that when the call returns, the change holds: a
    /// fresh invite's ticket logs in, a revoked invite's sessions are gone.
    /// Returns how long enforcement took; when the fastpath does not apply
    /// the change in time the change is recorded but the call fails with
    /// [`Error::Unavailable`] saying why. The other control planes on the
    /// same database are told first, and publish it to their nodes.
    pub async fn sync(&self) -> Result<Duration> {
        let started = Instant::now();
        self.announce(Change::All).await;
        let generation = self.publish(false).await?;
        applied::wait_applied(&self.shm, generation, started).await
    }

    /// Like [`Publisher::sync`] for a change of the edge.
    pub async fn sync_edge(&self) -> Result<Duration> {
        let started = Instant::now();
        self.announce(Change::Edge).await;
        let generation = self.publish_edge().await?;
        applied::wait_applied(&self.shm, generation, started).await
    }

    /// Like [`Publisher::sync`] for a change to one invite.
    pub async fn sync_invite(&self, id: InviteId) -> Result<Duration> {
        let started = Instant::now();
        self.announce(Change::Invite(id)).await;
        let generation = self.publish_invite(id).await?;
        applied::wait_applied(&self.shm, generation, started).await
    }

    /// Runs forever: publishes on request (debounced) and every `REFRESH`.
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
        let mut table = self.table.lock().await;
        let result = self.publish_all(&mut table, force).await;
        self.note(result)
    }

    /// Publishes the change to one invite (created, revoked): the invite is
    /// re-read and replaced in the compiled state kept from the last full
    /// compile, so a change costs one row and one encode, not a query of
    /// every invite. Falls back to a full compile when there is no state yet.
    pub async fn publish_invite(&self, id: InviteId) -> Result<u64> {
        let mut table = self.table.lock().await;
        let result = async {
            let Table { state, writer } = &mut *table;
            let Some(state) = state else {
                return self.publish_all(&mut table, false).await;
            };
            let started = Instant::now();
            let row = match invites::get(&self.db, &id.to_string()).await {
                Ok(inv) => Some(inv),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            state.apply_invite(id, row, &self.node_id, now_ms());
            let compile_us = elapsed_us(started);
            self.write(writer, state, false, started, compile_us).await
        }
        .await;
        self.note(result)
    }

    /// The periodic pass: a full compile the first time (or after a failed
    /// one); after a tenant input changed, the tenants; otherwise only
    /// dropping invites that no live ticket can name any more from the kept
    /// state — no query, so a 100k-invite node does not stall its API
    /// (SQLite has one connection) every [`REFRESH`].
    async fn refresh(&self) -> Result<u64> {
        let mut table = self.table.lock().await;
        let result = async {
            let Table { state, writer } = &mut *table;
            let Some(state) = state else {
                return self.publish_all(&mut table, false).await;
            };
            let started = Instant::now();
            let (tenants_dirty, mesh_dirty) = {
                let inputs = lock(&self.inputs);
                (inputs.tenants_dirty, inputs.mesh_dirty)
            };
            if tenants_dirty || mesh_dirty {
                if tenants_dirty {
                    state.tenants = self.compile_tenants().await?;
                }
                if mesh_dirty {
                    state.mesh = self.compile_mesh().await?;
                }
                let compile_us = elapsed_us(started);
                return self.write(writer, state, false, started, compile_us).await;
            }
            if state.prune_invites(now_ms()) == 0 {
                return Ok(writer.generation);
            }
            self.write(writer, state, false, started, 0).await
        }
        .await;
        self.note(result)
    }

    /// The full compile and its write; the state is replaced only when the
    /// compile succeeded.
    async fn publish_all(&self, table: &mut Table, force: bool) -> Result<u64> {
        let started = Instant::now();
        let now = now_ms();
        let node = nodes::get(&self.db, &self.node_id).await?;
        let keys = tickets::public_keys(&self.db).await?;
        let invites = invites::for_policy(&self.db, &self.node_id, now).await?;
        let tenants = self.compile_tenants().await?;
        let mesh = self.compile_mesh().await?;
        let mut state = PolicyState::new(&node, keys, invites, tenants, mesh);
        (state.edge, state.certs) = self.compile_edge().await?;
        let state = table.state.insert(state);
        let compile_us = elapsed_us(started);
        self.write(&mut table.writer, state, force, started, compile_us)
            .await
    }

    /// Every tenant from every source in its table form; the tenant hook
    /// sees them first.
    async fn compile_tenants(&self) -> Result<Vec<proto::policy::TenantPolicy>> {
        // Cleared before reading: an input that changes meanwhile marks
        // the tenants again for the next pass.
        lock(&self.inputs).tenants_dirty = false;
        let (all, over_quota) = self.tenants_now().await?;
        if let Some(hook) = self.on_tenants.get() {
            hook(&all);
        }
        Ok(compile::tenant_policies(&all, &over_quota))
    }

    /// Every tenant from every source (the database and etcd), and the
    /// tokens over quota.
    async fn tenants_now(&self) -> Result<(Vec<Tenant>, HashSet<String>)> {
        let database = tenants::list(&self.db).await?;
        let (etcd, over_quota) = {
            let inputs = lock(&self.inputs);
            (inputs.etcd_tenants.clone(), inputs.over_quota.clone())
        };
        Ok((
            compile::merge_tenants(database, etcd.as_deref()),
            over_quota,
        ))
    }

    /// The mesh relay's part: this host's relay id, the authorized nodes
    /// and the revoked token ids.
    async fn compile_mesh(&self) -> Result<proto::policy::MeshPolicy> {
        let relay_id = {
            let mut inputs = lock(&self.inputs);
            inputs.mesh_dirty = false;
            inputs.mesh_relay
        };
        let mut mesh = compile_mesh(&self.db, relay_id).await?;
        if relay_id == 0 {
            return Ok(mesh);
        }
        let relays = crate::domain::mesh::servers::relays(&self.db).await?;
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let mut inputs = lock(&self.inputs);
        let Inputs {
            mesh_signer,
            link_tokens,
            ..
        } = &mut *inputs;
        let links = match mesh_signer {
            Some(s) => link_tokens.for_relay(&s.mesh_signer(), relay_id, &relays, now_s),
            None => Vec::new(),
        };
        mesh.hs256_secret = mesh_signer
            .as_ref()
            .and_then(|s| s.mesh_secret())
            .unwrap_or_default()
            .to_owned();
        mesh.peers = peers(relay_id, &relays, &links);
        Ok(mesh)
    }

    /// The edge's part: the routes with their origins, the certificate
    /// store of the valid certificates, and the pending ACME answers.
    async fn compile_edge(&self) -> Result<(proto::policy::EdgePolicy, Vec<u8>)> {
        let routes = crate::domain::edge::resolved(&self.db).await?;
        let (file, count) = crate::domain::certs::store_file(&self.db).await?;
        let certs = (count > 0).then(|| (proto::certstore::digest(&file), count));
        let challenges = lock(&self.inputs)
            .acme_challenges
            .iter()
            .map(|(t, a)| (t.clone(), a.clone()))
            .collect();
        let edge = proto::policy::EdgePolicy {
            routes: crate::domain::edge::table_routes(&routes),
            certs,
            challenges,
        };
        Ok((edge, if count > 0 { file } else { Vec::new() }))
    }

    /// Publishes a change of the edge (routes, origins, certificates,
    /// ACME answers): the edge's part is compiled again and written with
    /// the rest of the state kept. Returns the generation on disk.
    pub async fn publish_edge(&self) -> Result<u64> {
        let mut table = self.table.lock().await;
        let result = async {
            let Table { state, writer } = &mut *table;
            let Some(state) = state else {
                return self.publish_all(&mut table, false).await;
            };
            let started = Instant::now();
            (state.edge, state.certs) = self.compile_edge().await?;
            let compile_us = elapsed_us(started);
            self.write(writer, state, false, started, compile_us).await
        }
        .await;
        self.note(result)
    }

    /// Add (Some) or take away (None) the answer to ACME HTTP-01 token
    /// `token`; published by the next [`Publisher::publish_edge`].
    pub fn set_acme_challenge(&self, token: &str, answer: Option<&str>) {
        let mut inputs = lock(&self.inputs);
        match answer {
            Some(a) => inputs
                .acme_challenges
                .insert(token.to_owned(), a.to_owned()),
            None => inputs.acme_challenges.remove(token),
        };
    }

    /// The built-in relay's link tokens are signed by `signer`.
    pub fn set_mesh_signer(&self, signer: crate::domain::tickets::TicketSigner) {
        let mut inputs = lock(&self.inputs);
        inputs.mesh_signer = Some(signer);
        inputs.mesh_dirty = true;
    }

    /// Writes `state` and records the outcome for the stats.
    async fn write(
        &self,
        writer: &mut TableWriter,
        state: &PolicyState,
        force: bool,
        started: Instant,
        compile_us: u64,
    ) -> Result<u64> {
        let generation = writer.generation;
        let Some(status) = writer.write(state, force, started, compile_us).await? else {
            return Ok(generation);
        };
        let generation = status.generation;
        *lock(&self.status) = status;
        Ok(generation)
    }

    /// Records a failed publish for the stats.
    fn note(&self, result: Result<u64>) -> Result<u64> {
        if let Err(e) = &result {
            lock(&self.status).last_error = Some(e.to_string());
        }
        result
    }
}

/// Writes tables into the shm directory: encode, skip one equal to the
/// last, pick the generation, stamp, seal, write aside and rename.
struct TableWriter {
    /// Where the generation counter is kept.
    db: Db,
    shm: Arc<InstanceDir>,
    /// The last table written, with generation and time zeroed: a
    /// recompile that yields the same content is not written again.
    last_content: Option<Vec<u8>>,
    /// The generation this process last wrote (0: none yet).
    generation: u64,
    /// The digest of the certificate store last written.
    last_certs: [u8; 32],
}

impl TableWriter {
    fn new(db: Db, shm: Arc<InstanceDir>) -> TableWriter {
        TableWriter {
            db,
            shm,
            last_content: None,
            generation: 0,
            last_certs: [0; 32],
        }
    }

    /// Encodes `state` and writes it unless it equals what was last written
    /// (and `force` is off). Returns the new status; None when nothing was
    /// written.
    async fn write(
        &mut self,
        state: &PolicyState,
        force: bool,
        started: Instant,
        compile_us: u64,
    ) -> Result<Option<PublishStatus>> {
        let now = now_ms();
        let bytes = state.encode();
        let encode_us = elapsed_us(started) - compile_us;
        if !force && self.last_content.as_deref() == Some(&bytes[..]) {
            return Ok(None);
        }
        let content = bytes.clone();
        // The certificate store goes first: the table names its digest, so
        // a fastpath that sees the new table finds the store it names.
        if !state.certs.is_empty() && self.last_certs != proto::certstore::digest(&state.certs) {
            let shm = Arc::clone(&self.shm);
            let certs = state.certs.clone();
            tokio::task::spawn_blocking(move || shm.dir.write_replacing(shm::CERTS_FILE, &certs))
                .await
                .map_err(|e| Error::Internal(format!("certificate writer: {e}")))?
                .map_err(|e| Error::Internal(format!("cannot write {}: {e}", shm::CERTS_FILE)))?;
            self.last_certs = proto::certstore::digest(&state.certs);
        }
        // The table on disk matters only before this process's first
        // publish: the instance lock makes it the only writer afterwards,
        // so a big table is not read and checked again at every change.
        let on_disk = if self.generation == 0 {
            // Unsealed or unreadable counts as none: a planted table must
            // not push the generation counter to its end.
            self.shm.table_generation().unwrap_or(0)
        } else {
            0
        };
        let counted = db::meta_get(&self.db, GENERATION_KEY)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let generation = on_disk
            .max(counted)
            .max(self.generation)
            .checked_add(1)
            .ok_or_else(|| Error::Internal("policy generations are exhausted".into()))?;
        db::meta_set(&self.db, GENERATION_KEY, &generation.to_string()).await?;
        let shm = Arc::clone(&self.shm);
        let created_ms = u64::try_from(now).unwrap_or(0);
        let bytes_len =
            tokio::task::spawn_blocking(move || shm.write_table(bytes, generation, created_ms))
                .await
                .map_err(|e| Error::Internal(format!("table writer: {e}")))?
                .map_err(|e| {
                    Error::Internal(format!(
                        "cannot write {}: {e}",
                        self.shm.dir.path().join(TABLE_FILE).display()
                    ))
                })?;
        let publish_us = elapsed_us(started);
        self.last_content = Some(content);
        self.generation = generation;
        let status = PublishStatus {
            generation,
            published_ms: now,
            invites: state.invites.len(),
            tenants: state.tenants.len(),
            bytes: bytes_len,
            publish_us,
            compile_us,
            encode_us,
            last_error: None,
        };
        tracing::info!(
            generation,
            invites = status.invites,
            tenants = status.tenants,
            bytes = bytes_len,
            compile_us,
            encode_us,
            publish_us,
            "policy table published"
        );
        Ok(Some(status))
    }
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The node's state as a policy spec (generation and time left at 0), read
/// from the database and compiled as a full publish does (without tenants).
pub async fn compile(db: &Db, node_id: &str, now: i64) -> Result<PolicySpec> {
    let node = nodes::get(db, node_id).await?;
    let keys = tickets::public_keys(db).await?;
    let invites = invites::for_policy(db, node_id, now).await?;
    Ok(PolicyState::new(&node, keys, invites, Vec::new(), Default::default()).into_spec())
}

/// The other relays of `relays` as relay `me`'s table lists them, with the
/// link tokens of those it dials (`links`: (relay, token)).
pub fn peers(
    me: u32,
    relays: &[proto::mesh::control::Relay],
    links: &[(u32, String)],
) -> Vec<proto::policy::MeshPeer> {
    relays
        .iter()
        .filter(|r| r.server_id != me)
        .map(|r| proto::policy::MeshPeer {
            relay_id: r.server_id,
            url: r.url.clone(),
            link_token: links
                .iter()
                .find(|(id, _)| *id == r.server_id)
                .map(|(_, t)| t.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// The mesh part of a table for relay `relay_id`: the authorized nodes,
/// the revoked token ids and where the nodes not on it are (the peers are
/// [`peers`]).
pub async fn compile_mesh(db: &Db, relay_id: u32) -> Result<proto::policy::MeshPolicy> {
    let nodes = crate::domain::mesh::nodes::list(db, None)
        .await?
        .into_iter()
        .filter(|n| n.authorized)
        .map(|n| (n.id, n.network_id))
        .collect();
    let revoked = crate::domain::mesh::tokens::blacklist(db)
        .await?
        .into_iter()
        .map(|(jti, _)| jti)
        .collect();
    let locations = if relay_id == 0 {
        Vec::new()
    } else {
        crate::domain::mesh::servers::locations(db)
            .await?
            .into_iter()
            .filter(|&(_, server)| server != relay_id)
            .collect()
    };
    Ok(proto::policy::MeshPolicy {
        relay_id,
        nodes,
        revoked,
        peers: Vec::new(),
        locations,
        hs256_secret: String::new(),
    })
}
