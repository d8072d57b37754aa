//! `sk_lookup`, attached to each enrolled pod's network namespace: every inbound TCP connection
//! attempt to the pod goes to the tunnel's in-pod listeners, whatever its destination port.
//!
//! The kernel runs this program when a SYN (or a syncookie ACK) for a local address finds no
//! established socket. It selects, from the `INBOUND` SOCKHASH, the tunnel's listener for the
//! packet's destination address: the HBONE listener for the HBONE port, the plaintext listener
//! for every other port. The accepted socket keeps the packet's addresses, so the tunnel reads the
//! original destination (pod address and port) exactly from `getsockname`, and the client's
//! address from `getpeername`; nothing is rewritten.
//!
//! Left to the normal lookup: connections the pod opens to itself (source address = destination
//! address, or to 127.0.0.1/::1), the tunnel's own connections to the app (it opens them inside
//! the pod from the client's address, on a socket bound to `lo`), and kubelet probes (source =
//! the probe address, which only the kubelet's sockets can use: see `probe`), and same-node
//! direct connections (a tuple the client's `sock_ops` authorised, see `direct`). Everything else
//! for which no listener is registered (the tunnel is starting or restarting, or failed to open
//! it) is refused: `SK_DROP` makes the lookup find no socket, so the kernel answers the SYN with
//! a reset, whatever listens in the pod. Fail closed. UDP is not steered.
//!
//! The interface the kernel reports here is the device of the route that delivered the packet:
//! `lo` for 127.0.0.1 and for the tunnel's `lo`-bound sockets, but the pod's `eth0` when the pod
//! dials its own address (the local route's device). Hence the source = destination test. A
//! forged SYN with the pod's own address as source only makes the app answer itself: no
//! handshake completes for the forger, and a strict pod's `cgroup_skb` program drops it anyway
//! (it did not arrive on loopback).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_ebpf_common::{counter, family, inbound_kind, InboundKey, RedirectConfig};

use crate::{
    maps::{bump, config, INBOUND},
    orig::{read_words, v4_key, v6_key},
};

const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Steers inbound TCP connection attempts of an enrolled pod to the tunnel's listeners.
#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    let verdict = steer(&ctx);
    verdict as u32
}

fn steer(ctx: &SkLookupContext) -> core::ffi::c_uint {
    let lookup = ctx.lookup;
    // SAFETY: kernel context pointer; each field read with its own 4-byte load.
    let (protocol, ifindex, local_port) = unsafe {
        (
            read_volatile(addr_of!((*lookup).protocol)),
            read_volatile(addr_of!((*lookup).ingress_ifindex)),
            read_volatile(addr_of!((*lookup).local_port)),
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    // Attached only once the loader has written CONFIG; without it, fail closed.
    let Some(cfg) = config() else {
        return SK_DROP;
    };
    let Some(Addresses {
        mut key,
        from_probe,
        from_itself,
    }) = addresses(ctx, cfg)
    else {
        return SK_DROP;
    };
    if from_probe || from_itself || direct(ctx) {
        return SK_PASS;
    }
    if cfg.hbone_port != 0 && local_port == u32::from(u16::from_be(cfg.hbone_port)) {
        key.kind = inbound_kind::HBONE;
    }
    match INBOUND.redirect_sk_lookup(ctx, key, 0) {
        Ok(()) => {
            bump(counter::INBOUND_STEERED);
            SK_PASS
        }
        Err(_) => {
            bump(counter::INBOUND_NO_LISTENER);
            SK_DROP
        }
    }
}

/// Whether the attempt belongs to a same-node direct connection (see `direct`): its tuple is
/// one the client's `sock_ops` authorised, so it goes to the app's own listener.
fn direct(ctx: &SkLookupContext) -> bool {
    let lookup = ctx.lookup;
    // SAFETY: kernel context pointer; `remote_port` is a 2-byte network-order field,
    // `local_port` a 4-byte host-order one.
    let (remote_port, local_port) = unsafe {
        (
            read_volatile(addr_of!((*lookup).remote_port)),
            read_volatile(addr_of!((*lookup).local_port)) as u16,
        )
    };
    let local_port = local_port.to_be();
    // SAFETY: as above; 4-byte loads.
    let key = unsafe {
        match read_volatile(addr_of!((*lookup).family)) {
            AF_INET => v4_key(
                read_volatile(addr_of!((*lookup).remote_ip4)),
                remote_port,
                read_volatile(addr_of!((*lookup).local_ip4)),
                local_port,
            ),
            AF_INET6 => v6_key(
                read_words(addr_of!((*lookup).remote_ip6) as *const u32),
                remote_port,
                read_words(addr_of!((*lookup).local_ip6) as *const u32),
                local_port,
            ),
            _ => return false,
        }
    };
    crate::direct::is_direct(&key)
}

/// What the lookup's addresses say.
struct Addresses {
    /// The plaintext listener's key for the destination address.
    key: InboundKey,
    /// The source is the probe address.
    from_probe: bool,
    /// The source is the destination: the pod dialling its own address.
    from_itself: bool,
}

fn addresses(ctx: &SkLookupContext, cfg: &RedirectConfig) -> Option<Addresses> {
    let lookup = ctx.lookup;
    // SAFETY: kernel context pointer; 4-byte loads.
    match unsafe { read_volatile(addr_of!((*lookup).family)) } {
        AF_INET => {
            // SAFETY: as above.
            let (local, remote) = unsafe {
                (
                    read_volatile(addr_of!((*lookup).local_ip4)),
                    read_volatile(addr_of!((*lookup).remote_ip4)),
                )
            };
            Some(Addresses {
                key: key([local, 0, 0, 0], family::INET),
                from_probe: cfg.probe_ip4 != 0 && remote == cfg.probe_ip4,
                from_itself: remote == local,
            })
        }
        AF_INET6 => {
            // SAFETY: as above; four words each.
            let (local, remote) = unsafe {
                (
                    read_words(addr_of!((*lookup).local_ip6) as *const u32),
                    read_words(addr_of!((*lookup).remote_ip6) as *const u32),
                )
            };
            Some(Addresses {
                key: key(local, family::INET6),
                from_probe: cfg.probe_ip6 != [0; 4] && remote == cfg.probe_ip6,
                from_itself: remote == local,
            })
        }
        _ => None,
    }
}

fn key(ip: [u32; 4], family: u16) -> InboundKey {
    InboundKey {
        ip,
        family,
        kind: inbound_kind::PLAINTEXT,
    }
}
