//! A lab topology: "nodes" and "pods" as network namespaces and cgroups on one machine.
//!
//! ```text
//!            fabric netns: bridge br0 (10.210.0.0/24)
//!            /                                   \
//!   node n1 netns: eth0 10.210.0.1        node n2 netns: eth0 10.210.0.2
//!     pN (169.254.1.1) -- pod eth0 10.211.1.x/32     ...
//! ```
//! Pods are wired like Calico does it: a /32 address, a link-local next hop on the node side of the
//! veth, and a /32 route on the node. Nodes route each other's pod ranges over the fabric. Every
//! pod has its own cgroup under its node's `pods` cgroup, where the node's eBPF programs attach.
//! Everything is removed on drop, processes first; leftovers of a killed run with the same prefix
//! are removed on the next start.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context};

use super::{
    super::wait::wait_until,
    cgroup::{remove_tree, Cgroup},
    netns::{ip_in, list_with_prefix, sysctl_in, veth, NetNs},
};

/// Link-local next hop every pod routes through (the node side of its veth).
const POD_GATEWAY: &str = "169.254.1.1";

/// `sh` script that joins a cgroup, then runs a program in a netns: `$1` cgroup.procs, `$2` netns.
/// `nsenter --net` changes only the network namespace; `ip netns exec` would also remount /sys,
/// hiding the cgroup2 mount that mesh-node attaches its eBPF programs through.
const ENTER_POD: &str =
    r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg" && exec nsenter --net=/run/netns/"$ns" -- "$@""#;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Short unique prefix for namespace and cgroup names (at most 8 characters).
    pub prefix: String,
    /// Node names, in order; node i (from 1) gets fabric address 10.210.0.i.
    pub nodes: Vec<String>,
    /// Pods and the node each runs on.
    pub pods: Vec<PodSpec>,
}

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
}

/// A lab node: a network namespace on the fabric and a cgroup for its pods.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The cgroup the node's eBPF programs attach to: every pod of this node lives below it.
    pub pods_cgroup: Cgroup,
    /// The cgroup the node's own processes (mesh-node) run in.
    pub system_cgroup: Cgroup,
    /// The parent of both; declared after them so it is removed last.
    pub cgroup: Cgroup,
    pub netns: NetNs,
}

/// A lab pod: its own network namespace and cgroup.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub cgroup: Cgroup,
    pub netns: NetNs,
}

/// A running lab. Field order is teardown order.
#[derive(Debug)]
pub struct Lab {
    processes: Vec<(String, Child)>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    fabric: NetNs,
    root_cgroup: Cgroup,
    log_dir: PathBuf,
    prefix: String,
}

impl Lab {
    /// Builds the topology, after removing leftovers of an earlier run with the same prefix.
    pub fn create(spec: &LabSpec, log_dir: &Path) -> anyhow::Result<Self> {
        if spec.prefix.is_empty() || spec.prefix.len() > 8 {
            bail!("lab prefix {:?} must be 1 to 8 characters", spec.prefix);
        }
        remove_leftovers(&spec.prefix)?;
        fs::create_dir_all(log_dir).context("create lab log directory")?;
        let root_cgroup = Cgroup::create(&cgroup_relative(&spec.prefix))?;
        let fabric = NetNs::create(&format!("{}-fabric", spec.prefix))?;
        ip_in(fabric.name(), &["link", "add", "br0", "type", "bridge"])?;
        ip_in(fabric.name(), &["link", "set", "br0", "up"])?;
        let mut lab = Self {
            processes: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            fabric,
            root_cgroup,
            log_dir: log_dir.to_path_buf(),
            prefix: spec.prefix.clone(),
        };
        for (index, name) in spec.nodes.iter().enumerate() {
            lab.add_node(&spec.prefix, name, index + 1)?;
        }
        lab.route_between_nodes()?;
        for (index, pod) in spec.pods.iter().enumerate() {
            let node_index = lab.node_index(&pod.node)?;
            let ip = Ipv4Addr::new(10, 211, octet(node_index + 1)?, octet(index + 11)?);
            lab.add_pod(pod, ip)?;
        }
        Ok(lab)
    }

