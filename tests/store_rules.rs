//! The events table's rules (migration 0006): kept as domains, enforced on every way a row can be
//! written, and reached from an older schema without rewriting the table or losing a row.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use flightdeck::store::{ExpectedVersion, NewEvent};
use serde_json::json;
use tokio_postgres::types::ToSql;

/// A direct INSERT of one event; every column is a parameter, as another application would write.
/// The parameters are cast to the base types: PostgreSQL would otherwise infer the domains, which
/// drivers that check types before sending (tokio-postgres among them) do not accept for a string.
const INSERT: &str = "INSERT INTO flightdeck.events (id, stream_id, version, type, data, metadata, site) \
                      VALUES (gen_random_uuid(), $1::text, $2::int8, $3::text, '{}', $4::jsonb, $5::text)";

/// One row's values; `good()` passes every rule.
#[derive(Clone)]
struct Row {
    stream: String,
    version: i64,
    event_type: String,
    metadata: serde_json::Value,
    site: String,
}

fn good(stream: &str) -> Row {
    Row { stream: stream.into(), version: 1, event_type: "T".into(), metadata: json!({}), site: "default".into() }
}

async fn insert(client: &tokio_postgres::Client, row: &Row) -> Result<u64, tokio_postgres::Error> {
    let params: [&(dyn ToSql + Sync); 5] = [&row.stream, &row.version, &row.event_type, &row.metadata, &row.site];
    client.execute(INSERT, &params).await
}

/// Each rule with a value it refuses and the boundary it accepts.
fn cases() -> Vec<(&'static str, Row, Row)> {
    let with = |f: &dyn Fn(&mut Row)| {
        let mut row = good("rules");
        f(&mut row);
        row
    };
    vec![
        ("empty stream", with(&|r| r.stream = String::new()), with(&|r| r.stream = "s".into())),
        ("stream of 256 bytes", with(&|r| r.stream = "é".repeat(128)), with(&|r| r.stream = "x".repeat(255))),
        ("control character in stream", with(&|r| r.stream = "a\nb".into()), with(&|r| r.stream = "a b".into())),
        ("empty type", with(&|r| r.event_type = String::new()), with(&|r| r.event_type = "t".into())),
        ("type of 256 bytes", with(&|r| r.event_type = "x".repeat(256)), with(&|r| r.event_type = "x".repeat(255))),
        ("control character in type", with(&|r| r.event_type = "a\tb".into()), with(&|r| r.event_type = "a.b".into())),
        ("version 0", with(&|r| r.version = 0), with(&|r| r.version = 1)),
        ("negative version", with(&|r| r.version = -3), with(&|r| r.version = 2)),
        ("metadata array", with(&|r| r.metadata = json!([1])), with(&|r| r.metadata = json!({"a": [1]}))),
        ("metadata string", with(&|r| r.metadata = json!("m")), with(&|r| r.metadata = json!({"m": "m"}))),
        ("site with a space", with(&|r| r.site = "a b".into()), with(&|r| r.site = "a-b_C9".into())),
        ("site of 65 characters", with(&|r| r.site = "x".repeat(65)), with(&|r| r.site = "x".repeat(64))),
    ]
}

#[tokio::test]
async fn every_rule_refuses_a_direct_insert_and_accepts_its_boundary() {
    let db = common::test_db().await;
    let client = db.connect().await;
    for (n, (name, bad, boundary)) in cases().into_iter().enumerate() {
        let err = insert(&client, &bad).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{name}: {err}");
        // Each accepted row on a stream of its own, so versions never collide.
        let mut boundary = boundary;
        if boundary.stream == "rules" {
            boundary.stream = format!("rules-{n}");
        }
        assert_eq!(insert(&client, &boundary).await.unwrap(), 1, "{name}: the boundary is accepted");
    }
    let stored: i64 = client.query_one("SELECT count(*) FROM flightdeck.events", &[]).await.unwrap().get(0);
    assert_eq!(stored, cases().len() as i64, "only the accepted rows were stored");
}

