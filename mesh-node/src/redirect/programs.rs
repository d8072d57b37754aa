//! Loading the eBPF object and attaching each program, with errors an operator can act on.

use std::{fs::File, os::fd::AsFd};

use aya::{
    programs::{CgroupSkb, CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SkMsg, SockOps},
    util::KernelVersion,
    Ebpf,
};
use mesh_ebpf_common::{maps, programs};

use super::{
    attach::{self, AttachError, CgroupProgram},
    bpf_sys::attach_type,
    pin::PinDir,
};

/// Lines of verifier output kept in errors (the end of the log names the failing instruction).
const VERIFIER_EXCERPT_LINES: usize = 25;

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum ProgramsError {
    /// The crate was built without the eBPF object.
    #[error("eBPF object not built: run `cargo xtask build-ebpf`")]
    ObjectNotBuilt,
    /// The object could not be parsed or its maps created.
    #[error("cannot load eBPF object on kernel {kernel}: {source}")]
    Object {
        /// Running kernel.
        kernel: String,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object or has an unexpected type.
    #[error("program {program} missing or of the wrong type in the eBPF object: {source}")]
    Missing {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The verifier rejected a program.
    #[error(
        "kernel {kernel} rejected program {program}: {error}; verifier log excerpt:\n{excerpt}"
    )]
    Verifier {
        /// Running kernel.
        kernel: String,
        /// Program name.
        program: &'static str,
        /// The syscall error.
        error: std::io::Error,
        /// The last lines of the verifier log.
        excerpt: String,
    },
    /// Attaching a loaded program failed.
    #[error("cannot attach program {program} on kernel {kernel}: {source}")]
    Attach {
        /// Running kernel.
        kernel: String,
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// Attaching through a pinned link failed.
    #[error(transparent)]
    Link(#[from] AttachError),
    /// A map the programs need is missing from the object.
    #[error("map {map} missing from the eBPF object: {detail}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What went wrong.
        detail: String,
    },
}

#[cfg(not(weft_no_ebpf_object))]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf.o"));

/// Parses the embedded object and creates its maps, with eBPF logs limited to `log_level`; with
/// `pins`, the shared maps are opened from (or created and pinned in) the pin directory.
pub fn load_object(log_level: u8, pins: Option<&PinDir>) -> Result<Ebpf, ProgramsError> {
    #[cfg(weft_no_ebpf_object)]
    {
        let _ = (log_level, pins);
        Err(ProgramsError::ObjectNotBuilt)
    }
    #[cfg(not(weft_no_ebpf_object))]
    {
        let mut loader = aya::EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &log_level, false);
        if let Some(pins) = pins {
            for layout in &super::pin::PINNED_MAPS {
                loader.map_pin_path(layout.name, pins.map_path(layout.name));
            }
        }
        loader.load(OBJECT).map_err(|source| ProgramsError::Object {
            kernel: kernel(),
            source: Box::new(source),
        })
    }
}

/// The cgroup programs [`attach_all`] attaches (with pinning, each has a pinned link).
pub const CGROUP_PROGRAMS: [&str; 9] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SOCK_OPS,
    programs::GETSOCKOPT,
    programs::INGRESS,
    programs::GUARD_BIND4,
    programs::GUARD_BIND6,
];

/// Programs attached to the kubelet's cgroup, when one is configured.
pub const KUBELET_PROGRAMS: [&str; 2] = [programs::PROBE_CONNECT4, programs::PROBE_CONNECT6];

/// Whether [`step`] verifies and loads a program or attaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Load,
    Attach,
}

