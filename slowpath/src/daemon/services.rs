//! The policy table and the background tasks: the first table published
//! before anything is served, then the publisher's loop, the quota
//! tracker, traffic reports, the etcd source and the event drain.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _, Result};
use shm::InstanceDir;
use slowpath::api::TenantServices;
use slowpath::domain::nodes::Node;
use slowpath::domain::quota::QuotaTracker;
use slowpath::domain::tenants::{Tenant, TenantRecord};
use slowpath::etcd::{self, EtcdConfig};
use slowpath::policy::publish::Publisher;
use slowpath::store::db::{self, Db};
use slowpath::telemetry::events_drain::{DrainStatus, EventDrain, MeshLocations};
use slowpath::telemetry::traffic_reports::{self, ReportSettings};
use tokio::sync::watch;

use super::node::FastpathSettings;

/// `meta` key of the last tenant list read from etcd (JSON records): a
/// slowpath that restarts while etcd is down publishes these, so the
/// fastpath keeps the last good tenants.
const ETCD_SNAPSHOT_KEY: &str = "etcd_tenants_snapshot";
/// The etcd snapshot is written at most this often.
const ETCD_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the running services hand the API.
pub struct Services {
    pub publisher: Arc<Publisher>,
    pub tenants: TenantServices,
    pub drain: Arc<Mutex<DrainStatus>>,
    /// Names the built-in mesh relay to the drain, once it is known.
    pub mesh_locations: MeshLocations,
}

/// Publishes the first table (its tenants included: those last read from
/// etcd if etcd is down now), then starts every background task.
pub async fn start(
    db: &Db,
    shm: &Arc<InstanceDir>,
    node: &Node,
    fp: &FastpathSettings,
    mesh_relay: u32,
) -> Result<Services> {
    let publisher = Publisher::new(db.clone(), Arc::clone(shm), node.id.clone());
    let (reports, quotas) = tenant_services(db, node, fp, &publisher).await?;
    publisher.publish(true).await.with_context(|| {
        format!(
            "publishing the first policy table to {}",
            shm.dir.path().display()
        )
    })?;
    quotas
        .refresh(db, slowpath::clock::now_ms())
        .await
        .context("reading quota usage")?;
    publisher.set_over_quota(quotas.over_quota());
    tokio::spawn(Arc::clone(&publisher).run());
    tokio::spawn(Arc::clone(&quotas).run(db.clone()));
    tokio::spawn(follow_quotas(Arc::clone(&quotas), Arc::clone(&publisher)));
    tokio::spawn(traffic_reports::run_sender(
        db.clone(),
        Arc::clone(&reports),
    ));
    let etcd = fp
        .etcd
        .clone()
        .map(|cfg| start_etcd(cfg, db.clone(), Arc::clone(&publisher)));

    let drain = EventDrain::new(db.clone(), Arc::clone(shm), node.id.clone())
        .with_mesh_relay(mesh_relay)
        .with_reports(Arc::clone(&reports))
        .with_quotas(Arc::clone(&quotas));
    let drain_status = drain.status_handle();
    let mesh_locations = drain.mesh_locations();
    tokio::spawn(drain.run());
    Ok(Services {
        publisher,
        tenants: TenantServices {
            etcd,
            reports,
            quotas,
        },
        drain: drain_status,
        mesh_locations,
    })
}

/// Traffic reports and quotas follow every tenant compile; the etcd
/// tenants last seen are loaded so that the first table has them even if
/// etcd is down now.
async fn tenant_services(
    db: &Db,
    node: &Node,
    fp: &FastpathSettings,
    publisher: &Arc<Publisher>,
) -> Result<(Arc<ReportSettings>, Arc<QuotaTracker>)> {
    let (url, region) = match &fp.etcd {
        Some(e) => (e.traffic_report_url.clone(), e.region.clone()),
        None => (None, node.region.clone()),
    };
    let reports = Arc::new(
        ReportSettings::new(node.id.clone(), url, region).map_err(|e| anyhow!("[etcd] {e}"))?,
    );
    let quotas = Arc::new(QuotaTracker::new());
    {
        let (reports, quotas) = (Arc::clone(&reports), Arc::clone(&quotas));
        publisher.on_tenants(Box::new(move |tenants: &[Tenant]| {
            reports.set_from_tenants(tenants);
            quotas.set_from_tenants(tenants);
        }));
    }
    if fp.etcd.is_some() {
        if let Some(text) = db::meta_get(db, ETCD_SNAPSHOT_KEY).await? {
            match serde_json::from_str::<Vec<TenantRecord>>(&text) {
                Ok(records) => {
                    let map: std::collections::BTreeMap<String, Tenant> = records
                        .into_iter()
                        .filter_map(|r| Tenant::from_record(r, None).ok())
                        .map(|t| (t.token().to_owned(), t))
                        .collect();
                    tracing::info!(
                        tenants = map.len(),
                        "starting with the tenants last read from etcd"
                    );
                    publisher.set_etcd_tenants(Arc::new(map));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable etcd tenant snapshot"),
            }
        }
    }
    Ok((reports, quotas))
}

/// Recompile when a tenant crosses its quota or a period rolls over.
async fn follow_quotas(quotas: Arc<QuotaTracker>, publisher: Arc<Publisher>) {
    let mut rx = quotas.subscribe();
    while rx.changed().await.is_ok() {
        publisher.set_over_quota(quotas.over_quota());
    }
}

/// Start the etcd source: every change goes to the publisher at once, and
/// to the database (at most every few seconds) for restarts while etcd is
/// down.
fn start_etcd(cfg: EtcdConfig, db: Db, publisher: Arc<Publisher>) -> etcd::EtcdHandle {
    tracing::info!(endpoints = ?cfg.endpoints, region = %cfg.region, prefix = %cfg.prefix, "following tenants in etcd");
    let (tx, mut rx) = watch::channel::<Option<etcd::TenantMap>>(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(map) = rx.borrow_and_update().clone() else {
                continue;
            };
            let records: Vec<&TenantRecord> = map.values().map(|t| &t.record).collect();
            match serde_json::to_string(&records) {
                Ok(text) => {
                    if let Err(e) = db::meta_set(&db, ETCD_SNAPSHOT_KEY, &text).await {
                        tracing::warn!(error = %e, "cannot save the etcd tenant snapshot");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the etcd tenant snapshot"),
            }
            tokio::time::sleep(ETCD_SNAPSHOT_EVERY).await;
        }
    });
    etcd::spawn(cfg, move |map| {
        publisher.set_etcd_tenants(map.clone());
        let _ = tx.send(Some(map));
    })
}
