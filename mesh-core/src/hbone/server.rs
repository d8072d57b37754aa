//! HBONE server: accepts mTLS connections and `CONNECT` streams, asks a handler what to do
//! with each stream, answers 200/400/401/503 and serves accepted streams.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;

use super::{authority, copy_bidirectional, Tunnel, CONNECT_TIMEOUT};
use crate::{drain::DrainWatch, identity::SpiffeId, tls};

/// Connections served at once per server; beyond this new connections are closed.
pub const MAX_CONNECTIONS: usize = 16_384;

/// Errors that end one server-side connection (logged, never fatal to the listener).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No certificate for the connection's destination.
    #[error(
        "no server certificate for connection from {peer}, is the destination a local workload?"
    )]
    NoCertificate { peer: SocketAddr },
    /// TLS handshake failed.
    #[error("tls handshake with {peer} failed: {source}")]
    Handshake {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TLS handshake did not finish in time.
    #[error("tls handshake with {peer} timed out after {CONNECT_TIMEOUT:?}")]
    HandshakeTimeout { peer: SocketAddr },
    /// The peer's identity could not be established.
    #[error("peer {peer} identity: {source}")]
    PeerIdentity {
        peer: SocketAddr,
        #[source]
        source: tls::TlsError,
    },
    /// HTTP/2 failed on the connection.
    #[error("http/2 with {peer} failed: {source}")]
    Http2 {
        peer: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// One `CONNECT` as seen by a handler.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Validated `:authority` (the original destination).
    pub authority: SocketAddr,
    /// Verified identity of the peer tunnel.
    pub peer_identity: SpiffeId,
    /// Network address of the peer tunnel.
    pub peer_addr: SocketAddr,
    /// Request headers (`forwarded`, `traceparent`, `baggage`, ...).
    pub headers: HeaderMap,
}

/// Why a `CONNECT` was refused; maps to the response status in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed request, or the authority is not a destination this server serves (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Denied by authorization policy (401).
    #[error("denied by policy: {0}")]
    Unauthorized(String),
    /// The upstream could not be reached (503).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

impl Rejection {
    /// The HTTP status sent for this rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

type ServeFn = Box<dyn FnOnce(Tunnel) -> BoxFuture<'static, ()> + Send>;

/// An accepted `CONNECT`: what to do with the stream once the 200 is sent.
pub struct Accepted(ServeFn);

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").finish_non_exhaustive()
    }
}

impl Accepted {
    /// Serves the stream with `serve` (e.g. a waypoint's HTTP processing).
    pub fn new<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(Tunnel) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Box::new(move |tunnel| Box::pin(serve(tunnel))))
    }

    /// Copies the stream to and from an already connected `upstream`.
    pub fn proxy<S>(mut upstream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::new(move |mut tunnel| async move {
            if let Err(error) = copy_bidirectional(&mut tunnel, &mut upstream).await {
                tracing::debug!(%error, "inbound tunnel copy ended with error");
            }
        })
    }
}

/// Decides on each `CONNECT`. Implemented for closures returning such a future.
pub trait ConnectHandler: Send + Sync + 'static {
    /// Accepts (returning how to serve the stream) or rejects the request.
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Result<Accepted, Rejection>>;
}

impl<F, Fut> ConnectHandler for F
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Accepted, Rejection>> + Send + 'static,
{
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        Box::pin(self(request))
    }
}

/// Picks the TLS config (and so the certificate) for an accepted TCP connection, usually by
/// its original destination; `None` closes the connection.
pub trait ServerCertSelector: Send + Sync + 'static {
    /// The config to handshake `stream` with.
    fn select(&self, stream: &TcpStream) -> Option<Arc<rustls::ServerConfig>>;
}

/// A single identity serves every connection (e.g. a waypoint).
impl ServerCertSelector for Arc<rustls::ServerConfig> {
    fn select(&self, _stream: &TcpStream) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.clone())
    }
}

