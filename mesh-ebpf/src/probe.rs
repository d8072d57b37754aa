//! Kubelet probes: the only plaintext a strict pod's own listeners accept from outside the pod,
//! told apart by something no pod can forge.
//!
//! - `cgroup/connect4|6` on the **kubelet's cgroup** (`weft_probe_connect*`): a TCP connect to
//!   an enrolled local pod (`PROBED_PODS`) is bound to the probe source address (169.254.7.127 /
//!   `fd16:9254:7127:1337:ffff:ffff:ffff:ffff` by default, Istio's; mesh-node puts it on the
//!   node's loopback with host scope). So probes, and only the kubelet's sockets, leave from it.
//! - `cgroup/bind4|6` on the **pods' cgroup** (`weft_guard_bind*`): no socket of any pod,
//!   hostNetwork pods included (they share the node's addresses), may bind the probe address.
//!
//! A pod cannot get into the kubelet's cgroup, so it cannot send from the probe address with a
//! socket that completes a handshake: from its own network namespace the answer goes to the node,
//! which owns the address and resets the connection. Istio SNATs every connection from the node's
//! network namespace to a pod to this address, so there any hostNetwork pod passes as a probe;
//! here only the kubelet does.

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_bind, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use mesh_ebpf_common::{counter, family, ProbeKey};

use crate::{
    maps::{bump, config, PROBED_PODS},
    orig::{is_v4_mapped, read_words},
};

const SOCK_STREAM: u32 = 1;
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// The kubelet's IPv4 connects to enrolled pods leave from the probe address.
#[cgroup_sock_addr(connect4)]
pub fn weft_probe_connect4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config().filter(|c| c.probe_ip4 != 0) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: kernel context pointer, 4-byte loads.
    let (ty, dst) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).user_ip4)),
        )
    };
    if ty == SOCK_STREAM && probed([dst, 0, 0, 0], family::INET) {
        let mut addr = SockaddrIn {
            family: AF_INET,
            port: 0,
            addr: cfg.probe_ip4,
            zero: [0; 8],
        };
        bind(
            &ctx,
            addr_of_mut!(addr).cast(),
            core::mem::size_of::<SockaddrIn>(),
        );
    }
    ALLOW
}

/// The kubelet's IPv6 connects (and IPv4-mapped ones) to enrolled pods.
#[cgroup_sock_addr(connect6)]
pub fn weft_probe_connect6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    let sa = ctx.sock_addr;
    // SAFETY: kernel context pointer, 4-byte loads.
    let (ty, dst) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_words(addr_of!((*sa).user_ip6) as *const u32),
        )
    };
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let source = if is_v4_mapped(&dst) {
        (cfg.probe_ip4 != 0 && probed([dst[3], 0, 0, 0], family::INET)).then_some([
            0,
            0,
            dst[2],
            cfg.probe_ip4,
        ])
    } else {
        (cfg.probe_ip6 != [0; 4] && probed(dst, family::INET6)).then_some(cfg.probe_ip6)
    };
    if let Some(source) = source {
        let mut addr = SockaddrIn6 {
            family: AF_INET6,
            port: 0,
            flowinfo: 0,
            addr: source,
            scope_id: 0,
        };
        bind(
            &ctx,
            addr_of_mut!(addr).cast(),
            core::mem::size_of::<SockaddrIn6>(),
        );
    }
    ALLOW
}

/// No pod binds the IPv4 probe address.
#[cgroup_sock_addr(bind4)]
pub fn weft_guard_bind4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    // SAFETY: kernel context pointer, 4-byte load.
    let ip = unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_ip4)) };
    verdict(cfg.probe_ip4 != 0 && ip == cfg.probe_ip4)
}

/// No pod binds the IPv6 probe address, nor the IPv4 one mapped into IPv6.
#[cgroup_sock_addr(bind6)]
pub fn weft_guard_bind6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    // SAFETY: kernel context pointer, 4-byte loads.
    let ip = unsafe { read_words(addr_of!((*ctx.sock_addr).user_ip6) as *const u32) };
    let v4 = cfg.probe_ip4 != 0 && is_v4_mapped(&ip) && ip[3] == cfg.probe_ip4;
    let v6 = cfg.probe_ip6 != [0; 4] && ip == cfg.probe_ip6;
    verdict(v4 || v6)
}

fn verdict(probe_address: bool) -> i32 {
    if probe_address {
        bump(counter::PROBE_BIND_REFUSED);
        return DENY;
    }
    ALLOW
}

fn probed(ip: [u32; 4], family: u16) -> bool {
    let key = ProbeKey {
        ip,
        family,
        _pad: 0,
    };
    // SAFETY: presence test only.
    unsafe { PROBED_PODS.get(&key) }.is_some()
}

/// Binds the connecting socket to `addr` (`len` bytes); a socket the kubelet bound itself keeps
/// its address (the helper then fails and the connect goes on unchanged).
fn bind(ctx: &SockAddrContext, addr: *mut aya_ebpf::bindings::sockaddr, len: usize) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: helper valid in cgroup connect programs; `addr` points at `len` bytes on our stack.
    if unsafe { bpf_bind(sa, addr, len as i32) } == 0 {
        bump(counter::PROBE_BOUND);
    }
}
