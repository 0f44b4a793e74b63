//! The database under `bench floor --database`: the least any server must do per event.
//!
//! Every frame of the floor then waits for a real append first: an autocommit `INSERT` of a
//! small row into a plain (logged) table, so PostgreSQL writes and flushes a commit record per
//! event as it does for FlightDeck's lone appends. Only when the `INSERT` has answered is the
//! frame, carrying the transaction's xid, written to every connection. The reader then measures
//! commit→client from PostgreSQL's commit timestamps, the figure issue 3's target is about, for
//! a "server" with no HTTP, no JSON, no filter, no ordering and no read of the log: what is left
//! is the disk's flush, the database's answer, and the fan-out to loopback sockets.
//!
//! [`ingest`] puts FlightDeck's ingestion in front instead: each event is POSTed to a server,
//! and its frame goes out when the `201` arrives (xid from the answer's position).
//!
//! Two connections serve the appends (FlightDeck has two committing workers); an append goes to
//! the one with fewer appends in flight, the first on a tie, so one backend stays warm while the
//! rate allows it (as FlightDeck's most-recently-used pools do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, Statement};

use super::client::{ClientBenchError, Connection, Target, wall_micros};
use super::event_frame::xid_of_position;
use super::floor::frame;

/// Connections the appends are spread over.
const CONNECTIONS: usize = 2;

/// The table the floor appends to (created if missing, in the connection's database).
const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS flightdeck_bench_floor \
                         (seq bigint NOT NULL, sent_micros bigint NOT NULL, pad text NOT NULL)";
const INSERT_SQL: &str = "INSERT INTO flightdeck_bench_floor (seq, sent_micros, pad) VALUES ($1, $2, $3) \
                          RETURNING pg_current_xact_id()::text::int8";

/// Bytes of padding per row, about an event's data and metadata.
const PAD_BYTES: usize = 200;

fn db_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> ClientBenchError {
    move |e| {
        let message = e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string());
        ClientBenchError::Failed(format!("bench floor --database: {what}: {message}"))
    }
}

struct Backend {
    client: Client,
    insert: Statement,
    in_flight: AtomicUsize,
}

/// Appends one row per frame, then hands the frame to the writer's connections.
pub struct Appender {
    connections: Arc<Vec<Backend>>,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    frame_bytes: usize,
    pad: Arc<str>,
    appends: JoinSet<Result<(), ClientBenchError>>,
    drivers: JoinSet<()>,
}

impl Appender {
    /// Connects to `conninfo` (libpq key=value or a URL) and creates the table.
    pub async fn connect(
        conninfo: &str,
        frames: broadcast::Sender<Arc<Vec<u8>>>,
        frame_bytes: usize,
    ) -> Result<Self, ClientBenchError> {
        let config: tokio_postgres::Config =
            conninfo.parse().map_err(|e| ClientBenchError::Usage(format!("--database: {e}")))?;
        let mut drivers = JoinSet::new();
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let (client, connection) = config.connect(NoTls).await.map_err(db_error("cannot connect"))?;
            drivers.spawn(async move {
                if let Err(e) = connection.await {
                    eprintln!("bench floor: a database connection ended: {e}");
                }
            });
            if connections.is_empty() {
                client.batch_execute(TABLE_SQL).await.map_err(db_error("CREATE TABLE"))?;
            }
            let insert = client.prepare(INSERT_SQL).await.map_err(db_error("prepare"))?;
            connections.push(Backend { client, insert, in_flight: AtomicUsize::new(0) });
        }
        Ok(Appender {
            connections: Arc::new(connections),
            frames,
            frame_bytes,
            pad: "x".repeat(PAD_BYTES).into(),
            appends: JoinSet::new(),
            drivers,
        })
    }

    /// Starts the append of frame `seq` (sent at `sent_micros`); its frame goes out when it has
    /// committed.
    pub fn append(&mut self, seq: u64, sent_micros: i64) {
        let connections = self.connections.clone();
        let frames = self.frames.clone();
        let (bytes, pad) = (self.frame_bytes, self.pad.clone());
        self.appends.spawn(async move {
            let pick = connections
                .iter()
                .enumerate()
                .min_by_key(|(i, c)| (c.in_flight.load(Ordering::Relaxed), *i))
                .map_or(0, |(i, _)| i);
            let connection = &connections[pick];
            connection.in_flight.fetch_add(1, Ordering::Relaxed);
            let seq_sql = i64::try_from(seq).unwrap_or(i64::MAX);
            let row = connection.client.query_one(&connection.insert, &[&seq_sql, &sent_micros, &&*pad]).await;
            connection.in_flight.fetch_sub(1, Ordering::Relaxed);
            let xid: i64 = row.map_err(db_error("INSERT"))?.get(0);
            // No receiver left only if every connection failed; the reader reports what is missing.
            let _ = frames.send(Arc::new(frame(seq, sent_micros, u64::try_from(xid).unwrap_or(0), bytes)));
            Ok(())
        });
    }

    /// Waits for every append; the first failure, if any.
    pub async fn finish(mut self) -> Result<(), ClientBenchError> {
        let mut first_error = None;
        while let Some(done) = self.appends.join_next().await {
            let outcome = done.map_err(|e| ClientBenchError::Failed(format!("an append task failed: {e}")))?;
            if let (Err(e), None) = (outcome, &first_error) {
                first_error = Some(e);
            }
        }
        drop(self.connections);
        while self.drivers.join_next().await.is_some() {}
        first_error.map_or(Ok(()), Err)
    }
}

/// Keep-alive connections the HTTP ingestion sends from (as `bench delivery`'s publisher).
const PUBLISHERS: usize = 32;

/// `bench floor --ingest-url`: each frame's event is POSTed to a FlightDeck server (one event per
/// request, paced as `bench delivery`'s publisher), and the frame goes out when the `201` arrives,
/// carrying the xid of the event's position. Everything FlightDeck does before an append is
/// acknowledged stays; everything it does after (its own delivery) is replaced by the floor's
/// fan-out.
pub async fn ingest(
    url: &str,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    rate: u32,
    total: u64,
    frame_bytes: usize,
) -> Result<(), ClientBenchError> {
    let target = Arc::new(Target::resolve(url).await?);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let period_nanos = 1_000_000_000 / u64::from(rate.max(1));
    let mut tasks = JoinSet::new();
    for i in 0..PUBLISHERS {
        let mut conn = Connection::open(&target).await?;
        let (target, next, frames) = (target.clone(), next.clone(), frames.clone());
        tasks.spawn(async move {
            let path = target.path("/api/events");
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return Ok::<_, ClientBenchError>(());
                }
                tokio::time::sleep_until(start + Duration::from_nanos(seq.saturating_mul(period_nanos))).await;
                let sent = wall_micros();
                let body = format!(r#"{{"stream":"floor-{i}","type":"BenchFloor","data":{{"seq":{seq},"t":{sent}}}}}"#);
                let (status, answer) = conn.post_json(&path, body.as_bytes()).await?;
                let key = b"\"position\":\"";
                let xid = memchr::memmem::find(&answer, key)
                    .and_then(|at| answer.get(at + key.len()..at + key.len() + 32))
                    .and_then(xid_of_position);
                let (201, Some(xid)) = (status, xid) else {
                    let body = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
                    return Err(ClientBenchError::Status { what: format!("POST {path}"), status, body });
                };
                let _ = frames.send(Arc::new(frame(seq, sent, xid, frame_bytes)));
                if conn.closing() {
                    conn = Connection::open(&target).await?;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| ClientBenchError::Failed(format!("a publisher stopped: {e}")))??;
    }
    Ok(())
}
