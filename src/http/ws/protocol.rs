//! The `/ws/events` requests: what a client may send and how each request is checked.
//!
//! Kept apart from the socket loop so that every rule a client can break is a plain function with
//! unit tests, and so that each refusal names the field, the rule and an example of what would be
//! accepted (a typo must not silently mean something else).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::bus::{Batching, FieldMatch, Filter};
use crate::store::{Position, validate_site};

/// Longest subscription id a client may choose, in bytes.
pub(super) const MAX_ID_LEN: usize = 128;

/// What a client asked for.
#[derive(Debug, PartialEq)]
pub(super) enum Request {
    /// Start a subscription.
    Subscribe(Subscribe),
    /// End the subscription with this id.
    Unsubscribe {
        /// The subscription's id.
        id: String,
    },
    /// An application-level ping (answered by a `pong` op, echoing the id if any).
    Ping {
        /// Echoed in the answer.
        id: Option<String>,
    },
}

/// A `subscribe` request, checked.
#[derive(Debug, PartialEq)]
pub(super) struct Subscribe {
    /// The client's name for the subscription, unique on its socket.
    pub id: String,
    /// Which events.
    pub filter: Filter,
    /// Where to start.
    pub from: StartAt,
    /// `"batch":{"maxEvents":N,"maxDelayMs":T}`: events coalesced into `batch` frames.
    pub batch: Option<Batching>,
}

/// Where a subscription starts (`"from"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartAt {
    /// `"now"` (the default): only events appended from now on.
    Now,
    /// `"start"`: the whole log, then live.
    Start,
    /// A position: the events after it, then live.
    After(Position),
}

/// Machine-readable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    /// The frame is not JSON.
    InvalidJson,
    /// JSON, but not a well-formed request (not an object, missing or ill-typed `op`/`id`, unknown
    /// field).
    InvalidRequest,
    /// An `op` the server does not know.
    UnknownOp,
    /// `subscribe` with an id already subscribed on this socket.
    DuplicateId,
    /// `unsubscribe` with an id not subscribed on this socket.
    UnknownId,
    /// `types`, `sites`, `channels`, `stream`, `streamPrefix` or `where` cannot be used.
    InvalidFilter,
    /// `from` is not `now`, `start` or a position.
    InvalidPosition,
    /// `batch` is out of range or malformed.
    InvalidBatch,
    /// A binary frame: the protocol is JSON text frames.
    BinaryFrame,
    /// A text frame over the application limit.
    FrameTooLarge,
    /// The socket has as many subscriptions as it may have.
    TooManySubscriptions,
    /// A filter list (`types`, `sites`, `channels`, `where`) has more entries than allowed.
    TooManyFilters,
    /// `subscribe` asks only for sites the socket's token does not cover.
    Forbidden,
}

impl Code {
    /// The code as it appears on the wire.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Code::InvalidJson => "invalid_json",
            Code::InvalidRequest => "invalid_request",
            Code::UnknownOp => "unknown_op",
            Code::DuplicateId => "duplicate_id",
            Code::UnknownId => "unknown_id",
            Code::InvalidFilter => "invalid_filter",
            Code::InvalidPosition => "invalid_position",
            Code::InvalidBatch => "invalid_batch",
            Code::BinaryFrame => "binary_frame",
            Code::FrameTooLarge => "frame_too_large",
            Code::TooManySubscriptions => "too_many_subscriptions",
            Code::TooManyFilters => "too_many_filters",
            Code::Forbidden => "forbidden",
        }
    }
}

/// A refused frame: answered with an `error` frame; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub(super) struct ProtocolError {
    /// What kind of mistake.
    pub code: Code,
    /// The id of the request, when it had a usable one.
    pub id: Option<String>,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl ProtocolError {
    pub(super) fn new(code: Code, id: Option<&str>, message: impl Into<String>) -> Self {
        ProtocolError { code, id: id.map(str::to_string), message: message.into() }
    }
}

