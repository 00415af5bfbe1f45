//! Who is calling: the admin (ADMIN_API_KEY) or a node (its node key), both
//! sent as `Authorization: Bearer <key>`. Missing → 401, wrong → 403.

use axum::http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use super::App;
use crate::credentials::sha256_hex;
use crate::nodes::{self, Node};

fn bearer<'a>(headers: &'a HeaderMap, what: &str) -> Result<&'a str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty());
    value.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("missing {what}: send Authorization: Bearer <{what}>"),
        )
    })
}

/// Passes when the request carries the admin key.
pub fn admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = bearer(headers, "admin key")?;
    // Comparing hashes keeps the comparison time independent of the key.
    if sha256_hex(key) == app.admin_key_hash {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin key is not valid",
        ))
    }
}

/// The node whose key the request carries.
pub async fn node(app: &App, headers: &HeaderMap) -> Result<Node, ApiError> {
    let key = bearer(headers, "node key")?;
    match nodes::by_key(&app.db, key).await? {
        Some(node) => Ok(node),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "node key is not valid",
        )),
    }
}
