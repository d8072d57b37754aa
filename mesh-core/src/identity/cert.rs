//! Workload certificates: the leaf + chain + private key a tunnel presents for one identity, and
//! the CSR a workload key is certified with.
//!
//! Leaf keys are ECDSA P-256 and the CSR carries a URI SAN only (no subject), as in Istio ambient.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::SpiffeId;

/// Errors building or reading workload certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Key generation or CSR serialisation failed in rcgen.
    #[error("generating key or csr for {identity} failed: {source}")]
    Generate {
        identity: String,
        #[source]
        source: rcgen::Error,
    },
    /// A PEM block could not be decoded.
    #[error("invalid pem in {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    /// The chain holds no certificate.
    #[error("certificate chain for {what} is empty")]
    EmptyChain { what: &'static str },
    /// A certificate's DER does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// The leaf has no SPIFFE URI SAN, or more than one, or an invalid one.
    #[error("certificate must carry exactly one spiffe uri san, found {found:?}")]
    Identity { found: Vec<String> },
}

/// A private key and the PEM CSR that asks a CA to certify it.
pub struct CsrAndKey {
    /// PEM `CERTIFICATE REQUEST` with the identity as its only SAN.
    pub csr_pem: String,
    /// PEM PKCS#8 private key; never leaves the process that generated it.
    pub key_pem: String,
}

impl fmt::Debug for CsrAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrAndKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a fresh ECDSA P-256 key and a CSR for `identity` (URI SAN only, empty subject).
pub fn generate_csr(identity: &SpiffeId) -> Result<CsrAndKey, CertError> {
    let fail = |source| CertError::Generate {
        identity: identity.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(identity).map_err(fail)?];
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok(CsrAndKey {
        csr_pem: csr.pem().map_err(fail)?,
        key_pem: key.serialize_pem(),
    })
}

/// The URI SAN for an identity.
pub(crate) fn uri_san(identity: &SpiffeId) -> Result<SanType, rcgen::Error> {
    Ok(SanType::URI(identity.to_string().try_into()?))
}

/// A certificate chain and key for one workload identity, plus the trust bundle to verify peers.
pub struct WorkloadCert {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Builds from a PEM chain (leaf first), the leaf's PEM private key and the PEM trust bundle.
    /// The identity is read from the leaf's URI SAN.
    pub fn from_pem(
        chain_pem: &[String],
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, CertError> {
        let chain = chain_pem
            .iter()
            .map(|pem| parse_certs(pem, "certificate chain"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let leaf = chain.first().ok_or(CertError::EmptyChain {
            what: "workload certificate",
        })?;
        let info = LeafInfo::parse(leaf)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: "private key",
                detail: e.to_string(),
            })?;
        let roots = parse_certs(trust_bundle_pem, "trust bundle")?;
        Ok(Self {
            identity: info.identity,
            chain,
            key,
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The chain to present, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the leaf's private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Trust anchors (roots) used to verify peers.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to fetch a replacement: half-way through the validity period.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }
}

/// Decodes every `CERTIFICATE` block in `pem`; fails if there is none.
pub(crate) fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::EmptyChain { what });
    }
    Ok(certs)
}

/// What the tunnel needs from a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    pub(crate) identity: SpiffeId,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl LeafInfo {
    /// Parses the leaf's validity and its single SPIFFE URI SAN.
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let uris = uri_sans(&cert)?;
        let identity = match uris.as_slice() {
            [one] => one.parse::<SpiffeId>().map_err(|_| CertError::Identity {
                found: uris.clone(),
            })?,
            _ => return Err(CertError::Identity { found: uris }),
        };
        let validity = cert.validity();
        Ok(Self {
            identity,
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
        })
    }
}

fn uri_sans(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Vec<String>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let names = san
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or(&[]);
    Ok(names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;

    use super::*;

    #[test]
    fn csr_has_p256_key_and_only_the_uri_san() {
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let csr = generate_csr(&id).unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes())
                .unwrap();
        let (_, req) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
        req.verify_signature().unwrap();
        assert_eq!(req.certification_request_info.subject.iter().count(), 0);
        let mut sans = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().map(|n| n.to_string()));
            }
        }
        assert_eq!(sans, vec![format!("URI({id})")]);
        let key = KeyPair::from_pem(&csr.key_pem).unwrap();
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn csr_debug_hides_the_key() {
        let id: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let csr = generate_csr(&id).unwrap();
        assert!(!format!("{csr:?}").contains("PRIVATE KEY"));
    }
}
