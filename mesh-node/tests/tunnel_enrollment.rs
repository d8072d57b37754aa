//! eBPF enrollment driven by the shared namespace scan, with the real programs (root; fails
//! loudly otherwise): a wanted pod is enrolled once the scan finds its namespace, its connects
//! are redirected and counted in the exported counters, it is unenrolled when no longer wanted,
//! and the counters report the programs detached after shutdown.
//!
//! Uses the `redirect_*` fixtures (pod `wfte-201`, addresses in 10.201.201.0/24).

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use mesh_core::drain;
use mesh_node::{
    enrollment::EnrollmentHandle,
    pod_netns::ScanConfig,
    pod_scan::PodScanner,
    redirect::{Config, EnrollMode},
};
use support::*;

/// Connects from the pod to `server` until a connection lands on the tunnel (`via_tunnel`) or on
/// the server itself, bounded by [`WAIT`] (enrollment follows the scan asynchronously).
fn wait_for_path(pod: &Pod, tunnel: &TcpListener, server: &TcpListener, via_tunnel: bool) {
    let deadline = Instant::now() + WAIT;
    let target = SocketAddr::from(v4(server));
    while Instant::now() < deadline {
        let _client = pod.connect(target).expect("pod connect");
        let poll = Duration::from_millis(200);
        let (hit, miss) = match via_tunnel {
            true => (tunnel, server),
            false => (server, tunnel),
        };
        if accept_within(hit, poll).expect("poll").is_some() {
            return;
        }
        let _ = accept_within(miss, Duration::ZERO);
    }
    panic!("pod connects never went via_tunnel={via_tunnel} within {WAIT:?}");
}

#[test]
fn enrollment_follows_the_scan_and_exports_counters() {
    let _serial = serial();
    let pod = Pod::new(201).expect("create pod netns");
    let cgroup = TestCgroup::join("wfip-enrollment").expect("create and join test cgroup");
    let (tunnel, server) = (listen_on(pod.host_ip), listen_on(pod.host_ip));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let (trigger, watch) = drain::channel();
    let scanner = PodScanner::spawn(ScanConfig::default(), Duration::from_millis(100), watch);
    let wanted = BTreeMap::from([(IpAddr::V4(pod.ip), EnrollMode::Capture)]);
    let config = Config::new(&cgroup.relative, v4(&tunnel));
    let handle = EnrollmentHandle::start(&config, wanted, scanner.results())
        .unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));

    wait_for_path(&pod, &tunnel, &server, true);
    let counters = handle.counters();
    let seen = counters.read().expect("counters while attached");
    assert!(seen.connect_redirected >= 1, "{seen:?}");

    handle.set_wanted(BTreeMap::<IpAddr, EnrollMode>::new());
    wait_for_path(&pod, &tunnel, &server, false);

    runtime.block_on(async {
        tokio::time::timeout(WAIT, handle.shutdown())
            .await
            .expect("enrollment shutdown hung");
        tokio::time::timeout(WAIT, trigger.drain(WAIT))
            .await
            .expect("scanner drain hung");
    });
    let error = counters.read().expect_err("counters after detach");
    assert!(error.contains("detached"), "{error}");
    drop(cgroup);
}
