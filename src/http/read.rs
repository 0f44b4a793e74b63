//! `GET /api/events/{id}` and `GET /api/streams/{stream}`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::store::{RecordedEvent, validate_name};

use super::{ApiError, AppState};

/// Most events one stream read returns.
const MAX_LIMIT: u32 = 1000;

pub(super) async fn event(
    State(state): State<AppState>,
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
        Some(event) => Ok(Json(event)),
        None => Err(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no event {id}") }),
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
    let events = state.store.read_stream(&stream, from, limit as u32).await?;
    Ok(Json(json!({ "events": events })))
}

/// A path segment that cannot be read (not UTF-8 once percent-decoded), as a JSON 400.
fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", rejection.body_text())
}
