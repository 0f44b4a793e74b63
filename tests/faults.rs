//! Fault tolerance end to end, over real HTTP with a real, self-reconnecting SSE client and the real
//! `flightdeck serve` binary:
//!
//! - the LISTEN connection terminated (`pg_terminate_backend`) every 100–200 ms during a
//!   10,000-event ingest from 8 concurrent writers, through two servers;
//! - the connections that append terminated every 100–200 ms during a 5,000-event ingest;
//! - PostgreSQL restarted mid-stream: a fast shutdown, then a crash (immediate shutdown);
//! - the FlightDeck server restarted mid-stream: SIGTERM, then SIGKILL, the client resuming on
//!   the new one each time;
//! - two servers on one database, a subscriber on each.
//!
//! Eight writers POST one to four events per request (an array is one atomic append) and resend
//! the *same* events (same ids) after a 5xx or a connection error until they are acknowledged (201,
//! or 200 for a retry that finds them stored). In every case each subscriber, which reconnects by
//! itself with `Last-Event-ID` like a browser, receives every acknowledged event exactly once, at
//! the position it was acknowledged with, in strictly increasing positions, in the order of a full
//! read of the log.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::process::{Server, postmaster_pid, scratch_dir, wait_gone};
use common::resilient::{Acked, Delivered, MovableUrl, ResumingSse, UrlFn, WriteStats, fixed, post_until_acked};
use flightdeck::embedded::{EmbeddedOptions, EmbeddedPostgres};
use flightdeck::store::{Position, RecordedEvent, Store};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WRITERS: usize = 8;
/// How long the SSE client waits before reconnecting.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// The longest any phase of a test may take before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

/// One pooled HTTP client for all writers of a test.
fn http() -> reqwest::Client {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(15)).build().unwrap()
}

fn serve(database_url: &str) -> Server {
    Server::start(|c| {
        c.env("DATABASE_URL", database_url);
    })
}

/// `WRITERS` concurrent writers, each POSTing its share of the events, one request at a time.
struct Ingest {
    stats: Arc<WriteStats>,
    writers: Vec<JoinHandle<Vec<Acked>>>,
    total: usize,
}

impl Ingest {
    /// Starts the writers; writer `w` sends `per_writer` events to `base(w)`, one to four at a time
    /// (an array is one atomic append to one stream; a quarter of the requests carry one event).
    /// Events go to 16 streams shared by all writers, so appends to one stream race each other too.
    fn start(per_writer: usize, base: impl Fn(usize) -> UrlFn) -> Ingest {
        let stats = Arc::new(WriteStats::default());
        let http = http();
        let deadline = Instant::now() + PATIENCE;
        let writers = (0..WRITERS)
            .map(|w| {
                let (http, stats, base) = (http.clone(), stats.clone(), base(w));
                tokio::spawn(async move {
                    let mut acked = Vec::with_capacity(per_writer);
                    let mut i = 0;
                    while i < per_writer {
                        let n = (1 + rand::random::<u64>() as usize % 4).min(per_writer - i);
                        let stream = format!("s{}", (w + i) % 16);
                        let events: Vec<_> = (i..i + n)
                            .map(|i| {
                                json!({
                                    "id": uuid::Uuid::now_v7().to_string(),
                                    "stream": stream,
                                    "type": "Fault",
                                    "data": {"w": w, "i": i},
                                })
                            })
                            .collect();
                        let body = if n == 1 { events[0].clone() } else { serde_json::Value::Array(events) };
                        acked.extend(post_until_acked(&http, &base, &body, &stats, deadline).await);
                        i += n;
                    }
                    acked
                })
            })
            .collect();
        Ingest { stats, writers, total: per_writer * WRITERS }
    }

    fn acked(&self) -> usize {
        self.stats.acked.load(Ordering::Relaxed) as usize
    }

