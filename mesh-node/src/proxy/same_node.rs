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
//!
//! With eBPF joining ([`crate::redirect::join`]) the bytes of a busy connection then stop
//! crossing the tunnel: after a few writes ([`JoinSlot`]), and once it has forwarded what each
//! app wrote before, the kernel writes each app's bytes straight out of the tunnel's socket to
//! the other pod ([`copy_joined`]). Without it (no redirect, a key taken, a client socket that
//! predates the programs) the tunnel copies.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

use mesh_ebpf_common::TupleKey;
use tokio::{net::TcpStream, time::Instant};

use super::{inbound::connection_info, inbound::RESERVED_PORTS, labels, AppDial, Proxy};
use crate::{
    metrics::{ConnectionRecord, Outcome, Reporter, TcpLabels},
    pod_net::PodNet,
    policy::ConnectionGuard,
    redirect::join::{Direction, Join, Joiner},
    route::HboneRoute,
    state::{State, Workload},
};

/// A destination the same-node path may reach.
pub(super) struct LocalTarget {
    dest: Arc<Workload>,
    net: Arc<PodNet>,
    addr: SocketAddr,
    /// The admission epoch read before the view this target came from, when the client
    /// dialled this very address: the pair may then be admitted for direct connections
    /// ([`super::direct`]).
    admit: Option<u64>,
}

impl LocalTarget {
    /// The destination pod's address and port.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The destination workload.
    pub(super) fn dest(&self) -> &Workload {
        &self.dest
    }

    /// Admits the pair for direct connections when the client dialled the destination's own
    /// address and `epoch` (read before the view `self` came from) is known.
    pub(super) fn admitting(mut self, dialled: SocketAddr, epoch: Option<u64>) -> Self {
        self.admit = epoch.filter(|_| dialled == self.addr);
        self
    }
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
        Some(LocalTarget {
            dest,
            net,
            addr,
            admit: None,
        })
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
        let LocalTarget {
            dest,
            net,
            addr,
            admit,
        } = target;
        let both = reporters(source, &dest);
        let fail = |reason: String| {
            self.record_both(both.clone(), 0, 0, start.elapsed(), Outcome::Failed(reason));
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
        let joiner = self.joiner.get().filter(|joiner| joinable(joiner, client));
        let expected = OnceLock::new();
        let announce = |local: SocketAddr| -> io::Result<()> {
            let Some(joiner) = joiner else { return Ok(()) };
            let app = Joiner::key(addr, local);
            joiner.expect(&app)?;
            let _ = expected.set((app, local));
            Ok(())
        };
        let dial = AppDial::InPod(net);
        let mut upstream = match self
            .connect_app(&dial, addr, source.ip, Some(&announce))
            .await
        {
            Ok(upstream) => upstream,
            Err(error) => {
                forget(joiner, &expected);
                return fail(error);
            }
        };
        for labels in &both {
            self.metrics.opened(labels);
        }
        if let Some(epoch) = admit {
            self.admit_direct(source, addr, epoch);
        }
        let plan = joiner.and_then(|joiner| {
            let (server_app, upstream_local) = *expected.get()?;
            Some(JoinPlan {
                joiner: joiner.clone(),
                server_app,
                upstream_local,
            })
        });
        if plan.is_none() {
            self.release_join(client);
        }
        let (sent, received, outcome, join) = match plan {
            Some(plan) => {
                let slot = JoinSlot::later(plan);
                let copy = copy_joined(client, &upstream, &slot);
                let (sent, received, outcome) = guarded(copy, source_guard, &mut dest_guard).await;
                (sent, received, outcome, slot.into_join())
            }
            None => {
                let copy = copy_guarded(client, &mut upstream, source_guard, &mut dest_guard);
                let (sent, received, outcome) = copy.await;
                (sent, received, outcome, None)
            }
        };
        let [up, down] = join.as_ref().map_or([(false, 0); 2], Join::kernel_part);
        self.metrics.same_node_finished((up.0, down.0));
        let (sent, received) = match outcome {
            Outcome::Completed => (sent + up.1, received + down.1),
            _ => (sent, received),
        };
        // The join's entries go while its sockets are still open (their keys are still ours).
        drop(join);
        // Both reporters count the same bytes in the same directions, as over HBONE.
        self.record_both(both, sent, received, start.elapsed(), outcome);
    }
}

