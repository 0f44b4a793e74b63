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
//! `floor_http.rs` puts HTTP ingestion in front: a minimal server of its own, or FlightDeck's.
//!
//! Two connections serve the appends (FlightDeck has two committing workers); an append goes to
//! the one with fewer appends in flight, the first on a tie, so one backend stays warm while the
//! rate allows it (as FlightDeck's most-recently-used pools do).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, Statement};

use super::client::ClientBenchError;
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

/// The floor's database connections, shared by the tasks that append.
pub struct Backends {
    connections: Vec<Backend>,
    pad: String,
}

/// The tasks driving [`Backends`]' connections; they end once the backends are dropped.
pub struct Drivers(JoinSet<()>);

impl Drivers {
    /// Waits for the connections to close (after every [`Backends`] handle is gone).
    pub async fn closed(mut self) {
        while self.0.join_next().await.is_some() {}
    }
}

impl Backends {
    /// Connects to `conninfo` (libpq key=value or a URL) and creates the table.
    pub async fn connect(conninfo: &str) -> Result<(Arc<Self>, Drivers), ClientBenchError> {
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
        Ok((Arc::new(Backends { connections, pad: "x".repeat(PAD_BYTES) }), Drivers(drivers)))
    }

    /// Appends frame `seq`'s row in a transaction of its own; its xid once committed.
    pub async fn insert(&self, seq: u64, sent_micros: i64) -> Result<u64, ClientBenchError> {
        let connection = self
            .connections
            .iter()
            .enumerate()
            .min_by_key(|(i, c)| (c.in_flight.load(Ordering::Relaxed), *i))
            .map(|(_, c)| c)
            .ok_or_else(|| ClientBenchError::Failed("bench floor: no database connection".into()))?;
        connection.in_flight.fetch_add(1, Ordering::Relaxed);
        let seq_sql = i64::try_from(seq).unwrap_or(i64::MAX);
        let row = connection.client.query_one(&connection.insert, &[&seq_sql, &sent_micros, &self.pad]).await;
        connection.in_flight.fetch_sub(1, Ordering::Relaxed);
        let xid: i64 = row.map_err(db_error("INSERT"))?.get(0);
        u64::try_from(xid).map_err(|_| ClientBenchError::Failed(format!("bench floor: a negative xid {xid}")))
    }
}

/// Appends one row per frame, then hands the frame to the writer's connections.
pub struct Appender {
    backends: Arc<Backends>,
    drivers: Drivers,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    frame_bytes: usize,
    appends: JoinSet<Result<(), ClientBenchError>>,
}

impl Appender {
    /// Connects to `conninfo` (see [`Backends::connect`]).
    pub async fn connect(
        conninfo: &str,
        frames: broadcast::Sender<Arc<Vec<u8>>>,
        frame_bytes: usize,
    ) -> Result<Self, ClientBenchError> {
        let (backends, drivers) = Backends::connect(conninfo).await?;
        Ok(Appender { backends, drivers, frames, frame_bytes, appends: JoinSet::new() })
    }

    /// Starts the append of frame `seq` (sent at `sent_micros`); its frame goes out when it has
    /// committed.
    pub fn append(&mut self, seq: u64, sent_micros: i64) {
        let (backends, frames, bytes) = (self.backends.clone(), self.frames.clone(), self.frame_bytes);
        self.appends.spawn(async move {
            let xid = backends.insert(seq, sent_micros).await?;
            // No receiver left only if every connection failed; the reader reports what is missing.
            let _ = frames.send(Arc::new(frame(seq, sent_micros, xid, bytes)));
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
        drop(self.backends);
        self.drivers.closed().await;
        first_error.map_or(Ok(()), Err)
    }
}
