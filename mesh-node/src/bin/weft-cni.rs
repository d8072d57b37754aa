//! `weft-cni`: the CNI plugin that holds a pod's start until its node tunnel has captured it.
//!
//! Chained after the cluster's network plugin (its `prevResult` gives the pod's addresses). On
//! ADD it asks mesh-node over its Unix socket ([`mesh_node::cni`]) and waits: the pod starts
//! only once the node answers that it is captured or not in the mesh. Any failure (no answer,
//! node not running, capture not complete) fails the ADD, so the runtime retries rather than
//! start a mesh pod uncaptured. DEL tells the node the sandbox is gone and never fails.
//!
//! `weft-cni install` copies the binary into the runtime's plugin directory and chains it into
//! the node's network configuration ([`mesh_node::cni::install`]); with `--watch` it stays and
//! chains it again whenever the network plugin rewrites its file. `weft-cni uninstall` takes it
//! out (run it when removing Weft: while chained, pods need mesh-node to start).
//!
//! Network configuration keys (besides the standard ones):
//! - `socket`: mesh-node's socket (default `/var/run/weft/cni.sock`);
//! - `exclude_namespaces`: pods of these namespaces start without asking (default
//!   `kube-system`, `weft-system`: the control plane must not wait on itself).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use mesh_node::cni::wire;
use serde::Deserialize;
use serde_json::{json, Value};

/// CNI versions whose result format this plugin passes through.
const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];
/// How long an ADD waits for the node: its own wait plus margin.
const ADD_WAIT: Duration = Duration::from_secs(25);
/// How long a DEL waits (best effort).
const DEL_WAIT: Duration = Duration::from_secs(2);
/// Largest network configuration read from stdin.
const MAX_CONFIG: u64 = 1024 * 1024;
/// CNI error code for plugin-specific failures (100 and up).
const ERROR_NOT_CAPTURED: u32 = 100;
/// CNI error code: the network configuration could not be decoded.
const ERROR_DECODING: u32 = 6;

#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default = "default_excluded")]
    exclude_namespaces: Vec<String>,
}

fn default_socket() -> PathBuf {
    wire::DEFAULT_SOCKET.into()
}

fn default_excluded() -> Vec<String> {
    wire::DEFAULT_EXCLUDED_NAMESPACES.map(String::from).to_vec()
}

/// A failed command: CNI error code and message.
struct Failure {
    code: u32,
    message: String,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some() {
        return setup::main();
    }
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        let versions = json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS});
        println!("{versions}");
        return ExitCode::SUCCESS;
    }
    let mut input = Vec::new();
    let read = std::io::stdin().take(MAX_CONFIG).read_to_end(&mut input);
    let conf = read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<NetConf>(&input).map_err(|e| e.to_string()));
    let conf = match conf {
        Ok(conf) => conf,
        Err(error) => {
            return fail(
                "1.0.0",
                Failure {
                    code: ERROR_DECODING,
                    message: format!("weft-cni: network configuration: {error}"),
                },
            )
        }
    };
    let pod = pod_of(&std::env::var("CNI_ARGS").unwrap_or_default());
    let excluded = pod
        .as_ref()
        .is_none_or(|(namespace, _)| conf.exclude_namespaces.contains(namespace));
    match command.as_str() {
        "ADD" if excluded => pass_through(&conf),
        "ADD" => match add(&conf, pod.unwrap_or_default()) {
            Ok(()) => pass_through(&conf),
            Err(failure) => fail(&conf.cni_version, failure),
        },
        "DEL" => {
            if let (false, Some((namespace, name))) = (excluded, pod) {
                // Best effort: the node also forgets pods whose namespace disappears.
                let _ = ask(
                    &conf.socket,
                    &wire::Request::Del { namespace, name },
                    DEL_WAIT,
                );
            }
            ExitCode::SUCCESS
        }
        // Nothing is kept per pod that CHECK, GC or STATUS could verify or collect.
        "CHECK" | "GC" | "STATUS" => ExitCode::SUCCESS,
        other => fail(
            &conf.cni_version,
            Failure {
                code: 4,
                message: format!("weft-cni: unsupported CNI_COMMAND {other:?}"),
            },
        ),
    }
}

/// (namespace, name) from `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`); `None` when the
/// sandbox is not a Kubernetes pod.
fn pod_of(cni_args: &str) -> Option<(String, String)> {
    let mut namespace = None;
    let mut name = None;
    for pair in cni_args.split(';') {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", value)) => namespace = Some(value.to_owned()),
            Some(("K8S_POD_NAME", value)) => name = Some(value.to_owned()),
            _ => {}
        }
    }
    Some((namespace?, name?)).filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
}