#[tokio::test]
async fn the_rules_hold_for_updates_and_for_the_sql_functions() {
    let db = common::test_db().await;
    let client = db.connect().await;
    insert(&client, &good("kept")).await.unwrap();
    for set in ["type = ''", "stream_id = E'a\\nb'", "version = 0", "metadata = '[]'", "site = 'no good'"] {
        let err = client.execute(&format!("UPDATE flightdeck.events SET {set}"), &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{set}: {err}");
    }
    for sql in [
        "SELECT * FROM flightdeck.append('', 'T', '{}')",
        "SELECT * FROM flightdeck.append('s', E'T\\u0007', '{}')",
        "SELECT * FROM flightdeck.append('s', 'T', '{}', metadata => '[]')",
        "SELECT * FROM flightdeck.append_batch('s', NULL, ARRAY[NULL::uuid], ARRAY['T'], ARRAY['{}'::jsonb], \
                                               ARRAY['{}'::jsonb], 'x y')",
    ] {
        let err = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{sql}: {err}");
    }
    // The functions still return their declared types (a plpgsql RETURN QUERY compares exactly).
    let row = client.query_one("SELECT * FROM flightdeck.append('s', 'T', '{}')", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>("version"), 1);
    let retry = client
        .query_one(
            "SELECT event_version, stored_before FROM flightdeck.append_batch('s', NULL, \
             ARRAY[(SELECT id FROM flightdeck.events WHERE stream_id = 's')], ARRAY['T'], ARRAY['{}'::jsonb], \
             ARRAY['{}'::jsonb])",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((retry.get::<_, i64>(0), retry.get::<_, bool>(1)), (1, true), "a retry returns the stored row");
}

#[tokio::test]
async fn the_rules_are_domains_and_the_table_has_no_check_constraint() {
    let db = common::test_db().await;
    let client = db.connect().await;
    let table_checks: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'flightdeck.events'::regclass AND contype = 'c'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(table_checks, 0, "a table CHECK is re-parsed at every INSERT statement");
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text, c.conname::text, c.convalidated \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_constraint c ON c.contypid = t.oid \
             WHERE a.attrelid = 'flightdeck.events'::regclass ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let want = [
        ("stream_id", "stream_name", "stream_name_valid"),
        ("version", "event_version", "event_version_positive"),
        ("type", "event_type", "event_type_valid"),
        ("metadata", "metadata_object", "metadata_object_is_object"),
        ("site", "site_id", "site_id_valid"),
    ];
    let want: Vec<(String, String, String, bool)> =
        want.iter().map(|(a, t, c)| (a.to_string(), t.to_string(), c.to_string(), true)).collect();
    assert_eq!(got, want);
}

/// The migrations up to 0005, applied by hand with their bookkeeping, as a database upgraded
/// before 0006 existed.
async fn schema_before_domains(client: &tokio_postgres::Client) {
    client.batch_execute("DROP SCHEMA flightdeck CASCADE").await.unwrap();
    client
        .batch_execute(
            "CREATE SCHEMA flightdeck;
             CREATE TABLE flightdeck.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .unwrap();
    let old = [
        (1, "event_store", include_str!("../migrations/0001_event_store.sql")),
        (2, "notify_sql_appends", include_str!("../migrations/0002_notify_sql_appends.sql")),
        (3, "projections", include_str!("../migrations/0003_projections.sql")),
        (4, "event_site", include_str!("../migrations/0004_event_site.sql")),
        (5, "sites", include_str!("../migrations/0005_sites.sql")),
    ];
    for (version, name, sql) in old {
        client.batch_execute(sql).await.unwrap();
        client
            .execute("INSERT INTO flightdeck.schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])
            .await
            .unwrap();
    }
}

/// The table's and its indexes' storage files: the same after an in-place change.
async fn filenodes(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_relation_filenode(c.oid)::int8 FROM pg_class c \
             WHERE c.oid = 'flightdeck.events'::regclass \
                OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'flightdeck.events'::regclass) \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Every stored row as text, in log order.
async fn all_rows(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client.query("SELECT e::text FROM flightdeck.events e ORDER BY xid, seq", &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn upgrading_keeps_every_row_and_rewrites_nothing() {
    let db = common::test_db().await;
    let client = db.connect().await;
    schema_before_domains(&client).await;
    client
        .batch_execute(
            "SELECT * FROM flightdeck.append('old-1', 'A', '{\"n\": 1}');
             SELECT * FROM flightdeck.append('old-1', 'B', '{\"n\": 2}', '{\"by\": \"x\"}');
             SELECT * FROM flightdeck.append('shop-1', 'Placed', '{}', site => 'shop');",
        )
        .await
        .unwrap();
    let before_rows = all_rows(&client).await;
    let before_files = filenodes(&client).await;
    assert_eq!(before_rows.len(), 3);
    assert_eq!(before_files.len(), 4, "the table and its three unique indexes: {before_files:?}");

    assert_eq!(db.store.migrate().await.unwrap(), 1, "only the new migration runs");
    assert_eq!(all_rows(&client).await, before_rows, "every row as it was");
    assert_eq!(filenodes(&client).await, before_files, "neither the table nor an index was rewritten");

    // The upgraded store appends on every path and keeps the rules.
    let out = db
        .store
        .append("default", "old-1", ExpectedVersion::Exact(2), &[NewEvent::new("C", json!({"n": 3}))])
        .await
        .unwrap();
    assert_eq!(out.events[0].version, 3);
    let read = db.store.read_stream("old-1", 1, 10).await.unwrap();
    let types: Vec<&str> = read.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["A", "B", "C"]);
    assert_eq!(read[1].metadata, json!({"by": "x"}));
    let err = insert(&client, &Row { version: 0, ..good("late") }).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23514", "{err}");
}
