//! The ordering invariant: one global order every reader shares, and a reader that has read up to
//! position P never later finds a newly visible event ordered before P.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flightdeck::store::{ExpectedVersion, NewEvent, Position, StoreError, append_in};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn an_earlier_transaction_committing_later_is_never_skipped() {
    let db = common::test_db().await;
    let mut a = db.connect().await;
    let mut b = db.connect().await;

    // A starts first and takes the lower xid and sequence number, then waits.
    let tx_a = a.transaction().await.unwrap();
    let out_a = append_in(&tx_a, "default", "a", ExpectedVersion::Any, &[NewEvent::new("A", json!(1))]).await.unwrap();
    // B starts later and commits first: the naive design's reader would see B and skip A forever.
    let tx_b = b.transaction().await.unwrap();
    let out_b = append_in(&tx_b, "default", "b", ExpectedVersion::Any, &[NewEvent::new("B", json!(2))]).await.unwrap();
    tx_b.commit().await.unwrap();
    assert!(out_a.events[0].position < out_b.events[0].position, "A is ordered first");

    // The scenario is real: B is committed and visible, with a higher seq than A's.
    let reader = db.connect().await;
    let naive: Vec<i64> =
        reader.query("SELECT seq FROM flightdeck.events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(naive.len(), 1, "a plain SELECT sees B while A is open");
    assert_eq!(naive[0] as u64, out_b.events[0].position.seq);

    // FlightDeck's reader does not hand out B while A, ordered before it, may still commit.
    assert!(db.store.read_all(Position::START, 10).await.unwrap().is_empty());
    assert_eq!(db.store.head().await.unwrap(), Position::START);

    tx_a.commit().await.unwrap();
    common::settle(&db.store, out_b.events[0].position).await;
    let all = db.store.read_all(Position::START, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), vec!["A", "B"]);
}

#[tokio::test]
async fn a_rolled_back_append_leaves_no_trace_and_does_not_block_readers() {
    let db = common::test_db().await;
    let mut a = db.connect().await;
    let tx = a.transaction().await.unwrap();
    append_in(&tx, "default", "s", ExpectedVersion::Any, &[NewEvent::new("Gone", json!(1))]).await.unwrap();
    // Another stream's append is not held up by the open transaction's stream lock…
    let other =
        db.store.append("default", "t", ExpectedVersion::Any, &[NewEvent::new("Other", json!(2))]).await.unwrap();
    // …but readers wait for the open transaction to end before passing its position.
    assert!(db.store.read_all(Position::START, 10).await.unwrap().is_empty());
    tx.rollback().await.unwrap();
    common::settle(&db.store, other.events[0].position).await;
    let kept = db.store.append("default", "t", ExpectedVersion::Any, &[NewEvent::new("Kept", json!(3))]).await.unwrap();
    common::settle(&db.store, kept.events[0].position).await;
    let types: Vec<String> =
        db.store.read_all(Position::START, 10).await.unwrap().into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, vec!["Other", "Kept"]);
    // The rolled-back append left no version behind: the stream starts at 1.
    let s =
        db.store.append("default", "s", ExpectedVersion::NoStream, &[NewEvent::new("First", json!(4))]).await.unwrap();
    assert_eq!(s.events[0].version, 1);
}

