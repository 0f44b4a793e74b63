//! Registering tracker sites, which `POST /api/track` requires (src/sites/).
#![allow(dead_code, clippy::unwrap_used)]

use flightdeck::sites::{AddMode, Origin};
use flightdeck::store::Store;

use super::app::App;

/// The origin test pages "are served from": what tests send as `Origin` and register.
pub const ORIGIN: &str = "https://www.example.test";

/// Registers `sites`, each accepting events from [`ORIGIN`] (idempotent).
pub async fn register(store: &Store, sites: &[&str]) {
    for site in sites {
        flightdeck::sites::add(store, site, &[Origin::parse(ORIGIN).unwrap()], AddMode::Merge).await.unwrap();
    }
}

impl App {
    /// Registers `sites` (see [`register`]) and makes this server take them up at once.
    pub async fn register_sites(&self, sites: &[&str]) {
        register(&self.store, sites).await;
        self.sites.invalidate();
    }
}