    fn add_node(&mut self, prefix: &str, name: &str, index: usize) -> anyhow::Result<()> {
        let netns = NetNs::create(&format!("{prefix}-{name}"))?;
        let ip = Ipv4Addr::new(10, 210, 0, octet(index)?);
        let fabric_end = format!("f{index}");
        veth((&self.fabric, &fabric_end), (&netns, "eth0"))?;
        ip_in(
            self.fabric.name(),
            &["link", "set", &fabric_end, "master", "br0"],
        )?;
        ip_in(
            netns.name(),
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        sysctl_in(netns.name(), "net.ipv4.ip_forward=1")?;
        let node_cgroup = self.root_cgroup.child(name)?;
        self.nodes.push(Node {
            name: name.to_string(),
            ip,
            pods_cgroup: node_cgroup.child("pods")?,
            system_cgroup: node_cgroup.child("system")?,
            cgroup: node_cgroup,
            netns,
        });
        Ok(())
    }

    fn route_between_nodes(&self) -> anyhow::Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j {
                    let range = format!("10.211.{}.0/24", j + 1);
                    let via = other.ip.to_string();
                    ip_in(node.netns.name(), &["route", "add", &range, "via", &via])?;
                }
            }
        }
        Ok(())
    }

    fn node_index(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .with_context(|| format!("unknown lab node {name}"))
    }

    /// Adds pod `spec` with address `ip` (in `10.211.<node>.0/24`, the node's pod range) to a
    /// running lab, wired like the others.
    pub fn add_pod(&mut self, spec: &PodSpec, ip: Ipv4Addr) -> anyhow::Result<()> {
        let node = &self.nodes[self.node_index(&spec.node)?];
        if self.pods.iter().any(|p| p.name == spec.name || p.ip == ip) {
            bail!("lab pod {} or address {ip} exists already", spec.name);
        }
        let netns = NetNs::create(&format!("{}-{}", self.prefix, spec.name))?;
        let node_end = format!("p{}", ip.octets()[3]);
        veth((&node.netns, &node_end), (&netns, "eth0"))?;
        let node_ns = node.netns.name();
        ip_in(
            node_ns,
            &[
                "addr",
                "add",
                &format!("{POD_GATEWAY}/32"),
                "dev",
                &node_end,
            ],
        )?;
        let node_src = node.ip.to_string();
        let pod_route = format!("{ip}/32");
        ip_in(
            node_ns,
            &[
                "route", "add", &pod_route, "dev", &node_end, "src", &node_src,
            ],
        )?;
        ip_in(netns.name(), &["addr", "add", &pod_route, "dev", "eth0"])?;
        ip_in(netns.name(), &["route", "add", POD_GATEWAY, "dev", "eth0"])?;
        let default = ["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"];
        ip_in(netns.name(), &default)?;
        let cgroup = node.pods_cgroup.child(&spec.name)?;
        let node_name = node.name.clone();
        self.pods.push(Pod {
            name: spec.name.clone(),
            node: node_name,
            ip,
            cgroup,
            netns,
        });
        Ok(())
    }

    /// Removes pod `name` (its processes must have ended): namespace, veth and cgroup.
    pub fn remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let position = self
            .pods
            .iter()
            .position(|pod| pod.name == name)
            .with_context(|| format!("no lab pod {name}"))?;
        drop(self.pods.remove(position));
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("no lab node {name}"))
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .with_context(|| format!("no lab pod {name}"))
    }

    /// Every node, in creation order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every pod, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Starts `program` inside pod `pod` (its netns and cgroup); output goes to `<log_dir>/<label>.log`.
    pub fn spawn_in_pod(
        &mut self,
        pod: &str,
        label: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<u32> {
        let pod = self.pod(pod)?;
        let (procs, ns) = (pod.cgroup.procs_file(), pod.netns.name().to_string());
        self.spawn(label, &procs, &ns, program, args)
    }

    /// Starts `program` on node `node` (its netns, the node's system cgroup).
    pub fn spawn_on_node(
        &mut self,
        node: &str,
        label: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<u32> {
        let node = self.node(node)?;
        let (procs, ns) = (
            node.system_cgroup.procs_file(),
            node.netns.name().to_string(),
        );
        self.spawn(label, &procs, &ns, program, args)
    }

    fn spawn(
        &mut self,
        label: &str,
        procs: &Path,
        ns: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<u32> {
        let log_path = self.log_dir.join(format!("{label}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let child = entered(procs, ns, program, args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} as {label}", program.display()))?;
        let pid = child.id();
        self.processes.push((label.to_string(), child));
        Ok(pid)
    }

    /// `program args` to run inside pod `pod` (its netns and cgroup), for the caller to start
    /// and end: stdin closed, stdout and stderr as the caller sets them.
    pub fn command_in_pod(
        &self,
        pod: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Command> {
        let pod = self.pod(pod)?;
        Ok(entered(
            &pod.cgroup.procs_file(),
            pod.netns.name(),
            program,
            args,
        ))
    }

    /// Runs `program` inside pod `pod` to completion and returns its stdout.
    pub fn run_in_pod(&self, pod: &str, program: &Path, args: &[&str]) -> anyhow::Result<String> {
        let pod = self.pod(pod)?;
        run_entered(&pod.cgroup.procs_file(), pod.netns.name(), program, args)
    }

    /// Runs `program` on node `node` (its netns and system cgroup) and returns its stdout.
    pub fn run_on_node(&self, node: &str, program: &Path, args: &[&str]) -> anyhow::Result<String> {
        let node = self.node(node)?;
        run_entered(
            &node.system_cgroup.procs_file(),
            node.netns.name(),
            program,
            args,
        )
    }

    /// The process id of the process started as `label`, while the lab owns it.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|(name, _)| name == label)
            .map(|(_, child)| child.id())
    }

    /// Stops the process started as `label` (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, label: &str, grace: std::time::Duration) -> anyhow::Result<()> {
        let position = self
            .processes
            .iter()
            .position(|(name, _)| name == label)
            .with_context(|| format!("no lab process {label}"))?;
        let (_, mut child) = self.processes.remove(position);
        terminate(&mut child, grace);
        Ok(())
    }

    /// Where process logs are written.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            terminate(child, std::time::Duration::from_secs(2));
        }
        self.pods.clear();
        self.nodes.clear();
        if let Err(error) = self.root_cgroup.destroy() {
            eprintln!("lab: {error:#}");
        }
        // The shared parent goes too once the last lab is gone (rmdir fails while others run).
        if let Some(parent) = self.root_cgroup.path().parent() {
            let _ = std::fs::remove_dir(parent);
        }
        // The fabric namespace is deleted when its field drops.
    }
}

