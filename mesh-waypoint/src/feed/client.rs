//! Keeps the waypoint subscribed to mesh-control's `WaypointFeed` and hands every complete
//! configuration to a [`ConfigSink`]. Disconnects never clear the configuration in force: the
//! waypoint keeps serving the last good version while it reconnects with jittered, capped
//! exponential backoff, resuming from the feed id and version it has.

pub use mesh_core::feed::FeedStatus;
use mesh_core::{
    control::{ControlConnection, OpenError},
    drain::DrainWatch,
    feed::Resubscriber,
    proto::control::v1 as pb,
};
use pb::waypoint_feed_client::WaypointFeedClient;
use tokio::sync::watch;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct FeedClientConfig {
    /// mesh-control, the waypoint's token, timeouts and backoff.
    pub control: ControlConnection,
    /// Namespace of the waypoint Service.
    pub namespace: String,
    /// Name of the waypoint Service.
    pub name: String,
}

impl FeedClientConfig {
    /// Subscribes to the feed of waypoint `namespace/name`.
    pub fn new(control: ControlConnection, namespace: &str, name: &str) -> Self {
        Self {
            control,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
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
    Open(#[from] OpenError),
    #[error("mesh-control refused the waypoint subscription (is the token allowed to read this waypoint?): {0}")]
    Refused(tonic::Status),
    #[error("feed stream broke: {0}")]
    Stream(tonic::Status),
    #[error("feed stream ended by mesh-control")]
    Ended,
}

/// Runs until the drain starts. The last applied configuration stays in force throughout.
pub async fn run(
    config: FeedClientConfig,
    sink: &dyn ConfigSink,
    status: watch::Sender<FeedStatus>,
    drain: DrainWatch,
) {
    let mut retry = Resubscriber::new(&config.control, "waypoint", drain);
    loop {
        let error = tokio::select! {
            _ = retry.drained() => return,
            error = subscribe(&config, sink, &status) => error,
        };
        if !retry.wait_after(&error, &status).await {
            return;
        }
    }
}

/// One subscription: returns why it ended (it never ends without an error).
async fn subscribe(
    config: &FeedClientConfig,
    sink: &dyn ConfigSink,
    status: &watch::Sender<FeedStatus>,
) -> AttemptError {
    let (feed_id, resume_version) = {
        let s = status.borrow();
        (s.feed_id.clone(), s.version)
    };
    let message = pb::WaypointSubscribeRequest {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        feed_id,
        resume_version,
    };
    let (channel, request) = match config.control.open(message).await {
        Ok(opened) => opened,
        Err(error) => return error.into(),
    };
    let mut client = WaypointFeedClient::new(channel)
        .max_decoding_message_size(mesh_core::feed::MAX_FEED_MESSAGE);
    let mut stream = match client.subscribe(request).await {
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
