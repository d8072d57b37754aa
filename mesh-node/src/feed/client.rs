//! Keeps the node subscribed to mesh-control and publishes each complete snapshot.

use std::{sync::Arc, time::Duration};

pub use mesh_core::feed::FeedStatus;
use mesh_core::{
    drain::DrainWatch,
    feed::{self, Backoff, ConnectError},
    identity::grpc::{BearerToken, TokenError},
    proto::control::v1 as pb,
};
use pb::node_feed_client::NodeFeedClient;
use tokio::sync::watch;

use super::store::{FeedStore, MeshSnapshot};

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct FeedClientConfig {
    /// mesh-control's gRPC address, e.g. `http://10.210.0.1:15012`.
    pub endpoint: String,
    /// This node's name, as pods' `spec.nodeName` says it.
    pub node_name: String,
    /// Bearer token proving the node's identity to mesh-control; a token file is re-read for
    /// every subscription, since projected service-account tokens rotate.
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
    pub fn new(endpoint: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            node_name: node_name.into(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why one subscription attempt ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("mesh-control refused the subscription: {0}")]
    Refused(tonic::Status),
    #[error("feed stream broke: {0}")]
    Stream(tonic::Status),
    #[error("feed stream ended by mesh-control")]
    Ended,
    #[error("inconsistent feed, resubscribing from scratch: {0}")]
    Inconsistent(#[from] super::store::FeedError),
    #[error("bearer token: {0}")]
    Token(#[from] TokenError),
}

/// Runs until the drain starts, publishing every complete snapshot on `snapshots` and the
/// subscription's state on `status`. The last snapshot stays published through disconnects.
pub async fn run(
    config: FeedClientConfig,
    snapshots: watch::Sender<Arc<MeshSnapshot>>,
    status: watch::Sender<FeedStatus>,
    mut drain: DrainWatch,
) {
    let mut store = FeedStore::default();
    let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff);
    loop {
        let attempt = subscribe(&config, &mut store, &snapshots, &status);
        let error = tokio::select! {
            _ = drain.signaled() => return,
            error = attempt => error,
        };
        store.abandon_pending();
        if matches!(error, AttemptError::Inconsistent(_)) {
            // Forget the resume point so the next subscription is a full resend.
            store = FeedStore::default();
        }
        // A version applied during the attempt means control was healthy: start over.
        let progressed = status.borrow().consecutive_failures == 0;
        let delay = backoff.next(progressed);
        tracing::warn!(%error, retry_in = ?delay, "control feed disconnected; keeping last config");
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
    store: &mut FeedStore,
    snapshots: &watch::Sender<Arc<MeshSnapshot>>,
    status: &watch::Sender<FeedStatus>,
) -> AttemptError {
    let channel = match feed::connect(&config.endpoint, config.connect_timeout).await {
        Ok(channel) => channel,
        Err(error) => return error.into(),
    };
    let (feed_id, resume_version) = store.resume_point();
    let mut request = tonic::Request::new(pb::NodeSubscribeRequest {
        node_name: config.node_name.clone(),
        feed_id,
        resume_version,
    });
    if let Some(token) = &config.token {
        if let Err(error) = token.attach(&mut request).await {
            return error.into();
        }
    }
    let mut stream = match NodeFeedClient::new(channel).subscribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return AttemptError::Refused(status),
    };
    status.send_modify(|s| s.connected = true);
    loop {
        let update = match stream.message().await {
            Ok(Some(update)) => update,
            Ok(None) => return AttemptError::Ended,
            Err(status) => return AttemptError::Stream(status),
        };
        match store.apply(update) {
            Ok(Some(snapshot)) => {
                tracing::info!(
                    feed = %snapshot.feed_id,
                    version = snapshot.version,
                    workloads = snapshot.workloads.len(),
                    services = snapshot.services.len(),
                    policies = snapshot.authorizations.len(),
                    "applied control feed version"
                );
                status.send_modify(|s| {
                    s.feed_id = snapshot.feed_id.clone();
                    s.version = snapshot.version;
                    s.consecutive_failures = 0;
                    s.last_error = None;
                });
                snapshots.send_replace(snapshot);
            }
            Ok(None) => {}
            Err(error) => return error.into(),
        }
    }
}
