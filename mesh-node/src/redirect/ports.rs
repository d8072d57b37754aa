//! Per-port inbound modes in the kernel (PeerAuthentication `portLevelMtls`): [`EnrollPolicy`]
//! and the `PORT_MTLS` map, kept in step with `ENROLLED`.
//!
//! A pod's mode applies to every listener port except its overrides, whose own mode wins (Istio
//! semantics; the port is the listening socket's, i.e. the container port). A pod with overrides
//! carries `PORT_OVERRIDES` in its `ENROLLED` value, so the strict program only looks ports up
//! for such pods.
//!
//! The loader keeps a mirror of which ports it has in the map for each pod (read from the map at
//! load, so overrides in adopted pinned maps are known), so updates and removals never scan the
//! map and no override outlives its pod: a leftover PERMISSIVE override would be a hole.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use mesh_ebpf_common::{capacity, enroll_flags, maps, PortKey};

use super::{is_not_found, map_error, not_in_object, EnrollMode, RedirectError};

/// How an enrolled pod is treated: its mode, and the listener ports whose own mode wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnrollPolicy {
    mode: EnrollMode,
    ports: BTreeMap<u16, EnrollMode>,
}

impl EnrollPolicy {
    /// A pod in `mode` with per-port overrides (host-order listener ports). Overrides equal to
    /// `mode` change nothing and are dropped, so they take no map entry and no lookup.
    pub fn new(mode: EnrollMode, ports: impl IntoIterator<Item = (u16, EnrollMode)>) -> Self {
        let ports = ports.into_iter().filter(|(_, m)| *m != mode).collect();
        Self { mode, ports }
    }

    /// The pod's mode (ports without an override).
    pub fn mode(&self) -> EnrollMode {
        self.mode
    }

    /// The ports whose mode differs from the pod's.
    pub fn port_overrides(&self) -> &BTreeMap<u16, EnrollMode> {
        &self.ports
    }

    /// The mode enforced on listener `port`.
    pub fn mode_of_port(&self, port: u16) -> EnrollMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }

    /// `Strict` when the pod or any of its ports is: what the kernel enforces on every port
    /// while the overrides cannot be stored (fail closed, never weaker than wanted).
    pub fn strictest(&self) -> EnrollMode {
        let any_strict = self.ports.values().any(|m| *m == EnrollMode::Strict);
        match any_strict {
            true => EnrollMode::Strict,
            false => self.mode,
        }
    }

    /// The `ENROLLED` value: the mode, flagged when the pod has overrides.
    pub(super) fn abi(&self) -> u32 {
        match self.ports.is_empty() {
            true => self.mode.abi(),
            false => self.mode.abi() | enroll_flags::PORT_OVERRIDES,
        }
    }
}

impl From<EnrollMode> for EnrollPolicy {
    fn from(mode: EnrollMode) -> Self {
        Self::new(mode, [])
    }
}

/// What this loader has in `PORT_MTLS`: listener ports (host order) by netns cookie.
#[derive(Debug, Default)]
pub(super) struct PortOverrides {
    by_pod: BTreeMap<u64, BTreeSet<u16>>,
}

impl PortOverrides {
    /// The overrides in the map now (an adopted pinned map holds the previous loader's).
    pub fn read(ebpf: &mut Ebpf) -> Result<Self, RedirectError> {
        let mut by_pod: BTreeMap<u64, BTreeSet<u16>> = BTreeMap::new();
        for (cookie, ports) in entries(ebpf)? {
            by_pod.insert(cookie, ports.into_keys().collect());
        }
        Ok(Self { by_pod })
    }

    /// Cookies with overrides in the map.
    pub fn pods(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_pod.keys().copied()
    }

    /// Inserts or updates every override of `policy` for the pod with `cookie`. Fails when the
    /// map is full (nothing is dropped to make room).
    pub fn write(
        &mut self,
        ebpf: &mut Ebpf,
        cookie: u64,
        policy: &EnrollPolicy,
    ) -> Result<(), RedirectError> {
        let mut map = open(ebpf)?;
        for (port, mode) in policy.port_overrides() {
            let key = PortKey::new(cookie, *port);
            map.insert(key, mode.abi(), 0)
                .map_err(|source| insert_error(cookie, source))?;
            self.by_pod.entry(cookie).or_default().insert(*port);
        }
        Ok(())
    }

