//! `/track.js` and `POST /api/track`: the script, the wire format, validation, CORS and resends.

use serde_json::{Value, json};

use crate::common;
use crate::common::app::App;
use crate::common::sites::ORIGIN;
use crate::support::{Analytics, click, everything, form, page, reported, track};

#[tokio::test]
async fn the_tracker_script_is_served() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let r = app.http.get(app.url("/track.js")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    let script = r.text().await.unwrap();
    for needle in
        ["data-site", "data-endpoint", "sendBeacon", "keepalive", "pushState", "data-fd-track", "data-fd-form"]
    {
        assert!(script.contains(needle), "track.js mentions {needle}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_becomes_one_append_to_the_sessions_stream() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let app = App::start(&db).await;
    let mut first = page("/pricing");
    first["data"]["utm"] = json!({"source": "newsletter"});
    let (status, body) =
        track(&app, "shop", "sess-1", vec![first, click("buy"), form("signup", &["email", "plan"])]).await;
    assert_eq!((status, &body), (202, &json!({"accepted": 3, "duplicates": 0})));
    // application/json works too (with a preflight, for browsers).
    let r = app
        .http
        .post(app.url("/api/track"))
        .header("origin", ORIGIN)
        .json(&json!({"site": "shop", "session": "sess-1", "events": [page("/")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN, "the site's own origin is echoed");
    assert_eq!(r.headers()["vary"], "origin");

    let (status, stream) = app.get("/api/streams/visit-shop:sess-1").await;
    assert_eq!(status, 200, "{stream}");
    let events = stream["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["PageViewed", "ElementInteraction", "FormSubmitted", "PageViewed"]);
    for e in events {
        assert_eq!((e["data"]["site"].as_str(), e["data"]["session"].as_str()), (Some("shop"), Some("sess-1")));
    }
    assert_eq!(events[0]["data"]["utm"]["source"], "newsletter", "unknown fields are kept");
    assert_eq!(events[2]["data"]["fieldCount"], 2, "the server fills in fieldCount");
    app.stop().await;
}

#[tokio::test]
async fn invalid_batches_get_400s_naming_the_field() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let app = App::start(&db).await;
    let id = uuid::Uuid::now_v7().to_string();
    let batch = |events: Value| json!({"site": "shop", "session": "s", "events": events}).to_string();
    let send = |body: String, content_type: &'static str| {
        let post = app.http.post(app.url("/api/track")).header("origin", ORIGIN);
        post.header("content-type", content_type).body(body).send()
    };
    // (body, content type, status, code, words in the message)
    let cases: Vec<(String, &str, u16, &str, &str)> = vec![
        ("{nope".into(), "text/plain", 400, "malformed_json", "not valid JSON"),
        (json!({"session": "s", "events": []}).to_string(), "text/plain", 400, "invalid_event", "site is missing"),
        (
            json!({"site": "a:b", "session": "s", "events": []}).to_string(),
            "text/plain",
            400,
            "invalid_event",
            "site \"a:b\"",
        ),
        (
            batch(json!([{"type": "PageViewed", "data": {"path": "/"}}])),
            "text/plain",
            400,
            "invalid_event",
            "events[0].id is missing",
        ),
        (
            batch(json!([{"id": id, "type": "Scrolled", "data": {}}])),
            "text/plain",
            400,
            "invalid_event",
            "events[0].type \"Scrolled\"",
        ),
        (
            batch(json!([{"id": id, "type": "PageViewed", "data": {"title": "x"}}])),
            "text/plain",
            400,
            "invalid_event",
            "events[0].data.path is missing",
        ),
        (
            batch(json!([page("/"), {"id": id, "type": "ElementInteraction", "data": {"path": "/"}}])),
            "text/plain",
            400,
            "invalid_event",
            "events[1].data.element is missing",
        ),
        (
            batch(json!([{"id": id, "type": "FormSubmitted", "data": {"form": "f", "fields": [{"email": "a@b.c"}]}}])),
            "text/plain",
            400,
            "invalid_event",
            "events[0].data.fields[0] must be a field name",
        ),
        (
            batch(
                json!([{"id": id, "type": "FormSubmitted", "data": {"form": "f", "fields": ["email"], "values": ["a@b.c"]}}]),
            ),
            "text/plain",
            400,
            "invalid_event",
            "never values",
        ),
        (batch(json!([page("/")])), "application/x-www-form-urlencoded", 415, "unsupported_media_type", "text/plain"),
        (
            batch(json!([{"id": id, "type": "PageViewed", "data": {"path": "/", "blob": "x".repeat(70_000)}}])),
            "text/plain",
            413,
            "too_large",
            "65536",
        ),
    ];
    for (i, (body, content_type, status, code, words)) in cases.into_iter().enumerate() {
        let r = send(body, content_type).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "case {i}");
        assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN, "case {i}: errors are readable cross-origin");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(words), "case {i}: {body}");
    }
    let (status, events) = app.get("/api/streams/visit-shop:s").await;
    assert_eq!((status, events["events"].as_array().unwrap().len()), (200, 0), "nothing was stored");
    app.stop().await;
}

#[tokio::test]
async fn cors_preflight_is_granted_only_to_registered_origins() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let app = App::start(&db).await;
    let preflight = |origin: Option<&'static str>| {
        let mut r = app
            .http
            .request(reqwest::Method::OPTIONS, app.url("/api/track"))
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type");
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        r.send()
    };
    let r = preflight(Some(ORIGIN)).await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert_eq!(h["vary"], "origin");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert_eq!(h["access-control-allow-headers"], "content-type");
    for (origin, code) in [(Some("https://www.example.org"), "origin_not_allowed"), (None, "origin_required")] {
        let r = preflight(origin).await.unwrap();
        assert_eq!(r.status(), 403, "{origin:?}");
        assert!(r.headers().get("access-control-allow-origin").is_none(), "{origin:?}: no CORS granted");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // The script itself stays readable by anyone.
    let r = app.http.get(app.url("/track.js")).header("origin", "https://www.example.org").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    app.stop().await;
}

