//! The mesh's own model of the world: what nodes and waypoints act on.
//!
//! The registry builds a [`Snapshot`] from Kubernetes-shaped objects; the feed converts snapshot
//! items to protobuf at the wire boundary. Everything here is plain data, ordered and comparable
//! so that two snapshots can be diffed item by item.

mod actions;
mod routing;

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use self::routing::*;
use crate::enrollment::WaypointName;

/// A waypoint binding, resolved to the waypoint service's address when it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointRef {
    /// Which waypoint the labels named.
    pub name: WaypointName,
    /// The waypoint Service's cluster IP; `None` when that Service does not exist (yet). Nodes
    /// must fail closed for traffic that should go through an unresolved waypoint.
    pub address: Option<IpAddr>,
}

/// Mutual-TLS mode a workload accepts inbound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MtlsMode {
    /// Accept mTLS (HBONE) and plaintext.
    #[default]
    Permissive,
    /// Accept only mTLS (HBONE).
    Strict,
    /// Plaintext only.
    Disable,
}

/// A pod (or ServiceEntry endpoint) the mesh knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Stable key: `<namespace>/<pod name>`.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// The controller the pod belongs to, as Istio names workloads in telemetry: a
    /// Deployment's name (through its ReplicaSet), a CronJob's (through its Job), a StatefulSet's,
    /// DaemonSet's, Job's or ReplicaSet's; the pod's own name when it has no controller.
    pub workload_name: String,
    /// Kind of `workload_name`, lowercase (`deployment`, `cronjob`, ..., `pod`).
    pub workload_kind: String,
    /// The pod's Kubernetes object uid (`metadata.uid`; empty when it has none, e.g. in local
    /// mode or for ServiceEntry endpoints). Checked against a workload token's pod binding.
    pub pod_uid: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IPs.
    pub ips: Vec<IpAddr>,
    /// Node the pod runs on (empty until scheduled).
    pub node: String,
    /// Service account.
    pub service_account: String,
    /// SPIFFE identity: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// Whether traffic is captured and tunnelled (HBONE); `false` means plain TCP.
    pub enrolled: bool,
    /// Same-node connections to and from it may skip mTLS (the mesh setting and its namespace's
    /// `weft.dev/same-node-encryption` label allow it).
    pub same_node_plaintext: bool,
    /// Waypoint for traffic addressed to this workload directly.
    pub waypoint: Option<WaypointRef>,
    /// Labels, used by selectors on the node side (e.g. telemetry).
    pub labels: BTreeMap<String, String>,
    /// Keys of the selector-scoped authorization policies that apply (namespace- and
    /// mesh-scoped policies apply implicitly).
    pub policies: Vec<String>,
    /// Inbound mTLS mode, with per-port overrides.
    pub mtls: MtlsMode,
    /// Per-port mTLS overrides.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port on the VIP.
    pub port: u16,
    /// Default port on the endpoints (0 when it is a name resolved per endpoint).
    pub target_port: u16,
    /// Application protocol (`http`, `grpc`, `tcp`, ...), from `appProtocol` or the port name.
    pub protocol: String,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Workload uid.
    pub workload_uid: String,
    /// Service port -> endpoint port.
    pub ports: BTreeMap<u16, u16>,
}

/// A service: Kubernetes Service or ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Stable key: `<namespace>/<hostname>`.
    pub key: String,
    /// Name of the object.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// FQDN, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub hostname: String,
    /// Virtual IPs.
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints, sorted by workload uid.
    pub endpoints: Vec<Endpoint>,
    /// Waypoint for traffic addressed to the service.
    pub waypoint: Option<WaypointRef>,
    /// `internalTrafficPolicy: Local`: only endpoints on the client's own node serve it.
    pub node_local: bool,
}

/// Where an authorization policy applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyScope {
    /// Every workload in the mesh (policy in the root namespace, no selector).
    Global,
    /// Every workload in the namespace.
    Namespace,
    /// Workloads listing the policy in [`Workload::policies`].
    WorkloadSelector,
    /// Enforced by a waypoint: attached with `targetRefs`.
    Targeted(Vec<PolicyTarget>),
}

/// A policy target (Service, ServiceEntry or waypoint Gateway).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyTarget {
    /// `Service`, `ServiceEntry` or `Gateway`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Policy action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    /// Allow matching traffic.
    Allow,
    /// Deny matching traffic.
    Deny,
    /// Log matching traffic.
    Audit,
}

/// An authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Stable key: `<namespace>/<name>`.
    pub key: String,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Where it applies.
    pub scope: PolicyScope,
    /// What to do on a match.
    pub action: PolicyAction,
    /// Rules (any may match). An ALLOW policy with no rules matches nothing; a DENY policy with
    /// one empty rule denies everything.
    pub rules: Vec<AuthRule>,
    /// Whether the policy carries L7 conditions (only waypoints can enforce them).
    pub has_l7: bool,
}

/// A RequestAuthentication, for the waypoints it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthn {
    /// Stable key: `<namespace>/<name>`.
    pub key: String,
    /// Always [`PolicyScope::Targeted`]: waypoints enforce targeted ones only.
    pub scope: PolicyScope,
    /// Accepted issuers.
    pub rules: Vec<JwtProvider>,
    /// The resource did not validate: every request in scope is refused.
    pub refuse_all: bool,
}

