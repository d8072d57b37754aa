//! `mesh-node`: the Weft node tunnel.
//!
//! Thin binary: parse arguments and the config file, set up logging, build the tunnel, wait for
//! SIGTERM/SIGINT and drain with the configured deadline.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use mesh_core::{
    control::ControlConnection,
    drain::{self, DrainTrigger},
    identity::grpc::BearerToken,
    signal, telemetry,
};
use mesh_node::{
    app, ca_source,
    capture::{self, NodeAddresses},
    cni::{self, CniContext, PodDirectory, StartedPods},
    config::Config,
    enrollment::{self, EnrollmentHandle},
    feed::{self, FeedClientConfig, FeedStatus, MeshSnapshot},
    redirect,
};
use tokio::sync::watch;

/// Weft node tunnel: the per-node zero-trust proxy. Captures traffic of enrolled pods with eBPF,
/// carries it over mutually authenticated HBONE tunnels with SPIFFE identities, and enforces
/// L4 authorization policy.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Static configuration file (YAML).
    #[arg(
        long,
        env = "WEFT_NODE_CONFIG",
        required_unless_present = "bpf_cleanup"
    )]
    config: Option<PathBuf>,
    /// Pin the eBPF programs' links and maps in this bpffs directory (e.g. /sys/fs/bpf/weft): they
    /// stay attached when mesh-node exits, so enrolled pods cannot bypass the tunnel while it
    /// restarts, and the next start adopts them in place. Without it, exiting detaches all.
    #[arg(long, env = "WEFT_BPF_PIN_PATH")]
    bpf_pin_path: Option<PathBuf>,
    /// Remove everything pinned under --bpf-pin-path (detaching the programs) and exit.
    #[arg(long, requires = "bpf_pin_path")]
    bpf_cleanup: bool,
    /// Capture enrolled pods' traffic with eBPF programs attached to this cgroup (path below the
    /// cgroup2 mount; "" for the whole hierarchy). It must contain both the pods and this
    /// process. Without it, only traffic sent to the listeners directly is handled.
    #[arg(long, env = "WEFT_REDIRECT_CGROUP")]
    redirect_cgroup: Option<PathBuf>,
    /// The kubelet's cgroup, relative to the cgroup2 mount (e.g. `system.slice/kubelet.service`):
    /// its probes to enrolled pods are sent from the probe address (169.254.7.127), the only
    /// plaintext source strict pods accept. Without it, strict pods refuse kubelet probes.
    #[arg(long, env = "WEFT_KUBELET_CGROUP", requires = "redirect_cgroup")]
    kubelet_cgroup: Option<PathBuf>,
    /// This node's IPv4 address: pods' IPv4 connections are redirected to it (outbound port).
    #[arg(long, env = "WEFT_NODE_IP")]
    node_ip: Option<Ipv4Addr>,
    /// This node's IPv6 address: the tunnel also listens for captured connections on
    /// `[<it>]:<outbound port>`, and pods' native IPv6 connections are redirected there.
    #[arg(long, env = "WEFT_NODE_IPV6")]
    node_ipv6: Option<Ipv6Addr>,
    /// Also find pod network namespaces through /proc/<pid>/ns/net (needs the host PID
    /// namespace); /run/netns is always scanned.
    #[arg(long)]
    scan_proc: bool,
    /// This node's name, overriding `node_name` in the config file (a DaemonSet sets it from
    /// `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Follow mesh-control's node feed at this address (e.g.
    /// `https://mesh-control.weft-system.svc:15012`): workloads, services and policies then come
    /// from the control plane, and the config file only needs this node's own settings.
    /// Authenticates with the token in `ca.token_file`; verifies mesh-control with
    /// `ca.trust_bundle_file` and `ca.control_identity` (`http://` is plaintext, for labs only).
    #[arg(long, env = "WEFT_CONTROL_ADDRESS")]
    control_address: Option<String>,
    /// Take workloads, services and policies from a saved node feed (`mesh-control dump
    /// --node`), applied as a version from mesh-control would be, instead of following
    /// mesh-control. The config file then only holds this node's own settings.
    #[arg(long, env = "WEFT_MESH_FILE", conflicts_with = "control_address")]
    mesh_file: Option<PathBuf>,
    /// Answer the `weft-cni` plugin on this Unix socket (e.g. /var/run/weft/cni.sock): pods are
    /// then captured before their containers start, and a pod the node cannot place yet does
    /// not start (the runtime retries). Needs --redirect-cgroup to capture.
    #[arg(long, env = "WEFT_CNI_SOCKET")]
    cni_socket: Option<PathBuf>,
    /// Keep the bytes of same-node connections in the tunnel's userspace copy instead of
    /// joining the two apps' sockets in the kernel once the connection is checked (the kernel
    /// join is on by default with --redirect-cgroup; docs/same-node.md).
    #[arg(long, env = "WEFT_NO_SAME_NODE_JOIN")]
    no_same_node_join: bool,
    /// Send every same-node connection through the tunnel, instead of letting a client pod's
    /// connects to a same-node destination the tunnel already checked for it go straight there
    /// (on by default with --redirect-cgroup; docs/same-node.md).
    #[arg(long, env = "WEFT_NO_SAME_NODE_DIRECT")]
    no_same_node_direct: bool,
    #[command(flatten)]
    log: telemetry::LogOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any start-up work: an early SIGTERM must drain, not kill.
    let mut signals = signal::ShutdownSignals::install()?;
    telemetry::init(&args.log)?;
    if let (true, Some(pins)) = (args.bpf_cleanup, &args.bpf_pin_path) {
        let removed = redirect::pin::remove_all(pins)?;
        capture::remove_probe_addresses().context("removing the probe source addresses from lo")?;
        tracing::info!(pins = %pins.display(), ?removed, "pinned eBPF objects and probe addresses removed");
        return Ok(());
    }
    let config_path = args.config.as_deref().context("--config is required")?;
    let mut config = Config::from_file(config_path)?;
    if let Some(name) = &args.node_name {
        config.node_name = name.clone();
    }
    // Without mesh-control, the saved feed (if any) is the only version the node applies.
    let initial = match &args.mesh_file {
        Some(path) => feed::saved::read(path)?,
        None => MeshSnapshot::default(),
    };
    config.follows_control_feed = args.control_address.is_some();
    config.pod_netns.scan_proc |= args.scan_proc;
    if args.node_ipv6.is_some() {
        config.listeners.outbound_ipv6 = args.node_ipv6;
    }
    tracing::info!(config = ?config, "mesh-node starting");
    raise_open_file_limit();
    let mesh = feed::convert::mesh(&config, &initial);
    for warning in &mesh.warnings {
        tracing::warn!(%warning, "saved feed");
    }
    let wanted = enrollment::wanted(&mesh.state);
    let base = config.clone();
    let bound = app::build(config, mesh.state, mesh.policies)
        .await
        .context("starting the node tunnel")?;
    let enrollment = match &args.redirect_cgroup {
        Some(cgroup) => {
            let node = NodeAddresses {
                ipv4: args.node_ip,
                ipv6: args.node_ipv6,
            };
            let mut redirect = capture::redirect_config(cgroup, node, &bound, &base)?;
            redirect.pin_path = args.bpf_pin_path.clone();
            redirect.kubelet_cgroup = args.kubelet_cgroup.clone();
            redirect.join = !args.no_same_node_join;
            redirect.direct = !args.no_same_node_direct;
            if redirect.kubelet_cgroup.is_none() {
                tracing::warn!("no --kubelet-cgroup: kubelet probes to STRICT pods are refused");
            }
            capture::add_probe_addresses(&redirect).context("adding the probe source address")?;
            let scans = bound.pod_scanner().results();
            // Following mesh-control, the pods to capture are known from its first version on.
            let start = |redirect: &redirect::Config| match args.control_address.is_some() {
                true => EnrollmentHandle::start_pending(redirect, scans.clone()),
                false => EnrollmentHandle::start(redirect, wanted.clone(), scans.clone()),
            };
            let mut handle = capture::start_with_fallback(&mut redirect, start)
                .context("attaching eBPF redirection")?;
            bound.metrics().install_ebpf_counters(handle.counters());
            bound.set_steering(handle.steering());
            if let Some(joiner) = handle.joiner() {
                bound.set_joiner(joiner);
            }
            if let Some((direct, events)) = handle.take_direct() {
                bound.set_direct(direct, events);
            }
            Some(handle)
        }
        None => None,
    };
    let mut feed = match &args.control_address {
        Some(address) => Some(ControlFeed::start(address, &base)?),
        None => None,
    };
    let directory = watch::Sender::new(match feed {
        Some(_) => PodDirectory::default(),
        None => PodDirectory::from_snapshot(&initial, &base.node_name),
    });
    let (started_tx, mut started) = watch::channel(StartedPods::new());
    let (cni_drain, cni_watch) = drain::channel();
    if let Some(socket) = &args.cni_socket {
        let context = CniContext {
            directory: directory.subscribe(),
            enrolled: enrollment.as_ref().map(EnrollmentHandle::captured),
            listening: base.in_pod.enabled.then(|| bound.in_pod_listeners()),
            started: started_tx,
            timeout: cni::ADD_TIMEOUT,
        };
        cni::serve(socket, context, cni_watch)?;
    }
    let mut latest = Arc::new(initial);
    let signal = loop {
        tokio::select! {
            signal = signals.recv() => break signal,
            Some(snapshot) = next_snapshot(&mut feed) => {
                directory.send_replace(PodDirectory::from_snapshot(&snapshot, &base.node_name));
                latest = snapshot;
            }
            // A pod start gave addresses the feed does not have yet: apply the mesh again.
            Ok(()) = started.changed(), if feed.is_some() && latest.version > 0 => {}
        }
        let filled = cni::fill_addresses(&latest, &base.node_name, &started.borrow_and_update());
        apply_snapshot(&bound, enrollment.as_ref(), &base, &filled).await;
    };
    // Pod starts in flight are refused rather than left waiting on a draining node.
    cni_drain.drain(Duration::from_secs(1)).await;
    tracing::info!(?signal, "shutdown requested, draining");
    if let Some(feed) = feed {
        feed.stop().await;
    }
    let outcome = bound.shutdown().await;
    // Detach only after the listeners are gone: pods' new connections then fail rather than
    // bypass the tunnel while it drains.
    if let Some(enrollment) = enrollment {
        enrollment.shutdown().await;
    }
    tracing::info!(?outcome, "drained, exiting");
    Ok(())
}

