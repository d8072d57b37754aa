//! `cargo xtask bench`: the data path measured in the lab with real programs.
//!
//! Starts the sample mesh of `weft_tests::mesh` (two nodes, mesh-control, a mesh-node per node,
//! the waypoint) from release binaries, adds bench pods, and runs iperf3 and wrk against nginx
//! and an iperf3 server on each of these paths, in alternating order over several rounds:
//!
//! | path | client pod | server pod |
//! |---|---|---|
//! | direct | `plain-c` (n1, not enrolled) | `plain-s` (n2, not enrolled) |
//! | mesh | `client` (n1, enrolled) | `srv` (n2, enrolled): node tunnel -> HBONE/mTLS -> node tunnel |
//! | same node, direct | `plain-c` | `plain-l` (n1, not enrolled) |
//! | same node, mesh | `client` | `local` (n1, enrolled) |
//! | waypoint | `client` | service `bench` (bound to the waypoint) -> `srv` |
//!
//! Prints medians with min-max and ratios to the direct path of the same run, the tunnels' CPU
//! seconds per GB and per request (from /proc), their RSS idle, at peak and after the load, and
//! the memory of an idle connection through the mesh; writes the same as JSON.

mod load;
mod process;
mod report;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use weft_tests::{
    mesh::{MeshLab, MeshLabOptions, WAYPOINT_POD},
    wait::retry_until_200,
};

use crate::{demo, setup, workspace};
use load::{Scenario, HTTP_PORT, IPERF_PORT};
use process::Watched;
use report::{Report, Run};

/// Namespace and cgroup prefix of the bench lab.
const PREFIX: &str = "weftbn";
/// The sample mesh's client pod (namespace demo, enrolled, on n1).
const MESH_CLIENT: &str = "client";
/// Not enrolled (namespace `outside`), on n1: the direct paths' client.
const PLAIN_CLIENT: &str = "plain-c";
/// How long the bench waits after load before it reads the tunnels' memory "after": longer than
/// the interval at which they return free memory to the system.
const SETTLE: Duration = Duration::from_secs(15);
/// The service bound to the waypoint whose endpoint is `srv`.
const WAYPOINT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);

