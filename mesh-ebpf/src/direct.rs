//! Same-node direct connections: a pod's connect to a same-node destination that mesh-node has
//! already checked for it goes straight to the destination pod, with no tunnel on the way.
//!
//! mesh-node checks the first connection of a (client pod, destination) pair itself, as every
//! other same-node connection: the client's identity from the address the kernel gave its
//! socket, the destination's inbound policy, both workloads allowing plaintext on one node. When
//! it passes, mesh-node writes `ADMITTED[(client netns, destination)] = (client address,
//! epoch, expiry)`. Then, for that pair's next connects:
//!
//! 1. `cgroup/connect*` leaves the connect alone (no rewrite to the tunnel) when the admission
//!    holds: same epoch as `ADMIT_EPOCH` (mesh-node moves it on every mesh or policy change, so
//!    every admission is void the moment anything changes) and not expired (a bound for the time
//!    no mesh-node runs while pinned programs stay attached). It names the socket in
//!    `DIRECT_PENDING`.
//! 2. `sock_ops` TCP_CONNECT (the SYN is about to leave, the tuple is final): a pending socket
//!    whose admission still holds *and* whose own address is the admitted client address gets a
//!    `DIRECT` entry under its tuple. Nothing else writes `DIRECT`: mesh-node cannot, and a
//!    packet crafted in a pod has no socket here.
//! 3. In the destination pod, `sk_lookup` leaves a handshake whose tuple is in `DIRECT` to the
//!    normal lookup (the app's own listener), and strict inbound (`cgroup_skb`) lets it in. Any
//!    other plaintext attempt is steered to the tunnel or dropped, as before.
//! 4. `sock_ops` reports the connection to mesh-node through `DIRECT_EVENTS` when it is
//!    established and when it closes (with the kernel's byte counts), and forgets its entry.
//!    mesh-node records metrics and the access log, holds the connection under the same policy
//!    guards as a tunnelled one and destroys the client socket if a change revokes it.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_STATE_CB_FLAG,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::SockOpsContext,
    EbpfContext,
};
use mesh_ebpf_common::{
    capacity, config_flags, direct_counter, direct_event, Admission, AdmitKey, DirectConn,
    DirectEvent, TupleKey,
};

use crate::{maps::config, orig::active_tuple};

/// Pairs mesh-node admitted (see the module doc).
#[map(name = "ADMITTED")]
static ADMITTED: LruHashMap<AdmitKey, Admission> =
    LruHashMap::with_max_entries(capacity::ADMITTED, 0);

/// `ADMIT_EPOCH[0]`: the epoch admissions must carry.
#[map(name = "ADMIT_EPOCH")]
static ADMIT_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Live direct connections, by the client socket's own tuple.
#[map(name = "DIRECT")]
static DIRECT: LruHashMap<TupleKey, DirectConn> =
    LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);

/// Sockets whose connect was left alone for an admission, by socket cookie, until their SYN.
#[map(name = "DIRECT_PENDING")]
static DIRECT_PENDING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(capacity::CONNECTIONS, 0);

/// Opened and closed events for mesh-node.
#[map(name = "DIRECT_EVENTS")]
static DIRECT_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::DIRECT_EVENTS_BYTES, 0);

/// Counters of the direct path ([`direct_counter`]).
#[map(name = "DIRECT_COUNTERS")]
static DIRECT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(direct_counter::COUNT, 0);

fn bump(index: u32) {
    if let Some(slot) = DIRECT_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

fn enabled() -> bool {
    config().is_some_and(|cfg| cfg.flags & config_flags::DIRECT != 0)
}

/// The admission of (client netns, destination), when it holds now.
fn admission(netns_cookie: u64, ip: [u32; 4], port: u16, family: u16) -> Option<Admission> {
    let key = AdmitKey {
        netns_cookie,
        ip,
        port,
        family,
        _pad: 0,
    };
    // SAFETY: plain values copied out immediately.
    let admission = unsafe { ADMITTED.get(&key) }.copied()?;
    let epoch = ADMIT_EPOCH.get(0).copied()?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    (admission.epoch == epoch && now < admission.expires_ns).then_some(admission)
}

/// `cgroup/connect*` of an enrolled pod's socket to `ip`:`port` (`family`): whether to leave it
/// on its way (the pair is admitted). Names the socket for `sock_ops`.
pub fn connect_direct<C: EbpfContext>(ctx: &C, ip: [u32; 4], port: u16, family: u16) -> bool {
    if !enabled() {
        return false;
    }
    // SAFETY: helper valid for cgroup sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if admission(netns, ip, port, family).is_none() {
        return false;
    }
    // SAFETY: helper valid for cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Without the name the SYN would be unauthorised: redirect instead.
    if DIRECT_PENDING.insert(&cookie, &1, 0).is_err() {
        return false;
    }
    bump(direct_counter::CONNECT_DIRECT);
    true
}

