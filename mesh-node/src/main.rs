//! `mesh-node`: the Weft node tunnel.
//!
//! Thin binary: parse arguments and the config file, set up logging, build the tunnel, wait for
//! SIGTERM/SIGINT and drain with the configured deadline.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use anyhow::Context;
use clap::Parser;
use mesh_core::{signal, telemetry};
use mesh_node::{
    app,
    config::Config,
    enrollment::{self, EnrollmentHandle},
    pod_netns::ScanConfig,
    redirect,
};

/// Weft node tunnel: the per-node zero-trust proxy. Captures traffic of enrolled pods with eBPF,
/// carries it over mutually authenticated HBONE tunnels with SPIFFE identities, and enforces
/// L4 authorization policy.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Static configuration file (YAML).
    #[arg(long, env = "WEFT_NODE_CONFIG")]
    config: PathBuf,
    /// Capture enrolled pods' traffic with eBPF programs attached to this cgroup (path below the
    /// cgroup2 mount; "" for the whole hierarchy). It must contain both the pods and this
    /// process. Without it, only traffic sent to the listeners directly is handled.
    #[arg(long, env = "WEFT_REDIRECT_CGROUP", requires = "node_ip")]
    redirect_cgroup: Option<PathBuf>,
    /// This node's IPv4 address: pods' connections are redirected to it (outbound port) and
    /// strict pods accept plaintext only from it.
    #[arg(long, env = "WEFT_NODE_IP")]
    node_ip: Option<Ipv4Addr>,
    /// Also find pod network namespaces through /proc/<pid>/ns/net (needs the host PID
    /// namespace); /run/netns is always scanned.
    #[arg(long)]
    scan_proc: bool,
    #[command(flatten)]
    log: telemetry::LogOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any start-up work: an early SIGTERM must drain, not kill.
    let mut signals = signal::ShutdownSignals::install()?;
    telemetry::init(&args.log)?;
    let config = Config::from_file(&args.config)?;
    tracing::info!(config = ?config, "mesh-node starting");
    let wanted = enrollment::wanted_from_config(&config);
    let bound = app::build(config)
        .await
        .context("starting the node tunnel")?;
    let enrollment = match (&args.redirect_cgroup, args.node_ip) {
        (Some(cgroup), Some(node_ip)) => {
            let mut redirect =
                redirect::Config::new(cgroup, SocketAddrV4::new(node_ip, bound.outbound.port()));
            redirect.tunnel_source_v4 = Some(node_ip);
            redirect.probe_source_v4 = Some(node_ip);
            let scan = ScanConfig {
                scan_proc: args.scan_proc,
                ..ScanConfig::default()
            };
            let handle = EnrollmentHandle::start(&redirect, wanted, scan)
                .context("attaching eBPF redirection")?;
            Some(handle)
        }
        _ => None,
    };
    let signal = signals.recv().await;
    tracing::info!(?signal, "shutdown requested, draining");
    let outcome = bound.shutdown().await;
    // Detach only after the listeners are gone: pods' new connections then fail rather than
    // bypass the tunnel while it drains.
    if let Some(enrollment) = enrollment {
        enrollment.shutdown().await;
    }
    tracing::info!(?outcome, "drained, exiting");
    Ok(())
}
