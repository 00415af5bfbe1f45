//! Relay nodes: registration by the admin (which hands out the node key
//! once), edits, heartbeats, and the public directory.
//!
//! A node's port pool and proxy types bound everything its invites may
//! grant; the policy publisher compiles the local node's row into the table.

use std::collections::BTreeMap;

use proto::policy::{PortSet, ProxyType, ProxyTypes};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::clock::{now_ms, rfc3339};
use crate::credentials;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// A node is "online" when its last heartbeat is at most this old.
pub const ONLINE_WINDOW_MS: i64 = 30_000;

/// Default port pool for a node registered without one.
pub const DEFAULT_PORT_POOL: &str = "10000-10999";

/// The proxy types the fastpath serves on `node`: tcp, udp, stcp, sudp and
/// xtcp always, http and https when the node has the vhost port for them
/// (`fastpath/src/frp/proxy.rs` refuses the others, tcpmux among them when
/// no port is set, as "not supported by this server"). What `slowpath up`
/// hands out for its own fastpath lists only these.
pub fn fastpath_proxy_types(node: &Node) -> ProxyTypes {
    let mut types = ProxyTypes::only(ProxyType::Tcp)
        .with(ProxyType::Udp)
        .with(ProxyType::Stcp)
        .with(ProxyType::Sudp)
        .with(ProxyType::Xtcp);
    if node.vhost_http_port != 0 {
        types = types.with(ProxyType::Http);
    }
    if node.vhost_https_port != 0 {
        types = types.with(ProxyType::Https);
    }
    types
}

/// A node as stored.
#[derive(Debug, Clone)]
pub struct Node {
    /// `node_<hex>`.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// Address frpc dials.
    pub server_addr: String,
    /// frp bind port frpc dials.
    pub server_port: u16,
    /// Region label.
    pub region: String,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Listed in the public directory and open to token-only logins.
    pub public: bool,
    /// frp `auth.token` of the node.
    pub frp_token: String,
    /// Ports proxies on this node may take.
    pub port_pool: PortSet,
    /// Proxy types this node allows.
    pub proxy_types: ProxyTypes,
    /// Cap on proxies per token-only session (0 = none).
    pub max_proxies_per_session: u32,
    /// frps's `subDomainHost` (empty = none): `subdomain`s are labels
    /// under it, and invites may be assigned one.
    pub sub_domain_host: String,
    /// frps's `vhostHTTPPort` (0 = http proxies are not served).
    pub vhost_http_port: u16,
    /// frps's `vhostHTTPSPort` (0 = https proxies are not served).
    pub vhost_https_port: u16,
    /// Last heartbeat, ms (0 = never).
    pub last_heartbeat_ms: i64,
    /// Last heartbeat body.
    pub heartbeat: serde_json::Value,
    /// Registration time, ms.
    pub created_ms: i64,
}

/// Registration request (admin).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    /// Name.
    pub name: String,
    /// Address frpc dials.
    pub server_addr: String,
    /// frp bind port.
    #[serde(default = "default_server_port")]
    pub server_port: u16,
    /// Region label.
    #[serde(default)]
    pub region: String,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Public or private.
    #[serde(default)]
    pub public: bool,
    /// Port pool text, e.g. `"2000-3000,4000"`.
    #[serde(default)]
    pub port_pool: Option<String>,
    /// Allowed proxy types; default tcp and udp.
    #[serde(default)]
    pub proxy_types: Option<Vec<String>>,
    /// Cap on proxies per token-only session (0 = none).
    #[serde(default)]
    pub max_proxies_per_session: u32,
    /// frp token; generated when absent.
    #[serde(default)]
    pub token: Option<String>,
    /// frps's `subDomainHost` (empty = none).
    #[serde(default)]
    pub sub_domain_host: String,
    /// frps's `vhostHTTPPort` (0 = none).
    #[serde(default)]
    pub vhost_http_port: u16,
    /// frps's `vhostHTTPSPort` (0 = none).
    #[serde(default)]
    pub vhost_https_port: u16,
}

fn default_server_port() -> u16 {
    7000
}

