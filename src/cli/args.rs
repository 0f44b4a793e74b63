//! The command line: every flag, its environment variable and its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// FlightDeck: a real-time event platform on PostgreSQL.
///
/// Without DATABASE_URL, FlightDeck runs its own PostgreSQL in the data directory, using the
/// server binaries installed on this machine.
#[derive(Debug, Parser)]
#[command(name = "flightdeck", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Where the database is.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// How to reach PostgreSQL; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (URL or key=value). Without it FlightDeck runs its own
    /// PostgreSQL in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// FlightDeck's data directory, home of the embedded PostgreSQL cluster.
    #[arg(long, env = "FLIGHTDECK_DATA_DIR", global = true, default_value = ".flightdeck")]
    pub data_dir: PathBuf,
    /// Use the PostgreSQL server binaries (initdb, postgres) in this directory instead of
    /// searching PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin.
    #[arg(long, env = "FLIGHTDECK_PG_BIN_DIR", global = true)]
    pub pg_bin_dir: Option<PathBuf>,
}

/// FlightDeck's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP API and real-time delivery, on 127.0.0.1:8080 by default.
    Serve(ServeArgs),
    /// Apply pending schema migrations and exit (serve also applies them on start).
    Migrate,
    /// Append one event to a stream and print where it was stored, as JSON.
    Append(AppendArgs),
    /// Print a stream, or the global log from a position, as JSON lines (one event per line).
    Read(ReadArgs),
    /// Follow the live log: print each new event as it is committed, until Ctrl-C.
    Tail(TailArgs),
    /// Measure performance against the configured database.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Manage the analytics projections (the numbers behind /api/stats).
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Make tokens for reading and writing (or a dashboard login link).
    #[command(subcommand)]
    Token(super::token::TokenCommand),
    /// Send synthetic website traffic (page views, clicks, form submissions) to a running server,
    /// through POST /api/track like real trackers, with a progress line on stderr. Registers the
    /// demo sites first, in the server's database (the same --data-dir or DATABASE_URL).
    Demo(DemoArgs),
    /// Manage the sites whose tracker events are accepted, and the origins each accepts them from.
    #[command(subcommand)]
    Site(SiteCommand),
}

/// `flightdeck site …`.
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Register a site with the origins its pages are served from, or add origins to a registered
    /// site (`--replace`: set exactly these). A running server takes it up within a second or two.
    Add(SiteAddArgs),
    /// Print the registered sites and their origins.
    List(SiteListArgs),
    /// Unregister a site: its tracker requests are refused from then on (its events are kept).
    Remove(SiteRemoveArgs),
}

/// `flightdeck site add`.
#[derive(Debug, Clone, Args)]
pub struct SiteAddArgs {
    /// The site id: the tracker's `data-site`, 1 to 64 of A-Z a-z 0-9 _ -.
    pub id: String,
    /// An origin the site's pages are served from, as scheme://host[:port], e.g.
    /// https://www.example.com or http://localhost:3000 (repeatable); `*` accepts any origin.
    #[arg(long = "origin", value_name = "ORIGIN", required = true)]
    pub origins: Vec<String>,
    /// Set exactly these origins, dropping the site's others (default: add to them).
    #[arg(long)]
    pub replace: bool,
}

/// `flightdeck site list`.
#[derive(Debug, Clone, Args)]
pub struct SiteListArgs {
    /// Print a JSON array of {id, origins, createdAt, updatedAt} instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `flightdeck site remove`.
#[derive(Debug, Clone, Args)]
pub struct SiteRemoveArgs {
    /// The site id.
    pub id: String,
}

/// `flightdeck projections …`.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Recompute the stats tables from the start of the log (safe while a server runs: its
    /// projector waits, then follows), and print a summary as JSON.
    Rebuild,
}

/// `flightdeck demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Events per second, over all sites.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// How many websites to simulate.
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Do not register the demo sites (`flightdeck site add demo-shop --origin
    /// https://shop.demo.flightdeck.test`, …): they are registered already, or the server's
    /// database cannot be reached from here.
    #[arg(long)]
    pub no_register: bool,
}

