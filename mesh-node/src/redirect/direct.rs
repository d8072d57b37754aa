//! Same-node direct connections, the maps' side: admissions mesh-node writes, the epoch that
//! voids them, and the kernel's reports of each direct connection.
//!
//! After the tunnel has checked a same-node connection from a client pod to a destination it
//! dialled by address, it admits the pair ([`Direct::admit`]); the pair's next connects go
//! straight to the destination pod while the admission holds, and `sock_ops` reports each one
//! opened and closed ([`DirectEvents`]). Every mesh or policy change moves the epoch
//! ([`Direct::invalidate`]), which voids every admission at once. The programs' side and why
//! nothing else can open the destination's door: `mesh-ebpf/src/direct.rs`.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use mesh_ebpf_common::{
    direct_counter, maps, Admission, AdmitKey, DirectConn, DirectEvent, TupleKey,
};
use tokio::io::unix::AsyncFd;

use super::{bpf_sys, config::ip_abi, map_error, map_fd, not_in_object, RedirectError};

/// How long an admission holds without a new check. It bounds the time pinned programs keep
/// letting a pair through while no mesh-node runs to move the epoch; with a tunnel running,
/// the pair's next connect after it goes through the tunnel (and is admitted again).
pub const ADMISSION_LIFETIME: Duration = Duration::from_secs(10);

/// The admission maps (each call one `bpf(2)` syscall on a shared descriptor).
pub struct Direct {
    admitted: OwnedFd,
    epoch_map: OwnedFd,
    live: OwnedFd,
    epoch: AtomicU64,
    /// Serialises epoch moves, so the map never goes back to an older epoch.
    moving: Mutex<()>,
    stopped: AtomicBool,
    counters: PerCpuArray<MapData, u64>,
}

impl Direct {
    /// Takes the direct path's maps out of the loaded object; returns the event stream too
    /// when called inside a tokio runtime (without it nothing is ever admitted).
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<(Self, Option<DirectEvents>), RedirectError> {
        let direct = Self {
            admitted: map_fd(ebpf, maps::ADMITTED)?,
            epoch_map: map_fd(ebpf, maps::ADMIT_EPOCH)?,
            live: map_fd(ebpf, maps::DIRECT)?,
            epoch: AtomicU64::new(0),
            moving: Mutex::new(()),
            stopped: AtomicBool::new(false),
            counters: take(ebpf, maps::DIRECT_COUNTERS)?,
        };
        let ring: RingBuf<MapData> = take(ebpf, maps::DIRECT_EVENTS)?;
        direct
            .invalidate()
            .map_err(|e| super::programs::missing_map(maps::ADMIT_EPOCH, e))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok((direct, None));
        }
        // SAFETY: the ring owns its descriptor and moves into the AsyncFd, which deregisters it
        // before the ring (and the descriptor) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| super::programs::missing_map(maps::DIRECT_EVENTS, e))?;
        Ok((direct, Some(DirectEvents { ring })))
    }

    /// The epoch now: read it before the mesh view a check uses, and pass it to
    /// [`Self::admit`], so a change in between voids the admission.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Voids every admission (call after installing a new mesh view or policy).
    pub fn invalidate(&self) -> io::Result<()> {
        let _moving = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        bpf_sys::map_update(
            self.epoch_map.as_fd(),
            &0u32,
            &next,
            bpf_sys::update_flags::ANY,
        )
    }

    /// No more admissions, and every one made so far void (the reports of direct connections
    /// can no longer be read, so they could not be accounted for or revoked).
    pub fn stop_admitting(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Err(error) = self.invalidate() {
            tracing::error!(%error, "cannot void same-node direct admissions");
        }
    }

    /// Lets the pod whose network namespace is `netns_cookie` connect from `client` straight to
    /// `dest` until the epoch moves past `epoch` or [`ADMISSION_LIFETIME`] passes.
    pub fn admit(
        &self,
        netns_cookie: u64,
        client: IpAddr,
        dest: SocketAddr,
        epoch: u64,
    ) -> io::Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let (ip, family) = ip_abi(dest.ip());
        let key = AdmitKey {
            netns_cookie,
            ip,
            port: dest.port().to_be(),
            family,
            _pad: 0,
        };
        let admission = Admission {
            client_ip: ip_abi(client).0,
            epoch,
            expires_ns: monotonic_ns()?.saturating_add(ADMISSION_LIFETIME.as_nanos() as u64),
        };
        bpf_sys::map_update(
            self.admitted.as_fd(),
            &key,
            &admission,
            bpf_sys::update_flags::ANY,
        )
    }

    /// Whether the kernel still holds the direct connection `tuple` (its close not seen yet).
    pub fn is_live(&self, tuple: &TupleKey) -> bool {
        let mut conn = DirectConn::default();
        bpf_sys::map_lookup(self.live.as_fd(), tuple, &mut conn).unwrap_or(false)
    }

    /// Connects that went straight to an admitted destination, connects whose SYN found the
    /// admission gone (refused), and reports lost to a full ring, since load.
    pub fn counts(&self) -> [u64; 3] {
        let sum = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|values| values.iter().copied().sum())
                .unwrap_or(0)
        };
        [
            sum(direct_counter::CONNECT_DIRECT),
            sum(direct_counter::CONNECT_UNAUTHORISED),
            sum(direct_counter::EVENTS_LOST),
        ]
    }
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, RedirectError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| not_in_object(name))?;
    M::try_from(map).map_err(|source| map_error(name, "open", source))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> io::Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// The kernel's reports of direct connections, in order.
pub struct DirectEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for DirectEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectEvents").finish_non_exhaustive()
    }
}

impl DirectEvents {
    /// Waits for the next batch of reports and hands each to `each`. An error means the ring
    /// cannot be polled any more.
    pub async fn next_batch(&mut self, mut each: impl FnMut(DirectEvent)) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<DirectEvent>() {
                // SAFETY: the programs write whole `DirectEvent`s (checked length); the read is
                // unaligned-safe and the type is plain integers.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DirectEvent>()) };
                each(event);
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
