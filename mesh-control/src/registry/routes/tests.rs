//! Table tests: route YAML in, what the waypoint receives (`pb::WaypointConfig`) out.

use mesh_core::proto::control::v1 as pb;
use pb::{path_rewrite::Kind as Path, string_match::Kind as Match};

use crate::feed::waypoint::config_for;
use crate::registry::tests::snapshot_of;

const WEB: &str = "web.app.svc.cluster.local";

/// The waypoint `app/wp` config for `yaml` (on top of the base registry), asserting no
/// diagnostics.
fn waypoint_config(yaml: &str) -> pb::WaypointConfig {
    let snap = snapshot_of(yaml);
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    config_for(&snap, "app", "wp")
}

fn vs_rule(http: &str) -> pb::RouteRule {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: web, namespace: app}}\nspec:\n  hosts: [web]\n  http:\n  - {http}\n"
    );
    let mut config = waypoint_config(&yaml);
    assert_eq!(config.routes.len(), 1, "{yaml}");
    config.routes.remove(0).rules.remove(0)
}

fn hr_rule(rule: &str) -> pb::RouteRule {
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: web, namespace: app}}\nspec:\n  \
         parentRefs: [{{group: \"\", kind: Service, name: web}}]\n  rules:\n  - {rule}\n"
    );
    let mut config = waypoint_config(&yaml);
    assert_eq!(config.routes.len(), 1, "{yaml}");
    config.routes.remove(0).rules.remove(0)
}

fn exact(v: &str) -> Option<pb::StringMatch> {
    Some(pb::StringMatch {
        kind: Some(Match::Exact(v.into())),
    })
}

fn backend(weight: u32, subset: &str) -> pb::Backend {
    pb::Backend {
        host: WEB.into(),
        port: 0,
        weight,
        subset: subset.into(),
    }
}

fn header(name: &str, value: Option<pb::StringMatch>, invert: bool) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: name.into(),
        value,
        invert,
    }
}

fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> Option<pb::HeaderOps> {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Some(pb::HeaderOps {
        set: map(set),
        add: map(add),
        remove: remove.iter().map(|r| r.to_string()).collect(),
    })
}

fn path(kind: Path) -> Option<pb::PathRewrite> {
    Some(pb::PathRewrite { kind: Some(kind) })
}

