//! Keeps the eBPF enrollment map in step with the pods running on this node.
//!
//! The node knows its pods by IP (from config or the control plane); the eBPF programs know them
//! by network-namespace cookie. Every pass scans the namespaces ([`crate::pod_netns`]), works out
//! the changes ([`crate::pod_netns::plan`]) and applies them to the [`Redirect`] maps. A pod whose
//! namespace is not up yet is picked up by a later pass; a pod that left is unenrolled.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use mesh_core::drain::DrainWatch;
use tokio::sync::watch;

use crate::{
    config::{Config, MtlsMode},
    pod_netns::{self, ScanConfig, ScanError},
    redirect::{EnrollMode, Redirect, RedirectError},
};

/// Errors of one reconciliation pass; the next pass retries.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// Namespaces could not be scanned.
    #[error("scanning pod network namespaces: {0}")]
    Scan(#[from] ScanError),
    /// The enrollment map rejected a change.
    #[error("updating the eBPF enrollment map: {0}")]
    Map(#[from] RedirectError),
    /// The blocking pass panicked or was cancelled.
    #[error("enrollment pass did not finish: {0}")]
    Task(String),
}

/// The local pods that must be captured, by IP, with how strictly: from the node's config.
pub fn wanted_from_config(config: &Config) -> BTreeMap<IpAddr, EnrollMode> {
    let peer = &config.peer_authentication;
    config
        .workloads
        .iter()
        .filter(|workload| workload.node == config.node_name)
        .map(|workload| {
            let mode = peer
                .namespaces
                .get(&workload.namespace)
                .copied()
                .unwrap_or(peer.mode);
            let enroll = match mode {
                MtlsMode::Strict => EnrollMode::Strict,
                MtlsMode::Permissive => EnrollMode::Capture,
            };
            (workload.ip, enroll)
        })
        .collect()
}

/// The redirect programs plus what this node has enrolled in them.
#[derive(Debug)]
pub struct Enrollment {
    redirect: Redirect,
    enrolled: BTreeMap<u64, EnrollMode>,
    scan: ScanConfig,
}

impl Enrollment {
    /// Starts with nothing enrolled.
    pub fn new(redirect: Redirect, scan: ScanConfig) -> Self {
        Self {
            redirect,
            enrolled: BTreeMap::new(),
            scan,
        }
    }

    /// Netns cookies enrolled now, with their mode.
    pub fn enrolled(&self) -> &BTreeMap<u64, EnrollMode> {
        &self.enrolled
    }

    /// The redirect programs (counters, shutdown).
    pub fn redirect(&self) -> &Redirect {
        &self.redirect
    }

    /// One blocking pass: scan, then enroll and unenroll as needed.
    pub fn reconcile(
        &mut self,
        wanted: &BTreeMap<IpAddr, EnrollMode>,
    ) -> Result<(), EnrollmentError> {
        let found = pod_netns::scan(&self.scan)?;
        let plan = pod_netns::plan(&self.enrolled, wanted, &found);
        for (cookie, mode, ip) in plan.enroll {
            self.redirect.enroll(cookie, mode)?;
            self.enrolled.insert(cookie, mode);
            tracing::info!(pod.ip = %ip, netns.cookie = cookie, ?mode, "pod enrolled in the mesh");
        }
        for cookie in plan.unenroll {
            self.redirect.unenroll(cookie)?;
            self.enrolled.remove(&cookie);
            tracing::info!(netns.cookie = cookie, "pod left the mesh");
        }
        let missing: Vec<&IpAddr> = wanted.keys().filter(|ip| !found.contains_key(ip)).collect();
        if !missing.is_empty() {
            tracing::debug!(
                ?missing,
                "local pods without a visible network namespace yet"
            );
        }
        Ok(())
    }
}

/// Reconciles every `interval` and whenever `wanted` changes, until the drain starts; returns
/// the enrollment so the caller decides when the programs detach (`None` if a pass panicked).
pub async fn run(
    mut enrollment: Enrollment,
    mut wanted: watch::Receiver<BTreeMap<IpAddr, EnrollMode>>,
    interval: Duration,
    mut drain: DrainWatch,
) -> Option<Enrollment> {
    loop {
        let target = wanted.borrow_and_update().clone();
        let pass = tokio::task::spawn_blocking(move || {
            let result = enrollment.reconcile(&target);
            (enrollment, result)
        });
        match pass.await {
            Ok((returned, result)) => {
                enrollment = returned;
                if let Err(error) = result {
                    tracing::warn!(%error, "enrollment pass failed; retrying");
                }
            }
            Err(error) => {
                // The enrollment moved into the panicked task is gone: nothing left to manage.
                tracing::error!(%error, "enrollment pass panicked; pods are no longer reconciled");
                drain.signaled().await;
                return None;
            }
        }
        tokio::select! {
            _ = drain.signaled() => return Some(enrollment),
            _ = tokio::time::sleep(interval) => {}
            changed = wanted.changed() => {
                if changed.is_err() {
                    return Some(enrollment);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_pods_are_the_local_ones_with_their_namespace_mode() {
        let yaml = r#"
node_name: n1
peer_authentication:
  mode: PERMISSIVE
  namespaces: {demo: STRICT}
workloads:
  - {name: a, namespace: demo, service_account: a, ip: 10.0.0.1, node: n1}
  - {name: b, namespace: other, service_account: b, ip: 10.0.0.2, node: n1}
  - {name: c, namespace: demo, service_account: c, ip: 10.0.0.3, node: n2}
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let wanted = wanted_from_config(&config);
        let expected = BTreeMap::from([
            ("10.0.0.1".parse().unwrap(), EnrollMode::Strict),
            ("10.0.0.2".parse().unwrap(), EnrollMode::Capture),
        ]);
        assert_eq!(wanted, expected);
    }
}

/// How often pods are rescanned when nothing else changes.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// A running enrollment loop; [`EnrollmentHandle::shutdown`] stops it and detaches the programs.
#[derive(Debug)]
pub struct EnrollmentHandle {
    task: tokio::task::JoinHandle<Option<Enrollment>>,
    drain: mesh_core::drain::DrainTrigger,
    wanted: watch::Sender<BTreeMap<IpAddr, EnrollMode>>,
}

impl EnrollmentHandle {
    /// Attaches the redirect programs and starts enrolling `wanted`.
    pub fn start(
        config: &crate::redirect::Config,
        wanted: BTreeMap<IpAddr, EnrollMode>,
        scan: ScanConfig,
    ) -> Result<Self, RedirectError> {
        let redirect = Redirect::load(config)?;
        let (wanted_tx, wanted_rx) = watch::channel(wanted);
        let (drain, watch) = mesh_core::drain::channel();
        let enrollment = Enrollment::new(redirect, scan);
        let task = tokio::spawn(run(enrollment, wanted_rx, RESCAN_INTERVAL, watch));
        Ok(Self {
            task,
            drain,
            wanted: wanted_tx,
        })
    }

    /// Replaces the set of pods to capture (after a config change).
    pub fn set_wanted(&self, wanted: BTreeMap<IpAddr, EnrollMode>) {
        self.wanted.send_replace(wanted);
    }

    /// Stops reconciling and detaches the programs: enrolled pods' new connections then go
    /// direct, so call this only after the proxy has drained.
    pub async fn shutdown(self) {
        drop(self.wanted);
        let _ = self.drain.drain(Duration::from_secs(5)).await;
        match self.task.await {
            Ok(Some(enrollment)) => {
                let pods = enrollment.enrolled().len();
                drop(enrollment);
                tracing::info!(pods, "ebpf redirection detached");
            }
            Ok(None) => tracing::warn!("enrollment loop had stopped after a panic"),
            Err(error) => tracing::warn!(%error, "enrollment loop ended abnormally"),
        }
    }
}