/// Bench pods added to the sample mesh: name, node, address, namespace, service account.
const BENCH_PODS: &[(&str, &str, Ipv4Addr, &str, &str)] = &[
    (
        PLAIN_CLIENT,
        "n1",
        Ipv4Addr::new(10, 211, 1, 40),
        "outside",
        "intruder",
    ),
    (
        "plain-l",
        "n1",
        Ipv4Addr::new(10, 211, 1, 41),
        "outside",
        "intruder",
    ),
    (
        "plain-s",
        "n2",
        Ipv4Addr::new(10, 211, 2, 40),
        "outside",
        "intruder",
    ),
    (
        "local",
        "n1",
        Ipv4Addr::new(10, 211, 1, 42),
        "demo",
        "backend",
    ),
    (
        "srv",
        "n2",
        Ipv4Addr::new(10, 211, 2, 41),
        "demo",
        "backend",
    ),
    // Enrolled, in a namespace whose same-node connections always go over mTLS.
    (
        "sealed",
        "n1",
        Ipv4Addr::new(10, 211, 1, 43),
        SEALED_NAMESPACE,
        "sealed",
    ),
];
/// The pods that run nginx and an iperf3 server.
const SERVER_PODS: &[&str] = &["plain-l", "plain-s", "local", "srv", "sealed"];
/// The namespace labelled `weft.dev/same-node-encryption: always`.
const SEALED_NAMESPACE: &str = "sealed";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds; each runs every scenario on every path, in alternating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds per load run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Idle connections opened through the mesh to measure memory per connection.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: u32,
    /// One round of 2 s runs and 200 idle connections: checks the harness works (CI). Its
    /// figures mean little.
    #[arg(long)]
    pub smoke: bool,
    /// Use the debug build instead of building release binaries (the figures then mean little).
    #[arg(long)]
    pub debug_build: bool,
    /// Only these scenarios (repeatable): iperf3_1_streams, iperf3_4_streams, wrk_keepalive_32,
    /// wrk_keepalive_1, wrk_new_connection_32. Default: all.
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// Only these routes (repeatable), with the baselines their ratios need: direct, mesh,
    /// same_node_direct, same_node_mesh, same_node_mesh_mtls, loopback, waypoint. Default: all.
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// Where to write the JSON report (default: target/bench/lab.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A way from a client pod to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Mesh,
    SameNodeDirect,
    SameNodeMesh,
    SameNodeMeshEncrypted,
    Loopback,
    Waypoint,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::Direct,
        Route::Mesh,
        Route::SameNodeDirect,
        Route::SameNodeMesh,
        Route::SameNodeMeshEncrypted,
        Route::Loopback,
        Route::Waypoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Mesh => "mesh (2 node tunnels)",
            Route::SameNodeDirect => "same node, direct",
            Route::SameNodeMesh => "same node, mesh",
            Route::SameNodeMeshEncrypted => "same node, mesh, always mTLS",
            Route::Loopback => "loopback in one pod",
            Route::Waypoint => "mesh via waypoint",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Mesh => "mesh",
            Route::SameNodeDirect => "same_node_direct",
            Route::SameNodeMesh => "same_node_mesh",
            Route::SameNodeMeshEncrypted => "same_node_mesh_mtls",
            Route::Loopback => "loopback",
            Route::Waypoint => "waypoint",
        }
    }

    /// The route this one's ratio is taken against (itself for the baselines).
    pub fn baseline(self) -> Route {
        match self {
            Route::Direct | Route::Mesh | Route::Waypoint => Route::Direct,
            Route::SameNodeDirect | Route::SameNodeMesh | Route::SameNodeMeshEncrypted => {
                Route::SameNodeDirect
            }
            Route::Loopback => Route::Loopback,
        }
    }

    fn client(self) -> &'static str {
        match self {
            Route::Direct | Route::SameNodeDirect => PLAIN_CLIENT,
            Route::Loopback => "plain-l",
            Route::Mesh | Route::SameNodeMesh | Route::SameNodeMeshEncrypted | Route::Waypoint => {
                MESH_CLIENT
            }
        }
    }

    fn server(self) -> Option<&'static str> {
        match self {
            Route::Direct => Some("plain-s"),
            Route::Mesh => Some("srv"),
            Route::SameNodeDirect => Some("plain-l"),
            Route::SameNodeMesh => Some("local"),
            Route::SameNodeMeshEncrypted => Some("sealed"),
            Route::Loopback | Route::Waypoint => None,
        }
    }

    /// The waypoint proxies HTTP only.
    fn carries(self, scenario: Scenario) -> bool {
        self != Route::Waypoint || scenario.is_http()
    }

    fn is_meshed(self) -> bool {
        self.baseline() != self
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !setup::is_root() {
        bail!("the bench lab creates network namespaces and loads eBPF programs: run it as root");
    }
    let (rounds, seconds, idle_connections) = if args.smoke {
        (1, 2, 200)
    } else {
        (args.rounds, args.seconds, args.idle_connections)
    };
    if rounds == 0 || seconds == 0 || idle_connections == 0 || idle_connections > 15_000 {
        bail!("--rounds and --seconds must be positive, --idle-connections 1 to 15000");
    }
    let scenarios = chosen_scenarios(&args.scenarios)?;
    let chosen_routes = chosen_routes(&args.routes)?;
    setup::ensure_bench()?;
    let profile = if args.debug_build { "debug" } else { "release" };
    demo::build(!args.debug_build)?;

    let work_dir = std::env::temp_dir().join("weft-bench");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let options = MeshLabOptions {
        prefix: PREFIX.to_string(),
        work_dir: work_dir.clone(),
        bin_dir: workspace::root().join("target").join(profile),
        example_dir: workspace::root().join("deploy/examples/website"),
    };
    eprintln!("bench: starting the lab mesh ({profile} binaries)");
    let mut mesh = MeshLab::start(options).context("start the lab mesh")?;
    add_bench_pods(&mut mesh, &work_dir)?;
    let bench = Bench {
        tunnels: vec![
            watched(&mesh, "mesh-node-n1")?,
            watched(&mesh, "mesh-node-n2")?,
        ],
        waypoint: watched(&mesh, "mesh-waypoint")?,
        mesh: &mesh,
        seconds,
    };
    let mut report = Report::new(rounds, seconds, profile);
    // Let start-up settle (certificates, feeds) before "idle".
    std::thread::sleep(Duration::from_secs(2));
    report.rss_idle = bench.tunnel_rss()?;

    for round in 0..rounds {
        for &scenario in &scenarios {
            let mut routes: Vec<Route> = chosen_routes
                .iter()
                .copied()
                .filter(|route| route.carries(scenario))
                .collect();
            if round % 2 == 1 {
                routes.reverse();
            }
            for route in routes {
                let run = bench
                    .one_run(scenario, route)
                    .with_context(|| format!("{} over {}", scenario.name(), route.name()))?;
                eprintln!(
                    "bench: round {}/{rounds} {} over {}: {:.2}",
                    round + 1,
                    scenario.name(),
                    route.name(),
                    run.outcome.value
                );
                report.runs.push(run);
            }
        }
    }
    // Memory after the load: what the tunnels give back once connections are gone (they return
    // free memory to the system every mesh_core::memory::TRIM_INTERVAL).
    std::thread::sleep(SETTLE);
    report.rss_after = bench.tunnel_rss()?;
    report.idle = Some(bench.idle_connections(idle_connections)?);

    let text = report.text();
    println!("{text}");
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| workspace::root().join("target/bench/lab.json"));
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)
        .with_context(|| format!("write {}", json_path.display()))?;
    println!("JSON report: {}", json_path.display());
    drop(mesh);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

