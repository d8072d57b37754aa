//! `cargo xtask capture-window`: whether a new pod in an enrolled namespace ever runs before the
//! mesh captures it, measured in the lab.
//!
//! Each run starts a pod (namespace `demo`, enrolled; service account `client`, which backend's
//! policy allows) on node n1 as a kubelet would: the Pod is published without an address, the
//! sandbox comes up, the CNI chain (`weft-cni`) runs and must succeed, and only then does the
//! pod run anything. At once and without pause the pod calls backend's service address, which
//! only the mesh can route: every call before the first answer left the pod uncaptured (to any
//! other destination it would have escaped the mesh). Prints, per run, how long the CNI ADD held
//! the start and the uncaptured calls, then their distribution. The lab's ADD times include
//! mesh-control's file watch; in a cluster the apiserver watch takes its place.

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
    /// How long `weft-cni` ADD held the pod's start.
    add: Duration,
    /// From the end of the ADD to the first call the mesh carried; `None`: not within
    /// [`GIVE_UP`].
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
                "pod {index:>3}: ADD held the start {:>5} ms; first answer after {:>4} ms ({} uncaptured calls before)",
                run.add.as_millis(),
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
    let add = mesh.start_pod_via_cni(&name, "n1", ip, "demo", "client")?;
    let start = Instant::now();
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
    mesh.cni("n1", "DEL", &name, "demo", None)?;
    mesh.remove_pod(&name)?;
    Ok(Run {
        add,
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
    let mut adds: Vec<Duration> = runs.iter().map(|r| r.add).collect();
    adds.sort_unstable();
    let at = |sorted: &[Duration], q: f64| {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_millis()
    };
    println!(
        "ADD held the start (ms): min {} / median {} / p90 {} / max {}",
        at(&adds, 0.0),
        at(&adds, 0.5),
        at(&adds, 0.9),
        at(&adds, 1.0)
    );
    if windows.is_empty() {
        return;
    }
    println!(
        "first answer after the start (ms): min {} / median {} / p90 {} / max {}",
        at(&windows, 0.0),
        at(&windows, 0.5),
        at(&windows, 0.9),
        at(&windows, 1.0)
    );
}
