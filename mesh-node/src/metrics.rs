//! Prometheus metrics with Istio's names and labels, and the per-connection access log.
//!
//! Every proxied connection ends in exactly one [`Metrics::record`] call, which updates the
//! counters and emits one `access` event (target `access`) with source/destination workload and
//! identity, bytes, duration and result.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::ebpf_metrics::{CounterSource, EbpfCollector};

/// Which side reports the metric.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The source's tunnel (outbound).
    Source,
    /// The destination's tunnel (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// The cluster every known workload is in: Istio's default cluster ID (Weft runs one cluster).
pub const CLUSTER_ID: &str = "Kubernetes";

/// Labels of the `istio_tcp_*` metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Reporting side.
    pub reporter: Reporter,
    /// Source workload: its controller's name (`unknown` when not in the mesh).
    pub source_workload: String,
    /// Source namespace.
    pub source_workload_namespace: String,
    /// Source canonical service (Istio: label `service.istio.io/canonical-name`, `app`, ...).
    pub source_canonical_service: String,
    /// Source canonical revision (`version` label, ..., `latest`).
    pub source_canonical_revision: String,
    /// Source SPIFFE principal.
    pub source_principal: String,
    /// Source app: its canonical service, as ztunnel writes it.
    pub source_app: String,
    /// Source version: its canonical revision.
    pub source_version: String,
    /// Source cluster ([`CLUSTER_ID`] for a known workload).
    pub source_cluster: String,
    /// Destination workload: its controller's name.
    pub destination_workload: String,
    /// Destination namespace.
    pub destination_workload_namespace: String,
    /// Destination canonical service.
    pub destination_canonical_service: String,
    /// Destination canonical revision.
    pub destination_canonical_revision: String,
    /// Destination SPIFFE principal.
    pub destination_principal: String,
    /// Destination app: its canonical service.
    pub destination_app: String,
    /// Destination version: its canonical revision.
    pub destination_version: String,
    /// Destination cluster ([`CLUSTER_ID`] for a known workload).
    pub destination_cluster: String,
    /// Always `tcp` at the node (the waypoint reports requests).
    pub request_protocol: &'static str,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Proxied to completion.
    Completed,
    /// Refused or failed before data flowed (reason for logs).
    Failed(String),
    /// Closed by the node mid-stream (policy change, workload left the mesh).
    Revoked(crate::policy::Revocation),
}

/// One finished connection.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// Labels (also the access log fields).
    pub labels: TcpLabels,
    /// Bytes from the source towards the destination.
    pub sent: u64,
    /// Bytes from the destination back to the source.
    pub received: u64,
    /// Lifetime of the connection.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// The node tunnel's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    same_node: Family<SameNodePath, Counter>,
    ebpf: EbpfCollector,
}

/// How the bytes of a finished same-node connection travelled (docs/same-node.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SameNodePath {
    /// `kernel`: both directions switched to the kernel join; `partly_kernel`: one did;
    /// `tunnel`: the tunnel copied every byte (not joinable, or no write after the join);
    /// `direct`: the connection went straight to the destination pod (admitted pair).
    pub path: SameNodeCarrier,
}

