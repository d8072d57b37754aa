//! Tests for the CA primitive.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::*;
use crate::identity::{cert::generate_csr, WorkloadCert};

fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn signs_leaf_with_only_the_requested_identity() {
    let ca = CertificateAuthority::self_signed("cluster.local").unwrap();
    let wanted = id("spiffe://cluster.local/ns/ns1/sa/sa1");
    // The CSR asks for another name: the CA must ignore it.
    let csr = generate_csr(&id("spiffe://cluster.local/ns/kube-system/sa/admin")).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, &wanted, DAY).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca.trust_bundle_pem());
    let cert = WorkloadCert::from_pem(&chain, &csr.key_pem, &ca.trust_bundle_pem()).unwrap();
    assert_eq!(cert.identity(), &wanted);
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert_eq!(life, DAY + CLOCK_SKEW);
    assert_eq!(cert.refresh_at(), cert.not_before() + life / 2);
}

#[test]
fn rejects_foreign_trust_domain_and_bad_validity() {
    let ca = CertificateAuthority::self_signed("cluster.local").unwrap();
    let foreign = id("spiffe://other.domain/ns/a/sa/b");
    let csr = generate_csr(&foreign).unwrap();
    let err = ca.sign_csr(&csr.csr_pem, &foreign, DAY).unwrap_err();
    assert!(matches!(err, CaError::ForeignIdentity { .. }), "{err}");
    let local = id("spiffe://cluster.local/ns/a/sa/b");
    for bad in [Duration::ZERO, MAX_LEAF_VALIDITY + Duration::from_secs(1)] {
        let err = ca.sign_csr(&csr.csr_pem, &local, bad).unwrap_err();
        assert!(matches!(err, CaError::Validity { .. }), "{err}");
    }
    assert!(CertificateAuthority::self_signed("Bad Domain").is_err());
}

#[test]
fn rejects_tampered_or_garbage_csr() {
    let ca = CertificateAuthority::self_signed("cluster.local").unwrap();
    let local = id("spiffe://cluster.local/ns/a/sa/b");
    let err = ca.sign_csr("not a csr", &local, DAY).unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");
    // Flip one byte inside the DER of a real CSR.
    let csr = generate_csr(&local).unwrap();
    let der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &bytes);
    let err = ca.sign_csr(&tampered, &local, DAY).unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");
}

/// Builds root + intermediate with rcgen and returns (intermediate+root chain PEM, intermediate key).
fn intermediate_chain() -> (String, String, String) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = CertificateParams::default();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
    (
        format!("{}{}", int.pem(), root.pem()),
        int_key.serialize_pem(),
        root.pem(),
    )
}

#[test]
fn plugged_in_intermediate_signs_full_chain() {
    let (chain_pem, key_pem, root_pem) = intermediate_chain();
    let ca = CertificateAuthority::from_pem(&chain_pem, &key_pem).unwrap();
    assert_eq!(ca.trust_bundle_pem(), root_pem);
    let local = id("spiffe://any.domain/ns/a/sa/b");
    let csr = generate_csr(&local).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, &local, DAY).unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], root_pem);
    assert_eq!(format!("{}{}", chain[1], chain[2]), chain_pem);
}

#[test]
fn plugged_in_ca_must_match_key_and_be_a_ca() {
    let (chain_pem, _, _) = intermediate_chain();
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let err = CertificateAuthority::from_pem(&chain_pem, &other_key.serialize_pem()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");
    // A leaf is not a CA.
    let ca = CertificateAuthority::self_signed("td").unwrap();
    let local = id("spiffe://td/ns/a/sa/b");
    let csr = generate_csr(&local).unwrap();
    let chain = ca.sign_csr(&csr.csr_pem, &local, DAY).unwrap();
    let err = CertificateAuthority::from_pem(&chain[0], &csr.key_pem).unwrap_err();
    assert!(matches!(err, CaError::NotCa), "{err}");
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (input, expected) in vectors {
        assert_eq!(base64_encode(input.as_bytes()), expected);
    }
}
