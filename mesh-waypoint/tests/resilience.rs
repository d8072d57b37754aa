//! In-process tests of resilience and policy through the whole waypoint: retries, outlier
//! ejection, circuit breaking, rate limiting, fault injection, per-request overrides, and
//! authorization.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::*;
use tokio::{io::AsyncReadExt, net::TcpListener, sync::oneshot};

/// A backend that accepts one connection, reports that the request arrived, and never answers.
async fn black_hole() -> (SocketAddr, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        if stream.read(&mut buf).await.is_ok() {
            let _ = tx.send(());
        }
        // Hold the connection open without answering until the test ends.
        std::future::pending::<()>().await;
    });
    (addr, rx)
}

async fn statuses(proxy: SocketAddr, host: &str, path: &str, n: usize) -> Vec<u16> {
    let client = http1();
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, _, _) = send(&client, get(proxy, host, path)).await;
        out.push(status.as_u16());
    }
    out
}

#[tokio::test]
async fn retries_move_past_a_dead_endpoint() {
    let yaml = r#"
destinations:
  - name: svc
    endpoints: [{address: "127.0.0.1:1"}, {address: "{a}"}]
    traffic_policy: {load_balancer: round_robin}
routes:
  - name: with-retries
    hosts: [retry]
    rules: [{retries: {attempts: 1, retry_on: connect-failure, backoff: 1ms}, route: [{destination: svc}]}]
  - name: without
    hosts: [plain]
    rules: [{route: [{destination: svc}]}]
"#;
    let bound = waypoint(yaml, &[backend("live").await]).await;
    assert_eq!(
        statuses(bound.proxy_addr.expect("plain listener"), "retry", "/", 4).await,
        vec![200; 4]
    );
    assert_eq!(
        statuses(bound.proxy_addr.expect("plain listener"), "plain", "/", 4).await,
        vec![503, 200, 503, 200]
    );
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let yaml = r#"
destinations:
  - name: svc
    endpoints: [{address: "127.0.0.1:1"}, {address: "{a}"}]
    traffic_policy:
      load_balancer: round_robin
      outlier_detection: {consecutive_5xx: 1, base_ejection_time: 1h, max_ejection_percent: 50}
routes:
  - {name: r, hosts: ["*"], rules: [{route: [{destination: svc}]}]}
"#;
    let bound = waypoint(yaml, &[backend("live").await]).await;
    assert_eq!(
        statuses(bound.proxy_addr.expect("plain listener"), "svc", "/", 5).await,
        vec![503, 200, 200, 200, 200]
    );
}

