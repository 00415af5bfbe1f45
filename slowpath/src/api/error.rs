//! How the API says no: every failure is `{"error": "...", "field": ...}`
//! with a status that fits, and request bodies are parsed by [`JsonBody`],
//! which names the offending field instead of answering a bare 400/422.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// An API failure: status, message, and the field to blame if any.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Field path, e.g. `scope.port_pool`.
    pub field: Option<String>,
    /// Seconds until a retry may succeed (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// A 400 naming `field`.
    pub fn bad_field(field: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field,
            retry_after: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Invalid { field, message } => ApiError::bad_field(field, message),
            Error::Refused { field, message } => ApiError {
                status: StatusCode::FORBIDDEN,
                message,
                field,
                retry_after: None,
            },
            Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            Error::Gone(m) => ApiError::new(StatusCode::GONE, m),
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            Error::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            e @ (Error::Db(_) | Error::Internal(_)) => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (details in the slowpath log)",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "field": self.field });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A JSON request body whose parse errors name the field.
pub struct JsonBody<T>(pub T);

/// serde_json's message without its " at line 1 column 9" tail.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// The name between the first pair of backticks in a serde message.
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Turns a body parse failure into a 400 naming the field.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let message = inner.to_string();
    let message = strip_position(&message);
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::bad_field(None, format!("malformed JSON body: {message}"));
    }
    let path = e.path().to_string();
    let parent = if path == "." { String::new() } else { path };
    // A missing field is reported at its parent; name the field itself (an
    // unknown field's path already ends with its name).
    let field = if message.starts_with("missing field") {
        match quoted_name(message) {
            Some(name) if parent.is_empty() => name.to_owned(),
            Some(name) => format!("{parent}.{name}"),
            None => parent,
        }
    } else {
        parent
    };
    let field = (!field.is_empty()).then_some(field);
    let text = match &field {
        Some(f) => format!("invalid field {f}: {message}"),
        None => format!("invalid body: {message}"),
    };
    ApiError::bad_field(field, text)
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_field(None, format!("cannot read body: {e}")))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value: T = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(|e| {
            ApiError::bad_field(
                None,
                format!("malformed JSON body: {}", strip_position(&e.to_string())),
            )
        })?;
        Ok(JsonBody(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port_pool: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        max_uses: u32,
        #[serde(default)]
        scope: Option<Inner>,
    }

    fn parse(text: &str) -> ApiError {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize::<_, Outer>(&mut de)
            .map(|_| ())
            .map_err(json_error)
            .unwrap_err()
    }

    #[test]
    fn names_the_field() {
        assert_eq!(
            parse(r#"{"max_uses": "x"}"#).field.as_deref(),
            Some("max_uses")
        );
        assert_eq!(
            parse(r#"{"max_uses": -1}"#).field.as_deref(),
            Some("max_uses")
        );
        assert_eq!(parse(r#"{}"#).field.as_deref(), Some("max_uses"));
        assert_eq!(
            parse(r#"{"max_uses": 1, "scope": {"port_pool": 5}}"#)
                .field
                .as_deref(),
            Some("scope.port_pool")
        );
        assert_eq!(
            parse(r#"{"max_uses": 1, "scope": {}}"#).field.as_deref(),
            Some("scope.port_pool")
        );
        assert_eq!(
            parse(r#"{"max_uses": 1, "nope": 1}"#).field.as_deref(),
            Some("nope")
        );
        let e = parse(r#"{"max_uses": "#);
        assert_eq!(e.field, None);
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }
}
