//! Typed view of the programs' per-CPU counters (`COUNTERS` map), summed over CPUs.
//!
//! For metrics, [`Counters::samples`] lists every counter as (program, event, value) in a fixed
//! order. The labels are a stable interface: new counters are appended, existing ones are never
//! renamed. Export them as one Prometheus counter family (`weft_ebpf_events_total{program,
//! event}`). With pinning, counters survive loader restarts: they count since the programs were
//! first loaded.
//!
//! | program | event | meaning |
//! |---|---|---|
//! | `connect` | `seen` / `redirected` / `excluded` | TCP connects seen, sent to the tunnel, left alone by an exclusion |
//! | `connect` | `original_destination_store_failed` | original destination (or its 4-tuple, in sock_ops) not recorded: map full |
//! | `sock_ops` | `tuple_recorded` / `tuple_removed` | redirected connections' 4-tuples recorded / forgotten |
//! | `getsockopt` | `original_destination_answered` / `original_destination_missed` | `SO_ORIGINAL_DST` answers / unknown connections |
//! | `getpeername` | `rewritten` | peer addresses shown as the original destination |
//! | `strict_ingress` | `dropped` / `allowed` | connection attempts into STRICT pods or ports dropped / let through (the tunnel's marked HBONE and plaintext listeners, probe, loopback) |
//! | `sk_lookup` | `steered` / `no_listener_refused` | inbound connection attempts to enrolled pods steered to the tunnel's in-pod listeners / refused because none was registered (fail closed) |
//! | `probe_connect` | `bound_to_probe_address` | kubelet connects to enrolled pods bound to the probe source address |
//! | `guard_bind` | `probe_address_refused` | binds of the probe address by a pod's socket refused |
//! | `sock_ops` | `splice_added` | sockets added to the same-node splice map |
//! | `sk_msg` | `spliced` | messages spliced socket to socket |

use mesh_ebpf_common::counter;

/// One counter, labelled for export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSample {
    /// The program family that counts it.
    pub program: &'static str,
    /// What happened.
    pub event: &'static str,
    /// Total since the programs were loaded.
    pub value: u64,
}

/// Number of samples [`Counters::samples`] returns.
pub const SAMPLES: usize = counter::COUNT as usize;

/// (index in `COUNTERS`, program label, event label) of every counter, in export order; the
/// table in the module docs explains each.
pub const COUNTER_LABELS: [(u32, &str, &str); SAMPLES] = [
    (counter::CONNECT_SEEN, "connect", "seen"),
    (counter::CONNECT_REDIRECTED, "connect", "redirected"),
    (counter::CONNECT_EXCLUDED, "connect", "excluded"),
    (
        counter::ORIG_STORE_FAILED,
        "connect",
        "original_destination_store_failed",
    ),
    (counter::TUPLE_RECORDED, "sock_ops", "tuple_recorded"),
    (counter::TUPLE_REMOVED, "sock_ops", "tuple_removed"),
    (counter::SPLICE_ADDED, "sock_ops", "splice_added"),
    (
        counter::ORIG_DST_ANSWERED,
        "getsockopt",
        "original_destination_answered",
    ),
    (
        counter::ORIG_DST_MISSED,
        "getsockopt",
        "original_destination_missed",
    ),
    (counter::PEERNAME_REWRITTEN, "getpeername", "rewritten"),
    (counter::STRICT_DROPPED, "strict_ingress", "dropped"),
    (counter::SPLICE_REDIRECTED, "sk_msg", "spliced"),
    (counter::STRICT_ALLOWED, "strict_ingress", "allowed"),
    (counter::INBOUND_STEERED, "sk_lookup", "steered"),
    (
        counter::INBOUND_NO_LISTENER,
        "sk_lookup",
        "no_listener_refused",
    ),
    (
        counter::PROBE_BOUND,
        "probe_connect",
        "bound_to_probe_address",
    ),
    (
        counter::PROBE_BIND_REFUSED,
        "guard_bind",
        "probe_address_refused",
    ),
];

/// Counter totals since the programs were loaded. Monotonic; export as Prometheus counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects seen by `connect4|6`.
    pub connect_seen: u64,
    /// Connects redirected to the tunnel.
    pub connect_redirected: u64,
    /// Connects from enrolled pods left alone by an exclusion.
    pub connect_excluded: u64,
    /// Original destinations that could not be stored (map full).
    pub orig_store_failed: u64,
    /// Redirected connections whose 4-tuple was recorded.
    pub tuple_recorded: u64,
    /// Redirected sockets closed (established or not) and forgotten.
    pub tuple_removed: u64,
    /// `SO_ORIGINAL_DST` answers.
    pub orig_dst_answered: u64,
    /// `SO_ORIGINAL_DST` asked for an unknown connection.
    pub orig_dst_missed: u64,
    /// `getpeername` rewrites.
    pub peername_rewritten: u64,
    /// Inbound connection attempts dropped by strict mode.
    pub strict_dropped: u64,
    /// Sockets added to the same-node splice map.
    pub splice_added: u64,
    /// Messages spliced socket to socket.
    pub splice_redirected: u64,
    /// Inbound connection attempts into strict pods let through (the tunnel's listeners, probe,
    /// loopback).
    pub strict_allowed: u64,
    /// Inbound connection attempts steered to the tunnel's in-pod listeners.
    pub inbound_steered: u64,
    /// Inbound connection attempts refused for want of a registered in-pod listener.
    pub inbound_no_listener: u64,
    /// Kubelet connects bound to the probe source address.
    pub probe_bound: u64,
    /// Binds of the probe address by pods refused.
    pub probe_bind_refused: u64,
}

