//! Ingestion bodies: `POST /api/events` (parse, then the store's checks before it writes) when the
//! first byte is even, `POST /api/track` (the tracker's batch rules) when it is odd. Never panics; a
//! refusal is a 400 with a small message; what is accepted is storable as described, and its JSON
//! survives a write and a read unchanged (the jsonb round trip, in miniature).
#![no_main]

use std::collections::HashSet;

use flightdeck::http::fuzzing;
use flightdeck::store::{NewEvent, validate_name, validate_site};
use flightdeck::tracker::{self, MAX_EVENTS, STREAM_PREFIX, TrackType};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Longest refusal message: client input is quoted at most 200 characters (each escaped to at most
/// 10 bytes) beside the explanation. Inputs grow to 4096 bytes, so a message that echoed a whole
/// input would break this.
const MAX_MESSAGE: usize = 3000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    if selector % 2 == 0 {
        match fuzzing::ingest_body(body) {
            Ok(fuzzing::IngestRequest { site, stream, events, .. }) => {
                assert!(validate_name("stream id", &stream).is_ok());
                assert!(validate_site(&site).is_ok());
                assert!(!events.is_empty());
                let mut ids = HashSet::new();
                for event in &events {
                    assert!(validate_name("event type", &event.event_type).is_ok());
                    assert!(event.id.is_none_or(|id| ids.insert(id)), "an id twice");
                    round_trips(event);
                }
            }
            Err(err) => {
                assert_eq!(err.status, 400, "{err:?}");
                assert!(
                    err.message.len() <= MAX_MESSAGE,
                    "the error echoes too much input: {} bytes",
                    err.message.len()
                );
            }
        }
    } else {
        match tracker::parse(body) {
            Ok(batch) => {
                assert!(batch.stream().starts_with(STREAM_PREFIX));
                assert!((1..=MAX_EVENTS).contains(&batch.events.len()));
                let mut ids = HashSet::new();
                for event in &batch.events {
                    assert!(event.id.is_some_and(|id| ids.insert(id)), "an id missing or twice");
                    assert!(TrackType::parse(&event.event_type).is_some());
                    assert_eq!(event.data["site"].as_str(), Some(batch.site.as_str()));
                    assert_eq!(event.data["session"].as_str(), Some(batch.session.as_str()));
                    round_trips(event);
                }
            }
            Err(err) => assert!(err.to_string().len() <= MAX_MESSAGE, "the error echoes too much input"),
        }
    }
});

/// What is stored is what is read back: the event's JSON, written out and parsed again, is equal.
fn round_trips(event: &NewEvent) {
    let text = serde_json::to_string(&event.data).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), event.data, "{text}");
}
