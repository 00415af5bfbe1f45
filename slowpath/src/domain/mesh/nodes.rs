//! Mesh nodes: registered by their machine key (Ed25519) on first
//! contact, authorized by an operator (or at once when the setting
//! `require_authorization` is off), given the lowest free virtual IP of
//! their network's subnet when authorized, and rotating their node key
//! (X25519) with the machine key's signature.

use std::net::Ipv4Addr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use proto::mesh::control::{auth_signed_bytes, node_key_signed_bytes, AuthRequest, NodeKeyUpdate};
use proto::mesh::ErrorCode;
use ring::signature;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::channels::{self, Channel, Kind};
use super::networks::{self, Subnet};
use super::{audited, next_id, settings, small, text};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// How far a signed timestamp may be from the controller's clock, ms.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// A node as stored and shown.
#[derive(Debug, Clone, Serialize)]
pub struct MeshNode {
    /// Id (the DATA frames' node id).
    pub id: u32,
    /// Network.
    pub network_id: u32,
    /// Name (the host name it registered with, until renamed).
    pub name: String,
    /// Ed25519 machine key, base64.
    pub machine_key_pub: String,
    /// X25519 node key, base64.
    pub node_key_pub: String,
    /// When the node key last changed, ms.
    pub node_key_updated_ms: i64,
    /// Virtual IP ("" until authorized).
    pub virtual_ip: String,
    /// Host name.
    pub hostname: String,
    /// OS.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Client version.
    pub version: String,
    /// NAT type, as the node detected it.
    pub nat_type: String,
    /// Whether its control channel is open.
    pub online: bool,
    /// Last seen, ms.
    pub last_seen_ms: i64,
    /// Whether it may join the mesh.
    pub authorized: bool,
    /// Registered, ms.
    pub created_ms: i64,
}

const COLUMNS: &str = "id, network_id, name, machine_key_pub, node_key_pub, node_key_updated_ms, \
     virtual_ip, hostname, os, arch, version, nat_type, online, last_seen_ms, authorized, created_ms";

fn from_row(row: &AnyRow) -> Result<MeshNode> {
    Ok(MeshNode {
        id: small(row.try_get("id")?),
        network_id: small(row.try_get("network_id")?),
        name: row.try_get("name")?,
        machine_key_pub: row.try_get("machine_key_pub")?,
        node_key_pub: row.try_get("node_key_pub")?,
        node_key_updated_ms: row.try_get("node_key_updated_ms")?,
        virtual_ip: row.try_get("virtual_ip")?,
        hostname: row.try_get("hostname")?,
        os: row.try_get("os")?,
        arch: row.try_get("arch")?,
        version: row.try_get("version")?,
        nat_type: row.try_get("nat_type")?,
        online: row.try_get::<i64, _>("online")? != 0,
        last_seen_ms: row.try_get("last_seen_ms")?,
        authorized: row.try_get::<i64, _>("authorized")? != 0,
        created_ms: row.try_get("created_ms")?,
    })
}

