//! Shared fixtures of the `redirect_*` tests: a test cgroup the test process joins, network
//! namespace "pods" with a veth to the host, and socket helpers (SO_ORIGINAL_DST, timed accept).
//!
//! Every fixture is a Drop guard, so namespaces, links and cgroups go away even when a test
//! panics. Names start with `wfte` and addresses stay inside 10.201.0.0/16 and fd00:201::/32
//! (ULA, added with `nodad` so they are usable at once). Tests serialize on [`serial`] because
//! the whole process moves into the test cgroup.
#![allow(dead_code)]

pub mod bpffs;
mod origdst;
pub mod topology;

#[allow(unused_imports)] // each test binary uses a subset
pub use origdst::{original_dst, original_dst6};

use std::{
    fs,
    io::{self, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    },
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use mesh_node::redirect::{cgroup, netns};

/// Upper bound for any single network wait in these tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a dropped SYN is given to (not) connect: the drop is silent, so only a timeout shows it.
pub const DROPPED_WAIT: Duration = Duration::from_millis(700);

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes tests of one binary; panics loudly when not root.
pub fn serial() -> MutexGuard<'static, ()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "redirect tests need root (CAP_BPF, CAP_NET_ADMIN, cgroup writes); run as root in CI"
    );
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawn {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A cgroup under the cgroup2 mount that this whole test process joins until dropped.
pub struct TestCgroup {
    /// Path relative to the cgroup2 mount (what `Config::cgroup` takes).
    pub relative: PathBuf,
    path: PathBuf,
    previous: PathBuf,
    joined: bool,
}

impl TestCgroup {
    /// Creates `<mount>/<name>` and moves this process into it.
    pub fn join(name: &str) -> Result<Self> {
        let mut guard = Self::create(name)?;
        move_self(&guard.path)?;
        guard.joined = true;
        Ok(guard)
    }

    /// Creates `<mount>/<name>` without joining it: a cgroup this process stays out of.
    pub fn create(name: &str) -> Result<Self> {
        let mount = cgroup::cgroup2_mount()?;
        let path = mount.join(name);
        if path.exists() {
            let _ = fs::remove_dir(&path);
        }
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        let previous = mount.join(current_cgroup()?.trim_start_matches('/'));
        Ok(Self {
            relative: PathBuf::from(name),
            path,
            previous,
            joined: false,
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.joined {
            // Nothing to leave.
        } else if let Err(error) = move_self(&self.previous) {
            eprintln!(
                "cannot leave test cgroup {}: {error:#}",
                self.path.display()
            );
        }
        if let Err(error) = fs::remove_dir(&self.path) {
            eprintln!("cannot remove test cgroup {}: {error}", self.path.display());
        }
    }
}

fn current_cgroup() -> Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .context("no cgroup v2 line in /proc/self/cgroup")
}

fn move_self(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("write {}", procs.display()))
}

/// A network namespace with a veth to the host: host side `10.201.<subnet>.1/24`, pod side `.2`.
pub struct Pod {
    /// Namespace name (under /run/netns).
    pub name: String,
    /// Host-side interface name.
    pub host_if: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host side's address (the pod's gateway).
    pub host_ip: Ipv4Addr,
    /// Pod-side interface name.
    pub pod_if: String,
    subnet: u8,
    fd: OwnedFd,
}

impl Pod {
    /// Creates namespace `wfte-<subnet>` and link `wfte<subnet>h` (leftovers of a crashed run with
    /// the same subnet are removed first).
    pub fn new(subnet: u8) -> Result<Self> {
        let name = format!("wfte-{subnet}");
        let host_if = format!("wfte{subnet}h");
        let pod_if = format!("wfte{subnet}p");
        let _ = run("ip", &["link", "del", &host_if]);
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        let host_ip = Ipv4Addr::new(10, 201, subnet, 1);
        let ip = Ipv4Addr::new(10, 201, subnet, 2);
        let fd = fs::File::open(format!("/run/netns/{name}"))?.into();
        let pod = Self {
            name,
            host_if,
            ip,
            host_ip,
            pod_if,
            subnet,
            fd,
        };
        pod.wire(&pod.pod_if, subnet)?;
        Ok(pod)
    }

