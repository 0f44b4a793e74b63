//! Projections: the tracker's numbers (page views, sessions, interactions, form submissions), kept
//! in PostgreSQL tables up to date from the log, so a dashboard reads a few rows instead of
//! recounting events.
//!
//! The *projector* ([`Projections::start`]) is a bus subscriber in the server. It applies each
//! chunk of events and advances its checkpoint in one transaction (`apply.rs`), so each event is
//! counted exactly once: a crash rolls back both, a restart resumes after the checkpoint, and a
//! second projector (two servers on one database) or a [`rebuild`] that moved the checkpoint makes
//! the apply refuse and resume from wherever the checkpoint now is. `rebuild.rs` recomputes
//! everything from the start of the log; `query.rs` answers the stats API from the tables. Only the
//! tracker's events count: the three tracker types on `visit-` streams (see [`crate::tracker`]).

mod apply;
mod projector;
mod query;
mod rebuild;
mod tally;

pub use query::{ElementCount, FormCount, Minute, PageCount, Stats, StatsQuery, Totals, stats};
pub use rebuild::{RebuildSummary, rebuild};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::store::{Position, Store, StoreError};

/// The name of the stats projection's checkpoint row.
pub const STATS: &str = "stats";

/// Why a projection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint is not where this applier started from: a rebuild reset it, or another
    /// projector applied the same events first. Nothing was applied; resume from `actual`.
    #[error("the projection's checkpoint moved to {actual} (a rebuild or another server); resuming from there")]
    Moved {
        /// Where the checkpoint is now.
        actual: Position,
    },
    /// The stored checkpoint is not a position.
    #[error("the projection checkpoint {0:?} is not a position")]
    BadCheckpoint(String),
}

impl From<tokio_postgres::Error> for ProjectionError {
    fn from(err: tokio_postgres::Error) -> Self {
        ProjectionError::Store(StoreError::from(err))
    }
}

impl From<deadpool_postgres::PoolError> for ProjectionError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ProjectionError::Store(StoreError::from(err))
    }
}

/// What the projector has done since it started, for tests and logs.
#[derive(Debug, Default)]
pub struct ProjectorStats {
    /// Tracker events counted into the tables by this projector.
    pub counted: AtomicU64,
    /// Transactions committed (chunks applied).
    pub chunks: AtomicU64,
    /// Times it (re)subscribed from the stored checkpoint.
    pub subscribes: AtomicU64,
}

/// A handle on the running projector. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Projections {
    applied: watch::Receiver<Position>,
    stats: Arc<ProjectorStats>,
}

impl Projections {
    /// Starts the projector on `tasks`; it subscribes to `bus` after the stored checkpoint and
    /// ends when `shutdown` is cancelled.
    pub fn start(bus: Bus, shutdown: CancellationToken, tasks: &TaskTracker) -> Projections {
        let (applied, receiver) = watch::channel(Position::START);
        let stats = Arc::new(ProjectorStats::default());
        tasks.spawn(projector::run(bus, applied, stats.clone(), shutdown));
        Projections { applied: receiver, stats }
    }

    /// Changes whenever the projector commits: the checkpoint its tables now include. Its sender
    /// is dropped when the projector stops (shutdown), which ends `changed()` with an error.
    pub fn watch(&self) -> watch::Receiver<Position> {
        self.applied.clone()
    }

    /// The checkpoint of the projector's last commit (or the one it loaded at start).
    pub fn position(&self) -> Position {
        *self.applied.borrow()
    }

    /// Waits until the projector's checkpoint is at least `position`; false if it stopped first.
    pub async fn wait_for(&self, position: Position) -> bool {
        let mut applied = self.applied.clone();
        applied.wait_for(|p| *p >= position).await.is_ok()
    }

    /// Counters.
    pub fn stats(&self) -> &ProjectorStats {
        &self.stats
    }

    /// Tracker events this projector has counted since it started.
    pub fn counted(&self) -> u64 {
        self.stats.counted.load(Ordering::Relaxed)
    }
}

/// The stored checkpoint of projection `name` (creating it at the start of the log if missing).
pub async fn checkpoint(store: &Store, name: &str) -> Result<Position, ProjectionError> {
    let client = store.pool().get().await?;
    client
        .execute(
            "INSERT INTO flightdeck.projection_checkpoints (name, position) VALUES ($1, repeat('0', 32)) \
             ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .await?;
    let row =
        client.query_one("SELECT position FROM flightdeck.projection_checkpoints WHERE name = $1", &[&name]).await?;
    parse_position(row.try_get(0)?)
}

fn parse_position(text: String) -> Result<Position, ProjectionError> {
    text.parse().map_err(|_| ProjectionError::BadCheckpoint(text))
}
