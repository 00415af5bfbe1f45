//! Seed 003 §4's tokens: `auth` (a node's control channel, 24 h), `relay`
//! (a node's data channels, 1.5 h, listing the relays it may use) and
//! `server` (a relay or STUN server, 1 year), as JWTs with the seed's
//! claims. The controller signs them with its Ed25519 key (so relays hold
//! only public keys) or, when configured, with an HS256 shared secret as
//! the seed describes. Verification order is the seed's (§4.3): signature,
//! expiry, the relay's id among `allowed_relays`, the jti not blacklisted.

use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use super::error::ErrorCode;
use crate::jwt::{self, Alg, Jwt, JwtError};

/// A node's control-channel token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthClaims {
    /// The node.
    pub node_id: u32,
    /// `sha256:<hex>` of its machine key.
    pub machine_key_hash: String,
    /// Its network.
    pub network_id: u32,
    /// Its virtual IP.
    pub virtual_ip: String,
    /// Issued, unix seconds.
    pub iat: u64,
    /// Expires, unix seconds.
    pub exp: u64,
    /// Token id (blacklisted on revocation).
    pub jti: String,
}

/// A node's data-channel token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayClaims {
    /// The node.
    pub node_id: u32,
    /// Its network.
    pub network_id: u32,
    /// The relays (server ids) that accept it.
    pub allowed_relays: Vec<u32>,
    /// Issued, unix seconds.
    pub iat: u64,
    /// Expires, unix seconds.
    pub exp: u64,
    /// Token id.
    pub jti: String,
}

/// A relay or STUN server's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerClaims {
    /// The server.
    pub server_id: u32,
    /// Its name.
    pub server_name: String,
    /// `relay`, `stun`.
    pub capabilities: Vec<String>,
    /// Its region.
    pub region: String,
    /// Issued, unix seconds.
    pub iat: u64,
    /// Expires, unix seconds.
    pub exp: u64,
    /// Token id.
    pub jti: String,
}

/// A relay-to-relay link's credential (`/ws/mesh`): what the controller
/// gives relay `from` for dialing relay `to`. Not one of the seed's types
/// (the seed leaves the link's authentication open); a token names one
/// pair, so a relay that receives it cannot use it on a third.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The dialing relay.
    pub from: u32,
    /// The relay it may dial.
    pub to: u32,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Token id.
    pub jti: String,
}

/// Any of the four, by the `type` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Claims {
    /// `"type": "auth"`.
    Auth(AuthClaims),
    /// `"type": "relay"`.
    Relay(RelayClaims),
    /// `"type": "server"`.
    Server(ServerClaims),
    /// `"type": "link"`.
    Link(LinkClaims),
}

impl Claims {
    /// Expiry, unix seconds.
    pub fn exp(&self) -> u64 {
        match self {
            Claims::Auth(c) => c.exp,
            Claims::Relay(c) => c.exp,
            Claims::Server(c) => c.exp,
            Claims::Link(c) => c.exp,
        }
    }

    /// Token id.
    pub fn jti(&self) -> &str {
        match self {
            Claims::Auth(c) => &c.jti,
            Claims::Relay(c) => &c.jti,
            Claims::Server(c) => &c.jti,
            Claims::Link(c) => &c.jti,
        }
    }
}

/// How the controller signs.
pub enum Signer<'a> {
    /// Its Ed25519 key and that key's id.
    EdDsa {
        /// Key id (the JWT header's `kid`).
        kid: &'a str,
        /// The key.
        key: &'a Ed25519KeyPair,
    },
    /// The seed's shared secret.
    Hs256(&'a [u8]),
}

/// Sign `claims`.
pub fn sign(claims: &Claims, signer: &Signer<'_>) -> String {
    match signer {
        Signer::EdDsa { kid, key } => jwt::sign_eddsa(claims, kid, key),
        Signer::Hs256(secret) => jwt::sign_hs256(claims, secret),
    }
}

