//! Table tests of AuthorizationPolicy semantics.

use super::*;
use crate::config::PolicyConfig;

fn policies(yaml: &str) -> Policies {
    let configs: Vec<PolicyConfig> = serde_yaml::from_str(yaml).unwrap();
    Policies::compile("istio-system", &configs).unwrap()
}

fn conn(identity: Option<&str>, ip: &str, ns: &str, app: &str, port: u16) -> ConnectionInfo {
    ConnectionInfo {
        source_identity: identity.map(|i| i.parse().unwrap()),
        source_ip: ip.parse().unwrap(),
        dest_namespace: ns.into(),
        dest_labels: [("app".to_owned(), app.to_owned())].into(),
        dest_ip: "10.9.9.9".parse().unwrap(),
        dest_workload: format!("{app}-0"),
        dest_port: port,
    }
}

const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
const BATCH: &str = "spiffe://cluster.local/ns/batch/sa/job";

#[test]
fn semantics_table() {
    struct Case {
        name: &'static str,
        yaml: &'static str,
        conn: ConnectionInfo,
        allowed: bool,
    }
    let to_db = |id: Option<&str>, port| conn(id, "10.0.0.9", "data", "db", port);
    let cases = [
        Case { name: "no policy allows", yaml: "[]", conn: to_db(None, 5432), allowed: true },
        Case {
            name: "allow-nothing (no rules) denies",
            yaml: "[{name: p, namespace: data}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: false,
        },
        Case {
            name: "empty rule allows all",
            yaml: "[{name: p, namespace: data, rules: [{}]}]",
            conn: to_db(None, 5432),
            allowed: true,
        },
        Case {
            name: "principal allow matches",
            yaml: "[{name: p, namespace: data, rules: [{from: [{principals: [cluster.local/ns/web/sa/frontend]}]}]}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "principal allow, other principal denied",
            yaml: "[{name: p, namespace: data, rules: [{from: [{principals: [cluster.local/ns/web/sa/frontend]}]}]}]",
            conn: to_db(Some(BATCH), 5432),
            allowed: false,
        },
        Case {
            name: "principals * needs mtls",
            yaml: "[{name: p, namespace: data, rules: [{from: [{principals: ['*']}]}]}]",
            conn: to_db(None, 5432),
            allowed: false,
        },
        Case {
            name: "namespace allow with port",
            yaml: "[{name: p, namespace: data, rules: [{from: [{namespaces: [web]}], to: [{ports: [5432]}]}]}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "namespace allow, wrong port",
            yaml: "[{name: p, namespace: data, rules: [{from: [{namespaces: [web]}], to: [{ports: [5432]}]}]}]",
            conn: to_db(Some(FRONTEND), 22),
            allowed: false,
        },
        Case {
            name: "deny wins over allow",
            yaml: "[{name: a, namespace: data, rules: [{}]}, {name: d, namespace: data, action: DENY, rules: [{from: [{namespaces: [batch]}]}]}]",
            conn: to_db(Some(BATCH), 5432),
            allowed: false,
        },
        Case {
            name: "deny not matching leaves allow-by-default",
            yaml: "[{name: d, namespace: data, action: DENY, rules: [{from: [{namespaces: [batch]}]}]}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "notNamespaces deny",
            yaml: "[{name: d, namespace: data, action: DENY, rules: [{from: [{not_namespaces: [web]}]}]}]",
            conn: to_db(Some(BATCH), 5432),
            allowed: false,
        },
        Case {
            name: "notPrincipals * denies plaintext",
            yaml: "[{name: d, namespace: data, action: DENY, rules: [{from: [{not_principals: ['*']}]}]}]",
            conn: to_db(None, 5432),
            allowed: false,
        },
        Case {
            name: "notPrincipals * lets mtls through",
            yaml: "[{name: d, namespace: data, action: DENY, rules: [{from: [{not_principals: ['*']}]}]}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "ipBlocks allow",
            yaml: "[{name: p, namespace: data, rules: [{from: [{ip_blocks: [10.0.0.0/24]}]}]}]",
            conn: to_db(None, 5432),
            allowed: true,
        },
        Case {
            name: "notIpBlocks excludes",
            yaml: "[{name: p, namespace: data, rules: [{from: [{ip_blocks: [10.0.0.0/8], not_ip_blocks: [10.0.0.9]}]}]}]",
            conn: to_db(None, 5432),
            allowed: false,
        },
        Case {
            name: "notPorts deny",
            yaml: "[{name: d, namespace: data, action: DENY, rules: [{to: [{not_ports: [5432]}]}]}]",
            conn: to_db(Some(FRONTEND), 22),
            allowed: false,
        },
        Case {
            name: "other namespace's policy does not apply",
            yaml: "[{name: p, namespace: web}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "root namespace policy applies mesh-wide",
            yaml: "[{name: p, namespace: istio-system, action: DENY, rules: [{from: [{namespaces: [batch]}]}]}]",
            conn: to_db(Some(BATCH), 5432),
            allowed: false,
        },
        Case {
            name: "selector not matching does not apply",
            yaml: "[{name: p, namespace: data, selector: {app: cache}}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: true,
        },
        Case {
            name: "selector matching applies",
            yaml: "[{name: p, namespace: data, selector: {app: db}}]",
            conn: to_db(Some(FRONTEND), 5432),
            allowed: false,
        },
        Case {
            name: "prefix and suffix principals",
            yaml: "[{name: p, namespace: data, rules: [{from: [{principals: ['cluster.local/ns/web/*']}]}, {from: [{principals: ['*/sa/job']}]}]}]",
            conn: to_db(Some(BATCH), 5432),
            allowed: true,
        },
    ];
    for case in cases {
        let decision = policies(case.yaml).evaluate(&case.conn);
        assert_eq!(
            decision.is_allowed(),
            case.allowed,
            "{}: {decision:?}",
            case.name
        );
    }
}

#[test]
fn decision_names_the_policy() {
    let set = policies(
        "[{name: d, namespace: data, action: DENY, rules: [{from: [{namespaces: [batch]}]}]}]",
    );
    let decision = set.evaluate(&conn(Some(BATCH), "10.0.0.1", "data", "db", 1));
    assert_eq!(
        decision,
        Decision::DeniedByPolicy {
            policy: "data/d".into()
        }
    );
}

#[test]
fn invalid_ip_block_rejects_the_policy() {
    let configs: Vec<PolicyConfig> = serde_yaml::from_str(
        "[{name: p, namespace: data, rules: [{from: [{ip_blocks: [not-an-ip]}]}]}]",
    )
    .unwrap();
    let err = Policies::compile("istio-system", &configs).unwrap_err();
    assert!(err.to_string().contains("not-an-ip"), "{err}");
}

#[test]
fn resolved_workload_lists_scope_instead_of_labels() {
    // An allow-nothing policy bound by the control plane to data/db-0 only.
    let bound = policies("[{name: p, namespace: data, workloads: [data/db-0]}]");
    let db = conn(Some(FRONTEND), "10.0.0.9", "data", "db", 5432);
    let cache = conn(Some(FRONTEND), "10.0.0.9", "data", "cache", 6379);
    assert!(!bound.evaluate(&db).is_allowed(), "db-0 is in the list");
    assert!(
        bound.evaluate(&cache).is_allowed(),
        "cache-0 is not, whatever its namespace"
    );
}
