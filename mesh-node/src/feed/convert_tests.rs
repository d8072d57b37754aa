//! Snapshot to the node's state and policies: what is kept, what is left out and why.

use mesh_core::proto::build;

use super::*;

/// A pod `demo/<name>` (its own service account, label `app: <name>`), STRICT.
fn workload(name: &str, node: &str, ip: [u8; 4], in_mesh: bool) -> pb::Workload {
    let mut pod = build::workload("demo", name, name, IpAddr::from(ip), node);
    if !in_mesh {
        pod.tunnel = pb::TunnelProtocol::None as i32;
    }
    pod.mtls = pb::MtlsMode::Strict as i32;
    pod.labels = [("app".to_string(), name.to_string())].into();
    pod
}

/// Service `demo/<name>`, port 80 to 8080, in front of the workloads `endpoints` (uids, which
/// need not exist).
fn service(
    name: &str,
    vip: [u8; 4],
    endpoints: &[&str],
    waypoint: Option<pb::WaypointRef>,
) -> pb::Service {
    let mut service = build::service("demo", name, IpAddr::from(vip), &[(80, 8080)], &[]);
    service.ports[0].protocol = "http".into();
    service.endpoints = endpoints
        .iter()
        .map(|uid| pb::Endpoint {
            workload_uid: uid.to_string(),
            ports: Default::default(),
        })
        .collect();
    service.waypoint = waypoint;
    service
}

fn policy(
    key: &str,
    scope: pb::PolicyScope,
    action: pb::PolicyAction,
    rules: Vec<pb::Rule>,
) -> pb::Authorization {
    let (namespace, name) = key.split_once('/').unwrap();
    pb::Authorization {
        key: key.into(),
        name: name.into(),
        namespace: namespace.into(),
        scope: scope as i32,
        action: action as i32,
        rules,
        ..Default::default()
    }
}

fn base() -> Config {
    Config::from_yaml("node_name: n1\n").unwrap()
}

/// The converted state, and the warnings.
fn mesh_state(base: &Config, snapshot: &MeshSnapshot) -> (State, Vec<String>) {
    let mesh = mesh(base, snapshot);
    (mesh.state, mesh.warnings)
}

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::from(octets)
}

fn names(state: &State) -> Vec<String> {
    state.workloads().iter().map(|w| w.name.clone()).collect()
}

/// The converted policies' decision on a connection from `demo/<source_sa>` to workload
/// `demo/<workload>` on `port`.
fn decide(mesh: &Mesh, source_sa: &str, workload: &str, port: u16) -> crate::policy::Decision {
    let identity = mesh_core::identity::SpiffeId::new("cluster.local", "demo", source_sa).unwrap();
    mesh.policies.evaluate(&crate::policy::ConnectionInfo {
        source_identity: Some(identity),
        source_ip: "10.0.1.7".parse().unwrap(),
        dest_namespace: "demo".into(),
        dest_ip: "10.0.2.1".parse().unwrap(),
        dest_workload: workload.into(),
        dest_port: port,
    })
}

