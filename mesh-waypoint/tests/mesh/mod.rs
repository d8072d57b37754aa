//! Mesh stand-ins for in-process feed-mode tests: a test CA, node-inbound HBONE servers as
//! backends, an in-process `WaypointFeed` server on loopback, and a source-side HBONE client.

#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh_core::{
    drain::{self, DrainTrigger},
    hbone::{
        self, baggage::WorkloadMeta, Accepted, ConnectRequest, OutboundRequest, Rejection,
        TcpDialer,
    },
    identity::{ca::CertificateAuthority, source::DEFAULT_VALIDITY, InProcessSource, SpiffeId},
    proto::control::v1::{self as pb, waypoint_feed_server},
    tls::{self, IdentityCert},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

/// How long any single wait may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// SPIFFE id in `cluster.local`, namespace `default`.
pub fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .expect("spiffe id")
}

/// A test CA issuing workload certificates.
pub struct Pki {
    source: InProcessSource,
}

impl Pki {
    /// A fresh self-signed CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        let ca = Arc::new(CertificateAuthority::self_signed(trust_domain).expect("ca"));
        Self {
            source: InProcessSource::new(ca, DEFAULT_VALIDITY),
        }
    }

    /// The CA's roots (PEM).
    pub fn bundle(&self) -> String {
        self.source.ca().trust_bundle_pem()
    }

    /// A certificate for `identity`.
    pub fn cert(&self, identity: &SpiffeId) -> Arc<IdentityCert> {
        IdentityCert::new(&self.source.issue(identity).expect("issue")).expect("load")
    }
}

/// A node-inbound stand-in on `ip:port` proving `cert`: accepts CONNECT to any authority and
/// answers HTTP with body `<name> <path>` and headers `x-peer` (the tunnel peer's identity)
/// and `x-authority` (the CONNECT authority), plus the CONNECT's `forwarded` and `baggage` as
/// `x-connect-forwarded` / `x-connect-baggage`. Port 0 picks one; returns the bound address.
pub async fn node_inbound(
    ip: IpAddr,
    port: u16,
    cert: Arc<IdentityCert>,
    name: &'static str,
) -> SocketAddr {
    let listener = TcpListener::bind((ip, port)).await.expect("bind inbound");
    let addr = listener.local_addr().expect("addr");
    let config = tls::server_config(cert).expect("server tls");
    let handler = move |req: ConnectRequest| async move {
        let tunnel_facts = TunnelFacts {
            peer: req.peer_identity.to_string(),
            authority: req.authority.to_string(),
            connect_headers: req.headers.clone(),
        };
        Ok::<_, Rejection>(Accepted::new(move |tunnel| async move {
            let svc = service_fn(move |r| answer(name, tunnel_facts.clone(), r));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tunnel), svc)
                .await;
        }))
    };
    let server = hbone::Server::new(Arc::new(config), Arc::new(handler));
    let (trigger, watch) = drain::channel();
    std::mem::forget(trigger);
    tokio::spawn(server.serve(listener, watch));
    addr
}

/// Requests to `/slow` on any inbound stand-in signal `arrived` and wait for `release`.
pub struct Gate {
    pub arrived: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

/// The process-wide gate for `/slow`.
pub fn gate() -> &'static Gate {
    static GATE: std::sync::OnceLock<Gate> = std::sync::OnceLock::new();
    GATE.get_or_init(|| Gate {
        arrived: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    })
}

/// What a node-inbound stand-in learned from the CONNECT.
#[derive(Clone)]
struct TunnelFacts {
    peer: String,
    authority: String,
    connect_headers: http::HeaderMap,
}

async fn answer(
    name: &'static str,
    facts: TunnelFacts,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        gate().arrived.notify_one();
        gate().release.notified().await;
    }
    let body = format!("{name} {}", req.uri().path());
    let mut response = Response::builder()
        .header("x-peer", facts.peer)
        .header("x-authority", facts.authority);
    for (from, to) in [
        (hbone::headers::FORWARDED, "x-connect-forwarded"),
        (hbone::headers::BAGGAGE, "x-connect-baggage"),
    ] {
        if let Some(value) = facts.connect_headers.get(from) {
            response = response.header(to, value);
        }
    }
    let response = response
        .body(Full::new(Bytes::from(body)))
        .expect("response");
    Ok(response)
}

/// A source workload: opens a tunnel to the waypoint and sends one HTTP/1.1 request.
pub struct Source {
    client: hbone::Client,
    cert: Arc<IdentityCert>,
    waypoint: SocketAddr,
    waypoint_id: SpiffeId,
    /// Sent as the CONNECT's `forwarded: for=` (a claim the waypoint must not believe).
    pub forwarded: Option<SocketAddr>,
    /// The address the tunnel's connection leaves from (a client pod's, as a node dials from
    /// inside the pod); `None`: the kernel's choice.
    pub from: Option<std::net::IpAddr>,
}

/// Dials from a fixed local address.
struct BoundDialer(std::net::IpAddr);

