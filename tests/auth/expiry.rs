//! How long a token's streams live: a token that expires ends its SSE stream with a last
//! `token-expired` frame, closes its WebSocket with 4401 `token expired`, and ends its stats
//! stream; and how many streams one token may hold open at once.

use std::time::Duration;

use flightdeck::http::LimitsConfig;
use serde_json::{Value, json};

use crate::common;
use crate::common::sse::SseClient;
use crate::support::{Secured, Tok};

/// Bounds each wait: only there so a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads frames until the stream ends; the last frame with a name, if any.
async fn last_named_frame(client: &mut SseClient) -> Option<common::sse::Frame> {
    let mut last = None;
    while let Some(frame) = tokio::time::timeout(PATIENCE, client.next()).await.expect("the stream did not end") {
        if frame.event.is_some() {
            last = Some(frame);
        }
    }
    last
}

fn assert_token_expired(frame: Option<common::sse::Frame>, what: &str) {
    let frame = frame.unwrap_or_else(|| panic!("{what}: no named frame"));
    assert_eq!(frame.event.as_deref(), Some("token-expired"), "{what}: {frame:?}");
    let data: Value = serde_json::from_str(&frame.data).unwrap();
    assert_eq!(data["code"], "token_expired", "{what}: {data}");
    assert!(data["message"].as_str().unwrap().contains("fresh token"), "{what}: {data}");
}

#[tokio::test]
async fn an_expiring_token_ends_sse_websocket_and_stats_streams() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let token = Tok::sites(&["shop"]).ttl(Duration::from_secs(2)).sign();
    let mut sse = SseClient::connect(&server.url(&format!("/api/events?access_token={token}")), None).await;
    let mut stats = SseClient::connect(&server.url(&format!("/api/stats/stream?access_token={token}")), None).await;
    let mut ws = server.ws(Some(&token)).await.unwrap();
    ws.subscribe("s", json!({})).await;

    // An event before expiry arrives as usual.
    let admin = Tok::sites(&["*"]).publish().sign();
    let (status, _) =
        server.post(&json!({"site": "shop", "stream": "shop-a", "type": "Viewed", "data": {}}), Some(&admin)).await;
    assert_eq!(status, 201);
    assert_eq!(sse.events(1).await[0].1["stream"], "shop-a");

    assert_token_expired(last_named_frame(&mut sse).await, "SSE");
    assert_token_expired(last_named_frame(&mut stats).await, "stats stream");
    let (_, closed) = tokio::time::timeout(PATIENCE, ws.until_closed()).await.unwrap();
    assert_eq!((closed.code, closed.reason.as_str()), (4401, "token expired"));

    // Reconnecting with the expired token is refused from `exp` on (the streams end at `exp` by
    // the server's monotonic clock, which may run a hair ahead of its wall clock, hence the short
    // wait); a fresh one works.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = server.get("/api/stats", Some(&token)).await;
        if status == 401 {
            assert_eq!(body["error"]["code"], "token_expired");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the expired token is still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = Tok::sites(&["shop"]).sign();
    SseClient::connect(&server.url(&format!("/api/events?access_token={fresh}")), None).await;
    server.stop().await;
}

#[tokio::test]
async fn streams_per_token_are_capped_across_transports() {
    let db = common::test_db().await;
    let limits = LimitsConfig { streams_per_token: Some(2), ..LimitsConfig::default() };
    let server = Secured::with_limits(&db, limits).await;
    let token = Tok::sites(&["shop"]).sign();
    let sse_url = server.url(&format!("/api/events?access_token={token}"));
    let _first = SseClient::connect(&sse_url, None).await;
    let mut second = server.ws(Some(&token)).await.unwrap();
    second.subscribe("s", json!({})).await;
    // A third stream of the same token, from loopback (exempt from the per-address limit).
    for path in ["/api/events", "/api/stats/stream", "/ws/events"] {
        let response = reqwest::Client::new().get(server.url(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 429, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_streams", "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("per token"), "{body}");
    }
    // Another token is counted on its own; closing a stream frees its slot.
    let other = Tok::sites(&["shop"]).sign();
    SseClient::connect(&server.url(&format!("/api/events?access_token={other}")), None).await;
    second.send_raw(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    second.until_closed().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = reqwest::Client::new().get(&sse_url).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(tokio::time::Instant::now() < deadline, "the closed socket's slot was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("flightdeck_limited_total{limit=\"streams_per_token\"} 3"), "{metrics}");
    server.stop().await;
}