/// Parses and checks one text frame.
pub(super) fn parse(text: &str) -> Result<Request, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            Code::InvalidJson,
            None,
            format!("the frame is not JSON ({e}); send e.g. {{\"op\":\"ping\"}}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ProtocolError::new(
            Code::InvalidRequest,
            None,
            "a frame must be a JSON object with an \"op\", e.g. {\"op\":\"ping\"}",
        ));
    };
    let id = match fields.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.is_empty() => {
            return Err(ProtocolError::new(Code::InvalidRequest, None, "id must not be empty"));
        }
        Some(Value::String(id)) if id.len() > MAX_ID_LEN => {
            return Err(ProtocolError::new(
                Code::InvalidRequest,
                None,
                format!("id is {} bytes long; at most {MAX_ID_LEN} are allowed", id.len()),
            ));
        }
        Some(Value::String(id)) => Some(id.as_str()),
        Some(other) => {
            return Err(ProtocolError::new(
                Code::InvalidRequest,
                None,
                format!("id must be a string, e.g. \"sub-1\", not {}", kind(other)),
            ));
        }
    };
    let op = match fields.get("op") {
        Some(Value::String(op)) => op.as_str(),
        _ => {
            return Err(ProtocolError::new(
                Code::InvalidRequest,
                id,
                "op is missing or not a string: expected \"subscribe\", \"unsubscribe\" or \"ping\"",
            ));
        }
    };
    match op {
        "subscribe" => subscribe(&fields, required(id, "subscribe")?).map(Request::Subscribe),
        "unsubscribe" => {
            let id = required(id, "unsubscribe")?;
            only(&fields, &["op", "id"], Some(id), "unsubscribe")?;
            Ok(Request::Unsubscribe { id: id.to_string() })
        }
        "ping" => {
            only(&fields, &["op", "id"], id, "ping")?;
            Ok(Request::Ping { id: id.map(str::to_string) })
        }
        other => Err(ProtocolError::new(
            Code::UnknownOp,
            id,
            format!("unknown op {:?}: expected \"subscribe\", \"unsubscribe\" or \"ping\"", truncate(other)),
        )),
    }
}

const SUBSCRIBE_FIELDS: [&str; 10] =
    ["op", "id", "types", "sites", "channels", "stream", "streamPrefix", "where", "from", "batch"];

fn subscribe(fields: &Map<String, Value>, id: &str) -> Result<Subscribe, ProtocolError> {
    only(fields, &SUBSCRIBE_FIELDS, Some(id), "subscribe")?;
    let filter_error = |message: String| ProtocolError::new(Code::InvalidFilter, Some(id), message);
    let mut filter = Filter::default();
    for (field, list) in
        [("types", &mut filter.types), ("sites", &mut filter.sites), ("channels", &mut filter.channels)]
    {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(name) if !name.is_empty() => list.push(name.clone()),
                        _ => return Err(filter_error(format!("{field}[{i}] must be a non-empty string"))),
                    }
                }
            }
            Some(other) => {
                return Err(filter_error(format!(
                    "{field} must be an array of names, e.g. [\"PageViewed\"], not {}",
                    kind(other)
                )));
            }
        }
    }
    for (i, site) in filter.sites.iter().enumerate() {
        validate_site(site).map_err(|e| filter_error(format!("sites[{i}]: {e}")))?;
    }
    for (field, slot) in [("stream", &mut filter.stream), ("streamPrefix", &mut filter.stream_prefix)] {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() => *slot = Some(s.clone()),
            Some(other) => {
                return Err(filter_error(format!("{field} must be a non-empty string, not {}", kind(other))));
            }
        }
    }
    match fields.get("where") {
        None | Some(Value::Null) => {}
        Some(Value::Object(tests)) => {
            for (path, value) in tests {
                let test = FieldMatch::new(path, value.clone()).map_err(|e| filter_error(format!("where: {e}")))?;
                filter.fields.push(test);
            }
        }
        Some(other) => {
            return Err(filter_error(format!(
                "where must be an object of field paths to values, e.g. {{\"data.pageId\":\"home\"}}, not {}",
                kind(other)
            )));
        }
    }
    let from = match fields.get("from") {
        None | Some(Value::Null) => StartAt::Now,
        Some(Value::String(s)) if s == "now" => StartAt::Now,
        Some(Value::String(s)) if s == "start" => StartAt::Start,
        Some(Value::String(s)) => StartAt::After(
            s.parse().map_err(|e| ProtocolError::new(Code::InvalidPosition, Some(id), format!("from: {e}")))?,
        ),
        Some(other) => {
            return Err(ProtocolError::new(
                Code::InvalidPosition,
                Some(id),
                format!("from must be \"now\", \"start\" or a position string, not {}", kind(other)),
            ));
        }
    };
    let batch = match fields.get("batch") {
        None | Some(Value::Null) => None,
        Some(value) => Some(batch(value).map_err(|message| {
            ProtocolError::new(
                Code::InvalidBatch,
                Some(id),
                format!("batch: {message} (e.g. {{\"maxEvents\":100,\"maxDelayMs\":50}})"),
            )
        })?),
    };
    Ok(Subscribe { id: id.to_string(), filter, from, batch })
}

