//! The sites registry (issue 6): `flightdeck site add|list|remove` through the real binary, and
//! `POST /api/track` admitting a batch only for a registered site from its origins, over real
//! sockets against a real PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::app::App;
use common::process::{Server, flightdeck, run, stderr, stdout};
use common::sites::{ORIGIN, register};
use flightdeck::bus::{Bus, BusOptions};
use flightdeck::http::AppState;
use flightdeck::sites::{AddMode, Origin};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn batch(site: &str, session: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    json!({"site": site, "session": session, "events": [{"id": id, "type": "PageViewed", "data": {"path": "/"}}]})
        .to_string()
}

/// POSTs `body` to /api/track from `origin` (none: no `Origin` header); status, CORS header, body.
async fn post(base: &str, origin: Option<&str>, body: String) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}/api/track")).header("content-type", "text/plain");
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.body(body).send().await.unwrap();
    let allow = response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), allow, response.json().await.unwrap())
}

/// A metric's value from `/metrics`.
async fn metric(base: &str, series: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(series)).unwrap_or_else(|| panic!("{series}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn site_cmd(url: &str, args: &[&str]) -> std::process::Output {
    run(flightdeck().env("DATABASE_URL", url).arg("site").args(args))
}

#[tokio::test]
async fn site_add_list_remove_round_trip_with_clear_errors() {
    let db = common::test_db().await;
    let url = db.url();
    tokio::task::spawn_blocking(move || {
        let out = site_cmd(
            &url,
            &["add", "shop", "--origin", "HTTPS://Shop.Example:443/", "--origin", "http://localhost:3000"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out).trim(),
            "registered site shop, accepting events from https://shop.example, http://localhost:3000"
        );
        let out = site_cmd(&url, &["add", "shop", "--origin", "https://shop.example"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out)
                .contains("already accepts events from https://shop.example, http://localhost:3000; nothing changed")
        );
        let out = site_cmd(&url, &["add", "shop", "--origin", "https://www.shop.example"]);
        assert!(
            stdout(&out).contains(
                "now accepts events from https://shop.example, http://localhost:3000, https://www.shop.example"
            ),
            "{}",
            stdout(&out)
        );
        let out = site_cmd(&url, &["add", "blog", "--origin", "*"]);
        assert!(out.status.success());
        assert!(stderr(&out).contains("with *, pages on any website can send events as site blog"), "{}", stderr(&out));

        let out = site_cmd(&url, &["list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let table = stdout(&out);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SITE ") && lines[0].contains("ORIGINS") && lines[0].contains("REGISTERED"));
        assert!(lines[1].starts_with("blog ") && lines[1].contains(" * "), "{table}");
        assert!(
            lines[2].starts_with("shop ") && lines[2].contains("https://shop.example, http://localhost:3000"),
            "{table}"
        );

        let out = site_cmd(&url, &["add", "shop", "--replace", "--origin", "https://only.example"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = site_cmd(&url, &["list", "--json"]);
        let sites: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(sites[1]["id"], "shop");
        assert_eq!(sites[1]["origins"], json!(["https://only.example"]));
        assert!(sites[1]["createdAt"].is_string() && sites[1]["updatedAt"].is_string(), "{sites}");

        // Mistakes: one `error:` line naming the problem, exit 1, nothing changed.
        for (args, words) in [
            (
                vec!["add", "shop", "--origin", "shop.example"],
                "\"shop.example\" is not an origin: the scheme is missing",
            ),
            (vec!["add", "shop", "--origin", "https://shop.example/page"], "no path"),
            (vec!["add", "shop", "--origin", "https://*.shop.example"], "wildcards"),
            (vec!["add", "a:b", "--origin", "https://x.example"], "site id \"a:b\" must be 1 to 64 characters"),
            (vec!["remove", "nosuch"], "no site \"nosuch\" is registered (`flightdeck site list`"),
        ] {
            let out = site_cmd(&url, &args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let last = stderr(&out).lines().last().unwrap_or_default().to_string();
            assert!(last.starts_with("error: ") && last.contains(words), "{args:?}: {}", stderr(&out));
        }

        let out = site_cmd(&url, &["remove", "shop"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("removed site shop (it accepted events from https://only.example)"));
        let out = site_cmd(&url, &["remove", "blog"]);
        assert!(out.status.success());
        let out = site_cmd(&url, &["list"]);
        assert!(out.status.success());
        assert_eq!(stdout(&out), "");
        assert!(stderr(&out).contains("no sites registered"), "{}", stderr(&out));
        assert_eq!(stdout(&site_cmd(&url, &["list", "--json"])).trim(), "[]");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_tracker_admits_only_registered_sites_from_their_origins() {
    let db = common::test_db().await;
    register(&db.store, &["shop"]).await;
    flightdeck::sites::add(&db.store, "open", &[Origin::Any], AddMode::Merge).await.unwrap();
    let app = App::start(&db).await;
    let base = app.base.clone();

    let (status, allow, body) = post(&base, Some(ORIGIN), batch("shop", "s1")).await;
    assert_eq!((status, allow.as_deref()), (202, Some(ORIGIN)), "{body}");
    // The same origin written differently is the same origin.
    let (status, _, body) = post(&base, Some("https://WWW.example.test:443"), batch("shop", "s1")).await;
    assert_eq!(status, 202, "{body}");

    let (status, _, body) = post(&base, Some(ORIGIN), batch("nosuch", "s1")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("unknown_site")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`flightdeck site add nosuch --origin https://www.example.test`"), "{message}");

    let (status, allow, body) = post(&base, Some("https://evil.example"), batch("shop", "s1")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("origin_not_allowed")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`flightdeck site add shop --origin https://evil.example`"), "{message}");
    // "open" accepts any origin, so CORS lets evil.example read this refusal; a page it cannot
    // read is tested below, once "open" is gone.
    assert_eq!(allow.as_deref(), Some("https://evil.example"));

    let (status, allow, body) = post(&base, None, batch("shop", "s1")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("origin_required")), "{body}");
    assert_eq!(allow, None);
    assert!(body["error"]["message"].as_str().unwrap().contains("Origin"), "{body}");

    // `*` accepts every origin, even `null` (sandboxed frames), but an Origin is still required.
    for origin in ["https://anywhere.example", "null"] {
        let (status, _, body) = post(&base, Some(origin), batch("open", "s1")).await;
        assert_eq!(status, 202, "{origin}: {body}");
    }
    assert_eq!(post(&base, None, batch("open", "s1")).await.0, 403);

    flightdeck::sites::remove(&db.store, "open").await.unwrap();
    app.sites.invalidate();
    let (status, allow, _) = post(&base, Some("https://evil.example"), batch("shop", "s1")).await;
    assert_eq!((status, allow), (403, None), "no registered site allows evil.example: no CORS");
    let (status, allow, _) = post(&base, Some(ORIGIN), batch("open", "s1")).await;
    assert_eq!((status, allow.as_deref()), (403, Some(ORIGIN)), "a removed site is refused");

    // Refused batches stored nothing.
    assert!(db.store.read_stream("visit-nosuch:s1", 1, 10).await.unwrap().is_empty());
    assert_eq!(db.store.read_stream("visit-shop:s1", 1, 10).await.unwrap().len(), 2);
    assert_eq!(metric(&base, "flightdeck_tracker_refused_total{reason=\"unknown_site\"}").await, 2);
    assert_eq!(metric(&base, "flightdeck_tracker_refused_total{reason=\"origin_not_allowed\"}").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn the_tracker_writes_only_its_own_types_to_its_session_streams() {
    let db = common::test_db().await;
    register(&db.store, &["shop"]).await;
    let app = App::start(&db).await;
    let id = || uuid::Uuid::now_v7().to_string();
    let page = json!({"id": id(), "type": "PageViewed", "data": {"path": "/"}});
    for (body, words) in [
        (
            json!({"site": "shop", "session": "s", "events": [{"id": id(), "type": "OrderPlaced", "data": {}}]}),
            "events[0].type \"OrderPlaced\" is not a tracker event type",
        ),
        (
            json!({"site": "shop", "session": "s", "stream": "orders", "events": [page]}),
            "stream is not a request field",
        ),
        (
            json!({"site": "shop", "session": "s", "events": [{"id": id(), "type": "PageViewed", "data": {"path": "/"}, "stream": "orders"}]}),
            "events[0].stream is not an event field",
        ),
        (json!({"site": "shop", "session": "s:orders", "events": [page]}), "session \"s:orders\""),
        (json!({"site": "shop:x", "session": "s", "events": [page]}), "site \"shop:x\""),
    ] {
        let (status, _, answer) = post(&app.base, Some(ORIGIN), body.to_string()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_event")), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(words), "{answer}");
    }
    // A page cannot claim another site or session inside the data: the server sets both.
    let sneaky = json!({"site": "shop", "session": "s1", "events": [
        {"id": id(), "type": "PageViewed", "data": {"path": "/", "site": "other", "session": "x"}}
    ]});
    assert_eq!(post(&app.base, Some(ORIGIN), sneaky.to_string()).await.0, 202);
    let stored = db.store.read_stream("visit-shop:s1", 1, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].data["site"].as_str(), stored[0].data["session"].as_str()), (Some("shop"), Some("s1")));
    let client = db.connect().await;
    let streams: Vec<String> = client
        .query("SELECT DISTINCT stream_id FROM flightdeck.events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(streams, ["visit-shop:s1"]);
    app.stop().await;
}

#[tokio::test]
async fn a_site_added_by_the_cli_while_the_server_runs_is_accepted_soon_and_a_removed_one_refused() {
    let db = common::test_db().await;
    let server = Server::start(|cmd| {
        cmd.env("DATABASE_URL", db.url());
    });
    server.wait_ready().await;
    let base = format!("http://{}", server.addr);
    let (status, _, body) = post(&base, Some(ORIGIN), batch("live", "s1")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("unknown_site")), "{body}");

    let url = db.url();
    let out = tokio::task::spawn_blocking(move || site_cmd(&url, &["add", "live", "--origin", ORIGIN])).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = post(&base, Some(ORIGIN), batch("live", "s1")).await;
        if status == 202 {
            break;
        }
        assert_eq!(body["error"]["code"], "unknown_site", "{body}");
        assert!(Instant::now() < deadline, "the added site was never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = db.url();
    let out = tokio::task::spawn_blocking(move || site_cmd(&url, &["remove", "live"])).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = post(&base, Some(ORIGIN), batch("live", "s1")).await;
        if status == 403 {
            assert_eq!(body["error"]["code"], "unknown_site", "{body}");
            break;
        }
        assert_eq!(status, 202, "{body}");
        assert!(Instant::now() < deadline, "the removed site was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stop(Signal::SIGTERM));
}

#[tokio::test]
async fn unknown_site_floods_do_not_query_the_database_each_time() {
    let db = common::test_db().await;
    register(&db.store, &["shop"]).await;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let bus =
        Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks).await.unwrap();
    // The default refresh (1 s) bounds the reads by time; an hour makes the bound exact here.
    let state = AppState::with_bus(bus).site_refresh(Duration::from_secs(3600));
    let app = App::serve(state, shutdown, tasks).await;
    assert_eq!(post(&app.base, Some(ORIGIN), batch("shop", "s1")).await.0, 202);
    let before = app.sites.stats();
    assert_eq!((before.checks, before.loads), (1, 1), "{before:?}");

    for round in 0..8 {
        let flood = (0..50).map(|i| post(&app.base, Some(ORIGIN), batch(&format!("made-up-{round}-{i}"), "s")));
        assert!(futures::future::join_all(flood).await.iter().all(|(status, _, _)| *status == 403));
    }
    let after = app.sites.stats();
    assert_eq!((after.checks, after.loads), (1, 1), "400 unknown sites read nothing: {after:?}");
    assert_eq!(after.unknown_site, 400);
    assert_eq!(metric(&app.base, "flightdeck_site_directory_reads_total{kind=\"check\"}").await, 1);
    assert_eq!(metric(&app.base, "flightdeck_tracker_refused_total{reason=\"unknown_site\"}").await, 400);
    assert_eq!(metric(&app.base, "flightdeck_sites").await, 1);
    app.stop().await;

    // With the default refresh: at most one check per second, however many requests.
    let app = App::start(&db).await;
    let started = Instant::now();
    for round in 0..4 {
        let flood = (0..100).map(|i| post(&app.base, Some(ORIGIN), batch(&format!("r{round}-{i}"), "s")));
        assert!(futures::future::join_all(flood).await.iter().all(|(status, _, _)| *status == 403));
    }
    let stats = app.sites.stats();
    assert!(stats.checks <= started.elapsed().as_secs() + 2, "{stats:?} in {:?}", started.elapsed());
    assert_eq!(stats.loads, 1, "nothing changed, so the table was read once: {stats:?}");
    assert_eq!(stats.unknown_site, 400);
    app.stop().await;
}
