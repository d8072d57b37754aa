//! `kubernetes.io/tls` Secrets: the server certificates ingress Gateways terminate TLS with.
//!
//! Only Secrets of that type are kept (others are skipped when parsed, and the Kubernetes
//! watcher lists only that type), and only their `tls.crt` and `tls.key`. A Gateway server that
//! names one gets its certificate once [`server_tls`] has checked that both keys are there,
//! that they parse as PEM, and that the key belongs to the leaf certificate: a broken Secret
//! leaves that server out with a diagnostic rather than failing handshakes at the gateway.

use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::model::{PrivateKeyPem, ServerTls};

/// The Secret `type` the mesh reads.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The key holding the PEM certificate chain.
pub const CERT_KEY: &str = "tls.crt";
/// The key holding the PEM private key.
pub const KEY_KEY: &str = "tls.key";

/// The parts of a `kubernetes.io/tls` Secret the mesh uses (`data`, or `stringData` in local
/// files); the key's `Debug` is redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSecret {
    /// `tls.crt`, when present.
    pub cert_chain: Option<Vec<u8>>,
    /// `tls.key`, when present.
    pub key: Option<RedactedBytes>,
}

/// Bytes whose `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedBytes(pub Vec<u8>);

impl std::fmt::Debug for RedactedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedactedBytes(<{} bytes>)", self.0.len())
    }
}

impl From<Secret> for TlsSecret {
    fn from(secret: Secret) -> Self {
        let field = |key: &str| {
            let data = secret.data.as_ref().and_then(|d| d.get(key));
            let text = secret.string_data.as_ref().and_then(|d| d.get(key));
            data.map(|b| b.0.clone())
                .or_else(|| text.map(|t| t.as_bytes().to_vec()))
        };
        Self {
            cert_chain: field(CERT_KEY),
            key: field(KEY_KEY).map(RedactedBytes),
        }
    }
}

/// Why a Secret cannot serve as a server certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A key is missing.
    #[error(
        "secret {secret} has no {key:?} (a kubernetes.io/tls secret needs tls.crt and tls.key)"
    )]
    Missing {
        /// `namespace/name`.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// `tls.crt` holds no PEM certificate.
    #[error("secret {secret}: tls.crt holds no pem certificate{detail}")]
    BadChain {
        /// `namespace/name`.
        secret: String,
        /// What the PEM parser said, if anything.
        detail: String,
    },
    /// `tls.key` holds no usable PEM private key.
    #[error("secret {secret}: tls.key holds no usable pem private key (pkcs#8, pkcs#1 or sec1; rsa, ecdsa or ed25519): {detail}")]
    BadKey {
        /// `namespace/name`.
        secret: String,
        /// What failed.
        detail: String,
    },
    /// The key does not belong to the leaf certificate.
    #[error("secret {secret}: tls.key does not match the first certificate of tls.crt")]
    Mismatch {
        /// `namespace/name`.
        secret: String,
    },
}

/// Validates `secret` (named `namespace/name`) into a server certificate.
pub fn server_tls(name: &str, secret: &TlsSecret) -> Result<ServerTls, SecretError> {
    let missing = |key| SecretError::Missing {
        secret: name.to_string(),
        key,
    };
    let chain = secret
        .cert_chain
        .as_deref()
        .ok_or_else(|| missing(CERT_KEY))?;
    let key = secret.key.as_ref().ok_or_else(|| missing(KEY_KEY))?;
    let certs = parse_chain(name, chain)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key.0).map_err(|e| SecretError::BadKey {
        secret: name.to_string(),
        detail: e.to_string(),
    })?;
    let signer = any_supported_type(&key_der).map_err(|e| SecretError::BadKey {
        secret: name.to_string(),
        detail: e.to_string(),
    })?;
    let mismatch = CertifiedKey::new(certs, signer).keys_match().is_err();
    if mismatch {
        return Err(SecretError::Mismatch {
            secret: name.to_string(),
        });
    }
    // Both parsed as PEM, which is ASCII.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok(ServerTls {
        secret: name.to_string(),
        cert_chain_pem: text(chain),
        key_pem: PrivateKeyPem(text(&key.0)),
    })
}

fn parse_chain(name: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SecretError> {
    let bad = |detail: String| SecretError::BadChain {
        secret: name.to_string(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!(": {e}")))?;
    if certs.is_empty() {
        return Err(bad(String::new()));
    }
    Ok(certs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `host` and its key, as PEM.
    pub fn cert_and_key(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn secret(chain: &str, key: &str) -> TlsSecret {
        TlsSecret {
            cert_chain: Some(chain.as_bytes().to_vec()),
            key: Some(RedactedBytes(key.as_bytes().to_vec())),
        }
    }

    #[test]
    fn valid_pair_becomes_server_tls() {
        let (chain, key) = cert_and_key("shop.example.com");
        let tls = server_tls("edge/shop", &secret(&chain, &key)).expect("valid");
        assert_eq!(tls.secret, "edge/shop");
        assert_eq!((tls.cert_chain_pem, tls.key_pem.0), (chain, key.clone()));
        let debug = format!("{:?}", secret("c", &key));
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn broken_secrets_name_what_is_wrong() {
        let (chain, key) = cert_and_key("a.example.com");
        let (_, other_key) = cert_and_key("b.example.com");
        let no_key = TlsSecret {
            key: None,
            ..secret(&chain, &key)
        };
        let cases = [
            (no_key, "has no \"tls.key\""),
            (secret("not pem", &key), "tls.crt holds no pem certificate"),
            (secret(&chain, "not pem"), "tls.key holds no usable pem"),
            (secret(&chain, &other_key), "does not match"),
        ];
        for (secret, expected) in cases {
            let err = server_tls("edge/s", &secret)
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected) && err.contains("edge/s"), "{err}");
        }
    }
}
