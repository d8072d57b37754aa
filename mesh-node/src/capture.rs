//! How the running tunnel is wired into the eBPF programs: the redirect configuration built from
//! this node's addresses (`--node-ip`, `--node-ipv6`) and the listeners the tunnel actually bound.
//!
//! Both families are redirected to one port (the programs' ABI stores one listener port), so the
//! IPv6 outbound listener is bound on the port the IPv4 one got ([`crate::app::build`]).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
};

use crate::{app::Bound, config::Config, redirect};

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

/// This node's addresses: where pods' connections are redirected to, and the sources strict
/// pods accept plaintext from (the tunnel's and the kubelet's connections to local pods).
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
    redirect.tunnel_source_v4 = node.ipv4;
    redirect.probe_source_v4 = node.ipv4;
    if let Some(ip) = node.ipv6 {
        let listener = ipv6_listener(bound)?;
        redirect.outbound_v6 = Some(SocketAddrV6::new(ip, listener.port(), 0, 0));
        redirect.tunnel_source_v6 = Some(ip);
        redirect.probe_source_v6 = Some(ip);
    }
    // Strict pods accept SYNs to this port on the tunnel's in-pod listeners only, which carry
    // this mark.
    redirect.hbone_port = config.hbone_port;
    redirect.tunnel_mark = config.in_pod.mark;
    Ok(redirect)
}

/// The tunnel's IPv6 outbound listener, which must share the IPv4 listener's port.
fn ipv6_listener(bound: &Bound) -> Result<SocketAddr, CaptureError> {
    match bound.outbound_v6 {
        Some(addr @ SocketAddr::V6(_)) if addr.port() == bound.outbound.port() => Ok(addr),
        other => Err(CaptureError::NoIpv6Listener { bound: other }),
    }
}
