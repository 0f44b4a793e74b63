//! `GET /metrics`: the bus's counters in the Prometheus text exposition format (version 0.0.4).
//!
//! Rendered straight from the atomic counters in [`BusStats`], so every [`AppState`] (and so every
//! server in one process, as in tests) reports its own numbers and no global recorder is involved.
//! Before the bus runs, the same series are reported with zero values and `flightdeck_ready 0`,
//! so a scraper sees one consistent set of series from the first scrape.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `flightdeck_ready` | gauge | 1 once the database is prepared and the bus runs |
//! | `flightdeck_subscribers{transport="sse"}` | gauge | open Server-Sent Events streams |
//! | `flightdeck_subscribers{transport="ws"}` | gauge | open WebSocket connections |
//! | `flightdeck_subscriptions{transport="sse"\|"ws"}` | gauge | subscriptions by transport: one per SSE stream, any number per WebSocket |
//! | `flightdeck_events_appended_total` | counter | events newly written through this process's bus (retries that stored nothing are not counted) |
//! | `flightdeck_events_delivered_total` | counter | events the pump read from the log and broadcast to this process's subscribers (once each, however many subscribers) |
//! | `flightdeck_delivery_lag_seconds` | histogram | per delivered event: the pump's broadcast time minus the event's stored timestamp (taken at insert, before commit), so it covers commit, waiting for older transactions, and waking the pump |
//! | `flightdeck_listener_reconnects_total` | counter | LISTEN connection re-established after a loss |
//! | `flightdeck_listener_connected` | gauge | 1 while the LISTEN connection is up |
//! | `flightdeck_notifications_received_total` | counter | NOTIFY wake-ups received on the LISTEN connection |
//! | `flightdeck_catch_up_reads_total` | counter | reads of the global log by the pump, behind lone appends, and by subscription replays |
//! | `flightdeck_reads_behind_appends_total` | counter | of those, reads sent right behind a lone append in the same round trip (each spares the pump a read) |
//! | `flightdeck_limited_total{limit="…"}` | counter | refusals by each limit (`limits.rs`): `ingest_per_address`, `track_per_site`, `streams_per_address`, `ws_subscriptions`, `filters`, `body_size`, `ws_request_size`, `ws_message_size` |
//! | `flightdeck_limiter_keys{limit="…"}` | gauge | keys a limit holds state for (bounded by `--limit-max-keys`, or by open streams) |
//! | `flightdeck_limiter_resets_total{limit="…"}` | counter | times a rate limit forgot every key because more were active than it may remember |
//! | `flightdeck_limited_streams` | gauge | open streams counted against the per-address stream limit |
//! | `flightdeck_sites` | gauge | registered sites in the server's copy of the registry (`sites/directory.rs`) |
//! | `flightdeck_site_directory_reads_total{kind="check"\|"load"\|"error"}` | counter | the directory's database reads: generation checks (at most one a second, only while tracker requests arrive), full loads (only after a change), failures |
//! | `flightdeck_tracker_refused_total{reason="unknown_site"\|"origin_not_allowed"}` | counter | tracker requests refused by the sites registry |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::bus::{Bus, BusStats};

use super::AppState;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let bus = state.bus.get();
    let mut text = render(bus.map(Bus::stats), bus.is_some());
    state.limits.render_metrics(&mut text);
    state.sites.render_metrics(&mut text);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// The exposition text for `stats` (all zero when the bus is not running yet).
fn render(stats: Option<&BusStats>, ready: bool) -> String {
    let empty = BusStats::default();
    let stats = stats.unwrap_or(&empty);
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (suffix_and_labels, value) in samples {
            let _ = writeln!(out, "{name}{suffix_and_labels} {value}");
        }
    };
    metric(
        "flightdeck_ready",
        "gauge",
        "1 once the database is prepared and events are delivered.",
        &[("", u64::from(ready).to_string())],
    );
    metric(
        "flightdeck_subscribers",
        "gauge",
        "Open subscriber connections, by transport.",
        &[
            ("{transport=\"sse\"}", load(&stats.sse_subscribers).to_string()),
            ("{transport=\"ws\"}", load(&stats.ws_sockets).to_string()),
        ],
    );
    metric(
        "flightdeck_subscriptions",
        "gauge",
        "Open subscriptions, by transport (one per SSE stream; any number per WebSocket).",
        &[
            ("{transport=\"sse\"}", load(&stats.sse_subscribers).to_string()),
            ("{transport=\"ws\"}", load(&stats.ws_subscriptions).to_string()),
        ],
    );
    metric(
        "flightdeck_events_appended_total",
        "counter",
        "Events newly written through this process's bus (idempotent retries not counted).",
        &[("", load(&stats.appended).to_string())],
    );
    metric(
        "flightdeck_events_delivered_total",
        "counter",
        "Events read from the log and broadcast to this process's subscribers (once per event).",
        &[("", load(&stats.delivered).to_string())],
    );
    metric(
        "flightdeck_delivery_lag_seconds",
        "histogram",
        "Per delivered event: broadcast time minus the event's stored (insert) timestamp.",
        &lag_samples(stats),
    );
    metric(
        "flightdeck_listener_reconnects_total",
        "counter",
        "Times the LISTEN connection was re-established after a loss.",
        &[("", load(&stats.reconnects).to_string())],
    );
    metric(
        "flightdeck_listener_connected",
        "gauge",
        "1 while the LISTEN connection is up, else 0.",
        &[("", load(&stats.listener_connected).to_string())],
    );
    metric(
        "flightdeck_notifications_received_total",
        "counter",
        "NOTIFY wake-ups received on the LISTEN connection.",
        &[("", load(&stats.notifications).to_string())],
    );
    metric(
        "flightdeck_catch_up_reads_total",
        "counter",
        "Reads of the global log by the pump, behind lone appends, and by subscription replays.",
        &[("", load(&stats.catch_up_reads).to_string())],
    );
    metric(
        "flightdeck_reads_behind_appends_total",
        "counter",
        "Reads of the global log sent right behind a lone append, in the same round trip.",
        &[("", load(&stats.reads_behind_appends).to_string())],
    );
    out
}