/// The routes named by `keys` and their baselines, in [`Route::ALL`] order; all when none.
fn chosen_routes(keys: &[String]) -> anyhow::Result<Vec<Route>> {
    if keys.is_empty() {
        return Ok(Route::ALL.to_vec());
    }
    let mut named = Vec::new();
    for key in keys {
        let route = Route::ALL
            .into_iter()
            .find(|route| route.key() == key)
            .with_context(|| format!("no route {key:?}"))?;
        named.push(route);
        named.push(route.baseline());
    }
    Ok(Route::ALL
        .into_iter()
        .filter(|route| named.contains(route))
        .collect())
}

fn chosen_scenarios(keys: &[String]) -> anyhow::Result<Vec<Scenario>> {
    if keys.is_empty() {
        return Ok(Scenario::ALL.to_vec());
    }
    keys.iter()
        .map(|key| {
            Scenario::ALL
                .into_iter()
                .find(|s| s.key() == *key)
                .with_context(|| format!("no scenario {key:?}"))
        })
        .collect()
}

fn watched(mesh: &MeshLab, label: &str) -> anyhow::Result<Watched> {
    let pid = mesh
        .lab
        .pid(label)
        .with_context(|| format!("{label} is not running"))?;
    Ok(Watched {
        label: label.to_string(),
        pid,
    })
}

/// Adds the bench pods, the waypoint-bound service, and starts nginx and iperf3 in the server
/// pods; returns once every route answers.
fn add_bench_pods(mesh: &mut MeshLab, work_dir: &Path) -> anyhow::Result<()> {
    for (name, node, ip, namespace, account) in BENCH_PODS {
        mesh.add_pod(name, node, *ip, namespace, account)?;
    }
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bench\n  namespace: demo\n  \
         labels: {{weft.dev/use-waypoint: {WAYPOINT_POD}}}\nspec:\n  clusterIP: {WAYPOINT_VIP}\n  \
         selector: {{app: srv}}\n  ports: [{{name: http, port: {HTTP_PORT}, targetPort: {HTTP_PORT}}}]\n"
    );
    std::fs::write(mesh.config_dir().join("81-bench-service.yaml"), service)?;
    let sealed = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SEALED_NAMESPACE}\n  labels: \
         {{weft.dev/dataplane-mode: ambient, weft.dev/same-node-encryption: always}}\n"
    );
    std::fs::write(mesh.config_dir().join("81-bench-sealed.yaml"), sealed)?;
    for pod in SERVER_PODS {
        let ip = mesh.pod_ip(pod)?;
        let conf = nginx_conf(work_dir, pod, ip)?;
        let conf = conf.display().to_string();
        let error_log = work_dir.join(format!("nginx-{pod}/error.log"));
        let error_log = error_log.display().to_string();
        mesh.lab.spawn_in_pod(
            pod,
            &format!("nginx-{pod}"),
            Path::new("/usr/sbin/nginx"),
            &["-e", &error_log, "-c", &conf],
        )?;
        let (ip, port) = (ip.to_string(), IPERF_PORT.to_string());
        mesh.lab.spawn_in_pod(
            pod,
            &format!("iperf3-{pod}"),
            Path::new("/usr/bin/iperf3"),
            &["-s", "-B", &ip, "-p", &port],
        )?;
    }
    // The loopback baseline: a second iperf3 in plain-l on 127.0.0.1 (nginx listens there too).
    let port = IPERF_PORT.to_string();
    mesh.lab.spawn_in_pod(
        "plain-l",
        "iperf3-plain-l-loopback",
        Path::new("/usr/bin/iperf3"),
        &["-s", "-B", "127.0.0.1", "-p", &port],
    )?;
    for route in Route::ALL {
        let target = format!("{}:{HTTP_PORT}", target_ip(mesh, route)?);
        let answer = retry_until_200(Duration::from_secs(30), || {
            mesh.get(route.client(), &target, &["--timeout-ms", "2000"])
        });
        match answer {
            Ok(out) if out.starts_with("200") => {}
            other => bail!(
                "{} ({} -> {target}) does not answer: {other:?}; logs in {}",
                route.name(),
                route.client(),
                mesh.log_dir().display()
            ),
        }
    }
    Ok(())
}

