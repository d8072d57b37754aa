//! Shared helpers for in-process tests: real backends on loopback port 0, a waypoint built from
//! YAML, and HTTP/1.1 and HTTP/2 clients.

#![allow(dead_code)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::{authz, proto::control::v1 as pb};
use mesh_waypoint::{
    app::{self, AppConfig, Bound},
    authz::ScopedPolicy,
    config::WaypointConfig,
    rng::{SharedRng, ThreadRandom},
};
use tokio::net::TcpListener;

pub type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How long any single wait in a test may take before it fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// A backend that answers by path:
/// - `/status/<code>`: that status;
/// - `/hang`: never answers;
/// - `/echo`: streams the request body back;
/// - `/grpc`: two data frames then trailers `grpc-status: 0`;
/// - upgrade requests: 101, then echoes bytes;
/// - anything else: 200 with body `<name> <path?query>`.
///
/// Request headers come back as `echo-<name>` response headers.
pub async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(name, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut builder =
        Response::builder().header("x-backend-version", format!("{:?}", req.version()));
    for (k, v) in req.headers() {
        builder = builder.header(format!("echo-{k}"), v);
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let r = builder
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""));
        return Ok(r.expect("response"));
    }
    let response = if let Some(code) = path.strip_prefix("/status/") {
        builder
            .status(code.parse::<u16>().unwrap_or(500))
            .body(full(name))
    } else if path == "/hang" {
        std::future::pending::<()>().await;
        unreachable!("pending never resolves")
    } else if path == "/echo" {
        builder.body(req.into_body().map_err(Into::into).boxed_unsync())
    } else if path == "/grpc" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"one"))),
            Ok(Frame::data(Bytes::from_static(b"two"))),
            Ok(Frame::trailers(trailers)),
        ];
        builder
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
    } else {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        builder.body(full(format!("{name} {pq}")))
    };
    Ok(response.expect("response"))
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Starts a waypoint on loopback port 0. `{a}`, `{b}`... in the YAML are replaced by the
/// given backend addresses, in order.
pub async fn waypoint(yaml: &str, backends: &[SocketAddr]) -> Bound {
    waypoint_with_rng(yaml, backends, Arc::new(ThreadRandom)).await
}

/// As [`waypoint`], with a chosen random source.
pub async fn waypoint_with_rng(yaml: &str, backends: &[SocketAddr], rng: SharedRng) -> Bound {
    let mut app = app_config(yaml, backends);
    app.rng = rng;
    app::build(app).await.expect("waypoint starts")
}

/// As [`waypoint`], enforcing `policies`: the feed's `Authorization` messages as YAML (proto3
/// JSON mapping), applying to every request.
pub async fn waypoint_with_policies(yaml: &str, policies: &str, backends: &[SocketAddr]) -> Bound {
    let mut app = app_config(yaml, backends);
    let wire: Vec<pb::Authorization> = serde_yaml::from_str(policies).expect("policy yaml");
    app.waypoint.scoped_policies = wire
        .iter()
        .map(|w| ScopedPolicy {
            policy: authz::Policy::try_from(w).expect("policy converts"),
            scope: None,
        })
        .collect();
    app::build(app).await.expect("waypoint starts")
}

/// The application config for a waypoint on loopback port 0, with backends substituted.
pub fn app_config(yaml: &str, backends: &[SocketAddr]) -> AppConfig {
    let mut text = yaml.to_owned();
    for (i, addr) in backends.iter().enumerate() {
        let key = format!("{{{}}}", (b'a' + i as u8) as char);
        text = text.replace(&key, &addr.to_string());
    }
    let config = WaypointConfig::parse(&text).expect("test config parses");
    AppConfig::new("127.0.0.1:0".parse().expect("addr"), config)
}

/// An HTTP/1.1 client.
pub fn http1() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn http2() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Sends a request and returns status, headers and the whole body as text.
pub async fn send(
    client: &Client<HttpConnector, TestBody>,
    req: Request<TestBody>,
) -> (StatusCode, http::HeaderMap, String) {
    let response = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("response in time")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body reads")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// A GET to the waypoint with a Host header.
pub fn get(proxy: SocketAddr, host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(full(""))
        .expect("request")
}

/// An HTTP/2 (h2c) connection to the waypoint whose requests carry their own `:authority`
/// (e.g. `http://reviews/path`), as a mesh client's would.
pub async fn h2_connection(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to waypoint");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}
