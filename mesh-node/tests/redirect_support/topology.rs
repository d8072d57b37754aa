//! Two pods wired to each other: `server` has a veth to the host, and the `outsider`'s veth is
//! re-homed into `server`, so the outsider reaches the server directly, as another pod on the
//! node would, without passing any tunnel. Used by the strict-inbound tests.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::Result;

use super::{add_addr6, connect_from, run, ula, Pod};

/// A server pod and an outsider pod with a direct link.
pub struct DirectPair {
    /// The pod under test.
    pub server: Pod,
    /// A pod reaching `server` over the direct link.
    pub outsider: Pod,
    outsider_subnet: u8,
}

impl DirectPair {
    /// Builds both pods: the direct link uses the outsider's subnet, with `.1`/`::1` on the
    /// server's end.
    pub fn new(server_subnet: u8, outsider_subnet: u8) -> Result<Self> {
        let server = Pod::new(server_subnet)?;
        let outsider = Pod::new(outsider_subnet)?;
        let pair = Self {
            server,
            outsider,
            outsider_subnet,
        };
        let far = format!("{}/24", pair.server_end_v4());
        let (link, server_ns) = (&pair.outsider.host_if, &pair.server.name);
        run("ip", &["addr", "del", &far, "dev", link])?;
        run("ip", &["link", "set", link, "netns", server_ns])?;
        run("ip", &["-n", server_ns, "addr", "add", &far, "dev", link])?;
        run("ip", &["-n", server_ns, "link", "set", link, "up"])?;
        Ok(pair)
    }

    /// Adds IPv6: the server's veth to the host as [`Pod::add_ipv6`], and the direct link.
    pub fn add_ipv6(&self) -> Result<()> {
        self.server.add_ipv6()?;
        add_addr6(
            Some(&self.server.name),
            &self.outsider.host_if,
            self.server_end_v6(),
        )?;
        add_addr6(
            Some(&self.outsider.name),
            &self.outsider.pod_if,
            self.outsider.ip6(),
        )?;
        let gateway = self.server_end_v6().to_string();
        let ns = &self.outsider.name;
        run(
            "ip",
            &["-6", "-n", ns, "route", "add", "default", "via", &gateway],
        )
    }

    /// The server's IPv4 address on the direct link.
    pub fn server_end_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.outsider_subnet, 1)
    }

    /// The server's IPv6 address on the direct link.
    pub fn server_end_v6(&self) -> Ipv6Addr {
        ula(self.outsider_subnet, 1)
    }

    /// Connects from the outsider, over the direct link, to `port` in the server (IPv6 when
    /// `ipv6`, which needs [`Self::add_ipv6`]), waiting at most `wait`.
    pub fn connect_direct(&self, port: u16, ipv6: bool, wait: Duration) -> io::Result<TcpStream> {
        let (from, to): (IpAddr, IpAddr) = match ipv6 {
            false => (self.outsider.ip.into(), self.server_end_v4().into()),
            true => (self.outsider.ip6().into(), self.server_end_v6().into()),
        };
        let to = SocketAddr::new(to, port);
        self.outsider.run_in(|| connect_from(from, to, wait))
    }
}

impl Drop for DirectPair {
    fn drop(&mut self) {
        // The moved link dies with the server namespace; make the outsider's guard cleanup quiet.
        let ns = &self.server.name;
        let _ = run("ip", &["-n", ns, "link", "del", &self.outsider.host_if]);
    }
}
