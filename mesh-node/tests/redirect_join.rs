//! Same-node joining with real eBPF (needs root; fails loudly otherwise). A "client app" in an
//! enrolled pod connects and is redirected to a "tunnel" listener; the test, as mesh-node does,
//! opens its own connection to a "destination app", joins the two (`Joiner::join`) and runs
//! mesh-node's copy loop (`copy_joined`). Checked: every byte arrives once and in order in both
//! directions, including bytes written before the join and a server that speaks first; both
//! directions really switch to the kernel and the byte counts add up; half-close, a client's
//! reset and the tunnel closing a joined connection (what a policy change does) all end it as
//! TCP would; IPv6 too; a socket the programs did not count is not joinable.
//!
//! The test process joins the pods' cgroup, so its "destination app" sockets get the
//! `sock_ops` callbacks a pod's would.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    sync::Arc,
    thread,
    time::Duration,
};

use mesh_node::{
    proxy::same_node::{copy_joined, JoinPlan, JoinSlot},
    redirect::{
        join::{Join, Joiner},
        Config, EnrollMode, Redirect,
    },
};
use support::*;

fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    stream.read_exact(&mut got).expect("read");
    got
}

/// One same-node connection as mesh-node holds it: the client app's socket and the tunnel's
/// accepted end, the tunnel's socket to the destination app and the app's accepted end.
struct Pair {
    client: TcpStream,
    accepted: TcpStream,
    upstream: TcpStream,
    server: TcpStream,
    slot: JoinSlot,
}

impl Pair {
    fn join(&self) -> &Join {
        self.slot.get().expect("joined")
    }
}

/// When [`joined_pair`] joins.
#[derive(Clone, Copy, PartialEq)]
enum When {
    /// At once (as a test of the switch rule).
    Now,
    /// As mesh-node does: once the copy loop finds the connection busy.
    Busy,
}

/// Connects a client in `pod` to `server` (redirected to `tunnel`), opens the tunnel's side to
/// the server after naming its tuple, lets `before` write on the unjoined pair, then joins
/// (`when`).
fn joined_pair(
    pod: &Pod,
    joiner: &Arc<Joiner>,
    tunnel: &TcpListener,
    server: &TcpListener,
    when: When,
    before: impl FnOnce(&mut TcpStream, &mut TcpStream),
) -> Pair {
    let target = server.local_addr().expect("server address");
    let mut client = pod.connect(target).expect("client connects");
    let accepted = accept_within(tunnel, WAIT)
        .expect("poll")
        .expect("redirected to the tunnel");
    let client_key = Joiner::key(
        accepted.peer_addr().unwrap(),
        accepted.local_addr().unwrap(),
    );
    assert!(
        joiner.joinable(&client_key),
        "a redirected client is joinable"
    );

    let local = SocketAddr::new(tunnel.local_addr().unwrap().ip(), 0);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.bind(&local.into()).expect("bind");
    let upstream_local = socket.local_addr().unwrap().as_socket().unwrap();
    let server_key = Joiner::key(target, upstream_local);
    joiner.expect(&server_key).expect("name the server's tuple");
    socket
        .connect(&target.into())
        .expect("connect to the server");
    let upstream: TcpStream = socket.into();
    let mut server_side = accept_within(server, WAIT)
        .expect("poll")
        .expect("server accepts");
    assert!(
        joiner.joinable(&server_key),
        "the named server socket is joinable"
    );

    before(&mut client, &mut server_side);
    let slot = match when {
        When::Busy => JoinSlot::later(JoinPlan {
            joiner: joiner.clone(),
            server_app: server_key,
            upstream_local,
        }),
        When::Now => JoinSlot::made(
            joiner
                .join(
                    client_key,
                    (
                        accepted.as_fd(),
                        Joiner::key(
                            accepted.local_addr().unwrap(),
                            accepted.peer_addr().unwrap(),
                        ),
                    ),
                    server_key,
                    (upstream.as_fd(), Joiner::key(upstream_local, target)),
                    [0, 0],
                )
                .expect("join"),
        ),
    };
    Pair {
        client,
        accepted,
        upstream,
        server: server_side,
        slot,
    }
}

/// Starts mesh-node's copy loop on `pair`'s tunnel sockets; hands back the two apps' sockets.
fn start_copy(pair: Pair) -> (TcpStream, TcpStream, thread::JoinHandle<CopyEnd>) {
    let Pair {
        client,
        accepted,
        upstream,
        server,
        slot,
    } = pair;
    (client, server, spawn_copy(accepted, upstream, slot))
}

