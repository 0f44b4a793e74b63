//! The `flightdeck` binary, run as a user would: help, append/read/migrate, zero-config start,
//! clear errors, and `serve` from start to signal.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::process::{Server, flightdeck, run, scratch_dir, stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::Value;

#[test]
fn every_command_has_help() {
    let cases = [
        (vec!["--help"], vec!["serve", "migrate", "append", "read", "DATABASE_URL", "FLIGHTDECK_DATA_DIR"]),
        (vec!["serve", "--help"], vec!["--addr", "FLIGHTDECK_ADDR", "127.0.0.1:8080"]),
        (vec!["migrate", "--help"], vec!["migrations"]),
        (
            vec!["append", "--help"],
            vec!["<STREAM>", "<TYPE>", "<DATA>", "--metadata", "--expected-version", "--id", "--site"],
        ),
        (vec!["read", "--help"], vec!["[STREAM]", "--from-version", "--after", "--limit"]),
        (vec!["bench", "append", "--help"], vec!["--writers", "--batch", "--seconds"]),
    ];
    for (args, wants) in cases {
        let out = run(flightdeck().args(&args));
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        for want in wants {
            assert!(text.contains(want), "{args:?} help mentions {want}:\n{text}");
        }
    }
}

#[tokio::test]
async fn append_and_read_through_database_url() {
    let db = common::test_db().await;
    let url = db.url();
    let append = |args: &[&str]| run(flightdeck().env("DATABASE_URL", &url).arg("append").args(args));

    let out = append(&["cart-1", "ItemAdded", r#"{"sku":"a"}"#, "--metadata", r#"{"correlationId":"c1"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(first["version"], 1);
    assert_eq!(first["stream"], "cart-1");
    assert_eq!(first["site"], "default", "no --site: the default site");

    let out = append(&["shop-cart", "ItemAdded", "{}", "--site", "shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shop: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(shop["site"], "shop");

    let id = uuid::Uuid::now_v7().to_string();
    let out = append(&["cart-1", "ItemAdded", r#"{"sku":"b"}"#, "--expected-version", "1", "--id", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The same id and content again: stored once.
    let out = append(&["cart-1", "ItemAdded", r#"{"sku":"b"}"#, "--id", &id]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("already stored"));

    // Data-driven refusals: (args, words the error must contain).
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["cart-1", "X", "{", "--expected-version", "2"], "DATA is not valid JSON"),
        (vec!["cart-1", "X", "{}", "--expected-version", "1"], "is at version 2, but the append expected 1"),
        (vec!["cart-1", "X", "{}", "--metadata", "[1]"], "metadata must be a JSON object"),
        (vec!["cart-1", "X", "{}", "--expected-version", "soon"], "not `any`, `no-stream` or a version number"),
        (vec!["cart-1", "X", "{}", "--id", "nope"], "--id is not a UUID"),
        (vec!["", "X", "{}"], "stream id is empty"),
        (vec!["cart-1", "X", "{\"a\":\"\\u0000\"}"], "\\u0000"),
        (vec!["shop-cart", "X", "{}"], "belongs to site \"shop\", not \"default\""),
        (vec!["shop-cart", "X", "{}", "--site", "blog"], "belongs to site \"shop\", not \"blog\""),
        (vec!["new", "X", "{}", "--site", "a b"], "site \"a b\" must be 1 to 64"),
    ];
    for (args, want) in bad {
        let out = append(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    let out = run(flightdeck().env("DATABASE_URL", &url).args(["read", "cart-1"]));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["metadata"]["correlationId"], "c1");
    assert_eq!(lines[1]["id"], id.as_str());
    assert!(lines.iter().all(|l| l["site"] == "default"), "read prints the site");
    let out = run(flightdeck().env("DATABASE_URL", &url).args(["read", "shop-cart"]));
    let shop_lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(shop_lines.len(), 1, "the refused appends stored nothing");
    assert_eq!(shop_lines[0]["site"], "shop");

    let last: flightdeck::store::Position = lines[1]["position"].as_str().unwrap().parse().unwrap();
    common::settle(&db.store, last).await;
    let out = run(flightdeck().env("DATABASE_URL", &url).args(["read", "--after", "start", "--limit", "1"]));
    assert_eq!(stdout(&out).lines().count(), 1);
    let out =
        run(flightdeck().env("DATABASE_URL", &url).args(["read", "--after", first["position"].as_str().unwrap()]));
    assert_eq!(stdout(&out).lines().count(), 2, "shop-cart's event and cart-1's second");
    let out = run(flightdeck().env("DATABASE_URL", &url).args(["read", "--after", "yesterday"]));
    assert!(stderr(&out).contains("malformed position"), "{}", stderr(&out));
}

#[test]
fn zero_config_creates_the_cluster_once_and_keeps_the_data() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    let with_dir = |cmd: &mut std::process::Command| {
        cmd.env("FLIGHTDECK_DATA_DIR", &data);
    };
    let mut cmd = flightdeck();
    with_dir(&mut cmd);
    let out = run(cmd.args(["append", "s", "Created", "{}"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let created = std::fs::metadata(data.join("postgres/data/PG_VERSION")).unwrap().modified().unwrap();

    // A second run reuses the cluster (and its data) instead of creating another.
    let mut cmd = flightdeck();
    with_dir(&mut cmd);
    let out = run(cmd.args(["read", "s"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1);
    assert_eq!(std::fs::metadata(data.join("postgres/data/PG_VERSION")).unwrap().modified().unwrap(), created);
    // And PostgreSQL was stopped when the command ended.
    assert!(!data.join("postgres/data/postmaster.pid").exists());
}

#[test]
fn missing_postgres_binaries_get_a_clear_message() {
    let dir = scratch_dir();
    let out = run(flightdeck()
        .env("FLIGHTDECK_DATA_DIR", dir.path())
        .env("FLIGHTDECK_PG_BIN_DIR", dir.path().join("nowhere"))
        .arg("migrate"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no PostgreSQL server binaries found"), "{err}");
    assert!(err.contains("apt-get install postgresql"), "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgresql://nobody@127.0.0.1:{port}/none");
    let out = run(flightdeck().env("DATABASE_URL", &url).args(["read", "x"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("the database is unavailable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = run(flightdeck().env("DATABASE_URL", "postgres://[broken").arg("migrate"));
    assert!(stderr(&out).contains("DATABASE_URL is not a valid"), "{}", stderr(&out));
}

#[tokio::test]
async fn serve_starts_answers_and_stops_on_sigterm_and_sigint() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let server = Server::start(|c| {
            c.env("FLIGHTDECK_DATA_DIR", &data);
        });
        server.wait_ready().await;
        let health: Value = reqwest::get(server.url("/healthz")).await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");
        let postmaster = common::process::postmaster_pid(&data).unwrap();

        // Another command on the same data directory uses the running cluster and leaves it up.
        let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", &data).args(["append", "s", "E", "{}"]));
        assert!(out.status.success(), "{}", stderr(&out));
        let ready = reqwest::get(server.url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);

        let log = server.log.clone();
        assert!(server.stop(signal), "clean exit on {signal}");
        common::process::wait_gone(postmaster);
        assert!(!data.join("postgres/data/postmaster.pid").exists(), "PostgreSQL stopped cleanly");
        assert!(log.lock().unwrap().contains("received; shutting down"));
    }
    let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", &data).args(["read", "s"]));
    assert_eq!(stdout(&out).lines().count(), 2, "data survived both restarts");
}

#[tokio::test]
async fn serve_waits_for_an_unreachable_database() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let server = Server::start(|c| {
        c.env("DATABASE_URL", format!("postgresql://nobody@127.0.0.1:{port}/none"));
    });
    assert_eq!(reqwest::get(server.url("/healthz")).await.unwrap().status(), 200);
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.log().matches("retrying").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(server.stop(Signal::SIGTERM));
}
