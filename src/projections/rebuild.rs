//! `flightdeck projections rebuild`: recompute the stats tables from the start of the log.
//!
//! First, in one transaction holding the checkpoint row's lock (the lock every apply takes), the
//! tables are truncated and the checkpoint reset to the start: no apply can interleave, and no
//! reader ever sees empty tables with an old checkpoint. Then the log is replayed, a page at a
//! time, through the same counting and the same checked apply as the live projector. A server's
//! projector running meanwhile finds the checkpoint moved, and follows it: both then apply
//! pages with the checkpoint check, so whichever commits a range first counts it and the other
//! skips it. The rebuild stops at the log's head as of its start; the live projector carries on.

use std::time::Instant;

use serde::Serialize;

use crate::store::{Position, Store};

use super::apply::{apply, lock_checkpoint};
use super::tally::Tally;
use super::{ProjectionError, STATS};

/// Events read per page (and applied per transaction) during a rebuild.
const PAGE: u32 = 1000;

/// The tables a rebuild empties.
const TABLES: &str = "flightdeck.stats_minutes, flightdeck.stats_pages, flightdeck.stats_elements, \
     flightdeck.stats_forms, flightdeck.stats_session_minutes, flightdeck.stats_sessions, flightdeck.stats_sites";

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildSummary {
    /// Events read from the log.
    pub events_read: u64,
    /// Tracker events counted by this rebuild (a projector running meanwhile may count some).
    pub events_counted: u64,
    /// The checkpoint when the rebuild finished.
    pub position: Position,
    /// How long it took.
    pub seconds: f64,
}

/// Truncates the stats tables, resets the checkpoint and replays the log up to its current head.
/// `progress` is called after each page with the events read so far and the checkpoint.
pub async fn rebuild(
    store: &Store,
    mut progress: impl FnMut(u64, Position),
) -> Result<RebuildSummary, ProjectionError> {
    let started = Instant::now();
    let head = store.head().await?;
    reset(store).await?;
    let (mut at, mut read, mut counted) = (Position::START, 0u64, 0u64);
    while at < head {
        let page = store.read_all(at, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        let mut tally = Tally::default();
        for event in &page {
            tally.add(event);
        }
        let mut client = store.pool().get().await?;
        match apply(&mut client, STATS, at, last, &tally).await {
            Ok(()) => counted += tally.counted,
            // A running server's projector applied this range first (or another rebuild reset the
            // checkpoint): carry on from wherever the checkpoint is now.
            Err(ProjectionError::Moved { actual }) => {
                tracing::debug!(%actual, "rebuild: the checkpoint moved; continuing from it");
                at = actual;
                read += page.len() as u64;
                progress(read, at);
                continue;
            }
            Err(err) => return Err(err),
        }
        at = last;
        read += page.len() as u64;
        progress(read, at);
    }
    Ok(RebuildSummary {
        events_read: read,
        events_counted: counted,
        position: super::checkpoint(store, STATS).await?,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Empties the tables and sets the checkpoint to the start, atomically.
async fn reset(store: &Store) -> Result<(), ProjectionError> {
    let mut client = store.pool().get().await?;
    let tx = client.transaction().await?;
    lock_checkpoint(&tx, STATS).await?;
    tx.batch_execute(&format!("TRUNCATE {TABLES}")).await?;
    let start = Position::START.to_string();
    tx.execute(
        "UPDATE flightdeck.projection_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
        &[&STATS, &start],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
