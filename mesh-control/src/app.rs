//! Assembles the control service: `build(config) -> Bound`, so tests run the whole service
//! in-process on port 0 and `main` stays thin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::control::{
    tls_incoming, ConnectError, ControlEndpoint, ControlTls, TlsIncomingSettings,
};
use mesh_core::drain::{self, DrainOutcome, DrainTrigger, DrainWatch};
use mesh_core::identity::ca::CertificateAuthority;
use mesh_core::identity::{CertificateSource, InProcessSource, SpiffeId};
use mesh_core::proto::control::v1 as pb;
use mesh_core::tls::{server_auth_server_config, IdentityCert};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::token_review::{TokenReviewAuthenticator, TokenReviewSettings};
use crate::auth::{Authenticator, TokenAuthenticator, TokenFileError};
use crate::ca::{load_ca, CaService, CaSettings, CaSetupError};
use crate::config::{Config, ConfigError};
use crate::feed::hub::{Hub, DEFAULT_MAX_LOG_KEYS};
use crate::feed::node::{NodeFeedService, StreamSettings};
use crate::feed::node_server::NodeFeedServer;
use crate::feed::waypoint::WaypointFeedService;
use crate::http::{self, Metrics, NotReadyReason};
use crate::registry::Registry;
use crate::source::kube::root_cert::{self, RootCertSettings, RootCertStats};
use crate::source::kube::{spawn_all, ALL_KINDS};
use crate::source::local::{LocalError, LocalSource};
use crate::store::Store;

