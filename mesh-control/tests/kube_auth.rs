//! Kubernetes mode with `--node-service-account`: a node authenticates with its projected
//! service-account token, which mesh-control checks with a TokenReview against a mock API
//! server (which also answers the watchers with empty lists).

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use mesh_control::app;
use mesh_control::config::Config;
use mesh_core::drain::DrainOutcome;
use mesh_core::proto::control::v1 as pb;
use serde_json::json;
use tower_test::mock::Handle;

const WAIT: Duration = Duration::from_secs(10);
const SA_TOKEN: &str = "projected-sa-token-of-a-mesh-node-pod";

/// The node's token is the node service account's, bound to a pod on node-a; any other token
/// is not authenticated. Lists are empty; watches are held open.
async fn api_server(mut api: Handle<Request<Body>, Response<Body>>) {
    let mut held = Vec::new();
    while let Some((request, send)) = api.next_request().await {
        if request.uri().query().unwrap_or("").contains("watch=true") {
            held.push(send);
            continue;
        }
        let body = if request.method() == Method::POST {
            use http_body_util::BodyExt;
            let bytes = request
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let review: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            let ours = review["spec"]["token"] == SA_TOKEN;
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "spec": review["spec"],
                   "status": {"authenticated": ours, "audiences": ["weft-control"],
                              "user": {"username": "system:serviceaccount:weft-system:mesh-node",
                                       "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}})
        } else {
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []})
        };
        let bytes = serde_json::to_vec(&body).expect("json");
        send.send_response(Response::new(Body::from(bytes)));
    }
}

fn subscribe(node: &str, token: &str) -> tonic::Request<pb::NodeSubscribeRequest> {
    let mut request = tonic::Request::new(pb::NodeSubscribeRequest {
        node_name: node.into(),
        ..Default::default()
    });
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn nodes_authenticate_with_service_account_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No bootstrap token file: TokenReview mode must not need one.
    let mut config = Config::for_tests(dir.path().into(), dir.path().join("absent"));
    config.kubernetes = true;
    config.node_service_account = Some(("weft-system".into(), "mesh-node".into()));
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(api_server(api));
    let client = kube::Client::new(service, "default");
    let bound = app::build_with_client(config, Some(client))
        .await
        .expect("build");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bound.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut feed = pb::node_feed_client::NodeFeedClient::new(channel);
    let stream = tokio::time::timeout(WAIT, async {
        loop {
            match feed.subscribe(subscribe("node-a", SA_TOKEN)).await {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::task::yield_now().await;
                }
                other => break other,
            }
        }
    })
    .await
    .expect("served once every kind is listed");
    let mut stream = stream.expect("node-a's token accepted").into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first update in time")
        .expect("stream ok")
        .expect("an update");
    assert!(first.reset && first.complete);
    let other_node = feed.subscribe(subscribe("node-b", SA_TOKEN)).await;
    let err = other_node.expect_err("node-a's token cannot subscribe as node-b");
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    let stranger = feed
        .subscribe(subscribe("node-a", "some-other-token"))
        .await;
    let err = stranger.expect_err("a token the api server does not authenticate");
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    drop(stream);
    assert_eq!(bound.shutdown(WAIT).await, DrainOutcome::Complete);
}
