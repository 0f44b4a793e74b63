//! The HTTP face of FlightDeck, as an axum [`Router`] an application can mount in its own server:
//! ingestion, reads, the Server-Sent Events stream, the WebSocket, and health probes.

mod assets;
pub mod auth;
mod dashboard;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod ingest;
mod limits;
mod metrics;
mod openapi;
mod read;
mod security;
mod sse;
mod stats;
mod tracker;
mod ws;

pub use error::ApiError;
pub use limits::{AddrRange, AddrRangeError, LimitsConfig, Rate};
pub use tracker::MAX_TRACK_BODY;
pub use ws::WsConfig;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::projections::Projections;
use crate::sites::SiteDirectory;
use crate::store::Store;

/// Largest request body accepted by default (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The event store.
    pub store: Store,
    /// Set once the database is prepared and the bus runs; until then the API answers 503.
    bus: Arc<OnceLock<Bus>>,
    max_body: usize,
    /// The stats projector, for the live stats stream; set once it runs.
    projections: Arc<OnceLock<Projections>>,
    /// Limits and timers of `/ws/events`.
    ws: WsConfig,
    /// Rate, stream and filter limits (`limits.rs`), shared by every clone.
    limits: Arc<limits::Limiter>,
    /// Who may read and write what (`auth.rs`). Refuses everything until configured.
    auth: Auth,
    /// The registered sites and their origins, which the tracker's routes admit requests by.
    sites: SiteDirectory,
}

impl AppState {
    /// State over `store`; not ready until [`AppState::set_bus`].
    pub fn new(store: Store) -> Self {
        AppState {
            bus: Arc::new(OnceLock::new()),
            max_body: DEFAULT_MAX_BODY,
            projections: Arc::new(OnceLock::new()),
            ws: WsConfig::default(),
            limits: Arc::new(limits::Limiter::new(LimitsConfig::default())),
            auth: Auth::default(),
            sites: SiteDirectory::new(store.clone()),
            store,
        }
    }

    /// State for an application that runs its own bus.
    pub fn with_bus(bus: Bus) -> Self {
        let state = AppState::new(bus.store().clone());
        state.set_bus(bus);
        state
    }

    /// Sets the largest accepted request body, in bytes.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the WebSocket limits and timers (see [`WsConfig`]).
    pub fn ws_config(mut self, config: WsConfig) -> Self {
        self.ws = config;
        self
    }

    /// Sets the rate, stream, filter and tracker body limits (see [`LimitsConfig`]; the default is
    /// [`LimitsConfig::default`]).
    pub fn limits(mut self, config: LimitsConfig) -> Self {
        self.limits = Arc::new(limits::Limiter::new(config));
        self
    }

    /// Sets who may read and write what. Until this is called every route that needs a token
    /// refuses every request: choose [`Auth::tokens`], or knowingly [`Auth::disabled`].
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets how often the tracker's site directory checks the registry for changes (default
    /// [`SiteDirectory::REFRESH`]): a site added or removed takes effect within this long.
    pub fn site_refresh(mut self, refresh: std::time::Duration) -> Self {
        self.sites = SiteDirectory::with_refresh(self.store.clone(), refresh);
        self
    }

    /// The directory of registered sites the tracker admits requests by. An application that
    /// changes sites itself ([`crate::sites::add`]) calls [`SiteDirectory::invalidate`] on it to
    /// have the change take effect at once rather than within a second.
    pub fn sites(&self) -> &SiteDirectory {
        &self.sites
    }

    /// Makes the API ready: the database is migrated and `bus` delivers events.
    pub fn set_bus(&self, bus: Bus) {
        let _ = self.bus.set(bus);
    }

    /// Whether the database has been prepared and the bus started.
    pub fn is_ready(&self) -> bool {
        self.bus.get().is_some()
    }

    /// Hands the running stats projector to the live stats stream (`/api/stats/stream`).
    pub fn set_projections(&self, projections: Projections) {
        let _ = self.projections.set(projections);
    }

    /// The stats projector, or a 503 if this server runs none (yet).
    pub(crate) fn projections(&self) -> Result<&Projections, ApiError> {
        self.projections.get().ok_or_else(|| ApiError::unavailable("the stats projector is not running (yet)"))
    }

    /// The bus, or a 503 while FlightDeck is still starting.
    pub(crate) fn bus(&self) -> Result<&Bus, ApiError> {
        self.bus.get().ok_or_else(|| ApiError::unavailable("FlightDeck is still connecting to its database"))
    }
}

/// FlightDeck's routes.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{*path}", get(dashboard::asset))
        .route("/login", get(auth::login))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/flightdeck.js", get(assets::client_js))
        .route("/api/events", get(sse::stream).post(ingest::ingest))
        .route("/api/events/{id}", get(read::event))
        .route("/api/streams/{stream}", get(read::stream))
        .route("/ws/events", get(ws::events))
        .route("/api/openapi.json", get(openapi::document))
        .merge(tracker::routes(state.clone()))
        .merge(stats::routes())
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(security::nosniff))
        .with_state(state)
}
