//! Relay and STUN servers (seed 003's `servers` table): what nodes are
//! told to connect to, each with a server token (one year, Ed25519-signed
//! like every mesh token) that it presents on `/ws/server`. Only the live
//! token's id is stored; regenerating a token blacklists the old one, so
//! a server holding it is cut off.

use std::net::IpAddr;

use proto::mesh::control::Relay;
use proto::mesh::token::{Claims, ServerClaims, Signer, TokenError, Trust};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::channels::{self, Channel, Kind};
use super::{audited, next_id, small, text, tokens};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// The capabilities a server may have.
pub const CAPABILITIES: [&str; 2] = ["relay", "stun"];

/// A server as stored and shown (its token is shown once, when made).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Server {
    /// Id (DATA frames and relay tokens name relays by it).
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// `builtin` (the relay in this process) or `external`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where nodes connect: `wss://host:port/ws/data` ("" for STUN only).
    pub url: String,
    /// Region label.
    pub region: String,
    /// `relay`, `stun`.
    pub capabilities: Vec<String>,
    /// STUN's public address ("" without STUN).
    pub stun_ip: String,
    /// STUN's second address, for NAT type tests ("" if none).
    pub stun_ip2: String,
    /// STUN's UDP port.
    pub stun_port: u16,
    /// Whether nodes are sent to it and it may register.
    pub enabled: bool,
    /// Its last message on `/ws/server`, unix ms (0: never).
    pub last_heartbeat_ms: i64,
    /// Created, unix ms.
    pub created_ms: i64,
}

impl Server {
    /// Whether it relays.
    pub fn relays(&self) -> bool {
        self.capabilities.iter().any(|c| c == "relay")
    }
}

/// Create request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    /// Name.
    pub name: String,
    /// `builtin` or `external` (default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Relay URL (required with `relay`).
    #[serde(default)]
    pub url: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Default `["relay"]`.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Required with `stun`.
    #[serde(default)]
    pub stun_ip: String,
    /// Optional second STUN address.
    #[serde(default)]
    pub stun_ip2: String,
    /// Default 3478.
    #[serde(default)]
    pub stun_port: Option<u16>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Update request; absent fields stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    /// New name.
    pub name: Option<String>,
    /// New relay URL.
    pub url: Option<String>,
    /// New region.
    pub region: Option<String>,
    /// New capabilities.
    pub capabilities: Option<Vec<String>>,
    /// New STUN address.
    pub stun_ip: Option<String>,
    /// New second STUN address.
    pub stun_ip2: Option<String>,
    /// New STUN port.
    pub stun_port: Option<u16>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// A server with its new token (create, regenerate).
#[derive(Debug, Clone, Serialize)]
pub struct WithToken {
    /// The server.
    pub server: Server,
    /// Its server token: give it to the server's configuration.
    pub token: String,
}

const COLUMNS: &str = "id, name, kind, url, region, capabilities, stun_ip, stun_ip2, \
    stun_port, enabled, token_jti, last_heartbeat_ms, created_ms";