impl Counters {
    /// Builds the struct from totals indexed by `mesh_ebpf_common::counter`.
    pub fn from_totals(totals: &[u64; counter::COUNT as usize]) -> Self {
        let at = |index: u32| totals[index as usize];
        Self {
            connect_seen: at(counter::CONNECT_SEEN),
            connect_redirected: at(counter::CONNECT_REDIRECTED),
            connect_excluded: at(counter::CONNECT_EXCLUDED),
            orig_store_failed: at(counter::ORIG_STORE_FAILED),
            tuple_recorded: at(counter::TUPLE_RECORDED),
            tuple_removed: at(counter::TUPLE_REMOVED),
            orig_dst_answered: at(counter::ORIG_DST_ANSWERED),
            orig_dst_missed: at(counter::ORIG_DST_MISSED),
            peername_rewritten: at(counter::PEERNAME_REWRITTEN),
            strict_dropped: at(counter::STRICT_DROPPED),
            splice_added: at(counter::SPLICE_ADDED),
            splice_redirected: at(counter::SPLICE_REDIRECTED),
            strict_allowed: at(counter::STRICT_ALLOWED),
            inbound_steered: at(counter::INBOUND_STEERED),
            inbound_no_listener: at(counter::INBOUND_NO_LISTENER),
            probe_bound: at(counter::PROBE_BOUND),
            probe_bind_refused: at(counter::PROBE_BIND_REFUSED),
        }
    }

    /// The totals indexed by `mesh_ebpf_common::counter` (the inverse of [`Self::from_totals`]).
    pub fn totals(&self) -> [u64; SAMPLES] {
        let mut totals = [0u64; SAMPLES];
        let mut set = |index: u32, value: u64| totals[index as usize] = value;
        set(counter::CONNECT_SEEN, self.connect_seen);
        set(counter::CONNECT_REDIRECTED, self.connect_redirected);
        set(counter::CONNECT_EXCLUDED, self.connect_excluded);
        set(counter::ORIG_STORE_FAILED, self.orig_store_failed);
        set(counter::TUPLE_RECORDED, self.tuple_recorded);
        set(counter::TUPLE_REMOVED, self.tuple_removed);
        set(counter::ORIG_DST_ANSWERED, self.orig_dst_answered);
        set(counter::ORIG_DST_MISSED, self.orig_dst_missed);
        set(counter::PEERNAME_REWRITTEN, self.peername_rewritten);
        set(counter::STRICT_DROPPED, self.strict_dropped);
        set(counter::SPLICE_ADDED, self.splice_added);
        set(counter::SPLICE_REDIRECTED, self.splice_redirected);
        set(counter::STRICT_ALLOWED, self.strict_allowed);
        set(counter::INBOUND_STEERED, self.inbound_steered);
        set(counter::INBOUND_NO_LISTENER, self.inbound_no_listener);
        set(counter::PROBE_BOUND, self.probe_bound);
        set(counter::PROBE_BIND_REFUSED, self.probe_bind_refused);
        totals
    }

    /// Every counter with its labels, in [`COUNTER_LABELS`] order.
    pub fn samples(&self) -> [CounterSample; SAMPLES] {
        let totals = self.totals();
        COUNTER_LABELS.map(|(index, program, event)| CounterSample {
            program,
            event,
            value: totals[index as usize],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_index_lands_in_its_own_field() {
        let mut totals = [0u64; counter::COUNT as usize];
        for (i, slot) in totals.iter_mut().enumerate() {
            *slot = 100 + i as u64;
        }
        let c = Counters::from_totals(&totals);
        assert_eq!(c.connect_seen, 100);
        assert_eq!(c.connect_redirected, 101);
        assert_eq!(c.orig_dst_answered, 106);
        assert_eq!(c.strict_dropped, 109);
        assert_eq!(c.splice_redirected, 111);
        assert_eq!(c.strict_allowed, 112);
        assert_eq!(c.totals(), totals, "totals() inverts from_totals()");
    }

    #[test]
    fn samples_cover_every_counter_once_with_unique_labels() {
        let mut totals = [0u64; counter::COUNT as usize];
        for (i, slot) in totals.iter_mut().enumerate() {
            *slot = 1_000 + i as u64;
        }
        let samples = Counters::from_totals(&totals).samples();
        let mut values: Vec<u64> = samples.iter().map(|s| s.value).collect();
        values.sort_unstable();
        assert_eq!(values, totals.to_vec(), "each index exported exactly once");
        let mut labels: Vec<_> = samples.iter().map(|s| (s.program, s.event)).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), samples.len(), "label pairs are unique");
        let dropped = samples
            .iter()
            .find(|s| (s.program, s.event) == ("strict_ingress", "dropped"))
            .map(|s| s.value);
        assert_eq!(dropped, Some(1_000 + u64::from(counter::STRICT_DROPPED)));
    }
}
