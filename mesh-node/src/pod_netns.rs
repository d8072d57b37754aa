//! Finds the network namespaces of the pods on this node, keyed by pod IP.
//!
//! The eBPF programs enroll pods by network-namespace cookie, while the control plane names pods
//! by IP. This module bridges the two: it looks at every network namespace it can see (the
//! namespace files container runtimes pin under `/run/netns`, and optionally every process's
//! `/proc/<pid>/ns/net`, which needs `hostPID`), enters each one on a helper thread, and records
//! its cookie and addresses. The node's own namespace is skipped.
//!
//! [`plan`] turns a scan plus the set of pods that should be enrolled into the enroll/unenroll
//! calls to make, so the reconciliation logic is tested without a kernel.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io,
    net::IpAddr,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::redirect::netns::{current_cookie, run_in, NetnsError};

/// A network namespace seen by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    /// The kernel's cookie for the namespace: the enrollment key of the eBPF maps.
    pub cookie: u64,
    /// A path that refers to it, for logs.
    pub path: PathBuf,
}

/// Errors of a scan. A namespace that vanishes mid-scan is not an error (pods come and go).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The node's own namespace could not be identified, so it could not be skipped.
    #[error("cannot read this node's own network namespace cookie: {0}")]
    OwnNamespace(#[source] NetnsError),
    /// A directory to scan could not be read.
    #[error("cannot list {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Where to look for pod network namespaces.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Directories of pinned namespace files (`/run/netns` for containerd, CRI-O and `ip netns`).
    pub pinned_dirs: Vec<PathBuf>,
    /// Also look at `/proc/<pid>/ns/net` of every process (needs the host PID namespace).
    pub scan_proc: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            pinned_dirs: vec![PathBuf::from("/run/netns")],
            scan_proc: false,
        }
    }
}

/// Scans for pod namespaces and returns them by the IP addresses configured inside them
/// (loopback excluded). An address seen in two namespaces keeps the first one found.
pub fn scan(config: &ScanConfig) -> Result<HashMap<IpAddr, PodNetns>, ScanError> {
    let own = current_cookie().map_err(ScanError::OwnNamespace)?;
    let mut seen_inodes = HashSet::new();
    let mut by_ip = HashMap::new();
    for path in candidate_paths(config)? {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !seen_inodes.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(Ok((cookie, addresses))) = run_in(file.as_fd(), cookie_and_addresses) else {
            continue;
        };
        if cookie == own {
            continue;
        }
        for ip in addresses {
            by_ip.entry(ip).or_insert_with(|| PodNetns {
                cookie,
                path: path.clone(),
            });
        }
    }
    Ok(by_ip)
}

fn candidate_paths(config: &ScanConfig) -> Result<Vec<PathBuf>, ScanError> {
    let mut paths = Vec::new();
    for dir in &config.pinned_dirs {
        match std::fs::read_dir(dir) {
            Ok(entries) => paths.extend(entries.filter_map(Result::ok).map(|e| e.path())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ScanError::ReadDir {
                    dir: dir.clone(),
                    source,
                })
            }
        }
    }
    if config.scan_proc {
        let proc = Path::new("/proc");
        let entries = std::fs::read_dir(proc).map_err(|source| ScanError::ReadDir {
            dir: proc.to_path_buf(),
            source,
        })?;
        let pids = entries.filter_map(Result::ok).filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        });
        paths.extend(pids.map(|e| e.path().join("ns/net")));
    }
    Ok(paths)
}

