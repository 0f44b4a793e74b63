//! `flightdeck bench append`: append throughput, in events per second, beside a plain-INSERT
//! baseline on the same table shape, measured in the same run against the same server.
//!
//! The benchmark runs in a scratch database (`flightdeck_bench`), recreated at the start and
//! dropped at the end, with the real schema (migrations) plus `bench_plain`, a copy of
//! `flightdeck.events` (`LIKE … INCLUDING ALL`: same columns, defaults, identity, constraints and
//! indexes). For every (events per append, writers) combination it measures three cases, each
//! writer on a stream of its own:
//!
//! * plain INSERT: one prepared autocommit INSERT per append (multi-row from arrays for a batch);
//! * FlightDeck: [`append_in`](crate::store::append_in) on a dedicated connection, autocommit, so
//!   one transaction per append — what [`Store::append`] does minus the pool checkout;
//! * FlightDeck through the pool: [`Store::append`] itself.
//!
//! To keep a shared, noisy machine from favouring whichever case runs first, each case runs as two
//! halves in the order A B C C B A. Before every half both tables are emptied and a checkpoint is
//! taken, and each half starts with an unmeasured warm-up. Only appends that complete inside the
//! measured window count. Progress goes to stderr; the result is a Markdown table on stdout.

mod workload;

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::cli::args::BenchAppendArgs;
use crate::store::{Store, StoreError};

use workload::{Case, Tally};

/// The scratch database the benchmark recreates and drops.
const BENCH_DB: &str = "flightdeck_bench";

/// The order of the halves: each case once forwards, once backwards.
const ORDER: [Case; 6] = [Case::Plain, Case::Direct, Case::Pool, Case::Pool, Case::Direct, Case::Plain];

/// The target: FlightDeck at 16 writers × 1 event per append reaches this fraction of the
/// plain-INSERT baseline.
const TARGET: (usize, usize, f64) = (16, 1, 0.85);

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Database trouble.
    #[error("benchmark database error: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// The event store refused or failed an append.
    #[error("benchmark append failed: {0}")]
    Store(#[from] StoreError),
    /// Arguments or a server the benchmark cannot work with, with the reason.
    #[error("{0}")]
    Usage(String),
    /// A writer task panicked or was cancelled.
    #[error("a benchmark writer stopped: {0}")]
    Writer(#[from] tokio::task::JoinError),
}

/// A database error with the server's message, which `tokio_postgres` keeps in its source.
fn describe(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(source)) => format!("{err}: {source}"),
        (None, None) => err.to_string(),
    }
}

/// What to measure, checked and derived from the arguments.
#[derive(Debug)]
struct Plan {
    writers: Vec<usize>,
    batches: Vec<usize>,
    /// Measured time per half (two halves per case).
    half: Duration,
    /// Unmeasured time at the start of every half.
    warmup: Duration,
}

impl Plan {
    fn new(args: &BenchAppendArgs) -> Result<Self, BenchError> {
        if !args.seconds.is_finite() || args.seconds < 0.2 || args.seconds > 3600.0 {
            return Err(BenchError::Usage(format!("--seconds must be between 0.2 and 3600, not {}", args.seconds)));
        }
        let check = |name: &str, values: &[usize], max: usize| {
            if values.is_empty() || values.iter().any(|&v| v == 0 || v > max) {
                Err(BenchError::Usage(format!("--{name} takes numbers from 1 to {max}, e.g. 1,4,16")))
            } else {
                Ok(values.to_vec())
            }
        };
        Ok(Plan {
            writers: check("writers", &args.writers, 1000)?,
            batches: check("batch", &args.batch, 10_000)?,
            half: Duration::from_secs_f64(args.seconds / 2.0),
            warmup: Duration::from_secs_f64((args.seconds / 10.0).clamp(0.2, 1.0)),
        })
    }

    fn max_writers(&self) -> usize {
        self.writers.iter().copied().max().unwrap_or(1)
    }
}

/// One combination's results.
#[derive(Debug)]
struct Row {
    writers: usize,
    batch: usize,
    plain: Tally,
    direct: Tally,
    pool: Tally,
}

/// Opens a connection whose driver runs on its own task.
pub(super) async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("benchmark connection closed: {e}");
        }
    });
    Ok(client)
}

/// Runs the append benchmark against the server `config` points at.
pub async fn run(config: Config, args: &BenchAppendArgs) -> Result<(), BenchError> {
    let plan = Plan::new(args)?;
    let admin = connect(&config).await?;
    if config.get_dbname() == Some(BENCH_DB) {
        return Err(BenchError::Usage(format!(
            "connect to another database than {BENCH_DB}, which the benchmark drops"
        )));
    }
    let facts = server_facts(&admin, &plan).await?;
    eprintln!("bench: {}", facts.join(", "));
    // Separate statements: a multi-statement string runs as one transaction, which DROP DATABASE
    // refuses.
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")).await?;
    admin.batch_execute(&format!("CREATE DATABASE {BENCH_DB}")).await?;
    let mut bench_config = config.clone();
    bench_config.dbname(BENCH_DB);
    let result = measure(&bench_config, &plan).await;
    let dropped = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")).await;
    let rows = result?;
    dropped?;
    print_report(&facts, args.seconds, &rows);
    Ok(())
}

