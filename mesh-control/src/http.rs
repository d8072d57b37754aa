//! The HTTP endpoint: `/healthz/ready` (200 once config is synced, else 503) and `/metrics`
//! (Prometheus text), served under the drain primitive with a header-read timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::drain::DrainWatch;
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

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn handle(hub: &Hub, metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/healthz/ready" if hub.is_ready() => reply(StatusCode::OK, "ready\n".into()),
        "/healthz/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "config not synced yet\n".into(),
        ),
        "/metrics" => reply(StatusCode::OK, metrics.render(hub)),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves until drain.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    mut drain: DrainWatch,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "http accept failed");
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        let (hub, metrics, mut conn_drain) =
            (Arc::clone(&hub), Arc::clone(&metrics), drain.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = handle(&hub, &metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "http connection ended with error");
                },
                () = conn_drain.signaled() => {}
            }
        });
    }
}
