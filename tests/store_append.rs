//! The event store's append and read paths against a real PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use flightdeck::store::{ExpectedVersion, NewEvent, Position, StoreError, ValidationError, append_in};
use serde_json::json;
use uuid::Uuid;

fn ev(ty: &str, n: i64) -> NewEvent {
    NewEvent::new(ty, json!({ "n": n }))
}

#[tokio::test]
async fn appends_and_reads_back_every_field() {
    let db = common::test_db().await;
    let meta = json!({"correlationId": "c-1", "causationId": "x"});
    let out = db
        .store
        .append(
            "default",
            "order-1",
            ExpectedVersion::NoStream,
            &[ev("OrderPlaced", 1).with_metadata(meta.clone()).unwrap(), ev("OrderPaid", 2)],
        )
        .await
        .unwrap();
    assert!(!out.already_stored);
    assert_eq!(out.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(out.events[0].position < out.events[1].position);
    assert_eq!(out.events[0].id.get_version_num(), 7, "generated ids are UUIDv7");

    let read = db.store.read_stream("order-1", 1, 100).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].event_type, "OrderPlaced");
    assert_eq!(read[0].data, json!({"n": 1}));
    assert_eq!(read[0].metadata, meta);
    assert_eq!(read[1].metadata, json!({}));
    assert_eq!(read[0].stream, "order-1");
    assert_eq!(read[0].id, out.events[0].id);
    assert_eq!(read[0].position, out.events[0].position);
    let age = chrono::Utc::now() - read[0].timestamp;
    assert!(age.num_seconds().abs() < 60, "timestamp is now-ish: {age}");

    let one = db.store.read_event(out.events[1].id).await.unwrap().unwrap();
    assert_eq!(one, read[1]);
    assert!(db.store.read_event(Uuid::now_v7()).await.unwrap().is_none());

    let envelope = serde_json::to_value(&read[0]).unwrap();
    for field in ["id", "position", "stream", "version", "type", "data", "metadata", "timestamp"] {
        assert!(envelope.get(field).is_some(), "envelope has {field}: {envelope}");
    }
    assert!(envelope["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn expected_version_is_checked_atomically() {
    let db = common::test_db().await;
    let s = &db.store;
    s.append("default", "acct", ExpectedVersion::Any, &[ev("Opened", 0)]).await.unwrap();
    // Data-driven: (expected, Ok(version of the new event) or Err(actual version)).
    let cases: Vec<(ExpectedVersion, Result<u64, u64>)> = vec![
        (ExpectedVersion::NoStream, Err(1)),
        (ExpectedVersion::Exact(2), Err(1)),
        (ExpectedVersion::Exact(1), Ok(2)),
        (ExpectedVersion::Exact(1), Err(2)),
        (ExpectedVersion::Any, Ok(3)),
        (ExpectedVersion::Exact(3), Ok(4)),
    ];
    for (i, (expected, want)) in cases.into_iter().enumerate() {
        let got = s.append("default", "acct", expected, &[ev("Step", i as i64)]).await;
        match (got, want) {
            (Ok(out), Ok(v)) => assert_eq!(out.events[0].version, v, "case {i}"),
            (Err(StoreError::Conflict { stream, expected: e, actual }), Err(a)) => {
                assert_eq!((stream.as_str(), e, actual), ("acct", expected, a), "case {i}");
            }
            (other, want) => panic!("case {i}: got {other:?}, want {want:?}"),
        }
    }
    let err = s.append("default", "acct", ExpectedVersion::Exact(9), &[ev("X", 0)]).await.unwrap_err();
    let last = s.read_stream("acct", 4, 1).await.unwrap()[0].position;
    common::settle(s, last).await;
    assert_eq!(err.to_string(), "stream \"acct\" is at version 4, but the append expected 9");
    // Nothing from failed appends was written.
    assert_eq!(s.read_stream("acct", 1, 100).await.unwrap().len(), 4);
    assert_eq!(s.read_all(Position::START, 100).await.unwrap().len(), 4);
}

#[tokio::test]
async fn retried_appends_are_idempotent() {
    let db = common::test_db().await;
    let s = &db.store;
    let batch = vec![ev("A", 1).with_id(Uuid::now_v7()), ev("B", 2).with_id(Uuid::now_v7())];
    let first = s.append("default", "cart", ExpectedVersion::NoStream, &batch).await.unwrap();
    // The same request again, even with its original expected version, is a retry, not a conflict.
    let again = s.append("default", "cart", ExpectedVersion::NoStream, &batch).await.unwrap();
    assert!(again.already_stored);
    assert_eq!(again.events, first.events);
    common::settle(s, first.events[1].position).await;
    assert_eq!(s.read_all(Position::START, 100).await.unwrap().len(), 2);

    // Same id, different content: an error naming the id, nothing written.
    let mut changed = batch.clone();
    changed[1].data = json!({"n": 3});
    let err = s.append("default", "cart", ExpectedVersion::Any, &changed).await.unwrap_err();
    assert!(
        matches!(err, StoreError::IdReused(id) if id == batch[0].id.unwrap() || id == batch[1].id.unwrap()),
        "{err}"
    );
    // Same id in another stream: also an error.
    let err = s.append("default", "other", ExpectedVersion::Any, &batch[..1]).await.unwrap_err();
    assert!(matches!(err, StoreError::IdReused(_)), "{err}");
    // Part of an earlier batch plus a new event: an error.
    let mixed = vec![batch[0].clone(), ev("C", 3).with_id(Uuid::now_v7())];
    assert!(matches!(s.append("default", "cart", ExpectedVersion::Any, &mixed).await, Err(StoreError::IdReused(_))));
    assert_eq!(s.read_all(Position::START, 100).await.unwrap().len(), 2);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error() {
    let db = common::test_db().await;
    let s = &db.store;
    let long = "s".repeat(256);
    let cases: Vec<(&str, Vec<NewEvent>, &str)> = vec![
        ("", vec![ev("A", 1)], "stream id is empty"),
        (&long, vec![ev("A", 1)], "stream id is 256 bytes long"),
        ("a\nb", vec![ev("A", 1)], "stream id contains a control character"),
        ("s", vec![ev("", 1)], "event type is empty"),
        ("s", vec![ev("A\u{0}", 1)], "event type contains a control character"),
        ("s", vec![], "at least one event"),
        ("s", vec![NewEvent::new("A", json!("nul \u{0} inside"))], "\\u0000"),
    ];
    for (stream, events, want) in cases {
        let err = s.append("default", stream, ExpectedVersion::Any, &events).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{stream:?}: {err:?}");
        assert!(err.to_string().contains(want), "{stream:?}: {err}");
    }
    assert_eq!(
        NewEvent::new("A", json!(1)).with_metadata(json!([1, 2])).unwrap_err(),
        ValidationError::MetadataNotObject("an array")
    );
    assert!(s.read_all(Position::START, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn reads_respect_from_and_limit() {
    let db = common::test_db().await;
    let s = &db.store;
    for i in 0..10 {
        s.append("default", if i % 2 == 0 { "even" } else { "odd" }, ExpectedVersion::Any, &[ev("N", i)])
            .await
            .unwrap();
    }
    let last = s.read_stream("odd", 5, 1).await.unwrap()[0].position;
    common::settle(s, last).await;
    let evens = s.read_stream("even", 2, 2).await.unwrap();
    assert_eq!(
        evens.iter().map(|e| (e.version, e.data["n"].as_i64().unwrap())).collect::<Vec<_>>(),
        vec![(2, 2), (3, 4)]
    );
    assert!(s.read_stream("missing", 1, 10).await.unwrap().is_empty());

    let all = s.read_all(Position::START, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.data["n"].as_i64().unwrap()).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    let page = s.read_all(all[3].position, 4).await.unwrap();
    assert_eq!(page, all[4..8].to_vec());
    assert_eq!(s.head().await.unwrap(), all[9].position);
    assert!(s.read_all(all[9].position, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn head_of_an_empty_log_is_start() {
    let db = common::test_db().await;
    assert_eq!(db.store.head().await.unwrap(), Position::START);
}

#[tokio::test]
async fn append_in_the_callers_transaction_commits_or_rolls_back_with_it() {
    let db = common::test_db().await;
    let mut client = db.connect().await;
    client.batch_execute("CREATE TABLE app_orders (id int primary key)").await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO app_orders VALUES (1)", &[]).await.unwrap();
    append_in(&tx, "default", "order-1", ExpectedVersion::NoStream, &[ev("OrderPlaced", 1)]).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(db.store.read_stream("order-1", 1, 10).await.unwrap().is_empty());

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO app_orders VALUES (2)", &[]).await.unwrap();
    let out = append_in(&tx, "default", "order-2", ExpectedVersion::NoStream, &[ev("OrderPlaced", 2)]).await.unwrap();
    // Not visible to others before commit.
    assert!(db.store.read_event(out.events[0].id).await.unwrap().is_none());
    tx.commit().await.unwrap();
    assert_eq!(db.store.read_stream("order-2", 1, 10).await.unwrap().len(), 1);
    let count: i64 = client.query_one("SELECT count(*) FROM app_orders", &[]).await.unwrap().get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_sql_function_appends_in_any_transaction() {
    let db = common::test_db().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "BEGIN; SELECT * FROM flightdeck.append('sql-1', 'Rolled', '{\"x\":1}'); ROLLBACK;
             BEGIN; SELECT * FROM flightdeck.append('sql-1', 'Kept', '{\"x\":2}', '{\"by\":\"psql\"}'); COMMIT;",
        )
        .await
        .unwrap();
    let kept = db.store.read_stream("sql-1", 1, 10).await.unwrap();
    common::settle(&db.store, kept[0].position).await;
    let events = db.store.read_all(Position::START, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "Kept");
    assert_eq!(events[0].version, 1);
    assert_eq!(events[0].metadata, json!({"by": "psql"}));
    assert_eq!(events[0].id.get_version_num(), 7, "SQL-generated ids are UUIDv7 too");

    let row = client
        .query_one("SELECT position, version FROM flightdeck.append('sql-1', 'Next', '{}', expected_version => 1)", &[])
        .await
        .unwrap();
    let position: String = row.get(0);
    assert!(position.parse::<Position>().unwrap() > events[0].position);
    assert_eq!(row.get::<_, i64>(1), 2);

    let err = client
        .query("SELECT * FROM flightdeck.append('sql-1', 'Late', '{}', expected_version => 1)", &[])
        .await
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "FDV01");
    assert_eq!(db_err.detail(), Some("2"));
    let err = client.query("SELECT * FROM flightdeck.append('', 'T', '{}')", &[]).await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "23514", "empty stream ids are refused in SQL too");
}

#[tokio::test]
async fn large_events_are_stored_whole() {
    let db = common::test_db().await;
    let blob = "x".repeat(100 * 1024);
    let out = db
        .store
        .append("default", "big", ExpectedVersion::Any, &[NewEvent::new("Big", json!({ "blob": blob }))])
        .await
        .unwrap();
    let back = db.store.read_event(out.events[0].id).await.unwrap().unwrap();
    assert_eq!(back.data["blob"].as_str().unwrap().len(), 100 * 1024);
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let db = common::test_db().await;
    assert_eq!(db.store.migrate().await.unwrap(), 0, "already migrated by the harness");
    let client = db.connect().await;
    let n: i64 = client.query_one("SELECT count(*) FROM flightdeck.schema_migrations", &[]).await.unwrap().get(0);
    assert!(n >= 3, "{n}");
    // Concurrent migrators on a fresh database: exactly one applies each migration.
    let fresh = common::test_db().await;
    let client = fresh.connect().await;
    client.batch_execute("DROP SCHEMA flightdeck CASCADE").await.unwrap();
    let runs = futures::future::join_all((0..4).map(|_| fresh.store.migrate())).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(applied as i64, n, "each migration applied exactly once");
}

#[tokio::test]
async fn two_stores_appending_to_one_stream_never_collide_or_skip_versions() {
    // Each Store remembers the versions it wrote; the other's appends make that memory stale.
    let db = common::test_db().await;
    let other = flightdeck::store::Store::new(db.config.clone(), 4).unwrap();
    let stores = [&db.store, &other];
    for i in 0..20usize {
        let out =
            stores[i % 3 % 2].append("default", "shared", ExpectedVersion::Any, &[ev("E", i as i64)]).await.unwrap();
        assert_eq!(out.events[0].version, i as u64 + 1);
    }
    // A stale memory never makes an expected-version check pass wrongly…
    db.store.append("default", "shared", ExpectedVersion::Any, &[ev("E", 20)]).await.unwrap();
    other.append("default", "shared", ExpectedVersion::Any, &[ev("E", 21)]).await.unwrap();
    let err = db.store.append("default", "shared", ExpectedVersion::Exact(21), &[ev("E", 22)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: 22, .. }), "{err:?}");
    // …nor fail a right one.
    db.store.append("default", "shared", ExpectedVersion::Exact(22), &[ev("E", 22)]).await.unwrap();
    let versions: Vec<u64> = db.store.read_stream("shared", 1, 100).await.unwrap().iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=23).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_seed_style_append_notifies_the_whole_event_in_its_transaction() {
    let db = common::test_db().await;
    let (_client, mut notes) = db.listen(flightdeck::store::SEED_CHANNEL).await;
    let out =
        db.store.append_seed_style("default", "seed", ExpectedVersion::Any, &[ev("PageViewed", 7)]).await.unwrap();
    let payload = tokio::time::timeout(std::time::Duration::from_secs(10), notes.recv()).await.unwrap().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["eventType"], "PageViewed");
    assert_eq!(payload["payload"], json!({"n": 7}));
    assert_eq!(payload["position"], out.events[0].position.to_string());
}
