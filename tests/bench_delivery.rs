//! `flightdeck bench delivery --commit-times-url` with the real binary: a server whose embedded
//! PostgreSQL runs with `track_commit_timestamp = on`, a tiny case, and a commit→client figure and
//! timed WAL flushes in the report; and `flightdeck bench floor` (the same fan-out without a
//! server) on a tiny case, alone, behind an INSERT per frame, and behind FlightDeck's ingestion.
//! Timings are not asserted, only that the figures are there and plausible.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::process::{Server, flightdeck, run, scratch_dir, stderr, stdout};

/// The p50 in ms of the column `column` (0-based, after the leading `|`) of the row for `subscribers`.
fn p50(report: &str, subscribers: &str, column: usize) -> Option<f64> {
    let row = report.lines().find(|l| l.starts_with(&format!("| {subscribers} |")))?;
    let cell = row.split('|').nth(column + 1)?;
    cell.split('/').next()?.trim().parse().ok()
}

/// The WAL flush count in the report's line about them.
fn wal_flushes(report: &str) -> Option<i64> {
    let rest = report.split("PostgreSQL flushed its WAL ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[tokio::test]
async fn commit_to_client_is_reported_with_commit_timestamps_on() {
    let dir = scratch_dir();
    let data = dir.path().join("fd");
    // Create the cluster, then turn the setting on while it is stopped.
    let out = run(flightdeck().env("FLIGHTDECK_DATA_DIR", &data).arg("migrate"));
    assert!(out.status.success(), "{}", stderr(&out));
    let pgdata = data.join("postgres/data");
    let mut conf = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    // With an `open_*` sync method the flushes happen inside the WAL writes: still counted (the
    // shared cluster below flushes with the default `fdatasync`).
    conf.push_str("track_commit_timestamp = on\ntrack_wal_io_timing = on\nwal_sync_method = open_datasync\n");
    std::fs::write(pgdata.join("postgresql.auto.conf"), conf).unwrap();

    let server = Server::start(|c| {
        c.env("FLIGHTDECK_DATA_DIR", &data);
    });
    server.wait_ready().await;
    let pid = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    let lines: Vec<&str> = pid.lines().collect();
    let conninfo = format!("host={} port={} user=postgres dbname=postgres", lines[4].trim(), lines[3].trim());
    let url = server.url("");
    let bench = |extra: &[&str]| {
        let mut cmd = flightdeck();
        cmd.args(["bench", "delivery", "--url", &url, "--subscribers", "3", "--rate", "50"])
            .args(["--seconds", "1", "--warmup", "0.2", "--drain", "5"])
            .args(extra);
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };

    // (The target's verdict line is printed only for the 100 × 1,000/s case, too big for a test.)
    let report = bench(&["--commit-times-url", &conninfo]);
    assert!(report.contains("commit→client from the commit timestamps of"), "{report}");
    let commit = p50(&report, "3", 4).unwrap_or_else(|| panic!("no commit→client p50:\n{report}"));
    let stored = p50(&report, "3", 5).unwrap();
    // The commit comes after the INSERT; allow a little for rounding between the two clocks' readings.
    assert!(commit > -1.0 && commit <= stored + 1.0, "commit→client {commit} ms, stored→client {stored}:\n{report}");
    // Every append of the case was a durable commit, so the WAL was flushed during it, and timed.
    let flushes = wal_flushes(&report).unwrap_or_else(|| panic!("no WAL flush count:\n{report}"));
    assert!(flushes > 0, "{report}");
    assert!(report.contains(" ms each on average (pg_stat_wal;"), "{report}");

    // Without the option there is no commit→client figure.
    let report = bench(&[]);
    assert_eq!(p50(&report, "3", 4), None, "{report}");
    assert!(p50(&report, "3", 5).is_some(), "{report}");

    // A PostgreSQL without the setting (the tests' shared cluster): said in one line, no figure.
    let db = common::test_db().await;
    let report = bench(&["--commit-times-url", &db.url()]);
    assert!(
        report.contains("commit→client is not measured: the server's PostgreSQL has track_commit_timestamp = off"),
        "{report}"
    );
    assert_eq!(p50(&report, "3", 4), None, "{report}");
    // Its WAL flushes are still counted (the shared cluster's, other tests' included), untimed.
    assert!(wal_flushes(&report).is_some(), "{report}");
    assert!(report.contains("(not timed: track_wal_io_timing is off)"), "{report}");

    // The floor behind a real INSERT per frame, behind a POST to a minimal server of the floor's
    // own, and behind a POST to this server: every frame arrives, and each carries an xid with a
    // commit timestamp (else the run fails).
    let floor = |label: &str, extra: &[&str]| {
        let mut cmd = flightdeck();
        cmd.args(["bench", "floor", "--subscribers", "3", "--rate", "100", "--seconds", "0.5"])
            .args(["--warmup", "0.2", "--label", label, "--database", &conninfo])
            .args(extra);
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    for (label, extra) in [("db", vec![]), ("minimal", vec!["--minimal-http"]), ("http", vec!["--ingest-url", &url])] {
        let report = floor(label, &extra);
        let (received, missing, send) = floor_row(&report, label).unwrap_or_else(|| panic!("no row:\n{report}"));
        assert_eq!((received, missing), (210, 0), "{report}");
        let commit = floor_commit_p50(&report, label).unwrap_or_else(|| panic!("no commit→client:\n{report}"));
        // Sent, then committed, then received.
        assert!(commit > -1.0 && commit <= send + 1.0, "commit→client {commit} ms, send→client {send}:\n{report}");
    }
    // The shared cluster has no commit timestamps: refused before anything runs, with the reason.
    let out = run(flightdeck().args(["bench", "floor", "--subscribers", "1", "--database", &db.url()]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--database: the server's PostgreSQL has track_commit_timestamp = off"),
        "{}",
        stderr(&out)
    );
    // --ingest-url and --minimal-http need --database (for the commit timestamps), and exclude
    // each other.
    for bad in [vec!["--ingest-url", &url], vec!["--minimal-http"]] {
        let out = run(flightdeck().args(["bench", "floor"]).args(&bad));
        assert!(!out.status.success());
        assert!(stderr(&out).contains("--database"), "{}", stderr(&out));
    }
    let out =
        run(flightdeck().args(["bench", "floor", "--database", &conninfo, "--minimal-http", "--ingest-url", &url]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot be used with"), "{}", stderr(&out));
    drop(server);
}

/// The commit→client p50 of `bench floor`'s row for `label` (`None` for "–").
fn floor_commit_p50(report: &str, label: &str) -> Option<f64> {
    let row = report.lines().find(|l| l.starts_with(&format!("| {label} |")))?;
    row.split('|').nth(7)?.split('/').next()?.trim().parse().ok()
}

/// The send→client p50 of `bench floor`'s row for `label`, with its frames received and missing.
fn floor_row(report: &str, label: &str) -> Option<(u64, u64, f64)> {
    let row = report.lines().find(|l| l.starts_with(&format!("| {label} |")))?;
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let p50 = cells[6].split('/').next()?.trim().parse().ok()?;
    Some((cells[4].parse().ok()?, cells[5].parse().ok()?, p50))
}

#[test]
fn the_fan_out_floor_delivers_every_frame_to_every_connection_and_times_them() {
    // 3 connections × 200 frames/s for 0.5 s after 0.25 s of warm-up: 150 frames each.
    let out = run(flightdeck().args(["bench", "floor", "--subscribers", "3", "--rate", "200"]).args([
        "--seconds",
        "0.5",
        "--warmup",
        "0.25",
        "--label",
        "tiny",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.starts_with("| run | connections |"), "{report}");
    let (received, missing, p50) = floor_row(&report, "tiny").unwrap_or_else(|| panic!("no row:\n{report}"));
    assert_eq!((received, missing), (450, 0), "{report}");
    // A send time after the receipt would mean the frames were not read back as written.
    assert!(p50 >= 0.0, "{report}");
    // No database: no commit→client.
    assert_eq!(floor_commit_p50(&report, "tiny"), None, "{report}");
    assert!(report.contains("| – |"), "{report}");

    // --no-header prints the row alone; bad arguments are refused with a reason.
    let out = run(flightdeck()
        .args(["bench", "floor", "--subscribers", "1", "--rate", "100", "--seconds", "0.1"])
        .args(["--warmup", "0", "--no-header"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    let out = run(flightdeck().args(["bench", "floor", "--rate", "0"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--rate must be at least 1"), "{}", stderr(&out));
}
