//! VirtualService and HTTPRoute into [`Route`]s; DestinationRule into [`TrafficPolicy`];
//! Istio Gateway into [`Gateway`].
//!
//! A rule that fails validation (bad regex, duration, weight, port) drops its whole resource
//! with a diagnostic: a partial route table could send traffic somewhere the author did not
//! intend.

use super::duration::parse_duration;
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::crd::gateway::{HttpRoute as GatewayHttpRoute, HttpRouteRule};
use crate::crd::networking::{
    DestinationRule, Gateway as IstioGateway, HttpRoute as VsHttpRoute, VirtualService,
};
use crate::crd::StringMatch as CrdStringMatch;
use crate::model::{
    Backend, Gateway, OutlierDetection, Retry, Route, RouteMatch, RouteRule, Snapshot, StringMatch,
    TrafficPolicy,
};

/// A validation failure: (field path, message).
type Invalid = (String, String);

fn string_match(m: &CrdStringMatch, field: &str) -> Result<StringMatch, Invalid> {
    let found = match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => StringMatch::Exact(v.clone()),
        (None, Some(v), None) => StringMatch::Prefix(v.clone()),
        (None, None, Some(v)) => StringMatch::Regex(regex_checked(v, field)?),
        _ => {
            return Err((
                field.to_string(),
                "exactly one of exact, prefix, regex is required".into(),
            ))
        }
    };
    Ok(found)
}

fn regex_checked(pattern: &str, field: &str) -> Result<String, Invalid> {
    regex::Regex::new(pattern)
        .map(|_| pattern.to_string())
        .map_err(|e| (field.to_string(), format!("invalid regex {pattern:?}: {e}")))
}

fn duration(text: Option<&String>, field: &str) -> Result<Option<std::time::Duration>, Invalid> {
    text.map(|t| parse_duration(t).map_err(|e| (field.to_string(), e)))
        .transpose()
}

fn port(number: u32, field: &str) -> Result<u16, Invalid> {
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            (
                field.to_string(),
                format!("invalid port {number}, expected 1-65535"),
            )
        })
}

fn weight(value: Option<i32>, default: u32, field: &str) -> Result<u32, Invalid> {
    match value {
        None => Ok(default),
        Some(w) => {
            u32::try_from(w).map_err(|_| (field.to_string(), format!("negative weight {w}")))
        }
    }
}

fn vs_rule(ctx: &Ctx<'_>, ns: &str, http: &VsHttpRoute, at: &str) -> Result<RouteRule, Invalid> {
    let mut matches = Vec::new();
    for (i, m) in http.matches.iter().enumerate() {
        let field = format!("{at}.match[{i}]");
        let method = match &m.method {
            None => None,
            Some(CrdStringMatch {
                exact: Some(method),
                prefix: None,
                regex: None,
            }) => Some(method.clone()),
            Some(_) => {
                return Err((
                    format!("{field}.method"),
                    "only exact method matches are supported".into(),
                ))
            }
        };
        let path = m
            .uri
            .as_ref()
            .map(|u| string_match(u, &format!("{field}.uri")))
            .transpose()?;
        let mut headers = Vec::new();
        for (name, hm) in &m.headers {
            headers.push((
                name.to_ascii_lowercase(),
                string_match(hm, &format!("{field}.headers.{name}"))?,
            ));
        }
        let port = m
            .port
            .map(|p| port(p, &format!("{field}.port")))
            .transpose()?;
        matches.push(RouteMatch {
            path,
            method,
            headers,
            port,
        });
    }
    let single = http.route.len() == 1;
    let mut backends = Vec::new();
    for (i, d) in http.route.iter().enumerate() {
        let field = format!("{at}.route[{i}]");
        let dest = &d.destination;
        backends.push(Backend {
            host: ctx.fqdn(&dest.host, ns),
            port: dest
                .port
                .as_ref()
                .map(|p| port(p.number, &format!("{field}.destination.port.number")))
                .transpose()?,
            weight: weight(
                d.weight,
                if single { 100 } else { 0 },
                &format!("{field}.weight"),
            )?,
            subset: dest.subset.clone(),
        });
    }
    let retry = match &http.retries {
        None => None,
        Some(r) => Some(Retry {
            attempts: u32::try_from(r.attempts).map_err(|_| {
                (
                    format!("{at}.retries.attempts"),
                    format!("negative attempts {}", r.attempts),
                )
            })?,
            per_try_timeout: duration(
                r.per_try_timeout.as_ref(),
                &format!("{at}.retries.perTryTimeout"),
            )?,
            retry_on: r
                .retry_on
                .iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }),
    };
    Ok(RouteRule {
        matches,
        backends,
        timeout: duration(http.timeout.as_ref(), &format!("{at}.timeout"))?,
        retry,
    })
}

