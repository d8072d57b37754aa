//! Same-node direct connections, the tunnel's side: what it admits, and how it keeps account of
//! connections it never carries.
//!
//! When the same-node path ([`super::same_node`]) has checked a connection that the client
//! dialled by the destination pod's own address, it admits the pair
//! ([`crate::redirect::direct::Direct::admit`]): the pair's next connects go straight to the
//! destination pod (no accept, no second connect, no copy). The kernel reports each of them
//! here, opened and closed ([`watch`]), and the tunnel treats them like the connections it
//! carries:
//! - on open, it resolves both workloads from the mesh view the way the same-node path would,
//!   evaluates the destination's policy again, and holds the connection under the same guards
//!   (policy changes, either workload leaving). A connection the view no longer admits is
//!   destroyed at once;
//! - on a revocation, it destroys the client's socket (sock_diag `SOCK_DESTROY`: both apps see
//!   a reset);
//! - on close, it records metrics and the access log line for both reporters with the kernel's
//!   byte counts, `connection_security_policy="none"` as on the same-node path.
//!
//! Reports can be lost only when the ring is full (counted); a connection whose close report
//! was lost is found by a periodic check against the kernel's table and recorded then.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Duration,
};

use mesh_core::drain::DrainWatch;
use mesh_ebpf_common::{direct_event, DirectEvent, TupleKey};
use tokio::{sync::oneshot, time::Instant};

use super::{
    inbound::connection_info,
    same_node::{reporters, LocalTarget},
    Proxy,
};
use crate::{
    metrics::{Outcome, TcpLabels},
    policy::Revocation,
    redirect::{
        config::ip_from_abi,
        direct::{Direct, DirectEvents},
    },
    route::{self, Route},
};

/// How often live direct connections are checked against the kernel's table (a close report
/// lost to a full ring).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A direct connection the kernel reported open.
struct Live {
    opened: Instant,
    labels: [TcpLabels; 2],
    revoked: Arc<OnceLock<Revocation>>,
    /// Dropping it ends the connection's guard task.
    _stop: oneshot::Sender<()>,
}

/// Follows the kernel's reports of direct connections until `drain`.
pub async fn watch(
    proxy: Proxy,
    direct: Arc<Direct>,
    mut events: DirectEvents,
    mut drain: DrainWatch,
) {
    let mut live: HashMap<TupleKey, Live> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            read = events.next_batch(|event| batch.push(event)) => {
                if let Err(error) = read {
                    tracing::error!(%error, "same-node direct connection reports cannot be read; new pairs are no longer admitted");
                    direct.stop_admitting();
                    return;
                }
            }
            _ = sweep.tick() => sweep_lost(&proxy, &direct, &mut live),
            _ = drain.signaled() => return end_all(&proxy, &direct, live).await,
        }
        for event in batch.drain(..) {
            match event.kind {
                direct_event::OPENED => opened(&proxy, &mut live, &event),
                direct_event::CLOSED => closed(&proxy, &mut live, &event),
                _ => {}
            }
        }
    }
}

/// The client's and the destination's addresses of a reported tuple.
fn addresses(tuple: &TupleKey) -> (SocketAddr, SocketAddr) {
    let ip = |words| ip_from_abi(words, tuple.family);
    (
        SocketAddr::new(ip(tuple.client_ip), u16::from_be(tuple.client_port)),
        SocketAddr::new(ip(tuple.tunnel_ip), u16::from_be(tuple.tunnel_port)),
    )
}

impl Proxy {
    /// The same-node target `client` -> `dest` resolves to in the current view, with the
    /// source workload, when the pair still qualifies for the same-node path.
    fn direct_target(
        &self,
        client: IpAddr,
        dest: SocketAddr,
    ) -> Option<(Arc<crate::state::Workload>, LocalTarget)> {
        let state = self.state();
        let source = state.local_workload(client)?.clone();
        let Route::Hbone(hop) = route::choose(&state, dest) else {
            return None;
        };
        let target = self.same_node_target(&state, &source, &hop)?;
        (target.addr() == dest).then_some((source, target))
    }

    /// Ends the direct connection `client` -> `dest` (a blocking netlink request, run off the
    /// async threads).
    async fn destroy_direct(&self, client: SocketAddr, dest: SocketAddr) {
        let Some(net) = self.pods.get(client.ip()) else {
            tracing::warn!(%client, %dest, "direct connection to end, but its client pod is gone");
            return;
        };
        let destroyed = tokio::task::spawn_blocking(move || net.destroy_tcp(client, dest)).await;
        match destroyed {
            Ok(Ok(())) => tracing::debug!(%client, %dest, "direct connection ended"),
            // Already closed: nothing to end.
            Ok(Err(error)) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Ok(Err(error)) => {
                tracing::error!(%client, %dest, %error, "cannot end a revoked same-node direct connection")
            }
            Err(error) => tracing::error!(%error, "ending a direct connection panicked"),
        }
    }
}

