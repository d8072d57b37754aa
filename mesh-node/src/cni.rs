//! Pods captured before their first connection: the node's side of the `weft-cni` plugin.
//!
//! The container runtime runs the CNI chain when it creates a pod's sandbox, before any of the
//! pod's containers start. `weft-cni`, chained after the network plugin, sends this node the
//! pod's name, network namespace and addresses over a local socket and waits. The node answers
//! once it knows whether the pod is in the mesh and, if it is, once the pod is captured: its
//! namespace enrolled in the eBPF maps (outbound redirect, strict inbound) and its in-pod
//! listeners open behind `sk_lookup` steering. Until the answer the runtime does not start the
//! pod, so there is no window in which it runs outside the mesh.
//!
//! Fail closed: a pod the node cannot place (mesh-control has not named it within
//! [`ADD_TIMEOUT`], or capture did not complete) gets an error, the runtime tears the sandbox
//! down and the kubelet retries. The plugin itself skips the namespaces it is told to exclude
//! (the control plane's own), so the mesh never waits on itself.
//!
//! The kubelet reports a pod's address only after the chain ran, so mesh-control first names
//! the pod without one; the node fills in the addresses the CNI result gave
//! ([`fill_addresses`]) until the feed carries them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_core::{drain::DrainWatch, proto::address_bytes};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::feed::MeshSnapshot;

/// How long an ADD may wait for the mesh to name the pod, then for its capture.
pub const ADD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a peer may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight at once; more wait for the socket's accept queue.
const MAX_CONCURRENT: usize = 64;

/// The messages between `weft-cni` and mesh-node: one JSON line each way per connection.
pub mod wire {
    use std::{net::IpAddr, path::PathBuf};

    use serde::{Deserialize, Serialize};

    /// Longest message line (request or reply) either side accepts.
    pub const MAX_MESSAGE: usize = 16 * 1024;
    /// Where mesh-node listens unless told otherwise.
    pub const DEFAULT_SOCKET: &str = "/var/run/weft/cni.sock";
    /// Namespaces whose pods start without asking mesh-node unless configured otherwise: the
    /// control plane must not wait on itself.
    pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", "weft-system"];

    /// What the plugin asks.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
    pub enum Request {
        /// A pod's sandbox is up: capture it if it is in the mesh, then answer.
        Add {
            /// Kubernetes namespace of the pod.
            namespace: String,
            /// Pod name.
            name: String,
            /// The sandbox's network namespace (for logs).
            netns: PathBuf,
            /// The pod's addresses from the network plugin's result.
            ips: Vec<IpAddr>,
        },
        /// The sandbox is going away.
        Del {
            /// Kubernetes namespace of the pod.
            namespace: String,
            /// Pod name.
            name: String,
        },
    }

    /// The node's answer.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Reply {
        /// The pod may start.
        pub ok: bool,
        /// It is in the mesh and captured (`ok` only).
        #[serde(default)]
        pub captured: bool,
        /// Why it may not start (not `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }
}

/// What the node's mesh view says about pods, by `<namespace>/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDirectory {
    /// The node has a mesh view (a saved feed, or a complete feed version).
    pub known: bool,
    /// Pods the view names on this node: in the mesh or not.
    pub pods: BTreeMap<String, bool>,
}

impl PodDirectory {
    /// The pods of `node` in a feed snapshot.
    pub fn from_snapshot(snapshot: &MeshSnapshot, node: &str) -> Self {
        let hbone = mesh_core::proto::control::v1::TunnelProtocol::Hbone as i32;
        let pods = snapshot
            .workloads
            .iter()
            .filter(|(_, w)| w.node == node)
            .map(|(uid, w)| (uid.clone(), w.tunnel == hbone))
            .collect();
        Self { known: true, pods }
    }
}

/// Addresses the CNI chain gave starting pods, by `<namespace>/<name>`.
pub type StartedPods = BTreeMap<String, Vec<IpAddr>>;

/// `snapshot` with the addresses of this node's starting pods filled in where the feed has
/// none yet. The feed's own addresses always win.
pub fn fill_addresses(snapshot: &MeshSnapshot, node: &str, started: &StartedPods) -> MeshSnapshot {
    let mut filled = snapshot.clone();
    for (uid, ips) in started {
        let Some(workload) = filled.workloads.get_mut(uid) else {
            continue;
        };
        if workload.node == node && workload.addresses.is_empty() {
            workload.addresses = ips.iter().map(address_bytes).collect();
        }
    }
    filled
}

/// What the server watches and changes.
#[derive(Debug, Clone)]
pub struct CniContext {
    /// The node's mesh view.
    pub directory: watch::Receiver<PodDirectory>,
    /// Pod addresses enrolled in the eBPF maps; `None`: this node does not capture at all.
    pub enrolled: Option<watch::Receiver<BTreeSet<IpAddr>>>,
    /// Pod addresses with open in-pod listeners; `None` when in-pod listeners are off.
    pub listening: Option<watch::Receiver<BTreeMap<IpAddr, PathBuf>>>,
    /// Where accepted starts are recorded (the main loop re-applies the mesh on change).
    pub started: watch::Sender<StartedPods>,
    /// How long an ADD may wait.
    pub timeout: Duration,
}

