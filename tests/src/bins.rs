//! Locating the workspace's binaries from tests in this crate.
//!
//! Cargo only gives a package's tests the binaries of that same package, so `cargo xtask test`
//! builds every binary first and exports `WEFT_BIN_DIR`; without it the default `target/debug`
//! is used. A missing binary is a loud failure, never a skip.

use std::path::PathBuf;

/// Path of workspace binary `name` (e.g. `mesh-node`).
pub fn path(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let binary = dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build the binaries first (`cargo xtask test` does, or `cargo build --bins`)",
        binary.display()
    );
    binary
}
