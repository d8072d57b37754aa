//! Same-node splicing with real eBPF (needs root; fails loudly otherwise): an enrolled pod's
//! connection and the tunnel's accepted socket are spliced by `sk_msg`; large transfers in both
//! directions arrive byte-identical, and half-close (shutdown of one direction) still delivers
//! everything followed by EOF. With a pin directory the splice program's link is pinned too: it
//! outlives the loader and the next loader swaps its program in place.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    io::Write,
    net::{Shutdown, SocketAddr},
    thread,
};

use std::os::fd::AsFd;

use mesh_ebpf_common::{maps, programs};
use mesh_node::redirect::{bpf_sys, pin, Config, EnrollMode, Redirect};
use support::{bpffs::Bpffs, *};

#[test]
fn spliced_pair_carries_large_transfers_and_half_close_exactly() {
    let _serial = serial();
    let pod = Pod::new(31).expect("pod");
    let cg = TestCgroup::join("wfte-splice").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.splice = true;
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");

    let mut client = pod.connect(SocketAddr::V4(v4(&server))).expect("connect");
    let mut at_tunnel = accept_within(&tunnel, WAIT)
        .expect("poll")
        .expect("redirected to tunnel");
    assert_eq!(original_dst(&at_tunnel).expect("original dst"), v4(&server));

    let upload = pattern(8 << 20, 1);
    let download = pattern(6 << 20, 2);
    let expected_download = download.clone();
    // Client uploads then half-closes; the tunnel reads to EOF, then answers and closes.
    let uploader = {
        let mut client = client.try_clone().expect("clone client");
        thread::spawn(move || {
            write_uneven(&mut client, &upload);
            client.shutdown(Shutdown::Write).expect("half-close");
            upload
        })
    };
    let received = read_to_eof(&mut at_tunnel);
    let upload = uploader.join().expect("uploader");
    assert_eq!(received.len(), upload.len(), "upload length");
    assert!(received == upload, "upload bytes differ");
    write_uneven(&mut at_tunnel, &download);
    at_tunnel
        .shutdown(Shutdown::Write)
        .expect("tunnel half-close");
    let got = read_to_eof(&mut client);
    assert_eq!(got.len(), expected_download.len(), "download length");
    assert!(got == expected_download, "download bytes differ");

    let c = redirect.counters().expect("counters");
    assert_eq!(
        c.splice_added, 2,
        "both sockets joined the splice map: {c:?}"
    );
    assert!(
        c.splice_redirected > 0,
        "messages took the splice path: {c:?}"
    );
    drop((client, at_tunnel));
    drop(redirect);
    drop(cg);
}

#[test]
fn writes_after_the_tunnel_closed_end_in_a_reset_not_silent_loss() {
    let _serial = serial();
    let pod = Pod::new(33).expect("pod");
    let cg = TestCgroup::join("wfte-splice-close").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.splice = true;
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let mut client = pod.connect(SocketAddr::V4(v4(&server))).expect("connect");
    let mut at_tunnel = accept_within(&tunnel, WAIT)
        .expect("poll")
        .expect("redirected");
    assert_carries(&mut client, &mut at_tunnel, b"spliced before close");
    assert!(redirect.counters().expect("counters").splice_redirected > 0);

    drop(at_tunnel);
    assert!(
        read_to_eof(&mut client).is_empty(),
        "client sees the tunnel's FIN"
    );
    // The tunnel socket left the splice map: this write must go through TCP and draw a reset.
    client
        .write_all(b"late")
        .expect("first write after FIN is accepted locally");
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&client),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; events=0 still reports POLLERR/POLLHUP, which a reset raises.
    let ready = unsafe { libc::poll(&mut pfd, 1, WAIT.as_millis() as libc::c_int) };
    assert_eq!(ready, 1, "reset arrives within 5s");
    assert_ne!(
        pfd.revents & libc::POLLERR,
        0,
        "socket error raised: {:#x}",
        pfd.revents
    );
    let err = client
        .write_all(b"more")
        .expect_err("writes fail after the reset");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    drop(client);
    drop(redirect);
    drop(cg);
}

