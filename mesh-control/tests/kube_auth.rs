//! Kubernetes mode with `--node-service-account`: nodes and waypoint pods authenticate with
//! projected service-account tokens, which mesh-control checks with a TokenReview against a
//! mock API server (which also answers the watchers' lists; watches are held open).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use mesh_control::app::{self, Bound};
use mesh_control::config::Config;
use mesh_core::drain::DrainOutcome;
use mesh_core::identity::cert::generate_csr;
use mesh_core::proto::control::v1 as pb;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;
use tower_test::mock::Handle;

const WAIT: Duration = Duration::from_secs(10);
const SA_TOKEN: &str = "projected-sa-token-of-a-mesh-node-pod";
const NODE_SA: &str = "system:serviceaccount:weft-system:mesh-node";
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/app/sa/waypoint";

/// A waypoint `wp` (its pod `wp-1`, service account `waypoint`, uid `uid-wp-1`) in use by
/// service `db`, whose pod `db-1` is an ordinary workload.
fn list(path: &str) -> Vec<Value> {
    let pod = |name: &str, uid: &str, sa: &str, label: Value, ip: &str| {
        json!({"metadata": {"name": name, "namespace": "app", "uid": uid, "labels": label},
               "spec": {"nodeName": "node-b", "serviceAccountName": sa, "containers": []},
               "status": {"podIP": ip}})
    };
    let service = |name: &str, labels: Value, selector: Value, ip: &str| {
        json!({"metadata": {"name": name, "namespace": "app", "labels": labels},
               "spec": {"clusterIP": ip, "selector": selector, "ports": [{"port": 15008}]}})
    };
    match path.rsplit('/').next() {
        Some("namespaces") => vec![json!({"metadata": {"name": "app", "uid": "uid-ns-app"}})],
        Some("pods") => vec![
            pod(
                "wp-1",
                "uid-wp-1",
                "waypoint",
                json!({"gateway": "wp"}),
                "10.0.0.50",
            ),
            pod("db-1", "uid-db-1", "db", json!({"app": "db"}), "10.0.0.2"),
        ],
        Some("services") => vec![
            service("wp", json!({}), json!({"gateway": "wp"}), "10.96.0.99"),
            service(
                "db",
                json!({"weft.dev/use-waypoint": "wp"}),
                json!({"app": "db"}),
                "10.96.0.2",
            ),
        ],
        _ => Vec::new(),
    }
}

