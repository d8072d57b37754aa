//! Installs the toolchain pieces Weft needs that a bare Debian 12 machine lacks.
//!
//! The eBPF programs are built with Debian's `rustc-web` (which ships a prebuilt `core` for
//! `bpfel-unknown-none`, so no `rust-src`/build-std is needed) and bpf-linker built against
//! LLVM 22. See docs/ebpf-build.md for why this recipe and not aya's usual one.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::Args;

use crate::workspace;

/// Debian packages the build and the tests need.
pub const APT_PACKAGES: &[&str] = &[
    // Debian's rustc 1.96 (LLVM 22) and its prebuilt libcore for bpfel-unknown-none.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // bpf-linker links against this LLVM.
    "llvm-22-dev",
    // Inspecting loaded programs; network namespaces and a demo CA for the lab.
    "bpftool",
    "iproute2",
    "openssl",
];

/// The bpf-linker release known to work with LLVM 22 and this rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where LLVM 22 lives on Debian.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian's rustc, used for the eBPF crate only.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Extra Debian packages of the benchmarks (`cargo xtask setup --bench`; `cargo xtask bench`
/// installs them itself): nginx is the server of the lab bench and the reverse-proxy baseline of
/// mesh-waypoint's `proxy` bench; iperf3 and wrk are the lab bench's load generators.
pub const BENCH_APT_PACKAGES: &[&str] = &["nginx", "iperf3", "wrk"];

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
    /// Also install the benchmarks' tools (nginx, iperf3, wrk).
    #[arg(long)]
    pub bench: bool,
}

/// What is missing on this machine.
#[derive(Debug, Default)]
struct Missing {
    apt: Vec<&'static str>,
    bpf_linker: bool,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.apt.is_empty() && !self.bpf_linker
    }
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    let mut missing = probe();
    if args.bench {
        missing.apt.extend(missing_bench_packages());
    }
    if missing.is_empty() {
        eprintln!("setup: everything Weft needs is installed");
        return Ok(());
    }
    if args.check {
        bail!("setup: missing {}", describe(&missing));
    }
    install(&missing)
}

/// Installs whatever is missing, or explains how when this machine cannot do it unattended.
pub fn ensure() -> anyhow::Result<()> {
    install_if_missing(&probe())
}

/// Installs the benchmarks' tools if any is missing.
pub fn ensure_bench() -> anyhow::Result<()> {
    install_if_missing(&Missing {
        apt: missing_bench_packages(),
        bpf_linker: false,
    })
}

fn install_if_missing(missing: &Missing) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    install(missing)
}

fn missing_bench_packages() -> Vec<&'static str> {
    BENCH_APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !apt_installed(package))
        .collect()
}

fn probe() -> Missing {
    Missing {
        apt: APT_PACKAGES
            .iter()
            .copied()
            .filter(|package| !apt_installed(package))
            .collect(),
        bpf_linker: !bpf_linker_ok(),
    }
}

fn describe(missing: &Missing) -> String {
    let mut parts = Vec::new();
    if !missing.apt.is_empty() {
        parts.push(format!("apt packages {}", missing.apt.join(" ")));
    }
    if missing.bpf_linker {
        parts.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"));
    }
    parts.join(" and ")
}

fn install(missing: &Missing) -> anyhow::Result<()> {
    if !is_debian() || !is_root() {
        bail!(
            "setup: missing {}. Automatic install needs Debian 12 and root; elsewhere install:\n  \
             apt-get install -y --no-install-recommends {}\n  \
             LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --locked --no-default-features --features llvm-22",
            describe(missing),
            APT_PACKAGES.join(" "),
        );
    }
    if !missing.apt.is_empty() {
        workspace::run(Command::new("apt-get").arg("update").arg("-qq"))?;
        workspace::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing.apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if missing.bpf_linker {
        workspace::run(
            Command::new(cargo())
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--locked", "--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    let still = probe();
    if !still.is_empty() {
        bail!("setup: still missing after install: {}", describe(&still));
    }
    eprintln!("setup: installed {}", describe(missing));
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker_path())
        .arg("--version")
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

/// bpf-linker as `cargo install` places it, falling back to `PATH`.
pub fn bpf_linker_path() -> PathBuf {
    cargo_home()
        .map(|home| home.join("bin/bpf-linker"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("bpf-linker"))
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
}

/// The cargo that is running xtask (rustup's), so installs use the same toolchain.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

fn is_debian() -> bool {
    std::fs::read_to_string("/etc/os-release")
        .map(|release| release.lines().any(|line| line == "ID=debian"))
        .unwrap_or(false)
}

/// Whether this process runs as root (installs and the eBPF tests need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .context("read /proc/self/status")
        .map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1))
                == Some("0")
        })
        .unwrap_or(false)
}