#[test]
fn virtual_service_rules_on_the_wire() {
    let table: Vec<(&str, pb::RouteRule)> = vec![
        (
            "{name: m, match: [{uri: {exact: /a}, method: {exact: GET}, port: 80, \
             headers: {X-User: {exact: jason}, x-any: {}}, withoutHeaders: {x-debug: {}}, \
             queryParams: {v: {regex: '^[0-9]$'}}}], route: [{destination: {host: web}}]}",
            pb::RouteRule {
                name: "m".into(),
                matches: vec![pb::RouteMatch {
                    path: exact("/a"),
                    method: "GET".into(),
                    headers: vec![
                        // In the YAML map's key order: uppercase sorts first.
                        header("x-user", exact("jason"), false),
                        header("x-any", None, false),
                        header("x-debug", None, true),
                    ],
                    port: 80,
                    query_params: vec![header(
                        "v",
                        Some(pb::StringMatch {
                            kind: Some(Match::Regex("^[0-9]$".into())),
                        }),
                        false,
                    )],
                }],
                backends: vec![backend(100, "")],
                ..Default::default()
            },
        ),
        (
            "{route: [{destination: {host: web, subset: v1}, weight: 90}, \
             {destination: {host: web, subset: v2}, weight: 10}], timeout: 2s, \
             retries: {attempts: 3, perTryTimeout: 100ms, retryOn: '5xx, reset'}}",
            pb::RouteRule {
                backends: vec![backend(90, "v1"), backend(10, "v2")],
                timeout_ms: 2000,
                retry: Some(pb::Retry {
                    attempts: 3,
                    per_try_timeout_ms: 100,
                    retry_on: vec!["5xx".into(), "reset".into()],
                }),
                ..Default::default()
            },
        ),
        (
            "{redirect: {uri: /new, authority: b.example, port: 8443, scheme: https, redirectCode: 307}}",
            pb::RouteRule {
                redirect: Some(pb::Redirect {
                    path: path(Path::Full("/new".into())),
                    authority: "b.example".into(),
                    scheme: "https".into(),
                    port: 8443,
                    code: 307,
                }),
                ..Default::default()
            },
        ),
        (
            "{directResponse: {status: 418, body: {string: teapot}}}",
            pb::RouteRule {
                direct_response: Some(pb::DirectResponse {
                    status: 418,
                    body: "teapot".into(),
                }),
                ..Default::default()
            },
        ),
        (
            "{rewrite: {uri: /v2/, authority: web.internal}, route: [{destination: {host: web}}], \
             headers: {request: {set: {X-A: '1'}, add: {x-b: '2'}, remove: [X-C]}, \
             response: {remove: [server]}}}",
            pb::RouteRule {
                backends: vec![backend(100, "")],
                rewrite: Some(pb::Rewrite {
                    path: path(Path::Prefix("/v2/".into())),
                    authority: "web.internal".into(),
                }),
                request_headers: ops(&[("x-a", "1")], &[("x-b", "2")], &["x-c"]),
                response_headers: ops(&[], &[], &["server"]),
                ..Default::default()
            },
        ),
        (
            "{fault: {delay: {fixedDelay: 1.5s, percentage: {value: 12.5}}, abort: {httpStatus: 503}}, \
             mirror: {host: web, subset: v2, port: {number: 8080}}, mirrorPercentage: {value: 0.5}}",
            pb::RouteRule {
                fault: Some(pb::Fault {
                    delay: Some(pb::DelayFault {
                        percentage: 12.5,
                        fixed_delay_ms: 1500,
                    }),
                    abort: Some(pb::AbortFault {
                        percentage: 100.0,
                        http_status: 503,
                    }),
                }),
                mirror: Some(pb::Mirror {
                    host: WEB.into(),
                    port: 8080,
                    subset: "v2".into(),
                    percentage: Some(0.5),
                }),
                ..Default::default()
            },
        ),
    ];
    for (http, expected) in table {
        assert_eq!(vs_rule(http), expected, "{http}");
    }
}

#[test]
fn http_route_rules_on_the_wire() {
    let table: Vec<(&str, pb::RouteRule)> = vec![
        (
            "{name: r, matches: [{path: {type: Exact, value: /a}, method: GET, \
             headers: [{name: X-User, value: jason}], \
             queryParams: [{name: V, type: RegularExpression, value: '^2$'}]}], \
             backendRefs: [{name: web, port: 80, weight: 3}, {name: web, port: 81}]}",
            pb::RouteRule {
                name: "r".into(),
                matches: vec![pb::RouteMatch {
                    path: exact("/a"),
                    method: "GET".into(),
                    headers: vec![header("x-user", exact("jason"), false)],
                    port: 0,
                    query_params: vec![header(
                        "V",
                        Some(pb::StringMatch {
                            kind: Some(Match::Regex("^2$".into())),
                        }),
                        false,
                    )],
                }],
                backends: vec![
                    pb::Backend {
                        port: 80,
                        ..backend(3, "")
                    },
                    pb::Backend {
                        port: 81,
                        ..backend(1, "")
                    },
                ],
                ..Default::default()
            },
        ),
        (
            "{matches: [{path: {value: /api}}], backendRefs: [{name: web}], filters: [\
             {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: '1'}], \
             add: [{name: x-b, value: '2'}], remove: [x-c]}}, \
             {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}, \
             {type: URLRewrite, urlRewrite: {hostname: web.internal, \
             path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}, \
             {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}, \
             fraction: {numerator: 1, denominator: 8}}}]}",
            pb::RouteRule {
                matches: vec![pb::RouteMatch {
                    path: Some(pb::StringMatch {
                        kind: Some(Match::Prefix("/api".into())),
                    }),
                    ..Default::default()
                }],
                backends: vec![backend(1, "")],
                rewrite: Some(pb::Rewrite {
                    path: path(Path::Prefix("/v2".into())),
                    authority: "web.internal".into(),
                }),
                request_headers: ops(&[("x-a", "1")], &[("x-b", "2")], &["x-c"]),
                response_headers: ops(&[], &[], &["server"]),
                mirror: Some(pb::Mirror {
                    host: WEB.into(),
                    port: 8080,
                    subset: String::new(),
                    percentage: Some(12.5),
                }),
                ..Default::default()
            },
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: b.example, \
             port: 443, statusCode: 302, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}",
            pb::RouteRule {
                redirect: Some(pb::Redirect {
                    path: path(Path::Full("/x".into())),
                    authority: "b.example".into(),
                    scheme: "https".into(),
                    port: 443,
                    code: 302,
                }),
                ..Default::default()
            },
        ),
    ];
    for (rule, expected) in table {
        assert_eq!(hr_rule(rule), expected, "{rule}");
    }
}

