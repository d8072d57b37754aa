//! Keeps the eBPF enrollment map in step with the pods running on this node.
//!
//! The node knows its pods by IP (from the control plane's feed, or a saved one); the eBPF programs know them
//! by network-namespace cookie. Whenever the wanted pods or the shared namespace scan
//! ([`crate::pod_scan`]) change, a pass works out the changes ([`crate::pod_netns::plan`]) and
//! applies them to the [`Redirect`] maps. A pod whose namespace is not up yet is picked up when
//! it appears; a pod that left is unenrolled. Each pod is enrolled with its mode and per-port
//! overrides ([`EnrollPolicy`]); the redirect module keeps the port map in step.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use mesh_core::drain::DrainWatch;
use tokio::sync::watch;

use crate::{
    ebpf_metrics::CounterSource,
    pod_netns::{self, PodNetns},
    pod_scan::Scan,
    redirect::{Counters, EnrollMode, EnrollPolicy, Redirect, RedirectError, Steering},
    state::{MtlsMode, State},
};

/// Errors of one reconciliation pass; the next pass retries.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// The enrollment map rejected a change.
    #[error("updating the eBPF enrollment map: {0}")]
    Map(#[from] RedirectError),
}

/// Most port overrides one pod may hold in the kernel: beyond it the pod is enforced at its
/// strictest mode on every port, so a single pod cannot fill the node's `PORT_MTLS` map and
/// hold every other pod with overrides at its strictest mode.
pub const MAX_PORT_OVERRIDES_PER_POD: usize = 64;

/// The local pods that must be captured, by IP, with how strictly. A pod's mode is the one
/// mesh-control resolved for it (Istio precedence: workload, namespace, mesh); each `port_mtls`
/// entry sets the mode of that listener port (Istio `portLevelMtls`: the port's mode wins
/// there), up to [`MAX_PORT_OVERRIDES_PER_POD`].
pub fn wanted(state: &State) -> BTreeMap<IpAddr, EnrollPolicy> {
    state
        .local_workloads()
        .iter()
        .map(|workload| {
            let mode = enroll_mode(workload.mtls);
            let ports = workload
                .port_mtls
                .iter()
                .map(|(p, m)| (*p, enroll_mode(*m)));
            let policy = EnrollPolicy::new(mode, ports);
            let count = policy.port_overrides().len();
            if count > MAX_PORT_OVERRIDES_PER_POD {
                tracing::warn!(
                    pod = %format!("{}/{}", workload.namespace, workload.name),
                    overrides = count,
                    max = MAX_PORT_OVERRIDES_PER_POD,
                    "too many port-level mtls overrides: the pod is enforced at its strictest mode on every port"
                );
                return (workload.ip, EnrollPolicy::from(policy.strictest()));
            }
            (workload.ip, policy)
        })
        .collect()
}

fn enroll_mode(mode: MtlsMode) -> EnrollMode {
    match mode {
        MtlsMode::Strict => EnrollMode::Strict,
        MtlsMode::Permissive => EnrollMode::Capture,
    }
}

/// The redirect programs plus what this node has enrolled in them.
#[derive(Debug)]
pub struct Enrollment {
    redirect: Redirect,
    enrolled: BTreeMap<u64, EnrollPolicy>,
    leftovers_removed: bool,
    captured: watch::Sender<BTreeSet<IpAddr>>,
}

