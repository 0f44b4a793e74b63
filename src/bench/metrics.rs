//! The server's own view of a delivery case, from `GET /metrics` (Prometheus text) before and
//! after it: how long events took from their INSERT to the pump's broadcast (the server's
//! delivery-lag histogram) and how many reads of the log the pump needed. Together with the
//! client's commit → client latency this splits the time into "until broadcast" and "broadcast
//! to the subscriber's socket".

use std::collections::HashMap;

use super::client::{Connection, Target};
use super::stats::format_ms;

const LAG: &str = "flightdeck_delivery_lag_seconds";

/// One scrape: every sample, keyed by its name and labels as written (`name{le="0.001"}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus text format (comments skipped, unparsable lines ignored).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(key, value)| Some((key.trim().to_string(), value.trim().parse().ok()?)));
        Scrape(samples.collect())
    }

    /// A sample's value.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    /// Scrapes `/metrics`; `None` if the server has none (an embedding application).
    pub async fn fetch(target: &Target) -> Option<Self> {
        let mut conn = Connection::open(target).await.ok()?;
        let (status, body) = conn.get(&target.path("/metrics")).await.ok()?;
        (status == 200).then(|| Scrape::parse(&String::from_utf8_lossy(&body)))
    }

    /// The increase of the delivery-lag histogram from `before` to this scrape.
    pub fn lag_since(&self, before: &Scrape) -> LagHistogram {
        let delta = |key: &str| self.get(key).unwrap_or(0.0) - before.get(key).unwrap_or(0.0);
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .keys()
            .filter_map(|key| {
                let le = key.strip_prefix(LAG)?.strip_prefix("_bucket{le=\"")?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((bound, delta(key)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        LagHistogram {
            buckets,
            sum: delta(&format!("{LAG}_sum")),
            count: delta(&format!("{LAG}_count")),
            reads: delta("flightdeck_catch_up_reads_total"),
            notifications: delta("flightdeck_notifications_received_total"),
        }
    }
}

/// Events' stored → broadcast lag over an interval, as the server's cumulative buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagHistogram {
    /// (upper bound in seconds, events at or under it), ascending.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of lags, in seconds.
    pub sum: f64,
    /// Events broadcast.
    pub count: f64,
    /// Reads of the log meanwhile (pump and replays).
    pub reads: f64,
    /// NOTIFY wake-ups the server received meanwhile.
    pub notifications: f64,
}

impl LagHistogram {
    /// The smallest bucket bound under which at least `p` percent of the events fall.
    pub fn percentile_bound(&self, p: f64) -> Option<f64> {
        let need = self.count * p / 100.0;
        (self.count > 0.0).then(|| self.buckets.iter().find(|(_, n)| *n >= need).map_or(f64::INFINITY, |b| b.0))
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        if self.count <= 0.0 {
            return "the server broadcast no events (no /metrics?)".into();
        }
        let bound = |p: f64| match self.percentile_bound(p) {
            Some(s) if s.is_finite() => format!("≤ {} ms", format_ms((s * 1e6) as i32)),
            _ => "over 10 s".into(),
        };
        format!(
            "stored → broadcast in the server: mean {} ms, p50 {}, p99 {} ({} events; per event {:.2} log reads, {:.2} NOTIFY wake-ups)",
            format_ms((self.sum / self.count * 1e6) as i32),
            bound(50.0),
            bound(99.0),
            self.count,
            self.reads / self.count,
            self.notifications / self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP x\nflightdeck_delivery_lag_seconds_bucket{le=\"0.001\"} 10\n\
        flightdeck_delivery_lag_seconds_bucket{le=\"0.01\"} 10\n\
        flightdeck_delivery_lag_seconds_bucket{le=\"+Inf\"} 10\n\
        flightdeck_delivery_lag_seconds_sum 0.005\nflightdeck_delivery_lag_seconds_count 10\n\
        flightdeck_catch_up_reads_total 3\nflightdeck_subscribers{transport=\"sse\"} 100\nbad line\n";

    #[test]
    fn histogram_deltas() {
        let before = Scrape::parse(BEFORE);
        assert_eq!(before.get("flightdeck_subscribers{transport=\"sse\"}"), Some(100.0));
        let after = Scrape::parse(
            &BEFORE
                .replace("0.001\"} 10", "0.001\"} 60")
                .replace("0.01\"} 10", "0.01\"} 109")
                .replace("Inf\"} 10", "Inf\"} 110")
                .replace("_sum 0.005", "_sum 0.205")
                .replace("_count 10", "_count 110")
                .replace("total 3", "total 13"),
        );
        let lag = after.lag_since(&before);
        assert_eq!(lag.buckets, vec![(0.001, 50.0), (0.01, 99.0), (f64::INFINITY, 100.0)]);
        assert_eq!(lag.percentile_bound(50.0), Some(0.001));
        assert_eq!(lag.percentile_bound(99.0), Some(0.01));
        assert_eq!(lag.percentile_bound(99.5), Some(f64::INFINITY));
        assert!(
            lag.describe().contains(
                "mean 2.00 ms, p50 ≤ 1.00 ms, p99 ≤ 10.0 ms (100 events; per event 0.10 log reads, 0.00 NOTIFY"
            )
        );
        assert_eq!(LagHistogram::default().percentile_bound(50.0), None);
    }
}
