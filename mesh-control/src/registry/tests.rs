//! Table tests: YAML manifests in, what nodes and waypoints receive out.

use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::model::{MtlsMode, PolicyAction, PolicyScope, StringMatch};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {weft.dev/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.99, ports: [{name: mesh, port: 15008}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: web, image: web, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: app, labels: {app: db, weft.dev/dataplane-mode: none}}
spec: {nodeName: node-b, containers: [{name: db, image: db}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: old-1, namespace: legacy, labels: {app: old}}
spec: {nodeName: node-b, containers: [{name: old, image: old}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: app}
spec: {containers: [{name: p, image: p}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

pub(super) fn snapshot_of(extra: &str) -> crate::model::Snapshot {
    let mut parsed = Parsed::default();
    parse_yaml("base.yaml", BASE, &mut parsed);
    parse_yaml("extra.yaml", extra, &mut parsed);
    let mut registry = Registry::new(RegistryConfig::default());
    registry.replace_all(parsed);
    registry.snapshot()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test ip")
}

#[test]
fn workloads_carry_identity_node_enrolment_and_waypoint() {
    let snap = snapshot_of("");
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    let uids: Vec<&str> = snap.workloads.keys().map(String::as_str).collect();
    assert_eq!(
        uids,
        ["app/db-1", "app/web-1", "legacy/old-1"],
        "an unscheduled pod without address is nobody's yet"
    );
    let web = &snap.workloads["app/web-1"];
    assert_eq!(web.ips, [ip("10.0.0.1")]);
    assert_eq!(web.node, "node-a");
    assert_eq!(web.identity, "spiffe://cluster.local/ns/app/sa/web");
    assert!(web.enrolled);
    let waypoint = web.waypoint.as_ref().expect("namespace waypoint");
    assert_eq!(waypoint.name.name, "wp");
    assert_eq!(waypoint.address, Some(ip("10.96.0.99")));
    let db = &snap.workloads["app/db-1"];
    assert!(!db.enrolled, "pod label none overrides the namespace");
    assert_eq!(db.identity, "spiffe://cluster.local/ns/app/sa/default");
    assert!(!snap.workloads["legacy/old-1"].enrolled);
}

#[test]
fn scheduled_pod_without_address_reaches_its_node_but_no_service() {
    // The kubelet reports the address only after the CNI chain ran; the node must know the pod
    // before that to capture it from its first connection.
    let snap = snapshot_of(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, serviceAccountName: web, containers: [{name: web, image: web}]}
status: {phase: Pending}
"#,
    );
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    let starting = &snap.workloads["app/web-2"];
    assert!(starting.ips.is_empty());
    assert_eq!(starting.node, "node-a");
    assert!(starting.enrolled);
    assert_eq!(starting.identity, "spiffe://cluster.local/ns/app/sa/web");
    let svc = &snap.services["app/web.app.svc.cluster.local"];
    let endpoints: Vec<&str> = svc
        .endpoints
        .iter()
        .map(|e| e.workload_uid.as_str())
        .collect();
    assert_eq!(
        endpoints,
        ["app/web-1"],
        "an address-less pod is no endpoint"
    );
    assert!(!snap.workloads.contains_key("app/pending"), "unscheduled");
}

#[test]
fn same_node_plaintext_unless_the_mesh_or_the_namespace_says_always_encrypt() {
    let extra = r#"
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {weft.dev/dataplane-mode: ambient, weft.dev/same-node-encryption: always}}
---
apiVersion: v1
kind: Pod
metadata: {name: secret-1, namespace: vault}
spec: {nodeName: node-a, containers: [{name: s, image: s}]}
status: {podIP: 10.0.2.1}
"#;
    let snap = snapshot_of(extra);
    assert!(snap.workloads["app/web-1"].same_node_plaintext);
    assert!(
        !snap.workloads["vault/secret-1"].same_node_plaintext,
        "namespace says always"
    );
    let mut parsed = Parsed::default();
    parse_yaml("base.yaml", BASE, &mut parsed);
    let mut registry = Registry::new(RegistryConfig {
        always_encrypt_same_node: true,
        ..RegistryConfig::default()
    });
    registry.replace_all(parsed);
    let snap = registry.snapshot();
    assert!(
        !snap.workloads["app/web-1"].same_node_plaintext,
        "mesh says always"
    );
}

#[test]
fn service_gets_vip_ports_and_selector_endpoints_with_named_target_port() {
    let snap = snapshot_of("");
    let svc = &snap.services["app/web.app.svc.cluster.local"];
    assert_eq!(svc.vips, [ip("10.96.0.10")]);
    assert_eq!(svc.ports[0].port, 80);
    assert_eq!(svc.ports[0].protocol, "http");
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(svc.endpoints[0].workload_uid, "app/web-1");
    assert_eq!(svc.endpoints[0].ports.get(&80), Some(&8080));
}

#[test]
fn internal_traffic_policy_local_makes_a_service_node_local() {
    let snap = snapshot_of(
        r#"
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: app}
spec:
  clusterIP: 10.96.0.11
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{name: http, port: 80}]
"#,
    );
    assert!(snap.services["app/agent.app.svc.cluster.local"].node_local);
    assert!(
        !snap.services["app/web.app.svc.cluster.local"].node_local,
        "Cluster (the default) keeps every endpoint"
    );
    let wire = crate::feed::convert::service(&snap.services["app/agent.app.svc.cluster.local"]);
    assert!(wire.node_local, "carried on the wire");
}

#[test]
fn endpoint_slices_take_precedence_over_the_selector() {
    let snap = snapshot_of(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: app, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.0.0.2]
  targetRef: {kind: Pod, name: db-1, namespace: app}
"#,
    );
    let svc = &snap.services["app/web.app.svc.cluster.local"];
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(svc.endpoints[0].workload_uid, "app/db-1");
    assert_eq!(svc.endpoints[0].ports.get(&80), Some(&9090));
}

