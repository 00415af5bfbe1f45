//! Ticket signing keys and ticket issue.
//!
//! The Ed25519 signing key lives in the database (`signing_keys`), so a
//! restarted slowpath, or a second one on the same PostgreSQL, keeps signing
//! with the key the data plane already trusts. Every active key's public half
//! goes into the policy table; the oldest active key signs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proto::ticket::{TicketClaims, ISSUER};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::credentials::random_hex;
use crate::db::Db;
use crate::error::{Error, Result};

/// Shortest ticket lifetime an invite may ask for, seconds.
pub const MIN_TICKET_TTL_S: u64 = 600;
/// Longest ticket lifetime an invite may ask for, seconds.
pub const MAX_TICKET_TTL_S: u64 = 3600;
/// Ticket lifetime when an invite does not say.
pub const DEFAULT_TICKET_TTL_S: u64 = 1800;

/// The key that signs new tickets.
pub struct TicketSigner {
    kid: String,
    key: Ed25519KeyPair,
}

/// A verification key: id and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id (`kid` in the ticket header).
    pub kid: String,
    /// Raw public key.
    pub public_key: [u8; 32],
}

/// A freshly signed ticket.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The compact JWT.
    pub token: String,
    /// What it says.
    pub claims: TicketClaims,
}

impl TicketSigner {
    /// Key id of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Raw public key of the signing key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// Signs a ticket for `invite_id` on `node_id`, valid `ttl_s` from `now_ms`.
    pub fn issue(&self, node_id: &str, invite_id: &str, ttl_s: u64, now_ms: i64) -> Issued {
        let iat = u64::try_from(now_ms / 1000).unwrap_or(0);
        let claims = TicketClaims {
            iss: ISSUER.to_owned(),
            node: node_id.to_owned(),
            inv: invite_id.to_owned(),
            iat,
            exp: iat.saturating_add(ttl_s),
            jti: random_hex(12),
        };
        Issued {
            token: proto::ticket::sign(&claims, &self.kid, &self.key),
            claims,
        }
    }
}

fn decode_key(kid: &str, pkcs8_b64: &str) -> Result<Ed25519KeyPair> {
    let pkcs8 = STANDARD
        .decode(pkcs8_b64)
        .map_err(|e| Error::Internal(format!("signing key {kid} is not base64: {e}")))?;
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| Error::Internal(format!("signing key {kid} is unusable: {e}")))
}

/// Loads the oldest active signing key, creating one if there is none.
pub async fn ensure_signer(db: &Db) -> Result<TicketSigner> {
    if let Some(signer) = load_signer(db).await? {
        return Ok(signer);
    }
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::Internal("cannot generate a signing key".into()))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| Error::Internal("generated signing key is unusable".into()))?;
    let kid = format!("k_{}", random_hex(6));
    sqlx::query(
        "INSERT INTO signing_keys (kid, pkcs8, public_key, created_ms, active) \
         VALUES ($1, $2, $3, $4, 1)",
    )
    .bind(&kid)
    .bind(STANDARD.encode(pkcs8.as_ref()))
    .bind(STANDARD.encode(key.public_key().as_ref()))
    .bind(now_ms())
    .execute(db)
    .await?;
    tracing::info!(kid = %kid, "created ticket signing key");
    // Two processes starting at once on one PostgreSQL may both insert; both
    // then sign with the oldest, and both keys verify.
    load_signer(db)
        .await?
        .ok_or_else(|| Error::Internal("signing key vanished after insert".into()))
}

async fn load_signer(db: &Db) -> Result<Option<TicketSigner>> {
    let row = sqlx::query(
        "SELECT kid, pkcs8 FROM signing_keys WHERE active = 1 ORDER BY created_ms, kid LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let kid: String = row.try_get("kid")?;
    let pkcs8: String = row.try_get("pkcs8")?;
    let key = decode_key(&kid, &pkcs8)?;
    Ok(Some(TicketSigner { kid, key }))
}

/// Every active verification key.
pub async fn public_keys<'c, E>(exec: E) -> Result<Vec<PublicKey>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows =
        sqlx::query("SELECT kid, public_key FROM signing_keys WHERE active = 1 ORDER BY kid")
            .fetch_all(exec)
            .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let kid: String = row.try_get("kid")?;
        let b64: String = row.try_get("public_key")?;
        let raw = STANDARD
            .decode(&b64)
            .map_err(|e| Error::Internal(format!("public key {kid} is not base64: {e}")))?;
        let public_key: [u8; 32] = raw
            .try_into()
            .map_err(|_| Error::Internal(format!("public key {kid} is not 32 bytes")))?;
        keys.push(PublicKey { kid, public_key });
    }
    Ok(keys)
}
