//! Scale benchmark for the node feed: 10,000 workloads, 2,000 services, 500 node streams over
//! loopback gRPC. Prints time to build the snapshot, time to full sync of every stream, time to
//! propagate one change to every stream, and peak memory; each with a ratio against a
//! baseline measured in the same run (encoding the full state once).
//!
//! `cargo bench -p mesh-control --bench feed_scale -- [workloads] [services] [nodes]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_control::auth::TokenAuthenticator;
use mesh_control::feed::hub::{Hub, DEFAULT_MAX_LOG_KEYS};
use mesh_control::feed::node::{NodeFeedService, StreamSettings};
use mesh_control::feed::node_server::NodeFeedServer;
use mesh_control::registry::{parse_yaml, Parsed, Registry, RegistryConfig};
use mesh_control::store::Store;
use mesh_core::proto::control::v1 as pb;
use prost::Message;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;

const NAMESPACES: usize = 50;
const WAIT: Duration = Duration::from_secs(600);

struct Scale {
    workloads: usize,
    services: usize,
    nodes: usize,
}

fn scale_from_args() -> anyhow::Result<Scale> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse().with_context(|| format!("bad number {a:?}")))
        .collect::<Result<_, _>>()?;
    let at = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    Ok(Scale {
        workloads: at(0, 10_000),
        services: at(1, 2_000),
        nodes: at(2, 500),
    })
}

fn pod_yaml(i: usize, scale: &Scale, extra_label: &str) -> String {
    let ns = i % NAMESPACES;
    let app = i % scale.services;
    let node = i % scale.nodes;
    let (a, b) = (i / 250, i % 250);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: app-{app}{extra_label}}}}}\n\
         spec: {{nodeName: node-{node}, serviceAccountName: sa-{app}, containers: []}}\nstatus: {{podIP: 10.{}.{a}.{b}}}\n---\n",
        1 + a / 250
    )
}

fn manifests(scale: &Scale) -> String {
    let mut out = String::new();
    for ns in 0..NAMESPACES {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{weft.dev/dataplane-mode: ambient}}}}\n---\n"
        ));
        out.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-ns, namespace: ns-{ns}}}\n\
             spec: {{rules: [{{from: [{{source: {{namespaces: [ns-{ns}]}}}}]}}]}}\n---\n"
        ));
    }
    for s in 0..scale.services {
        // Pods of app-s live in namespace s % NAMESPACES when workloads % NAMESPACES == 0.
        let ns = s % NAMESPACES;
        let (a, b) = (s / 250, s % 250);
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\n\
             spec: {{clusterIP: 10.96.{a}.{b}, selector: {{app: app-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n"
        ));
    }
    for i in 0..scale.workloads {
        out.push_str(&pod_yaml(i, scale, ""));
    }
    out
}

fn load(store: &Store, text: &str) {
    let mut parsed = Parsed::default();
    parse_yaml("bench.yaml", text, &mut parsed);
    store.update(|r| r.replace_all(parsed));
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Per-node last complete version, and a notification on every change.
struct Progress {
    versions: Vec<AtomicU64>,
    changed: Notify,
    reconnects: AtomicU64,
}

impl Progress {
    async fn wait_all(&self, version: u64) -> anyhow::Result<Duration> {
        let start = Instant::now();
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                if self
                    .versions
                    .iter()
                    .all(|v| v.load(Ordering::SeqCst) >= version)
                {
                    return;
                }
                notified.await;
            }
        })
        .await
        .context("streams did not reach the version in time")?;
        Ok(start.elapsed())
    }
}

