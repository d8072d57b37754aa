//! Weft's eBPF programs, loaded and attached by `mesh-node`'s redirect module.
//!
//! - [`connect`]: `cgroup/connect4|6` send enrolled pods' TCP connects to the node tunnel.
//! - [`orig`]: `sock_ops`, `cgroup/getsockopt` and `cgroup/getpeername4|6` keep the original
//!   destination reachable for the tunnel (`SO_ORIGINAL_DST`) and visible to the client.
//! - [`strict`]: `cgroup_skb/ingress` drops plaintext inbound connects into strict pods and
//!   strict ports (per-port overrides in `PORT_MTLS`).
//! - [`splice`]: `sk_msg` splices app and tunnel sockets on the same node.
//! - [`join`]: `sk_msg` joins the two app sockets of a same-node connection through the
//!   tunnel's sockets once the tunnel has checked it, so its bytes skip userspace.
//! - [`direct`]: same-node connections mesh-node admitted go straight to the destination pod;
//!   `sock_ops` authorises their tuples for the destination's inbound checks and reports them.
//! - [`inbound`]: `sk_lookup` in each enrolled pod's network namespace steers every inbound TCP
//!   connection attempt to the tunnel's in-pod listeners.
//! - [`probe`]: kubelet probes leave from the probe address (`cgroup/connect*` on the kubelet's
//!   cgroup), which no pod may bind (`cgroup/bind*` on the pods' cgroup).
//!
//! The ABI (map names, key/value layouts, counter indexes) lives in `mesh-ebpf-common`.
#![no_std]
#![no_main]

mod connect;
mod direct;
mod inbound;
mod join;
mod maps;
mod orig;
mod probe;
mod splice;
mod strict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
