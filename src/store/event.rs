//! What an event is, going in and coming out, and the rules its fields must follow.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::Position;

/// Longest stream id or type name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest site id, in bytes (the tracker's site-id rule, also the column's CHECK).
pub const MAX_SITE_BYTES: usize = 64;

/// The site of events whose writer names none: every event existing before sites did, and (until
/// tokens carry a site) every append that does not ask for another.
pub const DEFAULT_SITE: &str = "default";

/// An event to append. The stream and expected version belong to the append, not the event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Caller-chosen id, which makes a retried append idempotent; a UUIDv7 is generated if absent.
    pub id: Option<Uuid>,
    /// The event's type name, e.g. `PageViewed`.
    pub event_type: String,
    /// The event's body: any JSON value.
    pub data: Value,
    /// Correlation id, causation id, or whatever the caller adds.
    pub metadata: Map<String, Value>,
}

impl NewEvent {
    /// An event with a fresh id and empty metadata.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        NewEvent { id: None, event_type: event_type.into(), data, metadata: Map::new() }
    }

    /// Sets metadata from any JSON value, which must be an object.
    pub fn with_metadata(mut self, metadata: Value) -> Result<Self, ValidationError> {
        self.metadata = metadata_object(metadata)?;
        Ok(self)
    }

    /// Sets the caller-chosen id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }
}

/// Checks that metadata is a JSON object, the only shape the store accepts.
pub fn metadata_object(metadata: Value) -> Result<Map<String, Value>, ValidationError> {
    match metadata {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ValidationError::MetadataNotObject(json_kind(&other))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event as stored: the envelope every API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The event's id.
    pub id: Uuid,
    /// Its place in the global log.
    pub position: Position,
    /// The stream it belongs to.
    pub stream: String,
    /// The site (tenant) it belongs to, like every event of its stream. Envelopes written before
    /// sites existed read as `default`.
    #[serde(default = "default_site")]
    pub site: String,
    /// Its version within the stream: 1, 2, …
    pub version: u64,
    /// Its type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its body.
    pub data: Value,
    /// Its metadata (a JSON object).
    pub metadata: Value,
    /// When it was appended (UTC).
    pub timestamp: DateTime<Utc>,
}

/// What an append stored (or, for a retried append, had stored before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    /// The event's id.
    pub id: Uuid,
    /// Its place in the global log.
    pub position: Position,
    /// The stream it was appended to.
    pub stream: String,
    /// The site of the stream (and so of the event).
    #[serde(default = "default_site")]
    pub site: String,
    /// Its version within the stream.
    pub version: u64,
}

fn default_site() -> String {
    DEFAULT_SITE.to_string()
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The events, in the order given.
    pub events: Vec<AppendedEvent>,
    /// True when every event was already stored by an earlier identical append: nothing new was
    /// written.
    pub already_stored: bool,
}

/// The stream state an append requires, checked atomically with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The SQL function's encoding: NULL for any, 0 for no stream, N for exactly N.
    pub(crate) fn to_sql(self) -> Option<i64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no-stream"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(ExpectedVersion::Any),
            "no-stream" | "none" => Ok(ExpectedVersion::NoStream),
            n => n
                .parse::<u64>()
                .map(|n| if n == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(n) })
                .map_err(|_| ValidationError::ExpectedVersion(s.chars().take(40).collect())),
        }
    }
}

/// Input the store refuses before touching the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// An empty stream id or type name.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A stream id or type name over [`MAX_NAME_BYTES`].
    #[error("{field} is {len} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A control character (newline, tab, NUL, …) in a stream id or type name.
    #[error("{0} contains a control character (such as a newline, tab or NUL), which is not allowed")]
    ControlCharacter(&'static str),
    /// Metadata that is not a JSON object.
    #[error("metadata must be a JSON object, not {0}")]
    MetadataNotObject(&'static str),
    /// An append with no events.
    #[error("an append needs at least one event")]
    NoEvents,
    /// The same event id twice in one append.
    #[error("event id {0} appears twice in one append")]
    DuplicateId(Uuid),
    /// Not `any`, `no-stream` or a number.
    #[error("expected version {0:?} is not `any`, `no-stream` or a version number")]
    ExpectedVersion(String),
    /// A JSON value the database cannot store (e.g. a string containing `\u0000`).
    #[error("{0}")]
    Unstorable(String),
    /// A site id that breaks the site-id rule (at most 80 characters of it are kept).
    #[error("site {0:?} must be 1 to {MAX_SITE_BYTES} characters of A-Z, a-z, 0-9, _ and -")]
    Site(String),
}

/// Whether `site` follows the site-id rule: 1–64 of `A-Z a-z 0-9 _ -`, the same rule as the
/// tracker's site ids and the `site` column's CHECK, so a valid id is never refused by the database.
pub fn is_valid_site(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= MAX_SITE_BYTES
        && site.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a site id (see [`is_valid_site`]).
pub fn validate_site(site: &str) -> Result<(), ValidationError> {
    if is_valid_site(site) { Ok(()) } else { Err(ValidationError::Site(site.chars().take(80).collect())) }
}

/// Checks a stream id or type name: 1–255 bytes, no control characters.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty(field));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(ValidationError::TooLong { field, len: value.len() });
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter(field));
    }
    Ok(())
}

