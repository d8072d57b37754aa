//! `mesh-control`: the Weft control service.
//!
//! Status: command-line surface and lifecycle only; the registry, CA and gRPC feed arrive with
//! their own modules.

use clap::Parser;
use mesh_core::{signal, telemetry};

/// Weft control service: reads mesh config (from Kubernetes or a local directory), runs the mesh
/// certificate authority, and streams workloads, services, policy and routes to node tunnels and
/// waypoints over gRPC.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    log: telemetry::LogOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log)?;
    tracing::info!(?args, "mesh-control starting");
    let signal = signal::shutdown_requested().await?;
    tracing::info!(?signal, "shutdown requested, exiting");
    Ok(())
}
