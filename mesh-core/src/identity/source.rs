//! Where workload certificates come from.
//!
//! [`CertificateSource`] is the seam between the tunnel and the CA: the tunnel asks for a fresh
//! certificate for an identity; the source generates a key and CSR and has it signed. The
//! [`InProcessSource`] signs with a local [`CertificateAuthority`] (tests, static mode); the
//! control-plane gRPC source plugs in the same way.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;

use super::{
    ca::{CaError, CertificateAuthority},
    cert::{generate_csr, CertError, WorkloadCert},
    SpiffeId,
};

/// Default workload certificate lifetime (Istio: 24 h).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Errors fetching a certificate.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Key or CSR generation, or reading the returned chain, failed.
    #[error("certificate for {identity}: {source}")]
    Cert {
        identity: String,
        #[source]
        source: CertError,
    },
    /// The CA refused or failed to sign.
    #[error("ca refused to sign for {identity}: {source}")]
    Ca {
        identity: String,
        #[source]
        source: CaError,
    },
    /// The CA service answered with an error status.
    #[error("ca service refused {identity}: {code:?}: {message}")]
    Rpc {
        identity: String,
        code: tonic::Code,
        message: String,
    },
    /// The CA service did not answer in time.
    #[error("ca service did not answer for {identity} within {after:?}, is the control plane reachable?")]
    Timeout { identity: String, after: Duration },
    /// The CA issued a certificate for another identity.
    #[error("ca issued a certificate for {issued} when {requested} was requested")]
    WrongIdentity { requested: String, issued: String },
    /// The source is misconfigured.
    #[error("certificate source misconfigured: {0}")]
    Config(String),
}

/// Obtains a newly signed certificate for a workload identity.
pub trait CertificateSource: Send + Sync + 'static {
    /// Generates a key, has it certified for `identity` and returns the result.
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>>;
}

/// Signs with an in-process CA. CSR generation and signing run on the blocking pool because
/// ECDSA key generation is CPU work.
#[derive(Debug, Clone)]
pub struct InProcessSource {
    ca: Arc<CertificateAuthority>,
    validity: Duration,
}

impl InProcessSource {
    /// A source that issues certificates valid for `validity`.
    pub fn new(ca: Arc<CertificateAuthority>, validity: Duration) -> Self {
        Self { ca, validity }
    }

    /// The CA behind this source.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Issues synchronously (used by [`CertificateSource::fetch`] and by tests).
    pub fn issue(&self, identity: &SpiffeId) -> Result<WorkloadCert, SourceError> {
        let cert_err = |source| SourceError::Cert {
            identity: identity.to_string(),
            source,
        };
        let csr = generate_csr(identity).map_err(cert_err)?;
        let chain = self
            .ca
            .sign_csr(&csr.csr_pem, identity, self.validity)
            .map_err(|source| SourceError::Ca {
                identity: identity.to_string(),
                source,
            })?;
        WorkloadCert::from_pem(&chain, &csr.key_pem, &self.ca.trust_bundle_pem()).map_err(cert_err)
    }
}

impl CertificateSource for InProcessSource {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        let this = self.clone();
        let identity = identity.clone();
        Box::pin(async move {
            let id = identity.clone();
            match tokio::task::spawn_blocking(move || this.issue(&id)).await {
                Ok(result) => result,
                // The closure does not panic; a join error means the runtime is shutting down.
                Err(_) => Err(SourceError::Cert {
                    identity: identity.to_string(),
                    source: CertError::EmptyChain {
                        what: "issuance cancelled by runtime shutdown",
                    },
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_source_issues_for_the_identity() {
        let ca = Arc::new(CertificateAuthority::self_signed("cluster.local").unwrap());
        let source = InProcessSource::new(ca, DEFAULT_VALIDITY);
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = source.fetch(&id).await.unwrap();
        assert_eq!(cert.identity(), &id);
        assert_eq!(cert.chain().len(), 2);
        let foreign: SpiffeId = "spiffe://elsewhere/ns/a/sa/b".parse().unwrap();
        assert!(matches!(
            source.fetch(&foreign).await,
            Err(SourceError::Ca { .. })
        ));
    }
}
