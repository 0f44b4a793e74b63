//! The tracker's two routes: `GET /track.js` (the script a website includes) and
//! `POST /api/track` (where it sends events), plus the CORS preflight.
//!
//! The tracker runs on other sites' pages, so the ingestion route is public, but a batch is
//! accepted only for a registered site and from one of that site's origins (the request's `Origin`
//! header; the registry is `src/sites/`, managed with `flightdeck site …`). Refusals are 403s that
//! say what the site's owner must run. CORS answers echo the request's `Origin` (with
//! `Vary: Origin`) when some registered site allows it, and nothing otherwise, so a page on an
//! unknown origin is not even allowed to read the answers. The route accepts `text/plain`:
//! `navigator.sendBeacon` and a "simple" `fetch` cannot send `application/json` across origins
//! without a preflight. A resent batch (the same event ids) is recognized by the store and stores
//! nothing; a batch mixing already stored events with new ones stores only the new ones. Either way
//! the answer says how many were new.
//!
//! What a batch can write is fixed by the server, whatever the page sends: only the tracker's
//! event types (`src/tracker/schema.rs`), only to the session's stream `visit-<site>:<session>`.
//!
//! Limits (`limits.rs`): requests per client address, checked before the body is read, then
//! events per site once the batch is parsed and admitted (429 with `Retry-After`, which the
//! tracker retries).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::sites::{Admission, Origin};
use crate::store::{ExpectedVersion, NewEvent, StoreError};
use crate::tracker::{self, TrackBatch, TrackError};

use super::limits::{IngestPermit, Limit};
use super::{ApiError, AppState};

/// The tracker script, built into the binary.
const SCRIPT: &str = include_str!("../../assets/track.js");
/// Largest tracker request by default (`LimitsConfig::max_track_body`, `--max-track-body`): what
/// `sendBeacon` and `fetch(…, {keepalive: true})` may send anyway.
pub const MAX_TRACK_BODY: usize = 64 * 1024;
/// How often a resend that raced with its own first attempt is retried before giving up (503).
const DEDUP_ROUNDS: usize = 3;

/// The tracker's routes, to be merged into FlightDeck's router.
pub(super) fn routes(state: AppState) -> Router<AppState> {
    let max_body = state.limits.config().max_track_body;
    let script = Router::new().route("/track.js", get(script)).route_layer(axum::middleware::map_response(any_origin));
    let ingest = Router::new()
        .route("/api/track", post(track).options(preflight))
        .route_layer(DefaultBodyLimit::max(max_body))
        .route_layer(axum::middleware::from_fn_with_state(state, cors));
    script.merge(ingest)
}

