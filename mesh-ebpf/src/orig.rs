//! Original destination recovery for redirected connections.
//!
//! - `sock_ops` ACTIVE_ESTABLISHED: a redirected client socket (cookie in `ORIG_BY_COOKIE`) now
//!   has a 4-tuple; store tuple -> original destination and ask for state callbacks.
//! - `sock_ops` TCP_CONNECT: state callbacks for redirected sockets from the SYN on.
//! - `sock_ops` STATE_CB to TCP_CLOSE: forget both entries (also for connects that failed).
//! - Sockets that were not redirected: `sock_ops` hands them to `direct` (same-node direct
//!   connections).
//! - `cgroup/getsockopt`: answer `SO_ORIGINAL_DST` (SOL_IP and SOL_IPV6) on the tunnel's accepted
//!   socket from `ORIG_BY_TUPLE`; every other option is left exactly as the kernel answered.
//! - `cgroup/getpeername4|6`: the client sees the original peer, not the tunnel.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{
        bpf_sock, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, cgroup_sockopt, sock_ops},
    programs::{SockAddrContext, SockOpsContext, SockoptContext},
    EbpfContext,
};
use mesh_ebpf_common::{counter, family, OrigDst, TupleKey};

use crate::{
    maps::{bump, ORIG_BY_COOKIE, ORIG_BY_TUPLE},
    splice,
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the value 80.
const SO_ORIGINAL_DST: i32 = 80;
const TCP_CLOSE: u32 = 7;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

/// Connection lifecycle hooks for sockets in the attached cgroup.
#[sock_ops]
pub fn weft_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => splice::on_passive_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            splice::on_close(&ctx);
            if !on_close(&ctx) {
                crate::direct::on_close(&ctx);
            }
        }
        _ => {}
    }
    1
}

/// A redirected socket sends its SYN: ask for state callbacks now, so a connect that never
/// establishes (refused, timed out) is forgotten too, not only evicted by LRU.
fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: presence test only.
    if unsafe { ORIG_BY_COOKIE.get(&cookie) }.is_some() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    } else {
        crate::direct::on_connect(ctx);
    }
}

fn on_active_established(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain value copied out immediately.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return crate::direct::on_established(ctx);
    };
    let Some(key) = active_tuple(ctx) else { return };
    if ORIG_BY_TUPLE.insert(&key, &orig, 0).is_ok() {
        bump(counter::TUPLE_RECORDED);
    } else {
        bump(counter::ORIG_STORE_FAILED);
    }
    // Without the state callback the entries would only leave through LRU eviction.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    splice::add_client(ctx, &key);
    crate::join::on_active_established(ctx, &key);
}

/// Forgets a redirected socket; false when it was not one.
fn on_close(ctx: &SockOpsContext) -> bool {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.remove(&cookie).is_err() {
        return false;
    }
    if let Some(key) = active_tuple(ctx) {
        let _ = ORIG_BY_TUPLE.remove(&key);
    }
    bump(counter::TUPLE_REMOVED);
    true
}

/// The tuple of an actively opened socket, as the tunnel's accepted socket will see it.
pub fn active_tuple(ctx: &SockOpsContext) -> Option<TupleKey> {
    let ops = ctx.ops;
    // SAFETY: kernel context pointer; every field read as its own 4-byte load.
    unsafe {
        let local_port = (read_volatile(addr_of!((*ops).local_port)) as u16).to_be();
        let remote_port = (read_volatile(addr_of!((*ops).remote_port)) >> 16) as u16;
        match read_volatile(addr_of!((*ops).family)) {
            AF_INET => Some(v4_key(
                read_volatile(addr_of!((*ops).local_ip4)),
                local_port,
                read_volatile(addr_of!((*ops).remote_ip4)),
                remote_port,
            )),
            AF_INET6 => Some(v6_key(
                read_words(addr_of!((*ops).local_ip6) as *const u32),
                local_port,
                read_words(addr_of!((*ops).remote_ip6) as *const u32),
                remote_port,
            )),
            _ => None,
        }
    }
}

/// Reads four 32-bit context words one load at a time.
///
/// # Safety
/// `w` must point at four readable context words.
pub unsafe fn read_words(w: *const u32) -> [u32; 4] {
    // SAFETY: guaranteed by the caller.
    unsafe {
        [
            read_volatile(w),
            read_volatile(w.add(1)),
            read_volatile(w.add(2)),
            read_volatile(w.add(3)),
        ]
    }
}

/// IPv4 key; ports in network order.
pub fn v4_key(client: u32, client_port: u16, tunnel: u32, tunnel_port: u16) -> TupleKey {
    TupleKey {
        client_ip: [client, 0, 0, 0],
        tunnel_ip: [tunnel, 0, 0, 0],
        client_port,
        tunnel_port,
        family: family::INET,
        _pad: 0,
    }
}

/// IPv6 key; a pair of IPv4-mapped addresses becomes the IPv4 key.
pub fn v6_key(client: [u32; 4], client_port: u16, tunnel: [u32; 4], tunnel_port: u16) -> TupleKey {
    if is_v4_mapped(&client) && is_v4_mapped(&tunnel) {
        return v4_key(client[3], client_port, tunnel[3], tunnel_port);
    }
    TupleKey {
        client_ip: client,
        tunnel_ip: tunnel,
        client_port,
        tunnel_port,
        family: family::INET6,
        _pad: 0,
    }
}

/// `::ffff:a.b.c.d` (words in network order as stored by the kernel).
#[inline(always)]
pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == u32::from_be(0x0000_ffff)
}

/// Answers `SO_ORIGINAL_DST` on the tunnel's accepted sockets.
#[cgroup_sockopt(getsockopt)]
pub fn weft_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: context fields accessed through the kernel-provided pointer.
    unsafe { try_getsockopt(&ctx) };
    1
}

