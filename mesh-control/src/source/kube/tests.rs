//! Watchers against a `tower_test` mock API server: list, watch events, a watch restart, 410
//! Gone expiry with re-list, and a malformed custom resource. No real cluster is contacted.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::json;
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::feed::hub::Hub;
use crate::model::{PolicyAction, Snapshot};
use crate::registry::{Registry, RegistryConfig};

const WAIT: Duration = Duration::from_secs(10);

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn pod(name: &str, ip: &str, rv: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "namespace": "app", "resourceVersion": rv},
        "spec": {"nodeName": "node-a", "containers": []},
        "status": {"podIP": ip}
    })
}

fn list(kind: &str, rv: &str, items: Vec<serde_json::Value>) -> Vec<u8> {
    let body = json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items});
    serde_json::to_vec(&body).expect("json")
}

fn events(events: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, object) in events {
        let mut object = object.clone();
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Pod");
        out.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json"));
        out.push(b'\n');
    }
    out
}

async fn expect_request(
    handle: &mut ApiHandle,
    path: &str,
    watch: bool,
) -> (String, SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("request within timeout")
        .expect("client alive");
    let uri = request.uri().to_string();
    assert!(uri.starts_with(path), "{uri}");
    assert_eq!(uri.contains("watch=true"), watch, "{uri}");
    (uri, send)
}

fn respond(send: SendResponse<Response<Body>>, body: Vec<u8>) {
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(body))
            .expect("response"),
    );
}

