//! Client-side plumbing shared by the node and waypoint feed subscriptions: the subscription
//! status operators and readiness read, the reconnect backoff, and the resubscribe loop. The
//! channel itself is [`crate::control`]; what a feed carries, and how it is applied, stays with
//! each client.

use std::fmt;

use tokio::sync::watch;

use crate::{backoff::Backoff, control::ControlConnection, drain::DrainWatch};

/// Largest feed message a node or waypoint decodes (tonic's default is 4 MiB). A waypoint's
/// configuration is one message per version: a waypoint in front of 50,000 endpoints and
/// 1,000 TLS credentials gets about 8 MB, which must load; the bound still keeps one message
/// from taking unbounded memory. The node feed is chunked by mesh-control, so its messages stay
/// far below it.
pub const MAX_FEED_MESSAGE: usize = 64 * 1024 * 1024;

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
