//! Seed 003's controller API under `/api/v1/mesh/` (admin key): networks,
//! nodes (authorize, deauthorize, rename, delete), their routes, the
//! aggregated route table, relay and STUN servers with their tokens, the
//! token blacklist, the latency matrix (empty until relays report),
//! settings and an overview.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row as _;

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::domain::mesh::networks::{self, Network, NetworkPatch, NewNetwork};
use crate::domain::mesh::nodes::{self, MeshNode, Rename};
use crate::domain::mesh::routes::{self, Aggregated, NewRoute, NodeRoute, RoutePatch};
use crate::domain::mesh::servers::{self, NewServer, Server, ServerPatch, WithToken};
use crate::domain::mesh::{settings, tokens};
use crate::error::Error;

/// A path id: a positive 32-bit number.
fn id(field: &str, text: &str) -> Result<u32, Error> {
    text.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        Error::invalid(
            field,
            format!("{field} must be a positive number, got {text:?}"),
        )
    })
}

/// `GET /api/v1/mesh/networks`.
pub async fn list_networks(State(app): State<AppState>) -> Result<Json<Vec<Network>>, ApiError> {
    Ok(Json(networks::list(&app.db).await?))
}

/// `POST /api/v1/mesh/networks`.
pub async fn create_network(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewNetwork>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(networks::create(&app.db, req).await?),
    ))
}

/// `PUT /api/v1/mesh/networks/{id}`.
pub async fn update_network(
    State(app): State<AppState>,
    Path(nid): Path<String>,
    JsonBody(patch): JsonBody<NetworkPatch>,
) -> Result<Json<Network>, ApiError> {
    Ok(Json(
        networks::update(&app.db, id("id", &nid)?, patch).await?,
    ))
}

/// `DELETE /api/v1/mesh/networks/{id}`.
pub async fn delete_network(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let nid = id("id", &nid)?;
    let members = nodes::list(&app.db, Some(nid)).await?;
    networks::delete(&app.db, nid).await?;
    for n in members {
        tokens::revoke_node(&app.db, n.id, "network deleted").await?;
    }
    app.mesh.changed(nid);
    Ok(StatusCode::NO_CONTENT)
}

/// `?network_id=` of the node list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    /// Only this network's nodes.
    pub network_id: Option<u32>,
}

