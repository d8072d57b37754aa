//! The feeds served over an in-memory pipe to real tonic clients.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::proto::control::v1 as pb;
use pb::node_feed_client::NodeFeedClient;
use pb::waypoint_feed_client::WaypointFeedClient;
use tonic::transport::Server;
use tonic::Streaming;

use super::hub::Hub;
use super::node::{NodeFeedService, StreamSettings};
use super::node_server::NodeFeedServer;
use super::waypoint::WaypointFeedService;
use crate::auth::TokenAuthenticator;
use crate::registry::{parse_yaml, Parsed, Registry, RegistryConfig};
use crate::store::Store;
use crate::testing::{serve_in_memory, with_token};

const TOKEN_A: &str = "token-for-node-a-0123";
const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.99, selector: {gateway: wp}, ports: [{name: hbone, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-1, namespace: app, labels: {gateway: wp, weft.dev/dataplane-mode: none}}
spec: {nodeName: node-a, containers: []}
status: {podIP: 10.0.0.50}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {weft.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, containers: []}
status: {podIP: 10.0.0.1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}], timeouts: {request: 3s}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-get, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

const POD_2: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: app, labels: {app: web}}
spec: {nodeName: node-b, containers: []}
status: {podIP: 10.0.0.2}
"#;

struct Fixture {
    store: Arc<Store>,
    channel: tonic::transport::Channel,
    _trigger: mesh_core::drain::DrainTrigger,
}

fn load(store: &Store, texts: &[&str]) {
    let mut parsed = Parsed::default();
    for (i, text) in texts.iter().enumerate() {
        parse_yaml(&format!("f{i}.yaml"), text, &mut parsed);
    }
    store.update(|r| r.replace_all(parsed));
    store.publish_now();
}

async fn fixture(settings: StreamSettings) -> Fixture {
    let hub = Arc::new(Hub::with_feed_id("feed-1".into(), 1000));
    let store = Store::new(Registry::new(RegistryConfig::default()), Arc::clone(&hub));
    load(&store, &[CONFIG]);
    let auth = Arc::new(TokenAuthenticator::new([("node-a", TOKEN_A)]));
    let (trigger, watch) = mesh_core::drain::channel();
    let node = NodeFeedService::new(
        Arc::clone(&hub),
        auth.clone(),
        settings.clone(),
        watch.clone(),
    );
    let waypoint = WaypointFeedService::new(hub, auth, settings, watch);
    let router = Server::builder()
        .add_service(NodeFeedServer::new(node))
        .add_service(pb::waypoint_feed_server::WaypointFeedServer::new(waypoint));
    let channel = serve_in_memory(router).await;
    Fixture {
        store,
        channel,
        _trigger: trigger,
    }
}

