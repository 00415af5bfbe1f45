//! Node-key endpoints: heartbeat, and the node's own invites.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth;
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::domain::invites::{self, InviteInfo, NewInvite};
use crate::domain::nodes::{self, Heartbeat};

/// `POST /api/v1/nodes/heartbeat`.
pub async fn heartbeat(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Heartbeat>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = auth::node(&app, &headers).await?;
    let at = nodes::heartbeat(&app.db, &node.id, &body).await?;
    Ok(Json(
        serde_json::json!({ "node_id": node.id, "last_heartbeat_ms": at }),
    ))
}

/// `POST /api/v1/nodes/invites`.
pub async fn create_invite(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewInvite>,
) -> Result<(StatusCode, Json<InviteInfo>), ApiError> {
    let node = auth::node(&app, &headers).await?;
    let (invite, code) = invites::create(&app.db, &node, req).await?;
    app.publisher.sync_invite(invite.id).await?;
    Ok((StatusCode::CREATED, Json(invite.info(Some(code)))))
}

/// `GET /api/v1/nodes/invites`.
pub async fn list_invites(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<InviteInfo>>, ApiError> {
    let node = auth::node(&app, &headers).await?;
    let list = invites::list(&app.db, Some(&node.id)).await?;
    Ok(Json(list.iter().map(|i| i.info(None)).collect()))
}

/// `POST /api/v1/nodes/invites/{id}/revoke`.
pub async fn revoke_invite(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<InviteInfo>, ApiError> {
    let node = auth::node(&app, &headers).await?;
    let invite = invites::revoke(&app.db, &id, Some(&node.id), "node").await?;
    app.publisher.sync_invite(invite.id).await?;
    Ok(Json(invite.info(None)))
}
