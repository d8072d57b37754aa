//! Publishes the mesh trust bundle as the ConfigMap `weft-ca-root-cert` (key `root-cert.pem`)
//! in every namespace, as istiod publishes `istio-ca-root-cert`, so nodes and waypoints mount
//! the root they verify peers with instead of users copying it by hand.
//!
//! Once the initial sync from the API server is done (the hub's first snapshot), the publisher
//! server-side-applies the ConfigMap into every active namespace; then into each namespace that
//! appears later (on the next published snapshot); and everywhere again every resync period,
//! which repairs a deleted or edited ConfigMap. What was applied is remembered per namespace
//! (name and uid, so a re-created namespace counts as new), so the many snapshot versions of a
//! busy cluster cost no API calls. A failed apply is logged and retried after a capped,
//! jittered backoff; the task never gives up and ends only on drain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use mesh_core::backoff::Backoff;
use mesh_core::drain::DrainWatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::feed::hub::Published;
use crate::registry::Registry;
use crate::store::Store;

/// Name of the ConfigMap holding the trust bundle in every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "weft-ca-root-cert";
/// Key of the PEM trust bundle in [`ROOT_CERT_CONFIGMAP`].
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Server-side apply field manager of the ConfigMaps.
pub const FIELD_MANAGER: &str = "mesh-control";
/// Label marking the ConfigMaps as mesh-control's.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mesh-control");
/// Floors of the resync and retry periods.
const MIN_RESYNC: Duration = Duration::from_secs(1);
const MIN_RETRY: Duration = Duration::from_millis(10);

/// How the trust bundle is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCertSettings {
    /// Re-apply into every namespace this often, repairing deleted or edited ConfigMaps.
    pub resync: Duration,
    /// Deadline of one apply request.
    pub apply_timeout: Duration,
    /// First delay before failed applies are retried; doubles (jittered) up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest delay between retries of failed applies.
    pub retry_max: Duration,
    /// Apply requests in flight at once.
    pub concurrency: usize,
    /// Namespaces never written to (Kubernetes' own, as istiod skips them).
    pub skip_namespaces: BTreeSet<String>,
}

impl Default for RootCertSettings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(600),
            apply_timeout: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            concurrency: 8,
            skip_namespaces: ["kube-system", "kube-public", "kube-node-lease"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl RootCertSettings {
    /// With floors on the periods, so a zero setting cannot turn the loop into a busy spin.
    fn clamped(mut self) -> Self {
        self.resync = self.resync.max(MIN_RESYNC);
        self.retry_initial = self.retry_initial.max(MIN_RETRY);
        self.retry_max = self.retry_max.max(self.retry_initial);
        self
    }
}

/// Apply outcomes, for `/metrics`; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct RootCertStats {
    /// ConfigMaps applied.
    pub applies: Counter,
    /// Applies that failed (API error or timeout).
    pub failures: Counter,
}

impl RootCertStats {
    /// Registers `root_cert_applies_total` and `root_cert_apply_failures_total`.
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "root_cert_applies",
            "trust bundle configmaps applied into namespaces",
            self.applies.clone(),
        );
        registry.register(
            "root_cert_apply_failures",
            "trust bundle configmap applies that failed (retried later)",
            self.failures.clone(),
        );
    }
}

