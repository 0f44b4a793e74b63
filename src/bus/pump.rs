//! The pump: the one reader of the global log in this process, broadcasting each event once.
//!
//! Pages of the log reach the broadcast two ways, both on the bus thread: the pump's own reads
//! (woken by a hint, a notification or the safety poll), and the reads the group-commit workers
//! send right behind each COMMIT in the same round trip ([`Hooks`]). The second way is the usual
//! one for this process's appends: by the time the pump hears of a commit, its events are already
//! broadcast, and it reads nothing.
//!
//! Either way, a page read from `after` holds every event after `after` up to its last one (reads
//! stop below the visibility horizon, `store/read.rs`), and `after` is a position already
//! delivered, so [`Shared::deliver`] broadcasts exactly the events of the page past the last one
//! delivered: pages may arrive in any order, overlap or repeat, and each event still goes out once,
//! in log order, with no gap.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::{CommitHooks, Position, RecordedEvent, StoreError};

use super::{Delivered, Shared};

/// Events per read of the log.
const PAGE: u32 = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    // A hinted position that is not readable yet (an older transaction is still open) is retried
    // quickly with growing pauses, never dropped; the safety poll covers lost hints.
    let mut retry = Duration::from_millis(1);
    loop {
        let wait = match drain(&shared).await {
            Ok(()) if *shared.hinted.borrow() > *shared.delivered.borrow() => {
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
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shared.shutdown.cancelled() => return,
            }
            // Woken for a commit whose events a read behind its COMMIT already broadcast: nothing
            // to read. The deadline stays, so the safety poll still reads at least once a second.
            // A read behind an append still on its way will deliver it, or wake the pump when it
            // did not.
            if shared.read_requested.swap(false, Ordering::AcqRel)
                || (*shared.hinted.borrow() > *shared.delivered.borrow()
                    && !shared.read_behind_pending.load(Ordering::Acquire))
            {
                break;
            }
        }
    }
}

/// Reads and broadcasts everything readable after what was delivered.
async fn drain(shared: &Shared) -> Result<(), StoreError> {
    loop {
        let after = *shared.delivered.borrow();
        let page = shared.pipeline.read_all(after, PAGE).await?;
        let full = page.len() == PAGE as usize;
        shared.deliver(after, page);
        if !full {
            return Ok(());
        }
    }
}

impl Shared {
    /// Broadcasts the events of `page`, read from the log after `after`, that come after the last
    /// one delivered (see the module docs). The check and the advance happen under the `delivered`
    /// watch's lock, so two pages delivered at once cannot both send an event.
    fn deliver(&self, after: Position, page: Vec<RecordedEvent>) {
        self.stats.catch_up_reads.fetch_add(1, Ordering::Relaxed);
        let now = chrono::Utc::now();
        // Taken once per page; `None` after shutdown, when nothing is fanned out any more.
        let events = self.events.lock().ok().and_then(|e| e.clone());
        self.delivered.send_if_modified(|delivered| {
            // `after` was delivered when the read was sent and `delivered` only grows; if it did not
            // hold, the page could skip events, so it is not used (the pump reads for itself).
            if after > *delivered {
                return false;
            }
            let mut sent = 0;
            for event in page {
                if event.position <= *delivered {
                    continue;
                }
                *delivered = event.position;
                sent += 1;
                // A database clock ahead of ours would make the lag negative: counted as zero.
                self.stats.observe_lag((now - event.timestamp).to_std().unwrap_or_default());
                // Filtering at source: unpublished types are never fanned out.
                if let Some(events) = &events
                    && self.options.routing.is_published(&event.event_type)
                {
                    // No receivers is fine: nobody is subscribed right now.
                    let _ = events.send(Arc::new(Delivered::new(event)));
                }
            }
            self.stats.delivered.fetch_add(sent, Ordering::Relaxed);
            sent > 0
        });
    }
}

/// The bus's side of group commit: read the log behind each COMMIT, broadcast what was read, then
/// wake the pump with the committed position (which it then finds delivered). Holds the bus
/// weakly: the workers may outlive it during shutdown.
pub(super) struct Hooks(pub(super) Weak<Shared>);

impl CommitHooks for Hooks {
    fn read_from(&self) -> Option<Position> {
        let shared = self.0.upgrade()?;
        // One read behind at a time, like the pump's own: under load, while one is on its way, the
        // next lone append leaves reading to it and to the pump.
        let idle = shared.options.deliver
            && shared.read_behind_pending.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok();
        idle.then(|| *shared.delivered.borrow())
    }

    fn page(&self, after: Position, page: Option<Vec<RecordedEvent>>) {
        let Some(shared) = self.0.upgrade() else { return };
        shared.stats.reads_behind_appends.fetch_add(1, Ordering::Relaxed);
        let full = page.as_ref().is_some_and(|p| p.len() == crate::store::READ_BEHIND as usize);
        if let Some(page) = page {
            shared.deliver(after, page);
        }
        shared.read_behind_pending.store(false, Ordering::Release);
        if full {
            // More may be readable than one page: the pump reads on.
            shared.catch_up();
        } else if *shared.hinted.borrow() > *shared.delivered.borrow() {
            // The read failed or did not reach a hinted position (an older transaction is open):
            // the pump, which skipped its read for this one, retries.
            shared.wake.notify_one();
        }
    }

    fn committed(&self, position: Position) {
        if let Some(shared) = self.0.upgrade() {
            super::raise(&shared.local, position);
            shared.hint(position);
        }
    }
}
