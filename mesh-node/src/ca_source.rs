//! Where workload certificates come from, per the `ca` section of the config.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_core::control::{self, ControlEndpoint, ControlTls};
use mesh_core::identity::{
    ca::CertificateAuthority, grpc::BearerToken, source::DEFAULT_VALIDITY, CertificateSource,
    GrpcSource, InProcessSource, SpiffeId,
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

/// mesh-control at `address`, verified (for `https://`) with `ca.trust_bundle_file` and
/// `ca.control_identity`: the CA service and the node feed share it.
pub fn control_endpoint(config: &Config, address: &str) -> Result<ControlEndpoint, CaSourceError> {
    let invalid = |reason: String| CaSourceError::Address {
        address: address.to_owned(),
        reason,
    };
    let identity: SpiffeId = match &config.ca.control_identity {
        Some(text) => text
            .parse()
            .map_err(|e| invalid(format!("ca.control_identity {text:?}: {e}")))?,
        None => control::default_identity(&config.trust_domain)
            .map_err(|e| invalid(format!("trust domain: {e}")))?,
    };
    let tls = config
        .ca
        .trust_bundle_file
        .clone()
        .map(|trust_bundle_file| ControlTls {
            trust_bundle_file,
            identity,
        });
    ControlEndpoint::new(address, tls).map_err(|e| invalid(e.to_string()))
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
    let channel = control_endpoint(config, address)?.connect_lazy(Duration::from_secs(10));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ca: &str) -> Config {
        Config::from_yaml(&format!(
            "node_name: n1\ntrust_domain: mesh.example\nca:\n{ca}"
        ))
        .expect("config parses")
    }

    #[test]
    fn the_control_endpoint_follows_the_ca_section() {
        let with_bundle = config("  trust_bundle_file: /roots.pem\n");
        let endpoint = control_endpoint(&with_bundle, "https://control:15012").expect("tls");
        let tls = endpoint.tls().expect("https is tls");
        assert_eq!(
            tls.identity.to_string(),
            "spiffe://mesh.example/ns/weft-system/sa/mesh-control",
            "default identity in the node's trust domain"
        );
        assert_eq!(tls.trust_bundle_file, PathBuf::from("/roots.pem"));

        let custom = config(
            "  trust_bundle_file: /roots.pem\n  control_identity: spiffe://mesh.example/ns/mesh/sa/ctl\n",
        );
        let endpoint = control_endpoint(&custom, "https://control:15012").expect("tls");
        assert_eq!(
            endpoint.tls().expect("tls").identity.to_string(),
            "spiffe://mesh.example/ns/mesh/sa/ctl"
        );

        let no_bundle = control_endpoint(&config("  token_file: /t\n"), "https://control:15012");
        let error = no_bundle.unwrap_err().to_string();
        assert!(error.contains("no trust bundle"), "{error}");
        let bad = config("  trust_bundle_file: /r.pem\n  control_identity: mesh-control\n");
        let error = control_endpoint(&bad, "https://control:15012")
            .unwrap_err()
            .to_string();
        assert!(error.contains("ca.control_identity"), "{error}");
        let plaintext = control_endpoint(&with_bundle, "http://control:15012").expect("lab");
        assert!(plaintext.tls().is_none());
    }
}
