//! Per-port inbound modes (PeerAuthentication `portLevelMtls`) with real eBPF (root; fails loudly
//! otherwise): a port's override wins on that listener port and the pod's mode applies to every
//! other one, over IPv4 and IPv6; overrides change at runtime and leave `PORT_MTLS` with their
//! pod; a full `PORT_MTLS` enrolls the pod at its strictest mode (never weaker) with an error;
//! pinned overrides survive a restart and are reconciled, by `Redirect` and by the enrollment
//! loop (`EnrollmentHandle::start_pending`), and `--bpf-cleanup` removes the map.

#[path = "redirect_support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use mesh_core::drain;
use mesh_ebpf_common::{capacity, enroll_mode, maps, PortKey};
use mesh_node::{
    enrollment::{Enrollment, EnrollmentHandle},
    pod_netns::{PodNetns, ScanConfig},
    pod_scan::PodScanner,
    redirect::{pin, Config, EnrollMode, EnrollPolicy, Redirect},
};
use support::{bpffs::Bpffs, topology::DirectPair, *};

/// A pod pair with the programs attached to a test cgroup (fields drop in this order).
struct PortFixture {
    loaded: Option<Redirect>,
    config: Config,
    _cg: TestCgroup,
    topo: DirectPair,
    _tunnel: TcpListener,
}

impl PortFixture {
    fn new(server: u8, outsider: u8, cgroup: &str, pins: Option<&Bpffs>) -> Self {
        let topo = DirectPair::new(server, outsider).expect("pods");
        let cg = TestCgroup::join(cgroup).expect("cgroup");
        let tunnel = listen_on(topo.server.host_ip);
        let mut config = Config::new(&cg.relative, v4(&tunnel));
        config.pin_path = pins.map(Bpffs::pins);
        let redirect =
            Redirect::load(&config).unwrap_or_else(|e| panic!("eBPF programs must load: {e}"));
        Self {
            loaded: Some(redirect),
            config,
            _cg: cg,
            topo,
            _tunnel: tunnel,
        }
    }

    fn redirect(&mut self) -> &mut Redirect {
        self.loaded.as_mut().expect("programs loaded")
    }

    /// mesh-node restarts with pinning: the loader exits, then a new one adopts the pins.
    fn restart(&mut self) {
        drop(self.loaded.take());
        let adopted = Redirect::load(&self.config).unwrap_or_else(|e| panic!("adopting: {e}"));
        self.loaded = Some(adopted);
    }

    fn enroll(&mut self, mode: EnrollMode, ports: &[(u16, EnrollMode)]) {
        let policy = EnrollPolicy::new(mode, ports.iter().copied());
        let cookie = self.topo.server.cookie();
        self.redirect()
            .enroll(cookie, policy)
            .unwrap_or_else(|e| panic!("enroll {mode:?} {ports:?}: {e}"));
    }

    /// The overrides of the server pod in the kernel map.
    fn overrides(&mut self) -> Option<BTreeMap<u16, EnrollMode>> {
        let cookie = self.topo.server.cookie();
        let mut all = self.redirect().port_overrides().expect("read PORT_MTLS");
        all.remove(&cookie)
    }

    /// A new plaintext connection from the outsider to `port` gets through to `listener`.
    fn assert_accepts(&self, listener: &TcpListener, port: u16, ipv6: bool, what: &str) {
        let mut client = self
            .topo
            .connect_direct(port, ipv6, WAIT)
            .unwrap_or_else(|e| panic!("{what}: plaintext to {port} must connect: {e}"));
        let mut accepted = accept_within(listener, WAIT)
            .expect("poll")
            .unwrap_or_else(|| panic!("{what}: not accepted on {port}"));
        assert_carries(&mut client, &mut accepted, what.as_bytes());
    }

    /// A new plaintext connection from the outsider to `port` is dropped.
    fn assert_refuses(&self, listener: &TcpListener, port: u16, ipv6: bool, what: &str) {
        let attempt = self.topo.connect_direct(port, ipv6, DROPPED_WAIT);
        assert_dropped(attempt, &format!("{what}: plaintext to {port}"));
        let leaked = accept_within(listener, Duration::ZERO).expect("poll");
        assert!(leaked.is_none(), "{what}: {port} got a connection");
    }
}

fn listen6(pod: &Pod, port: u16) -> TcpListener {
    pod.listen6(port).expect("dual-stack listener in the pod")
}

