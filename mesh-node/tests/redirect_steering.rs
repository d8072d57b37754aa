//! Inbound steering with real eBPF (`sk_lookup` in the pod's network namespace; needs root):
//! once a pod is steered, every inbound TCP connection attempt to it, whatever its port, lands on
//! the tunnel's in-pod listeners (HBONE port on the HBONE listener, every other port on the
//! plaintext one) with the original destination intact in `getsockname` and the client's
//! address in `getpeername`; while the listeners are missing, attempts are refused (fail closed);
//! kubelet probes (the probe source address), the pod's connections to itself and the tunnel's
//! own transparent connections to the app (`pod_net`) reach the app;
//! released, the pod is reached directly again. IPv4 and IPv6.
//!
//! Before this, a PERMISSIVE pod's app was reached directly by any plaintext caller, with no
//! policy on the way: the first assertion after `steer` fails on such code.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    os::fd::AsFd,
    time::Duration,
};

use mesh_node::{
    pod_net,
    redirect::{Config, EnrollMode, EnrollPolicy, ListenerKind, Redirect},
};

const REPLY_MARK: u32 = 0x53a;
use support::{topology::DirectPair, *};

struct Case {
    /// The pod address the outsider dials (the server's end of the direct link).
    pod: IpAddr,
    outsider: IpAddr,
    probe: IpAddr,
    /// A client address on another node.
    client_elsewhere: IpAddr,
    /// The pod's address on its veth to the node, and the node's end of it.
    node_side: (IpAddr, IpAddr),
}

