//! Same node: a captured connection to a pod this tunnel serves in-pod, checked and joined here.
//!
//! Both ends are pods of this node, so the bytes never leave the kernel the tunnel already
//! trusts; HBONE to itself would encrypt them against no one. What HBONE proves is kept:
//! the client's identity is the local workload whose address the kernel gave the captured
//! socket (a pod cannot choose it), the destination's inbound policy runs with that identity
//! and the client's address exactly as the destination's tunnel would, the app sees the
//! client's address (transparent connect inside the destination pod), live connections are
//! closed when policy changes or either end leaves the mesh, and both the source and the
//! destination report the connection (`connection_security_policy="none"`: no TLS on it).
//!
//! Taken only when both workloads allow it (mesh-control's `same_node_plaintext`: the mesh
//! setting and their namespaces), when the destination is not behind a waypoint and is served
//! in-pod here, and never for the tunnel's own ports. docs/same-node.md.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpStream, time::Instant};

use super::{inbound::connection_info, inbound::RESERVED_PORTS, labels, AppDial, Proxy};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter, TcpLabels},
    pod_net::PodNet,
    policy::ConnectionGuard,
    route::HboneRoute,
    state::{State, Workload},
};

/// A destination the same-node path may reach.
pub(super) struct LocalTarget {
    dest: Arc<Workload>,
    net: Arc<PodNet>,
    addr: SocketAddr,
}

impl Proxy {
    /// Where `hop` (chosen in `state`) leads when it may skip HBONE: straight to a pod of this
    /// node that this tunnel serves in-pod, both workloads allowing it.
    pub(super) fn same_node_target(
        &self,
        state: &State,
        source: &Workload,
        hop: &HboneRoute,
    ) -> Option<LocalTarget> {
        if hop.via_waypoint || !source.same_node_plaintext {
            return None;
        }
        let dest = hop.workload.clone()?;
        let addr = hop.authority;
        let local = dest.node == state.node && dest.ip == addr.ip();
        if !local || !dest.same_node_plaintext {
            return None;
        }
        let net = self.pods.get(dest.ip)?;
        Some(LocalTarget { dest, net, addr })
    }

    /// Checks the destination's policy for `source`, connects to the app inside its pod with
    /// the source's address, and copies until either side ends or a guard is revoked.
    pub(super) async fn same_node(
        &self,
        client: &mut TcpStream,
        source_guard: &mut ConnectionGuard,
        source: &Arc<Workload>,
        target: LocalTarget,
        start: Instant,
    ) {
        let LocalTarget { dest, net, addr } = target;
        let reported = |reporter| {
            labels(
                reporter,
                Some(&source.meta),
                Some(source.identity.to_string()),
                Some(&dest),
                false,
            )
        };
        let both = [reported(Reporter::Source), reported(Reporter::Destination)];
        let fail = |reason: String| {
            for labels in &both {
                self.metrics.record(&ConnectionRecord {
                    labels: labels.clone(),
                    sent: 0,
                    received: 0,
                    duration: start.elapsed(),
                    outcome: Outcome::Failed(reason.clone()),
                });
            }
        };
        if RESERVED_PORTS.contains(&addr.port()) {
            return fail(format!("port {} is reserved", addr.port()));
        }
        let info = connection_info(Some(source.identity.clone()), source.ip, &dest, addr.port());
        let mut dest_guard = match self.authz.admit(info) {
            Ok(guard) => guard,
            Err(decision) => return fail(format!("{decision:?}")),
        };
        if !self.still_local(dest.ip, &dest.name) {
            return fail(format!("{addr}: workload {} left the mesh", dest.name));
        }
        let mut upstream = match self
            .connect_app(&AppDial::InPod(net), addr, source.ip)
            .await
        {
            Ok(upstream) => upstream,
            Err(error) => return fail(error),
        };
        for labels in &both {
            self.metrics.opened(labels);
        }
        let (sent, received, outcome) =
            copy_guarded(client, &mut upstream, source_guard, &mut dest_guard).await;
        let [source_labels, dest_labels]: [TcpLabels; 2] = both;
        self.metrics.record(&ConnectionRecord {
            labels: source_labels,
            sent,
            received,
            duration: start.elapsed(),
            outcome: outcome.clone(),
        });
        // Both reporters count the same bytes in the same directions, as over HBONE.
        self.metrics.record(&ConnectionRecord {
            labels: dest_labels,
            sent,
            received,
            duration: start.elapsed(),
            outcome,
        });
    }
}

/// [`super::copy_with_policy`] under two guards: the source's (it left the mesh) and the
/// destination's (policy changed, it left).
async fn copy_guarded(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    source_guard: &mut ConnectionGuard,
    dest_guard: &mut ConnectionGuard,
) -> (u64, u64, Outcome) {
    tokio::select! {
        done = super::copy_with_policy(client, upstream, Some(dest_guard)) => done,
        reason = source_guard.revoked() => (0, 0, Outcome::Revoked(reason)),
    }
}
