//! Wire messages written by hand: for tests, benches and tools that describe a mesh without
//! mesh-control. They hold what mesh-control would send for the same objects, so whatever
//! consumes them goes through the one conversion a live feed goes through.
//!
//! Start from these and set any other field directly (`labels`, `mtls`, `waypoint`, ...).

use std::net::IpAddr;

use super::{address_bytes, control::v1 as pb};

/// The trust domain the built identities are in (the control plane's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// An enrolled pod `namespace/name` at `ip` on `node`, with identity
/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`, PERMISSIVE, no waypoint.
pub fn workload(
    namespace: &str,
    name: &str,
    service_account: &str,
    ip: IpAddr,
    node: &str,
) -> pb::Workload {
    pb::Workload {
        uid: format!("{namespace}/{name}"),
        name: name.into(),
        namespace: namespace.into(),
        addresses: vec![address_bytes(&ip)],
        node: node.into(),
        service_account: service_account.into(),
        identity: format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"),
        tunnel: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

/// Service `namespace/name` on `vip`, with `(port, target port)` pairs (a target port of 0
/// means the same port) and the `endpoints` workloads behind it.
pub fn service(
    namespace: &str,
    name: &str,
    vip: IpAddr,
    ports: &[(u16, u16)],
    endpoints: &[&pb::Workload],
) -> pb::Service {
    let hostname = format!("{name}.{namespace}.svc.{TRUST_DOMAIN}");
    pb::Service {
        key: format!("{namespace}/{hostname}"),
        name: name.into(),
        namespace: namespace.into(),
        hostname,
        vips: vec![address_bytes(&vip)],
        ports: ports
            .iter()
            .map(|&(port, target_port)| pb::ServicePort {
                port: port.into(),
                target_port: target_port.into(),
                protocol: "tcp".into(),
            })
            .collect(),
        endpoints: endpoints
            .iter()
            .map(|w| pb::Endpoint {
                workload_uid: w.uid.clone(),
                ports: Default::default(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A waypoint `namespace/name` as mesh-control sends it: its one pod (`<name>-0`, service
/// account `service_account`, at `pod_ip` on `node`) and its Service on `vip`, port 15008.
pub fn waypoint(
    namespace: &str,
    name: &str,
    service_account: &str,
    (pod_ip, node): (IpAddr, &str),
    vip: IpAddr,
) -> (pb::Workload, pb::Service) {
    let pod = workload(
        namespace,
        &format!("{name}-0"),
        service_account,
        pod_ip,
        node,
    );
    let service = service(namespace, name, vip, &[(15008, 0)], &[&pod]);
    (pod, service)
}

/// A binding to the waypoint whose Service is `waypoint`, reached on `hbone_port` of its pods.
pub fn waypoint_ref(waypoint: &pb::Service, hbone_port: u16) -> pb::WaypointRef {
    pb::WaypointRef {
        namespace: waypoint.namespace.clone(),
        name: waypoint.name.clone(),
        address: waypoint.vips.first().cloned().unwrap_or_default(),
        hbone_port: hbone_port.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 9, last])
    }

    #[test]
    fn built_messages_hold_what_the_control_plane_sends() {
        let pod = workload("shop", "web-0", "web", "10.0.0.5".parse().unwrap(), "n1");
        assert_eq!(pod.uid, "shop/web-0");
        assert_eq!(pod.identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(pod.addresses, vec![vec![10, 0, 0, 5]]);
        let web = service(
            "shop",
            "web",
            "10.96.0.1".parse().unwrap(),
            &[(80, 8080)],
            &[&pod],
        );
        assert_eq!(web.key, "shop/web.shop.svc.cluster.local");
        assert_eq!(web.endpoints[0].workload_uid, "shop/web-0");
        assert_eq!((web.ports[0].port, web.ports[0].target_port), (80, 8080));
        let binding = waypoint_ref(&web, 15008);
        let (wp_pod, wp) = waypoint("shop", "wp", "wp-sa", (ip(1), "n2"), ip(2));
        assert_eq!(
            (wp_pod.uid.as_str(), wp.endpoints[0].workload_uid.as_str()),
            ("shop/wp-0", "shop/wp-0")
        );
        assert_eq!(
            (binding.namespace.as_str(), binding.name.as_str()),
            ("shop", "web")
        );
        assert_eq!(binding.address, vec![10, 96, 0, 1]);
    }
}
