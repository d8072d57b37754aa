//! AuthorizationPolicy and PeerAuthentication into [`Authorization`] and mTLS modes.
//!
//! Fail closed: a policy that is invalid, unparseable or uses an unsupported action becomes a
//! DENY-everything policy over the same scope, with a diagnostic. L7 attributes in a policy
//! enforced by nodes (not attached to a waypoint) cannot be evaluated there, so, as Istio's
//! ztunnel does, ALLOW rules using them are dropped and DENY rules lose the L7 conditions
//! (denying more, never less).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Ctx, Diagnostics};
use crate::crd::security::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, MtlsMode as CrdMtls,
    PeerAuthentication, Rule,
};
use crate::crd::PolicyTargetReference;
use crate::model::{
    AuthCondition, AuthRule, Authorization, DestinationMatch, MtlsMode, PolicyAction, PolicyScope,
    PolicyTarget, SourceMatch,
};
use crate::registry::resource::ObjectKey;

/// `when` keys a node can evaluate (connection-level attributes).
const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// Whether a waypoint enforces `when` key `key` (besides [`L4_CONDITION_KEYS`]).
fn waypoint_enforces(key: &str) -> bool {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with(']'))
    };
    L4_CONDITION_KEYS.contains(&key)
        || matches!(
            key,
            "request.auth.principal"
                | "request.auth.audiences"
                | "request.auth.presenter"
                | "connection.sni"
        )
        || bracketed("request.headers[")
        || bracketed("request.auth.claims[")
}

/// What an unenforceable part does to its rule, for diagnostics.
const FAILS_CLOSED: &str = "an ALLOW rule using it matches nothing and a DENY rule using it \
                            applies whatever its value";

/// Notes about a rule that translated but cannot be enforced in full: `(field, message)`.
type Notes = Vec<(String, String)>;

/// A selector-scoped policy, for matching against workloads.
#[derive(Debug, Clone)]
pub struct SelectorPolicy {
    /// Policy key.
    pub key: String,
    /// Namespace the policy lives in.
    pub namespace: String,
    /// Labels a workload must carry.
    pub match_labels: BTreeMap<String, String>,
}

fn deny_all(key: &ObjectKey, scope: PolicyScope) -> Authorization {
    Authorization {
        key: format!("{}/{}", key.namespace, key.name),
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        scope,
        action: PolicyAction::Deny,
        rules: vec![AuthRule::default()],
        has_l7: false,
    }
}

/// Reports the fields of `key` that Istio does not define, saying what failing closed does
/// (`consequence`); whether there were any.
pub fn report_unknown_fields(
    diags: &mut Diagnostics<'_>,
    key: &ObjectKey,
    fields: &[String],
    consequence: &str,
) -> bool {
    if fields.is_empty() {
        return false;
    }
    let message = format!(
        "not a field of {} (misspelt, or from a newer Istio); {consequence}",
        key.kind.as_str()
    );
    diags.push(key, &fields.join(", "), &message);
    true
}

/// `targetRef` and `targetRefs` together, namespaces defaulting to the resource's.
pub fn targets_of(
    key: &ObjectKey,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) -> Vec<PolicyTarget> {
    target_ref
        .into_iter()
        .chain(target_refs)
        .map(|t| PolicyTarget {
            kind: t.kind.clone(),
            namespace: t.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
            name: t.name.clone(),
        })
        .collect()
}

fn scope_of(ctx: &Ctx<'_>, key: &ObjectKey, spec: &AuthorizationPolicySpec) -> PolicyScope {
    let targets = targets_of(key, spec.target_ref.as_ref(), &spec.target_refs);
    if !targets.is_empty() {
        return PolicyScope::Targeted(targets);
    }
    match &spec.selector {
        Some(selector) if !selector.match_labels.is_empty() => PolicyScope::WorkloadSelector,
        _ => namespace_scope(ctx, &key.namespace),
    }
}

fn namespace_scope(ctx: &Ctx<'_>, namespace: &str) -> PolicyScope {
    if namespace == ctx.config.root_namespace {
        PolicyScope::Global
    } else {
        PolicyScope::Namespace
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("invalid port {text:?}, expected 1-65535")),
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid ip block {text:?}, expected an address or CIDR"))
}

