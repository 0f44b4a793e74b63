//! The floor under `bench delivery`: the same fan-out with everything but the sockets taken away.
//!
//! `bench floor` starts a writer process (`bench floor-writer`, this binary again) that accepts N
//! loopback TCP connections and, at a fixed rate, writes one ready-made frame (the size of an SSE
//! frame of `bench delivery`, carrying its send time) to every connection: one task per
//! connection woken through a `tokio::sync::broadcast`, as FlightDeck's SSE streams are. No HTTP,
//! no JSON, no database, no filter. This process reads every connection, as the delivery bench's
//! subscribers do, and reports send→client latency.
//!
//! Why: it tells what this machine can do at best. Whatever FlightDeck does between a commit and
//! a socket write comes on top of this figure, so when the floor itself misses a latency target
//! (for instance while the machine also carries the 1,000 appends a second the target is about;
//! `scripts/bench-floor.sh` runs it beside that load), no server design reaches the target here.
//!
//! Three modes put back what the target is measured with, and the reader then measures
//! commit→client as `bench delivery` does: with `--database` each frame first waits for an
//! INSERT of its own into PostgreSQL (`floor_db.rs`: the least any server must do per event);
//! with `--minimal-http` as well, each event is POSTed to a minimal server in the writer that
//! INSERTs it and then writes the frame (`floor_http.rs`: the least a server that takes events
//! over HTTP must do); with `--ingest-url` instead, each event is POSTed to a FlightDeck server
//! and the frame goes out on the `201` (FlightDeck's ingestion, then a fan-out that costs
//! nothing extra).

use std::time::Duration;

use clap::Args;
use memchr::memmem;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::broadcast;

use super::client::{ClientBenchError, wall_micros};
use super::commit_times::CommitClock;
use super::floor_db::{Appender, Backends};
use super::floor_http;
use super::stats::{Samples, process_cpu_seconds};

/// `flightdeck bench floor`.
#[derive(Debug, Clone, Args)]
pub struct BenchFloorArgs {
    /// Connections (subscribers).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Frames per second written to every connection.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds timed.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of frames before the timed part (counted, not timed).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bytes per frame (about an SSE frame of `bench delivery`).
    #[arg(long, default_value_t = 280)]
    pub frame_bytes: usize,
    /// A name for this run in the output.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the row only, without the table's header.
    #[arg(long)]
    pub no_header: bool,
    /// A PostgreSQL to append to before each frame goes out (libpq key=value or a URL; it needs
    /// `track_commit_timestamp = on`): every frame then waits for an autocommit INSERT of its own,
    /// and commit→client is measured too. The least any server must do per event, on this
    /// machine (see `floor_db.rs`).
    #[arg(long, value_name = "CONNINFO")]
    pub database: Option<String>,
    /// A FlightDeck server to append each frame's event to, over HTTP, before the frame goes out
    /// (with `--database` naming its PostgreSQL, for the commit timestamps).
    #[arg(long, value_name = "URL", requires = "database")]
    pub ingest_url: Option<String>,
    /// POST each frame's event over HTTP to a minimal server in the writer, which INSERTs it into
    /// `--database` and then writes the frame (see `floor_http.rs`).
    #[arg(long, requires = "database", conflicts_with = "ingest_url")]
    pub minimal_http: bool,
}

/// `flightdeck bench floor-writer`: the writing half, started by `bench floor`.
#[derive(Debug, Clone, Args)]
pub struct BenchFloorWriterArgs {
    /// Connections to wait for before writing.
    #[arg(long)]
    pub subscribers: usize,
    /// Frames per second.
    #[arg(long)]
    pub rate: u32,
    /// Frames in all.
    #[arg(long)]
    pub frames: u64,
    /// Bytes per frame.
    #[arg(long)]
    pub frame_bytes: usize,
    /// Append to this PostgreSQL before each frame (`bench floor --database`).
    #[arg(long)]
    pub database: Option<String>,
    /// POST each frame's event to this FlightDeck server first (`bench floor --ingest-url`).
    #[arg(long)]
    pub ingest_url: Option<String>,
    /// Serve a minimal ingestion endpoint (`bench floor --minimal-http`); prints `ingest <addr>`.
    #[arg(long, requires = "database")]
    pub minimal_http: bool,
}