/// One accepted issuer (Istio `JWTRule`), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtProvider {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    /// Inline JWKS (JSON), validated as such.
    pub jwks: Option<String>,
    /// Where the waypoint fetches the JWKS (`http`/`https`); neither this nor `jwks`: OpenID
    /// discovery from the issuer.
    pub jwks_uri: Option<String>,
    /// Bound on the fetch.
    pub fetch_timeout: Option<std::time::Duration>,
    /// `(header, prefix)` token locations.
    pub from_headers: Vec<(String, String)>,
    /// Query parameter token locations.
    pub from_params: Vec<String>,
    /// Cookie token locations.
    pub from_cookies: Vec<String>,
    /// Keep the token header upstream.
    pub forward_original_token: bool,
    /// `(header, claim)` pairs.
    pub output_claim_to_headers: Vec<(String, String)>,
    /// Header for the verified payload.
    pub output_payload_to_header: Option<String>,
    /// Claims read as space-separated lists.
    pub space_delimited_claims: Vec<String>,
}

// The rule parts of a policy are the shared evaluator's types, so what mesh-control translates is
// exactly what nodes and waypoints evaluate.
pub use mesh_core::authz::{
    Condition as AuthCondition, OperationMatch as DestinationMatch, Rule as AuthRule, SourceMatch,
};

/// An Istio Gateway listener set, served by waypoints deployed as ingress gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Stable key: `<namespace>/<name>`.
    pub key: String,
    /// Pods serving it.
    pub selector: BTreeMap<String, String>,
    /// Listeners (servers that failed validation are left out).
    pub listeners: Vec<GatewayListener>,
}

/// One listener of a [`Gateway`]: an Istio server or a Gateway API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayListener {
    /// Port.
    pub port: u16,
    /// `HTTP`, `HTTPS`, ...
    pub protocol: String,
    /// Hosts, `[<namespace rule>/]<host>` (`*` and `*.suffix` wildcards).
    pub hosts: Vec<String>,
    /// The certificate TLS is terminated with; none for plain HTTP.
    pub tls: Option<ServerTls>,
}

/// A server certificate from a `kubernetes.io/tls` Secret, validated as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// `<namespace>/<name>` of the Secret.
    pub secret: String,
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// PEM private key.
    pub key_pem: PrivateKeyPem,
}

/// A PEM private key. `Debug` never prints it, so snapshots and diagnostics can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(pub String);

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A resource that was rejected, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it came from (file and document number, or `kubernetes`).
    pub origin: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// Field path, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: field {}: {}",
            self.origin, self.object, self.field, self.message
        )
    }
}

/// Everything the mesh knows at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Workloads by uid.
    pub workloads: BTreeMap<String, Workload>,
    /// Services by key.
    pub services: BTreeMap<String, Service>,
    /// Authorization policies by key.
    pub policies: BTreeMap<String, Authorization>,
    /// Routes by key.
    pub routes: BTreeMap<String, Route>,
    /// Traffic policies by key.
    pub traffic_policies: BTreeMap<String, TrafficPolicy>,
    /// Istio Gateways by key.
    pub gateways: BTreeMap<String, Gateway>,
    /// Rejected resources.
    pub diagnostics: Vec<Diagnostic>,
    /// How waypoints normalize request paths.
    pub path_normalization: mesh_core::authz::PathNormalization,
    /// Request authentication (JWT) by key.
    pub request_authns: BTreeMap<String, RequestAuthn>,
}

impl Snapshot {
    /// Pods of waypoint `namespace/name`: the endpoints of its Service.
    pub fn waypoint_pods<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        self.services
            .values()
            .filter(move |s| s.namespace == namespace && s.name == name)
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| self.workloads.get(&e.workload_uid))
    }

    /// Pods of the Istio Gateway `namespace/name`: the pods of its namespace carrying every
    /// label of its selector (namespace-scoped, unlike Istio's mesh-wide default, so that a
    /// Gateway cannot pull in pods, and so identities, of other namespaces).
    pub fn gateway_pods<'a>(
        &'a self,
        namespace: &'a str,
        name: &str,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        let gateway = self.gateways.get(&format!("{namespace}/{name}"));
        let selector = gateway.map(|g| &g.selector).filter(|s| !s.is_empty());
        self.workloads.values().filter(move |w| {
            selector.is_some_and(|selector| {
                w.namespace == namespace && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
        })
    }

    /// Whether workload `uid` is a pod of an Istio ingress Gateway.
    pub fn is_gateway_pod(&self, uid: &str) -> bool {
        self.gateways.keys().any(|key| {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            self.gateway_pods(namespace, name).any(|p| p.uid == uid)
        })
    }

    /// Whether workload `uid` is a pod of a waypoint that some service or workload uses.
    pub fn is_waypoint_pod(&self, uid: &str) -> bool {
        let named = |w: &Option<WaypointRef>| w.as_ref().map(|w| w.name.clone());
        let waypoints: std::collections::BTreeSet<WaypointName> = self
            .services
            .values()
            .filter_map(|s| named(&s.waypoint))
            .chain(self.workloads.values().filter_map(|w| named(&w.waypoint)))
            .collect();
        waypoints.iter().any(|w| {
            self.waypoint_pods(&w.namespace, &w.name)
                .any(|p| p.uid == uid)
        })
    }
}
