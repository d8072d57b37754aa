//! Real eBPF redirection in network namespaces (needs root; fails loudly otherwise).
//!
//! Each test: a test cgroup the process joins, "pods" (netns + veth), a stand-in tunnel listener
//! on the host side, and a real server at the original destination, so "not redirected" is
//! proven by the real server receiving the connection.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use mesh_node::redirect::{Cidr, Config, EnrollMode, Redirect};
use support::*;

/// The tunnel and the real server for one pod's subnet, plus the loaded programs.
struct Fixture {
    redirect: Redirect,
    tunnel: TcpListener,
    server: TcpListener,
    // Dropped last: the cgroup must be left after the programs detach.
    _cgroup: TestCgroup,
}

fn fixture(cgroup: &str, host_ip: Ipv4Addr, tweak: impl FnOnce(&mut Config)) -> Fixture {
    let cg = TestCgroup::join(cgroup).expect("create and join test cgroup");
    let tunnel = listen_on(host_ip);
    let server = listen_on(host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    tweak(&mut config);
    let redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    Fixture {
        redirect,
        tunnel,
        server,
        _cgroup: cg,
    }
}

fn assert_reached_server(fx: &Fixture, client: &mut std::net::TcpStream, who: &str) {
    let mut accepted = accept_within(&fx.server, WAIT)
        .expect("poll server")
        .unwrap_or_else(|| panic!("{who}: real server got no connection"));
    assert_carries(client, &mut accepted, who.as_bytes());
    let stray = accept_within(&fx.tunnel, Duration::ZERO).expect("poll tunnel");
    assert!(
        stray.is_none(),
        "{who}: tunnel must not see this connection"
    );
}

#[test]
fn enrolled_pod_is_redirected_and_tunnel_sees_original_destination() {
    let _serial = serial();
    let pod = Pod::new(11).expect("create pod netns");
    let mut fx = fixture("wfte-redirect-enrolled", pod.host_ip, |_| {});
    fx.redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let original = SocketAddr::V4(v4(&fx.server));

    let mut client = pod
        .connect(original)
        .expect("enrolled pod connects (to the tunnel)");
    let mut at_tunnel = accept_within(&fx.tunnel, WAIT)
        .expect("poll")
        .expect("tunnel accepts the redirected connect");
    assert_eq!(
        original_dst(&at_tunnel).expect("SO_ORIGINAL_DST answered"),
        v4(&fx.server)
    );
    assert_eq!(
        client.peer_addr().expect("getpeername"),
        original,
        "client sees the original peer"
    );
    assert_eq!(
        at_tunnel.peer_addr().expect("peer").ip(),
        pod.ip,
        "tunnel sees the pod's address"
    );
    assert_carries(&mut client, &mut at_tunnel, b"hello through the tunnel");
    // Another SOL_IP option on the same redirected socket keeps the kernel's answer.
    at_tunnel.set_ttl(42).expect("set IP_TTL");
    assert_eq!(at_tunnel.ttl().expect("get IP_TTL"), 42);
    assert!(
        accept_within(&fx.server, Duration::ZERO)
            .expect("poll")
            .is_none(),
        "server bypassed"
    );

    let c = fx.redirect.counters().expect("counters");
    assert_eq!(
        (c.connect_redirected, c.tuple_recorded, c.orig_dst_answered),
        (1, 1, 1),
        "{c:?}"
    );
    assert!(c.peername_rewritten >= 1, "{c:?}");
}

#[test]
fn other_options_and_non_redirected_sockets_keep_kernel_answers() {
    let _serial = serial();
    let pod = Pod::new(12).expect("create pod netns");
    let fx = fixture("wfte-redirect-sockopt", pod.host_ip, |_| {});
    // Host process in the cgroup, not enrolled: its accepted socket has no original destination.
    let mut client = connect(SocketAddr::V4(v4(&fx.server))).expect("host connects directly");
    let accepted = accept_within(&fx.server, WAIT)
        .expect("poll")
        .expect("server accepts");
    let err = original_dst(&accepted).expect_err("no SO_ORIGINAL_DST for a direct connection");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "kernel's own answer kept: {err}"
    );
    // An unrelated option still answers as the kernel says.
    accepted.set_nodelay(true).expect("set TCP_NODELAY");
    assert!(accepted.nodelay().expect("get TCP_NODELAY"));
    assert_eq!(
        client.peer_addr().expect("getpeername"),
        SocketAddr::V4(v4(&fx.server))
    );
    let mut buf = [0u8; 1];
    drop(accepted);
    assert_eq!(client.read(&mut buf).expect("eof"), 0);
    let c = fx.redirect.counters().expect("counters");
    assert_eq!(
        (
            c.connect_redirected,
            c.orig_dst_missed,
            c.peername_rewritten
        ),
        (0, 1, 0),
        "{c:?}"
    );
}

