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

/// `GET /api/v1/nodes/policy` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    /// The digest of the table the agent holds (empty: none).
    #[serde(default)]
    pub have: String,
    /// How long to wait for a different table, in seconds (at most
    /// [`crate::agent::MAX_WAIT_S`]; default [`crate::agent::WAIT_S`]).
    pub wait: Option<u64>,
}

/// `GET /api/v1/nodes/policy`: the calling node's table, as soon as it
/// differs from the one the agent holds (`have`); 204 after `wait`
/// seconds without a change (a long poll: the agent asks again at once).
pub async fn policy(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<PolicyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let node = auth::node(&app, &headers).await?;
    let axum::extract::Query(q) = query.map_err(super::admin::query_error)?;
    let wait = std::time::Duration::from_secs(
        q.wait
            .unwrap_or(crate::agent::WAIT_S)
            .min(crate::agent::MAX_WAIT_S),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.publisher.changes_epoch();
    let key = auth::bearer(&headers, "node key")?.to_owned();
    let _open = app.metrics.agent_poll();
    let mut seen = changes.borrow_and_update().0;
    loop {
        if app.publisher.polls_stopped() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this control plane is shutting down",
            ));
        }
        let table = app.publisher.compile_for(&node.id).await?;
        let digest = crate::agent::digest(&table);
        if digest != q.have {
            let mac = crate::agent::mac(&key, &table);
            app.metrics.agent_table_sent();
            return Ok((
                StatusCode::OK,
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "application/octet-stream".to_owned(),
                    ),
                    (
                        axum::http::HeaderName::from_static(crate::agent::DIGEST_HEADER),
                        digest,
                    ),
                    (
                        axum::http::HeaderName::from_static(crate::agent::MAC_HEADER),
                        mac,
                    ),
                ],
                table,
            )
                .into_response());
        }
        // Wait for a change that may concern this node: one change for
        // another node's invite alone does not (more than one since the
        // last look, and which they were is not known: compile).
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(StatusCode::NO_CONTENT.into_response());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(StatusCode::NO_CONTENT.into_response());
                }
            }
            let (count, scope) = changes.borrow_and_update().clone();
            let elsewhere =
                count == seen.wrapping_add(1) && scope.as_deref().is_some_and(|n| n != node.id);
            seen = count;
            if !elsewhere || app.publisher.polls_stopped() {
                break;
            }
        }
    }
}

/// `POST /api/v1/nodes/events`: batches of event records from the calling
/// node's agent spool ([`proto::event_batch`]), written as the control
/// plane's own drain writes its node's (audit, traffic, tenant reports and
/// quotas), all in one transaction. Each batch is written once: the spool's
/// last sequence number is kept with the records, and a batch at or below
/// it (sent again after a lost answer, or to another control plane) is
/// acknowledged without being written.
pub async fn events(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = auth::node(&app, &headers).await?;
    let batches = proto::event_batch::decode(&body)
        .map_err(|e| ApiError::bad_field(Some("body".into()), e.to_string()))?;
    let ingest = crate::telemetry::events_drain::Ingest::for_agents(
        std::sync::Arc::clone(&app.tenants.reports),
        std::sync::Arc::clone(&app.tenants.quotas),
    );
    let shipped = ingest
        .write_batches(&app.db, &node.id, &node.region, &batches)
        .await?;
    let (written, repeated, dropped) = (shipped.written, shipped.repeated, shipped.dropped);
    app.metrics.agent_events(written, repeated, dropped);
    if dropped > 0 {
        tracing::warn!(node_id = %node.id, dropped, "the node agent's spool dropped events for room");
    }
    Ok(Json(serde_json::json!({
        "node_id": node.id,
        "acked_seq": shipped.acked,
        "events_written": written,
        "batches_repeated": repeated,
    })))
}