/// `flightdeck serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FLIGHTDECK_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Connections in the database pool.
    #[arg(long, env = "FLIGHTDECK_DB_POOL", default_value_t = 32)]
    pub db_pool: usize,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "FLIGHTDECK_MAX_BODY", default_value_t = crate::http::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Route an event type to a named channel, as `Type=channel` (repeatable, or comma-separated
    /// in the environment). Subscribers pick channels with `channels=`; unmapped types travel on
    /// `default`.
    #[arg(long = "channel", env = "FLIGHTDECK_CHANNELS", value_delimiter = ',', value_name = "TYPE=CHANNEL")]
    pub channels: Vec<String>,
    /// Deliver only these event types in real time (all if not given); others are stored and
    /// readable but never streamed.
    #[arg(long = "publish", env = "FLIGHTDECK_PUBLISH", value_delimiter = ',', value_name = "TYPE")]
    pub publish: Vec<String>,
    /// For benchmarks: store events but deliver nothing in real time.
    #[arg(long)]
    pub no_delivery: bool,
    /// For benchmarks: `grouped` (FlightDeck's design) or `seed` (one transaction per append with
    /// a NOTIFY carrying the event, as in the original sketch).
    #[arg(long, default_value = "grouped", value_parser = ["grouped", "seed"])]
    pub append_mode: String,
    /// Also generate synthetic website traffic against this server (`flightdeck demo`), at RATE
    /// events per second (default 20), so the stats come alive at once.
    #[arg(long, value_name = "RATE", num_args = 0..=1, default_missing_value = "20", require_equals = true)]
    pub demo: Option<u32>,
    /// Serve without authentication: anyone who can reach the port reads and writes everything.
    /// Only for development, or behind your own access control.
    #[arg(long, env = "FLIGHTDECK_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Token keys.
    #[command(flatten)]
    pub auth: super::token::AuthArgs,
    /// Limits (README "Limits"); over them a client gets 429 with Retry-After, a 400/413, or a
    /// WebSocket error op / close code.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `flightdeck serve`'s limits.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Ingestion requests (POST /api/events and /api/track) per second per client address (0: no
    /// limit).
    #[arg(long, env = "FLIGHTDECK_INGEST_RATE", default_value_t = crate::http::LimitsConfig::INGEST_RATE)]
    pub ingest_rate: u32,
    /// Ingestion requests a client address may send at once before --ingest-rate applies.
    #[arg(long, env = "FLIGHTDECK_INGEST_BURST", default_value_t = crate::http::LimitsConfig::INGEST_BURST)]
    pub ingest_burst: u32,
    /// Tracker events (POST /api/track) per second per site (0: no limit).
    #[arg(long, env = "FLIGHTDECK_SITE_RATE", default_value_t = crate::http::LimitsConfig::SITE_RATE)]
    pub site_rate: u32,
    /// Tracker events a site may send at once before --site-rate applies (at least 100, one batch).
    #[arg(long, env = "FLIGHTDECK_SITE_BURST", default_value_t = crate::http::LimitsConfig::SITE_BURST)]
    pub site_burst: u32,
    /// Open streams per client address: SSE, WebSocket and stats streams together (0: no limit).
    #[arg(long, env = "FLIGHTDECK_MAX_STREAMS", default_value_t = crate::http::LimitsConfig::STREAMS)]
    pub max_streams: u32,
    /// Open streams per token, from any address: SSE, WebSocket and stats streams together (0: no
    /// limit).
    #[arg(long, env = "FLIGHTDECK_MAX_STREAMS_PER_TOKEN", default_value_t = crate::http::LimitsConfig::STREAMS_PER_TOKEN)]
    pub max_streams_per_token: u32,
    /// Most entries in each filter list (types, channels, where) of one subscription.
    #[arg(long, env = "FLIGHTDECK_MAX_FILTERS", default_value_t = crate::http::LimitsConfig::FILTERS)]
    pub max_filters: usize,
    /// Client addresses the per-address limits skip, as IPs or CIDRs (comma-separated), or `none`.
    #[arg(
        long,
        env = "FLIGHTDECK_LIMIT_EXEMPT",
        value_delimiter = ',',
        default_value = crate::http::LimitsConfig::EXEMPT,
        value_name = "CIDR,..."
    )]
    pub limit_exempt: Vec<String>,
    /// Take the client address from the last X-Forwarded-For entry. Only behind a proxy that sets
    /// it: otherwise clients could pick their own address.
    #[arg(long, env = "FLIGHTDECK_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Most keys (client addresses, sites) each rate limit remembers; beyond, it starts over.
    #[arg(long, env = "FLIGHTDECK_LIMIT_MAX_KEYS", default_value_t = crate::http::LimitsConfig::MAX_KEYS)]
    pub limit_max_keys: usize,
    /// Largest POST /api/track body, in bytes (larger ones get 413).
    #[arg(long, env = "FLIGHTDECK_MAX_TRACK_BODY", default_value_t = crate::http::MAX_TRACK_BODY)]
    pub max_track_body: usize,
    /// Subscriptions one WebSocket may hold at once.
    #[arg(long, env = "FLIGHTDECK_WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,
    /// Largest WebSocket request in bytes (larger: a frame_too_large error; the socket stays open).
    #[arg(long, env = "FLIGHTDECK_WS_MAX_REQUEST", default_value_t = 64 * 1024)]
    pub ws_max_request: usize,
    /// Largest WebSocket message in bytes (larger: the socket is closed with 1009).
    #[arg(long, env = "FLIGHTDECK_WS_MAX_MESSAGE", default_value_t = 1024 * 1024)]
    pub ws_max_message: usize,
}

