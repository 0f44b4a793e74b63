//! An event as the bus hands it out: one allocation shared by every subscriber, with its JSON
//! envelope rendered at most once.
//!
//! Fan-out repeats per-subscriber work once per event per subscriber; at 100 subscribers,
//! serializing the envelope for each of them was a fifth of the server's CPU (docs/benchmarks.md).
//! Rendering lazily means an event no subscriber wants is never serialized, and one that a
//! hundred want is serialized once. The same goes for its Server-Sent Events frame: a hundred
//! streams write one shared buffer, not a hundred copies of it.

use std::ops::Deref;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::store::RecordedEvent;

/// A recorded event plus its cached wire form. Dereferences to the [`RecordedEvent`].
#[derive(Debug)]
pub struct Delivered {
    event: RecordedEvent,
    json: OnceLock<Bytes>,
    position: OnceLock<Box<str>>,
    sse: OnceLock<Bytes>,
}

impl Delivered {
    /// Wraps an event read from the store.
    pub fn new(event: RecordedEvent) -> Self {
        Delivered { event, json: OnceLock::new(), position: OnceLock::new(), sse: OnceLock::new() }
    }

    /// The event.
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }

    /// The envelope as compact JSON (one line: serde_json escapes newlines inside strings), the
    /// same bytes for every subscriber and transport.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            // Serializing a struct of strings, numbers and JSON values cannot fail.
            Bytes::from(serde_json::to_vec(&self.event).unwrap_or_default())
        })
    }
}

impl Delivered {
    /// The position as text (an SSE `id:`, a resume token), formatted once.
    pub fn position_text(&self) -> &str {
        self.position.get_or_init(|| self.event.position.to_string().into_boxed_str())
    }

    /// The event as one Server-Sent Events frame (`id: <position>`, `data: <envelope>`, a blank
    /// line), rendered once and shared by every stream that sends it alone.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let (id, json) = (self.position_text(), self.json());
            let mut frame = Vec::with_capacity(id.len() + json.len() + 13);
            frame.extend_from_slice(b"id: ");
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(b"\ndata: ");
            frame.extend_from_slice(json);
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        })
    }
}

impl Deref for Delivered {
    type Target = RecordedEvent;

    fn deref(&self) -> &RecordedEvent {
        &self.event
    }
}

impl From<RecordedEvent> for Delivered {
    fn from(event: RecordedEvent) -> Self {
        Delivered::new(event)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Position;

    #[test]
    fn json_is_the_envelope_and_is_rendered_once() {
        let event = RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: Position::START,
            stream: "s".into(),
            site: "shop".into(),
            version: 1,
            event_type: "T".into(),
            data: serde_json::json!({"text": "two\nlines"}),
            metadata: serde_json::json!({}),
            timestamp: chrono::Utc::now(),
        };
        let delivered = Delivered::new(event.clone());
        let json = delivered.json().clone();
        assert!(!json.contains(&b'\n'), "a frame's data must stay on one line");
        let back: RecordedEvent = serde_json::from_slice(&json).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["site"], "shop", "the envelope names the site");
        assert_eq!(back, event);
        // The same allocation both times.
        assert_eq!(delivered.json().as_ptr(), json.as_ptr());
    }
}
