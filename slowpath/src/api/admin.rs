//! Admin-key endpoints: nodes, all invites, tenants, audit, stats.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use sqlx::Row as _;

use super::auth;
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::clock::now_ms;
use crate::domain::invites::{self, InviteInfo, NewInvite};
use crate::domain::nodes::{self, NewNode, NodeInfo, NodePatch};
use crate::domain::tenants::{self, Tenant, TenantInfo, SOURCE_DATABASE};
use crate::error::Error;
use crate::telemetry::audit;

/// `POST /api/v1/admin/nodes`.
pub async fn create_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewNode>,
) -> Result<(StatusCode, Json<NodeInfo>), ApiError> {
    auth::admin(&app, &headers)?;
    let (node, key) = nodes::register(&app.db, req).await?;
    let mut info = node.info(true);
    info.node_key = Some(key);
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /api/v1/admin/nodes`.
pub async fn list_nodes(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    auth::admin(&app, &headers)?;
    let list = nodes::list(&app.db, false).await?;
    Ok(Json(list.iter().map(|n| n.info(true)).collect()))
}

/// `GET /api/v1/admin/nodes/{id}`.
pub async fn get_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    auth::admin(&app, &headers)?;
    Ok(Json(nodes::get(&app.db, &id).await?.info(true)))
}

/// `GET /api/v1/admin/nodes/{id}/frps-hook`: the hook paths of a stock
/// frps running as this node (with its token), and the frps.toml lines.
pub async fn frps_hook(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let node = nodes::get(&app.db, &id).await?;
    let token = nodes::frps_hook_token(&app.db, &node.id).await?;
    let base = format!("/api/v1/frps/{}/{token}/auth", node.id);
    // Where frps reaches this API: as the caller did, by default.
    let addr = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7400");
    let toml = format!(
        "[[httpPlugins]]\nname = \"totoro-login\"\naddr = \"{addr}\"\npath = \"{base}/handshake\"\nops = [\"Login\"]\n\n\
         [[httpPlugins]]\nname = \"totoro-proxy\"\naddr = \"{addr}\"\npath = \"{base}/proxy\"\nops = [\"NewProxy\"]\n"
    );
    Ok(Json(serde_json::json!({
        "node_id": node.id,
        "handshake_path": format!("{base}/handshake"),
        "proxy_path": format!("{base}/proxy"),
        "frps_toml": toml,
    })))
}

/// `PATCH /api/v1/admin/nodes/{id}`.
pub async fn patch_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<NodePatch>,
) -> Result<Json<NodeInfo>, ApiError> {
    auth::admin(&app, &headers)?;
    let node = nodes::update(&app.db, &id, patch).await?;
    app.publisher.sync().await?;
    Ok(Json(node.info(true)))
}

/// `DELETE /api/v1/admin/nodes/{id}`.
pub async fn delete_node(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::admin(&app, &headers)?;
    if id == app.local_node_id {
        return Err(Error::invalid(
            "id",
            "the local node cannot be deleted while this slowpath publishes for it",
        )
        .into());
    }
    nodes::delete(&app.db, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/admin/nodes/{id}/invites`.
pub async fn create_invite(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<NewInvite>,
) -> Result<(StatusCode, Json<InviteInfo>), ApiError> {
    auth::admin(&app, &headers)?;
    let node = nodes::get(&app.db, &id).await?;
    let (invite, code) = invites::create(&app.db, &node, req).await?;
    app.publisher.sync_invite(invite.id).await?;
    Ok((StatusCode::CREATED, Json(invite.info(Some(code)))))
}

/// `GET /api/v1/admin/invites` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteQuery {
    /// Only this node's invites.
    pub node_id: Option<String>,
}

pub(super) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_field(None, format!("bad query string: {}", e.body_text()))
}

/// `GET /api/v1/admin/invites`.
pub async fn list_invites(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<InviteQuery>, QueryRejection>,
) -> Result<Json<Vec<InviteInfo>>, ApiError> {
    auth::admin(&app, &headers)?;
    let Query(q) = query.map_err(query_error)?;
    let list = invites::list(&app.db, q.node_id.as_deref()).await?;
    Ok(Json(list.iter().map(|i| i.info(None)).collect()))
}

