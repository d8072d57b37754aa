//! Destination configuration: endpoints, subsets and traffic policy.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::HumanDuration;

/// An upstream service (Istio `ServiceEntry`/endpoints + `DestinationRule`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Name referenced by rules.
    pub name: String,
    /// Endpoints with their labels.
    pub endpoints: Vec<EndpointConfig>,
    /// Named subsets, each selecting endpoints whose labels include all of its labels.
    #[serde(default)]
    pub subsets: Vec<SubsetConfig>,
    /// Load balancing, connection pool and outlier detection.
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
}

/// One endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Socket address (pod IP and port).
    pub address: SocketAddr,
    /// Labels (e.g. `version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// SPIFFE identity the endpoint must prove when reached over HBONE (feed mode); an HBONE
    /// endpoint without one is never connected to.
    #[serde(default)]
    pub identity: Option<String>,
}

/// A subset: endpoints whose labels are a superset of these.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsetConfig {
    /// Name referenced by rules.
    pub name: String,
    /// Required labels.
    pub labels: BTreeMap<String, String>,
}

/// Per-destination traffic policy (Istio `TrafficPolicy`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Endpoint choice.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Circuit-breaking limits.
    #[serde(default)]
    pub connection_pool: ConnectionPoolConfig,
    /// Passive health checking; disabled when absent.
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    /// HTTP version spoken to the endpoints.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
}

/// HTTP version towards the endpoints (Istio derives it from the port's `appProtocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// The downstream request's version: HTTP/2 in, HTTP/2 (h2c) out; HTTP/1.1 in, HTTP/1.1 out.
    #[default]
    SameAsDownstream,
    /// Always HTTP/1.1 (upgrades still work).
    Http1,
    /// Always HTTP/2 prior knowledge (gRPC backends); upgrade requests still use HTTP/1.1.
    Http2,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadBalancerConfig {
    /// Least request, power of two choices (Istio's default).
    #[default]
    LeastRequest,
    /// Round robin.
    RoundRobin,
    /// Uniform random.
    Random,
    /// Consistent hash on a header value.
    ConsistentHashHeader(String),
    /// Consistent hash on a cookie value.
    ConsistentHashCookie(String),
}

/// Circuit-breaking limits (Istio `ConnectionPoolSettings`); absent fields take Envoy's
/// defaults (1024 each, 10 s connect timeout).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolConfig {
    /// Maximum upstream TCP connections.
    #[serde(default = "default_limit")]
    pub max_connections: usize,
    /// Maximum requests waiting for a slot.
    #[serde(default = "default_limit")]
    pub max_pending_requests: usize,
    /// Maximum requests in flight.
    #[serde(default = "default_limit")]
    pub max_requests: usize,
    /// Longest a request waits for a slot.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

fn default_limit() -> usize {
    1024
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for ConnectionPoolConfig {
    fn default() -> Self {
        Self {
            max_connections: default_limit(),
            max_pending_requests: default_limit(),
            max_requests: default_limit(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// Outlier detection (Istio `OutlierDetection`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx (or connect failures) that eject an endpoint.
    pub consecutive_5xx: u32,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    pub base_ejection_time: HumanDuration,
    /// Upper bound on the share of endpoints ejected at once (0-100).
    #[serde(default = "default_max_ejection")]
    pub max_ejection_percent: u32,
    /// Sweep interval (Istio `interval`, default 10 s): an ejected endpoint returns at the
    /// first sweep after its ejection time, and each sweep it spends healthy and back in
    /// service lowers its ejection multiplier by one.
    #[serde(default = "default_outlier_interval")]
    pub interval: HumanDuration,
}

/// Istio's default outlier detection sweep interval.
pub fn default_outlier_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_max_ejection() -> u32 {
    10
}
