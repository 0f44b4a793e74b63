//! Positions: parsing any text never panics; a parsed position prints back as the same 32 digits
//! (lower case); any position survives print-then-parse; string order is position order.
#![no_main]

use flightdeck::store::Position;
use libfuzzer_sys::fuzz_target;

/// Longest refusal message: client input is quoted at most 200 characters (each escaped to at most
/// 10 bytes) beside the explanation. Inputs grow to 4096 bytes, so a message that echoed a whole
/// input would break this.
const MAX_MESSAGE: usize = 3000;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match text.parse::<Position>() {
            Ok(position) => {
                assert_eq!(position.to_string(), text.to_ascii_lowercase(), "display(parse(s)) == s");
                // What the JSON APIs accept is the same.
                let json = serde_json::to_string(text).unwrap();
                assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), position);
            }
            Err(err) => assert!(err.to_string().len() <= MAX_MESSAGE, "the error echoes too much input"),
        }
    }
    if data.len() >= 32 {
        let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        // Sequences never exceed i64::MAX (a bigint column), and parse refuses larger ones.
        let a = Position { xid: word(0), seq: word(8) & (i64::MAX as u64) };
        let b = Position { xid: word(16), seq: word(24) & (i64::MAX as u64) };
        for p in [a, b] {
            let text = p.to_string();
            assert_eq!(text.len(), 32);
            assert_eq!(text.parse::<Position>(), Ok(p), "parse(display(p)) == p");
        }
        assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()), "string order is log order");
    }
});
