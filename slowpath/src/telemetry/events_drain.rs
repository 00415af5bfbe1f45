//! Drains the fastpath's per-worker event rings (`events-<worker>.ring` in
//! the shm directory) into the audit log and the traffic table, and feeds
//! tenant traffic samples to the traffic reports and quotas.
//!
//! Every tick (20 ms) the directory is listed; a ring not mapped yet, or
//! whose inode or size changed (the fastpath restarted and made a new one),
//! is (re)mapped. Each tick's records are written in one transaction; a
//! batch whose transaction fails is kept and written again (the rings are
//! not read meanwhile) so that a database hiccup loses no traffic. The
//! rings' headers also say which policy generation each worker enforces and
//! how many events it dropped; [`DrainStatus`] carries both to the stats API.
//!
//! Nothing a ring delivered is lost to a fastpath restart or upgrade: a
//! ring whose file was replaced is drained to the end before it is let go.
//! A fastpath that died without closing its proxies (killed) sent no
//! closing marks: once its rings are drained, the drain closes each tenant
//! proxy it saw open itself, so the traffic reports flush what they hold,
//! and counts that in [`DrainStatus::flushed_without_close`].
//!
//! Rings are opened through the verified instance directory, and every
//! record must carry its tag under the instance key: one that does not is
//! dropped, logged and counted (`unauthenticated`), never written down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::events::{Event, EventRecord};
#[cfg(doc)]
use proto::policy::RefusalKind;
use serde::Serialize;
use shm::{InstanceDir, MappedRing};

use crate::clock::now_ms;
use crate::domain::quota::QuotaTracker;
use crate::error::Result;
use crate::store::db::Db;
use crate::telemetry::audit::{self, Entry};
use crate::telemetry::traffic_reports::{self, ReportSettings, Sample};

/// How often the rings are drained.
const TICK: Duration = Duration::from_millis(20);
/// Records taken from one ring per tick, so one busy worker cannot starve the rest.
const MAX_PER_RING: usize = 4096;
/// Failed writes of one batch before it is given up (about a minute at one
/// retry a second): a batch the database refuses for good must not stop
/// the drain forever.
const MAX_WRITE_ATTEMPTS: u32 = 60;

/// One worker's ring as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Worker index (from the file name).
    pub worker: u32,
    /// Policy generation the worker enforces.
    pub applied_generation: u64,
    /// Events the worker dropped because the ring was full.
    pub dropped: u64,
    /// Events the worker pushed since its ring was created.
    pub pushed: u64,
    /// Fastpath process id.
    pub pid: u64,
}

/// What the drain has seen, for the stats endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainStatus {
    /// Per-worker ring state, by worker index.
    pub workers: Vec<WorkerStatus>,
    /// Events written to the database by this process.
    pub events_ingested: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Records without a valid tag under the instance key (not written by
    /// this instance's fastpath), dropped.
    pub unauthenticated: u64,
    /// Tenant proxies whose fastpath went away (killed) without sending
    /// their closing mark: the drain closed them itself, so their traffic
    /// reports flushed what the rings had delivered.
    pub flushed_without_close: u64,
    /// Events given up after the database refused them
    /// `MAX_WRITE_ATTEMPTS` times.
    pub events_lost: u64,
    /// Refusals written down (refused logins and proxies, sessions the
    /// policy ended), by [`RefusalKind`] name; refusals from fastpaths
    /// that predate kinds count as `unclassified`.
    pub refusals: BTreeMap<&'static str, u64>,
}

/// The name a refusal recorded by `event` is counted under, if it records one.
fn refusal_name(event: &Event) -> Option<&'static str> {
    match (event.refusal(), event) {
        (Some(kind), _) => Some(kind.as_str()),
        (None, Event::AuthFailed { .. } | Event::ProxyRejected { .. }) => Some("unclassified"),
        (None, _) => None,
    }
}

