//! HBONE client: opens `CONNECT` tunnels over pooled mTLS HTTP/2 connections.
//!
//! Pool key: (source identity, acceptable destination identities, tunnel address, origin
//! address). Tunnels that leave from different addresses ([`Origin`]: a node tunnel dials from
//! inside each source pod, so the peer sees the pod's address) never share a connection. A pooled
//! connection carries at most [`MAX_STREAMS_PER_CONN`] streams; when all are busy a new one is
//! dialled (one dial per key at a time). A connection with no stream for [`POOL_IDLE_TIMEOUT`]
//! is closed; HTTP/2 PINGs detect dead peers.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{uri::Authority, HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::watch};
use tokio_rustls::TlsConnector;

use super::{tunnel::StreamSlot, Tunnel, CONNECT_TIMEOUT, MAX_STREAMS_PER_CONN, POOL_IDLE_TIMEOUT};
use crate::{
    identity::SpiffeId,
    tls::{self, IdentityCert},
};

/// Opens TCP connections for the client (the node injects its socket factory here).
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `addr`.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>>;
}

/// Plain `TcpStream::connect`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(addr))
    }
}

/// Where a tunnel's TCP connection leaves from, when not from the client's own dialer.
#[derive(Clone)]
pub struct Origin {
    /// The source address the dialer connects from.
    pub ip: IpAddr,
    /// Connects from `ip`.
    pub dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("ip", &self.ip).finish()
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// Certificate presented (the source workload's identity).
    pub source: Arc<IdentityCert>,
    /// Identities the server may prove (destination workload, or the waypoint).
    pub destination_identities: Vec<SpiffeId>,
    /// Where the peer tunnel listens (destination `ip:15008`, or the waypoint's).
    pub dial: SocketAddr,
    /// `:authority`: the original destination (or service VIP when sent to a waypoint).
    pub authority: Authority,
    /// Extra headers (`forwarded`, `traceparent`, `baggage`).
    pub headers: HeaderMap,
    /// Where the connection leaves from; `None`: the client's dialer.
    pub origin: Option<Origin>,
}

/// Why a tunnel could not be opened; each variant maps to a distinct operator action.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error(
        "connecting to {addr} failed: {source}, is HBONE port 15008 blocked by a NetworkPolicy?"
    )]
    Dial {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A step did not finish within [`CONNECT_TIMEOUT`].
    #[error("{stage} to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    Timeout {
        addr: SocketAddr,
        stage: &'static str,
    },
    /// TLS handshake failed (untrusted or unexpected peer, expired certificate, ...).
    #[error("tls handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The peer's identity or ALPN was unacceptable.
    #[error("peer {addr}: {source}")]
    Peer {
        addr: SocketAddr,
        #[source]
        source: tls::TlsError,
    },
    /// HTTP/2 failed.
    #[error("http/2 with {addr} failed: {source}")]
    Http2 {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// 401: the destination's policy denied the connection.
    #[error("connect to {authority} denied by destination policy (401)")]
    Denied { authority: String },
    /// 400: the destination rejected the request or authority.
    #[error("connect to {authority} rejected as bad request (400)")]
    BadRequest { authority: String },
    /// 503: the destination could not reach the workload.
    #[error("destination could not reach {authority} (503)")]
    Unavailable { authority: String },
    /// Any other status.
    #[error("connect to {authority} answered unexpected status {status}")]
    Status { authority: String, status: u16 },
    /// The request could not be built.
    #[error("invalid connect request: {0}")]
    Request(#[from] http::Error),
}

/// A sender on a pooled connection plus the stream slot reserved on it.
type Stream = (SendRequest<Empty<Bytes>>, StreamSlot);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    destinations: Vec<SpiffeId>,
    dial: SocketAddr,
    origin: Option<IpAddr>,
}

struct PooledConn {
    id: u64,
    send: SendRequest<Empty<Bytes>>,
    active: Arc<watch::Sender<usize>>,
}

#[derive(Default)]
struct Entry {
    conns: Vec<PooledConn>,
    dialing: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    pool: Mutex<HashMap<PoolKey, Entry>>,
    next_id: AtomicU64,
}

