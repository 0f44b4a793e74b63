//! `GET /api/stats` (ranges, sites, parameters) and the live stream `GET /api/stats/stream`.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::common;
use crate::common::app::App;
use crate::common::sse::SseClient;
use crate::support::{Analytics, page, reported};

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true).replace('+', "%2B")
}

#[tokio::test]
async fn ranges_are_whole_minutes_of_event_time() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["r"]).await;
    let analytics = Analytics::start(&db).await;
    // Events stored two hours ago (as an application appending through SQL might): the buckets
    // follow the events' timestamps, not the time the projector ran.
    let now = Utc::now();
    let base = DateTime::from_timestamp((now - TimeDelta::hours(2)).timestamp() / 60 * 60, 0).unwrap();
    let client = db.connect().await;
    for (secs, session, kind, data) in [
        (10, "s1", "PageViewed", json!({"path": "/a"})),
        (50, "s2", "PageViewed", json!({"path": "/b"})),
        (65, "s1", "ElementInteraction", json!({"element": "x"})),
        (180, "s3", "FormSubmitted", json!({"form": "f", "fields": ["email"]})),
    ] {
        let mut data = data;
        data["site"] = json!("r");
        data["session"] = json!(session);
        let stream = format!("visit-r:{session}");
        client
            .execute(
                "INSERT INTO flightdeck.events (id, stream_id, version, type, data, created_at) \
                 SELECT $1, $2::text, coalesce(max(version), 0) + 1, $3::text, $4, $5 \
                 FROM flightdeck.events WHERE stream_id = $2::text",
                &[&uuid::Uuid::now_v7(), &stream, &kind, &data, &(base + TimeDelta::seconds(secs))],
            )
            .await
            .unwrap();
    }
    analytics.caught_up(&db).await;
    let minutes = |m: i64| base + TimeDelta::minutes(m);
    // (from, to, totals, unique sessions, reported from, reported to)
    let cases = [
        (base, minutes(1), [2, 0, 0], 2, base, minutes(1)),
        (base + TimeDelta::seconds(30), minutes(1), [2, 0, 0], 2, base, minutes(1)),
        (minutes(1), minutes(1) + TimeDelta::seconds(1), [0, 1, 0], 1, minutes(1), minutes(2)),
        (base, minutes(10), [2, 1, 1], 3, base, minutes(10)),
        (minutes(4), minutes(10), [0, 0, 0], 0, minutes(4), minutes(10)),
    ];
    for (i, (from, to, totals, sessions, got_from, got_to)) in cases.into_iter().enumerate() {
        let stats = analytics.stats(&format!("site=r&from={}&to={}", at(from), at(to))).await;
        let got = reported(&stats);
        assert_eq!((got.totals, got.unique_sessions), (totals, sessions), "case {i}: {stats}");
        assert_eq!(stats["from"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), got_from, "case {i}");
        assert_eq!(stats["to"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), got_to, "case {i}");
    }
    let all = analytics.stats(&format!("from={}&to={}", at(base), at(minutes(10)))).await;
    assert_eq!(all["site"], Value::Null);
    assert_eq!(all["pageViews"], json!([{"path": "/a", "count": 1}, {"path": "/b", "count": 1}]));
    assert_eq!(all["perMinute"].as_array().unwrap().len(), 3);
    assert_eq!(all["formSubmissions"], json!([{"form": "f", "count": 1}]));
    let top = analytics.stats(&format!("from={}&to={}&top=1", at(base), at(minutes(10)))).await;
    assert_eq!(top["pageViews"].as_array().unwrap().len(), 1);

    // The default range is the last hour; active sessions are those seen in the last 5 minutes.
    let recent = analytics.stats("site=r").await;
    assert_eq!((reported(&recent).totals, recent["activeSessions"].as_i64()), ([0, 0, 0], Some(0)));
    assert_eq!(recent["sites"], json!(["r"]));
    assert_eq!(analytics.track("r", "now", vec![page("/now")]).await.0, 202);
    analytics.caught_up(&db).await;
    let recent = analytics.stats("site=r").await;
    assert_eq!((reported(&recent).totals, recent["activeSessions"].as_i64()), ([1, 0, 0], Some(1)));
    let other = analytics.stats("site=elsewhere").await;
    assert_eq!((reported(&other).totals, other["uniqueSessions"].as_i64()), ([0, 0, 0], Some(0)));
    assert_eq!(recent["position"].as_str().unwrap().len(), 32);
    analytics.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400s() {
    let db = common::test_db().await;
    let analytics = Analytics::start(&db).await;
    let cases = [
        ("/api/stats?from=yesterday", "from \"yesterday\" is not an RFC 3339 time"),
        ("/api/stats?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z", "must be before to"),
        ("/api/stats?from=2025-01-01T00:00:00Z&to=2025-03-01T00:00:00Z", "at most 31 days"),
        ("/api/stats?site=no%20spaces", "is not a site id"),
        ("/api/stats?top=many", "top must be"),
        ("/api/stats?window=5", "unknown parameter \"window\""),
        ("/api/stats/stream?minutes=-1", "minutes must be"),
        ("/api/stats/stream?to=2025-01-01T00:00:00Z", "unknown parameter \"to\""),
    ];
    for (path, words) in cases {
        let (status, body) = analytics.app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{path}");
        assert!(body["error"]["message"].as_str().unwrap().contains(words), "{path}: {body}");
    }
    analytics.stop().await;
    // A server without a projector has no live stream.
    let plain = App::start(&db).await;
    assert_eq!(plain.get("/api/stats/stream").await.0, 503);
    assert_eq!(plain.get("/api/stats").await.0, 200, "the tables can still be read");
    plain.stop().await;
}

#[tokio::test]
async fn the_live_stream_pushes_new_numbers() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["live"]).await;
    let analytics = Analytics::start(&db).await;
    let mut live = SseClient::connect(&analytics.app.url("/api/stats/stream?site=live&window=10m&top=3"), None).await;
    let first: Value = serde_json::from_str(&live.next().await.unwrap().data).unwrap();
    assert_eq!(reported(&first).totals, [0, 0, 0], "{first}");
    for i in 0..3 {
        assert_eq!(analytics.track("live", &format!("v{i}"), vec![page("/"), page("/next")]).await.0, 202);
    }
    let mut frames = 0;
    loop {
        let frame: Value = serde_json::from_str(&live.next().await.expect("the stream goes on").data).unwrap();
        frames += 1;
        let got = reported(&frame);
        if got.totals == [6, 0, 0] {
            assert_eq!(got.unique_sessions, 3);
            assert_eq!(frame["activeSessions"], 3);
            assert_eq!(frame["pageViews"], json!([{"path": "/", "count": 3}, {"path": "/next", "count": 3}]));
            break;
        }
        assert!(got.totals[0] < 6 && frames < 10, "{frame}");
    }
    // Shutdown ends the stream.
    let ended = tokio::spawn(async move { live.next().await });
    analytics.stop().await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), ended).await.unwrap().unwrap();
    assert!(ended.is_none(), "{ended:?}");
}