/// A mapped ring file.
struct Mapped {
    /// The fastpath that made the ring.
    producer: u64,
    /// Set once the producer was found gone and its open proxies closed.
    gone_handled: bool,
    /// How far the drain has read; the ring's space up to here is given
    /// back only once what was read is committed, so a slowpath that
    /// crashes in between reads it again (at least once, never lost).
    read_to: u64,
    ring: MappedRing,
    worker: u32,
}

fn map_ring(shm: &InstanceDir, name: &str, worker: u32) -> std::io::Result<Mapped> {
    // The fastpath replaces rings with new files rather than truncating
    // them, and a new identity (inode, size) is noticed and remapped.
    let ring = MappedRing::attach(&shm.dir, name)?;
    Ok(Mapped {
        producer: ring.producer_pid(),
        gone_handled: false,
        read_to: ring.tail(),
        ring,
        worker,
    })
}

/// Reads the fastpath's rings in an instance directory: maps new rings,
/// drains replaced ones to their end, authenticates and decodes records,
/// and closes the tenant proxies of a fastpath that went away. What it
/// read is given back to the rings only by [`RingReader::release`], once
/// the caller has stored it (the database for `up`, the disk spool for the
/// node agent).
pub struct RingReader {
    shm: Arc<InstanceDir>,
    rings: HashMap<String, Mapped>,
    /// Rings whose file was replaced or removed, drained before dropping.
    retired: Vec<Mapped>,
    /// Retired rings read into the batch being written, dropped once it is.
    draining: Vec<Mapped>,
    /// Retired rings of a producer that still drains, during one pass.
    still_written: Vec<Mapped>,
    /// Tenant proxies with samples and no closing mark yet, by the ring
    /// (producer pid, worker) that reported them: (token, proxy) → run_id.
    open: HashMap<(u64, u32), HashMap<(String, String), String>>,
    /// Record bytes the pass under way may still take.
    bytes_left: usize,
}

/// What one [`RingReader::pass`] saw.
#[derive(Debug, Default)]
pub struct Pass {
    /// Per-worker ring state, by worker index.
    pub workers: Vec<WorkerStatus>,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Records without a valid tag under the instance key.
    pub unauthenticated: u64,
    /// Tenant proxies closed for a fastpath that went away.
    pub orphans: u64,
}

/// Where a reader was in one ring, kept by the node agent with what it
/// spooled so that a restart reads on from there (not again from what the
/// ring still holds unreleased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The ring file's name.
    pub name: String,
    /// Its identity (inode, size): a ring made anew is not the same ring.
    pub identity: (u64, u64),
    /// The fastpath that made it.
    pub producer: u64,
    /// Read up to here.
    pub read_to: u64,
}

/// Writes event records down: audit rows, per-proxy traffic, tenant
/// traffic reports and quota usage, mesh node locations. Used by the local
/// drain and by the control plane for what node agents ship.
#[derive(Default, Clone)]
pub struct Ingest {
    reports: Option<Arc<ReportSettings>>,
    quotas: Option<Arc<QuotaTracker>>,
    /// The built-in mesh relay's server id (0: none): `mesh.node.*` events
    /// are recorded as its node locations.
    mesh_relay: u32,
    /// Called after locations were recorded.
    mesh: MeshLocations,
}

/// What one [`Ingest::write`] did that matters after its commit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Traffic reports queued.
    pub reports_queued: usize,
    /// Mesh node locations changed.
    pub mesh_changed: bool,
}

/// What [`Ingest::write_batches`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shipped {
    /// The highest sequence number among the batches (all written now,
    /// by this call or before).
    pub acked: u64,
    /// Records written.
    pub written: u64,
    /// Batches already written before.
    pub repeated: u64,
    /// Records the spool said it dropped, in the batches written.
    pub dropped: u64,
}

/// The node a batch of records came from, when not this control plane's
/// own: its traffic reports carry its region.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The node's id.
    pub node_id: &'a str,
    /// Its region.
    pub region: &'a str,
}

/// Drains rings in `dir` for the local node.
pub struct EventDrain {
    db: Db,
    node_id: String,
    reader: RingReader,
    ingest: Ingest,
    status: Arc<Mutex<DrainStatus>>,
    /// Records taken from the rings but not yet committed.
    unwritten: Vec<EventRecord>,
    /// Failed attempts at writing `unwritten`.
    write_failures: u32,
}

