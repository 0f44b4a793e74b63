//! The frames the server sends on `/ws/events`.
//!
//! Apart from request parsing because the hot path lives here: event frames are built by
//! concatenating the envelope bytes that the bus renders once for all subscribers
//! (`Delivered::json`) with a per-subscription prefix rendered once, never by serializing an event
//! again per subscriber (that was a fifth of the server's CPU for SSE).

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use serde_json::{Value, json};

use crate::bus::Delivered;
use crate::store::Position;

use super::protocol::ProtocolError;

/// A text message from JSON the server built.
fn text(value: Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

/// `{"op":"subscribed","id":..,"position":..}`: `position` is where the subscription starts, the
/// position to resume from if no event of it arrives before the connection is lost.
pub(super) fn subscribed(id: &str, position: Position) -> Message {
    text(json!({"op": "subscribed", "id": id, "position": position.to_string()}))
}

/// `{"op":"unsubscribed","id":..}`.
pub(super) fn unsubscribed(id: &str) -> Message {
    text(json!({"op": "unsubscribed", "id": id}))
}

/// `{"op":"pong"}`, with the ping's id if it had one.
pub(super) fn pong(id: Option<&str>) -> Message {
    match id {
        Some(id) => text(json!({"op": "pong", "id": id})),
        None => Message::Text(Utf8Bytes::from_static(r#"{"op":"pong"}"#)),
    }
}

/// `{"op":"error","id":..,"code":..,"message":..}` (`id` only when the frame had one).
pub(super) fn error(err: &ProtocolError) -> Message {
    let mut value = json!({"op": "error", "code": err.code.as_str(), "message": err.message});
    if let (Some(id), Value::Object(map)) = (&err.id, &mut value) {
        map.insert("id".into(), Value::String(id.clone()));
    }
    text(value)
}

/// One subscription as its frames name it, with the constant parts of its frames rendered once.
#[derive(Debug)]
pub(super) struct Target {
    /// The client's id.
    pub id: String,
    /// `{"op":"event","sub":<id>,"event":` (or `…"batch"…"events":[` when batched).
    prefix: Vec<u8>,
    batched: bool,
}

impl Target {
    pub(super) fn new(id: &str, batched: bool) -> Arc<Self> {
        let sub = Value::String(id.to_string()).to_string();
        let prefix = if batched {
            format!(r#"{{"op":"batch","sub":{sub},"events":["#)
        } else {
            format!(r#"{{"op":"event","sub":{sub},"event":"#)
        };
        Arc::new(Target { id: id.to_string(), prefix: prefix.into_bytes(), batched })
    }

    /// The frames for a chunk of this subscription's events: one `event` frame per event, or one
    /// `batch` frame holding them all.
    pub(super) fn render(&self, events: &[Arc<Delivered>]) -> Vec<Message> {
        if self.batched {
            let size = self.prefix.len() + 2 + events.iter().map(|e| e.json().len() + 1).sum::<usize>();
            let mut out = Vec::with_capacity(size);
            out.extend_from_slice(&self.prefix);
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(event.json());
            }
            out.extend_from_slice(b"]}");
            frame(out).into_iter().collect()
        } else {
            events
                .iter()
                .filter_map(|event| {
                    let json = event.json();
                    let mut out = Vec::with_capacity(self.prefix.len() + json.len() + 1);
                    out.extend_from_slice(&self.prefix);
                    out.extend_from_slice(json);
                    out.push(b'}');
                    frame(out)
                })
                .collect()
        }
    }
}

/// A text message from bytes that are JSON by construction (serde_json output and ASCII).
fn frame(bytes: Vec<u8>) -> Option<Message> {
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => Some(Message::Text(text)),
        Err(err) => {
            tracing::error!(%err, "an event frame is not UTF-8; not sent");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::ws::protocol::Code;

    #[test]
    fn error_frames_carry_the_id_only_when_known() {
        let with = error(&ProtocolError::new(Code::UnknownId, Some("a"), "no such subscription"));
        let value: Value = serde_json::from_str(with.to_text().unwrap()).unwrap();
        assert_eq!(value, json!({"op": "error", "id": "a", "code": "unknown_id", "message": "no such subscription"}));
        let without = error(&ProtocolError::new(Code::BinaryFrame, None, "text only"));
        let value: Value = serde_json::from_str(without.to_text().unwrap()).unwrap();
        assert!(value.get("id").is_none(), "{value}");
    }

    #[test]
    fn event_and_batch_frames_wrap_the_shared_envelope() {
        let event = |n: i64| {
            Arc::new(Delivered::new(crate::store::RecordedEvent {
                id: uuid::Uuid::now_v7(),
                position: Position { xid: 1, seq: n as u64 },
                stream: "s".into(),
                site: "default".into(),
                version: n as u64,
                event_type: "T".into(),
                data: json!({"n": n, "quote": "\"hi\""}),
                metadata: json!({}),
                timestamp: chrono::Utc::now(),
            }))
        };
        let events = vec![event(1), event(2)];
        let single = Target::new("sub \"1\"", false).render(&events);
        assert_eq!(single.len(), 2);
        for (frame, event) in single.iter().zip(&events) {
            let value: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            assert_eq!(value["op"], "event");
            assert_eq!(value["sub"], "sub \"1\"");
            assert_eq!(value["event"], serde_json::from_slice::<Value>(event.json()).unwrap());
        }
        let batch = Target::new("b", true).render(&events);
        assert_eq!(batch.len(), 1);
        let value: Value = serde_json::from_str(batch[0].to_text().unwrap()).unwrap();
        assert_eq!(value["op"], "batch");
        assert_eq!(value["sub"], "b");
        assert_eq!(
            value["events"].as_array().unwrap().iter().map(|e| e["data"]["n"].clone()).collect::<Vec<_>>(),
            vec![json!(1), json!(2)]
        );
    }
}
