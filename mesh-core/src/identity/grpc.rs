//! Certificates from the control plane's CA over gRPC (`CertificateService.CreateCertificate`,
//! Istio's `IstioCertificateService` shape).
//!
//! The key never leaves this process: a fresh P-256 key and CSR are generated per request and
//! only the CSR is sent. The returned chain must carry exactly the requested identity; the trust
//! bundle comes from configuration, never from the CA's answer.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tonic::{metadata::MetadataValue, transport::Channel};

use super::{cert::generate_csr, CertificateSource, SourceError, SpiffeId, WorkloadCert};
use crate::proto::control::v1::{
    certificate_service_client::CertificateServiceClient, CreateCertificateRequest,
};

/// Bound on one CreateCertificate call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`CertificateSource`] backed by the mesh CA service.
#[derive(Clone)]
pub struct GrpcSource {
    client: CertificateServiceClient<Channel>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    trust_bundle_pem: Arc<str>,
    validity: Duration,
}

impl std::fmt::Debug for GrpcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcSource")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

impl GrpcSource {
    /// A source calling the CA on `channel`. `token`, when set, is sent as
    /// `authorization: Bearer <token>`; `trust_bundle_pem` are the roots peers are verified with.
    pub fn new(
        channel: Channel,
        token: Option<&str>,
        trust_bundle_pem: &str,
        validity: Duration,
    ) -> Result<Self, SourceError> {
        let authorization = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| SourceError::Config("bearer token is not printable ascii".into()))?;
        Ok(Self {
            client: CertificateServiceClient::new(channel),
            authorization,
            trust_bundle_pem: trust_bundle_pem.into(),
            validity,
        })
    }

    async fn request(self, identity: SpiffeId) -> Result<WorkloadCert, SourceError> {
        let cert_err = |source| SourceError::Cert {
            identity: identity.to_string(),
            source,
        };
        let id = identity.clone();
        let csr = tokio::task::spawn_blocking(move || generate_csr(&id))
            .await
            .map_err(|_| SourceError::Config("csr generation cancelled".into()))?
            .map_err(cert_err)?;
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr: csr.csr_pem.clone(),
            validity_duration: i64::try_from(self.validity.as_secs()).unwrap_or(i64::MAX),
            identity: identity.to_string(),
        });
        request.set_timeout(REQUEST_TIMEOUT);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let mut client = self.client.clone();
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.create_certificate(request))
            .await
            .map_err(|_| SourceError::Timeout {
                identity: identity.to_string(),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|status| SourceError::Rpc {
                identity: identity.to_string(),
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        let chain = response.into_inner().cert_chain;
        let cert = WorkloadCert::from_pem(&chain, &csr.key_pem, &self.trust_bundle_pem)
            .map_err(cert_err)?;
        if cert.identity() != &identity {
            return Err(SourceError::WrongIdentity {
                requested: identity.to_string(),
                issued: cert.identity().to_string(),
            });
        }
        Ok(cert)
    }
}

impl CertificateSource for GrpcSource {
    fn fetch(&self, identity: &SpiffeId) -> BoxFuture<'static, Result<WorkloadCert, SourceError>> {
        Box::pin(self.clone().request(identity.clone()))
    }
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
