//! Serving downstream HTTP on any byte stream (a TCP connection or an HBONE `CONNECT` stream):
//! HTTP/1.1 and h2c autodetected, under a drain watch, with the proxy that is current when each
//! request starts. Swapping the configuration never touches requests already in flight: they
//! hold their own `Arc` of the proxy they started with. [`accept_loop`] is every TCP
//! listener's accept loop, with its connection cap.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use mesh_core::drain::DrainWatch;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    app::MAX_DOWNSTREAM_CONNECTIONS,
    proxy::{Peer, Proxy},
};

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

/// Accepts connections on `listener` until the drain starts and runs `serve` for each, with at
/// most [`MAX_DOWNSTREAM_CONNECTIONS`] at once (a connection holds its slot until `serve`
/// ends). `name` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    mut drain: DrainWatch,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_DOWNSTREAM_CONNECTIONS));
    loop {
        // At the cap, stop accepting: new connections wait in the kernel backlog.
        let slot = tokio::select! {
            _ = drain.signaled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let conn = serve(stream, addr);
                tokio::spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
            Err(error) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = name, "listener closed for drain");
}
