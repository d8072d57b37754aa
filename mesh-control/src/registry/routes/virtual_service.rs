//! Istio VirtualService `http[]` routes into [`Route`]s.

use super::common::{
    duration, header_match, header_ops, invalid, optional_string_match, percentage, port, status,
    string_match, weight, Invalid,
};
use crate::crd::networking::{
    Destination, HeaderOperations, HttpFaultInjection, HttpMatchRequest, HttpRetry,
    HttpRoute as VsHttpRoute, Percent, VirtualService,
};
use crate::crd::StringMatch as CrdStringMatch;
use crate::model::{
    Answer, Backend, DirectResponse, Fault, HeaderMatch, HeaderOps, Mirror, PathRewrite, Redirect,
    Retry, Rewrite, Route, RouteMatch, RouteRule,
};
use crate::registry::{Ctx, ObjectKey};

/// The VirtualService's routes, for mesh traffic and/or the Istio Gateways it names.
pub fn translate(ctx: &Ctx<'_>, key: &ObjectKey, vs: &VirtualService) -> Result<Route, Invalid> {
    let spec = &vs.spec;
    if spec.hosts.is_empty() {
        return Err(invalid("spec.hosts", "at least one host is required"));
    }
    let ns = &key.namespace;
    let rules = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, h)| rule(ctx, ns, h, &format!("spec.http[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        key: format!("VirtualService/{ns}/{}", key.name),
        namespace: ns.clone(),
        hosts: spec.hosts.iter().map(|h| ctx.fqdn(h, ns)).collect(),
        port: None,
        mesh: spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh"),
        gateways: gateway_keys(&spec.gateways, ns),
        rules,
    })
}

/// `<namespace>/<name>` of every gateway named (a bare name is in the VirtualService's
/// namespace), without `mesh`.
fn gateway_keys(gateways: &[String], ns: &str) -> Vec<String> {
    gateways
        .iter()
        .filter(|g| *g != "mesh")
        .map(|g| match g.split_once('/') {
            Some(_) => g.clone(),
            None => format!("{ns}/{g}"),
        })
        .collect()
}

fn rule(ctx: &Ctx<'_>, ns: &str, http: &VsHttpRoute, at: &str) -> Result<RouteRule, Invalid> {
    check_exclusive(http, at)?;
    let headers = http.headers.as_ref();
    Ok(RouteRule {
        name: http.name.clone(),
        matches: http
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| route_match(m, &format!("{at}.match[{i}]")))
            .collect::<Result<_, _>>()?,
        backends: backends(ctx, ns, http, at)?,
        timeout: duration(http.timeout.as_ref(), &format!("{at}.timeout"))?,
        retry: http
            .retries
            .as_ref()
            .map(|r| retry(r, &format!("{at}.retries")))
            .transpose()?,
        answer: answer(http, at)?,
        rewrite: rewrite(http),
        request_headers: ops(headers.and_then(|h| h.request.as_ref()), at, "request")?,
        response_headers: ops(headers.and_then(|h| h.response.as_ref()), at, "response")?,
        fault: http
            .fault
            .as_ref()
            .map(|f| fault(f, &format!("{at}.fault")))
            .transpose()?
            .unwrap_or_default(),
        mirror: mirror(ctx, ns, http, at)?,
    })
}

/// Istio rejects a rule that both forwards and answers, or answers twice.
fn check_exclusive(http: &VsHttpRoute, at: &str) -> Result<(), Invalid> {
    let set = [
        ("route", !http.route.is_empty()),
        ("redirect", http.redirect.is_some()),
        ("directResponse", http.direct_response.is_some()),
    ];
    let present: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
    if present.len() > 1 {
        return Err(invalid(
            at,
            format!("{} are mutually exclusive", present.join(" and ")),
        ));
    }
    if http.redirect.is_some() && http.rewrite.is_some() {
        return Err(invalid(
            format!("{at}.rewrite"),
            "rewrite cannot be combined with redirect",
        ));
    }
    Ok(())
}

