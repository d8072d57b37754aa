//! The node's view of the mesh: workloads, services and waypoints, validated from config.
//!
//! Lookups are by IP (a connection's source or original destination). The control plane will
//! later produce the same types through `TryFrom<proto::X>`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use mesh_core::hbone::baggage::{canonical_revision, canonical_service, WorkloadMeta};
use mesh_core::identity::{IdentityError, SpiffeId};

use crate::config::{Config, MtlsMode, WaypointConfig, WorkloadConfig};

/// Configuration that is well-formed YAML but inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A workload's namespace/service account does not form a valid identity.
    #[error("workload {name}: {source}")]
    Identity {
        name: String,
        #[source]
        source: IdentityError,
    },
    /// Two workloads, or two services, share an IP.
    #[error("duplicate ip {ip} ({what})")]
    DuplicateIp { ip: IpAddr, what: &'static str },
    /// A `waypoint:` names no configured waypoint.
    #[error("{owner} refers to unknown waypoint {namespace}/{name}")]
    UnknownWaypoint {
        owner: String,
        namespace: String,
        name: String,
    },
    /// A service endpoint IP is not a known workload.
    #[error("service {service} endpoint {ip} is not a known workload")]
    UnknownEndpoint { service: String, ip: IpAddr },
}

/// A waypoint proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waypoint {
    /// `namespace/name`.
    pub key: String,
    /// Identity it must prove.
    pub identity: SpiffeId,
    /// Its HBONE address.
    pub address: SocketAddr,
}

/// A workload (pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// How telemetry names it: controller, canonical service and revision (also sent as the
    /// CONNECT `baggage`).
    pub meta: WorkloadMeta,
    /// Namespace.
    pub namespace: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Node it runs on.
    pub node: String,
    /// Labels (for policy selectors).
    pub labels: BTreeMap<String, String>,
    /// Its SPIFFE identity.
    pub identity: SpiffeId,
    /// Waypoint for traffic addressed to it.
    pub waypoint: Option<Arc<Waypoint>>,
    /// Its own mTLS mode, when a selector-scoped PeerAuthentication sets one.
    pub mtls: Option<MtlsMode>,
    /// Per-port overrides of its mode.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// Same-node connections with another workload that allows it skip HBONE (the feed's
    /// setting, unless this node always encrypts).
    pub same_node_plaintext: bool,
}

/// Telemetry's names for `w`: its controller (the pod itself when the feed names none), and
/// Istio's canonical service and revision from its labels.
fn workload_meta(w: &WorkloadConfig) -> WorkloadMeta {
    let workload_name = w.workload_name.clone().unwrap_or_else(|| w.name.clone());
    WorkloadMeta {
        namespace: w.namespace.clone(),
        canonical_service: canonical_service(&w.labels, &workload_name).to_owned(),
        canonical_revision: canonical_revision(&w.labels).to_owned(),
        workload_kind: w.workload_kind.clone().unwrap_or_else(|| "pod".to_owned()),
        workload_name,
    }
}

/// A service.
#[derive(Debug)]
pub struct Service {
    /// `namespace/name`.
    pub key: String,
    /// Cluster IP.
    pub vip: IpAddr,
    /// VIP port -> target port.
    pub ports: BTreeMap<u16, u16>,
    /// Endpoints (workloads), in config order.
    pub endpoints: Vec<Arc<Workload>>,
    /// Waypoint for traffic addressed to it.
    pub waypoint: Option<Arc<Waypoint>>,
    next: AtomicUsize,
}

impl Service {
    /// The next endpoint, round robin; `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Workload>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i).cloned()
    }
}

/// The whole validated view.
#[derive(Debug)]
pub struct State {
    /// This node's name.
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Port remote tunnels accept HBONE on.
    pub hbone_port: u16,
    workloads: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<IpAddr, Arc<Service>>,
    waypoint_identities: BTreeSet<SpiffeId>,
    mtls_default: MtlsMode,
    mtls_namespaces: BTreeMap<String, MtlsMode>,
}

