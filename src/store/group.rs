//! Group commit: concurrent appends share one transaction, so ingestion is not bound to one WAL
//! flush per request, while each request keeps its own answer and its own conflicts.
//!
//! A worker takes whatever appends are queued (up to [`MAX_BATCH`]) and runs them in one
//! transaction, each as the fast statement with the xid-order check (`fast_append.rs`), sending
//! `BEGIN`, the statements and `COMMIT` in one round trip (see [`together`]). Nothing is delayed to
//! form a batch: requests that arrive while a commit is in flight form the next one, so a lone
//! request costs one queue hop, and a burst costs one flush per batch. An append that inserted
//! nothing (a version or site mismatch, a younger transaction ahead on its stream) does not hold
//! the others back: they commit, and it is redone on its own (`Store::append`), which gives it its
//! exact outcome. A statement that fails (a reused id, a race on a new stream) aborts the
//! transaction: that append is taken out and the rest try again together (a few rounds, then one
//! by one). A lone append (nothing else was queued) runs as its own autocommit statement, with the
//! owner's read of the log sent right behind it in the same round trip ([`CommitHooks`]). Ids are
//! fixed before queueing, so a request that had in fact committed (a lost COMMIT answer) is
//! recognized as a retry, never stored twice.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use futures::future::{join_all, maybe_done};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event::{validate_append, with_ids};
use super::fast_append::{IN_TRANSACTION, prepare, try_insert};
use super::{AppendOutcome, ExpectedVersion, NewEvent, Position, RecordedEvent, Store, StoreError};

/// Most appends in one transaction.
pub const MAX_BATCH: usize = 256;

struct Request {
    site: String,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// What group commit has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Shared transactions committed.
    pub transactions: AtomicU64,
    /// Appends committed in shared transactions.
    pub grouped_appends: AtomicU64,
    /// Batches rolled back and redone one by one.
    pub fallbacks: AtomicU64,
}

/// Most events read behind one append (see [`CommitHooks::read_from`]).
pub const READ_BEHIND: u32 = 1000;

/// What the committing worker tells its owner (the bus), on the worker's task. Every method has
/// a default that does nothing.
pub trait CommitHooks: Send + Sync {
    /// Where to read the global log from right behind a lone append, in the same round trip
    /// (`None`: no read). The bus then gets the events it would otherwise read with a round trip
    /// of its own after hearing of the commit, from a database backend that is already awake.
    /// Every `Some` is followed by exactly one [`CommitHooks::page`].
    fn read_from(&self) -> Option<Position> {
        None
    }

    /// The answer to the read asked for by [`CommitHooks::read_from`] (`None` if it failed): every
    /// readable event after `after` at the time of the read, in log order, at most
    /// [`READ_BEHIND`]. It comes after the append was reported to [`CommitHooks::committed`] and
    /// to its caller, who need not wait for the read.
    fn page(&self, _after: Position, _page: Option<Vec<RecordedEvent>>) {}

    /// The last position of an append just committed, before the append's caller hears of it
    /// (the bus wakes its pump with it).
    fn committed(&self, _position: Position) {}
}

/// Hooks that do nothing.
struct NoHooks;

impl CommitHooks for NoHooks {}

/// A handle for grouped appends. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    store: Store,
    queue: mpsc::Sender<Request>,
    stats: Arc<GroupStats>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts `workers` committing tasks on `tasks`. After `shutdown` they finish what is queued,
    /// then end; later appends go straight to the store.
    pub fn start(store: Store, workers: usize, shutdown: CancellationToken, tasks: &TaskTracker) -> Self {
        Self::start_with(store, workers, Arc::new(NoHooks), shutdown, tasks)
    }

    /// Like [`GroupCommit::start`], telling `hooks` about each commit.
    pub fn start_with(
        store: Store,
        workers: usize,
        hooks: Arc<dyn CommitHooks>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(MAX_BATCH * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(GroupStats::default());
        for _ in 0..workers.max(1) {
            tasks.spawn(worker(store.clone(), receiver.clone(), shutdown.clone(), stats.clone(), hooks.clone()));
        }
        GroupCommit { store, queue, stats }
    }

    /// Counters.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Appends like [`Store::append`], sharing a transaction with concurrent appends.
    pub async fn append(
        &self,
        site: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(site, stream, events)?;
        let events = with_ids(events).into_owned();
        let (reply, answer) = oneshot::channel();
        let request = Request { site: site.to_string(), stream: stream.to_string(), expected, events, reply };
        match self.queue.send(request).await {
            Ok(()) => match answer.await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable("the committer stopped".into())),
            },
            // Shutting down: no worker left; append directly.
            Err(mpsc::error::SendError(request)) => {
                self.store.append(&request.site, &request.stream, request.expected, &request.events).await
            }
        }
    }
}

async fn worker(
    store: Store,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
    shutdown: CancellationToken,
    stats: Arc<GroupStats>,
    hooks: Arc<dyn CommitHooks>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let first = if shutdown.is_cancelled() {
                receiver.try_recv().ok()
            } else {
                tokio::select! {
                    request = receiver.recv() => request,
                    _ = shutdown.cancelled() => receiver.try_recv().ok(),
                }
            };
            let Some(first) = first else {
                receiver.close();
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch
        };
        commit(&store, batch, &stats, &*hooks).await;
    }
}

/// Times a batch is retried without the append that spoiled it, before the rest go one by one.
const MAX_ROUNDS: usize = 4;

