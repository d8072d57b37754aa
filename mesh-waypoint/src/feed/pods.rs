//! Workload-addressed traffic: a node sends traffic for a pod that is itself bound to this
//! waypoint with `:authority` = `<pod ip>:<port>`. Each such pod and target port (taken from the
//! services it backs) gets a virtual host keyed by that authority with a single default rule to
//! that pod alone; service routes and service-targeted policies do not apply to it.

use std::collections::BTreeMap;

use super::{
    convert::{ServiceIndex, WaypointName},
    services::{endpoint, Workloads},
};
use crate::config::{DestinationConfig, RouteConfig, RuleConfig, WeightedDestination};

/// Destinations and virtual hosts for the pods bound to `me`.
pub(super) fn pods(
    index: &ServiceIndex<'_>,
    workloads: &Workloads<'_>,
    me: &WaypointName,
) -> (Vec<DestinationConfig>, Vec<RouteConfig>) {
    let bound = |uid: &str| {
        workloads
            .get(uid)
            .and_then(|w| w.waypoint)
            .is_some_and(|r| r.namespace == me.namespace && r.name == me.name)
    };
    // Keyed by the pod authority: a pod backing several services appears once per port.
    let mut by_authority = BTreeMap::new();
    for view in index.values() {
        for port in &view.wire.ports {
            for e in view
                .wire
                .endpoints
                .iter()
                .filter(|e| bound(&e.workload_uid))
            {
                // Endpoints that do not convert are already reported by the service pass.
                if let Ok(ep) = endpoint(view.wire, port, e, workloads) {
                    by_authority.entry(ep.address.to_string()).or_insert(ep);
                }
            }
        }
    }
    by_authority
        .into_iter()
        .map(|(authority, ep)| {
            let name = format!("pod/{authority}");
            let route = RouteConfig {
                name: name.clone(),
                hosts: vec![authority],
                rules: vec![RuleConfig {
                    name: Some("workload".to_owned()),
                    route: vec![WeightedDestination {
                        destination: name.clone(),
                        subset: None,
                        weight: 100,
                    }],
                    ..RuleConfig::default()
                }],
            };
            let destination = DestinationConfig {
                name,
                endpoints: vec![ep],
                subsets: Vec::new(),
                traffic_policy: Default::default(),
            };
            (destination, route)
        })
        .unzip()
}
