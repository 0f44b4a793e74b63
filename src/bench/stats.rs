//! Small statistics for the client benchmarks: latency percentiles and exactly-once bookkeeping.

/// Latency samples in microseconds (signed: a difference of two clocks' readings may be negative),
/// summarized by percentiles.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    micros: Vec<i32>,
    sorted: bool,
}

impl Samples {
    /// Empty, with room for `capacity` samples.
    pub fn with_capacity(capacity: usize) -> Self {
        Samples { micros: Vec::with_capacity(capacity), sorted: true }
    }

    /// Adds one sample (saturated to ±35 minutes).
    pub fn push(&mut self, micros: i64) {
        self.micros.push(i32::try_from(micros).unwrap_or(if micros < 0 { i32::MIN } else { i32::MAX }));
        self.sorted = false;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Samples) {
        if self.micros.is_empty() {
            self.micros = other.micros;
            self.sorted = other.sorted;
        } else {
            self.micros.extend_from_slice(&other.micros);
            self.sorted = false;
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The `p`-th percentile (0–100) in microseconds, nearest-rank; `None` without samples.
    pub fn percentile(&mut self, p: f64) -> Option<i32> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        Some(self.micros[nearest_rank(p, self.micros.len())])
    }

    /// p50, p90, p99 and max, in milliseconds, formatted for a table (`–` without samples).
    pub fn summary_ms(&mut self) -> [String; 4] {
        [50.0, 90.0, 99.0, 100.0].map(|p| match self.percentile(p) {
            Some(us) => format_ms(us),
            None => "–".to_string(),
        })
    }
}

/// The 0-based index of the nearest-rank `p`-th percentile among `n` sorted values (`n` ≥ 1).
pub fn nearest_rank(p: f64, n: usize) -> usize {
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

/// Microseconds as milliseconds with a precision that suits the size.
pub fn format_ms(micros: i32) -> String {
    let ms = f64::from(micros) / 1000.0;
    if ms.abs() < 10.0 {
        format!("{ms:.2}")
    } else if ms.abs() < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Which sequence numbers `0..expected` a subscriber received, and how often.
#[derive(Debug, Clone)]
pub struct Seen {
    bits: Vec<u64>,
    expected: u64,
    unique: u64,
    duplicates: u64,
    unexpected: u64,
}

impl Seen {
    /// Tracks `0..expected`.
    pub fn new(expected: u64) -> Self {
        let words = usize::try_from(expected.div_ceil(64)).unwrap_or(0);
        Seen { bits: vec![0; words], expected, unique: 0, duplicates: 0, unexpected: 0 }
    }

    /// Records `seq`; returns whether it was new.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq >= self.expected {
            self.unexpected += 1;
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.bits[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.bits[word] |= bit;
        self.unique += 1;
        true
    }

    /// Whether every expected sequence number arrived.
    pub fn complete(&self) -> bool {
        self.unique == self.expected
    }

    /// Sequence numbers never received.
    pub fn missing(&self) -> u64 {
        self.expected - self.unique
    }

    /// Sequence numbers received more than once (each extra copy counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Sequence numbers outside `0..expected`.
    pub fn unexpected(&self) -> u64 {
        self.unexpected
    }
}

/// CPU time (user + system) this process has used so far, in seconds, from `/proc/self/stat`;
/// `None` where that file does not exist.
pub fn process_cpu_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(cpu_seconds_from_stat)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (Linux reports them in USER_HZ, 100/s).
pub fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Measures this process's CPU use over an interval, as cores used on average.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    cpu: Option<f64>,
    wall: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start() -> Self {
        CpuMeter { cpu: process_cpu_seconds(), wall: std::time::Instant::now() }
    }

    /// Average cores used since [`CpuMeter::start`].
    pub fn cores(&self) -> Option<f64> {
        let used = process_cpu_seconds()? - self.cpu?;
        let wall = self.wall.elapsed().as_secs_f64();
        (wall > 0.0).then(|| used / wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_proc_stat() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0 100 0 0";
        assert_eq!(cpu_seconds_from_stat(line), Some(3.25));
        assert_eq!(cpu_seconds_from_stat("garbage"), None);
        assert!(process_cpu_seconds().is_none_or(|s| s >= 0.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        assert_eq!(s.percentile(50.0), None);
        for v in (1..=100).rev() {
            s.push(v);
        }
        assert_eq!(s.percentile(50.0), Some(50));
        assert_eq!(s.percentile(99.0), Some(99));
        assert_eq!(s.percentile(100.0), Some(100));
        assert_eq!(s.percentile(0.0), Some(1));
        let mut one = Samples::with_capacity(1);
        one.push(-3);
        assert_eq!(one.percentile(99.0), Some(-3));
        one.push(i64::MAX);
        assert_eq!(one.percentile(100.0), Some(i32::MAX));
        assert_eq!(nearest_rank(90.0, 10), 8);
        assert_eq!(nearest_rank(90.1, 10), 9);
    }

    #[test]
    fn merging_and_formatting() {
        let mut a = Samples::default();
        a.push(1500);
        let mut b = Samples::default();
        b.push(25_000);
        b.push(250_000);
        a.merge(b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.summary_ms(), ["25.0", "250", "250", "250"].map(String::from));
        assert_eq!(format_ms(1500), "1.50");
        assert_eq!(format_ms(-1500), "-1.50");
        assert_eq!(Samples::default().summary_ms()[0], "–");
    }

    #[test]
    fn exactly_once() {
        let mut seen = Seen::new(130);
        assert!(seen.record(0));
        assert!(seen.record(129));
        assert!(!seen.record(129));
        assert!(!seen.record(130));
        assert_eq!((seen.missing(), seen.duplicates(), seen.unexpected()), (128, 1, 1));
        for seq in 0..130 {
            seen.record(seq);
        }
        assert!(seen.complete());
        assert_eq!(seen.duplicates(), 3);
    }
}