#[test]
fn strict_pod_with_a_permissive_port_accepts_plaintext_there_only() {
    let _serial = serial();
    let mut fx = PortFixture::new(25, 26, "wfte-strict-ports", None);
    fx.topo.add_ipv6().expect("ipv6");
    fx.enroll(EnrollMode::Strict, &[(9090, EnrollMode::Capture)]);
    assert_eq!(
        fx.overrides(),
        Some(BTreeMap::from([(9090, EnrollMode::Capture)]))
    );
    let (metrics, app) = (
        listen6(&fx.topo.server, 9090),
        listen6(&fx.topo.server, 8080),
    );
    for ipv6 in [false, true] {
        fx.assert_accepts(&metrics, 9090, ipv6, "permissive port of a strict pod");
        fx.assert_refuses(&app, 8080, ipv6, "strict pod");
    }
    // The node's own address is outside the mesh like any other: dropped on the strict port.
    let app_addr = SocketAddr::V4(SocketAddrV4::new(fx.topo.server.ip, 8080));
    let attempt = connect_from(fx.topo.server.host_ip, app_addr, DROPPED_WAIT);
    assert_dropped(attempt, "the node's address on a strict port");
    assert!(accept_within(&app, Duration::ZERO).expect("poll").is_none());
    let c = fx.redirect().counters().expect("counters");
    assert!(c.strict_dropped >= 3, "{c:?}");
}

#[test]
fn permissive_pod_with_a_strict_port_drops_plaintext_there_only() {
    let _serial = serial();
    let mut fx = PortFixture::new(27, 28, "wfte-permissive-ports", None);
    fx.enroll(EnrollMode::Capture, &[(5432, EnrollMode::Strict)]);
    let (db, web) = (
        listen6(&fx.topo.server, 5432),
        listen6(&fx.topo.server, 8080),
    );
    fx.assert_refuses(&db, 5432, false, "strict port of a permissive pod");
    fx.assert_accepts(&web, 8080, false, "permissive pod");
    let db_addr = SocketAddr::V4(SocketAddrV4::new(fx.topo.server.ip, 5432));
    let attempt = connect_from(fx.topo.server.host_ip, db_addr, DROPPED_WAIT);
    assert_dropped(attempt, "the node's address on a strict port");
    assert!(accept_within(&db, Duration::ZERO).expect("poll").is_none());
}

#[test]
fn changed_overrides_apply_to_new_connections_and_leave_with_the_pod() {
    let _serial = serial();
    let mut fx = PortFixture::new(81, 82, "wfte-ports-change", None);
    let (metrics, app) = (
        listen6(&fx.topo.server, 9090),
        listen6(&fx.topo.server, 8080),
    );
    fx.enroll(EnrollMode::Strict, &[(9090, EnrollMode::Capture)]);
    let mut before = fx.topo.connect_direct(9090, false, WAIT).expect("connects");
    let mut before_accepted = accept_within(&metrics, WAIT)
        .expect("poll")
        .expect("accepted");

    // The permissive port moves from 9090 to 8080.
    fx.enroll(EnrollMode::Strict, &[(8080, EnrollMode::Capture)]);
    let expected = BTreeMap::from([(8080, EnrollMode::Capture)]);
    assert_eq!(fx.overrides(), Some(expected), "9090's override removed");
    fx.assert_refuses(&metrics, 9090, false, "override removed");
    fx.assert_accepts(&app, 8080, false, "override added");
    assert_carries(&mut before, &mut before_accepted, b"established survive");

    // The pod becomes permissive with a strict 9090: the pod mode and the port swap roles.
    fx.enroll(EnrollMode::Capture, &[(9090, EnrollMode::Strict)]);
    let expected = BTreeMap::from([(9090, EnrollMode::Strict)]);
    assert_eq!(fx.overrides(), Some(expected));
    fx.assert_refuses(&metrics, 9090, false, "strict port");
    fx.assert_accepts(&app, 8080, false, "permissive pod");

    // No overrides left: the flag goes with them and the pod mode applies everywhere.
    fx.enroll(EnrollMode::Capture, &[]);
    assert_eq!(fx.overrides(), None);
    fx.assert_accepts(&metrics, 9090, false, "plain capture");

    fx.enroll(EnrollMode::Strict, &[(9090, EnrollMode::Capture)]);
    let cookie = fx.topo.server.cookie();
    fx.redirect().unenroll(cookie).expect("unenroll");
    assert_eq!(fx.overrides(), None, "overrides removed with the pod");
    let all = fx.redirect().port_overrides().expect("read");
    assert!(all.is_empty(), "nothing left in PORT_MTLS: {all:?}");
    assert!(fx.redirect().enrolled_pods().expect("enrolled").is_empty());
    fx.assert_accepts(&app, 8080, false, "unenrolled");
}

