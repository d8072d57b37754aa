//! The tunnel's side of a pod's network namespace: connecting to the app from inside the pod
//! with the client's address, and the routing that brings the app's answers back.
//!
//! Istio ambient (in-pod mode) connects to the app with the original client address; so does
//! Weft. For each connection it admits, the tunnel creates a socket inside the pod's namespace
//! (the thread enters the namespace for the `socket()` call only, [`socket_in`]), makes it
//! transparent (`IP_TRANSPARENT`), binds it to the client's address and connects to the app over
//! the pod's loopback. The app sees the client's address as its peer.
//!
//! The socket is bound to `lo` (`SO_BINDTODEVICE`): a pod's own address routes through the
//! device that holds it (`eth0`), and the inbound `sk_lookup` program, which sees that device,
//! would take the tunnel's connection for a client's and steer it back to the tunnel. Bound to
//! `lo`, the route comes from the reply table (`local default dev lo`) and the program lets it
//! through to the app. Without a reply mark there is no reply table: the tunnel then connects
//! from the pod's own address, which the program also lets through (source = destination).
//!
//! Return path, without iptables ([`prepare`], once per pod): the tunnel's socket carries
//! `SO_MARK` = the reply mark, so its SYN does too; with `net.ipv4.tcp_fwmark_accept = 1` the
//! app's accepted socket takes that mark; a policy rule sends packets with the mark to a table
//! whose only route delivers every destination locally. So the app's answers to the client's
//! address reach the tunnel's socket instead of leaving the pod. Nothing else in the pod is
//! marked (marks are cleared when packets cross namespaces), so its other traffic is untouched.
//!
//! Outbound, the tunnel dials peers' HBONE ports from inside the source pod too
//! ([`PodNet::connect_out`], found by address in [`PodNets`]), so the peer tunnel, its policy
//! and the destination app see the source pod's address, not the node's.

use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{Arc, OnceLock, RwLock},
};

use futures::future::BoxFuture;
use mesh_core::hbone::Dialer;
use nix::sys::socket::sockopt;
use tokio::net::{TcpSocket, TcpStream};

use crate::{netlink::Netlink, socket::set_mark};

/// Routing table of the return path inside pods (unused by anything else there).
pub const REPLY_TABLE: u32 = 15_006;
/// Priority of the return-path rule: before the main table (32766).
pub const REPLY_RULE_PRIORITY: u32 = 100;
/// `net.ipv4.tcp_fwmark_accept` of the calling thread's namespace (also governs IPv6 TCP).
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";
/// `net.ipv4.tcp_tw_reuse` of the calling thread's namespace (also governs IPv6 TCP).
const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
const IPV6_TRANSPARENT: libc::c_int = 75;

/// Sets up the return path of transparent connections in the calling thread's network
/// namespace (a pod's) for `family`'s addresses, with reply mark `mark`. Idempotent.
///
/// Also sets `net.ipv4.tcp_tw_reuse = 1` there. The connect redirect sends every captured
/// connection of the pod to one address, the node tunnel's outbound listener, so all of them
/// share one set of 4-tuples (pod address, any port, listener address and port). A client that
/// closes first (most HTTP/1.0-style clients) leaves each in TIME_WAIT for 60 s: past ~28,000
/// such connections a minute (470 a second), `connect()` spins through the port range and then
/// fails. With reuse, a TIME_WAIT tuple is taken again after a second, guarded by TCP
/// timestamps (the kernel's default for loopback, which these connections to the node are
/// not). docs/ebpf-datapath.md has the measurement.
pub fn prepare(ip: IpAddr, mark: u32) -> io::Result<()> {
    std::fs::write(FWMARK_ACCEPT, b"1")
        .map_err(|e| io::Error::new(e.kind(), format!("writing {FWMARK_ACCEPT}: {e}")))?;
    std::fs::write(TW_REUSE, b"1")
        .map_err(|e| io::Error::new(e.kind(), format!("writing {TW_REUSE}: {e}")))?;
    let family = family_of(ip);
    let mut netlink = Netlink::open()?;
    netlink
        .add_fwmark_rule(family, mark, REPLY_TABLE, REPLY_RULE_PRIORITY)
        .map_err(|e| context(e, "adding the reply fwmark rule"))?;
    netlink
        .add_local_default_route(family, REPLY_TABLE)
        .map_err(|e| context(e, "adding the reply table's local route"))
}