fn opened(proxy: &Proxy, live: &mut HashMap<TupleKey, Live>, event: &DirectEvent) {
    let (client, dest) = addresses(&event.tuple);
    let Some((source, target)) = proxy.direct_target(client.ip(), dest) else {
        tracing::info!(%client, %dest, "direct connection no longer fits the mesh view; ending it");
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.destroy_direct(client, dest).await });
        return;
    };
    let dest_workload = target.dest();
    let both = reporters(&source, dest_workload);
    let info = connection_info(
        Some(source.identity.clone()),
        source.ip,
        dest_workload,
        dest.port(),
    );
    let mut dest_guard = match proxy.authz.admit(info) {
        Ok(guard) => guard,
        Err(decision) => {
            let elapsed = Duration::from_nanos(event.elapsed_ns);
            let outcome = Outcome::Failed(format!("{decision:?}"));
            proxy.record_both(both, 0, 0, elapsed, outcome);
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.destroy_direct(client, dest).await });
            return;
        }
    };
    let mut source_guard = proxy.authz.track_outbound(source.ip, source.name.clone());
    for labels in &both {
        proxy.metrics.opened(labels);
    }
    let revoked = Arc::new(OnceLock::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let task_proxy = proxy.clone();
    let task_revoked = revoked.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = dest_guard.revoked() => reason,
            reason = source_guard.revoked() => reason,
            _ = stopped => return,
        };
        tracing::info!(%client, %dest, %reason, "same-node direct connection revoked");
        let _ = task_revoked.set(reason);
        task_proxy.destroy_direct(client, dest).await;
    });
    let entry = Live {
        opened: Instant::now(),
        labels: both,
        revoked,
        _stop: stop,
    };
    live.insert(event.tuple, entry);
}

fn closed(proxy: &Proxy, live: &mut HashMap<TupleKey, Live>, event: &DirectEvent) {
    let elapsed = Duration::from_nanos(event.elapsed_ns);
    let Some(entry) = live.remove(&event.tuple) else {
        // Never reported open: the connect failed (refused, timed out), or was ended at open.
        let (client, dest) = addresses(&event.tuple);
        if let Some((source, target)) = proxy.direct_target(client.ip(), dest) {
            let both = reporters(&source, target.dest());
            let outcome = Outcome::Failed("connection not established".to_string());
            proxy.record_both(both, 0, 0, elapsed, outcome);
        }
        return;
    };
    let outcome = match entry.revoked.get() {
        Some(reason) => Outcome::Revoked(reason.clone()),
        None => Outcome::Completed,
    };
    proxy.metrics.same_node_direct_finished();
    proxy.record_both(entry.labels, event.sent, event.received, elapsed, outcome);
}

/// The node tunnel is stopping: no more admissions, and the direct connections it accounts for
/// end with it, as the connections it carries do (none outlives the process that enforces its
/// policy).
async fn end_all(proxy: &Proxy, direct: &Direct, live: HashMap<TupleKey, Live>) {
    direct.stop_admitting();
    if live.is_empty() {
        return;
    }
    tracing::info!(
        connections = live.len(),
        "draining: ending same-node direct connections"
    );
    for tuple in live.keys() {
        let (client, dest) = addresses(tuple);
        proxy.destroy_direct(client, dest).await;
    }
}

/// Records the live connections the kernel no longer holds (their close report was lost), with
/// no byte counts.
fn sweep_lost(proxy: &Proxy, direct: &Direct, live: &mut HashMap<TupleKey, Live>) {
    let lost: Vec<TupleKey> = live
        .iter()
        .filter(|(tuple, entry)| entry.opened.elapsed() >= SWEEP_INTERVAL && !direct.is_live(tuple))
        .map(|(tuple, _)| *tuple)
        .collect();
    for tuple in lost {
        if let Some(entry) = live.remove(&tuple) {
            let (client, dest) = addresses(&tuple);
            tracing::warn!(%client, %dest, "same-node direct connection closed without a report (ring full); recorded without byte counts");
            proxy.metrics.same_node_direct_finished();
            proxy.record_both(
                entry.labels,
                0,
                0,
                entry.opened.elapsed(),
                Outcome::Completed,
            );
        }
    }
}
