//! `mesh-waypoint`: the Weft L7 proxy binary. Parses flags, loads the YAML config, starts the
//! waypoint, and drains on SIGTERM/SIGINT.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use mesh_core::{signal, telemetry};
use mesh_waypoint::{
    app::{self, AppConfig},
    config::WaypointConfig,
};

/// Weft waypoint: the optional L7 proxy for services. Routes HTTP/1.1, HTTP/2 and gRPC by
/// Istio-style rules, applies resilience and L7 authorization, and forwards to endpoints.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Routes, destinations and policies (YAML).
    #[arg(long, env = "WEFT_WAYPOINT_CONFIG")]
    config: PathBuf,
    /// Proxy listen address.
    #[arg(long, default_value = "0.0.0.0:15008", env = "WEFT_WAYPOINT_LISTEN")]
    listen: SocketAddr,
    /// Metrics and readiness address (Istio's 15020).
    #[arg(long, default_value = "0.0.0.0:15020", env = "WEFT_WAYPOINT_METRICS")]
    metrics: SocketAddr,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    drain_deadline: Duration,
    #[command(flatten)]
    log: telemetry::LogOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any start-up work: an early SIGTERM must drain, not kill.
    let mut signals = signal::ShutdownSignals::install()?;
    telemetry::init(&args.log)?;
    let waypoint = WaypointConfig::load(&args.config)?;
    tracing::info!(
        ?args,
        routes = waypoint.routes.len(),
        destinations = waypoint.destinations.len(),
        "mesh-waypoint starting"
    );
    let mut config = AppConfig::new(args.listen, waypoint);
    config.metrics = Some(args.metrics);
    let bound = app::build(config).await.context("starting the waypoint")?;
    let signal = signals.recv().await;
    tracing::info!(?signal, deadline = ?args.drain_deadline, "shutdown requested, draining");
    let outcome = bound.shutdown(args.drain_deadline).await;
    tracing::info!(?outcome, "drained, exiting");
    Ok(())
}
