//! Capped exponential backoff with jitter, for every retry loop that talks to something remote:
//! feed subscriptions, certificate renewal, span export, API-server writes.

use std::time::Duration;

/// Capped exponential backoff with 50-100 % jitter, so a fleet of nodes or waypoints does not
/// reconnect in lockstep after a control-plane restart.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// Starts over from the initial delay (the last attempt succeeded).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The delay before the next attempt; `reset` (the last attempt made progress) restarts
    /// from the initial delay.
    pub fn next(&mut self, reset: bool) -> Duration {
        if reset {
            self.reset();
        }
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_caps_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for (reset, base) in [
            (false, 100),
            (false, 200),
            (false, 350),
            (false, 350),
            (true, 100),
        ] {
            let delay = backoff.next(reset).as_millis();
            assert!(
                (base / 2..=base).contains(&delay),
                "{delay} ms not within jitter of {base} ms"
            );
        }
    }
}
