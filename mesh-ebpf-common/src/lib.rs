//! The kernel/user ABI of Weft's eBPF programs.
//!
//! Every type here is `#[repr(C)]` with explicit-width fields and explicit padding, so the eBPF
//! programs (built for `bpfel-unknown-none`) and the userspace loader in `mesh-node` agree on the
//! layout byte for byte. No `bool`s: the kernel side compares integers. `aya::Pod` impls are behind
//! the `user` feature, so the eBPF build does not pull in aya.
//!
//! Byte orders: addresses are stored exactly as the kernel hands them to programs (network byte
//! order in a native `u32`, i.e. `u32::from_ne_bytes(octets)`), ports are `u16` in network byte
//! order (`port.to_be()`).
#![no_std]

/// Names of the maps in the eBPF object, shared so the loader cannot drift from the programs.
pub mod maps {
    /// `Array<RedirectConfig>` with one entry.
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<u64 netns cookie, u32>`: an [`crate::enroll_mode`] value, plus
    /// [`crate::enroll_flags::PORT_OVERRIDES`] when the pod has entries in `PORT_MTLS`.
    pub const ENROLLED: &str = "ENROLLED";
    /// `HashMap<PortKey, u32 enroll_mode>`: per-port inbound mode overrides (PeerAuthentication
    /// `portLevelMtls`) of enrolled pods, by netns cookie and listener port.
    pub const PORT_MTLS: &str = "PORT_MTLS";
    /// `HashMap<u16 network-order port, u8>`: destination ports never redirected.
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    /// `LpmTrie<[u8; 4], u8>`: IPv4 destination CIDRs never redirected.
    pub const EXCLUDED_V4: &str = "EXCLUDED_V4";
    /// `LpmTrie<[u8; 16], u8>`: IPv6 destination CIDRs never redirected.
    pub const EXCLUDED_V6: &str = "EXCLUDED_V6";
    /// `LruHashMap<u64 socket cookie, OrigDst>`: original destination of redirected sockets.
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// `LruHashMap<TupleKey, OrigDst>`: original destination by the tunnel-side 4-tuple.
    pub const ORIG_BY_TUPLE: &str = "ORIG_BY_TUPLE";
    /// `PerCpuArray<u64>` indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `SockHash<TupleKey>`: established same-node sockets, keyed by their own 4-tuple.
    pub const SPLICE: &str = "SPLICE";
    /// `HashMap<TupleKey, u32>`: splice state of each socket in `SPLICE`.
    pub const SPLICE_STATE: &str = "SPLICE_STATE";
    /// `HashMap<TupleKey, JoinCtl>` (no preallocation, so an update replaces the value whole):
    /// sockets mesh-node joined to a socket into the other pod, by the app socket's own tuple.
    /// Written by mesh-node only.
    pub const JOIN_CTL: &str = "JOIN_CTL";
    /// `LruHashMap<TupleKey, JoinState>`: progress of each joinable app socket. Written by the
    /// programs only (mesh-node reads it and deletes its entries when a join ends).
    pub const JOIN_STATE: &str = "JOIN_STATE";
    /// `LruHashMap<TupleKey, u8>`: the tuples (as the app's accepted socket sees them) of the
    /// connections mesh-node is opening into a pod to join: `sock_ops` makes those sockets
    /// joinable when they are established, before the app can write.
    pub const JOIN_PENDING: &str = "JOIN_PENDING";
    /// `SockHash<InboundKey>`: the tunnel's in-pod listeners (plaintext and HBONE) of each
    /// enrolled pod address, where `sk_lookup` steers every inbound TCP connection attempt.
    pub const INBOUND: &str = "INBOUND";
    /// `HashMap<ProbeKey, u8>`: addresses of enrolled local pods, whose kubelet probes are sent
    /// from the probe address (`cgroup/connect*` on the kubelet's cgroup).
    pub const PROBED_PODS: &str = "PROBED_PODS";
    /// `LruHashMap<AdmitKey, Admission>`: destinations a local pod may connect to straight,
    /// without the tunnel (same-node direct path), written by mesh-node after its own check.
    pub const ADMITTED: &str = "ADMITTED";
    /// `Array<u64>` with one entry: the admission epoch. An [`crate::Admission`] of another
    /// epoch is void; mesh-node moves it on every mesh or policy change.
    pub const ADMIT_EPOCH: &str = "ADMIT_EPOCH";
    /// `LruHashMap<TupleKey, DirectConn>`: live direct connections by the client socket's own
    /// tuple, written by `sock_ops` only. Strict inbound and `sk_lookup` let their handshake
    /// into the destination pod's own listener.
    pub const DIRECT: &str = "DIRECT";
    /// `RingBuf` of [`crate::DirectEvent`]s: direct connections opened and closed.
    pub const DIRECT_EVENTS: &str = "DIRECT_EVENTS";
    /// `PerCpuArray<u64>` indexed by [`crate::direct_counter`].
    pub const DIRECT_COUNTERS: &str = "DIRECT_COUNTERS";
}

/// Sizes (`max_entries`) of the maps, shared so the loader can check maps it adopts from bpffs.
pub mod capacity {
    /// `ENROLLED`: enrolled pods per node.
    pub const ENROLLED: u32 = 4_096;
    /// `PORT_MTLS`: port overrides per node, over all pods (4 per pod at full `ENROLLED`). When it
    /// is full the loader reports an error and enrolls the pod at its strictest mode, never a
    /// weaker one.
    pub const PORT_MTLS: u32 = 16_384;
    /// `EXCLUDED_PORTS`.
    pub const EXCLUDED_PORTS: u32 = 256;
    /// `EXCLUDED_V4` and `EXCLUDED_V6`, each.
    pub const EXCLUDED_CIDRS: u32 = 1_024;
    /// `ORIG_BY_COOKIE`, `ORIG_BY_TUPLE`, `SPLICE` and `SPLICE_STATE`: tracked connections.
    pub const CONNECTIONS: u32 = 65_536;
    /// `INBOUND`: two listeners (plaintext, HBONE) for each of two addresses (IPv4, IPv6) of
    /// every enrolled pod.
    pub const INBOUND: u32 = 4 * ENROLLED;
    /// `PROBED_PODS`: two addresses (IPv4, IPv6) of every enrolled pod.
    pub const PROBED_PODS: u32 = 2 * ENROLLED;
    /// `ADMITTED`: (client pod, destination) pairs admitted at once.
    pub const ADMITTED: u32 = 16_384;
    /// `DIRECT_EVENTS`, in bytes (a power of two): about 8,000 events waiting for mesh-node.
    pub const DIRECT_EVENTS_BYTES: u32 = 1 << 20;
}

/// Indexes of `DIRECT_COUNTERS` (kept out of `COUNTERS`, whose pinned size is fixed).
pub mod direct_counter {
    /// `cgroup/connect*`: connects left on their way to an admitted same-node destination.
    pub const CONNECT_DIRECT: u32 = 0;
    /// `sock_ops`: such connects whose SYN found the admission gone or the source address not
    /// the admitted one: not authorised, so the destination refuses them.
    pub const CONNECT_UNAUTHORISED: u32 = 1;
    /// Events lost because `DIRECT_EVENTS` was full.
    pub const EVENTS_LOST: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// [`DirectEvent::kind`] values.
pub mod direct_event {
    /// The client socket is established.
    pub const OPENED: u32 = 1;
    /// The client socket closed (after [`OPENED`], or a connect that failed).
    pub const CLOSED: u32 = 2;
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "weft_connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "weft_connect6";
    /// `sock_ops`.
    pub const SOCK_OPS: &str = "weft_sock_ops";
    /// `cgroup/getsockopt`.
    pub const GETSOCKOPT: &str = "weft_getsockopt";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "weft_getpeername4";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "weft_getpeername6";
    /// `cgroup_skb/ingress`.
    pub const INGRESS: &str = "weft_ingress";
    /// `sk_msg` attached to the `SPLICE` map.
    pub const SPLICE_MSG: &str = "weft_splice_msg";
    /// `sk_lookup`, attached to each enrolled pod's network namespace.
    pub const SK_LOOKUP: &str = "weft_sk_lookup";
    /// `cgroup/connect4` on the kubelet's cgroup: probes to enrolled pods leave from the probe
    /// address.
    pub const PROBE_CONNECT4: &str = "weft_probe_connect4";
    /// `cgroup/connect6` on the kubelet's cgroup.
    pub const PROBE_CONNECT6: &str = "weft_probe_connect6";
    /// `cgroup/bind4` on the pods' cgroup: no pod (hostNetwork pods included) binds the probe
    /// address.
    pub const GUARD_BIND4: &str = "weft_guard_bind4";
    /// `cgroup/bind6` on the pods' cgroup.
    pub const GUARD_BIND6: &str = "weft_guard_bind6";
}

/// Indexes of the per-CPU program counters (the `COUNTERS` map), exposed as metrics by mesh-node.
pub mod counter {
    /// `cgroup/connect4|6`: TCP connects seen from any netns.
    pub const CONNECT_SEEN: u32 = 0;
    /// Connects rewritten to the tunnel's outbound listener.
    pub const CONNECT_REDIRECTED: u32 = 1;
    /// Connects from enrolled netns left alone (loopback, tunnel mark, excluded port or CIDR).
    pub const CONNECT_EXCLUDED: u32 = 2;
    /// Redirected connects whose original destination could not be stored (map full).
    pub const ORIG_STORE_FAILED: u32 = 3;
    /// `sock_ops`: redirected connections whose 4-tuple was recorded.
    pub const TUPLE_RECORDED: u32 = 4;
    /// `sock_ops`: redirected sockets closed (established or not) and forgotten.
    pub const TUPLE_REMOVED: u32 = 5;
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` answered.
    pub const ORIG_DST_ANSWERED: u32 = 6;
    /// `cgroup/getsockopt`: `SO_ORIGINAL_DST` asked for an unknown connection.
    pub const ORIG_DST_MISSED: u32 = 7;
    /// `cgroup/getpeername4|6`: peer address rewritten to the original destination.
    pub const PEERNAME_REWRITTEN: u32 = 8;
    /// `cgroup_skb/ingress`: packets dropped by strict inbound (strict pods and strict ports).
    pub const STRICT_DROPPED: u32 = 9;
    /// `sock_ops`: sockets added to the splice map.
    pub const SPLICE_ADDED: u32 = 10;
    /// `sk_msg`: messages spliced straight to the peer socket.
    pub const SPLICE_REDIRECTED: u32 = 11;
    /// `cgroup_skb/ingress`: connection attempts into strict pods or ports let through (the
    /// tunnel's marked HBONE and plaintext listeners, probe source, loopback).
    pub const STRICT_ALLOWED: u32 = 12;
    /// `sk_lookup`: inbound connection attempts steered to the tunnel's in-pod listener.
    pub const INBOUND_STEERED: u32 = 13;
    /// `sk_lookup`: inbound connection attempts refused because the pod's in-pod listener is
    /// not there (the tunnel is starting, restarting or failed to open it): fail closed.
    pub const INBOUND_NO_LISTENER: u32 = 14;
    /// `cgroup/connect*` on the kubelet's cgroup: probes bound to the probe address.
    pub const PROBE_BOUND: u32 = 15;
    /// `cgroup/bind*` on the pods' cgroup: binds of the probe address refused.
    pub const PROBE_BIND_REFUSED: u32 = 16;
    /// Number of counters; the size of the `COUNTERS` map.
    pub const COUNT: u32 = 17;
}

