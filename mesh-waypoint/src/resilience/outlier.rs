//! Outlier detection: passive health checking by consecutive failures (Istio
//! `OutlierDetection.consecutive5xxErrors`, which also counts connect failures and timeouts as
//! Envoy's `consecutive_5xx` does).
//!
//! An endpoint that fails `consecutive_5xx` times in a row is ejected for `base_ejection_time`
//! times the number of times it has been ejected, unless that would eject more than
//! `max_ejection_percent` of the destination's endpoints. Envoy returns ejected hosts in a sweep
//! every `interval`; here the sweeps are phase-aligned to the ejection (no timer task), so an
//! ejection lasts that time rounded up to whole intervals, and each whole interval an endpoint
//! spends back in service lowers its multiplier by one (Envoy's decay, computed lazily).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;

/// Per-endpoint health state.
#[derive(Debug, Default, Clone)]
pub struct EndpointHealth {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl EndpointHealth {
    /// Lowers the multiplier by the whole sweeps spent back in service since the last ejection.
    fn decay(&mut self, now: Instant, interval: Duration) {
        let Some(back) = self.ejected_until else {
            return;
        };
        let healthy = now.saturating_duration_since(back).as_nanos() / interval.as_nanos().max(1);
        let healthy = u32::try_from(healthy).unwrap_or(u32::MAX);
        self.times_ejected = self.times_ejected.saturating_sub(healthy);
    }
}

impl EndpointHealth {
    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// The detector's settings.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    consecutive: u32,
    base: Duration,
    max_percent: u32,
    interval: Duration,
}

/// What recording a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed status.
    Unchanged,
    /// The endpoint was just ejected, until the given instant.
    Ejected(Instant),
    /// The endpoint crossed the threshold but the ejection cap kept it in.
    CapReached,
}

impl OutlierDetector {
    /// From configuration; a zero threshold is treated as one.
    pub fn new(config: &OutlierConfig) -> Self {
        Self {
            consecutive: config.consecutive_5xx.max(1),
            base: config.base_ejection_time.0,
            max_percent: config.max_ejection_percent.min(100),
            // A zero interval would make every instant a sweep: use 1 ms.
            interval: config.interval.0.max(Duration::from_millis(1)),
        }
    }

    /// Records one result for an endpoint. `ejected_now` and `total` describe the destination,
    /// to enforce the ejection cap.
    pub fn record(
        &self,
        health: &mut EndpointHealth,
        success: bool,
        now: Instant,
        ejected_now: usize,
        total: usize,
    ) -> Verdict {
        if success {
            health.consecutive_failures = 0;
            return Verdict::Unchanged;
        }
        if health.is_ejected(now) {
            return Verdict::Unchanged;
        }
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        if health.consecutive_failures < self.consecutive {
            return Verdict::Unchanged;
        }
        // Envoy's cap: at most max_percent of hosts ejected (at least one is always allowed
        // when the percent is non-zero and rounding gives zero).
        let allowed = (total * self.max_percent as usize).div_ceil(100);
        if ejected_now + 1 > allowed {
            return Verdict::CapReached;
        }
        health.decay(now, self.interval);
        health.times_ejected = health.times_ejected.saturating_add(1);
        health.consecutive_failures = 0;
        let until = now + self.ejection_time(health.times_ejected);
        health.ejected_until = Some(until);
        Verdict::Ejected(until)
    }

    /// `base * times`, rounded up to whole sweep intervals.
    fn ejection_time(&self, times: u32) -> Duration {
        let wanted = self.base.saturating_mul(times);
        let sweeps = wanted.as_nanos().div_ceil(self.interval.as_nanos()).max(1);
        self.interval
            .saturating_mul(u32::try_from(sweeps).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn detector(consecutive: u32, max_percent: u32) -> OutlierDetector {
        with_interval(consecutive, max_percent, 10)
    }

    fn with_interval(consecutive: u32, max_percent: u32, interval_secs: u64) -> OutlierDetector {
        OutlierDetector::new(&OutlierConfig {
            consecutive_5xx: consecutive,
            base_ejection_time: HumanDuration(Duration::from_secs(30)),
            max_ejection_percent: max_percent,
            interval: HumanDuration(Duration::from_secs(interval_secs)),
        })
    }

    #[test]
    fn ejection_ends_at_a_sweep_and_the_multiplier_decays_per_healthy_sweep() {
        let s = Duration::from_secs;
        let d = with_interval(1, 100, 20);
        let mut h = EndpointHealth::default();
        let t0 = Instant::now();
        // 30 s rounds up to two 20 s sweeps.
        assert_eq!(
            d.record(&mut h, false, t0, 0, 1),
            Verdict::Ejected(t0 + s(40))
        );
        // Failing right at return: multiplier 2, 60 s, already whole sweeps.
        let t1 = t0 + s(40);
        assert_eq!(
            d.record(&mut h, false, t1, 0, 1),
            Verdict::Ejected(t1 + s(60))
        );
        // Two healthy sweeps after returning at t1 + 60 s: multiplier 2 -> 0, then 1.
        let t2 = t1 + s(60) + s(45);
        assert_eq!(
            d.record(&mut h, false, t2, 0, 1),
            Verdict::Ejected(t2 + s(40))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_restores() {
        let d = detector(3, 100);
        let mut h = EndpointHealth::default();
        let now = Instant::now();
        assert_eq!(d.record(&mut h, false, now, 0, 2), Verdict::Unchanged);
        assert_eq!(d.record(&mut h, false, now, 0, 2), Verdict::Unchanged);
        assert_eq!(
            d.record(&mut h, false, now, 0, 2),
            Verdict::Ejected(now + Duration::from_secs(30))
        );
        assert!(h.is_ejected(now));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(h.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!h.is_ejected(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count_and_repeat_ejections_grow() {
        let d = detector(2, 100);
        let mut h = EndpointHealth::default();
        let now = Instant::now();
        d.record(&mut h, false, now, 0, 1);
        d.record(&mut h, true, now, 0, 1);
        assert_eq!(d.record(&mut h, false, now, 0, 1), Verdict::Unchanged);
        assert_eq!(
            d.record(&mut h, false, now, 0, 1),
            Verdict::Ejected(now + Duration::from_secs(30))
        );
        let later = now + Duration::from_secs(30);
        d.record(&mut h, false, later, 0, 1);
        assert_eq!(
            d.record(&mut h, false, later, 0, 1),
            Verdict::Ejected(later + Duration::from_secs(60))
        );
    }

    #[test]
    fn ejection_cap_table() {
        // (max percent, already ejected, total, ejected?)
        let cases = [
            (10, 0, 10, true),
            (10, 1, 10, false),
            (50, 1, 4, true),
            (50, 2, 4, false),
            (0, 0, 5, false),
        ];
        for (percent, ejected, total, want) in cases {
            let d = detector(1, percent);
            let mut h = EndpointHealth::default();
            let got = d.record(&mut h, false, Instant::now(), ejected, total);
            assert_eq!(
                matches!(got, Verdict::Ejected(_)),
                want,
                "{percent} {ejected} {total}"
            );
        }
    }
}
