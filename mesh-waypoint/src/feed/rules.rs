//! One route rule on the wire -> one domain [`RuleConfig`]: matches, action (weighted
//! backends, redirect, direct response), rewrite, header edits, timeout, retry, fault, mirror.
//! Every error names the route key; the caller turns it into a 503 for the virtual host.

use std::time::Duration;

use mesh_core::proto::control::v1 as pb;

use super::convert::{destination_name, ConvertError, ServiceView};
use crate::config::{
    AbortFault, DelayFault, DestinationConfig, DirectResponseConfig, FaultConfig,
    HeaderMatchConfig, HeaderOps, HumanDuration, MatchConfig, MirrorConfig, PathRewrite,
    RedirectConfig, RetryConfig, RewriteConfig, RuleConfig, StringMatch, ValueMatch,
    WeightedDestination,
};

/// Where one virtual host is being built: the route key, and for mesh traffic the service and
/// port the virtual host serves (ingress virtual hosts have neither).
pub(super) struct Scope<'a> {
    pub(super) route: &'a str,
    pub(super) service: Option<&'a ServiceView<'a>>,
    pub(super) port: Option<u16>,
    pub(super) destinations: &'a [DestinationConfig],
}

impl Scope<'_> {
    fn err_empty(&self, what: &'static str) -> ConvertError {
        ConvertError::EmptyOneof {
            route: self.route.to_owned(),
            what,
        }
    }

    /// The destination for `host`/`port`, which must exist. Port 0 means this virtual host's
    /// port, or for ingress the backend's only port.
    fn destination(&self, host: &str, port: u32) -> Result<String, ConvertError> {
        let host = host.to_ascii_lowercase();
        let unknown = |port: u32| ConvertError::UnknownBackend {
            route: self.route.to_owned(),
            host: host.clone(),
            port,
        };
        let port = match (port, self.port) {
            (0, Some(own)) => own,
            (0, None) => return self.only_port(&host).ok_or_else(|| unknown(0)),
            (p, _) => u16::try_from(p).map_err(|_| unknown(p))?,
        };
        let name = destination_name(&host, port);
        self.destinations
            .iter()
            .any(|d| d.name == name)
            .then_some(name)
            .ok_or_else(|| unknown(u32::from(port)))
    }

    /// The single destination of `host`, when it has exactly one port.
    fn only_port(&self, host: &str) -> Option<String> {
        let prefix = format!("{host}:");
        let mut ports = self
            .destinations
            .iter()
            .filter(|d| d.name.starts_with(&prefix));
        match (ports.next(), ports.next()) {
            (Some(only), None) => Some(only.name.clone()),
            _ => None,
        }
    }
}

/// The rules of `route` for one virtual host.
pub(super) fn rules(route: &pb::Route, scope: &Scope<'_>) -> Result<Vec<RuleConfig>, ConvertError> {
    let mut out = Vec::new();
    for (i, r) in route.rules.iter().enumerate() {
        if let Some(rule) = rule(r, i, scope)? {
            out.push(rule);
        }
    }
    Ok(out)
}

/// `None` when every match block is for another port, so the rule never applies here.
fn rule(
    r: &pb::RouteRule,
    index: usize,
    scope: &Scope<'_>,
) -> Result<Option<RuleConfig>, ConvertError> {
    // A block for another port never matches here; on ingress the listener port is unknown,
    // so port-restricted blocks are dropped (narrower, never wider).
    let port = scope.port.map(u32::from);
    let blocks: Vec<_> = r
        .matches
        .iter()
        .filter(|m| m.port == 0 || Some(m.port) == port)
        .collect();
    if !r.matches.is_empty() && blocks.is_empty() {
        return Ok(None);
    }
    let matches = blocks
        .into_iter()
        .map(|m| match_block(m, scope))
        .collect::<Result<_, _>>()?;
    let name = if r.name.is_empty() {
        index.to_string()
    } else {
        r.name.clone()
    };
    let mut rule = RuleConfig {
        name: Some(name),
        matches,
        rewrite: r.rewrite.as_ref().map(|w| rewrite(w, scope)).transpose()?,
        request_headers: header_ops(r.request_headers.as_ref()),
        response_headers: header_ops(r.response_headers.as_ref()),
        timeout: millis(r.timeout_ms),
        retries: r.retry.as_ref().map(retry),
        fault: r
            .fault
            .as_ref()
            .map(|f| fault(f, scope))
            .transpose()?
            .flatten(),
        mirror: r.mirror.as_ref().map(|m| mirror(m, scope)).transpose()?,
        ..RuleConfig::default()
    };
    action(r, scope, &mut rule)?;
    Ok(Some(rule))
}

