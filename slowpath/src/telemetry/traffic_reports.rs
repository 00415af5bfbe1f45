//! Seed 002's traffic reports (流量上报): when a report URL is configured and
//! a tenant has `trafficReportIntervalMB > 0`, each of its proxies is
//! reported with a POST of [`Report`] every time its unreported traffic (in
//! plus out) reaches that many MB, and once more with the remainder when the
//! proxy closes.
//!
//! Two tables make this survive restarts. `traffic_report_pending` holds each
//! proxy's unreported bytes; `traffic_report_outbox` holds reports not yet
//! delivered. [`record`] updates both inside the event drain's transaction,
//! so a sample, the bytes it adds and the report it completes commit
//! together. [`run_sender`] delivers the outbox oldest first, deleting a row
//! only after a 2xx, and retries a failing report with exponential backoff
//! before going on to the next one: reports arrive in order, at least once
//! (twice only if the process dies between the 2xx and the delete).
//!
//! [`ReportSettings`] is the shared handle: the URL and region (fixed for the
//! process) and each token's threshold (replaced on every tenant compile),
//! plus the sender's [`ReportStatus`] for the stats API.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::domain::tenants::Tenant;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// First retry delay after a failed delivery; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often an idle sender looks at the outbox without being woken.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Outbox rows read per query.
const BATCH: i64 = 64;
/// Connect timeout of a delivery.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout of a delivery.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Response bytes read (and thrown away) so the connection can be reused.
const MAX_RESPONSE: u64 = 64 * 1024;

/// The JSON body of a report, as seed 002 specifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The tenant's token.
    pub token: String,
    /// Region of the reporting node.
    pub region: String,
    /// Proxy name.
    pub proxy_name: String,
    /// Bytes from visitors towards frpc since the previous report.
    pub traffic_in: u64,
    /// Bytes from frpc towards visitors since the previous report.
    pub traffic_out: u64,
    /// When the report was due (unix seconds).
    pub timestamp: i64,
}

/// One `tenant.traffic` sample, as [`record`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The tenant's token.
    pub token: &'a str,
    /// Proxy name.
    pub proxy: &'a str,
    /// Bytes from visitors towards frpc since the previous sample.
    pub bytes_in: u64,
    /// Bytes from frpc towards visitors since the previous sample.
    pub bytes_out: u64,
    /// Whether the proxy closed (its last sample).
    pub closed: bool,
    /// When the sample was taken (unix ms).
    pub ts_ms: i64,
}

/// What the sender has done, for the stats API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportStatus {
    /// Whether a report URL is configured.
    pub enabled: bool,
    /// Reports waiting in the outbox, as of the sender's last look.
    pub pending: u64,
    /// Reports delivered by this process.
    pub sent: u64,
    /// Failed delivery attempts by this process.
    pub failures: u64,
    /// Why the latest failed attempt failed.
    pub last_error: Option<String>,
    /// When it failed (unix ms; 0 = never).
    pub last_error_ms: i64,
}

/// Why a report could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No response: connect, TLS, timeout or I/O failure.
    #[error("report URL unreachable: {0}")]
    Transport(String),
    /// The report URL answered with a status other than 2xx.
    #[error("report URL answered HTTP {0}")]
    Status(u16),
    /// The blocking HTTP worker died.
    #[error("report worker failed: {0}")]
    Worker(String),
}

/// Where and when reports are sent; shared by the drain, the sender and
/// the tenant compiler.
#[derive(Debug)]
pub struct ReportSettings {
    node_id: String,
    url: Option<String>,
    region: String,
    thresholds: RwLock<Thresholds>,
    status: Mutex<ReportStatus>,
    queued: Notify,
}

