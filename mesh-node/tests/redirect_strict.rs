//! Strict inbound with real eBPF (needs root; fails loudly otherwise): a STRICT pod accepts TCP
//! from the tunnel's node address and the kubelet probe address only; another pod reaching it
//! directly (plaintext, bypassing the tunnel) cannot connect. Capture mode does not filter.

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
    let cg = TestCgroup::join("wfte-strict").expect("cgroup");
    let tunnel = listen_on(topo.server.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.tunnel_source_v4 = Some(topo.server.host_ip);
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

    for (source, who) in [
        (topo.server.host_ip, "tunnel node address"),
        (probe_ip, "kubelet probe"),
    ] {
        let mut client = connect_from(source, app_addr, WAIT)
            .unwrap_or_else(|e| panic!("{who} must connect: {e}"));
        let mut accepted = accept_within(&app, WAIT)
            .expect("poll")
            .unwrap_or_else(|| panic!("{who} not accepted"));
        assert_carries(&mut client, &mut accepted, who.as_bytes());
    }

    let via_outsider = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 201, 22, 1), 8080));
    let outsider = topo
        .outsider
        .run_in(|| connect_from(Ipv4Addr::new(10, 201, 22, 2), via_outsider, DROPPED_WAIT));
    assert_dropped(outsider, "direct plaintext from another pod");
    let other = connect_from(other_host_ip, app_addr, DROPPED_WAIT);
    assert_dropped(other, "another node address");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    let dropped = redirect.counters().expect("counters").strict_dropped;
    assert!(dropped >= 2, "strict drops counted: {dropped}");

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

#[test]
fn strict_pod_accepts_hbone_from_anywhere_and_nothing_else_in_plaintext() {
    let _serial = serial();
    let topo = DirectPair::new(23, 24).expect("pods");
    let cg = TestCgroup::join("wfte-strict-hbone").expect("cgroup");
    let tunnel = listen_on(topo.server.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.tunnel_source_v4 = Some(topo.server.host_ip);
    assert_eq!(config.hbone_port, 15008, "HBONE port defaults to 15008");
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    // The tunnel's in-pod HBONE listener: a socket of this (cgroup-attached) process that lives
    // in the strict pod's network namespace, as mesh-node creates it.
    let hbone = topo.server.listen(15008).expect("in-pod HBONE listener");
    let app = topo.server.listen(8080).expect("app listener");
    let outsider_ip = Ipv4Addr::new(10, 201, 24, 2);
    let via_outsider =
        |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 201, 24, 1), port));

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

    // HBONE port 0 turns the exception off: the same connect is dropped.
    drop(redirect);
    config.hbone_port = 0;
    let mut redirect = Redirect::load(&config).expect("reload");
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    let attempt = topo
        .outsider
        .run_in(|| connect_from(outsider_ip, via_outsider(15008), DROPPED_WAIT));
    assert_dropped(attempt, "HBONE port without the exception");
    drop(redirect);
    drop(cg);
}
