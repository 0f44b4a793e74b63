//! What `bench delivery` reads from each event frame, read cheaply.
//!
//! Every subscriber reads every event, on the same cores as the server it measures, so the
//! per-frame work inflates the latencies. Parsing the whole envelope with serde (every field
//! scanned, the timestamp through chrono's RFC 3339 parser) was about a tenth of the client's CPU.
//! [`read_event`] instead finds the three fields it needs by their keys: `stream` (to tell this
//! case's events from others), `data` (only that object goes through serde) and `timestamp`
//! (parsed by hand). It relies on the order in which the server writes the envelope's fields
//! (those of [`crate::store::RecordedEvent`]: `id`, `position`, `stream`, …, `data`, `metadata`,
//! `timestamp` last), which a test checks; anything it does not recognize falls back to a full
//! serde parse, so the result is the same, only slower.

use std::borrow::Cow;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use memchr::memmem;
use serde::Deserialize;

// The searchers, built once (building one costs more than a search in a short envelope).
static STREAM_KEY: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"stream\":\""));
static DATA_KEY: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"data\":"));
static TIMESTAMP_KEY: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\"timestamp\":\""));

/// How far from the end the `timestamp` key can be: the key, at most 35 bytes of time, `"}`.
const TIMESTAMP_TAIL: usize = 64;

/// The fields of one of this case's events that a subscriber checks and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchEvent {
    /// The publisher's sequence number.
    pub seq: u64,
    /// When the publisher sent it (wall-clock µs).
    pub sent_at_micros: i64,
    /// The stored `timestamp` (PostgreSQL's `clock_timestamp()` at the INSERT), in µs since the
    /// Unix epoch.
    pub stored_micros: i64,
}

/// The data the publisher puts in every event.
#[derive(Debug, Deserialize)]
struct Probe {
    seq: u64,
    #[serde(rename = "sentAtMicros")]
    sent_at_micros: i64,
}

/// The part of an envelope the client reads, for the full parse.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    timestamp: DateTime<Utc>,
    data: Probe,
}

/// Reads an event envelope (an SSE frame's `data`); `Some` only for an event of a stream whose
/// name starts with `prefix` and whose data carries the probe. Anything else (other events,
/// malformed JSON) is `None`.
pub fn read_event(json: &[u8], prefix: &str) -> Option<BenchEvent> {
    match scan(json, prefix) {
        Scan::Ours(event) => Some(event),
        Scan::Other => None,
        Scan::Unsure => parse(json, prefix),
    }
}

enum Scan {
    Ours(BenchEvent),
    Other,
    /// Not the expected shape: let serde decide.
    Unsure,
}

fn scan(json: &[u8], prefix: &str) -> Scan {
    // The first `"stream":"` is the field: only the id (a UUID) and the position (hex) come before
    // it, and a key inside a string would have its quotes escaped.
    let Some(key) = STREAM_KEY.find(json) else { return Scan::Unsure };
    let from = key + b"\"stream\":\"".len();
    let Some(len) = memchr::memchr2(b'"', b'\\', &json[from..]) else { return Scan::Unsure };
    let stream = &json[from..from + len];
    if json[from + len] == b'\\' {
        return Scan::Unsure; // an escape: compare the decoded name
    }
    if !stream.starts_with(prefix.as_bytes()) {
        return Scan::Other;
    }
    let rest = &json[from + len..];
    // `site`, `version` and `type` come between; the first `"data":` key after the stream is the
    // field (again, inside a string it would be escaped).
    let Some(data) = DATA_KEY.find(rest) else { return Scan::Unsure };
    let mut de = serde_json::Deserializer::from_slice(&rest[data + b"\"data\":".len()..]);
    let Ok(probe) = Probe::deserialize(&mut de) else { return Scan::Unsure };
    // `timestamp` is the last field, after `data` and `metadata`: its key is the last one, near the
    // end (a key found in the tail is the last one in the whole envelope).
    let tail = json.len().saturating_sub(TIMESTAMP_TAIL);
    let Some(key) = TIMESTAMP_KEY.rfind(&json[tail..]).map(|k| k + tail) else { return Scan::Unsure };
    let from = key + b"\"timestamp\":\"".len();
    let Some(len) = memchr::memchr(b'"', &json[from..]) else { return Scan::Unsure };
    let Some(stored_micros) = rfc3339_micros(&json[from..from + len]) else { return Scan::Unsure };
    Scan::Ours(BenchEvent { seq: probe.seq, sent_at_micros: probe.sent_at_micros, stored_micros })
}

fn parse(json: &[u8], prefix: &str) -> Option<BenchEvent> {
    let env = serde_json::from_slice::<Envelope>(json).ok()?;
    env.stream.starts_with(prefix).then(|| BenchEvent {
        seq: env.data.seq,
        sent_at_micros: env.data.sent_at_micros,
        stored_micros: env.timestamp.timestamp_micros(),
    })
}

/// An RFC 3339 time as µs since the Unix epoch. The server writes UTC as
/// `2026-11-27T13:23:12.123456Z` (0 to 9 fraction digits), which is read by hand; any other form
/// (an offset, a leap second) goes to chrono.
pub fn rfc3339_micros(text: &[u8]) -> Option<i64> {
    fast_utc_micros(text).or_else(|| {
        let text = std::str::from_utf8(text).ok()?;
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
    })
}

