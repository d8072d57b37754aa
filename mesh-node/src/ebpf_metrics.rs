//! The eBPF programs' per-CPU event counters as Prometheus metrics, read at scrape time.
//!
//! One counter family, `weft_ebpf_events_total{program, event}`, one sample per entry of
//! [`Counters::samples`] (e.g. `{program="connect",event="redirected"}`); the label values and
//! their meaning are documented, and kept stable, by [`crate::redirect::counters`].
//!
//! Nothing is exported until a source is installed (no eBPF redirection, no family); a source
//! that cannot be read is logged and the family left out of that scrape.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};

use crate::redirect::Counters;

/// Metric name (the text format adds `_total`).
pub const EVENTS_METRIC: &str = "weft_ebpf_events";

/// Where counter totals come from (the loaded programs; a fake in tests).
pub trait CounterSource: Send + Sync + 'static {
    /// The totals now, or why they cannot be read.
    fn read(&self) -> Result<Counters, String>;
}

/// Labels of [`EVENTS_METRIC`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    program: &'static str,
    event: &'static str,
}

/// A registry collector over an installable [`CounterSource`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct EbpfCollector {
    source: Arc<Mutex<Option<Arc<dyn CounterSource>>>>,
}

impl std::fmt::Debug for EbpfCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCollector")
            .field("installed", &self.current().is_some())
            .finish()
    }
}

impl EbpfCollector {
    /// Starts reading `source` on every scrape.
    pub fn install(&self, source: Arc<dyn CounterSource>) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    fn current(&self) -> Option<Arc<dyn CounterSource>> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(source) = self.current() else {
            return Ok(());
        };
        let counters = match source.read() {
            Ok(counters) => counters,
            Err(error) => {
                tracing::warn!(%error, "ebpf counters unreadable; left out of this scrape");
                return Ok(());
            }
        };
        let help = "Events counted by the eBPF redirection programs since they were loaded";
        let mut family =
            encoder.encode_descriptor(EVENTS_METRIC, help, None, MetricType::Counter)?;
        for sample in counters.samples() {
            let labels = EventLabels {
                program: sample.program,
                event: sample.event,
            };
            ConstCounter::new(sample.value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    struct Fake(Result<Counters, String>);

    impl CounterSource for Fake {
        fn read(&self) -> Result<Counters, String> {
            self.0.clone()
        }
    }

    fn render(collector: &EbpfCollector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn renders_every_counter_with_program_and_event() {
        let collector = EbpfCollector::default();
        let mut totals = [0u64; mesh_ebpf_common::counter::COUNT as usize];
        for (slot, value) in totals.iter_mut().zip(1000..) {
            *slot = value;
        }
        let counters = Counters::from_totals(&totals);
        collector.install(Arc::new(Fake(Ok(counters))));
        let text = render(&collector);
        assert!(text.contains("# TYPE weft_ebpf_events counter"), "{text}");
        let samples = counters.samples();
        for sample in &samples {
            let line = format!(
                "weft_ebpf_events_total{{program=\"{}\",event=\"{}\"}} {}",
                sample.program, sample.event, sample.value
            );
            assert!(text.contains(&line), "missing {line}: {text}");
        }
        assert!(samples.iter().all(|s| s.value >= 1000), "{samples:?}");
        assert_eq!(
            text.matches("weft_ebpf_events_total{").count(),
            samples.len()
        );
    }

    #[test]
    fn nothing_without_a_source_or_when_unreadable() {
        let collector = EbpfCollector::default();
        assert!(!render(&collector).contains("weft_ebpf"));
        collector.install(Arc::new(Fake(Err("map gone".into()))));
        assert!(!render(&collector).contains("weft_ebpf"));
    }
}
