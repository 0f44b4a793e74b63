//! The scope on the streaming paths: SSE live, replayed from the start, resumed with
//! Last-Event-ID, batched; WebSocket subscriptions live and replayed. Each receives exactly the
//! events inside its token's scope, never one outside. Plus the cookie's rules and tokens signed
//! with RS256 and ES256 keys.

use serde_json::{Value, json};

use crate::common;
use crate::common::sse::SseClient;
use crate::common::ws::envelopes;
use crate::support::{Secured, Seeded, Tok, fixture, marker, seed, seeded};

/// Reads an SSE stream up to and including `until`, flattening batches; every event received.
async fn sse_until(client: &mut SseClient, until: &Seeded) -> Vec<Seeded> {
    let mut out = Vec::new();
    loop {
        let frame = client.next().await.expect("the stream ended early");
        if frame.data.is_empty() || frame.event.as_deref() == Some("subscribed") {
            continue;
        }
        assert_eq!(frame.event, None, "{frame:?}");
        let data: Value = serde_json::from_str(&frame.data).unwrap();
        let events = match data {
            Value::Array(events) => events,
            event => vec![event],
        };
        for event in events {
            let event = seeded(&event);
            let done = event.id == until.id;
            out.push(event);
            if done {
                return out;
            }
        }
    }
}

/// What a scope lets through of `events`, in order.
fn inside(events: &[Seeded], keep: impl Fn(&Seeded) -> bool) -> Vec<Seeded> {
    events.iter().filter(|e| keep(e)).cloned().collect()
}

#[tokio::test]
async fn sse_replay_resume_batches_and_live_carry_only_the_tokens_site() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let mut events = seed(&server, &["shop", "blog"]).await;
    let token = Tok::sites(&["shop"]).sign();
    let end = marker(&server, "shop").await;
    events.push(end.clone());
    let want = inside(&events, |e| e.site == "shop");
    let url = |query: &str| server.url(&format!("/api/events?{query}&access_token={token}"));

    // From the start, one frame per event and batched.
    for query in ["from=start", "from=start&batch=4,20"] {
        let mut client = SseClient::connect(&url(query), None).await;
        assert_eq!(sse_until(&mut client, &end).await, want, "{query}");
    }
    // From a position (`from=` and Last-Event-ID): what follows it, of the shop only.
    let after = &events[3];
    let rest = inside(&events[4..], |e| e.site == "shop");
    let mut client = SseClient::connect(&url(&format!("from={}", after.position)), None).await;
    assert_eq!(sse_until(&mut client, &end).await, rest);
    let mut client = SseClient::connect(&url("from=now"), Some(&after.position)).await;
    assert_eq!(sse_until(&mut client, &end).await, rest);

    // Live: blog events appended while subscribed never arrive.
    let mut live = SseClient::connect(&url("from=now"), None).await;
    let subscribed = live.next().await.unwrap();
    assert_eq!(subscribed.event.as_deref(), Some("subscribed"));
    let blog = marker(&server, "blog").await;
    let shop = marker(&server, "shop").await;
    // (A `now` subscription may also get events stored just before it that the bus had not
    // delivered yet: all of the shop too.)
    let got = sse_until(&mut live, &shop).await;
    assert!(got.iter().all(|e| e.site == "shop") && !got.contains(&blog), "{got:?}");

    // A filter naming only another site is refused; naming both is narrowed to the shop.
    let response = reqwest::get(url("site=blog")).await.unwrap();
    assert_eq!(response.status(), 403);
    let mut both = SseClient::connect(&url("from=start&site=blog,shop"), None).await;
    let mut want_all = want.clone();
    want_all.extend([shop.clone()]);
    assert_eq!(sse_until(&mut both, &shop).await, want_all);
    server.stop().await;
}

#[tokio::test]
async fn types_and_stream_prefix_tokens_see_only_those_events() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let events = seed(&server, &["shop", "blog"]).await;
    type Keep = fn(&Seeded) -> bool;
    let cases: [(Tok, Keep); 3] = [
        (Tok::sites(&["*"]).types(&["Clicked", "Marker"]), |e| e.event_type != "Viewed"),
        (Tok::sites(&["*"]).streams(&["blog-b", "shop-marker"]), |e| e.stream == "blog-b" || e.stream == "shop-marker"),
        (Tok::sites(&["blog", "shop"]).types(&["Viewed", "Marker"]).streams(&["shop-"]), |e| {
            e.site == "shop" && e.event_type != "Clicked"
        }),
    ];
    let end = marker(&server, "shop").await;
    let mut all = events.clone();
    all.push(end.clone());
    for (i, (tok, keep)) in cases.iter().enumerate() {
        let token = tok.sign();
        let url = server.url(&format!("/api/events?from=start&access_token={token}"));
        let mut client = SseClient::connect(&url, None).await;
        assert_eq!(sse_until(&mut client, &end).await, inside(&all, keep), "case {i}");
        let mut ws = server.ws(Some(&token)).await.unwrap();
        ws.subscribe("all", json!({"from": "start"})).await;
        let got = ws_until(&mut ws, "all", &end).await;
        assert_eq!(got, inside(&all, keep), "case {i} over WebSocket");
    }
    server.stop().await;
}