    /// The pod's IPv6 address once [`Pod::add_ipv6`] ran: `fd00:201:<subnet>::2`.
    pub fn ip6(&self) -> Ipv6Addr {
        ula(self.subnet, 2)
    }

    /// The host side's IPv6 address (the pod's IPv6 gateway): `fd00:201:<subnet>::1`.
    pub fn host_ip6(&self) -> Ipv6Addr {
        ula(self.subnet, 1)
    }

    /// Gives both veth ends an IPv6 address and the pod an IPv6 default route.
    pub fn add_ipv6(&self) -> Result<()> {
        add_addr6(None, &self.host_if, self.host_ip6())?;
        add_addr6(Some(&self.name), &self.pod_if, self.ip6())?;
        let gateway = self.host_ip6().to_string();
        run(
            "ip",
            &[
                "-6", "-n", &self.name, "route", "add", "default", "via", &gateway,
            ],
        )
    }

    fn wire(&self, pod_if: &str, subnet: u8) -> Result<()> {
        let (n, h) = (self.name.as_str(), self.host_if.as_str());
        run(
            "ip",
            &[
                "link", "add", h, "type", "veth", "peer", "name", pod_if, "netns", n,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.host_ip), "dev", h],
        )?;
        run("ip", &["link", "set", h, "up"])?;
        run(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("10.201.{subnet}.2/24"),
                "dev",
                pod_if,
            ],
        )?;
        run("ip", &["-n", n, "link", "set", pod_if, "up"])?;
        run("ip", &["-n", n, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                n,
                "route",
                "add",
                "default",
                "via",
                &self.host_ip.to_string(),
            ],
        )
    }

    /// Adds an extra address on the host side of the veth.
    pub fn add_host_address(&self, ip: Ipv4Addr) -> Result<()> {
        run(
            "ip",
            &["addr", "add", &format!("{ip}/32"), "dev", &self.host_if],
        )
    }

    /// Adds an extra IPv6 address on the host side of the veth.
    pub fn add_host_address6(&self, ip: Ipv6Addr) -> Result<()> {
        add_addr6(None, &self.host_if, ip)
    }

    /// The namespace's cookie (the enrollment key).
    pub fn cookie(&self) -> u64 {
        netns::cookie_of_fd(self.fd.as_fd()).expect("netns cookie of test pod")
    }

    /// The namespace.
    pub fn netns(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(self.fd.as_fd(), f).expect("enter test pod netns")
    }

    /// Connects from inside the pod.
    pub fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        self.run_in(|| connect(to))
    }

    /// Listens inside the pod.
    pub fn listen(&self, port: u16) -> io::Result<TcpListener> {
        self.run_in(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))
    }

    /// Listens inside the pod on `[::]` (dual stack).
    pub fn listen6(&self, port: u16) -> io::Result<TcpListener> {
        self.run_in(|| TcpListener::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)))
    }
}

/// `fd00:201:<subnet>::<host>`.
pub fn ula(subnet: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x201, u16::from(subnet), 0, 0, 0, 0, host)
}

/// `ip [-n netns] -6 addr add <ip>/64 dev <dev> nodad`.
pub fn add_addr6(netns: Option<&str>, dev: &str, ip: Ipv6Addr) -> Result<()> {
    let addr = format!("{ip}/64");
    let mut args = vec!["-6"];
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["addr", "add", &addr, "dev", dev, "nodad"]);
    run("ip", &args)
}

impl Drop for Pod {
    fn drop(&mut self) {
        for (args, what) in [
            (vec!["link", "del", self.host_if.as_str()], "veth"),
            (vec!["netns", "del", self.name.as_str()], "netns"),
        ] {
            if let Err(error) = run("ip", &args) {
                eprintln!("cleanup of {what} {}: {error:#}", self.name);
            }
        }
    }
}

/// Connects with a bounded wait and I/O timeouts.
pub fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(stream)
}

/// Connects from a specific local address.
pub fn connect_from(
    local: impl Into<IpAddr>,
    to: SocketAddr,
    wait: Duration,
) -> io::Result<TcpStream> {
    connect_bound(bound_socket(local)?, to, wait)
}

