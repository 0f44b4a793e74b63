//! The bus: every committed event, in log order, to every in-process subscriber, woken by
//! PostgreSQL LISTEN/NOTIFY.
//!
//! One *pump* task per process reads the global log forward from the last position it delivered
//! and broadcasts each event in memory to all subscribers, so a burst of N appends costs a few
//! paged reads, not N per subscriber. The pump wakes when this process appends (in-process hint),
//! when the one *listener* connection receives a NOTIFY (appends by other processes or through the
//! SQL function), and on a safety poll, so a lost notification only delays delivery. Notifications
//! carry at most a position (never the event), so the 8000-byte NOTIFY limit never matters.

mod batch;
mod delivered;
mod filter;
mod listener;
mod notifier;
mod pump;
mod routing;
mod subscription;
mod thread;

pub use batch::{Batching, Chunks};
pub use delivered::Delivered;
pub use filter::{FieldMatch, Filter, FilterError};
pub use listener::LISTENER_NAME;
pub use routing::{DEFAULT_CHANNEL, Routing, RoutingError};
pub use subscription::{Progress, Start, Subscription};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{AppendOutcome, ExpectedVersion, GroupCommit, NewEvent, Position, Store, StoreError};

/// The NOTIFY channel FlightDeck's wake-ups travel on.
pub const CHANNEL: &str = "flightdeck_events";

/// Connections of the bus thread's pool: two group-commit workers, the pump, and room for the
/// appends a failed batch redoes one by one.
const PIPELINE_CONNECTIONS: usize = 8;

/// Tunables.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Events a subscriber may fall behind the pump before it is told it lagged.
    pub subscriber_queue: usize,
    /// How often the pump reads even without a wake-up.
    pub safety_poll: Duration,
    /// Longest pause between wake-ups this process sends to other processes.
    pub notify_interval: Duration,
    /// Which event types are published, on which channels.
    pub routing: Routing,
    /// Run the pump, listener and notifier. Off, appends are stored but nothing is delivered
    /// (for benchmarks that measure what delivery costs).
    pub deliver: bool,
    /// How [`Bus::append`] writes.
    pub append_mode: AppendMode,
}

/// How [`Bus::append`] writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppendMode {
    /// Group commit, then an in-process hint and a coalesced NOTIFY (FlightDeck's design).
    #[default]
    Grouped,
    /// The seed sketch's design, one transaction per append with a NOTIFY carrying the event
    /// (for comparison benchmarks only).
    Seed,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            subscriber_queue: 4096,
            safety_poll: Duration::from_secs(1),
            notify_interval: Duration::from_millis(2),
            routing: Routing::default(),
            deliver: true,
            append_mode: AppendMode::Grouped,
        }
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The subscriber fell too far behind; resume from `last` (out of the store).
    #[error("subscriber lagged behind; resume after position {last}")]
    Lagged {
        /// The last position this subscription delivered.
        last: Position,
    },
    /// The store could not be read during a replay.
    #[error("cannot replay from the store: {0}")]
    Store(String),
    /// The bus is shutting down.
    #[error("the server is shutting down")]
    Closed,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Listener (re)connections after the first.
    pub reconnects: AtomicU64,
    /// NOTIFY messages received.
    pub notifications: AtomicU64,
    /// Events the pump broadcast.
    pub delivered: AtomicU64,
    /// Reads of the log by the pump, behind lone appends, and by replays.
    pub catch_up_reads: AtomicU64,
    /// Reads of the log sent right behind a lone append, in the same round trip (also counted in
    /// `catch_up_reads`): each spares the pump a read of its own.
    pub reads_behind_appends: AtomicU64,
    /// Whether the listener connection is up (1) or not (0).
    pub listener_connected: AtomicU64,
    /// Events newly written by [`Bus::append`] (a retry that stored nothing new is not counted).
    pub appended: AtomicU64,
    /// Open Server-Sent Events streams (kept by the HTTP layer).
    pub sse_subscribers: AtomicU64,
    /// Open WebSocket connections (kept by the HTTP layer).
    pub ws_sockets: AtomicU64,
    /// Subscriptions on open WebSocket connections (several per socket).
    pub ws_subscriptions: AtomicU64,
    /// Delivery lag of each event the pump broadcast (broadcast time minus the event's stored
    /// timestamp): counts per bucket of [`BusStats::LAG_BUCKETS`], the last one for larger lags.
    pub delivery_lag_buckets: [AtomicU64; BusStats::LAG_BUCKETS.len() + 1],
    /// Sum of the delivery lags counted in `delivery_lag_buckets`, in microseconds.
    pub delivery_lag_micros: AtomicU64,
}

