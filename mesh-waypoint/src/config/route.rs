//! Route configuration: virtual hosts, rules, matches and rule actions.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::HumanDuration;

/// A virtual host: the hostnames it answers for and its ordered rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name, for logs and metrics.
    pub name: String,
    /// Hostnames (`reviews`, `*.example.com`, `*`); the request's authority, port stripped, must
    /// match one.
    pub hosts: Vec<String>,
    /// Rules, evaluated in order; the first whose matches hit wins.
    pub rules: Vec<RuleConfig>,
}

/// One routing rule (Istio `HTTPRoute` entry, Gateway `HTTPRouteRule`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks, OR'ed; an empty list matches every request.
    #[serde(default)]
    pub matches: Vec<MatchConfig>,
    /// Weighted destinations; exactly one of `route`, `redirect`, `direct_response` is set.
    #[serde(default)]
    pub route: Vec<WeightedDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer with a fixed status instead of forwarding.
    #[serde(default)]
    pub direct_response: Option<DirectResponseConfig>,
    /// Path/authority rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// Header edits on the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Header edits on the response sent downstream.
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Overall timeout for the request including retries; none means no timeout.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Retry policy; none means a single attempt.
    #[serde(default)]
    pub retries: Option<RetryConfig>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<FaultConfig>,
    /// Copy a percentage of requests to another destination.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
}

/// One match block: every present field must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Path (without query string).
    #[serde(default)]
    pub path: Option<StringMatch>,
    /// HTTP method, exact and case-sensitive.
    #[serde(default)]
    pub method: Option<String>,
    /// Header conditions, all required.
    #[serde(default)]
    pub headers: Vec<HeaderMatchConfig>,
    /// Query parameter conditions, all required.
    #[serde(default)]
    pub query_params: Vec<HeaderMatchConfig>,
}

/// How a string is compared. Regexes are RE2-style and must match the whole value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches the regex.
    Regex(String),
}

/// A condition on a named header or query parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// The value condition; `present` when only presence matters.
    #[serde(rename = "match")]
    pub value: ValueMatch,
    /// Invert the result (Istio `withoutHeaders`).
    #[serde(default)]
    pub invert: bool,
}

/// A condition on a header or query parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches the regex.
    Regex(String),
    /// `true`: the name must be present; `false`: it must be absent.
    Present(bool),
}

/// One weighted target of a rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedDestination {
    /// Name of a [`DestinationConfig`].
    pub destination: String,
    /// Name of a subset of that destination; all endpoints when absent.
    #[serde(default)]
    pub subset: Option<String>,
    /// Relative weight; a single target may omit it.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

/// A redirect answer (Istio `HTTPRedirect`, Gateway `RequestRedirect`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Replacement path; the request's path when absent.
    #[serde(default)]
    pub path: Option<PathRewrite>,
    /// Replacement authority (host); the request's when absent.
    #[serde(default)]
    pub authority: Option<String>,
    /// Replacement scheme; `http` when absent.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Replacement port, appended to the authority.
    #[serde(default)]
    pub port: Option<u16>,
    /// Status code; 301 when absent.
    #[serde(default)]
    pub code: Option<u16>,
}

/// A fixed answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    /// Status code.
    pub status: u16,
    /// Body text.
    #[serde(default)]
    pub body: String,
}

/// Rewrite applied before forwarding (Istio `HTTPRewrite`, Gateway `URLRewrite`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// New path.
    #[serde(default)]
    pub path: Option<PathRewrite>,
    /// New authority (`Host`).
    #[serde(default)]
    pub authority: Option<String>,
}

/// How a path is replaced. The query string is always kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the prefix the winning match block matched on; when that block had no prefix match,
    /// replace the whole path (Istio `rewrite.uri` semantics).
    Prefix(String),
}

/// Header edits, applied in Envoy's order: remove, then set, then add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values, keeping existing ones.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Retry policy (Istio `HTTPRetry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt; the overall timeout still applies.
    #[serde(default)]
    pub per_try_timeout: Option<HumanDuration>,
    /// Conditions, Envoy names: `5xx`, `gateway-error`, `connect-failure`, `retriable-4xx`,
    /// `reset`; defaults to `connect-failure,gateway-error,reset` as in Istio.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Base back-off between attempts (jittered, doubling); 25 ms when absent.
    #[serde(default)]
    pub backoff: Option<HumanDuration>,
}

/// Fault injection (Istio `HTTPFaultInjection`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Delay a percentage of requests.
    #[serde(default)]
    pub delay: Option<DelayFault>,
    /// Abort a percentage of requests with a status.
    #[serde(default)]
    pub abort: Option<AbortFault>,
}

/// A delay fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFault {
    /// Percentage of requests (0-100, fractional allowed).
    pub percentage: f64,
    /// How long to wait.
    pub fixed_delay: HumanDuration,
}

/// An abort fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    /// Percentage of requests (0-100, fractional allowed).
    pub percentage: f64,
    /// Status to answer with.
    pub http_status: u16,
}

/// Mirroring (Istio `mirror` + `mirrorPercentage`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Destination that receives the copies.
    pub destination: String,
    /// Subset of that destination.
    #[serde(default)]
    pub subset: Option<String>,
    /// Percentage of requests copied (0-100); 100 when absent.
    #[serde(default)]
    pub percentage: Option<f64>,
}
