//! The audit log: one row per thing that happened (invite created, resolved,
//! revoked; sessions and proxies from the data plane's event rings), queried
//! by the admin API.

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::clock::{now_ms, rfc3339};
use crate::credentials::random_hex;
use crate::error::Result;
use crate::store::db::Db;

/// One audit row to write.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    /// When, ms; 0 means now.
    pub ts_ms: i64,
    /// Event kind, e.g. `invite.resolved`, `session.open`.
    pub kind: &'static str,
    /// Node concerned.
    pub node_id: String,
    /// Invite concerned.
    pub invite_id: String,
    /// frpc run id.
    pub run_id: String,
    /// Proxy name.
    pub proxy: String,
    /// Why (refusals, closes).
    pub reason: String,
    /// Anything else, as JSON.
    pub detail: serde_json::Value,
}

/// A new audit row id: time-ordered, unique across processes sharing a database.
fn new_id(ts_ms: i64) -> String {
    format!("{:013}-{}", ts_ms.max(0), random_hex(6))
}

/// Appends `entry` through `exec` (a pool or an open transaction).
pub async fn record<'c, E>(exec: E, entry: &Entry) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let ts = if entry.ts_ms > 0 {
        entry.ts_ms
    } else {
        now_ms()
    };
    let detail = if entry.detail.is_null() {
        "{}".to_owned()
    } else {
        entry.detail.to_string()
    };
    sqlx::query(
        "INSERT INTO audit (id, ts_ms, kind, node_id, invite_id, run_id, proxy, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(new_id(ts))
    .bind(ts)
    .bind(entry.kind)
    .bind(&entry.node_id)
    .bind(&entry.invite_id)
    .bind(&entry.run_id)
    .bind(&entry.proxy)
    .bind(&entry.reason)
    .bind(detail)
    .execute(exec)
    .await?;
    Ok(())
}

/// Filters for [`query`]; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this node.
    pub node_id: Option<String>,
    /// Only this invite.
    pub invite_id: Option<String>,
    /// Only rows at or after this time, ms.
    pub since_ms: Option<i64>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// An audit row as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    /// Row id (time-ordered).
    pub id: String,
    /// When, ms.
    pub ts_ms: i64,
    /// When, RFC 3339.
    pub ts: String,
    /// Event kind.
    pub kind: String,
    /// Node.
    pub node_id: String,
    /// Invite.
    pub invite_id: String,
    /// frpc run id.
    pub run_id: String,
    /// Proxy name.
    pub proxy: String,
    /// Reason.
    pub reason: String,
    /// Detail JSON.
    pub detail: serde_json::Value,
}

/// Newest rows first, filtered.
pub async fn query(db: &Db, filter: &Filter) -> Result<Vec<Row>> {
    // Each filter is "$n = '' OR column = $n" so one statement with fixed
    // placeholders serves every combination on both databases.
    let rows = sqlx::query(
        "SELECT id, ts_ms, kind, node_id, invite_id, run_id, proxy, reason, detail FROM audit \
         WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR node_id = $2) \
         AND ($3 = '' OR invite_id = $3) AND ts_ms >= $4 \
         ORDER BY ts_ms DESC, id DESC LIMIT $5",
    )
    .bind(filter.kind.clone().unwrap_or_default())
    .bind(filter.node_id.clone().unwrap_or_default())
    .bind(filter.invite_id.clone().unwrap_or_default())
    .bind(filter.since_ms.unwrap_or(0))
    .bind(i64::from(filter.limit.unwrap_or(100).clamp(1, 1000)))
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let ts_ms: i64 = r.try_get("ts_ms")?;
            let detail: String = r.try_get("detail")?;
            Ok(Row {
                id: r.try_get("id")?,
                ts_ms,
                ts: rfc3339(ts_ms),
                kind: r.try_get("kind")?,
                node_id: r.try_get("node_id")?,
                invite_id: r.try_get("invite_id")?,
                run_id: r.try_get("run_id")?,
                proxy: r.try_get("proxy")?,
                reason: r.try_get("reason")?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect()
}
