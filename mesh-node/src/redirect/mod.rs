//! eBPF traffic redirection: loading, attaching and feeding the programs built from `mesh-ebpf`.
//!
//! [`Redirect::load`] attaches the programs to a cgroup (found under the cgroup2 mount read from
//! mountinfo); pods are enrolled by network namespace cookie ([`netns::cookie_of_path`]). Dropping
//! the [`Redirect`] detaches everything (the programs are held through bpf links owned here),
//! unless [`Config::pin_path`] is set: then links and maps are pinned in bpffs, stay attached
//! when the loader exits (enrolled pods keep failing closed while mesh-node restarts), and the
//! next load adopts them ([`pin`]); [`pin::remove_all`] removes everything.
//!
//! A pod is enrolled with an [`EnrollPolicy`]: its mode plus per-port overrides, kept in the
//! `PORT_MTLS` map in step with `ENROLLED` ([`ports`]).

pub mod attach;
pub mod bpf_sys;
pub mod cgroup;
pub mod config;
pub mod counters;
pub mod direct;
pub mod join;
pub mod logger;
pub mod netns;
pub mod pin;
pub mod ports;
pub mod programs;
mod settings;
pub mod steering;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Arc,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use mesh_ebpf_common::{counter, enroll_flags, enroll_mode, maps};
use tokio::task::JoinHandle;

use self::ports::PortOverrides;
pub use self::{
    cgroup::CgroupError,
    config::{Cidr, Config, DEFAULT_PROBE_SOURCE_V4, DEFAULT_PROBE_SOURCE_V6},
    counters::{CounterSample, Counters, COUNTER_LABELS},
    netns::NetnsError,
    pin::{PinDir, PinError},
    ports::EnrollPolicy,
    programs::ProgramsError,
    steering::{ListenerKind, Steering},
};

/// How an enrolled pod (or one of its ports, see [`EnrollPolicy`]) is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnrollMode {
    /// Outbound TCP goes through the tunnel; inbound is not filtered.
    Capture,
    /// As `Capture`, and inbound plaintext TCP that bypassed the tunnel is dropped.
    Strict,
}

impl EnrollMode {
    fn abi(self) -> u32 {
        match self {
            Self::Capture => enroll_mode::CAPTURE,
            Self::Strict => enroll_mode::STRICT,
        }
    }

    /// The mode of an `ENROLLED` or `PORT_MTLS` value (flags ignored).
    fn from_abi(value: u32) -> Option<Self> {
        match value & enroll_flags::MODE_MASK {
            enroll_mode::CAPTURE => Some(Self::Capture),
            enroll_mode::STRICT => Some(Self::Strict),
            _ => None,
        }
    }
}

/// Errors of the redirect module.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// Locating or opening the cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Loading or attaching the programs failed.
    #[error(transparent)]
    Programs(#[from] ProgramsError),
    /// The pin directory is unusable or holds incompatible maps.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A map operation failed.
    #[error("eBPF map {map} {operation} failed: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// `PORT_MTLS` has no room for another port override.
    #[error(
        "eBPF map PORT_MTLS is full ({capacity} port overrides on this node): pod netns \
         {netns_cookie} enforced at its strictest mode on every port; fewer portLevelMtls \
         entries that differ from their workload's mode free room"
    )]
    PortOverridesFull {
        /// The map's capacity.
        capacity: u32,
        /// The pod that did not fit.
        netns_cookie: u64,
    },
    /// Attaching `sk_lookup` to a pod's network namespace failed.
    #[error("attaching inbound steering (sk_lookup) to pod netns {netns_cookie}: {source}")]
    Steer {
        /// The pod's namespace.
        netns_cookie: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An excluded CIDR has an impossible prefix length.
    #[error("excluded cidr {addr}/{prefix_len} has a prefix longer than the address")]
    BadCidr {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix_len: u8,
    },
}

/// The attached programs and their maps. Dropping it detaches the programs.
pub struct Redirect {
    ebpf: Ebpf,
    joiner: Option<Arc<join::Joiner>>,
    direct: Option<(Arc<direct::Direct>, Option<direct::DirectEvents>)>,
    log_task: Option<JoinHandle<()>>,
    pins: Option<PinDir>,
    ports: PortOverrides,
    steering: Arc<Steering>,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("log_forwarding", &self.log_task.is_some())
            .field("pinned", &self.pinned())
            .finish()
    }
}

