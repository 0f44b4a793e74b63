//! Commit → client, from PostgreSQL's own commit timestamps.
//!
//! Every event's position (its SSE `id:`) holds the xid8 of the transaction that appended it. With
//! `track_commit_timestamp = on`, `pg_xact_commit_timestamp` gives that transaction's commit time.
//! PostgreSQL takes it just before it writes and flushes the commit record, so the commit becomes
//! visible at most the flush time later: commit → client measured from it is a slight
//! over-estimate, never an under-estimate. Both clocks are this machine's wall clock.
//!
//! After each case, `bench delivery` looks up every distinct xid its subscribers received in one
//! query and joins the commit times with each subscriber's receipt times.
//!
//! The same connection counts the WAL flushes during the case (`pg_stat_wal`), and times them
//! when `track_wal_io_timing` is on: the flush lies between the commit timestamp and the moment
//! the commit becomes visible, so its mean is the disk's share of commit → client, which no
//! server can take away.

use std::collections::HashMap;

use tokio_postgres::NoTls;

use super::client::ClientBenchError;
use super::stats::Samples;

/// A connection to the server's PostgreSQL, to read commit timestamps.
#[derive(Debug)]
pub struct CommitClock {
    client: tokio_postgres::Client,
}

/// What a case's commit → client measurement gave.
#[derive(Debug, Default)]
pub struct CommitLatency {
    /// Commit → client latencies (µs), one per (subscriber, timed event).
    pub samples: Samples,
    /// Distinct transactions looked up.
    pub transactions: usize,
    /// Of those, how many had no commit timestamp (committed before the setting was on).
    pub unknown_transactions: usize,
    /// Received timed events left out: no xid in their `id:`, or no commit timestamp.
    pub left_out: u64,
}

/// PostgreSQL's WAL flushes (`fdatasync` and the like, or the synchronous writes of an `open_*`
/// `wal_sync_method`, from every process) up to some moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WalFlushes {
    /// Flushes so far.
    pub count: i64,
    /// Milliseconds spent in them, when `track_wal_io_timing` is on.
    pub millis: Option<f64>,
}

impl WalFlushes {
    /// The flushes between `before` and this reading.
    pub fn since(&self, before: &WalFlushes) -> WalFlushes {
        WalFlushes {
            count: self.count - before.count,
            millis: self.millis.zip(before.millis).map(|(after, before)| after - before),
        }
    }

    /// A sentence for under the report's table.
    pub fn describe(&self) -> String {
        let what = format!("PostgreSQL flushed its WAL {} times during the case", self.count);
        match self.millis {
            Some(ms) if self.count > 0 => format!(
                "{what}, {:.3} ms each on average (pg_stat_wal; the commit timestamp precedes its flush, so \
                 this is part of commit→client)",
                ms / self.count as f64
            ),
            Some(_) => what,
            None => format!("{what} (not timed: track_wal_io_timing is off)"),
        }
    }
}

fn db_error(what: &str) -> impl FnOnce(tokio_postgres::Error) -> ClientBenchError + '_ {
    move |e| ClientBenchError::Failed(format!("commit timestamps: {what}: {}", describe(&e)))
}

/// The server's message when there is one (tokio-postgres's own Display says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

impl CommitClock {
    /// Connects to `conninfo` (a libpq key=value string or a postgres:// URL; any database of the
    /// server's cluster will do, xids are cluster-wide).
    pub async fn connect(conninfo: &str) -> Result<Self, ClientBenchError> {
        let config: tokio_postgres::Config =
            conninfo.parse().map_err(|e| ClientBenchError::Usage(format!("--commit-times-url: {e}")))?;
        let (client, connection) = config.connect(NoTls).await.map_err(db_error("cannot connect"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("bench: the commit-timestamp connection ended: {e}");
            }
        });
        Ok(CommitClock { client })
    }

    /// `None` when `track_commit_timestamp` is on, else why commit → client cannot be measured.
    pub async fn unavailable(&self) -> Result<Option<String>, ClientBenchError> {
        let row = self.client.query_one("SHOW track_commit_timestamp", &[]).await.map_err(db_error("SHOW"))?;
        let value: String = row.get(0);
        Ok((value != "on").then(|| {
            format!(
                "the server's PostgreSQL has track_commit_timestamp = {value} (it needs `on` and a restart, \
                 e.g. ALTER SYSTEM SET track_commit_timestamp = on)"
            )
        }))
    }

    /// The WAL flushes so far, timed if `track_wal_io_timing` is on.
    pub async fn wal_flushes(&self) -> Result<WalFlushes, ClientBenchError> {
        // With an `open_*` sync method the flush happens inside each WAL write (O_DSYNC), and
        // pg_stat_wal counts it there.
        let row = self
            .client
            .query_one(
                "SELECT CASE WHEN open THEN wal_write ELSE wal_sync END, \
                        CASE WHEN current_setting('track_wal_io_timing') = 'on' \
                             THEN CASE WHEN open THEN wal_write_time ELSE wal_sync_time END END \
                 FROM pg_stat_wal, (SELECT current_setting('wal_sync_method') LIKE 'open%' AS open) AS m",
                &[],
            )
            .await
            .map_err(db_error("pg_stat_wal"))?;
        Ok(WalFlushes { count: row.get(0), millis: row.get(1) })
    }

    /// The commit time (µs since the Unix epoch) of each of `xids` that has one, in one query.
    pub async fn commit_times(&self, xids: &[u64]) -> Result<HashMap<u64, i64>, ClientBenchError> {
        // xid8 values stay far below 2^63 (the epoch counts xid wrap-arounds).
        let xids: Vec<i64> = xids.iter().filter_map(|&x| i64::try_from(x).ok()).collect();
        let rows = self
            .client
            .query("SELECT x, pg_xact_commit_timestamp(xid(x::text::xid8)) FROM unnest($1::int8[]) AS x", &[&xids])
            .await
            .map_err(db_error("pg_xact_commit_timestamp"))?;
        let mut times = HashMap::with_capacity(rows.len());
        for row in rows {
            let (xid, at): (i64, Option<chrono::DateTime<chrono::Utc>>) = (row.get(0), row.get(1));
            if let (Ok(xid), Some(at)) = (u64::try_from(xid), at) {
                times.insert(xid, at.timestamp_micros());
            }
        }
        Ok(times)
    }
}

