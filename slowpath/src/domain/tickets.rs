//! Ticket signing keys and ticket issue.
//!
//! The Ed25519 private key lives in a 0600 file in the data directory
//! (`signing.key`), never in the database: a database backup, a read-only
//! database role or a leaked dump cannot mint tickets. The database keeps
//! only the public halves (`signing_keys.public_key`; the `pkcs8` column is
//! emptied), and every active public key goes into the policy table, so
//! several control-plane replicas on one PostgreSQL each sign with the key
//! in their own data directory (copy the file to share one) and the data
//! plane verifies them all.
//!
//! A database from before this layout still holds its private key: the
//! first start moves the oldest active one into the file (if there is none
//! yet) and erases every private key from the database.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proto::ticket::{TicketClaims, ISSUER};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sqlx::Row as _;

use crate::clock::now_ms;
use crate::credentials::random_hex;
use crate::error::{Error, Result};
use crate::store::db::Db;

/// Shortest ticket lifetime an invite may ask for, seconds.
pub const MIN_TICKET_TTL_S: u64 = 600;
/// Longest ticket lifetime an invite may ask for, seconds.
pub const MAX_TICKET_TTL_S: u64 = 3600;
/// Ticket lifetime when an invite does not say.
pub const DEFAULT_TICKET_TTL_S: u64 = 1800;

/// Invites that expired before this instant can be named by no live ticket
/// (a ticket is issued while its invite is live and lives at most
/// [`MAX_TICKET_TTL_S`]): the policy table leaves them out.
pub fn invite_horizon_ms(now_ms: i64) -> i64 {
    now_ms - i64::try_from(MAX_TICKET_TTL_S * 1000).unwrap_or(0)
}

/// The key that signs new tickets.
#[derive(Clone)]
pub struct TicketSigner {
    kid: String,
    key: std::sync::Arc<Ed25519KeyPair>,
    /// Seed 003's HS256 shared secret, when the mesh is configured with
    /// one: mesh tokens are then signed with it (tickets never are).
    mesh_secret: Option<std::sync::Arc<str>>,
}

/// The shortest HS256 secret accepted, bytes.
pub const MIN_MESH_SECRET: usize = 32;

/// Seed 003's `jwt.secret` read from `path` (trimmed), at least
/// [`MIN_MESH_SECRET`] bytes.
pub fn read_mesh_secret(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    let secret = text.trim().to_owned();
    if secret.len() < MIN_MESH_SECRET {
        return Err(Error::Internal(format!(
            "{}: the mesh JWT secret must be at least {MIN_MESH_SECRET} bytes",
            path.display()
        )));
    }
    Ok(secret)
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

impl TicketSigner {
    /// The signer of seed 003's mesh tokens: this same key, so relays
    /// verify with the public keys they already get; or the HS256 secret
    /// when one is configured.
    pub fn mesh_signer(&self) -> proto::mesh::token::Signer<'_> {
        match &self.mesh_secret {
            Some(s) => proto::mesh::token::Signer::Hs256(s.as_bytes()),
            None => proto::mesh::token::Signer::EdDsa {
                kid: &self.kid,
                key: &self.key,
            },
        }
    }

    /// Sign mesh tokens with seed 003's HS256 shared `secret` from now on.
    pub fn with_mesh_secret(mut self, secret: String) -> TicketSigner {
        self.mesh_secret = Some(secret.into());
        self
    }

    /// The HS256 secret, when configured.
    pub fn mesh_secret(&self) -> Option<&str> {
        self.mesh_secret.as_deref()
    }
}

fn decode_key(kid: &str, pkcs8_b64: &str) -> Result<Ed25519KeyPair> {
    let pkcs8 = STANDARD
        .decode(pkcs8_b64.trim())
        .map_err(|e| Error::Internal(format!("signing key {kid} is not base64: {e}")))?;
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| Error::Internal(format!("signing key {kid} is unusable: {e}")))
}

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "signing.key";