/// Errors starting the service; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bootstrap token file.
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    /// The CA.
    #[error(transparent)]
    Ca(#[from] CaSetupError),
    /// The config directory.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// No Kubernetes client.
    #[error("cannot create kubernetes client: {0} (in a pod: is the service account token mounted? outside: is KUBECONFIG set?)")]
    Kube(#[from] kube::Error),
    /// `--trust-bundle-out` could not be written.
    #[error("cannot write the trust bundle to {path}: {source}")]
    TrustBundleOut {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mesh-control's own gRPC certificate.
    #[error("cannot issue mesh-control's grpc certificate for {identity}: {reason}")]
    GrpcCertificate {
        /// The identity asked for.
        identity: String,
        /// Why.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source} (is another process using the port?)")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running control service.
#[derive(Debug)]
pub struct Bound {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP (health, metrics) address.
    pub http_addr: SocketAddr,
    /// The store (for tests and introspection).
    pub store: Arc<Store>,
    /// The mesh trust bundle (PEM): what clients verify the gRPC port with.
    pub trust_bundle_pem: String,
    /// The identity the gRPC port proves; `None` with `--grpc-plaintext`.
    pub grpc_identity: Option<SpiffeId>,
    drain: DrainTrigger,
    tasks: Vec<JoinHandle<()>>,
}

impl Bound {
    /// How a client reaches this service's gRPC port, verifying it with the trust bundle in
    /// `trust_bundle_file` (which the caller writes from [`Bound::trust_bundle_pem`]).
    pub fn grpc_endpoint(
        &self,
        trust_bundle_file: PathBuf,
    ) -> Result<ControlEndpoint, ConnectError> {
        match &self.grpc_identity {
            Some(identity) => {
                let tls = ControlTls {
                    trust_bundle_file,
                    identity: identity.clone(),
                };
                ControlEndpoint::new(&format!("https://{}", self.grpc_addr), Some(tls))
            }
            None => ControlEndpoint::new(&format!("http://{}", self.grpc_addr), None),
        }
    }

    /// Drains every listener, stream and task; waits up to `deadline`.
    pub async fn shutdown(self, deadline: Duration) -> DrainOutcome {
        let outcome = self.drain.drain(deadline).await;
        for task in self.tasks {
            task.abort();
        }
        outcome
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// How often the reason is logged while not ready.
const NOT_READY_LOG_INTERVAL: Duration = Duration::from_secs(15);

/// Starts the configured source; returns its tasks and why it is not ready yet.
async fn start_source(
    config: &Config,
    kube_client: Option<&kube::Client>,
    store: &Arc<Store>,
    drain: &DrainTrigger,
) -> Result<(Vec<JoinHandle<()>>, NotReadyReason), AppError> {
    if let Some(client) = kube_client {
        let (tasks, sync) = spawn_all(client, &ALL_KINDS, store, &drain.watch());
        return Ok((tasks, Arc::new(move || sync.waiting_for())));
    }
    let source = LocalSource {
        dir: config.config_dir.clone(),
        poll_interval: config.poll_interval,
        debounce: config.debounce,
        last_good: Default::default(),
    };
    let fingerprint = source.load_into(store)?;
    store.publish_now();
    let task = source.run(Arc::clone(store), fingerprint, drain.watch());
    // Loaded above: never waiting.
    Ok((vec![tokio::spawn(task)], Arc::new(|| None)))
}

/// TokenReview of service-account tokens in Kubernetes mode with `--node-service-account`,
/// else bootstrap tokens.
fn authenticator(
    config: &Config,
    kube_client: Option<&kube::Client>,
) -> Result<Arc<dyn Authenticator>, AppError> {
    if let (Some((ns, name)), Some(client)) = (&config.node_service_account, kube_client) {
        let settings = TokenReviewSettings::new(ns, name, &config.token_audience);
        tracing::info!(service_account = %format!("{ns}/{name}"), audience = %config.token_audience, "nodes authenticate with tokenreview");
        return Ok(Arc::new(TokenReviewAuthenticator::new(
            client.clone(),
            settings,
        )));
    }
    let tokens = TokenAuthenticator::load(&config.bootstrap_tokens)?;
    if tokens.is_empty() {
        tracing::warn!(file = %config.bootstrap_tokens.display(), "no bootstrap tokens: every node will be refused");
    }
    Ok(Arc::new(tokens))
}

/// Builds and starts everything; returns once listeners are bound and the first config is
/// loaded (local mode) or the watchers are started (Kubernetes mode).
pub async fn build(config: Config) -> Result<Bound, AppError> {
    build_with_client(config, None).await
}

/// [`build`] with a given Kubernetes client (tests use a mock API server); `None` infers one
/// (in-cluster or KUBECONFIG) when `--kubernetes` is set.
pub async fn build_with_client(
    config: Config,
    kube_client: Option<kube::Client>,
) -> Result<Bound, AppError> {
    config.validate()?;
    let kube_client = match (config.kubernetes, kube_client) {
        (false, _) => None,
        (true, Some(client)) => Some(client),
        (true, None) => Some(kube::Client::try_default().await?),
    };
    let auth = authenticator(&config, kube_client.as_ref())?;
    let ca = Arc::new(load_ca(&config.ca_source(), &config.trust_domain)?);
    let trust_bundle_pem = ca.trust_bundle_pem();
    let grpc_identity = grpc_identity(&config)?;
    let hub = Arc::new(Hub::new(DEFAULT_MAX_LOG_KEYS));
    let registry = Registry::new(config.registry());
    let store = if config.kubernetes {
        Store::new_gated(registry, Arc::clone(&hub))
    } else {
        Store::new(registry, Arc::clone(&hub))
    };
    let grpc = bind("grpc", config.grpc_listen).await?;
    let http_listener = bind("http", config.http_listen).await?;
    let (grpc_addr, http_addr) = (
        local_addr(&grpc, "grpc")?,
        local_addr(&http_listener, "http")?,
    );
    if let Some(path) = &config.trust_bundle_out {
        write_atomically(path, &trust_bundle_pem)?;
    }
    let (drain, watch) = drain::channel();
    let (mut tasks, not_ready) =
        start_source(&config, kube_client.as_ref(), &store, &drain).await?;
    let root_cert_stats = RootCertStats::default();
    if let Some(client) = &kube_client {
        let settings = RootCertSettings {
            resync: config.root_cert_resync,
            ..RootCertSettings::default()
        };
        tasks.push(tokio::spawn(root_cert::run(
            client.clone(),
            Arc::clone(&store),
            trust_bundle_pem.clone(),
            settings,
            root_cert_stats.clone(),
            watch.clone(),
        )));
    }
    tasks.push(tokio::spawn(http::warn_while_not_ready(
        Arc::clone(&hub),
        Arc::clone(&not_ready),
        NOT_READY_LOG_INTERVAL,
        watch.clone(),
    )));
    tasks.push(tokio::spawn(
        Arc::clone(&store).run_publisher(config.debounce, watch.clone()),
    ));
    let settings = StreamSettings::default();
    let ca_settings = CaSettings {
        trust_domain: config.trust_domain.clone(),
        default_validity: config.cert_ttl,
        max_validity: config.cert_ttl,
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // A full node state is megabytes: use ztunnel's HTTP/2 windows, not 64 KiB.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .add_service(NodeFeedServer::new(NodeFeedService::new(
            Arc::clone(&hub),
            auth.clone(),
            settings.clone(),
            watch.clone(),
        )))
        .add_service(pb::waypoint_feed_server::WaypointFeedServer::new(
            WaypointFeedService::new(Arc::clone(&hub), auth.clone(), settings, watch.clone()),
        ))
        .add_service(
            pb::certificate_service_server::CertificateServiceServer::new(CaService::new(
                Arc::clone(&ca),
                auth,
                Arc::clone(&hub),
                ca_settings,
            )),
        );
    let tls = match &grpc_identity {
        Some(identity) => {
            let (config, rotation) = grpc_tls(&ca, identity, config.cert_ttl, &watch).await?;
            tasks.push(rotation);
            Some(config)
        }
        None => None,
    };
    let tls_settings = TlsIncomingSettings::default();
    let accept_settings = tls_settings.clone();
    let mut grpc_drain = watch.clone();
    let accept_drain = watch.clone();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move { grpc_drain.signaled().await };
        let served = match tls {
            Some(tls) => {
                let incoming = tls_incoming(grpc, tls, accept_settings, accept_drain);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown)
                    .await
            }
        };
        if let Err(err) = served {
            tracing::error!(error = %err, "grpc server failed");
        }
    }));
    tasks.push(tokio::spawn(http::serve(
        http_listener,
        hub,
        Arc::new(Metrics::with_counters(
            &root_cert_stats,
            &tls_settings.handshake_failures,
        )),
        not_ready,
        watch,
    )));
    match &grpc_identity {
        Some(identity) => {
            tracing::info!(%grpc_addr, %identity, %http_addr, kubernetes = config.kubernetes, "mesh-control listening (grpc over tls)");
        }
        None => {
            tracing::warn!(%grpc_addr, %http_addr, kubernetes = config.kubernetes, "mesh-control listening with plaintext grpc (--grpc-plaintext): tokens and config cross the network unencrypted");
        }
    }
    Ok(Bound {
        grpc_addr,
        http_addr,
        store,
        trust_bundle_pem,
        grpc_identity,
        drain,
        tasks,
    })
}

