//! In-pod HBONE listeners with a real network namespace (root): the tunnel listens on
//! `<pod ip>:15008` inside the pod's namespace, so an HBONE client reaches the pod by its own IP
//! with no NAT towards the node; the listener closes when the pod leaves the mesh, and a new one
//! opens when the pod's namespace is replaced.
//!
//! Namespaces are named `wfip<pid>`, addresses stay inside 10.202.0.0/16; both are removed on
//! drop, even when an assertion fails.

mod tunnel_support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use mesh_node::{
    app::{self, Bound, Deps},
    config::Config,
    feed::MeshSnapshot,
    policy::Policies,
    socket::{bind_in_netns, SystemSockets},
    state::State,
};
use tokio::sync::watch;
use tunnel_support::{round_trip, spawn_echo, state_for, HboneCaller, TestCa, WAIT};

fn ip_cmd(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    ensure!(
        status.success(),
        "ip {args:?} failed (this test needs root)"
    );
    Ok(())
}

/// A pod namespace wired to the host by a veth: host `10.202.<subnet>.1/24`, pod `.2`.
struct PodNetns {
    name: String,
    host_if: String,
    subnet: u8,
}

impl PodNetns {
    /// `generation` tells apart successive sandboxes of one pod (same subnet and IP).
    fn new(subnet: u8, generation: u8) -> Result<Self> {
        let pid = std::process::id() % 10_000;
        let name = format!("wfip{pid}s{subnet}g{generation}");
        ip_cmd(&["netns", "add", &name])?;
        let host_if = format!("wfip{pid}h{subnet}{generation}");
        let pod = Self {
            name,
            host_if,
            subnet,
        };
        pod.wire()?;
        Ok(pod)
    }

