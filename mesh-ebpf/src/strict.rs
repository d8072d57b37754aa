//! `cgroup_skb/ingress`: strict inbound for enrolled pods in `STRICT` mode, and for the `STRICT`
//! ports of any enrolled pod.
//!
//! Which listeners are strict: a pod's mode applies to every port, except the ports listed for it
//! in `PORT_MTLS` (PeerAuthentication `portLevelMtls`, by the listening socket's port, i.e. the
//! container port), whose own mode wins. Only pods whose `ENROLLED` value carries
//! `PORT_OVERRIDES` are looked up there, so capture pods without overrides are judged on the
//! `ENROLLED` lookup alone, and strict pods without overrides pay no extra lookup.
//!
//! Connection attempts are recognised by the socket that receives them, not by parsing TCP flags:
//! a packet delivered to a TCP socket in `LISTEN` state is a handshake packet (a SYN, or the ACK
//! that completes a handshake). So no walk through IPv6 extension headers is needed (an attacker
//! could chain them to hide the TCP header from a bounded parser), and the destination port is the
//! listener's own port.
//!
//! Into a strict pod's listeners, a connection attempt passes when it arrives on loopback, or is
//! aimed at one of the tunnel's own in-pod listeners (HBONE: mutual TLS that the tunnel
//! authenticates and authorises; plaintext, where `sk_lookup` steers every other port: the
//! tunnel refuses each STRICT original port itself, and admits PERMISSIVE port overrides after
//! policy): the listener's port is the HBONE or plaintext port *and* the listening socket carries
//! the tunnel's `SO_MARK`, so an application listening on those ports itself gets no exception;
//! or it comes from the kubelet probe address (IPv4 or IPv6; see `probe` for why only the
//! kubelet can use it), or it belongs to a same-node direct connection: its tuple is one the
//! client's `sock_ops` authorised after mesh-node's check (see `direct`). The node's own
//! address gets no exception: the tunnel connects to the app from inside the pod (over
//! loopback), so a node process or hostNetwork pod is just another client outside the mesh. Every other attempt is dropped, so plaintext that bypassed the tunnel
//! never gets a connection. (`sk_lookup` already steers such attempts to the tunnel; this program
//! is the second line, and the only one while no tunnel runs on a pinned node.) Packets
//! of established connections and of non-TCP sockets pass. An unknown network protocol is
//! dropped (fail closed).

use aya_ebpf::{
    bindings::BPF_TCP_LISTEN,
    helpers::{bpf_get_netns_cookie, bpf_sk_fullsock},
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext,
};
use mesh_ebpf_common::{counter, enroll_flags, enroll_mode, RedirectConfig};

use crate::{
    maps::{bump, config, enroll_mode as mode_of, port_mode},
    orig::{v4_key, v6_key},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;
/// Offset of the source address in the IPv4 header (options come after it).
const IPV4_SRC: usize = 12;
/// Offset of the source address in the fixed IPv6 header.
const IPV6_SRC: usize = 8;
/// Offset of the next-header field in the fixed IPv6 header.
const IPV6_NEXT: usize = 6;
/// Length of the fixed IPv6 header.
const IPV6_HEADER: usize = 40;

/// Judges packets delivered to sockets in the attached cgroup.
#[cgroup_skb(ingress)]
pub fn weft_ingress(ctx: SkBuffContext) -> i32 {
    match verdict(&ctx) {
        Some(false) => {
            bump(counter::STRICT_DROPPED);
            DROP
        }
        Some(true) => {
            bump(counter::STRICT_ALLOWED);
            PASS
        }
        None => PASS,
    }
}

/// `None`: not a connection attempt into a strict pod or port. `Some(allowed)` otherwise.
fn verdict(ctx: &SkBuffContext) -> Option<bool> {
    let cfg = config()?;
    // SAFETY: helper valid for cgroup_skb programs on this kernel (checked at load).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let enrolled = mode_of(netns)?;
    let overrides = enrolled & enroll_flags::PORT_OVERRIDES != 0;
    let pod_strict = enrolled & enroll_flags::MODE_MASK == enroll_mode::STRICT;
    if !pod_strict && !overrides {
        return None;
    }
    let listener = tcp_listener(ctx)?;
    if !listener_strict(netns, &listener, pod_strict, overrides) {
        return None;
    }
    // SAFETY: kernel context pointer.
    let (protocol, ifindex) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).ingress_ifindex) };
    if ifindex == LOOPBACK_IFINDEX || is_tunnel_listener(&listener, cfg) {
        return Some(true);
    }
    Some(match u32::from_be(protocol) >> 16 {
        ETH_P_IP => ipv4_source_allowed(ctx, cfg) || ipv4_direct(ctx),
        ETH_P_IPV6 => ipv6_source_allowed(ctx, cfg) || ipv6_direct(ctx),
        _ => false,
    })
}