#[test]
fn every_inbound_port_is_steered_to_the_tunnel_and_missing_listeners_fail_closed() {
    let _serial = serial();
    let pair = DirectPair::new(73, 74).expect("pods");
    pair.add_ipv6().expect("ipv6");
    let probe4 = Ipv4Addr::new(10, 201, 73, 3);
    let probe6 = ula(73, 3);
    pair.server.add_host_address(probe4).expect("probe v4");
    pair.server.add_host_address6(probe6).expect("probe v6");
    let pods = TestCgroup::create("wfte-steer").expect("cgroup");
    let tunnel = listen_on(pair.server.host_ip);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.probe_source_v4 = Some(probe4);
    config.probe_source_v6 = Some(probe6);
    let redirect = Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF must load: {e}"));
    let steering = redirect.steering();
    let app = pair
        .server
        .listen6(8080)
        .expect("app on [::]:8080 (dual stack)");

    for case in [
        Case {
            pod: pair.server_end_v4().into(),
            outsider: pair.outsider.ip.into(),
            probe: probe4.into(),
            client_elsewhere: Ipv4Addr::new(10, 99, 0, 7).into(),
            node_side: (pair.server.ip.into(), pair.server.host_ip.into()),
        },
        Case {
            pod: pair.server_end_v6().into(),
            outsider: pair.outsider.ip6().into(),
            probe: probe6.into(),
            client_elsewhere: "fd00:99::7".parse().unwrap(),
            node_side: (pair.server.ip6().into(), pair.server.host_ip6().into()),
        },
    ] {
        let pod = case.pod;
        let dial = |port: u16, wait: Duration| {
            let (from, to) = (case.outsider, SocketAddr::new(pod, port));
            pair.outsider.run_in(move || connect_from(from, to, wait))
        };
        // Not steered yet: plaintext reaches the app directly (what a PERMISSIVE pod was open to).
        let mut direct = dial(8080, WAIT).expect("unsteered pod reachable");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("app accepts");
        assert_carries(&mut direct, &mut got, b"direct");

        let before = redirect.counters().expect("counters");
        steering
            .steer(pair.server.cookie(), pair.server.netns(), pod)
            .unwrap_or_else(|e| panic!("steer {pod}: {e}"));
        // Steered but no listener registered yet (tunnel starting): refused on every port, though
        // the app listens on 8080. Fail closed.
        for port in [8080, 15008, 9] {
            assert_refused(dial(port, WAIT), &format!("{pod}:{port} with no listener"));
        }
        assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
        let after = redirect.counters().expect("counters");
        assert!(
            after.inbound_no_listener >= before.inbound_no_listener + 3,
            "drops counted: {after:?}"
        );

        // The tunnel's listeners, inside the pod, on their own ports.
        let plaintext = pair
            .server
            .run_in(|| TcpListener::bind((pod, 15006)))
            .expect("plaintext");
        let hbone = pair
            .server
            .run_in(|| TcpListener::bind((pod, 15008)))
            .expect("hbone");
        steering
            .listener(pod, ListenerKind::Plaintext, plaintext.as_fd())
            .expect("register");
        steering
            .listener(pod, ListenerKind::Hbone, hbone.as_fd())
            .expect("register");

        for port in [8080u16, 9, 443, 15006, 65535] {
            let mut client = dial(port, WAIT).unwrap_or_else(|e| panic!("{pod}:{port}: {e}"));
            let mut got = accept_within(&plaintext, WAIT)
                .expect("poll")
                .unwrap_or_else(|| panic!("{pod}:{port} not on the plaintext listener"));
            assert_eq!(
                got.local_addr().unwrap(),
                SocketAddr::new(pod, port),
                "original destination exact"
            );
            assert_eq!(
                got.peer_addr().unwrap().ip(),
                case.outsider,
                "client address"
            );
            assert_carries(&mut client, &mut got, b"steered");
        }
        let mut client = dial(15008, WAIT).expect("hbone port");
        let mut got = accept_within(&hbone, WAIT)
            .expect("poll")
            .expect("on the HBONE listener");
        assert_eq!(got.local_addr().unwrap(), SocketAddr::new(pod, 15008));
        assert_carries(&mut client, &mut got, b"hbone");
        assert!(
            accept_within(&app, Duration::ZERO).expect("poll").is_none(),
            "app bypassed"
        );

        // The tunnel's own connection to the app, from inside the pod with a client's address
        // (mesh_node::pod_net): over loopback, so not steered back to the tunnel.
        let pod_file = std::fs::File::open(format!("/run/netns/{}", pair.server.name)).unwrap();
        pair.server
            .run_in(|| pod_net::prepare(pod, REPLY_MARK))
            .expect("return path");
        let net = pod_net::PodNet::new(pod_file, REPLY_MARK);
        let client_ip = case.client_elsewhere;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let transparent = runtime.block_on(async {
            tokio::time::timeout(
                WAIT,
                net.connect(SocketAddr::new(pod, 8080), Some(client_ip)),
            )
            .await
            .expect("transparent connect timed out")
            .expect("transparent connect")
        });
        let got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("tunnel's dial on the app");
        assert_eq!(got.peer_addr().unwrap().ip().to_canonical(), client_ip);
        drop(transparent);

        // The kubelet's probe (from outside the pods' cgroup) and the pod's own loopback traffic
        // reach the app itself; the node's own address gets no such exception.
        let (pod_on_veth, node) = case.node_side;
        let to_app = SocketAddr::new(pod_on_veth, 8080);
        assert_refused(
            connect_from(node, to_app, WAIT),
            "the node's address to an address with no listener",
        );
        let mut probe = connect_from(case.probe, to_app, WAIT).expect("probe reaches the pod");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("probe on the app");
        assert_eq!(got.peer_addr().unwrap().ip().to_canonical(), case.probe);
        assert_carries(&mut probe, &mut got, b"probe");
        let loopback: IpAddr = match pod {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let mut own = pair
            .server
            .connect(SocketAddr::new(loopback, 8080))
            .expect("loopback");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("loopback on the app");
        assert_carries(&mut own, &mut got, b"loopback");
        let mut own = pair
            .server
            .connect(SocketAddr::new(pod, 8080))
            .expect("own address");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("own address on the app");
        assert_carries(&mut own, &mut got, b"to itself");

        // Released (the pod left the mesh): direct again, the tunnel's listeners see nothing.
        steering
            .release(pair.server.cookie(), pod)
            .expect("release");
        let mut direct = dial(8080, WAIT).expect("released pod reachable");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("app accepts again");
        assert_carries(&mut direct, &mut got, b"released");
        assert!(accept_within(&plaintext, Duration::ZERO)
            .expect("poll")
            .is_none());
    }
    let counters = redirect.counters().expect("counters");
    assert!(counters.inbound_steered >= 12, "{counters:?}");
    assert!(steering.steered().is_empty());
    drop(redirect);
    drop(pods);
}

fn assert_refused(attempt: std::io::Result<std::net::TcpStream>, what: &str) {
    match attempt {
        Ok(stream) => panic!("{what}: connected to {:?}", stream.peer_addr()),
        Err(error) => assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{what}: refused by sk_lookup, not {error}"
        ),
    }
}

