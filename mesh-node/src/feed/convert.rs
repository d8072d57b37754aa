//! From a control-plane [`MeshSnapshot`] to the node's mesh description ([`Config`]), so the feed
//! and a static file go through the same validation ([`crate::state::State::from_config`]).
//!
//! Fail closed wherever the snapshot asks for something the node cannot do:
//! - a service bound to a waypoint that does not resolve is left out (its VIP then leads
//!   nowhere), and so is a remote workload in that case; a local one keeps its certificate and
//!   capture but loses the binding, with a warning;
//! - policies become the shared authorization model in one step ([`Policies::from_feed`]): a
//!   policy that does not convert denies everything in its scope, and what the node cannot see
//!   (L7 attributes) makes an ALLOW rule match nothing and a DENY rule apply regardless.
//!
//! Workloads outside the mesh (`TUNNEL_PROTOCOL_NONE`) are not part of the node's mesh: traffic
//! to them passes through as plain TCP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use mesh_core::proto::control::v1 as pb;

use super::MeshSnapshot;
use crate::{
    config::{
        Config, MtlsMode, PeerAuthentication, ServiceConfig, ServicePortConfig, WaypointConfig,
        WorkloadConfig,
    },
    policy::Policies,
};

/// The node's mesh as of one snapshot, and what was left out of it.
#[derive(Debug)]
pub struct Mesh {
    /// `base` (this node's own settings: name, listeners, CA) with the snapshot's workloads,
    /// services and waypoints.
    pub config: Config,
    /// The snapshot's policies that this node enforces.
    pub policies: Policies,
    /// What was left out or fails closed, for the log.
    pub warnings: Vec<String>,
}

/// The node's mesh from `snapshot`, on top of `base`.
pub fn mesh(base: &Config, snapshot: &MeshSnapshot) -> Mesh {
    let mut warnings = Vec::new();
    let in_mesh: BTreeMap<&str, &pb::Workload> = snapshot
        .workloads
        .iter()
        .filter(|(_, w)| w.tunnel == pb::TunnelProtocol::Hbone as i32)
        .map(|(uid, w)| (uid.as_str(), w))
        .collect();
    let waypoints = resolve_waypoints(snapshot, &in_mesh, &base.node_name, &mut warnings);
    let mut config = base.clone();
    config.workloads = workloads(base, &in_mesh, &waypoints, &mut warnings);
    config.services = services(snapshot, &in_mesh, &waypoints, &mut warnings);
    drop_address_conflicts(&mut config, &mut warnings);
    // Endpoints must be workloads the node kept.
    let kept: BTreeSet<IpAddr> = config.workloads.iter().map(|w| w.ip).collect();
    for service in &mut config.services {
        service.endpoints.retain(|ip| kept.contains(ip));
    }
    config.waypoints = waypoints.into_values().collect();
    // Control resolves PeerAuthentication per workload (and port): each workload carries it.
    config.peer_authentication = PeerAuthentication::default();
    let policies = Policies::from_feed(
        snapshot.authorizations.values(),
        |key| selected(snapshot, key),
        &mut warnings,
    );
    Mesh {
        config,
        policies,
        warnings,
    }
}

