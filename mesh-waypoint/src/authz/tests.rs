//! Table tests for authorization decisions at the waypoint.

use mesh_core::proto::control::v1 as pb;

use super::*;

/// Policies written as the feed's `Authorization` messages (YAML in the proto3 JSON mapping),
/// applying to every request.
fn authorizer(yaml: &str) -> Authorizer {
    let wire: Vec<pb::Authorization> = serde_yaml::from_str(yaml).expect("yaml");
    let scoped = wire
        .iter()
        .map(|w| ScopedPolicy {
            policy: authz::Policy::try_from(w).expect("converts"),
            scope: None,
        })
        .collect();
    Authorizer::new(scoped)
}

fn decide(
    a: &Authorizer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    id: Option<&str>,
) -> bool {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let parts = b.body(()).expect("request").into_parts().0;
    let peer = Peer {
        addr: ([127, 0, 0, 1], 1).into(),
        identity: id.map(str::to_owned),
        authority: None,
        workload: None,
        edge_scheme: None,
        trusted_proxy_hops: 0,
        sni: None,
    };
    a.check(&parts, "reviews", &peer, &RequestAuth::default())
        .is_ok()
}

const SLEEP: Option<&str> = Some("spiffe://cluster.local/ns/default/sa/sleep");
const OTHER: Option<&str> = Some("spiffe://cluster.local/ns/prod/sa/other");

type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
    bool,
);

#[test]
fn decision_table() {
    let allow_get =
        "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{to: [{methods: [GET], paths: ['/api/*']}]}]}]";
    let allow_sleep = "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{from: [{principals: ['cluster.local/ns/default/sa/sleep']}]}]}]";
    let deny_admin =
        "[{key: d, action: POLICY_ACTION_DENY, rules: [{to: [{paths: ['/admin*']}]}]}]";
    let deny_and_allow = "[{key: d, action: POLICY_ACTION_DENY, rules: [{to: [{paths: ['/api/secret']}]}]},
                           {key: a, action: POLICY_ACTION_ALLOW, rules: [{to: [{paths: ['/api/*']}]}]}]";
    let deny_not_prod = "[{key: d, action: POLICY_ACTION_DENY, rules: [{from: [{not_principals: ['cluster.local/ns/prod/*']}]}]}]";
    let header_when = "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{when: [{key: 'request.headers[x-token]', values: ['ok-*']}]}]}]";
    let empty_allow = "[{key: a, action: POLICY_ACTION_ALLOW}]";
    let allow_all = "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{}]}]";
    let any_principal =
        "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{from: [{principals: ['*']}]}]}]";
    let not_methods =
        "[{key: a, action: POLICY_ACTION_ALLOW, rules: [{to: [{not_methods: [DELETE]}]}]}]";
    let cases: Vec<Case<'_>> = vec![
        ("[]", "GET", "/x", &[], None, true),
        (allow_get, "GET", "/api/v1", &[], None, true),
        (allow_get, "POST", "/api/v1", &[], None, false),
        (allow_get, "GET", "/other", &[], None, false),
        (allow_sleep, "GET", "/", &[], SLEEP, true),
        (allow_sleep, "GET", "/", &[], OTHER, false),
        (allow_sleep, "GET", "/", &[], None, false),
        (deny_admin, "GET", "/admin/users", &[], SLEEP, false),
        (deny_admin, "GET", "/public", &[], SLEEP, true),
        (deny_and_allow, "GET", "/api/secret", &[], None, false),
        (deny_and_allow, "GET", "/api/open", &[], None, true),
        (deny_not_prod, "GET", "/", &[], OTHER, true),
        (deny_not_prod, "GET", "/", &[], SLEEP, false),
        (deny_not_prod, "GET", "/", &[], None, false),
        (
            header_when,
            "GET",
            "/",
            &[("x-token", "ok-123")],
            None,
            true,
        ),
        (header_when, "GET", "/", &[("x-token", "bad")], None, false),
        (header_when, "GET", "/", &[], None, false),
        (empty_allow, "GET", "/", &[], SLEEP, false),
        (allow_all, "GET", "/", &[], None, true),
        (any_principal, "GET", "/", &[], SLEEP, true),
        (any_principal, "GET", "/", &[], None, false),
        (not_methods, "GET", "/", &[], None, true),
        (not_methods, "DELETE", "/", &[], None, false),
    ];
    for (yaml, method, path, headers, id, want) in cases {
        let a = authorizer(yaml);
        assert_eq!(
            decide(&a, method, path, headers, id),
            want,
            "{yaml} {method} {path} {headers:?} {id:?}"
        );
    }
}

#[test]
fn denial_names_the_policy() {
    let a = authorizer(
        "[{key: no-admin, action: POLICY_ACTION_DENY, rules: [{to: [{paths: ['/admin']}]}]}]",
    );
    let parts = http::Request::builder()
        .uri("/admin")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let peer = Peer {
        addr: ([127, 0, 0, 1], 1).into(),
        identity: None,
        authority: None,
        workload: None,
        edge_scheme: None,
        trusted_proxy_hops: 0,
        sni: None,
    };
    let anonymous = RequestAuth::default();
    assert_eq!(
        a.check(&parts, "h", &peer, &anonymous),
        Err("no-admin".to_owned())
    );
}

/// Istio's value forms, through a header condition so the shared evaluator is what is tested.
#[test]
fn pattern_table() {
    for (p, v, want) in [
        ("*", "x", true),
        ("*", "", false),
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("abc", "abd", false),
    ] {
        let yaml = format!(
            "- key: p\n  action: POLICY_ACTION_ALLOW\n  rules:\n  - when:\n    - key: request.headers[x-v]\n      values: [\"{p}\"]\n"
        );
        let allowed = decide(&authorizer(&yaml), "GET", "/", &[("x-v", v)], None);
        assert_eq!(allowed, want, "{p} {v}");
    }
}

#[test]
fn remote_ip_believes_only_trusted_hops_of_x_forwarded_for() {
    let headers = |values: &[&str]| {
        let mut map = http::HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().expect("value"));
        }
        map
    };
    let ip = |text: &str| Some(text.parse::<IpAddr>().expect("ip"));
    // "client-chosen, 203.0.113.7" arrives from a load balancer that appended the client.
    let two = headers(&["198.51.100.66, 203.0.113.7"]);
    assert_eq!(remote_ip(&two, 0), None, "no trusted proxies: the peer");
    assert_eq!(remote_ip(&two, 1), ip("203.0.113.7"));
    assert_eq!(remote_ip(&two, 2), ip("198.51.100.66"));
    assert_eq!(
        remote_ip(&two, 3),
        None,
        "fewer entries than hops: the peer"
    );
    // Entries across repeated headers count as one list.
    let split = headers(&["198.51.100.66", "203.0.113.7"]);
    assert_eq!(remote_ip(&split, 1), ip("203.0.113.7"));
    assert_eq!(remote_ip(&headers(&["not-an-ip"]), 1), None);
    assert_eq!(remote_ip(&headers(&[]), 1), None);
    assert_eq!(remote_ip(&headers(&["2001:db8::1"]), 1), ip("2001:db8::1"));
    assert_eq!(remote_ip(&two, u32::MAX), None);
}
