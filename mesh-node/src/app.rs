//! Wiring: builds the node tunnel from a [`Config`], binds every listener and returns
//! [`Bound`] with the real addresses and the drain handle, so tests run it in-process.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use mesh_core::{
    drain::{self, DrainOutcome, DrainTrigger},
    hbone,
    identity::{CertificateSource, SpiffeId},
    ops::{self, OpsRoutes, Page},
    tls::{IdentityCert, RenewError},
};
use tokio::sync::{watch, Notify};

use crate::{
    admin,
    certs::{self, CertManager},
    config::Config,
    inpod::{self, InPodListeners, InPodSettings},
    metrics::Metrics,
    pod_netns::ScanConfig,
    pod_scan::{self, PodScanner},
    policy::{Authorizer, Policies},
    proxy::{accept_loop, inbound::InboundCerts, AppDial, Proxy},
    ready::{self, ReadyState},
    redirect::Steering,
    socket::{FactoryDialer, SocketFactory, SystemSockets},
    state::State,
};

/// Longest a feed version (or start-up) waits for new local identities' certificates; those
/// still missing then are fetched in the background, so a CA outage delays no version for long.
const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

/// Fetches the certificates of `identities` not held yet, for at most [`CERTIFICATE_WAIT`];
/// whether every one was obtained. Failures are logged (the pod's mTLS traffic is refused until
/// the background fetch gets it one).
async fn fetch_certificates(
    certs: &CertManager,
    identities: BTreeSet<SpiffeId>,
    source: &Arc<dyn CertificateSource>,
    drain: &drain::DrainWatch,
) -> bool {
    let ensure = certs.ensure(identities, source.clone(), drain);
    match tokio::time::timeout(CERTIFICATE_WAIT, ensure).await {
        Ok(failures) => {
            for (identity, error) in &failures {
                tracing::warn!(%identity, %error, "no certificate for a local identity; its mTLS traffic is refused until the background fetch gets one");
            }
            failures.is_empty()
        }
        Err(_) => {
            tracing::warn!(after = ?CERTIFICATE_WAIT, "certificate fetches still pending; continuing them in the background");
            false
        }
    }
}

