//! Subscription filters: `FieldMatch::parse` (the SSE `where=data.k:v` form) and the WebSocket
//! `where` object (`FieldMatch::new` per key). Never panics; a test that parses names a non-empty
//! path of non-empty keys, and an event whose data holds the value at that path matches it.
#![no_main]

use flightdeck::bus::{FieldMatch, Filter};
use flightdeck::store::{Position, RecordedEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Longest refusal message: client input is quoted at most 200 characters (each escaped to at most
/// 10 bytes) beside the explanation. Inputs grow to 4096 bytes, so a message that echoed a whole
/// input would break this.
const MAX_MESSAGE: usize = 3000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tests: Vec<FieldMatch> = if text.starts_with('{') {
        // The WebSocket form: {"data.<path>": <any JSON value>, …}.
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else { return };
        object
            .into_iter()
            .filter_map(|(path, value)| match FieldMatch::new(&path, value) {
                Ok(test) => Some(test),
                Err(err) => {
                    assert!(err.to_string().len() <= MAX_MESSAGE, "the error echoes too much input");
                    None
                }
            })
            .collect()
    } else {
        match FieldMatch::parse(text) {
            Ok(test) => {
                assert!(matches!(test.value, Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null));
                let split = text.find([':', '=']).unwrap();
                assert_eq!(format!("data.{}", test.path.join(".")), &text[..split], "the path is what was written");
                vec![test]
            }
            Err(err) => {
                assert!(err.to_string().len() <= MAX_MESSAGE, "the error echoes too much input");
                return;
            }
        }
    };
    for test in tests {
        assert!(!test.path.is_empty() && test.path.iter().all(|key| !key.is_empty()), "{test:?}");
        // Data that holds the value at the path matches; data without it does not.
        let mut data = test.value.clone();
        for key in test.path.iter().rev() {
            let mut level = Map::new();
            level.insert(key.clone(), data);
            data = Value::Object(level);
        }
        let filter = Filter { fields: vec![test], ..Filter::default() };
        assert!(filter.matches(&event(data)), "{filter:?}");
        assert!(!filter.matches(&event(Value::Null)), "{filter:?}");
    }
});

fn event(data: Value) -> RecordedEvent {
    RecordedEvent {
        id: uuid::Uuid::nil(),
        position: Position::START,
        stream: "s".into(),
        site: "default".into(),
        version: 1,
        event_type: "T".into(),
        data,
        metadata: Value::Object(Map::new()),
        timestamp: chrono::DateTime::UNIX_EPOCH,
    }
}
