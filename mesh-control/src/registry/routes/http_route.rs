//! Gateway API HTTPRoute rules into [`Route`]s: attached to Services (GAMMA mesh routing) or
//! to Gateways (ingress routing, served by waypoints deployed as that Gateway; see
//! `feed/ingress.rs`).

use super::common::{duration, header_name, header_ops, invalid, regex_checked, weight, Invalid};
use super::virtual_service::redirect_code;
use crate::crd::gateway::{
    HeaderModifier, HttpBackendRef, HttpHeader, HttpHeaderMatch, HttpRoute, HttpRouteFilter,
    HttpRouteMatch, HttpRouteRule, ParentReference, PathModifier, RequestMirror, RequestRedirect,
    UrlRewrite,
};
use crate::model::{
    Answer, Backend, HeaderMatch, HeaderOps, Mirror, PathRewrite, Percentage, Redirect, Retry,
    Rewrite, Route, RouteMatch, RouteRule, StringMatch,
};
use crate::registry::{Ctx, ObjectKey};

/// One route per parent: a Service parent routes mesh traffic to that Service; a Gateway parent
/// routes the Gateway's ingress traffic for the route's hostnames (all when none are listed).
pub fn translate(ctx: &Ctx<'_>, key: &ObjectKey, route: &HttpRoute) -> Result<Vec<Route>, Invalid> {
    let ns = &key.namespace;
    let rules: Vec<RouteRule> = route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(ctx, ns, r, &format!("spec.rules[{i}]")))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, parent) in route.spec.parent_refs.iter().enumerate() {
        let parent_ns = parent.namespace.as_deref().unwrap_or(ns);
        let mut out_route = Route {
            key: format!("HTTPRoute/{ns}/{}#{i}", key.name),
            namespace: ns.clone(),
            hosts: vec![ctx.fqdn(&parent.name, parent_ns)],
            port: parent.port,
            mesh: true,
            gateways: Vec::new(),
            rules: rules.clone(),
        };
        match parent_kind(parent) {
            Parent::Service => {}
            Parent::Gateway => {
                out_route.hosts = gateway_hosts(&route.spec.hostnames);
                // The listener port is the Gateway's concern (its listeners), not a Service port.
                out_route.port = None;
                out_route.mesh = false;
                out_route.gateways = vec![format!("{parent_ns}/{}", parent.name)];
            }
            Parent::Other => continue,
        }
        out.push(out_route);
    }
    Ok(out)
}

enum Parent {
    Service,
    Gateway,
    Other,
}

/// A parent's kind: group and kind default to `gateway.networking.k8s.io` `Gateway`.
fn parent_kind(parent: &ParentReference) -> Parent {
    let group = parent.group.as_deref();
    match parent.kind.as_deref() {
        Some("Service") if core(group) => Parent::Service,
        None | Some("Gateway") if matches!(group, None | Some(GATEWAY_GROUP)) => Parent::Gateway,
        _ => Parent::Other,
    }
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The hosts of a route attached to a Gateway: its hostnames (lowercase), or every host.
fn gateway_hosts(hostnames: &[String]) -> Vec<String> {
    if hostnames.is_empty() {
        return vec!["*".to_string()];
    }
    hostnames.iter().map(|h| h.to_ascii_lowercase()).collect()
}

fn core(group: Option<&str>) -> bool {
    matches!(group, None | Some("") | Some("core"))
}

fn rule(ctx: &Ctx<'_>, ns: &str, rule: &HttpRouteRule, at: &str) -> Result<RouteRule, Invalid> {
    let timeouts = rule.timeouts.as_ref();
    let timeout = duration(
        timeouts.and_then(|t| t.request.as_ref()),
        &format!("{at}.timeouts.request"),
    )?;
    let per_try = duration(
        timeouts.and_then(|t| t.backend_request.as_ref()),
        &format!("{at}.timeouts.backendRequest"),
    )?;
    let mut out = RouteRule {
        name: rule.name.clone(),
        matches: rule
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| route_match(m, &format!("{at}.matches[{i}]")))
            .collect::<Result<_, _>>()?,
        backends: rule
            .backend_refs
            .iter()
            .enumerate()
            .map(|(i, b)| backend(ctx, ns, b, &format!("{at}.backendRefs[{i}]")))
            .collect::<Result<_, _>>()?,
        timeout,
        retry: per_try.map(|t| Retry {
            attempts: 0,
            per_try_timeout: Some(t),
            retry_on: Vec::new(),
        }),
        ..RouteRule::default()
    };
    apply_filters(ctx, ns, &rule.filters, at, &mut out)?;
    Ok(out)
}

