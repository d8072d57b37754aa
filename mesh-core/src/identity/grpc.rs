//! Certificates from the control plane's CA over gRPC (`CertificateService.CreateCertificate`,
//! Istio's `IstioCertificateService` shape).
//!
//! The key never leaves this process: a fresh P-256 key and CSR are generated per request and
//! only the CSR is sent. The returned chain must carry exactly the requested identity; the trust
//! bundle comes from configuration, never from the CA's answer.
//!
//! Callers prove themselves with a [`BearerToken`]. A token file is re-read on every request,
//! because Kubernetes rotates projected service-account tokens (kubelet swaps the file
//! atomically, well before `expirationSeconds`): a token read once at start-up expires under a
//! long-running process. Feed clients should attach their token with [`BearerToken::attach`]
//! too, so that every reconnect presents the current token.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use super::{cert::generate_csr, CertificateSource, SourceError, SpiffeId, WorkloadCert};
use crate::proto::control::v1::{
    certificate_service_client::CertificateServiceClient, CreateCertificateRequest,
};

/// Bound on one CreateCertificate call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest token file read (projected tokens are about 1 KiB).
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Errors producing the `authorization` header.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("cannot read token file {path}: {source} (is the projected service-account token volume mounted?)")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file is implausibly large.
    #[error("token file {path} is larger than {limit} bytes")]
    TooLarge {
        /// File path.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The token is empty.
    #[error("token from {origin} is empty")]
    Empty {
        /// The file path, or `inline`.
        origin: String,
    },
    /// The token cannot be sent as a header value.
    #[error("token from {origin} is not printable ascii")]
    NotAscii {
        /// The file path, or `inline`.
        origin: String,
    },
}

/// What a caller sends as `authorization: Bearer <token>`.
#[derive(Clone)]
pub enum BearerToken {
    /// A fixed token (e.g. a bootstrap token), checked once.
    Static(MetadataValue<Ascii>),
    /// A token file, re-read on every request (Kubernetes projected tokens rotate).
    File(PathBuf),
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(_) => f.write_str("BearerToken::Static(<redacted>)"),
            Self::File(path) => f.debug_tuple("BearerToken::File").field(path).finish(),
        }
    }
}

/// `Bearer <token>` as a header value; `origin` names the token's source in errors.
fn header_value(token: &str, origin: &str) -> Result<MetadataValue<Ascii>, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            origin: origin.to_owned(),
        });
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| TokenError::NotAscii {
            origin: origin.to_owned(),
        })
}

/// Reads at most [`MAX_TOKEN_FILE`] bytes of `path`.
async fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(TokenError::TooLarge {
            path: path.to_owned(),
            limit: MAX_TOKEN_FILE,
        });
    }
    String::from_utf8(bytes).map_err(|_| TokenError::NotAscii {
        origin: path.display().to_string(),
    })
}

impl BearerToken {
    /// A fixed token; surrounding whitespace is ignored.
    pub fn inline(token: &str) -> Result<Self, TokenError> {
        header_value(token, "inline").map(Self::Static)
    }

    /// A token file, read afresh for every request.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }

    /// The `authorization` header value for the next request.
    pub async fn header(&self) -> Result<MetadataValue<Ascii>, TokenError> {
        match self {
            Self::Static(value) => Ok(value.clone()),
            Self::File(path) => {
                let text = read_token_file(path).await?;
                header_value(&text, &path.display().to_string())
            }
        }
    }

    /// Sets `authorization` on `request`.
    pub async fn attach<T>(&self, request: &mut tonic::Request<T>) -> Result<(), TokenError> {
        let value = self.header().await?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }
}

/// A [`CertificateSource`] backed by the mesh CA service.
#[derive(Clone)]
pub struct GrpcSource {
    client: CertificateServiceClient<Channel>,
    token: Option<BearerToken>,
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
    /// A token that rotates (a projected service-account token) needs [`Self::with_token`] and
    /// [`BearerToken::file`] instead.
    pub fn new(
        channel: Channel,
        token: Option<&str>,
        trust_bundle_pem: &str,
        validity: Duration,
    ) -> Result<Self, SourceError> {
        let token = token
            .map(BearerToken::inline)
            .transpose()
            .map_err(|e| SourceError::Config(e.to_string()))?;
        Ok(Self::with_token(channel, token, trust_bundle_pem, validity))
    }

    /// A source calling the CA on `channel`, authenticating with `token` (a token file is
    /// re-read for every certificate request).
    pub fn with_token(
        channel: Channel,
        token: Option<BearerToken>,
        trust_bundle_pem: &str,
        validity: Duration,
    ) -> Self {
        Self {
            client: CertificateServiceClient::new(channel),
            token,
            trust_bundle_pem: trust_bundle_pem.into(),
            validity,
        }
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
        if let Some(token) = &self.token {
            token
                .attach(&mut request)
                .await
                .map_err(|e| SourceError::Config(e.to_string()))?;
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
