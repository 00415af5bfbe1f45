//! frps server-plugin hooks, so a stock frps can be governed by the same
//! rules the fastpath enforces from its table: frps posts
//! `{"version","op","content"}` and gets `{"reject","reject_reason","unchange"}`.
//!
//! The node and the hook's secret are in the path
//! (`/api/v1/frps/{node_id}/{token}/auth/handshake`, `…/auth/proxy`; `GET
//! /api/v1/admin/nodes/{id}/frps-hook` gives both and the frps.toml
//! lines): frps appends its own `?version=…&op=…` to `httpPlugins.path`,
//! which corrupted a node given as `?node_id=`. Seed 001's paths
//! (`/api/v1/frps/auth/handshake`, `…/proxy`) stay, with `?token=` (and
//! `?node_id=`, default the local node) read up to the `?` frps adds. The
//! token is per node, an HMAC of its id under a secret kept in `meta`: a
//! hook call without it is 401, with another node's or a wrong one 403.
//! The verdicts come from the same decisions the fastpath makes
//! ([`proto::policy::decide`]) over the node's and invite's rows instead of
//! the table, so the answer and its words are the same. Counting limits
//! (max_conns, max_proxies, max_proxies_per_session) need session state
//! that these stateless hooks do not see; they are enforced by the fastpath
//! only.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use proto::policy::decide::{
    self, Counts, InviteRules, NodeEntry, NodeRules, ProxyRequest, Scope, ServerRules, Subdomain,
};
use proto::policy::{ProxyTypes, Refusal};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::clock::now_ms;
use crate::domain::invites::{self, Invite};
use crate::domain::nodes::{self, Node};
use crate::domain::tickets;
use crate::error::Error;

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

/// The hook's node and token, from the path or (seed 001's paths) the
/// query.
#[derive(Debug, Default)]
pub struct PluginQuery {
    /// The node frps runs as (None: the local node).
    pub node_id: Option<String>,
    /// The node's hook token.
    pub token: Option<String>,
}

impl PluginQuery {
    /// `node_id` and `token` from a raw query, each value read up to a
    /// `?`: frps appends `?version=…&op=…` to a path that has a query
    /// already.
    fn from_raw(raw: Option<&str>) -> PluginQuery {
        let mut q = PluginQuery::default();
        for pair in raw.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.split('?').next().unwrap_or("").to_owned();
            match k {
                "node_id" if !v.is_empty() => q.node_id = Some(v),
                "token" if !v.is_empty() => q.token = Some(v),
                _ => {}
            }
        }
        q
    }
}

/// Where a hook call says it comes from: the path's node and token, or
/// seed 001's query.
pub enum HookAt {
    /// `/api/v1/frps/{node_id}/{token}/auth/…`.
    Path(String, String),
    /// `/api/v1/frps/auth/…?token=…[&node_id=…]`.
    Query(PluginQuery),
}

/// The node a hook call is for, once its token is checked.
async fn authorized_node(app: &AppState, at: HookAt) -> Result<Node, ApiError> {
    let (node_id, token) = match at {
        HookAt::Path(n, t) => (n, Some(t)),
        HookAt::Query(q) => (
            q.node_id.unwrap_or_else(|| app.local_node_id.clone()),
            q.token,
        ),
    };
    let Some(token) = token else {
        return Err(ApiError {
            status: axum::http::StatusCode::UNAUTHORIZED,
            message: "the frps hook needs its token: use the paths GET \
                      /api/v1/admin/nodes/{id}/frps-hook gives"
                .into(),
            field: Some("token".into()),
            retry_after: None,
        });
    };
    if !nodes::frps_hook_token_ok(&app.db, &node_id, &token).await? {
        return Err(ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            message: format!("the hook token is not node {node_id:?}'s"),
            field: Some("token".into()),
            retry_after: None,
        });
    }
    Ok(nodes::get(&app.db, &node_id).await?)
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

/// The ticket in a Login's `metas`, as the fastpath reads it.
fn ticket_in(metas: Option<&serde_json::Value>) -> Option<&str> {
    metas?.get(decide::TICKET_META)?.as_str()
}

/// A node row's rules, for the decisions.
fn node_rules(node: &Node) -> NodeRules<'_> {
    NodeRules {
        node_id: &node.id,
        region: &node.region,
        public: node.public,
        proxy_types: node.proxy_types,
        port_pool: (&node.port_pool).into(),
        max_proxies_per_session: node.max_proxies_per_session,
    }
}

/// An invite row's rules, for the decisions.
fn invite_rules(inv: &Invite) -> InviteRules<'_> {
    InviteRules {
        revoked: inv.revoked,
        max_conns: inv.max_conns,
        max_proxies: inv.max_proxies,
        proxy_types: inv.proxy_types,
        port_pool: (&inv.port_pool).into(),
        domain_suffix: &inv.domain_suffix,
    }
}