fn route_match(m: &HttpRouteMatch, field: &str) -> Result<RouteMatch, Invalid> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".to_string());
            let at = format!("{field}.path");
            Some(match p.match_type.as_deref().unwrap_or("PathPrefix") {
                "Exact" => StringMatch::Exact(value),
                "PathPrefix" => StringMatch::Prefix(value),
                "RegularExpression" => {
                    StringMatch::Regex(regex_checked(&value, &format!("{at}.value"))?)
                }
                other => return Err(unknown_type(&at, "path match", other)),
            })
        }
    };
    let conditions = |items: &[HttpHeaderMatch], part: &str, lower: bool| {
        items
            .iter()
            .enumerate()
            .map(|(j, h)| condition(h, &format!("{field}.{part}[{j}]"), lower))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(RouteMatch {
        path,
        method: m.method.clone(),
        headers: conditions(&m.headers, "headers", true)?,
        query_params: conditions(&m.query_params, "queryParams", false)?,
        port: None,
    })
}

fn unknown_type(at: &str, what: &str, found: &str) -> Invalid {
    invalid(
        format!("{at}.type"),
        format!("unknown {what} type {found:?}"),
    )
}

/// A header (names lowercased) or query parameter (names kept) condition.
fn condition(h: &HttpHeaderMatch, field: &str, header: bool) -> Result<HeaderMatch, Invalid> {
    let value = match h.match_type.as_deref().unwrap_or("Exact") {
        "Exact" => StringMatch::Exact(h.value.clone()),
        "RegularExpression" => {
            StringMatch::Regex(regex_checked(&h.value, &format!("{field}.value"))?)
        }
        other => return Err(unknown_type(field, "match", other)),
    };
    let name = if header {
        header_name(&h.name, &format!("{field}.name"))?
    } else {
        h.name.clone()
    };
    Ok(HeaderMatch {
        name,
        value: Some(value),
        invert: false,
    })
}

fn service_ref(
    ctx: &Ctx<'_>,
    ns: &str,
    b: &HttpBackendRef,
    field: &str,
) -> Result<String, Invalid> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    if kind != "Service" || !core(b.group.as_deref()) {
        return Err(invalid(
            format!("{field}.kind"),
            format!("unsupported backend kind {kind:?}, only Service"),
        ));
    }
    Ok(ctx.fqdn(&b.name, b.namespace.as_deref().unwrap_or(ns)))
}

fn backend(ctx: &Ctx<'_>, ns: &str, b: &HttpBackendRef, field: &str) -> Result<Backend, Invalid> {
    Ok(Backend {
        host: service_ref(ctx, ns, b, field)?,
        port: b.port,
        weight: weight(b.weight, 1, &format!("{field}.weight"))?,
        subset: None,
    })
}

fn apply_filters(
    ctx: &Ctx<'_>,
    ns: &str,
    filters: &[HttpRouteFilter],
    at: &str,
    out: &mut RouteRule,
) -> Result<(), Invalid> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let field = format!("{at}.filters[{i}]");
        if !seen.insert(f.filter_type.as_str()) {
            let kind = &f.filter_type;
            return Err(invalid(&field, format!("filter {kind:?} is repeated")));
        }
        apply_filter(ctx, ns, f, &field, out)?;
    }
    if seen.contains("RequestRedirect") && seen.contains("URLRewrite") {
        return Err(invalid(
            format!("{at}.filters"),
            "RequestRedirect and URLRewrite cannot both be set",
        ));
    }
    if let Some(Rewrite {
        path: Some(PathRewrite::Prefix(_)),
        ..
    }) = &out.rewrite
    {
        check_prefix_matches(&out.matches, at)?;
    }
    Ok(())
}

/// `ReplacePrefixMatch` needs every match to be a path prefix match.
fn check_prefix_matches(matches: &[RouteMatch], at: &str) -> Result<(), Invalid> {
    for (i, m) in matches.iter().enumerate() {
        if !matches!(m.path, None | Some(StringMatch::Prefix(_))) {
            return Err(invalid(
                format!("{at}.matches[{i}].path"),
                "ReplacePrefixMatch needs a PathPrefix match",
            ));
        }
    }
    Ok(())
}

fn missing(field: &str, part: &str) -> Invalid {
    invalid(
        format!("{field}.{part}"),
        format!("{part} is required by the filter type"),
    )
}

