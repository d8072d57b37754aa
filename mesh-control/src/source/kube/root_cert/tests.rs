//! The trust bundle publisher against a `tower_test` mock API server, on paused time: the first
//! round after the initial sync, a namespace added (or re-created) later, a failed or hung
//! apply retried while the others succeed, quiet until the resync, and drain.

use std::collections::BTreeMap;

use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::NamespaceStatus;
use kube::client::Body;
use mesh_core::drain::{DrainOutcome, DrainTrigger};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::feed::hub::Hub;
use crate::registry::{Kind, ObjectKey, RegistryConfig, Resource};

/// Longer than the apply timeout (10 s), shorter than the resync (10 min).
const WAIT: Duration = Duration::from_secs(30);
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// One apply request as the mock API server saw it.
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
    send: SendResponse<Response<Body>>,
}

struct Harness {
    store: Arc<Store>,
    api: ApiHandle,
    stats: RootCertStats,
    drain: DrainTrigger,
    task: JoinHandle<()>,
}

fn settings() -> RootCertSettings {
    RootCertSettings::default()
}

fn add_namespace(store: &Store, name: &str, uid: &str, phase: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            uid: Some(uid.to_string()),
            ..ObjectMeta::default()
        },
        status: Some(NamespaceStatus {
            phase: Some(phase.to_string()),
            ..NamespaceStatus::default()
        }),
        ..Namespace::default()
    };
    let key = ObjectKey {
        kind: Kind::Namespace,
        namespace: String::new(),
        name: name.to_string(),
    };
    store.update(|r| r.upsert(key, "kubernetes", Resource::Namespace(ns)));
}

/// A publisher over a gated store holding `namespaces` (all active); not synced yet.
fn start(namespaces: &[&str], bundle: &str) -> Harness {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let hub = Arc::new(Hub::with_feed_id("r".into(), 10));
    let store = Store::new_gated(Registry::new(RegistryConfig::default()), hub);
    for name in namespaces {
        add_namespace(&store, name, &format!("uid-{name}"), "Active");
    }
    let stats = RootCertStats::default();
    let (drain, watch) = mesh_core::drain::channel();
    let task = tokio::spawn(run(
        client,
        Arc::clone(&store),
        bundle.to_string(),
        settings(),
        stats.clone(),
        watch,
    ));
    Harness {
        store,
        api,
        stats,
        drain,
        task,
    }
}

async fn next_apply(api: &mut ApiHandle) -> Seen {
    let (request, send) = tokio::time::timeout(WAIT, api.next_request())
        .await
        .expect("an apply within the timeout")
        .expect("client alive");
    let header = |name: &str| {
        let value = request.headers().get(name);
        value
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header("content-type");
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let bytes = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).expect("json body");
    Seen {
        method,
        path,
        query,
        content_type,
        body,
        send,
    }
}

/// The next `n` applies, by namespace (they run concurrently, in any order).
async fn applies(api: &mut ApiHandle, n: usize) -> BTreeMap<String, Seen> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let apply = next_apply(api).await;
        let ns = apply.body["metadata"]["namespace"].as_str().unwrap_or("");
        assert!(
            seen.insert(ns.to_string(), apply).is_none(),
            "applied twice"
        );
    }
    seen
}

/// Answers with `code`: 200 echoes the ConfigMap, anything else is a Status.
fn answer(seen: Seen, code: u16) {
    let body = if code == 200 {
        seen.body
    } else {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
               "reason": "Forbidden", "message": "configmaps is forbidden"})
    };
    let response = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response");
    seen.send.send_response(response);
}

/// Answers every apply in `seen` with 200.
fn accept_all(seen: BTreeMap<String, Seen>) {
    seen.into_values().for_each(|s| answer(s, 200));
}

/// Asserts that no apply arrives within `quiet` (paused time: this costs no real time).
async fn assert_quiet(api: &mut ApiHandle, quiet: Duration) {
    if let Ok(Some((request, _))) = tokio::time::timeout(quiet, api.next_request()).await {
        panic!("unexpected request: {}", request.uri());
    }
}

/// Waits for the counters to reach `applies` and `failures` (they are bumped after the
/// response is read).
async fn wait_stats(stats: &RootCertStats, applies: u64, failures: u64) {
    let reached = || stats.applies.get() == applies && stats.failures.get() == failures;
    tokio::time::timeout(WAIT, async {
        while !reached() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let (a, f) = (stats.applies.get(), stats.failures.get());
        panic!("stats: {a} applies, {f} failures; wanted {applies}, {failures}")
    });
}

fn names(seen: &BTreeMap<String, Seen>) -> Vec<&str> {
    seen.keys().map(String::as_str).collect()
}