fn route_match(m: &HttpMatchRequest, field: &str) -> Result<RouteMatch, Invalid> {
    let method = match &m.method {
        None => None,
        Some(CrdStringMatch {
            exact: Some(method),
            prefix: None,
            regex: None,
        }) => Some(method.clone()),
        Some(_) => {
            return Err(invalid(
                format!("{field}.method"),
                "only exact method matches are supported",
            ))
        }
    };
    let headers = m.headers.iter().map(|(n, v)| (n, v, false));
    let without = m.without_headers.iter().map(|(n, v)| (n, v, true));
    Ok(RouteMatch {
        path: m
            .uri
            .as_ref()
            .map(|u| string_match(u, &format!("{field}.uri")))
            .transpose()?,
        method,
        headers: headers
            .chain(without)
            .map(|(name, v, invert)| {
                let part = if invert { "withoutHeaders" } else { "headers" };
                header_match(name, v, invert, &format!("{field}.{part}.{name}"))
            })
            .collect::<Result<_, _>>()?,
        query_params: m
            .query_params
            .iter()
            .map(|(name, v)| query_param(name, v, &format!("{field}.queryParams.{name}")))
            .collect::<Result<_, _>>()?,
        port: m
            .port
            .map(|p| port(p, &format!("{field}.port")))
            .transpose()?,
    })
}

/// Istio supports only exact and regex query parameter matches.
fn query_param(name: &str, m: &CrdStringMatch, field: &str) -> Result<HeaderMatch, Invalid> {
    if m.prefix.is_some() {
        return Err(invalid(
            field,
            "prefix query parameter matches are not supported",
        ));
    }
    Ok(HeaderMatch {
        name: name.to_string(),
        value: optional_string_match(m, field)?,
        invert: false,
    })
}

fn destination(
    ctx: &Ctx<'_>,
    ns: &str,
    d: &Destination,
    field: &str,
) -> Result<(String, Option<u16>), Invalid> {
    let port = d
        .port
        .as_ref()
        .map(|p| port(p.number, &format!("{field}.port.number")))
        .transpose()?;
    Ok((ctx.fqdn(&d.host, ns), port))
}

fn backends(
    ctx: &Ctx<'_>,
    ns: &str,
    http: &VsHttpRoute,
    at: &str,
) -> Result<Vec<Backend>, Invalid> {
    let default_weight = if http.route.len() == 1 { 100 } else { 0 };
    let mut out = Vec::new();
    for (i, d) in http.route.iter().enumerate() {
        let field = format!("{at}.route[{i}]");
        let (host, port) = destination(ctx, ns, &d.destination, &format!("{field}.destination"))?;
        out.push(Backend {
            host,
            port,
            weight: weight(d.weight, default_weight, &format!("{field}.weight"))?,
            subset: d.destination.subset.clone(),
        });
    }
    Ok(out)
}