    /// Removes the overrides of `cookie` whose port `keep` rejects.
    pub fn remove(
        &mut self,
        ebpf: &mut Ebpf,
        cookie: u64,
        keep: impl Fn(u16) -> bool,
    ) -> Result<(), RedirectError> {
        let Some(ports) = self.by_pod.get_mut(&cookie) else {
            return Ok(());
        };
        let mut map = open(ebpf)?;
        let stale: Vec<u16> = ports.iter().copied().filter(|p| !keep(*p)).collect();
        for port in stale {
            match map.remove(&PortKey::new(cookie, port)) {
                Ok(()) => {}
                Err(source) if is_not_found(&source) => {}
                Err(source) => return Err(map_error(maps::PORT_MTLS, "remove", source)),
            }
            ports.remove(&port);
        }
        if ports.is_empty() {
            self.by_pod.remove(&cookie);
        }
        Ok(())
    }
}

/// Every override in the kernel map, by cookie then host-order port. A value this build does not
/// know is reported as `Strict`, which is how the strict program enforces it.
pub(super) fn entries(
    ebpf: &mut Ebpf,
) -> Result<BTreeMap<u64, BTreeMap<u16, EnrollMode>>, RedirectError> {
    let map = open(ebpf)?;
    let mut out: BTreeMap<u64, BTreeMap<u16, EnrollMode>> = BTreeMap::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(|source| map_error(maps::PORT_MTLS, "read", source))?;
        let mode = EnrollMode::from_abi(value).unwrap_or(EnrollMode::Strict);
        let port = u16::from_be(key.port);
        out.entry(key.netns_cookie).or_default().insert(port, mode);
    }
    Ok(out)
}

/// The kernel answers `E2BIG` when a hash map has no room for a new key.
fn insert_error(netns_cookie: u64, source: aya::maps::MapError) -> RedirectError {
    match &source {
        aya::maps::MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            RedirectError::PortOverridesFull {
                capacity: capacity::PORT_MTLS,
                netns_cookie,
            }
        }
        _ => map_error(maps::PORT_MTLS, "insert", source),
    }
}

fn open(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, PortKey, u32>, RedirectError> {
    let map = ebpf
        .map_mut(maps::PORT_MTLS)
        .ok_or_else(|| not_in_object(maps::PORT_MTLS))?;
    HashMap::try_from(map).map_err(|source| map_error(maps::PORT_MTLS, "open", source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_equal_to_the_pod_mode_are_dropped() {
        let policy = EnrollPolicy::new(
            EnrollMode::Strict,
            [(9090, EnrollMode::Capture), (8080, EnrollMode::Strict)],
        );
        assert_eq!(
            policy.port_overrides(),
            &BTreeMap::from([(9090, EnrollMode::Capture)])
        );
        assert_eq!(policy.mode_of_port(9090), EnrollMode::Capture);
        assert_eq!(policy.mode_of_port(8080), EnrollMode::Strict);
        assert_eq!(policy.mode_of_port(1), EnrollMode::Strict);
    }

    #[test]
    fn only_pods_with_overrides_carry_the_flag() {
        let flag = enroll_flags::PORT_OVERRIDES;
        let plain = EnrollPolicy::new(EnrollMode::Capture, [(80, EnrollMode::Capture)]);
        assert_eq!(plain.abi(), EnrollMode::Capture.abi());
        let ported = EnrollPolicy::new(EnrollMode::Capture, [(5432, EnrollMode::Strict)]);
        assert_eq!(ported.abi(), EnrollMode::Capture.abi() | flag);
        assert_eq!(
            ported.abi() & enroll_flags::MODE_MASK,
            EnrollMode::Capture.abi()
        );
        assert_eq!(
            EnrollMode::from_abi(ported.abi()),
            Some(EnrollMode::Capture)
        );
    }

    #[test]
    fn strictest_is_strict_when_the_pod_or_any_port_is() {
        let mixed = EnrollPolicy::new(EnrollMode::Capture, [(5432, EnrollMode::Strict)]);
        assert_eq!(mixed.strictest(), EnrollMode::Strict);
        let hole = EnrollPolicy::new(EnrollMode::Strict, [(9090, EnrollMode::Capture)]);
        assert_eq!(hole.strictest(), EnrollMode::Strict);
        let open = EnrollPolicy::from(EnrollMode::Capture);
        assert_eq!(open.strictest(), EnrollMode::Capture);
    }
}
