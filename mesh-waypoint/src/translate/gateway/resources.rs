//! Gateway API `HTTPRoute` types: the subset of fields the waypoint reads.

use serde::Deserialize;

use crate::{config::HumanDuration, translate::istio::Metadata};

/// An `HTTPRoute`.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpRoute {
    /// Metadata.
    pub metadata: Metadata,
    /// Spec.
    pub spec: HttpRouteSpec,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpRouteSpec {
    /// Hostnames; empty means all.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One `HTTPRouteRule`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub(super) matches: Vec<Match>,
    #[serde(default)]
    pub(super) filters: Vec<Filter>,
    #[serde(default)]
    pub(super) backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub(super) timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Match {
    #[serde(default)]
    pub(super) path: Option<PathMatch>,
    #[serde(default)]
    pub(super) headers: Vec<NamedMatch>,
    #[serde(default)]
    pub(super) query_params: Vec<NamedMatch>,
    #[serde(default)]
    pub(super) method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct PathMatch {
    #[serde(default = "path_prefix", rename = "type")]
    pub(super) kind: String,
    #[serde(default = "slash")]
    pub(super) value: String,
}

pub(super) fn path_prefix() -> String {
    "PathPrefix".into()
}

pub(super) fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct NamedMatch {
    #[serde(default = "exact", rename = "type")]
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) value: String,
}

pub(super) fn exact() -> String {
    "Exact".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Filter {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub(super) response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub(super) request_redirect: Option<Redirect>,
    #[serde(default)]
    pub(super) url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub(super) request_mirror: Option<Mirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct HeaderModifier {
    #[serde(default)]
    pub(super) set: Vec<Header>,
    #[serde(default)]
    pub(super) add: Vec<Header>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Header {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Redirect {
    #[serde(default)]
    pub(super) scheme: Option<String>,
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) path: Option<PathModifier>,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct UrlRewrite {
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) path: Option<PathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PathModifier {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) replace_full_path: Option<String>,
    #[serde(default)]
    pub(super) replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Mirror {
    pub(super) backend_ref: BackendRef,
    #[serde(default)]
    pub(super) percent: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct BackendRef {
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default = "one")]
    pub(super) weight: u32,
}

pub(super) fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Timeouts {
    #[serde(default)]
    pub(super) request: Option<HumanDuration>,
    #[serde(default)]
    pub(super) backend_request: Option<HumanDuration>,
}