/// The HBONE client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    dialer: Arc<dyn Dialer>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pooled_connections", &self.pooled_connections())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client dialling through `dialer`.
    pub fn new(dialer: Arc<dyn Dialer>) -> Self {
        Self::with_idle_timeout(dialer, POOL_IDLE_TIMEOUT)
    }

    /// [`Client::new`] with another pool idle timeout (tests).
    pub fn with_idle_timeout(dialer: Arc<dyn Dialer>, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            dialer,
            idle_timeout,
        }
    }

    /// Live pooled connections, over all keys.
    pub fn pooled_connections(&self) -> usize {
        lock(&self.inner.pool).values().map(|e| e.conns.len()).sum()
    }

    /// Pool keys currently tracked (with or without a live connection).
    pub fn pool_keys(&self) -> usize {
        lock(&self.inner.pool).len()
    }

    /// Opens a tunnel: reuses a pooled connection with a free stream or dials a new one.
    pub async fn connect(&self, request: OutboundRequest) -> Result<Tunnel, ClientError> {
        let key = PoolKey {
            source: request.source.identity().clone(),
            destinations: request.destination_identities.clone(),
            dial: request.dial,
            origin: request.origin.as_ref().map(|o| o.ip),
        };
        let (send, slot) = match self.checkout(&key) {
            Ok(found) => found,
            Err(dialing) => self.dial_once(&request, key, dialing).await?,
        };
        send_connect(send, slot, &request).await
    }

    /// Dials under the key's lock, so concurrent callers wait and then reuse one connection.
    async fn dial_once(
        &self,
        request: &OutboundRequest,
        key: PoolKey,
        dialing: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Stream, ClientError> {
        let wait = tokio::time::timeout(CONNECT_TIMEOUT, dialing.lock_owned());
        let guard = wait.await.map_err(|_| ClientError::Timeout {
            addr: request.dial,
            stage: "waiting for pooled connection",
        })?;
        if let Ok(found) = self.checkout(&key) {
            return Ok(found);
        }
        let opened = self.open(request, key.clone()).await;
        drop(guard);
        if opened.is_err() {
            // Do not keep an empty pool entry per unreachable destination.
            forget_if_unused(&self.inner, &key);
        }
        opened
    }

    /// A free stream on a pooled connection, or the key's dial lock.
    fn checkout(&self, key: &PoolKey) -> Result<Stream, Arc<tokio::sync::Mutex<()>>> {
        let mut pool = lock(&self.inner.pool);
        let entry = pool.entry(key.clone()).or_default();
        entry.conns.retain(|c| !c.send.is_closed());
        for conn in &entry.conns {
            if *conn.active.borrow() < MAX_STREAMS_PER_CONN {
                conn.active.send_modify(|n| *n += 1);
                return Ok((conn.send.clone(), StreamSlot(conn.active.clone())));
            }
        }
        Err(entry.dialing.clone())
    }

    async fn open(&self, request: &OutboundRequest, key: PoolKey) -> Result<Stream, ClientError> {
        let addr = request.dial;
        let timeout = |stage| move |_| ClientError::Timeout { addr, stage };
        let dialer = request.origin.as_ref().map_or(&self.dialer, |o| &o.dialer);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dialer.dial(addr))
            .await
            .map_err(timeout("tcp connect"))?
            .map_err(|source| ClientError::Dial { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let config = tls::client_config(
            request.source.clone(),
            request.destination_identities.clone(),
        )
        .map_err(|source| ClientError::Peer { addr, source })?;
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(timeout("tls handshake"))?
        .map_err(|source| ClientError::Tls { addr, source })?;
        tls::peer_identity(tls.get_ref().1).map_err(|source| ClientError::Peer { addr, source })?;
        let (send, conn) = http2_builder()
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ClientError::Http2 { addr, source })?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let active = Arc::new(watch::Sender::new(1));
        let pooled = PooledConn {
            id,
            send: send.clone(),
            active: active.clone(),
        };
        lock(&self.inner.pool)
            .entry(key.clone())
            .or_default()
            .conns
            .push(pooled);
        tokio::spawn(drive(
            conn,
            Arc::downgrade(&self.inner),
            key,
            id,
            active.clone(),
            self.idle_timeout,
        ));
        tracing::debug!(%addr, id, "hbone connection opened");
        Ok((send, StreamSlot(active)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool holds no invariants a panicking holder could break half-way.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn http2_builder() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME_SIZE)
        .keep_alive_interval(super::PING_INTERVAL)
        .keep_alive_timeout(super::PING_TIMEOUT)
        .keep_alive_while_idle(true);
    builder
}

type Connection = hyper::client::conn::http2::Connection<
    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Empty<Bytes>,
    TokioExecutor,
>;

/// Runs one pooled connection until it fails or stays idle for `idle`.
async fn drive(
    conn: Connection,
    pool: Weak<Inner>,
    key: PoolKey,
    id: u64,
    active: Arc<watch::Sender<usize>>,
    idle: Duration,
) {
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(%error, dial = %key.dial, id, "hbone connection failed");
            }
        }
        _ = idle_expired(&pool, &key, id, &active, idle) => {
            tracing::debug!(dial = %key.dial, id, "hbone connection idle, closing");
        }
    }
    if let Some(inner) = pool.upgrade() {
        retire(&inner, &key, id);
    }
}

