//! Counting a chunk of events in memory, before one transaction adds the counts to the tables.
//!
//! Pure: which events count and into which buckets is decided here and nowhere else, so the
//! projector and a rebuild agree by construction. An event counts if it is one of the tracker's
//! types on a `visit-` stream and its data carries a valid `site`, `session` and the type's key
//! field; the tracker's ingestion guarantees that, and events appended some other way that do not
//! are skipped (still passed by the checkpoint). Buckets are the event's stored timestamp
//! truncated to the minute (UTC).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::store::RecordedEvent;
use crate::tracker::{MAX_NAME, MAX_PATH, STREAM_PREFIX, TrackType, is_token};

/// A tracker event, as the projections see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tracked<'a> {
    pub kind: TrackType,
    pub site: &'a str,
    pub session: &'a str,
    /// The page path, element name or form name.
    pub key: &'a str,
    pub minute: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// The event as a tracker event, or `None` if the projections do not count it.
pub(crate) fn tracked(event: &RecordedEvent) -> Option<Tracked<'_>> {
    if !event.stream.starts_with(STREAM_PREFIX) {
        return None;
    }
    let kind = TrackType::parse(&event.event_type)?;
    let text = |field: &str| event.data.get(field).and_then(|v| v.as_str());
    let (site, session, key) = (text("site")?, text("session")?, text(kind.key_field())?);
    let max = if kind == TrackType::PageViewed { MAX_PATH } else { MAX_NAME };
    if !is_token(site) || !is_token(session) || key.is_empty() || key.len() > max {
        return None;
    }
    Some(Tracked { kind, site, session, key, minute: minute(event.timestamp), at: event.timestamp })
}

/// `at` truncated to the minute.
pub(crate) fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp().div_euclid(60) * 60, 0).unwrap_or(at)
}

/// First and last time seen, and how many events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub events: i64,
}

impl Span {
    fn add(span: Option<&mut Span>, at: DateTime<Utc>) -> Option<Span> {
        match span {
            Some(s) => {
                s.first = s.first.min(at);
                s.last = s.last.max(at);
                s.events += 1;
                None
            }
            None => Some(Span { first: at, last: at, events: 1 }),
        }
    }
}

/// A chunk's counts, keyed for the tables. Ordered maps: every transaction touches rows in the
/// same order.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// (site, minute) → [page views, interactions, form submissions].
    pub minutes: BTreeMap<(String, DateTime<Utc>), [i64; 3]>,
    /// (site, minute, path) → views.
    pub pages: BTreeMap<(String, DateTime<Utc>, String), i64>,
    /// (site, minute, element) → interactions.
    pub elements: BTreeMap<(String, DateTime<Utc>, String), i64>,
    /// (site, minute, form) → submissions.
    pub forms: BTreeMap<(String, DateTime<Utc>, String), i64>,
    /// (site, minute, session) seen.
    pub session_minutes: BTreeSet<(String, DateTime<Utc>, String)>,
    /// (site, session) → span.
    pub sessions: BTreeMap<(String, String), Span>,
    /// site → span.
    pub sites: BTreeMap<String, Span>,
    /// Events counted.
    pub counted: u64,
}

impl Tally {
    /// Counts `event` if it is a tracker event; returns whether it was.
    pub fn add(&mut self, event: &RecordedEvent) -> bool {
        let Some(t) = tracked(event) else { return false };
        let site = t.site.to_string();
        let column = match t.kind {
            TrackType::PageViewed => 0,
            TrackType::ElementInteraction => 1,
            TrackType::FormSubmitted => 2,
        };
        self.minutes.entry((site.clone(), t.minute)).or_default()[column] += 1;
        let per_key = match t.kind {
            TrackType::PageViewed => &mut self.pages,
            TrackType::ElementInteraction => &mut self.elements,
            TrackType::FormSubmitted => &mut self.forms,
        };
        *per_key.entry((site.clone(), t.minute, t.key.to_string())).or_default() += 1;
        self.session_minutes.insert((site.clone(), t.minute, t.session.to_string()));
        let key = (site.clone(), t.session.to_string());
        if let Some(new) = Span::add(self.sessions.get_mut(&key), t.at) {
            self.sessions.insert(key, new);
        }
        if let Some(new) = Span::add(self.sites.get_mut(&site), t.at) {
            self.sites.insert(site, new);
        }
        self.counted += 1;
        true
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counted == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Position;
    use serde_json::{Value, json};

    fn event(stream: &str, kind: &str, data: Value, secs: i64) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: Position::START,
            stream: stream.into(),
            site: "default".into(),
            version: 1,
            event_type: kind.into(),
            data,
            metadata: json!({}),
            timestamp: DateTime::from_timestamp(secs, 500_000_000).unwrap(),
        }
    }

    #[test]
    fn only_well_formed_tracker_events_count() {
        let ok = json!({"site": "shop", "session": "a", "path": "/", "element": "buy", "form": "f"});
        let cases = [
            (event("visit-shop:a", "PageViewed", ok.clone(), 0), true),
            (event("visit-shop:a", "ElementInteraction", ok.clone(), 0), true),
            (event("visit-shop:a", "FormSubmitted", ok.clone(), 0), true),
            (event("orders-1", "PageViewed", ok.clone(), 0), false),
            (event("visit-shop:a", "OrderPlaced", ok.clone(), 0), false),
            (event("visit-shop:a", "PageViewed", json!({"site": "shop", "session": "a"}), 0), false),
            (event("visit-shop:a", "PageViewed", json!({"site": "sh op", "session": "a", "path": "/"}), 0), false),
            (event("visit-shop:a", "PageViewed", json!({"site": "shop", "session": "a", "path": 7}), 0), false),
        ];
        for (i, (e, want)) in cases.iter().enumerate() {
            assert_eq!(tracked(e).is_some(), *want, "case {i}");
        }
    }

    #[test]
    fn counts_land_in_minute_buckets() {
        let mut tally = Tally::default();
        let pv = |session: &str, path: &str, secs| {
            event("visit-s", "PageViewed", json!({"site": "s", "session": session, "path": path}), secs)
        };
        for e in [pv("a", "/", 60), pv("a", "/x", 119), pv("b", "/", 120), pv("a", "/", 150)] {
            assert!(tally.add(&e));
        }
        assert!(!tally.add(&event("other", "PageViewed", json!({}), 0)));
        let m = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        assert_eq!(tally.counted, 4);
        assert_eq!(tally.minutes[&("s".into(), m(60))], [2, 0, 0]);
        assert_eq!(tally.minutes[&("s".into(), m(120))], [2, 0, 0]);
        assert_eq!(tally.pages[&("s".into(), m(120), "/".into())], 2);
        assert_eq!(tally.session_minutes.len(), 3, "a@1, a@2, b@2");
        let a = tally.sessions[&("s".into(), "a".into())];
        assert_eq!((a.first.timestamp(), a.last.timestamp(), a.events), (60, 150, 3));
        assert_eq!(tally.sites["s"].events, 4);
        assert_eq!(minute(DateTime::from_timestamp(-1, 0).unwrap()).timestamp(), -60);
    }
}