/// Gives every event an id (a UUIDv7 where missing), once per append, so that a retry after a lost
/// answer is recognized as the same append. Borrows when every id is already set.
pub(crate) fn with_ids(events: &[NewEvent]) -> std::borrow::Cow<'_, [NewEvent]> {
    if events.iter().all(|e| e.id.is_some()) {
        return events.into();
    }
    events.iter().map(|e| NewEvent { id: Some(e.id.unwrap_or_else(Uuid::now_v7)), ..e.clone() }).collect()
}

/// Checks a whole append before it is sent.
pub(crate) fn validate_append(site: &str, stream: &str, events: &[NewEvent]) -> Result<(), ValidationError> {
    validate_site(site)?;
    validate_name("stream id", stream)?;
    if events.is_empty() {
        return Err(ValidationError::NoEvents);
    }
    let mut ids = std::collections::HashSet::new();
    for event in events {
        validate_name("event type", &event.event_type)?;
        if let Some(id) = event.id
            && !ids.insert(id)
        {
            return Err(ValidationError::DuplicateId(id));
        }
        if contains_nul(&event.data) || contains_nul(&Value::Object(event.metadata.clone())) {
            return Err(ValidationError::Unstorable(
                "JSON strings containing \\u0000 cannot be stored (PostgreSQL's jsonb refuses them)".into(),
            ));
        }
    }
    Ok(())
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        let long = "x".repeat(256);
        let cases: [(&str, Option<&str>); 6] = [
            ("orders-1", None),
            ("", Some("is empty")),
            (&long, Some("256 bytes long")),
            ("a\nb", Some("control character")),
            ("tab\there", Some("control character")),
            ("ünïcødé/ok", None),
        ];
        for (value, want) in cases {
            let got = validate_name("stream id", value).err().map(|e| e.to_string());
            match want {
                None => assert_eq!(got, None, "{value:?}"),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{value:?}: {got:?}"),
            }
        }
        assert!(validate_name("stream id", &"é".repeat(127)).is_ok());
        assert!(validate_name("stream id", &"é".repeat(128)).is_err());
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(metadata_object(json!({"a": 1})).is_ok());
        assert_eq!(metadata_object(json!([1])), Err(ValidationError::MetadataNotObject("an array")));
        assert_eq!(metadata_object(json!("x")), Err(ValidationError::MetadataNotObject("a string")));
    }

    #[test]
    fn expected_versions_parse() {
        assert_eq!("any".parse(), Ok(ExpectedVersion::Any));
        assert_eq!("no-stream".parse(), Ok(ExpectedVersion::NoStream));
        assert_eq!("0".parse(), Ok(ExpectedVersion::NoStream));
        assert_eq!("7".parse(), Ok(ExpectedVersion::Exact(7)));
        assert!("-1".parse::<ExpectedVersion>().is_err());
    }

    #[test]
    fn appends_are_checked_as_a_whole() {
        let id = Uuid::now_v7();
        let dup = vec![NewEvent::new("A", json!(1)).with_id(id), NewEvent::new("B", json!(2)).with_id(id)];
        assert_eq!(validate_append(DEFAULT_SITE, "s", &dup), Err(ValidationError::DuplicateId(id)));
        assert_eq!(validate_append(DEFAULT_SITE, "s", &[]), Err(ValidationError::NoEvents));
        let nul = vec![NewEvent::new("A", json!({"k": "a\u{0}b"}))];
        assert!(matches!(validate_append(DEFAULT_SITE, "s", &nul), Err(ValidationError::Unstorable(_))));
        assert!(validate_append(DEFAULT_SITE, "s", &[NewEvent::new("A", json!(null))]).is_ok());
    }

    #[test]
    fn sites_follow_the_tracker_rule() {
        for good in ["default", "shop-1", "A_b", &"x".repeat(64)] {
            assert!(validate_site(good).is_ok(), "{good}");
            assert!(crate::tracker::is_token(good), "the tracker agrees on {good}");
        }
        for bad in ["", "a b", "a:b", "ü", "a\n", &"x".repeat(65)] {
            assert!(matches!(validate_site(bad), Err(ValidationError::Site(_))), "{bad:?}");
            assert!(!crate::tracker::is_token(bad), "the tracker agrees on {bad:?}");
        }
        let long = "y".repeat(500);
        assert!(validate_site(&long).err().is_some_and(|e| e.to_string().len() < 200), "long input is clipped");
        assert!(validate_append("a b", "s", &[NewEvent::new("A", json!(1))]).is_err());
    }
}