/// The labels of a same-node connection from `source` to `dest` for its two reporters (source,
/// destination): no TLS on it.
pub(super) fn reporters(source: &Workload, dest: &Workload) -> [TcpLabels; 2] {
    let reported = |reporter| {
        labels(
            reporter,
            Some(&source.meta),
            Some(source.identity.to_string()),
            Some(dest),
            false,
        )
    };
    [reported(Reporter::Source), reported(Reporter::Destination)]
}

impl Proxy {
    /// Records a finished same-node connection once for each of its two reporters, with the
    /// same bytes in the same directions.
    pub(super) fn record_both(
        &self,
        labels: [TcpLabels; 2],
        sent: u64,
        received: u64,
        duration: std::time::Duration,
        outcome: Outcome,
    ) {
        for labels in labels {
            self.metrics.record(&ConnectionRecord {
                labels,
                sent,
                received,
                duration,
                outcome: outcome.clone(),
            });
        }
    }

    /// Lets `source`'s next connects to `dest` go straight there ([`super::direct`]), once this
    /// connection passed every check of the same-node path.
    fn admit_direct(&self, source: &Workload, dest: SocketAddr, epoch: u64) {
        let Some(direct) = self.direct.get() else {
            return;
        };
        let Some(net) = self.pods.get(source.ip) else {
            return;
        };
        let admitted = net
            .cookie()
            .and_then(|cookie| direct.admit(cookie, source.ip, dest, epoch));
        if let Err(error) = admitted {
            tracing::debug!(%dest, workload = %source.name, %error, "same-node pair not admitted for direct connections");
        }
    }

    /// Takes the captured client socket behind `accepted` out of same-node joining.
    pub(super) fn release_join(&self, accepted: &TcpStream) {
        if let (Some(joiner), Some(client)) = (self.joiner.get(), client_key(accepted)) {
            joiner.release(&client);
        }
    }
}

/// The key of the captured client socket behind the tunnel's `accepted` one (its peer).
fn client_key(accepted: &TcpStream) -> Option<TupleKey> {
    Some(Joiner::key(
        accepted.peer_addr().ok()?,
        accepted.local_addr().ok()?,
    ))
}

/// Whether the captured client socket behind `accepted` had its writes counted from the start.
fn joinable(joiner: &Joiner, accepted: &TcpStream) -> bool {
    client_key(accepted).is_some_and(|client| joiner.joinable(&client))
}

/// Drops the expectation of a connection that was not made.
fn forget(joiner: Option<&Arc<Joiner>>, expected: &OnceLock<(TupleKey, SocketAddr)>) {
    if let (Some(joiner), Some((app, _))) = (joiner, expected.get()) {
        joiner.unexpect(app);
    }
}

/// What joining a same-node connection needs besides its two tunnel sockets.
pub struct JoinPlan {
    /// The join maps.
    pub joiner: Arc<Joiner>,
    /// Key of the destination app's socket (named by [`Joiner::expect`]).
    pub server_app: TupleKey,
    /// The tunnel's own address on its connection into the destination pod.
    pub upstream_local: SocketAddr,
}

/// Joining starts once the tunnel has written this many times for a connection...
const JOIN_AFTER_WRITES: u32 = 3;
/// ...or forwarded this many bytes of one direction. A request and its answer on a fresh
/// connection stay below both, so short connections never pay for the join's setup
/// (sockhash inserts, map writes and reads); long or busy ones join early.
const JOIN_AFTER_BYTES: u64 = 64 * 1024;

/// A same-node connection's join: not made yet ([`JoinSlot::later`]), made, or refused.
pub struct JoinSlot {
    plan: Option<JoinPlan>,
    join: OnceLock<Join>,
    /// [`Self::make`] ran (it tries once).
    attempted: AtomicBool,
    writes: AtomicU32,
    /// Bytes the tunnel forwarded so far, client's and server's.
    totals: [AtomicU64; 2],
}

impl JoinSlot {
    /// A join made once the connection proves busy enough.
    pub fn later(plan: JoinPlan) -> Self {
        Self::new(Some(plan), OnceLock::new())
    }

    /// A join already made.
    pub fn made(join: Join) -> Self {
        Self::new(None, OnceLock::from(join))
    }

