//! A keyed rate limit whose memory stays bounded: `governor`'s GCRA limiter (one 8-byte state per
//! key in a sharded map), swept of idle keys now and then, and capped in the number of keys.
//!
//! A key whose bucket has refilled is indistinguishable from a key never seen, so
//! `retain_recent` can forget it; after a sweep only the keys active within the last
//! `burst / rate` seconds remain. Sweeps run on the request path (no background task to own), at
//! most every [`SWEEP_INTERVAL`], and at once when the map holds more than `max_keys` keys. If it
//! still does after a sweep (more distinct clients active at once than the cap allows), the state
//! is dropped and counting starts over: briefly too lenient, never unbounded.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::Rate;

/// Idle keys are forgotten at least this often.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The number of keys is compared with the cap every this many checks.
const CAP_CHECK_EVERY: u64 = 64;

/// Why a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Try again after this long.
    For(Duration),
    /// Asked for more at once than the burst allows: never.
    Never,
}

/// One rate limit over keys of type `K` (a client address, a site id; later a token).
pub(crate) struct KeyedRate<K: Hash + Eq + Clone> {
    rate: Rate,
    max_keys: usize,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<K>>>,
    checks: AtomicU64,
    /// When the next sweep is due; locked by the one request that sweeps.
    next_sweep: Mutex<Instant>,
    /// Times the state was dropped because the cap was exceeded even after a sweep.
    resets: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    /// A limit of `rate` per key, remembering at most `max_keys` keys.
    pub(crate) fn new(rate: Rate, max_keys: usize) -> Self {
        KeyedRate {
            rate,
            max_keys: max_keys.max(1),
            limiter: RwLock::new(Arc::new(Self::limiter(rate))),
            checks: AtomicU64::new(0),
            next_sweep: Mutex::new(Instant::now() + SWEEP_INTERVAL),
            resets: AtomicU64::new(0),
        }
    }

    fn limiter(rate: Rate) -> DefaultKeyedRateLimiter<K> {
        RateLimiter::keyed(Quota::per_second(rate.per_second).allow_burst(rate.burst))
    }

    /// The limit.
    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `n` units for `key`, or says how long to wait.
    pub(crate) fn check(&self, key: &K, n: u32) -> Result<(), Wait> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let limiter = self.current();
        let result = match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Wait::For(not_until.wait_time_from(limiter.clock().now()))),
            Err(_insufficient_capacity) => Err(Wait::Never),
        };
        drop(limiter);
        self.housekeeping();
        result
    }

    /// Keys remembered now.
    pub(crate) fn len(&self) -> usize {
        self.current().len()
    }

    /// How often the cap forced the state to be dropped.
    pub(crate) fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<DefaultKeyedRateLimiter<K>> {
        self.limiter.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sweeps when due or over the cap; drops everything when a sweep is not enough.
    fn housekeeping(&self) {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed);
        let over_cap = checks % CAP_CHECK_EVERY == 0 && self.len() > self.max_keys;
        // One request sweeps; the others go on.
        let Ok(mut next_sweep) = self.next_sweep.try_lock() else { return };
        let now = Instant::now();
        if !over_cap && now < *next_sweep {
            return;
        }
        *next_sweep = now + SWEEP_INTERVAL;
        let limiter = self.current();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let len = limiter.len();
        if len > self.max_keys {
            tracing::warn!(
                keys = len,
                max = self.max_keys,
                "more clients are active at once than the limiter may remember; starting over"
            );
            *self.limiter.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Self::limiter(self.rate));
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate::new(per_second, burst).unwrap()
    }

    #[test]
    fn a_burst_then_a_wait() {
        let limit = KeyedRate::new(rate(1, 3), 100);
        for _ in 0..3 {
            assert_eq!(limit.check(&"a", 1), Ok(()));
        }
        let Err(Wait::For(wait)) = limit.check(&"a", 1) else { panic!("the fourth must wait") };
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limit.check(&"b", 3), Ok(()), "keys are independent");
        assert_eq!(limit.check(&"c", 4), Err(Wait::Never), "more than the burst at once");
    }

    #[test]
    fn keys_stay_capped() {
        // A fast rate: every bucket is full again a millisecond later, so sweeps forget keys.
        let limit = KeyedRate::new(rate(1000, 1), 50);
        for i in 0..10_000u32 {
            let _ = limit.check(&i, 1);
        }
        assert!(limit.len() <= 50 + CAP_CHECK_EVERY as usize, "{} keys", limit.len());
        // A slow rate: keys cannot be forgotten, so the cap drops the state instead.
        let slow = KeyedRate::new(rate(1, 1000), 50);
        for i in 0..10_000u32 {
            let _ = slow.check(&i, 1);
        }
        assert!(slow.len() <= 50 + CAP_CHECK_EVERY as usize, "{} keys", slow.len());
        assert!(slow.resets() > 0);
    }
}
