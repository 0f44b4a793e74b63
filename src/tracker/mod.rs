//! The tracker's wire format: what `/track.js` (or any other client) posts to `POST /api/track`,
//! and the rules the server checks before anything is stored.
//!
//! One request carries events of one visitor session on one site. They become one atomic append to
//! that session's own stream, `visit-<site>:<session>`, so a session reads back in order and
//! sessions never contend for a stream. The envelope is strict (unknown keys are refused, so a typo
//! is a clear 400, not a silently lost field); each event's `data` is open: its required fields are
//! checked per type ([`schema`]) and anything else is kept. Event ids come from the client, so a
//! resent batch is recognized by the store instead of being counted twice.

mod schema;

pub use schema::{MAX_NAME, MAX_PATH, TrackType};

use std::collections::HashSet;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::store::{NewEvent, Store, StoreError};

/// Every tracker stream starts with this; the projections count only these streams.
pub const STREAM_PREFIX: &str = "visit-";
/// Most events in one request.
pub const MAX_EVENTS: usize = 100;
/// Longest site or session id, in bytes.
pub const MAX_TOKEN: usize = 64;

/// A validated request: one append to [`TrackBatch::stream`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrackBatch {
    /// The site id (`data-site` on the script tag).
    pub site: String,
    /// The visitor session id.
    pub session: String,
    /// The events, with their ids, `site` and `session` added to each one's data.
    pub events: Vec<NewEvent>,
}

impl TrackBatch {
    /// The session's stream: `visit-<site>:<session>` (neither id may contain `:`).
    pub fn stream(&self) -> String {
        stream_name(&self.site, &self.session)
    }
}

/// The stream of one visitor session.
pub fn stream_name(site: &str, session: &str) -> String {
    format!("{STREAM_PREFIX}{site}:{session}")
}

/// Why a tracker request was refused. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    /// A field is missing or wrong.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> TrackError {
    TrackError::Invalid(message.into())
}

/// Parses and checks a request body:
/// `{"site","session","events":[{"id","type","data"}, …]}`.
pub fn parse(body: &[u8]) -> Result<TrackBatch, TrackError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| TrackError::Malformed(e.to_string()))?;
    let Value::Object(mut envelope) = value else {
        return Err(invalid("the body must be a JSON object: {\"site\", \"session\", \"events\": [...]}"));
    };
    let site = token(envelope.remove("site"), "site")?;
    let session = token(envelope.remove("session"), "session")?;
    let items = match envelope.remove("events") {
        Some(Value::Array(items)) => items,
        None => return Err(invalid("events is missing (an array of {\"id\", \"type\", \"data\"})")),
        Some(_) => return Err(invalid("events must be an array of {\"id\", \"type\", \"data\"}")),
    };
    if let Some(unknown) = envelope.keys().next() {
        return Err(invalid(format!("{} is not a request field (fields: site, session, events)", clip(unknown))));
    }
    if items.is_empty() {
        return Err(invalid("events is empty: send at least one event"));
    }
    if items.len() > MAX_EVENTS {
        return Err(invalid(format!("events has {} entries; at most {MAX_EVENTS} per request", items.len())));
    }
    let mut ids = HashSet::new();
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let event = parse_event(item, &format!("events[{i}]"), &site, &session)?;
        if let Some(id) = event.id
            && !ids.insert(id)
        {
            return Err(invalid(format!("events[{i}].id {id} appears twice in this request")));
        }
        events.push(event);
    }
    Ok(TrackBatch { site, session, events })
}

fn parse_event(item: Value, at: &str, site: &str, session: &str) -> Result<NewEvent, TrackError> {
    let Value::Object(mut object) = item else {
        return Err(invalid(format!("{at} must be an object {{\"id\", \"type\", \"data\"}}")));
    };
    let id = match object.remove("id") {
        Some(Value::String(text)) => {
            Uuid::parse_str(&text).map_err(|_| invalid(format!("{at}.id {:?} is not a UUID", clip(&text))))?
        }
        None => return Err(invalid(format!("{at}.id is missing: each event needs a UUID so a resend is recognized"))),
        Some(_) => return Err(invalid(format!("{at}.id must be a UUID string"))),
    };
    let kind = match object.remove("type") {
        Some(Value::String(text)) => TrackType::parse(&text).ok_or_else(|| {
            invalid(format!(
                "{at}.type {:?} is not a tracker event type (PageViewed, ElementInteraction, FormSubmitted)",
                clip(&text)
            ))
        })?,
        None => return Err(invalid(format!("{at}.type is missing"))),
        Some(_) => return Err(invalid(format!("{at}.type must be a string"))),
    };
    let mut data = match object.remove("data") {
        Some(Value::Object(data)) => data,
        None => return Err(invalid(format!("{at}.data is missing (an object)"))),
        Some(_) => return Err(invalid(format!("{at}.data must be an object"))),
    };
    if let Some(unknown) = object.keys().next() {
        return Err(invalid(format!("{at}.{} is not an event field (fields: id, type, data)", clip(unknown))));
    }
    schema::check(kind, &mut data, &format!("{at}.data"))?;
    data.insert("site".into(), Value::String(site.to_string()));
    data.insert("session".into(), Value::String(session.to_string()));
    Ok(NewEvent {
        id: Some(id),
        event_type: kind.as_str().to_string(),
        data: Value::Object(data),
        metadata: Map::new(),
    })
}

