//! The three data-path listeners and what they share.
//!
//! - [`outbound`]: captured outbound connections (15001) -> HBONE or passthrough.
//! - [`inbound`]: HBONE `CONNECT` streams (15008) -> local workload, after policy.
//! - [`plaintext`]: captured inbound plaintext (15006) -> local workload, honouring the
//!   PeerAuthentication mode and policy.
//! - `same_node`: captured outbound to a pod served in-pod here -> that pod, policy checked
//!   here, no HBONE (when both workloads allow it).
//! - [`direct`]: the same-node connections that skip the tunnel altogether once their pair is
//!   admitted: accounted for and revoked here from the kernel's reports.
//!
//! Both inbound paths reach the app through an [`AppDial`]: from inside the pod with the
//! client's address (in-pod listeners), or from the node (the node-level listeners).

pub mod direct;
pub mod inbound;
pub mod outbound;
pub mod plaintext;
pub mod same_node;

use std::{sync::Arc, time::Duration};

use mesh_core::hbone::{
    self,
    baggage::{label, WorkloadMeta},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

use crate::{
    certs::CertManager,
    metrics::{Metrics, Outcome, TcpLabels, CLUSTER_ID},
    pod_net::{PodNet, PodNets},
    policy::{Authorizer, ConnectionGuard},
    socket::SocketFactory,
    state::{State, Workload},
};

/// Upstream connects (to a local pod or a passthrough destination) give up after this.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the listeners share. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    /// The mesh view; swapped whole on updates, read once per connection.
    pub state: Arc<arc_swap::ArcSwap<State>>,
    /// Local identities' certificates.
    pub certs: Arc<CertManager>,
    /// HBONE client (pooled).
    pub client: hbone::Client,
    /// Socket factory.
    pub sockets: Arc<dyn SocketFactory>,
    /// Policy.
    pub authz: Authorizer,
    /// Metrics and access log.
    pub metrics: Arc<Metrics>,
    /// Local pods' network namespaces, where their outbound tunnels leave from.
    pub pods: Arc<PodNets>,
    /// Same-node joining, once the eBPF programs are attached with it.
    pub joiner: Arc<std::sync::OnceLock<Arc<crate::redirect::join::Joiner>>>,
    /// Same-node direct connections, once the eBPF programs are attached with them.
    pub direct: Arc<std::sync::OnceLock<Arc<crate::redirect::direct::Direct>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.state().node)
            .finish_non_exhaustive()
    }
}

/// How the tunnel reaches a local app.
#[derive(Debug, Clone)]
pub enum AppDial {
    /// From the node's network namespace, with the node's address (the node-level listeners,
    /// which eBPF never steers to; tests without pod namespaces).
    FromNode,
    /// From inside the pod, transparently with the client's address.
    InPod(Arc<PodNet>),
}

/// Connections one listener serves at once; beyond this new connections are closed, so memory
/// stays bounded under a connection flood.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 16_384;

impl Proxy {
    /// The current mesh view (a consistent snapshot for one connection).
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Connects to the local app at `dst` for `client`, bounded by [`UPSTREAM_CONNECT_TIMEOUT`];
    /// from inside a pod, `announce` hears the socket's address first
    /// ([`crate::pod_net::PodNet::connect_announced`]).
    pub(crate) async fn connect_app(
        &self,
        dial: &AppDial,
        dst: std::net::SocketAddr,
        client: std::net::IpAddr,
        announce: Option<crate::pod_net::Announce<'_>>,
    ) -> Result<tokio::net::TcpStream, String> {
        let connect = async {
            match dial {
                AppDial::FromNode => self.sockets.connect(dst).await,
                AppDial::InPod(pod) => pod.connect_announced(dst, Some(client), announce).await,
            }
        };
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(format!("connecting to {dst} for {client}: {error}")),
            Err(_) => Err(format!("connecting to {dst} for {client}: timed out")),
        }
    }

    /// Whether `name` is still the local workload at `ip` in the current view. Checked right
    /// after a connection registers with the authorizer: an update that removed the workload
    /// either sees the registration (and closes it) or happened before this check.
    pub fn still_local(&self, ip: std::net::IpAddr, name: &str) -> bool {
        self.state
            .load()
            .local_workload(ip)
            .is_some_and(|w| w.name == name)
    }
}

/// Accepts on `listener` until `drain`, running `handle` for each connection under a clone of
/// the drain watch (so the drain waits for it), at most [`MAX_CONNECTIONS_PER_LISTENER`] at once.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut drain: mesh_core::drain::DrainWatch,
    name: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(listener = name, %peer, "connection limit reached, closing");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let watch = drain.clone();
                let task = handle(stream, peer);
                tokio::spawn(async move {
                    task.await;
                    drop((watch, permit));
                });
            }
            Err(error) => tracing::warn!(listener = name, %error, "accept failed"),
        }
    }
}

/// Copies until done, or until `guard` is revoked (policy change, workload left).
pub async fn copy_with_policy<A, B>(
    a: &mut A,
    b: &mut B,
    guard: Option<&mut ConnectionGuard>,
) -> (u64, u64, Outcome)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let copy = hbone::copy_bidirectional(a, b);
    let revoked = async {
        match guard {
            Some(guard) => guard.revoked().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = copy => match result {
            Ok((sent, received)) => (sent, received, Outcome::Completed),
            // Reset mid-stream is a normal end for TCP proxies; bytes are unknown here.
            Err(error) => (0, 0, Outcome::Failed(format!("copy: {error}"))),
        },
        reason = revoked => (0, 0, Outcome::Revoked(reason)),
    }
}

/// Labels with workload fields filled from what is known (`unknown` otherwise).
pub fn labels(
    reporter: crate::metrics::Reporter,
    source: Option<&WorkloadMeta>,
    source_principal: Option<String>,
    dest: Option<&Workload>,
    mtls: bool,
) -> TcpLabels {
    let dest_meta = dest.map(|w| &w.meta);
    let cluster = |known: bool| if known { CLUSTER_ID } else { "unknown" }.to_owned();
    TcpLabels {
        reporter,
        source_workload: label(source, |m| &m.workload_name),
        source_workload_namespace: label(source, |m| &m.namespace),
        source_canonical_service: label(source, |m| &m.canonical_service),
        source_canonical_revision: label(source, |m| &m.canonical_revision),
        source_principal: source_principal.unwrap_or_else(|| "unknown".into()),
        source_app: label(source, |m| &m.canonical_service),
        source_version: label(source, |m| &m.canonical_revision),
        source_cluster: cluster(source.is_some()),
        destination_workload: label(dest_meta, |m| &m.workload_name),
        destination_workload_namespace: label(dest_meta, |m| &m.namespace),
        destination_canonical_service: label(dest_meta, |m| &m.canonical_service),
        destination_canonical_revision: label(dest_meta, |m| &m.canonical_revision),
        destination_principal: dest.map_or("unknown".into(), |w| w.identity.to_string()),
        destination_app: label(dest_meta, |m| &m.canonical_service),
        destination_version: label(dest_meta, |m| &m.canonical_revision),
        destination_cluster: cluster(dest.is_some()),
        request_protocol: "tcp",
        connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
    }
}
