//! Table tests for route conversion: every rule field, local answers, fail-closed 503s,
//! port filtering, ingress virtual hosts and merging routes on one service port.

use std::collections::BTreeMap;

use mesh_core::proto::control::v1 as pb;

use super::{base, convert, exact, route, run, vhost, RATINGS, REVIEWS};
use crate::config::{PathRewrite, StringMatch, ValueMatch};
use crate::feed::WaypointName;

#[test]
fn every_rule_field_converts() {
    let rule = pb::RouteRule {
        name: "canary".into(),
        matches: vec![pb::RouteMatch {
            path: Some(pb::StringMatch {
                kind: Some(pb::string_match::Kind::Prefix("/api".into())),
            }),
            method: "GET".into(),
            headers: vec![pb::HeaderMatch {
                name: "x-debug".into(),
                value: None,
                invert: true,
            }],
            query_params: vec![pb::HeaderMatch {
                name: "user".into(),
                value: exact("jason"),
                invert: false,
            }],
            port: 0,
        }],
        backends: vec![
            pb::Backend {
                host: REVIEWS.into(),
                port: 0,
                weight: 90,
                subset: "v1".into(),
            },
            pb::Backend {
                host: REVIEWS.into(),
                port: 9080,
                weight: 10,
                subset: "v2".into(),
            },
        ],
        timeout_ms: 1500,
        retry: Some(pb::Retry {
            attempts: 2,
            per_try_timeout_ms: 200,
            retry_on: vec!["5xx".into(), "reset".into()],
        }),
        rewrite: Some(pb::Rewrite {
            path: Some(pb::PathRewrite {
                kind: Some(pb::path_rewrite::Kind::Prefix("/v2".into())),
            }),
            authority: "internal".into(),
        }),
        request_headers: Some(pb::HeaderOps {
            set: BTreeMap::from([("x-set".to_owned(), "1".to_owned())]),
            add: BTreeMap::new(),
            remove: vec!["x-drop".into()],
        }),
        fault: Some(pb::Fault {
            delay: None,
            abort: Some(pb::AbortFault {
                percentage: 5.0,
                http_status: 418,
            }),
        }),
        mirror: Some(pb::Mirror {
            host: RATINGS.into(),
            port: 0,
            subset: String::new(),
            percentage: Some(25.0),
        }),
        ..Default::default()
    };
    let c = run(vec![route(vec![rule])]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let r = &vhost(&c, "HTTPRoute/default/reviews").rules[0];
    let m = &r.matches[0];
    assert_eq!(m.path, Some(StringMatch::Prefix("/api".into())));
    assert_eq!(m.method.as_deref(), Some("GET"));
    assert_eq!(
        (m.headers[0].value.clone(), m.headers[0].invert),
        (ValueMatch::Present(true), true)
    );
    assert_eq!(m.query_params[0].value, ValueMatch::Exact("jason".into()));
    let weights: Vec<_> = r
        .route
        .iter()
        .map(|w| (w.subset.as_deref(), w.weight))
        .collect();
    assert_eq!(weights, [(Some("v1"), 90), (Some("v2"), 10)]);
    assert_eq!(r.timeout.map(|t| t.0.as_millis()), Some(1500));
    let retries = r.retries.as_ref().expect("retries");
    assert_eq!(
        (retries.attempts, retries.retry_on.as_deref()),
        (2, Some("5xx,reset"))
    );
    let rewrite = r.rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.path, Some(PathRewrite::Prefix("/v2".into())));
    assert_eq!(rewrite.authority.as_deref(), Some("internal"));
    assert_eq!(r.request_headers.set["x-set"], "1");
    assert_eq!(r.request_headers.remove, ["x-drop"]);
    assert_eq!(
        r.fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.http_status),
        Some(418)
    );
    let mirror = r.mirror.as_ref().expect("mirror");
    assert_eq!(
        (mirror.destination.as_str(), mirror.percentage),
        (&*format!("{RATINGS}:9080"), Some(25.0))
    );
}

