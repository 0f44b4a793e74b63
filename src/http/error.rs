//! The one error type every handler returns, rendered as `{"error":{"code","message"}}` with the
//! HTTP status that tells a client whose problem it is.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::{StoreError, ValidationError};

/// An API error: status, stable machine-readable code, and a message a person can act on.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `version_conflict`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// A 400 for input the client must fix.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    /// A 503 for a temporary server-side condition.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let (status, code) = match &err {
            StoreError::Invalid(ValidationError::Site(_)) => (StatusCode::BAD_REQUEST, "invalid_site"),
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            StoreError::Position(_) => (StatusCode::BAD_REQUEST, "invalid_position"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::SiteMismatch { .. } => (StatusCode::CONFLICT, "stream_site_mismatch"),
            StoreError::IdReused(_) => (StatusCode::CONFLICT, "id_reused"),
            StoreError::Retry | StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::SchemaTooNew { .. } | StoreError::Database(_) => {
                tracing::error!(error = %err, "database error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError { status, code, message: err.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.code == "token_required" { "Bearer" } else { "Bearer error=\"invalid_token\"" };
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static(challenge));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
