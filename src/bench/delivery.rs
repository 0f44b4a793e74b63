//! `flightdeck bench delivery`: real-time delivery measured from outside the server, over real
//! sockets, against a running `flightdeck serve`.
//!
//! For each case (subscribers × events per second) the client opens that many Server-Sent Events
//! streams (`GET /api/events`), waits until every one has received its first frame (`retry:`),
//! then a paced publisher POSTs events at the rate, one per request, from a few keep-alive
//! connections. Each event's data carries its sequence number and the client's send time.
//! Every subscriber checks that it sees each event exactly once and records, per event:
//!
//! * **stored → client**: the time the frame was read minus the event's stored `timestamp`
//!   (PostgreSQL's `clock_timestamp()` at the INSERT, the same machine's clock). The INSERT
//!   happens before the commit, so this is an upper bound of commit-to-client latency.
//! * **ack → client**: the time the frame was read minus the time the publisher received the
//!   `201`, which the server sends after the commit: a lower bound of commit-to-client latency
//!   (negative when the event reached the subscriber before the publisher had its answer).
//! * **send → client**: the time the frame was read minus when the publisher sent the POST.
//! * **commit → client** (with `--commit-times-url`): the time the frame was read minus the commit
//!   time of the transaction in the frame's `id:` (the event's position), looked up in PostgreSQL
//!   after the case (`super::commit_times`).
//!
//! Events sent during the warm-up are checked but not timed. Delivered events/s is every frame
//! received by every subscriber over the time from the first POST to the last frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::args::BenchDeliveryArgs;

use super::client::{ClientBenchError, Connection, SseStream, Target, wall_micros};
use super::commit_times::{CommitClock, Receipts, WalFlushes, distinct_xids, join};
use super::event_frame::{read_event, xid_of_position};
use super::metrics::Scrape;
use super::report::{CommitMeasure, DeliveryReport, PublishResult, SubscriberResult, print_delivery};
use super::stats::{CpuMeter, Samples, Seen};

/// How long every subscriber may take to connect, in total.
const OPEN_TIMEOUT: Duration = Duration::from_secs(180);

/// One case: this many subscribers while events are published at this rate.
#[derive(Debug, Clone, Copy)]
pub(super) struct Case {
    pub(super) subscribers: usize,
    pub(super) rate: u32,
}

/// The run's cases and timings, checked.
#[derive(Debug)]
struct Plan {
    cases: Vec<Case>,
    seconds: f64,
    warmup: f64,
    publishers: usize,
    drain: Duration,
    open_concurrency: usize,
}

impl Plan {
    fn new(args: &BenchDeliveryArgs) -> Result<Self, ClientBenchError> {
        let usage = |m: String| Err(ClientBenchError::Usage(m));
        if args.subscribers.len() != args.rate.len() {
            return usage(
                "give as many --rate values as --subscribers values (they pair up: case i is \
                 subscribers[i] × rate[i])"
                    .into(),
            );
        }
        if args.subscribers.iter().any(|&s| s == 0 || s > 100_000) || args.rate.iter().any(|&r| r == 0 || r > 100_000) {
            return usage("--subscribers and --rate take numbers from 1 to 100000".into());
        }
        let seconds_ok = |s: f64, min: f64| s.is_finite() && (min..=3600.0).contains(&s);
        if !seconds_ok(args.seconds, 0.5) || !seconds_ok(args.warmup, 0.0) || !seconds_ok(args.drain, 0.1) {
            return usage("--seconds (≥ 0.5), --warmup (≥ 0) and --drain (≥ 0.1) must be at most 3600".into());
        }
        if args.publishers == 0 || args.publishers > 1024 || args.open_concurrency == 0 {
            return usage("--publishers takes 1 to 1024 and --open-concurrency at least 1".into());
        }
        let cases = args.subscribers.iter().zip(&args.rate).map(|(&subscribers, &rate)| Case { subscribers, rate });
        Ok(Plan {
            cases: cases.collect(),
            seconds: args.seconds,
            warmup: args.warmup,
            publishers: args.publishers,
            drain: Duration::from_secs_f64(args.drain),
            open_concurrency: args.open_concurrency,
        })
    }
}

/// What a case's subscribers and publishers share.
#[derive(Debug)]
struct Shared {
    /// Stream names of this case's events start with it.
    prefix: String,
    /// Events the case publishes (sequence numbers `0..total`).
    total: u64,
    /// The first sequence number after the warm-up: later ones are timed.
    measured_from: u64,
    ready: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
    stop: CancellationToken,
    opening: Semaphore,
    /// Wall-clock µs at which each event's `201` arrived, by sequence number (0: not yet).
    acked: Vec<AtomicI64>,
}

