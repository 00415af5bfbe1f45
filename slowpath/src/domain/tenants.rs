//! Tenants (seed 002): frp tokens with their own region, port ranges,
//! bandwidth, port cap, traffic reports and traffic quota.
//!
//! A tenant record is the JSON seed 002 stores in etcd under
//! `{prefix}{token}`; the same record is what the tenants API takes, and
//! what the database keeps for operators without etcd. [`Tenant::parse_json`]
//! reads it (errors name the field); [`Tenant::policy`] compiles it into
//! the policy table's form.
//!
//! Beyond the seed's fields, a record may carry a traffic quota:
//! `trafficQuota` ("100GB"), `quotaPeriod` ("day", "month", or a length such
//! as "12h" or "7d"), `overQuota` ("close", the default, or "throttle") and
//! `throttleLimit` (the rate while throttled, e.g. "64KB").
//!
//! Operators without etcd keep tenants in the database instead: [`create`],
//! [`get`], [`list`], [`replace`] and [`delete`] store the same records in
//! the `tenants` table, one audit row per change.

use proto::policy::{PortSet, TenantPolicy};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;
use crate::telemetry::audit::{self, Entry};

pub use proto::policy::bandwidth::{parse_bandwidth, KB, MB};

/// One port range of `allowPorts`: `{"single": 8080}` or
/// `{"start": 9000, "end": 9100}`, checked as it is read; the same type as
/// the config file's `allowPorts`.
pub use proto::policy::PortRange;

/// How a quota period is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
    /// Fixed windows of this many seconds, counted from the Unix epoch.
    Every(u64),
}

/// What happens to a tenant over its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// Refuse new logins, proxies and visitor connections; end live sessions.
    Close,
    /// Keep serving at this many bytes per second.
    Throttle(u64),
}

/// A traffic quota: bytes (both directions) per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes allowed per period.
    pub bytes: u64,
    /// The period.
    pub period: QuotaPeriod,
    /// What happens beyond it.
    pub over: OverQuota,
}

/// The JSON record, as seed 002 writes it (camelCase), plus the quota
/// extension. Unknown fields are refused so that a typo does not silently
/// drop a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantRecord {
    /// The frp token.
    #[serde(default)]
    pub token: String,
    /// Region whose nodes accept the token.
    #[serde(default)]
    pub region: String,
    /// Ports TCP/UDP proxies may use (empty = any).
    #[serde(default)]
    pub allow_ports: Vec<PortRange>,
    /// "10MB", "1024KB"; empty = unlimited.
    #[serde(default)]
    pub bandwidth_limit: String,
    /// Proxies with a port per frpc session; 0 = unlimited.
    #[serde(default)]
    pub max_ports_per_client: u32,
    /// Whether the token may be used.
    #[serde(default)]
    pub enabled: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Report every this many MB per proxy; 0 = no reports.
    #[serde(default, rename = "trafficReportIntervalMB")]
    pub traffic_report_interval_mb: u64,
    /// Traffic quota per period, e.g. "100GB"; empty = none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic_quota: String,
    /// "day", "month", or a length like "12h", "7d", "3600s".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quota_period: String,
    /// "close" (default) or "throttle".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub over_quota: String,
    /// Rate while throttled, e.g. "64KB".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub throttle_limit: String,
}

/// A validated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The record as given (normalized: token filled in).
    pub record: TenantRecord,
    /// `allowPorts` as a set.
    pub allow_ports: PortSet,
    /// `bandwidthLimit` in bytes per second (0 = unlimited).
    pub bandwidth_bps: u64,
    /// The quota, if any.
    pub quota: Option<Quota>,
}

/// Parse a byte amount with KB/MB/GB/TB (powers of 1024); empty = 0.
pub fn parse_bytes(field: &str, text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    let units = [
        ("TB", MB * MB),
        ("GB", MB * KB),
        ("MB", MB),
        ("KB", KB),
        ("B", 1),
    ];
    for (suffix, unit) in units {
        if let Some(n) = t.strip_suffix(suffix) {
            let f: f64 = n
                .trim()
                .parse()
                .map_err(|_| format!("{field}: {text:?} is not a number followed by a unit"))?;
            if !f.is_finite() || f < 0.0 {
                return Err(format!("{field}: {text:?} must be a positive amount"));
            }
            return Ok((f * unit as f64) as u64);
        }
    }
    Err(format!(
        "{field}: {text:?} needs a unit: B, KB, MB, GB or TB (e.g. \"100GB\")"
    ))
}

