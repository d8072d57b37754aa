//! Inbound HBONE: checks each `CONNECT` (local destination, policy), connects to the pod and
//! serves the stream; picks the certificate of the destination workload for each connection.

use std::{net::SocketAddr, sync::Arc};

use futures::future::BoxFuture;
use mesh_core::hbone::{
    baggage::WorkloadMeta, headers, Accepted, ConnectHandler, ConnectRequest, Rejection,
    ServerCertSelector,
};
use tokio::{net::TcpStream, time::Instant};
use tracing::Instrument;

use super::{copy_with_policy, labels, Proxy, UPSTREAM_CONNECT_TIMEOUT};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter},
    policy::ConnectionInfo,
    state::Workload,
};

/// The tunnel's own ports, which clients may not target (loop protection).
const RESERVED_PORTS: [u16; 6] = [15000, 15001, 15006, 15008, 15020, 15021];

/// Server certificate of the destination workload, chosen by the connection's original
/// destination IP (the pod the peer dialled).
pub struct InboundCerts(pub Proxy);

impl ServerCertSelector for InboundCerts {
    fn select(&self, stream: &TcpStream) -> Option<Arc<rustls::ServerConfig>> {
        let dst = self.0.sockets.original_dst(stream).ok()?;
        let state = self.0.state();
        let workload = state.local_workload(dst.ip())?;
        self.0.certs.server_config(&workload.identity)
    }
}

impl ConnectHandler for Proxy {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Result<Accepted, Rejection>> {
        let span = tracing::debug_span!(
            "inbound",
            peer = %request.peer_addr,
            identity = %request.peer_identity,
            authority = %request.authority,
        );
        Box::pin(self.clone().inbound(request).instrument(span))
    }
}

impl Proxy {
    async fn inbound(self, request: ConnectRequest) -> Result<Accepted, Rejection> {
        let start = Instant::now();
        let dst = request.authority;
        let state = self.state();
        let Some(dest) = state.local_workload(dst.ip()).cloned() else {
            return Err(Rejection::BadRequest(format!(
                "{dst} is not a workload on this node"
            )));
        };
        let source_ip = headers::forwarded_for(&request.headers)
            .map(|addr| addr.ip())
            .unwrap_or(request.peer_addr.ip());
        let source = state.workload(source_ip).cloned();
        // A source this node does not know (another cluster's, a waypoint's) may still have
        // named itself in the CONNECT's baggage.
        let baggage = WorkloadMeta::from_headers(&request.headers);
        let labels = labels(
            Reporter::Destination,
            source.as_deref().map(|w| &w.meta).or(baggage.as_ref()),
            Some(request.peer_identity.to_string()),
            Some(&dest),
            true,
        );
        let reject = |rejection: Rejection| {
            self.metrics.record(&ConnectionRecord {
                labels: labels.clone(),
                sent: 0,
                received: 0,
                duration: start.elapsed(),
                outcome: Outcome::Failed(rejection.to_string()),
            });
            rejection
        };
        if RESERVED_PORTS.contains(&dst.port()) {
            return Err(reject(Rejection::BadRequest(format!(
                "port {} is reserved",
                dst.port()
            ))));
        }
        let info = connection_info(
            Some(request.peer_identity.clone()),
            source_ip,
            &dest,
            dst.port(),
        );
        let mut guard = self
            .authz
            .admit(info)
            .map_err(|decision| reject(Rejection::Unauthorized(format!("{decision:?}"))))?;
        if !self.still_local(dest.ip, &dest.name) {
            let gone = format!("{dst}: workload {} left the mesh", dest.name);
            return Err(reject(Rejection::BadRequest(gone)));
        }
        let mut upstream = self
            .connect_pod(dst)
            .await
            .map_err(|e| reject(Rejection::Unavailable(e)))?;
        self.metrics.opened(&labels);
        let metrics = self.metrics.clone();
        Ok(Accepted::new(move |mut tunnel| async move {
            let (sent, received, outcome) =
                copy_with_policy(&mut tunnel, &mut upstream, Some(&mut guard)).await;
            metrics.record(&ConnectionRecord {
                labels,
                sent,
                received,
                duration: start.elapsed(),
                outcome,
            });
        }))
    }

    /// Connects to a local pod, bounded by [`UPSTREAM_CONNECT_TIMEOUT`].
    pub(crate) async fn connect_pod(&self, dst: SocketAddr) -> Result<TcpStream, String> {
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, self.sockets.connect(dst)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(format!("connecting to {dst}: {error}")),
            Err(_) => Err(format!("connecting to {dst}: timed out")),
        }
    }
}

/// Policy input for a connection to `dest`.
pub(crate) fn connection_info(
    identity: Option<mesh_core::identity::SpiffeId>,
    source_ip: std::net::IpAddr,
    dest: &Workload,
    port: u16,
) -> ConnectionInfo {
    ConnectionInfo {
        source_identity: identity,
        source_ip,
        dest_namespace: dest.namespace.clone(),
        dest_labels: dest.labels.clone(),
        dest_ip: dest.ip,
        dest_workload: dest.name.clone(),
        dest_port: port,
    }
}
