//! The workload rules against a snapshot built from YAML: a waypoint pod, an ingress gateway
//! pod and an ordinary pod.

use super::*;
use crate::registry::{parse_yaml, Parsed, Registry, RegistryConfig};

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.99, selector: {gateway: wp}, ports: [{name: hbone, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-1, namespace: app, uid: uid-wp-1, labels: {gateway: wp}}
spec: {nodeName: node-b, serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.0.50}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: app, labels: {weft.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.2, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: app, uid: uid-db-1, labels: {app: db}}
spec: {nodeName: node-b, serviceAccountName: db, containers: []}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: app, uid: uid-gw-1, labels: {istio: ingress}}
spec: {nodeName: node-a, serviceAccountName: ingress, containers: []}
status: {podIP: 10.0.0.60}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: app}
spec: {selector: {istio: ingress}, servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"]}]}
"#;

fn snapshot() -> Snapshot {
    let mut registry = Registry::new(RegistryConfig::default());
    let mut parsed = Parsed::default();
    parse_yaml("c.yaml", CONFIG, &mut parsed);
    registry.replace_all(parsed);
    registry.snapshot()
}

fn pod(name: &str, sa: &str, uid: Option<&str>) -> WorkloadIdentity {
    WorkloadIdentity {
        namespace: "app".into(),
        service_account: sa.into(),
        pod_name: name.into(),
        pod_uid: uid.map(Into::into),
    }
}

const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/app/sa/waypoint";

#[test]
fn a_waypoint_pod_gets_its_own_identity_and_its_waypoint_feed() {
    let s = snapshot();
    for who in [
        pod("wp-1", "waypoint", Some("uid-wp-1")),
        pod("wp-1", "waypoint", None),
    ] {
        assert_eq!(may_certify(&s, &who, WAYPOINT_ID), Ok(()));
        assert_eq!(may_read_waypoint(&s, &who, "app", "wp"), Ok(()));
    }
    let gateway = pod("gw-1", "ingress", Some("uid-gw-1"));
    let ingress_id = "spiffe://cluster.local/ns/app/sa/ingress";
    assert_eq!(may_certify(&s, &gateway, ingress_id), Ok(()));
    assert_eq!(may_read_waypoint(&s, &gateway, "app", "public"), Ok(()));
}

#[test]
fn everything_else_is_refused_with_the_reason() {
    let s = snapshot();
    let wp = pod("wp-1", "waypoint", Some("uid-wp-1"));
    let db_id = "spiffe://cluster.local/ns/app/sa/db";
    assert_eq!(
        may_certify(&s, &wp, db_id),
        Err(WorkloadDenied::ForeignIdentity {
            pod: "app/wp-1".into(),
            own: WAYPOINT_ID.into(),
            requested: db_id.into(),
        })
    );
    assert_eq!(
        may_read_waypoint(&s, &wp, "app", "public"),
        Err(WorkloadDenied::OtherWaypoint {
            pod: "app/wp-1".into(),
            waypoint: "app/public".into(),
        })
    );
    let cases = [
        (
            pod("wp-2", "waypoint", None),
            WorkloadDenied::NoSuchPod {
                pod: "app/wp-2".into(),
            },
        ),
        (
            pod("wp-1", "db", None),
            WorkloadDenied::ServiceAccount {
                pod: "app/wp-1".into(),
                actual: "waypoint".into(),
                token: "db".into(),
            },
        ),
        (
            pod("wp-1", "waypoint", Some("uid-old")),
            WorkloadDenied::Uid {
                pod: "app/wp-1".into(),
                actual: "uid-wp-1".into(),
                token: "uid-old".into(),
            },
        ),
        (
            pod("db-1", "db", Some("uid-db-1")),
            WorkloadDenied::NotWaypoint {
                pod: "app/db-1".into(),
            },
        ),
    ];
    for (who, expected) in cases {
        assert_eq!(may_certify(&s, &who, WAYPOINT_ID), Err(expected.clone()));
        assert_eq!(
            may_read_waypoint(&s, &who, "app", "wp"),
            Err(expected.clone())
        );
        let status = Status::from(expected);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
