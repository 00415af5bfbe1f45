//! Who is calling: the admin (ADMIN_API_KEY) or a node (its node key), both
//! sent as `Authorization: Bearer <key>`. Missing → 401, wrong → 403.
//!
//! [`guard`] checks a route's [`Access`] from the request head, before its
//! body is read, so a stranger cannot make the server receive an upload for
//! a route it may not call. Handlers check again where they need the caller.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Access, App, AppState};
use crate::credentials::sha256_hex;
use crate::domain::nodes::{self, Node};

pub(super) fn bearer<'a>(headers: &'a HeaderMap, what: &str) -> Result<&'a str, ApiError> {
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

/// The edge node whose token the request carries (seed 004).
pub async fn edge_node(
    app: &App,
    headers: &HeaderMap,
) -> Result<crate::domain::edge::EdgeNode, ApiError> {
    let token = bearer(headers, "edge token")?;
    match crate::domain::edge::edge_node_by_token(&app.db, token).await? {
        Some(n) => Ok(n),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "edge token is not valid",
        )),
    }
}

/// Middleware: passes the request on only when it carries the key `access`
/// asks for; the refusal closes the connection, since the body is unread.
pub async fn guard(access: Access, app: AppState, req: Request, next: Next) -> Response {
    let checked = match access {
        Access::Anonymous => Ok(()),
        Access::AdminKey => admin(&app, req.headers()),
        Access::NodeKey => node(&app, req.headers()).await.map(|_| ()),
        Access::EdgeToken => edge_node(&app, req.headers()).await.map(|_| ()),
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}
