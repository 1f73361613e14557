//! A cap on how many lines a noisy warning writes a second.
//!
//! Warnings about strangers (bad signatures, bodies that never arrive) are
//! what an attack produces in bulk: one line each would let anyone fill the
//! log and its storage for the price of a request. The metric still counts
//! every one; the log keeps a few a second (a [`TokenBucket`]) and says how
//! many it left out.

use std::sync::atomic::{AtomicU64, Ordering};

use service_kit::rate::TokenBucket;

/// Lines allowed a second, and those left out since the last one written.
#[derive(Debug)]
pub struct LogThrottle {
    lines: TokenBucket,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `per_second` lines a second, as many at once.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self { lines: TokenBucket::new(rate, rate), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines left out since the last line written)` if this line may
    /// be written now; `None` (and counted) if not.
    pub fn admit(&self) -> Option<u64> {
        self.count(self.lines.try_take())
    }

    fn count(&self, admitted: bool) -> Option<u64> {
        if admitted {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_at_once_then_none() {
        let throttle = LogThrottle::new(2);
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
    }

    #[test]
    fn the_next_line_written_says_how_many_were_left_out() {
        let throttle = LogThrottle::new(2);
        assert_eq!(throttle.count(false), None);
        assert_eq!(throttle.count(false), None);
        assert_eq!(throttle.count(true), Some(2));
        assert_eq!(throttle.count(true), Some(0));
    }
}
