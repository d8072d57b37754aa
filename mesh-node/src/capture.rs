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
