//! The kernel/user ABI of Weft's eBPF programs.
//!
//! Every type here is `#[repr(C)]` with explicit-width fields and explicit padding, so the eBPF
//! programs (built for `bpfel-unknown-none`) and the userspace loader in `mesh-node` agree on the
//! layout byte for byte. No `bool`s: the kernel side compares integers. `aya::Pod` impls are behind
//! the `user` feature, so the eBPF build does not pull in aya.
#![no_std]

/// Indexes of the per-CPU program counters (the `COUNTERS` map), exposed as metrics by mesh-node.
pub mod counter {
    /// `cgroup/connect4`: connects seen.
    pub const CONNECT4_SEEN: u32 = 0;
    /// Number of counters; the size of the `COUNTERS` map.
    pub const COUNT: u32 = 1;
}