fn snapshot() -> MeshSnapshot {
    let mut backend = workload("backend", "n2", [10, 0, 2, 1], true);
    backend.authorization_policies = vec!["demo/backend-callers".into()];
    let workloads = [
        workload("client", "n1", [10, 0, 1, 1], true),
        backend,
        workload("outsider", "n1", [10, 0, 1, 9], false),
    ];
    let unresolved = pb::WaypointRef {
        namespace: "demo".into(),
        name: "ghost".into(),
        address: vec![],
        hbone_port: 15008,
    };
    let services = [
        service(
            "backend",
            [10, 96, 0, 20],
            &["demo/backend", "demo/outsider"],
            None,
        ),
        service(
            "website",
            [10, 96, 0, 10],
            &["demo/client"],
            Some(unresolved),
        ),
    ];
    let allow_client = pb::Rule {
        from: vec![pb::SourceMatch {
            principals: vec!["cluster.local/ns/demo/sa/client".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let allow_get_only = pb::Rule {
        to: vec![pb::DestinationMatch {
            methods: vec!["GET".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies = [
        policy(
            "demo/backend-callers",
            pb::PolicyScope::WorkloadSelector,
            pb::PolicyAction::Allow,
            vec![allow_client, allow_get_only],
        ),
        policy(
            "demo/waypoint-only",
            pb::PolicyScope::Targeted,
            pb::PolicyAction::Deny,
            vec![pb::Rule::default()],
        ),
    ];
    MeshSnapshot {
        feed_id: "f".into(),
        version: 1,
        workloads: workloads.into_iter().map(|w| (w.uid.clone(), w)).collect(),
        services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        authorizations: policies.into_iter().map(|p| (p.key.clone(), p)).collect(),
    }
}

#[test]
fn snapshot_becomes_the_nodes_state() {
    let (state, warnings) = mesh_state(&base(), &snapshot());
    assert_eq!(
        names(&state),
        ["client", "backend"],
        "the workload outside the mesh is not in the mesh"
    );
    assert!(
        state.service(ip([10, 96, 0, 10])).is_none(),
        "a service behind an unresolved waypoint is left out"
    );
    let backend = state.service(ip([10, 96, 0, 20])).expect("backend kept");
    let endpoints: Vec<IpAddr> = backend.endpoints.iter().map(|w| w.ip).collect();
    assert_eq!(endpoints, [ip([10, 0, 2, 1])], "only in-mesh endpoints");
    assert_eq!(backend.ports, [(80, 8080)].into());
    assert!(
        state.workloads().iter().all(|w| w.mtls == MtlsMode::Strict),
        "each workload carries its own mode"
    );
    assert!(warnings.iter().any(|w| w.contains("ghost")), "{warnings:?}");

    let mesh = mesh(&base(), &snapshot());
    assert_eq!(
        mesh.policies.len(),
        1,
        "waypoint-targeted policies are not the node's"
    );
    assert!(decide(&mesh, "client", "backend", 8080).is_allowed());
    assert!(
        !decide(&mesh, "intruder", "backend", 8080).is_allowed(),
        "the L7 ALLOW rule (GET only) matches nothing at the node"
    );
    assert!(
        decide(&mesh, "intruder", "client", 8080).is_allowed(),
        "the policy selects the backend only"
    );
}

#[test]
fn same_node_plaintext_is_carried_and_starting_pods_are_left_out_quietly() {
    let mut snapshot = snapshot();
    let client = snapshot.workloads.get_mut("demo/client").unwrap();
    client.same_node_plaintext = true;
    let mut starting = workload("starting", "n1", [0, 0, 0, 0], true);
    starting.addresses.clear();
    snapshot.workloads.insert("demo/starting".into(), starting);
    let (state, warnings) = mesh_state(&base(), &snapshot);
    let flag = |name: &str| {
        state
            .workloads()
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.same_node_plaintext)
    };
    assert_eq!(flag("client"), Some(true));
    assert_eq!(flag("backend"), Some(false), "unset on the wire: HBONE");
    assert_eq!(flag("starting"), None, "no address yet");
    assert!(
        !warnings.iter().any(|w| w.contains("starting")),
        "a starting pod is normal: {warnings:?}"
    );
}

#[test]
fn one_address_claimed_twice_leaves_the_rest_of_the_version_in_force() {
    let mut snapshot = snapshot();
    // A second pod on the client's address, and a service on the backend's.
    snapshot.workloads.insert(
        "demo/twin".into(),
        workload("twin", "n1", [10, 0, 1, 1], true),
    );
    snapshot.services.insert(
        "demo/hijack.example.com".into(),
        service("hijack", [10, 0, 2, 1], &[], None),
    );
    let mut vip_twin = service("vip-twin", [10, 96, 0, 20], &["demo/backend"], None);
    vip_twin.key = "demo/zz-vip-twin.demo.svc.cluster.local".into();
    snapshot.services.insert(vip_twin.key.clone(), vip_twin);
    let (state, warnings) = mesh_state(&base(), &snapshot);
    let names = names(&state);
    assert!(
        names.contains(&"client".to_owned()) && !names.contains(&"twin".to_owned()),
        "{names:?}"
    );
    assert_eq!(
        state.workload(ip([10, 0, 2, 1])).map(|w| w.name.as_str()),
        Some("backend"),
        "the service on the backend's address did not take it"
    );
    let backend = state
        .service(ip([10, 96, 0, 20]))
        .expect("first VIP claim kept");
    assert_eq!(backend.key, "demo/backend");
    for left_out in ["demo/twin", "hijack", "vip-twin"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(left_out) && w.contains("left out")),
            "{left_out}: {warnings:?}"
        );
    }
}

#[test]
fn malformed_policy_denies_its_scope() {
    let mut snapshot = snapshot();
    let bad = pb::Rule {
        from: vec![pb::SourceMatch {
            ip_blocks: vec![pb::Cidr {
                address: vec![10, 0, 0],
                prefix_len: 8,
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let broken = policy(
        "demo/broken",
        pb::PolicyScope::Namespace,
        pb::PolicyAction::Allow,
        vec![bad],
    );
    snapshot.authorizations.insert(broken.key.clone(), broken);
    let mesh = mesh(&base(), &snapshot);
    assert!(!decide(&mesh, "client", "client", 8080).is_allowed());
    assert!(
        mesh.warnings.iter().any(|w| w.contains("demo/broken")),
        "{:?}",
        mesh.warnings
    );
}

#[test]
fn l7_parts_of_deny_rules_apply_regardless_so_they_deny_more() {
    let mut snapshot = snapshot();
    let deny_admin = pb::Rule {
        to: vec![pb::DestinationMatch {
            ports: vec![8080],
            paths: vec!["/admin".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let deny = policy(
        "demo/no-admin",
        pb::PolicyScope::Namespace,
        pb::PolicyAction::Deny,
        vec![deny_admin],
    );
    snapshot.authorizations.insert(deny.key.clone(), deny);
    let mesh = mesh(&base(), &snapshot);
    assert!(
        !decide(&mesh, "client", "client", 8080).is_allowed(),
        "the whole port is denied"
    );
    assert!(decide(&mesh, "client", "client", 9090).is_allowed());
}

#[test]
fn waypoint_resolves_to_one_of_its_pods_not_its_vip() {
    let mut snapshot = snapshot();
    let waypoint_ref = pb::WaypointRef {
        namespace: "demo".into(),
        name: "waypoint".into(),
        address: vec![10, 96, 0, 30],
        hbone_port: 15008,
    };
    for (name, ip) in [("waypoint-a", [10, 0, 2, 8]), ("waypoint-b", [10, 0, 2, 9])] {
        let mut pod = workload(name, "n2", ip, false);
        pod.service_account = "waypoint".into();
        snapshot.workloads.insert(pod.uid.clone(), pod);
    }
    let fronting = service(
        "waypoint",
        [10, 96, 0, 30],
        &["demo/waypoint-a", "demo/waypoint-b"],
        None,
    );
    let bound = service("web", [10, 96, 0, 40], &["demo/client"], Some(waypoint_ref));
    for s in [fronting, bound] {
        snapshot.services.insert(s.key.clone(), s);
    }
    let replicas: [SocketAddr; 2] = [
        "10.0.2.8:15008".parse().unwrap(),
        "10.0.2.9:15008".parse().unwrap(),
    ];
    let mut chosen = BTreeSet::new();
    for node in ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"] {
        let base = Config::from_yaml(&format!("node_name: {node}\n")).unwrap();
        let (state, _) = mesh_state(&base, &snapshot);
        let web = state.service(ip([10, 96, 0, 40])).expect("web kept");
        let waypoint = web.waypoint.clone().expect("the waypoint resolves");
        assert!(replicas.contains(&waypoint.address), "{node}: {waypoint:?}");
        assert_eq!(waypoint.identity.service_account(), "waypoint");
        assert!(state.is_waypoint(&waypoint.identity));
        let (again, _) = mesh_state(&base, &snapshot);
        let address = |s: &State| {
            s.service(ip([10, 96, 0, 40]))
                .and_then(|w| w.waypoint.clone())
                .map(|w| w.address)
        };
        assert_eq!(
            address(&again),
            Some(waypoint.address),
            "{node}: choice is stable"
        );
        chosen.insert(waypoint.address);
    }
    assert_eq!(
        chosen.len(),
        2,
        "eight nodes spread over both replicas: {chosen:?}"
    );
}

#[test]
fn workload_and_port_modes_are_carried_per_workload() {
    let mut strict = workload("db", "n1", [10, 0, 1, 1], true);
    strict.port_mtls = [(8080, pb::MtlsMode::Permissive as i32), (70_000, 1)].into();
    let mut disabled = workload("legacy", "n1", [10, 0, 1, 2], true);
    disabled.mtls = pb::MtlsMode::Disable as i32;
    disabled.port_mtls = [(9090, 42)].into();
    let snapshot = MeshSnapshot {
        workloads: [strict, disabled]
            .into_iter()
            .map(|w| (w.uid.clone(), w))
            .collect(),
        ..MeshSnapshot::default()
    };
    let base = Config::from_yaml("node_name: n1").unwrap();
    let (state, warnings) = mesh_state(&base, &snapshot);
    let all = state.workloads();
    let by_name = |name: &str| all.iter().find(|w| w.name == name).unwrap().clone();
    assert_eq!(by_name("db").mtls, MtlsMode::Strict);
    assert_eq!(
        by_name("db").port_mtls,
        [(8080, MtlsMode::Permissive)].into()
    );
    assert!(warnings.iter().any(|w| w.contains("70000")), "{warnings:?}");
    assert_eq!(by_name("legacy").mtls, MtlsMode::Permissive);
    // An unknown mode from a newer control plane fails closed.
    assert_eq!(
        by_name("legacy").port_mtls,
        [(9090, MtlsMode::Strict)].into()
    );
}

/// Every source field the node can check reaches the evaluator: until policies went from the
/// feed to the shared model in one step, the node's own policy schema had no `serviceAccounts`
/// or `remoteIpBlocks`, so an ALLOW rule with only those lost its source and allowed everyone.
#[test]
fn allow_rules_on_service_accounts_or_remote_addresses_are_enforced() {
    let mut snapshot = snapshot();
    let from = |source: pb::SourceMatch| pb::Rule {
        from: vec![source],
        ..Default::default()
    };
    let by_account = from(pb::SourceMatch {
        service_accounts: vec!["*/ns/demo/sa/client".into()],
        ..Default::default()
    });
    let by_remote = from(pb::SourceMatch {
        remote_ip_blocks: vec![pb::Cidr {
            address: vec![192, 168, 0, 0],
            prefix_len: 16,
        }],
        ..Default::default()
    });
    for (key, rule) in [
        ("demo/sa-only", by_account),
        ("demo/remote-only", by_remote),
    ] {
        let mut snapshot = snapshot.clone();
        let allow = policy(
            key,
            pb::PolicyScope::Namespace,
            pb::PolicyAction::Allow,
            vec![rule],
        );
        snapshot.authorizations = [(allow.key.clone(), allow)].into();
        let mesh = mesh(&base(), &snapshot);
        assert!(
            !decide(&mesh, "intruder", "client", 8080).is_allowed(),
            "{key} let another source in"
        );
    }
    let allow = policy(
        "demo/sa-only",
        pb::PolicyScope::Namespace,
        pb::PolicyAction::Allow,
        vec![from(pb::SourceMatch {
            service_accounts: vec!["*/ns/demo/sa/client".into()],
            ..Default::default()
        })],
    );
    snapshot.authorizations = [(allow.key.clone(), allow)].into();
    assert!(decide(&mesh(&base(), &snapshot), "client", "client", 8080).is_allowed());
}
