//! Table tests for the feed conversion: services, workloads, policies, pods; routes in
//! [`routes`].

use std::{collections::BTreeMap, time::Duration};

use mesh_core::{authz, proto::control::v1 as pb};

use super::{convert, ConvertError, Converted, WaypointName};
use crate::config::{LoadBalancerConfig, RouteConfig, UpstreamProtocol};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";

fn service(name: &str, vip: [u8; 4], port: u32, uids: &[&str]) -> pb::Service {
    pb::Service {
        key: format!("default/{name}.default.svc.cluster.local"),
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.svc.cluster.local"),
        vips: vec![vip.to_vec()],
        ports: vec![pb::ServicePort {
            port,
            target_port: 9080,
            protocol: "http".into(),
        }],
        endpoints: uids
            .iter()
            .map(|u| pb::Endpoint {
                workload_uid: (*u).into(),
                ports: BTreeMap::new(),
            })
            .collect(),
        waypoint: Some(pb::WaypointRef {
            namespace: "default".into(),
            name: "waypoint".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn workload(uid: &str, ip: [u8; 4], version: &str) -> pb::Workload {
    pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: vec![ip.to_vec()],
        identity: format!("spiffe://cluster.local/ns/default/sa/{uid}"),
        labels: BTreeMap::from([("version".to_owned(), version.to_owned())]),
        ..Default::default()
    }
}

fn base() -> pb::WaypointConfig {
    pb::WaypointConfig {
        feed_id: "f".into(),
        version: 7,
        services: vec![
            service("reviews", [10, 96, 0, 1], 9080, &["r1", "r2"]),
            service("ratings", [10, 96, 0, 2], 9080, &["ra"]),
        ],
        workloads: vec![
            workload("r1", [10, 0, 0, 1], "v1"),
            workload("r2", [10, 0, 0, 2], "v2"),
            workload("ra", [10, 0, 0, 3], "v1"),
        ],
        traffic_policies: vec![pb::TrafficPolicy {
            key: "DestinationRule/default/reviews".into(),
            host: REVIEWS.into(),
            subsets: BTreeMap::from([
                ("v1".to_owned(), labels("v1")),
                ("v2".to_owned(), labels("v2")),
            ]),
            consistent_hash: Some(pb::ConsistentHash {
                key: Some(pb::consistent_hash::Key::Header("x-user".into())),
            }),
            connection_pool: Some(pb::ConnectionPool {
                max_connections: 7,
                ..Default::default()
            }),
            outlier: Some(pb::OutlierDetection {
                consecutive_5xx: 3,
                interval_ms: 2500,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn labels(version: &str) -> pb::Labels {
    pb::Labels {
        labels: BTreeMap::from([("version".to_owned(), version.to_owned())]),
    }
}

fn exact(v: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(pb::string_match::Kind::Exact(v.into())),
    })
}

fn run(routes: Vec<pb::Route>) -> Converted {
    let mut wire = base();
    wire.routes = routes;
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    convert(&wire, &me)
}

fn route(rules: Vec<pb::RouteRule>) -> pb::Route {
    pb::Route {
        key: "HTTPRoute/default/reviews".into(),
        hosts: vec![REVIEWS.into()],
        port: 0,
        rules,
    }
}

fn vhost<'a>(c: &'a Converted, name_prefix: &str) -> &'a RouteConfig {
    c.waypoint
        .routes
        .iter()
        .find(|r| r.name.starts_with(name_prefix))
        .unwrap_or_else(|| panic!("no vhost {name_prefix}: {:?}", c.waypoint.routes))
}

mod routes;

#[test]
fn services_become_destinations_with_identities_and_policy() {
    let c = run(vec![]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!((c.feed_id.as_str(), c.version), ("f", 7));
    let d = &c.waypoint.destinations;
    let reviews = d
        .iter()
        .find(|d| d.name == format!("{REVIEWS}:9080"))
        .expect("reviews");
    let addrs: Vec<_> = reviews
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:9080", "10.0.0.2:9080"]);
    assert_eq!(
        reviews.endpoints[1].identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/r2")
    );
    assert_eq!(reviews.endpoints[1].labels["version"], "v2");
    let subsets: Vec<_> = reviews.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(subsets, ["v1", "v2"]);
    let tp = &reviews.traffic_policy;
    assert_eq!(
        tp.load_balancer,
        LoadBalancerConfig::ConsistentHashHeader("x-user".into())
    );
    assert_eq!(tp.connection_pool.max_connections, 7);
    assert_eq!(tp.connection_pool.max_requests, 1024, "0 keeps the default");
    let outlier = tp.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(outlier.consecutive_5xx, 3);
    assert_eq!(outlier.interval.0, std::time::Duration::from_millis(2500));
    assert_eq!(outlier.max_ejection_percent, 10, "0 keeps Istio's default");
    assert_eq!(tp.upstream_protocol, UpstreamProtocol::SameAsDownstream);
}

#[test]
fn unrouted_services_get_a_default_route_under_every_name() {
    let c = run(vec![]);
    let v = vhost(&c, &format!("default/{RATINGS}"));
    for key in [
        "ratings.default.svc.cluster.local:9080",
        "ratings:9080",
        "ratings.default:9080",
        "ratings.default.svc:9080",
        "10.96.0.2:9080",
    ] {
        assert!(
            v.hosts.iter().any(|h| h == key),
            "{key} missing from {:?}",
            v.hosts
        );
    }
    assert_eq!(v.rules[0].route[0].destination, format!("{RATINGS}:9080"));
    crate::route::RouteTable::new(&c.waypoint.routes, &c.waypoint.destinations)
        .expect("default routes compile");
}

/// Each broken rule makes its whole virtual host answer 503, and is reported with the key.
#[test]
fn policies_are_scoped_and_fail_closed() {
    let target = |kind: &str, name: &str| pb::PolicyTarget {
        kind: kind.into(),
        namespace: "default".into(),
        name: name.into(),
    };
    let mut wire = base();
    wire.policies = vec![
        pb::Authorization {
            key: "default/svc".into(),
            targets: vec![target("Service", "reviews")],
            ..Default::default()
        },
        pb::Authorization {
            key: "default/gw".into(),
            targets: vec![target("Gateway", "waypoint")],
            ..Default::default()
        },
        pb::Authorization {
            key: "default/bad".into(),
            action: 99,
            rules: vec![pb::Rule::default()],
            ..Default::default()
        },
    ];
    let c = convert(
        &wire,
        &WaypointName {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
    );
    let p = &c.waypoint.scoped_policies;
    let keys: Vec<_> = p[0].scope.iter().flatten().cloned().collect();
    assert_eq!(keys, ["10.96.0.1:9080"]);
    assert!(
        p[1].scope.is_none(),
        "targeting the waypoint applies to every request"
    );
    assert_eq!(
        p[2].policy.action,
        authz::Action::Deny,
        "unknown action denies"
    );
    assert_eq!(p[2].policy.rules, vec![authz::Rule::default()]);
    assert!(
        matches!(c.problems.as_slice(), [ConvertError::Policy(_)]),
        "{:?}",
        c.problems
    );
}

#[test]
fn broken_workloads_leave_no_endpoint() {
    let mut wire = base();
    wire.workloads[0].identity = "not-spiffe".into();
    wire.workloads[1].addresses = vec![vec![1, 2, 3]];
    let c = convert(&wire, &WaypointName::default());
    let reviews = c
        .waypoint
        .destinations
        .iter()
        .find(|d| d.name.starts_with(REVIEWS))
        .expect("reviews");
    assert!(reviews.endpoints.is_empty());
    assert_eq!(
        c.problems.len(),
        4,
        "two bad workloads, two dangling endpoints: {:?}",
        c.problems
    );
}

#[test]
fn pods_bound_to_this_waypoint_get_their_own_authority() {
    let mut wire = base();
    let bound = |name: &str| {
        Some(pb::WaypointRef {
            namespace: "default".into(),
            name: name.into(),
            ..Default::default()
        })
    };
    wire.workloads[0].waypoint = bound("waypoint");
    wire.workloads[1].waypoint = bound("other-waypoint");
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let c = convert(&wire, &me);
    let pods: Vec<_> = c
        .waypoint
        .routes
        .iter()
        .filter(|r| r.name.starts_with("pod/"))
        .map(|r| (r.hosts.clone(), r.rules[0].route[0].destination.clone()))
        .collect();
    assert_eq!(
        pods,
        [(
            vec!["10.0.0.1:9080".to_owned()],
            "pod/10.0.0.1:9080".to_owned()
        )]
    );
    let dest = c
        .waypoint
        .destinations
        .iter()
        .find(|d| d.name == "pod/10.0.0.1:9080");
    let identity = dest.and_then(|d| d.endpoints[0].identity.clone());
    assert_eq!(
        identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/r1")
    );
    crate::route::RouteTable::new(&c.waypoint.routes, &c.waypoint.destinations).expect("compiles");
}

#[test]
fn path_normalization_follows_the_control_plane_and_an_unknown_mode_is_the_default() {
    use authz::PathNormalization;
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let cases = [
        (
            pb::PathNormalization::Default as i32,
            PathNormalization::MergeSlashes,
            0,
        ),
        (
            pb::PathNormalization::None as i32,
            PathNormalization::None,
            0,
        ),
        (
            pb::PathNormalization::Base as i32,
            PathNormalization::Base,
            0,
        ),
        (
            pb::PathNormalization::DecodeAndMergeSlashes as i32,
            PathNormalization::DecodeAndMergeSlashes,
            0,
        ),
        (99, PathNormalization::MergeSlashes, 1),
    ];
    for (wire, want, problems) in cases {
        let config = pb::WaypointConfig {
            path_normalization: wire,
            ..base()
        };
        let converted = convert(&config, &me);
        assert_eq!(converted.waypoint.path_normalization, want, "{wire}");
        let reported = converted
            .problems
            .iter()
            .filter(|p| matches!(p, ConvertError::PathNormalization(_)))
            .count();
        assert_eq!(reported, problems, "{wire}");
    }
}

#[test]
fn request_authentication_is_scoped_and_broken_rules_refuse_their_issuer() {
    use crate::authn::{KeySource, Keys, Location};
    let mut wire = base();
    let reviews = pb::PolicyTarget {
        kind: "Service".into(),
        namespace: "default".into(),
        name: "reviews".into(),
    };
    let rule = |issuer: &str| pb::JwtRule {
        issuer: issuer.into(),
        ..Default::default()
    };
    wire.request_authentications = vec![pb::RequestAuthentication {
        key: "default/jwt".into(),
        targets: vec![reviews],
        rules: vec![
            pb::JwtRule {
                jwks_uri: "https://a.test/keys".into(),
                jwks_timeout_ms: 3_600_000,
                from_params: vec!["token".into()],
                ..rule("https://a.test")
            },
            pb::JwtRule {
                jwks: "{\"keys\": []}".into(),
                ..rule("https://b.test")
            },
            pb::JwtRule {
                from_headers: vec![pb::JwtHeader {
                    name: "bad header".into(),
                    prefix: String::new(),
                }],
                ..rule("https://c.test")
            },
            rule("https://d.test"),
        ],
        refuse_all: false,
    }];
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let c = convert(&wire, &me);
    let scoped = &c.waypoint.request_authn[0];
    let keys: Vec<_> = scoped.scope.iter().flatten().cloned().collect();
    assert_eq!(keys, ["10.96.0.1:9080"]);
    let [a, b, c_rule, d] = &scoped.providers[..] else {
        panic!("four providers: {:?}", scoped.providers)
    };
    match &a.keys {
        Keys::Remote { source, timeout } => {
            assert_eq!(source, &KeySource::Uri("https://a.test/keys".into()));
            assert_eq!(*timeout, Duration::from_secs(30), "capped");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.locations, [Location::Param("token".into())]);
    assert!(matches!(b.keys, Keys::Unusable), "empty JWKS");
    assert!(matches!(c_rule.keys, Keys::Unusable), "bad header name");
    assert!(matches!(
        &d.keys,
        Keys::Remote {
            source: KeySource::Discovery { .. },
            ..
        }
    ));
    assert_eq!(d.locations, Location::defaults());
    let jwt_problems = c
        .problems
        .iter()
        .filter(|p| matches!(p, ConvertError::Jwt { .. }))
        .count();
    assert_eq!(jwt_problems, 2, "{:?}", c.problems);
}

#[test]
fn a_saved_feed_converts_as_the_live_version() {
    let me = WaypointName {
        namespace: "default".into(),
        name: "waypoint".into(),
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let yaml = mesh_core::feed_file::to_yaml(&base()).unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let saved = super::saved::load(file.path(), &me).unwrap();
    assert!(!saved.waypoint.destinations.is_empty());
    assert_eq!(format!("{saved:?}"), format!("{:?}", convert(&base(), &me)));

    std::fs::write(file.path(), "version: 1\nroutes: [{hostz: [a]}]\n").unwrap();
    let error = super::saved::load(file.path(), &me)
        .unwrap_err()
        .to_string();
    assert!(error.contains("hostz"), "{error}");
}