/// The identity the gRPC port proves, or `None` with `--grpc-plaintext`.
fn grpc_identity(config: &Config) -> Result<Option<SpiffeId>, AppError> {
    if config.grpc_plaintext {
        return Ok(None);
    }
    let (namespace, name) = &config.service_account;
    SpiffeId::new(&config.trust_domain, namespace, name)
        .map(Some)
        .map_err(|e| AppError::GrpcCertificate {
            identity: format!("{namespace}/{name}"),
            reason: e.to_string(),
        })
}

/// Issues the gRPC port's certificate from the mesh CA and keeps it renewed at half-life.
async fn grpc_tls(
    ca: &Arc<CertificateAuthority>,
    identity: &SpiffeId,
    validity: Duration,
    drain: &DrainWatch,
) -> Result<(Arc<rustls::ServerConfig>, JoinHandle<()>), AppError> {
    let failed = |reason: String| AppError::GrpcCertificate {
        identity: identity.to_string(),
        reason,
    };
    let source = Arc::new(InProcessSource::new(Arc::clone(ca), validity));
    let cert = source
        .fetch(identity)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let cert = IdentityCert::new(&cert).map_err(|e| failed(e.to_string()))?;
    let config = server_auth_server_config(Arc::clone(&cert)).map_err(|e| failed(e.to_string()))?;
    let rotation = tokio::spawn(cert.rotate(source, drain.clone()));
    Ok((config, rotation))
}

/// Writes `pem` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_atomically(path: &std::path::Path, pem: &str) -> Result<(), AppError> {
    let failed = |source| AppError::TrustBundleOut {
        path: path.to_owned(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, pem).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)?;
    tracing::info!(path = %path.display(), "trust bundle written");
    Ok(())
}

fn local_addr(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, AppError> {
    listener.local_addr().map_err(|source| AppError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}