async fn subscribe(f: &Fixture, feed_id: &str, version: u64) -> Streaming<pb::NodeUpdate> {
    let request = pb::NodeSubscribeRequest {
        node_name: "node-a".into(),
        feed_id: feed_id.into(),
        resume_version: version,
    };
    let mut client = NodeFeedClient::new(f.channel.clone());
    client
        .subscribe(with_token(request, TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner()
}

async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("message within timeout")
        .expect("stream ok")
        .expect("stream open")
}

fn uids(update: &pb::NodeUpdate) -> Vec<String> {
    update
        .upserts
        .iter()
        .filter_map(|r| match &r.kind {
            Some(pb::resource::Kind::Workload(w)) => Some(w.uid.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn node_gets_full_state_then_only_changes() {
    let f = fixture(StreamSettings::default()).await;
    let mut stream = subscribe(&f, "", 0).await;
    let first = next(&mut stream).await;
    assert!(first.reset && first.complete);
    assert_eq!(first.feed_id, "feed-1");
    assert_eq!(uids(&first), ["app/web-1", "app/wp-1"]);
    // 2 workloads + 2 services + 1 policy.
    assert_eq!(first.upserts.len(), 5);
    load(&f.store, &[CONFIG, POD_2]);
    let second = next(&mut stream).await;
    assert!(!second.reset && second.complete);
    assert_eq!(second.version, first.version + 1);
    // The new pod, and the service whose endpoints changed.
    assert_eq!(uids(&second), ["app/web-2"]);
    assert_eq!(second.upserts.len(), 2);
    load(&f.store, &[CONFIG]);
    let third = next(&mut stream).await;
    let removed: Vec<&str> = third.removals.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(removed, ["app/web-2"]);
}

/// Nodes route traffic for a waypoint-bound service to the waypoint: the service carries the
/// waypoint Service's address and HBONE port; an unbound service carries none.
#[tokio::test]
async fn node_feed_carries_the_waypoint_address_of_bound_services() {
    let f = fixture(StreamSettings::default()).await;
    let mut stream = subscribe(&f, "", 0).await;
    let first = next(&mut stream).await;
    let services: std::collections::BTreeMap<&str, &pb::Service> = first
        .upserts
        .iter()
        .filter_map(|r| match &r.kind {
            Some(pb::resource::Kind::Service(s)) => Some((s.name.as_str(), s)),
            _ => None,
        })
        .collect();
    let expected = pb::WaypointRef {
        namespace: "app".into(),
        name: "wp".into(),
        address: vec![10, 96, 0, 99],
        hbone_port: 15008,
    };
    assert_eq!(services["web"].waypoint, Some(expected));
    assert_eq!(
        services["wp"].waypoint, None,
        "the waypoint is not bound to itself"
    );
}

#[tokio::test]
async fn reconnect_resumes_from_version_or_resends_everything() {
    let f = fixture(StreamSettings::default()).await;
    let version = next(&mut subscribe(&f, "", 0).await).await.version;
    load(&f.store, &[CONFIG, POD_2]);
    let resumed = next(&mut subscribe(&f, "feed-1", version).await).await;
    assert!(!resumed.reset);
    assert_eq!(uids(&resumed), ["app/web-2"]);
    let current = next(&mut subscribe(&f, "feed-1", resumed.version).await).await;
    assert!(current.upserts.is_empty() && current.removals.is_empty() && current.complete);
    let other_instance = next(&mut subscribe(&f, "feed-0", version).await).await;
    assert!(other_instance.reset);
    assert_eq!(other_instance.upserts.len(), 6);
}

#[tokio::test]
async fn large_state_is_chunked() {
    let settings = StreamSettings {
        chunk_size: 2,
        ..StreamSettings::default()
    };
    let f = fixture(settings).await;
    let mut stream = subscribe(&f, "", 0).await;
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    let c = next(&mut stream).await;
    let flags = [
        (a.reset, a.complete),
        (b.reset, b.complete),
        (c.reset, c.complete),
    ];
    assert_eq!(flags, [(true, false), (false, false), (false, true)]);
    let sizes = [a.upserts.len(), b.upserts.len(), c.upserts.len()];
    assert_eq!(sizes, [2, 2, 1]);
    assert!(a.version == b.version && b.version == c.version);
}

#[tokio::test]
async fn node_feed_refuses_bad_or_foreign_tokens() {
    let f = fixture(StreamSettings::default()).await;
    let mut client = NodeFeedClient::new(f.channel.clone());
    let request = |node: &str| pb::NodeSubscribeRequest {
        node_name: node.into(),
        ..Default::default()
    };
    let err = client
        .subscribe(tonic::Request::new(request("node-a")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .subscribe(with_token(request("node-a"), "wrong-token-0000000"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .subscribe(with_token(request("node-b"), TOKEN_A))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("node-a"), "{}", err.message());
}

#[tokio::test]
async fn waypoint_gets_its_services_routes_and_targeted_policies() {
    let f = fixture(StreamSettings::default()).await;
    let mut client = WaypointFeedClient::new(f.channel.clone());
    let request = pb::WaypointSubscribeRequest {
        namespace: "app".into(),
        name: "wp".into(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(with_token(request.clone(), TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();
    let config = next(&mut stream).await;
    let hosts: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(hosts, ["web.app.svc.cluster.local"]);
    assert_eq!(config.workloads.len(), 1);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].rules[0].timeout_ms, 3000);
    assert_eq!(config.policies.len(), 1);
    assert_eq!(config.policies[0].rules[0].to[0].methods, ["GET"]);
    // A change the waypoint cares about produces a new config.
    load(&f.store, &[CONFIG, POD_2]);
    let updated = next(&mut stream).await;
    assert_eq!(updated.workloads.len(), 2);
    assert_ne!(updated.version, config.version);
    // Resuming with the current version sends nothing until the next change.
    let resume = pb::WaypointSubscribeRequest {
        feed_id: "feed-1".into(),
        resume_version: updated.version,
        ..request
    };
    let mut resumed = client
        .subscribe(with_token(resume, TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();
    load(&f.store, &[CONFIG]);
    let after = next(&mut resumed).await;
    assert_eq!(after.workloads.len(), 1);
    assert_eq!(after.version, config.version, "same content, same version");
}

#[tokio::test]
async fn waypoint_feed_refuses_nodes_not_running_the_waypoint() {
    let f = fixture(StreamSettings::default()).await;
    let mut client = WaypointFeedClient::new(f.channel.clone());
    // `wp-b` exists, with its only pod on node-b; `other` does not exist.
    let wp_b = r#"
apiVersion: v1
kind: Service
metadata: {name: wp-b, namespace: app}
spec: {clusterIP: 10.96.0.98, selector: {gateway: wp-b}}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-b-1, namespace: app, labels: {gateway: wp-b}}
spec: {nodeName: node-b, containers: []}
status: {podIP: 10.0.0.51}
"#;
    load(&f.store, &[CONFIG, wp_b]);
    for name in ["wp-b", "other"] {
        let request = pb::WaypointSubscribeRequest {
            namespace: "app".into(),
            name: name.into(),
            ..Default::default()
        };
        let err = client
            .subscribe(with_token(request, TOKEN_A))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{name}");
        assert!(
            err.message().contains(&format!("app/{name}")),
            "{}",
            err.message()
        );
    }
}

/// Access is checked on every change: once the waypoint's pod leaves node-a, node-a's stream
/// ends with `PERMISSION_DENIED` instead of carrying on with the waypoint's config.
#[tokio::test]
async fn waypoint_stream_ends_when_the_caller_no_longer_runs_the_waypoint() {
    let f = fixture(StreamSettings::default()).await;
    let mut client = WaypointFeedClient::new(f.channel.clone());
    let request = pb::WaypointSubscribeRequest {
        namespace: "app".into(),
        name: "wp".into(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(with_token(request, TOKEN_A))
        .await
        .expect("subscribe")
        .into_inner();
    next(&mut stream).await;
    let wp_pod = "nodeName: node-a, containers: []}\nstatus: {podIP: 10.0.0.50}";
    assert!(CONFIG.contains(wp_pod));
    let moved = CONFIG.replace(wp_pod, &wp_pod.replace("node-a", "node-b"));
    load(&f.store, &[&moved]);
    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("ends in time");
    let err = ended.expect_err("access withdrawn");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("runs no pod of waypoint app/wp"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn feeds_refuse_service_until_first_snapshot() {
    let hub = Arc::new(Hub::with_feed_id("feed-1".into(), 1000));
    let auth = Arc::new(TokenAuthenticator::new([("node-a", TOKEN_A)]));
    let (_trigger, watch) = mesh_core::drain::channel();
    let node = NodeFeedService::new(Arc::clone(&hub), auth, StreamSettings::default(), watch);
    let router = Server::builder().add_service(NodeFeedServer::new(node));
    let mut client = NodeFeedClient::new(serve_in_memory(router).await);
    let request = pb::NodeSubscribeRequest {
        node_name: "node-a".into(),
        ..Default::default()
    };
    let err = client
        .subscribe(with_token(request, TOKEN_A))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
