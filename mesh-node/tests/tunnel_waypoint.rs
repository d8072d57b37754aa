//! A service bound to a waypoint: node a sends its traffic over HBONE to the waypoint (here a
//! plain `mesh_core::hbone::Server`, as the waypoint engineer will use it) with the service VIP
//! as `:authority` and the client's identity.

mod tunnel_support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use mesh_core::{
    drain,
    hbone::{Accepted, ConnectRequest, Rejection, Server},
    identity::SpiffeId,
    proto::build,
    tls::{self, IdentityCert},
};
use mesh_node::feed::MeshSnapshot;
use tokio::net::{TcpListener, TcpStream};
use tunnel_support::*;

type Seen = Arc<Mutex<Vec<(SocketAddr, SpiffeId)>>>;

/// A waypoint that records each CONNECT and forwards it to `upstream`.
async fn waypoint(
    ca: &TestCa,
    upstream: SocketAddr,
    seen: Seen,
) -> (SocketAddr, drain::DrainTrigger) {
    let id: SpiffeId = "spiffe://cluster.local/ns/data/sa/waypoint"
        .parse()
        .unwrap();
    let cert = IdentityCert::new(&ca.source().issue(&id).unwrap()).unwrap();
    let handler = move |request: ConnectRequest| {
        seen.lock()
            .unwrap()
            .push((request.authority, request.peer_identity.clone()));
        async move {
            match TcpStream::connect(upstream).await {
                Ok(stream) => Ok(Accepted::proxy(stream)),
                Err(e) => Err(Rejection::Unavailable(e.to_string())),
            }
        }
    };
    let server = Server::new(
        Arc::new(tls::server_config(cert).unwrap()),
        Arc::new(handler),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, watch) = drain::channel();
    tokio::spawn(server.serve(listener, watch));
    (addr, trigger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bound_to_waypoint_goes_through_it_with_the_vip_authority() {
    let ca = Arc::new(TestCa::new());
    let behind_waypoint = echo_pod("127.0.0.30").await;
    let seen = Seen::default();
    let (wp_addr, _wp_drain) = waypoint(&ca, behind_waypoint, seen.clone()).await;
    // The waypoint's pod (on a third node) listens on wp_addr: the node dials the pod, not the
    // waypoint Service's VIP.
    let edit = move |snapshot: &mut MeshSnapshot| {
        let wp_at = (wp_addr.ip(), "node-w");
        let vip = "10.96.0.9".parse().unwrap();
        let (wp_pod, wp) = build::waypoint("data", "wp", "waypoint", wp_at, vip);
        let cache = &snapshot.workloads["data/cache-0"];
        let mut reviews = build::service(
            "data",
            "reviews",
            "10.96.0.2".parse().unwrap(),
            &[(9080, 0)],
            &[cache],
        );
        reviews.waypoint = Some(build::waypoint_ref(&wp, wp_addr.port()));
        snapshot.insert_workload(wp_pod);
        snapshot.insert_service(wp);
        snapshot.insert_service(reviews);
    };
    let options = MeshOptions {
        edit: Some(Box::new(edit)),
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with_ca(options, ca).await;
    let vip: SocketAddr = "10.96.0.2:9080".parse().unwrap();
    let mut stream = mesh.connect(vip).await;
    round_trip(&mut stream, b"via waypoint").await.unwrap();
    let frontend: SpiffeId = "spiffe://cluster.local/ns/web/sa/frontend".parse().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(vip, frontend)]);
    // Traffic to the pod itself (no waypoint on the workload) still goes straight to node b.
    let mut direct = mesh.connect(mesh.cache).await;
    round_trip(&mut direct, b"direct").await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "pod traffic must not hit the waypoint"
    );
}
