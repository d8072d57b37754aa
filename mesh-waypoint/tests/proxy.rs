//! In-process tests of the whole waypoint on loopback: real backends on port 0, HTTP/1.1 and
//! HTTP/2 clients, routing, errors, streaming, upgrades and gRPC trailers.

mod support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mesh_waypoint::rng::Sequence;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
destinations:
  - name: reviews
    endpoints:
      - {address: "{a}", labels: {version: v1}}
      - {address: "{b}", labels: {version: v2}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
  - name: dead
    endpoints: [{address: "127.0.0.1:1"}]
  - name: empty
    endpoints: []
routes:
  - name: reviews
    hosts: [reviews, "reviews.default.svc.cluster.local"]
    rules:
      - name: jason
        matches: [{headers: [{name: end-user, match: {exact: jason}}]}]
        route: [{destination: reviews, subset: v2}]
      - name: rewrite
        matches: [{path: {prefix: /old}}]
        rewrite: {path: {prefix: /new}, authority: reviews.internal}
        request_headers: {set: {x-route: rewrite}, remove: [x-drop]}
        response_headers: {add: {x-served-by: waypoint}, remove: [echo-x-route]}
        route: [{destination: reviews, subset: v1}]
      - name: moved
        matches: [{path: {exact: /moved}}]
        redirect: {path: {full: /here}, code: 302}
      - name: teapot
        matches: [{path: {exact: /teapot}}]
        direct_response: {status: 418, body: short and stout}
      - name: dead
        matches: [{path: {prefix: /dead}}]
        route: [{destination: dead}]
      - name: empty
        matches: [{path: {prefix: /empty}}]
        route: [{destination: empty}]
      - name: slow
        matches: [{path: {prefix: /hang}}]
        timeout: 200ms
        route: [{destination: reviews, subset: v1}]
      - name: default
        route: [{destination: reviews, subset: v1}]
"#;

async fn setup() -> (std::net::SocketAddr, mesh_waypoint::app::Bound) {
    let (a, b) = (backend("v1").await, backend("v2").await);
    let bound = waypoint(ROUTES, &[a, b]).await;
    (bound.proxy_addr.expect("plain listener"), bound)
}

#[tokio::test]
async fn routes_by_header_path_and_host() {
    let (proxy, _bound) = setup().await;
    let client = http1();
    let cases = [
        ("reviews", "/x", &[][..], 200, "v1 /x"),
        ("reviews", "/x", &[("end-user", "jason")][..], 200, "v2 /x"),
        (
            "reviews.default.svc.cluster.local:9080",
            "/y?z=1",
            &[][..],
            200,
            "v1 /y?z=1",
        ),
        ("ratings", "/x", &[][..], 404, "no route matched (NR)\n"),
    ];
    for (host, path, headers, status, body) in cases {
        let mut req = get(proxy, host, path);
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().expect("value"));
        }
        let (got_status, _, got_body) = send(&client, req).await;
        assert_eq!(
            (got_status.as_u16(), got_body.as_str()),
            (status, body),
            "{host} {path}"
        );
    }
}

