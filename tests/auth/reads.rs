//! Refused tokens on every route, the routes that stay public, and the scope of the reads that
//! answer once (event by id, stream read, stats).

use serde_json::json;

use crate::common;
use crate::support::{Bad, Secured, Tok, seed};

/// Every route that needs a token, as (method, path, Last-Event-ID).
const PROTECTED: [(&str, &str, Option<&str>); 10] = [
    ("GET", "/api/events", None),
    ("GET", "/api/events?from=start", None),
    ("GET", "/api/events", Some("00000000000000000000000000000000")),
    ("GET", "/api/events?from=start&batch=5,10", None),
    ("GET", "/api/events/0190a6d4-0000-7000-8000-000000000000", None),
    ("GET", "/api/streams/shop-a", None),
    ("GET", "/api/stats", None),
    ("GET", "/api/stats/stream", None),
    ("GET", "/ws/events", None),
    ("POST", "/api/events", None),
];

#[tokio::test]
async fn no_token_a_wrong_key_alg_none_and_an_expired_token_are_refused_everywhere() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let http = reqwest::Client::new();
    for bad in Bad::ALL {
        let token = bad.token();
        for (method, path, last_event_id) in PROTECTED {
            let mut request = match method {
                "POST" => http
                    .post(server.url(path))
                    .json(&json!({"site": "shop", "stream": "shop-a", "type": "T", "data": {}})),
                _ => http.get(server.url(path)),
            };
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id);
            }
            let response = request.send().await.unwrap();
            let what = format!("{bad:?} {method} {path}");
            assert_eq!(response.status(), 401, "{what}");
            assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{what}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], bad.code(), "{what}: {body}");
        }
        // The same through a real WebSocket handshake: refused before the upgrade.
        let refused = server.ws(token.as_deref()).await.err().unwrap_or_else(|| panic!("{bad:?}: upgraded"));
        match refused {
            tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 401, "{bad:?}"),
            other => panic!("{bad:?}: {other}"),
        }
    }
    // Nothing was stored by any refused write.
    let reader = Tok::sites(&["*"]).sign();
    let (status, body) = server.get("/api/streams/shop-a", Some(&reader)).await;
    assert_eq!((status, body), (200, json!({"events": []})));

    // A good token without the right action: 403.
    let publish_only = Tok::sites(&["*"]).only_publish().sign();
    let (status, body) = server.get("/api/streams/shop-a", Some(&publish_only)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let body = json!({"site": "shop", "stream": "shop-a", "type": "T", "data": {}});
    let (status, answer) = server.post(&body, Some(&reader)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    for path in ["/healthz", "/flightdeck.js", "/track.js", "/api/openapi.json", "/metrics"] {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // Ready once the listener connected (503 until then), never a 401.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while reqwest::get(server.url("/readyz")).await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz never answered 200");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The tracker takes no token (sites and origins secure it, elsewhere).
    let beacon = json!({"site": "shop", "session": "s1", "events": [
        {"id": uuid::Uuid::now_v7().to_string(), "type": "PageViewed", "data": {"path": "/", "title": "t", "viewport": {"w": 1, "h": 1}}}
    ]});
    let response = reqwest::Client::new()
        .post(server.url("/api/track"))
        .header("content-type", "text/plain")
        .body(beacon.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    server.stop().await;
}

#[tokio::test]
async fn reads_by_id_and_by_stream_answer_only_inside_the_scope() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let events = seed(&server, &["shop", "blog"]).await;
    let shop = Tok::sites(&["shop"]).sign();
    let missing_id = format!("/api/events/{}", uuid::Uuid::now_v7());
    let (missing_status, missing) = server.get(&missing_id, Some(&shop)).await;
    assert_eq!(missing_status, 404);

    // By id: every shop event; every blog event looks exactly like a missing one.
    for event in &events {
        let (status, body) = server.get(&format!("/api/events/{}", event.id), Some(&shop)).await;
        if event.site == "shop" {
            assert_eq!((status, body["site"].as_str()), (200, Some("shop")), "{body}");
        } else {
            assert_eq!(status, 404, "{event:?} leaked: {body}");
            assert_eq!(body["error"]["code"], missing["error"]["code"]);
            let message = body["error"]["message"].as_str().unwrap().replace(&event.id, "ID");
            let expected = missing["error"]["message"].as_str().unwrap().replace(&missing_id[12..], "ID");
            assert_eq!(message, expected, "the message must not tell them apart");
        }
    }

    // By stream: a shop stream in full; a blog stream is answered like a stream that does not exist.
    let (status, body) = server.get("/api/streams/shop-a", Some(&shop)).await;
    assert_eq!(status, 200);
    let want: Vec<&str> = events.iter().filter(|e| e.stream == "shop-a").map(|e| e.id.as_str()).collect();
    let got: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    let nothing = server.get("/api/streams/no-such-stream", Some(&shop)).await;
    assert_eq!(server.get("/api/streams/blog-a", Some(&shop)).await, nothing);

    // Types- and prefix-limited tokens: only what they cover, the rest is missing.
    let viewed = Tok::sites(&["*"]).types(&["Viewed"]).sign();
    let (_, body) = server.get("/api/streams/blog-b", Some(&viewed)).await;
    let types: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Viewed", "Viewed"]);
    let prefixed = Tok::sites(&["*"]).streams(&["blog-a"]).sign();
    assert_eq!(server.get("/api/streams/blog-b", Some(&prefixed)).await, nothing);
    assert_eq!(server.get("/api/streams/blog-a", Some(&prefixed)).await.1["events"].as_array().unwrap().len(), 4);
    for event in &events {
        let path = format!("/api/events/{}", event.id);
        let (status, _) = server.get(&path, Some(&viewed)).await;
        assert_eq!(status == 200, event.event_type == "Viewed", "{event:?}");
        let (status, _) = server.get(&path, Some(&prefixed)).await;
        assert_eq!(status == 200, event.stream == "blog-a", "{event:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn stats_answer_only_for_the_sites_of_the_token() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let beacon = |site: &str| {
        json!({"site": site, "session": format!("{site}-s"), "events": [
            {"id": uuid::Uuid::now_v7().to_string(), "type": "PageViewed", "data": {"path": "/", "title": "t", "viewport": {"w": 1, "h": 1}}}
        ]})
    };
    for site in ["shop", "blog"] {
        let r = reqwest::Client::new().post(server.url("/api/track")).header("content-type", "text/plain");
        assert!(r.body(beacon(site).to_string()).send().await.unwrap().status().is_success());
    }
    let everything = Tok::sites(&["*"]).sign();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, all) = server.get("/api/stats", Some(&everything)).await;
        if all["totals"]["PageViewed"] == 2 {
            assert_eq!(all["sites"], json!(["blog", "shop"]));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the projector did not count both views: {all}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shop = Tok::sites(&["shop"]).sign();
    let (status, body) = server.get("/api/stats", Some(&shop)).await;
    assert_eq!((status, &body["site"], &body["totals"]["PageViewed"]), (200, &json!("shop"), &json!(1)), "{body}");
    assert_eq!(body["sites"], json!(["shop"]), "the site list names only the token's sites");
    let (status, body) = server.get("/api/stats?site=blog", Some(&shop)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = server.get("/api/stats/stream?site=blog", Some(&shop)).await;
    assert_eq!(status, 403, "{body}");
    let two = Tok::sites(&["shop", "blog"]).sign();
    let (status, body) = server.get("/api/stats", Some(&two)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("site_required")), "{body}");
    assert_eq!(server.get("/api/stats?site=blog", Some(&two)).await.1["totals"]["PageViewed"], 1);
    for limited in [Tok::sites(&["shop"]).types(&["PageViewed"]), Tok::sites(&["shop"]).streams(&["visit-"])] {
        let (status, body) = server.get("/api/stats?site=shop", Some(&limited.sign())).await;
        assert_eq!(status, 403, "{body}");
    }
    server.stop().await;
}
