//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every route, written by hand in
//! `assets/openapi.json` and compiled into the binary.
//!
//! It is the contract the API is tested against: `tests/openapi.rs` checks that it lists every
//! route of [`super::router`], and `scripts/api-fuzz.sh` runs schemathesis against a live server
//! with it (no 5xx, every answer as described). Keep it in step when a route changes.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The description, as served.
pub(crate) const OPENAPI_JSON: &str = include_str!("../../assets/openapi.json");

/// `GET /api/openapi.json`.
pub(super) async fn document() -> Response {
    let mut response = OPENAPI_JSON.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
