//! `flightdeck bench ingest`: ingestion throughput over HTTP, measured from outside the server.
//!
//! `--clients` concurrent clients, each on its own keep-alive connection and its own stream, POST
//! one event per request to `/api/events` in a loop. After an unmeasured warm-up, every `201` whose
//! answer arrives inside the timed window counts. Optional SSE subscribers (`--subscribers`) read
//! the events live, so that delivery does real work, and report whether they got every one.
//!
//! Comparing delivery on, off, and the seed's design takes three server runs (`serve`,
//! `serve --no-delivery`, `serve --append-mode seed`); `scripts/bench-delivery.sh` does that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::args::BenchIngestArgs;

use super::client::{ClientBenchError, Connection, SseStream, Target};
use super::metrics::{LagHistogram, Scrape};
use super::stats::{CpuMeter, Samples};

/// A client gives up after this many failed requests.
const MAX_ERRORS: u64 = 100;

/// One client's tally.
#[derive(Debug, Default)]
struct Tally {
    /// Events acknowledged inside the timed window.
    events: u64,
    /// Events acknowledged at any time (what subscribers should receive).
    appended: u64,
    /// Failed requests (non-201 answers and broken connections).
    errors: u64,
    last_error: Option<String>,
    latency: Samples,
}

/// Runs the ingestion benchmark against the server at `--url` and prints the result.
pub async fn run(args: &BenchIngestArgs) -> Result<(), ClientBenchError> {
    if args.clients == 0 || args.clients > 10_000 || args.subscribers > 10_000 {
        return Err(ClientBenchError::Usage("--clients takes 1 to 10000, --subscribers 0 to 10000".into()));
    }
    let seconds_ok = |s: f64, min: f64| s.is_finite() && (min..=3600.0).contains(&s);
    if !seconds_ok(args.seconds, 0.2) || !seconds_ok(args.warmup, 0.0) {
        return Err(ClientBenchError::Usage("--seconds (≥ 0.2) and --warmup (≥ 0) must be at most 3600".into()));
    }
    let target = Arc::new(Target::resolve(&args.url).await?.with_token(args.token.as_deref()));
    let path = target.path("/api/events");
    let prefix = format!("bench-ingest-{}-", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut probe = Connection::open(&target).await?;
    let (status, body) = probe.post_json(&path, event(&format!("probe-{prefix}"), 0).as_bytes()).await?;
    if status != 201 {
        let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(ClientBenchError::Status { what: format!("POST {path}"), status, body });
    }
    drop(probe);

    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        let mut sse = SseStream::open(&target, &path).await?;
        let (stop, received, prefix) = (stop.clone(), received.clone(), prefix.clone());
        subscribers.push(tokio::spawn(async move {
            let needle = format!("\"stream\":\"{prefix}");
            let needle = memchr::memmem::Finder::new(needle.as_bytes());
            loop {
                let read = sse.read_frames(|frame, _| {
                    if frame.data.is_some_and(|d| needle.find(&d).is_some()) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                });
                tokio::select! {
                    more = read => if !matches!(more, Ok(true)) { return false },
                    () = stop.cancelled() => return true,
                }
            }
        }));
    }

    let before = Scrape::fetch(&target).await;
    let meter = CpuMeter::start();
    let start = Instant::now();
    let (from, until) =
        (start + Duration::from_secs_f64(args.warmup), start + Duration::from_secs_f64(args.warmup + args.seconds));
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let (target, stream) = (target.clone(), format!("{prefix}{i}"));
            tokio::spawn(async move { client(&target, &stream, from, until).await })
        })
        .collect();
    let mut total = Tally::default();
    for task in clients {
        let tally = task.await.map_err(|e| ClientBenchError::Failed(format!("a client stopped: {e}")))??;
        total.events += tally.events;
        total.appended += tally.appended;
        total.errors += tally.errors;
        total.last_error = total.last_error.or(tally.last_error);
        total.latency.merge(tally.latency);
    }

    let client_cores = meter.cores();
    // The server's delivery work per event: reads of the log and NOTIFY wake-ups.
    let work = match (before, Scrape::fetch(&target).await) {
        (Some(before), Some(after)) => Some(after.lag_since(&before)).filter(|lag| lag.count > 0.0),
        _ => None,
    };
    let per_event = |f: fn(&LagHistogram) -> f64| work.as_ref().map(|w| (f(w) / w.count * 100.0).round() / 100.0);
    let (reads, wakeups) = (per_event(|w| w.reads), per_event(|w| w.notifications));
    let mut delivered = String::new();
    if !subscribers.is_empty() {
        let expected = total.appended * args.subscribers as u64;
        let drain_until = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let mut closed = 0;
        for task in subscribers {
            closed += usize::from(!task.await.unwrap_or(false));
        }
        let got = received.load(Ordering::Relaxed);
        delivered = format!(
            "{got} of {expected}{}",
            if closed > 0 { format!(", {closed} closed early") } else { String::new() }
        );
        eprintln!("bench: subscribers received {delivered} events");
    }

    let per_second = total.events as f64 / args.seconds;
    let [p50, _, p99, _] = total.latency.summary_ms();
    let label = args.label.as_deref().unwrap_or("server");
    if let (Some(reads), Some(wakeups)) = (reads, wakeups) {
        eprintln!("bench: server delivery work per event: {reads} log reads, {wakeups} NOTIFY wake-ups");
    }
    if let Some(err) = &total.last_error {
        eprintln!("bench: {} failed requests; last: {err}", total.errors);
    }
    if args.json {
        let line = serde_json::json!({
            "label": label, "clients": args.clients, "seconds": args.seconds, "events": total.events,
            "eventsPerSecond": per_second.round(), "p50Ms": p50, "p99Ms": p99, "errors": total.errors,
            "subscribers": args.subscribers, "delivered": delivered, "clientCores": client_cores.map(|c| (c * 100.0).round() / 100.0),
            "logReadsPerEvent": reads, "notifyWakeupsPerEvent": wakeups,
        });
        println!("{line}");
    } else {
        let cores = client_cores.map_or("–".into(), |c| format!("{c:.2}"));
        println!(
            "| server | clients | SSE subscribers | events/s | POST p50 / p99 ms | errors | delivered | client cores |"
        );
        println!("|---|---:|---:|---:|---|---:|---|---:|");
        println!(
            "| {label} | {} | {} | {per_second:.0} | {p50} / {p99} | {} | {} | {cores} |",
            args.clients,
            args.subscribers,
            total.errors,
            if delivered.is_empty() { "–" } else { &delivered }
        );
    }
    Ok(())
}

