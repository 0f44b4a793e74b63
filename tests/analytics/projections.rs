//! The projections: exact against the raw log, resumed from their checkpoint after a restart,
//! exact with two projectors on one database, and rebuilt to the same numbers.

use flightdeck::store::Position;
use serde_json::json;

use crate::common;
use crate::common::process::{flightdeck, run, stderr, stdout};
use crate::support::{Analytics, assert_exact, click, demo_traffic, everything, form, page, raw, reported};

const DEMO_SITES: [&str; 3] = ["demo-shop", "demo-blog", "demo-docs"];

#[tokio::test]
async fn projections_equal_counts_from_the_raw_log() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["handmade"]).await;
    let analytics = Analytics::start(&db).await;
    // What matters is exactness over varied traffic, not how much a loaded machine sends in 2 s.
    let sent = demo_traffic(&analytics.app, 300, 3, 2.0).await;
    assert!(sent >= 20, "{sent}");
    for i in 0..20 {
        let session = format!("hand-{}", i % 4);
        let events = vec![page("/"), click(&format!("el-{}", i % 3)), form("contact", &["name", "email"])];
        assert_eq!(analytics.track("handmade", &session, events).await.0, 202);
    }
    // Not the tracker's: other streams, other types, or malformed, appended through /api/events.
    for body in [
        json!({"stream": "orders-1", "type": "PageViewed", "data": {"site": "handmade", "session": "x", "path": "/"}}),
        json!({"stream": "visit-handmade:x", "type": "OrderPlaced", "data": {"site": "handmade", "session": "x"}}),
        json!({"stream": "visit-handmade:x", "type": "PageViewed", "data": {"site": "handmade", "session": "x"}}),
    ] {
        assert_eq!(analytics.app.post(body).await.0, 201);
    }
    analytics.caught_up(&db).await;
    assert_exact(&analytics, &db, &["demo-shop", "demo-blog", "demo-docs", "handmade"]).await;
    let stats = analytics.stats(&everything(Some("handmade"))).await;
    assert_eq!(reported(&stats).totals, [20, 20, 20], "the three foreign events are not counted");
    assert_eq!(stats["uniqueSessions"], 4);
    assert_eq!(stats["activeSessions"], 4);
    assert_eq!(stats["sites"], json!(["demo-blog", "demo-docs", "demo-shop", "handmade"]));
    analytics.stop().await;
}

#[tokio::test]
async fn a_restarted_projector_resumes_from_its_checkpoint() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let first = Analytics::start(&db).await;
    for i in 0..30 {
        assert_eq!(first.track("shop", &format!("s{}", i % 5), vec![page("/"), click("buy")]).await.0, 202);
    }
    first.caught_up(&db).await;
    assert_eq!(first.projections.counted(), 60);
    let checkpoint = first.projections.position();
    first.stop().await;

    // Events that arrive while no projector runs.
    let plain = common::app::App::start(&db).await;
    for i in 0..10 {
        let (status, _) = crate::support::track(&plain, "shop", &format!("late{i}"), vec![page("/late")]).await;
        assert_eq!(status, 202);
    }
    plain.stop().await;

    let second = Analytics::start(&db).await;
    second.caught_up(&db).await;
    assert!(second.projections.position() > checkpoint);
    assert_eq!(second.projections.counted(), 10, "the restarted projector counted only what it had not");
    assert_exact(&second, &db, &["shop"]).await;
    second.stop().await;
}

