//! In-pod listeners (Istio ambient's "in-pod" model).
//!
//! Peers dial `<pod ip>:15008`. Instead of NATing that to the node, the tunnel opens listening
//! sockets *inside* each local pod's network namespace (found by [`crate::pod_netns::scan`]): the
//! HBONE listener on `<hbone port>` and the plaintext listener on `<plaintext port>`, served by
//! the node's inbound handlers (same certificates, policy, metrics and access logs). With eBPF
//! redirection ([`Steering`]), `sk_lookup` steers every inbound TCP connection attempt to the pod
//! to one of the two, whatever its port, and refuses it while they are missing: the steering is
//! attached before the listeners are bound (fail closed). The tunnel reaches the app from inside
//! the pod with the client's address ([`PodNet`]); the pod's return-path routing is set up
//! before its listeners open ([`crate::pod_net::prepare`]).
//!
//! A socket keeps the namespace it was created in, so only the short-lived thread that binds it
//! ever enters the pod ([`crate::socket::SocketFactory::bind_in_netns`]); per connection, a
//! tokio worker enters the namespace for one `socket()` call ([`crate::pod_net::socket_in`]).
//!
//! [`run`] reconciles on every mesh update and every change of the shared namespace scan
//! ([`crate::pod_scan`]): listeners open when a local pod's namespace appears, and close when the
//! pod leaves the mesh, its namespace goes away, or the namespace changes (pod sandbox
//! restarted; new ones then open in the new one). Failures are logged per pod and retried on the
//! next pass, never fatal.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use mesh_core::{
    drain::{self, DrainTrigger, DrainWatch},
    hbone::{self, Accepted, ConnectHandler, ConnectRequest, Rejection},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
};
use tracing::Instrument;

