//! The projector task: a bus subscriber that keeps the stats tables up to date.
//!
//! It loads the stored checkpoint, subscribes after it (replaying from the store what it missed
//! while stopped, then live), and applies each chunk of ready events (up to 500) in one
//! transaction with the checkpoint (`apply.rs`). Whenever the subscription or an apply fails (it
//! lagged behind the bus, the database went away, the checkpoint moved under it) it drops the
//! subscription and starts over from the stored checkpoint, so nothing is skipped and nothing is
//! counted twice. Every 2 s it also moves the checkpoint past the events it does not count, so a
//! restart does not read them again. It ends on shutdown, dropping its watch sender, which ends
//! the live stats streams.

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
/// How often the checkpoint is moved past events the projections do not count (see [`follow`]).
const SKIP_EVERY: Duration = Duration::from_secs(2);

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
///
/// The subscription hands out only the tracker's events, so a checkpoint moved only by them would
/// stay at the last one while other events pile up after it, and each restart would read all of
/// those again. So every [`SKIP_EVERY`], between chunks, the checkpoint also moves to how far the
/// subscription has looked ([`Progress`](crate::bus::Progress)): every counted event up to there
/// has been applied, since the chunk loop applies each chunk before asking for the next.
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
    let subscription = bus.subscribe(filter(), Start::After(at));
    let progress = subscription.progress();
    let mut chunks = subscription.chunks(Batching::ready(CHUNK));
    let mut skip = tokio::time::interval(SKIP_EVERY);
    skip.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let chunk = tokio::select! {
            // Chunks first: the skip branch runs only when no chunk is ready, so none is in flight.
            biased;
            chunk = chunks.next() => match chunk {
                Some(chunk) => chunk,
                None => return Restart::Stop,
            },
            _ = skip.tick() => {
                let Some(seen) = progress.get().filter(|seen| *seen > at) else { continue };
                match apply_chunk(bus, at, seen, &[]).await {
                    Ok(_) => {
                        at = seen;
                        applied.send_replace(at);
                        continue;
                    }
                    Err(err) => return restart_after(err),
                }
            }
        };
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
        let through = events.last().map_or(at, |e| e.position);
        match apply_chunk(bus, at, through, &events).await {
            Ok(counted) => {
                at = through;
                stats.counted.fetch_add(counted, Ordering::Relaxed);
                stats.chunks.fetch_add(1, Ordering::Relaxed);
                applied.send_replace(at);
            }
            Err(err) => return restart_after(err),
        }
    }
}

/// What a failed apply means for the subscription.
fn restart_after(err: ProjectionError) -> Restart {
    match err {
        ProjectionError::Moved { actual } => {
            tracing::info!(%actual, "projection checkpoint moved (rebuild or another server); following it");
            Restart::Now
        }
        err => {
            tracing::warn!(error = %err, "projector cannot apply events; retrying from its checkpoint");
            Restart::Backoff
        }
    }
}

/// Counts `events` (read after `at`, the last of them at or before `through`) and applies them,
/// moving the checkpoint to `through`; returns the count.
async fn apply_chunk(
    bus: &Bus,
    at: Position,
    through: Position,
    events: &[Arc<Delivered>],
) -> Result<u64, ProjectionError> {
    let mut tally = Tally::default();
    for event in events {
        tally.add(event);
    }
    let mut client = bus.store().pool().get().await?;
    apply::apply(&mut client, STATS, at, through, &tally).await?;
    Ok(tally.counted)
}