/// Bound on stopping the readiness server once the main drain has ended.
const READINESS_STOP_DEADLINE: Duration = Duration::from_secs(1);

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The certificate source could not be set up.
    #[error(transparent)]
    Ca(#[from] crate::ca_source::CaSourceError),
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
    /// IPv6 outbound capture listener address (same port), when `listeners.outbound_ipv6` is set.
    pub outbound_v6: Option<SocketAddr>,
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
    ready: ReadyState,
    readiness_drain: DrainTrigger,
    drain: DrainTrigger,
    deadline: Duration,
    mesh_changed: Arc<Notify>,
    /// Wakes the background fetch of certificates an update could not get.
    certs_missing: Arc<Notify>,
    in_pod: watch::Receiver<BTreeMap<IpAddr, PathBuf>>,
    steering: Arc<OnceLock<Arc<Steering>>>,
    /// The mesh view names the node's pods (static mode, or the first feed version applied).
    mesh_known: Arc<AtomicBool>,
    scanner: OnceLock<PodScanner>,
    scan_config: ScanConfig,
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
        self.ready.set_draining();
        async move {
            let outcome = self.drain.drain(self.deadline).await;
            self.readiness_drain.drain(READINESS_STOP_DEADLINE).await;
            outcome
        }
    }

    /// Applies a new mesh description (workloads, services, waypoints, their mTLS modes and
    /// policies; listeners, CA and node name are fixed at start-up). Certificates for new local
    /// identities are fetched first, so traffic is routed to an identity only once it has one.
    /// An identity the CA refuses does not hold the version back (its policies and every other
    /// pod's changes apply): that pod's mTLS traffic is refused, readiness names it, and a
    /// background fetch retries with backoff. Returns how many live connections were closed:
    /// those whose local pod left the mesh (inbound to it, outbound from it) and those the new
    /// policies deny.
    pub async fn update_mesh(&self, state: State, policies: Policies) -> usize {
        let complete = fetch_certificates(
            &self.proxy.certs,
            state.local_identities(),
            &self.source,
            &self.drain.watch(),
        )
        .await;
        let state = Arc::new(state);
        self.proxy.state.store(state.clone());
        self.proxy.certs.retain(&state.local_identities());
        if !complete {
            // After the store: the background fetch reads the wanted identities from the state.
            self.certs_missing.notify_one();
        }
        self.mesh_changed.notify_one();
        if let Some(scanner) = self.scanner.get() {
            scanner.rescan();
        }
        let departed = self
            .proxy
            .authz
            .close_departed(|ip, name| state.local_workload(ip).is_some_and(|w| w.name == name));
        let revoked = self.proxy.authz.update(policies);
        self.void_admissions();
        departed + revoked
    }

    /// The shared scan of pods' network namespaces (started on first use, if in-pod listeners
    /// did not start it); eBPF enrollment follows it too.
    pub fn pod_scanner(&self) -> &PodScanner {
        self.scanner.get_or_init(|| {
            PodScanner::spawn(
                self.scan_config.clone(),
                pod_scan::RESCAN_INTERVAL,
                self.drain.watch(),
            )
        })
    }

    /// Hands the in-pod listeners eBPF inbound steering (once the programs are loaded): every
    /// local pod with listeners is steered from the next reconciliation on, which starts now.
    pub fn set_steering(&self, steering: Arc<Steering>) {
        if self.steering.set(steering).is_err() {
            tracing::warn!("inbound steering was already set; keeping the first");
        }
        self.mesh_changed.notify_one();
    }

    /// Hands the same-node path eBPF joining (once the programs are loaded with it).
    pub fn set_joiner(&self, joiner: Arc<crate::redirect::join::Joiner>) {
        if self.proxy.joiner.set(joiner).is_err() {
            tracing::warn!("same-node joining was already set; keeping the first");
        }
    }

    /// Hands the same-node path eBPF direct connections (once the programs are loaded with
    /// them) and follows the kernel's reports of them until drain.
    pub fn set_direct(
        &self,
        direct: Arc<crate::redirect::direct::Direct>,
        events: crate::redirect::direct::DirectEvents,
    ) {
        if self.proxy.direct.set(direct.clone()).is_err() {
            tracing::warn!("same-node direct connections were already set; keeping the first");
            return;
        }
        let watch =
            crate::proxy::direct::watch(self.proxy.clone(), direct, events, self.drain.watch());
        tokio::spawn(watch);
    }

    /// Voids every same-node direct admission: the mesh view or the policies changed.
    fn void_admissions(&self) {
        if let Some(direct) = self.proxy.direct.get() {
            if let Err(error) = direct.invalidate() {
                // Admissions then lapse by their lifetime only: stop making new ones.
                tracing::error!(%error, "cannot move the same-node admission epoch; direct connections stop");
                direct.stop_admitting();
            }
        }
    }

    /// The open in-pod HBONE listeners: pod IP -> the network namespace it listens in.
    pub fn in_pod_listeners(&self) -> watch::Receiver<BTreeMap<IpAddr, PathBuf>> {
        self.in_pod.clone()
    }

    /// [`Bound::update_mesh`] for control feed `version`, recording it for readiness.
    pub async fn apply_feed_version(
        &self,
        version: u64,
        state: State,
        policies: Policies,
    ) -> usize {
        let closed = self.update_mesh(state, policies).await;
        self.mesh_known.store(true, Ordering::Release);
        self.mesh_changed.notify_one();
        self.ready.feed_applied(version);
        closed
    }

    /// Why the node is not ready (empty when ready), as `/healthz/ready` reports it.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.ready.not_ready_reasons()
    }

    /// Replaces the authorization policies; returns how many live connections were closed.
    pub fn update_policies(&self, policies: Policies) -> usize {
        let revoked = self.proxy.authz.update(policies);
        self.void_admissions();
        revoked
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

/// Builds with real sockets and the CA the config names, serving `state` and enforcing
/// `policies` from the first connection on.
pub async fn build(config: Config, state: State, policies: Policies) -> Result<Bound, AppError> {
    let certs = crate::ca_source::from_config(&config)?;
    build_with(
        config,
        state,
        policies,
        Deps {
            sockets: Arc::new(SystemSockets),
            certs,
        },
    )
    .await
}

/// Builds with injected dependencies.
pub async fn build_with(
    config: Config,
    state: State,
    policies: Policies,
    deps: Deps,
) -> Result<Bound, AppError> {
    let certs = Arc::new(CertManager::default());
    let proxy = Proxy {
        state: Arc::new(arc_swap::ArcSwap::from_pointee(state)),
        certs: certs.clone(),
        client: hbone::Client::new(Arc::new(FactoryDialer(deps.sockets.clone()))),
        sockets: deps.sockets.clone(),
        authz: Authorizer::new(policies),
        metrics: Metrics::new(),
        pods: Default::default(),
        joiner: Default::default(),
        direct: Default::default(),
    };
    let (trigger, watch) = drain::channel();
    // The first certificates come from the background fetch, like any missing one later: a CA
    // that is down at start-up leaves the node up and not ready, never crash-looping.
    let certs_missing = Arc::new(Notify::new());
    let wanted = {
        let state = proxy.state.clone();
        move || state.load().local_identities()
    };
    if !fetch_certificates(&certs, wanted(), &deps.certs, &watch).await {
        certs_missing.notify_one();
    }
    certs::spawn_refetch(
        certs.clone(),
        wanted,
        deps.certs.clone(),
        certs_missing.clone(),
        watch.clone(),
    );
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
    let outbound_v6 = match l.outbound_ipv6 {
        Some(ip) => {
            let requested = SocketAddr::new(IpAddr::V6(ip), bound_addrs[0].port());
            let listener = bind("outbound ipv6", requested)?;
            let bound = addr(&listener, "outbound ipv6", requested)?;
            spawn_outbound(&proxy, listener, &watch);
            Some(bound)
        }
        None => None,
    };
    spawn_outbound(&proxy, outbound, &watch);
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        plaintext,
        watch.clone(),
        "inbound plaintext",
        move |s, peer| {
            let p = p.clone();
            async move {
                // Only a connection redirected here has an original destination of its own.
                let Ok(dst) = p.sockets.original_dst(&s) else {
                    return;
                };
                p.plaintext(s, peer, dst, AppDial::FromNode).await;
            }
        },
    ));
    let server = hbone::Server::new(
        Arc::new(InboundCerts(proxy.clone())),
        Arc::new(proxy.clone()),
    );
    tokio::spawn(server.serve(hbone_listener, watch.clone()));
    let mesh_changed = Arc::new(Notify::new());
    let scan_config = ScanConfig {
        pinned_dirs: config.pod_netns.dirs.clone(),
        scan_proc: config.pod_netns.scan_proc,
    };
    let scanner = OnceLock::new();
    let steering = Arc::new(OnceLock::new());
    let mesh_known = Arc::new(AtomicBool::new(!config.follows_control_feed));
    let in_pod = match config.in_pod.enabled {
        true => {
            let scanner = scanner.get_or_init(|| {
                PodScanner::spawn(
                    scan_config.clone(),
                    pod_scan::RESCAN_INTERVAL,
                    watch.clone(),
                )
            });
            spawn_in_pod(
                &proxy,
                &config,
                &steering,
                &mesh_known,
                scanner,
                &mesh_changed,
                &watch,
            )
        }
        false => watch::channel(BTreeMap::new()).1,
    };
    let ready = ReadyState::new(proxy.clone(), config.follows_control_feed);
    // Readiness has its own drain, ended after the main one, so it can answer 503 meanwhile.
    let (readiness_drain, readiness_watch) = drain::channel();
    let dump = admin::Dump {
        proxy: proxy.clone(),
        startup: config.clone(),
        in_pod: in_pod.clone(),
        ready: ready.clone(),
    };
    spawn_ops(&proxy, dump, [metrics, admin], &watch);
    tokio::spawn(mesh_core::memory::trim_periodically(watch.clone()));
    tokio::spawn(ready::serve(readiness, ready.clone(), readiness_watch));
    tracing::info!(addrs = ?bound_addrs, ?outbound_v6, identities = ?certs.identities().iter().map(ToString::to_string).collect::<Vec<_>>(), "node tunnel ready");
    Ok(Bound {
        outbound: bound_addrs[0],
        outbound_v6,
        inbound_plaintext: bound_addrs[1],
        hbone: bound_addrs[2],
        metrics: bound_addrs[3],
        readiness: bound_addrs[4],
        admin: bound_addrs[5],
        proxy,
        source: deps.certs.clone(),
        ready,
        readiness_drain,
        drain: trigger,
        deadline: config.drain_deadline,
        mesh_changed,
        certs_missing,
        in_pod,
        steering,
        mesh_known,
        scanner,
        scan_config,
    })
}