/// What a verifier trusts: Ed25519 public keys by kid, and the shared
/// secret when the HS256 mode is on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trust<'a> {
    /// (kid, public key).
    pub ed25519: &'a [(String, [u8; 32])],
    /// The HS256 secret, if configured.
    pub hs256: Option<&'a [u8]>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, badly signed, signed by an unknown key, or of another type.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Its jti is blacklisted.
    #[error("token revoked")]
    Revoked,
    /// A relay token that does not list this relay.
    #[error("invalid token: not valid on relay {0}")]
    NotThisRelay(u32),
}

impl TokenError {
    /// The seed's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Invalid(_) | TokenError::NotThisRelay(_) => ErrorCode::InvalidToken,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Revoked => ErrorCode::TokenRevoked,
        }
    }
}

fn invalid(e: JwtError) -> TokenError {
    TokenError::Invalid(match e {
        JwtError::Malformed(what) => what.to_owned(),
        JwtError::BadSignature => "signature does not verify".to_owned(),
    })
}

/// Check the signature and decode the claims (not yet expiry or the
/// blacklist: see [`check`]).
pub fn verify(token: &str, trust: &Trust<'_>) -> Result<Claims, TokenError> {
    let jwt = Jwt::parse(token).map_err(invalid)?;
    match jwt.alg() {
        Alg::EdDsa => {
            let kid = jwt.kid().unwrap_or_default();
            let key = trust
                .ed25519
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| key)
                .ok_or_else(|| TokenError::Invalid(format!("signed by unknown key {kid:?}")))?;
            jwt.verify_eddsa(key).map_err(invalid)?;
        }
        Alg::Hs256 => {
            let secret = trust
                .hs256
                .ok_or_else(|| TokenError::Invalid("HS256 tokens are not accepted here".into()))?;
            jwt.verify_hs256(secret).map_err(invalid)?;
        }
    }
    jwt.claims().map_err(invalid)
}

/// Expiry (against `now_s`) and the blacklist.
pub fn check(
    claims: &Claims,
    now_s: u64,
    blacklisted: impl Fn(&str) -> bool,
) -> Result<(), TokenError> {
    if claims.exp() <= now_s {
        return Err(TokenError::Expired);
    }
    if blacklisted(claims.jti()) {
        return Err(TokenError::Revoked);
    }
    Ok(())
}

/// A relay's whole check of a node's data-channel token (seed 003 §4.3):
/// signature, type, expiry, this relay among `allowed_relays`, blacklist.
pub fn check_relay_token(
    token: &str,
    trust: &Trust<'_>,
    relay_id: u32,
    now_s: u64,
    blacklisted: impl Fn(&str) -> bool,
) -> Result<RelayClaims, TokenError> {
    let claims = verify(token, trust)?;
    check(&claims, now_s, blacklisted)?;
    match claims {
        Claims::Relay(r) if r.allowed_relays.contains(&relay_id) => Ok(r),
        Claims::Relay(_) => Err(TokenError::NotThisRelay(relay_id)),
        _ => Err(TokenError::Invalid("not a relay token".into())),
    }
}