/// In Kubernetes mesh-node's own pod is inside the pods' cgroup, so the strict `cgroup_skb`
/// program judges the tunnel's in-pod listeners too (this process joins the cgroup to be in the
/// same place). A STRICT pod with a PERMISSIVE port: whatever the port, the connection attempt
/// is steered to the tunnel's marked plaintext listener and admitted there (the tunnel enforces
/// each original port's mode); with no plaintext port configured it would be dropped, and the
/// PERMISSIVE port unreachable.
#[test]
fn strict_pods_admit_steered_plaintext_into_the_tunnels_marked_listener_only() {
    let _serial = serial();
    let pair = DirectPair::new(76, 77).expect("pods");
    let pods = TestCgroup::join("wfte-steer-strict").expect("cgroup");
    let tunnel = listen_on(pair.server.host_ip);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.tunnel_mark = TUNNEL_MARK;
    config.plaintext_port = 15006;
    let mut redirect = Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF must load: {e}"));
    let policy = EnrollPolicy::new(EnrollMode::Strict, [(9090, EnrollMode::Capture)]);
    redirect
        .enroll(pair.server.cookie(), policy)
        .expect("enroll strict with a permissive port");
    let pod = IpAddr::from(pair.server_end_v4());
    let listener = |port: u16, mark: u32| {
        let socket = pair
            .server
            .run_in(|| TcpListener::bind((pod, port)))
            .expect("listener in the pod");
        if mark != 0 {
            socket2::SockRef::from(&socket)
                .set_mark(mark)
                .expect("SO_MARK (CAP_NET_ADMIN)");
        }
        socket
    };
    let steering = redirect.steering();
    steering
        .steer(pair.server.cookie(), pair.server.netns(), pod)
        .expect("steer");
    let outsider = IpAddr::from(pair.outsider.ip);
    let dial = |port: u16, wait: Duration| {
        let to = SocketAddr::new(pod, port);
        pair.outsider
            .run_in(move || connect_from(outsider, to, wait))
    };

    // An unmarked listener standing in as the plaintext listener gets nothing past the strict
    // program: only the tunnel's mark opens the exception.
    let unmarked = listener(15006, 0);
    steering
        .listener(pod, ListenerKind::Plaintext, unmarked.as_fd())
        .expect("register");
    assert_dropped(
        dial(9090, DROPPED_WAIT),
        "plaintext into an unmarked listener",
    );
    drop(unmarked);

    let plaintext = listener(15006, TUNNEL_MARK);
    steering
        .listener(pod, ListenerKind::Plaintext, plaintext.as_fd())
        .expect("register");
    for port in [9090u16, 8080] {
        let mut client = dial(port, WAIT).unwrap_or_else(|e| panic!("port {port}: {e}"));
        let mut got = accept_within(&plaintext, WAIT)
            .expect("poll")
            .unwrap_or_else(|| panic!("port {port} not on the tunnel's plaintext listener"));
        assert_eq!(got.local_addr().unwrap(), SocketAddr::new(pod, port));
        assert_carries(&mut client, &mut got, b"to the tunnel");
    }
    steering
        .release(pair.server.cookie(), pod)
        .expect("release");
    drop(plaintext);
    drop(redirect);
    drop(pods);
}

const TUNNEL_MARK: u32 = 0x539;