fn from_row(row: &AnyRow) -> Result<Server> {
    let caps: String = row.try_get("capabilities")?;
    let port: i64 = row.try_get("stun_port")?;
    let enabled: i64 = row.try_get("enabled")?;
    Ok(Server {
        id: small(row.try_get("id")?),
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        url: row.try_get("url")?,
        region: row.try_get("region")?,
        capabilities: serde_json::from_str(&caps).unwrap_or_default(),
        stun_ip: row.try_get("stun_ip")?,
        stun_ip2: row.try_get("stun_ip2")?,
        stun_port: u16::try_from(port).unwrap_or(3478),
        enabled: enabled != 0,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn kind(v: &str) -> Result<String> {
    match v.trim() {
        "builtin" | "external" => Ok(v.trim().to_owned()),
        other => Err(Error::invalid(
            "type",
            format!("type must be builtin or external, got {other:?}"),
        )),
    }
}

fn capabilities(v: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in v {
        let c = c.trim();
        if !CAPABILITIES.contains(&c) {
            return Err(Error::invalid(
                "capabilities",
                format!("capabilities may hold relay and stun, got {c:?}"),
            ));
        }
        if !out.iter().any(|o| o == c) {
            out.push(c.to_owned());
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "capabilities",
            "capabilities must name relay, stun or both",
        ));
    }
    out.sort();
    Ok(out)
}

/// A relay URL: `ws://` or `wss://`, a host, at most 255 bytes.
fn url(v: &str) -> Result<String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    let bad = |why: &str| {
        Error::invalid(
            "url",
            format!("url must be a ws:// or wss:// URL such as wss://relay.example.com/ws/data ({why}), got {v:?}"),
        )
    };
    if v.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    let rest = v
        .strip_prefix("wss://")
        .or_else(|| v.strip_prefix("ws://"))
        .ok_or_else(|| bad("no ws:// or wss://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("no host"));
    }
    Ok(v.to_owned())
}

fn ip(field: &str, v: &str) -> Result<String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(String::new());
    }
    v.parse::<IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| Error::invalid(field, format!("{field} must be an IP address, got {v:?}")))
}

/// What every server must satisfy together: a relay has a URL, a STUN
/// server an address and a port.
fn consistent(s: &Server) -> Result<()> {
    if s.relays() && s.url.is_empty() {
        return Err(Error::invalid("url", "a relay needs a url"));
    }
    if s.capabilities.iter().any(|c| c == "stun") {
        if s.stun_ip.is_empty() {
            return Err(Error::invalid("stun_ip", "a STUN server needs stun_ip"));
        }
        if s.stun_port == 0 {
            return Err(Error::invalid("stun_port", "stun_port must not be 0"));
        }
    }
    Ok(())
}

async fn name_taken<'c, E>(exec: E, name: &str, except: u32) -> Result<bool>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    Ok(
        sqlx::query("SELECT id FROM mesh_servers WHERE name = $1 AND id <> $2")
            .bind(name)
            .bind(i64::from(except))
            .fetch_optional(exec)
            .await?
            .is_some(),
    )
}

/// Add a server and give it a token.
pub async fn create(db: &Db, signer: &Signer<'_>, req: NewServer) -> Result<WithToken> {
    let now = now_ms();
    let mut s = Server {
        id: 0,
        name: text("name", &req.name, 64)?,
        kind: kind(req.kind.as_deref().unwrap_or("external"))?,
        url: url(&req.url)?,
        region: req.region.trim().to_owned(),
        capabilities: capabilities(&req.capabilities.unwrap_or_else(|| vec!["relay".into()]))?,
        stun_ip: ip("stun_ip", &req.stun_ip)?,
        stun_ip2: ip("stun_ip2", &req.stun_ip2)?,
        stun_port: req.stun_port.unwrap_or(3478),
        enabled: req.enabled.unwrap_or(true),
        last_heartbeat_ms: 0,
        created_ms: now,
    };
    if s.region.len() > 64 {
        return Err(Error::invalid("region", "region is longer than 64 bytes"));
    }
    consistent(&s)?;
    let mut tx = db.begin().await?;
    if name_taken(&mut *tx, &s.name, 0).await? {
        return Err(Error::Conflict(format!(
            "a server named {:?} exists",
            s.name
        )));
    }
    s.id = next_id(&mut tx, "mesh_servers").await?;
    let t = tokens::server(
        signer,
        s.id,
        &s.name,
        s.capabilities.clone(),
        &s.region,
        now,
    );
    sqlx::query(&format!(
        "INSERT INTO mesh_servers ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(i64::from(s.id))
    .bind(&s.name)
    .bind(&s.kind)
    .bind(&s.url)
    .bind(&s.region)
    .bind(serde_json::to_string(&s.capabilities).unwrap_or_default())
    .bind(&s.stun_ip)
    .bind(&s.stun_ip2)
    .bind(i64::from(s.stun_port))
    .bind(i64::from(s.enabled))
    .bind(t.claims.jti())
    .bind(0i64)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    audited(
        &mut *tx,
        "mesh.server.created",
        serde_json::json!({ "server_id": s.id, "name": s.name, "url": s.url }),
    )
    .await?;
    tx.commit().await?;
    Ok(WithToken {
        server: s,
        token: t.token,
    })
}

/// One server.
pub async fn get<'c, E>(exec: E, id: u32) -> Result<Server>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM mesh_servers WHERE id = $1"))
        .bind(i64::from(id))
        .fetch_optional(exec)
        .await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(format!("mesh server {id} not found"))),
    }
}

