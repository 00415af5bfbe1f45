//! Subnet routes a gateway node advertises (seed 003 §7): a CIDR with a
//! priority (lower wins) and a weight (shares among equal priorities).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::networks::Subnet;
use super::{audited, next_id, nodes, small};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// A route as stored and shown.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRoute {
    /// Id.
    pub id: u32,
    /// Gateway node.
    pub node_id: u32,
    /// Subnet behind it.
    pub cidr: String,
    /// Lower wins (default 100).
    pub priority: u32,
    /// Share among equal priorities (default 100).
    pub weight: u32,
    /// In use.
    pub enabled: bool,
    /// Created, ms.
    pub created_ms: i64,
}

/// Add request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    /// Subnet.
    pub cidr: String,
    /// Priority (default 100).
    #[serde(default = "hundred")]
    pub priority: u32,
    /// Weight (default 100).
    #[serde(default = "hundred")]
    pub weight: u32,
    /// Enabled (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn hundred() -> u32 {
    100
}

fn yes() -> bool {
    true
}

/// Update request; absent fields stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePatch {
    /// New priority.
    pub priority: Option<u32>,
    /// New weight.
    pub weight: Option<u32>,
    /// Enabled or not.
    pub enabled: Option<bool>,
}

const COLUMNS: &str = "id, node_id, cidr, priority, weight, enabled, created_ms";

fn from_row(row: &AnyRow) -> Result<NodeRoute> {
    Ok(NodeRoute {
        id: small(row.try_get("id")?),
        node_id: small(row.try_get("node_id")?),
        cidr: row.try_get("cidr")?,
        priority: small(row.try_get("priority")?),
        weight: small(row.try_get("weight")?),
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_ms: row.try_get("created_ms")?,
    })
}

fn check_weight(w: u32) -> Result<()> {
    if !(1..=1000).contains(&w) {
        return Err(Error::invalid("weight", "weight must be 1-1000"));
    }
    Ok(())
}

/// A node's routes.
pub async fn of_node(db: &Db, node_id: u32) -> Result<Vec<NodeRoute>> {
    nodes::get(db, node_id).await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_node_routes WHERE node_id = $1 ORDER BY id"
    ))
    .bind(i64::from(node_id))
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Add a route to a node.
pub async fn add(db: &Db, node_id: u32, req: NewRoute) -> Result<NodeRoute> {
    let subnet = Subnet::parse("cidr", &req.cidr)?;
    check_weight(req.weight)?;
    nodes::get(db, node_id).await?;
    let mut tx = db.begin().await?;
    let cidr = subnet.to_string();
    let dup = sqlx::query("SELECT id FROM mesh_node_routes WHERE node_id = $1 AND cidr = $2")
        .bind(i64::from(node_id))
        .bind(&cidr)
        .fetch_optional(&mut *tx)
        .await?;
    if dup.is_some() {
        return Err(Error::Conflict(format!(
            "node {node_id} already advertises {cidr}"
        )));
    }
    let route = NodeRoute {
        id: next_id(&mut tx, "mesh_node_routes").await?,
        node_id,
        cidr,
        priority: req.priority,
        weight: req.weight,
        enabled: req.enabled,
        created_ms: now_ms(),
    };
    sqlx::query(
        "INSERT INTO mesh_node_routes (id, node_id, cidr, priority, weight, enabled, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(i64::from(route.id))
    .bind(i64::from(node_id))
    .bind(&route.cidr)
    .bind(i64::from(route.priority))
    .bind(i64::from(route.weight))
    .bind(i64::from(route.enabled))
    .bind(route.created_ms)
    .execute(&mut *tx)
    .await?;
    audited(
        &mut *tx,
        "mesh.route.added",
        serde_json::json!({ "mesh_node_id": node_id, "route_id": route.id, "cidr": route.cidr }),
    )
    .await?;
    tx.commit().await?;
    Ok(route)
}

async fn get(db: &Db, node_id: u32, id: u32) -> Result<NodeRoute> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_node_routes WHERE id = $1 AND node_id = $2"
    ))
    .bind(i64::from(id))
    .bind(i64::from(node_id))
    .fetch_optional(db)
    .await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(format!(
            "route {id} of mesh node {node_id} not found"
        ))),
    }
}

/// Change a route's priority, weight or state.
pub async fn update(db: &Db, node_id: u32, id: u32, patch: RoutePatch) -> Result<NodeRoute> {
    let mut r = get(db, node_id, id).await?;
    if let Some(p) = patch.priority {
        r.priority = p;
    }
    if let Some(w) = patch.weight {
        check_weight(w)?;
        r.weight = w;
    }
    if let Some(e) = patch.enabled {
        r.enabled = e;
    }
    sqlx::query(
        "UPDATE mesh_node_routes SET priority = $1, weight = $2, enabled = $3 WHERE id = $4",
    )
    .bind(i64::from(r.priority))
    .bind(i64::from(r.weight))
    .bind(i64::from(r.enabled))
    .bind(i64::from(id))
    .execute(db)
    .await?;
    Ok(r)
}

/// Remove a route.
pub async fn delete(db: &Db, node_id: u32, id: u32) -> Result<()> {
    get(db, node_id, id).await?;
    sqlx::query("DELETE FROM mesh_node_routes WHERE id = $1")
        .bind(i64::from(id))
        .execute(db)
        .await?;
    Ok(())
}

/// One CIDR of the aggregated table: its gateways, best first.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregated {
    /// The subnet.
    pub cidr: String,
    /// Routes to it, by priority then weight (highest first).
    pub gateways: Vec<NodeRoute>,
}

/// Every route, grouped by CIDR (seed 003's `GET /routes`).
pub async fn aggregated(db: &Db) -> Result<Vec<Aggregated>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_node_routes ORDER BY id"
    ))
    .fetch_all(db)
    .await?;
    let mut by: BTreeMap<String, Vec<NodeRoute>> = BTreeMap::new();
    for r in rows.iter().map(from_row) {
        let r = r?;
        by.entry(r.cidr.clone()).or_default().push(r);
    }
    Ok(by
        .into_iter()
        .map(|(cidr, mut gateways)| {
            gateways.sort_by_key(|g| (g.priority, std::cmp::Reverse(g.weight), g.id));
            Aggregated { cidr, gateways }
        })
        .collect())
}
