//! Istio AuthorizationPolicy YAML, as users write it, through mesh-control's translation and the
//! node feed to this node's decision: each source field a node can check is enforced, and what
//! it cannot see fails closed. Probes come from a meshed peer the policy does not name.

use std::sync::Arc;

use mesh_control::{dump, registry::RegistryConfig};
use mesh_core::identity::SpiffeId;
use mesh_node::{
    config::Config,
    feed::{convert, FeedStore},
    policy::ConnectionInfo,
};

/// An ambient namespace with a backend, its two permitted callers' service accounts, and a
/// meshed intruder.
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-0, namespace: demo, labels: {app: backend}}
spec: {nodeName: n1, serviceAccountName: backend}
status: {podIP: 10.1.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo, labels: {app: client}}
spec: {nodeName: n2, serviceAccountName: client}
status: {podIP: 10.1.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder-0, namespace: demo, labels: {app: intruder}}
spec: {nodeName: n2, serviceAccountName: intruder}
status: {podIP: 10.1.0.30}
"#;

/// Whether `policy` (appended to [`MESH`]) lets `demo/<account>` at `source_ip` reach
/// `backend-0` on `port`, as node n1 decides it.
fn allowed(policy: &str, account: &str, source_ip: &str, port: u16) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), format!("{MESH}---\n{policy}")).unwrap();
    let snapshot = dump::snapshot_of_dir(dir.path(), RegistryConfig::default()).unwrap();
    let mut store = FeedStore::default();
    let applied = store
        .apply(dump::node_feed(Arc::new(snapshot)))
        .unwrap()
        .expect("a complete version");
    let base = Config::from_yaml("node_name: n1\n").unwrap();
    let mesh = convert::mesh(&base, &applied);
    mesh.policies
        .evaluate(&ConnectionInfo {
            source_identity: Some(SpiffeId::new("cluster.local", "demo", account).unwrap()),
            source_ip: source_ip.parse().unwrap(),
            dest_namespace: "demo".into(),
            dest_ip: "10.1.0.10".parse().unwrap(),
            dest_workload: "backend-0".into(),
            dest_port: port,
        })
        .is_allowed()
}

const CLIENT_IP: &str = "10.1.0.20";
const INTRUDER_IP: &str = "10.1.0.30";

#[test]
fn service_accounts_allow_only_the_named_account() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-callers, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - source:
        serviceAccounts: ["demo/client"]
"#;
    assert!(allowed(policy, "client", CLIENT_IP, 8080));
    assert!(!allowed(policy, "intruder", INTRUDER_IP, 8080));
}

#[test]
fn not_service_accounts_deny_the_named_account() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-intruder, namespace: demo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        serviceAccounts: ["demo/intruder"]
"#;
    assert!(allowed(policy, "client", CLIENT_IP, 8080));
    assert!(!allowed(policy, "intruder", INTRUDER_IP, 8080));
}

#[test]
fn remote_ip_blocks_are_the_peer_address_at_a_node() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-client-address, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - source:
        remoteIpBlocks: ["10.1.0.20/32"]
"#;
    assert!(allowed(policy, "client", CLIENT_IP, 8080));
    assert!(!allowed(policy, "client", INTRUDER_IP, 8080));
}

#[test]
fn principals_and_ports_together() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-callers, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
    to:
    - operation:
        ports: ["8080"]
"#;
    assert!(allowed(policy, "client", CLIENT_IP, 8080));
    assert!(!allowed(policy, "client", CLIENT_IP, 9090), "another port");
    assert!(!allowed(policy, "intruder", INTRUDER_IP, 8080));
}

/// A node cannot see JWTs or paths: an ALLOW on them lets nobody in, a DENY on them applies to
/// the whole port.
#[test]
fn what_a_node_cannot_see_fails_closed() {
    let allow_jwt = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["*"]
"#;
    assert!(!allowed(allow_jwt, "client", CLIENT_IP, 8080));
    let deny_admin = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["8080"]
        paths: ["/admin"]
"#;
    assert!(!allowed(deny_admin, "client", CLIENT_IP, 8080));
    assert!(allowed(deny_admin, "client", CLIENT_IP, 9090));
}