/// `GET /api/v1/mesh/nodes`.
pub async fn list_nodes(
    State(app): State<AppState>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<Vec<MeshNode>>, ApiError> {
    Ok(Json(nodes::list(&app.db, q.network_id).await?))
}

/// `GET /api/v1/mesh/nodes/{id}`.
pub async fn get_node(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<Json<MeshNode>, ApiError> {
    Ok(Json(nodes::get(&app.db, id("id", &nid)?).await?))
}

/// `POST /api/v1/mesh/nodes/{id}/authorize`.
pub async fn authorize_node(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<Json<MeshNode>, ApiError> {
    let n = nodes::authorize(&app.db, id("id", &nid)?).await?;
    app.mesh.changed(n.network_id);
    Ok(Json(n))
}

/// `POST /api/v1/mesh/nodes/{id}/deauthorize`.
pub async fn deauthorize_node(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<Json<MeshNode>, ApiError> {
    let n = nodes::deauthorize(&app.db, id("id", &nid)?).await?;
    tokens::revoke_node(&app.db, n.id, "node deauthorized").await?;
    app.mesh.changed(n.network_id);
    Ok(Json(n))
}

/// `POST /api/v1/mesh/nodes/{id}/rename`.
pub async fn rename_node(
    State(app): State<AppState>,
    Path(nid): Path<String>,
    JsonBody(req): JsonBody<Rename>,
) -> Result<Json<MeshNode>, ApiError> {
    let n = nodes::rename(&app.db, id("id", &nid)?, req).await?;
    app.mesh.changed(n.network_id);
    Ok(Json(n))
}

/// `DELETE /api/v1/mesh/nodes/{id}`.
pub async fn delete_node(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n = nodes::get(&app.db, id("id", &nid)?).await?;
    nodes::delete(&app.db, n.id).await?;
    tokens::revoke_node(&app.db, n.id, "node deleted").await?;
    app.mesh.changed(n.network_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/mesh/nodes/{id}/routes`.
pub async fn node_routes(
    State(app): State<AppState>,
    Path(nid): Path<String>,
) -> Result<Json<Vec<NodeRoute>>, ApiError> {
    Ok(Json(routes::of_node(&app.db, id("id", &nid)?).await?))
}

/// `POST /api/v1/mesh/nodes/{id}/routes`.
pub async fn add_route(
    State(app): State<AppState>,
    Path(nid): Path<String>,
    JsonBody(req): JsonBody<NewRoute>,
) -> Result<(StatusCode, Json<NodeRoute>), ApiError> {
    let node = nodes::get(&app.db, id("id", &nid)?).await?;
    let r = routes::add(&app.db, node.id, req).await?;
    app.mesh.changed(node.network_id);
    Ok((StatusCode::CREATED, Json(r)))
}

/// `PUT /api/v1/mesh/nodes/{id}/routes/{rid}`.
pub async fn update_route(
    State(app): State<AppState>,
    Path((nid, rid)): Path<(String, String)>,
    JsonBody(patch): JsonBody<RoutePatch>,
) -> Result<Json<NodeRoute>, ApiError> {
    let node = nodes::get(&app.db, id("id", &nid)?).await?;
    let r = routes::update(&app.db, node.id, id("rid", &rid)?, patch).await?;
    app.mesh.changed(node.network_id);
    Ok(Json(r))
}

/// `DELETE /api/v1/mesh/nodes/{id}/routes/{rid}`.
pub async fn delete_route(
    State(app): State<AppState>,
    Path((nid, rid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let node = nodes::get(&app.db, id("id", &nid)?).await?;
    routes::delete(&app.db, node.id, id("rid", &rid)?).await?;
    app.mesh.changed(node.network_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/mesh/routes`.
pub async fn aggregated_routes(
    State(app): State<AppState>,
) -> Result<Json<Vec<Aggregated>>, ApiError> {
    Ok(Json(routes::aggregated(&app.db).await?))
}

/// `GET /api/v1/mesh/latency/matrix`: measured RTTs between nodes and
/// relays. Empty until relays and nodes report (LATENCY_REPORT).
pub async fn latency_matrix(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = sqlx::query(
        "SELECT src_type, src_id, dst_type, dst_id, rtt_ms, recorded_ms FROM mesh_latency_records \
         ORDER BY src_type, src_id, dst_type, dst_id",
    )
    .fetch_all(&app.db)
    .await
    .map_err(Error::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(json!({
            "src_type": r.try_get::<String, _>("src_type").map_err(Error::from)?,
            "src_id": r.try_get::<i64, _>("src_id").map_err(Error::from)?,
            "dst_type": r.try_get::<String, _>("dst_type").map_err(Error::from)?,
            "dst_id": r.try_get::<i64, _>("dst_id").map_err(Error::from)?,
            "rtt_ms": r.try_get::<i64, _>("rtt_ms").map_err(Error::from)?,
            "recorded_ms": r.try_get::<i64, _>("recorded_ms").map_err(Error::from)?,
        }));
    }
    Ok(Json(json!({ "records": out })))
}

/// `GET /api/v1/mesh/settings`.
pub async fn get_settings(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(settings::all(&app.db).await?)))
}

/// `PUT /api/v1/mesh/settings` (a JSON object of the keys to change).
pub async fn put_settings(
    State(app): State<AppState>,
    JsonBody(changes): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(settings::update(&app.db, &changes).await?)))
}

/// `GET /api/v1/mesh/stats/overview`.
pub async fn overview(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let count = |sql: &'static str| {
        let db = app.db.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&db).await?;
            Ok::<i64, Error>(n)
        }
    };
    Ok(Json(json!({
        "networks": count("SELECT COUNT(*) FROM mesh_networks").await?,
        "nodes": count("SELECT COUNT(*) FROM mesh_nodes").await?,
        "nodes_authorized": count("SELECT COUNT(*) FROM mesh_nodes WHERE authorized = 1").await?,
        "nodes_pending": count("SELECT COUNT(*) FROM mesh_nodes WHERE authorized = 0").await?,
        "nodes_online": count("SELECT COUNT(*) FROM mesh_nodes WHERE online = 1").await?,
        "routes": count("SELECT COUNT(*) FROM mesh_node_routes").await?,
        "servers": count("SELECT COUNT(*) FROM mesh_servers").await?,
        "tokens_blacklisted": count("SELECT COUNT(*) FROM mesh_token_blacklist").await?,
    })))
}

