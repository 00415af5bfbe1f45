//! Seed 003's mesh controller state: networks with their subnets
//! ([`networks`]), nodes registered by machine key and authorized by an
//! operator, with virtual IPs from their network's subnet ([`nodes`]),
//! subnet routes advertised by gateway nodes ([`routes`]), the
//! controller's settings ([`settings`]), the relay and STUN servers
//! ([`servers`]) and the tokens it issues with their blacklist
//! ([`tokens`]). Tables `mesh_*` (migration 0005);
//! audit rows go to the shared audit log with kinds `mesh.*`.

pub mod channels;
pub mod config;
pub mod networks;
pub mod nodes;
pub mod routes;
pub mod servers;
pub mod settings;
pub mod tokens;

use sqlx::Row as _;

use crate::error::{Error, Result};

/// The next id of `table` (`id` column): small, so that DATA frames
/// carry node ids in 4 bytes, and never reused (a counter in
/// `mesh_counters` that only grows; it starts past any id already there).
/// Called inside the inserting transaction; two racing inserts on
/// PostgreSQL make the second fail on the counter's or the table's key.
async fn next_id(conn: &mut sqlx::AnyConnection, table: &'static str) -> Result<u32> {
    let max: i64 = sqlx::query(&format!("SELECT COALESCE(MAX(id), 0) AS m FROM {table}"))
        .fetch_one(&mut *conn)
        .await?
        .try_get("m")?;
    let counter: Option<i64> =
        sqlx::query_scalar("SELECT value FROM mesh_counters WHERE name = $1")
            .bind(table)
            .fetch_optional(&mut *conn)
            .await?;
    let next = max.max(counter.unwrap_or(0)) + 1;
    sqlx::query(
        "INSERT INTO mesh_counters (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = $2",
    )
    .bind(table)
    .bind(next)
    .execute(&mut *conn)
    .await?;
    u32::try_from(next).map_err(|_| Error::Internal(format!("{table}: ids exhausted")))
}

/// An audit row of `kind` (`mesh.…`) with `detail`, through `exec`.
async fn audited<'c, E>(exec: E, kind: &'static str, detail: serde_json::Value) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    crate::telemetry::audit::record(
        exec,
        &crate::telemetry::audit::Entry {
            kind,
            detail,
            ..Default::default()
        },
    )
    .await
}

/// A stored count or id that fits in u32.
fn small(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// A text field: trimmed, not empty, at most `max` bytes, no control
/// characters; refused naming `field`.
fn text(field: &str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if v.len() > max {
        return Err(Error::invalid(
            field,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(v.to_owned())
}
