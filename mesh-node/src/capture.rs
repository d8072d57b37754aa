//! How the running tunnel is wired into the eBPF programs: the redirect configuration built from
//! this node's addresses (`--node-ip`, `--node-ipv6`) and the listeners the tunnel actually bound.
//!
//! Both families are redirected to one port (the programs' ABI stores one listener port), so the
//! IPv6 outbound listener is bound on the port the IPv4 one got ([`crate::app::build`]). The
//! kubelet probe addresses go on the node's loopback ([`add_probe_addresses`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
};

use crate::{
    app::Bound,
    config::Config,
    netlink::{self, Netlink},
    redirect,
};

/// Why the redirect configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither family has a node address.
    #[error("redirecting needs this node's address: pass --node-ip and/or --node-ipv6")]
    NoNodeAddress,
    /// `--node-ipv6` was given but the tunnel has no IPv6 outbound listener to send traffic to.
    #[error("ipv6 outbound listener missing (bound: {bound:?}); set listeners.outbound_ipv6")]
    NoIpv6Listener {
        /// What the tunnel bound instead.
        bound: Option<SocketAddr>,
    },
}

/// This node's addresses: where pods' connections are redirected to; with either family set,
/// the probe source address of that family is used too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// IPv4 node address; `None` leaves pods' IPv4 connects alone.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 node address; `None` leaves pods' native IPv6 connects alone.
    pub ipv6: Option<Ipv6Addr>,
}

/// The redirect configuration for a tunnel `bound` from `config`, attached to `cgroup`
/// (relative to the cgroup2 mount). The caller adds pinning and exclusions.
pub fn redirect_config(
    cgroup: &Path,
    node: NodeAddresses,
    bound: &Bound,
    config: &Config,
) -> Result<redirect::Config, CaptureError> {
    if node == NodeAddresses::default() {
        return Err(CaptureError::NoNodeAddress);
    }
    let port = bound.outbound.port();
    let mut redirect =
        redirect::Config::new(cgroup, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    redirect.outbound_v4 = node.ipv4.map(|ip| SocketAddrV4::new(ip, port));
    // Kubelet probes to enrolled pods leave from Istio's probe addresses; the node's own
    // address is not let into strict pods (the tunnel reaches the app from inside the pod).
    redirect.probe_source_v4 = node.ipv4.map(|_| redirect::DEFAULT_PROBE_SOURCE_V4);
    if let Some(ip) = node.ipv6 {
        let listener = ipv6_listener(bound)?;
        redirect.outbound_v6 = Some(SocketAddrV6::new(ip, listener.port(), 0, 0));
        redirect.probe_source_v6 = Some(redirect::DEFAULT_PROBE_SOURCE_V6);
    }
    // Strict pods accept SYNs to this port on the tunnel's in-pod listeners only, which carry
    // this mark.
    redirect.hbone_port = config.hbone_port;
    redirect.tunnel_mark = config.in_pod.mark;
    redirect.reply_mark = config.in_pod.reply_mark;
    redirect.plaintext_port = config.in_pod.plaintext_port;
    Ok(redirect)
}

/// The tunnel's IPv6 outbound listener, which must share the IPv4 listener's port.
fn ipv6_listener(bound: &Bound) -> Result<SocketAddr, CaptureError> {
    match bound.outbound_v6 {
        Some(addr @ SocketAddr::V6(_)) if addr.port() == bound.outbound.port() => Ok(addr),
        other => Err(CaptureError::NoIpv6Listener { bound: other }),
    }
}

/// Starts capture with `config`. When that fails with same-node joining or direct connections
/// on (a kernel that refuses their attachments or maps), starts it again without them, so the
/// node still captures and the tunnel carries same-node connections itself; `config` then says
/// what was attached. Other failures are returned as they are.
pub fn start_with_fallback<H, E: std::fmt::Display>(
    config: &mut redirect::Config,
    start: impl Fn(&redirect::Config) -> Result<H, E>,
) -> Result<H, E> {
    match start(config) {
        Err(error) if config.join || config.direct => {
            tracing::warn!(%error, "eBPF redirection with same-node joining or direct connections failed to attach; retrying without them (the tunnel carries same-node connections)");
            config.join = false;
            config.direct = false;
            start(config)
        }
        started => started,
    }
}

/// Puts the probe source addresses `redirect` uses on this node's loopback (host scope), so the
/// kubelet's probe sockets can bind them and pods' answers come back. Left in place on exit: the
/// probe programs stay attached on a pinned node ([`remove_probe_addresses`] on cleanup).
pub fn add_probe_addresses(redirect: &redirect::Config) -> std::io::Result<()> {
    let addresses = [
        redirect.probe_source_v4.map(IpAddr::V4),
        redirect.probe_source_v6.map(IpAddr::V6),
    ];
    let mut netlink = Netlink::open()?;
    for ip in addresses.into_iter().flatten() {
        netlink
            .add_address(netlink::LOOPBACK_IFINDEX, ip, netlink::SCOPE_HOST)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("adding probe address {ip} to lo: {e}"))
            })?;
    }
    Ok(())
}

/// Removes the default probe source addresses (the only ones mesh-node adds) from this node's
/// loopback; a missing one is fine.
pub fn remove_probe_addresses() -> std::io::Result<()> {
    let mut netlink = Netlink::open()?;
    let addresses: [IpAddr; 2] = [
        redirect::DEFAULT_PROBE_SOURCE_V4.into(),
        redirect::DEFAULT_PROBE_SOURCE_V6.into(),
    ];
    for ip in addresses {
        netlink.remove_address(netlink::LOOPBACK_IFINDEX, ip)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, net::SocketAddrV4};

    use super::*;

    fn config() -> redirect::Config {
        let mut config =
            redirect::Config::new("pods", SocketAddrV4::new([10, 0, 0, 1].into(), 15001));
        config.join = true;
        config.direct = true;
        config
    }

    #[test]
    fn a_kernel_refusing_the_same_node_extras_still_gets_capture_without_them() {
        let mut config = config();
        let attempts = RefCell::new(Vec::new());
        let started = start_with_fallback(&mut config, |c| {
            attempts.borrow_mut().push((c.join, c.direct));
            match c.join || c.direct {
                true => Err("sockmap link: invalid argument"),
                false => Ok("captured"),
            }
        });
        assert_eq!(started, Ok("captured"));
        assert_eq!(*attempts.borrow(), [(true, true), (false, false)]);
        assert!(
            !config.join && !config.direct,
            "config says what was attached"
        );
    }

    #[test]
    fn capture_that_fails_on_its_own_is_an_error_and_one_that_works_keeps_everything() {
        let mut config = config();
        let failed: Result<(), &str> = start_with_fallback(&mut config, |_| Err("no cgroup"));
        assert_eq!(failed, Err("no cgroup"));
        let mut config = self::config();
        let calls = RefCell::new(0);
        let started: Result<(), &str> = start_with_fallback(&mut config, |_| {
            *calls.borrow_mut() += 1;
            Ok(())
        });
        assert_eq!((started, *calls.borrow()), (Ok(()), 1));
        assert!(config.join && config.direct);
    }
}
