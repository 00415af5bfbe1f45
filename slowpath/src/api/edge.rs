//! Seed 004's control-plane API: origins, routes (hostname → origin and
//! port), edge nodes with persistent tokens, and the configuration an edge
//! node pulls (`GET /api/v1/edge-nodes/me/config`, with `ETag` and
//! `If-None-Match` so that a pull every few seconds costs a 304); plus the
//! managed certificates of routed hostnames.
//!
//! Every change is published to the local fastpath (its routes and
//! certificates) before the call returns, and wakes the ACME task.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::domain::certs::{self, Certificate};
use crate::domain::domains::{self, Domain, NewDomain};
use crate::domain::edge::{self, EdgeNode, NewEdgeNode, NewOrigin, NewRoute, Origin, Route};
use crate::error::Error;

/// The edge changed: the fastpath enforces it before the call returns,
/// and the ACME task looks for certificates to order.
async fn changed(app: &AppState) -> Result<(), ApiError> {
    app.publisher.sync_edge().await?;
    if let Some(acme) = &app.acme {
        acme.wake();
    }
    if let Some(dns) = &app.dns {
        dns.wake();
    }
    Ok(())
}

/// `POST /api/v1/origins`.
pub async fn create_origin(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewOrigin>,
) -> Result<(StatusCode, Json<Origin>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(edge::create_origin(&app.db, req).await?),
    ))
}

/// `GET /api/v1/origins`.
pub async fn list_origins(State(app): State<AppState>) -> Result<Json<Vec<Origin>>, ApiError> {
    Ok(Json(edge::list_origins(&app.db).await?))
}

