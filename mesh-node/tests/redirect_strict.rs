//! Strict inbound with real eBPF (needs root; fails loudly otherwise): a STRICT pod's own
//! listeners accept plaintext from the kubelet probe address only; the node's own address (a
//! node process, a hostNetwork pod) and another pod reaching it directly (plaintext, bypassing
//! the tunnel) cannot connect, except to the tunnel's own HBONE listener (HBONE port and tunnel
//! mark): an app's unmarked listener on 15008 stays protected. Capture mode does not filter.
//! Per-port modes: `redirect_port_mtls`. The probe address itself: `redirect_probe`.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use mesh_node::redirect::{Config, EnrollMode, Redirect};
use support::{topology::DirectPair, *};

#[test]
fn strict_pod_rejects_plaintext_that_bypassed_the_tunnel() {
    let _serial = serial();
    let topo = DirectPair::new(21, 22).expect("pods");
    let probe_ip = Ipv4Addr::new(10, 201, 21, 3);
    let other_host_ip = Ipv4Addr::new(10, 201, 21, 4);
    topo.server
        .add_host_address(probe_ip)
        .expect("probe address");
    topo.server
        .add_host_address(other_host_ip)
        .expect("other address");
    // The kubelet's probe socket: bound outside the pods' cgroup.
    let kubelet = bound_socket(probe_ip).expect("probe socket outside the pods' cgroup");
    let cg = TestCgroup::join("wfte-strict").expect("cgroup");
    let tunnel = listen_on(topo.server.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.probe_source_v4 = Some(probe_ip);
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    let app = topo
        .server
        .listen(8080)
        .expect("app listens in the strict pod");
    let app_addr = SocketAddr::V4(SocketAddrV4::new(topo.server.ip, 8080));

    let mut client = connect_bound(kubelet, app_addr, WAIT)
        .unwrap_or_else(|e| panic!("probe must connect: {e}"));
    let mut accepted = accept_within(&app, WAIT)
        .expect("poll")
        .expect("probe not accepted");
    assert_carries(&mut client, &mut accepted, b"kubelet probe");
    let node = connect_from(topo.server.host_ip, app_addr, DROPPED_WAIT);
    assert_dropped(
        node,
        "the node's own address (node process, hostNetwork pod)",
    );

    let via_outsider = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 201, 22, 1), 8080));
    let outsider = topo
        .outsider
        .run_in(|| connect_from(Ipv4Addr::new(10, 201, 22, 2), via_outsider, DROPPED_WAIT));
    assert_dropped(outsider, "direct plaintext from another pod");
    let other = connect_from(other_host_ip, app_addr, DROPPED_WAIT);
    assert_dropped(other, "another node address");
    // A pod (or hostNetwork pod: same cgroup tree) cannot take the probe address for itself.
    assert_bind_refused(probe_ip, "a pod binding the probe address");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    let counters = redirect.counters().expect("counters");
    assert!(
        counters.strict_dropped >= 3,
        "strict drops counted: {counters:?}"
    );
    assert!(counters.probe_bind_refused >= 1, "{counters:?}");

    // The same pod in capture mode accepts the outsider: the filter is strict-only.
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Capture)
        .expect("re-enroll as capture");
    let mut client = topo
        .outsider
        .run_in(|| connect_from(Ipv4Addr::new(10, 201, 22, 2), via_outsider, WAIT))
        .expect("capture mode does not filter inbound");
    let mut accepted = accept_within(&app, WAIT)
        .expect("poll")
        .expect("accepted in capture mode");
    assert_carries(&mut client, &mut accepted, b"capture");
    drop(redirect);
    drop(cg);
}

/// The tunnel's `SO_MARK` in these tests (mesh-node's default in-pod mark).
const TUNNEL_MARK: u32 = 0x539;

/// A listener on `port` inside the pod, with `SO_MARK` `mark` when non-zero (as mesh-node marks
/// its in-pod HBONE listeners).
fn listen_marked(pod: &Pod, port: u16, mark: u32) -> std::net::TcpListener {
    let listener = pod.listen(port).expect("listener in the pod");
    if mark != 0 {
        socket2::SockRef::from(&listener)
            .set_mark(mark)
            .expect("SO_MARK (CAP_NET_ADMIN)");
    }
    listener
}

#[test]
fn strict_pod_accepts_hbone_from_anywhere_and_nothing_else_in_plaintext() {
    let _serial = serial();
    let topo = DirectPair::new(23, 24).expect("pods");
    let cg = TestCgroup::join("wfte-strict-hbone").expect("cgroup");
    let tunnel = listen_on(topo.server.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.tunnel_mark = TUNNEL_MARK;
    assert_eq!(config.hbone_port, 15008, "HBONE port defaults to 15008");
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    let outsider_ip = Ipv4Addr::new(10, 201, 24, 2);
    let via_outsider =
        |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 201, 24, 1), port));

    // An application's own listener on the HBONE port (unmarked, or another mark) gets no
    // exception.
    for mark in [0, TUNNEL_MARK + 1] {
        let app_hbone = listen_marked(&topo.server, 15008, mark);
        let attempt = topo
            .outsider
            .run_in(|| connect_from(outsider_ip, via_outsider(15008), DROPPED_WAIT));
        assert_dropped(
            attempt,
            &format!("plaintext to an app's listener on 15008, mark {mark}"),
        );
        assert!(accept_within(&app_hbone, Duration::ZERO)
            .expect("poll")
            .is_none());
    }

    // The tunnel's in-pod HBONE listener: a socket of this (cgroup-attached) process that lives
    // in the strict pod's network namespace and carries the tunnel mark, as mesh-node creates it.
    let hbone = listen_marked(&topo.server, 15008, TUNNEL_MARK);
    let app = topo.server.listen(8080).expect("app listener");

    let mut client = topo
        .outsider
        .run_in(|| connect_from(outsider_ip, via_outsider(15008), WAIT))
        .expect("another pod reaches the strict pod's HBONE port");
    let mut accepted = accept_within(&hbone, WAIT)
        .expect("poll")
        .expect("HBONE listener accepts");
    assert_carries(&mut client, &mut accepted, b"hbone");
    assert_carries(&mut accepted, &mut client, b"established both ways");

    let attempt = topo
        .outsider
        .run_in(|| connect_from(outsider_ip, via_outsider(8080), DROPPED_WAIT));
    assert_dropped(attempt, "plaintext to the app port");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    let c = redirect.counters().expect("counters");
    assert!(c.strict_allowed >= 1, "{c:?}");
    assert!(c.strict_dropped >= 1, "{c:?}");

    // HBONE port 0, or tunnel mark 0, turns the exception off: the same connect is dropped.
    drop(redirect);
    for (port, mark) in [(0, TUNNEL_MARK), (15008, 0)] {
        config.hbone_port = port;
        config.tunnel_mark = mark;
        let mut redirect = Redirect::load(&config).expect("reload");
        redirect
            .enroll(topo.server.cookie(), EnrollMode::Strict)
            .expect("enroll strict");
        let attempt = topo
            .outsider
            .run_in(|| connect_from(outsider_ip, via_outsider(15008), DROPPED_WAIT));
        assert_dropped(attempt, &format!("hbone_port {port}, tunnel_mark {mark}"));
        drop(redirect);
    }
    drop(hbone);
    drop(cg);
}
