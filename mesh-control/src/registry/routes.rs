//! VirtualService and HTTPRoute into [`Route`]s; DestinationRule into [`TrafficPolicy`];
//! Istio Gateway and Gateway API Gateway into [`Gateway`].
//!
//! A rule that fails validation (bad regex, duration, weight, port, status, header name,
//! percentage, conflicting actions) drops its whole resource with a diagnostic naming the field:
//! a partial route table could send traffic somewhere the author did not intend. Fields Weft does
//! not implement are reported as ignored.

mod common;
mod http_route;
mod traffic;
mod virtual_service;

use std::collections::BTreeMap;

use self::common::{invalid, port, Invalid};
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::crd::gateway::{K8sGateway, Listener};
use crate::crd::networking::Gateway as IstioGateway;
use crate::model::{Gateway, Snapshot};

/// The label Istio puts on the pods of the deployment it creates for a Gateway API Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

fn gateway(key: &ObjectKey, gw: &IstioGateway) -> Result<Gateway, Invalid> {
    let mut listeners = Vec::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let number = port(
            server.port.number,
            &format!("spec.servers[{i}].port.number"),
        )?;
        listeners.push((number, server.port.protocol.clone(), server.hosts.clone()));
    }
    Ok(Gateway {
        key: format!("{}/{}", key.namespace, key.name),
        selector: gw.spec.selector.clone(),
        listeners,
    })
}

/// A Gateway API listener's hosts in the model's `<namespace rule>/<host>` form: routes of the
/// Gateway's namespace (`.`, the default) or of every namespace (`*`).
fn listener_hosts(listener: &Listener, at: &str) -> Result<String, Invalid> {
    let from = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let namespaces = match from.and_then(|n| n.from.as_deref()) {
        None | Some("Same") => ".",
        Some("All") => "*",
        Some(other) => {
            let message = format!("{other:?} is not supported by weft yet (use Same or All)");
            return Err(invalid(
                format!("{at}.allowedRoutes.namespaces.from"),
                message,
            ));
        }
    };
    let host = listener
        .hostname
        .as_deref()
        .unwrap_or("*")
        .to_ascii_lowercase();
    Ok(format!("{namespaces}/{host}"))
}

/// A Gateway API Gateway: its HTTP(S) listeners (others carry route kinds Weft does not read),
/// served by the pods Istio labels with the Gateway's name.
fn k8s_gateway(key: &ObjectKey, gw: &K8sGateway) -> Result<Gateway, Invalid> {
    let mut listeners = Vec::new();
    for (i, listener) in gw.spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        let number = port(listener.port, &format!("{at}.port"))?;
        if matches!(listener.protocol.as_str(), "HTTP" | "HTTPS") {
            let hosts = vec![listener_hosts(listener, &at)?];
            listeners.push((number, listener.protocol.clone(), hosts));
        }
    }
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), key.name.clone())]);
    Ok(Gateway {
        key: format!("{}/{}", key.namespace, key.name),
        selector,
        listeners,
    })
}

/// `<at>.<key>` for every key of an `unsupported` map.
fn named(at: &str, keys: &BTreeMap<String, serde_json::Value>) -> Vec<String> {
    keys.keys().map(|k| format!("{at}.{k}")).collect()
}

/// Paths of fields present in the resource that Weft does not implement.
fn unsupported_fields(resource: &Resource) -> Vec<String> {
    match resource {
        Resource::VirtualService(vs) => virtual_service::unsupported(vs),
        Resource::HttpRoute(route) => http_route::unsupported(route),
        Resource::DestinationRule(dr) => traffic::unsupported(dr),
        _ => Vec::new(),
    }
}

/// Translates routes, traffic policies and gateways.
pub fn translate(ctx: &Ctx<'_>, snapshot: &mut Snapshot, diags: &mut Diagnostics<'_>) {
    let kinds = [
        Kind::VirtualService,
        Kind::HttpRoute,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::K8sGateway,
    ];
    for kind in kinds {
        for (key, stored) in ctx.of_kind(kind) {
            diags.set_origin(&stored.origin);
            if let Err((field, message)) = translate_one(ctx, key, &stored.resource, snapshot) {
                diags.push(key, &field, &format!("{message}; resource ignored"));
            }
            for field in unsupported_fields(&stored.resource) {
                diags.push(
                    key,
                    &field,
                    "not supported by weft yet; this field is ignored",
                );
            }
        }
    }
}

fn translate_one(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    resource: &Resource,
    snapshot: &mut Snapshot,
) -> Result<(), Invalid> {
    match resource {
        Resource::VirtualService(vs) => {
            let route = virtual_service::translate(ctx, key, vs)?;
            snapshot.routes.insert(route.key.clone(), route);
        }
        Resource::HttpRoute(route) => {
            for r in http_route::translate(ctx, key, route)? {
                snapshot.routes.insert(r.key.clone(), r);
            }
        }
        Resource::DestinationRule(dr) => {
            let tp = traffic::translate(ctx, key, dr)?;
            snapshot.traffic_policies.insert(tp.key.clone(), tp);
        }
        Resource::Gateway(gw) => {
            let g = gateway(key, gw)?;
            snapshot.gateways.insert(g.key.clone(), g);
        }
        Resource::K8sGateway(gw) => {
            let g = k8s_gateway(key, gw)?;
            if snapshot.gateways.contains_key(&g.key) {
                let why = "an Istio Gateway of the same namespace and name exists and wins";
                return Err(invalid("metadata.name", why));
            }
            snapshot.gateways.insert(g.key.clone(), g);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
