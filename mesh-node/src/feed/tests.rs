//! The feed store's version assembly, and the client against a scripted `NodeFeed` server on
//! loopback: first sync, resume after a disconnect, and keeping the last snapshot while
//! mesh-control is gone.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_core::{
    control::{ControlConnection, ControlEndpoint},
    drain,
    identity::grpc::BearerToken,
    proto::control::v1 as pb,
};
use pb::node_feed_server::{NodeFeed, NodeFeedServer};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::{run, FeedClientConfig, FeedError, FeedStatus, FeedStore, MeshSnapshot};

const WAIT: Duration = Duration::from_secs(10);

fn workload(uid: &str) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Workload(pb::Workload {
            uid: uid.into(),
            ..Default::default()
        })),
    }
}

fn policy(key: &str) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Authorization(pb::Authorization {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn update(
    feed: &str,
    version: u64,
    reset: bool,
    complete: bool,
    upserts: Vec<pb::Resource>,
) -> pb::NodeUpdate {
    pb::NodeUpdate {
        feed_id: feed.into(),
        version,
        reset,
        complete,
        upserts,
        removals: vec![],
    }
}

fn removal(kind: pb::ResourceKind, key: &str) -> pb::ResourceKey {
    pb::ResourceKey {
        kind: kind as i32,
        key: key.into(),
    }
}

#[test]
fn chunked_version_is_published_only_when_complete() {
    let mut store = FeedStore::default();
    let first = store.apply(update("f1", 3, true, false, vec![workload("demo/a")]));
    assert_eq!(first, Ok(None));
    assert!(
        store.applied().workloads.is_empty(),
        "half a version must not be visible"
    );
    let done = store
        .apply(update(
            "f1",
            3,
            false,
            true,
            vec![workload("demo/b"), policy("demo/p")],
        ))
        .unwrap()
        .expect("complete version");
    assert_eq!(
        done.workloads.keys().collect::<Vec<_>>(),
        ["demo/a", "demo/b"]
    );
    assert_eq!(done.authorizations.len(), 1);
    assert_eq!(store.resume_point(), ("f1".to_string(), 3));
}

#[test]
fn incremental_updates_upsert_and_remove() {
    let mut store = FeedStore::default();
    store
        .apply(update(
            "f1",
            1,
            true,
            true,
            vec![workload("demo/a"), policy("demo/p")],
        ))
        .unwrap();
    let mut next = update("f1", 2, false, true, vec![workload("demo/c")]);
    next.removals = vec![
        removal(pb::ResourceKind::Workload, "demo/a"),
        removal(pb::ResourceKind::Authorization, "demo/p"),
    ];
    let snapshot = store.apply(next).unwrap().unwrap();
    assert_eq!(snapshot.workloads.keys().collect::<Vec<_>>(), ["demo/c"]);
    assert!(snapshot.authorizations.is_empty());
}

#[test]
fn reset_drops_everything_before() {
    let mut store = FeedStore::default();
    store
        .apply(update("f1", 5, true, true, vec![workload("demo/a")]))
        .unwrap();
    let snapshot = store
        .apply(update("f2", 1, true, true, vec![workload("demo/b")]))
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.feed_id, "f2");
    assert_eq!(snapshot.workloads.keys().collect::<Vec<_>>(), ["demo/b"]);
}

#[test]
fn inconsistent_updates_are_errors() {
    let mut store = FeedStore::default();
    store.apply(update("f1", 5, true, true, vec![])).unwrap();
    let stale = store.apply(update("f1", 5, false, true, vec![]));
    assert_eq!(stale, Err(FeedError::StaleVersion { applied: 5, got: 5 }));
    let other_feed = store.apply(update("f2", 6, false, true, vec![]));
    assert!(matches!(other_feed, Err(FeedError::FeedChanged { .. })));
    store.apply(update("f1", 6, false, false, vec![])).unwrap();
    let interleaved = store.apply(update("f1", 7, false, true, vec![]));
    assert_eq!(
        interleaved,
        Err(FeedError::Interleaved { pending: 6, got: 7 })
    );
    store.abandon_pending();
    let empty = store.apply(update(
        "f1",
        7,
        false,
        true,
        vec![pb::Resource { kind: None }],
    ));
    assert_eq!(empty, Err(FeedError::EmptyResource { version: 7 }));
}

/// What one subscription gets: these messages, then the stream ends (or stays open).
struct Script {
    updates: Vec<pb::NodeUpdate>,
    hang: bool,
}

#[derive(Default)]
struct FakeControl {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<(pb::NodeSubscribeRequest, Option<String>)>>,
}

type UpdateStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::NodeUpdate, tonic::Status>> + Send>>;

/// The gRPC face of a shared [`FakeControl`].
struct FakeService(Arc<FakeControl>);

#[tonic::async_trait]
impl NodeFeed for FakeService {
    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        request: tonic::Request<pb::NodeSubscribeRequest>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.0
            .requests
            .lock()
            .unwrap()
            .push((request.into_inner(), token));
        let script = self.0.scripts.lock().unwrap().pop_front();
        let Some(script) = script else {
            return Err(tonic::Status::unavailable("no script left"));
        };
        let updates = tokio_stream::iter(script.updates.into_iter().map(Ok));
        let stream: UpdateStream = if script.hang {
            Box::pin(tokio_stream::StreamExt::chain(
                updates,
                tokio_stream::pending(),
            ))
        } else {
            Box::pin(updates)
        };
        Ok(tonic::Response::new(stream))
    }
}