impl BusStats {
    /// Upper bounds, in seconds, of the delivery lag histogram's buckets.
    pub const LAG_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    /// Counts one event delivered `lag` after it was stored.
    pub(crate) fn observe_lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        let bucket = Self::LAG_BUCKETS.iter().position(|le| secs <= *le).unwrap_or(Self::LAG_BUCKETS.len());
        self.delivery_lag_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.delivery_lag_micros.fetch_add(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    /// The caller's store: replays and everything outside the bus thread.
    store: Store,
    /// The same database through the bus thread's own pool (the pump reads with it).
    pipeline: Store,
    options: BusOptions,
    /// The live fan-out. Taken (dropped) at shutdown, which ends every live subscription: no
    /// subscription has to watch the shutdown token for each event it receives.
    events: std::sync::Mutex<Option<broadcast::Sender<Arc<Delivered>>>>,
    /// The last position the pump has broadcast.
    delivered: watch::Sender<Position>,
    /// The highest position anyone told us exists (appends here, notifications).
    hinted: watch::Sender<Position>,
    /// The highest position appended by this process, for the notifier to announce.
    local: watch::Sender<Position>,
    wake: Notify,
    /// The pump must read even if every hinted position was delivered (a listener reconnected, a
    /// wake-up without a position).
    read_requested: AtomicBool,
    /// A read behind a lone append was sent and not yet answered (`pump.rs`, `Hooks`).
    read_behind_pending: AtomicBool,
    /// The backend pid of this process's listener session, 0 while it is down: the notifier does
    /// not count it as someone else listening (`notifier.rs`).
    listener_pid: AtomicI32,
    stats: BusStats,
    /// Appends made through the bus share transactions (see `store::GroupCommit`).
    committer: GroupCommit,
    shutdown: CancellationToken,
}

impl Shared {
    /// A receiver of the live fan-out; `None` once the bus has shut down.
    fn join(&self) -> Option<broadcast::Receiver<Arc<Delivered>>> {
        self.events.lock().ok()?.as_ref().map(broadcast::Sender::subscribe)
    }

    /// Ends the live fan-out: every live subscription gets what was already sent to it, then
    /// `Closed`.
    fn close(&self) {
        if let Ok(mut events) = self.events.lock() {
            events.take();
        }
    }

    /// Records that `position` exists and wakes the pump, unless it was already hinted (a wake-up
    /// for it is then pending or done: `Notify` keeps a permit for a pump that is busy reading),
    /// so the same commit hinted twice (by the committing worker, then by `Bus::append`) costs
    /// one read, not two.
    fn hint(&self, position: Position) {
        if raise(&self.hinted, position) {
            self.wake.notify_one();
        }
    }

