//! Caller authentication for the gRPC services: bootstrap tokens in local mode, Kubernetes
//! TokenReview of projected service-account tokens in Kubernetes mode ([`token_review`]).
//!
//! A caller is a [`Caller::Node`] (a node tunnel, speaking for the pods on its node) or, in
//! Kubernetes mode only, a [`Caller::Workload`]: a waypoint or ingress gateway pod presenting
//! its own token. What each may do is decided per service; [`workload`] holds the workload
//! rules.
//!
//! The token file has one `<node-name> <token>` pair per line (`#` starts a comment). A client
//! sends `authorization: Bearer <token>`; the token decides which node it is, so a node cannot
//! claim another node's name. Tokens are compared by SHA-256 digest, so lookups do not leak
//! token prefixes through timing.

pub mod token_review;
pub mod workload;

use std::collections::HashMap;
use std::path::Path;

use tonic::metadata::MetadataMap;

/// Errors authenticating a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("missing authorization metadata, expected `authorization: Bearer <token>`")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization metadata, expected `Bearer <token>`")]
    Malformed,
    /// The token is unknown.
    #[error("unknown bootstrap token")]
    UnknownToken,
    /// The API server did not authenticate the token.
    #[error("service-account token not authenticated: {0}")]
    NotAuthenticated(String),
    /// The token is valid but belongs to neither the node service account nor a pod's.
    #[error("token of {user:?} may not call mesh-control: it is neither the node service account {expected:?} nor a pod's service account")]
    WrongServiceAccount {
        /// User the token belongs to.
        user: String,
        /// The node service account's user name.
        expected: String,
    },
    /// The token is not bound to a pod on a node.
    #[error("token of {user:?} names no node; use a projected token of a pod scheduled on a node")]
    NoNodeName {
        /// User the token belongs to.
        user: String,
    },
    /// A workload's token that is not bound to a pod (a legacy secret token, or a TokenRequest
    /// without a pod reference).
    #[error("token of {user:?} names no pod; mount a projected service-account token in the pod")]
    NoPodName {
        /// User the token belongs to.
        user: String,
    },
    /// The token could not be checked.
    #[error("cannot review the token ({0}); is the api server reachable and may mesh-control create tokenreviews?")]
    Unavailable(String),
}

/// Errors loading the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read bootstrap token file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `<node-name> <token>`.
    #[error("bootstrap token file {path} line {line}: expected `<node-name> <token>`")]
    BadLine {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// A token shorter than 16 characters (guessable).
    #[error("bootstrap token file {path} line {line}: token for node {node:?} is shorter than 16 characters")]
    WeakToken {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Node name.
        node: String,
    },
}

/// A node tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name the token belongs to.
    pub node: String,
}

/// A pod calling with its own service-account token (a waypoint or ingress gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// Namespace of the pod and its service account.
    pub namespace: String,
    /// Service account the token was issued to.
    pub service_account: String,
    /// Pod the token is bound to.
    pub pod_name: String,
    /// Uid of that pod, when the token carries it.
    pub pod_uid: Option<String>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node tunnel.
    Node(NodeIdentity),
    /// A waypoint or gateway pod.
    Workload(WorkloadIdentity),
}

impl Caller {
    /// The node, for services only nodes may use (the node feed).
    pub fn node_only(&self) -> Result<&NodeIdentity, tonic::Status> {
        match self {
            Self::Node(node) => Ok(node),
            Self::Workload(w) => Err(tonic::Status::permission_denied(format!(
                "pod {}/{} (service account {}) is a workload caller; only node tunnels may use this service",
                w.namespace, w.pod_name, w.service_account
            ))),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "node {}", n.node),
            Self::Workload(w) => write!(f, "pod {}/{}", w.namespace, w.pod_name),
        }
    }
}

/// Decides who a request comes from.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates a request from its metadata.
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError>;
}

/// The token of `authorization: Bearer <token>`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let token = text.strip_prefix("Bearer ").ok_or(AuthError::Malformed)?;
    Ok(token.trim())
}

/// Bootstrap-token authenticator.
#[derive(Debug, Default, Clone)]
pub struct TokenAuthenticator {
    by_digest: HashMap<[u8; 32], String>,
}

/// SHA-256 of a token: what is kept and compared instead of the token.
pub fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenAuthenticator {
    /// From `(node, token)` pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let by_digest = pairs
            .into_iter()
            .map(|(node, token)| (digest(token), node.to_string()))
            .collect();
        Self { by_digest }
    }

    /// Parses the token file text (`path` only names it in errors).
    pub fn parse(path: &str, text: &str) -> Result<Self, TokenFileError> {
        let mut pairs = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [node, token] = fields[..] else {
                return Err(TokenFileError::BadLine {
                    path: path.into(),
                    line: line_no,
                });
            };
            if token.len() < 16 {
                let node = node.to_string();
                return Err(TokenFileError::WeakToken {
                    path: path.into(),
                    line: line_no,
                    node,
                });
            }
            pairs.push((node, token));
        }
        Ok(Self::new(pairs))
    }

    /// Loads the token file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&name, &text)
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no tokens are known (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[tonic::async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let token = bearer_token(metadata)?;
        let node = self
            .by_digest
            .get(&digest(token))
            .ok_or(AuthError::UnknownToken)?;
        Ok(Caller::Node(NodeIdentity { node: node.clone() }))
    }
}

/// Authenticates the caller of a service that answers from the registry: refuses the caller
/// (`UNAUTHENTICATED`/`PERMISSION_DENIED`), or everyone while the registry has not synced yet
/// (`UNAVAILABLE`: retry).
pub async fn caller_when_synced(
    auth: &dyn Authenticator,
    hub: &crate::feed::hub::Hub,
    metadata: &MetadataMap,
) -> Result<Caller, tonic::Status> {
    let caller = auth.authenticate(metadata).await.map_err(to_status)?;
    if !hub.is_ready() {
        return Err(crate::feed::node::not_synced());
    }
    Ok(caller)
}

/// Maps an authentication error to a gRPC status (the one place this happens).
pub fn to_status(err: AuthError) -> tonic::Status {
    let message = err.to_string();
    match err {
        AuthError::Unavailable(_) => tonic::Status::unavailable(message),
        AuthError::WrongServiceAccount { .. } => tonic::Status::permission_denied(message),
        _ => tonic::Status::unauthenticated(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("ascii"));
        m
    }

    #[tokio::test]
    async fn token_identifies_its_node_only() {
        let text = "# nodes\nnode-a aaaaaaaaaaaaaaaaaaaa\nnode-b bbbbbbbbbbbbbbbbbbbb # comment\n";
        let auth = TokenAuthenticator::parse("tokens", text).expect("parse");
        assert_eq!(auth.len(), 2);
        let who = auth
            .authenticate(&metadata("Bearer bbbbbbbbbbbbbbbbbbbb"))
            .await
            .expect("known");
        let node_b = NodeIdentity {
            node: "node-b".into(),
        };
        assert_eq!(who, Caller::Node(node_b));
        assert_eq!(
            auth.authenticate(&metadata("Bearer nope")).await,
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth.authenticate(&metadata("Basic x")).await,
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(&MetadataMap::new()).await,
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let err = TokenAuthenticator::parse("t", "a b c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
        let weak = TokenAuthenticator::parse("t", "\nnode-a short")
            .unwrap_err()
            .to_string();
        assert!(weak.contains("line 2") && weak.contains("node-a"), "{weak}");
    }
}
