//! Connection tickets: short-lived, signed proofs that an invite was resolved.
//!
//! A ticket is a JWT in compact form (`header.claims.signature`, each part
//! base64url without padding) signed with Ed25519 (`alg = "EdDSA"`). The
//! header names the signing key (`kid`) so a verifier can pick the public key
//! from its policy table before checking anything else. The slowpath signs
//! ([`sign`]); the fastpath verifies ([`peek_kid`], [`verify`], [`check`]).
//!
//! Verification is split in three so the caller decides where keys and the
//! clock come from: [`peek_kid`] reads the key id without trusting it,
//! [`verify`] checks the signature and decodes the claims, [`check`] applies
//! expiry and node binding. Nothing here panics on any input; every refusal is
//! a [`TicketError`] whose `Display` is the reason sent to frpc.

use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use crate::jwt::{self, Alg, Jwt, JwtError};

/// Issuer every Totoro ticket carries in `iss`.
pub const ISSUER: &str = "totoro";

/// Longest ticket accepted; anything larger is refused before decoding.
pub const MAX_TICKET_LEN: usize = jwt::MAX_LEN;

/// Longest key id accepted in a header (the policy table stores at most 64 bytes).
pub const MAX_KID_LEN: usize = jwt::MAX_KID_LEN;

/// What a ticket asserts: who issued it, for which node and invite, and when
/// it stops being valid (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Issuer; always [`ISSUER`].
    pub iss: String,
    /// Node id the ticket is bound to.
    pub node: String,
    /// Invite id (text form `inv_<32 hex>`) the ticket was resolved from.
    pub inv: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds (exclusive).
    pub exp: u64,
    /// Unique ticket id, for audit.
    pub jti: String,
}

/// Why a ticket was refused. `Display` is the text frpc users read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The token is not a well-formed EdDSA JWT; the payload says which part.
    #[error("malformed ticket: {0}")]
    Malformed(&'static str),
    /// The header names a key the verifier does not know.
    #[error("ticket signed by an unknown key")]
    UnknownKey,
    /// The signature does not match the header and claims.
    #[error("ticket signature invalid")]
    BadSignature,
    /// `exp` is at or before now.
    #[error("ticket expired")]
    Expired,
    /// `iat` lies in the future beyond the allowed clock skew.
    #[error("ticket not valid yet")]
    NotYetValid,
    /// The ticket was issued for a different node.
    #[error("ticket is for another node")]
    WrongNode,
    /// The issuer is not Totoro.
    #[error("ticket issuer is not totoro")]
    WrongIssuer,
}

/// Clock skew tolerated on `iat`, seconds.
const IAT_SKEW_S: u64 = 300;

impl From<JwtError> for TicketError {
    fn from(e: JwtError) -> TicketError {
        match e {
            JwtError::Malformed(what) => TicketError::Malformed(what),
            JwtError::BadSignature => TicketError::BadSignature,
        }
    }
}

/// An EdDSA token, parsed: tickets are never HS256.
fn parse_eddsa(token: &str) -> Result<Jwt<'_>, TicketError> {
    let jwt = Jwt::parse(token).map_err(|e| match e {
        JwtError::Malformed("alg is not EdDSA or HS256") => {
            TicketError::Malformed("alg is not EdDSA")
        }
        e => e.into(),
    })?;
    if jwt.alg() != Alg::EdDsa {
        return Err(TicketError::Malformed("alg is not EdDSA"));
    }
    Ok(jwt)
}

/// Signs `claims` with `key` and returns the compact JWT.
pub fn sign(claims: &TicketClaims, kid: &str, key: &Ed25519KeyPair) -> String {
    jwt::sign_eddsa(claims, kid, key)
}

/// Reads the key id from the header without verifying anything else.
pub fn peek_kid(token: &str) -> Result<String, TicketError> {
    Ok(parse_eddsa(token)?.kid().unwrap_or_default().to_owned())
}

/// Checks the signature against `public_key` and decodes the claims.
///
/// Expiry and node binding are not looked at here; see [`check`].
pub fn verify(token: &str, public_key: &[u8; 32]) -> Result<TicketClaims, TicketError> {
    let jwt = parse_eddsa(token)?;
    jwt.verify_eddsa(public_key)?;
    let claims: TicketClaims = jwt.claims()?;
    if claims.iss != ISSUER {
        return Err(TicketError::WrongIssuer);
    }
    Ok(claims)
}

