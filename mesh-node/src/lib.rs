//! The Weft node tunnel as a library, so tests and benchmarks run it in-process.
//!
//! - [`redirect`]: loads and attaches the eBPF programs that send enrolled pods' traffic to the
//!   tunnel, and keeps the enrollment maps up to date.

pub mod redirect;