#[test]
fn authorization_policy_scopes() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-allow, namespace: app}
spec: {rules: [{from: [{source: {namespaces: [app]}}], to: [{operation: {ports: ["8080"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: app}
spec: {selector: {matchLabels: {app: web}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-waypoint, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET], paths: [/api/*]}}]}]
"#,
    );
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    let p = &snap.policies;
    assert_eq!(p["istio-system/mesh-deny"].scope, PolicyScope::Global);
    assert_eq!(p["istio-system/mesh-deny"].action, PolicyAction::Deny);
    assert_eq!(p["app/ns-allow"].scope, PolicyScope::Namespace);
    assert_eq!(p["app/ns-allow"].rules[0].to[0].ports, [8080]);
    assert_eq!(p["app/web-only"].scope, PolicyScope::WorkloadSelector);
    assert!(p["app/at-waypoint"].has_l7);
    assert!(matches!(&p["app/at-waypoint"].scope, PolicyScope::Targeted(t) if t[0].name == "web"));
    assert_eq!(snap.workloads["app/web-1"].policies, ["app/web-only"]);
    assert!(snap.workloads["app/db-1"].policies.is_empty());
}

#[test]
fn invalid_policies_fail_closed_and_are_reported() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-cidr, namespace: app}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: legacy}
spec: {action: DENNY}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: app}
spec: {action: CUSTOM}
"#,
    );
    for key in ["app/bad-cidr", "legacy/typo", "app/custom"] {
        let policy = &snap.policies[key];
        assert_eq!(policy.action, PolicyAction::Deny, "{key}");
        assert_eq!(
            policy.rules,
            [Default::default()],
            "{key} denies everything"
        );
    }
    assert_eq!(
        snap.policies["app/bad-cidr"].scope,
        PolicyScope::WorkloadSelector
    );
    assert_eq!(snap.policies["legacy/typo"].scope, PolicyScope::Namespace);
    let text: Vec<String> = snap.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].starts_with("extra.yaml#0: AuthorizationPolicy app/bad-cidr: field spec.rules[0].from[0].source.ipBlocks[0]:"), "{}", text[0]);
    assert!(text
        .iter()
        .any(|t| t.contains("legacy/typo") && t.contains("spec.action")));
    assert!(text
        .iter()
        .any(|t| t.contains("app/custom") && t.contains("CUSTOM")));
    // The rest of the config is intact.
    assert_eq!(snap.workloads.len(), 3);
    assert_eq!(snap.services.len(), 2);
}

#[test]
fn l7_policy_on_nodes_is_narrowed_fail_closed() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: app}
spec: {rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [app]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: app}
spec: {action: DENY, rules: [{to: [{operation: {methods: [POST], ports: ["80"]}}]}]}
"#,
    );
    let allow = &snap.policies["app/allow-get"];
    assert_eq!(allow.rules.len(), 1, "the L7 allow rule is dropped");
    assert_eq!(allow.rules[0].from[0].namespaces, ["app"]);
    let deny = &snap.policies["app/deny-post"];
    assert!(
        deny.rules[0].to[0].methods.is_empty(),
        "deny keeps only the L4 part"
    );
    assert_eq!(deny.rules[0].to[0].ports, [80]);
    assert_eq!(snap.diagnostics.len(), 2);
}

#[test]
fn unknown_security_fields_fail_closed_naming_the_field() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principal: [cluster.local/ns/app/sa/web]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: with-status, namespace: app}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["9"]}}]}]}
status: {conditions: [{type: ZtunnelAccepted, status: "True"}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: typo, namespace: legacy}
spec: {mtls: {mode: DISABLE}, portLevelMTLS: {"80": {mode: DISABLE}}}
"#,
    );
    let typo = &snap.policies["app/typo"];
    assert_eq!(typo.action, PolicyAction::Deny);
    assert_eq!(typo.rules, [Default::default()], "denies everything");
    assert_eq!(
        typo.scope,
        PolicyScope::WorkloadSelector,
        "in its own scope"
    );
    // `status` is written by Istio's control plane, not policy: never a reason to fail.
    let status = &snap.policies["app/with-status"];
    assert_eq!(status.rules[0].to[0].ports, [9]);
    // An unknown PeerAuthentication field requires mTLS rather than disabling it.
    assert_eq!(snap.workloads["legacy/old-1"].mtls, MtlsMode::Strict);
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].from[0].source.principal",
            "spec.portLevelMTLS"
        ],
        "{:?}",
        snap.diagnostics
    );
}

#[test]
fn every_istio_source_field_is_carried_or_fails_closed() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: full, namespace: app}
spec:
  targetRef: {kind: Service, group: "", name: web}
  rules:
    - from:
        - source:
            serviceAccounts: [app/web]
            notServiceAccounts: [app/db]
            remoteIpBlocks: [203.0.113.0/24]
            notRemoteIpBlocks: [203.0.113.9]
            requestPrincipals: ["https://issuer.example/*"]
            notRequestPrincipals: [bad/actor]
      when:
        - {key: "request.auth.claims[groups]", values: [admins]}
        - {key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: [x]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-sa, namespace: app}
spec: {targetRefs: [{kind: Service, name: web}], rules: [{from: [{source: {serviceAccounts: [web]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: provider-without-custom, namespace: app}
spec: {targetRefs: [{kind: Service, name: web}], provider: {name: ext-authz}}
"#,
    );
    let full = &snap.policies["app/full"];
    assert_eq!(
        full.scope,
        PolicyScope::Targeted(vec![crate::model::PolicyTarget {
            kind: "Service".into(),
            namespace: "app".into(),
            name: "web".into(),
        }]),
        "singular targetRef"
    );
    let source = &full.rules[0].from[0];
    assert_eq!(source.service_accounts, ["*/ns/app/sa/web"]);
    assert_eq!(source.not_service_accounts, ["*/ns/app/sa/db"]);
    assert_eq!(
        source.remote_ip_blocks,
        ["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(source.not_remote_ip_blocks.len(), 1);
    assert_eq!(source.request_principals, ["https://issuer.example/*"]);
    assert_eq!(source.not_request_principals, ["bad/actor"]);
    for key in ["app/bad-sa", "app/provider-without-custom"] {
        assert_eq!(snap.policies[key].action, PolicyAction::Deny, "{key}");
        assert_eq!(snap.policies[key].rules, [Default::default()], "{key}");
    }
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    for field in [
        "spec.rules[0].when[1].key",
        "spec.rules[0].from[0].source.serviceAccounts[0]",
        "spec.provider",
    ] {
        assert!(fields.contains(&field), "{field} not reported: {fields:?}");
    }
    assert_eq!(
        fields.len(),
        3,
        "JWT fields are enforced, not reported: {fields:?}"
    );
}

#[test]
fn request_authentication_reaches_the_targeted_waypoint_or_fails_closed() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules:
    - issuer: https://issuer.example
      audiences: [web]
      jwksUri: https://issuer.example/keys
      timeout: 2s
      fromHeaders: [{name: x-jwt, prefix: "Token "}]
      outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: sidecar-style, namespace: app}
spec: {selector: {matchLabels: {app: web}}, jwtRules: [{issuer: https://issuer.example}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: typo, namespace: app}
spec:
  targetRef: {kind: Service, name: web}
  jwtRules: [{issuer: https://issuer.example, jwks_uri: https://issuer.example/keys, audience: [x]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad-jwks, namespace: app}
spec:
  targetRef: {kind: Service, name: web}
  jwtRules: [{issuer: https://issuer.example, jwks: "not json"}]
"#,
    );
    let jwt = &snap.request_authns["app/jwt"];
    assert!(!jwt.refuse_all);
    let rule = &jwt.rules[0];
    assert_eq!(rule.fetch_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        rule.from_headers,
        [("x-jwt".to_owned(), "Token ".to_owned())]
    );
    assert!(
        !snap.request_authns.contains_key("app/sidecar-style"),
        "selector-only resources are not enforced in ambient mode"
    );
    for key in ["app/typo", "app/bad-jwks"] {
        assert!(snap.request_authns[key].refuse_all, "{key} fails closed");
    }
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.jwtRules[0].jwks",
            "spec.targetRefs",
            "spec.jwtRules[0].audience"
        ],
        "{:?}",
        snap.diagnostics
    );
    // The waypoint of `web` receives all three that target it.
    let wire = crate::feed::waypoint::config_for(&snap, "app", "wp");
    let keys: Vec<&str> = wire
        .request_authentications
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(keys, ["app/bad-jwks", "app/jwt", "app/typo"]);
    let rule = &wire.request_authentications[1].rules[0];
    assert_eq!(rule.jwks_timeout_ms, 2000);
    assert_eq!(rule.output_claim_to_headers[0].header, "x-user");
}

#[test]
fn a_broken_peer_authentication_fails_closed_not_open() {
    // An edit breaks a PeerAuthentication: its scope becomes STRICT, never the weaker mode
    // the rest of the config would give (here PERMISSIVE, the default).
    let broken_namespace_wide = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICTT}}
"#;
    let snap = snapshot_of(broken_namespace_wide);
    assert_eq!(snap.workloads["app/web-1"].mtls, MtlsMode::Strict);
    assert_eq!(snap.workloads["app/db-1"].mtls, MtlsMode::Strict);
    assert_eq!(
        snap.workloads["legacy/old-1"].mtls,
        MtlsMode::Permissive,
        "other namespaces"
    );
    assert_eq!(snap.diagnostics.len(), 1, "{:?}", snap.diagnostics);
    assert!(snap.diagnostics[0]
        .message
        .contains("STRICT) in its whole namespace"));

    let broken_with_selector = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: 7}
  portLevelMtls: {"8080": {mode: DISABLE}}
"#;
    let snap = snapshot_of(broken_with_selector);
    assert_eq!(snap.workloads["app/web-1"].mtls, MtlsMode::Strict);
    assert!(
        snap.workloads["app/web-1"].port_mtls.is_empty(),
        "no port opened"
    );
    assert_eq!(
        snap.workloads["app/db-1"].mtls,
        MtlsMode::Permissive,
        "not selected"
    );
}

#[test]
fn peer_authentication_precedence() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"9000": {mode: DISABLE}, "99999": {mode: STRICT}}
"#,
    );
    let web = &snap.workloads["app/web-1"];
    assert_eq!(web.mtls, MtlsMode::Permissive);
    assert_eq!(web.port_mtls.get(&9000), Some(&MtlsMode::Disable));
    assert_eq!(snap.workloads["app/db-1"].mtls, MtlsMode::Strict);
    assert_eq!(snap.diagnostics.len(), 1);
    assert_eq!(snap.diagnostics[0].field, "spec.portLevelMtls[99999]");
}

#[test]
fn routes_from_virtual_service_and_http_route() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: app}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /v2}, headers: {X-User: {exact: jason}}}]
    route: [{destination: {host: web, subset: v2}, weight: 90}, {destination: {host: web, subset: v1}, weight: 10}]
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,connect-failure"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}, {name: ingress}]
  rules:
  - matches: [{path: {type: Exact, value: /healthz}}]
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 2s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress-only, namespace: app}
spec: {hosts: [web.example.com], gateways: [public-gw], http: [{route: [{destination: {host: web}}]}]}
"#,
    );
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
    assert_eq!(snap.routes.len(), 4, "{:?}", snap.routes.keys());
    let ingress = &snap.routes["VirtualService/app/ingress-only"];
    assert!(!ingress.mesh, "bound only to a gateway");
    assert_eq!(ingress.gateways, ["app/public-gw"]);
    let vs = &snap.routes["VirtualService/app/web"];
    assert!(vs.mesh && vs.gateways.is_empty());
    assert_eq!(vs.hosts, ["web.app.svc.cluster.local"]);
    let rule = &vs.rules[0];
    assert_eq!(
        rule.matches[0].path,
        Some(StringMatch::Prefix("/v2".into()))
    );
    assert_eq!(rule.matches[0].headers[0].name, "x-user");
    assert_eq!(
        rule.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(rule.timeout, Some(Duration::from_millis(500)));
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!(
        (retry.attempts, retry.per_try_timeout),
        (3, Some(Duration::from_millis(100)))
    );
    assert_eq!(retry.retry_on, ["5xx", "connect-failure"]);
    let hr = &snap.routes["HTTPRoute/app/web-split#0"];
    assert_eq!(hr.port, Some(80));
    assert_eq!(
        hr.rules[0].matches[0].path,
        Some(StringMatch::Exact("/healthz".into()))
    );
    assert_eq!(hr.rules[0].timeout, Some(Duration::from_secs(2)));
    // The second parent (group and kind defaulted: a Gateway) is ingress routing for every
    // host, since the route lists no hostnames.
    let ingress = &snap.routes["HTTPRoute/app/web-split#1"];
    assert!(!ingress.mesh && ingress.port.is_none());
    assert_eq!(
        (ingress.gateways.as_slice(), ingress.hosts.as_slice()),
        (&["app/ingress".to_string()][..], &["*".to_string()][..])
    );
    assert_eq!(ingress.rules, hr.rules);
}