/// Every server, by id.
pub async fn list(db: &Db) -> Result<Vec<Server>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM mesh_servers ORDER BY id"))
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The enabled relays, as nodes are told of them.
pub async fn relays(db: &Db) -> Result<Vec<Relay>> {
    Ok(list(db)
        .await?
        .into_iter()
        .filter(|s| s.enabled && s.relays())
        .map(|s| Relay {
            server_id: s.id,
            name: s.name,
            url: s.url,
            region: s.region,
        })
        .collect())
}

/// Change a server. Its token keeps working (its claims name the server
/// by id; name, region and capabilities in it are informative).
pub async fn update(db: &Db, id: u32, patch: ServerPatch) -> Result<Server> {
    let mut tx = db.begin().await?;
    let mut s = get(&mut *tx, id).await?;
    if let Some(v) = patch.name {
        let v = text("name", &v, 64)?;
        if name_taken(&mut *tx, &v, id).await? {
            return Err(Error::Conflict(format!("a server named {v:?} exists")));
        }
        s.name = v;
    }
    if let Some(v) = patch.url {
        s.url = url(&v)?;
    }
    if let Some(v) = patch.region {
        if v.trim().len() > 64 {
            return Err(Error::invalid("region", "region is longer than 64 bytes"));
        }
        s.region = v.trim().to_owned();
    }
    if let Some(v) = patch.capabilities {
        s.capabilities = capabilities(&v)?;
    }
    if let Some(v) = patch.stun_ip {
        s.stun_ip = ip("stun_ip", &v)?;
    }
    if let Some(v) = patch.stun_ip2 {
        s.stun_ip2 = ip("stun_ip2", &v)?;
    }
    if let Some(v) = patch.stun_port {
        s.stun_port = v;
    }
    if let Some(v) = patch.enabled {
        s.enabled = v;
    }
    consistent(&s)?;
    sqlx::query(
        "UPDATE mesh_servers SET name = $1, url = $2, region = $3, capabilities = $4, \
         stun_ip = $5, stun_ip2 = $6, stun_port = $7, enabled = $8 WHERE id = $9",
    )
    .bind(&s.name)
    .bind(&s.url)
    .bind(&s.region)
    .bind(serde_json::to_string(&s.capabilities).unwrap_or_default())
    .bind(&s.stun_ip)
    .bind(&s.stun_ip2)
    .bind(i64::from(s.stun_port))
    .bind(i64::from(s.enabled))
    .bind(i64::from(id))
    .execute(&mut *tx)
    .await?;
    if !s.enabled {
        // A disabled relay holds no nodes as far as the others know.
        sqlx::query("DELETE FROM mesh_node_server_connections WHERE server_id = $1")
            .bind(i64::from(id))
            .execute(&mut *tx)
            .await?;
    }
    audited(
        &mut *tx,
        "mesh.server.updated",
        serde_json::json!({ "server_id": id, "name": s.name, "enabled": s.enabled }),
    )
    .await?;
    tx.commit().await?;
    Ok(s)
}

/// The live token's id of server `id`.
async fn live_jti<'c, E>(exec: E, id: u32) -> Result<String>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let jti: Option<String> =
        sqlx::query_scalar("SELECT token_jti FROM mesh_servers WHERE id = $1")
            .bind(i64::from(id))
            .fetch_optional(exec)
            .await?;
    jti.ok_or_else(|| Error::NotFound(format!("mesh server {id} not found")))
}

