//! A per-process memory of streams' last versions, so the common append (one event to a stream
//! this process appended to before) is a plain `INSERT … VALUES` with the next version, with no
//! lookup of the stream's last version.
//!
//! Why a stale entry is harmless: entries are only recorded from appends this process saw commit,
//! and versions only grow, so an entry can lag the database but never lead it. Inserting
//! "remembered + 1" when another process has already used that version hits the unique index on
//! (stream, version); the append then forgets the entry and takes the checked path. So the cache
//! changes cost, never outcomes.
//!
//! Each entry also remembers the stream's site. A stream's site never changes (its first event
//! fixes it and every append checks it), so a remembered site is never stale: an append naming
//! another site skips the plain insert and takes the statement that checks the site.

use std::collections::HashMap;
use std::sync::Mutex;

/// Streams remembered before the memory is cleared (a crude bound: clearing only costs lookups).
const CAPACITY: usize = 100_000;

/// What is remembered of a stream.
#[derive(Debug)]
struct Known {
    version: u64,
    site: Box<str>,
}

/// Last known versions (and sites) by stream.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    last: Mutex<HashMap<String, Known>>,
}

impl Versions {
    /// The last version of `stream` this process saw committed, if the stream belongs to `site`
    /// (for another site, the caller must take the checked path, which refuses the append).
    pub(crate) fn get(&self, site: &str, stream: &str) -> Option<u64> {
        let last = self.last.lock().ok()?;
        last.get(stream).filter(|known| &*known.site == site).map(|known| known.version)
    }

    /// Remembers that `stream`, of `site`, reached `version` (a committed append).
    pub(crate) fn record(&self, site: &str, stream: &str, version: u64) {
        if let Ok(mut last) = self.last.lock() {
            if last.len() >= CAPACITY && !last.contains_key(stream) {
                last.clear();
            }
            let entry = last.entry(stream.to_string()).or_insert_with(|| Known { version: 0, site: site.into() });
            entry.version = entry.version.max(version);
            if &*entry.site != site {
                // Cannot happen (a stream's site is fixed); if it did, trust the latest commit.
                entry.site = site.into();
            }
        }
    }

    pub(crate) fn forget(&self, stream: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(stream);
        }
    }
}
