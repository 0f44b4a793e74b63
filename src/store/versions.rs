//! A per-process memory of streams' last versions, so the common append (one event to a stream
//! this process appended to before) is a plain `INSERT … VALUES` with the next version, with no
//! lookup of the stream's last version.
//!
//! Why a stale entry is harmless: entries are only recorded from appends this process saw commit,
//! and versions only grow, so an entry can lag the database but never lead it. Inserting
//! "remembered + 1" when another process has already used that version hits the unique index on
//! (stream, version); the append then forgets the entry and takes the checked path. So the cache
//! changes cost, never outcomes.

use std::collections::HashMap;
use std::sync::Mutex;

/// Streams remembered before the memory is cleared (a crude bound: clearing only costs lookups).
const CAPACITY: usize = 100_000;

/// Last known versions by stream.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    last: Mutex<HashMap<String, u64>>,
}

impl Versions {
    pub(crate) fn get(&self, stream: &str) -> Option<u64> {
        self.last.lock().ok()?.get(stream).copied()
    }

    /// Remembers that `stream` reached `version` (a committed append).
    pub(crate) fn record(&self, stream: &str, version: u64) {
        if let Ok(mut last) = self.last.lock() {
            if last.len() >= CAPACITY && !last.contains_key(stream) {
                last.clear();
            }
            let entry = last.entry(stream.to_string()).or_insert(0);
            *entry = (*entry).max(version);
        }
    }

    pub(crate) fn forget(&self, stream: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(stream);
        }
    }
}
