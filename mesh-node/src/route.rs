//! Outbound path choice: where a captured connection goes and how.
//!
//! Order (Istio ambient): a service VIP resolves to its waypoint when bound, else to an endpoint
//! (round robin, target port applied); a workload IP goes to its waypoint when bound, else to the
//! workload's node over HBONE; anything else is outside the mesh and passes through untouched.

use std::{net::SocketAddr, sync::Arc};

use mesh_core::identity::SpiffeId;

use crate::state::{State, Workload};

/// Where to send a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Over HBONE.
    Hbone(HboneRoute),
    /// Plain TCP to the original destination (not a mesh address).
    Passthrough(SocketAddr),
    /// A service without endpoints: nothing can serve it.
    NoEndpoint { service: String },
    /// A service VIP on a port the service does not expose.
    NoPort { service: String, port: u16 },
}

/// An HBONE hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneRoute {
    /// Tunnel address to dial.
    pub dial: SocketAddr,
    /// `:authority` of the CONNECT.
    pub authority: SocketAddr,
    /// Identity the peer tunnel must prove.
    pub identity: SpiffeId,
    /// Destination workload when known (not for waypoint hops to a VIP).
    pub workload: Option<Arc<Workload>>,
    /// Whether this hop goes to a waypoint.
    pub via_waypoint: bool,
}

/// Chooses the route for original destination `dst`.
pub fn choose(state: &State, dst: SocketAddr) -> Route {
    if let Some(service) = state.service(dst.ip()) {
        let Some(&target_port) = service.ports.get(&dst.port()) else {
            return Route::NoPort {
                service: service.key.clone(),
                port: dst.port(),
            };
        };
        if let Some(waypoint) = &service.waypoint {
            return Route::Hbone(HboneRoute {
                dial: waypoint.address,
                authority: dst,
                identity: waypoint.identity.clone(),
                workload: None,
                via_waypoint: true,
            });
        }
        return match service.pick() {
            Some(workload) => to_workload(state, workload, target_port),
            None => Route::NoEndpoint {
                service: service.key.clone(),
            },
        };
    }
    match state.workload(dst.ip()) {
        Some(workload) => to_workload(state, workload.clone(), dst.port()),
        None => Route::Passthrough(dst),
    }
}

fn to_workload(state: &State, workload: Arc<Workload>, port: u16) -> Route {
    let authority = SocketAddr::new(workload.ip, port);
    if let Some(waypoint) = &workload.waypoint {
        return Route::Hbone(HboneRoute {
            dial: waypoint.address,
            authority,
            identity: waypoint.identity.clone(),
            workload: Some(workload.clone()),
            via_waypoint: true,
        });
    }
    Route::Hbone(HboneRoute {
        dial: SocketAddr::new(workload.ip, state.hbone_port),
        authority,
        identity: workload.identity.clone(),
        workload: Some(workload),
        via_waypoint: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MESH: &str = r#"
node_name: a
workloads:
  - { name: p1, namespace: ns, service_account: sa, ip: 10.0.0.1, node: a }
  - { name: p2, namespace: ns, service_account: sa, ip: 10.0.0.2, node: b }
  - { name: p3, namespace: ns, service_account: sb, ip: 10.0.0.3, node: b, waypoint: wp }
waypoints:
  - { name: wp, namespace: ns, service_account: wp-sa, address: "10.0.9.9:15008" }
services:
  - { name: s, namespace: ns, vip: 10.96.0.1, ports: [{ port: 80, target_port: 8080 }],
      endpoints: [10.0.0.1, 10.0.0.2] }
  - { name: empty, namespace: ns, vip: 10.96.0.2, ports: [{ port: 80 }] }
  - { name: waypointed, namespace: ns, vip: 10.96.0.3, ports: [{ port: 80 }], waypoint: wp,
      endpoints: [10.0.0.1] }
"#;

    fn state() -> State {
        State::from_config(&Config::from_yaml(MESH).unwrap()).unwrap()
    }

    fn hbone(route: Route) -> HboneRoute {
        match route {
            Route::Hbone(h) => h,
            other => panic!("expected hbone, got {other:?}"),
        }
    }

    #[test]
    fn service_vip_round_robins_endpoints_with_target_port() {
        let state = state();
        let vip = "10.96.0.1:80".parse().unwrap();
        let first = hbone(choose(&state, vip));
        let second = hbone(choose(&state, vip));
        let third = hbone(choose(&state, vip));
        assert_eq!(first.authority, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(first.dial, "10.0.0.1:15008".parse().unwrap());
        assert_eq!(second.authority, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(third.authority, first.authority);
        assert_eq!(
            first.identity.to_string(),
            "spiffe://cluster.local/ns/ns/sa/sa"
        );
    }

    #[test]
    fn waypoints_receive_vip_or_pod_authority() {
        let state = state();
        let via_service = hbone(choose(&state, "10.96.0.3:80".parse().unwrap()));
        assert!(via_service.via_waypoint);
        assert_eq!(via_service.authority, "10.96.0.3:80".parse().unwrap());
        assert_eq!(via_service.dial, "10.0.9.9:15008".parse().unwrap());
        let via_pod = hbone(choose(&state, "10.0.0.3:9000".parse().unwrap()));
        assert!(via_pod.via_waypoint);
        assert_eq!(via_pod.authority, "10.0.0.3:9000".parse().unwrap());
        assert_eq!(via_pod.identity.service_account(), "wp-sa");
    }

    #[test]
    fn non_mesh_and_broken_services() {
        let state = state();
        let outside = "93.184.216.34:443".parse().unwrap();
        assert_eq!(choose(&state, outside), Route::Passthrough(outside));
        assert!(matches!(
            choose(&state, "10.96.0.2:80".parse().unwrap()),
            Route::NoEndpoint { .. }
        ));
        assert!(matches!(
            choose(&state, "10.96.0.1:81".parse().unwrap()),
            Route::NoPort { port: 81, .. }
        ));
        let direct = hbone(choose(&state, "10.0.0.2:7000".parse().unwrap()));
        assert_eq!(direct.dial, "10.0.0.2:15008".parse().unwrap());
    }

    #[test]
    fn inconsistent_config_is_rejected() {
        let dup = MESH.replace("ip: 10.0.0.2", "ip: 10.0.0.1");
        assert!(State::from_config(&Config::from_yaml(&dup).unwrap()).is_err());
        let unknown = MESH.replace("waypoint: wp,", "waypoint: nope,");
        let err = State::from_config(&Config::from_yaml(&unknown).unwrap()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