/// Partial update (admin); absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    /// New name.
    pub name: Option<String>,
    /// New dial address.
    pub server_addr: Option<String>,
    /// New frp bind port.
    pub server_port: Option<u16>,
    /// New region.
    pub region: Option<String>,
    /// New labels.
    pub tags: Option<Vec<String>>,
    /// Public or private.
    pub public: Option<bool>,
    /// New port pool.
    pub port_pool: Option<String>,
    /// New proxy types.
    pub proxy_types: Option<Vec<String>>,
    /// New per-session proxy cap.
    pub max_proxies_per_session: Option<u32>,
    /// New frp token.
    pub token: Option<String>,
    /// New `subDomainHost` ("" = none).
    pub sub_domain_host: Option<String>,
    /// New `vhostHTTPPort` (0 = none).
    pub vhost_http_port: Option<u16>,
    /// New `vhostHTTPSPort` (0 = none).
    pub vhost_https_port: Option<u16>,
}

/// Heartbeat body a node agent sends.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Component versions, e.g. `{"fastpath": "0.1.0"}`.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// CPU use, percent.
    #[serde(default)]
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    #[serde(default)]
    pub mem_bytes: u64,
    /// Inbound bandwidth, bits per second.
    #[serde(default)]
    pub bandwidth_in_bps: u64,
    /// Outbound bandwidth, bits per second.
    #[serde(default)]
    pub bandwidth_out_bps: u64,
    /// Open frpc sessions.
    #[serde(default)]
    pub connections: u64,
    /// Registered proxies.
    #[serde(default)]
    pub proxies: u64,
    /// Size of the file system under the node's policy directory, bytes.
    #[serde(default)]
    pub disk_total_bytes: u64,
    /// Space left on it, bytes.
    #[serde(default)]
    pub disk_free_bytes: u64,
    /// Event batches in the agent's spool not yet acknowledged.
    #[serde(default)]
    pub spool_batches: u64,
    /// Bytes the agent's spool takes on disk.
    #[serde(default)]
    pub spool_bytes: u64,
    /// Event records the agent's spool dropped for room since it started.
    #[serde(default)]
    pub spool_dropped_events: u64,
}

/// A node as the API shows it.
#[derive(Debug, Serialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Address frpc dials.
    pub server_addr: String,
    /// frp bind port.
    pub server_port: u16,
    /// Region.
    pub region: String,
    /// Labels.
    pub tags: Vec<String>,
    /// Public or private.
    pub public: bool,
    /// Port pool text.
    pub port_pool: String,
    /// Allowed proxy types.
    pub proxy_types: Vec<&'static str>,
    /// Per-session proxy cap (0 = none).
    pub max_proxies_per_session: u32,
    /// frps's `subDomainHost` ("" = none).
    pub sub_domain_host: String,
    /// frps's `vhostHTTPPort` (0 = none).
    pub vhost_http_port: u16,
    /// frps's `vhostHTTPSPort` (0 = none).
    pub vhost_https_port: u16,
    /// "online" or "offline".
    pub status: &'static str,
    /// Last heartbeat, ms (0 = never).
    pub last_heartbeat_ms: i64,
    /// Last heartbeat, RFC 3339, or null.
    pub last_heartbeat: Option<String>,
    /// frp token: public nodes publish it; admins always see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Last heartbeat body (admin views only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<serde_json::Value>,
    /// The node key, present only in the registration response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
}

impl Node {
    /// "online" when a heartbeat arrived within [`ONLINE_WINDOW_MS`].
    pub fn status(&self, now: i64) -> &'static str {
        if self.last_heartbeat_ms > 0 && now - self.last_heartbeat_ms <= ONLINE_WINDOW_MS {
            "online"
        } else {
            "offline"
        }
    }

    /// The API view; `admin` adds the token and the heartbeat body.
    pub fn info(&self, admin: bool) -> NodeInfo {
        let now = now_ms();
        NodeInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            server_addr: self.server_addr.clone(),
            server_port: self.server_port,
            region: self.region.clone(),
            tags: self.tags.clone(),
            public: self.public,
            port_pool: self.port_pool.to_string(),
            proxy_types: self.proxy_types.names(),
            max_proxies_per_session: self.max_proxies_per_session,
            sub_domain_host: self.sub_domain_host.clone(),
            vhost_http_port: self.vhost_http_port,
            vhost_https_port: self.vhost_https_port,
            status: self.status(now),
            last_heartbeat_ms: self.last_heartbeat_ms,
            last_heartbeat: (self.last_heartbeat_ms > 0).then(|| rfc3339(self.last_heartbeat_ms)),
            token: (admin || self.public).then(|| self.frp_token.clone()),
            heartbeat: admin.then(|| self.heartbeat.clone()),
            node_key: None,
        }
    }
}

