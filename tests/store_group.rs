//! Group commit: concurrent appends share transactions, yet each keeps its own outcome.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flightdeck::store::{AppendOutcome, ExpectedVersion, GroupCommit, NewEvent, StoreError};
use serde_json::json;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

async fn start(db: &common::TestDb) -> (GroupCommit, CancellationToken, TaskTracker) {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    (GroupCommit::start(db.store.clone(), 2, shutdown.clone(), &tasks), shutdown, tasks)
}

/// Runs `append(group, i)` for each `i` in `0..n`, all released at once by a barrier so that they
/// queue together; returns the outcomes in the order of `i`.
async fn at_once<F, Fut>(group: &GroupCommit, n: usize, append: F) -> Vec<Result<AppendOutcome, StoreError>>
where
    F: Fn(GroupCommit, usize) -> Fut,
    Fut: Future<Output = Result<AppendOutcome, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, append) = (barrier.clone(), append(group.clone(), i));
            tokio::spawn(async move {
                barrier.wait().await;
                append.await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for handle in handles {
        outcomes.push(handle.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions_and_each_keeps_its_outcome() {
    let db = common::test_db().await;
    let (group, shutdown, tasks) = start(&db).await;
    db.store.append("default", "taken", ExpectedVersion::Any, &[NewEvent::new("Seed", json!(0))]).await.unwrap();
    let reused = Uuid::now_v7();
    db.store
        .append("default", "owner", ExpectedVersion::Any, &[NewEvent::new("Seed", json!(0)).with_id(reused)])
        .await
        .unwrap();

    for round in 0..3 {
        let results = at_once(&group, 64, |group, i| async move {
            match i {
                // A wrong expected version and a reused id, among 62 good appends.
                0 => group.append("default", "taken", ExpectedVersion::NoStream, &[NewEvent::new("X", json!(i))]).await,
                1 => {
                    group
                        .append(
                            "default",
                            "thief",
                            ExpectedVersion::Any,
                            &[NewEvent::new("X", json!(i)).with_id(reused)],
                        )
                        .await
                }
                _ => {
                    let stream = format!("r{round}-s{i}");
                    group.append("default", &stream, ExpectedVersion::NoStream, &[NewEvent::new("Ok", json!(i))]).await
                }
            }
        })
        .await;
        for (i, result) in results.into_iter().enumerate() {
            match i {
                0 => assert!(matches!(result, Err(StoreError::Conflict { actual: 1, .. })), "{result:?}"),
                1 => assert!(matches!(result, Err(StoreError::IdReused(id)) if id == reused), "{result:?}"),
                _ => assert_eq!(result.unwrap().events[0].version, 1),
            }
        }
    }
    let stats = group.stats();
    assert!(stats.grouped_appends.load(Ordering::Relaxed) > 0, "some appends shared a transaction");
    assert!(stats.transactions.load(Ordering::Relaxed) < stats.grouped_appends.load(Ordering::Relaxed));
    // Exactly the good appends were stored: 2 seeds + 3 rounds × 62.
    let client = db.connect().await;
    let count: i64 = client.query_one("SELECT count(*) FROM flightdeck.events", &[]).await.unwrap().get(0);
    assert_eq!(count, 2 + 3 * 62);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_appends_to_one_stream_keep_versions_dense_and_in_log_order() {
    let db = common::test_db().await;
    let (group, shutdown, tasks) = start(&db).await;
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let group = group.clone();
            tokio::spawn(async move {
                group.append("default", "hot", ExpectedVersion::Any, &[NewEvent::new("E", json!(i))]).await
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let events = db.store.read_stream("hot", 1, 1000).await.unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    for pair in events.windows(2) {
        assert!(pair[0].position < pair[1].position);
    }
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    // After shutdown, appends still work (straight to the store).
    group.append("default", "late", ExpectedVersion::Any, &[NewEvent::new("E", json!(1))]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_mismatch_does_not_roll_back_the_appends_it_was_grouped_with() {
    let db = common::test_db().await;
    let (group, shutdown, tasks) = start(&db).await;
    db.store.append("default", "taken", ExpectedVersion::Any, &[NewEvent::new("Seed", json!(0))]).await.unwrap();
    let results = at_once(&group, 64, |group, i| async move {
        // Every fourth append expects a version the stream does not have.
        let (stream, expected) = if i % 4 == 0 {
            ("taken".to_string(), ExpectedVersion::Exact(7))
        } else {
            (format!("fresh-{i}"), ExpectedVersion::NoStream)
        };
        group.append("default", &stream, expected, &[NewEvent::new("E", json!(i))]).await
    })
    .await;
    for (i, result) in results.into_iter().enumerate() {
        if i % 4 == 0 {
            assert!(matches!(result, Err(StoreError::Conflict { actual: 1, .. })), "{result:?}");
        } else {
            assert_eq!(result.unwrap().events[0].version, 1);
        }
    }
    let stats = group.stats();
    // A statement that inserts nothing aborts nothing: no batch was rolled back and redone.
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);
    assert!(stats.transactions.load(Ordering::Relaxed) < stats.grouped_appends.load(Ordering::Relaxed));
    let client = db.connect().await;
    let count: i64 = client.query_one("SELECT count(*) FROM flightdeck.events", &[]).await.unwrap().get(0);
    assert_eq!(count, 1 + 48);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
