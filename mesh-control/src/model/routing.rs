//! Routing and traffic-policy part of the model: what waypoints act on.

use std::collections::BTreeMap;
use std::time::Duration;

pub use super::actions::{
    Answer, ConnectionPool, ConsistentHash, DirectResponse, Fault, HeaderOps, Mirror, PathRewrite,
    Percentage, Redirect, Rewrite,
};

/// A string match in a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Regular expression (validated at translation time).
    Regex(String),
}

/// A header (or query parameter) condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase header name, or the case-sensitive query parameter name.
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<StringMatch>,
    /// Inverts the result (with no value: the name must be absent).
    pub invert: bool,
}

/// Match conditions of a route rule; all present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Path.
    pub path: Option<StringMatch>,
    /// Method.
    pub method: Option<String>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query_params: Vec<HeaderMatch>,
    /// Destination port.
    pub port: Option<u16>,
}

/// A weighted backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Service FQDN.
    pub host: String,
    /// Service port; the request's port when absent.
    pub port: Option<u16>,
    /// Relative weight.
    pub weight: u32,
    /// DestinationRule subset.
    pub subset: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Maximum retries.
    pub attempts: u32,
    /// Per-attempt timeout.
    pub per_try_timeout: Option<Duration>,
    /// Retry conditions.
    pub retry_on: Vec<String>,
}

/// One route rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRule {
    /// Name, for logs.
    pub name: Option<String>,
    /// Matches; any may match (empty: everything).
    pub matches: Vec<RouteMatch>,
    /// Backends (empty: the original destination).
    pub backends: Vec<Backend>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<Retry>,
    /// Answer without forwarding (redirect or fixed response).
    pub answer: Option<Answer>,
    /// Rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Request header edits.
    pub request_headers: HeaderOps,
    /// Response header edits.
    pub response_headers: HeaderOps,
    /// Fault injection.
    pub fault: Fault,
    /// Request mirroring.
    pub mirror: Option<Mirror>,
}

/// HTTP routing for some service hostnames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Stable key: `<Kind>/<namespace>/<name>`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Service FQDNs the route applies to.
    pub hosts: Vec<String>,
    /// Service port it applies to (all when absent).
    pub port: Option<u16>,
    /// Whether it applies to mesh traffic (waypoints).
    pub mesh: bool,
    /// Istio Gateways (`<namespace>/<name>`) whose ingress traffic it applies to.
    pub gateways: Vec<String>,
    /// Ordered rules.
    pub rules: Vec<RouteRule>,
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    pub consecutive_5xx: u32,
    /// Scan interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Maximum ejected percentage.
    pub max_ejection_percent: u32,
}

/// Traffic policy for a service (DestinationRule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// Stable key: `<namespace>/<name>`.
    pub key: String,
    /// Service FQDN.
    pub host: String,
    /// Load balancer (`ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `PASSTHROUGH`).
    pub load_balancer: Option<String>,
    /// Outlier detection.
    pub outlier: Option<OutlierDetection>,
    /// Subsets: name -> endpoint labels.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPool>,
    /// Consistent hashing; overrides `load_balancer`.
    pub consistent_hash: Option<ConsistentHash>,
}