#[test]
fn splicing_off_by_default_keeps_sockets_out_of_the_map() {
    let _serial = serial();
    let pod = Pod::new(32).expect("pod");
    let cg = TestCgroup::join("wfte-splice-off").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let config = Config::new(&cg.relative, v4(&tunnel));
    let mut redirect =
        Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    let mut client = pod.connect(SocketAddr::V4(v4(&server))).expect("connect");
    let mut at_tunnel = accept_within(&tunnel, WAIT)
        .expect("poll")
        .expect("redirected");
    assert_carries(&mut client, &mut at_tunnel, b"plain tcp");
    let c = redirect.counters().expect("counters");
    assert_eq!((c.splice_added, c.splice_redirected), (0, 0), "{c:?}");
    drop((client, at_tunnel));
    drop(redirect);
    drop(cg);
}

/// (link id, program id, map id) of the pinned splice link.
fn splice_link(pins: &std::path::Path) -> (u32, u32, u32) {
    let link = bpf_sys::obj_get(&pins.join("links").join(programs::SPLICE_MSG))
        .expect("splice link pinned");
    let info = bpf_sys::cgroup_link_info(link.as_fd()).expect("link info");
    let map = bpf_sys::sockmap_link_map_id(link.as_fd()).expect("sockmap link info");
    (info.id, info.prog_id, map)
}

/// A redirected connection that carries a message each way; true when `sk_msg` spliced it.
fn spliced_exchange(redirect: &Redirect, pod: &Pod, tunnel: &std::net::TcpListener) -> bool {
    let before = redirect.counters().expect("counters").splice_redirected;
    // Any destination but the tunnel itself: the connect is redirected to the tunnel.
    let original = SocketAddr::from((pod.host_ip, 9));
    let mut client = pod.connect(original).expect("connect");
    let mut at_tunnel = accept_within(tunnel, WAIT)
        .expect("poll")
        .expect("redirected to tunnel");
    assert_carries(&mut client, &mut at_tunnel, b"up");
    assert_carries(&mut at_tunnel, &mut client, b"down");
    redirect.counters().expect("counters").splice_redirected > before
}

#[test]
fn pinned_splice_link_survives_the_loader_and_is_adopted_in_place() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-splice");
    let pod = Pod::new(34).expect("pod");
    let cg = TestCgroup::join("wfte-splice-pin").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.splice = true;
    config.pin_path = Some(bpffs.pins());
    let mut first = Redirect::load(&config).unwrap_or_else(|e| panic!("pinned load: {e}"));
    first
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    assert!(spliced_exchange(&first, &pod, &tunnel), "spliced");
    let before = splice_link(&bpffs.pins());
    let splice_map =
        bpf_sys::obj_get(&bpffs.pins().join("maps").join(maps::SPLICE)).expect("SPLICE map pinned");
    assert_eq!(
        before.2,
        bpf_sys::map_id(splice_map.as_fd()).expect("map id")
    );
    drop(first);

    assert_eq!(
        splice_link(&bpffs.pins()),
        before,
        "the link outlives the loader"
    );
    let second = Redirect::load(&config).unwrap_or_else(|e| panic!("adopting load: {e}"));
    let after = splice_link(&bpffs.pins());
    assert_eq!(
        (after.0, after.2),
        (before.0, before.2),
        "same link, same map"
    );
    assert_ne!(after.1, before.1, "its program was replaced");
    assert!(
        spliced_exchange(&second, &pod, &tunnel),
        "spliced after adoption"
    );
    drop(second);

    // Without splice the pinned link is retired.
    config.splice = false;
    let third = Redirect::load(&config).expect("load without splice");
    let link_path = bpffs.pins().join("links").join(programs::SPLICE_MSG);
    assert!(!link_path.exists(), "splice link retired");
    drop(third);
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(cg);
}
