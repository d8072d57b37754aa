//! Versioned, incremental state behind the node feed.
//!
//! Every applied [`Snapshot`] that changes anything gets the next version. A bounded change
//! log records which keys changed at each version, so a node that reconnects with a version
//! still in the log (and the same `feed_id`) gets only what changed since; otherwise it gets a
//! full resend. Memory is bounded: the log holds at most `max_log_keys` keys.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use mesh_core::proto::control::v1 as pb;

use super::convert;
use crate::model::Snapshot;

/// Identifies one item of the node feed.
pub type Key = (pb::ResourceKind, String);

/// What a node needs to go from its version to the current one.
#[derive(Debug, Default)]
pub struct Delta {
    /// Version after applying.
    pub version: u64,
    /// Drop all state first (full resend).
    pub reset: bool,
    /// Items to add or replace.
    pub upserts: Vec<Arc<pb::Resource>>,
    /// Items to remove.
    pub removals: Vec<Key>,
}

/// The node feed's state.
#[derive(Debug)]
pub struct FeedState {
    feed_id: String,
    version: u64,
    items: HashMap<Key, Arc<pb::Resource>>,
    log: VecDeque<(u64, Vec<Key>)>,
    logged_keys: usize,
    /// Oldest version a client may resume from incrementally.
    floor: u64,
    max_log_keys: usize,
    previous: Arc<Snapshot>,
}

fn diff<T: PartialEq>(
    kind: pb::ResourceKind,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    convert: impl Fn(&T) -> pb::resource::Kind,
    changed: &mut Vec<(Key, Option<pb::Resource>)>,
) {
    for (key, item) in new {
        if old.get(key) != Some(item) {
            let resource = pb::Resource {
                kind: Some(convert(item)),
            };
            changed.push(((kind, key.clone()), Some(resource)));
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        changed.push(((kind, key.clone()), None));
    }
}

impl FeedState {
    /// Empty state at version 0.
    pub fn new(feed_id: String, max_log_keys: usize) -> Self {
        Self {
            feed_id,
            version: 0,
            items: HashMap::new(),
            log: VecDeque::new(),
            logged_keys: 0,
            floor: 0,
            max_log_keys,
            previous: Arc::new(Snapshot::default()),
        }
    }

    /// This feed instance's id (changes when the control service restarts).
    pub fn feed_id(&self) -> &str {
        &self.feed_id
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no items are held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Applies a new snapshot; returns the new version if anything changed.
    pub fn apply(&mut self, snapshot: Arc<Snapshot>) -> Option<u64> {
        use pb::resource::Kind as R;
        let old = &self.previous;
        let mut changed = Vec::new();
        let kind = pb::ResourceKind::Workload;
        diff(
            kind,
            &old.workloads,
            &snapshot.workloads,
            |w| R::Workload(convert::workload(w)),
            &mut changed,
        );
        let kind = pb::ResourceKind::Service;
        diff(
            kind,
            &old.services,
            &snapshot.services,
            |s| R::Service(convert::service(s)),
            &mut changed,
        );
        let kind = pb::ResourceKind::Authorization;
        diff(
            kind,
            &old.policies,
            &snapshot.policies,
            |a| R::Authorization(convert::authorization(a)),
            &mut changed,
        );
        self.previous = snapshot;
        if changed.is_empty() {
            return None;
        }
        self.version += 1;
        let mut keys = Vec::with_capacity(changed.len());
        for (key, resource) in changed {
            match resource {
                Some(resource) => self.items.insert(key.clone(), Arc::new(resource)),
                None => self.items.remove(&key),
            };
            keys.push(key);
        }
        self.push_log(keys);
        Some(self.version)
    }

    fn push_log(&mut self, keys: Vec<Key>) {
        self.logged_keys += keys.len();
        self.log.push_back((self.version, keys));
        while self.logged_keys > self.max_log_keys {
            let Some((version, keys)) = self.log.pop_front() else {
                break;
            };
            self.logged_keys -= keys.len();
            // Clients at `version - 1` or older would miss these keys now.
            self.floor = version;
        }
    }

    /// Everything, as a reset.
    fn full(&self) -> Delta {
        let mut upserts: Vec<_> = self.items.iter().collect();
        // Deterministic order: kind, then key.
        upserts.sort_by(|a, b| a.0.cmp(b.0));
        Delta {
            version: self.version,
            reset: true,
            upserts: upserts.into_iter().map(|(_, r)| Arc::clone(r)).collect(),
            removals: Vec::new(),
        }
    }

    /// What a client at `resume` (feed id, version) needs. `None` or a mismatching feed id,
    /// a version from the future or one older than the log reaches gives a full resend.
    pub fn delta(&self, resume: Option<(&str, u64)>) -> Delta {
        let Some((feed_id, since)) = resume else {
            return self.full();
        };
        if feed_id != self.feed_id || since < self.floor || since > self.version {
            return self.full();
        }
        let keys: BTreeSet<&Key> = self
            .log
            .iter()
            .filter(|(version, _)| *version > since)
            .flat_map(|(_, keys)| keys)
            .collect();
        let mut delta = Delta {
            version: self.version,
            ..Delta::default()
        };
        for key in keys {
            match self.items.get(key) {
                Some(resource) => delta.upserts.push(Arc::clone(resource)),
                None => delta.removals.push(key.clone()),
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Authorization;

    fn with_policies(names: &[&str]) -> Arc<Snapshot> {
        let mut snapshot = Snapshot::default();
        for name in names {
            let policy = Authorization {
                key: format!("ns/{name}"),
                name: (*name).into(),
                namespace: "ns".into(),
                scope: crate::model::PolicyScope::Namespace,
                action: crate::model::PolicyAction::Deny,
                rules: Vec::new(),
                has_l7: false,
            };
            snapshot.policies.insert(policy.key.clone(), policy);
        }
        Arc::new(snapshot)
    }

    #[test]
    fn unchanged_snapshot_keeps_the_version() {
        let mut state = FeedState::new("f".into(), 100);
        assert_eq!(state.apply(with_policies(&["a"])), Some(1));
        assert_eq!(state.apply(with_policies(&["a"])), None);
        assert_eq!(state.version(), 1);
    }

    #[test]
    fn log_is_bounded_and_old_clients_get_a_full_resend() {
        let mut state = FeedState::new("f".into(), 3);
        state.apply(with_policies(&["a"]));
        state.apply(with_policies(&["a", "b"]));
        state.apply(with_policies(&["a", "b", "c"]));
        state.apply(with_policies(&["b", "c"]));
        // 4 keys logged over 4 versions; the bound of 3 evicted version 1.
        assert!(state.log.iter().map(|(_, k)| k.len()).sum::<usize>() <= 3);
        assert!(
            state.delta(Some(("f", 0))).reset,
            "version 0 is before the floor"
        );
        let delta = state.delta(Some(("f", 2)));
        assert!(!delta.reset);
        assert_eq!(delta.upserts.len(), 1, "c added");
        assert_eq!(
            delta.removals,
            [(pb::ResourceKind::Authorization, "ns/a".to_string())]
        );
        assert!(state.delta(Some(("f", 99))).reset, "future version");
        assert!(state.delta(Some(("other", 2))).reset, "other feed instance");
    }
}
