//! The node's policies from the feed's messages: scoping, and what the node does with parts it
//! cannot see or that are malformed. The decision rules themselves are the shared evaluator's,
//! tested in `mesh_core::authz`.

use std::collections::BTreeSet;

use mesh_core::proto::control::v1 as pb;

use super::*;

/// `data/by-selector` selects `data/db-0`; no other policy selects anything.
fn selected(key: &str) -> BTreeSet<String> {
    match key {
        "data/by-selector" => BTreeSet::from(["data/db-0".to_owned()]),
        _ => BTreeSet::new(),
    }
}

/// Policies written as the feed's messages (YAML in the proto3 JSON mapping), and the warnings.
fn convert(wire: &[pb::Authorization]) -> (Policies, Vec<String>) {
    let mut warnings = Vec::new();
    let policies = Policies::from_feed(wire, selected, &mut warnings);
    (policies, warnings)
}

fn policies(yaml: &str) -> Policies {
    let wire: Vec<pb::Authorization> = serde_yaml::from_str(yaml).unwrap();
    let (policies, warnings) = convert(&wire);
    assert!(warnings.is_empty(), "{warnings:?}");
    policies
}

fn conn(identity: Option<&str>, ip: &str, ns: &str, workload: &str, port: u16) -> ConnectionInfo {
    ConnectionInfo {
        source_identity: identity.map(|i| i.parse().unwrap()),
        source_ip: ip.parse().unwrap(),
        dest_namespace: ns.into(),
        dest_ip: "10.9.9.9".parse().unwrap(),
        dest_workload: workload.into(),
        dest_port: port,
    }
}

const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const BATCH: &str = "spiffe://cluster.local/ns/batch/sa/job";

/// An allow-nothing policy (ALLOW without rules) in each scope.
const ALLOW_NOTHING: &str = "
- {key: data/in-namespace, namespace: data, scope: POLICY_SCOPE_NAMESPACE}
";

#[test]
fn scopes_decide_where_a_policy_applies() {
    let db = |ns: &str, name: &str| conn(Some(FRONTEND), "10.0.0.1", ns, name, 5432);
    let namespaced = policies(ALLOW_NOTHING);
    assert!(!namespaced.evaluate(&db("data", "db-0")).is_allowed());
    assert!(
        namespaced.evaluate(&db("web", "db-0")).is_allowed(),
        "other namespace"
    );

    let global = policies("[{key: istio-system/all, namespace: istio-system}]");
    assert!(
        !global.evaluate(&db("web", "x")).is_allowed(),
        "global is mesh-wide"
    );

    let selector = policies(
        "[{key: data/by-selector, namespace: data, scope: POLICY_SCOPE_WORKLOAD_SELECTOR}]",
    );
    assert!(!selector.evaluate(&db("data", "db-0")).is_allowed());
    assert!(
        selector.evaluate(&db("data", "cache-0")).is_allowed(),
        "not selected, whatever its namespace"
    );

    let not_the_nodes = policies(
        "
- {key: data/selects-nobody, namespace: data, scope: POLICY_SCOPE_WORKLOAD_SELECTOR}
- {key: data/at-waypoint, namespace: data, scope: POLICY_SCOPE_TARGETED}
- {key: data/audit, namespace: data, scope: POLICY_SCOPE_NAMESPACE, action: POLICY_ACTION_AUDIT}
",
    );
    assert!(not_the_nodes.is_empty(), "{not_the_nodes:?}");
}

#[test]
fn deny_decisions_name_the_policy() {
    let set = policies(
        "[{key: data/d, namespace: data, scope: POLICY_SCOPE_NAMESPACE, action: POLICY_ACTION_DENY,
           rules: [{from: [{namespaces: [batch]}]}]}]",
    );
    let decision = set.evaluate(&conn(Some(BATCH), "10.0.0.1", "data", "db-0", 1));
    assert_eq!(
        decision,
        Decision::DeniedByPolicy {
            policy: "data/d".into()
        }
    );
    assert!(set
        .evaluate(&conn(Some(FRONTEND), "10.0.0.1", "data", "db-0", 1))
        .is_allowed());
}