fn target_ip(mesh: &MeshLab, route: Route) -> anyhow::Result<Ipv4Addr> {
    match (route, route.server()) {
        (_, Some(pod)) => mesh.pod_ip(pod),
        (Route::Loopback, None) => Ok(Ipv4Addr::LOCALHOST),
        (_, None) => Ok(WAYPOINT_VIP),
    }
}

/// nginx for the bench: one worker, no access log, a fixed short answer, keep-alive without a
/// request limit, room for the idle-connection test.
fn nginx_conf(work_dir: &Path, pod: &str, ip: Ipv4Addr) -> anyhow::Result<PathBuf> {
    let dir = work_dir.join(format!("nginx-{pod}"));
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let loopback = match pod {
        "plain-l" => format!("listen 127.0.0.1:{HTTP_PORT} backlog=4096;\n    "),
        _ => String::new(),
    };
    let conf = format!(
        "worker_processes 1;\nworker_rlimit_nofile 40000;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         server {{\n    listen {ip}:{HTTP_PORT} backlog=4096;\n    {loopback}\
         location / {{ default_type text/plain; return 200 \"weft bench {pod}\\n\"; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The running bench lab.
struct Bench<'a> {
    mesh: &'a MeshLab,
    tunnels: Vec<Watched>,
    waypoint: Watched,
    seconds: u32,
}

impl Bench<'_> {
    fn one_run(&self, scenario: Scenario, route: Route) -> anyhow::Result<Run> {
        let watched = self.watched(route);
        for process in &watched {
            process.reset_peak()?;
        }
        let cpu_before = cpu_of(&watched)?;
        let joined_before = match route {
            Route::SameNodeMesh => Some(self.same_node_finished()?),
            _ => None,
        };
        let target = target_ip(self.mesh, route)?.to_string();
        let outcome = scenario.run(&self.mesh.lab, route.client(), &target, self.seconds)?;
        let cpu = cpu_of(&watched)? - cpu_before;
        // Traffic of a meshed route that the tunnels did not carry would measure nothing. The
        // same-node path leaves the bytes to the kernel join, so its tunnel may use almost no
        // CPU: there the tunnel's own count of finished same-node connections is the proof.
        if let Some(before) = joined_before {
            self.check_same_node(route, scenario, before)?;
        } else if route.is_meshed() && cpu < 0.01 * f64::from(self.seconds) {
            bail!(
                "{} used {cpu:.2} CPU-s during the run: the traffic did not go through the mesh",
                route.name()
            );
        }
        let mut peak_rss = Vec::new();
        for process in &watched {
            peak_rss.push((process.label.clone(), process.peak_rss_mib()?));
        }
        Ok(Run {
            scenario,
            route,
            outcome,
            cpu_seconds: cpu,
            peak_rss,
        })
    }

    /// Same-node connections n1's tunnel (the mesh client's node) has finished so far, by how
    /// their bytes travelled: kernel, partly_kernel, tunnel, direct
    /// (`weft_same_node_connections_total`).
    fn same_node_finished(&self) -> anyhow::Result<[u64; 4]> {
        let metrics = self.mesh.node_metrics("n1")?;
        let mut counts = [0; 4];
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("weft_same_node_connections_total{path=\"") else {
                continue;
            };
            let slot = match rest.split('"').next() {
                Some("kernel") => 0,
                Some("partly_kernel") => 1,
                Some("direct") => 3,
                _ => 2,
            };
            let value = line.rsplit(' ').next().unwrap_or("0");
            counts[slot] += value.parse::<f64>().unwrap_or(0.0) as u64;
        }
        Ok(counts)
    }

    /// The same-node run's connections went through the tunnel (it finished some, within a few
    /// seconds of the load ending); prints how their bytes travelled.
    fn check_same_node(
        &self,
        route: Route,
        scenario: Scenario,
        before: [u64; 4],
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.same_node_finished()?;
            let delta: Vec<u64> = now
                .iter()
                .zip(before)
                .map(|(n, b)| n.saturating_sub(b))
                .collect();
            if delta.iter().sum::<u64>() > 0 {
                eprintln!(
                    "bench:   {}: {} connections finished: {} straight to the pod (admitted pair), {} joined in the kernel both ways, {} one way, {} copied by the tunnel",
                    route.name(),
                    delta.iter().sum::<u64>(),
                    delta[3],
                    delta[0],
                    delta[1],
                    delta[2]
                );
                // A direction switches on a write made once the tunnel has caught up with the
                // app; a sender that never pauses may keep it on the tunnel (docs/same-node.md).
                if !scenario.is_http() && delta[0] + delta[1] + delta[3] == 0 {
                    eprintln!("bench:   WARNING: {}: the bulk transfer stayed on the tunnel (not joined in the kernel)", route.name());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: n1's tunnel finished no same-node connection: the traffic did not go through the mesh", route.name());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The mesh processes a route's traffic goes through (their CPU is the route's cost).
    fn watched(&self, route: Route) -> Vec<Watched> {
        match route {
            Route::Direct | Route::SameNodeDirect | Route::Loopback => Vec::new(),
            Route::Mesh | Route::SameNodeMesh | Route::SameNodeMeshEncrypted => {
                self.tunnels.clone()
            }
            Route::Waypoint => {
                let mut all = self.tunnels.clone();
                all.push(self.waypoint.clone());
                all
            }
        }
    }

    fn tunnel_rss(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.tunnels
            .iter()
            .map(|t| Ok((t.label.clone(), t.rss_mib()?)))
            .collect()
    }

    /// Opens `count` idle connections from the mesh client to `srv` and reports the tunnels'
    /// memory before, while they are open, and after they close.
    fn idle_connections(&self, count: u32) -> anyhow::Result<report::Idle> {
        let before = self.tunnel_rss()?;
        let target = format!("{}:{HTTP_PORT}", self.mesh.pod_ip("srv")?);
        let app = self.mesh.bin("weft-lab-app");
        let hold_seconds = 600.to_string();
        let connections = count.to_string();
        let mut holder = self.mesh.lab.command_in_pod(
            MESH_CLIENT,
            &app,
            &[
                "hold",
                &target,
                "--connections",
                &connections,
                "--seconds",
                &hold_seconds,
            ],
        )?;
        let mut child = holder
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("start weft-lab-app hold")?;
        let opened = wait_for_open(&mut child, count);
        let result = opened.and_then(|elapsed| {
            // Let the tunnels finish the streams' set-up on both nodes.
            std::thread::sleep(Duration::from_secs(3));
            Ok((elapsed, self.tunnel_rss()?))
        });
        let _ = child.kill();
        let _ = child.wait();
        let (open_time, open) = result?;
        std::thread::sleep(SETTLE);
        let closed = self.tunnel_rss()?;
        Ok(report::Idle {
            count,
            open_time,
            before,
            open,
            closed,
        })
    }
}

/// Waits until `weft-lab-app hold` prints `open <count>`; returns how long opening took.
fn wait_for_open(child: &mut std::process::Child, count: u32) -> anyhow::Result<Duration> {
    use std::io::BufRead;
    let start = Instant::now();
    let stdout = child.stdout.take().context("hold's stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != format!("open {count}") {
        let status = child.wait()?;
        bail!("weft-lab-app hold did not open {count} connections ({status}): {line:?}");
    }
    Ok(start.elapsed())
}

fn cpu_of(processes: &[Watched]) -> anyhow::Result<f64> {
    processes.iter().map(Watched::cpu_seconds).sum()
}