/// Loads and attaches every cgroup program (and `sk_msg` when `sk_msg`: splicing or joining) to `cgroup`, and the
/// probe programs to the kubelet's cgroup when there is one; with `pins` through pinned links
/// (see [`super::pin`]). The `sk_lookup` program is loaded too ([`super::Steering`] attaches it
/// per pod). Every program is verified before any is attached, so a rejected program never
/// leaves adopted links running a mix of old and new programs.
pub fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &File,
    kubelet: Option<&File>,
    sk_msg: bool,
    pins: Option<&PinDir>,
) -> Result<(), ProgramsError> {
    for phase in [Phase::Load, Phase::Attach] {
        if phase == Phase::Load {
            let sk_lookup: &mut SkLookup = program(ebpf, programs::SK_LOOKUP)?;
            sk_lookup
                .load()
                .map_err(|e| verifier(programs::SK_LOOKUP, e))?;
        }
        for (name, hook) in [
            (programs::CONNECT4, attach_type::INET4_CONNECT),
            (programs::CONNECT6, attach_type::INET6_CONNECT),
            (programs::GETPEERNAME4, attach_type::INET4_GETPEERNAME),
            (programs::GETPEERNAME6, attach_type::INET6_GETPEERNAME),
            (programs::GUARD_BIND4, attach_type::INET4_BIND),
            (programs::GUARD_BIND6, attach_type::INET6_BIND),
        ] {
            step::<CgroupSockAddr>(ebpf, phase, (name, hook), cgroup, pins)?;
        }
        let sock_ops = (programs::SOCK_OPS, attach_type::SOCK_OPS);
        step::<SockOps>(ebpf, phase, sock_ops, cgroup, pins)?;
        let getsockopt = (programs::GETSOCKOPT, attach_type::GETSOCKOPT);
        step::<CgroupSockopt>(ebpf, phase, getsockopt, cgroup, pins)?;
        let ingress = (programs::INGRESS, attach_type::INET_INGRESS);
        step::<CgroupSkb>(ebpf, phase, ingress, cgroup, pins)?;
        if sk_msg {
            splice_step(ebpf, phase, pins)?;
        }
        if let Some(kubelet) = kubelet {
            for (name, hook) in [
                (programs::PROBE_CONNECT4, attach_type::INET4_CONNECT),
                (programs::PROBE_CONNECT6, attach_type::INET6_CONNECT),
            ] {
                step::<CgroupSockAddr>(ebpf, phase, (name, hook), kubelet, pins)?;
            }
        }
    }
    Ok(())
}

/// Loads program `name`, or attaches it to `hook` (a `bpf_attach_type`).
fn step<P>(
    ebpf: &mut Ebpf,
    phase: Phase,
    (name, hook): (&'static str, u32),
    cgroup: &File,
    pins: Option<&PinDir>,
) -> Result<(), ProgramsError>
where
    P: CgroupProgram,
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program: &mut P = program(ebpf, name)?;
    match phase {
        Phase::Load => program.load_program().map_err(|e| verifier(name, e)),
        Phase::Attach => Ok(attach::attach(program, name, hook, cgroup, pins)?),
    }
}

/// Loads the `sk_msg` program, or attaches it to the `SPLICE` map (with `pins`, through a
/// pinned link: it then outlives the loader like the cgroup programs).
fn splice_step(ebpf: &mut Ebpf, phase: Phase, pins: Option<&PinDir>) -> Result<(), ProgramsError> {
    if phase == Phase::Load {
        let program: &mut SkMsg = program(ebpf, programs::SPLICE_MSG)?;
        return program
            .load()
            .map_err(|e| verifier(programs::SPLICE_MSG, e));
    }
    let map = ebpf
        .map(maps::SPLICE)
        .ok_or_else(|| missing_map(maps::SPLICE, "not in object"))?;
    let hash: aya::maps::SockHash<_, mesh_ebpf_common::TupleKey> =
        aya::maps::SockHash::try_from(map).map_err(|e| missing_map(maps::SPLICE, e))?;
    let fd = hash
        .fd()
        .try_clone()
        .map_err(|e| missing_map(maps::SPLICE, e))?;
    let program: &mut SkMsg = program(ebpf, programs::SPLICE_MSG)?;
    if let Some(pins) = pins.filter(|_| sockmap_links_supported()) {
        let program_fd = program
            .fd()
            .map_err(|e| attach(programs::SPLICE_MSG, e))?
            .as_fd();
        let map_fd = fd.as_fd();
        return Ok(attach::attach_splice(
            program_fd,
            programs::SPLICE_MSG,
            map_fd,
            pins,
        )?);
    }
    program
        .attach(&fd)
        .map_err(|e| attach(programs::SPLICE_MSG, e))?;
    Ok(())
}

