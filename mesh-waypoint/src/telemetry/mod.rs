//! Per-request telemetry: Istio metrics, trace propagation, and one access-log event per
//! request, emitted when the response body is finished (or dropped), so duration and byte
//! counts cover the whole exchange.
//!
//! The access log is a `tracing` event with target `access_log` and structured fields; when
//! OTLP export is configured ([`otlp`]), sampled requests also produce a server span.

pub mod metrics;
pub mod otlp;
pub mod trace;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use http::{Response, StatusCode};
use mesh_core::hbone::baggage::{label, WorkloadMeta};
use tokio::time::Instant;

use self::metrics::RequestLabels;
pub use self::{metrics::Metrics, trace::TraceContext};
use crate::{
    body::{self, Body},
    proxy::{ResponseFlags, UpstreamAddr},
};

/// What is known about a request while it is handled.
#[derive(Debug)]
pub struct RequestLog {
    start: Instant,
    started_at: SystemTime,
    /// Method.
    pub method: http::Method,
    /// Path (no query: queries can carry secrets).
    pub path: String,
    /// Requested host, port stripped.
    pub host: String,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// Peer SPIFFE ID (`spiffe://td/ns/x/sa/y`), as Istio's `source_principal` label has it.
    pub principal: Option<String>,
    /// Source workload, when the HBONE peer sent it (`baggage`).
    pub workload: Option<WorkloadMeta>,
    /// Downstream address.
    pub peer: std::net::SocketAddr,
    /// Matched route and rule, when any.
    pub route: Option<String>,
    /// Destination and subset chosen, when any.
    pub destination: Option<(String, Option<String>)>,
    /// Trace context.
    pub trace: TraceContext,
    request_bytes: Arc<AtomicU64>,
}

impl RequestLog {
    /// Starts the record for a request.
    pub fn start(
        req: &http::Request<Body>,
        peer: std::net::SocketAddr,
        identity: Option<&str>,
        trace: TraceContext,
    ) -> Self {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Self {
            start: Instant::now(),
            started_at: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            host: String::new(),
            protocol: if grpc { "grpc" } else { "http" },
            principal: identity.map(str::to_owned),
            workload: None,
            peer,
            route: None,
            destination: None,
            trace,
            request_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Wraps the request body so its bytes are counted.
    pub fn count_request(&self, body: Body) -> Body {
        body::counted(body, self.request_bytes.clone())
    }

    /// Wraps the response so that, when its body ends, metrics and the access log are emitted.
    pub fn finish(self, response: Response<Body>, metrics: Arc<Metrics>) -> Response<Body> {
        let status = response.status();
        let flags = response
            .extensions()
            .get::<ResponseFlags>()
            .map_or("-", |f| f.0);
        let upstream = response.extensions().get::<UpstreamAddr>().map(|u| u.0);
        let response_bytes = Arc::new(AtomicU64::new(0));
        let done = Completion {
            log: Some(self),
            status,
            flags,
            upstream,
            response_bytes: response_bytes.clone(),
            metrics,
        };
        response.map(|b| body::with_guard(body::counted(b, response_bytes), done))
    }
}

struct Completion {
    log: Option<RequestLog>,
    status: StatusCode,
    flags: &'static str,
    upstream: Option<std::net::SocketAddr>,
    response_bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else { return };
        let duration_ms = log.start.elapsed().as_secs_f64() * 1000.0;
        let request_bytes = log.request_bytes.load(Ordering::Relaxed);
        let response_bytes = self.response_bytes.load(Ordering::Relaxed);
        let (destination, subset) = log.destination.clone().unwrap_or_default();
        let source = log
            .workload
            .as_ref()
            .filter(|meta| self.metrics.admit_source(meta));
        let labels = RequestLabels {
            reporter: "waypoint",
            source_principal: log.principal.clone().unwrap_or_else(|| "unknown".into()),
            source_workload: label(source, |w| &w.workload_name),
            source_workload_namespace: label(source, |w| &w.namespace),
            source_canonical_service: label(source, |w| &w.canonical_service),
            source_canonical_revision: label(source, |w| &w.canonical_revision),
            // The configured destination, never the client's `Host`: a label value per
            // invented host name would grow the metrics without bound.
            destination_service: if destination.is_empty() {
                "unknown".into()
            } else {
                destination.clone()
            },
            destination_service_name: if destination.is_empty() {
                "unknown".into()
            } else {
                destination.clone()
            },
            destination_version: subset.clone().unwrap_or_else(|| "unknown".into()),
            request_protocol: log.protocol,
            response_code: self.status.as_u16(),
            response_flags: self.flags,
            connection_security_policy: if log.principal.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
        };
        self.metrics
            .record(&labels, duration_ms, request_bytes, response_bytes);
        if let Some(spans) = self.metrics.spans().filter(|_| log.trace.sampled) {
            let outcome = otlp::span::Outcome {
                status: self.status,
                flags: self.flags,
            };
            spans.record(otlp::span::server_span(&log, outcome));
        }
        tracing::info!(
            target: "access_log",
            method = %log.method,
            host = %log.host,
            path = %log.path,
            protocol = log.protocol,
            status = self.status.as_u16(),
            flags = self.flags,
            duration_ms = format_args!("{duration_ms:.3}"),
            request_bytes,
            response_bytes,
            route = log.route.as_deref().unwrap_or("-"),
            destination = %destination,
            subset = subset.as_deref().unwrap_or("-"),
            upstream = %self.upstream.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            peer = %log.peer,
            principal = log.principal.as_deref().unwrap_or("-"),
            trace_id = %log.trace.trace_id_hex(),
            request_id = %log.trace.request_id,
            "request"
        );
    }
}
