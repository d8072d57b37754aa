//! The hub: receives each new [`Snapshot`] and fans it out to the feeds.
//!
//! The node feed reads the versioned [`FeedState`]; waypoint streams read the latest published
//! snapshot. Both are signalled through `watch` channels, which coalesce: a slow stream skips
//! intermediate versions instead of queueing them, so memory stays bounded.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::state::{Delta, FeedState};
use crate::model::Snapshot;

/// Default bound on keys kept in the change log for incremental resume.
pub const DEFAULT_MAX_LOG_KEYS: usize = 100_000;

/// The latest snapshot, with a sequence number that increases on every publish.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Publish sequence number.
    pub seq: u64,
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
}

/// Shared by the store (writer) and every feed stream (readers).
#[derive(Debug)]
pub struct Hub {
    state: RwLock<FeedState>,
    versions: watch::Sender<u64>,
    published: watch::Sender<Published>,
}

fn new_feed_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

impl Hub {
    /// A hub with a fresh feed id (clients' resume versions from another instance are void).
    pub fn new(max_log_keys: usize) -> Self {
        Self::with_feed_id(new_feed_id(), max_log_keys)
    }

    /// A hub with a given feed id.
    pub fn with_feed_id(feed_id: String, max_log_keys: usize) -> Self {
        Self {
            state: RwLock::new(FeedState::new(feed_id, max_log_keys)),
            versions: watch::channel(0).0,
            published: watch::channel(Published::default()).0,
        }
    }

    /// Applies a snapshot; returns the node-feed version after it.
    pub fn apply(&self, snapshot: Arc<Snapshot>) -> u64 {
        let (changed, version) = {
            let mut state = self.state.write();
            let changed = state.apply(Arc::clone(&snapshot)).is_some();
            (changed, state.version())
        };
        if changed {
            self.versions.send_replace(version);
        }
        self.published.send_modify(|p| {
            p.seq += 1;
            p.snapshot = snapshot;
        });
        version
    }

    /// The feed id.
    pub fn feed_id(&self) -> String {
        self.state.read().feed_id().to_string()
    }

    /// The current node-feed version.
    pub fn version(&self) -> u64 {
        self.state.read().version()
    }

    /// Number of items in the node feed.
    pub fn item_count(&self) -> usize {
        self.state.read().len()
    }

    /// What a node at `resume` needs.
    pub fn delta(&self, resume: Option<(&str, u64)>) -> Delta {
        self.state.read().delta(resume)
    }

    /// Notified on every node-feed version change.
    pub fn subscribe_versions(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// Notified on every published snapshot.
    pub fn subscribe_snapshots(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// Whether a snapshot was published yet. Until then the feeds and the CA refuse service:
    /// an empty state would look like "no policy" to a node.
    pub fn is_ready(&self) -> bool {
        self.published.borrow().seq > 0
    }

    /// The latest published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.published.borrow().snapshot)
    }
}
