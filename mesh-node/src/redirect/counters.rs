//! Typed view of the programs' per-CPU counters (`COUNTERS` map), summed over CPUs.

use mesh_ebpf_common::counter;

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
        }
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
    }
}
