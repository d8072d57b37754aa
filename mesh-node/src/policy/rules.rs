//! Policy scoping for the node tunnel: which of the feed's AuthorizationPolicies apply to a
//! destination workload. Policies arrive as the feed's `Authorization` messages and become the
//! shared model ([`mesh_core::authz::Policy`]) in one conversion, the waypoint's too; the decision
//! is the shared evaluator, so node and waypoint agree on Istio semantics, including what a node
//! cannot see (L7 attributes): an ALLOW rule needing them never matches here, a DENY rule
//! applies whatever their value.

use std::collections::BTreeSet;

use mesh_core::{
    authz::{self, ConnectionAttributes, Decision},
    proto::control::v1 as pb,
};

use super::ConnectionInfo;

/// Which destination workloads a policy applies to at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every workload (a policy in the root namespace).
    Mesh,
    /// Every workload in this namespace.
    Namespace(String),
    /// These workloads (`namespace/name`), as mesh-control resolved the policy's selector.
    Workloads(BTreeSet<String>),
}

/// A policy and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedPolicy {
    /// Where it applies.
    pub scope: Scope,
    /// The policy.
    pub policy: authz::Policy,
}

/// The policies in force at this node.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    policies: Vec<ScopedPolicy>,
}

impl Policies {
    /// A set of scoped policies.
    pub fn new(policies: Vec<ScopedPolicy>) -> Self {
        Self { policies }
    }

    /// The node's policies among the feed's `wire` ones: `selected(key)` names the workloads
    /// (`namespace/name`) that list a selector-scoped policy. Policies enforced by waypoints
    /// (targeted) or only logged (audit) are not the node's. A policy that does not convert
    /// denies everything in its scope, one with an unknown scope everything in its namespace,
    /// each with a warning: a bad policy can only ever deny more.
    pub fn from_feed<'a>(
        wire: impl IntoIterator<Item = &'a pb::Authorization>,
        selected: impl Fn(&str) -> BTreeSet<String>,
        warnings: &mut Vec<String>,
    ) -> Self {
        let mut policies = Vec::new();
        for policy in wire {
            let scope = match pb::PolicyScope::try_from(policy.scope) {
                Ok(pb::PolicyScope::Global) => Scope::Mesh,
                Ok(pb::PolicyScope::Namespace) => Scope::Namespace(policy.namespace.clone()),
                Ok(pb::PolicyScope::WorkloadSelector) => match selected(&policy.key) {
                    workloads if workloads.is_empty() => continue,
                    workloads => Scope::Workloads(workloads),
                },
                Ok(pb::PolicyScope::Targeted) => continue,
                Err(_) => {
                    // Which workloads it covers is unknown: deny in its whole namespace.
                    warnings.push(format!(
                        "policy {}: unknown scope {} (a newer mesh-control?); denying everything \
                         in namespace {}",
                        policy.key, policy.scope, policy.namespace
                    ));
                    policies.push(ScopedPolicy {
                        scope: Scope::Namespace(policy.namespace.clone()),
                        policy: authz::Policy::deny_all(&policy.key),
                    });
                    continue;
                }
            };
            if policy.action == pb::PolicyAction::Audit as i32 {
                continue;
            }
            let (policy, error) = authz::Policy::from_proto_fail_closed(policy);
            if let Some(error) = error {
                warnings.push(format!("{error}; denying everything in its scope"));
            }
            policies.push(ScopedPolicy { scope, policy });
        }
        Self { policies }
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
            .filter(|p| applies(&p.scope, conn))
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
}

fn applies(scope: &Scope, conn: &ConnectionInfo) -> bool {
    match scope {
        Scope::Mesh => true,
        Scope::Namespace(namespace) => *namespace == conn.dest_namespace,
        Scope::Workloads(workloads) => {
            workloads.contains(&format!("{}/{}", conn.dest_namespace, conn.dest_workload))
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