#[test]
fn huge_durations_are_diagnosed_not_a_panic() {
    let max = u64::MAX;
    let snap = snapshot_of(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: forever, namespace: app}}
spec: {{hosts: [web], http: [{{timeout: "{max}s{max}s", route: [{{destination: {{host: web}}}}]}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: app}}
spec: {{host: web, trafficPolicy: {{outlierDetection: {{interval: "{max}h", baseEjectionTime: "{max}s{max}s"}}}}}}
"#
    ));
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert!(fields.contains(&"spec.http[0].timeout"), "{fields:?}");
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with("spec.trafficPolicy.outlierDetection")),
        "{fields:?}"
    );
    assert!(snap
        .diagnostics
        .iter()
        .all(|d| d.message.contains("longer than")));
}

#[test]
fn invalid_routes_are_dropped_with_field_and_others_kept() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad-regex, namespace: app}
spec: {hosts: [web], http: [{match: [{uri: {regex: "(unclosed"}}], route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, outlierDetection: {consecutive5xxErrors: 3, interval: 5s}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-time, namespace: app}
spec: {host: db, trafficPolicy: {outlierDetection: {interval: 5 seconds}}}
"#,
    );
    assert!(snap.routes.is_empty());
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].match[0].uri",
            "spec.trafficPolicy.outlierDetection.interval"
        ]
    );
    let tp = &snap.traffic_policies["app/web"];
    assert_eq!(tp.host, "web.app.svc.cluster.local");
    assert_eq!(tp.load_balancer.as_deref(), Some("LEAST_REQUEST"));
    let outlier = tp.outlier.as_ref().expect("outlier");
    assert_eq!(
        (outlier.consecutive_5xx, outlier.interval),
        (3, Duration::from_secs(5))
    );
    assert!(!snap.traffic_policies.contains_key("app/bad-time"));
}