impl ReportSettings {
    /// Settings for the node `node_id` in `region`, reporting to `url`
    /// (`None` = reports off; nothing is counted for them). The URL is
    /// `http://` or `https://` (checked against the public web roots).
    pub fn new(
        node_id: impl Into<String>,
        url: Option<String>,
        region: impl Into<String>,
    ) -> Result<ReportSettings> {
        let url = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        if let Some(u) = &url {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .ok_or_else(|| {
                    Error::invalid(
                        "trafficReportUrl",
                        format!("trafficReportUrl: {u:?} must start with http:// or https://"),
                    )
                })?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err(Error::invalid(
                    "trafficReportUrl",
                    format!("trafficReportUrl: {u:?} has no host"),
                ));
            }
        }
        Ok(ReportSettings {
            node_id: node_id.into(),
            status: Mutex::new(ReportStatus {
                enabled: url.is_some(),
                ..ReportStatus::default()
            }),
            url,
            region: region.into(),
            thresholds: RwLock::new(Thresholds::default()),
            queued: Notify::new(),
        })
    }

    /// The report URL, if reports are on.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Replaces the thresholds (token → bytes); tokens left out, or with 0,
    /// are not reported from now on. A token that leaves (deleted, or its
    /// reports turned off) keeps its last threshold for
    /// [`DEPARTED_KEEP`]: its sessions end as it leaves, and the bytes they
    /// relayed until then are still reported when their closing samples
    /// arrive.
    pub fn set_thresholds(&self, mut thresholds: HashMap<String, u64>) {
        thresholds.retain(|_, bytes| *bytes > 0);
        let now = Instant::now();
        let mut t = self.thresholds.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut t.current);
        for (token, bytes) in old {
            if !thresholds.contains_key(&token) {
                t.departed.insert(token, (bytes, now));
            }
        }
        t.departed
            .retain(|token, (_, at)| !thresholds.contains_key(token) && now - *at < DEPARTED_KEEP);
        t.current = thresholds;
    }

    /// [`Self::set_thresholds`] from validated tenants
    /// (`trafficReportIntervalMB`).
    pub fn set_from_tenants<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>) {
        self.set_thresholds(
            tenants
                .into_iter()
                .map(|t| (t.token().to_owned(), t.report_interval_bytes()))
                .collect(),
        );
    }

    /// Bytes between reports for `token` (0 = not reported): its current
    /// threshold, or the last one of a token that left recently.
    pub fn threshold(&self, token: &str) -> u64 {
        if self.url.is_none() {
            return 0;
        }
        let t = self.thresholds.read().unwrap_or_else(|p| p.into_inner());
        t.current
            .get(token)
            .or_else(|| t.departed.get(token).map(|(bytes, _)| bytes))
            .copied()
            .unwrap_or(0)
    }

    /// What the sender has done.
    pub fn status(&self) -> ReportStatus {
        self.lock_status().clone()
    }

    /// Wakes the sender: call after committing a transaction in which
    /// [`record`] queued a report.
    pub fn poke(&self) {
        self.queued.notify_one();
    }

    fn lock_status(&self) -> MutexGuard<'_, ReportStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a token that left keeps its report threshold (see
/// [`ReportSettings::set_thresholds`]).
pub const DEPARTED_KEEP: Duration = Duration::from_secs(600);

/// Report thresholds by token: those in force, and those of tokens that
/// left lately (with when they left).
#[derive(Debug, Default)]
struct Thresholds {
    current: HashMap<String, u64>,
    departed: HashMap<String, (u64, Instant)>,
}