fn virtual_service(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    vs: &VirtualService,
) -> Result<Option<Route>, Invalid> {
    let spec = &vs.spec;
    // Routes bound only to ingress gateways are not mesh routing.
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return Ok(None);
    }
    if spec.hosts.is_empty() {
        return Err(("spec.hosts".into(), "at least one host is required".into()));
    }
    let rules = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, h)| vs_rule(ctx, &key.namespace, h, &format!("spec.http[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Some(Route {
        key: format!("VirtualService/{}/{}", key.namespace, key.name),
        namespace: key.namespace.clone(),
        hosts: spec
            .hosts
            .iter()
            .map(|h| ctx.fqdn(h, &key.namespace))
            .collect(),
        port: None,
        rules,
    }))
}

fn http_route_rule(
    ctx: &Ctx<'_>,
    ns: &str,
    rule: &HttpRouteRule,
    at: &str,
) -> Result<RouteRule, Invalid> {
    let mut matches = Vec::new();
    for (i, m) in rule.matches.iter().enumerate() {
        let field = format!("{at}.matches[{i}]");
        let path = match &m.path {
            None => None,
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".to_string());
                Some(match p.match_type.as_deref().unwrap_or("PathPrefix") {
                    "Exact" => StringMatch::Exact(value),
                    "PathPrefix" => StringMatch::Prefix(value),
                    "RegularExpression" => {
                        StringMatch::Regex(regex_checked(&value, &format!("{field}.path.value"))?)
                    }
                    other => {
                        return Err((
                            format!("{field}.path.type"),
                            format!("unknown path match type {other:?}"),
                        ))
                    }
                })
            }
        };
        let mut headers = Vec::new();
        for (j, h) in m.headers.iter().enumerate() {
            let value = match h.match_type.as_deref().unwrap_or("Exact") {
                "Exact" => StringMatch::Exact(h.value.clone()),
                "RegularExpression" => StringMatch::Regex(regex_checked(
                    &h.value,
                    &format!("{field}.headers[{j}].value"),
                )?),
                other => {
                    return Err((
                        format!("{field}.headers[{j}].type"),
                        format!("unknown header match type {other:?}"),
                    ))
                }
            };
            headers.push((h.name.to_ascii_lowercase(), value));
        }
        matches.push(RouteMatch {
            path,
            method: m.method.clone(),
            headers,
            port: None,
        });
    }
    let mut backends = Vec::new();
    for (i, b) in rule.backend_refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{i}]");
        let kind = b.kind.as_deref().unwrap_or("Service");
        if kind != "Service" || !matches!(b.group.as_deref(), None | Some("") | Some("core")) {
            return Err((
                format!("{field}.kind"),
                format!("unsupported backend kind {kind:?}, only Service"),
            ));
        }
        backends.push(Backend {
            host: ctx.fqdn(&b.name, b.namespace.as_deref().unwrap_or(ns)),
            port: b.port,
            weight: weight(b.weight, 1, &format!("{field}.weight"))?,
            subset: None,
        });
    }
    let timeouts = rule.timeouts.as_ref();
    let timeout = duration(
        timeouts.and_then(|t| t.request.as_ref()),
        &format!("{at}.timeouts.request"),
    )?;
    let per_try = duration(
        timeouts.and_then(|t| t.backend_request.as_ref()),
        &format!("{at}.timeouts.backendRequest"),
    )?;
    let retry = per_try.map(|t| Retry {
        attempts: 0,
        per_try_timeout: Some(t),
        retry_on: Vec::new(),
    });
    Ok(RouteRule {
        matches,
        backends,
        timeout,
        retry,
    })
}

fn http_route(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    route: &GatewayHttpRoute,
) -> Result<Vec<Route>, Invalid> {
    let rules: Vec<RouteRule> = route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| http_route_rule(ctx, &key.namespace, r, &format!("spec.rules[{i}]")))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, parent) in route.spec.parent_refs.iter().enumerate() {
        let is_service = parent.kind.as_deref() == Some("Service")
            && matches!(parent.group.as_deref(), None | Some("") | Some("core"));
        if !is_service {
            // Attached to a Gateway: ingress routing, not the mesh's concern here.
            continue;
        }
        let ns = parent.namespace.as_deref().unwrap_or(&key.namespace);
        out.push(Route {
            key: format!("HTTPRoute/{}/{}#{i}", key.namespace, key.name),
            namespace: key.namespace.clone(),
            hosts: vec![ctx.fqdn(&parent.name, ns)],
            port: parent.port,
            rules: rules.clone(),
        });
    }
    Ok(out)
}