fn all<T>(
    items: &[String],
    field: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (String, String)> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse(item).map_err(|e| (format!("{field}[{i}]"), e)))
        .collect()
}

/// `<namespace>/<name>` into the principal pattern `*/ns/<namespace>/sa/<name>`.
fn service_account(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((ns, name))
            if !ns.is_empty() && !name.is_empty() && !name.contains('/') && !text.contains('*') =>
        {
            Ok(format!("*/ns/{ns}/sa/{name}"))
        }
        _ => Err(format!(
            "invalid service account {text:?}, expected <namespace>/<name>"
        )),
    }
}

/// Translates one rule; returns the rule and whether it used L7 attributes. Parts that are
/// translated but cannot be enforced yet (JWT principals, unknown `when` keys) go to `notes`.
fn translate_rule(
    rule: &Rule,
    at: &str,
    notes: &mut Notes,
) -> Result<(AuthRule, bool), (String, String)> {
    let mut l7 = false;
    let mut from = Vec::new();
    for (i, f) in rule.from.iter().enumerate() {
        let s = &f.source;
        let field = format!("{at}.from[{i}].source");
        l7 |= !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
        from.push(SourceMatch {
            principals: s.principals.clone(),
            not_principals: s.not_principals.clone(),
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks: all(&s.ip_blocks, &format!("{field}.ipBlocks"), parse_net)?,
            not_ip_blocks: all(&s.not_ip_blocks, &format!("{field}.notIpBlocks"), parse_net)?,
            service_accounts: all(
                &s.service_accounts,
                &format!("{field}.serviceAccounts"),
                service_account,
            )?,
            not_service_accounts: all(
                &s.not_service_accounts,
                &format!("{field}.notServiceAccounts"),
                service_account,
            )?,
            remote_ip_blocks: all(
                &s.remote_ip_blocks,
                &format!("{field}.remoteIpBlocks"),
                parse_net,
            )?,
            not_remote_ip_blocks: all(
                &s.not_remote_ip_blocks,
                &format!("{field}.notRemoteIpBlocks"),
                parse_net,
            )?,
            request_principals: s.request_principals.clone(),
            not_request_principals: s.not_request_principals.clone(),
        });
    }
    let mut to = Vec::new();
    for (i, t) in rule.to.iter().enumerate() {
        let o = &t.operation;
        let field = format!("{at}.to[{i}].operation");
        l7 |= [
            &o.hosts,
            &o.not_hosts,
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
        ]
        .iter()
        .any(|list| !list.is_empty());
        to.push(DestinationMatch {
            ports: all(&o.ports, &format!("{field}.ports"), parse_port)?,
            not_ports: all(&o.not_ports, &format!("{field}.notPorts"), parse_port)?,
            hosts: o.hosts.clone(),
            not_hosts: o.not_hosts.clone(),
            methods: o.methods.clone(),
            not_methods: o.not_methods.clone(),
            paths: o.paths.clone(),
            not_paths: o.not_paths.clone(),
        });
    }
    for (i, c) in rule.when.iter().enumerate() {
        if !waypoint_enforces(&c.key) {
            notes.push((
                format!("{at}.when[{i}].key"),
                format!("{:?} is not enforced by Weft: {FAILS_CLOSED}", c.key),
            ));
        }
    }
    let when = rule
        .when
        .iter()
        .map(|c| AuthCondition {
            key: c.key.clone(),
            values: c.values.clone(),
            not_values: c.not_values.clone(),
        })
        .collect::<Vec<_>>();
    l7 |= when
        .iter()
        .any(|c| !L4_CONDITION_KEYS.contains(&c.key.as_str()));
    Ok((AuthRule { from, to, when }, l7))
}

/// Removes L7 conditions from a rule (for DENY at node level: broader, so fail closed).
fn strip_l7(mut rule: AuthRule) -> AuthRule {
    for to in &mut rule.to {
        to.hosts.clear();
        to.not_hosts.clear();
        to.methods.clear();
        to.not_methods.clear();
        to.paths.clear();
        to.not_paths.clear();
    }
    rule.when
        .retain(|c| L4_CONDITION_KEYS.contains(&c.key.as_str()));
    rule
}

