//! bpffs pinning with real eBPF (needs root; fails loudly otherwise): with a pin directory the
//! programs stay attached when the loader goes away, so an enrolled pod's connects still go to
//! the tunnel (never around it) while mesh-node restarts; the next loader adopts the pinned maps
//! and swaps every program in place; cleanup removes everything. Each test mounts its own bpffs
//! instance, so nothing touches the machine's /sys/fs/bpf.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    os::fd::AsFd,
    path::Path,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use mesh_ebpf_common::{maps, programs};
use mesh_node::redirect::{
    bpf_sys::{self, CgroupLinkInfo},
    pin::{self, PINNED_MAPS},
    programs as redirect_programs, Config, EnrollMode, ListenerKind, Redirect, RedirectError,
};
use support::{bpffs::Bpffs, topology::DirectPair, *};

const PROGRAMS: [&str; 9] = redirect_programs::CGROUP_PROGRAMS;

fn links(pins: &Path) -> BTreeMap<&'static str, CgroupLinkInfo> {
    PROGRAMS
        .iter()
        .map(|name| {
            let link = bpf_sys::obj_get(&pins.join("links").join(name))
                .unwrap_or_else(|e| panic!("link of {name} pinned: {e}"));
            let info = bpf_sys::cgroup_link_info(link.as_fd()).expect("link info");
            (*name, info)
        })
        .collect()
}

/// Connects from the pod and checks the tunnel, not the real server, got it.
fn assert_redirected(pod: &Pod, tunnel: &TcpListener, server: &TcpListener, when: &str) {
    let mut client = pod
        .connect(SocketAddr::V4(v4(server)))
        .unwrap_or_else(|e| panic!("{when}: connect: {e}"));
    let mut at_tunnel = accept_within(tunnel, WAIT)
        .expect("poll")
        .unwrap_or_else(|| panic!("{when}: the tunnel got no connection"));
    assert_eq!(
        original_dst(&at_tunnel).expect("SO_ORIGINAL_DST"),
        v4(server),
        "{when}"
    );
    assert_carries(&mut client, &mut at_tunnel, when.as_bytes());
    assert!(
        accept_within(server, Duration::ZERO)
            .expect("poll")
            .is_none(),
        "{when}: bypassed the tunnel"
    );
}

/// Connects from the pod and checks the real server got it (nothing redirected).
fn assert_direct(pod: &Pod, server: &TcpListener, when: &str) {
    let mut client = pod
        .connect(SocketAddr::V4(v4(server)))
        .unwrap_or_else(|e| panic!("{when}: connect: {e}"));
    let mut got = accept_within(server, WAIT)
        .expect("poll")
        .unwrap_or_else(|| panic!("{when}: the real server got no connection"));
    assert_carries(&mut client, &mut got, when.as_bytes());
}

