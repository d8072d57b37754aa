//! Inbound steering: the `sk_lookup` program attached to each enrolled pod's network namespace,
//! the `INBOUND` SOCKHASH of the tunnel's in-pod listeners it selects from, and the
//! `PROBED_PODS` addresses whose kubelet probes leave from the probe address.
//!
//! The in-pod listener manager ([`crate::inpod`]) drives it per pod: [`Steering::steer`] first
//! (from then on every inbound TCP connection attempt to the pod is steered to the tunnel, or
//! refused while its listeners are missing: fail closed), then [`Steering::listeners`] once they
//! are bound; [`Steering::release`] when the pod leaves the mesh or its namespace goes.
//!
//! Without a pin directory the links are owned here: when mesh-node exits they detach, and the
//! pods are reached directly until the next start (strict ones stay closed by the pinned
//! `cgroup_skb` program only if that is pinned). With one, each pod's link is pinned at
//! `<pins>/steering/<netns cookie>` and outlives the process: its program keeps running on the
//! old `INBOUND` map, whose entries go as the old listeners close, so every connection attempt
//! to a steered pod is refused while no tunnel runs (fail closed, as ztunnel's in-pod rules
//! do). The next start adopts the pins ([`Steering::take`]), swapping each link to its own
//! program (`BPF_LINK_UPDATE`); [`Steering::steer`] claims an adopted link, and once the node
//! knows its pods, [`Steering::retire_unclaimed`] detaches those of pods that left meanwhile
//! (only for namespaces the scan has seen, so a pod not scanned yet stays closed).
//! Links whose namespace is gone cannot be updated; their pins are removed at adoption.
//! The maps themselves are not pinned.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, SockHash},
    programs::{ProgramFd, SkLookup},
    Ebpf,
};
use mesh_ebpf_common::{inbound_kind, maps, programs, InboundKey, ProbeKey};

use super::{
    bpf_sys::{self, attach_type},
    config::ip_abi,
    is_not_found, map_error, not_in_object,
    pin::PinDir,
    programs as loader, RedirectError,
};

/// Which in-pod listener of a pod address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Every port but the HBONE port.
    Plaintext,
    /// The HBONE port.
    Hbone,
}

impl ListenerKind {
    fn abi(self) -> u16 {
        match self {
            Self::Plaintext => inbound_kind::PLAINTEXT,
            Self::Hbone => inbound_kind::HBONE,
        }
    }
}

struct Inner {
    program: ProgramFd,
    inbound: SockHash<MapData, InboundKey>,
    probed: BpfHashMap<MapData, ProbeKey, u8>,
    links: HashMap<u64, OwnedFd>,
    /// Adopted pinned links no pod has claimed yet.
    unclaimed: HashSet<u64>,
}

/// Per-pod inbound steering. Shared by the in-pod listener manager; operations are rare (a pod
/// joining or leaving), so one lock serves them all.
pub struct Steering {
    inner: Mutex<Inner>,
    /// Where each pod's link is pinned, when links outlive the process.
    pins: Option<PathBuf>,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("pods", &self.lock().links.len())
            .finish()
    }
}

