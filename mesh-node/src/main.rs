//! `mesh-node`: the Weft node tunnel.
//!
//! Status: command-line surface and lifecycle only; the tunnel, redirection and policy arrive with
//! their own modules.

use clap::Parser;
use mesh_core::{signal, telemetry};

/// Weft node tunnel: the per-node zero-trust proxy. Captures traffic of enrolled pods with eBPF,
/// carries it over mutually authenticated HBONE tunnels with SPIFFE identities, and enforces
/// L4 authorization policy.
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
    tracing::info!(?args, "mesh-node starting");
    let signal = signal::shutdown_requested().await?;
    tracing::info!(?signal, "shutdown requested, exiting");
    Ok(())
}