/// `GET /track.js`.
async fn script() -> Response {
    let mut response = SCRIPT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    // Short enough that a new FlightDeck version reaches visitors soon.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// The script is public and the same for everyone: any origin may read it (a
/// `<script crossorigin>` needs this to report its errors).
async fn any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// CORS for `POST /api/track` and its preflight, on every answer (refusals by the limits and the
/// body size included, so the tracker can read them): the request's `Origin` is echoed if some
/// registered site allows it. The POST itself is checked against its own site in [`track`].
async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    response.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
    // Before the database is ready the registry cannot be read (and the answer is a 503 anyway).
    if let Some(origin) = origin
        && state.is_ready()
        && state.sites.allows_origin(origin.to_str().unwrap_or(NOT_TEXT)).await.unwrap_or(false)
    {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

/// An `Origin` header that is not visible ASCII stands for itself as this (no origin is; only `*`
/// accepts it).
const NOT_TEXT: &str = "(not text)";

/// A 403 from the sites registry.
fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError { status: StatusCode::FORBIDDEN, code, message }
}

/// The request's `Origin`, or `origin_required`: browsers always send it on a POST and on a
/// preflight, so only other clients omit it, and they must say which origin they send for.
fn request_origin(headers: &HeaderMap) -> Result<&str, ApiError> {
    match headers.get(header::ORIGIN) {
        Some(value) => Ok(value.to_str().unwrap_or(NOT_TEXT)),
        None => Err(forbidden(
            "origin_required",
            "the Origin header is missing: tracker requests are accepted only from the origins registered for \
             their site, and browsers always send it; other clients send the site's origin, e.g. \
             Origin: https://www.example.com"
                .into(),
        )),
    }
}

/// The origin as a person should type it in `flightdeck site add … --origin …`.
fn shown(origin: &str) -> String {
    match Origin::parse(origin) {
        Ok(origin) => origin.to_string(),
        Err(_) => origin.chars().take(80).collect(),
    }
}

/// `OPTIONS /api/track`: the CORS preflight a browser sends before a cross-origin
/// `application/json` POST. Granted (by [`cors`]) only to an origin some registered site allows.
async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let origin = request_origin(&headers)?;
    state.bus()?;
    if !state.sites.allows_origin(origin).await? {
        let origin = shown(origin);
        return Err(forbidden(
            "origin_not_allowed",
            format!(
                "no registered site accepts events from {origin}; the site's owner allows it with \
                 `flightdeck site add <site> --origin {origin}`"
            ),
        ));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    Ok(response)
}

/// Refuses a batch for `site` unless the site is registered and `origin` is one of its origins.
async fn admit(state: &AppState, site: &str, origin: &str) -> Result<(), ApiError> {
    state.bus()?;
    match state.sites.admit(site, origin).await? {
        Admission::Allowed => Ok(()),
        Admission::UnknownSite => Err(forbidden(
            "unknown_site",
            format!(
                "site {site:?} is not registered on this server; its owner registers it with \
                 `flightdeck site add {site} --origin {}`",
                shown(origin)
            ),
        )),
        Admission::OriginNotAllowed => {
            let origin = shown(origin);
            Err(forbidden(
                "origin_not_allowed",
                format!(
                    "site {site:?} does not accept events from {origin}; if that is the site's own website, its \
                     owner allows it with `flightdeck site add {site} --origin {origin}`"
                ),
            ))
        }
    }
}

/// `POST /api/track`: `202 {"accepted": new events, "duplicates": events already stored}`.
async fn track(
    State(state): State<AppState>,
    _permit: IngestPermit,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> axum::response::Result<(StatusCode, Json<Value>)> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    if !matches!(media.as_deref(), None | Some("text/plain" | "application/json")) {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "send the batch as JSON with Content-Type text/plain or application/json".into(),
        }
        .into());
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            state.limits.count(Limit::BodySize);
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: format!(
                    "the request body is larger than the limit of {} bytes; send fewer events",
                    state.limits.config().max_track_body
                ),
            }
        }
        _ => ApiError::bad_request("bad_body", rejection.body_text()),
    })?;
    let batch = tracker::parse(&body).map_err(|err| match err {
        TrackError::Malformed(_) => ApiError::bad_request("malformed_json", err.to_string()),
        TrackError::Invalid(_) => ApiError::bad_request("invalid_event", err.to_string()),
    })?;
    let origin = request_origin(&headers)?;
    admit(&state, &batch.site, origin).await?;
    state.limits.admit_site(&batch.site, batch.events.len())?;
    let (accepted, duplicates) = append(&state, batch).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted, "duplicates": duplicates}))))
}

/// Appends the batch to its session's stream; returns (new events, events already stored).
async fn append(state: &AppState, batch: TrackBatch) -> Result<(usize, usize), ApiError> {
    let bus = state.bus()?;
    let stream = batch.stream();
    let total = batch.events.len();
    let mut events = batch.events;
    for _ in 0..DEDUP_ROUNDS {
        match bus.append(&batch.site, &stream, ExpectedVersion::Any, &events).await {
            // Every one stored already: a resend (or one racing with its first attempt).
            Ok(out) if out.already_stored => return Ok((0, total)),
            Ok(out) => return Ok((out.events.len(), total - out.events.len())),
            // Some of these ids are stored (a resend merged with new events) or one was used for
            // something else: keep only the events not stored yet. The first write of an id wins.
            Err(StoreError::IdReused(_)) => {
                let ids: Vec<_> = events.iter().filter_map(|e| e.id).collect();
                let stored = tracker::stored_ids(bus.store(), &ids).await?;
                events.retain(|e: &NewEvent| e.id.is_none_or(|id| !stored.contains(&id)));
                if events.is_empty() {
                    return Ok((0, total));
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::unavailable("the batch kept conflicting with a concurrent resend of itself; send it again"))
}