/// Applies expiry (against `now_s`, unix seconds) and node binding.
pub fn check(claims: &TicketClaims, now_s: u64, node_id: &str) -> Result<(), TicketError> {
    if claims.exp <= now_s {
        return Err(TicketError::Expired);
    }
    if claims.iat > now_s.saturating_add(IAT_SKEW_S) {
        return Err(TicketError::NotYetValid);
    }
    if claims.node != node_id {
        return Err(TicketError::WrongNode);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn keypair() -> (Ed25519KeyPair, [u8; 32]) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        (key, public)
    }

    fn claims() -> TicketClaims {
        TicketClaims {
            iss: ISSUER.to_owned(),
            node: "node_01".to_owned(),
            inv: "inv_0123456789abcdef0123456789abcdef".to_owned(),
            iat: 1_000,
            exp: 2_800,
            jti: "abc".to_owned(),
        }
    }

    #[test]
    fn round_trip() {
        let (key, public) = keypair();
        let token = sign(&claims(), "k1", &key);
        assert_eq!(peek_kid(&token).unwrap(), "k1");
        let got = verify(&token, &public).unwrap();
        assert_eq!(got, claims());
        check(&got, 1_500, "node_01").unwrap();
    }

    #[test]
    fn header_is_standard_jwt() {
        let (key, _) = keypair();
        let token = sign(&claims(), "k1", &key);
        let header = token.split('.').next().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(json["alg"], "EdDSA");
        assert_eq!(json["typ"], "JWT");
        assert_eq!(json["kid"], "k1");
        assert!(!token.contains('='));
    }

    #[test]
    fn expired_and_wrong_node() {
        let c = claims();
        assert_eq!(check(&c, 2_800, "node_01"), Err(TicketError::Expired));
        assert_eq!(check(&c, 1_500, "node_02"), Err(TicketError::WrongNode));
        assert_eq!(check(&c, 900, "node_01"), Ok(()), "within the iat skew");
        let mut future = claims();
        future.iat = 10_000;
        future.exp = 20_000;
        assert_eq!(
            check(&future, 1_000, "node_01"),
            Err(TicketError::NotYetValid)
        );
        assert_eq!(TicketError::Expired.to_string(), "ticket expired");
        assert_eq!(
            TicketError::WrongNode.to_string(),
            "ticket is for another node"
        );
    }

    #[test]
    fn other_key_is_bad_signature() {
        let (key, _) = keypair();
        let (_, other) = keypair();
        let token = sign(&claims(), "k1", &key);
        assert_eq!(verify(&token, &other), Err(TicketError::BadSignature));
    }

    /// Replacing any one part with another valid-looking value breaks the signature.
    #[test]
    fn tamper_each_part() {
        let (key, public) = keypair();
        let token = sign(&claims(), "k1", &key);
        let parts: Vec<&str> = token.split('.').collect();

        let header2 = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"k2"}"#);
        let t = format!("{header2}.{}.{}", parts[1], parts[2]);
        assert_eq!(verify(&t, &public), Err(TicketError::BadSignature));

        let mut c = claims();
        c.exp = u64::MAX;
        let claims2 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let t = format!("{}.{claims2}.{}", parts[0], parts[2]);
        assert_eq!(verify(&t, &public), Err(TicketError::BadSignature));

        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let t = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(verify(&t, &public), Err(TicketError::BadSignature));
    }

    #[test]
    fn refuses_other_algorithms() {
        let (_, public) = keypair();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let t = format!("{header}.{body}.");
        assert_eq!(
            verify(&t, &public),
            Err(TicketError::Malformed("alg is not EdDSA"))
        );
        assert!(peek_kid(&t).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        let (_, public) = keypair();
        let long = "a".repeat(MAX_TICKET_LEN + 1);
        let inputs = [
            "",
            " ",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            "éé.éé.éé",
            "eyJ.eyJ.AAAA",
            long.as_str(),
        ];
        for input in inputs {
            assert!(
                matches!(peek_kid(input), Err(TicketError::Malformed(_))),
                "{input:?}"
            );
            assert!(
                matches!(verify(input, &public), Err(TicketError::Malformed(_))),
                "{input:?}"
            );
        }
        // A valid header with a short signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","kid":"k1"}"#);
        let t = format!("{header}.e30.AAAA");
        assert_eq!(peek_kid(&t).unwrap(), "k1");
        assert_eq!(
            verify(&t, &public),
            Err(TicketError::Malformed("signature is not 64 bytes"))
        );
        assert!(TicketError::Malformed("x")
            .to_string()
            .starts_with("malformed ticket: "));
    }
}
