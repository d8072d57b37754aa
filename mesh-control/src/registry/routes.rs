//! VirtualService and HTTPRoute into [`Route`]s; DestinationRule into [`TrafficPolicy`];
//! Istio Gateway and Gateway API Gateway into [`Gateway`].
//!
//! A rule that fails validation (bad regex, duration, weight, port, status, header name,
//! percentage, conflicting actions) drops its whole resource with a diagnostic naming the field:
//! a partial route table could send traffic somewhere the author did not intend. Fields Weft does
//! not implement are reported as ignored.

mod common;
pub mod gateway;
mod http_route;
mod traffic;
mod virtual_service;

use std::collections::BTreeMap;

use self::common::{invalid, Invalid};
pub use self::gateway::GATEWAY_NAME_LABEL;
use super::{Ctx, Diagnostics, Kind, ObjectKey, Resource};
use crate::model::Snapshot;

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
        _ => gateway::unsupported(resource),
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
            match translate_one(ctx, key, &stored.resource, snapshot) {
                Ok(left_out) => {
                    for (field, message) in left_out {
                        let message = format!("{message}; this listener is left out");
                        diags.push(key, &field, &message);
                    }
                }
                Err((field, message)) => {
                    diags.push(key, &field, &format!("{message}; resource ignored"));
                }
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

/// Translates one object; `Ok` carries the parts left out (gateway listeners).
fn translate_one(
    ctx: &Ctx<'_>,
    key: &ObjectKey,
    resource: &Resource,
    snapshot: &mut Snapshot,
) -> Result<Vec<Invalid>, Invalid> {
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
            let (g, left_out) = gateway::istio(ctx, key, gw)?;
            snapshot.gateways.insert(g.key.clone(), g);
            return Ok(left_out);
        }
        Resource::K8sGateway(gw) => {
            let (g, left_out) = gateway::k8s(ctx, key, gw)?;
            if snapshot.gateways.contains_key(&g.key) {
                let why = "an Istio Gateway of the same namespace and name exists and wins";
                return Err(invalid("metadata.name", why));
            }
            snapshot.gateways.insert(g.key.clone(), g);
            return Ok(left_out);
        }
        _ => {}
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests;
