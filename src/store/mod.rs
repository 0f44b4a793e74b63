//! The event store: the source of truth for everything FlightDeck delivers.
//!
//! Events are appended to streams (with optimistic concurrency and idempotent retries) and read
//! back by stream, by id, or from the global log, whose single order every reader shares. The SQL
//! lives in `migrations/`; this module is the typed Rust face of it. [`Store`] owns a connection
//! pool; [`append_in`] appends inside a transaction the caller already has open.

mod append;
mod error;
mod event;
mod fast_append;
mod group;
mod migrate;
mod position;
mod read;
mod seed_append;
mod versions;

pub use append::append_in;
pub use error::StoreError;
pub(crate) use event::validate_append;
pub use event::{
    AppendOutcome, AppendedEvent, DEFAULT_SITE, ExpectedVersion, MAX_NAME_BYTES, MAX_SITE_BYTES, NewEvent,
    RecordedEvent, ValidationError, is_valid_site, metadata_object, validate_name, validate_site,
};
pub use group::{CommitHooks, GroupCommit, GroupStats, MAX_BATCH, READ_BEHIND};
pub use position::{Position, PositionError};
pub use seed_append::SEED_CHANNEL;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// How often the store's own append retries a transient race before giving up.
const APPEND_ATTEMPTS: u32 = 20;

/// A handle on the event store. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    versions: std::sync::Arc<versions::Versions>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool.status()).finish()
    }
}

impl Store {
    /// A store over a pool of at most `max_connections` connections made from `config`. Connects
    /// lazily: an unreachable database shows up on first use, not here.
    pub fn new(config: tokio_postgres::Config, max_connections: usize) -> Result<Self, StoreError> {
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            // The most recently used connection first: at 1,000 lone appends/s one PostgreSQL
            // backend stays hot instead of each append waking the next of several in turn, which
            // cost PostgreSQL about a fifth more CPU (docs/benchmarks.md, session 8). Connections
            // left idle at the bottom are checked when next taken (`RecyclingMethod::Fast`).
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Store { pool, versions: Default::default() })
    }

    /// A store over a pool of its own (at most `max_connections`, made from `config`) that shares
    /// this one's memory of stream versions: for work on another runtime, whose connections must
    /// be opened there (a connection's I/O task runs on the runtime that opened it).
    pub fn sibling(&self, config: tokio_postgres::Config, max_connections: usize) -> Result<Self, StoreError> {
        let fresh = Store::new(config, max_connections)?;
        Ok(Store { pool: fresh.pool, versions: self.versions.clone() })
    }

    /// The connection pool, for callers that need a raw connection (e.g. to open a transaction
    /// and call [`append_in`]).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Applies pending schema migrations; returns how many ran.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        migrate::migrate(&mut client).await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Appends `events` to `stream` of `site` atomically in a transaction of its own, retrying
    /// transient races with concurrent appenders. A retried request (same ids, same content)
    /// writes nothing and returns what was stored the first time. A stream belongs to the site of
    /// its first event: naming another is [`StoreError::SiteMismatch`].
    pub async fn append(
        &self,
        site: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        let events = event::with_ids(events);
        let events = &*events;
        let mut attempt = 0;
        loop {
            let client = self.pool.get().await?;
            match fast_append::append(&client, &self.versions, site, stream, expected, events).await {
                Err(StoreError::Retry) if attempt + 1 < APPEND_ATTEMPTS => {
                    attempt += 1;
                    let jitter = rand::random::<u64>() % (1 + u64::from(attempt) * 2);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                other => return other,
            }
        }
    }

    /// Like [`Store::append`], with the global log read after `after` right behind the insert in
    /// the same round trip: the group-commit worker's path for a lone append (see `group.rs`,
    /// [`CommitHooks::read_from`]). `done` gets the append's outcome as soon as it is known; the
    /// page comes back (`None` if the read failed).
    pub(crate) async fn append_then_read(
        &self,
        site: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        after: Position,
        done: impl FnOnce(Result<AppendOutcome, StoreError>),
    ) -> Option<Vec<RecordedEvent>> {
        let events = event::with_ids(events);
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(err) => {
                done(Err(err.into()));
                return None;
            }
        };
        let mut done = Some(done);
        let mut retry = false;
        let page =
            fast_append::append_then_read(&client, &self.versions, site, stream, expected, &events, after, |out| {
                match out {
                    // A race to retry: the retrying path below, without a read.
                    Err(StoreError::Retry) => retry = true,
                    out => {
                        if let Some(done) = done.take() {
                            done(out)
                        }
                    }
                }
            })
            .await;
        drop(client);
        if retry && let Some(done) = done.take() {
            done(self.append(site, stream, expected, &events).await);
        }
        page
    }

    /// Reads a stream's events from version `from_version` (inclusive), at most `limit`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.pool.get().await?;
        read::stream(&**client, stream, from_version, limit).await
    }

    /// Reads one event by id.
    pub async fn read_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let client = self.pool.get().await?;
        read::event(&**client, id).await
    }

    /// Reads the global log after `after` (exclusive), at most `limit` events, in log order.
    /// Never returns an event ordered before one a previous call returned.
    pub async fn read_all(&self, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.pool.get().await?;
        read::all(&client, after, limit).await
    }

    /// The position of the last event readers can see ([`Position::START`] if none).
    pub async fn head(&self) -> Result<Position, StoreError> {
        let client = self.pool.get().await?;
        read::head(&**client).await
    }
}
