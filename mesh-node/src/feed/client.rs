//! Keeps the node subscribed to mesh-control and publishes each complete snapshot.

use std::sync::Arc;

pub use mesh_core::feed::FeedStatus;
use mesh_core::{
    control::{ControlConnection, OpenError},
    drain::DrainWatch,
    feed::Resubscriber,
    proto::control::v1 as pb,
};
use pb::node_feed_client::NodeFeedClient;
use tokio::sync::watch;

use super::store::{FeedStore, MeshSnapshot};

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct FeedClientConfig {
    /// mesh-control, the node's token, timeouts and backoff.
    pub control: ControlConnection,
    /// This node's name, as pods' `spec.nodeName` says it.
    pub node_name: String,
}

/// Why one subscription attempt ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("mesh-control refused the subscription: {0}")]
    Refused(tonic::Status),
    #[error("feed stream broke: {0}")]
    Stream(tonic::Status),
    #[error("feed stream ended by mesh-control")]
    Ended,
    #[error("inconsistent feed, resubscribing from scratch: {0}")]
    Inconsistent(#[from] super::store::FeedError),
}

/// Runs until the drain starts, publishing every complete snapshot on `snapshots` and the
/// subscription's state on `status`. The last snapshot stays published through disconnects.
pub async fn run(
    config: FeedClientConfig,
    snapshots: watch::Sender<Arc<MeshSnapshot>>,
    status: watch::Sender<FeedStatus>,
    drain: DrainWatch,
) {
    let mut store = FeedStore::default();
    let mut retry = Resubscriber::new(&config.control, "node", drain);
    loop {
        let error = tokio::select! {
            _ = retry.drained() => return,
            error = subscribe(&config, &mut store, &snapshots, &status) => error,
        };
        store.abandon_pending();
        if matches!(error, AttemptError::Inconsistent(_)) {
            // Forget the resume point so the next subscription is a full resend.
            store = FeedStore::default();
        }
        if !retry.wait_after(&error, &status).await {
            return;
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
    let (feed_id, resume_version) = store.resume_point();
    let message = pb::NodeSubscribeRequest {
        node_name: config.node_name.clone(),
        feed_id,
        resume_version,
    };
    let (channel, request) = match config.control.open(message).await {
        Ok(opened) => opened,
        Err(error) => return error.into(),
    };
    let mut client =
        NodeFeedClient::new(channel).max_decoding_message_size(mesh_core::feed::MAX_FEED_MESSAGE);
    let mut stream = match client.subscribe(request).await {
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
