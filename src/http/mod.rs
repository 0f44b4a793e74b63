//! The HTTP face of FlightDeck, as an axum [`Router`] an application can mount in its own server.

mod error;
mod health;

pub use error::ApiError;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::get;

use crate::store::Store;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The event store.
    pub store: Store,
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// State over `store`; not ready until [`AppState::set_ready`] (the schema is migrated).
    pub fn new(store: Store) -> Self {
        AppState { store, ready: Arc::new(AtomicBool::new(false)) }
    }

    /// Marks the database as prepared (reachable and migrated) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the database has been prepared.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// FlightDeck's routes.
pub fn router(state: AppState) -> Router {
    Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz)).with_state(state)
}