    /// Makes the pump read the log now, whatever it was told.
    fn catch_up(&self) {
        self.read_requested.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Raises a watched position, waking watchers only when it grows; says whether it grew.
fn raise(watch: &watch::Sender<Position>, position: Position) -> bool {
    watch.send_if_modified(|current| {
        let newer = position > *current;
        if newer {
            *current = position;
        }
        newer
    })
}

/// A handle on the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("delivered", &*self.shared.delivered.borrow()).finish()
    }
}

impl Bus {
    /// Starts the group-commit workers, the pump, the listener (on a dedicated connection made
    /// from `listen`) and the notifier on the bus's own thread (`thread.rs`), which `tasks` tracks;
    /// they end when `shutdown` is cancelled. Live delivery starts at the log's current head.
    pub async fn start(
        store: Store,
        listen: tokio_postgres::Config,
        options: BusOptions,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Bus, StoreError> {
        let head = store.head().await?;
        let (events, _) = broadcast::channel(options.subscriber_queue.max(16));
        let thread = thread::BusThread::start(shutdown.clone(), tasks)?;
        // The write-to-broadcast path runs on the bus thread, with its own pool (see `thread.rs`).
        let pipeline = store.sibling(listen.clone(), PIPELINE_CONNECTIONS)?;
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            // The committing worker reads the log behind each COMMIT and wakes the pump itself,
            // on the bus thread.
            let hooks = Arc::new(pump::Hooks(weak.clone()));
            let _bus_thread = thread.enter();
            let committer = GroupCommit::start_with(pipeline.clone(), 2, hooks, shutdown.clone(), thread.tracker());
            Shared {
                store,
                pipeline,
                options,
                events: std::sync::Mutex::new(Some(events)),
                delivered: watch::Sender::new(head),
                hinted: watch::Sender::new(head),
                local: watch::Sender::new(head),
                wake: Notify::new(),
                read_requested: AtomicBool::new(false),
                read_behind_pending: AtomicBool::new(false),
                listener_pid: AtomicI32::new(0),
                stats: BusStats::default(),
                committer,
                shutdown,
            }
        });
        let closing = shared.clone();
        thread.spawn(async move {
            closing.shutdown.cancelled().await;
            closing.close();
        });
        if shared.options.deliver {
            thread.spawn(pump::run(shared.clone()));
            thread.spawn(listener::listen(shared.clone(), listen.clone()));
            thread.spawn(notifier::notify(shared.clone(), listen));
        }
        Ok(Bus { shared })
    }

    /// Appends to `stream` of `site` through the store, then wakes this process's subscribers at
    /// once and tells other processes (coalesced): the append itself pays no NOTIFY.
    pub async fn append(
        &self,
        site: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        let out = match self.shared.options.append_mode {
            AppendMode::Grouped => self.shared.committer.append(site, stream, expected, events).await?,
            AppendMode::Seed => self.shared.store.append_seed_style(site, stream, expected, events).await?,
        };
        if !out.already_stored {
            self.shared.stats.appended.fetch_add(out.events.len() as u64, Ordering::Relaxed);
        }
        if let Some(last) = out.events.iter().map(|e| e.position).max() {
            self.hint(last);
        }
        Ok(out)
    }

    /// Tells the bus an event at `position` was committed (e.g. after [`crate::store::append_in`]
    /// in the caller's own transaction, once it committed).
    pub fn hint(&self, position: Position) {
        raise(&self.shared.local, position);
        self.shared.hint(position);
    }

    /// Subscribes with `filter`, starting at `start`. Dropping the subscription unsubscribes.
    pub fn subscribe(&self, filter: Filter, start: Start) -> Subscription {
        Subscription::new(self.shared.clone(), filter, start)
    }

    /// Resolves once the bus shuts down, for connections that must close then even while they
    /// have no subscription to tell them.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.shared.shutdown.clone().cancelled_owned()
    }

    /// The store behind the bus.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The last position broadcast to subscribers.
    pub fn delivered(&self) -> Position {
        *self.shared.delivered.borrow()
    }

    /// Counters for metrics and readiness.
    pub fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.shared.events.lock().ok().and_then(|e| e.as_ref().map(broadcast::Sender::receiver_count)).unwrap_or(0)
    }

    /// Whether this bus delivers events (see [`BusOptions::deliver`]).
    pub fn delivers(&self) -> bool {
        self.shared.options.deliver
    }

    /// Whether the listener connection is currently up.
    pub fn listener_connected(&self) -> bool {
        self.shared.stats.listener_connected.load(Ordering::Relaxed) == 1
    }
}
