//! Loopback tests: client and server over real TCP and mTLS with a test CA.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::HeaderMap;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::{
    drain::{self, DrainOutcome, DrainTrigger},
    identity::{ca::CertificateAuthority, InProcessSource, SpiffeId},
    tls::{self, IdentityCert},
};

const WAIT: Duration = Duration::from_secs(10);

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

struct Fixture {
    source: InProcessSource,
    client_cert: Arc<IdentityCert>,
    server_id: SpiffeId,
    server_addr: SocketAddr,
    echo_addr: SocketAddr,
    trigger: Option<DrainTrigger>,
    /// Whether each connection the server accepted had `TCP_NODELAY` when it was served.
    accepted_nodelay: tokio::sync::mpsc::Receiver<bool>,
}

/// The server's certificate selector, noting each accepted socket's `TCP_NODELAY` on the way.
struct NodelayProbe {
    config: Arc<rustls::ServerConfig>,
    seen: tokio::sync::mpsc::Sender<bool>,
}

impl ServerCertSelector for NodelayProbe {
    fn select(&self, stream: &tokio::net::TcpStream) -> Option<Arc<rustls::ServerConfig>> {
        let _ = self.seen.try_send(stream.nodelay().unwrap());
        Some(self.config.clone())
    }
}

/// An echo server: copies every connection back to itself until EOF, then closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Connects to the authority, except 10.0.0.1 (401), 10.0.0.2 (400) and port 1 (503 after trying).
async fn route(request: ConnectRequest) -> Result<Accepted, Rejection> {
    match request.authority.ip().to_string().as_str() {
        "10.0.0.1" => return Err(Rejection::Unauthorized("test deny".into())),
        "10.0.0.2" => return Err(Rejection::BadRequest("not local".into())),
        _ => {}
    }
    match tokio::net::TcpStream::connect(request.authority).await {
        Ok(upstream) => Ok(Accepted::proxy(upstream)),
        Err(e) => Err(Rejection::Unavailable(e.to_string())),
    }
}

async fn fixture() -> Fixture {
    let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
    let source = InProcessSource::new(ca, Duration::from_secs(3600));
    let server_id = id("spiffe://cluster.local/ns/b/sa/server");
    let server_cert = IdentityCert::new(&source.issue(&server_id).unwrap()).unwrap();
    let client_cert = IdentityCert::new(
        &source
            .issue(&id("spiffe://cluster.local/ns/a/sa/client"))
            .unwrap(),
    )
    .unwrap();
    let (seen, accepted_nodelay) = tokio::sync::mpsc::channel(64);
    let config = tls::server_config(server_cert).unwrap();
    let server = Server::new(Arc::new(NodelayProbe { config, seen }), Arc::new(route));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (trigger, watch) = drain::channel();
    tokio::spawn(server.serve(listener, watch));
    Fixture {
        source,
        client_cert,
        server_id,
        server_addr,
        echo_addr: echo_server().await,
        trigger: Some(trigger),
        accepted_nodelay,
    }
}

impl Fixture {
    fn request(&self, authority: &str) -> OutboundRequest {
        let mut headers = HeaderMap::new();
        let forwarded = headers::forwarded("10.1.1.1:5555".parse().unwrap(), None).unwrap();
        headers.insert(headers::FORWARDED, forwarded);
        OutboundRequest {
            source: self.client_cert.clone(),
            destination_identities: vec![self.server_id.clone()],
            dial: self.server_addr,
            authority: authority.parse().unwrap(),
            headers,
            origin: None,
        }
    }

    fn echo_request(&self) -> OutboundRequest {
        self.request(&self.echo_addr.to_string())
    }
}