#[test]
fn service_entry_adds_service_and_static_workloads() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-db, namespace: app}
spec:
  hosts: [db.example.com]
  addresses: [240.0.0.1, 10.0.0.0/8]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10, serviceAccount: db}, {address: db.internal}]
"#,
    );
    let svc = &snap.services["app/db.example.com"];
    assert_eq!(svc.vips, [ip("240.0.0.1")]);
    assert_eq!(svc.endpoints.len(), 1);
    let w = &snap.workloads[&svc.endpoints[0].workload_uid];
    assert_eq!(w.ips, [ip("192.0.2.10")]);
    assert_eq!(w.identity, "spiffe://cluster.local/ns/app/sa/db");
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.addresses[1]", "spec.endpoints[1].address"]);
}

#[test]
fn a_service_entry_cannot_take_a_service_or_pod_address() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grab, namespace: legacy}
spec:
  hosts: [grab.example.com]
  addresses: [10.96.0.10, 10.0.0.1, 240.0.0.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: late, namespace: legacy}
spec:
  hosts: [late.example.com]
  addresses: [240.0.0.9]
  ports: [{number: 80, name: http, protocol: HTTP}]
"#,
    );
    assert_eq!(
        snap.services["legacy/grab.example.com"].vips,
        [ip("240.0.0.9")]
    );
    assert!(snap.services["legacy/late.example.com"].vips.is_empty());
    assert_eq!(
        snap.services["app/web.app.svc.cluster.local"].vips,
        [ip("10.96.0.10")]
    );
    let found: Vec<(&str, &str)> = snap
        .diagnostics
        .iter()
        .map(|d| (d.field.as_str(), d.message.as_str()))
        .collect();
    let names = |field: &str, holder: &str| {
        found
            .iter()
            .any(|(f, m)| *f == field && m.contains(holder) && m.contains("left out"))
    };
    assert!(names("spec.addresses[0]", "Service app/web"), "{found:?}");
    assert!(names("spec.addresses[1]", "Pod app/web-1"), "{found:?}");
    assert!(
        names("spec.addresses[0]", "ServiceEntry legacy/grab"),
        "{found:?}"
    );
    assert_eq!(found.len(), 3, "{found:?}");
}

