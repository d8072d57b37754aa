//! Same-node acceleration: splice a redirected app socket and the tunnel's accepted socket.
//!
//! Both ends live on this node, so bytes written on one can be queued straight onto the other's
//! receive queue (`sk_msg` + `SPLICE` SOCKHASH, `BPF_F_INGRESS`) instead of crossing two TCP
//! stacks. Keys are `TupleKey`s read as (local, remote) of the socket that owns the entry; the peer
//! of a socket is found by swapping the halves.
//!
//! Ordering rule: a socket that ever sent a message through TCP (its peer was not in the map yet)
//! never splices later messages, so the peer cannot read them out of order.

use aya_ebpf::{
    bindings::{sk_action, BPF_F_INGRESS, BPF_SOCK_OPS_STATE_CB_FLAG},
    macros::{map, sk_msg},
    maps::HashMap,
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_ebpf_common::{capacity, config_flags, counter, TupleKey};

use crate::{
    maps::{bump, config, ORIG_BY_TUPLE, SPLICE},
    orig::{read_words, v4_key, v6_key},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Splice state per socket key: `READY` while in `SPLICE`, `FALLBACK` once a message took TCP.
#[map(name = "SPLICE_STATE")]
static SPLICE_STATE: HashMap<TupleKey, u32> = HashMap::with_max_entries(capacity::CONNECTIONS, 0);
const READY: u32 = 1;
const FALLBACK: u32 = 2;

/// The redirected client socket joins at ACTIVE_ESTABLISHED; `key` is its (local, remote).
pub fn add_client(ctx: &SockOpsContext, key: &TupleKey) {
    add(ctx, *key);
}

/// The tunnel's accepted socket joins when its peer is a redirected client; a socket mesh-node
/// opened into a pod to join becomes joinable (`join`).
pub fn on_passive_established(ctx: &SockOpsContext) {
    let Some(own) = own_key(ctx) else { return };
    crate::join::on_passive_established(ctx, &own);
    let client_view = swap(&own);
    // SAFETY: presence test only.
    if unsafe { ORIG_BY_TUPLE.get(&client_view) }.is_none() {
        return;
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    add(ctx, own);
}

/// Drops a closing socket's splice state (the SOCKHASH entry goes away by itself).
pub fn on_close(ctx: &SockOpsContext) {
    if let Some(own) = own_key(ctx) {
        let _ = SPLICE_STATE.remove(&own);
        crate::join::on_close(&own);
    }
}

fn add(ctx: &SockOpsContext, mut key: TupleKey) {
    // A socket in a SOCKHASH gets the sockmap TCP hooks; keep them off unless splicing is wanted.
    if config().is_none_or(|cfg| cfg.flags & config_flags::SPLICE == 0) {
        return;
    }
    // SAFETY: `ctx.ops` is the kernel's sock_ops context, valid for this call.
    let ops = unsafe { &mut *ctx.ops };
    if SPLICE.update(&mut key, ops, 0).is_ok() && SPLICE_STATE.insert(&key, &READY, 0).is_ok() {
        bump(counter::SPLICE_ADDED);
    }
}

/// (local, remote) of a sock_ops socket.
fn own_key(ctx: &SockOpsContext) -> Option<TupleKey> {
    crate::orig::active_tuple(ctx)
}

fn swap(key: &TupleKey) -> TupleKey {
    TupleKey {
        client_ip: key.tunnel_ip,
        tunnel_ip: key.client_ip,
        client_port: key.tunnel_port,
        tunnel_port: key.client_port,
        family: key.family,
        _pad: 0,
    }
}

/// Runs on every `sendmsg` of a socket in `SPLICE`.
#[sk_msg]
pub fn weft_splice_msg(ctx: SkMsgContext) -> u32 {
    let Some(own) = msg_key(&ctx) else {
        return sk_action::SK_PASS;
    };
    if let Some(verdict) = crate::join::on_msg(&ctx, &own) {
        return verdict;
    }
    // SAFETY: plain value copied out immediately.
    if unsafe { SPLICE_STATE.get(&own) }.copied() != Some(READY) {
        return sk_action::SK_PASS;
    }
    let mut peer = swap(&own);
    // SAFETY: as above.
    if unsafe { SPLICE_STATE.get(&peer) }.copied() != Some(READY) {
        let _ = SPLICE_STATE.insert(&own, &FALLBACK, 0);
        return sk_action::SK_PASS;
    }
    if SPLICE.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS))
        == i64::from(sk_action::SK_PASS)
    {
        bump(counter::SPLICE_REDIRECTED);
    } else {
        // The peer left the map (it is closing): send through TCP from now on, in order.
        let _ = SPLICE_STATE.insert(&own, &FALLBACK, 0);
    }
    sk_action::SK_PASS
}

/// (local, remote) of the sending socket.
fn msg_key(ctx: &SkMsgContext) -> Option<TupleKey> {
    let m = ctx.msg;
    // SAFETY: kernel context pointer; 4-byte loads of each field.
    unsafe {
        use core::ptr::{addr_of, read_volatile};
        let local_port = (read_volatile(addr_of!((*m).local_port)) as u16).to_be();
        let remote_port = (read_volatile(addr_of!((*m).remote_port)) >> 16) as u16;
        match read_volatile(addr_of!((*m).family)) {
            AF_INET => Some(v4_key(
                read_volatile(addr_of!((*m).local_ip4)),
                local_port,
                read_volatile(addr_of!((*m).remote_ip4)),
                remote_port,
            )),
            AF_INET6 => Some(v6_key(
                read_words(addr_of!((*m).local_ip6) as *const u32),
                local_port,
                read_words(addr_of!((*m).remote_ip6) as *const u32),
                remote_port,
            )),
            _ => None,
        }
    }
}
