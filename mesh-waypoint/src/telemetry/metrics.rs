//! Istio's standard HTTP metrics, as a waypoint reports them: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`, with
//! Istio's label names in a typed label struct. [`Metrics`] is the per-request telemetry handle
//! the proxy holds, so it also carries the OTLP span sink when export is configured.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use std::{collections::HashSet, sync::Arc};

use mesh_core::hbone::baggage::WorkloadMeta;
use parking_lot::Mutex;

use super::otlp::SpanSink;

/// Istio's default duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Labels of every request metric (Istio standard labels; unknown values are `unknown`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Always `waypoint`.
    pub reporter: &'static str,
    /// Peer SPIFFE identity without the scheme, or `unknown`.
    pub source_principal: String,
    /// Source workload (its controller's name), from the HBONE `baggage`, or `unknown`.
    pub source_workload: String,
    /// Source namespace, from the HBONE `baggage`, or `unknown`.
    pub source_workload_namespace: String,
    /// Source canonical service, from the HBONE `baggage`, or `unknown`.
    pub source_canonical_service: String,
    /// Source canonical revision, from the HBONE `baggage`, or `unknown`.
    pub source_canonical_revision: String,
    /// The requested host (authority without port).
    pub destination_service: String,
    /// The destination the route chose, or `unknown` for local answers.
    pub destination_service_name: String,
    /// The subset (version) chosen, or `unknown`.
    pub destination_version: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// Status sent downstream.
    pub response_code: u16,
    /// Envoy response flags, `-` when none.
    pub response_flags: &'static str,
    /// `mutual_tls` when the peer is identified, else `none`.
    pub connection_security_policy: &'static str,
}

#[derive(Debug, Clone)]
struct Buckets(fn() -> Histogram);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn bytes_histogram() -> Histogram {
    // 1 B .. 1 GB, decades.
    Histogram::new(exponential_buckets(1.0, 10.0, 10))
}

/// Distinct source workloads (from peers' `baggage`) the metrics name before further new ones
/// are reported as `unknown`: peers choose those values, so they must not grow memory.
pub const MAX_SOURCE_WORKLOADS: usize = 1024;

/// The request metric families.
#[derive(Debug, Clone)]
pub struct Metrics {
    sources: Arc<Mutex<HashSet<WorkloadMeta>>>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, Buckets>,
    request_bytes: Family<RequestLabels, Histogram, Buckets>,
    response_bytes: Family<RequestLabels, Histogram, Buckets>,
    spans: Option<SpanSink>,
}

impl Metrics {
    /// Creates the families and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            sources: Arc::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(Buckets(duration_histogram)),
            request_bytes: Family::new_with_constructor(Buckets(bytes_histogram)),
            response_bytes: Family::new_with_constructor(Buckets(bytes_histogram)),
            spans: None,
        };
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration, first request byte to last response byte",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    /// Whether `source` may name a request's source in the metrics: one already named, or a
    /// new one while fewer than [`MAX_SOURCE_WORKLOADS`] are.
    pub fn admit_source(&self, source: &WorkloadMeta) -> bool {
        let mut sources = self.sources.lock();
        if sources.contains(source) {
            return true;
        }
        if sources.len() >= MAX_SOURCE_WORKLOADS {
            return false;
        }
        sources.insert(source.clone());
        true
    }

    /// Also sends a span per sampled request to `sink`.
    #[must_use]
    pub fn with_spans(mut self, sink: SpanSink) -> Self {
        self.spans = Some(sink);
        self
    }

    /// The span sink, when OTLP export is on.
    pub fn spans(&self) -> Option<&SpanSink> {
        self.spans.as_ref()
    }

    /// Records one finished request.
    pub fn record(
        &self,
        labels: &RequestLabels,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(duration_ms);
        self.request_bytes
            .get_or_create(labels)
            .observe(request_bytes as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(response_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_from_peers_are_bounded() {
        let m = Metrics::new(&mut Registry::default());
        let meta = |i: usize| WorkloadMeta {
            namespace: "shop".into(),
            workload_name: format!("invented-{i}"),
            ..WorkloadMeta::default()
        };
        for i in 0..MAX_SOURCE_WORKLOADS {
            assert!(m.admit_source(&meta(i)), "{i} admitted while there is room");
        }
        for i in MAX_SOURCE_WORKLOADS..10 * MAX_SOURCE_WORKLOADS {
            assert!(!m.admit_source(&meta(i)), "{i} folds into unknown");
        }
        assert!(m.admit_source(&meta(0)), "names already in use stay named");
    }

    #[test]
    fn records_with_istio_names_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let labels = RequestLabels {
            reporter: "waypoint",
            source_principal: "unknown".into(),
            source_workload: "unknown".into(),
            source_workload_namespace: "unknown".into(),
            source_canonical_service: "unknown".into(),
            source_canonical_revision: "unknown".into(),
            destination_service: "reviews".into(),
            destination_service_name: "reviews".into(),
            destination_version: "v2".into(),
            request_protocol: "http",
            response_code: 200,
            response_flags: "-",
            connection_security_policy: "none",
        };
        m.record(&labels, 3.0, 10, 2000);
        m.record(&labels, 7.0, 0, 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .expect("counter line");
        assert!(line.contains("destination_version=\"v2\""), "{line}");
        assert!(line.contains("response_code=\"200\""), "{line}");
        assert!(line.ends_with(" 2"), "{line}");
        assert!(
            text.contains("istio_request_duration_milliseconds_sum{"),
            "{text}"
        );
        assert!(text.contains("istio_response_bytes_bucket{"), "{text}");
        let le_10 = text
            .lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains("le=\"10.0\"")
            })
            .expect("10 ms bucket");
        assert!(le_10.ends_with(" 2"), "{le_10}");
    }
}
