//! Same-node joining, mesh-node's side: after the tunnel has checked a same-node connection, the
//! kernel carries its bytes from one app's socket to the tunnel's socket into the other pod.
//!
//! The sockets of one same-node connection: `A` (client app, in its pod), `A_t` (the tunnel's
//! accepted end), `B_t` (the tunnel's connection into the destination pod), `B` (the destination
//! app's accepted end). The tunnel
//! 1. finds `A` joinable ([`Joiner::joinable`]: `sock_ops` gave every redirected client socket a
//!    `JOIN_STATE` entry and put it in `SPLICE` when it was established);
//! 2. binds `B_t`, names the tuple `B` will have ([`Joiner::expect`]), then connects: `sock_ops`
//!    makes `B` joinable in the same way when it is established, before the app can write;
//! 3. puts `A_t` and `B_t` in `SPLICE` and writes `JOIN_CTL[A] = B_t`, `JOIN_CTL[B] = A_t`
//!    ([`Joiner::join`]);
//! 4. keeps copying what reaches `A_t` and `B_t` and reports, after each write, how many bytes of
//!    each app it has forwarded ([`Join::forwarded`]). An app's next write that finds everything
//!    before it forwarded switches that direction to the kernel: `sk_msg` sends it out of the
//!    peer socket, so the other app reads every byte in order. From then on the tunnel only sees
//!    FINs and resets, which it passes on as before;
//! 5. adds the kernel's byte counts to its own ([`Join::kernel_part`]) and removes the entries
//!    ([`Join`]'s drop).
//!
//! The tunnel keeps holding `A_t` and `B_t`, so closing them (policy revoked, a workload left,
//! drain) ends the connection as before: writes redirected to a closed socket fail and the apps
//! see the reset. The programs side and the ordering argument: `mesh-ebpf/src/join.rs`.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use aya::Ebpf;
use mesh_ebpf_common::{family, maps, JoinCtl, JoinState, TupleKey};

use super::{
    bpf_sys::{self, update_flags},
    config::{ip4_abi, ip6_abi},
    map_fd, RedirectError,
};

/// The join maps and the `SPLICE` sockhash, shared by every connection (each call is one
/// `bpf(2)` syscall on a shared descriptor; no lock).
#[derive(Debug)]
pub struct Joiner {
    splice: OwnedFd,
    ctl: OwnedFd,
    state: OwnedFd,
    pending: OwnedFd,
}

impl Joiner {
    /// Descriptors of the maps of the loaded object.
    pub(super) fn open(ebpf: &Ebpf) -> Result<Self, RedirectError> {
        let fd = |name| map_fd(ebpf, name);
        Ok(Self {
            splice: fd(maps::SPLICE)?,
            ctl: fd(maps::JOIN_CTL)?,
            state: fd(maps::JOIN_STATE)?,
            pending: fd(maps::JOIN_PENDING)?,
        })
    }

    /// The key of a socket whose own address is `local` and whose peer is `remote`, as the
    /// programs build it.
    pub fn key(local: SocketAddr, remote: SocketAddr) -> TupleKey {
        let (local_ip, remote_ip) = (local.ip().to_canonical(), remote.ip().to_canonical());
        let (client_ip, tunnel_ip, family) = match (local_ip, remote_ip) {
            (std::net::IpAddr::V4(l), std::net::IpAddr::V4(r)) => {
                ([ip4_abi(l), 0, 0, 0], [ip4_abi(r), 0, 0, 0], family::INET)
            }
            (l, r) => (ip6_abi(v6_octets(l)), ip6_abi(v6_octets(r)), family::INET6),
        };
        TupleKey {
            client_ip,
            tunnel_ip,
            client_port: local.port().to_be(),
            tunnel_port: remote.port().to_be(),
            family,
            _pad: 0,
        }
    }

    /// Whether the app socket `app` (its own key) can be joined: the programs counted its
    /// writes from the start.
    pub fn joinable(&self, app: &TupleKey) -> bool {
        self.progress(app).is_some()
    }

    /// The kernel's progress of app socket `app`.
    pub fn progress(&self, app: &TupleKey) -> Option<JoinState> {
        let mut state = JoinState::default();
        match bpf_sys::map_lookup(self.state.as_fd(), app, &mut state) {
            Ok(true) => Some(state),
            _ => None,
        }
    }

    /// Takes app socket `app` out of joining for good (its connection is not a same-node one,
    /// or will not be joined): out of `SPLICE`, so its writes go back to plain TCP without the
    /// `sk_msg` detour, and its state forgotten.
    pub fn release(&self, app: &TupleKey) {
        let _ = bpf_sys::map_delete(self.splice.as_fd(), app);
        let _ = bpf_sys::map_delete(self.state.as_fd(), app);
    }

    /// Names the key the destination app's socket will have, before the tunnel connects.
    pub fn expect(&self, app: &TupleKey) -> io::Result<()> {
        bpf_sys::map_update(self.pending.as_fd(), app, &1u8, update_flags::ANY)
    }

    /// Forgets an [`Self::expect`]ed key whose connection will not be joined.
    pub fn unexpect(&self, app: &TupleKey) {
        let _ = bpf_sys::map_delete(self.pending.as_fd(), app);
    }