fn fast_utc_micros(t: &[u8]) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = t.get(range)?;
        digits.iter().try_fold(0i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let at = |i: usize, c: u8| t.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut micros = 0;
    let mut end = 19;
    if at(19, b'.') {
        end = 20 + t.get(20..)?.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = end - 20;
        if digits == 0 || digits > 9 {
            return None;
        }
        let fraction = num(20..end)?;
        // Keep µs: truncate beyond 6 digits, scale up below.
        micros = if digits >= 6 {
            fraction / 10i64.pow((digits - 6) as u32)
        } else {
            fraction * 10i64.pow((6 - digits) as u32)
        };
    }
    if end + 1 != t.len() || !(at(end, b'Z') || at(end, b'z')) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The transaction id (xid8) in an SSE frame's `id:`, the event's position: 32 hex digits, the
/// first 16 the xid (see [`crate::store::Position`]). `None` for anything else.
pub fn xid_of_position(id: &[u8]) -> Option<u64> {
    if id.len() != 32 || !id[16..].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    id[..16].iter().try_fold(0u64, |n, &b| Some((n << 4) | u64::from(hex_digit(b)?)))
}

/// The value of one hexadecimal digit.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{Position, RecordedEvent};

    fn envelope(stream: &str, data: serde_json::Value, metadata: serde_json::Value) -> (Vec<u8>, RecordedEvent) {
        let event = RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: Position { xid: 0x1234_5678_9abc, seq: 42 },
            stream: stream.into(),
            site: "default".into(),
            version: 3,
            event_type: "BenchDelivery".into(),
            data,
            metadata,
            timestamp: "2026-11-27T13:23:12.123456Z".parse().unwrap(),
        };
        (serde_json::to_vec(&event).unwrap(), event)
    }

    #[test]
    fn scan_agrees_with_serde() {
        let probe = json!({"seq": 7, "sentAtMicros": 1_700_000_000_000_000i64});
        let (json, event) = envelope("bench-x-3", probe.clone(), json!({}));
        let want = BenchEvent {
            seq: 7,
            sent_at_micros: 1_700_000_000_000_000,
            stored_micros: event.timestamp.timestamp_micros(),
        };
        assert!(matches!(scan(&json, "bench-x-"), Scan::Ours(e) if e == want));
        assert_eq!(parse(&json, "bench-x-"), Some(want));
        assert_eq!(read_event(&json, "bench-y-"), None);
        // Keys that look like the fields, inside data and metadata, do not fool the scan.
        let tricky = json!({"seq": 7, "sentAtMicros": 1_700_000_000_000_000i64,
            "x": {"timestamp": "1999-01-01T00:00:00Z", "stream": "bench-y-1", "data": {"seq": 9}},
            "s": "\"timestamp\":\"2000-01-01T00:00:00Z\""});
        let meta = json!({"timestamp": "1999-01-01T00:00:00Z", "data": {"seq": 1}});
        let (json, _) = envelope("bench-x-3", tricky, meta);
        assert!(matches!(scan(&json, "bench-x-"), Scan::Ours(e) if e == want), "{}", String::from_utf8_lossy(&json));
        // A stream name with an escape, or data without the probe: the full parse decides.
        let (json, _) = envelope("bench-x-\"q\"", probe.clone(), json!({}));
        assert!(matches!(scan(&json, "bench-x-"), Scan::Unsure));
        assert_eq!(read_event(&json, "bench-x-"), Some(want));
        let (json, _) = envelope("bench-x-1", json!({"page": "/"}), json!({}));
        assert_eq!(read_event(&json, "bench-x-"), None);
        assert_eq!(read_event(b"{not json", "bench-x-"), None);
        // Not the server's field order (timestamp first): the scan is unsure, serde decides.
        let moved = format!(
            r#"{{"timestamp":"2026-11-27T13:23:12.123456Z","stream":"bench-x-3","data":{}}}"#,
            json!({"seq": 7, "sentAtMicros": 1_700_000_000_000_000i64, "pad": "x".repeat(100)})
        );
        assert!(matches!(scan(moved.as_bytes(), "bench-x-"), Scan::Unsure));
        assert_eq!(read_event(moved.as_bytes(), "bench-x-"), Some(want));
        assert_eq!(read_event(b"", ""), None);
    }

    #[test]
    fn timestamps() {
        for text in [
            "2026-11-27T13:23:12.123456Z",
            "2026-11-27T13:23:12Z",
            "2026-11-27T13:23:12.1Z",
            "2026-11-27T13:23:12.123456789Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "2000-02-29T23:59:59.5Z",
            "2100-03-01T00:00:00.000001Z",
            "1600-01-01T00:00:00Z",
        ] {
            let want = DateTime::parse_from_rfc3339(text).unwrap().timestamp_micros();
            assert_eq!(fast_utc_micros(text.as_bytes()), Some(want), "{text}");
        }
        // Other forms go to chrono; nonsense is refused.
        let offset = "2026-11-27T14:23:12.5+01:00";
        assert_eq!(fast_utc_micros(offset.as_bytes()), None);
        assert_eq!(rfc3339_micros(offset.as_bytes()), rfc3339_micros(b"2026-11-27T13:23:12.5Z"));
        for bad in
            ["2026-02-30T00:00:00Z", "2026-11-27T24:00:00Z", "2026-11-27T13:23:12.Z", "2026-11-27T13:23:12Zx", ""]
        {
            assert_eq!(rfc3339_micros(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn xids_from_positions() {
        for position in
            [Position { xid: 0x1234_5678_9abc, seq: 42 }, Position { xid: u64::MAX >> 1, seq: 0 }, Position::START]
        {
            assert_eq!(xid_of_position(position.to_string().as_bytes()), Some(position.xid));
        }
        assert_eq!(xid_of_position(b"0000000000000001"), None);
        assert_eq!(xid_of_position(b"000000000000000100000000000000g1"), None);
        assert_eq!(xid_of_position(b""), None);
    }
}
