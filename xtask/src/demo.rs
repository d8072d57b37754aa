//! `cargo xtask demo`: the whole mesh on one machine, shown step by step.
//!
//! Builds everything, creates a two-node lab (network namespaces and cgroups, see
//! `weft_tests::lab`), runs the sample app from `deploy/examples/website/`, and walks through what
//! the mesh does to its traffic. Everything is torn down on exit, on error and on Ctrl-C.

use std::{
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use weft_tests::lab::{Lab, LabSpec, PodSpec};

use crate::{ebpf, setup, workspace};

/// Namespace and cgroup prefix of the demo lab (leftovers with it are removed at start).
const PREFIX: &str = "weftdemo";
/// Port every sample app listens on.
const APP_PORT: u16 = 8080;
/// The `backend` service's cluster IP in deploy/examples/website/00-app.yaml.
const BACKEND_VIP: &str = "10.96.0.20:8080";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the lab running after the walkthrough until Ctrl-C, to poke at it by hand.
    #[arg(long)]
    pub keep: bool,
}

/// Pods of the sample app in lab order, which fixes their addresses (see the example's README).
const PODS: &[(&str, &str)] = &[
    ("client", "n1"),
    ("website-v1", "n1"),
    ("website-v2", "n2"),
    ("website-v3", "n2"),
    ("backend", "n2"),
    ("intruder", "n1"),
];

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("install Ctrl-C handler")?;

    let mut show = Walkthrough::default();
    show.step(
        "build the eBPF programs, the mesh and the sample app",
        build,
    )?;
    let bin = workspace::root().join("target/debug");
    let logs = std::env::temp_dir().join("weft-demo");
    let mut lab = show.step("create nodes n1, n2 and six pods (netns + cgroups)", || {
        Lab::create(&lab_spec(), &logs)
    })?;
    for pod in lab.pods() {
        println!("      {:<11} on {}  {}", pod.name, pod.node, pod.ip);
    }
    show.step(
        "start the sample app (website v1/v2/v3 call backend)",
        || start_apps(&mut lab, &bin.join("weft-lab-app")),
    )?;
    show.step(
        "baseline without the mesh: client -> website-v1 by pod IP",
        || {
            let target = format!("{}:{APP_PORT}", lab.pod("website-v1")?.ip);
            let out = wait_for_answer(&lab, "client", &bin.join("weft-lab-app"), &target)?;
            println!("      {}", out.trim());
            Ok(())
        },
    )?;
    for pending in [
        "start mesh-control in local mode on deploy/examples/website",
        "start mesh-node on each node with eBPF redirection",
        "mTLS identities in the access logs",
        "90/10 canary split over 200 requests",
        "header end-user: jason routed to v3",
        "injected fault on /fault",
        "AuthorizationPolicy denial for the intruder",
        "metrics scraped from :15020",
    ] {
        show.pending(pending);
    }
    show.summary();
    if args.keep {
        println!(
            "lab is up (logs in {}); Ctrl-C tears it down",
            logs.display()
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("tearing down the lab");
    drop(lab);
    Ok(())
}

fn lab_spec() -> LabSpec {
    LabSpec {
        prefix: PREFIX.to_string(),
        nodes: vec!["n1".into(), "n2".into()],
        pods: PODS
            .iter()
            .map(|(name, node)| PodSpec {
                name: name.to_string(),
                node: node.to_string(),
            })
            .collect(),
    }
}

fn build() -> anyhow::Result<()> {
    ebpf::build(&ebpf::BuildArgs { no_setup: false })?;
    workspace::run(
        Command::new(setup::cargo())
            .current_dir(workspace::root())
            .args(["build", "--quiet", "--bins"])
            .args([
                "-p",
                "mesh-control",
                "-p",
                "mesh-node",
                "-p",
                "mesh-waypoint",
            ])
            .args(["-p", "weft-tests"]),
    )
}

fn start_apps(lab: &mut Lab, app: &Path) -> anyhow::Result<()> {
    for (pod, version) in [
        ("website-v1", "v1"),
        ("website-v2", "v2"),
        ("website-v3", "v3"),
    ] {
        let listen = format!("{}:{APP_PORT}", lab.pod(pod)?.ip);
        let args = [
            "serve",
            "--listen",
            &listen,
            "--name",
            "website",
            "--version",
            version,
        ];
        let mut args = args.to_vec();
        args.extend(["--upstream", BACKEND_VIP]);
        lab.spawn_in_pod(pod, pod, app, &args)?;
    }
    let listen = format!("{}:{APP_PORT}", lab.pod("backend")?.ip);
    let args = [
        "serve",
        "--listen",
        &listen,
        "--name",
        "backend",
        "--version",
        "v1",
    ];
    lab.spawn_in_pod("backend", "backend", app, &args)?;
    Ok(())
}

/// Asks `target` from pod `from` until it answers 200, for up to five seconds (apps start async).
fn wait_for_answer(lab: &Lab, from: &str, app: &Path, target: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab.run_in_pod(from, app, &["get", target]);
        match out {
            Ok(out) if out.starts_with("200") => return Ok(out),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(out) => bail!("{target} answered {out:?}"),
            Err(error) => return Err(error),
        }
    }
}

/// Numbered, timed steps with a closing tally.
#[derive(Default)]
struct Walkthrough {
    shown: usize,
    pending: Vec<String>,
}

impl Walkthrough {
    fn step<T>(
        &mut self,
        what: &str,
        run: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.shown += 1;
        println!("[{}] {what}", self.shown);
        let started = Instant::now();
        let value = run().with_context(|| format!("demo step failed: {what}"))?;
        println!("      ok ({:.1} s)", started.elapsed().as_secs_f64());
        Ok(value)
    }

    fn pending(&mut self, what: &str) {
        println!("[-] {what}: not shown, that part of the mesh is not built yet");
        self.pending.push(what.to_string());
    }

    fn summary(&self) {
        println!(
            "demo: {} steps shown, {} not available yet (see README status)",
            self.shown,
            self.pending.len()
        );
    }
}
