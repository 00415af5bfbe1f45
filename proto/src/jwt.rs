//! Compact JWTs (`header.claims.signature`, each part base64url without
//! padding) as Totoro signs them: Ed25519 (`alg = "EdDSA"`, with the
//! signing key's `kid`) for connection tickets and mesh tokens, and
//! HMAC-SHA256 (`alg = "HS256"`) for seed 003's shared-secret mode.
//!
//! [`Jwt::parse`] splits and decodes a token without trusting anything; the
//! caller then checks the signature with the key the header's `alg` and
//! `kid` lead it to ([`Jwt::verify_eddsa`], [`Jwt::verify_hs256`]) and only
//! then reads the claims ([`Jwt::claims`]). Nothing here panics on input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest token accepted; anything larger is refused before decoding.
pub const MAX_LEN: usize = 4096;

/// Longest key id accepted in a header.
pub const MAX_KID_LEN: usize = 64;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed JWT; which part.
    Malformed(&'static str),
    /// The signature does not match.
    BadSignature,
}

/// The algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// Ed25519.
    EdDsa,
    /// HMAC-SHA256.
    Hs256,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Jwt<'a> {
    alg: Alg,
    kid: Option<String>,
    signed: &'a str,
    claims: &'a str,
    signature: Vec<u8>,
}

fn encode_parts<T: Serialize>(header: &Header, claims: &T) -> String {
    // Serializing plain structs cannot fail: no maps with non-string keys,
    // no foreign Serialize impls.
    let header_json = serde_json::to_vec(header).unwrap_or_default();
    let claims_json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = String::with_capacity(256);
    URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
    token
}

/// `claims` signed with Ed25519 `key`, named `kid`.
pub fn sign_eddsa<T: Serialize>(claims: &T, kid: &str, key: &Ed25519KeyPair) -> String {
    let header = Header {
        alg: "EdDSA".to_owned(),
        typ: Some("JWT".to_owned()),
        kid: Some(kid.to_owned()),
    };
    let mut token = encode_parts(&header, claims);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
    token
}

/// `claims` signed with HMAC-SHA256 under `secret`.
pub fn sign_hs256<T: Serialize>(claims: &T, secret: &[u8]) -> String {
    let header = Header {
        alg: "HS256".to_owned(),
        typ: Some("JWT".to_owned()),
        kid: None,
    };
    let mut token = encode_parts(&header, claims);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

impl<'a> Jwt<'a> {
    /// Split and decode `token`; its header must name EdDSA (with a kid) or
    /// HS256.
    pub fn parse(token: &'a str) -> Result<Jwt<'a>, JwtError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(JwtError::Malformed("empty"));
        }
        if token.len() > MAX_LEN {
            return Err(JwtError::Malformed("too long"));
        }
        let mut it = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        let h: Header = serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("header is not JWT JSON"))?;
        let alg = match h.alg.as_str() {
            "EdDSA" => Alg::EdDsa,
            "HS256" => Alg::Hs256,
            _ => return Err(JwtError::Malformed("alg is not EdDSA or HS256")),
        };
        if alg == Alg::EdDsa && h.kid.as_deref().is_none_or(str::is_empty) {
            return Err(JwtError::Malformed("kid missing or too long"));
        }
        if h.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Err(JwtError::Malformed("kid missing or too long"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        Ok(Jwt {
            alg,
            kid: h.kid,
            signed: &token[..header.len() + 1 + claims.len()],
            claims,
            signature,
        })
    }

    /// The header's algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The header's key id (always there for EdDSA).
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Check an EdDSA signature against `public_key`.
    pub fn verify_eddsa(&self, public_key: &[u8; 32]) -> Result<(), JwtError> {
        if self.alg != Alg::EdDsa {
            return Err(JwtError::Malformed("alg is not EdDSA"));
        }
        if self.signature.len() != 64 {
            return Err(JwtError::Malformed("signature is not 64 bytes"));
        }
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| JwtError::BadSignature)
    }

    /// Check an HS256 signature with `secret` (in constant time).
    pub fn verify_hs256(&self, secret: &[u8]) -> Result<(), JwtError> {
        if self.alg != Alg::Hs256 {
            return Err(JwtError::Malformed("alg is not HS256"));
        }
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            self.signed.as_bytes(),
            &self.signature,
        )
        .map_err(|_| JwtError::BadSignature)
    }

    /// The claims, decoded as `T` (call after a signature check).
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(self.claims)
            .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("claims are not the expected JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct C {
        sub: String,
        exp: u64,
    }

    #[test]
    fn both_algorithms_round_trip_and_refuse_each_other() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        let c = C {
            sub: "x".into(),
            exp: 5,
        };
        let ed = sign_eddsa(&c, "k1", &key);
        let j = Jwt::parse(&ed).unwrap();
        assert_eq!((j.alg(), j.kid()), (Alg::EdDsa, Some("k1")));
        j.verify_eddsa(&public).unwrap();
        assert_eq!(j.claims::<C>().unwrap(), c);
        assert_eq!(
            j.verify_hs256(b"secret"),
            Err(JwtError::Malformed("alg is not HS256"))
        );

        let hs = sign_hs256(&c, b"secret");
        let j = Jwt::parse(&hs).unwrap();
        assert_eq!((j.alg(), j.kid()), (Alg::Hs256, None));
        j.verify_hs256(b"secret").unwrap();
        assert_eq!(j.verify_hs256(b"other"), Err(JwtError::BadSignature));
        assert_eq!(
            j.verify_eddsa(&public),
            Err(JwtError::Malformed("alg is not EdDSA"))
        );
        assert_eq!(j.claims::<C>().unwrap(), c);
        // A changed claim breaks the HMAC.
        let parts: Vec<&str> = hs.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(br#"{"sub":"y","exp":5}"#);
        let t = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(
            Jwt::parse(&t).unwrap().verify_hs256(b"secret"),
            Err(JwtError::BadSignature)
        );
        // alg "none" is not accepted.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(Jwt::parse(&format!("{none}.{other}.")).is_err());
    }
}