/// `EnrollMode` values stored in the `ENROLLED` map.
pub mod enroll_mode {
    /// Outbound TCP is redirected to the tunnel; inbound is not filtered.
    pub const CAPTURE: u32 = 1;
    /// As [`CAPTURE`], and inbound plaintext TCP that did not come through the tunnel is dropped.
    pub const STRICT: u32 = 2;
}

/// Bits of an `ENROLLED` value above the [`enroll_mode`].
pub mod enroll_flags {
    /// The bits holding the [`crate::enroll_mode`] value.
    pub const MODE_MASK: u32 = 0xff;
    /// The pod has per-port overrides in `PORT_MTLS`: strict inbound looks its listener port up
    /// there. Pods without this bit never pay for the lookup.
    pub const PORT_OVERRIDES: u32 = 0x100;
}

/// What an [`InboundKey`] names: which in-pod listener of the pod address.
pub mod inbound_kind {
    /// The plaintext listener: every port but the HBONE port.
    pub const PLAINTEXT: u16 = 0;
    /// The HBONE listener (the HBONE port).
    pub const HBONE: u16 = 1;
}

/// `RedirectConfig::flags` bits.
pub mod config_flags {
    /// `tunnel_ip4` is set: redirect IPv4 connects.
    pub const IPV4: u16 = 1;
    /// `tunnel_ip6` is set: redirect IPv6 connects.
    pub const IPV6: u16 = 2;
    /// Same-node splicing is on: `sock_ops` adds redirected pairs to the `SPLICE` SOCKHASH.
    pub const SPLICE: u16 = 4;
    /// Same-node joining is on: `sock_ops` makes redirected client sockets (and the sockets
    /// named in `JOIN_PENDING`) joinable, see [`crate::JoinCtl`].
    pub const JOIN: u16 = 8;
    /// Same-node direct connections are on: connects to a destination in `ADMITTED` are left
    /// alone, see [`crate::Admission`].
    pub const DIRECT: u16 = 16;
}

