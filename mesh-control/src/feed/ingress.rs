//! Waypoints deployed as ingress gateways: the part of a waypoint's config that comes from an
//! Istio `Gateway` (`networking.istio.io/v1`) or a Gateway API `Gateway`
//! (`gateway.networking.k8s.io/v1`) of the same namespace and name.
//!
//! Such a waypoint receives the VirtualServices bound to the Gateway (`spec.gateways`) and the
//! HTTPRoutes attached to it (`parentRefs`) whose hosts one of its listeners serves, plus the
//! backend services of those routes with their endpoints and traffic policies. Its pods are
//! [`Snapshot::gateway_pods`] (for a Gateway API Gateway: its namespace's pods labelled
//! `gateway.networking.k8s.io/gateway-name: <name>`).
//!
//! Its HTTPS listeners' certificates ([`tls_credentials`]: the validated `kubernetes.io/tls`
//! Secrets they name) go in its feed too, and in no other: the waypoint feed is readable only by
//! the Gateway's own pods (and the nodes running them), see `feed::waypoint::authorise`.

use std::collections::BTreeSet;

use mesh_core::proto::control::v1 as pb;

use crate::model::{Gateway, GatewayListener, Route, Snapshot};

/// Whether wildcard `pattern` (`*`, `*.suffix` or exact) covers `host` (itself possibly a
/// wildcard).
fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let host = host.to_ascii_lowercase();
            host.len() > suffix.len() && host.ends_with(&suffix.to_ascii_lowercase())
        }
        None => false,
    }
}

/// Whether a listener host (`[<namespace>/]<host>`, `*` and `*.suffix` wildcards) of a
/// Gateway in `gateway_ns` admits `host` (wildcards allowed) of a route in `route_ns`: the two
/// host sets intersect, as in Istio.
fn listener_admits(listener: &str, gateway_ns: &str, route_ns: &str, host: &str) -> bool {
    let (ns, pattern) = listener.split_once('/').unwrap_or(("*", listener));
    let ns_ok = match ns {
        "*" => true,
        "." => route_ns == gateway_ns,
        other => other == route_ns,
    };
    let host_ok = pattern == "*"
        || host == "*"
        || pattern.eq_ignore_ascii_case(host)
        || covers(pattern, host)
        || covers(host, pattern);
    ns_ok && host_ok
}

fn serves(gateway: &Gateway, gateway_ns: &str, route: &Route) -> bool {
    gateway.listeners.iter().any(|l| {
        l.hosts.iter().any(|listener| {
            route
                .hosts
                .iter()
                .any(|h| listener_admits(listener, gateway_ns, &route.namespace, h))
        })
    })
}

/// The routes the Istio Gateway `namespace/name` serves (none when there is no such Gateway).
pub fn routes<'a>(snapshot: &'a Snapshot, namespace: &str, name: &str) -> Vec<&'a Route> {
    let key = format!("{namespace}/{name}");
    let Some(gateway) = snapshot.gateways.get(&key) else {
        return Vec::new();
    };
    snapshot
        .routes
        .values()
        .filter(|r| r.gateways.contains(&key) && serves(gateway, namespace, r))
        .collect()
}

/// The server certificates of the Gateway `namespace/name` for the waypoint deployed as it, one
/// per HTTPS listener, with the hosts (SNI names) it is presented for. They carry private keys:
/// only that waypoint's feed may include them.
pub fn tls_credentials(snapshot: &Snapshot, namespace: &str, name: &str) -> Vec<pb::TlsCredential> {
    let Some(gateway) = snapshot.gateways.get(&format!("{namespace}/{name}")) else {
        return Vec::new();
    };
    let credential = |listener: &GatewayListener| {
        let tls = listener.tls.as_ref()?;
        // Drop the `<namespace rule>/` part: SNI carries the bare host name.
        let host = |h: &String| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string();
        Some(pb::TlsCredential {
            hosts: listener.hosts.iter().map(host).collect(),
            cert_chain_pem: tls.cert_chain_pem.clone(),
            key_pem: tls.key_pem.0.clone(),
            name: tls.secret.clone(),
        })
    };
    gateway.listeners.iter().filter_map(credential).collect()
}

