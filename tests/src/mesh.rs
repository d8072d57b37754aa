//! The sample mesh on a lab: mesh-control as the config source and CA, a mesh-node with eBPF
//! redirection on each node, and the `website`/`backend` app of `deploy/examples/website`.
//!
//! Shared by `cargo xtask demo` (which narrates it) and the end-to-end tests (which assert on it).
//!
//! The nodes' config files hold only their own settings (name, CA address, token); workloads,
//! services and policies reach them through mesh-control's node feed.
//!
//! HBONE to `<pod IP>:15008` reaches the pod's node tunnel through the listener mesh-node opens
//! inside each enrolled pod's network namespace (Istio's in-pod model); the lab adds no NAT.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{
    lab::{Lab, LabSpec, PodSpec},
    wait::retry_until_200,
};

/// Port every sample app listens on.
pub const APP_PORT: u16 = 8080;
/// The `website` service's cluster IP and port (deploy/examples/website/00-app.yaml).
pub const WEBSITE_VIP: &str = "10.96.0.10:8080";
/// The `backend` service's cluster IP and port.
pub const BACKEND_VIP: &str = "10.96.0.20:8080";
/// Where mesh-control runs (node n1) and its ports.
const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const CONTROL_GRPC_PORT: u16 = 15012;

/// mesh-control's gRPC port, TLS with the lab CA's certificate for
/// `spiffe://cluster.local/ns/weft-system/sa/mesh-control` (mesh-control's default identity,
/// which nodes and the waypoint expect by default).
fn control_address() -> String {
    format!("https://{CONTROL_IP}:{CONTROL_GRPC_PORT}")
}
const CONTROL_HTTP_PORT: u16 = 15014;
/// mesh-node's HBONE, metrics and readiness ports.
const HBONE_PORT: u16 = 15008;
pub const METRICS_PORT: u16 = 15020;
const READY_PORT: u16 = 15021;
/// How long components get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A sample pod: its name and node, and what the app in it serves (namespaces, service accounts
/// and enrollment are in the example's YAML, which mesh-control reads).
struct SamplePod {
    name: &'static str,
    node: &'static str,
    app: &'static str,
    /// Version it serves; `None` for pods that only make requests.
    version: Option<&'static str>,
}

/// Lab order fixes the addresses: pod k on node i is 10.211.i.(k+10); see the example's README.
const PODS: &[SamplePod] = &[
    pod("client", "n1", "client", None),
    pod("website-v1", "n1", "website", Some("v1")),
    pod("website-v2", "n2", "website", Some("v2")),
    pod("website-v3", "n2", "website", Some("v3")),
    pod("backend", "n2", "backend", Some("v1")),
    pod("intruder", "n1", "intruder", None),
    pod("guest", "n1", "guest", None),
    pod(WAYPOINT_POD, "n2", "waypoint", None),
];

/// The pod mesh-waypoint runs in (not enrolled; website's traffic is bound to it).
pub const WAYPOINT_POD: &str = "waypoint";