#[test]
fn a_full_override_map_enrolls_the_pod_at_its_strictest_mode() {
    let _serial = serial();
    let mut fx = PortFixture::new(83, 84, "wfte-ports-full", None);
    let metrics = listen6(&fx.topo.server, 9090);
    // Another "pod" (no namespace has this cookie) takes every entry.
    let filler = u64::MAX - 11;
    let every: Vec<(u16, EnrollMode)> = (1..=capacity::PORT_MTLS)
        .map(|p| (u16::try_from(p).expect("fits"), EnrollMode::Strict))
        .collect();
    let filler_policy = EnrollPolicy::new(EnrollMode::Capture, every);
    fx.redirect().enroll(filler, filler_policy).expect("fill");

    let cookie = fx.topo.server.cookie();
    let wanted = EnrollPolicy::new(EnrollMode::Strict, [(9090, EnrollMode::Capture)]);
    let err = fx
        .redirect()
        .enroll(cookie, wanted.clone())
        .expect_err("no room for the override");
    let text = err.to_string();
    let full = format!("PORT_MTLS is full ({}", capacity::PORT_MTLS);
    assert!(text.contains(&full), "{text}");
    assert!(text.contains("strictest mode"), "{text}");
    assert_eq!(fx.overrides(), None, "no partial overrides");
    let enrolled = fx.redirect().enrolled_pods().expect("enrolled");
    assert!(
        enrolled.contains(&(cookie, EnrollMode::Strict)),
        "{enrolled:?}"
    );
    fx.assert_refuses(&metrics, 9090, false, "strictest while the map is full");

    fx.redirect().unenroll(filler).expect("unenroll filler");
    fx.redirect().enroll(cookie, wanted).expect("room again");
    fx.assert_accepts(&metrics, 9090, false, "override stored");
}

/// A pod the kernel cannot take as wanted (no room left for its override) does not keep the
/// pods after it out of the mesh: the pass tries every pod, holds that one at its strictest
/// mode, and reports the error for a retry.
#[test]
fn a_pod_that_cannot_be_enrolled_does_not_block_the_others() {
    let _serial = serial();
    let mut fx = PortFixture::new(87, 88, "wfte-ports-pass", None);
    let redirect = fx.loaded.take().expect("programs loaded");
    let mut enrollment = Enrollment::new(redirect);
    let ip = |last: u8| IpAddr::from([10, 99, 0, last]);
    // The plan runs in cookie order: the pod that fails comes before the one that must follow.
    let (filler, blocked, after) = (u64::MAX - 24, u64::MAX - 23, u64::MAX - 22);
    let found: StdHashMap<IpAddr, PodNetns> = [(1, filler), (2, blocked), (3, after)]
        .into_iter()
        .map(|(last, cookie)| {
            let netns = PodNetns {
                cookie,
                path: "/run/netns/none".into(),
            };
            (ip(last), netns)
        })
        .collect();
    let every =
        (1..=capacity::PORT_MTLS).map(|p| (u16::try_from(p).expect("fits"), EnrollMode::Strict));
    let mut wanted = BTreeMap::from([(ip(1), EnrollPolicy::new(EnrollMode::Capture, every))]);
    enrollment
        .apply(&wanted, &found)
        .expect("the filler takes every entry");

    let override_9090 = EnrollPolicy::new(EnrollMode::Strict, [(9090, EnrollMode::Capture)]);
    wanted.insert(ip(2), override_9090);
    wanted.insert(ip(3), EnrollPolicy::from(EnrollMode::Capture));
    let error = enrollment
        .apply(&wanted, &found)
        .expect_err("no room for the override");
    assert!(error.to_string().contains("PORT_MTLS is full"), "{error}");
    let enrolled = enrollment.enrolled();
    assert_eq!(
        enrolled.get(&blocked),
        Some(&EnrollPolicy::from(EnrollMode::Strict)),
        "held at its strictest mode"
    );
    assert_eq!(
        enrolled.get(&after),
        Some(&EnrollPolicy::from(EnrollMode::Capture)),
        "the next pod is enrolled all the same"
    );
}

