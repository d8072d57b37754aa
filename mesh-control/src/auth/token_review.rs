//! Kubernetes-mode authentication: the caller sends its pod's projected service-account token,
//! and the API server's TokenReview (`authentication.k8s.io/v1`) says whose it is.
//!
//! The token must have been issued for our audience. The configured node service account is a
//! node caller, named by the token's pod binding (`authentication.kubernetes.io/node-name`), so
//! a node can only ever claim its own name. Any other service account's token that is bound to
//! a pod (`authentication.kubernetes.io/pod-name`, and `pod-uid` when present) is a workload
//! caller, whose rights ([`super::workload`]) are limited to that pod's own identity and, only
//! if it is a waypoint or gateway pod, that waypoint's feed.
//! Verdicts are cached by token digest for a short time, in a bounded map, so a busy node does
//! not cost one API call per request; API errors are never cached and surface as `UNAVAILABLE`.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::{
    bearer_token, digest, AuthError, Authenticator, Caller, NodeIdentity, WorkloadIdentity,
};

/// The extra-info key carrying the node of the pod a token is bound to.
pub const NODE_NAME_KEY: &str = "authentication.kubernetes.io/node-name";
/// The extra-info key carrying the name of the pod a token is bound to.
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
/// The extra-info key carrying the uid of the pod a token is bound to.
pub const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
/// User names of service accounts: `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// TokenReview settings.
#[derive(Debug, Clone)]
pub struct TokenReviewSettings {
    /// Service account nodes run as, `namespace/name` (e.g. `weft-system/mesh-node`).
    pub node_service_account: (String, String),
    /// Audience the node's projected token is issued for (e.g. `weft-control`).
    pub audience: String,
    /// How long an accepted token is trusted without asking again.
    pub accept_ttl: Duration,
    /// How long a refused token stays refused without asking again.
    pub refuse_ttl: Duration,
    /// Most tokens remembered.
    pub max_entries: usize,
    /// Deadline of one TokenReview call; a caller waits at most half of it for a free slot.
    pub timeout: Duration,
    /// Most TokenReview calls in flight: a flood of made-up tokens (each new one costs a call)
    /// gets `unavailable` beyond it instead of loading the API server.
    pub max_concurrent_reviews: usize,
}

/// Longest bearer token sent for review; a projected service-account token is about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

impl TokenReviewSettings {
    /// Defaults for the node service account `namespace/name` and `audience`.
    pub fn new(namespace: &str, name: &str, audience: &str) -> Self {
        Self {
            node_service_account: (namespace.to_string(), name.to_string()),
            audience: audience.to_string(),
            accept_ttl: Duration::from_secs(60),
            refuse_ttl: Duration::from_secs(5),
            max_entries: 4096,
            timeout: Duration::from_secs(5),
            max_concurrent_reviews: 32,
        }
    }

    fn expected_user(&self) -> String {
        let (ns, name) = &self.node_service_account;
        format!("system:serviceaccount:{ns}:{name}")
    }
}

type Verdict = Result<Caller, AuthError>;
type Extra = std::collections::BTreeMap<String, Vec<String>>;

/// The single non-empty value of `key` in a token's extra info.
fn single(extra: &Extra, key: &str) -> Option<String> {
    match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

/// `(namespace, name)` of a service account user name.
fn service_account(user: &str) -> Option<(&str, &str)> {
    let (namespace, name) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    let valid = !namespace.is_empty() && !name.is_empty() && !name.contains(':');
    valid.then_some((namespace, name))
}

/// A workload caller: a service account token bound to a pod.
fn workload_caller(user: &str, extra: &Extra) -> Verdict {
    let Some((namespace, sa)) = service_account(user) else {
        return Err(AuthError::NoPodName { user: user.into() });
    };
    let pod_name =
        single(extra, POD_NAME_KEY).ok_or_else(|| AuthError::NoPodName { user: user.into() })?;
    Ok(Caller::Workload(WorkloadIdentity {
        namespace: namespace.into(),
        service_account: sa.into(),
        pod_name,
        pod_uid: single(extra, POD_UID_KEY),
    }))
}

/// Authenticates nodes and workloads with the API server's TokenReview.
pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    settings: TokenReviewSettings,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
    reviews: tokio::sync::Semaphore,
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`.
    pub fn new(client: kube::Client, settings: TokenReviewSettings) -> Self {
        Self {
            api: Api::all(client),
            reviews: tokio::sync::Semaphore::new(settings.max_concurrent_reviews.max(1)),
            settings,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock();
        let (expires, verdict) = cache.get(key)?;
        (Instant::now() < *expires).then(|| verdict.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: &Verdict) {
        let ttl = match verdict {
            Ok(_) => self.settings.accept_ttl,
            Err(AuthError::Unavailable(_)) => return,
            Err(_) => self.settings.refuse_ttl,
        };
        let now = Instant::now();
        let mut cache = self.cache.lock();
        if cache.len() >= self.settings.max_entries {
            cache.retain(|_, (expires, _)| *expires > now);
        }
        if cache.len() >= self.settings.max_entries {
            // Still full of live entries: drop the one closest to expiry.
            let oldest = cache.iter().min_by_key(|(_, (e, _))| *e).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (now + ttl, verdict.clone()));
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, AuthError> {
        let slot = tokio::time::timeout(self.settings.timeout / 2, self.reviews.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            let most = self.settings.max_concurrent_reviews;
            return Err(AuthError::Unavailable(format!(
                "{most} token reviews already in flight; try again"
            )));
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let params = PostParams::default();
        let call = self.api.create(&params, &review);
        let reviewed = tokio::time::timeout(self.settings.timeout, call)
            .await
            .map_err(|_| {
                let after = self.settings.timeout;
                AuthError::Unavailable(format!("no answer within {after:?}"))
            })?
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        reviewed
            .status
            .ok_or_else(|| AuthError::Unavailable("the review has no status".into()))
    }

    /// The caller a reviewed token identifies, or why it does not.
    fn verdict(&self, status: TokenReviewStatus) -> Verdict {
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "no reason given".into());
            return Err(AuthError::NotAuthenticated(why));
        }
        let audience = &self.settings.audience;
        if !status.audiences.unwrap_or_default().contains(audience) {
            let why = format!("token is not issued for audience {audience:?}");
            return Err(AuthError::NotAuthenticated(why));
        }
        let user = status.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let expected = self.settings.expected_user();
        if name == expected {
            return match single(&extra, NODE_NAME_KEY) {
                Some(node) => Ok(Caller::Node(NodeIdentity { node })),
                None => Err(AuthError::NoNodeName { user: name }),
            };
        }
        if service_account(&name).is_none() {
            return Err(AuthError::WrongServiceAccount {
                user: name,
                expected,
            });
        }
        workload_caller(&name, &extra)
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let token = bearer_token(metadata)?;
        if token.len() > MAX_TOKEN_BYTES {
            let why = format!("token longer than {MAX_TOKEN_BYTES} bytes");
            return Err(AuthError::NotAuthenticated(why));
        }
        let key = digest(token);
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        let verdict = match self.review(token).await {
            Ok(status) => self.verdict(status),
            Err(err) => Err(err),
        };
        self.remember(key, &verdict);
        if let Err(err) = &verdict {
            tracing::warn!(error = %err, "service-account token refused");
        }
        verdict
    }
}

#[cfg(test)]
mod tests;
