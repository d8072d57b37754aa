//! `cargo xtask`: Weft's developer tasks.
//!
//! - `setup`: installs what a Debian machine lacks to build Weft (eBPF toolchain, test tools).
//! - `build-ebpf`: builds the eBPF programs in `mesh-ebpf/` with Debian's rustc and bpf-linker.
//! - `test`: set-up, eBPF build, then the whole test suite (the README's test command).
//! - `demo`: the local lab, the README's main command.
//! - `fuzz`: bounded fuzzing of parsers (cargo-fuzz, nightly).
//! - `bench`: the data path measured in the lab with iperf3, wrk and nginx, against direct TCP.
//! - `capture-window`: starts pods through the CNI chain in the lab and counts uncaptured calls.

mod bench;
mod capture_window;
mod demo;
mod ebpf;
mod fuzz;
mod setup;
mod test;
mod workspace;

use clap::{Parser, Subcommand};

/// Weft's developer tasks. Run from anywhere inside the repository.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing to build and test Weft (apt packages and bpf-linker; Debian, root).
    Setup(setup::SetupArgs),
    /// Build the eBPF programs (mesh-ebpf) into the object that mesh-node embeds.
    BuildEbpf(ebpf::BuildArgs),
    /// Set up, build the eBPF programs, and run every test (needs root for the eBPF tests).
    Test(test::TestArgs),
    /// Run the whole mesh on this machine in network namespaces and show what it does (root).
    Demo(demo::DemoArgs),
    /// Fuzz the parsers of network and user input for a bounded time (nightly, cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Measure the data path in the lab (iperf3, wrk, nginx) against direct TCP (root).
    Bench(bench::BenchArgs),
    /// Start pods through the CNI chain in the lab and count calls made before capture (root).
    CaptureWindow(capture_window::CaptureWindowArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup(args) => setup::run(&args),
        Task::BuildEbpf(args) => ebpf::build(&args).map(|object| {
            println!("eBPF object: {}", object.display());
        }),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::CaptureWindow(args) => capture_window::run(&args),
    }
}
