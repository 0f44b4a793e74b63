//! The live dashboard at `/` and the files it loads, embedded in the binary so the one executable
//! is the whole product (no asset directory to deploy or lose).
//!
//! The page runs no inline script or style, so it is served with a Content Security Policy that
//! allows only this origin's files: an injected `<script>` in event data could not run.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Files under `/assets/`: path, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    ("dashboard/dashboard.js", JAVASCRIPT, include_str!("../../assets/dashboard/dashboard.js")),
    ("dashboard/dashboard.css", CSS, include_str!("../../assets/dashboard/dashboard.css")),
    ("dashboard/icon.svg", "image/svg+xml", include_str!("../../assets/dashboard/icon.svg")),
    ("vendor/uPlot.esm.js", JAVASCRIPT, include_str!("../../assets/vendor/uPlot.esm.js")),
    ("vendor/uPlot.min.css", CSS, include_str!("../../assets/vendor/uPlot.min.css")),
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const INDEX: &str = include_str!("../../assets/dashboard/index.html");

/// Only this origin's scripts, styles and connections; never framed by another site.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /`: the dashboard page.
pub(super) async fn index() -> Response {
    let mut response = file("text/html; charset=utf-8", INDEX);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// `GET /assets/{*path}`: the dashboard's scripts and styles.
pub(super) async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => file(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a new binary's page never runs with an old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
