//! Where workload certificates come from, per the `ca` section of the config.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_core::identity::{
    ca::CertificateAuthority, grpc::BearerToken, source::DEFAULT_VALIDITY, CertificateSource,
    GrpcSource, InProcessSource,
};

use crate::config::Config;

/// Why the configured certificate source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CaSourceError {
    /// A file named in `ca` could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `ca` keys do not go together.
    #[error("{0}")]
    Incomplete(&'static str),
    /// `ca.address` is not a valid URI.
    #[error("ca.address {address:?}: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The CA or its client could not be built from the files.
    #[error("certificate authority: {0}")]
    Build(String),
}

fn read_file(path: &Path) -> Result<String, CaSourceError> {
    std::fs::read_to_string(path).map_err(|source| CaSourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The control plane's CA service.
fn grpc_source(
    config: &Config,
    address: &str,
) -> Result<Arc<dyn CertificateSource>, CaSourceError> {
    let bundle_file = config
        .ca
        .trust_bundle_file
        .as_deref()
        .ok_or(CaSourceError::Incomplete(
            "ca.trust_bundle_file is required with ca.address",
        ))?;
    // Re-read for every certificate request: a projected service-account token rotates.
    let token = config.ca.token_file.clone().map(BearerToken::file);
    let channel = tonic::transport::Channel::from_shared(address.to_owned())
        .map_err(|e| CaSourceError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy();
    let validity = config.ca.workload_validity.unwrap_or(DEFAULT_VALIDITY);
    let bundle = read_file(bundle_file)?;
    Ok(Arc::new(GrpcSource::with_token(
        channel, token, &bundle, validity,
    )))
}

/// The certificate source `config.ca` describes: mesh-control's CA service when `ca.address` is
/// set, else an in-process CA from plugged-in files, else a self-signed one (single node).
pub fn from_config(config: &Config) -> Result<Arc<dyn CertificateSource>, CaSourceError> {
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
            return Err(CaSourceError::Incomplete(
                "ca.cert_chain_file and ca.key_file go together",
            ))
        }
    }
    .map_err(|e| CaSourceError::Build(e.to_string()))?;
    let validity = config.ca.workload_validity.unwrap_or(DEFAULT_VALIDITY);
    Ok(Arc::new(InProcessSource::new(Arc::new(ca), validity)))
}
