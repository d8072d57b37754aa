//! TokenReview against a `tower_test` mock API server: node and workload callers accepted,
//! wrong service account, not authenticated, wrong audience, unbound tokens, API error, and the
//! cache.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::*;

const WAIT: Duration = Duration::from_secs(10);
const NODE_SA: &str = "system:serviceaccount:weft-system:mesh-node";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn authenticator() -> (TokenReviewAuthenticator, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let settings = TokenReviewSettings::new("weft-system", "mesh-node", "weft-control");
    (TokenReviewAuthenticator::new(client, settings), handle)
}

fn bearer(token: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    let value = format!("Bearer {token}").parse().expect("ascii");
    m.insert("authorization", value);
    m
}

fn reviewed(user: &str, node: Option<&str>, audiences: &[&str]) -> Value {
    let extra = node.map_or(json!({}), |n| json!({ NODE_NAME_KEY: [n] }));
    reviewed_with(user, extra, audiences)
}

fn reviewed_with(user: &str, extra: Value, audiences: &[&str]) -> Value {
    json!({"authenticated": true, "audiences": audiences,
           "user": {"username": user, "extra": extra}})
}

fn node(node: &str) -> Caller {
    Caller::Node(NodeIdentity { node: node.into() })
}

/// Answers the next API request with `code` and a TokenReview carrying `status`; returns the
/// request's path and body.
async fn answer(handle: &mut ApiHandle, code: u16, status: Value) -> (String, Value) {
    let (request, send) = tokio::time::timeout(WAIT, handle.next_request())
        .await
        .expect("a request within the timeout")
        .expect("client alive");
    let path = format!("{} {}", request.method(), request.uri().path());
    let bytes = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).expect("json body");
    let reply = if code == 200 {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": body["spec"], "status": status})
    } else {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
               "reason": "InternalError", "message": "etcd is down"})
    };
    let response = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&reply).expect("json")))
        .expect("response");
    send.send_response(response);
    (path, body)
}

/// Runs one authentication while the mock API server answers with `code` and `status`.
async fn authenticate_once(
    auth: &TokenReviewAuthenticator,
    handle: &mut ApiHandle,
    token: &str,
    code: u16,
    status: Value,
) -> Verdict {
    let metadata = bearer(token);
    let (verdict, _) = tokio::join!(auth.authenticate(&metadata), answer(handle, code, status));
    verdict
}

#[tokio::test(start_paused = true)]
async fn node_token_is_reviewed_then_cached_until_the_ttl() {
    let (auth, mut handle) = authenticator();
    let metadata = bearer("token-a");
    let (verdict, (path, body)) = tokio::join!(
        auth.authenticate(&metadata),
        answer(
            &mut handle,
            200,
            reviewed(NODE_SA, Some("node-a"), &["weft-control"])
        )
    );
    assert_eq!(path, "POST /apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(
        body["spec"],
        json!({"token": "token-a", "audiences": ["weft-control"]})
    );
    assert_eq!(verdict, Ok(node("node-a")));
    // Cached: no API request (the mock would never answer one).
    assert_eq!(auth.authenticate(&metadata).await, Ok(node("node-a")));
    tokio::time::advance(Duration::from_secs(61)).await;
    let again = authenticate_once(
        &auth,
        &mut handle,
        "token-a",
        200,
        reviewed(NODE_SA, Some("node-a"), &["weft-control"]),
    );
    assert_eq!(
        again.await,
        Ok(node("node-a")),
        "reviewed again after the ttl"
    );
}

#[tokio::test]
async fn refusals_name_the_reason() {
    let cases = [
        (
            json!({"authenticated": false, "error": "token has expired"}),
            AuthError::NotAuthenticated("token has expired".into()),
        ),
        (
            reviewed("kubernetes-admin", Some("node-a"), &["weft-control"]),
            AuthError::WrongServiceAccount {
                user: "kubernetes-admin".into(),
                expected: NODE_SA.into(),
            },
        ),
        (
            // Another service account, but not bound to a pod: not a workload caller.
            reviewed(
                "system:serviceaccount:app:web",
                Some("node-a"),
                &["weft-control"],
            ),
            AuthError::NoPodName {
                user: "system:serviceaccount:app:web".into(),
            },
        ),
        (
            reviewed(NODE_SA, Some("node-a"), &["https://kubernetes.default.svc"]),
            AuthError::NotAuthenticated("token is not issued for audience \"weft-control\"".into()),
        ),
        (
            reviewed(NODE_SA, None, &["weft-control"]),
            AuthError::NoNodeName {
                user: NODE_SA.into(),
            },
        ),
    ];
    for (status, expected) in cases {
        let (auth, mut handle) = authenticator();
        let verdict = authenticate_once(&auth, &mut handle, "t", 200, status.clone()).await;
        assert_eq!(verdict, Err(expected.clone()), "{status}");
        // Refusals are cached briefly too: no second API request.
        let cached = auth.authenticate(&bearer("t")).await;
        assert_eq!(cached, Err(expected), "{status}");
    }
    let wrong = to_status_of(AuthError::WrongServiceAccount {
        user: "u".into(),
        expected: NODE_SA.into(),
    });
    assert_eq!(wrong, tonic::Code::PermissionDenied);
    let (auth, _handle) = authenticator();
    let missing = auth.authenticate(&MetadataMap::new()).await;
    assert_eq!(missing, Err(AuthError::Missing));
}

fn to_status_of(err: AuthError) -> tonic::Code {
    super::super::to_status(err).code()
}

