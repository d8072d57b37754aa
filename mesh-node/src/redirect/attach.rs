//! Attaching one cgroup program (and the splice `sk_msg`, [`attach_splice`]): owned by aya
//! (detached when the loader drops it), or, with a pin directory, through a pinned bpf link that
//! outlives the loader and whose program the next loader swaps atomically (`BPF_LINK_UPDATE`).

use std::{
    fs::File,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::MetadataExt,
    },
    path::PathBuf,
};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockopt, ProgramError,
    SockOps,
};

use super::{bpf_sys, pin::PinDir};

/// Errors attaching through pinned links.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// aya refused to attach or load.
    #[error("cannot attach program {program}: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// Creating, pinning, opening, inspecting or updating a pinned link failed.
    #[error("pinned link {path} of {program}: {source}")]
    Adopt {
        /// Program name.
        program: &'static str,
        /// Pin path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pinned link runs on another cgroup than the configured one.
    #[error(
        "pinned link {path} of {program} is attached to cgroup id {pinned}, not to the configured \
         cgroup (id {configured}): remove the old pins with `mesh-node --bpf-cleanup \
         --bpf-pin-path <dir>` first"
    )]
    OtherCgroup {
        /// Program name.
        program: &'static str,
        /// Pin path.
        path: PathBuf,
        /// Cgroup id of the pinned link.
        pinned: u64,
        /// Cgroup id of the configured cgroup.
        configured: u64,
    },
}

/// A cgroup program kind aya can load and attach (the four kinds Weft uses).
pub trait CgroupProgram {
    /// Verifies and loads the program.
    fn load_program(&mut self) -> Result<(), ProgramError>;
    /// The loaded program's fd.
    fn program_fd(&self) -> Result<BorrowedFd<'_>, ProgramError>;
    /// Attaches to `cgroup` with a link aya owns (detached when the loader is dropped).
    fn attach_owned(&mut self, cgroup: BorrowedFd<'_>) -> Result<(), ProgramError>;
}

macro_rules! cgroup_program {
    ($ty:ty, |$program:ident, $cgroup:ident| $attach:expr) => {
        impl CgroupProgram for $ty {
            fn load_program(&mut self) -> Result<(), ProgramError> {
                self.load()
            }

            fn program_fd(&self) -> Result<BorrowedFd<'_>, ProgramError> {
                Ok(self.fd()?.as_fd())
            }

            fn attach_owned(&mut self, $cgroup: BorrowedFd<'_>) -> Result<(), ProgramError> {
                let $program = self;
                $attach.map(drop)
            }
        }
    };
}

cgroup_program!(CgroupSockAddr, |p, cg| p
    .attach(cg, CgroupAttachMode::Single));
cgroup_program!(SockOps, |p, cg| p.attach(cg, CgroupAttachMode::Single));
cgroup_program!(CgroupSockopt, |p, cg| p
    .attach(cg, CgroupAttachMode::Single));
cgroup_program!(CgroupSkb, |p, cg| p.attach(
    cg,
    CgroupSkbAttachType::Ingress,
    CgroupAttachMode::Single
));

/// Attaches a loaded program to `cgroup` as `attach_type` (a `bpf_attach_type`), through a
/// pinned link when `pins` is set.
pub fn attach(
    program: &mut impl CgroupProgram,
    name: &'static str,
    attach_type: u32,
    cgroup: &File,
    pins: Option<&PinDir>,
) -> Result<(), AttachError> {
    let Some(pins) = pins else {
        return program
            .attach_owned(cgroup.as_fd())
            .map_err(|source| AttachError::Attach {
                program: name,
                source,
            });
    };
    let path = pins.link_path(name);
    let link_error = |path: PathBuf| {
        move |source| AttachError::Adopt {
            program: name,
            path,
            source,
        }
    };
    match bpf_sys::obj_get(&path) {
        Ok(link) => adopt(program, name, cgroup, link.as_fd(), path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fd = program_fd(program, name)?;
            let link = bpf_sys::link_create(fd, cgroup.as_fd(), attach_type)
                .map_err(link_error(path.clone()))?;
            bpf_sys::obj_pin(link.as_fd(), &path).map_err(link_error(path))
        }
        Err(source) => Err(link_error(path)(source)),
    }
}

fn program_fd<'p>(
    program: &'p impl CgroupProgram,
    name: &'static str,
) -> Result<BorrowedFd<'p>, AttachError> {
    program.program_fd().map_err(|source| AttachError::Attach {
        program: name,
        source,
    })
}

/// Attaches the loaded `sk_msg` program (`program`, named `name`) to the SPLICE sockhash `map`
/// through a pinned bpf link: an existing link on this map gets the new program atomically; a
/// link left on another map (the map pin was removed) is detached and replaced.
pub fn attach_splice(
    program: BorrowedFd<'_>,
    name: &'static str,
    map: BorrowedFd<'_>,
    pins: &PinDir,
) -> Result<(), AttachError> {
    let path = pins.link_path(name);
    let adopt_error = |source| AttachError::Adopt {
        program: name,
        path: path.clone(),
        source,
    };
    match bpf_sys::obj_get(&path) {
        Ok(link) => {
            let linked = bpf_sys::sockmap_link_map_id(link.as_fd()).map_err(adopt_error)?;
            if linked == bpf_sys::map_id(map).map_err(adopt_error)? {
                return bpf_sys::link_update(link.as_fd(), program).map_err(adopt_error);
            }
            tracing::warn!(link = %path.display(), linked, "pinned splice link on another map; replacing it");
            bpf_sys::link_detach(link.as_fd()).map_err(adopt_error)?;
            std::fs::remove_file(&path).map_err(adopt_error)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(adopt_error(source)),
    }
    let link = bpf_sys::link_create(program, map, bpf_sys::attach_type::SK_MSG_VERDICT)
        .map_err(adopt_error)?;
    bpf_sys::obj_pin(link.as_fd(), &path).map_err(adopt_error)
}

/// Swaps the program of an existing pinned link for `program`, after checking its cgroup.
fn adopt(
    program: &impl CgroupProgram,
    name: &'static str,
    cgroup: &File,
    link: BorrowedFd<'_>,
    path: PathBuf,
) -> Result<(), AttachError> {
    let adopt_error = |source| AttachError::Adopt {
        program: name,
        path: path.clone(),
        source,
    };
    let configured = cgroup.metadata().map_err(adopt_error)?.ino();
    let info = bpf_sys::cgroup_link_info(link).map_err(adopt_error)?;
    if info.cgroup_id != configured {
        return Err(AttachError::OtherCgroup {
            program: name,
            path,
            pinned: info.cgroup_id,
            configured,
        });
    }
    let fd = program.program_fd().map_err(|source| AttachError::Attach {
        program: name,
        source,
    })?;
    bpf_sys::link_update(link, fd).map_err(adopt_error)?;
    tracing::debug!(
        program = name,
        link_id = info.id,
        "pinned link adopted, program replaced"
    );
    Ok(())
}