#[test]
fn non_enrolled_pod_host_process_and_unenrolled_pod_are_not_redirected() {
    let _serial = serial();
    let enrolled = Pod::new(13).expect("pod a");
    let bystander = Pod::new(14).expect("pod b");
    let fx = fixture("wfte-redirect-bystander", enrolled.host_ip, |_| {});
    let mut fx = fx;
    // The server listens on the first pod's gateway; the bystander reaches it through its own
    // gateway only if routed, so give it a server on its own subnet instead.
    let bystander_server = listen_on(bystander.host_ip);
    fx.redirect
        .enroll(enrolled.cookie(), EnrollMode::Capture)
        .expect("enroll");

    let mut b = bystander
        .connect(SocketAddr::V4(v4(&bystander_server)))
        .expect("bystander connects");
    let mut got = accept_within(&bystander_server, WAIT)
        .expect("poll")
        .expect("non-enrolled pod reaches its server");
    assert_carries(&mut b, &mut got, b"bystander");
    assert!(
        accept_within(&fx.tunnel, Duration::ZERO)
            .expect("poll")
            .is_none(),
        "tunnel saw a bystander"
    );

    let mut host = connect(SocketAddr::V4(v4(&fx.server))).expect("host process connects");
    assert_reached_server(&fx, &mut host, "host process");

    fx.redirect.unenroll(enrolled.cookie()).expect("unenroll");
    fx.redirect
        .unenroll(enrolled.cookie())
        .expect("unenroll twice is fine");
    let mut a = enrolled
        .connect(SocketAddr::V4(v4(&fx.server)))
        .expect("unenrolled pod connects");
    assert_reached_server(&fx, &mut a, "unenrolled pod");
    assert_eq!(
        fx.redirect.counters().expect("counters").connect_redirected,
        0
    );
}

#[test]
fn excluded_ports_cidrs_loopback_and_tunnel_mark_are_not_redirected() {
    let _serial = serial();
    let pod = Pod::new(15).expect("pod");
    let excluded_server = listen_on(pod.host_ip);
    let excluded_port = v4(&excluded_server).port();
    let mut fx = fixture("wfte-redirect-excluded", pod.host_ip, |config| {
        config.excluded_ports = vec![excluded_port];
        config.tunnel_mark = 0x5eed;
    });
    fx.redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");

    let mut by_port = pod
        .connect(SocketAddr::V4(v4(&excluded_server)))
        .expect("connect excluded port");
    let mut got = accept_within(&excluded_server, WAIT)
        .expect("poll")
        .expect("excluded port reaches server");
    assert_carries(&mut by_port, &mut got, b"port");

    let pod_loopback = pod.run_in(|| {
        let local = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let stream = connect(local.local_addr()?)?;
        Ok::<_, std::io::Error>((local.accept()?.0, stream))
    });
    pod_loopback.expect("loopback inside an enrolled pod is untouched");

    let marked = pod.run_in(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_mark(0x5eed)?;
        socket.connect_timeout(&SocketAddr::V4(v4(&fx.server)).into(), WAIT)?;
        Ok::<_, std::io::Error>(std::net::TcpStream::from(socket))
    });
    let mut marked = marked.expect("tunnel-marked socket connects");
    assert_reached_server(&fx, &mut marked, "tunnel-marked socket");
    let c = fx.redirect.counters().expect("counters");
    assert_eq!(c.connect_redirected, 0, "{c:?}");
    assert!(c.connect_excluded >= 2, "{c:?}");
    drop(fx);

    // CIDR exclusion, on a fresh load.
    let cidr = Cidr {
        addr: pod.host_ip.into(),
        prefix_len: 32,
    };
    let mut fx = fixture("wfte-redirect-cidr", pod.host_ip, |config| {
        config.excluded_cidrs = vec![cidr]
    });
    fx.redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let mut by_cidr = pod
        .connect(SocketAddr::V4(v4(&fx.server)))
        .expect("connect excluded cidr");
    assert_reached_server(&fx, &mut by_cidr, "excluded cidr");
}