#[test]
fn local_answers_convert() {
    let redirect = pb::RouteRule {
        redirect: Some(pb::Redirect {
            authority: "new".into(),
            code: 308,
            port: 8443,
            ..Default::default()
        }),
        ..Default::default()
    };
    let direct = pb::RouteRule {
        direct_response: Some(pb::DirectResponse {
            status: 418,
            body: "teapot".into(),
        }),
        ..Default::default()
    };
    let c = run(vec![route(vec![redirect, direct])]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let rules = &vhost(&c, "HTTPRoute/").rules;
    let r = rules[0].redirect.as_ref().expect("redirect");
    assert_eq!(
        (r.authority.as_deref(), r.code, r.port),
        (Some("new"), Some(308), Some(8443))
    );
    assert!(rules[0].route.is_empty(), "a redirect does not forward");
    assert_eq!(
        rules[1].direct_response.as_ref().map(|d| d.status),
        Some(418)
    );
}

#[test]
fn broken_routes_fail_closed_with_503() {
    let regex = pb::RouteMatch {
        path: Some(pb::StringMatch {
            kind: Some(pb::string_match::Kind::Regex("(".into())),
        }),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::RouteRule)> = vec![
        (
            "bad regex",
            pb::RouteRule {
                matches: vec![regex],
                ..Default::default()
            },
        ),
        (
            "unknown backend",
            pb::RouteRule {
                backends: vec![pb::Backend {
                    host: "nope.svc".into(),
                    weight: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        (
            "unknown subset",
            pb::RouteRule {
                backends: vec![pb::Backend {
                    host: REVIEWS.into(),
                    subset: "v9".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        (
            "empty oneof",
            pb::RouteRule {
                matches: vec![pb::RouteMatch {
                    path: Some(pb::StringMatch { kind: None }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        (
            "redirect and direct",
            pb::RouteRule {
                redirect: Some(pb::Redirect::default()),
                direct_response: Some(pb::DirectResponse {
                    status: 200,
                    body: String::new(),
                }),
                ..Default::default()
            },
        ),
        (
            "bad status",
            pb::RouteRule {
                direct_response: Some(pb::DirectResponse {
                    status: 70_000,
                    body: String::new(),
                }),
                ..Default::default()
            },
        ),
    ];
    for (name, rule) in cases {
        let c = run(vec![route(vec![rule])]);
        let v = vhost(&c, "HTTPRoute/default/reviews");
        assert_eq!(v.rules.len(), 1, "{name}");
        let answer = v.rules[0].direct_response.as_ref().map(|d| d.status);
        assert_eq!(answer, Some(503), "{name}: {:?}", v.rules);
        assert!(
            v.rules[0].matches.is_empty(),
            "{name}: the 503 covers every request"
        );
        assert_eq!(c.problems.len(), 1, "{name}: {:?}", c.problems);
        assert!(
            c.problems[0]
                .to_string()
                .contains("HTTPRoute/default/reviews"),
            "{name}"
        );
        assert!(
            !c.waypoint
                .routes
                .iter()
                .any(|r| r.name.starts_with(&format!("default/{REVIEWS}"))),
            "{name}: no default route may replace the broken one"
        );
    }
}

#[test]
fn match_blocks_for_other_ports_are_dropped() {
    let other_port = pb::RouteRule {
        matches: vec![pb::RouteMatch {
            port: 1234,
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = run(vec![route(vec![other_port, pb::RouteRule::default()])]);
    let v = vhost(&c, "HTTPRoute/");
    assert_eq!(v.rules.len(), 1, "the port-1234 rule never applies on 9080");
    assert_eq!(v.rules[0].route[0].destination, format!("{REVIEWS}:9080"));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
}

#[test]
fn hosts_that_are_no_bound_service_become_ingress_virtual_hosts() {
    let to_reviews = pb::RouteRule {
        backends: vec![pb::Backend {
            host: REVIEWS.into(),
            port: 0,
            weight: 1,
            subset: String::new(),
        }],
        ..Default::default()
    };
    let mut r = route(vec![to_reviews]);
    r.key = "VirtualService/default/ingress".into();
    r.hosts = vec!["bookinfo.example.com".into(), "*.shop.example.com".into()];
    let mut no_backend = route(vec![pb::RouteRule::default()]);
    no_backend.key = "VirtualService/default/broken".into();
    no_backend.hosts = vec!["broken.example.com".into()];
    let mut wire = base();
    // ratings is only an ingress backend here: no mesh virtual host may front it.
    wire.services[1].waypoint = None;
    wire.routes = vec![r, no_backend];
    let c = convert(
        &wire,
        &WaypointName {
            namespace: "default".into(),
            name: "waypoint".into(),
        },
    );
    let ingress = c
        .waypoint
        .ingress_routes
        .as_deref()
        .expect("feed mode has an ingress table");
    assert_eq!(
        ingress[0].hosts,
        ["bookinfo.example.com", "*.shop.example.com"]
    );
    assert_eq!(
        ingress[0].rules[0].route[0].destination,
        format!("{REVIEWS}:9080"),
        "port 0: the only port"
    );
    let broken = ingress[1].rules[0]
        .direct_response
        .as_ref()
        .map(|d| d.status);
    assert_eq!(
        broken,
        Some(503),
        "an ingress rule without backends has no original destination"
    );
    assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    assert!(
        !c.waypoint
            .routes
            .iter()
            .any(|v| v.hosts.iter().any(|h| h.starts_with("ratings"))),
        "unbound services get no mesh virtual host"
    );
    assert!(c
        .waypoint
        .destinations
        .iter()
        .any(|d| d.name.starts_with(RATINGS)));
}

#[test]
fn routes_on_one_service_port_merge_in_feed_order() {
    let first = pb::Route {
        key: "HTTPRoute/default/a".into(),
        rules: vec![pb::RouteRule {
            matches: vec![pb::RouteMatch {
                path: exact("/a"),
                ..Default::default()
            }],
            direct_response: Some(pb::DirectResponse {
                status: 201,
                body: String::new(),
            }),
            ..Default::default()
        }],
        ..route(vec![])
    };
    let second = pb::Route {
        key: "VirtualService/default/b".into(),
        rules: vec![pb::RouteRule {
            direct_response: Some(pb::DirectResponse {
                status: 202,
                body: String::new(),
            }),
            ..Default::default()
        }],
        ..route(vec![])
    };
    let c = run(vec![first, second]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let merged: Vec<_> = c
        .waypoint
        .routes
        .iter()
        .filter(|r| r.hosts.iter().any(|h| h.starts_with(REVIEWS)))
        .collect();
    assert_eq!(
        merged.len(),
        1,
        "one virtual host per service port: {merged:?}"
    );
    let v = merged[0];
    assert!(
        v.name
            .starts_with("HTTPRoute/default/a+VirtualService/default/b@"),
        "{}",
        v.name
    );
    let statuses: Vec<_> = v
        .rules
        .iter()
        .map(|r| r.direct_response.as_ref().map(|d| d.status))
        .collect();
    assert_eq!(
        statuses,
        [Some(201), Some(202)],
        "first route's rules first"
    );
    assert!(!v.rules[0].matches.is_empty() && v.rules[1].matches.is_empty());
}
