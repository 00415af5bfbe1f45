//! Mesh networks: a name and an IPv4 subnet nodes get their virtual IPs
//! from.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::{audited, next_id, small, text};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// An IPv4 subnet in CIDR form, its host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length (8–30).
    pub prefix: u8,
}

impl Subnet {
    /// Parse `a.b.c.d/n`; refused naming `field`.
    pub fn parse(field: &str, text: &str) -> Result<Subnet> {
        let bad = |why: &str| {
            Error::invalid(
                field,
                format!(
                    "{field} must be an IPv4 subnet such as 10.100.0.0/16 ({why}), got {text:?}"
                ),
            )
        };
        let (a, p) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("no /prefix"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("prefix must be 8-30"));
        }
        let s = Subnet { addr, prefix };
        if u32::from(addr) & !s.mask() != 0 {
            return Err(bad(&format!(
                "host bits set; the network address is {}",
                Ipv4Addr::from(u32::from(addr) & s.mask())
            )));
        }
        Ok(s)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// Whether `ip` is in it.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Its host addresses (not the network or broadcast address), in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.addr);
        let size = 1u32 << (32 - u32::from(self.prefix));
        (base + 1..base + size - 1).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A network as stored and shown.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// Id.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Subnet, e.g. `10.100.0.0/16`.
    pub subnet: String,
    /// Free text.
    pub description: String,
    /// Created, ms.
    pub created_ms: i64,
    /// Changed, ms.
    pub updated_ms: i64,
}

/// Create request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNetwork {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// Update request; absent fields stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPatch {
    /// New name.
    pub name: Option<String>,
    /// New subnet (only while no node has an address in it).
    pub subnet: Option<String>,
    /// New description.
    pub description: Option<String>,
}

const COLUMNS: &str = "id, name, subnet, description, created_ms, updated_ms";

fn from_row(row: &AnyRow) -> Result<Network> {
    Ok(Network {
        id: small(row.try_get("id")?),
        name: row.try_get("name")?,
        subnet: row.try_get("subnet")?,
        description: row.try_get("description")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn description(v: &str) -> Result<String> {
    if v.len() > 1024 {
        return Err(Error::invalid(
            "description",
            "description is longer than 1024 bytes",
        ));
    }
    Ok(v.trim().to_owned())
}

async fn name_taken<'c, E>(exec: E, name: &str, except: u32) -> Result<bool>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    Ok(
        sqlx::query("SELECT id FROM mesh_networks WHERE name = $1 AND id <> $2")
            .bind(name)
            .bind(i64::from(except))
            .fetch_optional(exec)
            .await?
            .is_some(),
    )
}

/// Create a network.
pub async fn create(db: &Db, req: NewNetwork) -> Result<Network> {
    let name = text("name", &req.name, 64)?;
    let subnet = Subnet::parse("subnet", &req.subnet)?;
    let description = description(&req.description)?;
    let mut tx = db.begin().await?;
    if name_taken(&mut *tx, &name, 0).await? {
        return Err(Error::Conflict(format!("a network named {name:?} exists")));
    }
    let now = now_ms();
    let net = Network {
        id: next_id(&mut tx, "mesh_networks").await?,
        name,
        subnet: subnet.to_string(),
        description,
        created_ms: now,
        updated_ms: now,
    };
    sqlx::query(
        "INSERT INTO mesh_networks (id, name, subnet, description, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(i64::from(net.id))
    .bind(&net.name)
    .bind(&net.subnet)
    .bind(&net.description)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    audited(
        &mut *tx,
        "mesh.network.created",
        serde_json::json!({ "network_id": net.id, "name": net.name, "subnet": net.subnet }),
    )
    .await?;
    tx.commit().await?;
    Ok(net)
}

/// One network.
pub async fn get<'c, E>(exec: E, id: u32) -> Result<Network>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_networks WHERE id = $1"
    ))
    .bind(i64::from(id))
    .fetch_optional(exec)
    .await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(format!("mesh network {id} not found"))),
    }
}