/// `sock_ops` TCP_CONNECT of a socket that was not redirected: authorise its tuple when its
/// connect was left alone for an admission that still holds for its own address.
pub fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: helper valid for sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if DIRECT_PENDING.remove(&cookie).is_err() {
        return;
    }
    let Some(tuple) = active_tuple(ctx) else {
        return bump(direct_counter::CONNECT_UNAUTHORISED);
    };
    // SAFETY: helper valid for sock_ops programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let held = admission(netns, tuple.tunnel_ip, tuple.tunnel_port, tuple.family);
    if !matches!(held, Some(a) if a.client_ip == tuple.client_ip) {
        return bump(direct_counter::CONNECT_UNAUTHORISED);
    }
    let conn = DirectConn {
        netns_cookie: netns,
        // SAFETY: helper without arguments.
        started_ns: unsafe { bpf_ktime_get_ns() },
    };
    if DIRECT.insert(&tuple, &conn, 0).is_err() {
        return bump(direct_counter::CONNECT_UNAUTHORISED);
    }
    // The close callback reports the connection and removes the entry.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// `sock_ops` ACTIVE_ESTABLISHED of a socket that was not redirected.
pub fn on_established(ctx: &SockOpsContext) {
    if !enabled() {
        return;
    }
    let Some(tuple) = active_tuple(ctx) else {
        return;
    };
    // SAFETY: plain value copied out immediately.
    if let Some(conn) = unsafe { DIRECT.get(&tuple) }.copied() {
        report(direct_event::OPENED, &tuple, &conn, 0, 0);
    }
}

/// `sock_ops` STATE_CB to TCP_CLOSE: a direct connection is reported closed and forgotten.
pub fn on_close(ctx: &SockOpsContext) {
    let Some(tuple) = active_tuple(ctx) else {
        return;
    };
    // SAFETY: plain value copied out immediately.
    let Some(conn) = (unsafe { DIRECT.get(&tuple) }).copied() else {
        return;
    };
    // SAFETY: kernel context pointer; 8-byte context loads of the counters.
    let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    let (sent, received) = payload(ctx.arg(0), acked, received);
    report(direct_event::CLOSED, &tuple, &conn, sent, received);
    let _ = DIRECT.remove(&tuple);
}

/// TCP states (`include/net/tcp_states.h`).
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;
const TCP_FIN_WAIT2: u32 = 5;

/// The payload bytes of a closing socket from the kernel's counts, which also count the
/// sequence numbers of the SYN (acked) and of each FIN: the state it closes from says which
/// FINs were exchanged. Leaving `FIN_WAIT2` is taken as having received the peer's FIN (the
/// usual way; a FIN_WAIT2 timeout makes the received count one too low).
fn payload(old_state: u32, acked: u64, received: u64) -> (u64, u64) {
    let fin_in = matches!(
        old_state,
        TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_FIN_WAIT2
    );
    let fin_out = matches!(old_state, TCP_LAST_ACK | TCP_CLOSING | TCP_FIN_WAIT2);
    // The SYN counts once the connection was established (anything acked at all).
    let syn = u64::from(acked > 0);
    (
        acked.saturating_sub(syn + u64::from(fin_out)),
        received.saturating_sub(u64::from(fin_in)),
    )
}

fn report(kind: u32, tuple: &TupleKey, conn: &DirectConn, sent: u64, received: u64) {
    let event = DirectEvent {
        kind,
        _pad: 0,
        netns_cookie: conn.netns_cookie,
        tuple: *tuple,
        sent,
        received,
        // SAFETY: helper without arguments.
        elapsed_ns: unsafe { bpf_ktime_get_ns() }.saturating_sub(conn.started_ns),
    };
    if DIRECT_EVENTS.output::<DirectEvent>(&event, 0).is_err() {
        bump(direct_counter::EVENTS_LOST);
    }
}

/// Whether a handshake with this tuple (client = source, tunnel = destination) belongs to a
/// direct connection that `sock_ops` authorised.
#[inline(always)]
pub fn is_direct(tuple: &TupleKey) -> bool {
    // SAFETY: presence test only.
    enabled() && unsafe { DIRECT.get(tuple) }.is_some()
}