/// Adds a sample to its proxy's unreported bytes and queues a report when
/// they reach the token's threshold or the proxy closes, inside the drain's
/// transaction. Returns whether a report was queued (then [`ReportSettings::poke`]
/// the sender after the commit).
///
/// `origin` is the node that relayed the bytes when it is not this control
/// plane's own (a node agent shipped them): its unreported bytes are kept
/// apart from other nodes' proxies of the same name, and its reports carry
/// its region; they go out through this control plane's outbox.
pub async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sample: &Sample<'_>,
    settings: &ReportSettings,
    origin: Option<crate::telemetry::events_drain::Origin<'_>>,
) -> Result<bool> {
    let threshold = settings.threshold(sample.token);
    let (node_id, region) = match origin {
        Some(o) => (o.node_id, o.region),
        None => (settings.node_id.as_str(), settings.region.as_str()),
    };
    let key = (node_id, sample.token, sample.proxy);
    if threshold == 0 {
        if sample.closed {
            // Reports were turned off while the proxy had bytes counted:
            // they will not be reported, so they need not be kept.
            delete_pending(tx, key).await?;
        }
        return Ok(false);
    }
    if !sample.closed && sample.bytes_in == 0 && sample.bytes_out == 0 {
        return Ok(false);
    }
    let row = sqlx::query(
        "SELECT bytes_in, bytes_out FROM traffic_report_pending \
         WHERE node_id = $1 AND token = $2 AND proxy = $3",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .fetch_optional(&mut **tx)
    .await?;
    let (before_in, before_out) = match &row {
        Some(r) => (
            u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
            u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
        ),
        None => (0, 0),
    };
    let traffic_in = before_in.saturating_add(sample.bytes_in);
    let traffic_out = before_out.saturating_add(sample.bytes_out);
    let total = traffic_in.saturating_add(traffic_out);
    // One report takes everything unreported, even when a sample carries
    // several thresholds' worth: the report's bytes are what was relayed,
    // not a split the data plane never measured.
    let due = total >= threshold || (sample.closed && total > 0);
    if due {
        enqueue(
            tx,
            settings,
            &Report {
                token: sample.token.to_owned(),
                region: region.to_owned(),
                proxy_name: sample.proxy.to_owned(),
                traffic_in,
                traffic_out,
                timestamp: sample.ts_ms.div_euclid(1000),
            },
        )
        .await?;
    }
    if due || sample.closed {
        if row.is_some() {
            delete_pending(tx, key).await?;
        }
    } else {
        sqlx::query(
            "INSERT INTO traffic_report_pending \
             (node_id, token, proxy, bytes_in, bytes_out, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (node_id, token, proxy) DO UPDATE SET \
             bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out, \
             updated_ms = excluded.updated_ms",
        )
        .bind(key.0)
        .bind(key.1)
        .bind(key.2)
        .bind(i64::try_from(traffic_in).unwrap_or(i64::MAX))
        .bind(i64::try_from(traffic_out).unwrap_or(i64::MAX))
        .bind(sample.ts_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(due)
}

async fn delete_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    (node_id, token, proxy): (&str, &str, &str),
) -> Result<()> {
    sqlx::query(
        "DELETE FROM traffic_report_pending WHERE node_id = $1 AND token = $2 AND proxy = $3",
    )
    .bind(node_id)
    .bind(token)
    .bind(proxy)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends a report to this node's outbox. Only this node's drain appends
/// to its outbox, so the next sequence number cannot race.
async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    settings: &ReportSettings,
    report: &Report,
) -> Result<()> {
    let last: i64 =
        sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM traffic_report_outbox WHERE node_id = $1")
            .bind(&settings.node_id)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
    sqlx::query(
        "INSERT INTO traffic_report_outbox \
         (node_id, seq, token, region, proxy, traffic_in, traffic_out, ts_s) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&settings.node_id)
    .bind(last.saturating_add(1))
    .bind(&report.token)
    .bind(&report.region)
    .bind(&report.proxy_name)
    .bind(i64::try_from(report.traffic_in).unwrap_or(i64::MAX))
    .bind(i64::try_from(report.traffic_out).unwrap_or(i64::MAX))
    .bind(report.timestamp)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The oldest outbox rows of this node, and how many there are in all.
async fn next_batch(db: &Db, node_id: &str) -> Result<(Vec<(i64, Report)>, u64)> {
    let rows = sqlx::query(
        "SELECT seq, token, region, proxy, traffic_in, traffic_out, ts_s \
         FROM traffic_report_outbox WHERE node_id = $1 ORDER BY seq LIMIT $2",
    )
    .bind(node_id)
    .bind(BATCH)
    .fetch_all(db)
    .await?;
    let mut batch = Vec::with_capacity(rows.len());
    for r in rows {
        batch.push((
            r.try_get::<i64, _>(0)?,
            Report {
                token: r.try_get(1)?,
                region: r.try_get(2)?,
                proxy_name: r.try_get(3)?,
                traffic_in: u64::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0),
                traffic_out: u64::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0),
                timestamp: r.try_get(6)?,
            },
        ));
    }
    let pending = if (batch.len() as i64) < BATCH {
        batch.len() as u64
    } else {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM traffic_report_outbox WHERE node_id = $1")
            .bind(node_id)
            .fetch_one(db)
            .await?
            .try_get(0)?;
        u64::try_from(n).unwrap_or(0)
    };
    Ok((batch, pending))
}

/// POSTs one report; Ok only on a 2xx.
async fn deliver(agent: &ureq::Agent, url: &str, report: &Report) -> Result<(), DeliveryError> {
    let body = serde_json::to_string(report).map_err(|e| DeliveryError::Worker(e.to_string()))?;
    let (agent, url) = (agent.clone(), url.to_owned());
    tokio::task::spawn_blocking(move || {
        let resp = match agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code, _)) => return Err(DeliveryError::Status(code)),
            Err(ureq::Error::Transport(t)) => return Err(DeliveryError::Transport(t.to_string())),
        };
        let code = resp.status();
        let mut sink = Vec::new();
        let _ = resp.into_reader().take(MAX_RESPONSE).read_to_end(&mut sink);
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(DeliveryError::Status(code))
        }
    })
    .await
    .map_err(|e| DeliveryError::Worker(e.to_string()))?
}