/// Why the trust bundle could not be published.
#[derive(Debug, thiserror::Error)]
pub enum RootCertError {
    /// The bundle is not PEM certificates.
    #[error("the trust bundle holds no pem certificate ({len} bytes), refusing to publish it")]
    NoCertificate {
        /// Bundle length.
        len: usize,
    },
    /// The API server refused the apply.
    #[error("cannot apply configmap weft-ca-root-cert in namespace {namespace}: {source} (may mesh-control patch configmaps? see deploy/10-rbac.yaml)")]
    Api {
        /// Target namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The apply did not complete in time.
    #[error("applying configmap weft-ca-root-cert in namespace {namespace} timed out after {after:?} (is the api server overloaded?)")]
    Timeout {
        /// Target namespace.
        namespace: String,
        /// The deadline.
        after: Duration,
    },
}

/// A namespace to publish into: name and uid.
type Target = (String, String);

fn is_terminating(ns: &Namespace) -> bool {
    let phase = ns.status.as_ref().and_then(|s| s.phase.as_deref());
    ns.metadata.deletion_timestamp.is_some() || phase == Some("Terminating")
}

/// Namespaces that should hold the ConfigMap (applying into a terminating one is refused).
fn active_namespaces(registry: &Registry, skip: &BTreeSet<String>) -> BTreeMap<String, String> {
    registry
        .namespaces()
        .filter(|ns| !is_terminating(ns))
        .filter_map(|ns| {
            let name = ns.metadata.name.as_ref().filter(|n| !skip.contains(*n))?;
            Some((name.clone(), ns.metadata.uid.clone().unwrap_or_default()))
        })
        .collect()
}

/// What was applied and what failed, per namespace; bounded by the namespace count.
#[derive(Debug, Default)]
struct Tracker {
    applied: BTreeMap<String, String>,
    failed: BTreeMap<String, String>,
}

impl Tracker {
    /// Forgets vanished namespaces; returns the new (or re-created) ones, plus the failed ones
    /// when `retry`.
    fn plan(&mut self, current: &BTreeMap<String, String>, retry: bool) -> Vec<Target> {
        self.applied
            .retain(|name, uid| current.get(name) == Some(uid));
        self.failed
            .retain(|name, uid| current.get(name) == Some(uid));
        current
            .iter()
            .filter(|(name, _)| !self.applied.contains_key(*name))
            .filter(|(name, _)| retry || !self.failed.contains_key(*name))
            .map(|(name, uid)| (name.clone(), uid.clone()))
            .collect()
    }

