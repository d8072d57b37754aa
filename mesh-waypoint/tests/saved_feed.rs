//! A waypoint started from a saved feed (`mesh-control dump --waypoint`, here written from the
//! messages directly): its services are routed on the plain listener by `Host` and port, and
//! the feed's policies apply, as they would to a live version.

mod support;

use http::StatusCode;
use mesh_core::{feed_file, proto::control::v1 as pb};
use mesh_waypoint::{
    app::{self, AppConfig},
    feed::{saved, WaypointName},
};
use support::*;

fn saved_feed(backend_port: u16) -> pb::WaypointConfig {
    let web = pb::Service {
        key: "default/web.default.svc.cluster.local".into(),
        name: "web".into(),
        namespace: "default".into(),
        hostname: "web.default.svc.cluster.local".into(),
        vips: vec![vec![10, 96, 0, 1]],
        ports: vec![pb::ServicePort {
            port: 80,
            target_port: u32::from(backend_port),
            protocol: "http".into(),
        }],
        endpoints: vec![pb::Endpoint {
            workload_uid: "default/web-1".into(),
            ports: Default::default(),
        }],
        waypoint: Some(pb::WaypointRef {
            namespace: "default".into(),
            name: "waypoint".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = pb::Workload {
        uid: "default/web-1".into(),
        name: "web-1".into(),
        namespace: "default".into(),
        addresses: vec![vec![127, 0, 0, 1]],
        identity: "spiffe://cluster.local/ns/default/sa/web".into(),
        ..Default::default()
    };
    let no_admin = pb::Authorization {
        key: "default/no-admin".into(),
        name: "no-admin".into(),
        namespace: "default".into(),
        scope: pb::PolicyScope::Targeted as i32,
        targets: vec![pb::PolicyTarget {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "web".into(),
        }],
        action: pb::PolicyAction::Deny as i32,
        rules: vec![pb::Rule {
            to: vec![pb::DestinationMatch {
                paths: vec!["/admin".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    pb::WaypointConfig {
        feed_id: "saved".into(),
        version: 1,
        services: vec![web],
        workloads: vec![pod],
        policies: vec![no_admin],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_saved_feed_serves_its_services_and_enforces_its_policies() {
    let backend = backend("live").await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let yaml = feed_file::to_yaml(&saved_feed(backend.port())).expect("yaml");
    std::fs::write(file.path(), yaml).expect("write");
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let converted = saved::load_static(file.path(), &me).expect("loads");
    assert!(converted.problems.is_empty(), "{:?}", converted.problems);
    let config = AppConfig::new("127.0.0.1:0".parse().expect("addr"), converted.waypoint);
    let bound = app::build(config).await.expect("waypoint starts");
    let proxy = bound.proxy_addr.expect("plain listener");
    let client = http1();
    for host in [
        "web.default.svc.cluster.local",
        "web.default.svc.cluster.local:80",
        "web",
        "10.96.0.1:80",
    ] {
        let (status, _, body) = send(&client, get(proxy, host, "/page")).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
        assert!(body.contains("live"), "{host}: {body}");
    }
    let (status, _, _) = send(&client, get(proxy, "web", "/admin")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the feed's policy applies");
    let (status, _, _) = send(&client, get(proxy, "web:8080", "/page")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no such service port");
    let (status, _, _) = send(&client, get(proxy, "elsewhere", "/page")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