#[tokio::test(start_paused = true)]
async fn the_first_round_after_sync_applies_into_every_active_namespace() {
    let mut h = start(&["app", "default", "kube-system"], PEM);
    add_namespace(&h.store, "leaving", "uid-leaving", "Terminating");
    assert_quiet(&mut h.api, Duration::from_secs(60)).await;

    h.store.mark_ready();
    let seen = applies(&mut h.api, 2).await;
    assert_eq!(
        names(&seen),
        ["app", "default"],
        "kube-system and terminating skipped"
    );
    for (ns, apply) in &seen {
        assert_eq!(apply.method, "PATCH");
        assert_eq!(
            apply.path,
            format!("/api/v1/namespaces/{ns}/configmaps/weft-ca-root-cert")
        );
        assert_eq!(apply.content_type, "application/apply-patch+yaml");
        assert!(
            apply.query.contains("fieldManager=mesh-control"),
            "{}",
            apply.query
        );
        assert!(apply.query.contains("force=true"), "{}", apply.query);
        let expected = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "mesh-control"}},
            "data": {ROOT_CERT_KEY: PEM},
        });
        assert_eq!(apply.body, expected);
    }
    accept_all(seen);
    wait_stats(&h.stats, 2, 0).await;
}

#[tokio::test(start_paused = true)]
async fn unchanged_namespaces_are_left_alone_until_the_resync() {
    let mut h = start(&["app", "default"], PEM);
    h.store.mark_ready();
    let started = Instant::now();
    accept_all(applies(&mut h.api, 2).await);
    wait_stats(&h.stats, 2, 0).await;

    // New snapshot versions with the same namespaces cost no API call.
    for _ in 0..3 {
        h.store.publish_now();
        tokio::task::yield_now().await;
    }
    let resync = settings().resync;
    assert_quiet(
        &mut h.api,
        resync - started.elapsed() - Duration::from_secs(1),
    )
    .await;

    let seen = applies(&mut h.api, 2).await;
    assert!(started.elapsed() >= resync, "{:?}", started.elapsed());
    assert_eq!(names(&seen), ["app", "default"]);
    accept_all(seen);
    wait_stats(&h.stats, 4, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_namespace_added_or_recreated_later_gets_its_configmap() {
    let mut h = start(&["app"], PEM);
    h.store.mark_ready();
    accept_all(applies(&mut h.api, 1).await);

    add_namespace(&h.store, "late", "uid-late", "Active");
    h.store.publish_now();
    let seen = applies(&mut h.api, 1).await;
    assert_eq!(names(&seen), ["late"]);
    accept_all(seen);
    assert_quiet(&mut h.api, Duration::from_secs(60)).await;

    // Deleted and created again between two snapshots: only the uid tells.
    add_namespace(&h.store, "app", "uid-app-2", "Active");
    h.store.publish_now();
    let seen = applies(&mut h.api, 1).await;
    assert_eq!(names(&seen), ["app"]);
    accept_all(seen);
    wait_stats(&h.stats, 3, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_is_retried_after_a_backoff_while_others_succeed() {
    let mut h = start(&["app", "default", "denied"], PEM);
    h.store.mark_ready();
    let mut seen = applies(&mut h.api, 3).await;
    let failed_at = Instant::now();
    answer(seen.remove("denied").expect("denied applied"), 403);
    accept_all(seen);
    wait_stats(&h.stats, 2, 1).await;

    // A new snapshot does not retry early: the backoff (0.5-1 s of the 1 s initial) does.
    h.store.publish_now();
    assert_quiet(&mut h.api, Duration::from_millis(400)).await;
    let retry = next_apply(&mut h.api).await;
    assert!(failed_at.elapsed() >= Duration::from_millis(500));
    assert_eq!(retry.body["metadata"]["namespace"], "denied");
    answer(retry, 500);
    wait_stats(&h.stats, 2, 2).await;

    let retry = next_apply(&mut h.api).await;
    assert_eq!(retry.body["metadata"]["namespace"], "denied");
    answer(retry, 200);
    wait_stats(&h.stats, 3, 2).await;
    assert_quiet(&mut h.api, Duration::from_secs(300)).await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_apply_times_out_and_is_retried() {
    let mut h = start(&["app"], PEM);
    h.store.mark_ready();
    let hung = next_apply(&mut h.api).await;
    wait_stats(&h.stats, 0, 1).await;
    drop(hung);
    let retry = next_apply(&mut h.api).await;
    assert_eq!(retry.body["metadata"]["namespace"], "app");
    answer(retry, 200);
    wait_stats(&h.stats, 1, 1).await;
}

#[tokio::test(start_paused = true)]
async fn drain_stops_the_publisher_even_mid_apply() {
    let mut h = start(&["app"], PEM);
    h.store.mark_ready();
    let in_flight = next_apply(&mut h.api).await;
    let outcome = h.drain.drain(WAIT).await;
    assert_eq!(outcome, DrainOutcome::Complete);
    tokio::time::timeout(WAIT, h.task)
        .await
        .expect("task ends")
        .expect("no panic");
    drop(in_flight);
}

#[tokio::test(start_paused = true)]
async fn a_bundle_without_a_certificate_is_never_published() {
    let mut h = start(&["app"], "not a certificate");
    h.store.mark_ready();
    tokio::time::timeout(WAIT, h.task)
        .await
        .expect("returns at once")
        .expect("no panic");
    assert_quiet(&mut h.api, Duration::from_secs(60)).await;
    assert_eq!(h.stats.applies.get(), 0);
}
