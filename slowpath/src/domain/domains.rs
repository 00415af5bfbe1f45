//! Domains (seed 000 §8.2): which hostnames the edge may route and certify.
//!
//! A hostname under an **official** suffix (a node's `subDomainHost`, or
//! the zone the DNS manager keeps) needs nothing. Any other hostname must
//! be under a **verified** domain: its owner adds the domain, is given a
//! token, and proves control by publishing it either as a TXT record at
//! `_totoro-verify.<domain>` or as the body of
//! `http://<domain>/.well-known/totoro-verify/<token>`, answered by the
//! server the domain points at. The check itself is done by
//! [`crate::dns::verify`]; this module keeps the state.
//!
//! Also here: the rows of the records the DNS manager keeps in its zone.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::credentials::random_hex;
use crate::domain::edge::{audit, hostname};
use crate::error::{Error, Result};
use crate::store::db::Db;

/// Where the DNS manager's zone is remembered (`meta`), so that route
/// checks see it as official without being handed the daemon's flags.
pub const ZONE_META_KEY: &str = "dns.zone";

/// The TXT record's name for `domain`.
pub fn txt_name(domain: &str) -> String {
    format!("_totoro-verify.{domain}")
}

/// A domain as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Domain {
    /// `fuga.com`.
    pub domain: String,
    /// `pending` or `verified`.
    pub status: String,
    /// `http` or `dns` once verified.
    pub method: String,
    /// When, unix ms.
    pub verified_at: Option<i64>,
    /// The last failed check, for the owner.
    pub last_error: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// What to publish: the TXT record …
    pub txt: serde_json::Value,
    /// … or the HTTP answer.
    pub http: serde_json::Value,
    /// The token (the TXT value and the HTTP body).
    pub token: String,
}

fn domain_row(r: &AnyRow) -> Result<Domain> {
    let domain: String = r.try_get("domain")?;
    let token: String = r.try_get("token")?;
    Ok(Domain {
        txt: serde_json::json!({ "name": txt_name(&domain), "value": token }),
        http: serde_json::json!({
            "url": format!("http://{domain}/.well-known/totoro-verify/{token}"),
            "body": token,
        }),
        status: r.try_get("status")?,
        method: r.try_get("method")?,
        verified_at: r.try_get("verified_at")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        domain,
        token,
    })
}

const COLUMNS: &str = "domain, token, status, method, verified_at, last_error, created_at";

/// `POST /api/v1/domains`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// The domain, canonical (lowercase, punycode).
    pub domain: String,
}

/// The official suffixes: every node's `subDomainHost` and the DNS
/// manager's zone.
pub async fn official_suffixes(db: &Db) -> Result<Vec<String>> {
    let mut out: Vec<String> =
        sqlx::query_scalar("SELECT sub_domain_host FROM nodes WHERE sub_domain_host <> ''")
            .fetch_all(db)
            .await?;
    let zone: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(ZONE_META_KEY)
        .fetch_optional(db)
        .await?;
    out.extend(zone.filter(|z| !z.is_empty()));
    out.sort();
    out.dedup();
    Ok(out)
}

/// Remember the DNS manager's zone (None: there is none).
pub async fn set_zone(db: &Db, zone: Option<&str>) -> Result<()> {
    sqlx::query("DELETE FROM meta WHERE key = $1")
        .bind(ZONE_META_KEY)
        .execute(db)
        .await?;
    if let Some(z) = zone {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
            .bind(ZONE_META_KEY)
            .bind(z)
            .execute(db)
            .await?;
    }
    Ok(())
}

/// `host` is `suffix` or under it.
pub fn is_under(host: &str, suffix: &str) -> bool {
    host == suffix
        || (host.len() > suffix.len()
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
}

/// May `host` be routed and certified? Official or under a verified
/// domain; otherwise refused (403, naming `hostname`) with what to do.
pub async fn check_routable(db: &Db, host: &str) -> Result<()> {
    if official_suffixes(db)
        .await?
        .iter()
        .any(|s| is_under(host, s))
    {
        return Ok(());
    }
    let mut pending = None;
    for d in list(db).await? {
        if is_under(host, &d.domain) {
            if d.status == "verified" {
                return Ok(());
            }
            pending = Some(d.domain);
        }
    }
    Err(Error::Refused {
        field: Some("hostname".into()),
        message: match pending {
            Some(d) => format!(
                "hostname {host:?} is under domain {d:?}, whose ownership is not verified yet: \
                 publish its token (GET /api/v1/domains/{d}) and POST /api/v1/domains/{d}/verify"
            ),
            None => format!(
                "hostname {host:?} is under no verified domain and no official suffix: \
                 add its domain (POST /api/v1/domains) and verify it"
            ),
        },
    })
}

/// Add a domain to verify: 400 for a bad name or an official one, 409
/// when it is there already.
pub async fn add(db: &Db, req: NewDomain) -> Result<Domain> {
    let domain = hostname("domain", &req.domain)?;
    if let Some(s) = official_suffixes(db)
        .await?
        .into_iter()
        .find(|s| is_under(&domain, s))
    {
        return Err(Error::invalid(
            "domain",
            format!(
                "domain {domain:?} is under the official suffix {s:?}: it needs no verification"
            ),
        ));
    }
    let now = now_ms();
    let token = random_hex(16);
    let mut tx = db.begin().await?;
    let taken: Option<String> = sqlx::query_scalar("SELECT domain FROM domains WHERE domain = $1")
        .bind(&domain)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(Error::Conflict(format!(
            "domain {domain:?} is added already"
        )));
    }
    sqlx::query(&format!(
        "INSERT INTO domains ({COLUMNS}) VALUES ($1, $2, 'pending', '', NULL, '', $3)"
    ))
    .bind(&domain)
    .bind(&token)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        "edge.domain.added",
        serde_json::json!({ "domain": domain }),
    )
    .await?;
    tx.commit().await?;
    get(db, &domain).await
}

