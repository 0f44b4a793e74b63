//! The WebSocket transport (`/ws/events`) over real sockets with a real WebSocket client
//! (tokio-tungstenite): many subscriptions per socket, each with its own filter and start,
//! unsubscribe, batching, errors that keep the connection open, close codes, resuming without loss
//! after a slow-client close, and dead-peer detection.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestDb;
use common::app::App;
use common::ws::{WsClient, envelopes, numbers};
use flightdeck::auth::Auth;
use flightdeck::bus::{Bus, BusOptions, Routing};
use flightdeck::http::{AppState, WsConfig};
use flightdeck::store::Position;
use flightdeck::store::{ExpectedVersion, NewEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A server over `db` with these bus options and WebSocket settings.
async fn serve(db: &TestDb, options: BusOptions, ws: WsConfig) -> (App, Bus) {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let bus = Bus::start(db.store.clone(), db.config.clone(), options, shutdown.clone(), &tasks).await.unwrap();
    let state = AppState::with_bus(bus.clone()).max_body(256 * 1024).ws_config(ws).auth(Auth::disabled());
    (App::serve(state, shutdown, tasks).await, bus)
}

async fn post(app: &App, stream: &str, ty: &str, data: Value) -> String {
    let (status, body) = app.post(json!({"stream": stream, "type": ty, "data": data})).await;
    assert_eq!(status, 201, "{body}");
    body["events"][0]["position"].as_str().unwrap().to_string()
}

/// Events of `sub` up to and including the one with `data.n == 99`, as their `n`s.
async fn until_sentinel(client: &mut WsClient, sub: &str) -> Vec<i64> {
    let mut out = Vec::new();
    while out.last() != Some(&99) {
        out.extend(numbers(&client.events(sub, 1).await));
    }
    out
}

/// The value of one sample line of /metrics.
async fn metric(app: &App, series: &str) -> f64 {
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
    line.unwrap_or_else(|| panic!("{series} missing:\n{text}")).rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls /metrics until `series` reads `value`.
async fn wait_metric(app: &App, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(app, series).await != value {
        assert!(std::time::Instant::now() < deadline, "{series} never reached {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WS_SOCKETS: &str = "flightdeck_subscribers{transport=\"ws\"}";
const WS_SUBSCRIPTIONS: &str = "flightdeck_subscriptions{transport=\"ws\"}";

#[tokio::test]
async fn one_socket_many_filtered_subscriptions() {
    let db = common::test_db().await;
    let routing = Routing::new().with_channels(["Click=clicks", "End=clicks"]).unwrap();
    let (app, _bus) = serve(&db, BusOptions { routing, ..BusOptions::default() }, WsConfig::default()).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.send(json!({"op": "ping", "id": "p1"})).await;
    assert_eq!(ws.answer("pong", "p1").await, json!({"op": "pong", "id": "p1"}));
    let subscribed =
        ws.subscribe("views", json!({"types": ["PageViewed", "End"], "where": {"data.pageId": "home"}})).await;
    assert_eq!(subscribed["position"].as_str().unwrap().len(), 32, "{subscribed}");
    ws.subscribe("sessions", json!({"streamPrefix": "session-"})).await;
    ws.subscribe("clicks", json!({"channels": ["clicks"]})).await;
    ws.subscribe("flagged", json!({"where": {"data.flag": true}})).await;
    ws.subscribe("all", json!({"from": "now"})).await;
    for (stream, ty, data) in [
        ("session-1", "PageViewed", json!({"pageId": "home", "n": 1})),
        ("other", "PageViewed", json!({"pageId": "home", "n": 2, "flag": true})),
        ("session-2", "Click", json!({"pageId": "home", "n": 3, "flag": "true"})),
        ("session-1", "PageViewed", json!({"pageId": "about", "n": 4})),
        ("session-end", "End", json!({"pageId": "home", "n": 99, "flag": true})),
    ] {
        post(&app, stream, ty, data).await;
    }
    // Each subscription receives exactly its events, in log order; n=99 matches all and comes last.
    assert_eq!(until_sentinel(&mut ws, "views").await, vec![1, 2, 99]);
    assert_eq!(until_sentinel(&mut ws, "sessions").await, vec![1, 3, 4, 99]);
    assert_eq!(until_sentinel(&mut ws, "clicks").await, vec![3, 99]);
    assert_eq!(until_sentinel(&mut ws, "flagged").await, vec![2, 99], "true matches true, not \"true\"");
    let all = ws.events("all", 5).await;
    assert_eq!(numbers(&all), vec![1, 2, 3, 4, 99]);
    let positions: Vec<&str> = all.iter().map(|e| e["position"].as_str().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(positions[0] > subscribed["position"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn each_subscription_starts_at_its_own_position() {
    let db = common::test_db().await;
    let (app, bus) = serve(&db, BusOptions::default(), WsConfig::default()).await;
    let mut positions = Vec::new();
    for n in 0..5 {
        positions.push(post(&app, "s", "E", json!({"n": n})).await);
    }
    common::settle(&db.store, positions[4].parse().unwrap()).await;
    // "now" is the bus's now: wait until the pump has broadcast what was appended, or a loaded
    // machine hands the first events to the "now" subscription too.
    let last: flightdeck::store::Position = positions[4].parse().unwrap();
    while bus.delivered() < last {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut ws = WsClient::connect(&app.base).await;
    let start = ws.subscribe("start", json!({"from": "start"})).await;
    assert_eq!(start["position"], "0".repeat(32));
    let after = ws.subscribe("after", json!({"from": positions[2]})).await;
    assert_eq!(after["position"], positions[2]);
    ws.subscribe("now", json!({})).await;
    ws.subscribe("batched", json!({"from": positions[0], "batch": {"maxEvents": 3}})).await;
    for n in 5..8 {
        post(&app, "s", "E", json!({"n": n})).await;
    }
    assert_eq!(numbers(&ws.events("start", 8).await), (0..8).collect::<Vec<_>>());
    assert_eq!(numbers(&ws.events("after", 5).await), (3..8).collect::<Vec<_>>());
    assert_eq!(numbers(&ws.events("now", 3).await), (5..8).collect::<Vec<_>>());
    assert_eq!(numbers(&ws.events("batched", 7).await), (1..8).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_that_subscription_only() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("a", json!({})).await;
    ws.subscribe("b", json!({})).await;
    assert_eq!(metric(&app, WS_SOCKETS).await, 1.0);
    assert_eq!(metric(&app, WS_SUBSCRIPTIONS).await, 2.0);
    for n in 1..=2 {
        post(&app, "u", "E", json!({"n": n})).await;
    }
    assert_eq!(numbers(&ws.events("a", 2).await), vec![1, 2]);
    assert_eq!(numbers(&ws.events("b", 2).await), vec![1, 2]);

    ws.send(json!({"op": "unsubscribe", "id": "a"})).await;
    assert_eq!(ws.answer("unsubscribed", "a").await, json!({"op": "unsubscribed", "id": "a"}));
    assert_eq!(metric(&app, WS_SUBSCRIPTIONS).await, 1.0);
    for n in 3..=5 {
        post(&app, "u", "E", json!({"n": n})).await;
    }
    // Everything after the answer, up to b's last event: nothing for a.
    let mut after = Vec::new();
    loop {
        let frame = ws.next_from_wire().await.unwrap();
        let done = frame["sub"] == "b" && numbers(&envelopes(&frame)) == [5];
        after.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(numbers(&after.iter().flat_map(envelopes).collect::<Vec<_>>()), vec![3, 4, 5]);
    assert!(after.iter().all(|f| f["sub"] == "b"), "{after:?}");

    ws.send(json!({"op": "unsubscribe", "id": "a"})).await;
    let error = ws.answer("error", "a").await;
    assert_eq!(error["code"], "unknown_id", "{error}");
    // The id can be used again, and the new subscription starts afresh.
    ws.subscribe("a", json!({})).await;
    post(&app, "u", "E", json!({"n": 6})).await;
    assert_eq!(numbers(&ws.events("a", 1).await), vec![6]);
    assert_eq!(numbers(&ws.events("b", 1).await), vec![6]);

    // A client's close is answered with the same code.
    ws.send_raw(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await;
    let (_, closed) = ws.until_closed().await;
    assert_eq!(closed.code, 1000, "{closed:?}");
    wait_metric(&app, WS_SOCKETS, 0.0).await;
    wait_metric(&app, WS_SUBSCRIPTIONS, 0.0).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let db = common::test_db().await;
    let config = WsConfig { max_subscriptions: 2, ..WsConfig::default() };
    let (app, _bus) = serve(&db, BusOptions::default(), config).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("a", json!({})).await;
    let text = |s: &str| Message::text(s.to_string());
    // (frame, code, id carried back)
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (text("{nope"), "invalid_json", None),
        (text(r#"{"op":"dance","id":"x"}"#), "unknown_op", Some("x")),
        (text(r#"{"op":"subscribe","id":"a"}"#), "duplicate_id", Some("a")),
        (text(r#"{"op":"unsubscribe","id":"ghost"}"#), "unknown_id", Some("ghost")),
        (text(r#"{"op":"subscribe","id":"f","where":{"pageId":"home"}}"#), "invalid_filter", Some("f")),
        (text(r#"{"op":"subscribe","id":"f","types":"PageViewed"}"#), "invalid_filter", Some("f")),
        (text(r#"{"op":"subscribe","id":"p","from":"yesterday"}"#), "invalid_position", Some("p")),
        (text(r#"{"op":"subscribe","id":"b","batch":{"maxEvents":0}}"#), "invalid_batch", Some("b")),
        (text(r#"{"op":"subscribe","id":"t","form":"start"}"#), "invalid_request", Some("t")),
        (Message::binary(vec![1u8, 2, 3]), "binary_frame", None),
        (text(&format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(100 * 1024))), "frame_too_large", None),
    ];
    for (i, (frame, code, id)) in cases.into_iter().enumerate() {
        ws.send_raw(frame).await;
        let error = ws.next().await;
        assert_eq!(error["op"], "error", "case {i}: {error}");
        assert_eq!(error["code"], code, "case {i}: {error}");
        assert_eq!(error.get("id").and_then(Value::as_str), id, "case {i}: {error}");
        assert!(error["message"].as_str().unwrap().len() > 10, "case {i}: {error}");
    }
    ws.subscribe("b", json!({})).await;
    ws.send(json!({"op": "subscribe", "id": "c"})).await;
    let error = ws.answer("error", "c").await;
    assert_eq!(error["code"], "too_many_subscriptions", "{error}");
    assert!(error["message"].as_str().unwrap().contains("unsubscribe"), "{error}");
    // Still open, and the subscriptions still deliver.
    post(&app, "e", "E", json!({"n": 1})).await;
    assert_eq!(numbers(&ws.events("a", 1).await), vec![1]);
    ws.send(json!({"op": "ping", "id": "still-here"})).await;
    ws.answer("pong", "still-here").await;

    // Not a WebSocket handshake: a JSON error before any upgrade.
    let response = app.http.get(app.url("/ws/events")).send().await.unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn protocol_violations_close_with_1009_and_1007() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.send_raw(Message::text("x".repeat(1536 * 1024))).await;
    let (frames, closed) = ws.until_closed().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(closed.code, 1009, "{closed:?}");
    assert!(closed.reason.contains("too big"), "{closed:?}");

    // A text frame that is not UTF-8 breaks the WebSocket protocol itself: 1007.
    let mut ws = WsClient::connect(&app.base).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send_raw(Message::Frame(frame)).await;
    let (_, closed) = ws.until_closed().await;
    assert_eq!(closed.code, 1007, "{closed:?}");
    app.stop().await;
}

#[tokio::test]
async fn batches_coalesce_events_in_order() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("batched", json!({"batch": {"maxEvents": 10, "maxDelayMs": 200}})).await;
    ws.subscribe("single", json!({})).await;
    // One append of 25 events: they reach the bus together.
    let events: Vec<Value> = (0..25).map(|n| json!({"stream": "b", "type": "E", "data": {"n": n}})).collect();
    let (status, body) = app.post(Value::Array(events)).await;
    assert_eq!(status, 201, "{body}");
    let mut frames = Vec::new();
    let mut got = Vec::new();
    while got.len() < 25 {
        let frame = ws.until(|v| v["sub"] == "batched").await;
        assert_eq!(frame["op"], "batch", "{frame}");
        got.extend(envelopes(&frame));
        frames.push(frame);
    }
    assert_eq!(numbers(&got), (0..25).collect::<Vec<_>>());
    let sizes: Vec<usize> = frames.iter().map(|f| f["events"].as_array().unwrap().len()).collect();
    assert!(sizes.iter().all(|n| (1..=10).contains(n)), "{sizes:?}");
    assert!(sizes.len() < 25, "events were coalesced: {sizes:?}");
    // Unbatched subscriptions get one frame per event.
    let single = ws.events("single", 25).await;
    assert_eq!(numbers(&single), (0..25).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut subscribed = WsClient::connect(&app.base).await;
    subscribed.subscribe("a", json!({})).await;
    let mut idle = WsClient::connect(&app.base).await;
    idle.send(json!({"op": "ping"})).await;
    assert_eq!(idle.next().await, json!({"op": "pong"}));
    let stopping = tokio::spawn(app.stop());
    for ws in [&mut subscribed, &mut idle] {
        let (_, closed) = ws.until_closed().await;
        assert_eq!((closed.code, closed.reason.as_str()), (1001, "server shutting down"));
    }
    stopping.await.unwrap();
}

/// A client that stops reading while many events are appended falls behind; the server closes it
/// with 1013, and resuming from the last position it saw yields every event exactly once.
#[tokio::test]
async fn a_slow_client_is_closed_with_1013_and_resumes_without_loss() {
    let db = common::test_db().await;
    let options = BusOptions { subscriber_queue: 16, ..BusOptions::default() };
    let config = WsConfig { ping_interval: Duration::from_secs(600), ..WsConfig::default() };
    let (app, bus) = serve(&db, options, config).await;
    let mut slow = WsClient::connect_with(&app.base, Some(16 * 1024)).await;
    let subscribed = slow.subscribe("s", json!({"streamPrefix": "flood"})).await;
    // One event read live first, so the subscription is past its start.
    flood(&bus, 0..1).await;
    let mut got = slow.events("s", 1).await;
    const TOTAL: i64 = 400;
    flood(&bus, 1..TOTAL).await;
    let (frames, closed) = slow.until_closed().await;
    assert_eq!(closed.code, 1013, "{closed:?}");
    assert!(closed.reason.contains("lagged") && closed.reason.contains("resume"), "{closed:?}");
    got.extend(frames.iter().filter(|f| f["sub"] == "s").flat_map(envelopes));
    assert!((got.len() as i64) < TOTAL, "the client fell behind, so some events were not sent");
    let last = got.last().map(|e| e["position"].clone()).unwrap_or(subscribed["position"].clone());

    let mut resumed = WsClient::connect(&app.base).await;
    resumed.subscribe("s", json!({"streamPrefix": "flood", "from": last})).await;
    let rest = resumed.events("s", TOTAL as usize - got.len()).await;
    got.extend(rest);
    assert_eq!(numbers(&got), (0..TOTAL).collect::<Vec<_>>(), "every event exactly once, in order");
    app.stop().await;
}

/// Appends events `data.n` in `range` to stream `flood`, each padded to 32 KiB, eight per append;
/// 400 of them are far more than the socket buffers of a client that does not read hold (about
/// 4 MB here). Returns the last position.
async fn flood(bus: &Bus, range: std::ops::Range<i64>) -> Position {
    let pad = "p".repeat(32 * 1024);
    let mut last = Position::START;
    for chunk in range.collect::<Vec<_>>().chunks(8) {
        let batch: Vec<NewEvent> = chunk.iter().map(|n| NewEvent::new("E", json!({"n": n, "pad": pad}))).collect();
        let out = bus.append("default", "flood", ExpectedVersion::Any, &batch).await.unwrap();
        last = out.events.iter().map(|e| e.position).max().unwrap();
    }
    last
}

/// A client that stops reading but keeps sending requests: once the answers waiting for it
/// overflow the queue, the server closes with 1013.
#[tokio::test]
async fn unread_answers_overflow_the_queue_and_close_with_1013() {
    let db = common::test_db().await;
    let config = WsConfig { outbound_queue: 4, ping_interval: Duration::from_secs(600), ..WsConfig::default() };
    // The default subscriber queue holds all 400 events: this socket cannot lag, only overflow.
    let (app, bus) = serve(&db, BusOptions::default(), config).await;
    let mut client = WsClient::connect_with(&app.base, Some(16 * 1024)).await;
    client.subscribe("s", json!({})).await;
    let last = flood(&bus, 0..400).await;
    // Once the pump has handed everything out, the server's writer is stuck on the full socket.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bus.delivered() < last {
        assert!(std::time::Instant::now() < deadline, "the pump never delivered {last}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..200 {
        client.send(json!({"op": "ping", "id": i.to_string()})).await;
    }
    let (frames, closed) = client.until_closed().await;
    assert_eq!(closed.code, 1013, "{closed:?}");
    assert!(closed.reason.contains("not reading"), "{closed:?}");
    let pongs = frames.iter().filter(|f| f["op"] == "pong").count();
    assert!(pongs < 200, "not every ping was answered: {pongs}");
    app.stop().await;
}

/// Completes the WebSocket handshake over a plain TCP socket; returns the socket.
async fn raw_handshake(base: &str) -> tokio::net::TcpStream {
    let addr = base.strip_prefix("http://").unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws/events HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_dropped() {
    let db = common::test_db().await;
    let config = WsConfig {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(300),
        ..WsConfig::default()
    };
    let (app, _bus) = serve(&db, BusOptions::default(), config).await;
    // Handshake done, then silence: it neither reads nor answers.
    let mut dead = raw_handshake(&app.base).await;
    wait_metric(&app, WS_SOCKETS, 1.0).await;
    wait_metric(&app, WS_SOCKETS, 0.0).await;
    // What the server sent meanwhile: pings (opcode 0x89, empty), then it hung up.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), dead.read_to_end(&mut received)).await.unwrap().unwrap();
    assert!(!received.is_empty() && received.chunks(2).all(|f| f == [0x89, 0x00]), "{received:?}");
    app.stop().await;
}

#[tokio::test]
async fn pings_are_sent_and_a_live_peer_stays_connected() {
    let db = common::test_db().await;
    let config = WsConfig {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(300),
        ..WsConfig::default()
    };
    let (app, _bus) = serve(&db, BusOptions::default(), config).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.subscribe("a", json!({})).await;
    // tokio-tungstenite answers each ping while we read; ten pings span several pong timeouts.
    let mut round = 0;
    while ws.pings < 10 {
        round += 1;
        ws.send(json!({"op": "ping", "id": round.to_string()})).await;
        ws.answer("pong", &round.to_string()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&app, WS_SOCKETS).await, 1.0);
    post(&app, "p", "E", json!({"n": 1})).await;
    assert_eq!(numbers(&ws.events("a", 1).await), vec![1]);
    app.stop().await;
}
