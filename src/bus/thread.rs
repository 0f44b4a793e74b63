//! The bus's own thread: the path from an append to its broadcast runs on a dedicated
//! single-threaded runtime, apart from the runtime that writes to subscribers' sockets.
//!
//! Why: at 100 subscribers × 1,000 events/s every event wakes 100 connection tasks. On a shared
//! runtime the next event's steps (the COMMIT's answer, the hint, the pump's read and its answer)
//! each wait in the run queue behind that fan-out, so the path from commit to broadcast grew from
//! under 1 ms to 4–9 ms under load (docs/benchmarks.md). On a thread of its own, each step runs as
//! soon as the operating system wakes the thread, which it does promptly for a thread that uses
//! little CPU. The group-commit workers, the pump, the listener and the notifier run here, on
//! their own small connection pool (a connection's I/O task runs on the runtime that opened it).
//!
//! The thread ends after shutdown, once every task spawned on it has ended; the caller's
//! [`TaskTracker`] counts it, so waiting on that tracker waits for this thread's work too.

use std::future::Future;

use tokio::runtime::{Builder, EnterGuard, Handle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::StoreError;

/// A running bus thread.
pub(super) struct BusThread {
    handle: Handle,
    tracker: TaskTracker,
}

impl BusThread {
    /// Starts the thread. It runs until `shutdown` is cancelled and its tasks have ended;
    /// `outer` tracks it.
    pub(super) fn start(shutdown: CancellationToken, outer: &TaskTracker) -> Result<Self, StoreError> {
        let unavailable = |e: std::io::Error| StoreError::Unavailable(format!("cannot start the bus thread: {e}"));
        let runtime = Builder::new_current_thread().enable_all().build().map_err(unavailable)?;
        let handle = runtime.handle().clone();
        let tracker = TaskTracker::new();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let inner = tracker.clone();
        std::thread::Builder::new()
            .name("flightdeck-bus".into())
            .spawn(move || {
                runtime.block_on(async move {
                    shutdown.cancelled().await;
                    inner.close();
                    inner.wait().await;
                });
                // Connection tasks left on this runtime (pooled connections) end with it.
                drop(runtime);
                let _ = done.send(());
            })
            .map_err(unavailable)?;
        outer.spawn(async move {
            let _ = finished.await;
        });
        Ok(BusThread { handle, tracker })
    }

    /// Spawns `task` on the bus thread.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(task, &self.handle);
    }

    /// The tracker of the tasks on this thread: the thread waits for them after shutdown.
    pub(super) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Makes `tokio::spawn` (and connections opened meanwhile) use the bus thread until the guard
    /// is dropped.
    pub(super) fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }
}
