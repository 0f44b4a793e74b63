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

use std::time::Duration;

use clap::Args;
use memchr::memmem;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::broadcast;

use super::client::{ClientBenchError, wall_micros};
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
}

/// Frames a connection may fall behind before the writer gives up on it (counted as missing).
const QUEUE: usize = 4096;
/// How long the writer waits for all its connections.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// One frame: `id: <seq>` and `data: {"t":<send time, µs>,"p":"xx…"}`, padded to `bytes`.
pub fn frame(seq: u64, sent_micros: i64, bytes: usize) -> Vec<u8> {
    let head = format!("id: {seq}\ndata: {{\"t\":{sent_micros},\"p\":\"");
    let pad = bytes.saturating_sub(head.len() + 4);
    let mut out = Vec::with_capacity(head.len() + pad + 4);
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}\n\n");
    out
}

/// Parses a frame written by [`frame`] (without its blank line): its sequence number and send time.
pub fn parse_frame(frame: &[u8]) -> Option<(u64, i64)> {
    let text = std::str::from_utf8(frame).ok()?;
    let (id, data) = text.strip_prefix("id: ")?.split_once("\ndata: {\"t\":")?;
    let sent = data.split_once(',')?.0;
    Some((id.parse().ok()?, sent.parse().ok()?))
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
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..args.frames {
        tick.tick().await;
        // No receiver left only if every connection failed; the reader reports what is missing.
        let _ = sender.send(std::sync::Arc::new(frame(seq, wall_micros(), args.frame_bytes)));
    }
    drop(sender);
    while connections.join_next().await.is_some() {}
    println!("sent {} cpu {:.3}", args.frames, process_cpu_seconds().unwrap_or(f64::NAN));
    Ok(())
}

/// What one connection received.
struct Received {
    frames: u64,
    samples: Samples,
}

async fn read_connection(addr: String, timed_from: u64) -> Result<Received, ClientBenchError> {
    let mut socket = TcpStream::connect(&addr).await.map_err(|source| ClientBenchError::Connect { addr, source })?;
    socket.set_nodelay(true)?;
    let finder = memmem::Finder::new(b"\n\n");
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut received = Received { frames: 0, samples: Samples::with_capacity(16 * 1024) };
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
            let (seq, sent) = parse_frame(&buffer[start..start + end])
                .ok_or_else(|| ClientBenchError::Failed("the writer sent a frame this reader cannot parse".into()))?;
            received.frames += 1;
            if seq >= timed_from {
                received.samples.push(at - sent);
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
    let cpu_before = process_cpu_seconds();
    let readers: Vec<_> =
        (0..args.subscribers).map(|_| tokio::spawn(read_connection(addr.clone(), timed_from))).collect();
    let mut samples = Samples::with_capacity((args.subscribers * (frames - timed_from) as usize).min(1 << 24));
    let mut received = 0;
    let limit = Duration::from_secs_f64(args.warmup + args.seconds + 60.0);
    for reader in readers {
        let one = tokio::time::timeout(limit, reader)
            .await
            .map_err(|_| ClientBenchError::Failed("a reader did not finish in time".into()))?
            .map_err(|e| ClientBenchError::Failed(format!("a reader failed: {e}")))??;
        received += one.frames;
        samples.merge(one.samples);
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
    if !args.no_header {
        println!("{HEADER}");
    }
    println!(
        "| {} | {} | {} | {} | {} | {p50} / {p90} / {p99} / {max} | {} | {} |",
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

/// The header of [`run`]'s row.
pub const HEADER: &str = "| run | connections | frames/s each | frames received | missing | send→client p50 / p90 / p99 / max ms | writer cores | reader cores |\n|---|---:|---:|---:|---:|---|---:|---:|";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_has_the_asked_size_and_parses_back() {
        for bytes in [0, 40, 280, 4096] {
            let f = frame(123_456, 1_764_000_000_123_456, bytes);
            if bytes >= 60 {
                assert_eq!(f.len(), bytes);
            }
            assert!(f.ends_with(b"\"}\n\n"));
            assert_eq!(parse_frame(&f[..f.len() - 2]), Some((123_456, 1_764_000_000_123_456)));
        }
        assert_eq!(parse_frame(b"data: {}"), None);
        assert_eq!(parse_frame(b"id: x\ndata: {\"t\":1,\"p\":\"\"}"), None);
    }
}
