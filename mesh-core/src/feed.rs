//! Client-side plumbing shared by the node and waypoint feed subscriptions: the subscription
//! status operators and readiness read, the reconnect backoff, and the resubscribe loop. The
//! channel itself is [`crate::control`]; what a feed carries, and how it is applied, stays with
//! each client.

use std::{fmt, time::Duration};

use tokio::sync::watch;

use crate::{control::ControlConnection, drain::DrainWatch};

/// What a feed subscription is doing, for readiness, config dumps and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedStatus {
    /// A stream is open.
    pub connected: bool,
    /// Feed instance of the configuration in force.
    pub feed_id: String,
    /// Version in force (0: none yet).
    pub version: u64,
    /// Failed attempts since the last applied version.
    pub consecutive_failures: u32,
    /// The last failure, for operators.
    pub last_error: Option<String>,
}

impl FeedStatus {
    /// Records the end of an attempt: disconnected, one more failure, and why.
    pub fn record_failure(&mut self, error: &impl std::fmt::Display) {
        self.connected = false;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(error.to_string());
    }
}

/// Capped exponential backoff with 50-100 % jitter, so a fleet of nodes or waypoints does not
/// reconnect in lockstep after a control-plane restart.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt; `reset` (the last attempt made progress) restarts
    /// from the initial delay.
    pub fn next(&mut self, reset: bool) -> Duration {
        if reset {
            self.current = self.initial;
        }
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// The retry half of a feed client's subscription loop, the same for node and waypoint:
///
/// ```text
/// loop {
///     let error = select! { _ = retry.drained() => return, e = subscribe() => e };
///     if !retry.wait_after(&error, &status).await { return; }
/// }
/// ```
#[derive(Debug)]
pub struct Resubscriber {
    feed: &'static str,
    address: String,
    backoff: Backoff,
    drain: DrainWatch,
}

impl Resubscriber {
    /// Retries the `feed` ("node", "waypoint") subscription to `connection` until `drain`.
    pub fn new(connection: &ControlConnection, feed: &'static str, drain: DrainWatch) -> Self {
        Self {
            feed,
            address: connection.endpoint.address().to_owned(),
            backoff: connection.backoff(),
            drain,
        }
    }

    /// Resolves when the drain starts.
    pub async fn drained(&mut self) {
        self.drain.signaled().await;
    }

    /// After a subscription ended with `error`: records it in `status` and waits a jittered
    /// backoff, from the start again if the attempt applied a version (`consecutive_failures`
    /// back at zero). False when the drain started meanwhile. The configuration in force is the
    /// caller's and is never cleared here.
    pub async fn wait_after(
        &mut self,
        error: &impl fmt::Display,
        status: &watch::Sender<FeedStatus>,
    ) -> bool {
        let progressed = status.borrow().consecutive_failures == 0;
        let delay = self.backoff.next(progressed);
        tracing::warn!(feed = self.feed, control = %self.address, %error, retry_in = ?delay, "feed disconnected; keeping the last config");
        status.send_modify(|s| s.record_failure(error));
        tokio::select! {
            _ = self.drain.signaled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
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

    #[test]
    fn a_failure_is_recorded_for_operators() {
        let mut status = FeedStatus {
            connected: true,
            version: 3,
            ..FeedStatus::default()
        };
        status.record_failure(&"stream broke");
        assert!(!status.connected);
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(status.last_error.as_deref(), Some("stream broke"));
        assert_eq!(status.version, 3, "the config in force is kept");
    }
}