/// What [`spawn_copy`] hands back: bytes (tunnel plus kernel), the join, directions switched.
type CopyEnd = (std::io::Result<(u64, u64)>, Option<Join>, (bool, bool));

/// Runs mesh-node's copy loop for the pair's tunnel sockets on its own runtime; the handle
/// returns its bytes plus the kernel's, the join if one was made (its entries outlive the
/// copy) and which directions switched.
fn spawn_copy(
    accepted: TcpStream,
    upstream: TcpStream,
    slot: JoinSlot,
) -> thread::JoinHandle<CopyEnd> {
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            accepted.set_nonblocking(true).unwrap();
            upstream.set_nonblocking(true).unwrap();
            let accepted = tokio::net::TcpStream::from_std(accepted).unwrap();
            let upstream = tokio::net::TcpStream::from_std(upstream).unwrap();
            let result = copy_joined(&accepted, &upstream, &slot).await;
            let join = slot.into_join();
            let [up, down] = join.as_ref().map_or([(false, 0); 2], Join::kernel_part);
            let result = result.map(|(sent, received)| (sent + up.1, received + down.1));
            (result, join, (up.0, down.0))
        })
    })
}

fn load(cg: &TestCgroup, tunnel: &TcpListener, pod: &Pod) -> (Redirect, Arc<Joiner>) {
    let mut config = match tunnel.local_addr().unwrap() {
        SocketAddr::V4(v4) => Config::new(&cg.relative, v4),
        SocketAddr::V6(v6) => {
            let mut config = Config::new(
                &cg.relative,
                std::net::SocketAddrV4::new(pod.host_ip, v6.port()),
            );
            config.outbound_v4 = None;
            config.outbound_v6 = Some(v6);
            config
        }
    };
    config.join = true;
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let joiner = redirect.joiner().expect("joining was asked for");
    (redirect, joiner)
}

