//! Typed configuration of the redirect programs and its encoding into the `CONFIG` map ABI.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
};

use mesh_ebpf_common::{config_flags, RedirectConfig};

/// An IP network: address plus prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits are ignored by the LPM lookup).
    pub addr: IpAddr,
    /// Prefix length in bits: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

/// The HBONE port strict pods accept connection attempts on by default (Istio ambient's).
pub const DEFAULT_HBONE_PORT: u16 = 15008;

/// The source address of kubelet probes to enrolled pods (Istio ambient's): link-local, never a
/// pod's, put on the node's loopback by mesh-node ([`crate::capture::add_probe_addresses`]).
pub const DEFAULT_PROBE_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);

/// The IPv6 source address of kubelet probes (Istio ambient's).
pub const DEFAULT_PROBE_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

/// Everything the loader needs to attach and configure the programs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Cgroup to attach to, relative to the cgroup2 mount ("" = the whole v2 hierarchy).
    pub cgroup: PathBuf,
    /// The tunnel's IPv4 outbound listener; `None` leaves IPv4 connects alone.
    pub outbound_v4: Option<SocketAddrV4>,
    /// The tunnel's IPv6 outbound listener; `None` leaves native IPv6 connects alone.
    pub outbound_v6: Option<SocketAddrV6>,
    /// `SO_MARK` set on the tunnel's own sockets: they are never redirected, and in strict pods
    /// only listeners carrying it get the HBONE-port exception. 0 disables both (fail closed).
    pub tunnel_mark: u32,
    /// `SO_MARK` of the tunnel's transparent connections to apps inside pods
    /// ([`crate::pod_net`]): never redirected either. 0: none.
    pub reply_mark: u32,
    /// Source address of kubelet probes: the kubelet's connects to enrolled pods are bound to
    /// it, no pod may bind it, and it is the only plaintext source strict pods' own listeners
    /// accept. `None`: no probe gets through to a strict pod.
    pub probe_source_v4: Option<Ipv4Addr>,
    /// IPv6 source address of kubelet probes.
    pub probe_source_v6: Option<Ipv6Addr>,
    /// The kubelet's cgroup (relative to the cgroup2 mount), where the programs that bind its
    /// probes to the probe address attach. `None`: probes keep the node's address, so strict
    /// pods refuse them.
    pub kubelet_cgroup: Option<PathBuf>,
    /// Port of the tunnel's in-pod HBONE listeners: connection attempts to a listener on it that
    /// carries `tunnel_mark` are allowed into strict pods from any source (HBONE is mTLS,
    /// authorised by the tunnel). 0 allows none.
    pub hbone_port: u16,
    /// Port of the tunnel's in-pod plaintext listeners: a listener on it that carries
    /// `tunnel_mark` is admitted into strict pods like the HBONE one (the tunnel enforces each
    /// original port's mode itself). 0 admits none.
    pub plaintext_port: u16,
    /// bpffs directory to pin links and maps in (e.g. `/sys/fs/bpf/weft`): programs then stay
    /// attached when the loader exits, and the next load adopts them. `None`: detach on drop.
    pub pin_path: Option<PathBuf>,
    /// Destination ports never redirected.
    pub excluded_ports: Vec<u16>,
    /// Destination networks never redirected.
    pub excluded_cidrs: Vec<Cidr>,
    /// Attach the same-node splice (`sk_msg` + SOCKHASH) of app and tunnel sockets.
    pub splice: bool,
    /// Same-node joining ([`super::join`]): redirected client sockets become joinable and the
    /// `sk_msg` program is attached.
    pub join: bool,
    /// Same-node direct connections ([`super::direct`]): connects to a same-node destination
    /// the tunnel admitted for the client pod skip the tunnel.
    pub direct: bool,
    /// Most verbose eBPF log level forwarded (`tracing::Level::DEBUG` logs every redirect).
    pub log_level: tracing::Level,
}

impl Config {
    /// A config redirecting IPv4 connects to `outbound`, attached to `cgroup`, nothing excluded.
    pub fn new(cgroup: impl Into<PathBuf>, outbound: SocketAddrV4) -> Self {
        Self {
            cgroup: cgroup.into(),
            outbound_v4: Some(outbound),
            outbound_v6: None,
            tunnel_mark: 0,
            reply_mark: 0,
            probe_source_v4: None,
            probe_source_v6: None,
            kubelet_cgroup: None,
            hbone_port: DEFAULT_HBONE_PORT,
            plaintext_port: 0,
            pin_path: None,
            excluded_ports: Vec::new(),
            excluded_cidrs: Vec::new(),
            splice: false,
            join: false,
            direct: false,
            log_level: tracing::Level::INFO,
        }
    }

    /// Whether the `sk_msg` program is attached to the `SPLICE` map.
    pub fn uses_sk_msg(&self) -> bool {
        self.splice || self.join
    }

