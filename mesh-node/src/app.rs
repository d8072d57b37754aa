//! Wiring: builds the node tunnel from a [`Config`], binds every listener and returns
//! [`Bound`] with the real addresses and the drain handle, so tests run it in-process.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use mesh_core::{
    drain::{self, DrainOutcome, DrainTrigger},
    hbone,
    identity::{
        ca::CertificateAuthority, source::DEFAULT_VALIDITY, CertificateSource, GrpcSource,
        InProcessSource, SpiffeId,
    },
    ops::{self, OpsRoutes, Page, Readiness},
    tls::{IdentityCert, RenewError},
};

use crate::{
    certs::{CertManager, CertsError},
    config::{Config, PolicyConfig},
    metrics::Metrics,
    policy::{Authorizer, Policies, PolicyError},
    proxy::{accept_loop, inbound::InboundCerts, Proxy},
    socket::{FactoryDialer, SocketFactory, SystemSockets},
    state::{State, StateError},
};

/// Bound on stopping the readiness server once the main drain has ended.
const READINESS_STOP_DEADLINE: Duration = Duration::from_secs(1);

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Inconsistent mesh description.
    #[error(transparent)]
    State(#[from] StateError),
    /// Invalid policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Certificates could not be obtained.
    #[error(transparent)]
    Certs(#[from] CertsError),
    /// The static-mode CA could not be set up.
    #[error("certificate authority: {0}")]
    Ca(String),
    /// A listener could not be bound.
    #[error("binding {name} listener on {addr}: {source}, is another process using the port?")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Injected dependencies (tests replace them).
#[derive(Clone)]
pub struct Deps {
    /// Sockets.
    pub sockets: Arc<dyn SocketFactory>,
    /// Certificates.
    pub certs: Arc<dyn CertificateSource>,
}

/// A running node tunnel.
pub struct Bound {
    /// Outbound capture listener address.
    pub outbound: SocketAddr,
    /// Inbound plaintext listener address.
    pub inbound_plaintext: SocketAddr,
    /// HBONE listener address.
    pub hbone: SocketAddr,
    /// Metrics listener address.
    pub metrics: SocketAddr,
    /// Readiness listener address.
    pub readiness: SocketAddr,
    /// Admin listener address.
    pub admin: SocketAddr,
    proxy: Proxy,
    source: Arc<dyn CertificateSource>,
    ready: Readiness,
    readiness_drain: DrainTrigger,
    root_namespace: String,
    drain: DrainTrigger,
    deadline: Duration,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("outbound", &self.outbound)
            .field("hbone", &self.hbone)
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// Drains every listener and connection, waiting up to the configured deadline.
    ///
    /// Readiness turns to 503 as soon as this is called (before the returned future is polled)
    /// and stays served until the drain ends, so probes see the node leaving.
    pub fn shutdown(self) -> impl std::future::Future<Output = DrainOutcome> + Send {
        self.ready.set(false);
        async move {
            let outcome = self.drain.drain(self.deadline).await;
            self.readiness_drain.drain(READINESS_STOP_DEADLINE).await;
            outcome
        }
    }

    /// Applies a new mesh description (workloads, services, waypoints, peer authentication and
    /// policies; listeners, CA and node name are fixed at start-up). Certificates for new local
    /// identities are fetched first, so traffic is never routed to an identity without one; on
    /// any error the current state stays in force. Returns how many live connections the new
    /// policies closed. Connections to workloads that disappeared are not closed.
    pub async fn update_mesh(&self, config: &Config) -> Result<usize, AppError> {
        let state = State::from_config(config)?;
        let policies = Policies::compile(&self.root_namespace, &config.authorization_policies)?;
        self.proxy
            .certs
            .ensure(
                state.local_identities(),
                self.source.clone(),
                &self.drain.watch(),
            )
            .await?;
        self.proxy.state.store(Arc::new(state));
        Ok(self.proxy.authz.update(policies))
    }

    /// Replaces the authorization policies; returns how many live connections were closed.
    pub fn update_policies(&self, configs: &[PolicyConfig]) -> Result<usize, PolicyError> {
        let policies = Policies::compile(&self.root_namespace, configs)?;
        Ok(self.proxy.authz.update(policies))
    }

    /// Renews every local certificate now (operator-triggered rotation, tests).
    pub async fn renew_certificates(&self) -> Result<(), RenewError> {
        for identity in self.proxy.certs.identities() {
            if let Some(cert) = self.proxy.certs.get(&identity) {
                cert.renew(self.source.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// The current certificate of a local identity.
    pub fn certificate(&self, identity: &SpiffeId) -> Option<Arc<IdentityCert>> {
        self.proxy.certs.get(identity)
    }

    /// Metrics (tests read them without scraping).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.proxy.metrics
    }

    /// The HBONE client (pool inspection in tests).
    pub fn client(&self) -> &hbone::Client {
        &self.proxy.client
    }
}

/// Builds with real sockets and a static-mode CA from the config.
pub async fn build(config: Config) -> Result<Bound, AppError> {
    let certs = static_source(&config)?;
    build_with(
        config,
        Deps {
            sockets: Arc::new(SystemSockets),
            certs,
        },
    )
    .await
}

fn read_file(path: &std::path::Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|e| AppError::Ca(format!("{}: {e}", path.display())))
}

/// The control plane's CA service, when configured.
fn grpc_source(config: &Config, address: &str) -> Result<Arc<dyn CertificateSource>, AppError> {
    let bundle_file =
        config.ca.trust_bundle_file.as_deref().ok_or_else(|| {
            AppError::Ca("ca.trust_bundle_file is required with ca.address".into())
        })?;
    let token = config.ca.token_file.as_deref().map(read_file).transpose()?;
    let channel = tonic::transport::Channel::from_shared(address.to_owned())
        .map_err(|e| AppError::Ca(format!("ca.address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy();
    let validity = config.ca.workload_validity.unwrap_or(DEFAULT_VALIDITY);
    let source = GrpcSource::new(
        channel,
        token.as_deref().map(str::trim),
        &read_file(bundle_file)?,
        validity,
    )
    .map_err(|e| AppError::Ca(e.to_string()))?;
    Ok(Arc::new(source))
}

fn static_source(config: &Config) -> Result<Arc<dyn CertificateSource>, AppError> {
    if let Some(address) = &config.ca.address {
        return grpc_source(config, address);
    }
    let ca = match (&config.ca.cert_chain_file, &config.ca.key_file) {
        (Some(chain), Some(key)) => {
            CertificateAuthority::from_pem(&read_file(chain)?, &read_file(key)?)
        }
        (None, None) => {
            tracing::warn!(
                "no ca configured: using a self-signed in-process ca (single-node only)"
            );
            CertificateAuthority::self_signed(&config.trust_domain)
        }
        _ => {
            return Err(AppError::Ca(
                "ca.cert_chain_file and ca.key_file go together".into(),
            ))
        }
    }
    .map_err(|e| AppError::Ca(e.to_string()))?;
    let validity = config.ca.workload_validity.unwrap_or(DEFAULT_VALIDITY);
    Ok(Arc::new(InProcessSource::new(Arc::new(ca), validity)))
}

/// Builds with injected dependencies.
pub async fn build_with(config: Config, deps: Deps) -> Result<Bound, AppError> {
    let state = State::from_config(&config)?;
    let policies = Policies::compile(&config.root_namespace, &config.authorization_policies)?;
    let certs = Arc::new(CertManager::load(state.local_identities(), deps.certs.as_ref()).await?);
    let proxy = Proxy {
        state: Arc::new(arc_swap::ArcSwap::from_pointee(state)),
        certs: certs.clone(),
        client: hbone::Client::new(Arc::new(FactoryDialer(deps.sockets.clone()))),
        sockets: deps.sockets.clone(),
        authz: Authorizer::new(policies),
        metrics: Metrics::new(),
    };
    let (trigger, watch) = drain::channel();
    certs.spawn_rotation(deps.certs.clone(), &watch);
    let l = &config.listeners;
    let bind = |name, addr| {
        deps.sockets
            .bind(addr)
            .map_err(|source| AppError::Bind { name, addr, source })
    };
    let (outbound, plaintext, hbone_listener) = (
        bind("outbound", l.outbound)?,
        bind("inbound plaintext", l.inbound_plaintext)?,
        bind("hbone", l.hbone)?,
    );
    let (metrics, readiness, admin) = (
        bind("metrics", l.metrics)?,
        bind("readiness", l.readiness)?,
        bind("admin", l.admin)?,
    );
    let addr = |listener: &tokio::net::TcpListener, name, requested| {
        listener.local_addr().map_err(|source| AppError::Bind {
            name,
            addr: requested,
            source,
        })
    };
    let bound_addrs = [
        addr(&outbound, "outbound", l.outbound)?,
        addr(&plaintext, "inbound plaintext", l.inbound_plaintext)?,
        addr(&hbone_listener, "hbone", l.hbone)?,
        addr(&metrics, "metrics", l.metrics)?,
        addr(&readiness, "readiness", l.readiness)?,
        addr(&admin, "admin", l.admin)?,
    ];
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        outbound,
        watch.clone(),
        "outbound",
        move |s, peer| p.clone().outbound(s, peer),
    ));
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        plaintext,
        watch.clone(),
        "inbound plaintext",
        move |s, peer| p.clone().plaintext(s, peer),
    ));
    let server = hbone::Server::new(
        Arc::new(InboundCerts(proxy.clone())),
        Arc::new(proxy.clone()),
    );
    tokio::spawn(server.serve(hbone_listener, watch.clone()));
    let ready = Readiness::default();
    ready.set(true);
    // Readiness has its own drain, ended after the main one, so it can answer 503 meanwhile.
    let (readiness_drain, readiness_watch) = drain::channel();
    spawn_ops(&proxy, &config, [metrics, admin], &watch);
    let readiness_routes = OpsRoutes::default().readiness(ready.clone());
    tokio::spawn(ops::serve(readiness, readiness_routes, readiness_watch));
    tracing::info!(addrs = ?bound_addrs, identities = ?certs.identities().iter().map(ToString::to_string).collect::<Vec<_>>(), "node tunnel ready");
    Ok(Bound {
        outbound: bound_addrs[0],
        inbound_plaintext: bound_addrs[1],
        hbone: bound_addrs[2],
        metrics: bound_addrs[3],
        readiness: bound_addrs[4],
        admin: bound_addrs[5],
        proxy,
        source: deps.certs.clone(),
        ready,
        readiness_drain,
        root_namespace: config.root_namespace.clone(),
        drain: trigger,
        deadline: config.drain_deadline,
    })
}

fn spawn_ops(
    proxy: &Proxy,
    config: &Config,
    [metrics, admin]: [tokio::net::TcpListener; 2],
    watch: &drain::DrainWatch,
) {
    let m = proxy.metrics.clone();
    let metrics_page: Page = Arc::new(move || (PROMETHEUS_TEXT, m.encode()));
    let metrics_routes = OpsRoutes::default()
        .page("/metrics", metrics_page.clone())
        .page("/stats/prometheus", metrics_page);
    let (dump_proxy, startup) = (proxy.clone(), config.clone());
    let dump: Page = Arc::new(move || ("application/json", config_dump(&dump_proxy, &startup)));
    let admin_routes = OpsRoutes::default().page("/config_dump", dump);
    tokio::spawn(ops::serve(metrics, metrics_routes, watch.clone()));
    tokio::spawn(ops::serve(admin, admin_routes, watch.clone()));
}

/// Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin dump, computed per request: the start-up config plus the current mesh view.
fn config_dump(proxy: &Proxy, config: &Config) -> String {
    let identities: Vec<String> = proxy
        .certs
        .identities()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let workloads: Vec<_> = proxy
        .state()
        .workloads()
        .iter()
        .map(|w| {
            serde_json::json!({
                "name": w.name, "namespace": w.namespace, "ip": w.ip, "node": w.node,
                "identity": w.identity.to_string(),
                "waypoint": w.waypoint.as_ref().map(|wp| wp.key.clone()),
            })
        })
        .collect();
    let dump = serde_json::json!({
        "startup_config": config,
        "workloads": workloads,
        "certificates": identities,
        "policies": proxy.authz.policy_count(),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