async fn serve(fake: Arc<FakeControl>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(NodeFeedServer::new(FakeService(fake)))
        .serve_with_incoming(TcpListenerStream::new(listener));
    let task = tokio::spawn(async move {
        let _ = server.await;
    });
    (format!("http://{address}"), task)
}

fn config(endpoint: &str) -> FeedClientConfig {
    let endpoint = ControlEndpoint::new(endpoint, None).unwrap();
    FeedClientConfig {
        control: ControlConnection {
            token: Some(BearerToken::inline("node-token").unwrap()),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..ControlConnection::new(endpoint)
        },
        node_name: "n1".into(),
    }
}

async fn wait_for<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    done: impl Fn(&T) -> bool,
) -> T {
    let found = tokio::time::timeout(WAIT, rx.wait_for(|value| done(value))).await;
    let found = found.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    found.expect("sender alive").clone()
}

#[tokio::test]
async fn syncs_then_resumes_after_a_disconnect() {
    let fake = Arc::new(FakeControl::default());
    fake.scripts.lock().unwrap().extend([
        Script {
            updates: vec![update("f1", 4, true, true, vec![workload("demo/a")])],
            hang: false,
        },
        Script {
            updates: vec![update("f1", 5, false, true, vec![workload("demo/b")])],
            hang: true,
        },
    ]);
    let (endpoint, _server) = serve(fake.clone()).await;
    let (snapshots_tx, mut snapshots) = watch::channel(Arc::new(MeshSnapshot::default()));
    let (status_tx, _status) = watch::channel(FeedStatus::default());
    let (trigger, watch) = drain::channel();
    let client = tokio::spawn(run(config(&endpoint), snapshots_tx, status_tx, watch));

    let snapshot = wait_for(&mut snapshots, "version 5", |s| s.version == 5).await;
    assert_eq!(
        snapshot.workloads.keys().collect::<Vec<_>>(),
        ["demo/a", "demo/b"]
    );
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].0.node_name, "n1");
    assert_eq!(requests[0].1.as_deref(), Some("Bearer node-token"));
    assert_eq!(
        (requests[0].0.feed_id.as_str(), requests[0].0.resume_version),
        ("", 0)
    );
    assert_eq!(
        (requests[1].0.feed_id.as_str(), requests[1].0.resume_version),
        ("f1", 4)
    );

    trigger.drain(WAIT).await;
    tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
}

#[tokio::test]
async fn keeps_last_snapshot_while_control_is_unreachable() {
    let fake = Arc::new(FakeControl::default());
    fake.scripts.lock().unwrap().push_back(Script {
        updates: vec![update("f1", 1, true, true, vec![policy("demo/p")])],
        hang: false,
    });
    let (endpoint, server) = serve(fake.clone()).await;
    let (snapshots_tx, mut snapshots) = watch::channel(Arc::new(MeshSnapshot::default()));
    let (status_tx, mut status) = watch::channel(FeedStatus::default());
    let (trigger, watch) = drain::channel();
    let client = tokio::spawn(run(config(&endpoint), snapshots_tx, status_tx, watch));

    wait_for(&mut snapshots, "version 1", |s| s.version == 1).await;
    server.abort();
    let failing = wait_for(&mut status, "repeated failures", |s| {
        s.consecutive_failures >= 3
    })
    .await;
    assert!(!failing.connected);
    assert_eq!(failing.version, 1);
    assert!(failing.last_error.is_some());
    assert_eq!(
        snapshots.borrow().authorizations.len(),
        1,
        "last config must stay in force"
    );

    trigger.drain(WAIT).await;
    tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
}

#[tokio::test]
async fn inconsistent_stream_forces_a_full_resync() {
    let fake = Arc::new(FakeControl::default());
    fake.scripts.lock().unwrap().extend([
        Script {
            updates: vec![
                update("f1", 2, true, true, vec![workload("demo/a")]),
                update("f1", 2, false, true, vec![]),
            ],
            hang: true,
        },
        Script {
            updates: vec![update("f1", 3, true, true, vec![workload("demo/z")])],
            hang: true,
        },
    ]);
    let (endpoint, _server) = serve(fake.clone()).await;
    let (snapshots_tx, mut snapshots) = watch::channel(Arc::new(MeshSnapshot::default()));
    let (status_tx, _status) = watch::channel(FeedStatus::default());
    let (trigger, watch) = drain::channel();
    let client = tokio::spawn(run(config(&endpoint), snapshots_tx, status_tx, watch));

    let snapshot = wait_for(&mut snapshots, "version 3", |s| s.version == 3).await;
    assert_eq!(snapshot.workloads.keys().collect::<Vec<_>>(), ["demo/z"]);
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(
        requests[1].0.resume_version, 0,
        "after an inconsistency, resubscribe from scratch"
    );

    trigger.drain(WAIT).await;
    tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
}
