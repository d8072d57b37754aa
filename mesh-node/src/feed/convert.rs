//! From a feed version ([`MeshSnapshot`], live or saved) to the node's runtime view: the
//! [`State`] routing and capture use, and the [`Policies`] it enforces. This is the only
//! conversion of mesh content on the node: no second schema sits in between.
//!
//! Fail closed wherever the snapshot asks for something the node cannot do:
//! - a service bound to a waypoint that does not resolve is left out (its VIP then leads
//!   nowhere), and so is a remote workload in that case; a local one keeps its certificate and
//!   capture but loses the binding, with a warning;
//! - an address claimed twice stays with the first claim (workloads before services, each in
//!   key order: the same on every node) and the later object is left out, so one tenant's
//!   object cannot make the node refuse the whole version;
//! - policies become the shared authorization model in one step ([`Policies::from_feed`]): a
//!   policy that does not convert denies everything in its scope, and what the node cannot see
//!   (L7 attributes) makes an ALLOW rule match nothing and a DENY rule apply regardless.
//!
//! Workloads outside the mesh (`TUNNEL_PROTOCOL_NONE`) are not part of the node's mesh: traffic
//! to them passes through as plain TCP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use mesh_core::{
    hbone::baggage::{canonical_revision, canonical_service, WorkloadMeta},
    identity::SpiffeId,
    proto::control::v1 as pb,
};

use super::MeshSnapshot;
use crate::{
    config::Config,
    policy::Policies,
    state::{MtlsMode, Service, State, Waypoint, Workload},
};

/// The node's mesh as of one snapshot, and what was left out of it.
#[derive(Debug)]
pub struct Mesh {
    /// Workloads, services and waypoints, for the node `base` describes.
    pub state: State,
    /// The snapshot's policies that this node enforces.
    pub policies: Policies,
    /// What was left out or fails closed, for the log.
    pub warnings: Vec<String>,
}