#[test]
fn duplicate_objects_keep_the_first() {
    let dup = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {clusterIP: 10.96.9.9}
"#;
    let snap = snapshot_of(dup);
    assert_eq!(
        snap.services["app/web.app.svc.cluster.local"].vips,
        [ip("10.96.0.10")]
    );
    assert!(
        snap.diagnostics[0]
            .message
            .contains("already defined in base.yaml#7"),
        "{:?}",
        snap.diagnostics
    );
}

#[test]
fn unresolved_waypoint_is_kept_without_address() {
    let snap = snapshot_of(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: legacy, labels: {weft.dev/use-waypoint: missing, weft.dev/dataplane-mode: ambient}}
spec: {nodeName: node-a, containers: [{name: a, image: a}]}
status: {podIP: 10.0.1.2}
"#,
    );
    let w = &snap.workloads["legacy/api-1"];
    assert!(w.enrolled);
    let wp = w.waypoint.as_ref().expect("binding kept");
    assert_eq!(wp.name.name, "missing");
    assert_eq!(wp.address, None);
}

/// Deterministic mutation fuzzing of the YAML path: byte flips, truncations and insertions in
/// real manifests must never panic, and every diagnostic must say where it came from.
#[test]
fn mutated_manifests_never_panic() {
    let corpus = [BASE, include_str!("../../tests/fuzz-corpus.yaml")].join("---\n");
    let mut clean = Parsed::default();
    parse_yaml("corpus.yaml", &corpus, &mut clean);
    let mut registry = Registry::new(RegistryConfig::default());
    registry.replace_all(clean);
    let snapshot = registry.snapshot();
    assert!(
        snapshot.diagnostics.is_empty(),
        "{:?}",
        snapshot.diagnostics
    );
    assert_eq!(
        (snapshot.routes.len(), snapshot.traffic_policies.len()),
        (2, 1)
    );
    let bytes = corpus.as_bytes();
    // Fixed-seed xorshift: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b" :-[]{}\n\"'#&*!|>%@`0123456789abcxyz.";
    let mut with_objects = 0;
    for _ in 0..300 {
        let mut mutated = bytes.to_vec();
        for _ in 0..(1 + next() % 8) {
            let at = (next() % mutated.len() as u64) as usize;
            match next() % 3 {
                0 => mutated[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                1 => mutated.truncate(at.max(1)),
                _ => mutated.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
            }
        }
        let text = String::from_utf8_lossy(&mutated);
        let mut parsed = Parsed::default();
        parse_yaml("fuzz.yaml", &text, &mut parsed);
        if !parsed.objects.is_empty() {
            with_objects += 1;
        }
        let mut registry = Registry::new(RegistryConfig::default());
        registry.replace_all(parsed);
        let snapshot = registry.snapshot();
        for diagnostic in &snapshot.diagnostics {
            assert!(!diagnostic.origin.is_empty(), "{diagnostic}");
        }
    }
    assert!(
        with_objects > 0,
        "mutations were too destructive to exercise translation"
    );
}

#[test]
fn unsupported_route_fields_are_reported_not_silently_dropped() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: app}
spec:
  hosts: [web]
  tcp: [{route: [{destination: {host: web}}]}]
  http:
  - match: [{sourceLabels: {app: a}}]
    rewrite: {uriRegexRewrite: {match: a, rewrite: b}}
    mirrors: [{destination: {host: web}}]
    route: [{destination: {host: web}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hr, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{sessionPersistence: {}, backendRefs: [{name: web, filters: []}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 0s}}}
    connectionPool: {http: {maxRetries: 3}}
"#,
    );
    let fields: Vec<&str> = snap.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.tcp",
            "spec.http[0].mirrors",
            "spec.http[0].match[0].sourceLabels",
            "spec.http[0].rewrite.uriRegexRewrite",
            "spec.rules[0].sessionPersistence",
            "spec.rules[0].backendRefs[0].filters",
            "spec.trafficPolicy.tls",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
            "spec.trafficPolicy.connectionPool.http.maxRetries",
        ]
    );
    assert!(snap.diagnostics[0].message.contains("ignored"));
    assert_eq!(snap.routes.len(), 2, "the supported part still applies");
    assert_eq!(snap.traffic_policies.len(), 1);
}

