//! The node's view of the mesh: workloads, services and waypoints, as [`crate::feed::convert`]
//! builds it from a feed version (live or saved).
//!
//! Lookups are by IP (a connection's source or original destination); a workload or service
//! with several addresses (dual stack) is found under each of them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use mesh_core::hbone::baggage::WorkloadMeta;
use mesh_core::identity::SpiffeId;

use crate::config::Config;

/// mTLS mode for plaintext arriving at a local workload (mesh-control resolves Istio's
/// PeerAuthentication precedence; the node gets each workload's result).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MtlsMode {
    /// Accept plaintext and mTLS.
    #[default]
    Permissive,
    /// mTLS (HBONE) only; plaintext is refused.
    Strict,
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
    /// Its first address (the pod's primary IP): the key of per-pod state on this node.
    pub ip: IpAddr,
    /// Every address, `ip` first (both families on a dual-stack pod).
    pub addresses: Vec<IpAddr>,
    /// Node it runs on.
    pub node: String,
    /// Its SPIFFE identity.
    pub identity: SpiffeId,
    /// Waypoint for traffic addressed to it.
    pub waypoint: Option<Arc<Waypoint>>,
    /// Its mTLS mode for plaintext.
    pub mtls: MtlsMode,
    /// Per-port overrides of its mode.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    /// Same-node connections with another workload that allows it skip HBONE (the feed's
    /// setting, unless this node always encrypts).
    pub same_node_plaintext: bool,
}

impl Workload {
    /// Its address in the family of `like` (a destination it was reached by), else its first.
    pub fn address_like(&self, like: IpAddr) -> IpAddr {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
            .unwrap_or(self.ip)
    }
}

/// A service.
#[derive(Debug)]
pub struct Service {
    /// `namespace/name`.
    pub key: String,
    /// Cluster IPs (one per family on a dual-stack service).
    pub vips: Vec<IpAddr>,
    /// VIP port -> target port.
    pub ports: BTreeMap<u16, u16>,
    /// Endpoints (workloads), in feed order.
    pub endpoints: Vec<Arc<Workload>>,
    /// Waypoint for traffic addressed to it.
    pub waypoint: Option<Arc<Waypoint>>,
    next: AtomicUsize,
}

