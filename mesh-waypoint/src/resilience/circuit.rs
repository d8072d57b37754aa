//! Circuit breaking (Istio `ConnectionPoolSettings`): caps on concurrent requests, on requests
//! waiting for a slot, and on upstream connections. Over a cap, the request fails at once with
//! 503 and response flag `UO` instead of queueing without bound.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response, Uri};
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use mesh_core::hbone::Tunnel;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower::{Layer, Service};

use crate::{
    body::{self, Body, BoxError},
    config::ConnectionPoolConfig,
    proxy::ProxyError,
    upstream::HboneConnector,
};

/// Errors from the breaker.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CircuitError {
    /// Too many requests in flight and waiting.
    #[error("circuit open: {in_flight} requests in flight and {pending} pending (limits reached)")]
    Requests { in_flight: usize, pending: usize },
    /// The upstream connection cap is reached.
    #[error("circuit open: {limit} upstream connections in use")]
    Connections { limit: usize },
}

/// Request caps for one destination, shared by all requests to it.
#[derive(Debug)]
pub struct CircuitBreaker {
    requests: Arc<Semaphore>,
    max_requests: usize,
    pending: AtomicUsize,
    max_pending: usize,
    max_wait: Duration,
}

impl CircuitBreaker {
    /// From configuration.
    pub fn new(config: &ConnectionPoolConfig) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(config.max_requests)),
            max_requests: config.max_requests,
            pending: AtomicUsize::new(0),
            max_pending: config.max_pending_requests,
            max_wait: config.connect_timeout.0,
        }
    }

    /// Takes a request slot: at once if free, else waits (at most `connect_timeout`) when the
    /// pending queue has room, else fails.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, CircuitError> {
        if let Ok(permit) = self.requests.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let overflow = || CircuitError::Requests {
            in_flight: self.max_requests,
            pending: self.max_pending,
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(overflow());
        }
        let waited =
            tokio::time::timeout(self.max_wait, self.requests.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(overflow()),
        }
    }
}

/// Tower layer that holds a request slot of a [`CircuitBreaker`] for the whole exchange,
/// response body included.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    /// Wraps services with `breaker`.
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// See [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for CircuitBreakerService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let breaker = self.breaker.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let permit = breaker.acquire().await.map_err(ProxyError::Overflow)?;
            let response = tower::ServiceExt::oneshot(inner, req).await?;
            Ok(response.map(|b| body::with_guard(b, permit)))
        })
    }
}

/// How a [`LimitedConnector`] reaches an endpoint.
#[derive(Debug, Clone)]
enum Inner {
    /// Plain TCP.
    Tcp(HttpConnector),
    /// An HBONE tunnel to the endpoint's node (feed mode).
    Hbone(HboneConnector),
}

/// A connector (plain TCP or HBONE) that refuses to open more than `max_connections` at once.
#[derive(Debug, Clone)]
pub struct LimitedConnector {
    inner: Inner,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl LimitedConnector {
    /// Caps `inner` at `limit` live connections.
    pub fn new(inner: HttpConnector, limit: usize) -> Self {
        Self::with_inner(Inner::Tcp(inner), limit)
    }

    /// Caps HBONE tunnels opened by `inner` at `limit`.
    pub fn hbone(inner: HboneConnector, limit: usize) -> Self {
        Self::with_inner(Inner::Hbone(inner), limit)
    }

    fn with_inner(inner: Inner, limit: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl Service<Uri> for LimitedConnector {
    type Response = TokioIo<CountedStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.inner {
            Inner::Tcp(tcp) => tcp.poll_ready(cx).map_err(Into::into),
            Inner::Hbone(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let slot = self.slots.clone().try_acquire_owned();
        let limit = self.limit;
        let connecting: BoxFuture<Result<Stream, BoxError>> = match &mut self.inner {
            Inner::Tcp(tcp) => {
                let connecting = tcp.call(dst);
                Box::pin(async move { Ok(Stream::Tcp(connecting.await?.into_inner())) })
            }
            Inner::Hbone(hbone) => {
                let connecting = hbone.clone().connect(dst);
                Box::pin(async move { Ok(Stream::Tunnel(Box::new(connecting.await?))) })
            }
        };
        Box::pin(async move {
            let slot = slot.map_err(|_| CircuitError::Connections { limit })?;
            let io = connecting.await?;
            Ok(TokioIo::new(CountedStream { io, _slot: slot }))
        })
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Tunnel(Box<Tunnel>),
}

impl Stream {
    fn io(self: Pin<&mut Self>) -> Pin<&mut (dyn Io + 'static)> {
        match self.get_mut() {
            Stream::Tcp(tcp) => Pin::new(tcp),
            Stream::Tunnel(tunnel) => Pin::new(tunnel.as_mut()),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An upstream connection that frees its connection slot when closed.
#[derive(Debug)]
pub struct CountedStream {
    io: Stream,
    _slot: OwnedSemaphorePermit,
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        match &self.io {
            Stream::Tcp(tcp) => tcp.connected(),
            Stream::Tunnel(_) => Connected::new(),
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).io().poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).io().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).io().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).io().poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).io().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Whether an upstream client error was caused by the connection cap.
pub fn is_connection_limit(err: &(dyn std::error::Error + 'static)) -> Option<CircuitError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CircuitError>() {
            return Some(c.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn breaker(max_requests: usize, max_pending: usize) -> CircuitBreaker {
        CircuitBreaker::new(&ConnectionPoolConfig {
            max_requests,
            max_pending_requests: max_pending,
            connect_timeout: HumanDuration(Duration::from_secs(1)),
            ..ConnectionPoolConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_caps_fails_fast() {
        let b = breaker(1, 0);
        let held = b.acquire().await.expect("first slot");
        assert_eq!(
            b.acquire().await.expect_err("no pending room"),
            CircuitError::Requests {
                in_flight: 1,
                pending: 0
            }
        );
        drop(held);
        assert!(b.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_waits_then_times_out() {
        let b = Arc::new(breaker(1, 1));
        let held = b.acquire().await.expect("first slot");
        // One waiter fits in the queue; it gives up after connect_timeout.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        // The queue is full now: a second waiter fails at once.
        assert!(b.acquire().await.is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(waiter.await.expect("join").is_err());
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_waiter_gets_a_freed_slot() {
        let b = Arc::new(breaker(1, 1));
        let held = b.acquire().await.expect("first slot");
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_millis(10), waiter).await;
        assert!(matches!(got, Ok(Ok(Ok(())))));
    }

    #[tokio::test]
    async fn connector_caps_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut c = LimitedConnector::new(HttpConnector::new(), 1);
        let uri: Uri = format!("http://{addr}/").parse().expect("uri");
        let first = c.call(uri.clone()).await.expect("first connection");
        let err = c.call(uri.clone()).await.expect_err("over the cap");
        assert_eq!(
            is_connection_limit(err.as_ref()),
            Some(CircuitError::Connections { limit: 1 })
        );
        drop(first);
        assert!(c.call(uri).await.is_ok());
        accept.abort();
    }
}