/// A site or session id: 1–64 of `A-Z a-z 0-9 _ -`.
fn token(value: Option<Value>, field: &str) -> Result<String, TrackError> {
    let text = match value {
        Some(Value::String(text)) => text,
        None => return Err(invalid(format!("{field} is missing"))),
        Some(_) => return Err(invalid(format!("{field} must be a string"))),
    };
    if !is_token(&text) {
        return Err(invalid(format!(
            "{field} {:?} must be 1 to {MAX_TOKEN} characters of A-Z, a-z, 0-9, _ and -",
            clip(&text)
        )));
    }
    Ok(text)
}

/// Whether `text` is a valid site or session id.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TOKEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// At most 80 characters of client input, for error messages.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Which of `ids` the store already holds (in any stream). Used when a client resends events that
/// were stored together with new ones: the stored ones are dropped, the rest appended.
pub async fn stored_ids(store: &Store, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    let client = store.pool().get().await?;
    let rows = client.query("SELECT id FROM flightdeck.events WHERE id = ANY($1)", &[&ids]).await?;
    rows.iter().map(|row| row.try_get(0).map_err(StoreError::from)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(events: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"site": "shop", "session": "s-1", "events": events})).unwrap()
    }

    #[test]
    fn a_valid_batch_becomes_one_append() {
        let id = Uuid::now_v7();
        let batch = parse(&body(json!([
            {"id": id.to_string(), "type": "PageViewed", "data": {"path": "/", "title": "Home", "extra": [1]}}
        ])))
        .unwrap();
        assert_eq!(batch.stream(), "visit-shop:s-1");
        assert_eq!(batch.events[0].id, Some(id));
        assert_eq!(batch.events[0].event_type, "PageViewed");
        let data = &batch.events[0].data;
        assert_eq!((data["site"].as_str(), data["session"].as_str()), (Some("shop"), Some("s-1")));
        assert_eq!(data["extra"], json!([1]), "unknown fields are kept");
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let id = Uuid::now_v7().to_string();
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "the body must be a JSON object"),
            (json!({"session": "a", "events": []}), "site is missing"),
            (json!({"site": "a b", "session": "a", "events": []}), "site \"a b\" must be 1 to 64"),
            (json!({"site": "a", "session": "x:y", "events": []}), "session \"x:y\""),
            (json!({"site": "a", "session": "b", "events": []}), "events is empty"),
            (json!({"site": "a", "session": "b"}), "events is missing"),
            (json!({"site": "a", "session": "b", "events": [], "colour": 1}), "colour is not a request field"),
            (json!({"site": "a", "session": "b", "events": [1]}), "events[0] must be an object"),
            (
                json!({"site": "a", "session": "b", "events": [{"type": "PageViewed", "data": {}}]}),
                "events[0].id is missing",
            ),
            (
                json!({"site": "a", "session": "b", "events": [{"id": "x", "type": "PageViewed", "data": {}}]}),
                "events[0].id \"x\" is not a UUID",
            ),
            (
                json!({"site": "a", "session": "b", "events": [{"id": id, "type": "Clicked", "data": {}}]}),
                "events[0].type \"Clicked\" is not a tracker event type",
            ),
            (
                json!({"site": "a", "session": "b", "events": [{"id": id, "type": "PageViewed", "data": 1}]}),
                "events[0].data must be an object",
            ),
            (
                json!({"site": "a", "session": "b", "events": [{"id": id, "type": "PageViewed", "data": {"path": "/"}, "ts": 1}]}),
                "events[0].ts is not an event field",
            ),
            (
                json!({"site": "a", "session": "b", "events": [
                    {"id": id, "type": "PageViewed", "data": {"path": "/"}},
                    {"id": id, "type": "PageViewed", "data": {"path": "/"}}
                ]}),
                "appears twice",
            ),
        ];
        for (value, words) in cases {
            let err = parse(&serde_json::to_vec(&value).unwrap()).unwrap_err().to_string();
            assert!(err.contains(words), "{value}: {err}");
        }
        assert!(matches!(parse(b"{nope"), Err(TrackError::Malformed(_))));
        let many: Vec<Value> = (0..=MAX_EVENTS)
            .map(|_| json!({"id": Uuid::now_v7().to_string(), "type": "PageViewed", "data": {"path": "/"}}))
            .collect();
        assert!(parse(&body(Value::Array(many))).unwrap_err().to_string().contains("at most 100"));
    }

    #[test]
    fn tokens() {
        assert!(is_token("demo-shop_2"));
        for bad in ["", "a:b", "a b", "ü", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