impl Redirect {
    /// Loads the programs, writes the config maps and attaches everything to `config.cgroup`.
    ///
    /// eBPF log forwarding starts when called inside a tokio runtime. With `config.pin_path`,
    /// maps and links already pinned there are adopted (pods enrolled before stay enrolled) and
    /// each program is replaced atomically; a failure leaves the previous programs attached.
    pub fn load(config: &Config) -> Result<Self, RedirectError> {
        raise_memlock_limit();
        let mount = cgroup::cgroup2_mount()?;
        let path = cgroup::resolve(&mount, &config.cgroup)?;
        let cgroup_dir = cgroup::open(&path)?;
        let pins = config.pin_path.as_deref().map(PinDir::open).transpose()?;
        if let Some(pins) = &pins {
            pins.check_adoptable()?;
        }
        let mut ebpf = programs::load_object(config.ebpf_log_level(), pins.as_ref())?;
        settings::write(&mut ebpf, config)?;
        let ports = PortOverrides::read(&mut ebpf)?;
        // A wrong kubelet cgroup costs the probes of STRICT pods, not the whole node's traffic:
        // logged, and the tunnel runs without the probe programs.
        let kubelet_dir = config.kubelet_cgroup.as_ref().and_then(|kubelet| {
            let opened = cgroup::resolve(&mount, kubelet).and_then(|path| cgroup::open(&path));
            match opened {
                Ok(dir) => Some(dir),
                Err(error) => {
                    tracing::error!(kubelet_cgroup = %kubelet.display(), %error, "kubelet cgroup not found: kubelet probes keep the node's address, so STRICT pods refuse them; fix --kubelet-cgroup (systemctl show -p ControlGroup kubelet)");
                    None
                }
            }
        });
        programs::attach_all(
            &mut ebpf,
            &cgroup_dir,
            kubelet_dir.as_ref(),
            config.uses_sk_msg(),
            pins.as_ref(),
        )?;
        if let Some(pins) = &pins {
            let kubelet = kubelet_dir.is_some();
            pins.retire_links(&programs::pinned_programs(config.uses_sk_msg(), kubelet))?;
        }
        let joiner = match config.join {
            true => Some(Arc::new(join::Joiner::open(&ebpf)?)),
            false => None,
        };
        let direct = match config.direct {
            true => {
                let (direct, events) = direct::Direct::open(&mut ebpf)?;
                Some((Arc::new(direct), events))
            }
            false => None,
        };
        let steering = Arc::new(Steering::take(&mut ebpf, pins.as_ref())?);
        // After attaching, so a failed load leaves no forwarding task behind; records written in
        // between wait in the ring buffer.
        let log_task = start_logging(&mut ebpf);
        let pinned = pins.as_ref().map(|p| p.root().display().to_string());
        let kubelet = config
            .kubelet_cgroup
            .as_ref()
            .map(|p| p.display().to_string());
        tracing::info!(cgroup = %path.display(), ?kubelet, splice = config.splice, join = config.join, direct = config.direct, ?pinned, "ebpf redirection attached");
        Ok(Self {
            ebpf,
            joiner,
            direct,
            log_task,
            pins,
            ports,
            steering,
        })
    }

    /// Per-pod inbound steering (`sk_lookup`), for the in-pod listener manager.
    pub fn steering(&self) -> Arc<Steering> {
        self.steering.clone()
    }

    /// Same-node joining, when [`Config::join`] is on.
    pub fn joiner(&self) -> Option<Arc<join::Joiner>> {
        self.joiner.clone()
    }

    /// Same-node direct connections, when [`Config::direct`] is on, with their event stream
    /// (handed out once).
    pub fn direct(&mut self) -> Option<(Arc<direct::Direct>, Option<direct::DirectEvents>)> {
        let (direct, events) = self.direct.as_mut()?;
        Some((direct.clone(), events.take()))
    }

