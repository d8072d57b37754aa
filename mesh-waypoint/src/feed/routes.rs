//! Routes -> virtual hosts. Mesh: one per (route, bound service host, service port), keyed by
//! the service's names and VIPs with the port, plus a default route for every bound service
//! port no route covers. Ingress (route hosts that are no bound service, e.g. an Istio
//! `Gateway`'s VirtualServices): one per route, keyed by its hostnames, served on the plain
//! listener. A virtual host that does not convert or compile answers 503 for all its requests
//! instead of disappearing (which would fall through to nothing or, worse, a broader route).
//!
//! Several routes on one service port merge into one virtual host, as Istio merges the
//! VirtualServices of a host: the rules of each route in feed order (mesh-control's order; Istio
//! uses creation order), first match wins across all of them. A broken route contributes its
//! catch-all 503 at its place, so later routes' rules are shadowed, never widened.

use std::collections::BTreeMap;

use mesh_core::proto::control::v1 as pb;

use super::{
    convert::{destination_name, ConvertError, ServiceIndex, ServiceView},
    rules::{rules, Scope},
};
use crate::{
    config::{
        DestinationConfig, DirectResponseConfig, RouteConfig, RuleConfig, WeightedDestination,
    },
    route::RouteTable,
};

/// Mesh and ingress virtual hosts.
#[derive(Debug, Default)]
pub(super) struct VirtualHosts {
    /// Selected by CONNECT authority (HBONE).
    pub(super) mesh: Vec<RouteConfig>,
    /// Selected by `Host` on the plain listener.
    pub(super) ingress: Vec<RouteConfig>,
}

/// All virtual hosts: converted routes first (feed order), then defaults.
pub(super) fn routes(
    wire: &[pb::Route],
    index: &ServiceIndex<'_>,
    destinations: &[DestinationConfig],
    problems: &mut Vec<ConvertError>,
) -> VirtualHosts {
    // (host, port) -> index of its virtual host in `out.mesh`, for merging.
    let mut covered = BTreeMap::new();
    let mut out = VirtualHosts::default();
    for route in wire {
        let mut ingress_hosts = Vec::new();
        for host in &route.hosts {
            let host = host.to_ascii_lowercase();
            let Some(service) = index.get(&host).filter(|s| s.bound) else {
                ingress_hosts.push(host);
                continue;
            };
            for port in service.ports() {
                if route.port != 0 && route.port != u32::from(port) {
                    continue;
                }
                let scope = Scope {
                    route: &route.key,
                    service: Some(service),
                    port: Some(port),
                    destinations,
                };
                let name = format!("{}@{host}:{port}", route.key);
                let built = vhost(route, &scope, name, service.keys(port), problems);
                match covered.get(&(host.clone(), port)) {
                    Some(&i) => merge(&mut out.mesh[i], built),
                    None => {
                        covered.insert((host.clone(), port), out.mesh.len());
                        out.mesh.push(built);
                    }
                }
            }
        }
        if !ingress_hosts.is_empty() {
            let scope = Scope {
                route: &route.key,
                service: None,
                port: None,
                destinations,
            };
            let name = format!("{}@ingress", route.key);
            out.ingress
                .push(vhost(route, &scope, name, ingress_hosts, problems));
        }
    }
    for (host, service) in index.iter().filter(|(_, s)| s.bound) {
        for port in service.ports() {
            if !covered.contains_key(&(host.clone(), port)) {
                out.mesh.push(default_route(host, service, port));
            }
        }
    }
    out
}

/// Appends `later`'s rules to `earlier` (same service port); the name lists both routes.
fn merge(earlier: &mut RouteConfig, later: RouteConfig) {
    let key = later.name.split('@').next().unwrap_or(&later.name);
    earlier.name = match earlier.name.split_once('@') {
        Some((keys, at)) => format!("{keys}+{key}@{at}"),
        None => format!("{}+{key}", earlier.name),
    };
    earlier.rules.extend(later.rules);
}

/// A service port without routes: every request to all its endpoints.
fn default_route(host: &str, service: &ServiceView<'_>, port: u16) -> RouteConfig {
    let rule = RuleConfig {
        name: Some("default".to_owned()),
        route: vec![WeightedDestination {
            destination: destination_name(host, port),
            subset: None,
            weight: 100,
        }],
        ..RuleConfig::default()
    };
    RouteConfig {
        name: format!("default/{host}:{port}"),
        hosts: service.keys(port),
        rules: vec![rule],
    }
}

fn vhost(
    route: &pb::Route,
    scope: &Scope<'_>,
    name: String,
    hosts: Vec<String>,
    problems: &mut Vec<ConvertError>,
) -> RouteConfig {
    let converted = rules(route, scope).and_then(|rules| {
        let config = RouteConfig {
            name: name.clone(),
            hosts: hosts.clone(),
            rules,
        };
        match RouteTable::new(std::slice::from_ref(&config), scope.destinations) {
            Ok(_) => Ok(config),
            Err(source) => Err(ConvertError::Route {
                route: route.key.clone(),
                source,
            }),
        }
    });
    converted.unwrap_or_else(|error| {
        problems.push(error);
        RouteConfig {
            name,
            hosts,
            rules: vec![unavailable()],
        }
    })
}

/// The rule a broken route is replaced with.
fn unavailable() -> RuleConfig {
    RuleConfig {
        name: Some("invalid-route".to_owned()),
        direct_response: Some(DirectResponseConfig {
            status: 503,
            body: "route configuration rejected by the waypoint\n".to_owned(),
        }),
        ..RuleConfig::default()
    }
}