    /// The `CONFIG[0]` value: addresses and ports in network byte order.
    pub fn to_abi(&self) -> RedirectConfig {
        let mut abi = RedirectConfig {
            tunnel_mark: self.tunnel_mark,
            reply_mark: self.reply_mark,
            probe_ip4: self.probe_source_v4.map_or(0, ip4_abi),
            hbone_port: self.hbone_port.to_be(),
            plaintext_port: self.plaintext_port.to_be(),
            probe_ip6: self
                .probe_source_v6
                .map_or([0; 4], |ip| ip6_abi(ip.octets())),
            ..RedirectConfig::default()
        };
        // Both families share one listener port in the ABI: the v4 port wins when both are set.
        if let Some(v6) = self.outbound_v6 {
            abi.tunnel_ip6 = ip6_abi(v6.ip().octets());
            abi.tunnel_port = v6.port().to_be();
            abi.flags |= config_flags::IPV6;
        }
        if let Some(v4) = self.outbound_v4 {
            abi.tunnel_ip4 = ip4_abi(*v4.ip());
            abi.tunnel_port = v4.port().to_be();
            abi.flags |= config_flags::IPV4;
        }
        if self.splice {
            abi.flags |= config_flags::SPLICE;
        }
        if self.join {
            abi.flags |= config_flags::JOIN;
        }
        if self.direct {
            abi.flags |= config_flags::DIRECT;
        }
        abi
    }

    /// The `AYA_LOG_LEVEL` global value (aya-log-common: error=1 .. trace=5).
    pub fn ebpf_log_level(&self) -> u8 {
        match self.log_level {
            tracing::Level::ERROR => 1,
            tracing::Level::WARN => 2,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        }
    }
}

/// An IPv4 address as the kernel stores it in context fields (network order in a native u32).
pub fn ip4_abi(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// An address as the programs' keys hold it: four words (IPv4 in the first, IPv4-mapped IPv6
/// as IPv4) and its [`mesh_ebpf_common::family`].
pub fn ip_abi(ip: std::net::IpAddr) -> ([u32; 4], u16) {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => ([ip4_abi(v4), 0, 0, 0], mesh_ebpf_common::family::INET),
        std::net::IpAddr::V6(v6) => (ip6_abi(v6.octets()), mesh_ebpf_common::family::INET6),
    }
}

/// The address [`ip_abi`] encoded as `words` of `family`.
pub fn ip_from_abi(words: [u32; 4], family: u16) -> std::net::IpAddr {
    if family == mesh_ebpf_common::family::INET {
        return std::net::IpAddr::from(words[0].to_ne_bytes());
    }
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    std::net::IpAddr::from(octets)
}

/// An IPv6 address as four kernel context words.
pub fn ip6_abi(octets: [u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn abi_uses_network_byte_order() {
        let config = Config::new("", SocketAddrV4::new(Ipv4Addr::new(10, 201, 0, 1), 15001));
        let abi = config.to_abi();
        assert_eq!(abi.tunnel_ip4.to_ne_bytes(), [10, 201, 0, 1]);
        assert_eq!(abi.tunnel_port.to_ne_bytes(), [0x3a, 0x99]);
        assert_eq!(abi.flags, config_flags::IPV4);
        assert_eq!(
            abi.hbone_port.to_ne_bytes(),
            [0x3a, 0xa0],
            "15008 by default"
        );
        assert_eq!(
            (abi.probe_ip4, abi.probe_ip6),
            (0, [0; 4]),
            "no probe source unless configured"
        );
    }

    #[test]
    fn addresses_come_back_from_their_abi_words() {
        for ip in ["10.1.2.3", "fd00::7", "::ffff:10.1.2.3"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let (words, family) = ip_abi(ip);
            assert_eq!(ip_from_abi(words, family), ip.to_canonical(), "{ip}");
        }
    }

    #[test]
    fn probe_sources_are_network_order_words() {
        let mut config = Config::new("", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        config.probe_source_v6 = Some("fd00:201::3".parse().expect("v6"));
        config.probe_source_v4 = Some(DEFAULT_PROBE_SOURCE_V4);
        let abi = config.to_abi();
        assert_eq!(abi.probe_ip6[0].to_ne_bytes(), [0xfd, 0, 0x02, 0x01]);
        assert_eq!(abi.probe_ip6[3].to_ne_bytes(), [0, 0, 0, 3]);
        assert_eq!(abi.probe_ip4.to_ne_bytes(), [169, 254, 7, 127]);
    }

    #[test]
    fn ipv6_only_config_sets_only_the_ipv6_flag() {
        let mut config = Config::new("", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        config.outbound_v4 = None;
        config.outbound_v6 = Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 15001, 0, 0));
        let abi = config.to_abi();
        assert_eq!(abi.flags, config_flags::IPV6);
        assert_eq!(abi.tunnel_ip6[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(abi.tunnel_ip4, 0);
    }

    #[test]
    fn log_levels_follow_aya_log_numbering() {
        let mut config = Config::new("", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        config.log_level = tracing::Level::ERROR;
        assert_eq!(config.ebpf_log_level(), 1);
        config.log_level = tracing::Level::TRACE;
        assert_eq!(config.ebpf_log_level(), 5);
    }
}
