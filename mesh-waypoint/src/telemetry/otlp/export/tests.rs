//! Exporter tests on paused time with a fake collector: batching, the queue bound, timeout and
//! backoff after failures, flush on drain.

use std::time::Duration;

use mesh_core::drain;
use tokio::{sync::mpsc, time::Instant};

use super::*;
use crate::telemetry::otlp::{spawn, SpanSink};

const WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
enum Mode {
    Accept,
    RejectOne,
    Hang,
}

/// Reports `(when, spans)` per export call, then behaves as `mode`.
struct Fake {
    calls: mpsc::UnboundedSender<(Instant, usize)>,
    mode: Mode,
}

impl Export for Fake {
    fn export(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Pin<Box<dyn Future<Output = ExportResult> + Send + '_>> {
        let spans = request.resource_spans[0].scope_spans[0].spans.len();
        let _ = self.calls.send((Instant::now(), spans));
        let mode = self.mode;
        Box::pin(async move {
            match mode {
                Mode::Accept => Ok(0),
                Mode::RejectOne => Ok(1),
                Mode::Hang => std::future::pending().await,
            }
        })
    }
}

fn config() -> OtlpConfig {
    let mut config = OtlpConfig::new("http://unused:4317", "test");
    config.queue_capacity = 4;
    config.max_batch = 2;
    config
}

fn span(id: u64) -> Span {
    Span {
        span_id: id.to_be_bytes().to_vec(),
        ..Span::default()
    }
}

fn start(
    config: &OtlpConfig,
    mode: Mode,
) -> (
    SpanSink,
    mpsc::UnboundedReceiver<(Instant, usize)>,
    drain::DrainTrigger,
) {
    let (calls, received) = mpsc::unbounded_channel();
    let (trigger, watch) = drain::channel();
    let sink = spawn(config, Fake { calls, mode }, SpanStats::default(), watch);
    (sink, received, trigger)
}

async fn next_call(calls: &mut mpsc::UnboundedReceiver<(Instant, usize)>) -> (Instant, usize) {
    tokio::time::timeout(WAIT, calls.recv())
        .await
        .expect("an export within the wait")
        .expect("exporter alive")
}

#[tokio::test(start_paused = true)]
async fn full_queue_drops_and_counts_and_batches_are_bounded() {
    let (sink, mut calls, _trigger) = start(&config(), Mode::Accept);
    let started = Instant::now();
    // The exporter task has not run yet: the queue holds 4, the other 6 are dropped.
    for id in 1..=10 {
        sink.record(span(id));
    }
    assert_eq!(sink.stats().dropped.get(), 6);
    let (at, first) = next_call(&mut calls).await;
    assert_eq!((first, at), (2, started), "a full batch goes at once");
    let (_, second) = next_call(&mut calls).await;
    assert_eq!(second, 2);
    sink.record(span(11));
    let (at, third) = next_call(&mut calls).await;
    assert_eq!(third, 1);
    assert_eq!(at - started, config().batch_delay, "a partial batch waits");
    assert_eq!(sink.stats().exported.get(), 5);
}

#[tokio::test(start_paused = true)]
async fn hung_collector_times_out_then_backs_off_exponentially() {
    let mut config = config();
    config.max_batch = 1;
    let (sink, mut calls, _trigger) = start(&config, Mode::Hang);
    for id in 1..=3 {
        sink.record(span(id));
    }
    let (first, _) = next_call(&mut calls).await;
    let (second, _) = next_call(&mut calls).await;
    let (third, _) = next_call(&mut calls).await;
    // Each wait is the export timeout plus a backoff jittered to 50-100 % of 1x, then 2x.
    let jittered = |base: Duration| config.export_timeout + base / 2..=config.export_timeout + base;
    assert!(jittered(config.min_backoff).contains(&(second - first)));
    assert!(jittered(config.min_backoff * 2).contains(&(third - second)));
    assert_eq!(sink.stats().failed.get(), 2);
    assert_eq!(sink.stats().exported.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_flushes_the_queue() {
    let mut config = config();
    config.batch_delay = Duration::from_secs(3600);
    config.max_batch = 4;
    let (sink, mut calls, trigger) = start(&config, Mode::Accept);
    sink.record(span(1));
    // The exporter holds one span and waits an hour for more; two more arrive, then drain.
    tokio::task::yield_now().await;
    sink.record(span(2));
    sink.record(span(3));
    let outcome = tokio::time::timeout(WAIT, trigger.drain(Duration::from_secs(5)))
        .await
        .expect("drain ends");
    assert_eq!(outcome, drain::DrainOutcome::Complete);
    let (_, flushed) = next_call(&mut calls).await;
    assert_eq!(
        flushed, 3,
        "the forming batch and the queued spans are flushed"
    );
    assert_eq!(sink.stats().exported.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn partially_rejected_batches_are_counted_not_retried() {
    let (sink, mut calls, _trigger) = start(&config(), Mode::RejectOne);
    sink.record(span(1));
    sink.record(span(2));
    let (first, spans) = next_call(&mut calls).await;
    assert_eq!(spans, 2);
    sink.record(span(3));
    let (second, _) = next_call(&mut calls).await;
    assert_eq!(
        second - first,
        config().batch_delay,
        "no backoff after a partial success"
    );
    assert_eq!(sink.stats().exported.get(), 1);
    assert_eq!(sink.stats().failed.get(), 2);
}