impl Enrollment {
    /// Starts with nothing enrolled.
    pub fn new(redirect: Redirect) -> Self {
        Self {
            redirect,
            enrolled: BTreeMap::new(),
            leftovers_removed: false,
            captured: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// The wanted pods' addresses whose namespace is enrolled now (as of the last pass).
    pub fn captured(&self) -> watch::Receiver<BTreeSet<IpAddr>> {
        self.captured.subscribe()
    }

    /// Netns cookies enrolled now, with their mode and port overrides.
    pub fn enrolled(&self) -> &BTreeMap<u64, EnrollPolicy> {
        &self.enrolled
    }

    /// The redirect programs (counters, shutdown).
    pub fn redirect(&self) -> &Redirect {
        &self.redirect
    }

    /// Enrolls and unenrolls so that the map matches `wanted` given the namespaces `found`.
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<IpAddr, EnrollPolicy>,
        found: &HashMap<IpAddr, PodNetns>,
    ) -> Result<(), EnrollmentError> {
        let plan = self.plan(wanted, found);
        // One pod that cannot be enrolled as wanted must not keep the others out of the mesh:
        // every pod in the plan is tried, and the first error is returned (the caller retries).
        let mut first_error: Option<EnrollmentError> = None;
        for (cookie, policy, ip) in plan.enroll {
            if let Err(error) = self.redirect.enroll(cookie, policy.clone()) {
                // A pod with overrides is now held at its strictest mode: track that, so the
                // next pass retries (it differs from `policy`) or unenrolls it if it leaves.
                if !policy.port_overrides().is_empty() {
                    let fallback = EnrollPolicy::from(policy.strictest());
                    self.enrolled.insert(cookie, fallback);
                }
                tracing::warn!(pod.ip = %ip, netns.cookie = cookie, %error, "pod not enrolled as wanted");
                first_error.get_or_insert(error.into());
                continue;
            }
            let (mode, ports) = (policy.mode(), policy.port_overrides());
            tracing::info!(
                pod.ip = %ip,
                netns.cookie = cookie,
                ?mode,
                ?ports,
                "pod enrolled in the mesh"
            );
            self.enrolled.insert(cookie, policy);
        }
        for cookie in plan.unenroll {
            if let Err(error) = self.redirect.unenroll(cookie) {
                first_error.get_or_insert(error.into());
                continue;
            }
            self.enrolled.remove(&cookie);
            tracing::info!(netns.cookie = cookie, "pod left the mesh");
        }
        let captured: BTreeSet<IpAddr> = wanted
            .keys()
            .filter(|ip| {
                found
                    .get(ip)
                    .is_some_and(|ns| self.enrolled.contains_key(&ns.cookie))
            })
            .copied()
            .collect();
        self.captured
            .send_if_modified(|c| std::mem::replace(c, captured) != *c);
        if let Some(error) = first_error {
            return Err(error);
        }
        let missing: Vec<&IpAddr> = wanted.keys().filter(|ip| !found.contains_key(ip)).collect();
        if !missing.is_empty() {
            tracing::debug!(
                ?missing,
                "local pods without a visible network namespace yet"
            );
        }
        self.remove_leftovers()
    }

    /// [`pod_netns::plan`] over references (policies are compared by value), owned.
    fn plan(
        &self,
        wanted: &BTreeMap<IpAddr, EnrollPolicy>,
        found: &HashMap<IpAddr, PodNetns>,
    ) -> pod_netns::EnrollmentPlan<EnrollPolicy> {
        let enrolled: BTreeMap<u64, &EnrollPolicy> =
            self.enrolled.iter().map(|(c, p)| (*c, p)).collect();
        let wanted: BTreeMap<IpAddr, &EnrollPolicy> = wanted.iter().map(|(i, p)| (*i, p)).collect();
        let plan = pod_netns::plan(&enrolled, &wanted, found);
        pod_netns::EnrollmentPlan {
            enroll: plan
                .enroll
                .into_iter()
                .map(|(cookie, policy, ip)| (cookie, policy.clone(), ip))
                .collect(),
            unenroll: plan.unenroll,
        }
    }

    /// Once, after the first complete pass: unenrolls every namespace this process did not
    /// enroll. After adopting pinned maps ([`crate::redirect::Config::pin_path`]) these are pods
    /// that left the mesh while the tunnel was down; until then they stayed captured (fail
    /// closed), and the pods still wanted were never out of the map. Port overrides of the
    /// removed namespaces go with them ([`Redirect::retain_enrolled`]).
    fn remove_leftovers(&mut self) -> Result<(), EnrollmentError> {
        if self.leftovers_removed {
            return Ok(());
        }
        let ours = &self.enrolled;
        let removed = self
            .redirect
            .retain_enrolled(|cookie| ours.contains_key(&cookie))?;
        self.leftovers_removed = true;
        let pinned = self.redirect.pinned().map(|p| p.display().to_string());
        tracing::info!(
            removed,
            kept = self.enrolled.len(),
            ?pinned,
            "enrollment map reconciled with the wanted pods"
        );
        Ok(())
    }
}

/// The enrollment, shared by the reconcile loop and metric scrapes; `None` once detached.
type Shared = Arc<Mutex<Option<Enrollment>>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Option<Enrollment>> {
    // Map updates are single calls: a panicking pass cannot leave the enrollment half-changed.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pods to capture; `None` until known (a node following mesh-control before its first
/// feed version): nothing is enrolled or unenrolled meanwhile.
type Wanted = Option<BTreeMap<IpAddr, EnrollPolicy>>;

/// One pass on a blocking thread (map updates are syscalls). Nothing happens before the pods to
/// capture and their namespaces are known (`scanned`): an early pass would take an empty scan
/// or wanted set for the truth and unenroll pods adopted from pinned maps.
fn pass(
    shared: &Shared,
    found: &Scan,
    wanted: &Wanted,
    scanned: bool,
) -> Result<(), EnrollmentError> {
    let (Some(wanted), true) = (wanted, scanned) else {
        return Ok(());
    };
    match lock(shared).as_mut() {
        Some(enrollment) => enrollment.apply(wanted, found),
        None => Ok(()),
    }
}

/// Reconciles whenever `wanted` or the namespace scan changes, until the drain starts or
/// `wanted`'s sender is dropped. A failed pass is retried after `retry`.
async fn run(
    shared: Shared,
    mut wanted: watch::Receiver<Wanted>,
    mut scans: watch::Receiver<Scan>,
    retry: Duration,
    mut drain: DrainWatch,
) {
    let mut scanning = true;
    // The scanner publishes its first scan even when empty: a change means a real scan.
    let mut scanned = scans.has_changed().unwrap_or(false);
    loop {
        let target = wanted.borrow_and_update().clone();
        let found = scans.borrow_and_update().clone();
        let pass_shared = shared.clone();
        let result =
            tokio::task::spawn_blocking(move || pass(&pass_shared, &found, &target, scanned)).await;
        let failed = !matches!(result, Ok(Ok(())));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "enrollment pass failed; retrying"),
            Err(error) => tracing::error!(%error, "enrollment pass panicked; retrying"),
        }
        let retry_after = async {
            match failed {
                true => tokio::time::sleep(retry).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = drain.signaled() => return,
            _ = retry_after => {}
            changed = wanted.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // The scanner stops with the proxy's drain; keep the last scan until shutdown.
            changed = scans.changed(), if scanning => {
                scanning = changed.is_ok();
                scanned |= scanning;
            }
        }
    }
}

/// Reads the programs' counters for metrics while they are attached.
struct EnrollmentCounters(Shared);

impl CounterSource for EnrollmentCounters {
    fn read(&self) -> Result<Counters, String> {
        match lock(&self.0).as_ref() {
            Some(enrollment) => enrollment.redirect().counters().map_err(|e| e.to_string()),
            None => Err("ebpf programs are detached".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests;

fn policies<P: Into<EnrollPolicy>>(wanted: BTreeMap<IpAddr, P>) -> BTreeMap<IpAddr, EnrollPolicy> {
    wanted.into_iter().map(|(ip, p)| (ip, p.into())).collect()
}

/// A failed pass (map update) is retried after this.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// A running enrollment loop; [`EnrollmentHandle::shutdown`] stops it and detaches the programs.
#[derive(Debug)]
pub struct EnrollmentHandle {
    task: tokio::task::JoinHandle<()>,
    drain: mesh_core::drain::DrainTrigger,
    wanted: watch::Sender<Wanted>,
    shared: Shared,
    steering: Arc<Steering>,
    joiner: Option<Arc<crate::redirect::join::Joiner>>,
    direct: Option<(
        Arc<crate::redirect::direct::Direct>,
        Option<crate::redirect::direct::DirectEvents>,
    )>,
    captured: watch::Receiver<BTreeSet<IpAddr>>,
}

impl EnrollmentHandle {
    /// Attaches the redirect programs and starts enrolling `wanted`, finding pods' namespaces
    /// in `scans` (from [`crate::pod_scan::PodScanner::results`]). `wanted` maps pod IPs to an
    /// [`EnrollPolicy`] (or a bare [`EnrollMode`]: no port overrides).
    pub fn start<P: Into<EnrollPolicy>>(
        config: &crate::redirect::Config,
        wanted: BTreeMap<IpAddr, P>,
        scans: watch::Receiver<Scan>,
    ) -> Result<Self, RedirectError> {
        Self::start_with(config, Some(policies(wanted)), scans)
    }

    /// As [`Self::start`] when the pods to capture are not known yet (following mesh-control):
    /// pods enrolled in adopted pinned maps stay enrolled until the first [`Self::set_wanted`].
    pub fn start_pending(
        config: &crate::redirect::Config,
        scans: watch::Receiver<Scan>,
    ) -> Result<Self, RedirectError> {
        Self::start_with(config, None, scans)
    }

    fn start_with(
        config: &crate::redirect::Config,
        wanted: Wanted,
        scans: watch::Receiver<Scan>,
    ) -> Result<Self, RedirectError> {
        let mut redirect = Redirect::load(config)?;
        let steering = redirect.steering();
        let joiner = redirect.joiner();
        let direct = redirect.direct();
        let (wanted_tx, wanted_rx) = watch::channel(wanted);
        let (drain, watch) = mesh_core::drain::channel();
        let enrollment = Enrollment::new(redirect);
        let captured = enrollment.captured();
        let shared = Arc::new(Mutex::new(Some(enrollment)));
        let run = run(shared.clone(), wanted_rx, scans, RETRY_INTERVAL, watch);
        let task = tokio::spawn(run);
        Ok(Self {
            task,
            drain,
            wanted: wanted_tx,
            shared,
            steering,
            joiner,
            direct,
            captured,
        })
    }

    /// Addresses of the wanted pods enrolled now; changes after each pass that changes it.
    pub fn captured(&self) -> watch::Receiver<BTreeSet<IpAddr>> {
        self.captured.clone()
    }

    /// Same-node joining, when the programs were attached with it, for
    /// [`crate::app::Bound::set_joiner`].
    pub fn joiner(&self) -> Option<Arc<crate::redirect::join::Joiner>> {
        self.joiner.clone()
    }

    /// Same-node direct connections, when the programs were attached with them, and their
    /// event stream, for [`crate::app::Bound::set_direct`] (once).
    pub fn take_direct(
        &mut self,
    ) -> Option<(
        Arc<crate::redirect::direct::Direct>,
        crate::redirect::direct::DirectEvents,
    )> {
        let (direct, events) = self.direct.as_mut()?;
        Some((direct.clone(), events.take()?))
    }

    /// Per-pod inbound steering, for [`crate::app::Bound::set_steering`].
    pub fn steering(&self) -> Arc<Steering> {
        self.steering.clone()
    }

    /// Replaces the set of pods to capture (after a config change); as in [`Self::start`].
    pub fn set_wanted<P: Into<EnrollPolicy>>(&self, wanted: BTreeMap<IpAddr, P>) {
        self.wanted.send_replace(Some(policies(wanted)));
    }

    /// The programs' counters, for [`crate::metrics::Metrics::install_ebpf_counters`]; reads
    /// fail once the programs are detached.
    pub fn counters(&self) -> Arc<dyn CounterSource> {
        Arc::new(EnrollmentCounters(self.shared.clone()))
    }

    /// Stops reconciling and detaches the programs: enrolled pods' new connections then go
    /// direct, so call this only after the proxy has drained. With pinning the programs stay
    /// attached instead (pods keep failing closed until the next start adopts them).
    pub async fn shutdown(self) {
        drop(self.wanted);
        let _ = self.drain.drain(Duration::from_secs(5)).await;
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "enrollment loop ended abnormally");
        }
        let detached = lock(&self.shared).take();
        let pods = detached.as_ref().map_or(0, |e| e.enrolled().len());
        let pinned = detached
            .as_ref()
            .and_then(|e| e.redirect().pinned().map(|p| p.display().to_string()));
        drop(detached);
        match pinned {
            Some(pinned) => {
                tracing::info!(pods, %pinned, "ebpf redirection left attached (pinned)")
            }
            None => tracing::info!(pods, "ebpf redirection detached"),
        }
    }
}
