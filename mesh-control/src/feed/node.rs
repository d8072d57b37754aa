//! `NodeFeed.Subscribe`: the incremental workload/service/policy stream for node tunnels.
//!
//! Each subscription runs a task that sends what the node is missing, then waits for the next
//! version. Large updates are split into chunks; the last chunk of a version has `complete`
//! set. A node that stops reading for `send_timeout` is disconnected (it resumes on reconnect),
//! so a stuck client holds at most one bounded channel. Streams send encoded messages: a full
//! sync comes from the shared [`FullSyncCache`], incremental updates are encoded per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use mesh_core::drain::DrainWatch;
use mesh_core::proto::control::v1 as pb;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::full_sync::{encode, FullSyncCache};
use super::hub::Hub;
use super::state::Delta;
use crate::auth::{caller_when_synced, Authenticator};

/// Tunables of a feed stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Most resources in one message.
    pub chunk_size: usize,
    /// How long a send may wait for a slow client before the stream is closed.
    pub send_timeout: Duration,
    /// Messages buffered per stream.
    pub buffer: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            chunk_size: 100,
            send_timeout: Duration::from_secs(30),
            buffer: 2,
        }
    }
}

/// The node feed gRPC service.
#[derive(Clone)]
pub struct NodeFeedService {
    hub: Arc<Hub>,
    auth: Arc<dyn Authenticator>,
    settings: StreamSettings,
    drain: DrainWatch,
    full_sync: Arc<FullSyncCache>,
}

impl NodeFeedService {
    /// A service over `hub`; streams end when `drain` starts.
    pub fn new(
        hub: Arc<Hub>,
        auth: Arc<dyn Authenticator>,
        settings: StreamSettings,
        drain: DrainWatch,
    ) -> Self {
        Self {
            hub,
            auth,
            settings,
            drain,
            full_sync: Arc::default(),
        }
    }
}

/// Splits a delta into wire messages lazily (at least one, so an empty delta still says
/// "complete"). Lazy so a stream holds one chunk of cloned resources at a time, not the
/// whole state: 500 nodes doing a full sync at once must not multiply the state by 500.
pub struct Chunks {
    feed_id: String,
    version: u64,
    reset: bool,
    upserts: std::iter::Peekable<std::vec::IntoIter<Arc<pb::Resource>>>,
    removals: std::iter::Peekable<std::vec::IntoIter<super::state::Key>>,
    chunk_size: usize,
    done: bool,
}

/// The wire messages for `delta`.
pub fn chunk(feed_id: &str, delta: Delta, chunk_size: usize) -> Chunks {
    Chunks {
        feed_id: feed_id.to_string(),
        version: delta.version,
        reset: delta.reset,
        upserts: delta.upserts.into_iter().peekable(),
        removals: delta.removals.into_iter().peekable(),
        chunk_size: chunk_size.max(1),
        done: false,
    }
}

impl Iterator for Chunks {
    type Item = pb::NodeUpdate;

    fn next(&mut self) -> Option<pb::NodeUpdate> {
        if self.done {
            return None;
        }
        let mut message = pb::NodeUpdate {
            feed_id: self.feed_id.clone(),
            version: self.version,
            // Only the first message resets.
            reset: std::mem::take(&mut self.reset),
            ..Default::default()
        };
        while message.upserts.len() + message.removals.len() < self.chunk_size {
            if let Some(resource) = self.upserts.next() {
                message.upserts.push((*resource).clone());
            } else if let Some((kind, key)) = self.removals.next() {
                let kind = kind.into();
                message.removals.push(pb::ResourceKey { kind, key });
            } else {
                break;
            }
        }
        message.complete = self.upserts.peek().is_none() && self.removals.peek().is_none();
        self.done = message.complete;
        Some(message)
    }
}

/// The status returned before the first snapshot is published.
pub fn not_synced() -> Status {
    Status::unavailable("control service has not synced its config yet, retry shortly")
}

type Tx = mpsc::Sender<Result<Bytes, Status>>;

/// The stream of encoded `NodeUpdate`s one subscriber receives.
pub type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Sends messages; `false` when the client is gone or too slow.
async fn send_all(tx: &Tx, messages: impl Iterator<Item = Bytes>, timeout: Duration) -> bool {
    for message in messages {
        match tokio::time::timeout(timeout, tx.send(Ok(message))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "node stopped reading the feed, closing its stream"
                );
                return false;
            }
        }
    }
    true
}

/// Sends `delta` (the shared encoding when it is a full sync); the version sent, or `None`
/// when the stream is over.
async fn send_delta(
    hub: &Hub,
    cache: &FullSyncCache,
    delta: Delta,
    settings: &StreamSettings,
    tx: &Tx,
) -> Option<u64> {
    let timeout = settings.send_timeout;
    if delta.reset {
        // The shared encoding may be of a newer version than `delta`: still a full reset.
        let full = cache.get(hub, settings.chunk_size);
        let sent = send_all(tx, full.chunks.iter().cloned(), timeout).await;
        return sent.then_some(full.version);
    }
    let version = delta.version;
    let messages = chunk(&hub.feed_id(), delta, settings.chunk_size).map(|m| encode(&m));
    send_all(tx, messages, timeout).await.then_some(version)
}

