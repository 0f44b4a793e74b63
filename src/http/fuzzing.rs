//! Entry points for the fuzz targets in `fuzz/` (`cargo +nightly fuzz run <target>`): the parsers
//! that read what a client sends, reachable without a server, a socket or a database.
//!
//! Not a stable API: hidden from the docs, and each function does exactly what the request path
//! does with its input before anything touches the store.

use crate::bus::{Batching, Filter, Start};
use crate::store::{ExpectedVersion, NewEvent, validate_append};

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
/// writes: `(stream, expected version, events)` or the 400 the client gets.
pub fn ingest_body(body: &[u8]) -> Result<(String, ExpectedVersion, Vec<NewEvent>), ApiError> {
    let (stream, expected, events) = super::ingest::parse_body(body)?;
    validate_append(&stream, &events).map_err(crate::store::StoreError::Invalid)?;
    Ok((stream, expected, events))
}
