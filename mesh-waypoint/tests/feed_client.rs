//! The feed client against an in-process `WaypointFeed` on loopback: refusals are retried with
//! backoff and reported, versions reach the sink, a rejected version keeps the resume point, and
//! a version the size of a large mesh (well over tonic's 4 MiB default) loads.

mod mesh;

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use mesh::{FakeFeed, WAIT};
use mesh_core::{
    control::{ControlConnection, ControlEndpoint},
    drain,
    proto::control::v1 as pb,
};
use mesh_waypoint::feed::{
    client::{self, ConfigSink},
    FeedClientConfig, FeedStatus,
};
use tokio::sync::watch;

/// Records versions; rejects the versions listed in `reject`.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<u64>>,
    reject: Vec<u64>,
}

impl ConfigSink for Recorder {
    fn apply(&self, config: &pb::WaypointConfig) -> Result<(), String> {
        if self.reject.contains(&config.version) {
            return Err(format!("version {} rejected by the test", config.version));
        }
        self.applied.lock().expect("lock").push(config.version);
        Ok(())
    }
}

fn version(v: u64) -> pb::WaypointConfig {
    pb::WaypointConfig {
        feed_id: "feed-a".into(),
        version: v,
        ..Default::default()
    }
}

async fn wait(status: &mut watch::Receiver<FeedStatus>, what: impl Fn(&FeedStatus) -> bool) {
    tokio::time::timeout(WAIT, status.wait_for(what))
        .await
        .expect("status in time")
        .expect("client alive");
}

/// The feed client subscribed to `url`, applying to `sink`, retrying after 5 ms.
struct Running {
    status: watch::Receiver<FeedStatus>,
    trigger: drain::DrainTrigger,
    task: tokio::task::JoinHandle<()>,
}

fn start(url: &str, sink: &Arc<Recorder>) -> Running {
    let mut control = ControlConnection::new(ControlEndpoint::new(url, None).expect("address"));
    control.initial_backoff = Duration::from_millis(5);
    let config = FeedClientConfig::new(control, "mesh", "waypoint");
    let (status_tx, status) = watch::channel(FeedStatus::default());
    let (trigger, watch) = drain::channel();
    let recorder = sink.clone();
    let task =
        tokio::spawn(async move { client::run(config, recorder.as_ref(), status_tx, watch).await });
    Running {
        status,
        trigger,
        task,
    }
}

impl Running {
    /// Drains the client and waits for it to stop.
    async fn stop(self) {
        let _ = self.trigger.drain(WAIT).await;
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops on drain")
            .expect("task");
    }
}

#[tokio::test]
async fn refusals_retry_and_rejected_versions_keep_the_resume_point() {
    let feed = FakeFeed::default();
    feed.refuse.store(1, Ordering::SeqCst);
    let (url, _control) = feed.serve().await;
    let sink = Arc::new(Recorder {
        reject: vec![2],
        ..Default::default()
    });
    let mut client = start(&url, &sink);

    feed.wait_subscriptions(2).await;
    let refused = client
        .status
        .borrow()
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(refused.contains("refused"), "refusal reported: {refused}");
    feed.push(version(1)).await;
    wait(&mut client.status, |s| s.version == 1 && s.connected).await;
    feed.push(version(2)).await;
    wait(&mut client.status, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("rejected"))
    })
    .await;
    assert_eq!(
        client.status.borrow().version,
        1,
        "a rejected version is not in force"
    );

    feed.end_streams();
    feed.wait_subscriptions(3).await;
    let resume = feed.requests.lock().expect("lock")[2].0.clone();
    assert_eq!(
        (resume.feed_id.as_str(), resume.resume_version),
        ("feed-a", 1)
    );
    feed.push(version(3)).await;
    wait(&mut client.status, |s| s.version == 3).await;
    assert_eq!(*sink.applied.lock().expect("lock"), [1, 3]);

    client.stop().await;
}

/// A waypoint in front of 50,000 endpoints with 1,000 TLS credentials: one feed message of
/// about 8 MB.
fn large_version(v: u64) -> pb::WaypointConfig {
    let workloads = (0..50_000u32)
        .map(|i| pb::Workload {
            uid: format!("Kubernetes//Pod/shop/cart-{i:05}"),
            name: format!("cart-{i:05}"),
            namespace: "shop".into(),
            service_account: "cart".into(),
            addresses: vec![vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8]],
            node: format!("node-{}", i % 500),
            ..Default::default()
        })
        .collect();
    // A PEM chain and key of realistic size (the recording sink does not parse them).
    let pem = |label: &str, len: usize| {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            "A".repeat(len)
        )
    };
    let tls_credentials = (0..1_000u32)
        .map(|i| pb::TlsCredential {
            hosts: vec![format!("shop-{i}.example.com")],
            cert_chain_pem: pem("CERTIFICATE", 2_400),
            key_pem: pem("PRIVATE KEY", 1_700),
            name: format!("istio-system/shop-{i}-cert"),
        })
        .collect();
    pb::WaypointConfig {
        feed_id: "feed-large".into(),
        version: v,
        workloads,
        tls_credentials,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_version_the_size_of_a_large_mesh_loads() {
    let large = large_version(1);
    let size = prost::Message::encoded_len(&large);
    assert!(
        size > 4 << 20,
        "larger than tonic's default limit ({size} bytes)"
    );
    assert!(size < mesh_core::feed::MAX_FEED_MESSAGE);
    let feed = FakeFeed::default();
    let (url, _control) = feed.serve().await;
    let sink = Arc::new(Recorder::default());
    let mut client = start(&url, &sink);
    feed.wait_subscriptions(1).await;
    feed.push(large).await;
    wait(&mut client.status, |s| {
        s.version == 1 || s.last_error.is_some()
    })
    .await;
    assert_eq!(
        (
            client.status.borrow().version,
            client.status.borrow().last_error.clone()
        ),
        (1, None),
        "the large version is in force"
    );
    assert_eq!(*sink.applied.lock().expect("lock"), [1]);
    client.stop().await;
}
