//! Managed certificates, one per routed hostname (`certificates`, migration
//! 0006): their state as the ACME task leaves it (`pending`, `valid`,
//! `failed` with the reason and when it is tried again), and the store file
//! the fastpath terminates TLS with (`proto::certstore`).
//!
//! A certificate is renewed at two thirds of its lifetime; a failure is
//! tried again after a backoff that doubles from 1 minute to 1 hour
//! ([`retry_after_ms`]). The private key is kept in the database as
//! PKCS#8 PEM, and handed to the fastpath only through the owner-only
//! policy directory.

use serde::Serialize;
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// A certificate's state, as shown (never its key).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Certificate {
    /// The hostname.
    pub hostname: String,
    /// `pending`, `valid` or `failed`.
    pub status: String,
    /// Validity, unix ms (0: none yet).
    pub not_before: i64,
    /// Validity end, unix ms (0: none yet).
    pub not_after: i64,
    /// When it is renewed, or tried again after a failure (unix ms; 0: now).
    pub renew_at: i64,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// The last failure ("" after a success).
    pub last_error: String,
    /// Last change, unix ms.
    pub updated_at: i64,
}

const COLUMNS: &str =
    "hostname, status, not_before, not_after, renew_at, attempts, last_error, updated_at";

fn row(r: &sqlx::any::AnyRow) -> Result<Certificate> {
    Ok(Certificate {
        hostname: r.try_get("hostname")?,
        status: r.try_get("status")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        renew_at: r.try_get("renew_at")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        last_error: r.try_get("last_error")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Every certificate, by hostname.
pub async fn list(db: &Db) -> Result<Vec<Certificate>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM certificates ORDER BY hostname"
    ))
    .fetch_all(db)
    .await?;
    rows.iter().map(row).collect()
}

/// The routed hostnames whose certificate is due at `now`: none yet, a
/// failure whose backoff is over, or a valid one at two thirds of its life
/// (or renewed by hand).
pub async fn due(db: &Db, now: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT r.hostname AS hostname FROM routes r \
         LEFT JOIN certificates c ON c.hostname = r.hostname \
         WHERE c.hostname IS NULL OR c.renew_at <= $1 ORDER BY r.hostname",
    )
    .bind(now)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("hostname").map_err(Error::from))
        .collect()
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at two thirds of its lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

/// The backoff after `attempts` failures in a row: 1 minute doubling to
/// 1 hour.
pub fn retry_after_ms(attempts: u32) -> i64 {
    let minutes = 1i64 << attempts.saturating_sub(1).min(6);
    minutes.min(60) * 60_000
}