/// A local pod's network namespace, held open while the tunnel serves the pod.
#[derive(Debug)]
pub struct PodNet {
    netns: File,
    reply_mark: u32,
    mark: u32,
    cookie: OnceLock<u64>,
}

impl PodNet {
    /// The pod whose namespace `netns` is; connections to its app are marked `reply_mark`.
    pub fn new(netns: File, reply_mark: u32) -> Self {
        Self {
            netns,
            reply_mark,
            mark: 0,
            cookie: OnceLock::new(),
        }
    }

    /// Marks the tunnel's outgoing connections from the pod with `mark` (the tunnel mark, which
    /// the eBPF programs never redirect).
    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = mark;
        self
    }

    /// Connects to `dst` (a peer tunnel's HBONE port) from inside the pod, with the pod's own
    /// address as the kernel picks it, as the pod itself would. The caller bounds the wait.
    pub async fn connect_out(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket_in(self.netns.as_fd(), dst)?;
        set_mark(&socket, self.mark)?;
        connect(socket, None, dst, None).await
    }

    /// The namespace.
    pub fn netns(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// The namespace's cookie, as the eBPF programs see it (read once).
    pub fn cookie(&self) -> io::Result<u64> {
        if let Some(cookie) = self.cookie.get() {
            return Ok(*cookie);
        }
        let cookie = crate::redirect::netns::cookie_of_fd(self.netns.as_fd())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(*self.cookie.get_or_init(|| cookie))
    }

    /// Aborts this pod's TCP connection from `local` to `remote`: the kernel resets it, so both
    /// apps see the connection end (sock_diag `SOCK_DESTROY`, from a netlink socket opened
    /// inside the pod on a short-lived thread). Blocking: call from a blocking context.
    pub fn destroy_tcp(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
        let mut netlink =
            crate::redirect::netns::run_in(self.netns.as_fd(), Netlink::open_sock_diag)
                .map_err(|e| io::Error::other(e.to_string()))??;
        netlink.destroy_tcp(local, remote)
    }

    /// Connects to `dst` (the app) from inside the pod, transparently from `client` when it is
    /// of `dst`'s family and the reply mark is set (the return path exists); otherwise from the
    /// pod's own address. The caller bounds the wait.
    pub async fn connect(&self, dst: SocketAddr, client: Option<IpAddr>) -> io::Result<TcpStream> {
        self.connect_announced(dst, client, None).await
    }

    /// [`Self::connect`]; when `announce` is given and the connection is transparent, the local
    /// port is taken at bind time and `announce` hears the socket's address before the SYN
    /// leaves (same-node joining registers the tuple the app will see, see
    /// [`crate::redirect::join`]). Its error aborts the connect.
    pub async fn connect_announced(
        &self,
        dst: SocketAddr,
        client: Option<IpAddr>,
        announce: Option<Announce<'_>>,
    ) -> io::Result<TcpStream> {
        let client = client
            .map(|ip| ip.to_canonical())
            .filter(|ip| ip.is_ipv4() == dst.is_ipv4());
        let socket = socket_in(self.netns.as_fd(), dst)?;
        let client = client.filter(|_| self.reply_mark != 0);
        if self.reply_mark != 0 {
            set_mark(&socket, self.reply_mark)?;
            bind_to_loopback(&socket)?;
        }
        let Some(ip) = client else {
            return connect(socket, None, dst, None).await;
        };
        set_transparent(&socket, ip)?;
        // Announcing needs the port now; otherwise the kernel picks it at connect time.
        if announce.is_none() {
            setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
        }
        connect(socket, Some(SocketAddr::new(ip, 0)), dst, announce).await
    }
}

/// Hears a socket's own address after it is bound and before it connects
/// ([`PodNet::connect_announced`]); its error aborts the connect.
pub type Announce<'a> = &'a (dyn Fn(SocketAddr) -> io::Result<()> + Sync);