#[tokio::test]
async fn rewrites_and_edits_headers() {
    let (proxy, _bound) = setup().await;
    let mut req = get(proxy, "reviews", "/old/item?id=3");
    req.headers_mut()
        .insert("x-drop", "secret".parse().expect("value"));
    req.headers_mut()
        .insert("connection", "x-hop".parse().expect("value"));
    req.headers_mut()
        .insert("x-hop", "1".parse().expect("value"));
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse().expect("value"));
    let (status, headers, body) = send(&http1(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1 /new/item?id=3");
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("echo-host").as_deref(), Some("reviews.internal"));
    assert_eq!(h("echo-x-drop"), None);
    assert_eq!(
        h("echo-x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(h("echo-x-route"), None, "response header removed");
    assert_eq!(h("x-served-by").as_deref(), Some("waypoint"));
    assert_eq!(h("echo-x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        h("echo-x-forwarded-proto").as_deref(),
        Some("http"),
        "the edge states the scheme the client really used"
    );
}

#[tokio::test]
async fn local_answers_and_error_mapping() {
    let (proxy, _bound) = setup().await;
    let client = http1();
    let (status, headers, _) = send(&client, get(proxy, "reviews", "/moved?q=1")).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        headers.get("location").map(|v| v.as_bytes()),
        Some(&b"http://reviews/here?q=1"[..])
    );
    let (status, _, body) = send(&client, get(proxy, "reviews", "/teapot")).await;
    assert_eq!((status.as_u16(), body.as_str()), (418, "short and stout"));
    let (status, _, body) = send(&client, get(proxy, "reviews", "/dead")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "connect failure: {body}"
    );
    assert_eq!(body, "upstream connect failure (UF)\n");
    let (status, _, body) = send(&client, get(proxy, "reviews", "/empty")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "no healthy upstream (UH)\n")
    );
    let (status, _, body) = send(&client, get(proxy, "reviews", "/hang")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (504, "upstream request timeout (UT)\n")
    );
    let (status, _, body) = send(&client, get(proxy, "reviews", "/status/502")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (502, "v1"),
        "upstream statuses pass through"
    );
}

#[tokio::test]
async fn weighted_split_follows_the_rng() {
    let yaml = r#"
destinations:
  - name: svc
    endpoints: [{address: "{a}", labels: {v: "1"}}, {address: "{b}", labels: {v: "2"}}]
    subsets: [{name: one, labels: {v: "1"}}, {name: two, labels: {v: "2"}}]
routes:
  - name: svc
    hosts: ["*"]
    rules:
      - route: [{destination: svc, subset: one, weight: 90}, {destination: svc, subset: two, weight: 10}]
"#;
    let (a, b) = (backend("one").await, backend("two").await);
    // Rolls modulo 100: 5 -> one, 95 -> two, 89 -> one, 90 -> two.
    let rng = Arc::new(Sequence::new(vec![5, 95, 89, 90]));
    let bound = waypoint_with_rng(yaml, &[a, b], rng).await;
    let client = http1();
    let mut got = Vec::new();
    for _ in 0..4 {
        let (_, _, body) = send(
            &client,
            get(bound.proxy_addr.expect("plain listener"), "svc", "/"),
        )
        .await;
        got.push(body);
    }
    assert_eq!(got, vec!["one /", "two /", "one /", "two /"]);
}

#[tokio::test]
async fn http2_request_bodies_stream_both_ways() {
    let (proxy, _bound) = setup().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = Request::builder()
        .uri("http://reviews/echo")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("request");
    let mut client = h2_connection(proxy).await;
    let response = tokio::time::timeout(WAIT, async {
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .expect("send");
        client.send_request(req).await
    })
    .await
    .expect("headers in time")
    .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The first chunk comes back while the request is still open: nothing is buffered whole.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first frame in time");
    let first = first
        .expect("frame")
        .expect("data")
        .into_data()
        .expect("data frame");
    assert_eq!(first, Bytes::from_static(b"first"));
    tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .await
        .expect("send");
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("rest in time")
        .expect("body");
    assert_eq!(rest.to_bytes(), Bytes::from_static(b"second"));
}

#[tokio::test]
async fn grpc_style_trailers_pass_through_http2() {
    let (proxy, _bound) = setup().await;
    let req = Request::builder()
        .method("POST")
        .uri("http://reviews/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("request"))
        .expect("request");
    let mut client = h2_connection(proxy).await;
    let response = tokio::time::timeout(WAIT, client.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("echo-host").map(|v| v.as_bytes()),
        Some(&b"reviews"[..]),
        "the service name reaches an HTTP/2 backend"
    );
    assert_eq!(
        response.headers().get("echo-te").map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );
    let collected = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("in time")
        .expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"onetwo"));
}