/// A certificate issued for `hostname`.
pub async fn issued(
    db: &Db,
    hostname: &str,
    chain_pem: &str,
    key_pem: &str,
    (not_before, not_after): (i64, i64),
) -> Result<()> {
    let now = now_ms();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO certificates (hostname, status, chain_pem, key_pem, not_before, not_after, \
         renew_at, attempts, last_error, updated_at) \
         VALUES ($1, 'valid', $2, $3, $4, $5, $6, 0, '', $7) \
         ON CONFLICT (hostname) DO UPDATE SET status = 'valid', chain_pem = excluded.chain_pem, \
         key_pem = excluded.key_pem, not_before = excluded.not_before, \
         not_after = excluded.not_after, renew_at = excluded.renew_at, attempts = 0, \
         last_error = '', updated_at = excluded.updated_at",
    )
    .bind(hostname)
    .bind(chain_pem)
    .bind(key_pem)
    .bind(not_before)
    .bind(not_after)
    .bind(renew_at(not_before, not_after))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    super::edge::audit(
        &mut *tx,
        "edge.cert.issued",
        serde_json::json!({ "hostname": hostname, "not_before": not_before, "not_after": not_after }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// An attempt for `hostname` failed with `error`: recorded, and tried
/// again after the backoff. A certificate still valid stays in use.
pub async fn failed(db: &Db, hostname: &str, error: &str) -> Result<Certificate> {
    let now = now_ms();
    let before = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM certificates WHERE hostname = $1"
    ))
    .bind(hostname)
    .fetch_optional(db)
    .await?;
    let before = before.as_ref().map(row).transpose()?;
    let attempts = before.as_ref().map_or(0, |c| c.attempts) + 1;
    let still_valid = before
        .as_ref()
        .is_some_and(|c| c.status == "valid" && c.not_after > now);
    let status = if still_valid { "valid" } else { "failed" };
    let error: String = error.chars().take(1000).collect();
    let next = now + retry_after_ms(attempts);
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO certificates (hostname, status, renew_at, attempts, last_error, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (hostname) DO UPDATE SET status = excluded.status, \
         renew_at = excluded.renew_at, attempts = excluded.attempts, \
         last_error = excluded.last_error, updated_at = excluded.updated_at",
    )
    .bind(hostname)
    .bind(status)
    .bind(next)
    .bind(i64::from(attempts))
    .bind(&error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    super::edge::audit(
        &mut *tx,
        "edge.cert.failed",
        serde_json::json!({ "hostname": hostname, "attempts": attempts, "error": error, "retry_at": next }),
    )
    .await?;
    tx.commit().await?;
    Ok(Certificate {
        hostname: hostname.to_owned(),
        status: status.to_owned(),
        not_before: before.as_ref().map_or(0, |c| c.not_before),
        not_after: before.as_ref().map_or(0, |c| c.not_after),
        renew_at: next,
        attempts,
        last_error: error,
        updated_at: now,
    })
}

/// Renew `hostname`'s certificate at the next pass (404 when it is not
/// routed).
pub async fn renew_now(db: &Db, hostname: &str) -> Result<()> {
    let routed: Option<String> = sqlx::query_scalar("SELECT id FROM routes WHERE hostname = $1")
        .bind(hostname)
        .fetch_optional(db)
        .await?;
    if routed.is_none() {
        return Err(Error::NotFound(format!("no route for {hostname:?}")));
    }
    sqlx::query("UPDATE certificates SET renew_at = 0, updated_at = $1 WHERE hostname = $2")
        .bind(now_ms())
        .bind(hostname)
        .execute(db)
        .await?;
    Ok(())
}

/// The store file of every valid certificate of a routed hostname, and how
/// many it holds. A row whose PEM does not parse is left out and logged.
pub async fn store_file(db: &Db) -> Result<(Vec<u8>, u32)> {
    let rows = sqlx::query(
        "SELECT c.hostname AS hostname, c.chain_pem AS chain_pem, c.key_pem AS key_pem \
         FROM certificates c JOIN routes r ON r.hostname = c.hostname \
         WHERE c.chain_pem <> '' ORDER BY c.hostname",
    )
    .fetch_all(db)
    .await?;
    let mut owned: Vec<(String, Vec<Vec<u8>>, Vec<u8>)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let host: String = r.try_get("hostname")?;
        let chain_pem: String = r.try_get("chain_pem")?;
        let key_pem: String = r.try_get("key_pem")?;
        match parse_pem(&chain_pem, &key_pem) {
            Ok((chain, key)) => owned.push((host, chain, key)),
            Err(why) => tracing::warn!(hostname = %host, %why, "certificate left out of the store"),
        }
    }
    let entries: Vec<proto::certstore::Entry<'_>> = owned
        .iter()
        .map(|(h, chain, key)| proto::certstore::Entry {
            names: vec![h.as_str()],
            chain: chain.iter().map(Vec::as_slice).collect(),
            key,
        })
        .collect();
    Ok((proto::certstore::encode(&entries), entries.len() as u32))
}

/// Every valid certificate of a routed hostname as PEM: (hostname, chain,
/// key), for edge nodes that terminate TLS themselves.
pub async fn valid_pems(db: &Db) -> Result<Vec<(String, String, String)>> {
    let rows = sqlx::query(
        "SELECT c.hostname AS hostname, c.chain_pem AS chain_pem, c.key_pem AS key_pem \
         FROM certificates c JOIN routes r ON r.hostname = c.hostname \
         WHERE c.chain_pem <> '' ORDER BY c.hostname",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("hostname")?,
                r.try_get("chain_pem")?,
                r.try_get("key_pem")?,
            ))
        })
        .collect()
}

/// A PEM chain and key as DER.
pub fn parse_pem(chain_pem: &str, key_pem: &str) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let chain: Vec<Vec<u8>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("chain: {e}"))?;
    if chain.is_empty() || chain.len() > proto::certstore::MAX_CHAIN {
        return Err(format!("chain of {} certificates", chain.len()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("key: {e}"))?
        .ok_or("no private key")?;
    Ok((chain, key.secret_der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_at_two_thirds_and_backoff_doubling_to_an_hour() {
        assert_eq!(renew_at(0, 90 * 86_400_000), 60 * 86_400_000);
        assert_eq!(retry_after_ms(1), 60_000);
        assert_eq!(retry_after_ms(2), 120_000);
        assert_eq!(retry_after_ms(6), 32 * 60_000);
        assert_eq!(retry_after_ms(7), 60 * 60_000);
        assert_eq!(retry_after_ms(100), 60 * 60_000);
    }
}