/// A Login's way in, decided as the fastpath decides it from its table
/// ([`decide::node_entry`], then [`decide::invite_entry`] for a ticket):
/// None for the node token on a public node, the ticket's invite row
/// otherwise.
async fn entry(
    app: &AppState,
    node: &Node,
    ticket: Option<&str>,
) -> Result<Result<Option<Invite>, Refusal>, Error> {
    let keys = match ticket {
        Some(_) => tickets::public_keys(&app.db).await?,
        None => Vec::new(),
    };
    let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let entry = decide::node_entry(&node_rules(node), ticket, now_s, |kid| {
        keys.iter().find(|k| k.kid == kid).map(|k| k.public_key)
    });
    let id = match entry {
        Ok(NodeEntry::Public) => return Ok(Ok(None)),
        Ok(NodeEntry::Ticket(id)) => id,
        Err(r) => return Ok(Err(r)),
    };
    // The table holds the node's own invites only.
    let invite = match invites::get(&app.db, &id.to_string()).await {
        Ok(inv) if inv.node_id == node.id => Some(inv),
        Ok(_) | Err(Error::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(decide::invite_entry(id, invite.as_ref().map(invite_rules).as_ref()).map(|()| invite))
}

/// `POST /api/v1/frps/auth/handshake?token=…` (seed 001's path).
pub async fn handshake(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    let at = HookAt::Query(PluginQuery::from_raw(raw.as_deref()));
    login_hook(&app, at, req).await
}

/// `POST /api/v1/frps/{node_id}/{token}/auth/handshake`.
pub async fn handshake_at(
    State(app): State<AppState>,
    Path((node_id, token)): Path<(String, String)>,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    login_hook(&app, HookAt::Path(node_id, token), req).await
}

/// `POST /api/v1/frps/auth/proxy?token=…` (seed 001's path).
pub async fn new_proxy(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    let at = HookAt::Query(PluginQuery::from_raw(raw.as_deref()));
    proxy_hook(&app, at, req).await
}

/// `POST /api/v1/frps/{node_id}/{token}/auth/proxy`.
pub async fn new_proxy_at(
    State(app): State<AppState>,
    Path((node_id, token)): Path<(String, String)>,
    JsonBody(req): JsonBody<PluginRequest>,
) -> Result<Json<PluginResponse>, ApiError> {
    proxy_hook(&app, HookAt::Path(node_id, token), req).await
}

/// The Login hook.
async fn login_hook(
    app: &AppState,
    at: HookAt,
    req: PluginRequest,
) -> Result<Json<PluginResponse>, ApiError> {
    let node = authorized_node(app, at).await?;
    if req.op != "Login" {
        return Ok(reject(format!(
            "handshake hook got op {:?}, expected Login",
            req.op
        )));
    }
    let app = app.clone();
    let ticket = ticket_in(req.content.get("metas"));
    Ok(match entry(&app, &node, ticket).await? {
        Ok(_) => allow(),
        Err(r) => reject(r.detail),
    })
}

/// The NewProxy hook.
async fn proxy_hook(
    app: &AppState,
    at: HookAt,
    req: PluginRequest,
) -> Result<Json<PluginResponse>, ApiError> {
    let node = authorized_node(app, at).await?;
    if req.op != "NewProxy" {
        return Ok(reject(format!(
            "proxy hook got op {:?}, expected NewProxy",
            req.op
        )));
    }
    let app = app.clone();
    let content = &req.content;
    let proxy_type = content
        .get("proxy_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let remote_port = content
        .get("remote_port")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let remote_port = match decide::remote_port(remote_port) {
        Ok(p) => p,
        Err(r) => return Ok(reject(r.detail)),
    };
    // The custom domains frps will route, and the `subdomain` under the
    // node's sub_domain_host (frps's subDomainHost, which the hook is not
    // told, is to be the same).
    let mut domains: Vec<String> = content
        .get("custom_domains")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str())
                .filter_map(|d| proto::vhost::canonical_host(d.trim()).map(|h| h.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let label = content
        .get("subdomain")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let sub_domain = if label.is_empty() || node.sub_domain_host.is_empty() {
        None
    } else {
        domains.push(format!("{label}.{}", node.sub_domain_host));
        Some(invites::subdomain_owner(&app.db, &node.id, &label).await?)
    };
    let metas = content.get("user").and_then(|u| u.get("metas"));
    let invite = match entry(&app, &node, ticket_in(metas)).await? {
        Ok(invite) => invite,
        Err(r) => return Ok(reject(r.detail)),
    };
    let node_rules = node_rules(&node);
    let scope = match &invite {
        None => Scope::Node { node: node_rules },
        Some(inv) => Scope::Invite {
            node: node_rules,
            id: inv.id,
            invite: Some(invite_rules(inv)),
        },
    };
    // frps applies its own allowPorts and maxPortsPerClient and implements
    // every type; the counts are the fastpath's to keep.
    let decided = decide::proxy(
        &ServerRules::default(),
        &scope,
        &ProxyRequest {
            proxy_type,
            remote_port,
            domains: &domains,
            sub_domain_host: &node.sub_domain_host,
            subdomain: sub_domain.map(|reserved_by| Subdomain {
                label: &label,
                domain: domains.last().map_or("", String::as_str),
                reserved_by,
            }),
        },
        &Counts::default(),
        ProxyTypes::ALL,
    );
    Ok(match decided {
        Ok(_) => allow(),
        Err(r) => reject(r.detail),
    })
}
