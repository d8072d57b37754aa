//! From the control-plane wire type (`proto::Authorization`) to [`Policy`], failing closed.
//!
//! A policy that does not convert (an unknown action, a malformed CIDR, an out-of-range port) is
//! never dropped: [`Policy::from_proto_fail_closed`] replaces it with a policy that denies all
//! traffic in its scope, and reports why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Action, Condition, OperationMatch, Policy, Rule, SourceMatch};
use crate::proto::control::v1 as proto;

/// Why a policy from the control plane could not be used as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConvertError {
    /// The action is not one this build knows (a newer control plane?).
    #[error("policy {policy}: unknown action value {value}")]
    UnknownAction { policy: String, value: i32 },
    /// An address block has a bad length or prefix.
    #[error("policy {policy}: bad cidr ({bytes} address bytes, prefix /{prefix})")]
    BadCidr {
        policy: String,
        bytes: usize,
        prefix: u32,
    },
    /// A port is 0 or above 65535.
    #[error("policy {policy}: bad port {port}")]
    BadPort { policy: String, port: u32 },
}

impl Policy {
    /// Converts `wire`; when it is malformed, returns a deny-everything policy under the same key
    /// together with the reason, so a bad policy can only ever deny more.
    pub fn from_proto_fail_closed(
        wire: &proto::Authorization,
    ) -> (Policy, Option<PolicyConvertError>) {
        match Policy::try_from(wire) {
            Ok(policy) => (policy, None),
            Err(error) => (Policy::deny_all(&wire.key), Some(error)),
        }
    }

    /// A policy under `key` that denies everything in its scope (one empty DENY rule).
    pub fn deny_all(key: &str) -> Policy {
        Policy {
            key: key.to_string(),
            action: Action::Deny,
            rules: vec![Rule::default()],
        }
    }
}

impl TryFrom<&proto::Authorization> for Policy {
    type Error = PolicyConvertError;

    fn try_from(wire: &proto::Authorization) -> Result<Self, Self::Error> {
        let key = wire.key.as_str();
        let action = match proto::PolicyAction::try_from(wire.action) {
            Ok(proto::PolicyAction::Allow) => Action::Allow,
            Ok(proto::PolicyAction::Deny) => Action::Deny,
            Ok(proto::PolicyAction::Audit) => Action::Audit,
            Err(_) => {
                return Err(PolicyConvertError::UnknownAction {
                    policy: key.to_string(),
                    value: wire.action,
                })
            }
        };
        let rules = wire
            .rules
            .iter()
            .map(|rule| convert_rule(key, rule))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            key: key.to_string(),
            action,
            rules,
        })
    }
}

