//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// The process is up (says nothing about the database).
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database is reachable and migrated, so requests can be served.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::unavailable("the database is not ready yet (FlightDeck is still connecting)"));
    }
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
