//! The real binary: a bare `flightdeck serve` requires tokens, and accepts one from `flightdeck
//! token create` on the same data directory; `--insecure-no-auth` says loudly that it is open.

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::common;
use crate::common::process::{Server, flightdeck, run, scratch_dir, stderr, stdout};

#[tokio::test]
async fn serve_requires_tokens_and_accepts_one_from_token_create() {
    let db = common::test_db().await;
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    let server = Server::start_with_auth(|c| {
        c.env("DATABASE_URL", db.url()).env("FLIGHTDECK_DATA_DIR", &data);
    });
    server.wait_ready().await;
    let http = reqwest::Client::new();
    let response = http.get(server.url("/api/events")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_required");

    let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", &data).args([
        "token",
        "create",
        "--site",
        "shop",
        "--subscribe",
        "--publish",
        "--ttl",
        "1h",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let event = json!({"stream": "shop-a", "type": "Viewed", "data": {}});
    let posted = http.post(server.url("/api/events")).bearer_auth(&token).json(&event).send().await.unwrap();
    assert_eq!(posted.status(), 201);
    let body: Value = posted.json().await.unwrap();
    assert_eq!(body["events"][0]["site"], "shop");
    let read = http.get(server.url("/api/streams/shop-a")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let body: Value = read.json().await.unwrap();
    assert_eq!(body["events"][0]["type"], "Viewed");
    // The token never reaches the log, even when sent as a query parameter.
    let sse = http.get(server.url(&format!("/api/streams/shop-a?access_token={token}"))).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    assert!(!server.log().contains(&token), "{}", server.log());
    server.stop(Signal::SIGTERM);
}

#[tokio::test]
async fn insecure_no_auth_warns_loudly_and_serves_everyone() {
    let db = common::test_db().await;
    let server = Server::start(|c| {
        c.env("DATABASE_URL", db.url());
    });
    server.wait_ready().await;
    let response = reqwest::get(server.url("/api/streams/anything")).await.unwrap();
    assert_eq!(response.status(), 200);
    let log = server.log();
    assert!(log.contains("WARNING: authentication is off (--insecure-no-auth)"), "{log}");
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    server.stop(Signal::SIGTERM);
}
