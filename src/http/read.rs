//! `GET /api/events/{id}` and `GET /api/streams/{stream}`.
//!
//! Both need a subscribe token and answer only inside its scope. What is outside it is answered
//! exactly like what does not exist (an event: 404 with the same message; a stream: 200 with no
//! events, the answer for any unknown stream), so a token for one site cannot learn whether an id
//! or a stream exists in another.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::store::{RecordedEvent, validate_name};

use super::auth::Subscriber;
use super::{ApiError, AppState};

/// Most events one stream read returns.
const MAX_LIMIT: u32 = 1000;

pub(super) async fn event(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RecordedEvent>, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("event id {:?} is not a UUID", id.chars().take(80).collect::<String>()),
        )
    })?;
    match state.store.read_event(id).await? {
        Some(event) if access.scope().permits(&event) => Ok(Json(event)),
        _ => Err(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no event {id}") }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StreamQuery {
    from_version: Option<String>,
    limit: Option<String>,
}

pub(super) async fn stream(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    stream: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(stream) = stream.map_err(path_error)?;
    // A name the store refuses (e.g. with a NUL, which PostgreSQL text cannot even hold) names no stream.
    validate_name("stream id", &stream).map_err(|e| ApiError::bad_request("invalid_stream", e.to_string()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let number = |name: &str, text: Option<String>, default: u64| -> Result<u64, ApiError> {
        match text {
            None => Ok(default),
            Some(t) => t.parse().map_err(|_| {
                let t: String = t.chars().take(40).collect();
                ApiError::bad_request("invalid_query", format!("{name} {t:?} is not a number"))
            }),
        }
    };
    let from = number("fromVersion", query.from_version, 1)?;
    let limit = number("limit", query.limit, 100)?;
    if limit == 0 || limit > u64::from(MAX_LIMIT) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let scope = access.scope();
    if !scope.permits_stream(&stream) {
        return Ok(no_stream());
    }
    let mut events = state.store.read_stream(&stream, from, limit as u32).await?;
    // A stream belongs to one site, so a token for another site finds no stream at all; a
    // types-limited token gets the stream's events of its types (versions then have gaps).
    if events.first().is_some_and(|first| !scope.permits_site(&first.site)) {
        return Ok(no_stream());
    }
    events.retain(|event| scope.permits(event));
    Ok(Json(json!({ "events": events })))
}

/// What a stream outside the token's scope looks like: exactly the answer for a stream that does
/// not exist (200, no events), so its existence does not leak.
fn no_stream() -> Json<Value> {
    Json(json!({ "events": [] }))
}

/// A path segment that cannot be read (not UTF-8 once percent-decoded), as a JSON 400.
fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", rejection.body_text())
}
