//! One periodic scan of the pods' network namespaces, shared by everything that needs it (eBPF
//! enrollment and the in-pod listeners), so each namespace is entered once per interval rather
//! than once per consumer.
//!
//! The scan ([`crate::pod_netns::scan`]) runs on a blocking thread every interval and whenever
//! [`PodScanner::rescan`] asks (a mesh update may name a pod whose sandbox just appeared).
//! Consumers watch [`PodScanner::results`]: it changes only when what is visible changes.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use mesh_core::drain::DrainWatch;
use tokio::sync::{watch, Notify};

use crate::pod_netns::{self, PodNetns, ScanConfig};

/// How often namespaces are rescanned when nothing asks sooner.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The namespaces visible in the latest scan, by pod IP.
pub type Scan = Arc<HashMap<IpAddr, PodNetns>>;

/// Handle on the running scanner. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PodScanner {
    results: watch::Receiver<Scan>,
    rescan: Arc<Notify>,
}

impl PodScanner {
    /// Starts scanning with `config` every `interval` until `drain`.
    pub fn spawn(config: ScanConfig, interval: Duration, drain: DrainWatch) -> Self {
        let (tx, results) = watch::channel(Scan::default());
        let rescan = Arc::new(Notify::new());
        tokio::spawn(run(config, tx, rescan.clone(), interval, drain));
        Self { results, rescan }
    }

    /// The latest scan; `changed()` fires when it differs from the previous one.
    pub fn results(&self) -> watch::Receiver<Scan> {
        self.results.clone()
    }

    /// Asks for a scan now (coalesced with one already pending).
    pub fn rescan(&self) {
        self.rescan.notify_one();
    }
}

async fn run(
    config: ScanConfig,
    results: watch::Sender<Scan>,
    rescan: Arc<Notify>,
    interval: Duration,
    mut drain: DrainWatch,
) {
    let mut first = true;
    loop {
        let pass = config.clone();
        match tokio::task::spawn_blocking(move || pod_netns::scan(&pass)).await {
            Ok(Ok(found)) => {
                publish(&results, found, first);
                first = false;
            }
            Ok(Err(error)) => tracing::warn!(%error, "pod namespace scan failed; retrying"),
            Err(error) => tracing::warn!(%error, "pod namespace scan did not finish; retrying"),
        }
        tokio::select! {
            _ = drain.signaled() => return,
            _ = rescan.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Publishes `found` only when it differs, so consumers wake for changes, not for every pass;
/// the `first` scan is always published (even empty), so consumers can tell a real scan from
/// the initial placeholder.
fn publish(results: &watch::Sender<Scan>, found: HashMap<IpAddr, PodNetns>, first: bool) {
    results.send_if_modified(|current| {
        if !first && **current == found {
            return false;
        }
        *current = Arc::new(found);
        true
    });
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn only_changes_are_published() {
        let (tx, mut rx) = watch::channel(Scan::default());
        rx.borrow_and_update();
        let netns = PodNetns {
            cookie: 7,
            path: PathBuf::from("/run/netns/a"),
        };
        let found = HashMap::from([("10.0.0.1".parse().unwrap(), netns)]);
        publish(&tx, HashMap::new(), true);
        assert!(
            rx.has_changed().unwrap(),
            "the first scan is published even when empty"
        );
        rx.borrow_and_update();
        publish(&tx, found.clone(), false);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        publish(&tx, found, false);
        assert!(!rx.has_changed().unwrap(), "same scan woke consumers");
        publish(&tx, HashMap::new(), false);
        assert!(rx.has_changed().unwrap());
    }
}