/// Whether a listener of the pod is strict: its port's override when the pod has overrides and
/// one exists for this port, else the pod's mode. An override other than `CAPTURE` (permissive)
/// is strict (fail closed).
fn listener_strict(netns: u64, listener: &Listener, pod_strict: bool, overrides: bool) -> bool {
    if !overrides {
        return pod_strict;
    }
    match port_mode(netns, listener.port) {
        Some(mode) => mode != enroll_mode::CAPTURE,
        None => pod_strict,
    }
}

/// The receiving listening socket: its local port (network order) and `SO_MARK`.
struct Listener {
    port: u16,
    mark: u32,
}

/// Whether the listener is one of the tunnel's in-pod listeners: the HBONE port or the
/// plaintext port, and the tunnel's mark (neither check can be turned off alone; a 0 port or
/// mark turns the exception off). The tunnel authenticates HBONE itself, and refuses plaintext
/// for each original destination port that is STRICT.
fn is_tunnel_listener(listener: &Listener, cfg: &RedirectConfig) -> bool {
    let port = listener.port;
    let tunnel_port = (cfg.hbone_port != 0 && port == cfg.hbone_port)
        || (cfg.plaintext_port != 0 && port == cfg.plaintext_port);
    tunnel_port && cfg.tunnel_mark != 0 && listener.mark == cfg.tunnel_mark
}

/// The receiving socket when it is a listening TCP socket.
fn tcp_listener(ctx: &SkBuffContext) -> Option<Listener> {
    // SAFETY: kernel context pointer; `sk` may be null and is checked before use.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: helper valid for cgroup_skb programs; returns null for non-full sockets.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: non-null full socket returned by the kernel for this program run.
    let (protocol, state, port, mark) = unsafe {
        (
            (*full).protocol,
            (*full).state,
            (*full).src_port,
            (*full).mark,
        )
    };
    (protocol == IPPROTO_TCP && state == BPF_TCP_LISTEN).then_some(Listener {
        port: (port as u16).to_be(),
        mark,
    })
}

fn ipv4_source_allowed(ctx: &SkBuffContext, cfg: &RedirectConfig) -> bool {
    let Ok(src) = ctx.load::<u32>(IPV4_SRC) else {
        return false;
    };
    src != 0 && src == cfg.probe_ip4
}

/// Whether an IPv4 handshake packet belongs to a same-node direct connection (`direct`): its
/// tuple, read from the IP and TCP headers, is one `sock_ops` authorised. Unreadable: no.
fn ipv4_direct(ctx: &SkBuffContext) -> bool {
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 || header > 60 {
        return false;
    }
    let (Ok(src), Ok(dst), Ok(ports)) = (
        ctx.load::<u32>(IPV4_SRC),
        ctx.load::<u32>(IPV4_SRC + 4),
        ctx.load::<[u16; 2]>(header),
    ) else {
        return false;
    };
    crate::direct::is_direct(&v4_key(src, ports[0], dst, ports[1]))
}

/// As [`ipv4_direct`] for IPv6, when TCP follows the fixed header directly (a packet with
/// extension headers is not read: it is not let in on this ground).
fn ipv6_direct(ctx: &SkBuffContext) -> bool {
    let (Ok(next), Ok(src), Ok(dst), Ok(ports)) = (
        ctx.load::<u8>(IPV6_NEXT),
        ctx.load::<[u32; 4]>(IPV6_SRC),
        ctx.load::<[u32; 4]>(IPV6_SRC + 16),
        ctx.load::<[u16; 2]>(IPV6_HEADER),
    ) else {
        return false;
    };
    u32::from(next) == IPPROTO_TCP
        && crate::direct::is_direct(&v6_key(src, ports[0], dst, ports[1]))
}

fn ipv6_source_allowed(ctx: &SkBuffContext, cfg: &RedirectConfig) -> bool {
    let Ok(src) = ctx.load::<[u32; 4]>(IPV6_SRC) else {
        return false;
    };
    src != [0; 4] && src == cfg.probe_ip6
}