#[tokio::test]
async fn the_checkpoint_moves_past_events_the_projections_do_not_count() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let first = Analytics::start(&db).await;
    for i in 0..5 {
        assert_eq!(first.track("shop", &format!("s{i}"), vec![page("/")]).await.0, 202);
    }
    first.caught_up(&db).await;
    let counted = first.projections.counted();
    assert_eq!(counted, 5);

    // Another application's events, after the last tracker event: never counted, but a restart
    // must not read them all again, so the stored checkpoint has to move past them too.
    let mut last = Position::START;
    for batch in 0..6 {
        let events: Vec<_> = (0..200)
            .map(|i| json!({"stream": format!("orders-{batch}"), "type": "OrderPlaced", "data": {"n": i}}))
            .collect();
        let (status, body) = first.app.post(json!(events)).await;
        assert_eq!(status, 201, "{body}");
        last = body["events"][199]["position"].as_str().unwrap().parse().unwrap();
    }
    let stored =
        || async { flightdeck::projections::checkpoint(&db.store, flightdeck::projections::STATS).await.unwrap() };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored().await < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint stayed at {} (last event {last})",
            stored().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(first.projections.position(), stored().await);
    assert_eq!(first.projections.counted(), counted, "nothing foreign was counted");
    first.stop().await;

    // The next projector starts after them, and still counts what comes next exactly once.
    let second = Analytics::start(&db).await;
    let started = tokio::time::timeout(std::time::Duration::from_secs(30), second.projections.wait_for(last)).await;
    assert!(matches!(started, Ok(true)), "the next projector started at {}", second.projections.position());
    assert_eq!(second.track("shop", "late", vec![page("/late"), click("buy")]).await.0, 202);
    second.caught_up(&db).await;
    assert_eq!(second.projections.counted(), 2);
    assert_exact(&second, &db, &["shop"]).await;
    second.stop().await;
}

#[tokio::test]
async fn two_projectors_on_one_database_count_each_event_once() {
    let db = common::test_db().await;
    let (a, b) = (Analytics::start(&db).await, Analytics::start(&db).await);
    let (sent_a, sent_b) = tokio::join!(demo_traffic(&a.app, 200, 3, 2.0), demo_traffic(&b.app, 200, 3, 2.0));
    assert!(sent_a > 0 && sent_b > 0);
    a.caught_up(&db).await;
    b.caught_up(&db).await;
    let counted = a.projections.counted() + b.projections.counted();
    let stored = raw(&db, None).await.totals.iter().sum::<i64>();
    assert_eq!(counted as i64, stored, "between them, each event was counted exactly once");
    assert_exact(&a, &db, &DEMO_SITES).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn rebuild_recomputes_the_same_numbers_while_a_server_runs() {
    let db = common::test_db().await;
    let analytics = Analytics::start(&db).await;
    demo_traffic(&analytics.app, 300, 3, 1.5).await;
    analytics.caught_up(&db).await;
    let before = analytics.stats(&everything(None)).await;

    // Damage the tables: a rebuild must put them right.
    let client = db.connect().await;
    client
        .batch_execute(
            "UPDATE flightdeck.stats_pages SET views = views * 10; DELETE FROM flightdeck.stats_session_minutes; \
             DELETE FROM flightdeck.stats_sites",
        )
        .await
        .unwrap();
    assert_ne!(analytics.stats(&everything(None)).await["pageViews"], before["pageViews"]);

    let out = run(flightdeck().env("DATABASE_URL", db.url()).args(["projections", "rebuild"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(summary["eventsRead"].as_u64().unwrap() > 0, "{summary}");
    assert!(stderr(&out).contains("rebuilt the stats"), "{}", stderr(&out));
    let after = analytics.stats(&everything(None)).await;
    for field in ["totals", "pageViews", "perMinute", "interactions", "formSubmissions", "uniqueSessions", "sites"] {
        assert_eq!(after[field], before[field], "{field}");
    }

    // A rebuild racing live traffic and the server's projector: still exact afterwards.
    let store = db.store.clone();
    let rebuild = tokio::spawn(async move { flightdeck::projections::rebuild(&store, |_, _| {}).await.unwrap() });
    demo_traffic(&analytics.app, 300, 3, 1.0).await;
    let summary = rebuild.await.unwrap();
    assert!(summary.position > Position::START);
    analytics.caught_up(&db).await;
    assert_exact(&analytics, &db, &DEMO_SITES).await;

    // The live projector carries on after the rebuild.
    analytics.app.register_sites(&["demo-shop"]).await;
    assert_eq!(analytics.track("demo-shop", "after", vec![page("/after")]).await.0, 202);
    analytics.caught_up(&db).await;
    assert_exact(&analytics, &db, &DEMO_SITES).await;
    analytics.stop().await;
}
