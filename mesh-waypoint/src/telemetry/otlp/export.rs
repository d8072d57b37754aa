//! The exporter task: batches spans off the queue, exports each batch with a deadline, backs
//! off after failures, and flushes the queue on drain.

use std::{future::Future, pin::Pin, time::Duration};

use mesh_core::{backoff::Backoff, drain::DrainWatch};
use tokio::{sync::mpsc, time::timeout};

use super::{
    proto::{
        any_value, trace_service_client::TraceServiceClient, AnyValue, ExportTraceServiceRequest,
        InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
    },
    OtlpConfig, SpanStats,
};

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The collector answered with an error (or could not be reached).
    #[error("otlp export failed: {0}; is the collector at --otlp-endpoint up?")]
    Status(#[from] tonic::Status),
    /// No answer within the export timeout.
    #[error("otlp export got no answer within {0:?}")]
    Timeout(Duration),
}

/// What an export call returns: the spans the collector rejected (OTLP partial success).
pub type ExportResult = Result<u64, ExportError>;

/// One export call; implemented by the generated gRPC client.
pub trait Export: Send + 'static {
    /// Sends one request.
    fn export(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + '_>>;
}

impl Export for TraceServiceClient<tonic::transport::Channel> {
    fn export(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + '_>> {
        Box::pin(async move {
            let response = TraceServiceClient::export(self, request)
                .await?
                .into_inner();
            let rejected = response.partial_success.map_or(0, |p| p.rejected_spans);
            Ok(u64::try_from(rejected).unwrap_or(0))
        })
    }
}

/// The exporter's state.
pub(super) struct Task<E> {
    exporter: E,
    stats: SpanStats,
    resource: Resource,
    max_batch: usize,
    batch_delay: Duration,
    export_timeout: Duration,
    backoff: Backoff,
}

impl<E: Export> Task<E> {
    pub(super) fn new(config: &OtlpConfig, exporter: E, stats: SpanStats) -> Self {
        Self {
            exporter,
            stats,
            resource: resource(&config.service_name),
            max_batch: config.max_batch.max(1),
            batch_delay: config.batch_delay,
            export_timeout: config.export_timeout,
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
        }
    }

    /// Exports until the drain starts (or every sink is gone), then flushes.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Span>, mut drain: DrainWatch) {
        // Spans taken off the queue but not yet sent live here, outside the cancelled future,
        // so a drain that interrupts a forming batch still flushes them.
        let mut pending = Vec::with_capacity(self.max_batch);
        loop {
            let more = tokio::select! {
                _ = drain.signaled() => break,
                more = fill(&mut pending, &mut queue, self.max_batch, self.batch_delay) => more,
            };
            if !more {
                break;
            }
            if !self.send(std::mem::take(&mut pending)).await {
                let wait = self.backoff.next(false);
                tokio::select! {
                    _ = drain.signaled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        self.flush(pending, &mut queue).await;
        drop(drain);
    }

    /// Sends `pending` and what is queued now, in batches, stopping at the first failure.
    async fn flush(&mut self, mut batch: Vec<Span>, queue: &mut mpsc::Receiver<Span>) {
        queue.close();
        while let Ok(span) = queue.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch && !self.send(std::mem::take(&mut batch)).await {
                return;
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
        tracing::debug!("otlp exporter flushed");
    }

    /// Exports one batch; counts the outcome and returns whether it succeeded.
    async fn send(&mut self, spans: Vec<Span>) -> bool {
        let count = spans.len() as u64;
        let request = self.request(spans);
        let outcome = match timeout(self.export_timeout, self.exporter.export(request)).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout(self.export_timeout)),
        };
        match outcome {
            // A partial success is final (OTLP: never retried): count, and carry on.
            Ok(rejected) => {
                let rejected = rejected.min(count);
                if rejected > 0 {
                    tracing::warn!(rejected, spans = count, "otlp collector rejected spans");
                }
                self.stats.exported.inc_by(count - rejected);
                self.stats.failed.inc_by(rejected);
                self.backoff.reset();
                true
            }
            Err(error) => {
                self.stats.failed.inc_by(count);
                tracing::warn!(%error, spans = count, "otlp export failed, spans dropped");
                false
            }
        }
    }

    fn request(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        let scope = InstrumentationScope {
            name: "mesh-waypoint".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// Waits for a first span (unless `batch` has some), then takes more until the batch holds
/// `max` or `delay` passes; false when the queue is closed and `batch` is empty.
async fn fill(
    batch: &mut Vec<Span>,
    queue: &mut mpsc::Receiver<Span>,
    max: usize,
    delay: Duration,
) -> bool {
    if batch.is_empty() {
        match queue.recv().await {
            Some(span) => batch.push(span),
            None => return false,
        }
    }
    let deadline = tokio::time::Instant::now() + delay;
    while batch.len() < max {
        // `recv` is cancel-safe: a span is either in `batch` or still queued.
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Ok(Some(span)) => batch.push(span),
            Ok(None) | Err(_) => break,
        }
    }
    true
}

fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service_name.to_owned())),
            }),
        }],
    }
}

#[cfg(test)]
mod tests;