/// One node: subscribes, and like a real node reconnects with its last complete version when
/// the server closes the stream (e.g. after the send timeout under overload).
async fn run_node(
    channel: tonic::transport::Channel,
    node: usize,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let mut client = pb::node_feed_client::NodeFeedClient::new(channel);
    let mut resume = (String::new(), 0);
    loop {
        let message = pb::NodeSubscribeRequest {
            node_name: format!("node-{node}"),
            feed_id: resume.0.clone(),
            resume_version: resume.1,
        };
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer token-for-node-{node:06}").parse()?,
        );
        let mut stream = client.subscribe(request).await?.into_inner();
        while let Ok(Some(update)) = stream.message().await {
            if update.complete {
                resume = (update.feed_id.clone(), update.version);
                progress.versions[node].store(update.version, Ordering::SeqCst);
                progress.changed.notify_waiters();
            }
        }
        progress.reconnects.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scale = scale_from_args()?;
    println!(
        "feed_scale: {} workloads, {} services, {} node streams",
        scale.workloads, scale.services, scale.nodes
    );
    let hub = Arc::new(Hub::new(DEFAULT_MAX_LOG_KEYS));
    let store = Store::new(Registry::new(RegistryConfig::default()), Arc::clone(&hub));
    let text = manifests(&scale);
    let started = Instant::now();
    load(&store, &text);
    let parse_time = started.elapsed();
    let started = Instant::now();
    let version = store.publish_now();
    let build_time = started.elapsed();

    // Baseline: encode the full node state once.
    let started = Instant::now();
    let delta = hub.delta(None);
    let full_bytes: usize = delta.upserts.iter().map(|r| r.encode_to_vec().len()).sum();
    let encode_time = started.elapsed();
    println!("state: {} items, {:.1} MiB encoded; parse {parse_time:?}, snapshot build {build_time:?}, baseline encode {encode_time:?}", delta.upserts.len(), full_bytes as f64 / 1048576.0);

    let tokens: Vec<(String, String)> = (0..scale.nodes)
        .map(|n| (format!("node-{n}"), format!("token-for-node-{n:06}")))
        .collect();
    let auth = Arc::new(TokenAuthenticator::new(
        tokens.iter().map(|(n, t)| (n.as_str(), t.as_str())),
    ));
    let (trigger, watch) = mesh_core::drain::channel();
    let service = NodeFeedService::new(Arc::clone(&hub), auth, StreamSettings::default(), watch);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .add_service(NodeFeedServer::new(service));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));

    let progress = Arc::new(Progress {
        versions: (0..scale.nodes).map(|_| AtomicU64::new(0)).collect(),
        changed: Notify::new(),
        reconnects: AtomicU64::new(0),
    });
    let started = Instant::now();
    let connections = scale.nodes.div_ceil(10);
    for c in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .connect()
            .await?;
        for node in (c * 10..(c + 1) * 10).filter(|n| *n < scale.nodes) {
            let (channel, progress) = (channel.clone(), Arc::clone(&progress));
            tokio::spawn(async move {
                if let Err(err) = run_node(channel, node, progress).await {
                    eprintln!("node-{node}: {err}");
                }
            });
        }
    }
    progress.wait_all(version).await?;
    let full_sync = started.elapsed();

    let mut propagation = Vec::new();
    for round in 0..5 {
        let changed = text.replacen(
            &pod_yaml(0, &scale, ""),
            &pod_yaml(0, &scale, &format!(", round: r{round}")),
            1,
        );
        load(&store, &changed);
        let started = Instant::now();
        let version = store.publish_now();
        progress.wait_all(version).await?;
        propagation.push(started.elapsed());
    }
    propagation.sort();
    let median = propagation[propagation.len() / 2];

    let ratio = |d: Duration| d.as_secs_f64() / encode_time.as_secs_f64().max(1e-9);
    println!(
        "full sync of {} streams: {full_sync:?} ({:.1}x baseline encode)",
        scale.nodes,
        ratio(full_sync)
    );
    println!("one change to all streams (median of 5, incl. snapshot rebuild): {median:?} ({:.2}x baseline encode, {:.3}x full sync)", ratio(median), median.as_secs_f64() / full_sync.as_secs_f64());
    let reconnects = progress.reconnects.load(Ordering::SeqCst);
    println!("stream reconnects (server closed a slow stream, client resumed): {reconnects}");
    println!(
        "peak memory (VmHWM, server and all clients in one process): {:.0} MiB",
        peak_rss_mib()
    );
    drop(trigger);
    Ok(())
}