/// `flightdeck append`.
#[derive(Debug, Clone, Args)]
pub struct AppendArgs {
    /// The stream to append to, e.g. `order-42`.
    pub stream: String,
    /// The event's type name, e.g. `OrderPlaced`.
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The event's data as JSON, or `-` to read it from standard input.
    pub data: String,
    /// Metadata as a JSON object, e.g. '{"correlationId":"c-1"}'.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Required stream state: `any`, `no-stream`, or the stream's current version.
    #[arg(long, default_value = "any")]
    pub expected_version: String,
    /// The event's id (a UUID); appending the same id and content again stores nothing new.
    #[arg(long)]
    pub id: Option<String>,
    /// The site (tenant) the stream belongs to: 1 to 64 of A-Z, a-z, 0-9, _ and -. A stream's
    /// first event fixes its site; appending to it under another site is refused.
    #[arg(long, default_value = crate::store::DEFAULT_SITE)]
    pub site: String,
}

/// `flightdeck read`.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// The stream to read. Without it, reads the global log.
    pub stream: Option<String>,
    /// Reading a stream: the first version to print.
    #[arg(long, default_value_t = 1)]
    pub from_version: u64,
    /// Reading the global log: print events after this position (`start` for the beginning).
    #[arg(long, default_value = "start")]
    pub after: String,
    /// Print at most this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// `flightdeck tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Only these event types (comma-separated or repeated), e.g. `--types OrderPlaced,OrderShipped`.
    #[arg(long, value_delimiter = ',', value_name = "TYPE,...")]
    pub types: Vec<String>,
    /// Only events whose data has this field value, e.g. `--where data.pageId:home` (repeatable;
    /// all must match). The value is JSON when it parses as a scalar (`42`, `true`), else text.
    #[arg(long = "where", value_name = "data.FIELD:VALUE")]
    pub where_: Vec<String>,
    /// Only these sites (comma-separated or repeated), e.g. `--site shop,blog`.
    #[arg(long, value_delimiter = ',', value_name = "SITE,...")]
    pub site: Vec<String>,
    /// Only this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only streams whose id starts with this prefix, e.g. `session-`.
    #[arg(long)]
    pub stream_prefix: Option<String>,
    /// Where to start: `now` (only new events), `start` (the whole log, then live), or a
    /// position (events after it, then live).
    #[arg(long, default_value = "now")]
    pub from: String,
    /// Print each event's full envelope as one JSON line instead of a human-readable line.
    #[arg(long)]
    pub json: bool,
}

