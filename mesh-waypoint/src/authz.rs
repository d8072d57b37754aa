//! L7 authorization (Istio `AuthorizationPolicy` semantics, HTTP attributes), fail closed.
//!
//! This module owns the waypoint's policy config and its load-time checks; the decision itself is
//! the shared evaluator in [`mesh_core::authz`], so nodes and waypoints agree on semantics.
//!
//! Decision: if any DENY policy matches, deny; else if there is no ALLOW policy, allow; else
//! allow only when an ALLOW policy matches. A policy matches when any of its rules does; a
//! policy without rules matches nothing. A rule matches when `from` (any source), `to` (any
//! operation) and every `when` condition hold; empty sections match everything. Values use
//! Istio's forms: exact, `prefix*`, `*suffix`, and `*` (present and non-empty).
//!
//! Principals come from the peer's SPIFFE identity, which the HBONE layer supplies. Without
//! one, `principals` never match (so ALLOW-by-principal denies) and `not_principals` always do
//! (so DENY-unless-principal denies): both fail closed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use http::request::Parts;
use mesh_core::authz::{self, ConnectionAttributes, Decision, RequestAttributes, RequestAuth};
use serde::Deserialize;

use crate::proxy::Peer;

/// Errors compiling policies; unsupported attributes are rejected, never ignored.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A `when` key is not supported.
    #[error("policy {policy:?}: unsupported condition key {key:?}; supported: request.headers[<name>], source.principal")]
    UnsupportedKey { policy: String, key: String },
}

/// ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    /// Requests must match an ALLOW policy when any exists.
    Allow,
    /// Matching requests are denied.
    Deny,
}

/// One policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name, reported on denial.
    pub name: String,
    /// What a match means.
    pub action: PolicyAction,
    /// Rules, OR'ed.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One rule: sources, operations and conditions, AND'ed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Sources, OR'ed; empty matches any.
    #[serde(default)]
    pub from: Vec<SourceConfig>,
    /// Operations, OR'ed; empty matches any.
    #[serde(default)]
    pub to: Vec<OperationConfig>,
    /// Conditions, AND'ed.
    #[serde(default)]
    pub when: Vec<ConditionConfig>,
}

/// Who sent the request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Peer identities (`cluster.local/ns/default/sa/sleep`, SPIFFE prefix optional).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<String>,
}

/// What the request does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationConfig {
    /// Hosts (authority without port).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (without query).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A condition on a request attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// `request.headers[<name>]` or `source.principal`.
    pub key: String,
    /// Accepted values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Rejected values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// The original client behind `hops` trusted proxies, as Envoy's `xff_num_trusted_hops`
/// (Istio `numTrustedProxies`): the `hops`-th address from the right of `X-Forwarded-For`.
/// `None` (use the peer address) with no trusted hops, too few entries or an unparseable one.
pub fn remote_ip(headers: &http::HeaderMap, hops: u32) -> Option<IpAddr> {
    if hops == 0 {
        return None;
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(http::header::HeaderName::from_static("x-forwarded-for")) {
        entries.extend(value.to_str().ok()?.split(',').map(str::trim));
    }
    let index = entries.len().checked_sub(usize::try_from(hops).ok()?)?;
    entries[index].parse().ok()
}

/// A compiled policy from the control feed with the route keys (`vip:port`) it applies to.
#[derive(Debug, Clone)]
pub struct ScopedPolicy {
    /// The policy.
    pub policy: authz::Policy,
    /// Route keys (CONNECT authorities `vip:port`) of the targeted services; `None`: every
    /// request. Requests without a CONNECT authority are checked against every scoped policy,
    /// which can only deny more.
    pub scope: Option<BTreeSet<String>>,
}

impl ScopedPolicy {
    fn applies(&self, route_key: Option<&str>) -> bool {
        match (&self.scope, route_key) {
            (Some(keys), Some(key)) => keys.contains(key),
            _ => true,
        }
    }
}

/// The compiled policies.
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<authz::Policy>,
    scoped: Vec<ScopedPolicy>,
}

