//! Builds the eBPF crate (`mesh-ebpf/`) for `bpfel-unknown-none`.
//!
//! The crate has its own workspace and `.cargo/config.toml` (target, bpf-linker, BTF), so it is
//! built from its own directory with rustup's cargo driving Debian's rustc. Variables that the
//! outer `cargo xtask` invocation exports (RUSTC, target dir, flags) are cleared so they cannot
//! leak into the BPF build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::Args;

use crate::{setup, workspace};

/// ELF machine number of eBPF objects (`EM_BPF`).
const EM_BPF: u16 = 247;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Do not install missing tools; fail instead.
    #[arg(long)]
    pub no_setup: bool,
}

/// Builds the eBPF object and returns its path.
pub fn build(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    if !args.no_setup {
        setup::ensure()?;
    }
    let crate_dir = workspace::root().join("mesh-ebpf");
    let target_dir = crate_dir.join("target");
    let mut cmd = Command::new(setup::cargo());
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--locked"])
        .env("RUSTC", setup::DEBIAN_RUSTC)
        // Debian's rustc is a stable compiler; aya-ebpf needs a few unstable features.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("PATH", path_with_bpf_linker());
    for leaked in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(leaked);
    }
    workspace::run(&mut cmd).context("building the eBPF programs (mesh-ebpf)")?;
    let object = target_dir.join("bpfel-unknown-none/release/mesh-ebpf");
    check_is_bpf_object(&object)?;
    Ok(object)
}

/// Puts the directory of bpf-linker first on `PATH`, so the one `setup` installed is used.
fn path_with_bpf_linker() -> std::ffi::OsString {
    let linker = setup::bpf_linker_path();
    let mut dirs: Vec<PathBuf> = linker.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Fails unless `path` is a little-endian ELF object for the BPF machine.
fn check_is_bpf_object(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("the build produced no object at {}", path.display()))?;
    let is_elf = bytes.get(..4) == Some(b"\x7fELF".as_slice());
    let machine = bytes.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
    if !is_elf || machine != Some(EM_BPF) {
        bail!(
            "{} is not an eBPF ELF object (machine {machine:?})",
            path.display()
        );
    }
    Ok(())
}
