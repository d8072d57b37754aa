//! Finds the eBPF object built by `cargo xtask build-ebpf` and stages it for
//! `aya::include_bytes_aligned!`.
//!
//! `cargo check`/`clippy` must work on machines without bpf-linker, so a missing object is not a
//! build error: the crate is compiled with `cfg(weft_no_ebpf_object)` and the loader reports at
//! run time that the object was not built.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weft_no_ebpf_object)");
    println!("cargo::rerun-if-env-changed=WEFT_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("WEFT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir.join("../mesh-ebpf/target/bpfel-unknown-none/release/mesh-ebpf")
        });
    println!("cargo::rerun-if-changed={}", object.display());
    let staged = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("mesh-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&staged, bytes).expect("write staged eBPF object to OUT_DIR"),
        Err(_) => {
            println!("cargo::rustc-cfg=weft_no_ebpf_object");
            // Keep the staged path valid so include paths never dangle.
            fs::write(&staged, []).expect("write empty eBPF placeholder to OUT_DIR");
        }
    }
}
