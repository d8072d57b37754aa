//! eBPF traffic redirection: loading, attaching and feeding the programs built from `mesh-ebpf`.
//!
//! [`Redirect::load`] attaches the programs to a cgroup (found under the cgroup2 mount read from
//! mountinfo); pods are enrolled by network namespace cookie ([`netns::cookie_of_path`]). Dropping
//! the [`Redirect`] detaches everything (the programs are held through bpf links owned here).

pub mod cgroup;
pub mod config;
pub mod counters;
pub mod logger;
pub mod netns;
pub mod programs;

use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    Ebpf,
};
use mesh_ebpf_common::{counter, enroll_mode, maps};
use tokio::task::JoinHandle;

pub use self::{
    cgroup::CgroupError,
    config::{Cidr, Config},
    counters::Counters,
    netns::NetnsError,
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
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("log_forwarding", &self.log_task.is_some())
            .finish()
    }
}

impl Redirect {
    /// Loads the programs, writes the config maps and attaches everything to `config.cgroup`.
    ///
    /// eBPF log forwarding starts when called inside a tokio runtime.
    pub fn load(config: &Config) -> Result<Self, RedirectError> {
        raise_memlock_limit();
        let mount = cgroup::cgroup2_mount()?;
        let path = cgroup::resolve(&mount, &config.cgroup)?;
        let cgroup_dir = cgroup::open(&path)?;
        let mut ebpf = programs::load_object(config.ebpf_log_level())?;
        write_config(&mut ebpf, config)?;
        programs::attach_all(&mut ebpf, &cgroup_dir, config.splice)?;
        // After attaching, so a failed load leaves no forwarding task behind; records written in
        // between wait in the ring buffer.
        let log_task = start_logging(&mut ebpf);
        tracing::info!(cgroup = %path.display(), splice = config.splice, "ebpf redirection attached");
        Ok(Self { ebpf, log_task })
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
        // The Ebpf (and its link fds) is dropped right after: the kernel detaches the links.
        tracing::info!("ebpf redirection detached");
    }
}

fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or_else(|| not_in_object(maps::CONFIG))?;
    let mut array: Array<&mut MapData, mesh_ebpf_common::RedirectConfig> =
        Array::try_from(map).map_err(|source| map_error(maps::CONFIG, "open", source))?;
    array
        .set(0, config.to_abi(), 0)
        .map_err(|source| map_error(maps::CONFIG, "write", source))?;
    let map = ebpf
        .map_mut(maps::EXCLUDED_PORTS)
        .ok_or_else(|| not_in_object(maps::EXCLUDED_PORTS))?;
    let mut ports: HashMap<&mut MapData, u16, u8> =
        HashMap::try_from(map).map_err(|source| map_error(maps::EXCLUDED_PORTS, "open", source))?;
    for port in &config.excluded_ports {
        ports
            .insert(port.to_be(), 1, 0)
            .map_err(|source| map_error(maps::EXCLUDED_PORTS, "insert", source))?;
    }
    for cidr in &config.excluded_cidrs {
        exclude_cidr(ebpf, cidr)?;
    }
    Ok(())
}

fn exclude_cidr(ebpf: &mut Ebpf, cidr: &Cidr) -> Result<(), RedirectError> {
    let bad = || RedirectError::BadCidr {
        addr: cidr.addr,
        prefix_len: cidr.prefix_len,
    };
    match cidr.addr {
        IpAddr::V4(ip) if cidr.prefix_len <= 32 => insert_lpm(
            ebpf,
            maps::EXCLUDED_V4,
            Key::new(u32::from(cidr.prefix_len), ip.octets()),
        ),
        IpAddr::V6(ip) if cidr.prefix_len <= 128 => insert_lpm(
            ebpf,
            maps::EXCLUDED_V6,
            Key::new(u32::from(cidr.prefix_len), ip.octets()),
        ),
        _ => Err(bad()),
    }
}

fn insert_lpm<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: Key<K>,
) -> Result<(), RedirectError> {
    let map = ebpf.map_mut(name).ok_or_else(|| not_in_object(name))?;
    let mut trie: LpmTrie<&mut MapData, K, u8> =
        LpmTrie::try_from(map).map_err(|source| map_error(name, "open", source))?;
    trie.insert(&key, 1, 0)
        .map_err(|source| map_error(name, "insert", source))
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

fn map_error(
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
fn is_not_found(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn not_in_object(map: &'static str) -> RedirectError {
    programs::missing_map(map, "not in object").into()
}