/// Address family constants as the kernel reports them.
pub mod family {
    /// `AF_INET`.
    pub const INET: u16 = 2;
    /// `AF_INET6`.
    pub const INET6: u16 = 10;
}

/// Where redirected connects go and which traffic belongs to the tunnel itself (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Tunnel outbound listener IPv4 address, network byte order.
    pub tunnel_ip4: u32,
    /// Tunnel outbound listener IPv6 address, network byte order words.
    pub tunnel_ip6: [u32; 4],
    /// Tunnel outbound listener port, network byte order.
    pub tunnel_port: u16,
    /// [`config_flags`] bits.
    pub flags: u16,
    /// `SO_MARK` carried by the tunnel's own sockets: never redirected, and the only listening
    /// sockets that get the strict HBONE-port exception. 0 disables both.
    pub tunnel_mark: u32,
    /// Source address of kubelet probes (IPv4, network order, 169.254.7.127 by default): the
    /// kubelet's connects to enrolled pods are bound to it, no pod may bind it, and it is the
    /// only source let through to a strict pod's own listeners. 0: none.
    pub probe_ip4: u32,
    /// `SO_MARK` of the sockets the tunnel opens inside a pod to reach the app from the client's
    /// address (the mark the pod's return-path rule matches): never redirected either. 0: none.
    /// (Was the node address strict pods admitted: same offset, so the layout is unchanged.)
    pub reply_mark: u32,
    /// HBONE port (network order): connection attempts to a listener on it that carries
    /// `tunnel_mark` (the tunnel's in-pod listener) are allowed into strict pods from anywhere,
    /// because HBONE is mTLS that the tunnel authenticates and authorises. 0: none.
    pub hbone_port: u16,
    /// Port of the tunnel's in-pod plaintext listener (network order), where `sk_lookup` steers
    /// every other port: a listener on it carrying `tunnel_mark` is admitted like the HBONE
    /// one, because the tunnel itself enforces each original port's mode there. 0: none. (Was
    /// padding: the layout is unchanged.)
    pub plaintext_port: u16,
    /// Unused (was the node's IPv6 address); kept for the layout.
    pub _reserved_ip6: [u32; 4],
    /// Kubelet probe source address (IPv6, network order words). All zero: none.
    pub probe_ip6: [u32; 4],
}