use crate::{
    pod_net::PodNet,
    pod_netns::PodNetns,
    pod_scan::Scan,
    proxy::{accept_loop, inbound::InboundCerts, AppDial, Proxy},
    redirect::{ListenerKind, RedirectError, Steering},
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
    /// The return path of the tunnel's connections to apps could not be set up in the pod.
    #[error("setting up the return path in network namespace {netns}: {source}; does mesh-node have CAP_NET_ADMIN?")]
    ReturnPath {
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

/// Serves one pod's HBONE listener: the authority must be that pod (a pod's socket is no entry
/// point to its neighbours), then the node's inbound handler decides.
struct PodHandler {
    proxy: Proxy,
    pod: IpAddr,
    net: Arc<PodNet>,
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
        let span = tracing::debug_span!(
            "inbound",
            peer = %request.peer_addr,
            identity = %request.peer_identity,
            authority = %request.authority,
        );
        let dial = AppDial::InPod(self.net.clone());
        Box::pin(self.proxy.clone().inbound(request, dial).instrument(span))
    }
}

/// Serves one connection accepted on a pod's plaintext listener: only the pod's own address is
/// a destination (steering never delivers another; this refuses a local process that dials the
/// listener's port).
async fn serve_plaintext(
    proxy: Proxy,
    net: Arc<PodNet>,
    pod: IpAddr,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(dst) = stream.local_addr() else { return };
    if dst.ip().to_canonical() != pod {
        tracing::debug!(%peer, %dst, pod = %pod, "plaintext to another address than the pod's, closing");
        return;
    }
    proxy
        .plaintext(stream, peer, dst, AppDial::InPod(net))
        .await;
}

struct PodListener {
    name: String,
    netns: PodNetns,
    net: Arc<PodNet>,
    /// Duplicates of the two listening sockets (HBONE, plaintext), to register them with
    /// steering that arrives after they opened.
    sockets: [OwnedFd; 2],
    stop: DrainTrigger,
}

/// Ports and marks of the in-pod listeners.
#[derive(Debug, Clone, Copy)]
pub struct InPodSettings {
    /// HBONE port.
    pub hbone_port: u16,
    /// Plaintext port.
    pub plaintext_port: u16,
    /// `SO_MARK` of the listeners (0: none).
    pub mark: u32,
    /// `SO_MARK` of connections to apps (0: no client address preservation).
    pub reply_mark: u32,
    /// Bound on each pod's drain.
    pub deadline: Duration,
}

/// The open in-pod listeners and what they need to open more.
pub struct InPodListeners {
    proxy: Proxy,
    settings: InPodSettings,
    steering: Arc<OnceLock<Arc<Steering>>>,
    open: HashMap<IpAddr, PodListener>,
    /// Pods whose namespace is steered now, by IP, with the namespace's cookie.
    steered: HashMap<IpAddr, u64>,
    published: watch::Sender<BTreeMap<IpAddr, PathBuf>>,
    /// Whether the mesh view names the node's pods yet (static mode, or a feed version in).
    mesh_known: Arc<AtomicBool>,
}

impl InPodListeners {
    /// Listeners with `settings` for `proxy`'s local pods, steered by eBPF once `steering` is
    /// set. Returns the manager and a view of the open listeners (pod IP -> namespace path).
    /// Steering links adopted from pins that no pod claims are retired once `mesh_known`.
    pub fn new(
        proxy: Proxy,
        settings: InPodSettings,
        steering: Arc<OnceLock<Arc<Steering>>>,
        mesh_known: Arc<AtomicBool>,
    ) -> (Self, watch::Receiver<BTreeMap<IpAddr, PathBuf>>) {
        let (published, view) = watch::channel(BTreeMap::new());
        let manager = Self {
            proxy,
            settings,
            steering,
            open: HashMap::new(),
            steered: HashMap::new(),
            published,
            mesh_known,
        };
        (manager, view)
    }

    /// One pass over the latest scan: close what must close, open what is missing, steer what
    /// is not steered yet.
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
        self.release_stale(&wanted, found);
        for (ip, netns) in plan.open {
            let name = wanted.get(&ip).cloned().unwrap_or_default();
            self.open_one(ip, name, netns).await;
        }
        self.steer_open();
        self.retire_unclaimed(found);
        self.publish();
    }

    /// Once the node knows its pods and has steered those it serves, pinned steering adopted
    /// from an earlier process that no pod claimed belongs to pods that left the mesh.
    fn retire_unclaimed(&self, found: &Scan) {
        if !self.mesh_known.load(Ordering::Acquire) {
            return;
        }
        if let Some(steering) = self.steering.get() {
            let scanned = found.values().map(|netns| netns.cookie).collect();
            steering.retire_unclaimed(&scanned);
        }
    }

    /// Stops steering pods that left, or whose namespace went or changed.
    fn release_stale(&mut self, wanted: &BTreeMap<IpAddr, String>, found: &Scan) {
        let Some(steering) = self.steering.get() else {
            return;
        };
        let stale: Vec<(IpAddr, u64)> = self
            .steered
            .iter()
            .filter(|(ip, cookie)| {
                !wanted.contains_key(ip) || found.get(ip).map(|n| n.cookie) != Some(**cookie)
            })
            .map(|(ip, cookie)| (*ip, *cookie))
            .collect();
        for (ip, cookie) in stale {
            match steering.release(cookie, ip) {
                Ok(()) => {
                    self.steered.remove(&ip);
                    tracing::info!(pod.ip = %ip, netns.cookie = cookie, "inbound steering released");
                }
                Err(error) => {
                    tracing::warn!(pod.ip = %ip, %error, "releasing inbound steering failed; retrying")
                }
            }
        }
    }

    /// Steers open pods that are not steered yet (steering arrived after they opened, or an
    /// earlier attempt failed).
    fn steer_open(&mut self) {
        let Some(steering) = self.steering.get().cloned() else {
            return;
        };
        let unsteered: Vec<IpAddr> = self
            .open
            .keys()
            .filter(|ip| !self.steered.contains_key(ip))
            .copied()
            .collect();
        for ip in unsteered {
            let Some(pod) = self.open.get(&ip) else {
                continue;
            };
            let (cookie, name) = (pod.netns.cookie, pod.name.clone());
            let steered = steering
                .steer(cookie, pod.net.netns(), ip)
                .and_then(|()| register(&steering, ip, &pod.sockets));
            match steered {
                Ok(()) => {
                    self.steered.insert(ip, cookie);
                    tracing::info!(pod = %name, pod.ip = %ip, netns.cookie = cookie, "inbound steering attached");
                }
                Err(error) => {
                    tracing::warn!(pod = %name, pod.ip = %ip, %error, "inbound steering failed; retrying")
                }
            }
        }
    }

    /// Opens one pod's listeners; a failure is logged and retried on the next pass. With
    /// steering, the pod is steered first, so it is closed to plaintext until they open.
    async fn open_one(&mut self, ip: IpAddr, name: String, netns: PodNetns) {
        let path = netns.path.display().to_string();
        let file = match std::fs::File::open(&netns.path) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(pod = %name, pod.ip = %ip, netns = %path, %error, "pod network namespace not opened; retrying");
                return;
            }
        };
        let net =
            Arc::new(PodNet::new(file, self.settings.reply_mark).with_mark(self.settings.mark));
        if let Some(steering) = self.steering.get() {
            match steering.steer(netns.cookie, net.netns(), ip) {
                Ok(()) => {
                    self.steered.insert(ip, netns.cookie);
                }
                Err(error) => {
                    tracing::warn!(pod = %name, pod.ip = %ip, %error, "inbound steering failed; retrying")
                }
            }
        }
        match self.open_listeners(ip, &netns, &net).await {
            Ok((stop, sockets)) => {
                let registered = match (self.steering.get(), self.steered.contains_key(&ip)) {
                    (Some(steering), true) => register(steering, ip, &sockets),
                    _ => Ok(()),
                };
                if let Err(error) = registered {
                    tracing::warn!(pod = %name, pod.ip = %ip, %error, "in-pod listeners not registered for steering; retrying");
                    self.steered.remove(&ip);
                }
                tracing::info!(pod = %name, pod.ip = %ip, netns = %path, hbone = self.settings.hbone_port, plaintext = self.settings.plaintext_port, "in-pod listeners open");
                let listener = PodListener {
                    name,
                    netns,
                    net,
                    sockets,
                    stop,
                };
                self.proxy.pods.insert(ip, listener.net.clone());
                self.open.insert(ip, listener);
            }
            Err(error) => {
                tracing::warn!(pod = %name, pod.ip = %ip, netns = %path, %error, "in-pod listeners failed; inbound to the pod is refused until they open; retrying");
            }
        }
    }

    /// Prepares the pod's return path, binds both listeners inside it and serves them.
    async fn open_listeners(
        &self,
        ip: IpAddr,
        netns: &PodNetns,
        net: &Arc<PodNet>,
    ) -> Result<(DrainTrigger, [OwnedFd; 2]), InPodError> {
        let unspecified = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let settings = self.settings;
        let hbone_addr = SocketAddr::new(unspecified, settings.hbone_port);
        let plaintext_addr = SocketAddr::new(unspecified, settings.plaintext_port);
        let (sockets, path) = (self.proxy.sockets.clone(), netns.path.clone());
        let bound = tokio::task::spawn_blocking(move || {
            if settings.reply_mark != 0 {
                sockets
                    .prepare_in_netns(&path, ip, settings.reply_mark)
                    .map_err(|source| InPodError::ReturnPath {
                        netns: path.clone(),
                        source,
                    })?;
            }
            let bind = |addr| {
                sockets
                    .bind_in_netns(&path, addr, settings.mark)
                    .map_err(|source| InPodError::Bind {
                        addr,
                        netns: path.clone(),
                        source,
                    })
            };
            Ok::<_, InPodError>((bind(hbone_addr)?, bind(plaintext_addr)?))
        })
        .await
        .map_err(|e| InPodError::Task {
            netns: netns.path.clone(),
            reason: e.to_string(),
        })??;
        let bind_error = |addr| {
            let netns = netns.path.clone();
            move |source| InPodError::Bind {
                addr,
                netns,
                source,
            }
        };
        let (hbone, plaintext) = bound;
        let dup = |l: &std::net::TcpListener, addr| {
            l.try_clone().map(OwnedFd::from).map_err(bind_error(addr))
        };
        let duplicates = [dup(&hbone, hbone_addr)?, dup(&plaintext, plaintext_addr)?];
        let hbone = TcpListener::from_std(hbone).map_err(bind_error(hbone_addr))?;
        let plaintext = TcpListener::from_std(plaintext).map_err(bind_error(plaintext_addr))?;
        let handler = PodHandler {
            proxy: self.proxy.clone(),
            pod: ip,
            net: net.clone(),
        };
        let server = hbone::Server::new(
            Arc::new(InboundCerts(self.proxy.clone())),
            Arc::new(handler),
        );
        // One drain per pod for both listeners; each has its own connection limit.
        let (stop, watch) = drain::channel();
        tokio::spawn(server.serve(hbone, watch.clone()));
        let (proxy, net) = (self.proxy.clone(), net.clone());
        tokio::spawn(accept_loop(
            plaintext,
            watch,
            "in-pod plaintext",
            move |stream, peer| serve_plaintext(proxy.clone(), net.clone(), ip, stream, peer),
        ));
        Ok((stop, duplicates))
    }

    /// Stops accepting at once; connections finish (GOAWAY) under `drain`, up to the deadline.
    fn close(&mut self, ip: IpAddr, reason: CloseReason, drain: &DrainWatch) {
        let Some(listener) = self.open.remove(&ip) else {
            return;
        };
        self.proxy.pods.remove(ip);
        tracing::info!(pod = %listener.name, pod.ip = %ip, netns = %listener.netns.path.display(), ?reason, "in-pod listeners closed");
        let (deadline, hold) = (self.settings.deadline, drain.clone());
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

/// Registers a pod's two listeners (HBONE, plaintext) for steering.
fn register(steering: &Steering, ip: IpAddr, sockets: &[OwnedFd; 2]) -> Result<(), RedirectError> {
    steering.listener(ip, ListenerKind::Hbone, sockets[0].as_fd())?;
    steering.listener(ip, ListenerKind::Plaintext, sockets[1].as_fd())
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
