//! The pump: the one reader of the global log in this process, broadcasting each event once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::store::{Position, StoreError};

use super::{Delivered, Shared};

/// Events per read of the log.
const PAGE: u32 = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut position = *shared.delivered.borrow();
    // A hinted position that is not readable yet (an older transaction is still open) is retried
    // quickly with growing pauses, never dropped; the safety poll covers lost hints.
    let mut retry = Duration::from_millis(1);
    loop {
        let wait = match drain(&shared, &mut position).await {
            Ok(()) if *shared.hinted.borrow() > position => {
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
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Reads and broadcasts everything readable after `position`.
async fn drain(shared: &Shared, position: &mut Position) -> Result<(), StoreError> {
    loop {
        let page = shared.pipeline.read_all(*position, PAGE).await?;
        shared.stats.catch_up_reads.fetch_add(1, Ordering::Relaxed);
        let full = page.len() == PAGE as usize;
        if let Some(last) = page.last() {
            *position = last.position;
        }
        shared.stats.delivered.fetch_add(page.len() as u64, Ordering::Relaxed);
        let now = chrono::Utc::now();
        // Taken once per page; `None` after shutdown, when nothing is fanned out any more.
        let events = shared.events.lock().ok().and_then(|e| e.clone());
        for event in page {
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
        shared.delivered.send_replace(*position);
        if !full {
            return Ok(());
        }
    }
}