/// What the drain calls once it recorded node locations of the built-in
/// mesh relay (set when the controller's hub exists).
pub type MeshLocations = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

impl EventDrain {
    /// A drain over the instance directory, attributing events to `node_id`.
    pub fn new(db: Db, shm: Arc<InstanceDir>, node_id: String) -> EventDrain {
        EventDrain {
            db,
            node_id,
            reader: RingReader::new(shm),
            ingest: Ingest::default(),
            status: Arc::new(Mutex::new(DrainStatus::default())),
            unwritten: Vec::new(),
            write_failures: 0,
        }
    }

    /// Record `mesh.node.*` events as node locations of relay `id` (0: not).
    pub fn with_mesh_relay(mut self, id: u32) -> EventDrain {
        self.ingest.mesh_relay = id;
        self
    }

    /// The handle through which the built-in relay is named, later.
    pub fn mesh_locations(&self) -> MeshLocations {
        Arc::clone(&self.ingest.mesh)
    }

    /// Feeds `tenant.traffic` samples to the traffic reports.
    pub fn with_reports(mut self, reports: Arc<ReportSettings>) -> EventDrain {
        self.ingest.reports = Some(reports);
        self
    }

    /// Feeds `tenant.traffic` samples to the quota usage.
    pub fn with_quotas(mut self, quotas: Arc<QuotaTracker>) -> EventDrain {
        self.ingest.quotas = Some(quotas);
        self
    }

    /// A handle to the drain's status.
    pub fn status_handle(&self) -> Arc<Mutex<DrainStatus>> {
        Arc::clone(&self.status)
    }

