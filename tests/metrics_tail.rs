//! `GET /metrics` over a real socket, and `flightdeck tail` as a child process.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::app::App;
use common::process::flightdeck;
use common::sse::SseClient;
use flightdeck::auth::Auth;
use flightdeck::http::AppState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What these tests need beyond the shared in-process server.
trait AppExt {
    async fn post_ok(&self, body: Value) -> Value;
    async fn metrics_text(&self) -> String;
    async fn metrics(&self) -> HashMap<String, f64>;
    async fn wait_metric(&self, sample: &str, ok: impl Fn(f64) -> bool);
}

impl AppExt for App {
    async fn post_ok(&self, body: Value) -> Value {
        let r = self.http.post(self.url("/api/events")).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap()
    }

    /// The metrics text, checked to be a 200 in the Prometheus text format.
    async fn metrics_text(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        r.text().await.unwrap()
    }

    /// Samples by `name{labels}`.
    async fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&self.metrics_text().await)
    }

    /// Polls /metrics until `sample` satisfies `ok`.
    async fn wait_metric(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.metrics().await.get(sample).copied();
            if value.is_some_and(&ok) {
                return;
            }
            assert!(Instant::now() < deadline, "{sample} stayed at {value:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

const SSE: &str = "flightdeck_subscribers{transport=\"sse\"}";

#[tokio::test]
async fn metrics_follow_appends_deliveries_and_sse_subscribers() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let text = app.metrics_text().await;
    for (name, kind) in [
        ("flightdeck_subscribers", "gauge"),
        ("flightdeck_events_appended_total", "counter"),
        ("flightdeck_events_delivered_total", "counter"),
        ("flightdeck_delivery_lag_seconds", "histogram"),
        ("flightdeck_listener_reconnects_total", "counter"),
        ("flightdeck_notifications_received_total", "counter"),
        ("flightdeck_catch_up_reads_total", "counter"),
        ("flightdeck_reads_behind_appends_total", "counter"),
        ("flightdeck_listener_connected", "gauge"),
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "HELP for {name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "TYPE for {name}:\n{text}");
    }
    let before = parse_metrics(&text);
    assert_eq!(before[SSE], 0.0);
    assert_eq!(before["flightdeck_ready"], 1.0);
    assert_eq!(before["flightdeck_events_appended_total"], 0.0);
    assert_eq!(before["flightdeck_listener_reconnects_total"], 0.0);
    app.wait_metric("flightdeck_listener_connected", |v| v == 1.0).await;

    let mut sse = SseClient::connect(&app.url("/api/events"), None).await;
    assert!(sse.next().await.is_some());
    app.wait_metric(SSE, |v| v == 1.0).await;

    for i in 0..3 {
        app.post_ok(json!({"stream": "m-1", "type": "Counted", "data": i})).await;
    }
    app.post_ok(
        json!([{"stream": "m-2", "type": "Counted", "data": 3}, {"stream": "m-2", "type": "Counted", "data": 4}]),
    )
    .await;
    assert_eq!(sse.events(5).await.len(), 5);
    let after = app.metrics().await;
    assert_eq!(after["flightdeck_events_appended_total"], 5.0);
    assert!(after["flightdeck_events_delivered_total"] >= 5.0, "{after:?}");
    assert!(after["flightdeck_delivery_lag_seconds_count"] >= 5.0, "{after:?}");
    assert_eq!(
        after["flightdeck_delivery_lag_seconds_bucket{le=\"+Inf\"}"],
        after["flightdeck_delivery_lag_seconds_count"]
    );
    assert!(after["flightdeck_delivery_lag_seconds_sum"] >= 0.0);
    assert!(after["flightdeck_catch_up_reads_total"] > before["flightdeck_catch_up_reads_total"], "{after:?}");
    // One request at a time: each append commits alone, and the log is read right behind it.
    assert!(after["flightdeck_reads_behind_appends_total"] >= 1.0, "{after:?}");
    // Alone on its database, the bus announces its appends to nobody (bus/notifier.rs) ...
    assert_eq!(after["flightdeck_notifications_received_total"], 0.0, "{after:?}");
    // ... and hears the NOTIFY of an append made by another application through SQL.
    let sql = app.store.pool().get().await.unwrap();
    sql.batch_execute("SELECT flightdeck.append('m-sql', 'Counted', '6')").await.unwrap();
    app.wait_metric("flightdeck_notifications_received_total", |v| v >= 1.0).await;
    assert_eq!(sse.events(1).await.len(), 1);
    drop(sql);

    // A subscription replaying from the start reads the log.
    let reads = app.metrics().await["flightdeck_catch_up_reads_total"];
    let mut replay = SseClient::connect(&app.url("/api/events?from=start"), None).await;
    assert_eq!(replay.events(5).await.len(), 5);
    app.wait_metric(SSE, |v| v == 2.0).await;
    assert!(app.metrics().await["flightdeck_catch_up_reads_total"] > reads);

    // A retried append (same ids) stores nothing and counts nothing.
    let retry = json!({"stream": "m-3", "type": "Counted", "data": 5, "id": "01a21b54-1abe-7246-b1b7-00e293ce98a7"});
    app.post_ok(retry.clone()).await;
    app.post_ok(retry).await;
    assert_eq!(app.metrics().await["flightdeck_events_appended_total"], 6.0);

    // Clients that disconnect are no longer counted.
    drop(sse);
    drop(replay);
    app.wait_metric(SSE, |v| v == 0.0).await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_answer_before_the_bus_runs() {
    let db = common::test_db().await;
    let app = App::serve(
        AppState::new(db.store.clone()).auth(Auth::disabled()),
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .await;
    let metrics = app.metrics().await;
    assert_eq!(metrics["flightdeck_ready"], 0.0);
    assert_eq!(metrics[SSE], 0.0);
    assert_eq!(metrics["flightdeck_listener_connected"], 0.0);
    assert_eq!(metrics["flightdeck_events_delivered_total"], 0.0);
    let readyz = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    app.stop().await;
}

/// A running `flightdeck tail`, its output lines, and what it said on stderr.
struct Tail {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    /// Starts `flightdeck tail <args>` on `db` and waits until it follows the log.
    async fn start(db: &common::TestDb, args: &[&str]) -> Tail {
        let mut cmd = flightdeck();
        cmd.env("DATABASE_URL", db.url()).arg("tail").args(args);
        let mut child = tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut said = String::new();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                said.push_str(&line);
                said.push('\n');
                if line.starts_with("following ") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(started, Ok(true), "tail did not start; it said:\n{said}");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Tail { child, stdout }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("tail printed nothing")
            .unwrap()
            .expect("tail ended its output")
    }

    /// The next `n` lines, as JSON envelopes.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(serde_json::from_str(&self.line().await).unwrap());
        }
        out
    }

    /// Sends SIGTERM; returns whether tail exited successfully, and with nothing more printed.
    async fn terminate(mut self) -> bool {
        kill(Pid::from_raw(self.child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("tail stops");
        let rest = self.stdout.next_line().await.unwrap();
        assert_eq!(rest, None, "nothing printed after the events");
        status.unwrap().success()
    }
}

fn data(events: &[Value]) -> Vec<Value> {
    events.iter().map(|e| e["data"].clone()).collect()
}

#[tokio::test]
async fn tail_prints_new_events_and_replays_with_filters() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let early = app.post_ok(json!({"stream": "t-1", "type": "A", "data": {"k": 1, "n": 0}})).await;
    app.post_ok(json!({"stream": "t-1", "type": "B", "data": {"k": 1, "n": 1}})).await;
    common::settle(&db.store, early["events"][0]["position"].as_str().unwrap().parse().unwrap()).await;

    let mut live = Tail::start(&db, &["--json"]).await;
    let mut replay = Tail::start(&db, &["--json", "--from", "start", "--types", "A,C", "--where", "data.k:1"]).await;
    let mut human = Tail::start(&db, &["--stream-prefix", "u-", "--where", "data.k=2"]).await;
    let mut shop = Tail::start(&db, &["--json", "--site", "shop"]).await;
    for (stream, ty, k, n) in [("t-2", "A", 1, 2), ("u-1", "C", 2, 3), ("t-2", "C", 1, 4), ("u-2", "A", 2, 5)] {
        app.post_ok(json!({"stream": stream, "type": ty, "data": {"k": k, "n": n}})).await;
    }
    app.post_ok(json!({"site": "shop", "stream": "u-9", "type": "A", "data": {"k": 2, "n": 6}})).await;

    // Only events appended after it started, all of them, in order, as envelopes.
    let got = live.events(5).await;
    assert_eq!(got.iter().map(|e| e["data"]["n"].as_i64().unwrap()).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    for field in ["id", "position", "stream", "version", "type", "data", "metadata", "timestamp"] {
        assert!(got[0].get(field).is_some(), "{field} in {}", got[0]);
    }
    // From the start, type A or C with data.k = 1: the earlier event, then live ones.
    let got = replay.events(3).await;
    assert_eq!(data(&got), vec![json!({"k": 1, "n": 0}), json!({"k": 1, "n": 2}), json!({"k": 1, "n": 4})]);
    // Human lines: position, timestamp, site, stream@version, type, compact data.
    let lines = [human.line().await, human.line().await, human.line().await];
    for (line, expected) in lines.iter().zip([
        ["default", "u-1@1", "C", r#"{"k":2,"n":3}"#],
        ["default", "u-2@1", "A", r#"{"k":2,"n":5}"#],
        ["shop", "u-9@1", "A", r#"{"k":2,"n":6}"#],
    ]) {
        let fields: Vec<&str> = line.split("  ").collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(fields[0].len(), 32, "{line}");
        assert!(chrono::DateTime::parse_from_rfc3339(fields[1]).is_ok(), "{line}");
        assert_eq!(&fields[2..], &expected, "{line}");
    }
    // Only the shop's event; the next one it prints is the next shop event, not any other.
    let got = shop.events(1).await;
    assert_eq!((got[0]["data"]["n"].as_i64(), got[0]["stream"].as_str()), (Some(6), Some("u-9")));
    app.post_ok(json!({"stream": "u-3", "type": "A", "data": {"n": 7}})).await;
    app.post_ok(json!({"site": "shop", "stream": "u-9", "type": "A", "data": {"n": 8}})).await;
    assert_eq!(shop.events(1).await[0]["data"]["n"].as_i64(), Some(8));
    // The unfiltered tail sees both.
    assert_eq!(data(&live.events(2).await), vec![json!({"n": 7}), json!({"n": 8})]);

    for tail in [live, replay, human, shop] {
        assert!(tail.terminate().await, "tail exits 0 on SIGTERM");
    }
    app.stop().await;
}

#[tokio::test]
async fn tail_resumes_after_a_position() {
    let db = common::test_db().await;
    let app = App::start(&db).await;
    let mut positions = Vec::new();
    for n in 0..3 {
        let out = app.post_ok(json!({"stream": "p", "type": "E", "data": n})).await;
        positions.push(out["events"][0]["position"].as_str().unwrap().to_string());
    }
    let mut tail = Tail::start(&db, &["--json", "--from", &positions[0]]).await;
    app.post_ok(json!({"stream": "p", "type": "E", "data": 3})).await;
    assert_eq!(data(&tail.events(3).await), vec![json!(1), json!(2), json!(3)]);
    assert!(tail.terminate().await);
    app.stop().await;
}

#[test]
fn tail_rejects_bad_flags_in_one_line() {
    for (args, words) in [
        (vec!["tail", "--from", "yesterday"], "--from must be now, start or a position"),
        (vec!["tail", "--where", "pageId:home"], "--where: filter \"pageId:home\" is not of the form"),
    ] {
        let out = common::process::run(flightdeck().args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = common::process::stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(words), "{err}");
    }
}