/// One subscriber's timed receipts: for each event (by sequence number), when it arrived
/// (wall-clock µs, 0 if it did not) and the xid from its position (0 if none).
#[derive(Debug, Clone, Copy)]
pub struct Receipts<'a> {
    /// Receipt times by sequence number.
    pub received: &'a [i64],
    /// Xids by sequence number.
    pub xids: &'a [u64],
}

impl Receipts<'_> {
    fn timed(&self, from: usize) -> impl Iterator<Item = (i64, u64)> + '_ {
        let pairs = self.received.iter().zip(self.xids).skip(from);
        pairs.filter(|&(&r, _)| r > 0).map(|(&r, &x)| (r, x))
    }
}

/// The distinct xids among the timed receipts (from sequence number `from` on), sorted.
pub fn distinct_xids<'a>(subscribers: impl IntoIterator<Item = Receipts<'a>>, from: usize) -> Vec<u64> {
    let mut xids: Vec<u64> = Vec::new();
    for r in subscribers {
        xids.extend(r.timed(from).map(|(_, x)| x).filter(|&x| x != 0));
        // Events of one transaction arrive together: most repeats are neighbours.
        xids.dedup();
    }
    xids.sort_unstable();
    xids.dedup();
    xids
}

/// Joins receipts with commit times: one sample per (subscriber, timed event) whose transaction
/// has a commit time.
pub fn join<'a>(
    subscribers: impl IntoIterator<Item = Receipts<'a>>,
    from: usize,
    times: &HashMap<u64, i64>,
    transactions: usize,
) -> CommitLatency {
    let mut out = CommitLatency {
        transactions,
        unknown_transactions: transactions.saturating_sub(times.len()),
        ..CommitLatency::default()
    };
    for r in subscribers {
        for (received, xid) in r.timed(from) {
            match times.get(&xid) {
                Some(&committed) => out.samples.push(received - committed),
                None => out.left_out += 1,
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn joins_receipts_with_commit_times() {
        // Two subscribers, five events; events 0–1 are the warm-up.
        let (r1, x1) = ([5, 6, 1_010, 1_020, 1_500], [10, 10, 11, 11, 12]);
        let (r2, x2) = ([7, 8, 1_100, 0, 1_700], [10, 10, 11, 0, 0]);
        let subs = [Receipts { received: &r1, xids: &x1 }, Receipts { received: &r2, xids: &x2 }];
        let xids = distinct_xids(subs, 2);
        assert_eq!(xids, [11, 12]);
        let times = HashMap::from([(11, 1_000), (12, 1_450)]);
        let mut got = join(subs, 2, &times, xids.len());
        assert_eq!(got.samples.len(), 4);
        assert_eq!(got.left_out, 1, "subscriber 2's event 4 has no xid");
        assert_eq!(got.unknown_transactions, 0);
        assert_eq!(got.samples.percentile(0.0), Some(10));
        assert_eq!(got.samples.percentile(100.0), Some(100));
        // A transaction without a commit time (committed before the setting was on).
        let got = join(subs, 2, &HashMap::from([(11, 1_000)]), 2);
        assert_eq!((got.samples.len(), got.left_out, got.unknown_transactions), (3, 2, 1));
    }

    #[test]
    fn wal_flushes_are_counted_over_the_case_and_timed_only_when_both_readings_are() {
        let before = WalFlushes { count: 100, millis: Some(20.0) };
        let after = WalFlushes { count: 500, millis: Some(260.0) };
        let case = after.since(&before);
        assert_eq!(case, WalFlushes { count: 400, millis: Some(240.0) });
        assert!(case.describe().contains("400 times during the case, 0.600 ms each on average"), "{}", case.describe());
        let untimed = WalFlushes { count: 500, millis: None }.since(&before);
        assert_eq!(untimed.millis, None);
        assert!(untimed.describe().ends_with("(not timed: track_wal_io_timing is off)"), "{}", untimed.describe());
    }
}
