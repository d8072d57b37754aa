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
use support::*;

/// How long a dropped SYN is given to (not) connect: the drop is silent, so only a timeout shows it.
const DROPPED_WAIT: Duration = Duration::from_millis(700);

/// Two pods: `server` with a veth to the host, and `outsider` wired straight to `server`.
struct Topology {
    server: Pod,
    outsider: Pod,
}

impl Topology {
    fn new(server_subnet: u8, outsider_subnet: u8) -> Self {
        let server = Pod::new(server_subnet).expect("server pod");
        let outsider = Pod::new(outsider_subnet).expect("outsider pod");
        // Re-home the outsider's veth end into the server pod, giving a direct link.
        let far = Ipv4Addr::new(10, 201, outsider_subnet, 1);
        run(
            "ip",
            &[
                "addr",
                "del",
                &format!("{far}/24"),
                "dev",
                &outsider.host_if,
            ],
        )
        .expect("free address");
        run(
            "ip",
            &["link", "set", &outsider.host_if, "netns", &server.name],
        )
        .expect("move link");
        run(
            "ip",
            &[
                "-n",
                &server.name,
                "addr",
                "add",
                &format!("{far}/24"),
                "dev",
                &outsider.host_if,
            ],
        )
        .expect("addr");
        run(
            "ip",
            &["-n", &server.name, "link", "set", &outsider.host_if, "up"],
        )
        .expect("up");
        Self { server, outsider }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The moved link dies with the server namespace; make the outsider's guard cleanup quiet.
        let _ = run(
            "ip",
            &[
                "-n",
                &self.server.name,
                "link",
                "del",
                &self.outsider.host_if,
            ],
        );
    }
}

#[test]
fn strict_pod_rejects_plaintext_that_bypassed_the_tunnel() {
    let _serial = serial();
    let topo = Topology::new(21, 22);
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
    let err = outsider.expect_err("direct plaintext from another pod must not connect");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "dropped, not refused: {err}"
    );
    let other = connect_from(other_host_ip, app_addr, DROPPED_WAIT)
        .expect_err("other node address must not connect");
    assert_eq!(other.kind(), std::io::ErrorKind::TimedOut, "{other}");
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