/// Serves captured outbound connections accepted on `listener`.
fn spawn_outbound(proxy: &Proxy, listener: tokio::net::TcpListener, watch: &drain::DrainWatch) {
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        listener,
        watch.clone(),
        "outbound",
        move |s, peer| p.clone().outbound(s, peer),
    ));
}

/// Starts the in-pod listeners; returns the view of the open ones.
fn spawn_in_pod(
    proxy: &Proxy,
    config: &Config,
    steering: &Arc<OnceLock<Arc<Steering>>>,
    mesh_known: &Arc<AtomicBool>,
    scanner: &PodScanner,
    mesh_changed: &Arc<Notify>,
    watch: &drain::DrainWatch,
) -> watch::Receiver<BTreeMap<IpAddr, PathBuf>> {
    let settings = InPodSettings {
        hbone_port: config.hbone_port,
        plaintext_port: config.in_pod.plaintext_port,
        mark: config.in_pod.mark,
        reply_mark: config.in_pod.reply_mark,
        deadline: config.drain_deadline,
    };
    let (listeners, view) = InPodListeners::new(
        proxy.clone(),
        settings,
        steering.clone(),
        mesh_known.clone(),
    );
    let run = inpod::run(
        listeners,
        scanner.results(),
        mesh_changed.clone(),
        inpod::RETRY_INTERVAL,
        watch.clone(),
    );
    tokio::spawn(run);
    view
}

fn spawn_ops(
    proxy: &Proxy,
    dump: admin::Dump,
    [metrics, admin]: [tokio::net::TcpListener; 2],
    watch: &drain::DrainWatch,
) {
    let m = proxy.metrics.clone();
    let metrics_page: Page = Arc::new(move || (PROMETHEUS_TEXT, m.encode()));
    let metrics_routes = OpsRoutes::default()
        .page("/metrics", metrics_page.clone())
        .page("/stats/prometheus", metrics_page);
    let dump: Page = Arc::new(move || ("application/json", dump.render()));
    let admin_routes = OpsRoutes::default().page("/config_dump", dump);
    tokio::spawn(ops::serve(metrics, metrics_routes, watch.clone()));
    tokio::spawn(ops::serve(admin, admin_routes, watch.clone()));
}

/// Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
