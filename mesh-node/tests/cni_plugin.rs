//! `weft-cni` run as a container runtime runs it: environment, network configuration on stdin,
//! result or error on stdout. Against mesh-node's real CNI server (`mesh_node::cni::serve`) with
//! a mesh view the test controls, and against no server at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use mesh_node::cni::{self, CniContext, PodDirectory, StartedPods};
use serde_json::Value;
use tokio::sync::watch;

const POD_IP: &str = "10.44.0.9";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cni-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the plugin; returns (success, stdout as JSON).
async fn plugin(command: &str, socket: &Path, namespace: &str, extra: &str) -> (bool, Value) {
    let conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "k8s", "type": "weft-cni", "socket": "{}"{extra},
            "prevResult": {{"cniVersion": "1.0.0", "ips": [{{"address": "{POD_IP}/24"}}]}}}}"#,
        socket.display()
    );
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=web-1");
    let command = command.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_NETNS", "/var/run/netns/test")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run weft-cni");
        // VERSION exits without reading its input: a broken pipe here is not the plugin's error.
        let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
        let output = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.success(), json)
    })
    .await
    .unwrap()
}

struct Node {
    directory: watch::Sender<PodDirectory>,
    enrolled: watch::Sender<BTreeSet<IpAddr>>,
    started: watch::Receiver<StartedPods>,
    _drain: mesh_core::drain::DrainTrigger,
}

fn node(socket: &Path) -> Node {
    let (directory, directory_rx) = watch::channel(PodDirectory::default());
    let (enrolled, enrolled_rx) = watch::channel(BTreeSet::new());
    let (started_tx, started) = watch::channel(StartedPods::new());
    let context = CniContext {
        directory: directory_rx,
        enrolled: Some(enrolled_rx),
        listening: None,
        started: started_tx,
        timeout: Duration::from_millis(500),
    };
    let (drain, watch) = mesh_core::drain::channel();
    cni::serve(socket, context, watch).expect("serve");
    Node {
        directory,
        enrolled,
        started,
        _drain: drain,
    }
}

fn mesh_view(pods: &[(&str, bool)]) -> PodDirectory {
    PodDirectory {
        known: true,
        pods: pods
            .iter()
            .map(|(p, m)| (p.to_string(), *m))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[tokio::test]
async fn a_mesh_pod_starts_once_captured_and_the_result_passes_through() {
    let dir = scratch("captured");
    let socket = dir.join("cni.sock");
    let node = node(&socket);
    node.directory
        .send_replace(mesh_view(&[("demo/web-1", true)]));
    let enrolled = node.enrolled.clone();
    let mut started = node.started.clone();
    // The node records the address from the network plugin's result, then enrolls the pod.
    tokio::spawn(async move {
        started.changed().await.unwrap();
        let ips = started.borrow()["demo/web-1"].clone();
        enrolled.send_replace(ips.into_iter().collect());
    });
    let (ok, out) = plugin("ADD", &socket, "demo", "").await;
    assert!(ok, "{out}");
    assert_eq!(
        out["ips"][0]["address"],
        format!("{POD_IP}/24"),
        "prevResult returned"
    );
    let (ok, _) = plugin("DEL", &socket, "demo", "").await;
    assert!(ok);
    assert!(node.started.borrow().is_empty(), "DEL forgot the pod");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pod_that_is_not_captured_in_time_does_not_start() {
    let dir = scratch("timeout");
    let socket = dir.join("cni.sock");
    let node = node(&socket);
    node.directory
        .send_replace(mesh_view(&[("demo/web-1", true)]));
    let (ok, out) = plugin("ADD", &socket, "demo", "").await;
    assert!(!ok, "{out}");
    assert_eq!(out["code"], 100);
    let message = out["msg"].as_str().unwrap_or_default();
    assert!(message.contains("not captured"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_mesh_node_mesh_pods_fail_and_excluded_namespaces_start() {
    let dir = scratch("absent");
    let socket = dir.join("nobody-listens.sock");
    let (ok, out) = plugin("ADD", &socket, "demo", "").await;
    assert!(!ok, "fail closed: {out}");
    assert!(out["msg"]
        .as_str()
        .unwrap_or_default()
        .contains("did not answer"));
    let (ok, out) = plugin("ADD", &socket, "kube-system", "").await;
    assert!(ok, "kube-system is excluded by default: {out}");
    let extra = r#", "exclude_namespaces": ["infra"]"#;
    let (ok, _) = plugin("ADD", &socket, "infra", extra).await;
    assert!(ok, "configured exclusion");
    let (ok, _) = plugin("ADD", &socket, "kube-system", extra).await;
    assert!(!ok, "the configured list replaces the default");
    let (ok, _) = plugin("DEL", &socket, "demo", "").await;
    assert!(ok, "DEL never fails");
    let (ok, out) = plugin("VERSION", &socket, "demo", "").await;
    assert!(ok && out["supportedVersions"].is_array(), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn install_copies_the_plugin_and_chains_it_uninstall_takes_it_out() {
    let dir = scratch("install");
    let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let primary = conf_dir.join("10-ptp.conflist");
    std::fs::write(
        &primary,
        r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "ptp"}]}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft-cni"))
            .args(args)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let (bin, conf) = (
        bin_dir.display().to_string(),
        conf_dir.display().to_string(),
    );
    let install = [
        "install",
        "--bin-dir",
        &bin,
        "--conf-dir",
        &conf,
        "--socket",
        "/run/weft/cni.sock",
    ];
    assert!(run(&install));
    assert!(bin_dir.join("weft-cni").is_file(), "binary copied");
    let chained: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
    assert_eq!(chained["plugins"][1]["type"], "weft-cni");
    assert_eq!(chained["plugins"][1]["socket"], "/run/weft/cni.sock");
    assert_eq!(
        chained["plugins"][1]["exclude_namespaces"][0],
        "kube-system"
    );
    assert!(run(&install), "installing twice is harmless");
    let again: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
    assert_eq!(again, chained);
    assert!(run(&["uninstall", "--conf-dir", &conf]));
    let cleaned: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
    assert_eq!(cleaned["plugins"].as_array().unwrap().len(), 1);
    assert!(!run(&[
        "install",
        "--bin-dir",
        &bin,
        "--conf-dir",
        &dir.join("none").display().to_string()
    ]));
    let _ = std::fs::remove_dir_all(&dir);
}
