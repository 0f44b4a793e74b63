//! Grouping a subscription's events into chunks, for transports that write several events at once.
//!
//! Two uses, one adapter:
//! - Without batching, a chunk is whatever is already queued for the subscriber (no waiting), so a
//!   burst costs one socket write per subscriber instead of one per event, and a quiet stream
//!   still sends each event at once.
//! - With batching (seed performance §2, opt-in per subscription), a chunk waits up to
//!   `max_delay` after its first event for up to `max_events`, and the transport renders it as one
//!   frame, so a dashboard receiving thousands of events per second renders a few times.
//!
//! Order is the subscription's, and a chunk never straddles an error: events received before a
//! `Lagged` or `Closed` are handed out first, then the error.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::{BusError, Delivered, Subscription};

/// How a subscriber wants its events grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most events in one chunk.
    pub max_events: usize,
    /// Longest wait after a chunk's first event for more to arrive. Zero: take only what is ready.
    pub max_delay: Duration,
}

impl Batching {
    /// Most events per batch a client may ask for.
    pub const MAX_EVENTS: usize = 10_000;
    /// Longest delay a client may ask for.
    pub const MAX_DELAY: Duration = Duration::from_secs(10);

    /// No waiting: each chunk is what was ready, at most `max_events`.
    pub fn ready(max_events: usize) -> Self {
        Batching { max_events: max_events.max(1), max_delay: Duration::ZERO }
    }

    /// Checks a client's request: `max_events` in 1..=[`Self::MAX_EVENTS`], `max_delay` at most
    /// [`Self::MAX_DELAY`].
    pub fn new(max_events: usize, max_delay: Duration) -> Result<Self, String> {
        if max_events == 0 || max_events > Self::MAX_EVENTS {
            return Err(format!("maxEvents must be between 1 and {}, not {max_events}", Self::MAX_EVENTS));
        }
        if max_delay > Self::MAX_DELAY {
            return Err(format!(
                "maxDelayMs must be at most {}, not {}",
                Self::MAX_DELAY.as_millis(),
                max_delay.as_millis()
            ));
        }
        Ok(Batching { max_events, max_delay })
    }
}

/// A subscription's events in chunks of at least one event.
pub type Chunks = BoxStream<'static, Result<Vec<Arc<Delivered>>, BusError>>;

struct State {
    subscription: Subscription,
    batching: Batching,
    /// An error (or the end) seen while filling the previous chunk, handed out after it.
    pending: Option<Option<BusError>>,
}

impl Subscription {
    /// Groups this subscription's events into chunks (see the module docs).
    pub fn chunks(self, batching: Batching) -> Chunks {
        let state = State { subscription: self, batching, pending: None };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed()
    }
}

impl State {
    async fn next(&mut self) -> Option<Result<Vec<Arc<Delivered>>, BusError>> {
        match self.pending.take() {
            Some(Some(err)) => {
                self.pending = Some(None);
                return Some(Err(err));
            }
            Some(None) => return None,
            None => {}
        }
        let first = match self.subscription.next().await? {
            Ok(event) => event,
            Err(err) => {
                self.pending = Some(None);
                return Some(Err(err));
            }
        };
        let mut chunk = vec![first];
        let deadline = tokio::time::Instant::now() + self.batching.max_delay;
        while chunk.len() < self.batching.max_events {
            // `next()` on a stream is cancel-safe: an event arriving as the timer fires stays
            // queued for the next chunk.
            let item = if self.batching.max_delay.is_zero() {
                match self.subscription.next().now_or_never() {
                    Some(item) => item,
                    None => break,
                }
            } else {
                tokio::select! {
                    item = self.subscription.next() => item,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            };
            match item {
                Some(Ok(event)) => chunk.push(event),
                Some(Err(err)) => {
                    self.pending = Some(Some(err));
                    break;
                }
                None => {
                    self.pending = Some(None);
                    break;
                }
            }
        }
        Some(Ok(chunk))
    }
}