/// The network named `name`.
pub async fn by_name(db: &Db, name: &str) -> Result<Option<Network>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_networks WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every network, by id.
pub async fn list(db: &Db) -> Result<Vec<Network>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM mesh_networks ORDER BY id"))
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Change a network. Its subnet changes only while none of its nodes has
/// an address (addresses are not renumbered behind running nodes' backs).
pub async fn update(db: &Db, id: u32, patch: NetworkPatch) -> Result<Network> {
    let mut tx = db.begin().await?;
    let mut net = get(&mut *tx, id).await?;
    if let Some(v) = patch.name {
        let v = text("name", &v, 64)?;
        if name_taken(&mut *tx, &v, id).await? {
            return Err(Error::Conflict(format!("a network named {v:?} exists")));
        }
        net.name = v;
    }
    if let Some(v) = patch.subnet {
        let s = Subnet::parse("subnet", &v)?.to_string();
        if s != net.subnet {
            let used: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM mesh_nodes WHERE network_id = $1 AND virtual_ip <> ''",
            )
            .bind(i64::from(id))
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if used > 0 {
                return Err(Error::invalid(
                    "subnet",
                    format!("subnet cannot change while {used} nodes have addresses in it"),
                ));
            }
            net.subnet = s;
        }
    }
    if let Some(v) = patch.description {
        net.description = description(&v)?;
    }
    net.updated_ms = now_ms();
    sqlx::query(
        "UPDATE mesh_networks SET name = $1, subnet = $2, description = $3, updated_ms = $4 \
         WHERE id = $5",
    )
    .bind(&net.name)
    .bind(&net.subnet)
    .bind(&net.description)
    .bind(net.updated_ms)
    .bind(i64::from(id))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(net)
}

/// Delete a network and (by cascade, and explicitly for SQLite files
/// without foreign keys) its nodes and their routes.
pub async fn delete(db: &Db, id: u32) -> Result<()> {
    let mut tx = db.begin().await?;
    let net = get(&mut *tx, id).await?;
    for sql in [
        "DELETE FROM mesh_node_routes WHERE node_id IN (SELECT id FROM mesh_nodes WHERE network_id = $1)",
        "DELETE FROM mesh_node_endpoints WHERE node_id IN (SELECT id FROM mesh_nodes WHERE network_id = $1)",
        "DELETE FROM mesh_node_server_connections WHERE node_id IN (SELECT id FROM mesh_nodes WHERE network_id = $1)",
        "DELETE FROM mesh_nodes WHERE network_id = $1",
        "DELETE FROM mesh_networks WHERE id = $1",
    ] {
        sqlx::query(sql).bind(i64::from(id)).execute(&mut *tx).await?;
    }
    audited(
        &mut *tx,
        "mesh.network.deleted",
        serde_json::json!({ "network_id": id, "name": net.name }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked_and_enumerated() {
        let s = Subnet::parse("subnet", "10.0.1.0/24").unwrap();
        assert_eq!(s.to_string(), "10.0.1.0/24");
        let hosts: Vec<_> = s.hosts().collect();
        assert_eq!(hosts.len(), 254);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(hosts[253], Ipv4Addr::new(10, 0, 1, 254));
        assert!(s.contains(Ipv4Addr::new(10, 0, 1, 9)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 2, 9)));
        assert_eq!(
            Subnet::parse("s", "10.0.0.0/30").unwrap().hosts().count(),
            2
        );
        for bad in [
            "10.0.1.0",
            "10.0.1.0/33",
            "10.0.1.0/31",
            "10.0.1.0/7",
            "10.0.1.1/24",
            "x/24",
            "10.0.1.0/x",
        ] {
            let e = Subnet::parse("subnet", bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid { field: Some(f), .. } if f == "subnet"),
                "{bad}: {e}"
            );
        }
        assert!(Subnet::parse("subnet", "10.0.1.1/24")
            .unwrap_err()
            .to_string()
            .contains("the network address is 10.0.1.0"));
    }
}