/// Give server `id` a new token; the old one is blacklisted.
pub async fn regenerate_token(db: &Db, signer: &Signer<'_>, id: u32) -> Result<WithToken> {
    let s = get(db, id).await?;
    let old = live_jti(db, id).await?;
    let t = tokens::server(
        signer,
        s.id,
        &s.name,
        s.capabilities.clone(),
        &s.region,
        now_ms(),
    );
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE mesh_servers SET token_jti = $1 WHERE id = $2")
        .bind(t.claims.jti())
        .bind(i64::from(id))
        .execute(&mut *tx)
        .await?;
    audited(
        &mut *tx,
        "mesh.server.token_regenerated",
        serde_json::json!({ "server_id": id, "name": s.name }),
    )
    .await?;
    // With the new token, in one transaction (see `delete`).
    revoke_server_token(&mut *tx, &old).await?;
    tx.commit().await?;
    Ok(WithToken {
        server: s,
        token: t.token,
    })
}

/// Blacklist a server token's id. Its expiry is not stored, so the entry
/// is kept for the longest a server token lives.
async fn revoke_server_token<'c, E>(db: E, jti: &str) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if jti.is_empty() {
        return Ok(());
    }
    let until = u64::try_from(now_ms() / 1000).unwrap_or(0) + tokens::SERVER_TOKEN_TTL_S;
    tokens::revoke(db, jti, 0, "server token replaced or server deleted", until).await
}

/// Delete a server; its token is blacklisted.
pub async fn delete(db: &Db, id: u32) -> Result<()> {
    let s = get(db, id).await?;
    let jti = live_jti(db, id).await?;
    let mut tx = db.begin().await?;
    for sql in [
        "DELETE FROM mesh_node_server_connections WHERE server_id = $1",
        "DELETE FROM mesh_servers WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(i64::from(id))
            .execute(&mut *tx)
            .await?;
    }
    audited(
        &mut *tx,
        "mesh.server.deleted",
        serde_json::json!({ "server_id": id, "name": s.name }),
    )
    .await?;
    // In the same transaction: a channel that looks at its server after
    // the commit finds its token revoked (1003), never a moment where the
    // server is gone and its token still good (1001).
    revoke_server_token(&mut *tx, &jti).await?;
    tx.commit().await.map_err(Into::into)
}

/// The relay in this control plane's own fastpath: the `builtin` server
/// (made on first start as `name`), its URL kept as `url`. Returns its id.
pub async fn ensure_builtin(db: &Db, signer: &Signer<'_>, name: &str, url: &str) -> Result<u32> {
    let existing = list(db).await?.into_iter().find(|s| s.kind == "builtin");
    match existing {
        Some(s) if s.url == url => Ok(s.id),
        Some(s) => {
            let patch = ServerPatch {
                url: Some(url.to_owned()),
                ..ServerPatch::default()
            };
            Ok(update(db, s.id, patch).await?.id)
        }
        None => {
            let req = NewServer {
                name: name.to_owned(),
                kind: Some("builtin".into()),
                url: url.to_owned(),
                ..NewServer::default()
            };
            Ok(create(db, signer, req).await?.server.id)
        }
    }
}

/// Why a server is refused on `/ws/server`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token itself.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A valid token of another kind, or of a server that is gone,
    /// disabled or holds a newer token.
    #[error("invalid token: {0}")]
    Server(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] Error),
}

impl Refusal {
    /// The seed's code for it.
    pub fn code(&self) -> proto::mesh::ErrorCode {
        match self {
            Refusal::Token(e) => e.code(),
            Refusal::Server(_) => proto::mesh::ErrorCode::InvalidToken,
            Refusal::Store(_) => proto::mesh::ErrorCode::Internal,
        }
    }
}