const NODE_COLUMNS: &str =
    "id, name, server_addr, server_port, region, tags, is_public, frp_token, \
     port_pool, proxy_types, max_proxies_per_session, last_heartbeat_ms, heartbeat, created_ms, \
     sub_domain_host, vhost_http_port, vhost_https_port";

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored node {what} is unreadable: {e}"))
}

fn node_from_row(row: &AnyRow) -> Result<Node> {
    let tags: String = row.try_get("tags")?;
    let heartbeat: String = row.try_get("heartbeat")?;
    let port_pool: String = row.try_get("port_pool")?;
    let proxy_types: String = row.try_get("proxy_types")?;
    let server_port: i64 = row.try_get("server_port")?;
    let port = |name: &str| -> Result<u16> {
        u16::try_from(row.try_get::<i64, _>(name)?).map_err(|e| corrupt(name, e))
    };
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        server_addr: row.try_get("server_addr")?,
        server_port: u16::try_from(server_port).map_err(|e| corrupt("server_port", e))?,
        region: row.try_get("region")?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", e))?,
        public: row.try_get::<i64, _>("is_public")? != 0,
        frp_token: row.try_get("frp_token")?,
        port_pool: PortSet::parse(&port_pool).map_err(|e| corrupt("port_pool", e))?,
        proxy_types: ProxyTypes::parse(&proxy_types).map_err(|e| corrupt("proxy_types", e))?,
        max_proxies_per_session: u32::try_from(row.try_get::<i64, _>("max_proxies_per_session")?)
            .unwrap_or(0),
        sub_domain_host: row.try_get("sub_domain_host")?,
        vhost_http_port: port("vhost_http_port")?,
        vhost_https_port: port("vhost_https_port")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
        heartbeat: serde_json::from_str(&heartbeat).unwrap_or(serde_json::Value::Null),
        created_ms: row.try_get("created_ms")?,
    })
}

/// Parses a port pool field; empty or outside 1–65535 is refused naming `field`.
pub fn parse_port_pool(field: &str, text: &str) -> Result<PortSet> {
    let set = PortSet::parse(text).map_err(|e| Error::invalid(field, format!("{field}: {e}")))?;
    if set.is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    Ok(set)
}

