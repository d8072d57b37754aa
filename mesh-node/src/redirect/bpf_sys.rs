//! The few `bpf(2)` commands aya 0.14 does not expose: opening a pinned object as a raw fd,
//! replacing a link's program in place (`BPF_LINK_UPDATE`), reading a cgroup link's target, and
//! map element commands on a shared descriptor (aya's typed maps need `&mut` to write).
//!
//! Layouts follow `union bpf_attr` and `struct bpf_link_info` in `include/uapi/linux/bpf.h`;
//! the kernel accepts attr and info structs shorter than its own and zero-fills the rest.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf_attach_type` values of the cgroup hooks Weft uses.
pub mod attach_type {
    /// `BPF_CGROUP_INET_INGRESS`.
    pub const INET_INGRESS: u32 = 0;
    /// `BPF_CGROUP_SOCK_OPS`.
    pub const SOCK_OPS: u32 = 3;
    /// `BPF_CGROUP_INET4_CONNECT`.
    pub const INET4_CONNECT: u32 = 10;
    /// `BPF_CGROUP_INET6_CONNECT`.
    pub const INET6_CONNECT: u32 = 11;
    /// `BPF_CGROUP_INET4_BIND`.
    pub const INET4_BIND: u32 = 8;
    /// `BPF_CGROUP_INET6_BIND`.
    pub const INET6_BIND: u32 = 9;
    /// `BPF_SK_LOOKUP` (the target is a network namespace).
    pub const SK_LOOKUP: u32 = 36;
    /// `BPF_CGROUP_GETSOCKOPT`.
    pub const GETSOCKOPT: u32 = 21;
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    pub const INET4_GETPEERNAME: u32 = 29;
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    pub const INET6_GETPEERNAME: u32 = 30;
    /// `BPF_SK_MSG_VERDICT` (a sockmap/sockhash; bpf links for it need Linux >= 6.10).
    pub const SK_MSG_VERDICT: u32 = 7;
}

/// `bpf_attr` for `BPF_OBJ_GET` and `BPF_OBJ_PIN`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for the `BPF_MAP_*_ELEM` commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_ANY`, `BPF_NOEXIST` and `BPF_EXIST` for [`map_update`].
pub mod update_flags {
    /// Create or replace.
    pub const ANY: u64 = 0;
    /// Create only.
    pub const NOEXIST: u64 = 1;
}

/// Reads `map[key]` into `value`; `Ok(false)` when there is no such element. `K` and `V` must be
/// the map's exact key and value layouts (`#[repr(C)]`, no implicit padding).
pub fn map_lookup<K, V>(map: BorrowedFd<'_>, key: &K, value: &mut V) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Writes `map[key] = value` with [`update_flags`] `flags`. For a SOCKHASH the value is a socket
/// descriptor (`u32`).
pub fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V, flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Deletes `map[key]`; a missing element is not an error.
pub fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(error) => Err(error),
    }
}

/// `bpf_attr` for `BPF_LINK_CREATE` (no target-specific fields).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info` with the `cgroup` arm of its union.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _rest: [u32; 9],
}

/// What Weft needs to know about a pinned cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    /// Kernel id of the link.
    pub id: u32,
    /// Id of the program the link runs now.
    pub prog_id: u32,
    /// Id of the cgroup it is attached to (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// The hook (`bpf_attach_type`).
    pub attach_type: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` bpf_attr prefix of the size passed;
    // the kernel reads (and for info, writes through pointers we set) only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens a pinned bpffs object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    new_fd(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// Pins `fd` (a map, program or link) at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd_u32(fd),
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Attaches `program` to the cgroup `cgroup` with a new bpf link (multi-attach semantics).
pub fn link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(program),
        target_fd: fd_u32(cgroup),
        attach_type,
        flags: 0,
    };
    new_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn new_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the bpf command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Atomically replaces the program of `link` with `program`: no moment without either.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(program),
        ..LinkUpdateAttr::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Opens the loaded program with kernel id `id` (e.g. a link's [`CgroupLinkInfo::prog_id`]).
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // `prog_id`, `next_id`, `open_flags` of the `BPF_*_GET_FD_BY_ID` attr.
    let mut attr = [id, 0, 0];
    new_fd(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?)
}

/// Detaches `link` from its hook now, even while other fds or pins still refer to it (a pin's
/// own release is deferred to a kernel workqueue, so unlinking it alone detaches "soon").
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [fd_u32(link), 0];
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Id, program and cgroup of a cgroup link.
pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let info = raw_link_info(link)?;
    Ok(CgroupLinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

fn raw_link_info(link: BorrowedFd<'_>) -> io::Result<RawLinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(link),
        info_len: size_of::<RawLinkInfo>() as u32,
        info: &mut info as *mut RawLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Id of the sockmap/sockhash a sockmap link (`sk_msg`) is attached to: the `sockmap` arm of
/// the info union (`map_id`, then `attach_type`) overlays the cgroup arm's 64-bit id.
pub fn sockmap_link_map_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    let info = raw_link_info(link)?;
    let bytes = info.cgroup_id.to_ne_bytes();
    Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Kernel id of a map (`id`, the second field of `struct bpf_map_info`).
pub fn map_id(map: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(map),
        info_len: size_of::<[u32; 2]>() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[1])
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Open descriptors are never negative.
    fd.as_raw_fd().unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi_offsets() {
        assert_eq!(size_of::<ObjAttr>(), 24);
        assert_eq!(size_of::<LinkCreateAttr>(), 16);
        assert_eq!(size_of::<LinkUpdateAttr>(), 16);
        assert_eq!(size_of::<InfoAttr>(), 16);
        assert_eq!(std::mem::offset_of!(RawLinkInfo, cgroup_id), 16);
        assert_eq!(std::mem::offset_of!(RawLinkInfo, attach_type), 24);
    }

    #[test]
    fn obj_get_of_a_missing_pin_reports_the_os_error() {
        let err = obj_get(Path::new("/nonexistent/weft/pin")).expect_err("no such pin");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }
}
