//! OTLP span export: one server span per request, sent to an OpenTelemetry collector over
//! OTLP/gRPC (`TraceService.Export`) when `--otlp-endpoint` is set.
//!
//! Requests never wait for the exporter: a finished request puts its span on a bounded queue
//! with `try_send`, and a full queue drops the span and counts it
//! (`weft_waypoint_otlp_spans_dropped_total`). One task takes spans off the queue in batches,
//! exports each batch with a timeout, backs off after a failure (the failed batch is dropped and
//! counted, as OpenTelemetry SDK exporters do), and on drain flushes what is queued.

mod export;
pub mod proto;
pub mod span;

use std::time::Duration;

use mesh_core::drain::DrainWatch;
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::mpsc;

pub use self::export::{Export, ExportError, ExportResult};
use self::proto::{trace_service_client::TraceServiceClient, Span};

/// Exporter settings; [`OtlpConfig::new`] has the production defaults.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Collector address, `http://collector:4317` (plain HTTP/2; no TLS to the collector).
    pub endpoint: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Spans queued at most; more are dropped and counted.
    pub queue_capacity: usize,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How long a partial batch waits for more spans before it is sent.
    pub batch_delay: Duration,
    /// Deadline of one export call (connect included).
    pub export_timeout: Duration,
    /// First wait after a failed export (jittered to 50-100 %); doubles per failure up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between failed exports.
    pub max_backoff: Duration,
}

impl OtlpConfig {
    /// Defaults: 2048 queued spans, batches of 512 or 1 s, 10 s export timeout, backoff 1..30 s.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            queue_capacity: 2048,
            max_batch: 512,
            batch_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why the exporter cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is no valid URI.
    #[error("otlp endpoint {endpoint:?} is not a valid uri: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// TLS to the collector is not built in.
    #[error("otlp endpoint {endpoint:?} uses https; only plain http collectors (port 4317) are supported")]
    Https { endpoint: String },
}

/// Exporter counters, registered as `weft_waypoint_otlp_spans_*`.
#[derive(Debug, Clone, Default)]
pub struct SpanStats {
    /// Spans dropped because the queue was full.
    pub dropped: Counter,
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost to failed or timed-out exports.
    pub failed: Counter,
}

impl SpanStats {
    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "dropped",
                "Spans dropped because the export queue was full",
                &self.dropped,
            ),
            (
                "exported",
                "Spans accepted by the OTLP collector",
                &self.exported,
            ),
            ("failed", "Spans lost to failed OTLP exports", &self.failed),
        ];
        for (name, help, counter) in counters {
            let name = format!("weft_waypoint_otlp_spans_{name}");
            registry.register(name, help, counter.clone());
        }
    }
}

/// Where finished requests put their spans; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct SpanSink {
    queue: mpsc::Sender<Span>,
    stats: SpanStats,
}

impl SpanSink {
    /// A sink and the receiving end of its bounded queue (`capacity` at least 1).
    pub fn channel(capacity: usize, stats: SpanStats) -> (Self, mpsc::Receiver<Span>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        (Self { queue, stats }, receiver)
    }

    /// Queues `span`; when the queue is full (or the exporter is gone) drops and counts it.
    pub fn record(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped.inc();
        }
    }

    /// The exporter's counters.
    pub fn stats(&self) -> &SpanStats {
        &self.stats
    }
}

/// Starts the exporter task for `config` (the collector is dialled lazily, on first export),
/// registering its counters; the task flushes and ends on drain.
pub fn start(
    config: &OtlpConfig,
    registry: &mut Registry,
    drain: DrainWatch,
) -> Result<SpanSink, OtlpError> {
    let client = client(config)?;
    let stats = SpanStats::default();
    stats.register(registry);
    Ok(spawn(config, client, stats, drain))
}

/// Starts the exporter task over any [`Export`] (tests use in-process collectors).
pub fn spawn(
    config: &OtlpConfig,
    exporter: impl Export,
    stats: SpanStats,
    drain: DrainWatch,
) -> SpanSink {
    let (sink, receiver) = SpanSink::channel(config.queue_capacity, stats.clone());
    let task = export::Task::new(config, exporter, stats);
    tokio::spawn(task.run(receiver, drain));
    sink
}

fn client(config: &OtlpConfig) -> Result<TraceServiceClient<tonic::transport::Channel>, OtlpError> {
    if config.endpoint.starts_with("https:") {
        return Err(OtlpError::Https {
            endpoint: config.endpoint.clone(),
        });
    }
    let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|source| OtlpError::Endpoint {
            endpoint: config.endpoint.clone(),
            source,
        })?
        .connect_timeout(config.export_timeout);
    Ok(TraceServiceClient::new(endpoint.connect_lazy()))
}
