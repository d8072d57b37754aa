//! The HTTPS ingress listener (`--tls-listen`): TLS terminated with the Gateway's own
//! certificates (Istio `tls.mode: SIMPLE`, Gateway API `Terminate`), then the same ingress
//! routes as the plain listener.
//!
//! TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`; the certificate is chosen by SNI
//! ([`certs::CertResolver`]) among the feed's `tls_credentials`, swapped with each version.
//! Handshakes have a deadline and run inside the connection's slot, so at most
//! [`MAX_DOWNSTREAM_CONNECTIONS`](crate::app::MAX_DOWNSTREAM_CONNECTIONS) connections (handshaking or serving) exist at once; refused
//! and failed handshakes are counted in `weft_waypoint_tls_handshake_failures_total` and logged
//! at debug.

pub mod certs;

use std::{sync::Arc, time::Duration};

use mesh_core::drain::DrainWatch;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rustls::{crypto::ring, version, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub use self::certs::CertResolver;
use crate::{
    proxy::Peer,
    serve::{accept_loop, http_builder, serve_http, SharedProxy},
};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Labels of the handshake failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `no_sni`, `unknown_sni`, `timeout` or `error`.
    pub reason: &'static str,
}

/// Why the listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum IngressTlsError {
    /// The TLS stack refused the protocol versions (a build without TLS 1.2 or 1.3).
    #[error("ingress tls set-up failed: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificates and settings of the HTTPS listener; the feed's reloader updates
/// [`IngressTls::resolver`].
#[derive(Clone)]
pub struct IngressTls {
    /// The certificates in force, by SNI.
    pub resolver: Arc<CertResolver>,
    /// Proxies in front whose `X-Forwarded-For` entries are believed (Istio
    /// `numTrustedProxies`).
    pub trusted_proxy_hops: u32,
    failures: Family<HandshakeLabels, Counter>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for IngressTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressTls")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl IngressTls {
    /// Registers the failure counter in `registry`; no certificate until the first version.
    pub fn new(registry: &mut Registry) -> Result<Self, IngressTlsError> {
        let failures = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "weft_waypoint_tls_handshake_failures",
            "HTTPS ingress handshakes refused or failed, by reason",
            failures.clone(),
        );
        let resolver = Arc::new(CertResolver::new(failures.clone()));
        let provider = Arc::new(ring::default_provider());
        let versions = [&version::TLS13, &version::TLS12];
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Self {
            resolver,
            trusted_proxy_hops: 0,
            failures,
            acceptor,
        })
    }

    fn count(&self, reason: &'static str) {
        self.failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
    }

    /// Handshakes and serves one connection; resolver refusals are counted by the resolver.
    async fn connection(self, stream: TcpStream, proxy: SharedProxy, drain: DrainWatch) {
        let Ok(addr) = stream.peer_addr() else { return };
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                if !refused_by_resolver(&error) {
                    self.count("error");
                }
                tracing::debug!(peer = %addr, %error, "tls handshake failed");
                return;
            }
            Err(_) => {
                self.count("timeout");
                tracing::debug!(peer = %addr, "tls handshake timed out");
                return;
            }
        };
        let peer = Peer {
            addr,
            identity: None,
            authority: None,
            workload: None,
            edge_scheme: Some("https"),
            trusted_proxy_hops: self.trusted_proxy_hops,
            sni: tls.get_ref().1.server_name().map(str::to_owned),
        };
        serve_http(http_builder(), tls, peer, proxy, drain).await;
    }
}

/// Whether the handshake failed because the resolver had no certificate (rustls reports that
/// as a general error; the resolver counted it already, with its reason).
fn refused_by_resolver(error: &std::io::Error) -> bool {
    let tls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(tls_error, Some(rustls::Error::General(_)))
}

/// Serves HTTPS on `listener` until the drain starts.
pub async fn serve(listener: TcpListener, tls: IngressTls, proxy: SharedProxy, drain: DrainWatch) {
    let watch = drain.clone();
    let conn = move |stream, _| tls.clone().connection(stream, proxy.clone(), watch.clone());
    accept_loop(listener, "https ingress", drain, conn).await;
}