fn translate_policy(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    policy: &AuthorizationPolicy,
    diags: &mut Diagnostics<'_>,
) -> Authorization {
    let spec = &policy.spec;
    let scope = scope_of(ctx, key, spec);
    let consequence = "denying all traffic in scope";
    if report_unknown_fields(diags, key, &spec.unknown_fields, consequence) {
        return deny_all(key, scope);
    }
    if spec.provider.is_some() && spec.action != Some(AuthorizationAction::Custom) {
        diags.push(
            key,
            "spec.provider",
            "provider is only valid with action CUSTOM; denying all traffic in scope",
        );
        return deny_all(key, scope);
    }
    let action = match spec.action.unwrap_or_default() {
        AuthorizationAction::Allow => PolicyAction::Allow,
        AuthorizationAction::Deny => PolicyAction::Deny,
        AuthorizationAction::Audit => PolicyAction::Audit,
        AuthorizationAction::Custom => {
            diags.push(
                key,
                "spec.action",
                "CUSTOM is not supported; denying all traffic in scope",
            );
            return deny_all(key, scope);
        }
    };
    let mut rules = Vec::new();
    let mut has_l7 = false;
    let mut notes = Notes::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        match translate_rule(rule, &format!("spec.rules[{i}]"), &mut notes) {
            Ok((rule, l7)) => {
                has_l7 |= l7;
                rules.push((rule, l7));
            }
            Err((field, message)) => {
                diags.push(
                    key,
                    &field,
                    &format!("{message}; denying all traffic in scope"),
                );
                return deny_all(key, scope);
            }
        }
    }
    for (field, message) in &notes {
        diags.push(key, field, message);
    }
    let node_enforced = !matches!(scope, PolicyScope::Targeted(_));
    let rules = if node_enforced && has_l7 {
        diags.push(
            key,
            "spec.rules",
            "l7 attributes cannot be enforced by nodes (attach the policy to a waypoint with \
             targetRefs); enforcing the l4 part only, failing closed",
        );
        has_l7 = false;
        match action {
            PolicyAction::Allow => rules
                .into_iter()
                .filter(|(_, l7)| !l7)
                .map(|r| r.0)
                .collect(),
            _ => rules.into_iter().map(|(r, _)| strip_l7(r)).collect(),
        }
    } else {
        rules.into_iter().map(|r| r.0).collect()
    };
    Authorization {
        key: format!("{}/{}", key.namespace, key.name),
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        scope,
        action,
        rules,
        has_l7,
    }
}

/// Translates every authorization policy; returns the selector-scoped ones for matching.
pub fn translate_policies(
    ctx: &Ctx<'_>,
    out: &mut BTreeMap<String, Authorization>,
    diags: &mut Diagnostics<'_>,
) -> Vec<SelectorPolicy> {
    let mut selectors = Vec::new();
    for (key, resource) in ctx.of_kind(super::Kind::AuthorizationPolicy) {
        diags.set_origin(&resource.origin);
        let translated = match &resource.resource {
            super::Resource::AuthorizationPolicy(policy) => {
                let translated = translate_policy(ctx, key, policy, diags);
                if translated.scope == PolicyScope::WorkloadSelector {
                    selectors.push(SelectorPolicy {
                        key: translated.key.clone(),
                        namespace: key.namespace.clone(),
                        match_labels: policy
                            .spec
                            .selector
                            .as_ref()
                            .map(|s| s.match_labels.clone())
                            .unwrap_or_default(),
                    });
                }
                translated
            }
            super::Resource::BrokenAuthorizationPolicy { error } => {
                diags.push(
                    key,
                    "-",
                    &format!("{error}; denying all traffic in its namespace"),
                );
                deny_all(key, namespace_scope(ctx, &key.namespace))
            }
            _ => continue,
        };
        out.insert(translated.key.clone(), translated);
    }
    selectors
}

/// One PeerAuthentication, translated.
#[derive(Debug, Clone)]
pub struct PeerAuthn {
    /// Namespace.
    pub namespace: String,
    /// Selector labels; `None` for namespace/mesh-wide.
    pub selector: Option<BTreeMap<String, String>>,
    /// Mode; `None` for `UNSET` (inherit).
    pub mode: Option<MtlsMode>,
    /// Port-level overrides.
    pub ports: BTreeMap<u16, MtlsMode>,
}

