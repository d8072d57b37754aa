//! `mesh-waypoint`: the Weft L7 proxy.
//!
//! Status: command-line surface and lifecycle only; the routing, resilience and policy layers arrive with
//! their own modules.

use clap::Parser;
use mesh_core::{signal, telemetry};

/// Weft waypoint: the optional L7 proxy for services. Terminates HBONE, routes HTTP/1.1, HTTP/2
/// and gRPC by Istio VirtualService and Gateway API HTTPRoute rules, applies resilience and
/// L7 authorization, and forwards over HBONE.
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
    tracing::info!(?args, "mesh-waypoint starting");
    let signal = signal::shutdown_requested().await?;
    tracing::info!(?signal, "shutdown requested, exiting");
    Ok(())
}
