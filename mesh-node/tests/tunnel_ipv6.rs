//! IPv6 through the whole tunnel with the real eBPF programs (root; fails loudly otherwise): the
//! tunnel is wired as the binary wires it for `--node-ip` + `--node-ipv6`
//! ([`mesh_node::capture::redirect_config`]), an enrolled pod's native IPv6 connect to another
//! mesh workload is redirected to the IPv6 outbound listener, its original destination is read
//! with `IP6T_SO_ORIGINAL_DST`, carried over HBONE (`:authority [v6]:port`) to the destination's
//! in-pod listener and delivered; both tunnel ends log it. The HBONE connection leaves from
//! inside the client pod, over a direct pod-to-pod link.
//!
//! Uses the `redirect_*` fixtures (pods `wfte-66`/`wfte-67`, ULA `fd00:201::/32`, `nodad`).

#[path = "redirect_support/mod.rs"]
mod support;
mod tunnel_support;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, SocketAddrV6},
    sync::Arc,
    time::{Duration, Instant},
};

use mesh_node::{
    app::{self, Bound, Deps},
    capture::{self, NodeAddresses},
    config::Config,
    enrollment::{self, EnrollmentHandle},
    feed::MeshSnapshot,
    socket::SystemSockets,
    state::State,
};
use support::{Pod, TestCgroup};
use tunnel_support::{spawn_echo, state_for, Captured, TestCa, WAIT};

const APP_PORT: u16 = 8080;

fn node_config(client: &Pod) -> Config {
    let yaml = format!(
        r#"
node_name: n1
listeners:
  outbound: 0.0.0.0:0
  outbound_ipv6: "{node6}"
  inbound_plaintext: 127.0.0.1:0
  hbone: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  admin: 127.0.0.1:0
"#,
        node6 = client.host_ip6(),
    );
    Config::from_yaml(&yaml).expect("node config")
}

/// Both pods on this node, by their IPv6 addresses only.
fn node_state(client: &Pod, server: &Pod) -> State {
    let pod = |name: &str, sa: &str, pod: &Pod| {
        tunnel_support::pod("apps", name, sa, &pod.ip6().to_string(), "n1")
    };
    let workloads = [
        pod("client-0", "client", client),
        pod("server-0", "server", server),
    ];
    state_for("n1", &MeshSnapshot::of(workloads, []))
}

fn start_enrollment(
    node: &Bound,
    (config, state): (&Config, &State),
    cgroup: &TestCgroup,
    client: &Pod,
) -> EnrollmentHandle {
    let addresses = NodeAddresses {
        ipv4: Some(client.host_ip),
        ipv6: Some(client.host_ip6()),
    };
    let redirect = capture::redirect_config(&cgroup.relative, addresses, node, config)
        .expect("redirect config for both families");
    assert!(redirect.outbound_v6.is_some() && redirect.outbound_v4.is_some());
    let wanted = enrollment::wanted(state);
    EnrollmentHandle::start(&redirect, wanted, node.pod_scanner().results())
        .unwrap_or_else(|e| panic!("eBPF programs must load: {e}"))
}

/// One echo round trip from inside the client pod; `false` when the path is not there yet
/// (enrollment follows the namespace scan asynchronously).
fn echo_from(client: &Pod, to: SocketAddr, payload: &[u8]) -> bool {
    let attempt = client.run_in(|| -> std::io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(payload)?;
        let mut back = vec![0; payload.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    });
    matches!(attempt, Ok(back) if back == payload)
}

/// A direct link between two pods, routing each one's IPv6 address to the other: the pod-to-pod
/// path a CNI provides, which the tunnel's HBONE dial from inside the client pod takes (the test
/// host does not forward IPv6). Removed on drop.
struct PodToPod(String);