/// `{"maxEvents":N,"maxDelayMs":T}` (T defaults to 0: only what is ready).
fn batch(value: &Value) -> Result<Batching, String> {
    let Value::Object(fields) = value else {
        return Err(format!("must be an object, not {}", kind(value)));
    };
    if let Some(other) = fields.keys().find(|k| !matches!(k.as_str(), "maxEvents" | "maxDelayMs")) {
        return Err(format!("unknown field {:?} (known: maxEvents, maxDelayMs)", truncate(other)));
    }
    let max_events = match fields.get("maxEvents") {
        Some(n) => n.as_u64().ok_or("maxEvents must be a whole number")?,
        None => return Err("maxEvents is missing".into()),
    };
    let max_delay = match fields.get("maxDelayMs") {
        Some(n) => n.as_u64().ok_or("maxDelayMs must be a whole number of milliseconds")?,
        None => 0,
    };
    Batching::new(usize::try_from(max_events).unwrap_or(usize::MAX), Duration::from_millis(max_delay))
}

fn required<'a>(id: Option<&'a str>, op: &str) -> Result<&'a str, ProtocolError> {
    id.ok_or_else(|| {
        ProtocolError::new(
            Code::InvalidRequest,
            None,
            format!("{op} needs an \"id\": a string you choose, e.g. \"sub-1\""),
        )
    })
}

