//! Translations from Kubernetes APIs into the waypoint's domain types, so the control plane
//! (or a test) can feed Istio and Gateway API resources to the same engine.
//!
//! - [`istio`]: `VirtualService` + `DestinationRule`.
//! - [`gateway`]: Gateway API `HTTPRoute`.
//!
//! Endpoints are not part of these APIs; callers pass them per service host.

pub mod gateway;
pub mod istio;

use std::collections::BTreeMap;

use crate::config::{DestinationConfig, EndpointConfig, WaypointConfig};

/// Errors translating a resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// A field the waypoint cannot honour is set; it is rejected rather than ignored.
    #[error("resource {resource:?} uses unsupported field {field}")]
    Unsupported { resource: String, field: String },
}

/// Endpoints of each service host.
pub type Endpoints = BTreeMap<String, Vec<EndpointConfig>>;

/// Builds a full configuration from Istio resources. Every host a route references becomes a
/// destination: with its `DestinationRule` when there is one, else with defaults.
pub fn from_istio(
    virtual_services: &[istio::VirtualService],
    destination_rules: &[istio::DestinationRule],
    endpoints: &Endpoints,
) -> Result<WaypointConfig, TranslateError> {
    let routes = virtual_services
        .iter()
        .map(istio::virtual_service)
        .collect::<Result<Vec<_>, _>>()?;
    let mut destinations: BTreeMap<String, DestinationConfig> = BTreeMap::new();
    for dr in destination_rules {
        let eps = endpoints.get(&dr.spec.host).cloned().unwrap_or_default();
        destinations.insert(dr.spec.host.clone(), istio::destination_rule(dr, eps)?);
    }
    add_referenced(&routes, &mut destinations, endpoints);
    Ok(WaypointConfig {
        routes,
        destinations: destinations.into_values().collect(),
        ..WaypointConfig::default()
    })
}

/// Builds a full configuration from Gateway API `HTTPRoute`s; backends become destinations.
pub fn from_gateway(
    routes: &[gateway::HttpRoute],
    endpoints: &Endpoints,
) -> Result<WaypointConfig, TranslateError> {
    let routes = routes
        .iter()
        .map(gateway::http_route)
        .collect::<Result<Vec<_>, _>>()?;
    let mut destinations = BTreeMap::new();
    add_referenced(&routes, &mut destinations, endpoints);
    Ok(WaypointConfig {
        routes,
        destinations: destinations.into_values().collect(),
        ..WaypointConfig::default()
    })
}

fn add_referenced(
    routes: &[crate::config::RouteConfig],
    destinations: &mut BTreeMap<String, DestinationConfig>,
    endpoints: &Endpoints,
) {
    let referenced = routes.iter().flat_map(|r| &r.rules).flat_map(|rule| {
        let routed = rule.route.iter().map(|w| w.destination.clone());
        routed.chain(rule.mirror.iter().map(|m| m.destination.clone()))
    });
    for host in referenced {
        destinations
            .entry(host.clone())
            .or_insert_with(|| DestinationConfig {
                endpoints: endpoints.get(&host).cloned().unwrap_or_default(),
                name: host,
                subsets: Vec::new(),
                traffic_policy: Default::default(),
            });
    }
}
