//! The controller's settings (seed 003 §9.2's `settings` table): token
//! lifetimes, the node key rotation period, the keepalive interval and
//! whether new nodes wait for an operator.

use std::collections::BTreeMap;

use sqlx::Row as _;

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// One setting: its key, what it allows (for messages) and the check.
struct Setting {
    key: &'static str,
    allows: &'static str,
    ok: fn(&str) -> bool,
}

/// The settings there are.
const KEYS: &[Setting] = &[
    Setting {
        key: "auth_token_expire_hours",
        allows: "hours, 1-720",
        ok: |v| hours(v, 1.0, 720.0),
    },
    Setting {
        key: "relay_token_expire_hours",
        allows: "hours, 0.25-24",
        ok: |v| hours(v, 0.25, 24.0),
    },
    Setting {
        key: "node_key_rotate_hours",
        allows: "hours, 1-720",
        ok: |v| hours(v, 1.0, 720.0),
    },
    Setting {
        key: "keepalive_interval_seconds",
        allows: "seconds, 5-300",
        ok: |v| v.parse::<u32>().is_ok_and(|s| (5..=300).contains(&s)),
    },
    Setting {
        key: "require_authorization",
        allows: "true or false",
        ok: |v| v == "true" || v == "false",
    },
];

fn hours(v: &str, lo: f64, hi: f64) -> bool {
    v.parse::<f64>()
        .is_ok_and(|h| h.is_finite() && (lo..=hi).contains(&h))
}

/// Every setting.
pub async fn all(db: &Db) -> Result<BTreeMap<String, String>> {
    let rows = sqlx::query("SELECT key, value FROM mesh_settings")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
        .collect()
}

/// Change some settings (all or none); unknown keys and bad values are
/// refused naming the key. Values are given as JSON strings, numbers or
/// booleans.
pub async fn update(
    db: &Db,
    changes: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>> {
    let mut checked = Vec::with_capacity(changes.len());
    for (k, v) in changes {
        let Some(setting) = KEYS.iter().find(|s| s.key == k) else {
            let known: Vec<&str> = KEYS.iter().map(|s| s.key).collect();
            return Err(Error::invalid(
                k,
                format!("unknown setting {k:?} (known: {})", known.join(", ")),
            ));
        };
        let text = match v {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        if !(setting.ok)(&text) {
            return Err(Error::invalid(
                k,
                format!("{k} must be {}, got {v}", setting.allows),
            ));
        }
        checked.push((k.clone(), text));
    }
    let mut tx = db.begin().await?;
    let now = now_ms();
    for (k, v) in &checked {
        sqlx::query(
            "INSERT INTO mesh_settings (key, value, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = $2, updated_ms = $3",
        )
        .bind(k)
        .bind(v)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    all(db).await
}

/// A setting in hours, as seconds (`default` hours when unset or
/// unreadable).
pub async fn hours_s(db: &Db, key: &str, default: f64) -> Result<u64> {
    let v: Option<String> = sqlx::query_scalar("SELECT value FROM mesh_settings WHERE key = $1")
        .bind(key)
        .fetch_optional(db)
        .await?;
    let h = v
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|h| h.is_finite() && *h > 0.0)
        .unwrap_or(default);
    Ok((h * 3600.0).round() as u64)
}

/// The keepalive interval, seconds (default 25).
pub async fn keepalive_s(db: &Db) -> Result<u64> {
    let v: Option<String> = sqlx::query_scalar(
        "SELECT value FROM mesh_settings WHERE key = 'keepalive_interval_seconds'",
    )
    .fetch_optional(db)
    .await?;
    Ok(v.and_then(|v| v.parse().ok())
        .filter(|s| (5..=300).contains(s))
        .unwrap_or(25))
}

/// Whether new nodes wait for an operator (default yes).
pub async fn require_authorization(db: &Db) -> Result<bool> {
    let v: Option<String> =
        sqlx::query_scalar("SELECT value FROM mesh_settings WHERE key = 'require_authorization'")
            .fetch_optional(db)
            .await?;
    Ok(v.as_deref() != Some("false"))
}