#[tokio::test]
async fn websocket_upgrade_is_relayed() {
    let (proxy, _bound) = setup().await;
    let mut tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    tcp.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut echoed))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn drain_completes_with_idle_connections() {
    let (proxy, bound) = setup().await;
    let client = http1();
    let (status, _, _) = send(&client, get(proxy, "reviews", "/x")).await;
    assert_eq!(status, StatusCode::OK);
    let outcome = bound.shutdown(Duration::from_secs(5)).await;
    assert_eq!(outcome, mesh_core::drain::DrainOutcome::Complete);
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test]
async fn upstream_protocol_follows_the_destination_policy() {
    let yaml = r#"
destinations:
  - {name: h2, endpoints: [{address: "{a}"}], traffic_policy: {upstream_protocol: http2}}
  - {name: h1, endpoints: [{address: "{a}"}], traffic_policy: {upstream_protocol: http1}}
  - {name: same, endpoints: [{address: "{a}"}]}
routes:
  - {name: h2, hosts: [h2], rules: [{route: [{destination: h2}]}]}
  - {name: h1, hosts: [h1], rules: [{route: [{destination: h1}]}]}
  - {name: same, hosts: [same], rules: [{route: [{destination: same}]}]}
"#;
    let bound = waypoint(yaml, &[backend("b").await]).await;
    let version = |headers: &http::HeaderMap| {
        headers
            .get("x-backend-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // HTTP/1.1 downstream.
    for (host, want) in [("h2", "HTTP/2.0"), ("h1", "HTTP/1.1"), ("same", "HTTP/1.1")] {
        let (status, headers, _) = send(
            &http1(),
            get(bound.proxy_addr.expect("plain listener"), host, "/"),
        )
        .await;
        assert_eq!(
            (status, version(&headers)),
            (StatusCode::OK, want.to_owned()),
            "h1 -> {host}"
        );
    }
    // HTTP/2 downstream.
    let mut client = h2_connection(bound.proxy_addr.expect("plain listener")).await;
    for (host, want) in [("h2", "HTTP/2.0"), ("h1", "HTTP/1.1"), ("same", "HTTP/2.0")] {
        let req = Request::builder()
            .uri(format!("http://{host}/"))
            .body(full(""))
            .expect("request");
        let response = tokio::time::timeout(WAIT, client.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(version(response.headers()), want, "h2 -> {host}");
    }
}

#[tokio::test]
async fn drain_lets_an_in_flight_request_finish() {
    // A backend that answers only when told to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = arrived_tx.send(());
        let _ = release_rx.await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
            .await;
    });
    let yaml = "destinations: [{name: d, endpoints: [{address: \"{a}\"}]}]\nroutes: [{name: r, hosts: [\"*\"], rules: [{route: [{destination: d}]}]}]";
    let bound = waypoint(yaml, &[addr]).await;
    let proxy = bound.proxy_addr.expect("plain listener");
    let in_flight = tokio::spawn(async move { send(&http1(), get(proxy, "svc", "/")).await });
    tokio::time::timeout(WAIT, arrived_rx)
        .await
        .expect("request reaches backend")
        .expect("signal");
    let drain = tokio::spawn(bound.shutdown(Duration::from_secs(5)));
    // The listener closes once the drain starts, while the request is still in flight.
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(proxy).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closes");
    assert!(
        !drain.is_finished(),
        "drain waits for the in-flight request"
    );
    release_tx.send(()).expect("release");
    let (status, _, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "late"));
    let outcome = tokio::time::timeout(WAIT, drain)
        .await
        .expect("drain in time")
        .expect("join");
    assert_eq!(outcome, mesh_core::drain::DrainOutcome::Complete);
}

#[tokio::test]
async fn grpc_requests_get_grpc_local_replies() {
    let (proxy, _bound) = setup().await;
    let mut client = h2_connection(proxy).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://ratings/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(""))
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..]),
        "no route: UNIMPLEMENTED"
    );
}

/// Sends `GET <target>` exactly as written (no client-side URI parsing) and returns the status
/// code and body.
async fn raw_get(proxy: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target:?}: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Nobody may reach /admin or anything below it.
const NO_ADMIN: &str = r#"[{key: no-admin, action: POLICY_ACTION_DENY, rules: [{to: [{paths: ["/admin", "/admin/*"]}]}]}]"#;

fn path_policy_config(mode: &str) -> String {
    format!(
        r#"
path_normalization: {mode}
destinations: [{{name: svc, endpoints: [{{address: "{{a}}"}}]}}]
routes:
  - name: r
    hosts: [svc]
    rules:
      - {{matches: [{{path: {{exact: /public/page}}}}], route: [{{destination: svc}}]}}
      - direct_response: {{status: 404, body: "no such page"}}
  - name: other
    hosts: ["*"]
    rules: [{{route: [{{destination: svc}}]}}]
"#
    )
}

#[tokio::test]
async fn a_denied_path_holds_against_other_spellings_and_upstream_sees_the_checked_path() {
    let spellings = [
        "/admin",
        "/admin/users",
        "//admin",
        "///admin/users",
        "/./admin",
        "/public/../admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/users",
        "/%2e%2e/admin",
        "/public/%2E%2E/admin/users",
        "/admin/./users",
        "/admin//users",
        "/x/..//admin",
        "/public%2F..%2Fadmin",
        "/public%5C..%5Cadmin",
        "/public/..%2fadmin",
        "/admin%00",
        "/adm%zzin",
    ];
    for mode in ["MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"] {
        let bound = waypoint_with_policies(
            &path_policy_config(mode),
            NO_ADMIN,
            &[backend("live").await],
        )
        .await;
        let proxy = bound.proxy_addr.expect("plain listener");
        for target in spellings {
            let (status, body) = raw_get(proxy, target).await;
            assert!(
                status == 403 || status == 400,
                "{mode}: {target:?} got {status} {body:?}"
            );
        }
        // Routing matches the same normalized path, and that path is what the backend gets.
        for target in [
            "/public/page",
            "/public//page",
            "/x/../public/./page",
            "/%70ublic/page",
        ] {
            assert_eq!(
                raw_get(proxy, target).await,
                (200, "live /public/page".to_owned()),
                "{mode}: {target:?}"
            );
        }
        // The query is kept as sent.
        let (status, body) = raw_get(proxy, "/public/./page?next=/admin").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "live /public/page?next=/admin"),
            "{mode}"
        );
    }
    // With normalization off, another spelling passes the policy (and reaches the fallback
    // rule): why NONE is not the default.
    let bound = waypoint_with_policies(
        &path_policy_config("NONE"),
        NO_ADMIN,
        &[backend("live").await],
    )
    .await;
    let proxy = bound.proxy_addr.expect("plain listener");
    assert_eq!(raw_get(proxy, "/admin").await.0, 403);
    assert_eq!(
        raw_get(proxy, "//admin").await,
        (404, "no such page".to_owned())
    );
}

