//! Serving downstream HTTP on any byte stream (a TCP connection or an HBONE `CONNECT` stream):
//! HTTP/1.1 and h2c autodetected, under a drain watch, with the proxy that is current when each
//! request starts. Swapping the configuration never touches requests already in flight: they
//! hold their own `Arc` of the proxy they started with.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use mesh_core::drain::DrainWatch;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::{Peer, Proxy};

/// The proxy in force, swapped atomically on every applied configuration.
pub type SharedProxy = Arc<ArcSwap<Proxy>>;

/// The downstream HTTP server settings shared by every listener.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves one downstream connection until it ends or, after the drain starts, until its
/// in-flight requests finish (graceful shutdown).
pub async fn serve_http<I>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    peer: Peer,
    proxy: SharedProxy,
    mut drain: DrainWatch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = service_fn(move |req| proxy.load_full().handle(req, peer.clone()));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "downstream connection ended with error");
    }
}
