//! Kubelet probes with real eBPF (needs root): a TCP connect from the kubelet's cgroup to an
//! enrolled (steered) pod leaves from the probe source address, so the pod's app sees the probe
//! address and a STRICT pod admits it; the kubelet's connects elsewhere keep the source the
//! kernel picks. IPv4 and IPv6. That no pod can bind the probe address is in `redirect_strict`
//! and `redirect_ipv6`.

#[path = "redirect_support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use mesh_node::redirect::{Config, Redirect};
use support::*;

#[test]
fn kubelet_connects_to_enrolled_pods_leave_from_the_probe_address() {
    let _serial = serial();
    let pod = Pod::new(75).expect("pod");
    pod.add_ipv6().expect("ipv6");
    let probe4 = Ipv4Addr::new(10, 201, 75, 3);
    // Outside the veth's /64, so the kernel never picks it as a source by itself.
    let probe6 = ula(175, 3);
    pod.add_host_address(probe4).expect("probe v4");
    let probe6_host = format!("{probe6}/128");
    run(
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &probe6_host,
            "dev",
            &pod.host_if,
            "nodad",
        ],
    )
    .expect("probe v6");
    let pods = TestCgroup::create("wfte-probe-pods").expect("pods cgroup");
    // This process plays the kubelet.
    let kubelet = TestCgroup::join("wfte-probe-kubelet").expect("kubelet cgroup");
    let tunnel = listen_on(pod.host_ip);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.probe_source_v4 = Some(probe4);
    config.probe_source_v6 = Some(probe6);
    config.kubelet_cgroup = Some(kubelet.relative.clone());
    let redirect = Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF must load: {e}"));
    let app = pod.listen6(8080).expect("app on [::]:8080");
    let node_listener = TcpListener::bind((IpAddr::from(pod.host_ip), 0)).expect("node listener");

    for (ip, probe) in [
        (IpAddr::from(pod.ip), IpAddr::from(probe4)),
        (IpAddr::from(pod.ip6()), IpAddr::from(probe6)),
    ] {
        let to_app = SocketAddr::new(ip, 8080);
        // Not enrolled: the kubelet's connect keeps the node's source.
        let mut client = connect(to_app).expect("kubelet reaches an unenrolled pod");
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("app accepts");
        assert_ne!(got.peer_addr().unwrap().ip().to_canonical(), probe);
        assert_carries(&mut client, &mut got, b"unenrolled");

        let steering = redirect.steering();
        steering
            .steer(pod.cookie(), pod.netns(), ip)
            .expect("steer");
        let before = redirect.counters().expect("counters").probe_bound;
        let mut client = connect(to_app).expect("probe connects");
        assert_eq!(
            client.local_addr().unwrap().ip(),
            probe,
            "bound to the probe address"
        );
        let mut got = accept_within(&app, WAIT)
            .expect("poll")
            .expect("probe on the app");
        assert_eq!(got.peer_addr().unwrap().ip().to_canonical(), probe);
        assert_carries(&mut client, &mut got, b"probe");
        let after = redirect.counters().expect("counters").probe_bound;
        assert!(after > before, "probe binds counted: {before} -> {after}");

        // Elsewhere (a node address), the kubelet's source is the kernel's choice.
        if ip.is_ipv4() {
            let other = connect(node_listener.local_addr().unwrap()).expect("node listener");
            assert_ne!(other.local_addr().unwrap().ip(), probe);
        }
        steering.release(pod.cookie(), ip).expect("release");
        let client = connect(to_app).expect("released pod");
        assert_ne!(
            client.local_addr().unwrap().ip(),
            probe,
            "released: no probe source"
        );
        let _ = accept_within(&app, WAIT);
    }
    drop(redirect);
    drop(kubelet);
    drop(pods);
}

#[test]
fn a_missing_kubelet_cgroup_costs_the_probes_not_the_node() {
    let _serial = serial();
    let pods = TestCgroup::create("wfte-probe-missing").expect("pods cgroup");
    let tunnel = listen_on(Ipv4Addr::LOCALHOST);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.kubelet_cgroup = Some("wfte-no-such-kubelet.slice".into());
    let redirect = Redirect::load(&config).expect("loads without the probe programs");
    assert_eq!(redirect.counters().expect("counters").probe_bound, 0);
    drop(redirect);
    drop(pods);
}
