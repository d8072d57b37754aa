//! The maps shared by all programs, and small helpers around them.
//!
//! Bounds: every hash map has a fixed `max_entries`; the original-destination maps are LRU so a
//! leak (a connection whose close callback never ran) cannot exhaust them, but the sock_ops close
//! callback removes entries first.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use mesh_ebpf_common::{
    capacity, counter, InboundKey, OrigDst, PortKey, ProbeKey, RedirectConfig, TupleKey,
};

/// Enrolled pods: tracked connections per node are bounded by this.
const MAX_CONNECTIONS: u32 = capacity::CONNECTIONS;

/// `CONFIG[0]`: where to redirect, written by the loader before attaching.
#[map(name = "CONFIG")]
pub static CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

/// Enrolled network namespaces: cookie -> `enroll_mode`, plus `enroll_flags`.
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, u32> = HashMap::with_max_entries(capacity::ENROLLED, 0);

/// Per-port inbound modes of enrolled pods: (cookie, listener port) -> `enroll_mode`.
#[map(name = "PORT_MTLS")]
pub static PORT_MTLS: HashMap<PortKey, u32> = HashMap::with_max_entries(capacity::PORT_MTLS, 0);

/// Destination ports (network order) never redirected.
#[map(name = "EXCLUDED_PORTS")]
pub static EXCLUDED_PORTS: HashMap<u16, u8> =
    HashMap::with_max_entries(capacity::EXCLUDED_PORTS, 0);

/// IPv4 destination CIDRs never redirected.
#[map(name = "EXCLUDED_V4")]
pub static EXCLUDED_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(capacity::EXCLUDED_CIDRS, 0);

/// IPv6 destination CIDRs never redirected.
#[map(name = "EXCLUDED_V6")]
pub static EXCLUDED_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(capacity::EXCLUDED_CIDRS, 0);

/// Original destination of redirected sockets, by socket cookie.
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Original destination by the 4-tuple the tunnel's accepted socket sees.
#[map(name = "ORIG_BY_TUPLE")]
pub static ORIG_BY_TUPLE: LruHashMap<TupleKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Same-node sockets eligible for splicing, keyed by their own tuple (see `splice`).
#[map(name = "SPLICE")]
pub static SPLICE: SockHash<TupleKey> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);

/// The tunnel's in-pod listeners by pod address and kind, for `sk_lookup` (see `inbound`).
#[map(name = "INBOUND")]
pub static INBOUND: SockHash<InboundKey> = SockHash::with_max_entries(capacity::INBOUND, 0);

/// Addresses of enrolled local pods, whose kubelet probes leave from the probe address.
#[map(name = "PROBED_PODS")]
pub static PROBED_PODS: HashMap<ProbeKey, u8> = HashMap::with_max_entries(capacity::PROBED_PODS, 0);

/// Per-CPU event counters, indexed by `mesh_ebpf_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds one to a counter. Per-CPU, because the BPF target has no atomic fetch_add.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The loader-written configuration, if present.
#[inline(always)]
pub fn config() -> Option<&'static RedirectConfig> {
    CONFIG.get(0)
}

/// The mode override of a pod's listener `port` (network order), if any.
#[inline(always)]
pub fn port_mode(netns_cookie: u64, port: u16) -> Option<u32> {
    let key = PortKey {
        netns_cookie,
        port,
        _pad: [0; 3],
    };
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { PORT_MTLS.get(&key) }.copied()
}

/// The `ENROLLED` value (mode and flags) of a network namespace, if enrolled.
#[inline(always)]
pub fn enroll_mode(netns_cookie: u64) -> Option<u32> {
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { ENROLLED.get(&netns_cookie) }.copied()
}
