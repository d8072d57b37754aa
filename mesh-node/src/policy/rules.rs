//! Policy scoping for the node tunnel: which configured AuthorizationPolicies apply to a
//! destination workload. The decision itself is the shared evaluator in
//! [`mesh_core::authz`], so node and waypoint agree on Istio semantics.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use mesh_core::authz::{self, Action, ConnectionAttributes, Decision, OperationMatch, SourceMatch};

use super::ConnectionInfo;
use crate::config::{OperationConfig, PolicyAction, PolicyConfig, RuleConfig, SourceConfig};

/// A policy that cannot be compiled (rejected as a whole rather than half-applied).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// An `ip_blocks` entry is neither a CIDR nor an IP.
    #[error("policy {policy}: invalid ip block {value:?}")]
    IpBlock { policy: String, value: String },
}

/// A compiled policy plus where it applies.
#[derive(Debug, Clone)]
struct Scoped {
    namespace: String,
    selector: Option<BTreeMap<String, String>>,
    /// `namespace/name` of the workloads it applies to, when the control plane resolved them.
    workloads: Option<BTreeSet<String>>,
    policy: authz::Policy,
}

/// The compiled policy set.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    root_namespace: String,
    policies: Vec<Scoped>,
}

impl Policies {
    /// Compiles `configs`; `root_namespace` policies apply to every namespace.
    pub fn compile(root_namespace: &str, configs: &[PolicyConfig]) -> Result<Self, PolicyError> {
        let policies = configs
            .iter()
            .map(compile_policy)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            root_namespace: root_namespace.to_owned(),
            policies,
        })
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are no policies.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Evaluates one connection against the policies that apply to its destination.
    pub fn evaluate(&self, conn: &ConnectionInfo) -> Decision {
        let applicable = self
            .policies
            .iter()
            .filter(|p| self.applies(p, conn))
            .map(|p| &p.policy);
        let attributes = ConnectionAttributes {
            source_ip: conn.source_ip,
            source_principal: conn
                .source_identity
                .as_ref()
                .map(|id| id.to_string().trim_start_matches("spiffe://").to_owned()),
            destination_ip: conn.dest_ip,
            destination_port: conn.dest_port,
        };
        authz::evaluate(applicable, &attributes, None)
    }

    fn applies(&self, scoped: &Scoped, conn: &ConnectionInfo) -> bool {
        if let Some(workloads) = &scoped.workloads {
            return workloads.contains(&format!("{}/{}", conn.dest_namespace, conn.dest_workload));
        }
        let namespace_ok =
            scoped.namespace == conn.dest_namespace || scoped.namespace == self.root_namespace;
        let selector_ok = scoped.selector.as_ref().is_none_or(|selector| {
            selector
                .iter()
                .all(|(k, v)| conn.dest_labels.get(k) == Some(v))
        });
        namespace_ok && selector_ok
    }
}

fn compile_policy(config: &PolicyConfig) -> Result<Scoped, PolicyError> {
    let key = format!("{}/{}", config.namespace, config.name);
    let rules = config
        .rules
        .iter()
        .map(|r| compile_rule(&key, r))
        .collect::<Result<_, _>>()?;
    let workloads = (!config.workloads.is_empty())
        .then(|| config.workloads.iter().cloned().collect::<BTreeSet<_>>());
    Ok(Scoped {
        namespace: config.namespace.clone(),
        selector: config.selector.clone(),
        workloads,
        policy: authz::Policy {
            action: match config.action {
                PolicyAction::Allow => Action::Allow,
                PolicyAction::Deny => Action::Deny,
            },
            key,
            rules,
        },
    })
}

fn compile_rule(policy: &str, rule: &RuleConfig) -> Result<authz::Rule, PolicyError> {
    let from = rule
        .from
        .iter()
        .map(|s| compile_source(policy, s))
        .collect::<Result<_, _>>()?;
    let to = rule.to.iter().map(compile_operation).collect();
    Ok(authz::Rule {
        from,
        to,
        when: Vec::new(),
    })
}

fn compile_source(policy: &str, source: &SourceConfig) -> Result<SourceMatch, PolicyError> {
    let nets = |list: &[String]| {
        list.iter()
            .map(|s| {
                parse_net(s).ok_or_else(|| PolicyError::IpBlock {
                    policy: policy.to_owned(),
                    value: s.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(SourceMatch {
        principals: source.principals.clone(),
        not_principals: source.not_principals.clone(),
        namespaces: source.namespaces.clone(),
        not_namespaces: source.not_namespaces.clone(),
        ip_blocks: nets(&source.ip_blocks)?,
        not_ip_blocks: nets(&source.not_ip_blocks)?,
        ..SourceMatch::default()
    })
}

fn compile_operation(op: &OperationConfig) -> OperationMatch {
    OperationMatch {
        ports: op.ports.clone(),
        not_ports: op.not_ports.clone(),
        ..OperationMatch::default()
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
