//! Inbound HBONE: checks each `CONNECT` (local destination, policy), connects to the pod and
//! serves the stream; picks the certificate of the destination workload for each connection.
//!
//! Who the client is ([`client_of`]): the peer's verified identity, and the address of its
//! socket. A peer's `forwarded` and `baggage` headers are believed only when that identity is a
//! waypoint the control plane fed (the waypoint terminated the client's connection and speaks
//! for it, as in Istio); from anyone else they are ignored, so a workload cannot pass itself off
//! as another address to `ipBlocks` or as another workload in metrics. One narrow use remains: a
//! peer tunnel that dials from its node's address (not a workload's) names its pod in
//! `forwarded`, and telemetry takes that pod's names if, and only if, the pod carries the
//! identity the peer proved. Policy and the app never see the claimed address.

use std::{net::IpAddr, sync::Arc};

use futures::future::BoxFuture;
use mesh_core::hbone::{
    baggage::WorkloadMeta, headers, Accepted, ConnectHandler, ConnectRequest, Rejection,
    ServerCertSelector,
};
use tokio::{net::TcpStream, time::Instant};
use tracing::Instrument;

use super::{copy_with_policy, labels, AppDial, Proxy};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter},
    policy::ConnectionInfo,
    state::{State, Workload},
};

/// The tunnel's own ports, which clients may not target (loop protection).
pub(crate) const RESERVED_PORTS: [u16; 6] = [15000, 15001, 15006, 15008, 15020, 15021];

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
        Box::pin(
            self.clone()
                .inbound(request, AppDial::FromNode)
                .instrument(span),
        )
    }
}

/// The client of an inbound `CONNECT`, as far as this node may believe it.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Its address: the `forwarded` one from a waypoint, else the peer socket's.
    pub ip: IpAddr,
    /// Telemetry names: of the known workload at `ip` (whose identity must be the peer's
    /// unless a waypoint speaks for it); `None` (labels `unknown`) otherwise. A waypoint's
    /// `baggage` is not used: it relays what its own client claimed, and label values chosen
    /// by clients would grow the metrics without bound.
    pub meta: Option<WorkloadMeta>,
}

/// Who the client of `request` is (see the module docs).
pub fn client_of(state: &State, request: &ConnectRequest) -> Client {
    let via_waypoint = state.is_waypoint(&request.peer_identity);
    let peer = request.peer_addr.ip().to_canonical();
    let ip = match via_waypoint {
        true => headers::forwarded_for(&request.headers).map_or(peer, |a| a.ip().to_canonical()),
        false => peer,
    };
    let known = state
        .workload(ip)
        .filter(|w| via_waypoint || w.identity == request.peer_identity)
        .map(|w| w.meta.clone());
    let meta = match via_waypoint {
        true => known,
        // A peer tunnel that dials from its node's address says in `forwarded` which of its pods
        // the connection is for. Telemetry takes that workload's names only when the workload
        // carries the very identity the peer proved; policy and the app never see the claim.
        false => known.or_else(|| {
            let claimed = headers::forwarded_for(&request.headers)?
                .ip()
                .to_canonical();
            state
                .workload(claimed)
                .filter(|w| w.identity == request.peer_identity)
                .map(|w| w.meta.clone())
        }),
    };
    Client { ip, meta }
}