/// Frames a connection may fall behind before the writer gives up on it (counted as missing).
const QUEUE: usize = 4096;
/// How long the writer waits for all its connections.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One frame: `id: <seq>` and `data: {"t":<send time, µs>,"x":<xid or 0>,"p":"xx…"}`, padded to
/// `bytes`.
pub fn frame(seq: u64, sent_micros: i64, xid: u64, bytes: usize) -> Vec<u8> {
    let head = format!("id: {seq}\ndata: {{\"t\":{sent_micros},\"x\":{xid},\"p\":\"");
    let pad = bytes.saturating_sub(head.len() + 4);
    let mut out = Vec::with_capacity(head.len() + pad + 4);
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}\n\n");
    out
}

/// Parses a frame written by [`frame`] (without its blank line): its sequence number, send time
/// and xid.
pub fn parse_frame(frame: &[u8]) -> Option<(u64, i64, u64)> {
    let text = std::str::from_utf8(frame).ok()?;
    let (id, data) = text.strip_prefix("id: ")?.split_once("\ndata: {\"t\":")?;
    let (sent, rest) = data.split_once(",\"x\":")?;
    let xid = rest.split_once(',')?.0;
    Some((id.parse().ok()?, sent.parse().ok()?, xid.parse().ok()?))
}

/// The writer: binds a loopback port, prints `listening <addr>`, accepts the connections, writes
/// the frames, prints `sent <frames> cpu <seconds>`, and closes every connection.
pub async fn write(args: &BenchFloorWriterArgs) -> Result<(), ClientBenchError> {
    if args.rate == 0 {
        return Err(ClientBenchError::Usage("--rate must be at least 1".into()));
    }
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("listening {}", listener.local_addr()?);
    let (sender, _) = broadcast::channel::<std::sync::Arc<Vec<u8>>>(QUEUE);
    let mut connections = tokio::task::JoinSet::new();
    let accept_all = async {
        for _ in 0..args.subscribers {
            let (mut socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            let mut frames = sender.subscribe();
            connections.spawn(async move {
                // Frames already queued go out in one write, as an SSE stream writes a chunk.
                while let Ok(first) = frames.recv().await {
                    let mut out = first.to_vec();
                    while let Ok(more) = frames.try_recv() {
                        out.extend_from_slice(&more);
                    }
                    if socket.write_all(&out).await.is_err() {
                        break;
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(ACCEPT_TIMEOUT, accept_all)
        .await
        .map_err(|_| ClientBenchError::Failed("the reader did not connect in time".into()))??;
    produce(args, sender.clone()).await?;
    drop(sender);
    while connections.join_next().await.is_some() {}
    println!("sent {} cpu {:.3}", args.frames, process_cpu_seconds().unwrap_or(f64::NAN));
    Ok(())
}

/// Hands `args.frames` frames to the connections at `args.rate`: at once, after an INSERT each
/// (`--database`), after a POST to the writer's own minimal server each (`--minimal-http`, paced
/// by the reader's POSTs), or after a POST to FlightDeck each (`--ingest-url`).
async fn produce(
    args: &BenchFloorWriterArgs,
    sender: broadcast::Sender<std::sync::Arc<Vec<u8>>>,
) -> Result<(), ClientBenchError> {
    if let Some(url) = &args.ingest_url {
        return floor_http::ingest(url, sender, args.rate, args.frames, args.frame_bytes).await;
    }
    if let (true, Some(conninfo)) = (args.minimal_http, &args.database) {
        let (backends, drivers) = Backends::connect(conninfo).await?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        println!("ingest {}", listener.local_addr()?);
        floor_http::serve(listener, backends, sender, args.frames, args.frame_bytes).await?;
        drivers.closed().await;
        return Ok(());
    }
    let mut appender = match &args.database {
        Some(conninfo) => Some(Appender::connect(conninfo, sender.clone(), args.frame_bytes).await?),
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..args.frames {
        tick.tick().await;
        match &mut appender {
            Some(appender) => appender.append(seq, wall_micros()),
            // No receiver left only if every connection failed; the reader reports what is missing.
            None => drop(sender.send(std::sync::Arc::new(frame(seq, wall_micros(), 0, args.frame_bytes)))),
        }
    }
    if let Some(appender) = appender {
        appender.finish().await?;
    }
    Ok(())
}

/// What one connection received.
struct Received {
    frames: u64,
    samples: Samples,
    /// Each timed frame's xid and receipt time (µs), with `--database`.
    commits: Vec<(u64, i64)>,
}

async fn read_connection(addr: String, timed_from: u64, xids: bool) -> Result<Received, ClientBenchError> {
    let mut socket = TcpStream::connect(&addr).await.map_err(|source| ClientBenchError::Connect { addr, source })?;
    socket.set_nodelay(true)?;
    let finder = memmem::Finder::new(b"\n\n");
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut received = Received { frames: 0, samples: Samples::with_capacity(16 * 1024), commits: Vec::new() };
    loop {
        if buffer.capacity() - buffer.len() < 16 * 1024 {
            buffer.reserve(64 * 1024);
        }
        if socket.read_buf(&mut buffer).await? == 0 {
            return Ok(received);
        }
        let at = wall_micros();
        let mut start = 0;
        while let Some(end) = finder.find(&buffer[start..]) {
            let (seq, sent, xid) = parse_frame(&buffer[start..start + end])
                .ok_or_else(|| ClientBenchError::Failed("the writer sent a frame this reader cannot parse".into()))?;
            received.frames += 1;
            if seq >= timed_from {
                received.samples.push(at - sent);
                if xids {
                    received.commits.push((xid, at));
                }
            }
            start += end + 2;
        }
        buffer.drain(..start);
    }
}

/// Runs the writer as a child process and reads its frames; prints one Markdown table row.
pub async fn run(args: &BenchFloorArgs) -> Result<(), ClientBenchError> {
    let sensible = args.rate > 0
        && args.subscribers > 0
        && args.seconds > 0.0
        && args.seconds <= 3600.0
        && (0.0..=600.0).contains(&args.warmup)
        && args.frame_bytes <= 1 << 20;
    if !sensible {
        return Err(ClientBenchError::Usage(
            "--subscribers and --rate must be at least 1, --seconds above 0 and at most 3600, --warmup from 0 to \
             600, --frame-bytes at most 1048576"
                .into(),
        ));
    }
    let timed_from = (args.warmup * f64::from(args.rate)).round() as u64;
    let frames = timed_from + (args.seconds * f64::from(args.rate)).round() as u64;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["bench", "floor-writer", "--subscribers", &args.subscribers.to_string()])
        .args(["--rate", &args.rate.to_string(), "--frames", &frames.to_string()])
        .args(["--frame-bytes", &args.frame_bytes.to_string()])
        .args(args.ingest_url.iter().flat_map(|url| ["--ingest-url", url]))
        .args(args.minimal_http.then_some("--minimal-http"))
        .args(args.database.iter().filter(|_| args.ingest_url.is_none()).flat_map(|conninfo| ["--database", conninfo]))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| ClientBenchError::Failed("the writer has no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let addr = first
        .strip_prefix("listening ")
        .ok_or_else(|| ClientBenchError::Failed(format!("the writer did not start: {first:?}")))?
        .to_string();
    // Checked before the run, so a cluster without commit timestamps fails at once.
    let clock = match &args.database {
        Some(conninfo) => {
            let clock = CommitClock::connect(conninfo).await?;
            if let Some(why) = clock.unavailable().await? {
                return Err(ClientBenchError::Usage(format!("--database: {why}")));
            }
            Some(clock)
        }
        None => None,
    };
    let cpu_before = process_cpu_seconds();
    let xids = clock.is_some();
    let readers: Vec<_> =
        (0..args.subscribers).map(|_| tokio::spawn(read_connection(addr.clone(), timed_from, xids))).collect();
    if args.minimal_http {
        let line = lines.next_line().await?.unwrap_or_default();
        let ingest = line
            .strip_prefix("ingest ")
            .ok_or_else(|| ClientBenchError::Failed(format!("the writer's server did not start: {line:?}")))?;
        floor_http::publish(&format!("http://{ingest}"), args.rate, frames, floor_http::minimal_acked).await?;
    }
    let mut samples = Samples::with_capacity((args.subscribers * (frames - timed_from) as usize).min(1 << 24));
    let mut received = 0;
    let mut commits = Vec::new();
    let limit = Duration::from_secs_f64(args.warmup + args.seconds + 60.0);
    for reader in readers {
        let one = tokio::time::timeout(limit, reader)
            .await
            .map_err(|_| ClientBenchError::Failed("a reader did not finish in time".into()))?
            .map_err(|e| ClientBenchError::Failed(format!("a reader failed: {e}")))??;
        received += one.frames;
        samples.merge(one.samples);
        commits.extend(one.commits);
    }
    let reader_cpu = process_cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
    let last = lines.next_line().await?.unwrap_or_default();
    let writer_cpu = last.split_once(" cpu ").and_then(|(_, cpu)| cpu.parse::<f64>().ok());
    if !last.starts_with(&format!("sent {frames} ")) {
        return Err(ClientBenchError::Failed(format!("the writer did not finish: {last:?}")));
    }
    child.wait().await?;
    let expected = frames * args.subscribers as u64;
    let span = args.warmup + args.seconds;
    let cores = |cpu: Option<f64>| cpu.map_or("?".into(), |c| format!("{:.2}", c / span));
    let [p50, p90, p99, max] = samples.summary_ms();
    let commit = match &clock {
        Some(clock) => commit_to_client(clock, &commits).await?,
        None => "–".into(),
    };
    if !args.no_header {
        println!("{HEADER}");
    }
    println!(
        "| {} | {} | {} | {} | {} | {p50} / {p90} / {p99} / {max} | {commit} | {} | {} |",
        args.label.as_deref().unwrap_or("floor"),
        args.subscribers,
        args.rate,
        received,
        expected - received.min(expected),
        cores(writer_cpu),
        cores(reader_cpu),
    );
    Ok(())
}

/// Commit→client p50 / p90 / p99 / max (ms) of `commits` (xid, receipt time), from the commit
/// timestamps of their transactions.
async fn commit_to_client(clock: &CommitClock, commits: &[(u64, i64)]) -> Result<String, ClientBenchError> {
    let mut xids: Vec<u64> = commits.iter().map(|&(xid, _)| xid).collect();
    xids.sort_unstable();
    xids.dedup();
    let times = clock.commit_times(&xids).await?;
    let mut samples = Samples::with_capacity(commits.len());
    for (xid, at) in commits {
        let committed = times.get(xid).ok_or_else(|| {
            ClientBenchError::Failed(format!("transaction {xid} has no commit timestamp (was the cluster restarted?)"))
        })?;
        samples.push(at - committed);
    }
    let [p50, p90, p99, max] = samples.summary_ms();
    Ok(format!("{p50} / {p90} / {p99} / {max}"))
}

/// The header of [`run`]'s row.
pub const HEADER: &str = "| run | connections | frames/s each | frames received | missing | send→client p50 / p90 / p99 / max ms | commit→client p50 / p90 / p99 / max ms | writer cores | reader cores |\n|---|---:|---:|---:|---:|---|---|---:|---:|";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_has_the_asked_size_and_parses_back() {
        for bytes in [0, 40, 280, 4096] {
            let f = frame(123_456, 1_764_000_000_123_456, 987_654, bytes);
            if bytes >= 60 {
                assert_eq!(f.len(), bytes);
            }
            assert!(f.ends_with(b"\"}\n\n"));
            assert_eq!(parse_frame(&f[..f.len() - 2]), Some((123_456, 1_764_000_000_123_456, 987_654)));
        }
        assert_eq!(parse_frame(b"data: {}"), None);
        assert_eq!(parse_frame(b"id: x\ndata: {\"t\":1,\"x\":0,\"p\":\"\"}"), None);
        assert_eq!(parse_frame(b"id: 1\ndata: {\"t\":1,\"p\":\"\"}"), None);
    }
}