impl Service {
    /// A service without endpoints yet.
    pub fn new(
        key: String,
        vips: Vec<IpAddr>,
        ports: BTreeMap<u16, u16>,
        waypoint: Option<Arc<Waypoint>>,
    ) -> Self {
        Self {
            key,
            vips,
            ports,
            endpoints: Vec::new(),
            waypoint,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round robin; `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Workload>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i).cloned()
    }
}

/// An address claimed by two workloads or services: the later one is left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {ip} is already {owner}'s")]
pub struct AddressTaken {
    /// The address.
    pub ip: IpAddr,
    /// Who has it (`workload ns/name` or `service ns/name`).
    pub owner: String,
}

/// The whole view.
#[derive(Debug)]
pub struct State {
    /// This node's name.
    pub node: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Port remote tunnels accept HBONE on.
    pub hbone_port: u16,
    /// Carry same-node connections over HBONE whatever the workloads allow.
    always_encrypt_same_node: bool,
    workloads: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<IpAddr, Arc<Service>>,
    waypoint_identities: BTreeSet<SpiffeId>,
}

impl State {
    /// An empty mesh for the node `settings` describe.
    pub fn new(settings: &Config) -> Self {
        Self {
            node: settings.node_name.clone(),
            trust_domain: settings.trust_domain.clone(),
            hbone_port: settings.hbone_port,
            always_encrypt_same_node: settings.always_encrypt_same_node,
            workloads: HashMap::new(),
            services: HashMap::new(),
            waypoint_identities: BTreeSet::new(),
        }
    }

    /// Who holds `ip` already: the workload or service under it.
    fn owner_of(&self, ip: IpAddr) -> Option<String> {
        let workload = self.workloads.get(&ip);
        let workload = workload.map(|w| format!("workload {}/{}", w.namespace, w.name));
        workload.or_else(|| self.services.get(&ip).map(|s| format!("service {}", s.key)))
    }

    /// Refuses `addresses` for `owner` when one is taken, or listed twice.
    fn check_free(
        &self,
        addresses: &[IpAddr],
        owner: impl Fn() -> String,
    ) -> Result<(), AddressTaken> {
        for (i, ip) in addresses.iter().enumerate() {
            let listed_twice = addresses[..i].contains(ip).then(&owner);
            if let Some(first) = self.owner_of(*ip).or(listed_twice) {
                return Err(AddressTaken {
                    ip: *ip,
                    owner: first,
                });
            }
        }
        Ok(())
    }

    /// Adds `workload` under each of its addresses; refused when any is taken. The node's
    /// `always_encrypt_same_node` overrides the workload's same-node setting.
    pub fn add_workload(&mut self, mut workload: Workload) -> Result<Arc<Workload>, AddressTaken> {
        let owner = || format!("workload {}/{}", workload.namespace, workload.name);
        self.check_free(&workload.addresses, owner)?;
        workload.same_node_plaintext &= !self.always_encrypt_same_node;
        let workload = Arc::new(workload);
        for ip in &workload.addresses {
            self.workloads.insert(*ip, workload.clone());
        }
        Ok(workload)
    }

    /// Adds `service` under each of its VIPs; refused when any is taken.
    pub fn add_service(&mut self, service: Service) -> Result<(), AddressTaken> {
        self.check_free(&service.vips, || format!("service {}", service.key))?;
        let service = Arc::new(service);
        for vip in &service.vips {
            self.services.insert(*vip, service.clone());
        }
        Ok(())
    }

    /// Records a waypoint the node may send traffic to: its identity may speak for clients.
    pub fn add_waypoint(&mut self, waypoint: &Waypoint) {
        self.waypoint_identities.insert(waypoint.identity.clone());
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
        self.local_workloads()
            .iter()
            .map(|w| w.identity.clone())
            .collect()
    }

    /// The workloads on this node, sorted by IP.
    pub fn local_workloads(&self) -> Vec<Arc<Workload>> {
        let mut local = self.workloads();
        local.retain(|w| w.node == self.node);
        local
    }

    /// The mTLS mode for plaintext to `workload` on `port`: the port's override, else the
    /// workload's mode.
    pub fn mtls_mode_for(&self, workload: &Workload, port: u16) -> MtlsMode {
        workload
            .port_mtls
            .get(&port)
            .copied()
            .unwrap_or(workload.mtls)
    }

    /// All workloads (admin dump), once each, sorted by IP.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        let mut all: Vec<_> = self
            .workloads
            .iter()
            .filter(|(ip, w)| **ip == w.ip)
            .map(|(_, w)| w.clone())
            .collect();
        all.sort_by_key(|w| w.ip);
        all
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::proto::{address_bytes, build, control::v1 as pb};

    use super::*;
    use crate::feed::{
        convert::{self, state_of},
        MeshSnapshot,
    };

    fn pod(name: &str, ip: &str) -> pb::Workload {
        build::workload("x", name, name, ip.parse().unwrap(), "n1")
    }

    #[test]
    fn mtls_is_the_port_override_else_the_workloads_mode() {
        let mut b = pod("b", "10.0.0.2");
        b.mtls = pb::MtlsMode::Strict as i32;
        b.port_mtls = [(8080, pb::MtlsMode::Permissive as i32)].into();
        let mut c = pod("c", "10.0.0.3");
        c.mtls = 7; // A mode from a newer control plane.
        let state = state_of("n1", &MeshSnapshot::of([pod("a", "10.0.0.1"), b, c], []));
        let mode = |ip: &str, port| {
            let workload = state.workload(ip.parse().unwrap()).unwrap();
            state.mtls_mode_for(workload, port)
        };
        assert_eq!(mode("10.0.0.1", 80), MtlsMode::Permissive, "default");
        assert_eq!(mode("10.0.0.2", 80), MtlsMode::Strict, "workload");
        assert_eq!(mode("10.0.0.2", 8080), MtlsMode::Permissive, "port");
        assert_eq!(
            mode("10.0.0.3", 80),
            MtlsMode::Strict,
            "unknown fails closed"
        );
    }

    #[test]
    fn same_node_plaintext_needs_the_workload_and_not_a_node_that_always_encrypts() {
        let mut a = pod("a", "10.0.0.1");
        a.same_node_plaintext = true;
        let snapshot = MeshSnapshot::of([a, pod("b", "10.0.0.2")], []);
        let plaintext = |settings: &str, ip: &str| {
            let base = Config::from_yaml(settings).unwrap();
            let state = convert::mesh(&base, &snapshot).state;
            let workload = state.workload(ip.parse().unwrap()).unwrap();
            workload.same_node_plaintext
        };
        assert!(plaintext("node_name: n1", "10.0.0.1"));
        assert!(!plaintext("node_name: n1", "10.0.0.2"), "default: HBONE");
        let always = "node_name: n1\nalways_encrypt_same_node: true";
        assert!(!plaintext(always, "10.0.0.1"), "the node always encrypts");
    }

    #[test]
    fn workloads_carry_their_telemetry_names() {
        let mut web = build::workload(
            "shop",
            "web-7d9f8c-x2k9q",
            "web",
            "10.0.0.1".parse().unwrap(),
            "n1",
        );
        web.workload_name = "web".into();
        web.workload_kind = "deployment".into();
        web.labels = [("app", "storefront"), ("version", "v3")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let lone = build::workload("shop", "lone", "lone", "10.0.0.2".parse().unwrap(), "n1");
        let state = state_of("n1", &MeshSnapshot::of([web, lone], []));
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

    #[test]
    fn a_dual_stack_workload_is_one_workload_under_each_address() {
        let mut a = pod("a", "10.0.0.1");
        a.addresses.push(address_bytes(&"fd00::1".parse().unwrap()));
        let state = state_of("n1", &MeshSnapshot::of([a], []));
        let v4 = state.workload("10.0.0.1".parse().unwrap()).unwrap();
        let v6 = state.local_workload("fd00::1".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(v4, v6));
        assert_eq!(state.workloads().len(), 1, "listed once");
        assert_eq!(state.local_identities().len(), 1);
        assert_eq!(
            v4.address_like("fd00::9".parse().unwrap()),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(v4.address_like("10.9.9.9".parse().unwrap()), v4.ip);
    }

    #[test]
    fn an_address_listed_twice_or_already_taken_is_refused_whole() {
        let base = Config::from_yaml("node_name: n1").unwrap();
        let mut state = State::new(&base);
        let workload = |name: &str, addresses: &[&str]| {
            let addresses: Vec<IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
            Workload {
                name: name.into(),
                meta: WorkloadMeta::default(),
                namespace: "x".into(),
                ip: addresses[0],
                addresses,
                node: "n1".into(),
                identity: SpiffeId::new("cluster.local", "x", name).unwrap(),
                waypoint: None,
                mtls: MtlsMode::Strict,
                port_mtls: BTreeMap::new(),
                same_node_plaintext: false,
            }
        };
        state.add_workload(workload("a", &["10.0.0.1"])).unwrap();
        let taken = state
            .add_workload(workload("b", &["10.0.0.2", "10.0.0.1"]))
            .unwrap_err();
        assert_eq!(taken.owner, "workload x/a");
        assert!(
            state.workload("10.0.0.2".parse().unwrap()).is_none(),
            "nothing of b kept"
        );
        let twice = state
            .add_workload(workload("c", &["10.0.0.3", "10.0.0.3"]))
            .unwrap_err();
        assert_eq!(twice.owner, "workload x/c");
        let vip = Service::new(
            "x/s".into(),
            vec!["10.0.0.1".parse().unwrap()],
            BTreeMap::new(),
            None,
        );
        assert!(state.add_service(vip).is_err(), "a VIP on a pod address");
    }
}