/// [`SameNodePath::path`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SameNodeCarrier {
    /// Both directions joined in the kernel.
    kernel,
    /// One direction joined.
    partly_kernel,
    /// No direction joined.
    tunnel,
    /// Connected straight to the destination pod (an admitted pair, see
    /// `crate::redirect::direct`): no tunnel socket on the way at all.
    direct,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let opened = Family::default();
        let closed = Family::default();
        let failed = Family::default();
        let sent = Family::default();
        let received = Family::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections failed",
            failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent towards the destination",
            sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            received.clone(),
        );
        let same_node = Family::default();
        registry.register(
            "weft_same_node_connections",
            "Finished same-node connections, by how their bytes travelled",
            same_node.clone(),
        );
        let ebpf = EbpfCollector::default();
        registry.register_collector(Box::new(ebpf.clone()));
        Arc::new(Self {
            registry,
            opened,
            closed,
            failed,
            sent,
            received,
            same_node,
            ebpf,
        })
    }

    /// Counts a finished same-node connection by which of its directions the kernel carried
    /// (client to server, server to client).
    pub fn same_node_finished(&self, (up, down): (bool, bool)) {
        let path = match (up, down) {
            (true, true) => SameNodeCarrier::kernel,
            (false, false) => SameNodeCarrier::tunnel,
            _ => SameNodeCarrier::partly_kernel,
        };
        self.same_node.get_or_create(&SameNodePath { path }).inc();
    }

    /// Counts a finished same-node direct connection.
    pub fn same_node_direct_finished(&self) {
        self.same_node
            .get_or_create(&SameNodePath {
                path: SameNodeCarrier::direct,
            })
            .inc();
    }

    /// Exports the eBPF programs' counters (`weft_ebpf_events_total`), read on every scrape.
    pub fn install_ebpf_counters(&self, source: Arc<dyn CounterSource>) {
        self.ebpf.install(source);
    }

    /// Counts a connection that was established.
    pub fn opened(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// Records a finished connection: counters plus one access log event.
    pub fn record(&self, record: &ConnectionRecord) {
        let l = &record.labels;
        match &record.outcome {
            Outcome::Failed(_) => {
                self.failed.get_or_create(l).inc();
            }
            Outcome::Completed | Outcome::Revoked(_) => {
                self.closed.get_or_create(l).inc();
            }
        }
        self.sent.get_or_create(l).inc_by(record.sent);
        self.received.get_or_create(l).inc_by(record.received);
        let result = match &record.outcome {
            Outcome::Completed => "completed".to_owned(),
            Outcome::Revoked(reason) => reason.to_string(),
            Outcome::Failed(reason) => format!("failed: {reason}"),
        };
        tracing::info!(
            target: "access",
            reporter = ?l.reporter,
            src.workload = %l.source_workload,
            src.namespace = %l.source_workload_namespace,
            src.identity = %l.source_principal,
            dst.workload = %l.destination_workload,
            dst.namespace = %l.destination_workload_namespace,
            dst.identity = %l.destination_principal,
            bytes_sent = record.sent,
            bytes_received = record.received,
            duration_ms = record.duration.as_millis() as u64,
            result = %result,
            "connection complete"
        );
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_updates_istio_counters() {
        use mesh_core::proto::build;

        use crate::feed::{convert::state_of, MeshSnapshot};

        let metrics = Metrics::new();
        let mut b = build::workload("ns", "b-0", "b", "10.0.0.2".parse().unwrap(), "n1");
        b.labels = [("app", "bee"), ("version", "v1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let a = build::workload("ns", "a-0", "a", "10.0.0.1".parse().unwrap(), "n2");
        let state = state_of("n1", &MeshSnapshot::of([a, b], []));
        let source = state.workload("10.0.0.1".parse().unwrap()).unwrap();
        let dest = state.workload("10.0.0.2".parse().unwrap()).unwrap();
        let labels = crate::proxy::labels(
            Reporter::Destination,
            Some(&source.meta),
            Some(source.identity.to_string()),
            Some(dest),
            true,
        );
        metrics.opened(&labels);
        metrics.record(&ConnectionRecord {
            labels: labels.clone(),
            sent: 10,
            received: 20,
            duration: Duration::from_millis(5),
            outcome: Outcome::Completed,
        });
        let text = metrics.encode();
        assert!(
            text.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
            "{text}"
        );
        assert!(
            text.contains("istio_tcp_sent_bytes_total{") && text.contains("} 10"),
            "{text}"
        );
        assert!(text.contains("} 20"), "{text}");
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\""),
            "{text}"
        );
        // Istio's standard labels, with ztunnel's values: app and version are the canonical
        // service and revision, the cluster Istio's default ID, the protocol tcp.
        for label in [
            "source_app=\"a-0\"",
            "source_version=\"latest\"",
            "source_cluster=\"Kubernetes\"",
            "destination_app=\"bee\"",
            "destination_version=\"v1\"",
            "destination_cluster=\"Kubernetes\"",
            "request_protocol=\"tcp\"",
        ] {
            assert!(text.contains(label), "{label} missing: {text}");
        }
        let unknown = crate::proxy::labels(Reporter::Destination, None, None, Some(dest), true);
        assert_eq!(
            (unknown.source_app.as_str(), unknown.source_cluster.as_str()),
            ("unknown", "unknown"),
            "an unknown source is unknown, as in Istio"
        );
    }

    struct FixedCounters;

    impl CounterSource for FixedCounters {
        fn read(&self) -> Result<crate::redirect::Counters, String> {
            let mut totals = [0u64; mesh_ebpf_common::counter::COUNT as usize];
            totals[mesh_ebpf_common::counter::CONNECT_REDIRECTED as usize] = 42;
            Ok(crate::redirect::Counters::from_totals(&totals))
        }
    }

    #[test]
    fn ebpf_counters_appear_once_installed() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("weft_ebpf_events_total"));
        metrics.install_ebpf_counters(Arc::new(FixedCounters));
        let text = metrics.encode();
        assert!(
            text.contains("weft_ebpf_events_total{program=\"connect\",event=\"redirected\"} 42"),
            "{text}"
        );
    }
}
