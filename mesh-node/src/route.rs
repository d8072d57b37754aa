//! Outbound path choice: where a captured connection goes and how.
//!
//! Order (Istio ambient): a service VIP resolves to its waypoint when bound, else to an endpoint
//! (round robin, target port applied, the endpoint's address in the VIP's family); a workload IP
//! goes to its waypoint when bound, else to the workload's node over HBONE; anything else is
//! outside the mesh and passes through untouched.

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
            Some(workload) => {
                let ip = workload.address_like(dst.ip());
                to_workload(state, workload, SocketAddr::new(ip, target_port))
            }
            None => Route::NoEndpoint {
                service: service.key.clone(),
            },
        };
    }
    match state.workload(dst.ip()) {
        Some(workload) => to_workload(state, workload.clone(), dst),
        None => Route::Passthrough(dst),
    }
}

/// To `authority`, one of `workload`'s addresses: its node is dialled in the same family.
fn to_workload(state: &State, workload: Arc<Workload>, authority: SocketAddr) -> Route {
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
        dial: SocketAddr::new(authority.ip(), state.hbone_port),
        authority,
        identity: workload.identity.clone(),
        workload: Some(workload),
        via_waypoint: false,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use mesh_core::proto::{address_bytes, build};

    use super::*;
    use crate::feed::{convert::state_of, MeshSnapshot};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// p1 on this node, p2 and p3 on node b; p3 and service `waypointed` bound to waypoint
    /// `wp` (pod 10.0.9.9); p4 has both families.
    fn snapshot() -> MeshSnapshot {
        let p1 = build::workload("ns", "p1", "sa", ip("10.0.0.1"), "a");
        let p2 = build::workload("ns", "p2", "sa", ip("10.0.0.2"), "b");
        let mut p4 = build::workload("ns", "p4", "sd", ip("10.0.0.4"), "b");
        p4.addresses.push(address_bytes(&ip("fd00::4")));
        let (wp_pod, wp) =
            build::waypoint("ns", "wp", "wp-sa", (ip("10.0.9.9"), "c"), ip("10.96.9.9"));
        let binding = build::waypoint_ref(&wp, 15008);
        let mut p3 = build::workload("ns", "p3", "sb", ip("10.0.0.3"), "b");
        p3.waypoint = Some(binding.clone());
        let s = build::service("ns", "s", ip("10.96.0.1"), &[(80, 8080)], &[&p1, &p2]);
        let empty = build::service("ns", "empty", ip("10.96.0.2"), &[(80, 0)], &[]);
        let mut waypointed =
            build::service("ns", "waypointed", ip("10.96.0.3"), &[(80, 0)], &[&p1]);
        waypointed.waypoint = Some(binding);
        let mut dual = build::service("ns", "dual", ip("10.96.0.4"), &[(80, 8080)], &[&p4]);
        dual.vips.push(address_bytes(&ip("fd00:96::4")));
        MeshSnapshot::of([p1, p2, p3, p4, wp_pod], [s, empty, waypointed, wp, dual])
    }

    fn state() -> State {
        state_of("a", &snapshot())
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
    fn every_address_of_a_dual_stack_workload_or_service_routes_in_its_family() {
        let state = state();
        for (dst, authority, dial) in [
            ("10.0.0.4:7000", "10.0.0.4:7000", "10.0.0.4:15008"),
            ("[fd00::4]:7000", "[fd00::4]:7000", "[fd00::4]:15008"),
            ("10.96.0.4:80", "10.0.0.4:8080", "10.0.0.4:15008"),
            ("[fd00:96::4]:80", "[fd00::4]:8080", "[fd00::4]:15008"),
        ] {
            let route = hbone(choose(&state, dst.parse().unwrap()));
            assert_eq!(route.authority, authority.parse().unwrap(), "{dst}");
            assert_eq!(route.dial, dial.parse().unwrap(), "{dst}");
            assert_eq!(route.identity.service_account(), "sd", "{dst}");
        }
    }

    #[test]
    fn a_node_local_service_is_served_by_this_nodes_endpoints_only() {
        let mut snapshot = snapshot();
        let local = snapshot
            .services
            .get_mut("ns/s.ns.svc.cluster.local")
            .unwrap();
        local.node_local = true;
        // From node a: only p1 (on a) serves, however often it is picked.
        let state = state_of("a", &snapshot);
        for _ in 0..3 {
            let route = hbone(choose(&state, "10.96.0.1:80".parse().unwrap()));
            assert_eq!(route.authority, "10.0.0.1:8080".parse().unwrap());
        }
        // From node c, which has no endpoint: refused, never sent to another node.
        let state = state_of("c", &snapshot);
        assert!(matches!(
            choose(&state, "10.96.0.1:80".parse().unwrap()),
            Route::NoEndpoint { .. }
        ));
    }

    #[test]
    fn an_unresolved_waypoint_or_a_taken_address_leaves_that_object_out_only() {
        let mut snapshot = snapshot();
        // The waypoint's pod disappears: bound objects are refused, never sent around it.
        snapshot.workloads.remove("ns/wp-0");
        let mut squatter = build::workload("ns", "squatter", "x", ip("10.0.0.1"), "b");
        squatter.uid = "ot/squatter".into();
        snapshot.insert_workload(squatter);
        let state = state_of("a", &snapshot);
        assert_eq!(
            choose(&state, "10.96.0.3:80".parse().unwrap()),
            Route::Passthrough("10.96.0.3:80".parse().unwrap()),
            "a VIP bound to a missing waypoint is not a mesh service"
        );
        assert!(
            state.workload(ip("10.0.0.3")).is_none(),
            "remote p3 left out"
        );
        let first = state.workload(ip("10.0.0.1")).expect("first claim kept");
        assert_eq!(first.name, "p1", "ns/p1 sorts before ot/squatter");
        assert!(state.service(ip("10.96.0.1")).is_some(), "the rest stays");
    }
}
