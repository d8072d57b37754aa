//! Istio `VirtualService` + `DestinationRule` (networking.istio.io/v1, HTTP part) into the
//! waypoint's domain types.
//!
//! Only the fields listed in the input types are read; the rest of a resource is ignored by
//! serde, while features the waypoint cannot honour (e.g. `match.authority`, `uriRegexRewrite`)
//! are rejected with an error naming the resource, never silently dropped.

mod resources;

use std::collections::BTreeMap;

use self::resources::*;
pub use self::resources::{
    DestinationRule, DestinationRuleSpec, Metadata, VirtualService, VirtualServiceSpec,
};
use super::TranslateError;
use crate::config::UpstreamProtocol;
use crate::config::{
    AbortFault, ConnectionPoolConfig, DelayFault, DestinationConfig, DirectResponseConfig,
    EndpointConfig, FaultConfig, HeaderMatchConfig, HeaderOps, HumanDuration, LoadBalancerConfig,
    MatchConfig, MirrorConfig, OutlierConfig, PathRewrite, RedirectConfig, RetryConfig,
    RewriteConfig, RouteConfig, RuleConfig, StringMatch, SubsetConfig, TrafficPolicy, ValueMatch,
    WeightedDestination,
};

/// Translates one `VirtualService` into a route. Destinations are named by their host.
pub fn virtual_service(vs: &VirtualService) -> Result<RouteConfig, TranslateError> {
    let rules = vs
        .spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| http_route(&vs.metadata.name, i, r))
        .collect::<Result<_, _>>()?;
    Ok(RouteConfig {
        name: vs.metadata.name.clone(),
        hosts: vs.spec.hosts.clone(),
        rules,
    })
}

fn http_route(vs: &str, index: usize, r: &HttpRoute) -> Result<RuleConfig, TranslateError> {
    let unsupported = |field: &str| TranslateError::Unsupported {
        resource: vs.to_owned(),
        field: field.to_owned(),
    };
    if r.rewrite
        .as_ref()
        .is_some_and(|rw| rw.uri_regex_rewrite.is_some())
    {
        return Err(unsupported("http.rewrite.uriRegexRewrite"));
    }
    let matches = r
        .matches
        .iter()
        .map(|m| http_match(vs, m))
        .collect::<Result<_, _>>()?;
    let single = r.route.len() == 1;
    let route = r
        .route
        .iter()
        .map(|d| WeightedDestination {
            destination: d.destination.host.clone(),
            subset: d.destination.subset.clone(),
            // Istio: a lone destination gets all traffic whatever its weight says.
            weight: if single { 100 } else { d.weight.unwrap_or(0) },
        })
        .collect();
    let (request_headers, response_headers) = headers(r.headers.as_ref());
    Ok(RuleConfig {
        name: Some(r.name.clone().unwrap_or_else(|| index.to_string())),
        matches,
        route,
        redirect: r.redirect.as_ref().map(redirect),
        direct_response: r.direct_response.as_ref().map(|d| DirectResponseConfig {
            status: d.status,
            body: d
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .unwrap_or_default(),
        }),
        rewrite: r.rewrite.as_ref().map(|rw| RewriteConfig {
            path: rw.uri.clone().map(PathRewrite::Prefix),
            authority: rw.authority.clone(),
        }),
        request_headers,
        response_headers,
        timeout: r.timeout,
        retries: r.retries.as_ref().map(|rt| RetryConfig {
            attempts: rt.attempts,
            per_try_timeout: rt.per_try_timeout,
            retry_on: rt.retry_on.clone(),
            backoff: None,
        }),
        fault: r.fault.as_ref().map(fault),
        mirror: r.mirror.as_ref().map(|m| MirrorConfig {
            destination: m.host.clone(),
            subset: m.subset.clone(),
            percentage: r.mirror_percentage.map(|p| p.value),
        }),
    })
}

fn http_match(vs: &str, m: &HttpMatch) -> Result<MatchConfig, TranslateError> {
    if m.authority.is_some() {
        return Err(TranslateError::Unsupported {
            resource: vs.to_owned(),
            field: "http.match.authority".into(),
        });
    }
    let method = match &m.method {
        Some(StringMatchSpec { exact: Some(e), .. }) => Some(e.clone()),
        Some(_) => {
            return Err(TranslateError::Unsupported {
                resource: vs.to_owned(),
                field: "http.match.method (non-exact)".into(),
            })
        }
        None => None,
    };
    let values = |map: &BTreeMap<String, StringMatchSpec>, invert: bool| {
        map.iter()
            .map(|(name, spec)| HeaderMatchConfig {
                name: name.clone(),
                value: value_match(spec),
                invert,
            })
            .collect::<Vec<_>>()
    };
    let mut headers = values(&m.headers, false);
    headers.extend(values(&m.without_headers, true));
    Ok(MatchConfig {
        path: m.uri.as_ref().and_then(string_match),
        method,
        headers,
        query_params: values(&m.query_params, false),
    })
}

fn string_match(s: &StringMatchSpec) -> Option<StringMatch> {
    match s {
        StringMatchSpec { exact: Some(e), .. } => Some(StringMatch::Exact(e.clone())),
        StringMatchSpec {
            prefix: Some(p), ..
        } => Some(StringMatch::Prefix(p.clone())),
        StringMatchSpec { regex: Some(r), .. } => Some(StringMatch::Regex(r.clone())),
        _ => None,
    }
}