/// Runs every case against the server at `--url` and prints the results as Markdown.
pub async fn run(args: &BenchDeliveryArgs) -> Result<(), ClientBenchError> {
    let plan = Plan::new(args)?;
    let target = Arc::new(Target::resolve(&args.url).await?.with_token(args.token.as_deref()));
    // Connect first: a wrong connection string should fail before the run, not after it.
    let clock = match &args.commit_times_url {
        Some(url) => Some(CommitClock::connect(url).await?),
        None => None,
    };
    let mut reports = Vec::new();
    for &case in &plan.cases {
        eprintln!(
            "bench: {} subscribers × {} events/s for {} s (+{} s warm-up)",
            case.subscribers, case.rate, plan.seconds, plan.warmup
        );
        let mut report = run_case(&target, &plan, case, clock.as_ref()).await?;
        eprintln!("bench: {}", report.one_line());
        reports.push(report);
        // Let the server notice the closed streams before the next case.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    print_delivery(&args.url, plan.seconds, plan.warmup, &mut reports);
    Ok(())
}

async fn run_case(
    target: &Arc<Target>,
    plan: &Plan,
    case: Case,
    clock: Option<&CommitClock>,
) -> Result<DeliveryReport, ClientBenchError> {
    let total = (f64::from(case.rate) * (plan.warmup + plan.seconds)).round() as u64;
    let shared = Arc::new(Shared {
        prefix: format!("bench-delivery-{}-", &uuid::Uuid::now_v7().simple().to_string()[20..]),
        total,
        measured_from: (f64::from(case.rate) * plan.warmup).round() as u64,
        ready: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        stop: CancellationToken::new(),
        opening: Semaphore::new(plan.open_concurrency),
        acked: (0..total).map(|_| AtomicI64::new(0)).collect(),
    });
    let opened = Instant::now();
    let subscribers: Vec<JoinHandle<Result<SubscriberResult, ClientBenchError>>> =
        (0..case.subscribers).map(|_| tokio::spawn(subscriber(target.clone(), shared.clone()))).collect();
    let result = async {
        wait_until_open(&shared, case.subscribers).await?;
        let open_secs = opened.elapsed().as_secs_f64();
        eprintln!("bench: {} streams open in {open_secs:.1} s; publishing", case.subscribers);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = Scrape::fetch(target).await;
        let wal_before = wal_flushes(clock).await;
        let meter = CpuMeter::start();
        let published = publish(target, &shared, plan.publishers, case.rate).await?;
        let drain_until = Instant::now() + plan.drain;
        while shared.done.load(Ordering::Relaxed) < case.subscribers && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cores = meter.cores();
        let lag = match (before, Scrape::fetch(target).await) {
            (Some(before), Some(after)) => Some(after.lag_since(&before)),
            _ => None,
        };
        let wal = match (wal_before, wal_flushes(clock).await) {
            (Some(before), Some(after)) => Some(after.since(&before)),
            _ => None,
        };
        Ok::<_, ClientBenchError>((open_secs, published, cores, lag, wal))
    }
    .await;
    shared.stop.cancel();
    let mut results = Vec::with_capacity(case.subscribers);
    let mut first_error = None;
    for handle in subscribers {
        match handle.await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error = first_error.or(Some(ClientBenchError::Failed(format!("a subscriber stopped: {e}"))))
            }
        }
    }
    let (open_secs, published, client_cores, lag, wal) = result?;
    if let Some(err) = first_error {
        return Err(err);
    }
    let mut published = published;
    published.acked = shared.acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let measured_from = usize::try_from(shared.measured_from).unwrap_or(usize::MAX);
    // After the timed part (and the CPU meter), so the lookup costs the measurement nothing.
    let commit = match clock {
        Some(clock) => commit_latency(clock, &results, measured_from).await,
        None => CommitMeasure::NotAsked,
    };
    let mut report = DeliveryReport::new(measured_from, case, open_secs, published, results, client_cores);
    report.server_lag = lag;
    report.commit = commit;
    report.wal = wal;
    Ok(report)
}

/// PostgreSQL's WAL flushes so far, when `--commit-times-url` gave a connection; a failure is
/// said on stderr and leaves the figure out.
async fn wal_flushes(clock: Option<&CommitClock>) -> Option<WalFlushes> {
    match clock?.wal_flushes().await {
        Ok(flushes) => Some(flushes),
        Err(e) => {
            eprintln!("bench: WAL flushes are not counted: {e}");
            None
        }
    }
}

/// Looks up the commit time of every transaction the subscribers received (timed events only) and
/// joins them with the receipt times. A failure is reported, not fatal: the other columns stand.
async fn commit_latency(clock: &CommitClock, results: &[SubscriberResult], from: usize) -> CommitMeasure {
    let receipts = || results.iter().map(|r| Receipts { received: &r.received, xids: &r.xids });
    let measured = async {
        if let Some(why) = clock.unavailable().await? {
            return Ok(CommitMeasure::NotMeasured(why));
        }
        let xids = distinct_xids(receipts(), from);
        let times = clock.commit_times(&xids).await?;
        Ok::<_, ClientBenchError>(CommitMeasure::Measured(join(receipts(), from, &times, xids.len())))
    };
    let measure = measured.await.unwrap_or_else(|e| CommitMeasure::NotMeasured(e.to_string()));
    if let CommitMeasure::NotMeasured(why) = &measure {
        eprintln!("bench: commit→client is not measured: {why}");
    }
    measure
}

