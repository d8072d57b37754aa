//! HTTPS servers of ingress Gateways: which certificates reach which feed, and how broken TLS
//! settings are reported (the listener left out, the rest of the Gateway kept).

use std::sync::Arc;

use mesh_core::proto::control::v1 as pb;
use prost::Message;

use crate::feed::state::FeedState;
use crate::feed::waypoint::config_for;
use crate::model::Snapshot;
use crate::registry::secret::tests::cert_and_key;
use crate::registry::{parse_yaml, Parsed, Registry, RegistryConfig};

/// A gateway pod and a route through it (beside [`super::tests::BACKEND`]).
const BASE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: edge, labels: {istio: ingress, gateway.networking.k8s.io/gateway-name: shop}}
spec: {nodeName: node-b, serviceAccountName: ingress, containers: []}
status: {podIP: 10.0.9.1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: app}
spec: {hosts: [shop.example.com], gateways: [edge/public], http: [{route: [{destination: {host: web}}]}]}
"#;

/// A `kubernetes.io/tls` Secret (through `stringData`, as in local files).
fn secret(namespace: &str, name: &str, chain: &str, key: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(chain),
        indent(key)
    )
}

/// An Istio Gateway `edge/public` with a plain server and an HTTPS server whose `tls` is given.
fn istio_gateway(tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: edge}}
spec:
  selector: {{istio: ingress}}
  servers:
  - {{port: {{number: 80, protocol: HTTP, name: http}}, hosts: ["*.example.com"]}}
  - {{port: {{number: 443, protocol: HTTPS, name: https}}, hosts: ["app/shop.example.com"], tls: {tls}}}
"#
    )
}

fn snapshot(docs: &[String]) -> Snapshot {
    let mut parsed = Parsed::default();
    parse_yaml(
        "c.yaml",
        &[super::tests::BACKEND.to_string(), BASE.to_string()]
            .iter()
            .chain(docs)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n---\n"),
        &mut parsed,
    );
    let mut registry = Registry::new(RegistryConfig::default());
    registry.replace_all(parsed);
    registry.snapshot()
}

fn diagnostics(snap: &Snapshot) -> Vec<String> {
    snap.diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn istio_simple_server_gets_its_certificate_in_its_own_feed_only() {
    let (chain, key) = cert_and_key("shop.example.com");
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: edge}\ntype: Opaque\nstringData: {password: hunter2}";
    let snap = snapshot(&[
        istio_gateway("{mode: SIMPLE, credentialName: shop-cert}"),
        secret("edge", "shop-cert", &chain, &key),
        opaque.to_string(),
    ]);
    assert!(snap.diagnostics.is_empty(), "{:?}", diagnostics(&snap));
    let config = config_for(&snap, "edge", "public");
    let expected = pb::TlsCredential {
        hosts: vec!["shop.example.com".into()],
        cert_chain_pem: chain.clone(),
        key_pem: key.clone(),
        name: "edge/shop-cert".into(),
    };
    assert_eq!(config.tls_credentials, [expected]);
    assert_eq!(config.routes.len(), 1, "the https host's route is served");
    // Nowhere else: not the mesh waypoint's feed, not a Gateway of another name, not nodes.
    let leaks = |bytes: &[u8]| bytes.windows(key.len()).any(|w| w == key.as_bytes());
    for (ns, name) in [("app", "wp"), ("edge", "shop"), ("edge", "absent")] {
        let other = config_for(&snap, ns, name);
        assert!(other.tls_credentials.is_empty(), "{ns}/{name}");
        assert!(!leaks(&other.encode_to_vec()), "{ns}/{name}");
    }
    let mut node_feed = FeedState::new("f".into(), 1000);
    node_feed.apply(Arc::new(snap.clone()));
    let delta = node_feed.delta(None);
    assert!(!delta.upserts.is_empty());
    assert!(delta.upserts.iter().all(|r| !leaks(&r.encode_to_vec())));
    let debug = format!("{snap:?}");
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains("hunter2"),
        "keys are redacted, opaque secrets never read"
    );
}

