//! The HTTP API over real sockets: ingestion, reads, errors, and the SSE stream with filters,
//! resume and replay.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::app::App;
use common::sse::SseClient;
use serde_json::{Value, json};

#[tokio::test]
async fn ingest_then_read_back() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let (status, body) = app
        .post(json!({"stream": "s-1", "type": "PageViewed", "data": {"pageId": "home"}, "metadata": {"c": 1}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let created = &body["events"][0];
    assert_eq!(created["stream"], "s-1");
    assert_eq!(created["version"], 1);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["position"].as_str().unwrap().len(), 32);

    let (status, event) = app.get(&format!("/api/events/{id}")).await;
    assert_eq!(status, 200);
    for field in ["id", "position", "stream", "version", "type", "data", "metadata", "timestamp"] {
        assert!(event.get(field).is_some(), "{field} in {event}");
    }
    assert_eq!(event["data"]["pageId"], "home");

    // An array is one atomic append to one stream; a retried request stores nothing new.
    let batch = json!([
        {"stream": "s-1", "type": "Click", "data": 1, "id": "01a21b54-1abe-7246-b1b7-00e293ce98a5", "expectedVersion": 1},
        {"stream": "s-1", "type": "Click", "data": 2, "id": "01a21b54-1abe-7246-b1b7-00e293ce98a6"}
    ]);
    let (status, body) = app.post(batch.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    let (status, again) = app.post(batch).await;
    assert_eq!(status, 200, "a retry answers 200 with what was stored: {again}");
    assert_eq!(again["events"], body["events"]);
    // Without ids, a resent event is a new event: the id is what makes a retry recognizable.

    let (status, stream) = app.get("/api/streams/s-1?fromVersion=2&limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(stream["events"].as_array().unwrap().len(), 1);
    assert_eq!(stream["events"][0]["version"], 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    app.post(json!({"stream": "c", "type": "A", "data": {}})).await;
    let raw = |body: &str, content_type: &str| {
        app.http.post(app.url("/api/events")).header("content-type", content_type).body(body.to_string())
    };
    // (request, status, code, words in the message)
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (raw("{not json", "application/json"), 400, "malformed_json", "not valid JSON"),
        (raw(r#"{"type":"A","data":1}"#, "application/json"), 400, "invalid_event", "stream is missing"),
        (raw(r#"{"stream":"s","type":5,"data":1}"#, "application/json"), 400, "invalid_event", "type must be a string"),
        (raw(r#"{"stream":"s","type":"A"}"#, "application/json"), 400, "invalid_event", "data is missing"),
        (
            raw(r#"{"stream":"s","type":"A","data":1,"metadata":[1]}"#, "application/json"),
            400,
            "invalid_event",
            "metadata must be a JSON object",
        ),
        (raw(r#"{"stream":"","type":"A","data":1}"#, "application/json"), 400, "invalid_event", "stream id is empty"),
        (
            raw(r#"{"stream":"s","type":"A","data":1,"id":"x"}"#, "application/json"),
            400,
            "invalid_event",
            "is not a UUID",
        ),
        (
            raw(r#"{"stream":"s","type":"A","data":1,"colour":1}"#, "application/json"),
            400,
            "invalid_event",
            "colour is not an event field",
        ),
        (
            raw(r#"[{"stream":"a","type":"A","data":1},{"stream":"b","type":"A","data":1}]"#, "application/json"),
            400,
            "invalid_event",
            "events[1].stream",
        ),
        (raw("[]", "application/json"), 400, "invalid_event", "empty"),
        (
            raw(r#"{"stream":"c","type":"A","data":1,"expectedVersion":5}"#, "application/json"),
            409,
            "version_conflict",
            "at version 1, but the append expected 5",
        ),
        (raw(r#"{"stream":"s","type":"A","data":1}"#, "text/plain"), 415, "unsupported_media_type", "application/json"),
        (
            raw(&format!(r#"{{"stream":"s","type":"A","data":"{}"}}"#, "x".repeat(300 * 1024)), "application/json"),
            413,
            "too_large",
            "limit",
        ),
    ];
    for (i, (request, status, code, words)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "case {i}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(words), "case {i}: {body}");
    }
    let (status, body) = app.get("/api/events/01a21b54-1abe-7246-b1b7-00e293ce98a5").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = app.get("/api/events/nope").await;
    assert_eq!(status, 400);
    let (status, body) = app.get("/api/streams/c?limit=0").await;
    assert_eq!(status, 400, "{body}");
    // SSE parameters are checked before the stream starts.
    for query in ["from=yesterday", "where=pageId:home", "colour=red"] {
        let (status, body) = app.get(&format!("/api/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    app.stop().await;
}

#[tokio::test]
async fn sse_delivers_filtered_events_with_positions_as_ids() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut all = SseClient::connect(&app.url("/api/events"), None).await;
    let first = all.next().await.unwrap();
    assert_eq!(first.retry, Some(1000), "a retry hint comes first");
    let mut home = SseClient::connect(&app.url("/api/events?types=PageViewed&where=data.pageId:home"), None).await;
    let mut prefix = SseClient::connect(&app.url("/api/events?streamPrefix=session-"), None).await;
    for (stream, ty, page) in [
        ("session-1", "PageViewed", "home"),
        ("other", "PageViewed", "home"),
        ("session-2", "Click", "home"),
        ("session-1", "PageViewed", "about"),
    ] {
        let (status, _) = app.post(json!({"stream": stream, "type": ty, "data": {"pageId": page}})).await;
        assert_eq!(status, 201);
    }
    let got = all.events(4).await;
    for (id, envelope) in &got {
        assert_eq!(id, envelope["position"].as_str().unwrap(), "id: is the position");
    }
    let homes = home.events(2).await;
    assert_eq!(
        homes.iter().map(|(_, e)| e["stream"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["session-1", "other"]
    );
    let prefixed = prefix.events(3).await;
    assert!(prefixed.iter().all(|(_, e)| e["stream"].as_str().unwrap().starts_with("session-")));
    app.stop().await;
}

#[tokio::test]
async fn resume_with_last_event_id_and_replay_from_start() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut sse = SseClient::connect(&app.url("/api/events"), None).await;
    for i in 0..5 {
        app.post(json!({"stream": "r", "type": "E", "data": i})).await;
    }
    let seen = sse.events(5).await;
    drop(sse);
    let last_seen = seen[2].0.clone();
    // Missed while disconnected.
    for i in 5..8 {
        app.post(json!({"stream": "r", "type": "E", "data": i})).await;
    }
    let mut resumed = SseClient::connect(&app.url("/api/events?from=now"), Some(&last_seen)).await;
    let got = resumed.events(5).await;
    assert_eq!(got.iter().map(|(_, e)| e["data"].as_i64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);

    // from=start replays everything, then continues live with no gap or duplicate.
    let mut replay = SseClient::connect(&app.url("/api/events?from=start"), None).await;
    let writer = {
        let http = app.http.clone();
        let url = app.url("/api/events");
        tokio::spawn(async move {
            for i in 8..40 {
                http.post(&url).json(&json!({"stream": "r", "type": "E", "data": i})).send().await.unwrap();
            }
        })
    };
    let got = replay.events(40).await;
    writer.await.unwrap();
    assert_eq!(got.iter().map(|(_, e)| e["data"].as_i64().unwrap()).collect::<Vec<_>>(), (0..40).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn a_100_kib_event_arrives_whole() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut sse = SseClient::connect(&app.url("/api/events"), None).await;
    let blob = "y".repeat(100 * 1024);
    let (status, _) = app.post(json!({"stream": "big", "type": "Big", "data": {"blob": blob}})).await;
    assert_eq!(status, 201);
    let got = sse.events(1).await;
    assert_eq!(got[0].1["data"]["blob"].as_str().unwrap().len(), 100 * 1024);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut sse = SseClient::connect(&app.url("/api/events"), None).await;
    assert!(sse.next().await.is_some());
    let ended = tokio::spawn(async move { sse.next().await });
    app.stop().await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), ended).await.unwrap().unwrap(), None);
}

/// Reads batched frames until `n` events have arrived; returns each frame's id and its events.
async fn batches(sse: &mut SseClient, n: usize) -> Vec<(String, Vec<Value>)> {
    let mut frames = Vec::new();
    let mut total = 0;
    while total < n {
        let frame = sse.next().await.unwrap_or_else(|| panic!("stream ended after {total} of {n} events"));
        if frame.data.is_empty() || frame.event.is_some() {
            continue;
        }
        let events: Vec<Value> = serde_json::from_str(&frame.data).unwrap();
        assert!(!events.is_empty(), "a batch frame holds at least one event");
        total += events.len();
        frames.push((frame.id.unwrap(), events));
    }
    assert_eq!(total, n, "no more events than asked for");
    frames
}

#[tokio::test]
async fn sse_batching_coalesces_events_and_resumes_exactly() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let events: Vec<Value> = (0..100).map(|i| json!({"stream": "b", "type": "E", "data": i})).collect();
    assert_eq!(app.post(Value::Array(events)).await.0, 201);

    // A replay of 100 events in batches of at most 40: every event once, in order, in few frames,
    // each frame's id being its last event's position.
    let mut sse = SseClient::connect(&app.url("/api/events?from=start&batch=40,100"), None).await;
    let frames = batches(&mut sse, 100).await;
    assert!(frames.len() >= 3 && frames.len() < 10, "{} frames", frames.len());
    for (id, events) in &frames {
        assert!(events.len() <= 40);
        assert_eq!(events.last().unwrap()["position"].as_str().unwrap(), id);
    }
    let data: Vec<i64> = frames.iter().flat_map(|(_, e)| e.iter().map(|e| e["data"].as_i64().unwrap())).collect();
    assert_eq!(data, (0..100).collect::<Vec<_>>());

    // Live: a burst of 30 events (one atomic append) arrives in fewer frames than events.
    let burst: Vec<Value> = (100..130).map(|i| json!({"stream": "b", "type": "E", "data": i})).collect();
    assert_eq!(app.post(Value::Array(burst)).await.0, 201);
    let live = batches(&mut sse, 30).await;
    assert!(live.len() < 30, "{} frames for 30 events", live.len());
    let data: Vec<i64> = live.iter().flat_map(|(_, e)| e.iter().map(|e| e["data"].as_i64().unwrap())).collect();
    assert_eq!(data, (100..130).collect::<Vec<_>>());
    drop(sse);

    // Resuming after a batch's id continues with the next event, batched or not.
    let mut resumed = SseClient::connect(&app.url("/api/events?batch=1000,50"), Some(&frames[0].0)).await;
    let after_first = frames[0].1.len() as i64;
    let rest = batches(&mut resumed, (130 - after_first) as usize).await;
    let data: Vec<i64> = rest.iter().flat_map(|(_, e)| e.iter().map(|e| e["data"].as_i64().unwrap())).collect();
    assert_eq!(data, (after_first..130).collect::<Vec<_>>());
    let mut single = SseClient::connect(&app.url("/api/events"), Some(&frames[0].0)).await;
    let got = single.events(130 - after_first as usize).await;
    assert_eq!(got[0].1["data"].as_i64().unwrap(), after_first);
    app.stop().await;
}

#[tokio::test]
async fn bad_batch_parameters_are_refused_before_the_stream() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    for (query, needle) in [
        ("batch=0,10", "maxEvents must be between 1 and 10000"),
        ("batch=abc", "expected N,T"),
        ("batch=10,soon", "whole number of milliseconds"),
        ("batch=10,60000", "maxDelayMs must be at most 10000"),
    ] {
        let (status, body) = app.get(&format!("/api/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_batch", "{query}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_first_frame_says_where_the_stream_starts() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let (_, body) = app.post(json!({"stream": "f", "type": "E", "data": 1})).await;
    let first: String = body["events"][0]["position"].as_str().unwrap().into();
    common::settle(&db.store, first.parse().unwrap()).await;
    let opening = |query: &'static str, last: Option<String>| {
        let url = app.url(&format!("/api/events{query}"));
        async move {
            let mut sse = SseClient::connect(&url, last.as_deref()).await;
            let frame = sse.next().await.unwrap();
            assert_eq!(frame.retry, Some(1000));
            assert_eq!(frame.event.as_deref(), Some("subscribed"), "a named event: onmessage never sees it");
            let data: Value = serde_json::from_str(&frame.data).unwrap();
            assert_eq!(frame.id.as_deref(), data["position"].as_str(), "the id resumes a browser's own reconnect");
            frame.id.unwrap()
        }
    };
    assert_eq!(opening("?from=start", None).await, "0".repeat(32));
    assert_eq!(opening("?from=now", Some(first.clone())).await, first);
    // "now" is the last event delivered when the stream opened: resuming there misses nothing.
    let mut delivered = opening("", None).await;
    while delivered < first {
        tokio::time::sleep(Duration::from_millis(10)).await;
        delivered = opening("", None).await;
    }
    assert_eq!(delivered, first);
    app.stop().await;
}
