//! Wiring: bind the listeners through a socket factory, run the proxy under a drain watch, and
//! hand back a [`Bound`] with the real addresses so tests run the whole waypoint on port 0.
//!
//! Static mode: the YAML config on a plain HTTP listener. Feed mode ([`AppConfig::feed`]): the
//! config follows mesh-control's `WaypointFeed`; with [`AppConfig::hbone`] the waypoint accepts
//! HBONE from nodes and reaches endpoints over HBONE with its own certificate.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use mesh_core::{
    drain::{self, DrainOutcome, DrainTrigger, DrainWatch},
    hbone::{self, TcpDialer},
    identity::CertificateSource,
    ops::{self, OpsRoutes, Readiness},
    tls::{IdentityCert, TlsError},
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::WaypointConfig,
    feed::{self, FeedClientConfig, FeedStatus, Reloader, WaypointName},
    inbound,
    ingress_tls::{self, IngressTls, IngressTlsError},
    proxy::{BuildError, Peer, Proxy},
    rng::{SharedRng, ThreadRandom},
    serve::{accept_loop, http_builder, serve_http, SharedProxy},
    telemetry::{
        otlp::{self, OtlpConfig, OtlpError},
        Metrics,
    },
    upstream::{self, HboneUpstream, Transport, HBONE_PORT},
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

/// HBONE front end and upstream (feed mode).
pub struct HboneConfig {
    /// Where HBONE is accepted (`0.0.0.0:15008`).
    pub listen: SocketAddr,
    /// The waypoint's own certificate (`spiffe://<td>/ns/<ns>/sa/<sa>`), presented both ways.
    pub cert: Arc<IdentityCert>,
    /// Renews `cert` at half-life when set.
    pub rotation: Option<Arc<dyn CertificateSource>>,
    /// Port of the node tunnels' HBONE listener on endpoints ([`HBONE_PORT`]).
    pub upstream_port: u16,
    /// The waypoint's own name, sent as `baggage` on upstream `CONNECT`s; none sends none.
    pub workload: Option<WaypointName>,
}

impl HboneConfig {
    /// Production defaults: upstream HBONE port 15008, no rotation.
    pub fn new(listen: SocketAddr, cert: Arc<IdentityCert>) -> Self {
        Self {
            listen,
            cert,
            rotation: None,
            upstream_port: HBONE_PORT,
            workload: None,
        }
    }
}

/// Everything `build` needs.
pub struct AppConfig {
    /// Plain HTTP proxy listener; none disables it (feed mode behind HBONE).
    pub listen: Option<SocketAddr>,
    /// HTTPS ingress listener, certificates from the feed's `tls_credentials` (feed mode); none
    /// disables it.
    pub tls_listen: Option<SocketAddr>,
    /// Metrics and readiness listener (`/metrics`, `/stats/prometheus`, `/healthz/ready`);
    /// none disables it.
    pub metrics: Option<SocketAddr>,
    /// Routes, destinations, policies (static mode; the initial, empty config in feed mode).
    pub waypoint: WaypointConfig,
    /// Follow mesh-control's waypoint feed.
    pub feed: Option<FeedClientConfig>,
    /// Accept HBONE and reach endpoints over HBONE.
    pub hbone: Option<HboneConfig>,
    /// Socket factory.
    pub sockets: Arc<dyn SocketFactory>,
    /// Random source (deterministic in tests).
    pub rng: SharedRng,
    /// Export a span per sampled request over OTLP/gRPC; none disables it.
    pub otlp: Option<OtlpConfig>,
    /// Proxies in front of the ingress listeners whose `X-Forwarded-For` entries are believed
    /// for `remoteIpBlocks` (Istio `numTrustedProxies`); 0: the peer address is the client.
    pub trusted_proxy_hops: u32,
}