/// A TCP socket bound to `local` now, to connect later with [`connect_bound`]. A socket belongs
/// to the cgroup of the process that created it: made before [`TestCgroup::join`], it stands
/// for a process outside the pods' cgroup (the kubelet, say), which may bind the probe address.
pub fn bound_socket(local: impl Into<IpAddr>) -> io::Result<socket2::Socket> {
    let local = SocketAddr::new(local.into(), 0);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// Connects a socket from [`bound_socket`] with a bounded wait.
pub fn connect_bound(
    socket: socket2::Socket,
    to: SocketAddr,
    wait: Duration,
) -> io::Result<TcpStream> {
    socket.connect_timeout(&to.into(), wait)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT))?;
    Ok(stream)
}

/// Asserts that binding `local` from this process (inside the pods' cgroup) is refused.
pub fn assert_bind_refused(local: impl Into<IpAddr>, what: &str) {
    match bound_socket(local) {
        Ok(socket) => panic!("{what}: bound {:?}", socket.local_addr()),
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(libc::EPERM),
            "{what}: refused by the bind guard, not {error}"
        ),
    }
}

/// Asserts a connect attempt was dropped silently (timed out), neither refused nor accepted.
pub fn assert_dropped(attempt: io::Result<TcpStream>, what: &str) {
    match attempt {
        Ok(stream) => panic!("{what}: connected to {:?}", stream.peer_addr()),
        Err(err) => assert_eq!(
            err.kind(),
            io::ErrorKind::TimedOut,
            "{what}: not dropped: {err}"
        ),
    }
}

/// Accepts one connection within `wait`; `Ok(None)` when none arrived.
pub fn accept_within(listener: &TcpListener, wait: Duration) -> io::Result<Option<TcpStream>> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Ok(None);
    }
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    Ok(Some(stream))
}

/// Writes `msg` on `a` and checks it arrives unchanged on `b`.
pub fn assert_carries(a: &mut TcpStream, b: &mut TcpStream, msg: &[u8]) {
    a.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    b.read_exact(&mut got).expect("read what the peer wrote");
    assert_eq!(got, msg);
}

/// A listener on `ip`, port chosen by the kernel.
pub fn listen_on(ip: Ipv4Addr) -> TcpListener {
    TcpListener::bind(SocketAddrV4::new(ip, 0)).expect("bind test listener")
}

/// A listener on an IPv6 address, port chosen by the kernel (or `port`).
pub fn listen_on6(ip: Ipv6Addr, port: u16) -> TcpListener {
    TcpListener::bind(SocketAddrV6::new(ip, port, 0, 0)).expect("bind IPv6 test listener")
}

/// The IPv6 address a listener is bound to.
pub fn v6(listener: &TcpListener) -> SocketAddrV6 {
    match listener.local_addr().expect("local addr") {
        SocketAddr::V6(addr) => addr,
        SocketAddr::V4(addr) => panic!("expected an IPv6 listener, got {addr}"),
    }
}

/// The IPv4 address a listener is bound to.
pub fn v4(listener: &TcpListener) -> SocketAddrV4 {
    match listener.local_addr().expect("local addr") {
        SocketAddr::V4(addr) => addr,
        SocketAddr::V6(addr) => panic!("expected an IPv4 listener, got {addr}"),
    }
}

/// Bytes with no period that lines up with write sizes, so reordering or loss shows.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Writes `data` in uneven chunks (1 byte up to 200 KB) so sends split at odd boundaries.
pub fn write_uneven(stream: &mut TcpStream, data: &[u8]) {
    let sizes = [1usize, 7, 1_500, 65_536, 333, 4_096, 17, 200_000];
    let mut offset = 0;
    for size in sizes.iter().cycle() {
        if offset == data.len() {
            break;
        }
        let end = (offset + size).min(data.len());
        stream.write_all(&data[offset..end]).expect("write chunk");
        offset = end;
    }
}

/// Everything `stream` receives until the peer's FIN.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .expect("read until the peer's FIN");
    got
}
