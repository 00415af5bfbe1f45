//! frps server-plugin hooks, so a stock frps can be governed by the same
//! rules the fastpath enforces from its table: frps posts
//! `{"version","op","content"}` and gets `{"reject","reject_reason","unchange"}`.
//!
//! The node is `?node_id=` on the hook URL (frps `httpPlugins.path`), or the
//! local node. Counting limits (max_conns, max_proxies) need session state
//! that these stateless hooks do not see; they are enforced by the fastpath
//! only.

use axum::extract::{Query, State};
use axum::Json;
use proto::ticket::{self, TicketError};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::clock::now_ms;
use crate::error::Error;
use crate::invites;
use crate::nodes::{self, Node};
use crate::tickets;

/// A plugin request from frps.
#[derive(Debug, Deserialize)]
pub struct PluginRequest {
    /// Plugin protocol version ("0.1.0").
    #[serde(default)]
    pub version: String,
    /// "Login" or "NewProxy".
    #[serde(default)]
    pub op: String,
    /// The frp message, as frps forwards it.
    #[serde(default)]
    pub content: serde_json::Value,
}

/// Hook URL query.
#[derive(Debug, Default, Deserialize)]
pub struct PluginQuery {
    /// The node frps runs as.
    pub node_id: Option<String>,
}

/// A plugin answer.
#[derive(Debug, Serialize)]
pub struct PluginResponse {
    /// Refuse the operation.
    pub reject: bool,
    /// Why, shown to frpc.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reject_reason: String,
    /// The content is not modified.
    pub unchange: bool,
}

fn allow() -> Json<PluginResponse> {
    Json(PluginResponse {
        reject: false,
        reject_reason: String::new(),
        unchange: true,
    })
}

fn reject(reason: impl Into<String>) -> Json<PluginResponse> {
    Json(PluginResponse {
        reject: true,
        reject_reason: reason.into(),
        unchange: true,
    })
}

async fn node_for(app: &AppState, q: &PluginQuery) -> Result<Node, Error> {
    nodes::get(&app.db, q.node_id.as_deref().unwrap_or(&app.local_node_id)).await
}

fn ticket_in(metas: Option<&serde_json::Value>) -> Option<&str> {
    metas?.get("ticket")?.as_str().filter(|t| !t.is_empty())
}

/// Verifies a ticket for `node` and returns its (usable) invite, or the reason.
async fn check_ticket(
    app: &AppState,
    node: &Node,
    token: &str,
) -> Result<Result<invites::Invite, String>, Error> {
    let kid = match ticket::peek_kid(token) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let keys = tickets::public_keys(&app.db).await?;
    let Some(key) = keys.iter().find(|k| k.kid == kid) else {
        return Ok(Err(TicketError::UnknownKey.to_string()));
    };
    let claims = match ticket::verify(token, &key.public_key) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    if let Err(e) = ticket::check(&claims, now_s, &node.id) {
        return Ok(Err(e.to_string()));
    }
    match invites::get(&app.db, &claims.inv).await {
        Ok(inv) if inv.revoked => Ok(Err("invite revoked".into())),
        Ok(inv) if inv.node_id != node.id => Ok(Err(TicketError::WrongNode.to_string())),
        Ok(inv) => Ok(Ok(inv)),
        Err(Error::NotFound(_)) => Ok(Err("unknown invite".into())),
        Err(e) => Err(e),
    }
}

/// `POST /api/v1/frps/auth/handshake` (op Login).
pub async fn handshake(
    State(app): State<AppState>,
    Query(q): Query<PluginQuery>,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    if req.op != "Login" {
        return Ok(reject(format!(
            "handshake hook got op {:?}, expected Login",
            req.op
        )));
    }
    let node = node_for(&app, &q).await?;
    match ticket_in(req.content.get("metas")) {
        Some(token) => match check_ticket(&app, &node, token).await? {
            Ok(_) => Ok(allow()),
            Err(reason) => Ok(reject(reason)),
        },
        None if node.public => Ok(allow()),
        None => Ok(reject(
            "this node is private: log in with a ticket from an invite",
        )),
    }
}

/// `POST /api/v1/frps/auth/proxy` (op NewProxy).
pub async fn new_proxy(
    State(app): State<AppState>,
    Query(q): Query<PluginQuery>,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    if req.op != "NewProxy" {
        return Ok(reject(format!(
            "proxy hook got op {:?}, expected NewProxy",
            req.op
        )));
    }
    let node = node_for(&app, &q).await?;
    let content = &req.content;
    let proxy_type = content
        .get("proxy_type")
        .and_then(|v| v.as_str())
        .unwrap_or("tcp");
    let remote_port = content
        .get("remote_port")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let metas = content.get("user").and_then(|u| u.get("metas"));
    let (types, pool) = match ticket_in(metas) {
        Some(token) => match check_ticket(&app, &node, token).await? {
            Ok(inv) => (
                inv.proxy_types.intersect(node.proxy_types),
                inv.port_pool.intersect(&node.port_pool),
            ),
            Err(reason) => return Ok(reject(reason)),
        },
        None if node.public => (node.proxy_types, node.port_pool.clone()),
        None => {
            return Ok(reject(
                "this node is private: log in with a ticket from an invite",
            ))
        }
    };
    if !types.allows(proxy_type) {
        return Ok(reject(format!(
            "proxy type {proxy_type} is not allowed here (allowed: {types})"
        )));
    }
    if matches!(proxy_type, "tcp" | "udp") && remote_port != 0 {
        let inside = u16::try_from(remote_port).is_ok_and(|p| pool.contains(p));
        if !inside {
            return Ok(reject(format!(
                "port {remote_port} is not in the allowed pool {pool}"
            )));
        }
    }
    Ok(allow())
}
