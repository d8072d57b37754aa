//! Inbound plaintext (15006): connections to a local workload that did not come over HBONE.
//! STRICT refuses them; PERMISSIVE admits them subject to policy (with no peer identity, so
//! principal- and namespace-based ALLOW rules cannot match), with the client's real address.
//!
//! In-pod, `sk_lookup` steers every such connection to the pod's plaintext listener without
//! rewriting anything, so the accepted socket's local address is the original destination and
//! its peer the real client (a node process or hostNetwork pod shows the node's address).

use std::net::SocketAddr;

use tokio::{net::TcpStream, time::Instant};

use super::{
    copy_with_policy,
    inbound::{connection_info, RESERVED_PORTS},
    labels, AppDial, Proxy,
};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter},
    state::MtlsMode,
};

impl Proxy {
    /// Handles one connection accepted on an inbound plaintext listener, addressed to `dst`,
    /// reaching the app through `dial`.
    pub async fn plaintext(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        dial: AppDial,
    ) {
        let start = Instant::now();
        let (peer, dst) = (canonical(peer), canonical(dst));
        let state = self.state();
        let Some(dest) = state.local_workload(dst.ip()).cloned() else {
            tracing::debug!(%peer, %dst, "plaintext to non-local destination, closing");
            return;
        };
        let source = state.workload(peer.ip()).cloned();
        let labels = labels(
            Reporter::Destination,
            source.as_deref().map(|w| &w.meta),
            None,
            Some(&dest),
            false,
        );
        let fail = |reason: String| {
            self.metrics.record(&ConnectionRecord {
                labels: labels.clone(),
                sent: 0,
                received: 0,
                duration: start.elapsed(),
                outcome: Outcome::Failed(reason),
            });
        };
        if RESERVED_PORTS.contains(&dst.port()) {
            // The tunnel's own ports: dialling `<pod>:15006` from inside the pod would land on
            // this listener again, a loop.
            return fail(format!("port {} is reserved", dst.port()));
        }
        if state.mtls_mode_for(&dest, dst.port()) == MtlsMode::Strict {
            return fail(format!(
                "plaintext refused: {}/{} port {} is STRICT",
                dest.namespace,
                dest.name,
                dst.port()
            ));
        }
        let info = connection_info(None, peer.ip(), &dest, dst.port());
        let mut guard = match self.authz.admit(info) {
            Ok(guard) => guard,
            Err(decision) => return fail(format!("denied: {decision:?}")),
        };
        if !self.still_local(dest.ip, &dest.name) {
            return fail(format!("workload {} left the mesh", dest.name));
        }
        let mut upstream = match self.connect_app(&dial, dst, peer.ip(), None).await {
            Ok(upstream) => upstream,
            Err(reason) => return fail(reason),
        };
        self.metrics.opened(&labels);
        let (sent, received, outcome) =
            copy_with_policy(&mut stream, &mut upstream, Some(&mut guard)).await;
        self.metrics.record(&ConnectionRecord {
            labels,
            sent,
            received,
            duration: start.elapsed(),
            outcome,
        });
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack listeners) as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
