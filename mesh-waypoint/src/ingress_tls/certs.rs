//! The HTTPS ingress listener's server certificates, chosen by SNI.
//!
//! Each feed version's `tls_credentials` become an [`SniTable`] that replaces the previous one
//! atomically, so a handshake sees one version or the next, never a mix. Lookup: the exact host,
//! then the longest `*.suffix` wildcard covering it (any depth, as the Gateway's host matching),
//! then a `*` host. No SNI or no match: no certificate, and the handshake fails. A credential
//! that does not load is skipped with a warning; the others still serve.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use mesh_core::proto::control::v1 as pb;
use prometheus_client::metrics::{counter::Counter, family::Family};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::HandshakeLabels;

/// Why a credential (or one of its hosts) is skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The chain holds no PEM certificate.
    #[error("tls credential {name}: no pem certificate in the chain{detail}")]
    Chain {
        /// The credential's name (`namespace/secret`).
        name: String,
        /// What the parser said, if anything.
        detail: String,
    },
    /// The key is not a usable PEM private key.
    #[error("tls credential {name}: unusable private key: {detail}")]
    Key {
        /// The credential's name.
        name: String,
        /// What failed.
        detail: String,
    },
    /// The key does not belong to the leaf certificate.
    #[error("tls credential {name}: the private key does not match the leaf certificate")]
    Mismatch {
        /// The credential's name.
        name: String,
    },
    /// A host that is neither a name, a `*.suffix` wildcard nor `*`.
    #[error("tls credential {name}: host {host:?} is not a server name, *.suffix or *; skipped")]
    Host {
        /// The credential's name.
        name: String,
        /// The host.
        host: String,
    },
}

/// Certificates by server name for one feed version.
#[derive(Debug, Default)]
pub struct SniTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    any: Option<Arc<CertifiedKey>>,
}

fn certified_key(credential: &pb::TlsCredential) -> Result<CertifiedKey, CredentialError> {
    let name = || credential.name.clone();
    let chain = CertificateDer::pem_slice_iter(credential.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::Chain {
            name: name(),
            detail: format!(": {e}"),
        })?;
    if chain.is_empty() {
        let detail = String::new();
        return Err(CredentialError::Chain {
            name: name(),
            detail,
        });
    }
    let key_error = |detail: String| CredentialError::Key {
        name: name(),
        detail,
    };
    let key = PrivateKeyDer::from_pem_slice(credential.key_pem.as_bytes())
        .map_err(|e| key_error(e.to_string()))?;
    let signer = any_supported_type(&key).map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|_| CredentialError::Mismatch { name: name() })?;
    Ok(certified)
}

fn valid_name(host: &str) -> bool {
    !host.is_empty() && !host.contains('*') && !host.starts_with('.') && !host.ends_with('.')
}

impl SniTable {
    /// The table for `credentials`, and what was skipped. For a host named twice, the first
    /// credential wins.
    pub fn build(credentials: &[pb::TlsCredential]) -> (Self, Vec<CredentialError>) {
        let mut table = Self::default();
        let mut skipped = Vec::new();
        for credential in credentials {
            match certified_key(credential) {
                Ok(key) => table.insert(credential, &Arc::new(key), &mut skipped),
                Err(err) => skipped.push(err),
            }
        }
        (table, skipped)
    }

    fn insert(
        &mut self,
        credential: &pb::TlsCredential,
        key: &Arc<CertifiedKey>,
        skipped: &mut Vec<CredentialError>,
    ) {
        for host in &credential.hosts {
            let host = host.to_ascii_lowercase();
            let slot = match host.strip_prefix("*.") {
                _ if host == "*" => {
                    self.any.get_or_insert_with(|| key.clone());
                    continue;
                }
                Some(suffix) if valid_name(suffix) => self.wildcard.entry(suffix.to_owned()),
                None if valid_name(&host) => self.exact.entry(host),
                _ => {
                    let name = credential.name.clone();
                    skipped.push(CredentialError::Host { name, host });
                    continue;
                }
            };
            slot.or_insert_with(|| key.clone());
        }
    }

