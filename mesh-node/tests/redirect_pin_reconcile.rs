//! Enrollment after a pinned restart, with real eBPF (root; fails loudly otherwise): the pods a
//! previous mesh-node enrolled stay captured while the new one does not know its pods yet, and
//! once it does, the adopted enrollment map is reconciled with them: a pod that left while the
//! tunnel was down is unenrolled (its connects go direct again; a departed namespace's cookie is
//! gone from the map), the pods still wanted were never out of it, and the shutdown says the
//! programs were left attached. Each run mounts its own bpffs instance.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use mesh_core::drain;
use mesh_ebpf_common::maps;
use mesh_node::{
    enrollment::EnrollmentHandle,
    pod_netns::ScanConfig,
    pod_scan::PodScanner,
    redirect::{pin, Config, EnrollMode, Redirect},
};
use support::{bpffs::Bpffs, *};

/// The cookies in the pinned `ENROLLED` map, read the way a second process would.
fn pinned_enrolled(pins: &Path) -> BTreeSet<u64> {
    let data = MapData::from_pin(pins.join("maps").join(maps::ENROLLED)).expect("pinned map");
    let map: HashMap<MapData, u64, u32> = HashMap::try_from(Map::HashMap(data)).expect("hash map");
    map.keys().map(|k| k.expect("key")).collect()
}

/// Whether a connect from `pod` to `server` reached the tunnel (`true`) or the server.
fn goes_via_tunnel(pod: &Pod, tunnel: &TcpListener, server: &TcpListener) -> bool {
    let _client = pod
        .connect(SocketAddr::V4(v4(server)))
        .expect("pod connects");
    let deadline = Instant::now() + WAIT;
    loop {
        if accept_within(tunnel, Duration::ZERO)
            .expect("poll")
            .is_some()
        {
            return true;
        }
        if accept_within(server, Duration::ZERO)
            .expect("poll")
            .is_some()
        {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "neither tunnel nor server accepted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects formatted log lines of the current thread's scoped subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn adopted_enrollments_are_reconciled_with_the_wanted_pods() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-reconcile");
    let (stay, left) = (
        Pod::new(79).expect("staying pod"),
        Pod::new(80).expect("departing pod"),
    );
    let cg = TestCgroup::join("wfte-pin-reconcile").expect("cgroup");
    let tunnel = listen_on(stay.host_ip);
    let (server, left_server) = (listen_on(stay.host_ip), listen_on(left.host_ip));
    let mut config = Config::new(&cg.relative, v4(&tunnel));
    config.pin_path = Some(bpffs.pins());
    // The previous mesh-node: both pods and a pod whose namespace is gone by now.
    let departed = u64::MAX - 11;
    let mut previous = Redirect::load(&config).unwrap_or_else(|e| panic!("pinned load: {e}"));
    for (cookie, mode) in [
        (stay.cookie(), EnrollMode::Capture),
        (left.cookie(), EnrollMode::Capture),
        (departed, EnrollMode::Strict),
    ] {
        previous.enroll(cookie, mode).expect("enroll");
    }
    drop(previous);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let (trigger, watch) = drain::channel();
    let scanner = PodScanner::spawn(ScanConfig::default(), Duration::from_millis(50), watch);
    let handle = EnrollmentHandle::start_pending(&config, scanner.results())
        .unwrap_or_else(|e| panic!("adopting load: {e}"));
    // Scans run, but the wanted pods are unknown: nothing adopted is dropped.
    runtime.block_on(async {
        let mut scans = scanner.results();
        tokio::time::timeout(WAIT, scans.changed())
            .await
            .expect("a scan ran")
            .expect("scanner alive");
    });
    assert!(
        goes_via_tunnel(&left, &tunnel, &left_server),
        "kept while pending"
    );
    assert_eq!(
        pinned_enrolled(&bpffs.pins()),
        BTreeSet::from([stay.cookie(), left.cookie(), departed])
    );

    handle.set_wanted(BTreeMap::from([(IpAddr::V4(stay.ip), EnrollMode::Capture)]));
    let deadline = Instant::now() + WAIT;
    while pinned_enrolled(&bpffs.pins()) != BTreeSet::from([stay.cookie()]) {
        assert!(
            Instant::now() < deadline,
            "never reconciled: {:?}",
            pinned_enrolled(&bpffs.pins())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !goes_via_tunnel(&left, &tunnel, &left_server),
        "left pod goes direct"
    );
    assert!(
        goes_via_tunnel(&stay, &tunnel, &server),
        "staying pod captured"
    );

    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            tokio::time::timeout(WAIT, handle.shutdown())
                .await
                .expect("enrollment shutdown hung");
        })
    });
    let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(text.contains("left attached (pinned)"), "{text}");
    assert!(!text.contains("detached"), "{text}");
    assert!(
        goes_via_tunnel(&stay, &tunnel, &server),
        "still captured after exit"
    );

    runtime.block_on(async {
        tokio::time::timeout(WAIT, trigger.drain(WAIT))
            .await
            .expect("scanner drain hung")
    });
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(cg);
}
