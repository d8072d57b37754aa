//! The whole control service in-process on loopback port 0: config directory in, gRPC feed,
//! CA, health and metrics out; reload on change; clean drain; clear startup errors.

use std::path::Path;
use std::time::Duration;

use mesh_control::app::{self, Bound};
use mesh_control::config::Config;
use mesh_core::drain::DrainOutcome;
use mesh_core::identity::cert::generate_csr;
use mesh_core::proto::control::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "node-a-bootstrap-token-0001";

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app}
spec: {nodeName: node-a, serviceAccountName: web, containers: []}
status: {podIP: 10.0.0.1}
"#;

const POD_2: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: app}
spec: {nodeName: node-a, serviceAccountName: web, containers: []}
status: {podIP: 10.0.0.2}
"#;

/// A channel to `bound`'s gRPC port over TLS, verified with its trust bundle.
async fn connect(bound: &Bound, dir: &Path) -> Channel {
    let bundle = dir.join("roots.pem");
    std::fs::write(&bundle, &bound.trust_bundle_pem).expect("bundle");
    let endpoint = bound.grpc_endpoint(bundle).expect("endpoint");
    endpoint.connect(WAIT).await.expect("connect over tls")
}

fn config(dir: &Path) -> Config {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::write(config_dir.join("app.yaml"), CONFIG).expect("write config");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("node-a {TOKEN}\n")).expect("write tokens");
    let mut config = Config::for_tests(config_dir, tokens);
    config.poll_interval = Duration::from_millis(50);
    config.debounce = Duration::from_millis(10);
    config
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    request
}

async fn http_get(bound: &Bound, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(bound.http_addr)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    response
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("message in time")
        .expect("stream ok")
        .expect("stream open")
}

fn workload_count(update: &pb::NodeUpdate) -> usize {
    update
        .upserts
        .iter()
        .filter(|r| matches!(r.kind, Some(pb::resource::Kind::Workload(_))))
        .count()
}

#[tokio::test]
async fn serves_feed_ca_health_and_metrics_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let config_dir = config.config_dir.clone();
    let bound = app::build(config).await.expect("build");
    let channel = connect(&bound, dir.path()).await;

    let mut feed = pb::node_feed_client::NodeFeedClient::new(channel.clone());
    let request = pb::NodeSubscribeRequest {
        node_name: "node-a".into(),
        ..Default::default()
    };
    let mut stream = feed
        .subscribe(authed(request))
        .await
        .expect("subscribe")
        .into_inner();
    let first = next(&mut stream).await;
    assert!(first.reset && first.complete);
    assert_eq!(workload_count(&first), 1);

    std::fs::write(config_dir.join("pod2.yaml"), POD_2).expect("write");
    let second = next(&mut stream).await;
    assert!(!second.reset);
    assert_eq!(workload_count(&second), 1, "only the new pod is sent");

    let identity = "spiffe://cluster.local/ns/app/sa/web";
    let csr = generate_csr(&identity.parse().expect("id")).expect("csr");
    let mut ca = pb::certificate_service_client::CertificateServiceClient::new(channel);
    let request = pb::CreateCertificateRequest {
        csr: csr.csr_pem,
        validity_duration: 3600,
        identity: identity.into(),
    };
    let chain = ca
        .create_certificate(authed(request))
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);

    let health = http_get(&bound, "/healthz/ready").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let status = http_get(&bound, "/healthz/status").await;
    assert!(status.ends_with("\r\n\r\nready\n"), "{status}");
    let metrics = http_get(&bound, "/metrics").await;
    assert!(metrics.contains("weft_control_workloads 2"), "{metrics}");
    assert!(
        metrics.contains("weft_control_grpc_tls_handshake_failures_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_control_rejected_resources 0"),
        "{metrics}"
    );
    assert!(http_get(&bound, "/nope").await.starts_with("HTTP/1.1 404"));

    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
    // The stream ends with the drain.
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends in time");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no more updates after shutdown"
    );
}

