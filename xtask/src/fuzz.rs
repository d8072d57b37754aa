//! `cargo xtask fuzz`: runs each fuzz target in `fuzz/` for a bounded time.
//!
//! cargo-fuzz needs a nightly toolchain (for `-Z sanitizer`); it is installed if missing. New
//! inputs go to `fuzz/corpus/<target>` (ignored by git); `fuzz/seeds/<target>` holds the
//! committed starting inputs. A crash fails the task and leaves the input in `fuzz/artifacts/`.

use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

use crate::{setup, workspace};

/// Every target in fuzz/Cargo.toml.
const TARGETS: &[&str] = &[
    "hbone_authority",
    "hbone_headers",
    "path_normalization",
    "spiffe_id",
];

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let fuzz_dir = workspace::root().join("fuzz");
    for target in targets {
        if !TARGETS.contains(&target) {
            bail!(
                "unknown fuzz target {target:?}; known: {}",
                TARGETS.join(", ")
            );
        }
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).context("create fuzz corpus directory")?;
        workspace::run(
            Command::new("rustup")
                .current_dir(&fuzz_dir)
                .args(["run", "nightly", "cargo", "fuzz", "run", target])
                .arg(&corpus)
                .arg(fuzz_dir.join("seeds").join(target))
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                .env_remove("RUSTC")
                .env_remove("CARGO"),
        )
        .with_context(|| {
            format!("fuzz target {target} failed (input saved under fuzz/artifacts)")
        })?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new(setup::cargo())
        .args(["fuzz", "--version"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    workspace::run(Command::new(setup::cargo()).args(["install", "cargo-fuzz", "--locked"]))
}
