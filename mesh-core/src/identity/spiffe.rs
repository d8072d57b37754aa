//! The SPIFFE ID of a Kubernetes workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
//!
//! Parsing is strict (no percent-encoding, no extra path segments, lowercase DNS-style names), so
//! two textual forms never name the same identity and policy comparisons stay exact.
//! See <https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>.

use std::{fmt, str::FromStr};

/// Longest SPIFFE ID accepted, per the SPIFFE-ID standard's URI limit.
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain accepted (a DNS name).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Kubernetes namespaces are DNS-1123 labels.
const MAX_NAMESPACE_LEN: usize = 63;
/// Kubernetes service accounts are DNS-1123 subdomains.
const MAX_ACCOUNT_LEN: usize = 253;

/// Why a SPIFFE ID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Missing `spiffe://` scheme.
    #[error("spiffe id {0:?} does not start with spiffe://")]
    Scheme(String),
    /// Longer than the SPIFFE limit.
    #[error("spiffe id is {0} bytes, longer than the {MAX_ID_LEN}-byte limit")]
    TooLong(usize),
    /// Path is not `/ns/<ns>/sa/<sa>`.
    #[error(
        "spiffe id {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<account>"
    )]
    Shape(String),
    /// Invalid trust domain.
    #[error(
        "invalid trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_' (max 255)"
    )]
    TrustDomain(String),
    /// Invalid namespace.
    #[error("invalid namespace {0:?}: must be a DNS-1123 label (lowercase, max 63)")]
    Namespace(String),
    /// Invalid service account.
    #[error("invalid service account {0:?}: must be a DNS-1123 subdomain (lowercase, max 253)")]
    ServiceAccount(String),
}

/// A workload identity. Cheap to clone; compares and hashes by its canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        if !is_dns_label(namespace, MAX_NAMESPACE_LEN) {
            return Err(IdentityError::Namespace(namespace.to_owned()));
        }
        if !is_dns_subdomain(service_account, MAX_ACCOUNT_LEN) {
            return Err(IdentityError::ServiceAccount(service_account.to_owned()));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

/// Checks a trust domain on its own (used for config and CA set-up).
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::TrustDomain(td.to_owned()))
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= max
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_dns_subdomain(s: &str, max: usize) -> bool {
    s.len() <= max && s.split('.').all(|label| is_dns_label(label, 63))
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_owned()))?;
        let shape = || IdentityError::Shape(s.to_owned());
        let (td, path) = rest.split_once('/').ok_or_else(shape)?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Self::new(td, ns, sa),
            _ => Err(shape()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        let text = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: SpiffeId = text.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), text);
    }

    #[test]
    fn rejects_malformed_ids() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "scheme"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "shape"),
            ("spiffe://cluster.local/ns/a/sa/", "account"),
            ("spiffe://cluster.local/ns//sa/b", "namespace"),
            ("spiffe://cluster.local/sa/b/ns/a", "shape"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "td"),
            ("spiffe:///ns/a/sa/b", "td"),
            ("spiffe://cluster.local/ns/A/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/-a/sa/b", "namespace"),
            ("spiffe://cluster.local/ns/a/sa/b%20c", "account"),
            ("spiffe://cluster.local", "shape"),
            ("spiffe://td:8080/ns/a/sa/b", "td"),
        ];
        for (text, why) in cases {
            assert!(text.parse::<SpiffeId>().is_err(), "{text} accepted ({why})");
        }
    }

    #[test]
    fn error_messages_carry_the_value() {
        let err = "spiffe://cluster.local/ns/BAD/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert_eq!(err, IdentityError::Namespace("BAD".into()));
        assert!(err.to_string().contains("\"BAD\""), "{err}");
    }

    #[test]
    fn rejects_overlong_ids_and_names() {
        let long = format!("spiffe://td/ns/a/sa/{}", "a".repeat(MAX_ID_LEN));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(IdentityError::TooLong(_))
        ));
        let ns = "a".repeat(64);
        assert!(SpiffeId::new("td", &ns, "sa").is_err());
        assert!(SpiffeId::new("td", &"a".repeat(63), "sa.with.dots").is_ok());
    }
}