impl Steering {
    /// Takes the loaded `sk_lookup` program's descriptor and the two maps out of `ebpf`; with
    /// `pins`, adopts the links pinned there by an earlier process.
    pub(super) fn take(ebpf: &mut Ebpf, pins: Option<&PinDir>) -> Result<Self, RedirectError> {
        let program = {
            let sk_lookup: &mut SkLookup = ebpf
                .program_mut(programs::SK_LOOKUP)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| loader::missing_map(programs::SK_LOOKUP, "program not in object"))?;
            sk_lookup
                .fd()
                .and_then(|fd| fd.try_clone().map_err(Into::into))
                .map_err(|e| loader::missing_map(programs::SK_LOOKUP, e))?
        };
        let inbound = ebpf
            .take_map(maps::INBOUND)
            .ok_or_else(|| not_in_object(maps::INBOUND))?;
        let probed = ebpf
            .take_map(maps::PROBED_PODS)
            .ok_or_else(|| not_in_object(maps::PROBED_PODS))?;
        let pins = pins.map(PinDir::steering_dir);
        let links = match &pins {
            Some(dir) => adopt(dir, program.as_fd()),
            None => HashMap::new(),
        };
        if !links.is_empty() {
            tracing::info!(links = links.len(), "adopted pinned inbound steering; pods refuse connections until their listeners are back");
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                program,
                inbound: SockHash::try_from(inbound)
                    .map_err(|source| map_error(maps::INBOUND, "open", source))?,
                probed: BpfHashMap::try_from(probed)
                    .map_err(|source| map_error(maps::PROBED_PODS, "open", source))?,
                unclaimed: links.keys().copied().collect(),
                links,
            }),
            pins,
        })
    }

    fn pin_path(&self, netns_cookie: u64) -> Option<PathBuf> {
        self.pins
            .as_ref()
            .map(|dir| dir.join(netns_cookie.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every operation is a single map or link call: a panic cannot leave a half change.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts steering the pod at `ip`, whose network namespace is `netns` (cookie
    /// `netns_cookie`): attaches `sk_lookup` there (once per namespace) and marks the address
    /// for kubelet probes. Until its listeners are registered, connection attempts are refused.
    pub fn steer(
        &self,
        netns_cookie: u64,
        netns: BorrowedFd<'_>,
        ip: IpAddr,
    ) -> Result<(), RedirectError> {
        let mut inner = self.lock();
        inner.unclaimed.remove(&netns_cookie);
        if !inner.links.contains_key(&netns_cookie) {
            let steer_error = |source| RedirectError::Steer {
                netns_cookie,
                source,
            };
            let link = bpf_sys::link_create(inner.program.as_fd(), netns, attach_type::SK_LOOKUP)
                .map_err(steer_error)?;
            if let Some(path) = self.pin_path(netns_cookie) {
                if let Err(source) = bpf_sys::obj_pin(link.as_fd(), &path) {
                    let _ = bpf_sys::link_detach(link.as_fd());
                    return Err(steer_error(source));
                }
            }
            inner.links.insert(netns_cookie, link);
        }
        inner
            .probed
            .insert(probe_key(ip), 1, 0)
            .map_err(|source| map_error(maps::PROBED_PODS, "insert", source))
    }

    /// Registers the pod's listener of `kind` for `ip`: connection attempts go to it from now on.
    pub fn listener(
        &self,
        ip: IpAddr,
        kind: ListenerKind,
        listener: BorrowedFd<'_>,
    ) -> Result<(), RedirectError> {
        self.lock()
            .inbound
            .insert(inbound_key(ip, kind), listener.as_raw_fd(), 0)
            .map_err(|source| map_error(maps::INBOUND, "insert", source))
    }

    /// Stops steering: the namespace's link goes (connection attempts reach the pod's own
    /// listeners again, for a pod that left the mesh), and so do the address's entries.
    pub fn release(&self, netns_cookie: u64, ip: IpAddr) -> Result<(), RedirectError> {
        let mut inner = self.lock();
        inner.unclaimed.remove(&netns_cookie);
        if let Some(link) = inner.links.remove(&netns_cookie) {
            // The namespace may be gone already, which detached the link: closing it is enough.
            let _ = bpf_sys::link_detach(link.as_fd());
        }
        if let Some(path) = self.pin_path(netns_cookie) {
            remove_pin(&path);
        }
        for kind in [ListenerKind::Plaintext, ListenerKind::Hbone] {
            match inner.inbound.remove(&inbound_key(ip, kind)) {
                Err(source) if !is_not_found(&source) => {
                    return Err(map_error(maps::INBOUND, "remove", source))
                }
                _ => {}
            }
        }
        match inner.probed.remove(&probe_key(ip)) {
            Err(source) if !is_not_found(&source) => {
                Err(map_error(maps::PROBED_PODS, "remove", source))
            }
            _ => Ok(()),
        }
    }

    /// Detaches the adopted links no pod claimed whose namespace is in `scanned` (the latest
    /// namespace scan): pods that left the mesh while no tunnel ran. Call once the node knows
    /// its pods and has steered those it serves; returns how many. A namespace the scan has not
    /// seen (yet) keeps its link: refused rather than opened.
    pub fn retire_unclaimed(&self, scanned: &HashSet<u64>) -> usize {
        let mut inner = self.lock();
        let unclaimed: Vec<u64> = inner
            .unclaimed
            .iter()
            .copied()
            .filter(|cookie| scanned.contains(cookie))
            .collect();
        for cookie in &unclaimed {
            inner.unclaimed.remove(cookie);
            if let Some(link) = inner.links.remove(cookie) {
                let _ = bpf_sys::link_detach(link.as_fd());
            }
            if let Some(path) = self.pin_path(*cookie) {
                remove_pin(&path);
            }
            tracing::info!(
                netns.cookie = cookie,
                "inbound steering of a pod that left the mesh retired"
            );
        }
        unclaimed.len()
    }

    /// Network namespace cookies steered now.
    pub fn steered(&self) -> Vec<u64> {
        let mut cookies: Vec<u64> = self.lock().links.keys().copied().collect();
        cookies.sort_unstable();
        cookies
    }
}

/// Opens the links pinned in `dir` and swaps each to `program`; a link whose namespace is gone
/// (it cannot be updated) or whose pin is not a cookie loses its pin. Never fails: what cannot
/// be adopted is logged and left to `retire_unclaimed` or to the namespace's end.
fn adopt(dir: &Path, program: BorrowedFd<'_>) -> HashMap<u64, OwnedFd> {
    let mut links = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return links;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let cookie = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok());
        let adopted = cookie
            .ok_or_else(|| std::io::Error::other("not a netns cookie"))
            .and_then(|cookie| {
                let link = bpf_sys::obj_get(&path)?;
                bpf_sys::link_update(link.as_fd(), program)?;
                Ok((cookie, link))
            });
        match adopted {
            Ok((cookie, link)) => {
                links.insert(cookie, link);
            }
            Err(error) => {
                tracing::info!(pin = %path.display(), %error, "pinned inbound steering not adopted (namespace gone?); pin removed");
                remove_pin(&path);
            }
        }
    }
    links
}

fn remove_pin(path: &Path) {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(pin = %path.display(), %error, "cannot remove the inbound steering pin");
        }
        _ => {}
    }
}

fn inbound_key(ip: IpAddr, kind: ListenerKind) -> InboundKey {
    let (ip, family) = ip_abi(ip);
    InboundKey {
        ip,
        family,
        kind: kind.abi(),
    }
}

fn probe_key(ip: IpAddr) -> ProbeKey {
    let (ip, family) = ip_abi(ip);
    ProbeKey {
        ip,
        family,
        _pad: 0,
    }
}