fn add(conf: &NetConf, (namespace, name): (String, String)) -> Result<(), Failure> {
    let netns = std::env::var("CNI_NETNS").unwrap_or_default();
    let request = wire::Request::Add {
        namespace,
        name,
        netns: netns.into(),
        ips: result_ips(conf.prev_result.as_ref()),
    };
    let reply = ask(&conf.socket, &request, ADD_WAIT).map_err(|error| Failure {
        code: ERROR_NOT_CAPTURED,
        message: format!(
            "weft-cni: mesh-node at {} did not answer: {error}",
            conf.socket.display()
        ),
    })?;
    match reply.ok {
        true => Ok(()),
        false => Err(Failure {
            code: ERROR_NOT_CAPTURED,
            message: format!(
                "weft-cni: {}",
                reply.error.as_deref().unwrap_or("refused by mesh-node")
            ),
        }),
    }
}

/// The addresses in a CNI result (`ips[].address`, CIDR notation).
fn result_ips(result: Option<&Value>) -> Vec<IpAddr> {
    let ips = result.and_then(|r| r.get("ips")).and_then(Value::as_array);
    ips.into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect()
}

fn ask(socket: &PathBuf, request: &wire::Request, wait: Duration) -> std::io::Result<wire::Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(wait))?;
    stream.set_read_timeout(Some(wait))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream.take(wire::MAX_MESSAGE as u64)).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

/// A chained plugin returns the previous result unchanged.
fn pass_through(conf: &NetConf) -> ExitCode {
    let result = conf
        .prev_result
        .clone()
        .unwrap_or_else(|| json!({"cniVersion": conf.cni_version}));
    println!("{result}");
    ExitCode::SUCCESS
}

fn fail(version: &str, failure: Failure) -> ExitCode {
    let error = json!({"cniVersion": version, "code": failure.code, "msg": failure.message});
    println!("{error}");
    eprintln!("{}", failure.message);
    ExitCode::FAILURE
}

/// `install` and `uninstall`, run by an operator or the DaemonSet (not by the runtime).
mod setup {
    use std::{path::PathBuf, process::ExitCode, time::Duration};

    use clap::{Parser, Subcommand};
    use mesh_node::cni::{install, wire};

    #[derive(Debug, Parser)]
    #[command(
        name = "weft-cni",
        version,
        about = "Weft's CNI plugin: install or uninstall it"
    )]
    struct Args {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        /// Copy this binary into --bin-dir and chain it into the primary configuration of
        /// --conf-dir.
        Install {
            /// The runtime's plugin directory (on the host).
            #[arg(long, default_value = "/opt/cni/bin")]
            bin_dir: PathBuf,
            /// The runtime's network configuration directory (on the host).
            #[arg(long, default_value = "/etc/cni/net.d")]
            conf_dir: PathBuf,
            /// mesh-node's socket, as the runtime (on the host) sees it.
            #[arg(long, default_value = wire::DEFAULT_SOCKET)]
            socket: PathBuf,
            /// Namespaces whose pods start without asking mesh-node (repeat).
            #[arg(long = "exclude-namespace", default_values_t = wire::DEFAULT_EXCLUDED_NAMESPACES.map(String::from))]
            exclude_namespaces: Vec<String>,
            /// Keep running and chain again every this often if the entry went missing.
            #[arg(long, value_parser = humantime::parse_duration)]
            watch: Option<Duration>,
        },
        /// Take weft-cni out of every configuration list in --conf-dir.
        Uninstall {
            /// The runtime's network configuration directory (on the host).
            #[arg(long, default_value = "/etc/cni/net.d")]
            conf_dir: PathBuf,
        },
    }

    pub fn main() -> ExitCode {
        let result = match Args::parse().command {
            Command::Install {
                bin_dir,
                conf_dir,
                socket,
                exclude_namespaces,
                watch,
            } => install_and_watch(&bin_dir, &conf_dir, &socket, &exclude_namespaces, watch),
            Command::Uninstall { conf_dir } => install::uninstall(&conf_dir)
                .map(|changed| eprintln!("weft-cni removed from {changed:?}"))
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("weft-cni: {error}");
                ExitCode::FAILURE
            }
        }
    }

    fn install_and_watch(
        bin_dir: &std::path::Path,
        conf_dir: &std::path::Path,
        socket: &std::path::Path,
        exclude: &[String],
        watch: Option<Duration>,
    ) -> Result<(), String> {
        copy_self(bin_dir)?;
        let entry = install::plugin_entry(socket, exclude);
        loop {
            let installed = install::install(conf_dir, &entry).map_err(|e| e.to_string())?;
            if installed.changed {
                eprintln!("weft-cni chained into {}", installed.path.display());
            }
            match watch {
                Some(every) => std::thread::sleep(every),
                None => return Ok(()),
            }
        }
    }

    fn copy_self(bin_dir: &std::path::Path) -> Result<(), String> {
        let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let target = bin_dir.join("weft-cni");
        if me == target {
            return Ok(());
        }
        let temporary = bin_dir.join(".weft-cni.tmp");
        std::fs::copy(&me, &temporary)
            .and_then(|_| std::fs::rename(&temporary, &target))
            .map_err(|e| format!("copying {} to {}: {e}", me.display(), target.display()))
    }
}
