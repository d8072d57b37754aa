//! Same-node direct connections with real eBPF (needs root; fails loudly otherwise). A client
//! pod (enrolled, captured to a "tunnel" listener inside it) and a STRICT server pod, wired to
//! each other. Checked: without an admission the client's connect goes to the tunnel; with one
//! it goes straight to the server's app, which sees the client's address, and the kernel
//! reports it opened and closed with its byte counts; the strict pod still refuses everyone
//! else meanwhile; another port, a moved epoch and an admission made for another client
//! address all keep the door shut (the last one refused at the SYN, not just redirected).

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener},
    time::Duration,
};

use mesh_ebpf_common::{direct_event, DirectEvent};
use mesh_node::redirect::{direct::DirectEvents, join::Joiner, Config, EnrollMode, Redirect};
use support::{topology::DirectPair, *};

/// Port of the "tunnel" listener inside the client pod, where its captured connects go.
const TUNNEL_PORT: u16 = 15001;

/// Reads reports until `wanted` of them arrived or [`WAIT`] passed.
fn reports(
    runtime: &tokio::runtime::Runtime,
    events: &mut DirectEvents,
    wanted: usize,
) -> Vec<DirectEvent> {
    let mut got = Vec::new();
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < wanted {
            let batch = events.next_batch(|event| got.push(event));
            if tokio::time::timeout_at(deadline, batch).await.is_err() {
                break;
            }
        }
    });
    got
}

#[test]
fn an_admitted_pair_goes_straight_to_the_pod_and_nothing_else_does() {
    admitted_pair(false);
}

#[test]
fn an_admitted_ipv6_pair_goes_straight_to_the_pod_and_nothing_else_does() {
    admitted_pair(true);
}

fn admitted_pair(ipv6: bool) {
    let _serial = serial();
    let topo = DirectPair::new(45, 46).expect("pods");
    if ipv6 {
        topo.add_ipv6().expect("IPv6");
    }
    let cg = TestCgroup::join("wfte-direct").expect("cgroup");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let client_pod = &topo.outsider;
    let (client_ip, server_end, server_ip, host_ip, elsewhere): (
        IpAddr,
        IpAddr,
        IpAddr,
        IpAddr,
        IpAddr,
    ) = match ipv6 {
        false => (
            client_pod.ip.into(),
            topo.server_end_v4().into(),
            topo.server.ip.into(),
            topo.server.host_ip.into(),
            Ipv4Addr::new(10, 201, 46, 9).into(),
        ),
        true => (
            client_pod.ip6().into(),
            topo.server_end_v6().into(),
            topo.server.ip6().into(),
            topo.server.host_ip6().into(),
            ula(46, 9).into(),
        ),
    };
    let tunnel_addr = SocketAddr::new(client_ip, TUNNEL_PORT);
    let tunnel: TcpListener = client_pod
        .run_in(|| TcpListener::bind(tunnel_addr))
        .expect("tunnel listener in the client pod");
    let mut config = Config::new(&cg.relative, SocketAddrV4::new(client_pod.ip, TUNNEL_PORT));
    if let SocketAddr::V6(v6) = tunnel_addr {
        config.outbound_v4 = None;
        config.outbound_v6 = Some(v6);
    }
    config.direct = true;
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    let (direct, events) = redirect.direct().expect("direct connections on");
    let mut events = events.expect("reports (loaded inside a runtime)");
    redirect
        .enroll(client_pod.cookie(), EnrollMode::Capture)
        .expect("enroll the client pod");
    redirect
        .enroll(topo.server.cookie(), EnrollMode::Strict)
        .expect("enroll the server pod, strict");
    let listen = |port| match ipv6 {
        false => topo.server.listen(port),
        true => topo.server.listen6(port),
    };
    let app = listen(8080).expect("app listens");
    let other_app = listen(8081).expect("second app port");
    let dest = SocketAddr::new(server_end, 8080);
    let connect =
        |to: SocketAddr, wait: Duration| client_pod.run_in(|| connect_from(client_ip, to, wait));

    // Not admitted: captured by the tunnel.
    let first = connect(dest, WAIT).expect("captured connect");
    assert!(
        accept_within(&tunnel, WAIT).expect("poll").is_some(),
        "an unadmitted connect goes to the tunnel"
    );
    drop(first);

    // Admitted: straight to the app, from the client's own address.
    direct
        .admit(client_pod.cookie(), client_ip, dest, direct.epoch())
        .expect("admit");
    let mut client = connect(dest, WAIT).expect("direct connect");
    let mut server = accept_within(&app, WAIT)
        .expect("poll")
        .expect("the app accepts the direct connection");
    assert_eq!(server.peer_addr().unwrap().ip(), client_ip);
    assert!(
        accept_within(&tunnel, Duration::ZERO)
            .expect("poll")
            .is_none(),
        "the tunnel saw the direct connection"
    );
    // While it is open, the strict pod still refuses a plaintext client outside the mesh.
    let node = connect_from(host_ip, SocketAddr::new(server_ip, 8080), DROPPED_WAIT);
    assert_dropped(node, "the node's address beside a direct connection");

    let tuple = Joiner::key(client.local_addr().unwrap(), dest);
    client.write_all(b"hello there").unwrap();
    let mut request = [0u8; 11];
    server.read_exact(&mut request).unwrap();
    server.write_all(b"hi!!!").unwrap();
    let mut answer = [0u8; 5];
    client.read_exact(&mut answer).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.read(&mut request).unwrap(), 0, "EOF");
    drop(server);
    assert_eq!(client.read(&mut answer).unwrap(), 0, "EOF");
    drop(client);
    let got = reports(&runtime, &mut events, 2);
    let kinds: Vec<u32> = got.iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [direct_event::OPENED, direct_event::CLOSED],
        "reports: {got:?}"
    );
    assert!(got.iter().all(|event| event.tuple == tuple), "{got:?}");
    assert!(got
        .iter()
        .all(|event| event.netns_cookie == client_pod.cookie()));
    assert_eq!(
        (got[1].sent, got[1].received),
        (11, 5),
        "kernel byte counts"
    );
    assert!(
        !direct.is_live(&tuple),
        "closed connections leave the table"
    );

    // Another port of the same pod is not admitted.
    let other = SocketAddr::new(server_end, 8081);
    let _captured = connect(other, WAIT).expect("captured connect");
    assert!(accept_within(&tunnel, WAIT).expect("poll").is_some());
    assert!(accept_within(&other_app, Duration::ZERO)
        .expect("poll")
        .is_none());

    // A moved epoch voids the admission: back to the tunnel.
    direct.invalidate().expect("move the epoch");
    let _captured = connect(dest, WAIT).expect("captured connect");
    assert!(
        accept_within(&tunnel, WAIT).expect("poll").is_some(),
        "a voided admission still let a connect through"
    );

    // An admission made for another client address: the connect is let go, but its SYN is not
    // authorised, so the strict pod drops it.
    direct
        .admit(client_pod.cookie(), elsewhere, dest, direct.epoch())
        .expect("admit");
    let refused_before = direct.counts()[1];
    let spoofed = connect(dest, DROPPED_WAIT);
    assert_dropped(spoofed, "a socket whose address is not the admitted one");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    assert!(
        direct.counts()[1] > refused_before,
        "unauthorised SYN counted: {:?}",
        direct.counts()
    );
    assert!(direct.counts()[0] >= 2, "direct connects counted");
    drop(redirect);
    drop(cg);
}