/// The server a server token names, if the token is valid now: signed by
/// a trusted key, not expired, not blacklisted, of type `server`, and the
/// live token of an enabled server.
pub async fn authenticate(
    db: &Db,
    token: &str,
    trust: &Trust<'_>,
    now_ms: i64,
) -> std::result::Result<(Server, ServerClaims), Refusal> {
    let claims = proto::mesh::token::verify(token, trust)?;
    // One row looked up, not the whole list: server channels call this at
    // every change of the mesh.
    let revoked = tokens::is_revoked(db, claims.jti()).await?;
    proto::mesh::token::check(&claims, u64::try_from(now_ms / 1000).unwrap_or(0), |_| {
        revoked
    })?;
    let Claims::Server(c) = claims else {
        return Err(Refusal::Server("not a server token".into()));
    };
    // The revocation was read before the server's row: a delete or a new
    // token committed in between (which revokes this token in the same
    // transaction) shows here as a missing row or another live token.
    // Read again, so that such a server hears that its token is revoked,
    // as it would have a moment later.
    let jti = c.jti.as_str();
    let revoked_since = |reason: String| async move {
        match tokens::is_revoked(db, jti).await {
            Ok(true) => Refusal::Token(TokenError::Revoked),
            Ok(false) => Refusal::Server(reason),
            Err(e) => e.into(),
        }
    };
    let s = match get(db, c.server_id).await {
        Ok(s) => s,
        Err(Error::NotFound(_)) => {
            return Err(revoked_since(format!("server {} is gone", c.server_id)).await)
        }
        Err(e) => return Err(e.into()),
    };
    if live_jti(db, s.id).await? != c.jti {
        return Err(revoked_since(format!("server {} holds a newer token", s.id)).await);
    }
    if !s.enabled {
        return Err(Refusal::Server(format!("server {} is disabled", s.id)));
    }
    Ok((s, c))
}

/// Server `id` was heard from.
pub async fn heartbeat(db: &Db, id: u32, now_ms: i64) -> Result<()> {
    sqlx::query("UPDATE mesh_servers SET last_heartbeat_ms = $1 WHERE id = $2")
        .bind(now_ms)
        .bind(i64::from(id))
        .execute(db)
        .await?;
    Ok(())
}

/// Which relay holds which node: every (node, server) pair.
pub async fn locations(db: &Db) -> Result<Vec<(u32, u32)>> {
    let rows = sqlx::query(
        "SELECT node_id, server_id FROM mesh_node_server_connections ORDER BY node_id, server_id",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((small(r.try_get("node_id")?), small(r.try_get("server_id")?))))
        .collect()
}

