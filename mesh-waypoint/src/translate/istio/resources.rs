//! Istio resource types: the subset of fields the waypoint reads.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::HumanDuration;

/// Resource metadata.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// Name.
    pub name: String,
}

/// A `VirtualService`.
#[derive(Debug, Clone, Deserialize)]
pub struct VirtualService {
    /// Metadata.
    pub metadata: Metadata,
    /// Spec.
    pub spec: VirtualServiceSpec,
}

/// `VirtualService.spec`.
#[derive(Debug, Clone, Deserialize)]
pub struct VirtualServiceSpec {
    /// Hosts.
    pub hosts: Vec<String>,
    /// HTTP routes, in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

/// One `HTTPRoute` of a `VirtualService`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default, rename = "match")]
    pub(super) matches: Vec<HttpMatch>,
    #[serde(default)]
    pub(super) route: Vec<RouteDestination>,
    #[serde(default)]
    pub(super) redirect: Option<Redirect>,
    #[serde(default)]
    pub(super) direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub(super) rewrite: Option<Rewrite>,
    #[serde(default)]
    pub(super) timeout: Option<HumanDuration>,
    #[serde(default)]
    pub(super) retries: Option<Retries>,
    #[serde(default)]
    pub(super) fault: Option<Fault>,
    #[serde(default)]
    pub(super) mirror: Option<Destination>,
    #[serde(default)]
    pub(super) mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub(super) headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HttpMatch {
    #[serde(default)]
    pub(super) uri: Option<StringMatchSpec>,
    #[serde(default)]
    pub(super) method: Option<StringMatchSpec>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub(super) without_headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub(super) query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub(super) authority: Option<StringMatchSpec>,
}

/// Istio `StringMatch`: one of exact/prefix/regex; empty means "present".
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct StringMatchSpec {
    #[serde(default)]
    pub(super) exact: Option<String>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
    #[serde(default)]
    pub(super) regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RouteDestination {
    pub(super) destination: Destination,
    #[serde(default)]
    pub(super) weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Destination {
    pub(super) host: String,
    #[serde(default)]
    pub(super) subset: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Redirect {
    #[serde(default)]
    pub(super) uri: Option<String>,
    #[serde(default)]
    pub(super) authority: Option<String>,
    #[serde(default)]
    pub(super) scheme: Option<String>,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) redirect_code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct DirectResponse {
    pub(super) status: u16,
    #[serde(default)]
    pub(super) body: Option<DirectBody>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct DirectBody {
    #[serde(default)]
    pub(super) string: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Rewrite {
    #[serde(default)]
    pub(super) uri: Option<String>,
    #[serde(default)]
    pub(super) authority: Option<String>,
    #[serde(default)]
    pub(super) uri_regex_rewrite: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Retries {
    pub(super) attempts: u32,
    #[serde(default)]
    pub(super) per_try_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub(super) retry_on: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Fault {
    #[serde(default)]
    pub(super) delay: Option<Delay>,
    #[serde(default)]
    pub(super) abort: Option<Abort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Delay {
    #[serde(default)]
    pub(super) percentage: Option<Percent>,
    pub(super) fixed_delay: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Abort {
    #[serde(default)]
    pub(super) percentage: Option<Percent>,
    pub(super) http_status: u16,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) struct Percent {
    pub(super) value: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Headers {
    #[serde(default)]
    pub(super) request: Option<HeaderOperations>,
    #[serde(default)]
    pub(super) response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct HeaderOperations {
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) add: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

/// A `DestinationRule`.
#[derive(Debug, Clone, Deserialize)]
pub struct DestinationRule {
    /// Metadata.
    pub metadata: Metadata,
    /// Spec.
    pub spec: DestinationRuleSpec,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service host.
    pub host: String,
    #[serde(default)]
    pub(super) traffic_policy: Option<DrTrafficPolicy>,
    #[serde(default)]
    pub(super) subsets: Vec<DrSubset>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrTrafficPolicy {
    #[serde(default)]
    pub(super) load_balancer: Option<DrLoadBalancer>,
    #[serde(default)]
    pub(super) connection_pool: Option<DrConnectionPool>,
    #[serde(default)]
    pub(super) outlier_detection: Option<DrOutlier>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrLoadBalancer {
    #[serde(default)]
    pub(super) simple: Option<String>,
    #[serde(default)]
    pub(super) consistent_hash: Option<DrConsistentHash>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrConsistentHash {
    #[serde(default)]
    pub(super) http_header_name: Option<String>,
    #[serde(default)]
    pub(super) http_cookie: Option<DrCookie>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct DrCookie {
    pub(super) name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct DrConnectionPool {
    #[serde(default)]
    pub(super) tcp: Option<DrTcp>,
    #[serde(default)]
    pub(super) http: Option<DrHttp>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrTcp {
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) connect_timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrHttp {
    #[serde(default)]
    pub(super) http1_max_pending_requests: Option<usize>,
    #[serde(default)]
    pub(super) http2_max_requests: Option<usize>,
    #[serde(default)]
    pub(super) h2_upgrade_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrOutlier {
    #[serde(default)]
    pub(super) consecutive5xx_errors: Option<u32>,
    #[serde(default)]
    pub(super) base_ejection_time: Option<HumanDuration>,
    #[serde(default)]
    pub(super) max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct DrSubset {
    pub(super) name: String,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
}