/// Parse `quotaPeriod`.
pub fn parse_period(field: &str, text: &str) -> Result<QuotaPeriod, String> {
    let t = text.trim();
    match t {
        "" | "month" => return Ok(QuotaPeriod::Month),
        "day" => return Ok(QuotaPeriod::Day),
        _ => {}
    }
    let bad = || {
        format!("{field}: {text:?} must be \"day\", \"month\" or a length like \"12h\", \"7d\", \"3600s\"")
    };
    let (num, unit) = t.split_at(t.len() - 1);
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = n.checked_mul(mult).filter(|&s| s > 0).ok_or_else(bad)?;
    Ok(QuotaPeriod::Every(secs))
}

impl Tenant {
    /// Read a JSON record. `key_token`, when the record came from etcd, is
    /// the token in the key (`{prefix}{token}`): the record's own `token`
    /// may be left out, and must match when given.
    pub fn parse_json(bytes: &[u8], key_token: Option<&str>) -> Result<Tenant, String> {
        // serde also reads a struct from a JSON array (`["t", "r"]`, fields
        // by position), which would slip past the unknown-field check.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("not a tenant record: expected a JSON object".into());
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let record: TenantRecord = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            // Broken JSON has no field to blame (its path reads "?").
            if path == "." || e.inner().is_syntax() || e.inner().is_eof() {
                format!("not a tenant record: {}", e.inner())
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        de.end().map_err(|e| format!("not a tenant record: {e}"))?;
        Tenant::from_record(record, key_token)
    }

    /// Validate a record.
    pub fn from_record(
        mut record: TenantRecord,
        key_token: Option<&str>,
    ) -> Result<Tenant, String> {
        if let Some(k) = key_token {
            if record.token.is_empty() {
                record.token = k.to_owned();
            } else if record.token != k {
                return Err(format!(
                    "token: {:?} does not match the token in the key ({k:?})",
                    record.token
                ));
            }
        }
        if record.token.is_empty() {
            return Err("token: must not be empty".into());
        }
        if record.token.len() > 256 || record.token.chars().any(|c| c.is_control()) {
            return Err("token: at most 256 characters, no control characters".into());
        }
        if record.region.is_empty() {
            return Err("region: must not be empty".into());
        }
        let bandwidth_bps = parse_bandwidth("bandwidthLimit", &record.bandwidth_limit)?;
        let quota_bytes = parse_bytes("trafficQuota", &record.traffic_quota)?;
        let quota = if quota_bytes == 0 {
            if !record.quota_period.is_empty()
                || !record.over_quota.is_empty()
                || !record.throttle_limit.is_empty()
            {
                return Err(
                    "trafficQuota: quotaPeriod, overQuota and throttleLimit need a trafficQuota"
                        .into(),
                );
            }
            None
        } else {
            let period = parse_period("quotaPeriod", &record.quota_period)?;
            let over = match record.over_quota.trim() {
                "" | "close" => {
                    if !record.throttle_limit.is_empty() {
                        return Err("throttleLimit: only with overQuota = \"throttle\"".into());
                    }
                    OverQuota::Close
                }
                "throttle" => {
                    let bps = parse_bandwidth("throttleLimit", &record.throttle_limit)?;
                    if bps == 0 {
                        return Err(
                            "throttleLimit: overQuota = \"throttle\" needs a rate, e.g. \"64KB\""
                                .into(),
                        );
                    }
                    OverQuota::Throttle(bps)
                }
                other => {
                    return Err(format!(
                        "overQuota: {other:?} must be \"close\" or \"throttle\""
                    ))
                }
            };
            Some(Quota {
                bytes: quota_bytes,
                period,
                over,
            })
        };
        Ok(Tenant {
            // Each entry was checked as it was read (PortRange).
            allow_ports: record.allow_ports.iter().copied().collect(),
            bandwidth_bps,
            quota,
            record,
        })
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.record.token
    }

    /// Report threshold in bytes (0 = no reports).
    pub fn report_interval_bytes(&self) -> u64 {
        self.record.traffic_report_interval_mb.saturating_mul(MB)
    }

    /// The policy-table form; `over_quota` comes from the quota tracker.
    pub fn policy(&self, over_quota: bool) -> TenantPolicy {
        let throttle_bps = match self.quota.map(|q| q.over) {
            Some(OverQuota::Throttle(bps)) => bps,
            _ => 0,
        };
        TenantPolicy {
            token: self.record.token.clone(),
            region: self.record.region.clone(),
            enabled: self.record.enabled,
            allow_ports: self.allow_ports.clone(),
            max_ports_per_client: self.record.max_ports_per_client,
            bandwidth_bps: self.bandwidth_bps,
            over_quota: over_quota && self.quota.is_some(),
            throttle_bps,
            report_interval_bytes: self.report_interval_bytes(),
        }
    }
}

/// A tenant as the API shows it: the record (camelCase, as stored in etcd)
/// and where it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct TenantInfo {
    /// The record.
    #[serde(flatten)]
    pub record: TenantRecord,
    /// `"database"` (or `"etcd"`).
    pub source: &'static str,
}

