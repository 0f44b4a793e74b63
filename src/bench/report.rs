//! What `bench delivery` collects per subscriber and publisher, and the Markdown it prints.

use std::time::Duration;

use super::commit_times::{CommitLatency, WalFlushes};
use super::delivery::Case;
use super::metrics::LagHistogram;
use super::stats::{Samples, Seen, format_ms};

/// The delivery target: at 100 subscribers × 1,000 events/s, commit-to-client p50 and p99 at most
/// these many milliseconds.
pub(super) const TARGET: (usize, u32, f64, f64) = (100, 1000, 2.0, 10.0);

/// Commit → client for one case: measured, not asked for, or not measurable (and why).
#[derive(Debug, Default)]
pub(super) enum CommitMeasure {
    /// No `--commit-times-url`.
    #[default]
    NotAsked,
    /// Asked for, but not possible: the reason.
    NotMeasured(String),
    /// The samples.
    Measured(CommitLatency),
}

impl CommitMeasure {
    fn samples(&mut self) -> Option<&mut Samples> {
        match self {
            CommitMeasure::Measured(m) if !m.samples.is_empty() => Some(&mut m.samples),
            _ => None,
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub(super) struct SubscriberResult {
    /// Frames carrying this case's events, duplicates included.
    pub(super) frames: u64,
    /// Frames of other events (not published by this case).
    pub(super) other: u64,
    /// Wall-clock µs of the last frame of this case.
    pub(super) last_received: i64,
    /// Wall-clock µs at which each event (by sequence number) first arrived; 0 if it did not.
    pub(super) received: Vec<i64>,
    /// The xid8 from each event's position (its `id:`), by sequence number; 0 if none.
    pub(super) xids: Vec<u64>,
    /// Stored → client latencies (µs) of timed events.
    pub(super) stored: Samples,
    /// Send → client latencies (µs) of timed events.
    pub(super) send: Samples,
    /// The server ended the stream before all events arrived.
    pub(super) closed_early: bool,
    missing: u64,
    duplicates: u64,
    unexpected: u64,
}

impl SubscriberResult {
    /// Empty, for `total` events of which `measured` are timed.
    pub(super) fn new(total: usize, measured: usize) -> Self {
        SubscriberResult {
            received: vec![0; total],
            xids: vec![0; total],
            stored: Samples::with_capacity(measured),
            send: Samples::with_capacity(measured),
            ..SubscriberResult::default()
        }
    }

    /// Takes the exactly-once counts from `seen`.
    pub(super) fn finish(&mut self, seen: &Seen) {
        self.missing = seen.missing();
        self.duplicates = seen.duplicates();
        self.unexpected = seen.unexpected();
    }
}

/// What the publishers did.
#[derive(Debug, Default)]
pub(super) struct PublishResult {
    /// Events acknowledged with 201.
    pub(super) published: u64,
    /// POST round trips (µs).
    pub(super) ack: Samples,
    /// How late the latest send was against its schedule.
    pub(super) max_behind: Duration,
    /// Wall-clock µs of the first scheduled send.
    pub(super) first_sent: i64,
    /// Wall-clock µs at which the publisher had each event's `201` (0 if never).
    pub(super) acked: Vec<i64>,
    /// Time from the first scheduled send to the last acknowledgement.
    pub(super) seconds: f64,
}

impl PublishResult {
    /// Adds one publisher's counts.
    pub(super) fn merge(&mut self, other: PublishResult) {
        self.published += other.published;
        self.ack.merge(other.ack);
        self.max_behind = self.max_behind.max(other.max_behind);
    }
}

/// One case's results.
#[derive(Debug)]
pub(super) struct DeliveryReport {
    case: Case,
    open_secs: f64,
    publish: PublishResult,
    frames: u64,
    other: u64,
    missing: u64,
    duplicates: u64,
    unexpected: u64,
    closed_early: usize,
    delivered_per_sec: f64,
    stored: Samples,
    send: Samples,
    /// Acknowledged (201 received) → client, a lower bound of commit → client.
    ack: Samples,
    /// Cores the client used on average while publishing and draining.
    client_cores: Option<f64>,
    /// The server's stored → broadcast histogram over the case, if it has `/metrics`.
    pub(super) server_lag: Option<LagHistogram>,
    /// Commit → client, from PostgreSQL's commit timestamps.
    pub(super) commit: CommitMeasure,
    /// PostgreSQL's WAL flushes while publishing and draining (with `--commit-times-url`).
    pub(super) wal: Option<WalFlushes>,
}

impl DeliveryReport {
    /// Sums up the subscribers' results; `measured_from` is the first timed sequence number.
    pub(super) fn new(
        measured_from: usize,
        case: Case,
        open_secs: f64,
        publish: PublishResult,
        results: Vec<SubscriberResult>,
        client_cores: Option<f64>,
    ) -> Self {
        let mut report = DeliveryReport {
            case,
            open_secs,
            frames: 0,
            other: 0,
            missing: 0,
            duplicates: 0,
            unexpected: 0,
            closed_early: 0,
            delivered_per_sec: 0.0,
            stored: Samples::default(),
            send: Samples::default(),
            ack: Samples::default(),
            publish,
            client_cores,
            server_lag: None,
            commit: CommitMeasure::NotAsked,
            wal: None,
        };
        let mut last = report.publish.first_sent;
        for r in results {
            report.frames += r.frames;
            report.other += r.other;
            report.missing += r.missing;
            report.duplicates += r.duplicates;
            report.unexpected += r.unexpected;
            report.closed_early += usize::from(r.closed_early);
            last = last.max(r.last_received);
            let pairs = r.received.iter().zip(&report.publish.acked).skip(measured_from);
            for (&received, &acked) in pairs.filter(|&(&r, &a)| r > 0 && a > 0) {
                report.ack.push(received - acked);
            }
            report.stored.merge(r.stored);
            report.send.merge(r.send);
        }
        let span = (last - report.publish.first_sent) as f64 / 1e6;
        report.delivered_per_sec = if span > 0.0 { report.frames as f64 / span } else { 0.0 };
        report
    }

    /// A progress line for stderr.
    pub(super) fn one_line(&mut self) -> String {
        let [p50, _, p99, _] = self.stored.summary_ms();
        let commit = match self.commit.samples() {
            Some(samples) => {
                let [c50, _, c99, _] = samples.summary_ms();
                format!("commit→client p50 {c50} ms p99 {c99} ms, ")
            }
            None => String::new(),
        };
        format!(
            "{} × {}/s: streams open in {:.1} s, {} events, {:.0} delivered/s, {commit}stored→client p50 {p50} ms \
             p99 {p99} ms, missing {}, duplicates {}",
            self.case.subscribers,
            self.case.rate,
            self.open_secs,
            self.publish.published,
            self.delivered_per_sec,
            self.missing,
            self.duplicates
        )
    }

    fn publish_rate(&self) -> f64 {
        if self.publish.seconds > 0.0 { self.publish.published as f64 / self.publish.seconds } else { 0.0 }
    }
}

impl CommitMeasure {
    /// A sentence about the measurement for under the table, if there is something to say.
    fn describe(&self) -> Option<String> {
        match self {
            CommitMeasure::NotAsked => None,
            CommitMeasure::NotMeasured(why) => Some(format!("commit→client is not measured: {why}.")),
            CommitMeasure::Measured(m) => {
                let mut line = format!(
                    "commit→client from the commit timestamps of {} transactions ({} samples)",
                    m.transactions,
                    m.samples.len()
                );
                if m.unknown_transactions > 0 || m.left_out > 0 {
                    line.push_str(&format!(
                        "; {} transactions had no commit timestamp and {} received events were left out",
                        m.unknown_transactions, m.left_out
                    ));
                }
                line.push('.');
                Some(line)
            }
        }
    }
}

/// Prints the cases as Markdown, with the target's verdict.
pub(super) fn print_delivery(url: &str, seconds: f64, warmup: f64, reports: &mut [DeliveryReport]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("Server {url}; client on {cores} cores; {seconds} s timed per case after {warmup} s warm-up.");
    println!();
    println!(
        "| subscribers | events/s sent (asked) | events | delivered events/s (ideal) \
         | commit→client p50 / p90 / p99 / max ms | stored→client p50 / p90 / p99 / max ms | ack→client p50 / p99 ms \
         | send→client p50 / p99 ms | POST p50 / p99 ms | missing | duplicates | streams closed early |"
    );
    println!("|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|");
    for r in reports.iter_mut() {
        let commit = match r.commit.samples() {
            Some(samples) => samples.summary_ms().join(" / "),
            None => "–".into(),
        };
        let [c50, c90, c99, cmax] = r.stored.summary_ms();
        let [k50, _, k99, _] = r.ack.summary_ms();
        let [s50, _, s99, _] = r.send.summary_ms();
        let [a50, _, a99, _] = r.publish.ack.summary_ms();
        let ideal = r.case.subscribers as f64 * r.publish_rate();
        println!(
            "| {} | {:.0} ({}) | {} | {:.0} ({ideal:.0}) | {commit} | {c50} / {c90} / {c99} / {cmax} | {k50} / {k99} \
             | {s50} / {s99} | {a50} / {a99} | {} | {} | {} |",
            r.case.subscribers,
            r.publish_rate(),
            r.case.rate,
            r.publish.published,
            r.delivered_per_sec,
            r.missing,
            r.duplicates + r.unexpected,
            r.closed_early,
        );
    }
    println!();
    for r in reports.iter() {
        let cores = r.client_cores.map_or("unknown".into(), |c| format!("{c:.2}"));
        println!(
            "{} × {}/s: {} streams opened in {:.1} s; this client used {cores} cores on average while publishing.",
            r.case.subscribers, r.case.rate, r.case.subscribers, r.open_secs
        );
        if let Some(lag) = &r.server_lag {
            println!("{} × {}/s: {}.", r.case.subscribers, r.case.rate, lag.describe());
        }
        if let Some(line) = r.commit.describe() {
            println!("{} × {}/s: {line}", r.case.subscribers, r.case.rate);
        }
        if let Some(wal) = &r.wal {
            println!("{} × {}/s: {}.", r.case.subscribers, r.case.rate, wal.describe());
        }
    }
    for r in reports.iter() {
        if r.other > 0 {
            println!();
            println!("{} × {}/s: {} frames of other events were ignored.", r.case.subscribers, r.case.rate, r.other);
        }
        if r.publish.max_behind > Duration::from_millis(50) {
            println!();
            println!(
                "{} × {}/s: the publisher fell up to {} ms behind its schedule.",
                r.case.subscribers,
                r.case.rate,
                format_ms(i32::try_from(r.publish.max_behind.as_micros()).unwrap_or(i32::MAX))
            );
        }
    }
    let (subscribers, rate, p50_max, p99_max) = TARGET;
    let target = reports.iter_mut().find(|r| r.case.subscribers == subscribers && r.case.rate == rate);
    if let Some(r) = target {
        let ms = |v: Option<i32>| v.map_or(f64::INFINITY, |us| f64::from(us) / 1000.0);
        let (judged_on, samples) = match r.commit.samples() {
            Some(samples) => ("commit→client (PostgreSQL's commit timestamps)", samples),
            None => ("stored→client (the upper bound)", &mut r.stored),
        };
        let (p50, p99) = (ms(samples.percentile(50.0)), ms(samples.percentile(99.0)));
        let exact = r.missing == 0 && r.duplicates == 0 && r.unexpected == 0;
        let met = p50 <= p50_max && p99 <= p99_max && exact;
        println!();
        println!(
            "Target ({subscribers} × {rate}/s: commit→client p50 ≤ {p50_max} ms, p99 ≤ {p99_max} ms, every event \
             exactly once), judged on {judged_on}: p50 {p50:.2} ms, p99 {p99:.2} ms, {}; {}.",
            if exact { "exactly once" } else { "NOT exactly once" },
            if met { "met" } else { "NOT met" }
        );
    }
}
