//! A subscription: an async stream of matching events, replayed from the store when it starts in
//! the past, then live from the pump, with no gap and no duplicate at the seam.
//!
//! The seam: the subscription replays until it has caught up with the log, *then* joins the
//! broadcast, then replays again until caught up. Every event the pump broadcast before the join
//! was read below a visibility horizon that this second replay's last read has also passed
//! (horizons only move forward), so the replay includes it; every later event is in the broadcast
//! queue. Live events at or before the replay's last position are skipped. Joining only after the
//! bulk of the replay keeps a long replay from overflowing the subscriber's live queue.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::store::{Position, RecordedEvent};

use super::{BusError, Delivered, Filter, Shared};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events delivered after subscribing.
    Now,
    /// The whole log, then live.
    Beginning,
    /// Events after this position, then live.
    After(Position),
}

/// Events per replay read.
const REPLAY_PAGE: u32 = 500;

/// A stream of events matching a filter. Ends with `Err(Lagged)` if the subscriber falls too far
/// behind, or with `Err(Closed)` at shutdown. Dropping it unsubscribes.
pub struct Subscription {
    inner: BoxStream<'static, Result<Arc<Delivered>, BusError>>,
    progress: Progress,
}

/// How far a subscription has looked through the log, matching or not.
///
/// Why: a consumer that keeps a checkpoint (the stats projector) sees only the events its filter
/// matches, so without this its checkpoint would stay at the last match, and every restart would
/// read again every event after it (a whole log of other applications' events, say). Whenever the
/// subscription waits (for the store or the broadcast), every matching event at or before
/// [`Progress::get`] has been handed out; a consumer that has also finished with those events may
/// move its checkpoint there. Read it only between items, from the task that polls the stream.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<ProgressCell>);

#[derive(Debug, Default)]
struct ProgressCell {
    /// Set once someone asked for the handle: until then the stream's hot path skips the lock.
    wanted: AtomicBool,
    at: Mutex<Option<Position>>,
}

impl Progress {
    /// The last position examined with nothing matching left to hand out; `None` before any (a
    /// `Now` subscription that has seen nothing yet). It may lag a little behind: never ahead.
    pub fn get(&self) -> Option<Position> {
        self.0.at.lock().map_or(None, |p| *p)
    }

    fn set(&self, position: Option<Position>) {
        if self.0.wanted.load(Ordering::Relaxed)
            && let Ok(mut p) = self.0.at.lock()
        {
            *p = position;
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

enum Phase {
    Replay,
    Live,
    Done,
}

struct State {
    shared: Arc<Shared>,
    filter: Filter,
    /// Joined at the start for `Now`, after the first catch-up for replays.
    live: Option<broadcast::Receiver<Arc<Delivered>>>,
    phase: Phase,
    /// The last position examined (delivered or filtered out); `None` before any, for `Now`.
    after: Option<Position>,
    replayed: VecDeque<Arc<Delivered>>,
    /// Whether a live event has been handed out since joining the broadcast.
    went_live: bool,
    /// The pump's position when subscribing: where a `Now` subscription that lags resumes.
    joined: Position,
    /// `after`, published whenever nothing matching is waiting to be handed out.
    progress: Progress,
}

impl Subscription {
    pub(super) fn new(shared: Arc<Shared>, filter: Filter, start: Start) -> Self {
        let joined = *shared.delivered.borrow();
        let (phase, after, live) = match start {
            Start::Now => (Phase::Live, None, shared.join()),
            Start::Beginning => (Phase::Replay, Some(Position::START), None),
            Start::After(p) => (Phase::Replay, Some(p), None),
        };
        let progress = Progress::default();
        let state = State {
            shared,
            filter,
            live,
            phase,
            after,
            replayed: VecDeque::new(),
            joined,
            went_live: false,
            progress: progress.clone(),
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Subscription { inner: Box::pin(inner), progress }
    }

    /// A handle on how far this subscription has looked (see [`Progress`]); it stays valid after
    /// [`Subscription::chunks`] takes the subscription.
    pub fn progress(&self) -> Progress {
        self.progress.0.wanted.store(true, Ordering::Relaxed);
        self.progress.clone()
    }
}

impl State {
    async fn next(&mut self) -> Option<Result<Arc<Delivered>, BusError>> {
        loop {
            // Every wait below (the store's read, the pump, the broadcast) starts from here with
            // nothing matching left to hand out, so `after` is safe to publish.
            if self.replayed.is_empty() {
                self.progress.set(self.after);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => {
                    if let Some(event) = self.replayed.pop_front() {
                        return Some(Ok(event));
                    }
                    let after = self.after.unwrap_or(Position::START);
                    self.shared.stats.catch_up_reads.fetch_add(1, Ordering::Relaxed);
                    let page = match self.shared.store.read_all(after, REPLAY_PAGE).await {
                        Ok(page) => page,
                        Err(err) => {
                            self.phase = Phase::Done;
                            return Some(Err(BusError::Store(err.to_string())));
                        }
                    };
                    if page.is_empty() {
                        if self.live.is_none() {
                            // Join once the pump has caught up with this replay, so the pump's own
                            // catch-up (events this subscriber already has) cannot fill its queue.
                            let mut delivered = self.shared.delivered.subscribe();
                            tokio::select! {
                                _ = delivered.wait_for(|p| *p >= after) => {}
                                _ = self.shared.shutdown.cancelled() => {}
                            }
                            let Some(live) = self.shared.join() else {
                                self.phase = Phase::Done;
                                return Some(Err(BusError::Closed));
                            };
                            self.live = Some(live);
                            self.went_live = false;
                        } else {
                            self.phase = Phase::Live;
                        }
                        continue;
                    }
                    for event in page {
                        self.after = Some(event.position);
                        if self.wants(&event) {
                            self.replayed.push_back(Arc::new(Delivered::new(event)));
                        }
                    }
                }
                Phase::Live => {
                    // No receiver: the bus had shut down when this subscription joined.
                    let Some(live) = self.live.as_mut() else {
                        self.phase = Phase::Done;
                        return Some(Err(BusError::Closed));
                    };
                    // Shutdown closes the channel (`Shared::close`), so no shutdown future is
                    // registered and dropped per event here.
                    match live.recv().await {
                        Ok(event) => {
                            if self.after.is_some_and(|a| event.position <= a) {
                                continue;
                            }
                            self.after = Some(event.position);
                            if self.wants(&event) {
                                self.went_live = true;
                                return Some(Ok(event));
                            }
                        }
                        // Overflow before anything live was handed out is the seam's doing (the pump
                        // still sending what the replay already read): replay again from the store.
                        Err(broadcast::error::RecvError::Lagged(_)) if !self.went_live && self.after.is_some() => {
                            self.live = None;
                            self.phase = Phase::Replay;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            self.phase = Phase::Done;
                            let last = self.after.unwrap_or(self.joined);
                            return Some(Err(BusError::Lagged { last }));
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            self.phase = Phase::Done;
                            return Some(Err(BusError::Closed));
                        }
                    }
                }
            }
        }
    }
}

impl State {
    /// Published, on one of the subscriber's channels, and matching its filter.
    fn wants(&self, event: &RecordedEvent) -> bool {
        let routing = &self.shared.options.routing;
        routing.is_published(&event.event_type)
            && (self.filter.channels.is_empty()
                || self.filter.channels.iter().any(|c| c == routing.channel_of(&event.event_type)))
            && self.filter.matches(event)
    }
}

impl Stream for Subscription {
    type Item = Result<Arc<Delivered>, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
