//! `cgroup_skb/ingress`: strict inbound for enrolled pods in `STRICT` mode.
//!
//! Only connection attempts are judged (TCP SYN without ACK): a SYN into a strict pod passes when
//! it arrives on loopback, or from the tunnel's node address, or from the kubelet probe address;
//! every other SYN is dropped, so plaintext that bypassed the tunnel never gets a connection.
//! Packets of established connections and non-TCP traffic pass. IPv6 has no allowed node source
//! in the config yet, so IPv6 SYNs into strict pods are dropped unless they arrive on loopback
//! (fail closed).

use aya_ebpf::{
    helpers::bpf_get_netns_cookie, macros::cgroup_skb, programs::SkBuffContext, EbpfContext,
};
use mesh_ebpf_common::{counter, enroll_mode, RedirectConfig};

use crate::maps::{bump, config, enroll_mode as mode_of};

const PASS: i32 = 1;
const DROP: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const LOOPBACK_IFINDEX: u32 = 1;
const IPV6_HEADER_LEN: usize = 40;

/// Judges packets delivered to sockets in the attached cgroup.
#[cgroup_skb(ingress)]
pub fn weft_ingress(ctx: SkBuffContext) -> i32 {
    match allowed(&ctx) {
        Some(false) => {
            bump(counter::STRICT_DROPPED);
            DROP
        }
        _ => PASS,
    }
}

/// `Some(false)` drops; `None` (not a strict pod, unparsable) and `Some(true)` pass.
fn allowed(ctx: &SkBuffContext) -> Option<bool> {
    let cfg = config()?;
    // SAFETY: helper valid for cgroup_skb programs on this kernel (checked at load).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if mode_of(netns)? != enroll_mode::STRICT {
        return None;
    }
    // SAFETY: kernel context pointer.
    let (protocol, ifindex) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).ingress_ifindex) };
    if ifindex == LOOPBACK_IFINDEX {
        return Some(true);
    }
    match u32::from_be(protocol) >> 16 {
        ETH_P_IP => ipv4_allowed(ctx, cfg),
        ETH_P_IPV6 => ipv6_allowed(ctx),
        _ => None,
    }
}

fn ipv4_allowed(ctx: &SkBuffContext, cfg: &RedirectConfig) -> Option<bool> {
    let version_ihl: u8 = ctx.load(0).ok()?;
    let proto: u8 = ctx.load(9).ok()?;
    if proto != IPPROTO_TCP {
        return None;
    }
    let src: u32 = ctx.load(12).ok()?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let flags: u8 = ctx.load(header_len + 13).ok()?;
    if !is_connect_attempt(flags) {
        return None;
    }
    let from_node = src == cfg.tunnel_src_ip4 && src != 0;
    let from_probe = src == cfg.probe_ip4 && src != 0;
    Some(from_node || from_probe)
}

fn ipv6_allowed(ctx: &SkBuffContext) -> Option<bool> {
    let next_header: u8 = ctx.load(6).ok()?;
    if next_header != IPPROTO_TCP {
        return None;
    }
    let flags: u8 = ctx.load(IPV6_HEADER_LEN + 13).ok()?;
    is_connect_attempt(flags).then_some(false)
}

#[inline(always)]
fn is_connect_attempt(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}
