//! The route table: virtual hosts, ordered rules, and the decision for one request.
//!
//! A request first selects one virtual host by its authority (exact names beat wildcards, longer
//! wildcards beat shorter ones, `*` comes last, as in Envoy), then the first rule of that host
//! whose match blocks hit. There is no fall-through to other hosts, so a miss is a 404.

pub mod action;
pub mod matcher;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{request::Parts, StatusCode};

pub use self::{
    action::{CompiledHeaderOps, WeightedTargets},
    matcher::{MatchOutcome, RequestMatch},
};
use crate::config::{
    DestinationConfig, FaultConfig, MirrorConfig, RedirectConfig, RetryConfig, RewriteConfig,
    RouteConfig, RuleConfig, WeightedDestination,
};

/// Errors compiling the route table; each names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A regex does not compile.
    #[error("invalid regex {pattern:?}: {source}")]
    BadRegex {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A header name is not a valid HTTP field name.
    #[error("invalid header name {name:?}")]
    BadHeaderName { name: String },
    /// A header value contains forbidden bytes.
    #[error("invalid value {value:?} for header {name:?}")]
    BadHeaderValue { name: String, value: String },
    /// A method is not a valid token.
    #[error("invalid method {method:?}")]
    BadMethod { method: String },
    /// A rewrite produces an invalid URI or authority.
    #[error("rewrite produces an invalid uri or authority {value:?}")]
    BadRewrite { value: String },
    /// A redirect code is not 3xx.
    #[error("redirect code {code} is not a 3xx status")]
    BadRedirectCode { code: u16 },
    /// A direct response status is not valid.
    #[error("direct response status {status} is not valid")]
    BadStatus { status: u16 },
    /// All weights of a rule are zero.
    #[error("route weights sum to zero; give at least one destination a positive weight")]
    ZeroWeights,
    /// A rule sets none or more than one of route/redirect/direct_response.
    #[error(
        "rule {rule:?} of route {route:?} must set exactly one of route, redirect, direct_response"
    )]
    AmbiguousAction { route: String, rule: String },
    /// A rule names a destination that is not configured.
    #[error(
        "unknown destination {destination:?} (subset {subset:?}) referenced by route {route:?}"
    )]
    UnknownDestination {
        route: String,
        destination: String,
        subset: Option<String>,
    },
}

/// What a rule does once matched.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward to one of the weighted targets.
    Forward(WeightedTargets),
    /// Answer with a redirect.
    Redirect(RedirectConfig),
    /// Answer with a fixed status and body.
    Direct {
        /// Status code.
        status: StatusCode,
        /// Body.
        body: Bytes,
    },
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Name of the virtual host (route) the rule belongs to.
    pub route_name: String,
    /// Rule name, or its index when unnamed.
    pub name: String,
    matches: Vec<RequestMatch>,
    /// What to do.
    pub action: Action,
    /// Rewrite before forwarding.
    pub rewrite: Option<RewriteConfig>,
    /// Edits on the upstream request.
    pub request_headers: CompiledHeaderOps,
    /// Edits on the downstream response.
    pub response_headers: CompiledHeaderOps,
    /// Overall timeout.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<RetryConfig>,
    /// Fault injection.
    pub fault: Option<FaultConfig>,
    /// Mirroring.
    pub mirror: Option<MirrorConfig>,
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The rule that matched.
    pub rule: Arc<Rule>,
    /// Details of the match, for rewrites.
    pub outcome: MatchOutcome,
}

#[derive(Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    fn parse(host: &str) -> Self {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some("") => Self::Any,
            Some(suffix) => Self::Suffix(suffix.to_owned()),
            None => Self::Exact(host),
        }
    }

    /// Specificity of the match, higher is better; `None` when it does not match.
    fn score(&self, host: &str) -> Option<usize> {
        match self {
            Self::Exact(h) => (h == host).then_some(usize::MAX),
            Self::Suffix(s) => host.ends_with(s.as_str()).then_some(s.len()),
            Self::Any => Some(0),
        }
    }
}