/// `GET /api/v1/mesh/servers`.
pub async fn list_servers(State(app): State<AppState>) -> Result<Json<Vec<Server>>, ApiError> {
    Ok(Json(servers::list(&app.db).await?))
}

/// `GET /api/v1/mesh/servers/{id}`.
pub async fn get_server(
    State(app): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<Server>, ApiError> {
    Ok(Json(servers::get(&app.db, id("id", &sid)?).await?))
}

/// `POST /api/v1/mesh/servers`: the server and its token (shown once).
pub async fn create_server(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewServer>,
) -> Result<(StatusCode, Json<WithToken>), ApiError> {
    let s = servers::create(&app.db, &app.signer.mesh_signer(), req).await?;
    app.mesh.servers_changed();
    Ok((StatusCode::CREATED, Json(s)))
}

/// `PUT /api/v1/mesh/servers/{id}`.
pub async fn update_server(
    State(app): State<AppState>,
    Path(sid): Path<String>,
    JsonBody(patch): JsonBody<ServerPatch>,
) -> Result<Json<Server>, ApiError> {
    let s = servers::update(&app.db, id("id", &sid)?, patch).await?;
    app.mesh.servers_changed();
    Ok(Json(s))
}

/// `DELETE /api/v1/mesh/servers/{id}`.
pub async fn delete_server(
    State(app): State<AppState>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    servers::delete(&app.db, id("id", &sid)?).await?;
    app.mesh.servers_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/mesh/servers/{id}/token`: a new token; the old one is
/// blacklisted and a server holding it is cut off.
pub async fn regenerate_server_token(
    State(app): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<WithToken>, ApiError> {
    let s = servers::regenerate_token(&app.db, &app.signer.mesh_signer(), id("id", &sid)?).await?;
    app.mesh.servers_changed();
    Ok(Json(s))
}

/// `GET /api/v1/mesh/tokens/blacklist`: revoked token ids until their
/// tokens would have expired.
pub async fn blacklist(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let entries: Vec<Value> = tokens::blacklist(&app.db)
        .await?
        .into_iter()
        .map(|(jti, exp)| json!({ "jti": jti, "expires_at": exp }))
        .collect();
    Ok(Json(json!({ "entries": entries })))
}

/// `POST /api/v1/mesh/tokens/blacklist` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// The token id (`jti`).
    pub jti: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Until when, unix seconds (default: a year, the longest a mesh
    /// token lives).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// `POST /api/v1/mesh/tokens/blacklist`: revoke one token by its id;
/// relays drop its connections at once.
pub async fn revoke_token(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<Revoke>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let jti = req.jti.trim();
    if jti.is_empty() || jti.len() > 128 || !jti.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid("jti", "jti must be 1-128 printable ASCII characters").into());
    }
    if req.reason.len() > 256 {
        return Err(Error::invalid("reason", "reason is longer than 256 bytes").into());
    }
    let now_s = u64::try_from(crate::clock::now_ms() / 1000).unwrap_or(0);
    let until = req.expires_at.unwrap_or(now_s + tokens::SERVER_TOKEN_TTL_S);
    if until <= now_s {
        return Err(Error::invalid("expires_at", "expires_at is in the past").into());
    }
    let reason = if req.reason.is_empty() {
        "revoked by an operator"
    } else {
        req.reason.as_str()
    };
    tokens::revoke(&app.db, jti, 0, reason, until).await?;
    app.mesh.servers_changed();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "jti": jti, "expires_at": until })),
    ))
}