/// Every source field the node can check is checked: none may be dropped on the way, since an
/// ALLOW rule that loses its only source field allows every source.
#[test]
fn allow_rules_keep_every_l4_source_field() {
    let allow = |source: &str| {
        policies(&format!(
            "[{{key: data/p, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
                rules: [{{from: [{source}]}}]}}]"
        ))
    };
    let to_db = |identity: &str, ip: &str| conn(Some(identity), ip, "data", "db-0", 5432);

    let service_accounts = allow("{serviceAccounts: ['*/ns/web/sa/frontend']}");
    assert!(service_accounts
        .evaluate(&to_db(FRONTEND, "10.0.0.1"))
        .is_allowed());
    assert!(
        !service_accounts
            .evaluate(&to_db(BATCH, "10.0.0.1"))
            .is_allowed(),
        "another service account"
    );

    let not_service_accounts = policies(
        "[{key: data/p, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
                    rules: [{from: [{notServiceAccounts: ['*/ns/batch/sa/job']}]}]}]",
    );
    assert!(!not_service_accounts
        .evaluate(&to_db(BATCH, "10.0.0.1"))
        .is_allowed());

    let mut remote = pb::Authorization {
        key: "data/p".into(),
        namespace: "data".into(),
        scope: pb::PolicyScope::Namespace as i32,
        rules: vec![pb::Rule {
            from: vec![pb::SourceMatch {
                remote_ip_blocks: vec![pb::Cidr {
                    address: vec![10, 0, 0, 0],
                    prefix_len: 24,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (set, _) = convert(std::slice::from_ref(&remote));
    assert!(set.evaluate(&to_db(FRONTEND, "10.0.0.7")).is_allowed());
    assert!(
        !set.evaluate(&to_db(FRONTEND, "10.1.0.7")).is_allowed(),
        "at a node the remote address is the peer's"
    );
    remote.rules[0].from[0].remote_ip_blocks[0].prefix_len = 40;
    let (set, warnings) = convert(&[remote]);
    assert!(
        !set.evaluate(&to_db(FRONTEND, "10.0.0.7")).is_allowed(),
        "malformed: deny all"
    );
    assert!(warnings[0].contains("data/p"), "{warnings:?}");
}

/// What a node cannot see makes an ALLOW rule match nothing and a DENY rule apply regardless.
#[test]
fn what_the_node_cannot_see_fails_closed() {
    let to_db = |port| conn(Some(FRONTEND), "10.0.0.1", "data", "db-0", port);
    let allow_jwt = policies(
        "[{key: data/p, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
           rules: [{from: [{requestPrincipals: ['*']}]}]}]",
    );
    assert!(!allow_jwt.evaluate(&to_db(5432)).is_allowed());
    let allow_get = policies(
        "[{key: data/p, namespace: data, scope: POLICY_SCOPE_NAMESPACE,
           rules: [{to: [{methods: [GET]}]}]}]",
    );
    assert!(!allow_get.evaluate(&to_db(5432)).is_allowed());
    let deny_admin = policies(
        "[{key: data/d, namespace: data, scope: POLICY_SCOPE_NAMESPACE, action: POLICY_ACTION_DENY,
           rules: [{to: [{ports: [8080], paths: [/admin]}]}]}]",
    );
    assert!(
        !deny_admin.evaluate(&to_db(8080)).is_allowed(),
        "the whole port"
    );
    assert!(deny_admin.evaluate(&to_db(5432)).is_allowed());
    let deny_header = policies(
        "[{key: data/d, namespace: data, scope: POLICY_SCOPE_NAMESPACE, action: POLICY_ACTION_DENY,
           rules: [{when: [{key: 'request.headers[x-user]', values: [eve]}]}]}]",
    );
    assert!(!deny_header.evaluate(&to_db(5432)).is_allowed());
}

#[test]
fn malformed_or_unknown_policies_fail_closed() {
    let base = pb::Authorization {
        key: "data/p".into(),
        namespace: "data".into(),
        scope: pb::PolicyScope::Namespace as i32,
        rules: vec![pb::Rule::default()],
        ..Default::default()
    };
    let bad_port = pb::Authorization {
        rules: vec![pb::Rule {
            to: vec![pb::DestinationMatch {
                ports: vec![70_000],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..base.clone()
    };
    let unknown_action = pb::Authorization {
        action: 42,
        ..base.clone()
    };
    for wire in [bad_port, unknown_action] {
        let (set, warnings) = convert(std::slice::from_ref(&wire));
        let decision = set.evaluate(&conn(Some(FRONTEND), "10.0.0.1", "data", "db-0", 80));
        assert!(!decision.is_allowed(), "{wire:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
    let unknown_scope = pb::Authorization { scope: 9, ..base };
    let (set, warnings) = convert(&[unknown_scope]);
    assert!(warnings[0].contains("unknown scope"), "{warnings:?}");
    let in_namespace = conn(Some(FRONTEND), "10.0.0.1", "data", "cache-0", 80);
    assert!(
        !set.evaluate(&in_namespace).is_allowed(),
        "its whole namespace"
    );
    let elsewhere = conn(Some(FRONTEND), "10.0.0.1", "web", "cache-0", 80);
    assert!(set.evaluate(&elsewhere).is_allowed());
}
