//! The store: owns the [`Registry`], rebuilds the snapshot after changes (debounced, so a
//! burst of watch events costs one rebuild) and hands it to the feed [`Hub`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatch;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::feed::hub::Hub;
use crate::registry::Registry;

/// Registry plus publishing.
#[derive(Debug)]
pub struct Store {
    registry: Mutex<Registry>,
    hub: Arc<Hub>,
    dirty: Notify,
    reported: Mutex<BTreeSet<String>>,
    /// False until every source finished its initial load (Kubernetes mode), so no partial
    /// state (say, pods without their policies) is ever published.
    ready: AtomicBool,
    /// Serialises build-and-apply, so an older snapshot is never applied after a newer one.
    publishing: Mutex<()>,
}

impl Store {
    /// A store publishing to `hub`.
    pub fn new(registry: Registry, hub: Arc<Hub>) -> Arc<Self> {
        Self::with_readiness(registry, hub, true)
    }

    /// A store that publishes nothing until [`Store::mark_ready`].
    pub fn new_gated(registry: Registry, hub: Arc<Hub>) -> Arc<Self> {
        Self::with_readiness(registry, hub, false)
    }

    fn with_readiness(registry: Registry, hub: Arc<Hub>, ready: bool) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(registry),
            hub,
            dirty: Notify::new(),
            reported: Mutex::new(BTreeSet::new()),
            ready: AtomicBool::new(ready),
            publishing: Mutex::new(()),
        })
    }

    /// Opens the gate and publishes.
    pub fn mark_ready(&self) -> u64 {
        self.ready.store(true, Ordering::SeqCst);
        self.publish_now()
    }

    /// Whether the gate is open.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The hub the store publishes to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Changes the registry; the publisher task rebuilds soon after.
    pub fn update<R>(&self, change: impl FnOnce(&mut Registry) -> R) -> R {
        let result = change(&mut self.registry.lock());
        self.dirty.notify_one();
        result
    }

    /// Reads the registry under its lock (keep `read` short: the watchers wait for it).
    pub fn read<R>(&self, read: impl FnOnce(&Registry) -> R) -> R {
        read(&self.registry.lock())
    }

    /// Rebuilds and publishes now; returns the node-feed version. Logs diagnostics that are new
    /// since the last publish (so a bad file is reported once, not on every rebuild).
    pub fn publish_now(&self) -> u64 {
        let _publishing = self.publishing.lock();
        let snapshot = self.registry.lock().snapshot();
        self.report(&snapshot.diagnostics);
        self.hub.apply(Arc::new(snapshot))
    }

    fn report(&self, diagnostics: &[crate::model::Diagnostic]) {
        let current: BTreeSet<String> = diagnostics.iter().map(ToString::to_string).collect();
        let mut reported = self.reported.lock();
        for text in current.difference(&reported) {
            tracing::warn!(diagnostic = %text, "config rejected");
        }
        *reported = current;
    }

    /// Publishes after each change, waiting `debounce` to batch bursts; ends on drain.
    pub async fn run_publisher(self: Arc<Self>, debounce: Duration, mut drain: DrainWatch) {
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                () = drain.signaled() => return,
            }
            tokio::time::sleep(debounce).await;
            if !self.is_ready() {
                continue;
            }
            let version = self.publish_now();
            tracing::debug!(version, "published snapshot");
        }
    }
}