/// Server facts that explain the numbers; refuses a server with too few connections.
async fn server_facts(admin: &Client, plan: &Plan) -> Result<Vec<String>, BenchError> {
    let mut facts = Vec::new();
    let mut setting = async |name: &str| -> Result<String, BenchError> {
        let value: String = admin.query_one(&format!("SHOW {name}"), &[]).await?.try_get(0)?;
        facts.push(format!("{name}={value}"));
        Ok(value)
    };
    setting("server_version").await?;
    setting("synchronous_commit").await?;
    setting("fsync").await?;
    setting("wal_sync_method").await?;
    setting("shared_buffers").await?;
    let max_connections = setting("max_connections").await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    facts.push(format!("client cores={cores}"));
    // Peak: the pool (max writers + 4) stays open while dedicated writer connections run.
    let needed = 2 * plan.max_writers() + 10;
    if max_connections.parse::<usize>().is_ok_and(|max| max < needed) {
        return Err(BenchError::Usage(format!(
            "the server allows {max_connections} connections; {} writers need about {needed}",
            plan.max_writers()
        )));
    }
    Ok(facts)
}

/// Creates the schema and runs every combination.
async fn measure(config: &Config, plan: &Plan) -> Result<Vec<Row>, BenchError> {
    let store = Store::new(config.clone(), plan.max_writers() + 4)?;
    store.migrate().await?;
    let client = connect(config).await?;
    prepare_baseline(&client).await?;
    let mut checkpoint = true;
    let mut rows = Vec::new();
    for &batch in &plan.batches {
        for &writers in &plan.writers {
            let mut row =
                Row { writers, batch, plain: Tally::default(), direct: Tally::default(), pool: Tally::default() };
            for (i, case) in ORDER.into_iter().enumerate() {
                client.batch_execute("TRUNCATE flightdeck.events, public.bench_plain RESTART IDENTITY").await?;
                if checkpoint && let Err(e) = client.batch_execute("CHECKPOINT").await {
                    eprintln!("bench: cannot CHECKPOINT between cases ({e}); continuing without");
                    checkpoint = false;
                }
                let tally = workload::segment(case, writers, batch, plan.warmup, plan.half, config, &store).await?;
                eprintln!(
                    "bench: {writers:>2} writers × {batch:>3} events, half {}/6, {:<24} {:>9.0} events/s ({} appends)",
                    i + 1,
                    case.label(),
                    tally.events_per_second(),
                    tally.appends
                );
                match case {
                    Case::Plain => row.plain.add(tally),
                    Case::Direct => row.direct.add(tally),
                    Case::Pool => row.pool.add(tally),
                }
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Creates `bench_plain` like `flightdeck.events` and checks that the copy is faithful.
async fn prepare_baseline(client: &Client) -> Result<(), BenchError> {
    client.batch_execute("CREATE TABLE public.bench_plain (LIKE flightdeck.events INCLUDING ALL)").await?;
    let shape = "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = $1::text::regclass), \
                        (SELECT count(*) FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'c'), \
                        (SELECT string_agg(attname || ':' || attidentity::text, ',' ORDER BY attnum) \
                         FROM pg_attribute WHERE attrelid = $1::text::regclass AND attidentity <> '')";
    let events = client.query_one(shape, &[&"flightdeck.events"]).await?;
    let plain = client.query_one(shape, &[&"public.bench_plain"]).await?;
    let read = |row: &tokio_postgres::Row| -> Result<(i64, i64, Option<String>), tokio_postgres::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    };
    let (events, plain) = (read(&events)?, read(&plain)?);
    if events != plain {
        return Err(BenchError::Usage(format!(
            "bench_plain does not copy flightdeck.events' shape (indexes, checks, identity): {plain:?} vs {events:?}"
        )));
    }
    Ok(())
}

/// Prints the facts and the results table as Markdown.
fn print_report(facts: &[String], seconds: f64, rows: &[Row]) {
    println!("Server and client: {}.", facts.join(", "));
    println!("Each case: {seconds} s measured (two halves, order A B C C B A), one stream per writer.");
    println!();
    println!(
        "| writers | events per append | plain INSERT events/s | Store::append (server path) events/s | ratio \
         | append_in (caller's transaction) events/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |a: &Tally, b: &Tally| {
        let base = b.events_per_second();
        if base > 0.0 { a.events_per_second() / base } else { 0.0 }
    };
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.2}x |",
            row.writers,
            row.batch,
            row.plain.events_per_second(),
            row.pool.events_per_second(),
            ratio(&row.pool, &row.plain),
            row.direct.events_per_second(),
            ratio(&row.direct, &row.plain),
        );
    }
    let (writers, batch, target) = TARGET;
    if let Some(row) = rows.iter().find(|r| r.writers == writers && r.batch == batch) {
        // The target is about the server's own append path.
        let got = ratio(&row.pool, &row.plain);
        let verdict = if got >= target { "met" } else { "NOT met" };
        println!();
        println!(
            "Target (Store::append, {writers} writers × {batch} event per append ≥ {target}x plain INSERT): \
             {got:.2}x, {verdict}."
        );
    }
}