    /// The pin directory, when links and maps are pinned.
    pub fn pinned(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// Every enrolled network namespace cookie with its pod mode (port overrides:
    /// [`Self::port_overrides`]). After adopting pinned maps this
    /// includes pods enrolled by the previous loader: reconcile it with the wanted set.
    /// Entries with a mode this build does not know are left out (the programs treat them as
    /// capture); [`Self::retain_enrolled`] still sees them.
    pub fn enrolled_pods(&mut self) -> Result<Vec<(u64, EnrollMode)>, RedirectError> {
        let entries = self.enrolled_entries()?;
        Ok(entries
            .into_iter()
            .filter_map(|(cookie, mode)| Some((cookie, EnrollMode::from_abi(mode)?)))
            .collect())
    }

    fn enrolled_entries(&mut self) -> Result<Vec<(u64, u32)>, RedirectError> {
        let enrolled = self.enrolled()?;
        let entries: Result<Vec<_>, _> = enrolled.iter().collect();
        entries.map_err(|source| map_error(maps::ENROLLED, "read", source))
    }

    /// Every port override in the kernel, by netns cookie then listener port.
    pub fn port_overrides(
        &mut self,
    ) -> Result<BTreeMap<u64, BTreeMap<u16, EnrollMode>>, RedirectError> {
        ports::entries(&mut self.ebpf)
    }

    /// Enrolls (or re-enrolls) the pod whose network namespace has `netns_cookie`, with its
    /// port overrides; overrides it no longer has are removed.
    ///
    /// Order: the wanted overrides, then the `ENROLLED` value, then stale overrides, so every
    /// port is under its old or its new mode at any moment. On any failure (e.g. `PORT_MTLS`
    /// full) the pod is enrolled at [`EnrollPolicy::strictest`] without overrides, never a
    /// weaker mode, and the error is returned (the caller retries).
    pub fn enroll(
        &mut self,
        netns_cookie: u64,
        policy: impl Into<EnrollPolicy>,
    ) -> Result<(), RedirectError> {
        let policy = policy.into();
        if let Err(error) = self.write_policy(netns_cookie, &policy) {
            self.fail_closed(netns_cookie, &policy);
            return Err(error);
        }
        tracing::debug!(netns_cookie, ?policy, "pod enrolled");
        Ok(())
    }

    fn write_policy(&mut self, cookie: u64, policy: &EnrollPolicy) -> Result<(), RedirectError> {
        self.ports.write(&mut self.ebpf, cookie, policy)?;
        self.insert_enrolled(cookie, policy.abi())?;
        let wanted = policy.port_overrides();
        self.ports
            .remove(&mut self.ebpf, cookie, |port| wanted.contains_key(&port))
    }

    /// After a failed [`Self::enroll`]: the pod at its strictest mode, no overrides consulted.
    /// When even that cannot be written, overrides are only dropped if the pod is not enrolled
    /// (a new pod: they would be orphans); an enrolled pod keeps its previous state whole.
    fn fail_closed(&mut self, cookie: u64, policy: &EnrollPolicy) {
        let mode = policy.strictest();
        let fallback = self.insert_enrolled(cookie, EnrollPolicy::from(mode).abi());
        let drop_overrides = fallback.is_ok() || !self.is_enrolled(cookie).unwrap_or(true);
        let removed = match drop_overrides {
            true => self.ports.remove(&mut self.ebpf, cookie, |_| false),
            false => Ok(()),
        };
        match fallback.and(removed) {
            Ok(()) => tracing::warn!(
                netns_cookie = cookie,
                ?mode,
                "port overrides not stored: pod enforced at its strictest mode on every port"
            ),
            Err(error) => tracing::error!(
                netns_cookie = cookie,
                %error,
                "cannot fall back to the strictest mode; the pod keeps its previous enrollment"
            ),
        }
    }

    fn is_enrolled(&mut self, cookie: u64) -> Result<bool, RedirectError> {
        match self.enrolled()?.get(&cookie, 0) {
            Ok(_) => Ok(true),
            Err(source) if is_not_found(&source) => Ok(false),
            Err(source) => Err(map_error(maps::ENROLLED, "read", source)),
        }
    }

    fn insert_enrolled(&mut self, cookie: u64, value: u32) -> Result<(), RedirectError> {
        self.enrolled()?
            .insert(cookie, value, 0)
            .map_err(|source| map_error(maps::ENROLLED, "insert", source))
    }

    /// Removes a pod's enrollment and port overrides; unknown cookies are not an error
    /// (idempotent, so a failed removal is retried by calling it again).
    pub fn unenroll(&mut self, netns_cookie: u64) -> Result<(), RedirectError> {
        let mut enrolled = self.enrolled()?;
        match enrolled.remove(&netns_cookie) {
            Ok(()) => {}
            Err(source) if is_not_found(&source) => {}
            Err(source) => return Err(map_error(maps::ENROLLED, "remove", source)),
        }
        self.ports.remove(&mut self.ebpf, netns_cookie, |_| false)
    }

    /// Unenrolls every network namespace whose cookie `keep` rejects; returns how many. After
    /// adopting pinned maps, call it with the cookies this loader enrolled so pods that left the
    /// mesh while mesh-node was down stop being captured. Port overrides of namespaces that
    /// are not enrolled (any more) are removed too.
    pub fn retain_enrolled(
        &mut self,
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<usize, RedirectError> {
        let (stale, kept): (Vec<u64>, BTreeSet<u64>) = {
            let all = self.enrolled_entries()?.into_iter().map(|(c, _)| c);
            let (stale, kept): (Vec<u64>, Vec<u64>) = all.partition(|cookie| !keep(*cookie));
            (stale, kept.into_iter().collect())
        };
        for cookie in &stale {
            self.unenroll(*cookie)?;
        }
        let orphans: Vec<u64> = self.ports.pods().filter(|c| !kept.contains(c)).collect();
        for cookie in orphans {
            self.ports.remove(&mut self.ebpf, cookie, |_| false)?;
        }
        Ok(stale.len())
    }

    /// Counter totals summed over CPUs.
    pub fn counters(&self) -> Result<Counters, RedirectError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or_else(|| not_in_object(maps::COUNTERS))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)
            .map_err(|source| map_error(maps::COUNTERS, "open", source))?;
        let mut totals = [0u64; counter::COUNT as usize];
        for (index, total) in (0u32..).zip(totals.iter_mut()) {
            let values = array
                .get(&index, 0)
                .map_err(|source| map_error(maps::COUNTERS, "read", source))?;
            *total = values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
        }
        Ok(Counters::from_totals(&totals))
    }

