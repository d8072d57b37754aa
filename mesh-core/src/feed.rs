//! Client-side plumbing shared by the node and waypoint feed subscriptions: the subscription
//! status operators and readiness read, the reconnect backoff, and the gRPC channel to
//! mesh-control. What a feed carries, and how it is applied, stays with each client.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// HTTP/2 PING interval on an idle feed stream: nothing flows while the config is unchanged, so
/// PINGs are what notices a dead control plane.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may go unanswered before the stream counts as broken.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Errors opening the channel to mesh-control.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a URI tonic accepts.
    #[error("invalid control endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The address as given.
        endpoint: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Nothing answered in time, or the connection failed.
    #[error(
        "cannot connect to mesh-control at {endpoint} (is it running and reachable?): {source}"
    )]
    Connect {
        /// The address as given.
        endpoint: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to mesh-control at `endpoint` within `timeout`, with HTTP/2 keepalive PINGs so a
/// quiet stream to a dead control plane is noticed.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(|source| ConnectError::Endpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .connect_timeout(timeout)
        .keep_alive_while_idle(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })
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

    #[tokio::test]
    async fn a_bad_endpoint_is_named() {
        let error = connect("not a uri", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("\"not a uri\""), "{error}");
    }
}