#[tokio::test]
async fn circuit_breaker_rejects_over_max_requests() {
    let (hole, arrived) = black_hole().await;
    let yaml = r#"
destinations:
  - name: svc
    endpoints: [{address: "{a}"}]
    traffic_policy: {connection_pool: {max_requests: 1, max_pending_requests: 0}}
routes:
  - {name: r, hosts: ["*"], rules: [{route: [{destination: svc}]}]}
"#;
    let bound = waypoint(yaml, &[hole]).await;
    let proxy = bound.proxy_addr.expect("plain listener");
    let stuck = tokio::spawn(async move { http1().request(get(proxy, "svc", "/")).await });
    tokio::time::timeout(WAIT, arrived)
        .await
        .expect("first request reaches the backend")
        .expect("signal");
    let (status, _, body) = send(&http1(), get(proxy, "svc", "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.ends_with("(UO)\n"), "{body}");
    stuck.abort();
}

#[tokio::test]
async fn local_rate_limit_answers_429() {
    let yaml = r#"
rate_limit: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 1h}
destinations: [{name: svc, endpoints: [{address: "{a}"}]}]
routes: [{name: r, hosts: ["*"], rules: [{route: [{destination: svc}]}]}]
"#;
    let bound = waypoint(yaml, &[backend("live").await]).await;
    assert_eq!(
        statuses(bound.proxy_addr.expect("plain listener"), "svc", "/", 3).await,
        vec![200, 200, 429]
    );
}

#[tokio::test]
async fn fault_abort_and_external_timeout_override_ignored() {
    let yaml = r#"
destinations: [{name: svc, endpoints: [{address: "{a}"}]}]
routes:
  - name: r
    hosts: ["*"]
    rules:
      - matches: [{path: {prefix: /fault}}]
        fault: {abort: {percentage: 100, http_status: 418}}
        route: [{destination: svc}]
      - route: [{destination: svc}]
        timeout: 200ms
"#;
    let bound = waypoint(yaml, &[backend("live").await]).await;
    assert_eq!(
        statuses(
            bound.proxy_addr.expect("plain listener"),
            "svc",
            "/fault",
            1
        )
        .await,
        vec![418]
    );
    // The plain listener is the edge of the mesh: a client there asking to switch the route
    // timeout off (0) is not obeyed, and the hanging request still times out.
    let mut req = get(bound.proxy_addr.expect("plain listener"), "svc", "/hang");
    req.headers_mut().insert(
        "x-envoy-upstream-rq-timeout-ms",
        "0".parse().expect("value"),
    );
    let (status, _, _) = send(&http1(), req).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn authorization_policy_denies_with_403() {
    let yaml = r#"
destinations: [{name: svc, endpoints: [{address: "{a}"}]}]
routes: [{name: r, hosts: [svc], rules: [{route: [{destination: svc}]}]}]
"#;
    let policies = r#"
- {key: no-admin, action: POLICY_ACTION_DENY, rules: [{to: [{paths: ["/admin*"]}]}]}
- {key: only-get, action: POLICY_ACTION_ALLOW, rules: [{to: [{methods: [GET]}]}]}
"#;
    let bound = waypoint_with_policies(yaml, policies, &[backend("live").await]).await;
    let client = http1();
    let (status, _, body) = send(
        &client,
        get(bound.proxy_addr.expect("plain listener"), "svc", "/admin/x"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "access denied by authorization policy (RBAC)\n");
    assert_eq!(
        statuses(bound.proxy_addr.expect("plain listener"), "svc", "/ok", 1).await,
        vec![200]
    );
    let mut post = get(bound.proxy_addr.expect("plain listener"), "svc", "/ok");
    *post.method_mut() = http::Method::POST;
    let (status, _, _) = send(&client, post).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Authorization comes before routing: a denied request to an unrouted host gets 403, an
    // allowed one 404.
    let mut post = get(bound.proxy_addr.expect("plain listener"), "unrouted", "/ok");
    *post.method_mut() = http::Method::POST;
    let (status, _, _) = send(&client, post).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        statuses(
            bound.proxy_addr.expect("plain listener"),
            "unrouted",
            "/ok",
            1
        )
        .await,
        vec![404]
    );
}

#[tokio::test]
async fn invalid_config_fails_to_build() {
    let yaml = "routes: [{name: r, hosts: ['*'], rules: [{route: [{destination: missing}]}]}]";
    let config = mesh_waypoint::config::WaypointConfig::parse(yaml).expect("yaml");
    let app = mesh_waypoint::app::AppConfig::new("127.0.0.1:0".parse().expect("addr"), config);
    let err = mesh_waypoint::app::build(app)
        .await
        .expect_err("unknown destination");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn small_request_bodies_are_replayed_on_retry() {
    let yaml = r#"
destinations:
  - name: svc
    endpoints: [{address: "127.0.0.1:1"}, {address: "{a}"}]
    traffic_policy: {load_balancer: round_robin}
routes:
  - name: r
    hosts: ["*"]
    rules: [{retries: {attempts: 1, retry_on: connect-failure, backoff: 1ms}, route: [{destination: svc}]}]
"#;
    let bound = waypoint(yaml, &[backend("live").await]).await;
    for i in 0..2 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/echo",
                bound.proxy_addr.expect("plain listener")
            ))
            .header("host", "svc")
            .body(full(format!("payload {i}")))
            .expect("request");
        let (status, _, body) = send(&http1(), req).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, format!("payload {i}")),
            "request {i}"
        );
    }
}