    /// Detaches all programs now (dropping does the same).
    pub fn shutdown(self) {
        drop(self);
    }

    fn enrolled(&mut self) -> Result<HashMap<&mut MapData, u64, u32>, RedirectError> {
        let map = self
            .ebpf
            .map_mut(maps::ENROLLED)
            .ok_or_else(|| not_in_object(maps::ENROLLED))?;
        HashMap::try_from(map).map_err(|source| map_error(maps::ENROLLED, "open", source))
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
        // The Ebpf (and its link fds) is dropped right after: the kernel detaches the links that
        // are not pinned.
        match self.pinned() {
            Some(dir) => tracing::info!(
                pinned = %dir.display(),
                "ebpf redirection left attached (pinned)"
            ),
            None => tracing::info!("ebpf redirection detached"),
        }
    }
}

fn start_logging(ebpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    tokio::runtime::Handle::try_current().ok()?;
    let spawned = aya_log::EbpfLogger::init_with_logger(ebpf, logger::TracingLog)
        .map_err(|e| e.to_string())
        .and_then(|log| logger::spawn(log).map_err(|e| e.to_string()));
    match spawned {
        Ok(task) => Some(task),
        Err(error) => {
            tracing::warn!(%error, "ebpf log forwarding disabled");
            None
        }
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg, where failing
/// to raise the limit (no CAP_SYS_RESOURCE) is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

/// A descriptor of its own for map `name` of the loaded object (a hash, array or sockhash map),
/// for maps driven with raw `bpf(2)` calls.
pub(crate) fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, RedirectError> {
    let map = ebpf.map(name).ok_or_else(|| not_in_object(name))?;
    let data = match map {
        aya::maps::Map::HashMap(data)
        | aya::maps::Map::LruHashMap(data)
        | aya::maps::Map::Array(data)
        | aya::maps::Map::SockHash(data) => data,
        _ => return Err(not_in_object(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| programs::missing_map(name, e).into())
}

pub(crate) fn map_error(
    map: &'static str,
    operation: &'static str,
    source: aya::maps::MapError,
) -> RedirectError {
    RedirectError::Map {
        map,
        operation,
        source,
    }
}

/// aya reports a missing key as ENOENT from the syscall (or `KeyNotFound` on lookups).
pub(crate) fn is_not_found(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

pub(crate) fn not_in_object(map: &'static str) -> RedirectError {
    programs::missing_map(map, "not in object").into()
}