    async fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.acked() < n {
            assert!(Instant::now() < deadline, "only {} of {n} acknowledged: {}", self.acked(), self.stats.summary());
            if let Some(w) = self.writers.iter().position(JoinHandle::is_finished)
                && self.acked() < self.total
            {
                panic!("writer {w} ended early (panicked: see above)");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> (Vec<Acked>, Arc<WriteStats>) {
        let mut all = Vec::with_capacity(self.total);
        for writer in self.writers {
            all.extend(writer.await.unwrap());
        }
        (all, self.stats)
    }
}

/// The listener's backend (`LISTEN …`, or its liveness probe `SELECT 1`).
const LISTENER: &str = "query LIKE 'LISTEN%' OR query = 'SELECT 1'";
/// The backends that append: their last statement was a group-commit batch's (`BEGIN`, the
/// INSERT, `COMMIT`) or a lone append's.
const APPENDERS: &str = "query IN ('BEGIN', 'COMMIT') OR query LIKE 'INSERT INTO flightdeck.events%'";

/// Terminates the backends `which` selects (SQL on `pg_stat_activity`) in the current database
/// every 100–200 ms until stopped; returns how many backends it terminated.
struct Killer {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl Killer {
    fn start(admin: tokio_postgres::Client, which: &'static str) -> Killer {
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let mut kills = 0;
            while !cancelled.is_cancelled() {
                let rows = admin
                    .query(
                        &format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                             WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({which})"
                        ),
                        &[],
                    )
                    .await
                    .unwrap();
                kills += rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64;
                let pause = Duration::from_millis(100 + rand::random::<u64>() % 101);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = cancelled.cancelled() => {}
                }
            }
            kills
        });
        Killer { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// The whole global log, in log order.
async fn read_log(store: &Store) -> Vec<RecordedEvent> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = all.last().map_or(Position::START, |e| e.position);
        let page = store.read_all(after, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Lets any late (duplicate) frame arrive, then stops the client.
async fn finish_subscriber(sub: ResumingSse, label: &str) -> Vec<Delivered> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("{label}: SSE {}", sub.stats.summary());
    sub.finish().await
}

/// The subscriber received every acknowledged event exactly once, at the position it was
/// acknowledged with, in strictly increasing positions, in the order of the log.
fn check(label: &str, received: &[Delivered], acked: &[Acked], log: &[RecordedEvent]) {
    for d in received {
        assert_eq!(Some(d.frame_id.as_str()), d.envelope["position"].as_str(), "{label}: the frame id is the position");
    }
    let ids: Vec<&str> = received.iter().map(|d| d.envelope["id"].as_str().unwrap()).collect();
    let mut seen = HashMap::new();
    let duplicates: Vec<_> = received
        .iter()
        .enumerate()
        .filter_map(|(i, d)| seen.insert(ids[i], i).map(|first| (ids[i], first, i, d.frame_id.clone())))
        .collect();
    assert!(
        duplicates.is_empty(),
        "{label}: {} events arrived more than once (id, first index, again at index, position): {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    let acked_at: HashMap<&str, &str> = acked.iter().map(|a| (a.id.as_str(), a.position.as_str())).collect();
    assert_eq!(acked_at.len(), acked.len(), "{label}: every acknowledgement is for a distinct event");
    let missing: Vec<_> = acked.iter().filter(|a| !seen.contains_key(a.id.as_str())).collect();
    let extra: Vec<_> = ids.iter().filter(|id| !acked_at.contains_key(*id)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{label}: {} acknowledged events never arrived (e.g. {:?}); {} arrived unacknowledged (e.g. {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    for (d, id) in received.iter().zip(&ids) {
        assert_eq!(d.frame_id, acked_at[id], "{label}: event {id} arrived at the position it was acknowledged with");
    }
    let positions: Vec<Position> = received.iter().map(|d| d.frame_id.parse().unwrap()).collect();
    if let Some(i) = positions.windows(2).position(|w| w[0] >= w[1]) {
        panic!("{label}: out of order at index {}: {} then {}", i + 1, positions[i], positions[i + 1]);
    }
    let log_ids: Vec<String> = log.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(log_ids.len(), ids.len(), "{label}: the log holds exactly the acknowledged events");
    if let Some(i) = log_ids.iter().zip(&ids).position(|(a, b)| a != b) {
        panic!("{label}: arrival order differs from the log's at index {i}: {} vs {}", ids[i], log_ids[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminating_the_listener_repeatedly_during_a_10k_ingest_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let db = common::test_db().await;
    let url = db.url();
    // Two servers, writers spread over both, so each server also delivers events it did not append
    // itself: it hears of them through its LISTEN connection (the one being killed), else by its
    // safety poll or a read woken by its own appends.
    let servers = [serve(&url), serve(&url)];
    for server in &servers {
        server.wait_ready().await;
    }
    let subscribers: Vec<_> =
        servers.iter().map(|s| ResumingSse::start(fixed(s.url("/api/events?from=start")), RECONNECT_DELAY)).collect();
    let killer = Killer::start(db.connect().await, LISTENER);
    let bases = [servers[0].url(""), servers[1].url("")];
    let ingest = Ingest::start(10_000 / WRITERS, |w| fixed(bases[w % 2].clone()));
    let total = ingest.total;
    let (acked, stats) = ingest.finish().await;
    let ingested = started.elapsed();
    for sub in &subscribers {
        sub.wait_for(total, PATIENCE).await;
    }
    let kills = killer.finish().await;
    eprintln!("listener kills: {kills}; writers: {}; ingest done after {ingested:?}", stats.summary());
    assert_eq!(acked.len(), total);
    let log = read_log(&db.store).await;
    for (i, sub) in subscribers.into_iter().enumerate() {
        let label = format!("subscriber on server {i}");
        let received = finish_subscriber(sub, &label).await;
        check(&label, &received, &acked, &log);
    }
    assert!(kills > 0, "the listener was terminated");
    for server in servers {
        let log = server.log();
        assert!(log.contains("listener reconnected"), "the listener reconnected; the server said:\n{log}");
        assert!(server.stop(Signal::SIGTERM), "clean exit");
    }
    eprintln!("took {:?}", started.elapsed());
}

/// The connections that append die under the group commit: a batch's `COMMIT` answer is lost, or
/// its statements never ran. Each append whose outcome was unknown is redone alone and recognized
/// by its ids if it had in fact been stored; writers see at worst a 503 and resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminating_the_appending_connections_repeatedly_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let db = common::test_db().await;
    let server = serve(&db.url());
    server.wait_ready().await;
    let subscriber = ResumingSse::start(fixed(server.url("/api/events?from=start")), RECONNECT_DELAY);
    let killer = Killer::start(db.connect().await, APPENDERS);
    let base = server.url("");
    let ingest = Ingest::start(5_000 / WRITERS, |_| fixed(base.clone()));
    let total = ingest.total;
    let (acked, stats) = ingest.finish().await;
    let kills = killer.finish().await;
    subscriber.wait_for(total, PATIENCE).await;
    eprintln!("appender kills: {kills}; writers: {}", stats.summary());
    assert_eq!(acked.len(), total);
    assert!(kills > 0, "appending connections were terminated");
    let log = read_log(&db.store).await;
    let received = finish_subscriber(subscriber, "subscriber").await;
    check("subscriber", &received, &acked, &log);
    assert!(server.stop(Signal::SIGTERM), "clean exit");
    eprintln!("took {:?}", started.elapsed());
}

async fn start_postgres(options: &EmbeddedOptions) -> EmbeddedPostgres {
    let options = options.clone();
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_postgresql_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    // A cluster of this test's own (durable, so it keeps its data across the restarts).
    let dir = scratch_dir();
    let data_dir = dir.path().join("fd");
    let options = EmbeddedOptions::persistent(&data_dir);
    let pg = start_postgres(&options).await;
    let server = serve(&pg.connection_string("postgres"));
    server.wait_ready().await;
    let sub = ResumingSse::start(fixed(server.url("/api/events?from=start")), RECONNECT_DELAY);
    let base = fixed(server.url(""));
    let ingest = Ingest::start(500, |_| base.clone());
    let total = ingest.total;
    let mut pg = Some(pg);
    let mut late = None;
    for restart in 1..=2 {
        ingest.wait_acked(total * restart / 3).await;
        let running = pg.take().unwrap();
        let how = if restart == 1 { "fast shutdown" } else { "crash (immediate shutdown)" };
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            if restart == 2 {
                // SIGQUIT: the postmaster kills every backend at once, no checkpoint; the next start
                // recovers from the WAL. Acknowledged commits are durable, so none may be missing.
                let postmaster = postmaster_pid(&data_dir).expect("postmaster.pid");
                nix::sys::signal::kill(postmaster, Signal::SIGQUIT).unwrap();
                wait_gone(postmaster);
            }
            running.stop()
        })
        .await
        .unwrap()
        .unwrap();
        eprintln!("PostgreSQL stopped ({how}) after {} acknowledgements", ingest.acked());
        if late.is_none() {
            // A subscriber arriving during the outage: its replay fails, the stream ends, and it
            // keeps reconnecting until PostgreSQL is back.
            late = Some(ResumingSse::start(fixed(server.url("/api/events?from=start")), RECONNECT_DELAY));
        }
        // An outage writers and subscribers must ride out.
        tokio::time::sleep(Duration::from_millis(700)).await;
        pg = Some(start_postgres(&options).await);
    }
    let pg = pg.unwrap();
    let (acked, stats) = ingest.finish().await;
    eprintln!("writers: {}", stats.summary());
    assert_eq!(acked.len(), total);
    let late = late.unwrap();
    sub.wait_for(total, PATIENCE).await;
    late.wait_for(total, PATIENCE).await;
    let received = finish_subscriber(sub, "subscriber").await;
    let received_late = finish_subscriber(late, "late subscriber").await;
    let store = Store::new(pg.config(), 2).unwrap();
    let log = read_log(&store).await;
    check("subscriber", &received, &acked, &log);
    check("late subscriber", &received_late, &acked, &log);
    let log = server.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("database error")).collect();
    eprintln!("server: {} 'database error' lines, e.g. {:?}", errors.len(), &errors[..errors.len().min(3)]);
    assert!(server.stop(Signal::SIGTERM), "clean exit");
    drop(store);
    tokio::task::spawn_blocking(move || pg.stop()).await.unwrap().unwrap();
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_server_mid_stream_the_client_resumes_and_loses_nothing() {
    let started = Instant::now();
    let db = common::test_db().await;
    let url = db.url();
    let server = serve(&url);
    server.wait_ready().await;
    // Writers and the subscriber follow the server to its new port.
    let target = MovableUrl::new(server.url(""));
    let sub = ResumingSse::start(target.with("/api/events?from=start"), RECONNECT_DELAY);
    let ingest = Ingest::start(500, |_| target.with(""));
    let total = ingest.total;
    let mut server = Some(server);
    for restart in 1..=2 {
        ingest.wait_acked(total * restart / 3).await;
        let running = server.take().unwrap();
        // An orderly stop first, then a crash: requests in flight may have committed without their
        // answer arriving, and the writers' resends must be recognized as the same events.
        let signal = if restart == 1 { Signal::SIGTERM } else { Signal::SIGKILL };
        let clean = tokio::task::spawn_blocking(move || running.stop(signal)).await.unwrap();
        assert!(clean || signal == Signal::SIGKILL, "serve exits cleanly on SIGTERM mid-stream");
        eprintln!("server stopped ({signal}) after {} acknowledgements", ingest.acked());
        // Down for a moment: the client's reconnections are refused until the new server is up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let url = url.clone();
        let restarted = tokio::task::spawn_blocking(move || serve(&url)).await.unwrap();
        target.set(restarted.url(""));
        server = Some(restarted);
    }
    let (acked, stats) = ingest.finish().await;
    eprintln!("writers: {}", stats.summary());
    assert_eq!(acked.len(), total);
    sub.wait_for(total, PATIENCE).await;
    let resumes = sub.stats.resumes.load(Ordering::Relaxed);
    let received = finish_subscriber(sub, "subscriber").await;
    let log = read_log(&db.store).await;
    check("subscriber", &received, &acked, &log);
    assert!(resumes >= 2, "the client resumed with Last-Event-ID on each new server ({resumes} resumes)");
    assert!(server.unwrap().stop(Signal::SIGTERM), "clean exit");
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_database_each_subscriber_receives_every_event() {
    let started = Instant::now();
    let db = common::test_db().await;
    let url = db.url();
    let servers = [serve(&url), serve(&url)];
    for server in &servers {
        server.wait_ready().await;
    }
    let subscribers: Vec<_> =
        servers.iter().map(|s| ResumingSse::start(fixed(s.url("/api/events?from=start")), RECONNECT_DELAY)).collect();
    let bases = [servers[0].url(""), servers[1].url("")];
    let ingest = Ingest::start(125, |w| fixed(bases[w % 2].clone()));
    let total = ingest.total;
    let (acked, stats) = ingest.finish().await;
    eprintln!("writers: {}", stats.summary());
    assert_eq!(acked.len(), total);
    for sub in &subscribers {
        sub.wait_for(total, PATIENCE).await;
    }
    // Read after the subscribers got everything: the log's visibility horizon has passed it all.
    let log = read_log(&db.store).await;
    let mut sequences = Vec::new();
    for (i, sub) in subscribers.into_iter().enumerate() {
        let label = format!("subscriber on server {i}");
        let received = finish_subscriber(sub, &label).await;
        check(&label, &received, &acked, &log);
        sequences.push(received.iter().map(|d| d.frame_id.clone()).collect::<Vec<_>>());
    }
    assert_eq!(sequences[0], sequences[1], "both subscribers saw one order");
    // Both servers took writes: each subscriber saw events appended through the other.
    let through: HashSet<u64> = log.iter().map(|e| e.data["w"].as_u64().unwrap() % 2).collect();
    assert_eq!(through, HashSet::from([0, 1]));
    for server in servers {
        assert!(server.stop(Signal::SIGTERM), "clean exit");
    }
    eprintln!("took {:?}", started.elapsed());
}
