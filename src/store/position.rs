//! Positions in the global log.
//!
//! A position is the pair (appending transaction's xid8, insertion sequence). Clients see it as an
//! opaque 32-hex-digit string whose lexicographic order is the log order, so a browser can compare
//! two positions without knowing what they mean.

use std::fmt;
use std::str::FromStr;

/// A point in the global log. [`Position::START`] is before every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The 64-bit id (xid8) of the transaction that appended the event.
    pub xid: u64,
    /// The event's insertion sequence number.
    pub seq: u64,
}

impl Position {
    /// Before the first event: reading after it reads the whole log.
    pub const START: Position = Position { xid: 0, seq: 0 };

    /// Builds a position from the database's text form of an xid8 and the seq column.
    pub(crate) fn from_db(xid: &str, seq: i64) -> Result<Self, PositionError> {
        let xid = xid.parse().map_err(|_| PositionError::Malformed(format!("xid {xid}")))?;
        Ok(Position { xid, seq: seq.max(0) as u64 })
    }

    /// The xid as the text the database casts to `xid8`.
    pub(crate) fn xid_text(&self) -> String {
        self.xid.to_string()
    }

    /// The seq as the database's bigint. Sequences never exceed `i64::MAX`.
    pub(crate) fn seq_i64(&self) -> i64 {
        i64::try_from(self.seq).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.xid, self.seq)
    }
}

/// A position string that is not one FlightDeck issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// Not 32 hexadecimal digits.
    #[error("malformed position {0:?}: expected the 32 hexadecimal digits of a position FlightDeck returned")]
    Malformed(String),
}

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PositionError::Malformed(s.chars().take(64).collect());
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let xid = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let seq = u64::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        if seq > i64::MAX as u64 {
            return Err(bad());
        }
        Ok(Position { xid, seq })
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_order_is_log_order() {
        let positions = [
            Position::START,
            Position { xid: 1, seq: 900 },
            Position { xid: 2, seq: 5 },
            Position { xid: 2, seq: 6 },
            Position { xid: 0xffff_ffff, seq: 1 },
            Position { xid: u64::MAX >> 1, seq: i64::MAX as u64 },
        ];
        for pair in positions.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string(), "{pair:?}");
        }
        for p in positions {
            assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        }
    }

    #[test]
    fn rejects_malformed_positions() {
        let cases = [
            "",
            "start",
            "12",
            "0000000000000001000000000000000g",
            "00000000000000010000000000000001ff",
            "0000000000000001ffffffffffffffff",
            " 000000000000000100000000000000a",
        ];
        for case in cases {
            let err = case.parse::<Position>().expect_err(case);
            assert!(err.to_string().contains("malformed position"), "{err}");
        }
    }
}