/// Parses a proxy type list; unknown names are refused naming `field`.
pub fn parse_proxy_types(field: &str, names: &[String]) -> Result<ProxyTypes> {
    let types = ProxyTypes::parse_list(names)
        .map_err(|e| Error::invalid(field, format!("{field}: {e}")))?;
    if types == ProxyTypes::NONE {
        return Err(Error::invalid(
            field,
            format!("{field} must name at least one type"),
        ));
    }
    Ok(types)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::invalid(
            field,
            format!("{field} is longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// frp tokens are copied by people into frpc.toml files and written by the
/// slowpath into the fastpath's config; a control character there is a
/// paste accident at best, so it is refused with the field named. The
/// files are serialized as TOML (`frpc_config`), so whatever is accepted
/// here round-trips.
fn check_token(token: &str) -> Result<()> {
    check_text("token", token, 256)?;
    if token.chars().any(char::is_control) {
        return Err(Error::invalid(
            "token",
            "token must not contain control characters (newlines, tabs, U+0000-U+001F, U+007F-U+009F)",
        ));
    }
    if token.contains(['"', '\\']) {
        return Err(Error::invalid(
            "token",
            "token must not contain quotes or backslashes",
        ));
    }
    Ok(())
}

/// frps's `subDomainHost`: empty, or a host name (letters, digits, `-`,
/// dot-separated labels; no wildcard), stored in lower case.
pub fn parse_sub_domain_host(value: &str) -> Result<String> {
    let host = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let field = "sub_domain_host";
    if host.is_empty() {
        return Ok(host);
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(Error::invalid(
            field,
            format!("{field} must be a host name such as node.example.com, got {value:?}"),
        ));
    }
    Ok(host)
}

fn check_server_port(port: u16) -> Result<()> {
    if port == 0 {
        return Err(Error::invalid("server_port", "server_port must be 1-65535"));
    }
    Ok(())
}

/// Registers a node; returns it and its node key (shown only here).
pub async fn register(db: &Db, req: NewNode) -> Result<(Node, String)> {
    check_text("name", &req.name, 128)?;
    check_text("server_addr", &req.server_addr, 255)?;
    check_server_port(req.server_port)?;
    let port_pool = parse_port_pool(
        "port_pool",
        req.port_pool.as_deref().unwrap_or(DEFAULT_PORT_POOL),
    )?;
    let proxy_types = match &req.proxy_types {
        Some(names) => parse_proxy_types("proxy_types", names)?,
        None => ProxyTypes::parse("tcp,udp").map_err(Error::Internal)?,
    };
    let frp_token = match req.token {
        Some(t) => {
            check_token(&t)?;
            t
        }
        None => credentials::new_frp_token(),
    };
    let now = now_ms();
    let node = Node {
        id: credentials::new_node_id(),
        name: req.name.trim().to_owned(),
        server_addr: req.server_addr.trim().to_owned(),
        server_port: req.server_port,
        region: req.region,
        tags: req.tags,
        public: req.public,
        frp_token,
        port_pool,
        proxy_types,
        max_proxies_per_session: req.max_proxies_per_session,
        sub_domain_host: parse_sub_domain_host(&req.sub_domain_host)?,
        vhost_http_port: req.vhost_http_port,
        vhost_https_port: req.vhost_https_port,
        last_heartbeat_ms: 0,
        heartbeat: serde_json::json!({}),
        created_ms: now,
    };
    let node_key = credentials::new_node_key();
    sqlx::query(
        "INSERT INTO nodes (id, name, server_addr, server_port, region, tags, is_public, frp_token, \
         node_key_hash, port_pool, proxy_types, max_proxies_per_session, last_heartbeat_ms, \
         heartbeat, created_ms, updated_ms, sub_domain_host, vhost_http_port, vhost_https_port) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19)",
    )
    .bind(&node.id)
    .bind(&node.name)
    .bind(&node.server_addr)
    .bind(i64::from(node.server_port))
    .bind(&node.region)
    .bind(serde_json::to_string(&node.tags).unwrap_or_else(|_| "[]".into()))
    .bind(i64::from(node.public))
    .bind(&node.frp_token)
    .bind(credentials::sha256_hex(&node_key))
    .bind(node.port_pool.to_string())
    .bind(node.proxy_types.to_string())
    .bind(i64::from(node.max_proxies_per_session))
    .bind(0i64)
    .bind("{}")
    .bind(now)
    .bind(now)
    .bind(&node.sub_domain_host)
    .bind(i64::from(node.vhost_http_port))
    .bind(i64::from(node.vhost_https_port))
    .execute(db)
    .await?;
    tracing::info!(node_id = %node.id, name = %node.name, public = node.public, "node registered");
    Ok((node, node_key))
}

/// Looks a node up by id.
pub async fn get(db: &Db, id: &str) -> Result<Node> {
    fetch(db, id).await
}

/// The node `id`, read through `exec` (the pool, or the transaction that
/// goes on to change it).
async fn fetch<'c, E>(exec: E, id: &str) -> Result<Node>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
        .bind(id)
        .fetch_optional(exec)
        .await?;
    match row {
        Some(row) => node_from_row(&row),
        None => Err(Error::NotFound(format!("node {id} not found"))),
    }
}

/// The node a node key belongs to, if any.
pub async fn by_key(db: &Db, node_key: &str) -> Result<Option<Node>> {
    let row = sqlx::query(&format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE node_key_hash = $1"
    ))
    .bind(credentials::sha256_hex(node_key))
    .fetch_optional(db)
    .await?;
    row.as_ref().map(node_from_row).transpose()
}

/// All nodes, or only the public ones, oldest first.
pub async fn list(db: &Db, public_only: bool) -> Result<Vec<Node>> {
    let sql = if public_only {
        format!("SELECT {NODE_COLUMNS} FROM nodes WHERE is_public = 1 ORDER BY created_ms, id")
    } else {
        format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY created_ms, id")
    };
    let rows = sqlx::query(&sql).fetch_all(db).await?;
    rows.iter().map(node_from_row).collect()
}

/// Applies a patch. Narrowing the pool or types is allowed; invites keep
/// their scope and the data plane intersects both.
pub async fn update(db: &Db, id: &str, patch: NodePatch) -> Result<Node> {
    let mut tx = db.begin().await?;
    let mut node = fetch(&mut *tx, id).await?;
    if let Some(v) = patch.name {
        check_text("name", &v, 128)?;
        node.name = v.trim().to_owned();
    }
    if let Some(v) = patch.server_addr {
        check_text("server_addr", &v, 255)?;
        node.server_addr = v.trim().to_owned();
    }
    if let Some(v) = patch.server_port {
        check_server_port(v)?;
        node.server_port = v;
    }
    if let Some(v) = patch.region {
        node.region = v;
    }
    if let Some(v) = patch.tags {
        node.tags = v;
    }
    if let Some(v) = patch.public {
        node.public = v;
    }
    if let Some(v) = patch.port_pool {
        node.port_pool = parse_port_pool("port_pool", &v)?;
    }
    if let Some(v) = patch.proxy_types {
        node.proxy_types = parse_proxy_types("proxy_types", &v)?;
    }
    if let Some(v) = patch.max_proxies_per_session {
        node.max_proxies_per_session = v;
    }
    if let Some(v) = patch.token {
        check_token(&v)?;
        node.frp_token = v;
    }
    if let Some(v) = patch.sub_domain_host {
        node.sub_domain_host = parse_sub_domain_host(&v)?;
    }
    if let Some(v) = patch.vhost_http_port {
        node.vhost_http_port = v;
    }
    if let Some(v) = patch.vhost_https_port {
        node.vhost_https_port = v;
    }
    sqlx::query(
        "UPDATE nodes SET name = $1, server_addr = $2, server_port = $3, region = $4, tags = $5, \
         is_public = $6, port_pool = $7, proxy_types = $8, max_proxies_per_session = $9, \
         frp_token = $10, updated_ms = $11, sub_domain_host = $12, vhost_http_port = $13, \
         vhost_https_port = $14 WHERE id = $15",
    )
    .bind(&node.name)
    .bind(&node.server_addr)
    .bind(i64::from(node.server_port))
    .bind(&node.region)
    .bind(serde_json::to_string(&node.tags).unwrap_or_else(|_| "[]".into()))
    .bind(i64::from(node.public))
    .bind(node.port_pool.to_string())
    .bind(node.proxy_types.to_string())
    .bind(i64::from(node.max_proxies_per_session))
    .bind(&node.frp_token)
    .bind(now_ms())
    .bind(&node.sub_domain_host)
    .bind(i64::from(node.vhost_http_port))
    .bind(i64::from(node.vhost_https_port))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(node_id = %node.id, public = node.public, port_pool = %node.port_pool, "node updated");
    Ok(node)
}

/// Deletes a node and (by cascade, and explicitly for SQLite files opened
/// without foreign keys) its invites.
pub async fn delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM invites WHERE node_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM agent_spools WHERE node_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("node {id} not found")));
    }
    tx.commit().await?;
    tracing::info!(node_id = %id, "node deleted");
    Ok(())
}

