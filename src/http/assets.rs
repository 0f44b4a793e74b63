//! `GET /flightdeck.js`: the browser client, compiled into the binary.
//!
//! The client (`assets/flightdeck.js`, an ES module without dependencies) ships inside the server so
//! that a page can `import { subscribe } from '/flightdeck.js'` with no build step, and always gets
//! the client that speaks this server's protocol. It is revalidated on every use (`no-cache` plus an
//! `ETag` of its content, answered with 304 when unchanged), so an upgraded server never leaves
//! browsers on an old client. Module scripts are fetched in CORS mode, so it is readable from any
//! origin (it is public code).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The client's source.
pub(crate) const CLIENT_JS: &str = include_str!("../../assets/flightdeck.js");

/// FNV-1a over the source, computed at compile time: the client's `ETag`.
const CLIENT_HASH: u64 = fnv1a(CLIENT_JS.as_bytes());

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

pub(super) async fn client_js(headers: HeaderMap) -> Response {
    let etag = format!("\"{CLIENT_HASH:016x}\"");
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if unchanged { StatusCode::NOT_MODIFIED.into_response() } else { CLIENT_JS.into_response() };
    let out = response.headers_mut();
    if !unchanged {
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    response
}