/// The destination a socket asked for before it was redirected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Address, network byte order; IPv4 uses `ip[0]` only.
    pub ip: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// [`family`] value.
    pub family: u16,
}

/// A TCP connection seen from the tunnel's accepted socket: client (peer) and tunnel (local).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// Client address, network byte order; IPv4 uses `[0]` only, the rest is zero.
    pub client_ip: [u32; 4],
    /// Tunnel (listener) address, same encoding.
    pub tunnel_ip: [u32; 4],
    /// Client port, network byte order.
    pub client_port: u16,
    /// Tunnel port, network byte order.
    pub tunnel_port: u16,
    /// [`family`] value.
    pub family: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// How mesh-node joins an app socket to a socket of its own in the `SPLICE` map (same-node
/// path): once every byte the app wrote before the join has been forwarded by mesh-node
/// (`forwarded` equals `JoinState::sent_before`), the app's later writes are redirected by
/// `sk_msg` to the egress of `peer`, in order, without crossing userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinCtl {
    /// `SPLICE` key (own tuple) of the tunnel's socket whose egress carries the app's writes.
    pub peer: TupleKey,
    /// Bytes of this app socket mesh-node has read and written on to `peer`'s connection.
    pub forwarded: u64,
}

/// Kernel-side progress of a joinable app socket ([`JoinCtl`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinState {
    /// Bytes the app wrote through TCP (to the tunnel) before the join took effect.
    pub sent_before: u64,
    /// Bytes redirected to the peer since the join took effect.
    pub joined_bytes: u64,
    /// 1 once the join took effect (never goes back to 0).
    pub joined: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// An `INBOUND` key: one in-pod listener of one pod address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundKey {
    /// The pod address, network byte order; IPv4 uses `ip[0]` only, the rest is zero.
    pub ip: [u32; 4],
    /// [`family`] value.
    pub family: u16,
    /// [`inbound_kind`] value.
    pub kind: u16,
}

