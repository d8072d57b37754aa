//! In-pod HBONE listener of a STRICT pod, with the real eBPF programs (root; fails loudly
//! otherwise): plaintext from outside the mesh to the pod is dropped in the kernel, while HBONE
//! from the same outside address to `<pod ip>:15008` reaches the tunnel's listener inside the
//! pod's namespace (admitted because mesh-node marks it with `in_pod.mark`) and the tunnel
//! delivers the stream to the pod, with no NAT anywhere; the app sees the caller's address as
//! its peer (the tunnel connects from inside the pod, transparently).
//!
//! Uses the `redirect_*` fixtures (pod `wfte-202`, addresses in 10.201.202.0/24).

#[path = "redirect_support/mod.rs"]
mod support;
mod tunnel_support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use mesh_core::proto::control::v1 as pb;
use mesh_node::{
    app::{self, Bound, Deps},
    config::{DEFAULT_IN_POD_MARK, DEFAULT_REPLY_MARK},
    enrollment::EnrollmentHandle,
    feed::MeshSnapshot,
    redirect::{self, EnrollMode},
    socket::SystemSockets,
    state::State,
};
use support::{connect_from, Pod, TestCgroup, DROPPED_WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_support::{node_settings, round_trip, spawn_echo, state_for, HboneCaller, TestCa, WAIT};

const APP_PORT: u16 = 8080;
/// An app that writes the peer address it sees and closes.
const PEER_PORT: u16 = 8081;

fn spawn_peer_reporter(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let _ = stream.write_all(peer.ip().to_string().as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
}

/// The node's view: one STRICT pod, `apps/app-0`, on this node.
fn node_state(pod: &Pod) -> State {
    let mut app = tunnel_support::pod("apps", "app-0", "app", &pod.ip.to_string(), "n1");
    app.mtls = pb::MtlsMode::Strict as i32;
    state_for("n1", &MeshSnapshot::of([app], []))
}

/// Plaintext from `outsider` to the pod's app port is dropped once strict enrollment applies
/// (it follows the namespace scan, so the first attempts may still connect).
fn wait_until_plaintext_dropped(outsider: Ipv4Addr, pod: &Pod) {
    let deadline = Instant::now() + WAIT;
    let app = SocketAddr::from((pod.ip, APP_PORT));
    while Instant::now() < deadline {
        match connect_from(outsider, app, DROPPED_WAIT) {
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return,
            Err(error) => panic!("plaintext refused instead of dropped: {error}"),
            Ok(_connected_before_enrollment) => continue,
        }
    }
    panic!("plaintext to the strict pod was never dropped within {WAIT:?}");
}

fn start_enrollment(node: &Bound, cgroup: &TestCgroup, pod: &Pod) -> EnrollmentHandle {
    let outbound = match node.outbound {
        SocketAddr::V4(addr) => addr,
        SocketAddr::V6(addr) => panic!("outbound listener is not IPv4: {addr}"),
    };
    let mut config = redirect::Config::new(&cgroup.relative, outbound);
    // The tunnel reaches the app from inside the pod (loopback): no source address is exempt.
    // What the binary sets from `in_pod.mark` (mesh_node::capture::redirect_config).
    config.tunnel_mark = DEFAULT_IN_POD_MARK;
    config.reply_mark = DEFAULT_REPLY_MARK;
    let wanted = BTreeMap::from([(IpAddr::V4(pod.ip), EnrollMode::Strict)]);
    EnrollmentHandle::start(&config, wanted, node.pod_scanner().results())
        .unwrap_or_else(|e| panic!("eBPF programs must load: {e}"))
}

#[test]
fn strict_pod_takes_hbone_on_its_in_pod_listener_and_drops_plaintext() {
    let _serial = support::serial();
    let pod = Pod::new(202).expect("create pod netns");
    let outsider = Ipv4Addr::new(10, 201, 202, 9);
    pod.add_host_address(outsider).expect("outsider address");
    let cgroup = TestCgroup::join("wfip-inpod-strict").expect("create and join test cgroup");
    let app_listener = pod.listen(APP_PORT).expect("app listener in the pod");
    app_listener.set_nonblocking(true).expect("nonblocking");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    spawn_echo(tokio::net::TcpListener::from_std(app_listener).expect("tokio listener"));
    let peer_listener = pod
        .listen(PEER_PORT)
        .expect("peer-reporting app in the pod");
    peer_listener.set_nonblocking(true).expect("nonblocking");
    spawn_peer_reporter(tokio::net::TcpListener::from_std(peer_listener).expect("tokio"));
    let ca = TestCa::new();
    let deps = Deps {
        sockets: Arc::new(SystemSockets),
        certs: ca.source(),
    };
    let node = runtime
        .block_on(app::build_with(
            node_settings("n1", "cluster.local"),
            node_state(&pod),
            Default::default(),
            deps,
        ))
        .expect("node tunnel");
    let mut listeners = node.in_pod_listeners();
    let in_pod = listeners.wait_for(|open| open.contains_key(&IpAddr::V4(pod.ip)));
    runtime
        .block_on(async { tokio::time::timeout(WAIT, in_pod).await })
        .expect("in-pod listener never opened")
        .expect("listener view closed");
    let enrollment = start_enrollment(&node, &cgroup, &pod);

    wait_until_plaintext_dropped(outsider, &pod);
    runtime.block_on(async {
        // From the outsider's address, which strict mode drops on any other port.
        let caller = HboneCaller::from_source(&ca, IpAddr::V4(outsider))
            .await
            .expect("client certificate");
        let mut tunnel = caller
            .call(IpAddr::V4(pod.ip), APP_PORT)
            .await
            .expect("hbone to the strict pod's in-pod listener");
        round_trip(&mut tunnel, b"strict and in-pod")
            .await
            .expect("echo through the tunnel");
        // The app sees the client's address, not the node's or the pod's own.
        let mut tunnel = caller
            .call(IpAddr::V4(pod.ip), PEER_PORT)
            .await
            .expect("hbone to the peer-reporting app");
        let mut seen = String::new();
        tokio::time::timeout(WAIT, tunnel.read_to_string(&mut seen))
            .await
            .expect("peer report timed out")
            .expect("peer report");
        assert_eq!(seen, outsider.to_string(), "the app's peer address");
        // The tunnel's own ports are not destinations (15006 would loop into the tunnel).
        for port in [15006, 15008, 15020] {
            let refused = caller.call(IpAddr::V4(pod.ip), port).await;
            assert!(refused.is_err(), "CONNECT to reserved port {port} accepted");
        }
    });
    let counters = enrollment.counters().read().expect("counters");
    assert!(counters.strict_dropped >= 1, "{counters:?}");
    assert!(counters.strict_allowed >= 1, "{counters:?}");
    let metrics = node.metrics().encode();
    assert!(
        metrics.contains("destination_workload=\"app-0\""),
        "inbound not recorded by the tunnel: {metrics}"
    );

    runtime.block_on(async {
        tokio::time::timeout(WAIT, node.shutdown())
            .await
            .expect("node drain hung");
        tokio::time::timeout(WAIT, enrollment.shutdown())
            .await
            .expect("enrollment shutdown hung");
    });
    drop(cgroup);
}