/// Binds `socket` (made by [`socket_in`]) to `local` when given, tells `announce` the bound
/// address, connects it to `dst` and turns Nagle off.
async fn connect(
    socket: OwnedFd,
    local: Option<SocketAddr>,
    dst: SocketAddr,
    announce: Option<Announce<'_>>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    if let Some(local) = local {
        socket.bind(local)?;
    }
    if let Some(announce) = announce {
        announce(socket.local_addr()?)?;
    }
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Dials a pod's HBONE tunnels from inside the pod ([`PodNet::connect_out`]).
#[derive(Debug, Clone)]
pub struct FromPod(pub Arc<PodNet>);

impl Dialer for FromPod {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        let net = self.0.clone();
        Box::pin(async move { net.connect_out(addr).await })
    }
}

/// The network namespaces of the local pods the tunnel serves in-pod, by pod address: where the
/// outbound path dials from. Written by the in-pod listener manager, read per connection.
#[derive(Debug, Default)]
pub struct PodNets {
    by_ip: RwLock<HashMap<IpAddr, Arc<PodNet>>>,
}

impl PodNets {
    /// `ip`'s namespace from now on.
    pub fn insert(&self, ip: IpAddr, net: Arc<PodNet>) {
        self.write().insert(ip.to_canonical(), net);
    }

    /// Forgets `ip`'s namespace.
    pub fn remove(&self, ip: IpAddr) {
        self.write().remove(&ip.to_canonical());
    }

    /// The namespace of the pod at `ip`, if it is served in-pod.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<PodNet>> {
        let map = self.by_ip.read().unwrap_or_else(|p| p.into_inner());
        map.get(&ip.to_canonical()).cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<IpAddr, Arc<PodNet>>> {
        // Single insert/remove calls: a panic cannot leave the map half changed.
        self.by_ip.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's own network namespace, where every tokio thread lives.
fn home() -> io::Result<BorrowedFd<'static>> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(file) = HOME.get() {
        return Ok(file.as_fd());
    }
    // The thread group leader's namespace: mesh-node's main thread never changes namespace.
    let file = File::open("/proc/self/ns/net")?;
    Ok(HOME.get_or_init(|| file).as_fd())
}

/// A non-blocking TCP socket of `dst`'s family created inside `netns`. The calling thread enters
/// the namespace for the `socket()` call only and returns to the node's at once.
pub fn socket_in(netns: BorrowedFd<'_>, dst: SocketAddr) -> io::Result<OwnedFd> {
    let home = home()?;
    setns(netns)?;
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2); the result is checked below.
    let raw = unsafe { libc::socket(domain, kind, libc::IPPROTO_TCP) };
    let created = match raw {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: a fresh descriptor that nothing else owns.
        fd => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
    };
    if let Err(error) = setns(home) {
        // A tokio worker left in a pod's namespace would open later sockets (other pods'
        // upstreams, HBONE dials) there: stopping is the only safe answer.
        tracing::error!(%error, "cannot return to the node's network namespace; aborting");
        std::process::abort();
    }
    created
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on a valid namespace descriptor; affects only the calling thread.
    match unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn set_transparent(socket: &OwnedFd, ip: IpAddr) -> io::Result<()> {
    match ip {
        IpAddr::V4(_) => setsockopt(socket, sockopt::IpTransparent, &true),
        IpAddr::V6(_) => set_ipv6_transparent(socket),
    }
}

/// `IPV6_TRANSPARENT`, which nix has no option for.
fn set_ipv6_transparent(socket: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            IPV6_TRANSPARENT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn setsockopt<O: nix::sys::socket::SetSockOpt>(
    socket: &OwnedFd,
    option: O,
    value: &O::Val,
) -> io::Result<()> {
    nix::sys::socket::setsockopt(socket, option, value).map_err(io::Error::from)
}

fn family_of(ip: IpAddr) -> u8 {
    match ip.to_canonical() {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn context(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

fn bind_to_loopback(socket: &OwnedFd) -> io::Result<()> {
    setsockopt(
        socket,
        sockopt::BindToDevice,
        &std::ffi::OsString::from("lo"),
    )
}