/// Waits until every subscriber has its stream open, or fails.
async fn wait_until_open(shared: &Shared, subscribers: usize) -> Result<(), ClientBenchError> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut last_report = Instant::now();
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        if ready == subscribers {
            return Ok(());
        }
        if shared.failed.load(Ordering::Relaxed) > 0 {
            return Err(ClientBenchError::Failed(format!("only {ready} of {subscribers} subscribers could connect")));
        }
        if Instant::now() > deadline {
            return Err(ClientBenchError::Failed(format!(
                "only {ready} of {subscribers} subscribers were open after {} s",
                OPEN_TIMEOUT.as_secs()
            )));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("bench: {ready} of {subscribers} streams open");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One SSE subscriber: open, announce readiness at the first frame, then check and time events
/// until it has them all or is told to stop.
async fn subscriber(target: Arc<Target>, shared: Arc<Shared>) -> Result<SubscriberResult, ClientBenchError> {
    let opened = async {
        let _permit = shared.opening.acquire().await.map_err(|e| ClientBenchError::Failed(e.to_string()))?;
        SseStream::open(&target, &target.path("/api/events")).await
    }
    .await;
    let mut sse = opened.inspect_err(|_| {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    })?;
    let total = usize::try_from(shared.total).unwrap_or(0);
    let measured = usize::try_from(shared.total - shared.measured_from).unwrap_or(0);
    let mut out = SubscriberResult::new(total, measured);
    let mut seen = Seen::new(shared.total);
    let mut ready = false;
    loop {
        let mut first_frame = false;
        let read = sse.read_frames(|frame, now| {
            first_frame = true;
            // The `subscribed` frame that opens the stream is not an event.
            let (Some(data), None) = (frame.data, frame.event) else { return };
            match read_event(&data, &shared.prefix) {
                Some(event) => {
                    out.frames += 1;
                    out.last_received = now;
                    let seq = event.seq;
                    if seen.record(seq) {
                        // `record` accepted it, so it is below `total`.
                        out.received[seq as usize] = now;
                        out.xids[seq as usize] = frame.id.and_then(xid_of_position).unwrap_or(0);
                        if seq >= shared.measured_from {
                            out.stored.push(now - event.stored_micros);
                            out.send.push(now - event.sent_at_micros);
                        }
                    }
                }
                None => out.other += 1,
            }
        });
        let more = tokio::select! {
            more = read => more,
            () = shared.stop.cancelled() => break,
        };
        let more = more.inspect_err(|_| {
            if !ready {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        if first_frame && !ready {
            ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        if seen.complete() {
            shared.done.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if !more {
            out.closed_early = true;
            if !ready {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
    }
    out.finish(&seen);
    Ok(out)
}

/// Publishes `shared.total` events at `rate` per second from `publishers` connections.
async fn publish(
    target: &Arc<Target>,
    shared: &Arc<Shared>,
    publishers: usize,
    rate: u32,
) -> Result<PublishResult, ClientBenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        connections.push(Connection::open(target).await?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let first_sent = wall_micros() + 20_000;
    let period_nanos = 1_000_000_000 / u64::from(rate);
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let (target, shared, next) = (target.clone(), shared.clone(), next.clone());
            tokio::spawn(async move {
                let stream = format!("{}{i}", shared.prefix);
                publisher(&target, conn, &shared, &stream, &next, start, period_nanos).await
            })
        })
        .collect();
    let mut total = PublishResult { first_sent, ..PublishResult::default() };
    for task in tasks {
        let one = task.await.map_err(|e| ClientBenchError::Failed(format!("a publisher stopped: {e}")))?;
        total.merge(one?);
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}

async fn publisher(
    target: &Target,
    mut conn: Connection,
    shared: &Shared,
    stream: &str,
    next: &AtomicU64,
    start: tokio::time::Instant,
    period_nanos: u64,
) -> Result<PublishResult, ClientBenchError> {
    let path = target.path("/api/events");
    let mut out = PublishResult { ack: Samples::with_capacity(1024), ..PublishResult::default() };
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= shared.total {
            return Ok(out);
        }
        let due = start + Duration::from_nanos(seq.saturating_mul(period_nanos));
        tokio::time::sleep_until(due).await;
        out.max_behind = out.max_behind.max(tokio::time::Instant::now().saturating_duration_since(due));
        let body = format!(
            r#"{{"stream":"{stream}","type":"BenchDelivery","data":{{"seq":{seq},"sentAtMicros":{}}}}}"#,
            wall_micros()
        );
        let sent = Instant::now();
        let (status, answer) = conn.post_json(&path, body.as_bytes()).await?;
        if status != 201 {
            let body = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
            return Err(ClientBenchError::Status { what: format!("POST {path}"), status, body });
        }
        if let Some(acked) = shared.acked.get(usize::try_from(seq).unwrap_or(usize::MAX)) {
            acked.store(wall_micros(), Ordering::Relaxed);
        }
        out.ack.push(i64::try_from(sent.elapsed().as_micros()).unwrap_or(i64::MAX));
        out.published += 1;
        if conn.closing() {
            conn = Connection::open(target).await?;
        }
    }
}
