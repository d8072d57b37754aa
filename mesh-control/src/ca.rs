//! `CertificateService.CreateCertificate`: the mesh CA over gRPC.
//!
//! The CA is a self-signed root by default, or a user-provided root/intermediate (cert chain +
//! key files). Identities must be in this CA's trust domain. A node caller may only obtain
//! identities of pods scheduled on that node (per the latest snapshot), and only of pods the
//! node tunnels for: enrolled pods, and waypoint and Istio ingress gateway pods (never captured
//! themselves, but they speak HBONE with their own service account's certificate). A workload
//! caller (a waypoint or gateway pod with its own token) may only obtain its own identity
//! ([`crate::auth::workload::may_certify`]).
//! Everything else is refused, and each refusal says why.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::identity::ca::{CaError, CertificateAuthority};
use mesh_core::identity::SpiffeId;
use mesh_core::proto::control::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{caller_when_synced, workload, Authenticator, Caller};
use crate::feed::hub::Hub;
use crate::model::Snapshot;

/// Where the CA key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Generate a root at startup (certificates do not survive a restart of the service).
    SelfSigned,
    /// Files: PEM chain (signing certificate first, root last) and the signing key.
    Files {
        /// Chain file.
        cert_chain: PathBuf,
        /// Key file.
        key: PathBuf,
    },
}

/// Errors setting up the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    /// A CA file cannot be read.
    #[error("cannot read ca file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA material is invalid.
    #[error("invalid ca material: {0}")]
    Ca(#[from] CaError),
}

/// Builds the CA from its source.
pub fn load_ca(
    source: &CaSource,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSetupError> {
    match source {
        CaSource::SelfSigned => Ok(CertificateAuthority::self_signed(trust_domain)?),
        CaSource::Files { cert_chain, key } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).map_err(|source| CaSetupError::Read {
                    path: path.clone(),
                    source,
                })
            };
            Ok(CertificateAuthority::from_pem(
                &read(cert_chain)?,
                &read(key)?,
            )?)
        }
    }
}

/// CA service settings.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Trust domain identities must belong to.
    pub trust_domain: String,
    /// Validity when the request asks for none.
    pub default_validity: Duration,
    /// Longest validity granted (requests are capped, not refused).
    pub max_validity: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            default_validity: Duration::from_secs(24 * 3600),
            max_validity: Duration::from_secs(24 * 3600),
        }
    }
}

/// The CA gRPC service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    hub: Arc<Hub>,
    settings: CaSettings,
}

impl CaService {
    /// A service signing with `ca`, authorising against the snapshots in `hub`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        hub: Arc<Hub>,
        settings: CaSettings,
    ) -> Self {
        Self {
            ca,
            auth,
            hub,
            settings,
        }
    }

    fn validity(&self, requested_secs: i64) -> Duration {
        match u64::try_from(requested_secs) {
            Ok(0) | Err(_) => self.settings.default_validity,
            Ok(secs) => Duration::from_secs(secs).min(self.settings.max_validity),
        }
    }

    /// Checks that `caller` may obtain `identity`.
    fn authorise(&self, caller: &Caller, identity: &SpiffeId) -> Result<(), Status> {
        if identity.trust_domain() != self.settings.trust_domain {
            return Err(Status::permission_denied(format!(
                "identity {identity} is outside trust domain {}",
                self.settings.trust_domain
            )));
        }
        let wanted = identity.to_string();
        let snapshot = self.hub.latest();
        match caller {
            Caller::Node(n) => node_may_certify(&snapshot, &n.node, &wanted),
            Caller::Workload(w) => Ok(workload::may_certify(&snapshot, w, &wanted)?),
        }
    }
}

/// Checks that `node` runs an enrolled, waypoint or ingress gateway pod with identity `wanted`.
fn node_may_certify(snapshot: &Snapshot, node: &str, wanted: &str) -> Result<(), Status> {
    let mut candidates = snapshot
        .workloads
        .values()
        .filter(|w| w.node == node && w.identity == wanted);
    let tunnelled = |uid: &str| snapshot.is_waypoint_pod(uid) || snapshot.is_gateway_pod(uid);
    if candidates.any(|w| w.enrolled || tunnelled(&w.uid)) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {node:?} runs no enrolled pod (nor waypoint or gateway pod) with identity {wanted}"
        )))
    }
}

fn sign_error(err: CaError) -> Status {
    match err {
        CaError::Csr(_) | CaError::Validity { .. } => Status::invalid_argument(err.to_string()),
        CaError::ForeignIdentity { .. } => Status::permission_denied(err.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl pb::certificate_service_server::CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<pb::CreateCertificateRequest>,
    ) -> Result<Response<pb::CreateCertificateResponse>, Status> {
        let who = caller_when_synced(self.auth.as_ref(), &self.hub, request.metadata()).await?;
        let request = request.into_inner();
        let identity = SpiffeId::from_str(&request.identity)
            .map_err(|e| Status::invalid_argument(format!("invalid identity: {e}")))?;
        self.authorise(&who, &identity)?;
        let validity = self.validity(request.validity_duration);
        let cert_chain = self
            .ca
            .sign_csr(&request.csr, &identity, validity)
            .map_err(sign_error)?;
        tracing::info!(caller = %who, %identity, ?validity, "issued workload certificate");
        Ok(Response::new(pb::CreateCertificateResponse { cert_chain }))
    }
}

#[cfg(test)]
mod tests;
