//! eBPF traffic redirection: loading, attaching and feeding the programs built from `mesh-ebpf`.
//!
//! [`Redirect::load`] attaches the programs to a cgroup (found under the cgroup2 mount read from
//! mountinfo); pods are enrolled by network namespace cookie ([`netns::cookie_of_path`]). Dropping
//! the [`Redirect`] detaches everything (the programs are held through bpf links owned here),
//! unless [`Config::pin_path`] is set: then links and maps are pinned in bpffs, stay attached
//! when the loader exits (enrolled pods keep failing closed while mesh-node restarts), and the
//! next load adopts them ([`pin`]); [`pin::remove_all`] removes everything.

pub mod attach;
pub mod bpf_sys;
pub mod cgroup;
pub mod config;
pub mod counters;
pub mod logger;
pub mod netns;
pub mod pin;
pub mod programs;
mod settings;

use std::{net::IpAddr, path::Path};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};
use mesh_ebpf_common::{counter, enroll_mode, maps};
use tokio::task::JoinHandle;

pub use self::{
    cgroup::CgroupError,
    config::{Cidr, Config},
    counters::{CounterSample, Counters, COUNTER_LABELS},
    netns::NetnsError,
    pin::{PinDir, PinError},
    programs::ProgramsError,
};

/// How an enrolled pod is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn from_abi(value: u32) -> Option<Self> {
        match value {
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
    log_task: Option<JoinHandle<()>>,
    pins: Option<PinDir>,
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
        programs::attach_all(&mut ebpf, &cgroup_dir, config.splice, pins.as_ref())?;
        if let Some(pins) = &pins {
            pins.retire_links(&programs::pinned_programs(config.splice))?;
        }
        // After attaching, so a failed load leaves no forwarding task behind; records written in
        // between wait in the ring buffer.
        let log_task = start_logging(&mut ebpf);
        let pinned = pins.as_ref().map(|p| p.root().display().to_string());
        tracing::info!(cgroup = %path.display(), splice = config.splice, ?pinned, "ebpf redirection attached");
        Ok(Self {
            ebpf,
            log_task,
            pins,
        })
    }

    /// The pin directory, when links and maps are pinned.
    pub fn pinned(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// Every enrolled network namespace cookie with its mode. After adopting pinned maps this
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

    /// Enrolls the pod whose network namespace has `netns_cookie`.
    pub fn enroll(&mut self, netns_cookie: u64, mode: EnrollMode) -> Result<(), RedirectError> {
        let mut enrolled = self.enrolled()?;
        enrolled
            .insert(netns_cookie, mode.abi(), 0)
            .map_err(|source| map_error(maps::ENROLLED, "insert", source))?;
        tracing::debug!(netns_cookie, ?mode, "pod enrolled");
        Ok(())
    }

    /// Removes a pod's enrollment; unknown cookies are not an error (idempotent).
    pub fn unenroll(&mut self, netns_cookie: u64) -> Result<(), RedirectError> {
        let mut enrolled = self.enrolled()?;
        match enrolled.remove(&netns_cookie) {
            Ok(()) => Ok(()),
            Err(source) if is_not_found(&source) => Ok(()),
            Err(source) => Err(map_error(maps::ENROLLED, "remove", source)),
        }
    }

    /// Unenrolls every network namespace whose cookie `keep` rejects; returns how many. After
    /// adopting pinned maps, call it with the cookies this loader enrolled so pods that left the
    /// mesh while mesh-node was down stop being captured.
    pub fn retain_enrolled(
        &mut self,
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<usize, RedirectError> {
        let stale: Vec<u64> = self
            .enrolled_entries()?
            .into_iter()
            .map(|(cookie, _)| cookie)
            .filter(|cookie| !keep(*cookie))
            .collect();
        for cookie in &stale {
            self.unenroll(*cookie)?;
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