#[tokio::test]
async fn startup_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut missing_dir = config(dir.path());
    missing_dir.config_dir = dir.path().join("nope");
    let err = app::build(missing_dir).await.unwrap_err().to_string();
    assert!(
        err.contains("nope") && err.contains("--config-dir"),
        "{err}"
    );

    let mut missing_tokens = config(dir.path());
    missing_tokens.bootstrap_tokens = dir.path().join("no-tokens");
    let err = app::build(missing_tokens).await.unwrap_err().to_string();
    assert!(
        err.contains("bootstrap token file") && err.contains("no-tokens"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut port_taken = config(dir.path());
    port_taken.grpc_listen = taken.local_addr().expect("addr");
    let err = app::build(port_taken).await.unwrap_err().to_string();
    assert!(
        err.contains("cannot listen on") && err.contains("grpc"),
        "{err}"
    );
}

#[test]
fn committed_crds_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let rendered = mesh_control::crd::render_crds().expect("render");
    for (name, yaml) in &rendered {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "deploy/crds/{name} is stale: run `cargo run -p mesh-control -- crds`"
        );
    }
    let on_disk = std::fs::read_dir(&dir).expect("deploy/crds exists").count();
    assert_eq!(
        on_disk,
        rendered.len(),
        "deploy/crds has files not generated from the types"
    );
}

/// Kubernetes mode against a mock API server: nothing is served until every kind is listed.
#[tokio::test]
async fn kubernetes_mode_serves_only_after_every_kind_is_listed() {
    use http::{Request, Response};
    use kube::client::Body;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.kubernetes = true;
    let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let bound = app::build_with_client(config, Some(client))
        .await
        .expect("build");

    let health = http_get(&bound, "/healthz/ready").await;
    assert!(
        health.starts_with("HTTP/1.1 503"),
        "not ready before the lists: {health}"
    );
    let channel = connect(&bound, dir.path()).await;
    let mut feed = pb::node_feed_client::NodeFeedClient::new(channel);
    let request = || {
        authed(pb::NodeSubscribeRequest {
            node_name: "node-a".into(),
            ..Default::default()
        })
    };
    let err = feed.subscribe(request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    // Answer every list (one per kind) with an empty list; keep watches open.
    let mut held = Vec::new();
    let mut lists = 0;
    while lists < mesh_control::source::kube::ALL_KINDS.len() {
        let (request, send) = tokio::time::timeout(WAIT, api.next_request())
            .await
            .expect("request in time")
            .expect("client alive");
        if request.uri().query().unwrap_or("").contains("watch=true") {
            held.push(send);
            continue;
        }
        lists += 1;
        let body =
            br#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":[]}"#;
        send.send_response(Response::new(Body::from(body.to_vec())));
    }
    tokio::time::timeout(WAIT, async {
        while !http_get(&bound, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("ready after every kind listed");
    let mut stream = feed
        .subscribe(request())
        .await
        .expect("subscribe")
        .into_inner();
    let first = next(&mut stream).await;
    assert!(first.reset && first.complete && first.upserts.is_empty());
    drop(held);
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}

/// `--kubernetes` with an API server that refuses connections: the service starts, is not
/// ready, and `/healthz/status` says what it is waiting for and why.
#[tokio::test]
async fn kubernetes_mode_without_an_api_server_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.kubernetes = true;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let url = format!("http://{addr}").parse().expect("url");
    let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
    let bound = app::build_with_client(config, Some(client))
        .await
        .expect("starts without the api server");
    let status = tokio::time::timeout(WAIT, async {
        loop {
            let status = http_get(&bound, "/healthz/status").await;
            if status.contains("last errors") {
                break status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the watch errors are reported");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        status.contains("not ready: waiting for the first list")
            && status.contains("Pod")
            && status.contains("is the api server reachable"),
        "{status}"
    );
    let health = http_get(&bound, "/healthz/ready").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}