/// The body of one event to `stream`.
fn event(stream: &str, n: u64) -> String {
    format!(r#"{{"stream":"{stream}","type":"BenchIngest","data":{{"page":"/home","n":{n}}}}}"#)
}

/// One client: POST events to `stream` until `until`, counting those answered in `from..until`.
async fn client(target: &Target, stream: &str, from: Instant, until: Instant) -> Result<Tally, ClientBenchError> {
    let path = target.path("/api/events");
    let mut tally = Tally { latency: Samples::with_capacity(4096), ..Tally::default() };
    let mut conn = Some(Connection::open(target).await?);
    let mut n = 0;
    while Instant::now() < until {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(Connection::open(target).await?),
        };
        n += 1;
        let sent = Instant::now();
        let answer = c.post_json(&path, event(stream, n).as_bytes()).await;
        let done = Instant::now();
        match answer {
            Ok((201, _)) => {
                tally.appended += 1;
                if done >= from && done <= until {
                    tally.events += 1;
                    tally.latency.push(i64::try_from((done - sent).as_micros()).unwrap_or(i64::MAX));
                }
                if c.closing() {
                    conn = None;
                }
            }
            Ok((status, body)) => {
                tally.errors += 1;
                tally.last_error = Some(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(err) => {
                tally.errors += 1;
                tally.last_error = Some(err.to_string());
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if tally.errors > MAX_ERRORS {
            return Err(ClientBenchError::Failed(format!(
                "a client had more than {MAX_ERRORS} failed requests; last: {}",
                tally.last_error.unwrap_or_default()
            )));
        }
    }
    Ok(tally)
}
