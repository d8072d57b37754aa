//! In-pod HBONE listeners (Istio ambient's "in-pod" model).
//!
//! Peers dial `<pod ip>:15008`. Instead of NATing that to the node, the tunnel opens a listening
//! socket on `0.0.0.0:15008` *inside* each local pod's network namespace (found by
//! [`crate::pod_netns::scan`]) and serves it with the same inbound HBONE handler as the node
//! listener: same certificates, policy, metrics and access logs. A socket keeps the namespace it
//! was created in, so only the short-lived thread that binds it ever enters the pod
//! ([`crate::socket::SocketFactory::bind_in_netns`]); tokio workers never change namespace.
//!
//! [`run`] reconciles on every mesh update and every change of the shared namespace scan
//! ([`crate::pod_scan`]): a listener opens when a local pod's namespace appears, and closes when the pod leaves the mesh, its namespace goes
//! away, or the namespace changes (pod sandbox restarted; a new listener then opens in the new
//! one). Failures are logged per pod and retried on the next pass, never fatal.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use mesh_core::{
    drain::{self, DrainTrigger, DrainWatch},
    hbone::{self, Accepted, ConnectHandler, ConnectRequest, Rejection},
};
use tokio::sync::{watch, Notify};

use crate::{
    pod_netns::PodNetns,
    pod_scan::Scan,
    proxy::{inbound::InboundCerts, Proxy},
};

/// How soon a listener that failed to open is tried again (without a scan or mesh change).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Why opening one pod's listener failed (logged; retried on the next pass).
#[derive(Debug, thiserror::Error)]
pub enum InPodError {
    /// Entering the namespace or binding failed.
    #[error("binding {addr} in network namespace {netns}: {source}, is something in the pod using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The namespace path.
        netns: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The blocking bind task did not finish.
    #[error("bind task for network namespace {netns} did not finish: {reason}")]
    Task {
        /// The namespace path.
        netns: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a listener closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The pod is no longer a local workload.
    PodLeft,
    /// Its namespace is no longer visible (sandbox deleted).
    NetnsGone,
    /// Its IP now lives in another namespace (sandbox restarted).
    NetnsChanged,
    /// The node is draining.
    Shutdown,
}

/// What one reconciliation pass changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListenerPlan {
    /// Listeners to close, by pod IP.
    pub close: Vec<(IpAddr, CloseReason)>,
    /// Listeners to open, by pod IP, in the namespace found for it.
    pub open: Vec<(IpAddr, PodNetns)>,
}

/// Compares the open listeners (pod IP -> netns cookie) with the local pods (`wanted`) and the
/// latest scan. A changed namespace closes the old listener and opens a new one.
pub fn plan(
    open: &BTreeMap<IpAddr, u64>,
    wanted: &BTreeMap<IpAddr, String>,
    found: &HashMap<IpAddr, PodNetns>,
) -> ListenerPlan {
    let mut plan = ListenerPlan::default();
    for (ip, cookie) in open {
        let reason = match (wanted.contains_key(ip), found.get(ip)) {
            (false, _) => CloseReason::PodLeft,
            (true, None) => CloseReason::NetnsGone,
            (true, Some(netns)) if netns.cookie != *cookie => CloseReason::NetnsChanged,
            (true, Some(_)) => continue,
        };
        plan.close.push((*ip, reason));
    }
    for ip in wanted.keys() {
        let Some(netns) = found.get(ip) else { continue };
        if open.get(ip) != Some(&netns.cookie) {
            plan.open.push((*ip, netns.clone()));
        }
    }
    plan
}

/// Local workloads by IP, with their names (for logs).
fn local_pods(proxy: &Proxy) -> BTreeMap<IpAddr, String> {
    let state = proxy.state();
    state
        .workloads()
        .iter()
        .filter(|w| w.node == state.node)
        .map(|w| (w.ip, w.name.clone()))
        .collect()
}

/// Serves one pod's listener: the authority must be that pod (a pod's socket is no entry point
/// to its neighbours), then the node's inbound handler decides.
struct PodHandler {
    proxy: Proxy,
    pod: IpAddr,
}

impl ConnectHandler for PodHandler {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        if request.authority.ip() != self.pod {
            let rejection = Rejection::BadRequest(format!(
                "authority {} is not pod {} whose listener was dialled",
                request.authority, self.pod
            ));
            return Box::pin(async move { Err(rejection) });
        }
        self.proxy.connect(request)
    }
}

struct PodListener {
    name: String,
    netns: PodNetns,
    stop: DrainTrigger,
}

/// The open in-pod listeners and what they need to open more.
pub struct InPodListeners {
    proxy: Proxy,
    port: u16,
    mark: u32,
    deadline: Duration,
    open: HashMap<IpAddr, PodListener>,
    published: watch::Sender<BTreeMap<IpAddr, PathBuf>>,
}

impl InPodListeners {
    /// Listeners on `port`, with `SO_MARK` `mark` (0: none), for `proxy`'s local pods;
    /// `deadline` bounds each listener's drain. Returns the manager and a view of the open
    /// listeners (pod IP -> namespace path).
    pub fn new(
        proxy: Proxy,
        port: u16,
        mark: u32,
        deadline: Duration,
    ) -> (Self, watch::Receiver<BTreeMap<IpAddr, PathBuf>>) {
        let (published, view) = watch::channel(BTreeMap::new());
        let manager = Self {
            proxy,
            port,
            mark,
            deadline,
            open: HashMap::new(),
            published,
        };
        (manager, view)
    }

