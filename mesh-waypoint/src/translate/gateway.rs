//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) into the waypoint's domain types.
//!
//! Gateway API orders matches by specificity, not by position: exact paths first, then longer
//! prefixes, then method matches, then more header matches, then more query matches, then
//! rule order. Each (rule, match) pair becomes one first-match rule, sorted that way.
//! `PathPrefix` matches whole path elements (`/foo` matches `/foo/bar`, not `/foobar`), so it
//! becomes two rules: exact `/foo` and prefix `/foo/`. Several `HTTPRoute`s for one hostname
//! are not merged (each becomes its own virtual host); that is left to the control plane.

mod resources;

use std::collections::BTreeMap;

use self::resources::*;
pub use self::resources::{HttpRoute, HttpRouteSpec, Rule};
use super::TranslateError;
use crate::config::{
    DirectResponseConfig, HeaderMatchConfig, HeaderOps, MatchConfig, MirrorConfig, PathRewrite,
    RedirectConfig, RetryConfig, RewriteConfig, RouteConfig, RuleConfig, StringMatch, ValueMatch,
    WeightedDestination,
};

/// How a path match was expanded, for `ReplacePrefixMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Exact,
    ElementPrefix,
    Other,
}

/// Translates one route; backends become destinations named `name` or `name.namespace`.
pub fn http_route(route: &HttpRoute) -> Result<RouteConfig, TranslateError> {
    let name = &route.metadata.name;
    let mut keyed = Vec::new();
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let matches = if rule.matches.is_empty() {
            vec![Match::default()]
        } else {
            rule.matches.clone()
        };
        for m in &matches {
            for (path, kind) in expand_path(name, m.path.as_ref())? {
                let spec = match_config(name, m, path)?;
                let key = specificity(&spec, index);
                keyed.push((key, rule_config(name, index, rule, spec, kind)?));
            }
        }
    }
    keyed.sort_by_key(|(key, _)| std::cmp::Reverse(*key));
    let hosts = if route.spec.hostnames.is_empty() {
        vec!["*".to_owned()]
    } else {
        route.spec.hostnames.clone()
    };
    Ok(RouteConfig {
        name: name.clone(),
        hosts,
        rules: keyed.into_iter().map(|(_, r)| r).collect(),
    })
}

/// Higher sorts first: exact, prefix length, method, headers, query params, then earlier rule.
fn specificity(
    m: &MatchConfig,
    index: usize,
) -> (bool, usize, bool, usize, usize, std::cmp::Reverse<usize>) {
    let (exact, prefix) = match &m.path {
        Some(StringMatch::Exact(p)) => (true, p.len()),
        Some(StringMatch::Prefix(p)) => (false, p.len()),
        _ => (false, 0),
    };
    (
        exact,
        prefix,
        m.method.is_some(),
        m.headers.len(),
        m.query_params.len(),
        std::cmp::Reverse(index),
    )
}

fn expand_path(
    route: &str,
    path: Option<&PathMatch>,
) -> Result<Vec<(Option<StringMatch>, PathKind)>, TranslateError> {
    let default = PathMatch {
        kind: path_prefix(),
        value: slash(),
    };
    let p = path.unwrap_or(&default);
    Ok(match p.kind.as_str() {
        "Exact" => vec![(Some(StringMatch::Exact(p.value.clone())), PathKind::Other)],
        "RegularExpression" => vec![(Some(StringMatch::Regex(p.value.clone())), PathKind::Other)],
        "PathPrefix" if p.value.ends_with('/') => vec![(
            Some(StringMatch::Prefix(p.value.clone())),
            PathKind::ElementPrefix,
        )],
        "PathPrefix" => vec![
            (Some(StringMatch::Exact(p.value.clone())), PathKind::Exact),
            (
                Some(StringMatch::Prefix(format!("{}/", p.value))),
                PathKind::ElementPrefix,
            ),
        ],
        other => return Err(unsupported(route, &format!("path match type {other}"))),
    })
}