/// The HBONE server. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    selector: Arc<dyn ServerCertSelector>,
    handler: Arc<dyn ConnectHandler>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("free_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server using `selector` for certificates and `handler` for requests.
    pub fn new(selector: Arc<dyn ServerCertSelector>, handler: Arc<dyn ConnectHandler>) -> Self {
        Self {
            selector,
            handler,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// Accepts connections until `drain` starts; each connection then finishes its streams
    /// (GOAWAY) under its own clone of the drain watch.
    pub async fn serve(self, listener: TcpListener, mut drain: DrainWatch) {
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_connection(stream, peer, drain.clone()),
                Err(error) => tracing::warn!(%error, "hbone accept failed"),
            }
        }
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, drain: DrainWatch) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "hbone connection limit reached, closing");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.serve_connection(stream, peer, drain).await {
                tracing::debug!(%error, "hbone connection ended");
            }
            drop(permit);
        });
    }

    /// Serves one accepted TCP connection: TLS, then HTTP/2 `CONNECT` streams.
    pub async fn serve_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut drain: DrainWatch,
    ) -> Result<(), ServerError> {
        set_nodelay(&stream, peer);
        let config = self
            .selector
            .select(&stream)
            .ok_or(ServerError::NoCertificate { peer })?;
        let handshake = TlsAcceptor::from(config).accept(stream);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| ServerError::HandshakeTimeout { peer })?
            .map_err(|source| ServerError::Handshake { peer, source })?;
        let peer_identity = tls::peer_identity(tls.get_ref().1)
            .map_err(|source| ServerError::PeerIdentity { peer, source })?;
        let this = self.clone();
        let stream_drain = drain.clone();
        let service = service_fn(move |request| {
            let ctx = StreamContext {
                peer_identity: peer_identity.clone(),
                peer_addr: peer,
                drain: stream_drain.clone(),
            };
            let handler = this.handler.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(request, ctx, handler).await) }
        });
        let conn = http2_builder().serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        result.map_err(|source| ServerError::Http2 { peer, source })
    }
}

/// Turns Nagle's algorithm off. Streams carry request/response traffic whose last bytes (a short
/// DATA frame, END_STREAM) are small writes; with Nagle each waits for the peer to ACK the
/// previous segment, and a delayed ACK holds it up to 40 ms (Linux `TCP_DELACK_MIN`) per
/// request. The client side sets the same option on the connections it dials.
fn set_nodelay(stream: &TcpStream, peer: SocketAddr) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "hbone connection: setting TCP_NODELAY failed");
    }
}

fn http2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME_SIZE)
        .max_concurrent_streams(super::MAX_STREAMS_PER_CONN as u32)
        .keep_alive_interval(super::PING_INTERVAL)
        .keep_alive_timeout(super::PING_TIMEOUT);
    builder
}

struct StreamContext {
    peer_identity: SpiffeId,
    peer_addr: SocketAddr,
    drain: DrainWatch,
}

async fn handle(
    mut request: Request<Incoming>,
    ctx: StreamContext,
    handler: Arc<dyn ConnectHandler>,
) -> Response<Empty<Bytes>> {
    let connect = match validate(&request, &ctx) {
        Ok(connect) => connect,
        Err(rejection) => return reject(rejection),
    };
    let authority = connect.authority;
    let decision = tokio::time::timeout(CONNECT_TIMEOUT, handler.connect(connect)).await;
    let accepted = match decision {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(rejection)) => return reject(rejection),
        Err(_) => {
            return reject(Rejection::Unavailable(format!(
                "{authority}: handler timed out"
            )))
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let drain = ctx.drain;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => (accepted.0)(Tunnel::new(upgraded, None)).await,
            Err(error) => tracing::debug!(%error, %authority, "connect stream never upgraded"),
        }
        drop(drain);
    });
    status(StatusCode::OK)
}

fn validate(request: &Request<Incoming>, ctx: &StreamContext) -> Result<ConnectRequest, Rejection> {
    if request.method() != Method::CONNECT {
        return Err(Rejection::BadRequest(format!(
            "method {} is not CONNECT",
            request.method()
        )));
    }
    let raw = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .ok_or_else(|| Rejection::BadRequest("missing :authority".into()))?;
    let authority = authority::parse(raw).map_err(|e| Rejection::BadRequest(e.to_string()))?;
    Ok(ConnectRequest {
        authority,
        peer_identity: ctx.peer_identity.clone(),
        peer_addr: ctx.peer_addr,
        headers: request.headers().clone(),
    })
}

fn reject(rejection: Rejection) -> Response<Empty<Bytes>> {
    tracing::debug!(%rejection, "connect rejected");
    status(rejection.status())
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}