/// A relay's check of a link token presented on `/ws/mesh`: signature,
/// type, expiry, addressed to this relay (`to == relay_id`), blacklist.
pub fn check_link_token(
    token: &str,
    trust: &Trust<'_>,
    relay_id: u32,
    now_s: u64,
    blacklisted: impl Fn(&str) -> bool,
) -> Result<LinkClaims, TokenError> {
    let claims = verify(token, trust)?;
    check(&claims, now_s, blacklisted)?;
    match claims {
        Claims::Link(l) if l.to == relay_id && l.from != relay_id => Ok(l),
        Claims::Link(_) => Err(TokenError::NotThisRelay(relay_id)),
        _ => Err(TokenError::Invalid("not a link token".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn relay(exp: u64) -> Claims {
        Claims::Relay(RelayClaims {
            node_id: 123,
            network_id: 1,
            allowed_relays: vec![1, 2, 3],
            iat: 100,
            exp,
            jti: "j1".into(),
        })
    }

    #[test]
    fn relay_tokens_are_checked_in_the_seeds_order() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        let keys = vec![("k1".to_string(), public)];
        let trust = Trust {
            ed25519: &keys,
            hs256: None,
        };
        let signer = Signer::EdDsa {
            kid: "k1",
            key: &key,
        };
        let t = sign(&relay(1000), &signer);
        // The claims are the seed's, with "type".
        let body = t.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["type"], "relay");
        assert_eq!(json["allowed_relays"], serde_json::json!([1, 2, 3]));

        let ok = check_relay_token(&t, &trust, 2, 500, |_| false).unwrap();
        assert_eq!(ok.node_id, 123);
        let code = |r: Result<RelayClaims, TokenError>| r.unwrap_err().code().code();
        assert_eq!(
            code(check_relay_token(&t, &trust, 2, 1000, |_| false)),
            1002
        );
        assert_eq!(
            code(check_relay_token(&t, &trust, 2, 500, |j| j == "j1")),
            1003
        );
        assert_eq!(code(check_relay_token(&t, &trust, 9, 500, |_| false)), 1001);
        // Another key, HS256 without the mode, an auth token: 1001.
        let other = vec![("k1".to_string(), [7u8; 32])];
        let wrong = Trust {
            ed25519: &other,
            hs256: None,
        };
        assert_eq!(code(check_relay_token(&t, &wrong, 2, 500, |_| false)), 1001);
        let hs = sign(&relay(1000), &Signer::Hs256(b"s3cret"));
        assert_eq!(
            code(check_relay_token(&hs, &trust, 2, 500, |_| false)),
            1001
        );
        let hs_trust = Trust {
            ed25519: &[],
            hs256: Some(b"s3cret"),
        };
        assert!(check_relay_token(&hs, &hs_trust, 2, 500, |_| false).is_ok());
        let auth = sign(
            &Claims::Auth(AuthClaims {
                node_id: 1,
                machine_key_hash: "sha256:00".into(),
                network_id: 1,
                virtual_ip: "10.0.1.1".into(),
                iat: 1,
                exp: 1000,
                jti: "a".into(),
            }),
            &signer,
        );
        assert_eq!(
            code(check_relay_token(&auth, &trust, 2, 500, |_| false)),
            1001
        );
        assert!(matches!(verify(&auth, &trust), Ok(Claims::Auth(_))));
        assert_eq!(
            code(check_relay_token("a.b.c", &trust, 2, 500, |_| false)),
            1001
        );
    }

    #[test]
    fn a_link_token_names_one_pair() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        let keys = vec![("k1".to_string(), public)];
        let trust = Trust {
            ed25519: &keys,
            hs256: None,
        };
        let signer = Signer::EdDsa {
            kid: "k1",
            key: &key,
        };
        let link = |from, to| {
            sign(
                &Claims::Link(LinkClaims {
                    from,
                    to,
                    iat: 1,
                    exp: 1000,
                    jti: "l1".into(),
                }),
                &signer,
            )
        };
        let t = link(1, 2);
        assert_eq!(
            check_link_token(&t, &trust, 2, 500, |_| false)
                .unwrap()
                .from,
            1
        );
        let code = |r: Result<LinkClaims, TokenError>| r.unwrap_err().code().code();
        // Presented to a third relay, or to itself: refused.
        assert_eq!(code(check_link_token(&t, &trust, 3, 500, |_| false)), 1001);
        assert_eq!(
            code(check_link_token(&link(2, 2), &trust, 2, 500, |_| false)),
            1001
        );
        assert_eq!(code(check_link_token(&t, &trust, 2, 1000, |_| false)), 1002);
        assert_eq!(
            code(check_link_token(&t, &trust, 2, 500, |j| j == "l1")),
            1003
        );
        // A relay token is no link token.
        assert_eq!(
            code(check_link_token(
                &sign(&relay(1000), &signer),
                &trust,
                2,
                500,
                |_| false
            )),
            1001
        );
    }
}