    fn record(&mut self, (name, uid): Target, ok: bool) {
        if ok {
            self.failed.remove(&name);
            self.applied.insert(name, uid);
        } else {
            self.failed.insert(name, uid);
        }
    }
}

/// Applies the ConfigMap into one namespace at a time.
struct Applier {
    client: Client,
    bundle_pem: String,
    params: PatchParams,
    timeout: Duration,
    stats: RootCertStats,
}

impl Applier {
    fn config_map(&self, namespace: &str) -> ConfigMap {
        let (label, value) = MANAGED_BY;
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(ROOT_CERT_CONFIGMAP.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(label.to_string(), value.to_string())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                ROOT_CERT_KEY.to_string(),
                self.bundle_pem.clone(),
            )])),
            ..ConfigMap::default()
        }
    }

    async fn apply(&self, namespace: &str) -> Result<(), RootCertError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let patch = Patch::Apply(self.config_map(namespace));
        let request = api.patch(ROOT_CERT_CONFIGMAP, &self.params, &patch);
        let result = match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(RootCertError::Api {
                namespace: namespace.to_string(),
                source,
            }),
            Err(_) => Err(RootCertError::Timeout {
                namespace: namespace.to_string(),
                after: self.timeout,
            }),
        };
        match &result {
            Ok(()) => self.stats.applies.inc(),
            Err(_) => self.stats.failures.inc(),
        };
        result
    }

    /// Applies into every target, `concurrency` at a time; returns whether each succeeded.
    async fn apply_all(&self, targets: Vec<Target>, concurrency: usize) -> Vec<(Target, bool)> {
        futures::stream::iter(targets)
            .map(|target| async move {
                let result = self.apply(&target.0).await;
                if let Err(err) = &result {
                    tracing::warn!(namespace = %target.0, error = %err, "cannot publish the trust bundle, retrying later");
                }
                (target, result.is_ok())
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await
    }
}

/// The publisher's state between rounds.
struct Publisher {
    applier: Applier,
    store: Arc<Store>,
    settings: RootCertSettings,
    tracker: Tracker,
    backoff: Backoff,
    /// The last retry round succeeded: the next failure starts from the initial delay.
    backoff_reset: bool,
    resync_at: Instant,
    retry_at: Option<Instant>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Publisher {
    fn new(applier: Applier, store: Arc<Store>, settings: RootCertSettings) -> Self {
        Self {
            applier,
            store,
            backoff: Backoff::new(settings.retry_initial, settings.retry_max),
            backoff_reset: false,
            resync_at: Instant::now() + settings.resync,
            retry_at: None,
            tracker: Tracker::default(),
            settings,
        }
    }

    /// One round: applies into the namespaces the tracker says need it.
    async fn round(&mut self, retry: bool) {
        let skip = &self.settings.skip_namespaces;
        let current = self
            .store
            .read(|registry| active_namespaces(registry, skip));
        let targets = self.tracker.plan(&current, retry);
        if targets.is_empty() {
            return;
        }
        let attempted = targets.len();
        let results = self
            .applier
            .apply_all(targets, self.settings.concurrency)
            .await;
        for (target, ok) in results {
            self.tracker.record(target, ok);
        }
        let failed = self.tracker.failed.len();
        tracing::info!(
            attempted,
            failed,
            "published the trust bundle configmap into namespaces"
        );
        self.schedule_retry();
    }

    fn schedule_retry(&mut self) {
        if self.tracker.failed.is_empty() {
            self.retry_at = None;
            self.backoff_reset = true;
        } else if self.retry_at.is_none() {
            let delay = self.backoff.next(std::mem::take(&mut self.backoff_reset));
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    /// Waits for a reason to run a round: a published snapshot, the resync or a due retry.
    /// Returns whether failed namespaces are due, or `None` on drain.
    async fn wake(
        &mut self,
        published: &mut watch::Receiver<Published>,
        drain: &mut DrainWatch,
    ) -> Option<bool> {
        tokio::select! {
            changed = published.changed() => changed.ok().map(|()| false),
            () = tokio::time::sleep_until(self.resync_at) => {
                self.resync_at = Instant::now() + self.settings.resync;
                self.tracker.applied.clear();
                Some(true)
            }
            () = sleep_until(self.retry_at) => {
                self.retry_at = None;
                Some(true)
            }
            () = drain.signaled() => None,
        }
    }

    async fn run(mut self, mut drain: DrainWatch) {
        let mut published = self.store.hub().subscribe_snapshots();
        // The hub may be ready already: look at the current snapshot first.
        published.mark_changed();
        while let Some(retry) = self.wake(&mut published, &mut drain).await {
            if !self.store.hub().is_ready() {
                continue;
            }
            tokio::select! {
                () = self.round(retry) => {}
                () = drain.signaled() => return,
            }
        }
    }
}

/// Publishes `bundle_pem` into every namespace until `drain` fires; see the module docs.
/// Returns at once (logging why) if the bundle holds no PEM certificate, rather than overwrite
/// good ConfigMaps with a bundle every peer would fail against.
pub async fn run(
    client: Client,
    store: Arc<Store>,
    bundle_pem: String,
    settings: RootCertSettings,
    stats: RootCertStats,
    drain: DrainWatch,
) {
    if !bundle_pem.contains("-----BEGIN CERTIFICATE-----") {
        let err = RootCertError::NoCertificate {
            len: bundle_pem.len(),
        };
        tracing::error!(error = %err, "not publishing the trust bundle");
        return;
    }
    let settings = settings.clamped();
    let applier = Applier {
        client,
        bundle_pem,
        params: PatchParams::apply(FIELD_MANAGER).force(),
        timeout: settings.apply_timeout,
        stats,
    };
    Publisher::new(applier, store, settings).run(drain).await;
}

#[cfg(test)]
mod tests;
