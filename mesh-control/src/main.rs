//! `mesh-control`: the Weft control service. Thin: parse flags, set up logging, build the app
//! (or write CRDs), wait for a signal, drain.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use mesh_control::config::{Cli, Command, Config};
use mesh_control::{app, crd, dump};
use mesh_core::{signal, telemetry};

/// Writes (or, with `check`, verifies) the generated CRD files.
fn crds(out_dir: &Path, check: bool) -> anyhow::Result<()> {
    let rendered = crd::render_crds().context("rendering crds")?;
    let mut stale = Vec::new();
    for (name, yaml) in rendered {
        let path = out_dir.join(&name);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "crd files are out of date, run `mesh-control crds`: {}",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Writes a node's or waypoint's saved feed (`mesh-control dump`).
fn dump(
    config: &Config,
    node: &Option<String>,
    waypoint: &Option<(String, String)>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if config.kubernetes {
        bail!("dump reads --config-dir; --kubernetes is not supported yet");
    }
    let target = match (node, waypoint) {
        (_, Some((namespace, name))) => dump::Target::Waypoint {
            namespace: namespace.clone(),
            name: name.clone(),
        },
        (Some(node), None) => dump::Target::Node(node.clone()),
        (None, None) => bail!("one of --node and --waypoint is required"),
    };
    let (yaml, diagnostics) = dump::dump(&config.config_dir, config.registry(), &target)?;
    for diagnostic in &diagnostics {
        eprintln!("warning: {diagnostic}");
    }
    match out {
        Some(path) => {
            std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Crds { out_dir, check }) => return crds(out_dir, *check),
        Some(Command::Dump {
            node,
            waypoint,
            out,
        }) => return dump(&cli.config, node, waypoint, out.as_deref()),
        Some(Command::Serve) | None => {}
    }
    // Before any start-up work: an early SIGTERM must drain, not kill.
    let mut signals = signal::ShutdownSignals::install()?;
    telemetry::init(&cli.log)?;
    let config = cli.config;
    tracing::info!(?config, "mesh-control starting with effective config");
    let drain_timeout = config.drain_timeout;
    let bound = app::build(config).await.context("starting mesh-control")?;
    let signal = signals.recv().await;
    tracing::info!(?signal, "shutdown requested, draining");
    let outcome = bound.shutdown(drain_timeout).await;
    tracing::info!(?outcome, "mesh-control stopped");
    Ok(())
}