impl State {
    /// Validates `config`.
    pub fn from_config(config: &Config) -> Result<Self, StateError> {
        let waypoints = waypoints(config)?;
        let find_waypoint = |owner: String, namespace: &str, name: &Option<String>| {
            name.as_ref()
                .map(|name| {
                    waypoints
                        .get(&format!("{namespace}/{name}"))
                        .cloned()
                        .ok_or_else(|| StateError::UnknownWaypoint {
                            owner,
                            namespace: namespace.to_owned(),
                            name: name.clone(),
                        })
                })
                .transpose()
        };
        let mut workloads = HashMap::new();
        for w in &config.workloads {
            let identity = SpiffeId::new(&config.trust_domain, &w.namespace, &w.service_account)
                .map_err(|source| StateError::Identity {
                    name: w.name.clone(),
                    source,
                })?;
            let workload = Workload {
                name: w.name.clone(),
                meta: workload_meta(w),
                namespace: w.namespace.clone(),
                ip: w.ip,
                node: w.node.clone(),
                labels: w.labels.clone(),
                identity,
                waypoint: find_waypoint(format!("workload {}", w.name), &w.namespace, &w.waypoint)?,
                mtls: w.mtls,
                port_mtls: w.port_mtls.clone(),
                same_node_plaintext: w.same_node_plaintext && !config.always_encrypt_same_node,
            };
            if workloads.insert(w.ip, Arc::new(workload)).is_some() {
                return Err(StateError::DuplicateIp {
                    ip: w.ip,
                    what: "workloads",
                });
            }
        }
        let mut services = HashMap::new();
        for s in &config.services {
            let key = format!("{}/{}", s.namespace, s.name);
            let endpoints = s
                .endpoints
                .iter()
                .map(|ip| {
                    workloads
                        .get(ip)
                        .cloned()
                        .ok_or_else(|| StateError::UnknownEndpoint {
                            service: key.clone(),
                            ip: *ip,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let service = Service {
                waypoint: find_waypoint(format!("service {key}"), &s.namespace, &s.waypoint)?,
                key,
                vip: s.vip,
                ports: s
                    .ports
                    .iter()
                    .map(|p| (p.port, p.target_port.unwrap_or(p.port)))
                    .collect(),
                endpoints,
                next: AtomicUsize::new(0),
            };
            if workloads.contains_key(&s.vip) || services.insert(s.vip, Arc::new(service)).is_some()
            {
                return Err(StateError::DuplicateIp {
                    ip: s.vip,
                    what: "services",
                });
            }
        }
        Ok(Self {
            node: config.node_name.clone(),
            trust_domain: config.trust_domain.clone(),
            hbone_port: config.hbone_port,
            workloads,
            services,
            waypoint_identities: waypoints.values().map(|w| w.identity.clone()).collect(),
            mtls_default: config.peer_authentication.mode,
            mtls_namespaces: config.peer_authentication.namespaces.clone(),
        })
    }

    /// Any workload by IP.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    /// A workload on this node by IP.
    pub fn local_workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload(ip).filter(|w| w.node == self.node)
    }

    /// Whether `identity` is a waypoint's the control plane fed: only such a peer may speak for
    /// the client it proxies (`forwarded`, `baggage`).
    pub fn is_waypoint(&self, identity: &SpiffeId) -> bool {
        self.waypoint_identities.contains(identity)
    }

    /// A service by VIP.
    pub fn service(&self, vip: IpAddr) -> Option<&Arc<Service>> {
        self.services.get(&vip)
    }

    /// Identities of the workloads on this node (one certificate each).
    pub fn local_identities(&self) -> BTreeSet<SpiffeId> {
        self.workloads
            .values()
            .filter(|w| w.node == self.node)
            .map(|w| w.identity.clone())
            .collect()
    }

    /// The mTLS mode for plaintext to a workload in `namespace`.
    pub fn mtls_mode(&self, namespace: &str) -> MtlsMode {
        self.mtls_namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.mtls_default)
    }

    /// The mTLS mode for plaintext to `workload` on `port`: the port's override, else the
    /// workload's own mode, else its namespace's, else the mesh default (Istio precedence).
    pub fn mtls_mode_for(&self, workload: &Workload, port: u16) -> MtlsMode {
        workload
            .port_mtls
            .get(&port)
            .copied()
            .or(workload.mtls)
            .unwrap_or_else(|| self.mtls_mode(&workload.namespace))
    }

    /// All workloads (admin dump), sorted by IP.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        let mut all: Vec<_> = self.workloads.values().cloned().collect();
        all.sort_by_key(|w| w.ip);
        all
    }
}

fn waypoints(config: &Config) -> Result<HashMap<String, Arc<Waypoint>>, StateError> {
    config
        .waypoints
        .iter()
        .map(|w: &WaypointConfig| {
            let key = format!("{}/{}", w.namespace, w.name);
            let identity = SpiffeId::new(&config.trust_domain, &w.namespace, &w.service_account)
                .map_err(|source| StateError::Identity {
                    name: key.clone(),
                    source,
                })?;
            let waypoint = Waypoint {
                key: key.clone(),
                identity,
                address: w.address,
            };
            Ok((key, Arc::new(waypoint)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_precedence_is_port_then_workload_then_namespace_then_mesh() {
        let yaml = r#"
node_name: n1
peer_authentication: { mode: STRICT, namespaces: { open: PERMISSIVE } }
workloads:
  - { name: a, namespace: open, service_account: a, ip: 10.0.0.1, node: n1 }
  - { name: b, namespace: open, service_account: b, ip: 10.0.0.2, node: n1, mtls: STRICT,
      port_mtls: { 8080: PERMISSIVE } }
  - { name: c, namespace: locked, service_account: c, ip: 10.0.0.3, node: n1 }
"#;
        let state = State::from_config(&Config::from_yaml(yaml).unwrap()).unwrap();
        let mode = |ip: &str, port| {
            let workload = state.workload(ip.parse().unwrap()).unwrap();
            state.mtls_mode_for(workload, port)
        };
        assert_eq!(mode("10.0.0.1", 80), MtlsMode::Permissive, "namespace");
        assert_eq!(mode("10.0.0.2", 80), MtlsMode::Strict, "workload");
        assert_eq!(mode("10.0.0.2", 8080), MtlsMode::Permissive, "port");
        assert_eq!(mode("10.0.0.3", 80), MtlsMode::Strict, "mesh default");
    }

    #[test]
    fn same_node_plaintext_needs_the_workload_and_not_a_node_that_always_encrypts() {
        let workloads = r#"
node_name: n1
workloads:
  - { name: a, namespace: x, service_account: a, ip: 10.0.0.1, node: n1, same_node_plaintext: true }
  - { name: b, namespace: x, service_account: b, ip: 10.0.0.2, node: n1 }
"#;
        let plaintext = |yaml: &str, ip: &str| {
            let state = State::from_config(&Config::from_yaml(yaml).unwrap()).unwrap();
            let workload = state.workload(ip.parse().unwrap()).unwrap();
            workload.same_node_plaintext
        };
        assert!(plaintext(workloads, "10.0.0.1"));
        assert!(!plaintext(workloads, "10.0.0.2"), "default: HBONE");
        let always = format!("always_encrypt_same_node: true\n{workloads}");
        assert!(!plaintext(&always, "10.0.0.1"), "the node always encrypts");
    }

    #[test]
    fn workloads_carry_their_telemetry_names() {
        let yaml = r#"
node_name: n1
workloads:
  - { name: web-7d9f8c-x2k9q, workload_name: web, workload_kind: deployment, namespace: shop,
      service_account: web, ip: 10.0.0.1, node: n1, labels: { app: storefront, version: v3 } }
  - { name: lone, namespace: shop, service_account: lone, ip: 10.0.0.2, node: n1 }
"#;
        let state = State::from_config(&Config::from_yaml(yaml).unwrap()).unwrap();
        let meta = |ip: &str| state.workload(ip.parse().unwrap()).unwrap().meta.clone();
        let web = meta("10.0.0.1");
        assert_eq!(
            (web.workload_name.as_str(), web.workload_kind.as_str()),
            ("web", "deployment")
        );
        assert_eq!(
            (
                web.canonical_service.as_str(),
                web.canonical_revision.as_str()
            ),
            ("storefront", "v3")
        );
        let lone = meta("10.0.0.2");
        assert_eq!(
            (lone.workload_name.as_str(), lone.workload_kind.as_str()),
            ("lone", "pod"),
            "a pod without a controller is its own workload"
        );
        assert_eq!(
            (
                lone.canonical_service.as_str(),
                lone.canonical_revision.as_str()
            ),
            ("lone", "latest")
        );
    }
}
