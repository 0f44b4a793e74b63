//! The tracker's two routes: `GET /track.js` (the script a website includes) and
//! `POST /api/track` (where it sends events), plus the CORS preflight.
//!
//! The tracker runs on other sites' pages, so the ingestion route answers any origin
//! (`Access-Control-Allow-Origin: *`; issue 6 narrows this to each site's allowed origins) and
//! accepts `text/plain`: `navigator.sendBeacon` and a "simple" `fetch` cannot send
//! `application/json` across origins without a preflight. A resent batch (the same event ids) is
//! recognized by the store and stores nothing; a batch mixing already stored events with new ones
//! stores only the new ones. Either way the answer says how many were new.
//!
//! Limits (`limits.rs`): requests per client address, checked before the body is read, then
//! events per site once the batch is parsed (429 with `Retry-After`, which the tracker retries).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

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
pub(super) fn routes(max_body: usize) -> Router<AppState> {
    Router::new()
        .route("/track.js", get(script))
        .route("/api/track", axum::routing::post(track).options(preflight))
        .route_layer(DefaultBodyLimit::max(max_body))
        .route_layer(axum::middleware::map_response(any_origin))
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

/// Every answer of these routes, errors included, may be read by any origin.
async fn any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `OPTIONS /api/track`: the CORS preflight a browser sends before a cross-origin
/// `application/json` POST.
async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
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