#[test]
fn original_destination_is_forgotten_when_the_client_closes() {
    let _serial = serial();
    let pod = Pod::new(16).expect("pod");
    let mut fx = fixture("wfte-redirect-close", pod.host_ip, |_| {});
    fx.redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let client = pod
        .connect(SocketAddr::V4(v4(&fx.server)))
        .expect("connect");
    let at_tunnel = accept_within(&fx.tunnel, WAIT)
        .expect("poll")
        .expect("redirected");
    assert_eq!(
        original_dst(&at_tunnel).expect("answered while open"),
        v4(&fx.server)
    );
    // Linger 0: close() aborts and moves the socket to TCP_CLOSE synchronously.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(client);
    let c = fx.redirect.counters().expect("counters");
    assert_eq!((c.tuple_recorded, c.tuple_removed), (1, 1), "{c:?}");
    let err = original_dst(&at_tunnel).expect_err("entry removed on close");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn original_destination_is_forgotten_after_a_graceful_close() {
    let _serial = serial();
    let pod = Pod::new(18).expect("pod");
    let mut fx = fixture("wfte-redirect-fin", pod.host_ip, |_| {});
    fx.redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let mut client = pod
        .connect(SocketAddr::V4(v4(&fx.server)))
        .expect("connect");
    let mut at_tunnel = accept_within(&fx.tunnel, WAIT)
        .expect("poll")
        .expect("redirected");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("client FIN");
    let mut rest = Vec::new();
    at_tunnel
        .read_to_end(&mut rest)
        .expect("tunnel reads to EOF");
    drop(at_tunnel);
    // The client, in FIN_WAIT2, reads EOF when the tunnel's FIN has moved it to TIME_WAIT, and
    // leaving the full socket runs the TCP_CLOSE state callback before that read returns.
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).expect("client reads EOF"), 0);
    let c = fx.redirect.counters().expect("counters");
    assert_eq!((c.tuple_recorded, c.tuple_removed), (1, 1), "{c:?}");
}

#[test]
fn refused_redirect_is_forgotten_without_waiting_for_lru() {
    let _serial = serial();
    let pod = Pod::new(19).expect("pod");
    let cg = TestCgroup::join("wfte-redirect-refused").expect("cgroup");
    // A tunnel address nobody listens on: the redirected SYN draws a reset.
    let closed = v4(&listen_on(pod.host_ip));
    let mut redirect = Redirect::load(&Config::new(&cg.relative, closed)).expect("load");
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let server = listen_on(pod.host_ip);
    let err = pod
        .connect(SocketAddr::V4(v4(&server)))
        .expect_err("tunnel down: refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let c = redirect.counters().expect("counters");
    assert_eq!(
        (c.connect_redirected, c.tuple_recorded, c.tuple_removed),
        (1, 0, 1),
        "{c:?}"
    );
    drop(redirect);
    drop(cg);
}

#[test]
fn netns_cookie_helper_distinguishes_namespaces() {
    let _serial = serial();
    let a = Pod::new(17).expect("pod");
    let here = mesh_node::redirect::netns::current_cookie().expect("own cookie");
    let cookie = a.cookie();
    assert_ne!(cookie, here);
    let path = std::path::PathBuf::from(format!("/run/netns/{}", a.name));
    assert_eq!(
        mesh_node::redirect::netns::cookie_of_path(&path).expect("by path"),
        cookie
    );
    assert_eq!(
        a.run_in(mesh_node::redirect::netns::current_cookie)
            .expect("inside"),
        cookie
    );
}