fn destination_rule(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    dr: &DestinationRule,
) -> Result<TrafficPolicy, Invalid> {
    let policy = dr.spec.traffic_policy.as_ref();
    let load_balancer = policy
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|l| l.simple.clone());
    if let Some(lb) = &load_balancer {
        const KNOWN: &[&str] = &[
            "ROUND_ROBIN",
            "LEAST_REQUEST",
            "RANDOM",
            "PASSTHROUGH",
            "UNSPECIFIED",
        ];
        if !KNOWN.contains(&lb.as_str()) {
            return Err((
                "spec.trafficPolicy.loadBalancer.simple".into(),
                format!("unknown load balancer {lb:?}"),
            ));
        }
    }
    let outlier = match policy.and_then(|p| p.outlier_detection.as_ref()) {
        None => None,
        Some(o) => {
            let at = "spec.trafficPolicy.outlierDetection";
            let percent = o.max_ejection_percent.unwrap_or(10);
            if percent > 100 {
                return Err((
                    format!("{at}.maxEjectionPercent"),
                    format!("{percent} is over 100"),
                ));
            }
            Some(OutlierDetection {
                consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
                interval: duration(o.interval.as_ref(), &format!("{at}.interval"))?
                    .unwrap_or(std::time::Duration::from_secs(10)),
                base_ejection_time: duration(
                    o.base_ejection_time.as_ref(),
                    &format!("{at}.baseEjectionTime"),
                )?
                .unwrap_or(std::time::Duration::from_secs(30)),
                max_ejection_percent: percent,
            })
        }
    };
    Ok(TrafficPolicy {
        key: format!("{}/{}", key.namespace, key.name),
        host: ctx.fqdn(&dr.spec.host, &key.namespace),
        load_balancer,
        outlier,
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect(),
    })
}

fn gateway(key: &ObjectKey, gw: &IstioGateway) -> Result<Gateway, Invalid> {
    let mut listeners = Vec::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let number = port(
            server.port.number,
            &format!("spec.servers[{i}].port.number"),
        )?;
        listeners.push((number, server.port.protocol.clone(), server.hosts.clone()));
    }
    Ok(Gateway {
        key: format!("{}/{}", key.namespace, key.name),
        selector: gw.spec.selector.clone(),
        listeners,
    })
}

/// Paths of fields present in the resource that Weft does not implement.
fn unsupported_fields(resource: &Resource) -> Vec<String> {
    let named = |at: String, keys: &std::collections::BTreeMap<String, serde_json::Value>| {
        keys.keys()
            .map(move |k| format!("{at}.{k}"))
            .collect::<Vec<_>>()
    };
    match resource {
        Resource::VirtualService(vs) => {
            let mut out = named("spec".into(), &vs.spec.unsupported);
            for (i, http) in vs.spec.http.iter().enumerate() {
                out.extend(named(format!("spec.http[{i}]"), &http.unsupported));
            }
            out
        }
        Resource::HttpRoute(route) => route
            .spec
            .rules
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| named(format!("spec.rules[{i}]"), &rule.unsupported))
            .collect(),
        _ => Vec::new(),
    }
}

/// Translates routes, traffic policies and gateways.
pub fn translate(ctx: &Ctx<'_>, snapshot: &mut Snapshot, diags: &mut Diagnostics<'_>) {
    let kinds = [
        Kind::VirtualService,
        Kind::HttpRoute,
        Kind::DestinationRule,
        Kind::Gateway,
    ];
    for kind in kinds {
        for (key, stored) in ctx.of_kind(kind) {
            diags.set_origin(&stored.origin);
            if let Err((field, message)) = translate_one(ctx, key, &stored.resource, snapshot) {
                diags.push(key, &field, &format!("{message}; resource ignored"));
            }
            for field in unsupported_fields(&stored.resource) {
                diags.push(
                    key,
                    &field,
                    "not supported by weft yet; this field is ignored",
                );
            }
        }
    }
}

fn translate_one(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    resource: &Resource,
    snapshot: &mut Snapshot,
) -> Result<(), Invalid> {
    match resource {
        Resource::VirtualService(vs) => {
            if let Some(route) = virtual_service(ctx, key, vs)? {
                snapshot.routes.insert(route.key.clone(), route);
            }
        }
        Resource::HttpRoute(route) => {
            for r in http_route(ctx, key, route)? {
                snapshot.routes.insert(r.key.clone(), r);
            }
        }
        Resource::DestinationRule(dr) => {
            let tp = destination_rule(ctx, key, dr)?;
            snapshot.traffic_policies.insert(tp.key.clone(), tp);
        }
        Resource::Gateway(gw) => {
            let g = gateway(key, gw)?;
            snapshot.gateways.insert(g.key.clone(), g);
        }
        _ => {}
    }
    Ok(())
}