    /// One pass over the latest scan: close what must close, open what is missing.
    async fn reconcile(&mut self, found: &Scan, drain: &DrainWatch) {
        let wanted = local_pods(&self.proxy);
        let open = self
            .open
            .iter()
            .map(|(ip, l)| (*ip, l.netns.cookie))
            .collect();
        let plan = plan(&open, &wanted, found);
        for (ip, reason) in plan.close {
            self.close(ip, reason, drain);
        }
        for (ip, netns) in plan.open {
            let name = wanted.get(&ip).cloned().unwrap_or_default();
            self.open_one(ip, name, netns).await;
        }
        self.publish();
    }

    /// Opens one pod's listener; a failure is logged and retried on the next pass.
    async fn open_one(&mut self, ip: IpAddr, name: String, netns: PodNetns) {
        let path = netns.path.display().to_string();
        match self.open_listener(ip, &netns).await {
            Ok(stop) => {
                tracing::info!(pod = %name, pod.ip = %ip, netns = %path, port = self.port, "in-pod hbone listener open");
                self.open.insert(ip, PodListener { name, netns, stop });
            }
            Err(error) => {
                tracing::warn!(pod = %name, pod.ip = %ip, netns = %path, %error, "in-pod hbone listener failed; retrying");
            }
        }
    }

    async fn open_listener(
        &self,
        ip: IpAddr,
        netns: &PodNetns,
    ) -> Result<DrainTrigger, InPodError> {
        let unspecified = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let addr = SocketAddr::new(unspecified, self.port);
        let (sockets, path, mark) = (self.proxy.sockets.clone(), netns.path.clone(), self.mark);
        let bind_error = |source| InPodError::Bind {
            addr,
            netns: netns.path.clone(),
            source,
        };
        let listener =
            tokio::task::spawn_blocking(move || sockets.bind_in_netns(&path, addr, mark))
                .await
                .map_err(|e| InPodError::Task {
                    netns: netns.path.clone(),
                    reason: e.to_string(),
                })?
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(bind_error)?;
        let handler = PodHandler {
            proxy: self.proxy.clone(),
            pod: ip,
        };
        let server = hbone::Server::new(
            Arc::new(InboundCerts(self.proxy.clone())),
            Arc::new(handler),
        );
        // One server per pod, so each pod's listener has its own connection limit.
        let (stop, watch) = drain::channel();
        tokio::spawn(server.serve(listener, watch));
        Ok(stop)
    }

    /// Stops accepting at once; connections finish (GOAWAY) under `drain`, up to the deadline.
    fn close(&mut self, ip: IpAddr, reason: CloseReason, drain: &DrainWatch) {
        let Some(listener) = self.open.remove(&ip) else {
            return;
        };
        tracing::info!(pod = %listener.name, pod.ip = %ip, netns = %listener.netns.path.display(), ?reason, "in-pod hbone listener closed");
        let (deadline, hold) = (self.deadline, drain.clone());
        tokio::spawn(async move {
            listener.stop.drain(deadline).await;
            drop(hold);
        });
    }

    fn close_all(&mut self, drain: &DrainWatch) {
        let ips: Vec<IpAddr> = self.open.keys().copied().collect();
        for ip in ips {
            self.close(ip, CloseReason::Shutdown, drain);
        }
        self.publish();
    }

    fn publish(&self) {
        let view = self
            .open
            .iter()
            .map(|(ip, l)| (*ip, l.netns.path.clone()))
            .collect();
        self.published.send_replace(view);
    }
}

/// Reconciles whenever the namespace scan or the mesh (`mesh_changed`) changes, and every
/// `retry` (listeners that failed to open are tried again), until `drain` starts; then closes
/// every listener (the drain waits for their connections, up to the deadline).
pub async fn run(
    mut listeners: InPodListeners,
    mut scans: watch::Receiver<Scan>,
    mesh_changed: Arc<Notify>,
    retry: Duration,
    mut drain: DrainWatch,
) {
    loop {
        let found = scans.borrow_and_update().clone();
        listeners.reconcile(&found, &drain).await;
        tokio::select! {
            _ = drain.signaled() => break,
            changed = scans.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = mesh_changed.notified() => {}
            _ = tokio::time::sleep(retry) => {}
        }
    }
    listeners.close_all(&drain);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn netns(cookie: u64) -> PodNetns {
        PodNetns {
            cookie,
            path: PathBuf::from(format!("/run/netns/{cookie}")),
        }
    }

    fn wanted(ips: &[&str]) -> BTreeMap<IpAddr, String> {
        ips.iter().map(|s| (ip(s), format!("pod-{s}"))).collect()
    }

    #[test]
    fn opens_for_found_local_pods_only() {
        let found = HashMap::from([(ip("10.0.0.1"), netns(7)), (ip("10.0.0.9"), netns(9))]);
        let plan = plan(&BTreeMap::new(), &wanted(&["10.0.0.1", "10.0.0.2"]), &found);
        assert_eq!(plan.open, vec![(ip("10.0.0.1"), netns(7))]);
        assert!(plan.close.is_empty());
    }

    #[test]
    fn closes_departed_vanished_and_restarted_pods() {
        let open = BTreeMap::from([
            (ip("10.0.0.1"), 7),
            (ip("10.0.0.2"), 8),
            (ip("10.0.0.3"), 5),
            (ip("10.0.0.4"), 4),
        ]);
        let found = HashMap::from([
            (ip("10.0.0.1"), netns(7)),
            (ip("10.0.0.3"), netns(6)),
            (ip("10.0.0.4"), netns(4)),
        ]);
        let plan = plan(
            &open,
            &wanted(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            &found,
        );
        assert_eq!(
            plan.close,
            vec![
                (ip("10.0.0.1"), CloseReason::PodLeft),
                (ip("10.0.0.2"), CloseReason::NetnsGone),
                (ip("10.0.0.3"), CloseReason::NetnsChanged),
            ]
        );
        assert_eq!(plan.open, vec![(ip("10.0.0.3"), netns(6))]);
    }
}