async fn wait_for(hub: &Hub, what: &str, check: impl Fn(&Snapshot) -> bool) {
    let mut versions = hub.subscribe_snapshots();
    tokio::time::timeout(WAIT, async {
        while !(hub.is_ready() && check(&hub.latest())) {
            versions.changed().await.expect("hub alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn start(kinds: &[Kind]) -> (Arc<Store>, ApiHandle, mesh_core::drain::DrainTrigger) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let hub = Arc::new(Hub::with_feed_id("k".into(), 1000));
    let store = Store::new_gated(Registry::new(RegistryConfig::default()), hub);
    let (trigger, watch) = mesh_core::drain::channel();
    tokio::spawn(Arc::clone(&store).run_publisher(Duration::from_millis(1), watch.clone()));
    let _ = spawn_all(&client, kinds, &store, &watch);
    (store, handle, trigger)
}

fn pod_names(snapshot: &Snapshot) -> Vec<String> {
    snapshot.workloads.keys().cloned().collect()
}

#[tokio::test]
async fn list_watch_restart_and_gone_relist() {
    let (store, mut api, _trigger) = start(&[Kind::Pod]);
    let hub = Arc::clone(store.hub());
    let (_, send) = expect_request(&mut api, "/api/v1/pods", false).await;
    respond(
        send,
        list("PodList", "1", vec![pod("web-1", "10.0.0.1", "1")]),
    );
    wait_for(&hub, "initial list", |s| pod_names(s) == ["app/web-1"]).await;

    let (uri, send) = expect_request(&mut api, "/api/v1/pods", true).await;
    assert!(uri.contains("resourceVersion=1"), "{uri}");
    respond(
        send,
        events(&[
            ("ADDED", pod("web-2", "10.0.0.2", "2")),
            ("DELETED", pod("web-1", "10.0.0.1", "3")),
        ]),
    );
    wait_for(&hub, "watch events", |s| pod_names(s) == ["app/web-2"]).await;

    // The watch body ended (connection closed): the watcher restarts from the last version.
    let (uri, send) = expect_request(&mut api, "/api/v1/pods", true).await;
    assert!(uri.contains("resourceVersion=3"), "{uri}");
    let gone = json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": "too old resource version: 3 (9)", "reason": "Expired", "code": 410}});
    respond(send, serde_json::to_vec(&gone).expect("json"));

    // 410 Gone: a fresh list replaces the kind wholesale.
    let (_, send) = expect_request(&mut api, "/api/v1/pods", false).await;
    respond(
        send,
        list("PodList", "10", vec![pod("web-3", "10.0.0.3", "10")]),
    );
    wait_for(&hub, "re-list after 410", |s| pod_names(s) == ["app/web-3"]).await;
}

#[tokio::test]
async fn nothing_is_published_until_every_kind_listed() {
    let (store, mut api, _trigger) = start(&[Kind::Pod, Kind::AuthorizationPolicy]);
    let mut pods = None;
    let mut policies = None;
    for _ in 0..2 {
        let (request, send) = tokio::time::timeout(WAIT, api.next_request())
            .await
            .expect("request")
            .expect("alive");
        let uri = request.uri().to_string();
        if uri.starts_with("/api/v1/pods") {
            pods = Some(send);
        } else {
            assert!(
                uri.starts_with("/apis/security.istio.io/v1/authorizationpolicies"),
                "{uri}"
            );
            policies = Some(send);
        }
    }
    respond(
        pods.expect("pod list"),
        list("PodList", "1", vec![pod("web-1", "10.0.0.1", "1")]),
    );
    // Give the watcher a chance to process the pod list; the gate must stay shut.
    let (_, watch) = expect_request(&mut api, "/api/v1/pods", true).await;
    assert!(!store.hub().is_ready(), "pods alone must not be published");
    let bad =
        json!({"metadata": {"name": "typo", "namespace": "app"}, "spec": {"action": "DENNY"}});
    let good = json!({"metadata": {"name": "ok", "namespace": "app"}, "spec": {"action": "DENY", "rules": [{}]}});
    respond(
        policies.expect("policy list"),
        list("AuthorizationPolicyList", "5", vec![bad, good]),
    );
    let hub = Arc::clone(store.hub());
    wait_for(&hub, "both kinds", |s| {
        s.policies.len() == 2 && s.workloads.len() == 1
    })
    .await;
    let latest = hub.latest();
    assert_eq!(
        latest.policies["app/typo"].action,
        PolicyAction::Deny,
        "malformed policy fails closed"
    );
    assert_eq!(latest.policies["app/typo"].rules.len(), 1);
    assert!(latest
        .diagnostics
        .iter()
        .any(|d| d.object == "AuthorizationPolicy app/typo" && d.origin == ORIGIN));
    drop(watch);
}

#[tokio::test]
async fn kind_without_crd_counts_as_empty_instead_of_blocking_readiness() {
    let (store, mut api, _trigger) = start(&[Kind::Pod, Kind::HttpRoute]);
    let mut answered = 0;
    while answered < 2 {
        let (request, send) = tokio::time::timeout(WAIT, api.next_request())
            .await
            .expect("request")
            .expect("alive");
        let uri = request.uri().to_string();
        if uri.contains("watch=true") {
            continue;
        }
        answered += 1;
        if uri.starts_with("/apis/gateway.networking.k8s.io/v1/httproutes") {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "metadata": {},
                "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
            let body = Body::from(serde_json::to_vec(&status).expect("json"));
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(body)
                    .expect("response"),
            );
        } else {
            assert!(uri.starts_with("/api/v1/pods"), "{uri}");
            respond(
                send,
                list("PodList", "1", vec![pod("web-1", "10.0.0.1", "1")]),
            );
        }
    }
    let hub = Arc::clone(store.hub());
    wait_for(&hub, "ready without the httproute crd", |s| {
        pod_names(s) == ["app/web-1"]
    })
    .await;
}

#[tokio::test]
async fn secrets_are_listed_by_type_only() {
    let (store, mut api, _trigger) = start(&[Kind::Secret]);
    let hub = Arc::clone(store.hub());
    let (uri, send) = expect_request(&mut api, "/api/v1/secrets", false).await;
    assert!(
        uri.contains("fieldSelector=type%3Dkubernetes.io%2Ftls"),
        "only tls secrets are asked for: {uri}"
    );
    let secret = json!({"metadata": {"name": "cert", "namespace": "edge", "resourceVersion": "1"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    respond(send, list("SecretList", "1", vec![secret]));
    wait_for(&hub, "secrets listed", |_| true).await;
}