/// A signing key for this test and its JWKS.
fn jwt_signer() -> (jsonwebtoken::EncodingKey, String) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem");
    let point = pair.public_key_raw();
    let (x, y) = point[1..].split_at(32);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "t", "x": b64.encode(x), "y": b64.encode(y),
    }]});
    (key, jwks.to_string())
}

#[tokio::test]
async fn jwt_protected_route_through_a_running_waypoint() {
    use mesh_core::authz::{Action, OperationMatch, Policy, Rule, SourceMatch};
    use mesh_waypoint::{
        authn::{jwks::parse_key_set, JwtProvider, Keys, Location, ScopedAuthn},
        authz::ScopedPolicy,
    };
    const ISSUER: &str = "https://issuer.test";
    let (key, jwks) = jwt_signer();
    let yaml = r#"
destinations: [{name: svc, endpoints: [{address: "{a}"}]}]
routes: [{name: r, hosts: [svc], rules: [{route: [{destination: svc}]}]}]
"#;
    let mut app = app_config(yaml, &[backend("live").await]);
    app.waypoint.request_authn = vec![ScopedAuthn {
        key: "demo/jwt".into(),
        scope: None,
        providers: vec![JwtProvider {
            issuer: ISSUER.into(),
            audiences: vec!["svc".into()],
            keys: Keys::Inline(Arc::new(parse_key_set(jwks.as_bytes()).expect("jwks"))),
            locations: Location::defaults(),
            forward_original_token: false,
            claim_headers: vec![(http::HeaderName::from_static("x-user"), "sub".into())],
            payload_header: None,
            space_delimited: Vec::new(),
        }],
        refuse_all: false,
    }];
    // DENY /secure unless a request principal is present (Istio's documented pairing).
    app.waypoint.scoped_policies = vec![ScopedPolicy {
        policy: Policy {
            key: "demo/secure".into(),
            action: Action::Deny,
            rules: vec![Rule {
                from: vec![SourceMatch {
                    not_request_principals: vec!["*".into()],
                    ..Default::default()
                }],
                to: vec![OperationMatch {
                    paths: vec!["/secure".into(), "/secure/*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        },
        scope: None,
    }];
    let bound = mesh_waypoint::app::build(app).await.expect("starts");
    let proxy = bound.proxy_addr.expect("plain listener");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let token = |iss: &str, exp_in: i64| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("t".into());
        let claims =
            serde_json::json!({"iss": iss, "sub": "alice", "aud": "svc", "exp": now + exp_in});
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let client = http1();
    let call = |path: &'static str, token: Option<String>, spoof: bool| {
        let mut req = get(proxy, "svc", path);
        if let Some(token) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("value"),
            );
        }
        if spoof {
            req.headers_mut()
                .insert("x-user", "admin".parse().expect("value"));
        }
        send(&client, req)
    };
    let (status, headers, _) = call("/secure", Some(token(ISSUER, 600)), true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.get("echo-authorization").is_none(),
        "token not forwarded"
    );
    assert_eq!(
        headers["echo-x-user"], "alice",
        "claim header from the token, not the client"
    );
    let (status, headers, body) = call("/secure", Some(token(ISSUER, -3600)), false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired: {body}");
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(body, "jwt is expired (-)\n");
    let (status, _, _) = call("/secure", Some(token("https://evil.test", 600)), false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "foreign issuer");
    let (status, _, _) = call("/secure", None, true).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token on /secure");
    let (status, headers, _) = call("/open", None, true).await;
    assert_eq!(status, StatusCode::OK, "no token elsewhere");
    assert!(
        headers.get("echo-x-user").is_none(),
        "a spoofed claim header is removed"
    );
}
