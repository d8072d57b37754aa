//! Model to protobuf, at the wire boundary of the feeds. Routes and traffic policies are in
//! [`routes`].

mod routes;

use std::time::Duration;

use mesh_core::proto::{address_bytes, control::v1 as pb};

pub use self::routes::{route, traffic_policy};
use crate::model;

/// HBONE port of waypoints and node tunnels.
pub const HBONE_PORT: u32 = 15008;

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn waypoint(w: &Option<model::WaypointRef>) -> Option<pb::WaypointRef> {
    w.as_ref().map(|w| pb::WaypointRef {
        namespace: w.name.namespace.clone(),
        name: w.name.name.clone(),
        address: w.address.as_ref().map(address_bytes).unwrap_or_default(),
        hbone_port: HBONE_PORT,
    })
}

fn mtls(m: model::MtlsMode) -> pb::MtlsMode {
    match m {
        model::MtlsMode::Permissive => pb::MtlsMode::Permissive,
        model::MtlsMode::Strict => pb::MtlsMode::Strict,
        model::MtlsMode::Disable => pb::MtlsMode::Disable,
    }
}

/// A workload on the wire.
pub fn workload(w: &model::Workload) -> pb::Workload {
    let tunnel = if w.enrolled {
        pb::TunnelProtocol::Hbone
    } else {
        pb::TunnelProtocol::None
    };
    pb::Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        workload_name: w.workload_name.clone(),
        workload_kind: w.workload_kind.clone(),
        namespace: w.namespace.clone(),
        addresses: w.ips.iter().map(address_bytes).collect(),
        node: w.node.clone(),
        service_account: w.service_account.clone(),
        identity: w.identity.clone(),
        tunnel: tunnel.into(),
        same_node_plaintext: w.same_node_plaintext,
        waypoint: waypoint(&w.waypoint),
        labels: w.labels.clone().into_iter().collect(),
        authorization_policies: w.policies.clone(),
        mtls: mtls(w.mtls).into(),
        port_mtls: w
            .port_mtls
            .iter()
            .map(|(port, mode)| (u32::from(*port), mtls(*mode).into()))
            .collect(),
    }
}

/// A service on the wire.
pub fn service(s: &model::Service) -> pb::Service {
    pb::Service {
        key: s.key.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips: s.vips.iter().map(address_bytes).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                port: p.port.into(),
                target_port: p.target_port.into(),
                protocol: p.protocol.clone(),
            })
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                workload_uid: e.workload_uid.clone(),
                ports: e
                    .ports
                    .iter()
                    .map(|(k, v)| (u32::from(*k), u32::from(*v)))
                    .collect(),
            })
            .collect(),
        waypoint: waypoint(&s.waypoint),
        node_local: s.node_local,
    }
}

fn cidr(net: &ipnet::IpNet) -> pb::Cidr {
    pb::Cidr {
        address: address_bytes(&net.addr()),
        prefix_len: net.prefix_len().into(),
    }
}

fn rule(r: &model::AuthRule) -> pb::Rule {
    pb::Rule {
        from: r
            .from
            .iter()
            .map(|s| pb::SourceMatch {
                principals: s.principals.clone(),
                not_principals: s.not_principals.clone(),
                namespaces: s.namespaces.clone(),
                not_namespaces: s.not_namespaces.clone(),
                ip_blocks: s.ip_blocks.iter().map(cidr).collect(),
                not_ip_blocks: s.not_ip_blocks.iter().map(cidr).collect(),
                service_accounts: s.service_accounts.clone(),
                not_service_accounts: s.not_service_accounts.clone(),
                remote_ip_blocks: s.remote_ip_blocks.iter().map(cidr).collect(),
                not_remote_ip_blocks: s.not_remote_ip_blocks.iter().map(cidr).collect(),
                request_principals: s.request_principals.clone(),
                not_request_principals: s.not_request_principals.clone(),
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|d| pb::DestinationMatch {
                ports: d.ports.iter().map(|p| u32::from(*p)).collect(),
                not_ports: d.not_ports.iter().map(|p| u32::from(*p)).collect(),
                hosts: d.hosts.clone(),
                not_hosts: d.not_hosts.clone(),
                methods: d.methods.clone(),
                not_methods: d.not_methods.clone(),
                paths: d.paths.clone(),
                not_paths: d.not_paths.clone(),
            })
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| pb::Condition {
                key: c.key.clone(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

/// The targets of a `targetRef(s)` scope on the wire; none for other scopes.
fn targets(scope: &model::PolicyScope) -> Vec<pb::PolicyTarget> {
    match scope {
        model::PolicyScope::Targeted(targets) => targets
            .iter()
            .map(|t| pb::PolicyTarget {
                kind: t.kind.clone(),
                namespace: t.namespace.clone(),
                name: t.name.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A RequestAuthentication on the wire.
pub fn request_authentication(r: &model::RequestAuthn) -> pb::RequestAuthentication {
    pb::RequestAuthentication {
        key: r.key.clone(),
        targets: targets(&r.scope),
        rules: r
            .rules
            .iter()
            .map(|p| pb::JwtRule {
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                jwks: p.jwks.clone().unwrap_or_default(),
                jwks_uri: p.jwks_uri.clone().unwrap_or_default(),
                jwks_timeout_ms: millis(p.fetch_timeout),
                from_headers: p
                    .from_headers
                    .iter()
                    .map(|(name, prefix)| pb::JwtHeader {
                        name: name.clone(),
                        prefix: prefix.clone(),
                    })
                    .collect(),
                from_params: p.from_params.clone(),
                from_cookies: p.from_cookies.clone(),
                forward_original_token: p.forward_original_token,
                output_claim_to_headers: p
                    .output_claim_to_headers
                    .iter()
                    .map(|(header, claim)| pb::ClaimToHeader {
                        header: header.clone(),
                        claim: claim.clone(),
                    })
                    .collect(),
                output_payload_to_header: p.output_payload_to_header.clone().unwrap_or_default(),
                space_delimited_claims: p.space_delimited_claims.clone(),
            })
            .collect(),
        refuse_all: r.refuse_all,
    }
}

/// An authorization policy on the wire.
pub fn authorization(a: &model::Authorization) -> pb::Authorization {
    let scope = match &a.scope {
        model::PolicyScope::Global => pb::PolicyScope::Global,
        model::PolicyScope::Namespace => pb::PolicyScope::Namespace,
        model::PolicyScope::WorkloadSelector => pb::PolicyScope::WorkloadSelector,
        model::PolicyScope::Targeted(_) => pb::PolicyScope::Targeted,
    };
    let action = match a.action {
        model::PolicyAction::Allow => pb::PolicyAction::Allow,
        model::PolicyAction::Deny => pb::PolicyAction::Deny,
        model::PolicyAction::Audit => pb::PolicyAction::Audit,
    };
    pb::Authorization {
        key: a.key.clone(),
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        scope: scope.into(),
        targets: targets(&a.scope),
        action: action.into(),
        rules: a.rules.iter().map(rule).collect(),
    }
}
