//! Limits (issue 6) over real sockets: each limit triggers and answers as documented (429 with
//! `Retry-After`, 400 and 413, WebSocket error ops and close codes), stream counts go back down
//! when streams close, per-address limits key by the real peer address (clients bound to
//! different loopback addresses), are skipped without `ConnectInfo`, and follow `X-Forwarded-For`
//! only when told to; and the real binary under a bounded load from loopback keeps its limits,
//! its keyed state and its memory bounded.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestDb;
use common::app::App;
use common::process::Server;
use common::sites::ORIGIN;
use common::sse::SseClient;
use common::ws::WsClient;
use flightdeck::auth::Auth;
use flightdeck::bus::{Bus, BusOptions};
use flightdeck::http::{AppState, LimitsConfig, Rate, WsConfig, router};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Only there so a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

/// Limits with nothing exempt (tests run on loopback, which is exempt by default) and everything
/// else off unless a test turns it on.
fn strict() -> LimitsConfig {
    LimitsConfig { exempt: vec![], ..LimitsConfig::unlimited() }
}

async fn start(db: &TestDb, limits: LimitsConfig, ws: WsConfig) -> App {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let bus =
        Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks).await.unwrap();
    App::serve(
        AppState::with_bus(bus).max_body(1024).ws_config(ws).limits(limits).auth(Auth::disabled()),
        shutdown,
        tasks,
    )
    .await
}

/// An HTTP client whose connections come from `source` (any 127.0.0.0/8 address is this machine).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(source.parse::<IpAddr>().unwrap()).build().unwrap()
}

fn event(n: usize) -> Value {
    json!({"stream": format!("l-{n}"), "type": "Limited", "data": {"n": n}})
}

fn track_body(site: &str, events: usize) -> String {
    let events: Vec<Value> = (0..events)
        .map(|_| json!({"id": uuid::Uuid::now_v7().to_string(), "type": "PageViewed", "data": {"path": "/"}}))
        .collect();
    json!({"site": site, "session": "s1", "events": events}).to_string()
}

/// Status, `Retry-After`, and the JSON body of a response.
async fn answer(response: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// Asserts a 429 with a whole-second `Retry-After` and the JSON error `code` whose message names
/// `words`; returns the seconds.
fn assert_limited((status, retry, body): &(u16, Option<u64>, Value), code: &str, words: &str) -> u64 {
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(words), "{message:?} lacks {words:?}");
    let seconds = retry.expect("Retry-After");
    assert!(seconds >= 1, "{seconds}");
    seconds
}

/// The samples of /metrics, by series (name and labels).
async fn metrics(base: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap())))
        .collect()
}

fn limited(limit: &str) -> String {
    format!("flightdeck_limited_total{{limit=\"{limit}\"}}")
}