impl Proxy {
    /// Serves one `CONNECT`, reaching the app through `dial`.
    pub(crate) async fn inbound(
        self,
        request: ConnectRequest,
        dial: AppDial,
    ) -> Result<Accepted, Rejection> {
        let start = Instant::now();
        let dst = request.authority;
        let state = self.state();
        let Some(dest) = state.local_workload(dst.ip()).cloned() else {
            return Err(Rejection::BadRequest(format!(
                "{dst} is not a workload on this node"
            )));
        };
        let client = client_of(&state, &request);
        let labels = labels(
            Reporter::Destination,
            client.meta.as_ref(),
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
            client.ip,
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
            .connect_app(&dial, dst, client.ip, None)
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
        dest_ip: dest.ip,
        dest_workload: dest.name.clone(),
        dest_port: port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{convert::state_of, MeshSnapshot};
    use mesh_core::identity::SpiffeId;
    use mesh_core::proto::build;

    /// Pods of shop and ops on node n2; db-0 on this node (n1) behind waypoint data/wp.
    fn state() -> State {
        let pod = |ns: &str, name: &str, sa: &str, ip: &str, node: &str| {
            build::workload(ns, name, sa, ip.parse().unwrap(), node)
        };
        let wp_at = ("10.0.9.9".parse().unwrap(), "n3");
        let (wp_pod, wp) =
            build::waypoint("data", "wp", "wp-sa", wp_at, "10.96.9.9".parse().unwrap());
        let mut db = pod("data", "db-0", "db", "10.0.1.1", "n1");
        db.waypoint = Some(build::waypoint_ref(&wp, 15008));
        let workloads = [
            pod("shop", "web-0", "web", "10.0.0.1", "n2"),
            pod("shop", "web-1", "web", "10.0.0.2", "n2"),
            pod("ops", "admin-0", "admin", "10.0.0.3", "n2"),
            db,
            wp_pod,
        ];
        state_of("n1", &MeshSnapshot::of(workloads, [wp]))
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .parse()
            .unwrap()
    }

    fn request(peer: (&str, &str), peer_ip: &str, headers: &[(&str, &str)]) -> ConnectRequest {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        ConnectRequest {
            authority: "10.0.1.1:8080".parse().unwrap(),
            peer_identity: id(peer.0, peer.1),
            peer_addr: format!("{peer_ip}:40000").parse().unwrap(),
            headers: map,
        }
    }

    const ADMIN_BAGGAGE: &str = "k8s.namespace.name=ops,k8s.deployment.name=admin";

    #[test]
    fn a_workload_peer_cannot_move_its_address_or_borrow_another_identity() {
        let state = state();
        // web-0 (identity web) claims to be admin-0's address, with admin's baggage.
        let lying = [
            ("forwarded", "for=\"10.0.0.3:5555\""),
            ("baggage", ADMIN_BAGGAGE),
        ];
        let client = client_of(&state, &request(("shop", "web"), "10.0.0.1", &lying));
        assert_eq!(
            client.ip,
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "socket address"
        );
        assert_eq!(client.meta.unwrap().workload_name, "web-0");
        // From a node address (not a workload), the claim names no workload of another identity.
        let client = client_of(&state, &request(("shop", "web"), "192.168.0.7", &lying));
        assert_eq!(client.ip, "192.168.0.7".parse::<IpAddr>().unwrap());
        assert!(client.meta.is_none(), "admin's names not taken: {client:?}");
        // A workload address whose identity is not the peer's is not its workload either.
        let client = client_of(&state, &request(("shop", "web"), "10.0.0.3", &[]));
        assert!(client.meta.is_none());
    }

    #[test]
    fn a_node_address_peer_is_named_by_a_claimed_workload_of_its_own_identity_only() {
        let state = state();
        let claim = [("forwarded", "for=\"10.0.0.2:5555\"")];
        let client = client_of(&state, &request(("shop", "web"), "192.168.0.7", &claim));
        assert_eq!(
            client.ip,
            "192.168.0.7".parse::<IpAddr>().unwrap(),
            "policy: socket"
        );
        assert_eq!(
            client.meta.unwrap().workload_name,
            "web-1",
            "telemetry names"
        );
    }

    #[test]
    fn a_fed_waypoint_speaks_for_its_client() {
        let state = state();
        let headers = [
            ("forwarded", "for=\"10.0.0.3:5555\""),
            ("baggage", ADMIN_BAGGAGE),
        ];
        let client = client_of(&state, &request(("data", "wp-sa"), "10.0.9.9", &headers));
        assert_eq!(client.ip, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(client.meta.unwrap().workload_name, "admin-0");
        // A client unknown to this node: the waypoint's relayed baggage is not believed, so
        // its names fold into `unknown`.
        let headers = [
            ("forwarded", "for=\"10.9.9.9:5555\""),
            ("baggage", ADMIN_BAGGAGE),
        ];
        let client = client_of(&state, &request(("data", "wp-sa"), "10.0.9.9", &headers));
        assert_eq!(client.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert!(client.meta.is_none(), "{client:?}");
        // The same headers from an identity that merely looks like a waypoint's are ignored.
        let client = client_of(&state, &request(("data", "wp"), "10.0.9.8", &headers));
        assert_eq!(client.ip, "10.0.9.8".parse::<IpAddr>().unwrap());
        assert!(client.meta.is_none());
    }
}