unsafe fn try_getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: kernel context pointer.
    let (level, optname, sk) = unsafe { ((*so).level, (*so).optname, (*so).__bindgen_anon_1.sk) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) || sk.is_null() {
        return;
    }
    // SAFETY: `sk` is a non-null full socket.
    let key = unsafe { accepted_tuple(sk, level == SOL_IPV6) };
    // SAFETY: plain value copied out immediately.
    let Some(orig) = (unsafe { ORIG_BY_TUPLE.get(&key) }).copied() else {
        bump(counter::ORIG_DST_MISSED);
        return;
    };
    // SAFETY: optval bounds are checked against optval_end inside.
    let written = unsafe {
        if level == SOL_IP {
            write_sockaddr_in(ctx, &orig)
        } else {
            write_sockaddr_in6(ctx, &orig)
        }
    };
    if let Some(len) = written {
        // SAFETY: separate 4-byte stores; LLVM merging them breaks the verifier (off=32 size=8).
        unsafe {
            write_volatile(addr_of_mut!((*so).optlen), len as i32);
            write_volatile(addr_of_mut!((*so).retval), 0);
        }
        bump(counter::ORIG_DST_ANSWERED);
    }
}

/// The tuple of the tunnel's accepted socket: peer = client, local = tunnel.
///
/// # Safety
/// `sk` must be a valid, non-null `bpf_sock` pointer.
unsafe fn accepted_tuple(sk: *mut bpf_sock, v6: bool) -> TupleKey {
    // SAFETY: guaranteed by the caller; narrow loads of bpf_sock fields are allowed.
    unsafe {
        let tunnel_port = (read_volatile(addr_of!((*sk).src_port)) as u16).to_be();
        let client_port = read_volatile(addr_of!((*sk).dst_port));
        if v6 {
            let client = read_words(addr_of!((*sk).dst_ip6) as *const u32);
            let tunnel = read_words(addr_of!((*sk).src_ip6) as *const u32);
            v6_key(client, client_port, tunnel, tunnel_port)
        } else {
            let client = read_volatile(addr_of!((*sk).dst_ip4));
            let tunnel = read_volatile(addr_of!((*sk).src_ip4));
            v4_key(client, client_port, tunnel, tunnel_port)
        }
    }
}

/// Writes a `sockaddr_in`; `None` if the option buffer is too small or the family differs.
unsafe fn write_sockaddr_in(ctx: &SockoptContext, orig: &OrigDst) -> Option<usize> {
    if orig.family != family::INET {
        return None;
    }
    let so = ctx.sockopt;
    // SAFETY: kernel context pointers; the bounds check makes the stores verifiably in range.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if start.add(SOCKADDR_IN_LEN) > end {
            return None;
        }
        write_volatile(start as *mut u16, family::INET);
        write_volatile(start.add(2) as *mut u16, orig.port);
        write_volatile(start.add(4) as *mut u32, orig.ip[0]);
        write_volatile(start.add(8) as *mut u32, 0);
        write_volatile(start.add(12) as *mut u32, 0);
    }
    Some(SOCKADDR_IN_LEN)
}

/// Writes a `sockaddr_in6` (IPv4 originals as `::ffff:a.b.c.d`).
unsafe fn write_sockaddr_in6(ctx: &SockoptContext, orig: &OrigDst) -> Option<usize> {
    let ip = if orig.family == family::INET {
        [0, 0, u32::from_be(0x0000_ffff), orig.ip[0]]
    } else {
        orig.ip
    };
    let so = ctx.sockopt;
    // SAFETY: as in `write_sockaddr_in`.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if start.add(SOCKADDR_IN6_LEN) > end {
            return None;
        }
        write_volatile(start as *mut u16, family::INET6);
        write_volatile(start.add(2) as *mut u16, orig.port);
        write_volatile(start.add(4) as *mut u32, 0);
        write_volatile(start.add(8) as *mut u32, ip[0]);
        write_volatile(start.add(12) as *mut u32, ip[1]);
        write_volatile(start.add(16) as *mut u32, ip[2]);
        write_volatile(start.add(20) as *mut u32, ip[3]);
        write_volatile(start.add(24) as *mut u32, 0);
    }
    Some(SOCKADDR_IN6_LEN)
}

/// The client of a redirected IPv4 connection sees the original peer.
#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = lookup_cookie(&ctx).filter(|o| o.family == family::INET) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip4/user_port are writable in getpeername4.
        unsafe {
            write_volatile(addr_of_mut!((*sa).user_ip4), orig.ip[0]);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port));
        }
        bump(counter::PEERNAME_REWRITTEN);
    }
    1
}

/// The client of a redirected IPv6 (or IPv4-mapped) connection sees the original peer.
#[cgroup_sock_addr(getpeername6)]
pub fn weft_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(orig) = lookup_cookie(&ctx) {
        let ip = if orig.family == family::INET {
            [0, 0, u32::from_be(0x0000_ffff), orig.ip[0]]
        } else {
            orig.ip
        };
        let sa = ctx.sock_addr;
        // SAFETY: user_ip6/user_port are writable in getpeername6, as 4-byte stores.
        unsafe {
            let w = addr_of_mut!((*sa).user_ip6) as *mut u32;
            write_volatile(w, ip[0]);
            write_volatile(w.add(1), ip[1]);
            write_volatile(w.add(2), ip[2]);
            write_volatile(w.add(3), ip[3]);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port));
        }
        bump(counter::PEERNAME_REWRITTEN);
    }
    1
}

fn lookup_cookie(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: helper valid for cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain value copied out immediately.
    unsafe { ORIG_BY_COOKIE.get(&cookie) }.copied()
}