#[tokio::test]
async fn a_resent_batch_is_not_counted_twice() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let analytics = Analytics::start(&db).await;
    let batch = vec![page("/"), click("buy"), page("/cart")];
    assert_eq!(analytics.track("shop", "s1", batch.clone()).await, (202, json!({"accepted": 3, "duplicates": 0})));
    // The same batch again (a retry after a lost answer), then again merged with a new event.
    assert_eq!(analytics.track("shop", "s1", batch.clone()).await, (202, json!({"accepted": 0, "duplicates": 3})));
    let mut merged = batch.clone();
    merged.push(form("checkout", &["email"]));
    assert_eq!(analytics.track("shop", "s1", merged).await, (202, json!({"accepted": 1, "duplicates": 3})));
    // Resends racing each other: each event is stored once whichever wins.
    let racing: Vec<Value> = (0..5).map(|i| page(&format!("/race/{i}"))).collect();
    let sends = (0..4).map(|_| analytics.track("shop", "s1", racing.clone()));
    let answers = futures::future::join_all(sends).await;
    assert!(answers.iter().all(|(status, _)| *status == 202), "{answers:?}");
    let accepted: i64 = answers.iter().map(|(_, body)| body["accepted"].as_i64().unwrap()).sum();
    assert_eq!(accepted, 5, "{answers:?}");

    let (_, stream) = analytics.app.get("/api/streams/visit-shop:s1").await;
    assert_eq!(stream["events"].as_array().unwrap().len(), 9);
    analytics.caught_up(&db).await;
    let stats = reported(&analytics.stats(&everything(Some("shop"))).await);
    assert_eq!(stats.totals, [7, 1, 1]);
    assert_eq!(stats.unique_sessions, 1);
    analytics.stop().await;
}
