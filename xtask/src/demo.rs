//! `cargo xtask demo`: the whole mesh on one machine, shown step by step.
//!
//! Builds everything, starts the sample mesh of `weft_tests::mesh` (two lab nodes, mesh-control,
//! a mesh-node with eBPF redirection per node, the `website`/`backend` app of
//! `deploy/examples/website/`) and walks through what the mesh does to the app's traffic.
//! Everything is torn down on exit, on error and on Ctrl-C.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use weft_tests::{
    mesh::{MeshLab, MeshLabOptions, BACKEND_VIP, WEBSITE_VIP},
    wait::wait_until,
};

use crate::{ebpf, setup, workspace};

/// Namespace and cgroup prefix of the demo lab (leftovers with it are removed at start).
const PREFIX: &str = "weftdemo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the lab running after the walkthrough until Ctrl-C, to poke at it by hand.
    #[arg(long)]
    pub keep: bool,
}

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
        || build(false),
    )?;
    let work_dir = std::env::temp_dir().join("weft-demo");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let options = MeshLabOptions {
        prefix: PREFIX.to_string(),
        work_dir: work_dir.clone(),
        bin_dir: workspace::root().join("target/debug"),
        example_dir: workspace::root().join("deploy/examples/website"),
    };
    let mesh = show.step(
        "start two nodes, eight pods, mesh-control (config + CA), a mesh-node per node and the waypoint",
        || MeshLab::start(options),
    )?;
    describe(&mesh);
    walk_through(&mut show, &mesh)?;
    show.summary();
    if args.keep {
        println!(
            "lab is up (logs in {}); Ctrl-C tears it down",
            mesh.log_dir().display()
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("tearing down the lab");
    drop(mesh);
    Ok(())
}

fn describe(mesh: &MeshLab) {
    for node in mesh.lab.nodes() {
        let pods: Vec<String> = mesh
            .lab
            .pods()
            .iter()
            .filter(|pod| pod.node == node.name)
            .map(|pod| format!("{} {}", pod.name, pod.ip))
            .collect();
        println!("      node {} {}: {}", node.name, node.ip, pods.join(", "));
    }
    // The control connection: what mesh-control said when it bound its gRPC port.
    let log = std::fs::read_to_string(mesh.log_dir().join("mesh-control.log")).unwrap_or_default();
    if let Some(line) = log
        .lines()
        .find(|line| line.contains("mesh-control listening"))
    {
        println!("      mesh-control: {}", shorten(line, 220));
        println!("      (nodes and the waypoint verify that identity against the mesh root before sending their tokens)");
    }
}

fn walk_through(show: &mut Walkthrough, mesh: &MeshLab) -> anyhow::Result<()> {
    show.step(
        "client (n1) calls backend (n2) by its service IP, 3 times",
        || {
            print_indented(&mesh.get("client", BACKEND_VIP, &["--count", "3"])?);
            println!(
                "      the service IP is not routable: eBPF sent each connect to n1's tunnel,"
            );
            println!("      which carried it over mTLS (HBONE) to n2's tunnel. n2's access log:");
            for line in wait_for_access_lines(mesh, "mesh-node-n2", "src.workload=client", 3) {
                println!("      {line}");
            }
            Ok(())
        },
    )?;
    show.step(
        "guest (enrolled, not allowed by 20-policy.yaml's AuthorizationPolicy) calls backend",
        || {
            print_indented(&mesh.get("guest", BACKEND_VIP, &["--timeout-ms", "3000"])?);
            for line in wait_for_access_lines(mesh, "mesh-node-n1", "src.workload=guest", 1) {
                println!("      n1: {line}");
            }
            Ok(())
        },
    )?;
    show.step(
        "intruder (outside the mesh) connects straight to backend's pod IP",
        || {
            let target = format!("{}:8080", mesh.pod_ip("backend")?);
            print_indented(&mesh.get("intruder", &target, &["--timeout-ms", "2000"])?);
            println!(
                "      backend is STRICT: eBPF on n2 steers every port of backend's pod to the tunnel, which refuses plaintext"
            );
            Ok(())
        },
    )?;
    show.step("metrics scraped from each node's :15020/metrics", || {
        for node in ["n1", "n2"] {
            let metrics = mesh.node_metrics(node)?;
            let opened: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
                .collect();
            println!(
                "      {node}: {} istio_tcp_connections_opened_total series, e.g.",
                opened.len()
            );
            if let Some(line) = opened.first() {
                println!("        {}", shorten(line, 200));
            }
        }
        Ok(())
    })?;
    waypoint_steps(show, mesh)
}

/// `website` is bound to the waypoint (00-app.yaml), which applies 10-routing.yaml and the L7
/// part of 20-policy.yaml.
fn waypoint_steps(show: &mut Walkthrough, mesh: &MeshLab) -> anyhow::Result<()> {
    show.step(
        "client calls website 200 times: the waypoint splits 90/10 between v1 and v2",
        || {
            print_indented(&mesh.get("client", WEBSITE_VIP, &["--count", "200", "--summary"])?);
            println!("      n1's tunnel sent each request over HBONE to the waypoint (n2), which");
            println!("      picked a subset by weight and forwarded over HBONE to that pod's node");
            Ok(())
        },
    )?;
    show.step("with header end-user: jason, website v3 answers", || {
        let args = ["--count", "10", "--summary", "--header", "end-user: jason"];
        print_indented(&mesh.get("client", WEBSITE_VIP, &args)?);
        Ok(())
    })?;
    show.step("GET /fault: the waypoint injects an abort (503)", || {
        let args = ["--path", "/fault", "--count", "3", "--summary"];
        print_indented(&mesh.get("client", WEBSITE_VIP, &args)?);
        Ok(())
    })?;
    show.step(
        "GET /admin: denied by an L7 AuthorizationPolicy at the waypoint",
        || {
            print_indented(&mesh.get("client", WEBSITE_VIP, &["--path", "/admin"])?);
            Ok(())
        },
    )?;
    show.step(
        "other spellings of /admin: normalized first, so denied (403) or refused (400)",
        || {
            for path in [
                "//admin/",
                "/%61dmin",
                "/public/../admin",
                "/public%2F..%2Fadmin",
            ] {
                let answer = mesh.get("client", WEBSITE_VIP, &["--path", path])?;
                println!("      {path:<22} {}", answer.trim());
            }
            Ok(())
        },
    )?;
    show.step(
        "request metrics scraped from the waypoint's :15020/metrics",
        || {
            let metrics = mesh.waypoint_metrics()?;
            let requests: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .collect();
            println!("      {} istio_requests_total series, e.g.", requests.len());
            for line in requests.iter().take(2) {
                println!("        {}", shorten(line, 240));
            }
            Ok(())
        },
    )?;
    Ok(())
}

/// Up to `count` access-log events of process `label` matching `needle`; waits up to two
/// seconds for them, since a tunnel logs a connection only once it has closed.
fn wait_for_access_lines(mesh: &MeshLab, label: &str, needle: &str, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(2), || {
        lines = access_lines(&mesh.log(label), needle);
        lines.len() >= count
    });
    lines.into_iter().take(count).collect()
}

/// Access-log events matching `needle`, reduced to their key=value fields.
fn access_lines(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("connection complete") && line.contains(needle))
        .map(|line| {
            let fields = line
                .split_once("connection complete")
                .map_or("", |(_, rest)| rest);
            shorten(fields.trim(), 240)
        })
        .collect()
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}

/// Builds the eBPF programs and the lab's binaries (mesh-control, mesh-node, mesh-waypoint,
/// weft-lab-app) into `target/debug`, or `target/release` with `release`.
pub(crate) fn build(release: bool) -> anyhow::Result<()> {
    ebpf::build(&ebpf::BuildArgs { no_setup: false })?;
    let mut cargo = Command::new(setup::cargo());
    cargo
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
        .args(["-p", "weft-tests"]);
    if release {
        cargo.arg("--release");
    }
    workspace::run(&mut cargo)
}

/// Numbered, timed steps with a closing tally.
#[derive(Default)]
struct Walkthrough {
    shown: usize,
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
        println!("      ({:.1} s)", started.elapsed().as_secs_f64());
        Ok(value)
    }

    fn summary(&self) {
        println!(
            "demo: {} steps shown (what is not built yet: the README's status table)",
            self.shown
        );
    }
}