/// A registration or key change refused with one of the seed's codes.
#[derive(Debug, thiserror::Error)]
#[error("{} ({}): {message}", code.code(), code.message())]
pub struct Refusal {
    /// The seed's code.
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Refusal {
        match e {
            Error::NotFound(m) => Refusal::new(ErrorCode::InvalidMessage, m),
            Error::Invalid { message, .. } => Refusal::new(ErrorCode::InvalidMessage, message),
            // Database and internal details stay in the log: the peer may
            // be anyone.
            e => {
                tracing::error!(error = %e, "mesh registration failed");
                Refusal::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

fn key32(code: ErrorCode, what: &str, b64: &str) -> Result<[u8; 32], Refusal> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| Refusal::new(code, format!("{what} is not 32 bytes of base64")))
}

fn check_signature(machine_key: &[u8; 32], msg: &[u8], sig_b64: &str) -> Result<(), Refusal> {
    let sig = B64
        .decode(sig_b64.trim())
        .map_err(|_| Refusal::new(ErrorCode::SignatureInvalid, "signature is not base64"))?;
    signature::UnparsedPublicKey::new(&signature::ED25519, machine_key)
        .verify(msg, &sig)
        .map_err(|_| {
            Refusal::new(
                ErrorCode::SignatureInvalid,
                "signature does not verify with the machine_key",
            )
        })
}

fn check_clock(timestamp: u64, now_ms: i64) -> Result<(), Refusal> {
    let now = u64::try_from(now_ms).unwrap_or(0);
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW_MS {
        return Err(Refusal::new(
            ErrorCode::SignatureInvalid,
            format!(
                "signed timestamp {timestamp} (unix ms) is more than {} s from the controller's clock ({now})",
                MAX_CLOCK_SKEW_MS / 1000
            ),
        ));
    }
    Ok(())
}

/// Nodes of one network that may wait for an operator at once: past it a
/// new machine key is refused (4003), so that anyone able to sign with
/// fresh keys cannot fill the table.
pub const MAX_PENDING_PER_NETWORK: i64 = 1024;

/// A signed message is taken once: its timestamp must be newer than the
/// last one taken from this machine key (a replayed AUTH_REQUEST or key
/// rotation is refused).
fn check_fresh(timestamp: u64, last_ms: i64) -> Result<(), Refusal> {
    if i64::try_from(timestamp).unwrap_or(i64::MAX) <= last_ms {
        return Err(Refusal::new(
            ErrorCode::SignatureInvalid,
            format!(
                "signed timestamp {timestamp} is not newer than the last one taken ({last_ms}): replayed?"
            ),
        ));
    }
    Ok(())
}

/// A machine key as sent: 32 bytes of base64 that decode to an Ed25519
/// point of large order (a small-order key lets anyone sign as it). The
/// key and its canonical text (what is stored and looked up).
fn machine_key(b64: &str) -> Result<([u8; 32], String), Refusal> {
    let key = key32(ErrorCode::InvalidMachineKey, "machine_key", b64)?;
    let point = curve25519_dalek::edwards::CompressedEdwardsY(key).decompress();
    if point.is_none_or(|p| p.is_small_order()) {
        return Err(Refusal::new(
            ErrorCode::InvalidMachineKey,
            "machine_key is not an Ed25519 public key of large order",
        ));
    }
    Ok((key, B64.encode(key)))
}

/// What a registration gives back.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The node as it now stands.
    pub node: MeshNode,
    /// Whether this was its first registration.
    pub new: bool,
}

/// A node's AUTH_REQUEST on the control channel: the machine key's
/// signature over its node key, timestamp and network is checked, then the
/// node is registered (first contact) or brought up to date (its node key,
/// host details). Not authorized → the node exists and waits (1006 is the
/// caller's to send while it is not).
pub async fn register(db: &Db, req: &AuthRequest, now: i64) -> Result<Registered, Refusal> {
    let (machine, machine_text) = machine_key(&req.machine_key)?;
    let _node_key = key32(ErrorCode::InvalidMessage, "node_key", &req.node_key)?;
    check_clock(req.timestamp, now)?;
    let signed = auth_signed_bytes(&req.machine_key, &req.node_key, req.timestamp, &req.network);
    check_signature(&machine, &signed, &req.signature)?;
    let network_name = if req.network.is_empty() {
        "default"
    } else {
        req.network.as_str()
    };
    let net = networks::by_name(db, network_name).await?.ok_or_else(|| {
        Refusal::new(
            ErrorCode::InvalidMessage,
            format!("network {network_name:?} does not exist"),
        )
    })?;
    let hostname = clip(&req.hostname, 255);
    let version = clip(&req.version, 50);
    let mut tx = db.begin().await.map_err(Error::from)?;
    let existing = sqlx::query(&format!(
        "SELECT {COLUMNS}, last_signed_ms FROM mesh_nodes WHERE machine_key_pub = $1"
    ))
    .bind(&machine_text)
    .fetch_optional(&mut *tx)
    .await
    .map_err(Error::from)?;
    let (id, new) = match existing {
        Some(row) => {
            let node = from_row(&row)?;
            let last: i64 = row.try_get("last_signed_ms").map_err(Error::from)?;
            check_fresh(req.timestamp, last)?;
            if node.network_id != net.id {
                return Err(Refusal::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "this machine_key is registered in network {}, not {network_name:?}",
                        node.network_id
                    ),
                ));
            }
            let key_changed = node.node_key_pub != req.node_key;
            sqlx::query(
                "UPDATE mesh_nodes SET node_key_pub = $1, node_key_updated_ms = $2, hostname = $3, \
                 version = $4, last_seen_ms = $5, updated_ms = $5, last_signed_ms = $6 WHERE id = $7",
            )
            .bind(&req.node_key)
            .bind(if key_changed { now } else { node.node_key_updated_ms })
            .bind(&hostname)
            .bind(&version)
            .bind(now)
            .bind(i64::try_from(req.timestamp).unwrap_or(i64::MAX))
            .bind(i64::from(node.id))
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
            (node.id, false)
        }
        None => {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM mesh_nodes WHERE network_id = $1 AND authorized = 0",
            )
            .bind(i64::from(net.id))
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::from)?;
            if pending >= MAX_PENDING_PER_NETWORK {
                return Err(Refusal::new(
                    ErrorCode::Overloaded,
                    format!(
                        "network {network_name:?} has {pending} nodes waiting for authorization \
                         (at most {MAX_PENDING_PER_NETWORK}); an operator must authorize or delete some first"
                    ),
                ));
            }
            let id = next_id(&mut tx, "mesh_nodes").await?;
            let name = if hostname.is_empty() {
                format!("node-{id}")
            } else {
                hostname.clone()
            };
            sqlx::query(
                "INSERT INTO mesh_nodes (id, network_id, name, machine_key_pub, node_key_pub, \
                 node_key_updated_ms, virtual_ip, hostname, os, arch, version, nat_type, online, \
                 last_seen_ms, authorized, last_signed_ms, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, '', $7, '', '', $8, '', 0, $6, 0, $9, $6, $6)",
            )
            .bind(i64::from(id))
            .bind(i64::from(net.id))
            .bind(&name)
            .bind(&machine_text)
            .bind(&req.node_key)
            .bind(now)
            .bind(&hostname)
            .bind(&version)
            .bind(i64::try_from(req.timestamp).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
            audited(&mut *tx, "mesh.node.registered", serde_json::json!({ "mesh_node_id": id, "network_id": net.id, "hostname": hostname })).await?;
            (id, true)
        }
    };
    tx.commit().await.map_err(Error::from)?;
    if new && !settings::require_authorization(db).await? {
        // A full subnet leaves the node waiting, as if authorization were
        // required, rather than refusing the registration.
        match authorize(db, id).await {
            Ok(_) => {}
            Err(Error::Conflict(why)) => {
                tracing::warn!(node = id, %why, "mesh node left unauthorized")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let node = get(db, id).await?;
    Ok(Registered { node, new })
}

fn clip(s: &str, max: usize) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A node key rotation signed by the node's machine key; the key is
/// unchanged when the signature does not verify (1005).
pub async fn rotate_key(
    db: &Db,
    id: u32,
    upd: &NodeKeyUpdate,
    now: i64,
) -> Result<MeshNode, Refusal> {
    let node = get(db, id).await?;
    let (machine, _) = machine_key(&node.machine_key_pub)?;
    key32(ErrorCode::InvalidMessage, "node_key", &upd.node_key)?;
    check_clock(upd.timestamp, now)?;
    check_signature(
        &machine,
        &node_key_signed_bytes(id, &upd.node_key, upd.timestamp),
        &upd.signature,
    )?;
    // Taken only if newer than anything signed before: a compare and set,
    // so a replayed rotation (or the older of two racing ones) changes
    // nothing.
    let done = sqlx::query(
        "UPDATE mesh_nodes SET node_key_pub = $1, node_key_updated_ms = $2, updated_ms = $2, \
         last_signed_ms = $3 WHERE id = $4 AND last_signed_ms < $3",
    )
    .bind(&upd.node_key)
    .bind(now)
    .bind(i64::try_from(upd.timestamp).unwrap_or(i64::MAX))
    .bind(i64::from(id))
    .execute(db)
    .await
    .map_err(Error::from)?;
    if done.rows_affected() == 0 {
        check_fresh(upd.timestamp, i64::MAX)?;
    }
    Ok(get(db, id).await?)
}

/// At start: the control channels `control_plane` held died with it;
/// every node no live channel holds is offline. Nodes whose channels
/// another control plane on the same database holds stay online.
pub async fn reset_online(db: &Db, control_plane: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    channels::forget_own(&mut *tx, Kind::Node, control_plane).await?;
    sqlx::query(
        "UPDATE mesh_nodes SET online = 0 WHERE online <> 0 \
         AND id NOT IN (SELECT node_id FROM mesh_node_channels)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A node's control channel `ch` opened (online) or closed (offline, unless
/// a newer channel of the node holds it by now).
pub async fn set_online(db: &Db, id: u32, online: bool, ch: &Channel) -> Result<()> {
    let mut tx = db.begin().await?;
    let held = if online {
        channels::open(&mut *tx, Kind::Node, id, ch).await?;
        true
    } else {
        !channels::close(&mut *tx, Kind::Node, id, ch).await?
            && sqlx::query("SELECT 1 FROM mesh_node_channels WHERE node_id = $1")
                .bind(i64::from(id))
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
    };
    sqlx::query("UPDATE mesh_nodes SET online = $1, last_seen_ms = $2 WHERE id = $3")
        .bind(i64::from(held))
        .bind(now_ms())
        .bind(i64::from(id))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// One node.
pub async fn get(db: &Db, id: u32) -> Result<MeshNode> {
    fetch(db, id).await
}

async fn fetch<'c, E>(exec: E, id: u32) -> Result<MeshNode>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM mesh_nodes WHERE id = $1"))
        .bind(i64::from(id))
        .fetch_optional(exec)
        .await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(format!("mesh node {id} not found"))),
    }
}

/// Nodes, of one network or all, by id.
pub async fn list(db: &Db, network: Option<u32>) -> Result<Vec<MeshNode>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM mesh_nodes WHERE ($1 = 0 OR network_id = $1) ORDER BY id"
    ))
    .bind(i64::from(network.unwrap_or(0)))
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Authorize a node, giving it the lowest free address of its network
/// when it has none.
pub async fn authorize(db: &Db, id: u32) -> Result<MeshNode> {
    let mut tx = db.begin().await?;
    let node = fetch(&mut *tx, id).await?;
    let mut ip = node.virtual_ip.clone();
    if ip.is_empty() {
        let net = networks::get(&mut *tx, node.network_id).await?;
        let subnet = Subnet::parse("subnet", &net.subnet)?;
        let used: Vec<String> = sqlx::query_scalar(
            "SELECT virtual_ip FROM mesh_nodes WHERE network_id = $1 AND virtual_ip <> ''",
        )
        .bind(i64::from(node.network_id))
        .fetch_all(&mut *tx)
        .await?;
        let used: std::collections::HashSet<Ipv4Addr> =
            used.iter().filter_map(|s| s.parse().ok()).collect();
        ip = subnet
            .hosts()
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "network {} ({}) has no free address",
                    net.name, net.subnet
                ))
            })?
            .to_string();
    }
    sqlx::query(
        "UPDATE mesh_nodes SET authorized = 1, virtual_ip = $1, updated_ms = $2 WHERE id = $3",
    )
    .bind(&ip)
    .bind(now_ms())
    .bind(i64::from(id))
    .execute(&mut *tx)
    .await?;
    audited(
        &mut *tx,
        "mesh.node.authorized",
        serde_json::json!({ "mesh_node_id": id, "virtual_ip": ip }),
    )
    .await?;
    tx.commit().await?;
    get(db, id).await
}