impl PodToPod {
    fn wire(client: &Pod, server: &Pod) -> Self {
        let (a, b) = ("wfte66x", "wfte67x");
        let _ = support::run("ip", &["link", "del", a]);
        let ip = |args: &[&str]| support::run("ip", args).expect("ip (pod-to-pod link)");
        ip(&[
            "link",
            "add",
            a,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &server.name,
        ]);
        for (pod, dev, own, peer, to) in [
            (client, a, "fe80::66:1", "fe80::67:1", server.ip6()),
            (server, b, "fe80::67:1", "fe80::66:1", client.ip6()),
        ] {
            let ns = pod.name.as_str();
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{own}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            let to = format!("{to}/128");
            ip(&["-n", ns, "-6", "route", "add", &to, "via", peer, "dev", dev]);
        }
        Self(client.name.clone())
    }
}

impl Drop for PodToPod {
    fn drop(&mut self) {
        let _ = support::run("ip", &["-n", &self.0, "link", "del", "wfte66x"]);
    }
}

#[test]
fn enrolled_pod_ipv6_connect_goes_through_the_tunnel_over_hbone() {
    let _serial = support::serial();
    let captured = Captured::install_global();
    let client = Pod::new(66).expect("client pod");
    client.add_ipv6().expect("client ipv6");
    let server = Pod::new(67).expect("server pod");
    server.add_ipv6().expect("server ipv6");
    let _pod_to_pod = PodToPod::wire(&client, &server);
    let cgroup = TestCgroup::join("wfte-tunnel-ipv6").expect("create and join test cgroup");
    let app_listener = server.listen6(APP_PORT).expect("app listens on [::]");
    app_listener.set_nonblocking(true).expect("nonblocking");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    spawn_echo(tokio::net::TcpListener::from_std(app_listener).expect("tokio listener"));
    let ca = TestCa::new();
    let deps = Deps {
        sockets: Arc::new(SystemSockets),
        certs: ca.source(),
    };
    let config = node_config(&client);
    let node = runtime
        .block_on(app::build_with(
            config.clone(),
            node_state(&client, &server),
            Default::default(),
            deps,
        ))
        .expect("node tunnel");
    let outbound_v6 = node.outbound_v6.expect("ipv6 outbound listener bound");
    assert_eq!(outbound_v6.ip(), IpAddr::V6(client.host_ip6()));
    assert_eq!(
        outbound_v6.port(),
        node.outbound.port(),
        "one port for both families"
    );
    let mut listeners = node.in_pod_listeners();
    let in_pod = listeners.wait_for(|open| open.contains_key(&IpAddr::V6(server.ip6())));
    runtime
        .block_on(async { tokio::time::timeout(WAIT, in_pod).await })
        .expect("in-pod listener of the server never opened")
        .expect("listener view closed");
    let state = node_state(&client, &server);
    let handle = start_enrollment(&node, (&config, &state), &cgroup, &client);

    let destination = SocketAddr::V6(SocketAddrV6::new(server.ip6(), APP_PORT, 0, 0));
    let parts = [
        "reporter=Destination",
        "src.workload=client-0",
        "dst.workload=server-0",
    ];
    let deadline = Instant::now() + WAIT;
    let through_tunnel = loop {
        let echoed = echo_from(&client, destination, b"ipv6 through the tunnel");
        let logged = captured
            .access_lines()
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)));
        match (echoed, logged) {
            (true, Some(line)) => break line,
            _ if Instant::now() > deadline => panic!(
                "no echo through the tunnel within {WAIT:?}: {}",
                captured.text()
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(
        through_tunnel.contains("result=completed"),
        "{through_tunnel}"
    );
    let source_side = runtime.block_on(captured.wait_for_line(&[
        "reporter=Source",
        "src.workload=client-0",
        "dst.identity=spiffe://cluster.local/ns/apps/sa/server",
    ]));
    assert!(source_side.contains("result=completed"), "{source_side}");
    let counters = handle.counters().read().expect("counters");
    assert!(counters.connect_redirected >= 1, "{counters:?}");
    assert!(counters.orig_dst_answered >= 1, "{counters:?}");

    runtime.block_on(async {
        tokio::time::timeout(WAIT, node.shutdown())
            .await
            .expect("node drain hung");
        tokio::time::timeout(WAIT, handle.shutdown())
            .await
            .expect("enrollment shutdown hung");
    });
    drop(cgroup);
}