#[derive(Debug)]
struct VirtualHost {
    hosts: Vec<HostPattern>,
    rules: Vec<Arc<Rule>>,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    vhosts: Vec<VirtualHost>,
}

impl RouteTable {
    /// Compiles routes, checking every referenced destination and subset exists.
    pub fn new(
        routes: &[RouteConfig],
        destinations: &[DestinationConfig],
    ) -> Result<Self, RouteError> {
        let vhosts = routes
            .iter()
            .map(|r| compile_vhost(r, destinations))
            .collect::<Result<_, _>>()?;
        Ok(Self { vhosts })
    }

    /// Selects the rule for a request whose authority (port stripped, any case) is `host`.
    pub fn select(&self, host: &str, req: &Parts) -> Option<Selected> {
        let host = host.to_ascii_lowercase();
        let vhost = self.best_vhost(&host)?;
        vhost.rules.iter().find_map(|rule| {
            matcher::evaluate_any(&rule.matches, req).map(|outcome| Selected {
                rule: rule.clone(),
                outcome,
            })
        })
    }

    /// Whether some virtual host matches `host` (as [`RouteTable::select`] would pick one).
    pub fn has_host(&self, host: &str) -> bool {
        self.best_vhost(&host.to_ascii_lowercase()).is_some()
    }

    fn best_vhost(&self, host: &str) -> Option<&VirtualHost> {
        let mut best: Option<(usize, &VirtualHost)> = None;
        for vhost in &self.vhosts {
            let score = vhost.hosts.iter().filter_map(|p| p.score(host)).max();
            if let Some(score) = score {
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, vhost));
                }
            }
        }
        best.map(|(_, v)| v)
    }
}

fn compile_vhost(
    route: &RouteConfig,
    dests: &[DestinationConfig],
) -> Result<VirtualHost, RouteError> {
    let rules = route
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(&route.name, i, rule, dests).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        hosts: route.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
        rules,
    })
}

fn compile_rule(
    route: &str,
    index: usize,
    spec: &RuleConfig,
    dests: &[DestinationConfig],
) -> Result<Rule, RouteError> {
    let name = spec.name.clone().unwrap_or_else(|| index.to_string());
    let action = compile_action(route, &name, spec, dests)?;
    if let Some(m) = &spec.mirror {
        check_destination(route, &m.destination, m.subset.as_deref(), dests)?;
    }
    Ok(Rule {
        route_name: route.to_owned(),
        name,
        matches: spec
            .matches
            .iter()
            .map(RequestMatch::compile)
            .collect::<Result<_, _>>()?,
        action,
        rewrite: spec.rewrite.clone(),
        request_headers: CompiledHeaderOps::compile(&spec.request_headers)?,
        response_headers: CompiledHeaderOps::compile(&spec.response_headers)?,
        timeout: spec.timeout.map(|d| d.0),
        retries: spec.retries.clone(),
        fault: spec.fault.clone(),
        mirror: spec.mirror.clone(),
    })
}

fn compile_action(
    route: &str,
    rule: &str,
    spec: &RuleConfig,
    dests: &[DestinationConfig],
) -> Result<Action, RouteError> {
    let set = [
        !spec.route.is_empty(),
        spec.redirect.is_some(),
        spec.direct_response.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(RouteError::AmbiguousAction {
            route: route.into(),
            rule: rule.into(),
        });
    }
    if let Some(r) = &spec.redirect {
        return Ok(Action::Redirect(r.clone()));
    }
    if let Some(d) = &spec.direct_response {
        let status = StatusCode::from_u16(d.status)
            .map_err(|_| RouteError::BadStatus { status: d.status })?;
        return Ok(Action::Direct {
            status,
            body: Bytes::from(d.body.clone()),
        });
    }
    for WeightedDestination {
        destination,
        subset,
        ..
    } in &spec.route
    {
        check_destination(route, destination, subset.as_deref(), dests)?;
    }
    Ok(Action::Forward(WeightedTargets::new(spec.route.clone())?))
}

