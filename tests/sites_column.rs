//! Every event belongs to a site (`flightdeck.events.site`, migration 0004), end to end: the
//! column's default and rule, one site per stream on every append path (the SQL functions, the
//! checked path, the fast path with its version memory, group commit, HTTP), the site in what is
//! read and delivered, the `site` filter on SSE and WebSocket (live and replayed), and the
//! tracker's events stored under their batch's site.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::app::App;
use common::sse::SseClient;
use common::ws::{WsClient, numbers};
use flightdeck::store::{ExpectedVersion, NewEvent, StoreError, append_in};
use serde_json::{Value, json};

async fn count(db: &common::TestDb, stream: &str) -> i64 {
    let client = db.connect().await;
    client.query_one("SELECT count(*) FROM flightdeck.events WHERE stream_id = $1", &[&stream]).await.unwrap().get(0)
}

async fn sites_of(db: &common::TestDb, stream: &str) -> Vec<String> {
    let client = db.connect().await;
    let rows = client
        .query("SELECT site FROM flightdeck.events WHERE stream_id = $1 ORDER BY version", &[&stream])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn ev(n: i64) -> NewEvent {
    NewEvent::new("E", json!({ "n": n }))
}

#[tokio::test]
async fn the_column_defaults_to_default_and_follows_the_site_rule() {
    let db = common::test_db().await;
    let client = db.connect().await;
    let insert = "INSERT INTO flightdeck.events (id, stream_id, version, type, data) \
                  VALUES (gen_random_uuid(), $1::text, 1, 'T', '{}')";
    client.execute(insert, &[&"plain"]).await.unwrap();
    assert_eq!(sites_of(&db, "plain").await, ["default"], "a row that names no site is `default`");
    let with_site = "INSERT INTO flightdeck.events (id, stream_id, version, type, data, site) \
                     VALUES (gen_random_uuid(), $1::text, 1, 'T', '{}', $2::text)";
    client.execute(with_site, &[&"ok", &"shop_2-B"]).await.unwrap();
    for bad in ["", "a b", "a:b", "ü", &"x".repeat(65)] {
        let err = client.execute(with_site, &[&"bad", &bad]).await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{bad:?}: {err}");
    }
    client.execute(with_site, &[&"max", &"x".repeat(64)]).await.unwrap();
    assert_eq!(count(&db, "bad").await, 0);
}

#[tokio::test]
async fn the_sql_functions_keep_their_old_call_shapes_and_refuse_another_site() {
    let db = common::test_db().await;
    let client = db.connect().await;
    // The shapes applications already use: six arguments to append_batch, named arguments to append.
    client
        .batch_execute(
            "SELECT * FROM flightdeck.append_batch('old', NULL, ARRAY[NULL::uuid], ARRAY['A'], ARRAY['{}'::jsonb], \
                                                   ARRAY['{}'::jsonb]);
             SELECT * FROM flightdeck.append('old', 'B', '{}', expected_version => 1);",
        )
        .await
        .unwrap();
    assert_eq!(sites_of(&db, "old").await, ["default", "default"]);

    client.query("SELECT * FROM flightdeck.append('shop-orders', 'Placed', '{}', site => 'shop')", &[]).await.unwrap();
    for sql in [
        "SELECT * FROM flightdeck.append('shop-orders', 'Placed', '{}')",
        "SELECT * FROM flightdeck.append('shop-orders', 'Placed', '{}', site => 'blog')",
        "SELECT * FROM flightdeck.append_batch('shop-orders', NULL, ARRAY[NULL::uuid], ARRAY['A'], \
                                               ARRAY['{}'::jsonb], ARRAY['{}'::jsonb], 'blog')",
    ] {
        let err = client.query(sql, &[]).await.unwrap_err();
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code().code(), "FDS01", "{sql}: {err}");
        assert_eq!(db_err.detail(), Some("shop"), "DETAIL names the stream's site");
    }
    let err =
        client.query("SELECT * FROM flightdeck.append('x', 'A', '{}', site => 'no good')", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23514", "{err}");
    assert_eq!(sites_of(&db, "shop-orders").await, ["shop"], "nothing else was stored");
    assert_eq!(count(&db, "x").await, 0);
}

#[tokio::test]
async fn no_append_path_lets_a_stream_change_site() {
    let db = common::test_db().await;
    let store = &db.store;
    // The fast path: the first append creates the stream under `shop`; the second is a plain
    // INSERT with the remembered version; a third under `blog` must not use that memory.
    store.append("shop", "s1", ExpectedVersion::Any, &[ev(1)]).await.unwrap();
    let second = store.append("shop", "s1", ExpectedVersion::Any, &[ev(2)]).await.unwrap();
    assert_eq!((second.events[0].version, second.events[0].site.as_str()), (2, "shop"));
    for (events, expected) in [
        (vec![ev(3)], ExpectedVersion::Any),
        (vec![ev(3)], ExpectedVersion::Exact(2)),
        (vec![ev(3), ev(4)], ExpectedVersion::Any),
    ] {
        let err = store.append("blog", "s1", expected, &events).await.unwrap_err();
        let StoreError::SiteMismatch { stream, existing, requested } = &err else { panic!("{err:?}") };
        assert_eq!((stream.as_str(), existing.as_str(), requested.as_str()), ("s1", "shop", "blog"));
        assert!(err.to_string().contains("belongs to site \"shop\""), "{err}");
    }
    // The memory still serves the right site afterwards.
    assert_eq!(store.append("shop", "s1", ExpectedVersion::Any, &[ev(5)]).await.unwrap().events[0].version, 3);
    assert_eq!(sites_of(&db, "s1").await, ["shop", "shop", "shop"]);

    // A retry of stored events under another site is a mismatch too, not an idempotent success.
    let fixed = NewEvent::new("E", json!(9)).with_id(uuid::Uuid::now_v7());
    store.append("shop", "s2", ExpectedVersion::Any, std::slice::from_ref(&fixed)).await.unwrap();
    let err = store.append("blog", "s2", ExpectedVersion::Any, &[fixed]).await.unwrap_err();
    assert!(matches!(err, StoreError::SiteMismatch { .. }), "{err:?}");

    // The checked path, inside a caller's transaction.
    let mut client = db.connect().await;
    let tx = client.transaction().await.unwrap();
    let err = append_in(&tx, "blog", "s1", ExpectedVersion::Any, &[ev(6)]).await.unwrap_err();
    assert!(matches!(err, StoreError::SiteMismatch { .. }), "{err:?}");
    drop(tx);

    // An invalid site is refused before the database.
    let err = store.append("no good", "s3", ExpectedVersion::Any, &[ev(1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(flightdeck::store::ValidationError::Site(_))), "{err:?}");

    // A new stream taken by two sites at once: exactly one wins, the other is told why.
    for round in 0..20 {
        let stream = format!("race-{round}");
        let (one, two) = ([ev(1)], [ev(1), ev(2)]);
        let (a, b) = tokio::join!(
            store.append("shop", &stream, ExpectedVersion::Any, &one),
            store.append("blog", &stream, ExpectedVersion::Any, &two),
        );
        let sites = sites_of(&db, &stream).await;
        match (a, b) {
            (Ok(_), Err(StoreError::SiteMismatch { existing, .. })) => {
                assert_eq!((existing.as_str(), sites), ("shop", vec!["shop".to_string()]));
            }
            (Err(StoreError::SiteMismatch { existing, .. }), Ok(_)) => {
                assert_eq!((existing.as_str(), sites), ("blog", vec!["blog".to_string(); 2]));
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(count(&db, "s1").await, 3);
}

#[tokio::test]
async fn http_appends_carry_the_site_and_cannot_move_a_stream() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let (status, body) = app.post(json!({"stream": "o-1", "type": "Placed", "data": 1, "site": "shop"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["events"][0]["site"], "shop");
    let (status, body) = app.post(json!({"stream": "plain", "type": "Placed", "data": 1})).await;
    assert_eq!((status, &body["events"][0]["site"]), (201, &json!("default")), "no site means default");

    // Another site on the stream: 409, nothing stored; through the group commit's batch too.
    let (status, body) = app
        .post(json!([{"stream": "o-1", "type": "Placed", "data": 2, "site": "blog"},
                     {"stream": "o-1", "type": "Placed", "data": 3, "site": "blog"}]))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stream_site_mismatch");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"shop\"") && message.contains("\"blog\""), "{message}");
    let (status, body) = app.post(json!({"stream": "o-1", "type": "Placed", "data": 4})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("stream_site_mismatch")), "{body}");
    let long = "x".repeat(255);
    app.post(json!({"stream": long, "type": "A", "data": 1, "site": "shop"})).await;
    let (status, body) = app.post(json!({"stream": long, "type": "A", "data": 1, "site": "blog"})).await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"].as_str().unwrap().len() < 300, "a long stream id is not echoed whole");
    assert_eq!(count(&db, "o-1").await, 1);

    // Invalid or mixed sites: 400 invalid_site naming the field.
    for (request, words) in [
        (json!({"stream": "o-2", "type": "A", "data": 1, "site": "a b"}), "site \"a b\" must be 1 to 64"),
        (json!({"stream": "o-2", "type": "A", "data": 1, "site": 7}), "site must be a string"),
        (json!({"stream": "o-2", "type": "A", "data": 1, "site": "y".repeat(5000)}), "must be 1 to 64"),
        (
            json!([{"stream": "o-2", "type": "A", "data": 1, "site": "shop"},
                   {"stream": "o-2", "type": "A", "data": 1, "site": "blog"}]),
            "events[1].site: all events of one request must name the same site",
        ),
        (
            json!([{"stream": "o-2", "type": "A", "data": 1, "site": "shop"}, {"stream": "o-2", "type": "A", "data": 1}]),
            "events[1].site",
        ),
    ] {
        let (status, body) = app.post(request.clone()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_site")), "{request}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message}");
        assert!(message.len() < 300, "{message}");
    }
    assert_eq!(count(&db, "o-2").await, 0);

    // Reads carry the site.
    let (status, stream) = app.get("/api/streams/o-1").await;
    assert_eq!(status, 200);
    assert_eq!(stream["events"][0]["site"], "shop");
    let id = stream["events"][0]["id"].as_str().unwrap();
    let (_, event) = app.get(&format!("/api/events/{id}")).await;
    assert_eq!(event["site"], "shop");
    app.stop().await;
}

/// Appends alternately to `shop` and `blog` streams, `n` from `from`.
async fn mixed(app: &App, from: i64, n: i64) {
    for i in from..from + n {
        let site = if i % 2 == 0 { "shop" } else { "blog" };
        let (status, body) =
            app.post(json!({"stream": format!("{site}-s"), "type": "E", "data": {"n": i}, "site": site})).await;
        assert_eq!(status, 201, "{body}");
    }
}

fn ns(events: &[(String, Value)]) -> Vec<i64> {
    events.iter().map(|(_, e)| e["data"]["n"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn sse_filters_by_site_live_and_on_replay() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    mixed(&app, 0, 4).await;
    let mut all = SseClient::connect(&app.url("/api/events?from=start"), None).await;
    let mut shop = SseClient::connect(&app.url("/api/events?from=start&site=shop"), None).await;
    let mut both = SseClient::connect(&app.url("/api/events?from=start&site=blog&site=shop"), None).await;
    let mut listed = SseClient::connect(&app.url("/api/events?from=start&site=blog,nobody"), None).await;
    mixed(&app, 4, 4).await;
    let every = all.events(8).await;
    assert_eq!(ns(&every), (0..8).collect::<Vec<_>>());
    for (_, envelope) in &every {
        let want = if envelope["data"]["n"].as_i64().unwrap() % 2 == 0 { "shop" } else { "blog" };
        assert_eq!(envelope["site"], want, "{envelope}");
    }
    let shop_events = shop.events(4).await;
    assert_eq!(ns(&shop_events), [0, 2, 4, 6], "replayed and live, only shop's");
    assert!(shop_events.iter().all(|(_, e)| e["site"] == "shop"));
    assert_eq!(ns(&both.events(8).await), (0..8).collect::<Vec<_>>());
    assert_eq!(ns(&listed.events(4).await), [1, 3, 5, 7]);

    let (status, body) = app.get("/api/events?site=a%20b").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_site")), "{body}");
    let many = (0..33).map(|i| format!("s{i}")).collect::<Vec<_>>().join(",");
    let (status, body) = app.get(&format!("/api/events?site={many}")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("too_many_filters")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("sites has 33 entries"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn websocket_subscriptions_filter_by_site_live_and_on_replay() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    mixed(&app, 0, 4).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("shop", json!({"from": "start", "sites": ["shop"]})).await;
    ws.subscribe("any", json!({"from": "start"})).await;
    mixed(&app, 4, 4).await;
    let shop = ws.events("shop", 4).await;
    assert_eq!(numbers(&shop), [0, 2, 4, 6]);
    assert!(shop.iter().all(|e| e["site"] == "shop"), "{shop:?}");
    let any = ws.events("any", 8).await;
    assert_eq!(numbers(&any).len(), 8);
    assert!(any.iter().all(|e| e["site"] == "shop" || e["site"] == "blog"), "{any:?}");

    ws.send(json!({"op": "subscribe", "id": "bad", "sites": ["a:b"]})).await;
    let error = ws.answer("error", "bad").await;
    assert_eq!(error["code"], "invalid_filter", "{error}");
    app.stop().await;
}

#[tokio::test]
async fn tracker_events_are_stored_under_their_batch_site() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    app.register_sites(&["shop-2"]).await;
    let page = json!({"id": uuid::Uuid::now_v7().to_string(), "type": "PageViewed", "data": {"path": "/"}});
    let body = json!({"site": "shop-2", "session": "sess-1", "events": [page]}).to_string();
    let r = app
        .http
        .post(app.url("/api/track"))
        .header("content-type", "text/plain")
        .header("origin", common::sites::ORIGIN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert_eq!(sites_of(&db, "visit-shop-2:sess-1").await, ["shop-2"]);
    let (_, stream) = app.get("/api/streams/visit-shop-2:sess-1").await;
    let event = &stream["events"][0];
    assert_eq!((&event["site"], &event["data"]["site"]), (&json!("shop-2"), &json!("shop-2")), "{event}");
    app.stop().await;
}