#[test]
fn destination_rule_on_the_wire() {
    let config = waypoint_config(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: X-Session}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s}
  subsets: [{name: v1, labels: {version: v1}}]
"#,
    );
    let expected = pb::TrafficPolicy {
        key: "app/web".into(),
        host: WEB.into(),
        load_balancer: String::new(),
        outlier: Some(pb::OutlierDetection {
            consecutive_5xx: 3,
            interval_ms: 5000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        }),
        subsets: [(
            "v1".to_string(),
            pb::Labels {
                labels: [("version".to_string(), "v1".to_string())].into(),
            },
        )]
        .into(),
        connection_pool: Some(pb::ConnectionPool {
            max_connections: 100,
            max_pending_requests: 10,
            max_requests: 1000,
            connect_timeout_ms: 250,
        }),
        consistent_hash: Some(pb::ConsistentHash {
            key: Some(pb::consistent_hash::Key::Header("x-session".into())),
        }),
    };
    assert_eq!(config.traffic_policies, [expected]);
    let cookie = waypoint_config(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {name: web, namespace: app}\n\
         spec: {host: web, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: sid}}}}}\n",
    );
    assert_eq!(
        cookie.traffic_policies[0].consistent_hash,
        Some(pb::ConsistentHash {
            key: Some(pb::consistent_hash::Key::Cookie("sid".into())),
        })
    );
}