/// The histogram's cumulative `_bucket` lines, `_sum` and `_count`. The count is the sum of the
/// buckets as read, so the lines agree with each other even while the pump is counting.
fn lag_samples(stats: &BusStats) -> Vec<(&'static str, String)> {
    // Label strings are static so the samples can borrow them; computed once per bound.
    const LABELS: [&str; BusStats::LAG_BUCKETS.len()] = [
        "_bucket{le=\"0.001\"}",
        "_bucket{le=\"0.0025\"}",
        "_bucket{le=\"0.005\"}",
        "_bucket{le=\"0.01\"}",
        "_bucket{le=\"0.025\"}",
        "_bucket{le=\"0.05\"}",
        "_bucket{le=\"0.1\"}",
        "_bucket{le=\"0.25\"}",
        "_bucket{le=\"0.5\"}",
        "_bucket{le=\"1\"}",
        "_bucket{le=\"2.5\"}",
        "_bucket{le=\"5\"}",
        "_bucket{le=\"10\"}",
    ];
    let mut samples = Vec::with_capacity(LABELS.len() + 3);
    let mut cumulative = 0u64;
    for (label, count) in LABELS.iter().zip(&stats.delivery_lag_buckets) {
        cumulative += count.load(Ordering::Relaxed);
        samples.push((*label, cumulative.to_string()));
    }
    cumulative += stats.delivery_lag_buckets[LABELS.len()].load(Ordering::Relaxed);
    samples.push(("_bucket{le=\"+Inf\"}", cumulative.to_string()));
    let sum = stats.delivery_lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
    samples.push(("_sum", sum.to_string()));
    samples.push(("_count", cumulative.to_string()));
    samples
}

/// Counts one open subscriber connection (or WebSocket subscription) while it lives: created when
/// it opens, dropped (however it ends: client gone, lag, shutdown, unsubscribe) when it closes.
pub(super) struct SubscriberGauge {
    bus: Bus,
    counter: fn(&BusStats) -> &AtomicU64,
}

impl SubscriberGauge {
    /// Counts an open Server-Sent Events stream.
    pub(super) fn sse(bus: &Bus) -> Self {
        Self::count(bus, |stats| &stats.sse_subscribers)
    }

    /// Counts an open WebSocket connection.
    pub(super) fn ws(bus: &Bus) -> Self {
        Self::count(bus, |stats| &stats.ws_sockets)
    }

    /// Counts one subscription on a WebSocket connection.
    pub(super) fn ws_subscription(bus: &Bus) -> Self {
        Self::count(bus, |stats| &stats.ws_subscriptions)
    }

    fn count(bus: &Bus, counter: fn(&BusStats) -> &AtomicU64) -> Self {
        counter(bus.stats()).fetch_add(1, Ordering::Relaxed);
        SubscriberGauge { bus: bus.clone(), counter }
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        (self.counter)(self.bus.stats()).fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn labels_match_the_bucket_bounds() {
        let stats = BusStats::default();
        for (label, bound) in lag_samples(&stats).iter().zip(BusStats::LAG_BUCKETS) {
            assert_eq!(label.0, format!("_bucket{{le=\"{bound}\"}}"));
        }
    }

    #[test]
    fn renders_help_type_and_cumulative_buckets() {
        let stats = BusStats::default();
        stats.delivered.store(3, Ordering::Relaxed);
        stats.sse_subscribers.store(1, Ordering::Relaxed);
        stats.ws_sockets.store(2, Ordering::Relaxed);
        stats.ws_subscriptions.store(5, Ordering::Relaxed);
        stats.observe_lag(Duration::from_micros(500));
        stats.observe_lag(Duration::from_millis(30));
        stats.observe_lag(Duration::from_secs(60));
        let text = render(Some(&stats), true);
        for line in [
            "# TYPE flightdeck_delivery_lag_seconds histogram",
            "flightdeck_delivery_lag_seconds_bucket{le=\"0.001\"} 1",
            "flightdeck_delivery_lag_seconds_bucket{le=\"0.025\"} 1",
            "flightdeck_delivery_lag_seconds_bucket{le=\"0.05\"} 2",
            "flightdeck_delivery_lag_seconds_bucket{le=\"10\"} 2",
            "flightdeck_delivery_lag_seconds_bucket{le=\"+Inf\"} 3",
            "flightdeck_delivery_lag_seconds_sum 60.0305",
            "flightdeck_delivery_lag_seconds_count 3",
            "flightdeck_events_delivered_total 3",
            "flightdeck_ready 1",
            "flightdeck_subscribers{transport=\"sse\"} 1",
            "flightdeck_subscribers{transport=\"ws\"} 2",
            "# TYPE flightdeck_subscriptions gauge",
            "flightdeck_subscriptions{transport=\"sse\"} 1",
            "flightdeck_subscriptions{transport=\"ws\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        // Every sample line belongs to a metric announced by HELP and TYPE just before.
        let mut announced = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&announced), "{line} after TYPE {announced}");
            }
        }
        assert!(render(None, false).contains("flightdeck_ready 0\n"));
    }
}