#[tokio::test]
async fn stream_version_order_matches_log_order() {
    let db = common::test_db().await;
    let mut early = db.connect().await;
    // A transaction that took its xid early (it wrote something else first)…
    let tx = early.transaction().await.unwrap();
    tx.query("SELECT pg_current_xact_id()", &[]).await.unwrap();
    // …meanwhile a younger transaction appends version 1 and commits.
    let v1 = db.store.append("default", "s", ExpectedVersion::Any, &[NewEvent::new("V1", json!(1))]).await.unwrap();
    // Appending version 2 now would order it before version 1 in the log: refused, retryable.
    let err = append_in(&tx, "default", "s", ExpectedVersion::Any, &[NewEvent::new("V2", json!(2))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Retry), "{err:?}");
    tx.rollback().await.unwrap();
    // The retry, in a new transaction, lands after version 1.
    let tx = early.transaction().await.unwrap();
    let v2 = append_in(&tx, "default", "s", ExpectedVersion::Any, &[NewEvent::new("V2", json!(2))]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(v2.events[0].version, 2);
    assert!(v2.events[0].position > v1.events[0].position);
}

#[tokio::test]
async fn concurrent_appends_to_one_stream_get_distinct_versions() {
    let db = common::test_db().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = db.store.clone();
            tokio::spawn(async move {
                for j in 0..20 {
                    store
                        .append("default", "hot", ExpectedVersion::Any, &[NewEvent::new("E", json!([i, j]))])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let events = db.store.read_stream("hot", 1, 1000).await.unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=320).collect::<Vec<_>>());
    for pair in events.windows(2) {
        assert!(pair[0].position < pair[1].position, "versions are in log order");
    }
}

/// 16 concurrent appenders × 500 events with random delays (half of them holding their
/// transaction open for a while before committing, so commits land out of order), while a reader
/// polls the log. The reader must see every acknowledged event exactly once, in the order a full
/// re-read gives afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_reader_sees_every_event_once_in_the_final_order() {
    const WRITERS: usize = 16;
    const EVENTS: usize = 500;
    let db = Arc::new(common::test_db().await);
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let db = db.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = Position::START;
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = db.store.read_all(after, 500).await.unwrap();
                for event in &page {
                    assert!(event.position > after, "went backwards: {} after {after}", event.position);
                    after = event.position;
                    seen.push((event.id, event.position));
                }
                if finished && page.is_empty() {
                    return seen;
                }
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut client = db.connect().await;
                let mut acked = Vec::with_capacity(EVENTS);
                let mut i = 0;
                while i < EVENTS {
                    let (hold, pause, n) = {
                        let mut rng = rand::rng();
                        (w % 2 == 0 && rng.random_bool(0.5), rng.random_range(0..3), rng.random_range(1..=3))
                    };
                    let n = n.min(EVENTS - i);
                    let events: Vec<NewEvent> = (0..n)
                        .map(|k| NewEvent::new("Tick", json!({"w": w, "i": i + k})).with_id(Uuid::now_v7()))
                        .collect();
                    let stream = format!("writer-{w}");
                    let tx = client.transaction().await.unwrap();
                    let out = append_in(&tx, "default", &stream, ExpectedVersion::Any, &events).await.unwrap();
                    if hold {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    tx.commit().await.unwrap();
                    acked.extend(out.events.iter().map(|e| e.id));
                    i += n;
                    tokio::time::sleep(Duration::from_micros(pause * 300)).await;
                }
                acked
            })
        })
        .collect();
    let mut acked = HashSet::new();
    let mut last = Position::START;
    for w in writers {
        for id in w.await.unwrap() {
            assert!(acked.insert(id));
        }
    }
    for id in &acked {
        last = last.max(db.store.read_event(*id).await.unwrap().unwrap().position);
    }
    common::settle(&db.store, last).await;
    done.store(true, Ordering::Release);
    let seen = reader.await.unwrap();

    let full = db.store.read_all(Position::START, 100_000).await.unwrap();
    assert_eq!(full.len(), WRITERS * EVENTS);
    let seen_ids: Vec<Uuid> = seen.iter().map(|(id, _)| *id).collect();
    let unique: HashSet<Uuid> = seen_ids.iter().copied().collect();
    assert_eq!(unique.len(), seen_ids.len(), "no duplicates");
    assert_eq!(unique, acked, "every acknowledged event, nothing else");
    assert_eq!(seen_ids, full.iter().map(|e| e.id).collect::<Vec<_>>(), "same order as a full re-read");
}