/// Resolves once the connection had no stream for `idle` and has been removed from the pool.
async fn idle_expired(
    pool: &Weak<Inner>,
    key: &PoolKey,
    id: u64,
    active: &watch::Sender<usize>,
    idle: Duration,
) {
    let mut rx = active.subscribe();
    loop {
        if rx.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        if tokio::time::timeout(idle, rx.wait_for(|n| *n > 0))
            .await
            .is_ok()
        {
            continue;
        }
        // Re-check under the pool lock so a concurrent checkout cannot pick a closing connection.
        let Some(inner) = pool.upgrade() else { return };
        let mut guard = lock(&inner.pool);
        if *active.borrow() == 0 {
            if let Some(entry) = guard.get_mut(key) {
                entry.conns.retain(|c| c.id != id);
            }
            return;
        }
    }
}

/// Removes `key`'s entry when it has no connection and nobody waits to dial it.
fn forget_if_unused(inner: &Inner, key: &PoolKey) {
    let mut pool = lock(&inner.pool);
    if pool
        .get(key)
        .is_some_and(|e| e.conns.is_empty() && Arc::strong_count(&e.dialing) == 1)
    {
        pool.remove(key);
    }
}

fn retire(inner: &Inner, key: &PoolKey, id: u64) {
    let mut pool = lock(&inner.pool);
    if let Some(entry) = pool.get_mut(key) {
        entry.conns.retain(|c| c.id != id);
        if entry.conns.is_empty() && Arc::strong_count(&entry.dialing) == 1 {
            pool.remove(key);
        }
    }
}

async fn send_connect(
    mut send: SendRequest<Empty<Bytes>>,
    slot: StreamSlot,
    request: &OutboundRequest,
) -> Result<Tunnel, ClientError> {
    let addr = request.dial;
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .uri(Uri::from(request.authority.clone()))
        .body(Empty::new())?;
    *connect.headers_mut() = request.headers.clone();
    let response = tokio::time::timeout(CONNECT_TIMEOUT, send.send_request(connect))
        .await
        .map_err(|_| ClientError::Timeout {
            addr,
            stage: "connect response",
        })?
        .map_err(|source| ClientError::Http2 { addr, source })?;
    let authority = request.authority.to_string();
    match response.status() {
        StatusCode::OK => {
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|source| ClientError::Http2 { addr, source })?;
            Ok(Tunnel::new(upgraded, Some(slot)))
        }
        StatusCode::UNAUTHORIZED => Err(ClientError::Denied { authority }),
        StatusCode::BAD_REQUEST => Err(ClientError::BadRequest { authority }),
        StatusCode::SERVICE_UNAVAILABLE => Err(ClientError::Unavailable { authority }),
        other => Err(ClientError::Status {
            authority,
            status: other.as_u16(),
        }),
    }
}