/// Fields no Weft type defines, below the levels that catch unknown keys, used to vanish on
/// parsing. Each one now gets a diagnostic naming its path; fields that say nothing (empty
/// lists, `false`) do not, and the object still applies.
#[test]
fn fields_weft_does_not_read_are_named_wherever_they_are() {
    let snap = snapshot_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: app}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  subjectAltNames: [spiffe://cluster.local/ns/app/sa/api]
  addresses: [192.0.2.10]
  endpoints: [{address: 192.0.2.10}]
  ports: [{number: 443, name: https, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: app}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web, port: {number: 80}}
      headers: {request: {set: {x-canary: "1"}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    defaultEndpoint: 127.0.0.1:8080
    bind: ""
"#,
    );
    let unread: Vec<(&str, &str)> = snap
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("not read by weft"))
        .map(|d| (d.object.as_str(), d.field.as_str()))
        .collect();
    assert_eq!(
        unread,
        [
            ("ServiceEntry app/ext", "spec.subjectAltNames"),
            ("VirtualService app/web", "spec.http[0].route[0].headers"),
            ("Gateway app/gw", "spec.servers[0].defaultEndpoint"),
        ]
    );
    assert_eq!(snap.routes.len(), 1, "the object still applies");
}

/// Istio's documentation writes `portLevelMtls` keys as bare integers
/// (istio.io/latest/docs/reference/config/security/peer_authentication/).
#[test]
fn peer_authentication_port_keys_written_as_integers() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector:
    matchLabels:
      app: web
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"#,
    );
    let web = &snap.workloads["app/web-1"];
    assert_eq!(web.mtls, MtlsMode::Strict, "{:?}", snap.diagnostics);
    assert_eq!(
        web.port_mtls.get(&8080),
        Some(&MtlsMode::Disable),
        "{:?}",
        snap.diagnostics
    );
    assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
}

/// One port written both as an integer and as a string: which mode was meant is unknown, so the
/// policy fails closed (STRICT in its scope) with a diagnostic.
#[test]
fn peer_authentication_port_given_twice_fails_closed() {
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: STRICT}, "8080": {mode: DISABLE}}
"#,
    );
    let web = &snap.workloads["app/web-1"];
    assert_eq!(web.mtls, MtlsMode::Strict);
    assert!(web.port_mtls.is_empty(), "no port opened");
    assert!(
        snap.diagnostics[0].message.contains("8080 is given twice"),
        "{:?}",
        snap.diagnostics
    );
    // Another spelling of the same number is the same port.
    let snap = snapshot_of(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: STRICT}, "08080": {mode: DISABLE}}
"#,
    );
    let web = &snap.workloads["app/web-1"];
    assert_eq!(web.mtls, MtlsMode::Strict);
    assert!(web.port_mtls.is_empty(), "no port opened");
    assert!(
        snap.diagnostics[0].message.contains("8080 is given twice"),
        "{:?}",
        snap.diagnostics
    );
}