fn match_config(
    route: &str,
    m: &Match,
    path: Option<StringMatch>,
) -> Result<MatchConfig, TranslateError> {
    let named = |list: &[NamedMatch]| {
        list.iter()
            .map(|n| {
                let value = match n.kind.as_str() {
                    "Exact" => ValueMatch::Exact(n.value.clone()),
                    "RegularExpression" => ValueMatch::Regex(n.value.clone()),
                    other => {
                        return Err(unsupported(
                            route,
                            &format!("header/query match type {other}"),
                        ))
                    }
                };
                Ok(HeaderMatchConfig {
                    name: n.name.clone(),
                    value,
                    invert: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(MatchConfig {
        path,
        method: m.method.clone(),
        headers: named(&m.headers)?,
        query_params: named(&m.query_params)?,
    })
}

fn rule_config(
    route: &str,
    index: usize,
    rule: &Rule,
    matched: MatchConfig,
    kind: PathKind,
) -> Result<RuleConfig, TranslateError> {
    let mut out = RuleConfig {
        name: Some(index.to_string()),
        matches: vec![matched],
        ..RuleConfig::default()
    };
    for f in &rule.filters {
        apply_filter(route, f, kind, &mut out)?;
    }
    out.timeout = rule.timeouts.as_ref().and_then(|t| t.request);
    if let Some(per_try) = rule.timeouts.as_ref().and_then(|t| t.backend_request) {
        out.retries = Some(RetryConfig {
            attempts: 0,
            per_try_timeout: Some(per_try),
            retry_on: None,
            backoff: None,
        });
    }
    if out.redirect.is_some() {
        return Ok(out);
    }
    out.route = rule
        .backend_refs
        .iter()
        .map(|b| WeightedDestination {
            destination: backend(b),
            subset: None,
            weight: b.weight,
        })
        .collect();
    if out.route.iter().all(|w| w.weight == 0) {
        // Gateway API: no usable backend answers 500.
        out.route.clear();
        out.direct_response = Some(DirectResponseConfig {
            status: 500,
            body: String::new(),
        });
    }
    Ok(out)
}

fn apply_filter(
    route: &str,
    f: &Filter,
    kind: PathKind,
    out: &mut RuleConfig,
) -> Result<(), TranslateError> {
    match f.kind.as_str() {
        "RequestHeaderModifier" => {
            out.request_headers = header_ops(f.request_header_modifier.as_ref())
        }
        "ResponseHeaderModifier" => {
            out.response_headers = header_ops(f.response_header_modifier.as_ref())
        }
        "RequestRedirect" => {
            let r = f.request_redirect.clone().unwrap_or_default();
            out.redirect = Some(RedirectConfig {
                path: r
                    .path
                    .as_ref()
                    .map(|p| path_modifier(route, p, kind))
                    .transpose()?,
                authority: r.hostname,
                scheme: r.scheme,
                port: r.port,
                code: Some(r.status_code.unwrap_or(302)),
            });
        }
        "URLRewrite" => {
            let r = f.url_rewrite.clone().unwrap_or_default();
            out.rewrite = Some(RewriteConfig {
                path: r
                    .path
                    .as_ref()
                    .map(|p| path_modifier(route, p, kind))
                    .transpose()?,
                authority: r.hostname,
            });
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| unsupported(route, "RequestMirror without requestMirror"))?;
            out.mirror = Some(MirrorConfig {
                destination: backend(&m.backend_ref),
                subset: None,
                percentage: m.percent,
            });
        }
        other => return Err(unsupported(route, &format!("filter {other}"))),
    }
    Ok(())
}

fn path_modifier(
    route: &str,
    p: &PathModifier,
    kind: PathKind,
) -> Result<PathRewrite, TranslateError> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(full), _) => Ok(PathRewrite::Full(full.clone())),
        ("ReplacePrefixMatch", _, Some(prefix)) => Ok(match kind {
            // The whole path was the prefix: it is replaced entirely.
            PathKind::Exact => PathRewrite::Full(prefix.clone()),
            // The match was `<prefix>/`: keep the separator after the replacement.
            PathKind::ElementPrefix if !prefix.ends_with('/') => {
                PathRewrite::Prefix(format!("{prefix}/"))
            }
            _ => PathRewrite::Prefix(prefix.clone()),
        }),
        _ => Err(unsupported(route, "path modifier without its value")),
    }
}

fn header_ops(m: Option<&HeaderModifier>) -> HeaderOps {
    let pairs = |list: &[Header]| {
        list.iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    m.map(|m| HeaderOps {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    })
    .unwrap_or_default()
}

fn backend(b: &BackendRef) -> String {
    match &b.namespace {
        Some(ns) => format!("{}.{ns}", b.name),
        None => b.name.clone(),
    }
}

fn unsupported(route: &str, field: &str) -> TranslateError {
    TranslateError::Unsupported {
        resource: route.to_owned(),
        field: field.to_owned(),
    }
}

#[cfg(test)]
mod tests;
