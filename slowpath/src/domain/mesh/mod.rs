//! Seed 003's mesh controller state: networks with their subnets
//! ([`networks`]), nodes registered by machine key and authorized by an
//! operator, with virtual IPs from their network's subnet ([`nodes`]),
//! subnet routes advertised by gateway nodes ([`routes`]), the
//! controller's settings ([`settings`]) and the tokens it issues with their
//! blacklist ([`tokens`]). Tables `mesh_*` (migration 0005);
//! audit rows go to the shared audit log with kinds `mesh.*`.

pub mod config;
pub mod networks;
pub mod nodes;
pub mod routes;
pub mod settings;
pub mod tokens;

use sqlx::Row as _;

use crate::error::{Error, Result};

/// The next id of `table` (`id` column): one more than the largest, so ids
/// stay small (DATA frames carry node ids in 4 bytes). Called inside the
/// inserting transaction; two racing inserts on PostgreSQL make the second
/// fail on the primary key, which the caller reports as a conflict.
async fn next_id<'c, E>(exec: E, table: &'static str) -> Result<u32>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT COALESCE(MAX(id), 0) AS m FROM {table}"))
        .fetch_one(exec)
        .await?;
    let max: i64 = row.try_get("m")?;
    u32::try_from(max + 1).map_err(|_| Error::Internal(format!("{table}: ids exhausted")))
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
