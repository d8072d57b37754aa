//! Mutual TLS between workloads, keyed by SPIFFE identity (rustls, ring provider).
//!
//! Wire profile (Istio ambient HBONE): TLS 1.3 only, AES-GCM suites, ALPN `h2`, no SNI. The
//! client verifies the server chain against the trust bundle and accepts only an expected list of
//! identities; the server requires a client certificate from its own trust domain. Both sides
//! read the verified peer [`SpiffeId`] with [`peer_identity`].
//!
//! - [`IdentityCert`]: the current certificate for one identity, swapped atomically on rotation
//!   ([`IdentityCert::rotate`] renews at half-life from a [`CertificateSource`]).
//! - [`client_config`] / [`server_config`]: rustls configs over an [`IdentityCert`].
//! - [`server_auth_client_config`] / [`server_auth_server_config`]: the control-plane connection,
//!   where only the server (mesh-control) has a certificate and callers send bearer tokens.
//!
//! [`CertificateSource`]: crate::identity::CertificateSource

mod config;
mod store;
mod verify;

use std::sync::Arc;

pub use config::{
    client_config, client_config_with_time, server_auth_client_config, server_auth_server_config,
    server_config, server_config_with_time,
};
use rustls::crypto::CryptoProvider;
pub use store::{IdentityCert, RenewError};

use crate::identity::{cert::LeafInfo, SpiffeId};

/// The only application protocol spoken inside the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors from TLS set-up and peer checks.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the configuration or the key.
    #[error("tls configuration for {identity} rejected: {source}")]
    Config {
        identity: String,
        #[source]
        source: rustls::Error,
    },
    /// A trust bundle certificate cannot serve as an anchor.
    #[error("trust bundle certificate unusable as a trust anchor: {0}")]
    TrustAnchor(webpki::Error),
    /// The peer sent no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer certificate has no usable SPIFFE identity.
    #[error("peer certificate identity unreadable: {0}")]
    PeerIdentity(#[from] crate::identity::CertError),
    /// ALPN did not settle on h2.
    #[error("peer did not negotiate alpn h2 (got {0:?})")]
    Alpn(Option<String>),
}

/// The rustls provider used everywhere: ring, TLS 1.3 AES-GCM suites only.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(provider)
}

/// The verified peer identity of a completed handshake, also checking ALPN is `h2`.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, TlsError> {
    match conn.alpn_protocol() {
        Some(ALPN_H2) => {}
        other => {
            return Err(TlsError::Alpn(
                other.map(|p| String::from_utf8_lossy(p).into_owned()),
            ))
        }
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    Ok(LeafInfo::parse(leaf)?.identity)
}

#[cfg(test)]
mod tests;