/// Service hosts the routes forward or mirror to.
pub fn backend_hosts<'a>(routes: &[&'a Route]) -> BTreeSet<&'a str> {
    let rules = routes.iter().flat_map(|r| r.rules.iter());
    rules
        .flat_map(|rule| {
            let backends = rule.backends.iter().map(|b| b.host.as_str());
            backends.chain(rule.mirror.as_ref().map(|m| m.host.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::waypoint::config_for;
    use crate::registry::{parse_yaml, Parsed, Registry, RegistryConfig};

    /// A backend service `web` bound to the mesh waypoint `wp`: what every ingress test routes to.
    pub(super) const BACKEND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {weft.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, containers: []}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app}
spec: {clusterIP: 10.96.0.99, ports: [{port: 15008}]}
"#;

    const CONFIG: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: edge, labels: {istio: ingress}}
spec: {nodeName: node-b, serviceAccountName: ingress, containers: []}
status: {podIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: gw-elsewhere, namespace: app, labels: {istio: ingress}}
spec: {nodeName: node-a, containers: []}
status: {podIP: 10.0.9.2}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec: {selector: {istio: ingress}, servers: [{port: {number: 80, protocol: HTTP, name: http}, hosts: ["*.example.com"]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: site, namespace: app}
spec: {hosts: [www.example.com], gateways: [edge/public], http: [{route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catch-all, namespace: app}
spec: {hosts: ["*"], gateways: [edge/public], http: [{directResponse: {status: 404}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: unserved-host, namespace: app}
spec: {hosts: [api.other.org], gateways: [edge/public], http: [{route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress-only-web, namespace: app}
spec: {hosts: [web], gateways: [edge/public], http: [{timeout: 9s, route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-web, namespace: app}
spec: {hosts: [web], http: [{timeout: 1s, route: [{destination: {host: web}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
"#;

    fn snapshot() -> Snapshot {
        let mut parsed = Parsed::default();
        parse_yaml("c.yaml", &format!("{BACKEND}---\n{CONFIG}"), &mut parsed);
        let mut registry = Registry::new(RegistryConfig::default());
        registry.replace_all(parsed);
        let snap = registry.snapshot();
        assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
        snap
    }

    fn keys(config: &mesh_core::proto::control::v1::WaypointConfig) -> Vec<&str> {
        config.routes.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn ingress_gateway_gets_its_routes_backends_and_policies() {
        let snap = snapshot();
        let config = config_for(&snap, "edge", "public");
        assert_eq!(
            keys(&config),
            ["VirtualService/app/catch-all", "VirtualService/app/site"]
        );
        assert_eq!(
            config.routes[0].hosts,
            ["*"],
            "a wildcard host is not qualified"
        );
        let services: Vec<_> = config
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        assert_eq!(services, ["web.app.svc.cluster.local"]);
        let workloads: Vec<_> = config.workloads.iter().map(|w| w.uid.as_str()).collect();
        assert_eq!(workloads, ["app/web-1"]);
        assert_eq!(config.traffic_policies.len(), 1);
        let pods: Vec<_> = snap
            .gateway_pods("edge", "public")
            .map(|w| &w.uid)
            .collect();
        assert_eq!(pods, ["edge/gw-1"], "only pods of the Gateway's namespace");
        assert!(snap.is_gateway_pod("edge/gw-1") && !snap.is_gateway_pod("app/gw-elsewhere"));
    }

    #[test]
    fn mesh_waypoints_do_not_get_ingress_only_routes() {
        let config = config_for(&snapshot(), "app", "wp");
        assert_eq!(keys(&config), ["VirtualService/app/mesh-web"]);
        assert!(config_for(&snapshot(), "edge", "absent").routes.is_empty());
    }

    #[test]
    fn listener_hosts() {
        let cases = [
            ("*", "gw", "app", "web.example.com", true),
            ("*.example.com", "gw", "app", "web.example.com", true),
            ("*.example.com", "gw", "app", "example.com", false),
            ("web.example.com", "gw", "app", "WEB.example.com", true),
            ("web.example.com", "gw", "app", "api.example.com", false),
            ("app/web.example.com", "gw", "app", "web.example.com", true),
            (
                "other/web.example.com",
                "gw",
                "app",
                "web.example.com",
                false,
            ),
            ("./*", "gw", "gw", "web.example.com", true),
            ("./*", "gw", "app", "web.example.com", false),
            ("*/*", "gw", "app", "web.example.com", true),
            ("*.example.com", "gw", "app", "*", true),
            ("web.example.com", "gw", "app", "*.example.com", true),
            ("*.example.com", "gw", "app", "*.a.example.com", true),
            ("*.example.com", "gw", "app", "*.example.org", false),
        ];
        for (listener, gateway_ns, route_ns, host, expected) in cases {
            assert_eq!(
                listener_admits(listener, gateway_ns, route_ns, host),
                expected,
                "{listener} {route_ns} {host}"
            );
        }
    }

    const GATEWAY_API: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, containers: []}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: shop-gw-1, namespace: edge, labels: {gateway.networking.k8s.io/gateway-name: shop}}
spec: {nodeName: node-b, serviceAccountName: shop-gw, containers: []}
status: {podIP: 10.0.9.1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop, namespace: edge}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com", allowedRoutes: {namespaces: {from: All}}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: private, namespace: edge}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: app}
spec:
  parentRefs: [{name: shop, namespace: edge}, {name: private, namespace: edge}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: app}
spec:
  parentRefs: [{name: shop, namespace: edge}]
  hostnames: [shop.example.org]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#;

    #[test]
    fn gateway_api_gateway_gets_its_attached_http_routes() {
        let mut parsed = Parsed::default();
        parse_yaml("g.yaml", GATEWAY_API, &mut parsed);
        let mut registry = Registry::new(RegistryConfig::default());
        registry.replace_all(parsed);
        let snap = registry.snapshot();
        assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
        let config = config_for(&snap, "edge", "shop");
        // The TCP listener is not HTTP; the .org route matches no listener.
        assert_eq!(keys(&config), ["HTTPRoute/app/shop#0"]);
        assert_eq!(config.routes[0].hosts, ["shop.example.com"]);
        let services: Vec<_> = config
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        assert_eq!(services, ["web.app.svc.cluster.local"]);
        // `private` admits routes of its own namespace only (the default).
        assert!(config_for(&snap, "edge", "private").routes.is_empty());
        let pods: Vec<_> = snap.gateway_pods("edge", "shop").map(|w| &w.uid).collect();
        assert_eq!(pods, ["edge/shop-gw-1"]);
        assert!(snap.is_gateway_pod("edge/shop-gw-1"));
    }

    #[test]
    fn gateway_api_selector_namespaces_are_refused_not_widened() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec: {listeners: [{port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}]}
"#;
        let mut parsed = Parsed::default();
        parse_yaml("s.yaml", yaml, &mut parsed);
        let mut registry = Registry::new(RegistryConfig::default());
        registry.replace_all(parsed);
        let snap = registry.snapshot();
        assert!(snap.gateways.is_empty());
        let diagnostic = snap.diagnostics[0].to_string();
        assert!(
            diagnostic.contains("spec.listeners[0].allowedRoutes.namespaces.from")
                && diagnostic.contains("Selector"),
            "{diagnostic}"
        );
    }
}

#[cfg(test)]
mod tls_tests;
