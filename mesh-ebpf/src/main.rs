//! Weft's eBPF programs, loaded and attached by `mesh-node`'s redirect module.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use mesh_ebpf_common::counter;

/// Per-CPU event counters, indexed by `mesh_ebpf_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Sees every IPv4 connect in the attached cgroup; lets it proceed unchanged.
#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(_ctx: SockAddrContext) -> i32 {
    bump(counter::CONNECT4_SEEN);
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