/// Sets exactly what the wire asks; both redirect and direct response set is left for the route
/// compiler to reject (the route then answers 503).
fn action(r: &pb::RouteRule, scope: &Scope<'_>, rule: &mut RuleConfig) -> Result<(), ConvertError> {
    rule.redirect = r
        .redirect
        .as_ref()
        .map(|x| redirect(x, scope))
        .transpose()?;
    rule.direct_response = r
        .direct_response
        .as_ref()
        .map(|d| {
            let status = u16::try_from(d.status).map_err(|_| ConvertError::BadStatus {
                route: scope.route.to_owned(),
                status: d.status,
            })?;
            Ok::<_, ConvertError>(DirectResponseConfig {
                status,
                body: d.body.clone(),
            })
        })
        .transpose()?;
    if rule.redirect.is_none() && rule.direct_response.is_none() {
        rule.route = backends(&r.backends, scope)?;
    }
    Ok(())
}

/// Weighted backends; none means the service itself. All-zero weights mean equal shares.
fn backends(
    wire: &[pb::Backend],
    scope: &Scope<'_>,
) -> Result<Vec<WeightedDestination>, ConvertError> {
    if wire.is_empty() {
        let service = scope
            .service
            .ok_or_else(|| scope.err_empty("ingress rule backends"))?;
        let own = scope.destination(&service.wire.hostname, 0)?;
        return Ok(vec![WeightedDestination {
            destination: own,
            subset: None,
            weight: 100,
        }]);
    }
    let all_zero = wire.iter().all(|b| b.weight == 0);
    wire.iter()
        .map(|b| {
            Ok(WeightedDestination {
                destination: scope.destination(&b.host, b.port)?,
                subset: non_empty(&b.subset),
                weight: if all_zero { 1 } else { b.weight },
            })
        })
        .collect()
}

fn match_block(m: &pb::RouteMatch, scope: &Scope<'_>) -> Result<MatchConfig, ConvertError> {
    let path = m
        .path
        .as_ref()
        .map(|p| string_match(p).ok_or_else(|| scope.err_empty("path match")))
        .transpose()?;
    let conditions = |list: &[pb::HeaderMatch]| -> Result<Vec<_>, ConvertError> {
        list.iter().map(|h| header_match(h, scope)).collect()
    };
    Ok(MatchConfig {
        path,
        method: non_empty(&m.method),
        headers: conditions(&m.headers)?,
        query_params: conditions(&m.query_params)?,
    })
}

fn string_match(m: &pb::StringMatch) -> Option<StringMatch> {
    use pb::string_match::Kind;
    Some(match m.kind.as_ref()? {
        Kind::Exact(v) => StringMatch::Exact(v.clone()),
        Kind::Prefix(v) => StringMatch::Prefix(v.clone()),
        Kind::Regex(v) => StringMatch::Regex(v.clone()),
    })
}