    fn wire(&self) -> Result<()> {
        let host_if = self.host_if.as_str();
        ip_cmd(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &self.name,
        ])?;
        let host_addr = format!("10.202.{}.1/24", self.subnet);
        ip_cmd(&["addr", "add", &host_addr, "dev", host_if])?;
        ip_cmd(&["link", "set", host_if, "up"])?;
        let pod_addr = format!("10.202.{}.2/24", self.subnet);
        ip_cmd(&["-n", &self.name, "addr", "add", &pod_addr, "dev", "eth0"])?;
        ip_cmd(&["-n", &self.name, "link", "set", "eth0", "up"])?;
        ip_cmd(&["-n", &self.name, "link", "set", "lo", "up"])
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn ip(&self) -> IpAddr {
        IpAddr::from([10, 202, self.subnet, 2])
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// An echo server on `<pod ip>:port` inside the pod's namespace.
fn echo_in(pod: &PodNetns, port: u16) -> Result<()> {
    let std_listener = bind_in_netns(&pod.path(), SocketAddr::new(pod.ip(), port), 0)?;
    spawn_echo(tokio::net::TcpListener::from_std(std_listener)?);
    Ok(())
}

fn settings() -> Result<Config> {
    let yaml = r#"
node_name: n1
drain_deadline: 2s
listeners:
  outbound: 127.0.0.1:0
  inbound_plaintext: 127.0.0.1:0
  hbone: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  admin: 127.0.0.1:0
"#;
    Ok(Config::from_yaml(yaml)?)
}

/// A remote client, and (`with_pod`) the pod `apps/app-0` on this node.
fn state(pod: &PodNetns, with_pod: bool) -> State {
    let client = tunnel_support::pod("web", "client-0", "client", "10.202.250.9", "n2");
    let app = tunnel_support::pod("apps", "app-0", "app", &pod.ip().to_string(), "n1");
    let workloads = if with_pod {
        vec![client, app]
    } else {
        vec![client]
    };
    state_for("n1", &MeshSnapshot::of(workloads, []))
}

async fn wait_listeners(
    view: &mut watch::Receiver<BTreeMap<IpAddr, PathBuf>>,
    want: impl Fn(&BTreeMap<IpAddr, PathBuf>) -> bool,
) -> Result<()> {
    tokio::time::timeout(WAIT, view.wait_for(|open| want(open)))
        .await
        .context("in-pod listeners never reached the expected state")??;
    Ok(())
}

/// The old sandbox's veth goes once nothing (our listener) holds its namespace any more.
async fn wait_link_gone(name: &str) -> Result<()> {
    let gone = async {
        loop {
            let status = Command::new("ip")
                .args(["link", "show", name])
                .stderr(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .status();
            if status.map(|s| !s.success()).unwrap_or(false) {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .with_context(|| format!("veth {name} of the deleted namespace never went away"))
}

async fn start(pod: &PodNetns, ca: &TestCa) -> Result<Bound> {
    let deps = Deps {
        sockets: Arc::new(SystemSockets),
        certs: ca.source(),
    };
    Ok(app::build_with(settings()?, state(pod, true), Policies::default(), deps).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_is_reached_on_its_own_ip_and_listener_follows_the_pod() -> Result<()> {
    let subnet = (std::process::id() % 200) as u8 + 1;
    let pod = PodNetns::new(subnet, 0)?;
    echo_in(&pod, 8080)?;
    let ca = TestCa::new();
    let node = start(&pod, &ca).await?;
    let mut view = node.in_pod_listeners();
    wait_listeners(&mut view, |open| open.get(&pod.ip()) == Some(&pod.path())).await?;

    let (_, dump) = tunnel_support::http_get(node.admin, "/config_dump").await;
    ensure!(
        dump.contains(&format!("\"{}\": \"{}\"", pod.ip(), pod.path().display())),
        "in-pod listener missing from the dump: {dump}"
    );
    let caller = HboneCaller::new(&ca).await?;
    let mut tunnel = caller.call(pod.ip(), 8080).await?;
    round_trip(&mut tunnel, b"in-pod hbone").await?;
    let metrics = node.metrics().encode();
    ensure!(
        metrics.contains("destination_workload=\"app-0\""),
        "inbound not recorded: {metrics}"
    );
    // A pod's listener serves that pod only, not its neighbours.
    let neighbour = "10.202.250.9:8080".parse()?;
    let other = caller.call_as(pod.ip(), neighbour).await;
    ensure!(
        other.as_ref().is_err_and(|e| e.to_string().contains("400")),
        "authority of another workload accepted: {:?}",
        other.map(|_| ())
    );

    node.update_mesh(state(&pod, false), Policies::default())
        .await;
    wait_listeners(&mut view, |open| open.is_empty()).await?;
    // The listener stops accepting once its server task sees the stop signal, just after the
    // view is published: poll, bounded, until connects are refused.
    let hbone = SocketAddr::new(pod.ip(), 15008);
    let refused = tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(hbone).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ensure!(
        refused.is_ok(),
        "listener still open {WAIT:?} after the pod left"
    );
    drop(tunnel);
    tokio::time::timeout(WAIT, node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_pod_namespace_gets_a_new_listener() -> Result<()> {
    let subnet = (std::process::id() % 200) as u8 + 1 + 50;
    let ca = TestCa::new();
    let first = PodNetns::new(subnet, 0)?;
    let node = start(&first, &ca).await?;
    let mut view = node.in_pod_listeners();
    wait_listeners(&mut view, |open| open.contains_key(&first.ip())).await?;
    // The sandbox is replaced: same IP, new namespace.
    let first_if = first.host_if.clone();
    drop(first);
    wait_listeners(&mut view, |open| open.is_empty()).await?;
    wait_link_gone(&first_if).await?;
    let second = PodNetns::new(subnet, 1)?;
    echo_in(&second, 9090)?;
    wait_listeners(&mut view, |open| open.contains_key(&second.ip())).await?;
    let caller = HboneCaller::new(&ca).await?;
    let mut tunnel = caller.call(second.ip(), 9090).await?;
    round_trip(&mut tunnel, b"after restart").await?;
    drop(tunnel);
    tokio::time::timeout(WAIT, node.shutdown()).await?;
    Ok(())
}