fn convert_rule(key: &str, rule: &proto::Rule) -> Result<Rule, PolicyConvertError> {
    let from = rule
        .from
        .iter()
        .map(|source| {
            Ok(SourceMatch {
                principals: source.principals.clone(),
                not_principals: source.not_principals.clone(),
                namespaces: source.namespaces.clone(),
                not_namespaces: source.not_namespaces.clone(),
                ip_blocks: cidrs(key, &source.ip_blocks)?,
                not_ip_blocks: cidrs(key, &source.not_ip_blocks)?,
                service_accounts: source.service_accounts.clone(),
                not_service_accounts: source.not_service_accounts.clone(),
                remote_ip_blocks: cidrs(key, &source.remote_ip_blocks)?,
                not_remote_ip_blocks: cidrs(key, &source.not_remote_ip_blocks)?,
                request_principals: source.request_principals.clone(),
                not_request_principals: source.not_request_principals.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    let to = rule
        .to
        .iter()
        .map(|operation| {
            Ok(OperationMatch {
                ports: ports(key, &operation.ports)?,
                not_ports: ports(key, &operation.not_ports)?,
                hosts: operation.hosts.clone(),
                not_hosts: operation.not_hosts.clone(),
                methods: operation.methods.clone(),
                not_methods: operation.not_methods.clone(),
                paths: operation.paths.clone(),
                not_paths: operation.not_paths.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    let when = rule
        .when
        .iter()
        .map(|condition| Condition {
            key: condition.key.clone(),
            values: condition.values.clone(),
            not_values: condition.not_values.clone(),
        })
        .collect();
    Ok(Rule { from, to, when })
}

fn ports(key: &str, wire: &[u32]) -> Result<Vec<u16>, PolicyConvertError> {
    wire.iter()
        .map(|port| match u16::try_from(*port) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(PolicyConvertError::BadPort {
                policy: key.to_string(),
                port: *port,
            }),
        })
        .collect()
}

fn cidrs(key: &str, wire: &[proto::Cidr]) -> Result<Vec<IpNet>, PolicyConvertError> {
    wire.iter().map(|cidr| convert_cidr(key, cidr)).collect()
}

fn convert_cidr(key: &str, cidr: &proto::Cidr) -> Result<IpNet, PolicyConvertError> {
    let bad = || PolicyConvertError::BadCidr {
        policy: key.to_string(),
        bytes: cidr.address.len(),
        prefix: cidr.prefix_len,
    };
    let address = match cidr.address.len() {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&cidr.address[..]).map_err(|_| bad())?,
        )),
        16 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&cidr.address[..]).map_err(|_| bad())?,
        )),
        _ => return Err(bad()),
    };
    let prefix = u8::try_from(cidr.prefix_len).map_err(|_| bad())?;
    IpNet::new(address, prefix).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(action: i32, rules: Vec<proto::Rule>) -> proto::Authorization {
        proto::Authorization {
            key: "demo/backend-callers".into(),
            name: "backend-callers".into(),
            namespace: "demo".into(),
            action,
            rules,
            ..Default::default()
        }
    }

    fn rule_with(source: proto::SourceMatch, operation: proto::DestinationMatch) -> proto::Rule {
        proto::Rule {
            from: vec![source],
            to: vec![operation],
            when: vec![],
        }
    }

    #[test]
    fn converts_every_field() {
        let source = proto::SourceMatch {
            principals: vec!["cluster.local/ns/demo/sa/client".into()],
            ip_blocks: vec![proto::Cidr {
                address: vec![10, 211, 0, 0],
                prefix_len: 16,
            }],
            ..Default::default()
        };
        let operation = proto::DestinationMatch {
            ports: vec![8080],
            methods: vec!["GET".into()],
            ..Default::default()
        };
        let wire = wire(
            proto::PolicyAction::Allow as i32,
            vec![rule_with(source, operation)],
        );
        let policy = Policy::try_from(&wire).unwrap();
        assert_eq!(policy.key, "demo/backend-callers");
        assert_eq!(policy.action, Action::Allow);
        let rule = &policy.rules[0];
        assert_eq!(rule.from[0].principals, ["cluster.local/ns/demo/sa/client"]);
        assert_eq!(
            rule.from[0].ip_blocks,
            ["10.211.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(rule.to[0].ports, [8080]);
        assert_eq!(rule.to[0].methods, ["GET"]);
    }

    #[test]
    fn malformed_policies_become_deny_all() {
        let bad_cidr = rule_with(
            proto::SourceMatch {
                ip_blocks: vec![proto::Cidr {
                    address: vec![10, 0, 0],
                    prefix_len: 8,
                }],
                ..Default::default()
            },
            proto::DestinationMatch::default(),
        );
        let bad_prefix = rule_with(
            proto::SourceMatch {
                ip_blocks: vec![proto::Cidr {
                    address: vec![10, 0, 0, 0],
                    prefix_len: 33,
                }],
                ..Default::default()
            },
            proto::DestinationMatch::default(),
        );
        let bad_port = rule_with(
            proto::SourceMatch::default(),
            proto::DestinationMatch {
                ports: vec![70_000],
                ..Default::default()
            },
        );
        let allow = proto::PolicyAction::Allow as i32;
        let cases = [
            wire(allow, vec![bad_cidr]),
            wire(allow, vec![bad_prefix]),
            wire(allow, vec![bad_port]),
            wire(42, vec![]),
        ];
        for case in cases {
            let (policy, error) = Policy::from_proto_fail_closed(&case);
            assert!(error.is_some(), "{case:?} converted");
            assert_eq!(policy.action, Action::Deny);
            assert_eq!(
                policy.rules,
                vec![Rule::default()],
                "deny-all must have one empty rule"
            );
        }
    }
}