const fn pod(
    name: &'static str,
    node: &'static str,
    app: &'static str,
    version: Option<&'static str>,
) -> SamplePod {
    SamplePod {
        name,
        node,
        app,
        version,
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct MeshLabOptions {
    /// Namespace and cgroup prefix (at most 8 characters).
    pub prefix: String,
    /// Scratch directory: logs, generated configs, the demo CA.
    pub work_dir: PathBuf,
    /// Directory holding mesh-control, mesh-node and weft-lab-app.
    pub bin_dir: PathBuf,
    /// The example config directory mesh-control reads.
    pub example_dir: PathBuf,
}

/// The running sample mesh; dropping it tears everything down.
#[derive(Debug)]
pub struct MeshLab {
    pub lab: Lab,
    options: MeshLabOptions,
}

impl MeshLab {
    /// Builds the lab and starts mesh-control, both mesh-nodes and the sample app; returns once
    /// the client can reach `backend` through the mesh.
    pub fn start(options: MeshLabOptions) -> anyhow::Result<Self> {
        let spec = LabSpec {
            prefix: options.prefix.clone(),
            nodes: vec!["n1".into(), "n2".into()],
            pods: PODS
                .iter()
                .map(|p| PodSpec {
                    name: p.name.into(),
                    node: p.node.into(),
                })
                .collect(),
        };
        let lab = Lab::create(&spec, &options.work_dir.join("logs"))?;
        copy_dir(&options.example_dir, &options.work_dir.join("config"))?;
        let mut mesh = Self { lab, options };
        mesh.write_ca()?;
        mesh.start_control()?;
        for node in ["n1", "n2"] {
            mesh.start_node(node)?;
        }
        mesh.start_apps()?;
        mesh.wait_for_mesh_path()?;
        mesh.start_waypoint()?;
        Ok(mesh)
    }

    /// Where the lab's binary `name` is.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.options.bin_dir.join(name)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.options.work_dir.join(name)
    }

    /// A throwaway root CA (ECDSA P-256, PKCS#8 key) that mesh-control signs with.
    fn write_ca(&self) -> anyhow::Result<()> {
        let key = self.file("ca-key.pem");
        let cert = self.file("ca-cert.pem");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ],
            &key,
        )?;
        let mut req = Command::new("openssl");
        req.args([
            "req",
            "-x509",
            "-new",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/O=weft-lab/CN=weft lab root",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
        run_quiet(&mut req, "openssl req (demo root certificate)")
    }

    /// The directory mesh-control reads: a copy of the example, so tests may change it.
    pub fn config_dir(&self) -> PathBuf {
        self.file("config")
    }

    /// Stops mesh-control (SIGTERM); nodes keep serving with the config they have.
    pub fn stop_control(&mut self) -> anyhow::Result<()> {
        self.lab.stop("mesh-control", Duration::from_secs(10))
    }

    /// Starts mesh-control (again) and waits until it is ready.
    pub fn start_control(&mut self) -> anyhow::Result<()> {
        let mut tokens = String::new();
        for node in ["n1", "n2"] {
            let token = format!("lab-bootstrap-token-{node}-{}", std::process::id());
            writeln!(tokens, "{node} {token}")?;
            std::fs::write(self.file(&format!("{node}.token")), &token)?;
        }
        std::fs::write(self.file("bootstrap-tokens"), tokens)?;
        let grpc = format!("0.0.0.0:{CONTROL_GRPC_PORT}");
        let http = format!("0.0.0.0:{CONTROL_HTTP_PORT}");
        let args = [
            "--config-dir".to_string(),
            self.config_dir().display().to_string(),
            "--grpc-listen".into(),
            grpc,
            "--http-listen".into(),
            http,
            "--bootstrap-tokens".into(),
            self.file("bootstrap-tokens").display().to_string(),
            "--ca-cert".into(),
            self.file("ca-cert.pem").display().to_string(),
            "--ca-key".into(),
            self.file("ca-key.pem").display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab
            .spawn_on_node("n1", "mesh-control", &self.bin("mesh-control"), &args)?;
        let ready = format!("{CONTROL_IP}:{CONTROL_HTTP_PORT}");
        self.wait_http_ok("n1", &ready, "/healthz/ready", "mesh-control")
    }

    fn start_node(&mut self, node: &str) -> anyhow::Result<()> {
        let config = self.file(&format!("mesh-node-{node}.yaml"));
        std::fs::write(&config, self.node_config(node))?;
        let node_ip = self.lab.node(node)?.ip.to_string();
        let cgroup = format!("weft-lab/{}/{node}", self.options.prefix);
        let config_arg = config.display().to_string();
        let control = control_address();
        let cni_socket = self.cni_socket(node).display().to_string();
        let args = [
            "--config",
            &config_arg,
            "--control-address",
            &control,
            "--cni-socket",
            &cni_socket,
            "--redirect-cgroup",
            &cgroup,
            "--node-ip",
            &node_ip,
        ];
        let label = format!("mesh-node-{node}");
        self.lab
            .spawn_on_node(node, &label, &self.bin("mesh-node"), &args)?;
        let ready = format!("{node_ip}:{READY_PORT}");
        self.wait_http_ok(node, &ready, "/healthz/ready", &label)
    }

    /// Stops mesh-node on `node` (SIGTERM: it drains and detaches its programs) and starts it
    /// again with the same config; returns once it is ready and the client reaches backend.
    pub fn restart_node(&mut self, node: &str) -> anyhow::Result<()> {
        self.lab
            .stop(&format!("mesh-node-{node}"), Duration::from_secs(10))?;
        self.start_node(node)?;
        self.wait_for_mesh_path()
    }

    /// Starts mesh-waypoint in its pod, following mesh-control's waypoint feed with n2's
    /// bootstrap token (control lets a node read the feed of a waypoint whose pod it runs), and
    /// waits until the client reaches `website` through it.
    fn start_waypoint(&mut self) -> anyhow::Result<()> {
        let ip = self.pod_ip(WAYPOINT_POD)?;
        let args = [
            "--control-address".to_string(),
            control_address(),
            "--namespace".into(),
            "demo".into(),
            "--name".into(),
            "waypoint".into(),
            "--service-account".into(),
            "waypoint".into(),
            "--token-file".into(),
            self.file("n2.token").display().to_string(),
            "--trust-bundle-file".into(),
            self.file("ca-cert.pem").display().to_string(),
            "--hbone-listen".into(),
            format!("{ip}:{HBONE_PORT}"),
            "--metrics".into(),
            format!("{ip}:{METRICS_PORT}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn_in_pod(
            WAYPOINT_POD,
            "mesh-waypoint",
            &self.bin("mesh-waypoint"),
            &args,
        )?;
        let ready = format!("{ip}:{METRICS_PORT}");
        self.wait_http_ok("n2", &ready, "/healthz/ready", "mesh-waypoint")?;
        let logs = self.lab.log_dir().display();
        let answer = retry_until_200(READY_TIMEOUT, || {
            self.get("client", WEBSITE_VIP, &["--timeout-ms", "2000"])
        });
        match answer {
            Ok(out) if out.starts_with("200") => Ok(()),
            Ok(out) => bail!("client -> website via the waypoint answered {out:?}; logs in {logs}"),
            Err(error) => Err(error.context(format!(
                "client -> website via the waypoint; logs in {logs}"
            ))),
        }
    }

    /// Prometheus text from mesh-waypoint.
    pub fn waypoint_metrics(&self) -> anyhow::Result<String> {
        let target = format!("{}:{METRICS_PORT}", self.pod_ip(WAYPOINT_POD)?);
        self.node_get("n2", &target, "/metrics")
    }

    /// The node's own settings; workloads, services and policies come from mesh-control's feed.
    fn node_config(&self, node: &str) -> String {
        let work = self.options.work_dir.display();
        let control = control_address();
        format!(
            "node_name: {node}\n\
             ca:\n  address: {control}\n  \
             token_file: {work}/{node}.token\n  trust_bundle_file: {work}/ca-cert.pem\n"
        )
    }

    fn start_apps(&mut self) -> anyhow::Result<()> {
        let app = self.bin("weft-lab-app");
        for (index, pod) in PODS.iter().enumerate() {
            let Some(version) = pod.version else { continue };
            let listen = format!("{}:{APP_PORT}", pod_ip(pod, index));
            let mut args = vec![
                "serve",
                "--listen",
                &listen,
                "--name",
                pod.app,
                "--version",
                version,
            ];
            if pod.app == "website" {
                args.extend(["--upstream", BACKEND_VIP]);
            }
            self.lab.spawn_in_pod(pod.name, pod.name, &app, &args)?;
        }
        Ok(())
    }

    /// The client reaches `backend` by its service IP, which only the mesh can route.
    fn wait_for_mesh_path(&self) -> anyhow::Result<()> {
        let logs = self.lab.log_dir().display();
        let answer = retry_until_200(READY_TIMEOUT, || {
            self.get("client", BACKEND_VIP, &["--timeout-ms", "2000"])
        });
        match answer {
            Ok(out) if out.starts_with("200") => Ok(()),
            Ok(out) => bail!("client -> backend through the mesh answered {out:?}; logs in {logs}"),
            Err(error) => Err(error.context(format!("client -> backend; logs in {logs}"))),
        }
    }

    /// Runs `weft-lab-app get <target> <extra>` in pod `from`; returns what it printed.
    pub fn get(&self, from: &str, target: &str, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["get", target];
        args.extend_from_slice(extra);
        self.lab.run_in_pod(from, &self.bin("weft-lab-app"), &args)
    }

    /// An HTTP GET from node `node`'s namespace; returns the status line digit and the body.
    pub fn node_get(&self, node: &str, target: &str, path: &str) -> anyhow::Result<String> {
        let args = [
            "get",
            target,
            "--path",
            path,
            "--body",
            "--timeout-ms",
            "2000",
        ];
        self.lab.run_on_node(node, &self.bin("weft-lab-app"), &args)
    }

    /// Prometheus text from mesh-node on `node`.
    pub fn node_metrics(&self, node: &str) -> anyhow::Result<String> {
        let target = format!("{}:{METRICS_PORT}", self.lab.node(node)?.ip);
        self.node_get(node, &target, "/metrics")
    }

    /// Everything process `label` has logged so far.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.lab.log_dir().join(format!("{label}.log"))).unwrap_or_default()
    }

    /// The IP of sample pod `name`.
    pub fn pod_ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.lab.pod(name)?.ip)
    }

    fn wait_http_ok(&self, node: &str, target: &str, path: &str, what: &str) -> anyhow::Result<()> {
        let result = retry_until_200(READY_TIMEOUT, || self.node_get(node, target, path));
        if matches!(&result, Ok(out) if out.starts_with("200")) {
            return Ok(());
        }
        let log = self.log(what);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{what} not ready at {target}{path} ({result:?}); last log lines:\n{}",
            tail.join("\n")
        )
    }

    /// Starts a pod in the lab and tells mesh-control about it at once (a Pod in namespace
    /// `namespace` with `service_account`, on `node`, at `ip`), as a scheduler and CNI would
    /// in a cluster: nothing waits for the mesh.
    pub fn add_pod(
        &mut self,
        name: &str,
        node: &str,
        ip: Ipv4Addr,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<()> {
        let spec = PodSpec {
            name: name.into(),
            node: node.into(),
        };
        self.lab.add_pod(&spec, ip)?;
        let yaml = pod_yaml(&spec, namespace, service_account, &format!("podIP: {ip}"));
        std::fs::write(self.pod_file(name), yaml).context("write the pod's YAML")
    }

    /// Starts a pod as a kubelet would, through the CNI chain: the sandbox (network namespace and
    /// address) comes first; the scheduler has already published the Pod without an address;
    /// `weft-cni` ADD runs and must succeed before the pod may run anything; then the kubelet
    /// reports the address. Returns how long the ADD took, or its error (the pod is removed).
    pub fn start_pod_via_cni(
        &mut self,
        name: &str,
        node: &str,
        ip: Ipv4Addr,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Duration> {
        let spec = PodSpec {
            name: name.into(),
            node: node.into(),
        };
        self.lab.add_pod(&spec, ip)?;
        let pod = |status: &str| pod_yaml(&spec, namespace, service_account, status);
        std::fs::write(self.pod_file(name), pod("phase: Pending"))
            .context("write the pod's YAML")?;
        let started = std::time::Instant::now();
        let added = self.cni(node, "ADD", name, namespace, Some(ip));
        let took = started.elapsed();
        if let Err(error) = added {
            let _ = self.remove_pod(name);
            return Err(error);
        }
        std::fs::write(
            self.pod_file(name),
            pod(&format!("podIP: {ip}, phase: Running")),
        )
        .context("write the pod's YAML")?;
        Ok(took)
    }

    /// Runs `weft-cni` for `command` on pod `name` as the container runtime would (environment,
    /// network configuration on stdin with the network plugin's result); fails with the
    /// plugin's message when it fails.
    pub fn cni(
        &self,
        node: &str,
        command: &str,
        name: &str,
        namespace: &str,
        ip: Option<Ipv4Addr>,
    ) -> anyhow::Result<String> {
        use std::io::Write as _;
        let prefix = &self.options.prefix;
        let ips = ip
            .map(|ip| format!(r#"[{{"address": "{ip}/24", "interface": 0}}]"#))
            .unwrap_or_else(|| "[]".into());
        let conf = format!(
            r#"{{"cniVersion": "1.0.0", "name": "lab", "type": "weft-cni", "socket": "{}", "prevResult": {{"cniVersion": "1.0.0", "interfaces": [{{"name": "eth0", "sandbox": "/run/netns/{prefix}-{name}"}}], "ips": {ips}}}}}"#,
            self.cni_socket(node).display()
        );
        let mut child = Command::new(self.bin("weft-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("lab-{name}"))
            .env("CNI_NETNS", format!("/run/netns/{prefix}-{name}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.options.bin_dir)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("run weft-cni")?;
        child
            .stdin
            .take()
            .context("weft-cni stdin")?
            .write_all(conf.as_bytes())?;
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "weft-cni {command} for {namespace}/{name} failed: {}",
                stdout.trim()
            );
        }
        Ok(stdout)
    }

    /// The socket mesh-node on `node` answers `weft-cni` on.
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.file(&format!("cni-{node}.sock"))
    }

    /// Removes a pod added with [`MeshLab::add_pod`]: from mesh-control's config, then the lab.
    pub fn remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.pod_file(name)).context("remove the pod's YAML")?;
        self.lab.remove_pod(name)
    }

    fn pod_file(&self, name: &str) -> PathBuf {
        self.config_dir().join(format!("80-pod-{name}.yaml"))
    }

    /// Where process logs are.
    pub fn log_dir(&self) -> &Path {
        self.lab.log_dir()
    }
}

/// A Pod as mesh-control reads it: `spec` on its node, `status` the inside of `status: {..}`.
fn pod_yaml(spec: &PodSpec, namespace: &str, service_account: &str, status: &str) -> String {
    let (name, node) = (&spec.name, &spec.node);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, serviceAccountName: {service_account}, containers: [{{name: app, image: weft-lab-app}}]}}\nstatus: {{{status}}}\n"
    )
}

/// The address the lab gives the `index`-th sample pod (0-based) on its node.
fn pod_ip(pod: &SamplePod, index: usize) -> Ipv4Addr {
    let node: u8 = if pod.node == "n1" { 1 } else { 2 };
    Ipv4Addr::new(10, 211, node, (index + 11) as u8)
}

/// Copies the YAML files of `from` into `to` (created).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().context("file name")?;
            std::fs::copy(&path, to.join(name))?;
        }
    }
    Ok(())
}

fn openssl(args: &[&str], out: &Path) -> anyhow::Result<()> {
    run_quiet(
        Command::new("openssl").args(args).arg(out),
        "openssl (demo CA key)",
    )
}

fn run_quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = cmd
        .output()
        .with_context(|| format!("run {what} (install openssl)"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