/// The signing key of this control plane: read from `data_dir/signing.key`
/// (moved there from a database of the old layout, or generated), with its
/// public half registered in the database; private keys are erased from
/// the database.
pub async fn ensure_signer(db: &Db, data_dir: &std::path::Path) -> Result<TicketSigner> {
    let path = data_dir.join(KEY_FILE);
    if crate::store::private_files::read(&path)?.is_none() {
        let text = match legacy_private_key(db).await? {
            Some((kid, pkcs8)) => {
                tracing::info!(kid = %kid, file = %path.display(), "moving the ticket signing key out of the database");
                format!("{kid} {pkcs8}\n")
            }
            None => {
                let rng = SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| Error::Internal("cannot generate a signing key".into()))?;
                let kid = format!("k_{}", random_hex(6));
                tracing::info!(kid = %kid, file = %path.display(), "created ticket signing key");
                format!("{kid} {}\n", STANDARD.encode(pkcs8.as_ref()))
            }
        };
        // Two processes sharing a data directory may race here: the first
        // file wins and both read it.
        crate::store::private_files::create_new(&path, text.as_bytes())?;
    }
    let text = crate::store::private_files::read(&path)?
        .ok_or_else(|| Error::Internal(format!("{} vanished", path.display())))?;
    let (kid, pkcs8) = text.trim().split_once(' ').ok_or_else(|| {
        Error::Internal(format!(
            "{} is not '<kid> <base64 pkcs8>'; remove it to make a new key",
            path.display()
        ))
    })?;
    let key = decode_key(kid, pkcs8)?;
    let public = STANDARD.encode(key.public_key().as_ref());
    let known: Option<String> = sqlx::query("SELECT public_key FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .fetch_optional(db)
        .await?
        .map(|row| row.try_get("public_key"))
        .transpose()?;
    match known {
        None => {
            sqlx::query(
                "INSERT INTO signing_keys (kid, pkcs8, public_key, created_ms, active) \
                 VALUES ($1, '', $2, $3, 1)",
            )
            .bind(kid)
            .bind(&public)
            .bind(now_ms())
            .execute(db)
            .await?;
        }
        Some(p) if p != public => {
            return Err(Error::Internal(format!(
                "{}: key {kid} does not match the public key the database has for it",
                path.display()
            )))
        }
        Some(_) => {}
    }
    let erased = sqlx::query("UPDATE signing_keys SET pkcs8 = '' WHERE pkcs8 <> ''")
        .execute(db)
        .await?
        .rows_affected();
    if erased > 0 {
        tracing::info!(erased, "erased private signing keys from the database");
    }
    Ok(TicketSigner {
        kid: kid.to_owned(),
        key: std::sync::Arc::new(key),
        mesh_secret: None,
    })
}

/// The oldest active private key a database of the old layout holds.
async fn legacy_private_key(db: &Db) -> Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT kid, pkcs8 FROM signing_keys WHERE active = 1 AND pkcs8 <> '' \
         ORDER BY created_ms, kid LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((row.try_get("kid")?, row.try_get("pkcs8")?)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("totoro-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    async fn private_keys(db: &Db) -> Vec<String> {
        sqlx::query("SELECT pkcs8 FROM signing_keys")
            .fetch_all(db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("pkcs8").unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_private_key_leaves_the_database_and_replicas_each_verify() {
        let db = crate::store::db::open("sqlite::memory:").await.unwrap();
        // A database of the old layout: the private key in `pkcs8`.
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let legacy = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        sqlx::query(
            "INSERT INTO signing_keys (kid, pkcs8, public_key, created_ms, active) \
             VALUES ('k_legacy', $1, $2, 1, 1)",
        )
        .bind(STANDARD.encode(pkcs8.as_ref()))
        .bind(STANDARD.encode(legacy.public_key().as_ref()))
        .execute(&db)
        .await
        .unwrap();

        let a = scratch("a");
        let signer = ensure_signer(&db, &a).await.unwrap();
        assert_eq!(signer.kid(), "k_legacy", "the old key keeps signing");
        assert_eq!(signer.public_key()[..], legacy.public_key().as_ref()[..]);
        let file = a.join(KEY_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert!(private_keys(&db).await.iter().all(String::is_empty));
        // Restart: the same key from the file.
        assert_eq!(ensure_signer(&db, &a).await.unwrap().kid(), "k_legacy");

        // A second replica on the same database, with its own data
        // directory: its own key, whose public half joins the table's keys.
        let b = scratch("b");
        let other = ensure_signer(&db, &b).await.unwrap();
        assert_ne!(other.kid(), "k_legacy");
        let kids: Vec<String> = public_keys(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert!(kids.contains(&"k_legacy".to_owned()) && kids.contains(&other.kid().to_owned()));
        assert!(private_keys(&db).await.iter().all(String::is_empty));

        // A key file that disagrees with the database is refused.
        std::fs::remove_file(b.join(KEY_FILE)).unwrap();
        let wrong = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        crate::store::private_files::create_new(
            &b.join(KEY_FILE),
            format!("k_legacy {}\n", STANDARD.encode(wrong.as_ref())).as_bytes(),
        )
        .unwrap();
        let e = ensure_signer(&db, &b).await.err().unwrap().to_string();
        assert!(e.contains("does not match"), "{e}");
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}
