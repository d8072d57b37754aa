//! Wiring: bind the listeners through a socket factory, run the proxy under a drain watch, and
//! hand back a [`Bound`] with the real addresses so tests run the whole waypoint on port 0.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use mesh_core::{
    drain::{self, DrainOutcome, DrainTrigger, DrainWatch},
    ops::{self, OpsRoutes, Readiness},
};
use prometheus_client::registry::Registry;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    config::WaypointConfig,
    proxy::{BuildError, Peer, Proxy},
    rng::{SharedRng, ThreadRandom},
    telemetry::Metrics,
};

/// Makes listening sockets; tests and network-namespace entry decorate it.
pub trait SocketFactory: Send + Sync {
    /// Binds a TCP listener.
    fn tcp_listener(&self, addr: SocketAddr) -> io::Result<TcpListener>;
}

/// Binds in the current network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultSocketFactory;

impl SocketFactory for DefaultSocketFactory {
    fn tcp_listener(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }
}

/// Everything `build` needs.
pub struct AppConfig {
    /// Proxy listener address.
    pub listen: SocketAddr,
    /// Metrics and readiness listener (`/metrics`, `/stats/prometheus`, `/healthz/ready`);
    /// none disables it.
    pub metrics: Option<SocketAddr>,
    /// Routes, destinations, policies.
    pub waypoint: WaypointConfig,
    /// Socket factory.
    pub sockets: Arc<dyn SocketFactory>,
    /// Random source (deterministic in tests).
    pub rng: SharedRng,
}

impl AppConfig {
    /// Production defaults for everything but the addresses and routes.
    pub fn new(listen: SocketAddr, waypoint: WaypointConfig) -> Self {
        Self {
            listen,
            metrics: None,
            waypoint,
            sockets: Arc::new(DefaultSocketFactory),
            rng: Arc::new(ThreadRandom),
        }
    }
}

/// Errors starting the waypoint.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration does not compile.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}; is the port in use?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A running waypoint.
#[derive(Debug)]
pub struct Bound {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where metrics are served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    drain: DrainTrigger,
}

impl Bound {
    /// Stops accepting, lets in-flight requests finish, and waits up to `deadline`.
    pub async fn shutdown(self, deadline: Duration) -> DrainOutcome {
        self.drain.drain(deadline).await
    }
}

/// Binds and starts the waypoint.
pub async fn build(config: AppConfig) -> Result<Bound, AppError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let proxy = Arc::new(Proxy::new(&config.waypoint, config.rng.clone(), metrics)?);
    let (listener, proxy_addr) = bind(config.sockets.as_ref(), config.listen)?;
    let (trigger, watch) = drain::channel();
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (ops_listener, bound) = bind(config.sockets.as_ref(), addr)?;
            let readiness = Readiness::default();
            let routes = OpsRoutes::default()
                .metrics(Arc::new(registry))
                .readiness(readiness.clone());
            tokio::spawn(ops::serve(ops_listener, routes, trigger.watch()));
            readiness.set(true);
            Some(bound)
        }
        None => None,
    };
    tokio::spawn(accept_loop(listener, proxy, watch));
    tracing::info!(%proxy_addr, ?metrics_addr, "waypoint listening");
    Ok(Bound {
        proxy_addr,
        metrics_addr,
        drain: trigger,
    })
}

fn bind(
    sockets: &dyn SocketFactory,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), AppError> {
    let err = |source| AppError::Bind { addr, source };
    let listener = sockets.tcp_listener(addr).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Downstream connections served at once; each costs a task and hyper's buffers.
pub const MAX_DOWNSTREAM_CONNECTIONS: usize = 16 * 1024;

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, mut drain: DrainWatch) {
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
        tokio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = serve_connection(builder.clone(), stream, peer, proxy.clone(), drain.clone());
                    tokio::spawn(async move {
                        conn.await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("proxy listener closed for drain");
}

async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    mut drain: DrainWatch,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let peer = Peer {
            addr: peer,
            identity: None,
        };
        proxy.clone().handle(req, peer)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with error");
    }
}