/// Errors opening the socket.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The socket could not be created.
    #[error("cni socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Listens on `path` (replacing a stale socket; owner-only access) until `drain`.
pub fn serve(path: &Path, context: CniContext, drain: DrainWatch) -> Result<(), CniError> {
    let listener = bind(path).map_err(|source| CniError::Socket {
        path: path.to_owned(),
        source,
    })?;
    tracing::info!(socket = %path.display(), "waiting for pod starts from the CNI plugin");
    tokio::spawn(accept_loop(listener, path.to_owned(), context, drain));
    Ok(())
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    context: CniContext,
    mut drain: DrainWatch,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let permit = tokio::select! {
            _ = drain.signaled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cni socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(stream, &context).await {
                tracing::debug!(%error, "cni request connection failed");
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, context: &CniContext) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(
        read,
        wire::MAX_MESSAGE as u64,
    ));
    let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line));
    let reply = match read.await {
        Err(_) => refuse("no request within the read timeout".into()),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(_)) => match serde_json::from_slice::<wire::Request>(&line) {
            Ok(request) => answer(request, context).await,
            Err(error) => refuse(format!("malformed request: {error}")),
        },
    };
    let mut text = serde_json::to_vec(&reply).unwrap_or_default();
    text.push(b'\n');
    write.write_all(&text).await?;
    write.shutdown().await
}

fn refuse(error: String) -> wire::Reply {
    wire::Reply {
        ok: false,
        captured: false,
        error: Some(error),
    }
}

/// Decides one request (waiting up to `context.timeout`).
pub async fn answer(request: wire::Request, context: &CniContext) -> wire::Reply {
    match request {
        wire::Request::Add {
            namespace,
            name,
            netns,
            ips,
        } => {
            let uid = format!("{namespace}/{name}");
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(context.timeout, add(&uid, &ips, context)).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let reply = match outcome {
                Ok(Ok(captured)) => wire::Reply {
                    ok: true,
                    captured,
                    error: None,
                },
                Ok(Err(error)) => refuse(error),
                Err(_) => refuse(timeout_reason(&uid, context)),
            };
            match (&reply.error, reply.captured) {
                (Some(error), _) => {
                    tracing::warn!(pod = %uid, netns = %netns.display(), ?ips, elapsed_ms, %error, "pod start refused: it cannot be captured yet (the runtime retries)")
                }
                (None, true) => {
                    tracing::info!(pod = %uid, netns = %netns.display(), ?ips, elapsed_ms, "pod captured before its start")
                }
                (None, false) => {
                    tracing::debug!(pod = %uid, elapsed_ms, "pod start: not in the mesh")
                }
            }
            reply
        }
        wire::Request::Del { namespace, name } => {
            let uid = format!("{namespace}/{name}");
            context
                .started
                .send_if_modified(|s| s.remove(&uid).is_some());
            wire::Reply {
                ok: true,
                captured: false,
                error: None,
            }
        }
    }
}

/// In the mesh and captured: `Ok(true)`; not in the mesh: `Ok(false)`.
async fn add(uid: &str, ips: &[IpAddr], context: &CniContext) -> Result<bool, String> {
    let mut directory = context.directory.clone();
    let in_mesh = *directory
        .wait_for(|d| d.known && d.pods.contains_key(uid))
        .await
        .map_err(|_| "the node is shutting down".to_string())?
        .pods
        .get(uid)
        .unwrap_or(&false);
    if !in_mesh {
        return Ok(false);
    }
    let Some(enrolled) = &context.enrolled else {
        return Err(
            "this node does not capture pods (mesh-node runs without --redirect-cgroup)".into(),
        );
    };
    if ips.is_empty() {
        return Err("the CNI result gave the pod no address".into());
    }
    context.started.send_if_modified(|s| {
        let previous = s.insert(uid.to_owned(), ips.to_vec());
        previous.as_deref() != Some(ips)
    });
    let wanted: BTreeSet<IpAddr> = ips.iter().copied().collect();
    enrolled
        .clone()
        .wait_for(|e| wanted.is_subset(e))
        .await
        .map_err(|_| "the node is shutting down".to_string())?;
    if let Some(listening) = &context.listening {
        listening
            .clone()
            .wait_for(|l| wanted.iter().all(|ip| l.contains_key(ip)))
            .await
            .map_err(|_| "the node is shutting down".to_string())?;
    }
    Ok(true)
}

fn timeout_reason(uid: &str, context: &CniContext) -> String {
    let directory = context.directory.borrow();
    let secs = context.timeout.as_secs();
    if !directory.known {
        format!("the node has no mesh view yet (mesh-control not reached) after {secs}s")
    } else if !directory.pods.contains_key(uid) {
        format!("mesh-control has not named pod {uid} for this node after {secs}s")
    } else {
        format!("pod {uid} is in the mesh but was not captured within {secs}s")
    }
}

pub mod install;
#[cfg(test)]
mod tests;