/// The TokenReview status of each token the tests use; any other is not authenticated.
fn review(token: &str) -> Value {
    let workload = |sa: &str, pod: &str, uid: &str| {
        json!({"username": format!("system:serviceaccount:app:{sa}"),
               "extra": {"authentication.kubernetes.io/pod-name": [pod],
                         "authentication.kubernetes.io/pod-uid": [uid],
                         "authentication.kubernetes.io/node-name": ["node-b"]}})
    };
    let user = match token {
        SA_TOKEN => json!({"username": NODE_SA,
                           "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}),
        "waypoint-token" => workload("waypoint", "wp-1", "uid-wp-1"),
        "db-token" => workload("db", "db-1", "uid-db-1"),
        "wrong-sa-token" => workload("db", "wp-1", "uid-wp-1"),
        "stale-uid-token" => workload("waypoint", "wp-1", "uid-of-a-deleted-pod"),
        _ => return json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json!({"authenticated": true, "audiences": ["weft-control"], "user": user})
}

/// Server-side applies received: (path, body).
type Applied = Arc<Mutex<Vec<(String, Value)>>>;

async fn api_server(mut api: Handle<Request<Body>, Response<Body>>, applied: Applied) {
    let mut held = Vec::new();
    while let Some((request, send)) = api.next_request().await {
        if request.uri().query().unwrap_or("").contains("watch=true") {
            held.push(send);
            continue;
        }
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if method == Method::PATCH {
            let object: Value = serde_yaml::from_slice(&bytes).expect("apply body");
            applied.lock().expect("lock").push((path, object.clone()));
            object
        } else if method == Method::POST {
            let review_request: Value = serde_json::from_slice(&bytes).expect("json");
            let token = review_request["spec"]["token"].as_str().unwrap_or_default();
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": review_request["spec"], "status": review(token)})
        } else {
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                   "items": list(&path)})
        };
        let bytes = serde_json::to_vec(&body).expect("json");
        send.send_response(Response::new(Body::from(bytes)));
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

fn subscribe(node: &str, token: &str) -> tonic::Request<pb::NodeSubscribeRequest> {
    let message = pb::NodeSubscribeRequest {
        node_name: node.into(),
        ..Default::default()
    };
    with_token(message, token)
}

/// A channel to `bound`'s gRPC port over TLS, verified with its trust bundle.
async fn connect(bound: &Bound, dir: &Path) -> Channel {
    let bundle = dir.join("roots.pem");
    std::fs::write(&bundle, &bound.trust_bundle_pem).expect("bundle");
    let endpoint = bound.grpc_endpoint(bundle).expect("endpoint");
    endpoint.connect(WAIT).await.expect("connect over tls")
}

/// The service with its channel; the directory holds the trust bundle the channel re-reads on
/// reconnect, so it lives as long as the test.
async fn start() -> (Bound, Channel, tempfile::TempDir) {
    let (bound, channel, dir, _applied) = start_recording().await;
    (bound, channel, dir)
}

/// [`start`], also returning the server-side applies the mock API server received.
async fn start_recording() -> (Bound, Channel, tempfile::TempDir, Applied) {
    let dir = tempfile::tempdir().expect("tempdir");
    // No bootstrap token file: TokenReview mode must not need one.
    let mut config = Config::for_tests(dir.path().into(), dir.path().join("absent"));
    config.kubernetes = true;
    config.node_service_account = Some(("weft-system".into(), "mesh-node".into()));
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let applied = Applied::default();
    tokio::spawn(api_server(api, Arc::clone(&applied)));
    let client = kube::Client::new(service, "default");
    let bound = app::build_with_client(config, Some(client))
        .await
        .expect("build");
    let channel = connect(&bound, dir.path()).await;
    (bound, channel, dir, applied)
}

/// Retries `call` while mesh-control answers `UNAVAILABLE` (not synced yet).
async fn once_synced<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let retry = async {
        loop {
            match call().await {
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::task::yield_now().await;
                }
                other => break other,
            }
        }
    };
    tokio::time::timeout(WAIT, retry)
        .await
        .expect("served once every kind is listed")
}

#[tokio::test]
async fn nodes_authenticate_with_service_account_tokens() {
    let (bound, channel, _dir) = start().await;
    let mut feed = pb::node_feed_client::NodeFeedClient::new(channel);
    let stream = once_synced(|| {
        let mut feed = feed.clone();
        async move { feed.subscribe(subscribe("node-a", SA_TOKEN)).await }
    })
    .await;
    let mut stream = stream.expect("node-a's token accepted").into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first update in time")
        .expect("stream ok")
        .expect("an update");
    assert!(first.reset && first.complete);
    let other_node = feed.subscribe(subscribe("node-b", SA_TOKEN)).await;
    let err = other_node.expect_err("node-a's token cannot subscribe as node-b");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let stranger = feed
        .subscribe(subscribe("node-a", "some-other-token"))
        .await;
    let err = stranger.expect_err("a token the api server does not authenticate");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let waypoint = feed.subscribe(subscribe("node-b", "waypoint-token")).await;
    let err = waypoint.expect_err("a workload caller may not read the node feed");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    drop(stream);
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}

fn certificate(identity: &str, token: &str) -> tonic::Request<pb::CreateCertificateRequest> {
    let id = identity.parse().expect("spiffe id");
    let csr = generate_csr(&id).expect("csr").csr_pem;
    let message = pb::CreateCertificateRequest {
        csr,
        validity_duration: 0,
        identity: identity.into(),
    };
    with_token(message, token)
}

fn waypoint(name: &str, token: &str) -> tonic::Request<pb::WaypointSubscribeRequest> {
    let message = pb::WaypointSubscribeRequest {
        namespace: "app".into(),
        name: name.into(),
        ..Default::default()
    };
    with_token(message, token)
}

/// A waypoint pod's own token obtains its own certificate and its waypoint's feed, nothing
/// else; tokens of pods that are not waypoints, of another service account or of a deleted
/// pod are refused.
#[tokio::test]
async fn waypoint_pods_authenticate_with_their_own_tokens() {
    let (bound, channel, _dir) = start().await;
    let mut ca = pb::certificate_service_client::CertificateServiceClient::new(channel.clone());
    let mut feed = pb::waypoint_feed_client::WaypointFeedClient::new(channel);
    let issued = once_synced(|| {
        let mut ca = ca.clone();
        async move {
            ca.create_certificate(certificate(WAYPOINT_ID, "waypoint-token"))
                .await
        }
    })
    .await;
    let chain = issued.expect("own identity issued").into_inner().cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    let stream = feed.subscribe(waypoint("wp", "waypoint-token")).await;
    let mut stream = stream.expect("own waypoint's feed").into_inner();
    let config = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("config in time")
        .expect("stream ok")
        .expect("a config");
    let hosts: Vec<_> = config
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(hosts, ["db.app.svc.cluster.local"]);
    let db_id = "spiffe://cluster.local/ns/app/sa/db";
    let refusals = [
        ("waypoint-token", db_id, "may only obtain its own identity"),
        ("db-token", db_id, "neither a pod of a waypoint"),
        (
            "wrong-sa-token",
            WAYPOINT_ID,
            "runs service account \"waypoint\"",
        ),
        ("stale-uid-token", WAYPOINT_ID, "was the pod recreated?"),
    ];
    for (token, identity, why) in refusals {
        let err = ca
            .create_certificate(certificate(identity, token))
            .await
            .expect_err(token);
        assert_eq!(err.code(), Code::PermissionDenied, "{token}");
        assert!(err.message().contains(why), "{token}: {}", err.message());
    }
    for (name, token) in [("db", "waypoint-token"), ("wp", "db-token")] {
        let err = feed
            .subscribe(waypoint(name, token))
            .await
            .expect_err(token);
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{token}: {}",
            err.message()
        );
    }
    drop(stream);
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}

/// Once synced, mesh-control publishes the mesh root into every namespace as the
/// `weft-ca-root-cert` ConfigMap that nodes and waypoints mount.
#[tokio::test]
async fn the_mesh_root_is_published_into_namespaces() {
    let (bound, _channel, _dir, applied) = start_recording().await;
    let published = async {
        loop {
            if let Some(found) = applied.lock().expect("lock").first().cloned() {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (path, object) = tokio::time::timeout(WAIT, published)
        .await
        .expect("applied once synced");
    assert_eq!(path, "/api/v1/namespaces/app/configmaps/weft-ca-root-cert");
    assert_eq!(
        object["data"]["root-cert.pem"].as_str(),
        Some(bound.trust_bundle_pem.as_str()),
        "{object}"
    );
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}