    fn new(plan: Option<JoinPlan>, join: OnceLock<Join>) -> Self {
        Self {
            plan,
            join,
            attempted: AtomicBool::new(false),
            writes: AtomicU32::new(0),
            totals: Default::default(),
        }
    }

    /// The join, if it was made.
    pub fn get(&self) -> Option<&Join> {
        self.join.get()
    }

    /// The join, if it was made.
    pub fn into_join(self) -> Option<Join> {
        self.join.into_inner()
    }

    /// The tunnel wrote `total` bytes of `way` so far: tell the join, or make it when due.
    fn forwarded(&self, way: Direction, total: u64, sockets: [&TcpStream; 2]) {
        let i = way.index();
        // Published before the join is looked at: a join made meanwhile starts from it.
        self.totals[i].store(total, Ordering::SeqCst);
        if let Some(join) = self.join.get() {
            return join.forwarded(way, total);
        }
        let writes = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if writes >= JOIN_AFTER_WRITES || total >= JOIN_AFTER_BYTES {
            self.make(sockets);
        }
    }

    fn make(&self, [accepted, upstream]: [&TcpStream; 2]) {
        let Some(plan) = &self.plan else { return };
        if self.attempted.swap(true, Ordering::SeqCst) {
            return;
        }
        let attempt = || -> io::Result<Join> {
            let (client, tunnel) = (accepted.peer_addr()?, accepted.local_addr()?);
            let dest = upstream.peer_addr()?;
            let forwarded = [0, 1].map(|i| self.totals[i].load(Ordering::SeqCst));
            plan.joiner.join(
                Joiner::key(client, tunnel),
                (accepted.as_fd(), Joiner::key(tunnel, client)),
                plan.server_app,
                (upstream.as_fd(), Joiner::key(plan.upstream_local, dest)),
                forwarded,
            )
        };
        match attempt() {
            Ok(join) => {
                let _ = self.join.set(join);
            }
            Err(error) => {
                tracing::debug!(%error, "same-node connection not joined; the tunnel copies it");
                if let Some(client) = client_key(accepted) {
                    plan.joiner.release(&client);
                }
                plan.joiner.release(&plan.server_app);
            }
        }
    }
}

/// Forwards what still reaches the tunnel on a joined connection (each app's writes from before
/// its direction switched, then FIN or reset), reporting each direction's progress to the
/// kernel after every write so the direction can switch. Half-closes are passed on. Returns the
/// bytes of each direction the tunnel forwarded ([`Join::kernel_part`] has the kernel's).
pub async fn copy_joined(
    client: &TcpStream,
    upstream: &TcpStream,
    join: &JoinSlot,
) -> io::Result<(u64, u64)> {
    let sockets = [client, upstream];
    let up = forward(client, upstream, join, Direction::ClientToServer, sockets);
    let down = forward(upstream, client, join, Direction::ServerToClient, sockets);
    tokio::try_join!(up, down)
}

/// Read size of [`forward`]; the buffer exists only while bytes are waiting.
const CHUNK: usize = 64 * 1024;

async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    join: &JoinSlot,
    way: Direction,
    sockets: [&TcpStream; 2],
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buffer.is_empty() {
            buffer = vec![0; CHUNK];
        }
        let read = match from.try_read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                buffer = Vec::new();
                continue;
            }
            Err(error) => return Err(error),
        };
        if read == 0 {
            nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write)?;
            return Ok(total);
        }
        write_all(to, &buffer[..read]).await?;
        total += read as u64;
        join.forwarded(way, total, sockets);
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(written) => data = &data[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A joined copy under two guards, as [`copy_guarded`].
async fn guarded(
    copy: impl std::future::Future<Output = io::Result<(u64, u64)>>,
    source_guard: &mut ConnectionGuard,
    dest_guard: &mut ConnectionGuard,
) -> (u64, u64, Outcome) {
    tokio::select! {
        done = copy => match done {
            Ok((sent, received)) => (sent, received, Outcome::Completed),
            Err(error) => (0, 0, Outcome::Failed(format!("copy: {error}"))),
        },
        reason = dest_guard.revoked() => (0, 0, Outcome::Revoked(reason)),
        reason = source_guard.revoked() => (0, 0, Outcome::Revoked(reason)),
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