impl AppConfig {
    /// Static mode on a plain listener with production defaults.
    pub fn new(listen: SocketAddr, waypoint: WaypointConfig) -> Self {
        Self {
            listen: Some(listen),
            tls_listen: None,
            metrics: None,
            waypoint,
            feed: None,
            hbone: None,
            sockets: Arc::new(DefaultSocketFactory),
            rng: Arc::new(ThreadRandom),
            otlp: None,
            trusted_proxy_hops: 0,
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
    /// The waypoint certificate cannot be used for TLS.
    #[error("hbone tls set-up failed: {0}")]
    Tls(#[from] TlsError),
    /// The OTLP exporter cannot be set up.
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    /// The HTTPS ingress listener cannot be set up.
    #[error(transparent)]
    IngressTls(#[from] IngressTlsError),
}

/// A running waypoint.
#[derive(Debug)]
pub struct Bound {
    /// Where the plain HTTP proxy listens, when enabled.
    pub proxy_addr: Option<SocketAddr>,
    /// Where the HTTPS ingress listener listens, when enabled.
    pub tls_addr: Option<SocketAddr>,
    /// Where HBONE is accepted, when enabled.
    pub hbone_addr: Option<SocketAddr>,
    /// Where metrics are served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The feed subscription's state (feed mode).
    pub feed_status: Option<watch::Receiver<FeedStatus>>,
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
    let (trigger, watch) = drain::channel();
    let metrics = metrics(&mut registry, config.otlp.as_ref(), &watch)?;
    let ingress_tls = match config.tls_listen {
        Some(_) => {
            let mut tls = IngressTls::new(&mut registry)?;
            tls.trusted_proxy_hops = config.trusted_proxy_hops;
            Some(tls)
        }
        None => None,
    };
    let transport = transport(config.hbone.as_ref());
    let proxy = Proxy::with_transport(
        &config.waypoint,
        config.rng.clone(),
        metrics.clone(),
        &transport,
    )?;
    let proxy: SharedProxy = Arc::new(ArcSwap::from_pointee(proxy));
    tokio::spawn(mesh_core::memory::trim_periodically(watch.clone()));
    let sockets = config.sockets.as_ref();
    let readiness = Readiness::default();
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (ops_listener, bound) = bind(sockets, addr)?;
            let routes = OpsRoutes::default()
                .metrics(Arc::new(registry))
                .readiness(readiness.clone());
            tokio::spawn(ops::serve(ops_listener, routes, trigger.watch()));
            Some(bound)
        }
        None => None,
    };
    let proxy_addr = match config.listen {
        Some(addr) => {
            let (listener, bound) = bind(sockets, addr)?;
            let hops = config.trusted_proxy_hops;
            tokio::spawn(accept_plain(listener, proxy.clone(), watch.clone(), hops));
            Some(bound)
        }
        None => None,
    };
    let tls_addr = match (config.tls_listen, &ingress_tls) {
        (Some(addr), Some(tls)) => {
            let (listener, bound) = bind(sockets, addr)?;
            let serve = ingress_tls::serve(listener, tls.clone(), proxy.clone(), watch.clone());
            tokio::spawn(serve);
            Some(bound)
        }
        _ => None,
    };
    let hbone_addr = match config.hbone {
        Some(hbone) => Some(start_hbone(hbone, sockets, &proxy, &watch)?),
        None => None,
    };
    let feed_status = match config.feed {
        Some(feed) => {
            let reloader = Reloader {
                proxy: proxy.clone(),
                rng: config.rng.clone(),
                metrics,
                transport,
                me: WaypointName {
                    namespace: feed.namespace.clone(),
                    name: feed.name.clone(),
                },
                readiness: Some(readiness.clone()),
                tls: ingress_tls.map(|t| t.resolver),
            };
            Some(start_feed(feed, reloader, watch))
        }
        None => {
            readiness.set(true);
            None
        }
    };
    tracing::info!(
        ?proxy_addr,
        ?tls_addr,
        ?hbone_addr,
        ?metrics_addr,
        "waypoint listening"
    );
    Ok(Bound {
        proxy_addr,
        tls_addr,
        hbone_addr,
        metrics_addr,
        feed_status,
        drain: trigger,
    })
}

/// Request metrics, with the OTLP exporter's sink when configured.
fn metrics(
    registry: &mut Registry,
    otlp: Option<&OtlpConfig>,
    drain: &DrainWatch,
) -> Result<Arc<Metrics>, AppError> {
    let metrics = Metrics::new(registry);
    let Some(config) = otlp else {
        return Ok(Arc::new(metrics));
    };
    let sink = otlp::start(config, registry, drain.clone())?;
    tracing::info!(endpoint = %config.endpoint, service = %config.service_name, "otlp span export on");
    Ok(Arc::new(metrics.with_spans(sink)))
}

fn transport(hbone: Option<&HboneConfig>) -> Transport {
    match hbone {
        Some(h) => Transport::Hbone(HboneUpstream {
            client: hbone::Client::new(Arc::new(TcpDialer)),
            cert: h.cert.clone(),
            port: h.upstream_port,
            baggage: h.workload.as_ref().and_then(upstream::baggage),
        }),
        None => Transport::Plain,
    }
}

fn start_hbone(
    config: HboneConfig,
    sockets: &dyn SocketFactory,
    proxy: &SharedProxy,
    drain: &DrainWatch,
) -> Result<SocketAddr, AppError> {
    let (listener, bound) = bind(sockets, config.listen)?;
    let server = inbound::server(config.cert.clone(), proxy.clone(), drain.clone())?;
    tokio::spawn(inbound::run(server, listener, drain.clone()));
    if let Some(source) = config.rotation {
        tokio::spawn(config.cert.clone().rotate(source, drain.clone()));
    }
    Ok(bound)
}

fn start_feed(
    config: FeedClientConfig,
    reloader: Reloader,
    drain: DrainWatch,
) -> watch::Receiver<FeedStatus> {
    let (status, receiver) = watch::channel(FeedStatus::default());
    tokio::spawn(async move { feed::client::run(config, &reloader, status, drain).await });
    receiver
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

async fn accept_plain(
    listener: TcpListener,
    proxy: SharedProxy,
    drain: DrainWatch,
    trusted_proxy_hops: u32,
) {
    let builder = http_builder();
    let watch = drain.clone();
    let serve = move |stream, addr| {
        let peer = Peer {
            addr,
            identity: None,
            authority: None,
            workload: None,
            edge_scheme: Some("http"),
            trusted_proxy_hops,
            sni: None,
        };
        serve_http(builder.clone(), stream, peer, proxy.clone(), watch.clone())
    };
    accept_loop(listener, "proxy", drain, serve).await;
}