/// A `PROBED_PODS` key: a pod address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeKey {
    /// The pod address, network byte order; IPv4 uses `ip[0]` only, the rest is zero.
    pub ip: [u32; 4],
    /// [`family`] value.
    pub family: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// A `PORT_MTLS` key: a pod's listener port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// Network namespace cookie of the pod (as in `ENROLLED`).
    pub netns_cookie: u64,
    /// The listening socket's local port (the workload's container port), network byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: [u16; 3],
}

impl PortKey {
    /// The key of `port` (host byte order) in the pod with `netns_cookie`.
    pub const fn new(netns_cookie: u64, port: u16) -> Self {
        Self {
            netns_cookie,
            port: port.to_be(),
            _pad: [0; 3],
        }
    }
}

/// A client pod (by network namespace) and a destination it dialled, for `ADMITTED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AdmitKey {
    /// The client pod's network namespace cookie.
    pub netns_cookie: u64,
    /// Destination address, network byte order; IPv4 uses `[0]` only.
    pub ip: [u32; 4],
    /// Destination port, network byte order.
    pub port: u16,
    /// [`family`] value.
    pub family: u16,
    /// Explicit padding.
    pub _pad: u32,
}

/// mesh-node checked the destination's policy for this client pod and found the pair fit for
/// the same-node direct path: the client's connects there skip the tunnel while the admission
/// holds (same epoch, not expired) and the socket's address is `client_ip`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The client address the check was made for, same encoding as the key's.
    pub client_ip: [u32; 4],
    /// The `ADMIT_EPOCH` value it was made in.
    pub epoch: u64,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) after which it is void.
    pub expires_ns: u64,
}