/// [`TenantInfo::source`] of tenants kept in the database.
pub const SOURCE_DATABASE: &str = "database";
/// [`TenantInfo::source`] of tenants read from etcd (read-only here: change
/// them in etcd).
pub const SOURCE_ETCD: &str = "etcd";

impl Tenant {
    /// The API's view, naming `source`.
    pub fn info(&self, source: &'static str) -> TenantInfo {
        TenantInfo {
            record: self.record.clone(),
            source,
        }
    }
}

/// A [`Tenant::parse_json`] message as an [`Error::Invalid`] naming the
/// field the message starts with (`"allowPorts[0]: ..."`).
pub fn invalid_record(message: String) -> Error {
    let field = message
        .split_once(": ")
        .map(|(head, _)| head)
        .filter(|head| !head.is_empty() && !head.contains(' '))
        .map(str::to_owned);
    Error::Invalid { field, message }
}

/// Reads a stored record back; the key's token must match the record's.
fn from_row(token: &str, record: &str) -> Result<Tenant> {
    Tenant::parse_json(record.as_bytes(), Some(token))
        .map_err(|e| Error::Internal(format!("stored tenant {token:?} no longer validates: {e}")))
}

fn record_text(tenant: &Tenant) -> Result<String> {
    serde_json::to_string(&tenant.record)
        .map_err(|e| Error::Internal(format!("encoding a tenant record: {e}")))
}

/// Stores a new tenant; [`Error::Conflict`] when its token is taken.
pub async fn create(db: &Db, tenant: Tenant) -> Result<Tenant> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    // `DO NOTHING` + the row count tells a duplicate apart on both
    // databases without matching driver-specific error codes.
    let done = sqlx::query(
        "INSERT INTO tenants (token, record, created_ms, updated_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (token) DO NOTHING",
    )
    .bind(tenant.token())
    .bind(record_text(&tenant)?)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::Conflict(format!(
            "a tenant with token {:?} exists already",
            tenant.token()
        )));
    }
    audit::record(&mut *tx, &audit_entry("tenant.created", &tenant)).await?;
    tx.commit().await?;
    tracing::info!(tenant = %tenant.token(), region = %tenant.record.region, "tenant created");
    Ok(tenant)
}

/// One stored tenant.
pub async fn get(db: &Db, token: &str) -> Result<Tenant> {
    let row = sqlx::query("SELECT record FROM tenants WHERE token = $1")
        .bind(token)
        .fetch_optional(db)
        .await?;
    match row {
        Some(row) => from_row(token, &row.try_get::<String, _>(0)?),
        None => Err(not_found(token)),
    }
}

/// Every stored tenant, by token. A row that no longer validates (written
/// by an older, laxer version) is left out with a warning rather than
/// failing everyone else's.
pub async fn list(db: &Db) -> Result<Vec<Tenant>> {
    let rows = sqlx::query("SELECT token, record FROM tenants ORDER BY token")
        .fetch_all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let token: String = row.try_get(0)?;
        let record: String = row.try_get(1)?;
        match from_row(&token, &record) {
            Ok(t) => out.push(t),
            Err(e) => tracing::warn!(tenant = %token, reason = %e, "stored tenant skipped"),
        }
    }
    Ok(out)
}

/// Replaces the record of an existing tenant; `tenant` must carry `token`.
pub async fn replace(db: &Db, token: &str, tenant: Tenant) -> Result<Tenant> {
    if tenant.token() != token {
        return Err(Error::invalid(
            "token",
            format!(
                "token: {:?} does not match the tenant being replaced ({token:?})",
                tenant.token()
            ),
        ));
    }
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE tenants SET record = $1, updated_ms = $2 WHERE token = $3")
        .bind(record_text(&tenant)?)
        .bind(now_ms())
        .bind(token)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(not_found(token));
    }
    audit::record(&mut *tx, &audit_entry("tenant.updated", &tenant)).await?;
    tx.commit().await?;
    tracing::info!(tenant = %token, region = %tenant.record.region, enabled = tenant.record.enabled, "tenant replaced");
    Ok(tenant)
}

/// Deletes a tenant.
pub async fn delete(db: &Db, token: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("DELETE FROM tenants WHERE token = $1")
        .bind(token)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(not_found(token));
    }
    audit::record(
        &mut *tx,
        &Entry {
            kind: "tenant.deleted",
            detail: serde_json::json!({ "token": token }),
            ..Entry::default()
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %token, "tenant deleted");
    Ok(())
}