/// Take a node's authorization away (it keeps its address for when it is
/// authorized again).
pub async fn deauthorize(db: &Db, id: u32) -> Result<MeshNode> {
    let mut tx = db.begin().await?;
    fetch(&mut *tx, id).await?;
    sqlx::query("UPDATE mesh_nodes SET authorized = 0, updated_ms = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(i64::from(id))
        .execute(&mut *tx)
        .await?;
    audited(
        &mut *tx,
        "mesh.node.deauthorized",
        serde_json::json!({ "mesh_node_id": id }),
    )
    .await?;
    tx.commit().await?;
    get(db, id).await
}

/// Rename request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// New name.
    pub name: String,
}

/// Rename a node.
pub async fn rename(db: &Db, id: u32, req: Rename) -> Result<MeshNode> {
    let name = text("name", &req.name, 255)?;
    let done = sqlx::query("UPDATE mesh_nodes SET name = $1, updated_ms = $2 WHERE id = $3")
        .bind(&name)
        .bind(now_ms())
        .bind(i64::from(id))
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("mesh node {id} not found")));
    }
    get(db, id).await
}

/// Delete a node and its routes.
pub async fn delete(db: &Db, id: u32) -> Result<()> {
    let mut tx = db.begin().await?;
    fetch(&mut *tx, id).await?;
    for sql in [
        "DELETE FROM mesh_node_routes WHERE node_id = $1",
        "DELETE FROM mesh_node_endpoints WHERE node_id = $1",
        "DELETE FROM mesh_node_server_connections WHERE node_id = $1",
        "DELETE FROM mesh_nodes WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(i64::from(id))
            .execute(&mut *tx)
            .await?;
    }
    audited(
        &mut *tx,
        "mesh.node.deleted",
        serde_json::json!({ "mesh_node_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
