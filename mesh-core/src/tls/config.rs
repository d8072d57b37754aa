//! rustls client and server configs: HBONE mTLS between workloads, and the server-authenticated
//! TLS of the control-plane connection (callers there prove themselves with bearer tokens, since
//! they ask mesh-control for their first certificate).

use std::sync::Arc;

use rustls::{
    time_provider::{DefaultTimeProvider, TimeProvider},
    version::TLS13,
    ClientConfig, ServerConfig,
};

use super::{
    provider,
    store::trust_anchors,
    verify::{Anchors, ClientVerifier, ServerVerifier},
    IdentityCert, TlsError, ALPN_H2,
};
use crate::identity::SpiffeId;
use rustls_pki_types::CertificateDer;

/// Client config presenting `local` and accepting a server proving one of `expected`.
pub fn client_config(
    local: Arc<IdentityCert>,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_time(local, expected, Arc::new(DefaultTimeProvider))
}

/// [`client_config`] with an explicit clock (tests of expiry).
pub fn client_config_with_time(
    local: Arc<IdentityCert>,
    expected: Vec<SpiffeId>,
    time: Arc<dyn TimeProvider>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ServerVerifier {
        anchors: Anchors::Local(local.clone()),
        expected,
        provider: provider.clone(),
    });
    let identity = local.identity().to_string();
    let mut config = ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| TlsError::Config { identity, source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(local);
    config.enable_sni = false;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client config with no certificate of its own, accepting a server that chains to `roots` and
/// proves `expected`: how nodes and waypoints reach mesh-control.
pub fn server_auth_client_config(
    roots: &[CertificateDer<'_>],
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let anchors = trust_anchors(roots)?;
    let provider = provider();
    let identity = expected.to_string();
    let verifier = Arc::new(ServerVerifier {
        anchors: Anchors::Bundle(anchors),
        expected: vec![expected],
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| TlsError::Config { identity, source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = false;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Server config presenting `local` and asking for no client certificate: mesh-control's gRPC
/// port, whose callers authenticate with bearer tokens.
pub fn server_auth_server_config(local: Arc<IdentityCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let identity = local.identity().to_string();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| TlsError::Config { identity, source })?
        .with_no_client_auth()
        .with_cert_resolver(local);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Server config presenting `local` and requiring a client certificate from its trust domain.
pub fn server_config(local: Arc<IdentityCert>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_time(local, Arc::new(DefaultTimeProvider))
}

/// [`server_config`] with an explicit clock (tests of expiry).
pub fn server_config_with_time(
    local: Arc<IdentityCert>,
    time: Arc<dyn TimeProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ClientVerifier {
        local: local.clone(),
        provider: provider.clone(),
    });
    let identity = local.identity().to_string();
    let mut config = ServerConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| TlsError::Config { identity, source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(local);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
