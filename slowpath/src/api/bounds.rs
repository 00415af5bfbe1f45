//! Request bodies within bounds: each route of [`super::ROUTES`] names its
//! body limit, and [`read_body`] reads the body before the handler runs,
//! within that limit and [`BODY_READ_TIMEOUT`], after the caller's key was
//! checked ([`super::auth::guard`]). A declared length over the limit is
//! refused from the headers; a chunked body as soon as it passes it.
//!
//! Memory then follows the limit: a connection holds at most its route's
//! limit of body (the anonymous routes' are a few KiB), however large a
//! length it announces, and a stalled upload is cut off.

use std::time::Duration;

use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::error::ApiError;

/// Routes that take no body (GET, DELETE, revoke): room for a stray `{}`.
pub const BODY_LIMIT_EMPTY: usize = 1024;
/// `POST /invites/resolve`: `{"code": "..."}`.
pub const BODY_LIMIT_RESOLVE: usize = 4 * 1024;
/// The frps server-plugin hooks: frps forwards a Login or NewProxy message.
pub const BODY_LIMIT_FRPS_HOOK: usize = 16 * 1024;
/// Nodes, invites and heartbeats.
pub const BODY_LIMIT_REQUEST: usize = 16 * 1024;
/// A tenant record (seed 002 JSON).
pub const BODY_LIMIT_TENANT: usize = 64 * 1024;
/// Event batches a node agent ships at once (it sends at most 4 MiB).
pub const BODY_LIMIT_EVENTS: usize = 8 << 20;

/// Time to receive a whole request body once its head is in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal after which the rest of the body is not read: the connection
/// is closed rather than kept alive past unread bytes.
fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = ApiError::new(status, message).into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn too_large(limit: usize) -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than this route's limit of {limit} bytes"),
    )
}

/// Reads the body (at most `limit` bytes, within [`BODY_READ_TIMEOUT`]) and
/// hands the request on with the body in memory: 413 past the limit, 408
/// when it does not arrive in time.
pub async fn read_body(limit: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    // hyper's hint is the declared Content-Length: refuse before reading.
    if body.size_hint().lower() > limit as u64 {
        return too_large(limit);
    }
    let bytes =
        match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(limit),
            Ok(Err(e)) => {
                return refuse(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"));
            }
            Err(_) => {
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                );
            }
        };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