async fn run_stream(
    hub: Arc<Hub>,
    cache: Arc<FullSyncCache>,
    node: String,
    resume: Option<(String, u64)>,
    settings: StreamSettings,
    tx: Tx,
    mut drain: DrainWatch,
) {
    let mut versions = hub.subscribe_versions();
    let mut cursor = resume;
    let mut first = true;
    loop {
        versions.borrow_and_update();
        let delta = hub.delta(cursor.as_ref().map(|(id, v)| (id.as_str(), *v)));
        let feed_id = hub.feed_id();
        let mut version = delta.version;
        let has_changes = delta.reset || !delta.upserts.is_empty() || !delta.removals.is_empty();
        if first || has_changes {
            tracing::debug!(%node, version, reset = delta.reset, upserts = delta.upserts.len(), "sending node update");
            match send_delta(&hub, &cache, delta, &settings, &tx).await {
                Some(sent) => version = sent,
                None => return,
            }
        }
        first = false;
        cursor = Some((feed_id, version));
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            () = drain.signaled() => return,
            () = tx.closed() => return,
        }
    }
}

impl NodeFeedService {
    /// `NodeFeed.Subscribe`: authenticates the node, then streams its updates.
    pub async fn subscribe(
        &self,
        request: Request<pb::NodeSubscribeRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        let caller = caller_when_synced(self.auth.as_ref(), &self.hub, request.metadata()).await?;
        let who = caller.node_only()?.clone();
        let request = request.into_inner();
        if request.node_name != who.node {
            return Err(Status::permission_denied(format!(
                "token belongs to node {:?}, not {:?}",
                who.node, request.node_name
            )));
        }
        let resume = (!request.feed_id.is_empty())
            .then(|| (request.feed_id.clone(), request.resume_version));
        tracing::info!(node = %who.node, resume = ?resume, "node subscribed");
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let task = run_stream(
            Arc::clone(&self.hub),
            Arc::clone(&self.full_sync),
            who.node,
            resume,
            self.settings.clone(),
            tx,
            self.drain.clone(),
        );
        tokio::spawn(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Snapshot, Workload};

    fn hub_with_workloads(n: usize) -> Arc<Hub> {
        let hub = Arc::new(Hub::with_feed_id("f".into(), 100));
        let mut snapshot = Snapshot::default();
        for i in 0..n {
            let uid = format!("ns/pod-{i}");
            let workload = Workload {
                uid: uid.clone(),
                name: format!("pod-{i}"),
                workload_name: format!("pod-{i}"),
                workload_kind: "pod".into(),
                pod_uid: String::new(),
                namespace: "ns".into(),
                ips: Vec::new(),
                node: "n".into(),
                service_account: "default".into(),
                identity: String::new(),
                enrolled: true,
                same_node_plaintext: false,
                waypoint: None,
                labels: Default::default(),
                policies: Vec::new(),
                mtls: Default::default(),
                port_mtls: Default::default(),
            };
            snapshot.workloads.insert(uid, workload);
        }
        hub.apply(Arc::new(snapshot));
        hub
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_client_is_dropped_after_send_timeout() {
        let hub = hub_with_workloads(4);
        let settings = StreamSettings {
            chunk_size: 1,
            buffer: 1,
            send_timeout: Duration::from_secs(30),
        };
        let (tx, mut rx) = mpsc::channel(1);
        let (_trigger, watch) = mesh_core::drain::channel();
        let started = tokio::time::Instant::now();
        let cache = Arc::default();
        let task = tokio::spawn(run_stream(
            hub,
            cache,
            "n".into(),
            None,
            settings,
            tx,
            watch,
        ));
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("stream task gives up instead of hanging")
            .expect("task");
        assert!(started.elapsed() >= Duration::from_secs(30));
        // Only what fitted in the buffer was queued; then the channel is closed.
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn chunk_marks_reset_on_first_and_complete_on_last() {
        let hub = hub_with_workloads(5);
        let messages: Vec<_> = chunk("f", hub.delta(None), 2).collect();
        let flags: Vec<(bool, bool, usize)> = messages
            .iter()
            .map(|m| (m.reset, m.complete, m.upserts.len()))
            .collect();
        assert_eq!(
            flags,
            [(true, false, 2), (false, false, 2), (false, true, 1)]
        );
        let empty: Vec<_> = chunk("f", hub.delta(Some(("f", hub.version()))), 2).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].complete && !empty[0].reset && empty[0].upserts.is_empty());
    }
}