/// Reads subscription `sub` up to and including `until`.
async fn ws_until(ws: &mut common::ws::WsClient, sub: &str, until: &Seeded) -> Vec<Seeded> {
    let mut out = Vec::new();
    loop {
        let sub = sub.to_string();
        let frame = ws.until(move |v| v["sub"] == sub).await;
        for event in envelopes(&frame) {
            let event = seeded(&event);
            let done = event.id == until.id;
            out.push(event);
            if done {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn websocket_subscriptions_are_limited_to_the_sockets_token() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let mut events = seed(&server, &["shop", "blog"]).await;
    let mut ws = server.ws(Some(&Tok::sites(&["shop"]).sign())).await.unwrap();
    // Replay (plain and batched), and a subscription asking for both sites, then live.
    ws.subscribe("replay", json!({"from": "start"})).await;
    ws.subscribe("batched", json!({"from": "start", "batch": {"maxEvents": 3, "maxDelayMs": 20}})).await;
    ws.subscribe("both", json!({"from": "start", "sites": ["blog", "shop"]})).await;
    ws.subscribe("live", json!({"from": "now"})).await;
    ws.send(json!({"op": "subscribe", "id": "blog", "sites": ["blog"]})).await;
    let refused = ws.answer("error", "blog").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let blog = marker(&server, "blog").await;
    let end = marker(&server, "shop").await;
    events.extend([blog, end.clone()]);
    let want = inside(&events, |e| e.site == "shop");
    for sub in ["replay", "batched", "both"] {
        assert_eq!(ws_until(&mut ws, sub, &end).await, want, "{sub}");
    }
    // Live from "now": nothing of the blog (it may also get shop events stored just before it
    // subscribed that the bus had not delivered yet).
    let live = ws_until(&mut ws, "live", &end).await;
    assert!(live.iter().all(|e| e.site == "shop"), "{live:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_cookie_reads_same_origin_only_and_never_writes() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    seed(&server, &["shop"]).await;
    let session = Tok::sites(&["shop"]).publish().sign();
    let cookie = format!("flightdeck_session={session}");
    let host = server.app.base.strip_prefix("http://").unwrap().to_string();
    let http = reqwest::Client::new();
    let get = |origin: Option<String>| {
        let mut r = http.get(server.url("/api/streams/shop-a")).header("cookie", &cookie);
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 200);
    assert_eq!(get(Some(format!("http://{host}"))).await.unwrap().status(), 200);
    let cross = get(Some("https://evil.example".into())).await.unwrap();
    assert_eq!(cross.status(), 403);
    let body = json!({"site": "shop", "stream": "shop-a", "type": "T", "data": {}});
    let post = http.post(server.url("/api/events")).header("cookie", &cookie).json(&body).send().await.unwrap();
    assert_eq!(post.status(), 403, "a cookie never writes, even with a publish token in it");
    let (_, stream) = server.get("/api/streams/shop-a", Some(&session)).await;
    assert_eq!(stream["events"].as_array().unwrap().len(), 4, "nothing was stored");
    server.stop().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_configured_public_keys_are_accepted() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    seed(&server, &["shop"]).await;
    for (i, key) in ["rsa-private.pem", "ec-private.pem"].into_iter().enumerate() {
        let signer = flightdeck::auth::Signer::from_private_key_pem(&fixture(key)).unwrap();
        let token = Tok::sites(&["shop"]).publish().sign_with(&signer);
        let (status, body) = server.get("/api/streams/shop-a", Some(&token)).await;
        assert_eq!((status, body["events"].as_array().map(Vec::len)), (200, Some(4 + i)), "{key}: {body}");
        let event = json!({"stream": "shop-a", "type": "Viewed", "data": {}});
        let (status, answer) = server.post(&event, Some(&token)).await;
        assert_eq!((status, answer["events"][0]["site"].as_str()), (201, Some("shop")), "{key}: {answer}");
        let url = server.url(&format!("/api/events?from=start&access_token={token}"));
        let mut client = SseClient::connect(&url, None).await;
        assert_eq!(client.events(1).await[0].1["site"], "shop", "{key}");
    }
    server.stop().await;
}