    /// Runs forever.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reader.rescan();
            if let Err(e) = self.drain_once().await {
                tracing::warn!(error = %e, "event drain failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Takes what is in every ring and writes it down.
    async fn drain_once(&mut self) -> Result<()> {
        // A batch that failed to commit is written again before anything
        // new is taken; meanwhile the rings fill, and drop (and count) what
        // does not fit, as they would with no slowpath at all.
        let take = self.unwritten.is_empty();
        let pass = self
            .reader
            .pass(take, MAX_PER_RING, usize::MAX, &mut self.unwritten);
        let written = if self.unwritten.is_empty() {
            Ok(Written::default())
        } else {
            self.write().await
        };
        let status = Arc::clone(&self.status);
        let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
        status.workers = pass.workers;
        status.undecodable += pass.undecodable;
        status.unauthenticated += pass.unauthenticated;
        status.flushed_without_close += pass.orphans;
        match written {
            Ok(w) => {
                status.events_ingested += self.unwritten.len() as u64;
                for name in self.unwritten.iter().filter_map(|r| refusal_name(&r.event)) {
                    *status.refusals.entry(name).or_default() += 1;
                }
                self.unwritten.clear();
                self.reader.release();
                self.write_failures = 0;
                self.ingest.committed(w);
                Ok(())
            }
            Err(e) => {
                self.write_failures += 1;
                if self.write_failures >= MAX_WRITE_ATTEMPTS {
                    tracing::error!(
                        error = %e, events = self.unwritten.len(),
                        "the database refused a batch of events {MAX_WRITE_ATTEMPTS} times; dropping it"
                    );
                    status.events_lost += self.unwritten.len() as u64;
                    self.unwritten.clear();
                    self.reader.release();
                    self.write_failures = 0;
                }
                Err(e)
            }
        }
    }

    /// Writes the unwritten records in one transaction.
    async fn write(&self) -> Result<Written> {
        let mut tx = self.db.begin().await?;
        let w = self
            .ingest
            .write(&mut tx, &self.node_id, None, &self.unwritten)
            .await?;
        tx.commit().await?;
        Ok(w)
    }
}

impl RingReader {
    /// A reader of the rings in `shm`; nothing is mapped before
    /// [`RingReader::rescan`].
    pub fn new(shm: Arc<InstanceDir>) -> RingReader {
        RingReader {
            shm,
            rings: HashMap::new(),
            retired: Vec::new(),
            draining: Vec::new(),
            still_written: Vec::new(),
            open: HashMap::new(),
            bytes_left: 0,
        }
    }

    /// Where the reader is in each ring mapped now.
    pub fn cursors(&self) -> Vec<Cursor> {
        let mut v: Vec<Cursor> = self
            .rings
            .iter()
            .map(|(name, m)| Cursor {
                name: name.clone(),
                identity: m.ring.identity(),
                producer: m.producer,
                read_to: m.read_to,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Reads on from `cursors` (kept from before a restart) in each ring
    /// that is still the same ring, where the position lies within what the
    /// ring holds; returns how many were taken.
    pub fn restore(&mut self, cursors: &[Cursor]) -> usize {
        let mut n = 0;
        for c in cursors {
            let Some(m) = self.rings.get_mut(&c.name) else {
                continue;
            };
            if m.ring.identity() != c.identity || m.producer != c.producer {
                continue;
            }
            let tail = m.ring.tail();
            if c.read_to.wrapping_sub(tail) <= m.ring.pending_bytes() {
                m.read_to = c.read_to;
                n += 1;
            }
        }
        n
    }

    /// Reads every ring (when `take`; otherwise only looks at their state)
    /// into `out`, up to `max_per_ring` records from each live ring (retired
    /// rings are read to their end) and `max_bytes` of records in all (a
    /// retired ring not read to its end then is read on next time, before
    /// the live ones). What was read stays unreleased.
    pub fn pass(
        &mut self,
        take: bool,
        max_per_ring: usize,
        max_bytes: usize,
        out: &mut Vec<EventRecord>,
    ) -> Pass {
        let mut pass = Pass::default();
        self.bytes_left = max_bytes;
        let mut buf = Vec::with_capacity(512);
        let mut workers = Vec::with_capacity(self.rings.len());
        // The fastpath alive now, as the kernel names it: a ring of any
        // other producer will get no more records.
        let live = self
            .shm
            .dir
            .holder(shm::LOCK_FILE)
            .and_then(|p| u64::try_from(p).ok());
        if take {
            // Retired rings first, to their end: their records are older
            // than anything in the rings that replaced them. A ring whose
            // producer still drains after an upgrade is read again next
            // time: it still writes into it.
            for mut m in std::mem::take(&mut self.retired) {
                let at_end = self.read_into_batch(
                    &mut m,
                    usize::MAX,
                    out,
                    &mut buf,
                    &mut pass.undecodable,
                    &mut pass.unauthenticated,
                );
                if !at_end || self.draining_producer(m.producer) {
                    self.still_written.push(m);
                    continue;
                }
                if Some(m.producer) != live {
                    pass.orphans += self.close_orphans(m.producer, m.worker, out);
                }
                self.draining.push(m);
            }
            self.retired.append(&mut self.still_written);
        }
        let names: Vec<String> = self.rings.keys().cloned().collect();
        for name in names {
            let Some(mut m) = self.rings.remove(&name) else {
                continue;
            };
            if take {
                let at_end = self.read_into_batch(
                    &mut m,
                    max_per_ring,
                    out,
                    &mut buf,
                    &mut pass.undecodable,
                    &mut pass.unauthenticated,
                );
                if Some(m.producer) == live || self.draining_producer(m.producer) {
                    m.gone_handled = false;
                } else if !m.gone_handled && at_end {
                    m.gone_handled = true;
                    pass.orphans += self.close_orphans(m.producer, m.worker, out);
                }
            }
            workers.push(WorkerStatus {
                worker: m.worker,
                applied_generation: m.ring.applied_generation(),
                dropped: m.ring.dropped(),
                pushed: m.ring.pushed(),
                pid: m.ring.producer_pid(),
            });
            self.rings.insert(name, m);
        }
        workers.sort_by_key(|w| w.worker);
        pass.workers = workers;
        pass
    }

    /// Maps new rings and remaps replaced ones; a replaced or removed
    /// ring is retired (drained to its end before it is dropped).
    pub fn rescan(&mut self) {
        let Ok(names) = self.shm.dir.names() else {
            self.retired.extend(self.rings.drain().map(|(_, m)| m));
            return;
        };
        let mut seen = Vec::new();
        for name in names {
            let Some(worker) = shm::ring_worker(&name) else {
                continue;
            };
            let Ok(identity) = self.shm.dir.identity(&name) else {
                continue;
            };
            seen.push(name.clone());
            if let Some(m) = self.rings.get(&name) {
                if m.ring.identity() == identity {
                    continue;
                }
            }
            match map_ring(&self.shm, &name, worker) {
                Ok(m) => {
                    tracing::info!(worker, ring = %name, "mapped event ring");
                    if let Some(old) = self.rings.insert(name, m) {
                        self.retired.push(old);
                    }
                }
                Err(e) => {
                    // A ring the producer has not initialized yet: try next tick.
                    tracing::debug!(worker, error = %e, "event ring not usable yet");
                    if let Some(old) = self.rings.remove(&name) {
                        self.retired.push(old);
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .rings
            .keys()
            .filter(|p| !seen.contains(p))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.rings.remove(&name) {
                self.retired.push(old);
            }
        }
    }

    /// Read up to `max` records of `m` (from where it was last read) into
    /// `out`, tracking which tenant proxies its producer has open;
    /// counts what was refused. Returns whether it read to the end.
    fn read_into_batch(
        &mut self,
        m: &mut Mapped,
        max: usize,
        out: &mut Vec<EventRecord>,
        buf: &mut Vec<u8>,
        undecodable: &mut u64,
        unauthenticated: &mut u64,
    ) -> bool {
        for _ in 0..max {
            if self.bytes_left == 0 {
                return false;
            }
            if !m.ring.peek(&mut m.read_to, buf) {
                return true;
            }
            self.bytes_left = self.bytes_left.saturating_sub(buf.len().max(1));
            let record = match self.shm.key.open_record(buf) {
                Ok(r) => r,
                Err(e) => {
                    *unauthenticated += 1;
                    tracing::warn!(worker = m.worker, error = %e, "event record refused");
                    continue;
                }
            };
            match EventRecord::decode(record) {
                Ok(r) => {
                    if let Event::TenantTraffic {
                        run_id,
                        token,
                        proxy,
                        closed,
                        ..
                    } = &r.event
                    {
                        let open = self.open.entry((m.producer, m.worker)).or_default();
                        let key = (token.clone(), proxy.clone());
                        if *closed {
                            open.remove(&key);
                        } else {
                            open.insert(key, run_id.clone());
                        }
                    }
                    out.push(r);
                }
                Err(e) => {
                    *undecodable += 1;
                    tracing::warn!(worker = m.worker, error = %e, "undecodable event record");
                }
            }
        }
        false
    }

    /// What was read is committed (or given up): give the rings' space back
    /// and let drained retired rings go.
    pub fn release(&mut self) {
        for m in self.rings.values().chain(&self.retired) {
            m.ring.release(m.read_to);
        }
        self.draining.clear();
    }

    /// Whether `producer` is a fastpath that handed its sockets to a
    /// successor and still serves (and writes events): it holds its
    /// draining lock, as the kernel says.
    fn draining_producer(&self, producer: u64) -> bool {
        let Ok(pid) = u32::try_from(producer) else {
            return false;
        };
        self.shm.dir.holder(&shm::draining_file(pid)) == i32::try_from(pid).ok()
    }

    /// The producer of a ring is gone and the ring is empty: close the
    /// tenant proxies it left open (a closing mark of zero bytes each,
    /// which makes their reports flush).
    fn close_orphans(&mut self, producer: u64, worker: u32, out: &mut Vec<EventRecord>) -> u64 {
        let Some(open) = self.open.remove(&(producer, worker)) else {
            return 0;
        };
        let n = open.len() as u64;
        if n > 0 {
            tracing::warn!(
                pid = producer,
                proxies = n,
                "the fastpath went away without closing its tenant proxies; reporting what its rings delivered"
            );
        }
        let ts_ms = u64::try_from(now_ms()).unwrap_or(0);
        for ((token, proxy), run_id) in open {
            out.push(EventRecord {
                ts_ms,
                worker: u16::try_from(worker).unwrap_or(u16::MAX),
                event: Event::TenantTraffic {
                    run_id,
                    token,
                    proxy,
                    bytes_in: 0,
                    bytes_out: 0,
                    closed: true,
                },
            });
        }
        n
    }
}

impl Ingest {
    /// Writes `records` of node `node_id` within `tx`; `origin` names the
    /// node's region for traffic reports when it is not this control
    /// plane's own node. Call [`Ingest::committed`] after the commit.
    pub async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        node_id: &str,
        origin: Option<Origin<'_>>,
        records: &[EventRecord],
    ) -> Result<Written> {
        let mut queued = 0;
        // Quota usage is summed per token over the batch: one upsert per
        // tenant per tick rather than one per proxy sample.
        let mut usage: HashMap<&str, (u64, i64)> = HashMap::new();
        let mut mesh_changed = false;
        for r in records {
            let ts_ms = i64::try_from(r.ts_ms).unwrap_or_else(|_| now_ms());
            let invite_id = r.event.invite().map(|i| i.to_string()).unwrap_or_default();
            let mut entry = Entry {
                ts_ms,
                kind: r.event.kind(),
                node_id: node_id.to_owned(),
                invite_id,
                ..Entry::default()
            };
            match &r.event {
                Event::SessionOpen {
                    run_id,
                    user,
                    version,
                    peer,
                    ..
                } => {
                    entry.run_id = run_id.clone();
                    entry.detail = serde_json::json!({
                        "user": user, "version": version, "peer": peer, "worker": r.worker,
                    });
                }
                Event::SessionClose { run_id, reason, .. } => {
                    entry.run_id = run_id.clone();
                    entry.reason = reason.clone();
                    entry.detail = serde_json::json!({ "worker": r.worker });
                }
                Event::ProxyRegistered {
                    run_id,
                    proxy,
                    proxy_type,
                    remote_port,
                    domains,
                    ..
                } => {
                    entry.run_id = run_id.clone();
                    entry.proxy = proxy.clone();
                    entry.detail = serde_json::json!({
                        "proxy_type": proxy_type, "remote_port": remote_port, "worker": r.worker,
                    });
                    if !domains.is_empty() {
                        entry.detail["domains"] = serde_json::json!(domains);
                    }
                }
                Event::ProxyRejected {
                    run_id,
                    proxy,
                    proxy_type,
                    reason,
                    ..
                } => {
                    entry.run_id = run_id.clone();
                    entry.proxy = proxy.clone();
                    entry.reason = reason.clone();
                    entry.detail =
                        serde_json::json!({ "proxy_type": proxy_type, "worker": r.worker });
                }
                Event::ProxyClosed {
                    run_id,
                    proxy,
                    reason,
                    ..
                } => {
                    entry.run_id = run_id.clone();
                    entry.proxy = proxy.clone();
                    entry.reason = reason.clone();
                    entry.detail = serde_json::json!({ "worker": r.worker });
                }
                Event::AuthFailed { peer, reason, .. } => {
                    entry.reason = reason.clone();
                    entry.detail = serde_json::json!({ "peer": peer, "worker": r.worker });
                }
                Event::Visitor {
                    run_id,
                    proxy,
                    peer,
                    reason,
                    ..
                } => {
                    // The visitor's session; the invite is the proxy's.
                    entry.run_id = run_id.clone();
                    entry.proxy = proxy.clone();
                    entry.reason = reason.clone();
                    entry.detail = serde_json::json!({ "peer": peer, "worker": r.worker });
                }
                Event::Traffic {
                    proxy,
                    bytes_in,
                    bytes_out,
                    ..
                } => {
                    // Samples go to the per-proxy totals, not the audit log:
                    // one row per proxy per sample would drown the rest.
                    sqlx::query(
                        "INSERT INTO proxy_traffic (node_id, invite_id, proxy, bytes_in, bytes_out, updated_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (node_id, invite_id, proxy) DO UPDATE SET \
                         bytes_in = proxy_traffic.bytes_in + excluded.bytes_in, \
                         bytes_out = proxy_traffic.bytes_out + excluded.bytes_out, \
                         updated_ms = excluded.updated_ms",
                    )
                    .bind(&entry.node_id)
                    .bind(&entry.invite_id)
                    .bind(proxy)
                    .bind(i64::try_from(*bytes_in).unwrap_or(i64::MAX))
                    .bind(i64::try_from(*bytes_out).unwrap_or(i64::MAX))
                    .bind(ts_ms)
                    .execute(&mut **tx)
                    .await?;
                    continue;
                }
                // Tenant samples feed traffic reports and quotas, not the
                // audit log.
                Event::TenantTraffic {
                    token,
                    proxy,
                    bytes_in,
                    bytes_out,
                    closed,
                    ..
                } => {
                    if let Some(reports) = &self.reports {
                        let sample = Sample {
                            token,
                            proxy,
                            bytes_in: *bytes_in,
                            bytes_out: *bytes_out,
                            closed: *closed,
                            ts_ms,
                        };
                        if traffic_reports::record(tx, &sample, reports, origin).await? {
                            queued += 1;
                        }
                    }
                    if self.quotas.is_some() {
                        let u = usage.entry(token.as_str()).or_insert((0, ts_ms));
                        u.0 = u.0.saturating_add(bytes_in.saturating_add(*bytes_out));
                        u.1 = u.1.max(ts_ms);
                    }
                    continue;
                }
                // Where mesh nodes are: the relay's rows, not the audit log
                // (the controller audits a node's own channel).
                Event::MeshNode { node_id, up, .. } => {
                    let relay = &self.mesh_relay;
                    if *relay == 0 {
                        continue;
                    }
                    if *up {
                        // A node deleted meanwhile is skipped.
                        sqlx::query(
                            "INSERT INTO mesh_node_server_connections (node_id, server_id, connected_ms, last_ping_ms) \
                             SELECT id, $1, $2, $2 FROM mesh_nodes WHERE id = $3 \
                             ON CONFLICT (node_id, server_id) DO UPDATE SET last_ping_ms = $2",
                        )
                        .bind(i64::from(*relay))
                        .bind(ts_ms)
                        .bind(i64::from(*node_id))
                        .execute(&mut **tx)
                        .await?;
                    } else {
                        sqlx::query(
                            "DELETE FROM mesh_node_server_connections WHERE server_id = $1 AND node_id = $2",
                        )
                        .bind(i64::from(*relay))
                        .bind(i64::from(*node_id))
                        .execute(&mut **tx)
                        .await?;
                    }
                    mesh_changed = true;
                    continue;
                }
            }
            // The refusal's kind, for filtering and counting audit rows.
            if let (Some(name), Some(detail)) =
                (refusal_name(&r.event), entry.detail.as_object_mut())
            {
                detail.insert("refusal".into(), name.into());
            }
            audit::record(&mut **tx, &entry).await?;
        }
        if let Some(quotas) = &self.quotas {
            for (token, (bytes, ts_ms)) in usage {
                quotas.record(tx, token, bytes, ts_ms).await?;
            }
        }
        Ok(Written {
            reports_queued: queued,
            mesh_changed,
        })
    }

    /// After the transaction of a [`Ingest::write`] committed: wake the
    /// report sender and the mesh relay's listeners.
    pub fn committed(&self, w: Written) {
        if w.reports_queued > 0 {
            if let Some(reports) = &self.reports {
                reports.poke();
            }
        }
        if w.mesh_changed {
            if let Some(changed) = self.mesh.get() {
                changed();
            }
        }
    }

    /// Writes batches a node agent shipped, in one transaction, each at
    /// most once: the spool's last sequence number is kept with the
    /// records, and a batch at or below it (sent again after a lost answer,
    /// or to another control plane) is counted as repeated, not written.
    pub async fn write_batches(
        &self,
        db: &Db,
        node_id: &str,
        region: &str,
        batches: &[proto::event_batch::Batch],
    ) -> Result<Shipped> {
        let origin = Origin { node_id, region };
        let now = now_ms();
        let mut tx = db.begin().await?;
        let mut out = Shipped::default();
        let mut done = Written::default();
        for b in batches {
            let n = i64::try_from(b.records.len()).unwrap_or(i64::MAX);
            // Taken only when the batch is newer than the last one written
            // from this spool. In PostgreSQL the row lock holds a second
            // control plane given the same batch until this one commits,
            // and it then finds the batch written.
            let fresh = sqlx::query(
                "INSERT INTO agent_spools (node_id, spool_id, last_seq, dropped, events, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (node_id, spool_id) DO UPDATE SET last_seq = excluded.last_seq, \
                 dropped = agent_spools.dropped + excluded.dropped, \
                 events = agent_spools.events + excluded.events, updated_ms = excluded.updated_ms \
                 WHERE agent_spools.last_seq < excluded.last_seq",
            )
            .bind(node_id)
            .bind(hex::encode(b.spool))
            .bind(i64::try_from(b.seq).unwrap_or(i64::MAX))
            .bind(i64::try_from(b.dropped).unwrap_or(i64::MAX))
            .bind(n)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            out.acked = out.acked.max(b.seq);
            if !fresh {
                out.repeated += 1;
                continue;
            }
            let w = self
                .write(&mut tx, node_id, Some(origin), &b.records)
                .await?;
            done.reports_queued += w.reports_queued;
            out.written += b.records.len() as u64;
            out.dropped = out.dropped.saturating_add(b.dropped);
        }
        tx.commit().await?;
        self.committed(done);
        Ok(out)
    }

    /// An ingest for records node agents ship: traffic reports and quotas
    /// as the control plane's own drain has them; no mesh relay.
    pub fn for_agents(reports: Arc<ReportSettings>, quotas: Arc<QuotaTracker>) -> Ingest {
        Ingest {
            reports: Some(reports),
            quotas: Some(quotas),
            ..Ingest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass takes at most its byte budget; the rest stays for the next
    /// pass, in order, and nothing is read twice.
    #[test]
    fn a_pass_takes_at_most_its_bytes_and_the_next_goes_on() {
        let path = std::env::temp_dir().join(format!("totoro-ringreader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let shm = Arc::new(InstanceDir::open(&path).unwrap());
        let ring = MappedRing::create(
            &shm.dir,
            "events-0.ring",
            proto::ring::RING_HEADER + (1 << 20),
        )
        .unwrap();
        for i in 0..100u32 {
            let mut bytes = EventRecord {
                ts_ms: 1,
                worker: 0,
                event: Event::AuthFailed {
                    peer: format!("192.0.2.1:{i}"),
                    invite: None,
                    reason: "x".repeat(100),
                    refusal: None,
                },
            }
            .to_bytes();
            shm.key.seal_record(&mut bytes);
            assert!(ring.push(&bytes));
        }
        let mut reader = RingReader::new(Arc::clone(&shm));
        reader.rescan();
        let mut seen = Vec::new();
        let mut passes = 0;
        loop {
            let mut out = Vec::new();
            reader.pass(true, usize::MAX, 2000, &mut out);
            if out.is_empty() {
                break;
            }
            // About 2000 bytes: one record past the budget at most.
            assert!(out.len() <= 2000 / 100 + 1, "{} records", out.len());
            reader.release();
            seen.extend(out.into_iter().map(|r| match r.event {
                Event::AuthFailed { peer, .. } => peer,
                e => panic!("{e:?}"),
            }));
            passes += 1;
        }
        let want: Vec<String> = (0..100).map(|i| format!("192.0.2.1:{i}")).collect();
        assert_eq!(seen, want);
        assert!(passes >= 5, "{passes} passes");
        let _ = std::fs::remove_dir_all(&path);
    }
}
