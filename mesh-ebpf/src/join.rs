//! Same-node joining: an app's socket written straight into the tunnel's socket into the other
//! pod, so payload bytes of a same-node connection cross no userspace.
//!
//! mesh-node accepts the client app's connection (socket `A` in the client pod, `A_t` its own
//! end), checks identity and policy, and connects into the destination pod (`B_t`, its own end;
//! `B`, the app's accepted socket there). It then puts `A_t` and `B_t` in `SPLICE` and writes
//! `JOIN_CTL[A] = B_t` and `JOIN_CTL[B] = A_t`. From then on `sk_msg` sends `A`'s writes out of
//! `B_t` and `B`'s writes out of `A_t` (egress redirect: one TCP hop, as between two pods).
//!
//! Ordering: bytes an app wrote before its join took effect went to the tunnel by TCP and are
//! forwarded by mesh-node. `sk_msg` counts them (`JoinState::sent_before`, exact: it runs under
//! the socket's lock) and switches a socket only on a write that finds mesh-node's
//! `JoinCtl::forwarded` equal to that count, i.e. when everything written before has already
//! been queued on the peer socket by mesh-node. Each direction switches on its own.
//!
//! Joinable sockets: redirected client sockets (at ACTIVE_ESTABLISHED) and the app side of the
//! connections mesh-node named in `JOIN_PENDING` (at PASSIVE_ESTABLISHED): both join `SPLICE`
//! and get a `JOIN_STATE` entry before the app can write, so no write escapes the count.

use aya_ebpf::{
    bindings::{sk_action, BPF_NOEXIST, BPF_SOCK_OPS_STATE_CB_FLAG},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_ebpf_common::{capacity, config_flags, JoinCtl, JoinState, TupleKey};

use crate::maps::{config, SPLICE};

/// `BPF_F_NO_PREALLOC`: an update from mesh-node replaces the element whole (RCU), so a program
/// never reads a value half written.
const NO_PREALLOC: u32 = 1;

/// Joins set up by mesh-node, by the app socket's own tuple.
#[map(name = "JOIN_CTL")]
static JOIN_CTL: HashMap<TupleKey, JoinCtl> =
    HashMap::with_max_entries(capacity::CONNECTIONS, NO_PREALLOC);

/// Progress of each joinable app socket.
#[map(name = "JOIN_STATE")]
static JOIN_STATE: LruHashMap<TupleKey, JoinState> =
    LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);

/// Tuples (as the destination app's socket sees them) of connections mesh-node is opening to join.
#[map(name = "JOIN_PENDING")]
static JOIN_PENDING: LruHashMap<TupleKey, u8> =
    LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);

fn enabled() -> bool {
    config().is_some_and(|cfg| cfg.flags & config_flags::JOIN != 0)
}

/// A redirected client socket (`key`: its own tuple) just got established.
pub fn on_active_established(ctx: &SockOpsContext, key: &TupleKey) {
    if enabled() {
        make_joinable(ctx, *key);
    }
}

/// A socket accepted in the cgroup: joinable when mesh-node is opening it to join.
pub fn on_passive_established(ctx: &SockOpsContext, own: &TupleKey) {
    // SAFETY: presence test only.
    if !enabled() || unsafe { JOIN_PENDING.get(own) }.is_none() {
        return;
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    make_joinable(ctx, *own);
}

/// A socket closes: its progress goes, unless mesh-node still has it joined (it reads the byte
/// count, then deletes both entries).
pub fn on_close(own: &TupleKey) {
    // SAFETY: presence test only.
    if unsafe { JOIN_CTL.get(own) }.is_none() {
        let _ = JOIN_STATE.remove(own);
    }
}

fn make_joinable(ctx: &SockOpsContext, mut key: TupleKey) {
    // The state first: a socket in `SPLICE` without it would be written through uncounted.
    if JOIN_STATE.insert(&key, &JoinState::default(), 0).is_err() {
        return;
    }
    // SAFETY: `ctx.ops` is the kernel's sock_ops context, valid for this call.
    let ops = unsafe { &mut *ctx.ops };
    // Already there when splicing put it in: same socket, nothing to do.
    let _ = SPLICE.update(&mut key, ops, u64::from(BPF_NOEXIST));
}

/// `sk_msg` of a socket in `SPLICE`: the verdict when the socket is joinable, `None` to let the
/// splice rules decide (its writes before the join).
#[inline(always)]
pub fn on_msg(ctx: &SkMsgContext, own: &TupleKey) -> Option<u32> {
    let state = JOIN_STATE.get_ptr_mut(own)?;
    // SAFETY: this socket's own entry; `sk_msg` runs under the socket's lock, so it is the
    // only writer, and LRU entries stay valid for the program's run (RCU).
    let state = unsafe { &mut *state };
    let size = u64::from(ctx.size());
    // SAFETY: plain value copied out immediately.
    let ctl = unsafe { JOIN_CTL.get(own) }.copied();
    if state.joined == 0 {
        match ctl {
            Some(ctl) if ctl.forwarded == state.sent_before => state.joined = 1,
            _ => {
                state.sent_before += size;
                return None;
            }
        }
    }
    // mesh-node ended the join (its sockets are closing): TCP, whose peer is gone too.
    let Some(ctl) = ctl else {
        return Some(sk_action::SK_PASS);
    };
    let mut peer = ctl.peer;
    if SPLICE.redirect_msg(ctx, &mut peer, 0) == i64::from(sk_action::SK_PASS) {
        state.joined_bytes += size;
    }
    Some(sk_action::SK_PASS)
}