fn header_match(h: &pb::HeaderMatch, scope: &Scope<'_>) -> Result<HeaderMatchConfig, ConvertError> {
    let value = match &h.value {
        None => ValueMatch::Present(true),
        Some(v) => match string_match(v).ok_or_else(|| scope.err_empty("header match"))? {
            StringMatch::Exact(s) => ValueMatch::Exact(s),
            StringMatch::Prefix(s) => ValueMatch::Prefix(s),
            StringMatch::Regex(s) => ValueMatch::Regex(s),
        },
    };
    Ok(HeaderMatchConfig {
        name: h.name.clone(),
        value,
        invert: h.invert,
    })
}

fn path_rewrite(p: &pb::PathRewrite, scope: &Scope<'_>) -> Result<PathRewrite, ConvertError> {
    use pb::path_rewrite::Kind;
    match p
        .kind
        .as_ref()
        .ok_or_else(|| scope.err_empty("path rewrite"))?
    {
        Kind::Full(v) => Ok(PathRewrite::Full(v.clone())),
        Kind::Prefix(v) => Ok(PathRewrite::Prefix(v.clone())),
    }
}

fn rewrite(w: &pb::Rewrite, scope: &Scope<'_>) -> Result<RewriteConfig, ConvertError> {
    Ok(RewriteConfig {
        path: w
            .path
            .as_ref()
            .map(|p| path_rewrite(p, scope))
            .transpose()?,
        authority: non_empty(&w.authority),
    })
}

fn redirect(r: &pb::Redirect, scope: &Scope<'_>) -> Result<RedirectConfig, ConvertError> {
    let bad_port = || ConvertError::BadPort {
        what: format!("redirect of route {}", scope.route),
        port: r.port,
    };
    let bad_code = || ConvertError::BadStatus {
        route: scope.route.to_owned(),
        status: r.code,
    };
    Ok(RedirectConfig {
        path: r
            .path
            .as_ref()
            .map(|p| path_rewrite(p, scope))
            .transpose()?,
        authority: non_empty(&r.authority),
        scheme: non_empty(&r.scheme),
        port: (r.port != 0)
            .then(|| u16::try_from(r.port).map_err(|_| bad_port()))
            .transpose()?,
        code: (r.code != 0)
            .then(|| u16::try_from(r.code).map_err(|_| bad_code()))
            .transpose()?,
    })
}

fn header_ops(wire: Option<&pb::HeaderOps>) -> HeaderOps {
    let Some(w) = wire else {
        return HeaderOps::default();
    };
    HeaderOps {
        set: w.set.clone(),
        add: w.add.clone(),
        remove: w.remove.clone(),
    }
}

fn retry(r: &pb::Retry) -> RetryConfig {
    RetryConfig {
        attempts: r.attempts,
        per_try_timeout: millis(r.per_try_timeout_ms),
        retry_on: (!r.retry_on.is_empty()).then(|| r.retry_on.join(",")),
        backoff: None,
    }
}

/// `None` when neither delay nor abort is set.
fn fault(f: &pb::Fault, scope: &Scope<'_>) -> Result<Option<FaultConfig>, ConvertError> {
    let delay = f.delay.as_ref().map(|d| DelayFault {
        percentage: d.percentage,
        fixed_delay: HumanDuration(Duration::from_millis(d.fixed_delay_ms)),
    });
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let http_status =
                u16::try_from(a.http_status).map_err(|_| ConvertError::BadStatus {
                    route: scope.route.to_owned(),
                    status: a.http_status,
                })?;
            Ok::<_, ConvertError>(AbortFault {
                percentage: a.percentage,
                http_status,
            })
        })
        .transpose()?;
    Ok((delay.is_some() || abort.is_some()).then_some(FaultConfig { delay, abort }))
}

fn mirror(m: &pb::Mirror, scope: &Scope<'_>) -> Result<MirrorConfig, ConvertError> {
    Ok(MirrorConfig {
        destination: scope.destination(&m.host, m.port)?,
        subset: non_empty(&m.subset),
        percentage: m.percentage,
    })
}

fn millis(ms: u64) -> Option<HumanDuration> {
    (ms != 0).then(|| HumanDuration(Duration::from_millis(ms)))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