impl hbone::Dialer for BoundDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> futures::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let from = self.0;
        Box::pin(async move {
            let socket = match from {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(from, 0))?;
            socket.connect(addr).await
        })
    }
}

impl Source {
    /// A source presenting `cert` to the waypoint at `waypoint`, which must prove `waypoint_id`.
    pub fn new(cert: Arc<IdentityCert>, waypoint: SocketAddr, waypoint_id: SpiffeId) -> Self {
        Self {
            client: hbone::Client::new(Arc::new(TcpDialer)),
            cert,
            waypoint,
            waypoint_id,
            forwarded: None,
            from: None,
        }
    }

    /// CONNECT headers as a node sends them: `baggage` naming the source workload (a
    /// Deployment named after the service account, canonical revision `v1`).
    fn connect_headers(&self) -> http::HeaderMap {
        let name = self.cert.identity().service_account().to_owned();
        let meta = WorkloadMeta {
            namespace: "default".into(),
            workload_name: name.clone(),
            workload_kind: "deployment".into(),
            canonical_service: name,
            canonical_revision: "v1".into(),
        };
        let mut headers = http::HeaderMap::new();
        let value = meta.to_baggage().expect("baggage");
        headers.insert(hbone::headers::BAGGAGE, value);
        if let Some(client) = self.forwarded {
            let value = hbone::headers::forwarded(client, None).expect("forwarded");
            headers.insert(hbone::headers::FORWARDED, value);
        }
        headers
    }

    /// GET `path` through a tunnel with `:authority` = `vip`; headers as given.
    pub async fn get(
        &self,
        vip: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, http::HeaderMap, String), String> {
        let request = OutboundRequest {
            source: self.cert.clone(),
            destination_identities: vec![self.waypoint_id.clone()],
            dial: self.waypoint,
            authority: vip.to_string().parse().expect("authority"),
            headers: self.connect_headers(),
            origin: self.from.map(|ip| hbone::Origin {
                ip,
                dialer: Arc::new(BoundDialer(ip)),
            }),
        };
        let tunnel = tokio::time::timeout(WAIT, self.client.connect(request))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut builder = Request::get(path).header("host", "reviews:9080");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Empty::<Bytes>::new()).expect("request");
        let response = tokio::time::timeout(WAIT, send.send_request(req))
            .await
            .map_err(|_| "request timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}

/// A recorded subscription and its `authorization` header.
pub type Subscription = (pb::WaypointSubscribeRequest, Option<String>);
type ConfigSender = mpsc::Sender<Result<pb::WaypointConfig, tonic::Status>>;
/// GETs `path` from `addr` over plain HTTP/1.1 with `Host: host`.
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("in time")
        .expect("answer");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<pb::WaypointConfig, tonic::Status>> + Send>>;

/// An in-process `WaypointFeed`: records every subscription and lets the test push configs to
/// the latest stream or end it.
#[derive(Clone, Default)]
pub struct FakeFeed {
    /// Each subscription and its `authorization` header.
    pub requests: Arc<Mutex<Vec<Subscription>>>,
    streams: Arc<Mutex<Vec<ConfigSender>>>,
    subscribed: Arc<watch::Sender<usize>>,
    /// Subscriptions still to refuse with `permission_denied`.
    pub refuse: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeFeed {
    /// Serves on loopback port 0; returns `http://addr` and a handle that stops the server when
    /// dropped.
    pub async fn serve(&self) -> (String, DrainTrigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind feed");
        let addr = listener.local_addr().expect("addr");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (trigger, mut watch) = drain::channel();
        let service = waypoint_feed_server::WaypointFeedServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move { watch.signaled().await })
                .await;
        });
        (format!("http://{addr}"), trigger)
    }

    /// Waits until at least `n` subscriptions arrived.
    pub async fn wait_subscriptions(&self, n: usize) {
        let mut rx = self.subscribed.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= n))
            .await
            .expect("subscription in time")
            .expect("feed alive");
    }

    /// Sends `config` on the latest stream.
    pub async fn push(&self, config: pb::WaypointConfig) {
        let sender = self.streams.lock().expect("lock").last().cloned();
        sender
            .expect("a subscription")
            .send(Ok(config))
            .await
            .expect("stream open");
    }

    /// Ends every open stream (as a control-plane restart would).
    pub fn end_streams(&self) {
        self.streams.lock().expect("lock").clear();
    }
}

#[tonic::async_trait]
impl waypoint_feed_server::WaypointFeed for FakeFeed {
    type SubscribeStream = ConfigStream;

    async fn subscribe(
        &self,
        request: tonic::Request<pb::WaypointSubscribeRequest>,
    ) -> Result<tonic::Response<ConfigStream>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.requests
            .lock()
            .expect("lock")
            .push((request.into_inner(), token));
        let refuse = self.refuse.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if refuse.is_ok() {
            self.subscribed.send_modify(|c| *c += 1);
            return Err(tonic::Status::permission_denied(
                "node runs no waypoint pod",
            ));
        }
        let (tx, rx) = mpsc::channel(8);
        self.streams.lock().expect("lock").push(tx);
        self.subscribed.send_modify(|c| *c += 1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