/// A live direct connection (`DIRECT`): whose it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectConn {
    /// The client pod's network namespace cookie.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns` when its SYN left.
    pub started_ns: u64,
}

/// One event of a direct connection, from `sock_ops` to mesh-node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectEvent {
    /// [`direct_event`] value.
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The client pod's network namespace cookie.
    pub netns_cookie: u64,
    /// The client socket's own tuple (client = local, tunnel = the destination).
    pub tuple: TupleKey,
    /// Bytes the client sent that the destination acknowledged (at close).
    pub sent: u64,
    /// Bytes the client received (at close).
    pub received: u64,
    /// Nanoseconds from the SYN to this event.
    pub elapsed_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are `#[repr(C)]`, made only of integers, with explicit padding fields, so
    // every byte pattern is a valid value and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::RedirectConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InboundKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::JoinCtl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::JoinState {}
    // SAFETY: as above (explicit padding).
    unsafe impl aya::Pod for super::AdmitKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Admission {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectConn {}
    // SAFETY: as above (explicit padding).
    unsafe impl aya::Pod for super::DirectEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<RedirectConfig>(),
            4 + 16 + 2 + 2 + 4 + 4 + 4 + 2 + 2 + 16 + 16
        );
        assert_eq!(size_of::<OrigDst>(), 16 + 2 + 2);
        assert_eq!(size_of::<TupleKey>(), 16 + 16 + 2 + 2 + 2 + 2);
        assert_eq!(size_of::<JoinCtl>(), size_of::<TupleKey>() + 8);
        assert_eq!(size_of::<JoinState>(), 8 + 8 + 4 + 4);
        assert_eq!(size_of::<PortKey>(), 8 + 2 + 6);
        assert_eq!(size_of::<InboundKey>(), 16 + 2 + 2);
        assert_eq!(size_of::<ProbeKey>(), 16 + 2 + 2);
        assert_eq!(size_of::<AdmitKey>(), 8 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<Admission>(), 16 + 8 + 8);
        assert_eq!(size_of::<DirectConn>(), 8 + 8);
        assert_eq!(
            size_of::<DirectEvent>(),
            4 + 4 + 8 + size_of::<TupleKey>() + 8 + 8 + 8
        );
    }

    #[test]
    fn port_keys_hold_the_port_in_network_order_and_flags_miss_the_modes() {
        let key = PortKey::new(7, 9090);
        assert_eq!(key.port.to_ne_bytes(), 9090u16.to_be_bytes());
        assert_eq!(key._pad, [0; 3]);
        for mode in [enroll_mode::CAPTURE, enroll_mode::STRICT] {
            assert_eq!(mode & enroll_flags::MODE_MASK, mode);
            assert_eq!(mode & enroll_flags::PORT_OVERRIDES, 0);
        }
    }

    #[test]
    fn counter_indexes_are_dense_and_below_count() {
        let all = [
            counter::CONNECT_SEEN,
            counter::CONNECT_REDIRECTED,
            counter::CONNECT_EXCLUDED,
            counter::ORIG_STORE_FAILED,
            counter::TUPLE_RECORDED,
            counter::TUPLE_REMOVED,
            counter::ORIG_DST_ANSWERED,
            counter::ORIG_DST_MISSED,
            counter::PEERNAME_REWRITTEN,
            counter::STRICT_DROPPED,
            counter::SPLICE_ADDED,
            counter::SPLICE_REDIRECTED,
            counter::STRICT_ALLOWED,
            counter::INBOUND_STEERED,
            counter::INBOUND_NO_LISTENER,
            counter::PROBE_BOUND,
            counter::PROBE_BIND_REFUSED,
        ];
        for (expected, index) in all.iter().enumerate() {
            assert_eq!(*index as usize, expected);
        }
        assert_eq!(all.len(), counter::COUNT as usize);
    }
}