    /// Joins the connection: `client_app` (key of `A`) to the tunnel's `upstream` (`B_t`), and
    /// `server_app` (key of `B`, named by [`Self::expect`]) to the tunnel's `accepted` (`A_t`),
    /// the tunnel having forwarded `forwarded` bytes of each so far (client's, server's).
    /// Refuses (and leaves nothing behind) when a key is taken: the caller copies as before.
    pub fn join(
        self: &Arc<Self>,
        client_app: TupleKey,
        accepted: (BorrowedFd<'_>, TupleKey),
        server_app: TupleKey,
        upstream: (BorrowedFd<'_>, TupleKey),
        forwarded: [u64; 2],
    ) -> io::Result<Join> {
        let mut join = Join {
            joiner: self.clone(),
            apps: [client_app, server_app],
            peers: [upstream.1, accepted.1],
            added: Vec::with_capacity(2),
            armed: 0,
            disarmed: Default::default(),
        };
        for (socket, key) in [accepted, upstream] {
            let fd = socket.as_raw_fd() as u32;
            bpf_sys::map_update(self.splice.as_fd(), &key, &fd, update_flags::NOEXIST)?;
            join.added.push(key);
        }
        for direction in [Direction::ClientToServer, Direction::ServerToClient] {
            join.write_ctl(direction, forwarded[direction.index()])?;
            join.armed += 1;
        }
        Ok(join)
    }
}

fn v6_octets(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Which app's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client app's writes, towards the destination app.
    ClientToServer,
    /// The destination app's writes, back to the client.
    ServerToClient,
}

impl Direction {
    /// 0 for the client's writes, 1 for the server's (the order of [`Join::kernel_part`]).
    pub fn index(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 1,
        }
    }
}

/// A joined same-node connection. Dropping it removes its entries; the sockets themselves leave
/// `SPLICE` when they close.
#[derive(Debug)]
pub struct Join {
    joiner: Arc<Joiner>,
    /// Keys of `A` and `B`.
    apps: [TupleKey; 2],
    /// Where each app's writes go once joined: `B_t` for `A`, `A_t` for `B`.
    peers: [TupleKey; 2],
    /// Tunnel sockets this join put in `SPLICE`.
    added: Vec<TupleKey>,
    /// Directions with a `JOIN_CTL` entry.
    armed: usize,
    /// Directions whose counts proved untrustworthy (see [`Join::forwarded`]).
    disarmed: [AtomicBool; 2],
}

impl Join {
    fn write_ctl(&self, direction: Direction, forwarded: u64) -> io::Result<()> {
        let i = direction.index();
        let ctl = JoinCtl {
            peer: self.peers[i],
            forwarded,
        };
        bpf_sys::map_update(
            self.joiner.ctl.as_fd(),
            &self.apps[i],
            &ctl,
            update_flags::ANY,
        )
    }

    /// The tunnel has forwarded `total` bytes of `direction`'s app so far (all of them written
    /// to the other side). Called after every write; a failed update only keeps the direction
    /// on the tunnel.
    ///
    /// The tunnel can never have read more than the app wrote through `sk_msg`, unless the app
    /// wrote bytes the program did not see (data queued before the socket was established, as
    /// TCP Fast Open does). Then the counts cannot be trusted and the direction stays on the
    /// tunnel for good.
    pub fn forwarded(&self, direction: Direction, total: u64) {
        let i = direction.index();
        if self.disarmed[i].load(Ordering::Relaxed) {
            return;
        }
        match self.joiner.progress(&self.apps[i]) {
            Some(state) if state.joined != 0 => {}
            Some(state) if total <= state.sent_before => {
                let _ = self.write_ctl(direction, total);
            }
            _ => {
                self.disarmed[i].store(true, Ordering::Relaxed);
                let _ = bpf_sys::map_delete(self.joiner.ctl.as_fd(), &self.apps[i]);
                tracing::debug!(
                    ?direction,
                    total,
                    "bytes the programs did not count: this direction stays on the tunnel"
                );
            }
        }
    }

    /// What the kernel did for each direction (client to server, server to client): whether it
    /// switched, and the bytes it carried since.
    pub fn kernel_part(&self) -> [(bool, u64); 2] {
        [0, 1].map(|i| {
            self.joiner
                .progress(&self.apps[i])
                .map_or((false, 0), |state| (state.joined != 0, state.joined_bytes))
        })
    }
}

impl Drop for Join {
    fn drop(&mut self) {
        let joiner = &self.joiner;
        // Control first: a write that still arrives goes by TCP to the closing tunnel socket.
        for app in &self.apps[..self.armed] {
            let _ = bpf_sys::map_delete(joiner.ctl.as_fd(), app);
        }
        for app in &self.apps {
            let _ = bpf_sys::map_delete(joiner.state.as_fd(), app);
        }
        // A setup that failed half way takes its tunnel socket out again; otherwise the
        // sockets leave `SPLICE` as they close. The `JOIN_PENDING` entry ages out (LRU): a
        // later socket with the same tuple would only be made joinable, never joined.
        if self.armed < 2 {
            for key in &self.added {
                let _ = bpf_sys::map_delete(joiner.splice.as_fd(), key);
            }
        }
    }
}
