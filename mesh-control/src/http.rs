//! The HTTP endpoint: `/healthz/ready` (200 once config is synced, else 503),
//! `/healthz/status` (always 200: `ready`, or `not ready: <why>`) and `/metrics` (Prometheus
//! text), served by the shared `mesh_core::ops` endpoint. While not ready, the reason is also
//! logged periodically ([`warn_while_not_ready`]), since probes do not show response bodies.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::drain::DrainWatch;
use mesh_core::ops::{self, OpsRoutes, Page, Readiness};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::feed::hub::Hub;
use crate::source::kube::root_cert::RootCertStats;

/// Why the service is not ready yet (`None`: nothing is missing, e.g. the initial sync from the
/// API server is complete).
pub type NotReadyReason = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The status line of `/healthz/status`.
fn status_text(hub: &Hub, reason: &NotReadyReason) -> String {
    match (hub.is_ready(), reason()) {
        (true, _) => "ready\n".to_string(),
        (false, Some(why)) => format!("not ready: {why}\n"),
        (false, None) => "not ready: no configuration published yet\n".to_string(),
    }
}

/// Logs the reason every `every` until the service is ready or the drain starts.
pub async fn warn_while_not_ready(
    hub: Arc<Hub>,
    reason: NotReadyReason,
    every: Duration,
    mut drain: DrainWatch,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    while !hub.is_ready() {
        tokio::select! {
            _ = ticks.tick() => {}
            () = drain.signaled() => return,
        }
        if let (false, Some(why)) = (hub.is_ready(), reason()) {
            tracing::warn!(reason = %why, "mesh-control not ready");
        }
    }
}

/// Gauges describing the published config, refreshed at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    version: Gauge,
    workloads: Gauge,
    services: Gauge,
    policies: Gauge,
    routes: Gauge,
    rejected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_control");
        let metrics = Self {
            version: Gauge::default(),
            workloads: Gauge::default(),
            services: Gauge::default(),
            policies: Gauge::default(),
            routes: Gauge::default(),
            rejected: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "config_version",
            "node feed version",
            metrics.version.clone(),
        );
        registry.register(
            "workloads",
            "workloads in the published config",
            metrics.workloads.clone(),
        );
        registry.register(
            "services",
            "services in the published config",
            metrics.services.clone(),
        );
        registry.register(
            "policies",
            "authorization policies in the published config",
            metrics.policies.clone(),
        );
        registry.register(
            "routes",
            "routes in the published config",
            metrics.routes.clone(),
        );
        registry.register(
            "rejected_resources",
            "resources rejected by validation",
            metrics.rejected.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The config gauges plus the trust bundle publisher's counters and the gRPC port's failed
    /// TLS handshakes.
    pub fn with_counters(root_cert: &RootCertStats, grpc_tls_failures: &Counter) -> Self {
        let mut metrics = Self::default();
        root_cert.register(&mut metrics.registry);
        metrics.registry.register(
            "grpc_tls_handshake_failures",
            "tls handshakes on the grpc port that failed or timed out",
            grpc_tls_failures.clone(),
        );
        metrics
    }

    /// Refreshes the gauges from `hub` and renders the text format.
    pub fn render(&self, hub: &Hub) -> String {
        let snapshot = hub.latest();
        self.version
            .set(i64::try_from(hub.version()).unwrap_or(i64::MAX));
        self.workloads.set(count(snapshot.workloads.len()));
        self.services.set(count(snapshot.services.len()));
        self.policies.set(count(snapshot.policies.len()));
        self.routes.set(count(snapshot.routes.len()));
        self.rejected.set(count(snapshot.diagnostics.len()));
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Plain text.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Serves `/healthz/ready` (200 once the config is synced, else 503), `/healthz/status` and
/// `/metrics` until the drain starts, on the shared ops endpoint.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    reason: NotReadyReason,
    drain: DrainWatch,
) {
    let synced = Arc::clone(&hub);
    let readiness = Readiness::with_check(Arc::new(move || synced.is_ready()));
    let status_hub = Arc::clone(&hub);
    let status: Page = Arc::new(move || (PLAIN_TEXT, status_text(&status_hub, &reason)));
    let page: Page = Arc::new(move || (PROMETHEUS_TEXT, metrics.render(&hub)));
    let routes = OpsRoutes::default()
        .readiness(readiness)
        .page("/healthz/status", status)
        .page("/metrics", page);
    ops::serve(listener, routes, drain).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::model::Snapshot;

    /// The reason is asked for (and logged) once per interval while not ready; the task ends
    /// once the hub is ready.
    #[tokio::test(start_paused = true)]
    async fn the_reason_is_logged_periodically_until_ready() {
        let hub = Arc::new(Hub::with_feed_id("h".into(), 10));
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let reason: NotReadyReason = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some("waiting for the first list of: Pod".into())
        });
        let (_trigger, watch) = mesh_core::drain::channel();
        let every = Duration::from_secs(15);
        let task = tokio::spawn(warn_while_not_ready(
            Arc::clone(&hub),
            Arc::clone(&reason),
            every,
            watch,
        ));
        tokio::time::sleep(every * 3 + Duration::from_secs(1)).await;
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert_eq!(
            status_text(&hub, &reason),
            "not ready: waiting for the first list of: Pod\n"
        );
        hub.apply(Arc::new(Snapshot::default()));
        tokio::time::timeout(every * 2, task)
            .await
            .expect("ends once ready")
            .expect("no panic");
        assert_eq!(status_text(&hub, &reason), "ready\n");
    }
}