fn check_destination(
    route: &str,
    name: &str,
    subset: Option<&str>,
    dests: &[DestinationConfig],
) -> Result<(), RouteError> {
    let found = dests
        .iter()
        .find(|d| d.name == name)
        .is_some_and(|d| subset.is_none_or(|s| d.subsets.iter().any(|ds| ds.name == s)));
    if found {
        Ok(())
    } else {
        Err(RouteError::UnknownDestination {
            route: route.into(),
            destination: name.into(),
            subset: subset.map(Into::into),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WaypointConfig;

    const CONFIG: &str = r#"
destinations:
  - name: reviews
    endpoints: [{address: "127.0.0.1:1", labels: {version: v1}}]
    subsets: [{name: v1, labels: {version: v1}}]
routes:
  - name: exact
    hosts: [reviews, reviews.default.svc.cluster.local]
    rules:
      - name: first
        matches: [{path: {prefix: /a}}]
        route: [{destination: reviews, subset: v1}]
      - name: second
        matches: [{path: {prefix: /}}]
        route: [{destination: reviews}]
  - name: wildcard
    hosts: ["*.svc.cluster.local"]
    rules:
      - name: only
        direct_response: {status: 418}
  - name: catchall
    hosts: ["*"]
    rules:
      - name: post-only
        matches: [{method: POST}]
        redirect: {authority: elsewhere}
"#;

    fn table() -> RouteTable {
        let cfg = WaypointConfig::parse(CONFIG).expect("yaml");
        RouteTable::new(&cfg.routes, &cfg.destinations).expect("compiles")
    }

    fn parts(method: &str, uri: &str) -> Parts {
        let req = http::Request::builder().method(method).uri(uri).body(());
        req.expect("test request").into_parts().0
    }

    #[test]
    fn host_and_rule_selection_table() {
        let t = table();
        let cases = [
            ("reviews", "GET", "/a/x", Some(("exact", "first"))),
            ("REVIEWS", "GET", "/b", Some(("exact", "second"))),
            (
                "reviews.default.svc.cluster.local",
                "GET",
                "/a",
                Some(("exact", "first")),
            ),
            (
                "ratings.default.svc.cluster.local",
                "GET",
                "/a",
                Some(("wildcard", "only")),
            ),
            ("example.com", "POST", "/", Some(("catchall", "post-only"))),
            // The catch-all host was selected; its only rule misses: no fall-through, 404.
            ("example.com", "GET", "/", None),
        ];
        for (host, method, path, want) in cases {
            let got = t.select(host, &parts(method, path));
            let got = got
                .as_ref()
                .map(|s| (s.rule.route_name.as_str(), s.rule.name.as_str()));
            assert_eq!(got, want, "{host} {method} {path}");
        }
    }

    #[test]
    fn invalid_tables_are_rejected() {
        let bad = [
            ("routes: [{name: r, hosts: ['*'], rules: [{route: [{destination: nope}]}]}]", "unknown"),
            (
                "{destinations: [{name: d, endpoints: []}], routes: [{name: r, hosts: ['*'], rules: [{route: [{destination: d, subset: s}]}]}]}",
                "unknown",
            ),
            ("routes: [{name: r, hosts: ['*'], rules: [{}]}]", "exactly one"),
            (
                "routes: [{name: r, hosts: ['*'], rules: [{redirect: {}, direct_response: {status: 200}}]}]",
                "exactly one",
            ),
            ("routes: [{name: r, hosts: ['*'], rules: [{direct_response: {status: 1000}}]}]", "status"),
        ];
        for (yaml, want) in bad {
            let cfg = WaypointConfig::parse(yaml).expect("yaml");
            let err = RouteTable::new(&cfg.routes, &cfg.destinations).expect_err(yaml);
            assert!(err.to_string().contains(want), "{yaml}: {err}");
        }
    }
}