/// `POST /api/v1/admin/invites/{id}/revoke`.
pub async fn revoke_invite(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<InviteInfo>, ApiError> {
    auth::admin(&app, &headers)?;
    let invite = invites::revoke(&app.db, &id, None, "admin").await?;
    app.publisher.sync_invite(invite.id).await?;
    Ok(Json(invite.info(None)))
}

/// `GET /api/v1/admin/audit`.
pub async fn audit(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<audit::Filter>, QueryRejection>,
) -> Result<Json<Vec<audit::Row>>, ApiError> {
    auth::admin(&app, &headers)?;
    let Query(filter) = query.map_err(query_error)?;
    Ok(Json(audit::query(&app.db, &filter).await?))
}

async fn count(app: &AppState, sql: &str, now: i64) -> Result<i64, Error> {
    let row = sqlx::query(sql).bind(now).fetch_one(&app.db).await?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// `GET /api/v1/admin/stats`.
pub async fn stats(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth::admin(&app, &headers)?;
    let now = now_ms();
    let online_since = now - nodes::ONLINE_WINDOW_MS;
    // Every count binds `$1` so one helper serves them all.
    let nodes_total = count(&app, "SELECT COUNT(*) FROM nodes WHERE $1 = $1", now).await?;
    let nodes_online = count(
        &app,
        "SELECT COUNT(*) FROM nodes WHERE last_heartbeat_ms >= $1",
        online_since,
    )
    .await?;
    let invites_total = count(&app, "SELECT COUNT(*) FROM invites WHERE $1 = $1", now).await?;
    let invites_active = count(
        &app,
        "SELECT COUNT(*) FROM invites WHERE revoked = 0 AND expires_ms > $1 \
         AND (max_uses = 0 OR used < max_uses)",
        now,
    )
    .await?;
    // Sessions whose open has no close yet (a fastpath crash leaves some
    // open until their run id closes or the row ages out of view).
    let sessions_open = count(
        &app,
        "SELECT COUNT(*) FROM audit o WHERE o.kind = 'session.open' AND o.ts_ms <= $1 \
         AND NOT EXISTS (SELECT 1 FROM audit c WHERE c.kind = 'session.close' AND c.run_id = o.run_id)",
        now,
    )
    .await?;
    let traffic = sqlx::query(
        "SELECT CAST(COALESCE(SUM(bytes_in), 0) AS BIGINT), CAST(COALESCE(SUM(bytes_out), 0) AS BIGINT) \
         FROM proxy_traffic",
    )
    .fetch_one(&app.db)
    .await
    .map_err(Error::from)?;
    let bytes_in: i64 = traffic.try_get(0).map_err(Error::from)?;
    let bytes_out: i64 = traffic.try_get(1).map_err(Error::from)?;
    let drain = app.drain.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let dropped: u64 = drain.workers.iter().map(|w| w.dropped).sum();
    Ok(Json(serde_json::json!({
        "local_node_id": app.local_node_id,
        "nodes": { "total": nodes_total, "online": nodes_online },
        "invites": { "total": invites_total, "active": invites_active },
        "sessions_open": sessions_open,
        "traffic": { "bytes_in": bytes_in, "bytes_out": bytes_out },
        "events": {
            "dropped": dropped,
            "ingested": drain.events_ingested,
            "undecodable": drain.undecodable,
            "unauthenticated": drain.unauthenticated,
            "flushed_without_close": drain.flushed_without_close,
            "refusals": drain.refusals,
        },
        "workers": drain.workers,
        "policy": app.publisher.status(),
        "tenants": app.tenants.status(),
    })))
}

/// A tenant record from a request body; `path_token` (PUT) fills in or
/// must match the record's `token`.
fn tenant_body(
    body: Result<Bytes, BytesRejection>,
    path_token: Option<&str>,
) -> Result<Tenant, ApiError> {
    let bytes = body.map_err(|e| ApiError::bad_field(None, format!("cannot read body: {e}")))?;
    Tenant::parse_json(&bytes, path_token).map_err(|e| tenants::invalid_record(e).into())
}

/// `GET /api/v1/tenants`.
pub async fn list_tenants(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TenantInfo>>, ApiError> {
    auth::admin(&app, &headers)?;
    let list = tenants::list(&app.db).await?;
    let mut out: Vec<TenantInfo> = list.iter().map(|t| t.info(SOURCE_DATABASE)).collect();
    // etcd's tenants too (they win over a database record with the same
    // token, as in the table).
    if let Some(etcd) = app.publisher.etcd_tenants() {
        out.retain(|t| !etcd.contains_key(&t.record.token));
        out.extend(etcd.values().map(|t| t.info(tenants::SOURCE_ETCD)));
        out.sort_by(|a, b| a.record.token.cmp(&b.record.token));
    }
    Ok(Json(out))
}

/// `POST /api/v1/tenants`: the body is seed 002's JSON record.
pub async fn create_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    auth::admin(&app, &headers)?;
    let tenant = tenants::create(&app.db, tenant_body(body, None)?).await?;
    app.publisher.sync().await?;
    Ok((StatusCode::CREATED, Json(tenant.info(SOURCE_DATABASE))))
}

/// `GET /api/v1/tenants/{token}`.
pub async fn get_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    auth::admin(&app, &headers)?;
    Ok(Json(
        tenants::get(&app.db, &token).await?.info(SOURCE_DATABASE),
    ))
}

/// `PUT /api/v1/tenants/{token}`: replaces the whole record.
pub async fn replace_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantInfo>, ApiError> {
    auth::admin(&app, &headers)?;
    let tenant = tenant_body(body, Some(&token))?;
    let tenant = tenants::replace(&app.db, &token, tenant).await?;
    app.publisher.sync().await?;
    Ok(Json(tenant.info(SOURCE_DATABASE)))
}

/// `DELETE /api/v1/tenants/{token}`.
pub async fn delete_tenant(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth::admin(&app, &headers)?;
    tenants::delete(&app.db, &token).await?;
    app.publisher.sync().await?;
    Ok(StatusCode::NO_CONTENT)
}