/// Every domain.
pub async fn list(db: &Db) -> Result<Vec<Domain>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM domains ORDER BY domain"))
        .fetch_all(db)
        .await?;
    rows.iter().map(domain_row).collect()
}

/// One domain.
pub async fn get(db: &Db, domain: &str) -> Result<Domain> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM domains WHERE domain = $1"))
        .bind(domain)
        .fetch_optional(db)
        .await?;
    match row {
        Some(r) => domain_row(&r),
        None => Err(Error::NotFound(format!("no domain {domain:?}"))),
    }
}

/// Record a check's outcome: verified by `method`, or the failure.
pub async fn record_check(
    db: &Db,
    domain: &str,
    outcome: std::result::Result<&str, &str>,
) -> Result<Domain> {
    let mut tx = db.begin().await?;
    match outcome {
        Ok(method) => {
            sqlx::query(
                "UPDATE domains SET status = 'verified', method = $1, verified_at = $2, \
                 last_error = '' WHERE domain = $3",
            )
            .bind(method)
            .bind(now_ms())
            .bind(domain)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut *tx,
                "edge.domain.verified",
                serde_json::json!({ "domain": domain, "method": method }),
            )
            .await?;
        }
        Err(why) => {
            sqlx::query("UPDATE domains SET last_error = $1 WHERE domain = $2")
                .bind(why)
                .bind(domain)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut *tx,
                "edge.domain.verify_failed",
                serde_json::json!({ "domain": domain, "reason": why }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    get(db, domain).await
}

/// Delete a domain that no route is under (409 otherwise).
pub async fn delete(db: &Db, domain: &str) -> Result<()> {
    let d = get(db, domain).await?;
    let used: Vec<String> = crate::domain::edge::list_routes(db)
        .await?
        .into_iter()
        .map(|r| r.hostname)
        .filter(|h| is_under(h, &d.domain))
        .collect();
    if !used.is_empty() {
        return Err(Error::Conflict(format!(
            "domain {:?} has routes ({}): delete them first",
            d.domain,
            used.join(", ")
        )));
    }
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM domains WHERE domain = $1")
        .bind(&d.domain)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut *tx,
        "edge.domain.deleted",
        serde_json::json!({ "domain": d.domain }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A record the DNS manager keeps.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DnsRecord {
    /// The hostname.
    pub hostname: String,
    /// Its addresses as last set.
    pub addresses: Vec<String>,
    /// `present`, `failed` (the last update failed) or `deleting`.
    pub status: String,
    /// The last failure.
    pub last_error: String,
    /// Unix ms.
    pub updated_at: i64,
}

/// Every kept record.
pub async fn dns_records(db: &Db) -> Result<Vec<DnsRecord>> {
    let rows = sqlx::query(
        "SELECT hostname, addresses, status, last_error, updated_at FROM dns_records \
         ORDER BY hostname",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let a: String = r.try_get("addresses")?;
            Ok(DnsRecord {
                hostname: r.try_get("hostname")?,
                addresses: a
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                status: r.try_get("status")?,
                last_error: r.try_get("last_error")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Record that `hostname`'s records now hold `addresses` (None: they
/// are deleted), or that the update failed (`error`).
pub async fn record_dns(
    db: &Db,
    hostname: &str,
    addresses: Option<&[String]>,
    error: Option<&str>,
) -> Result<()> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT status FROM dns_records WHERE hostname = $1")
            .bind(hostname)
            .fetch_optional(&mut *tx)
            .await?;
    match (addresses, error) {
        (None, None) => {
            sqlx::query("DELETE FROM dns_records WHERE hostname = $1")
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut *tx,
                "edge.dns.deleted",
                serde_json::json!({ "hostname": hostname }),
            )
            .await?;
        }
        (Some(a), None) => {
            sqlx::query("DELETE FROM dns_records WHERE hostname = $1")
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO dns_records (hostname, addresses, status, last_error, updated_at) \
                 VALUES ($1, $2, 'present', '', $3)",
            )
            .bind(hostname)
            .bind(a.join(","))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut *tx,
                "edge.dns.set",
                serde_json::json!({ "hostname": hostname, "addresses": a }),
            )
            .await?;
        }
        (a, Some(e)) => {
            let status = if a.is_some() { "failed" } else { "deleting" };
            if before.is_some() {
                sqlx::query(
                    "UPDATE dns_records SET status = $1, last_error = $2, updated_at = $3 \
                     WHERE hostname = $4",
                )
                .bind(status)
                .bind(e)
                .bind(now)
                .bind(hostname)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "INSERT INTO dns_records (hostname, addresses, status, last_error, \
                     updated_at) VALUES ($1, '', $2, $3, $4)",
                )
                .bind(hostname)
                .bind(status)
                .bind(e)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            // One audit row when a record starts failing, not one per retry.
            if before.as_deref() != Some(status) {
                audit(
                    &mut *tx,
                    "edge.dns.failed",
                    serde_json::json!({ "hostname": hostname, "reason": e }),
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_means_the_suffix_on_a_label_boundary() {
        assert!(is_under("app.fuga.com", "fuga.com"));
        assert!(is_under("fuga.com", "fuga.com"));
        assert!(is_under("a.b.fuga.com", "fuga.com"));
        assert!(!is_under("appfuga.com", "fuga.com"));
        assert!(!is_under("fuga.com", "app.fuga.com"));
        assert!(!is_under("com", "fuga.com"));
    }
}