fn not_found(token: &str) -> Error {
    Error::NotFound(format!("no tenant with token {token:?}"))
}

fn audit_entry(kind: &'static str, tenant: &Tenant) -> Entry {
    Entry {
        kind,
        detail: serde_json::json!({ "token": tenant.token(), "record": tenant.record }),
        ..Entry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{
      "token": "abc123xyz",
      "region": "chengdu",
      "allowPorts": [{"single": 8080}, {"start": 9000, "end": 9100}],
      "bandwidthLimit": "10MB",
      "maxPortsPerClient": 5,
      "enabled": true,
      "description": "用户A的成都节点token",
      "trafficReportIntervalMB": 50
    }"#;

    #[test]
    fn the_seed_record_parses() {
        let t = Tenant::parse_json(SEED.as_bytes(), Some("abc123xyz")).unwrap();
        assert_eq!(t.token(), "abc123xyz");
        assert_eq!(t.bandwidth_bps, 10 * MB);
        assert!(t.allow_ports.contains(8080) && t.allow_ports.contains(9050));
        assert!(!t.allow_ports.contains(8081));
        assert_eq!(t.report_interval_bytes(), 50 * MB);
        let p = t.policy(true);
        assert!(p.enabled && !p.over_quota, "no quota: never over it");
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            Tenant::parse_json(br#"{"token":"t","region":"r","enabled":"yes"}"#, None).unwrap_err();
        assert!(e.starts_with("enabled"), "{e}");
        let e =
            Tenant::parse_json(br#"{"token":"t","region":"r","allowPort":[]}"#, None).unwrap_err();
        assert!(e.contains("allowPort"), "{e}");
        let e = Tenant::parse_json(
            br#"{"token":"t","region":"r","allowPorts":[{"start":9,"end":2}]}"#,
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("allowPorts[0]"), "{e}");
        let e = Tenant::parse_json(br#"{"token":"a","region":"r"}"#, Some("b")).unwrap_err();
        assert!(e.starts_with("token"), "{e}");
        for not_an_object in [
            &br#"["t", "r"]"#[..],
            br#"{"token":"t","region":"r"} x"#,
            br#"{"token":"t","region":"r""#,
            br#"{"token":"t","region":"r",}"#,
        ] {
            let e = Tenant::parse_json(not_an_object, None).unwrap_err();
            assert!(e.starts_with("not a tenant record"), "{e}");
        }
        let e = Tenant::parse_json(b"not json", None).unwrap_err();
        assert!(
            e.contains("not a tenant record") || e.contains("expected"),
            "{e}"
        );
        let e = Tenant::parse_json(br#"{"token":"t"}"#, None).unwrap_err();
        assert!(e.starts_with("region"), "{e}");
    }

    #[test]
    fn record_errors_name_their_field() {
        let e = Tenant::parse_json(br#"{"token":"t","region":"r","allowPorts":[{}]}"#, None)
            .unwrap_err();
        match invalid_record(e) {
            Error::Invalid { field, .. } => assert_eq!(field.as_deref(), Some("allowPorts[0]")),
            other => panic!("{other:?}"),
        }
        let e = Tenant::parse_json(b"[1]", None).unwrap_err();
        match invalid_record(e) {
            Error::Invalid { field, message } => assert_eq!(field, None, "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn quotas() {
        let t = Tenant::parse_json(
            br#"{"token":"t","region":"r","enabled":true,"trafficQuota":"2GB","quotaPeriod":"day","overQuota":"throttle","throttleLimit":"64KB"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            t.quota,
            Some(Quota {
                bytes: 2 * 1024 * MB,
                period: QuotaPeriod::Day,
                over: OverQuota::Throttle(64 * KB)
            })
        );
        let p = t.policy(true);
        assert!(p.over_quota && p.throttle_bps == 64 * KB);
        assert_eq!(parse_period("p", "12h").unwrap(), QuotaPeriod::Every(43200));
        assert_eq!(parse_period("p", "").unwrap(), QuotaPeriod::Month);
        assert!(parse_period("p", "0d").is_err());
        assert!(parse_period("p", "week").is_err());
        let e = Tenant::parse_json(br#"{"token":"t","region":"r","quotaPeriod":"day"}"#, None)
            .unwrap_err();
        assert!(e.starts_with("trafficQuota"), "{e}");
        let e = Tenant::parse_json(
            br#"{"token":"t","region":"r","trafficQuota":"1GB","overQuota":"throttle"}"#,
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("throttleLimit"), "{e}");
    }
}