/// The node's mesh from `snapshot`, for the node `base` describes (name, trust domain, ports).
pub fn mesh(base: &Config, snapshot: &MeshSnapshot) -> Mesh {
    let mut warnings = Vec::new();
    let in_mesh: BTreeMap<&str, &pb::Workload> = snapshot
        .workloads
        .iter()
        .filter(|(_, w)| w.tunnel == pb::TunnelProtocol::Hbone as i32)
        .map(|(uid, w)| (uid.as_str(), w))
        .collect();
    let mut state = State::new(base);
    let waypoints = resolve_waypoints(snapshot, &in_mesh, base, &mut warnings);
    for waypoint in waypoints.values() {
        state.add_waypoint(waypoint);
    }
    let mut kept: BTreeMap<&str, Arc<Workload>> = BTreeMap::new();
    for (uid, w) in &in_mesh {
        let Some(workload) = workload(base, uid, w, &waypoints, &mut warnings) else {
            continue;
        };
        match state.add_workload(workload) {
            Ok(workload) => {
                kept.insert(uid, workload);
            }
            Err(taken) => warnings.push(format!("workload {uid}: {taken}; left out")),
        }
    }
    for (key, s) in &snapshot.services {
        let Some(service) = service(&base.node_name, key, s, &kept, &waypoints, &mut warnings)
        else {
            continue;
        };
        if let Err(taken) = state.add_service(service) {
            warnings.push(format!("service {key}: {taken}; left out"));
        }
    }
    let policies = Policies::from_feed(
        snapshot.authorizations.values(),
        |key| selected(snapshot, key),
        &mut warnings,
    );
    Mesh {
        state,
        policies,
        warnings,
    }
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
    base: &Config,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Arc<Waypoint>> {
    let refs = in_mesh.values().filter_map(|w| w.waypoint.as_ref()).chain(
        snapshot
            .services
            .values()
            .filter_map(|s| s.waypoint.as_ref()),
    );
    let mut resolved = BTreeMap::new();
    for waypoint in refs {
        let key = waypoint_key(waypoint);
        if resolved.contains_key(&key) {
            continue;
        }
        match resolve_waypoint(snapshot, waypoint, base) {
            Some(found) => {
                resolved.insert(key, Arc::new(found));
            }
            None => warnings.push(format!(
                "waypoint {key} does not resolve; traffic bound to it is refused"
            )),
        }
    }
    resolved
}

fn waypoint_key(waypoint: &pb::WaypointRef) -> String {
    format!("{}/{}", waypoint.namespace, waypoint.name)
}

/// A waypoint's identity and the pod the node sends its traffic to. Like ztunnel, the node does
/// not rely on the waypoint Service's VIP being routable: it picks one of the Service's pods,
/// spreading nodes over replicas by rendezvous hashing on the node name.
fn resolve_waypoint(
    snapshot: &MeshSnapshot,
    waypoint: &pb::WaypointRef,
    base: &Config,
) -> Option<Waypoint> {
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
        .max_by_key(|(w, _)| rendezvous(&base.node_name, &w.uid))?;
    let identity = SpiffeId::new(&base.trust_domain, &pod.namespace, &pod.service_account).ok()?;
    Some(Waypoint {
        key: waypoint_key(waypoint),
        identity,
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

/// The waypoint to bind, or `Err` when the binding cannot be honoured.
fn binding(
    waypoint: Option<&pb::WaypointRef>,
    waypoints: &BTreeMap<String, Arc<Waypoint>>,
) -> Result<Option<Arc<Waypoint>>, ()> {
    match waypoint {
        None => Ok(None),
        Some(waypoint) => waypoints
            .get(&waypoint_key(waypoint))
            .cloned()
            .map(Some)
            .ok_or(()),
    }
}

/// Every usable address of `w`, in feed order; unusable ones are named in a warning.
fn addresses(what: &str, listed: &[Vec<u8>], warnings: &mut Vec<String>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(listed.len());
    for bytes in listed {
        match address(bytes) {
            Some(ip) => out.push(ip),
            None => warnings.push(format!("{what}: address of {} bytes ignored", bytes.len())),
        }
    }
    out
}

fn workload(
    base: &Config,
    uid: &str,
    w: &pb::Workload,
    waypoints: &BTreeMap<String, Arc<Waypoint>>,
    warnings: &mut Vec<String>,
) -> Option<Workload> {
    // A pod whose sandbox is starting has no address yet: nothing to route to or capture until
    // the CNI plugin or the kubelet gives one (`crate::cni::fill_addresses`).
    if w.addresses.is_empty() {
        return None;
    }
    let what = format!("workload {uid}");
    let addresses = addresses(&what, &w.addresses, warnings);
    let Some(&ip) = addresses.first() else {
        warnings.push(format!("{what} has no usable address; left out"));
        return None;
    };
    let identity = match SpiffeId::new(&base.trust_domain, &w.namespace, &w.service_account) {
        Ok(identity) => identity,
        Err(error) => {
            warnings.push(format!("{what}: {error}; left out"));
            return None;
        }
    };
    let local = w.node == base.node_name;
    let waypoint = match binding(w.waypoint.as_ref(), waypoints) {
        Ok(waypoint) => waypoint,
        Err(()) if local => {
            warnings.push(format!("{what}: waypoint unresolved; bound to none"));
            None
        }
        Err(()) => {
            warnings.push(format!("{what}: waypoint unresolved; left out"));
            return None;
        }
    };
    Some(Workload {
        name: w.name.clone(),
        meta: workload_meta(w),
        namespace: w.namespace.clone(),
        ip,
        addresses,
        node: w.node.clone(),
        identity,
        waypoint,
        mtls: mtls_mode(w.mtls),
        port_mtls: port_modes(uid, &w.port_mtls, warnings),
        same_node_plaintext: w.same_node_plaintext,
    })
}

/// Telemetry's names for `w`: its controller (the pod itself when the feed names none), and
/// Istio's canonical service and revision from its labels.
fn workload_meta(w: &pb::Workload) -> WorkloadMeta {
    let workload_name = Some(&w.workload_name)
        .filter(|n| !n.is_empty())
        .unwrap_or(&w.name)
        .clone();
    let workload_kind = Some(w.workload_kind.as_str())
        .filter(|k| !k.is_empty())
        .unwrap_or("pod");
    WorkloadMeta {
        namespace: w.namespace.clone(),
        canonical_service: canonical_service(&w.labels, &workload_name).to_owned(),
        canonical_revision: canonical_revision(&w.labels).to_owned(),
        workload_kind: workload_kind.to_owned(),
        workload_name,
    }
}

fn service(
    node: &str,
    key: &str,
    s: &pb::Service,
    kept: &BTreeMap<&str, Arc<Workload>>,
    waypoints: &BTreeMap<String, Arc<Waypoint>>,
    warnings: &mut Vec<String>,
) -> Option<Service> {
    let what = format!("service {key}");
    let vips = addresses(&what, &s.vips, warnings);
    if vips.is_empty() {
        return None; // Headless or external: nothing to capture by address.
    }
    let Ok(waypoint) = binding(s.waypoint.as_ref(), waypoints) else {
        warnings.push(format!("{what}: waypoint unresolved; left out"));
        return None;
    };
    let ports = s
        .ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let target = u16::try_from(p.target_port).ok().filter(|p| *p != 0);
            Some((port, target.unwrap_or(port)))
        })
        .collect();
    let mut service = Service::new(format!("{}/{}", s.namespace, s.name), vips, ports, waypoint);
    // `internalTrafficPolicy: Local`: only this node's endpoints serve its pods (none: refused).
    service.endpoints = s
        .endpoints
        .iter()
        .filter_map(|e| kept.get(e.workload_uid.as_str()).cloned())
        .filter(|w| !s.node_local || w.node == node)
        .collect();
    Some(service)
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

/// The state of node `node` (trust domain `cluster.local`) for `snapshot` (unit tests).
#[cfg(test)]
pub(crate) fn state_of(node: &str, snapshot: &MeshSnapshot) -> State {
    let base = Config::from_yaml(&format!("node_name: {node}\n")).expect("node settings");
    mesh(&base, snapshot).state
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