fn value_match(s: &StringMatchSpec) -> ValueMatch {
    match string_match(s) {
        Some(StringMatch::Exact(e)) => ValueMatch::Exact(e),
        Some(StringMatch::Prefix(p)) => ValueMatch::Prefix(p),
        Some(StringMatch::Regex(r)) => ValueMatch::Regex(r),
        None => ValueMatch::Present(true),
    }
}

fn redirect(r: &Redirect) -> RedirectConfig {
    RedirectConfig {
        path: r.uri.clone().map(PathRewrite::Full),
        authority: r.authority.clone(),
        scheme: r.scheme.clone(),
        port: r.port,
        code: r.redirect_code,
    }
}

fn fault(f: &Fault) -> FaultConfig {
    FaultConfig {
        delay: f.delay.as_ref().map(|d| DelayFault {
            percentage: d.percentage.map_or(100.0, |p| p.value),
            fixed_delay: d.fixed_delay,
        }),
        abort: f.abort.as_ref().map(|a| AbortFault {
            percentage: a.percentage.map_or(100.0, |p| p.value),
            http_status: a.http_status,
        }),
    }
}

fn headers(h: Option<&Headers>) -> (HeaderOps, HeaderOps) {
    let ops = |o: Option<&HeaderOperations>| {
        o.map(|o| HeaderOps {
            set: o.set.clone(),
            add: o.add.clone(),
            remove: o.remove.clone(),
        })
        .unwrap_or_default()
    };
    (
        ops(h.and_then(|h| h.request.as_ref())),
        ops(h.and_then(|h| h.response.as_ref())),
    )
}

/// Translates a `DestinationRule` plus the service's endpoints into a destination.
pub fn destination_rule(
    dr: &DestinationRule,
    endpoints: Vec<EndpointConfig>,
) -> Result<DestinationConfig, TranslateError> {
    let policy = dr.spec.traffic_policy.clone().unwrap_or_default();
    Ok(DestinationConfig {
        name: dr.spec.host.clone(),
        endpoints,
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| SubsetConfig {
                name: s.name.clone(),
                labels: s.labels.clone(),
            })
            .collect(),
        traffic_policy: TrafficPolicy {
            load_balancer: load_balancer(&dr.metadata.name, policy.load_balancer.as_ref())?,
            connection_pool: connection_pool(policy.connection_pool.as_ref()),
            outlier_detection: policy.outlier_detection.as_ref().map(|o| OutlierConfig {
                consecutive_5xx: o.consecutive5xx_errors.unwrap_or(5),
                base_ejection_time: o
                    .base_ejection_time
                    .unwrap_or(HumanDuration(std::time::Duration::from_secs(30))),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(10),
            }),
            upstream_protocol: upstream_protocol(policy.connection_pool.as_ref()),
        },
    })
}

/// `h2UpgradePolicy`: `UPGRADE` forces HTTP/2, `DO_NOT_UPGRADE` HTTP/1.1, else as downstream.
fn upstream_protocol(cp: Option<&DrConnectionPool>) -> UpstreamProtocol {
    let policy = cp
        .and_then(|c| c.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy.as_deref());
    match policy {
        Some("UPGRADE") => UpstreamProtocol::Http2,
        Some("DO_NOT_UPGRADE") => UpstreamProtocol::Http1,
        _ => UpstreamProtocol::SameAsDownstream,
    }
}

fn load_balancer(
    dr: &str,
    lb: Option<&DrLoadBalancer>,
) -> Result<LoadBalancerConfig, TranslateError> {
    let Some(lb) = lb else {
        return Ok(LoadBalancerConfig::LeastRequest);
    };
    if let Some(hash) = &lb.consistent_hash {
        return match (&hash.http_header_name, &hash.http_cookie) {
            (Some(h), _) => Ok(LoadBalancerConfig::ConsistentHashHeader(h.clone())),
            (None, Some(c)) => Ok(LoadBalancerConfig::ConsistentHashCookie(c.name.clone())),
            (None, None) => Err(TranslateError::Unsupported {
                resource: dr.into(),
                field: "consistentHash (only httpHeaderName, httpCookie)".into(),
            }),
        };
    }
    match lb.simple.as_deref() {
        None | Some("LEAST_REQUEST") | Some("LEAST_CONN") | Some("UNSPECIFIED") => {
            Ok(LoadBalancerConfig::LeastRequest)
        }
        Some("ROUND_ROBIN") => Ok(LoadBalancerConfig::RoundRobin),
        Some("RANDOM") => Ok(LoadBalancerConfig::Random),
        Some(other) => Err(TranslateError::Unsupported {
            resource: dr.into(),
            field: format!("loadBalancer.simple {other}"),
        }),
    }
}

fn connection_pool(cp: Option<&DrConnectionPool>) -> ConnectionPoolConfig {
    let mut out = ConnectionPoolConfig::default();
    let Some(cp) = cp else { return out };
    if let Some(tcp) = &cp.tcp {
        out.max_connections = tcp.max_connections.unwrap_or(out.max_connections);
        out.connect_timeout = tcp.connect_timeout.unwrap_or(out.connect_timeout);
    }
    if let Some(http) = &cp.http {
        out.max_pending_requests = http
            .http1_max_pending_requests
            .unwrap_or(out.max_pending_requests);
        out.max_requests = http.http2_max_requests.unwrap_or(out.max_requests);
    }
    out
}

#[cfg(test)]
mod tests;
