//! The projector task: a bus subscriber that keeps the stats tables up to date.
//!
//! It loads the stored checkpoint, subscribes after it (replaying from the store what it missed
//! while stopped, then live), and applies each chunk of ready events (up to 500) in one
//! transaction with the checkpoint (`apply.rs`). Whenever the subscription or an apply fails (it
//! lagged behind the bus, the database went away, the checkpoint moved under it) it drops the
//! subscription and starts over from the stored checkpoint, so nothing is skipped and nothing is
//! counted twice. It ends on shutdown, dropping its watch sender, which ends the live stats streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{Batching, Bus, BusError, Delivered, Filter, Start};
use crate::store::Position;
use crate::tracker::{STREAM_PREFIX, TrackType};

use super::tally::Tally;
use super::{ProjectionError, ProjectorStats, STATS, apply, checkpoint};

/// Most events applied in one transaction.
const CHUNK: usize = 500;
/// Longest pause between attempts while the database is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why one subscription ended.
enum Restart {
    /// Start over from the stored checkpoint at once.
    Now,
    /// Wait (the database is failing), then start over.
    Backoff,
    /// Shutting down.
    Stop,
}

pub(super) async fn run(
    bus: Bus,
    applied: watch::Sender<Position>,
    stats: Arc<ProjectorStats>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let restart = tokio::select! {
            restart = follow(&bus, &applied, &stats) => restart,
            _ = shutdown.cancelled() => Restart::Stop,
        };
        match restart {
            Restart::Stop => return,
            Restart::Now => delay = Duration::from_millis(100),
            Restart::Backoff => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The tracker's events: the projections count nothing else.
fn filter() -> Filter {
    Filter {
        types: TrackType::ALL.iter().map(|t| t.as_str().to_string()).collect(),
        stream_prefix: Some(STREAM_PREFIX.to_string()),
        ..Filter::default()
    }
}

/// Follows the log from the stored checkpoint until something goes wrong.
async fn follow(bus: &Bus, applied: &watch::Sender<Position>, stats: &ProjectorStats) -> Restart {
    let store = bus.store();
    let mut at = match checkpoint(store, STATS).await {
        Ok(at) => at,
        Err(err) => {
            tracing::warn!(error = %err, "projector cannot read its checkpoint; retrying");
            return Restart::Backoff;
        }
    };
    applied.send_replace(at);
    stats.subscribes.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%at, "projector subscribing");
    let mut chunks = bus.subscribe(filter(), Start::After(at)).chunks(Batching::ready(CHUNK));
    while let Some(chunk) = chunks.next().await {
        let events = match chunk {
            Ok(events) => events,
            Err(BusError::Lagged { .. }) => {
                tracing::debug!(%at, "projector lagged behind the bus; resuming from its checkpoint");
                return Restart::Now;
            }
            Err(BusError::Closed) => return Restart::Stop,
            Err(err @ BusError::Store(_)) => {
                tracing::warn!(error = %err, "projector cannot read the log; retrying");
                return Restart::Backoff;
            }
        };
        match apply_chunk(bus, at, &events).await {
            Ok((through, counted)) => {
                at = through;
                stats.counted.fetch_add(counted, Ordering::Relaxed);
                stats.chunks.fetch_add(1, Ordering::Relaxed);
                applied.send_replace(at);
            }
            Err(ProjectionError::Moved { actual }) => {
                tracing::info!(%actual, "projection checkpoint moved (rebuild or another server); following it");
                return Restart::Now;
            }
            Err(err) => {
                tracing::warn!(error = %err, "projector cannot apply events; retrying from its checkpoint");
                return Restart::Backoff;
            }
        }
    }
    Restart::Stop
}

/// Counts `events` (read after `at`) and applies them; returns the new checkpoint and the count.
async fn apply_chunk(bus: &Bus, at: Position, events: &[Arc<Delivered>]) -> Result<(Position, u64), ProjectionError> {
    let mut tally = Tally::default();
    for event in events {
        tally.add(event);
    }
    let through = events.last().map_or(at, |e| e.position);
    let mut client = bus.store().pool().get().await?;
    apply::apply(&mut client, STATS, at, through, &tally).await?;
    Ok((through, tally.counted))
}
