//! Concurrent streams per key: a count per key that a [`Slot`] holds while its stream lives.
//!
//! The slot is acquired before the stream starts (so an over-the-limit client gets a 429, not a
//! stream that ends at once) and released by `Drop`, however the stream ends: the client leaves,
//! a lag, shutdown, a failed upgrade. A key is removed when its count reaches zero, so the map
//! never holds more keys than there are open streams.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Open streams per key, at most `max` each.
pub(crate) struct StreamCounter<K: Hash + Eq + Clone> {
    max: u32,
    open: Mutex<HashMap<K, u32>>,
    /// Streams held in slots now, over all keys.
    total: AtomicU64,
}

impl<K: Hash + Eq + Clone> StreamCounter<K> {
    pub(crate) fn new(max: u32) -> Self {
        StreamCounter { max, open: Mutex::new(HashMap::new()), total: AtomicU64::new(0) }
    }

    /// The most streams per key.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// A slot for one more stream of `key`, or `Err` with the number already open.
    pub(crate) fn acquire(self: &Arc<Self>, key: K) -> Result<Slot<K>, u32> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            let already = *count;
            if already == 0 {
                open.remove(&key);
            }
            return Err(already);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { counter: self.clone(), key: Some(key) })
    }

    /// Keys with at least one open stream.
    pub(crate) fn keys(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Open streams over all keys.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn release(&self, key: &K) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(key);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One open stream counted against its key; dropping it releases the count.
pub(crate) struct Slot<K: Hash + Eq + Clone> {
    counter: Arc<StreamCounter<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.counter.release(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_and_release() {
        let counter = Arc::new(StreamCounter::new(2));
        let a1 = counter.acquire("a").unwrap();
        let a2 = counter.acquire("a").unwrap();
        assert_eq!(counter.acquire("a").err(), Some(2));
        let b = counter.acquire("b").unwrap();
        assert_eq!((counter.keys(), counter.total()), (2, 3));
        drop(a1);
        let a3 = counter.acquire("a").unwrap();
        drop((a2, a3, b));
        assert_eq!((counter.keys(), counter.total()), (0, 0), "no key is kept without a stream");
        let none = Arc::new(StreamCounter::new(0));
        assert_eq!(none.acquire("a").err(), Some(0));
        assert_eq!(none.keys(), 0);
    }
}