/// Delivers the outbox, oldest first, forever; returns at once when no
/// report URL is configured. A report is deleted after a 2xx; a failure
/// (no answer, or not 2xx) is retried after [`BACKOFF_MIN`], doubling up to
/// [`BACKOFF_MAX`], and the reports behind it wait so that order holds.
pub async fn run_sender(db: Db, settings: std::sync::Arc<ReportSettings>) {
    let Some(url) = settings.url.clone() else {
        return;
    };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // A 3xx is not a delivery; following it would turn the POST into a GET.
        .redirects(0)
        .build();
    let mut backoff = BACKOFF_MIN;
    loop {
        let (batch, pending) = match next_batch(&db, &settings.node_id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the traffic report outbox failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        settings.lock_status().pending = pending;
        if batch.is_empty() {
            let _ = tokio::time::timeout(IDLE_POLL, settings.queued.notified()).await;
            continue;
        }
        for (seq, report) in batch {
            loop {
                match deliver(&agent, &url, &report).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(
                            tenant = %report.token, proxy_name = %report.proxy_name, error = %e,
                            retry_in_s = backoff.as_secs(), "traffic report not delivered"
                        );
                        {
                            let mut s = settings.lock_status();
                            s.failures += 1;
                            s.last_error = Some(e.to_string());
                            s.last_error_ms = now_ms();
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            backoff = BACKOFF_MIN;
            // Delivered: the row must go, and must not be sent again, so
            // the delete is retried on its own until it succeeds.
            while let Err(e) = delete_sent(&db, &settings.node_id, seq).await {
                tracing::warn!(error = %e, "removing a delivered traffic report failed; retrying");
                tokio::time::sleep(BACKOFF_MIN).await;
            }
            let mut s = settings.lock_status();
            s.sent += 1;
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

async fn delete_sent(db: &Db, node_id: &str, seq: i64) -> Result<()> {
    sqlx::query("DELETE FROM traffic_report_outbox WHERE node_id = $1 AND seq = $2")
        .bind(node_id)
        .bind(seq)
        .execute(db)
        .await?;
    Ok(())
}
