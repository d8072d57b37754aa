//! Keeps the waypoint subscribed to mesh-control's `WaypointFeed` and hands every complete
//! configuration to a [`ConfigSink`]. Disconnects never clear the configuration in force: the
//! waypoint keeps serving the last good version while it reconnects with jittered, capped
//! exponential backoff, resuming from the feed id and version it has.

use std::time::Duration;

pub use mesh_core::feed::FeedStatus;
use mesh_core::{
    drain::DrainWatch,
    feed::{self, Backoff, ConnectError},
    identity::grpc::{BearerToken, TokenError},
    proto::control::v1 as pb,
};
use pb::waypoint_feed_client::WaypointFeedClient;
use tokio::sync::watch;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct FeedClientConfig {
    /// mesh-control's gRPC address, e.g. `http://10.210.0.1:15012`.
    pub endpoint: String,
    /// Namespace of the waypoint Service.
    pub namespace: String,
    /// Name of the waypoint Service.
    pub name: String,
    /// Bearer token proving the caller to mesh-control; a token file is re-read for every
    /// subscription, since projected service-account tokens rotate.
    pub token: Option<BearerToken>,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
}

impl FeedClientConfig {
    /// Defaults: 5 s connect timeout, backoff from 250 ms to 30 s.
    pub fn new(endpoint: impl Into<String>, namespace: &str, name: &str) -> Self {
        Self {
            endpoint: endpoint.into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Receives each complete configuration; an `Err` keeps the previous one in force and the
/// resume point where it was.
pub trait ConfigSink: Send + Sync + 'static {
    /// Applies one version.
    fn apply(&self, config: &pb::WaypointConfig) -> Result<(), String>;
}

/// Why one subscription attempt ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("mesh-control refused the waypoint subscription (is the token allowed to read this waypoint?): {0}")]
    Refused(tonic::Status),
    #[error("feed stream broke: {0}")]
    Stream(tonic::Status),
    #[error("feed stream ended by mesh-control")]
    Ended,
    #[error("bearer token: {0}")]
    Token(#[from] TokenError),
}

/// Runs until the drain starts. The last applied configuration stays in force throughout.
pub async fn run(
    config: FeedClientConfig,
    sink: &dyn ConfigSink,
    status: watch::Sender<FeedStatus>,
    mut drain: DrainWatch,
) {
    let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff);
    loop {
        let error = tokio::select! {
            _ = drain.signaled() => return,
            error = subscribe(&config, sink, &status) => error,
        };
        // A version applied during the attempt means control was healthy: start over.
        let progressed = status.borrow().consecutive_failures == 0;
        let delay = backoff.next(progressed);
        tracing::warn!(%error, retry_in = ?delay, "waypoint feed disconnected; keeping last config");
        status.send_modify(|s| s.record_failure(&error));
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One subscription: returns why it ended (it never ends without an error).
async fn subscribe(
    config: &FeedClientConfig,
    sink: &dyn ConfigSink,
    status: &watch::Sender<FeedStatus>,
) -> AttemptError {
    let channel = match feed::connect(&config.endpoint, config.connect_timeout).await {
        Ok(channel) => channel,
        Err(error) => return error.into(),
    };
    let (feed_id, resume_version) = {
        let s = status.borrow();
        (s.feed_id.clone(), s.version)
    };
    let mut request = tonic::Request::new(pb::WaypointSubscribeRequest {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        feed_id,
        resume_version,
    });
    if let Some(token) = &config.token {
        if let Err(error) = token.attach(&mut request).await {
            return error.into();
        }
    }
    let mut stream = match WaypointFeedClient::new(channel).subscribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return AttemptError::Refused(status),
    };
    status.send_modify(|s| s.connected = true);
    loop {
        match stream.message().await {
            Ok(Some(update)) => apply(sink, &update, status),
            Ok(None) => return AttemptError::Ended,
            Err(status) => return AttemptError::Stream(status),
        }
    }
}

fn apply(sink: &dyn ConfigSink, update: &pb::WaypointConfig, status: &watch::Sender<FeedStatus>) {
    match sink.apply(update) {
        Ok(()) => {
            tracing::info!(
                feed = %update.feed_id,
                version = update.version,
                services = update.services.len(),
                routes = update.routes.len(),
                policies = update.policies.len(),
                "applied waypoint feed version"
            );
            status.send_modify(|s| {
                s.feed_id.clone_from(&update.feed_id);
                s.version = update.version;
                s.consecutive_failures = 0;
                s.last_error = None;
            });
        }
        Err(error) => {
            tracing::error!(version = update.version, %error, "waypoint feed version rejected; keeping last config");
            status.send_modify(|s| s.last_error = Some(error));
        }
    }
}
