//! Entry points for the fuzz targets in `fuzz/` (`cargo +nightly fuzz run <target>`): the parsers
//! that read what a client sends, reachable without a server, a socket or a database.
//!
//! Not a stable API: hidden from the docs, and each function does exactly what the request path
//! does with its input before anything touches the store.

use crate::bus::{Batching, Filter, Start};
use crate::store::validate_append;

pub use super::ingest::IngestRequest;

use super::ApiError;

/// `GET /api/events`'s query string (`types=…&where=…&from=…&batch=…`), as the SSE handler reads it.
pub fn sse_query(query: &str) -> Result<(Filter, Start, Option<Batching>), ApiError> {
    let parsed = super::sse::parse_query(query)?;
    Ok((parsed.filter, parsed.start, parsed.batch))
}

/// One `/ws/events` text frame, as a WebSocket session decodes it: a `subscribe`'s filter (`None`
/// for `unsubscribe` and `ping`), or the `error` frame's code and message.
pub fn ws_frame(text: &str) -> Result<Option<Filter>, (&'static str, String)> {
    super::ws::decode_frame(text)
}

/// A `POST /api/events` body, parsed and then checked as the store checks an append before it
/// writes: the append, or the 400 the client gets.
pub fn ingest_body(body: &[u8]) -> Result<IngestRequest, ApiError> {
    let request = super::ingest::parse_body(body)?;
    validate_append(&request.site, &request.stream, &request.events).map_err(crate::store::StoreError::Invalid)?;
    Ok(request)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The fuzz targets' property that a refusal quotes little of the input (a 200 KB field name
    /// used to come back whole; seen while writing the targets, fixed before they ran).
    #[test]
    fn refusals_quote_little_of_the_input() {
        let huge = "k".repeat(200_000);
        let bodies = [
            json!({"stream": "s", "type": "A", "data": 1, huge.clone(): 1}),
            json!({"stream": "s", "type": "A", "data": 1, "id": huge.clone()}),
            json!([{"stream": "s", "type": "A", "data": 1}, {"stream": huge.clone(), "type": "A", "data": 1}]),
        ];
        for body in bodies {
            let err = ingest_body(&serde_json::to_vec(&body).unwrap()).unwrap_err();
            assert!(err.message.len() < 1024, "{} bytes", err.message.len());
        }
        let track = json!({"site": "s", "session": "x", "events": [], huge.clone(): 1});
        let err = crate::tracker::parse(&serde_json::to_vec(&track).unwrap()).unwrap_err();
        assert!(err.to_string().len() < 1024);
        for query in [format!("{huge}=1"), format!("batch={huge}")] {
            let err = sse_query(&query).unwrap_err();
            assert!(err.message.len() < 1024, "{} bytes", err.message.len());
        }
    }

    /// Found by schemathesis: PostgreSQL's jsonb writes numbers out in full, so f64::MAX comes back
    /// as 309 digits, which serde_json without `float_roundtrip` refused ("number out of range"):
    /// the event could not be read, and delivery stalled on it. Every number must read back as the
    /// value it was sent as, in either spelling.
    #[test]
    fn numbers_read_back_in_the_spelling_postgresql_uses() {
        let cases = [
            (format!("17976931348623157{}", "0".repeat(292)), f64::MAX),
            (format!("-0.{}20486909788123228", "0".repeat(119)), -2.048_690_978_812_323e-120),
            (format!("0.{}5", "0".repeat(323)), 5e-324),
        ];
        for (spelled, value) in cases {
            let read: Value = serde_json::from_str(&spelled).unwrap();
            assert_eq!(read.as_f64(), Some(value), "{spelled}");
        }
        let IngestRequest { events, .. } =
            ingest_body(br#"{"stream":"n","type":"T","data":[1.7976931348623157e308,-2.0486909788123228e-120]}"#)
                .unwrap();
        assert_eq!(events[0].data, json!([f64::MAX, -2.048_690_978_812_323e-120]));
    }
}
