//! `GET /api/events`'s query string, as the SSE handler reads it: never panics; a refusal is a 400
//! whose message stays small; an accepted `where` names a real path.
#![no_main]

use flightdeck::http::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Longest refusal message: client input is quoted at most 200 characters (each escaped to at most
/// 10 bytes) beside the explanation. Inputs grow to 4096 bytes, so a message that echoed a whole
/// input would break this.
const MAX_MESSAGE: usize = 3000;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    match fuzzing::sse_query(query) {
        Ok((filter, _start, _batch)) => {
            for test in &filter.fields {
                assert!(!test.path.is_empty() && test.path.iter().all(|key| !key.is_empty()), "{test:?}");
            }
            assert!(filter.types.iter().chain(&filter.channels).all(|name| !name.is_empty()));
        }
        Err(err) => {
            assert_eq!(err.status, 400, "{err:?}");
            assert!(err.message.len() <= MAX_MESSAGE, "the error echoes too much input: {} bytes", err.message.len());
        }
    }
});