/// `GET /api/v1/origins/{id}`.
pub async fn get_origin(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Origin>, ApiError> {
    Ok(Json(edge::get_origin(&app.db, &id).await?))
}

/// `DELETE /api/v1/origins/{id}`.
pub async fn delete_origin(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edge::delete_origin(&app.db, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/routes` (seed 004).
pub async fn create_route(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewRoute>,
) -> Result<(StatusCode, Json<Route>), ApiError> {
    let route = edge::create_route(&app.db, req).await?;
    changed(&app).await?;
    Ok((StatusCode::CREATED, Json(route)))
}

/// `GET /api/v1/routes`.
pub async fn list_routes(State(app): State<AppState>) -> Result<Json<Vec<Route>>, ApiError> {
    Ok(Json(edge::list_routes(&app.db).await?))
}

/// `GET /api/v1/routes/{id}`.
pub async fn get_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Route>, ApiError> {
    Ok(Json(edge::get_route(&app.db, &id).await?))
}

/// `DELETE /api/v1/routes/{id}`: the hostname stops being served as soon
/// as the fastpath has the new table (the call waits for it).
pub async fn delete_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edge::delete_route(&app.db, &id).await?;
    changed(&app).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/edge-nodes`: the token is in this answer only.
pub async fn create_edge_node(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewEdgeNode>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (node, token) = edge::create_edge_node(&app.db, req).await?;
    let mut v = serde_json::to_value(node).unwrap_or_default();
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /api/v1/edge-nodes`.
pub async fn list_edge_nodes(State(app): State<AppState>) -> Result<Json<Vec<EdgeNode>>, ApiError> {
    Ok(Json(edge::list_edge_nodes(&app.db).await?))
}

/// `DELETE /api/v1/edge-nodes/{id}`.
pub async fn delete_edge_node(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edge::delete_edge_node(&app.db, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/edge-nodes/me/config` (edge token): seed 004's payload,
/// `ETag: "<config_hash>"`; 304 when `If-None-Match` names it.
pub async fn my_config(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::auth::edge_node(&app, &headers).await?;
    let routes = edge::resolved(&app.db).await?;
    let tunnel = app.tunnel_addr.as_deref();
    let config = edge::edge_config(&routes, tunnel);
    let hash = config["config_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let etag = format!("\"{hash}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag)], Json(config)).into_response())
}

/// `GET /api/v1/edge-nodes/me/certificates` (edge token): the valid
/// certificates of routed hostnames with their keys, for an edge that
/// terminates TLS itself (seed 004's nginx); `ETag` as for the config.
pub async fn my_certificates(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let node = super::auth::edge_node(&app, &headers).await?;
    let pems = certs::valid_pems(&app.db).await?;
    let list: Vec<Value> = pems
        .iter()
        .map(|(h, c, k)| json!({ "hostname": h, "fullchain_pem": c, "privkey_pem": k }))
        .collect();
    let body = json!({ "certificates": list });
    let etag = format!("\"{}\"", crate::credentials::sha256_hex(&body.to_string()));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // Keys leave the control plane: on the record.
    crate::domain::edge::audit(
        &app.db,
        "edge.certs.pulled",
        json!({ "edge_node": node.id, "certificates": list.len() }),
    )
    .await?;
    Ok(([(header::ETAG, etag)], Json(body)).into_response())
}

/// `GET /api/v1/certificates`: every managed certificate's state, and the
/// ACME task's.
pub async fn list_certificates(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Certificate> = certs::list(&app.db).await?;
    let acme = app.acme.as_ref().map(|a| a.status());
    Ok(Json(json!({ "certificates": list, "acme": acme })))
}

/// `POST /api/v1/certificates/{hostname}/renew`: order a new certificate
/// now; the one in use serves until the new one replaces it.
pub async fn renew_certificate(
    State(app): State<AppState>,
    Path(hostname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let host = edge::hostname("hostname", &hostname)?;
    certs::renew_now(&app.db, &host).await?;
    match &app.acme {
        Some(acme) => acme.wake(),
        None => {
            return Err(
                Error::Unavailable("ACME is not configured (--acme-directory)".into()).into(),
            )
        }
    }
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/v1/domains`: a user's own domain, pending until verified;
/// the answer says what to publish.
pub async fn add_domain(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewDomain>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    Ok((StatusCode::CREATED, Json(domains::add(&app.db, req).await?)))
}

/// `GET /api/v1/domains`.
pub async fn list_domains(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let official = domains::official_suffixes(&app.db).await?;
    Ok(Json(
        json!({ "domains": domains::list(&app.db).await?, "official": official }),
    ))
}

/// `GET /api/v1/domains/{domain}`.
pub async fn get_domain(
    State(app): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Json<Domain>, ApiError> {
    Ok(Json(domains::get(&app.db, &domain).await?))
}

/// `DELETE /api/v1/domains/{domain}`.
pub async fn delete_domain(
    State(app): State<AppState>,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    domains::delete(&app.db, &domain).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?method=` of a verification.
#[derive(Debug, serde::Deserialize)]
pub struct VerifyQuery {
    /// `dns` or `http` (default: the TXT record, then the HTTP token).
    #[serde(default)]
    pub method: Option<String>,
}

/// `POST /api/v1/domains/{domain}/verify`: look for the token now. 200
/// with the domain verified, or 403 naming `domain` with what each check
/// found (recorded as the domain's `last_error`).
pub async fn verify_domain(
    State(app): State<AppState>,
    Path(domain): Path<String>,
    Query(q): Query<VerifyQuery>,
) -> Result<Json<Domain>, ApiError> {
    let d = domains::get(&app.db, &domain).await?;
    let methods: &[&str] = match q.method.as_deref() {
        None | Some("") => &["dns", "http"],
        Some("dns") => &["dns"],
        Some("http") => &["http"],
        Some(other) => {
            return Err(Error::invalid(
                "method",
                format!("method {other:?} is not one of dns, http"),
            )
            .into())
        }
    };
    let verifier = app
        .verifier
        .as_ref()
        .map_err(|e| Error::Unavailable(format!("no resolver to verify with: {e}")))?;
    let mut why = Vec::new();
    for m in methods {
        let r = match *m {
            "dns" => verifier.dns(&d.domain, &d.token).await,
            _ => verifier.http(&d.domain, &d.token).await,
        };
        match r {
            Ok(()) => {
                return Ok(Json(
                    domains::record_check(&app.db, &d.domain, Ok(m)).await?,
                ))
            }
            Err(e) => why.push(format!("{m}: {e}")),
        }
    }
    let why = why.join("; ");
    domains::record_check(&app.db, &d.domain, Err(&why)).await?;
    Err(Error::Refused {
        field: Some("domain".into()),
        message: format!("domain {:?} is not verified: {why}", d.domain),
    }
    .into())
}

/// `GET /api/v1/dns/records`: what the DNS manager keeps in its zone.
pub async fn dns_records(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let records = domains::dns_records(&app.db).await?;
    let manager = app.dns.as_ref().map(|d| d.status());
    Ok(Json(json!({ "records": records, "manager": manager })))
}
