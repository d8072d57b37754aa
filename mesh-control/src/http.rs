//! The HTTP endpoint: `/healthz/ready` (200 once config is synced, else 503) and `/metrics`
//! (Prometheus text), served by the shared `mesh_core::ops` endpoint.

use std::sync::Arc;

use mesh_core::drain::DrainWatch;
use mesh_core::ops::{self, OpsRoutes, Page, Readiness};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::feed::hub::Hub;

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

/// Serves `/healthz/ready` (200 once the config is synced, else 503) and `/metrics` until the
/// drain starts, on the shared ops endpoint.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, metrics: Arc<Metrics>, drain: DrainWatch) {
    let synced = Arc::clone(&hub);
    let readiness = Readiness::with_check(Arc::new(move || synced.is_ready()));
    let page: Page = Arc::new(move || (PROMETHEUS_TEXT, metrics.render(&hub)));
    let routes = OpsRoutes::default()
        .readiness(readiness)
        .page("/metrics", page);
    ops::serve(listener, routes, drain).await;
}
