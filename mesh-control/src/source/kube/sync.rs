//! The initial sync from the API server: which kinds still wait for their first list, and the
//! last error each saw. It opens the store's gate once every kind is listed, and until then
//! says why mesh-control is not ready (the status page and the periodic warning show it), so
//! an unreachable API server or missing RBAC is visible instead of a silent 503.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::registry::Kind;
use crate::store::Store;

/// Longest error text kept per kind (watch errors can embed response bodies).
const MAX_ERROR_LEN: usize = 512;

/// Tracks which kinds finished their first list; opens the store's gate when all have.
#[derive(Debug)]
pub struct InitialSync {
    /// Kinds not listed yet, with the last error of their watcher.
    pending: Mutex<BTreeMap<Kind, Option<String>>>,
    store: Arc<Store>,
}

impl InitialSync {
    /// Waits for `kinds`.
    pub fn new(kinds: &[Kind], store: Arc<Store>) -> Arc<Self> {
        let pending = Mutex::new(kinds.iter().map(|k| (*k, None)).collect());
        Arc::new(Self { pending, store })
    }

    /// Whether `kind` still waits for its first list.
    pub fn is_pending(&self, kind: Kind) -> bool {
        self.pending.lock().contains_key(&kind)
    }

    /// `kind` was listed; opens the gate when it was the last one.
    pub fn done(&self, kind: Kind) {
        let mut pending = self.pending.lock();
        if pending.remove(&kind).is_some() && pending.is_empty() {
            drop(pending);
            let version = self.store.mark_ready();
            tracing::info!(version, "initial sync from kubernetes complete");
        }
    }

    /// The watcher of `kind` failed; remembered while the kind is pending.
    pub fn failed(&self, kind: Kind, error: &str) {
        if let Some(last) = self.pending.lock().get_mut(&kind) {
            let mut text = error.to_string();
            if text.len() > MAX_ERROR_LEN {
                let end = (0..=MAX_ERROR_LEN)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.truncate(end);
            }
            *last = Some(text);
        }
    }

    /// Why the initial sync is not complete, or `None` once it is.
    pub fn waiting_for(&self) -> Option<String> {
        let pending = self.pending.lock();
        if pending.is_empty() {
            return None;
        }
        let kinds: Vec<&str> = pending.keys().map(|k| k.as_str()).collect();
        let mut reason = format!(
            "waiting for the first list from the kubernetes api server of: {}",
            kinds.join(", ")
        );
        let errors: Vec<String> = pending
            .iter()
            .filter_map(|(kind, e)| e.as_ref().map(|e| format!("{}: {e}", kind.as_str())))
            .collect();
        if !errors.is_empty() {
            reason.push_str("; last errors: ");
            reason.push_str(&errors.join("; "));
            reason.push_str(
                " (is the api server reachable from this pod, and may mesh-control list and watch these kinds? see deploy/ rbac)",
            );
        }
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::hub::Hub;
    use crate::registry::{Registry, RegistryConfig};

    #[test]
    fn the_reason_names_pending_kinds_and_their_errors_until_synced() {
        let hub = Arc::new(Hub::with_feed_id("s".into(), 10));
        let store = Store::new_gated(Registry::new(RegistryConfig::default()), hub);
        let sync = InitialSync::new(&[Kind::Pod, Kind::Service], Arc::clone(&store));
        let reason = sync.waiting_for().expect("not synced");
        assert!(reason.ends_with("of: Pod, Service"), "{reason}");
        sync.failed(Kind::Pod, &"x".repeat(2000));
        sync.failed(Kind::Service, "connection refused");
        let reason = sync.waiting_for().expect("not synced");
        assert!(reason.contains("Service: connection refused"), "{reason}");
        assert!(
            reason.contains(&format!("Pod: {};", "x".repeat(512))),
            "{reason}"
        );
        assert!(!reason.contains(&"x".repeat(513)), "errors are bounded");
        sync.done(Kind::Pod);
        assert!(!store.is_ready());
        sync.failed(Kind::Pod, "ignored once listed");
        let reason = sync.waiting_for().expect("service pending");
        assert!(!reason.contains("Pod"), "{reason}");
        sync.done(Kind::Service);
        assert!(store.is_ready());
        assert_eq!(sync.waiting_for(), None);
    }
}
