//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! The eBPF and network-namespace tests load real programs into the kernel, so the suite needs
//! root; it refuses to run without it rather than skipping those tests.

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::{ebpf, setup, workspace};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` (e.g. a test name filter after `--`).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!(
            "the test suite loads eBPF programs and creates network namespaces, so it needs root; \
             run `sudo -E cargo xtask test`"
        );
    }
    let object = ebpf::build(&ebpf::BuildArgs { no_setup: false })?;
    // Tests in `tests/` run the other packages' binaries, which cargo does not build for them.
    workspace::run(
        Command::new(setup::cargo())
            .current_dir(workspace::root())
            .args(["build", "--workspace", "--bins"])
            .env("WEFT_EBPF_OBJECT", &object),
    )?;
    workspace::run(
        Command::new(setup::cargo())
            .current_dir(workspace::root())
            .args(["test", "--workspace"])
            .args(&args.cargo_test_args)
            .env("WEFT_EBPF_OBJECT", &object)
            .env("WEFT_BIN_DIR", workspace::root().join("target/debug")),
    )
}