async fn commit(store: &Store, mut batch: Vec<Request>, stats: &GroupStats, hooks: &dyn CommitHooks) {
    let mut alone = Vec::new();
    for _ in 0..MAX_ROUNDS {
        if batch.len() < 2 {
            break;
        }
        match together(store, &batch).await {
            Ok(outcomes) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    match outcome {
                        Some(outcome) => {
                            stats.grouped_appends.fetch_add(1, Ordering::Relaxed);
                            if let Some(last) = outcome.events.last() {
                                store.versions.record(&request.site, &request.stream, last.version);
                                hooks.committed(last.position);
                            }
                            let _ = request.reply.send(Ok(outcome));
                        }
                        // It inserted nothing (a version or site mismatch, or a younger
                        // transaction wrote the stream first): its own path says why or retries.
                        None => alone.push(request),
                    }
                }
                break;
            }
            // That append (a reused id, a race on a stream) aborted the transaction; it gets its
            // exact outcome on its own, and the others try again together.
            Err(Some(index)) => {
                stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                alone.push(batch.remove(index));
            }
            Err(None) => {
                stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    // Whatever is left, and the appends taken out, each in a transaction of its own. An append
    // whose outcome was unknown (a lost COMMIT answer) is recognized there as already stored.
    alone.append(&mut batch);
    if alone.len() == 1
        && let Some(after) = hooks.read_from()
        && let Some(Request { site, stream, expected, events, reply }) = alone.pop()
    {
        // The usual case when appends arrive one at a time: the lone append, with the log read
        // behind it. (Batches leave reading to the pump, which covers several with one read.)
        let page = store
            .append_then_read(&site, &stream, expected, &events, after, |result| {
                answer(hooks, reply, result);
            })
            .await;
        hooks.page(after, page);
        return;
    }
    join_all(alone.into_iter().map(|request| async move {
        let result = store.append(&request.site, &request.stream, request.expected, &request.events).await;
        answer(hooks, request.reply, result);
    }))
    .await;
}

/// Reports an append that ran on its own to `hooks` (its last position, if it stored anything),
/// then to its caller.
fn answer(
    hooks: &dyn CommitHooks,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    result: Result<AppendOutcome, StoreError>,
) {
    if let Some(last) = result.as_ref().ok().and_then(|out| out.events.iter().map(|e| e.position).max()) {
        hooks.committed(last);
    }
    let _ = reply.send(result);
}

/// Runs the whole batch in one transaction and one round trip: `BEGIN`, every append's statement
/// and `COMMIT` are sent together, before any answer comes back (tokio-postgres pipelines the
/// requests of one connection and PostgreSQL runs them in the order sent). Where a batch took
/// three round trips (BEGIN, the statements, COMMIT), each waking the database and the bus thread,
/// it now takes one.
///
/// Sending `COMMIT` before seeing the statements' answers is safe because each statement either
/// inserts all of its append's events or none:
/// - a statement that inserted nothing (`None` for its append) changed nothing, and the others
///   commit without it;
/// - a statement that failed aborts the transaction, and PostgreSQL answers the `COMMIT` of an
///   aborted transaction by rolling it back: nothing of the batch is stored, and the index of the
///   first failed statement is returned;
/// - if `COMMIT` itself fails, whether the batch was stored is unknown (`Err(None)`); ids are fixed
///   before queueing, so redoing each append alone recognizes what was in fact stored. The same
///   holds in the one case where part of a batch could be stored despite an error: a statement
///   failing in the client before it was sent, while the others committed.
async fn together(store: &Store, batch: &[Request]) -> Result<Vec<Option<AppendOutcome>>, Option<usize>> {
    let client = store.pool().get().await.map_err(|_| None)?;
    // Prepared beforehand (cached per connection after the first batch), so that each statement
    // below sends its request when first polled instead of waiting for a Parse.
    prepare(&client, IN_TRANSACTION).await.map_err(|_| None)?;
    let begin = maybe_done(client.batch_execute("BEGIN"));
    let statements = batch.iter().map(|request| {
        let insert = try_insert(
            &client,
            None,
            IN_TRANSACTION,
            &request.site,
            &request.stream,
            request.expected,
            &request.events,
        );
        Box::pin(maybe_done(insert))
    });
    let mut statements: Vec<_> = statements.collect();
    let commit = maybe_done(client.batch_execute("COMMIT"));
    let (mut begin, mut commit) = (std::pin::pin!(begin), std::pin::pin!(commit));
    // One poll each, in order: that sends every request, in this order, before any answer is read.
    std::future::poll_fn(|cx| {
        let _ = begin.as_mut().poll(cx);
        for statement in &mut statements {
            let _ = statement.as_mut().poll(cx);
        }
        let _ = commit.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    futures::join!(begin.as_mut(), join_all(statements.iter_mut().map(|s| s.as_mut())), commit.as_mut());
    let begun = begin.as_mut().take_output().is_some_and(|r| r.is_ok());
    let committed = commit.as_mut().take_output().is_some_and(|r| r.is_ok());
    if !committed {
        // A connection must not go back to the pool inside a transaction; after a COMMIT that
        // was answered (even with an error) there is none, and this is a no-op.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (index, statement) in statements.iter_mut().enumerate() {
        match statement.as_mut().take_output() {
            Some(Ok(outcome)) => outcomes.push(outcome),
            // The transaction was aborted here and rolled back by the COMMIT; if BEGIN had failed
            // (a broken connection), what ran on its own is unknown.
            _ => return Err(begun.then_some(index)),
        }
    }
    if begun && committed { Ok(outcomes) } else { Err(None) }
}