#[test]
fn pinned_programs_survive_the_loader_and_are_adopted_in_place() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-adopt");
    let pod = Pod::new(71).expect("pod");
    let cg = TestCgroup::join("wfte-pin-adopt").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    let mut first = Redirect::load(&config).unwrap_or_else(|e| panic!("pinned load: {e}"));
    first
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    // A pod that leaves the mesh while the loader is down (no namespace has this cookie).
    let departed = u64::MAX - 7;
    first
        .enroll(departed, EnrollMode::Strict)
        .expect("enroll departed");
    assert_redirected(&pod, &tunnel, &server, "first loader");
    let before = links(&bpffs.pins());
    pin::PinDir::open(&bpffs.pins())
        .and_then(|dir| dir.check_adoptable())
        .expect("the object's maps match the layouts this build checks");
    drop(first);

    // mesh-node is down: the pod is still captured; its connects reach the tunnel's address.
    assert_redirected(&pod, &tunnel, &server, "loader gone");

    // A new loader adopts while the pod keeps connecting: not one connect may bypass.
    let stop = AtomicBool::new(false);
    let attempts = AtomicUsize::new(0);
    let second = std::thread::scope(|scope| {
        scope.spawn(|| {
            pod.run_in(|| {
                while !stop.load(Ordering::Relaxed) && attempts.load(Ordering::Relaxed) < 100 {
                    let _ = connect(SocketAddr::V4(v4(&server)));
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let loaded = Redirect::load(&config);
        stop.store(true, Ordering::Relaxed);
        loaded
    });
    let mut second = second.unwrap_or_else(|e| panic!("adopting load: {e}"));
    assert!(attempts.load(Ordering::Relaxed) > 0, "the probe ran");
    assert!(
        accept_within(&server, Duration::ZERO)
            .expect("poll")
            .is_none(),
        "a connect bypassed the tunnel while programs were swapped"
    );
    while accept_within(&tunnel, Duration::ZERO)
        .expect("drain")
        .is_some()
    {}

    let after = links(&bpffs.pins());
    for name in PROGRAMS {
        let (old, new) = (before[name], after[name]);
        assert_eq!(old.id, new.id, "{name}: the same link was kept");
        assert_ne!(old.prog_id, new.prog_id, "{name}: its program was replaced");
        assert_eq!(old.cgroup_id, new.cgroup_id, "{name}");
    }
    let mut adopted = second.enrolled_pods().expect("enrolled");
    adopted.sort_unstable_by_key(|(cookie, _)| *cookie);
    assert_eq!(
        adopted,
        vec![
            (pod.cookie(), EnrollMode::Capture),
            (departed, EnrollMode::Strict)
        ],
        "enrollment adopted from the pinned map"
    );
    let kept = pod.cookie();
    assert_eq!(second.retain_enrolled(|c| c == kept).expect("reconcile"), 1);
    assert_eq!(
        second.enrolled_pods().expect("enrolled"),
        vec![(kept, EnrollMode::Capture)]
    );
    assert_redirected(&pod, &tunnel, &server, "adopted");
    let c = second.counters().expect("counters");
    assert!(
        c.connect_redirected >= 3,
        "pinned counters carried over: {c:?}"
    );

    drop(second);
    let removed = pin::remove_all(&bpffs.pins()).expect("cleanup");
    assert_eq!(
        (removed.links, removed.maps),
        (PROGRAMS.len(), PINNED_MAPS.len())
    );
    assert!(!bpffs.pins().exists(), "nothing left in bpffs");
    assert_direct(&pod, &server, "after cleanup nothing redirects");
    drop(cg);
}

#[test]
fn incompatible_pins_are_refused_and_leave_the_old_programs_attached() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-refuse");
    let pod = Pod::new(72).expect("pod");
    let cg = TestCgroup::join("wfte-pin-refuse").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    let mut first = Redirect::load(&config).expect("pinned load");
    first
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    drop(first);

    // Stand-in for a build with another ABI: a map of other key size under ENROLLED's name.
    let map_dir = bpffs.pins().join("maps");
    fs::remove_file(map_dir.join(maps::ENROLLED)).expect("unpin");
    fs::rename(
        map_dir.join(maps::EXCLUDED_PORTS),
        map_dir.join(maps::ENROLLED),
    )
    .expect("rename");
    let err = Redirect::load(&config).expect_err("incompatible map must not be adopted");
    assert!(matches!(err, RedirectError::Pin(_)), "{err}");
    assert!(err.to_string().contains("--bpf-cleanup"), "{err}");
    // The refused loader changed nothing: pinned programs still capture the pod.
    assert_redirected(&pod, &tunnel, &server, "after a refused load");

    let removed = pin::remove_all(&bpffs.pins()).expect("cleanup");
    assert_eq!(removed.links, PROGRAMS.len());
    let fresh = Redirect::load(&config).expect("loads after cleanup");
    assert!(fresh.pinned().is_some());
    drop(fresh);
    pin::remove_all(&bpffs.pins()).expect("cleanup again");
    drop(cg);
}

#[test]
fn without_a_pin_path_nothing_outlives_the_loader() {
    let _serial = serial();
    let pod = Pod::new(73).expect("pod");
    let cg = TestCgroup::join("wfte-pin-none").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut redirect = Redirect::load(&Config::new(&cg.relative, v4(&tunnel))).expect("load");
    assert!(redirect.pinned().is_none());
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    assert_redirected(&pod, &tunnel, &server, "attached");
    drop(redirect);
    assert_direct(&pod, &server, "detached on drop");
    drop(cg);
}

#[test]
fn bpf_cleanup_flag_of_the_binary_detaches_and_removes_the_pins() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-cli");
    let pod = Pod::new(74).expect("pod");
    let cg = TestCgroup::join("wfte-pin-cli").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    let mut redirect = Redirect::load(&config).expect("pinned load");
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    drop(redirect);
    assert_redirected(&pod, &tunnel, &server, "pinned, loader gone");

    let pins = bpffs.pins();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args(["--bpf-cleanup", "--bpf-pin-path"])
        .arg(&pins)
        .output()
        .expect("run mesh-node --bpf-cleanup");
    assert!(
        output.status.success(),
        "mesh-node --bpf-cleanup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!pins.exists(), "nothing left in bpffs");
    assert_direct(&pod, &server, "programs detached by the cleanup");
    drop(cg);
}

#[test]
fn strict_pods_keep_dropping_plaintext_while_the_loader_is_gone() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-strict");
    let pair = DirectPair::new(75, 76).expect("pods");
    let cg = TestCgroup::join("wfte-pin-strict").expect("cgroup");
    let tunnel = listen_on(pair.server.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    config.tunnel_mark = 0x539;
    let mut redirect = Redirect::load(&config).expect("pinned load");
    redirect
        .enroll(pair.server.cookie(), EnrollMode::Strict)
        .expect("enroll strict");
    drop(redirect);

    let app = pair.server.listen(8080).expect("app listens");
    // The tunnel's in-pod HBONE listener carries the tunnel mark, as mesh-node sets it.
    let hbone = pair.server.listen(15008).expect("HBONE listener");
    socket2::SockRef::from(&hbone)
        .set_mark(config.tunnel_mark)
        .expect("SO_MARK");
    let outsider_ip = pair.outsider.ip;
    let direct = |port| SocketAddr::from((pair.server_end_v4(), port));
    let attempt = pair
        .outsider
        .run_in(|| connect_from(outsider_ip, direct(8080), DROPPED_WAIT));
    assert_dropped(
        attempt,
        "plaintext into a strict pod with no loader running",
    );
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    let _hbone_client = pair
        .outsider
        .run_in(|| connect_from(outsider_ip, direct(15008), WAIT))
        .expect("HBONE still allowed");
    assert!(accept_within(&hbone, WAIT).expect("poll").is_some());

    pin::remove_all(&bpffs.pins()).expect("cleanup");
    let mut client = pair
        .outsider
        .run_in(|| connect_from(outsider_ip, direct(8080), WAIT))
        .expect("after cleanup strict no longer applies");
    let mut accepted = accept_within(&app, WAIT).expect("poll").expect("accepted");
    assert_carries(&mut client, &mut accepted, b"unfiltered");
    drop(cg);
}

#[test]
fn pinned_links_of_another_cgroup_are_not_adopted() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-cgroup");
    let pod = Pod::new(77).expect("pod");
    let cg = TestCgroup::join("wfte-pin-cgroup").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    drop(Redirect::load(&config).expect("pinned load"));

    let mount = mesh_node::redirect::cgroup::cgroup2_mount().expect("cgroup2");
    let other = mount.join("wfte-pin-cgroup-other");
    let _ = fs::remove_dir(&other);
    fs::create_dir(&other).expect("second cgroup");
    config.cgroup = "wfte-pin-cgroup-other".into();
    let err = Redirect::load(&config).expect_err("links of another cgroup must not be adopted");
    let text = err.to_string();
    assert!(text.contains("not to the configured cgroup"), "{text}");
    assert!(text.contains("--bpf-cleanup"), "{text}");
    fs::remove_dir(&other).expect("remove second cgroup");
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(cg);
}

#[test]
fn links_of_programs_this_build_no_longer_has_are_retired() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-retire");
    let pod = Pod::new(78).expect("pod");
    let cg = TestCgroup::join("wfte-pin-retire").expect("cgroup");
    let tunnel = listen_on(pod.host_ip);
    let server = listen_on(pod.host_ip);
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    drop(Redirect::load(&config).expect("pinned load"));

    // Stand-in for a program an older build had: a second link running connect4's program,
    // pinned under a name this build does not know.
    let links_dir = bpffs.pins().join("links");
    let connect4 = links(&bpffs.pins())[programs::CONNECT4];
    let program = bpf_sys::prog_fd_by_id(connect4.prog_id).expect("program fd");
    let cgroup_dir = fs::File::open(
        mesh_node::redirect::cgroup::cgroup2_mount()
            .expect("cgroup2")
            .join(&cg.relative),
    )
    .expect("cgroup dir");
    let retired = bpf_sys::link_create(
        program.as_fd(),
        cgroup_dir.as_fd(),
        bpf_sys::attach_type::INET4_CONNECT,
    )
    .expect("extra link");
    let retired_path = links_dir.join("weft_retired_program");
    bpf_sys::obj_pin(retired.as_fd(), &retired_path).expect("pin extra link");
    let info = bpf_sys::cgroup_link_info(retired.as_fd()).expect("info");
    assert_eq!(
        info.cgroup_id, connect4.cgroup_id,
        "attached to the test cgroup"
    );

    let mut redirect = Redirect::load(&config).expect("adopting load");
    assert!(!retired_path.exists(), "unknown link pin removed");
    let info = bpf_sys::cgroup_link_info(retired.as_fd()).expect("info");
    assert_eq!(info.cgroup_id, 0, "unknown link detached from its cgroup");
    assert_eq!(
        links(&bpffs.pins()).len(),
        PROGRAMS.len(),
        "current links kept"
    );
    redirect
        .enroll(pod.cookie(), EnrollMode::Capture)
        .expect("enroll");
    assert_redirected(&pod, &tunnel, &server, "after retiring");
    drop(redirect);
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(cg);
}

/// Inbound steering with a pin directory: while no loader runs, a steered pod refuses every
/// connection attempt (its pinned `sk_lookup` link stays, the tunnel's listeners are gone), even
/// a PERMISSIVE one's; the next loader adopts the link, the pod's new listeners get the
/// connections; a pinned link no pod claims (the pod left the mesh meanwhile) is retired and
/// its pin removed, and the pod is reached directly again.
#[test]
fn pinned_steering_refuses_while_the_loader_is_gone_and_is_adopted() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-steer");
    let pair = DirectPair::new(79, 80).expect("pods");
    let pods = TestCgroup::create("wfte-pin-steer").expect("cgroup");
    let tunnel = listen_on(pair.server.host_ip);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    let pod = std::net::IpAddr::from(pair.server_end_v4());
    let (cookie, netns) = (pair.server.cookie(), pair.server.netns());
    let app = pair.server.listen(8080).expect("app listens");
    let outsider = pair.outsider.ip;
    let dial = || {
        let to = SocketAddr::new(pod, 8080);
        pair.outsider
            .run_in(move || connect_from(outsider, to, WAIT))
    };
    let tunnel_listener = || {
        pair.server
            .run_in(|| TcpListener::bind((pod, 15006)))
            .expect("plaintext listener in the pod")
    };
    let pin = bpffs.pins().join("steering").join(cookie.to_string());

    let redirect = Redirect::load(&config).expect("pinned load");
    let steering = redirect.steering();
    steering.steer(cookie, netns, pod).expect("steer");
    let plaintext = tunnel_listener();
    steering
        .listener(pod, ListenerKind::Plaintext, plaintext.as_fd())
        .expect("register");
    let mut client = dial().expect("steered");
    let mut got = accept_within(&plaintext, WAIT)
        .expect("poll")
        .expect("on the tunnel");
    assert_carries(&mut client, &mut got, b"first loader");
    assert!(pin.exists(), "steering link pinned at {}", pin.display());
    drop((client, got, plaintext, steering, redirect));

    let refused = dial();
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "no loader: refused, not {refused:?}"
    );
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());

    let redirect = Redirect::load(&config).expect("adopting load");
    let steering = redirect.steering();
    assert_eq!(steering.steered(), vec![cookie], "pinned link adopted");
    assert!(dial().is_err(), "adopted, no listener yet: still refused");
    steering.steer(cookie, netns, pod).expect("claim");
    let scanned = std::collections::HashSet::from([cookie]);
    assert_eq!(steering.retire_unclaimed(&scanned), 0, "claimed links stay");
    let plaintext = tunnel_listener();
    steering
        .listener(pod, ListenerKind::Plaintext, plaintext.as_fd())
        .expect("register");
    let mut client = dial().expect("steered again");
    let mut got = accept_within(&plaintext, WAIT)
        .expect("poll")
        .expect("new listener");
    assert_carries(&mut client, &mut got, b"second loader");
    drop((client, got, plaintext, steering, redirect));

    // The pod left the mesh while no loader ran: nobody claims its link.
    let redirect = Redirect::load(&config).expect("adopting load");
    let steering = redirect.steering();
    let not_scanned = std::collections::HashSet::new();
    assert_eq!(
        steering.retire_unclaimed(&not_scanned),
        0,
        "not scanned yet: kept"
    );
    assert!(dial().is_err(), "kept: still refused");
    assert_eq!(steering.retire_unclaimed(&scanned), 1);
    assert!(!pin.exists(), "pin removed");
    let mut client = dial().expect("direct again");
    let mut got = accept_within(&app, WAIT)
        .expect("poll")
        .expect("the app itself");
    assert_carries(&mut client, &mut got, b"left the mesh");
    drop((client, got, steering, redirect));
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(pods);
}

/// A pinned steering link whose pod's namespace went away while no loader ran is not adopted:
/// its pin is removed at the next load.
#[test]
fn pinned_steering_of_a_vanished_namespace_is_dropped_at_adoption() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-vanish");
    let pods = TestCgroup::create("wfte-pin-vanish").expect("cgroup");
    let pod = Pod::new(81).expect("pod");
    let tunnel = listen_on(pod.host_ip);
    let mut config = Config::new(&pods.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    let cookie = pod.cookie();
    let pin = bpffs.pins().join("steering").join(cookie.to_string());
    let redirect = Redirect::load(&config).expect("pinned load");
    redirect
        .steering()
        .steer(cookie, pod.netns(), pod.ip.into())
        .expect("steer");
    drop(redirect);
    assert!(pin.exists());
    drop(pod);
    // The namespace goes once nothing holds it; give the kernel a moment to tear it down.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let redirect = Redirect::load(&config).expect("adopting load");
        let steered = redirect.steering().steered();
        steered.is_empty()
    });
    assert!(gone, "the vanished namespace's link was adopted");
    assert!(!pin.exists(), "its pin removed");
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(pods);
}
