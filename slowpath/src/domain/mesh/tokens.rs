//! Seed 003's tokens as the controller issues them (auth, relay, server;
//! lifetimes from the settings), and the jti blacklist that revokes them:
//! entries stay until the token they name would have expired.

use proto::mesh::token::{self, AuthClaims, Claims, RelayClaims, ServerClaims, Signer};
use sqlx::Row as _;

use super::nodes::MeshNode;
use super::settings;
use crate::clock::now_ms;
use crate::credentials::{random_hex, sha256_hex};
use crate::error::Result;
use crate::store::db::Db;

/// The server token's lifetime (the seed's one year).
pub const SERVER_TOKEN_TTL_S: u64 = 365 * 86_400;

/// A token with what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The compact JWT.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

fn issued(claims: Claims, signer: &Signer<'_>) -> Issued {
    Issued {
        token: token::sign(&claims, signer),
        claims,
    }
}

fn now_s(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1000).unwrap_or(0)
}

/// Remember a node's token so that revoking the node revokes it; drop
/// the entries of expired tokens on the way.
async fn remember(db: &Db, node_id: u32, t: Issued) -> Result<Issued> {
    let now = now_ms();
    sqlx::query("DELETE FROM mesh_issued_tokens WHERE expires_ms <= $1")
        .bind(now)
        .execute(db)
        .await?;
    sqlx::query("INSERT INTO mesh_issued_tokens (jti, node_id, expires_ms) VALUES ($1, $2, $3)")
        .bind(t.claims.jti())
        .bind(i64::from(node_id))
        .bind(i64::try_from(t.claims.exp().saturating_mul(1000)).unwrap_or(i64::MAX))
        .execute(db)
        .await?;
    Ok(t)
}

/// Blacklist every live token of `node_id` (it was deauthorized or
/// deleted); returns how many.
pub async fn revoke_node(db: &Db, node_id: u32, reason: &str) -> Result<usize> {
    let rows = sqlx::query(
        "SELECT jti, expires_ms FROM mesh_issued_tokens WHERE node_id = $1 AND expires_ms > $2",
    )
    .bind(i64::from(node_id))
    .bind(now_ms())
    .fetch_all(db)
    .await?;
    for r in &rows {
        let jti: String = r.try_get("jti")?;
        let exp: i64 = r.try_get("expires_ms")?;
        revoke(
            db,
            &jti,
            node_id,
            reason,
            u64::try_from(exp / 1000).unwrap_or(0),
        )
        .await?;
    }
    sqlx::query("DELETE FROM mesh_issued_tokens WHERE node_id = $1")
        .bind(i64::from(node_id))
        .execute(db)
        .await?;
    Ok(rows.len())
}

/// A node's auth token (control channel).
pub async fn auth(db: &Db, signer: &Signer<'_>, node: &MeshNode, now_ms: i64) -> Result<Issued> {
    let iat = now_s(now_ms);
    let ttl = settings::hours_s(db, "auth_token_expire_hours", 24.0).await?;
    let t = issued(
        Claims::Auth(AuthClaims {
            node_id: node.id,
            machine_key_hash: format!("sha256:{}", sha256_hex(&node.machine_key_pub)),
            network_id: node.network_id,
            virtual_ip: node.virtual_ip.clone(),
            iat,
            exp: iat + ttl,
            jti: random_hex(12),
        }),
        signer,
    );
    remember(db, node.id, t).await
}

/// A node's relay token for `relays` (data channels).
pub async fn relay(
    db: &Db,
    signer: &Signer<'_>,
    node: &MeshNode,
    relays: Vec<u32>,
    now_ms: i64,
) -> Result<Issued> {
    let iat = now_s(now_ms);
    let ttl = settings::hours_s(db, "relay_token_expire_hours", 1.5).await?;
    let t = issued(
        Claims::Relay(RelayClaims {
            node_id: node.id,
            network_id: node.network_id,
            allowed_relays: relays,
            iat,
            exp: iat + ttl,
            jti: random_hex(12),
        }),
        signer,
    );
    remember(db, node.id, t).await
}

/// A server's token.
pub fn server(
    signer: &Signer<'_>,
    id: u32,
    name: &str,
    capabilities: Vec<String>,
    region: &str,
    now_ms: i64,
) -> Issued {
    let iat = now_s(now_ms);
    issued(
        Claims::Server(ServerClaims {
            server_id: id,
            server_name: name.to_owned(),
            capabilities,
            region: region.to_owned(),
            iat,
            exp: iat + SERVER_TOKEN_TTL_S,
            jti: random_hex(12),
        }),
        signer,
    )
}

/// Blacklist `jti` (of a token of `node_id` expiring at `exp_s`).
pub async fn revoke<'c, E>(db: E, jti: &str, node_id: u32, reason: &str, exp_s: u64) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO mesh_token_blacklist (jti, node_id, reason, expires_ms, created_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(i64::from(node_id))
    .bind(reason)
    .bind(i64::try_from(exp_s.saturating_mul(1000)).unwrap_or(i64::MAX))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// Whether `jti` is on the blacklist.
pub async fn is_revoked(db: &Db, jti: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT jti FROM mesh_token_blacklist WHERE jti = $1")
            .bind(jti)
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

/// The live blacklist: (jti, expiry in unix seconds), expired entries
/// dropped first.
pub async fn blacklist(db: &Db) -> Result<Vec<(String, u64)>> {
    let now = now_ms();
    sqlx::query("DELETE FROM mesh_token_blacklist WHERE expires_ms <= $1")
        .bind(now)
        .execute(db)
        .await?;
    let rows = sqlx::query("SELECT jti, expires_ms FROM mesh_token_blacklist ORDER BY jti")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|r| {
            let exp: i64 = r.try_get("expires_ms")?;
            Ok((r.try_get("jti")?, u64::try_from(exp / 1000).unwrap_or(0)))
        })
        .collect()
}
