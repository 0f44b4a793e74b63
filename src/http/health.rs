//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// The process is up (says nothing about the database).
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database is reachable and migrated and the listener connected, so events flow.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let bus = state.bus()?;
    state.store.ping().await?;
    if bus.delivers() && !bus.listener_connected() {
        return Err(ApiError::unavailable("the LISTEN connection is down; reconnecting"));
    }
    Ok(Json(json!({"status": "ready"})))
}
