//! Sockets come from an injected [`SocketFactory`], never from `bind`/`connect` deep in the
//! proxy, so network-namespace entry, socket marks and test fakes are decorators.
//!
//! [`SystemSockets`] is the real thing: it reads the original destination of redirected
//! connections with `SO_ORIGINAL_DST` (set by iptables REDIRECT/TPROXY-style capture) and falls
//! back to the socket's local address when there is none (eBPF redirect or tests).

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::Arc,
};

use futures::future::BoxFuture;
use mesh_core::hbone::Dialer;
use tokio::net::{TcpListener, TcpStream};

use crate::redirect::netns::run_in;

/// Binds listeners, opens connections and reads original destinations.
pub trait SocketFactory: Send + Sync + 'static {
    /// Binds a listener (called inside a Tokio runtime).
    fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener>;
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>>;
    /// The destination the client originally connected to.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
    /// Binds a non-blocking listener inside the network namespace at `netns` (a pod's), with
    /// `SO_MARK` `mark` (0: none). Blocks while a helper thread enters the namespace: call it
    /// from `spawn_blocking`.
    fn bind_in_netns(
        &self,
        netns: &Path,
        addr: SocketAddr,
        mark: u32,
    ) -> io::Result<std::net::TcpListener> {
        bind_in_netns(netns, addr, mark)
    }
    /// Sets up, inside the network namespace at `netns` (a pod's), the return path of the
    /// tunnel's transparent connections to the app at `ip`, marked `reply_mark`
    /// ([`crate::pod_net::prepare`]). Blocks like [`Self::bind_in_netns`].
    fn prepare_in_netns(&self, netns: &Path, ip: IpAddr, reply_mark: u32) -> io::Result<()> {
        let file = File::open(netns)?;
        run_in(file.as_fd(), || crate::pod_net::prepare(ip, reply_mark))
            .map_err(io::Error::other)?
    }
}

/// Binds `addr` inside the network namespace at `netns`: a short-lived thread enters the
/// namespace, binds and returns the socket, which stays in that namespace for its whole life.
/// The caller's thread (never a tokio worker's) keeps its namespace. A non-zero `mark` is set
/// as the listener's `SO_MARK` (accepted sockets inherit it).
pub fn bind_in_netns(
    netns: &Path,
    addr: SocketAddr,
    mark: u32,
) -> io::Result<std::net::TcpListener> {
    let file = File::open(netns)?;
    run_in(file.as_fd(), || {
        let listener = std::net::TcpListener::bind(addr)?;
        set_mark(&listener, mark)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .map_err(io::Error::other)?
}

/// Sets `SO_MARK` on `socket` (needs `CAP_NET_ADMIN`); 0 leaves it unmarked. The strict eBPF
/// program recognises the tunnel's in-pod HBONE listeners by it.
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    if mark == 0 {
        return Ok(());
    }
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(io::Error::from)
}

/// Real sockets in the current network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemSockets;

impl SocketFactory for SystemSockets {
    fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        TcpListener::from_std(std_listener)
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }

    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match so_original_dst(stream) {
            Ok(addr) => Ok(addr),
            Err(_) => stream.local_addr(),
        }
    }
}

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` (both 80 in `linux/netfilter_ipv4.h`/`ipv6`).
const SO_ORIGINAL_DST: libc::c_int = 80;

fn so_original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let v6 = stream.local_addr()?.is_ipv6();
    let (level, mut storage) = (
        if v6 { libc::SOL_IPV6 } else { libc::SOL_IP },
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        unsafe { std::mem::zeroed::<libc::sockaddr_storage>() },
    );
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `fd` is a live socket owned by `stream`; `storage`/`len` are valid for writes of
    // `len` bytes and the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            SO_ORIGINAL_DST,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sockaddr_to_std(&storage)
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("original destination has unknown address family {family}"),
        )),
    }
}

/// Adapts a [`SocketFactory`] to the HBONE client's [`Dialer`].
#[derive(Clone)]
pub struct FactoryDialer(pub Arc<dyn SocketFactory>);

impl Dialer for FactoryDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> {
        self.0.connect(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn original_dst_falls_back_to_local_address_without_redirect() {
        let sockets = SystemSockets;
        let listener = sockets.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = sockets.connect(addr);
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, _) = accepted.unwrap();
        assert!(
            so_original_dst(&stream).is_err(),
            "no netfilter redirect here"
        );
        assert_eq!(sockets.original_dst(&stream).unwrap(), addr);
    }

    #[test]
    fn converts_sockaddr_in() {
        // SAFETY: all-zero sockaddr_storage is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
        let sin = unsafe {
            &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
        };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = 8080u16.to_be();
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::new(10, 1, 2, 3)).to_be();
        assert_eq!(
            sockaddr_to_std(&storage).unwrap(),
            "10.1.2.3:8080".parse().unwrap()
        );
    }
}