/// Records a heartbeat.
pub async fn heartbeat(db: &Db, id: &str, body: &Heartbeat) -> Result<i64> {
    let now = now_ms();
    sqlx::query("UPDATE nodes SET last_heartbeat_ms = $1, heartbeat = $2 WHERE id = $3")
        .bind(now)
        .bind(serde_json::to_string(body).unwrap_or_else(|_| "{}".into()))
        .bind(id)
        .execute(db)
        .await?;
    Ok(now)
}

/// Where the secret of the frps hook tokens is kept (`meta`).
const FRPS_HOOK_SECRET: &str = "frps.hook_secret";

async fn frps_hook_key(db: &Db) -> Result<ring::hmac::Key> {
    let key = |s: String| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes());
    // Every hook call reads it; it is written once, and two control
    // planes making it together agree on the first one written.
    if let Some(secret) = crate::store::db::meta_get(db, FRPS_HOOK_SECRET).await? {
        return Ok(key(secret));
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(FRPS_HOOK_SECRET)
        .bind(crate::credentials::random_hex(32))
        .execute(db)
        .await?;
    let secret = crate::store::db::meta_get(db, FRPS_HOOK_SECRET)
        .await?
        .unwrap_or_default();
    Ok(key(secret))
}

/// The token a stock frps running as `node_id` puts in its hook paths:
/// `fh_` and an HMAC-SHA256 of the node id, in hex.
pub async fn frps_hook_token(db: &Db, node_id: &str) -> Result<String> {
    let key = frps_hook_key(db).await?;
    Ok(format!(
        "fh_{}",
        hex::encode(ring::hmac::sign(&key, node_id.as_bytes()).as_ref())
    ))
}

/// Whether `token` is `node_id`'s hook token (compared in constant time).
pub async fn frps_hook_token_ok(db: &Db, node_id: &str, token: &str) -> Result<bool> {
    let Some(tag) = token.strip_prefix("fh_").and_then(|h| hex::decode(h).ok()) else {
        return Ok(false);
    };
    let key = frps_hook_key(db).await?;
    Ok(ring::hmac::verify(&key, node_id.as_bytes(), &tag).is_ok())
}
