//! Security headers every answer carries.
//!
//! `X-Content-Type-Options: nosniff` on everything: a browser must take each answer for the type it
//! is labelled with, so that, say, an event's JSON that happens to look like HTML or script is
//! never run as such. The dashboard's own headers (its Content Security Policy, framing and
//! referrer rules) are set in `dashboard.rs`.

use axum::http::{HeaderValue, header};
use axum::response::Response;

/// Adds `X-Content-Type-Options: nosniff` to `response`.
pub(super) async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
