//! Shared test support: one throwaway PostgreSQL cluster per test binary (started by FlightDeck's
//! own launcher), and a fresh database per test so tests run in parallel without seeing each other.
//! Set FLIGHTDECK_TEST_DATABASE_URL to use an external server instead.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::sync::OnceLock;

use flightdeck::embedded::{EmbeddedOptions, EmbeddedPostgres};
use flightdeck::store::Store;
use tokio_postgres::NoTls;

struct Cluster {
    config: tokio_postgres::Config,
    /// Kept alive for the whole test binary; its lifeline stops and deletes it at process exit.
    embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match std::env::var("FLIGHTDECK_TEST_DATABASE_URL") {
        Ok(url) => Cluster { config: url.parse().expect("FLIGHTDECK_TEST_DATABASE_URL"), embedded: None },
        Err(_) => {
            let pg = EmbeddedPostgres::start(&EmbeddedOptions::ephemeral()).expect("start the test cluster");
            Cluster { config: pg.config(), embedded: Some(pg) }
        }
    })
}

/// One test's private database.
pub struct TestDb {
    pub name: String,
    pub config: tokio_postgres::Config,
    pub store: Store,
}

impl TestDb {
    /// A new connection to this database, outside the store's pool.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = self.config.connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// A new connection LISTENing on `channel`; the payload of each notification it receives goes
    /// to the receiver.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use futures::StreamExt;
        let (client, mut connection) = self.config.connect(NoTls).await.expect("connect");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await.expect("LISTEN");
        (client, rx)
    }

    /// A libpq connection string for child processes (the CLI).
    pub fn url(&self) -> String {
        let c = &self.config;
        let host = match &c.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let mut s = format!("host='{host}' port={} dbname='{}'", c.get_ports()[0], self.name);
        if let Some(user) = c.get_user() {
            s.push_str(&format!(" user='{user}'"));
        }
        if let Some(pw) = c.get_password() {
            s.push_str(&format!(" password='{}'", String::from_utf8_lossy(pw)));
        }
        s
    }
}

/// A fresh, migrated database of its own for one test.
pub async fn test_db() -> TestDb {
    let base = tokio::task::spawn_blocking(|| cluster().config.clone()).await.unwrap();
    let name = format!("fd_test_{:016x}", rand::random::<u64>());
    let (admin, connection) = base.connect(NoTls).await.expect("connect to the test cluster");
    let task = tokio::spawn(connection);
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    drop(admin);
    let _ = task.await;
    let mut config = base.clone();
    config.dbname(&name);
    let store = Store::new(config.clone(), 32).unwrap();
    store.migrate().await.expect("migrate");
    TestDb { name, config, store }
}

/// Waits until the global log's visibility horizon has passed `position`. Global-log reads only
/// show events older than every running transaction in the cluster, and parallel tests keep
/// transactions running, so a read straight after an append may not show it yet (by design).
pub async fn settle(store: &Store, position: flightdeck::store::Position) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.head().await.unwrap() < position {
        assert!(std::time::Instant::now() < deadline, "the log's head never reached {position}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
pub mod app;
pub mod process;
pub mod resilient;
pub mod sites;
pub mod sse;
pub mod ws;
