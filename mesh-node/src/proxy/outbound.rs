//! Outbound: a local workload's captured connection, sent over HBONE or passed through.

use std::{net::SocketAddr, sync::Arc};

use http::HeaderMap;
use mesh_core::hbone::{headers, Origin, OutboundRequest};
use tokio::{net::TcpStream, time::Instant};
use tracing::Instrument;

use super::{copy_with_policy, labels, Proxy, UPSTREAM_CONNECT_TIMEOUT};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter},
    pod_net::FromPod,
    policy::ConnectionGuard,
    route::{self, HboneRoute, Route},
    state::Workload,
};

impl Proxy {
    /// Handles one connection accepted on the outbound listener.
    pub async fn outbound(self, mut stream: TcpStream, peer: SocketAddr) {
        let start = Instant::now();
        // Before the view: a change after this voids what this connection admits.
        let epoch = self.direct.get().map(|direct| direct.epoch());
        let dst = match self.sockets.original_dst(&stream) {
            Ok(dst) => dst,
            Err(error) => {
                tracing::warn!(%peer, %error, "no original destination, closing");
                return;
            }
        };
        let state = self.state();
        let Some(source) = state.local_workload(peer.ip()).cloned() else {
            // Fail closed: only enrolled local workloads may use the tunnel.
            tracing::warn!(%peer, %dst, "outbound from unknown source, closing");
            return;
        };
        let span = tracing::debug_span!("outbound", src = %peer, %dst, workload = %source.name);
        // Registered before routing, so a mesh update that removes the source closes it.
        let mut guard = self.authz.track_outbound(source.ip, source.name.clone());
        if !self.still_local(source.ip, &source.name) {
            tracing::warn!(%peer, %dst, workload = %source.name, "source left the mesh, closing");
            return;
        }
        let conn = Captured {
            stream: &mut stream,
            peer,
            guard: &mut guard,
            epoch,
        };
        self.route(conn, &source, dst, start).instrument(span).await;
    }

    async fn route(
        &self,
        conn: Captured<'_>,
        source: &Arc<Workload>,
        dst: SocketAddr,
        start: Instant,
    ) {
        let state = self.state();
        let route = route::choose(&state, dst);
        let same_node = match &route {
            Route::Hbone(hop) => self
                .same_node_target(&state, source, hop)
                .map(|target| target.admitting(dst, conn.epoch)),
            _ => None,
        };
        if same_node.is_none() {
            // Only same-node connections are joined: the others' writes leave `sk_msg` now.
            self.release_join(conn.stream);
        }
        match route {
            Route::Hbone(hop) => match same_node {
                Some(target) => {
                    self.same_node(conn.stream, conn.guard, source, target, start)
                        .await
                }
                None => self.via_hbone(conn, source, hop, start).await,
            },
            Route::Passthrough(addr) => self.passthrough(conn, source, addr, start).await,
            Route::NoEndpoint { service } => self.fail(
                source,
                None,
                start,
                format!("service {service} has no endpoints"),
            ),
            Route::NoPort { service, port } => self.fail(
                source,
                None,
                start,
                format!("service {service} has no port {port}"),
            ),
        }
    }

    async fn via_hbone(
        &self,
        conn: Captured<'_>,
        source: &Arc<Workload>,
        hop: HboneRoute,
        start: Instant,
    ) {
        let dest = hop.workload.clone();
        let Some(cert) = self.certs.get(&source.identity) else {
            let reason = format!("no certificate for {}", source.identity);
            return self.fail(source, dest.as_deref(), start, reason);
        };
        let request = OutboundRequest {
            source: cert,
            destination_identities: vec![hop.identity.clone()],
            dial: hop.dial,
            authority: match hop.authority.to_string().parse() {
                Ok(authority) => authority,
                Err(_) => return self.fail(source, dest.as_deref(), start, "bad authority".into()),
            },
            headers: connect_headers(conn.peer, source),
            // From inside the source pod when it is served in-pod: the peer sees its address.
            origin: self.pods.get(source.ip).map(|net| Origin {
                ip: source.ip,
                dialer: Arc::new(FromPod(net)),
            }),
        };
        let mut tunnel = match self.client.connect(request).await {
            Ok(tunnel) => tunnel,
            Err(error) => return self.fail(source, dest.as_deref(), start, error.to_string()),
        };
        let labels = labels(
            Reporter::Source,
            Some(&source.meta),
            Some(source.identity.to_string()),
            dest.as_deref(),
            true,
        );
        self.metrics.opened(&labels);
        let (sent, received, outcome) =
            copy_with_policy(conn.stream, &mut tunnel, Some(conn.guard)).await;
        self.metrics.record(&ConnectionRecord {
            labels,
            sent,
            received,
            duration: start.elapsed(),
            outcome,
        });
    }

    async fn passthrough(
        &self,
        conn: Captured<'_>,
        source: &Arc<Workload>,
        addr: SocketAddr,
        start: Instant,
    ) {
        let connect = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, self.sockets.connect(addr));
        let mut upstream = match connect.await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                return self.fail(source, None, start, format!("passthrough {addr}: {error}"))
            }
            Err(_) => {
                return self.fail(
                    source,
                    None,
                    start,
                    format!("passthrough {addr}: timed out"),
                )
            }
        };
        let labels = labels(
            Reporter::Source,
            Some(&source.meta),
            Some(source.identity.to_string()),
            None,
            false,
        );
        self.metrics.opened(&labels);
        let (sent, received, outcome) =
            copy_with_policy(conn.stream, &mut upstream, Some(conn.guard)).await;
        self.metrics.record(&ConnectionRecord {
            labels,
            sent,
            received,
            duration: start.elapsed(),
            outcome,
        });
    }

    fn fail(&self, source: &Workload, dest: Option<&Workload>, start: Instant, reason: String) {
        let labels = labels(
            Reporter::Source,
            Some(&source.meta),
            Some(source.identity.to_string()),
            dest,
            true,
        );
        self.metrics.record(&ConnectionRecord {
            labels,
            sent: 0,
            received: 0,
            duration: start.elapsed(),
            outcome: Outcome::Failed(reason),
        });
    }
}

/// A captured application connection on its way out.
struct Captured<'a> {
    stream: &'a mut TcpStream,
    peer: SocketAddr,
    guard: &'a mut ConnectionGuard,
    /// The same-node admission epoch read before the mesh view ([`super::direct`]).
    epoch: Option<u64>,
}

/// `forwarded`, a fresh `traceparent` and `baggage` describing the source workload.
fn connect_headers(peer: SocketAddr, source: &Workload) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Ok(value) = headers::forwarded(peer, None) {
        map.insert(headers::FORWARDED, value);
    }
    map.insert(
        headers::TRACEPARENT,
        headers::TraceParent::generate().to_header(),
    );
    // ztunnel's keys: namespace, controller, canonical service and revision.
    if let Ok(value) = source.meta.to_baggage() {
        map.insert(headers::BAGGAGE, value);
    }
    map
}
