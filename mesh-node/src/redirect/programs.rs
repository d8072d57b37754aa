//! Loading the eBPF object and attaching each program, with errors an operator can act on.

use std::{fs::File, os::fd::AsFd};

use aya::{
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockopt,
        ProgramError, SkMsg, SockOps,
    },
    util::KernelVersion,
    Ebpf,
};
use mesh_ebpf_common::{maps, programs};

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

/// Parses the embedded object and creates its maps, with eBPF logs limited to `log_level`.
pub fn load_object(log_level: u8) -> Result<Ebpf, ProgramsError> {
    #[cfg(weft_no_ebpf_object)]
    {
        let _ = log_level;
        Err(ProgramsError::ObjectNotBuilt)
    }
    #[cfg(not(weft_no_ebpf_object))]
    {
        aya::EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(OBJECT)
            .map_err(|source| ProgramsError::Object {
                kernel: kernel(),
                source: Box::new(source),
            })
    }
}

/// Loads and attaches every cgroup program (and `sk_msg` when `splice`) to `cgroup`.
pub fn attach_all(ebpf: &mut Ebpf, cgroup: &File, splice: bool) -> Result<(), ProgramsError> {
    for name in [
        programs::CONNECT4,
        programs::CONNECT6,
        programs::GETPEERNAME4,
        programs::GETPEERNAME6,
    ] {
        let program: &mut CgroupSockAddr = program(ebpf, name)?;
        program.load().map_err(|e| verifier(name, e))?;
        program
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| attach(name, e))?;
    }
    let sock_ops: &mut SockOps = program(ebpf, programs::SOCK_OPS)?;
    sock_ops
        .load()
        .map_err(|e| verifier(programs::SOCK_OPS, e))?;
    sock_ops
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| attach(programs::SOCK_OPS, e))?;
    let sockopt: &mut CgroupSockopt = program(ebpf, programs::GETSOCKOPT)?;
    sockopt
        .load()
        .map_err(|e| verifier(programs::GETSOCKOPT, e))?;
    sockopt
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(|e| attach(programs::GETSOCKOPT, e))?;
    let ingress: &mut CgroupSkb = program(ebpf, programs::INGRESS)?;
    ingress.load().map_err(|e| verifier(programs::INGRESS, e))?;
    ingress
        .attach(
            cgroup.as_fd(),
            CgroupSkbAttachType::Ingress,
            CgroupAttachMode::Single,
        )
        .map_err(|e| attach(programs::INGRESS, e))?;
    if splice {
        attach_splice(ebpf)?;
    }
    Ok(())
}

fn attach_splice(ebpf: &mut Ebpf) -> Result<(), ProgramsError> {
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
    program
        .load()
        .map_err(|e| verifier(programs::SPLICE_MSG, e))?;
    program
        .attach(&fd)
        .map_err(|e| attach(programs::SPLICE_MSG, e))?;
    Ok(())
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
        let err = load_object(3).expect_err("no object embedded");
        assert!(err.to_string().contains("cargo xtask build-ebpf"), "{err}");
    }

    #[cfg(not(weft_no_ebpf_object))]
    #[test]
    fn embedded_object_parses_and_has_every_program() {
        let mut ebpf = load_object(3).unwrap_or_else(|e| panic!("object must load (root): {e}"));
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
