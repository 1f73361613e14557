//! A cap on how many lines a noisy warning writes a second.
//!
//! Warnings about strangers (bad signatures, bodies that never arrive) are
//! what an attack produces in bulk: one line each would let anyone fill the
//! log and its storage for the price of a request. The metric still counts
//! every one; the log keeps the first few of each second and says how many
//! it left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines allowed a second, and those left out since the last one written.
#[derive(Debug)]
pub struct LogThrottle {
    per_second: u64,
    /// The current second and the lines written in it, packed so that one
    /// compare-and-swap moves both: seconds in the high 44 bits.
    window: AtomicU64,
    suppressed: AtomicU64,
}

const COUNT_BITS: u32 = 20;

impl LogThrottle {
    pub const fn new(per_second: u64) -> Self {
        Self { per_second, window: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines left out since the last line written)` if this line may
    /// be written now; `None` (and counted) if not.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let admitted = self.window.fetch_update(Ordering::AcqRel, Ordering::Acquire, |window| {
            let (current, written) = (window >> COUNT_BITS, window & ((1 << COUNT_BITS) - 1));
            match current == second {
                true if written >= self.per_second => None,
                true => Some(window + 1),
                false => Some((second << COUNT_BITS) | 1),
            }
        });
        match admitted {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::AcqRel)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::AcqRel);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_then_a_count_of_the_rest() {
        let throttle = LogThrottle::new(2);
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(101), Some(0));
        assert_eq!(throttle.admit_at(101), None);
    }
}