/// `program args` to run after joining the cgroup whose `cgroup.procs` is `procs` and entering
/// netns `ns`; stdin is closed.
fn entered(procs: &Path, ns: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", ENTER_POD, "sh"])
        .arg(procs)
        .arg(ns)
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs `program` to completion after joining a cgroup and entering a netns; returns stdout.
fn run_entered(procs: &Path, ns: &str, program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = entered(procs, ns, program, args)
        .output()
        .with_context(|| format!("run {} in {ns}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} in {ns} failed ({}): {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
fn terminate(child: &mut Child, grace: std::time::Duration) {
    // The pid is ours (a child we have not reaped), so signalling it is safe.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if !wait_until(grace, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn octet(value: usize) -> anyhow::Result<u8> {
    u8::try_from(value)
        .ok()
        .filter(|v| *v < 255)
        .with_context(|| format!("lab too large: index {value}"))
}

fn cgroup_relative(prefix: &str) -> PathBuf {
    PathBuf::from("weft-lab").join(prefix)
}

/// Removes namespaces and cgroups a killed run with this prefix left behind.
pub fn remove_leftovers(prefix: &str) -> anyhow::Result<()> {
    for name in list_with_prefix(&format!("{prefix}-")) {
        super::netns::ip(&["netns", "delete", &name])?;
    }
    let cgroup = super::cgroup::cgroup2_mount()?.join(cgroup_relative(prefix));
    remove_tree(&cgroup)
}