async fn wait_metric(base: &str, series: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = metrics(base).await.get(series).copied();
        if value.is_some_and(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ingestion_per_address_gets_429_with_retry_after_then_passes_again() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let limits = LimitsConfig { ingest_per_address: Rate::new(1, 3), ..strict() };
    let app = start(&db, limits, WsConfig::default()).await;
    let a = client_from("127.0.0.1");
    for n in 0..3 {
        let (status, _, body) = answer(a.post(app.url("/api/events")).json(&event(n)).send().await.unwrap()).await;
        assert_eq!(status, 201, "{body}");
    }
    let refused = answer(a.post(app.url("/api/events")).json(&event(3)).send().await.unwrap()).await;
    let wait = assert_limited(&refused, "rate_limited", "--ingest-rate");
    // The tracker's route shares the address's budget, and its CORS header is on the refusal too.
    let track = a.post(app.url("/api/track")).header("content-type", "text/plain").header("origin", ORIGIN);
    let response = track.body(track_body("shop", 1)).send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
    assert_limited(&answer(response).await, "rate_limited", "per client address");
    // Refused before the body is read: an oversized body gets 429, not 413.
    let big = a.post(app.url("/api/events")).header("content-type", "application/json").body("x".repeat(10_000));
    assert_eq!(big.send().await.unwrap().status(), 429);

    // Another address has its own budget.
    let b = client_from("127.0.0.2");
    let (status, _, body) = answer(b.post(app.url("/api/events")).json(&event(4)).send().await.unwrap()).await;
    assert_eq!(status, 201, "{body}");

    // After Retry-After, the first address may send again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = a.post(app.url("/api/events")).json(&event(5)).send().await.unwrap().status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "never accepted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = metrics(&app.base).await;
    assert!(m[&limited("ingest_per_address")] >= 3.0, "{m:?}");
    assert!(m["flightdeck_limiter_keys{limit=\"ingest_per_address\"}"] <= 2.0, "{m:?}");
    app.stop().await;
}

#[tokio::test]
async fn tracker_events_per_site() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop", "blog"]).await;
    // One event per second after a burst of 100 (the least a site gets: one full batch).
    let limits = LimitsConfig { track_per_site: Rate::new(1, 1), ..strict() };
    let app = start(&db, limits, WsConfig::default()).await;
    let post = |site: &str, n: usize| {
        let post = app.http.post(app.url("/api/track")).header("origin", ORIGIN);
        post.header("content-type", "text/plain").body(track_body(site, n)).send()
    };
    let (status, _, body) = answer(post("shop", 60).await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    let refused = answer(post("shop", 60).await.unwrap()).await;
    assert_limited(&refused, "rate_limited", "site \"shop\" sends more than 1 events per second");
    assert!(refused.2["error"]["message"].as_str().unwrap().contains("--site-rate"));
    let (status, _, body) = answer(post("blog", 100).await.unwrap()).await;
    assert_eq!(status, 202, "another site has its own budget: {body}");
    // Nothing of a refused batch was stored.
    assert_eq!(db.store.read_stream("visit-shop:s1", 1, 1000).await.unwrap().len(), 60);
    let m = metrics(&app.base).await;
    assert_eq!(m[&limited("track_per_site")], 1.0);
    assert_eq!(m["flightdeck_limiter_keys{limit=\"track_per_site\"}"], 2.0);
    app.stop().await;
}

/// Opens `/ws/events` expecting a refusal of the upgrade; its status, `Retry-After` and body.
async fn ws_refused(base: &str) -> (u16, Option<u64>, Value) {
    let url = format!("{}/ws/events", base.replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap_or(Value::Null);
            (response.status().as_u16(), retry, body)
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

async fn sse_from(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).header("accept", "text/event-stream").send().await.unwrap()
}

#[tokio::test]
async fn concurrent_streams_per_address_are_capped_and_released() {
    let db = common::test_db().await;
    let limits = LimitsConfig { streams_per_address: Some(3), ..strict() };
    let app = start(&db, limits, WsConfig::default()).await;
    let events = app.url("/api/events");
    let mut first = SseClient::connect(&events, None).await;
    assert!(first.next().await.is_some());
    let second = SseClient::connect(&format!("{events}?types=A"), None).await;
    let mut ws = WsClient::connect(&app.base).await;
    ws.send(json!({"op": "ping", "id": "p"})).await;
    ws.answer("pong", "p").await;
    wait_metric(&app.base, "flightdeck_limited_streams", |v| v == 3.0).await;

    // SSE, the WebSocket upgrade and the stats stream: 429 before anything starts.
    let sse = answer(sse_from(&app.http, &events).await).await;
    assert_limited(&sse, "too_many_streams", "--max-streams");
    assert_limited(&ws_refused(&app.base).await, "too_many_streams", "already has 3 open streams");
    let stats = answer(app.http.get(app.url("/api/stats/stream")).send().await.unwrap()).await;
    assert_limited(&stats, "too_many_streams", "per client address");
    // Another address is not affected.
    let other = sse_from(&client_from("127.0.0.2"), &events).await;
    assert_eq!(other.status(), 200);
    wait_metric(&app.base, "flightdeck_limited_streams", |v| v == 4.0).await;
    assert_eq!(metrics(&app.base).await["flightdeck_limiter_keys{limit=\"streams_per_address\"}"], 2.0);

    // Closing a stream frees its slot.
    drop(first);
    wait_metric(&app.base, "flightdeck_limited_streams", |v| v == 3.0).await;
    let mut again = SseClient::connect(&events, None).await;
    assert!(again.next().await.is_some());
    drop((again, second, other));
    ws.send_raw(Message::Close(None)).await;
    let (_, closed) = ws.until_closed().await;
    assert_eq!(closed.code, 1005, "{closed:?}");
    wait_metric(&app.base, "flightdeck_limited_streams", |v| v == 0.0).await;
    let m = metrics(&app.base).await;
    assert_eq!(m["flightdeck_limiter_keys{limit=\"streams_per_address\"}"], 0.0, "no key without a stream");
    assert_eq!(m[&limited("streams_per_address")], 3.0);
    app.stop().await;
}

#[tokio::test]
async fn filters_subscriptions_frames_and_bodies_are_refused_clearly() {
    let db = common::test_db().await;
    let limits = LimitsConfig { max_filters: 3, max_track_body: 512, ..strict() };
    let ws = WsConfig { max_subscriptions: 2, max_request: 1024, max_message: 4096, ..WsConfig::default() };
    let app = start(&db, limits, ws).await;

    // SSE: 400 before the stream starts.
    for query in ["types=A,B,C,D", "channels=a,b,c,d", "where=data.a:1&where=data.b:1&where=data.c:1&where=data.d:1"] {
        let (status, _, body) =
            answer(app.http.get(app.url(&format!("/api/events?{query}"))).send().await.unwrap()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "too_many_filters", "{query}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("at most 3"), "{body}");
    }
    let mut fine = SseClient::connect(&app.url("/api/events?types=A,B,C&where=data.a:1"), None).await;
    assert!(fine.next().await.is_some());
    drop(fine);

    // WebSocket: error ops, and the socket stays open.
    let mut client = WsClient::connect(&app.base).await;
    client.send(json!({"op": "subscribe", "id": "many", "types": ["A", "B", "C", "D"]})).await;
    let error = client.answer("error", "many").await;
    assert_eq!(error["code"], "too_many_filters", "{error}");
    client
        .send(json!({"op": "subscribe", "id": "w", "where": {"data.a": 1, "data.b": 2, "data.c": 3, "data.d": 4}}))
        .await;
    assert_eq!(client.answer("error", "w").await["code"], "too_many_filters");
    client.subscribe("one", json!({"types": ["A", "B", "C"]})).await;
    client.subscribe("two", json!({})).await;
    client.send(json!({"op": "subscribe", "id": "three"})).await;
    assert_eq!(client.answer("error", "three").await["code"], "too_many_subscriptions");
    client.send_raw(Message::text(format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(2000)))).await;
    let error = client.until(|v| v["op"] == "error").await;
    assert_eq!(error["code"], "frame_too_large", "{error}");
    client.send(json!({"op": "ping", "id": "alive"})).await;
    client.answer("pong", "alive").await;
    // A message over max_message closes the socket with 1009.
    client.send_raw(Message::text("x".repeat(5000))).await;
    let (_, closed) = client.until_closed().await;
    assert_eq!(closed.code, 1009, "{closed:?}");

    // Bodies: 413 on both ingestion routes, with their own limits.
    let big_event = json!({"stream": "s", "type": "A", "data": "x".repeat(2000)});
    let (status, _, body) = answer(app.http.post(app.url("/api/events")).json(&big_event).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    let track = app.http.post(app.url("/api/track")).header("content-type", "text/plain").body(track_body("s", 10));
    let (status, _, body) = answer(track.send().await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_large")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("512 bytes"), "{body}");

    let m = metrics(&app.base).await;
    for (limit, count) in [
        ("filters", 5.0),
        ("ws_subscriptions", 1.0),
        ("ws_request_size", 1.0),
        ("ws_message_size", 1.0),
        ("body_size", 2.0),
    ] {
        assert_eq!(m[&limited(limit)], count, "{limit}: {m:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn without_connect_info_per_address_limits_are_skipped_and_the_others_hold() {
    let db = common::test_db().await;
    common::sites::register(&db.store, &["shop"]).await;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let bus =
        Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks).await.unwrap();
    let limits = LimitsConfig {
        ingest_per_address: Rate::new(1, 1),
        streams_per_address: Some(1),
        track_per_site: Rate::new(1, 1),
        ..strict()
    };
    // An embedding application serving the router without `into_make_service_with_connect_info`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(AppState::with_bus(bus).limits(limits).auth(Auth::disabled()));
    let stop = shutdown.clone();
    tasks.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
    let http = reqwest::Client::new();
    for n in 0..5 {
        let status = http.post(format!("{base}/api/events")).json(&event(n)).send().await.unwrap().status();
        assert_eq!(status, 201);
    }
    let streams = [
        SseClient::connect(&format!("{base}/api/events"), None).await,
        SseClient::connect(&format!("{base}/api/events"), None).await,
    ];
    let track = |n| {
        let post = http.post(format!("{base}/api/track")).header("content-type", "text/plain");
        post.header("origin", ORIGIN).body(track_body("shop", n))
    };
    assert_eq!(track(100).send().await.unwrap().status(), 202);
    assert_eq!(track(1).send().await.unwrap().status(), 429, "the per-site limit needs no address");
    drop(streams);
    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(PATIENCE, tasks.wait()).await.unwrap();
}

#[tokio::test]
async fn x_forwarded_for_is_followed_only_when_trusted() {
    let db = common::test_db().await;
    // Loopback exempt, as by default: the proxy in front is on this machine.
    let base = LimitsConfig { ingest_per_address: Rate::new(1, 2), ..LimitsConfig::unlimited() };
    let trusting = start(&db, LimitsConfig { trust_forwarded_for: true, ..base.clone() }, WsConfig::default()).await;
    let post = |app: &App, from: Option<&str>, n| {
        let mut request = app.http.post(app.url("/api/events")).json(&event(n));
        if let Some(from) = from {
            request = request.header("x-forwarded-for", format!("203.0.113.50, {from}"));
        }
        request.send()
    };
    let mut statuses = Vec::new();
    for n in 0..3 {
        statuses.push(post(&trusting, Some("198.51.100.7"), n).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 429], "keyed by the last X-Forwarded-For entry");
    assert_eq!(post(&trusting, Some("198.51.100.8"), 3).await.unwrap().status(), 201, "another client");
    for n in 0..5 {
        assert_eq!(post(&trusting, None, n).await.unwrap().status(), 201, "no header: the exempt peer");
    }
    trusting.stop().await;

    let ignoring = start(&db, base, WsConfig::default()).await;
    for n in 0..5 {
        assert_eq!(post(&ignoring, Some("198.51.100.7"), n).await.unwrap().status(), 201, "header ignored");
    }
    ignoring.stop().await;
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[derive(Default)]
struct Tally {
    by_status: std::sync::Mutex<HashMap<u16, u64>>,
    missing_retry_after: AtomicU64,
}

impl Tally {
    fn add(&self, status: u16, retry_after: bool) {
        *self.by_status.lock().unwrap().entry(status).or_default() += 1;
        if status == 429 && !retry_after {
            self.missing_retry_after.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self, status: u16) -> u64 {
        self.by_status.lock().unwrap().get(&status).copied().unwrap_or(0)
    }

    fn only(&self, allowed: &[u16]) {
        let by_status = self.by_status.lock().unwrap();
        assert!(by_status.keys().all(|s| allowed.contains(s)), "{by_status:?}");
        assert_eq!(self.missing_retry_after.load(Ordering::Relaxed), 0, "every 429 has Retry-After");
    }
}

/// Samples `series` every 50 ms until stopped; returns the largest value seen.
fn watch_max(base: String, series: &'static str, stop: CancellationToken) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut max = 0.0f64;
        while !stop.is_cancelled() {
            if let Some(v) = metrics(&base).await.get(series) {
                max = max.max(*v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_keeps_its_limits_and_its_memory_under_load_from_loopback() {
    const RATE: u64 = 100;
    const BURST: u64 = 100;
    const MAX_KEYS: u64 = 200;
    /// How far past the cap the keys may get before a check notices (every 64 checks, racing).
    const KEY_SLACK: u64 = 128;
    const STREAMS: u64 = 8;
    let db = common::test_db().await;
    let server = Server::start(|cmd| {
        cmd.env("DATABASE_URL", db.url()).args([
            "--ingest-rate",
            &RATE.to_string(),
            "--ingest-burst",
            &BURST.to_string(),
            "--max-streams",
            &STREAMS.to_string(),
            "--limit-max-keys",
            &MAX_KEYS.to_string(),
            "--limit-exempt",
            "none",
            "--trust-forwarded-for",
        ]);
    });
    server.wait_ready().await;
    let base = format!("http://{}", server.addr);
    let pid = server.child.id();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    // Warm-up, so the baseline includes the pools, buffers and caches any request needs.
    for n in 0..50 {
        let _ =
            http.post(format!("{base}/api/events")).header("x-forwarded-for", "192.0.2.1").json(&event(n)).send().await;
        let mut sse = SseClient::connect(&format!("{base}/api/events"), None).await;
        let _ = sse.next().await;
    }
    let baseline = rss_kib(pid);

    // 1. Thirty-two clients on one address for three seconds: at most the burst plus the rate.
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..2000 {
                if Instant::now() >= until {
                    break;
                }
                let response =
                    http.post(format!("{base}/api/events")).json(&event(w * 10_000 + n)).send().await.unwrap();
                tally.add(response.status().as_u16(), response.headers().contains_key("retry-after"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    tally.only(&[201, 429]);
    let accepted = tally.get(201);
    assert!(accepted >= 1 && tally.get(429) >= 1, "{:?}", tally.by_status.lock().unwrap());
    // GCRA admits at most the burst plus one per emission interval; a second of slack for clocks.
    let most = BURST + (RATE as f64 * (elapsed + 1.0)) as u64;
    assert!(accepted <= most, "{accepted} accepted in {elapsed:.1} s; the limit allows {most}");

    // 2. Six thousand clients (one X-Forwarded-For address each, in the documentation prefix
    //    2001:db8::/32, keyed by /64): the limiter's keys stay under the cap. The requests are
    //    refused after the limit check (415: not JSON), so they cost no database write.
    let stop = CancellationToken::new();
    let max_keys = watch_max(base.clone(), "flightdeck_limiter_keys{limit=\"ingest_per_address\"}", stop.clone());
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for w in 0..10u32 {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..600u32 {
                let client = format!("2001:db8:{w:x}:{n:x}::1");
                let response = http
                    .post(format!("{base}/api/events"))
                    .header("x-forwarded-for", client)
                    .header("content-type", "text/plain")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                tally.add(response.status().as_u16(), response.headers().contains_key("retry-after"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally.only(&[415]);

    // 3. Streams opened and closed by twelve clients at once on one address: never more than the
    //    cap open, 429 beyond it, and every slot released at the end.
    let max_streams = watch_max(base.clone(), "flightdeck_limited_streams", stop.clone());
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..80 {
                if (w + n) % 4 == 0 {
                    let url = format!("{}/ws/events", base.replace("http://", "ws://"));
                    match tokio_tungstenite::connect_async(url).await {
                        Ok((mut socket, _)) => {
                            tally.add(101, false);
                            let _ = socket.close(None).await;
                        }
                        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                            tally.add(r.status().as_u16(), r.headers().contains_key("retry-after"))
                        }
                        Err(other) => panic!("{other}"),
                    }
                } else {
                    let response = sse_from(&http, &format!("{base}/api/events")).await;
                    let status = response.status().as_u16();
                    tally.add(status, response.headers().contains_key("retry-after"));
                    if status == 200 {
                        let mut body = response.bytes_stream();
                        let _ = futures::StreamExt::next(&mut body).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally.only(&[200, 101, 429]);
    assert!(tally.get(200) + tally.get(101) >= 1);
    wait_metric(&base, "flightdeck_limited_streams", |v| v == 0.0).await;
    stop.cancel();
    let (max_keys, max_streams) = (max_keys.await.unwrap(), max_streams.await.unwrap());
    assert!(max_keys <= (MAX_KEYS + KEY_SLACK) as f64, "{max_keys} keys held at most (cap {MAX_KEYS})");
    assert!(max_streams <= STREAMS as f64, "{max_streams} streams open at once (cap {STREAMS})");
    let m = metrics(&base).await;
    assert_eq!(m["flightdeck_limiter_keys{limit=\"streams_per_address\"}"], 0.0);
    assert!(m["flightdeck_limiter_keys{limit=\"ingest_per_address\"}"] <= (MAX_KEYS + KEY_SLACK) as f64, "{m:?}");
    assert!(m[&limited("streams_per_address")] >= 1.0 && m[&limited("ingest_per_address")] >= 1.0, "{m:?}");

    // Memory: what the load left behind is small next to the server (tens of MiB would mean
    // state per client or per stream kept).
    let after = rss_kib(pid);
    assert!(after <= baseline + 32 * 1024, "RSS grew from {baseline} KiB to {after} KiB");
    let resets = m["flightdeck_limiter_resets_total{limit=\"ingest_per_address\"}"];
    eprintln!(
        "RSS {baseline} KiB -> {after} KiB; limiter keys at most {max_keys} ({resets} resets); streams at most {max_streams}"
    );
    assert!(server.stop(Signal::SIGTERM));
}
