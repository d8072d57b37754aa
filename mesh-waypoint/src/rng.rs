//! Randomness behind a trait, so weighted splits, faults, mirroring and load balancing are
//! deterministic in tests.

use std::{fmt, sync::Arc};

use parking_lot::Mutex;

/// A source of random numbers.
pub trait RandomSource: Send + Sync + fmt::Debug {
    /// A uniformly distributed value.
    fn next_u64(&self) -> u64;

    /// A value in `0..n` (`0` when `n` is 0).
    fn below(&self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100 (clamped to 0..=100, fractions allowed).
    fn chance(&self, percent: f64) -> bool {
        if percent >= 100.0 {
            return true;
        }
        if percent.is_nan() || percent <= 0.0 {
            return false;
        }
        // A resolution of one in a million, as Envoy's fractional percent.
        let threshold = (percent * 10_000.0) as u64;
        self.below(1_000_000) < threshold
    }
}

/// Shared handle to a random source.
pub type SharedRng = Arc<dyn RandomSource>;

/// The production source: the thread-local CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn next_u64(&self) -> u64 {
        rand::random()
    }
}

/// A deterministic source that cycles through fixed values, for tests.
#[derive(Debug)]
pub struct Sequence {
    values: Vec<u64>,
    next: Mutex<usize>,
}

impl Sequence {
    /// Cycles through `values` (all zero when empty).
    pub fn new(values: Vec<u64>) -> Self {
        Self {
            values,
            next: Mutex::new(0),
        }
    }
}

impl RandomSource for Sequence {
    fn next_u64(&self) -> u64 {
        let mut next = self.next.lock();
        let value = self.values.get(*next).copied().unwrap_or(0);
        *next = (*next + 1) % self.values.len().max(1);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_table() {
        // below(1_000_000) returns the value itself for values under a million.
        let cases = [
            (0.0, 0, false),
            (100.0, 999_999, true),
            (50.0, 499_999, true),
            (50.0, 500_000, false),
            (0.1, 999, true),
            (0.1, 1_000, false),
            (f64::NAN, 0, false),
        ];
        for (percent, roll, want) in cases {
            assert_eq!(
                Sequence::new(vec![roll]).chance(percent),
                want,
                "{percent} {roll}"
            );
        }
    }

    #[test]
    fn sequence_cycles() {
        let s = Sequence::new(vec![1, 2]);
        let got: Vec<_> = (0..4).map(|_| s.next_u64()).collect();
        assert_eq!(got, vec![1, 2, 1, 2]);
        assert_eq!(s.below(0), 0);
    }
}