/// Runs inside the namespace: its cookie and its non-loopback addresses.
fn cookie_and_addresses() -> Result<(u64, Vec<IpAddr>), NetnsError> {
    let cookie = current_cookie()?;
    let addresses = nix::ifaddrs::getifaddrs()
        .map(|ifaddrs| {
            ifaddrs
                .filter_map(|ifaddr| ifaddr.address)
                .filter_map(|address| {
                    let v4 = address.as_sockaddr_in().map(|a| IpAddr::V4(a.ip()));
                    v4.or_else(|| address.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
                })
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    Ok((cookie, addresses))
}

/// What to change in the enrollment map.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnrollmentPlan<M> {
    /// Namespaces to enroll (or re-enroll with a new mode), with the pod IP that selected them.
    pub enroll: Vec<(u64, M, IpAddr)>,
    /// Namespaces to remove from the map.
    pub unenroll: Vec<u64>,
}

/// Compares what is enrolled now with what should be: `wanted` maps each local pod IP that must
/// be captured to its mode; `found` is the latest [`scan`]. Pods whose namespace was not found are
/// left out (their sandbox is not up yet, or already gone); the caller logs them.
pub fn plan<M: Copy + PartialEq>(
    enrolled: &BTreeMap<u64, M>,
    wanted: &BTreeMap<IpAddr, M>,
    found: &HashMap<IpAddr, PodNetns>,
) -> EnrollmentPlan<M> {
    let mut target: BTreeMap<u64, (M, IpAddr)> = BTreeMap::new();
    for (ip, mode) in wanted {
        if let Some(netns) = found.get(ip) {
            target.entry(netns.cookie).or_insert((*mode, *ip));
        }
    }
    let enroll = target
        .iter()
        .filter(|(cookie, (mode, _))| enrolled.get(cookie) != Some(mode))
        .map(|(cookie, (mode, ip))| (*cookie, *mode, *ip))
        .collect();
    let unenroll = enrolled
        .keys()
        .filter(|cookie| !target.contains_key(cookie))
        .copied()
        .collect();
    EnrollmentPlan { enroll, unenroll }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn found(entries: &[(&str, u64)]) -> HashMap<IpAddr, PodNetns> {
        entries
            .iter()
            .map(|(addr, cookie)| {
                let path = PathBuf::from(format!("/run/netns/{cookie}"));
                (
                    ip(addr),
                    PodNetns {
                        cookie: *cookie,
                        path,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn enrolls_new_pods_and_unenrolls_departed_ones() {
        let enrolled = BTreeMap::from([(7, 'p'), (9, 'p')]);
        let wanted = BTreeMap::from([(ip("10.0.0.1"), 'p'), (ip("10.0.0.2"), 's')]);
        let scan = found(&[("10.0.0.1", 7), ("10.0.0.2", 8), ("10.0.0.3", 9)]);
        let plan = plan(&enrolled, &wanted, &scan);
        assert_eq!(plan.enroll, vec![(8, 's', ip("10.0.0.2"))]);
        assert_eq!(plan.unenroll, vec![9]);
    }

    #[test]
    fn mode_change_re_enrolls_and_unchanged_is_left_alone() {
        let enrolled = BTreeMap::from([(7, 'p')]);
        let wanted = BTreeMap::from([(ip("10.0.0.1"), 's')]);
        let plan = plan(&enrolled, &wanted, &found(&[("10.0.0.1", 7)]));
        assert_eq!(plan.enroll, vec![(7, 's', ip("10.0.0.1"))]);
        assert!(plan.unenroll.is_empty());
        let steady = BTreeMap::from([(7, 's')]);
        assert_eq!(
            super::plan(&steady, &wanted, &found(&[("10.0.0.1", 7)])),
            EnrollmentPlan::default()
        );
    }

    #[test]
    fn pods_without_a_namespace_yet_are_not_enrolled() {
        let wanted = BTreeMap::from([(ip("10.0.0.5"), 'p')]);
        let plan = plan(&BTreeMap::new(), &wanted, &found(&[]));
        assert_eq!(plan, EnrollmentPlan::default());
    }

    /// A namespace made for the test, deleted on drop.
    struct TestNetns(String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    fn run_ip(args: &[&str]) {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("run ip");
        assert!(
            status.success(),
            "ip {args:?} failed (this test needs root and iproute2)"
        );
    }

    #[test]
    fn scan_finds_a_pinned_namespace_by_its_address() {
        let name = format!("wfpn{}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let netns = TestNetns(name);
        run_ip(&[
            "-n", &netns.0, "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
        ]);
        run_ip(&[
            "-n",
            &netns.0,
            "addr",
            "add",
            "10.213.7.9/32",
            "dev",
            "pod0",
        ]);
        let expected =
            crate::redirect::netns::cookie_of_path(Path::new(&format!("/run/netns/{}", netns.0)))
                .expect("cookie of the test namespace");
        let found = scan(&ScanConfig::default()).expect("scan");
        let pod = found
            .get(&ip("10.213.7.9"))
            .expect("namespace found by address");
        assert_eq!(pod.cookie, expected);
        assert_eq!(pod.path, PathBuf::from(format!("/run/netns/{}", netns.0)));
    }

    #[test]
    fn scan_never_reports_the_node_namespace() {
        // Our own namespace is pinned here on purpose: the scan must skip it.
        let dir = std::env::temp_dir().join(format!("weft-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("self");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
        let config = ScanConfig {
            pinned_dirs: vec![dir.clone()],
            scan_proc: false,
        };
        let result = scan(&config).expect("scan");
        std::fs::remove_dir_all(&dir).unwrap();
        let own = current_cookie().unwrap();
        assert!(
            result.values().all(|netns| netns.cookie != own),
            "{result:?}"
        );
    }
}
