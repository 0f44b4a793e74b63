//! The live dashboard at `/` and the files it loads, embedded in the binary so the one executable
//! is the whole product (no asset directory to deploy or lose).
//!
//! The page runs no inline script or style, so it is served with a Content Security Policy that
//! allows only this origin's files: an injected `<script>` in event data could not run.
//!
//! With authentication on, `/` needs the session cookie that a login link sets (or any reading
//! token): without one it answers 401 with a small static page saying how to get in, so a person
//! who opens the address by hand learns what to do instead of seeing a dashboard that shows
//! nothing. The files under `/assets/` stay public: they are the same for everyone.

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Action;

use super::AppState;
use super::auth::Access;

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
/// The page `/` shows without a session; `{{reason}}` is replaced by why (fixed sentences only).
const LOGIN: &str = include_str!("../../assets/dashboard/login.html");

/// Only this origin's scripts, styles and connections; never framed by another site.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /`: the dashboard page, or, without a valid session, the page that says how to log in.
pub(super) async fn index(State(state): State<AppState>, parts: Parts) -> Response {
    match Access::check(&parts, &state.auth, Action::Subscribe) {
        Ok(_) => page(StatusCode::OK, INDEX.to_string()),
        Err(err) => {
            let reason = match (err.status, err.code) {
                (_, "token_expired") => "Your session has expired.",
                (_, "invalid_token") => {
                    "Your session is not valid on this server (it was made with another secret, or is damaged)."
                }
                (StatusCode::FORBIDDEN, _) => "Your session does not allow reading.",
                _ => "You are not logged in.",
            };
            let mut response = page(StatusCode::UNAUTHORIZED, LOGIN.replace("{{reason}}", reason));
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"flightdeck\""));
            response
        }
    }
}

/// An HTML page with the dashboard's security headers, never cached (it depends on the session).
fn page(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
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
