//! The certificate authority primitive: signs a workload CSR for exactly one SPIFFE identity.
//!
//! The control plane builds the mesh CA service on this; tests and static mode use it directly.
//! The leaf always carries only the identity's URI SAN, whatever the CSR asked for, so a workload
//! cannot obtain a certificate for a name it was not authorised for.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{pem::PemObject, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer};

use super::{
    cert::{parse_certs, uri_san, CertError},
    spiffe::validate_trust_domain,
    IdentityError, SpiffeId,
};

/// Lifetime of a self-signed root.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves are back-dated this much to tolerate clock skew between nodes.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Longest leaf validity the CA will issue.
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The trust domain is invalid.
    #[error(transparent)]
    TrustDomain(#[from] IdentityError),
    /// The identity belongs to another trust domain than this CA's.
    #[error("identity {identity} is outside this ca's trust domain {trust_domain}")]
    ForeignIdentity {
        identity: String,
        trust_domain: String,
    },
    /// The CA certificate or chain could not be read.
    #[error("invalid ca chain: {0}")]
    Chain(#[from] CertError),
    /// The CA private key could not be read.
    #[error("invalid ca private key: {0}")]
    Key(rcgen::Error),
    /// The private key does not belong to the signing certificate.
    #[error("ca private key does not match the first certificate of the chain")]
    KeyMismatch,
    /// The signing certificate is not a CA.
    #[error("first certificate of the ca chain is not a ca (basicConstraints cA is false)")]
    NotCa,
    /// The CSR is malformed or its signature is wrong.
    #[error("invalid csr: {0}")]
    Csr(String),
    /// Zero or excessive validity requested.
    #[error("requested validity {requested:?} must be between 1s and {MAX_LEAF_VALIDITY:?}")]
    Validity { requested: Duration },
    /// rcgen failed to build or sign a certificate.
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

/// A CA able to sign workload certificates: a self-signed root or a plugged-in root/intermediate.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM chain, signing certificate first, root last.
    chain_pem: Vec<String>,
    /// When known (self-signed), identities are checked against it.
    trust_domain: Option<String>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new ECDSA P-256 root for `trust_domain`, valid ten years.
    pub fn self_signed(trust_domain: &str) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "weft mesh root ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ROOT_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(CaError::Sign)?;
        Ok(Self {
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
            chain_pem: vec![cert.pem()],
            trust_domain: Some(trust_domain.to_owned()),
        })
    }

    /// A plugged-in CA: `cert_chain_pem` holds the signing certificate first and the root last
    /// (one certificate when the CA is a root); `key_pem` is the signing certificate's key.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let chain = parse_certs(cert_chain_pem, "ca chain")?;
        let signing = &chain[0];
        let key = KeyPair::from_pem(key_pem).map_err(CaError::Key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(signing)
            .map_err(|e| CaError::Chain(CertError::Parse(e.to_string())))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        if !parsed.is_ca() {
            return Err(CaError::NotCa);
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(signing, key).map_err(CaError::Key)?;
        let chain_pem = chain.iter().map(der_to_pem).collect();
        Ok(Self {
            issuer,
            chain_pem,
            trust_domain: None,
            not_after,
        })
    }

    /// Signs `csr_pem` for `identity`. Returns the PEM chain, leaf first and root last.
    ///
    /// Only the CSR's public key and signature are used: the leaf's SAN is `identity`, its
    /// validity `validity` (capped at the CA's own expiry), and it is usable for both TLS client
    /// and server authentication.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Duration,
    ) -> Result<Vec<String>, CaError> {
        self.check_identity(identity)?;
        if validity.is_zero() || validity > MAX_LEAF_VALIDITY {
            return Err(CaError::Validity {
                requested: validity,
            });
        }
        let public_key = csr_public_key(csr_pem)?;
        let params = self.leaf_params(identity, validity)?;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        let mut chain = Vec::with_capacity(self.chain_pem.len() + 1);
        chain.push(leaf.pem());
        chain.extend(self.chain_pem.iter().cloned());
        Ok(chain)
    }

    /// The root certificate(s) peers must trust, as PEM.
    pub fn trust_bundle_pem(&self) -> String {
        // The chain is ordered signing-cert first, root last.
        self.chain_pem.last().cloned().unwrap_or_default()
    }

    /// The trust domain this CA was created for, when known.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    fn check_identity(&self, identity: &SpiffeId) -> Result<(), CaError> {
        match &self.trust_domain {
            Some(td) if td != identity.trust_domain() => Err(CaError::ForeignIdentity {
                identity: identity.to_string(),
                trust_domain: td.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn leaf_params(
        &self,
        identity: &SpiffeId,
        validity: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(identity).map_err(CaError::Sign)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::from(SystemTime::now());
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }
}

/// Decodes the CSR, checks its self-signature and returns its public key.
fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CaError::Csr(e.to_string()))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CaError::Csr(e.to_string()))?;
    csr.verify_signature()
        .map_err(|e| CaError::Csr(format!("bad signature: {e}")))?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CaError::Csr(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign(rcgen::Error::RingUnspecified))?;
    // Positive INTEGER: clear the top bit.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn der_to_pem(der: &rustls_pki_types::CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", der.as_ref())
}

/// Minimal RFC 7468 encoder (64-column base64 lines).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