#[test]
fn broken_tls_leaves_the_https_server_out_and_keeps_the_rest() {
    let (chain, key) = cert_and_key("shop.example.com");
    let (_, other_key) = cert_and_key("else.example.com");
    let good = secret("edge", "shop-cert", &chain, &key);
    let simple = "{mode: SIMPLE, credentialName: shop-cert}";
    let cases = [
        (
            simple,
            String::new(),
            "spec.servers[1].tls.credentialName",
            "secret edge/shop-cert of type kubernetes.io/tls not found",
        ),
        (
            simple,
            secret("edge", "shop-cert", "garbage", &key),
            "spec.servers[1].tls.credentialName",
            "tls.crt holds no pem certificate",
        ),
        (
            simple,
            secret("edge", "shop-cert", &chain, "garbage"),
            "spec.servers[1].tls.credentialName",
            "tls.key holds no usable pem private key",
        ),
        (
            simple,
            secret("edge", "shop-cert", &chain, &other_key),
            "spec.servers[1].tls.credentialName",
            "does not match",
        ),
        (
            "{mode: PASSTHROUGH}",
            good.clone(),
            "spec.servers[1].tls.mode",
            "\"PASSTHROUGH\" is not supported",
        ),
        (
            "{mode: MUTUAL, credentialName: shop-cert}",
            good.clone(),
            "spec.servers[1].tls.mode",
            "\"MUTUAL\" is not supported",
        ),
        (
            "{mode: ISTIO_MUTUAL}",
            good.clone(),
            "spec.servers[1].tls.mode",
            "\"ISTIO_MUTUAL\"",
        ),
        (
            "{mode: AUTO_PASSTHROUGH}",
            good.clone(),
            "spec.servers[1].tls.mode",
            "\"AUTO_PASSTHROUGH\"",
        ),
        (
            "{credentialName: shop-cert}",
            good.clone(),
            "spec.servers[1].tls.mode",
            "PASSTHROUGH",
        ),
        (
            "{mode: SIMPLE}",
            good.clone(),
            "spec.servers[1].tls.credentialName",
            "required with mode SIMPLE",
        ),
        (
            "{mode: SIMPLE, credentialName: app/shop-cert}",
            good.clone(),
            "spec.servers[1].tls.credentialName",
            "only secrets of the gateway's namespace",
        ),
        // The secret must be in the Gateway's namespace.
        (
            simple,
            secret("app", "shop-cert", &chain, &key),
            "spec.servers[1].tls.credentialName",
            "not found",
        ),
    ];
    for (tls, secret_doc, field, message) in cases {
        let snap = snapshot(&[istio_gateway(tls), secret_doc]);
        let diags = diagnostics(&snap);
        let named = |d: &String| {
            d.contains("Gateway edge/public")
                && d.contains(field)
                && d.contains(message)
                && d.contains("left out")
        };
        assert!(diags.iter().any(named), "{tls}: {diags:?}");
        let gateway = &snap.gateways["edge/public"];
        let ports: Vec<u16> = gateway.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [80], "{tls}: only the plain server stays");
        assert!(
            config_for(&snap, "edge", "public")
                .tls_credentials
                .is_empty(),
            "{tls}"
        );
    }
}

#[test]
fn unsupported_protocols_and_ignored_fields_are_reported() {
    let tls_server = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  selector: {istio: ingress}
  servers:
  - {port: {number: 80, protocol: HTTP}, hosts: ["*"], tls: {httpsRedirect: true}}
  - {port: {number: 443, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}
  - {port: {number: 8443, protocol: HTTPS}, hosts: ["*"]}
"#;
    let snap = snapshot(&[tls_server.to_string()]);
    let diags = diagnostics(&snap).join("\n");
    for expected in [
        "spec.servers[0].tls.httpsRedirect: not supported by weft yet; this field is ignored",
        "spec.servers[1].port.protocol: TLS servers",
        "spec.servers[2].tls: an HTTPS server needs tls",
    ] {
        assert!(diags.contains(expected), "{expected}: {diags}");
    }
    assert_eq!(snap.gateways["edge/public"].listeners.len(), 1);
}

fn k8s_gateway(certificate_ref: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: shop, namespace: edge}}
spec:
  listeners:
  - {{name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}}
  - {{name: https, port: 443, protocol: HTTPS, hostname: "*.example.com", tls: {{certificateRefs: [{certificate_ref}]}}}}
"#
    )
}

#[test]
fn gateway_api_terminate_uses_the_first_certificate_ref() {
    let (chain, key) = cert_and_key("*.example.com");
    let snap = snapshot(&[
        k8s_gateway("{kind: Secret, group: \"\", name: wild}"),
        secret("edge", "wild", &chain, &key),
    ]);
    assert!(snap.diagnostics.is_empty(), "{:?}", diagnostics(&snap));
    let credentials = config_for(&snap, "edge", "shop").tls_credentials;
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].hosts, ["*.example.com"]);
    assert_eq!(
        (
            credentials[0].name.as_str(),
            credentials[0].key_pem.as_str()
        ),
        ("edge/wild", key.as_str())
    );
}

#[test]
fn gateway_api_refused_certificate_refs() {
    let (chain, key) = cert_and_key("*.example.com");
    let secrets = [
        secret("edge", "wild", &chain, &key),
        secret("app", "wild", &chain, &key),
    ];
    let cases = [
        (
            "{name: wild, namespace: app}",
            "spec.listeners[1].tls.certificateRefs[0].namespace",
            "ReferenceGrant",
        ),
        (
            "{name: wild, kind: ConfigMap}",
            "spec.listeners[1].tls.certificateRefs[0].kind",
            "only core Secrets",
        ),
        (
            "{name: absent}",
            "spec.listeners[1].tls.certificateRefs[0].name",
            "secret edge/absent of type kubernetes.io/tls not found",
        ),
    ];
    for (reference, field, message) in cases {
        let snap = snapshot(&[
            k8s_gateway(reference),
            secrets[0].clone(),
            secrets[1].clone(),
        ]);
        let diags = diagnostics(&snap);
        assert!(
            diags
                .iter()
                .any(|d| d.contains(field) && d.contains(message)),
            "{reference}: {diags:?}"
        );
        assert!(
            config_for(&snap, "edge", "shop").tls_credentials.is_empty(),
            "{reference}"
        );
        assert_eq!(
            snap.gateways["edge/shop"].listeners.len(),
            1,
            "{reference}: http stays"
        );
    }
    let passthrough = k8s_gateway("{name: wild}").replace("tls: {", "tls: {mode: Passthrough, ");
    let snap = snapshot(&[passthrough, secrets[0].clone()]);
    let diags = diagnostics(&snap).join("\n");
    assert!(
        diags.contains("spec.listeners[1].tls.mode") && diags.contains("\"Passthrough\""),
        "{diags}"
    );
}
