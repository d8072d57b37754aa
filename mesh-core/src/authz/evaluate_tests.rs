//! Table tests of the authorization decision, following Istio's documented semantics.

use std::net::IpAddr;

use http::HeaderMap;

use super::*;
use crate::authz::{Condition, OperationMatch, RequestAuth, SourceMatch};

const CLIENT: &str = "cluster.local/ns/demo/sa/client";
const INTRUDER: &str = "cluster.local/ns/outside/sa/intruder";

fn conn(principal: Option<&str>, source_ip: &str, port: u16) -> ConnectionAttributes {
    ConnectionAttributes {
        source_ip: source_ip.parse().unwrap(),
        source_principal: principal.map(str::to_string),
        destination_ip: "10.0.0.9".parse::<IpAddr>().unwrap(),
        destination_port: port,
    }
}

fn policy(action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        key: format!("demo/{action:?}").to_lowercase(),
        action,
        rules,
    }
}

fn from_principals(principals: &[&str]) -> Rule {
    Rule {
        from: vec![SourceMatch {
            principals: principals.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn to(operation: OperationMatch) -> Rule {
    Rule {
        to: vec![operation],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str]) -> Rule {
    Rule {
        when: vec![Condition {
            key: key.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
            not_values: vec![],
        }],
        ..Default::default()
    }
}

fn decide(policies: &[Policy], connection: &ConnectionAttributes) -> Decision {
    evaluate(policies, connection, None)
}

fn decide_http(
    policies: &[Policy],
    connection: &ConnectionAttributes,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> Decision {
    let request = RequestAttributes {
        method,
        path,
        host: "website.demo.svc.cluster.local:8080",
        headers,
        remote_ip: None,
        sni: None,
        auth: None,
    };
    evaluate(policies, connection, Some(&request))
}

#[test]
fn no_policy_allows() {
    assert_eq!(decide(&[], &conn(None, "10.0.0.1", 80)), Decision::Allow);
}

#[test]
fn allow_policy_makes_an_allow_list() {
    let policies = [policy(Action::Allow, vec![from_principals(&[CLIENT])])];
    let cases = [
        (Some(CLIENT), Decision::Allow),
        (Some(INTRUDER), Decision::NotAllowed),
        (None, Decision::NotAllowed),
    ];
    for (principal, want) in cases {
        assert_eq!(
            decide(&policies, &conn(principal, "10.0.0.1", 80)),
            want,
            "{principal:?}"
        );
    }
}

#[test]
fn any_matching_allow_policy_is_enough() {
    let policies = [
        policy(Action::Allow, vec![from_principals(&[INTRUDER])]),
        policy(
            Action::Allow,
            vec![from_principals(&["cluster.local/ns/demo/*"])],
        ),
    ];
    assert_eq!(
        decide(&policies, &conn(Some(CLIENT), "10.0.0.1", 80)),
        Decision::Allow
    );
}

#[test]
fn deny_wins_over_allow() {
    let policies = [
        policy(Action::Allow, vec![Rule::default()]),
        policy(Action::Deny, vec![from_principals(&[CLIENT])]),
    ];
    let denied = Decision::DeniedByPolicy {
        policy: "demo/deny".into(),
    };
    assert_eq!(
        decide(&policies, &conn(Some(CLIENT), "10.0.0.1", 80)),
        denied
    );
    assert_eq!(
        decide(&policies, &conn(Some(INTRUDER), "10.0.0.1", 80)),
        Decision::Allow
    );
}

#[test]
fn allow_without_rules_allows_nothing_and_empty_rule_matches_all() {
    let allow_nothing = [policy(Action::Allow, vec![])];
    assert_eq!(
        decide(&allow_nothing, &conn(Some(CLIENT), "10.0.0.1", 80)),
        Decision::NotAllowed
    );
    let deny_all = [policy(Action::Deny, vec![Rule::default()])];
    assert!(!decide(&deny_all, &conn(None, "10.0.0.1", 80)).is_allowed());
    let deny_nothing = [policy(Action::Deny, vec![])];
    assert_eq!(
        decide(&deny_nothing, &conn(None, "10.0.0.1", 80)),
        Decision::Allow
    );
}

#[test]
fn namespaces_come_from_the_principal() {
    let rule = Rule {
        from: vec![SourceMatch {
            namespaces: vec!["demo".into()],
            not_namespaces: vec![],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies = [policy(Action::Allow, vec![rule])];
    assert!(decide(&policies, &conn(Some(CLIENT), "10.0.0.1", 80)).is_allowed());
    assert!(!decide(&policies, &conn(Some(INTRUDER), "10.0.0.1", 80)).is_allowed());
    assert!(!decide(&policies, &conn(None, "10.0.0.1", 80)).is_allowed());
}

#[test]
fn not_forms_exclude() {
    let rule = Rule {
        from: vec![SourceMatch {
            not_principals: vec![INTRUDER.into()],
            not_ip_blocks: vec!["192.168.0.0/16".parse().unwrap()],
            ..Default::default()
        }],
        to: vec![OperationMatch {
            not_ports: vec![22],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies = [policy(Action::Allow, vec![rule])];
    let cases = [
        (Some(CLIENT), "10.0.0.1", 80, true),
        (None, "10.0.0.1", 80, true),
        (Some(INTRUDER), "10.0.0.1", 80, false),
        (Some(CLIENT), "192.168.1.1", 80, false),
        (Some(CLIENT), "10.0.0.1", 22, false),
    ];
    for (principal, ip, port, want) in cases {
        let got = decide(&policies, &conn(principal, ip, port)).is_allowed();
        assert_eq!(got, want, "{principal:?} {ip}:{port}");
    }
}

#[test]
fn ip_blocks_and_ports() {
    let rule = Rule {
        from: vec![SourceMatch {
            ip_blocks: vec!["10.211.0.0/16".parse().unwrap()],
            ..Default::default()
        }],
        to: vec![OperationMatch {
            ports: vec![8080, 9090],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies = [policy(Action::Allow, vec![rule])];
    assert!(decide(&policies, &conn(None, "10.211.1.5", 8080)).is_allowed());
    assert!(!decide(&policies, &conn(None, "10.212.1.5", 8080)).is_allowed());
    assert!(!decide(&policies, &conn(None, "10.211.1.5", 8081)).is_allowed());
}

#[test]
fn l7_allow_rules_never_match_at_a_node_but_do_at_a_waypoint() {
    let rule = to(OperationMatch {
        methods: vec!["GET".into()],
        ..Default::default()
    });
    let policies = [policy(Action::Allow, vec![rule])];
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    assert_eq!(decide(&policies, &client), Decision::NotAllowed);
    let headers = HeaderMap::new();
    assert!(decide_http(&policies, &client, "GET", "/", &headers).is_allowed());
    assert!(!decide_http(&policies, &client, "POST", "/", &headers).is_allowed());
}

#[test]
fn l7_deny_rules_deny_more_at_a_node() {
    let rule = to(OperationMatch {
        paths: vec!["/admin/*".into()],
        ports: vec![8080],
        ..Default::default()
    });
    let policies = [policy(Action::Deny, vec![rule])];
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    // At the node the path is unknowable: the whole port is denied.
    assert!(!decide(&policies, &client).is_allowed());
    // Other ports are not covered by the rule even at the node.
    assert!(decide(&policies, &conn(Some(CLIENT), "10.0.0.1", 9090)).is_allowed());
    let headers = HeaderMap::new();
    assert!(!decide_http(&policies, &client, "GET", "/admin/users", &headers).is_allowed());
    assert!(decide_http(&policies, &client, "GET", "/public", &headers).is_allowed());
}

#[test]
fn hosts_match_with_or_without_port() {
    let rule = to(OperationMatch {
        hosts: vec!["website.demo.svc.cluster.local".into()],
        ..Default::default()
    });
    let policies = [policy(Action::Allow, vec![rule])];
    let headers = HeaderMap::new();
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    assert!(decide_http(&policies, &client, "GET", "/", &headers).is_allowed());
}

#[test]
fn when_conditions_on_connection_attributes() {
    let policies = [policy(
        Action::Allow,
        vec![
            when("source.ip", &["10.0.0.0/24"]),
            when("destination.port", &["443"]),
        ],
    )];
    assert!(decide(&policies, &conn(None, "10.0.0.7", 80)).is_allowed());
    assert!(decide(&policies, &conn(None, "10.9.0.7", 443)).is_allowed());
    assert!(!decide(&policies, &conn(None, "10.9.0.7", 80)).is_allowed());
}

#[test]
fn header_conditions_need_a_request() {
    let policies = [policy(
        Action::Allow,
        vec![when("request.headers[end-user]", &["jason"])],
    )];
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    assert!(!decide(&policies, &client).is_allowed());
    let mut headers = HeaderMap::new();
    headers.insert("end-user", "jason".parse().unwrap());
    assert!(decide_http(&policies, &client, "GET", "/", &headers).is_allowed());
    headers.insert("end-user", "mallory".parse().unwrap());
    assert!(!decide_http(&policies, &client, "GET", "/", &headers).is_allowed());
}

#[test]
fn unsupported_condition_keys_fail_closed() {
    let key = "request.auth.claims[groups]";
    let allow = [policy(Action::Allow, vec![when(key, &["admins"])])];
    let deny = [policy(Action::Deny, vec![when(key, &["guests"])])];
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    let headers = HeaderMap::new();
    assert!(!decide_http(&allow, &client, "GET", "/", &headers).is_allowed());
    assert!(!decide_http(&deny, &client, "GET", "/", &headers).is_allowed());
}

#[test]
fn audit_never_changes_the_decision() {
    let policies = [policy(Action::Audit, vec![Rule::default()])];
    assert_eq!(
        decide(&policies, &conn(None, "10.0.0.1", 80)),
        Decision::Allow
    );
}

fn from(source: SourceMatch) -> Rule {
    Rule {
        from: vec![source],
        ..Default::default()
    }
}

fn request_with<'a>(
    headers: &'a HeaderMap,
    remote_ip: Option<&str>,
    auth: Option<&'a RequestAuth>,
) -> RequestAttributes<'a> {
    RequestAttributes {
        method: "GET",
        path: "/",
        host: "website.demo",
        headers,
        remote_ip: remote_ip.map(|ip| ip.parse().unwrap()),
        sni: Some("shop.example"),
        auth,
    }
}

#[test]
fn request_principals_fail_closed_where_no_request_authentication_ran() {
    let any_token = SourceMatch {
        request_principals: vec!["*".into()],
        ..Default::default()
    };
    let no_token = SourceMatch {
        not_request_principals: vec!["*".into()],
        ..Default::default()
    };
    let headers = HeaderMap::new();
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    let unauthenticated = request_with(&headers, None, None);
    // Nothing can show a token is there: an ALLOW on it allows nothing...
    let allow = [policy(Action::Allow, vec![from(any_token.clone())])];
    assert!(!evaluate(&allow, &client, Some(&unauthenticated)).is_allowed());
    assert!(!evaluate(&allow, &client, None).is_allowed());
    // ... and a DENY on it denies everything it could match, either way round.
    for source in [any_token.clone(), no_token] {
        let deny = [policy(Action::Deny, vec![from(source)])];
        assert!(!evaluate(&deny, &client, Some(&unauthenticated)).is_allowed());
    }
    // Where authentication ran, the principal decides.
    let jwt = RequestAuth {
        principal: Some("https://issuer.example/alice".into()),
        ..Default::default()
    };
    assert!(evaluate(
        &allow,
        &client,
        Some(&request_with(&headers, None, Some(&jwt)))
    )
    .is_allowed());
    let anonymous = RequestAuth::default();
    assert!(!evaluate(
        &allow,
        &client,
        Some(&request_with(&headers, None, Some(&anonymous)))
    )
    .is_allowed());
}

#[test]
fn remote_ip_blocks_use_the_original_client_when_known() {
    let office = SourceMatch {
        remote_ip_blocks: vec!["203.0.113.0/24".parse().unwrap()],
        ..Default::default()
    };
    let allow = [policy(Action::Allow, vec![from(office)])];
    let headers = HeaderMap::new();
    // Behind an ingress load balancer: the peer is the balancer, the client is in XFF.
    let balancer = conn(None, "10.0.0.50", 443);
    let via = |ip| request_with(&headers, ip, None);
    assert!(evaluate(&allow, &balancer, Some(&via(Some("203.0.113.7")))).is_allowed());
    assert!(!evaluate(&allow, &balancer, Some(&via(Some("198.51.100.7")))).is_allowed());
    // No original client known: the peer address is the client.
    assert!(!evaluate(&allow, &balancer, Some(&via(None))).is_allowed());
    let direct = conn(None, "203.0.113.9", 443);
    assert!(evaluate(&allow, &direct, None).is_allowed());
    // `remote.ip` conditions read the same address.
    let condition = [policy(
        Action::Deny,
        vec![when("remote.ip", &["198.51.100.0/24"])],
    )];
    assert!(!evaluate(&condition, &balancer, Some(&via(Some("198.51.100.7")))).is_allowed());
    assert!(evaluate(&condition, &balancer, Some(&via(Some("203.0.113.7")))).is_allowed());
}

#[test]
fn service_accounts_match_the_peer_identity_in_any_trust_domain() {
    let source = SourceMatch {
        service_accounts: vec!["*/ns/demo/sa/client".into()],
        ..Default::default()
    };
    let allow = [policy(Action::Allow, vec![from(source)])];
    assert!(decide(&allow, &conn(Some(CLIENT), "10.0.0.1", 80)).is_allowed());
    let other_td = "other.domain/ns/demo/sa/client";
    assert!(decide(&allow, &conn(Some(other_td), "10.0.0.1", 80)).is_allowed());
    assert!(!decide(&allow, &conn(Some(INTRUDER), "10.0.0.1", 80)).is_allowed());
    let lookalike = "cluster.local/ns/xdemo/sa/client";
    assert!(!decide(&allow, &conn(Some(lookalike), "10.0.0.1", 80)).is_allowed());
    assert!(!decide(&allow, &conn(None, "10.0.0.1", 80)).is_allowed());
}

#[test]
fn request_auth_conditions_read_the_verified_token() {
    let auth = RequestAuth {
        principal: Some("https://issuer.example/alice".into()),
        audiences: vec!["shop".into(), "admin-ui".into()],
        presenter: Some("web-client".into()),
        claims: [
            (
                "groups".to_owned(),
                vec!["dev".to_owned(), "ops".to_owned()],
            ),
            ("org][team".to_owned(), vec!["payments".to_owned()]),
        ]
        .into(),
    };
    let headers = HeaderMap::new();
    let client = conn(Some(CLIENT), "10.0.0.1", 8080);
    let allowed = |key: &str, values: &[&str], auth: Option<&RequestAuth>| {
        let allow = [policy(Action::Allow, vec![when(key, values)])];
        let request = request_with(&headers, None, auth);
        evaluate(&allow, &client, Some(&request)).is_allowed()
    };
    let cases = [
        (
            "request.auth.principal",
            &["https://issuer.example/*"][..],
            true,
        ),
        ("request.auth.principal", &["https://other/*"][..], false),
        ("request.auth.audiences", &["admin-ui"][..], true),
        ("request.auth.audiences", &["billing"][..], false),
        ("request.auth.presenter", &["web-client"][..], true),
        ("request.auth.claims[groups]", &["ops"][..], true),
        ("request.auth.claims[groups]", &["root"][..], false),
        ("request.auth.claims[org][team]", &["payments"][..], true),
        ("request.auth.claims[missing]", &["x"][..], false),
    ];
    for (key, values, want) in cases {
        assert_eq!(allowed(key, values, Some(&auth)), want, "{key} {values:?}");
        // Where no request authentication ran, nothing is allowed on such a condition.
        assert!(!allowed(key, values, None), "{key} without authentication");
    }
    // A token-less request has no claims: values fail, notValues pass.
    let anonymous = RequestAuth::default();
    assert!(!allowed(
        "request.auth.claims[groups]",
        &["ops"],
        Some(&anonymous)
    ));
    let deny_unless_ops = [policy(
        Action::Deny,
        vec![Rule {
            when: vec![Condition {
                key: "request.auth.claims[groups]".into(),
                values: vec![],
                not_values: vec!["ops".into()],
            }],
            ..Default::default()
        }],
    )];
    let request = request_with(&headers, None, Some(&auth));
    assert!(evaluate(&deny_unless_ops, &client, Some(&request)).is_allowed());
    let request = request_with(&headers, None, Some(&anonymous));
    assert!(!evaluate(&deny_unless_ops, &client, Some(&request)).is_allowed());
}

#[test]
fn connection_sni_is_the_terminated_tls_server_name() {
    let headers = HeaderMap::new();
    let client = conn(None, "10.0.0.1", 443);
    let allow = [policy(
        Action::Allow,
        vec![when("connection.sni", &["*.example"])],
    )];
    let tls = request_with(&headers, None, None);
    assert!(
        evaluate(&allow, &client, Some(&tls)).is_allowed(),
        "shop.example"
    );
    let plain = RequestAttributes { sni: None, ..tls };
    assert!(
        !evaluate(&allow, &client, Some(&plain)).is_allowed(),
        "no TLS, no name"
    );
    assert!(
        !evaluate(&allow, &client, None).is_allowed(),
        "unknowable at a node"
    );
}