#[tokio::test]
async fn api_server_errors_are_unavailable_and_not_cached() {
    let (auth, mut handle) = authenticator();
    let verdict = authenticate_once(&auth, &mut handle, "t", 500, Value::Null).await;
    let err = verdict.expect_err("api error");
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("etcd is down")),
        "{err}"
    );
    assert_eq!(to_status_of(err), tonic::Code::Unavailable);
    let retried = authenticate_once(
        &auth,
        &mut handle,
        "t",
        200,
        reviewed(NODE_SA, Some("node-b"), &["weft-control"]),
    );
    let caller = retried.await.expect("reviewed again, not a cached failure");
    assert_eq!(caller, node("node-b"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_api_server_times_out_as_unavailable() {
    let (auth, _handle) = authenticator();
    let verdict = tokio::time::timeout(WAIT, auth.authenticate(&bearer("t")))
        .await
        .expect("the review's own deadline fires first");
    assert!(
        matches!(verdict, Err(AuthError::Unavailable(_))),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut settings = TokenReviewSettings::new("weft-system", "mesh-node", "weft-control");
    settings.max_entries = 2;
    let auth = TokenReviewAuthenticator::new(kube::Client::new(service, "default"), settings);
    for token in ["a", "b", "c"] {
        let status = reviewed(NODE_SA, Some(token), &["weft-control"]);
        let verdict = authenticate_once(&auth, &mut handle, token, 200, status).await;
        assert_eq!(verdict, Ok(node(token)));
    }
    assert_eq!(auth.cache.lock().len(), 2);
}

#[tokio::test]
async fn pod_bound_tokens_of_other_service_accounts_are_workload_callers() {
    let (auth, mut handle) = authenticator();
    let extra = json!({POD_NAME_KEY: ["wp-1"], POD_UID_KEY: ["uid-1"], NODE_NAME_KEY: ["node-b"]});
    let status = reviewed_with(
        "system:serviceaccount:app:waypoint",
        extra,
        &["weft-control"],
    );
    let verdict = authenticate_once(&auth, &mut handle, "wp-token", 200, status).await;
    let expected = WorkloadIdentity {
        namespace: "app".into(),
        service_account: "waypoint".into(),
        pod_name: "wp-1".into(),
        pod_uid: Some("uid-1".into()),
    };
    assert_eq!(verdict, Ok(Caller::Workload(expected)));
    // Without a uid (older API servers) the pod name alone is used.
    let (auth, mut handle) = authenticator();
    let extra = json!({POD_NAME_KEY: ["wp-1"]});
    let status = reviewed_with(
        "system:serviceaccount:app:waypoint",
        extra,
        &["weft-control"],
    );
    let verdict = authenticate_once(&auth, &mut handle, "wp-token", 200, status).await;
    let Ok(Caller::Workload(who)) = verdict else {
        panic!("a workload caller: {verdict:?}");
    };
    assert_eq!((who.pod_name.as_str(), who.pod_uid), ("wp-1", None));
    // Two pod names, or a malformed service-account user name: refused.
    let two_pods = "system:serviceaccount:app:waypoint";
    let no_name = "system:serviceaccount:app";
    let cases = [
        (
            two_pods,
            json!({POD_NAME_KEY: ["a", "b"]}),
            AuthError::NoPodName {
                user: two_pods.into(),
            },
        ),
        (
            no_name,
            json!({POD_NAME_KEY: ["a"]}),
            AuthError::WrongServiceAccount {
                user: no_name.into(),
                expected: NODE_SA.into(),
            },
        ),
        (
            "system:serviceaccount:app:web:extra",
            json!({POD_NAME_KEY: ["a"]}),
            AuthError::WrongServiceAccount {
                user: "system:serviceaccount:app:web:extra".into(),
                expected: NODE_SA.into(),
            },
        ),
    ];
    for (user, extra, expected) in cases {
        let (auth, mut handle) = authenticator();
        let status = reviewed_with(user, extra, &["weft-control"]);
        let verdict = authenticate_once(&auth, &mut handle, "t", 200, status).await;
        assert_eq!(verdict, Err(expected), "{user}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_tokens_is_bounded_and_oversized_ones_never_reach_the_api_server() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut settings = TokenReviewSettings::new("weft-system", "mesh-node", "weft-control");
    settings.max_concurrent_reviews = 1;
    let auth = TokenReviewAuthenticator::new(client, settings);
    let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
    let refused = auth.authenticate(&bearer(&huge)).await;
    assert!(
        matches!(refused, Err(AuthError::NotAuthenticated(_))),
        "{refused:?}"
    );
    // One review in flight holds the only slot; a second new token waits half the review
    // deadline, then gets `unavailable` (not cached: it is asked again later) while the first
    // is still being reviewed, and the API server saw one request only.
    let first = bearer("token-first");
    let second = bearer("token-second");
    let (first_verdict, second_verdict) = tokio::join!(auth.authenticate(&first), async {
        tokio::task::yield_now().await;
        let verdict = auth.authenticate(&second).await;
        let (path, body) = answer(
            &mut handle,
            200,
            reviewed(NODE_SA, Some("node-a"), &["weft-control"]),
        )
        .await;
        assert_eq!(path, "POST /apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(
            body["spec"]["token"], "token-first",
            "only the first was sent"
        );
        verdict
    });
    assert!(
        matches!(second_verdict, Err(AuthError::Unavailable(ref why)) if why.contains("in flight")),
        "{second_verdict:?}"
    );
    assert_eq!(first_verdict, Ok(node("node-a")));
}
