//! Translation tests: Istio resources in, domain types out, then through the route table.

use super::*;
use crate::{
    config::from_yaml,
    route::RouteTable,
    translate::{from_istio, Endpoints},
};

const VS: &str = r#"
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
    - name: jason
      match:
        - headers: {end-user: {exact: jason}}
          uri: {prefix: /api}
      rewrite: {uri: /v2/api}
      route: [{destination: {host: reviews, subset: v2}}]
      timeout: 3s
      retries: {attempts: 2, perTryTimeout: 1s, retryOn: "5xx,reset"}
    - name: canary
      route:
        - {destination: {host: reviews, subset: v1}, weight: 90}
        - {destination: {host: reviews, subset: v2}, weight: 10}
      fault: {abort: {percentage: {value: 0.5}, httpStatus: 503}}
      mirror: {host: shadow}
      mirrorPercentage: {value: 5}
      headers: {request: {set: {x-canary: "1"}}, response: {remove: [server]}}
"#;

const DR: &str = r#"
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: session}}}
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 5, http2MaxRequests: 20, h2UpgradePolicy: UPGRADE}}
    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 15s}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
"#;

#[test]
fn virtual_service_and_destination_rule_translate() {
    let vs: VirtualService = from_yaml(VS).expect("vs yaml");
    let dr: DestinationRule = from_yaml(DR).expect("dr yaml");
    let endpoints: Endpoints = [(
        "reviews".to_owned(),
        vec![from_yaml("{address: '10.0.0.1:9080', labels: {version: v1}}").expect("ep")],
    )]
    .into();
    let config = from_istio(&[vs], &[dr], &endpoints).expect("translates");
    let rules = &config.routes[0].rules;
    assert_eq!(
        rules[0].matches[0].path,
        Some(StringMatch::Prefix("/api".into()))
    );
    assert_eq!(
        rules[0].matches[0].headers[0].value,
        ValueMatch::Exact("jason".into())
    );
    assert_eq!(
        rules[0].rewrite.as_ref().and_then(|r| r.path.clone()),
        Some(PathRewrite::Prefix("/v2/api".into()))
    );
    assert_eq!(
        rules[0].route[0].weight, 100,
        "a lone destination takes everything"
    );
    assert_eq!(rules[0].retries.as_ref().map(|r| r.attempts), Some(2));
    let weights: Vec<_> = rules[1].route.iter().map(|w| w.weight).collect();
    assert_eq!(weights, vec![90, 10]);
    assert_eq!(
        rules[1]
            .fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.percentage),
        Some(0.5)
    );
    assert_eq!(
        rules[1].mirror.as_ref().and_then(|m| m.percentage),
        Some(5.0)
    );
    assert_eq!(
        rules[1]
            .request_headers
            .set
            .get("x-canary")
            .map(String::as_str),
        Some("1")
    );
    let names: Vec<_> = config
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["reviews", "shadow"],
        "mirror target gets a default destination"
    );
    let reviews = &config.destinations[0];
    assert_eq!(reviews.endpoints.len(), 1);
    assert_eq!(
        reviews.traffic_policy.load_balancer,
        LoadBalancerConfig::ConsistentHashCookie("session".into())
    );
    let pool = &reviews.traffic_policy.connection_pool;
    assert_eq!(
        (
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_requests
        ),
        (10, 5, 20)
    );
    assert_eq!(
        reviews
            .traffic_policy
            .outlier_detection
            .as_ref()
            .map(|o| o.consecutive_5xx),
        Some(3)
    );
    assert_eq!(
        reviews.traffic_policy.upstream_protocol,
        UpstreamProtocol::Http2
    );
    // The result is a valid route table.
    RouteTable::new(&config.routes, &config.destinations).expect("compiles");
}

#[test]
fn unsupported_fields_are_rejected() {
    let cases = [
        ("metadata: {name: a}\nspec: {hosts: [x], http: [{match: [{authority: {exact: y}}], route: [{destination: {host: x}}]}]}", "authority"),
        ("metadata: {name: a}\nspec: {hosts: [x], http: [{rewrite: {uriRegexRewrite: {match: a, rewrite: b}}, route: [{destination: {host: x}}]}]}", "uriRegexRewrite"),
        ("metadata: {name: a}\nspec: {hosts: [x], http: [{match: [{method: {prefix: G}}], route: [{destination: {host: x}}]}]}", "method"),
    ];
    for (yaml, field) in cases {
        let vs: VirtualService = from_yaml(yaml).expect("yaml");
        let err = virtual_service(&vs).expect_err(yaml);
        assert!(err.to_string().contains(field), "{err}");
    }
    let dr: DestinationRule =
        from_yaml("metadata: {name: d}\nspec: {host: x, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}").expect("yaml");
    assert!(destination_rule(&dr, Vec::new()).is_err());
}
