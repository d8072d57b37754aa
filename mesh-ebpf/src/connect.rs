//! `cgroup/connect4|6`: rewrite enrolled pods' TCP connects to the tunnel's outbound listener.
//!
//! A connect is redirected only when all hold: the socket is TCP, its network namespace cookie is
//! in `ENROLLED`, it does not carry the tunnel's `SO_MARK`, and the destination is not loopback,
//! the tunnel listener itself, an excluded port or an excluded CIDR. The original destination is
//! stored by socket cookie before the rewrite; if that store fails the connect is still redirected
//! so the tunnel rejects it (no original destination) rather than letting it bypass policy.
//! A connect to a same-node destination mesh-node admitted for this pod is left alone instead
//! (see `direct`).

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use mesh_ebpf_common::{config_flags, counter, family, OrigDst, RedirectConfig};

use crate::{
    maps::{bump, config, enroll_mode, EXCLUDED_PORTS, EXCLUDED_V4, EXCLUDED_V6, ORIG_BY_COOKIE},
    orig::is_v4_mapped,
};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// Let the syscall proceed (a `cgroup/connect*` verdict).
const ALLOW: i32 = 1;

/// Sees every IPv4 connect in the attached cgroup.
#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: ctx fields are read and written through the kernel-provided context pointer.
    unsafe { try_connect4(&ctx) };
    ALLOW
}

/// Sees every IPv6 connect in the attached cgroup (including IPv4-mapped destinations).
#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { try_connect6(&ctx) };
    ALLOW
}

/// Common checks; returns the config when this socket's connect should be considered.
unsafe fn eligible(ctx: &SockAddrContext) -> Option<&'static RedirectConfig> {
    let sa = ctx.sock_addr;
    // SAFETY: kernel context pointer, valid for the program's run.
    let (ty, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    if ty != SOCK_STREAM || (proto != IPPROTO_TCP && proto != 0) {
        return None;
    }
    bump(counter::CONNECT_SEEN);
    let cfg = config()?;
    // SAFETY: helper valid for cgroup sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    enroll_mode(netns)?;
    // SAFETY: `sk` is always a full socket in cgroup sock_addr programs.
    let mark = unsafe { (*(*sa).__bindgen_anon_1.sk).mark };
    if mark != 0 && (mark == cfg.tunnel_mark || mark == cfg.reply_mark) {
        bump(counter::CONNECT_EXCLUDED);
        return None;
    }
    Some(cfg)
}

unsafe fn try_connect4(ctx: &SockAddrContext) {
    // SAFETY: see callers.
    let Some(cfg) = (unsafe { eligible(ctx) }) else {
        return;
    };
    if cfg.flags & config_flags::IPV4 == 0 {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: kernel context pointer.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    if excluded_v4(cfg, ip, port) {
        bump(counter::CONNECT_EXCLUDED);
        return;
    }
    let orig = OrigDst {
        ip: [ip, 0, 0, 0],
        port,
        family: family::INET,
    };
    if crate::direct::connect_direct(ctx, orig.ip, port, orig.family) {
        return;
    }
    remember(ctx, &orig);
    // SAFETY: user_ip4/user_port are writable in connect4; volatile keeps the stores 4 bytes wide.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), cfg.tunnel_ip4);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(cfg.tunnel_port));
    }
    bump(counter::CONNECT_REDIRECTED);
    debug!(ctx, "redirected connect4 to port {}", u16::from_be(port));
}

unsafe fn try_connect6(ctx: &SockAddrContext) {
    // SAFETY: see callers.
    let Some(cfg) = (unsafe { eligible(ctx) }) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: kernel context pointer; user_ip6 read word by word (4-byte ctx loads).
    let (ip, port) = unsafe {
        let w = addr_of_mut!((*sa).user_ip6) as *const u32;
        (
            [*w, *w.add(1), *w.add(2), *w.add(3)],
            (*sa).user_port as u16,
        )
    };
    let (orig, target) = if is_v4_mapped(&ip) {
        if cfg.flags & config_flags::IPV4 == 0 || excluded_v4(cfg, ip[3], port) {
            return count_excluded(cfg.flags & config_flags::IPV4 != 0);
        }
        let orig = OrigDst {
            ip: [ip[3], 0, 0, 0],
            port,
            family: family::INET,
        };
        (orig, [0, 0, ip[2], cfg.tunnel_ip4])
    } else {
        if cfg.flags & config_flags::IPV6 == 0 || excluded_v6(cfg, &ip, port) {
            return count_excluded(cfg.flags & config_flags::IPV6 != 0);
        }
        (
            OrigDst {
                ip,
                port,
                family: family::INET6,
            },
            cfg.tunnel_ip6,
        )
    };
    if crate::direct::connect_direct(ctx, orig.ip, port, orig.family) {
        return;
    }
    remember(ctx, &orig);
    // SAFETY: user_ip6/user_port are writable in connect6, as 4-byte volatile stores.
    unsafe {
        let w = addr_of_mut!((*sa).user_ip6) as *mut u32;
        write_volatile(w, target[0]);
        write_volatile(w.add(1), target[1]);
        write_volatile(w.add(2), target[2]);
        write_volatile(w.add(3), target[3]);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(cfg.tunnel_port));
    }
    bump(counter::CONNECT_REDIRECTED);
    debug!(ctx, "redirected connect6 to port {}", u16::from_be(port));
}

#[inline(always)]
fn count_excluded(configured: bool) {
    if configured {
        bump(counter::CONNECT_EXCLUDED);
    }
}

/// Stores the original destination by socket cookie.
#[inline(always)]
fn remember(ctx: &SockAddrContext, orig: &OrigDst) {
    // SAFETY: helper valid for cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(&cookie, orig, 0).is_err() {
        bump(counter::ORIG_STORE_FAILED);
        warn!(
            ctx,
            "original destination not stored for socket cookie {}", cookie
        );
    }
}

#[inline(always)]
fn excluded_v4(cfg: &RedirectConfig, ip: u32, port: u16) -> bool {
    let first_octet = ip.to_ne_bytes()[0];
    first_octet == 127
        || (ip == cfg.tunnel_ip4 && port == cfg.tunnel_port)
        || excluded_port(port)
        || EXCLUDED_V4.get(&Key::new(32, ip.to_ne_bytes())).is_some()
}

#[inline(always)]
fn excluded_v6(cfg: &RedirectConfig, ip: &[u32; 4], port: u16) -> bool {
    let loopback = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == u32::from_be(1);
    loopback
        || (*ip == cfg.tunnel_ip6 && port == cfg.tunnel_port)
        || excluded_port(port)
        || EXCLUDED_V6
            .get(&Key::new(128, words_to_bytes(ip)))
            .is_some()
}

#[inline(always)]
fn excluded_port(port: u16) -> bool {
    // SAFETY: the value is a plain u8 only tested for presence.
    unsafe { EXCLUDED_PORTS.get(&port) }.is_some()
}

#[inline(always)]
fn words_to_bytes(ip: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = ip[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