    /// The certificate for server name `sni`, if any.
    pub fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let host = sni.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&host) {
            return Some(key.clone());
        }
        let mut rest = host.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key.clone());
            }
            rest = parent;
        }
        self.any.clone()
    }

    /// How many host entries the table holds.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.any.is_some())
    }

    /// Whether the table holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Chooses the certificate by SNI from the table in force; swapped with each feed version.
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<SniTable>,
    failures: Family<HandshakeLabels, Counter>,
}

impl CertResolver {
    /// An empty resolver (every handshake fails until a version brings certificates);
    /// refused handshakes are counted in `failures`.
    pub fn new(failures: Family<HandshakeLabels, Counter>) -> Self {
        Self {
            table: ArcSwap::from_pointee(SniTable::default()),
            failures,
        }
    }

    /// Puts `credentials` in force for the next handshakes; logs what is skipped.
    pub fn apply(&self, version: u64, credentials: &[pb::TlsCredential]) {
        let (table, skipped) = SniTable::build(credentials);
        for problem in &skipped {
            tracing::warn!(version, %problem, "tls credential skipped");
        }
        tracing::debug!(version, hosts = table.len(), "tls certificates in force");
        self.table.store(Arc::new(table));
    }

    fn refuse(&self, reason: &'static str, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        tracing::debug!(reason, sni, "no certificate for tls handshake");
        self.failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
        None
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return self.refuse("no_sni", None);
        };
        match self.table.load().lookup(sni) {
            Some(key) => Some(key),
            None => self.refuse("unknown_sni", Some(sni)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn credential(name: &str, hosts: &[&str], cn: &str) -> pb::TlsCredential {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        pb::TlsCredential {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            name: name.to_owned(),
        }
    }

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn exact_then_longest_wildcard_then_any() {
        let creds = [
            credential("e/exact", &["Shop.Example.com"], "shop.example.com"),
            credential("e/wild", &["*.example.com"], "*.example.com"),
            credential("e/deep", &["*.eu.example.com"], "*.eu.example.com"),
            credential("e/any", &["*"], "any"),
        ];
        let (table, skipped) = SniTable::build(&creds);
        assert!(skipped.is_empty(), "{skipped:?}");
        let chosen = |sni: &str| table.lookup(sni).map(|k| leaf(&k));
        let pem_leaf = |i: usize| {
            let der = CertificateDer::from_pem_slice(creds[i].cert_chain_pem.as_bytes());
            Some(der.expect("pem").to_vec())
        };
        assert_eq!(chosen("shop.example.com"), pem_leaf(0));
        assert_eq!(chosen("SHOP.example.com"), pem_leaf(0));
        assert_eq!(chosen("api.example.com"), pem_leaf(1));
        assert_eq!(chosen("a.b.example.com"), pem_leaf(1));
        assert_eq!(chosen("api.eu.example.com"), pem_leaf(2));
        assert_eq!(
            chosen("example.com"),
            pem_leaf(3),
            "a wildcard needs a label"
        );
        let (no_any, _) = SniTable::build(&creds[..3]);
        assert!(no_any.lookup("example.org").is_none());
    }

    #[test]
    fn broken_credentials_are_skipped_and_the_rest_serve() {
        let good = credential(
            "e/good",
            &["good.example.com", "bad*host"],
            "good.example.com",
        );
        let mut bad_chain = credential("e/chain", &["a.example.com"], "a.example.com");
        bad_chain.cert_chain_pem = "garbage".into();
        let mut bad_key = credential("e/key", &["b.example.com"], "b.example.com");
        bad_key.key_pem = "garbage".into();
        let mut mismatch = credential("e/mismatch", &["c.example.com"], "c.example.com");
        mismatch.key_pem = good.key_pem.clone();
        let (table, skipped) = SniTable::build(&[bad_chain, bad_key, mismatch, good]);
        let kinds: Vec<_> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 4, "{kinds:?}");
        assert!(
            matches!(skipped[0], CredentialError::Chain { .. }),
            "{kinds:?}"
        );
        assert!(
            matches!(skipped[1], CredentialError::Key { .. }),
            "{kinds:?}"
        );
        assert!(
            matches!(skipped[2], CredentialError::Mismatch { .. }),
            "{kinds:?}"
        );
        assert!(
            matches!(skipped[3], CredentialError::Host { .. }),
            "{kinds:?}"
        );
        assert_eq!(table.len(), 1);
        assert!(table.lookup("good.example.com").is_some());
    }
}
