//! Readiness of a node that follows mesh-control: 503 with the reason until a complete feed
//! version is applied and its workloads have certificates, 200 then, 503 again when draining. A
//! CA that refuses one pod holds back neither the version nor the other pods.

mod tunnel_support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use mesh_core::identity::{CertificateSource, SourceError, SpiffeId, WorkloadCert};
use mesh_node::{
    app::{self, Deps},
    config::Config,
    feed::MeshSnapshot,
    socket::SystemSockets,
    state::State,
};
use tunnel_support::{http_get, policies, state_for, TestCa};

/// A CA that can be switched off, like mesh-control while it is unreachable.
struct SwitchableCa {
    up: AtomicBool,
    inner: Arc<dyn CertificateSource>,
}

impl CertificateSource for SwitchableCa {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        if self.up.load(Ordering::Acquire) {
            return self.inner.fetch(identity);
        }
        let error = SourceError::Timeout {
            identity: identity.to_string(),
            after: Duration::from_secs(10),
        };
        Box::pin(async move { Err(error) })
    }
}

fn settings() -> Config {
    let yaml = r#"
node_name: n1
in_pod: { enabled: false }
listeners:
  outbound: 127.0.0.1:0
  inbound_plaintext: 127.0.0.1:0
  hbone: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  admin: 127.0.0.1:0
"#;
    Config::from_yaml(yaml).unwrap()
}

/// Node n1's view of a mesh of `pods` (names in namespace apps, each its own service account).
fn state(pods: &[(&str, &str)]) -> State {
    let workloads = pods.iter().map(|(name, ip)| {
        let account = name.trim_end_matches("-0");
        tunnel_support::pod("apps", name, account, ip, "n1")
    });
    state_for("n1", &MeshSnapshot::of(workloads, []))
}

/// Polls readiness until 200 (the background certificate fetch retries within seconds).
async fn wait_ready(node: &app::Bound) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(node.readiness, "/healthz/ready").await;
        if status == 200 {
            assert!(node.not_ready_reasons().is_empty());
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_a_feed_version_with_certificates_is_applied() {
    let ca = TestCa::new();
    let certs = Arc::new(SwitchableCa {
        up: AtomicBool::new(false),
        inner: ca.source(),
    });
    let mut startup = settings();
    startup.follows_control_feed = true;
    let deps = Deps {
        sockets: Arc::new(SystemSockets),
        certs: certs.clone(),
    };
    let node = app::build_with(startup, state(&[]), Default::default(), deps)
        .await
        .unwrap();
    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("waiting for the first complete version of the control feed"),
        "{body}"
    );

    // Version 1 names a local pod, but the CA is down: the version applies (so its policies
    // are in force) and the page names the identity still without a certificate.
    let local = ("app-0", "10.9.0.1");
    node.apply_feed_version(1, state(&[local]), Default::default())
        .await;
    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no certificate yet for spiffe://cluster.local/ns/apps/sa/app")
            && !body.contains("waiting for the first"),
        "{body}"
    );

    // The CA comes back: the background fetch gets the certificate without another version.
    certs.up.store(true, Ordering::Release);
    wait_ready(&node).await;

    // A later version whose new pod the CA refuses applies too: the deny-all policy it brings
    // is enforced at once; only the new pod waits for its certificate.
    certs.up.store(false, Ordering::Release);
    let more = [local, ("new-0", "10.9.0.2")];
    let deny_all = policies(
        "[{key: apps/deny-all, name: deny-all, namespace: apps, scope: POLICY_SCOPE_NAMESPACE, \
         action: POLICY_ACTION_DENY, rules: [{}]}]",
        &[],
    );
    node.apply_feed_version(3, state(&more), deny_all).await;
    let (_, dump) = http_get(node.admin, "/config_dump").await;
    assert!(dump.contains("\"policies\": 1"), "{dump}");
    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/apps/sa/new")
            && !body.contains("sa/app,")
            && !body.contains("sa/app\n"),
        "only the new pod lacks a certificate: {body}"
    );
    certs.up.store(true, Ordering::Release);
    wait_ready(&node).await;

    // Draining shows as soon as shutdown is called, before the drain runs.
    let readiness = node.readiness;
    let drain = node.shutdown();
    let (status, body) = http_get(readiness, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_node_is_ready_at_once() {
    let ca = TestCa::new();
    let deps = Deps {
        sockets: Arc::new(SystemSockets),
        certs: ca.source(),
    };
    let local = state(&[("app-0", "10.9.0.1")]);
    let node = app::build_with(settings(), local, Default::default(), deps)
        .await
        .unwrap();
    let (status, body) = http_get(node.readiness, "/healthz/ready").await;
    assert_eq!((status, body.ends_with("ready\n")), (200, true), "{body}");
    assert_eq!(http_get(node.readiness, "/other").await.0, 404);
}