/// The subscription to mesh-control, running in the background.
struct ControlFeed {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    drain: DrainTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl ControlFeed {
    fn start(address: &str, config: &Config) -> anyhow::Result<Self> {
        let mut control = ControlConnection::new(ca_source::control_endpoint(config, address)?);
        // Re-read for every subscription: a projected service-account token rotates.
        control.token = config.ca.token_file.clone().map(BearerToken::file);
        let client = FeedClientConfig {
            control,
            node_name: config.node_name.clone(),
        };
        let (snapshots_tx, snapshots) = watch::channel(Arc::new(MeshSnapshot::default()));
        let (status, _) = watch::channel(FeedStatus::default());
        let (drain, watch) = drain::channel();
        let task = tokio::spawn(feed::run(client, snapshots_tx, status, watch));
        Ok(Self {
            snapshots,
            drain,
            task,
        })
    }

    async fn stop(self) {
        self.drain.drain(Duration::from_secs(5)).await;
        let _ = self.task.await;
    }
}

/// The next complete snapshot; never resolves without a feed.
async fn next_snapshot(feed: &mut Option<ControlFeed>) -> Option<Arc<MeshSnapshot>> {
    match feed {
        Some(feed) => {
            feed.snapshots.changed().await.ok()?;
            Some(feed.snapshots.borrow_and_update().clone())
        }
        None => std::future::pending().await,
    }
}

/// Makes `snapshot` the node's mesh. What the node cannot use is left out piece by piece
/// (warnings), never the whole version.
async fn apply_snapshot(
    bound: &app::Bound,
    enrollment: Option<&EnrollmentHandle>,
    base: &Config,
    snapshot: &MeshSnapshot,
) {
    let feed::convert::Mesh {
        state,
        policies,
        warnings,
    } = feed::convert::mesh(base, snapshot);
    for warning in warnings {
        tracing::warn!(version = snapshot.version, %warning, "control feed");
    }
    let policy_count = policies.len();
    let wanted = enrollment::wanted(&state);
    let workload_count = state.workloads().len();
    let closed = bound
        .apply_feed_version(snapshot.version, state, policies)
        .await;
    tracing::info!(
        version = snapshot.version,
        workloads = workload_count,
        policies = policy_count,
        closed,
        "mesh updated from mesh-control"
    );
    if let Some(enrollment) = enrollment {
        enrollment.set_wanted(wanted);
    }
}

/// Every proxied connection holds a socket on each side, so the default soft limit (often 1024)
/// would refuse connections long before memory runs short: raise it to the hard limit, which the
/// container runtime sets.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open file limit"),
            Err(error) => tracing::warn!(%error, soft, "could not raise the open file limit"),
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open file limit"),
    }
}