/// Upload with half-close, then download with close, around a join that happens after both
/// apps wrote (the server speaks first): exact bytes, both directions switched, counts add up.
fn transfers_exactly(pod: &Pod, tunnel: &TcpListener, server: &TcpListener, joiner: &Arc<Joiner>) {
    let early_up = pattern(300_000, 3);
    let banner = pattern(1_000, 4);
    let upload = pattern(8 << 20, 1);
    let download = pattern(6 << 20, 2);
    // Joined as mesh-node does, in the middle of the traffic.
    let pair = joined_pair(pod, joiner, tunnel, server, When::Busy, |client, server| {
        server.write_all(&banner).expect("server speaks first");
        client
            .write_all(&early_up)
            .expect("client writes before the join");
    });
    let (mut client, mut server, copy) = start_copy(pair);

    assert!(read_exactly(&mut client, banner.len()) == banner, "banner");
    let uploader = {
        let mut client = client.try_clone().unwrap();
        let upload = upload.clone();
        thread::spawn(move || {
            // A direction switches on a write made once the tunnel has caught up with the app
            // (docs/same-node.md): a short pause after the early bytes gives it that moment.
            thread::sleep(Duration::from_millis(50));
            write_uneven(&mut client, &upload);
            client.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    let got = read_to_eof(&mut server);
    uploader.join().unwrap();
    assert_eq!(got.len(), early_up.len() + upload.len(), "upload length");
    assert!(
        got[..early_up.len()] == early_up[..],
        "bytes before the join first"
    );
    assert!(got[early_up.len()..] == upload[..], "upload bytes in order");

    // Writer and reader run at once, as apps do: the joined path buffers what TCP between two
    // pods buffers, not what two extra tunnel sockets would.
    let downloader = {
        let download = download.clone();
        thread::spawn(move || {
            write_uneven(&mut server, &download);
            server.shutdown(Shutdown::Write).expect("server half-close");
        })
    };
    let got = read_to_eof(&mut client);
    downloader.join().unwrap();
    assert_eq!(got.len(), download.len(), "download length");
    assert!(got == download, "download bytes in order");

    let (result, join, switched) = copy.join().expect("copy thread");
    let (up, down) = result.expect("copy ends cleanly");
    assert_eq!(
        switched,
        (true, true),
        "both directions moved to the kernel"
    );
    let [(_, kernel_up), (_, kernel_down)] =
        join.expect("a busy connection is joined").kernel_part();
    assert!(
        kernel_up >= upload.len() as u64 / 2,
        "the kernel carried the upload: {kernel_up}"
    );
    assert!(
        kernel_down >= download.len() as u64 / 2,
        "and the download: {kernel_down}"
    );
    assert_eq!(
        up,
        (early_up.len() + upload.len()) as u64,
        "bytes up, tunnel + kernel"
    );
    assert_eq!(
        down,
        (banner.len() + download.len()) as u64,
        "bytes down, tunnel + kernel"
    );
}

#[test]
fn joined_connection_carries_every_byte_in_order_both_ways() {
    let _serial = serial();
    let pod = Pod::new(41).expect("pod");
    let cg = TestCgroup::join("wfte-join").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let (redirect, joiner) = load(&cg, &tunnel, &pod);
    transfers_exactly(&pod, &tunnel, &server, &joiner);
    // Ten more in a row: keys are reused cleanly and every one switches.
    for _ in 0..10 {
        let pair = joined_pair(&pod, &joiner, &tunnel, &server, When::Busy, |_, _| {});
        let (mut client, mut server, copy) = start_copy(pair);
        for round in 0..20u32 {
            let request = pattern(100 + round as usize * 997, round);
            client.write_all(&request).unwrap();
            assert!(read_exactly(&mut server, request.len()) == request);
            let answer = pattern(5_000 + round as usize * 131, round + 100);
            server.write_all(&answer).unwrap();
            assert!(read_exactly(&mut client, answer.len()) == answer);
        }
        drop((client, server));
        let (_, _join, switched) = copy.join().unwrap();
        assert_eq!(
            switched,
            (true, true),
            "request/response switches both ways"
        );
    }
    // One request and one answer: not worth a join, the tunnel copies them.
    let pair = joined_pair(&pod, &joiner, &tunnel, &server, When::Busy, |_, _| {});
    let (mut client, mut server, copy) = start_copy(pair);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut server), b"GET / HTTP/1.1\r\n\r\n");
    server.write_all(b"HTTP/1.1 200 OK\r\n\r\nhi").unwrap();
    drop(server);
    assert_eq!(read_to_eof(&mut client), b"HTTP/1.1 200 OK\r\n\r\nhi");
    let (result, join, switched) = copy.join().unwrap();
    assert!(join.is_none(), "a short connection is not joined");
    assert_eq!(switched, (false, false));
    assert_eq!(
        result.expect("copy ends cleanly"),
        (18, 21),
        "bytes counted by the tunnel"
    );
    drop(redirect);
    drop(cg);
}

#[test]
fn joined_connection_over_ipv6() {
    let _serial = serial();
    let pod = Pod::new(42).expect("pod");
    pod.add_ipv6().expect("pod ipv6");
    let cg = TestCgroup::join("wfte-join6").expect("cgroup");
    let tunnel = listen_on6(pod.host_ip6(), 0);
    let server = listen_on6(pod.host_ip6(), 0);
    let (redirect, joiner) = load(&cg, &tunnel, &pod);
    transfers_exactly(&pod, &tunnel, &server, &joiner);
    drop(redirect);
    drop(cg);
}

#[test]
fn resets_and_the_tunnel_closing_end_a_joined_connection() {
    let _serial = serial();
    let pod = Pod::new(43).expect("pod");
    let cg = TestCgroup::join("wfte-join-end").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let dest = listen_on(pod.host_ip);
    let (redirect, joiner) = load(&cg, &tunnel, &pod);

    // The client resets mid-stream: the copy ends and the server is not left waiting.
    let pair = joined_pair(&pod, &joiner, &tunnel, &dest, When::Now, |_, _| {});
    let (mut client, mut server, copy) = start_copy(pair);
    client.write_all(&pattern(10_000, 9)).unwrap();
    assert_eq!(read_exactly(&mut server, 10_000), pattern(10_000, 9));
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let (result, _join, _) = copy.join().expect("copy thread");
    assert!(
        result.is_err(),
        "a reset is an error for the copy: {result:?}"
    );
    let mut rest = Vec::new();
    if let Err(error) = server.read_to_end(&mut rest) {
        let waited = matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        assert!(
            !waited,
            "the server is told the connection ended, not left waiting"
        );
    }
    assert!(rest.is_empty(), "nothing after the reset");

    // The tunnel closes a joined connection (a policy change): both apps see the end, and
    // writes do not vanish into a join that is gone.
    let pair = joined_pair(&pod, &joiner, &tunnel, &dest, When::Now, |client, _| {
        client.write_all(b"EARLY").unwrap();
    });
    assert_switches_in_order(&pair);
    let Pair {
        mut client,
        accepted,
        upstream,
        mut server,
        slot,
    } = pair;
    drop(slot);
    drop((accepted, upstream));
    assert!(
        read_to_eof(&mut client).is_empty(),
        "client sees the tunnel's FIN"
    );
    assert!(
        read_to_eof(&mut server).is_empty(),
        "server sees the tunnel's FIN"
    );
    let mut failed = false;
    for _ in 0..50 {
        if client.write_all(&[0u8; 4096]).is_err() {
            failed = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        failed,
        "writes after the tunnel closed fail (reset), not vanish"
    );

    // The tunnel read more than the programs counted (what uncounted writes, e.g. TCP Fast Open
    // data queued before the handshake, would look like): that direction never switches.
    let pair = joined_pair(&pod, &joiner, &tunnel, &dest, When::Now, |client, _| {
        client.write_all(b"EARLY").unwrap();
    });
    let join = pair.slot.into_join().expect("joined");
    let Pair {
        mut client,
        accepted,
        upstream,
        mut server,
        ..
    } = pair;
    use mesh_node::redirect::join::Direction;
    join.forwarded(Direction::ClientToServer, 6);
    client.write_all(b"+tcp").unwrap();
    let mut buffer = vec![0; 9];
    (&accepted).read_exact(&mut buffer).unwrap();
    assert_eq!(buffer, b"EARLY+tcp", "still through the tunnel, in order");
    join.forwarded(Direction::ClientToServer, 9);
    client.write_all(b"!").unwrap();
    (&accepted).read_exact(&mut buffer[..1]).unwrap();
    assert_eq!(
        &buffer[..1],
        b"!",
        "a distrusted direction stays on the tunnel"
    );
    assert!(!join.kernel_part()[0].0);
    server.write_all(b"ok").unwrap();
    assert_eq!(
        read_exactly(&mut client, 2),
        b"ok",
        "the other direction is unaffected"
    );
    drop((join, accepted, upstream));

    // A connection the programs did not count (not redirected: from outside the pods) is not
    // joinable, so the tunnel copies it.
    let listener = listen_on(pod.host_ip);
    let outsider = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let key = Joiner::key(
        outsider.local_addr().unwrap(),
        outsider.peer_addr().unwrap(),
    );
    assert!(
        !joiner.joinable(&key),
        "an uncounted socket is never joined"
    );
    drop(redirect);
    drop(cg);
}

/// The switch rule on a live pair, the test forwarding by hand as the tunnel would: a write
/// made while earlier bytes are still unforwarded stays on TCP (behind them), and the first
/// write after the tunnel reported everything forwarded goes through the kernel.
fn assert_switches_in_order(pair: &Pair) {
    use mesh_node::redirect::join::Direction;
    let (mut client, mut server) = (&pair.client, &pair.server);
    let join = pair.join();
    // `joined_pair`'s `before` wrote EARLY (5 bytes) to the tunnel.
    client.write_all(b"-later").unwrap();
    assert!(
        !join.kernel_part()[0].0,
        "EARLY is not forwarded yet: still on TCP"
    );
    let mut buffer = vec![0; 11];
    (&pair.accepted).read_exact(&mut buffer).unwrap();
    assert_eq!(buffer, b"EARLY-later", "both reached the tunnel, in order");
    (&pair.upstream).write_all(&buffer).unwrap();
    join.forwarded(Direction::ClientToServer, 11);
    let mut got = vec![0; 11];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, b"EARLY-later");
    client.write_all(b"+kernel").unwrap();
    server.read_exact(&mut got[..7]).unwrap();
    assert_eq!(&got[..7], b"+kernel");
    assert!(join.kernel_part()[0].0, "the client's direction switched");
    // The server has written nothing: its first write switches at once.
    server.write_all(b"answer").unwrap();
    client.read_exact(&mut got[..6]).unwrap();
    assert_eq!(&got[..6], b"answer");
    assert!(join.kernel_part()[1].0, "the server's direction switched");
}
