//! The writers behind `flightdeck bench append`: one measured segment of one case, with every
//! writer on a stream of its own, counting only the appends that complete inside the window.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config};
use uuid::Uuid;

use crate::store::{DEFAULT_SITE, ExpectedVersion, NewEvent, Store, StoreError, append_in};

use super::{BenchError, connect};

/// The event type every benchmark event has.
const EVENT_TYPE: &str = "PageViewed";

/// The baseline for one event per append: a plain single-row INSERT.
const PLAIN_ONE: &str = "INSERT INTO public.bench_plain (id, stream_id, version, type, data, metadata) \
                         VALUES ($1, $2, $3, $4, $5, $6)";

/// The baseline for several events per append: one multi-row INSERT from arrays.
const PLAIN_MANY: &str = "INSERT INTO public.bench_plain (id, stream_id, version, type, data, metadata) \
                          SELECT x.id, $2, x.version, x.type, x.data, x.metadata \
                          FROM unnest($1, $3, $4, $5, $6) AS x(id, version, type, data, metadata)";

/// What a writer does once per append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Case {
    /// A plain autocommit INSERT into `bench_plain` (same table shape), prepared once.
    Plain,
    /// [`append_in`] on the writer's own connection, autocommit: one transaction per append.
    Direct,
    /// [`Store::append`] through the store's connection pool.
    Pool,
}

impl Case {
    /// How progress lines name the case.
    pub(super) fn label(self) -> &'static str {
        match self {
            Case::Plain => "plain INSERT",
            Case::Direct => "FlightDeck append_in",
            Case::Pool => "FlightDeck Store::append",
        }
    }
}

/// Events and appends completed inside measured windows, and how long those windows were.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    /// Events in completed appends.
    pub events: u64,
    /// Completed appends (transactions).
    pub appends: u64,
    /// Total measured time.
    pub window: Duration,
}

impl Tally {
    /// Adds another segment of the same case.
    pub(super) fn add(&mut self, other: Tally) {
        self.events += other.events;
        self.appends += other.appends;
        self.window += other.window;
    }

    /// Throughput over all measured windows.
    pub(super) fn events_per_second(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { self.events as f64 / secs } else { 0.0 }
    }
}

/// The measured window every writer of a segment shares. Writers start appending before it opens
/// (warm-up) and stop starting appends when it closes.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn open(&self) -> bool {
        Instant::now() < self.end
    }

    /// Counts an append of `events` that has just completed, if it completed inside the window.
    fn record(&self, tally: &mut Tally, events: usize) {
        let done = Instant::now();
        if done >= self.start && done <= self.end {
            tally.events += events as u64;
            tally.appends += 1;
        }
    }
}

/// Runs one case with `writers` concurrent writers appending `batch` events at a time: `warmup`
/// unmeasured, then `window` measured. Dedicated connections are opened before the clock starts.
pub(super) async fn segment(
    case: Case,
    writers: usize,
    batch: usize,
    warmup: Duration,
    window: Duration,
    config: &Config,
    store: &Store,
) -> Result<Tally, BenchError> {
    let mut clients = Vec::new();
    if case != Case::Pool {
        for _ in 0..writers {
            clients.push(connect(config).await?);
        }
    }
    let start = Instant::now() + warmup;
    let frame = Window { start, end: start + window };
    let mut tasks = JoinSet::new();
    match case {
        Case::Plain => {
            for (writer, client) in clients.into_iter().enumerate() {
                tasks.spawn(plain_writer(client, format!("w{writer}"), batch, frame));
            }
        }
        Case::Direct => {
            for (writer, client) in clients.into_iter().enumerate() {
                tasks.spawn(direct_writer(client, format!("s{writer}"), batch, frame));
            }
        }
        Case::Pool => {
            for writer in 0..writers {
                tasks.spawn(pool_writer(store.clone(), format!("p{writer}"), batch, frame));
            }
        }
    }
    let mut total = Tally { window, ..Tally::default() };
    while let Some(joined) = tasks.join_next().await {
        let tally = joined??;
        total.events += tally.events;
        total.appends += tally.appends;
    }
    Ok(total)
}

/// A small, realistic event body.
fn page_view(n: u64) -> Value {
    json!({ "page": "/home", "n": n })
}

/// Plain INSERTs of the same rows `append_in` would write (ids made here, versions counted here).
async fn plain_writer(client: Client, stream: String, batch: usize, frame: Window) -> Result<Tally, BenchError> {
    let types: &[Type] = if batch == 1 {
        &[Type::UUID, Type::TEXT, Type::INT8, Type::TEXT, Type::JSONB, Type::JSONB]
    } else {
        &[Type::UUID_ARRAY, Type::TEXT, Type::INT8_ARRAY, Type::TEXT_ARRAY, Type::JSONB_ARRAY, Type::JSONB_ARRAY]
    };
    let statement = client.prepare_typed(if batch == 1 { PLAIN_ONE } else { PLAIN_MANY }, types).await?;
    let empty = Value::Object(Map::new());
    let mut tally = Tally::default();
    let mut version: i64 = 0;
    let mut n: u64 = 0;
    while frame.open() {
        if batch == 1 {
            n += 1;
            let (id, data) = (Uuid::now_v7(), page_view(n));
            client.execute(&statement, &[&id, &stream, &(version + 1), &EVENT_TYPE, &data, &empty]).await?;
            version += 1;
        } else {
            let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
            let versions: Vec<i64> = (0..batch)
                .map(|_| {
                    version += 1;
                    version
                })
                .collect();
            let data: Vec<Value> = (0..batch)
                .map(|_| {
                    n += 1;
                    page_view(n)
                })
                .collect();
            let event_types = vec![EVENT_TYPE; batch];
            let metadata = vec![&empty; batch];
            client.execute(&statement, &[&ids, &stream, &versions, &event_types, &data, &metadata]).await?;
        }
        frame.record(&mut tally, batch);
    }
    Ok(tally)
}

/// Events for one append, numbered on from `n`.
fn events(batch: usize, n: &mut u64) -> Vec<NewEvent> {
    (0..batch)
        .map(|_| {
            *n += 1;
            NewEvent::new(EVENT_TYPE, page_view(*n))
        })
        .collect()
}

/// [`append_in`] on a dedicated connection: the path for appends inside a caller's transaction
/// (locked, checked plpgsql function), here in autocommit.
async fn direct_writer(client: Client, stream: String, batch: usize, frame: Window) -> Result<Tally, BenchError> {
    let mut tally = Tally::default();
    let mut n = 0;
    while frame.open() {
        match append_in(&client, DEFAULT_SITE, &stream, ExpectedVersion::Any, &events(batch, &mut n)).await {
            Ok(_) => frame.record(&mut tally, batch),
            // Cannot happen with one writer per stream, but it is what a caller would do.
            Err(StoreError::Retry) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tally)
}

/// FlightDeck's append as the server calls it: through the pool, with its retries.
async fn pool_writer(store: Store, stream: String, batch: usize, frame: Window) -> Result<Tally, BenchError> {
    let mut tally = Tally::default();
    let mut n = 0;
    while frame.open() {
        store.append(DEFAULT_SITE, &stream, ExpectedVersion::Any, &events(batch, &mut n)).await?;
        frame.record(&mut tally, batch);
    }
    Ok(tally)
}