fn retry(r: &HttpRetry, at: &str) -> Result<Retry, Invalid> {
    let attempts = u32::try_from(r.attempts).map_err(|_| {
        invalid(
            format!("{at}.attempts"),
            format!("negative attempts {}", r.attempts),
        )
    })?;
    Ok(Retry {
        attempts,
        per_try_timeout: duration(r.per_try_timeout.as_ref(), &format!("{at}.perTryTimeout"))?,
        retry_on: r
            .retry_on
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

fn answer(http: &VsHttpRoute, at: &str) -> Result<Option<Answer>, Invalid> {
    if let Some(r) = &http.redirect {
        let field = format!("{at}.redirect");
        return Ok(Some(Answer::Redirect(Redirect {
            path: r.uri.clone().map(PathRewrite::Full),
            authority: r.authority.clone(),
            scheme: r.scheme.clone(),
            port: r
                .port
                .map(|p| port(p, &format!("{field}.port")))
                .transpose()?,
            code: redirect_code(r.redirect_code, &format!("{field}.redirectCode"))?,
        })));
    }
    let Some(d) = &http.direct_response else {
        return Ok(None);
    };
    Ok(Some(Answer::Direct(DirectResponse {
        status: status(d.status, 200..=599, &format!("{at}.directResponse.status"))?,
        body: d
            .body
            .as_ref()
            .and_then(|b| b.string.clone())
            .unwrap_or_default(),
    })))
}

/// A redirect status: 301 when absent, else one of the redirect codes.
pub fn redirect_code(code: Option<u32>, field: &str) -> Result<u16, Invalid> {
    const CODES: [u32; 5] = [301, 302, 303, 307, 308];
    match code {
        None => Ok(301),
        Some(c) if CODES.contains(&c) => status(c, 300..=399, field),
        Some(c) => Err(invalid(
            field,
            format!("invalid redirect code {c}, expected one of {CODES:?}"),
        )),
    }
}

fn rewrite(http: &VsHttpRoute) -> Option<Rewrite> {
    http.rewrite.as_ref().map(|r| Rewrite {
        path: r.uri.clone().map(PathRewrite::Prefix),
        authority: r.authority.clone(),
    })
}

fn ops(ops: Option<&HeaderOperations>, at: &str, part: &str) -> Result<HeaderOps, Invalid> {
    let Some(o) = ops else {
        return Ok(HeaderOps::default());
    };
    header_ops(
        o.set.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        o.add.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &o.remove,
        &format!("{at}.headers.{part}"),
    )
}

fn fault(f: &HttpFaultInjection, at: &str) -> Result<Fault, Invalid> {
    let pct = |p: Option<&Percent>, field: String| percentage(p.map(|p| p.value), &field);
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let field = format!("{at}.delay.fixedDelay");
            let fixed = duration(d.fixed_delay.as_ref(), &field)?
                .ok_or_else(|| invalid(&field, "a fixed delay is required"))?;
            let share = pct(
                d.percentage.as_ref(),
                format!("{at}.delay.percentage.value"),
            )?;
            Some((fixed, share))
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let field = format!("{at}.abort.httpStatus");
            let code = a
                .http_status
                .ok_or_else(|| invalid(&field, "an http status is required"))?;
            let share = pct(
                a.percentage.as_ref(),
                format!("{at}.abort.percentage.value"),
            )?;
            Some((status(code, 200..=599, &field)?, share))
        }
    };
    Ok(Fault { delay, abort })
}

fn mirror(
    ctx: &Ctx<'_>,
    ns: &str,
    http: &VsHttpRoute,
    at: &str,
) -> Result<Option<Mirror>, Invalid> {
    let share = http.mirror_percentage.as_ref().map(|p| p.value);
    let Some(d) = &http.mirror else {
        return match share {
            Some(_) => Err(invalid(
                format!("{at}.mirrorPercentage"),
                "mirrorPercentage needs mirror",
            )),
            None => Ok(None),
        };
    };
    let (host, port) = destination(ctx, ns, d, &format!("{at}.mirror"))?;
    Ok(Some(Mirror {
        host,
        port,
        subset: d.subset.clone(),
        percentage: percentage(share, &format!("{at}.mirrorPercentage.value"))?,
    }))
}

/// Paths of the fields present that Weft does not implement.
pub fn unsupported(vs: &VirtualService) -> Vec<String> {
    let mut out = super::named("spec", &vs.spec.unsupported);
    for (i, http) in vs.spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        out.extend(super::named(&at, &http.unsupported));
        for (j, m) in http.matches.iter().enumerate() {
            out.extend(super::named(&format!("{at}.match[{j}]"), &m.unsupported));
        }
        let nested = [
            ("redirect", http.redirect.as_ref().map(|r| &r.unsupported)),
            ("rewrite", http.rewrite.as_ref().map(|r| &r.unsupported)),
            (
                "directResponse.body",
                http.direct_response
                    .as_ref()
                    .and_then(|d| d.body.as_ref())
                    .map(|b| &b.unsupported),
            ),
            (
                "fault.delay",
                http.fault
                    .as_ref()
                    .and_then(|f| f.delay.as_ref())
                    .map(|d| &d.unsupported),
            ),
            (
                "fault.abort",
                http.fault
                    .as_ref()
                    .and_then(|f| f.abort.as_ref())
                    .map(|a| &a.unsupported),
            ),
        ];
        for (part, map) in nested {
            if let Some(map) = map {
                out.extend(super::named(&format!("{at}.{part}"), map));
            }
        }
    }
    out
}
