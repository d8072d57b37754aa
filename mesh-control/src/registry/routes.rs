//! VirtualService and HTTPRoute into [`Route`]s; DestinationRule into [`TrafficPolicy`];
//! Istio Gateway into [`Gateway`].
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

use self::common::{port, Invalid};
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::crd::networking::Gateway as IstioGateway;
use crate::model::{Gateway, Snapshot};

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
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
