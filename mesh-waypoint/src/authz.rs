//! L7 authorization (Istio `AuthorizationPolicy` semantics, HTTP attributes), fail closed.
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

use http::request::Parts;
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

#[derive(Debug, Clone)]
enum Attribute {
    Header(String),
    Principal,
}

#[derive(Debug, Clone)]
struct Condition {
    attribute: Attribute,
    values: Vec<String>,
    not_values: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    from: Vec<SourceConfig>,
    to: Vec<OperationConfig>,
    when: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Policy {
    name: String,
    action: PolicyAction,
    rules: Vec<Rule>,
}

/// The compiled policies.
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Vec<Policy>,
}

impl Authorizer {
    /// Compiles the policies; unsupported keys are an error.
    pub fn new(configs: &[PolicyConfig]) -> Result<Self, AuthzError> {
        let policies = configs
            .iter()
            .map(compile_policy)
            .collect::<Result<_, _>>()?;
        Ok(Self { policies })
    }

    /// `Ok` to allow; `Err(policy name)` to deny.
    pub fn check(&self, req: &Parts, host: &str, peer: &Peer) -> Result<(), String> {
        let ctx = Ctx {
            req,
            host,
            principal: peer.identity.as_deref().map(strip_spiffe),
        };
        let matching = |action| self.policies.iter().filter(move |p| p.action == action);
        if let Some(p) = matching(PolicyAction::Deny).find(|p| p.matches(&ctx)) {
            return Err(p.name.clone());
        }
        let mut allows = matching(PolicyAction::Allow).peekable();
        if allows.peek().is_none() {
            return Ok(());
        }
        if allows.any(|p| p.matches(&ctx)) {
            Ok(())
        } else {
            Err("no ALLOW policy matched".to_owned())
        }
    }
}

fn compile_policy(c: &PolicyConfig) -> Result<Policy, AuthzError> {
    let rules = c
        .rules
        .iter()
        .map(|r| {
            let when = r
                .when
                .iter()
                .map(|w| compile_condition(&c.name, w))
                .collect::<Result<_, _>>()?;
            Ok(Rule {
                from: r.from.clone(),
                to: r.to.clone(),
                when,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: c.name.clone(),
        action: c.action,
        rules,
    })
}

fn compile_condition(policy: &str, c: &ConditionConfig) -> Result<Condition, AuthzError> {
    let attribute = if c.key == "source.principal" {
        Attribute::Principal
    } else if let Some(name) = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        Attribute::Header(name.to_ascii_lowercase())
    } else {
        return Err(AuthzError::UnsupportedKey {
            policy: policy.into(),
            key: c.key.clone(),
        });
    };
    Ok(Condition {
        attribute,
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    })
}

struct Ctx<'a> {
    req: &'a Parts,
    host: &'a str,
    principal: Option<&'a str>,
}

impl Policy {
    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(ctx))
    }
}

impl Rule {
    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| source_matches(s, ctx)))
            && (self.to.is_empty() || self.to.iter().any(|o| operation_matches(o, ctx)))
            && self.when.iter().all(|c| condition_matches(c, ctx))
    }
}

fn source_matches(s: &SourceConfig, ctx: &Ctx<'_>) -> bool {
    field(&s.principals, &s.not_principals, ctx.principal)
}

fn operation_matches(o: &OperationConfig, ctx: &Ctx<'_>) -> bool {
    let host = ctx.host.to_ascii_lowercase();
    field(&o.hosts, &o.not_hosts, Some(&host))
        && field(&o.methods, &o.not_methods, Some(ctx.req.method.as_str()))
        && field(&o.paths, &o.not_paths, Some(ctx.req.uri.path()))
}

fn condition_matches(c: &Condition, ctx: &Ctx<'_>) -> bool {
    let value = match &c.attribute {
        Attribute::Principal => ctx.principal,
        Attribute::Header(name) => ctx.req.headers.get(name).and_then(|v| v.to_str().ok()),
    };
    field(&c.values, &c.not_values, value)
}

/// A field with positive and negative lists: an empty positive list accepts anything; an absent
/// value matches no positive pattern and no negative one.
fn field(values: &[String], not_values: &[String], value: Option<&str>) -> bool {
    let hit = |patterns: &[String]| value.is_some_and(|v| patterns.iter().any(|p| pattern(p, v)));
    (values.is_empty() || hit(values)) && !hit(not_values)
}

/// Istio string match: `*` (non-empty), `prefix*`, `*suffix`, or exact.
fn pattern(p: &str, v: &str) -> bool {
    if p == "*" {
        return !v.is_empty();
    }
    if let Some(prefix) = p.strip_suffix('*') {
        return v.starts_with(prefix);
    }
    if let Some(suffix) = p.strip_prefix('*') {
        return v.ends_with(suffix);
    }
    p == v
}

fn strip_spiffe(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

#[cfg(test)]
mod tests;