/// Sockmap bpf links (`BPF_LINK_CREATE` on a sockhash) exist since Linux 6.10; before that the
/// splice program is attached the old way and detached with the loader (sockets then use plain
/// TCP until the next start re-attaches it).
fn sockmap_links_supported() -> bool {
    let supported = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 10, 0));
    if !supported {
        tracing::warn!(kernel = %kernel(), "kernel before 6.10: the splice program is not pinned");
    }
    supported
}

/// The programs that have pinned links with `sk_msg` on or off (what
/// [`PinDir::retire_links`] keeps).
pub fn pinned_programs(sk_msg: bool, kubelet: bool) -> Vec<&'static str> {
    let mut names = CGROUP_PROGRAMS.to_vec();
    if kubelet {
        names.extend(KUBELET_PROGRAMS);
    }
    if sk_msg {
        names.push(programs::SPLICE_MSG);
    }
    names
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProgramsError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(ProgramsError::Missing {
        program: name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| ProgramsError::Missing {
        program: name,
        source,
    })
}

/// Turns a load failure into an error naming the program, kernel and verifier complaint.
fn verifier(program: &'static str, error: ProgramError) -> ProgramsError {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => ProgramsError::Verifier {
            kernel: kernel(),
            program,
            error: io_error,
            excerpt: excerpt(&verifier_log.to_string()),
        },
        other => ProgramsError::Attach {
            kernel: kernel(),
            program,
            source: other,
        },
    }
}

fn attach(program: &'static str, source: ProgramError) -> ProgramsError {
    ProgramsError::Attach {
        kernel: kernel(),
        program,
        source,
    }
}

/// A map error naming the map.
pub fn missing_map(map: &'static str, detail: impl std::fmt::Display) -> ProgramsError {
    ProgramsError::Map {
        map,
        detail: detail.to_string(),
    }
}

fn kernel() -> String {
    KernelVersion::current().map_or_else(|e| format!("unknown ({e})"), |v| v.to_string())
}

/// The last [`VERIFIER_EXCERPT_LINES`] lines of a verifier log.
pub fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(VERIFIER_EXCERPT_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_the_tail() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = excerpt(&log);
        assert_eq!(tail.lines().count(), VERIFIER_EXCERPT_LINES);
        assert!(tail.ends_with("line 99"));
        assert_eq!(excerpt("one\ntwo"), "one\ntwo");
    }

    #[cfg(weft_no_ebpf_object)]
    #[test]
    fn missing_object_tells_how_to_build_it() {
        let err = load_object(3, None).expect_err("no object embedded");
        assert!(err.to_string().contains("cargo xtask build-ebpf"), "{err}");
    }

    #[cfg(not(weft_no_ebpf_object))]
    #[test]
    fn embedded_object_parses_and_has_every_program() {
        let mut ebpf =
            load_object(3, None).unwrap_or_else(|e| panic!("object must load (root): {e}"));
        for name in [
            programs::CONNECT4,
            programs::CONNECT6,
            programs::SOCK_OPS,
            programs::GETSOCKOPT,
            programs::GETPEERNAME4,
            programs::GETPEERNAME6,
            programs::INGRESS,
            programs::SPLICE_MSG,
        ] {
            assert!(ebpf.program_mut(name).is_some(), "program {name} missing");
        }
    }

    #[test]
    fn verifier_errors_name_program_and_kernel() {
        let err = ProgramsError::Verifier {
            kernel: "6.18.0".into(),
            program: programs::CONNECT4,
            error: std::io::Error::from_raw_os_error(libc::EACCES),
            excerpt: "invalid bpf_context access off=32 size=8".into(),
        };
        let text = err.to_string();
        assert!(
            text.contains("weft_connect4") && text.contains("6.18.0") && text.contains("off=32")
        );
    }
}
