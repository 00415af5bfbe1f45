//! Anonymous endpoints: health, the public node directory, invite resolve.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::domain::invites::{self, Resolved};
use crate::domain::nodes::{self, NodeInfo};

/// `GET /healthz`: the process is alive (always 200); `etcd` says whether
/// the tenant source is connected (null without one). While it is not,
/// the last good tenants stay in force.
pub async fn healthz(State(app): State<AppState>) -> Json<serde_json::Value> {
    let etcd = app.tenants.etcd.as_ref().map(|e| {
        let h = e.health();
        serde_json::json!({
            "connected": h.connected,
            "last_error": h.last_error,
            "tenants": h.tenants,
        })
    });
    let acme = app.acme.as_ref().map(|a| a.status());
    let dns = app.dns.as_ref().map(|d| d.status());
    Json(serde_json::json!({ "ok": true, "etcd": etcd, "acme": acme, "dns": dns }))
}

/// `GET /api/v1/public/nodes`.
pub async fn nodes(State(app): State<AppState>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    let list = nodes::list(&app.db, true).await?;
    Ok(Json(list.iter().map(|n| n.info(false)).collect()))
}

/// Resolve request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The invite code.
    pub code: String,
}

/// `POST /api/v1/invites/resolve`.
pub async fn resolve(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<ResolveRequest>,
) -> Result<Json<Resolved>, ApiError> {
    if let Err(wait) = app.limiter.check(peer.ip()) {
        let secs = wait.as_secs() + 1;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many resolve attempts from {}; retry in {secs} s",
                peer.ip()
            ),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    let resolved =
        invites::resolve(&app.db, &app.signer, &req.code, &peer.ip().to_string()).await?;
    Ok(Json(resolved))
}

/// `GET /metrics`: OpenMetrics text when the scraper asks for it
/// (Prometheus does), the classic text format otherwise.
pub async fn metrics(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let body = crate::telemetry::metrics::render(&app);
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (kind, body) = proto::exposition::negotiate(accept, body);
    ([(axum::http::header::CONTENT_TYPE, kind)], body).into_response()
}
