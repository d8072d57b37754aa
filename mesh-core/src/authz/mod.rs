//! Authorization policy evaluation with Istio `AuthorizationPolicy` semantics, shared by the node
//! tunnel (L4: connection attributes) and the waypoint (L7: also the HTTP request).
//!
//! The model here is the *translated* policy mesh-control sends: scoping (which policies apply to
//! a workload) is decided by the caller, and values are already parsed (CIDRs, ports). What this
//! module decides is the outcome for one connection or request:
//!
//! 1. If any matching `DENY` policy applies, deny.
//! 2. Else, if no `ALLOW` policy applies, allow.
//! 3. Else allow only if some `ALLOW` policy matches.
//!
//! A rule matches when any of its sources, any of its operations and all of its conditions match
//! (an empty part matches anything); an `ALLOW` policy with no rules matches nothing. Where a rule
//! needs something the caller cannot see (L7 attributes at a node, or a condition key this module
//! does not know) it fails closed: such an `ALLOW` rule never matches, and such a `DENY` rule
//! ignores the unknowable part, so it denies more rather than less.

mod convert;
mod evaluate;
mod matching;
pub mod path;

use std::{collections::BTreeMap, net::IpAddr};

pub use convert::PolicyConvertError;
pub use evaluate::evaluate;
use ipnet::IpNet;
pub use path::{PathError, PathNormalization};

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Matching traffic is allowed; with any ALLOW policy present, everything else is denied.
    Allow,
    /// Matching traffic is denied.
    Deny,
    /// Matching traffic is only logged; never changes the decision.
    Audit,
}

/// An authorization policy that applies to the workload being protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `<namespace>/<name>`, for logs and deny reasons.
    pub key: String,
    /// What to do on a match.
    pub action: Action,
    /// Rules; any may match.
    pub rules: Vec<Rule>,
}

/// One rule: every non-empty part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Sources; any may match (empty: any source).
    pub from: Vec<SourceMatch>,
    /// Operations; any may match (empty: any operation).
    pub to: Vec<OperationMatch>,
    /// Conditions; all must match.
    pub when: Vec<Condition>,
}

/// Who the traffic comes from. Each non-empty list must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMatch {
    /// Peer principals, `<trust domain>/ns/<ns>/sa/<sa>`, with `*` allowed at either end.
    pub principals: Vec<String>,
    /// Principals that must not match.
    pub not_principals: Vec<String>,
    /// Peer namespaces, `*` allowed at either end.
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// Source address ranges.
    pub ip_blocks: Vec<IpNet>,
    /// Source ranges that must not match.
    pub not_ip_blocks: Vec<IpNet>,
    /// Service accounts as principal patterns (`*/ns/<ns>/sa/<name>`, any trust domain).
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    pub not_service_accounts: Vec<String>,
    /// Original client ranges ([`RequestAttributes::remote_ip`], else the source address).
    pub remote_ip_blocks: Vec<IpNet>,
    /// Original client ranges that must not match.
    pub not_remote_ip_blocks: Vec<IpNet>,
    /// JWT principals `<iss>/<sub>` (`*` at either end). L7, and only where request
    /// authentication ran ([`RequestAttributes::auth`]); elsewhere unknowable.
    pub request_principals: Vec<String>,
    /// JWT principals that must not match.
    pub not_request_principals: Vec<String>,
}

/// What the traffic asks for. Ports are L4; hosts, methods and paths are L7.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationMatch {
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Ports that must not match.
    pub not_ports: Vec<u16>,
    /// Request hosts (`*` at either end, case-insensitive). L7.
    pub hosts: Vec<String>,
    /// Hosts that must not match. L7.
    pub not_hosts: Vec<String>,
    /// Request methods. L7.
    pub methods: Vec<String>,
    /// Methods that must not match. L7.
    pub not_methods: Vec<String>,
    /// Request paths (`*` at either end). L7.
    pub paths: Vec<String>,
    /// Paths that must not match. L7.
    pub not_paths: Vec<String>,
}

/// A `when` condition, keyed like Istio's (`source.ip`, `request.headers[x-user]`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// The attribute.
    pub key: String,
    /// Accepted values (any).
    pub values: Vec<String>,
    /// Rejected values (none may match).
    pub not_values: Vec<String>,
}

/// Connection-level facts, known to the node tunnel and the waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionAttributes {
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The peer's authenticated principal (`<td>/ns/<ns>/sa/<sa>`, no `spiffe://`); `None` for
    /// plaintext.
    pub source_principal: Option<String>,
    /// The address the peer connected to.
    pub destination_ip: IpAddr,
    /// The port the peer connected to.
    pub destination_port: u16,
}

/// Request-level facts, known only to the waypoint.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    /// Method, e.g. `GET`.
    pub method: &'a str,
    /// Path without the query string, already normalized ([`path::normalize`]).
    pub path: &'a str,
    /// Host (`:authority`), possibly with a port.
    pub host: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The original client's address when it differs from the peer's (`X-Forwarded-For` at an
    /// ingress behind trusted proxies); `None`: the peer address.
    pub remote_ip: Option<IpAddr>,
    /// The TLS server name of the downstream connection (`connection.sni`), when it was TLS the
    /// waypoint terminated.
    pub sni: Option<&'a str>,
    /// The outcome of request authentication (JWT); `None` where none ran, which makes every
    /// `requestPrincipals` and `request.auth.*` check unknowable (fail closed).
    pub auth: Option<&'a RequestAuth>,
}

/// What request authentication established about one request; all empty when the request
/// carried no token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAuth {
    /// `<iss>/<sub>` of the verified token.
    pub principal: Option<String>,
    /// Its `aud` values.
    pub audiences: Vec<String>,
    /// Its `azp` (authorized presenter).
    pub presenter: Option<String>,
    /// Claim values by path, as written inside `request.auth.claims[...]`: `groups`, or
    /// `a][b` for the nested claim `[a][b]`. Lists give one value per element; `scope`,
    /// `permission` and configured space-delimited claims one per word.
    pub claims: BTreeMap<String, Vec<String>>,
}

/// Why traffic was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// A DENY policy matched.
    DeniedByPolicy {
        /// The policy's key.
        policy: String,
    },
    /// ALLOW policies apply but none matched.
    NotAllowed,
}

impl Decision {
    /// Whether the traffic may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}
