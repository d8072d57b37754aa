//! JSON Web Key Sets named by `jwksUri` (or found by OpenID discovery from the issuer), fetched by
//! the waypoint and cached, as Envoy's remote JWKS does.
//!
//! - One fetch at a time per URI; requests needing the same set wait for it (single flight).
//! - Every fetch is bounded: [`JwtProvider::fetch_timeout`](super::JwtProvider) for the whole
//!   exchange (discovery included), [`MAX_DOCUMENT_BYTES`] for each body.
//! - A set is reused for [`REFRESH_AFTER`]; after a failed fetch the URI is not tried again for
//!   [`RETRY_AFTER`], and the last good set (if any) stays in use: a key server outage does not
//!   turn into an outage of every authenticated route, and a flood of tokens does not turn into
//!   a flood of fetches.
//! - With no set at all, every token that needs one is refused (401): fail closed.
//!
//! Why the waypoint fetches and not mesh-control (istiod fetches by default): `jwksUri` is
//! written by any namespace's users, and the control plane should not make requests on their
//! behalf from its more privileged network position.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use jsonwebtoken::jwk::{Jwk, JwkSet};

/// Largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// How long a fetched set is used before it is fetched again (Istio's default refresh).
pub const REFRESH_AFTER: Duration = Duration::from_secs(20 * 60);
/// How long after a failed fetch the URI is left alone.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Distinct sources cached (they come from config, so this only guards against a runaway one).
const MAX_SOURCES: usize = 1024;

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// `jwksUri`.
    Uri(String),
    /// Neither `jwks` nor `jwksUri`: the issuer's `/.well-known/openid-configuration` names it.
    Discovery {
        /// The issuer URL.
        issuer: String,
    },
}

#[derive(Debug, Default)]
struct Entry {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Cached key sets, shared by every configuration version of a waypoint.
pub struct JwksCache {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    entries: parking_lot::Mutex<HashMap<KeySource, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("sources", &self.entries.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for JwksCache {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksCache {
    /// A cache whose HTTPS fetches trust the system's roots (none found: HTTPS fails, plain
    /// HTTP still works).
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(%error, "no system trust roots: jwksUri over https will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring implements the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            entries: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The key set of `source`, fetching it when absent or stale; `None` when none was ever
    /// fetched successfully.
    pub async fn keys(&self, source: &KeySource, timeout: Duration) -> Option<Arc<JwkSet>> {
        let entry = {
            let mut entries = self.entries.lock();
            if entries.len() >= MAX_SOURCES && !entries.contains_key(source) {
                entries.clear();
            }
            entries.entry(source.clone()).or_default().clone()
        };
        let mut entry = entry.lock().await;
        let now = Instant::now();
        let fresh = entry
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < REFRESH_AFTER);
        let backing_off = entry
            .failed_at
            .is_some_and(|at| now.duration_since(at) < RETRY_AFTER);
        if fresh || backing_off {
            return entry.keys.clone();
        }
        match tokio::time::timeout(timeout, self.fetch(source)).await {
            Ok(Ok(keys)) => {
                tracing::debug!(?source, keys = keys.keys.len(), "jwks fetched");
                entry.keys = Some(Arc::new(keys));
                entry.fetched_at = Some(now);
                entry.failed_at = None;
            }
            Ok(Err(error)) => {
                tracing::warn!(?source, %error, "jwks fetch failed");
                entry.failed_at = Some(now);
            }
            Err(_) => {
                tracing::warn!(
                    ?source,
                    timeout_ms = timeout.as_millis(),
                    "jwks fetch timed out"
                );
                entry.failed_at = Some(now);
            }
        }
        entry.keys.clone()
    }

    async fn fetch(&self, source: &KeySource) -> Result<JwkSet, String> {
        let uri = match source {
            KeySource::Uri(uri) => uri.clone(),
            KeySource::Discovery { issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let document: serde_json::Value = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|e| format!("discovery document: {e}"))?;
                document
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or("discovery document has no jwks_uri")?
                    .to_owned()
            }
        };
        parse_key_set(&self.get(&uri).await?)
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let response = self
            .client
            .get(uri)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(body.to_bytes())
    }
}

/// Parses a JWKS document, keeping the keys this build can use and skipping the rest (a set
/// may hold encryption keys or key types newer than this build).
pub fn parse_key_set(document: &[u8]) -> Result<JwkSet, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(document).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<Jwk> = raw
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value(key).ok())
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no usable key".to_owned());
    }
    Ok(JwkSet { keys })
}