impl Authorizer {
    /// Compiles the policies; unsupported keys are an error.
    pub fn new(configs: &[PolicyConfig]) -> Result<Self, AuthzError> {
        let policies = configs
            .iter()
            .map(compile_policy)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            policies,
            scoped: Vec::new(),
        })
    }

    /// Adds already compiled, scoped policies (feed mode).
    pub fn with_scoped(mut self, scoped: Vec<ScopedPolicy>) -> Self {
        self.scoped = scoped;
        self
    }

    /// `Ok` to allow; `Err(policy name)` to deny.
    pub fn check(
        &self,
        req: &Parts,
        host: &str,
        peer: &Peer,
        auth: &RequestAuth,
    ) -> Result<(), String> {
        let connection = ConnectionAttributes {
            source_ip: peer.addr.ip(),
            source_principal: peer
                .identity
                .as_deref()
                .map(|id| strip_spiffe(id).to_owned()),
            // YAML policies cannot name destination addresses or ports (rejected at load); feed
            // policies may, and see the CONNECT authority (service VIP and port).
            destination_ip: peer
                .authority
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()),
            destination_port: peer.authority.map_or(0, |a| a.port()),
        };
        let route_key = peer.authority.map(|a| a.to_string());
        let scoped = self
            .scoped
            .iter()
            .filter(|s| s.applies(route_key.as_deref()))
            .map(|s| &s.policy);
        let request = RequestAttributes {
            method: req.method.as_str(),
            path: req.uri.path(),
            host,
            headers: &req.headers,
            remote_ip: remote_ip(&req.headers, peer.trusted_proxy_hops),
            sni: peer.sni.as_deref(),
            auth: Some(auth),
        };
        match authz::evaluate(
            self.policies.iter().chain(scoped),
            &connection,
            Some(&request),
        ) {
            Decision::Allow => Ok(()),
            Decision::DeniedByPolicy { policy } => Err(policy),
            Decision::NotAllowed => Err("no ALLOW policy matched".to_owned()),
        }
    }
}

fn compile_policy(c: &PolicyConfig) -> Result<authz::Policy, AuthzError> {
    let rules = c
        .rules
        .iter()
        .map(|r| {
            let when = r
                .when
                .iter()
                .map(|w| compile_condition(&c.name, w))
                .collect::<Result<_, _>>()?;
            Ok(authz::Rule {
                from: r.from.iter().map(compile_source).collect(),
                to: r.to.iter().map(compile_operation).collect(),
                when,
            })
        })
        .collect::<Result<_, _>>()?;
    let action = match c.action {
        PolicyAction::Allow => authz::Action::Allow,
        PolicyAction::Deny => authz::Action::Deny,
    };
    Ok(authz::Policy {
        key: c.name.clone(),
        action,
        rules,
    })
}

/// Principals may be written with or without `spiffe://`; the evaluator compares without.
fn principals(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .map(|p| strip_spiffe(p).to_owned())
        .collect()
}

fn compile_source(s: &SourceConfig) -> authz::SourceMatch {
    authz::SourceMatch {
        principals: principals(&s.principals),
        not_principals: principals(&s.not_principals),
        ..Default::default()
    }
}

fn compile_operation(o: &OperationConfig) -> authz::OperationMatch {
    authz::OperationMatch {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
        ..Default::default()
    }
}

fn compile_condition(policy: &str, c: &ConditionConfig) -> Result<authz::Condition, AuthzError> {
    let key = if c.key == "source.principal" {
        let values = principals(&c.values);
        let not_values = principals(&c.not_values);
        return Ok(authz::Condition {
            key: c.key.clone(),
            values,
            not_values,
        });
    } else if let Some(name) = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        format!("request.headers[{}]", name.to_ascii_lowercase())
    } else {
        return Err(AuthzError::UnsupportedKey {
            policy: policy.into(),
            key: c.key.clone(),
        });
    };
    Ok(authz::Condition {
        key,
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    })
}

fn strip_spiffe(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

#[cfg(test)]
mod tests;