fn mode(mode: CrdMtls) -> Option<MtlsMode> {
    match mode {
        CrdMtls::Unset => None,
        CrdMtls::Permissive => Some(MtlsMode::Permissive),
        CrdMtls::Strict => Some(MtlsMode::Strict),
        CrdMtls::Disable => Some(MtlsMode::Disable),
    }
}

fn translate_peer(
    key: &ObjectKey,
    pa: &PeerAuthentication,
    diags: &mut Diagnostics<'_>,
) -> PeerAuthn {
    let consequence = "requiring mTLS (STRICT) in its scope";
    let strict = || PeerAuthn {
        namespace: key.namespace.clone(),
        selector: selector_of(pa),
        mode: Some(MtlsMode::Strict),
        ports: BTreeMap::new(),
    };
    if report_unknown_fields(diags, key, &pa.spec.unknown_fields, consequence) {
        return strict();
    }
    let selector = selector_of(pa);
    let mut ports = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (port, mtls) in &pa.spec.port_level_mtls {
        let field = format!("spec.portLevelMtls[{port}]");
        let parsed = parse_port(port);
        // `8080` and `"08080"` are one port: which of the two modes was meant is unknown.
        if let Ok(number) = parsed {
            if !seen.insert(number) {
                let message = format!("port {number} is given twice; {consequence}");
                diags.push(key, &field, &message);
                return strict();
            }
        }
        match (parsed, mode(mtls.mode)) {
            (Err(message), _) => diags.push(key, &field, &message),
            (Ok(_), _) if selector.is_none() => {
                diags.push(key, &field, "port-level mtls requires a selector; ignored")
            }
            (Ok(port), Some(mode)) => {
                ports.insert(port, mode);
            }
            (Ok(_), None) => {}
        }
    }
    PeerAuthn {
        namespace: key.namespace.clone(),
        selector,
        mode: pa.spec.mtls.as_ref().and_then(|m| mode(m.mode)),
        ports,
    }
}

fn selector_of(pa: &PeerAuthentication) -> Option<BTreeMap<String, String>> {
    pa.spec
        .selector
        .as_ref()
        .filter(|s| !s.match_labels.is_empty())
        .map(|s| s.match_labels.clone())
}

/// Translates every PeerAuthentication.
pub fn translate_peer_authentications(
    ctx: &Ctx<'_>,
    diags: &mut Diagnostics<'_>,
) -> Vec<PeerAuthn> {
    let mut out = Vec::new();
    for (key, resource) in ctx.of_kind(super::Kind::PeerAuthentication) {
        diags.set_origin(&resource.origin);
        match &resource.resource {
            super::Resource::PeerAuthentication(pa) => out.push(translate_peer(key, pa, diags)),
            super::Resource::BrokenPeerAuthentication { error, selector } => {
                // Fail closed, whatever the policy said before the edit broke it: STRICT in its
                // scope (its selector when readable, else its whole namespace).
                let scope = match selector {
                    Some(_) => "its selected workloads",
                    None => "its whole namespace",
                };
                diags.push(
                    key,
                    "-",
                    &format!("{error}; requiring mTLS (STRICT) in {scope}"),
                );
                out.push(PeerAuthn {
                    namespace: key.namespace.clone(),
                    selector: selector.clone(),
                    mode: Some(MtlsMode::Strict),
                    ports: BTreeMap::new(),
                });
            }
            _ => {}
        }
    }
    out
}

/// Whether `selector` selects a workload with `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The effective mTLS mode and port overrides for a workload: selector policy in its namespace,
/// then the namespace-wide one, then the mesh-wide one (root namespace), then permissive.
pub fn effective_mtls(
    peers: &[PeerAuthn],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (MtlsMode, BTreeMap<u16, MtlsMode>) {
    let workload = peers.iter().find(|p| {
        p.namespace == namespace && p.selector.as_ref().is_some_and(|s| selects(s, labels))
    });
    let ns_wide = peers
        .iter()
        .find(|p| p.namespace == namespace && p.selector.is_none());
    let mesh_wide = peers
        .iter()
        .find(|p| p.namespace == root_namespace && p.selector.is_none());
    let mode = [workload, ns_wide, mesh_wide]
        .into_iter()
        .flatten()
        .find_map(|p| p.mode)
        .unwrap_or_default();
    let ports = workload.map(|p| p.ports.clone()).unwrap_or_default();
    (mode, ports)
}