#[test]
fn pinned_overrides_are_adopted_and_reconciled() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-ports");
    let mut fx = PortFixture::new(85, 86, "wfte-ports-pinned", Some(&bpffs));
    let (metrics, app) = (
        listen6(&fx.topo.server, 9090),
        listen6(&fx.topo.server, 8080),
    );
    fx.enroll(EnrollMode::Strict, &[(9090, EnrollMode::Capture)]);
    let departed = u64::MAX - 13;
    let departed_policy = EnrollPolicy::new(EnrollMode::Capture, [(9090, EnrollMode::Strict)]);
    fx.redirect()
        .enroll(departed, departed_policy)
        .expect("enroll departed");
    let before = fx.redirect().port_overrides().expect("read");

    // The loader restarts: the pinned programs and maps keep enforcing meanwhile.
    fx.restart();
    assert_eq!(fx.redirect().port_overrides().expect("read"), before);
    fx.assert_accepts(&metrics, 9090, false, "adopted override");
    fx.assert_refuses(&app, 8080, false, "adopted strict pod");

    let kept = fx.topo.server.cookie();
    let removed = fx
        .redirect()
        .retain_enrolled(|c| c == kept)
        .expect("reconcile");
    assert_eq!(removed, 1);
    let left = fx.redirect().port_overrides().expect("read");
    let expected = BTreeMap::from([(kept, BTreeMap::from([(9090, EnrollMode::Capture)]))]);
    assert_eq!(left, expected, "the departed pod's overrides are gone");
    fx.redirect().unenroll(kept).expect("unenroll");
    drop(fx.loaded.take());
    let removed = pin::remove_all(&bpffs.pins()).expect("cleanup (--bpf-cleanup)");
    assert_eq!(removed.maps, pin::PINNED_MAPS.len(), "PORT_MTLS pinned too");
    drop(fx);
}

/// The pinned `PORT_MTLS` map as (cookie, host-order port, raw mode), read as another process
/// would (`bpftool map dump`).
fn pinned_overrides(pins: &Path) -> Vec<(u64, u16, u32)> {
    let data = MapData::from_pin(pins.join("maps").join(maps::PORT_MTLS)).expect("pinned map");
    let map: HashMap<MapData, PortKey, u32> =
        HashMap::try_from(Map::HashMap(data)).expect("hash map");
    let mut entries: Vec<(u64, u16, u32)> = map
        .iter()
        .map(|entry| entry.expect("entry"))
        .map(|(key, mode)| (key.netns_cookie, u16::from_be(key.port), mode))
        .collect();
    entries.sort_unstable();
    entries
}

/// Waits until the pinned `PORT_MTLS` map holds exactly `expected`.
fn wait_for_overrides(pins: &Path, expected: &[(u64, u16, u32)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = pinned_overrides(pins);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PORT_MTLS {found:?}, want {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_enrollment_loop_keeps_adopted_overrides_in_step_with_the_wanted_pods() {
    let _serial = serial();
    let bpffs = Bpffs::mount("wfte-bpffs-ports-loop");
    let mut fx = PortFixture::new(87, 88, "wfte-ports-loop", Some(&bpffs));
    let (metrics, app) = (
        listen6(&fx.topo.server, 9090),
        listen6(&fx.topo.server, 8080),
    );
    let pod = fx.topo.server.cookie();
    // The previous mesh-node: the pod with a permissive 9090, and a pod gone by now.
    fx.enroll(EnrollMode::Strict, &[(9090, EnrollMode::Capture)]);
    let departed = u64::MAX - 17;
    let departed_policy = EnrollPolicy::new(EnrollMode::Capture, [(9090, EnrollMode::Strict)]);
    fx.redirect()
        .enroll(departed, departed_policy)
        .expect("enroll departed");
    drop(fx.loaded.take());

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let (trigger, watch) = drain::channel();
    let scanner = PodScanner::spawn(ScanConfig::default(), Duration::from_millis(50), watch);
    let handle = EnrollmentHandle::start_pending(&fx.config, scanner.results())
        .unwrap_or_else(|e| panic!("adopting load: {e}"));
    // Pending: the adopted override keeps applying.
    fx.assert_accepts(&metrics, 9090, false, "adopted while pending");
    fx.assert_refuses(&app, 8080, false, "adopted strict pod while pending");

    // The pod's permissive port is now 8080; the departed pod's overrides must go.
    let ip = IpAddr::V4(fx.topo.server.ip);
    let moved = EnrollPolicy::new(EnrollMode::Strict, [(8080, EnrollMode::Capture)]);
    handle.set_wanted(BTreeMap::from([(ip, moved)]));
    wait_for_overrides(&bpffs.pins(), &[(pod, 8080, enroll_mode::CAPTURE)]);
    fx.assert_refuses(&metrics, 9090, false, "override moved away");
    fx.assert_accepts(&app, 8080, false, "override moved here");

    // The pod leaves the mesh: no override may stay behind.
    handle.set_wanted(BTreeMap::<IpAddr, EnrollPolicy>::new());
    wait_for_overrides(&bpffs.pins(), &[]);
    fx.assert_accepts(&metrics, 9090, false, "unenrolled");

    runtime.block_on(async {
        tokio::time::timeout(WAIT, handle.shutdown())
            .await
            .expect("enrollment shutdown hung");
        tokio::time::timeout(WAIT, trigger.drain(WAIT))
            .await
            .expect("scanner drain hung")
    });
    pin::remove_all(&bpffs.pins()).expect("cleanup");
    drop(fx);
}
