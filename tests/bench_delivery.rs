//! `flightdeck bench delivery --commit-times-url` with the real binary: a server whose embedded
//! PostgreSQL runs with `track_commit_timestamp = on`, a tiny case, and a commit→client figure
//! in the report. Timings are not asserted, only that the figure is there and plausible.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::process::{Server, flightdeck, run, scratch_dir, stderr, stdout};

/// The p50 in ms of the column `column` (0-based, after the leading `|`) of the row for `subscribers`.
fn p50(report: &str, subscribers: &str, column: usize) -> Option<f64> {
    let row = report.lines().find(|l| l.starts_with(&format!("| {subscribers} |")))?;
    let cell = row.split('|').nth(column + 1)?;
    cell.split('/').next()?.trim().parse().ok()
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
    conf.push_str("track_commit_timestamp = on\n");
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
    drop(server);
}
