//! Token buckets: a steady rate with a burst, for budgets that strangers
//! must not be able to spend (Stripe's API quota, one client's share of the
//! verify route). Taking never blocks a caller that would rather be refused;
//! [`TokenBucket::take`] waits for the callers that would rather wait.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Tokens and when they were last counted.
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Level {
    fn full(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, at: now }
    }

    /// Refills for the time since `at`, then takes one token if there is one;
    /// otherwise says how long until there will be.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// One budget: `rate` tokens a second, at most `burst` saved up; starts full.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    level: Mutex<Level>,
}

impl TokenBucket {
    /// `rate` and `burst` are clamped to at least one token.
    pub fn new(rate: f64, burst: f64) -> Self {
        let (rate, burst) = (rate.max(1.0), burst.max(1.0));
        Self { rate, burst, level: Mutex::new(Level::full(burst, Instant::now())) }
    }

    /// Takes a token if one is there now.
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now()).is_ok()
    }

    /// Waits until a token is there, then takes it.
    pub async fn take(&self) {
        while let Err(wait) = self.try_take_at(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    fn try_take_at(&self, now: Instant) -> Result<(), Duration> {
        lock(&self.level).take(self.rate, self.burst, now)
    }
}

/// One budget per key (a client's address), all alike. Keys whose bucket has
/// refilled are forgotten once more than `max_keys` are held, so a stranger
/// cycling through addresses cannot grow the map without bound; if every key
/// is still busy then, new keys are refused until some refill.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    levels: Mutex<HashMap<K, Level>>,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    pub fn new(rate: f64, burst: f64, max_keys: usize) -> Self {
        Self { rate: rate.max(1.0), burst: burst.max(1.0), max_keys, levels: Mutex::default() }
    }

    /// Takes a token from `key`'s bucket if one is there now; otherwise how
    /// long until there will be.
    pub fn try_take(&self, key: K) -> Result<(), Duration> {
        self.try_take_at(key, Instant::now())
    }

    fn try_take_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut levels = lock(&self.levels);
        if levels.len() >= self.max_keys && !levels.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            levels.retain(|_, level| {
                level.tokens + now.saturating_duration_since(level.at).as_secs_f64() * rate < burst
            });
            if levels.len() >= self.max_keys {
                return Err(Duration::from_secs_f64(1.0 / self.rate));
            }
        }
        levels.entry(key).or_insert_with(|| Level::full(self.burst, now)).take(self.rate, self.burst, now)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain numbers that no panic leaves half written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let bucket = TokenBucket::new(10.0, 3.0);
        let start = Instant::now();

        let burst = (0..5).filter(|_| bucket.try_take_at(start).is_ok()).count();
        let wait = bucket.try_take_at(start).expect_err("empty");
        let after_a_second =
            (0..20).filter(|_| bucket.try_take_at(start + Duration::from_secs(1)).is_ok()).count();

        assert_eq!(burst, 3);
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert_eq!(after_a_second, 3, "refilled to the burst, not beyond");
    }

    #[test]
    fn over_a_long_run_a_bucket_gives_its_rate() {
        let bucket = TokenBucket::new(10.0, 10.0);
        let start = Instant::now();
        let taken =
            (0..10_000).filter(|i| bucket.try_take_at(start + Duration::from_millis(*i)).is_ok()).count();

        // 10 s at 10 a second, plus the burst it started with.
        assert!((100..=111).contains(&taken), "{taken}");
    }

    #[tokio::test]
    async fn take_waits_for_a_token() {
        let bucket = TokenBucket::new(20.0, 1.0);
        let started = Instant::now();

        bucket.take().await;
        bucket.take().await;

        assert!(started.elapsed() >= Duration::from_millis(40), "{:?}", started.elapsed());
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let buckets = KeyedBuckets::new(1.0, 2.0, 100);
        let now = Instant::now();

        assert!(buckets.try_take_at("a", now).is_ok());
        assert!(buckets.try_take_at("a", now).is_ok());
        assert!(buckets.try_take_at("a", now).is_err());
        assert!(buckets.try_take_at("b", now).is_ok(), "another key is not affected");
    }

    #[test]
    fn refilled_keys_are_forgotten_to_make_room_and_busy_ones_are_not() {
        let buckets = KeyedBuckets::new(1.0, 1.0, 2);
        let now = Instant::now();
        assert!(buckets.try_take_at(1, now).is_ok());
        assert!(buckets.try_take_at(2, now).is_ok());

        assert!(buckets.try_take_at(3, now).is_err(), "both keys are still busy: no room");
        let later = now + Duration::from_secs(2);
        assert!(buckets.try_take_at(3, later).is_ok(), "refilled keys made room");
        assert!(lock(&buckets.levels).len() <= 2);
    }
}