fn apply_filter(
    ctx: &Ctx<'_>,
    ns: &str,
    f: &HttpRouteFilter,
    field: &str,
    out: &mut RouteRule,
) -> Result<(), Invalid> {
    match f.filter_type.as_str() {
        "RequestHeaderModifier" => {
            let m = f.request_header_modifier.as_ref();
            let m = m.ok_or_else(|| missing(field, "requestHeaderModifier"))?;
            out.request_headers = modifier(m, &format!("{field}.requestHeaderModifier"))?;
        }
        "ResponseHeaderModifier" => {
            let m = f.response_header_modifier.as_ref();
            let m = m.ok_or_else(|| missing(field, "responseHeaderModifier"))?;
            out.response_headers = modifier(m, &format!("{field}.responseHeaderModifier"))?;
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing(field, "urlRewrite"))?;
            out.rewrite = Some(url_rewrite(r, &format!("{field}.urlRewrite"))?);
        }
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref();
            let r = r.ok_or_else(|| missing(field, "requestRedirect"))?;
            let redirect = request_redirect(r, &format!("{field}.requestRedirect"))?;
            out.answer = Some(Answer::Redirect(redirect));
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing(field, "requestMirror"))?;
            out.mirror = Some(mirror(ctx, ns, m, &format!("{field}.requestMirror"))?);
        }
        other => {
            return Err(invalid(
                format!("{field}.type"),
                format!("filter type {other:?} is not supported by weft"),
            ))
        }
    }
    Ok(())
}

fn modifier(m: &HeaderModifier, at: &str) -> Result<HeaderOps, Invalid> {
    header_ops(pairs(&m.set), pairs(&m.add), &m.remove, at)
}

fn pairs(headers: &[HttpHeader]) -> impl Iterator<Item = (&str, &str)> {
    headers.iter().map(|h| (h.name.as_str(), h.value.as_str()))
}

fn path_modifier(p: &PathModifier, at: &str) -> Result<PathRewrite, Invalid> {
    let value = |v: &Option<String>, part: &str| v.clone().ok_or_else(|| missing(at, part));
    match p.modifier_type.as_str() {
        "ReplaceFullPath" => Ok(PathRewrite::Full(value(
            &p.replace_full_path,
            "replaceFullPath",
        )?)),
        "ReplacePrefixMatch" => Ok(PathRewrite::Prefix(value(
            &p.replace_prefix_match,
            "replacePrefixMatch",
        )?)),
        other => Err(unknown_type(at, "path modifier", other)),
    }
}

fn url_rewrite(r: &UrlRewrite, at: &str) -> Result<Rewrite, Invalid> {
    Ok(Rewrite {
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, &format!("{at}.path")))
            .transpose()?,
        authority: r.hostname.clone(),
    })
}

fn request_redirect(r: &RequestRedirect, at: &str) -> Result<Redirect, Invalid> {
    if let Some(scheme) = r
        .scheme
        .as_deref()
        .filter(|s| !matches!(*s, "http" | "https"))
    {
        return Err(invalid(
            format!("{at}.scheme"),
            format!("invalid scheme {scheme:?}, expected http or https"),
        ));
    }
    Ok(Redirect {
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, &format!("{at}.path")))
            .transpose()?,
        authority: r.hostname.clone(),
        scheme: r.scheme.clone(),
        port: r.port.filter(|p| *p > 0),
        code: redirect_code(r.status_code, &format!("{at}.statusCode"))?,
    })
}

fn mirror(ctx: &Ctx<'_>, ns: &str, m: &RequestMirror, at: &str) -> Result<Mirror, Invalid> {
    let percentage = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            return Err(invalid(at, "percent and fraction are mutually exclusive"))
        }
        (Some(p), None) => Percentage::from_percent(f64::from(p)),
        (None, Some(f)) => Percentage::from_fraction(f.numerator, f.denominator.unwrap_or(100)),
        (None, None) => Some(Percentage::ALL),
    }
    .ok_or_else(|| invalid(at, "the mirrored share must be within 0-100%"))?;
    let backend = &m.backend_ref;
    Ok(Mirror {
        host: service_ref(ctx, ns, backend, &format!("{at}.backendRef"))?,
        port: backend.port,
        subset: None,
        percentage,
    })
}

/// Paths of the fields present that Weft does not implement.
pub fn unsupported(route: &HttpRoute) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        out.extend(super::named(&at, &rule.unsupported));
        for (j, b) in rule.backend_refs.iter().enumerate() {
            out.extend(super::named(
                &format!("{at}.backendRefs[{j}]"),
                &b.unsupported,
            ));
        }
        for (j, f) in rule.filters.iter().enumerate() {
            out.extend(super::named(&format!("{at}.filters[{j}]"), &f.unsupported));
        }
    }
    out
}
