//! `flightdeck demo` and `serve --demo` through the real binary: traffic reaches the stats.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common;
use crate::common::process::{Server, flightdeck, run, stderr, stdout};
use crate::support::raw;

/// Polls /api/stats until it counts `want` tracker events (or, with `None`, events on 3 sites).
async fn wait_for_stats(server: &Server, want: Option<i64>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats: Value = reqwest::get(server.url("/api/stats")).await.unwrap().json().await.unwrap();
        let total: i64 = ["PageViewed", "ElementInteraction", "FormSubmitted"]
            .iter()
            .map(|t| stats["totals"][t].as_i64().unwrap_or(0))
            .sum();
        if want.map_or(stats["sites"].as_array().is_some_and(|s| s.len() == 3), |w| total == w) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never reached {want:?}: {stats}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn demo_sends_traffic_that_reaches_the_stats() {
    let db = common::test_db().await;
    let server = Server::start(|cmd| {
        cmd.env("DATABASE_URL", db.url());
    });
    server.wait_ready().await;
    let url = format!("http://{}", server.addr);
    let database = db.url();
    let out = tokio::task::spawn_blocking(move || {
        // The server's database (DATABASE_URL), where the demo registers its sites.
        run(flightdeck().env("DATABASE_URL", database).args([
            "demo",
            "--url",
            &url,
            "--rate",
            "60",
            "--sites",
            "2",
            "--seconds",
            "2",
        ]))
    })
    .await
    .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("demo: 2 site(s), 60 events/s"), "{log}");
    let last = log.lines().last().unwrap();
    assert!(last.contains("events sent") && last.contains(" 0 errors"), "{log}");
    let sent: i64 = last.split(" events sent").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(sent > 20, "{log}");

    let stored = raw(&db, None).await.totals.iter().sum::<i64>();
    assert_eq!(stored, sent, "every event the demo counted as sent is stored once");
    let stats = wait_for_stats(&server, Some(sent)).await;
    assert_eq!(stats["sites"], serde_json::json!(["demo-blog", "demo-shop"]));
    assert!(stats["uniqueSessions"].as_i64().unwrap() > 0);
    assert!(server.stop(Signal::SIGTERM));
}

#[tokio::test]
async fn serve_with_demo_makes_the_stats_live() {
    let db = common::test_db().await;
    let server = Server::start(|cmd| {
        cmd.env("DATABASE_URL", db.url()).arg("--demo=40");
    });
    let stats = wait_for_stats(&server, None).await;
    assert!(stats["totals"]["PageViewed"].as_i64().unwrap() > 0, "{stats}");
    assert!(server.log().contains("demo traffic"), "{}", server.log());
    assert!(server.stop(Signal::SIGTERM), "serve --demo stops cleanly");
}

#[test]
fn demo_without_a_server_says_so() {
    let out = run(flightdeck().args(["demo", "--url", "http://127.0.0.1:1", "--seconds", "1"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    for (args, words) in [
        (vec!["demo", "--help"], vec!["--url", "--rate", "--sites", "--seconds"]),
        (vec!["projections", "rebuild", "--help"], vec!["Recompute"]),
        (vec!["serve", "--help"], vec!["--demo"]),
    ] {
        let out = run(flightdeck().args(&args));
        assert!(out.status.success(), "{args:?}");
        for word in words {
            assert!(stdout(&out).contains(word), "{args:?}: {}", stdout(&out));
        }
    }
}