/// Each invalid resource is dropped alone, with a diagnostic naming its field; a valid
/// resource next to it still reaches the waypoint.
#[test]
fn invalid_rules_name_the_field_and_spare_the_rest() {
    let vs = |http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: bad, namespace: app}}\nspec: {{hosts: [web], http: [{http}]}}\n"
        )
    };
    let hr = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: bad, namespace: app}}\n\
             spec: {{parentRefs: [{{group: '', kind: Service, name: web}}], rules: [{rule}]}}\n"
        )
    };
    let dr = |policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: bad, namespace: app}}\nspec: {{host: web, trafficPolicy: {policy}}}\n"
        )
    };
    let table = [
        (vs("{redirect: {uri: /x}, route: [{destination: {host: web}}]}"), "spec.http[0]"),
        (vs("{directResponse: {status: 99}}"), "spec.http[0].directResponse.status"),
        (vs("{redirect: {redirectCode: 200}}"), "spec.http[0].redirect.redirectCode"),
        (vs("{redirect: {uri: /x}, rewrite: {uri: /y}}"), "spec.http[0].rewrite"),
        (vs("{fault: {abort: {httpStatus: 503, percentage: {value: 101}}}}"), "spec.http[0].fault.abort.percentage.value"),
        (vs("{fault: {delay: {percentage: {value: 5}}}}"), "spec.http[0].fault.delay.fixedDelay"),
        (vs("{fault: {abort: {httpStatus: 700}}}"), "spec.http[0].fault.abort.httpStatus"),
        (vs("{headers: {request: {set: {'bad header': x}}}}"), "spec.http[0].headers.request.set.bad header"),
        (vs("{mirrorPercentage: {value: 5}}"), "spec.http[0].mirrorPercentage"),
        (vs("{match: [{queryParams: {v: {prefix: a}}}]}"), "spec.http[0].match[0].queryParams.v"),
        (vs("{match: [{withoutHeaders: {x: {regex: '('}}}]}"), "spec.http[0].match[0].withoutHeaders.x"),
        (hr("{filters: [{type: URLRewrite, urlRewrite: {}}, {type: URLRewrite, urlRewrite: {}}]}"), "spec.rules[0].filters[1]"),
        (hr("{filters: [{type: RequestRedirect}]}"), "spec.rules[0].filters[0].requestRedirect"),
        (hr("{filters: [{type: ExtensionRef, extensionRef: {name: x}}]}"), "spec.rules[0].filters[0].type"),
        (hr("{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}"), "spec.rules[0].filters"),
        (hr("{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}"), "spec.rules[0].matches[0].path"),
        (hr("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web}, percent: 150}}]}"), "spec.rules[0].filters[0].requestMirror"),
        (hr("{matches: [{queryParams: [{name: v, type: Prefix, value: a}]}]}"), "spec.rules[0].matches[0].queryParams[0].type"),
        (dr("{loadBalancer: {simple: RANDOM, consistentHash: {httpHeaderName: x}}}"), "spec.trafficPolicy.loadBalancer.simple"),
        (dr("{loadBalancer: {consistentHash: {useSourceIp: true}}}"), "spec.trafficPolicy.loadBalancer.consistentHash"),
        (dr("{connectionPool: {tcp: {maxConnections: -1}}}"), "spec.trafficPolicy.connectionPool.tcp.maxConnections"),
        (dr("{connectionPool: {tcp: {connectTimeout: soon}}}"), "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
    ];
    let good = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                metadata: {name: good, namespace: app}\n\
                spec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}\n";
    for (bad, field) in table {
        let snap = snapshot_of(&format!("{bad}---\n{good}"));
        let errors: Vec<_> = snap
            .diagnostics
            .iter()
            .filter(|d| d.message.ends_with("resource ignored"))
            .collect();
        assert_eq!(errors.len(), 1, "{bad}: {:?}", snap.diagnostics);
        assert_eq!(errors[0].field, field, "{bad}: {}", errors[0]);
        assert!(errors[0].object.contains("app/bad"), "{}", errors[0]);
        let config = config_for(&snap, "app", "wp");
        let keys: Vec<_> = config.routes.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["VirtualService/app/good"], "{bad}");
        assert!(config.traffic_policies.is_empty(), "{bad}");
    }
}

/// The sample the demo and the lab e2e use converts completely, fault rule included.
#[test]
fn website_example_routing_converts() {
    let mut parsed = crate::registry::Parsed::default();
    for (name, text) in [
        (
            "00-app.yaml",
            include_str!("../../../../deploy/examples/website/00-app.yaml"),
        ),
        (
            "10-routing.yaml",
            include_str!("../../../../deploy/examples/website/10-routing.yaml"),
        ),
        (
            "20-policy.yaml",
            include_str!("../../../../deploy/examples/website/20-policy.yaml"),
        ),
    ] {
        crate::registry::parse_yaml(name, text, &mut parsed);
    }
    let mut registry = crate::registry::Registry::new(Default::default());
    registry.replace_all(parsed);
    let snap = registry.snapshot();
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    let route = crate::feed::convert::route(&snap.routes["VirtualService/demo/website"]);
    let fault = route.rules[0]
        .fault
        .as_ref()
        .expect("the fault-demo rule has a fault");
    assert_eq!(
        fault.abort,
        Some(pb::AbortFault {
            percentage: 100.0,
            http_status: 503,
        })
    );
    assert_eq!(route.rules[0].name, "fault-demo");
    let weights: Vec<_> = route.rules[2].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
}

#[test]
fn waypoints_get_the_mesh_wide_path_normalization() {
    use mesh_core::authz::PathNormalization;
    let config = waypoint_config("");
    assert_eq!(
        config.path_normalization,
        pb::PathNormalization::MergeSlashes as i32
    );
    let mut snap = snapshot_of("");
    snap.path_normalization = PathNormalization::Base;
    assert_eq!(
        config_for(&snap, "app", "wp").path_normalization,
        pb::PathNormalization::Base as i32
    );
}