/// Two workloads, or a service and anything else, on one address would make the node reject the
/// whole version ([`crate::state::StateError::DuplicateIp`]), so one tenant's object could freeze
/// every node. The first claim wins (workloads before services, each in key order: the same on
/// every node), and each one left out is named in a warning. mesh-control resolves the conflicts
/// it can see with a diagnostic first; this keeps a node working whatever it is sent.
fn drop_address_conflicts(config: &mut Config, warnings: &mut Vec<String>) {
    let mut claimed: BTreeMap<IpAddr, String> = BTreeMap::new();
    // Whether `owner` may have `ip`: yes if nobody claimed it first.
    let mut claim = |ip: IpAddr, owner: String| match claimed.get(&ip) {
        Some(first) => {
            warnings.push(format!("{owner} has address {ip} of {first}; left out"));
            false
        }
        None => {
            claimed.insert(ip, owner);
            true
        }
    };
    config
        .workloads
        .retain(|w| claim(w.ip, format!("workload {}/{}", w.namespace, w.name)));
    config
        .services
        .retain(|s| claim(s.vip, format!("service {}/{}", s.namespace, s.name)));
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// Waypoints that can be reached and whose identity is known, by `namespace/name`.
fn resolve_waypoints(
    snapshot: &MeshSnapshot,
    in_mesh: &BTreeMap<&str, &pb::Workload>,
    node_name: &str,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, WaypointConfig> {
    let refs = in_mesh.values().filter_map(|w| w.waypoint.as_ref()).chain(
        snapshot
            .services
            .values()
            .filter_map(|s| s.waypoint.as_ref()),
    );
    let mut resolved = BTreeMap::new();
    for waypoint in refs {
        let key = format!("{}/{}", waypoint.namespace, waypoint.name);
        if resolved.contains_key(&key) {
            continue;
        }
        match resolve_waypoint(snapshot, waypoint, node_name) {
            Some(config) => {
                resolved.insert(key, config);
            }
            None => warnings.push(format!(
                "waypoint {key} does not resolve; traffic bound to it is refused"
            )),
        }
    }
    resolved
}

/// A waypoint's identity and the pod the node sends its traffic to. Like ztunnel, the node does
/// not rely on the waypoint Service's VIP being routable: it picks one of the Service's pods,
/// spreading nodes over replicas by rendezvous hashing on the node name.
fn resolve_waypoint(
    snapshot: &MeshSnapshot,
    waypoint: &pb::WaypointRef,
    node_name: &str,
) -> Option<WaypointConfig> {
    // An empty address means control knows no such waypoint: fail closed.
    address(&waypoint.address)?;
    let port = u16::try_from(waypoint.hbone_port)
        .ok()
        .filter(|p| *p != 0)?;
    let service = snapshot
        .services
        .values()
        .find(|s| s.name == waypoint.name && s.namespace == waypoint.namespace)?;
    let (pod, ip) = service
        .endpoints
        .iter()
        .filter_map(|e| snapshot.workloads.get(&e.workload_uid))
        .filter_map(|w| Some((w, address(w.addresses.first()?)?)))
        .max_by_key(|(w, _)| rendezvous(node_name, &w.uid))?;
    Some(WaypointConfig {
        name: waypoint.name.clone(),
        namespace: waypoint.namespace.clone(),
        service_account: pod.service_account.clone(),
        address: SocketAddr::new(ip, port),
    })
}

/// Rendezvous weight of `replica` for `node`: stable across runs and builds (FNV-1a).
fn rendezvous(node: &str, replica: &str) -> u64 {
    node.bytes()
        .chain([0])
        .chain(replica.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The waypoint name to bind, or `Err` when the binding cannot be honoured.
fn binding(
    waypoint: Option<&pb::WaypointRef>,
    owner_namespace: &str,
    waypoints: &BTreeMap<String, WaypointConfig>,
) -> Result<Option<String>, ()> {
    let Some(waypoint) = waypoint else {
        return Ok(None);
    };
    let key = format!("{}/{}", waypoint.namespace, waypoint.name);
    // The node config binds waypoints by name in the owner's namespace.
    match waypoints.get(&key) {
        Some(_) if waypoint.namespace == owner_namespace => Ok(Some(waypoint.name.clone())),
        _ => Err(()),
    }
}

fn workloads(
    base: &Config,
    in_mesh: &BTreeMap<&str, &pb::Workload>,
    waypoints: &BTreeMap<String, WaypointConfig>,
    warnings: &mut Vec<String>,
) -> Vec<WorkloadConfig> {
    let mut out = Vec::new();
    for (uid, w) in in_mesh {
        // A pod whose sandbox is starting has no address yet: nothing to route to or capture
        // until the CNI plugin or the kubelet gives one (`crate::cni::fill_addresses`).
        if w.addresses.is_empty() {
            continue;
        }
        let Some(ip) = w.addresses.first().and_then(|a| address(a)) else {
            warnings.push(format!("workload {uid} has no usable address; left out"));
            continue;
        };
        let local = w.node == base.node_name;
        let waypoint = match binding(w.waypoint.as_ref(), &w.namespace, waypoints) {
            Ok(waypoint) => waypoint,
            Err(()) if local => {
                warnings.push(format!(
                    "workload {uid}: waypoint unresolved; bound to none"
                ));
                None
            }
            Err(()) => {
                warnings.push(format!("workload {uid}: waypoint unresolved; left out"));
                continue;
            }
        };
        out.push(WorkloadConfig {
            name: w.name.clone(),
            workload_name: Some(w.workload_name.clone()).filter(|n| !n.is_empty()),
            workload_kind: Some(w.workload_kind.clone()).filter(|k| !k.is_empty()),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            ip,
            node: w.node.clone(),
            labels: w.labels.clone().into_iter().collect(),
            waypoint,
            mtls: Some(mtls_mode(w.mtls)),
            port_mtls: port_modes(uid, &w.port_mtls, warnings),
            same_node_plaintext: w.same_node_plaintext,
        });
    }
    out
}

fn services(
    snapshot: &MeshSnapshot,
    in_mesh: &BTreeMap<&str, &pb::Workload>,
    waypoints: &BTreeMap<String, WaypointConfig>,
    warnings: &mut Vec<String>,
) -> Vec<ServiceConfig> {
    let mut out = Vec::new();
    for (key, s) in &snapshot.services {
        let Some(vip) = s.vips.first().and_then(|a| address(a)) else {
            continue; // Headless or external: nothing to capture by address.
        };
        let Ok(waypoint) = binding(s.waypoint.as_ref(), &s.namespace, waypoints) else {
            warnings.push(format!("service {key}: waypoint unresolved; left out"));
            continue;
        };
        let ports = s
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
                let target = u16::try_from(p.target_port).ok().filter(|p| *p != 0);
                Some(ServicePortConfig {
                    port,
                    target_port: target,
                })
            })
            .collect();
        let endpoints = s
            .endpoints
            .iter()
            .filter_map(|e| in_mesh.get(e.workload_uid.as_str()))
            .filter_map(|w| w.addresses.first().and_then(|a| address(a)))
            .collect();
        out.push(ServiceConfig {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            vip,
            ports,
            endpoints,
            waypoint,
        });
    }
    out
}

/// A wire mode as the node's: DISABLE accepts plaintext like PERMISSIVE; unknown values (a newer
/// control plane) fail closed as STRICT.
fn mtls_mode(mode: i32) -> MtlsMode {
    match pb::MtlsMode::try_from(mode) {
        Ok(pb::MtlsMode::Permissive | pb::MtlsMode::Disable) => MtlsMode::Permissive,
        Ok(pb::MtlsMode::Strict) | Err(_) => MtlsMode::Strict,
    }
}

/// Per-port modes; ports that do not fit 1-65535 are left out with a warning.
fn port_modes(
    uid: &str,
    ports: &BTreeMap<u32, i32>,
    warnings: &mut Vec<String>,
) -> BTreeMap<u16, MtlsMode> {
    let mut out = BTreeMap::new();
    for (port, mode) in ports {
        match u16::try_from(*port).ok().filter(|p| *p != 0) {
            Some(port) => {
                out.insert(port, mtls_mode(*mode));
            }
            None => warnings.push(format!("workload {uid}: port mtls for port {port} ignored")),
        }
    }
    out
}

/// `namespace/name` of the workloads that list `key` among their policies.
fn selected(snapshot: &MeshSnapshot, key: &str) -> BTreeSet<String> {
    snapshot
        .workloads
        .values()
        .filter(|w| w.authorization_policies.iter().any(|p| p == key))
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect()
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