/// Refuses fields outside `known` (a typo such as `"form"` must not silently mean `from: now`).
fn only(fields: &Map<String, Value>, known: &[&str], id: Option<&str>, op: &str) -> Result<(), ProtocolError> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(other) => Err(ProtocolError::new(
            Code::InvalidRequest,
            id,
            format!("unknown field {:?} in {op} (known: {})", truncate(other), known.join(", ")),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(text: &str) -> ProtocolError {
        parse(text).unwrap_err()
    }

    #[test]
    fn a_full_subscribe_parses() {
        let request = parse(
            r#"{"op":"subscribe","id":"a","types":["PageViewed"],"sites":["shop","blog"],"channels":["web"],"stream":"s-1",
               "streamPrefix":"s-","where":{"data.pageId":"home","data.n":3},
               "from":"0000000000000002000000000000000a","batch":{"maxEvents":10,"maxDelayMs":50}}"#,
        )
        .unwrap();
        let Request::Subscribe(sub) = request else { panic!("{request:?}") };
        assert_eq!(sub.id, "a");
        assert_eq!(sub.filter.types, vec!["PageViewed"]);
        assert_eq!(sub.filter.channels, vec!["web"]);
        assert_eq!(sub.filter.sites, vec!["shop", "blog"]);
        assert_eq!(sub.filter.stream.as_deref(), Some("s-1"));
        assert_eq!(sub.filter.stream_prefix.as_deref(), Some("s-"));
        assert_eq!(sub.filter.fields.len(), 2);
        let n = sub.filter.fields.iter().find(|f| f.path == ["n"]).unwrap();
        assert_eq!(n.value, json!(3), "where values are JSON values");
        assert_eq!(sub.from, StartAt::After(Position { xid: 2, seq: 10 }));
        assert_eq!(sub.batch, Some(Batching::new(10, Duration::from_millis(50)).unwrap()));
        let Request::Subscribe(plain) = parse(r#"{"op":"subscribe","id":"b"}"#).unwrap() else { panic!() };
        assert_eq!((plain.from, plain.batch, plain.filter), (StartAt::Now, None, Filter::default()));
        assert_eq!(
            parse(r#"{"op":"subscribe","id":"c","from":"start"}"#).map(|r| match r {
                Request::Subscribe(s) => s.from,
                _ => StartAt::Now,
            }),
            Ok(StartAt::Start)
        );
    }

    #[test]
    fn other_ops_parse() {
        assert_eq!(parse(r#"{"op":"unsubscribe","id":"a"}"#).unwrap(), Request::Unsubscribe { id: "a".into() });
        assert_eq!(parse(r#"{"op":"ping"}"#).unwrap(), Request::Ping { id: None });
        assert_eq!(parse(r#"{"op":"ping","id":"p"}"#).unwrap(), Request::Ping { id: Some("p".into()) });
    }

    #[test]
    fn every_mistake_gets_its_code_the_id_and_a_useful_message() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let long_id = format!(r#"{{"op":"subscribe","id":"{long}"}}"#);
        // (frame, code, id carried back, words in the message)
        let cases: Vec<(&str, Code, Option<&str>, &str)> = vec![
            ("{nope", Code::InvalidJson, None, "not JSON"),
            ("[1]", Code::InvalidRequest, None, "JSON object"),
            (r#"{"id":"a"}"#, Code::InvalidRequest, Some("a"), "op is missing"),
            (r#"{"op":"dance","id":"a"}"#, Code::UnknownOp, Some("a"), "\"dance\""),
            (r#"{"op":"subscribe"}"#, Code::InvalidRequest, None, "needs an \"id\""),
            (r#"{"op":"subscribe","id":7}"#, Code::InvalidRequest, None, "id must be a string"),
            (r#"{"op":"subscribe","id":""}"#, Code::InvalidRequest, None, "empty"),
            (&long_id, Code::InvalidRequest, None, "at most 128"),
            (
                r#"{"op":"subscribe","id":"a","form":"start"}"#,
                Code::InvalidRequest,
                Some("a"),
                "unknown field \"form\"",
            ),
            (r#"{"op":"subscribe","id":"a","types":"A"}"#, Code::InvalidFilter, Some("a"), "array of names"),
            (r#"{"op":"subscribe","id":"a","types":["A",1]}"#, Code::InvalidFilter, Some("a"), "types[1]"),
            (r#"{"op":"subscribe","id":"a","stream":5}"#, Code::InvalidFilter, Some("a"), "stream must be"),
            (r#"{"op":"subscribe","id":"a","sites":"shop"}"#, Code::InvalidFilter, Some("a"), "array of names"),
            (r#"{"op":"subscribe","id":"a","sites":["ok","a b"]}"#, Code::InvalidFilter, Some("a"), "sites[1]: site"),
            (r#"{"op":"subscribe","id":"a","where":{"pageId":"x"}}"#, Code::InvalidFilter, Some("a"), "data.<field>"),
            (r#"{"op":"subscribe","id":"a","where":"data.a:b"}"#, Code::InvalidFilter, Some("a"), "must be an object"),
            (r#"{"op":"subscribe","id":"a","from":"yesterday"}"#, Code::InvalidPosition, Some("a"), "32 hexadecimal"),
            (r#"{"op":"subscribe","id":"a","from":5}"#, Code::InvalidPosition, Some("a"), "\"now\", \"start\""),
            (r#"{"op":"subscribe","id":"a","batch":{"maxEvents":0}}"#, Code::InvalidBatch, Some("a"), "between 1"),
            (r#"{"op":"subscribe","id":"a","batch":{"maxDelayMs":5}}"#, Code::InvalidBatch, Some("a"), "missing"),
            (
                r#"{"op":"subscribe","id":"a","batch":{"maxEvents":5,"maxDelayMs":60000}}"#,
                Code::InvalidBatch,
                Some("a"),
                "at most 10000",
            ),
            (r#"{"op":"subscribe","id":"a","batch":[5]}"#, Code::InvalidBatch, Some("a"), "an object"),
            (r#"{"op":"unsubscribe"}"#, Code::InvalidRequest, None, "needs an \"id\""),
            (r#"{"op":"unsubscribe","id":"a","x":1}"#, Code::InvalidRequest, Some("a"), "unknown field \"x\""),
        ];
        for (frame, code, id, words) in cases {
            let e = err(frame);
            assert_eq!(e.code, code, "{frame}: {e}");
            assert_eq!(e.id.as_deref(), id, "{frame}: {e}");
            assert!(e.message.contains(words), "{frame}: {:?} lacks {words:?}", e.message);
        }
    }
}
