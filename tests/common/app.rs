//! A FlightDeck HTTP server inside the test process, on a real loopback socket.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use flightdeck::auth::Auth;
use flightdeck::bus::{Bus, BusOptions};
use flightdeck::http::{AppState, router};
use flightdeck::sites::SiteDirectory;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TestDb;

pub struct App {
    pub base: String,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub http: reqwest::Client,
    /// The server's copy of the sites registry (`register_sites` refreshes it).
    pub sites: SiteDirectory,
    /// The server's store.
    pub store: flightdeck::store::Store,
}

impl App {
    /// The routes over `db` with a running bus (request bodies up to 256 KiB).
    pub async fn start(db: &TestDb) -> App {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bus = Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks)
            .await
            .unwrap();
        App::serve(AppState::with_bus(bus).max_body(256 * 1024).auth(Auth::disabled()), shutdown, tasks).await
    }

    /// Serves `state` until `shutdown`, with the peer address (`ConnectInfo`) as `serve` does.
    pub async fn serve(state: AppState, shutdown: CancellationToken, tasks: TaskTracker) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (sites, store) = (state.sites().clone(), state.store.clone());
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        tasks.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
        App { base, shutdown, tasks, http: reqwest::Client::new(), sites, store }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs to /api/events; returns the status and the JSON body.
    pub async fn post(&self, body: Value) -> (u16, Value) {
        let r = self.http.post(self.url("/api/events")).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(20), self.tasks.wait()).await.expect("server stops");
    }
}
