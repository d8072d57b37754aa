//! `cargo xtask capture-window`: how long a new pod in an enrolled namespace runs before the mesh
//! captures it, measured in the lab.
//!
//! Each run starts a pod (namespace `demo`, enrolled; service account `client`, which backend's
//! policy allows) on node n1 and, in the same instant, writes its Pod to mesh-control's config
//! directory, as a scheduler and CNI would in a cluster. Then, at once and without pause, the pod
//! calls backend's service address, which only the mesh can route: every call before the first
//! answer left the pod uncaptured (to any other destination it would have escaped the mesh, and
//! plaintext into the pod was not checked either). Prints the window per run and its
//! distribution. The lab's numbers include mesh-control's file watch; in a cluster the
//! apiserver watch takes its place.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use weft_tests::mesh::{MeshLab, MeshLabOptions, BACKEND_VIP};

use crate::{demo, setup, workspace};

/// Namespace and cgroup prefix of this lab.
const PREFIX: &str = "weftcw";
/// A run that is not captured by then counts as never captured.
const GIVE_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct CaptureWindowArgs {
    /// Pods to start, one after the other (at most 150).
    #[arg(long, default_value_t = 100)]
    pub runs: u32,
}

/// One pod's start.
struct Run {
    /// From start to the first call the mesh carried; `None`: not within [`GIVE_UP`].
    window: Option<Duration>,
    /// Calls made before that one.
    uncaptured_calls: u32,
}

pub fn run(args: &CaptureWindowArgs) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root");
    }
    if args.runs == 0 || args.runs > 150 {
        bail!("--runs must be 1 to 150 (one lab address each)");
    }
    demo::build(false)?;
    let work_dir = std::env::temp_dir().join("weft-capture-window");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let options = MeshLabOptions {
        prefix: PREFIX.to_string(),
        work_dir,
        bin_dir: workspace::root().join("target/debug"),
        example_dir: workspace::root().join("deploy/examples/website"),
    };
    let mut mesh = MeshLab::start(options).context("start the lab mesh")?;
    let mut runs = Vec::new();
    for index in 0..args.runs {
        let run = one_pod(&mut mesh, index)?;
        match run.window {
            Some(window) => println!(
                "pod {index:>3}: captured after {:>5} ms ({} uncaptured calls before)",
                window.as_millis(),
                run.uncaptured_calls
            ),
            None => println!("pod {index:>3}: not captured within {GIVE_UP:?}"),
        }
        runs.push(run);
    }
    summarize(&runs);
    drop(mesh);
    Ok(())
}

fn one_pod(mesh: &mut MeshLab, index: u32) -> anyhow::Result<Run> {
    let name = format!("cw{index}");
    let ip = std::net::Ipv4Addr::new(10, 211, 1, 100 + index as u8);
    let start = Instant::now();
    mesh.add_pod(&name, "n1", ip, "demo", "client")?;
    let mut uncaptured_calls = 0;
    let window = loop {
        let answer = mesh
            .get(&name, BACKEND_VIP, &["--timeout-ms", "300"])
            .unwrap_or_default();
        if answer.starts_with("200") {
            break Some(start.elapsed());
        }
        if start.elapsed() > GIVE_UP {
            break None;
        }
        uncaptured_calls += 1;
    };
    mesh.remove_pod(&name)?;
    Ok(Run {
        window,
        uncaptured_calls,
    })
}

fn summarize(runs: &[Run]) {
    let mut windows: Vec<Duration> = runs.iter().filter_map(|r| r.window).collect();
    windows.sort_unstable();
    let never = runs.len() - windows.len();
    let uncaptured: u32 = runs.iter().map(|r| r.uncaptured_calls).sum();
    let exposed = runs.iter().filter(|r| r.uncaptured_calls > 0).count();
    println!(
        "\n{} pods; {never} never captured within {GIVE_UP:?}",
        runs.len()
    );
    println!(
        "pods with at least one uncaptured call: {exposed}; uncaptured calls in all: {uncaptured}"
    );
    if windows.is_empty() {
        return;
    }
    let at = |q: f64| windows[((windows.len() - 1) as f64 * q).round() as usize].as_millis();
    println!(
        "window (ms): min {} / median {} / p90 {} / max {}",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}
