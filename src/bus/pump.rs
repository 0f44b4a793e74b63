//! The pump: the one broadcaster of the global log in this process, sending each event once.
//!
//! Pages of the log reach the broadcast from two places, both on the bus thread: the pump task's
//! own reads (woken by hints, notifications and the safety poll), and the reads the group-commit
//! workers make right behind each COMMIT (`Committed`, the bus's [`CommitHook`]), which spare the
//! pump a round trip in the common case. Both go through [`offer`], which keeps one cursor: a page
//! read after position A is complete up to its last event (every event in it is final, below the
//! visibility horizon), so whatever part of it lies after the cursor extends the broadcast with no
//! gap and no duplicate, whichever reader got there first.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::{CommitHook, Position, RecordedEvent, StoreError};

use super::{Delivered, Shared, raise};

/// Events per read of the log.
const PAGE: u32 = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    // A hinted position that is not readable yet (an older transaction is still open) is retried
    // quickly with growing pauses, never dropped; the safety poll covers lost hints.
    let mut retry = Duration::from_millis(1);
    loop {
        let wait = match drain(&shared).await {
            Ok(()) if *shared.hinted.borrow() > shared.cursor() => {
                retry = (retry * 2).min(Duration::from_millis(50));
                retry
            }
            Ok(()) => {
                retry = Duration::from_millis(1);
                shared.options.safety_poll
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the event log; retrying");
                Duration::from_millis(250)
            }
        };
        // The safety poll counts from the last read, whatever wake-ups came in between.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shared.wake.notified() => {
                    // A wake-up for a position already broadcast (a committer's page carried it,
                    // or it is this process's own NOTIFY coming back) needs no read.
                    if shared.must_read.swap(false, Ordering::Relaxed) || *shared.hinted.borrow() > shared.cursor() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.shutdown.cancelled() => return,
            }
        }
    }
}

/// Reads and broadcasts everything readable after the cursor.
async fn drain(shared: &Shared) -> Result<(), StoreError> {
    loop {
        let after = shared.cursor();
        let page = shared.pipeline.read_all(after, PAGE).await?;
        shared.stats.catch_up_reads.fetch_add(1, Ordering::Relaxed);
        let full = page.len() == PAGE as usize;
        offer(shared, after, page);
        if !full {
            return Ok(());
        }
    }
}

/// Broadcasts the part of `page` (the log read after `after`, in order) that lies after the
/// cursor, and moves the cursor to its end. A page read after a position behind the cursor is
/// still complete from there on; one read after a position beyond it cannot happen (positions
/// to read after are taken from the cursor, which only grows), and would be refused.
pub(super) fn offer(shared: &Shared, after: Position, page: Vec<RecordedEvent>) {
    let Ok(mut cursor) = shared.cursor.lock() else { return };
    if after > *cursor {
        return;
    }
    let now = chrono::Utc::now();
    // Taken once per page; `None` after shutdown, when nothing is fanned out any more.
    let events = shared.events.lock().ok().and_then(|e| e.clone());
    let mut sent = 0;
    let from = *cursor;
    for event in page.into_iter().filter(|e| e.position > from) {
        *cursor = event.position;
        sent += 1;
        // A database clock ahead of ours would make the lag negative: counted as zero.
        shared.stats.observe_lag((now - event.timestamp).to_std().unwrap_or_default());
        // Filtering at source: unpublished types are never fanned out.
        if let Some(events) = &events
            && shared.options.routing.is_published(&event.event_type)
        {
            // No receivers is fine: nobody is subscribed right now.
            let _ = events.send(Arc::new(Delivered::new(event)));
        }
    }
    if sent > 0 {
        shared.stats.delivered.fetch_add(sent, Ordering::Relaxed);
        shared.delivered.send_replace(*cursor);
    }
}

/// The bus's part in each group commit: read after the cursor behind the COMMIT, offer the page,
/// then hint the commit (which wakes the pump only if the page did not carry it).
pub(super) struct Committed(pub(super) Weak<Shared>);

impl CommitHook for Committed {
    fn read_after(&self) -> Option<Position> {
        let shared = self.0.upgrade()?;
        shared.options.deliver.then(|| shared.cursor())
    }

    fn committed(&self, last: Position, page: Option<(Position, Vec<RecordedEvent>)>) {
        let Some(shared) = self.0.upgrade() else { return };
        if let Some((after, page)) = page {
            shared.stats.catch_up_reads.fetch_add(1, Ordering::Relaxed);
            offer(&shared, after, page);
        }
        raise(&shared.local, last);
        shared.hint(last);
    }
}