/// `flightdeck bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append throughput for 1, 4, 16 and 64 writers × 1 and 100 events per append, beside a
    /// plain-INSERT baseline on the same table shape. Runs in a scratch database
    /// (`flightdeck_bench`), which it recreates.
    Append(BenchAppendArgs),
    /// Real-time delivery, as a client of a running `flightdeck serve`: commit-to-client latency
    /// and delivered events/s with many SSE subscribers while events are POSTed at a fixed rate.
    /// Raise the open-files limit (`ulimit -n`) of this shell and the server's for thousands of
    /// subscribers.
    Delivery(BenchDeliveryArgs),
    /// Ingestion throughput over HTTP, as a client of a running `flightdeck serve`: concurrent
    /// clients each POSTing one event per request on a keep-alive connection.
    Ingest(BenchIngestArgs),
    /// The floor under `bench delivery`: one frame at a fixed rate to many loopback TCP
    /// connections, written by a separate process with one task per connection, and read here;
    /// send→client latency with no HTTP, JSON or database in the way.
    Floor(crate::bench::floor::BenchFloorArgs),
    /// The writing half of `bench floor`, which starts it.
    #[command(hide = true)]
    FloorWriter(crate::bench::floor::BenchFloorWriterArgs),
}

/// `flightdeck bench delivery`.
#[derive(Debug, Clone, Args)]
pub struct BenchDeliveryArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// SSE subscriber counts, one per case (paired with --rate).
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    pub subscribers: Vec<usize>,
    /// Events per second published in each case (paired with --subscribers).
    #[arg(long, value_delimiter = ',', default_value = "1000,10")]
    pub rate: Vec<u32>,
    /// Seconds timed per case.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of publishing before the timed part (checked, not timed).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Keep-alive connections the publisher sends from.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
    /// Seconds to wait after the last POST for subscribers to receive everything.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Subscribers connecting at the same time while the streams open.
    #[arg(long, default_value_t = 256)]
    pub open_concurrency: usize,
    /// A token that subscribes and publishes (`flightdeck token create --site '*' --subscribe
    /// --publish`), for a server that requires tokens.
    #[arg(long, env = "FLIGHTDECK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Measure commit→client: a connection string (libpq key=value or postgres:// URL) to the
    /// server's PostgreSQL, whose `track_commit_timestamp` must be on (it needs a restart). After
    /// each case the commit time of every transaction received is looked up there, and the WAL
    /// flushes during the case are counted (and timed, with `track_wal_io_timing = on`). For the
    /// embedded cluster: `host=<data dir>/postgres user=postgres dbname=postgres` (the socket
    /// directory is line 5 of `<data dir>/postgres/data/postmaster.pid`). Separate from
    /// DATABASE_URL on purpose: the measurement is asked for, never implied.
    #[arg(long, value_name = "CONNINFO")]
    pub commit_times_url: Option<String>,
}

/// `flightdeck bench ingest`.
#[derive(Debug, Clone, Args)]
pub struct BenchIngestArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Concurrent clients, each on its own connection and stream, one event per request.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds timed.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of load before the timed part.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// SSE subscribers reading the events live meanwhile (0: none).
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// A name for the server configuration in the output, e.g. `delivery on`.
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON object instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
    /// A token that subscribes and publishes (`flightdeck token create --site '*' --subscribe
    /// --publish`), for a server that requires tokens.
    #[arg(long, env = "FLIGHTDECK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `flightdeck bench append`.
#[derive(Debug, Clone, Args)]
pub struct BenchAppendArgs {
    /// Seconds to run each case.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent writer counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub writers: Vec<usize>,
    /// Events per append to try.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub batch: Vec<usize>,
}
