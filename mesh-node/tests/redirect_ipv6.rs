//! IPv6 with real eBPF in network namespaces (needs root; fails loudly otherwise): an enrolled
//! pod's native IPv6 connect goes to the tunnel's IPv6 listener and `IP6T_SO_ORIGINAL_DST`
//! returns the original destination; a non-enrolled pod is left alone; a strict pod accepts IPv6
//! connection attempts from the node's IPv6 address and on the HBONE port only.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener},
    time::Duration,
};

use mesh_node::redirect::{Config, EnrollMode, Redirect};
use support::{topology::DirectPair, *};

/// The tunnel's `SO_MARK` (mesh-node's default in-pod mark).
const TUNNEL_MARK: u32 = 0x539;

/// Tunnel listeners on both families with one port, as mesh-node binds its outbound listener.
fn dual_stack_tunnel(pod: &Pod) -> (TcpListener, TcpListener) {
    let tunnel6 = listen_on6(pod.host_ip6(), 0);
    let port = v6(&tunnel6).port();
    let tunnel4 = TcpListener::bind(SocketAddrV4::new(pod.host_ip, port)).expect("same port v4");
    (tunnel4, tunnel6)
}

#[test]
fn enrolled_pod_ipv6_connect_is_redirected_and_original_destination_answered() {
    let _serial = serial();
    let pod = Pod::new(61).expect("pod");
    pod.add_ipv6().expect("pod ipv6");
    let bystander = Pod::new(62).expect("bystander");
    bystander.add_ipv6().expect("bystander ipv6");
    let cg = TestCgroup::join("wfte-ipv6-redirect").expect("cgroup");
    let (tunnel4, tunnel6) = dual_stack_tunnel(&pod);
    let mut config = Config::new(&cg.relative, v4(&tunnel4));
    config.outbound_v6 = Some(v6(&tunnel6));
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let server = listen_on6(pod.host_ip6(), 0);
    let original = v6(&server);

    let mut client = pod
        .connect(SocketAddr::V6(original))
        .expect("enrolled pod connects over IPv6 (to the tunnel)");
    let mut at_tunnel = accept_within(&tunnel6, WAIT)
        .expect("poll")
        .expect("tunnel's IPv6 listener accepts the redirected connect");
    assert_eq!(
        original_dst6(&at_tunnel).expect("IP6T_SO_ORIGINAL_DST"),
        original
    );
    assert_eq!(
        client.peer_addr().expect("getpeername"),
        SocketAddr::V6(original)
    );
    assert_eq!(at_tunnel.peer_addr().expect("peer").ip(), pod.ip6());
    assert_carries(&mut client, &mut at_tunnel, b"ipv6 through the tunnel");
    assert!(accept_within(&server, Duration::ZERO)
        .expect("poll")
        .is_none());
    assert!(accept_within(&tunnel4, Duration::ZERO)
        .expect("poll")
        .is_none());

    let bystander_server = listen_on6(bystander.host_ip6(), 0);
    let mut direct = bystander
        .connect(SocketAddr::V6(v6(&bystander_server)))
        .expect("non-enrolled pod connects");
    let mut got = accept_within(&bystander_server, WAIT)
        .expect("poll")
        .expect("non-enrolled pod reaches its real server");
    assert_carries(&mut direct, &mut got, b"bystander");
    assert!(accept_within(&tunnel6, Duration::ZERO)
        .expect("poll")
        .is_none());
    let c = redirect.counters().expect("counters");
    assert_eq!((c.connect_redirected, c.orig_dst_answered), (1, 1), "{c:?}");
    drop(redirect);
    drop(cg);
}

#[test]
fn ipv6_is_left_alone_without_an_ipv6_listener() {
    let _serial = serial();
    let pod = Pod::new(63).expect("pod");
    pod.add_ipv6().expect("pod ipv6");
    let cg = TestCgroup::join("wfte-ipv6-off").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let mut redirect = Redirect::load(&Config::new(&cg.relative, v4(&tunnel))).expect("load");
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let server = listen_on6(pod.host_ip6(), 0);
    let mut client = pod
        .connect(SocketAddr::V6(v6(&server)))
        .expect("IPv6 connect");
    let mut got = accept_within(&server, WAIT)
        .expect("poll")
        .expect("no IPv6 listener configured: the connect goes direct");
    assert_carries(&mut client, &mut got, b"not redirected");
    assert_eq!(redirect.counters().expect("counters").connect_redirected, 0);
    drop(redirect);
    drop(cg);
}

#[test]
fn strict_pod_accepts_ipv6_from_the_probe_and_on_hbone_only() {
    let _serial = serial();
    let pair = DirectPair::new(64, 65).expect("pods");
    pair.add_ipv6().expect("ipv6");
    let (probe_ip, other_host_ip) = (ula(64, 3), ula(64, 4));
    for ip in [probe_ip, other_host_ip] {
        pair.server.add_host_address6(ip).expect("host address");
    }
    let kubelet = bound_socket(probe_ip).expect("probe socket outside the pods' cgroup");
    let cg = TestCgroup::join("wfte-ipv6-strict").expect("cgroup");
    let (tunnel4, tunnel6) = dual_stack_tunnel(&pair.server);
    let mut config = Config::new(&cg.relative, v4(&tunnel4));
    config.outbound_v6 = Some(v6(&tunnel6));
    config.probe_source_v6 = Some(probe_ip);
    config.tunnel_mark = TUNNEL_MARK;
    let mut redirect = Redirect::load(&config).expect("load");
    redirect
        .enroll(pair.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    let app = pair.server.listen6(8080).expect("app listens on [::]");
    let hbone = pair.server.listen6(15008).expect("in-pod HBONE listener");
    socket2::SockRef::from(&hbone)
        .set_mark(TUNNEL_MARK)
        .expect("SO_MARK as mesh-node sets it on in-pod listeners");
    let app_addr = SocketAddr::V6(SocketAddrV6::new(pair.server.ip6(), 8080, 0, 0));

    let mut client = connect_bound(kubelet, app_addr, WAIT)
        .unwrap_or_else(|e| panic!("the probe's IPv6 address connects: {e}"));
    let mut accepted = accept_within(&app, WAIT)
        .expect("poll")
        .expect("accepted from the probe");
    assert_carries(&mut client, &mut accepted, b"probe");

    for (source, who) in [
        (other_host_ip, "another IPv6 source"),
        (pair.server.host_ip6(), "the node's own IPv6 address"),
    ] {
        let attempt = connect_from(source, app_addr, DROPPED_WAIT);
        assert_dropped(attempt, who);
    }
    assert_bind_refused(probe_ip, "a pod binding the IPv6 probe address");
    let direct = |port| SocketAddr::V6(SocketAddrV6::new(pair.server_end_v6(), port, 0, 0));
    let outsider_ip = pair.outsider.ip6();
    let attempt = pair
        .outsider
        .run_in(|| connect_from(outsider_ip, direct(8080), DROPPED_WAIT));
    assert_dropped(attempt, "IPv6 plaintext that bypassed the tunnel");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());

    let mut client = pair
        .outsider
        .run_in(|| connect_from(outsider_ip, direct(15008), WAIT))
        .expect("IPv6 HBONE from another pod connects");
    let mut accepted = accept_within(&hbone, WAIT)
        .expect("poll")
        .expect("HBONE listener accepts");
    assert_carries(&mut client, &mut accepted, b"hbone v6");
    let c = redirect.counters().expect("counters");
    assert!(c.strict_dropped >= 3 && c.strict_allowed >= 2, "{c:?}");
    drop(redirect);
    drop(cg);
}
