//! One `/ws/events` client text frame, decoded as a WebSocket session does: never panics; a
//! refusal has a code and a message that stays small; an accepted subscribe's filter is usable.
#![no_main]

use flightdeck::http::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Longest refusal message: client input is quoted at most 200 characters (each escaped to at most
/// 10 bytes) beside the explanation. Inputs grow to 4096 bytes, so a message that echoed a whole
/// input would break this.
const MAX_MESSAGE: usize = 3000;

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands the protocol only valid UTF-8 (anything else closes with 1007).
    let Ok(frame) = std::str::from_utf8(data) else { return };
    match fuzzing::ws_frame(frame) {
        Ok(Some(filter)) => {
            for test in &filter.fields {
                assert!(!test.path.is_empty() && test.path.iter().all(|key| !key.is_empty()), "{test:?}");
            }
            assert!(filter.types.iter().chain(&filter.channels).all(|name| !name.is_empty()));
            assert!(filter.stream.as_ref().is_none_or(|s| !s.is_empty()));
        }
        Ok(None) => {}
        Err((code, message)) => {
            assert!(!code.is_empty());
            assert!(message.len() <= MAX_MESSAGE, "the error echoes too much input: {} bytes", message.len());
        }
    }
});