/// Server `id` reports nodes connected (`added`) and gone (`removed`);
/// with `full`, its earlier reports are replaced. Nodes that do not exist
/// are skipped (a node deleted while the report travelled).
pub async fn report_locations(
    db: &Db,
    id: u32,
    full: bool,
    added: &[u32],
    removed: &[u32],
    now_ms: i64,
) -> Result<()> {
    let mut tx = db.begin().await?;
    if full {
        sqlx::query("DELETE FROM mesh_node_server_connections WHERE server_id = $1")
            .bind(i64::from(id))
            .execute(&mut *tx)
            .await?;
    }
    for n in removed {
        sqlx::query(
            "DELETE FROM mesh_node_server_connections WHERE server_id = $1 AND node_id = $2",
        )
        .bind(i64::from(id))
        .bind(i64::from(*n))
        .execute(&mut *tx)
        .await?;
    }
    for n in added {
        sqlx::query(
            "INSERT INTO mesh_node_server_connections (node_id, server_id, connected_ms, last_ping_ms) \
             SELECT id, $1, $2, $2 FROM mesh_nodes WHERE id = $3 \
             ON CONFLICT (node_id, server_id) DO UPDATE SET last_ping_ms = $2",
        )
        .bind(i64::from(id))
        .bind(now_ms)
        .bind(i64::from(*n))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// At start: the relay channels `control_plane` held died with it, and
/// the locations of every relay no live channel holds are forgotten (they
/// report their nodes again when they register). Relays whose channels
/// another control plane on the same database holds keep theirs, and so
/// does this control plane's built-in relay `builtin` when its fastpath is
/// still serving (`adopted`); from now on it counts as held here.
pub async fn reset_locations(
    db: &Db,
    control_plane: &str,
    builtin: Option<u32>,
    adopted: bool,
) -> Result<()> {
    let mut tx = db.begin().await?;
    channels::forget_own(&mut *tx, Kind::Server, control_plane).await?;
    let held = builtin.map(|id| (id, Channel::new(control_plane)));
    if let (Some((id, ch)), true) = (&held, adopted) {
        channels::open(&mut *tx, Kind::Server, *id, ch).await?;
    }
    sqlx::query(
        "DELETE FROM mesh_node_server_connections \
         WHERE server_id NOT IN (SELECT server_id FROM mesh_server_channels)",
    )
    .execute(&mut *tx)
    .await?;
    if let (Some((id, ch)), false) = (&held, adopted) {
        channels::open(&mut *tx, Kind::Server, *id, ch).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// How long a relay-to-relay link token lives (it is re-made when half of
/// that is left, and a link is only checked when it is dialed).
pub const LINK_TOKEN_TTL_S: u64 = 24 * 3600;

/// Link tokens already made, by (from, to): the same token is handed out
/// until half its life is gone, so a table or a CONFIG holding it does not
/// change at every recompute.
#[derive(Default)]
pub struct LinkTokens {
    made: std::collections::HashMap<(u32, u32), (String, u64)>,
}

impl LinkTokens {
    /// The token relay `from` dials relay `to` with.
    pub fn get(&mut self, signer: &Signer<'_>, from: u32, to: u32, now_s: u64) -> String {
        if let Some((t, exp)) = self.made.get(&(from, to)) {
            if *exp > now_s + LINK_TOKEN_TTL_S / 2 {
                return t.clone();
            }
        }
        let exp = now_s + LINK_TOKEN_TTL_S;
        let claims = Claims::Link(proto::mesh::token::LinkClaims {
            from,
            to,
            iat: now_s,
            exp,
            jti: crate::credentials::random_hex(12),
        });
        let t = proto::mesh::token::sign(&claims, signer);
        self.made.insert((from, to), (t.clone(), exp));
        t
    }

    /// Links relay `me` dials: every enabled relay of `relays` with a
    /// higher id, with its token.
    pub fn for_relay(
        &mut self,
        signer: &Signer<'_>,
        me: u32,
        relays: &[Relay],
        now_s: u64,
    ) -> Vec<(u32, String)> {
        relays
            .iter()
            .filter(|r| r.server_id > me)
            .map(|r| (r.server_id, self.get(signer, me, r.server_id, now_s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_naming_the_field() {
        let field = |e: Error| match e {
            Error::Invalid { field: Some(f), .. } => f,
            other => panic!("{other}"),
        };
        assert_eq!(
            url("wss://r.example.com/ws/data").unwrap(),
            "wss://r.example.com/ws/data"
        );
        assert_eq!(url("").unwrap(), "");
        for bad in ["http://x/ws", "wss:///ws", "wss://a b/", "ws://"] {
            assert_eq!(field(url(bad).unwrap_err()), "url", "{bad}");
        }
        assert_eq!(
            capabilities(&["stun".into(), "relay".into(), "relay".into()]).unwrap(),
            vec!["relay", "stun"]
        );
        assert_eq!(field(capabilities(&[]).unwrap_err()), "capabilities");
        assert_eq!(
            field(capabilities(&["turn".into()]).unwrap_err()),
            "capabilities"
        );
        assert_eq!(field(ip("stun_ip", "1.2.3").unwrap_err()), "stun_ip");
        assert_eq!(ip("stun_ip", " 203.0.113.1 ").unwrap(), "203.0.113.1");
        assert_eq!(field(kind("edge").unwrap_err()), "type");
        let mut s = Server {
            id: 1,
            name: "r".into(),
            kind: "external".into(),
            url: String::new(),
            region: String::new(),
            capabilities: vec!["relay".into()],
            stun_ip: String::new(),
            stun_ip2: String::new(),
            stun_port: 3478,
            enabled: true,
            last_heartbeat_ms: 0,
            created_ms: 0,
        };
        assert_eq!(field(consistent(&s).unwrap_err()), "url");
        s.capabilities = vec!["stun".into()];
        assert_eq!(field(consistent(&s).unwrap_err()), "stun_ip");
        s.stun_ip = "203.0.113.1".into();
        consistent(&s).unwrap();
    }
}
