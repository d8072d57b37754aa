//! The return-path routing the tunnel sets up inside a pod (root; fails loudly otherwise):
//! `mesh_node::pod_net::prepare` in a fresh network namespace adds the fwmark rule and the
//! `local` default route (IPv4 and IPv6) and turns `tcp_fwmark_accept` and `tcp_tw_reuse` on, idempotently; and a
//! transparent connection from a client's address reaches an app in the pod, which sees that
//! address as its peer and answers it.

use std::{
    fs::File,
    io::Write,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    process::Command,
};

use mesh_node::{pod_net, redirect::netns::run_in};

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Self(name.to_owned())
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.0)).expect("netns file")
    }

    fn show(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        let out = Command::new("ip").args(&all).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed: this test needs root");
}

#[test]
fn prepare_adds_the_rule_and_route_once_and_turns_fwmark_accept_on() {
    let ns = Netns::new("wfpn-prepare");
    let file = ns.file();
    for ip in ["10.203.0.2", "fd00:203::2"] {
        let ip: IpAddr = ip.parse().unwrap();
        for _ in 0..2 {
            run_in(file.as_fd(), || pod_net::prepare(ip, 0x53a))
                .expect("enter netns")
                .unwrap_or_else(|e| panic!("prepare {ip}: {e}"));
        }
    }
    let rules = ns.show(&["rule"]);
    assert_eq!(
        rules.matches("fwmark 0x53a/0x53a lookup 15006").count(),
        1,
        "one v4 rule: {rules}"
    );
    let rules6 = ns.show(&["-6", "rule"]);
    assert!(
        rules6.contains("fwmark 0x53a/0x53a lookup 15006"),
        "{rules6}"
    );
    let routes = ns.show(&["route", "show", "table", "15006"]);
    assert!(routes.contains("local default dev lo"), "{routes}");
    let routes6 = ns.show(&["-6", "route", "show", "table", "15006"]);
    assert!(routes6.contains("local default dev lo"), "{routes6}");
    let accept = run_in(file.as_fd(), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept")
    })
    .unwrap()
    .unwrap();
    assert_eq!(accept.trim(), "1");
    let tw_reuse = run_in(file.as_fd(), || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse")
    })
    .unwrap()
    .unwrap();
    assert_eq!(tw_reuse.trim(), "1", "TIME_WAIT reuse in the pod");
}

#[test]
fn transparent_connection_shows_the_client_address_to_the_app() {
    transparent("wfpn-tp4", "wfpn-h4", "10.203.1.2", "24", "10.77.0.9");
}

#[test]
fn transparent_ipv6_connection_shows_the_client_address_to_the_app() {
    transparent("wfpn-tp6", "wfpn-h6", "fd00:203:1::2", "64", "fd00:77::9");
}

/// A pod address on a veth whose other end stays outside, a remote client address, and an app
/// in the pod that writes back the peer address it saw.
fn transparent(name: &str, host_end: &str, pod: &str, prefix: &str, client: &str) {
    let ns = Netns::new(name);
    let _ = Command::new("ip").args(["link", "del", host_end]).status();
    ip(&[
        "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
    ]);
    let cidr = format!("{pod}/{prefix}");
    ip(&["-n", &ns.0, "addr", "add", &cidr, "dev", "eth0", "nodad"]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    let file = ns.file();
    let pod: IpAddr = pod.parse().unwrap();
    run_in(file.as_fd(), || pod_net::prepare(pod, 0x53a))
        .unwrap()
        .expect("prepare");
    let app = run_in(file.as_fd(), || std::net::TcpListener::bind((pod, 8080)))
        .unwrap()
        .expect("app listener");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client: IpAddr = client.parse().unwrap();
    let net = pod_net::PodNet::new(ns.file(), 0x53a);
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = app.accept().expect("app accepts");
        stream.write_all(peer.ip().to_string().as_bytes()).unwrap();
        peer
    });
    let seen = runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let connect = net.connect(SocketAddr::new(pod, 8080), Some(client));
        let mut stream = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .expect("transparent connect timed out: the return path is missing")
            .expect("transparent connect");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("answer");
        answer
    });
    assert_eq!(
        seen,
        client.to_string(),
        "the app answered the client's address"
    );
    assert_eq!(server.join().unwrap().ip(), client);
    let _ = Command::new("ip").args(["link", "del", host_end]).status();
}

#[test]
fn without_a_reply_mark_the_app_is_reached_from_the_pods_own_address() {
    let ns = Netns::new("wfpn-nomark");
    let _ = Command::new("ip").args(["link", "del", "wfpn-h0"]).status();
    ip(&[
        "link", "add", "wfpn-h0", "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.203.2.2/24", "dev", "eth0"]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    let file = ns.file();
    let pod: IpAddr = "10.203.2.2".parse().unwrap();
    let app = run_in(file.as_fd(), || std::net::TcpListener::bind((pod, 8080)))
        .unwrap()
        .expect("app listener");
    let net = pod_net::PodNet::new(ns.file(), 0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stream = runtime.block_on(async {
        let connect = net.connect(SocketAddr::new(pod, 8080), None);
        tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .expect("connect timed out")
            .expect("connect")
    });
    let (_, peer) = app.accept().expect("app accepts");
    assert_eq!(peer.ip(), pod);
    drop(stream);
    let _ = Command::new("ip").args(["link", "del", "wfpn-h0"]).status();
}

/// `PodNet::destroy_tcp` ends exactly the named connection of the pod (both ends see it end),
/// from the node's namespace, over IPv4 and IPv6; a connection that is gone is `ENOENT`.
#[test]
fn destroy_ends_the_named_connection_and_no_other() {
    let ns = Netns::new("wfpn-destroy");
    let net = pod_net::PodNet::new(ns.file(), 0);
    for loopback in ["127.0.0.1", "::1"] {
        let ip: IpAddr = loopback.parse().unwrap();
        let (listener, victim, bystander) = run_in(net.netns(), || {
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
            let target = listener.local_addr().unwrap();
            let victim = std::net::TcpStream::connect(target).unwrap();
            let bystander = std::net::TcpStream::connect(target).unwrap();
            (listener, victim, bystander)
        })
        .expect("enter netns");
        let (mut victim_peer, _) = listener.accept().unwrap();
        let (mut bystander_peer, _) = listener.accept().unwrap();
        let local = victim.local_addr().unwrap();
        let remote = victim.peer_addr().unwrap();

        net.destroy_tcp(local, remote)
            .unwrap_or_else(|e| panic!("destroy {local} -> {remote}: {e}"));

        // The server side of the destroyed connection reads a reset (or EOF), the other
        // connection still carries bytes.
        use std::io::Read;
        let mut buf = [0u8; 8];
        victim_peer
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let read = victim_peer.read(&mut buf);
        let ended = match &read {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        assert!(
            ended,
            "{loopback}: the destroyed connection still open: {read:?}"
        );
        bystander_peer.write_all(b"ping").unwrap();
        let mut bystander = bystander;
        bystander.read_exact(&mut buf[..4]).unwrap();
        assert_eq!(
            &buf[..4],
            b"ping",
            "{loopback}: the other connection was hit"
        );

        let again = net.destroy_tcp(local, remote).unwrap_err();
        assert_eq!(
            again.raw_os_error(),
            Some(libc::ENOENT),
            "{loopback}: {again}"
        );
        drop(victim);
    }
}