async fn round_trip(tunnel: &mut Tunnel, payload: &[u8]) {
    tunnel.write_all(payload).await.unwrap();
    let mut back = vec![0; payload.len()];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
        .await
        .expect("echo hung")
        .unwrap();
    assert_eq!(back, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_bytes_both_ways_with_half_close() {
    let fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let mut tunnel = tokio::time::timeout(WAIT, client.connect(fx.echo_request()))
        .await
        .unwrap()
        .unwrap();
    round_trip(&mut tunnel, b"hello through hbone").await;
    let big = vec![7u8; 3 * 1024 * 1024];
    round_trip(&mut tunnel, &big).await;
    // Half-close: our EOF reaches the echo server, which then closes its side.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest))
        .await
        .expect("eof never arrived")
        .unwrap();
    assert_eq!(n, 0);
}

/// Without `TCP_NODELAY` on the server side, the response's last small write (the final DATA
/// frame, END_STREAM) waits for the client's delayed ACK: ~40 ms per request through the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_disables_nagle_on_accepted_connections() {
    let mut fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let mut tunnel = tokio::time::timeout(WAIT, client.connect(fx.echo_request()))
        .await
        .unwrap()
        .unwrap();
    round_trip(&mut tunnel, b"small request").await;
    let nodelay = tokio::time::timeout(WAIT, fx.accepted_nodelay.recv())
        .await
        .expect("server never selected a certificate")
        .unwrap();
    assert!(nodelay, "accepted hbone connection without TCP_NODELAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_map_to_distinct_errors() {
    let fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let connect =
        |authority: &str| tokio::time::timeout(WAIT, client.connect(fx.request(authority)));
    let denied = connect("10.0.0.1:80").await.unwrap().unwrap_err();
    assert!(matches!(denied, ClientError::Denied { .. }), "{denied}");
    let bad = connect("10.0.0.2:80").await.unwrap().unwrap_err();
    assert!(matches!(bad, ClientError::BadRequest { .. }), "{bad}");
    let host = connect("reviews.default.svc:9080")
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(host, ClientError::BadRequest { .. }), "{host}");
    let down = connect("127.0.0.1:1").await.unwrap().unwrap_err();
    assert!(matches!(down, ClientError::Unavailable { .. }), "{down}");
    // All of these went over one pooled connection.
    assert_eq!(client.pooled_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_unexpected_server_identity() {
    let fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let mut request = fx.echo_request();
    request.destination_identities = vec![id("spiffe://cluster.local/ns/b/sa/other")];
    let err = tokio::time::timeout(WAIT, client.connect(request))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    assert_eq!(client.pooled_connections(), 0);
    assert_eq!(
        client.pool_keys(),
        0,
        "failed dials must not leave pool entries behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reuses_connections_up_to_the_stream_cap() {
    let fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let mut tunnels = Vec::new();
    for _ in 0..MAX_STREAMS_PER_CONN {
        tunnels.push(client.connect(fx.echo_request()).await.unwrap());
    }
    assert_eq!(client.pooled_connections(), 1);
    let mut extra = client.connect(fx.echo_request()).await.unwrap();
    assert_eq!(
        client.pooled_connections(),
        2,
        "stream cap must open a second connection"
    );
    round_trip(&mut extra, b"101st").await;
    round_trip(&mut tunnels[0], b"first").await;
    // Freeing a slot lets the first connection take the next stream.
    drop(tunnels.pop());
    let _again = client.connect(fx.echo_request()).await.unwrap();
    assert_eq!(client.pooled_connections(), 2);
    // Another source identity gets its own connection.
    let mut other = fx.echo_request();
    other.source = IdentityCert::new(
        &fx.source
            .issue(&id("spiffe://cluster.local/ns/a/sa/second"))
            .unwrap(),
    )
    .unwrap();
    let _t = client.connect(other).await.unwrap();
    assert_eq!(client.pooled_connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let fx = fixture().await;
    let client = Client::with_idle_timeout(Arc::new(TcpDialer), Duration::from_millis(50));
    let mut tunnel = client.connect(fx.echo_request()).await.unwrap();
    round_trip(&mut tunnel, b"x").await;
    drop(tunnel);
    tokio::time::timeout(WAIT, async {
        while client.pooled_connections() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("idle connection never closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_accepting_and_waits_for_open_tunnels() {
    let mut fx = fixture().await;
    let client = Client::new(Arc::new(TcpDialer));
    let mut tunnel = client.connect(fx.echo_request()).await.unwrap();
    let trigger = fx.trigger.take().unwrap();
    let drain = tokio::spawn(trigger.drain(WAIT));
    // The open tunnel keeps working during the drain.
    round_trip(&mut tunnel, b"still here").await;
    assert!(!drain.is_finished());
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut rest)).await;
    drop(tunnel);
    let outcome = tokio::time::timeout(WAIT, drain).await.unwrap().unwrap();
    assert_eq!(outcome, DrainOutcome::Complete);
    // New connections are refused once the listener is gone.
    let fresh = Client::new(Arc::new(TcpDialer));
    assert!(fresh.connect(fx.echo_request()).await.is_err());
}

/// Counts its dials, then connects like [`TcpDialer`].
#[derive(Default)]
struct CountingDialer(std::sync::atomic::AtomicUsize);

impl Dialer for CountingDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> futures::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TcpDialer.dial(addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_from_different_origins_never_share_a_connection() {
    let fx = fixture().await;
    let default = Arc::new(CountingDialer::default());
    let client = Client::new(default.clone());
    let pod_a = Arc::new(CountingDialer::default());
    let pod_b = Arc::new(CountingDialer::default());
    let from = |ip: &str, dialer: &Arc<CountingDialer>| {
        let mut request = fx.echo_request();
        request.origin = Some(Origin {
            ip: ip.parse().unwrap(),
            dialer: dialer.clone(),
        });
        request
    };
    let mut a = client.connect(from("10.0.0.1", &pod_a)).await.unwrap();
    let _a2 = client.connect(from("10.0.0.1", &pod_a)).await.unwrap();
    let mut b = client.connect(from("10.0.0.2", &pod_b)).await.unwrap();
    let _node = client.connect(fx.echo_request()).await.unwrap();
    round_trip(&mut a, b"from a").await;
    round_trip(&mut b, b"from b").await;
    let count = |d: &Arc<CountingDialer>| d.0.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        (count(&pod_a), count(&pod_b), count(&default)),
        (1, 1, 1),
        "each origin dials with its own dialer, once"
    );
    assert_eq!(client.pooled_connections(), 3);
}
